"""tbfast.uwsgi and tbfast's watchdog against a real uWSGI.

uWSGI's harakiri with a graceful signal: the worker's stack is in uWSGI's log,
written by tbfast's C handler between uWSGI's "HARAKIRI ON WORKER" and its SIGKILL,
for a request stuck in time.sleep and for one stuck in the regex engine (GIL held).
Then tbfast's own watchdog (HarakiriMiddleware) in uWSGI workers.

The truth: serverkit.APP's marked lines, re.match's and HarakiriMiddleware's lines
via inspect, the worker pid each stuck request wrote as it entered the app.
"""

import os
import re
import subprocess
import sys
import time
from urllib.parse import parse_qsl, urlsplit

import pytest

from serverkit import (  # noqa: F401 - budget and launch are fixtures
    CLOSED_WITHOUT_ANSWER, Request, app_frames, budget, context_of, find_dump, get, launch,
    regex_length, request_id, uwsgi_binary)
from workerkit import worker_env

UWSGI = uwsgi_binary()
pytestmark = [pytest.mark.servers, pytest.mark.skipif(
    UWSGI is None, reason="uwsgi is not on PATH nor beside %s (pip install uwsgi: it compiles "
                          "from source; scripts/test says so when it did not build)"
                          % sys.executable)]


def uwsgi_help():
    return subprocess.run([UWSGI, "--help"], capture_output=True, text=True, timeout=30).stdout


def start_uwsgi(launch, budget, options, **env):
    server = launch([UWSGI, "--master", "--enable-threads", "--need-app", "--die-on-term",
                     "--http-socket", "{socket}", "--chdir", "{dir}",
                     "--wsgi-file", "{dir}/app.py", "-H", sys.prefix, *options],
                    worker_env(**env))
    return server, server.wait_ready(budget)["pid"]


def test_harakiri_graceful_signal_dumps_every_stuck_request_before_the_sigkill(launch,
                                                                               budget):
    """--harakiri 3 --harakiri-graceful-timeout 2 --harakiri-graceful-signal 30, and
    --import tbfast.uwsgi: on harakiri uWSGI sends SIGPWR, tbfast dumps, 2 s later
    uWSGI's SIGKILL, and the master respawns the worker."""
    if "--harakiri-graceful-signal" not in uwsgi_help():
        pytest.skip("this uWSGI has no --harakiri-graceful-signal (added in 2.0.22): its "
                    "harakiri is a bare SIGKILL that nothing in the worker can see coming")
    server, _ = start_uwsgi(launch, budget, [
        "--processes", "2", "--threads", "2", "--harakiri", "3",
        "--harakiri-graceful-timeout", "2", "--harakiri-graceful-signal", "30",
        "--import", "tbfast.uwsgi"],
        APP_HARAKIRI=60)  # only for the Context line: uWSGI's harakiri comes first
    app_file = os.path.join(server.directory, "app.py")
    stuck = {}
    # The sleeper enters Python first: a request that arrives while another holds the
    # GIL in the same worker waits for the GIL with no Python frame, and a dump (like
    # sys._current_frames()) leaves a thread with no frame out.
    for kind, target in (("sleep", "/sleep?s=60"),
                         ("regex", "/regex?n=%d" % regex_length(120))):
        rid = request_id()
        client = Request(server.socket, target, rid, timeout=40)
        stuck[kind] = (target, rid, client, server.wait_started(budget, rid))
    pids = {pid for _, _, _, pid in stuck.values()}

    def killed_and_respawned():
        log = server.log()
        found = {}
        for pid in pids:
            died = re.search(r"DAMN ! worker (\d+) \(pid: %d\) died, killed by signal 9" % pid, log)
            if not died:
                return None
            respawned = re.compile(r"Respawned uWSGI worker %s \(new pid: (\d+)\)"
                                   % died.group(1)).search(log, died.end())
            if not respawned:
                return None
            found[pid] = (died.group(1), died.start(), int(respawned.group(1)))
        return found

    kills = budget.wait_for(killed_and_respawned, 25, "uWSGI's harakiri kills" + server.explain())
    log = server.log()
    for kind, (target, rid, client, pid) in stuck.items():
        worker, died_at, _ = kills[pid]
        found = find_dump(log, context_of(target, rid), "signal:SIGPWR")
        assert found, "no SIGPWR dump for the %s request%s" % (kind, server.explain())
        dump, thread = found
        graceful = re.search(r"\*\*\* HARAKIRI ON WORKER %s \(pid: %d, try: 1, graceful: yes\)"
                             % (worker, pid), log)
        assert graceful and graceful.start() < dump.start and dump.end <= died_at, (
            kind + server.explain())
        assert dump.pid == pid
        assert thread.holds_gil == (kind == "regex"), kind + server.explain()
        expected = app_frames(kind, app_file)
        assert thread.frames[:len(expected)] == expected, kind + server.explain()
        result = client.wait(budget, 10)
        assert isinstance(result, CLOSED_WITHOUT_ANSWER), "%s got %r" % (kind, result)
    # The respawned workers serve; the dead ones are gone.
    for _ in range(6):
        status, body = get(server.socket, "/after", timeout=budget.left(10))
        assert status == 200 and body["pid"] not in pids


@pytest.mark.parametrize("setup", ["armed-first-in-the-worker", "configured-at-import-lazy-apps",
                                   "configured-at-import-in-the-master"])
def test_tbfast_watchdog_under_uwsgi_dumps_the_stuck_request_with_its_context(launch, budget,
                                                                              setup):
    """HarakiriMiddleware(app, timeout=1) in a uWSGI worker: the watchdog dumps the
    request still in time.sleep to stderr (uWSGI's log), the `tbfast` logger logs the
    same dump, the other thread serves meanwhile, and the request completes.  With the
    watchdog configured in the master, the worker, forked by C code that runs no
    Python fork hook, starts one of its own."""
    env = {"APP_HARAKIRI": "1"}
    options = ["--processes", "1", "--threads", "2"]
    if setup.startswith("configured-at-import"):  # tbfast.watchdog.configure() in the app
        env["APP_CONFIGURE_WATCHDOG"] = "1"
    if setup.endswith("lazy-apps"):  # the app is loaded in each worker, after fork
        options.append("--lazy-apps")
    server, pid = start_uwsgi(launch, budget, options, **env)
    target, rid = "/sleep?s=4", request_id()
    stuck = Request(server.socket, target, rid)
    assert server.wait_started(budget, rid) == pid
    entered = time.monotonic()
    assert get(server.socket, "/ok", timeout=budget.left(10))[0] == 200  # the other thread
    context = context_of(target, rid)
    found = budget.poll(lambda: find_dump(server.log(), context, "harakiri"), 6)
    assert found, "no harakiri dump" + server.explain()
    dump, thread = found
    assert stuck.pending and time.monotonic() - entered < 3.5, server.explain()
    assert dump.pid == pid and 1.0 <= thread.stuck_for < 3.5 and not thread.holds_gil
    expected = app_frames("sleep", os.path.join(server.directory, "app.py"))
    assert thread.frames[:len(expected)] == expected, server.explain()
    logged = budget.wait_for(lambda: find_dump(server.log(), context, "harakiri", logged=True),
                             10, "the logger's copy" + server.explain())
    assert logged[0].text == dump.text
    url = urlsplit(target)
    assert stuck.wait(budget, 15) == (200, {"pid": pid, "path": url.path,
                                            "query": dict(parse_qsl(url.query))})
