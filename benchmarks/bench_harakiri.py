"""Harakiri arm+disarm: tbfast.harakiri against faulthandler's timer, setitimer and
an empty loop, in blocks interleaved in a shuffled order every round.

Each block runs one variant's loop `n` times (n chosen once so a block takes a few
ms) and its time / n is that round's ns per pair; "net" subtracts the empty loop's
ns per iteration of the same round.  The threaded form runs the same loops on 8
threads at once (released together by a barrier); its ns per pair is the block's
wall time (first thread's start to last thread's end) / (8 n): the throughput of
the process, the GIL serialising the threads.
"""

import faulthandler
import signal
import statistics
import threading
import time
from dataclasses import dataclass

import tbfast
from measure import RoundSeries, choose_n, shuffled_rounds

VARIANTS = ("tbfast.harakiri", "tbfast scope made once", "faulthandler", "setitimer", "empty loop")
TBFAST_VARIANTS = VARIANTS[:2]
LABELS = {
    "tbfast.harakiri": "`with tbfast.harakiri(30): pass`",
    "tbfast scope made once": "`with scope: pass`, `scope = tbfast.harakiri(30)` made before the loop",
    "faulthandler": "`faulthandler.dump_traceback_later(30); faulthandler.cancel_dump_traceback_later()`",
    "setitimer": "`signal.setitimer(ITIMER_REAL, 30); signal.setitimer(ITIMER_REAL, 0)`",
    "empty loop": "`for _ in range(n): pass`",
}
THREADS = 8


def _tbfast(n):
    harakiri = tbfast.harakiri
    for _ in range(n):
        with harakiri(30):
            pass


def _tbfast_made_once(n):
    scope = tbfast.harakiri(30)
    for _ in range(n):
        with scope:
            pass


def _faulthandler(n):
    arm, cancel = faulthandler.dump_traceback_later, faulthandler.cancel_dump_traceback_later
    for _ in range(n):
        arm(30)
        cancel()


def _setitimer(n):
    setitimer, which = signal.setitimer, signal.ITIMER_REAL
    for _ in range(n):
        setitimer(which, 30)
        setitimer(which, 0)


def _empty(n):
    for _ in range(n):
        pass


LOOPS = {"tbfast.harakiri": _tbfast, "tbfast scope made once": _tbfast_made_once,
         "faulthandler": _faulthandler,
         "setitimer": _setitimer, "empty loop": _empty}


@dataclass
class Result:
    threads: int
    rounds: int
    series: dict  # variant -> Series

    def net(self, variant):
        """Per-round ns per pair minus the empty loop's, same round."""
        return [a - b for a, b in zip(self.series[variant].times_ns,
                                      self.series["empty loop"].times_ns)]


def deciles(values):
    if len(values) < 2:
        return values[0], values[0]
    cut = statistics.quantiles(values, n=10, method="inclusive")
    return cut[0], cut[-1]


class _Crew:
    """THREADS threads that run one loop together per block.  Each thread notes when
    it started and finished its loop; a block's time is the last finish minus the
    first start (the main thread's own clock would start late: it waits for the GIL
    the crew is using)."""

    def __init__(self, count):
        self.start = threading.Barrier(count + 1)
        self.done = threading.Barrier(count + 1)
        self.job = None
        self.spans = [None] * count
        self.threads = [threading.Thread(target=self._work, args=(i,), name="arming-%d" % i,
                                         daemon=True) for i in range(count)]
        for thread in self.threads:
            thread.start()

    def _work(self, index):
        clock = time.perf_counter_ns
        while True:
            self.start.wait()
            job = self.job
            if job is None:
                return
            started = clock()
            job()
            self.spans[index] = (started, clock())
            self.done.wait()

    def run(self, loop, n):
        self.job = lambda: loop(n)
        self.start.wait()
        self.done.wait()
        return max(end for _, end in self.spans) - min(start for start, _ in self.spans)

    def stop(self):
        self.job = None
        self.start.wait()
        for thread in self.threads:
            thread.join()


def measure(threads=1, max_rounds=100, seconds=4.0, block_ms=3.0, seed=1):
    tbfast.watchdog.configure(file=False)
    crew = _Crew(threads) if threads > 1 else None
    try:
        series = {}
        for variant in VARIANTS:
            loop = LOOPS[variant]
            n = choose_n(loop, block_ms * 1e6)
            n = max(1, n // threads)
            series[variant] = RoundSeries(variant, n)
            loop(n)  # warm
        rounds = 0
        for order in shuffled_rounds(VARIANTS, seconds, max_rounds, seed):
            for variant in order:
                one = series[variant]
                if crew is None:
                    started = time.perf_counter_ns()
                    LOOPS[variant](one.n)
                    spent = time.perf_counter_ns() - started
                else:
                    spent = crew.run(LOOPS[variant], one.n)
                one.times_ns.append(spent / (one.n * threads))
            rounds += 1
    finally:
        if crew is not None:
            crew.stop()
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
    return Result(threads, rounds, series)


if __name__ == "__main__":
    for count in (1, THREADS):
        result = measure(count, seconds=2.0)
        for variant, one in result.series.items():
            print(count, variant, one.n, "%.0f" % one.median, "net %.0f" % statistics.median(result.net(variant)))
