"""tbfast.sentry with the real sentry-sdk, against a loopback HTTP server that receives
its envelopes (tests/shipkit.py): one event per dump, whose threads,
frames, stuck-thread flag, tags and fingerprint are checked against the truth (the
stuck thread's stack from traceback.extract_stack while it is stuck, and this
file's source)."""

import linecache
import os
import signal
import threading

import pytest

import tbfast
from conftest import needs_core, truth

sentry_sdk = pytest.importorskip("sentry_sdk")
import tbfast.sentry  # noqa: E402 - needs sentry_sdk
import tbfast.spool  # noqa: E402
from shipkit import Receiver, StuckRequest, line_of, shipping  # noqa: E402,F401 - a fixture

pytestmark = needs_core  # the spool, and so the sending of harakiri dumps, needs the core


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()


def event_of(receiver, seconds=10):
    events = receiver.wait_for(lambda events: len(events) >= 1, seconds)
    assert len(events) == 1, "%d events" % len(events)
    return events[0]


def frames_of(thread):
    return [(frame["abs_path"], frame["lineno"], frame["function"])
            for frame in thread["stacktrace"]["frames"]]


def test_harakiri_dump_is_one_event_with_threads_tags_and_fingerprint(receiver, shipping,
                                                                      tbfast_log, tmp_path):
    tbfast.enable_tracebacker(str(tmp_path / "tb."), worker_id=3)
    tbfast.sentry.setup(receiver.dsn, spool_dir=shipping, with_locals=True)
    request = StuckRequest("GET /orders/7 id=abc")
    # Still stuck when the event is made: its locals can be read.
    event = request.stuck_until_logged(tbfast_log, then=lambda: event_of(receiver))

    threads = event["threads"]["values"]
    stuck = [thread for thread in threads if thread["id"] == request.ident]
    assert len(stuck) == 1 and stuck[0]["name"] == "request-9"
    assert [thread["crashed"] for thread in threads] == [thread is stuck[0] for thread in threads]
    assert not any(thread["current"] for thread in threads)  # the watchdog dumped: no Python
    # Oldest first, as Sentry wants them: the truth reversed.
    assert frames_of(stuck[0]) == [frame[:3] for frame in reversed(request.truth)]
    innermost_mine = stuck[0]["stacktrace"]["frames"][-3]
    stuck_line = line_of(StuckRequest.wait_here, "the stuck line")
    source = linecache.getlines(StuckRequest.wait_here.__code__.co_filename)
    assert (innermost_mine["function"], innermost_mine["lineno"]) == ("wait_here", stuck_line)
    assert innermost_mine["context_line"] == source[stuck_line - 1].rstrip("\n")
    assert innermost_mine["pre_context"] == [line.rstrip("\n")
                                             for line in source[stuck_line - 6:stuck_line - 1]]
    assert innermost_mine["post_context"] == [line.rstrip("\n")
                                              for line in source[stuck_line:stuck_line + 5]]
    assert innermost_mine["vars"]["order_id"] == "7"
    assert innermost_mine["vars"]["secret_token"] == "'********'"
    assert innermost_mine["in_app"] and not stuck[0]["stacktrace"]["frames"][-1]["in_app"]
    for thread in threads:  # every thread has its stack
        assert thread["stacktrace"]["frames"], thread["name"]

    assert event["tags"] == {"tbfast.trigger": "harakiri", "tbfast.pid": str(os.getpid()),
                             "tbfast.worker": "3", "tbfast.thread": "request-9",
                             "tbfast.context": "GET /orders/7 id=abc"}
    assert event["fingerprint"] == ["tbfast-harakiri"] + [
        "%s:%s" % (function, file) for file, line, function, _ in request.truth[:5]]
    assert event["level"] == "error" and event["logger"] == "tbfast"
    assert event["message"].startswith("harakiri: thread request-9 stuck for ")
    # Sent, so the spool file is gone.
    assert receiver.wait_for(lambda _: not os.listdir(shipping), 5) and not os.listdir(shipping)


def test_repeats_from_the_same_place_share_the_fingerprint(receiver, shipping, tbfast_log):
    tbfast.sentry.setup(receiver.dsn, spool_dir=shipping)
    for count in (1, 2):
        request = StuckRequest("GET /orders/%d" % count)
        request.stuck_until_logged(tbfast_log)
    events = receiver.wait_for(lambda events: len(events) >= 2, 10)
    assert len(events) == 2 and events[0]["event_id"] != events[1]["event_id"]
    assert events[0]["fingerprint"] == events[1]["fingerprint"]
    assert [event["tags"]["tbfast.context"] for event in events] == ["GET /orders/1",
                                                                    "GET /orders/2"]


def test_signal_dump_marks_the_signalled_thread_current_and_crashed(receiver, shipping,
                                                                   tbfast_log):
    tbfast.sentry.setup(receiver.dsn, spool_dir=shipping)
    tbfast.register(signal.SIGUSR1, False, format="json", log=True)
    expected = truth(threading.get_ident())[1:]
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
    event = event_of(receiver)
    crashed = [thread for thread in event["threads"]["values"] if thread["crashed"]]
    assert len(crashed) == 1 and crashed[0]["current"] and crashed[0]["id"] == threading.get_ident()
    file, line, function, _ = expected[0]
    assert frames_of(crashed[0]) == [frame[:3] for frame in reversed(expected[1:])] + [
        (file, line + 1, function)]
    assert event["tags"]["tbfast.trigger"] == "signal:SIGUSR1" and event["level"] == "warning"
    assert event["fingerprint"][0] == "tbfast-signal"


def test_capture_on_demand_returns_the_event_id_sent(receiver, shipping):
    tbfast.sentry.setup(receiver.dsn, spool_dir=shipping)
    tbfast.set_context("manual check")
    try:
        event_id = tbfast.sentry.capture()
    finally:
        tbfast.set_context(None)
    event = event_of(receiver)
    assert event["event_id"] == event_id
    current = [thread for thread in event["threads"]["values"] if thread["current"]]
    assert len(current) == 1 and current[0]["crashed"]
    assert current[0]["stacktrace"]["frames"][-1]["function"] == "capture"
    assert current[0]["stacktrace"]["frames"][-2]["function"] == (
        "test_capture_on_demand_returns_the_event_id_sent")
    assert event["tags"]["tbfast.context"] == "manual check"


def test_a_crash_spooled_by_a_dead_process_is_one_fatal_event_naming_the_signal(receiver, shipping):
    import subprocess
    import sys
    crash = ("import ctypes, tbfast, tbfast.spool\n"
             "tbfast.spool.configure(%r)\n"
             "tbfast.enable(False)\n"
             "tbfast.set_context('GET /crash')\n"
             "def crash_here():\n"
             "    ctypes.string_at(0)\n"
             "crash_here()\n" % str(shipping))
    result = subprocess.run([sys.executable, "-c", crash], capture_output=True, timeout=60)
    assert result.returncode == -signal.SIGSEGV and result.stderr == b"", result.stderr
    tbfast.sentry.setup(receiver.dsn, spool_dir=shipping)
    event = event_of(receiver)
    assert event["level"] == "fatal" and event["tags"]["tbfast.trigger"] == "fatal:SIGSEGV"
    assert event["tags"]["tbfast.context"] == "GET /crash"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "SIGSEGV" and exception["mechanism"]["type"] == "signalhandler"
    assert exception["mechanism"]["meta"]["signal"] == {"number": signal.SIGSEGV, "name": "SIGSEGV"}
    (crashed,) = [thread for thread in event["threads"]["values"] if thread["crashed"]]
    assert crashed["name"] == "MainThread" and exception["thread_id"] == crashed["id"]
    functions = [frame["function"] for frame in crashed["stacktrace"]["frames"]]
    assert functions[-3:] == ["<module>", "crash_here", "string_at"]  # oldest first
