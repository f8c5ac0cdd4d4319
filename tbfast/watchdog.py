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

import os
import struct
import threading

from . import _fallback_watchdog, _spoolfiles
from ._backend import CAPABILITIES, impl, native_option, warn_if_fallback
from ._fds import fd_of
from ._limits import KIND_RAISE, NOTIFY_RECORD, check_format, check_seconds
from .shipping import Shipper

__all__ = ["HarakiriError", "harakiri", "configure", "ensure_configured", "dump_traceback_later",
           "cancel_dump_traceback_later", "ship_orphans", "add_sender", "remove_sender"]

_RECORD = struct.Struct(NOTIFY_RECORD)


class HarakiriError(Exception):
    """Raised in a thread whose harakiri(…, action="raise") deadline passed."""


class _Watchdog:
    def __init__(self):
        self.lock = threading.Lock()
        self.configured = False
        self.reader = None
        self.shipper = None
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
            self.shipper = None
        self.configured = False
        self.pid = os.getpid()

    def configure(self, file, format, log, repeat, grace, native=False):
        check_format(format)
        check_seconds(repeat, "repeat")  # before any change: a bad value changes nothing
        check_seconds(grace, "grace", zero_ok=True)
        fd = -1 if file is False else fd_of(file)
        if self.pid != os.getpid():
            self._forget_the_parent()
        with self.lock:
            if self.reader is None:
                # Imported here, in the caller, not at import (10 ms of every worker's
                # start-up) nor in the reader: a fork while a thread imports leaves
                # the child's import lock held by a thread it does not have.
                import json
                import logging
                import queue
                logger = logging.getLogger("tbfast")
                self.shipper = Shipper(queue, logger, json)
                read_end, notify = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(notify, False)  # the watchdog never waits on Python
                self.reader = threading.Thread(target=_read_expiries, args=(read_end, notify),
                                               kwargs={"shipper": self.shipper},
                                               name="tbfast-watchdog-log", daemon=True)
                self.reader.start()
                threading.Thread(target=self.shipper.run, name="tbfast-ship", daemon=True).start()
                if _spoolfiles.current() is not None:  # a forked child: what its siblings left
                    self.shipper.jobs.put(("orphans",))
            self.shipper.log, self.shipper.format = bool(log), format
            self.file = file  # keeps a file object, so its fd stays open
            impl.watchdog_configure(fd, format, self.reader._args[1], repeat, grace,
                                    **native_option(native))
            self.settings = (file, format, log, repeat, grace, native)
            self.configured = True

    def ensure_configured(self):
        if not self.configured or self.pid != os.getpid():
            self.configure(*(self.settings or (None, "text", True, 10.0, 0.0, False)))


_watchdog = _Watchdog()


def _after_fork_in_child():
    # At once, not at the child's first arm: a child that never arms would keep
    # the parent's pipe to its logger thread open for good.
    if _watchdog.pid != os.getpid():
        _watchdog._forget_the_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


def configure(*, file=None, format="text", log=True, repeat=10.0, grace=0.0, native=False):
    """Where harakiri dumps go and what follows them.

    file: an fd or file object (default sys.stderr), or False for none.
    format: of the fd dump and of the `tbfast` logger's records ("json": one line each).
    log: also hand each dump to the `tbfast` logger (level ERROR; see tbfast.shipping.log_fields).
    repeat: seconds between dumps while a thread with action="log" stays stuck.
    grace: seconds between the dump and a `raise` or `abort`.
    native: True adds the C frames of the threads that run or hold the GIL (the
    stuck one's, when it is stuck in C), "all" every thread's (needs the core).
    """
    _watchdog.configure(file, format, log, repeat, grace, native)


def ensure_configured():
    """The defaults, on the first arm without configure(): stderr, and the logger."""
    _watchdog.ensure_configured()


class _FallbackHarakiri(_fallback_watchdog.HarakiriScope):
    """The fallback's scope, which says once that an aborting deadline is not GIL-free,
    and starts the watchdog on the first arm, as the core's does."""

    def __init__(self, seconds, action="log"):
        super().__init__(seconds, action)
        if action == "abort":
            warn_if_fallback('harakiri(action="abort")')

    def __enter__(self):
        if not _fallback_watchdog.running():
            ensure_configured()
        return super().__enter__()


# The core's class itself: entering one of its scopes is a single C call.
harakiri = impl.HarakiriScope if "gil-free" in CAPABILITIES else _FallbackHarakiri


def dump_traceback_later(timeout, repeat=False, file=None, exit=False):
    """faulthandler.dump_traceback_later, served by the same native watchdog:
    dump every thread after `timeout` seconds (again every `timeout` with repeat),
    then exit(1) with exit=True.  A new call replaces the previous timer."""
    check_seconds(timeout, "timeout")  # before any change: a bad value changes nothing
    fd = fd_of(file)
    _watchdog.ensure_configured()
    _watchdog.later_file = file
    impl.dump_later(timeout, bool(repeat), fd, bool(exit))


def cancel_dump_traceback_later():
    """Cancel the timer of dump_traceback_later(); nothing happens if none is set."""
    impl.cancel_dump_later()


def ship_orphans():
    """Ships, once Python runs, the spooled dumps of processes that are gone."""
    _watchdog.ensure_configured()
    _watchdog.shipper.jobs.put(("orphans",))


def add_sender(send):
    """send(document, key) -> bool, called from tbfast's shipping thread with every dump
    (the JSON document) and a key unique to it; False keeps the spool file for a
    later try.  tbfast.sentry.setup() adds its own."""
    _watchdog.ensure_configured()
    _watchdog.shipper.senders.append(send)


def remove_sender(send):
    """Undoes add_sender(send)."""
    if _watchdog.shipper is not None and send in _watchdog.shipper.senders:
        _watchdog.shipper.senders.remove(send)


def _read_expiries(read_end, write_end, shipper):
    """The Python side: runs whenever Python can; raises what the watchdog asks to
    raise, logs each dump at once, and leaves the rest to the shipping thread."""
    while True:
        record = os.read(read_end, _RECORD.size)
        if len(record) < _RECORD.size:
            return
        ident, stuck_ns, kind, mailbox, spooled = _RECORD.unpack(record)
        if kind == KIND_RAISE:
            impl.raise_in_thread(ident, HarakiriError)
            continue
        dump = impl.take_mailbox(mailbox - 1).decode("utf-8", "replace") if mailbox else None
        shipper.live(kind, ident, stuck_ns, dump, spooled)
