"""The tracebacker's sockets under a real uWSGI: each worker serves its own, named
for its uWSGI worker number (the master none), whether the app enables it or
tbfast_autostart.pth does, and an app's own post-fork hook still runs."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from serverkit import stop, uwsgi_binary
# autostart_python, server and tmp: fixtures, taken by name.
from workerkit import ask, autostart_python, server, tmp, worker_env  # noqa: F401

UWSGI = uwsgi_binary()
UWSGI_APP = r'''
import os
from tbfast import sockets
if os.environ.get("APP_HOOK"):  # the app's own post-fork hook, which must still run
    import uwsgi

    def post_fork():
        open(os.environ["APP_HOOK"] + str(uwsgi.worker_id()), "w").close()

    uwsgi.post_fork_hook = post_fork
if os.environ.get("APP_ENABLE"):
    sockets.enable_tracebacker(os.environ["APP_ENABLE"])


def application(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]
'''


def run_uwsgi(tmp, env, *options):
    with open(tmp + "/app.py", "w") as file:
        file.write(UWSGI_APP)
    return subprocess.Popen(
        [UWSGI, "--master", "--processes", "2", "--enable-threads", "--die-on-term",
         "--need-app", "--socket", tmp + "/uwsgi.sock", "--chdir", tmp, "--wsgi-file",
         tmp + "/app.py", "-H", sys.prefix, *options],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def uwsgi_worker_dumps(proc, base, workers=2):
    deadline = time.monotonic() + 30
    paths = [base + str(number) for number in range(1, workers + 1)]
    while True:
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
        try:
            return [json.loads(ask(path, b"json\n")) for path in paths]
        except (FileNotFoundError, ConnectionRefusedError):  # not yet bound, or listening
            assert time.monotonic() < deadline, "uWSGI workers never served %s" % paths
            time.sleep(0.05)


def stop_uwsgi(proc):
    stop(proc, signal.SIGINT, 15)
    proc.stderr.close()


@pytest.mark.servers
@pytest.mark.skipif(UWSGI is None, reason="uwsgi is not beside this python nor on PATH")
@pytest.mark.parametrize("how", ["app", "autostart", "autostart-lazy-apps"])
def test_uwsgi_workers_serve_their_worker_numbers(tmp, server, how, autostart_python):
    env = worker_env(server)
    options = []
    if how == "app":
        env["APP_ENABLE"] = tmp + "/tb."
        env["APP_HOOK"] = tmp + "/hook."
    else:
        if autostart_python != sys.executable:
            pytest.skip("tbfast_autostart.pth is not installed in this python's site-packages")
        env["TBFAST_TRACEBACKER"] = tmp + "/tb."
        if how == "autostart-lazy-apps":
            options.append("--lazy-apps")
    proc = run_uwsgi(tmp, env, *options)
    try:
        dumps = uwsgi_worker_dumps(proc, tmp + "/tb.")
        pids = [dump["pid"] for dump in dumps]
        assert proc.pid not in pids, "the master serves no socket"
        assert len(set(pids)) == 2
        for pid in pids:
            with open("/proc/%d/stat" % pid) as file:
                assert int(file.read().rsplit(")", 1)[1].split()[1]) == proc.pid
        assert not os.path.exists(tmp + "/tb.0")
        if how == "app":  # the hook that was there runs too, after ours
            deadline = time.monotonic() + 20
            while not all(os.path.exists(tmp + "/hook.%d" % n) for n in (1, 2)):
                assert time.monotonic() < deadline, "the app's own post-fork hook never ran"
                time.sleep(0.02)
    finally:
        stop_uwsgi(proc)

