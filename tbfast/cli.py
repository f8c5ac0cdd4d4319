"""tbfast's command line: read the tracebacker sockets of live workers.

    tbfast connect-and-read /tmp/tbsocket.1
    tbfast connect-and-read '/tmp/tbsocket.*'
    tbfast connect-and-read --summary '/tmp/tbsocket.*'
"""

import argparse
import glob
import json
import os
import pwd
import re
import socket
import stat
import struct
import sys
import time

from . import __version__
from ._limits import DEFAULT_BUFFER_SIZE, FORMATS
from ._users import describe_uid

__all__ = ["ReadError", "CutShort", "read_socket", "connect_and_read", "main"]

DEFAULT_TIMEOUT = 5.0
#: A dump is at most the worker's buffer: more is a stream, not a dump.
DEFAULT_MAX_BYTES = DEFAULT_BUFFER_SIZE
_READ_SIZE = 65536
# Never printed as they came: C0 controls but the newline and the tab (the lines
# of a dump and harmless), DEL, C1 controls, the Unicode line and paragraph
# separators (str.splitlines() breaks there), and bytes that are not UTF-8.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\udc80-\udcff]")

EPILOG = """\
examples:
  tbfast connect-and-read /tmp/tbsocket.1
  tbfast connect-and-read '/tmp/tbsocket.*'            every worker, in worker order
  tbfast connect-and-read --format json @app.3         an abstract socket
  tbfast connect-and-read --summary '/tmp/tbsocket.*'  where the pool is stuck
  tbfast connect-and-read --locals /tmp/tbsocket.1     with each frame's locals

Workers serve their sockets after tbfast.enable_tracebacker("/tmp/tbsocket."),
or with TBFAST_TRACEBACKER=/tmp/tbsocket. in their environment.  Only the
workers' own user and root may read them, and this command reads only sockets
served by its own user or root, unless --allow-uid or --any-owner says more.
Control characters from a socket are printed escaped (\\x1b), the newlines and
tabs of the dump as they are.  The exit status is 1 when any socket could not
be read whole (the others are still printed, and what came of a dump cut short,
marked so), 2 for a usage error.
"""


class ReadError(Exception):
    """A socket that gave no dump; the message says why."""


class CutShort(ReadError):
    """A dump read only in part: `data` holds what came, the message says why."""

    def __init__(self, message, data):
        super().__init__(message)
        self.data = data


def server_uid(sock):
    """The uid of the process serving a connected socket (SO_PEERCRED)."""
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1]


def read_socket(path, request=b"\n", timeout=DEFAULT_TIMEOUT, max_bytes=DEFAULT_MAX_BYTES,
                allowed_uids=()):
    """The dump served on `path` (``@name`` for an abstract socket), as bytes.

    `request` is the line sent first (b"json\\n"; b"\\n" for the server's
    default format); `timeout` covers the connect and the whole read, of at
    most `max_bytes`.  The server must run as this process's user, root, or
    a uid in `allowed_uids` (None: any).  CutShort when the dump did not come
    whole.
    """
    deadline = time.monotonic() + timeout
    address = "\0" + path[1:] if path.startswith("@") else path
    chunks, size = [], 0

    def cut(why):
        if not chunks:
            return ReadError(why)
        return CutShort("cut short after %d bytes: %s" % (size, why), b"".join(chunks))

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            try:
                sock.connect(address)
            except ConnectionRefusedError:
                # Maybe a worker between bind() and listen(): once more, shortly.
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                sock.connect(address)
        except FileNotFoundError:
            raise ReadError("no such socket") from None
        except ConnectionRefusedError:
            raise ReadError("connection refused: no process serves it (a stale socket?)") from None
        except PermissionError:
            raise ReadError("permission denied") from None
        except socket.timeout:
            raise ReadError("timed out connecting after %gs" % timeout) from None
        except OSError as error:
            raise ReadError("cannot connect: %s" % (error.strerror or error)) from None
        uid = server_uid(sock)
        if allowed_uids is not None and uid not in (os.geteuid(), 0, *allowed_uids):
            raise ReadError("served by %s, neither yours nor root's: not read "
                            "(--allow-uid %d reads it)" % (describe_uid(uid), uid))
        if request:
            try:
                sock.sendall(request)
            except socket.timeout:
                raise ReadError("timed out sending the request after %gs" % timeout) from None
            except OSError:
                pass  # the server may have answered and closed already: read what it said
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise cut("timed out after %gs" % timeout)
            sock.settimeout(left)
            try:
                chunk = sock.recv(min(_READ_SIZE, max_bytes + 1 - size))
            except socket.timeout:
                raise cut("timed out after %gs" % timeout) from None
            except ConnectionResetError:
                if chunks:
                    break  # the server closed with our extra bytes unread: the reply is whole
                raise ReadError("connection reset before any dump") from None
            except OSError as error:
                raise cut("cannot read: %s" % (error.strerror or error)) from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                chunks[-1] = chunk[: len(chunk) - (size - max_bytes)]
                size = max_bytes
                raise cut("more than --max-bytes %d" % max_bytes)
    finally:
        sock.close()
    data = b"".join(chunks)
    for refusal in (b"tbfast: refused:", b"tbfast: bad request:"):
        if data.startswith(refusal):
            raise ReadError(data[len(b"tbfast: "):].decode("utf-8", "surrogateescape").strip())
    if not data:
        raise ReadError("the server closed without a dump")
    return data


def _escape(match, json_string):
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, kept by surrogateescape
        return "\\ufffd" if json_string else "\\x%02x" % (code - 0xDC00)
    if json_string:
        return "\\u%04x" % code  # the same string to a JSON parser
    return repr(match.group())[1:-1]  # \r, \x1b, \x85, \u2028: as the dumps escape them


def printable(text, json_string=False):
    """`text` with the characters _CONTROL names escaped, as Python's repr() spells them,
    or as JSON does for `json_string` (the parsed value stays the same)."""
    return _CONTROL.sub(lambda match: _escape(match, json_string), text)


def printable_dump(data):
    """A dump's bytes as they may go to a terminal: the same bytes, but for what
    printable() escapes (in JSON's spelling when the dump is JSON)."""
    text = data.decode("utf-8", "surrogateescape")
    return printable(text, text.lstrip().startswith("{")).encode("utf-8")


def worker_order(path):
    """Sort key: the trailing worker number, numerically (tb.2 before tb.10)."""
    match = re.search(r"(\d+)$", path)
    if match is None:
        return (path, -1)
    return (path[: match.start()], int(match.group(1)))


def _is_socket(path):
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def expand(patterns):
    """Paths to read, globs expanded (sockets only, no .lock), and errors as
    (pattern, message) for globs that matched none."""
    paths, errors, seen = [], [], set()
    for pattern in patterns:
        if glob.has_magic(pattern) and not pattern.startswith("@"):
            matches = sorted((match for match in glob.glob(pattern)
                              if not match.endswith(".lock") and _is_socket(match)),
                             key=worker_order)
            if not matches:
                errors.append((pattern, "no socket matches"))
        else:
            matches = [pattern]
        for path in matches:
            if path not in seen:
                seen.add(path)
                paths.append(path)
    return paths, errors


def state_of(thread):
    """A json dump's thread state in words: "idle", "running", "waiting for the GIL",
    "sleeping in futex", ...; None when the dump does not say."""
    state, syscall = thread.get("state"), thread.get("syscall")
    if state == "waiting_gil":
        return "waiting for the GIL"
    if state == "sleeping" and syscall:
        return "sleeping in %s" % syscall
    return str(state) if state else None


def stacks(document):
    """Each thread's state (state_of) and stack in a json dump, the stack outermost
    first as (file, line, function, source) tuples; ValueError for a document that
    is not a tbfast dump."""
    try:
        return [(state_of(thread),
                 tuple((str(frame["file"]), int(frame["line"]), str(frame["function"]),
                        None if frame.get("source") is None else str(frame["source"]))
                       for frame in reversed(thread.get("frames") or ())))
                for thread in document["threads"]]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ValueError("its threads or frames are missing or malformed") from None


def summarize(dumps):
    """Groups the threads of all `dumps` ((path, stacks) pairs) by state and stack:
    a list of (threads, workers, (state, stack)), most common first."""
    groups = {}
    for path, threads in dumps:
        for key in threads:
            group = groups.setdefault(key, [0, set()])
            group[0] += 1
            group[1].add(path)
    ordered = sorted(groups.items(), key=lambda item: (-item[1][0], -len(item[1][1]),
                                                       item[0][0] or "", item[0][1]))
    return [(count, len(workers), key) for key, (count, workers) in ordered]


def _plural(count, word):
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


def format_summary(groups, workers):
    threads = sum(count for count, _, _ in groups)
    lines = ["%s in %s, %s:" % (_plural(threads, "thread"), _plural(workers, "worker"),
                                "%s and state%s" % (_plural(len(groups), "different stack"),
                                                    "" if len(groups) == 1 else "s")),
             ""]
    for count, in_workers, (state, stack) in groups:
        lines.append("%s in %s%s %s in:" % (_plural(count, "thread"), _plural(in_workers, "worker"),
                                            " (%s)" % state if state else "",
                                            "is" if count == 1 else "are"))
        if not stack:
            lines.append("  (no Python frames)")
        for file, line, function, source in stack:
            lines.append('  File "%s", line %d, in %s' % (printable(file), line, printable(function)))
            if source:
                lines.append("    %s" % printable(source))
        lines.append("")
    return "\n".join(lines)


def connect_and_read(args, out, err):
    paths, errors = expand(args.paths)
    failed = bool(errors)
    for pattern, message in errors:
        err.write("tbfast: %s: %s\n" % (printable(pattern), message))
    words = ["json" if args.summary else args.format, "locals" if args.locals else None,
             "gil-free" if args.gil_free else None,
             "native-all" if args.native_all else "native" if args.native else None]
    request = " ".join(word for word in words if word).encode() + b"\n"
    allowed_uids = None if args.any_owner else args.allow_uid
    dumps, printed = [], 0
    for path in paths:
        cut_short = None
        try:
            data = read_socket(path, request, args.timeout, args.max_bytes, allowed_uids)
        except CutShort as error:
            data, cut_short = error.data, printable(str(error))
        except ReadError as error:
            failed = True
            err.write("tbfast: %s: %s\n" % (printable(path), printable(str(error))))
            err.flush()
            continue
        if cut_short is not None:
            failed = True
            err.write("tbfast: %s: %s\n" % (printable(path), cut_short))
            err.flush()
        if args.summary:
            if cut_short is None:
                try:
                    dumps.append((path, stacks(json.loads(data))))
                except ValueError as error:
                    failed = True
                    err.write("tbfast: %s: not a json dump: %s\n"
                              % (printable(path), printable(str(error))))
            continue
        if args.headings:
            out.write(b"%s==> %s <==\n" % (b"\n" if printed else b"",
                                            printable(path).encode("utf-8")))
        text = printable_dump(data)
        out.write(text if text.endswith(b"\n") else text + b"\n")
        if cut_short is not None:
            out.write(b"*** tbfast: %s ***\n" % cut_short.encode("utf-8"))
        printed += 1
        out.flush()
    if args.summary and dumps:
        out.write(format_summary(summarize(dumps), len(dumps)).encode("utf-8", "replace"))
        out.flush()
    return 1 if failed else 0


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a whole number: %r" % text) from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive: %r" % text)
    return value


def _uid(text):
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError("no such user: %r" % text) from None


def _timeout(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number of seconds: %r" % text) from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number of seconds: %r" % text)
    return value


def parser():
    from . import MODE
    top = argparse.ArgumentParser(
        prog="tbfast", description="Read the live tracebacks of every thread of running "
        "workers from their tracebacker sockets.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version",
                     version="tbfast %s (%s)" % (__version__, MODE))
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    read = commands.add_parser(
        "connect-and-read", help="print the dumps of tracebacker sockets",
        description="Connect to each tracebacker socket and print its dump under a "
        "heading, as uwsgi --connect-and-read does.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    read.add_argument("paths", nargs="+", metavar="PATH",
                      help="a socket, @name for an abstract one, or a quoted glob such as "
                      "'/tmp/tbsocket.*' (read in worker order, .lock files skipped)")
    read.add_argument("--format", choices=FORMATS,
                      help="ask for this format (default: the one the worker was enabled with)")
    read.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                      help="for the connect and the whole read of each socket (default: %g)"
                      % DEFAULT_TIMEOUT)
    read.add_argument("--locals", action="store_true",
                      help="show each frame's local variables (names that look secret are "
                      "masked)")
    read.add_argument("--gil-free", action="store_true",
                      help="skip the consistent walk: do not wait for the GIL at all")
    read.add_argument("--native", action="store_true",
                      help="also the C frames of the threads that run or hold the GIL, with "
                      "their names (a native dump is GIL-free)")
    read.add_argument("--native-all", action="store_true",
                      help="the C frames of every thread")
    read.add_argument("--summary", action="store_true",
                      help="group identical stacks across all threads of all workers read, "
                      "most common first")
    read.add_argument("--no-headings", dest="headings", action="store_false",
                      help="print the dumps without the '==> PATH <==' lines")
    read.add_argument("--max-bytes", type=_positive_int, default=DEFAULT_MAX_BYTES,
                      metavar="N", help="read at most N bytes of each socket, and say so when "
                      "there was more (default: %d, the dump buffer's default size)"
                      % DEFAULT_MAX_BYTES)
    read.add_argument("--allow-uid", type=_uid, action="append", default=[], metavar="UID",
                      help="also read sockets served by this user (a uid or a name); by "
                      "default only those served by your own user or root are read")
    read.add_argument("--any-owner", action="store_true",
                      help="read sockets whoever serves them")
    return top


def main(argv=None):
    _leave_slot()
    arguments = parser()
    args = arguments.parse_args(argv)
    if args.summary and args.format:
        arguments.error("--summary reads json: leave out --format")
    out = sys.stdout.buffer
    try:
        return connect_and_read(args, out, sys.stderr)
    except BrokenPipeError:
        # `tbfast ... | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


def _leave_slot():
    """With TBFAST_TRACEBACKER set, this process was given a socket at start-up:
    a reading tool should not hold a worker's slot."""
    if os.environ.get("TBFAST_TRACEBACKER"):
        from . import sockets
        if sockets._autostarted:
            sockets.disable_tracebacker()


if __name__ == "__main__":
    sys.exit(main())
