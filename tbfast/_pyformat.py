"""The Python formatter: a dump's text, uwsgi, json and faulthandler formats, made
holding the GIL.

The fallback's dumps come from here, and so do the dumps with locals (safe reprs
need the GIL) and the frames of tbfast.rich and tbfast.sentry, whether or not the
core is in use.  Its output equals the core's, line for line below the header:
this module is also the readable reference of the formats the core writes.
"""

import gc
import json
import linecache
import os
import re
import sys
import threading
import time

from ._limits import (
    CONTEXT_LIMIT,
    FILENAME_LIMIT,
    FUNCTION_LIMIT,
    IDLE_WAITS,
    LOCAL_NAME_LIMIT,
    LOCAL_VALUE_LIMIT,
    NAME_LIMIT,
    RECURSIVE_CUTOFF,
    SOURCE_LIMIT,
    SYSCALL_NAMES,
)
from .saferepr import DUMP_TIME_BUDGET, frame_locals

__all__ = ["MODE", "Frame", "bounded", "printable", "current_frames", "format_dump",
           "format_text_frames", "format_text_locals", "set_context", "get_context",
           "leave_out_thread"]

MODE = "python"  # in the header of its dumps
_UWSGI_HEADER = b"*** uWSGI Python tracebacker output ***\n\n"
_contexts = {}
# In UTF-8: C0 controls and DEL, C1 controls, the line and paragraph separators.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")


def _no_thread():
    return 0


_left_out_ident = _no_thread


def leave_out_thread(ident_of):
    """Dumps leave out the thread whose ident `ident_of()` gives (0: none): the core's
    consistent thread (tbfast.consistent) is tbfast's own, and no dump shows it."""
    global _left_out_ident
    _left_out_ident = ident_of


def bounded(text, limit):
    """UTF-8 of `text`, lone surrogates as \\udcXX, cut to `limit` bytes with '...'."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data
    cut = data[: limit - 3]
    # Never end inside a multi-byte sequence.
    return cut.decode("utf-8", "ignore").encode("utf-8") + b"..."


def printable(data):
    """A field of the text and uwsgi formats (UTF-8), its control characters escaped as
    repr() spells them (\\n, \\x1b, \\x85, \\u2028), as the core's emit_printable
    does: no name, context or path can end a line, fake one, or reach a terminal as
    an escape sequence."""
    return _CONTROL.sub(lambda match: repr(match.group().decode())[1:-1].encode(), data)


def _json_string(data):
    return json.dumps(data.decode("utf-8"), ensure_ascii=False).encode("utf-8")


def _json_optional(data):
    return b"null" if data is None else _json_string(data)


def _timestamp(seconds):
    micros = int(seconds * 1_000_000)
    whole, fraction = divmod(micros, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + ".%06dZ" % fraction


class Frame:
    """One frame's fields as the dumps show them, bounded as the core bounds them."""

    __slots__ = ("file", "line", "function", "source", "code", "locals", "more_locals")

    def __init__(self, frame, checked, safe=None):
        code = frame.f_code
        if code.co_filename not in checked:  # once a file a dump, as extract_stack does
            linecache.checkcache(code.co_filename)
            checked.add(code.co_filename)
        self.code = code
        self.file = bounded(code.co_filename, FILENAME_LIMIT)
        self.line = frame.f_lineno
        self.function = bounded(code.co_name, FUNCTION_LIMIT)
        source = linecache.getline(code.co_filename, self.line).strip() if self.line else ""
        self.source = bounded(source, SOURCE_LIMIT) if source else None
        self.locals, self.more_locals = None, 0
        if safe is not None:
            shown, self.more_locals = frame_locals(frame, safe)
            self.locals = [(bounded(name, LOCAL_NAME_LIMIT), bounded(value, LOCAL_VALUE_LIMIT))
                           for name, value in shown.items()]

    def same_place(self, other):
        return (other is not None and self.file == other.file
                and self.line == other.line and self.function == other.function)


class _Thread:
    __slots__ = ("ident", "native_id", "name", "current", "holds_gil", "context", "frames",
                 "state", "kernel", "syscall")


STATES = ("running", "sleeping", "idle", "waiting_gil")  # the header counts them in this order


def _kernel_state(native_id):
    """("running" or "sleeping", the system call's name or None), from one read of
    /proc/self/task/TID/syscall as the core reads it; (None, None) when unreadable."""
    try:
        with open("/proc/self/task/%d/syscall" % native_id, "rb") as file:
            fields = file.read(256).split()
        if fields[0] == b"running":
            return "running", None
        number = int(fields[0])
    except (OSError, TypeError, ValueError, IndexError):
        return None, None
    if number < 0:
        return "sleeping", None
    return "sleeping", SYSCALL_NAMES.get(number, "syscall %d" % number)


def _read_state(thread, innermost):
    """A thread's state as the core decides it (src/_states.pxi), but for what
    Python cannot see: which thread waits for the GIL (never said here), and which
    one collects garbage (in_gc is false)."""
    thread.kernel, thread.syscall = None, None
    if thread.current:
        thread.kernel = "running"
    elif innermost is not None and innermost.f_code in IDLE_WAITS:
        thread.state = "idle"
        return
    elif thread.native_id is not None:
        thread.kernel, thread.syscall = _kernel_state(thread.native_id)
    thread.state = thread.kernel


def current_frames():
    """sys._current_frames() with the collector off: it builds frame objects while it
    holds the interpreter's thread-list lock, and a collection run there that frees a
    threading.local takes that same lock, so the thread waits on itself for good
    (seen on 3.11.7 under the fuzz tests, with gdb)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames()
    finally:
        if was_enabled:
            gc.enable()


def _snapshot(all_threads, skip, safe=None, exclude_self=False):
    """The threads to dump, main thread first, innermost frame first; with
    each frame's locals when `safe` (a SafeRepr) is given; without the calling
    thread with `exclude_self`, and never with the one left out (leave_out_thread)."""
    current = threading.get_ident()
    main = threading.main_thread().ident
    frames_by_thread = current_frames()
    # The caller's frames are ours up to the public API call.
    frames_by_thread[current] = sys._getframe(skip + 1)
    idents = [current] if not all_threads else sorted(
        frames_by_thread, key=lambda ident: ident != main)
    excluded = {_left_out_ident()} | ({current} if exclude_self else set())
    idents = [ident for ident in idents if ident not in excluded]
    threads, checked = [], set()
    for ident in idents:
        thread = _Thread()
        known = threading._active.get(ident)
        thread.ident = ident
        thread.native_id = (threading.get_native_id() if ident == current
                            else getattr(known, "native_id", None))
        thread.name = bounded(known.name, NAME_LIMIT) if known is not None else None
        thread.current = ident == current
        thread.holds_gil = thread.current  # we run Python, so we hold it
        context = _contexts.get(ident)
        thread.context = bounded(context, CONTEXT_LIMIT) if context else None
        thread.frames = []
        frame = frames_by_thread[ident]
        _read_state(thread, frame)
        while frame is not None:
            thread.frames.append(Frame(frame, checked, safe))
            frame = frame.f_back
        threads.append(thread)
    return threads


def _text_header(thread):
    parts = []
    if thread.name is not None:
        parts.append(b'name "%s"' % printable(thread.name))
    if thread.native_id is not None:
        parts.append(b"native id %d" % thread.native_id)
    if thread.holds_gil:
        parts.append(b"holds the GIL")
    if thread.state == "idle":
        parts.append(b"idle")
    if thread.kernel == "running":
        parts.append(b"running")
    elif thread.kernel == "sleeping":
        parts.append(b"sleeping in %s" % thread.syscall.encode() if thread.syscall else b"sleeping")
    head = b"Current thread" if thread.current else b"Thread"
    line = b"%s 0x%016x" % (head, thread.ident)
    if parts:
        line += b" (" + b", ".join(parts) + b")"
    return line + b" (most recent call first):\n"


def _repeated(count):
    count -= RECURSIVE_CUTOFF
    return b"  [Previous line repeated %d more time%s]\n" % (count, b"s" if count > 1 else b"")


def format_text_frames(frames):
    """A stack's frame lines, innermost first, deep recursion folded."""
    out = []
    previous, count = None, 0
    for frame in frames:
        if not frame.same_place(previous):
            if count > RECURSIVE_CUTOFF:
                out.append(_repeated(count))
            previous, count = frame, 0
        count += 1
        if count > RECURSIVE_CUTOFF:
            continue
        out.append(b'  File "%s", line %d in %s\n' % (
            printable(frame.file), frame.line, printable(frame.function)))
        if frame.source is not None:
            out.append(b"    %s\n" % printable(frame.source))
        out.append(format_text_locals(frame))
    if count > RECURSIVE_CUTOFF:
        out.append(_repeated(count))
    return b"".join(out)


def _format_text(threads):
    out = []
    for thread in threads:
        out.append(_text_header(thread))
        if thread.context is not None:
            out.append(b"  Context: %s\n" % printable(thread.context))
        out.append(format_text_frames(thread.frames))
        out.append(b"\n")
    return b"".join(out)


def format_text_locals(frame):
    """A frame's locals, one a line under its source line ("" without locals)."""
    if frame.locals is None:
        return b""
    lines = [b"      %s = %s\n" % (printable(name), printable(value))
             for name, value in frame.locals]
    if frame.more_locals:
        lines.append(b"      ... %d more\n" % frame.more_locals)
    return b"".join(lines)


def _format_uwsgi(threads):
    out = [_UWSGI_HEADER]
    for thread in threads:
        name = printable(thread.name) if thread.name is not None else b"%d" % thread.ident
        for frame in reversed(thread.frames):
            out.append(b"thread_id = %s filename = %s lineno = %d function = %s line = %s\n" % (
                name, printable(frame.file), frame.line, printable(frame.function),
                printable(frame.source or b"")))
        out.append(b"\n")
    return b"".join(out)


def _format_json_frame(frame):
    locals_ = b"" if frame.locals is None else b',"locals":{%s}' % b",".join(
        b"%s:%s" % (_json_string(name), _json_string(value)) for name, value in frame.locals)
    return b'{"file":%s,"line":%d,"function":%s,"source":%s%s}' % (
        _json_string(frame.file), frame.line, _json_string(frame.function),
        _json_optional(frame.source), locals_)


def _format_json_threads(threads):
    items = []
    for thread in threads:
        frames = b",".join(_format_json_frame(frame) for frame in thread.frames)
        items.append(
            b'{"ident":%d,"native_id":%s,"name":%s,"kernel_name":null,"current":%s,"holds_gil":%s,'
            b'"state":%s,"syscall":%s,"waiting_gil":false,"in_gc":false,'
            b'"context":%s,"frames":[%s]}' % (
                thread.ident,
                b"null" if thread.native_id is None else b"%d" % thread.native_id,
                _json_optional(thread.name),
                b"true" if thread.current else b"false",
                b"true" if thread.holds_gil else b"false",
                _json_optional(thread.state and thread.state.encode()),
                _json_optional(thread.kernel == "sleeping" and thread.syscall and thread.syscall.encode()
                               or None),
                _json_optional(thread.context), frames))
    return b",".join(items)


def format_dump(all_threads, fmt, skip, trigger="api", exclude_self=False, safe=None,
                max_threads=0):
    """The whole dump as bytes, in format 'text', 'uwsgi', 'json' or 'faulthandler';
    without the calling thread with `exclude_self`; with each frame's locals, repr'd
    by `safe` (a SafeRepr), when it is given and the format is text or json (the
    others' grammar has no place for them); `max_threads` as faulthandler's."""
    if fmt == "faulthandler":
        return _format_faulthandler(all_threads, skip + 1, exclude_self, max_threads)
    if fmt == "uwsgi":
        safe = None
    if safe is None:
        threads = _snapshot(all_threads, skip + 1, exclude_self=exclude_self)
    else:
        with safe.budget(DUMP_TIME_BUDGET):
            threads = _snapshot(all_threads, skip + 1, safe, exclude_self)
    pid, now = os.getpid(), _timestamp(time.time())
    counts = [(state, sum(thread.state == state for thread in threads)) for state in STATES]
    if fmt == "json":
        return b'{"tbfast":1,"pid":%d,"time":"%s","trigger":"%s","mode":"%s",%s"threads":[%s],' \
               b'"truncated":null}\n' % (pid, now.encode(), trigger.encode(), MODE.encode(),
                                         b"".join(b'"%s":%d,' % (state.encode(), count)
                                                  for state, count in counts),
                                         _format_json_threads(threads))
    if fmt == "uwsgi":  # uWSGI's parsers expect its own first line
        return _format_uwsgi(threads)
    header = b"tbfast dump: pid=%d time=%s trigger=%s mode=%s threads=%d%s\n" % (
        pid, now.encode(), trigger.encode(), MODE.encode(), len(threads),
        b"".join(b" %s=%d" % (state.encode(), count) for state, count in counts))
    return header + _format_text(threads)


# faulthandler's format, as src/_faulthandler.pxi writes it (see there for the rules).
_FAULTHANDLER_STRING_LIMIT = 500
_FAULTHANDLER_DEPTH_LIMIT = 100
_FAULTHANDLER_ELLIPSIS = sys.version_info < (3, 13)
_FAULTHANDLER_THREAD_NAMES = sys.version_info >= (3, 14)


def _faulthandler_ascii(text):
    """_Py_DumpASCII: printable ASCII as it is, other code points escaped; cut at 500."""
    escaped = "".join(
        char if 0x20 <= ord(char) <= 0x7e else
        "\\x%02x" % ord(char) if ord(char) <= 0xff else
        "\\u%04x" % ord(char) if ord(char) <= 0xffff else "\\U%08x" % ord(char)
        for char in text[:_FAULTHANDLER_STRING_LIMIT])
    return escaped + ("..." if len(text) > _FAULTHANDLER_STRING_LIMIT else "")


def _faulthandler_frames(frame):
    lines = []
    if frame is None:
        return ["  <no Python frame>"]
    while frame is not None:
        if len(lines) == _FAULTHANDLER_DEPTH_LIMIT:
            if _FAULTHANDLER_ELLIPSIS:
                lines.append("  ...")
            break
        code = frame.f_code
        lines.append('  File "%s", line %s in %s' % (
            _faulthandler_ascii(code.co_filename),
            frame.f_lineno if frame.f_lineno is not None else "???",
            _faulthandler_ascii(code.co_name)))
        frame = frame.f_back
    return lines


def _kernel_thread_name(native_id):
    try:
        with open("/proc/self/task/%d/comm" % native_id, "rb") as comm:
            name = comm.read(64).rstrip(b"\n")
    except (OSError, TypeError):
        return ""
    return " [%s]" % printable(name).decode("utf-8", "replace") if name else ""


def _faulthandler_block(ident, frame, current):
    known = threading._active.get(ident)
    name = _kernel_thread_name(getattr(known, "native_id", None) if not current
                               else threading.get_native_id()) if _FAULTHANDLER_THREAD_NAMES else ""
    return ["%s 0x%016x%s (most recent call first):" % (
        "Current thread" if current else "Thread", ident, name)] + _faulthandler_frames(frame)


def _format_faulthandler(all_threads, skip, exclude_self, max_threads):
    """The threads newest first (the order sys._current_frames() keeps), each as
    faulthandler writes it; past `max_threads` (0: all) its "...", then the current
    and the main thread if they were cut."""
    current, main = threading.get_ident(), threading.main_thread().ident
    frames_by_thread = current_frames()
    frames_by_thread[current] = sys._getframe(skip + 1)
    if not all_threads:
        lines = ["Stack (most recent call first):"] + _faulthandler_frames(frames_by_thread[current])
        return ("\n".join(lines) + "\n").encode()
    excluded = {_left_out_ident()} | ({current} if exclude_self else set())
    idents = [ident for ident in frames_by_thread if ident not in excluded]
    shown = idents if max_threads == 0 else idents[:max(max_threads, 0)]
    blocks = ["\n".join(_faulthandler_block(ident, frames_by_thread[ident], ident == current))
              for ident in shown]
    if len(shown) < len(idents):
        blocks.append("...")
        blocks += ["\n".join(_faulthandler_block(ident, frames_by_thread[ident], ident == current))
                   for ident in (current, main) if ident in idents and ident not in shown]
    return ("\n\n".join(blocks) + "\n").encode()


def set_context(text):
    """This thread's context line for the dumps made here; None clears it."""
    if text is None:
        _contexts.pop(threading.get_ident(), None)
    else:
        _contexts[threading.get_ident()] = text


def get_context():
    return _contexts.get(threading.get_ident())


