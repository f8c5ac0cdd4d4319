"""WSGI middleware: a harakiri deadline and a context line per request.

    app = tbfast.wsgi.HarakiriMiddleware(app, timeout=30, action="log")

Every dump taken while a request runs shows its thread's context,
"GET /path?query id=<X-Request-Id>", and a request still running `timeout`
seconds after it started is dumped by the watchdog (tbfast.watchdog).  The
deadline covers the response's iteration too, until the server calls close().

    app = tbfast.wsgi.LiveBreakpointMiddleware(app, secret="…", action="raise")

Live breakpoints and snapshots: see tbfast.livebp.
"""

import tbfast
from tbfast.livebp import LiveBreakpointMiddleware, without_token

__all__ = ["HarakiriMiddleware", "LiveBreakpointMiddleware", "request_context", "without_token"]


def request_context(environ):
    """"METHOD /path?query", with " id=…" when the request carries X-Request-Id; never
    with a livebp token, so that no dump shows it."""
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    query = without_token(environ.get("QUERY_STRING", ""))
    context = "%s %s%s" % (environ.get("REQUEST_METHOD", "?"), path or "/",
                           "?" + query if query else "")
    request_id = environ.get("HTTP_X_REQUEST_ID")
    context += " id=" + request_id if request_id else ""
    return context.replace("\0", "\\x00")  # a client's %00: set_context refuses a NUL


class HarakiriMiddleware:
    def __init__(self, app, timeout, action="log"):
        tbfast.harakiri(timeout, action)  # a bad timeout or action fails here, not per request
        self.app, self.timeout, self.action = app, timeout, action

    def __call__(self, environ, start_response):
        tbfast.set_context(request_context(environ))
        scope = tbfast.harakiri(self.timeout, self.action)
        scope.__enter__()
        try:
            result = self.app(environ, start_response)
        except BaseException:
            _end_request(scope)
            raise
        return _GuardedResponse(result, scope)


def _end_request(scope):
    scope.__exit__(None, None, None)
    tbfast.set_context(None)


class _GuardedResponse:
    """The app's response, under the request's deadline until close()."""

    def __init__(self, result, scope):
        self.result, self.scope, self.closed = result, scope, False

    def __iter__(self):
        return iter(self.result)

    def close(self):
        if self.closed:
            return
        self.closed = True
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            _end_request(self.scope)
