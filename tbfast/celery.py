"""Celery: the stuck task's stack at the soft and at the hard time limit.

    import tbfast.celery
    tbfast.celery.install()          # where the Celery app is made

Celery's soft time limit is SIGUSR1 from the parent, its hard limit SIGTERM
(billiard kills the child with SIGKILL soon after).  A task stuck in C with the
GIL held never runs Celery's Python-level handlers, and the worker's
``sys.stderr`` is a logging proxy with no fd.  So in each worker process, before
its first task (``task_prerun``: ``worker_process_init`` runs before billiard
installs its own handlers, which would replace ours), this registers tbfast's
C-level handler on both signals, chained to Celery's, writing to a copy of fd 2;
and each task sets the thread's context to its name and id.
"""

import os
import signal

import tbfast

__all__ = ["install"]

_installed_in = None  # the pid whose handlers are registered: once per worker process


def install(file=None, *, format="text"):
    """Connects the task_prerun/task_postrun hooks.  `file`: where dumps go (an fd or
    a file object; default, a copy of fd 2, the worker's real stderr)."""
    from celery.signals import task_postrun, task_prerun

    tbfast._check_format(format)

    def register_and_set_context(task_id=None, task=None, **_):
        global _installed_in
        if _installed_in != os.getpid():
            destination = os.dup(2) if file is None else file
            tbfast.register(signal.SIGUSR1, destination, chain=True, format=format)
            tbfast.register(signal.SIGTERM, destination, chain=True, format=format)
            _installed_in = os.getpid()
        tbfast.set_context("celery task %s id=%s" % (getattr(task, "name", "?"), task_id))

    def clear_context(**_):
        tbfast.set_context(None)

    task_prerun.connect(register_and_set_context, weak=False)
    task_postrun.connect(clear_context, weak=False)
