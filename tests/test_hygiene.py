"""No fd or thread leaks after 10,000 connections, after enable/disable cycles,
nor across fork; socket files are removed on exit.

Each worker counts its own fds (/proc/self/fd, with what each points to) and
native threads (/proc/self/task) before and after, so the counts are the
kernel's, not tbfast's idea of them."""

import json
import os
import socket
import subprocess
import sys

from conftest import needs_core
from stress_worker import check, figures, read_socket

HERE = os.path.dirname(os.path.abspath(__file__))

COUNTERS = r"""
import os, sys
sys.path.insert(0, %(here)r)

def fds():
    # What each fd points to, the pipe, socket and file names of the kernel; the
    # fd the listing itself opens is left out.
    listing = os.listdir("/proc/self/fd")
    found = {}
    for fd in listing:
        try:
            found[int(fd)] = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            pass  # the listing's own fd, closed by now
    return found

def tasks():
    return len(os.listdir("/proc/self/task"))
"""

CONNECTIONS_WORKER = COUNTERS + r"""
import json
import tbfast
path = tbfast.enable_tracebacker(sys.argv[1], worker_id=1)
tbfast.format_traceback()
before = (fds(), tasks())
print(path, flush=True)
sys.stdin.readline()
after = (fds(), tasks())
tbfast.disable_tracebacker()
print(json.dumps({"before": before, "after": after}))
"""


def test_no_leak_after_ten_thousand_connections(tmp_path):
    connections = 10000
    worker = subprocess.Popen([sys.executable, "-c", CONNECTIONS_WORKER % {"here": HERE},
                               str(tmp_path / "tb.")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        path = worker.stdout.readline().decode().strip()
        assert path, worker.stderr.read()
        kinds = {}
        for n in range(connections):
            kind = ("json", "text", "bad request", "gone at once", "says nothing")[n % 5]
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind == "gone at once":
                client = socket.socket(socket.AF_UNIX)
                client.connect(path)
                client.close()
            elif kind == "says nothing":
                check(read_socket(path, None), "text")
            elif kind == "bad request":
                assert read_socket(path, b"bogus\n").startswith(b"tbfast: bad request")
            else:
                check(read_socket(path, kind.encode() + b"\n"), kind)
        stdout, stderr = worker.communicate(b"done\n", timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, stderr[-3000:]
    counts = json.loads(stdout)
    assert counts["after"] == counts["before"]
    figures("connections", connections=connections, fds=len(counts["after"][0]),
            threads=counts["after"][1], **kinds)


CYCLES_WORKER = COUNTERS + r"""
import faulthandler, json, signal
faulthandler.dump_traceback_later(100, exit=True)  # a hang shows where, in the failure
import tbfast

def cycle(n):
    tbfast.enable_tracebacker(sys.argv[1], worker_id=1 + n %% 3)
    read_socket(sys.argv[1] + str(1 + n %% 3), b"json\n")
    tbfast.disable_tracebacker()
    with open(os.devnull, "w") as out:
        tbfast.register(signal.SIGUSR1, out)
        os.kill(os.getpid(), signal.SIGUSR1)
        tbfast.unregister(signal.SIGUSR1)
        tbfast.watchdog.configure(file=out, log=n %% 2 == 0)
        with tbfast.harakiri(60):
            tbfast.set_context("cycle %%d" %% n)
        tbfast.dump_traceback_later(60, repeat=True, file=out)
        tbfast.cancel_dump_traceback_later()
        tbfast.watchdog.configure(file=False, log=False)
    if tbfast.HAS_CORE:
        tbfast._impl.watchdog_shutdown()  # a scope armed after this starts it again

from stress_worker import read_socket
cycle(0)  # the first of each: imports, the logger's thread
cycle(1)
before = (fds(), tasks())
for n in range(int(sys.argv[2])):
    cycle(n)
print(json.dumps({"before": before, "after": (fds(), tasks())}))
"""


def test_no_leak_after_enable_disable_cycles(tmp_path):
    cycles = 300
    result = subprocess.run([sys.executable, "-c", CYCLES_WORKER % {"here": HERE},
                             str(tmp_path / "tb."), str(cycles)], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout)
    assert counts["after"] == counts["before"]
    assert sorted(os.listdir(tmp_path)) == []  # sockets and lock files gone
    figures("cycles", cycles=cycles, fds=len(counts["after"][0]), threads=counts["after"][1])


FORK_WORKER = COUNTERS + r"""
import json, signal
import tbfast
from stress_worker import read_socket

out = open(os.devnull, "w")
before_tbfast = fds()
parent_path = tbfast.enable_tracebacker(sys.argv[1], worker_id=1)
tbfast.register(signal.SIGUSR1, out)
tbfast.watchdog.configure(file=out, log=True)
with tbfast.harakiri(60):
    pass
tbfast.dump_traceback_later(3600, file=out)
parent = (fds(), tasks())
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read_end)
    child_path = tbfast.sockets.current().path
    answer = json.loads(read_socket(child_path, b"json\n"))
    report = {"fds": fds(), "tasks": tasks(), "path": child_path, "answer_pid": answer["pid"],
              "pid": os.getpid(), "report_fd": write_end}
    os.write(write_end, json.dumps(report).encode())
    os.close(write_end)
    sys.exit(0)  # a normal exit: atexit removes the child's socket
os.close(write_end)
child = json.loads(os.read(read_end, 1 << 20))
_, status = os.waitpid(pid, 0)
child["status"] = status
child["path exists after exit"] = os.path.exists(child["path"])
child["lock exists after exit"] = os.path.exists(child["path"] + ".lock")
parent_answer = json.loads(read_socket(parent_path, b"json\n"))
print(json.dumps({"parent": parent, "before_tbfast": before_tbfast, "parent_pid": os.getpid(), "parent_answer": parent_answer["pid"],
                  "parent_path": parent_path, "child": child}))
"""


@needs_core
def test_fork_leaks_nothing_and_every_socket_goes_at_exit(tmp_path):
    result = subprocess.run([sys.executable, "-c", FORK_WORKER % {"here": HERE}, str(tmp_path / "tb.")],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    child, (parent_fds, parent_tasks) = report["child"], report["parent"]
    assert child["status"] == 0
    assert child["answer_pid"] == child["pid"] != report["parent_pid"] == report["parent_answer"]
    assert child["path"] != report["parent_path"]
    assert not child["path exists after exit"] and not child["lock exists after exit"]
    assert sorted(os.listdir(tmp_path)) == []  # the parent's gone at its exit too
    # The child keeps the fds opened before tbfast, and has its own lock, socket,
    # wake pipe and the two pipes of its consistent thread's hand-over; none of the
    # parent's tbfast fds (its socket, wake pipe, hand-over pipes, the watchdog's pipe
    # to its logger thread) stays open in it.
    parent_targets = set(parent_fds.values())
    own = {fd: target for fd, target in child["fds"].items()
           if target not in parent_targets and int(fd) != child["report_fd"]}
    inherited = set(child["fds"]) - set(own) - {str(child["report_fd"])}
    assert inherited == set(report["before_tbfast"]), json.dumps(report, indent=1)
    assert sorted(target.split(":")[0] for target in own.values()) == sorted(
        [child["path"] + ".lock", "socket"] + ["pipe"] * 6)
    assert child["tasks"] == 3  # its main thread, its own server thread and consistent thread
    figures("fork", parent_fds=len(parent_fds), parent_threads=parent_tasks,
            child_fds=len(child["fds"]) - 1, child_threads=child["tasks"],
            child_fds_inherited_from_tbfast=len(inherited - set(report["before_tbfast"])))
