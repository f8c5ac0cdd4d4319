"""faulthandler, as a drop-in: ``from tbfast import faulthandler``.

The same functions as the standard library's faulthandler of the running CPython,
with its signatures, defaults, errors and output, byte for byte, so that log
parsers and alerts written for faulthandler keep working.  The differences are
what tbfast is for: each dump is walked without the GIL and written in one
write(), and past the thread cap (100, or 3.15's max_threads) the current and
the main thread are still shown after faulthandler's "...".

Importing it takes over from the standard library's handler if that is enabled
(``-X faulthandler``, PYTHONFAULTHANDLER), so that a crash is reported once.
Without the C core (tbfast.MODE == "python") every name is the standard
library's own: a pure-Python dump could not run in a crashing process.
"""

import faulthandler as _stdlib
import math as _math
import signal as _signal
import sys as _sys

from . import _backend, _crash

__all__ = ["enable", "disable", "is_enabled", "dump_traceback", "dump_traceback_later",
           "cancel_dump_traceback_later", "register", "unregister"]
if _sys.version_info >= (3, 14):
    __all__.append("dump_c_stack")

_core = _backend.impl
_VERSION = _sys.version_info[:2]
_MAX_THREADS = 100  # faulthandler's MAX_NTHREADS, and 3.15's max_threads default

_files = {}  # what each installed dump writes to, kept open while it may write


def _fd_of(file):
    """faulthandler's file argument: an fd, or an object with fileno() (flushed
    first); None is sys.stderr."""
    if file is None:
        file = _sys.stderr
        if file is None:
            raise RuntimeError("sys.stderr is None")
    if isinstance(file, int):
        if file < 0:
            raise ValueError("file is not a valid file descriptor")
        return file
    fd = file.fileno()
    if not isinstance(fd, int) or fd < 0:
        raise RuntimeError("file.fileno() is not a valid file descriptor")
    try:
        file.flush()
    except Exception:  # noqa: BLE001 - faulthandler ignores a failed flush too
        pass
    return fd


def _keep(key, file):
    _files[key] = file if file is not None else _sys.stderr


def _enable(file, all_threads, c_stack, max_threads):
    _crash.install(_fd_of(file), "faulthandler", bool(all_threads), bool(c_stack), max_threads)
    _keep("enable", file)


def disable():
    """Puts back the handlers enable() replaced; False if it was not enabled."""
    _files.pop("enable", None)
    return _core.crash_disable()


def is_enabled():
    """Whether enable() is in effect."""
    return _core.crash_enabled()


def _dump(file, all_threads, max_threads):
    fd = _fd_of(file)
    # Two frames of ours (this one and the public function) are not the caller's.
    _core.dump_to_fd(fd, bool(all_threads), "faulthandler", 2, "api", False, max_threads)


def _timeout_header(timeout):
    """faulthandler's "Timeout (H:MM:SS.ffffff)!" line; the microseconds rounded up."""
    microseconds = _math.ceil(timeout * 1e6)
    seconds, fraction = divmod(microseconds, 1000000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    text = "%d:%02d:%02d" % (hours, minutes, seconds)
    if fraction:
        text += ".%06d" % fraction
    return ("Timeout (%s)!\n" % text).encode()


def _dump_later(timeout, repeat, file, exit, max_threads):
    if isinstance(timeout, str) or not isinstance(timeout, (int, float)):
        raise TypeError("timeout must be a number of seconds, not %s" % type(timeout).__name__)
    if _math.isnan(timeout):
        raise ValueError("Invalid value NaN (not a number)")
    if timeout <= 0:
        raise ValueError("timeout must be greater than 0")
    if timeout > 1e9:
        raise OverflowError("timeout out of range")
    fd = _fd_of(file)
    _core.dump_later(timeout, bool(repeat), fd, bool(exit), "faulthandler",
                     _timeout_header(timeout), max_threads)
    _keep("later", file)


def cancel_dump_traceback_later():
    """Cancels the dump that dump_traceback_later() scheduled."""
    _core.cancel_dump_later()
    _files.pop("later", None)


def _register(signum, file, all_threads, chain, max_threads):
    if signum in _crash.FAULT_SIGNALS:
        raise RuntimeError("signal %d cannot be registered, use enable() instead" % signum)
    if signum < 1 or signum >= _signal.NSIG:
        raise ValueError("signal number out of range")
    if signum in (_signal.SIGKILL, _signal.SIGSTOP):
        raise OSError(22, "Invalid argument")
    fd = _fd_of(file)
    name = _signal.Signals(signum).name if signum in _signal.Signals._value2member_map_ \
        else "SIGRTMIN+%d" % (signum - _signal.SIGRTMIN)
    _core.register(signum, fd, bool(all_threads), bool(chain), "faulthandler", name, False,
                   max_threads)
    _keep(signum, file)


def unregister(signum, /):
    """Puts back the handler register() replaced; False if none was registered."""
    if signum < 1 or signum >= _signal.NSIG:
        raise ValueError("signal number out of range")
    _files.pop(signum, None)
    return _core.unregister(signum)


if _VERSION >= (3, 15):
    def enable(file=None, all_threads=True, c_stack=True, *, max_threads=_MAX_THREADS):
        """Dumps every thread on SIGSEGV, SIGFPE, SIGABRT, SIGBUS and SIGILL, then lets
        the signal end the process as it would have."""
        _enable(file, all_threads, c_stack, max_threads)

    def dump_traceback(file=None, all_threads=True, *, max_threads=_MAX_THREADS):
        """Writes the traceback of every thread (or only this one) to file."""
        _dump(file, all_threads, max_threads)

    def dump_traceback_later(timeout, repeat=False, file=None, exit=False, *,
                             max_threads=_MAX_THREADS):
        """Dumps every thread after `timeout` seconds (again each `timeout` with
        repeat), then exits with status 1 if `exit`."""
        _dump_later(timeout, repeat, file, exit, max_threads)

    def register(signum, file=None, all_threads=True, chain=False, *, max_threads=_MAX_THREADS):
        """Dumps every thread (or only the signalled one) on signal `signum`."""
        _register(signum, file, all_threads, chain, max_threads)
elif _VERSION >= (3, 14):
    def enable(file=None, all_threads=True, c_stack=True):
        """Dumps every thread on SIGSEGV, SIGFPE, SIGABRT, SIGBUS and SIGILL, then lets
        the signal end the process as it would have."""
        _enable(file, all_threads, c_stack, _MAX_THREADS)
else:
    def enable(file=None, all_threads=True):
        """Dumps every thread on SIGSEGV, SIGFPE, SIGABRT, SIGBUS and SIGILL, then lets
        the signal end the process as it would have."""
        _enable(file, all_threads, False, _MAX_THREADS)

if _VERSION < (3, 15):
    def dump_traceback(file=None, all_threads=True):
        """Writes the traceback of every thread (or only this one) to file."""
        _dump(file, all_threads, _MAX_THREADS)

    def dump_traceback_later(timeout, repeat=False, file=None, exit=False):
        """Dumps every thread after `timeout` seconds (again each `timeout` with
        repeat), then exits with status 1 if `exit`."""
        _dump_later(timeout, repeat, file, exit, _MAX_THREADS)

    def register(signum, file=None, all_threads=True, chain=False):
        """Dumps every thread (or only the signalled one) on signal `signum`."""
        _register(signum, file, all_threads, chain, _MAX_THREADS)

if _VERSION >= (3, 14):
    def dump_c_stack(file=None):
        """Writes the calling thread's C stack to file."""
        _core.dump_c_stack(_fd_of(file))


if not _backend.HAS_CORE:  # the standard library's, whole: see the module's docstring
    from faulthandler import (  # noqa: F811
        cancel_dump_traceback_later, disable, dump_traceback, dump_traceback_later, enable,
        is_enabled, register, unregister)
    if _VERSION >= (3, 14):
        from faulthandler import dump_c_stack  # noqa: F401,F811
elif _stdlib.is_enabled():  # -X faulthandler, PYTHONFAULTHANDLER: one report per crash
    _stdlib.disable()
    enable()
