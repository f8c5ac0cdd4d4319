# Stage 3, the formatters: text, uwsgi and json, all fed by the one walk
# (_walk.pxi).  Escaping (control characters in the text formats, JSON strings),
# one frame (formatted once per code position and dump, then copied), one thread
# with its header line or object, and the dump's header and end.  Locals have
# their own file (_locals.pxi).  Everything here is async-signal-safe: it
# formats into the dumper's preallocated memory.


cdef const char *UWSGI_HEADER = b"*** uWSGI Python tracebacker output ***\n\n"

cdef enum:
    THREAD_ID_BYTES = 12 + 4 * SLOT_TEXT  # "thread_id = " and a name, each byte escaped at worst as \xNN


# ---------------------------------------------------------------- escaping

cdef void emit_printable(Dumper *d, const char *data, Py_ssize_t n) noexcept nogil:
    """Signal safe: a field of the text and uwsgi formats (UTF-8), its control characters
    escaped as Python's repr() spells them, as _fallback.printable does: C0 and DEL
    (\\n, \\r, \\t, \\x1b), C1 (\\x85), and the line and paragraph separators
    (\\u2028), so that no name, context or path can end a line, fake one, or reach a
    terminal as an escape sequence."""
    cdef Py_ssize_t i = 0, start = 0, size, length
    cdef unsigned char c
    cdef char escape[6]
    while i < n:
        c = <unsigned char>data[i]
        if 0x20 <= c < 0x7f or (c > 0x7f and c != 0xC2 and c != 0xE2):
            i += 1
            continue
        size = 1
        if c == b'\n' or c == b'\r' or c == b'\t':
            escape[0] = b'\\'
            escape[1] = b'n' if c == b'\n' else b'r' if c == b'\r' else b't'
            length = 2
        elif c < 0x20 or c == 0x7f:
            length = hex_escape(escape, c)
        elif c == 0xC2 and i + 1 < n and 0x80 <= <unsigned char>data[i + 1] <= 0x9F:
            length = hex_escape(escape, <unsigned char>data[i + 1])
            size = 2
        elif (c == 0xE2 and i + 2 < n and <unsigned char>data[i + 1] == 0x80
                and (<unsigned char>data[i + 2] == 0xA8 or <unsigned char>data[i + 2] == 0xA9)):
            memcpy(escape, b"\\u2028" if <unsigned char>data[i + 2] == 0xA8 else b"\\u2029", 6)
            length = 6
            size = 3
        else:
            i += 1
            continue
        emit(d, data + start, i - start)
        emit(d, escape, length)
        i += size
        start = i
    emit(d, data + start, n - start)


cdef inline Py_ssize_t hex_escape(char *escape, unsigned char c) noexcept nogil:
    # Signal safe: \\xNN; its length.
    escape[0] = b'\\'
    escape[1] = b'x'
    escape[2] = b"0123456789abcdef"[c >> 4]
    escape[3] = b"0123456789abcdef"[c & 15]
    return 4


cdef void emit_bounded(Dumper *d, PyObject *text, Py_ssize_t limit) noexcept nogil:
    # Signal safe: a str as the text formats print it.
    cdef Py_ssize_t n = encode_bounded(text, limit, d.string)
    if n < 0:
        emit_str(d, b"???")
    else:
        emit_printable(d, d.string, n)


cdef void emit_bounded_json(Dumper *d, PyObject *text, Py_ssize_t limit) noexcept nogil:
    # Signal safe: a str as a JSON string.
    cdef Py_ssize_t n = encode_bounded(text, limit, d.string)
    if n < 0:
        emit_str(d, b"null")
    else:
        emit_json_string(d, d.string, n)


cdef void emit_json_string(Dumper *d, const char *data, Py_ssize_t n) noexcept nogil:
    """Signal safe: a JSON string as json.dumps(ensure_ascii=False) writes it."""
    cdef Py_ssize_t i, start = 0
    cdef unsigned char c
    cdef char escape[6]
    emit_str(d, b'"')
    for i in range(n):
        c = <unsigned char>data[i]
        if c >= 0x20 and c != b'"' and c != b'\\':
            continue
        emit(d, data + start, i - start)
        start = i + 1
        if c == b'"':
            emit_str(d, b'\\"')
        elif c == b'\\':
            emit_str(d, b'\\\\')
        elif c == b'\n':
            emit_str(d, b'\\n')
        elif c == b'\r':
            emit_str(d, b'\\r')
        elif c == b'\t':
            emit_str(d, b'\\t')
        elif c == 8:
            emit_str(d, b'\\b')
        elif c == 12:
            emit_str(d, b'\\f')
        else:
            memcpy(escape, b"\\u00", 4)
            escape[4] = b"0123456789abcdef"[c >> 4]
            escape[5] = b"0123456789abcdef"[c & 15]
            emit(d, escape, 6)
    emit(d, data + start, n - start)
    emit_str(d, b'"')


# ---------------------------------------------------------------- one frame

cdef void format_frame(Dumper *d, PyCodeObject *code, int line) noexcept nogil:
    """Signal safe: one frame in the dump's format, without what depends on the thread."""
    cdef Py_ssize_t source = read_source_line(d, code.co_filename, line, d.string)
    # The source sits in d.string until written; move it past what the file name needs.
    cdef char *source_text = d.string + STRING_BYTES // 2
    if source > STRING_BYTES // 2:
        source = STRING_BYTES // 2
    if source > 0:
        memcpy(source_text, d.string, source)
    if d.format == FORMAT_TEXT:
        emit_str(d, b'  File "')
        emit_bounded(d, code.co_filename, filename_limit)
        emit_str(d, b'", line ')
        emit_decimal(d, line)
        emit_str(d, b" in ")
        emit_bounded(d, code.co_name, function_limit)
        emit_str(d, b"\n")
        if source > 0:
            emit_str(d, b"    ")
            emit_printable(d, source_text, source)
            emit_str(d, b"\n")
    elif d.format == FORMAT_UWSGI:
        emit_str(d, b" filename = ")
        emit_bounded(d, code.co_filename, filename_limit)
        emit_str(d, b" lineno = ")
        emit_decimal(d, line)
        emit_str(d, b" function = ")
        emit_bounded(d, code.co_name, function_limit)
        emit_str(d, b" line = ")
        if source > 0:
            emit_printable(d, source_text, source)
        emit_str(d, b"\n")
    else:
        emit_str(d, b'{"file":')
        emit_bounded_json(d, code.co_filename, filename_limit)
        emit_str(d, b',"line":')
        emit_decimal(d, line)
        emit_str(d, b',"function":')
        emit_bounded_json(d, code.co_name, function_limit)
        emit_str(d, b',"source":')
        if source > 0:
            emit_json_string(d, source_text, source)
        else:
            emit_str(d, b"null")
        emit_str(d, b"}")


cdef FrameCacheEntry *frame_entry(Dumper *d, PyCodeObject *code, int lasti) noexcept nogil:
    """Signal safe: the cached line (and formatted text) of a code position in this dump.
    Deep recursion and threads parked in the same place cost one lookup each."""
    cdef size_t key = ((<size_t>code >> 4) ^ (<size_t>lasti * 0x9E3779B1UL)) & (FRAME_CACHE_SIZE - 1)
    cdef FrameCacheEntry *entry = &d.cache[key]
    cdef int line
    if entry.generation != d.generation or entry.code != code or entry.lasti != lasti:
        line = PyCode_Addr2Line(code, lasti)  # first: a fault here leaves the entry as it was
        entry.generation = d.generation
        entry.code = code
        entry.lasti = lasti
        entry.line = line
        entry.chunk_length = -1
    return entry


cdef inline void emit_frame(Dumper *d, FrameCacheEntry *entry) noexcept nogil:
    # Signal safe: copies the formatted frame, inline: this is most frames' only work.
    if entry.chunk_length >= 0 and d.length + entry.chunk_length <= d.capacity:
        # The room both sides have after them: TAIL_RESERVE, and the arena's end is
        # followed by the rest of the dumper's memory.
        tb_copy_chunk(d.buf + d.length, d.arena + entry.chunk_offset, entry.chunk_length)
        d.length += entry.chunk_length
        # Writing runs through the buffer faster than the caches bring it in.
        tb_prefetch_write(d.buf + d.length + OUTPUT_PREFETCH)
    else:
        emit_first_time(d, entry)


cdef void emit_first_time(Dumper *d, FrameCacheEntry *entry) noexcept nogil:
    # Signal safe: formats a frame and keeps its text for the frames at the same place.
    cdef Py_ssize_t start = d.length
    if entry.chunk_length >= 0:  # kept, but the buffer is full
        emit(d, d.arena + entry.chunk_offset, entry.chunk_length)
        return
    format_frame(d, entry.code, entry.line)
    if not d.full and d.arena_length + (d.length - start) <= ARENA_SIZE:
        entry.chunk_offset = d.arena_length
        entry.chunk_length = d.length - start
        memcpy(d.arena + d.arena_length, d.buf + start, entry.chunk_length)
        d.arena_length += entry.chunk_length


# ---------------------------------------------------------------- one thread

cdef bint same_place(FrameCacheEntry *a, FrameCacheEntry *b) noexcept nogil:
    # Signal safe: what traceback compares (file, line, name), by object identity first.
    return b != NULL and a.line == b.line and (a.code == b.code or (
        a.code.co_filename == b.code.co_filename and a.code.co_name == b.code.co_name))


cdef void emit_repeated(Dumper *d, long count) noexcept nogil:
    # Signal safe: traceback's "[Previous line repeated N more times]".
    count -= recursive_cutoff
    emit_str(d, b"  [Previous line repeated ")
    emit_decimal(d, count)
    emit_str(d, b" more times]\n" if count > 1 else b" more time]\n")


cdef void emit_thread_name(Dumper *d, PyThreadState *tstate, bint json) noexcept nogil:
    # Signal safe: the name threading knows, from the slot table.
    cdef Py_ssize_t n = slot_copy(tb_thread_ident(tstate), False, d.string)
    if json:
        if n < 0:
            emit_str(d, b"null")
        else:
            emit_json_string(d, d.string, n)
    elif n < 0:
        emit_decimal(d, <long long>tb_thread_ident(tstate))
    else:
        emit_printable(d, d.string, n)


cdef void emit_seconds(Dumper *d, long long nanoseconds) noexcept nogil:
    # Signal safe: 3.021 for 3021000000.
    cdef char digits[24]
    cdef long long millis = nanoseconds // 1000000
    emit_decimal(d, millis // 1000)
    emit_str(d, b".")
    digits[0] = <char>(48 + millis % 1000 // 100)
    digits[1] = <char>(48 + millis % 100 // 10)
    digits[2] = <char>(48 + millis % 10)
    emit(d, digits, 3)


cdef void emit_syscall_name(Dumper *d, long number) noexcept nogil:
    # Signal safe: "futex", or "syscall 435" for a call the table does not name.
    cdef const char *name = syscall_name(number)
    if name != NULL:
        emit_str(d, name)
    else:
        emit_str(d, b"syscall ")
        emit_decimal(d, number)


cdef void emit_state_words(Dumper *d, ThreadStatus *status) noexcept nogil:
    """Signal safe: a text heading's state: ", holds the GIL" or ", waiting for the
    GIL", ", in GC", ", idle", then what the kernel said: ", running", ", sleeping
    in futex" (", sleeping" outside a system call); nothing for what is unknown."""
    if status.holds_gil:
        emit_str(d, b", holds the GIL")
    elif status.waiting_gil:
        emit_str(d, b", waiting for the GIL")
    if status.in_gc:
        emit_str(d, b", in GC")
    if status.state == STATE_IDLE:
        emit_str(d, b", idle")
    if status.kernel == STATE_RUNNING:
        emit_str(d, b", running")
    elif status.kernel == STATE_SLEEPING:
        emit_str(d, b", sleeping")
        if status.syscall >= 0:
            emit_str(d, b" in ")
            emit_syscall_name(d, status.syscall)


cdef void emit_state_json(Dumper *d, ThreadStatus *status) noexcept nogil:
    """Signal safe: a JSON thread's state keys: "state", "syscall", "waiting_gil",
    "in_gc" (holds_gil is written apart, where it always was)."""
    emit_str(d, b',"state":')
    if STATE_NAMES[status.state] == NULL:
        emit_str(d, b"null")
    else:
        emit_str(d, b'"')
        emit_str(d, STATE_NAMES[status.state])
        emit_str(d, b'"')
    emit_str(d, b',"syscall":')
    if status.kernel == STATE_SLEEPING and status.syscall >= 0:
        emit_str(d, b'"')
        emit_syscall_name(d, status.syscall)
        emit_str(d, b'"')
    else:
        emit_str(d, b"null")
    emit_str(d, b',"waiting_gil":true' if status.waiting_gil else b',"waiting_gil":false')
    emit_str(d, b',"in_gc":true' if status.in_gc else b',"in_gc":false')


cdef void emit_thread_header(Dumper *d, PyThreadState *tstate, bint current, bint holds_gil,
                             long long stuck_ns) noexcept nogil:
    """Signal safe: the text format's thread line, and its context line."""
    cdef unsigned long ident = tb_thread_ident(tstate), native_id = tb_thread_native_id(tstate)
    cdef Py_ssize_t name = slot_copy(ident, False, d.string)
    cdef bint kernel = name < 0
    if kernel:  # a thread threading never named: the kernel's name, marked as such
        name = read_kernel_name(native_id, d.string)
    emit_str(d, b"Current thread " if current else b"Thread ")
    emit_hex16(d, ident)
    emit_str(d, b" (")
    if name >= 0:
        emit_str(d, b'name "')
        emit_printable(d, d.string, name)
        emit_str(d, b'" (kernel), ' if kernel else b'", ')
    emit_str(d, b"native id ")
    emit_decimal(d, native_id)
    emit_state_words(d, thread_status(d))
    if stuck_ns:
        emit_str(d, b", stuck for ")
        emit_seconds(d, stuck_ns)
        emit_str(d, b" s")
    emit_str(d, b") (most recent call first):\n")
    cdef Py_ssize_t context = slot_copy(ident, True, d.string)
    if context >= 0:
        emit_str(d, b"  Context: ")
        emit_printable(d, d.string, context)
        emit_str(d, b"\n")


cdef void emit_thread_json(Dumper *d, PyThreadState *tstate, bint current, bint holds_gil,
                           long long stuck_ns) noexcept nogil:
    """Signal safe: a JSON thread object up to its open frames array."""
    cdef unsigned long ident = tb_thread_ident(tstate), native_id = tb_thread_native_id(tstate)
    emit_str(d, b'{"ident":')
    emit_decimal(d, <long long>ident)
    emit_str(d, b',"native_id":')
    emit_decimal(d, native_id)
    emit_str(d, b',"name":')
    emit_thread_name(d, tstate, True)
    emit_str(d, b',"kernel_name":')
    cdef Py_ssize_t kernel_name = -1
    if slot_copy(ident, False, d.string) < 0:  # only for a thread threading never named
        kernel_name = read_kernel_name(native_id, d.string)
    if kernel_name < 0:
        emit_str(d, b"null")
    else:
        emit_json_string(d, d.string, kernel_name)
    emit_str(d, b',"current":true' if current else b',"current":false')
    emit_str(d, b',"holds_gil":true' if holds_gil else b',"holds_gil":false')
    emit_state_json(d, thread_status(d))
    emit_str(d, b',"context":')
    cdef Py_ssize_t context = slot_copy(ident, True, d.string)
    if context < 0:
        emit_str(d, b"null")
    else:
        emit_json_string(d, d.string, context)
    if stuck_ns:  # only in harakiri dumps, on the stuck thread
        emit_str(d, b',"stuck_seconds":')
        emit_seconds(d, stuck_ns)
    emit_str(d, b',"frames":[')


cdef void emit_unreadable(Dumper *d, PyThreadState *tstate, Py_ssize_t index) noexcept nogil:
    # Signal safe: the place of a frame that could not be read, as a frame line.
    if d.format == FORMAT_TEXT:
        emit_str(d, b"  <unreadable frame>\n")
    elif d.format == FORMAT_UWSGI:
        emit_str(d, b"thread_id = ")
        emit_thread_name(d, tstate, False)
        emit_str(d, b" filename = <unreadable frame> lineno = 0 function = ? line = \n")
    else:
        if index:
            emit_str(d, b",")
        emit_str(d, b'{"file":"<unreadable frame>","line":0,"function":null,"source":null}')


cdef void emit_no_frame(Dumper *d, const char *thread_id, Py_ssize_t thread_id_length) noexcept nogil:
    """Signal safe: what a thread with no Python frame shows in place of its frames:
    faulthandler's `<no Python frame>`; in uwsgi, a frame line of that file name (as
    `<unreadable frame>`), so uWSGI's parsers read it as one; in json, no frame."""
    if d.format == FORMAT_TEXT:
        emit_str(d, b"  <no Python frame>\n")
    elif d.format == FORMAT_UWSGI:
        emit(d, thread_id, thread_id_length)
        emit_str(d, b" filename = <no Python frame> lineno = 0 function = ? line = \n")


cdef long emit_unreadable_frame(Dumper *d, PyThreadState *tstate, Py_ssize_t index) noexcept nogil:
    # Signal safe: emit_unreadable, all or nothing; 1 if it is in the buffer.
    cdef Py_ssize_t mark = d.length
    emit_unreadable(d, tstate, index)
    if d.full:
        d.length = mark
        return 0
    return 1


cdef void dump_thread(Dumper *d, PyThreadState *tstate, DumpRequest *request,
                      PyThreadState *holder) noexcept nogil:
    """Signal safe: one thread, from the frames record_frames left in d, in the dump's
    format.  When the buffer fills, what did not fit is rolled back and counted for
    the truncation marker.  A walk that faulted ends with `<unreadable frame>`."""
    cdef bint current = request.current_ident != 0 and tb_thread_ident(tstate) == request.current_ident
    cdef long total = d.visible
    cdef Py_ssize_t recorded = d.recorded
    cdef Py_ssize_t i, mark = d.length, shown = 0
    cdef FrameCacheEntry *entry
    cdef FrameCacheEntry *previous = NULL
    cdef long count = 0, represented
    cdef long long stuck_ns = request.stuck_ns if tb_thread_ident(tstate) == request.stuck_ident else 0
    cdef char thread_id[THREAD_ID_BYTES]
    cdef Dumper prefix
    if d.full:
        d.dropped_threads += 1
        d.dropped_frames += total
        return
    prefix.length = 0
    if d.format == FORMAT_UWSGI:
        # Every uwsgi line starts with the thread's name, escaped: once per thread.
        prefix.buf = thread_id
        prefix.capacity = THREAD_ID_BYTES
        prefix.length = 0
        prefix.full = False
        prefix.string = d.string
        emit_str(&prefix, b"thread_id = ")
        emit_thread_name(&prefix, tstate, False)
    if d.format == FORMAT_JSON:
        if d.threads_written:
            emit_str(d, b",")
        emit_thread_json(d, tstate, current, tstate == holder, stuck_ns)
    elif d.format == FORMAT_TEXT:
        emit_thread_header(d, tstate, current, tstate == holder, stuck_ns)
    if d.full:  # not even the thread's heading fits
        d.length = mark
        d.dropped_threads += 1
        d.dropped_frames += total
        return
    if d.format != FORMAT_UWSGI:
        native_begin(d, tstate, request, tstate == holder, current)
    if d.walk_faulted and d.format == FORMAT_UWSGI:  # uWSGI's order: the outermost first
        shown += emit_unreadable_frame(d, tstate, 0)
    if total == 0:
        mark = d.length
        emit_no_frame(d, thread_id, prefix.length)
        if d.full:
            d.length = mark
    for i in range(recorded):
        # uWSGI prints the oldest frame first; the others the innermost first.
        entry = frame_entry(d, d.frames[recorded - 1 - i if d.format == FORMAT_UWSGI else i].code,
                            d.frames[recorded - 1 - i if d.format == FORMAT_UWSGI else i].lasti)
        mark = d.length
        d.frame_mark = mark
        d.frame_index = i
        represented = 1  # frames this step puts in the output
        if d.format == FORMAT_TEXT:
            represented = 0
            if d.native_count > 0 and (i == 0 or d.frames[i - 1].ends_call):
                native_until_python(d, request)
            if not same_place(entry, previous):
                if count > recursive_cutoff:
                    emit_repeated(d, count)
                    represented = count - recursive_cutoff
                previous = entry
                count = 0
            count += 1
            if count <= recursive_cutoff:
                emit_frame(d, entry)
                if d.locals:
                    emit_locals(d, d.frames[i].frame, entry.code)
                represented += 1
        elif d.format == FORMAT_UWSGI:
            emit(d, thread_id, prefix.length)
            emit_frame(d, entry)
        else:
            if i:
                emit_str(d, b",")
            emit_frame(d, entry)
            if d.locals and not d.full:
                d.length -= 1  # reopens the frame's object, which its cached text closes
                emit_str(d, b',"locals":{')
                emit_locals(d, d.frames[i].frame, entry.code)
                emit_str(d, b"}}")
        if d.full:
            d.length = mark
            break
        shown += represented
    if d.format == FORMAT_TEXT and count > recursive_cutoff and not d.full:
        mark = d.length
        emit_repeated(d, count)
        if d.full:
            d.length = mark
        else:
            shown += count - recursive_cutoff
    if d.walk_faulted and d.format != FORMAT_UWSGI and shown == total - 1:
        shown += emit_unreadable_frame(d, tstate, recorded)  # after every frame read
    if d.format != FORMAT_UWSGI and not d.full:
        native_rest(d, request)
    if shown < total:
        d.dropped_threads += 1
        d.dropped_frames += total - shown
    d.threads_written += 1
    if d.format == FORMAT_JSON:
        emit_tail_str(d, b"]}")  # closed even when full: the reserve holds it
    else:
        emit_str(d, b"\n")  # all or nothing, like every emit


# ---------------------------------------------------------------- the dump's header and end

cdef void emit_timestamp(Dumper *d, timespec now) noexcept nogil:
    """Signal safe: a UTC time as 2026-11-21T23:59:01.123456Z, without gmtime()."""
    cdef long long days = now.tv_sec // 86400, seconds = now.tv_sec % 86400
    # Howard Hinnant's civil_from_days.
    cdef long long z = days + 719468
    cdef long long era = z // 146097
    cdef long long doe = z - era * 146097
    cdef long long yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    cdef long long doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    cdef long long mp = (5 * doy + 2) // 153
    cdef long long day = doy - (153 * mp + 2) // 5 + 1
    cdef long long month = mp + 3 if mp < 10 else mp - 9
    cdef long long year = yoe + era * 400 + (1 if month <= 2 else 0)
    cdef char text[27]
    cdef long long fields[7]
    cdef int widths[7]
    cdef const char *separators = b"--T::."
    fields[:] = [year, month, day, seconds // 3600, seconds % 3600 // 60, seconds % 60, now.tv_nsec // 1000]
    widths[:] = [4, 2, 2, 2, 2, 2, 6]
    cdef int i, j, n = 0
    for i in range(7):
        for j in range(widths[i]):
            text[n + widths[i] - 1 - j] = <char>(48 + fields[i] % 10)
            fields[i] //= 10
        n += widths[i]
        text[n] = separators[i] if i < 6 else b'Z'
        n += 1
    emit(d, text, n)


cdef void emit_state_counts(Dumper *header, DumpStates *states, bint json) noexcept nogil:
    """Signal safe: the threads in each state, the header's ` running=1 sleeping=2
    idle=60 waiting_gil=1` (json: `,"running":1,...`); each thread counts once, a
    thread whose state is unknown nowhere."""
    cdef int kind
    for kind in range(STATE_RUNNING, STATE_KINDS):
        emit_str(header, b',"' if json else b" ")
        emit_str(header, STATE_NAMES[kind])
        emit_str(header, b'":' if json else b"=")
        emit_decimal(header, states.counts[kind])


cdef void emit_header(Dumper *d, DumpRequest *request, long threads, timespec started,
                      unsigned long holder_ident) noexcept nogil:
    """Signal safe: formats the header apart, then puts it right in front of the body.
    `holder_ident` is the GIL holder's (0: none, or it left the thread list), named
    when a consistent dump fell back to this one."""
    cdef char text[HEADER_RESERVE]
    cdef Dumper header
    header.buf = text
    header.capacity = HEADER_RESERVE
    header.length = 0
    header.full = False
    if d.format == FORMAT_UWSGI:
        emit_str(&header, UWSGI_HEADER)
    elif d.format == FORMAT_TEXT:
        emit_str(&header, b"tbfast dump: pid=")
        emit_decimal(&header, getpid())
        emit_str(&header, b" time=")
        emit_timestamp(&header, started)
        emit_str(&header, b" trigger=")
        emit_str(&header, request.trigger)
        emit_str(&header, b" mode=gil threads=" if request.gil_held else b" mode=gil-free threads=")
        emit_decimal(&header, threads)
        emit_state_counts(&header, &dump_states[d - dumpers], False)
        if request.gil_wait_ms >= 0:
            emit_str(&header, b" gil_wait_ms=")
            emit_decimal(&header, request.gil_wait_ms)
            emit_str(&header, b" gil_holder=")
            if holder_ident == 0:
                emit_str(&header, b"none")
            else:
                emit_hex16(&header, holder_ident)
        emit_str(&header, b"\n")
    else:
        emit_str(&header, b'{"tbfast":1,"pid":')
        emit_decimal(&header, getpid())
        emit_str(&header, b',"time":"')
        emit_timestamp(&header, started)
        emit_str(&header, b'","trigger":"')
        emit_str(&header, request.trigger)
        emit_str(&header, b'","mode":"gil"' if request.gil_held else b'","mode":"gil-free"')
        emit_state_counts(&header, &dump_states[d - dumpers], True)
        if request.gil_wait_ms >= 0:
            emit_str(&header, b',"gil_wait_ms":')
            emit_decimal(&header, request.gil_wait_ms)
            emit_str(&header, b',"gil_holder":')
            if holder_ident == 0:
                emit_str(&header, b"null")
            else:
                emit_decimal(&header, <long long>holder_ident)
        emit_str(&header, b',"threads":[')
    d.start = d.start - header.length
    memcpy(d.buf + d.start, text, header.length)


cdef void emit_end(Dumper *d) noexcept nogil:
    """Signal safe: the truncation marker, and JSON's closing."""
    cdef char number[24]
    if d.format == FORMAT_JSON:
        if d.dropped_frames == 0 and d.dropped_threads == 0:
            emit_tail_str(d, b'],"truncated":null}\n')
            return
        emit_tail_str(d, b'],"truncated":{"frames":')
        emit_tail(d, number, format_unsigned(number, d.dropped_frames))
        emit_tail_str(d, b',"threads":')
        emit_tail(d, number, format_unsigned(number, d.dropped_threads))
        emit_tail_str(d, b',"buffer_size":')
        emit_tail(d, number, format_unsigned(number, d.capacity))
        emit_tail_str(d, b"}}\n")
    elif d.dropped_frames or d.dropped_threads:
        emit_tail_str(d, b"*** tbfast: buffer full, ")
        emit_tail(d, number, format_unsigned(number, d.dropped_frames))
        emit_tail_str(d, b" frames in ")
        emit_tail(d, number, format_unsigned(number, d.dropped_threads))
        emit_tail_str(d, b" threads not shown (buffer_size=")
        emit_tail(d, number, format_unsigned(number, d.capacity))
        emit_tail_str(d, b") ***\n")
