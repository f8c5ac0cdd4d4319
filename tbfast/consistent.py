"""Consistent socket dumps: the Python thread that takes the GIL for the native server.

The native tracebacker thread never waits for the GIL.  For each client it
posts the client here and waits at most ``gil_wait`` (``tbfast.configure``,
default 50 ms).  This thread wakes, takes the GIL, so every other thread is
paused where it is and the walk is exact, and writes the dump itself (header
``mode=gil``; what the client does not take at once waits beside other
clients', tbfast._answers).  When the GIL holder is stuck in C, the GIL never
comes: the server withdraws the post and writes the GIL-free dump, whose header
says how long it waited and which thread holds the GIL.

One thread per process, started by tbfast.sockets once a server runs (and
again in a forked child that serves its own socket).
"""

import socket
import threading

from . import rich
from ._answers import Answers
from ._backend import CAPABILITIES, impl

__all__ = ["THREAD_NAME", "start"]

THREAD_NAME = "tbfast-consistent"

_start_lock = threading.Lock()


def start():
    """Starts this process's consistent thread, unless one runs or the backend has no
    handover (the pure-Python server holds the GIL anyway)."""
    if "handover" not in CAPABILITIES:
        return
    with _start_lock:
        if impl.handover_listen():
            threading.Thread(target=_serve, name=THREAD_NAME, daemon=True).start()


def _serve():
    answers, posts = Answers(), impl.handover_fd()
    while True:
        answers.wait(posts)
        taken = impl.handover_take()
        if taken is None:
            continue  # withdrawn: the server wrote the GIL-free dump
        fd, fmt, with_locals = taken
        client = socket.socket(fileno=fd)
        try:
            data = rich.gil_dump(impl.format_dump, fmt, with_locals)
        except impl.DumpSkipped as skipped:  # the line a GIL-free dump writes then
            data = b"%s\n" % str(skipped).encode()
        except BaseException as error:  # noqa: BLE001 - the client gets the reason, the thread goes on
            data = ("tbfast: dump failed: %s\n" % error).encode()
        finally:
            impl.handover_done()
        answers.send(client, data)
