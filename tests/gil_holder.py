"""A worker whose main thread holds the GIL in C, with tbfast's handler on SIGUSR1.

python gil_holder.py sleep|regex|sum [chain]
Prints "ready" on stderr, then the dump arrives as JSON on stdout when signalled.
"""

import ctypes
import itertools
import re
import signal
import sys
import threading

import tbfast

helper_release = threading.Event()


def helper_waits():
    helper_release.wait(60)


def hold_gil_in_sleep():
    ctypes.PyDLL(None).sleep(5)  # PyDLL keeps the GIL across the call


def hold_gil_in_regex():
    re.match(r"(a+)+$", "a" * 32 + "b")  # catastrophic backtracking, all in C


def hold_gil_in_sum():
    sum(itertools.repeat(1, 10 ** 13))  # a C loop that never checks for signals: hours


def main():
    tbfast.register(signal.SIGUSR1, sys.stdout, format="json", chain="chain" in sys.argv)
    if "chain" in sys.argv:
        signal.signal(signal.SIGUSR1, lambda *args: None)  # replaced: tbfast's keeps it as previous
        tbfast.unregister(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, lambda *args: sys.stderr.write("python handler ran\n"))
        tbfast.register(signal.SIGUSR1, sys.stdout, format="json", chain=True)
    threading.Thread(target=helper_waits, name="helper", daemon=True).start()
    tbfast.set_context("GET /stuck?id=7")
    sys.stderr.write("ready\n")
    sys.stderr.flush()
    {"sleep": hold_gil_in_sleep, "regex": hold_gil_in_regex, "sum": hold_gil_in_sum}[sys.argv[1]]()


if __name__ == "__main__":
    main()
