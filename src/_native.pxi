# Native frames: each thread's C stack, under the Python frames it runs.
#
# Only a thread can read its own C stack.  The dump sends it a private real-time
# signal (native_signal) whose value names the dumper's request; the thread's
# handler (on_native_signal) unwinds its own stack with backtrace() into that
# request and wakes the dump.  A thread that has not answered within
# NATIVE_WAIT_MS (it blocks signals, or is stopped) is reported as such, and a
# late answer finds its request withdrawn.  The handler is installed with
# SA_RESTART: a read(), a lock or select() it interrupts goes on (CPython retries
# on EINTR, PEP 475), which tests/test_native.py checks.
#
# backtrace() is called once at setup, which loads libgcc; with glibc 2.35+ it
# then finds unwind tables without the loader's lock (_dl_find_object).  Names:
# dladdr1() where the dump is not in a signal handler (the socket and watchdog
# threads, the API); in a handler, module+offset from a table of the loaded
# modules made outside handlers, which addr2line or gdb resolve later.
#
# The Python frames of one call of _PyEval_EvalFrameDefault (record_frames marks
# the outermost of each, RecordedFrame.ends_call) take that C frame's place, as
# py-spy and pystack show them.

cdef enum:
    NATIVE_WAIT_MS = 20          # for one thread's answer
    NATIVE_IDLE = 0              # NativeRequest.state
    NATIVE_WAITING = 1
    NATIVE_WRITING = 2
    NATIVE_DONE = 3
    MODULES_MAX = 512            # loaded modules the signal-handler dumps can name
    MODULE_NAME_BYTES = 256

cdef struct NativeRequest:       # one per dumper: a dump asks one thread at a time
    unsigned int state
    unsigned int generation
    long tid
    int count
    void *frames[NATIVE_DEPTH]

cdef struct Module:
    size_t start                 # the addresses its loaded segments span
    size_t end
    size_t bias                  # what addr2line subtracts: the load bias
    char name[MODULE_NAME_BYTES]

cdef struct Modules:
    unsigned int seq             # seqlock: refreshed outside handlers, read in them
    int count
    Module entries[MODULES_MAX]

cdef NativeRequest native_requests[DUMPER_COUNT]
cdef Modules modules
cdef int native_signal = 0       # 0 until native_setup()
cdef int native_default = NATIVE_NONE  # what a dump asks for unless told (tests: TBFAST_TEST_NATIVE)
cdef size_t eval_start = 0, eval_end = 0   # _PyEval_EvalFrameDefault's code
cdef size_t tbcore_start = 0, tbcore_end = 0  # this module's: the dump's own C frames


cdef void on_native_signal(int signum, siginfo_t *info, void *context) noexcept nogil:
    # Signal safe: this thread's C stack, into the request that asked for it.
    cdef int saved_errno = errno
    cdef int value = info.si_value.sival_int
    cdef int index = value & 0xff
    cdef NativeRequest *request
    if info.si_code == SI_QUEUE and info.si_pid == getpid() and 0 <= index < DUMPER_COUNT:
        request = &native_requests[index]
        if (request.generation == <unsigned int>(value >> 8) and request.tid == tb_gettid()
                and tb_cas_int(<int *>&request.state, NATIVE_WAITING, NATIVE_WRITING)):
            request.count = backtrace(request.frames, NATIVE_DEPTH)
            tb_store_int(<int *>&request.state, NATIVE_DONE)
            tb_futex_wake(&request.state)
    tb_set_errno(saved_errno)


cdef int native_stack(Dumper *d, long tid) noexcept nogil:
    """Signal safe: the C return addresses of thread `tid`, innermost first, into
    d.native; their count, or -1 if it did not answer within NATIVE_WAIT_MS."""
    cdef NativeRequest *request = &native_requests[d - dumpers]
    cdef long long deadline = monotonic_ms() + NATIVE_WAIT_MS, left
    cdef int count
    if tid == tb_gettid():
        return backtrace(d.native, NATIVE_DEPTH)
    request.generation = (request.generation + 1) & 0xffffff
    request.tid = tid
    tb_store_int(<int *>&request.state, NATIVE_WAITING)
    if tb_signal_thread(tid, native_signal, (d - dumpers) | (request.generation << 8)) != 0:
        tb_store_int(<int *>&request.state, NATIVE_IDLE)
        return -1
    while tb_load_uint(&request.state) != NATIVE_DONE:
        left = deadline - monotonic_ms()
        if left <= 0:
            if tb_cas_int(<int *>&request.state, NATIVE_WAITING, NATIVE_IDLE):
                return -1  # withdrawn: a late answer finds the state moved
            left = 1       # the thread is writing: a backtrace takes microseconds
        tb_futex_wait(&request.state, tb_load_uint(&request.state), left * 1000000)
    count = request.count
    memcpy(d.native, request.frames, count * sizeof(void *))
    tb_store_int(<int *>&request.state, NATIVE_IDLE)
    return count


cdef int native_first_frame(Dumper *d, int count) noexcept nogil:
    # Signal safe: the first of d.native that is not the dump's own (this module's
    # frames, and the kernel's signal trampoline right under a handler's).
    cdef int i = 0
    while i < count and tbcore_start <= <size_t>d.native[i] < tbcore_end:
        i += 1
    if 0 < i < count and is_signal_trampoline(d.native[i]):
        i += 1
    return i


cdef bint is_signal_trampoline(void *address) noexcept nogil:
    # Signal safe: libc's __restore_rt, which backtrace() shows under a handler.
    cdef const unsigned char *code = <const unsigned char *>address
    # x86_64: mov $0xf, %rax; syscall (rt_sigreturn) -- the return address points at it.
    return code[0] == 0x48 and code[1] == 0xc7 and code[2] == 0xc0 and code[3] == 0x0f


cdef bint is_eval_frame(void *address) noexcept nogil:
    # Signal safe.
    return eval_start <= <size_t>address < eval_end


cdef void native_frame_text(Dumper *out, void *address, bint symbolize, char *path) noexcept nogil:
    """Signal safe when not `symbolize`: one C frame as `name+0xOFF in /path/module`
    (symbolize: dladdr1, not in a handler), else `/path/module+0xOFF` (the load bias
    subtracted: what addr2line takes), else the bare address.  `path`: PATH_BYTES."""
    cdef Dl_info info
    cdef link_map *module
    cdef size_t at = <size_t>address
    cdef int index
    if symbolize and dladdr1(address, &info, <void **>&module, RTLD_DL_LINKMAP) != 0 \
            and info.dli_fname != NULL:
        if info.dli_sname != NULL:
            emit_str(out, info.dli_sname)
            emit_str(out, b"+")
            emit_hex(out, at - <size_t>info.dli_saddr)
            emit_str(out, b" in ")
            emit_str(out, info.dli_fname)
        else:
            emit_str(out, info.dli_fname)
            emit_str(out, b"+")
            emit_hex(out, at - module.l_addr)
        return
    index = module_of(at, path)
    if index >= 0:
        emit_str(out, path)
        emit_str(out, b"+")
        emit_hex(out, at - modules.entries[index].bias)
    else:
        emit_hex(out, at)


cdef int module_of(size_t address, char *name) noexcept nogil:
    # Signal safe: the loaded module holding `address`, its name copied to `name`
    # (PATH_BYTES), read under the table's seqlock; -1 if none, or it changed.
    cdef unsigned int begin = tb_seq_read_begin(&modules.seq)
    cdef int i
    for i in range(min(modules.count, MODULES_MAX)):
        if modules.entries[i].start <= address < modules.entries[i].end:
            memcpy(name, modules.entries[i].name, MODULE_NAME_BYTES)
            name[MODULE_NAME_BYTES - 1] = 0
            return -1 if tb_seq_read_changed(&modules.seq, begin) else i
    return -1


cdef int add_module(dl_phdr_info *info, size_t size, void *unused) noexcept nogil:
    # Not in a handler (dl_iterate_phdr takes the loader's lock): one module's span.
    cdef Module *entry
    cdef size_t low = <size_t>-1, high = 0, start
    cdef int i
    if modules.count >= MODULES_MAX:
        return 1
    for i in range(info.dlpi_phnum):
        if info.dlpi_phdr[i].p_type == PT_LOAD:
            start = info.dlpi_addr + info.dlpi_phdr[i].p_vaddr
            low = min(low, start)
            high = max(high, start + info.dlpi_phdr[i].p_memsz)
    if high == 0:
        return 0
    entry = &modules.entries[modules.count]
    entry.start = low
    entry.end = high
    entry.bias = info.dlpi_addr
    if info.dlpi_name != NULL and info.dlpi_name[0] != 0:
        strncpy(entry.name, info.dlpi_name, MODULE_NAME_BYTES - 1)
    else:
        tb_readlink_exe(entry.name, MODULE_NAME_BYTES)  # the main program has no name here
    entry.name[MODULE_NAME_BYTES - 1] = 0
    modules.count += 1
    return 0


cdef void modules_refresh() noexcept nogil:
    """Not in a handler: the table of loaded modules, for the dumps taken in one.
    Readers (module_of) retry nothing: a name read while it changes is left out."""
    tb_seq_write_begin(&modules.seq)
    modules.count = 0
    dl_iterate_phdr(add_module, NULL)
    tb_seq_write_end(&modules.seq)


cdef int native_setup() except -1:
    """Installs the native signal's handler, loads backtrace()'s unwinder, finds
    _PyEval_EvalFrameDefault and this module, and makes the module table.  GIL held;
    once per process (a fork keeps all of it)."""
    global native_signal, eval_start, eval_end, tbcore_start, tbcore_end
    cdef sigaction_t action
    cdef Dl_info info
    cdef ElfSym *symbol = NULL
    cdef link_map *module
    cdef void *first[1]
    if native_signal:
        modules_refresh()
        return 0
    backtrace(first, 1)
    cdef void *evaluate = dlsym(RTLD_DEFAULT, b"_PyEval_EvalFrameDefault")
    if evaluate != NULL and dladdr1(evaluate, &info, <void **>&symbol, RTLD_DL_SYMENT) != 0 \
            and symbol != NULL:
        eval_start = <size_t>evaluate
        eval_end = eval_start + symbol.st_size
    if dladdr1(<void *>native_stack, &info, <void **>&module, RTLD_DL_LINKMAP) != 0:
        tbcore_start, tbcore_end = module_span(<size_t>info.dli_fbase)
    sigemptyset(&action.sa_mask)
    action.sa_sigaction = <void (*)(int, siginfo_t *, void *) noexcept nogil>on_native_signal
    action.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK
    signum = tb_native_signal_number()
    if sigaction(signum, &action, NULL) != 0:
        raise OSError(errno, "tbfast: cannot install the native frames' signal handler")
    modules_refresh()
    native_signal = signum
    return 0


cdef tuple module_span(size_t base):
    # GIL held: the span of the loaded module whose first address is `base`.
    cdef int i
    modules_refresh()
    for i in range(modules.count):
        if modules.entries[i].start <= base < modules.entries[i].end:
            return modules.entries[i].start, modules.entries[i].end
    return 0, 0


# ---------------------------------------------------------------- in the dump

cdef enum:
    NATIVE_NONE = 0              # DumpRequest.native
    NATIVE_BUSY = 1              # the threads that run, hold the GIL, or dump
    NATIVE_ALL = 2
    NATIVE_NOT_ASKED = -2        # Dumper.native_count: no C frames for this thread
    NATIVE_NO_ANSWER = -1


cdef void native_begin(Dumper *d, PyThreadState *tstate, DumpRequest *request, bint holds_gil,
                       bint current) noexcept nogil:
    """Signal safe: the thread's C stack into d.native when the request wants it, and
    d.native_count and d.native_next set for native_until_python and native_rest."""
    cdef long tid = <long>tb_thread_native_id(tstate)
    cdef ThreadStatus *status = thread_status(d)  # read_status's, for this thread
    d.native_count = NATIVE_NOT_ASKED
    d.native_next = 0
    if request.native == NATIVE_NONE or native_signal == 0 or tid <= 0:
        return
    if request.native == NATIVE_BUSY:
        if not (holds_gil or current or status.kernel == STATE_RUNNING):
            return  # asleep, or idle, without the GIL
        if status.kernel == STATE_SLEEPING and 0 <= status.syscall < SYSCALL_TABLE \
                and syscall_cut_short[status.syscall]:
            # Asking would end its sleep early (EINTR), which C code that does not
            # retry would see.  native="all" asks all the same.
            if d.format == FORMAT_TEXT:
                emit_str(d, b"  [C] <asleep in ")
                emit_syscall_name(d, status.syscall)
                emit_str(d, b", which a signal would cut short: not asked>\n")
            return
    native_ask(d, tid)


cdef void native_ask(Dumper *d, long tid) noexcept nogil:
    # Signal safe: thread `tid`'s C stack into d.native, past the dump's own frames;
    # in text, a line saying so when it did not answer.
    d.native_count = native_stack(d, tid)
    d.native_next = native_first_frame(d, d.native_count) if d.native_count > 0 else 0
    if d.native_count < 0 and d.format == FORMAT_TEXT:
        emit_str(d, b"  [C] <no answer within 20 ms: the thread blocks signals, or is stopped>\n")


cdef void native_until_python(Dumper *d, DumpRequest *request) noexcept nogil:
    """Signal safe: the text format's C frames up to the next _PyEval_EvalFrameDefault,
    whose place the next Python frames take; that frame itself is left out."""
    cdef void *address
    while d.native_next < d.native_count:
        address = d.native[d.native_next]
        d.native_next += 1
        if is_eval_frame(address):
            return
        emit_native_line(d, address, request.symbolize)


cdef void native_rest(Dumper *d, DumpRequest *request) noexcept nogil:
    """Signal safe: the C frames not shown yet: in text those under the outermost
    Python frame; in json every C frame, as a "native" array of strings beside the
    thread's frames, _PyEval_EvalFrameDefault's included."""
    cdef int i
    if d.format == FORMAT_JSON:
        if d.native_count == NATIVE_NOT_ASKED:
            return
        # The thread object's frames array is open; dump_thread closes what this opens.
        emit_str(d, b'],"native":[' if d.native_count >= 0 else
                 b'],"native_error":"no answer within 20 ms","native":[')
        for i in range(d.native_next, d.native_count):
            if i > d.native_next:
                emit_str(d, b",")
            emit_json_string(d, d.string, native_text(d, d.native[i], request.symbolize))
        return
    while d.native_next < d.native_count:
        emit_native_line(d, d.native[d.native_next], request.symbolize)
        d.native_next += 1


cdef Py_ssize_t native_text(Dumper *d, void *address, bint symbolize) noexcept nogil:
    # Signal safe when not `symbolize`: a C frame's text into d.string; its length.
    cdef Dumper line
    line.buf = d.string
    line.capacity = STRING_BYTES
    line.length = 0
    line.full = False
    native_frame_text(&line, address, symbolize, d.path)
    return line.length


cdef void emit_native_line(Dumper *d, void *address, bint symbolize) noexcept nogil:
    # Signal safe when not `symbolize`: a C frame's line in the text format.
    cdef Py_ssize_t length = native_text(d, address, symbolize)
    emit_str(d, b"  [C] ")
    emit_printable(d, d.string, length)
    emit_str(d, b"\n")



# ---------------------------------------------------------------- threads Python never knew

cdef bint is_python_thread(Dumper *d, long tid) noexcept nogil:
    # Signal safe: whether the walk met a thread state on kernel thread `tid`.
    cdef Py_ssize_t i
    for i in range(d.python_tid_count):
        if <long>d.python_tids[i] == tid:
            return True
    return False


cdef void dump_foreign_threads(Dumper *d, DumpRequest *request) noexcept nogil:
    """Signal safe: with every thread's C frames asked for, the threads of the process
    that Python never knew (a C library's own), from /proc/self/task, each with its
    kernel name and C frames; tbfast's own threads (tbfast-*) are left out."""
    cdef char *entries = d.scratch + SCRATCH_SIZE // 2  # the other half reads nothing now
    cdef char name[COMM_BYTES]
    cdef long got, offset, tid
    cdef Py_ssize_t name_length
    cdef int fd = os_open(b"/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if fd < 0:
        return
    got = tb_getdents(fd, entries, SCRATCH_SIZE // 2)
    while got > 0:
        offset = 0
        while offset < got:
            tid = decimal_name(entries + offset + 19)  # struct linux_dirent64's d_name
            offset += (<unsigned short *>(entries + offset + 16))[0]
            if tid <= 0 or is_python_thread(d, tid):
                continue
            name_length = max(read_kernel_name(tid, name), 0)
            if name_length >= 7 and memcmp(name, b"tbfast-", 7) == 0:
                continue
            emit_foreign_thread(d, request, tid, name, name_length)
        got = tb_getdents(fd, entries, SCRATCH_SIZE // 2)
    close(fd)


cdef long decimal_name(const char *text) noexcept nogil:
    # Signal safe: a directory entry's name as a number; -1 for ".", "..".
    cdef long value = 0
    cdef int i = 0
    while text[i] != 0:
        if not (b'0' <= text[i] <= b'9'):
            return -1
        value = value * 10 + (text[i] - 48)
        i += 1
    return value if i else -1


cdef void emit_foreign_thread(Dumper *d, DumpRequest *request, long tid, const char *name,
                              Py_ssize_t name_length) noexcept nogil:
    # Signal safe: one thread Python never knew, in the dump's format.
    cdef Py_ssize_t mark = d.length
    if d.format == FORMAT_JSON:
        if d.threads_written:
            emit_str(d, b",")
        emit_str(d, b'{"ident":null,"native_id":')
        emit_decimal(d, tid)
        emit_str(d, b',"name":')
        emit_json_string(d, name, name_length)
        emit_str(d, b',"python":false,"current":false,"holds_gil":false,"context":null,"frames":[')
    else:
        emit_str(d, b"Thread of no Python (native id ")
        emit_decimal(d, tid)
        emit_str(d, b', name "')
        emit_printable(d, name, name_length)
        emit_str(d, b'") (most recent call first):\n')
    native_ask(d, tid)
    native_rest(d, request)
    if d.format == FORMAT_JSON:
        emit_tail_str(d, b"]}")
    else:
        emit_str(d, b"\n")
    if d.full:
        d.length = mark
        d.dropped_threads += 1
    else:
        d.threads_written += 1
