"""The spool: dumps kept as files until they are shipped, so that none is lost.

    tbfast.spool.configure("/var/spool/tbfast", max_count=100)

A harakiri that fires while the GIL is stuck, then kills the worker, never gets
to run Python.  With a spool, the core writes each harakiri dump (and each
signal dump registered with log=True) in JSON, GIL-free, to
``<directory>/tmp.<pid>.<seq>``, then renames it to
``<directory>/dump.<pid>.<seq>.json``: a file under that name is always whole.
The Python side ships it (the `tbfast` logger, and Sentry when tbfast.sentry is
set up), then removes it; a send that fails keeps it for the next try.  Files
left by a process that is gone are shipped by the next process that configures
the same directory (a respawned worker), each taken by one process only.
A file a process left half-written (``tmp.*``: it was killed while writing) is
logged at WARNING, naming it; its readable part (the header and every whole
thread, marked ``"truncated": {"cut_short": <bytes>}``) is shipped as the others
are, and a file with nothing readable is kept as ``tmp.*.bad``.

Bounded: each file is at most the dump buffer's size (tbfast.configure), and a
process writes no more than ``max_count`` files while that many wait there
(those it found at configure count); past it, the dump goes to the other
destinations only, and the fd dump carries the line
``tbfast: spool full, this dump is not spooled``.
"""

import os
import stat

from . import watchdog
from ._backend import CAPABILITIES, MODE, impl
from ._spoolfiles import Spool, current, use

__all__ = ["DEFAULT_MAX_COUNT", "configure", "current"]

DEFAULT_MAX_COUNT = 100


def configure(directory, max_count=DEFAULT_MAX_COUNT):
    """Spool harakiri dumps (and signal dumps registered with log=True) to `directory`,
    at most `max_count` files at once; None turns the spool off.

    The directory is created (0700) if missing; it must belong to this user and be
    writable by it alone.  Dumps that
    processes now gone left there are shipped, then removed, by the watchdog's
    Python side, once Python runs.
    """
    if directory is None:
        impl.spool_configure(-1, 0, 0, 0)
        use(None)
        return
    if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
        raise ValueError("max_count must be a positive int, not %r" % (max_count,))
    if "spool" not in CAPABILITIES:
        raise RuntimeError("tbfast.spool needs the C core: the fallback cannot write while "
                           "the GIL is stuck (tbfast.MODE is %r)" % MODE)
    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        if status.st_uid != os.geteuid() or status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            # dumps hold request data: not into a directory another user may read or swap
            raise PermissionError("tbfast: spool directory %s must belong to uid %d and be "
                                  "writable by it alone (it is uid %d, mode %o)" % (
                                      directory, os.geteuid(), status.st_uid,
                                      stat.S_IMODE(status.st_mode)))
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError("tbfast: spool directory %s is not writable" % directory)
        spool = Spool(directory, max_count)
        impl.spool_configure(fd, spool.count(), max_count, spool.first_seq)
    except BaseException:
        os.close(fd)
        raise
    use(spool)
    watchdog.ensure_configured()
    watchdog.ship_orphans()
