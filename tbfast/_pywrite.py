"""Writing the Python formatter's dumps to an fd, bounded in time as the core's sinks are."""

import errno
import fcntl
import mmap
import os
import select
import stat
import struct
import termios
import time

from ._pyformat import format_dump

__all__ = ["SIGNAL_WRITE_SECONDS", "API_WRITE_SECONDS", "write_all", "write_dump", "dump_to_fd"]

SIGNAL_WRITE_SECONDS = 5.0  # as the core's bounds: a signal's or the watchdog's dump
API_WRITE_SECONDS = 60.0  # the caller's own fd


def write_all(fd, data, timeout):
    """All of `data` to fd within `timeout` seconds, as the core's write_all: a file or a
    non-blocking fd takes it in one write when it can; a blocking pipe, socket or
    terminal, whose write would wait for its reader for good, gets it in one write
    when a pipe surely has room for it all, else PIPE_BUF bytes at a time, each once
    poll() says they fit.  BlockingIOError when the reader did not take it all in
    time (it loses the rest), OSError when the write fails."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    whole = stat.S_ISREG(os.fstat(fd).st_mode) or not os.get_blocking(fd)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)

    def wait_writable():
        if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
            raise BlockingIOError(errno.EAGAIN, "tbfast: fd %d took no more within %g s"
                                  % (fd, timeout))

    while view:
        at_once = whole or len(view) <= _pipe_room(fd)
        if not at_once:
            wait_writable()
        try:
            view = view[os.write(fd, view if at_once else view[:select.PIPE_BUF]):]
        except BlockingIOError:
            wait_writable()


def _pipe_room(fd):
    """As the core's tb_pipe_room: the bytes one write() to the pipe fd surely takes
    whole without waiting; 0 when fd is no pipe."""
    try:
        capacity = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        unread = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    except OSError:
        return 0
    return capacity - unread - 3 * mmap.PAGESIZE


_stalled_fds = set()  # whose last signal or watchdog dump timed out


def write_dump(fd, dump):
    """A signal's or the watchdog's dump, which must not stop at a broken or stalled fd;
    as the core's sinks, once a write to fd timed out, the next ones wait for nothing
    until one goes through whole."""
    try:
        write_all(fd, dump, 0.0 if fd in _stalled_fds else SIGNAL_WRITE_SECONDS)
    except BlockingIOError:
        _stalled_fds.add(fd)
    except OSError:
        pass
    else:
        _stalled_fds.discard(fd)


def dump_to_fd(fd, all_threads, fmt, skip, trigger="api", safe=None, max_threads=0):
    """An API dump (format_dump's arguments) written to the caller's fd."""
    write_all(fd, format_dump(all_threads, fmt, skip + 1, trigger, safe=safe,
                              max_threads=max_threads), API_WRITE_SECONDS)

