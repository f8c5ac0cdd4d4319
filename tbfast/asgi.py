"""ASGI middleware: a deadline per request's task, not per thread.

    app = tbfast.asgi.HarakiriMiddleware(app, timeout=30, action="log")

An asyncio server runs every request in one thread, so a thread deadline says
nothing about one request.  This times each request's task on the event loop:
a request still running after `timeout` seconds gets its task's await stack
logged to the `tbfast` logger with its context ("GET /path"), then:
`log` does nothing more; `raise` cancels the task (the app sees CancelledError);
`abort` kills the worker with SIGKILL after the log, so the server respawns it.

A request that blocks the event loop itself (a sync call in a coroutine) stops
these timers too: catch that with a thread deadline on the loop's thread
(tbfast.harakiri around blocking sections) or tbfast's tracebacker socket.
"""

import asyncio
import logging
import os
import signal
import time

import tbfast
from .rich import format_task_stack

__all__ = ["HarakiriMiddleware", "request_context"]

logger = logging.getLogger("tbfast")


def request_context(scope):
    path = scope.get("root_path", "") + scope.get("path", "")
    query = scope.get("query_string", b"").decode("latin-1")
    return "%s %s%s" % (scope.get("method", scope["type"].upper()), path or "/",
                        "?" + query if query else "")


class HarakiriMiddleware:
    def __init__(self, app, timeout, action="log"):
        tbfast.harakiri(timeout, action)  # a bad timeout or action fails here, not per request
        self.app, self.timeout, self.action = app, timeout, action

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        task = asyncio.current_task()
        context = request_context(scope)
        started = time.monotonic()
        timer = asyncio.get_running_loop().call_later(
            self.timeout, self._expired, task, context, started)
        try:
            return await self.app(scope, receive, send)
        finally:
            timer.cancel()

    def _expired(self, task, context, started):
        stuck = time.monotonic() - started
        logger.error("harakiri: request %s stuck for %.3f s\n%s", context, stuck, format_task_stack(task),
                     extra={"tbfast": {"pid": os.getpid(), "context": context,
                                       "task": task.get_name(), "stuck_seconds": stuck}})
        if self.action == "raise":
            task.cancel("tbfast harakiri: %s over %s s" % (context, self.timeout))
        elif self.action == "abort":
            os.kill(os.getpid(), signal.SIGKILL)
