# Stage 4, delivery: a finished dump to where it goes.  To an fd in bounded time
# (write_all: one write() when the fd takes it all, never waiting for a stopped
# reader for good); dump_to_sink, the whole path for a GIL-free trigger; and to
# the Python side: spooled as a JSON file, kept in a mailbox (a dumper held for the
# `tbfast` logger) and announced on its pipe (hand_to_python).  Everything here
# is async-signal-safe.


cdef enum:
    SIGNAL_WRITE_MS = 5000     # a stalled reader of a signal's or the watchdog's fd loses the rest
    MAILBOXES = 2              # dumps held for the logger at most; the rest go to the fd only
    KIND_SIGNAL = 2            # a record for the Python side: a signal dump to log (0 and 1
                               # are the harakiri actions log and raise, _watchdog.pxi)
    SPOOL_NAME_BYTES = 80

cdef const char *DUMP_SKIPPED = b"tbfast: dump skipped, every dump buffer is in use\n"


cdef struct Sink:
    # An fd that dump after dump goes to (a signal's, the watchdog's); -1: none.
    int fd
    int stalled                  # its last write timed out: see write_to_sink


cdef int dump_to_sink(Sink *sink, DumpRequest *request, int format, int timeout_ms) noexcept nogil:
    """Signal safe: the whole path for the GIL-free triggers: a dump, then one write.
    Returns 0 or an errno; EBUSY when every dumper is in use."""
    cdef Dumper *d = dumper_acquire()
    cdef int error
    if d == NULL:
        write_to_sink(sink, DUMP_SKIPPED, strlen(DUMP_SKIPPED), timeout_ms)
        return 16  # EBUSY
    dumper_start(d, format)
    dump(d, request)
    error = write_dump_to_sink(d, sink, timeout_ms)
    tb_release(&d.busy)
    return error


cdef int write_dump(Dumper *d, int fd, int timeout_ms) noexcept nogil:
    # Signal safe: the finished dump to fd, in one write when the fd takes it all.
    return write_all(fd, d.buf + d.start, d.length - d.start, timeout_ms)


cdef int write_dump_to_sink(Dumper *d, Sink *sink, int timeout_ms) noexcept nogil:
    # Signal safe: write_dump, to a sink.
    return write_to_sink(sink, d.buf + d.start, d.length - d.start, timeout_ms)


cdef long long monotonic_ms() noexcept nogil:
    # Signal safe: clock_gettime is on the async-signal-safe list.
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec * 1000LL + now.tv_nsec // 1000000


cdef extern from *:
    """
    #include <fcntl.h>
    #include <limits.h>
    #include <sys/ioctl.h>
    #include <sys/socket.h>
    #include <sys/stat.h>
    #include <sys/sysmacros.h>
    #include <unistd.h>
    enum { TB_WRITE_WHOLE, TB_WRITE_SOCKET, TB_WRITE_CHUNKS };
    static long tb_page_bytes = 4096;  /* a pipe's slot; set at import by tb_write_init */
    static void tb_write_init(void) {
        long page = sysconf(_SC_PAGESIZE);
        if (page > 0) {
            tb_page_bytes = page;
        }
    }
    /* Signal safe (fcntl, ioctl: plain syscalls): how many bytes one write() to the pipe
       fd surely takes whole without waiting: its capacity less what is unread, less
       three slots (the reader's part-read one, the last part-filled one, rounding);
       0 when fd is no pipe. */
    static long tb_pipe_room(int fd) {
        int capacity = fcntl(fd, F_GETPIPE_SZ), unread = 0;
        if (capacity <= 0 || ioctl(fd, FIONREAD, &unread) != 0) {
            return 0;
        }
        return capacity - (long)unread - 3 * tb_page_bytes;
    }
    /* Signal safe (fstat, fcntl): how write_all writes to fd without waiting for its reader. */
    static int tb_write_mode(int fd) {
        struct stat status;
        if (fstat(fd, &status) != 0 || S_ISREG(status.st_mode)) {
            return TB_WRITE_WHOLE;  /* a file never waits for a reader; a bad fd fails in write() */
        }
        if (S_ISCHR(status.st_mode) && major(status.st_rdev) == 1) {
            return TB_WRITE_WHOLE;  /* nor do the kernel's memory devices (/dev/null, /dev/zero) */
        }
        if (S_ISSOCK(status.st_mode)) {
            return TB_WRITE_SOCKET;
        }
        int flags = fcntl(fd, F_GETFL);
        return flags >= 0 && (flags & O_NONBLOCK) ? TB_WRITE_WHOLE : TB_WRITE_CHUNKS;
    }
    /* Signal safe: send() that never waits and never raises SIGPIPE. */
    static ssize_t tb_send_now(int fd, const char *data, size_t n) {
        return send(fd, data, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    """
    enum: TB_WRITE_WHOLE, TB_WRITE_SOCKET, TB_WRITE_CHUNKS, PIPE_BUF
    void tb_write_init()
    long tb_pipe_room(int fd) nogil
    int tb_write_mode(int fd) nogil
    Py_ssize_t tb_send_now(int fd, const char *data, size_t n) nogil


tb_write_init()


cdef bint wait_writable(int fd, long long deadline_ms) noexcept nogil:
    # Signal safe: poll() until fd takes bytes (or is broken: the write says how), or the deadline.
    cdef pollfd waiter
    cdef long long left
    cdef int ready
    while True:
        left = deadline_ms - monotonic_ms()
        waiter.fd = fd
        waiter.events = POLLOUT
        waiter.revents = 0
        ready = poll(&waiter, 1, <int>left if left > 0 else 0)
        if ready > 0:
            return True
        if ready == 0 or errno != EINTR:
            return False


cdef int write_all(int fd, const char *data, Py_ssize_t n, int timeout_ms) noexcept nogil:
    """Signal safe: all of data to fd within timeout_ms, whatever the fd; 0, or an errno
    (EAGAIN: its reader did not take it all in time and loses the rest), so no reader
    can hold a dumper.  A file, /dev/null (a kernel memory device), or a non-blocking
    fd takes it in one write() when it can; a socket is sent to without waiting (MSG_DONTWAIT).  A blocking pipe or
    terminal, whose write() would wait for its reader for good, gets it in one write()
    when the pipe surely has room for it all (so that dumps of processes sharing a
    pipe never interleave), else PIPE_BUF bytes at a time, each once poll() says
    they fit.  Waits only in poll()."""
    cdef Py_ssize_t done
    cdef long long deadline = monotonic_ms() + timeout_ms
    cdef int mode = tb_write_mode(fd)
    while n > 0:
        if mode == TB_WRITE_SOCKET:
            done = tb_send_now(fd, data, n)
        elif mode == TB_WRITE_CHUNKS and n > tb_pipe_room(fd):
            if not wait_writable(fd, deadline):
                return EAGAIN
            done = write(fd, data, min(n, PIPE_BUF))
        else:
            done = write(fd, data, n)
        if done >= 0:
            data += done
            n -= done
            continue
        if errno == EINTR:
            continue
        if errno != EAGAIN:
            return errno
        if not wait_writable(fd, deadline):
            return EAGAIN
    return 0


cdef int write_to_sink(Sink *sink, const char *data, Py_ssize_t n, int timeout_ms) noexcept nogil:
    """Signal safe: write_all to the sink's fd; but once a write timed out, the next ones
    wait for nothing (they write what fits at once) until one goes through whole: a
    reader that stopped costs one timeout, not one per dump."""
    cdef int error = write_all(sink.fd, data, n, 0 if tb_load_int(&sink.stalled) else timeout_ms)
    tb_store_int(&sink.stalled, error == EAGAIN)
    return error


# ---------------------------------------------------------------- the Python side

ctypedef unsigned long long NotifyRecord[5]  # as tbfast._limits.NOTIFY_RECORD reads it

cdef struct ToPython:
    # The Python side (tbfast/watchdog.py) that logs signal and harakiri dumps, or raises.
    int notify_fd              # its pipe: a NotifyRecord per dump or action; -1: none
    unsigned int mailboxes_held

cdef ToPython to_python
to_python.notify_fd = -1  # not 0: until the watchdog is configured, no record goes to stdin


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
    if write(to_python.notify_fd, <char *>record, sizeof(record)) != sizeof(record) and mailbox >= 0:
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
        if to_python.notify_fd >= 0:
            notify_python(ident, stuck_ns, kind, -1, 0)
        return
    spooled = spool_write(d, request, sink)
    if sink.fd >= 0 or to_python.notify_fd >= 0:
        if not spooled or format != FORMAT_JSON:  # else the JSON walk is in d already
            dumper_start(d, format)
            dump(d, request)
    if sink.fd >= 0:
        write_dump_to_sink(d, sink, SIGNAL_WRITE_MS)
    if to_python.notify_fd >= 0:
        if tb_bump(&to_python.mailboxes_held) <= MAILBOXES:
            mailbox = d - dumpers
        else:
            tb_unbump(&to_python.mailboxes_held)
        notify_python(ident, stuck_ns, kind, mailbox, spooled)
    if mailbox < 0:
        tb_release(&d.busy)


cdef void release_mailbox(int mailbox) noexcept nogil:
    # Signal safe.
    tb_unbump(&to_python.mailboxes_held)
    tb_release(&dumpers[mailbox].busy)
