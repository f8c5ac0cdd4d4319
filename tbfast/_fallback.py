"""The pure-Python backend, for when the C core is missing: the core's functions, by
the same names (tbfast._backend chooses one of the two).

Its dumps need the GIL, so it cannot help a worker whose GIL holder is stuck, but
whenever they run they equal the core's: they come from the Python formatter
(tbfast._pyformat), its watchdog is tbfast._fallback_watchdog and its socket
server tbfast._fallback_server.
"""

import faulthandler
import signal
import threading

from ._fallback_server import serve_start, serve_stop
from ._fallback_watchdog import (
    HarakiriScope, cancel_dump_later, dump_later, notify, raise_in_thread, take_mailbox,
    watchdog_configure)
from ._limits import KIND_SIGNAL
from ._pyformat import MODE, format_dump, get_context, set_context
from ._pywrite import dump_to_fd, write_dump

__all__ = [
    "MODE", "FAULT_SIGNALS", "format_dump", "dump_to_fd", "configure", "set_context",
    "get_context", "register", "unregister", "serve_start", "serve_stop", "HarakiriScope",
    "watchdog_configure", "take_mailbox", "raise_in_thread", "dump_later", "cancel_dump_later",
    "crash_enable", "crash_disable", "crash_enabled",
]

_registered = {}
# A Python-level handler runs between bytecodes, after the fault: a NULL read runs
# again for ever, and abort() ends the process before it.
FAULT_SIGNALS = frozenset((signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                           signal.SIGABRT))


def register(signum, fd, all_threads, chain, fmt, signame, log=False):
    """A Python-level handler: it runs only when the main thread runs Python."""
    if signum in FAULT_SIGNALS:
        raise ValueError("%s needs the C core (tbfast.MODE is %r): a Python-level handler "
                         "never runs on a fault; use faulthandler.enable()" % (signame, MODE))
    def handler(number, frame):
        dump = format_dump(all_threads, fmt, 0, "signal:" + signame)
        if fd >= 0:
            write_dump(fd, dump)
        if log:
            notify(threading.get_ident(), 0, KIND_SIGNAL, dump)
        if chain and callable(previous):
            previous(number, frame)

    previous = signal.signal(signum, handler)
    _registered.setdefault(signum, previous)


def unregister(signum):
    if signum not in _registered:
        return False
    signal.signal(signum, _registered.pop(signum))
    return True


def crash_enable(fd, fmt, all_threads, c_stack, max_threads, preambles, triggers):
    """No Python code runs in a crashing process: the standard library's faulthandler
    dumps instead, in its own format, to `fd` (-1: stderr)."""
    faulthandler.enable(fd if fd >= 0 else None, all_threads)


def crash_disable():
    enabled = faulthandler.is_enabled()
    faulthandler.disable()
    return enabled


def crash_enabled():
    return faulthandler.is_enabled()


def configure(buffer_size):
    """The fallback builds each dump in memory, so there is nothing to size."""
