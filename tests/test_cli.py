"""tbfast connect-and-read on the real sockets of worker subprocesses."""

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

import tbfast
from tbfast import cli
from conftest import needs_core
# autostart_python, other_user, script, server, spawn and tmp: fixtures, taken by name.
from workerkit import (  # noqa: F401
    ROOT, autostart_python, end_connection, other_user, script, served_by, server, spawn, tmp,
    worker_env)

SCRIPT = os.path.join(os.path.dirname(sys.executable), "tbfast")


def run(*args, timeout=60, env=None, python=None, cwd="/"):
    """`python -m tbfast ARGS`, from a directory where no source tree shadows tbfast."""
    command = [python or sys.executable, "-m", "tbfast", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=env or worker_env(), cwd=cwd)


def headings(stdout):
    return re.findall(r"^==> (.*) <==$", stdout, re.MULTILINE)


def test_one_socket(spawn, tmp, script):
    worker = spawn({"basename": tmp + "/tb."})
    result = run("connect-and-read", worker.path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("==> %s <==\ntbfast dump: pid=%d " % (worker.path, worker.pid))
    assert ('  File "%s", line %d in stuck_in_here\n    release.wait()\n'
            % (script, worker.info["line"])) in result.stdout


def test_glob_reads_every_worker_in_worker_order(spawn, tmp):
    workers = {number: spawn({"basename": tmp + "/tb.", "worker_id": number})
               for number in (10, 2, 1)}
    assert os.path.exists(tmp + "/tb.10.lock")  # globbed too, and skipped
    result = subprocess.run([SCRIPT, "connect-and-read", tmp + "/tb.*"], capture_output=True,
                            text=True, timeout=60, env=worker_env(), cwd="/")
    assert result.returncode == 0, result.stderr
    assert headings(result.stdout) == [tmp + "/tb.1", tmp + "/tb.2", tmp + "/tb.10"]
    dumps = re.split(r"^==> .* <==\n", result.stdout, flags=re.MULTILINE)[1:]
    for number, dump in zip((1, 2, 10), dumps, strict=True):
        assert dump.startswith("tbfast dump: pid=%d " % workers[number].pid)


def test_format_request(spawn, tmp, script):
    worker = spawn({"basename": tmp + "/tb."})
    result = run("connect-and-read", "--format", "json", "--no-headings", worker.path)
    assert result.returncode == 0, result.stderr
    dump = json.loads(result.stdout)
    assert dump["pid"] == worker.pid and dump["trigger"] == "socket"
    result = run("connect-and-read", "--format", "uwsgi", worker.path)
    assert result.stdout.startswith(
        "==> %s <==\n*** uWSGI Python tracebacker output ***\n" % worker.path)
    assert ("filename = %s lineno = %d function = stuck_in_here" % (script, worker.info["line"])
            in result.stdout)


def test_summary_groups_the_stacks_of_all_workers(spawn, tmp, server, script):
    counts = (4, 3, 0)
    workers = [spawn({"basename": tmp + "/tb.", "threads": threads}, server)
               for threads in counts]
    result = run("connect-and-read", "--summary", tmp + "/tb.*")
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("\n\n")
    # Each worker: its busy threads, its main thread, its watchdog Timer thread.
    assert blocks[0] == "13 threads in 3 workers, 3 different stacks and states:"
    busy = blocks[1].splitlines()
    assert busy[0] == "7 threads in 2 workers (idle) are in:"
    stuck = busy.index('  File "%s", line %d, in stuck_in_here' % (script, workers[0].info["line"]))
    assert busy[stuck + 1] == "    release.wait()"
    assert busy[1].endswith(", in _bootstrap"), "outermost first, as in a traceback"
    assert busy[-2].endswith(", in wait"), "innermost last"
    assert sorted(block.splitlines()[0] for block in blocks[2:4]) == [
        "3 threads in 3 workers (idle) are in:", "3 threads in 3 workers (sleeping in read) are in:"]
    main = next(block for block in blocks[2:4] if ", in <module>" in block)
    assert main.splitlines()[1:3] == ['  File "%s", line %d, in <module>' % (
        script, _line_of(script, "for command in sys.stdin:")), "    for command in sys.stdin:"]
    assert len(blocks) == 4 and result.stdout.endswith("\n")
    assert "tbfast-tracebacker" not in result.stdout


def _line_of(path, text):
    with open(path) as file:
        for number, line in enumerate(file, 1):
            if line.strip() == text:
                return number
    raise AssertionError("%r not in %s" % (text, path))


def test_timeout_names_the_path_and_the_others_are_still_read(spawn, tmp):
    worker = spawn({"basename": tmp + "/tb."})
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(tmp + "/tb.0")  # accepts connections (backlog), never answers
    silent.listen(8)
    try:
        started = time.monotonic()
        result = run("connect-and-read", "--timeout", "0.5", tmp + "/tb.*")
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert result.returncode == 1
    assert result.stderr == "tbfast: %s/tb.0: timed out after 0.5s\n" % tmp
    assert headings(result.stdout) == [worker.path]
    assert "tbfast dump: pid=%d " % worker.pid in result.stdout
    assert elapsed < 10


def test_missing_stale_and_unmatched(tmp):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(tmp + "/stale.1")
    stale.close()  # the file stays, nobody listens
    result = run("connect-and-read", tmp + "/none.1", tmp + "/stale.1", tmp + "/zz.*")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "tbfast: %s/zz.*: no socket matches" % tmp,
        "tbfast: %s/none.1: no such socket" % tmp,
        "tbfast: %s/stale.1: connection refused: no process serves it (a stale socket?)" % tmp,
    ]


@pytest.mark.skipif(not ROOT, reason="needs root to run the command as nobody")
def test_refusal_names_the_path(spawn, tmp):
    os.chmod(tmp, 0o711)
    worker = spawn({"basename": tmp + "/tb.", "mode": 0o666})
    out_path, err_path = tmp + "/out", tmp + "/err"
    child = os.fork()
    if child == 0:
        status = 99
        try:
            sys.stdout = io.TextIOWrapper(open(out_path, "wb"), write_through=True)
            sys.stderr = io.TextIOWrapper(open(err_path, "wb"), write_through=True)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            status = cli.main(["connect-and-read", worker.path])
        finally:
            os._exit(status)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    with open(err_path) as file:
        assert file.read() == "tbfast: %s: refused: uid 65534 is not allowed\n" % worker.path
    with open(out_path) as file:
        assert file.read() == ""


def test_version_help_and_usage_errors():
    result = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, timeout=30,
                            cwd="/")
    assert result.stdout == "tbfast %s (%s)\n" % (tbfast.__version__, tbfast.MODE)
    top = run("--help")
    assert top.returncode == 0 and "connect-and-read" in top.stdout
    sub = run("connect-and-read", "--help")
    for option in ("--format", "--timeout", "--summary", "--no-headings", "/tmp/tbsocket.*"):
        assert option in sub.stdout
    for args, message in [
        (["connect-and-read"], "the following arguments are required: PATH"),
        (["connect-and-read", "--timeout", "-1", "x"], "must be a positive number"),
        (["connect-and-read", "--timeout", "soon", "x"], "not a number of seconds"),
        (["connect-and-read", "--format", "xml", "x"], "invalid choice: 'xml'"),
        (["connect-and-read", "--summary", "--format", "text", "x"], "--summary reads json"),
        ([], "the following arguments are required: COMMAND"),
    ]:
        result = run(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_the_command_gives_up_a_slot_autostart_gave_it(spawn, tmp, autostart_python):
    worker = spawn({"basename": tmp + "/tb.", "worker_id": 1})
    env = worker_env(TBFAST_TRACEBACKER=tmp + "/tb.")
    result = run("connect-and-read", tmp + "/tb.*", env=env, python=autostart_python)
    assert result.returncode == 0, result.stderr
    assert headings(result.stdout) == [worker.path]
    assert sorted(os.listdir(tmp)) == ["tb.1", "tb.1.lock"]


def test_abstract_socket(spawn):
    worker = spawn({"basename": "@tbfast-cli-%d." % os.getpid()})
    assert worker.path == "@tbfast-cli-%d.1" % os.getpid()
    result = run("connect-and-read", "--format", "json", worker.path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("==> %s <==\n" % worker.path)
    assert json.loads(result.stdout.split("\n", 1)[1])["pid"] == worker.pid


@needs_core
def test_answers_within_a_second_while_the_gil_is_held(spawn, tmp, script):
    """The worker's main thread keeps the GIL in a C call for 3 s; the command, given
    one second in all, still prints the stuck frame, marked as the GIL holder."""
    worker = spawn({"basename": tmp + "/tb."})
    worker.send("hold 3")
    holding = worker.read()
    time.sleep(0.3)  # into the C call
    result = run("connect-and-read", "--timeout", "1", worker.path, timeout=30)
    assert result.returncode == 0, result.stderr
    assert ('  File "%s", line %d in hold_the_gil\n    sleep(seconds)\n'
            % (script, holding["line"])) in result.stdout
    assert re.search(r'^Thread 0x[0-9a-f]+ \(name "MainThread", native id \d+, holds the GIL, sleeping in [a-z0-9_]+\)',
                     result.stdout, re.M)
    assert worker.read()["held"] is True


@contextlib.contextmanager
def fake_server(path, answer, close=True):
    """A socket at `path` that answers each client with the chunks `answer()` gives,
    then ends the connection, or with close=False keeps it open until the block
    ends: what any process may serve.  At most 8 clients, in a thread."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    listener.settimeout(0.1)
    done, kept = threading.Event(), []

    def serve():
        deadline = time.monotonic() + 120
        for _ in range(8):
            while not done.is_set() and time.monotonic() < deadline:
                try:
                    client = listener.accept()[0]
                    break
                except socket.timeout:
                    continue
            else:
                return
            try:
                for chunk in answer():
                    client.sendall(chunk)
            except OSError:
                pass  # the reader stopped reading and left
            if close:
                end_connection(client)
            else:
                kept.append(client)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(10)
        for client in kept:
            client.close()
        listener.close()


# A raw control character in what the command prints: anything but newlines and tabs.
RAW_CONTROL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")
HOSTILE = '/slow\n  File "/srv/evil.py", line 1 in injected\r\x1b]0;pwned\x07\x85\u2028 end'


def run_bytes(*args, timeout=60):
    """`python -m tbfast ARGS`: (exit status, stdout bytes, stderr bytes)."""
    result = subprocess.run([sys.executable, "-m", "tbfast", *args], capture_output=True,
                            timeout=timeout, env=worker_env(), cwd="/")
    return result.returncode, result.stdout, result.stderr


def test_a_request_path_in_a_context_prints_as_one_escaped_line(spawn, tmp, server):
    """A request path holding a fake frame line and a terminal escape sequence is
    printed by connect-and-read escaped, on its one line: no raw control character."""
    worker = spawn({"basename": tmp + "/tb.", "request": HOSTILE}, server)
    for fmt in ("text", "uwsgi"):
        status, out, err = run_bytes("connect-and-read", "--format", fmt, worker.path)
        assert (status, err) == (0, b""), err
        assert not RAW_CONTROL.search(out), RAW_CONTROL.search(out)
        assert not re.search(rb'^  File "/srv/evil.py"', out, re.M)
        assert repr("request " + HOSTILE)[1:-1].encode() in out
        if fmt == "text":
            assert b"\n  Context: GET " + repr(HOSTILE)[1:-1].encode() + b"\n" in out
    status, out, err = run_bytes("connect-and-read", "--format", "json", "--no-headings",
                                 worker.path)
    threads = json.loads(out)["threads"]
    assert {"GET " + HOSTILE} == {thread["context"] for thread in threads if thread["context"]}


def test_control_characters_from_any_server_are_printed_escaped(tmp):
    """Whatever a socket sends, the command prints no raw control character but the
    newlines and tabs: a text dump's are escaped as repr() spells them, a JSON
    dump's (the C1 ones and DEL, which JSON may carry raw) as JSON does, so the
    document parses to the same; bytes that are not UTF-8 are escaped too."""
    lines = ["tbfast dump: pid=1", "\tThread \x1b[31mred\x1b[0m\r\x00\x07\x7f\x85\x9b\u2028 end"]
    text = "\n".join(lines).encode() + b"\n\xff\xfe\n"
    printed = "\n".join(repr(line)[1:-1].replace("\\t", "\t") for line in lines).encode() \
        + b"\n\\xff\\xfe\n"
    document = {"tbfast": 1, "threads": [{"name": "\x1b\x7f\x85\x9b\u2028 end"}]}
    with fake_server(tmp + "/text.1", lambda: [text]), fake_server(
            tmp + "/json.1", lambda: [json.dumps(document, ensure_ascii=False).encode()]):
        status, out, err = run_bytes("connect-and-read", "--no-headings", tmp + "/text.1")
        assert (status, err, out) == (0, b"", printed)
        status, out, err = run_bytes("connect-and-read", "--no-headings", tmp + "/json.1")
        assert (status, err) == (0, b"")
        assert not RAW_CONTROL.search(out)
        assert json.loads(out) == document


def test_a_server_of_another_user_is_refused_unless_allowed(tmp, other_user):
    """A slot served by another user (taken first, or in a directory others may write
    to) is refused, its fake dump not printed as the worker's, unless --allow-uid
    names that user or --any-owner is given."""
    os.chmod(tmp, 0o1777)
    fake = b"tbfast dump: pid=1 (not your worker)\n"
    with served_by(other_user, tmp + "/tb.1", fake):
        status, out, err = run_bytes("connect-and-read", tmp + "/tb.1")
        assert (status, out) == (1, b"")
        assert err.decode() == (
            "tbfast: %s/tb.1: served by uid %d (%s), neither yours nor root's: not read "
            "(--allow-uid %d reads it)\n" % (tmp, other_user.pw_uid, other_user.pw_name,
                                              other_user.pw_uid))
        for allow in (["--allow-uid", other_user.pw_name], ["--allow-uid", str(other_user.pw_uid)],
                      ["--any-owner"]):
            status, out, err = run_bytes("connect-and-read", *allow, tmp + "/tb.1")
            assert (status, err) == (0, b""), err
            assert out == b"==> %s/tb.1 <==\n" % tmp.encode() + fake


def test_a_socket_that_keeps_streaming_is_read_to_the_buffer_size(tmp):
    """A socket that keeps streaming is read up to the buffer size (or --max-bytes),
    then the command stops and says so."""
    chunk = b"x" * 65535 + b"\n"
    with fake_server(tmp + "/tb.1", lambda: [chunk] * 200):  # 12.5 MiB
        for options, limit in (([], tbfast._limits.DEFAULT_BUFFER_SIZE),
                               (["--max-bytes", "100000"], 100000)):
            status, out, err = run_bytes("connect-and-read", "--no-headings", *options,
                                         tmp + "/tb.1")
            why = "cut short after %d bytes: more than --max-bytes %d" % (limit, limit)
            assert (status, err.decode()) == (1, "tbfast: %s/tb.1: %s\n" % (tmp, why))
            data = (chunk * 200)[:limit]
            assert out == data + (b"" if data.endswith(b"\n") else b"\n") + (
                b"*** tbfast: %s ***\n" % why.encode())


def test_a_dump_cut_short_by_the_timeout_is_printed_and_marked(tmp):
    """On a timeout the command prints what it read, marked as cut short."""
    start = b"tbfast dump: pid=1\nThread 0x1 (most recent call first):\n  File"
    with fake_server(tmp + "/tb.1", lambda: [start], close=False):
        status, out, err = run_bytes("connect-and-read", "--timeout", "1", tmp + "/tb.1")
    assert status == 1
    assert err.decode() == "tbfast: %s/tb.1: cut short after %d bytes: timed out after 1s\n" % (
        tmp, len(start))
    assert out == b"==> %s/tb.1 <==\n%s\n*** tbfast: cut short after %d bytes: timed out after " \
        b"1s ***\n" % (tmp.encode(), start, len(start))


def test_summary_refuses_a_document_that_is_no_dump(tmp):
    """A JSON document without tbfast's threads and frames is one clear line, not a traceback."""
    odd = json.dumps({"tbfast": 1, "threads": [{"frames": [{"file": "x.py"}]}]}).encode()
    with fake_server(tmp + "/tb.1", lambda: [odd]):
        status, out, err = run_bytes("connect-and-read", "--summary", tmp + "/tb.1")
    assert (status, out) == (1, b"")
    assert err.decode() == (
        "tbfast: %s/tb.1: not a json dump: its threads or frames are missing or malformed\n" % tmp)
