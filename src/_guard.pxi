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
#
# Here: the guard itself (C: the handler and the guarded call) and the signal mask
# of tbfast's native threads; the walk's guarded steps are in _walk.pxi.


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
