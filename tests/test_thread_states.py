"""Every thread in every dump, with its state: a C thread that holds the GIL with no
Python frame (tests/native/tbnative.c) is listed, named by the kernel, and is the
holder a header names; threads spinning, sleeping, parked and reading are shown in
the states the kernel and the interpreter say they are in; the header counts them."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import tbfast
from conftest import needs_core
from nativekit import tbnative_dir  # noqa: F401 - a fixture
from stress_worker import check_text
from workerkit import ask

# A worker: imports tbnative from argv[1], enables the tracebacker and registers
# SIGUSR1 (json, to argv[2]); prints its socket path, then starts the C GIL holder
# and reports it when told to ("hold" on stdin); "threads" starts the states' cast.
WORKER = textwrap.dedent(r'''
    import os, signal, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    import tbnative, tbfast
    from tbfast import sockets
    sockets.enable_tracebacker(sys.argv[3] + "/tb.", None)
    out = open(sys.argv[2], "wb")
    tbfast.register(signal.SIGUSR1, out, format="json")
    stop, parked = threading.Event(), threading.Event()
    pipe_read, pipe_write = os.pipe()

    def spin():
        while not stop.is_set():
            pass

    print(sockets.current().path, flush=True)
    for command in sys.stdin:
        if command.strip() == "hold":
            ident = tbnative.start_gil_holder(3.0)
            print(ident, flush=True)
            tbnative.join()
        elif command.strip() == "threads":
            for target, args, name in ((spin, (), "spinner"), (time.sleep, (60,), "sleeper"),
                                       (parked.wait, (), "parked"), (os.read, (pipe_read, 1), "reader")):
                threading.Thread(target=target, args=args, name=name, daemon=True).start()
            print(0, flush=True)
            time.sleep(60)
''')


@pytest.fixture
def worker(tbnative_dir, tmp_path):  # noqa: F811 - the fixture imported above
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "signal.json"
    directory = "/tmp/" + os.path.basename(tmp_path)[-20:]
    os.makedirs(directory, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("TBFAST_")}
    proc = subprocess.Popen([sys.executable, str(script), tbnative_dir, str(out), directory],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    proc.path = proc.stdout.readline().decode().strip()
    proc.out = out

    def command(word):
        proc.stdin.write(word.encode() + b"\n")
        proc.stdin.flush()
        return int(proc.stdout.readline())

    proc.command = command
    yield proc
    proc.kill()
    proc.wait(10)
    for stream in (proc.stdin, proc.stdout):
        stream.close()


def holder_thread(document, ident):
    matches = [thread for thread in document["threads"] if thread["ident"] == ident]
    assert len(matches) == 1, document
    return matches[0]


def wait_until_listed(path, ident):
    """A gil-free json dump once the C thread holds the GIL (its state exists first)."""
    for _ in range(200):
        document = json.loads(ask(path, b"json gil-free\n"))
        if any(t["ident"] == ident and t["holds_gil"] for t in document["threads"]):
            return document
        time.sleep(0.01)
    raise AssertionError("the C thread never showed as the GIL holder: %r" % document)


@needs_core
def test_the_c_gil_holder_is_listed_in_socket_and_signal_dumps(worker):
    ident = worker.command("hold")
    wait_until_listed(worker.path, ident)
    # A consistent dump that falls back names the holder: it is one of the threads.
    for fmt in ("json", "text", "uwsgi"):
        data = ask(worker.path, fmt.encode() + b"\n")
        if fmt == "json":
            document = json.loads(data)
            assert document["gil_holder"] == ident
            thread = holder_thread(document, ident)
            assert thread["frames"] == [] and thread["name"] is None
            assert thread["kernel_name"] == "tbn-gil-holder"
            # It naps 5 ms at a time: a dump may find it between two naps, running.
            assert thread["holds_gil"] and thread["state"] in ("sleeping", "running")
            assert thread["syscall"] in ("clock_nanosleep", "nanosleep", None)
            assert sum(document[s] for s in ("running", "sleeping", "idle", "waiting_gil")) <= len(
                document["threads"])
        elif fmt == "text":
            check_text(data, "socket")
            assert b"gil_holder=0x%016x" % ident in data
            assert re.search(rb'\nThread 0x%016x \(name "tbn-gil-holder" \(kernel\), native id \d+, '
                             rb'holds the GIL, (?:running|sleeping in (?:clock_)?nanosleep)\) '
                             rb'\(most recent call first\):\n'
                             rb'  <no Python frame>\n\n' % ident, data), data
        else:
            assert b"thread_id = %d filename = <no Python frame> lineno = 0 function = ? line = \n" % ident in data
    os.kill(worker.pid, signal.SIGUSR1)
    for _ in range(500):
        if worker.out.stat().st_size:
            break
        time.sleep(0.01)
    document = json.loads(worker.out.read_bytes())
    thread = holder_thread(document, ident)
    assert thread["kernel_name"] == "tbn-gil-holder" and thread["frames"] == [] and thread["holds_gil"]


@needs_core
def test_the_c_thread_waiting_for_the_gil_is_in_api_dumps(tbnative_dir):  # noqa: F811
    """While this thread keeps the GIL (a long switch interval), the C thread's state
    exists and waits for the GIL: an API dump lists it."""
    code = textwrap.dedent('''
        import json, sys, tbfast
        sys.path.insert(0, sys.argv[1])
        import tbnative
        sys.setswitchinterval(30)
        ident = tbnative.start_gil_holder(0.1)
        for _ in range(10 ** 6):
            document = json.loads(tbfast.format_traceback(format="json"))
            found = [t for t in document["threads"] if t["ident"] == ident]
            if found:
                break
        sys.setswitchinterval(0.005)
        print(json.dumps(found[0]), flush=True)
        tbnative.join()
    ''')
    result = subprocess.run([sys.executable, "-c", code, tbnative_dir], capture_output=True,
                            timeout=120, check=True)
    thread = json.loads(result.stdout)
    assert thread["frames"] == [] and thread["kernel_name"] == "tbn-gil-holder"
    assert not thread["holds_gil"]
    # Asking for the GIL: waiting on it in futex, or still on its way there.
    assert thread["state"] in ("waiting_gil", "running"), thread


@needs_core
def test_states_in_a_gil_free_dump(worker):
    worker.command("threads")
    for _ in range(300):
        document = json.loads(ask(worker.path, b"json gil-free\n"))
        by_name = {thread["name"]: thread for thread in document["threads"]}
        if {"spinner", "sleeper", "parked", "reader"} <= set(by_name) and \
                by_name["reader"]["syscall"] == "read" and by_name["spinner"]["holds_gil"]:
            break
        time.sleep(0.01)
    spinner, sleeper = by_name["spinner"], by_name["sleeper"]
    assert spinner["state"] == "running" and spinner["holds_gil"], spinner
    assert sleeper["state"] == "sleeping" and sleeper["syscall"] in ("clock_nanosleep", "nanosleep")
    assert by_name["parked"]["state"] == "idle" and not by_name["parked"]["holds_gil"]
    assert by_name["reader"]["state"] == "sleeping" and by_name["reader"]["syscall"] == "read"
    for state in ("running", "sleeping", "idle", "waiting_gil"):
        assert document[state] == sum(t["state"] == state for t in document["threads"]), state
    text = ask(worker.path, b"text gil-free\n")
    check_text(text, "socket")
    assert re.search(rb'\(name "parked", native id \d+, idle\)', text)
    assert re.search(rb'\(name "sleeper", native id \d+, sleeping in (?:clock_)?nanosleep\)', text)
    header = re.match(rb"tbfast dump: .* threads=(\d+) running=(\d+) sleeping=(\d+) idle=(\d+) "
                      rb"waiting_gil=(\d+)", text)
    headings = re.findall(rb"\n(?:Current thread|Thread) 0x[^\n]*", b"\n" + text)
    assert int(header.group(4)) == sum(b", idle)" in heading for heading in headings)
    assert int(header.group(1)) == len(headings)


def test_states_in_an_api_dump():
    """The core's and the fallback's: the caller runs and holds the GIL, a parked
    thread is idle, a sleeping one sleeps in clock_nanosleep; the header counts them."""
    import threading
    parked, started = threading.Event(), threading.Event()

    def sleep():
        started.set()
        time.sleep(30)

    threading.Thread(target=parked.wait, name="parked", daemon=True).start()
    sleeper = threading.Thread(target=sleep, name="sleeper", daemon=True)
    sleeper.start()
    started.wait(10)
    try:
        for _ in range(300):
            document = json.loads(tbfast.format_traceback(format="json"))
            by_name = {thread["name"]: thread for thread in document["threads"]}
            if by_name["sleeper"]["state"] == "sleeping":
                break
            time.sleep(0.01)
        me = [t for t in document["threads"] if t["current"]][0]
        assert me["state"] == "running" and me["holds_gil"]
        assert by_name["parked"]["state"] == "idle"
        assert by_name["sleeper"]["syscall"] in ("clock_nanosleep", "nanosleep")
        for state in ("running", "sleeping", "idle", "waiting_gil"):
            assert document[state] == sum(t["state"] == state for t in document["threads"]), state
    finally:
        parked.set()
