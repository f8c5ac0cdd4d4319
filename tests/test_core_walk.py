"""The core's walk equals traceback.extract_stack, frame for frame, over a corpus of
code shapes, with the GIL held (API) and without it (the C signal handler)."""

import importlib
import json
import os
import signal
import threading
import traceback

import pytest

import tbfast
import shapes
from conftest import current_stacks, dumped, needs_core, thread_of, truth


@pytest.mark.parametrize("shape", shapes.SHAPES, ids=lambda shape: shape.__name__)
def test_parked_thread_matches_extract_stack(parked, shape):
    item = parked(shape)
    ident = item.thread.ident
    assert dumped(tbfast.format_traceback(format="json"), ident) == truth(ident)


def test_current_thread_starts_at_the_caller():
    # Both on one line, so the innermost frame is at the same place.
    document, stack = json.loads(tbfast.format_traceback(format="json")), traceback.extract_stack()
    expected = [(summary.filename, summary.lineno, summary.name, summary.line or None)
                for summary in reversed(stack)]
    assert dumped(document, threading.get_ident()) == expected
    assert thread_of(document, threading.get_ident())["current"]


def test_non_ascii_file_and_function_names(parked, tmp_path, monkeypatch):
    module_file = tmp_path / "módulo_ñandú.py"
    module_file.write_text(
        "def función_π(park):\n"
        "    return 𝔡𝔢𝔢𝔭(park)  # línea con acentos\n"
        "def 𝔡𝔢𝔢𝔭(park):\n"
        "    return park()\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("módulo_ñandú")
    item = parked(module.función_π, name="hilo-ñ")
    ident = item.thread.ident
    document = json.loads(tbfast.format_traceback(format="json"))
    assert dumped(document, ident) == truth(ident)
    assert thread_of(document, ident)["name"] == "hilo-ñ"
    assert "𝔡𝔢𝔢𝔭" in tbfast.format_traceback()


def test_deep_recursion_is_compressed_as_traceback_does(parked):
    item = parked(lambda park: shapes.deep_recursion(park, 500))
    text = tbfast.format_traceback()
    block = text.split("0x%016x" % item.thread.ident, 1)[1].split("\n\n", 1)[0]
    summary = traceback.StackSummary.extract(
        traceback.walk_stack(current_stacks()[item.thread.ident]))
    expected = [line for line in "".join(summary.format()).splitlines() if "Previous line" in line]
    assert expected == ["  [Previous line repeated 497 more times]"]
    assert [line for line in block.splitlines() if "Previous line" in line] == expected


def test_thread_started_and_renamed_after_import_shows_its_name(parked):
    item = parked(shapes.nested, name="first-name")
    assert thread_of(tbfast.format_traceback(format="json"), item.thread.ident)["name"] == "first-name"
    item.thread.name = "renamed"
    assert thread_of(tbfast.format_traceback(format="json"), item.thread.ident)["name"] == "renamed"


def test_native_id_and_gil_holder(parked):
    item = parked(shapes.nested)
    document = json.loads(tbfast.format_traceback(format="json"))
    parked_thread = thread_of(document, item.thread.ident)
    me = thread_of(document, threading.get_ident())
    assert parked_thread["native_id"] == item.thread.native_id
    assert me["native_id"] == threading.get_native_id()
    assert me["holds_gil"] and not parked_thread["holds_gil"]
    assert me["current"] and not parked_thread["current"]


def test_main_thread_comes_first(parked):
    for _ in range(3):
        parked(shapes.nested)
    document = json.loads(tbfast.format_traceback(format="json"))
    assert document["threads"][0]["ident"] == threading.main_thread().ident


def test_only_current_thread(parked):
    parked(shapes.nested)
    document = json.loads(tbfast.format_traceback(all_threads=False, format="json"))
    assert [thread["ident"] for thread in document["threads"]] == [threading.get_ident()]


@needs_core
@pytest.mark.parametrize("shape", [shapes.nested, shapes.generator, shapes.coroutine_in_loop,
                                   shapes.deep_recursion], ids=lambda shape: shape.__name__)
def test_gil_free_walk_matches_extract_stack(parked, shape, tmp_path):
    """The C signal handler walks without asking for the GIL; its frames are the same."""
    item = parked(shape)
    ident = item.thread.ident
    out = tmp_path / "dump.json"
    with open(out, "wb") as sink:
        tbfast.register(signal.SIGUSR1, sink, format="json")
        try:
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        finally:
            tbfast.unregister(signal.SIGUSR1)
    document = json.loads(out.read_bytes())
    assert document["mode"] == "gil-free" and document["trigger"] == "signal:SIGUSR1"
    assert dumped(document, ident) == truth(ident)
    assert thread_of(document, ident)["name"] == item.thread.name


def test_context_is_shown_and_bounded():
    tbfast.set_context("GET /orders/42?x=ü")
    try:
        assert tbfast.get_context() == "GET /orders/42?x=ü"
        text = tbfast.format_traceback(all_threads=False)
        assert "\n  Context: GET /orders/42?x=ü\n" in text
        tbfast.set_context("x" * 2000)
        context = thread_of(tbfast.format_traceback(format="json"), threading.get_ident())["context"]
        assert context == "x" * (tbfast._limits.CONTEXT_LIMIT - 3) + "..."
    finally:
        tbfast.set_context(None)
    assert tbfast.get_context() is None
    assert "\n  Context: " not in tbfast.format_traceback(all_threads=False)


def test_source_line_follows_the_file_on_disk(parked, tmp_path, monkeypatch):
    """Source lines are cached across dumps, but an edited file is read again, as
    traceback.extract_stack's linecache.checkcache would."""
    module_file = tmp_path / "edited_module.py"
    module_file.write_text("def run(park):\n    park()  # first version\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("edited_module")
    item = parked(module.run)
    ident = item.thread.ident
    for _ in range(2):  # the second dump comes from the cache
        assert dumped(tbfast.format_traceback(format="json"), ident) == truth(ident)
    module_file.write_text("def run(park):\n    park()  # second version, longer\n")
    stat = os.stat(module_file)
    os.utime(module_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    frames = dumped(tbfast.format_traceback(format="json"), ident)
    assert frames == truth(ident)
    assert [frame[3] for frame in frames if frame[0] == str(module_file)] == [
        "park()  # second version, longer"]


def test_source_lines_of_many_places_are_all_kept_across_dumps(parked, tmp_path, monkeypatch):
    """120 frames at 120 lines of one file: some of their cache keys share a home slot,
    and each must still be kept.  The file is then rewritten with the same size and
    mtime, so a line read again would show the new text, where linecache (the truth)
    keeps the old one."""
    places = 120
    module_file = tmp_path / "many_places.py"
    source = "".join("def f%03d(park):\n    return f%03d(park)  # place %03d, old\n" % (i, i + 1, i)
                     for i in range(places)) + "def f%03d(park):\n    return park()\n" % places
    module_file.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("many_places")
    item = parked(module.f000)
    ident = item.thread.ident
    expected = truth(ident)
    assert dumped(tbfast.format_traceback(format="json"), ident) == expected
    stat = os.stat(module_file)
    module_file.write_text(source.replace(", old\n", ", new\n"))
    os.utime(module_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert truth(ident) == expected  # linecache keeps the lines: same size and mtime
    assert dumped(tbfast.format_traceback(format="json"), ident) == expected
