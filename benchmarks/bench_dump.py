"""Benchmarks of one dump of every thread: tbfast against faulthandler, the
traceback module and uWSGI-style formatting; then harakiri arm+disarm, idle
overhead, round trips to a live uWSGI worker, the external dumpers and live
breakpoints (bench_harakiri.py, bench_idle.py, bench_roundtrip.py, bench_livebp.py).  Run it with `benchmarks/run`,
which makes the venv; it writes RESULTS.md and dump_cost.png beside itself.

    bench_dump.py [--quick] [--suffix S]      the whole benchmark
    bench_dump.py --child TOOL [...]          one tool dumping to fd 213 (strace, profile)
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

import tbfast

import bench_harakiri
import bench_idle
import bench_livebp
import bench_roundtrip
import measure
import report
import syscalls
from profiling import PerfControl
from sinks import DevNull, all_sinks
from tools import all_tools
from workload import ParkedThreads

HERE = os.path.dirname(os.path.abspath(__file__))
GRID = [(4, 8), (16, 32), (64, 64), (200, 100), (1000, 100)]
QUICK_GRID = [(4, 8), (64, 64)]
STRACE_SHAPE = (64, 64)
# Large enough for 1000 x 100 frames with their source lines (about 12 MB): no dump is cut.
BUFFER_SIZE = 32 * 1024 * 1024


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4x8 and 64x64 only, fewer dumps")
    parser.add_argument("--suffix", default="", help="RESULTS<suffix>.md, dump_cost<suffix>.png")
    parser.add_argument("--command", default="benchmarks/run", help="the command line to record")
    parser.add_argument("--child", metavar="TOOL", help="dump with TOOL to fd %d only" % syscalls.SINK_FD)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--dumps", type=int, default=3)
    parser.add_argument("--between", metavar="TOOL",
                        help="child: TOOL dumps to another fd before each dump (cold caches)")
    return parser.parse_args(argv)


def tool_named(name):
    for tool in all_tools():
        if tool.name == name:
            return tool
    raise SystemExit("no tool %r: one of %s" % (name, ", ".join(t.name for t in all_tools())))


def child(args):
    """Parks the workload, dumps `args.dumps` times into /dev/null through SINK_FD,
    and prints the frames one dump shows (counted in a dump to a file first).
    With --between, another tool dumps to another fd before each dump."""
    tool = tool_named(args.child)
    with ParkedThreads(args.threads, args.depth):
        frames = measure.calibrate(tool).frames
        sink = os.open(os.devnull, os.O_WRONLY)
        os.dup2(sink, syscalls.SINK_FD)
        dump = tool.bind(syscalls.SINK_FD)
        before = tool_named(args.between).bind(sink) if args.between else (lambda: None)
        perf = PerfControl.from_environment()
        for _ in range(args.dumps):
            before()
            with perf.sampling():
                dump()
    print(frames)


def check_not_cut(cells):
    for cell in cells:
        for tool in report.TBFAST_TOOLS:
            if cell.calibration[tool].cut:
                raise RuntimeError("%dx%d: tbfast's buffer was too small" % (cell.threads, cell.depth))


def cpu_model():
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit():
    try:
        commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", HERE, "status", "--porcelain", "--", "../src", "../tbfast"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return commit + (" (src/ or tbfast/ modified)" if dirty else "")


def machine_info(args, plan, seconds):
    return {
        "command": args.command,
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "CPU": cpu_model(),
        "cores": "%d (usable by this process: %d)" % (os.cpu_count(), len(os.sched_getaffinity(0))),
        "kernel": "%s %s" % (platform.system(), platform.release()),
        "Python": "%s (%s)" % (platform.python_version(), sys.executable),
        "tbfast": "%s, MODE=%s, HAS_CORE=%s, buffer_size=%d" % (
            tbfast.__version__, tbfast.MODE, tbfast.HAS_CORE, BUFFER_SIZE),
        "tbfast commit": git_commit(),
        "tracer": syscalls.strace_version(),
        "grid": ", ".join("%d×%d" % shape for shape in (QUICK_GRID if args.quick else GRID)),
        "rounds per cell": "≤ %d, ≥ %d, until a tool has spent %.0f s (%d×%d: %.0f s)" % (
            plan.max_reps, plan.min_reps, plan.seconds_per_tool, report.HEADLINE_CELL[0],
            report.HEADLINE_CELL[1], plan.headline_seconds_per_tool),
        "run time": "%.0f s" % seconds,
    }


def measure_extras(quick):
    """Harakiri, idle overhead, round trips, external dumpers, live breakpoints
    (see their modules)."""
    extras = {}
    print("harakiri arm+disarm, 1 and %d threads" % bench_harakiri.THREADS, flush=True)
    extras["harakiri"] = [bench_harakiri.measure(threads, seconds=1.0 if quick else 4.0)
                          for threads in (1, bench_harakiri.THREADS)]
    print("idle overhead (cpu loop, wsgi loop)", flush=True)
    extras["idle"] = bench_idle.measure(rounds=10 if quick else 100)
    print("round trip: uWSGI tracebacker, tbfast, manhole", flush=True)
    extras["roundtrip"] = bench_roundtrip.uwsgi_roundtrip(rounds=20 if quick else 200)
    print("external dumpers: py-spy, pystack", flush=True)
    extras["external"] = bench_roundtrip.external(rounds=3 if quick else 10)
    print("live breakpoints: WSGI requests with and without livebp", flush=True)
    extras["livebp"] = bench_livebp.measure(max_rounds=20 if quick else 200,
                                            seconds=2.0 if quick else 20.0)
    for name in ("roundtrip", "external"):
        if extras[name].error:
            print("  %s: %s" % (name, extras[name].error), flush=True)
    return extras


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    tbfast.configure(buffer_size=BUFFER_SIZE)
    if args.child:
        return child(args)
    if not tbfast.HAS_CORE:
        print("warning: tbfast MODE=%s: the C core is not in use" % tbfast.MODE, file=sys.stderr)
    plan = measure.Plan(max_reps=30, min_reps=3, seconds_per_tool=1.0,
                        headline_seconds_per_tool=1.0) if args.quick else measure.Plan()
    grid = QUICK_GRID if args.quick else GRID
    tools, sinks = all_tools(), all_sinks()
    started = time.monotonic()
    cells = []
    for threads, depth in grid:
        print("cell %d threads x %d frames" % (threads, depth), flush=True)
        budget = plan.budget((threads, depth) == report.HEADLINE_CELL)
        cells.append(measure.run_cell(threads, depth, tools, sinks, plan, budget))
    check_not_cut(cells)
    print("back-to-back at %dx%d into /dev/null" % report.HEADLINE_CELL, flush=True)
    warm = measure.back_to_back(tools, DevNull, *report.HEADLINE_CELL, max_reps=plan.max_reps,
                                seconds_per_tool=plan.seconds_per_tool / 3)
    print("strace: write() calls per dump at %dx%d" % STRACE_SHAPE, flush=True)
    counts = [syscalls.count_writes(tool.name, *STRACE_SHAPE) for tool in tools]
    extras = measure_extras(args.quick)
    info = machine_info(args, plan, time.monotonic() - started)
    results = os.path.join(HERE, "RESULTS%s.md" % args.suffix)
    with open(results, "w") as out:
        out.write(report.results_markdown(cells, counts, warm, info, plan, tools, STRACE_SHAPE,
                                          extras))
    picture = os.path.join(HERE, "dump_cost%s.png" % args.suffix)
    report.plot(cells, tools, picture, "One dump of every thread, Python %s, %s" % (
        platform.python_version(), cpu_model()))
    print("wrote %s and %s" % (results, picture))
    return 0


if __name__ == "__main__":
    sys.exit(main())
