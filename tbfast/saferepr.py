"""Bounded, masked reprs of arbitrary values, for dumps that show locals.

A dump must not break or stall because of a value in it.  Every repr here is
bounded in size (reprlib's limits, then a cut marked with "..."), and no code of
a value's runs in the dumping thread.  Plain builtins, whose repr runs no Python
code (str, int, None, functions, classes...), are repr'd inline, and so are the
lists, tuples, dicts, sets and deques that hold values, each item in turn.  Any
other value, C reprs included (a SimpleNamespace, an OrderedDict or an exception
repr the values in them), is repr'd on a reusable helper thread, given at most
``time_limit`` seconds (and all of them in one dump at most what ``budget()``
allows), and shown as timed out when it overruns: it may wait for a lock the
dumped thread holds.  Whatever such a repr raises, KeyboardInterrupt and
SystemExit included, is shown, never propagated.

Names that look secret (see ``DEFAULT_MASK``), and the values of dict keys that
do, are masked whatever their value.  Needs the GIL; the GIL-free core shows
only values it can read without running code.
"""

import array
import builtins
import collections
import contextlib
import operator
import os
import reprlib
import threading
import time
import types

from ._limits import DEFAULT_MASK, MAX_LOCALS

__all__ = ["MASKED", "DEFAULT_MASK", "SafeRepr", "safe_repr", "frame_locals"]

MASKED = "'********'"
_CO_OPTIMIZED = 0x0001  # inspect.CO_OPTIMIZED (a function's frame), without importing inspect
DEFAULT_MAX_LENGTH = 200
DEFAULT_TIME_LIMIT = 0.05  # seconds for one repr on the helper thread
DUMP_TIME_BUDGET = 1.0  # seconds for all of them in one dump (see SafeRepr.budget)
# Exact types whose repr runs no Python code: it comes from their own fields (a
# function's or class's name), never from another object's repr.
_PLAIN = frozenset((type(None), bool, int, float, complex, str, bytes, bytearray, range,
                    type(...), type(NotImplemented), types.FunctionType,
                    types.BuiltinFunctionType, types.CodeType, type))
# reprlib picks repr_<type name>; only these exact types are what those names mean.
_REPRLIB_TYPES = frozenset((tuple, list, dict, set, frozenset, collections.deque, array.array,
                            str, int))
_qualname = type.__dict__["__qualname__"].__get__  # a class's own, whatever its metaclass says


def _sorted_if_plain(items, key=None):
    """Sorted, as reprlib shows sets and dicts, when comparing the keys runs no Python
    code (each is of a plain type); else in their order."""
    items = list(items)
    keys = items if key is None else [key(item) for item in items]
    if not all(type(each) in _PLAIN for each in keys):
        return items
    try:
        return sorted(items, key=key)
    except TypeError:  # mixed or unordered kinds (str and int, complex numbers)
        return items


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
        """Within it, all the helper-thread reprs of this thread share ``seconds``:
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
        except Exception as error:  # noqa: BLE001 - a container's own machinery failed
            text = _raised(value, error)
        return text if len(text) <= self.max_length else text[:self.max_length - 3] + "..."

    def local(self, name, value):
        return MASKED if self.is_masked(name) else self.repr(value)

    def locals(self, mapping):
        """``{name: repr}`` for a frame's ``f_locals``, in their order."""
        return {name: self.local(name, value) for name, value in mapping.items()}

    def repr1(self, value, level):
        kind = type(value)
        if kind in _REPRLIB_TYPES:
            return super().repr1(value, level)
        if kind in _PLAIN:
            return builtins.repr(value)
        return _timed_repr(value, self._time_left())  # even a C repr may call Python's

    def repr_set(self, value, level):
        return self._repr_elements(value, level, "{", "}", self.maxset)

    def repr_frozenset(self, value, level):
        return self._repr_elements(value, level, "frozenset({", "})", self.maxfrozenset)

    def _repr_elements(self, value, level, left, right, most):
        # As reprlib's, sorted only when that runs no Python code.
        if not value:
            return builtins.repr(value)
        if level <= 0:
            return left + self.fillvalue + right
        pieces = [self.repr1(item, level - 1) for item in _sorted_if_plain(value)[:most]]
        if len(value) > most:
            pieces.append(self.fillvalue)
        return left + ", ".join(pieces) + right

    def repr_dict(self, value, level):
        # As reprlib's, sorted only when that runs no Python code, and the value of a
        # key that looks secret masked.
        if not value:
            return "{}"
        if level <= 0:
            return "{%s}" % self.fillvalue
        pieces = []
        for key, item in _sorted_if_plain(value.items(), operator.itemgetter(0))[:self.maxdict]:
            shown = (MASKED if type(key) is str and self.is_masked(key)
                     else self.repr1(item, level - 1))
            pieces.append("%s: %s" % (self.repr1(key, level - 1), shown))
        if len(value) > self.maxdict:
            pieces.append(self.fillvalue)
        return "{%s}" % ", ".join(pieces)


def _raised(value, error):
    try:
        message = str(error)[:80]
    except BaseException:  # noqa: BLE001 - an exception whose str fails
        message = "?"
    return "<%s object; repr raised %s: %s>" % (
        _qualname(type(value)), _qualname(type(error)), message)


class _ReprWorker:
    """A daemon thread that runs reprs handed to it, one at a time, and shows
    whatever they raise (BaseException: SystemExit must not end it).

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
    """repr(value) on a helper thread, or why not."""
    name = _qualname(type(value))
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
