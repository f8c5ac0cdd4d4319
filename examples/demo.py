"""The demo behind scripts/demo: a busy gunicorn pool, read over tbfast's sockets."""

import glob
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def request(http_socket, path):
    """Fire and forget: these requests never finish while the demo runs."""
    try:
        connection = UnixHTTPConnection(http_socket, timeout=120)
        connection.request("GET", path)
        connection.getresponse()
    except OSError:
        pass


def wait_for(paths, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(os.path.exists(path) for path in paths):
            return
        time.sleep(0.1)
    raise SystemExit("demo: %s did not appear within %d s" % (", ".join(paths), seconds))


def run(*command):
    print("\n$ " + " ".join(command).replace(BIN + "/", ""), flush=True)
    subprocess.run(command, check=False, timeout=60)


def main():
    workdir = tempfile.mkdtemp(prefix="tbfast-demo-")
    http_socket = os.path.join(workdir, "http.sock")
    basename = os.path.join(workdir, "tb.")
    env = dict(os.environ, TBFAST_TRACEBACKER=basename)
    command = [os.path.join(BIN, "gunicorn"), "-c", "python:tbfast.gunicorn", "--chdir", HERE,
               "-w", "2", "--threads", "4", "--bind", "unix:" + http_socket, "--timeout", "120",
               "slow:application"]
    print("$ TBFAST_TRACEBACKER=%s gunicorn -c python:tbfast.gunicorn -w 2 --threads 4 "
          "slow:application" % basename, flush=True)
    # A session of its own: the worker stuck in the regex never runs its SIGTERM
    # handler, so the whole group is killed at the end.
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        wait_for([http_socket, basename + "1", basename + "2"], 30)
        print("Two workers, two tracebacker sockets. Sending 4 requests that sleep in "
              "dormi() and 1 that backtracks in the regex engine, holding its worker's GIL.",
              flush=True)
        for path in ["/"] * 4 + ["/regex"]:
            threading.Thread(target=request, args=(http_socket, path), daemon=True).start()
        time.sleep(1.5)
        tbfast = os.path.join(BIN, "tbfast")
        run(tbfast, "connect-and-read", basename + "*")
        run(tbfast, "connect-and-read", "--summary", basename + "*")
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        for leftover in glob.glob(basename + "*"):
            os.unlink(leftover)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
