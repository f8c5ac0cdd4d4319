"""The dumpers compared: tbfast's two paths and three peers.

Each tool is bound to one fd and gives back a function of no arguments that
writes one dump of every thread to that fd.  Tools never print the current
frame specially: what they write is what a user of each one would get.
"""

import faulthandler
import os
import signal
import sys
import threading
import traceback

import tbfast


class Tool:
    """A name for the tables, and `bind(fd)`: the no-argument dump function."""

    name = ""
    label = ""
    frame_prefix = b'  File "'  # how each frame's line starts in the output
    marker = ""  # a line start the readers count: once a dump, or once a thread

    def bind(self, fd):
        raise NotImplementedError

    def count_frames(self, output):
        return sum(1 for line in output.splitlines() if line.startswith(self.frame_prefix))


class TbfastCore(Tool):
    name = "tbfast"
    label = "tbfast dump_traceback (GIL held for the walk)"
    marker = "tbfast dump: pid="

    def bind(self, fd):
        def dump():
            tbfast.dump_traceback(fd, format="text")
        return dump


class TbfastSignal(Tool):
    """The registered C-level handler, run by SIGUSR1 sent to the main thread.

    The kernel runs the handler as pthread_kill() returns, in this same
    thread, so the time until it returns is the dump's whole round trip.
    One handler serves every sink: the dump function has a `prepare()`, which
    the benchmark calls untimed before each dump, pointing the handler at its fd.
    (tbfast.register() takes only signals that signal.Signals names, so the
    real-time signals can't give each sink a signal of its own.)
    """

    name = "tbfast-signal"
    label = "tbfast GIL-free: C handler of SIGUSR1, signal.pthread_kill(main thread)"
    marker = "tbfast dump: pid="
    signum = signal.SIGUSR1

    def bind(self, fd):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("the signal tool runs in the main thread")
        main = threading.main_thread().ident

        def dump():
            signal.pthread_kill(main, self.signum)

        def prepare():
            tbfast.register(self.signum, fd)

        dump.prepare = prepare
        prepare()
        return dump


class Faulthandler(Tool):
    name = "faulthandler"
    label = "faulthandler.dump_traceback(fd, all_threads=True)"
    marker = "(most recent call first):"  # once a thread: with over 100 threads its
    # dump leaves out the oldest ones, the current (main) thread among them

    def bind(self, fd):
        def dump():
            faulthandler.dump_traceback(fd, all_threads=True)
        return dump


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class TracebackModule(Tool):
    """sys._current_frames() + traceback.format_stack per thread, one write."""

    name = "traceback"
    label = "sys._current_frames() + traceback.format_stack, one os.write"
    marker = "*** traceback module dump ***"

    def bind(self, fd):
        def dump():
            chunks = [self.marker + "\n"]
            for ident, frame in sys._current_frames().items():
                chunks.append("Thread 0x%016x (most recent call last):\n" % ident)
                chunks.extend(traceback.format_stack(frame))
                chunks.append("\n")
            write_all(fd, "".join(chunks).encode("utf-8", "backslashreplace"))
        return dump


class UwsgiStyle(Tool):
    """uWSGI's tracebacker lines from traceback.extract_stack, one write.

    uWSGI itself writes each frame with its own writev() and looks the thread
    name up with threading.enumerate() for every frame; this is the same text
    built the cheap way, so it is a lower bound for uWSGI.
    """

    name = "uwsgi-style"
    label = "sys._current_frames() + traceback.extract_stack, uWSGI lines, one os.write"
    frame_prefix = b"thread_id = "
    marker = "*** uWSGI Python tracebacker output ***"

    def bind(self, fd):
        def dump():
            names = {thread.ident: thread.name for thread in threading.enumerate()}
            lines = [self.marker + "\n\n"]
            for ident, frame in sys._current_frames().items():
                name = names.get(ident, "<UnnamedPythonThread>")
                for entry in traceback.extract_stack(frame):
                    lines.append("thread_id = %s filename = %s lineno = %d function = %s line = %s\n"
                                 % (name, entry.filename, entry.lineno, entry.name, entry.line or ""))
                lines.append("\n")
            write_all(fd, "".join(lines).encode("utf-8", "backslashreplace"))
        return dump


def all_tools():
    return [TbfastCore(), TbfastSignal(), Faulthandler(), TracebackModule(), UwsgiStyle()]
