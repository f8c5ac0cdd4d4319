"""Timing one grid cell: every tool into every sink, round-robin, in this process.

Each round times one dump of each (sink, tool) pair, in an order shuffled
anew every round (seeded), so drift (CPU frequency, the other processes) and
what ran just before (a pure-Python dump empties the CPU caches, a tbfast
dump leaves them warm) fall on every tool alike.  Every pair gets the same
number of rounds, so every timed dump follows the same mix of the others: the
rounds stop at `max_reps`, or once some tool has spent the cell's time budget
over its sinks (and there are at least `min_reps`).
"""

import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field

from workload import ParkedThreads, frames_in_process


@dataclass
class Plan:
    max_reps: int = 200
    min_reps: int = 5
    seconds_per_tool: float = 3.0  # per cell, over the tool's sinks
    headline_seconds_per_tool: float = 10.0  # the cell the targets are read from
    seed: int = 1

    def budget(self, cell_is_headline):
        return self.headline_seconds_per_tool if cell_is_headline else self.seconds_per_tool


class Timings:
    """The median and p10-p90 of a series' `times_ns`."""

    @property
    def median(self):
        return statistics.median(self.times_ns)

    @property
    def p10_p90(self):
        if len(self.times_ns) < 2:
            return self.times_ns[0], self.times_ns[0]
        deciles = statistics.quantiles(self.times_ns, n=10, method="inclusive")
        return deciles[0], deciles[-1]


def choose_n(loop, block_ns, clock=time.perf_counter_ns, start=64, most=1 << 24):
    """How many operations make a block of about `block_ns` for loop(n), by `clock`."""
    n = start
    while True:
        started = clock()
        loop(n)
        spent = clock() - started
        if spent >= block_ns / 4 or n >= most:
            return max(1, int(n * block_ns / max(spent, 1)))
        n *= 4


def shuffled_rounds(variants, seconds, max_rounds, seed, min_rounds=10):
    """Yields, round after round, the variants in an order shuffled each time (seeded):
    at least min_rounds rounds, then until `seconds` have passed, max_rounds at most."""
    order = list(variants)
    shuffle = random.Random(seed).shuffle
    deadline = time.monotonic() + seconds
    rounds = 0
    while rounds < max_rounds and (rounds < min_rounds or time.monotonic() < deadline):
        shuffle(order)
        yield order
        rounds += 1


@dataclass
class RoundSeries(Timings):
    """One variant of a benchmark run in interleaved rounds: ns per operation, one
    value a round, with `n` operations a block."""

    variant: str
    n: int
    times_ns: list = field(default_factory=list)


@dataclass
class Series(Timings):
    """The dumps of one tool into one sink, in one cell."""

    tool: str
    sink: str
    times_ns: list = field(default_factory=list)
    dumps_sent: int = 0
    bytes_received: int = None  # counted by the reader; None for /dev/null
    markers_received: int = None  # the tool's markers the reader saw

    @property
    def bytes_per_dump(self):
        """As the reader counted it; None for /dev/null."""
        if self.bytes_received is None:
            return None
        return self.bytes_received / self.dumps_sent


@dataclass
class Calibration:
    """One untimed dump of a tool into a file: its size and the frames it shows."""

    tool: str
    bytes: int
    frames: int
    markers: int  # times the tool's marker is in it
    cut: bool     # tbfast's "buffer full" line is in it


@dataclass
class Cell:
    threads: int
    depth: int
    frames_in_process: int
    calibration: dict  # tool name -> Calibration
    series: list       # of Series
    sinks: dict        # sink name -> its description


def calibrate(tool):
    """Dumps once into a temporary file; also loads what the tool caches (linecache)."""
    with tempfile.TemporaryFile() as file:
        tool.bind(file.fileno())()
        file.seek(0)
        output = file.read()
    return Calibration(tool.name, len(output), tool.count_frames(output),
                       output.count(tool.marker.encode()), b"*** tbfast: buffer full" in output)


class _Pair:
    """One tool bound to a sink of its own, so its reader counts only its bytes."""

    def __init__(self, sink, tool):
        self.sink = sink
        self.dump = tool.bind(sink.fd)
        self.prepare = getattr(self.dump, "prepare", None)
        self.series = Series(tool.name, sink.name)
        self.spent_ns = 0

    def warm_up(self):
        """One untimed dump: first touch of buffers and caches, the reader awake."""
        if self.prepare is not None:
            self.prepare()
        self.dump()
        self.series.dumps_sent += 1

    def time_one(self, sinks):
        if self.prepare is not None:
            self.prepare()
        for sink in sinks:  # no reader busy on the other core
            sink.wait_drained()
        start = time.perf_counter_ns()
        self.dump()
        elapsed = time.perf_counter_ns() - start
        self.series.times_ns.append(elapsed)
        self.series.dumps_sent += 1
        self.spent_ns += elapsed

    def close(self):
        self.series.bytes_received, self.series.markers_received = self.sink.close()


def run_cell(threads, depth, tools, sink_types, plan, seconds_per_tool, log=print):
    with ParkedThreads(threads, depth):
        frames = frames_in_process()
        calibration = {tool.name: calibrate(tool) for tool in tools}
        pairs = [_Pair(sink_type(tool.marker), tool) for sink_type in sink_types for tool in tools]
        descriptions = {pair.sink.name: pair.sink.describe() for pair in pairs}
        for pair in pairs:
            pair.warm_up()
        _round_robin(pairs, plan, seconds_per_tool)
        for pair in pairs:
            pair.close()
    for pair in pairs:
        _check_bytes(pair.series, calibration[pair.series.tool])
    log("  %dx%d: %d frames, %d rounds" % (threads, depth, frames, len(pairs[0].series.times_ns)))
    return Cell(threads, depth, frames, calibration, [pair.series for pair in pairs], descriptions)


def _round_robin(pairs, plan, seconds_per_tool):
    budget_ns = seconds_per_tool * 1e9
    order = list(pairs)
    sinks = [pair.sink for pair in pairs]
    shuffle = random.Random(plan.seed).shuffle
    for turn in range(plan.max_reps):
        shuffle(order)
        for pair in order:
            pair.time_one(sinks)
        if turn + 1 >= plan.min_reps and max(_spent_by_tool(pairs).values()) >= budget_ns:
            return


def _spent_by_tool(pairs):
    spent = {}
    for pair in pairs:
        spent[pair.series.tool] = spent.get(pair.series.tool, 0) + pair.spent_ns
    return spent


def back_to_back(tools, sink_type, threads, depth, max_reps, seconds_per_tool):
    """For reference only: each tool dumping again and again with nothing in between
    (warm caches).  Not round-robin, so never used for a ratio or a target.
    Gives (Series, Calibration) per tool."""
    results = []
    with ParkedThreads(threads, depth):
        for tool in tools:
            calibration = calibrate(tool)
            pair = _Pair(sink_type(tool.marker), tool)
            pair.warm_up()
            while len(pair.series.times_ns) < max_reps and pair.spent_ns < seconds_per_tool * 1e9:
                pair.time_one([pair.sink])
            pair.close()
            results.append((pair.series, calibration))
    return results


def _check_bytes(series, calibration):
    """The reader must have seen the markers of every dump, and got about the bytes
    they make (within 2%: the dumping thread's own frames differ from the calibration
    dump's)."""
    if series.bytes_received is None:
        return
    if series.markers_received != series.dumps_sent * calibration.markers:
        raise RuntimeError("%s into %s: %d dumps of %d markers sent, the reader saw %d markers"
                           % (series.tool, series.sink, series.dumps_sent, calibration.markers,
                              series.markers_received))
    expected = calibration.bytes * series.dumps_sent
    if abs(series.bytes_received - expected) > 0.02 * expected:
        raise RuntimeError("%s into %s: the reader got %d bytes of %d dumps, expected about %d"
                           % (series.tool, series.sink, series.bytes_received,
                              series.dumps_sent, expected))
