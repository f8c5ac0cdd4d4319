import json
import logging
import sys
import threading
import time
import traceback

import pytest

import tbfast
from tbfast._pyformat import current_frames


def pytest_report_header(config):
    return "tbfast %s from %s (MODE=%s)" % (tbfast.__version__, tbfast.__file__, tbfast.MODE)


needs_core = pytest.mark.skipif(not tbfast.HAS_CORE, reason="needs the C core (fallback in use)")


class Parked:
    """Runs `shape(park)` in a thread that stays parked inside `park` until released."""

    def __init__(self, shape, name=None):
        self.shape = shape
        self.ready = threading.Event()
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name or "shape-" + shape.__name__,
                                       daemon=True)

    def _run(self):
        self.shape(self.park)

    def park(self):
        self.ready.set()
        self.release.wait(30)

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10), "the shape never reached park()"
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join(10)


@pytest.fixture
def parked():
    """parked(shape) -> a started Parked, released at the end of the test."""
    started = []

    def start(shape, name=None):
        item = Parked(shape, name).__enter__()
        started.append(item)
        return item

    yield start
    for item in started:
        item.__exit__(None, None, None)


def current_stacks():
    """sys._current_frames(), this thread's from the caller's frame as it gives it,
    but with the GC off, as tbfast's own (tbfast._pyformat.current_frames): on 3.11
    a collection run inside it can wait for the thread list's lock it holds."""
    frames = current_frames()
    frames[threading.get_ident()] = sys._getframe(1)
    return frames


def truth(ident):
    """(file, line, function, source) innermost first, from traceback.extract_stack."""
    frame = current_stacks()[ident]
    return [(summary.filename, summary.lineno, summary.name, summary.line or None)
            for summary in reversed(traceback.extract_stack(frame))]


def dumped(document, ident):
    thread = thread_of(document, ident)
    return [(frame["file"], frame["line"], frame["function"], frame["source"])
            for frame in thread["frames"]]


def thread_of(document, ident):
    if isinstance(document, str):
        document = json.loads(document)
    matches = [thread for thread in document["threads"] if thread["ident"] == ident]
    assert len(matches) == 1, "thread %#x appears %d times" % (ident, len(matches))
    return matches[0]


class LogRecords(logging.Handler):
    """What the `tbfast` logger emitted."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def wait_for(self, count, seconds=10):
        """The records, once there are `count` of them or `seconds` have passed."""
        deadline = time.monotonic() + seconds
        while len(self.records) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.records


@pytest.fixture
def tbfast_log():
    handler = LogRecords()
    logger = logging.getLogger("tbfast")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
