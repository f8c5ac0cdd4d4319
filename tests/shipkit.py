"""Helpers for the tests of shipping dumps: a request thread stuck past its harakiri
deadline, and a loopback stand-in for a Sentry server.

The server is real HTTP on 127.0.0.1, its envelopes parsed.  sentry-sdk itself is not touched: it is given a DSN that points here, and sends
what it would send to sentry.io.  The receiver decodes the body (gzip or br, as
the SDK compresses it), parses the envelope (a header line, then each item's
header line and payload) and keeps every event.  It can be down (bound, not
listening: connections are refused), slow, or failing, to test what tbfast does
then.
"""

import gzip
import http.server
import inspect
import json
import signal
import socket
import threading
import time
import zlib

import pytest

import tbfast
import tbfast.shipping
from tbfast import watchdog
from conftest import truth

PROJECT = 42


@pytest.fixture
def shipping(tmp_path, tbfast_log, monkeypatch):
    """JSON dumps, the logger's records, retries every 0.2 s, and a spool directory
    (the value) for tbfast.sentry.setup(); all undone at the end."""
    import tbfast.sentry  # here: test_logging.py runs without sentry-sdk
    monkeypatch.setattr(tbfast.shipping, "RETRY_SECONDS", 0.2)
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    watchdog.configure(file=False, format="json", repeat=10.0)
    yield tmp_path / "spool"
    tbfast.sentry.shutdown()
    tbfast.spool.configure(None)
    tbfast.unregister(signal.SIGUSR1)
    tbfast.disable_tracebacker()
    watchdog.configure(file=False, repeat=10.0)


def line_of(function, text):
    """The line of `text` in `function`'s source, from inspect."""
    lines, first = inspect.getsourcelines(function)
    return first + [i for i, line in enumerate(lines) if text in line][0]


class StuckRequest(threading.Thread):
    """A request thread stuck in wait_here() past its harakiri deadline until released;
    `truth` is its stack (innermost first) taken while it is stuck; `finished` says
    it went on and ended normally."""

    def __init__(self, context, name="request-9", deadline=0.2):
        super().__init__(name=name, daemon=True)
        self.context, self.deadline = context, deadline
        self.release = threading.Event()
        self.finished = False

    def run(self):
        tbfast.set_context(self.context)
        with tbfast.harakiri(self.deadline):
            self.wait_here(order_id=7)
        tbfast.set_context(None)
        self.finished = True

    def wait_here(self, order_id):
        secret_token = "hunter2"  # noqa: F841 - a local the Sentry event must mask
        self.release.wait(10)  # the stuck line

    def stuck_until_logged(self, records, then=lambda: None):
        """Stuck until the logger has the record of this thread's harakiri dump (10 s
        at most) and then() returned; then()'s value."""
        before = len(records.records)  # a thread that ended may have had this ident
        self.start()
        deadline = time.monotonic() + 10
        while not self.logged(records, before) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.truth = truth(self.ident)
        try:
            return then()
        finally:
            self.release.set()
            self.join(10)

    def logged(self, records, since=0):
        return [record for record in records.records[since:]
                if getattr(record, "tbfast_thread_ident", None) == self.ident]


def parse_envelope(body):
    """(envelope header, [(item header, payload bytes)]) of one envelope."""
    header_line, _, rest = body.partition(b"\n")
    items = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        item = json.loads(item_line)
        if "length" in item:
            payload, rest = rest[:item["length"]], rest[item["length"]:]
            rest = rest[1:] if rest.startswith(b"\n") else rest
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((item, payload))
    return json.loads(header_line), items


def decode(body, encoding):
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "br":
        import brotli  # only when the SDK found brotli installed, and so used it
        return brotli.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    assert not encoding, "unexpected Content-Encoding %r" % encoding
    return body


class Receiver:
    """receiver.dsn points here; receiver.events() lists the events received."""

    def __init__(self, listening=True):
        self.lock = threading.Condition()
        self.envelopes = []   # (path, envelope header, items)
        self.delay = 0.0      # seconds each answer waits
        self.status = 200
        self.requests = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.requests += 1
                    delay, status = receiver.delay, receiver.status
                time.sleep(delay)
                if status == 200:
                    header, items = parse_envelope(decode(body, self.headers.get(
                        "Content-Encoding")))
                    with receiver.lock:
                        receiver.envelopes.append((self.path, header, items))
                        receiver.lock.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler,
                                                      bind_and_activate=False)
        self.server.daemon_threads = True
        self.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.server_bind()
        self.port = self.server.server_address[1]
        self.dsn = "http://public@127.0.0.1:%d/%d" % (self.port, PROJECT)
        self.thread = None
        if listening:
            self.listen()

    def listen(self):
        """Up: from now on connections are accepted (before, bound only, they are refused)."""
        self.server.server_activate()
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={
            "poll_interval": 0.05}, name="sentry-receiver", daemon=True)
        self.thread.start()

    def close(self):
        if self.thread is not None:
            self.server.shutdown()
        self.server.server_close()

    def events(self):
        """Every event received, in order (type "event" items of envelopes that
        came to /api/<project>/envelope/)."""
        with self.lock:
            return self._events()

    def wait_for(self, predicate, seconds):
        """The events once predicate(events) holds, or after `seconds` whatever came."""
        deadline = time.monotonic() + seconds
        with self.lock:
            while True:
                events = self._events()
                left = deadline - time.monotonic()
                if predicate(events) or left <= 0:
                    return events
                self.lock.wait(min(left, 0.1))

    def _events(self):
        return [json.loads(payload) for path, header, items in self.envelopes
                if path == "/api/%d/envelope/" % PROJECT
                for item, payload in items if item.get("type") == "event"]
