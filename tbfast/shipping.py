"""Shipping: where a dump goes once Python runs (the `tbfast` logger, then each
sender, such as tbfast.sentry's), from its spool file when there is one.

tbfast.watchdog's reader hands each dump here, and keeps the process's Shipper.
"""

import os
import threading

from . import _spoolfiles, sockets
from ._limits import KIND_HARAKIRI

__all__ = ["RETRY_SECONDS", "Shipper", "log_fields"]

RETRY_SECONDS = 30.0  # between two tries of the spool files whose send failed


class Shipper:
    """Where a dump goes once Python runs: the `tbfast` logger, then each sender
    (Sentry), from the spool file when there is one, which goes once all took it."""

    def __init__(self, queue, logger, json):
        self.log, self.format = True, "text"  # tbfast.watchdog.configure() sets both
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
        spool = _spoolfiles.current()
        path = spool.path(spooled) if spool is not None and spooled else None
        if spool is not None and not spooled:
            self.logger.error("tbfast: dump not spooled: %s is full (max_count=%d) or not "
                              "writable; the fd dump says which",
                              spool.directory, spool.max_count)
        document = None
        if dump is not None and dump.startswith("{"):
            document = self.json.loads(dump)
        elif path is not None:
            document = _spoolfiles.read(path)
        if self.log:
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
                              "nor spooled (tbfast.spool.configure)", self.format)

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
            document = _spoolfiles.read(path)
            if document is None:
                return
        if self.deliver(document, key):
            if path is not None:
                _spoolfiles.remove(path)
        elif path is not None:
            self.waiting.append(path)

    def retry(self):
        """Sends again the files still waiting in the configured spool (those of a spool
        configured away stay there, for a process that configures it)."""
        spool = _spoolfiles.current()
        waiting, self.waiting = self.waiting, []
        for path in waiting:
            if spool is not None and os.path.dirname(path) == spool.directory:
                self.send(path, None, os.path.basename(path))
        if self.orphans_left:
            self.orphans()

    def orphans(self):
        """Logs and sends the dumps of processes that are gone; each goes once sent."""
        spool = _spoolfiles.current()
        self.orphans_left = False
        if spool is None:
            return
        for path in spool.orphans():
            name = os.path.basename(path).split(".", 2)[2]  # claim.<pid>.<name>
            document = _spoolfiles.read(path)
            if document is None:
                continue
            if self.log and name not in self.orphans_logged:
                args, extra = log_fields(None, None, None, None, document, self.json,
                                         spooled=os.path.join(spool.directory, name),
                                         orphan=True)
                self.logger.error(*args, extra=extra)
                self.orphans_logged.add(name)
            if self.deliver(document, name):
                _spoolfiles.remove(path)
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
    tracebacker = sockets.current()
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
