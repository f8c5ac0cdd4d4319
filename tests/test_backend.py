"""tbfast._backend: the core or the fallback, chosen once at import, and what
each says about the other: a core whose layout does not match the running
interpreter is refused, and the fallback warns where a GIL-free dump was asked for."""

import os
import subprocess
import sys

import pytest

import tbfast
from conftest import needs_core

HAS_LAYOUT_TABLE = sys.version_info >= (3, 13)  # _PyRuntime.debug_offsets


def run(script, **env):
    """(returncode, stdout, stderr) of `script` in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                            env=dict(os.environ, **env))
    return result.returncode, result.stdout.decode(), result.stderr.decode()


@needs_core
@pytest.mark.skipif(not HAS_LAYOUT_TABLE, reason="CPython < 3.13 publishes no debug offsets")
@pytest.mark.parametrize("field", ["thread_state.current_frame", "interpreter_frame.previous",
                                   "code_object.co_code_adaptive"])
def test_a_layout_mismatch_refuses_the_core_with_one_warning_naming_the_field(field):
    script = ("import warnings; warnings.simplefilter('always')\n"
              "import tbfast\n"
              "print(tbfast.MODE)\n"
              "print(tbfast.format_traceback().splitlines()[0])\n")
    code, out, err = run(script, TBFAST_TEST_LAYOUT_SKEW=field)
    assert code == 0, err
    assert out.splitlines()[0] == "python"
    assert "mode=python" in out.splitlines()[1]
    warnings = [line for line in err.splitlines() if "RuntimeWarning" in line]
    assert len(warnings) == 1, err
    assert "does not match this interpreter's layout: %s is at" % field in warnings[0]
    assert "fallback" in warnings[0]


@needs_core
def test_a_matching_layout_keeps_the_core_without_a_word():
    code, out, err = run("import tbfast; print(tbfast.MODE, tbfast.FALLBACK_REASON)",
                         TBFAST_TEST_LAYOUT_SKEW="no.such_field")
    assert (code, out, err) == (0, "core None\n", "")


def test_the_fallback_warns_once_per_process_where_a_gil_free_dump_was_promised(tmp_path):
    script = ("import logging, signal, sys, tbfast\n"
              "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')\n"
              "tbfast.register(signal.SIGUSR1, sys.stderr)\n"
              "tbfast.register(signal.SIGUSR2, sys.stderr)\n"
              "tbfast.enable_tracebacker(sys.argv[1])\n"
              "with tbfast.harakiri(60, action='abort'):\n"
              "    pass\n"
              "print(tbfast.MODE, tbfast.FALLBACK_REASON)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "tb.")],
                            capture_output=True, timeout=60,
                            env=dict(os.environ, TBFAST_NO_EXTENSIONS="1"))
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, err
    assert out == "python TBFAST_NO_EXTENSIONS is set\n"
    warnings = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert warnings == [
        "WARNING tbfast: register(SIGUSR1) is served by the pure-Python fallback because "
        "TBFAST_NO_EXTENSIONS is set: its dumps need the GIL, so a thread stuck in C while "
        "holding it delays or stops them"], err


@needs_core
def test_the_core_says_nothing_of_a_fallback(tmp_path):
    script = ("import logging, signal, sys, tbfast\n"
              "logging.basicConfig(level=logging.DEBUG)\n"
              "tbfast.register(signal.SIGUSR1, sys.stderr)\n"
              "tbfast.enable_tracebacker(sys.argv[1])\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "tb.")],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert b"fallback" not in result.stderr


def test_mode_and_reason_agree():
    assert (tbfast.MODE == "core") == tbfast.HAS_CORE == (tbfast.FALLBACK_REASON is None)
