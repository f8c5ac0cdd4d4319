"""Native frames: each thread's C stack in the dump, under the Python frame that
called into C, taken by the thread itself on a private signal.  Against a real C
extension built with gcc (tests/native/tbnative.c, tests/nativekit.py) in real
worker processes; the truth for C names is the extension's own symbol table (nm)."""

import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import tbfast
from conftest import needs_core
from nativekit import (  # noqa: F401 - fixtures, taken by name
    FOREIGN_FUNCTIONS, GIL_HOLDER_FUNCTIONS, SPIN_FUNCTIONS, load, tbnative_dir,
    tbnative_stripped_dir)
from workerkit import ask, tmp  # noqa: F401 - tmp: a fixture

pytestmark = needs_core

C_LINE = re.compile(r"^  \[C\] (.*)$", re.M)

WORKER = """
    import os, signal, sys
    sys.path.insert(0, sys.argv[1])
    import tbnative, tbfast
    tbfast.enable_tracebacker(sys.argv[2], 1)
    tbfast.register(signal.SIGUSR1, sys.stderr, native=True)
    def stuck():
        tbnative.spin(20.0)  # stuck: here
    print("ready", flush=True)
    stuck()
"""


@pytest.fixture
def spinning(tmp):  # noqa: F811
    """A worker whose main thread spins in tbnative's C code, holding the GIL."""
    workers = []

    def start(directory):
        process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WORKER), directory,
                                    os.path.join(tmp, "tbn.")],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        workers.append(process)
        assert process.stdout.readline() == "ready\n", process.stderr.read()
        time.sleep(0.05)  # past the print: in spin
        return process, os.path.join(tmp, "tbn.1")
    yield start
    for process in workers:
        process.kill()
        process.wait(10)


def stuck_line():
    return [number for number, text in enumerate(textwrap.dedent(WORKER).splitlines(), 1)
            if text.endswith("# stuck: here")][0]


def thread_block(dump, name):
    """The lines of thread `name`, from its heading to its blank line."""
    start = dump.index('name "%s"' % name)
    start = dump.rfind("\n", 0, start) + 1
    end = dump.find("\n\n", start)
    return dump[start:end if end >= 0 else len(dump)]


def main_thread_block(dump):
    return thread_block(dump, "MainThread")


def test_the_socket_names_the_c_functions_under_the_python_frame(spinning, tbnative_dir):  # noqa: F811
    process, path = spinning(tbnative_dir)
    dump = ask(path, b"native\n").decode()
    block = main_thread_block(dump)
    assert "holds the GIL" in block.splitlines()[0]
    lines = block.splitlines()
    python = lines.index(next(line for line in lines if 'line %d in stuck' % stuck_line() in line))
    names = [line for line in lines[1:python] if line.startswith("  [C] ")]
    found = [next(i for i, line in enumerate(names) if line.startswith("  [C] %s+0x" % name))
             for name in reversed(SPIN_FUNCTIONS)]
    assert found == sorted(found), names  # innermost first, all above the Python frame
    assert "_PyEval_EvalFrameDefault" not in block  # its place is the Python frames'


def test_a_stripped_build_shows_module_and_offset(spinning, tbnative_stripped_dir):  # noqa: F811
    process, path = spinning(tbnative_stripped_dir)
    block = main_thread_block(ask(path, b"native\n").decode())
    module = [line for line in C_LINE.findall(block) if "tbnative" in line]
    assert module and all(re.fullmatch(r"/\S+/tbnative\S*\.so\+0x[0-9a-f]+", line) for line in module)
    assert not any(name in block for name in SPIN_FUNCTIONS)


def symbol_spans(library):
    """{name: (start, end)} of the library's functions, from nm: the truth."""
    listing = subprocess.run(["nm", "-S", "--defined-only", library], capture_output=True,
                             text=True, check=True, timeout=30).stdout
    spans = {}
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tT":
            spans[parts[3]] = (int(parts[0], 16), int(parts[0], 16) + int(parts[1], 16))
    return spans


def test_a_signal_handler_dump_shows_module_offsets_that_resolve_to_the_functions(
        spinning, tbnative_dir):  # noqa: F811
    process, path = spinning(tbnative_dir)
    os.kill(process.pid, signal.SIGUSR1)
    err = ""
    while "\n\n" not in err[err.find('name "MainThread"'):] or 'name "MainThread"' not in err:
        line = process.stderr.readline()  # bounded: the worker spins 20 s, then exits
        assert line, err
        err += line
    process.kill()
    library = next(os.path.join(tbnative_dir, name) for name in os.listdir(tbnative_dir))
    offsets = [int(offset, 16) for module, offset in
               re.findall(r"^  \[C\] (\S+)\+0x([0-9a-f]+)$", main_thread_block(err), re.M)
               if module == library]
    spans = symbol_spans(library)
    resolved = [name for offset in offsets for name, (start, end) in spans.items()
                if start <= offset - 1 < end]  # a return address: the call is just before
    assert [name for name in resolved if name in SPIN_FUNCTIONS] == list(reversed(SPIN_FUNCTIONS)), err


def test_a_thread_that_blocks_the_signal_is_said_not_to_answer():
    ready, release = threading.Event(), threading.Event()

    def deaf():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMAX - 4})
        ready.set()
        release.wait(30)  # busy enough to be asked: see below
    thread = threading.Thread(target=deaf, name="deaf")
    thread.start()
    ready.wait(30)
    try:
        dump = tbfast.format_traceback(native="all")
    finally:
        release.set()
        thread.join(30)
    block = thread_block(dump, "deaf")
    assert "  [C] <no answer within 20 ms" in block


def test_interrupted_waits_carry_on(tbnative_dir):  # noqa: F811
    """Locks, select() and read() interrupted by the native signal, 50 times each,
    finish as they would have: SA_RESTART, and CPython's own retries on EINTR."""
    lock = threading.Lock()
    lock.acquire()
    read_end, write_end = os.pipe()
    results, threads = {}, []

    def waiter(name, wait):
        results[name] = wait()
    for name, wait in (("lock", lambda: lock.acquire(timeout=30)),
                       ("select", lambda: select.select([read_end], [], [], 30)[0]),
                       ("read", lambda: os.read(read_end, 5))):
        threads.append(threading.Thread(target=waiter, args=(name, wait), name=name))
    threads[0].start()
    threads[1].start()
    for _ in range(50):
        tbfast.format_traceback(native="all")
    os.write(write_end, b"hello")  # wakes select; read then gets it all
    threads[1].join(30)
    threads[2].start()
    for _ in range(50):
        tbfast.format_traceback(native="all")
    lock.release()
    for thread in threads:
        thread.join(30)
    assert results == {"lock": True, "select": [read_end], "read": b"hello"}
    os.close(read_end)
    os.close(write_end)


def test_the_api_dump_shows_this_threads_c_frames_in_place_of_the_interpreters():
    dump = tbfast.format_traceback(native=True)
    block = main_thread_block(dump)
    assert re.search(r"  \[C\] \S*PyObject_Vectorcall\S*|  \[C\] \S*(Py|py)\S+", block)
    assert "_PyEval_EvalFrameDefault" not in block
    assert "in test_the_api_dump_shows" in block


def test_every_thread_asked_for_adds_the_threads_python_never_knew(tbnative_dir):  # noqa: F811
    tbnative = load(tbnative_dir)
    tbnative.start_foreign(1.0)
    time.sleep(0.05)  # in its sleep
    try:
        text = tbfast.format_traceback(native="all")
        document = json.loads(tbfast.format_traceback(native="all", format="json"))
        busy_only = tbfast.format_traceback(native=True)  # a sleeping thread is not asked
    finally:
        tbnative.join()
    block = thread_block(text, "tbn-foreign")
    assert block.startswith("Thread of no Python (native id ")
    names = [line.split("+")[0] for line in C_LINE.findall(block)]
    assert [name for name in names if name.startswith("tbnative_")] == list(FOREIGN_FUNCTIONS[::-1])
    (foreign,) = [thread for thread in document["threads"] if thread["name"] == "tbn-foreign"]
    assert foreign["python"] is False and foreign["frames"] == []
    assert any(frame.startswith("tbnative_foreign_sleep+0x") for frame in foreign["native"])
    assert not any(line.startswith("Thread of no Python") for line in busy_only.splitlines())


def test_harakiri_dumps_show_the_stuck_threads_c_functions(tbnative_dir, tmp):  # noqa: F811
    program = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        import tbnative, tbfast, tbfast.watchdog
        tbfast.watchdog.configure(file=sys.stdout, log=False, native=True)
        with tbfast.harakiri(0.2):
            tbnative.spin(1.0)
    """)
    result = subprocess.run([sys.executable, "-c", program, tbnative_dir], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    block = main_thread_block(result.stdout)
    assert "stuck for" in block.splitlines()[0]
    names = [line.split("+")[0] for line in C_LINE.findall(block)]
    assert [name for name in names if name in SPIN_FUNCTIONS] == list(reversed(SPIN_FUNCTIONS))


def test_connect_and_read_native(spinning, tbnative_dir):  # noqa: F811
    process, path = spinning(tbnative_dir)
    result = subprocess.run([sys.executable, "-m", "tbfast", "connect-and-read", "--native", path],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert all("  [C] %s+0x" % name in result.stdout for name in SPIN_FUNCTIONS)


GIL_HOLDER_WORKER = """
    import sys
    sys.path.insert(0, sys.argv[1])
    import tbnative, tbfast
    tbfast.enable_tracebacker(sys.argv[2], 1)
    tbnative.start_gil_holder(20.0)  # killed once dumped
    tbnative.start_foreign(20.0)
    print("ready", flush=True)
    tbnative.join()
"""


def test_a_c_thread_holding_the_gil_and_one_python_never_knew_show_their_c_functions(
        tbnative_dir, tmp):  # noqa: F811
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(GIL_HOLDER_WORKER),
                                tbnative_dir, os.path.join(tmp, "tbn.")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "ready\n", process.stderr.read()
        time.sleep(0.2)  # the C thread has taken the GIL: the main thread waits for it
        assert process.poll() is None, process.stderr.read()
        dump = ask(os.path.join(tmp, "tbn.1"), b"native-all\n").decode()
    finally:
        process.kill()
        process.wait(10)
    holder = thread_block(dump, "tbn-gil-holder")
    assert "holds the GIL" in holder.splitlines()[0] and "  <no Python frame>" in holder
    names = [line.split("+")[0] for line in C_LINE.findall(holder)]
    assert [name for name in names if name.startswith("tbnative_")] == list(GIL_HOLDER_FUNCTIONS[::-1])
    foreign = thread_block(dump, "tbn-foreign")
    names = [line.split("+")[0] for line in C_LINE.findall(foreign)]
    assert [name for name in names if name.startswith("tbnative_")] == list(FOREIGN_FUNCTIONS[::-1])
