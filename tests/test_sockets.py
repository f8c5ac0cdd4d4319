"""Per-worker tracebacker sockets: naming, slots, files, fork, protocol.

Real UNIX sockets in short temporary directories, real worker subprocesses (the
worker kit's WORKER_SCRIPT), every wait bounded.  The protocol tests run against
both servers: the core's native one and the pure-Python fallback
(TBFAST_NO_EXTENSIONS=1 in the worker's environment).  How workers number
themselves under real uWSGI, gunicorn and billiard: servers/test_*_sockets.py.
"""

import errno
import fcntl
import json
import os
import pwd
import select
import signal
import socket
import stat
import subprocess
import threading
import time

import pytest

import tbfast
from tbfast import sockets
# autostart_python, other_user, script, server, spawn and tmp: fixtures, taken by name.
from workerkit import (  # noqa: F401
    CORE_SERVER, ROOT, ask, autostart_python, other_user, read_until_closed, script,
    served_by, server, spawn, tmp, worker_env)

GIL_WAIT_MS = round(tbfast._limits.DEFAULT_GIL_WAIT * 1000)


def busy_frames(dump, name="busy-0"):
    """The frames of thread `name` in a json dump, innermost first."""
    for thread in dump["threads"]:
        if thread["name"] == name:
            return thread["frames"]
    raise AssertionError("no thread %r in %s" % (name, [t["name"] for t in dump["threads"]]))


@pytest.fixture
def clean_state():
    """In-process tests leave no tracebacker behind."""
    yield
    sockets.disable_tracebacker()


def warnings_of(log):
    """The warnings about slots and the socket directory (not the fallback's own)."""
    return [record.getMessage() for record in log.records if record.levelname == "WARNING"
            and ("slot skipped" in record.getMessage() or "socket directory" in record.getMessage())]


# -- naming -----------------------------------------------------------------------

def test_uwsgi_naming_basename_plus_worker_number(tmp, clean_state):
    assert sockets.enable_tracebacker(tmp + "/tbsocket.", 3) == tmp + "/tbsocket.3"
    now = sockets.current()
    assert (now.path, now.worker_id, now.source, now.pid) == (
        tmp + "/tbsocket.3", 3, "explicit", os.getpid())
    assert stat.S_ISSOCK(os.stat(tmp + "/tbsocket.3").st_mode)
    # A basename without a separator is used as is, as uWSGI does: tbsocket1.
    assert sockets.enable_tracebacker(tmp + "/tbsocket") == tmp + "/tbsocket1"
    assert sockets.current().source == "slot"
    assert not os.path.exists(tmp + "/tbsocket.3"), "enabling again replaces the first"
    assert b"trigger=socket" in ask(tmp + "/tbsocket1", b"text\n")


def test_abstract_socket(clean_state):
    base = "@tbfast-test-%d-" % os.getpid()
    path = sockets.enable_tracebacker(base)
    assert path == base + "1"
    dump = json.loads(ask(path, b"json\n"))
    assert dump["pid"] == os.getpid() and dump["trigger"] == "socket"
    with pytest.raises(FileExistsError, match="served by a live process"):
        sockets._claim(path, None, strict=True)
    assert sockets.disable_tracebacker() is True
    with pytest.raises(ConnectionRefusedError):
        ask(path)


# -- slots --------------------------------------------------------------------------

def test_three_workers_take_slots_one_to_three(spawn, tmp, server):
    workers = [spawn({"basename": tmp + "/tb."}, server, wait=False) for _ in range(3)]
    for worker in workers:
        worker.start()
    assert sorted(w.info["worker_id"] for w in workers) == [1, 2, 3]
    for worker in workers:
        assert worker.info["server"] == server
        assert worker.info["source"] == "slot"
        assert worker.path == tmp + "/tb.%d" % worker.info["worker_id"]
        assert json.loads(ask(worker.path, b"json\n"))["pid"] == worker.pid
    assert sorted(os.listdir(tmp)) == ["tb.1", "tb.1.lock", "tb.2", "tb.2.lock", "tb.3",
                                       "tb.3.lock"]


def test_killed_worker_slot_is_reclaimed(spawn, tmp, server):
    workers = [spawn({"basename": tmp + "/tb."}, server) for _ in range(3)]
    second = next(w for w in workers if w.info["worker_id"] == 2)
    os.kill(second.pid, signal.SIGKILL)
    second.proc.wait(10)
    assert stat.S_ISSOCK(os.lstat(tmp + "/tb.2").st_mode), "kill -9 leaves the file"
    with pytest.raises(ConnectionRefusedError):
        ask(tmp + "/tb.2")
    respawned = spawn({"basename": tmp + "/tb."}, server)
    assert (respawned.info["worker_id"], respawned.info["source"]) == (2, "slot")
    assert json.loads(ask(tmp + "/tb.2", b"json\n"))["pid"] == respawned.pid
    for worker in workers:
        if worker is not second:  # the live ones were not touched
            assert json.loads(ask(worker.path, b"json\n"))["pid"] == worker.pid


def test_live_slots_are_skipped_never_stolen(spawn, tmp):
    # Slot 1: something serves it without a lock (uWSGI's own tracebacker, say).
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    foreign.bind(tmp + "/tb.1")
    foreign.listen(8)
    # Slot 2: locked by a live process that has not bound yet.
    held = os.open(tmp + "/tb.2.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        worker = spawn({"basename": tmp + "/tb."})
        assert worker.info["worker_id"] == 3
        # The foreign socket is still the same file and still ours.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(tmp + "/tb.1")
            foreign.settimeout(5)
            foreign.accept()[0].close()
        explicit = spawn({"basename": tmp + "/tb.", "worker_id": 1})
        assert explicit.info["error"] == (
            "FileExistsError: [Errno 17] tracebacker socket is served by a live process: '%s'"
            % (tmp + "/tb.1"))
        locked = spawn({"basename": tmp + "/tb.", "worker_id": 2})
        assert "served by a live process" in locked.info["error"]
        assert locked.info["path"] is None
    finally:
        os.close(held)
        foreign.close()


def test_explicit_worker_id_served_by_live_worker(spawn, tmp):
    first = spawn({"basename": tmp + "/tb.", "worker_id": 7})
    assert (first.path, first.info["source"]) == (tmp + "/tb.7", "explicit")
    second = spawn({"basename": tmp + "/tb.", "worker_id": 7})
    assert second.info["error"].startswith("FileExistsError")
    assert tmp + "/tb.7" in second.info["error"] and "live process" in second.info["error"]
    assert json.loads(ask(first.path, b"json\n"))["pid"] == first.pid
    first.kill()  # now stale: an explicit id takes it over
    third = spawn({"basename": tmp + "/tb.", "worker_id": 7})
    assert third.path == tmp + "/tb.7"
    assert json.loads(ask(third.path, b"json\n"))["pid"] == third.pid


def test_a_file_that_is_not_a_socket_is_left_alone(tmp, clean_state):
    with open(tmp + "/tb.1", "w") as file:
        file.write("not a socket")
    with pytest.raises(FileExistsError, match="is not a socket"):
        sockets.enable_tracebacker(tmp + "/tb.", 1)
    assert sockets.enable_tracebacker(tmp + "/tb.") == tmp + "/tb.2"
    with open(tmp + "/tb.1") as file:
        assert file.read() == "not a socket"


def test_another_users_slot_is_skipped_with_a_warning_naming_it(tmp, clean_state, other_user,
                                                               tbfast_log):
    """Another user who takes slot 1 first pushes the worker to slot 2, and the
    warning says so, naming that user."""
    os.chmod(tmp, 0o1777)  # as /tmp: anyone makes files, only their owner removes them
    with served_by(other_user, tmp + "/tb.1", b"tbfast dump: pid=1 (fake)\n", lock=True):
        assert sockets.enable_tracebacker(tmp + "/tb.") == tmp + "/tb.2"
    warnings = warnings_of(tbfast_log)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("tbfast: tracebacker slot skipped: %s/tb.1" % tmp)
    assert "(owner: uid %d (%s))" % (other_user.pw_uid, other_user.pw_name) in warnings[0]


def test_another_users_abstract_name_is_skipped_with_a_warning(clean_state, other_user,
                                                              tbfast_log):
    base = "@tbfast-test-%d-" % os.getpid()
    with served_by(other_user, base + "1", b"tbfast dump: pid=1 (fake)\n"):
        assert sockets.enable_tracebacker(base) == base + "2"
    assert warnings_of(tbfast_log) == [
        "tbfast: tracebacker slot skipped: %s1 is served by another user (owner: uid %d (%s))"
        % (base, other_user.pw_uid, other_user.pw_name)]


@pytest.mark.parametrize("odd", ["directory", "symlink"])
def test_an_odd_lock_file_is_skipped_with_a_warning(tmp, clean_state, tbfast_log, odd):
    """A directory or a symlink at tb.1.lock is skipped with a warning, and raises
    nothing."""
    if odd == "directory":
        os.mkdir(tmp + "/tb.1.lock")
    else:
        os.symlink(tmp + "/elsewhere", tmp + "/tb.1.lock")
    assert sockets.enable_tracebacker(tmp + "/tb.") == tmp + "/tb.2"
    assert warnings_of(tbfast_log) == [
        "tbfast: tracebacker slot skipped: %s/tb.1.lock is a %s (owner: uid %d (%s))"
        % (tmp, odd, os.geteuid(), pwd.getpwuid(os.geteuid()).pw_name)]
    assert os.path.lexists(tmp + "/tb.1.lock") and not os.path.exists(tmp + "/elsewhere")


def test_a_directory_others_may_write_to_is_warned_about(tmp, clean_state, tbfast_log):
    """A directory others may write to, without the sticky bit, is warned about: they
    can swap the socket or its lock file for something of theirs."""
    os.chmod(tmp, 0o777)
    sockets.enable_tracebacker(tmp + "/tb.")
    assert warnings_of(tbfast_log) == [
        "tbfast: the tracebacker socket directory %s (mode 0o777, owner uid %d (%s)) lets "
        "others replace the socket or its lock file: use a directory only this user may "
        "write to, or one with the sticky bit such as /tmp"
        % (tmp, os.geteuid(), pwd.getpwuid(os.geteuid()).pw_name)]
    os.chmod(tmp, 0o1777)
    sockets.enable_tracebacker(tmp + "/tb.")
    assert len(warnings_of(tbfast_log)) == 1


# -- files: mode, close-on-exec, removal ---------------------------------------------

def test_socket_is_0600_from_the_start_and_the_umask_is_untouched(tmp, clean_state):
    old = os.umask(0)  # no umask at all: only the mode given keeps others out
    try:
        path = sockets.enable_tracebacker(tmp + "/tb.")
        assert os.umask(0) == 0, "enable_tracebacker changed the process umask"
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path + ".lock").st_mode) == 0o600
    path = sockets.enable_tracebacker(tmp + "/tb.", mode=0o660)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660


def test_no_mode_is_ever_given_through_a_symlink(tmp, clean_state, monkeypatch):
    """The umask takes bits off the mode asked for, so the socket is given its mode
    after bind(); that never follows a symlink swapped in for the socket meanwhile
    (by another user, in a directory others may write to), which would make a
    root-owned 0600 file 0666."""
    victim = tmp + "/victim"
    with open(victim, "w") as file:
        file.write("root's")
    os.chmod(victim, 0o600)
    bind = sockets._bind

    def bind_then_swap(address, mode, path, strict):
        sock = bind(address, mode, path, strict)
        os.unlink(path)  # what the other user does right after the bind
        os.symlink(victim, path)
        return sock

    monkeypatch.setattr(sockets, "_bind", bind_then_swap)
    old = os.umask(0o022)
    try:
        with pytest.raises(FileExistsError, match="replaced right after it was bound"):
            sockets.enable_tracebacker(tmp + "/tb.", mode=0o666)
        assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600
        assert os.readlink(tmp + "/tb.1") == victim  # not ours: left alone
        monkeypatch.setattr(sockets, "_bind", bind)
        path = sockets.enable_tracebacker(tmp + "/tb.", mode=0o666)
    finally:
        os.umask(old)
    assert path == tmp + "/tb.2" and stat.S_IMODE(os.stat(path).st_mode) == 0o666


def _socket_inode(path):
    with open("/proc/net/unix") as table:
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path:
                return fields[6]
    raise AssertionError("%s is not in /proc/net/unix" % path)


def test_fds_close_on_exec(tmp, clean_state):
    path = sockets.enable_tracebacker(tmp + "/tb.")
    inode = _socket_inode(path)
    # An exec'd child that keeps every inheritable fd lists what it got.
    listing = subprocess.run(["ls", "-l", "/proc/self/fd/"], close_fds=False,
                             capture_output=True, text=True, timeout=10).stdout
    assert "socket:[%s]" % inode not in listing
    assert path + ".lock" not in listing
    own = {os.readlink("/proc/self/fd/" + fd) for fd in os.listdir("/proc/self/fd")
           if os.path.exists("/proc/self/fd/" + fd)}
    assert path + ".lock" in own, "the lock is held through an fd of this process"


def test_disable_removes_socket_and_lock(spawn, tmp, server):
    worker = spawn({"basename": tmp + "/tb."}, server)
    assert sorted(os.listdir(tmp)) == ["tb.1", "tb.1.lock"]
    worker.send("disable")
    assert worker.read()["disabled"] is True
    assert os.listdir(tmp) == []
    worker.send("disable")
    assert worker.read()["disabled"] is False


def test_normal_exit_removes_socket_and_lock(spawn, tmp, server):
    worker = spawn({"basename": tmp + "/tb."}, server)
    assert os.path.exists(worker.path)
    assert worker.quit() == 0
    assert os.listdir(tmp) == []


def test_never_removes_a_file_it_does_not_own(tmp, clean_state):
    path = sockets.enable_tracebacker(tmp + "/tb.")
    os.unlink(path)  # someone replaced our socket with a file of theirs
    with open(path, "w") as file:
        file.write("theirs")
    assert sockets.disable_tracebacker() is True
    with open(path) as file:
        assert file.read() == "theirs"


# -- fork ----------------------------------------------------------------------------

def test_fork_child_serves_its_own_socket(spawn, tmp, server):
    parent = spawn({"basename": tmp + "/tb."}, server)
    parent.send("fork")
    first, second = parent.read(), parent.read()
    child = first if first.get("child") else second
    forked = second if child is first else first
    assert forked["forked"] == child["pid"] and child["parent"] == parent.pid
    assert (parent.info["worker_id"], child["worker_id"]) == (1, 2)
    assert child["path"] == tmp + "/tb.2" and child["source"] == "slot"
    parent_dump = json.loads(ask(parent.path, b"json\n"))
    child_dump = json.loads(ask(child["path"], b"json\n"))
    assert parent_dump["pid"] == parent.pid
    assert child_dump["pid"] == child["pid"]
    text = ask(child["path"], b"text\n").decode()
    assert text.startswith("tbfast dump: pid=%d " % child["pid"])
    # The child's normal exit removes its own socket, not the parent's.
    os.kill(child["pid"], signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while os.path.exists(child["path"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(child["path"])
    assert json.loads(ask(parent.path, b"json\n"))["pid"] == parent.pid
    assert sorted(os.listdir(tmp)) == ["tb.1", "tb.1.lock"]


def test_subprocess_preexec_child_makes_no_socket(tmp, clean_state):
    path = sockets.enable_tracebacker(tmp + "/tb.")
    # preexec_fn makes subprocess run the fork hooks in a child that then execs.
    subprocess.run(["true"], preexec_fn=lambda: None, check=True, timeout=30)
    assert sorted(os.listdir(tmp)) == ["tb.1", "tb.1.lock"]
    assert json.loads(ask(path, b"json\n"))["pid"] == os.getpid()


# -- bad input -------------------------------------------------------------------------

def test_path_too_long(tmp, clean_state):
    basename = tmp + "/" + "x" * (107 - len(tmp) - 1)  # 107 bytes with the "1"
    with pytest.raises(ValueError) as raised:
        sockets.enable_tracebacker(basename)
    message = str(raised.value)
    assert repr(basename + "1") in message and "107" in message and "108" in message
    assert os.listdir(tmp) == []
    shorter = basename[:-1]  # 106 + "1": exactly the limit
    assert sockets.enable_tracebacker(shorter) == shorter + "1"


def test_missing_directory(tmp, clean_state):
    with pytest.raises(FileNotFoundError) as raised:
        sockets.enable_tracebacker(tmp + "/nowhere/tb.")
    assert raised.value.filename == tmp + "/nowhere"
    assert tmp + "/nowhere" in str(raised.value)


@pytest.mark.skipif(ROOT, reason="root writes into a directory of mode 0 anyway")
def test_unwritable_directory(tmp, clean_state):
    os.chmod(tmp, 0o500)
    try:
        with pytest.raises(PermissionError) as raised:
            sockets.enable_tracebacker(tmp + "/tb.")
        assert raised.value.filename == tmp
    finally:
        os.chmod(tmp, 0o700)


def test_bad_arguments(tmp, clean_state):
    with pytest.raises(ValueError, match="unknown format"):
        sockets.enable_tracebacker(tmp + "/tb.", format="xml")
    with pytest.raises(TypeError):
        sockets.enable_tracebacker(tmp + "/tb.", worker_id="1")
    with pytest.raises(ValueError):
        sockets.enable_tracebacker(tmp + "/tb.", worker_id=-1)
    with pytest.raises(ValueError, match="mode"):
        sockets.enable_tracebacker(tmp + "/tb.", mode=0o1777)
    with pytest.raises(ValueError, match="empty"):
        sockets.enable_tracebacker("")
    assert os.listdir(tmp) == []
    assert sockets.current() is None


# -- protocol ----------------------------------------------------------------------------

def test_no_request_gets_the_default_format(spawn, tmp, server):
    worker = spawn({"basename": tmp + "/tb.", "format": "json"}, server)
    started = time.monotonic()
    dump = json.loads(ask(worker.path))  # sends nothing: the server waits 10 ms
    assert time.monotonic() - started < 5
    assert dump["pid"] == worker.pid and dump["trigger"] == "socket"
    assert json.loads(ask(worker.path, b"", shutdown=True))["pid"] == worker.pid
    assert json.loads(ask(worker.path, b"\n"))["pid"] == worker.pid


def test_each_format_shows_the_true_line(spawn, tmp, server, script):
    worker = spawn({"basename": tmp + "/tb.", "threads": 2}, server)
    line = worker.info["line"]
    text = ask(worker.path, b"text\n").decode()
    assert text.startswith("tbfast dump: pid=%d " % worker.pid) and "trigger=socket" in text
    assert 'name "busy-0"' in text and 'name "busy-1"' in text
    assert '  File "%s", line %d in stuck_in_here\n    release.wait()\n' % (script, line) in text
    uwsgi = ask(worker.path, b"uwsgi\n").decode()
    assert uwsgi.startswith("*** uWSGI Python tracebacker output ***\n\n")
    assert ("thread_id = busy-1 filename = %s lineno = %d function = stuck_in_here "
            "line = release.wait()\n" % (script, line)) in uwsgi
    dump = json.loads(ask(worker.path, b"  json \r\n"))  # surrounding whitespace is fine
    frame = next(frame for frame in busy_frames(dump) if frame["file"] == script)
    assert (frame["line"], frame["function"], frame["source"]) == (
        line, "stuck_in_here", "release.wait()")


@pytest.mark.parametrize("request_line", [
    b"garbage\n", b"JSON\n", b"json please\n", b"\xff\xfe\n", b"text uwsgi\n",
    b"x" * 65, b" " * 70 + b"json\n", b"x" * 1000 + b"\n",
])
def test_bad_requests_get_one_line(spawn, tmp, server, request_line):
    worker = spawn({"basename": tmp + "/tb."}, server)
    assert ask(worker.path, request_line) == (
        b"tbfast: bad request: expected [text|uwsgi|json|faulthandler] [locals] [gil-free] [native] [native-all]\n")
    # ... and the worker serves the next client as before.
    assert json.loads(ask(worker.path, b"json\n"))["pid"] == worker.pid


def test_dump_while_the_gil_is_held_in_c(spawn, tmp, server, script):
    worker = spawn({"basename": tmp + "/tb."}, server)
    worker.send("hold 3")
    holding = worker.read()
    assert holding["holding"] is True
    time.sleep(0.3)  # the worker is in sleep() by now, even on a loaded machine
    started = time.monotonic()
    dump = json.loads(ask(worker.path, b"json\n", timeout=20))
    waited = time.monotonic() - started
    if server == "core":  # the native server needs no GIL: the answer comes at once
        assert waited < 2, "answered after %.1fs" % waited
        # ... once the consistent thread has had the GIL_WAIT it was given, in vain.
        assert dump["mode"] == "gil-free" and dump["gil_wait_ms"] >= GIL_WAIT_MS
        main_thread = next(thread for thread in dump["threads"] if thread["name"] == "MainThread")
        assert dump["gil_holder"] == main_thread["ident"] and main_thread["holds_gil"]
        main = busy_frames(dump, "MainThread")
        assert (main[0]["file"], main[0]["line"], main[0]["function"]) == (
            script, holding["line"], "hold_the_gil")
        assert main[0]["source"] == "sleep(seconds)"
    else:  # the fallback's thread answers only once the GIL is let go
        assert waited > 1, "answered after %.1fs while the GIL was held" % waited
    assert worker.read()["held"] is True
    assert dump["pid"] == worker.pid


@pytest.mark.skipif(not CORE_SERVER, reason="the C core (with serve_start) is not built")
def test_socket_dumps_are_consistent_unless_asked_gil_free(spawn, tmp, script):
    worker = spawn({"basename": tmp + "/tb.", "threads": 3}, "core")
    consistent = json.loads(ask(worker.path, b"json\n"))
    assert consistent["mode"] == "gil" and "gil_wait_ms" not in consistent
    # The consistent thread took the GIL to walk, and leaves itself out.
    names = {thread["name"] for thread in consistent["threads"]}
    assert {"MainThread", "busy-0", "busy-1", "busy-2"} <= names and "tbfast-consistent" not in names
    for name in ("busy-0", "busy-1", "busy-2"):
        lines = [frame["line"] for frame in busy_frames(consistent, name) if frame["file"] == script]
        assert lines[0] == worker.info["line"]
    text = ask(worker.path, b"text\n").decode()
    assert " trigger=socket mode=gil threads=%d " % len(names) in text.splitlines(True)[0]
    gil_free = json.loads(ask(worker.path, b"gil-free json locals\n"))
    assert gil_free["mode"] == "gil-free" and "gil_wait_ms" not in gil_free
    assert {thread["name"] for thread in gil_free["threads"]} == names
    frame = [frame for frame in busy_frames(gil_free) if frame["file"] == script][0]
    assert frame["line"] == worker.info["line"]
    # GIL-free, the values that need no code to print, the others by their type.
    assert frame["locals"] == {"started": "<list>", "release": "<Event>", "depth": "0"}


def test_locals_request_gets_safe_reprs_while_the_gil_can_be_taken(spawn, tmp, server, script):
    worker = spawn({"basename": tmp + "/tb.", "threads": 1}, server)
    dump = json.loads(ask(worker.path, b"locals json\n"))
    # Holding the GIL, the Python formatter writes them: full reprs, made safe.
    assert dump["mode"] == "python"
    frame = [frame for frame in busy_frames(dump) if frame["file"] == script][0]
    assert frame["line"] == worker.info["line"]
    assert frame["locals"]["depth"] == "0" and frame["locals"]["started"] == repr([frame["line"]])
    assert frame["locals"]["release"].startswith("<threading.Event at 0x")
    assert "tbfast-consistent" not in {thread["name"] for thread in dump["threads"]}
    text = ask(worker.path, b"locals\n").decode()
    assert "\n      depth = 0\n" in text


@pytest.mark.skipif(not CORE_SERVER, reason="the C core (with serve_start) is not built")
def test_consistent_thread_is_in_no_dump_of_its_process():
    """Both formatters leave it out: the core's, and the Python one that dumps with
    locals, so an API dump shows the same threads either way."""
    from tbfast import consistent
    consistent.start()
    deadline = time.monotonic() + 10
    while consistent.THREAD_NAME not in {thread.name for thread in threading.enumerate()}:
        assert time.monotonic() < deadline, "the consistent thread did not start"
        time.sleep(0.01)
    for with_locals in (False, True):
        document = json.loads(tbfast.format_traceback(format="json", locals=with_locals))
        names = {thread["name"] for thread in document["threads"]}
        assert "MainThread" in names and consistent.THREAD_NAME not in names, with_locals


def test_socket_dumps_show_asyncio_tasks(spawn, tmp, server):
    worker = spawn({"basename": tmp + "/tb.", "asyncio": True}, server)
    deadline = time.monotonic() + 10
    while True:  # the loop's thread starts on its own time
        document = json.loads(ask(worker.path, b"json\n"))
        tasks = [task for loop in document.get("asyncio", []) for task in loop["tasks"]]
        if any(task["name"] == "napping-child" for task in tasks) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    child = next(task for task in tasks if task["name"] == "napping-child")
    assert [frame["function"] for frame in child["frames"]] == ["sleep", "napping_child"]
    assert "napping-child" in ask(worker.path, b"text\n").decode().split("Asyncio tasks")[1]


def test_client_that_never_reads_holds_the_server_two_seconds_at_most(spawn, tmp, server):
    # 20 threads 400 frames deep: a dump far larger than the socket buffers.
    worker = spawn({"basename": tmp + "/tb.", "threads": 20, "depth": 400}, server)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(worker.path)
    stuck.sendall(b"json\n")  # and never reads
    try:
        time.sleep(0.2)  # the server is now blocked writing to it
        started = time.monotonic()
        data = ask(worker.path, b"json\n", timeout=15)
        waited = time.monotonic() - started
    finally:
        stuck.close()
    dump = json.loads(data)
    assert dump["pid"] == worker.pid
    assert len(busy_frames(dump, "busy-19")) > 400
    assert waited < 2 + 4, "served after %.1fs" % waited


def test_clients_that_never_read_hold_up_no_one(spawn, tmp, server):
    """Thirty clients ask for a dump larger than the socket's buffer and never read.
    Their dumps wait for them side by side, not each holding the server its 2 s write
    timeout in turn: a client asking after them gets its own as soon as it is made."""
    worker = spawn({"basename": tmp + "/tb.", "threads": 20, "depth": 400}, server)
    stalled = []
    try:
        for number in range(30):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            stalled.append(client)
            client.connect(worker.path)
            client.sendall((b"json\n", b"gil-free json\n")[number % 2])
        data = ask(worker.path, b"json\n", timeout=20)
    finally:
        for client in stalled:
            client.close()
    dump = json.loads(data)
    assert dump["pid"] == worker.pid
    assert len(busy_frames(dump, "busy-19")) > 400


def test_bytes_past_the_request_never_reset_the_answer(spawn, tmp, server):
    """A client that sends bytes after its request, more than the server drains,
    still reads the whole answer and then end of file: a close with unread input
    would make the kernel reset the connection, and a reset answer cannot be told
    from a cut one."""
    worker = spawn({"basename": tmp + "/tb.", "threads": 20, "depth": 400}, server)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(worker.path)
        client.sendall(b"json\n")
        # The dump is larger than the socket's buffer: being written until we read.
        assert select.select([client], [], [], 10)[0], "the answer never began"
        sent = 0
        for _ in range(64):  # as much as the socket takes
            try:
                sent += client.send(b"x" * 65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
        assert sent > 65536, "the socket took only %d bytes" % sent
        data, end = read_until_closed(client)
    assert end == "end of file", "%s after %d bytes of the answer" % (end, len(data))
    assert json.loads(data)["pid"] == worker.pid


def test_a_fork_while_a_client_is_served_holds_back_no_end_of_file(spawn, tmp, server):
    """A child forked while a client is served inherits the connection, and the
    client still gets its end of file when the answer ends, not when the child exits."""
    worker = spawn({"basename": tmp + "/tb.", "threads": 20, "depth": 400}, server)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(worker.path)
        client.sendall(b"json\n")
        # The dump is larger than the socket's buffer: being written until we read.
        assert select.select([client], [], [], 10)[0], "the answer never began"
        worker.send("fork")
        child = next(report for report in (worker.read(), worker.read()) if report.get("child"))
        try:
            data, end = read_until_closed(client)
        finally:
            os.kill(child["pid"], signal.SIGUSR1)
    assert end == "end of file", "%s while the child forked during the answer lives" % end
    assert json.loads(data)["pid"] == worker.pid


def test_a_hundred_concurrent_clients_are_all_served(spawn, tmp, server):
    worker = spawn({"basename": tmp + "/tb."}, server)
    results, errors = [], []

    def client(number):
        try:
            request = (b"json\n", b"text\n", None)[number % 3]
            data = ask(worker.path, request, timeout=60)
            if request is None:
                assert data.startswith(b"tbfast dump: pid=%d " % worker.pid)
            elif request == b"json\n":
                assert json.loads(data)["pid"] == worker.pid
            else:
                assert data.startswith(b"tbfast dump: pid=%d " % worker.pid)
            results.append(number)
        except Exception as error:  # noqa: BLE001 - collected and reported below
            errors.append("%d: %r" % (number, error))

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert errors == []
    assert sorted(results) == list(range(100))
    assert time.monotonic() - started < 60


def _as_nobody(path):
    """Connects to `path` from a forked child running as nobody: what it got."""
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            try:
                answer = ask(path, b"json\n", timeout=5)
            except OSError as error:
                answer = b"error %d" % error.errno
            os.write(write_end, answer)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(child, 0)
    return nobody.pw_uid, answer


@pytest.mark.skipif(not ROOT, reason="needs root to run a client as nobody")
def test_other_uid_is_refused(spawn, tmp, server):
    os.chmod(tmp, 0o711)  # nobody may reach the sockets in it
    # 0666 lets nobody connect: then the server refuses by SO_PEERCRED.
    open_worker = spawn({"basename": tmp + "/open.", "mode": 0o666}, server)
    uid, answer = _as_nobody(open_worker.path)
    assert answer == b"tbfast: refused: uid %d is not allowed\n" % uid
    # 0600 keeps nobody out before the server sees anything.
    closed_worker = spawn({"basename": tmp + "/closed."}, server)
    assert _as_nobody(closed_worker.path)[1] == b"error %d" % errno.EACCES
    # Root and the owner still get their dump.
    assert json.loads(ask(open_worker.path, b"json\n"))["pid"] == open_worker.pid


# -- autostart (.pth) ----------------------------------------------------------------------

def test_autostart_costs_nothing_when_unset(autostart_python):
    result = subprocess.run(
        [autostart_python, "-c", "import sys; print('tbfast' in sys.modules)"],
        env=worker_env(), capture_output=True, text=True, timeout=30)
    assert (result.stdout, result.stderr) == ("False\n", "")


def test_autostart_enables_the_tracebacker(autostart_python, tmp):
    code = ("import json, sys; from tbfast import sockets; "
            "print(json.dumps(sockets.current()._asdict())); sys.stdout.flush(); "
            "sys.stdin.read()")
    # The fallback chosen as this process chose it: a core that was not built would warn.
    env = worker_env(None if tbfast.HAS_CORE else "python",
                     TBFAST_TRACEBACKER=tmp + "/auto.", TBFAST_TRACEBACKER_FORMAT="json")
    proc = subprocess.Popen([autostart_python, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        info = json.loads(proc.stdout.readline())
        assert (info["path"], info["worker_id"], info["pid"], info["format"]) == (
            tmp + "/auto.1", 1, proc.pid, "json")
        assert json.loads(ask(tmp + "/auto.1"))["pid"] == proc.pid  # json by default
    finally:
        proc.stdin.close()
        assert proc.wait(10) == 0
        assert proc.stderr.read() == b""
        proc.stdout.close()
        proc.stderr.close()
    assert os.listdir(tmp) == []  # removed at exit


def test_autostart_error_is_one_line_and_the_process_runs(autostart_python, tmp):
    env = worker_env(TBFAST_TRACEBACKER=tmp + "/missing/tb.")
    result = subprocess.run([autostart_python, "-c", "print('still here')"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == "still here\n"
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tbfast: tracebacker not enabled (TBFAST_TRACEBACKER=")
    assert tmp + "/missing" in lines[0]
    bad_format = worker_env(TBFAST_TRACEBACKER=tmp + "/tb.", TBFAST_TRACEBACKER_FORMAT="xml")
    result = subprocess.run([autostart_python, "-c", "print('still here')"], env=bad_format,
                            capture_output=True, text=True, timeout=30)
    assert result.stdout == "still here\n" and len(result.stderr.splitlines()) == 1
    assert "unknown format 'xml'" in result.stderr


@pytest.mark.parametrize("mode", [0, 0o400, 0o200, 0o044])
def test_a_mode_its_owner_cannot_use_is_refused(tmp, clean_state, mode):
    with pytest.raises(ValueError, match=r"mode must let its owner read and write \(0o600 at least\)"):
        sockets.enable_tracebacker(tmp + "/tb.", mode=mode)
    assert os.listdir(tmp) == []


def test_a_relative_basename_survives_a_chdir_and_leaves_nothing_behind(tmp, clean_state,
                                                                       monkeypatch):
    first, elsewhere = os.path.join(tmp, "here"), os.path.join(tmp, "elsewhere")
    os.mkdir(first)
    os.mkdir(elsewhere)
    monkeypatch.chdir(first)
    path = sockets.enable_tracebacker("tb.")
    assert path == os.path.join(first, "tb.1")
    os.chdir(elsewhere)
    assert json.loads(ask(path, b"json\n"))["pid"] == os.getpid()
    sockets.disable_tracebacker()
    assert (os.listdir(first), os.listdir(elsewhere)) == ([], [])
