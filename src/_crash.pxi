# The crash handler (faulthandler.enable()'s, and tbfast.enable()'s): on SIGSEGV,
# SIGFPE, SIGABRT, SIGBUS or SIGILL, one dump of every thread, GIL-free, then the
# handler it replaced (or the default action) takes the signal again, so the
# process dies as it would have: same exit status, same core dump.
#
# With a spool configured, the dump also goes there first, as JSON: the copy that
# the next process ships (tbfast.shipping, tbfast.sentry).
#
# SIGSEGV and SIGBUS reach it through the fault guard (_guard.pxi), which must
# stay in front of them so that the dump's own guarded reads can fault safely;
# the others are installed here.  Its handler runs on an alternate stack, so a
# stack overflow can be reported.

cdef enum:
    CRASH_SIGNALS = 5
    PREAMBLE_BYTES = 64
    ALT_STACK_BYTES = 64 * 1024   # the dump's deepest path with room; SIGSTKSZ is 8 KiB

cdef struct Crash:
    bint enabled
    unsigned int dumping          # bumped by each crash: only the first dumps
    Sink sink
    int format
    bint all_threads
    bint c_stack
    int max_threads
    PyInterpreterState *interp
    char preamble[CRASH_SIGNALS][PREAMBLE_BYTES]  # "Fatal Python error: Segmentation fault\n\n"
    char trigger[CRASH_SIGNALS][PREAMBLE_BYTES]   # "fatal:SIGSEGV"
    sigaction_t previous[CRASH_SIGNALS]           # for the signals installed here

cdef Crash crash
cdef int crash_signals[CRASH_SIGNALS]
crash_signals[:] = [SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSEGV]  # faulthandler's order


cdef inline bint guard_handles(int signum) noexcept nogil:
    # Signal safe: the fault guard's signals, whose crash handling runs through it.
    return signum == SIGSEGV or signum == SIGBUS


cdef int crash_index(int signum) noexcept nogil:
    # Signal safe.
    cdef int i
    for i in range(CRASH_SIGNALS):
        if crash_signals[i] == signum:
            return i
    return -1


cdef void on_crash(int signum, siginfo_t *info, void *context) noexcept nogil:
    """Signal safe: one dump (a fault inside it, or in another thread meanwhile,
    dumps nothing more), then the signal goes on to what was there before us."""
    cdef int saved_errno = errno, index = crash_index(signum)
    if index >= 0 and tb_bump(&crash.dumping) == 1:
        crash_dump(index)
    crash_forget_signal(signum, index)
    tb_set_errno(saved_errno)
    raise_signal(signum)  # SA_NODEFER: delivered now, to the handler put back


cdef void crash_dump(int index) noexcept nogil:
    # Signal safe: the dump of a crash, spooled, then to the sink in its format, with
    # faulthandler's additions in faulthandler's.
    cdef DumpRequest request
    cdef Dumper *d = dumper_acquire()
    if d == NULL:
        write_to_sink(&crash.sink, DUMP_SKIPPED, strlen(DUMP_SKIPPED), SIGNAL_WRITE_MS)
        return
    request_init(&request, crash.interp, crash.trigger[index], tb_thread_self(), False)
    request.all_threads = crash.all_threads
    request.preamble = crash.preamble[index]
    request.max_threads = crash.max_threads
    spool_write(d, &request, &crash.sink)
    if crash.sink.fd >= 0:
        dumper_start(d, crash.format)
        dump(d, &request)
        if crash.format == FORMAT_FAULTHANDLER:
            if crash.c_stack:
                emit_str(d, b"\n")
                emit_c_stack(d)
            emit_extension_modules(d, crash.interp)
        write_dump_to_sink(d, &crash.sink, SIGNAL_WRITE_MS)
    tb_release(&d.busy)


cdef void crash_forget_signal(int signum, int index) noexcept nogil:
    # Signal safe: puts back what was there before us for this one signal.
    if index < 0 or guard_handles(signum):
        tb_fault_guard_release(signum)
    else:
        sigaction(signum, &crash.previous[index], NULL)


cdef int crash_install(int fd, int format, bint all_threads, bint c_stack, int max_threads,
                       preambles, triggers) except -1:
    """Installs the crash handler (or updates it).  GIL held."""
    cdef sigaction_t action
    cdef int i
    cdef bytes text
    global tb_crash_hook
    for i in range(CRASH_SIGNALS):
        set_text(crash.preamble[i], preambles[i])
        set_text(crash.trigger[i], triggers[i])
    crash.interp = PyInterpreterState_Get()
    crash.sink.fd = fd
    crash.sink.stalled = False
    crash.format = format
    crash.all_threads = all_threads
    crash.c_stack = c_stack
    crash.max_threads = max_threads
    if c_stack:
        c_stack_prepare()
    alt_stack_ensure()
    tb_fault_guard_ensure()
    sigemptyset(&action.sa_mask)
    action.sa_sigaction = <void (*)(int, siginfo_t *, void *) noexcept nogil>on_crash
    action.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK
    for i in range(CRASH_SIGNALS):
        if guard_handles(crash_signals[i]):
            continue
        if sigaction(crash_signals[i], &action, NULL if crash.enabled else &crash.previous[i]) != 0:
            raise OSError(errno, "sigaction failed for signal %d" % crash_signals[i])
    tb_crash_hook = on_crash
    crash.dumping = 0
    crash.enabled = True
    return 0


cdef set_text(char *out, bytes text):
    if len(text) >= PREAMBLE_BYTES:
        raise ValueError("%r is too long" % text)
    memcpy(out, <const char *>text, len(text))
    out[len(text)] = 0


cdef bint crash_uninstall() except -1:
    """Puts back the handlers we replaced; False if none was installed.  GIL held."""
    global tb_crash_hook
    cdef int i
    if not crash.enabled:
        return False
    crash.enabled = False
    tb_crash_hook = NULL
    for i in range(CRASH_SIGNALS):
        if not guard_handles(crash_signals[i]):
            sigaction(crash_signals[i], &crash.previous[i], NULL)
    return True


cdef void alt_stack_ensure() noexcept:
    # Setup only: an alternate stack for the calling thread, unless it has one (a
    # stack overflow leaves no room on the thread's own stack for the handler).
    cdef stack_t current, ours
    if sigaltstack(NULL, &current) != 0 or not (current.ss_flags & SS_DISABLE):
        return
    ours.ss_sp = malloc(ALT_STACK_BYTES)  # kept for the thread's life, as faulthandler's
    if ours.ss_sp == NULL:
        return
    ours.ss_size = ALT_STACK_BYTES
    ours.ss_flags = 0
    sigaltstack(&ours, NULL)
