"""tbfast.faulthandler against the truth: each program runs twice in a fresh
interpreter, once with the standard library's faulthandler and once with
tbfast's, and the two outputs must be the same bytes (thread ids, which differ
between processes, aside).  CPython's own test file checks them too
(test_faulthandler_cpython.py), but from 3.14 on its patterns for fatal errors
match almost anything."""

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import needs_core

pytestmark = needs_core

HEADER = {"stdlib": "import faulthandler\n", "tbfast": "from tbfast import faulthandler\n"}
THREAD_ID = re.compile(rb"0x[0-9a-f]{16}")
C_STACK = b"\nCurrent thread's C stack trace (most recent call first):\n"


def run(program, which, expect_signal=None):
    """stdout + stderr of `program` under `which` faulthandler, thread ids as 0xTID."""
    source = HEADER[which] + textwrap.dedent(program)
    env = {name: value for name, value in os.environ.items()
           if name not in ("PYTHONFAULTHANDLER", "PYTHONDEVMODE")}
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, timeout=60,
                            env=env)
    if expect_signal is None:
        assert result.returncode == 0, result.stderr.decode()
    else:
        assert result.returncode == -expect_signal, result.stderr.decode()
    return THREAD_ID.sub(b"0xTID", result.stdout + result.stderr)


def same_as_stdlib(program, expect_signal=None):
    ours = run(program, "tbfast", expect_signal)
    theirs = run(program, "stdlib", expect_signal)
    assert ours == theirs
    return ours


WAITER = """
    import sys, threading
    started, stop = threading.Event(), threading.Event()
    def waiter():
        started.set()
        stop.wait()
    thread = threading.Thread(target=waiter)
    thread.start()
    started.wait()
"""


def test_every_thread_as_faulthandler_writes_them():
    out = same_as_stdlib(WAITER + """
    def inner():
        faulthandler.dump_traceback(sys.stdout)
    def outer():
        inner()
    outer()
    stop.set()
    thread.join()
    """)
    assert b"Current thread 0xTID" in out and b"line 13 in inner" in out


def test_only_the_current_thread():
    out = same_as_stdlib(WAITER + """
    faulthandler.dump_traceback(sys.stdout.fileno(), all_threads=False)
    stop.set()
    thread.join()
    """)
    assert out.startswith(b"Stack (most recent call first):\n")


def test_names_cut_at_500_code_points_and_escaped():
    out = same_as_stdlib("""
    import sys
    name = "f\\u00e9\\u2603\\U0001f40d\\t\\x7f" + "x" * 600
    code = compile("def %s(): faulthandler.dump_traceback(sys.stdout, False)" % ("g" * 501),
                   "/tmp/od\\u00e9 \\"q\\\\.py", "exec")
    exec(code)
    globals()["g" * 501]()
    """)
    assert b"\\xe9" in out and b"g" * 500 + b"..." in out


def test_a_deep_stack_is_cut_at_100_frames_as_this_version_does():
    out = same_as_stdlib("""
    import sys
    def down(n):
        if n == 0:
            faulthandler.dump_traceback(sys.stdout, all_threads=False)
        else:
            down(n - 1)
    down(150)
    """)
    assert out.count(b"  File ") == 100


def test_garbage_collecting_is_noted_on_the_current_thread():
    out = same_as_stdlib("""
    import gc, sys
    class Cycle:
        def __del__(self):
            faulthandler.dump_traceback(sys.stdout)
    a = Cycle(); a.me = a
    del a
    gc.collect()
    """)
    assert b"  Garbage-collecting\n" in out


def test_dump_traceback_later_writes_its_timeout_header():
    out = same_as_stdlib(WAITER + """
    import time
    faulthandler.dump_traceback_later(0.25, file=sys.stdout)
    time.sleep(1.0)
    stop.set()
    thread.join()
    """)
    assert out.startswith(b"Timeout (0:00:00.250000)!\nThread 0xTID")


def test_a_registered_signal():
    out = same_as_stdlib(WAITER + """
    import os, signal
    faulthandler.register(signal.SIGUSR1, file=sys.stdout)
    os.kill(os.getpid(), signal.SIGUSR1)
    stop.set()
    thread.join()
    """)
    assert out.count(b"(most recent call first)") == 2


@pytest.mark.parametrize("helper, signum", [("_sigsegv()", signal.SIGSEGV),
                                            ("_sigabrt()", signal.SIGABRT),
                                            ("_sigfpe()", signal.SIGFPE),
                                            ("_sigsegv(True)", signal.SIGSEGV)])
def test_a_fatal_signal_dumps_then_ends_the_process_by_it(helper, signum):
    program = WAITER + """
    faulthandler.enable()
    import faulthandler as standard
    standard.%s
    """ % helper
    ours = run(program, "tbfast", signum)
    theirs = run(program, "stdlib", signum)
    if C_STACK in theirs:  # 3.14+: the C stacks differ, ours starts in tbfast's handler
        theirs, their_stack = theirs.split(C_STACK)
        ours, our_stack = ours.split(C_STACK)
        for line in our_stack.splitlines()[:-1]:
            assert re.fullmatch(rb'  Binary file "[^"]+"(, at \S*[+-]0x[0-9a-f]+)? \[0x[0-9a-f]+\]'
                                rb"|  <truncated rest of calls>|", line), line
    assert ours == theirs
    assert ours.startswith(b"Fatal Python error: ")


def test_more_threads_than_the_cap_still_show_the_current_one():
    program = """
    import sys, threading
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait) for _ in range(105)]
    for thread in threads:
        thread.start()
    faulthandler.dump_traceback(sys.stdout)
    stop.set()
    for thread in threads:
        thread.join()
    """
    ours, theirs = run(program, "tbfast"), run(program, "stdlib")
    assert theirs.endswith(b"\n...\n") and b"Current thread" not in theirs
    kept = ours[len(theirs):]
    assert ours.startswith(theirs) and kept.startswith(b"\nCurrent thread 0xTID")
    assert kept.count(b"(most recent call first)") == 1


def test_stdlib_handler_enabled_by_x_faulthandler_is_taken_over():
    result = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c",
         "import faulthandler as standard; from tbfast import faulthandler; "
         "print(standard.is_enabled(), faulthandler.is_enabled())"],
        capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "True"], result.stderr


def test_its_errors_are_faulthandlers():
    from tbfast import faulthandler
    with pytest.raises(RuntimeError, match="signal 11 cannot be registered, use enable"):
        faulthandler.register(signal.SIGSEGV)
    with pytest.raises(ValueError, match="timeout must be greater than 0"):
        faulthandler.dump_traceback_later(0)
    with pytest.raises(ValueError, match="file is not a valid file descriptor"):
        faulthandler.dump_traceback(-1)


def test_the_python_formatter_writes_what_the_core_writes(parked):
    import shapes
    import tbfast
    from tbfast import _pyformat
    parked(shapes.nested)
    for all_threads in (True, False):
        core, python = (tbfast._impl.format_dump(all_threads, "faulthandler", 0), _pyformat.format_dump(all_threads, "faulthandler", 0))  # noqa: E501 - one line, one line number
        assert python == core


def test_every_entry_point_takes_the_faulthandler_format():
    import tbfast
    text = tbfast.format_traceback(format="faulthandler")
    assert "Current thread 0x" in text and "in test_every_entry_point" in text
