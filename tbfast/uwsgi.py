"""uWSGI hooks: the stuck stack in the log before harakiri's SIGKILL.

In the app (or with --import tbfast.uwsgi):

    import tbfast.uwsgi

and start uWSGI (>= 2.0.22) with, for example:

    --harakiri 30 --harakiri-graceful-timeout 5 --harakiri-graceful-signal 30

On harakiri, uWSGI sends the graceful signal first and SIGKILL after the graceful
timeout.  The signal defaults to SIGTERM, which the worker handles itself, and
uWSGI re-installs its own handlers for SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2
and SIGPIPE after loading the app, so use another one: 30 is SIGPWR on x86 and
ARM Linux.  Python-level handlers do not run in uWSGI workers without
--py-call-osafterfork; tbfast's handler is C-level, so it runs, and writes every
thread's stack to stderr (uWSGI's log) while the GIL holder is stuck.
"""

import signal
import sys

import tbfast

__all__ = ["install", "graceful_signal"]


def graceful_signal(options):
    """The --harakiri-graceful-signal number uWSGI was started with, or None."""
    value = options.get("harakiri-graceful-signal")
    if isinstance(value, list):  # an option given twice
        value = value[-1]
    if isinstance(value, bytes):
        value = value.decode()
    return int(value) if value else None


def install():
    """Registers tbfast's dump on the graceful harakiri signal; returns it, or None."""
    import uwsgi
    signum = graceful_signal(uwsgi.opt)
    if signum is not None and signum not in (signal.SIGTERM, signal.SIGKILL):
        tbfast.register(signum, sys.stderr)
    return signum


try:
    import uwsgi  # noqa: F401 - only present inside a uWSGI worker
except ImportError:
    pass
else:
    install()
