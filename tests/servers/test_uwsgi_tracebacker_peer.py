"""tbfast beside its peer, uWSGI's own --py-tracebacker: on one app with one request
stuck holding the GIL, tbfast's socket answers and uWSGI's does not."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
from serverkit import UnixHTTPConnection, uwsgi_binary
from workerkit import answer_of

pytestmark = pytest.mark.servers

APP = textwrap.dedent("""
    import re
    import tbfast

    tbfast.enable_tracebacker(%(basename)r)

    def backtrack():
        return re.match(r"(a+)+$", "a" * 34 + "b")  # the stuck line

    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/regex":
            backtrack()
        return [b"ok"]
""")


def read_socket(path, seconds):
    """Everything a tracebacker socket sends within `seconds`, and whether it closed."""
    data, ending = answer_of(path, timeout=seconds)
    return data, ending == "end of file"


def wait_for(paths, seconds):
    deadline = time.monotonic() + seconds
    while not all(os.path.exists(path) for path in paths):
        assert time.monotonic() < deadline, "%s did not appear" % paths
        time.sleep(0.05)


def test_uwsgi_tracebacker_hangs_where_tbfast_answers():
    uwsgi = uwsgi_binary()
    if uwsgi is None:
        pytest.skip("uwsgi is not installed (it did not build here)")
    workdir = tempfile.mkdtemp(prefix="tbfast-peer-")
    theirs, ours, http_socket = workdir + "/uwsgi-tb.", workdir + "/tbfast-tb.", workdir + "/http.sock"
    with open(workdir + "/app.py", "w") as file:
        file.write(APP % {"basename": ours})
    server = subprocess.Popen(
        [uwsgi, "--master", "--processes", "1", "--threads", "2", "--enable-threads",
         "--http-socket", http_socket, "--chdir", workdir, "--module", "app",
         "--py-tracebacker", theirs, "--lazy-apps", "--die-on-term"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        wait_for([http_socket, theirs + "1", ours + "1"], 30)
        assert b"uWSGI Python tracebacker" in read_socket(theirs + "1", 5)[0]  # it works, GIL free
        threading.Thread(target=lambda: UnixHTTPConnection(http_socket, 60).request("GET", "/regex"),
                         daemon=True).start()
        time.sleep(1.0)  # into the regex engine, GIL held
        started = time.monotonic()
        dump, closed = read_socket(ours + "1", 1.0)
        assert closed and time.monotonic() - started < 1.0
        stuck_line = APP.splitlines().index(
            '    return re.match(r"(a+)+$", "a" * 34 + "b")  # the stuck line') + 1
        assert 'line %d in backtrack' % stuck_line in dump.decode()
        assert "holds the GIL" in dump.decode()
        data, closed = read_socket(theirs + "1", 2.0)
        assert (data, closed) == (b"", False), "uWSGI's tracebacker answered while the GIL was held"
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
