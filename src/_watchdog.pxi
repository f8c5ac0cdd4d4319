# The harakiri watchdog: a native thread that dumps the stack of a thread whose
# deadline passed, without the GIL, then takes the configured action.
#
# Arming writes a deadline into the thread's slot: no syscall, no allocation.
# The watchdog sleeps on a futex word until the nearest deadline.  Each arm bumps
# the word, so a watchdog that scanned before the arm sees the word moved and
# rescans at once; only a deadline nearer than the watchdog's planned wake-up
# costs the arming thread a FUTEX_WAKE.  A disarm writes nothing the watchdog
# must hear of: it wakes at the old deadline, finds nothing, and sleeps on.

from posix.signal cimport kill
from libc.signal cimport SIGKILL
from posix.fcntl cimport O_CREAT, O_EXCL, O_WRONLY

cdef extern from *:
    """
    #include <linux/futex.h>
    #include <sys/syscall.h>
    #include <limits.h>
    /* Wait while *word == expected, at most timeout_ns (< 0: no limit). */
    static inline void tb_futex_wait(unsigned int *word, unsigned int expected, long long timeout_ns) {
        struct timespec timeout;
        timeout.tv_sec = timeout_ns / 1000000000LL;
        timeout.tv_nsec = timeout_ns % 1000000000LL;
        syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, timeout_ns < 0 ? NULL : &timeout, NULL, 0);
    }
    static inline void tb_futex_wake(unsigned int *word) {
        syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    }
    static inline unsigned int tb_bump(unsigned int *word) {
        return __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST);
    }
    static inline unsigned int tb_unbump(unsigned int *word) {
        return __atomic_sub_fetch(word, 1, __ATOMIC_SEQ_CST);
    }
    static inline unsigned int tb_load_uint(unsigned int *word) {
        return __atomic_load_n(word, __ATOMIC_SEQ_CST);
    }
    static inline long long tb_load_ll(long long *value) {
        return __atomic_load_n(value, __ATOMIC_ACQUIRE);
    }
    static inline void tb_store_ll(long long *value, long long new_value) {
        __atomic_store_n(value, new_value, __ATOMIC_RELEASE);
    }
    static inline unsigned long long tb_bump_ull(unsigned long long *value) {
        return __atomic_add_fetch(value, 1, __ATOMIC_SEQ_CST);
    }
    """
    void tb_futex_wait(unsigned int *word, unsigned int expected, long long timeout_ns) nogil
    void tb_futex_wake(unsigned int *word) nogil
    unsigned int tb_bump(unsigned int *word) nogil
    unsigned int tb_unbump(unsigned int *word) nogil
    unsigned int tb_load_uint(unsigned int *word) nogil
    long long tb_load_ll(long long *value) nogil
    void tb_store_ll(long long *value, long long new_value) nogil
    unsigned long long tb_bump_ull(unsigned long long *value) nogil

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char *path, int flags, int mode)

cdef extern from "<stdio.h>" nogil:
    int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)

cdef extern from "<unistd.h>" nogil:
    int unlinkat(int dirfd, const char *path, int flags)

cdef enum:
    MAILBOXES = 2              # dumps held for the logger at most; the rest go to the fd only
    ACTION_LOG = 0
    ACTION_RAISE = 1
    ACTION_ABORT = 2
    KIND_SIGNAL = 2            # a record for the Python side: a signal dump to log (0 and 1 are actions)
    SPOOL_NAME_BYTES = 80

ctypedef unsigned long long NotifyRecord[5]  # as tbfast._limits.NOTIFY_RECORD reads it
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
    int notify_fd              # the Python side's pipe: expiries to log or raise; -1: none
    unsigned int mailboxes_held
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


cdef struct Spool:
    # Dumps kept as files until the Python side has shipped them: written GIL-free,
    # so a worker killed while its GIL was stuck loses nothing (tbfast/spool.py).
    int dir_fd                 # -1: no spool
    unsigned int max_count
    unsigned int count         # dump files: those found at configure, + written, - shipped
    unsigned long long seq     # the last file's number; starts at configure's wall clock

cdef Spool spool
spool.dir_fd = -1
cdef const char *SPOOL_FULL = b"tbfast: spool full, this dump is not spooled\n"
cdef const char *SPOOL_FAILED = b"tbfast: spool write failed, this dump is not spooled\n"


cdef extern from "<time.h>" nogil:
    enum: CLOCK_MONOTONIC_COARSE


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


cdef void notify_python(unsigned long ident, long long stuck_ns, int kind, int mailbox,
                        unsigned long long spooled) noexcept nogil:
    """Signal safe: one record of 40 bytes (< PIPE_BUF, so written whole or not at all)
    to the Python side (tbfast/watchdog.py), which logs, or raises in the thread,
    once Python can run.  `mailbox` is a dumper holding the dump for it, or -1;
    `spooled` the number of the dump's spool file, or 0."""
    cdef NotifyRecord record
    record[0] = ident
    record[1] = <unsigned long long>stuck_ns
    record[2] = <unsigned long long>kind
    record[3] = <unsigned long long>(mailbox + 1)
    record[4] = spooled
    if write(watchdog.notify_fd, <char *>record, sizeof(record)) != sizeof(record) and mailbox >= 0:
        release_mailbox(mailbox)  # the Python side is not reading: keep the dumper free


cdef Py_ssize_t spool_name(char *out, const char *prefix, unsigned long long seq,
                           const char *suffix) noexcept nogil:
    # Signal safe: "<prefix><pid>.<seq><suffix>", NUL-terminated, in SPOOL_NAME_BYTES.
    cdef Py_ssize_t n = strlen(prefix)
    memcpy(out, prefix, n)
    n += format_unsigned(out + n, <unsigned long long>getpid())
    out[n] = b'.'
    n += 1
    n += format_unsigned(out + n, seq)
    memcpy(out + n, suffix, strlen(suffix) + 1)
    return n


cdef unsigned long long spool_write(Dumper *d, DumpRequest *request, Sink *notice) noexcept nogil:
    """Signal safe: the dump, in JSON, to <spool>/tmp.<pid>.<seq>, then renamed to
    <spool>/dump.<pid>.<seq>.json, so a file under that name is always whole.
    Returns seq, or 0 when not spooled (none configured, full, or a failed write:
    then one line says so to the notice sink, unless its fd is -1)."""
    cdef char temporary[SPOOL_NAME_BYTES]
    cdef char final[SPOOL_NAME_BYTES]
    cdef unsigned long long seq
    cdef int fd, error
    if spool.dir_fd < 0:
        return 0
    if tb_bump(&spool.count) > spool.max_count:
        tb_unbump(&spool.count)
        if notice.fd >= 0:
            write_to_sink(notice, SPOOL_FULL, strlen(SPOOL_FULL), SIGNAL_WRITE_MS)
        return 0
    seq = tb_bump_ull(&spool.seq)
    spool_name(temporary, b"tmp.", seq, b"")
    spool_name(final, b"dump.", seq, b".json")
    dumper_start(d, FORMAT_JSON)
    dump(d, request)
    fd = openat(spool.dir_fd, temporary, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o600)
    error = fd < 0
    if not error:
        error = write_dump(d, fd, SIGNAL_WRITE_MS) != 0
        error = close(fd) != 0 or error
        error = error or renameat(spool.dir_fd, temporary, spool.dir_fd, final) != 0
        if error:
            unlinkat(spool.dir_fd, temporary, 0)
    if error:
        tb_unbump(&spool.count)
        if notice.fd >= 0:
            write_to_sink(notice, SPOOL_FAILED, strlen(SPOOL_FAILED), SIGNAL_WRITE_MS)
        return 0
    return seq


cdef void hand_to_python(DumpRequest *request, int format, Sink *sink, unsigned long ident,
                         long long stuck_ns, int kind) noexcept nogil:
    """Signal safe: the shared tail of harakiri and signal dumps: spooled first (the
    copy that survives a kill), then in `format` to the sink (fd -1: none), then kept for
    the `tbfast` logger while fewer than MAILBOXES wait, and announced to it."""
    cdef Dumper *d = dumper_acquire()
    cdef int mailbox = -1
    cdef unsigned long long spooled = 0
    if d == NULL:
        if sink.fd >= 0:
            write_to_sink(sink, DUMP_SKIPPED, strlen(DUMP_SKIPPED), SIGNAL_WRITE_MS)
        if watchdog.notify_fd >= 0:
            notify_python(ident, stuck_ns, kind, -1, 0)
        return
    spooled = spool_write(d, request, sink)
    if sink.fd >= 0 or watchdog.notify_fd >= 0:
        if not spooled or format != FORMAT_JSON:  # else the JSON walk is in d already
            dumper_start(d, format)
            dump(d, request)
    if sink.fd >= 0:
        write_dump_to_sink(d, sink, SIGNAL_WRITE_MS)
    if watchdog.notify_fd >= 0:
        if tb_bump(&watchdog.mailboxes_held) <= MAILBOXES:
            mailbox = d - dumpers
        else:
            tb_unbump(&watchdog.mailboxes_held)
        notify_python(ident, stuck_ns, kind, mailbox, spooled)
    if mailbox < 0:
        tb_release(&d.busy)


cdef void release_mailbox(int mailbox) noexcept nogil:
    # Signal safe.
    tb_unbump(&watchdog.mailboxes_held)
    tb_release(&dumpers[mailbox].busy)


cdef void dump_expired(ThreadSlot *slot, long long stuck_ns) noexcept nogil:
    """GIL-free: every thread, the stuck one marked, to the fd destination, the spool
    and the logger."""
    cdef DumpRequest request
    request_init(&request, watchdog.interp, b"harakiri", 0, False)
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
        if watchdog.notify_fd >= 0:
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


cdef extern from "<unistd.h>" nogil:
    void _exit(int status)


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
    watchdog.notify_fd = -1
    watchdog.mailboxes_held = 0
    watchdog.later_deadline_ns = 0
    for i in range(SLOT_COUNT):
        if thread_slots[i].ident > DELETED_IDENT and thread_slots[i].ident != me:
            thread_slots[i].deadline_ns = 0
