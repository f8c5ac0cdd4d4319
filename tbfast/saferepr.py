"""Bounded, masked reprs of arbitrary values, for dumps that show locals.

A dump must not break or stall because of a value in it.  Every repr here is
bounded in size (reprlib's limits, then a cut marked with "..."), catches
whatever the value's ``__repr__`` raises and shows it, and gives a ``__repr__``
written in Python at most ``time_limit`` seconds: it runs on a helper thread,
and one that overruns is abandoned and shown as timed out.  Builtin values are
repr'd inline, so a dump of ordinary locals starts no thread.

Names that look secret (see ``DEFAULT_MASK``) are masked whatever their value.
Needs the GIL; the GIL-free core shows only values it can read without running
code.
"""

import reprlib
import threading
import types

from ._limits import DEFAULT_MASK

MASKED = "'********'"
DEFAULT_MAX_LENGTH = 200
DEFAULT_TIME_LIMIT = 0.05  # seconds for one __repr__ written in Python


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
            return _timed_repr(value, self.time_limit)
        try:
            return repr(value)
        except Exception as error:
            return _raised(value, error)


def _raised(value, error):
    return "<%s object; repr raised %s: %s>" % (
        type(value).__qualname__, type(error).__name__, str(error)[:80])


class _ReprCall:
    """One ``repr`` run on a helper thread, whose result the caller waits for."""

    def __init__(self, value):
        self.value = value
        self.result = None
        self.done = threading.Event()

    def run(self):
        try:
            self.result = repr(self.value)
        except BaseException as error:  # noqa: BLE001 - shown, never propagated
            self.result = _raised(self.value, error)
        self.done.set()


def _timed_repr(value, time_limit):
    call = _ReprCall(value)
    thread = threading.Thread(target=call.run, name="tbfast-repr", daemon=True)
    thread.start()
    if call.done.wait(time_limit):
        return call.result
    return "<%s object; repr timed out after %g s>" % (type(value).__qualname__, time_limit)


safe_repr = SafeRepr()
