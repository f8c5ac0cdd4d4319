# Declarations of the interpreter access in tbcore_python.h and of the few
# lock-free C helpers the core needs.  Everything here is async-signal-safe.

from cpython.ref cimport PyObject

cdef extern from "Python.h" nogil:
    ctypedef struct PyThreadState
    ctypedef struct PyInterpreterState
    ctypedef struct PyCodeObject:
        PyObject *co_filename
        PyObject *co_name
    PyInterpreterState *PyInterpreterState_Get()
    bint PyUnicode_Check(PyObject *)
    bint PyUnicode_IS_COMPACT_ASCII(PyObject *)
    Py_ssize_t PyUnicode_GET_LENGTH(PyObject *)
    int PyUnicode_KIND(PyObject *)
    void *PyUnicode_DATA(PyObject *)
    unsigned int PyUnicode_READ(int kind, void *data, Py_ssize_t index)

cdef extern from "tbcore_python.h" nogil:
    ctypedef struct tb_frame:
        tb_frame *previous  # only the test hook of _guard.pxi writes it
    PyThreadState *tb_first_thread(PyInterpreterState *interp)
    PyThreadState *tb_next_thread(PyThreadState *tstate)
    unsigned long tb_thread_ident(PyThreadState *tstate)
    unsigned long tb_thread_native_id(PyThreadState *tstate)
    tb_frame *tb_top_frame(PyThreadState *tstate)
    tb_frame *tb_previous_frame(tb_frame *frame)
    void tb_prefetch_callers(tb_frame *frame)
    void tb_prefetch_thread(PyThreadState *tstate)
    void tb_prefetch_top_frame(PyThreadState *tstate)
    PyCodeObject *tb_frame_code(tb_frame *frame)
    int tb_frame_lasti_bytes(tb_frame *frame, PyCodeObject *code)
    bint tb_frame_is_hidden(tb_frame *frame, PyCodeObject *code)
    int tb_frame_line(tb_frame *frame, PyCodeObject *code)
    PyThreadState *tb_gil_holder(PyInterpreterState *interp)
    const char *tb_layout_mismatch(const char *skewed, char *message, size_t size)

cdef extern from *:
    """
    #include <unistd.h>
    #include <pthread.h>
    /* Signal safe in practice: glibc reads it from the thread pointer, no call into
       the kernel or locks; unlike the kernel's thread id it survives fork(). */
    static inline unsigned long tb_thread_self(void) { return (unsigned long)pthread_self(); }
    /* Signal safe: a handler puts back the errno it found. */
    static inline void tb_set_errno(int value) { errno = value; }
    /* Signal safe: lock-free flags for the dumper pool and the signal guard. */
    static inline int tb_try_acquire(int *flag) {
        return __atomic_exchange_n(flag, 1, __ATOMIC_ACQUIRE) == 0;
    }
    static inline void tb_release(int *flag) { __atomic_store_n(flag, 0, __ATOMIC_RELEASE); }
    /* Signal safe: copies n bytes in 32-byte blocks, inline: may read and write up to
       31 bytes past n, so both sides need that much room after them. */
    static inline void tb_copy_chunk(char *to, const char *from, Py_ssize_t n) {
        for (Py_ssize_t done = 0; done < n; done += 32) {
            __builtin_memcpy(to + done, from + done, 32);
        }
    }
    /* Signal safe: start loading a cache line, to read or to write; never fault. */
    static inline void tb_prefetch(const void *address) { __builtin_prefetch(address); }
    static inline void tb_prefetch_write(const void *address) { __builtin_prefetch(address, 1, 3); }
    /* Seqlock on a per-thread slot: the writer holds the GIL, readers hold nothing. */
    static inline void tb_seq_write_begin(unsigned int *seq) {
        __atomic_store_n(seq, *seq + 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }
    static inline void tb_seq_write_end(unsigned int *seq) {
        __atomic_store_n(seq, *seq + 1, __ATOMIC_RELEASE);
    }
    static inline unsigned int tb_seq_read_begin(unsigned int *seq) {
        return __atomic_load_n(seq, __ATOMIC_ACQUIRE);
    }
    static inline int tb_seq_read_changed(unsigned int *seq, unsigned int begin) {
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        return (begin & 1) || __atomic_load_n(seq, __ATOMIC_RELAXED) != begin;
    }
    """
    unsigned long tb_thread_self() nogil
    void tb_set_errno(int value) nogil
    bint tb_try_acquire(int *flag) nogil
    void tb_release(int *flag) nogil
    void tb_prefetch(const void *address) nogil
    void tb_prefetch_write(const void *address) nogil
    void tb_copy_chunk(char *to, const char *source, Py_ssize_t n) nogil
    void tb_seq_write_begin(unsigned int *seq) nogil
    void tb_seq_write_end(unsigned int *seq) nogil
    unsigned int tb_seq_read_begin(unsigned int *seq) nogil
    bint tb_seq_read_changed(unsigned int *seq, unsigned int begin) nogil
