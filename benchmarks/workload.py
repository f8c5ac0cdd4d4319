"""The process being dumped: T threads, each parked D frames deep on an Event.

Every worker recurses through `descend` D times and then waits on one shared
Event, so a dump of the process holds about T x (D + 5) frames: D of
`descend`, Event.wait and Condition.wait, and the three frames threading puts
under a thread's target.

`descend` recurses from two call sites, alternately: no two neighbouring
frames print the same (file, line, function), so no tool folds the recursion
into a "[Previous line repeated N more times]" line and every tool writes
every frame.
"""

import sys
import threading
import time

_CONDITION_WAIT = threading.Condition.wait.__code__


def descend(depth, ready, release):
    """Recurses to `depth` frames of itself, then parks on `release`."""
    if depth > 1 and depth % 2:
        return descend(depth - 1, ready, release)
    if depth > 1:
        return descend(depth - 1, ready, release)
    ready.release()
    release.wait()
    return None


class ParkedThreads:
    """A context manager: `threads` workers parked `depth` frames deep."""

    def __init__(self, threads, depth):
        self.count = threads
        self.depth = depth
        self._release = threading.Event()
        self._workers = []

    def __enter__(self):
        ready = threading.Semaphore(0)
        for number in range(self.count):
            worker = threading.Thread(target=descend, args=(self.depth, ready, self._release),
                                      name="parked-%d" % number, daemon=True)
            worker.start()
            self._workers.append(worker)
        for _ in range(self.count):
            ready.acquire()
        self._wait_until_parked()
        return self

    def __exit__(self, *exc_info):
        self._release.set()
        for worker in self._workers:
            worker.join()
        self._workers = []

    def _wait_until_parked(self, timeout=60.0):
        """Returns once every worker sits inside Condition.wait (its last frame)."""
        idents = {worker.ident for worker in self._workers}
        deadline = time.monotonic() + timeout
        while True:
            frames = sys._current_frames()
            if all(frames[ident].f_code is _CONDITION_WAIT for ident in idents):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not park within %.0f s" % timeout)
            time.sleep(0.001)


def frames_in_process():
    """How many frames every thread of the process has now, this one included."""
    total = 0
    for frame in sys._current_frames().values():
        while frame is not None:
            total += 1
            frame = frame.f_back
    return total
