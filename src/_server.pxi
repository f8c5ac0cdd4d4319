# The tracebacker socket, served by a native thread that never takes the GIL:
# a client gets the dump while the GIL holder is stuck.  The Python layer
# (tbfast/sockets.py) names, binds and listens; this file only serves.
#
# Protocol: connect; optionally send one line (at most REQUEST_MAX bytes) naming a
# format, text, uwsgi or json, within REQUEST_WAIT_MS; read the dump until the
# server closes.  Nothing sent means the default format, so uWSGI's
# --connect-and-read works unchanged.

from posix.unistd cimport pipe

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct ucred:
        int pid
        unsigned int uid
        unsigned int gid
    int accept4(int fd, void *address, socklen_t *length, int flags)
    int getsockopt(int fd, int level, int name, void *value, socklen_t *length)
    Py_ssize_t recv(int fd, void *buffer, size_t length, int flags)
    enum: SOCK_CLOEXEC, SOCK_NONBLOCK, SOL_SOCKET, SO_PEERCRED, MSG_DONTWAIT

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *thread, void *attributes, void *(*run)(void *) noexcept nogil,
                       void *argument)
    int pthread_join(pthread_t thread, void **result)
    int pthread_atfork(void (*prepare)() noexcept nogil, void (*parent)() noexcept nogil,
                       void (*child)() noexcept nogil)

cdef extern from "<errno.h>" nogil:
    enum: EMFILE, ENFILE, ENOBUFS, ENOMEM

cdef enum:
    REQUEST_MAX = 64
    REQUEST_WAIT_MS = 10       # in all: a silent client gets the default dump after this
    SOCKET_WRITE_MS = 2000     # a client that never reads holds the server this long at most
    ACCEPT_BACKOFF_MS = 100    # when out of fds, instead of spinning on accept()
    DRAIN_READS = 16           # of 4 KiB: a client sending more is reset, as it deserves

cdef struct Server:
    bint running
    int listen_fd
    int wake_read              # a byte on the wake pipe stops the thread
    int wake_write
    int default_format
    unsigned int owner_uid
    pthread_t thread
    PyInterpreterState *interp

cdef Server server
cdef const char *BAD_REQUEST = b"tbfast: bad request: expected text, uwsgi or json\n"


cdef bint request_is(const char *request, Py_ssize_t length, const char *name) noexcept nogil:
    # Signal safe.
    return length == <Py_ssize_t>strlen(name) and memcmp(request, name, length) == 0


cdef int read_request(int client) noexcept nogil:
    """GIL-free: the format a client asks for, the default when it asks nothing,
    -1 for anything else.  Bounded: at most REQUEST_MAX bytes within REQUEST_WAIT_MS."""
    cdef char request[REQUEST_MAX + 1]
    cdef Py_ssize_t length = 0, got, start = 0
    cdef pollfd waiter
    cdef long long deadline = monotonic_ms() + REQUEST_WAIT_MS, left
    while True:
        left = deadline - monotonic_ms()
        waiter.fd = client
        waiter.events = POLLIN
        waiter.revents = 0
        if left <= 0 or poll(&waiter, 1, <int>left) <= 0:
            break
        got = recv(client, request + length, REQUEST_MAX + 1 - length, MSG_DONTWAIT)
        if got <= 0:
            break
        length += got
        if memchr(request, b'\n', length) != NULL or length > REQUEST_MAX:
            break
    if length > REQUEST_MAX:
        return -1
    cdef const char *newline = <const char *>memchr(request, b'\n', length)
    if newline != NULL:
        length = newline - request  # one line: what came after it is not the request
    while start < length and is_space(request[start]):
        start += 1
    while length > start and is_space(request[length - 1]):
        length -= 1
    length -= start
    if length == 0:
        return server.default_format
    if request_is(request + start, length, b"text"):
        return FORMAT_TEXT
    if request_is(request + start, length, b"uwsgi"):
        return FORMAT_UWSGI
    if request_is(request + start, length, b"json"):
        return FORMAT_JSON
    return -1


cdef void refuse_peer(int client, unsigned int uid) noexcept nogil:
    # GIL-free: one line naming the refused uid.
    cdef char line[80]
    cdef Py_ssize_t n = strlen(b"tbfast: refused: uid ")
    memcpy(line, b"tbfast: refused: uid ", n)
    n += format_unsigned(line + n, uid)
    memcpy(line + n, b" is not allowed\n", 16)
    write_all(client, line, n + 16, SOCKET_WRITE_MS)


cdef void serve_client(int client) noexcept nogil:
    """GIL-free: checks the peer, reads its request, writes one dump."""
    cdef ucred peer
    cdef socklen_t size = sizeof(peer)
    cdef DumpRequest request
    if getsockopt(client, SOL_SOCKET, SO_PEERCRED, &peer, &size) != 0:
        return
    if peer.uid != server.owner_uid and peer.uid != 0:
        refuse_peer(client, peer.uid)
        return
    cdef int format = read_request(client)
    if format < 0:
        write_all(client, BAD_REQUEST, strlen(BAD_REQUEST), SOCKET_WRITE_MS)
        return
    request_init(&request, server.interp, b"socket", 0, False)  # this thread runs no Python
    dump_to_fd_nogil(client, &request, format, SOCKET_WRITE_MS)


cdef void close_client(int client) noexcept nogil:
    """GIL-free: discards what the client sent and we did not read, without waiting,
    then closes: unread input would make the close a reset that loses our reply."""
    cdef char discard[4096]
    cdef int reads
    for reads in range(DRAIN_READS):
        if recv(client, discard, sizeof(discard), MSG_DONTWAIT) <= 0:
            break
    close(client)


cdef void *serve_loop(void *unused) noexcept nogil:
    """GIL-free: the server thread, clients one at a time, each in bounded time, until woken."""
    cdef pollfd waiters[2]
    cdef int client
    block_async_signals()
    while True:
        waiters[0].fd = server.listen_fd
        waiters[0].events = POLLIN
        waiters[0].revents = 0
        waiters[1].fd = server.wake_read
        waiters[1].events = POLLIN
        waiters[1].revents = 0
        if poll(waiters, 2, -1) < 0:
            continue  # EINTR; every signal is blocked here, so nothing else
        if waiters[1].revents:
            return NULL
        client = accept4(server.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)
        if client < 0:
            if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
                poll(NULL, 0, ACCEPT_BACKOFF_MS)
            continue
        serve_client(client)
        close_client(client)


cdef void server_forget(bint close_fds) noexcept nogil:
    # Signal safe: drops the server's state, closing its fds when asked.
    if close_fds:
        close(server.listen_fd)
        close(server.wake_read)
        close(server.wake_write)
    server.running = False


cdef void server_after_fork_in_child() noexcept nogil:
    """Signal safe: in the child of fork(), the server thread stayed in the parent.  The listening
    fd is the parent's socket: close it here; the Python layer serves the child's
    own socket (tbfast/sockets.py)."""
    if server.running:
        server_forget(True)


cdef int server_start(int listen_fd, int default_format, unsigned int owner_uid) except -1:
    """Starts the server thread on a bound, listening socket it then owns, even when
    it fails (then the fd is closed).  GIL held."""
    cdef int wake[2]
    if pipe2(wake, O_CLOEXEC) != 0:
        close(listen_fd)
        raise OSError(errno, "tbfast: cannot make the server's wake pipe")
    server.listen_fd = listen_fd
    server.wake_read = wake[0]
    server.wake_write = wake[1]
    server.default_format = default_format
    server.owner_uid = owner_uid
    server.interp = PyInterpreterState_Get()
    cdef int error = pthread_create(&server.thread, NULL, serve_loop, NULL)
    if error:
        close(wake[0])
        close(wake[1])
        close(listen_fd)
        raise OSError(error, "tbfast: cannot start the server thread")
    server.running = True
    return 0


cdef bint server_stop() noexcept:
    """Wakes the server thread, waits for it and closes its fds.  GIL held (released to wait)."""
    if not server.running:
        return False
    with nogil:
        write(server.wake_write, b"x", 1)
        pthread_join(server.thread, NULL)
    server_forget(True)
    return True


cdef extern from "<fcntl.h>" nogil:
    int pipe2(int fds[2], int flags)

cdef extern from "<poll.h>" nogil:
    enum: POLLIN
