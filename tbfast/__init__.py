"""tbfast: the live tracebacks of every thread of a worker, fast, without the GIL.

The names that faulthandler has work as faulthandler's do (dump_traceback,
register, unregister), with a `format` and more in each thread's heading.
The C core is used when it was built; otherwise, or with TBFAST_NO_EXTENSIONS=1,
the pure-Python fallback gives the same output whenever the GIL can be taken.
"""

import os as _os
import signal as _signal

from . import _crash, _limits, _names, _pyformat, _pywrite, watchdog
from ._backend import CAPABILITIES as _CAPABILITIES, FALLBACK_REASON, HAS_CORE, MODE
from ._backend import impl as _impl, native_option as _native_option
from ._backend import warn_if_fallback as _warn_if_fallback
from ._fds import fd_of as _fd_of
from ._limits import FORMATS, check_format as _check_format
from .saferepr import safe_repr  # dumps with locals come from the Python formatter (the GIL)
from .sockets import disable_tracebacker, enable_tracebacker
from .watchdog import HarakiriError, cancel_dump_traceback_later, dump_traceback_later, harakiri

__all__ = [
    "HAS_CORE", "MODE", "FALLBACK_REASON", "FORMATS", "dump_traceback", "format_traceback", "register",
    "unregister", "set_context", "get_context", "configure", "harakiri", "HarakiriError",
    "dump_traceback_later", "cancel_dump_traceback_later", "Breakpoint",
    "enable_tracebacker", "disable_tracebacker", "enable", "disable", "is_enabled",
]
__version__ = "0.1.0"

MIN_BUFFER_SIZE = 4096

if "gil-free" in _CAPABILITIES:  # its dumps read thread names from its own table
    _names.install(_impl)


class Breakpoint(Exception):
    """Raised at the line a request asked for, by tbfast.wsgi.LiveBreakpointMiddleware."""


def dump_traceback(file=None, all_threads=True, *, format="text", locals=False, native=False):
    """Write the traceback of every thread (or only this one) to a file or fd.

    `file` defaults to sys.stderr.  The write happens without the GIL, so a
    thread of this process may drain a pipe the dump goes to.  `locals=True`
    adds each frame's locals as safe, bounded, masked reprs (tbfast.saferepr).
    `native=True` adds the C frames of the threads that run or hold the GIL (and
    this one's), in place of the interpreter's own; `native="all"`, every thread's.
    """
    _check_format(format)
    fd = _fd_of(file)
    if locals:
        _pywrite.dump_to_fd(fd, all_threads, format, 1, safe=safe_repr)
    else:
        _impl.dump_to_fd(fd, all_threads, format, 1, **_native_option(native, numbered=True))


def format_traceback(all_threads=True, *, format="text", locals=False, native=False):
    """The dump as a str; `locals` and `native` as in dump_traceback."""
    _check_format(format)
    if locals:
        data = _pyformat.format_dump(all_threads, format, 1, safe=safe_repr)
    else:
        data = _impl.format_dump(all_threads, format, 1, **_native_option(native, numbered=True))
    return data.decode("utf-8", "replace")



_registered_files = {}


def enable(file=None, all_threads=True, *, format="text"):
    """The crash handler: on SIGSEGV, SIGFPE, SIGABRT, SIGBUS or SIGILL, every thread's
    stack, walked without the GIL, to `file` (default sys.stderr; False: none), and,
    when tbfast.spool is configured, as JSON to the spool, where the next process
    that configures it logs the dump and ships it (tbfast.sentry).  Then the handler
    that was there before runs, or the default action: the process dies as it would
    have, with the same exit status and core dump.  TBFAST_FAULTHANDLER=1 enables it
    at start-up.  One crash handler per process: tbfast.faulthandler.enable() sets
    the same one, in faulthandler's format.

    No Python code can run in a crashing process: the fallback enables the standard
    library's faulthandler instead, and says so once in the log."""
    _check_format(format)
    fd = -1 if file is False else _fd_of(file)
    _warn_if_fallback("enable()")
    _crash.install(fd, format, bool(all_threads))
    _registered_files["enable"] = file


def disable():
    """Puts back the handlers enable() replaced; False if it was not enabled."""
    _registered_files.pop("enable", None)
    return _impl.crash_disable()


def is_enabled():
    """Whether the crash handler is in effect."""
    return _impl.crash_enabled()


def register(signum, file=None, all_threads=True, chain=False, *, format="text", log=False,
             native=False):
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

    `native` as in dump_traceback; in a signal handler C frames are shown as
    module+offset (names need the loader, which a handler must not call): resolve
    them with addr2line or gdb, or ask the socket, which names them.
    """
    _check_format(format)
    signum = _valid_signal(signum)
    fd = -1 if file is False and log else _fd_of(file)
    _warn_if_fallback("register(%s)" % _signal_name(signum))
    if log:
        watchdog.ensure_configured()  # its Python side logs and ships
    _impl.register(signum, fd, all_threads, chain, format, _signal_name(signum), log,
                   **_native_option(native))
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
    _pyformat.set_context(text)  # dumps with locals come from the Python formatter
    if "gil-free" in _CAPABILITIES and not _impl.set_context(text):
        _names.sweep(_impl)  # the core's table is full: make room
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
        if "handover" in _CAPABILITIES:
            _impl.handover_configure(gil_wait)
    if mask is not None:
        words = _mask_words(mask)
        if "locals-gil-free" in _CAPABILITIES:
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


def _configure_from_environment():
    value = _os.environ.get("TBFAST_BUFFER_SIZE")
    try:
        size = int(value) if value else _limits.DEFAULT_BUFFER_SIZE
    except ValueError:
        raise ValueError("TBFAST_BUFFER_SIZE must be a number of bytes, not %r" % value) from None
    more = [word.strip() for word in _os.environ.get("TBFAST_MASK", "").split(",") if word.strip()]
    configure(buffer_size=size, gil_wait=_limits.DEFAULT_GIL_WAIT,
              mask=_limits.DEFAULT_MASK + tuple(more))


_configure_from_environment()
