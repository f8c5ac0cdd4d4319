/* Per-CPython-version access to thread states, frames, code objects and the GIL.
 *
 * Everything the core knows about interpreter internals lives here, one small
 * function per concept, with the version differences inside.  Every function is
 * async-signal-safe: it only reads memory, never allocates, locks or calls back
 * into the interpreter, so the GIL-free walker may call it from a signal handler
 * or a native thread.  Supported: CPython 3.11, 3.12 and 3.13 with the GIL
 * (free-threaded builds get the pure-Python fallback instead).
 */
#ifndef TBCORE_PYTHON_H
#define TBCORE_PYTHON_H

#include <Python.h>

#if PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030E0000
#  error "tbfast's core supports CPython 3.11 to 3.13"
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
#include <internal/pycore_frame.h>
#if PY_VERSION_HEX >= 0x030C0000
#  include <internal/pycore_interp.h>
#else
#  include <internal/pycore_runtime.h>
#endif
#ifdef TBCORE_DEFINED_BUILD_CORE
#  undef Py_BUILD_CORE
#  undef TBCORE_DEFINED_BUILD_CORE
#endif

#include <time.h>

typedef _PyInterpreterFrame tb_frame;

/* Signal safe: reads interp->threads.head.  3.11 makes a new thread state the
   head before it fills it in (its next link included, NULL until then): wait
   until it is filled in, spinning, then sleeping (its thread may have been
   preempted), at most about 20 ms (a handler may have interrupted that thread). */
static inline PyThreadState *tb_first_thread(PyInterpreterState *interp) {
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
static inline PyThreadState *tb_next_thread(PyThreadState *tstate) {
    return PyThreadState_Next(tstate);
}

/* Signal safe: the ident that threading.get_ident() returns for this thread. */
static inline unsigned long tb_thread_ident(PyThreadState *tstate) {
    return tstate->thread_id;
}

/* Signal safe: the kernel's thread id (what threading.get_native_id() returns). */
static inline unsigned long tb_thread_native_id(PyThreadState *tstate) {
    return tstate->native_thread_id;
}

/* Signal safe: the innermost frame of a thread, complete or not, or NULL. */
static inline tb_frame *tb_top_frame(PyThreadState *tstate) {
#if PY_VERSION_HEX >= 0x030D0000
    return tstate->current_frame;
#else
    _PyCFrame *cframe = tstate->cframe;
    return cframe ? cframe->current_frame : NULL;
#endif
}

/* Signal safe: the caller's frame, or NULL. */
static inline tb_frame *tb_previous_frame(tb_frame *frame) {
    return frame->previous;
}

/* Signal safe: the frame's code object, or NULL when the frame runs none
   (3.13 frames may hold None in f_executable). */
static inline PyCodeObject *tb_frame_code(tb_frame *frame) {
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *executable = frame->f_executable;
#else
    PyObject *executable = (PyObject *)frame->f_code;
#endif
    if (executable == NULL || Py_TYPE(executable) != &PyCode_Type) {
        return NULL;
    }
    return (PyCodeObject *)executable;
}

/* Signal safe: the offset in bytes of the instruction the frame is at. */
static inline int tb_frame_lasti_bytes(tb_frame *frame, PyCodeObject *code) {
#if PY_VERSION_HEX >= 0x030D0000
    _Py_CODEUNIT *instr = frame->instr_ptr;
#else
    _Py_CODEUNIT *instr = frame->prev_instr;
#endif
    return (int)(instr - _PyCode_CODE(code)) * (int)sizeof(_Py_CODEUNIT);
}

/* Signal safe: true for frames Python's own tracebacks leave out: the C-stack
   shims of 3.12+ and frames whose function has not started yet (the same test
   as _PyFrame_IsIncomplete, which sys._current_frames() applies). */
static inline int tb_frame_is_hidden(tb_frame *frame, PyCodeObject *code) {
#if PY_VERSION_HEX >= 0x030C0000
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

/* Signal safe: the line a frame is at (PyCode_Addr2Line only decodes the
   line table), or -1 when unknown. */
static inline int tb_frame_line(tb_frame *frame, PyCodeObject *code) {
    return PyCode_Addr2Line(code, tb_frame_lasti_bytes(frame, code));
}

/* Signal safe: the thread state that holds the GIL now, or NULL if it is free. */
static inline PyThreadState *tb_gil_holder(PyInterpreterState *interp) {
#if PY_VERSION_HEX >= 0x030C0000
    struct _gil_runtime_state *gil = interp->ceval.gil;
#else
    (void)interp;
    struct _gil_runtime_state *gil = &_PyRuntime.ceval.gil;
#endif
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

#endif /* TBCORE_PYTHON_H */
