"""tbfast.enable(): the crash handler.  Real crashes in real subprocesses: a dump of
every thread, then the process dies by the same signal as without tbfast."""

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

import tbfast
from conftest import needs_core
from workerkit import autostart_python  # noqa: F401 - a fixture, taken by name


CRASHING = """
import ctypes, sys, threading, traceback
started, stop = threading.Event(), threading.Event()
def worker():
    tbfast.set_context("GET /slow?\\x1b[31m")
    started.set()
    stop.wait()
threading.Thread(target=worker, name="slow worker", daemon=True).start()
started.wait()
tbfast.set_context("GET /crash")
def crash():
    line = traceback.extract_stack()[-1].lineno + 2  # the line of string_at
    sys.stdout.write("line %d\\n" % line); sys.stdout.flush()
    ctypes.string_at(0)
crash()
"""


def run(program, python=sys.executable, **env):
    result = subprocess.run([python, "-c", textwrap.dedent(program)], capture_output=True,
                            text=True, timeout=60,
                            env={**{k: v for k, v in os.environ.items()
                                    if k not in ("PYTHONFAULTHANDLER", "TBFAST_FAULTHANDLER")},
                                 **env})
    return result.returncode, result.stdout, result.stderr


@needs_core
def test_a_null_read_dumps_every_thread_then_dies_by_sigsegv():
    code, out, err = run("import tbfast\ntbfast.enable()\n" + CRASHING)
    assert code == -signal.SIGSEGV, err
    line = int(out.split()[1])
    header = re.match(r"tbfast dump: pid=\d+ time=\S+ trigger=fatal:SIGSEGV mode=gil-free threads=2 "
                      r"running=1 sleeping=0 idle=1 waiting_gil=0\n", err)
    assert header, err
    assert re.search(r'Current thread 0x[0-9a-f]{16} \(name "MainThread", native id \d+, holds the GIL, running\) '
                     r'\(most recent call first\):\n  Context: GET /crash\n', err), err
    assert '  File "<string>", line %d in crash\n' % line in err
    assert 'name "slow worker"' in err and "Context: GET /slow?\\x1b[31m" in err  # escaped


@needs_core
@pytest.mark.parametrize("how, signum", [("os.abort()", signal.SIGABRT),
                                         ("os.kill(os.getpid(), signal.SIGFPE)", signal.SIGFPE),
                                         ("signal.raise_signal(signal.SIGBUS)", signal.SIGBUS),
                                         ("signal.raise_signal(signal.SIGILL)", signal.SIGILL)])
def test_each_fault_signal(how, signum):
    code, out, err = run("import os, signal, tbfast\ntbfast.enable(format='json')\n" + how)
    assert code == -signum, err
    assert '"trigger":"fatal:%s"' % signal.Signals(signum).name in err


@needs_core
def test_disabled_it_leaves_the_crash_alone():
    code, out, err = run("import tbfast\nassert tbfast.enable() is None and tbfast.is_enabled()\n"
                         "assert tbfast.disable() and not tbfast.is_enabled()\n" + CRASHING)
    assert code == -signal.SIGSEGV and "tbfast dump" not in err


@needs_core
@pytest.mark.parametrize("order", ["faulthandler first", "tbfast first"])
def test_beside_the_standard_faulthandler_both_dump_once(order):
    first, second = ("faulthandler.enable()", "tbfast.enable()")[::1 if order == "faulthandler first" else -1]
    code, out, err = run("import faulthandler, tbfast\n%s\n%s\n" % (first, second) + CRASHING)
    assert code == -signal.SIGSEGV, err
    assert err.count("Fatal Python error: Segmentation fault") == 1, err
    assert err.count("trigger=fatal:SIGSEGV") == 1, err


@needs_core
def test_tbfast_faulthandler_environment_variable(autostart_python):  # noqa: F811
    code, out, err = run("import tbfast\nassert tbfast.is_enabled()\n" + CRASHING,
                         python=autostart_python, TBFAST_FAULTHANDLER="1")
    assert code == -signal.SIGSEGV, err
    assert "trigger=fatal:SIGSEGV" in err and "in crash" in err


@pytest.mark.skipif(tbfast.HAS_CORE, reason="the fallback's behaviour")
def test_the_fallback_enables_the_standard_faulthandler_and_says_so():
    code, out, err = run("import faulthandler, logging, tbfast\nlogging.basicConfig()\n"
                         "tbfast.enable()\nassert faulthandler.is_enabled()\n" + CRASHING)
    assert code == -signal.SIGSEGV, err
    assert "Fatal Python error: Segmentation fault" in err and "in crash" in err
    if not os.environ.get("TBFAST_NO_EXTENSIONS"):  # a fallback the user chose is not warned of
        assert "enable() is served by the pure-Python fallback" in err
