"""Constants shared by every layer: the formats, and the bounds of the dumps.

The core reads the bounds at import into its preallocated state, so it and the
pure-Python fallback cut strings at the same place.
"""

import numbers
import os
import threading

FILENAME_LIMIT = 500   # bytes of UTF-8, as faulthandler's MAX_STRING_LENGTH
FUNCTION_LIMIT = 200
SOURCE_LIMIT = 500
NAME_LIMIT = 200
CONTEXT_LIMIT = 500
RECURSIVE_CUTOFF = 3   # as traceback.StackSummary: 3 identical lines, then a count

# A thread whose innermost frame is one of these waits is idle (docs/formats.md):
# Condition.wait serves Event, Semaphore, Barrier and queue.Queue; Thread.join waits
# in _wait_for_tstate_lock up to 3.12, in Thread.join itself from 3.13 on.
IDLE_WAITS = tuple(function.__code__ for function in (
    threading.Condition.wait, getattr(threading.Thread, "_wait_for_tstate_lock", threading.Thread.join)))

# The system calls a sleeping thread's state names (/proc/self/task/TID/syscall gives
# the number), by this machine's numbers; another shows "syscall N".
_SYSCALLS = {
    "x86_64": {0: "read", 1: "write", 7: "poll", 17: "pread64", 18: "pwrite64", 19: "readv",
               20: "writev", 23: "select", 34: "pause", 35: "nanosleep", 42: "connect",
               43: "accept", 44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg",
               61: "wait4", 72: "fcntl", 73: "flock", 74: "fsync", 128: "rt_sigtimedwait",
               130: "rt_sigsuspend", 202: "futex", 230: "clock_nanosleep", 232: "epoll_wait",
               247: "waitid", 257: "openat", 270: "pselect6", 271: "ppoll", 281: "epoll_pwait",
               288: "accept4", 441: "epoll_pwait2"},
    "aarch64": {22: "epoll_pwait", 25: "fcntl", 32: "flock", 56: "openat", 63: "read",
                64: "write", 65: "readv", 66: "writev", 67: "pread64", 68: "pwrite64",
                72: "pselect6", 73: "ppoll", 82: "fsync", 95: "waitid", 98: "futex",
                101: "nanosleep", 115: "clock_nanosleep", 133: "rt_sigsuspend",
                137: "rt_sigtimedwait", 202: "accept", 203: "connect", 206: "sendto",
                207: "recvfrom", 211: "sendmsg", 212: "recvmsg", 242: "accept4", 260: "wait4",
                441: "epoll_pwait2"},
}
SYSCALL_NAMES = _SYSCALLS.get(os.uname().machine, {})
SYSCALL_TABLE = 512  # the core's table: numbers at or above it show as "syscall N"
# The calls that a signal handler ends with EINTR whatever SA_RESTART says
# (signal(7)): a native dump does not ask a thread asleep in one (src/_native.pxi).
CUT_SHORT_BY_A_HANDLER = ("poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait",
                          "epoll_pwait2", "pause", "nanosleep", "clock_nanosleep",
                          "rt_sigtimedwait", "rt_sigsuspend")

FORMATS = ("text", "uwsgi", "json", "faulthandler")  # what every layer writes and accepts
REQUEST_OPTIONS = ("locals", "gil-free", "native", "native-all")  # the socket request's other words
# What both servers answer to a request they cannot read (docs/protocol.md#request).
BAD_REQUEST = ("tbfast: bad request: expected [%s] %s\n" % (
    "|".join(FORMATS), " ".join("[%s]" % option for option in REQUEST_OPTIONS))).encode()
SOCKET_WRITE_TIMEOUT = 2.0  # a socket client that takes nothing this long loses the rest

# Harakiri: the actions, in the order of the core's ACTION_* numbers, and how deep
# one thread may nest scopes.
HARAKIRI_ACTIONS = ("log", "raise", "abort")
SCOPE_DEPTH = 16

# The record the core's watchdog and signal handler send to tbfast/watchdog.py: the
# thread's ident, nanoseconds stuck, kind, mailbox + 1 (0: none), spool file number
# (0: none).  A kind of 0 or 1 is the harakiri action taken.
NOTIFY_RECORD = "=5Q"
KIND_HARAKIRI, KIND_RAISE, KIND_SIGNAL = 0, 1, 2


def check_format(format):
    if format not in FORMATS:
        raise ValueError("unknown format %r: use one of %s" % (format, ", ".join(FORMATS)))


MAX_SECONDS = 1e9  # 31 years: a timeout's nanoseconds, added to the clock, stay in 64 bits
MAX_GIL_WAIT = 10.0  # a socket client waits this long at most for a consistent dump


def check_seconds(value, what, zero_ok=False, most=MAX_SECONDS):
    """`value` as float seconds, or a TypeError or ValueError that names `what`: a
    real number (not a bool, nor a str), positive (or 0 with zero_ok), at most `most`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError("%s must be a number of seconds, not %s" % (what, type(value).__name__))
    if not (value >= 0 if zero_ok else value > 0) or value > most:  # NaN fails the first test
        raise ValueError("%s must be a %s number of seconds up to %g, not %r" % (
            what, "non-negative" if zero_ok else "positive", most, value))
    return float(value)


# The default buffer holds 100 threads x 100 frames of about 200 bytes each.
DEFAULT_BUFFER_SIZE = 2 * 1024 * 1024

# Substrings, matched case-insensitively, of the variable names and dict keys whose
# values dumps hide (tbfast.configure(mask=...) and TBFAST_MASK change the list).
# Wide on purpose: "auth" hides an `author` too, which costs less than a leak.
DEFAULT_MASK = ("password", "passwd", "pwd", "passphrase", "secret", "token", "auth", "bearer",
                "jwt", "cookie", "session", "csrf", "api_key", "apikey", "access_key",
                "credential", "creds", "private_key", "privkey", "dsn", "database_url")

# How long a socket dump tries to take the GIL before it falls back to the GIL-free walk:
# five of CPython's 5 ms switch intervals.  A holder running Python code lets the GIL go
# within one once another thread asks for it; one that has not after five is in C (a
# stuck worker's usual case), and its dump should not wait longer to come GIL-free.
DEFAULT_GIL_WAIT = 0.025

# Locals (opt-in): the first MAX_LOCALS of a frame, then "... N more"; names and
# reprs cut as the other strings are.
MAX_LOCALS = 50
LOCAL_NAME_LIMIT = 200
LOCAL_VALUE_LIMIT = 500
