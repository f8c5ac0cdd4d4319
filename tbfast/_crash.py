"""The core's crash handler, as tbfast.enable() and tbfast.faulthandler.enable()
both install it: one per process, in the format of whichever call came last."""

import signal
import sys

from ._backend import impl

__all__ = ["install", "FAULT_SIGNALS"]

# The order the core's handler takes them in, as faulthandler lists them.
FAULT_SIGNALS = (signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGSEGV)
_FAULT_NAMES = ("Bus error", "Illegal instruction",
                "Floating-point exception" if sys.version_info >= (3, 13) else "Floating point exception",
                "Aborted", "Segmentation fault")  # as this CPython's faulthandler spells them


def install(fd, format, all_threads, c_stack=False, max_threads=0):
    """The crash handler, writing to `fd` (-1: none, the spool only) in `format`:
    faulthandler's writes "Fatal Python error: <name>" first, tbfast's own formats
    say trigger=fatal:<SIGNAL> in their header."""
    impl.crash_enable(fd, format, all_threads, c_stack, max_threads,
                      [b"Fatal Python error: %s\n\n" % name.encode() for name in _FAULT_NAMES],
                      [b"fatal:" + signal.Signals(signum).name.encode() for signum in FAULT_SIGNALS])
