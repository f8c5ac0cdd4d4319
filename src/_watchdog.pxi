# Entry point: the harakiri watchdog, a native thread that has a thread whose
# deadline passed dumped (hand_to_python, _deliver.pxi), without the GIL, then
# takes the configured action; and faulthandler's dump_traceback_later timer.
#
# Arming writes a deadline into the thread's slot: no syscall, no allocation.
# The watchdog sleeps on a futex word until the nearest deadline.  Each arm bumps
# the word, so a watchdog that scanned before the arm sees the word moved and
# rescans at once; only a deadline nearer than the watchdog's planned wake-up
# costs the arming thread a FUTEX_WAKE.  A disarm writes nothing the watchdog
# must hear of: it wakes at the old deadline, finds nothing, and sleeps on.


cdef enum:
    ACTION_LOG = 0             # also the kinds of the records for the Python side (KIND_SIGNAL)
    ACTION_RAISE = 1
    ACTION_ABORT = 2

cdef long long NEVER = 0x7FFFFFFFFFFFFFFF
cdef long long RETRY_NS = 1000000


cdef struct Watchdog:
    bint running
    int stopping               # set by watchdog_stop, atomically: see watchdog_loop
    unsigned int wake_word
    long long next_wake_ns     # published after each scan; arms compare against it
    pthread_t thread
    PyInterpreterState *interp
    Sink dump_sink             # fd -1: no fd destination
    int dump_format
    int native                   # C frames in its dumps: NATIVE_NONE, _BUSY or _ALL
    long long repeat_ns        # log again this often while still stuck
    long long grace_ns         # between the dump and the raise or abort
    # dump_traceback_later: one process-wide timer, as in faulthandler
    long long later_deadline_ns
    long long later_interval_ns  # 0: once
    Sink later_sink
    bint later_exit
    int later_format
    int later_max_threads
    char later_preamble[64]      # faulthandler's "Timeout (0:00:01)!\n"

cdef Watchdog watchdog


cdef long long monotonic_ns() noexcept nogil:
    # Signal safe: clock_gettime, read from the vDSO without a syscall; the coarse
    # clock (a tick, a few ms) is cheaper still and plenty for request deadlines.
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now)
    return now.tv_sec * 1000000000LL + now.tv_nsec


cdef void watchdog_wake_if_later_than(long long deadline_ns) noexcept nogil:
    # Signal safe: the arming side of the protocol above.
    tb_bump(&watchdog.wake_word)
    if deadline_ns < tb_load_ll(&watchdog.next_wake_ns):
        tb_futex_wake(&watchdog.wake_word)


cdef void dump_expired(ThreadSlot *slot, long long stuck_ns) noexcept nogil:
    """GIL-free: every thread, the stuck one marked, to the fd destination, the spool
    and the logger."""
    cdef DumpRequest request
    request_init(&request, watchdog.interp, b"harakiri", 0, False)
    if watchdog.native != NATIVE_NONE:
        request.native = watchdog.native
    request.symbolize = True  # its own thread, in no handler
    request.stuck_ident = slot.ident
    request.stuck_ns = stuck_ns
    hand_to_python(&request, watchdog.dump_format, &watchdog.dump_sink, slot.ident, stuck_ns,
                   ACTION_LOG)


cdef long long check_slot(ThreadSlot *slot, long long now) noexcept nogil:
    """GIL-free: handles one thread's deadline; returns when it next needs a look."""
    cdef unsigned int arm_seq = tb_load_uint(&slot.arm_seq)
    cdef long long deadline = tb_load_ll(&slot.deadline_ns)
    if tb_load_uint(&slot.arm_seq) != arm_seq:
        return now + RETRY_NS  # armed again while we read: look at it once it settled
    if deadline == 0:
        return NEVER
    if now < deadline:
        return deadline
    cdef long long stuck = now - slot.armed_ns
    if slot.reported_seq != arm_seq:  # first sight of this expiry
        slot.reported_seq = arm_seq
        slot.action_done = False
        slot.next_report_ns = now + watchdog.repeat_ns
        slot.action_at_ns = now + watchdog.grace_ns
        dump_expired(slot, stuck)
    elif slot.action == ACTION_LOG and now >= slot.next_report_ns:
        slot.next_report_ns = now + watchdog.repeat_ns
        dump_expired(slot, stuck)
    if slot.action != ACTION_LOG and not slot.action_done and now >= slot.action_at_ns:
        slot.action_done = True
        if slot.action == ACTION_ABORT:
            kill(getpid(), SIGKILL)  # as uWSGI's harakiri: the server respawns the worker
        if to_python.notify_fd >= 0:
            notify_python(slot.ident, stuck, ACTION_RAISE, -1, 0)
    if slot.action == ACTION_LOG:
        return slot.next_report_ns
    return NEVER if slot.action_done else slot.action_at_ns


cdef long long check_later(long long now) noexcept nogil:
    """GIL-free: the faulthandler-style process-wide timer."""
    cdef long long deadline = tb_load_ll(&watchdog.later_deadline_ns)
    cdef DumpRequest request
    if deadline == 0:
        return NEVER
    if now < deadline:
        return deadline
    request_init(&request, watchdog.interp, b"timeout", 0, False)
    request.preamble = watchdog.later_preamble
    request.max_threads = watchdog.later_max_threads
    dump_to_sink(&watchdog.later_sink, &request, watchdog.later_format, SIGNAL_WRITE_MS)
    if watchdog.later_exit:
        _exit(1)
    if watchdog.later_interval_ns:
        tb_store_ll(&watchdog.later_deadline_ns, now + watchdog.later_interval_ns)
        return now + watchdog.later_interval_ns
    tb_store_ll(&watchdog.later_deadline_ns, 0)
    return NEVER


cdef void *watchdog_loop(void *unused) noexcept nogil:
    """GIL-free: the watchdog thread; scan, publish the next wake-up, sleep until it or an arm."""
    cdef unsigned int seen
    cdef long long now, nearest, due
    cdef int i
    block_async_signals()
    tb_name_self(b"tbfast-watchdog")  # so that native dumps leave tbfast's threads out
    while True:
        # The word before the flag: a stop that bumped the word after this load makes
        # the futex wait return at once; one that bumped it before has set the flag.
        seen = tb_load_uint(&watchdog.wake_word)
        if tb_load_int(&watchdog.stopping):
            return NULL
        now = monotonic_ns()
        nearest = check_later(now)
        for i in range(SLOT_COUNT):
            if thread_slots[i].ident > DELETED_IDENT:
                due = check_slot(&thread_slots[i], now)
                if due < nearest:
                    nearest = due
        tb_store_ll(&watchdog.next_wake_ns, nearest)
        tb_futex_wait(&watchdog.wake_word, seen, -1 if nearest == NEVER else max(nearest - now, 0))


cdef int watchdog_start() except -1:
    """Starts the watchdog thread once.  GIL held."""
    if watchdog.running:
        return 0
    watchdog.interp = PyInterpreterState_Get()
    watchdog.stopping = False
    watchdog.next_wake_ns = NEVER
    cdef int error = pthread_create(&watchdog.thread, NULL, watchdog_loop, NULL)
    if error:
        raise OSError(error, "tbfast: cannot start the watchdog thread")
    watchdog.running = True
    return 0


cdef bint watchdog_stop() noexcept:
    """Stops the watchdog thread.  GIL held (released to wait)."""
    if not watchdog.running:
        return False
    tb_store_int(&watchdog.stopping, True)  # before the bump: see watchdog_loop
    with nogil:
        tb_bump(&watchdog.wake_word)
        tb_futex_wake(&watchdog.wake_word)
        pthread_join(watchdog.thread, NULL)
    watchdog.running = False
    return True


cdef void watchdog_after_fork_in_child() noexcept nogil:
    """Signal safe: in the child of fork(), the watchdog thread stayed in the parent, and so did
    its pipe to the Python side (tbfast/watchdog.py starts both anew at the next arm
    or configure); other threads' deadlines belong to threads that are not here.
    The dump_traceback_later timer is dropped, as faulthandler's is."""
    cdef unsigned long me = tb_thread_self()
    cdef int i
    watchdog.running = False
    watchdog.stopping = False
    watchdog.next_wake_ns = NEVER
    to_python.notify_fd = -1
    to_python.mailboxes_held = 0
    watchdog.later_deadline_ns = 0
    for i in range(SLOT_COUNT):
        if thread_slots[i].ident > DELETED_IDENT and thread_slots[i].ident != me:
            thread_slots[i].deadline_ns = 0
