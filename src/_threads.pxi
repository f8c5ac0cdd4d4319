# Thread names and contexts, recorded while the GIL is held and read without it;
# and each thread's harakiri deadlines (_watchdog.pxi).  Shared by the stages and
# the entry points.
#
# A fixed open-addressing table keyed by the thread ident (pthread_self), which,
# unlike the native id, survives fork() in the forking thread.  A new thread
# overwrites the slot of a dead one with the same ident as it starts.  Writers
# hold the GIL, so there is one at a time; GIL-free readers copy a slot under
# its seqlock and give up on it (no name shown) if it changed meanwhile.

cdef enum:
    SLOT_COUNT = 4096            # power of two; swept of dead threads when 3/4 used
    SLOT_TEXT = 512              # >= every bounded string limit + 3
    EMPTY_IDENT = 0
    DELETED_IDENT = 1            # a pthread id is a pointer, never 0 or 1
    SCOPE_DEPTH = 16             # harakiri scopes one thread may nest

cdef struct ThreadSlot:
    # What a dump reads first, so a short name shares the cache lines of the ident.
    unsigned long ident
    unsigned int seq
    Py_ssize_t name_length       # -1 when not known
    Py_ssize_t context_length    # -1 when none
    # harakiri: written by the owning thread (GIL held), read by the watchdog
    long long deadline_ns        # CLOCK_MONOTONIC; 0 when disarmed
    long long armed_ns
    unsigned int arm_seq         # bumped per arm, so each expiry is reported once
    int action
    int scope_depth
    # set with the GIL held (tbfast's threading hooks, set_context), read by dumps
    char name[SLOT_TEXT]
    char context[SLOT_TEXT]
    # the harakiri scopes this thread is in, outermost first, and what each one's entry
    # replaced: scope objects keep no state, so one may serve many threads and calls
    void *scopes[SCOPE_DEPTH]
    long long outer_deadline_ns[SCOPE_DEPTH]
    long long outer_armed_ns[SCOPE_DEPTH]
    int outer_action[SCOPE_DEPTH]
    # written by the watchdog only
    unsigned int reported_seq
    bint action_done
    long long next_report_ns
    long long action_at_ns

cdef ThreadSlot thread_slots[SLOT_COUNT]
cdef Py_ssize_t slots_live = 0   # only the GIL holder changes it


cdef inline size_t slot_hash(unsigned long ident) noexcept nogil:
    # Signal safe.
    return <size_t>(((ident >> 4) * 0x9E3779B97F4A7C15ULL) >> 52) & (SLOT_COUNT - 1)


cdef ThreadSlot *slot_find(unsigned long ident) noexcept nogil:
    # Signal safe: the slot of a thread, or NULL.
    cdef size_t i = slot_hash(ident)
    cdef int probes
    cdef ThreadSlot *slot
    for probes in range(SLOT_COUNT):
        slot = &thread_slots[i]
        if slot.ident == EMPTY_IDENT:
            return NULL
        if slot.ident == ident:
            return slot
        i = (i + 1) & (SLOT_COUNT - 1)
    return NULL


cdef void slot_prefetch(unsigned long ident) noexcept nogil:
    # Signal safe: starts loading the lines slot_copy reads of a thread's home slot.
    cdef char *slot = <char *>&thread_slots[slot_hash(ident)]
    tb_prefetch(slot)
    tb_prefetch(slot + 64)
    tb_prefetch(slot + 128)


cdef ThreadSlot *slot_claim(unsigned long ident) noexcept nogil:
    """The slot of a thread, made if new; NULL when the table is full.  GIL held."""
    cdef ThreadSlot *slot = slot_find(ident)
    if slot != NULL:
        return slot
    if slots_live >= SLOT_COUNT * 3 // 4:
        return NULL
    cdef size_t i = slot_hash(ident)
    while thread_slots[i].ident > DELETED_IDENT:
        i = (i + 1) & (SLOT_COUNT - 1)
    slot = &thread_slots[i]
    global slots_live
    slots_live += 1
    tb_seq_write_begin(&slot.seq)
    slot.deadline_ns = 0
    slot.scope_depth = 0
    slot.name_length = -1
    slot.context_length = -1
    slot.ident = ident
    tb_seq_write_end(&slot.seq)
    return slot


cdef ThreadSlot *own_slot() except NULL:
    """The calling thread's slot, made if new.  GIL held.  The cache is checked against
    the ident: a sweep may have freed the slot, and another thread taken it."""
    cdef unsigned long ident = PyThread_get_thread_ident()
    cdef ThreadSlot *slot = <ThreadSlot *>tb_get_own_slot()
    if slot != NULL and slot.ident == ident:
        return slot
    slot = slot_claim(ident)
    if slot == NULL:
        raise RuntimeError("tbfast: the thread table is full")
    tb_set_own_slot(slot)
    return slot


cdef ThreadSlot *slot_in_scope(void *scope) noexcept nogil:
    """The slot of the thread whose innermost scope is `scope`, the caller's first, or
    NULL: a scope object used once may be exited by another thread.  GIL held."""
    cdef ThreadSlot *slot = <ThreadSlot *>tb_get_own_slot()
    cdef int i
    if slot != NULL and slot.ident == PyThread_get_thread_ident() and slot.scope_depth > 0 \
            and slot.scopes[slot.scope_depth - 1] == scope:
        return slot
    for i in range(SLOT_COUNT):
        slot = &thread_slots[i]
        if slot.ident > DELETED_IDENT and slot.scope_depth > 0 and slot.scopes[slot.scope_depth - 1] == scope:
            return slot
    return NULL


cdef Py_ssize_t slot_copy(unsigned long ident, bint context, char *out) noexcept nogil:
    # Signal safe: copies a thread's name (or context) into `out`; -1 when unknown.
    cdef ThreadSlot *slot = slot_find(ident)
    cdef unsigned int begin
    cdef Py_ssize_t length
    cdef int attempt
    if slot == NULL:
        return -1
    for attempt in range(3):
        begin = tb_seq_read_begin(&slot.seq)
        length = slot.context_length if context else slot.name_length
        if 0 <= length <= SLOT_TEXT:
            memcpy(out, <char *>slot.context if context else <char *>slot.name, length)
        if not tb_seq_read_changed(&slot.seq, begin):
            return length if slot.ident == ident else -1
    return -1


cdef void slot_set_text(ThreadSlot *slot, bint context, PyObject *text, Py_ssize_t limit) noexcept nogil:
    """Stores a bounded str (or nothing, for NULL) in a slot.  GIL held."""
    tb_seq_write_begin(&slot.seq)
    if context:
        slot.context_length = encode_bounded(text, limit, slot.context) if text != NULL else -1
    else:
        slot.name_length = encode_bounded(text, limit, slot.name) if text != NULL else -1
    tb_seq_write_end(&slot.seq)


cdef void slot_delete(ThreadSlot *slot) noexcept nogil:
    """Frees the slot of a thread that ended (its probe chain stays intact).  GIL held."""
    global slots_live
    tb_seq_write_begin(&slot.seq)
    slot.ident = DELETED_IDENT
    slot.deadline_ns = 0
    tb_seq_write_end(&slot.seq)
    slots_live -= 1
