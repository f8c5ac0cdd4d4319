"""Per-worker tracebacker sockets, named as uWSGI's py-tracebacker names them.

``enable_tracebacker("/tmp/tbsocket.")`` serves this process's dump on the UNIX
socket ``/tmp/tbsocket.N``, N being the worker number; read it with
``tbfast connect-and-read /tmp/tbsocket.N`` (or ``uwsgi --connect-and-read``).
The number is, in order: the `worker_id` given; ``uwsgi.worker_id()`` under
uWSGI; the billiard pool index + 1 in a Celery prefork child; else the lowest
free slot 1, 2, ... held by an flock on ``<socket>.lock`` for the life of the
process, so a respawned worker gets the number of the one that died.

The server is the backend's: the core's native thread, which answers without
the GIL, or the fallback's Python thread (tbfast._fallback_server).
"""

import atexit
import collections
import errno
import fcntl
import logging
import os
import socket
import stat
import struct
import sys
import threading

from . import consistent
from ._backend import MODE, impl, warn_if_fallback
from ._limits import check_format
from ._users import describe_uid

__all__ = ["SERVER", "Tracebacker", "current", "enable_tracebacker", "disable_tracebacker"]

#: "core" for the core's native server thread, "python" for the fallback's.
SERVER = MODE

#: sun_path holds 108 bytes on Linux: a path of 107 and its NUL.
UNIX_PATH_MAX = 108
#: Slots tried when no worker number is known.
MAX_SLOTS = 1024
_LOCK_RETRIES = 10

Tracebacker = collections.namedtuple(
    "Tracebacker", "path worker_id source pid format server")
Tracebacker.__doc__ = """What this process serves: the socket's path, its worker
number, where the number came from ("explicit", "uwsgi", "billiard", "slot"),
the serving pid, the default format, and "core" or "python" for the server."""


class _Slot:
    __slots__ = ("path", "worker_id", "source", "pid", "format", "ident", "fd", "lock_fd",
                 "lock_path")


_logger = logging.getLogger("tbfast")
_lock = threading.RLock()
_lock_pid = os.getpid()
_state = None        # the _Slot this process serves
_wanted = None       # (basename, mode, format) of the last enable, for children after fork
_done_pid = None     # the pid whose enable has run: fork hooks act once per process
_autostarted = False
_autostart_pid = None
_hooks_installed = False


def _guard():
    """The module lock, made anew in a child after fork (another thread may have held it)."""
    global _lock, _lock_pid
    if _lock_pid != os.getpid():
        _lock, _lock_pid = threading.RLock(), os.getpid()
    return _lock


def current():
    """The Tracebacker this process serves, or None."""
    state = _state
    if state is None or state.pid != os.getpid():
        return None
    return Tracebacker(state.path, state.worker_id, state.source, state.pid, state.format, SERVER)


def enable_tracebacker(basename, worker_id=None, *, mode=0o600, format="text"):
    """Serves this process's dump on the UNIX socket `basename` + worker number.

    ``"/tmp/tbsocket."`` gives ``/tmp/tbsocket.1``, ``/tmp/tbsocket.2``...; a name
    starting with ``@`` is a Linux abstract socket (no file, `mode` unused).
    Only this uid and root may read the socket, which is created with `mode`.
    `format` (text, uwsgi, json or faulthandler) is used when a client asks for none.
    Returns the socket's path; None in a uWSGI master, where nothing is bound
    and each worker binds its own after fork.  Enabling again replaces the
    socket served before; a child after os.fork() serves one of its own.

    A slot another user holds, or an odd file at it (a directory, a symlink,
    a file that is not a socket), is skipped with a warning on the ``tbfast``
    logger naming the path and its owner; so is a socket directory that others
    may write to without the sticky bit (docs/security-sockets.md).
    """
    global _wanted, _done_pid
    basename = _check_basename(basename)
    if worker_id is not None:
        if isinstance(worker_id, bool) or not isinstance(worker_id, int):
            raise TypeError("worker_id must be an int or None, not %s" % type(worker_id).__name__)
        if worker_id < 0:
            raise ValueError("worker_id must be >= 0, not %d" % worker_id)
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError("mode must be an int in 0..0o777, not %r" % (mode,))
    if mode & 0o600 != 0o600:  # the worker's own user would be refused by its own socket
        raise ValueError("mode must let its owner read and write (0o600 at least), not %#o" % mode)
    check_format(format)
    _check_path(basename + str(worker_id if worker_id is not None else 1))
    warn_if_fallback("enable_tracebacker()")
    with _guard():
        _install_hooks()
        _teardown()
        _wanted = (basename, mode, format)
        _done_pid = os.getpid()
        try:
            return _enable(basename, worker_id, mode, format)
        except BaseException:
            _wanted = None  # children after fork would only fail the same way
            raise


def disable_tracebacker():
    """Stops serving and removes this process's socket and lock file.

    Returns False when nothing was served.  A file that is no longer the one
    this process bound is left alone.
    """
    global _wanted, _done_pid
    with _guard():
        _wanted = _done_pid = None
        return _teardown()


# -- the worker number --------------------------------------------------------

def _enable(basename, worker_id, mode, fmt, billiard_index=None):
    global _state
    source = "explicit"
    if worker_id is None:
        worker_id, source = _derived_worker_id(billiard_index)
    if source == "uwsgi" and worker_id == 0:
        return None  # the master: each worker binds its own in the post-fork hook
    _check_directory(basename)
    slot = None
    if worker_id is not None:
        _check_path(basename + str(worker_id))
        try:
            slot = _claim(basename + str(worker_id), mode, strict=True)
        except FileExistsError:
            if source == "explicit":
                raise
            # A derived number can be taken (the Celery main process holds slot 1
            # when its children number from 1; two uWSGI on one basename).
    if slot is None:
        source = "slot"
        slot = _first_free_slot(basename, mode)
        worker_id = int(slot.path[len(basename):])
    slot.worker_id, slot.source, slot.format = worker_id, source, fmt
    fd, slot.fd = slot.fd, None
    try:
        impl.serve_start(fd, fmt, os.getuid())  # owns fd from here, even on failure
    except BaseException:
        _remove(slot)
        raise
    try:
        consistent.start()
    except (OSError, RuntimeError) as error:  # no pipe, no thread: GIL-free dumps still come
        _warn("consistent dumps are off in %d: %s" % (os.getpid(), error))
    _state = slot
    return slot.path


def _derived_worker_id(billiard_index):
    uwsgi = _uwsgi()
    if uwsgi is not None:
        return uwsgi.worker_id(), "uwsgi"
    if billiard_index is None:
        billiard_index = _billiard_index()
    if billiard_index is not None:
        return billiard_index + 1, "billiard"
    return None, "slot"


def _uwsgi():
    module = sys.modules.get("uwsgi")
    if module is None:
        try:
            import uwsgi as module  # only inside uWSGI
        except ImportError:
            return None
    return module if callable(getattr(module, "worker_id", None)) else None


def _billiard_index():
    """The pool index of this Celery prefork child, None elsewhere.

    Only looked at when billiard is already imported: a prefork child has it.
    """
    billiard = sys.modules.get("billiard")
    process = getattr(getattr(billiard, "process", None), "current_process", None)
    if process is None:
        return None
    process = process()
    index = getattr(process, "index", None)
    if getattr(process, "_parent_pid", None) is None or not isinstance(index, int):
        return None  # the main process
    return index


def _forking_billiard_index(frame):
    """In a child right after fork: the index of the billiard Process being started.

    billiard sets current_process() only in _bootstrap(), after the fork hooks
    ran, but its Popen._launch(process_obj) is on the stack.
    """
    if "billiard" not in sys.modules:
        return None
    for _ in range(8):
        if frame is None:
            return None
        if frame.f_globals.get("__name__", "").startswith("billiard."):
            index = getattr(frame.f_locals.get("process_obj"), "index", None)
            if isinstance(index, int):
                return index
        frame = frame.f_back
    return None


# -- claiming a slot ------------------------------------------------------------

def _check_basename(basename):
    basename = os.fspath(basename)
    if not isinstance(basename, str):
        raise TypeError("basename must be a str path, not %s" % type(basename).__name__)
    if not basename or basename == "@":
        raise ValueError("basename is empty")
    if "\0" in basename:
        raise ValueError("basename contains a NUL byte: use '@name' for an abstract socket")
    # Absolute from here on: a chdir between enable and disable (or exit) must not
    # leave the socket and its lock file behind, nor remove another directory's.
    return basename if basename.startswith("@") else os.path.abspath(basename)


def _check_path(path):
    """A clear error for a path that cannot be a socket, before anything is made."""
    size = len(os.fsencode(path))
    abstract = path.startswith("@")
    limit = UNIX_PATH_MAX if abstract else UNIX_PATH_MAX - 1
    if size > limit:
        raise ValueError(
            "tracebacker socket path %r is %d bytes: a UNIX socket path holds at most %d "
            "(%d with its NUL on Linux); use a shorter basename"
            % (path, size, UNIX_PATH_MAX - 1, UNIX_PATH_MAX))
    if abstract:
        return
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise NotADirectoryError(
                errno.ENOTDIR, "not a directory, for the tracebacker socket %s" % path, directory)
        raise FileNotFoundError(
            errno.ENOENT, "no such directory for the tracebacker socket %s" % path, directory)
    effective = os.access in os.supports_effective_ids
    if not os.access(directory, os.W_OK | os.X_OK, effective_ids=effective):
        raise PermissionError(
            errno.EACCES, "cannot create the tracebacker socket %s in directory" % path,
            directory)


def _check_directory(basename):
    """Warns when others may replace the socket or its lock file in its directory:
    one writable by others than its owner without the sticky bit, or owned by
    another user (but root)."""
    if basename.startswith("@"):
        return
    directory = os.path.dirname(basename) or "."
    try:
        info = os.stat(directory)
    except OSError:
        return  # _check_path says what is wrong
    sticky = info.st_mode & stat.S_ISVTX
    if (info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky
            or info.st_uid not in (os.geteuid(), 0)):
        _logger.warning(
            "tbfast: the tracebacker socket directory %s (mode %#o, owner %s) lets others "
            "replace the socket or its lock file: use a directory only this user may write "
            "to, or one with the sticky bit such as /tmp",
            directory, stat.S_IMODE(info.st_mode), describe_uid(info.st_uid))


def _first_free_slot(basename, mode):
    for number in range(1, MAX_SLOTS + 1):
        path = basename + str(number)
        _check_path(path)
        slot = _claim(path, mode, strict=False)
        if slot is not None:
            return slot
    raise FileExistsError(
        errno.EEXIST, "all %d tracebacker slots are served by live processes" % MAX_SLOTS,
        basename + "1.." + str(MAX_SLOTS))


def _live(path):
    raise FileExistsError(errno.EEXIST, "tracebacker socket is served by a live process", path)


def _claim(path, mode, strict):
    """Binds `path` when its slot is free: a _Slot, else None (strict: an error)."""
    slot = _Slot()
    slot.path, slot.pid, slot.ident, slot.fd = path, os.getpid(), None, None
    slot.lock_fd = slot.lock_path = None
    if path.startswith("@"):
        sock = _bind("\0" + path[1:], None, path, strict)
        if sock is None:
            _, uid = _listener("\0" + path[1:])
            if uid is not None and uid != os.geteuid():
                _skip_slot(path, "is served by another user", uid)
            return None
        slot.fd = sock.detach()
        return slot
    slot.lock_path = path + ".lock"
    slot.lock_fd = _lock_slot(slot.lock_path, strict)
    if slot.lock_fd is None:
        if strict:
            _live(path)
        return None
    try:
        if not _reclaim(path, strict):
            _release_lock(slot)
            return None
        sock = _bind(path, mode, path, strict)
        if sock is None:
            _release_lock(slot)
            return None
        try:
            slot.ident = _give_mode(path, mode)
        except BaseException:
            sock.close()
            raise
    except BaseException:
        _release_lock(slot)
        raise
    slot.fd = sock.detach()
    return slot


def _give_mode(path, mode):
    """The (st_dev, st_ino) of the socket just bound at `path`, given `mode` when the
    umask took bits off.  No other file ever has its mode changed: the socket is
    opened without following a symlink, checked to be a socket of this user's
    with one link, and changed through that fd.  Anything else at `path` (swapped
    in since the bind) is refused, and left where it is."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not (stat.S_ISSOCK(info.st_mode) and info.st_uid == os.geteuid()
                and info.st_nlink == 1):
            raise FileExistsError(
                errno.EEXIST, "tracebacker socket replaced right after it was bound", path)
        try:
            if mode != stat.S_IMODE(info.st_mode):
                os.chmod("/proc/self/fd/%d" % fd, mode)  # the umask took bits off
        except BaseException:
            _unlink(path, (info.st_dev, info.st_ino))
            raise
        return info.st_dev, info.st_ino
    finally:
        os.close(fd)


def _lock_slot(lock_path, strict):
    """An fd holding the flock of `lock_path`, or None when a live process holds it."""
    for _ in range(_LOCK_RETRIES):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except PermissionError as error:
            if strict or not os.path.lexists(lock_path):
                raise PermissionError(
                    error.errno, "cannot open the tracebacker lock file", lock_path) from None
            _skip_slot(lock_path, "cannot be opened by this user")
            return None
        except OSError as error:
            odd = {errno.ELOOP: "a symlink", errno.EISDIR: "a directory"}.get(error.errno)
            if odd is None:
                raise
            if strict:
                raise FileExistsError(
                    errno.EEXIST, "tracebacker lock file is %s" % odd, lock_path) from None
            _skip_slot(lock_path, "is " + odd)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.fstat(fd).st_uid
            os.close(fd)
            if owner != os.geteuid():  # else a sibling worker's, as expected
                _skip_slot(lock_path, "is held by another user's process")
            return None
        except BaseException:
            os.close(fd)
            raise
        # Locked, but maybe a file its owner removed meanwhile: then lock the new one.
        try:
            now = os.stat(lock_path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        held = os.fstat(fd)
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            try:
                os.ftruncate(fd, 0)
                os.write(fd, b"%d\n" % os.getpid())  # for people: who holds the slot
            except OSError:
                pass
            return fd
        os.close(fd)
    raise FileExistsError(errno.EEXIST, "tracebacker lock file keeps changing", lock_path)


def _reclaim(path, strict):
    """Makes way at `path` (the slot's lock is held): True when it is free to bind."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISSOCK(info.st_mode):
        if strict:
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
        _skip_slot(path, "is not a socket")
        return False
    listening, uid = _listener(path)
    if listening:
        if strict:
            _live(path)
        # Served by something that takes no lock (uWSGI's own tracebacker), or another user.
        uid = info.st_uid if uid is None else uid
        if uid != os.geteuid():
            _skip_slot(path, "is served by another user", uid)
        return False
    try:
        os.unlink(path)  # stale: its process is gone
    except FileNotFoundError:
        pass
    except PermissionError as error:
        if strict:
            raise PermissionError(
                error.errno, "cannot remove the stale tracebacker socket", path) from None
        _skip_slot(path, "is a stale socket this user cannot remove")
        return False
    return True


def _listener(address):
    """(whether something listens on `address`, the uid serving it or None when
    unknown): a probe connection, closed at once.  Its line is a bad request to a
    tbfast server, which then makes no dump for it."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(address)
        credentials = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                       struct.calcsize("3i"))
    except (ConnectionRefusedError, FileNotFoundError):
        probe.close()
        return False, None
    except OSError:
        probe.close()
        return True, None  # a full backlog, no permission: someone's, not to be taken
    try:
        probe.send(b"probe\n", socket.MSG_DONTWAIT)
    except OSError:
        pass  # it closed already
    probe.close()
    return True, struct.unpack("3i", credentials)[1]


def _skip_slot(path, problem, uid=None):
    """Warns that a slot is skipped for what is at `path`, naming its owner: `uid`, or
    the file's."""
    try:
        owner = describe_uid(os.lstat(path).st_uid if uid is None else uid)
    except OSError:
        owner = "unknown: the file is gone"
    _logger.warning("tbfast: tracebacker slot skipped: %s %s (owner: %s)", path, problem, owner)


def _bind(address, mode, path, strict):
    """A socket listening on `address`, None (strict: an error) when it is taken."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # close-on-exec
    try:
        if mode is not None:
            # Linux takes the new file's mode from the socket inode (less the
            # umask): the file never exists with wider permissions.
            os.fchmod(sock.fileno(), mode)
        # Bound under its own name, not linked from a temporary one, so that ss
        # and lsof show the path; a client in the instant between bind and
        # listen is refused (tbfast connect-and-read tries again).
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            if strict:
                _live(path)
            return None
        if error.errno in (errno.EACCES, errno.EPERM):
            raise PermissionError(
                error.errno, "cannot bind the tracebacker socket", path) from None
        raise
    return sock


def _unlink(path, ident=None):
    """Removes `path` if it is still the file `ident` (dev, ino) names."""
    try:
        if ident is not None:
            info = os.lstat(path)
            if (info.st_dev, info.st_ino) != ident:
                return
        os.unlink(path)
    except OSError:
        pass


def _release_lock(slot):
    fd, slot.lock_fd = slot.lock_fd, None
    if fd is None:
        return
    try:
        held = os.fstat(fd)
        _unlink(slot.lock_path, (held.st_dev, held.st_ino))  # safe: we hold its lock
    finally:
        os.close(fd)


def _remove(slot):
    """Unlinks a slot's socket and lock: only this process's, only the files it made."""
    if slot.pid != os.getpid():
        _forget(slot)
        return
    if slot.ident is not None:
        _unlink(slot.path, slot.ident)
    _release_lock(slot)


def _forget(slot):
    """In a child after fork: drops the copies of the parent's fds, touching no file."""
    fd, slot.lock_fd = slot.lock_fd, None
    if fd is not None:
        try:
            os.close(fd)  # not LOCK_UN: that would release the parent's lock
        except OSError:
            pass


def _teardown():
    global _state
    slot, _state = _state, None
    if slot is None:
        return False
    try:
        impl.serve_stop()  # in a forked child: only closes the inherited fd
    finally:
        _remove(slot)
    return slot.pid == os.getpid()


# -- fork, uWSGI, exit ------------------------------------------------------------

def _install_hooks():
    global _hooks_installed
    if not _hooks_installed:
        _hooks_installed = True
        os.register_at_fork(after_in_child=_after_fork_child)
        atexit.register(_at_exit)
    uwsgi = _uwsgi()
    if uwsgi is not None:
        _chain_uwsgi_post_fork(uwsgi)


def _chain_uwsgi_post_fork(uwsgi):
    """uWSGI forks its workers without running os.register_at_fork hooks, but it
    calls uwsgi.post_fork_hook in each: ours goes first, then whatever was there."""
    previous = getattr(uwsgi, "post_fork_hook", None)
    if getattr(previous, "_tbfast", False):
        return
    decorators = sys.modules.get("uwsgidecorators")
    chain = getattr(decorators, "postfork_chain", None)
    if chain is not None and previous is getattr(decorators, "postfork_chain_hook", None):
        # uwsgidecorators' own hook runs its list: join it rather than wrap it.
        if _uwsgi_post_fork not in chain:
            chain.insert(0, _uwsgi_post_fork)
        return

    def post_fork_hook():
        _uwsgi_post_fork()
        if previous is not None:
            previous()

    post_fork_hook._tbfast = True
    uwsgi.post_fork_hook = post_fork_hook


def _uwsgi_post_fork():
    _in_child(None)


def _after_fork_child():
    frame = sys._getframe(1)  # what called fork: os.fork()'s caller, or subprocess
    if (frame is not None and frame.f_code.co_name == "_execute_child"
            and frame.f_globals.get("__name__") == "subprocess"):
        return  # subprocess's preexec_fn child: it will exec (our fds close on exec)
    _in_child(frame)


def _in_child(frame):
    """Serves the child's own socket, with its own number, leaving the parent's be."""
    global _done_pid
    try:
        with _guard():
            if _done_pid == os.getpid():
                return  # both the at-fork and the uWSGI hook ran
            _done_pid = os.getpid()
            _teardown()  # the parent's: closes our copies, unlinks nothing
            if _wanted is None:
                return
            basename, mode, fmt = _wanted
            _enable(basename, None, mode, fmt, _forking_billiard_index(frame))
    except Exception as error:  # noqa: BLE001 - a fork must never fail for us
        _warn("tracebacker not enabled in child %d: %s" % (os.getpid(), error))


def _at_exit():
    with _guard():
        if _state is not None and _state.pid == os.getpid():
            _teardown()


def _warn(message):
    line = ("tbfast: %s\n" % " ".join(str(message).split())).encode("utf-8", "replace")
    try:
        os.write(2, line)
    except OSError:
        pass


# -- TBFAST_TRACEBACKER -------------------------------------------------------------

def _autostart():
    """Run by tbfast_autostart.pth when TBFAST_TRACEBACKER is set: one line on
    stderr if it fails, never an exception.  Once per process, though some
    interpreters read site-packages' .pth files twice."""
    global _autostart_pid
    basename = os.environ.get("TBFAST_TRACEBACKER")
    if not basename or _autostart_pid == os.getpid():
        return
    _autostart_pid = os.getpid()
    fmt = os.environ.get("TBFAST_TRACEBACKER_FORMAT") or "text"
    if "uwsgi" not in sys.modules and _uwsgi_executable():
        _defer_until_uwsgi(basename, fmt)
    elif _gunicorn_arbiter():
        _serve_in_forked_children(basename, fmt)
    else:
        _autostart_enable(basename, fmt)


def _gunicorn_arbiter():
    """Whether this process is gunicorn's arbiter (`gunicorn ...` or `python -m gunicorn`)."""
    argv = getattr(sys, "orig_argv", [])
    return (any(os.path.basename(arg) == "gunicorn" for arg in argv[:2])
            or argv[1:3] == ["-m", "gunicorn"])


def _serve_in_forked_children(basename, fmt):
    """A prefork master serves no socket, as uWSGI's does not: its workers, forked
    with os.fork(), each serve theirs, so N workers are basename + 1 .. N."""
    global _wanted, _done_pid
    try:
        _check_path(_check_basename(basename) + "1")
        with _guard():
            _install_hooks()
            _wanted = (basename, 0o600, fmt)
            _done_pid = os.getpid()
    except Exception as error:  # noqa: BLE001
        _warn("tracebacker not enabled (TBFAST_TRACEBACKER=%s): %s" % (basename, error))


def _autostart_enable(basename, fmt):
    global _autostarted
    try:
        enable_tracebacker(basename, format=fmt)
        _autostarted = True
    except Exception as error:  # noqa: BLE001
        _warn("tracebacker not enabled (TBFAST_TRACEBACKER=%s): %s" % (basename, error))


def _uwsgi_executable():
    try:
        return os.path.basename(os.readlink("/proc/self/exe")).startswith("uwsgi")
    except OSError:
        return False


def _defer_until_uwsgi(basename, fmt):
    """Inside uWSGI, site-packages are read before the uwsgi module exists and
    workers are forked without fork hooks.  A profile function, inherited by
    forked workers, waits for the first Python call that sees the module: the
    master then chains its post-fork hook, or a lazy-apps worker binds its own."""
    def wait_for_uwsgi(frame, event, arg):
        if "uwsgi" in sys.modules:
            sys.setprofile(None)
            _autostart_enable(basename, fmt)

    sys.setprofile(wait_for_uwsgi)
