"""tbfast._backend: the core or the fallback, chosen once at import, and what
each says about the other: a core whose layout does not match the running
interpreter is refused, and the fallback warns where a GIL-free dump was asked for."""

import os
import shutil
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


@needs_core
@pytest.mark.parametrize("name, value", [("SCOPE_DEPTH", "17"), ("NOTIFY_RECORD", "'=4Q'"),
                                         ("BAD_REQUEST", "b'bad'"), ("KIND_SIGNAL", "7")])
def test_a_constant_drifted_from_limits_refuses_the_core_naming_it(tmp_path, name, value):
    shutil.copytree(os.path.dirname(tbfast.__file__), tmp_path / "tbfast",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "tbfast" / "_limits.py", "a") as limits:
        limits.write("\n%s = %s\n" % (name, value))
    script = ("import warnings; warnings.simplefilter('always')\n"
              "import tbfast\n"
              "print(tbfast.MODE)\n")
    code, out, err = run(script, PYTHONPATH=str(tmp_path))
    assert (code, out) == (0, "python\n"), err
    warnings = [line for line in err.splitlines() if "RuntimeWarning" in line]
    assert len(warnings) == 1 and "other constants than tbfast/_limits.py: %s" % name in warnings[0], err


def without_core(tmp_path):
    """An environment whose tbfast is the installed one less its core: as a failed build."""
    shutil.copytree(os.path.dirname(tbfast.__file__), tmp_path / "tbfast",
                    ignore=shutil.ignore_patterns("_tbcore*.so", "__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("TBFAST_NO_EXTENSIONS", None)
    return env


PROMISES = ("import logging, signal, sys, tbfast\n"
            "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')\n"
            "print(tbfast.__file__, tbfast.MODE, tbfast.FALLBACK_REASON, sep='\\n')\n"
            "tbfast.register(signal.SIGUSR1, sys.stderr)\n"
            "tbfast.register(signal.SIGUSR2, sys.stderr)\n"
            "tbfast.enable_tracebacker(sys.argv[1])\n"
            "with tbfast.harakiri(60, action='abort'):\n"
            "    pass\n")


def promises(env, basename):
    """(stdout lines, WARNING lines) of a process making every GIL-free promise."""
    result = subprocess.run([sys.executable, "-c", PROMISES, basename], capture_output=True,
                            timeout=60, env=env)
    err = result.stderr.decode()
    assert result.returncode == 0, err
    return (result.stdout.decode().splitlines(),
            [line for line in err.splitlines() if line.startswith("WARNING")])


def test_a_core_that_was_not_built_warns_once_where_a_gil_free_dump_was_promised(tmp_path):
    out, warnings = promises(without_core(tmp_path), str(tmp_path / "tb."))
    assert out == [str(tmp_path / "tbfast" / "__init__.py"), "python",
                   "the C core was not built (pip install -v tbfast shows why)"]
    assert warnings == [
        "WARNING tbfast: register(SIGUSR1) is served by the pure-Python fallback because "
        "the C core was not built (pip install -v tbfast shows why): its dumps need the GIL, "
        "so a thread stuck in C while holding it delays or stops them"]


@needs_core
@pytest.mark.skipif(not HAS_LAYOUT_TABLE, reason="CPython < 3.13 publishes no debug offsets")
def test_a_refused_core_names_the_field_where_a_gil_free_dump_was_promised(tmp_path):
    env = dict(os.environ, TBFAST_TEST_LAYOUT_SKEW="interpreter_frame.owner")
    out, warnings = promises(env, str(tmp_path / "tb."))
    assert out[1:] == ["python", out[2]] and "interpreter_frame.owner is at" in out[2]
    assert len(warnings) == 1 and warnings[0].startswith(
        "WARNING tbfast: register(SIGUSR1) is served by the pure-Python fallback because "
        "tbfast: the core does not match this interpreter's layout: interpreter_frame.owner")


def test_a_fallback_the_user_chose_says_nothing(tmp_path):
    env = dict(without_core(tmp_path), TBFAST_NO_EXTENSIONS="1")
    out, warnings = promises(env, str(tmp_path / "tb."))
    assert out[1:] == ["python", "TBFAST_NO_EXTENSIONS is set"] and warnings == []


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
