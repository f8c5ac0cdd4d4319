# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""tbfast's C core: every thread's stack, walked without the GIL and without
allocating, formatted into a preallocated buffer and written in one write().

The Python layer (tbfast/__init__.py) is the documented API; these functions
are its implementation, mirrored by tbfast/_fallback.py (whose dumps come from
the Python formatter, tbfast/_pyformat.py).
"""

# Top-down: declarations, the buffers and the thread table the stages share, the
# stages (walk -> source lines -> format -> deliver), then the entry points, each
# only its trigger.  The Python API below is the last entry point.
include "_decl.pxi"       # every C declaration; the atomics
include "_buffer.pxi"     # the dumpers and appending to them
include "_threads.pxi"    # thread names, contexts and harakiri deadlines, by ident
include "_guard.pxi"      # the SIGSEGV/SIGBUS guard the walk runs under
include "_states.pxi"     # stage 1: what the kernel says of each thread
include "_walk.pxi"       # stage 1: threads -> frames
include "_source.pxi"     # stage 2: source lines
include "_format.pxi"     # stage 3: text, uwsgi, json
include "_faulthandler.pxi"  # stage 3: faulthandler's format, and what its crash dump adds
include "_locals.pxi"     # stage 3: locals, for text and json
include "_native.pxi"     # stage 3: C frames, taken by each thread itself
include "_deliver.pxi"    # stage 4: fd, spool, the Python side
include "_signals.pxi"    # entry point: signal handlers
include "_server.pxi"     # entry point: the socket server thread
include "_watchdog.pxi"   # entry point: the harakiri watchdog thread
include "_crash.pxi"      # entry point: the crash handler

import functools
import os
import struct

from tbfast import _limits
from tbfast._limits import check_seconds


cdef check_layout():
    """Refuses the core (ImportError) when the running interpreter lays out a field the
    walk reads otherwise than the headers it was built with: a misread dump is worse
    than none.  TBFAST_TEST_LAYOUT_SKEW names a field to take as moved (tests only)."""
    cdef char message[300]
    skewed = os.environ.get("TBFAST_TEST_LAYOUT_SKEW", "").encode()
    cdef const char *mismatch = tb_layout_mismatch(<const char *>skewed if skewed else NULL,
                                                   message, sizeof(message))
    if mismatch != NULL:
        raise ImportError("tbfast: the core does not match this interpreter's layout: %s"
                          % mismatch.decode())


check_layout()

filename_limit = _limits.FILENAME_LIMIT
function_limit = _limits.FUNCTION_LIMIT
source_limit = _limits.SOURCE_LIMIT
name_limit = _limits.NAME_LIMIT
context_limit = _limits.CONTEXT_LIMIT
recursive_cutoff = _limits.RECURSIVE_CUTOFF
_IDLE_WAITS = _limits.IDLE_WAITS  # kept alive here: the walk compares their addresses
for _wait in _IDLE_WAITS[:4]:
    idle_waits[idle_wait_count] = <PyCodeObject *><PyObject *>_wait
    idle_wait_count += 1
if _limits.SYSCALL_TABLE != SYSCALL_TABLE:
    raise ImportError("tbfast._limits.SYSCALL_TABLE differs from the core's")
_SYSCALL_NAMES = {number: name.encode() for number, name in _limits.SYSCALL_NAMES.items()
                  if 0 <= number < SYSCALL_TABLE}  # kept alive: the table points into them
for _number, _name in _SYSCALL_NAMES.items():
    syscall_names[_number] = _name
    syscall_cut_short[_number] = _limits.SYSCALL_NAMES[_number] in _limits.CUT_SHORT_BY_A_HANDLER
if max(filename_limit, function_limit, source_limit, name_limit, context_limit) + 3 > SLOT_TEXT:
    raise ImportError("tbfast._limits exceeds the core's SLOT_TEXT")
if (_limits.MAX_LOCALS, _limits.LOCAL_VALUE_LIMIT, _limits.LOCAL_NAME_LIMIT) != (
        LOCALS_PER_FRAME, LOCAL_VALUE_LIMIT, NAME_BYTES):
    raise ImportError("tbfast._limits' locals bounds differ from the core's")
set_locals_mask(_limits.DEFAULT_MASK)

MODE = "core"
cdef enum:
    API_WRITE_MS = 60000  # the caller's own fd: wait as a blocking write would, but not forever
NATIVE = {None: NATIVE_NONE, "busy": NATIVE_BUSY, "all": NATIVE_ALL}
FORMATS = {"text": FORMAT_TEXT, "uwsgi": FORMAT_UWSGI, "json": FORMAT_JSON,
           "faulthandler": FORMAT_FAULTHANDLER}


class DumpSkipped(RuntimeError):
    """Every dump buffer is in use (signal handlers nested in each other, say): the
    message is the line a GIL-free dump writes in its place."""


cdef Dumper *dump_with_gil(bint all_threads, str fmt, int skip, str trigger,
                           bint exclude_self=False, bint locals=False,
                           int max_threads=0, int native=NATIVE_NONE) except NULL:
    """A dump taken by the calling thread, which holds the GIL, so the walk is exact;
    `exclude_self` leaves the calling thread out.  The caller releases the dumper."""
    cdef int format = FORMATS[fmt]
    cdef DumpRequest request
    cdef bytes trigger_bytes = trigger.encode()
    cdef Dumper *d = dumper_acquire()
    if d == NULL:
        raise DumpSkipped(DUMP_SKIPPED.decode().rstrip("\n"))
    request_init(&request, PyInterpreterState_Get(), trigger_bytes, tb_thread_self(), True)
    request.all_threads = all_threads
    request.skip = skip
    if exclude_self:
        request.excluded_ident = request.current_ident
    request.locals = locals
    request.max_threads = max_threads
    if native != NATIVE_NONE:
        native_setup()
        request.native = native
    request.symbolize = True  # the caller's thread, outside any handler
    dumper_start(d, format)
    dump(d, &request)
    return d


def format_dump(bint all_threads, str fmt, int skip, str trigger="api", bint exclude_self=False,
                bint locals=False, int max_threads=0, int native=NATIVE_NONE):
    """The dump as bytes; `skip` frames of the caller's are left out, or all of them
    with `exclude_self`; `locals` adds each frame's (the values read without code);
    `max_threads` caps faulthandler's format as its own does (0: no cap); `native`
    adds C frames: NATIVE["busy"] for the threads that run, hold the GIL or dump,
    NATIVE["all"] for every thread."""
    cdef Dumper *d = dump_with_gil(all_threads, fmt, skip, trigger, exclude_self, locals,
                                   max_threads, native)
    try:
        return d.buf[d.start:d.length]
    finally:
        tb_release(&d.busy)


def dump_to_fd(int fd, bint all_threads, str fmt, int skip, str trigger="api", bint locals=False,
               int max_threads=0, int native=NATIVE_NONE):
    """Walks with the GIL, then writes without it: a reader in this same process
    can drain a pipe meanwhile."""
    cdef Dumper *d = dump_with_gil(all_threads, fmt, skip, trigger, False, locals, max_threads,
                                   native)
    cdef int error
    with nogil:
        error = write_dump(d, fd, API_WRITE_MS)
        tb_release(&d.busy)
    if error:
        raise OSError(error, "tbfast: writing the dump to fd %d failed" % fd)


def configure(Py_ssize_t buffer_size):
    """(Re)maps the dump buffers.  A buffer in use by a dump keeps its old size."""
    cdef int i
    for i in range(DUMPER_COUNT):
        if dumpers[i].buf != NULL:
            if dumpers[i].capacity == buffer_size or not tb_try_acquire(&dumpers[i].busy):
                continue
            dumper_free(&dumpers[i])
        if dumper_allocate(&dumpers[i], buffer_size) != 0:
            raise MemoryError("tbfast: cannot map %d bytes for a dump buffer" % dumper_size(buffer_size))
        tb_release(&dumpers[i].busy)


def buffer_size():
    return dumpers[0].capacity


def set_mask(words):
    """The words whose locals GIL-free dumps mask (a dump running meanwhile may use
    either list)."""
    set_locals_mask(words)


def set_main_thread(unsigned long ident):
    global main_thread_ident
    main_thread_ident = ident


def record_thread(unsigned long ident, str name):
    """Remembers a thread's name for GIL-free dumps.  False when the table is full."""
    cdef ThreadSlot *slot = slot_claim(ident)
    if slot == NULL:
        return False
    slot_set_text(slot, False, <PyObject *>name, name_limit)
    return True


def sweep_threads(live):
    """Frees the slots of threads whose idents are not in `live`."""
    live = set(live)
    cdef int i
    for i in range(SLOT_COUNT):
        if thread_slots[i].ident > DELETED_IDENT and thread_slots[i].ident not in live:
            slot_delete(&thread_slots[i])


def set_context(text):
    """The calling thread's context line; None clears it."""
    cdef ThreadSlot *slot = slot_claim(PyThread_get_thread_ident())
    if slot == NULL:
        return False
    slot_set_text(slot, True, <PyObject *>text if text is not None else NULL, context_limit)
    return True


def get_context():
    cdef ThreadSlot *slot = slot_find(PyThread_get_thread_ident())
    if slot == NULL or slot.context_length < 0:
        return None
    return slot.context[:slot.context_length].decode("utf-8", "replace")


def serve_start(int listen_fd, str default_format, unsigned int owner_uid):
    """Serves dumps on a bound, listening UNIX socket (the fd is the server's from
    now on) from a native thread; a server already running is stopped first."""
    server_stop()
    native_setup()  # a client may ask for C frames: the server thread cannot run Python then
    if default_format not in FORMATS:
        close(listen_fd)  # the fd is the server's even when it fails
        raise ValueError("unknown format %r" % (default_format,))
    server_start(listen_fd, FORMATS[default_format], owner_uid)


def serve_stop():
    """Stops the server thread and closes its socket (the file stays); False if none ran."""
    return server_stop()


def handover_configure(gil_wait):
    """How long the server offers a client to the consistent thread; 0 never does."""
    handover.wait_ms = <int>(check_seconds(gil_wait, "gil_wait", True, _limits.MAX_GIL_WAIT) * 1000
                             + 0.5)


def handover_listen():
    """Called by a new consistent thread: False when one already listens in this process."""
    handover_open()
    if handover.listening:
        return False
    handover.listening = True
    return True


def consistent_thread_ident():
    """The consistent thread's ident, which every dump leaves out; 0 when none runs."""
    return handover.thread_ident


FORMAT_NAMES = {number: name for name, number in FORMATS.items()}


def handover_fd():
    """The fd that becomes readable when the server posts a client (handover_take)."""
    return handover.post_read


def handover_take():
    """Reads the server's post without the GIL, then returns (fd, format, locals) once
    this thread holds the GIL again, so that every other thread is paused; None when
    the server withdrew the post meanwhile.  Blocks until a post comes: wait for
    handover_fd() first to do something else meanwhile."""
    cdef char byte = 0
    cdef Py_ssize_t got
    handover.thread_ident = PyThread_get_thread_ident()  # tbfast's machinery: no dump shows it
    while True:
        with nogil:
            got = read(handover.post_read, &byte, 1)
        # The GIL is held again from here: the other threads are where they stopped.
        if got < 0 and errno == EINTR:
            continue
        if got <= 0:
            handover.listening = False
            raise OSError(errno, "tbfast: the consistent thread's pipe failed")
        if tb_cas_int(&handover.state, HANDOVER_POSTED, HANDOVER_TAKEN):
            return handover.client, FORMAT_NAMES[handover.format], bool(handover.options & OPTION_LOCALS)
        return None


def handover_done():
    """The taken client is the consistent thread's now: tells the server to go on."""
    cdef char byte = b'd'
    # IDLE first: the server, woken by the byte, may post the next client at once.  (A
    # byte that comes late, after the server stopped waiting, only ends a wait early.)
    tb_store_int(&handover.state, HANDOVER_IDLE)
    write(handover.done_write, &byte, 1)


cdef void after_fork_in_child() noexcept nogil:
    """Signal safe: in the child of any fork(), C ones too (uWSGI's run no Python hook): only the
    forking thread lives on, so each native piece drops what stayed in the parent."""
    server_after_fork_in_child()
    watchdog_after_fork_in_child()
    dumpers_after_fork_in_child()


pthread_atfork(NULL, NULL, after_fork_in_child)

ACTIONS = {"log": ACTION_LOG, "raise": ACTION_RAISE, "abort": ACTION_ABORT}


cdef check_constants():
    """Refuses the core (ImportError) if a constant that C needs at compile time
    drifted from its one source, tbfast/_limits.py, which the Python side reads."""
    ours = {
        "BAD_REQUEST": <bytes>BAD_REQUEST,
        "SOCKET_WRITE_TIMEOUT": SOCKET_WRITE_MS / 1000,
        "HARAKIRI_ACTIONS": tuple(sorted(ACTIONS, key=ACTIONS.get)),
        "SCOPE_DEPTH": SCOPE_DEPTH,
        "NOTIFY_RECORD": sizeof(NotifyRecord),
        "KIND_HARAKIRI": ACTION_LOG,
        "KIND_RAISE": ACTION_RAISE,
        "KIND_SIGNAL": KIND_SIGNAL,
    }
    theirs = dict((name, getattr(_limits, name)) for name in ours)
    theirs["NOTIFY_RECORD"] = struct.calcsize(theirs["NOTIFY_RECORD"])
    drifted = [name for name in ours if ours[name] != theirs[name]]
    if drifted:
        raise ImportError("tbfast: the core was built with other constants than tbfast/_limits.py: "
                          + ", ".join("%s %r, not %r" % (name, ours[name], theirs[name])
                                      for name in drifted))


check_constants()
if os.environ.get("TBFAST_TEST_NATIVE"):  # tests only: C frames in every dump, to show none breaks
    native_setup()
    native_default = NATIVE[os.environ["TBFAST_TEST_NATIVE"]]


cdef long long seconds_to_ns(seconds, str what, bint zero_ok=False) except -1:
    return <long long>(<double>check_seconds(seconds, what, zero_ok) * 1e9)


@cython.freelist(16)
cdef class HarakiriScope:
    """A deadline for the thread that enters it: a context manager, or a decorator.

    Arms the deadline on entry (no syscall, no allocation), puts back the outer
    scope's on exit.  seconds must be positive and finite; action is "log",
    "raise" or "abort".  The object keeps no state: the thread's slot does, so one
    scope may be entered by many threads at once, and again and again (the fast
    way: make it once).  At most SCOPE_DEPTH scopes nest in one thread."""
    cdef long long timeout_ns
    cdef int action
    cdef readonly double seconds
    cdef readonly str action_name

    def __cinit__(self, seconds, str action="log"):
        self.timeout_ns = seconds_to_ns(seconds, "timeout")
        if action not in ACTIONS:
            raise ValueError("unknown action %r: use one of log, raise, abort" % (action,))
        self.action = ACTIONS[action]
        self.seconds = seconds
        self.action_name = action

    def __call__(self, function):
        """As a decorator: each call of `function` runs in this scope."""
        scope = self

        @functools.wraps(function)
        def guarded(*args, **kwargs):
            with scope:
                return function(*args, **kwargs)
        return guarded

    def __enter__(self):
        if not watchdog.running:
            from tbfast.watchdog import ensure_configured
            ensure_configured()
            watchdog_start()  # configured earlier, then shut down: the same settings
        cdef ThreadSlot *slot = own_slot()
        cdef int depth = slot.scope_depth
        if depth == SCOPE_DEPTH:
            raise RuntimeError("tbfast: harakiri scopes nested more than %d deep" % SCOPE_DEPTH)
        slot.scopes[depth] = <void *>self
        slot.outer_deadline_ns[depth] = slot.deadline_ns
        slot.outer_armed_ns[depth] = slot.armed_ns
        slot.outer_action[depth] = slot.action
        slot.scope_depth = depth + 1
        cdef long long now = monotonic_ns(), deadline = now + self.timeout_ns
        slot.action = self.action
        slot.armed_ns = now
        slot.arm_seq += 1  # only this thread writes it; the release store below orders it
        tb_store_ll(&slot.deadline_ns, deadline)
        watchdog_wake_if_later_than(deadline)
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        cdef ThreadSlot *slot = slot_in_scope(<void *>self)
        if slot == NULL:
            return False  # never entered, or already exited
        cdef int depth = slot.scope_depth - 1
        slot.scope_depth = depth
        tb_store_ll(&slot.deadline_ns, 0)
        if slot.outer_deadline_ns[depth]:  # the outer scope's deadline is armed again, and reported anew
            slot.action = slot.outer_action[depth]
            slot.armed_ns = slot.outer_armed_ns[depth]
            slot.arm_seq += 1
            tb_store_ll(&slot.deadline_ns, slot.outer_deadline_ns[depth])
            watchdog_wake_if_later_than(slot.outer_deadline_ns[depth])
        return False


def watchdog_configure(int dump_fd, str fmt, int notify_fd, repeat, grace, native=None):
    """Where expiries go (fd, or -1; the Python side's pipe, or -1), how often a still
    stuck thread is logged again and the grace before raise or abort, and which C
    frames its dumps show (NATIVE's keys); starts the thread."""
    if native is not None:
        native_setup()
    watchdog.native = NATIVE[native]
    watchdog.dump_sink.fd = dump_fd
    watchdog.dump_sink.stalled = False
    watchdog.dump_format = FORMATS[fmt]
    to_python.notify_fd = notify_fd
    watchdog.repeat_ns = seconds_to_ns(repeat, "repeat")
    watchdog.grace_ns = seconds_to_ns(grace, "grace", True)
    watchdog_start()


def watchdog_shutdown():
    return watchdog_stop()


def take_mailbox(int mailbox):
    """The dump the watchdog kept for the logger; frees its buffer."""
    cdef Dumper *d = &dumpers[mailbox]
    try:
        return d.buf[d.start:d.length]
    finally:
        release_mailbox(mailbox)


def raise_in_thread(unsigned long ident, exception):
    """Raises `exception` in a thread when it next runs Python code."""
    return PyThreadState_SetAsyncExc(ident, <PyObject *>exception)


def dump_later(timeout, bint repeat, int fd, bint exit, str fmt="text", bytes preamble=b"",
               int max_threads=0):
    """faulthandler.dump_traceback_later, on the watchdog thread; `preamble` goes
    before the threads in faulthandler's format."""
    set_text(watchdog.later_preamble, preamble)
    watchdog.later_format = FORMATS[fmt]
    watchdog.later_max_threads = max_threads
    cdef long long interval = seconds_to_ns(timeout, "timeout")
    watchdog.later_sink.fd = fd
    watchdog.later_sink.stalled = False
    watchdog.later_exit = exit
    watchdog.later_interval_ns = interval if repeat else 0
    watchdog_start()
    tb_store_ll(&watchdog.later_deadline_ns, monotonic_ns() + interval)
    watchdog_wake_if_later_than(monotonic_ns() + interval)


def cancel_dump_later():
    tb_store_ll(&watchdog.later_deadline_ns, 0)


def register(int signum, int fd, bint all_threads, bint chain, str fmt, str signame,
             bint log=False, int max_threads=0, native=None):
    """log: also spool the dump and hand it to the watchdog's Python side (its pipe);
    native: which threads' C frames it shows (NATIVE's keys), as module+offset."""
    if native is not None:
        native_setup()
    signal_install(signum, fd, all_threads, chain, FORMATS[fmt], ("signal:" + signame).encode(),
                   log, max_threads, NATIVE[native])


def crash_enable(int fd, str fmt, bint all_threads, bint c_stack, int max_threads, preambles,
                 triggers):
    """The crash handler for SIGBUS, SIGILL, SIGFPE, SIGABRT and SIGSEGV (that order,
    as `preambles` and `triggers` give each its text); `c_stack` adds the crashing
    thread's C stack to faulthandler's format."""
    crash_install(fd, FORMATS[fmt], all_threads, c_stack, max_threads, preambles, triggers)


def crash_disable():
    """False if the crash handler was not enabled."""
    return crash_uninstall()


def crash_enabled():
    return crash.enabled


def dump_c_stack(int fd):
    """faulthandler.dump_c_stack: the calling thread's C stack, in one write."""
    cdef Dumper *d = dumper_acquire()
    cdef int error
    if d == NULL:
        raise DumpSkipped(DUMP_SKIPPED.decode().rstrip("\n"))
    c_stack_prepare()
    dumper_start(d, FORMAT_FAULTHANDLER)
    emit_c_stack(d)
    with nogil:
        error = write_dump(d, fd, API_WRITE_MS)
        tb_release(&d.busy)
    if error:
        raise OSError(error, "tbfast: writing the C stack to fd %d failed" % fd)


def spool_configure(int dir_fd, unsigned int found, unsigned int max_count,
                    unsigned long long first_seq):
    """The spool directory (an fd the core keeps; -1: no spool), the dump files already
    in it, how many it may hold, and where numbering starts.  GIL held; a dump
    running meanwhile uses the old directory or the new one, each whole."""
    cdef int previous = spool.dir_fd
    spool.count = found
    spool.max_count = max_count
    spool.seq = first_seq
    if previous >= 0 and dir_fd >= 0:
        if dup3(dir_fd, previous, O_CLOEXEC) < 0:  # atomically: no dump sees a closed fd
            raise OSError(errno, "tbfast: cannot install the spool directory's fd")
        close(dir_fd)
        return
    spool.dir_fd = dir_fd
    if previous >= 0:
        close(previous)


def spool_shipped(unsigned int count):
    """`count` spool files were shipped and removed: room for as many new dumps."""
    cdef unsigned int i
    for i in range(count):
        if tb_load_uint(&spool.count) > 0:
            tb_unbump(&spool.count)


def unregister(int signum):
    return signal_uninstall(signum)
