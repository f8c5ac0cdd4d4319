"""Idle overhead: what tbfast costs a process that never dumps.

Three worker processes, alike but for tbfast: "off" and "control" import tbfast
and enable nothing (control against off is the noise floor between two processes); "on" serves its tracebacker socket (`enable_tracebacker`) and has the
watchdog configured (`tbfast.watchdog.configure(file=False)`).  A fourth, "toggle",
is switched between the two states before each block (untimed: disable_tracebacker()
and the core's watchdog_shutdown(), or enable again), so its on/off ratio has no
difference between processes in it.  The parent asks them for one block at a time, in an order shuffled every round (so drift falls
on all alike), never two at once, and keeps each block's wall time and the
process's CPU time (every thread of it: tbfast's own included; the time the
machine gave to other processes not).

    (a) cpu:  a pure-Python CPU-bound loop
    (b) wsgi: a trivial WSGI app called as a server would (environ, start_response,
              iterate, close()), many requests a block: what an enabled
              tracebacker and watchdog cost requests that do not use them.
    (c) wsgi-harakiri: the same, and "on" wraps the app in
              tbfast.wsgi.HarakiriMiddleware(app, 30), which sets a context and
              arms the watchdog for each request: a per-request cost, not idle.

    bench_idle.py --child off|control|on|toggle DIR     a worker: reads "cpu N" / "wsgi N", answers ns
"""

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = ("cpu", "wsgi", "wsgi-harakiri")


def cpu_loop(n):
    total = 0
    for i in range(n):
        total += (i * i) % 7
    return total


def hello_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return [b"hello\n"]


ENVIRON = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/hello",
           "QUERY_STRING": "a=1", "SERVER_NAME": "bench", "SERVER_PORT": "80",
           "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
           "HTTP_X_REQUEST_ID": "bench-1"}


def serve_requests(app, environ, n):
    """n requests of `environ` through a WSGI app, its body read and closed."""
    def start_response(status, headers, exc_info=None):
        return None
    body = 0
    for _ in range(n):
        result = app(dict(environ), start_response)
        try:
            for chunk in result:
                body += len(chunk)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    return body


def child(mode, directory):
    import tbfast
    import tbfast.wsgi
    app = hello_app
    wrapped = tbfast.wsgi.HarakiriMiddleware(hello_app, 30)  # arms nothing until called
    enabled = False

    def enable():
        tbfast.enable_tracebacker(directory + "/tb.", worker_id=os.getpid())
        tbfast.watchdog.configure(file=False)

    def disable():
        tbfast.disable_tracebacker()
        tbfast._impl.watchdog_shutdown()

    if mode == "on":  # "off" and "control" enable nothing
        enable()
        app = wrapped
    elif mode not in ("off", "control", "toggle"):
        raise SystemExit("--child off|control|on|toggle")
    for line in sys.stdin:
        what, n, *state = line.split()
        if mode == "toggle":  # "on" or "off" before each block, untimed
            want = state == ["on"]
            if want != enabled:
                enable() if want else disable()
                enabled = want
                time.sleep(0.005)
            app = wrapped if enabled else hello_app
        served = app if what == "wsgi-harakiri" else hello_app
        run = cpu_loop if what == "cpu" else (lambda count, app=served: serve_requests(app, ENVIRON, count))
        started, cpu = time.perf_counter_ns(), time.process_time_ns()
        run(int(n))
        print(time.perf_counter_ns() - started, time.process_time_ns() - cpu, flush=True)


@dataclass
class Result:
    workload: str
    n: int                                   # iterations or requests a block
    off_ns: list = field(default_factory=list)
    on_ns: list = field(default_factory=list)
    control_ns: list = field(default_factory=list)  # a second "off" process: the noise floor
    toggle_off_ns: list = field(default_factory=list)  # one process, switched off and on
    toggle_on_ns: list = field(default_factory=list)
    cpu: dict = field(default_factory=dict)  # the same names -> the process's CPU time a block

    def times(self, name, clock="wall"):
        return getattr(self, name + "_ns") if clock == "wall" else self.cpu[name]

    def pair_ratios(self, of="on", base="off", clock="wall"):
        return [a / b for a, b in zip(self.times(of, clock), self.times(base, clock))]

    def toggle_ratios(self, clock="wall"):
        return self.pair_ratios("toggle_on", "toggle_off", clock)

    @property
    def toggle_ratio(self):
        return statistics.median(self.toggle_ratios())

    @property
    def control_ratio(self):
        return statistics.median(self.pair_ratios("control"))

    @property
    def ratio(self):
        return statistics.median(self.pair_ratios())

    @property
    def ratio_of_medians(self):
        return statistics.median(self.on_ns) / statistics.median(self.off_ns)

    @property
    def added_ns_per_op(self):
        return (statistics.median(self.on_ns) - statistics.median(self.off_ns)) / self.n


class _Worker:
    def __init__(self, mode, directory):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "bench_idle.py"),
                                      "--child", mode, directory],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def block(self, what, n, state=""):
        self.proc.stdin.write("%s %d %s\n" % (what, n, state))
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the idle-overhead worker died")
        wall, cpu = line.split()
        return int(wall), int(cpu)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


def _choose_n(worker, what, block_ns):
    n = 1000
    while True:
        spent = worker.block(what, n)[0]
        if spent >= block_ns / 4:
            return max(1, int(n * block_ns / spent))
        n *= 4


def measure(rounds=60, block_ms=25.0, seed=1):
    """Each round runs one block on each of off, control and on, in an order
    shuffled every round (seeded)."""
    directory = tempfile.mkdtemp(prefix="tbidle-", dir="/tmp")
    workers = {mode: _Worker(mode, directory) for mode in ("off", "control", "on", "toggle")}
    blocks = {"off": (workers["off"], ""), "control": (workers["control"], ""),
              "on": (workers["on"], ""), "toggle_off": (workers["toggle"], "off"),
              "toggle_on": (workers["toggle"], "on")}
    shuffle = random.Random(seed).shuffle
    try:
        results = []
        for what in WORKLOADS:
            n = _choose_n(workers["off"], what, block_ms * 1e6)
            result = Result(what, n)
            for worker, state in blocks.values():  # warm
                worker.block(what, n, state)
            order = list(blocks)
            for _ in range(rounds):
                shuffle(order)
                for name in order:
                    worker, state = blocks[name]
                    wall, cpu = worker.block(what, n, state)
                    getattr(result, name + "_ns").append(wall)
                    result.cpu.setdefault(name, []).append(cpu)
            results.append(result)
        return results
    finally:
        for worker in workers.values():
            worker.close()
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        for result in measure(rounds=20):
            print(result.workload, result.n, "%.4f" % result.ratio, "%.4f" % result.ratio_of_medians,
                  "control %.4f" % result.control_ratio, "toggle %.4f" % result.toggle_ratio,
                  "%.1f ns/op" % result.added_ns_per_op)
