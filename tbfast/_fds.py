"""The fd behind a file argument, as faulthandler takes them."""

import errno
import os
import sys

__all__ = ["fd_of"]


def fd_of(file):
    """An fd from an int or a file object, checked open, as faulthandler takes them."""
    if file is None:
        file = sys.stderr
        if file is None:
            raise RuntimeError("sys.stderr is None: pass a file or an fd")
    if isinstance(file, bool) or not isinstance(file, int):
        fileno = getattr(file, "fileno", None)
        if fileno is None:
            raise TypeError("file must be an int fd or have a fileno() method, not %s"
                            % type(file).__name__)
        if getattr(file, "closed", False):
            raise ValueError("file is closed")
        try:
            fd = fileno()
        except (OSError, ValueError) as error:
            raise ValueError("file has no usable fd: %s" % error) from None
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError("%s.fileno() must return an int fd, not %s"
                            % (type(file).__name__, type(fd).__name__))
        flush = getattr(file, "flush", None)
        if flush is not None:
            flush()
    else:
        fd = file
    if fd < 0:
        raise ValueError("file descriptor must be a non-negative integer, not %d" % fd)
    try:
        os.fstat(fd)
    except OSError as error:
        raise OSError(error.errno, "fd %d is not open" % fd) from None
    except OverflowError:  # beyond a C int: no such fd either
        raise OSError(errno.EBADF, "fd %d is not open" % fd) from None
    return fd
