# faulthandler's format, byte for byte as the running CPython writes it
# (Python/traceback.c), fed by the same thread list as the other formats, and
# what faulthandler's fatal handler adds after the threads: the C stack (3.14+)
# and the extension modules.  Everything here is async-signal-safe.
#
# Where tbfast differs on purpose: with more threads than max_threads, the
# current and the main thread are still shown after faulthandler's "...", and
# a thread name's control characters are escaped (CPython writes them raw).

cdef enum:
    FAULTHANDLER_STRING_LIMIT = 500  # code points, as MAX_STRING_LENGTH
    FAULTHANDLER_DEPTH_LIMIT = 100   # frames a thread shows, as MAX_FRAME_DEPTH
    C_STACK_DEPTH = 32               # as _Py_DumpStack's BACKTRACE_SIZE


cdef void emit_ascii(Dumper *d, PyObject *text) noexcept nogil:
    """Signal safe: _Py_DumpASCII: the first 500 code points of a str, printable
    ASCII as it is, others as \\xNN, \\uNNNN or \\UNNNNNNNN, then '...' if cut."""
    cdef Py_ssize_t length = PyUnicode_GET_LENGTH(text), i
    cdef int kind = PyUnicode_KIND(text)
    cdef void *data = PyUnicode_DATA(text)
    cdef unsigned int c
    cdef char escape[10]
    cdef int digits, j
    for i in range(min(length, FAULTHANDLER_STRING_LIMIT)):
        c = PyUnicode_READ(kind, data, i)
        if 0x20 <= c <= 0x7e:
            escape[0] = <char>c
            emit(d, escape, 1)
            continue
        escape[0] = b'\\'
        if c <= 0xff:
            escape[1] = b'x'
            digits = 2
        elif c <= 0xffff:
            escape[1] = b'u'
            digits = 4
        else:
            escape[1] = b'U'
            digits = 8
        for j in range(digits):
            escape[1 + digits - j] = b"0123456789abcdef"[(c >> (4 * j)) & 15]
        emit(d, escape, 2 + digits)
    if length > FAULTHANDLER_STRING_LIMIT:
        emit_str(d, b"...")


cdef void emit_ascii_or_unknown(Dumper *d, PyObject *text, const char *before,
                                const char *after) noexcept nogil:
    # Signal safe: a str between `before` and `after`, or ??? for anything else.
    if text != NULL and PyUnicode_Check(text):
        emit_str(d, before)
        emit_ascii(d, text)
        emit_str(d, after)
    else:
        emit_str(d, b"???")


cdef void emit_faulthandler_frame(Dumper *d, PyCodeObject *code, int line) noexcept nogil:
    # Signal safe: faulthandler's dump_frame.
    emit_str(d, b"  File ")
    emit_ascii_or_unknown(d, code.co_filename, b'"', b'"')
    emit_str(d, b", line ")
    if line >= 0:
        emit_decimal(d, line)
    else:
        emit_str(d, b"???")
    emit_str(d, b" in ")
    emit_ascii_or_unknown(d, code.co_name, b"", b"")
    emit_str(d, b"\n")


cdef void emit_faulthandler_frames(Dumper *d, PyThreadState *tstate, int skip) noexcept nogil:
    """Signal safe: faulthandler's dump_traceback for one thread, less `skip` frames
    (the caller's own, for the API); at most 100 frames, marked as its version does."""
    cdef tb_frame *frame = tb_top_frame(tstate)
    cdef PyCodeObject *code
    cdef FrameCacheEntry *entry
    cdef unsigned int depth = 0
    cdef bint hidden
    if frame == NULL:
        emit_str(d, b"  <no Python frame>\n")
        return
    while frame != NULL:
        code = tb_frame_code(frame)
        hidden = tb_frame_is_hidden(frame, code)
        if hidden and not TB_FAULTHANDLER_COUNTS_HIDDEN:
            frame = tb_previous_frame(frame)
            continue
        if not hidden and skip > 0:
            skip -= 1
            frame = tb_previous_frame(frame)
            continue
        if depth >= FAULTHANDLER_DEPTH_LIMIT:
            if TB_FAULTHANDLER_ELLIPSIS:
                emit_str(d, b"  ...\n")
            return
        if not hidden:
            entry = frame_entry(d, code, tb_frame_lasti_bytes(frame, code))
            emit_faulthandler_frame(d, code, entry.line)
        depth += 1
        frame = tb_previous_frame(frame)


cdef void emit_kernel_thread_name(Dumper *d, unsigned long native_id) noexcept nogil:
    """Signal safe: " [name]" from /proc/self/task/TID/comm, which is what
    pthread_getname_np reads for faulthandler (3.14+); nothing when it has none."""
    cdef char name[COMM_BYTES]
    cdef Py_ssize_t got = read_kernel_name(native_id, name)
    if got > 0:
        emit_str(d, b" [")
        emit_printable(d, name, got)
        emit_str(d, b"]")


cdef void emit_faulthandler_thread(Dumper *d, PyThreadState *tstate, DumpRequest *request) noexcept nogil:
    """Signal safe: one thread's block: its line ("Stack" when only the current
    thread is dumped), the GC note, and its frames."""
    cdef unsigned long ident = tb_thread_ident(tstate)
    cdef bint current = request.current_ident != 0 and ident == request.current_ident
    if not request.all_threads:
        emit_str(d, b"Stack (most recent call first):\n")
    else:
        emit_str(d, b"Current thread " if current else b"Thread ")
        emit_hex16(d, ident)
        if TB_FAULTHANDLER_THREAD_NAMES:
            emit_kernel_thread_name(d, tb_thread_native_id(tstate))
        emit_str(d, b" (most recent call first):\n")
        if current and tb_gc_collecting(request.interp):
            emit_str(d, b"  Garbage-collecting\n")
    emit_faulthandler_frames(d, tstate, request.skip if current else 0)


cdef struct FaulthandlerJob:
    Dumper *d
    PyThreadState *tstate
    DumpRequest *request


cdef void faulthandler_thread_job(void *argument) noexcept nogil:
    # Signal safe: emit_faulthandler_thread, in the shape a guarded call takes.
    cdef FaulthandlerJob *job = <FaulthandlerJob *>argument
    emit_faulthandler_thread(job.d, job.tstate, job.request)


cdef void guarded_faulthandler_thread(Dumper *d, PyThreadState *tstate,
                                      DumpRequest *request) noexcept nogil:
    """Signal safe: one thread under the guard; a frame freed under the walk ends
    the thread with `<unreadable frame>` instead of the process."""
    cdef FaulthandlerJob job
    job.d = d
    job.tstate = tstate
    job.request = request
    if tb_guarded_call(d - dumpers, faulthandler_thread_job, &job) != 0:
        emit_str(d, b"  <unreadable frame>\n")


cdef void dump_faulthandler(Dumper *d, DumpRequest *request) noexcept nogil:
    """Signal safe: the threads as _Py_DumpTracebackThreads writes them, newest first,
    after the request's preamble ("Fatal Python error: ...", "Timeout (...)!").
    Past max_threads (0: no cap) faulthandler writes "..." and stops; tbfast
    then adds the current and the main thread if they were cut."""
    cdef StepJob step
    cdef PyThreadState *current = NULL
    cdef PyThreadState *main = NULL
    cdef long walked = 0, written = 0
    cdef bint capped = False
    tb_fault_guard_ensure()
    emit_str(d, request.preamble)
    step.tstate = tb_first_thread(request.interp)
    while step.tstate != NULL and walked < MAX_THREADS_WALKED and guarded_step(d, &step):
        walked += 1
        if wanted(step.ident, request):
            if capped:
                if step.ident == request.current_ident:
                    current = step.tstate
                elif step.ident == main_thread_ident and request.all_threads:
                    main = step.tstate
            elif request.all_threads and request.max_threads != 0 and written >= max(request.max_threads, 0):
                emit_str(d, b"\n...\n" if written else b"...\n")
                capped = True
                continue  # this thread may be the current or the main one
            else:
                if written:
                    emit_str(d, b"\n")
                guarded_faulthandler_thread(d, step.tstate, request)
                written += 1
        step.tstate = step.following
    if current != NULL:
        emit_str(d, b"\n")
        guarded_faulthandler_thread(d, current, request)
    if main != NULL:
        emit_str(d, b"\n")
        guarded_faulthandler_thread(d, main, request)
    emit_end(d)


# ---------------------------------------------------------------- the fatal handler's additions

cdef void emit_hex(Dumper *d, size_t value) noexcept nogil:
    # Signal safe: 0x and the lowercase digits, no leading zeros, as dump_pointer.
    cdef char digits[18]
    cdef int start = 18
    while True:
        start -= 1
        digits[start] = b"0123456789abcdef"[value & 15]
        value >>= 4
        if value == 0:
            break
    emit_str(d, b"0x")
    emit(d, digits + start, 18 - start)


cdef void emit_c_stack(Dumper *d) noexcept nogil:
    """Signal safe as faulthandler's own (3.14+): the calling thread's C stack, as
    _Py_DumpStack writes it.  backtrace() is made safe here by a first call at
    setup (c_stack_prepare), which loads libgcc; dladdr1() only reads the loader's
    tables, as CPython's handler does."""
    cdef void *stack[C_STACK_DEPTH]
    cdef int frames = backtrace(stack, C_STACK_DEPTH), i
    cdef Dl_info info
    cdef link_map *module
    cdef size_t address, base
    emit_str(d, b"Current thread's C stack trace (most recent call first):\n")
    if frames == 0:
        emit_str(d, b"  <system returned no stack trace>\n")
        return
    for i in range(frames):
        address = <size_t>stack[i]
        if (dladdr1(stack[i], &info, <void **>&module, RTLD_DL_LINKMAP) == 0
                or info.dli_fname == NULL or info.dli_fname[0] == 0):
            emit_str(d, b"  Binary file '<unknown>' [")
            emit_hex(d, address)
            emit_str(d, b"]\n")
            continue
        emit_str(d, b'  Binary file "')
        emit_str(d, info.dli_fname)
        base = <size_t>info.dli_saddr if info.dli_sname != NULL else module.l_addr
        if info.dli_sname == NULL and base == 0:
            emit_str(d, b'" [')
        else:
            emit_str(d, b'", at ')
            if info.dli_sname != NULL:
                emit_str(d, info.dli_sname)
            emit_str(d, b"+" if address >= base else b"-")
            emit_hex(d, address - base if address >= base else base - address)
            emit_str(d, b" [")
        emit_hex(d, address)
        emit_str(d, b"]\n")
    if frames == C_STACK_DEPTH:
        emit_str(d, b"  <truncated rest of calls>\n")


cdef void c_stack_prepare() noexcept nogil:
    # Setup only: backtrace() loads libgcc on its first call, which must not be in a handler.
    cdef void *stack[1]
    backtrace(stack, 1)


cdef bint str_equal(PyObject *a, PyObject *b, Py_ssize_t a_length) noexcept nogil:
    # Signal safe: the first `a_length` code points of `a` are all of `b`.
    if PyUnicode_GET_LENGTH(b) != a_length:
        return False
    cdef int a_kind = PyUnicode_KIND(a), b_kind = PyUnicode_KIND(b)
    cdef void *a_data = PyUnicode_DATA(a)
    cdef void *b_data = PyUnicode_DATA(b)
    cdef Py_ssize_t i
    for i in range(a_length):
        if PyUnicode_READ(a_kind, a_data, i) != PyUnicode_READ(b_kind, b_data, i):
            return False
    return True


cdef Py_ssize_t package_length(PyObject *name) noexcept nogil:
    # Signal safe: the code points of a module name's top-level package (3.15's filter).
    cdef Py_ssize_t length = PyUnicode_GET_LENGTH(name), i
    cdef int kind = PyUnicode_KIND(name)
    cdef void *data = PyUnicode_DATA(name)
    for i in range(length):
        if PyUnicode_READ(kind, data, i) == 0x2e:  # '.'
            return i
    return length


cdef PyObject *stdlib_module_names(PyInterpreterState *interp) noexcept nogil:
    # Signal safe: sys.stdlib_module_names if it is a frozenset, found by a scan
    # of sys.__dict__ (a lookup by name would need a str made for it).
    cdef PyObject *sysdict = tb_sys_dict(interp)
    cdef PyObject *key
    cdef PyObject *value
    cdef Py_ssize_t position = 0
    if sysdict == NULL:
        return NULL
    while PyDict_Next(sysdict, &position, &key, &value):
        if PyUnicode_Check(key) and PyUnicode_IS_COMPACT_ASCII(key) and \
                PyUnicode_GET_LENGTH(key) == 19 and \
                memcmp(PyUnicode_DATA(key), b"stdlib_module_names", 19) == 0:
            return value if PyFrozenSet_Check(value) else NULL
    return NULL


cdef bint is_stdlib_module(PyObject *name, PyObject *names) noexcept nogil:
    # Signal safe: `name` (or, on 3.15+, its top-level package) is in `names`.
    cdef Py_ssize_t length = package_length(name) if TB_FAULTHANDLER_PACKAGE_FILTER \
        else PyUnicode_GET_LENGTH(name)
    cdef Py_ssize_t position = 0
    cdef PyObject *item = tb_set_next_str(names, &position)
    while item != NULL:
        if str_equal(name, item, length):
            return True
        item = tb_set_next_str(names, &position)
    return False


cdef bint is_tbfast_module(PyObject *name) noexcept nogil:
    # Signal safe: tbfast's own core, which no crash report needs to list.
    return PyUnicode_IS_COMPACT_ASCII(name) and PyUnicode_GET_LENGTH(name) > 7 and \
        memcmp(PyUnicode_DATA(name), b"tbfast.", 7) == 0


cdef void emit_extension_modules(Dumper *d, PyInterpreterState *interp) noexcept nogil:
    """Signal safe as faulthandler's own: _Py_DumpExtensionModules, the C extensions
    in sys.modules that are not the standard library's (and not tbfast's core)."""
    cdef PyObject *modules = tb_modules_dict(interp)
    cdef PyObject *stdlib = stdlib_module_names(interp)
    cdef PyObject *key
    cdef PyObject *value
    cdef Py_ssize_t position = 0, count = 0
    if modules == NULL or not PyDict_Check(modules):
        return
    while PyDict_Next(modules, &position, &key, &value):
        if not PyUnicode_Check(key) or not tb_is_extension_module(value) or is_tbfast_module(key):
            continue
        if stdlib != NULL and is_stdlib_module(key, stdlib):
            continue
        emit_str(d, b", " if count else b"\nExtension modules: ")
        emit_ascii(d, key)
        count += 1
    if count:
        emit_str(d, b" (total: ")
        emit_decimal(d, count)
        emit_str(d, b")\n")
