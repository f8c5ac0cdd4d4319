"""Round trips: a client reading a live server's dump, and the external dumpers.

uWSGI: examples/slow.py served by `uwsgi --master --processes 2 --threads 4
--py-tracebacker DIR/utb. --enable-threads --http-socket DIR/http.sock`, with
tbfast's socket enabled in the app too (DIR/tb.N) and python-manhole installed in
each worker after fork (DIR/manhole.N); 4 requests to / sleep 60 s in dormi.
Then connect + read-until-close of the sockets of the worker with the most requests, interleaved in a shuffled
order every round, with one client for all: connect, shutdown(SHUT_WR) (nothing
to ask), read until the server closes.  Manhole has no dump-and-close mode: on
connect it writes its stack dump, then starts a REPL; its round trip is read
until the dump's closing line of '#', then close.

External: py-spy dump and pystack remote on the 64x64 workload process, against
tbfast's socket in that process (the same raw client, and `tbfast connect-and-read`
as a process, since the other two are processes too).
"""

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from measure import Timings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
MANHOLE_END = b"#############################################\n"

APP = r'''
import os, sys
sys.path.insert(0, %(examples)r)
import tbfast
tbfast.enable_tracebacker(%(dir)r + "/tb.")
try:
    import manhole, uwsgi

    def _manhole_after_fork(previous=getattr(uwsgi, "post_fork_hook", None)):
        if previous is not None:
            previous()
        manhole.install(socket_path=%(dir)r + "/manhole.%%d" %% uwsgi.worker_id(),
                        daemon_connection=True, patch_fork=False, sigmask=None)

    uwsgi.post_fork_hook = _manhole_after_fork
except ImportError as error:
    sys.stderr.write("bench app: no manhole: %%s\n" %% error)
from slow import application
'''

WORKLOAD = r'''
import sys, time
sys.path.insert(0, %(here)r)
import tbfast
from workload import ParkedThreads
tbfast.configure(buffer_size=32 * 1024 * 1024)
with ParkedThreads(64, 64):
    tbfast.enable_tracebacker(%(dir)r + "/ext.", worker_id=1)
    print("ready", flush=True)
    sys.stdin.read()
'''


@dataclass
class Series(Timings):
    name: str
    times_ns: list = field(default_factory=list)
    bytes: int = 0
    frames: int = 0
    error: str = ""
    failures: dict = field(default_factory=dict)  # error -> reads that failed so (not timed)


def read_socket(path, until=None, timeout=10.0, request=b""):
    """Connect, send `request` (default: nothing to ask), read until the server
    closes (or `until` is read)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    chunks = []
    try:
        client.connect(path)
        client.sendall(request)
        client.shutdown(socket.SHUT_WR)
        while True:
            chunk = client.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            if until is not None and until in chunk:
                break
    finally:
        client.close()
    return b"".join(chunks)


def read_silently(path, timeout=10.0):
    """As `uwsgi --connect-and-read` does: connect, send nothing, read until close."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(timeout)
    chunks = []
    try:
        client.connect(path)
        while True:
            chunk = client.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        client.close()
    return b"".join(chunks)


def _wait_for(paths, seconds, proc=None):
    deadline = time.monotonic() + seconds
    while not all(os.path.exists(path) for path in paths):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("exited with %s" % proc.returncode)
        if time.monotonic() > deadline:
            raise RuntimeError("%s did not appear within %.0f s" % (
                ", ".join(os.path.basename(p) for p in paths if not os.path.exists(p)), seconds))
        time.sleep(0.05)


def _interleave(readers, rounds, seed, check):
    """readers: name -> function returning the bytes of one dump."""
    series = {name: Series(name) for name in readers}
    for name, read in readers.items():  # warm, and check what each answers
        try:
            data = read()
            series[name].bytes = len(data)
            series[name].frames = check(name, data)
        except Exception as error:  # noqa: BLE001 - reported, not fatal
            series[name].error = "%s: %s" % (type(error).__name__, error)
    live = [name for name in readers if not series[name].error]
    shuffle = random.Random(seed).shuffle
    for _ in range(rounds):
        shuffle(live)
        for name in live:
            started = time.perf_counter_ns()
            try:
                readers[name]()
            except OSError as error:  # counted and reported; the read is not timed
                key = type(error).__name__
                series[name].failures[key] = series[name].failures.get(key, 0) + 1
                continue
            series[name].times_ns.append(time.perf_counter_ns() - started)
    return series


def _count_frames(name, data):
    text = data.decode("utf-8", "replace")
    if "dormi" not in text and "descend" not in text:
        raise RuntimeError("%s's answer shows no request frame: %r" % (name, text[:200]))
    if name.startswith("uWSGI"):
        return sum(1 for line in text.splitlines() if line.startswith("thread_id = "))
    if name.startswith("manhole"):
        return sum(1 for line in text.splitlines() if line.startswith("File: "))
    if name.startswith("py-spy"):
        return sum(1 for line in text.splitlines() if line.startswith("    ") and "(" in line)
    if name.startswith("pystack"):
        return sum(1 for line in text.splitlines() if line.lstrip().startswith("(Python) File"))
    return sum(1 for line in text.splitlines() if line.startswith('  File "'))


@dataclass
class Roundtrip:
    series: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    error: str = ""
    uwsgi_version: str = ""
    worker: int = 1


def uwsgi_roundtrip(rounds=200, seed=1, log=print):
    result = Roundtrip()
    uwsgi = shutil.which("uwsgi", path=BIN)
    if uwsgi is None:
        result.error = "uwsgi is not installed in the bench venv (pip install uwsgi failed?)"
        return result
    result.uwsgi_version = subprocess.run([uwsgi, "--version"], stdout=subprocess.PIPE,
                                          text=True).stdout.strip()
    directory = tempfile.mkdtemp(prefix="tbrt-", dir="/tmp")
    with open(directory + "/bench_app.py", "w") as file:
        file.write(APP % {"examples": os.path.join(ROOT, "examples"), "dir": directory})
    logfile = open(directory + "/uwsgi.log", "wb")
    server = subprocess.Popen(
        [uwsgi, "--master", "--processes", "2", "--threads", "4",
         "--py-tracebacker", directory + "/utb.", "--enable-threads",
         "--http-socket", directory + "/http.sock", "--chdir", directory,
         "--module", "bench_app", "-H", sys.prefix, "--die-on-term", "--need-app"],
        stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True)
    requests = []
    try:
        _wait_for([directory + "/http.sock", directory + "/utb.1", directory + "/tb.1"], 60, server)
        for _ in range(4):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(directory + "/http.sock")
            client.sendall(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
            requests.append(client)
        time.sleep(1.0)  # into dormi
        # uWSGI hands the requests to whichever worker accepts: read the worker that has
        # the most of them (worker 1 on a tie).
        _wait_for([directory + "/tb.2"], 30, server)
        sleeping = {worker: _sleeping(directory + "/tb.%d" % worker) for worker in (1, 2)}
        worker = max((1, 2), key=lambda number: (sleeping[number], -number))
        result.worker = worker
        result.notes.append("requests sleeping in dormi, per worker (tbfast's dump): %s; worker %d "
                            "is read" % (", ".join("worker %d: %d" % item for item in sleeping.items()),
                                         worker))
        if not sleeping[worker]:
            raise RuntimeError("no request reached dormi in either worker")
        tb, utb, mh = ["%s/%s.%d" % (directory, name, worker) for name in ("tb", "utb", "manhole")]
        readers = {
            "tbfast socket": lambda: read_socket(tb),
            "tbfast socket, gil-free": lambda: read_socket(tb, request=b"gil-free\n"),
            "uWSGI --py-tracebacker": lambda: read_socket(utb),
            "tbfast socket, silent client": lambda: read_silently(tb),
            "uWSGI --py-tracebacker, silent client": lambda: read_silently(utb),
        }
        result.series = _interleave(readers, rounds, seed, _count_frames)
        # manhole in a phase of its own, against uWSGI's: a tbfast dump taken while
        # one of manhole's connection threads exits crashes the worker (SIGSEGV), so
        # tbfast's socket is not read while manhole's threads come and go.
        if os.path.exists(mh):
            readers = {"manhole (dump on connect)": lambda: read_socket(mh, until=MANHOLE_END),
                       "uWSGI --py-tracebacker, manhole's phase": lambda: read_socket(utb)}
            time.sleep(0.2)
            result.series.update(_interleave(readers, rounds // 2, seed, _count_frames))
        else:
            result.notes.append("manhole: no socket %s appeared (see the uWSGI log)" % mh)
        # For reference: the clients as processes.
        cli = {
            "`uwsgi --connect-and-read` tb.N": [uwsgi, "--connect-and-read", tb],
            "`uwsgi --connect-and-read` utb.N": [uwsgi, "--connect-and-read", utb],
            "`tbfast connect-and-read` tb.N": [os.path.join(BIN, "tbfast"), "connect-and-read", tb],
        }
        readers = {name: (lambda argv=argv: subprocess.run(argv, stdout=subprocess.PIPE,
                                                            stderr=subprocess.STDOUT).stdout)
                   for name, argv in cli.items()}
        result.series.update(_interleave(readers, max(10, rounds // 10), seed, lambda n, d: _frames_any(d)))
        if any(one.failures for one in result.series.values()):
            result.notes.append("uWSGI's log, its lines on workers and signals: " + " / ".join(
                _log_lines(directory + "/uwsgi.log")))
    except Exception as error:  # noqa: BLE001 - goes into RESULTS.md
        result.error = "%s: %s" % (type(error).__name__, error)
        with open(directory + "/uwsgi.log", "rb") as file:
            result.notes.append("uWSGI log tail: " + file.read()[-600:].decode("utf-8", "replace"))
    finally:
        for client in requests:
            client.close()
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        logfile.close()
        shutil.rmtree(directory, ignore_errors=True)
    return result


def _log_lines(path, pattern=rb"worker|signal|died|DAMN|respawn|SIG|error"):
    with open(path, "rb") as file:
        lines = [line for line in file.read().splitlines()
                 if re.search(pattern, line) and b"Manhole" not in line and b"SIGPIPE" not in line]
    return [line.decode("utf-8", "replace") for line in lines[-12:]]


def _sleeping(path, tries=3):
    """Threads in dormi, from tbfast's dump of one worker."""
    for attempt in range(tries):
        try:
            return len(re.findall(rb"in dormi\b", read_socket(path)))
        except OSError:
            if attempt == tries - 1:
                raise
            time.sleep(0.1)


def _frames_any(data):
    text = data.decode("utf-8", "replace")
    return sum(1 for line in text.splitlines()
               if line.startswith('  File "') or line.startswith("thread_id = "))


def external(rounds=10, seed=1):
    result = Roundtrip()
    directory = tempfile.mkdtemp(prefix="tbext-", dir="/tmp")
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD % {"here": HERE, "dir": directory}],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the workload process did not start")
        pid = str(proc.pid)
        path = directory + "/ext.1"

        def run(argv):
            done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
            if done.returncode != 0:
                raise RuntimeError("`%s` exited %d: %s" % (" ".join(argv), done.returncode,
                                                          done.stderr.decode("utf-8", "replace").strip()[-400:]))
            return done.stdout

        readers = {"tbfast socket": lambda: read_socket(path),
                   "`tbfast connect-and-read`": lambda: run([os.path.join(BIN, "tbfast"),
                                                           "connect-and-read", path])}
        for name, argv in (("py-spy dump", [os.path.join(BIN, "py-spy"), "dump", "--pid", pid]),
                           ("pystack remote", [os.path.join(BIN, "pystack"), "remote", pid])):
            if not os.path.exists(argv[0]):
                result.notes.append("%s: not installed in the bench venv" % name)
                continue
            readers[name] = lambda argv=argv: run(argv)
        result.series = _interleave(readers, rounds, seed, _count_frames)
    except Exception as error:  # noqa: BLE001
        result.error = "%s: %s" % (type(error).__name__, error)
    finally:
        proc.stdin.close()
        proc.wait(30)
        shutil.rmtree(directory, ignore_errors=True)
    return result


if __name__ == "__main__":
    for outcome in (uwsgi_roundtrip(rounds=20), external(rounds=3)):
        print(outcome.error, outcome.notes)
        for one in outcome.series.values():
            print("%-45s %s %8s bytes %5d frames  median %s µs" % (
                one.name, one.error or "", one.bytes, one.frames,
                "%.0f" % (one.median / 1e3) if one.times_ns else "-"))
