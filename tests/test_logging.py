"""Every harakiri or signal dump reaches the `tbfast` logger as one record, with its
structured fields as record attributes; format="json" makes the message one line
of JSON.  The truth: the stuck thread's stack from traceback.extract_stack while it
is stuck, its context, its ident and this pid."""

import json
import logging
import os
import signal
import threading

import pytest

import tbfast
from tbfast import watchdog
from conftest import needs_core, truth
from shipkit import StuckRequest, line_of

FIELDS = ("pid", "worker", "trigger", "thread", "thread_ident", "context", "stuck_seconds",
          "spooled")


@pytest.fixture
def records(tbfast_log):
    yield tbfast_log
    tbfast.unregister(signal.SIGUSR1)
    watchdog.configure(file=False, repeat=10.0)


def test_harakiri_dump_is_one_json_record_with_the_documented_fields(records):
    watchdog.configure(file=False, format="json", repeat=10.0)
    request = StuckRequest("GET /orders/7 id=f00")
    request.stuck_until_logged(records)
    logged = records.records
    assert len(logged) == 1
    record = logged[0]
    message = record.getMessage()
    assert "\n" not in message
    line = json.loads(message)
    assert set(FIELDS) <= set(line) and set(line) - set(FIELDS) == {"message", "dump"}
    for field in FIELDS:
        assert getattr(record, "tbfast_" + field) == line[field], field
    assert (line["pid"], line["trigger"], line["thread"], line["thread_ident"], line["context"],
            line["spooled"]) == (os.getpid(), "harakiri", "request-9", request.ident,
                                 "GET /orders/7 id=f00", None)
    assert 0.2 <= line["stuck_seconds"] < 10 and record.levelno == logging.ERROR
    assert line["message"].startswith("harakiri: thread request-9 (%#x) stuck for " % request.ident)
    stuck = [thread for thread in line["dump"]["threads"] if thread["ident"] == request.ident]
    assert len(stuck) == 1 and stuck[0]["context"] == "GET /orders/7 id=f00"
    assert [(f["file"], f["line"], f["function"]) for f in stuck[0]["frames"]] == [
        frame[:3] for frame in request.truth]
    assert stuck[0]["frames"][2]["line"] == line_of(StuckRequest.wait_here, "the stuck line")


def test_text_record_has_the_same_fields_for_formatters(records):
    watchdog.configure(file=False, format="text", repeat=10.0)
    request = StuckRequest("POST /pay id=abc")
    request.stuck_until_logged(records)
    record = records.records[0]
    summary, _, dump = record.getMessage().partition("\n")
    assert summary.startswith("harakiri: thread request-9 (%#x) stuck for " % request.ident)
    assert dump.startswith("tbfast dump: pid=%d " % os.getpid())
    formatter = logging.Formatter("%(tbfast_pid)s %(tbfast_thread)s %(tbfast_context)s "
                                  "%(tbfast_trigger)s")
    assert formatter.format(record).startswith(
        "%d request-9 POST /pay id=abc harakiri" % os.getpid())
    assert record.tbfast == dict({field: getattr(record, "tbfast_" + field) for field in FIELDS},
                                 thread_name="request-9")


@needs_core  # the fallback's Python handler shows its own frame innermost
def test_signal_dump_with_log_is_one_json_record(records):
    watchdog.configure(file=False, format="json", repeat=10.0)
    tbfast.register(signal.SIGUSR1, False, format="json", log=True)
    tbfast.set_context("cron job 3")
    expected = truth(threading.get_ident())[1:]  # from here out, truth() itself left out
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # dumped right here, in C
    tbfast.set_context(None)
    record = records.wait_for(1)[0]
    line = json.loads(record.getMessage())
    assert (line["trigger"], line["thread"], line["thread_ident"], line["context"],
            line["stuck_seconds"]) == ("signal:SIGUSR1", "MainThread", threading.get_ident(),
                                       "cron job 3", None)
    me = [thread for thread in line["dump"]["threads"] if thread["current"]]
    assert len(me) == 1 and me[0]["ident"] == threading.get_ident()
    frames = [(frame["file"], frame["line"], frame["function"]) for frame in me[0]["frames"]]
    assert frames[1:] == [frame[:3] for frame in expected[1:]]
    file, line, function, _ = expected[0]
    assert frames[0] == (file, line + 1, function)  # the pthread_kill line, under truth()'s


def test_text_signal_record_names_its_signal_and_context(records):
    watchdog.configure(file=False, repeat=10.0)
    tbfast.register(signal.SIGUSR1, False, log=True)
    tbfast.set_context("cron job 4")
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
    tbfast.set_context(None)
    record = records.wait_for(1)[0]
    assert (record.tbfast_trigger, record.tbfast_thread, record.tbfast_context) == (
        "signal:SIGUSR1", "MainThread", "cron job 4")
    summary, _, dump = record.getMessage().partition("\n")
    assert summary == "signal:SIGUSR1: dump from thread MainThread (%#x)" % threading.get_ident()
    assert dump.startswith("tbfast dump: pid=%d " % os.getpid())
    assert "trigger=signal:SIGUSR1 " in dump.splitlines()[0]


def test_signal_dump_without_log_makes_no_record(records, tmp_path):
    with open(tmp_path / "dump", "wb") as sink:
        tbfast.register(signal.SIGUSR1, sink)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
    assert b"trigger=signal:SIGUSR1" in (tmp_path / "dump").read_bytes()
    request = StuckRequest("GET /after")  # a record that comes after any the signal made
    request.stuck_until_logged(records)
    assert len(records.records) == 1
    assert records.records[0].tbfast_trigger == "harakiri"
