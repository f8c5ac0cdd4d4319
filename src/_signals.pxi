# Entry point: the C-level signal handler, a dump written while the GIL holder is
# stuck, because nothing here waits for Python to run.  The handler guards errno,
# takes the dump through dump_to_sink or hand_to_python (_deliver.pxi), then ends
# a fault as it would have ended or chains to the handler it replaced.

cdef struct SignalSlot:
    bint installed
    Sink sink
    bint all_threads
    bint chain
    int format
    int max_threads            # faulthandler's format: threads before "..." (0: all)
    int native                 # C frames: NATIVE_NONE, _BUSY or _ALL, as module+offset
    bint log                   # also spooled and handed to the `tbfast` logger (_watchdog.pxi)
    char trigger[48]
    sigaction_t previous

cdef SignalSlot signal_slots[NSIG]
cdef PyInterpreterState *signal_interp = NULL


cdef void on_signal(int signum, siginfo_t *info, void *context) noexcept nogil:
    # Signal safe: saves errno, runs the shared dump, then chains.
    cdef int saved_errno = errno
    cdef SignalSlot *slot = &signal_slots[signum]
    cdef DumpRequest request
    request_init(&request, signal_interp, slot.trigger, tb_thread_self(), False)
    request.all_threads = slot.all_threads
    request.max_threads = slot.max_threads
    if slot.native != NATIVE_NONE:
        request.native = slot.native  # symbolize stays False: no dladdr1 in a handler
    if slot.log:
        hand_to_python(&request, slot.format, &slot.sink, request.current_ident, 0, KIND_SIGNAL)
    else:
        dump_to_sink(&slot.sink, &request, slot.format, SIGNAL_WRITE_MS)
    if is_fault(signum):
        end_with_fault(signum, slot)
    elif slot.chain:
        chain_previous(signum, info, context, slot)
    tb_set_errno(saved_errno)


cdef bint is_fault(int signum) noexcept nogil:
    # Signal safe: the signals that end a process which returns from their handler
    # into the faulting instruction (or, for SIGABRT, into abort()).
    return (signum == SIGSEGV or signum == SIGBUS or signum == SIGFPE or signum == SIGILL
            or signum == SIGABRT)


cdef void end_with_fault(int signum, SignalSlot *slot) noexcept nogil:
    # Signal safe: after the one dump, ours goes for good and the handler we replaced
    # (chain) or the default action comes back, and the signal is raised again, as
    # faulthandler does: the process ends as it would have without us, by the
    # signal.  A fault that was not raised (a NULL read) takes it anew on return.
    cdef sigaction_t default_action
    if slot.chain:
        sigaction(signum, &slot.previous, NULL)
    else:
        sigemptyset(&default_action.sa_mask)
        default_action.sa_handler = SIG_DFL
        default_action.sa_flags = 0
        sigaction(signum, &default_action, NULL)
    slot.installed = False
    raise_signal(signum)


cdef void chain_previous(int signum, siginfo_t *info, void *context, SignalSlot *slot) noexcept nogil:
    # Signal safe: calls the handler we replaced; a default action is re-raised with
    # the old disposition in place (as faulthandler does), then ours comes back.
    cdef sigaction_t ours
    if slot.previous.sa_flags & SA_SIGINFO:
        (<void (*)(int, siginfo_t *, void *) noexcept nogil>slot.previous.sa_sigaction)(signum, info, context)
    elif slot.previous.sa_handler == SIG_DFL:
        sigaction(signum, &slot.previous, &ours)
        raise_signal(signum)
        sigaction(signum, &ours, NULL)
    elif slot.previous.sa_handler != SIG_IGN:
        (<void (*)(int) noexcept nogil>slot.previous.sa_handler)(signum)


cdef int signal_install(int signum, int fd, bint all_threads, bint chain, int format,
                        bytes trigger, bint log, int max_threads, int native) except -1:
    """Installs (or updates) the handler for one signal.  GIL held."""
    cdef SignalSlot *slot = &signal_slots[signum]
    cdef sigaction_t action
    global signal_interp
    signal_interp = PyInterpreterState_Get()
    if len(trigger) >= <Py_ssize_t>sizeof(slot.trigger):
        raise ValueError("signal name too long")
    memcpy(slot.trigger, <const char *>trigger, len(trigger))
    slot.trigger[len(trigger)] = 0
    slot.sink.fd = fd
    slot.sink.stalled = False
    slot.all_threads = all_threads
    slot.chain = chain
    slot.format = format
    slot.max_threads = max_threads
    slot.native = native
    slot.log = log
    sigemptyset(&action.sa_mask)
    action.sa_sigaction = <void (*)(int, siginfo_t *, void *) noexcept nogil>on_signal
    action.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK
    if chain:
        action.sa_flags |= SA_NODEFER  # so the re-raised default action is delivered
    if sigaction(signum, &action, NULL if slot.installed else &slot.previous) != 0:
        raise OSError(errno, "sigaction failed for signal %d" % signum)
    slot.installed = True
    return 0


cdef bint signal_uninstall(int signum) except -1:
    """Puts back the handler we replaced.  GIL held."""
    cdef SignalSlot *slot = &signal_slots[signum]
    if not slot.installed:
        return False
    if sigaction(signum, &slot.previous, NULL) != 0:
        raise OSError(errno, "sigaction failed for signal %d" % signum)
    slot.installed = False
    return True
