"""tbfast.gunicorn against a real gunicorn: the stack of a timed-out sync worker, and
tbfast's watchdog as the per-request deadline that gthread workers lack.

The truth the dumps are checked against: the lines of serverkit.APP marked
"# stuck:" and "# calls:", and, via inspect, re.match's and HarakiriMiddleware's
own lines; the request ids are fresh uuids sent as X-Request-Id.
"""

import os
import sys
import time
from urllib.parse import parse_qsl, urlsplit

import pytest

from serverkit import (  # noqa: F401 - budget and launch are fixtures
    CLOSED_WITHOUT_ANSWER, Request, app_frames, budget, context_of, find_dump, get, launch,
    log_index, no_control_socket, regex_length, request_id)
from workerkit import worker_env

pytestmark = pytest.mark.servers
pytest.importorskip("gunicorn")
NO_CONTROL_SOCKET = no_control_socket()


def start_gunicorn(launch, budget, options, **env):
    server = launch([sys.executable, "-m", "gunicorn", "-c", "python:tbfast.gunicorn",
                     "--bind", "unix:{socket}", "--workers", "1", "--error-logfile", "-",
                     *NO_CONTROL_SOCKET, *options, "app:application"],
                    worker_env(**env))
    return server, server.wait_ready(budget)["pid"]


def test_sync_worker_timeout_in_a_gil_holding_c_loop_is_dumped_before_the_kill(launch, budget):
    """--timeout 2: the arbiter logs WORKER TIMEOUT and sends SIGABRT; gunicorn's own
    handler is Python and cannot run (sum() holds the GIL in C), tbfast's C handler
    writes the stack; the SIGKILL follows and a new worker serves."""
    server, pid = start_gunicorn(launch, budget, ["--worker-class", "sync", "--timeout", "2"],
                                 TBFAST_HARAKIRI=60)  # the middleware, for the Context line
    rid = request_id()
    stuck = Request(server.socket, "/sum", rid)
    assert server.wait_started(budget, rid) == pid
    # Killed, not exited: gunicorn's own SIGABRT handler (sys.exit(1)) never ran.
    killed = "Worker (pid:%d) was sent SIGKILL!" % pid
    budget.wait_for(lambda: killed in server.log(), 15, "the worker's SIGKILL" + server.explain())
    log = server.log()
    found = find_dump(log, context_of("/sum", rid), "signal:SIGABRT")
    assert found, "no SIGABRT dump with the request's context" + server.explain()
    dump, thread = found
    timeout_at = log_index(log, "WORKER TIMEOUT (pid:%d)" % pid)
    assert timeout_at < dump.start and dump.end <= log_index(log, killed), server.explain()
    assert dump.pid == pid and dump.complete
    assert thread.name == "MainThread" and thread.current and thread.holds_gil
    assert thread.frames[:3] == app_frames("sum", os.path.join(server.directory, "app.py"))

    result = stuck.wait(budget, 10)
    assert isinstance(result, CLOSED_WITHOUT_ANSWER), "the stuck request got %r" % (result,)
    status, body = get(server.socket, "/after", timeout=budget.left(20))
    assert status == 200 and body["pid"] != pid
    assert "Booting worker with pid: %d" % body["pid"] in server.log()


STUCK = {  # kind: (target, seconds it stays stuck at most)
    "sleep": ("/sleep?s=5", 5),
    "lock": ("/lock?s=5", 5),
    "regex": (None, 4),  # the length comes from regex_length(4)
}


@pytest.mark.parametrize("kind", ["sleep", "lock", "regex"])
def test_gthread_request_stuck_is_dumped_by_tbfast_harakiri_and_none_is_lost(launch, budget,
                                                                             kind):
    """--timeout 30 never fires (the gthread main loop keeps the heartbeat); with
    TBFAST_HARAKIRI=1 the watchdog dumps the stuck request after 1 s, while it is
    still stuck (while the regex still holds the GIL), and 20 concurrent requests all
    complete, as does the stuck one (action "log")."""
    server, pid = start_gunicorn(launch, budget, ["--worker-class", "gthread", "--threads", "4",
                                                  "--timeout", "30"], TBFAST_HARAKIRI=1)
    target, seconds = STUCK[kind]
    target = target or "/regex?n=%d" % regex_length(seconds)
    rid = request_id()
    stuck = Request(server.socket, target, rid)
    server.wait_started(budget, rid)
    entered = time.monotonic()
    others = [Request(server.socket, "/ok?n=%d" % n) for n in range(20)]
    context = context_of(target, rid)
    dump, thread = budget.wait_for(lambda: find_dump(server.log(), context, "harakiri"), 10,
                                   "the harakiri dump of %s%s" % (target, server.explain()))
    seen = time.monotonic()
    assert stuck.pending, "the dump came only after the request ended" + server.explain()
    assert seen - entered < 4.0
    assert dump.pid == pid
    assert 1.0 <= thread.stuck_for < 4.0 and not thread.current
    assert thread.holds_gil == (kind == "regex"), server.explain()
    assert thread.name != "MainThread"  # a pool thread's request, not the main loop
    expected = app_frames(kind, os.path.join(server.directory, "app.py"))
    assert thread.frames[:len(expected)] == expected, server.explain()

    url = urlsplit(target)
    assert stuck.wait(budget, 30) == (200, {"pid": pid, "path": url.path,
                                            "query": dict(parse_qsl(url.query))})
    for n, other in enumerate(others):
        assert other.wait(budget, 30) == (200, {"pid": pid, "path": "/ok", "query": {"n": str(n)}})
    # The `tbfast` logger's copy (gunicorn leaves the root logger bare: logging's
    # last-resort handler prints it to stderr), the same dump, once Python runs.
    logged = budget.wait_for(lambda: find_dump(server.log(), context, "harakiri", logged=True),
                             10, "the logger's copy" + server.explain())
    assert logged[0].text == dump.text


def test_gthread_abort_action_kills_the_worker_after_the_dump_and_it_is_respawned(launch,
                                                                                   budget):
    """TBFAST_HARAKIRI_ACTION=abort: the watchdog dumps, then SIGKILLs the worker (as
    uWSGI's harakiri does); the arbiter forks a new one, which serves."""
    server, pid = start_gunicorn(launch, budget, ["--worker-class", "gthread", "--threads", "4",
                                                  "--timeout", "30"],
                                 TBFAST_HARAKIRI=1, TBFAST_HARAKIRI_ACTION="abort")
    rid = request_id()
    stuck = Request(server.socket, "/sleep?s=20", rid)
    assert server.wait_started(budget, rid) == pid
    killed = "Worker (pid:%d) was sent SIGKILL!" % pid
    budget.wait_for(lambda: killed in server.log(), 10, "the worker's SIGKILL" + server.explain())
    log = server.log()
    found = find_dump(log, context_of("/sleep?s=20", rid), "harakiri")
    assert found, "no harakiri dump before the kill" + server.explain()
    dump, thread = found
    assert dump.pid == pid and dump.end <= log_index(log, killed)
    assert thread.frames[:3] == app_frames("sleep", os.path.join(server.directory, "app.py"))
    result = stuck.wait(budget, 10)
    assert isinstance(result, CLOSED_WITHOUT_ANSWER), "the stuck request got %r" % (result,)
    status, body = get(server.socket, "/after", timeout=budget.left(20))
    assert status == 200 and body["pid"] != pid
    assert "Booting worker with pid: %d" % body["pid"] in server.log()
