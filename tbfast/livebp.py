"""Live breakpoints and snapshots for WSGI apps, at no cost to other requests.

    app = tbfast.wsgi.LiveBreakpointMiddleware(app, secret="…", action="raise")

A request carrying ``livebp=module:line`` (query parameter, or the
``X-Tbfast-Livebp`` header) and the secret (``livebp_token`` query parameter, or
the ``X-Tbfast-Livebp-Token`` header) acts when *its own thread* reaches that
line: ``raise`` raises tbfast.Breakpoint there (Werkzeug's DebuggedApplication
then opens on that frame); ``snapshot`` records the stack and the safe locals
there without stopping, logs them on the ``tbfast`` logger and returns them in
response headers.  The module must be imported already (``allow_import=True``
lets a request import one).

The secret goes nowhere: the app sees the request without it (its header, and
its query parameter in QUERY_STRING, RAW_URI and REQUEST_URI, are taken out),
and a snapshot shows neither it, nor the values of the request's credential
headers (those whose names the mask words match: Authorization, Cookie...) and
secret-named cookies, wherever they turn up in it: they read ``********``.

Only the target code object is watched, and only while the request's code runs:
on 3.12+ through sys.monitoring LINE events set on that one code object (a tool
id claimed for the time and freed after); on 3.11 through a trace function set
in the requesting thread only, whose global part returns None for every other
code object, so no line event fires anywhere else.  A request without
``livebp`` costs one substring test and one dict lookup.
"""

import functools
import gc
import hmac
import importlib
import importlib.util
import itertools
import json
import linecache
import logging
import os
import re
import sys
import threading
import types
import urllib.parse

import tbfast
from tbfast.saferepr import MASKED, safe_repr

__all__ = ["BadRequest", "Unavailable", "Target", "resolve", "take_snapshot", "snapshot_header",
           "LiveBreakpointMiddleware", "without_token", "MECHANISM"]

logger = logging.getLogger("tbfast")

ACTIONS = ("raise", "snapshot")
QUERY_KEY = "livebp"
TOKEN_QUERY_KEY = "livebp_token"
HEADER_KEY = "HTTP_X_TBFAST_LIVEBP"
TOKEN_HEADER_KEY = "HTTP_X_TBFAST_LIVEBP_TOKEN"
STATUS_HEADER = "X-Tbfast-Livebp"
SNAPSHOT_HEADER = "X-Tbfast-Snapshot"
SNAPSHOT_HEADER_LIMIT = 8000  # bytes of JSON in one header; proxies refuse much more
MAX_SNAPSHOT_FRAMES = 200
SPEC_LIMIT = 300  # characters of "module:line"
HIDDEN_MIN_LENGTH = 6  # a credential's value shorter than this is masked only by its name
MONITORING_TOOL_IDS = (2, 3, 4, 5)  # 0 and 1 belong to debuggers and coverage tools
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\Z")
_CO_OPTIMIZED = 0x1  # set on functions, not on module or class bodies
_snapshot_ids = itertools.count(1)


class BadRequest(ValueError):
    """A livebp request that cannot be armed; its message is the response's body."""

    status = "400 Bad Request"


class Unavailable(BadRequest):
    status = "503 Service Unavailable"


# ---------------------------------------------------------------- where: module:line → code object

class Target:
    """The live code object that holds an executable line of an importable module."""

    def __init__(self, module_name, line, code):
        self.module_name, self.line, self.code = module_name, line, code

    def __str__(self):
        return "%s:%d" % (self.module_name, self.line)


def resolve(spec, allow_import=False):
    """``"package.module:line"`` → Target, or BadRequest saying what is wrong; a module
    not imported yet is imported only with `allow_import`."""
    module_name, colon, line_text = spec.strip().rpartition(":")
    is_number = line_text.isascii() and line_text.isdigit()  # not "²", which int() refuses
    if not colon or not _MODULE_NAME.match(module_name) or not is_number:
        raise BadRequest("livebp must be module:line, such as myapp.views:42, not %r"
                         % spec[:SPEC_LIMIT])
    line = int(line_text)
    module = sys.modules.get(module_name)
    if module is None:
        if not allow_import:
            raise BadRequest("module %s is not imported: livebp resolves only the modules the "
                             "app has imported (allow_import=True imports others)" % module_name)
        module = _import(module_name)
    filename = getattr(module, "__file__", None)
    lines = linecache.getlines(filename, module.__dict__) if filename else []
    if not lines:
        raise BadRequest("module %s has no Python source to set a breakpoint in" % module_name)
    holder = _holder(filename, lines, line)
    if holder is None:
        raise BadRequest("line %d of %s (%s) is not an executable line"
                         % (line, module_name, filename))
    if not holder.co_flags & _CO_OPTIMIZED:
        raise BadRequest("line %d of %s is in a module or class body, which ran when it was "
                         "imported: pick a line inside a function" % (line, module_name))
    code = _live_code(module, filename, holder)
    if code is None:
        raise BadRequest("line %d of %s is in %s, which no live function of the module runs"
                         % (line, module_name, holder.co_qualname))
    return Target(module_name, line, code)


_holders = {}  # (file, line) -> (linecache's lines, the code object holding the line)
MAX_HOLDERS = 256


def _holder(filename, lines, line):
    """The innermost code object holding `line`, remembered while linecache
    keeps the same lines for the file."""
    known = _holders.get((filename, line))
    if known is not None and known[0] is lines:
        return known[1]
    try:
        compiled = _compiled("".join(lines), filename)
    except (SyntaxError, ValueError) as error:  # the file changed on disk since
        raise BadRequest("%s does not compile: %s" % (filename, error)) from None
    holder = _innermost_holding(compiled, line)
    if len(_holders) >= MAX_HOLDERS:
        _holders.clear()
    _holders[(filename, line)] = (lines, holder)
    return holder


@functools.lru_cache(maxsize=16)
def _compiled(source, filename):
    """The module compiled anew, for its line tables (a 1500-line module takes ms)."""
    return compile(source, filename, "exec", dont_inherit=True)


def _import(module_name):
    """The module, only if it is importable by name: never a path."""
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise BadRequest("no importable module named %s" % module_name)
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if found.origin and main_file and os.path.realpath(found.origin) == os.path.realpath(main_file):
        return main  # the script run as __main__: importing it again would run it twice
    try:
        return importlib.import_module(module_name)
    except Exception as error:  # the module's own code failed: say so, keep serving
        raise BadRequest("importing %s failed: %s: %s"
                         % (module_name, type(error).__name__, error)) from None


def _code_tree(code):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_tree(const)


def executable_lines(code):
    """The lines of `code` itself that fire line events.  A function's first
    range is its prologue (RESUME), on the `def` or decorator line: no event."""
    ranges = list(code.co_lines())
    if code.co_flags & _CO_OPTIMIZED and ranges:
        prologue_end = ranges[0][1]
        ranges = [r for r in ranges if r[0] >= prologue_end]
    return {line for _, _, line in ranges if line is not None}


def _innermost_holding(code, line):
    """The most deeply nested code object whose own executable lines hold `line`."""
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            inner = _innermost_holding(const, line)
            if inner is not None:
                return inner
    return code if line in executable_lines(code) else None


def _live_code(module, filename, compiled):
    """The code object the running program uses for `compiled`: looked up by its
    qualified name in the module (through staticmethod, property and what
    functools.wraps wrapped), else among every live function of that file."""
    key = (compiled.co_qualname, compiled.co_firstlineno)
    for code in itertools.chain(_codes_named(module, compiled.co_qualname, filename),
                                _gc_codes(filename)):
        for candidate in _code_tree(code):
            if (candidate.co_qualname, candidate.co_firstlineno) == key:
                return candidate
    return None


def _codes_named(module, qualname, filename):
    """The code objects of what `qualname` names in `module`; for a nested
    function, those of the outermost function, which hold it."""
    value = module
    for part in qualname.partition(".<locals>.")[0].split("."):
        value = getattr(value, "__dict__", {}).get(part)  # no descriptor runs
    pending = [value]
    while pending:
        value = pending.pop()
        if isinstance(value, (staticmethod, classmethod)):
            pending.append(value.__func__)
        elif isinstance(value, property):
            pending.extend((value.fget, value.fset, value.fdel))
        elif isinstance(value, types.FunctionType):
            if value.__code__.co_filename == filename:
                yield value.__code__
            pending.append(getattr(value, "__wrapped__", None))


def _gc_codes(filename):
    """A whole-heap scan: only when the module does not name the function."""
    for item in gc.get_objects():
        if type(item) is types.FunctionType and item.__code__.co_filename == filename:
            yield item.__code__


# ---------------------------------------------------------------- when: the line is reached

class _Probe:
    """One request's breakpoint: fires once, in the requesting thread only."""

    def __init__(self, target, action, hidden):
        self.target, self.action, self.hidden = target, action, hidden
        self.ident = None
        self.snapshot = None
        self.fired = False

    def hit(self, frame):
        """The requesting thread is at the target line of `frame`."""
        self.fired = True
        if self.action == "raise":
            raise tbfast.Breakpoint("livebp: %s reached" % self.target)
        self.snapshot = take_snapshot(frame, self.target, self.hidden)


class _MonitoringArm:
    """3.12+: LINE events on the target code object only, for one stretch of
    the request's code: arm() claims a sys.monitoring tool id and sets them,
    disarm() clears them and frees the id, so nothing outlives the stretch."""

    def __init__(self, probe):
        self.probe, self.tool = probe, None
        code, line = probe.target.code, probe.target.line
        disable, get_ident = sys.monitoring.DISABLE, threading.get_ident

        def on_line(event_code, event_line):
            if event_line != line or event_code is not code:
                return disable  # this location, for this tool, until the next arm
            if probe.fired:
                return disable
            if get_ident() == probe.ident:
                probe.hit(sys._getframe(1))
            return None

        self.on_line = on_line

    def arm(self):
        monitoring = sys.monitoring
        for tool in MONITORING_TOOL_IDS:
            try:
                monitoring.use_tool_id(tool, "tbfast-livebp")
            except ValueError:  # a profiler's, or another livebp request's
                continue
            self.tool = tool
            try:
                monitoring.register_callback(tool, monitoring.events.LINE, self.on_line)
                monitoring.set_local_events(tool, self.probe.target.code, monitoring.events.LINE)
            except BaseException:
                self.disarm()
                raise
            return
        raise Unavailable("no free sys.monitoring tool id (%s are all in use): try again later"
                          % ", ".join(map(str, MONITORING_TOOL_IDS)))

    def disarm(self):
        monitoring, tool, self.tool = sys.monitoring, self.tool, None
        try:
            monitoring.set_local_events(tool, self.probe.target.code, 0)
            monitoring.register_callback(tool, monitoring.events.LINE, None)
        finally:
            monitoring.free_tool_id(tool)


class _TraceArm:
    """3.11: a trace function set in the requesting thread only, around each
    stretch of the request's code; its global part returns None for every code
    object but the target, so no line event fires anywhere else."""

    def __init__(self, probe):
        self.probe, self.previous = probe, None
        code, line = probe.target.code, probe.target.line

        def on_line(frame, event, arg):
            if event == "line" and frame.f_lineno == line and not probe.fired:
                probe.hit(frame)
            return on_line

        def on_call(frame, event, arg):
            return on_line if frame.f_code is code else None

        self.on_call = on_call

    def arm(self):
        self.previous = sys.gettrace()  # a debugger's or coverage's: put back after
        sys.settrace(self.on_call)

    def disarm(self):
        sys.settrace(self.previous)


_Arm = _MonitoringArm if hasattr(sys, "monitoring") else _TraceArm
MECHANISM = "sys.monitoring" if _Arm is _MonitoringArm else "sys.settrace"


def _hide_probe_frames(traceback):
    """Cut livebp's own frames (the callback that raised) from the end of a
    Breakpoint's traceback: a debugger's innermost frame is then the one at the line."""
    entries = []
    while traceback is not None:
        entries.append(traceback)
        traceback = traceback.tb_next
    inner = len(entries)
    ours = _Probe.hit.__code__.co_filename  # as compiled, whatever __file__ says
    while inner > 1 and entries[inner - 1].tb_frame.f_code.co_filename == ours:
        inner -= 1
    if inner < len(entries):
        entries[inner - 1].tb_next = None


# ---------------------------------------------------------------- snapshot

def take_snapshot(frame, target, hidden=()):
    """The stack at `frame`, innermost first, each frame with its safe locals:
    the keys of tbfast's json dump frames, plus "locals"; the strings in `hidden`
    read MASKED wherever they occur."""
    frames = []
    while frame is not None and len(frames) < MAX_SNAPSHOT_FRAMES:
        code = frame.f_code
        source = linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals).strip()
        frames.append({"file": code.co_filename, "line": frame.f_lineno,
                       "function": code.co_name, "source": source or None,
                       "locals": safe_repr.locals(frame.f_locals)})
        frame = frame.f_back
    frames = _redacted(frames, hidden)
    thread = threading.current_thread()
    snapshot = {"tbfast_snapshot": 1, "id": "%d-%d" % (os.getpid(), next(_snapshot_ids)),
                "at": str(target), "thread": {"ident": threading.get_ident(),
                                              "name": thread.name},
                "frames": frames, "frames_omitted": 0}
    logger.warning("livebp snapshot %s at %s in thread %s:\n%s", snapshot["id"], target,
                   thread.name, _snapshot_text(frames),
                   extra={"tbfast_snapshot": snapshot})
    return snapshot


def _redacted(value, hidden):
    """`value` (str, or lists and dicts of them) with each string of `hidden` masked."""
    if isinstance(value, str):
        for text in hidden:
            value = value.replace(text, MASKED.strip("'"))
        return value
    if isinstance(value, dict):
        return {_redacted(key, hidden): _redacted(item, hidden) for key, item in value.items()}
    if isinstance(value, list):
        return [_redacted(item, hidden) for item in value]
    return value


def _hidden_strings(environ, secret):
    """What no snapshot of this request may show: the secret as it may have come
    (raw, percent-encoded, escaped as a repr escapes it), the values of the request's
    credential headers (the HTTP_* whose names safe_repr masks), and of its cookies
    with such names, those of HIDDEN_MIN_LENGTH characters or more (a shorter one
    would mask every place its characters occur); longest first, so that no part of
    one is left."""
    credentials = set()
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str) and safe_repr.is_masked(key):
            credentials.add(value)
            if "AUTHORIZATION" in key:
                credentials.add(value.partition(" ")[2])  # of "Bearer <credentials>"
    for cookie in environ.get("HTTP_COOKIE", "").split(";"):
        name, _, value = cookie.partition("=")
        if safe_repr.is_masked(name.strip()):
            credentials.add(value.strip())
    texts = {text for text in credentials if len(text) >= HIDDEN_MIN_LENGTH}
    if secret is not None:
        plain = secret.decode("utf-8", "surrogateescape")
        texts.update((plain, repr(plain)[1:-1], repr(secret)[2:-1], urllib.parse.quote(plain),
                      urllib.parse.quote(plain, safe=""), urllib.parse.quote_plus(plain)))
    return sorted(texts, key=len, reverse=True)


def _snapshot_text(frames):
    lines = []
    for frame in reversed(frames):
        lines.append('  File "%s", line %d, in %s' % (frame["file"], frame["line"],
                                                      frame["function"]))
        if frame["source"]:
            lines.append("    " + frame["source"])
        lines.extend("      %s = %s" % item for item in frame["locals"].items())
    return "\n".join(lines)


def snapshot_header(snapshot):
    """The snapshot as one line of JSON of at most SNAPSHOT_HEADER_LIMIT bytes:
    the outermost frames are left out first, and counted."""
    frames = snapshot["frames"]

    def keeping(count):
        return json.dumps(dict(snapshot, frames=frames[:count], frames_omitted=len(frames) - count),
                          separators=(",", ":"))

    fits, too_many = 0, len(frames) + 1  # a binary search: a frame's JSON can be 1 KB
    while too_many - fits > 1:
        middle = (fits + too_many) // 2
        if len(keeping(middle)) <= SNAPSHOT_HEADER_LIMIT:
            fits = middle
        else:
            too_many = middle
    text = keeping(fits)
    if len(text) <= SNAPSHOT_HEADER_LIMIT:
        return text
    return json.dumps({"tbfast_snapshot": 1, "id": snapshot["id"], "at": snapshot["at"][:SPEC_LIMIT],
                       "frames": [], "frames_omitted": len(frames)})


# ---------------------------------------------------------------- the middleware

class LiveBreakpointMiddleware:
    """``LiveBreakpointMiddleware(app, secret=None, action="raise", debug=False,
    allow_import=False)``.

    Off unless `secret` is set (each request must carry it) or debug=True (for
    local development only: any request may arm a breakpoint).  A request may name
    only a module already imported, unless allow_import=True.
    """

    def __init__(self, app, secret=None, action="raise", debug=False, allow_import=False):
        if action not in ACTIONS:
            raise ValueError("action must be one of %s, not %r" % (", ".join(ACTIONS), action))
        if secret is not None:
            if isinstance(secret, str):
                secret = secret.encode("utf-8")
            if not isinstance(secret, bytes) or not secret:
                raise TypeError("secret must be a non-empty str or bytes")
        self.app, self.secret, self.action, self.debug = app, secret, action, bool(debug)
        self.allow_import = bool(allow_import)
        self.enabled = self.debug or secret is not None

    def __call__(self, environ, start_response):
        # The fast path: what a request without livebp pays.
        if QUERY_KEY not in environ.get("QUERY_STRING", "") and HEADER_KEY not in environ:
            return self.app(environ, start_response)
        return self._livebp_request(environ, start_response)

    def _livebp_request(self, environ, start_response):
        query, _ = _parse_query(environ.get("QUERY_STRING", ""))
        spec = environ.get(HEADER_KEY) or query.get(QUERY_KEY)
        token = environ.get(TOKEN_HEADER_KEY) or query.get(TOKEN_QUERY_KEY)
        if token is not None:  # keep the secret out of the app's logs and dumps
            environ = _without_token(environ)
        if spec is None or not self._allowed(token):
            if spec is not None:
                logger.warning("livebp ignored: %s", "disabled (no secret, debug=False)"
                               if not self.enabled else "missing or wrong token")
            return self.app(environ, start_response)
        try:
            target = resolve(spec, self.allow_import)
        except BadRequest as error:
            return _refuse(start_response, error)
        probe = _Probe(target, self.action, _hidden_strings(environ, self.secret))
        return _LiveRequest(self.app, probe, environ, start_response).run()

    def _allowed(self, token):
        if not self.enabled:
            return False
        if self.debug:
            return True
        if token is None:
            return False
        return hmac.compare_digest(token.encode("utf-8", "surrogateescape"), self.secret)


def _without_token(environ):
    """A copy of `environ` without the livebp token: neither its header, nor its
    query parameter in QUERY_STRING, RAW_URI (gunicorn's) or REQUEST_URI."""
    environ = dict(environ)
    environ.pop(TOKEN_HEADER_KEY, None)
    environ["QUERY_STRING"] = without_token(environ.get("QUERY_STRING", ""))
    for key in ("RAW_URI", "REQUEST_URI"):
        if isinstance(environ.get(key), str):
            path, mark, raw_query = environ[key].partition("?")
            kept = without_token(raw_query)
            environ[key] = path + (mark + kept if kept else "")
    return environ


def without_token(raw_query):
    """The query string without its livebp_token parameter, if it has one."""
    return _parse_query(raw_query)[1] if QUERY_KEY in raw_query else raw_query


def _parse_query(raw_query):
    """livebp's parameters in a query string, and the query string without the
    token, every other byte of it as it was (parse_qsl of it all costs 3× more)."""
    query, kept = {}, []
    for item in raw_query.split("&"):
        key, _, value = item.partition("=")
        if key.startswith("livebp"):
            key = urllib.parse.unquote_plus(key)
            query[key] = urllib.parse.unquote_plus(value)
            if key == TOKEN_QUERY_KEY:
                continue
        kept.append(item)
    return query, "&".join(kept)


def _refuse(start_response, error):
    body = ("tbfast livebp: %s\n" % error).encode("utf-8", "replace")
    start_response(error.status, [("Content-Type", "text/plain; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
    return [body]


class _LiveRequest:
    """One request with a breakpoint, armed while the app runs and while each
    chunk of its response is made, in whichever thread asks for it, and never
    in between.  Its start_response is held until the first chunk, as PEP 3333
    lets a server hold it, so a snapshot taken before then gets its headers."""

    def __init__(self, app, probe, environ, start_response):
        self.app, self.probe, self.environ = app, probe, environ
        self.arm = _Arm(probe)
        self.server_start_response = start_response
        self.pending = None  # (status, headers) not given to the server yet
        self.server_write = None
        self.result = self.iterator = None

    def run(self):
        try:
            self.armed(self.call_app)
        except Unavailable as error:
            return _refuse(self.server_start_response, error)
        return self

    def call_app(self):
        self.result = self.app(self.environ, self.start_response)
        self.iterator = iter(self.result)

    def armed(self, call, *args):
        """call(*args) with the breakpoint armed in this thread, disarmed after.
        Unavailable before the app ran is the response; after, one log line."""
        self.probe.ident = threading.get_ident()
        try:
            self.arm.arm()
        except Unavailable as error:
            if self.iterator is None:  # the app has not run yet
                raise
            logger.warning("livebp %s: %s; the rest of this response runs without it",
                           self.probe.target, error)
            return call(*args)
        try:
            return call(*args)
        except tbfast.Breakpoint as error:
            _hide_probe_frames(error.__traceback__)
            raise
        finally:
            self.arm.disarm()

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            self.pending = None
            return self.server_start_response(status, list(headers) + self.headers(), exc_info)
        self.pending = (status, list(headers))
        return self.write

    def write(self, data):
        self.flush()
        return self.server_write(data)

    def flush(self):
        """Gives the held status and headers to the server."""
        if self.pending is not None:
            status, headers = self.pending
            self.pending = None
            self.server_write = self.server_start_response(status, headers + self.headers())

    def headers(self):
        snapshot = self.probe.snapshot
        if snapshot is not None:
            return [(STATUS_HEADER, "snapshot %s at %s, %d frames"
                     % (snapshot["id"], snapshot["at"], len(snapshot["frames"]))),
                    (SNAPSHOT_HEADER, snapshot_header(snapshot))]
        if not self.probe.fired:
            return [(STATUS_HEADER, "not reached %s" % self.probe.target)]
        return []

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self.armed(next, self.iterator)
        finally:
            self.flush()  # before the server sees the first chunk, or the end

    def close(self):
        close = getattr(self.result, "close", None)
        if close is not None:
            self.armed(close)
