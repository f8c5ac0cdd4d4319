"""tbfast's command line: read the tracebacker sockets of live workers.

    tbfast connect-and-read /tmp/tbsocket.1
    tbfast connect-and-read '/tmp/tbsocket.*'
    tbfast connect-and-read --summary '/tmp/tbsocket.*'
"""

import argparse
import glob
import json
import os
import re
import socket
import stat
import sys
import time

from . import __version__
from ._limits import FORMATS

DEFAULT_TIMEOUT = 5.0
_READ_SIZE = 65536

EPILOG = """\
examples:
  tbfast connect-and-read /tmp/tbsocket.1
  tbfast connect-and-read '/tmp/tbsocket.*'            every worker, in worker order
  tbfast connect-and-read --format json @app.3         an abstract socket
  tbfast connect-and-read --summary '/tmp/tbsocket.*'  where the pool is stuck
  tbfast connect-and-read --locals /tmp/tbsocket.1     with each frame's locals

Workers serve their sockets after tbfast.enable_tracebacker("/tmp/tbsocket."),
or with TBFAST_TRACEBACKER=/tmp/tbsocket. in their environment.  Only the
workers' own user and root may read them.  The exit status is 1 when any
socket could not be read (the others are still printed), 2 for a usage error.
"""


class ReadError(Exception):
    """A socket that gave no dump; the message says why."""


def read_socket(path, request=b"\n", timeout=DEFAULT_TIMEOUT):
    """The dump served on `path` (``@name`` for an abstract socket), as bytes.

    `request` is the line sent first (b"json\\n"; b"\\n" for the server's
    default format); `timeout` covers the connect and the whole read.
    """
    deadline = time.monotonic() + timeout
    address = "\0" + path[1:] if path.startswith("@") else path
    chunks = []
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
                raise ReadError("timed out after %gs" % timeout)
            sock.settimeout(left)
            try:
                chunk = sock.recv(_READ_SIZE)
            except socket.timeout:
                raise ReadError("timed out after %gs" % timeout) from None
            except ConnectionResetError:
                if chunks:
                    break  # the server closed with our extra bytes unread: the reply is whole
                raise ReadError("connection reset before any dump") from None
            except OSError as error:
                raise ReadError("cannot read: %s" % (error.strerror or error)) from None
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        sock.close()
    data = b"".join(chunks)
    for refusal in (b"tbfast: refused:", b"tbfast: bad request:"):
        if data.startswith(refusal):
            raise ReadError(data[len(b"tbfast: "):].decode("utf-8", "replace").strip())
    if not data:
        raise ReadError("the server closed without a dump")
    return data


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


def _stack_key(thread):
    """A thread's frames, outermost first, as (file, line, function, source)."""
    return tuple((frame["file"], frame["line"], frame["function"], frame.get("source"))
                 for frame in reversed(thread.get("frames") or ()))


def summarize(dumps):
    """Groups identical stacks across the threads of all `dumps` ((path, json) pairs):
    a list of (threads, workers, stack), most common first."""
    groups = {}
    for path, document in dumps:
        for thread in document.get("threads", ()):
            key = _stack_key(thread)
            group = groups.setdefault(key, [0, set()])
            group[0] += 1
            group[1].add(path)
    ordered = sorted(groups.items(), key=lambda item: (-item[1][0], -len(item[1][1]), item[0]))
    return [(count, len(workers), stack) for stack, (count, workers) in ordered]


def _plural(count, word):
    return "%d %s%s" % (count, word, "" if count == 1 else "s")


def format_summary(groups, workers):
    threads = sum(count for count, _, _ in groups)
    lines = ["%s in %s, %s:" % (_plural(threads, "thread"), _plural(workers, "worker"),
                                _plural(len(groups), "different stack")), ""]
    for count, in_workers, stack in groups:
        lines.append("%s in %s %s in:" % (_plural(count, "thread"), _plural(in_workers, "worker"),
                                          "is" if count == 1 else "are"))
        if not stack:
            lines.append("  (no Python frames)")
        for file, line, function, source in stack:
            lines.append('  File "%s", line %d, in %s' % (file, line, function))
            if source:
                lines.append("    %s" % source)
        lines.append("")
    return "\n".join(lines)


def connect_and_read(args, out, err):
    paths, errors = expand(args.paths)
    failed = bool(errors)
    for pattern, message in errors:
        err.write("tbfast: %s: %s\n" % (pattern, message))
    words = ["json" if args.summary else args.format, "locals" if args.locals else None,
             "gil-free" if args.gil_free else None]
    request = " ".join(word for word in words if word).encode() + b"\n"
    dumps, printed = [], 0
    for path in paths:
        try:
            data = read_socket(path, request, args.timeout)
        except ReadError as error:
            failed = True
            err.write("tbfast: %s: %s\n" % (path, error))
            err.flush()
            continue
        if args.summary:
            try:
                dumps.append((path, json.loads(data)))
            except ValueError as error:
                failed = True
                err.write("tbfast: %s: not a json dump: %s\n" % (path, error))
            continue
        if args.headings:
            out.write(b"%s==> %s <==\n" % (b"\n" if printed else b"", os.fsencode(path)))
        out.write(data if data.endswith(b"\n") else data + b"\n")
        printed += 1
        out.flush()
    if args.summary and dumps:
        out.write(format_summary(summarize(dumps), len(dumps)).encode("utf-8", "replace"))
        out.flush()
    return 1 if failed else 0


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
    read.add_argument("--summary", action="store_true",
                      help="group identical stacks across all threads of all workers read, "
                      "most common first")
    read.add_argument("--no-headings", dest="headings", action="store_false",
                      help="print the dumps without the '==> PATH <==' lines")
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
