"""Where the dumps go: /dev/null, and a pipe and a socketpair drained by another process.

The pipe's buffer is raised to 1 MiB (F_SETPIPE_SZ) and the socket's send
buffer to 1 MiB (SO_SNDBUF), and before each timed dump the benchmark waits
until the reader has emptied them, so the dumper never waits on transport
unless one dump is larger than the buffer.  The reader counts what it
receives, which checks that every dump arrived whole.
"""

import fcntl
import os
import socket
import struct
import subprocess
import sys
import termios
import time

PIPE_SIZE = 1 << 20
SOCKET_BUFFER = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
SIOCOUTQ = termios.TIOCOUTQ  # same number: bytes a socket has not yet handed over

# The reader: `cat >/dev/null` that counts the bytes, and how many times the
# marker (argv[1], a line every dump has) went by, and prints both at EOF.
_READER = """
import os, sys
marker = os.fsencode(sys.argv[1])
total = markers = 0
tail = b""
while True:
    data = os.read(0, 1 << 20)
    if not data:
        break
    total += len(data)
    window = tail + data
    markers += window.count(marker)
    tail = window[-(len(marker) - 1):] if len(marker) > 1 else b""
print(total, markers)
"""


class DevNull:
    name = "/dev/null"

    def __init__(self, marker=None):
        self.fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)

    def describe(self):
        return "/dev/null"

    def wait_drained(self):
        pass

    def close(self):
        """(bytes, markers) that arrived at the other end; Nones when nobody reads."""
        os.close(self.fd)
        return None, None


class _Drained:
    """A sink whose other end is read by a subprocess, which counts the bytes
    and the times `marker` went by."""

    name = ""

    def __init__(self, write_fd, read_fd, marker):
        self.fd = write_fd
        self._reader = subprocess.Popen([sys.executable, "-c", _READER, marker], stdin=read_fd,
                                        stdout=subprocess.PIPE)
        os.close(read_fd)

    def pending(self):
        raise NotImplementedError

    def wait_drained(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() > deadline:
                raise RuntimeError("the reader of %s stopped reading" % self.name)
            time.sleep(0.0002)

    def close(self):
        os.close(self.fd)
        out, _ = self._reader.communicate(timeout=60)
        total, dumps = out.split()
        return int(total), int(dumps)


class Pipe(_Drained):
    name = "pipe 1 MiB"

    def __init__(self, marker):
        read_fd, write_fd = os.pipe()
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_SIZE)
        self.size = fcntl.fcntl(write_fd, F_GETPIPE_SZ)
        super().__init__(write_fd, read_fd, marker)

    def describe(self):
        return "pipe, F_SETPIPE_SZ -> %d bytes, read by a subprocess" % self.size

    def pending(self):
        return _ioctl_int(self.fd, termios.FIONREAD)


class SocketPair(_Drained):
    name = "socketpair"

    def __init__(self, marker):
        writer, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        self.size = writer.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        super().__init__(writer.detach(), reader.detach(), marker)

    def describe(self):
        return "AF_UNIX stream socketpair, SO_SNDBUF -> %d bytes, read by a subprocess" % self.size

    def pending(self):
        return _ioctl_int(self.fd, SIOCOUTQ)


def _ioctl_int(fd, request):
    return struct.unpack("i", fcntl.ioctl(fd, request, b"\0\0\0\0"))[0]


def all_sinks():
    return [DevNull, Pipe, SocketPair]
