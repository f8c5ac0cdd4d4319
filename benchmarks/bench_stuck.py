"""How soon a worker whose main thread is stuck in C, holding the GIL, answers.

The worker's main thread runs ``sum(itertools.repeat(1, 10 ** 13))``: a C loop that
never checks for signals and never lets the GIL go (hours).  Beside it, four
threads wait on an Event.  Measured, one after the other in a shuffled order each
round, from the client's side: a SIGUSR1 to the registered C handler until the
whole dump is read from its pipe; a socket client asking the default (a consistent
dump is offered for ``gil_wait``, then the GIL-free one comes) and one asking
``gil-free``.  Every dump is checked: the main thread holds the GIL and its
innermost frame is the function with the sum.

    python bench_stuck.py [ROUNDS]     (tbfast from the interpreter's site-packages)
"""

import json
import os
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench_roundtrip import read_socket

WORKER = r'''
import itertools, signal, sys, threading, tbfast
tbfast.register(signal.SIGUSR1, 1, format="json")
tbfast.enable_tracebacker(sys.argv[1], 1, format="json")
for number in range(4):
    threading.Thread(target=threading.Event().wait, name="idle-%d" % number, daemon=True).start()

def stuck_in_c():
    sum(itertools.repeat(1, 10 ** 13))

sys.stderr.write("ready\n"); sys.stderr.flush()
stuck_in_c()
'''


def read_document(fd, seconds=5.0):
    """One JSON dump from a pipe, read until it parses."""
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            data += os.read(fd, 1 << 20)
            try:
                return json.loads(data)
            except ValueError:
                continue
    raise RuntimeError("no whole dump within %.0f s" % seconds)


def check(document):
    main = next(thread for thread in document["threads"] if thread["name"] == "MainThread")
    assert main["holds_gil"] and main["frames"][0]["function"] == "stuck_in_c", main
    return document


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    directory = tempfile.mkdtemp(prefix="tbstuck-")
    worker = subprocess.Popen([sys.executable, "-c", WORKER, directory + "/tb."],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert worker.stderr.readline() == b"ready\n"
        time.sleep(0.3)  # into the sum
        path = directory + "/tb.1"

        def by_signal():
            worker.send_signal(signal.SIGUSR1)
            return read_document(worker.stdout.fileno())

        ways = {"signal (C handler)": by_signal,
                "socket, default request": lambda: json.loads(read_socket(path, request=b"json\n")),
                "socket, `gil-free`": lambda: json.loads(read_socket(path, request=b"json gil-free\n"))}
        times = {name: [] for name in ways}
        order = list(ways)
        for _ in range(rounds):
            random.shuffle(order)
            for name in order:
                started = time.perf_counter()
                document = ways[name]()
                times[name].append(time.perf_counter() - started)
                check(document)
        assert worker.poll() is None, "the worker died"
    finally:
        worker.kill()
        worker.wait(10)
    import tbfast
    print("CPython %s, tbfast MODE=%s, %d rounds, main thread stuck in sum() with the GIL"
          % (sys.version.split()[0], tbfast.MODE, rounds))
    print("| way | median | p90 | max |\n|---|---|---|---|")
    for name, values in times.items():
        values.sort()
        print("| %s | %.1f ms | %.1f ms | %.1f ms |" % (
            name, 1e3 * statistics.median(values), 1e3 * values[int(0.9 * (len(values) - 1))],
            1e3 * values[-1]))


if __name__ == "__main__":
    main()
