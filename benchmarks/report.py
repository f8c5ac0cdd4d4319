"""RESULTS.md and dump_cost.png from one run's cells; nothing here measures."""

import math
import statistics

from formatting import micros, ns, table, times, verdict

HEADLINE_CELL = (64, 64)
PIPE = "pipe 1 MiB"
DEVNULL = "/dev/null"
CORE = "tbfast"
GIL_FREE = "tbfast-signal"
TBFAST_TOOLS = (CORE, GIL_FREE)
SPEEDUP_TARGET = 30.0
NS_PER_FRAME_TARGET = 60.0
PIPE_BUFFER = 1 << 20
SLOPE_MIN_FRAMES = 4000  # below this a dump's fixed costs hide how it grows


# ---------------------------------------------------------------- numbers

def series_of(cell, tool, sink):
    for series in cell.series:
        if series.tool == tool and series.sink == sink:
            return series
    raise KeyError((tool, sink))


def frames_shown(cell, tool):
    return cell.calibration[tool].frames


def ns_per_frame(cell, tool, sink):
    return series_of(cell, tool, sink).median / frames_shown(cell, tool)


def ratio(cell, tool, sink, base=CORE):
    """How many times longer `tool` takes than `base`, medians of the same run."""
    return series_of(cell, tool, sink).median / series_of(cell, base, sink).median


def is_capped(cell, tool):
    """True when a tool shows clearly fewer frames than the process has
    (faulthandler stops at 100 threads and 100 frames a thread)."""
    return frames_shown(cell, tool) < 0.95 * cell.frames_in_process


def capped_mark(cell, tool):
    return " †" if is_capped(cell, tool) else ""


def growth_exponent(cells, tool, sink):
    """The least-squares slope of log(time) against log(frames shown) over the cells
    of at least SLOPE_MIN_FRAMES frames where the tool showed every frame: 1.0 is linear."""
    points = [(math.log(frames_shown(c, tool)), math.log(series_of(c, tool, sink).median))
              for c in cells if c.frames_in_process >= SLOPE_MIN_FRAMES and not is_capped(c, tool)]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def find_cell(cells, shape):
    for cell in cells:
        if (cell.threads, cell.depth) == shape:
            return cell
    return None


# ---------------------------------------------------------------- formatting

def shape(cell):
    return "%d×%d" % (cell.threads, cell.depth)


# ---------------------------------------------------------------- sections

def headline(cells, warm, extra_rows=()):
    cell = find_cell(cells, HEADLINE_CELL)
    if cell is None:
        return "## Headline\n\nThis run has no 64×64 cell.\n"
    out = ["## Headline", "",
           "At %d threads × %d frames (%d frames in the process), medians of the same run:"
           % (cell.threads, cell.depth, cell.frames_in_process), ""]
    for tool, what in ((CORE, "`tbfast.dump_traceback(fd)`"),
                       (GIL_FREE, "tbfast's GIL-free signal handler")):
        out.append("- %s, into the 1 MiB pipe: **%s** faster than faulthandler, **%s** faster "
                   "than the traceback module, **%s** faster than uWSGI-style; "
                   "to /dev/null: **%s ns per frame**." % (
                       what, times(ratio(cell, "faulthandler", PIPE, tool)),
                       times(ratio(cell, "traceback", PIPE, tool)),
                       times(ratio(cell, "uwsgi-style", PIPE, tool)),
                       ns(ns_per_frame(cell, tool, DEVNULL))))
    warm_per_frame = {series.tool: series.median / calibration.frames for series, calibration in warm}
    warm_ns = {tool: ns(value) for tool, value in warm_per_frame.items()}
    if CORE in warm_ns and GIL_FREE in warm_ns:
        out += ["", "Dumping again and again with nothing in between (caches warm, see "
                "*Back-to-back*), tbfast takes %s ns per frame to /dev/null with dump_traceback "
                "and %s ns with the signal handler." % (warm_ns[CORE], warm_ns[GIL_FREE])]
    core_pipe = series_of(cell, CORE, PIPE).median
    core_null = series_of(cell, CORE, DEVNULL).median
    out += ["", "Into the pipe, tbfast's dump takes %s µs against %s µs into /dev/null: the "
            "difference, %s µs, is its one write() of %.0f KB into the pipe." % (
                micros(core_pipe), micros(core_null), micros(core_pipe - core_null),
                cell.calibration[CORE].bytes / 1000.0),
            "", targets(cell, extra_rows, warm_per_frame), ""]
    return "\n".join(out)


def targets(cell, extra_rows=(), warm_per_frame=None):
    """Each target met or missed, by the ratio of medians (the spread of the per-round
    ratios beside it shows how far this run's drift could move it), and for a missed
    one, by how much and where its time goes, from this run's own figures."""
    warm_per_frame = warm_per_frame or {}
    rows = []
    for tool in TBFAST_TOOLS:
        for peer in ("faulthandler", "traceback"):
            got = ratio(cell, peer, PIPE, tool)
            rows.append(("%s ≥ %.0f× faster than %s (64×64, pipe)" % (tool, SPEEDUP_TARGET, peer),
                         times(got), paired_spread(cell, peer, PIPE, tool),
                         verdict(got >= SPEEDUP_TARGET, "%.1f× short: needs ≤ %s µs, is %s µs, "
                                 "of which %s µs is the one write() of %.0f KB into the pipe (the "
                                 "same dump to /dev/null takes %s µs)" % (
                                     SPEEDUP_TARGET - got,
                                     micros(series_of(cell, peer, PIPE).median / SPEEDUP_TARGET),
                                     micros(series_of(cell, tool, PIPE).median),
                                     micros(series_of(cell, tool, PIPE).median
                                            - series_of(cell, tool, DEVNULL).median),
                                     cell.calibration[tool].bytes / 1000.0,
                                     micros(series_of(cell, tool, DEVNULL).median)))))
        got = ns_per_frame(cell, tool, DEVNULL)
        low, high = series_of(cell, tool, DEVNULL).p10_p90
        rows.append(("%s ≤ %.0f ns per frame to /dev/null (64×64)" % (tool, NS_PER_FRAME_TARGET),
                     ns(got) + " ns", "%s–%s ns" % (ns(low / frames_shown(cell, tool)),
                                                    ns(high / frames_shown(cell, tool))),
                     verdict(got <= NS_PER_FRAME_TARGET, "%s ns over (%.0f%%)%s" % (
                         ns(got - NS_PER_FRAME_TARGET), 100 * (got / NS_PER_FRAME_TARGET - 1),
                         "" if tool not in warm_per_frame else
                         "; dump after dump (warm caches) it is %s ns: the rest is waiting on "
                         "memory, the other tools' dumps having emptied the caches in between, "
                         "about one miss along each thread's frame chain a frame"
                         % ns(warm_per_frame[tool])))))
    rows += list(extra_rows)
    return "\n".join([
        "*measured* is the ratio of the two medians (or the median); *spread* is p10–p90 of "
        "the ratios of the two dumps of each round (or of the dumps), which drift on this "
        "machine moves together.", "",
        table(("target", "measured", "spread", "met?"), rows)])


def paired_spread(cell, tool, sink, base):
    """p10–p90 of the per-round ratios: every pair has one timed dump a round."""
    pairs = zip(series_of(cell, tool, sink).times_ns, series_of(cell, base, sink).times_ns)
    ratios = sorted(a / b for a, b in pairs)
    if len(ratios) < 2:
        return "–"
    deciles = statistics.quantiles(ratios, n=10, method="inclusive")
    return "%s–%s" % (times(deciles[0]), times(deciles[-1]))


def machine(info):
    rows = [(key, value) for key, value in info.items()]
    return "## Machine and run\n\n" + table(("", ""), rows) + "\n"


def method(cells, plan, tools):
    tool_rows = [(tool.name, tool.label) for tool in tools]
    sink_rows = sorted({(name, text) for cell in cells for name, text in cell.sinks.items()})
    return "\n".join([
        "## Method", "",
        "- Workload: T threads, each recursing D frames deep in `benchmarks/workload.py:descend` "
        "(two call sites, alternately, so no tool folds the recursion into a \"repeated\" line), "
        "then waiting on a `threading.Event`; about T×(D+5) frames, plus the dumping thread's own.",
        "- Tools run in the same process, round-robin: each round times one dump of every "
        "(sink, tool) pair, in an order shuffled every round (seeded), so each tool follows "
        "every other equally often: a pure-Python dump before it leaves the CPU caches cold, "
        "a tbfast dump leaves them warm. One untimed dump per pair first.",
        "- Every pair gets the same number of rounds: %d, or fewer once some tool has spent "
        "%.0f s in the cell over its three sinks (%.0f s in the %d×%d cell, which the headline "
        "and the targets are read from), but at least %d. Times are "
        "`time.perf_counter_ns()` around the call; medians with p10–p90 over the timed dumps; "
        "every ratio is a ratio of medians of this run."
        % (plan.max_reps, plan.seconds_per_tool, plan.headline_seconds_per_tool,
           HEADLINE_CELL[0], HEADLINE_CELL[1], plan.min_reps),
        "- Before each timed dump every sink is empty (each reader has taken everything and "
        "sleeps), so a dump waits on transport only if it is larger than the sink's buffer.",
        "- Each (tool, sink) pair has its own reader process, which counts the bytes it got "
        "and the dumps' marker lines; the run fails unless every dump sent arrived, with about "
        "the bytes an untimed dump into a file has. *bytes/dump* is the reader's count (that "
        "untimed dump's size for /dev/null).",
        "- *frames* is what the tool's output shows (counted in that untimed dump); "
        "*ns/frame* is the median over it.", "",
        table(("tool", "what is timed"), tool_rows), "",
        table(("sink", "set up"), sink_rows), ""])


def cost_growth(cells, tools):
    out = ["## Cost growth: ns per frame across the grid", "",
           "Constant ns per frame means dump time grows linearly with the frames dumped; "
           "*slope* is the least-squares slope of log(time) against log(frames shown) over the "
           "cells of %d frames or more, where fixed costs no longer dominate, leaving out the "
           "cells where the tool did not show every frame (1.00 = linear). "
           "† marks a tool that showed fewer frames than the process had." % SLOPE_MIN_FRAMES, ""]
    for sink in (DEVNULL, PIPE, "socketpair"):
        header = ["tool"] + ["%s (%d)" % (shape(c), c.frames_in_process) for c in cells] + ["slope"]
        rows = []
        for tool in tools:
            row = [tool.name]
            for cell in cells:
                row.append(ns(ns_per_frame(cell, tool.name, sink)) + capped_mark(cell, tool.name))
            slope = growth_exponent(cells, tool.name, sink)
            row.append("–" if slope is None else "%.2f" % slope)
            rows.append(row)
        out += ["### %s" % sink, "", table(header, rows), ""]
    return "\n".join(out)


def ratios(cells, tools):
    peers = [tool.name for tool in tools if tool.name not in TBFAST_TOOLS]
    header = ["cell", "sink"] + ["%s ÷ %s" % (peer, base) for base in TBFAST_TOOLS for peer in peers]
    rows = []
    for cell in cells:
        for sink in (DEVNULL, PIPE, "socketpair"):
            rows.append([shape(cell), sink] + [times(ratio(cell, peer, sink, base)) + capped_mark(cell, peer)
                                               for base in TBFAST_TOOLS for peer in peers])
    return "\n".join(["## Ratios in every cell", "",
                      "Median time of the peer divided by tbfast's, same cell and sink; † where the "
                      "peer showed fewer frames than tbfast (so the ratio flatters it).", "",
                      table(header, rows), ""])


def write_counts(counts, threads, depth):
    rows = [(count.tool, "%g" % count.per_dump, count.frames,
             "%.2f" % (count.per_dump / count.frames)) for count in counts]
    return "\n".join([
        "## write() calls per dump", "",
        "`strace -f -e trace=write` on a separate run per tool at %d×%d into /dev/null, "
        "%d dumps each, counting the write() calls on the sink's fd." % (
            threads, depth, counts[0].dumps if counts else 0), "",
        table(("tool", "write() per dump", "frames", "write() per frame"), rows), ""])


def cell_tables(cells, tools):
    out = ["## Every cell", ""]
    for cell in cells:
        out += ["### %d threads × %d frames (%d frames in the process)" % (
            cell.threads, cell.depth, cell.frames_in_process), ""]
        rows = []
        for sink in (DEVNULL, PIPE, "socketpair"):
            for tool in tools:
                series = series_of(cell, tool.name, sink)
                low, high = series.p10_p90
                size = series.bytes_per_dump
                if size is None:
                    size = cell.calibration[tool.name].bytes
                rows.append((sink, tool.name, micros(series.median),
                             "%s–%s" % (micros(low), micros(high)), len(series.times_ns),
                             "%.0f" % size, frames_shown(cell, tool.name),
                             ns(ns_per_frame(cell, tool.name, sink)) + capped_mark(cell, tool.name),
                             times(ratio(cell, tool.name, sink)) + capped_mark(cell, tool.name)))
        out += [table(("sink", "tool", "median µs", "p10–p90 µs", "n", "bytes/dump",
                       "frames", "ns/frame", "÷ tbfast"), rows), ""]
    return "\n".join(out)


def back_to_back(results, cells):
    """The reference table: each tool dumping with nothing in between."""
    if not results:
        return ""
    cell = find_cell(cells, HEADLINE_CELL)
    rows = []
    for series, calibration in results:
        low, high = series.p10_p90
        interleaved = ns(ns_per_frame(cell, series.tool, DEVNULL)) if cell else "–"
        rows.append((series.tool, micros(series.median), "%s–%s" % (micros(low), micros(high)),
                     len(series.times_ns), calibration.frames,
                     ns(series.median / calibration.frames), interleaved))
    return "\n".join([
        "## Back-to-back, for reference (64×64, /dev/null)", "",
        "Each tool alone, dumping again and again with nothing in between, so its data stays "
        "in the CPU caches. Not interleaved: no ratio or target above uses these numbers. "
        "The gap to the round-robin figure is what a cold cache costs.", "",
        table(("tool", "median µs", "p10–p90 µs", "n", "frames", "ns/frame",
               "ns/frame round-robin"), rows), ""])


def notes(cells, tools):
    out = ["## Notes", ""]
    for cell in cells:
        for tool in tools:
            if is_capped(cell, tool.name):
                out.append("- %s: %s showed %d of the process's %d frames; its ns/frame is "
                           "over what it showed." % (shape(cell), tool.name,
                                                     frames_shown(cell, tool.name),
                                                     cell.frames_in_process))
    larger = ["%s (%.1f MB)" % (shape(c), c.calibration[CORE].bytes / 1e6) for c in cells
              if c.calibration[CORE].bytes > PIPE_BUFFER]
    if larger:
        out.append("- In %s tbfast's dump is larger than the pipe's 1 MiB buffer, so its "
                   "write() waits for the reader there." % ", ".join(larger))
    out += [
        "- faulthandler writes at most 100 threads and 100 frames a thread (its "
        "MAX_NTHREADS and MAX_FRAME_DEPTH), and no source lines, so it writes fewer bytes.",
        "- The uWSGI-style tool builds uWSGI's lines once per dump and writes them with one "
        "os.write; uWSGI itself does a writev() per frame and a threading.enumerate() per "
        "frame, so it is slower than this.",
        "- tbfast's core reads the source line of each distinct code position once per dump, "
        "with open()/read()/close() on its file: a fixed cost per dump, which is most of a "
        "small dump's time.",
        "- On a shared virtual machine the absolute times drift from run to run (and within "
        "a run); the ratios, taken from dumps interleaved in the same rounds, drift less. "
        "Compare numbers within one RESULTS.md.", ""]
    return "\n".join(out)


def results_markdown(cells, counts, warm, info, plan, tools, strace_shape, extras=None):
    import report_extras
    extras = extras or {}
    parts = [
        "# tbfast benchmarks", "",
        "Written by `benchmarks/run` (`%s`); do not edit: run it again." % info["command"], "",
        headline(cells, warm, report_extras.target_rows(extras)),
        machine(info),
        method(cells, plan, tools),
        cost_growth(cells, tools),
        write_counts(counts, *strace_shape),
        ratios(cells, tools),
        cell_tables(cells, tools),
        back_to_back(warm, cells),
        notes(cells, tools),
        report_extras.sections(extras),
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------- the plot

def plot(cells, tools, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for axis, sink in zip(axes, (DEVNULL, PIPE)):
        for tool in tools:
            x = [cell.frames_in_process for cell in cells]
            y = [ns_per_frame(cell, tool.name, sink) for cell in cells]
            low = [series_of(c, tool.name, sink).p10_p90[0] / frames_shown(c, tool.name) for c in cells]
            high = [series_of(c, tool.name, sink).p10_p90[1] / frames_shown(c, tool.name) for c in cells]
            line, = axis.plot(x, y, marker="o", label=tool.name)
            axis.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
            capped = [(xi, yi) for xi, yi, c in zip(x, y, cells) if is_capped(c, tool.name)]
            if capped:
                axis.scatter(*zip(*capped), s=90, facecolors="none", edgecolors="black", zorder=3)
        if sink == DEVNULL:
            axis.axhline(NS_PER_FRAME_TARGET, color="grey", linestyle="--", linewidth=1)
            axis.annotate("target %.0f ns" % NS_PER_FRAME_TARGET, (cells[0].frames_in_process, NS_PER_FRAME_TARGET),
                          textcoords="offset points", xytext=(0, -12), fontsize=8, color="grey")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("total frames in the process (threads × depth + overhead)")
        axis.set_title(sink)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ns per frame shown (median; band p10–p90)")
    axes[0].legend(title="circled: tool showed fewer frames", fontsize=8, title_fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
