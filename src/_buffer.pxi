# The preallocated dump buffers ("dumpers"), what appends to them, and the
# bounded UTF-8 reading of a str that every stage uses.  Every function here is
# async-signal-safe: no allocation, no locks, no Python API; only memcpy-style
# work.  Each dump takes a dumper, walks, formats into it, and delivers it.


cdef enum:
    FORMAT_TEXT = 0
    FORMAT_UWSGI = 1
    FORMAT_JSON = 2
    FORMAT_FAULTHANDLER = 3
    DUMPER_COUNT = 6             # dumps that may run at once (signal, socket and 2 waiting
                                 # for their clients, watchdog, API)
    FRAME_CACHE_SIZE = 4096      # power of two
    ARENA_SIZE = 512 * 1024      # formatted frames reused within one dump
    SCRATCH_SIZE = 64 * 1024     # source file reads
    PATH_BYTES = 4096
    STRING_BYTES = 4096          # one bounded string, before JSON escaping
    MAX_RECORDED_FRAMES = 65536  # frames of one thread kept for formatting
    SOURCE_CACHE_SIZE = 1024     # source lines kept across dumps; power of two
    SOURCE_PROBES = 8            # entries a line may sit in, from its home on
    SOURCE_ARENA_SIZE = 256 * 1024
    TAIL_RESERVE = 512           # kept free for the truncation marker and JSON's closing
    HEADER_RESERVE = 384         # the header goes in front of the body once it is known
    OUTPUT_PREFETCH = 4096       # how far ahead of the writing the buffer is loaded
    NATIVE_DEPTH = 64            # C frames kept of one thread (_native.pxi)
    PYTHON_TIDS = 4096           # kernel ids of the Python threads a dump walked (_native.pxi)

cdef struct FrameCacheEntry:
    unsigned int generation
    PyCodeObject *code
    int lasti
    int line
    Py_ssize_t chunk_offset
    Py_ssize_t chunk_length      # -1 until formatted

cdef struct SourceEntry:
    unsigned long long key       # of the file's path and the line; 0 when empty
    int line
    long long mtime_ns           # the file as it was read: a stat that differs reads it again
    long long size
    Py_ssize_t path_offset       # in the dumper's source arena
    Py_ssize_t path_length
    Py_ssize_t text_offset
    Py_ssize_t text_length       # -1: the file has no such line


cdef struct RecordedFrame:
    tb_frame *frame              # for its locals, when the dump shows them
    PyCodeObject *code
    int lasti
    bint ends_call               # the outermost frame of one C call of the interpreter (_native.pxi)

cdef struct Dumper:
    int busy
    int format
    bint full
    char *buf
    Py_ssize_t capacity          # usable bytes, TAIL_RESERVE excluded
    Py_ssize_t start             # the dump is buf[start:length]
    Py_ssize_t length
    long threads_written         # in this dump, for JSON's commas
    unsigned int generation      # bumps per dump, so the frame cache never needs clearing
    FrameCacheEntry *cache
    char *arena
    Py_ssize_t arena_length
    char *scratch
    SourceEntry *sources
    char *source_arena
    Py_ssize_t source_arena_length
    RecordedFrame *frames
    void **native                # a thread's C return addresses, innermost first (_native.pxi)
    int native_count             # in d.native for the thread being dumped; < 0: none
    int native_next              # the next of them to show
    unsigned long *python_tids   # the kernel ids of the Python threads walked, for
    Py_ssize_t python_tid_count  # the threads Python never knew (dump_foreign_threads)
    char *path
    char *string
    long dropped_frames
    long dropped_threads
    bint locals                  # this dump shows each frame's locals
    Py_ssize_t mapped_size
    # the thread being dumped, for the fault guard (_guard.pxi)
    Py_ssize_t recorded          # frames in d.frames
    long visible                 # frames the thread shows, recorded or not
    bint walk_faulted
    Py_ssize_t thread_mark       # d.length when the thread began
    Py_ssize_t frame_mark        # d.length when the frame being written began; -1 before
    Py_ssize_t frame_index

cdef Dumper dumpers[DUMPER_COUNT]

# The bounds every stage applies, read once at import from tbfast._limits (see _tbcore.pyx).
cdef Py_ssize_t filename_limit, function_limit, source_limit, name_limit, context_limit
cdef int recursive_cutoff


cdef Py_ssize_t dumper_size(Py_ssize_t buffer_size) noexcept nogil:
    # Setup only (GIL held): the bytes one dumper maps.
    return (buffer_size + TAIL_RESERVE + FRAME_CACHE_SIZE * sizeof(FrameCacheEntry) + ARENA_SIZE
            + SCRATCH_SIZE + SOURCE_CACHE_SIZE * sizeof(SourceEntry) + SOURCE_ARENA_SIZE
            + MAX_RECORDED_FRAMES * sizeof(RecordedFrame) + PATH_BYTES + STRING_BYTES
            + NATIVE_DEPTH * sizeof(void *) + PYTHON_TIDS * sizeof(unsigned long))


cdef int dumper_allocate(Dumper *d, Py_ssize_t buffer_size) noexcept nogil:
    """Maps one dumper's memory; untouched pages cost nothing.  Setup only: GIL held."""
    cdef Py_ssize_t size = dumper_size(buffer_size)
    cdef char *memory = <char *>mmap(NULL, size, PROT_READ | PROT_WRITE,
                                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if <void *>memory == MAP_FAILED:
        return -1
    d.mapped_size = size
    d.buf = memory
    d.capacity = buffer_size
    memory += buffer_size + TAIL_RESERVE
    d.cache = <FrameCacheEntry *>memory
    memory += FRAME_CACHE_SIZE * sizeof(FrameCacheEntry)
    d.arena = memory
    memory += ARENA_SIZE
    d.scratch = memory
    memory += SCRATCH_SIZE
    d.sources = <SourceEntry *>memory  # zero pages: every entry empty
    memory += SOURCE_CACHE_SIZE * sizeof(SourceEntry)
    d.source_arena = memory
    d.source_arena_length = 0
    memory += SOURCE_ARENA_SIZE
    d.frames = <RecordedFrame *>memory
    memory += MAX_RECORDED_FRAMES * sizeof(RecordedFrame)
    d.path = memory
    memory += PATH_BYTES
    d.string = memory
    memory += STRING_BYTES
    d.native = <void **>memory
    memory += NATIVE_DEPTH * sizeof(void *)
    d.python_tids = <unsigned long *>memory
    return 0


cdef void dumper_free(Dumper *d) noexcept nogil:
    # Setup only (GIL held), on a dumper no dump is using.
    if d.buf != NULL:
        munmap(d.buf, d.mapped_size)
        d.buf = NULL


cdef void dumpers_after_fork_in_child() noexcept nogil:
    # Signal safe: a dump that another thread was taking at fork() is not going on here.
    cdef int i
    for i in range(DUMPER_COUNT):
        dumpers[i].busy = 0


cdef Dumper *dumper_acquire() noexcept nogil:
    # Signal safe: a lock-free pick of an idle dumper, or NULL when all are busy.
    cdef int i
    for i in range(DUMPER_COUNT):
        if dumpers[i].buf != NULL and tb_try_acquire(&dumpers[i].busy):
            return &dumpers[i]
    return NULL


cdef void dumper_start(Dumper *d, int format) noexcept nogil:
    # Signal safe: resets counters only.
    d.format = format
    d.full = False
    d.start = HEADER_RESERVE
    d.length = HEADER_RESERVE
    d.threads_written = 0
    d.arena_length = 0
    d.dropped_frames = 0
    d.dropped_threads = 0
    d.generation += 1
    if d.generation == 0:  # entries of generation 0 are the never-used ones
        memset(d.cache, 0, FRAME_CACHE_SIZE * sizeof(FrameCacheEntry))
        d.generation = 1


cdef inline void emit(Dumper *d, const char *data, Py_ssize_t n) noexcept nogil:
    # Signal safe: appends, or marks the buffer full and drops the bytes.
    if d.full:
        return
    if d.length + n > d.capacity:
        d.full = True
        return
    memcpy(d.buf + d.length, data, n)
    d.length += n


cdef inline void emit_str(Dumper *d, const char *text) noexcept nogil:
    # Signal safe.
    emit(d, text, strlen(text))


cdef void emit_tail(Dumper *d, const char *data, Py_ssize_t n) noexcept nogil:
    # Signal safe: writes into the reserve kept for the closing lines.
    if d.length + n > d.capacity + TAIL_RESERVE:
        n = d.capacity + TAIL_RESERVE - d.length
    memcpy(d.buf + d.length, data, n)
    d.length += n


cdef inline void emit_tail_str(Dumper *d, const char *text) noexcept nogil:
    # Signal safe.
    emit_tail(d, text, strlen(text))


cdef Py_ssize_t format_unsigned(char *out, unsigned long long value) noexcept nogil:
    # Signal safe: decimal digits, returns their count.
    cdef char digits[24]
    cdef int n = 0, i
    while True:
        digits[n] = <char>(48 + value % 10)
        n += 1
        value //= 10
        if value == 0:
            break
    for i in range(n):
        out[i] = digits[n - 1 - i]
    return n


cdef inline void emit_decimal(Dumper *d, long long value) noexcept nogil:
    # Signal safe.
    cdef char digits[24]
    cdef Py_ssize_t n = 0
    if value < 0:
        digits[0] = b'-'
        n = 1
        value = -value
    n += format_unsigned(digits + n, <unsigned long long>value)
    emit(d, digits, n)


cdef void emit_hex16(Dumper *d, unsigned long value) noexcept nogil:
    # Signal safe: 0x and 16 lowercase digits, as faulthandler prints thread ids.
    cdef char out[18]
    cdef int i
    out[0] = b'0'
    out[1] = b'x'
    for i in range(16):
        out[17 - i] = b"0123456789abcdef"[value & 15]
        value >>= 4
    emit(d, out, 18)


cdef Py_ssize_t encode_bounded(PyObject *text, Py_ssize_t limit, char *out) noexcept nogil:
    """Signal safe: UTF-8 of a str read from its raw data, lone surrogates as \\udcXX,
    cut to `limit` bytes with '...' (as _fallback.bounded).  -1 if not a str."""
    if text == NULL or not PyUnicode_Check(text):
        return -1
    cdef Py_ssize_t count = PyUnicode_GET_LENGTH(text), i, n = 0, fits = 0
    if PyUnicode_IS_COMPACT_ASCII(text):
        if count <= limit:
            memcpy(out, PyUnicode_DATA(text), count)
            return count
        memcpy(out, PyUnicode_DATA(text), limit - 3)
        memcpy(out + limit - 3, b"...", 3)
        return limit
    cdef int kind = PyUnicode_KIND(text)
    cdef void *data = PyUnicode_DATA(text)
    cdef unsigned int c
    cdef char unit[6]
    cdef int size, j
    for i in range(count):
        c = PyUnicode_READ(kind, data, i)
        if c < 0x80:
            unit[0] = <char>c
            size = 1
        elif c < 0x800:
            unit[0] = <char>(0xC0 | (c >> 6))
            unit[1] = <char>(0x80 | (c & 0x3F))
            size = 2
        elif 0xD800 <= c <= 0xDFFF:
            # backslashreplace: six ASCII bytes, each its own unit
            size = 0
            for j in range(6):
                unit[0] = b"\\udcXX"[j] if j < 2 else b"0123456789abcdef"[(c >> (4 * (5 - j))) & 15]
                if n + 1 > limit:
                    memcpy(out + fits, b"...", 3)
                    return fits + 3
                out[n] = unit[0]
                n += 1
                if n <= limit - 3:
                    fits = n
            continue
        elif c < 0x10000:
            unit[0] = <char>(0xE0 | (c >> 12))
            unit[1] = <char>(0x80 | ((c >> 6) & 0x3F))
            unit[2] = <char>(0x80 | (c & 0x3F))
            size = 3
        else:
            unit[0] = <char>(0xF0 | (c >> 18))
            unit[1] = <char>(0x80 | ((c >> 12) & 0x3F))
            unit[2] = <char>(0x80 | ((c >> 6) & 0x3F))
            unit[3] = <char>(0x80 | (c & 0x3F))
            size = 4
        if n + size > limit:
            memcpy(out + fits, b"...", 3)
            return fits + 3
        memcpy(out + n, unit, size)
        n += size
        if n <= limit - 3:
            fits = n
    return n


cdef Py_ssize_t encode_path(PyObject *text, char *out, Py_ssize_t capacity) noexcept nogil:
    """Signal safe: os.fsencode() of a str into a NUL-terminated path: UTF-8, with
    surrogateescape's lone surrogates turned back into their bytes.  -1 if it can't."""
    if text == NULL or not PyUnicode_Check(text):
        return -1
    cdef Py_ssize_t count = PyUnicode_GET_LENGTH(text), i, n = 0
    cdef int kind = PyUnicode_KIND(text)
    cdef void *data = PyUnicode_DATA(text)
    cdef unsigned int c
    for i in range(count):
        if n + 4 >= capacity:
            return -1
        c = PyUnicode_READ(kind, data, i)
        if c == 0:
            return -1
        if c < 0x80:
            out[n] = <char>c
            n += 1
        elif 0xDC80 <= c <= 0xDCFF:
            out[n] = <char>(c - 0xDC00)
            n += 1
        elif 0xD800 <= c <= 0xDFFF:
            return -1
        elif c < 0x800:
            out[n] = <char>(0xC0 | (c >> 6))
            out[n + 1] = <char>(0x80 | (c & 0x3F))
            n += 2
        elif c < 0x10000:
            out[n] = <char>(0xE0 | (c >> 12))
            out[n + 1] = <char>(0x80 | ((c >> 6) & 0x3F))
            out[n + 2] = <char>(0x80 | (c & 0x3F))
            n += 3
        else:
            out[n] = <char>(0xF0 | (c >> 18))
            out[n + 1] = <char>(0x80 | ((c >> 12) & 0x3F))
            out[n + 2] = <char>(0x80 | ((c >> 6) & 0x3F))
            out[n + 3] = <char>(0x80 | (c & 0x3F))
            n += 4
    out[n] = 0
    return n
