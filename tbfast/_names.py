"""Thread names for the core's GIL-free dumps.

The core cannot ask `threading` for names without the GIL, so names are
recorded while it is held: every thread alive at import, then each thread as it
starts (Thread._set_native_id runs first thing in the new thread, and in
_DummyThread's constructor) and whenever a started thread is renamed.
"""

import threading


def install(core):
    core.set_main_thread(threading.main_thread().ident)

    def record(thread):
        if thread.ident is None:
            return
        if not core.record_thread(thread.ident, thread.name):
            sweep(core)
            core.record_thread(thread.ident, thread.name)

    original_set_native_id = threading.Thread._set_native_id

    def _set_native_id(self):
        original_set_native_id(self)
        record(self)

    name_property = threading.Thread.name

    def set_name(self, name):
        name_property.fset(self, name)
        record(self)

    threading.Thread._set_native_id = _set_native_id
    threading.Thread.name = property(name_property.fget, set_name, doc=name_property.__doc__)
    for thread in threading.enumerate():
        record(thread)


def sweep(core):
    """Drops dead threads from the core's table (it keeps names and contexts of the live)."""
    core.sweep_threads([thread.ident for thread in threading.enumerate()])
