"""Live breakpoints (tbfast.livebp): what a WSGI request pays, in blocks of
requests interleaved in a shuffled order every round, one process.

The app is a Flask view rendering a 100-row table (about 100 Python calls of its
own), called in-process with a prepared environ, as a server would.  Variants:

    bare              the app alone
    bare, again       the same, timed as another variant: the noise floor (A/A)
    middleware        through LiveBreakpointMiddleware(secret=…), no livebp asked
    others, armed     the same, while another thread's request holds a breakpoint
                      armed on the app's hottest function (the line is never run)
    livebp, hot code  the request carries livebp=<a line of the hottest function
                      it never reaches> with the token: set-up, arming, every line
                      event, disarming; never reaching the line
    livebp, cold code the same for a line of a function the request never calls
    armed only, hot code
                      "livebp, hot code" without the per-request set-up (query
                      parsing, token check, resolving module:line): the mechanism
                      alone, the cost of running the request before the line
    classic settrace  the classic middleware: sys.settrace with a tracer on every
                      line of every frame, comparing file and line, per request
                      (kinder than the classic one, which calls os.path.realpath
                      on every line event)

Each block runs one variant's loop `n` times (n chosen once so a block takes a few
ms); its CPU time (this thread's: a shared machine's other load does not count) / n
is that round's µs per request; a ratio is the median of the per-round ratios of
the variant's time to bare's.

    bench_livebp.py [--rounds N]    prints the RESULTS.md section
"""

import argparse
import contextlib
import inspect
import io
import statistics
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass

import flask

import tbfast
from tbfast import livebp

import formatting
from bench_idle import serve_requests
from measure import RoundSeries, choose_n, shuffled_rounds

SECRET = "bench-secret"
MIDDLEWARE_TARGET = 1.05  # requests without livebp
ARMED_TARGET = 1.5  # the request with a breakpoint, before it reaches the line, 3.12+
VARIANTS = ("bare", "bare, again", "middleware", "others, armed", "livebp, hot code",
            "livebp, cold code", "armed only, hot code", "classic settrace")


def render_row(index):
    return "<tr><td>%d</td><td>%s</td></tr>" % (index, str(index * index))


def render_table(rows):
    if rows < 0:
        return "never"  # the "hot code" breakpoint: a line of the hottest function, never run
    return "<table>%s</table>" % "".join([render_row(index) for index in range(rows)])


def never_called():
    return "never"  # the "cold code" breakpoint


table_app = flask.Flask(__name__)


@table_app.route("/table")
def table_view():
    return render_table(int(flask.request.args.get("rows", "100")))


def line_of(function, text):
    lines, first = inspect.getsourcelines(function)
    return first + next(number for number, line in enumerate(lines) if text in line)


ENVIRON = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/table",
           "QUERY_STRING": "rows=100", "SERVER_NAME": "bench", "SERVER_PORT": "80",
           "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "wsgi.version": (1, 0),
           "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
           "wsgi.multiprocess": False, "wsgi.run_once": False}


def environ_asking(function, text):
    target = "%s:%d" % (__name__, line_of(function, text))
    query = urllib.parse.urlencode({"rows": 100, "livebp": target,
                                    "livebp_token": SECRET})
    return dict(ENVIRON, QUERY_STRING=query)


class ClassicLiveBreakpoint:
    """The classic middleware, its tracer kept cheap: sys.settrace on every line."""

    def __init__(self, app, filename, line):
        self.app, self.filename, self.line = app, filename, line

    def trace(self, frame, event, arg):
        if event == "line" and frame.f_lineno == self.line and \
                frame.f_code.co_filename == self.filename:
            raise tbfast.Breakpoint("reached")
        return self.trace

    def __call__(self, environ, start_response):
        previous = sys.gettrace()
        sys.settrace(self.trace)
        try:
            return list(self.app(environ, start_response))
        finally:
            sys.settrace(previous)


class ArmedElsewhere:
    """Another thread's request, stopped with a breakpoint armed on render_table."""

    def __init__(self):
        self.release = threading.Event()
        self.armed = threading.Event()

        def parked_app(environ, start_response):
            self.armed.set()
            self.release.wait(60)
            start_response("200 OK", [])
            return [b""]

        self.app = livebp.LiveBreakpointMiddleware(parked_app, secret=SECRET)
        self.environ = environ_asking(render_table, '"never"')
        self.thread = None

    def __enter__(self):
        self.release.clear()
        self.armed.clear()
        self.thread = threading.Thread(target=serve_requests, args=(self.app, self.environ, 1), daemon=True)
        self.thread.start()
        if not self.armed.wait(10):
            raise RuntimeError("the armed request never started")
        return self

    def __exit__(self, *exc_info):
        self.release.set()
        self.thread.join(10)


def loops():
    """{variant: (loop(n), the context it runs in, untimed)}."""
    middleware = livebp.LiveBreakpointMiddleware(table_app, secret=SECRET)
    hot = environ_asking(render_table, '"never"')
    cold = environ_asking(never_called, '"never"')
    classic = ClassicLiveBreakpoint(table_app, __file__, line_of(render_table, '"never"'))
    plain = contextlib.nullcontext()
    target = livebp.resolve("%s:%d" % (__name__, line_of(render_table, '"never"')))

    def armed_only(environ, start_response):
        probe = livebp._Probe(target, "raise", livebp._hidden_strings(environ, middleware.secret))
        return livebp._LiveRequest(table_app, probe, environ, start_response).run()

    return {
        "bare": (lambda n: serve_requests(table_app, ENVIRON, n), plain),
        "bare, again": (lambda n: serve_requests(table_app, ENVIRON, n), plain),
        "middleware": (lambda n: serve_requests(middleware, ENVIRON, n), plain),
        "others, armed": (lambda n: serve_requests(middleware, ENVIRON, n), ArmedElsewhere()),
        "livebp, hot code": (lambda n: serve_requests(middleware, hot, n), plain),
        "livebp, cold code": (lambda n: serve_requests(middleware, cold, n), plain),
        "armed only, hot code": (lambda n: serve_requests(armed_only, ENVIRON, n), plain),
        "classic settrace": (lambda n: serve_requests(classic, ENVIRON, n), plain),
    }


@dataclass
class Result:
    rounds: int
    series: dict  # variant -> Series
    mechanism: str
    python: str

    def ratio(self, variant, base="bare"):
        """The median of the per-round ratios: each round's blocks ran under the same load."""
        return statistics.median(self.round_ratios(variant, base))

    def round_ratios(self, variant, base="bare"):
        return [a / b for a, b in zip(self.series[variant].times_ns,
                                      self.series[base].times_ns)]

    def added_us(self, variant, base="bare"):
        return (self.series[variant].median - self.series[base].median) / 1000


def measure(max_rounds=200, seconds=20.0, block_ms=4.0, seed=1):
    timed = loops()
    series = {}
    for variant in VARIANTS:
        loop, context = timed[variant]
        with context:
            series[variant] = RoundSeries(variant, choose_n(loop, block_ms * 1e6, time.thread_time_ns, 4, 1 << 20))
    clock = time.thread_time_ns  # CPU time: the machine's other load does not count
    rounds = 0
    for order in shuffled_rounds(VARIANTS, seconds, max_rounds, seed):
        for variant in order:
            one = series[variant]
            loop, context = timed[variant]
            with context:
                started = clock()
                loop(one.n)
                one.times_ns.append((clock() - started) / one.n)
        rounds += 1
    return Result(rounds, series, livebp.MECHANISM, "%d.%d.%d" % sys.version_info[:3])


# ---------------------------------------------------------------- RESULTS.md

LABELS = {
    "bare": "the app alone",
    "bare, again": "the app alone, timed as another variant (A/A: the noise floor)",
    "middleware": "through the middleware, no `livebp`",
    "others, armed": "the same, while another thread's request holds a breakpoint armed "
                     "on the app's hottest function",
    "livebp, hot code": "the request with `livebp` on a line of the hottest function "
                        "it never reaches, end to end",
    "livebp, cold code": "the same, the line in a function the request never calls",
    "armed only, hot code": "\"hot code\" without the per-request set-up: the mechanism alone",
    "classic settrace": "the classic `sys.settrace` middleware (every line of every frame)",
}


def _ratio_cell(result, variant):
    low, high = deciles(result.round_ratios(variant))
    return "%s (%s–%s)" % (formatting.times(result.ratio(variant)) if result.ratio(variant) >= 1.1
                           else "%.3f×" % result.ratio(variant), "%.2f" % low, "%.2f" % high)


def deciles(values):
    if len(values) < 2:
        return values[0], values[0]
    cut = statistics.quantiles(values, n=10, method="inclusive")
    return cut[0], cut[-1]


def target_rows(result):
    """(target, got, p10–p90, verdict) rows for the headline's table."""
    rows = []
    for variant in ("middleware", "others, armed"):
        got = result.ratio(variant)
        low, high = deciles(result.round_ratios(variant))
        rows.append(("requests without livebp ≤ %.0f%% slower (%s; Python %s)" % (
            100 * (MIDDLEWARE_TARGET - 1), LABELS[variant], result.python),
            "%+.1f%%" % (100 * (got - 1)), "%+.1f%% – %+.1f%%" % (100 * (low - 1), 100 * (high - 1)),
            "met" if got <= MIDDLEWARE_TARGET else "**missed**"))
    if result.mechanism == "sys.monitoring":
        for variant in ("armed only, hot code", "livebp, hot code"):
            got = result.ratio(variant)
            low, high = deciles(result.round_ratios(variant))
            rows.append(("the request with a breakpoint ≤ %.1f× before the line (%s; Python %s)"
                         % (ARMED_TARGET, variant, result.python), "%.2f×" % got,
                         "%.2f–%.2f" % (low, high),
                         "met" if got <= ARMED_TARGET else "**missed**: %s µs of set-up a request"
                         % formatting.micros(1000 * result.added_us(variant, "armed only, hot code"))))
    return rows


def section(result):
    bare = result.series["bare"].median
    out = ["## Live breakpoints: what a request pays", "",
           "Python %s, mechanism **%s**; %d rounds of blocks interleaved in a shuffled order, "
           "CPU time of the requesting thread, "
           "one process; a Flask view renders a 100-row table, called in-process "
           "(`benchmarks/bench_livebp.py`). Ratios: the median of the per-round ratios of the "
           "variant's time to the bare app's, and their p10–p90."
           % (result.python, result.mechanism, result.rounds), ""]
    rows = [(LABELS[variant], formatting.micros(result.series[variant].median),
             _ratio_cell(result, variant)) for variant in VARIANTS]
    out.append(formatting.table(("request", "µs", "× the bare app"), rows))
    out += ["",
            "- Per-request set-up of a `livebp` request (query, token, resolving module:line): "
            "%s µs (\"livebp, hot code\" minus \"armed only\")."
            % formatting.micros(1000 * result.added_us("livebp, hot code", "armed only, hot code")),
            "- The classic approach slows every traced request %s (%s µs more than the bare "
            "app's %s µs)." % (formatting.times(result.ratio("classic settrace")),
                               formatting.micros(1000 * result.added_us("classic settrace")),
                               formatting.micros(bare)),
            ""]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    result = measure(max_rounds=args.rounds, seconds=args.seconds)
    print(section(result))
    print(formatting.table(("target", "got", "p10–p90", "verdict"), target_rows(result)))


if __name__ == "__main__":
    main()
