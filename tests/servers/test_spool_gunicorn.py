"""Nothing lost, against a real gunicorn: a sync worker stuck in a C loop that holds
the GIL is killed by tbfast's harakiri (action abort) before any of its Python runs
again; the dump it spooled GIL-free reaches a loopback Sentry receiver (the real
sentry-sdk) from the worker gunicorn forks in its place.

The truth: serverkit.APP's "# stuck: sum" and "# calls: sum" lines, the
middleware's line from inspect, the killed worker's pid and the request's fresh
X-Request-Id."""

import os
import sys

import pytest

from serverkit import (  # noqa: F401 - budget and launch are fixtures
    CLOSED_WITHOUT_ANSWER, Request, app_frames, budget, context_of, get, launch,
    no_control_socket, request_id)
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
    import tbfast.sentry
    tbfast.sentry.setup(os.environ["TEST_SENTRY_DSN"], spool_dir=os.environ["TEST_SPOOL"])
'''


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def test_dump_of_a_worker_killed_while_holding_the_gil_arrives_from_the_respawned_worker(
        launch, budget, receiver, tmp_path):
    spool = tmp_path / "spool"
    config = tmp_path / "gunicorn_conf.py"
    config.write_text(CONFIG)
    server = launch([sys.executable, "-m", "gunicorn", "-c", str(config), "--bind",
                     "unix:{socket}", "--workers", "1", "--worker-class", "sync",
                     "--timeout", "30", "--error-logfile", "-", *no_control_socket(),
                     "app:application"],
                    worker_env(TBFAST_HARAKIRI=1, TBFAST_HARAKIRI_ACTION="abort",
                               TEST_SENTRY_DSN=receiver.dsn, TEST_SPOOL=spool))
    pid = server.wait_ready(budget)["pid"]
    rid = request_id()
    stuck = Request(server.socket, "/sum", rid)
    assert server.wait_started(budget, rid) == pid
    killed = "Worker (pid:%d) was sent SIGKILL!" % pid
    budget.wait_for(lambda: killed in server.log(), 15, "the worker's SIGKILL" + server.explain())
    assert isinstance(stuck.wait(budget, 10), CLOSED_WITHOUT_ANSWER)

    events = receiver.wait_for(lambda events: len(events) >= 1, budget.left(20))
    assert len(events) == 1, "%d events%s" % (len(events), server.explain())
    event = events[0]
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
