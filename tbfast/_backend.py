"""The one seam between tbfast and its implementation, chosen once at import: the C
core, or the pure-Python fallback (the same function names), why, and what the
chosen one can do (CAPABILITIES).  Every module takes the implementation from here.

The fallback gives the same dumps whenever the GIL can be taken, but not when a
thread holding it is stuck in C.  So a call whose whole point is a GIL-free dump
(a signal handler, the socket server, an aborting harakiri) logs one WARNING per
process when the fallback serves it, naming the reason, unless the user chose
the fallback (TBFAST_NO_EXTENSIONS=1).
"""

import importlib.util
import logging
import os
import sysconfig
import warnings

from . import _fallback, _pyformat

__all__ = ["impl", "MODE", "HAS_CORE", "FALLBACK_REASON", "CAPABILITIES", "warn_if_fallback",
           "native_option"]

#: What the core does beyond the fallback's face:
#: "gil-free": dumps (signal, socket, watchdog) without the GIL, from names and
#:   contexts recorded in its own table;
#: "handover": socket dumps that wait `gil_wait` for the GIL to walk consistently
#:   (tbfast.consistent);
#: "spool": dumps written to files without the GIL (tbfast.spool);
#: "locals-gil-free": locals read without the GIL, masked as set_mask says;
#: "native": each thread's C frames, taken by the thread itself (src/_native.pxi).
CORE_CAPABILITIES = frozenset({"gil-free", "handover", "spool", "locals-gil-free", "native"})


def _choose():
    """``(implementation, why the fallback)``; the reason is None for the core."""
    if CHOSEN_BY_USER:
        return _fallback, "TBFAST_NO_EXTENSIONS is set"
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return _fallback, "this CPython is free-threaded, which the core does not support"
    if importlib.util.find_spec(__package__ + "._tbcore") is None:
        return _fallback, "the C core was not built (pip install -v tbfast shows why)"
    try:
        from . import _tbcore
    except ImportError as error:  # built, but refused: a layout mismatch, a missing symbol
        warnings.warn("%s; tbfast uses its pure-Python fallback, whose dumps need the GIL"
                      % error, RuntimeWarning, stacklevel=2)
        return _fallback, str(error)
    return _tbcore, None


CHOSEN_BY_USER = bool(os.environ.get("TBFAST_NO_EXTENSIONS"))
impl, FALLBACK_REASON = _choose()
#: "core" when the C core is in use, "python" for the pure-Python fallback.
MODE = impl.MODE
HAS_CORE = MODE == "core"
CAPABILITIES = CORE_CAPABILITIES if HAS_CORE else frozenset()

if HAS_CORE:  # its consistent thread is tbfast's own: the Python formatter leaves it out too
    _pyformat.leave_out_thread(impl.consistent_thread_ident)

_warned_pid = None


def warn_if_fallback(promise):
    """Logs, once per process, that `promise` (a GIL-free dump path) is served by
    the fallback; nothing when the core serves it or the user chose the fallback."""
    global _warned_pid
    if HAS_CORE or CHOSEN_BY_USER or _warned_pid == os.getpid():
        return
    _warned_pid = os.getpid()
    logging.getLogger("tbfast").warning(
        "tbfast: %s is served by the pure-Python fallback because %s: its dumps need "
        "the GIL, so a thread stuck in C while holding it delays or stops them",
        promise, FALLBACK_REASON)


def native_option(native, numbered=False):
    """The core's `native` keyword for the API's value (False, True or "all"): {} for
    none, else the level's name ("busy", "all"), or its number for the dump calls."""
    if native is False or native is None:
        return {}
    if native is not True and native != "all":
        raise ValueError("native must be True, False or 'all', not %r" % (native,))
    if "native" not in CAPABILITIES:
        raise RuntimeError("native frames need the C core (tbfast.MODE is %r)" % MODE)
    level = "all" if native == "all" else "busy"
    return {"native": impl.NATIVE[level] if numbered else level}
