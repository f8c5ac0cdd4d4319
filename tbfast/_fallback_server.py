"""The tracebacker socket server in pure Python, which the fallback serves with.

It speaks the protocol of docs/protocol.md (#connection, #request, #answer,
#timing) with the same interface as the core's native server (`serve_start`,
`serve_stop`).  What is its own: it runs in a daemon Python thread, so it needs
the GIL to answer and cannot help a worker whose GIL holder is stuck in C; for
the same reason every dump it writes is consistent (docs/protocol.md
#consistent-dumps), and the `gil-free` word is accepted and changes nothing.
"""

import errno
import os
import select
import socket
import struct
import threading
import time

from ._answers import WRITE_TIMEOUT, Answers
from ._limits import BAD_REQUEST, FORMATS, REQUEST_OPTIONS, check_format
from ._pyformat import format_dump
from .rich import gil_dump

__all__ = ["THREAD_NAME", "serve_start", "serve_stop"]

REQUEST_WAIT = 0.010  # seconds, and REQUEST_LIMIT bytes: docs/protocol.md#request
REQUEST_LIMIT = 64
THREAD_NAME = "tbfast-tracebacker"

_server = None


class _Server:
    def __init__(self, listen_fd, default_format, owner_uid):
        self.listener = socket.socket(fileno=listen_fd)
        self.default_format = default_format
        self.owner_uid = owner_uid
        self.pid = os.getpid()
        self.wake_r, self.wake_w = os.pipe()  # both close-on-exec (PEP 446)
        self.thread = threading.Thread(target=self.run, name=THREAD_NAME, daemon=True)

    def close_fds(self):
        self.listener.close()
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def run(self):
        answers = Answers()
        self.listener.setblocking(False)
        while True:
            if self.wake_r in answers.wait(self.listener.fileno(), self.wake_r):
                answers.close()
                return
            try:
                client, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    time.sleep(0.05)  # out of fds: let the queue wait, don't spin
                    continue
                return  # the listener is gone
            try:
                answer = self.answer(client)
            except Exception as error:  # noqa: BLE001 - one client must never stop the server
                answer = ("tbfast: dump failed: %s\n" % error).encode()
            answers.send(client, answer)

    def answer(self, client):
        """What the client gets: its dump, or one line saying why not."""
        client.setblocking(False)
        uid = peer_uid(client)
        if uid is None:
            return b""  # no credentials, no dump
        if uid != self.owner_uid and uid != 0:
            return b"tbfast: refused: uid %d is not allowed\n" % uid
        request = read_request(client, self.default_format)
        if request is None:
            return BAD_REQUEST
        fmt, options = request
        return gil_dump(format_dump, fmt, "locals" in options)  # this thread holds the GIL

    def stop(self):
        if self.pid != os.getpid():
            # A forked child: the thread is the parent's; only the fds were copied.
            self.close_fds()
            return
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass
        if self.thread.ident is not None and self.thread is not threading.current_thread():
            # A client is served in its request's wait and its dump's making.
            self.thread.join(WRITE_TIMEOUT + 5)
        self.close_fds()


def wait_for(client, events, timeout):
    """True when `client` is ready for `events` (or has an error) within `timeout` s.

    poll, not select: a worker may well have fds above FD_SETSIZE.
    """
    poller = select.poll()
    poller.register(client, events)
    try:
        return bool(poller.poll(max(1, int(timeout * 1000 + 0.999))))
    except InterruptedError:
        return True  # the caller retries and checks its deadline


def peer_uid(client):
    try:
        creds = client.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", creds)[1]


def read_request(client, default_format):
    """(format, options) asked for, the default format for none; None for a bad request."""
    data = b""
    deadline = time.monotonic() + REQUEST_WAIT
    while b"\n" not in data and len(data) <= REQUEST_LIMIT:
        left = deadline - time.monotonic()
        if left <= 0 or not wait_for(client, select.POLLIN, left):
            break
        try:
            chunk = client.recv(REQUEST_LIMIT + 1 - len(data))
        except (BlockingIOError, InterruptedError):
            continue
        except OSError:
            break
        if not chunk:
            break  # EOF ends the request too
        data += chunk
    if len(data) > REQUEST_LIMIT:
        return None  # a line of more than 64 bytes, its newline included, or none
    if b"\n" in data:
        data = data[: data.index(b"\n")]
    try:
        # bytes.split() splits on the core's spaces, not on all of str's
        words = [word.decode("ascii") for word in data.split()]
    except UnicodeDecodeError:
        return None
    formats = [word for word in words if word in FORMATS]
    if len(formats) > 1 or any(word not in FORMATS and word not in REQUEST_OPTIONS for word in words):
        return None  # a second format, or an unknown word (an option twice is fine, as in the core)
    return (formats[0] if formats else default_format), set(words) - set(FORMATS)


def serve_start(listen_fd, default_format, owner_uid):
    """Serves dumps on the bound, listening UNIX socket `listen_fd`, which it now
    owns: it closes it when it raises, too.  A server already running is stopped."""
    global _server
    try:
        check_format(default_format)
    except ValueError:
        os.close(listen_fd)
        raise
    if _server is not None:
        serve_stop()
    server = _Server(listen_fd, default_format, owner_uid)
    try:
        server.thread.start()
    except BaseException:
        server.close_fds()
        raise
    _server = server


def serve_stop():
    """Stops the server thread and closes the listening fd; never unlinks anything.

    In a child after fork() it only closes the copies of the fds it inherited.
    """
    global _server
    server, _server = _server, None
    if server is not None:
        server.stop()
