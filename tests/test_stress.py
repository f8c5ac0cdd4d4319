"""GIL-free dumps by the thousand under load, and signals by the thousand,
re-entrant, during socket dumps and from several processes into one pipe.  Every dump is parsed whole (tests/stress_worker.py says what well
formed means); every load runs in a subprocess under a hard timeout.

TBFAST_SOAK=N raises the stress test's 10,000 dumps to N (scripts/soak).  Each
test prints one `figures:` line (pytest -s shows them; TBFAST_FIGURES=FILE also
appends them to FILE); docs/robustness.md says what each one counts."""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from conftest import needs_core
from stress_worker import SKIPPED, Malformed, check, figures, format_of, pipe, read_socket, split_stream

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "stress_worker.py")


def parse_all(dumps):
    """(checked dumps, skipped notes, malformed [(error, dump)]) of a list of dumps."""
    good, skipped, malformed = 0, 0, []
    for data in dumps:
        if data == SKIPPED:
            skipped += 1
            continue
        try:
            check(data, format_of(data))
            good += 1
        except Malformed as error:
            malformed.append((str(error), data[:3000]))
    return good, skipped, malformed


@needs_core
def test_ten_thousand_gil_free_dumps_under_load(tmp_path):
    """Socket, signal and watchdog dumps while 64 threads start, recurse, run
    generators and coroutines, unwind and exit, and the GC runs."""
    target = int(os.environ.get("TBFAST_SOAK") or 10000)
    summary_file = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, WORKER, "load", str(tmp_path / "tb."), str(target), str(summary_file)],
        capture_output=True, timeout=120 + target / 20)
    assert result.returncode == 0, "the load died (%d): %s" % (result.returncode, result.stderr[-3000:])
    summary = json.loads(summary_file.read_text())
    malformed = summary.pop("malformed")
    if malformed:
        # Kept where later pytest sessions (scripts/test runs several) do not clean up.
        evidence = os.path.join(tempfile.gettempdir(), "tbfast-malformed-%d.json" % time.time())
        with open(evidence, "w") as out:
            json.dump(malformed, out, indent=1)
        pytest.fail("%d malformed dumps (all in %s); the first: %s\n%s" % (
            len(malformed), evidence, malformed[0]["error"], malformed[0]["dump"][-3000:]))
    figures("stress", **summary)
    assert summary["dumps"] >= target
    assert summary["signals lost"] == 0
    assert summary["leftover"] == {}, "a dump was cut short at the end"
    for source in ("socket", "signal:SIGUSR1", "signal:SIGUSR2", "timeout", "harakiri"):
        assert summary["counts"].get(source, 0) > 0, "no dump from %s" % source


# A worker for the signal tests: SIGUSR1 (chained to a Python handler, so
# SA_NODEFER: the same signal interrupts its own handler) and SIGUSR2 (not
# chained: it interrupts SIGUSR1's) both dump into one file, while threads sit
# deep in recursion and the tracebacker serves.
FLOODED_WORKER = r"""
import json, os, signal, sys, threading
sys.path.insert(0, %(here)r)
import tbfast, shapes
from conftest import Parked

parked = [Parked(lambda park: shapes.deep_recursion(park, 30), name="deep-%%d" %% n).__enter__()
          for n in range(8)]
python_handler_ran = []
signal.signal(signal.SIGUSR1, lambda *_: python_handler_ran.append(1))
out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
tbfast.register(signal.SIGUSR1, out, chain=True)
tbfast.register(signal.SIGUSR2, out, format="json")
tbfast.enable_tracebacker(sys.argv[2], worker_id=1)
print("ready", flush=True)
sys.stdin.readline()  # until the flood is over
after = tbfast.format_traceback(format="json")
for item in parked:
    item.__exit__()
tbfast.disable_tracebacker()
print(json.dumps({"after": json.loads(after)["tbfast"], "python handler": len(python_handler_ran)}))
"""

# Sends `count` signals to a pid, alternating two, as fast as a second allows.
SENDER = r"""
import os, signal, sys, time
pid, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
started = time.monotonic()
sent = 0
while sent < count and time.monotonic() - started < 5 * seconds:
    os.kill(pid, signal.SIGUSR1 if sent % 2 == 0 else signal.SIGUSR2)
    sent += 1
    late = started + sent * seconds / count - time.monotonic()
    if late > 0:
        time.sleep(late)
print(sent, time.monotonic() - started)
"""


@needs_core
def test_a_thousand_signals_in_a_second_reentrant_and_during_socket_dumps(tmp_path):
    out = tmp_path / "dumps"
    worker = subprocess.Popen([sys.executable, "-c", FLOODED_WORKER % {"here": HERE}, str(out),
                               str(tmp_path / "tb.")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert worker.stdout.readline() == b"ready\n", worker.stderr.read()
        socket_dumps, flooding = [], threading.Event()

        def read_during_flood():
            while not flooding.is_set() or len(socket_dumps) < 3:
                socket_dumps.append(read_socket(str(tmp_path / "tb.1"), b"text\n"))
                if len(socket_dumps) > 10000:
                    break

        reader = threading.Thread(target=read_during_flood)
        reader.start()
        sender = subprocess.run([sys.executable, "-c", SENDER, str(worker.pid), "1000", "1"],
                                capture_output=True, timeout=60)
        flooding.set()
        reader.join(60)
        assert not reader.is_alive()
        sent, seconds = sender.stdout.split()
        after_flood = read_socket(str(tmp_path / "tb.1"), b"json\n")  # the server still answers
        stdout, stderr = worker.communicate(b"go\n", timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, "the worker died (%d): %s" % (worker.returncode, stderr[-3000:])
    finished = json.loads(stdout)
    assert finished["after"] == 1
    assert finished["python handler"] > 0  # chained: the Python handler ran too
    check(after_flood, "json")
    dumps, rest = split_stream(out.read_bytes())
    good, skipped, malformed = parse_all(dumps + ([rest] if rest else []))
    socket_good, socket_skipped, socket_malformed = parse_all(socket_dumps)
    assert not malformed and not socket_malformed, (malformed + socket_malformed)[0]
    # Nested handlers may hold every dump buffer: the socket then says so in one line.
    assert good > 0 and socket_good + socket_skipped == len(socket_dumps)
    figures("signal-flood", signals_sent=int(sent), seconds=round(float(seconds), 2),
            signal_dumps_written=good, skipped_busy=skipped + socket_skipped,
            socket_dumps_during=socket_good)
    assert int(sent) == 1000 and float(seconds) < 5


# A process whose SIGUSR1 dumps threads deep in recursion into an inherited fd.
PIPE_WRITER = r"""
import os, signal, sys
sys.path.insert(0, %(here)r)
import tbfast, shapes
from conftest import Parked

parked = [Parked(lambda park: shapes.deep_recursion(park, 40), name="deep-%%d" %% n).__enter__()
          for n in range(4)]
tbfast.register(signal.SIGUSR1, int(sys.argv[1]), format=sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
for item in parked:
    item.__exit__()
"""


@needs_core
def test_dumps_of_several_processes_into_one_pipe_never_interleave():
    """Each dump is one write() of more than PIPE_BUF bytes; a pipe whose buffer
    holds them and whose reader keeps up gets them whole (docs/limits.md)."""
    processes, rounds = 4, 100
    read_end, write_end = pipe()
    writers = [subprocess.Popen([sys.executable, "-c", PIPE_WRITER % {"here": HERE}, str(write_end),
                                 ("json", "text")[n % 2]],
                                pass_fds=(write_end,), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
               for n in range(processes)]
    os.close(write_end)
    dumps, buffer = [], b""
    try:
        for writer in writers:
            assert writer.stdout.readline() == b"ready\n"
        for _ in range(rounds):
            for writer in writers:  # all at once: their dumps race for the pipe
                os.kill(writer.pid, signal.SIGUSR1)
            wanted = len(dumps) + processes
            deadline = time.monotonic() + 30
            while len(dumps) < wanted and time.monotonic() < deadline:
                more, buffer = split_stream(buffer + os.read(read_end, 1 << 20))
                dumps += more
            assert len(dumps) >= wanted, "lost dumps: %d of %d" % (len(dumps), wanted)
    finally:
        for writer in writers:
            writer.communicate(b"done\n", timeout=30)
        os.close(read_end)
    assert buffer == b""
    good, skipped, malformed = parse_all(dumps)
    assert not malformed, malformed[0]
    pids = {}
    for data in dumps:
        pid = int(re.match(rb'(?:tbfast dump: |\{"tbfast":1,")pid"?[=:](\d+)', data).group(1))
        pids[pid] = pids.get(pid, 0) + 1
    assert pids == {writer.pid: rounds for writer in writers}
    sizes = sorted(len(data) for data in dumps)
    assert sizes[0] > 4096  # bigger than PIPE_BUF: POSIX alone would not keep them whole
    figures("one-pipe", processes=processes, dumps=good, smallest_bytes=sizes[0], largest_bytes=sizes[-1])
