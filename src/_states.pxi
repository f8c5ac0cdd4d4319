# Stage 1, what the walk learns of a thread beyond its frames: its state (running,
# sleeping in which system call, idle in a threading wait, holding or waiting for
# the GIL, collecting garbage), counted for the dump's header; and, for a thread
# that threading never named (a C thread that took the GIL), the kernel's name.
# Async-signal-safe: /proc is read with open, read and close into the caller's
# memory.  docs/formats.md says how each state is decided.


cdef enum:
    COMM_BYTES = 64                  # a kernel thread name is at most 15 bytes
    PROC_PATH_BYTES = 64


cdef Py_ssize_t task_path(char *path, unsigned long native_id, const char *leaf) noexcept nogil:
    # Signal safe: /proc/self/task/TID/<leaf> into path (PROC_PATH_BYTES), NUL-ended; its length.
    cdef Py_ssize_t length = 16 + format_unsigned(path + 16, native_id)
    cdef Py_ssize_t leaf_length = strnlen(leaf, 16)
    memcpy(path, b"/proc/self/task/", 16)
    path[length] = b'/'
    memcpy(path + length + 1, leaf, leaf_length)
    path[length + 1 + leaf_length] = 0
    return length + 1 + leaf_length


cdef Py_ssize_t read_task_file(unsigned long native_id, const char *leaf, char *out,
                               Py_ssize_t size) noexcept nogil:
    """Signal safe: the first `size` bytes of /proc/self/task/TID/<leaf> (one read:
    these files are made whole at their first read); -1 when it cannot be read (the
    thread has exited, no /proc)."""
    cdef char path[PROC_PATH_BYTES]
    if native_id == 0:
        return -1
    task_path(path, native_id, leaf)
    cdef int fd = os_open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0:
        return -1
    cdef Py_ssize_t got = read(fd, out, size)
    close(fd)
    return got


cdef Py_ssize_t read_kernel_name(unsigned long native_id, char *name) noexcept nogil:
    """Signal safe: the kernel's name of a thread (what pthread_setname_np set, or
    the process's), into name (COMM_BYTES) without its newline; -1 for none."""
    cdef Py_ssize_t got = read_task_file(native_id, b"comm", name, COMM_BYTES)
    if got > 0 and name[got - 1] == b'\n':
        got -= 1
    return got if got > 0 else -1


cdef extern from "<sys/syscall.h>" nogil:
    enum: SYS_futex


cdef enum:
    SYSCALL_TABLE = 512         # tbfast._limits.SYSCALL_TABLE

# The names of the system calls a sleeping thread is shown in, by number
# (tbfast._limits.SYSCALL_NAMES, set at import); NULL for the others.
cdef const char *syscall_names[SYSCALL_TABLE]
# Which of them a signal handler cuts short (tbfast._limits.CUT_SHORT_BY_A_HANDLER).
cdef bint syscall_cut_short[SYSCALL_TABLE]


cdef const char *syscall_name(long number) noexcept nogil:
    # Signal safe.
    return syscall_names[number] if 0 <= number < SYSCALL_TABLE else NULL


cdef enum:
    # A thread's state, one each, as the header counts them.
    STATE_UNKNOWN = 0       # /proc could not say (the thread exited meanwhile)
    STATE_RUNNING = 1       # on a CPU, or ready to run (the kernel's R)
    STATE_SLEEPING = 2      # blocked, in `syscall` when it is known
    STATE_IDLE = 3          # parked in one of threading's waits (IDLE_WAITS)
    STATE_WAITING_GIL = 4   # asked for the GIL and waits for it
    STATE_KINDS = 5
    SYSCALL_BYTES = 256     # "nr arg1 ... arg6 sp pc" is at most about 170


cdef struct ThreadStatus:
    int state                # STATE_*
    int kernel               # what the kernel said: STATE_RUNNING, _SLEEPING or _UNKNOWN
    long syscall             # the system call it sleeps in; -1: none, or not read
    bint holds_gil
    bint waiting_gil
    bint in_gc               # it runs the garbage collector


cdef struct DumpStates:
    uintptr_t gil_low        # tb_gil_wait_range
    uintptr_t gil_high
    unsigned long self_tid   # the dumping thread, running by definition
    bint collecting          # the interpreter was in a collection when the dump began
    int task_dir             # /proc/self/task, opened at the dump's first read; -1: not yet, -2: none
    long counts[STATE_KINDS]
    ThreadStatus thread      # the thread being dumped


cdef DumpStates dump_states[DUMPER_COUNT]

# The code objects of threading's waits, where a parked thread's innermost frame is
# (Condition.wait serves Event, Semaphore, Barrier and queue.Queue; Thread.join):
# tbfast._limits.IDLE_WAITS, set at import.
cdef PyCodeObject *idle_waits[4]
cdef int idle_wait_count = 0


cdef void states_start(Dumper *d, PyInterpreterState *interp) noexcept nogil:
    # Signal safe: what every thread's state is read against, once a dump.
    cdef DumpStates *states = &dump_states[d - dumpers]
    tb_gil_wait_range(interp, &states.gil_low, &states.gil_high)
    states.self_tid = tb_gettid()
    states.collecting = tb_gc_collecting(interp) != 0
    states.task_dir = -1
    memset(states.counts, 0, sizeof(states.counts))


cdef void states_end(Dumper *d) noexcept nogil:
    # Signal safe: closes what states_start's dump opened.
    cdef DumpStates *states = &dump_states[d - dumpers]
    if states.task_dir >= 0:
        close(states.task_dir)
    states.task_dir = -1


cdef bint is_idle_wait(PyCodeObject *code) noexcept nogil:
    # Signal safe: by identity, no memory read.
    cdef int i
    for i in range(idle_wait_count):
        if code == idle_waits[i]:
            return True
    return False


cdef const char *parse_long(const char *text, const char *end, int base, long long *value) noexcept nogil:
    """Signal safe: a number (decimal with an optional '-', or hex after 0x) at text;
    past it, or NULL when there is none."""
    cdef bint negative = False
    cdef const char *start
    cdef int digit
    value[0] = 0
    if base == 16 and end - text > 2 and text[0] == c'0' and text[1] == c'x':
        text += 2
    elif text < end and text[0] == c'-':
        negative = True
        text += 1
    start = text
    while text < end:
        if c'0' <= text[0] <= c'9':
            digit = text[0] - c'0'
        elif base == 16 and c'a' <= text[0] <= c'f':
            digit = text[0] - c'a' + 10
        else:
            break
        value[0] = value[0] * base + digit
        text += 1
    if negative:
        value[0] = -value[0]
    return text if text > start else NULL


cdef void read_kernel_state(DumpStates *states, unsigned long native_id, ThreadStatus *status) noexcept nogil:
    """Signal safe: running or sleeping, and in which system call, from one read of
    /proc/self/task/TID/syscall: `running`, or the call's number (-1: none) and its
    arguments; a futex inside the GIL's words means waiting for the GIL."""
    cdef char text[SYSCALL_BYTES]
    cdef char path[PROC_PATH_BYTES]
    cdef Py_ssize_t got, length
    cdef long long number = 0, address = 0
    cdef const char *at
    if states.task_dir == -1:
        states.task_dir = os_open(b"/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if states.task_dir < 0:
            states.task_dir = -2
    if states.task_dir < 0 or native_id == 0:
        return
    length = format_unsigned(path, native_id)
    memcpy(path + length, b"/syscall\0", 9)
    cdef int fd = openat(states.task_dir, path, O_RDONLY | O_CLOEXEC, 0)
    if fd < 0:
        return
    got = read(fd, text, SYSCALL_BYTES)
    close(fd)
    if got >= 7 and memcmp(text, b"running", 7) == 0:
        status.kernel = STATE_RUNNING
        return
    at = parse_long(text, text + got, 10, &number) if got > 0 else NULL
    if at == NULL:
        return
    status.kernel = STATE_SLEEPING
    status.syscall = number
    if number == SYS_futex and at < text + got and at[0] == c' ' and \
            parse_long(at + 1, text + got, 16, &address) != NULL:
        if states.gil_low <= <uintptr_t>address < states.gil_high:
            status.waiting_gil = True


cdef void read_status(Dumper *d, PyThreadState *tstate, bint holds_gil, PyCodeObject *innermost) noexcept nogil:
    """Signal safe: the state of the thread being dumped, into dump_states[].thread.
    Idle is decided from memory alone, saving the read of /proc that every other
    thread costs (docs/performance.md): a thread that does not hold the GIL, whose
    innermost frame is one of threading's waits, and (3.15) that asks for no GIL."""
    cdef DumpStates *states = &dump_states[d - dumpers]
    cdef ThreadStatus *status = &states.thread
    cdef unsigned long native_id = tb_thread_native_id(tstate)
    status.holds_gil = holds_gil
    status.waiting_gil = not holds_gil and tb_thread_requests_gil(tstate)
    status.in_gc = holds_gil and states.collecting
    status.syscall = -1
    status.kernel = STATE_UNKNOWN
    if native_id == states.self_tid:
        status.kernel = STATE_RUNNING  # it is dumping (a signal handler, the API's caller)
    elif holds_gil or status.waiting_gil or innermost == NULL or not is_idle_wait(innermost):
        read_kernel_state(states, native_id, status)
        status.waiting_gil = status.waiting_gil and not holds_gil
    else:
        status.state = STATE_IDLE
        return
    status.state = STATE_WAITING_GIL if status.waiting_gil else status.kernel


cdef void status_unknown(Dumper *d, bint holds_gil) noexcept nogil:
    # Signal safe: the state of a thread whose walk faulted before it was read.
    cdef ThreadStatus *status = &dump_states[d - dumpers].thread
    status.state = STATE_UNKNOWN
    status.kernel = STATE_UNKNOWN
    status.syscall = -1
    status.holds_gil = holds_gil
    status.waiting_gil = False
    status.in_gc = False


cdef inline ThreadStatus *thread_status(Dumper *d) noexcept nogil:
    # Signal safe: the state read_status found for the thread being dumped.
    return &dump_states[d - dumpers].thread


cdef void count_state(Dumper *d) noexcept nogil:
    # Signal safe: the thread just dumped, into the header's counts.
    cdef DumpStates *states = &dump_states[d - dumpers]
    states.counts[states.thread.state] += 1


cdef const char *STATE_NAMES[STATE_KINDS]
STATE_NAMES[:] = [NULL, b"running", b"sleeping", b"idle", b"waiting_gil"]
