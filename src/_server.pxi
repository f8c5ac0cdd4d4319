# Entry point: the tracebacker socket, served by a native thread that never takes
# the GIL, so a client gets its dump while the GIL holder is stuck.  The Python
# layer (tbfast/sockets.py) names, binds and listens; this file only serves.
#
# The protocol (request, answer, connection, consistent dumps, timing) is
# specified in docs/protocol.md; the constants below are its numbers.  What is
# this implementation's own: one client at a time on one thread; the peer check,
# the request read and the hand-over to the consistent thread (tbfast/consistent.py,
# over two pipes and a compare-and-swap state, HANDOVER_*) are the trigger; the
# dump itself is the stages' (dump, _walk.pxi).  The rest of a dump its client did
# not take waits in `server.waiting` (one dumper each) while the thread serves on,
# polled beside the listening socket; every connection ends in finish_client().


cdef enum:
    REQUEST_MAX = 64
    REQUEST_WAIT_MS = 10       # in all: a silent client gets the default dump after this
    SOCKET_WRITE_MS = 2000     # a client that takes nothing for this long loses the rest
    WAITING_MAX = 2            # dumps waiting for their clients at once, a dumper each (DUMPER_COUNT)
    ACCEPT_BACKOFF_MS = 100    # when out of fds, instead of spinning on accept()
    DRAIN_READS = 1024         # of 4 KiB: a guard; after the shutdown the client can add nothing
    OPTION_BASE = 16           # request_word's values from here on are options
    OPTION_LOCALS = 1          # request words beyond the format
    OPTION_GIL_FREE = 2
    OPTION_NATIVE = 4          # C frames of the threads that run or hold the GIL (_native.pxi)
    OPTION_NATIVE_ALL = 8      # of every thread
    HANDOVER_IDLE = 0          # the consistent thread's hand-over, as the server sees it
    HANDOVER_FILLING = 1
    HANDOVER_POSTED = 2
    HANDOVER_TAKEN = 3
    HANDOVER_WITHDRAWN = 4

cdef struct Waiting:
    int client                 # -1: a free entry
    Dumper *d                  # holds the dump until it is written or given up
    Py_ssize_t sent
    long long idle_since       # when the client last took something
    bint reads                 # it took something after the first write

cdef struct Server:
    bint running
    int listen_fd
    int wake_read              # a byte on the wake pipe stops the thread
    int wake_write
    int default_format
    unsigned int owner_uid
    pthread_t thread
    PyInterpreterState *interp
    int serving                # the client being served, -1 for none
    Waiting waiting[WAITING_MAX]

cdef struct Handover:
    bint open                  # the pipes exist in this process
    bint listening             # a consistent thread waits for clients
    int post_read              # server -> consistent thread: a byte per posted client
    int post_write
    int done_read              # consistent thread -> server: a byte per client written
    int done_write
    int state                  # HANDOVER_*, changed by compare-and-swap only
    int client                 # the client socket, the consistent thread's once it takes it
    int format
    int options
    int wait_ms                # for the GIL; 0 disables consistent dumps
    unsigned long thread_ident # the consistent thread's, left out of every dump; 0: none yet

cdef Server server
cdef Handover handover
cdef const char *BAD_REQUEST = b"tbfast: bad request: expected [text|uwsgi|json|faulthandler] [locals] [gil-free] [native] [native-all]\n"

cdef bint request_is(const char *request, Py_ssize_t length, const char *name) noexcept nogil:
    # Signal safe.
    return length == <Py_ssize_t>strlen(name) and memcmp(request, name, length) == 0


cdef int read_request(int client, int *options) noexcept nogil:
    """GIL-free: the format a client asks for, the default when it names none, -1 for
    a bad request; the other words go to `options`.  Bounded: at most REQUEST_MAX
    bytes within REQUEST_WAIT_MS."""
    cdef char request[REQUEST_MAX + 1]
    cdef Py_ssize_t length = 0, got, start = 0, end
    cdef pollfd waiter
    cdef long long deadline = monotonic_ms() + REQUEST_WAIT_MS, left
    cdef int format = -1, word
    options[0] = 0
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
    while start < length:
        while start < length and is_space(request[start]):
            start += 1
        end = start
        while end < length and not is_space(request[end]):
            end += 1
        if end == start:
            break
        word = request_word(request + start, end - start)
        if word < 0 or (word < OPTION_BASE and format >= 0):
            return -1  # unknown, or a second format
        if word < OPTION_BASE:
            format = word
        else:
            options[0] |= word - OPTION_BASE
        start = end
    return server.default_format if format < 0 else format


cdef int request_word(const char *word, Py_ssize_t length) noexcept nogil:
    # Signal safe: a format, OPTION_BASE + an option, or -1.
    if request_is(word, length, b"text"):
        return FORMAT_TEXT
    if request_is(word, length, b"uwsgi"):
        return FORMAT_UWSGI
    if request_is(word, length, b"json"):
        return FORMAT_JSON
    if request_is(word, length, b"faulthandler"):
        return FORMAT_FAULTHANDLER
    if request_is(word, length, b"locals"):
        return OPTION_BASE + OPTION_LOCALS
    if request_is(word, length, b"gil-free"):
        return OPTION_BASE + OPTION_GIL_FREE
    if request_is(word, length, b"native"):
        return OPTION_BASE + OPTION_NATIVE
    if request_is(word, length, b"native-all"):
        return OPTION_BASE + OPTION_NATIVE_ALL
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
    """GIL-free: checks the peer, reads its request, has one dump written; the client is
    finished, waiting for the rest of its dump, or the consistent thread's."""
    cdef ucred peer
    cdef socklen_t size = sizeof(peer)
    cdef DumpRequest request
    cdef int options
    if getsockopt(client, SOL_SOCKET, SO_PEERCRED, &peer, &size) != 0:
        finish_client(client)
        return
    if peer.uid != server.owner_uid and peer.uid != 0:
        refuse_peer(client, peer.uid)
        finish_client(client)
        return
    cdef int format = read_request(client, &options)
    if format < 0:
        write_all(client, BAD_REQUEST, strlen(BAD_REQUEST), SOCKET_WRITE_MS)
        finish_client(client)
        return
    request_init(&request, server.interp, b"socket", 0, False)  # this thread runs no Python
    request.locals = options & OPTION_LOCALS
    if options & (OPTION_NATIVE | OPTION_NATIVE_ALL):
        request.native = NATIVE_ALL if options & OPTION_NATIVE_ALL else NATIVE_BUSY
    request.symbolize = True  # a thread of its own, in no handler
    # A native dump is GIL-free: C stacks are what a stuck worker's dump is for.
    if not options & (OPTION_GIL_FREE | OPTION_NATIVE | OPTION_NATIVE_ALL) and handover.wait_ms > 0:
        request.gil_wait_ms = hand_over(client, format, options)
        if request.gil_wait_ms < 0:
            return
    send_dump(client, &request, format)


cdef int hand_over(int client, int format, int options) noexcept nogil:
    """GIL-free: offers the client to the consistent thread for gil_wait_ms; -1 when
    it took the client (it writes the dump and finishes the client), else the
    milliseconds waited in vain."""
    cdef long long started = monotonic_ms()
    cdef pollfd waiter
    cdef char byte = b'c'
    if not handover.listening or not tb_cas_int(&handover.state, HANDOVER_IDLE, HANDOVER_FILLING):
        return 0  # no consistent thread, or it is still busy with an earlier client
    drain_pipe(handover.done_read)  # a "done" left by a client the server stopped waiting for
    handover.client = client
    handover.format = format
    handover.options = options
    tb_store_int(&handover.state, HANDOVER_POSTED)  # publishes the fields above
    write(handover.post_write, &byte, 1)
    waiter.fd = handover.done_read
    waiter.events = POLLIN
    if wait_readable(&waiter, handover.wait_ms) or not tb_cas_int(
            &handover.state, HANDOVER_POSTED, HANDOVER_WITHDRAWN):
        # Taken: the consistent thread holds the GIL, makes the dump and writes what the
        # client takes at once; the rest waits in its own set (tbfast/_answers.py), so a
        # client that does not read holds neither thread.
        wait_readable(&waiter, SOCKET_WRITE_MS + 1000)
        return -1
    tb_store_int(&handover.state, HANDOVER_IDLE)
    return <int>(monotonic_ms() - started)


cdef bint wait_readable(pollfd *waiter, int timeout_ms) noexcept nogil:
    # Signal safe: poll() for POLLIN within timeout_ms, through EINTR.
    cdef long long deadline = monotonic_ms() + timeout_ms, left
    while True:
        left = deadline - monotonic_ms()
        waiter.revents = 0
        if left <= 0:
            return False
        if poll(waiter, 1, <int>left) > 0:
            return True


cdef void drain_pipe(int fd) noexcept nogil:
    # Signal safe: empties a non-blocking pipe.
    cdef char bytes[64]
    while read(fd, bytes, sizeof(bytes)) > 0:
        pass


cdef void finish_client(int client) noexcept nogil:
    """Signal safe: ends a connection so that the client reads the whole answer, then end of
    file.  Shut down both ways first: a forked child's copy of the fd cannot hold the
    end of file back, and the client can send nothing more.  Then read what it sent
    and we did not (close() with unread input resets the connection), and close."""
    cdef char discard[4096]
    cdef int reads
    shutdown(client, SHUT_RDWR)
    for reads in range(DRAIN_READS):
        if recv(client, discard, sizeof(discard), MSG_DONTWAIT) <= 0:
            break
    close(client)


# ---------------------------------------------------------------- dumps waiting for their clients

cdef enum:
    WRITTEN = 0                # all of it, or the client left: finish it
    MORE = 1                   # the client's socket is full


cdef void send_dump(int client, DumpRequest *request, int format) noexcept nogil:
    """Signal safe: makes the dump and writes what the client takes; the rest waits."""
    cdef Waiting entry
    entry.d = dumper_acquire()
    if entry.d == NULL:
        write_all(client, DUMP_SKIPPED, strlen(DUMP_SKIPPED), SOCKET_WRITE_MS)
        finish_client(client)
        return
    dumper_start(entry.d, format)
    dump(entry.d, request)
    entry.client = client
    entry.sent = 0
    entry.idle_since = monotonic_ms()
    if write_waiting(&entry) == WRITTEN:
        end_waiting(&entry)
        return
    entry.reads = False  # what the first write put in the socket's buffer proves nothing
    cdef Waiting *free_entry = waiting_entry_for_one_more()
    free_entry[0] = entry


cdef int write_waiting(Waiting *entry) noexcept nogil:
    """Signal safe: writes what the client takes now, without waiting; WRITTEN or MORE."""
    cdef Dumper *d = entry.d
    cdef Py_ssize_t done, left
    while True:
        left = d.length - d.start - entry.sent
        if left <= 0:
            return WRITTEN
        done = send(entry.client, d.buf + d.start + entry.sent, left, MSG_DONTWAIT | MSG_NOSIGNAL)
        if done > 0:
            entry.sent += done
            entry.idle_since = monotonic_ms()
            entry.reads = True
        elif errno == EAGAIN:
            return MORE
        elif errno != EINTR:
            return WRITTEN  # EPIPE, ECONNRESET: the client left


cdef void end_waiting(Waiting *entry) noexcept nogil:
    # Signal safe: releases the dump and finishes the client, whatever was written.
    tb_release(&entry.d.busy)
    finish_client(entry.client)
    entry.client = -1


cdef Waiting *waiting_entry_for_one_more() noexcept nogil:
    """Signal safe: a free entry; when all are taken, that of the client given up on first."""
    cdef Waiting *victim = NULL
    cdef Waiting *entry
    cdef int i
    for i in range(WAITING_MAX):
        entry = &server.waiting[i]
        if entry.client < 0:
            return entry
        if victim == NULL or given_up_before(entry, victim):
            victim = entry
    end_waiting(victim)
    return victim


cdef bint given_up_before(Waiting *a, Waiting *b) noexcept nogil:
    # Signal safe: one that has read nothing since its first write goes first, else the longer idle.
    if a.reads != b.reads:
        return not a.reads
    return a.idle_since < b.idle_since


cdef int serve_waiting() noexcept nogil:
    """Signal safe: writes on to every waiting client, gives up on those idle for
    SOCKET_WRITE_MS; the milliseconds until the next of them may be given up on, -1
    when none waits."""
    cdef Waiting *entry
    cdef long long now, next_deadline = -1, deadline
    cdef int i
    for i in range(WAITING_MAX):
        entry = &server.waiting[i]
        if entry.client < 0:
            continue
        now = monotonic_ms()
        deadline = entry.idle_since + SOCKET_WRITE_MS
        if write_waiting(entry) == WRITTEN or deadline <= now:
            end_waiting(entry)
        elif next_deadline < 0 or deadline < next_deadline:
            next_deadline = deadline
    if next_deadline < 0:
        return -1
    return <int>max(next_deadline - monotonic_ms(), 1)


cdef void *serve_loop(void *unused) noexcept nogil:
    """GIL-free: the server thread, clients one at a time, each in bounded time, the
    rests of dumps side by side, until woken."""
    cdef pollfd waiters[2 + WAITING_MAX]
    cdef int client, count, i, timeout_ms = -1
    block_async_signals()
    tb_name_self(b"tbfast-server")  # so that native dumps leave tbfast's threads out
    while True:
        waiters[0].fd = server.listen_fd
        waiters[0].events = POLLIN
        waiters[1].fd = server.wake_read
        waiters[1].events = POLLIN
        count = 2
        for i in range(WAITING_MAX):
            if server.waiting[i].client >= 0:
                waiters[count].fd = server.waiting[i].client
                waiters[count].events = POLLOUT
                count += 1
        for i in range(count):
            waiters[i].revents = 0
        if poll(waiters, count, timeout_ms) < 0:
            continue  # EINTR; every signal is blocked here, so nothing else
        if waiters[1].revents:
            for i in range(WAITING_MAX):
                if server.waiting[i].client >= 0:
                    end_waiting(&server.waiting[i])
            return NULL
        timeout_ms = serve_waiting()
        if not waiters[0].revents:
            continue
        client = accept4(server.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)
        if client < 0:
            if errno == EMFILE or errno == ENFILE or errno == ENOBUFS or errno == ENOMEM:
                poll(NULL, 0, ACCEPT_BACKOFF_MS)
            continue
        server.serving = client
        serve_client(client)
        server.serving = -1
        timeout_ms = serve_waiting()


cdef void server_forget(bint close_fds) noexcept nogil:
    # Signal safe: drops the server's state, closing its fds when asked.
    if close_fds:
        close(server.listen_fd)
        close(server.wake_read)
        close(server.wake_write)
    server.running = False


cdef void server_after_fork_in_child() noexcept nogil:
    """Signal safe: in the child of fork(), the server and consistent threads stayed in the
    parent.  The listening fd is the parent's socket and the hand-over pipes are shared
    with it: close them here; the Python layer serves the child's own socket and starts
    its own consistent thread (tbfast/sockets.py)."""
    cdef int i
    if server.running:
        server_forget(True)
        # Clients being served: the parent answers and finishes them.
        if server.serving >= 0:
            close(server.serving)
            server.serving = -1
        for i in range(WAITING_MAX):
            if server.waiting[i].client >= 0:
                close(server.waiting[i].client)  # its dumper is free in the child
                server.waiting[i].client = -1
    if handover.open:
        close(handover.post_read)
        close(handover.post_write)
        close(handover.done_read)
        close(handover.done_write)
        handover.open = False
    handover.listening = False
    handover.thread_ident = 0
    handover.state = HANDOVER_IDLE


cdef int handover_open() except -1:
    """The hand-over pipes, once per process; GIL held.  The post pipe blocks (the
    consistent thread sleeps on it); the done pipe's read end does not (drained)."""
    cdef int post[2]
    cdef int done[2]
    if handover.open:
        return 0
    if pipe2(post, O_CLOEXEC) != 0:
        raise OSError(errno, "tbfast: cannot make the consistent thread's pipe")
    if pipe2(done, O_CLOEXEC | O_NONBLOCK) != 0:
        close(post[0])
        close(post[1])
        raise OSError(errno, "tbfast: cannot make the consistent thread's pipe")
    handover.post_read, handover.post_write = post[0], post[1]
    handover.done_read, handover.done_write = done[0], done[1]
    handover.state = HANDOVER_IDLE
    handover.open = True
    return 0


cdef int server_start(int listen_fd, int default_format, unsigned int owner_uid) except -1:
    """Starts the server thread on a bound, listening socket it then owns, even when
    it fails (then the fd is closed).  GIL held."""
    cdef int wake[2]
    cdef int i
    if pipe2(wake, O_CLOEXEC) != 0:
        close(listen_fd)
        raise OSError(errno, "tbfast: cannot make the server's wake pipe")
    server.listen_fd = listen_fd
    server.wake_read = wake[0]
    server.wake_write = wake[1]
    server.default_format = default_format
    server.owner_uid = owner_uid
    server.interp = PyInterpreterState_Get()
    server.serving = -1
    for i in range(WAITING_MAX):
        server.waiting[i].client = -1
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

