"""Shared helpers for the real-server tests (gunicorn, uWSGI) in this directory.

Not a conftest.py: every conftest.py outside a package is imported as the module
`conftest`, and pytest drops the one already in sys.modules before importing the
next, so a tests/servers/conftest.py would break `from conftest import ...` in the
tests collected after it.  The test modules here import this one by name (pytest's
--import-mode=append puts this directory on sys.path) and take its fixtures with
`from serverkit import budget, launch`.

Everything is bounded: each test has a `budget` of seconds that every wait draws
on, every server listens on a UNIX socket in a short temporary directory, runs in
its own session (process group) and is killed with the whole group at teardown.
"""

import dataclasses
import http.client
import inspect
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

import tbfast.wsgi

TEST_SECONDS = 55.0  # every test stays under a minute, teardown included

# The app every server runs.  Each stuck request first leaves a file named after its
# X-Request-Id in $APP_STARTED, holding its pid: the test knows it is in the app, and
# in which worker.  The "# stuck:" and "# calls:" comments mark the lines the dumps
# must show (see app_line).
APP = r'''
import ctypes
import itertools
import json
import os
import re
import sys
import threading
import time
from urllib.parse import parse_qsl

import tbfast
import tbfast.watchdog
import tbfast.wsgi

LOCK = threading.Lock()
LOCK.acquire()  # never released: a request that takes it waits


def started(environ):
    request_id = environ.get("HTTP_X_REQUEST_ID")
    if request_id:
        path = os.path.join(os.environ["APP_STARTED"], request_id)
        with open(path + ".tmp", "w") as file:
            file.write(str(os.getpid()))
        os.rename(path + ".tmp", path)


def stuck_in_sleep(seconds):
    time.sleep(seconds)  # stuck: sleep


def stuck_in_lock(seconds):
    LOCK.acquire(timeout=seconds)  # stuck: lock


def stuck_in_regex(length):
    re.match(r"(a+)+$", "a" * length + "b")  # stuck: regex


def stuck_in_sum():
    sum(itertools.repeat(1, 10 ** 10))  # stuck: sum


def crash_in_c():
    ctypes.string_at(0)  # stuck: crash


def raw_application(environ, start_response):
    path = environ["PATH_INFO"]
    query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
    started(environ)
    if path == "/sleep":
        stuck_in_sleep(float(query["s"]))  # calls: sleep
    elif path == "/lock":
        stuck_in_lock(float(query["s"]))  # calls: lock
    elif path == "/regex":
        stuck_in_regex(int(query["n"]))  # calls: regex
    elif path == "/sum":
        stuck_in_sum()  # calls: sum
    elif path == "/crash":  # a NULL read: the worker dies by SIGSEGV
        crash_in_c()  # calls: crash
    body = json.dumps({"pid": os.getpid(), "path": path, "query": query}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


application = raw_application
if os.environ.get("APP_CONFIGURE_WATCHDOG"):  # at import: in uWSGI's master, before fork
    tbfast.watchdog.configure(file=sys.stderr)
if os.environ.get("APP_HARAKIRI"):  # seconds[:action]
    seconds, _, action = os.environ["APP_HARAKIRI"].partition(":")
    application = tbfast.wsgi.HarakiriMiddleware(raw_application, float(seconds),
                                                 action or "log")
'''


def app_line(marker):
    """The line of APP that carries the comment `# <marker>`."""
    lines = [number for number, text in enumerate(APP.splitlines(), 1)
             if text.rstrip().endswith("# " + marker)]
    assert len(lines) == 1, marker
    return lines[0]


def source_line(function, text):
    """The line of `text` in `function`'s source, from inspect: the truth for code
    that is not APP (the stdlib's re.match, tbfast's middleware)."""
    lines, first = inspect.getsourcelines(function)
    found = [first + index for index, line in enumerate(lines) if text in line]
    assert len(found) == 1, (function, text)
    return found[0]


def middleware_frame():
    """(file, line, function) of HarakiriMiddleware.__call__ calling the app, for the
    tbfast installed here, which the servers import too."""
    call = tbfast.wsgi.HarakiriMiddleware.__call__
    return (inspect.getsourcefile(call),
            source_line(call, "result = self.app(environ, start_response)"), "__call__")


def regex_match_frame():
    """(file, line, function) of the stdlib's re.match, where the engine runs."""
    # 3.15 renamed it prefixmatch (match is an alias), and calls Pattern.prefixmatch.
    return (inspect.getsourcefile(re.match),
            source_line(re.match, "return _compile(pattern, flags)."), re.match.__name__)


# What a client of a killed worker gets: the connection closes with no answer.
CLOSED_WITHOUT_ANSWER = (http.client.RemoteDisconnected, http.client.IncompleteRead,
                         ConnectionError)


def app_frames(kind, app_file):
    """The innermost frames a request stuck in `kind` must show, innermost first."""
    frames = [(app_file, app_line("stuck: " + kind), "stuck_in_" + kind),
              (app_file, app_line("calls: " + kind), "raw_application"),
              middleware_frame()]
    return ([regex_match_frame()] if kind == "regex" else []) + frames


def log_index(log, text):
    index = log.find(text)
    assert index >= 0, "%r is not in the log" % text
    return index


_REGEX_SECONDS = {}


def regex_length(seconds):
    """The length of "a"*n + "b" for which re.match(r"(a+)+$", ...) runs about
    `seconds` here (each extra "a" doubles the time), measured once at n=20."""
    if "t20" not in _REGEX_SECONDS:
        started = time.perf_counter()
        re.match(r"(a+)+$", "a" * 20 + "b")
        _REGEX_SECONDS["t20"] = max(time.perf_counter() - started, 1e-4)
    return max(20, min(34, 20 + round(math.log2(seconds / _REGEX_SECONDS["t20"]))))


# -- time --------------------------------------------------------------------------------

class Budget:
    """The seconds left to a test: every wait takes min(its own bound, what is left)."""

    def __init__(self, seconds):
        self.deadline = time.monotonic() + seconds

    def left(self, cap=None):
        left = self.deadline - time.monotonic()
        assert left > 0, "the test ran out of its %.0f s budget" % TEST_SECONDS
        return left if cap is None else min(cap, left)

    def poll(self, predicate, seconds, interval=0.05):
        """predicate()'s first truthy value, polled for at most `seconds`; else None."""
        deadline = time.monotonic() + self.left(seconds)
        while True:
            value = predicate()
            if value or time.monotonic() >= deadline:
                return value or None
            time.sleep(interval)

    def wait_for(self, predicate, seconds, what, interval=0.05):
        """predicate()'s first truthy value, polled for at most `seconds`, or fails."""
        value = self.poll(predicate, seconds, interval)
        if value is None:
            raise AssertionError("timed out after %.1f s waiting for %s" % (seconds, what))
        return value


@pytest.fixture
def budget():
    return Budget(TEST_SECONDS - 5)  # 5 s kept for the teardown


# -- HTTP over a UNIX socket ------------------------------------------------------------

class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def get(path, target, request_id=None, timeout=10.0):
    """(status, decoded JSON body or raw bytes) of GET target on the socket at path."""
    connection = UnixHTTPConnection(path, timeout)
    try:
        connection.request("GET", target,
                           headers={"X-Request-Id": request_id} if request_id else {})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, body


class Request(threading.Thread):
    """GET in a thread of its own; .result is (status, body) or the exception raised."""

    def __init__(self, path, target, request_id=None, timeout=40.0):
        super().__init__(daemon=True, name="client " + target)
        self.args_ = (path, target, request_id, timeout)
        self.result = None
        self.finished_at = None
        self.start()

    def run(self):
        try:
            self.result = get(*self.args_)
        except Exception as error:  # noqa: BLE001 - the test looks at it
            self.result = error
        self.finished_at = time.monotonic()

    @property
    def pending(self):
        return self.finished_at is None

    def wait(self, budget, seconds):
        self.join(budget.left(seconds))
        assert not self.is_alive(), "GET %s still running after %.0f s" % (self.args_[1], seconds)
        return self.result


# -- servers -----------------------------------------------------------------------------

class Server:
    """A server process in its own session: its log (stdout and stderr) goes to a file."""

    def __init__(self, directory, argv, env):
        self.directory = directory
        self.socket = os.path.join(directory, "http.sock")
        self.log_path = os.path.join(directory, "server.log")
        self.started_dir = os.path.join(directory, "started")
        os.makedirs(self.started_dir, exist_ok=True)
        self.argv = [arg.replace("{socket}", self.socket).replace("{dir}", directory)
                     for arg in argv]
        env = dict(env, APP_STARTED=self.started_dir)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=env, cwd=directory,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def log(self):
        with open(self.log_path, "rb") as file:
            return file.read().decode("utf-8", "replace")

    def explain(self, limit=6000):
        text = self.log()
        return "\n--- server log (%s%d chars) ---\n%s" % (
            "last %d of " % limit if len(text) > limit else "", len(text), text[-limit:])

    def alive(self):
        return self.proc.poll() is None

    def wait_ready(self, budget, seconds=30):
        """The first answer to GET /ready (the server is up and a worker serves)."""
        def answer():
            assert self.alive(), "the server exited with %s%s" % (self.proc.returncode,
                                                                  self.explain())
            try:
                status, body = get(self.socket, "/ready", timeout=5)
            except OSError:  # not bound yet, or no worker accepting yet
                return None
            return body if status == 200 else None
        return budget.wait_for(answer, seconds, "the server to answer" + self.explain())

    def started(self, request_id):
        """The pid of the worker a stuck request entered the app in, or None yet."""
        try:
            with open(os.path.join(self.started_dir, request_id)) as file:
                return int(file.read())
        except FileNotFoundError:
            return None

    def wait_started(self, budget, request_id, seconds=15):
        return budget.wait_for(lambda: self.started(request_id), seconds,
                               "request %s to enter the app%s" % (request_id, self.explain()))

    def kill(self):
        """SIGKILL to the whole process group (the master and every worker)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture
def launch():
    """launch(argv, env) -> a Server in a fresh short directory holding app.py; in argv,
    '{socket}' is its UNIX socket and '{dir}' the directory.  Every server is killed, and its directory removed, at
    the end of the test, however it ended."""
    launched = []

    def start(argv, env):
        directory = tempfile.mkdtemp(prefix="tbs", dir="/tmp")
        with open(os.path.join(directory, "app.py"), "w") as file:
            file.write(APP)
        launched.append(Server(directory, argv, env))
        return launched[-1]

    yield start
    for server in launched:
        server.kill()
        shutil.rmtree(server.directory, ignore_errors=True)


def request_id():
    return uuid.uuid4().hex


# -- tbfast's text dumps, parsed back -----------------------------------------------------

HEADER = re.compile(r"tbfast dump: pid=(\d+) time=(\S+) trigger=(\S+) mode=(\S+) threads=(\d+)"
                    r"(?: running=\d+ sleeping=\d+ idle=\d+ waiting_gil=\d+)?"
                    r"(?: gil_wait_ms=\d+ gil_holder=\S+)?$")
HEADING = re.compile(r'(Current thread|Thread) 0x([0-9a-f]+) \((?:name "(.*?)"(?: \(kernel\))?, )?native id (\d+)'
                     r'(, holds the GIL)?(?:, waiting for the GIL)?(?:, in GC)?(?:, idle)?'
                     r'(?:, running|, sleeping(?: in [a-z0-9_ ]+)?)?'
                     r'(?:, stuck for ([0-9.]+) s)?\) \(most recent call first\):$')
FRAME = re.compile(r'  File "(.*)", line (\d+) in (.*)$')
LOGGED = re.compile(r"harakiri: thread (.*) \((0x[0-9a-f]+)\) stuck for ([0-9.]+) s$")


@dataclasses.dataclass
class Thread:
    current: bool
    ident: int
    name: str
    native_id: int
    holds_gil: bool
    stuck_for: float
    context: str = None
    frames: list = dataclasses.field(default_factory=list)  # (file, line, function) innermost first


@dataclasses.dataclass
class Dump:
    pid: int
    trigger: str
    mode: str
    count: int
    start: int          # offset in the log of the header line
    end: int            # offset just past the dump (its last blank line)
    text: str
    logged: bool        # the `tbfast` logger's copy ("harakiri: thread ..." before it)
    threads: list
    complete: bool      # every thread the header counts was parsed

    def thread(self, context):
        matches = [thread for thread in self.threads if thread.context == context]
        return matches[0] if len(matches) == 1 else None


def parse_dumps(log):
    """Every text-format tbfast dump in a log, in order."""
    lines = log.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    dumps = []
    for index, line in enumerate(lines):
        header = HEADER.match(line.rstrip("\n"))
        if not header:
            continue
        logged = index > 0 and LOGGED.search(lines[index - 1].rstrip("\n")) is not None
        threads, at, count = [], index + 1, int(header.group(5))
        while len(threads) < count and at < len(lines):
            heading = HEADING.match(lines[at].rstrip("\n"))
            if not heading:
                break
            thread = Thread(current=heading.group(1) == "Current thread",
                            ident=int(heading.group(2), 16), name=heading.group(3),
                            native_id=int(heading.group(4)), holds_gil=bool(heading.group(5)),
                            stuck_for=float(heading.group(6)) if heading.group(6) else None)
            at += 1
            if at < len(lines) and lines[at].startswith("  Context: "):
                thread.context = lines[at][len("  Context: "):].rstrip("\n")
                at += 1
            while at < len(lines) and lines[at] != "\n":
                frame = FRAME.match(lines[at].rstrip("\n"))
                if frame:
                    thread.frames.append((frame.group(1), int(frame.group(2)), frame.group(3)))
                elif not (lines[at].startswith("    ") or lines[at].startswith("  [Previous")
                          or lines[at].startswith("  <unreadable frame>")
                          or lines[at].startswith("  <no Python frame>")):
                    break  # a foreign line: the dump was interleaved or cut
                at += 1
            if at >= len(lines) or lines[at] != "\n":
                break
            at += 1
            threads.append(thread)
        dumps.append(Dump(pid=int(header.group(1)), trigger=header.group(3),
                          mode=header.group(4), count=count, start=offsets[index],
                          end=offsets[at], text="".join(lines[index:at]), logged=logged,
                          threads=threads, complete=len(threads) == count))
    return dumps


def find_dump(log, context, trigger, logged=False):
    """The first dump (fd copy, or the logger's with logged=True) with a thread whose
    Context line is `context`, and that thread; None when there is none yet."""
    for dump in parse_dumps(log):
        if dump.trigger == trigger and dump.logged == logged and dump.complete:
            thread = dump.thread(context)
            if thread is not None:
                return dump, thread
    return None


def context_of(target, request_id):
    """The Context line tbfast.wsgi gives a request: method, path, query, X-Request-Id."""
    return "GET %s id=%s" % (target, request_id)


def uwsgi_binary():
    """uwsgi beside this python (a venv's), else on PATH; None when there is none."""
    return (shutil.which("uwsgi", path=os.path.dirname(sys.executable))
            or shutil.which("uwsgi"))


def stop(proc, signum, seconds):
    """Sends `signum` to a server started without launch() and waits `seconds` for it
    to exit, then kills it."""
    proc.send_signal(signum)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def no_control_socket():
    """gunicorn's option to open no control socket, where it has one: from 25 on it
    opens ~/.gunicorn/gunicorn.ctl unless told not to."""
    from gunicorn.config import KNOWN_SETTINGS  # here: only the gunicorn tests have gunicorn
    return (["--no-control-socket"] if any(setting.name == "control_socket_disable"
                                            for setting in KNOWN_SETTINGS) else [])
