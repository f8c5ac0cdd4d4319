"""The three formats: the core writes what the pure-Python fallback writes, uWSGI's
grammar line for line, valid JSON, and an explicit marker when the buffer is full."""

import inspect
import json
import re
import threading
import time
import traceback

import pytest

import tbfast
import shapes
from tbfast import _fallback, _limits
from conftest import current_stacks, needs_core, thread_of


# A thread's state as the text heading shows it, what it may show apart from
# (waiting for the GIL: the fallback cannot tell).
STATE_WORDS = re.compile(rb", (?:waiting for the GIL|in GC|running|sleeping(?: in [a-z0-9_ ]+)?)(?=[,)])")


def body(dump):
    """Everything but the header line (pid, time, mode and the counts by state differ by
    design), each thread's state masked but for idle and holding the GIL: a thread
    not parked may change state between two dumps, and only the core knows which
    thread waits for the GIL (test_thread_states checks the states); and but C
    frames, which only the core shows (a run with TBFAST_TEST_NATIVE asks them of
    every dump)."""
    if dump.startswith(b"{"):
        document = json.loads(dump)
        for key in ("time", "mode", "running", "sleeping", "idle", "waiting_gil"):
            document.pop(key)
        for thread in document["threads"]:
            thread.pop("native", None)
            thread.pop("native_error", None)
            if thread["state"] != "idle":
                thread.update(state=None, syscall=None, waiting_gil=False, in_gc=False)
        return document
    text = dump.split(b"\n", 1)[1] if dump.startswith(b"tbfast dump:") else dump
    text = b"".join(line for line in text.splitlines(True) if not line.startswith(b"  [C] "))
    return STATE_WORDS.sub(b"", text)


@needs_core
@pytest.mark.parametrize("fmt", tbfast.FORMATS)
def test_core_output_equals_fallback(parked, fmt):
    for shape in (shapes.nested, shapes.deep_recursion, shapes.coroutine_in_loop, shapes.exec_string):
        parked(shape)
    core, fallback = tbfast._impl.format_dump(True, fmt, 0), _fallback.format_dump(True, fmt, 0)
    assert body(core) == body(fallback)


@needs_core
def test_bounded_strings_equal_fallback(parked, tmp_path, monkeypatch):
    """Long and odd names are cut at the same byte, lone surrogates escaped the same way."""
    long_name = "ñ" * 150 + "x" * 300
    source = ("def %s(park):\n    return park()  # %s\n" % (long_name, "€" * 400))
    module_file = tmp_path / "odd_module.py"
    module_file.write_text(source, encoding="utf-8")
    code = compile(source, str(module_file) + "\udcff-escaped", "exec")
    namespace = {}
    exec(code, namespace)
    compile_in_real_file = compile(source, str(module_file), "exec")
    exec(compile_in_real_file, namespace)
    parked(namespace[long_name], name="n" * 300)
    for fmt in tbfast.FORMATS:
        core, fallback = tbfast._impl.format_dump(True, fmt, 0), _fallback.format_dump(True, fmt, 0)
        assert body(core) == body(fallback), fmt
    document = json.loads(tbfast.format_traceback(format="json"))
    frame = [f for t in document["threads"] for f in t["frames"] if f["file"] == str(module_file)][0]
    assert len(frame["function"].encode()) <= _limits.FUNCTION_LIMIT and frame["function"].endswith("...")
    assert frame["source"].endswith("...") and len(frame["source"].encode()) <= _limits.SOURCE_LIMIT


@needs_core
def test_surrogate_escaped_filename_equals_fallback(parked):
    namespace = {}
    exec(compile("def run(park):\n    park()\n", "/nonexistent/caf\udce9.py", "exec"), namespace)
    parked(namespace["run"])
    core, fallback = tbfast._impl.format_dump(True, "text", 0), _fallback.format_dump(True, "text", 0)
    assert body(core) == body(fallback)
    assert b'File "/nonexistent/caf\\udce9.py", line 2 in run' in core


def uwsgi_lines_from_extract_stack(thread):
    """What uWSGI's tracebacker prints for a thread: oldest frame first."""
    frame = current_stacks()[thread.ident]
    return ["thread_id = %s filename = %s lineno = %d function = %s line = %s" % (
        thread.name, summary.filename, summary.lineno, summary.name, summary.line)
        for summary in traceback.extract_stack(frame)]


def test_uwsgi_format_is_uwsgis_grammar(parked):
    item = parked(shapes.nested, name="uWSGIWorker1Core3")
    dump = tbfast.format_traceback(format="uwsgi")
    assert dump.startswith("*** uWSGI Python tracebacker output ***\n\n")
    blocks = dump[len("*** uWSGI Python tracebacker output ***\n\n"):].split("\n\n")
    mine = [block for block in blocks if block.startswith("thread_id = uWSGIWorker1Core3 ")]
    assert mine == ["\n".join(uwsgi_lines_from_extract_stack(item.thread))]
    assert blocks[-1] == ""  # a blank line closes every thread


def test_text_format_extends_faulthandlers_grammar(parked):
    item = parked(shapes.nested, name="worker")
    text = tbfast.format_traceback()
    header, rest = text.split("\n", 1)
    assert re.fullmatch(r"tbfast dump: pid=\d+ time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z "
                        r"trigger=api mode=(gil|python) threads=\d+ running=\d+ sleeping=\d+ idle=\d+ "
                        r"waiting_gil=\d+", header)
    heading = "Thread 0x%016x (name \"worker\", native id %d, idle) (most recent call first):" % (
        item.thread.ident, item.thread.native_id)
    assert heading in rest.splitlines()
    frames = re.findall(r'^  File "(.*)", line (\d+) in (.*)$',
                        rest.split(heading, 1)[1].split("\n\n", 1)[0], re.M)
    stack = reversed(traceback.extract_stack(current_stacks()[item.thread.ident]))
    assert frames == [(s.filename, str(s.lineno), s.name) for s in stack]


def test_json_schema():
    document = json.loads(tbfast.format_traceback(format="json"))
    assert set(document) == {"tbfast", "pid", "time", "trigger", "mode", "running", "sleeping", "idle",
                             "waiting_gil", "threads", "truncated"}
    assert document["truncated"] is None
    for thread in document["threads"]:
        assert set(thread) - {"native", "native_error"} == {  # C frames: test_native.py
            "ident", "native_id", "name", "kernel_name", "current", "holds_gil", "state", "syscall",
            "waiting_gil", "in_gc", "context", "frames"}
        for frame in thread["frames"]:
            assert set(frame) == {"file", "line", "function", "source"}


def park_deep(release, depth):
    if depth:
        return park_deep(release, depth - 1)
    release.wait(60)


def wait_until_blocked(threads, seconds=30):
    """Until every thread sits in the lock acquire of Condition.wait, so its stack stays put."""
    wait_code = threading.Condition.wait.__code__
    lines = [number for number, line in enumerate(
        inspect.getsourcelines(wait_code)[0], wait_code.co_firstlineno)
        if "waiter.acquire(True, timeout)" in line]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frames = current_stacks()
        if all(frames[t.ident].f_code is wait_code and frames[t.ident].f_lineno in lines
               for t in threads):
            return
        time.sleep(0.01)
    raise AssertionError("threads did not park within %ss" % seconds)


def frames_accounted(dump, fmt):
    """Frames a dump shows (repeats included) plus those its marker says it left out."""
    if fmt == "json":
        document = json.loads(dump)
        return (sum(len(thread["frames"]) for thread in document["threads"])
                + document["truncated"]["frames"]), document["threads"][0]["ident"]
    text = dump.decode()
    marker = re.search(r"\*\*\* tbfast: buffer full, (\d+) frames in (\d+) threads not shown "
                       r"\(buffer_size=(\d+)\) \*\*\*\n$", text)
    assert marker, text[-300:]
    if fmt == "uwsgi":
        shown = text.count("\nthread_id = ")
        first = re.search(r"^thread_id = (\S+) ", text, re.M).group(1)
        return shown + int(marker.group(1)), threading.main_thread().ident if first == "MainThread" else first
    shown = text.count('\n  File "') + sum(int(n) for n in re.findall(r"repeated (\d+) more time", text))
    first = int(text.split("\n", 2)[1].split()[2], 16)
    return shown + int(marker.group(1)), first


@needs_core  # faulthandler's format caps the threads itself: test_faulthandler.py
@pytest.mark.parametrize("fmt", [fmt for fmt in tbfast.FORMATS if fmt != "faulthandler"])
def test_thousand_threads_truncated_with_exact_marker_main_first(fmt):
    """1000 threads x 100 frames overflow the buffer: the marker counts exactly what
    was left out, and the main thread is never the one dropped."""
    count, depth = 1000, 100
    release = threading.Event()
    threads = [threading.Thread(target=park_deep, args=(release, depth - 5), daemon=True)
               for _ in range(count)]
    for thread in threads:
        thread.start()
    tbfast.configure(buffer_size=256 * 1024)
    try:
        wait_until_blocked(threads)
        dump = tbfast._impl.format_dump(True, fmt, 0)
        # Every thread's but tbfast's consistent thread's (if a socket test started it).
        total = sum(len(traceback.extract_stack(frame)) for ident, frame in current_stacks().items()
                    if ident != tbfast._impl.consistent_thread_ident())
    finally:
        tbfast.configure(buffer_size=_limits.DEFAULT_BUFFER_SIZE)
        release.set()
        for thread in threads:
            thread.join(30)
    assert len(dump) <= 256 * 1024 + 512
    accounted, first = frames_accounted(dump, fmt)
    assert accounted == total
    assert first == threading.main_thread().ident


# What a remote client may put in a request path: a fake frame line, a terminal title
# sequence, and every kind of control character.
HOSTILE = ('/slow\n  File "/srv/evil.py", line 1 in injected\r\x1b]0;pwned\x07 \x00\t\x7f'
           '\x85\x9b\u2028\u2029 end')
# A raw control character in text or uwsgi output: anything but the newlines that end its lines.
RAW_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")


def escaped(text):
    """`text` as the dumps print it: Python's repr() spelling of its control characters."""
    assert "'" not in text and "\\" not in text  # repr() would escape those too
    return repr(text)[1:-1].encode()


def test_control_characters_in_every_field_are_escaped(parked, tmp_path):
    """A thread's name and context, a file's and a function's name, a source line: no
    field writes a raw control character, so none can fake a frame line or reach a
    terminal as an escape sequence.  The core and the fallback write the same; JSON
    keeps the exact strings, by its own escaping."""
    function = "handler" + HOSTILE[:40]
    module_file = tmp_path / ("hostile" + HOSTILE[:30].replace("/", "_") + ".py")
    # A comment may hold any character but those that end a line (and NUL).
    comment = HOSTILE.replace("\n", "").replace("\r", "").replace("\0", "")
    module_file.write_text("def run(park):\n    return park()  # %s\n" % comment, encoding="utf-8")
    namespace = {}
    exec(compile(module_file.read_text(encoding="utf-8"), str(module_file), "exec"), namespace)
    run = namespace["run"]
    run.__code__ = run.__code__.replace(co_name=function)

    # set_context refuses a NUL (the WSGI middleware escapes a request's before it).
    context = HOSTILE.replace("\0", "")

    def with_context(park):
        tbfast.set_context(context)
        return run(park)

    item = parked(with_context, name="worker" + HOSTILE)
    formatters = [("fallback", _fallback.format_dump)]
    if tbfast.HAS_CORE:
        formatters.append(("core", tbfast._impl.format_dump))
    for fmt in ("text", "uwsgi"):
        dumps = {name: format_dump(True, fmt, 0) for name, format_dump in formatters}
        for name, dump in dumps.items():
            assert not RAW_CONTROL.search(dump), (name, fmt, RAW_CONTROL.search(dump))
            assert not re.search(rb'^  File "/srv/evil.py"', dump, re.M), (name, fmt)
            for field in ("worker" + HOSTILE, function, str(module_file),
                          "return park()  # " + comment):
                assert escaped(field) in dump, (name, fmt, field)
            if fmt == "text":
                assert b"\n  Context: " + escaped(context) + b"\n" in dump, name
        if tbfast.HAS_CORE:
            assert body(dumps["core"]) == body(dumps["fallback"]), fmt
    for name, format_dump in formatters:
        thread = thread_of(json.loads(format_dump(True, "json", 0)), item.thread.ident)
        assert (thread["name"], thread["context"]) == ("worker" + HOSTILE, context), name
        frame = next(frame for frame in thread["frames"] if frame["file"] == str(module_file))
        assert (frame["function"], frame["source"]) == (function, "return park()  # " + comment)
