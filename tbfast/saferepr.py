"""Bounded, masked reprs of arbitrary values, for dumps that show locals.

A dump must not break or stall because of a value in it.  Every repr here is
bounded in size (reprlib's limits, then a cut marked with "..."), catches
whatever the value's ``__repr__`` raises and shows it, and gives a ``__repr__``
written in Python at most ``time_limit`` seconds (and all of them together at
most what ``budget()`` allows): it runs on a reusable helper thread, and one
that overruns is abandoned and shown as timed out.  Builtin values are repr'd
inline, so a dump of ordinary locals needs no helper.

Names that look secret (see ``DEFAULT_MASK``) are masked whatever their value.
Needs the GIL; the GIL-free core shows only values it can read without running
code.
"""

import contextlib
import os
import reprlib
import threading
import time
import types

from ._limits import DEFAULT_MASK, MAX_LOCALS

MASKED = "'********'"
_CO_OPTIMIZED = 0x0001  # inspect.CO_OPTIMIZED (a function's frame), without importing inspect
DEFAULT_MAX_LENGTH = 200
DEFAULT_TIME_LIMIT = 0.05  # seconds for one __repr__ written in Python
DUMP_TIME_BUDGET = 1.0  # seconds for all of them in one dump (see SafeRepr.budget)


class SafeRepr(reprlib.Repr):
    """``SafeRepr(max_length=200, time_limit=0.05, mask=DEFAULT_MASK)``.

    ``repr(value)`` never raises and returns at most ``max_length`` characters;
    ``local(name, value)`` also masks secret-looking names; ``locals(mapping)``
    does a whole frame's locals.
    """

    def __init__(self, max_length=DEFAULT_MAX_LENGTH, time_limit=DEFAULT_TIME_LIMIT,
                 mask=DEFAULT_MASK):
        super().__init__()
        if max_length < 8:
            raise ValueError("max_length must be at least 8, not %r" % (max_length,))
        self.max_length = max_length
        self.maxstring = self.maxother = max_length
        self.maxlevel = 3
        self.time_limit = time_limit
        self.mask = tuple(word.lower() for word in mask)
        self._deadline = threading.local()

    @contextlib.contextmanager
    def budget(self, seconds):
        """Within it, all the Python-level reprs of this thread share ``seconds``:
        a dump of many slow values is bounded as a whole, not value by value."""
        outer = getattr(self._deadline, "at", None)
        at = time.monotonic() + seconds
        self._deadline.at = at if outer is None else min(at, outer)
        try:
            yield self
        finally:
            self._deadline.at = outer

    def _time_left(self):
        at = getattr(self._deadline, "at", None)
        return self.time_limit if at is None else min(self.time_limit, at - time.monotonic())

    def is_masked(self, name):
        name = name.lower()
        return any(word in name for word in self.mask)

    def repr(self, value):
        try:
            text = super().repr(value)
        except Exception as error:  # a container's own machinery failed
            text = _raised(value, error)
        return text if len(text) <= self.max_length else text[:self.max_length - 3] + "..."

    def local(self, name, value):
        return MASKED if self.is_masked(name) else self.repr(value)

    def locals(self, mapping):
        """``{name: repr}`` for a frame's ``f_locals``, in their order."""
        return {name: self.local(name, value) for name, value in mapping.items()}

    def repr_instance(self, value, level):
        # reprlib ends here for every type it has no repr_<type> for.
        method = getattr(type(value), "__repr__", None)
        if isinstance(method, types.FunctionType):
            return _timed_repr(value, self._time_left())
        try:
            return repr(value)
        except Exception as error:
            return _raised(value, error)


def _raised(value, error):
    return "<%s object; repr raised %s: %s>" % (
        type(value).__qualname__, type(error).__name__, str(error)[:80])


class _ReprWorker:
    """A daemon thread that runs reprs handed to it, one at a time.

    A caller waits for its result at most its time limit; a worker whose repr
    overran is abandoned by that caller and goes back to the idle pool by
    itself once the repr returns, so a dump starts a thread only when every
    worker is busy, and never more than MAX_WORKERS at once.  A worker left
    idle IDLE_SECONDS ends, so a process does not keep threads between dumps.
    """

    def __init__(self):
        self.wake = threading.Event()
        self.done = threading.Event()
        self.value = self.result = None
        self.abandoned = False
        self.thread = threading.Thread(target=self._serve, name="tbfast-repr", daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            if not self.wake.wait(IDLE_SECONDS):
                with _pool_lock:
                    if self in _idle:  # idle too long: no thread left behind (fork warns of them)
                        _idle.remove(self)
                        _workers["count"] -= 1
                        return
                continue  # taken from the pool just now: its value is on the way
            self.wake.clear()
            try:
                self.result = repr(self.value)
            except BaseException as error:  # noqa: BLE001 - shown, never propagated
                self.result = _raised(self.value, error)
            with _pool_lock:
                self.value = None
                self.done.set()
                if self.abandoned:
                    self.abandoned = False
                    _release(self)

    def run(self, value, time_limit):
        """``(True, repr)``, or ``(False, None)`` when it overran ``time_limit``."""
        self.value, self.result = value, None
        self.done.clear()
        self.wake.set()
        if self.done.wait(time_limit):
            return True, self.result
        with _pool_lock:
            if self.done.is_set():  # it finished between the wait and the lock
                return True, self.result
            self.abandoned = True
            return False, None


MAX_WORKERS = 4  # reprs still running after their time limit hold one each
IDLE_SECONDS = 0.5  # an idle worker's thread ends after this
_pool_lock = threading.Lock()
_idle = []
_workers = {"count": 0}


def _forget_workers():
    """In a forked child the parent's workers do not exist, and the lock may be held."""
    global _pool_lock
    _pool_lock = threading.Lock()
    _idle.clear()
    _workers["count"] = 0


os.register_at_fork(after_in_child=_forget_workers)


def _acquire():
    """An idle worker, a new one, or None when MAX_WORKERS are all stuck."""
    with _pool_lock:
        if _idle:
            return _idle.pop()
        if _workers["count"] >= MAX_WORKERS:
            return None
        _workers["count"] += 1
    return _ReprWorker()


def _release(worker):  # with _pool_lock held
    _idle.append(worker)


def _timed_repr(value, time_limit):
    name = type(value).__qualname__
    if time_limit <= 0:
        return "<%s object; repr skipped: the dump's time budget is spent>" % name
    worker = _acquire()
    if worker is None:
        return "<%s object; repr skipped: %d earlier reprs still running>" % (name, MAX_WORKERS)
    finished, result = worker.run(value, time_limit)
    if not finished:
        return "<%s object; repr timed out after %.2g s>" % (name, time_limit)
    with _pool_lock:
        _release(worker)
    return result


safe_repr = SafeRepr()


def frame_locals(frame, safe=safe_repr, limit=None):
    """``({name: repr}, more)``: the first ``limit`` (default MAX_LOCALS) of a
    function frame's locals in ``f_locals`` order, masked and bounded by
    ``safe``, and how many more there are.  A module's or class body's frame has
    a namespace, not locals: ``({}, 0)``, as the GIL-free core, which reads only
    a function's fast locals, shows it."""
    if limit is None:
        limit = MAX_LOCALS
    if not frame.f_code.co_flags & _CO_OPTIMIZED:
        return {}, 0
    items = list(frame.f_locals.items())  # a copy: a repr may run code that changes them
    shown = {str(name): safe.local(str(name), value) for name, value in items[:limit]}
    return shown, max(0, len(items) - limit)
