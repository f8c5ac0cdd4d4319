"""tbfast.rich with real gevent: every greenlet, its stack, the hub.

The truth is traceback.extract_stack(greenlet.gr_frame).
"""

import json
import threading
import time
import traceback

import pytest

gevent = pytest.importorskip("gevent", reason="gevent is not installed in this venv")
greenlet = pytest.importorskip("greenlet")
import gevent.event  # noqa: E402

from tbfast import rich  # noqa: E402
from tbfast.saferepr import MASKED  # noqa: E402

SLEEPERS = 100


def nap(release):
    release.wait(60)


def doze(release, number):
    password = "greenlet-password-value"
    nap(release)
    return number, password


@pytest.fixture
def sleepers():
    """SLEEPERS greenlets parked in nap() or doze(), released at the end."""
    release = gevent.event.Event()
    spawned = [gevent.spawn(doze, release, number) if number % 2 else gevent.spawn(nap, release)
               for number in range(SLEEPERS)]
    deadline = time.monotonic() + 10
    while not all(item.gr_frame is not None for item in spawned) and time.monotonic() < deadline:
        gevent.sleep(0.01)  # each one runs up to its wait, however loaded the machine
    assert all(item.gr_frame is not None for item in spawned)
    yield spawned
    release.set()
    gevent.joinall(spawned, timeout=10)


@pytest.fixture
def tracking_off():
    """Leaves greenlet tracing and tbfast.rich's tracking as they were."""
    previous_trace = greenlet.gettrace()
    saved = dict(rich._tracked, threads=set(rich._tracked["threads"]))
    rich._tracked.update(greenlets=None, threads=set())
    yield
    greenlet.settrace(previous_trace)
    rich._tracked.update(saved)


def section_heading(text):
    (heading,) = [line for line in text.splitlines() if line.startswith("Greenlets (")]
    return heading


def truth(item):
    return [(summary.filename, summary.lineno, summary.name, summary.line or None)
            for summary in reversed(traceback.extract_stack(item.gr_frame))]


def dumped_places(entry):
    return [(frame["file"], frame["line"], frame["function"], frame["source"])
            for frame in entry["frames"]]


def check_all_sleepers(document, sleepers, found_by):
    assert document["greenlets_found_by"] == found_by
    by_id = {entry["id"]: entry for entry in document["greenlets"]}
    assert len(by_id) == len(document["greenlets"])
    for item in sleepers:
        entry = by_id[id(item)]  # every one of them appears
        assert entry["state"] == "suspended" and entry["type"] == "Greenlet"
        assert entry["name"] == item.name
        assert dumped_places(entry) == truth(item)
        functions = [frame["function"] for frame in entry["frames"]]
        assert functions[functions.index("nap"):] == (["nap", "doze"] if "doze" in functions else ["nap"])
    hubs = [entry for entry in document["greenlets"] if entry["hub"]]
    assert [entry["id"] for entry in hubs] == [id(gevent.get_hub())]
    assert document["greenlets"][0]["hub"]  # the hub first


def test_all_greenlets_found_by_a_gc_scan(sleepers, tracking_off):
    check_all_sleepers(rich.sections("json"), sleepers, "gc")
    assert "found by a gc scan" in section_heading(rich.sections("text"))


def test_all_greenlets_found_by_tracking(tracking_off):
    release = gevent.event.Event()
    before = [gevent.spawn(nap, release) for _ in range(SLEEPERS // 2)]
    gevent.sleep(0.05)
    rich.track_greenlets()  # late: the ones alive now are recorded by a gc scan
    after = [gevent.spawn(doze, release, number) for number in range(SLEEPERS // 2)]
    gevent.sleep(0.05)  # the new ones switch in, and are recorded
    try:
        document = rich.sections("json")
        check_all_sleepers(document, before + after, "tracking")
        assert rich.greenlets_tracked() == {threading.get_ident()}
        assert "tracked by greenlet.settrace in thread" in section_heading(rich.sections("text"))
    finally:
        release.set()
        gevent.joinall(before + after, timeout=10)
    # A dead greenlet is not shown.
    ids = {entry["id"] for entry in rich.sections("json")["greenlets"]}
    assert not ids & {id(item) for item in before + after}


def test_tracking_chains_to_the_previous_trace_function(tracking_off):
    events = []
    greenlet.settrace(lambda event, args: events.append(event))
    rich.track_greenlets()
    gevent.sleep(0)
    assert "switch" in events


def test_text_layout_and_locals(sleepers):
    text = rich.sections("text", locals=True)
    dozer = next(item for item in sleepers if "doze" in [f.f_code.co_name for f in _frames(item)])
    heading = 'Greenlet %#018x (type Greenlet, name "%s", suspended) (most recent call first):' % (
        id(dozer), dozer.name)
    lines = text.splitlines()
    at = lines.index(heading)
    expected = []
    for file, line, function, source in truth(dozer):
        expected.append('  File "%s", line %d in %s' % (file, line, function))
        if source:
            expected.append("    " + source)
    shown = [line for line in lines[at + 1:at + 1 + 4 * len(expected)] if not line.startswith("      ")]
    assert shown[:len(expected)] == expected
    assert "greenlet-password-value" not in text
    document = rich.sections("json", locals=True)
    entry = next(entry for entry in document["greenlets"] if entry["id"] == id(dozer))
    (doze_frame,) = [frame for frame in entry["frames"] if frame["function"] == "doze"]
    assert doze_frame["locals"]["password"] == MASKED
    assert doze_frame["locals"]["number"] == repr(sleepers.index(dozer))
    json.dumps(document)  # serialisable as it is


def test_a_greenlet_not_started_yet(tracking_off):
    release = gevent.event.Event()
    waiting = gevent.spawn(nap, release)  # runs when this greenlet next yields
    try:
        (entry,) = [entry for entry in rich.sections("json")["greenlets"] if entry["id"] == id(waiting)]
        assert entry["state"] == "not started" and entry["frames"] == []
        heading = "Greenlet %#018x (type Greenlet, name \"%s\", not started)\n" % (id(waiting), waiting.name)
        assert heading in rich.sections("text")
    finally:
        release.set()
        waiting.join(10)


def test_greenlets_of_every_thread(sleepers, tracking_off):
    """A gc scan finds the greenlets and the hub of another thread's hub too."""
    ready, release, found = threading.Event(), threading.Event(), {}

    def other_thread():
        local_release = gevent.event.Event()
        found["hub"] = gevent.get_hub()
        found["greenlets"] = [gevent.spawn(nap, local_release) for _ in range(3)]
        gevent.sleep(0.05)
        ready.set()
        while not release.is_set():  # bounded: the test sets it, or 600 x 0.05 s
            gevent.sleep(0.05)
            if len(found.setdefault("ticks", [])) > 600:
                break
            found["ticks"].append(1)
        local_release.set()
        gevent.joinall(found["greenlets"], timeout=10)

    thread = threading.Thread(target=other_thread, daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        document = rich.sections("json")
    finally:
        release.set()
        thread.join(10)
    by_id = {entry["id"]: entry for entry in document["greenlets"]}
    assert {id(gevent.get_hub()), id(found["hub"])} == {entry["id"] for entry in by_id.values() if entry["hub"]}
    for item in sleepers + found["greenlets"]:
        assert id(item) in by_id
    for item in found["greenlets"]:
        assert [frame["function"] for frame in by_id[id(item)]["frames"]][-1] == "nap"


def _frames(item):
    frame = item.gr_frame
    while frame is not None:
        yield frame
        frame = frame.f_back
