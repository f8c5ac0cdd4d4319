/* Per-CPython-version access to thread states, frames, code objects and the GIL.
 *
 * Everything the core knows about interpreter internals lives here, one small
 * function per concept, with the version differences inside.  Every function is
 * async-signal-safe: it only reads memory, never allocates, locks or calls back
 * into the interpreter, so the GIL-free walker may call it from a signal handler
 * or a native thread.  Supported: CPython 3.11 to 3.15 with the GIL
 * (free-threaded builds get the pure-Python fallback instead).  From 3.13 on,
 * tb_layout_mismatch() checks at import that the running interpreter lays out
 * every field read here as these headers do (CPython moved fields inside the
 * 3.14 series, and a cached wheel may have been built against other headers).
 */
#ifndef TBCORE_PYTHON_H
#define TBCORE_PYTHON_H

#include <Python.h>

#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x03100000
#  error "tbfast's core supports CPython 3.11 to 3.15"
#endif
#ifdef Py_GIL_DISABLED
#  error "tbfast's core needs the GIL; free-threaded builds use the pure-Python fallback"
#endif

/* The frame and GIL layouts are only in the internal headers. */
#ifndef Py_BUILD_CORE
#  define Py_BUILD_CORE 1
#  define TBCORE_DEFINED_BUILD_CORE
#endif
/* Python.h, included first without Py_BUILD_CORE, defined the public spelling;
   the internal headers define their own. */
#undef _PyGC_FINALIZED
#include <internal/pycore_frame.h>   /* 3.14+: includes pycore_interpframe_structs.h */
#include <internal/pycore_interp.h>
#include <internal/pycore_moduleobject.h>  /* PyModuleObject: faulthandler's extension list */
#include <internal/pycore_runtime.h>    /* _PyRuntime: the 3.11 GIL, 3.13+ debug offsets */
#if PY_VERSION_HEX >= 0x030E0000
#  include <internal/pycore_code.h>      /* _PyCode_CODE, CO_FAST_*: no longer via pycore_frame.h */
#  include <internal/pycore_stackref.h>
#endif
#ifdef TBCORE_DEFINED_BUILD_CORE
#  undef Py_BUILD_CORE
#  undef TBCORE_DEFINED_BUILD_CORE
#endif

#include <stdint.h>
#include <string.h>
#include <time.h>

/* The walk reads the interpreter's memory while other threads change and free it:
   its readers below may read a freed thread state, or follow a stale pointer that
   is garbage, and are guarded against the faults that follows (_guard.pxi).  The
   sanitizers (scripts/sanitize) would report such a read before any fault: they
   check only tbfast's own memory, and not these readers' pointers. */
#if defined(__SANITIZE_ADDRESS__)
#  define TB_RACY_SANITIZED 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define TB_RACY_SANITIZED 1
#  endif
#endif
#ifdef TB_RACY_SANITIZED
#  define TB_RACY __attribute__((no_sanitize("address", "alignment", "null", "pointer-overflow")))
#else
#  define TB_RACY
#endif

typedef _PyInterpreterFrame tb_frame;

/* Signal safe: the object a frame slot refers to, or NULL.  3.14+ keeps tagged
   _PyStackRefs there: the low two bits say how the reference is counted (cleared
   here), or mark a tagged int or an invalid slot, which are no objects. */
#if PY_VERSION_HEX >= 0x030E0000
static inline PyObject *tb_stackref_object(_PyStackRef ref) {
    const uintptr_t tag_bits = 3, int_tag = 3, invalid_tag = 2;
    uintptr_t bits = ref.bits;
    if ((bits & tag_bits) == int_tag || (bits & tag_bits) == invalid_tag) {
        return NULL;
    }
    return (PyObject *)(bits & ~tag_bits);
}
#else
static inline PyObject *tb_stackref_object(PyObject *ref) {
    return ref;
}
#endif

/* Signal safe: reads interp->threads.head.  3.11 makes a new thread state the
   head before it fills it in (its next link included, NULL until then): wait
   until it is filled in, spinning, then sleeping (its thread may have been
   preempted), at most about 20 ms (a handler may have interrupted that thread). */
static inline TB_RACY PyThreadState *tb_first_thread(PyInterpreterState *interp) {
    PyThreadState *head = PyInterpreterState_ThreadHead(interp);
#if PY_VERSION_HEX < 0x030C0000
    const struct timespec millisecond = {0, 1000000};
    for (int tries = 0; head != NULL && tries < 10000 + 20; tries++) {
        if (((volatile PyThreadState *)head)->_initialized) {
            break;
        }
        if (tries >= 10000) {
            nanosleep(&millisecond, NULL);  /* async-signal-safe */
        }
        head = ((volatile struct _is *)interp)->threads.head;
    }
#endif
    return head;
}

/* Signal safe: reads tstate->next. */
static inline TB_RACY PyThreadState *tb_next_thread(PyThreadState *tstate) {
    return PyThreadState_Next(tstate);
}

/* Signal safe: the ident that threading.get_ident() returns for this thread. */
static inline TB_RACY unsigned long tb_thread_ident(PyThreadState *tstate) {
    return tstate->thread_id;
}

/* Signal safe: the kernel's thread id (what threading.get_native_id() returns). */
static inline TB_RACY unsigned long tb_thread_native_id(PyThreadState *tstate) {
    return tstate->native_thread_id;
}

/* Signal safe: the innermost frame of a thread, complete or not, or NULL. */
static inline TB_RACY tb_frame *tb_top_frame(PyThreadState *tstate) {
#if PY_VERSION_HEX >= 0x030D0000
    return tstate->current_frame;
#else
    _PyCFrame *cframe = tstate->cframe;
    return cframe ? cframe->current_frame : NULL;
#endif
}

/* Signal safe: the caller's frame, or NULL. */
static inline TB_RACY tb_frame *tb_previous_frame(tb_frame *frame) {
    return frame->previous;
}

/* Signal safe: starts loading the memory below a frame, where its callers' frames
   usually are (a thread's frames are pushed upwards on its data stack), so a walk
   down the chain does not wait on one cache miss per frame.  A prefetch never faults;
   the address is computed as an integer, since a stale frame pointer may be garbage
   near 0, where pointer arithmetic would overflow (undefined behaviour). */
static inline TB_RACY void tb_prefetch_callers(tb_frame *frame) {
    uintptr_t below = (uintptr_t)frame;
    for (int line = 1; line <= 8; line++) {
        __builtin_prefetch((const void *)(below - 64 * line));
    }
}

/* Signal safe, but reads the thread state: call it where its other fields are read.
   The first step of loading a thread's top frame ahead of its walk, so the misses of
   many threads overlap: starts loading what tb_top_frame reads after the thread
   state (3.11, 3.12: the cframe on the thread's C stack; 3.13: the frame itself). */
static inline TB_RACY void tb_prefetch_thread(PyThreadState *tstate) {
#if PY_VERSION_HEX >= 0x030D0000
    __builtin_prefetch(tstate->current_frame);
#else
    __builtin_prefetch(tstate->cframe);
#endif
}

/* Signal safe, but reads the thread state and cframe: call it under the fault guard.
   The second step: starts loading the top frame and its callers. */
static inline TB_RACY void tb_prefetch_top_frame(PyThreadState *tstate) {
    tb_frame *frame = tb_top_frame(tstate);
    if (frame != NULL) {
        __builtin_prefetch(frame);
        __builtin_prefetch((const char *)frame + 64);
        tb_prefetch_callers(frame);
    }
}

/* Signal safe: Py_TYPE, as a racy reader: CPython's inline Py_TYPE is compiled with
   the sanitizers' checks, which a garbage pointer would trip before the guard. */
static inline TB_RACY PyTypeObject *tb_type_of(PyObject *object) {
    return object->ob_type;
}

/* Signal safe: Py_SIZE of a tuple or bytes, as a racy reader (see tb_type_of). */
static inline TB_RACY Py_ssize_t tb_size_of(PyObject *object) {
    return ((PyVarObject *)object)->ob_size;
}

/* Signal safe: the frame's code object, or NULL when the frame runs none
   (3.13+ frames may hold None in f_executable; 3.15's base frame holds none). */
static inline TB_RACY PyCodeObject *tb_frame_code(tb_frame *frame) {
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *executable = tb_stackref_object(frame->f_executable);
#else
    PyObject *executable = (PyObject *)frame->f_code;
#endif
    if (executable == NULL || tb_type_of(executable) != &PyCode_Type) {
        return NULL;
    }
    return (PyCodeObject *)executable;
}

/* Signal safe: the offset in bytes of the instruction the frame is at. */
static inline TB_RACY int tb_frame_lasti_bytes(tb_frame *frame, PyCodeObject *code) {
#if PY_VERSION_HEX >= 0x030D0000
    _Py_CODEUNIT *instr = frame->instr_ptr;
#else
    _Py_CODEUNIT *instr = frame->prev_instr;
#endif
    return (int)(instr - _PyCode_CODE(code)) * (int)sizeof(_Py_CODEUNIT);
}

/* Signal safe: true for frames Python's own tracebacks leave out: the C-stack
   shims of 3.12 and 3.13, the interpreter's entry, trampoline and base frames of
   3.14+, and frames whose function has not started yet (the same test as
   _PyFrame_IsIncomplete, which sys._current_frames() applies). */
static inline TB_RACY int tb_frame_is_hidden(tb_frame *frame, PyCodeObject *code) {
#if PY_VERSION_HEX >= 0x030E0000
    if (frame->owner >= FRAME_OWNED_BY_INTERPRETER) {
        return 1;
    }
#elif PY_VERSION_HEX >= 0x030C0000
    if (frame->owner == FRAME_OWNED_BY_CSTACK) {
        return 1;
    }
#endif
    if (code == NULL) {
        return 1;
    }
    if (frame->owner == FRAME_OWNED_BY_GENERATOR) {
        return 0;
    }
    return tb_frame_lasti_bytes(frame, code) <
           code->_co_firsttraceable * (int)sizeof(_Py_CODEUNIT);
}

/* Native dumps pair each _PyEval_EvalFrameDefault C frame with the Python frames
   that one call of it runs, innermost first.  Signal safe: whether `frame` is the
   first its call ran (3.11 marks it; its caller belongs to the next call down). */
static inline TB_RACY int tb_frame_is_eval_entry(tb_frame *frame) {
#if PY_VERSION_HEX < 0x030C0000
    /* As a byte: a frame popped under the walk may hold any value there, and a
       bool that is neither 0 nor 1 is undefined behaviour (UBSan says so). */
    return *(const volatile unsigned char *)&frame->is_entry != 0;
#else
    (void)frame;
    return 0;
#endif
}

/* Signal safe: whether `frame` is the shim a call of _PyEval_EvalFrameDefault
   pushes under the frames it runs (3.12+; 3.14 also uses such frames as
   trampolines, which then split one call's frames in two). */
static inline TB_RACY int tb_frame_is_eval_shim(tb_frame *frame) {
#if PY_VERSION_HEX >= 0x030E0000
    return frame->owner == FRAME_OWNED_BY_INTERPRETER;
#elif PY_VERSION_HEX >= 0x030C0000
    return frame->owner == FRAME_OWNED_BY_CSTACK;
#else
    (void)frame;
    return 0;
#endif
}

/* Signal safe: the line a frame is at (PyCode_Addr2Line only decodes the
   line table), or -1 when unknown. */
static inline TB_RACY int tb_frame_line(tb_frame *frame, PyCodeObject *code) {
    return PyCode_Addr2Line(code, tb_frame_lasti_bytes(frame, code));
}

/* Signal safe: the interpreter's GIL (3.11: the runtime's), or NULL. */
static inline TB_RACY struct _gil_runtime_state *tb_gil(PyInterpreterState *interp) {
#if PY_VERSION_HEX >= 0x030C0000
    return interp->ceval.gil;
#else
    (void)interp;
    return &_PyRuntime.ceval.gil;
#endif
}

/* Signal safe: the thread state that holds the GIL now, or NULL if it is free. */
static inline TB_RACY PyThreadState *tb_gil_holder(PyInterpreterState *interp) {
    struct _gil_runtime_state *gil = tb_gil(interp);
    if (gil == NULL) {
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030D0000
    int locked = __atomic_load_n(&gil->locked, __ATOMIC_RELAXED);
    PyThreadState *holder = __atomic_load_n(&gil->last_holder, __ATOMIC_RELAXED);
#else
    int locked = _Py_atomic_load_relaxed(&gil->locked);
    PyThreadState *holder = (PyThreadState *)_Py_atomic_load_relaxed(&gil->last_holder);
#endif
    return locked > 0 ? holder : NULL;
}

/* Signal safe: the addresses a thread waiting for the GIL sleeps on, [*low, *high):
   the GIL's condition variable and its mutex (take_gil waits on the one, holding
   the other), each a pthread object whose futex words lie inside it; the same
   layout in 3.11 to 3.15.  The switch condition that a thread which just dropped
   the GIL waits on comes after them: such a thread is not waiting for the GIL. */
static inline TB_RACY void tb_gil_wait_range(PyInterpreterState *interp, uintptr_t *low,
                                             uintptr_t *high) {
    struct _gil_runtime_state *gil = tb_gil(interp);
    *low = gil != NULL ? (uintptr_t)&gil->cond : 0;
    *high = gil != NULL ? (uintptr_t)(&gil->mutex + 1) : 0;
}

/* Signal safe: whether a thread asked for the GIL and waits for it, as its thread
   state says: 3.15's gil_requested; earlier versions keep no such flag (0), and
   the walk asks the kernel what the thread sleeps on (tb_gil_wait_range). */
static inline TB_RACY int tb_thread_requests_gil(PyThreadState *tstate) {
#if PY_VERSION_HEX >= 0x030F0000
    return __atomic_load_n(&tstate->gil_requested, __ATOMIC_RELAXED) != 0;
#else
    (void)tstate;
    return 0;
#endif
}

/* ---- faulthandler's format, as each version writes it (Python/traceback.c) ---- */

#define TB_FAULTHANDLER_ELLIPSIS (PY_VERSION_HEX < 0x030D0000)       /* "  ..." past 100 frames */
#define TB_FAULTHANDLER_COUNTS_HIDDEN (PY_VERSION_HEX >= 0x030E0000)  /* trampolines count */
#define TB_FAULTHANDLER_THREAD_NAMES (PY_VERSION_HEX >= 0x030E0000)
#define TB_FAULTHANDLER_PACKAGE_FILTER (PY_VERSION_HEX >= 0x030F0000)  /* json.x is stdlib */

/* Signal safe: whether the interpreter is in a garbage collection. */
static inline TB_RACY int tb_gc_collecting(PyInterpreterState *interp) {
    return interp->gc.collecting;
}

/* Signal safe: sys.modules and sys.__dict__, as the interpreter holds them. */
static inline TB_RACY PyObject *tb_modules_dict(PyInterpreterState *interp) {
#if PY_VERSION_HEX >= 0x030C0000
    return interp->imports.modules;
#else
    return interp->modules;
#endif
}

static inline TB_RACY PyObject *tb_sys_dict(PyInterpreterState *interp) {
    return interp->sysdict;
}

/* Signal safe: CPython's _PyModule_IsExtension, which is not exported: a module
   made from a definition with methods, as C extensions are. */
static inline TB_RACY int tb_is_extension_module(PyObject *object) {
    if (!PyModule_Check(object)) {
        return 0;
    }
#if PY_VERSION_HEX >= 0x030F0000
    PyModuleObject *module = (PyModuleObject *)object;
    PyModuleDef *definition = module->md_token_is_def ? (PyModuleDef *)module->md_token : NULL;
#else
    PyModuleDef *definition = ((PyModuleObject *)object)->md_def;
#endif
    return definition != NULL && definition->m_methods != NULL;
}

/* Signal safe: the next str in a set's table from *position on (CPython's
   _PySet_NextEntry, without its references), or NULL at the end. */
static inline TB_RACY PyObject *tb_set_next_str(PyObject *set, Py_ssize_t *position) {
    PySetObject *table = (PySetObject *)set;
    while (*position <= table->mask) {
        PyObject *key = table->table[(*position)++].key;
        if (key != NULL && PyUnicode_Check(key)) {  /* the dummy of a removed key is no str */
            return key;
        }
    }
    return NULL;
}

/* ---- locals, for dumps that show them: read, never run (no __repr__) ---- */

#ifndef CO_FAST_HIDDEN
#  define CO_FAST_HIDDEN 0  /* 3.12+: the inlined comprehension's own variables */
#endif

/* Signal safe: how many local variables (arguments, locals, cells, free) a code has. */
static inline TB_RACY int tb_code_local_count(PyCodeObject *code) {
    return code->co_nlocalsplus;
}

/* Signal safe: the name of local variable i (a str), or NULL. */
static inline TB_RACY PyObject *tb_code_local_name(PyCodeObject *code, int i) {
    PyObject *names = code->co_localsplusnames;
    if (names == NULL || tb_type_of(names) != &PyTuple_Type || i >= tb_size_of(names)) {
        return NULL;
    }
    return ((PyTupleObject *)names)->ob_item[i];
}

/* Signal safe: the value of local variable i, a cell's content for cells and free
   variables; NULL when unbound, or hidden (a comprehension's, as f_locals hides it). */
static inline TB_RACY PyObject *tb_frame_local(tb_frame *frame, PyCodeObject *code, int i) {
    PyObject *kinds = code->co_localspluskinds;
    if (kinds == NULL || tb_type_of(kinds) != &PyBytes_Type || i >= tb_size_of(kinds)) {
        return NULL;
    }
    int kind = (unsigned char)((PyBytesObject *)kinds)->ob_sval[i];
    PyObject *value = tb_stackref_object(frame->localsplus[i]);
    if (kind & CO_FAST_HIDDEN) {
        return NULL;
    }
    if (value != NULL && (kind & (CO_FAST_CELL | CO_FAST_FREE)) && tb_type_of(value) == &PyCell_Type) {
        value = ((PyCellObject *)value)->ob_ref;
    }
    return value;
}

/* Signal safe: an exact int that fits in one internal digit (|v| < 2**30) into *value;
   0 for any other int, whose digits would need arithmetic to print. */
static inline TB_RACY int tb_small_int(PyObject *number, long long *value) {
#if PY_VERSION_HEX >= 0x030C0000
    if (!PyUnstable_Long_IsCompact((PyLongObject *)number)) {
        return 0;
    }
    *value = (long long)PyUnstable_Long_CompactValue((PyLongObject *)number);
#else
    Py_ssize_t size = tb_size_of(number);
    if (size < -1 || size > 1) {
        return 0;
    }
    *value = size == 0 ? 0 : size * (long long)((PyLongObject *)number)->ob_digit[0];
#endif
    return 1;
}

/* What a local's value is, for the types a dump shows without running code. */
enum tb_value_kind { TB_VALUE_OTHER, TB_VALUE_NONE, TB_VALUE_BOOL, TB_VALUE_INT, TB_VALUE_FLOAT,
                     TB_VALUE_STR, TB_VALUE_BYTES };

/* Signal safe: exact types only: a subclass could print itself differently. */
static inline TB_RACY int tb_value_kind(PyObject *value) {
    PyTypeObject *type = tb_type_of(value);
    if (value == Py_None) return TB_VALUE_NONE;
    if (type == &PyBool_Type) return TB_VALUE_BOOL;
    if (type == &PyLong_Type) return TB_VALUE_INT;
    if (type == &PyFloat_Type) return TB_VALUE_FLOAT;
    if (type == &PyUnicode_Type) return TB_VALUE_STR;
    if (type == &PyBytes_Type) return TB_VALUE_BYTES;
    return TB_VALUE_OTHER;
}

/* Signal safe: the type's name, as repr's <... object> shows it. */
static inline TB_RACY const char *tb_type_name(PyObject *object) {
    return tb_type_of(object)->tp_name;
}

/* ---- the layout check: these headers against the running interpreter ---- */

#if PY_VERSION_HEX >= 0x030D0000
typedef struct {
    const char *field;        /* as _Py_DebugOffsets names it */
    uint64_t expected;        /* where these headers put it */
    const uint64_t *actual;   /* where the running interpreter says it is */
} tb_layout_field;

#define TB_LAYOUT(section, name, offset) \
    {#section "." #name, (uint64_t)(offset), &_PyRuntime.debug_offsets.section.name}

/* Every field the walk reads that _PyRuntime.debug_offsets lists. */
static const tb_layout_field tb_layout_fields[] = {
    TB_LAYOUT(interpreter_state, threads_head, offsetof(PyInterpreterState, threads.head)),
    TB_LAYOUT(interpreter_state, ceval_gil, offsetof(PyInterpreterState, ceval.gil)),
    TB_LAYOUT(interpreter_state, gil_runtime_state_locked, offsetof(PyInterpreterState, _gil.locked)),
    TB_LAYOUT(interpreter_state, gil_runtime_state_holder, offsetof(PyInterpreterState, _gil.last_holder)),
    TB_LAYOUT(thread_state, next, offsetof(PyThreadState, next)),
    TB_LAYOUT(thread_state, current_frame, offsetof(PyThreadState, current_frame)),
    TB_LAYOUT(thread_state, thread_id, offsetof(PyThreadState, thread_id)),
    TB_LAYOUT(thread_state, native_thread_id, offsetof(PyThreadState, native_thread_id)),
    TB_LAYOUT(interpreter_frame, previous, offsetof(_PyInterpreterFrame, previous)),
    TB_LAYOUT(interpreter_frame, executable, offsetof(_PyInterpreterFrame, f_executable)),
    TB_LAYOUT(interpreter_frame, instr_ptr, offsetof(_PyInterpreterFrame, instr_ptr)),
    TB_LAYOUT(interpreter_frame, localsplus, offsetof(_PyInterpreterFrame, localsplus)),
    TB_LAYOUT(interpreter_frame, owner, offsetof(_PyInterpreterFrame, owner)),
    TB_LAYOUT(code_object, filename, offsetof(PyCodeObject, co_filename)),
    TB_LAYOUT(code_object, name, offsetof(PyCodeObject, co_name)),
    TB_LAYOUT(code_object, linetable, offsetof(PyCodeObject, co_linetable)),
    TB_LAYOUT(code_object, firstlineno, offsetof(PyCodeObject, co_firstlineno)),
    TB_LAYOUT(code_object, localsplusnames, offsetof(PyCodeObject, co_localsplusnames)),
    TB_LAYOUT(code_object, localspluskinds, offsetof(PyCodeObject, co_localspluskinds)),
    TB_LAYOUT(code_object, co_code_adaptive, offsetof(PyCodeObject, co_code_adaptive)),
    TB_LAYOUT(pyobject, ob_type, offsetof(PyObject, ob_type)),
    TB_LAYOUT(type_object, tp_name, offsetof(PyTypeObject, tp_name)),
    TB_LAYOUT(tuple_object, ob_item, offsetof(PyTupleObject, ob_item)),
    TB_LAYOUT(tuple_object, ob_size, offsetof(PyTupleObject, ob_base.ob_size)),
    TB_LAYOUT(bytes_object, ob_size, offsetof(PyBytesObject, ob_base.ob_size)),
    TB_LAYOUT(bytes_object, ob_sval, offsetof(PyBytesObject, ob_sval)),
    TB_LAYOUT(unicode_object, state, offsetof(PyASCIIObject, state)),
    TB_LAYOUT(unicode_object, length, offsetof(PyASCIIObject, length)),
    TB_LAYOUT(unicode_object, asciiobject_size, sizeof(PyASCIIObject)),
    TB_LAYOUT(float_object, ob_fval, offsetof(PyFloatObject, ob_fval)),
    TB_LAYOUT(long_object, lv_tag, offsetof(PyLongObject, long_value.lv_tag)),
    TB_LAYOUT(long_object, ob_digit, offsetof(PyLongObject, long_value.ob_digit)),
};
#endif

/* Not on the dump path (import time, with the GIL).  NULL when the running
   interpreter lays out every field the walk reads as these headers do; else a
   sentence naming the first field that differs, in `message`.  `skewed` names a
   field whose expected offset is taken as 8 more (a test hook), or is NULL. */
static inline const char *tb_layout_mismatch(const char *skewed, char *message, size_t size) {
#if PY_VERSION_HEX >= 0x030D0000
    const _Py_DebugOffsets *table = &_PyRuntime.debug_offsets;
    if (memcmp(table->cookie, "xdebugpy", 8) != 0) {
        snprintf(message, size, "_PyRuntime.debug_offsets has no xdebugpy cookie");
        return message;
    }
    if ((table->version >> 16) != (PY_VERSION_HEX >> 16)) {
        snprintf(message, size, "the interpreter is version %#llx, the core was built for %#x",
                 (unsigned long long)table->version, (unsigned)PY_VERSION_HEX);
        return message;
    }
    if (table->free_threaded) {
        snprintf(message, size, "the interpreter is free-threaded");
        return message;
    }
    for (size_t i = 0; i < sizeof(tb_layout_fields) / sizeof(tb_layout_fields[0]); i++) {
        const tb_layout_field *entry = &tb_layout_fields[i];
        uint64_t expected = entry->expected;
        if (skewed != NULL && strcmp(skewed, entry->field) == 0) {
            expected += 8;
        }
        if (*entry->actual != expected) {
            snprintf(message, size, "%s is at %llu in CPython %#llx, the core was built for %llu",
                     entry->field, (unsigned long long)*entry->actual,
                     (unsigned long long)table->version, (unsigned long long)expected);
            return message;
        }
    }
#else
    (void)skewed, (void)message, (void)size;  /* 3.11 and 3.12 publish no offsets table */
#endif
    return NULL;
}

#endif /* TBCORE_PYTHON_H */
