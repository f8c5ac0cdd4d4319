# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""tbfast's C core: every thread's stack, walked without the GIL and without
allocating, formatted into a preallocated buffer and written in one write().

The Python layer (tbfast/__init__.py) is the documented API; these functions
are its implementation, mirrored by tbfast/_fallback.py.
"""

include "_interp.pxi"
include "_buffer.pxi"
include "_threads.pxi"
include "_format.pxi"
include "_signals.pxi"
include "_server.pxi"

from tbfast import _limits

filename_limit = _limits.FILENAME_LIMIT
function_limit = _limits.FUNCTION_LIMIT
source_limit = _limits.SOURCE_LIMIT
name_limit = _limits.NAME_LIMIT
context_limit = _limits.CONTEXT_LIMIT
recursive_cutoff = _limits.RECURSIVE_CUTOFF
if max(filename_limit, function_limit, source_limit, name_limit, context_limit) + 3 > SLOT_TEXT:
    raise ImportError("tbfast._limits exceeds the core's SLOT_TEXT")

MODE = "core"
cdef enum:
    API_WRITE_MS = 60000  # the caller's own fd: wait as a blocking write would, but not forever
cdef const char *DUMP_SKIPPED = b"tbfast: dump skipped, every dump buffer is in use\n"
FORMATS = {"text": FORMAT_TEXT, "uwsgi": FORMAT_UWSGI, "json": FORMAT_JSON}


cdef int dump_to_fd_nogil(int fd, DumpRequest *request, int format, int timeout_ms) noexcept nogil:
    """Signal safe: the whole path for the GIL-free triggers: a dump, then one write.
    Returns 0 or an errno; EBUSY when every dumper is in use."""
    cdef Dumper *d = dumper_acquire()
    cdef int error
    if d == NULL:
        write_all(fd, DUMP_SKIPPED, strlen(DUMP_SKIPPED), timeout_ms)
        return 16  # EBUSY
    dumper_start(d, format)
    dump(d, request)
    error = write_all(fd, d.buf, d.length, timeout_ms)
    tb_release(&d.busy)
    return error


cdef Dumper *dump_with_gil(bint all_threads, str fmt, int skip, str trigger) except NULL:
    """A dump taken by the calling thread, which holds the GIL, so the walk is exact.
    The caller releases the dumper."""
    cdef int format = FORMATS[fmt]
    cdef DumpRequest request
    cdef bytes trigger_bytes = trigger.encode()
    cdef Dumper *d = dumper_acquire()
    if d == NULL:
        raise RuntimeError("tbfast: every dump buffer is in use")
    request.interp = PyInterpreterState_Get()
    request.all_threads = all_threads
    request.current_ident = tb_thread_self()
    request.skip = skip
    request.trigger = trigger_bytes
    request.gil_held = True
    dumper_start(d, format)
    dump(d, &request)
    return d


def format_dump(bint all_threads, str fmt, int skip, str trigger="api"):
    """The dump as bytes; `skip` frames of the caller's are left out."""
    cdef Dumper *d = dump_with_gil(all_threads, fmt, skip, trigger)
    try:
        return d.buf[:d.length]
    finally:
        tb_release(&d.busy)


def dump_to_fd(int fd, bint all_threads, str fmt, int skip, str trigger="api"):
    """Walks with the GIL, then writes without it: a reader in this same process
    can drain a pipe meanwhile."""
    cdef Dumper *d = dump_with_gil(all_threads, fmt, skip, trigger)
    cdef int error
    with nogil:
        error = write_all(fd, d.buf, d.length, API_WRITE_MS)
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
    """Refills the table with the threads whose idents are in `live`,
    keeping their names and contexts."""
    kept = []
    cdef ThreadSlot *slot
    for ident in live:
        slot = slot_find(ident)
        if slot != NULL:
            kept.append((ident, slot.name[:slot.name_length] if slot.name_length >= 0 else None,
                         slot.context[:slot.context_length] if slot.context_length >= 0 else None))
    slots_clear()
    for ident, name, context in kept:
        slot = slot_claim(ident)
        slot.name_length = -1 if name is None else len(name)
        slot.context_length = -1 if context is None else len(context)
        if name is not None:
            memcpy(slot.name, <const char *>name, len(name))
        if context is not None:
            memcpy(slot.context, <const char *>context, len(context))


def slots_in_use():
    return slots_used


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


cdef extern from "pythread.h":
    unsigned long PyThread_get_thread_ident() nogil



def serve_start(int listen_fd, str default_format, unsigned int owner_uid):
    """Serves dumps on a bound, listening UNIX socket (the fd is the server's from
    now on) from a native thread; a server already running is stopped first."""
    server_stop()
    server_start(listen_fd, FORMATS[default_format], owner_uid)


def serve_stop():
    """Stops the server thread and closes its socket (the file stays); False if none ran."""
    return server_stop()


pthread_atfork(NULL, NULL, after_fork_in_child)


def register(int signum, int fd, bint all_threads, bint chain, str fmt, str signame):
    signal_install(signum, fd, all_threads, chain, FORMATS[fmt], ("signal:" + signame).encode())


def unregister(int signum):
    return signal_uninstall(signum)
