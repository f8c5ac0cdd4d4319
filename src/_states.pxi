# Stage 1, what the walk learns of a thread beyond its frames, from the kernel: its
# name (/proc/self/task/TID/comm), for a thread that threading never named (a C
# thread that took the GIL).  Async-signal-safe: /proc is read with open, read and
# close into the caller's memory.


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
