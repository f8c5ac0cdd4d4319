"""gunicorn settings that show where a timed-out worker was stuck.

    gunicorn -c python:tbfast.gunicorn app:app
    # or, in your own config file:
    from tbfast.gunicorn import post_worker_init

On --timeout the arbiter sends SIGABRT to the silent worker, then SIGKILL about
a second later.  gunicorn's own handler is Python, so it never runs while a C
call holds the GIL, and the log says only "WORKER TIMEOUT".  tbfast's C-level
handler writes every thread's stack to stderr (gunicorn's error log by default)
at once, then chains to gunicorn's handler.

gunicorn's --timeout is a heartbeat: gthread workers never kill a slow request,
gevent workers only one that blocks the hub.  TBFAST_HARAKIRI=<seconds> wraps
the app in tbfast.wsgi.HarakiriMiddleware, a real per-request deadline
(TBFAST_HARAKIRI_ACTION: log, raise or abort; default log).
"""

import os
import signal
import sys

import tbfast
from tbfast.wsgi import HarakiriMiddleware

__all__ = ["post_worker_init"]


def post_worker_init(worker):
    tbfast.register(signal.SIGABRT, sys.stderr, chain=True)
    timeout = os.environ.get("TBFAST_HARAKIRI")
    if timeout:
        worker.wsgi = HarakiriMiddleware(worker.wsgi, float(timeout),
                                         os.environ.get("TBFAST_HARAKIRI_ACTION", "log"))
