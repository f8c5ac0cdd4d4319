"""Harakiri: per-thread deadlines watched by a native thread.

    with tbfast.harakiri(30):            # or @tbfast.harakiri(30, action="raise")
        handle(request)

When a deadline passes, the watchdog thread dumps every thread, the stuck one
marked, without waiting for the GIL, to the configured fd, and hands the same
dump to the `tbfast` logger, which emits it once Python can run.  Then the
action: `log` logs again every `repeat` seconds while the thread stays stuck;
`raise` raises HarakiriError in the thread when it next runs Python code;
`abort` kills the worker with SIGKILL, as uWSGI's harakiri does, so the server
respawns it.  Nested scopes: the innermost deadline is the one armed, and the
outer one comes back when it exits.
"""

import math
import os
import struct
import threading

import tbfast

_RECORD = struct.Struct("=4Q")  # ident, nanoseconds stuck, kind (0 log, 1 raise), mailbox + 1
_KIND_RAISE = 1


class HarakiriError(Exception):
    """Raised in a thread whose harakiri(…, action="raise") deadline passed."""


def _impl():
    return tbfast._impl


class _Watchdog:
    def __init__(self):
        self.lock = threading.Lock()
        self.configured = False
        self.reader = None
        self.file = None
        self.later_file = None
        self.settings = None  # the last configure()'s, for a forked child to start anew
        self.pid = os.getpid()

    def _forget_the_parent(self):
        """In a forked child (os.fork, or a C fork such as uWSGI's, which runs no
        Python hook): the watchdog and reader threads stayed in the parent, and the
        pipe between them is the parent's.  The core already dropped its side."""
        self.lock = threading.Lock()  # another thread may have held it at fork
        if self.reader is not None:
            for fd in self.reader._args:
                os.close(fd)
            self.reader = None
        self.configured = False
        self.pid = os.getpid()

    def configure(self, file, format, log, repeat, grace):
        tbfast._check_format(format)
        for name, value, positive in (("repeat", repeat, True), ("grace", grace, False)):
            if not isinstance(value, (int, float)) or math.isnan(value) or value < 0 or (
                    positive and value == 0) or math.isinf(value):
                raise ValueError("%s must be a %s number of seconds, not %r"
                                 % (name, "positive" if positive else "non-negative", value))
        fd = -1 if file is False else tbfast._fileno(file)
        if self.pid != os.getpid():
            self._forget_the_parent()
        with self.lock:
            notify = -1
            if log and self.reader is None:
                read_end, notify = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(notify, False)  # the watchdog never waits on Python
                # Imported here, in the caller, not at import (10 ms of every worker's
                # start-up) nor in the reader: a fork while a thread imports leaves
                # the child's import lock held by a thread it does not have.
                import logging
                self.reader = threading.Thread(target=_read_expiries, args=(read_end, notify),
                                               kwargs={"logger": logging.getLogger("tbfast")},
                                               name="tbfast-watchdog-log", daemon=True)
                self.reader.start()
            elif log:
                notify = self.reader._args[1]
            self.file = file  # keeps a file object, so its fd stays open
            _impl().watchdog_configure(fd, format, notify, float(repeat), float(grace))
            self.settings = (file, format, log, repeat, grace)
            self.configured = True

    def ensure_configured(self):
        if not self.configured or self.pid != os.getpid():
            self.configure(*(self.settings or (None, "text", True, 10.0, 0.0)))


_watchdog = _Watchdog()


def _after_fork_in_child():
    # At once, not at the child's first arm: a child that never arms would keep
    # the parent's pipe to its logger thread open for good.
    if _watchdog.pid != os.getpid():
        _watchdog._forget_the_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


def configure(*, file=None, format="text", log=True, repeat=10.0, grace=0.0):
    """Where harakiri dumps go and what follows them.

    file: an fd or file object (default sys.stderr), or False for none.
    log: also hand each dump to the `tbfast` logger (level ERROR).
    repeat: seconds between dumps while a thread with action="log" stays stuck.
    grace: seconds between the dump and a `raise` or `abort`.
    """
    _watchdog.configure(file, format, log, repeat, grace)


def ensure_configured():
    """The defaults, on the first arm without configure(): stderr, and the logger."""
    _watchdog.ensure_configured()


# The scope class itself, so entering one is a single C call.
harakiri = tbfast._impl.HarakiriScope


def dump_traceback_later(timeout, repeat=False, file=None, exit=False):
    """faulthandler.dump_traceback_later, served by the same native watchdog:
    dump every thread after `timeout` seconds (again every `timeout` with repeat),
    then exit(1) with exit=True.  A new call replaces the previous timer."""
    _watchdog.ensure_configured()
    _watchdog.later_file = file
    _impl().dump_later(float(timeout), bool(repeat), tbfast._fileno(file), bool(exit))


def cancel_dump_traceback_later():
    """Cancel the timer of dump_traceback_later(); nothing happens if none is set."""
    _impl().cancel_dump_later()


def _read_expiries(read_end, write_end, logger):
    """The Python side: runs whenever Python can, logs and raises what the watchdog saw."""
    impl = _impl()
    while True:
        record = os.read(read_end, _RECORD.size)
        if len(record) < _RECORD.size:
            return
        ident, stuck_ns, kind, mailbox = _RECORD.unpack(record)
        if kind == _KIND_RAISE:
            impl.raise_in_thread(ident, HarakiriError)
            continue
        dump = impl.take_mailbox(mailbox - 1).decode("utf-8", "replace") if mailbox else (
            "(dump not kept for the log: too many waiting; see the fd destination)\n")
        thread = threading._active.get(ident)
        logger.error("harakiri: thread %s (%#x) stuck for %.3f s\n%s",
                     thread.name if thread else "?", ident, stuck_ns / 1e9, dump,
                     extra={"tbfast": {"pid": os.getpid(), "thread_ident": ident,
                                       "thread_name": thread.name if thread else None,
                                       "stuck_seconds": stuck_ns / 1e9}})
