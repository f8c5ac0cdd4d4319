"""tbfast connect-and-read on the real sockets of worker subprocesses."""

import io
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

import tbfast
from tbfast import cli
from conftest import needs_core

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_sockets as shared  # noqa: E402 - the workers and fixtures of the socket tests

ROOT, worker_env = shared.ROOT, shared.worker_env
# Fixtures, taken by name by the tests below.
script, tmp, spawn, server, autostart_python = (
    shared.script, shared.tmp, shared.spawn, shared.server, shared.autostart_python)

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
    assert blocks[0] == "13 threads in 3 workers, 3 different stacks:"
    busy = blocks[1].splitlines()
    assert busy[0] == "7 threads in 2 workers are in:"
    stuck = busy.index('  File "%s", line %d, in stuck_in_here' % (script, workers[0].info["line"]))
    assert busy[stuck + 1] == "    release.wait()"
    assert busy[1].endswith(", in _bootstrap"), "outermost first, as in a traceback"
    assert busy[-2].endswith(", in wait"), "innermost last"
    assert sorted(block.splitlines()[0] for block in blocks[2:4]) == [
        "3 threads in 3 workers are in:"] * 2
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
    assert re.search(r'^Thread 0x[0-9a-f]+ \(name "MainThread", native id \d+, holds the GIL\)',
                     result.stdout, re.M)
    assert worker.read()["held"] is True
