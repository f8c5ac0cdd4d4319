"""RESULTS.md sections for harakiri, idle overhead, round trips and external dumpers
(live breakpoints: bench_livebp.py formats its own); nothing here measures."""

import random
import statistics

import bench_harakiri
import bench_livebp
from formatting import micros, ns, table, times, verdict

HARAKIRI_TARGET_NS = 200.0
IDLE_TARGET = 0.01
ROUNDTRIP_TARGET = 5.0


def _deciles(values):
    return bench_harakiri.deciles(values)


def median_ci(values, level=0.95, resamples=2000, seed=1):
    """A bootstrap confidence interval of the median of `values` (seeded)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values)))
                     for _ in range(resamples))
    cut = int((1 - level) / 2 * resamples)
    return medians[cut], medians[-cut - 1]


def _pct(ratio):
    return "%+.1f%%" % (100 * (ratio - 1))


def _micro_pair(series):
    low, high = series.p10_p90
    return "%s–%s" % (micros(low), micros(high))


def target_rows(extras):
    rows = []
    for result in extras.get("harakiri", []):
        for variant in bench_harakiri.TBFAST_VARIANTS:
            one = result.series[variant]
            raw, net = one.median, statistics.median(result.net(variant))
            low, high = _deciles(one.times_ns)
            what = "single thread" if result.threads == 1 else "%d threads at once" % result.threads
            rows.append(("harakiri arm+disarm ≤ %.0f ns a pair, %s (%s; raw, net of the empty loop)"
                         % (HARAKIRI_TARGET_NS, bench_harakiri.LABELS[variant], what),
                         "%s ns (net %s ns)" % (ns(raw), ns(net)),
                         "%s–%s ns" % (ns(low), ns(high)),
                         verdict(raw <= HARAKIRI_TARGET_NS, "%s ns over raw (%.0f%%)%s%s" % (
                             ns(raw - HARAKIRI_TARGET_NS), 100 * (raw / HARAKIRI_TARGET_NS - 1),
                             "; net is within" if net <= HARAKIRI_TARGET_NS else
                             ", %s ns over net" % ns(net - HARAKIRI_TARGET_NS),
                             "; a new scope each time pays for making the object, besides "
                             "Python's `with`: a scope made once does not"
                             if variant == "tbfast.harakiri" else ""))))
    for result in extras.get("idle", []):
        ratios = result.toggle_ratios("cpu")  # one process switched: no process-to-process bias
        ratio = statistics.median(ratios)
        low, high = _deciles(ratios)
        ci_low, ci_high = median_ci(ratios)
        if ci_high - 1 <= IDLE_TARGET:
            said = "met"
        elif ci_low - 1 > IDLE_TARGET:
            said = "**missed**: %.1f points over (%s ns more per %s)" % (
                100 * (ratio - 1 - IDLE_TARGET), ns(_added(result, "toggle_on", "toggle_off", "cpu")),
                "request" if result.workload.startswith("wsgi") else "iteration")
        else:
            said = "**not resolved**: the median's 95%% CI, %s – %s, straddles +%.0f%%" % (
                _pct(ci_low), _pct(ci_high), 100 * IDLE_TARGET)
        rows.append(("idle overhead ≤ %.0f%% (%s; one process switched on/off, CPU time)"
                     % (100 * IDLE_TARGET, IDLE_NAMES[result.workload]),
                     _pct(ratio), "%s – %s; median's 95%% CI %s – %s" % (
                         _pct(low), _pct(high), _pct(ci_low), _pct(ci_high)),
                     said))
    roundtrip = extras.get("roundtrip")
    if roundtrip is not None:
        theirs = roundtrip.series.get("uWSGI --py-tracebacker")
        for reader, what in (("tbfast socket", "consistent, the default"),
                             ("tbfast socket, gil-free", "asked gil-free")):
            ours = roundtrip.series.get(reader)
            if not (ours and theirs and ours.times_ns and theirs.times_ns):
                continue
            got = theirs.median / ours.median
            rows.append(("round trip ≥ %.0f× faster than uWSGI's tracebacker (slow.py, the busy "
                         "worker; %s)" % (ROUNDTRIP_TARGET, what), times(got), _paired(theirs, ours),
                         verdict(got >= ROUNDTRIP_TARGET, "%.1f× short: needs ≤ %s µs, is %s µs%s" % (
                             ROUNDTRIP_TARGET - got, micros(theirs.median / ROUNDTRIP_TARGET),
                             micros(ours.median),
                             "; a consistent dump hands the client to a Python thread of the "
                             "worker's, which must wake up and take the GIL: one thread wake-up "
                             "more than a GIL-free dump (next row)" if reader == "tbfast socket"
                             else ""))))
        if not any(row[0].startswith("round trip") for row in rows):
            rows.append(("round trip ≥ %.0f× faster than uWSGI's tracebacker" % ROUNDTRIP_TARGET,
                         "not measured", "–", "**not measured**: %s" % (roundtrip.error or "see below")))
    if extras.get("livebp") is not None:
        rows += bench_livebp.target_rows(extras["livebp"])
    return rows


def _added(result, on, off, clock="wall"):
    return (statistics.median(result.times(on, clock))
            - statistics.median(result.times(off, clock))) / result.n


def _paired(slow, fast):
    """p10–p90 of per-round ratios (both series have one read a round, same order)."""
    ratios = [a / b for a, b in zip(slow.times_ns, fast.times_ns)]
    if len(ratios) < 2:
        return "–"
    low, high = _deciles(ratios)
    return "%s–%s" % (times(low), times(high))


IDLE_NAMES = {"cpu": "(a) CPU-bound pure-Python loop", "wsgi": "(b) trivial WSGI app, in-process",
              "wsgi-harakiri": "(c) the same through HarakiriMiddleware: per-request cost"}


def harakiri_section(results):
    if not results:
        return ""
    out = ["## Harakiri: arm + disarm", "",
           "Blocks of n pairs of each variant, interleaved in an order shuffled every round "
           "(seeded), in this process; a block's time / n is that round's ns per pair. *net* "
           "subtracts the empty loop's ns per iteration of the same round (median of the per-round "
           "differences). With %d threads, the same loops run on %d threads started together; ns "
           "per pair is the block's wall time / (threads × n): the process's throughput, the GIL "
           "serialising them. faulthandler's timer and ITIMER_REAL are one per process, so "
           "threads replace each other's; tbfast's deadline is per thread. "
           "`tbfast.watchdog.configure(file=False)` first; 30 s never expires." % (
               bench_harakiri.THREADS, bench_harakiri.THREADS), ""]
    for result in results:
        rows = []
        base = result.series["tbfast.harakiri"].median
        for variant in bench_harakiri.VARIANTS:
            one = result.series[variant]
            low, high = _deciles(one.times_ns)
            net = result.net(variant)
            nlow, nhigh = _deciles(net)
            rows.append((bench_harakiri.LABELS[variant], ns(one.median), "%s–%s" % (ns(low), ns(high)),
                         "–" if variant == "empty loop" else ns(statistics.median(net)),
                         "–" if variant == "empty loop" else "%s–%s" % (ns(nlow), ns(nhigh)),
                         one.n, times(one.median / base)))
        out += ["### %s (%d rounds)" % ("one thread" if result.threads == 1 else
                                        "%d threads arming at once" % result.threads, result.rounds), "",
                table(("variant", "ns per pair", "p10–p90", "net ns", "net p10–p90",
                       "n a block", "÷ tbfast"), rows), ""]
    return "\n".join(out)


def idle_section(results):
    if not results:
        return ""
    rows = []
    for result in results:
        for clock in ("cpu", "wall"):
            for label, on, off in (("toggle: on ÷ off, one process", "toggle_on", "toggle_off"),
                                   ("process on ÷ process off", "on", "off"),
                                   ("control ÷ off (two identical processes)", "control", "off")):
                ratios = result.pair_ratios(on, off, clock)
                low, high = _deciles(ratios)
                ci_low, ci_high = median_ci(ratios)
                rows.append((IDLE_NAMES[result.workload], clock, label, result.n,
                             micros(statistics.median(result.times(off, clock))),
                             micros(statistics.median(result.times(on, clock))),
                             _pct(statistics.median(ratios)), "%s – %s" % (_pct(low), _pct(high)),
                             "%s – %s" % (_pct(ci_low), _pct(ci_high)),
                             ns(_added(result, on, off, clock)), len(ratios)))
    return "\n".join([
        "## Idle overhead", "",
        "Worker processes started by `benchmarks/bench_idle.py`, alike but for tbfast. *off* "
        "and *control* import tbfast and enable nothing; *on* has "
        "`tbfast.enable_tracebacker(tmpdir + \"/tb.\")` and `tbfast.watchdog.configure(file=False)`, "
        "and in (c) calls the app through `tbfast.wsgi.HarakiriMiddleware(app, 30)` (a deadline "
        "armed and disarmed, and a context line set, per request: a cost per request, which "
        "(b), the same app called directly, leaves out). *toggle* is one process "
        "switched between the two states before each block, untimed (`disable_tracebacker()` and "
        "the core's `watchdog_shutdown()`, 5 ms to settle; the logger's reader thread, blocked "
        "in read(), stays once started): its ratio has no process-to-process difference in it, "
        "which *control* ÷ *off* shows can be a few % here, so the targets are read from it. "
        "*cpu* is the process's CPU time in the block (`time.process_time_ns()`: every thread, "
        "tbfast's included, but not the time the machine gave to other processes, which "
        "*wall* includes); the targets are read from *cpu*, the less noisy here. "
        "The parent runs one block at a time, the five kinds in an order shuffled every round. "
        "Ratios are medians over rounds of the two blocks of the same round; the median's 95% "
        "CI is a bootstrap (2000 resamples, seeded); a target is *met* when the whole CI is "
        "within it, *missed* when the whole CI is over it, else *not resolved*. (b) calls the "
        "app in-process as a server would (fresh environ, iterate, close()); the app does "
        "nothing, so (b)'s overhead is the middleware's cost per request over a ~µs request: "
        "*added ns/op* is what carries over to a real request.", "",
        table(("workload", "clock", "comparison", "n a block", "base median µs", "median µs", "overhead",
               "p10–p90", "median's 95% CI", "added ns/op", "rounds"), rows),
        ""])


def _series_rows(series, base_name):
    rows = []
    base = series.get(base_name)
    for one in series.values():
        if one.error:
            rows.append((one.name, "–", "–", 0, "–", "–", "failed: %s" % one.error.replace("|", "/")))
            continue
        ratio = times(one.median / base.median) if base and base.times_ns else "–"
        rows.append((one.name, micros(one.median), _micro_pair(one), len(one.times_ns),
                     one.bytes, one.frames, ratio))
    return rows


def roundtrip_section(result):
    if result is None:
        return ""
    out = ["## Round trip: reading a live uWSGI worker's dump", "",
           "`examples/slow.py` served by `uwsgi --master --processes 2 --threads 4 "
           "--py-tracebacker DIR/utb. --enable-threads --http-socket DIR/http.sock` (%s), "
           "through a wrapper module that calls `tbfast.enable_tracebacker(DIR/tb.)` and installs "
           "python-manhole in each worker after fork (`uwsgi.post_fork_hook`, socket "
           "DIR/manhole.N), then imports slow's `application`. 4 requests to `/` over the UNIX "
           "HTTP socket, 1 s to reach `dormi`; uWSGI gives them to whichever worker accepts, so "
           "the worker N with the most of them is read (worker %d in this run), its tb.N, utb.N "
           "and manhole.N interleaved in "
           "an order shuffled every round, by the same Python client: connect, "
           "`shutdown(SHUT_WR)` (it asks nothing), read until the server closes. manhole is read "
           "in a second phase, interleaved with uWSGI's socket only (so compare it with the "
           "uWSGI row of its phase). The phases were split when a tbfast dump taken while one "
           "of manhole's connection threads exited killed the worker, a race of the GIL-free "
           "walk with a thread's exit that this benchmark found; it is fixed, and "
           "tests/test_robustness.py keeps it so. python-manhole "
           "has no dump-and-close mode: on connect it writes `dump_stacktraces()` and then starts "
           "a REPL (redirecting the whole process's sys.stdout/stderr to the client meanwhile); "
           "its round trip is read until the dump's closing `#####` line, then close. "
           "*silent client* rows connect and read without the shutdown, as `uwsgi "
           "--connect-and-read` does. The CLI rows are the clients run as processes, for "
           "reference (fewer rounds)." % (result.uwsgi_version or "uWSGI", result.worker), ""]
    if result.error:
        out += ["**Not measured**: %s" % result.error, ""]
    if result.series:
        out += [table(("reader", "median µs", "p10–p90 µs", "n", "bytes", "frames", "÷ tbfast socket"),
                      _series_rows(result.series, "tbfast socket")), ""]
        theirs, ours = result.series.get("uWSGI --py-tracebacker"), result.series.get("tbfast socket")
        if theirs and ours and theirs.times_ns and ours.times_ns:
            out += ["Per-round ratio uWSGI ÷ tbfast, p10–p90: %s." % _paired(theirs, ours), ""]
        silent = result.series.get("tbfast socket, silent client")
        if silent and silent.times_ns:
            out += ["A client that sends nothing and does not shut down its side (uWSGI's own "
                    "`--connect-and-read`) waits %s µs for tbfast's dump: the server waits up to "
                    "REQUEST_WAIT_MS (10 ms, src/_server.pxi) for a format line before it "
                    "answers with the default one." % micros(silent.median), ""]
    for one in result.series.values():
        for error, count in one.failures.items():
            out.append("- %s: %d of the reads failed with %s (not timed)." % (one.name, count, error))
    for note in result.notes:
        out.append("- " + note.replace("\n", " "))
    return "\n".join(out) + "\n"


def external_section(result):
    if result is None:
        return ""
    out = ["## External dumpers on the 64×64 workload", "",
           "A separate process parks 64 threads 64 frames deep (`workload.py`) and serves "
           "tbfast's socket. Interleaved, shuffled every round: the Python client on that "
           "socket, `tbfast connect-and-read` (a process, as the other two are), `py-spy dump "
           "--pid` and `pystack remote`, both of which attach with ptrace (run as root here).", ""]
    if result.error:
        out += ["**Not measured**: %s" % result.error, ""]
    if result.series:
        out += [table(("dumper", "median µs", "p10–p90 µs", "n", "bytes", "frames", "÷ tbfast socket"),
                      _series_rows(result.series, "tbfast socket")), ""]
    for one in result.series.values():
        for error, count in one.failures.items():
            out.append("- %s: %d of the reads failed with %s (not timed)." % (one.name, count, error))
    for note in result.notes:
        out.append("- " + note)
    return "\n".join(out) + "\n"


def sections(extras):
    return "\n".join(part for part in (
        harakiri_section(extras.get("harakiri")),
        idle_section(extras.get("idle")),
        roundtrip_section(extras.get("roundtrip")),
        external_section(extras.get("external")),
        bench_livebp.section(extras["livebp"]) if extras.get("livebp") else "") if part)
