"""Nothing lost, against a real gunicorn: a worker that dies leaves its dump in the
spool, GIL-free, and it reaches a loopback Sentry receiver (the real sentry-sdk)
from the worker gunicorn forks in its place.  Two ways to die: a sync worker stuck
in a C loop that holds the GIL, killed by tbfast's harakiri (action abort) before
any of its Python runs again; and one that reads NULL through ctypes and dies by
SIGSEGV, which tbfast.enable() also writes to the log, once.

The truth: serverkit.APP's "# stuck:" and "# calls:" lines, the middleware's and
ctypes' lines from inspect, the dead worker's pid and the request's fresh
X-Request-Id."""

import ctypes
import inspect
import os
import signal
import sys

import pytest

from serverkit import (  # noqa: F401 - budget and launch are fixtures
    CLOSED_WITHOUT_ANSWER, Request, app_frames, app_line, budget, context_of, get, launch,
    middleware_frame, no_control_socket, request_id)
from workerkit import worker_env

pytestmark = pytest.mark.servers
pytest.importorskip("gunicorn")
pytest.importorskip("sentry_sdk")
from shipkit import Receiver  # noqa: E402 - needs sentry_sdk's absence checked first

CONFIG = '''
import os
from tbfast.gunicorn import post_worker_init as tbfast_post_worker_init


def post_worker_init(worker):
    tbfast_post_worker_init(worker)
    import tbfast
    import tbfast.sentry
    tbfast.enable()
    tbfast.sentry.setup(os.environ["TEST_SENTRY_DSN"], spool_dir=os.environ["TEST_SPOOL"])
'''


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def start(launch, tmp_path, receiver, spool, **env):
    """One sync worker under gunicorn, set up by CONFIG, spooling to `spool`."""
    config = tmp_path / "gunicorn_conf.py"
    config.write_text(CONFIG)
    return launch([sys.executable, "-m", "gunicorn", "-c", str(config), "--bind",
                   "unix:{socket}", "--workers", "1", "--worker-class", "sync",
                   "--timeout", "30", "--error-logfile", "-", *no_control_socket(),
                   "app:application"],
                  worker_env(TEST_SENTRY_DSN=receiver.dsn, TEST_SPOOL=spool, **env))


def request_that_kills(server, budget, path, signal_name):
    """(pid, X-Request-Id) of the worker that `path` makes die by `signal_name`."""
    pid = server.wait_ready(budget)["pid"]
    rid = request_id()
    request = Request(server.socket, path, rid)
    assert server.wait_started(budget, rid) == pid
    died = "Worker (pid:%d) was sent %s!" % (pid, signal_name)
    budget.wait_for(lambda: died in server.log(), 15, "the worker's " + signal_name + server.explain())
    assert isinstance(request.wait(budget, 10), CLOSED_WITHOUT_ANSWER)
    return pid, rid


def the_event(receiver, budget, server):
    """The one event the respawned worker sends."""
    events = receiver.wait_for(lambda events: len(events) >= 1, budget.left(20))
    assert len(events) == 1, "%d events%s" % (len(events), server.explain())
    return events[0]


def test_dump_of_a_worker_killed_while_holding_the_gil_arrives_from_the_respawned_worker(
        launch, budget, receiver, tmp_path):
    spool = tmp_path / "spool"
    server = start(launch, tmp_path, receiver, spool, TBFAST_HARAKIRI=1,
                   TBFAST_HARAKIRI_ACTION="abort")
    pid, rid = request_that_kills(server, budget, "/sum", "SIGKILL")

    event = the_event(receiver, budget, server)
    assert event["tags"]["tbfast.pid"] == str(pid) and event["tags"]["tbfast.trigger"] == "harakiri"
    assert event["tags"]["tbfast.context"] == context_of("/sum", rid)
    crashed = [thread for thread in event["threads"]["values"] if thread["crashed"]]
    assert len(crashed) == 1 and crashed[0]["name"] == "MainThread"
    frames = [(frame["abs_path"], frame["lineno"], frame["function"])
              for frame in crashed[0]["stacktrace"]["frames"]]
    expected = app_frames("sum", os.path.join(server.directory, "app.py"))
    assert frames[-len(expected):] == expected[::-1]  # Sentry's order: oldest first
    assert event["fingerprint"][:3] == ["tbfast-harakiri"] + [
        "%s:%s" % (function, file) for file, line, function in expected[:2]]

    status, body = get(server.socket, "/after", timeout=budget.left(20))
    assert status == 200 and body["pid"] != pid
    # The respawned worker logged it too, and removed the file once Sentry had it.
    assert "in pid %d, now gone (from the spool)" % pid in server.log()
    budget.wait_for(lambda: not os.listdir(spool), 10, "the spool to empty")


def string_at_frame():
    lines, first = inspect.getsourcelines(ctypes.string_at)
    line = first + next(index for index, text in enumerate(lines) if "return _string_at(" in text)
    return inspect.getsourcefile(ctypes.string_at), line, "string_at"


def test_a_worker_that_segfaults_is_dumped_once_and_reaches_sentry_from_its_successor(
        launch, budget, receiver, tmp_path):
    spool = tmp_path / "spool"
    # A deadline far off: its middleware gives each request its context line.
    server = start(launch, tmp_path, receiver, spool, TBFAST_HARAKIRI=60)
    pid, rid = request_that_kills(server, budget, "/crash", "SIGSEGV")

    app = os.path.join(server.directory, "app.py")
    expected = [string_at_frame(), (app, app_line("stuck: crash"), "crash_in_c"),
                (app, app_line("calls: crash"), "raw_application"), middleware_frame()]
    log = server.log()
    assert log.count("trigger=fatal:SIGSEGV") == 1, server.explain()
    dump = log[log.index("tbfast dump: pid=%d " % pid):]
    assert "  Context: %s\n" % context_of("/crash", rid) in dump
    for file, line, function in expected:
        assert '  File "%s", line %d in %s\n' % (file, line, function) in dump

    event = the_event(receiver, budget, server)
    assert event["level"] == "fatal" and event["tags"]["tbfast.pid"] == str(pid)
    assert event["tags"]["tbfast.trigger"] == "fatal:SIGSEGV"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "SIGSEGV"
    assert exception["mechanism"]["type"] == "signalhandler"
    assert exception["mechanism"]["handled"] is False
    assert exception["mechanism"]["meta"]["signal"] == {"number": signal.SIGSEGV, "name": "SIGSEGV"}
    crashed = [thread for thread in event["threads"]["values"] if thread["crashed"]]
    assert len(crashed) == 1 and crashed[0]["name"] == "MainThread"
    assert exception["thread_id"] == crashed[0]["id"]
    frames = [(frame["abs_path"], frame["lineno"], frame["function"])
              for frame in crashed[0]["stacktrace"]["frames"]]
    assert frames[-len(expected):] == expected[::-1]  # Sentry's order: oldest first

    status, body = get(server.socket, "/after", timeout=budget.left(20))
    assert status == 200 and body["pid"] != pid
    assert "in pid %d, now gone (from the spool)" % pid in server.log()
    budget.wait_for(lambda: not os.listdir(spool), 10, "the spool to empty")
