# The walk over every thread and frame, and the three formats it feeds.
# Everything here is async-signal-safe: it reads interpreter memory through
# tbcore_python.h, formats into the dumper's preallocated memory, and reads
# source lines with open()/read()/close().

from posix.fcntl cimport open as os_open, O_RDONLY, O_CLOEXEC
from posix.unistd cimport read, close, getpid
from posix.stat cimport stat, struct_stat as stat_t
from posix.time cimport CLOCK_REALTIME

cdef enum:
    MAX_THREADS_WALKED = 100000       # a guard against a corrupted thread list
    MAX_FRAMES_WALKED = 10000000      # and against a cycle in a frame chain
    FIND_MAIN_PASSES = 3              # searches for the main thread that a freed state may cut short

# Read once at import from tbfast._limits (see _tbcore.pyx).
cdef Py_ssize_t filename_limit, function_limit, source_limit, name_limit, context_limit
cdef int recursive_cutoff
cdef unsigned long main_thread_ident = 0

cdef const char *UWSGI_HEADER = b"*** uWSGI Python tracebacker output ***\n\n"


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


# ---------------------------------------------------------------- source lines

cdef bint is_space(char c) noexcept nogil:
    # Signal safe.
    return c == b' ' or c == b'\t' or c == b'\n' or c == b'\r' or c == b'\f' or c == b'\v'


cdef Py_ssize_t read_source_line(Dumper *d, PyObject *filename, int lineno, char *out) noexcept nogil:
    """Signal safe: line `lineno` of a file, stripped and bounded as linecache's would be
    by _fallback; -1 when there is none.  Lines are kept across dumps, each checked
    with stat() against the file's mtime and size, as traceback's checkcache does."""
    cdef Py_ssize_t path_length = encode_path(filename, d.path, PATH_BYTES)
    cdef stat_t status
    if lineno < 1 or path_length <= 0:
        return -1
    if d.path[0] == b'<':  # "<string>", "<frozen ...>": linecache has no file either
        return -1
    if stat(d.path, &status) != 0:
        return -1
    cdef unsigned long long key = source_key(d.path, path_length, lineno)
    cdef long long mtime_ns = status.st_mtim.tv_sec * 1000000000LL + status.st_mtim.tv_nsec
    cdef bint kept
    cdef SourceEntry *entry = source_entry(d, key, lineno, path_length, &kept)
    if kept and entry.mtime_ns == mtime_ns and entry.size == status.st_size:
        if entry.text_length > 0:
            memcpy(out, d.source_arena + entry.text_offset, entry.text_length)
        return entry.text_length
    cdef Py_ssize_t length = read_file_line(d, lineno, out)
    if d.source_arena_length + path_length + max(length, 0) > SOURCE_ARENA_SIZE:
        memset(d.sources, 0, SOURCE_CACHE_SIZE * sizeof(SourceEntry))  # full: start over
        d.source_arena_length = 0
    entry.key = key
    entry.line = lineno
    entry.mtime_ns = mtime_ns
    entry.size = status.st_size
    entry.path_offset = d.source_arena_length
    entry.path_length = path_length
    memcpy(d.source_arena + d.source_arena_length, d.path, path_length)
    d.source_arena_length += path_length
    entry.text_offset = d.source_arena_length
    entry.text_length = length
    if length > 0:
        memcpy(d.source_arena + d.source_arena_length, out, length)
        d.source_arena_length += length
    return length


cdef unsigned long long source_key(const char *path, Py_ssize_t length, int line) noexcept nogil:
    # Signal safe: FNV-1a of the path, mixed with the line; never 0 (empty).
    cdef unsigned long long key = 0xcbf29ce484222325ULL
    cdef Py_ssize_t i
    for i in range(length):
        key = (key ^ <unsigned char>path[i]) * 0x100000001b3ULL
    return (key ^ (<unsigned long long>line * 0x9E3779B97F4A7C15ULL)) | 1


cdef SourceEntry *source_entry(Dumper *d, unsigned long long key, int line,
                               Py_ssize_t path_length, bint *kept) noexcept nogil:
    """Signal safe: the cache entry of d.path's line `line` (its key is `key`), *kept
    True; else, *kept False, the entry to keep it in: an empty one near its home,
    or the home one.
    Open addressing, so two lines whose keys share a home do not evict each other
    (each dump would read both files again)."""
    cdef size_t home = key & (SOURCE_CACHE_SIZE - 1), i
    cdef SourceEntry *entry
    cdef SourceEntry *empty = NULL
    cdef int probe
    for probe in range(SOURCE_PROBES):
        i = (home + probe) & (SOURCE_CACHE_SIZE - 1)
        entry = &d.sources[i]
        if entry.key == 0:
            if empty == NULL:
                empty = entry
        elif (entry.key == key and entry.line == line and entry.path_length == path_length
                and memcmp(d.source_arena + entry.path_offset, d.path, path_length) == 0):
            kept[0] = True
            return entry
    kept[0] = False
    return empty if empty != NULL else &d.sources[home]


cdef Py_ssize_t read_file_line(Dumper *d, int lineno, char *out) noexcept nogil:
    """Signal safe: line `lineno` of the file at d.path, read with open()/read(),
    stripped and bounded; -1 when there is none."""
    cdef int fd = os_open(d.path, O_RDONLY | O_CLOEXEC)
    if fd < 0:
        return -1
    cdef int line = 1
    cdef Py_ssize_t got, length = 0, start, end
    cdef char *cursor
    cdef char *stop
    cdef char *newline
    cdef bint found = False, done = False
    while not done:
        got = read(fd, d.scratch, SCRATCH_SIZE)
        if got <= 0:
            break
        cursor = d.scratch
        stop = d.scratch + got
        while cursor < stop:
            newline = <char *>memchr(cursor, b'\n', stop - cursor)
            if line == lineno:
                found = True
                end = (newline - cursor) if newline != NULL else (stop - cursor)
                if length + end > STRING_BYTES:
                    end = STRING_BYTES - length
                memcpy(out + length, cursor, end)
                length += end
                if newline != NULL:
                    done = True
                    break
                cursor = stop
            elif newline == NULL:
                cursor = stop
            else:
                line += 1
                cursor = newline + 1
    close(fd)
    if not found:
        return -1
    start = 0
    while start < length and is_space(out[start]):
        start += 1
    while length > start and is_space(out[length - 1]):
        length -= 1
    if length == start:
        return -1
    length -= start
    if start:
        memmove(out, out + start, length)
    if length > source_limit:
        length = source_limit - 3
        while length > 0 and (<unsigned char>out[length] & 0xC0) == 0x80:
            length -= 1  # never end inside a UTF-8 sequence
        memcpy(out + length, b"...", 3)
        length += 3
    return length


# ---------------------------------------------------------------- one frame

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


cdef extern from "Python.h" nogil:
    int PyCode_Addr2Line(PyCodeObject *code, int addr)


# ---------------------------------------------------------------- one thread

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
        if not tb_frame_is_hidden(frame, code):
            if skip > 0:
                skip -= 1
            else:
                if d.recorded < MAX_RECORDED_FRAMES:
                    d.frames[d.recorded].frame = frame
                    d.frames[d.recorded].code = code
                    d.frames[d.recorded].lasti = tb_frame_lasti_bytes(frame, code)
                    d.recorded += 1
                d.visible += 1
        frame = tb_previous_frame(frame)


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


cdef void emit_thread_header(Dumper *d, PyThreadState *tstate, bint current, bint holds_gil,
                             long long stuck_ns) noexcept nogil:
    """Signal safe: the text format's thread line, and its context line."""
    cdef unsigned long ident = tb_thread_ident(tstate), native_id = tb_thread_native_id(tstate)
    cdef Py_ssize_t name = slot_copy(ident, False, d.string)
    emit_str(d, b"Current thread " if current else b"Thread ")
    emit_hex16(d, ident)
    emit_str(d, b" (")
    if name >= 0:
        emit_str(d, b'name "')
        emit_printable(d, d.string, name)
        emit_str(d, b'", ')
    emit_str(d, b"native id ")
    emit_decimal(d, native_id)
    if holds_gil:
        emit_str(d, b", holds the GIL")
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
    emit_str(d, b',"current":true' if current else b',"current":false')
    emit_str(d, b',"holds_gil":true' if holds_gil else b',"holds_gil":false')
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
    if d.full:
        d.dropped_threads += 1
        d.dropped_frames += total
        return
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
    if d.walk_faulted and d.format == FORMAT_UWSGI:  # uWSGI's order: the outermost first
        shown += emit_unreadable_frame(d, tstate, 0)
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
            emit_str(d, b"thread_id = ")
            emit_thread_name(d, tstate, False)
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
    if shown < total:
        d.dropped_threads += 1
        d.dropped_frames += total - shown
    d.threads_written += 1
    if d.format == FORMAT_JSON:
        emit_tail_str(d, b"]}")  # closed even when full: the reserve holds it
    else:
        emit_str(d, b"\n")  # all or nothing, like every emit


# ---------------------------------------------------------------- the dump

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


cdef void dump(Dumper *d, DumpRequest *request) noexcept nogil:
    """Signal safe: the whole dump into d.buf[d.start:d.length], in one walk: each
    thread's frames are read once, and the header, which counts the threads, is
    written last into the room kept in front of the body."""
    cdef PyThreadState *main = NULL
    cdef PyThreadState *holder = tb_gil_holder(request.interp)
    cdef long threads = 0, walked = 0
    cdef unsigned long holder_ident = 0  # read under the guard, as every thread's ident
    cdef timespec started
    if d.format == FORMAT_FAULTHANDLER:
        dump_faulthandler(d, request)
        return
    clock_gettime(CLOCK_REALTIME, &started)
    d.locals = request.locals and d.format != FORMAT_UWSGI
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
    while step.tstate != NULL and walked < MAX_THREADS_WALKED and guarded_step(d, &step):
        prefetch_thread_top(d, step.following)
        if step.tstate != main and wanted(step.ident, request):
            threads += guarded_dump_thread(d, step.tstate, request, holder)
        step.tstate = step.following
        walked += 1
    emit_end(d)
    emit_header(d, request, threads, started, holder_ident)


cdef inline bint wanted(unsigned long ident, DumpRequest *request) noexcept nogil:
    # Signal safe.
    return (request.all_threads or ident == request.current_ident) and ident != request.excluded_ident


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
