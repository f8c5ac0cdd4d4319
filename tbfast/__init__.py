"""tbfast: the live tracebacks of every thread of a worker, fast, without the GIL.

The names that faulthandler has work as faulthandler's do (dump_traceback,
register, unregister), with a `format` and more in each thread's heading.
The C core is used when it was built; otherwise, or with TBFAST_NO_EXTENSIONS=1,
the pure-Python fallback gives the same output whenever the GIL can be taken.
"""

import errno
import os
import signal as _signal
import sys

from . import _fallback, _limits
from ._limits import FORMATS, check_format as _check_format

__all__ = [
    "HAS_CORE", "MODE", "FALLBACK_REASON", "FORMATS", "dump_traceback", "format_traceback", "register",
    "unregister", "set_context", "get_context", "configure", "harakiri", "HarakiriError",
    "dump_traceback_later", "cancel_dump_traceback_later", "Breakpoint",
]
__version__ = "0.1.0"

MIN_BUFFER_SIZE = 4096

from ._backend import FALLBACK_REASON, HAS_CORE, MODE, impl as _impl, warn_if_fallback

if HAS_CORE:
    from . import _names

    _names.install(_impl)


from .saferepr import safe_repr  # noqa: E402 - locals need reprs, so the GIL:
# those dumps come from the pure-Python formatter (_fallback) whether or not the core is in use.
from . import watchdog  # noqa: E402 - needs _impl
from .watchdog import (  # noqa: E402 - needs _impl
    HarakiriError, cancel_dump_traceback_later, dump_traceback_later, harakiri)


class Breakpoint(Exception):
    """Raised at the line a request asked for, by tbfast.wsgi.LiveBreakpointMiddleware."""


def _fileno(file):
    """An fd from an int or a file object, checked open, as faulthandler takes them."""
    if file is None:
        file = sys.stderr
        if file is None:
            raise RuntimeError("sys.stderr is None: pass a file or an fd")
    if isinstance(file, bool) or not isinstance(file, int):
        fileno = getattr(file, "fileno", None)
        if fileno is None:
            raise TypeError("file must be an int fd or have a fileno() method, not %s"
                            % type(file).__name__)
        if getattr(file, "closed", False):
            raise ValueError("file is closed")
        try:
            fd = fileno()
        except (OSError, ValueError) as error:
            raise ValueError("file has no usable fd: %s" % error) from None
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError("%s.fileno() must return an int fd, not %s"
                            % (type(file).__name__, type(fd).__name__))
        flush = getattr(file, "flush", None)
        if flush is not None:
            flush()
    else:
        fd = file
    if fd < 0:
        raise ValueError("file descriptor must be a non-negative integer, not %d" % fd)
    try:
        os.fstat(fd)
    except OSError as error:
        raise OSError(error.errno, "fd %d is not open" % fd) from None
    except OverflowError:  # beyond a C int: no such fd either
        raise OSError(errno.EBADF, "fd %d is not open" % fd) from None
    return fd


def dump_traceback(file=None, all_threads=True, *, format="text", locals=False):
    """Write the traceback of every thread (or only this one) to a file or fd.

    `file` defaults to sys.stderr.  The write happens without the GIL, so a
    thread of this process may drain a pipe the dump goes to.  `locals=True`
    adds each frame's locals as safe, bounded, masked reprs (tbfast.saferepr).
    """
    _check_format(format)
    fd = _fileno(file)
    if locals:
        _fallback.dump_to_fd(fd, all_threads, format, 1, safe=safe_repr)
    else:
        _impl.dump_to_fd(fd, all_threads, format, 1)


def format_traceback(all_threads=True, *, format="text", locals=False):
    """The dump as a str; `locals=True` as in dump_traceback."""
    _check_format(format)
    if locals:
        data = _fallback.format_dump(all_threads, format, 1, safe=safe_repr)
    else:
        data = _impl.format_dump(all_threads, format, 1)
    return data.decode("utf-8", "replace")


_registered_files = {}


def register(signum, file=None, all_threads=True, chain=False, *, format="text", log=False):
    """Dump on signal `signum`, from a C-level handler when the core is in use:
    the dump is written even while the GIL holder is stuck in C.

    With chain=True the handler that was there before runs after the dump.
    With log=True the dump also goes to the `tbfast` logger once Python runs, to
    the spool (tbfast.spool) and to Sentry (tbfast.sentry), as harakiri dumps do;
    file=False then leaves out the fd.

    A fault signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) is dumped once: then
    the handler that was there before (chain=True) or the default action comes back
    and the signal is raised again, so the process ends by it, as with faulthandler.
    The fallback refuses them (ValueError): its handler could never run on a fault.
    """
    _check_format(format)
    signum = _valid_signal(signum)
    fd = -1 if file is False and log else _fileno(file)
    warn_if_fallback("register(%s)" % _signal_name(signum))
    if log:
        watchdog.ensure_configured()  # its Python side logs and ships
    _impl.register(signum, fd, all_threads, chain, format, _signal_name(signum), log)
    _registered_files[signum] = file  # keeps the file, so its fd stays open


def unregister(signum):
    """Put back the handler replaced by register(); False if none was registered."""
    signum = _valid_signal(signum)
    _registered_files.pop(signum, None)
    return _impl.unregister(signum)


def _signal_name(signum):
    """SIGUSR1, or SIGRTMIN+3 for the real-time signals, which Signals does not name."""
    try:
        return _signal.Signals(signum).name
    except ValueError:
        return "SIGRTMIN+%d" % (signum - _signal.SIGRTMIN)


def _valid_signal(signum):
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise TypeError("signal number must be an int, not %s" % type(signum).__name__)
    if signum not in _signal.valid_signals():
        raise ValueError("signal number %d out of range" % signum)
    if signum in (_signal.SIGKILL, _signal.SIGSTOP):
        raise ValueError("signal %d cannot be caught" % signum)
    return int(signum)


def set_context(text):
    """Set this thread's context line (a request's method and URL, say); None clears it.

    The core stores it where a GIL-free dump can read it; it is cut at
    CONTEXT_LIMIT bytes with '...'.  A NUL in it is refused (ValueError).
    """
    if text is not None and not isinstance(text, str):
        raise TypeError("context must be a str or None, not %s" % type(text).__name__)
    if text is not None and "\0" in text:
        raise ValueError("context must not contain a NUL character, as at index %d"
                         % text.index("\0"))
    if HAS_CORE:  # a dump with locals comes from the Python formatter: it needs them too
        _fallback.set_context(text)
    if not _impl.set_context(text) and HAS_CORE:
        _names.sweep(_impl)
        _impl.set_context(text)


def get_context():
    """This thread's context line, or None."""
    return _impl.get_context()


def configure(*, buffer_size=None, gil_wait=None, mask=None):
    """Resize the preallocated dump buffers (bytes); a dump larger than this is
    cut with a marker saying how much was left out.  Also TBFAST_BUFFER_SIZE.

    `gil_wait` (seconds, default 0.025, at most 10; 0 turns it off): how long a
    socket dump tries to take the GIL for a consistent walk before it falls back
    to the GIL-free one.  Needs the core; the pure-Python server always holds the GIL.

    `mask`: the words (substrings, any case) of the local names and dict keys
    whose values every dump, snapshot and Sentry event shows as '********'; it
    replaces the list, tbfast.saferepr.DEFAULT_MASK, so pass DEFAULT_MASK + (...)
    to add words.  TBFAST_MASK (words, comma-separated) adds to the default."""
    if gil_wait is not None:
        gil_wait = _limits.check_seconds(gil_wait, "gil_wait", zero_ok=True,
                                         most=_limits.MAX_GIL_WAIT)
        if hasattr(_impl, "handover_configure"):
            _impl.handover_configure(gil_wait)
    if mask is not None:
        words = _mask_words(mask)
        if HAS_CORE:
            _impl.set_mask(words)
        safe_repr.mask = words
    if buffer_size is not None:
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int):
            raise TypeError("buffer_size must be an int")
        if buffer_size < MIN_BUFFER_SIZE:
            raise ValueError("buffer_size must be at least %d bytes, not %d"
                             % (MIN_BUFFER_SIZE, buffer_size))
        _impl.configure(buffer_size)


def _mask_words(mask):
    if isinstance(mask, (str, bytes)):
        raise TypeError("mask must be a sequence of words, not one %s" % type(mask).__name__)
    words = tuple(mask)
    for word in words:
        if not isinstance(word, str) or not word or "\0" in word:
            raise ValueError("each mask word must be a non-empty str without NUL, not %r" % (word,))
    return tuple(word.lower() for word in words)


from .sockets import disable_tracebacker, enable_tracebacker  # noqa: E402 - needs _impl

__all__ += ["enable_tracebacker", "disable_tracebacker"]


def _configure_from_environment():
    value = os.environ.get("TBFAST_BUFFER_SIZE")
    try:
        size = int(value) if value else _limits.DEFAULT_BUFFER_SIZE
    except ValueError:
        raise ValueError("TBFAST_BUFFER_SIZE must be a number of bytes, not %r" % value) from None
    more = [word.strip() for word in os.environ.get("TBFAST_MASK", "").split(",") if word.strip()]
    configure(buffer_size=size, gil_wait=_limits.DEFAULT_GIL_WAIT,
              mask=_limits.DEFAULT_MASK + tuple(more))


_configure_from_environment()
