"""The tracebacker's sockets under a real gunicorn: the arbiter serves none, each
worker its own, and a worker forked to replace a dead one takes the dead one's
number, whether the app enables the tracebacker or tbfast_autostart.pth does."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from serverkit import no_control_socket, stop
# autostart_python, server and tmp: fixtures, taken by name.
from workerkit import ask, autostart_python, server, tmp, worker_env  # noqa: F401

GUNICORN_APP = r'''
import os
from tbfast import sockets
if os.environ.get("APP_ENABLE"):
    sockets.enable_tracebacker(os.environ["APP_ENABLE"])


def application(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]
'''


def served_pids(paths, timeout=30, exclude=()):
    """{path: pid} once every path answers with a pid not in `exclude`."""
    deadline = time.monotonic() + timeout
    while True:
        pids = {}
        for path in paths:
            try:
                pid = json.loads(ask(path, b"json\n", timeout=5))["pid"]
            except (OSError, ValueError):
                continue
            if pid not in exclude:
                pids[path] = pid
        if len(pids) == len(paths):
            return pids
        assert time.monotonic() < deadline, "not all of %s served: %s" % (paths, pids)
        time.sleep(0.05)


@pytest.mark.servers
@pytest.mark.parametrize("how", ["app", "autostart"])
def test_gunicorn_respawned_worker_takes_the_dead_ones_number(tmp, server, how,
                                                               autostart_python):
    pytest.importorskip("gunicorn")
    env = worker_env(server)
    if how == "app":  # enabled in each worker, which imports the app after fork
        env["APP_ENABLE"] = tmp + "/tb."
        paths = [tmp + "/tb.1", tmp + "/tb.2"]
    else:  # the arbiter serves none; each forked worker its own, from slot 1
        if autostart_python != sys.executable:
            pytest.skip("tbfast_autostart.pth is not installed in this python's site-packages")
        env["TBFAST_TRACEBACKER"] = tmp + "/tb."
        paths = [tmp + "/tb.1", tmp + "/tb.2"]
    with open(tmp + "/app.py", "w") as file:
        file.write(GUNICORN_APP)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", "unix:%s/g.sock" % tmp,
         "--chdir", tmp, *no_control_socket(), "app:application"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    try:
        pids = served_pids(paths)
        assert proc.pid not in pids.values() and len(set(pids.values())) == 2
        os.kill(pids[paths[0]], signal.SIGKILL)  # the arbiter forks a new worker
        respawned = served_pids(paths[:1], exclude=set(pids.values()))
        assert respawned[paths[0]] != pids[paths[0]]
        assert served_pids(paths[1:]) == {paths[1]: pids[paths[1]]}
        assert not os.path.exists(tmp + "/tb.%d" % (len(paths) + 1))
    finally:
        stop(proc, signal.SIGTERM, 20)
