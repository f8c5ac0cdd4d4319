"""The harakiri watchdog in pure Python, for when the C core is missing.

Same interface as the core's (tbfast/watchdog.py drives both), but its thread
needs the GIL, so it cannot see a thread stuck while holding it, and its dumps
do not mark the stuck thread's heading.
"""

import functools
import itertools
import os
import struct
import threading
import time

from ._limits import HARAKIRI_ACTIONS as ACTIONS, NOTIFY_RECORD, SCOPE_DEPTH, check_seconds
from ._pyformat import format_dump
from ._pywrite import write_dump

__all__ = ["HarakiriScope", "running", "notify", "watchdog_configure", "take_mailbox",
           "raise_in_thread", "dump_later", "cancel_dump_later"]

_RECORD = struct.Struct(NOTIFY_RECORD)


def _nanoseconds(seconds, what, zero_ok=False):
    return int(check_seconds(seconds, what, zero_ok) * 1e9)


class _State:
    def __init__(self):
        self.changed = threading.Condition()
        self.deadlines = {}  # ident -> [deadline_ns, armed_ns, action, reported, next_report_ns]
        self.scopes = {}  # ident -> [(scope, the deadlines entry its entry replaced)], innermost last
        self.dump_fd, self.format, self.notify_fd = -1, "text", -1
        self.repeat_ns, self.grace_ns = 10 ** 10, 0
        self.mailboxes = {}
        self.mailbox_ids = itertools.count()
        self.later = None  # (deadline_ns, interval_ns, fd, exit)
        self.thread = None
        self.pid = None  # where the thread runs: a forked child has none


def _forget_the_parent():
    """In a forked child (os.fork, or a C fork that runs no Python hook): the thread
    stayed in the parent, and so did every other thread but this one."""
    _state.changed = threading.Condition()  # it may have been held at fork
    _state.thread = None
    _state.deadlines = {ident: entry for ident, entry in _state.deadlines.items()
                        if ident == threading.get_ident()}
    _state.scopes = {ident: entry for ident, entry in _state.scopes.items()
                     if ident == threading.get_ident()}
    _state.mailboxes.clear()
    _state.later = None


_state = _State()


def running():
    """Whether this process's watchdog thread runs (tbfast.watchdog starts it on the
    first arm when it does not)."""
    return _state.thread is not None and _state.pid == os.getpid()


class HarakiriScope:
    """As the core's: keeps no state, so one scope serves many threads and calls."""

    def __init__(self, seconds, action="log"):
        self.timeout_ns = _nanoseconds(seconds, "timeout")
        if action not in ACTIONS:
            raise ValueError("unknown action %r: use one of log, raise, abort" % (action,))
        self.seconds, self.action_name = seconds, action

    def __enter__(self):
        ident = threading.get_ident()
        now = time.monotonic_ns()
        with _state.changed:
            stack = _state.scopes.setdefault(ident, [])
            if len(stack) == SCOPE_DEPTH:
                raise RuntimeError("tbfast: harakiri scopes nested more than %d deep" % SCOPE_DEPTH)
            stack.append((self, _state.deadlines.get(ident)))
            _state.deadlines[ident] = [now + self.timeout_ns, now, self.action_name, False, 0]
            _state.changed.notify()
        return self

    def __exit__(self, *exc_info):
        with _state.changed:
            ident = self._innermost_in()
            if ident is None:
                return False  # never entered, or already exited
            _scope, outer = _state.scopes[ident].pop()
            if outer is None:
                _state.deadlines.pop(ident, None)
            else:
                outer[3] = False  # armed again, reported anew
                _state.deadlines[ident] = outer
                _state.changed.notify()
        return False

    def _innermost_in(self):
        """The thread whose innermost scope this is, the caller's first (a scope used
        once may be exited by another thread), or None."""
        mine = threading.get_ident()
        for ident in [mine] + list(_state.scopes):
            stack = _state.scopes.get(ident)
            if stack and stack[-1][0] is self:
                return ident
        return None

    def __call__(self, function):
        @functools.wraps(function)
        def guarded(*args, **kwargs):
            with self:
                return function(*args, **kwargs)
        return guarded


def notify(ident, stuck_ns, kind, dump):
    """A record for the watchdog's Python side (tbfast.watchdog), with `dump` in a
    mailbox, as the core's watchdog and signal handler send theirs."""
    if _state.notify_fd < 0:
        return
    mailbox = 0
    if dump is not None:
        mailbox = next(_state.mailbox_ids) + 1
        _state.mailboxes[mailbox - 1] = dump
    os.write(_state.notify_fd, _RECORD.pack(ident, stuck_ns, kind, mailbox, 0))


def _expire(ident, entry, now):
    deadline, armed, action, reported, next_report = entry
    stuck = now - armed
    if not reported or (action == "log" and now >= next_report):
        dump = format_dump(True, _state.format, 0, "harakiri")
        if _state.dump_fd >= 0:
            write_dump(_state.dump_fd, dump)
        notify(ident, stuck, 0, dump)
        entry[4] = now + _state.repeat_ns
    if not reported and action != "log":
        time.sleep(_state.grace_ns / 1e9)
        if action == "abort":
            os.kill(os.getpid(), 9)
        notify(ident, stuck, 1, None)
    entry[3] = True
    return entry[4] if action == "log" else None


def _run():
    while True:
        with _state.changed:
            now = time.monotonic_ns()
            nearest = None
            for ident, entry in list(_state.deadlines.items()):
                due = entry[0] if now < entry[0] else _expire(ident, entry, now)
                nearest = due if nearest is None or (due is not None and due < nearest) else nearest
            if _state.later is not None:
                deadline, interval, fd, exit_after = _state.later
                if now >= deadline:
                    write_dump(fd, format_dump(True, "text", 0, "timeout"))
                    if exit_after:
                        os._exit(1)
                    _state.later = (now + interval, interval, fd, False) if interval else None
                if _state.later is not None:
                    nearest = _state.later[0] if nearest is None else min(nearest, _state.later[0])
            timeout = None if nearest is None else max(0, nearest - time.monotonic_ns()) / 1e9
            _state.changed.wait(timeout)


def watchdog_configure(dump_fd, fmt, notify_fd, repeat, grace):
    if _state.thread is not None and _state.pid != os.getpid():
        _forget_the_parent()
    with _state.changed:
        _state.dump_fd, _state.format, _state.notify_fd = dump_fd, fmt, notify_fd
        _state.repeat_ns = _nanoseconds(repeat, "repeat")
        _state.grace_ns = _nanoseconds(grace, "grace", True)
        if _state.thread is None:
            _state.thread = threading.Thread(target=_run, name="tbfast-watchdog", daemon=True)
            _state.thread.start()
            _state.pid = os.getpid()


def take_mailbox(mailbox):
    return _state.mailboxes.pop(mailbox)


def raise_in_thread(ident, exception):
    import ctypes
    return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exception))


def dump_later(timeout, repeat, fd, exit):
    interval = _nanoseconds(timeout, "timeout")
    with _state.changed:
        _state.later = (time.monotonic_ns() + interval, interval if repeat else 0, fd, exit)
        _state.changed.notify()


def cancel_dump_later():
    with _state.changed:
        _state.later = None
