"""Nothing lost: dumps spooled GIL-free survive the process, and reach Sentry (the real
sentry-sdk, a loopback receiver) from the next process; bad input (a bad DSN, a
receiver that is down or slow, a full spool) gets one clear log line, the worker
goes on, and every dump that found spool room arrives."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

import tbfast
from tbfast import watchdog
from conftest import needs_core

sentry_sdk = pytest.importorskip("sentry_sdk")
import tbfast.sentry  # noqa: E402 - needs sentry_sdk
import tbfast.spool  # noqa: E402
from shipkit import Receiver, StuckRequest, shipping  # noqa: E402,F401 - a fixture

pytestmark = needs_core

# A worker stuck in a C loop that holds the GIL: its harakiri kills it before any
# Python of its own runs again.
KILLED_WORKER = textwrap.dedent('''
    import itertools, sys
    import tbfast, tbfast.spool, tbfast.watchdog
    tbfast.watchdog.configure(file=sys.stderr)
    tbfast.spool.configure(sys.argv[1])
    tbfast.set_context("GET /sum id=dead")

    def stuck_in_sum():
        with tbfast.harakiri(0.3, action="abort"):
            sum(itertools.repeat(1, 10 ** 10))  # stuck: sum

    stuck_in_sum()
''')


@pytest.fixture
def receiver():
    server = Receiver(listening=False)
    yield server
    server.close()


def messages(records, text, wait=0):
    """The logger's messages that hold `text`, waiting `wait` seconds at most for one."""
    deadline = time.monotonic() + wait
    while True:
        found = [record.getMessage() for record in records.records
                 if text in record.getMessage()]
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.01)


def spooled(directory):
    return sorted(name for name in os.listdir(directory) if name.startswith("dump."))


def killed_worker(script, spool):
    """Runs KILLED_WORKER to its harakiri SIGKILL; the Popen, once it is dead."""
    script.write_text(KILLED_WORKER)
    worker = subprocess.Popen([sys.executable, str(script), str(spool)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=dict(os.environ, PYTHONSAFEPATH="1"))
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == -9, stderr.decode()
    assert b"trigger=harakiri" in stderr  # the fd dump, written before the kill
    files = spooled(spool)
    assert len(files) == 1 and files[0].startswith("dump.%d." % worker.pid)
    return worker


def test_dump_of_a_worker_killed_while_holding_the_gil_reaches_sentry_from_the_next_process(
        shipping, receiver, tbfast_log, tmp_path):
    script = tmp_path / "worker.py"
    worker = killed_worker(script, shipping)
    assert not [name for name in os.listdir(shipping) if name.startswith("tmp.")]
    # A half-written file of another dead process with nothing readable is kept aside.
    (shipping / "tmp.999999999.1").write_bytes(b'{"tbfast": 1, "pid": 9')

    receiver.listen()
    tbfast.sentry.setup(receiver.dsn, spool_dir=shipping)  # the next process
    events = receiver.wait_for(lambda events: len(events) >= 1, 10)
    assert len(events) == 1
    event = events[0]
    crashed = [thread for thread in event["threads"]["values"] if thread["crashed"]]
    assert len(crashed) == 1 and crashed[0]["name"] == "MainThread"
    frames = crashed[0]["stacktrace"]["frames"]
    line = KILLED_WORKER.splitlines().index(
        "        sum(itertools.repeat(1, 10 ** 10))  # stuck: sum") + 1
    assert [(frame["abs_path"], frame["lineno"], frame["function"]) for frame in frames[-2:]] == [
        (str(script), line + 2, "<module>"), (str(script), line, "stuck_in_sum")]
    assert frames[-1]["context_line"] == "        sum(itertools.repeat(1, 10 ** 10))  # stuck: sum"
    assert event["tags"]["tbfast.pid"] == str(worker.pid)
    assert event["tags"]["tbfast.context"] == "GET /sum id=dead"
    logged = [record for record in tbfast_log.wait_for(1)
              if getattr(record, "tbfast_spooled", None)]
    assert len(logged) == 1 and logged[0].tbfast_pid == worker.pid
    line = json.loads(logged[0].getMessage())
    assert line["message"].endswith("in pid %d, now gone (from the spool)" % worker.pid)
    assert line["context"] == "GET /sum id=dead" and line["thread"] == "MainThread"
    assert receiver.wait_for(lambda _: os.listdir(shipping) == ["tmp.999999999.1.bad"], 5)
    assert os.listdir(shipping) == ["tmp.999999999.1.bad"]


def test_bad_dsn_and_bad_settings_are_clear_errors(shipping, tbfast_log):
    # A bad DSN: one error line, and the worker goes on, its dumps spooled and logged.
    assert tbfast.sentry.setup("not a dsn", spool_dir=shipping) is None
    assert tbfast.spool.current().directory == str(shipping)
    assert any(record.getMessage().startswith("tbfast.sentry: bad DSN 'not a dsn'")
               for record in tbfast_log.records)
    request = StuckRequest("GET /after-bad-dsn")  # dumps are still taken and logged
    request.stuck_until_logged(tbfast_log)
    assert request.finished and request.logged(tbfast_log)
    tbfast.spool.configure(None)
    shutil.rmtree(shipping)
    with pytest.raises(ValueError, match="tbfast.sentry: no DSN"):
        tbfast.sentry.setup(spool_dir=shipping)
    with pytest.raises(RuntimeError, match="call tbfast.sentry.setup"):
        tbfast.sentry.capture()
    with pytest.raises(ValueError, match="max_count must be a positive int"):
        tbfast.spool.configure(shipping, max_count=0)
    shipping.mkdir(mode=0o777)
    os.chmod(shipping, 0o777)  # whatever the umask
    with pytest.raises(PermissionError, match="writable by it alone"):
        tbfast.spool.configure(shipping)
    assert tbfast.spool.current() is None


def test_receiver_down_keeps_the_dump_until_it_is_up(shipping, receiver, tbfast_log):
    tbfast.sentry.setup(receiver.dsn, spool_dir=shipping, timeout=5)
    request = StuckRequest("GET /down")
    request.stuck_until_logged(tbfast_log)
    assert request.finished  # the worker went on
    failures = messages(tbfast_log, "not sent to Sentry", wait=10)
    assert failures and "it stays in the spool for a later try" in failures[0]
    assert len(spooled(shipping)) == 1

    receiver.listen()
    events = receiver.wait_for(lambda events: len(events) >= 1, 10)
    assert len(events) == 1 and events[0]["tags"]["tbfast.context"] == "GET /down"
    assert receiver.wait_for(lambda _: not spooled(shipping), 5) is not None
    assert spooled(shipping) == []


def test_slow_receiver_bounds_the_wait_and_the_resend_keeps_the_event_id(shipping, receiver,
                                                                        tbfast_log):
    receiver.delay = 2.0
    receiver.listen()
    tbfast.sentry.setup(receiver.dsn, spool_dir=shipping, timeout=0.5)
    request = StuckRequest("GET /slow")
    request.stuck_until_logged(tbfast_log)
    assert request.finished
    assert messages(tbfast_log, "not sent to Sentry (no answer within 0.5 s)", wait=10)
    assert len(spooled(shipping)) == 1  # kept while unanswered
    receiver.delay = 0.0
    assert receiver.wait_for(lambda _: not spooled(shipping), 15) is not None
    assert spooled(shipping) == []
    events = receiver.events()
    assert events and len({event["event_id"] for event in events}) == 1  # Sentry keeps one


def test_full_spool_says_so_and_what_had_room_arrives(shipping, receiver, tbfast_log, tmp_path):
    with open(tmp_path / "fd-dumps", "wb") as sink:
        watchdog.configure(file=sink, format="json", repeat=10.0)
        tbfast.sentry.setup(receiver.dsn, spool_dir=shipping, spool_max=2, timeout=5)
        for number in range(3):
            StuckRequest("GET /full/%d" % number).stuck_until_logged(tbfast_log)
    assert len(spooled(shipping)) == 2
    assert (tmp_path / "fd-dumps").read_bytes().count(
        b"tbfast: spool full, this dump is not spooled\n") == 1
    full = messages(tbfast_log, "tbfast: dump not spooled: ")
    assert len(full) == 1 and "is full (max_count=2)" in full[0]

    receiver.listen()
    assert receiver.wait_for(lambda _: not spooled(shipping), 10) is not None
    assert spooled(shipping) == []
    # The third was sent at once from its JSON log copy, and arrives only if the
    # receiver came up before that one try.
    contexts = [event["tags"]["tbfast.context"] for event in receiver.events()]
    assert {"GET /full/0", "GET /full/1"} <= set(contexts) <= {
        "GET /full/0", "GET /full/1", "GET /full/2"}


def test_dump_of_a_dead_process_waits_for_a_receiver_that_is_down(shipping, receiver,
                                                                 tbfast_log, tmp_path):
    worker = killed_worker(tmp_path / "worker.py", shipping)
    tbfast.sentry.setup(receiver.dsn, spool_dir=shipping, timeout=5)
    assert messages(tbfast_log, "not sent to Sentry", wait=10)
    assert len(spooled(shipping)) == 1  # given back under its own name
    receiver.listen()
    events = receiver.wait_for(lambda events: len(events) >= 1, 10)
    assert [event["tags"]["tbfast.pid"] for event in events] == [str(worker.pid)]
    assert receiver.wait_for(lambda _: not os.listdir(shipping), 5) is not None
    assert os.listdir(shipping) == []
    gone = messages(tbfast_log, "now gone (from the spool)")
    assert len(gone) == 1  # logged once, however many tries the send took


# A worker with three threads, killed while it writes its spool file: it prints its
# whole JSON dump, writes the first `cut` bytes of it (a negative cut: that many
# bytes from the end) as its spool file, then SIGKILLs itself.
CUT_SHORT_WORKER = textwrap.dedent('''
    import os, signal, sys, threading, time
    import tbfast
    spool, cut = sys.argv[1], int(sys.argv[2])
    parked = threading.Event()
    for number in range(2):
        threading.Thread(target=parked.wait, name="worker-%d" % number, daemon=True).start()
    dump = tbfast.format_traceback(format="json").encode()
    sys.stdout.buffer.write(dump)
    sys.stdout.flush()
    with open(os.path.join(spool, "tmp.%d.%d" % (os.getpid(), time.time_ns())), "wb") as file:
        file.write(dump[:cut])
    os.kill(os.getpid(), signal.SIGKILL)
''')


def cut_short_worker(tmp_path, spool, cut):
    """The dump the worker printed (bytes), and the path of the spool file it left."""
    script = tmp_path / "cut_short.py"
    script.write_text(CUT_SHORT_WORKER)
    spool.mkdir(mode=0o700, exist_ok=True)
    worker = subprocess.run([sys.executable, str(script), str(spool), str(cut)],
                            capture_output=True, timeout=60)
    assert worker.returncode == -9, worker.stderr.decode()
    (name,) = os.listdir(spool)
    return worker.stdout, spool / name


def test_a_spool_file_cut_short_is_logged_and_its_whole_threads_shipped(shipping, tbfast_log,
                                                                        tmp_path):
    printed, left = cut_short_worker(tmp_path, shipping, -60)  # inside the last thread
    whole = json.loads(printed)
    tbfast.spool.configure(shipping)
    (warning,) = messages(tbfast_log, "was cut short", wait=10)
    assert "tbfast: spool file %s was cut short" % left in warning
    assert "its header and 2 whole threads are shipped" in warning
    assert [record.levelname for record in tbfast_log.records
            if "was cut short" in record.getMessage()] == ["WARNING"]
    (shipped,) = messages(tbfast_log, "now gone (from the spool)", wait=10)
    document = json.loads(shipped)["dump"]
    assert document["threads"] == whole["threads"][:2]
    assert {key: document[key] for key in ("pid", "time", "trigger")} == {
        key: whole[key] for key in ("pid", "time", "trigger")}
    assert document["truncated"] == {"cut_short": len(printed) - 60}
    deadline = time.monotonic() + 10  # shipped to no sender: removed
    while os.listdir(shipping) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.listdir(shipping) == []


def test_a_spool_file_with_nothing_readable_is_logged_and_kept_aside(shipping, tbfast_log,
                                                                     tmp_path):
    _, left = cut_short_worker(tmp_path, shipping, 10)  # inside the header
    tbfast.spool.configure(shipping)
    (warning,) = messages(tbfast_log, "was cut short", wait=10)
    assert "tbfast: spool file %s was cut short" % left in warning
    assert "nothing readable in its 10 bytes; kept as %s.bad" % left in warning
    assert os.listdir(shipping) == [left.name + ".bad"]


def test_a_spool_file_whole_but_never_renamed_is_logged_and_shipped(shipping, tbfast_log,
                                                                    tmp_path):
    printed, left = cut_short_worker(tmp_path, shipping, 1 << 30)  # all of it
    tbfast.spool.configure(shipping)
    (warning,) = messages(tbfast_log, "was left unnamed", wait=10)
    assert "tbfast: spool file %s is whole but was left unnamed" % left in warning
    (shipped,) = messages(tbfast_log, "now gone (from the spool)", wait=10)
    assert json.loads(shipped)["dump"] == json.loads(printed)
