"""The C-level signal handler dumps while the main thread holds the GIL in C."""

import inspect
import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

import tbfast
import gil_holder
from conftest import needs_core

HERE = os.path.dirname(os.path.abspath(__file__))


def start_holder(*args):
    child = subprocess.Popen([sys.executable, os.path.join(HERE, "gil_holder.py"), *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE)
    assert child.stderr.readline() == b"ready\n"
    time.sleep(0.3)  # from "ready" into the C call that keeps the GIL
    return child


def read_json(stream, seconds):
    """One JSON document from a pipe, read until it parses, within `seconds`."""
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            chunk = os.read(stream.fileno(), 1 << 20)
            if not chunk:
                break
            data += chunk
            try:
                return json.loads(data)
            except ValueError:
                continue
    raise AssertionError("no complete dump within %.1fs; got %r" % (seconds, data[-200:]))


def line_of(function, text):
    lines, first = inspect.getsourcelines(function)
    return first + [i for i, line in enumerate(lines) if text in line][0]


@needs_core
@pytest.mark.parametrize("how, function, call", [
    ("sleep", gil_holder.hold_gil_in_sleep, "sleep(5)"),
    ("regex", gil_holder.hold_gil_in_regex, "re.match"),
    ("sum", gil_holder.hold_gil_in_sum, "sum(itertools"),
])
def test_dump_while_main_thread_holds_the_gil(how, function, call):
    child = start_holder(how)
    try:
        child.send_signal(signal.SIGUSR1)
        document = read_json(child.stdout, 1.0)
    finally:
        child.kill()
        child.wait(10)
    assert document["mode"] == "gil-free" and document["trigger"] == "signal:SIGUSR1"
    main = document["threads"][0]
    assert main["name"] == "MainThread" and main["holds_gil"]
    assert main["context"] == "GET /stuck?id=7"
    places = [(frame["function"], frame["line"]) for frame in main["frames"]]
    stuck = places.index((function.__name__, line_of(function, call)))
    # re.match is Python code that calls into the C matcher; PyDLL's sleep and sum are C.
    assert [name for name, line in places[:stuck]] == ([re.match.__name__] if how == "regex" else [])
    assert [name for name, line in places[stuck + 1:]] == ["main", "<module>"]
    helper = [thread for thread in document["threads"] if thread["name"] == "helper"]
    assert len(helper) == 1 and not helper[0]["holds_gil"]
    assert helper[0]["frames"][-4]["function"] == "helper_waits"


@needs_core
def test_chain_runs_the_previous_python_handler_after_the_dump():
    child = start_holder("sleep", "chain")
    try:
        child.send_signal(signal.SIGUSR1)
        document = read_json(child.stdout, 1.0)
        # The Python handler runs once the main thread is back in Python (sleep ends <= 5 s).
        _, errors = child.communicate(timeout=15)
    finally:
        child.kill()
        child.wait(10)
    assert document["threads"][0]["holds_gil"]
    assert b"python handler ran\n" in errors


@needs_core
def test_chain_to_default_action_still_terminates():
    script = ("import signal, sys, tbfast\n"
              "tbfast.register(signal.SIGUSR2, sys.stdout, chain=True)\n"
              "signal.raise_signal(signal.SIGUSR2)\n"
              "print('survived')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert result.returncode == -signal.SIGUSR2
    assert result.stdout.startswith(b"tbfast dump: pid=") and b"survived" not in result.stdout


def run_capped(script, seconds=20, cap=1 << 20):
    """(returncode, stdout, stderr) of `script` in a child without faulthandler (or
    ASan's fault handlers), its stdout read up to `cap` bytes: a child that dumps in
    a loop is killed at the cap or after `seconds`, and its returncode is then None."""
    env = dict(os.environ)
    env.pop("PYTHONFAULTHANDLER", None)
    # Under scripts/sanitize, ASan's own handlers would be the ones chained to.
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":handle_segv=0:handle_sigbus=0:handle_sigfpe=0"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
    out, deadline = b"", time.monotonic() + seconds
    while len(out) < cap and time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(child.stdout.fileno(), 1 << 16) if ready else b""
        if not chunk:
            break
        out += chunk
    try:
        returncode = child.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        returncode = None
    child.kill()
    child.wait(10)
    errors = child.stderr.read()
    child.stdout.close()
    child.stderr.close()
    return returncode, out, errors


FAULTS = {
    "null read": ("SIGSEGV", "ctypes.string_at(0)"),
    "raised SIGSEGV": ("SIGSEGV", "faulthandler._sigsegv()"),
    "SIGBUS sent": ("SIGBUS", "os.kill(os.getpid(), signal.SIGBUS)"),
    "SIGFPE sent": ("SIGFPE", "os.kill(os.getpid(), signal.SIGFPE)"),
    "SIGILL sent": ("SIGILL", "os.kill(os.getpid(), signal.SIGILL)"),
    "abort": ("SIGABRT", "os.abort()"),
}


@needs_core
@pytest.mark.parametrize("chain", [False, True], ids=["alone", "chained"])
@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_signal_dumps_once_then_ends_the_process_by_that_signal(fault, chain):
    name, how = FAULTS[fault]
    script = ("import ctypes, faulthandler, os, signal, sys, tbfast\n"
              "tbfast.register(signal.%s, sys.stdout, chain=%r)\n"
              "%s\n"
              "print('survived')\n" % (name, chain, how))
    returncode, out, _ = run_capped(script)
    assert out.count(b"tbfast dump: pid=") == 1, out[:300]
    assert b"trigger=signal:%s" % name.encode() in out and b"survived" not in out
    assert returncode == -getattr(signal, name)


@needs_core
def test_a_fault_chained_to_faulthandler_reaches_it_after_the_dump():
    script = ("import ctypes, faulthandler, signal, sys, tbfast\n"
              "faulthandler.enable(sys.stderr)\n"
              "tbfast.register(signal.SIGSEGV, sys.stdout, chain=True)\n"
              "ctypes.string_at(0)\n")
    returncode, out, errors = run_capped(script)
    assert out.count(b"tbfast dump: pid=") == 1
    assert errors.count(b"Fatal Python error: Segmentation fault") == 1
    assert returncode == -signal.SIGSEGV


@pytest.mark.skipif(tbfast.HAS_CORE, reason="the core handles fault signals")
@pytest.mark.parametrize("name", sorted({name for name, _ in FAULTS.values()}))
def test_the_fallback_refuses_a_fault_signal_it_could_not_dump_on(name):
    with pytest.raises(ValueError, match="%s.*faulthandler.enable" % name):
        tbfast.register(getattr(signal, name))
    assert signal.getsignal(getattr(signal, name)) in (signal.SIG_DFL, signal.default_int_handler)


def test_unregister_puts_back_the_previous_handler(tmp_path):
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda *args: calls.append(args[0]))
    try:
        with open(tmp_path / "dump", "wb") as sink:
            tbfast.register(signal.SIGUSR2, sink)
            assert tbfast.unregister(signal.SIGUSR2) is True
            assert tbfast.unregister(signal.SIGUSR2) is False
        signal.raise_signal(signal.SIGUSR2)
        assert calls == [signal.SIGUSR2]
        assert (tmp_path / "dump").read_bytes() == b""
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_signal_dump_to_a_file_object(tmp_path):
    with open(tmp_path / "dump", "w") as sink:
        tbfast.register(signal.SIGUSR2, sink)
        try:
            signal.raise_signal(signal.SIGUSR2)
            if not tbfast.HAS_CORE:
                time.sleep(0.01)  # the fallback's Python handler runs between bytecodes
        finally:
            tbfast.unregister(signal.SIGUSR2)
    text = (tmp_path / "dump").read_text()
    assert text.startswith("tbfast dump: pid=%d " % os.getpid())
    assert "trigger=signal:SIGUSR2" in text
    assert "in test_signal_dump_to_a_file_object" in text
