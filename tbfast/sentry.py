"""Dumps as Sentry events, with sentry-sdk 2.x.

    import tbfast.sentry
    tbfast.sentry.setup("https://<key>@<host>/<project>")   # or the DSN sentry_sdk.init had

From then on every harakiri dump, every signal dump registered with log=True,
every crash dump that tbfast.enable() spooled (sent by the next process that
sets this up: a fatal event whose exception names the signal in its mechanism,
as Sentry's native SDKs report crashes) and every tbfast.sentry.capture()
becomes one Sentry event: the threads
interface holds every thread's stack (frames oldest first, with source context
read with linecache, and locals with with_locals=True), the stuck thread is
marked crashed and the dumping one current; tags carry the trigger, pid, worker
id, thread and request context; the fingerprint is the stuck stack, so repeats
group into one issue.

Events go through a sentry-sdk Client of tbfast's own (the app's client, scopes
and integrations are left alone), whose transport tells which events the
server accepted: a spooled dump (tbfast.spool, which setup() configures) is
removed only then, and sent again later otherwise, under the same event id, so
Sentry keeps one copy.  Each send waits at most `timeout` seconds, on tbfast's
shipping thread, never on a request's.
"""

import collections
import json
import linecache
import logging
import os
import signal
import sysconfig
import tempfile
import threading
import uuid

import sentry_sdk
from sentry_sdk.transport import HttpTransport
from sentry_sdk.utils import BadDsn

import tbfast
import tbfast.sockets
import tbfast.spool
import tbfast.watchdog
from tbfast._backend import CAPABILITIES
from tbfast._pyformat import current_frames
from tbfast.saferepr import safe_repr

__all__ = ["setup", "shutdown", "send", "capture", "event_from_dump"]

FINGERPRINT_FRAMES = 5   # innermost frames of the stuck thread that name its issue
CONTEXT_LINES = 5        # source lines shown before and after each frame's line
DEFAULT_TIMEOUT = 5.0    # seconds a send waits for the server's answer
_KEPT_OUTCOMES = 256     # answers remembered for senders that stopped waiting
_COPIED_OPTIONS = ("release", "environment", "server_name", "dist")
_logger = logging.getLogger("tbfast")


class _ConfirmingTransport(HttpTransport):
    """sentry-sdk's HTTP transport, which also records, per event id, whether the
    server accepted the envelope (None) or why not."""

    def __init__(self, options):
        super().__init__(options)
        self.outcomes = collections.OrderedDict()
        self.answered = threading.Condition()
        self.dropped = None

    def on_dropped_event(self, reason):
        # sentry-sdk's hook: the request failed or the server refused the envelope.
        self.dropped = reason

    def _send_request(self, body, headers, endpoint_type, envelope=None):
        # Runs on the transport's one worker thread, one request at a time.
        self.dropped = None
        outcome = "no answer"
        try:
            super()._send_request(body, headers, endpoint_type, envelope)
            outcome = self.dropped
        except Exception as error:
            outcome = "%s: %s" % (type(error).__name__, error)
            raise
        finally:
            event_id = envelope.headers.get("event_id") if envelope is not None else None
            if event_id:
                with self.answered:
                    self.outcomes[event_id] = outcome
                    while len(self.outcomes) > _KEPT_OUTCOMES:
                        self.outcomes.popitem(last=False)
                    self.answered.notify_all()

    def wait(self, event_id, timeout):
        """None once the server accepted the event, else why not (or "no answer
        within N s")."""
        with self.answered:
            if not self.answered.wait_for(lambda: event_id in self.outcomes, timeout):
                return "no answer within %g s" % timeout
            return self.outcomes.pop(event_id)


class _State:
    client = None
    scope = None
    timeout = DEFAULT_TIMEOUT
    with_locals = False
    library_paths = ()


_state = _State()


def setup(dsn=None, *, timeout=DEFAULT_TIMEOUT, with_locals=False, spool_dir=None,
          spool_max=tbfast.spool.DEFAULT_MAX_COUNT, **client_options):
    """Send every dump to Sentry from now on.

    dsn: the project's DSN; default: the one sentry_sdk.init() was given, else
    $SENTRY_DSN (none at all raises ValueError).  A bad one logs one error line and
    returns None: the dumps are still spooled and logged.  timeout: seconds each send waits for
    the server.  with_locals: add each frame's locals (tbfast.saferepr: bounded,
    masked) when its thread still runs there.  spool_dir: where dumps wait until sent
    (default: $TMPDIR/tbfast-spool-<uid>, unless tbfast.spool is configured already;
    False: none).  Other keywords go to sentry_sdk.Client (release, environment, ...).
    """
    app = sentry_sdk.get_client()
    dsn = dsn or (app.dsn if app.is_active() else None) or os.environ.get("SENTRY_DSN")
    if not dsn:
        raise ValueError("tbfast.sentry: no DSN: pass one, call sentry_sdk.init(dsn=...) "
                         "first, or set SENTRY_DSN")
    if not (isinstance(timeout, (int, float)) and 0 < timeout < float("inf")):
        raise ValueError("timeout must be a positive number of seconds, not %r" % (timeout,))
    options = {name: app.options[name] for name in _COPIED_OPTIONS
               if app.is_active() and app.options.get(name) is not None}
    options.update(client_options)
    try:
        client = sentry_sdk.Client(dsn=dsn, transport=_ConfirmingTransport,
                                   default_integrations=False, auto_enabling_integrations=False,
                                   **options)
    except BadDsn as error:
        # A setting read at a worker's start: the worker must come up all the same, and
        # its dumps, spooled, still reach the log, even from a worker killed while stuck.
        _configure_spool(spool_dir, spool_max)
        _logger.error("tbfast.sentry: bad DSN %r: %s; nothing is sent to Sentry, dumps are "
                      "still logged", dsn, error)
        return None
    previous = _state.client
    _state.client, _state.scope = client, sentry_sdk.Scope(client=client)
    _state.timeout, _state.with_locals = float(timeout), bool(with_locals)
    paths = sysconfig.get_paths()
    _state.library_paths = tuple({paths[name] for name in ("stdlib", "platstdlib", "purelib",
                                                            "platlib")})
    if previous is None:
        tbfast.watchdog.add_sender(send)
    else:
        previous.close(timeout=0)
    _configure_spool(spool_dir, spool_max)
    return client


def _configure_spool(spool_dir, spool_max):
    if spool_dir is not False and "spool" in CAPABILITIES and (
            spool_dir is not None or tbfast.spool.current() is None):
        tbfast.spool.configure(spool_dir or os.path.join(
            tempfile.gettempdir(), "tbfast-spool-%d" % os.getuid()), spool_max)


def shutdown():
    """Stop sending dumps to Sentry; tbfast's client is closed (not the app's)."""
    if _state.client is not None:
        tbfast.watchdog.remove_sender(send)
        _state.client.close(timeout=0)
        _state.client = _state.scope = None


def send(document, key):
    """Sends one dump (its JSON document); True once Sentry accepted it.  `key` names
    the dump for good (a spool file's name), so a resend keeps its event id."""
    client, scope = _state.client, _state.scope  # shutdown() may run meanwhile
    if client is None:
        return False
    event = event_from_dump(document, key)
    event_id = client.capture_event(event, scope=scope)
    if event_id is None:  # the client's own settings (sample_rate, before_send) dropped it
        return True
    failure = client.transport.wait(event_id, _state.timeout)
    if failure is not None:
        _logger.error("tbfast.sentry: dump %s not sent to Sentry (%s)%s", key, failure,
                        "; it stays in the spool for a later try" if key.startswith("dump.")
                        else "")
    return failure is None


def capture(all_threads=True):
    """A dump of this process now, as one Sentry event, sent (waited for at most the
    setup's timeout) from this thread; returns the event id, or None if not sent."""
    if _state.client is None:
        raise RuntimeError("tbfast.sentry.capture(): call tbfast.sentry.setup() first")
    document = json.loads(tbfast.format_traceback(all_threads, format="json"))
    key = "capture.%d.%s.%d" % (os.getpid(), document["time"], threading.get_ident())
    return _event_id(key) if send(document, key) else None


def _event_id(key):
    return uuid.uuid5(uuid.NAMESPACE_URL, "tbfast:" + key).hex


def _crashed(threads):
    """The thread the dump is about: the stuck one, else the dumping one."""
    for thread in threads:
        if "stuck_seconds" in thread:
            return thread
    return next((thread for thread in threads if thread["current"]),
                threads[0] if threads else None)


def event_from_dump(document, key):
    """The Sentry event (a dict, as sentry_sdk.capture_event takes) of one dump."""
    threads = document["threads"]
    crashed = _crashed(threads)
    live = current_frames() if _state.with_locals and document["pid"] == os.getpid() else {}
    values = [{"id": thread["ident"], "name": thread["name"] or str(thread["ident"]),
               "crashed": thread is crashed, "current": thread["current"],
               "stacktrace": {"frames": _frames(thread, live.get(thread["ident"]))}}
              for thread in threads]
    trigger = document["trigger"]
    kind = "harakiri" if trigger == "harakiri" else trigger.partition(":")[0]
    top = crashed["frames"] if crashed else []
    tracebacker = tbfast.sockets.current() if document["pid"] == os.getpid() else None
    worker = tracebacker.worker_id if tracebacker else None
    where = ("%s (%s:%d)" % (top[0]["function"], top[0]["file"], top[0]["line"])
             if top else "no Python frame")
    if crashed and "stuck_seconds" in crashed:
        message = "harakiri: thread %s stuck for %.3f s in %s" % (
            crashed["name"] or crashed["ident"], crashed["stuck_seconds"], where)
    else:
        message = "%s: dump of pid %d, thread %s in %s" % (
            trigger, document["pid"], crashed["name"] if crashed else "?", where)
    if kind == "fatal":
        message = "%s: pid %d crashed, thread %s in %s" % (
            trigger, document["pid"], crashed["name"] if crashed else "?", where)
    tags = {"tbfast.trigger": trigger, "tbfast.pid": str(document["pid"])}
    if worker is not None:
        tags["tbfast.worker"] = str(worker)
    if crashed:
        tags["tbfast.thread"] = (crashed["name"] or str(crashed["ident"]))[:200]
        if crashed["context"]:
            tags["tbfast.context"] = crashed["context"][:200]
    event = {
        "event_id": _event_id(key),
        "timestamp": document["time"],
        "level": {"harakiri": "error", "fatal": "fatal"}.get(kind, "warning"),
        "platform": "python",
        "logger": "tbfast",
        "message": message,
        "threads": {"values": values},
        "tags": tags,
        "fingerprint": ["tbfast-" + kind] + ["%s:%s" % (frame["function"], frame["file"])
                                              for frame in top[:FINGERPRINT_FRAMES]],
        "contexts": {"tbfast": {
            "pid": document["pid"], "worker": worker, "trigger": trigger,
            "mode": document["mode"], "time": document["time"],
            "context": crashed["context"] if crashed else None,
            "stuck_seconds": crashed.get("stuck_seconds") if crashed else None,
            "truncated": document["truncated"], "key": key}},
    }
    if kind == "fatal" and crashed:
        event["exception"] = {"values": [_signal_exception(trigger.partition(":")[2], crashed,
                                                           values)]}
    return event


def _signal_exception(name, crashed, values):
    """The exception of a crash, as Sentry's native SDKs send one: the signal, in a
    mechanism of type signalhandler, on the crashed thread's stack."""
    number = getattr(signal, name, None)
    description = signal.strsignal(number) if number is not None else None
    return {"type": name, "value": description or name, "thread_id": crashed["ident"],
            "mechanism": {"type": "signalhandler", "handled": False, "synthetic": True,
                          "meta": {"signal": {"number": int(number) if number is not None else None,
                                              "name": name}}},
            "stacktrace": next(value["stacktrace"] for value in values if value["crashed"])}


def _frames(thread, live_frame):
    """The thread's frames as Sentry wants them: oldest first, with source context,
    and locals for the innermost frames where the thread still runs."""
    frames = [_frame(frame) for frame in thread["frames"]]
    if live_frame is not None:
        for dumped, frame in zip(frames, _live_frames(live_frame)):
            if (dumped["abs_path"], dumped["lineno"], dumped["function"]) != (
                    frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name):
                break  # the thread moved on: no locals from here out
            dumped["vars"] = safe_repr.locals(frame.f_locals)
    frames.reverse()
    return frames


def _live_frames(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


def _frame(frame):
    path, line = frame["file"], frame["line"]
    out = {"filename": path, "abs_path": path, "function": frame["function"], "lineno": line,
           "in_app": not (path.startswith("<") or path.startswith(_state.library_paths))}
    lines = linecache.getlines(path)
    if frame["source"] is not None and 0 < line <= len(lines) and (
            lines[line - 1].strip() == frame["source"]):
        out["context_line"] = lines[line - 1].rstrip("\n")
        out["pre_context"] = [text.rstrip("\n") for text in
                              lines[max(0, line - 1 - CONTEXT_LINES):line - 1]]
        out["post_context"] = [text.rstrip("\n") for text in lines[line:line + CONTEXT_LINES]]
    elif frame["source"] is not None:  # the file changed since: the dump's line only
        out["context_line"] = frame["source"]
    return out

