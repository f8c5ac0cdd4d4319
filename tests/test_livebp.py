"""Live breakpoints and snapshots (tbfast.livebp) in real Flask apps, behind real
Werkzeug servers on 127.0.0.1 (the test Client where no socket is needed).

The breakpoint lines are found in this file's source by their marker comments;
the truth a snapshot is compared with is what traceback.extract_stack sees at
that same line."""

import functools
import http.client
import importlib.util
import json
import re
import subprocess
import sys
import threading
import traceback
import urllib.parse

import pytest

import tbfast
from tbfast import livebp
from tbfast.saferepr import MASKED, safe_repr
from tbfast.wsgi import LiveBreakpointMiddleware

flask = pytest.importorskip("flask")
serving = pytest.importorskip("werkzeug.serving")
from werkzeug.debug import DebuggedApplication  # noqa: E402 - after the importorskip
from werkzeug.test import Client, EnvironBuilder  # noqa: E402

SECRET = "s3cret-token"
TRUTH = {}  # what each target line saw, by the test that asked
MODULE = __name__
MODULE_LEVEL = True  # module level

# A comment line: not executable.


def line_of(marker):
    """The line of this file that ends with `# <marker>`."""
    with open(__file__) as source:
        lines = [number for number, text in enumerate(source, 1)
                 if text.rstrip().endswith("# " + marker)]
    assert len(lines) == 1, marker
    return lines[0]


def target_line(name):
    return line_of("livebp: " + name)


def spec(name):
    """"module:line" of the line marked `# livebp: <name>`."""
    return "%s:%d" % (MODULE, target_line(name))


def compute(n):
    api_token = "do-not-show"
    total = n * 2
    TRUTH["compute"] = traceback.extract_stack()  # livebp: compute
    return total + len(api_token)


def gated(name, gate, wait):
    passed = "before"
    if wait:
        gate.wait(10)
    TRUTH.setdefault(name, []).append(threading.get_ident())  # livebp: gated
    return passed


def streamed(count):
    for index in range(count):
        chunk = ("chunk %d\n" % index).encode()  # livebp: streamed
        yield chunk


def failing(n):
    if n > 0:
        raise ValueError("failing before the line, n=%d" % n)
    return n  # livebp: unreachable


def holds_secrets(environ):
    auth, pwd, jwt, bearer = "value-1-auth", "value-2-pwd", "value-3-jwt", "value-4-bearer"
    dsn, database_url = "postgres://u:value-5-dsn@db/x", "value-6-database-url"
    passphrase, privkey, creds = "value-7-passphrase", "value-8-privkey", "value-9-creds"
    config = {"password": "value-10-in-a-dict", "Authorization": "value-11-in-a-dict",
              "plain": "shown-in-a-dict"}
    # Neutral names: only their values can give them away.
    header, crumbs = environ.get("HTTP_AUTHORIZATION"), environ.get("HTTP_COOKIE")
    uri, raw_uri, query = environ.get("REQUEST_URI"), environ.get("RAW_URI"), environ["QUERY_STRING"]
    TRUTH["secrets"] = dict(locals())  # livebp: secrets
    return "done"


def running_code():
    """The code object of the caller's frame: the truth a resolved target is compared with."""
    return sys._getframe(1).f_code


def logged(function):
    @functools.wraps(function)
    def wrapper(*args):
        return function(*args)
    return wrapper


class Shapes:
    @staticmethod
    def static():
        return running_code()  # livebp: static

    @property
    def prop(self):
        return running_code()  # livebp: property

    def method(self):
        def inner():
            return running_code()  # livebp: nested
        return inner()


@logged
def wrapped():
    return running_code()  # livebp: wrapped


def only_in_a_list():
    return running_code()  # livebp: gc


HIDDEN = [only_in_a_list]
del only_in_a_list  # the module's namespace no longer names it


def armed_state():
    """Whether livebp traces this thread, and how many sys.monitoring tool ids it holds."""
    tracer = sys.gettrace()
    tools = [sys.monitoring.get_tool(tool) for tool in range(6)] if hasattr(sys, "monitoring") \
        else []
    return {"tracing": getattr(tracer, "__module__", None) == livebp.__name__,
            "tools": tools.count("tbfast-livebp")}


NOTHING_ARMED = {"tracing": False, "tools": 0}


def make_flask_app():
    app = flask.Flask(__name__)
    app.config["PROPAGATE_EXCEPTIONS"] = True  # the debugger around the app sees Breakpoint
    gate = threading.Event()
    app.gate = gate

    @app.route("/compute")
    def compute_view():
        return {"result": compute(20), "armed": armed_state()}

    @app.route("/gated/<name>")
    def gated_view(name):
        wait = flask.request.args.get("wait") == "1"
        return {"result": gated(name, gate, wait), "ident": threading.get_ident(),
                "armed": armed_state()}

    @app.route("/stream")
    def stream_view():
        return flask.Response(streamed(3), mimetype="text/plain")

    @app.route("/failing")
    def failing_view():
        return str(failing(1))

    @app.route("/secrets")
    def secrets_view():
        return holds_secrets(flask.request.environ)

    @app.route("/state")
    def state_view():
        return armed_state()

    return app


def wrap(app, **options):
    app.wsgi_app = LiveBreakpointMiddleware(app.wsgi_app, **options)
    return app


@pytest.fixture
def serve():
    """serve(wsgi_app) -> port of a threaded Werkzeug server on 127.0.0.1."""
    servers = []

    def start(application):
        httpd = serving.make_server("127.0.0.1", 0, application, threaded=True)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        servers.append((httpd, thread))
        return httpd.server_port

    yield start
    for httpd, thread in servers:
        httpd.shutdown()
        thread.join(10)
        httpd.server_close()


@pytest.fixture(autouse=True)
def nothing_armed_after():
    TRUTH.clear()
    yield
    assert armed_state() == NOTHING_ARMED


def get(port, path, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def query(target, token=SECRET, **extra):
    items = {"livebp": target, **extra}
    if token is not None:
        items["livebp_token"] = token
    return urllib.parse.urlencode(items)


def frames_of(summaries):
    """traceback.extract_stack's frames, innermost first, as a snapshot lists them."""
    return [(s.filename, s.lineno, s.name, s.line or None) for s in reversed(summaries)]


def snapshot_frames(snapshot):
    return [(f["file"], f["line"], f["function"], f["source"]) for f in snapshot["frames"]]


# ---------------------------------------------------------------- raise

FRAME_HEADING = re.compile(r'<cite class="filename">"([^"]*)"</cite>,\s*line <em class="line">(\d+)'
                           r'</em>,\s*in <code class="function">([^<]*)</code>')


def test_raise_opens_the_werkzeug_debugger_at_the_line(serve):
    port = serve(DebuggedApplication(wrap(make_flask_app(), secret=SECRET), evalex=False))
    status, headers, body = get(port, "/compute?" + query(spec("compute")))
    page = body.decode()
    assert status == 500 and "Breakpoint" in page
    frames = FRAME_HEADING.findall(page)
    assert frames[-1] == (__file__, str(target_line("compute")), "compute")
    assert not any(path == livebp.__file__ for path, _, _ in frames[-2:])
    assert "compute" not in TRUTH  # stopped before the line ran
    # The next request, without livebp, runs the line and completes.
    status, _, body = get(port, "/compute")
    assert status == 200 and json.loads(body) == {"result": 51, "armed": NOTHING_ARMED}


def test_raise_by_header_with_the_token_in_a_header():
    client = Client(wrap(make_flask_app(), secret=SECRET))
    with pytest.raises(tbfast.Breakpoint) as raised:
        client.get("/compute", headers={"X-Tbfast-Livebp": spec("compute"),
                                        "X-Tbfast-Livebp-Token": SECRET})
    innermost = traceback.extract_tb(raised.value.__traceback__)[-1]
    assert (innermost.filename, innermost.lineno, innermost.name) == (
        __file__, target_line("compute"), "compute")


# ---------------------------------------------------------------- snapshot

def test_snapshot_holds_the_frames_and_safe_locals_at_the_line(serve, tbfast_log):
    port = serve(wrap(make_flask_app(), secret=SECRET, action="snapshot"))
    status, headers, body = get(port, "/compute?" + query(spec("compute")))
    assert status == 200 and json.loads(body)["result"] == 51
    truth = frames_of(TRUTH["compute"])
    logged = [record.tbfast_snapshot for record in tbfast_log.records
              if hasattr(record, "tbfast_snapshot")]
    assert len(logged) == 1
    snapshot = logged[0]
    assert snapshot_frames(snapshot) == truth
    assert snapshot["at"] == spec("compute")
    assert snapshot["frames"][0]["locals"] == {
        "n": safe_repr.repr(20), "api_token": MASKED, "total": safe_repr.repr(40)}
    # The header: the same snapshot, its outermost frames left out to fit the bound.
    in_header = json.loads(headers["X-Tbfast-Snapshot"])
    assert len(headers["X-Tbfast-Snapshot"]) <= livebp.SNAPSHOT_HEADER_LIMIT
    kept = len(in_header["frames"])
    assert kept >= 1 and in_header["frames_omitted"] == len(truth) - kept
    assert in_header["frames"] == snapshot["frames"][:kept]
    assert headers["X-Tbfast-Livebp"].startswith("snapshot %s at %s" % (snapshot["id"],
                                                                       spec("compute")))


def test_snapshot_in_a_streamed_body_before_the_first_chunk(tbfast_log):
    client = Client(wrap(make_flask_app(), debug=True, action="snapshot"))
    response = client.get("/stream?" + query(spec("streamed"), token=None))
    assert response.get_data() == b"chunk 0\nchunk 1\nchunk 2\n"
    response.close()
    snapshot = json.loads(response.headers["X-Tbfast-Snapshot"])
    assert snapshot["frames"][0]["function"] == "streamed"
    assert snapshot["frames"][0]["locals"] == {"count": "3", "index": "0"}


def test_a_response_iterated_by_another_thread(tbfast_log):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return streamed(2)

    middleware = LiveBreakpointMiddleware(app, debug=True, action="snapshot")
    statuses = []
    result = middleware(EnvironBuilder(query_string={"livebp": spec("streamed")}).get_environ(),
                        lambda status, headers, exc_info=None: statuses.append((status, headers)))
    assert statuses == []  # held until the first chunk
    consumed = {}

    def consume():
        consumed["chunks"] = list(result)
        result.close()
        consumed["armed"] = armed_state()
        consumed["ident"] = threading.get_ident()

    consumer = threading.Thread(target=consume)
    consumer.start()
    consumer.join(10)
    assert consumed["chunks"] == [b"chunk 0\n", b"chunk 1\n"]
    assert consumed["armed"] == NOTHING_ARMED
    [(status, headers)] = statuses
    snapshot = json.loads(dict(headers)["X-Tbfast-Snapshot"])
    assert snapshot["thread"]["ident"] == consumed["ident"]
    assert snapshot["frames"][0]["function"] == "streamed"


def test_a_line_never_reached_says_so():
    client = Client(wrap(make_flask_app(), secret=SECRET, action="snapshot"))
    response = client.get("/state?" + query(spec("compute")))
    assert response.status_code == 200
    assert response.headers["X-Tbfast-Livebp"] == "not reached " + spec("compute")
    assert "X-Tbfast-Snapshot" not in response.headers


def test_locations_disabled_by_one_request_fire_for_the_next():
    # sys.monitoring.DISABLE is per location: the first request disables the
    # lines of compute() before its target; the second targets one of them.
    client = Client(wrap(make_flask_app(), debug=True, action="snapshot"))
    first = client.get("/compute?livebp=%s:%d" % (MODULE, target_line("compute") + 1))
    second = client.get("/compute?livebp=" + spec("compute"))
    for response in (first, second):
        assert response.headers["X-Tbfast-Livebp"].startswith("snapshot ")


# ---------------------------------------------------------------- security and bad input

@pytest.mark.parametrize("options, token", [
    ({"secret": SECRET}, "wrong"),
    ({"secret": SECRET}, None),
    ({"secret": SECRET}, SECRET + "x"),
    ({}, SECRET),  # no secret and no debug: off
])
def test_a_wrong_or_missing_token_is_ignored(serve, tbfast_log, options, token):
    port = serve(wrap(make_flask_app(), action="raise", **options))
    status, headers, body = get(port, "/compute?" + query(spec("compute"), token=token))
    assert status == 200
    assert json.loads(body) == {"result": 51, "armed": NOTHING_ARMED}
    assert "compute" in TRUTH and "X-Tbfast-Livebp" not in headers
    assert [record.getMessage() for record in tbfast_log.records] == [
        "livebp ignored: " + ("missing or wrong token" if options else
                              "disabled (no secret, debug=False)")]


def test_the_token_is_taken_out_of_the_query_the_app_sees():
    seen = []

    def app(environ, start_response):
        seen.append(environ["QUERY_STRING"])
        start_response("200 OK", [])
        return [b""]

    Client(LiveBreakpointMiddleware(app, secret=SECRET)).get(
        "/?a=1&" + query(spec("compute")) + "&b=2")
    assert seen == ["a=1&" + urllib.parse.urlencode({"livebp": spec("compute")}) + "&b=2"]


@pytest.mark.parametrize("target, message", [
    ("no_such_module_xyz:3", "module no_such_module_xyz is not imported"),
    ("/etc/passwd:1", "livebp must be module:line"),
    ("../secrets.py:1", "livebp must be module:line"),
    (MODULE, "livebp must be module:line"),
    (MODULE + ":x", "livebp must be module:line"),
    (MODULE + ":\u00b2", "livebp must be module:line"),
    ("%s:%d" % (MODULE, line_of("A comment line: not executable.")), "is not an executable line"),
    ("%s:%d" % (MODULE, line_of("A comment line: not executable.") - 1), "is not an executable line"),
    ("%s:99999" % MODULE, "is not an executable line"),
    ("%s:%d" % (MODULE, line_of("module level")), "in a module or class body"),
])
def test_bad_module_or_line_is_a_clear_400(target, message):
    client = Client(wrap(make_flask_app(), secret=SECRET))
    response = client.get("/compute?" + query(target))
    assert response.status_code == 400
    body = response.get_data(as_text=True)
    assert body.startswith("tbfast livebp: ") and message in body
    assert "compute" not in TRUTH  # the app never ran


SECRET_VALUES = tuple("value-%d-" % number for number in range(1, 12))
CREDENTIALS = {"Authorization": "Bearer bearer-credential-sent",
               "Cookie": "session=session-cookie-sent; theme=dark"}


@pytest.mark.parametrize("by", ["query", "header"])
def test_a_snapshot_shows_no_token_credential_or_secret_value(serve, tbfast_log, by):
    port = serve(wrap(make_flask_app(), secret=SECRET, action="snapshot"))
    if by == "query":
        status, headers, _ = get(port, "/secrets?x=1&" + query(spec("secrets")), CREDENTIALS)
    else:
        status, headers, _ = get(port, "/secrets?x=1", dict(
            CREDENTIALS, **{"X-Tbfast-Livebp": spec("secrets"), "X-Tbfast-Livebp-Token": SECRET}))
    assert status == 200 and headers["X-Tbfast-Livebp"].startswith("snapshot ")
    (record,) = [record for record in tbfast_log.records if hasattr(record, "tbfast_snapshot")]
    written = "\n".join((record.getMessage(), json.dumps(record.tbfast_snapshot),
                         headers["X-Tbfast-Livebp"], headers["X-Tbfast-Snapshot"]))
    seen = TRUTH["secrets"]  # what the app saw: the token taken out, the credentials not
    texts = [value for value in list(seen.values()) + list(seen["environ"].values())
             if isinstance(value, str)]
    assert not any(SECRET in text for text in texts)
    assert seen["header"] == CREDENTIALS["Authorization"]
    assert seen["query"] == "x=1" + ("&" + urllib.parse.urlencode(
        {"livebp": spec("secrets")}) if by == "query" else "")
    assert seen["uri"] == seen["raw_uri"] == "/secrets?" + seen["query"]
    for hidden in (SECRET, "bearer-credential-sent", "session-cookie-sent", *SECRET_VALUES):
        assert hidden not in written, hidden
    shown = record.tbfast_snapshot["frames"][0]["locals"]
    assert "shown-in-a-dict" in shown["config"] and shown["query"] == repr(seen["query"])


def test_only_imported_modules_are_resolved_unless_import_is_allowed():
    assert "this" not in sys.modules and "tabnanny" not in sys.modules
    client = Client(wrap(make_flask_app(), secret=SECRET))
    response = client.get("/compute?" + query("this:1"))
    assert response.status_code == 400 and "module this is not imported" in response.get_data(True)
    assert "this" not in sys.modules
    with open(importlib.util.find_spec("tabnanny").origin) as source:  # not imported: read
        line = [number for number, text in enumerate(source, 1)
                if "if os.path.isdir(file) and not os.path.islink(file):" in text][0]
    client = Client(wrap(make_flask_app(), secret=SECRET, allow_import=True))
    try:
        response = client.get("/compute?" + query("tabnanny:%d" % line))
        assert response.headers["X-Tbfast-Livebp"] == "not reached tabnanny:%d" % line
    finally:
        sys.modules.pop("tabnanny", None)


@pytest.mark.parametrize("name, run", [
    ("static", Shapes.static),
    ("property", lambda: Shapes().prop),
    ("nested", Shapes().method),
    ("wrapped", wrapped),
    ("gc", HIDDEN[0]),
])
def test_a_line_resolves_to_the_code_object_that_runs_it(name, run):
    assert livebp.resolve(spec(name)).code is run()


def test_importing_tbfast_imports_no_web_framework():
    code = ("import sys, tbfast; print(sorted(m for m in ('werkzeug', 'flask', 'tbfast.livebp') "
            "if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "[]"


# ---------------------------------------------------------------- other requests, exceptions

def test_other_requests_run_the_line_normally_while_one_is_stopped(serve, tbfast_log):
    app = wrap(make_flask_app(), secret=SECRET, action="snapshot")
    port = serve(app)
    stopped = {}
    asker = threading.Thread(target=lambda: stopped.update(
        zip(("status", "headers", "body"), get(port, "/gated/asker?wait=1&" + query(spec("gated")))))
    )
    asker.start()
    try:
        others = [get(port, "/gated/other") for _ in range(20)]
        assert asker.is_alive()  # still stopped on the gate, armed
    finally:
        app.gate.set()
        asker.join(20)
    assert [status for status, _, _ in others] == [200] * 20
    assert all("X-Tbfast-Livebp" not in headers for _, headers, _ in others)
    assert len(TRUTH["other"]) == 20  # each ran the target line
    asked = json.loads(stopped["body"])
    assert stopped["status"] == 200 and asked["result"] == "before"
    logged = [record.tbfast_snapshot for record in tbfast_log.records
              if hasattr(record, "tbfast_snapshot")]
    assert len(logged) == 1 and logged[0]["thread"]["ident"] == asked["ident"]
    assert logged[0]["frames"][0]["locals"]["name"] == "'asker'"


@pytest.mark.parametrize("action", livebp.ACTIONS)
def test_nothing_is_left_armed_after_an_exception(serve, action):
    port = serve(wrap(make_flask_app(), secret=SECRET, action=action))
    status, _, _ = get(port, "/failing?" + query(spec("unreachable")))
    assert status == 500
    status, _, body = get(port, "/state")
    assert status == 200 and json.loads(body) == NOTHING_ARMED


def test_the_app_sees_the_breakpoint_armed_only_during_its_request():
    client = Client(wrap(make_flask_app(), secret=SECRET, action="snapshot"))
    armed = client.get("/state?" + query(spec("compute"))).get_json()
    if hasattr(sys, "monitoring"):
        assert armed == {"tracing": False, "tools": 1}
    else:
        assert armed == {"tracing": True, "tools": 0}
    assert client.get("/state").get_json() == NOTHING_ARMED


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="action must be one of raise, snapshot"):
        LiveBreakpointMiddleware(None, secret=SECRET, action="stop")
    with pytest.raises(TypeError, match="secret must be a non-empty str or bytes"):
        LiveBreakpointMiddleware(None, secret="")
