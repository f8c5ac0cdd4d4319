# Stage 2, source lines: the line of a frame's file that its text shows, read with
# open()/read()/close() and kept across dumps in the dumper's source cache,
# checked with stat() against the file's mtime and size.  Async-signal-safe.


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
