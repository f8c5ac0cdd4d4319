"""What native frames cost: a worker whose main thread spins in a C extension's
function holding the GIL (tests/native/tbnative.c, built here with gcc), beside
THREADS Python threads that wait for the GIL, dumped through its socket:

- `gil-free`: the dump without C frames;
- `native`: with the C frames of the thread that holds the GIL, names resolved;
- `native-all`: with every thread's, each asked on its own;
- `native-all` in a worker with one more thread, which blocks the native signal:
  what a thread that does not answer costs (it is waited for 20 ms);
- `py-spy dump --native` of the same process, where py-spy is installed (it
  needs ptrace): time, and whether it names the C function.

Every tbfast dump is checked: the main thread shows tbnative_spin_inner.

    python bench_native.py [ROUNDS]     (tbfast from the interpreter's site-packages)
"""

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench_roundtrip import read_socket

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import nativekit  # noqa: E402 - the extension's build, as the tests make it

THREADS = 8
WORKER = r'''
import signal, sys, threading
sys.path.insert(0, sys.argv[1])
import tbnative, tbfast
tbfast.enable_tracebacker(sys.argv[2], 1)

def spin():
    while True:
        sum(range(1000))

for number in range(int(sys.argv[3])):
    threading.Thread(target=spin, name="spinner-%d" % number, daemon=True).start()

def deaf():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMAX - 4})
    while True:
        sum(range(1000))

if sys.argv[4] == "deaf":
    threading.Thread(target=deaf, name="deaf", daemon=True).start()
sys.stderr.write("ready\n"); sys.stderr.flush()
while True:
    tbnative.spin(60.0)
'''


def timed(function, rounds):
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def start_worker(directory, name, deaf):
    worker = subprocess.Popen([sys.executable, "-c", WORKER, directory, directory + "/" + name + ".",
                               str(THREADS), "deaf" if deaf else "all-answer"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert worker.stderr.readline() == b"ready\n"
    time.sleep(0.5)  # into the spin
    return worker, directory + "/" + name + ".1"


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    directory = tempfile.mkdtemp(prefix="tbnative-")
    nativekit.build(directory)
    workers, rows = [], []
    try:
        worker, path = start_worker(directory, "tb", deaf=False)
        workers.append(worker)
        plain, _ = timed(lambda: read_socket(path, request=b"gil-free\n"), rounds)
        native, dump = timed(lambda: read_socket(path, request=b"native\n"), rounds)
        assert b"tbnative_spin_inner+0x" in dump, dump[:2000]
        everything, dump = timed(lambda: read_socket(path, request=b"native-all\n"), rounds)
        assert dump.count(b"(most recent call first)") >= THREADS + 1
        deaf_worker, deaf_path = start_worker(directory, "deaf", deaf=True)
        workers.append(deaf_worker)
        with_deaf, dump = timed(lambda: read_socket(deaf_path, request=b"native-all\n"), rounds)
        assert b"<no answer within 20 ms" in dump
        rows.append(("socket, `gil-free` (no C frames)", plain, "—"))
        rows.append(("socket, `native` (the GIL holder asked)", native,
                     "+%.2f ms" % (1e3 * (native - plain))))
        rows.append(("socket, `native-all` (%d threads asked)" % (THREADS + 1), everything,
                     "%.0f µs per thread" % (1e6 * (everything - plain) / (THREADS + 1))))
        rows.append(("socket, `native-all`, one more thread blocking the signal", with_deaf,
                     "+%.1f ms: the 20 ms wait" % (1e3 * (with_deaf - everything))))
        spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        if os.path.exists(spy):
            command = [spy, "dump", "--native", "--pid", str(worker.pid)]
            spent, result = timed(lambda: subprocess.run(command, capture_output=True, text=True,
                                                         timeout=60), max(3, rounds // 5))
            named = "tbnative_spin_inner" in result.stdout
            rows.append(("`py-spy dump --native` (ptrace), same worker", spent,
                         "names tbnative_spin_inner: %s%s" % (
                             "yes" if named else "no",
                             "" if result.returncode == 0 else "; exit %d: %s" % (
                                 result.returncode, result.stderr.strip()[:80]))))
        for each in workers:
            assert each.poll() is None, "a worker died"
    finally:
        for each in workers:
            each.kill()
            each.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
    import tbfast
    print("CPython %s, tbfast MODE=%s, median of %d rounds; main thread spinning in C with "
          "the GIL, %d Python threads waiting for it"
          % (sys.version.split()[0], tbfast.MODE, rounds, THREADS))
    print("\n| dump | median | note |\n|---|---|---|")
    for name, seconds, note in rows:
        print("| %s | %.1f ms | %s |" % (name, 1e3 * seconds, note))
    if rows[-1][0].startswith("`py-spy"):
        print("\npy-spy / tbfast `native`, same worker, same run: %.0f×" % (rows[-1][1] / native))


if __name__ == "__main__":
    main()
