/* A C extension for the native-frame and thread-state tests: C code that holds the
   GIL where no Python code runs, in named functions the dumps must show.

   spin(seconds)         the calling thread spins in C, holding the GIL:
                         tbnative_spin_outer -> tbnative_spin_middle -> tbnative_spin_inner
   start_gil_holder(s)   a C thread with no Python frame that takes the GIL
                         (PyGILState_Ensure) and sleeps in tbnative_sleep_holding_gil
   start_foreign(s)      a C thread that never touches Python, sleeping in
                         tbnative_foreign_sleep, named "tbn-foreign"
   join()                waits for the threads started, each bounded by its seconds

   Built by tests/nativekit.py with frame pointers and no inlining, so that every
   named function is a frame of its own. */

#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <pthread.h>
#include <time.h>

#define NOINLINE __attribute__((noinline))

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static volatile unsigned long tbnative_counter;

NOINLINE void tbnative_spin_inner(double until) {
    while (now() < until) {
        tbnative_counter++;
    }
}

NOINLINE void tbnative_spin_middle(double until) {
    tbnative_spin_inner(until);
    __asm__ volatile("" ::: "memory");  /* not a tail call: this frame stays */
}

NOINLINE void tbnative_spin_outer(double until) {
    tbnative_spin_middle(until);
    __asm__ volatile("" ::: "memory");
}

static PyObject *spin(PyObject *module, PyObject *arg) {
    double seconds = PyFloat_AsDouble(arg);
    if (seconds < 0 || seconds > 60) {
        PyErr_SetString(PyExc_ValueError, "seconds must be in [0, 60]");
        return NULL;
    }
    tbnative_spin_outer(now() + seconds);
    Py_RETURN_NONE;
}

NOINLINE void tbnative_nap(double until) {
    struct timespec step = {0, 5 * 1000 * 1000};
    while (now() < until) {
        nanosleep(&step, NULL);
    }
}

NOINLINE void tbnative_sleep_holding_gil(double until) {
    tbnative_nap(until);
    __asm__ volatile("" ::: "memory");
}

static void *gil_holder(void *argument) {
    double until = now() + *(double *)argument;
    /* Its starter first gets a moment to say so (a print needs the GIL). */
    tbnative_nap(now() + 0.05);
    PyGILState_STATE state = PyGILState_Ensure();
    tbnative_sleep_holding_gil(until);
    PyGILState_Release(state);
    return NULL;
}

NOINLINE void tbnative_foreign_sleep(double until) {
    tbnative_nap(until);
    __asm__ volatile("" ::: "memory");
}

static void *foreign(void *argument) {
    tbnative_foreign_sleep(now() + *(double *)argument);
    return NULL;
}

#define MAX_THREADS 8
static pthread_t threads[MAX_THREADS];
static double durations[MAX_THREADS];
static int started;

static PyObject *start(PyObject *arg, void *(*run)(void *), const char *name) {
    double seconds = PyFloat_AsDouble(arg);
    if (seconds < 0 || seconds > 60) {
        PyErr_SetString(PyExc_ValueError, "seconds must be in [0, 60]");
        return NULL;
    }
    if (started == MAX_THREADS) {
        PyErr_SetString(PyExc_RuntimeError, "too many threads");
        return NULL;
    }
    durations[started] = seconds;
    if (pthread_create(&threads[started], NULL, run, &durations[started]) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_create failed");
        return NULL;
    }
    pthread_setname_np(threads[started], name);
    return PyLong_FromUnsignedLong((unsigned long)threads[started++]);
}

static PyObject *start_gil_holder(PyObject *module, PyObject *arg) {
    return start(arg, gil_holder, "tbn-gil-holder");
}

static PyObject *start_foreign(PyObject *module, PyObject *arg) {
    return start(arg, foreign, "tbn-foreign");
}

static PyObject *join(PyObject *module, PyObject *unused) {
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < started; i++) {
        pthread_join(threads[i], NULL);
    }
    started = 0;
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"spin", spin, METH_O, "spin(seconds): spin in C holding the GIL"},
    {"start_gil_holder", start_gil_holder, METH_O,
     "start_gil_holder(seconds) -> ident: a C thread that holds the GIL, with no Python frame"},
    {"start_foreign", start_foreign, METH_O,
     "start_foreign(seconds) -> ident: a C thread Python never knew"},
    {"join", join, METH_NOARGS, "join(): waits for the threads started"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "tbnative", NULL, -1, methods};

PyMODINIT_FUNC PyInit_tbnative(void) {
    return PyModule_Create(&module);
}
