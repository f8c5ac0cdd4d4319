"""The worker kit: what the tests of the tracebacker's sockets share (test_sockets.py,
test_cli.py, and the server tests of servers/ that number workers).

A worker is a subprocess running WORKER_SCRIPT: it enables the tracebacker and parks
busy threads at a line it reports (the truth the dumps are checked against), then
takes commands on stdin.  Each test takes the fixtures by name after
`from workerkit import spawn, tmp, ...`.  `ask` and `read_until_closed` are the one
way the tests read a tracebacker socket: bounded in bytes and in time.
"""

import contextlib
import fcntl
import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import tbfast

ROOT = os.geteuid() == 0

CORE_SERVER = tbfast.HAS_CORE and getattr(tbfast._impl, "serve_start", None) is not None
SERVERS = [pytest.param("core", marks=pytest.mark.skipif(
               not CORE_SERVER, reason="the C core (with serve_start) is not built")),
           "python"]

# The worker: busy threads parked at a line it reports (the truth the dumps are
# checked against), then the main thread reads commands on stdin.
WORKER_SCRIPT = r'''
import ctypes, json, os, signal, sys, threading, time, traceback
import tbfast
from tbfast import sockets

config = json.loads(sys.argv[1])
watchdog = threading.Timer(config.get("lifetime", 60), os._exit, (3,))
watchdog.daemon = True
watchdog.start()


def stuck_in_here(started, release, depth):
    if depth > 0:
        return stuck_in_here(started, release, depth - 1)
    started.append(traceback.extract_stack(limit=1)[0].lineno + 1)
    release.wait()


release, lines = threading.Event(), []
for number in range(config.get("threads", 2)):
    threading.Thread(target=stuck_in_here, args=(lines, release, config.get("depth", 0)),
                     name="busy-%d" % number, daemon=True).start()
deadline = time.monotonic() + 20
while len(lines) < config.get("threads", 2) and time.monotonic() < deadline:
    time.sleep(0.001)


if config.get("asyncio"):
    import asyncio

    async def napping_child():
        await asyncio.sleep(60)

    async def parent():
        await asyncio.create_task(napping_child(), name="napping-child")

    threading.Thread(target=asyncio.run, args=(parent(),), name="loop", daemon=True).start()

if "request" in config:  # a thread serving a request whose path a client chose
    def serve_request(path, started):
        tbfast.set_context("GET " + path)
        started.set()
        release.wait()

    started = threading.Event()
    threading.Thread(target=serve_request, args=(config["request"], started),
                     name="request " + config["request"], daemon=True).start()
    started.wait(20)


def report(**extra):
    now = sockets.current()
    info = dict(pid=os.getpid(), path=now and now.path, worker_id=now and now.worker_id,
                source=now and now.source, server=sockets.SERVER, mode=tbfast.MODE,
                line=lines[0] if lines else None, threads=len(lines))
    info.update(extra)
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()


def hold_the_gil(seconds):
    sleep = ctypes.PyDLL(None).sleep  # PyDLL keeps the GIL across the call
    report(holding=True, line=traceback.extract_stack(limit=1)[0].lineno + 1)
    sleep(seconds)


def enable(config):
    try:
        sockets.enable_tracebacker(config["basename"], config.get("worker_id"),
                                   mode=config.get("mode", 0o600),
                                   format=config.get("format", "text"))
    except Exception as error:
        report(error="%s: %s" % (type(error).__name__, error))
    else:
        report()


if "basename" in config:
    enable(config)
else:
    report()
for command in sys.stdin:
    command = command.strip()
    if command == "disable":
        report(disabled=sockets.disable_tracebacker())
    elif command.startswith("enable "):
        enable(json.loads(command[len("enable "):]))
    elif command == "fork":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        child = os.fork()
        if child == 0:
            report(child=True, parent=os.getppid())
            signal.sigwait({signal.SIGUSR1})
            sys.exit(0)  # a normal exit: atexit removes the child's own socket
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        report(forked=child)
    elif command.startswith("hold "):
        hold_the_gil(int(command.split()[1]))
        report(held=True)
    elif command == "quit":
        break
'''


@pytest.fixture(scope="session")
def script():
    directory = tempfile.mkdtemp(prefix="tbw")
    path = os.path.join(directory, "worker.py")
    with open(path, "w") as file:
        file.write(WORKER_SCRIPT)
    yield path
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def tmp():
    """A short directory: UNIX socket paths are limited to 107 bytes."""
    directory = tempfile.mkdtemp(prefix="tb", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=SERVERS)
def server(request):
    return request.param


def worker_env(server=None, **extra):
    """This environment without TBFAST_* (nothing inherited by accident), the fallback
    for server="python", and `extra`, each value as a string."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("TBFAST_")}
    if server == "python":
        env["TBFAST_NO_EXTENSIONS"] = "1"
    env.update({key: str(value) for key, value in extra.items()})
    return env


class Worker:
    """A worker subprocess running WORKER_SCRIPT; .info is its first report."""

    def __init__(self, script, config, server=None, env=None):
        self.proc = subprocess.Popen(
            [sys.executable, script, json.dumps(config)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env or worker_env(server), cwd=os.path.dirname(script))
        self.script = script
        self.pid = self.proc.pid
        self._buffer = b""
        self.info = None

    def start(self):
        self.info = self.read()
        return self

    def read(self, timeout=20):
        """The worker's next report line, as a dict."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError("worker %d said nothing in %ss" % (self.pid, timeout))
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError("worker %d exited: %s" % (self.pid, self.stderr()))
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def send(self, command):
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def stderr(self):
        if self.proc.poll() is None:
            return "(still running)"
        return self.proc.stderr.read().decode(errors="replace")

    def quit(self, timeout=10):
        """A normal exit (atexit runs); the exit status."""
        if self.proc.poll() is None:
            self.send("quit")
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    @property
    def path(self):
        return self.info["path"]


@pytest.fixture
def spawn(script):
    """spawn(config, server=...) starts a worker and waits for its first report;
    every worker is killed at the end of the test."""
    workers = []

    def start(config, server=None, env=None, wait=True):
        worker = Worker(script, config, server, env)
        workers.append(worker)
        return worker.start() if wait else worker

    yield start
    for worker in workers:
        worker.kill()
        for stream in (worker.proc.stdin, worker.proc.stdout, worker.proc.stderr):
            stream.close()


# -- reading a socket: bounded in bytes and in time -------------------------------------

READ_LIMIT = 64 << 20  # bytes; far above any dump here: a server that never stops fails


def read_until_closed(client, timeout=10, limit=READ_LIMIT):
    """(what `client` reads, how the reading ended: "end of file", "reset", "timeout"
    or "limit"), within `timeout` seconds and `limit` bytes in all.  Each pass of the
    loop reads a byte at least or ends it, so `limit` bounds the count too."""
    deadline, chunks, size = time.monotonic() + timeout, [], 0
    while size < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), "timeout"
        client.settimeout(left)
        try:
            chunk = client.recv(min(1 << 20, limit - size))
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        except socket.timeout:
            return b"".join(chunks), "timeout"
        if not chunk:
            return b"".join(chunks), "end of file"
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), "limit"


def answer_of(path, request=None, timeout=10, shutdown=False):
    """(what the server at `path` (``@name``: abstract) sends after `request`, how the
    reading ended, as read_until_closed says), within `timeout` seconds for each of
    connecting, sending and reading; with `shutdown`, the client's end of file
    follows the request."""
    address = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        client.connect(address)
        if request is not None:
            try:
                client.sendall(request)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it answered (a refusal) and closed before reading: read the answer
        if shutdown:
            client.shutdown(socket.SHUT_WR)
        return read_until_closed(client, timeout)


def ask(path, request=None, timeout=10, shutdown=False):
    """What the server at `path` answers: the bytes until it closes.  A reset after
    the answer began ends it whole (the server closed with bytes of ours unread);
    a reset before, a timeout or an endless answer raise."""
    data, ending = answer_of(path, request, timeout, shutdown)
    if ending == "end of file" or (ending == "reset" and data):
        return data
    if ending == "reset":
        raise ConnectionResetError("%s reset the connection before answering" % path)
    raise TimeoutError("%s: no end of file (%s) after %d bytes" % (path, ending, len(data)))


OTHER_USER = "tbfast-sockets-peer"


@pytest.fixture(scope="session")
def other_user():
    """A second local user (a pwd entry), made with useradd and removed at the end:
    the tests of what another local user can do need root."""
    if not ROOT:
        pytest.skip("NOT RUN: needs root to create a second user with useradd")
    if shutil.which("useradd") is None:
        pytest.skip("NOT RUN: no useradd to create a second user with")
    try:
        yield pwd.getpwnam(OTHER_USER)  # left by a run that was killed
        return
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    OTHER_USER], check=True, capture_output=True, timeout=60)
    try:
        yield pwd.getpwnam(OTHER_USER)
    finally:
        subprocess.run(["userdel", OTHER_USER], capture_output=True, timeout=60)


@contextlib.contextmanager
def served_by(user, path, answer, lock=False):
    """A socket at `path` (``@name``: abstract) bound by a forked child running as
    `user`, which answers each client with `answer` and, with `lock`, holds the
    flock of `path`.lock as a tbfast worker would; until the block ends."""
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            if lock:
                fcntl.flock(os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600), fcntl.LOCK_EX)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind("\0" + path[1:] if path.startswith("@") else path)
            server.listen(16)
            os.write(ready_write, b"r")
            server.settimeout(60)
            for _ in range(100):
                client = server.accept()[0]
                try:
                    client.sendall(answer)
                except OSError:
                    pass  # the client left without reading
                end_connection(client)
        finally:
            os._exit(0)
    os.close(ready_write)
    try:
        assert select.select([ready_read], [], [], 20)[0] and os.read(ready_read, 1) == b"r", (
            "the other user's server did not start")
        yield
    finally:
        os.close(ready_read)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def end_connection(client):
    """Ends a connection as a server should: the client reads all, then end of file."""
    try:
        client.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the client left
    read_until_closed(client, 5)  # a close with unread input resets
    client.close()

# -- autostart (.pth) ----------------------------------------------------------------------

PTH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "tbfast_autostart.pth")
INSTALLED_PTH = os.path.join(os.path.dirname(os.path.dirname(tbfast.__file__)),
                             "tbfast_autostart.pth")


@pytest.fixture(scope="module")
def autostart_python():
    """A python whose start-up reads tbfast_autostart.pth: the installed one's
    when setup.py put it in site-packages, else a bare venv given a copy."""
    if os.path.exists(INSTALLED_PTH):
        yield sys.executable
        return
    if not os.path.exists(PTH):
        pytest.skip("no tbfast_autostart.pth beside the tests nor installed")
    directory = tempfile.mkdtemp(prefix="tbv")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", directory],
                       check=True, timeout=60)
        site = subprocess.run([directory + "/bin/python", "-c",
                               "import sysconfig; print(sysconfig.get_path('purelib'))"],
                              check=True, capture_output=True, text=True, timeout=30)
        purelib = site.stdout.strip()
        # Named to be read before tbfast_autostart.pth: .pth files go in sorted order.
        with open(os.path.join(purelib, "_tbfast_path.pth"), "w") as file:
            file.write(os.path.dirname(os.path.dirname(tbfast.__file__)) + "\n")
        shutil.copy(PTH, purelib)
        yield directory + "/bin/python"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
