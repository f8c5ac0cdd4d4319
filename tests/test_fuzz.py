"""Fuzzing with hypothesis.  The socket's request parser gets
random bytes, lines, partial and slow sends; the Python API's format options and
the CLI's arguments get arbitrary values.  Every input gets a dump or one clean
error, never a crash or a hang, and the server keeps serving after each."""

import contextlib
import errno
import io
import json
import os
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tbfast
from stress_worker import Malformed, check, figures, format_of
from workerkit import read_until_closed

BAD_REQUEST = b"tbfast: bad request: expected [text|uwsgi|json|faulthandler] [locals] [gil-free] [native] [native-all]\n"  # as a client reads it
REQUEST_MAX = 64
SPACES = b" \t\n\r\f\v"  # what the server strips around a request
# scripts/soak (TBFAST_SOAK=N dumps for the stress test) scales the examples with it.
SCALE = max(1, int(os.environ.get("TBFAST_SOAK") or 10000) // 10000)


def examples(count):
    return settings(max_examples=count * SCALE, deadline=None, suppress_health_check=list(HealthCheck))



@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """This process's tracebacker socket, and a tally of what fuzzing tried."""
    path = tbfast.enable_tracebacker(str(tmp_path_factory.mktemp("fuzz") / "tb."), worker_id=1)
    tally = {"inputs": 0, "bad requests": 0, "dumps": 0, "late (default format)": 0}
    yield path, tally
    tbfast.disable_tracebacker()
    figures("fuzz-socket", **tally)


def expected_answer(request):
    """What the server answers a request sent at once: a format, or None for the error."""
    if len(request) > REQUEST_MAX:
        return None
    words = request.split(b"\n", 1)[0].split()  # one line; bytes.split() splits on SPACES
    formats = [word for word in words if word in (b"text", b"uwsgi", b"json")]
    if len(formats) > 1 or any(word not in (b"text", b"uwsgi", b"json", b"locals", b"gil-free")
                               for word in words):
        return None
    return formats[0].decode() if formats else "text"


def exchange(path, chunks, pause, shut, read):
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(10)  # a hang fails the example instead of the run
    client.connect(path)
    try:
        for chunk in chunks if pause else [b"".join(chunks)]:
            client.sendall(chunk)
            time.sleep(pause)
        if shut:
            client.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before we were done: read what it said
    answer = b""
    if read:
        answer, ending = read_until_closed(client, 10)
        # Whatever and whenever a client sends, it reads the whole answer, then end of
        # file: a reset would leave it unable to tell a whole answer from a cut one.
        if ending != "end of file":
            pytest.fail("%s after %r" % (ending, answer[:200]))
    client.close()
    return answer


requests = st.one_of(
    st.binary(max_size=100),
    st.sampled_from([b"text", b"json", b"uwsgi", b"text\n", b" json \r\n", b"\n", b"", b"JSON\n",
                     b"text\njson\n", b"\x00text\n", b"uwsgi" * 13, b"a" * 64 + b"\n",
                     b"json locals\n", b"gil-free\n", b"locals gil-free uwsgi\n", b"text json\n",
                     b"locals  locals\n", b"\tgil-free\x0bjson\n"]),
    st.text(max_size=70).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


@examples(300)
@given(chunks=st.lists(requests, max_size=4), pause=st.sampled_from([0, 0, 0.001, 0.004, 0.015]),
       shut=st.booleans(), read=st.booleans())
def test_socket_requests(served, chunks, pause, shut, read):
    path, tally = served
    tally["inputs"] += 1
    answer = exchange(path, chunks, pause, shut, read)
    if read:
        if answer == BAD_REQUEST:
            tally["bad requests"] += 1
        else:
            try:
                check(answer, format_of(answer), None)
            except Malformed as error:
                pytest.fail("neither a dump nor the error line (%s): %r" % (error, answer[:500]))
            tally["dumps"] += 1
        if not pause:  # all sent at once: the answer is the documented one, unless it came late
            wanted = expected_answer(b"".join(chunks))
            got = None if answer == BAD_REQUEST else format_of(answer)
            if got != wanted:
                assert got == "text", "%r got %s, not %s" % (b"".join(chunks), got, wanted)
                tally["late (default format)"] += 1
    # ...and the server goes on serving.
    assert json.loads(exchange(path, [b"json\n"], 0, False, True))["tbfast"] == 1


anything = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70), st.floats(),
    st.text(max_size=8), st.binary(max_size=8), st.sampled_from(["text", "uwsgi", "json"]),
    st.builds(object), st.lists(st.integers(), max_size=2), st.builds(io.BytesIO),
    st.builds(io.StringIO),
)


def half(valid, other):
    """Values of `valid` half the time (one_of would weigh each of other's branches as much)."""
    return st.booleans().flatmap(lambda pick: valid if pick else other)


formats = half(st.sampled_from(["text", "uwsgi", "json"]), anything)
CLEAN_ERRORS = (TypeError, ValueError, OSError)
TRIED = {}


REFUSED = object()


def tried(what):
    TRIED[what] = TRIED.get(what, 0) + 1


def attempt(what, call, success):
    """call()'s result, or REFUSED after a clean error, which must say what is wrong;
    either way counted in the figures under `what`."""
    try:
        result = call()
    except CLEAN_ERRORS as error:
        assert str(error)
        tried("%s: %s" % (what, type(error).__name__))
        return REFUSED
    tried("%s: %s" % (what, success))
    return result


@pytest.fixture(scope="module", autouse=True)
def api_figures():
    yield
    figures("fuzz-api-cli", **TRIED)


@examples(500)
@given(format=formats, all_threads=anything)
def test_format_traceback_options(format, all_threads):
    text = attempt("format_traceback",
                   lambda: tbfast.format_traceback(all_threads=all_threads, format=format), "dump")
    if text is not REFUSED:
        check(text.encode("utf-8", "surrogateescape"), format)


@examples(500)
@given(file=anything, format=formats, all_threads=anything, target=st.sampled_from(
    ["as given", "pipe", "closed fd"]))
def test_dump_traceback_options(file, format, all_threads, target):
    read_end, write_end = os.pipe2(os.O_NONBLOCK)
    os.set_blocking(write_end, True)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(os.close, read_end)
        if target == "pipe":
            file = write_end
        else:
            os.close(write_end)
            if target == "closed fd":
                file = write_end
        if target == "pipe":
            cleanup.callback(os.close, write_end)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            outcome = attempt("dump_traceback",
                              lambda: tbfast.dump_traceback(file, all_threads, format=format), "dump")
        if outcome is not REFUSED and target == "pipe":
            check(os.read(read_end, 1 << 22), format)


@examples(300)
@given(signum=half(st.sampled_from([10, 12, 34, 40]), anything),
       file=half(st.just("an open fd"), anything), format=formats)
def test_register_options(signum, file, format, tmp_path_factory):
    if file == "an open fd":
        file = open(os.devnull, "w")
    if signum in (2, 11, 7, 4, 8, 6):
        signum = 10  # SIGINT and the fault signals are pytest's and the guard's
    if attempt("register", lambda: tbfast.register(signum, file, format=format),
               "registered") is not REFUSED:
        assert tbfast.unregister(signum) is True


arguments = st.lists(st.one_of(
    st.sampled_from(["connect-and-read", "--format", "text", "json", "uwsgi", "xml", "--timeout", "0",
                     "-1", "nan", "inf", "0.05", "1e309", "--summary", "--no-headings", "--help", "-h",
                     "--", "-", "missing.sock", "*", "*.lock", "[", "connect", ""]),
    st.text(alphabet=st.characters(blacklist_characters="/", blacklist_categories=("Cs",)), max_size=12),
), max_size=6)


@examples(400)
@given(argv=arguments)
def test_cli_arguments(argv, tmp_path_factory):
    from tbfast import cli
    here = os.getcwd()
    os.chdir(tmp_path_factory.getbasetemp())  # globs match nothing of anybody's
    out, err = io.BytesIO(), io.StringIO()
    stdout = io.TextIOWrapper(out)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(err):
            try:
                status = cli.main(argv)
            except SystemExit as leave:
                status = leave.code
    finally:
        os.chdir(here)
    assert status in (0, 1, 2), (argv, status, err.getvalue())
    tried("cli: exit %d" % status)
    assert "Traceback" not in err.getvalue(), err.getvalue()
    if status:
        assert err.getvalue().strip(), "a failure without a message: %r" % (argv,)


def test_an_fd_too_large_for_c_is_a_clean_error():
    """Found by test_dump_traceback_options: os.fstat(2**40) raises OverflowError."""
    with pytest.raises(OSError) as raised:
        tbfast.dump_traceback(2 ** 40)
    assert raised.value.errno == errno.EBADF
