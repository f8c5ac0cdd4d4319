"""The spool: dumps kept as files until they are shipped, so that none is lost.

    tbfast.spool.configure("/var/spool/tbfast", max_count=100)

A harakiri that fires while the GIL is stuck, then kills the worker, never gets
to run Python.  With a spool, the core writes each harakiri dump (and each
signal dump registered with log=True) in JSON, GIL-free, to
``<directory>/tmp.<pid>.<seq>``, then renames it to
``<directory>/dump.<pid>.<seq>.json``: a file under that name is always whole.
The Python side ships it (the `tbfast` logger, and Sentry when tbfast.sentry is
set up), then removes it; a send that fails keeps it for the next try.  Files
left by a process that is gone are shipped by the next process that configures
the same directory (a respawned worker), each taken by one process only.
A file a process left half-written (``tmp.*``: it was killed while writing) is
logged at WARNING, naming it; its readable part (the header and every whole
thread, marked ``"truncated": {"cut_short": <bytes>}``) is shipped as the others
are, and a file with nothing readable is kept as ``tmp.*.bad``.

Bounded: each file is at most the dump buffer's size (tbfast.configure), and a
process writes no more than ``max_count`` files while that many wait there
(those it found at configure count); past it, the dump goes to the other
destinations only, and the fd dump carries the line
``tbfast: spool full, this dump is not spooled``.
"""

import json
import logging
import os
import re
import stat
import time

import tbfast

DEFAULT_MAX_COUNT = 100
_DUMP = re.compile(r"dump\.(\d+)\.(\d+)\.json$")
_TEMPORARY = re.compile(r"tmp\.(\d+)\.(\d+)$")
_CLAIMED = re.compile(r"claim\.(\d+)\.(dump\.\d+\.\d+\.json|tmp\.\d+\.\d+)$")
_THREADS = '"threads":['  # in a JSON dump, after the header's fields
_logger = logging.getLogger("tbfast")


class Spool:
    """One configured spool directory, from this process's point of view."""

    def __init__(self, directory, max_count):
        self.directory = directory
        self.max_count = max_count
        self.first_seq = time.time_ns()  # numbers of this process's files start here

    def path(self, seq):
        """This process's spool file number `seq`."""
        return os.path.join(self.directory, "dump.%d.%d.json" % (os.getpid(), seq))

    def count(self):
        """The dump files, and the half-written ones that will be shipped as dumps."""
        return sum(1 for name in os.listdir(self.directory)
                   if _DUMP.match(name) or _TEMPORARY.match(name))

    def orphans(self):
        """The paths of the dumps whose process is gone, each claimed for this one by a
        rename (so two processes never ship the same file); claims of a process that
        died while shipping are taken back first, and what can be read of the
        half-written files of a process that died while writing is among them."""
        for name in os.listdir(self.directory):
            claimed = _CLAIMED.match(name)
            if claimed and not _alive(int(claimed.group(1))):
                _rename(self.directory, name, claimed.group(2))
        found = []
        for name in os.listdir(self.directory):
            half_written = _TEMPORARY.match(name)
            if half_written and not _alive(int(half_written.group(1))):
                found.extend(self._salvage(name, *half_written.groups()))
        for name in sorted(os.listdir(self.directory)):
            dump = _DUMP.match(name)
            if not dump:
                continue
            pid, seq = int(dump.group(1)), int(dump.group(2))
            if (seq > self.first_seq if pid == os.getpid() else _alive(pid)):
                continue  # this process's own (its reader ships them), or a live one's
            claim = "claim.%d.%s" % (os.getpid(), name)
            if _rename(self.directory, name, claim):
                found.append(os.path.join(self.directory, claim))
        return found

    def _salvage(self, name, pid, seq):
        """A dead process's file cut short while it wrote it, claimed: logged; its
        readable part becomes a claimed dump file, whose path is returned (in a
        list: none when another process took it, or when nothing could be read)."""
        claim = os.path.join(self.directory, "claim.%d.%s" % (os.getpid(), name))
        if not _rename(self.directory, name, os.path.basename(claim)):
            return []
        with open(claim, "rb") as file:
            data = file.read()
        path = os.path.join(self.directory, name)
        dump = os.path.join(self.directory, "claim.%d.dump.%s.%s.json" % (os.getpid(), pid, seq))
        try:
            whole = isinstance(json.loads(data), dict)
        except ValueError:
            whole = False
        if whole:  # its process died between the write and the rename
            os.rename(claim, dump)
            _logger.warning("tbfast: spool file %s is whole but was left unnamed (pid %s died "
                            "before renaming it): shipped", path, pid)
            return [dump]
        document = readable_part(data)
        if document is None:
            os.replace(claim, path + ".bad")
            _logger.warning("tbfast: spool file %s was cut short (pid %s died while writing "
                            "it): nothing readable in its %d bytes; kept as %s.bad",
                            path, pid, len(data), path)
            return []
        with open(dump, "wb") as file:
            file.write(json.dumps(document, ensure_ascii=False).encode())
        os.unlink(claim)
        _logger.warning("tbfast: spool file %s was cut short (pid %s died while writing it) "
                        "at %d bytes: its header and %d whole threads are shipped",
                        path, pid, len(data), len(document["threads"]))
        return [dump]

    def unclaim(self, path):
        """A claimed file whose send failed goes back under its own name."""
        directory, name = os.path.split(path)
        claimed = _CLAIMED.match(name)
        if claimed:
            _rename(directory, name, claimed.group(2))


def readable_part(data):
    """The document in the bytes of a JSON dump cut short: its header's fields and each
    whole thread, "truncated" saying how many bytes there were; None when not even
    the header is whole."""
    text = data.decode("utf-8", "replace")
    at = text.find(_THREADS)
    try:
        document = json.loads(text[:at] + _THREADS + "]}") if at > 0 else None
    except ValueError:
        document = None
    if not isinstance(document, dict):
        return None
    decoder, position = json.JSONDecoder(), at + len(_THREADS)
    while True:
        try:
            thread, position = decoder.raw_decode(text, position)
        except ValueError:
            break
        document["threads"].append(thread)
        if text[position:position + 1] != ",":
            break
        position += 1
    document["truncated"] = {"cut_short": len(data)}
    return document


def read(path):
    """The dump document in a spool file, or None when it is gone or unreadable."""
    try:
        with open(path, "rb") as file:
            return json.loads(file.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        _logger.error("tbfast: spool file %s is unreadable (%s); moved aside as %s.bad",
                      path, error, path)
        os.replace(path, path + ".bad")
        tbfast._impl.spool_shipped(1)
        return None


def remove(path):
    """A shipped spool file goes, and makes room for one more."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    tbfast._impl.spool_shipped(1)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def _rename(directory, old, new):
    try:
        os.rename(os.path.join(directory, old), os.path.join(directory, new))
    except FileNotFoundError:  # another process took it first
        return False
    return True


_spool = None


def configure(directory, max_count=DEFAULT_MAX_COUNT):
    """Spool harakiri dumps (and signal dumps registered with log=True) to `directory`,
    at most `max_count` files at once; None turns the spool off.

    The directory is created (0700) if missing; it must belong to this user and be
    writable by it alone.  Dumps that
    processes now gone left there are shipped, then removed, by the watchdog's
    Python side, once Python runs.
    """
    global _spool
    from . import watchdog
    if directory is None:
        tbfast._impl.spool_configure(-1, 0, 0, 0)
        _spool = None
        return
    if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
        raise ValueError("max_count must be a positive int, not %r" % (max_count,))
    if not tbfast.HAS_CORE:
        raise RuntimeError("tbfast.spool needs the C core: the fallback cannot write while "
                           "the GIL is stuck (tbfast.MODE is %r)" % tbfast.MODE)
    directory = os.path.abspath(os.fspath(directory))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        if status.st_uid != os.geteuid() or status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            # dumps hold request data: not into a directory another user may read or swap
            raise PermissionError("tbfast: spool directory %s must belong to uid %d and be "
                                  "writable by it alone (it is uid %d, mode %o)" % (
                                      directory, os.geteuid(), status.st_uid,
                                      stat.S_IMODE(status.st_mode)))
        if not os.access(directory, os.W_OK | os.X_OK):
            raise PermissionError("tbfast: spool directory %s is not writable" % directory)
        spool = Spool(directory, max_count)
        tbfast._impl.spool_configure(fd, spool.count(), max_count, spool.first_seq)
    except BaseException:
        os.close(fd)
        raise
    _spool = spool
    watchdog.ensure_configured()
    watchdog.ship_orphans()


def current():
    """The configured Spool of this process, or None."""
    return _spool
