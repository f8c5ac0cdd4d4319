"""The spool's files (tbfast.spool): their names, claims, reading and salvage, and which
spool this process writes to."""

import json
import logging
import os
import re
import time

from ._backend import impl

__all__ = ["Spool", "current", "use", "read", "remove", "readable_part"]

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
        impl.spool_shipped(1)
        return None


def remove(path):
    """A shipped spool file goes, and makes room for one more."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    impl.spool_shipped(1)


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


def use(spool):
    """Makes `spool` (a Spool, or None) this process's."""
    global _spool
    _spool = spool


def current():
    """The configured Spool of this process, or None."""
    return _spool
