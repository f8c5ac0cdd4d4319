# Stage 1, the walk: what a dump is asked for (DumpRequest), and the loop over the
# interpreter's threads and each thread's frames that feeds the formatters
# (_format.pxi).  The main thread goes first; every thread is read and written
# under the fault guard (_guard.pxi).  Everything here is async-signal-safe: it
# reads interpreter memory through tbcore_python.h and keeps what it read in the
# dumper's preallocated memory.


cdef enum:
    MAX_THREADS_WALKED = 100000       # a guard against a corrupted thread list
    MAX_FRAMES_WALKED = 10000000      # and against a cycle in a frame chain
    FIND_MAIN_PASSES = 3              # searches for the main thread that a freed state may cut short


cdef unsigned long main_thread_ident = 0


cdef struct DumpRequest:
    PyInterpreterState *interp
    bint all_threads
    unsigned long current_ident  # pthread_self() of the dumping or signalled thread, 0 for none
    int skip                 # visible frames of the current thread left out
    const char *trigger
    bint gil_held            # by the dumping thread: the walk is exact
    unsigned long stuck_ident  # harakiri: the thread whose deadline passed, 0 for none
    long long stuck_ns         # and since when it is armed
    int gil_wait_ms            # a socket dump that waited this long for the GIL in vain; -1: none
    bint locals                # each frame's locals too (text and json)
    unsigned long excluded_ident  # a thread left out (the consistent thread), 0 for none
    const char *preamble       # faulthandler's format: what comes before the threads
    int max_threads            # faulthandler's format: threads shown before "..." (0: all)
    int native                 # C frames: NATIVE_NONE, NATIVE_BUSY or NATIVE_ALL (_native.pxi)
    bint symbolize             # their names, by dladdr1: never in a signal handler


cdef void request_init(DumpRequest *request, PyInterpreterState *interp, const char *trigger,
                       unsigned long current_ident, bint gil_held) noexcept nogil:
    # Signal safe: a dump of every thread; triggers change what is theirs.
    request.interp = interp
    request.all_threads = True
    request.current_ident = current_ident
    request.skip = 0
    request.trigger = trigger
    request.gil_held = gil_held
    request.stuck_ident = 0
    request.stuck_ns = 0
    request.gil_wait_ms = -1
    request.locals = False
    request.excluded_ident = handover.thread_ident  # tbfast's own Python thread, or 0
    request.preamble = b""
    request.max_threads = 0
    request.native = native_default
    request.symbolize = False


# ---------------------------------------------------------------- the thread loop

cdef void dump(Dumper *d, DumpRequest *request) noexcept nogil:
    """Signal safe: the whole dump into d.buf[d.start:d.length], in one walk: each
    thread's frames are read once, and the header, which counts the threads, is
    written last into the room kept in front of the body."""
    cdef PyThreadState *main = NULL
    cdef PyThreadState *holder = tb_gil_holder(request.interp)
    cdef long threads = 0, walked = 0
    cdef unsigned long holder_ident = 0  # read under the guard, as every thread's ident
    cdef timespec started
    if d.format == FORMAT_FAULTHANDLER:  # its own thread order and cap
        dump_faulthandler(d, request)
        return
    clock_gettime(CLOCK_REALTIME, &started)
    d.locals = request.locals and d.format != FORMAT_UWSGI
    states_start(d, request.interp)
    tb_fault_guard_ensure()
    # The main thread goes first, so a full buffer never drops it; finding it
    # reads only each thread state's ident.  Main's is the last state with its
    # ident: on 3.11 a thread that main is starting carries main's ident until it
    # runs.  A state freed under the search cuts it short, by a fault (the guard)
    # or a stale link: search again from the head, which no longer links it.
    cdef StepJob step
    cdef int search
    for search in range(FIND_MAIN_PASSES):
        main = NULL
        step.tstate = tb_first_thread(request.interp)
        walked = 0
        while step.tstate != NULL and walked < MAX_THREADS_WALKED and guarded_step(d, &step):
            if step.ident == main_thread_ident:
                main = step.tstate
            if step.tstate == holder:
                holder_ident = step.ident
            step.tstate = step.following
            walked += 1
        if step.tstate == NULL and main != NULL:
            break
    if main != NULL and wanted(main_thread_ident, request):
        prefetch_thread_top(d, main)
        threads += guarded_dump_thread(d, main, request, holder)
    step.tstate = tb_first_thread(request.interp)
    prefetch_thread_top(d, step.tstate)
    walked = 0
    d.python_tid_count = 0
    while step.tstate != NULL and walked < MAX_THREADS_WALKED and guarded_step(d, &step):
        prefetch_thread_top(d, step.following)
        if d.python_tid_count < PYTHON_TIDS:
            d.python_tids[d.python_tid_count] = step.native_id
            d.python_tid_count += 1
        if step.tstate != main and wanted(step.ident, request):
            threads += guarded_dump_thread(d, step.tstate, request, holder)
        if step.following == step.tstate:  # a freed state, its memory reused: a stale link
            break
        step.tstate = step.following
        walked += 1
    if request.native == NATIVE_ALL and d.format != FORMAT_UWSGI:
        dump_foreign_threads(d, request)
    states_end(d)
    emit_end(d)
    emit_header(d, request, threads, started, holder_ident)


cdef inline bint wanted(unsigned long ident, DumpRequest *request) noexcept nogil:
    # Signal safe.
    return (request.all_threads or ident == request.current_ident) and ident != request.excluded_ident


# ---------------------------------------------------------------- one thread's frames

cdef void record_frames(Dumper *d, PyThreadState *tstate, int skip) noexcept nogil:
    """Signal safe: the visible frames of a thread, innermost first, into d.frames;
    d.recorded and d.visible count them as they go, so a walk cut short by a fault
    keeps what it read."""
    cdef tb_frame *frame = tb_top_frame(tstate)
    cdef PyCodeObject *code
    cdef long walked = 0
    d.recorded = 0
    d.visible = 0
    while frame != NULL and walked < MAX_FRAMES_WALKED:
        walked += 1
        tb_prefetch_callers(frame)
        code = tb_frame_code(frame)
        if tb_frame_is_eval_shim(frame) and d.recorded > 0:
            d.frames[d.recorded - 1].ends_call = True
        if not tb_frame_is_hidden(frame, code):
            if skip > 0:
                skip -= 1
            else:
                if d.recorded < MAX_RECORDED_FRAMES:
                    d.frames[d.recorded].frame = frame
                    d.frames[d.recorded].code = code
                    d.frames[d.recorded].lasti = tb_frame_lasti_bytes(frame, code)
                    d.frames[d.recorded].ends_call = tb_frame_is_eval_entry(frame)
                    d.recorded += 1
                d.visible += 1
        frame = tb_previous_frame(frame)


# ---------------------------------------------------------------- each step under the fault guard (_guard.pxi)

cdef struct StepJob:
    PyThreadState *tstate
    PyThreadState *following
    unsigned long ident
    unsigned long native_id


cdef void step_job(void *argument) noexcept nogil:
    # Signal safe: reads a thread state's ident and its successor in the list.
    cdef StepJob *job = <StepJob *>argument
    job.ident = tb_thread_ident(job.tstate)
    job.native_id = tb_thread_native_id(job.tstate)
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
    read_status(job.d, job.tstate, job.tstate == job.holder,
                job.d.frames[0].code if job.d.recorded > 0 else NULL)


cdef void dump_thread_job(void *argument) noexcept nogil:
    # Signal safe: dump_thread, in the shape a guarded call takes.
    cdef ThreadJob *job = <ThreadJob *>argument
    dump_thread(job.d, job.tstate, job.request, job.holder)


cdef bint guarded_dump_thread(Dumper *d, PyThreadState *tstate, DumpRequest *request,
                              PyThreadState *holder) noexcept nogil:
    """Signal safe: one thread in two guarded steps.  A fault while walking keeps the
    frames read before it and ends the thread with `<unreadable frame>`; a fault while
    formatting replaces the frame being written by it.  A thread with no Python frame
    (a C thread that took the GIL) is shown too, as faulthandler shows it, unlike
    sys._current_frames(), if it is bound to a thread.  False for a thread left out,
    or one that faulted before its first frame."""
    cdef ThreadJob job
    job.d = d
    job.tstate = tstate
    job.request = request
    job.holder = holder
    status_unknown(d, tstate == holder)
    d.walk_faulted = tb_guarded_call(d - dumpers, record_job, &job) != 0
    if d.walk_faulted:
        d.visible = d.recorded + 1  # the frames read, and the one that could not be
    if d.visible == 0 and (tb_thread_ident(tstate) == 0 or tb_thread_native_id(tstate) == 0):
        return False  # a state bound to no thread (being made, or freed under the walk)
    d.thread_mark = d.length
    d.frame_mark = -1
    if tb_guarded_call(d - dumpers, dump_thread_job, &job) == 0:
        count_state(d)
        return True
    if d.frame_mark < 0:  # the fault came before the first frame: leave the thread out
        d.length = d.thread_mark
        return False
    count_state(d)
    d.length = d.frame_mark
    emit_unreadable(d, tstate, d.frame_index)
    d.threads_written += 1
    if d.format == FORMAT_JSON:
        emit_tail_str(d, b"]}")
    else:
        emit_str(d, b"\n")
    return True
