"""uWSGI's classic tracebacker example, on the real servers: slow.py served by
2 processes x 4 threads, 4 requests asleep in dormi(); both workers' sockets
show the busy threads in the slow call chain at the lines of the source."""

import glob
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from serverkit import UnixHTTPConnection
from workerkit import ask

pytestmark = pytest.mark.servers

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples")
sys.path.insert(0, EXAMPLES)
import slow  # noqa: E402


def call_line(function, text):
    lines, first = inspect.getsourcelines(function)
    return first + [i for i, line in enumerate(lines) if text in line][0]


# Innermost first, as the json format lists frames.
SLOW_CHAIN = [("dormi", call_line(slow.dormi, "time.sleep(60)")),
              ("dormi2", call_line(slow.dormi2, "dormi()")),
              ("dormi3", call_line(slow.dormi3, "dormi2()")),
              ("dormi4", call_line(slow.dormi4, "dormi3()")),
              ("dormi5", call_line(slow.dormi5, "dormi4()")),
              ("application", call_line(slow.application, "dormi5()"))]


def send_slow_request(http_socket):
    try:
        UnixHTTPConnection(http_socket, 90).request("GET", "/")
    except OSError:
        pass


def busy_threads(paths, seconds=30):
    """(pid, chain) of every thread in slow.py over the workers' dumps, once there are 4."""
    deadline = time.monotonic() + seconds
    while True:
        found = []
        for path in paths:
            document = json.loads(ask(path, b"json\n", timeout=5))
            for thread in document["threads"]:
                chain = [(frame["function"], frame["line"]) for frame in thread["frames"]
                         if frame["file"].endswith("slow.py")]
                if chain:
                    found.append((document["pid"], chain))
        if len(found) == 4 or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def run_classic(command, env, workdir, basename):
    http_socket = workdir + "/http.sock"
    server = subprocess.Popen(command, env=env, cwd=workdir, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        paths = [basename + "1", basename + "2"]
        while not all(os.path.exists(path) for path in paths + [http_socket]):
            assert time.monotonic() < deadline, "the server or its sockets did not come up"
            time.sleep(0.1)
        for _ in range(4):
            threading.Thread(target=send_slow_request, args=(http_socket,), daemon=True).start()
        found = busy_threads(paths)
        sockets = [path for path in glob.glob(basename + "*") if not path.endswith(".lock")]
        assert sorted(sockets) == paths  # one socket a worker, none for the master
        return found, server.pid
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="tbfast-classic-")
    shutil.copy(os.path.join(EXAMPLES, "slow.py"), path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_gunicorn_gthread_two_workers_four_threads(workdir):
    gunicorn = shutil.which("gunicorn")
    if gunicorn is None:
        pytest.skip("gunicorn is not installed")
    basename = workdir + "/tb."
    env = dict(os.environ, TBFAST_TRACEBACKER=basename, PYTHONPATH=os.pathsep.join(sys.path))
    found, master = run_classic(
        [gunicorn, "--worker-class", "gthread", "-w", "2", "--threads", "4",
         "--bind", "unix:" + workdir + "/http.sock", "slow:application"], env, workdir, basename)
    assert [chain for pid, chain in found] == [SLOW_CHAIN] * 4
    assert master not in {pid for pid, chain in found}


def test_uwsgi_two_processes_four_threads(workdir):
    uwsgi = shutil.which("uwsgi")
    if uwsgi is None:
        pytest.skip("uwsgi is not installed (it did not build here)")
    basename = workdir + "/tb."
    with open(workdir + "/app.py", "w") as file:
        file.write("import tbfast\ntbfast.enable_tracebacker(%r)\nfrom slow import application\n"
                   % basename)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    found, master = run_classic(
        [uwsgi, "--master", "--processes", "2", "--threads", "4", "--enable-threads",
         "--http-socket", workdir + "/http.sock", "--module", "app", "--die-on-term"],
        env, workdir, basename)
    assert [chain for pid, chain in found] == [SLOW_CHAIN] * 4
    assert master not in {pid for pid, chain in found}
