"""Greenlet enumeration for tbfast.rich: a gc.get_objects() scan against
greenlet.settrace tracking, as ratios from one run.

    python benchmarks/bench_rich.py [--greenlets 1000] [--heap 500000] [--rounds 15]

Needs gevent.  Parks `--greenlets` greenlets in gevent.sleep, pads the heap with
`--heap` small objects (an application's heap), then times, in blocks
interleaved in a shuffled order every round:

- finding the greenlets: the gc scan, and a copy of the tracked WeakSet;
- a whole ``tbfast.rich.sections("text")`` with each;
- what tracking costs while it is on: switches between two greenlets, with
  and without the trace function.

``section()`` returns the markdown that benchmarks/run can append to RESULTS.md.
"""

import argparse
import gc
import random
import statistics
import time

import gevent
import greenlet

from tbfast import rich


def _parked(count):
    return [gevent.spawn(gevent.sleep, 3600) for _ in range(count)]


def _time_ns(function):
    start = time.perf_counter_ns()
    function()
    return time.perf_counter_ns() - start


def _gc_scan():
    return [obj for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet)]


SWITCH_PAIRS = 20_000


def _ping_pong():
    """A raw greenlet that switches straight back: SWITCH_PAIRS round trips."""
    main = greenlet.getcurrent()

    def echo():
        while True:
            main.switch()

    partner = greenlet.greenlet(echo)

    def run():
        switch = partner.switch
        for _ in range(SWITCH_PAIRS):
            switch()
    return run


def measure(greenlets=1000, heap=500_000, rounds=15, seed=1):
    parked = _parked(greenlets)
    padding = [(i,) for i in range(heap)]  # noqa: F841 - kept alive: the heap a scan walks
    gevent.sleep(0.01)  # every parked greenlet starts and sleeps
    rich.track_greenlets()
    tracking = greenlet.gettrace()
    tracked = rich._tracked["greenlets"]
    switches = _ping_pong()

    def untracked(function):
        def run():
            greenlet.settrace(None)
            try:
                function()
            finally:
                greenlet.settrace(tracking)
        return run

    def with_gc_scan(function):
        def run():
            saved, rich._tracked["greenlets"] = rich._tracked["greenlets"], None
            try:
                function()
            finally:
                rich._tracked["greenlets"] = saved
        return run

    variants = {
        "find: gc scan": _gc_scan,
        "find: tracked": lambda: rich._snapshot(tracked),
        "dump: gc scan": with_gc_scan(lambda: rich.sections("text")),
        "dump: tracked": lambda: rich.sections("text"),
        "switches: no trace": untracked(switches),
        "switches: tracking": switches,
    }
    times = {name: [] for name in variants}
    order = list(variants)
    shuffle = random.Random(seed).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            times[name].append(_time_ns(variants[name]))
    found = len(_gc_scan())
    gevent.killall(parked)
    return {name: statistics.median(series) for name, series in times.items()}, found


def section(greenlets=1000, heap=500_000, rounds=15):
    medians, found = measure(greenlets, heap, rounds)

    def ratio(slow, fast):
        return medians[slow] / medians[fast]

    lines = [
        "## Greenlet enumeration (benchmarks/bench_rich.py)",
        "",
        "%d greenlets parked in gevent.sleep (%d greenlets alive), %d objects of padding on "
        "the heap; medians of %d interleaved rounds." % (greenlets, found, heap, rounds),
        "",
        "| | median | ratio |",
        "|---|---|---|",
        "| find the greenlets: gc.get_objects() scan | %.0f µs | %.1f× the tracked copy |"
        % (medians["find: gc scan"] / 1e3, ratio("find: gc scan", "find: tracked")),
        "| find the greenlets: copy of the tracked WeakSet | %.0f µs | |"
        % (medians["find: tracked"] / 1e3),
        "| whole `rich.sections(\"text\")`, gc scan | %.1f ms | %.2f× tracked |"
        % (medians["dump: gc scan"] / 1e6, ratio("dump: gc scan", "dump: tracked")),
        "| whole `rich.sections(\"text\")`, tracked | %.1f ms | |" % (medians["dump: tracked"] / 1e6),
        "| a greenlet switch, tracking on | %.0f ns | %.2f× without the trace function (%.0f ns) |"
        % (medians["switches: tracking"] / (2 * SWITCH_PAIRS),
           ratio("switches: tracking", "switches: no trace"),
           medians["switches: no trace"] / (2 * SWITCH_PAIRS)),
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--greenlets", type=int, default=1000)
    parser.add_argument("--heap", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=15)
    arguments = parser.parse_args()
    print(section(arguments.greenlets, arguments.heap, arguments.rounds))


if __name__ == "__main__":
    main()
