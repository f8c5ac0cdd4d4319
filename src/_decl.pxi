# Declarations: every C name the core uses, ahead of its first use.  The libc and
# POSIX headers, the few Python.h pieces, tbfast's own interpreter access
# (tbcore_python.h), and the small inline C helpers: the atomics in one block,
# the rest (thread identity, errno, prefetch, copy) in another.  No code runs here.
#
# Included first by _tbcore.pyx rather than kept as src/_tbcore.pxd: a .pxd named
# after the module becomes its cimportable interface (anything declared there is
# public to other Cython modules), and Cython looks it up by the module's name,
# tbfast/_tbcore.pxd, not beside src/_tbcore.pyx; an include is plain text, read in
# the order _tbcore.pyx lists it, as every other part of the core is.
#
# The inline C blocks that are implementations rather than declarations stay with
# the code they serve: the fault guard (_guard.pxi), how a write waits for its
# reader (_deliver.pxi) and gettid (_states.pxi).

cimport cython
from cpython.ref cimport PyObject
from libc.errno cimport errno, EINTR, EAGAIN
from libc.signal cimport SIG_DFL, SIG_IGN, SIGABRT, SIGKILL, raise_ as raise_signal
from libc.string cimport memcpy, memmove, memchr, memcmp, memset, strlen
from posix.fcntl cimport open as os_open, O_RDONLY, O_CLOEXEC, O_CREAT, O_EXCL, O_WRONLY
from posix.mman cimport (mmap, munmap, PROT_NONE, PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS,
                         MAP_FAILED)
from posix.signal cimport (sigaction_t, sigaction, siginfo_t, sigemptyset, sigset_t, sigfillset,
                           sigdelset, kill, SA_SIGINFO, SA_RESTART, SA_NODEFER, SA_ONSTACK, SIG_BLOCK)
from posix.stat cimport stat, struct_stat as stat_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME
from posix.unistd cimport read, write, close, getpid
from libc.stdlib cimport malloc
from libc.stdint cimport uintptr_t


# ---------------------------------------------------------------- libc and POSIX

cdef extern from "<errno.h>" nogil:
    enum: EMFILE, ENFILE, ENOBUFS, ENOMEM

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char *path, int flags, int mode)
    enum: O_DIRECTORY
    int pipe2(int fds[2], int flags)
    enum: O_NONBLOCK, O_DIRECTORY

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum: POLLIN, POLLOUT

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *thread, void *attributes, void *(*run)(void *) noexcept nogil,
                       void *argument)
    int pthread_join(pthread_t thread, void **result)
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

cdef extern from "<signal.h>" nogil:
    enum: NSIG, SIGSEGV, SIGBUS, SIGILL, SIGFPE
    int pthread_sigmask(int how, const sigset_t *mask, sigset_t *old)
    ctypedef struct stack_t:
        void *ss_sp
        int ss_flags
        size_t ss_size
    int sigaltstack(const stack_t *stack, stack_t *old)
    enum: SS_DISABLE

cdef extern from "<execinfo.h>" nogil:
    int backtrace(void **buffer, int size)

cdef extern from "<dlfcn.h>" nogil:
    ctypedef struct Dl_info:
        const char *dli_fname
        void *dli_fbase
        const char *dli_sname
        void *dli_saddr
    int dladdr1(const void *address, Dl_info *info, void **extra, int flags)
    enum: RTLD_DL_LINKMAP

cdef extern from "<link.h>" nogil:
    struct link_map:
        size_t l_addr
    ctypedef struct ElfPhdr "ElfW(Phdr)":
        unsigned int p_type
        size_t p_vaddr
        size_t p_memsz
    ctypedef struct ElfSym "ElfW(Sym)":
        size_t st_size
    struct dl_phdr_info:
        size_t dlpi_addr
        const char *dlpi_name
        const ElfPhdr *dlpi_phdr
        unsigned short dlpi_phnum
    int dl_iterate_phdr(int (*callback)(dl_phdr_info *info, size_t size, void *data) noexcept nogil,
                        void *data)
    enum: PT_LOAD

cdef extern from "<dlfcn.h>" nogil:
    void *dlsym(void *handle, const char *name)
    void *RTLD_DEFAULT
    enum: RTLD_DL_SYMENT

cdef extern from "<string.h>" nogil:
    char *strncpy(char *to, const char *source, size_t n)

cdef extern from "<stdio.h>" nogil:
    int renameat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath)

cdef extern from "<string.h>" nogil:
    size_t strnlen(const char *text, size_t limit)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct ucred:
        int pid
        unsigned int uid
        unsigned int gid
    int accept4(int fd, void *address, socklen_t *length, int flags)
    int getsockopt(int fd, int level, int name, void *value, socklen_t *length)
    Py_ssize_t recv(int fd, void *buffer, size_t length, int flags)
    Py_ssize_t send(int fd, const void *buffer, size_t length, int flags)
    int shutdown(int fd, int how)
    enum: SOCK_CLOEXEC, SOCK_NONBLOCK, SOL_SOCKET, SO_PEERCRED, MSG_DONTWAIT, MSG_NOSIGNAL, SHUT_RDWR

cdef extern from "<time.h>" nogil:
    enum: CLOCK_MONOTONIC_COARSE

cdef extern from "<unistd.h>" nogil:
    int dup3(int oldfd, int newfd, int flags)
    int unlinkat(int dirfd, const char *path, int flags)
    void _exit(int status)


# ---------------------------------------------------------------- CPython

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
    int PyCode_Addr2Line(PyCodeObject *code, int addr)
    PyObject *Py_True
    double PyFloat_AS_DOUBLE(PyObject *number)
    char *PyBytes_AS_STRING(PyObject *data)
    Py_ssize_t PyBytes_GET_SIZE(PyObject *data)
    int PyDict_Next(PyObject *dict, Py_ssize_t *position, PyObject **key, PyObject **value)
    bint PyDict_Check(PyObject *object)
    bint PyFrozenSet_Check(PyObject *object)

cdef extern from "Python.h":
    int PyThreadState_SetAsyncExc(unsigned long ident, PyObject *exception)

cdef extern from "pythread.h":
    unsigned long PyThread_get_thread_ident() nogil

# What tbfast reads of the interpreter, one small function per concept, each
# version's differences inside.  Everything here is async-signal-safe.
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
    bint tb_frame_is_eval_entry(tb_frame *frame)
    bint tb_frame_is_eval_shim(tb_frame *frame)
    int tb_frame_line(tb_frame *frame, PyCodeObject *code)
    PyThreadState *tb_gil_holder(PyInterpreterState *interp)
    # thread states (_states.pxi)
    void tb_gil_wait_range(PyInterpreterState *interp, uintptr_t *low, uintptr_t *high)
    bint tb_thread_requests_gil(PyThreadState *tstate)
    const char *tb_layout_mismatch(const char *skewed, char *message, size_t size)
    # locals (_locals.pxi)
    int tb_code_local_count(PyCodeObject *code)
    PyObject *tb_code_local_name(PyCodeObject *code, int i)
    PyObject *tb_frame_local(tb_frame *frame, PyCodeObject *code, int i)
    bint tb_small_int(PyObject *number, long long *value)
    const char *tb_type_name(PyObject *object)
    int tb_value_kind(PyObject *value)
    enum:
        TB_VALUE_OTHER, TB_VALUE_NONE, TB_VALUE_BOOL, TB_VALUE_INT, TB_VALUE_FLOAT, TB_VALUE_STR,
        TB_VALUE_BYTES
    # faulthandler's format (_faulthandler.pxi); tb_gc_collecting, thread states too
    int tb_gc_collecting(PyInterpreterState *interp)
    PyObject *tb_modules_dict(PyInterpreterState *interp)
    PyObject *tb_sys_dict(PyInterpreterState *interp)
    int tb_is_extension_module(PyObject *object)
    PyObject *tb_set_next_str(PyObject *set, Py_ssize_t *position)
    enum:
        TB_FAULTHANDLER_ELLIPSIS        # 3.11, 3.12: "  ..." after the 100th frame
        TB_FAULTHANDLER_COUNTS_HIDDEN   # 3.14+: trampoline frames count toward the 100
        TB_FAULTHANDLER_THREAD_NAMES    # 3.14+: " [name]" on a thread's line
        TB_FAULTHANDLER_PACKAGE_FILTER  # 3.15+: a stdlib package's submodules are stdlib too


# ---------------------------------------------------------------- atomics

cdef extern from *:
    """
    #include <linux/futex.h>
    #include <sys/syscall.h>
    #include <time.h>
    #include <unistd.h>
    /* Signal safe: lock-free flags for the dumper pool and the signal guard. */
    static inline int tb_try_acquire(int *flag) {
        return __atomic_exchange_n(flag, 1, __ATOMIC_ACQUIRE) == 0;
    }
    static inline void tb_release(int *flag) { __atomic_store_n(flag, 0, __ATOMIC_RELEASE); }
    /* Signal safe: lock-free words (the hand-over state, a sink's stall, the watchdog's stop). */
    static inline int tb_cas_int(int *word, int expected, int desired) {
        return __atomic_compare_exchange_n(word, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline int tb_load_int(int *word) { return __atomic_load_n(word, __ATOMIC_ACQUIRE); }
    static inline void tb_store_int(int *word, int value) { __atomic_store_n(word, value, __ATOMIC_RELEASE); }
    /* Signal safe: lock-free counters (the watchdog's wake word, mailboxes, spool files and numbers). */
    static inline unsigned int tb_bump(unsigned int *word) {
        return __atomic_add_fetch(word, 1, __ATOMIC_SEQ_CST);
    }
    static inline unsigned int tb_unbump(unsigned int *word) {
        return __atomic_sub_fetch(word, 1, __ATOMIC_SEQ_CST);
    }
    static inline unsigned int tb_load_uint(unsigned int *word) {
        return __atomic_load_n(word, __ATOMIC_SEQ_CST);
    }
    static inline unsigned long long tb_bump_ull(unsigned long long *value) {
        return __atomic_add_fetch(value, 1, __ATOMIC_SEQ_CST);
    }
    /* Signal safe: deadlines, read and written whole. */
    static inline long long tb_load_ll(long long *value) {
        return __atomic_load_n(value, __ATOMIC_ACQUIRE);
    }
    static inline void tb_store_ll(long long *value, long long new_value) {
        __atomic_store_n(value, new_value, __ATOMIC_RELEASE);
    }
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
    /* Waiting on a word: wait while *word == expected, at most timeout_ns (< 0: no limit). */
    static inline void tb_futex_wait(unsigned int *word, unsigned int expected, long long timeout_ns) {
        struct timespec timeout;
        timeout.tv_sec = timeout_ns / 1000000000LL;
        timeout.tv_nsec = timeout_ns % 1000000000LL;
        syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, expected, timeout_ns < 0 ? NULL : &timeout, NULL, 0);
    }
    static inline void tb_futex_wake(unsigned int *word) {
        syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
    }
    """
    bint tb_try_acquire(int *flag) nogil
    void tb_release(int *flag) nogil
    bint tb_cas_int(int *word, int expected, int desired) nogil
    int tb_load_int(int *word) nogil
    void tb_store_int(int *word, int value) nogil
    unsigned int tb_bump(unsigned int *word) nogil
    unsigned int tb_unbump(unsigned int *word) nogil
    unsigned int tb_load_uint(unsigned int *word) nogil
    unsigned long long tb_bump_ull(unsigned long long *value) nogil
    long long tb_load_ll(long long *value) nogil
    void tb_store_ll(long long *value, long long new_value) nogil
    void tb_seq_write_begin(unsigned int *seq) nogil
    void tb_seq_write_end(unsigned int *seq) nogil
    unsigned int tb_seq_read_begin(unsigned int *seq) nogil
    bint tb_seq_read_changed(unsigned int *seq, unsigned int begin) nogil
    void tb_futex_wait(unsigned int *word, unsigned int expected, long long timeout_ns) nogil
    void tb_futex_wake(unsigned int *word) nogil


# ---------------------------------------------------------------- other inline helpers

cdef extern from *:
    """
    #include <errno.h>
    #include <pthread.h>
    #include <signal.h>
    #include <string.h>
    #include <sys/prctl.h>
    /* Signal safe in practice: glibc reads it from the thread pointer, no call into
       the kernel or locks; unlike the kernel's thread id it survives fork(). */
    static inline unsigned long tb_thread_self(void) { return (unsigned long)pthread_self(); }
    /* Signal safe: the calling thread's kernel id. */
    static inline long tb_gettid(void) { return syscall(SYS_gettid); }
    /* Signal safe: a real-time signal carrying `value` to one thread of this process
       (rt_tgsigqueueinfo: pthread_sigqueue needs a pthread_t, which C threads'
       kernel ids do not give). */
    static inline int tb_signal_thread(long tid, int signum, int value) {
        siginfo_t info;
        memset(&info, 0, sizeof(info));
        info.si_signo = signum;
        info.si_code = SI_QUEUE;
        info.si_pid = getpid();
        info.si_uid = getuid();
        info.si_value.sival_int = value;
        return syscall(SYS_rt_tgsigqueueinfo, getpid(), tid, signum, &info) == 0 ? 0 : -1;
    }
    /* The signal native frames are asked with: one of the last real-time signals,
       which libraries rarely take (glibc keeps the first ones for itself). */
    static inline int tb_native_signal_number(void) { return SIGRTMAX - 4; }
    /* Signal safe: the calling thread's kernel name (at most 15 bytes). */
    static inline void tb_name_self(const char *name) { prctl(PR_SET_NAME, name, 0, 0, 0); }
    /* Signal safe: directory entries of an open directory into `buffer`; bytes, 0 at the end. */
    static inline long tb_getdents(int fd, char *buffer, size_t size) {
        return syscall(SYS_getdents64, fd, buffer, size);
    }
    /* Setup only: the main program's path (dl_iterate_phdr gives it no name). */
    static inline void tb_readlink_exe(char *out, size_t size) {
        ssize_t n = readlink("/proc/self/exe", out, size - 1);
        out[n > 0 ? n : 0] = 0;
    }
    /* Signal safe: a handler puts back the errno it found. */
    static inline void tb_set_errno(int value) { errno = value; }
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
    /* The calling thread's slot (_threads.pxi), cached: a harakiri scope finds it without a probe. */
    static __thread void *tb_own_slot = NULL;
    static inline void *tb_get_own_slot(void) { return tb_own_slot; }
    static inline void tb_set_own_slot(void *slot) { tb_own_slot = slot; }
    """
    unsigned long tb_thread_self() nogil
    void tb_set_errno(int value) nogil
    void tb_copy_chunk(char *to, const char *source, Py_ssize_t n) nogil
    void tb_prefetch(const void *address) nogil
    void tb_prefetch_write(const void *address) nogil
    void *tb_get_own_slot() nogil
    void tb_set_own_slot(void *slot) nogil
    long tb_gettid() nogil
    int tb_signal_thread(long tid, int signum, int value) nogil
    int tb_native_signal_number() nogil
    void tb_readlink_exe(char *out, size_t size) nogil
    void tb_name_self(const char *name) nogil
    long tb_getdents(int fd, char *buffer, size_t size) nogil
    enum: SI_QUEUE
