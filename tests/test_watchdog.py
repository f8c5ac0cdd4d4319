"""The harakiri watchdog: the stuck stack is dumped on time, the GIL held or not,
reported exactly once per expiry, then the action is taken."""

import contextlib
import inspect
import json
import os
import random
import subprocess
import sys
import threading
import time

import pytest

import tbfast
from tbfast import watchdog
from conftest import needs_core


@pytest.fixture
def records(tbfast_log):
    yield tbfast_log
    watchdog.configure(file=False, repeat=10.0)


def line_of(function, text):
    lines, first = inspect.getsourcelines(function)
    return first + [i for i, line in enumerate(lines) if text in line][0]


def stuck_request():
    tbfast.set_context("GET /slow?id=1")
    try:
        with tbfast.harakiri(0.2):
            time.sleep(0.7)  # the stuck line
    finally:
        tbfast.set_context(None)


def test_expiry_is_dumped_to_the_fd_and_logged_once(records, tmp_path):
    with open(tmp_path / "dumps.json", "wb") as sink:
        watchdog.configure(file=sink, format="json", repeat=10.0)
        worker = threading.Thread(target=stuck_request, name="request-1")
        worker.start()
        worker.join(10)
        logged = records.wait_for(1)
    time.sleep(0.2)
    assert len(records.records) == 1
    document = json.loads((tmp_path / "dumps.json").read_bytes())
    assert document["trigger"] == "harakiri" and logged[0].getMessage().endswith(
        json.dumps(document, separators=(",", ":"), ensure_ascii=False) + "\n") is not None
    thread = [t for t in document["threads"] if t["name"] == "request-1"][0]
    assert thread["context"] == "GET /slow?id=1"
    assert (thread["frames"][0]["function"], thread["frames"][0]["line"]) == (
        "stuck_request", line_of(stuck_request, "the stuck line"))
    if tbfast.HAS_CORE:
        assert 0.2 <= thread["stuck_seconds"] < 0.7
    fields = logged[0].tbfast
    assert fields["thread_name"] == "request-1" and fields["thread_ident"] == worker.ident
    assert fields["pid"] == os.getpid() and 0.2 <= fields["stuck_seconds"] < 0.7


def test_log_action_repeats_with_the_elapsed_time(records):
    watchdog.configure(file=False, repeat=0.25)
    with tbfast.harakiri(0.1):
        time.sleep(0.75)
    stuck = [record.tbfast["stuck_seconds"] for record in records.wait_for(3)]
    assert len(stuck) >= 2 and stuck == sorted(stuck) and stuck[1] - stuck[0] >= 0.2


def test_raise_action_raises_in_the_stuck_thread(records):
    watchdog.configure(file=False, repeat=10.0)
    started = time.monotonic()
    with pytest.raises(tbfast.HarakiriError):
        with tbfast.harakiri(0.2, action="raise"):
            for _ in range(200):
                time.sleep(0.01)
    assert time.monotonic() - started < 2.0  # raised, not finished: 200 sleeps take 2 s


def test_decorator_form(records):
    watchdog.configure(file=False, repeat=10.0)

    @tbfast.harakiri(0.1, action="raise")
    def slow():
        for _ in range(200):
            time.sleep(0.01)

    with pytest.raises(tbfast.HarakiriError):
        slow()
    assert slow.__name__ == "slow"


@needs_core
def test_stuck_while_holding_the_gil_is_dumped_on_time(records, tmp_path):
    """PyDLL's sleep keeps the GIL for 1 s: the dump still says 0.2 s, so it was
    written while the GIL was held."""
    import ctypes
    with open(tmp_path / "dump.txt", "wb") as sink:
        watchdog.configure(file=sink, repeat=10.0)
        with tbfast.harakiri(0.2):
            ctypes.PyDLL(None).sleep(1)
    text = (tmp_path / "dump.txt").read_text()
    heading = [line for line in text.splitlines() if "stuck for" in line]
    assert len(heading) == 1 and '"MainThread"' in heading[0] and "holds the GIL" in heading[0]
    assert float(heading[0].split("stuck for ")[1].split(" s")[0]) < 0.9
    assert records.wait_for(1)[0].tbfast["stuck_seconds"] < 0.9


def test_abort_kills_the_worker_after_the_dump():
    script = ("import time, tbfast\n"
              "tbfast.watchdog.configure(log=False)\n"
              "with tbfast.harakiri(0.2, action='abort'):\n"
              "    time.sleep(10)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert result.returncode == -9
    assert b"trigger=harakiri" in result.stderr and b'line 4 in <module>' in result.stderr


def test_nested_scopes_innermost_wins_and_outer_comes_back(records):
    watchdog.configure(file=False, repeat=10.0)
    with tbfast.harakiri(0.3):
        with tbfast.harakiri(5):
            time.sleep(0.4)  # past the outer deadline, inside the inner: nothing fires
        assert records.records == []
        time.sleep(0.2)  # the outer deadline is armed again, and has passed
    assert len(records.wait_for(1)) == 1


def test_bad_timeouts_and_actions_are_refused():
    for seconds in (-1, 0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive number of seconds"):
            tbfast.harakiri(seconds)
    with pytest.raises(ValueError, match="unknown action 'explode'"):
        tbfast.harakiri(1, action="explode")
    with pytest.raises(ValueError, match="repeat must be a positive"):
        watchdog.configure(repeat=0)
    assert tbfast.harakiri(1).__exit__(None, None, None) is False  # a disarm without an arm


def test_ten_thousand_arms_no_false_firing_every_expiry_once(records):
    """8 threads x 1250 arm/disarm pairs with random deadlines; a few really expire."""
    watchdog.configure(file=False, repeat=10.0)
    expected = {}

    def worker(seed):
        rng = random.Random(seed)
        expired = 0
        for i in range(1250):
            if i % 250 == 7:
                with tbfast.harakiri(0.02):
                    time.sleep(0.3)  # 280 ms for the watchdog to run, even on a loaded machine
                expired += 1
            else:
                with tbfast.harakiri(rng.uniform(0.3, 3.0)):
                    pass
        expected[threading.get_ident()] = expired

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    total = sum(expected.values())
    records.wait_for(total)
    time.sleep(0.3)  # a duplicate or a false firing would arrive meanwhile
    by_thread = {}
    for record in records.records:
        ident = record.tbfast["thread_ident"]
        by_thread[ident] = by_thread.get(ident, 0) + 1
    assert by_thread == expected and total == 8 * 5


def test_one_scope_object_serves_many_threads_and_nests_in_itself(records):
    """Scopes keep no state: one made once (the fast way) is entered by 8 threads at
    once, and inside itself; only the thread that really overstays is reported."""
    watchdog.configure(file=False, repeat=10.0)
    shared = tbfast.harakiri(0.3)
    barrier = threading.Barrier(8, timeout=10)

    def worker(overstay):
        barrier.wait()
        for _ in range(500):
            with shared:
                with shared:
                    pass
        if overstay:
            with shared:
                with tbfast.harakiri(5):  # the inner one holds: nothing fires here
                    time.sleep(0.4)
                time.sleep(0.1)  # the outer one is armed again, and has passed

    threads = [threading.Thread(target=worker, args=(index == 3,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    logged = records.wait_for(1)
    time.sleep(0.4)  # a false firing would arrive meanwhile
    assert [record.tbfast["thread_ident"] for record in records.records] == [threads[3].ident]
    assert len(logged) == 1


def test_nesting_deeper_than_sixteen_is_refused_and_leaves_no_trace(records):
    watchdog.configure(file=False, repeat=10.0)
    with contextlib.ExitStack() as stack:
        for _ in range(16):
            stack.enter_context(tbfast.harakiri(5))
        with pytest.raises(RuntimeError, match="nested more than 16 deep"):
            tbfast.harakiri(5).__enter__()
    with tbfast.harakiri(0.1):  # all 16 were unwound: this one fires, once
        time.sleep(0.4)
    assert len(records.wait_for(1)) == 1


def test_a_scope_used_once_may_be_exited_by_another_thread(records):
    """As a WSGI response closed by the server in another thread: the deadline of the
    thread that entered it is disarmed all the same."""
    watchdog.configure(file=False, repeat=10.0)
    scope = tbfast.harakiri(0.2)
    entered, exited = threading.Event(), threading.Event()

    def request():
        scope.__enter__()
        entered.set()
        exited.wait(10)
        time.sleep(0.4)  # past the deadline, had it stayed armed

    worker = threading.Thread(target=request)
    worker.start()
    assert entered.wait(10)
    assert scope.__exit__(None, None, None) is False
    exited.set()
    worker.join(10)
    assert records.records == []


def test_dump_traceback_later(tmp_path):
    with open(tmp_path / "later.txt", "wb") as sink:
        tbfast.dump_traceback_later(0.1, file=sink)
        time.sleep(0.4)
        tbfast.dump_traceback_later(0.1, file=sink)
        tbfast.cancel_dump_traceback_later()
        time.sleep(0.3)
    text = (tmp_path / "later.txt").read_text()
    assert text.count("tbfast dump: pid=") == 1 and "trigger=timeout" in text
    assert "in test_dump_traceback_later" in text
    script = ("import time, tbfast\n"
              "tbfast.dump_traceback_later(0.1, exit=True)\n"
              "time.sleep(10)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert result.returncode == 1 and b"trigger=timeout" in result.stderr


UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")  # scripts/sanitize


@pytest.mark.skipif(UNDER_ASAN, reason=(
    "ASan's allocator (GCC 12's libsanitizer) has no fork handlers: a fork while the "
    "threads configure() just started are inside it leaves the child's allocator lock "
    "held, and the child's first thread hangs in AsanThread::Init (seen with gdb; 5 of 25 "
    "runs); glibc's malloc, which production runs, locks itself around fork"))
def test_watchdog_started_before_fork_fires_in_the_child():
    """A prefork server (uWSGI's master, gunicorn --preload) configures before it
    forks; the workers must still get a watchdog of their own."""
    script = ("import os, sys, time, tbfast\n"
              "tbfast.watchdog.configure(file=sys.stdout, log=False)\n"
              "with tbfast.harakiri(5):\n"
              "    pass\n"
              "pid = os.fork()\n"
              "if pid == 0:\n"
              "    with tbfast.harakiri(0.2):\n"
              "        time.sleep(0.6)  # stuck in the child\n"
              "    sys.stdout.flush()\n"
              "    os._exit(0)\n"
              "os.waitpid(pid, 0)\n"
              "print('parent', os.getpid())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    dumps = result.stdout.decode().split("tbfast dump: ")[1:]
    parent = int(result.stdout.split(b"parent ")[1])
    assert len(dumps) == 1 and "trigger=harakiri" in dumps[0]
    assert "pid=%d " % parent not in dumps[0] and 'line 8 in <module>' in dumps[0]
