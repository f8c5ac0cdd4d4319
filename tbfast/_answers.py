"""Answers to tracebacker socket clients, written side by side, for the pure-Python
server (tbfast._fallback_server) and the consistent thread (tbfast.consistent);
the native server does the same in C (src/_server.pxi).

A dump larger than the socket's buffer is written as the client reads it.  Its
rest waits here while the thread goes on with the next client, so a client that
does not read holds only itself.  It loses the rest when it has taken nothing
for WRITE_TIMEOUT, or when MAX_WAITING others wait too and it is the first to be
given up on: one that has read nothing since its first write, else the longest
idle.

Every connection ends in finish(), so the client reads the whole answer, then
end of file.
"""

import os
import select
import socket
import time
import weakref

from ._limits import SOCKET_WRITE_TIMEOUT as WRITE_TIMEOUT

MAX_WAITING = 8
DRAIN_READS = 1024  # of 4 KiB: a guard; after the shutdown the client can add nothing
_SEND_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL  # a reader gone is EPIPE, not SIGPIPE

_every = weakref.WeakSet()  # every Answers of this process, for the child after fork


def finish(client):
    """Ends a connection so that the client reads the whole answer, then end of file.

    Shut down both ways first: a forked child's copy of the socket cannot hold the
    end of file back, and the client can send nothing more.  Then read what it sent
    and was not read (closing with unread input resets the connection), and close.
    """
    try:
        client.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # ENOTCONN: the client is gone already
    for _ in range(DRAIN_READS):
        try:
            if not client.recv(4096, socket.MSG_DONTWAIT):
                break
        except OSError:
            break
    client.close()


class _Answer:
    __slots__ = ("client", "rest", "idle_since", "reads")

    def __init__(self, client, data):
        self.client = client
        self.rest = memoryview(data)
        self.idle_since = time.monotonic()
        self.reads = False  # took something after the first write

    def write(self):
        """Writes what the client takes now; True when there is nothing more to write
        (all of it, or the client left)."""
        while self.rest:
            try:
                sent = self.client.send(self.rest, _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True  # EPIPE, ECONNRESET: the client left
            self.rest = self.rest[sent:]
            self.idle_since = time.monotonic()
            self.reads = True
        return True


class Answers:
    """The answers one thread writes: send() each, and wait() between clients."""

    def __init__(self):
        self._waiting = []
        _every.add(self)

    def send(self, client, data):
        """Writes `data` as far as `client` takes it now; the rest waits for it."""
        answer = _Answer(client, data)
        if answer.write():
            finish(client)
            return
        answer.reads = False  # what the first write put in the socket's buffer proves nothing
        if len(self._waiting) >= MAX_WAITING:
            self._end(min(self._waiting, key=lambda waiting: (waiting.reads,
                                                                  waiting.idle_since)))
        self._waiting.append(answer)

    def wait(self, *readable):
        """Writes on to the waiting clients until one of the `readable` fds can be
        read; returns those that can."""
        while True:
            timeout = self._serve()
            poller = select.poll()
            for fd in readable:
                poller.register(fd, select.POLLIN)
            for answer in self._waiting:
                poller.register(answer.client, select.POLLOUT)
            ready = {fd for fd, _ in poller.poll(timeout)}.intersection(readable)
            if ready:
                return ready

    def close(self):
        """Ends every waiting client's connection, its rest unwritten: the thread stops."""
        while self._waiting:
            self._end(self._waiting[0])

    def _serve(self):
        """Writes on to every waiting client and gives up on those idle for
        WRITE_TIMEOUT; the milliseconds until the next one may be (None: none waits)."""
        now, next_deadline = time.monotonic(), None
        for answer in list(self._waiting):
            deadline = answer.idle_since + WRITE_TIMEOUT
            if answer.write() or deadline <= now:
                self._end(answer)
            elif next_deadline is None or deadline < next_deadline:
                next_deadline = deadline
        if next_deadline is None:
            return None
        return max(1, int((next_deadline - time.monotonic()) * 1000 + 0.999))

    def _end(self, answer):
        self._waiting.remove(answer)
        finish(answer.client)

    def _forget(self):
        """In a child after fork: the parent writes and finishes these; close our copies."""
        for answer in self._waiting:
            try:
                answer.client.close()  # not finish(): a shutdown would end the parent's answer
            except OSError:
                pass  # the core's fork hook closed it: the native server was still serving it
        self._waiting = []


def _after_fork_in_child():
    for answers in list(_every):
        answers._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)
