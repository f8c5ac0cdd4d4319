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

import tbfast
from . import _fallback_watchdog
from ._backend import HAS_CORE, impl, warn_if_fallback
from ._limits import KIND_HARAKIRI, KIND_RAISE, NOTIFY_RECORD, check_seconds

_RECORD = struct.Struct(NOTIFY_RECORD)
RETRY_SECONDS = 30.0  # between two tries of the spool files whose send failed


class HarakiriError(Exception):
    """Raised in a thread whose harakiri(…, action="raise") deadline passed."""


def _impl():
    return tbfast._impl


class _Watchdog:
    def __init__(self):
        self.lock = threading.Lock()
        self.configured = False
        self.reader = None
        self.shipper = None
        self.log = True
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

    def configure(self, file, format, log, repeat, grace):
        tbfast._check_format(format)
        check_seconds(repeat, "repeat")  # before any change: a bad value changes nothing
        check_seconds(grace, "grace", zero_ok=True)
        fd = -1 if file is False else tbfast._fileno(file)
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
                from . import spool  # the shipper finds it as tbfast.spool
                logger = logging.getLogger("tbfast")
                self.shipper = Shipper(queue, logger, json)
                read_end, notify = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(notify, False)  # the watchdog never waits on Python
                self.reader = threading.Thread(target=_read_expiries, args=(read_end, notify),
                                               kwargs={"shipper": self.shipper},
                                               name="tbfast-watchdog-log", daemon=True)
                self.reader.start()
                threading.Thread(target=self.shipper.run, name="tbfast-ship", daemon=True).start()
                if spool.current() is not None:  # a forked child: what its siblings left
                    self.shipper.jobs.put(("orphans",))
            self.log = bool(log)
            self.format = format
            self.file = file  # keeps a file object, so its fd stays open
            _impl().watchdog_configure(fd, format, self.reader._args[1], repeat, grace)
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
    format: of the fd dump and of the `tbfast` logger's records ("json": one line each).
    log: also hand each dump to the `tbfast` logger (level ERROR; see log_fields).
    repeat: seconds between dumps while a thread with action="log" stays stuck.
    grace: seconds between the dump and a `raise` or `abort`.
    """
    _watchdog.configure(file, format, log, repeat, grace)


def ensure_configured():
    """The defaults, on the first arm without configure(): stderr, and the logger."""
    _watchdog.ensure_configured()


class _FallbackHarakiri(_fallback_watchdog.HarakiriScope):
    """The fallback's scope, which says once that an aborting deadline is not GIL-free."""

    def __init__(self, seconds, action="log"):
        super().__init__(seconds, action)
        if action == "abort":
            warn_if_fallback('harakiri(action="abort")')


# The core's class itself: entering one of its scopes is a single C call.
harakiri = impl.HarakiriScope if HAS_CORE else _FallbackHarakiri


def dump_traceback_later(timeout, repeat=False, file=None, exit=False):
    """faulthandler.dump_traceback_later, served by the same native watchdog:
    dump every thread after `timeout` seconds (again every `timeout` with repeat),
    then exit(1) with exit=True.  A new call replaces the previous timer."""
    check_seconds(timeout, "timeout")  # before any change: a bad value changes nothing
    fd = tbfast._fileno(file)
    _watchdog.ensure_configured()
    _watchdog.later_file = file
    _impl().dump_later(timeout, bool(repeat), fd, bool(exit))


def cancel_dump_traceback_later():
    """Cancel the timer of dump_traceback_later(); nothing happens if none is set."""
    _impl().cancel_dump_later()


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
    impl = _impl()
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


class Shipper:
    """Where a dump goes once Python runs: the `tbfast` logger, then each sender
    (Sentry), from the spool file when there is one, which goes once all took it."""

    def __init__(self, queue, logger, json):
        self.jobs = queue.Queue()
        self.empty = queue.Empty
        self.logger = logger
        self.json = json
        self.senders = []
        self.waiting = []  # this process's spool files whose send failed
        self.orphans_left = False  # a dead process's file whose send failed
        self.orphans_logged = set()  # their names, so that a retry logs none twice

    def live(self, kind, ident, stuck_ns, dump, spooled):
        """In the reader thread: a dump the watchdog or a signal handler just took."""
        spool = tbfast.spool.current()
        path = spool.path(spooled) if spool is not None and spooled else None
        if spool is not None and not spooled:
            self.logger.error("tbfast: dump not spooled: %s is full (max_count=%d) or not "
                              "writable; the fd dump says which",
                              spool.directory, spool.max_count)
        document = None
        if dump is not None and dump.startswith("{"):
            document = self.json.loads(dump)
        elif path is not None:
            document = tbfast.spool.read(path)
        if _watchdog.log:
            if dump is None:
                dump = ("(dump not kept for the log: too many waiting; see the fd "
                        "destination%s)\n" % (" and " + path if path else ""))
            args, extra = log_fields(kind, ident, stuck_ns, dump, document, self.json,
                                     spooled=path)
            self.logger.error(*args, extra=extra)
        if path is not None or (document is not None and self.senders):
            key = os.path.basename(path) if path else "%d.%s.%d" % (
                os.getpid(), document["time"], ident)
            self.jobs.put(("send", path, document, key))
        elif self.senders:
            self.logger.error("tbfast: dump not sent: its JSON copy was neither kept (format=%r) "
                              "nor spooled (tbfast.spool.configure)", _watchdog.format)

    def run(self):
        """The shipping thread: each job in turn; failed sends again every RETRY_SECONDS."""
        while True:
            try:
                job = self.jobs.get(timeout=RETRY_SECONDS if self.waiting or self.orphans_left
                                    else None)
            except self.empty:
                job = ("retry",)
            try:
                getattr(self, job[0])(*job[1:])
            except Exception:  # noqa: BLE001 - one bad dump never stops the shipping
                self.logger.exception("tbfast: shipping a dump failed")

    def deliver(self, document, key):
        """True once every sender took the dump; each is tried even when one fails."""
        delivered = True
        for send in self.senders:
            try:
                delivered = send(document, key) and delivered
            except Exception:  # noqa: BLE001 - a broken sender keeps the file, stops nothing
                self.logger.exception("tbfast: sending dump %s failed", key)
                delivered = False
        return delivered

    def send(self, path, document, key):
        if document is None:
            document = tbfast.spool.read(path)
            if document is None:
                return
        if self.deliver(document, key):
            if path is not None:
                tbfast.spool.remove(path)
        elif path is not None:
            self.waiting.append(path)

    def retry(self):
        """Sends again the files still waiting in the configured spool (those of a spool
        configured away stay there, for a process that configures it)."""
        spool = tbfast.spool.current()
        waiting, self.waiting = self.waiting, []
        for path in waiting:
            if spool is not None and os.path.dirname(path) == spool.directory:
                self.send(path, None, os.path.basename(path))
        if self.orphans_left:
            self.orphans()

    def orphans(self):
        """Logs and sends the dumps of processes that are gone; each goes once sent."""
        spool = tbfast.spool.current()
        self.orphans_left = False
        if spool is None:
            return
        for path in spool.orphans():
            name = os.path.basename(path).split(".", 2)[2]  # claim.<pid>.<name>
            document = tbfast.spool.read(path)
            if document is None:
                continue
            if _watchdog.log and name not in self.orphans_logged:
                args, extra = log_fields(None, None, None, None, document, self.json,
                                         spooled=os.path.join(spool.directory, name),
                                         orphan=True)
                self.logger.error(*args, extra=extra)
                self.orphans_logged.add(name)
            if self.deliver(document, name):
                tbfast.spool.remove(path)
                self.orphans_logged.discard(name)
            else:
                spool.unclaim(path)
                self.orphans_left = True


def _thread_of(document, ident):
    """Thread `ident` of a dump; with None, the one it is about: the stuck one, else
    the dumping one.  {} when there is none."""
    threads = document["threads"]
    for thread in threads:
        if thread["ident"] == ident or ident is None and "stuck_seconds" in thread:
            return thread
    if ident is not None:
        return {}
    return next((thread for thread in threads if thread["current"]), {})


def _text_trigger(dump, kind):
    """The trigger in a text dump's header (the uwsgi format has none)."""
    if dump.startswith("tbfast dump: ") and " trigger=" in dump:
        return dump.split(" trigger=", 1)[1].split(" ", 1)[0]
    return "harakiri" if kind == KIND_HARAKIRI else "signal"


def _text_context(dump, ident):
    """The Context line under thread `ident`'s heading in a text dump, or None."""
    heading = "0x%016x (" % ident
    lines = dump.splitlines()
    for index, line in enumerate(lines):
        if heading in line and line.endswith("(most recent call first):"):
            if index + 1 < len(lines) and lines[index + 1].startswith("  Context: "):
                return lines[index + 1][len("  Context: "):]
            return None
    return None


def log_fields(kind, ident, stuck_ns, dump, document, json, spooled=None, orphan=False):
    """((message, *args), extra) of the record for one dump: `tbfast_*` attributes
    (docs/shipping.md, "Logging"), and a one-line JSON message when the dump is JSON."""
    thread = _thread_of(document, ident) if document is not None else {}
    if orphan:  # a spooled dump whose process is gone
        ident = thread.get("ident")
        stuck = thread.get("stuck_seconds")
        trigger = document["trigger"]
    else:
        stuck = stuck_ns / 1e9 if kind == KIND_HARAKIRI else None
        trigger = document["trigger"] if document is not None else _text_trigger(dump, kind)
    live = threading._active.get(ident) if not orphan else None
    name = thread.get("name") or (live.name if live is not None else None)
    if "context" in thread or dump is None:
        context = thread.get("context")
    else:
        context = _text_context(dump, ident)
    tracebacker = tbfast.sockets.current()
    fields = {"pid": document["pid"] if document is not None else os.getpid(),
              "worker": tracebacker.worker_id if tracebacker and not orphan else None,
              "trigger": trigger, "thread": name, "thread_ident": ident, "context": context,
              "stuck_seconds": stuck, "spooled": spooled}
    if stuck is not None:
        summary = "harakiri: thread %s (%#x) stuck for %.3f s" % (name or "?", ident or 0, stuck)
    else:
        summary = "%s: dump from thread %s (%#x)" % (trigger, name or "?", ident or 0)
    if orphan:
        summary += " in pid %d, now gone (from the spool)" % fields["pid"]
    extra = {"tbfast_" + key: value for key, value in fields.items()}
    extra["tbfast"] = dict(fields, thread_name=name)  # the record.tbfast of earlier versions
    if document is not None and (dump is None or dump.startswith("{")):
        line = json.dumps(dict(fields, message=summary, dump=document), ensure_ascii=False,
                          separators=(",", ":"))
        return ("%s", line), extra
    return ("%s\n%s", summary, dump), extra
