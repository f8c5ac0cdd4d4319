"""The public API: faulthandler-compatible names, clear errors for bad input,
and a write that never waits on the GIL."""

import io
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

import tbfast
import shapes
from conftest import needs_core


def test_dump_to_an_int_fd_and_to_a_file_object(tmp_path):
    with open(tmp_path / "by-fd", "wb") as sink:
        tbfast.dump_traceback(sink.fileno(), format="json")
    with open(tmp_path / "by-file", "w") as sink:
        sink.write("before\n")  # flushed first, so the dump comes after it
        tbfast.dump_traceback(sink)
    assert json.loads((tmp_path / "by-fd").read_bytes())["trigger"] == "api"
    assert (tmp_path / "by-file").read_text().startswith("before\ntbfast dump: pid=")


def test_bad_input_gets_a_clear_error(tmp_path):
    with open(tmp_path / "closed", "w") as closed:
        pass
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    cases = [
        (lambda: tbfast.dump_traceback(closed), ValueError, "closed"),
        (lambda: tbfast.dump_traceback(write_end), OSError, "fd %d is not open" % write_end),
        (lambda: tbfast.dump_traceback(-1), ValueError, "non-negative"),
        (lambda: tbfast.dump_traceback(io.StringIO()), ValueError, "no usable fd"),
        (lambda: tbfast.dump_traceback(object()), TypeError, "fileno"),
        (lambda: tbfast.dump_traceback(1.5), TypeError, "fileno"),
        (lambda: tbfast.format_traceback(format="xml"), ValueError, "unknown format 'xml'"),
        (lambda: tbfast.register(0, sys.stderr), ValueError, "signal number 0 out of range"),
        (lambda: tbfast.register(signal.NSIG + 5, sys.stderr), ValueError, "out of range"),
        (lambda: tbfast.register(signal.SIGKILL, sys.stderr), ValueError, "cannot be caught"),
        (lambda: tbfast.register("SIGUSR1", sys.stderr), TypeError, "must be an int"),
        (lambda: tbfast.register(signal.SIGUSR1, object()), TypeError, "fileno"),
        (lambda: tbfast.set_context(b"bytes"), TypeError, "str or None"),
        (lambda: tbfast.configure(buffer_size=10), ValueError, "at least 4096"),
        (lambda: tbfast.configure(buffer_size="big"), TypeError, "int"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


class FilenoReturns:
    def __init__(self, value):
        self.value = value

    def fileno(self):
        return self.value


SMALL_BAD_INPUTS = {
    "gil_wait=1e20": (lambda: tbfast.configure(gil_wait=1e20), ValueError,
                      r"gil_wait must be a non-negative number of seconds up to 10, not 1e\+20"),
    "harakiri(True)": (lambda: tbfast.harakiri(True), TypeError,
                       "timeout must be a number of seconds, not bool"),
    "harakiri(1e300)": (lambda: tbfast.harakiri(1e300), ValueError,
                        r"timeout must be a positive number of seconds up to 1e\+09"),
    "dump_traceback_later('1')": (lambda: tbfast.dump_traceback_later("1"), TypeError,
                                  "timeout must be a number of seconds, not str"),
    "watchdog repeat=True": (lambda: tbfast.watchdog.configure(repeat=True), TypeError,
                             "repeat must be a number of seconds, not bool"),
    "NUL in a context": (lambda: tbfast.set_context("GET /a\0b"), ValueError,
                         "context must not contain a NUL character, as at index 6"),
    "fileno() gives a str": (lambda: tbfast.dump_traceback(FilenoReturns("1")), TypeError,
                             r"FilenoReturns.fileno\(\) must return an int fd, not str"),
    "fileno() gives a float": (lambda: tbfast.register(signal.SIGUSR2, FilenoReturns(1.0)),
                               TypeError, r"fileno\(\) must return an int fd, not float"),
}


@pytest.mark.parametrize("case", SMALL_BAD_INPUTS)
def test_a_small_bad_input_gets_a_clear_error_and_the_worker_goes_on(case, tmp_path):
    call, error, message = SMALL_BAD_INPUTS[case]
    try:
        with pytest.raises(error, match=message):
            call()
    finally:  # what the call would have changed, had it been taken
        tbfast.cancel_dump_traceback_later()
        tbfast.unregister(signal.SIGUSR2)
        tbfast.watchdog.configure(file=False, repeat=10.0)
    assert tbfast.get_context() is None
    tbfast.set_context("GET /next")
    try:
        with tbfast.harakiri(10):
            with open(tmp_path / "dump", "wb") as sink:
                tbfast.dump_traceback(sink, all_threads=False)
    finally:
        tbfast.set_context(None)
    assert "  Context: GET /next\n" in (tmp_path / "dump").read_text()


@needs_core
def test_write_error_is_reported_not_swallowed():
    read_end, write_end = os.pipe()
    os.close(read_end)
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        with pytest.raises(OSError, match="writing the dump to fd"):
            tbfast.dump_traceback(write_end)
    finally:
        signal.signal(signal.SIGPIPE, previous)
        os.close(write_end)


@needs_core
def test_dump_into_a_pipe_this_process_drains(parked):
    """The write releases the GIL, so a reader thread here can drain the pipe:
    faulthandler, which keeps the GIL while writing, deadlocks on this."""
    for _ in range(64):
        parked(lambda park: shapes.deep_recursion(park, 40))
    read_end, write_end = os.pipe()
    received = []

    def drain():
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            received.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    tbfast.dump_traceback(write_end, format="uwsgi")  # uWSGI's format repeats every frame
    os.close(write_end)
    reader.join(30)
    os.close(read_end)
    data = b"".join(received)
    assert len(data) > 65536  # more than the pipe holds, so the drain was needed
    assert data.count(b"function = deep_recursion") == 64 * 41


def test_fallback_is_chosen_by_environment_and_dumps_the_same_shape():
    script = ("import json, tbfast\n"
              "print(tbfast.MODE, tbfast.HAS_CORE)\n"
              "print(tbfast.format_traceback(format='json'))\n")
    env = dict(os.environ, TBFAST_NO_EXTENSIONS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env,
                            timeout=30, check=True)
    first, document = result.stdout.decode().split("\n", 1)
    assert first == "python False"
    frames = json.loads(document)["threads"][0]["frames"]
    assert [(frame["file"], frame["line"], frame["function"]) for frame in frames] == [
        ("<string>", 3, "<module>")]


@needs_core
def test_buffer_size_from_environment():
    script = "import tbfast; print(tbfast._impl.buffer_size())"
    env = dict(os.environ, TBFAST_BUFFER_SIZE="65536")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, env=env,
                            timeout=30, check=True)
    assert result.stdout == b"65536\n"


def test_real_time_signals_are_named(tmp_path):
    signum = signal.SIGRTMIN + 3
    with open(tmp_path / "dump", "wb") as sink:
        tbfast.register(signum, sink)
        try:
            signal.raise_signal(signum)
            if not tbfast.HAS_CORE:
                __import__("time").sleep(0.01)  # the fallback's Python handler runs between bytecodes
        finally:
            tbfast.unregister(signum)
    assert b"trigger=signal:SIGRTMIN+3 " in (tmp_path / "dump").read_bytes()
