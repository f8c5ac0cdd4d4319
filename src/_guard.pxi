# Guarded reads: a GIL-free walk may follow a pointer that went stale under a
# running thread (a frame popped and its memory unmapped, a thread state freed).
# Each thread's walk runs under a guard owned by the dumping thread; a SIGSEGV or
# SIGBUS raised inside it jumps back, and the walk marks the frame
# `<unreadable frame>` and goes on with the next thread.  A fault anywhere else
# goes to the handler we replaced, as if we were not there.
#
# Limits: this recovers from reads of unmapped memory, not from reads of memory
# that was reused and holds plausible garbage; those are caught, where they can
# be, by the type checks and loop caps of the walk itself.

from posix.signal cimport siginfo_t

cdef extern from *:
    """
    #include <setjmp.h>
    #include <signal.h>
    #include <pthread.h>

    typedef struct {
        sigjmp_buf jump;
        volatile sig_atomic_t active;
        pthread_t owner;
    } tb_guard;

    #define TB_GUARDS 8  /* one per dumper, with room */
    static tb_guard tb_guards[TB_GUARDS];
    static struct sigaction tb_fault_previous[2];  /* SIGSEGV, SIGBUS */
    /* The crash handler (_crash.pxi), for a fault outside any guarded call; NULL: none. */
    static void (*tb_crash_hook)(int, siginfo_t *, void *) = NULL;

    /* Signal safe: a fault inside a guarded call jumps back to it; any other goes to
       the crash handler if enabled, else to the handler we replaced (a default
       action is restored and the signal raised again). */
    static void tb_on_fault(int signum, siginfo_t *info, void *context) {
        pthread_t self = pthread_self();
        for (int i = 0; i < TB_GUARDS; i++) {
            if (tb_guards[i].active && pthread_equal(tb_guards[i].owner, self)) {
                tb_guards[i].active = 0;
                siglongjmp(tb_guards[i].jump, 1);
            }
        }
        if (tb_crash_hook != NULL) {
            tb_crash_hook(signum, info, context);
            return;
        }
        struct sigaction *previous = &tb_fault_previous[signum == SIGBUS];
        if (previous->sa_flags & SA_SIGINFO) {
            previous->sa_sigaction(signum, info, context);
        } else if (previous->sa_handler != SIG_DFL && previous->sa_handler != SIG_IGN) {
            previous->sa_handler(signum);
        } else {
            sigaction(signum, previous, NULL);
            if (previous->sa_handler == SIG_DFL) {
                raise(signum);  /* a raise()d fault has no instruction to run again */
            }
        }
    }

    /* Signal safe: puts tb_on_fault in front for SIGSEGV and SIGBUS, unless it is
       already (faulthandler.enable() after us would otherwise see our faults first). */
    static void tb_fault_guard_ensure(void) {
    #ifndef TBFAST_DISABLE_GUARD
        static const int signals[2] = {SIGSEGV, SIGBUS};
        for (int i = 0; i < 2; i++) {
            struct sigaction current, ours;
            if (sigaction(signals[i], NULL, &current) != 0
                    || ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == tb_on_fault)) {
                continue;
            }
            sigemptyset(&ours.sa_mask);
            ours.sa_sigaction = tb_on_fault;
            /* NODEFER: the jump back leaves the signal mask as it was, without
               sigsetjmp having to save it (a syscall per guarded call). */
            ours.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
            if (sigaction(signals[i], &ours, &tb_fault_previous[i]) != 0) {
                continue;
            }
        }
    #endif
    }

    /* Signal safe: the handler the guard replaced goes back in front of `signum`
       (a crash handed on to it). */
    static void tb_fault_guard_release(int signum) {
        sigaction(signum, &tb_fault_previous[signum == SIGBUS], NULL);
    }

    typedef void (*tb_guarded_fn)(void *argument);

    /* Signal safe: fn(argument); 0, or -1 when it faulted and was abandoned. */
    static int tb_guarded_call(int index, tb_guarded_fn fn, void *argument) {
    #ifdef TBFAST_DISABLE_GUARD
        (void)index;
        fn(argument);
        return 0;
    #else
        tb_guard *guard = &tb_guards[index];
        if (sigsetjmp(guard->jump, 0)) {
            return -1;
        }
        guard->owner = pthread_self();
        guard->active = 1;
        fn(argument);
        guard->active = 0;
        return 0;
    #endif
    }
    """
    ctypedef void (*tb_guarded_fn)(void *argument) noexcept nogil
    void tb_fault_guard_ensure() nogil
    void tb_fault_guard_release(int signum) nogil
    void (*tb_crash_hook)(int, siginfo_t *, void *) noexcept nogil
    int tb_guarded_call(int index, tb_guarded_fn fn, void *argument) nogil


from posix.signal cimport sigset_t, sigfillset, sigdelset, SIG_BLOCK

cdef extern from "<signal.h>" nogil:
    enum: SIGSEGV, SIGBUS, SIGILL, SIGFPE
    int pthread_sigmask(int how, const sigset_t *mask, sigset_t *old)


cdef void block_async_signals() noexcept nogil:
    """Signal safe: for tbfast's own threads, which run no Python, every signal goes to
    Python's threads; all but the faults, which must reach the guard: a fault signal
    that arrives blocked kills the process, whatever its handler."""
    cdef sigset_t mask
    sigfillset(&mask)
    sigdelset(&mask, SIGSEGV)
    sigdelset(&mask, SIGBUS)
    sigdelset(&mask, SIGILL)
    sigdelset(&mask, SIGFPE)
    pthread_sigmask(SIG_BLOCK, &mask, NULL)


cdef struct StepJob:
    PyThreadState *tstate
    PyThreadState *following
    unsigned long ident


cdef void step_job(void *argument) noexcept nogil:
    # Signal safe: reads a thread state's ident and its successor in the list.
    cdef StepJob *job = <StepJob *>argument
    job.ident = tb_thread_ident(job.tstate)
    job.following = tb_next_thread(job.tstate)
    tb_prefetch_thread(job.tstate)


cdef bint guarded_step(Dumper *d, StepJob *job) noexcept nogil:
    """Signal safe: the ident and successor of job.tstate, read under the guard: a
    thread that exits frees its state while the walk may be on it.  False if the
    state could not be read (the walk ends there)."""
    return tb_guarded_call(d - dumpers, step_job, job) == 0


cdef void prefetch_job(void *argument) noexcept nogil:
    # Signal safe: the second step of loading a thread ahead of its walk.
    cdef PyThreadState *tstate = <PyThreadState *>argument
    tb_prefetch_top_frame(tstate)
    slot_prefetch(tb_thread_ident(tstate))


cdef void prefetch_thread_top(Dumper *d, PyThreadState *tstate) noexcept nogil:
    """Signal safe: starts loading a thread's top frames and its slot while another
    thread is walked, under the guard: a thread state freed meanwhile only means
    that nothing is loaded ahead for it."""
    if tstate != NULL:
        tb_guarded_call(d - dumpers, prefetch_job, tstate)


cdef struct ThreadJob:
    Dumper *d
    PyThreadState *tstate
    DumpRequest *request
    PyThreadState *holder
    bint visible


cdef void record_job(void *argument) noexcept nogil:
    # Signal safe: record_frames, in the shape a guarded call takes.
    cdef ThreadJob *job = <ThreadJob *>argument
    cdef DumpRequest *request = job.request
    cdef bint current = request.current_ident != 0 and \
        tb_thread_ident(job.tstate) == request.current_ident
    record_frames(job.d, job.tstate, request.skip if current else 0)


cdef void dump_thread_job(void *argument) noexcept nogil:
    # Signal safe: dump_thread, in the shape a guarded call takes.
    cdef ThreadJob *job = <ThreadJob *>argument
    dump_thread(job.d, job.tstate, job.request, job.holder)


cdef bint guarded_dump_thread(Dumper *d, PyThreadState *tstate, DumpRequest *request,
                              PyThreadState *holder) noexcept nogil:
    """Signal safe: one thread in two guarded steps.  A fault while walking keeps the
    frames read before it and ends the thread with `<unreadable frame>`; a fault while
    formatting replaces the frame being written by it.  False for a thread with no
    frame to show (as sys._current_frames() leaves it out) or none readable."""
    cdef ThreadJob job
    job.d = d
    job.tstate = tstate
    job.request = request
    job.holder = holder
    d.walk_faulted = tb_guarded_call(d - dumpers, record_job, &job) != 0
    if d.walk_faulted:
        d.visible = d.recorded + 1  # the frames read, and the one that could not be
    if d.visible == 0:
        return False
    d.thread_mark = d.length
    d.frame_mark = -1
    if tb_guarded_call(d - dumpers, dump_thread_job, &job) == 0:
        return True
    if d.frame_mark < 0:  # the fault came before the first frame: leave the thread out
        d.length = d.thread_mark
        return False
    d.length = d.frame_mark
    emit_unreadable(d, tstate, d.frame_index)
    d.threads_written += 1
    if d.format == FORMAT_JSON:
        emit_tail_str(d, b"]}")
    else:
        emit_str(d, b"\n")
    return True


# ---------------------------------------------------------------- test hook

cdef char *unmapped_page = NULL


def _poison_frame_for_test(unsigned long ident, int depth):
    """Test only: points the caller link of a parked thread's frame `depth` (0 is the
    innermost visible one) at an unmapped page, as a frame freed under the walker
    would.  Returns the link to give back to _restore_frame_for_test.  GIL held: the
    thread is parked, so its frames stay put until restored."""
    global unmapped_page
    if unmapped_page == NULL:
        unmapped_page = <char *>mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    cdef PyThreadState *tstate = tb_first_thread(PyInterpreterState_Get())
    while tstate != NULL and tb_thread_ident(tstate) != ident:
        tstate = tb_next_thread(tstate)
    if tstate == NULL:
        raise ValueError("no thread %#x" % ident)
    cdef tb_frame *frame = tb_top_frame(tstate)
    while frame != NULL:
        if not tb_frame_is_hidden(frame, tb_frame_code(frame)):
            if depth == 0:
                break
            depth -= 1
        frame = frame.previous
    if frame == NULL:
        raise ValueError("thread %#x is not that deep" % ident)
    original = (<size_t>frame, <size_t>frame.previous)
    frame.previous = <tb_frame *>(unmapped_page + 64)
    return original


def _restore_frame_for_test(original):
    cdef tb_frame *frame = <tb_frame *><size_t>original[0]
    frame.previous = <tb_frame *><size_t>original[1]
