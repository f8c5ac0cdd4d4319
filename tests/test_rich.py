"""tbfast.rich: asyncio task graphs and locals, against real asyncio and the source.

The expected lines are read from this file's source (the `# at:` markers), never
from what the code under test produced.
"""

import asyncio
import json
import re
import sys
import threading

import pytest

import tbfast
from tbfast import rich
from tbfast.saferepr import MASKED, SafeRepr, safe_repr

from conftest import thread_of


def _marker_lines():
    lines = {}
    with open(__file__, encoding="utf-8") as source:
        for number, line in enumerate(source, 1):
            found = re.search(r"# at: ([\w-]+)$", line)
            if found:
                lines[found.group(1)] = number
    return lines


AT = _marker_lines()


# ---------------------------------------------------------------- an asyncio app


async def leaf(gate, arrived):
    weight = 17
    session_id = "leaf-session-value"
    arrived.append(weight)
    await gate  # at: leaf


async def pair(gate, arrived):
    await asyncio.gather(leaf(gate, arrived), leaf(gate, arrived))  # at: pair


async def follow(target):
    await target  # at: follow


async def middle(gate, arrived, target):
    await asyncio.gather(pair(gate, arrived), follow(target), leaf(gate, arrived))  # at: middle


async def app(gate, arrived):
    target = asyncio.create_task(leaf(gate, arrived), name="target")
    await asyncio.gather(middle(gate, arrived, target), leaf(gate, arrived))  # at: app


async def grouped(loop, gate, arrived):
    async with asyncio.TaskGroup() as group:  # at: group
        group.create_task(leaf(gate, arrived), name="member-1")
        group.create_task(follow(gate), name="member-2")
        arrived.append("grouped")


async def chase(box, key, arrived):
    await asyncio.sleep(0)
    arrived.append(key)
    await box[key]  # at: chase


LEAVES = 5  # target, and one in app's, middle's and (two) pair's gathers


class LoopThread:
    """An event loop running `start(loop, gate, arrived)` in a thread of its own,
    until the test is done with it."""

    def __init__(self, name, start, expected, blocks=False):
        self.name, self.start, self.expected, self.blocks = name, start, expected, blocks
        self.arrived = []
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self):
        self.loop = asyncio.new_event_loop()
        self.gate = self.loop.create_future()
        self.main = self.loop.create_task(self.start(self.loop, self.gate, self.arrived),
                                          name=self.name + "-main")
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10)
        for _ in range(1000):  # bounded: 10 s
            if len(self.arrived) >= self.expected:
                break
            threading.Event().wait(0.01)
        assert len(self.arrived) == self.expected, "the app never reached its awaits"
        if not self.blocks:
            # Each arrival is in the same step as the await after it: once the
            # loop runs a callback queued now, those steps are over.
            idle = threading.Event()
            self.loop.call_soon_threadsafe(idle.set)
            assert idle.wait(10)
        return self

    def finish(self):
        """Open the gate and let the loop drain its tasks."""
        def stop_when_done():
            self.gate.set_result(None)
            self.main.add_done_callback(lambda _: self.loop.stop())
        self.loop.call_soon_threadsafe(stop_when_done)
        self.thread.join(10)
        assert not self.thread.is_alive()
        self.loop.close()

    def __exit__(self, *exc):
        if self.thread.is_alive():
            self.finish()


def run_app(loop, gate, arrived):
    return app(gate, arrived)


def loop_of(document, thread):
    loops = [item for item in document["asyncio"] if item["thread"] == thread.ident]
    assert len(loops) == 1, document["asyncio"]
    return loops[0]


def outermost(task):
    return task["frames"][-1]["function"]


def places(task):
    return [(frame["file"], frame["line"], frame["function"]) for frame in task["frames"]]


# ---------------------------------------------------------------- tests


def test_nested_gathers_and_a_task_awaiting_a_task():
    with LoopThread("app-loop", run_app, LEAVES) as running:
        document = rich.sections("json")
        text = rich.sections("text")
    loop = loop_of(document, running.thread)
    assert loop["running"] and loop["thread_name"] == "app-loop"
    tasks = {task["id"]: task for task in loop["tasks"]}
    by_function = {}
    for task in tasks.values():
        by_function.setdefault(outermost(task), []).append(task)
    assert sorted((name, len(found)) for name, found in by_function.items()) == [
        ("app", 1), ("follow", 1), ("leaf", LEAVES), ("middle", 1), ("pair", 1)]

    # Every chain is what the code awaits, at the marked lines (the gate is a
    # bare Future: no frame below the coroutine's own).
    for name in ("app", "pair", "follow", "middle"):
        (task,) = by_function[name]
        assert places(task) == [(__file__, AT[name], name)]
    for task in by_function["leaf"]:
        assert places(task) == [(__file__, AT["leaf"], "leaf")]

    def functions(ids):
        return sorted(outermost(tasks[ident]) for ident in ids)

    (app_task,), (middle_task,) = by_function["app"], by_function["middle"]
    (pair_task,), (follow_task,) = by_function["pair"], by_function["follow"]
    assert app_task["awaits"]["kind"] == "gather"
    assert functions(app_task["awaits"]["tasks"]) == ["leaf", "middle"]
    assert middle_task["awaits"]["kind"] == "gather"
    assert functions(middle_task["awaits"]["tasks"]) == ["follow", "leaf", "pair"]
    assert functions(pair_task["awaits"]["tasks"]) == ["leaf", "leaf"]
    (target,) = [task for task in tasks.values() if task["name"] == "target"]
    assert follow_task["awaits"] == {"id": target["id"], "kind": "task", "tasks": [target["id"]]}
    assert target["awaited_by"] == [follow_task["id"]]
    assert loop["cycles"] == []
    assert not any(task["running"] for task in tasks.values())  # the loop waits in select()

    # The text: each task once, as a tree under the task that awaits it.
    assert text.startswith("Asyncio tasks (")
    block = _loop_block(text, running.thread)
    for name in ("app", "pair", "follow", "middle"):
        assert block.count("File %r, line %d, in async %s()" % (__file__, AT[name], name)) == 1
    assert block.count("File %r, line %d, in async leaf()" % (__file__, AT["leaf"])) == LEAVES
    follow_at = _line_index(block, "in async follow()")
    lines = block.splitlines()
    indent = len(lines[follow_at]) - len(lines[follow_at].lstrip())
    awaiting = next(index for index in range(follow_at, len(lines)) if "+ Awaiting:" in lines[index])
    assert lines[awaiting + 1].startswith(" " * (indent + 2) + "* Task(name='target', id=%#x)"
                                          % target["id"])


def test_a_task_group_waits_for_its_tasks():
    with LoopThread("group-loop", grouped, 2) as running:
        document = rich.sections("json")
        text = rich.sections("text")
    tasks = {task["name"]: task for task in loop_of(document, running.thread)["tasks"]}
    assert sorted(tasks) == ["group-loop-main", "member-1", "member-2"]
    parent = tasks["group-loop-main"]
    # The parent's chain goes through TaskGroup.__aexit__, into asyncio's code, at
    # the line of the `async with` that it is leaving; 3.14 waits in its helper _aexit.
    assert places(parent)[-1] == (__file__, AT["group"], "grouped")
    innermost = parent["frames"][0]
    assert innermost["file"] == asyncio.taskgroups.__file__
    assert innermost["function"] == ("_aexit" if sys.version_info >= (3, 14) else "__aexit__")
    assert parent["awaits"]["kind"] == "taskgroup"
    assert sorted(parent["awaits"]["tasks"]) == sorted([tasks["member-1"]["id"], tasks["member-2"]["id"]])
    assert tasks["member-2"]["awaits"] is None  # it awaits the gate, a bare future
    block = _loop_block(text, running.thread)
    assert "  + Awaiting:\n    * TaskGroup(id=%#x)\n      + Awaiting:\n" % parent["awaits"]["id"] in block


def _loop_block(text, thread):
    """The lines of the loop run by `thread`, heading excluded."""
    blocks = re.split(r"^(?=Loop 0x)", text, flags=re.M)
    mine = [block for block in blocks if block.startswith("Loop ") and
            "running in thread %#018x" % thread.ident in block.splitlines()[0]]
    assert len(mine) == 1, text
    return mine[0].split("\n", 1)[1]


def _line_index(block, needle):
    (index,) = [number for number, line in enumerate(block.splitlines()) if needle in line]
    return index


def test_every_loop_in_every_thread():
    with LoopThread("loop-a", run_app, LEAVES) as first, LoopThread("loop-b", run_app, LEAVES) as second:
        document = rich.sections("json")
        text = rich.sections("text")
    for running in (first, second):
        loop = loop_of(document, running.thread)
        assert loop["thread_name"] == running.name
        assert len(loop["tasks"]) == 4 + LEAVES  # app, middle, pair, follow and the leaves
        assert 'running in thread %#018x "%s"' % (running.thread.ident, running.name) in text


async def start_cycle(loop, gate, arrived):
    box = {}
    for name, awaits in (("cycle-1", "cycle-2"), ("cycle-2", "cycle-3"), ("cycle-3", "cycle-1")):
        box[name] = loop.create_task(chase(box, awaits, arrived), name=name)
    await gate


def test_an_await_cycle_is_reported_and_not_followed():
    running = LoopThread("cycle-loop", start_cycle, 3).__enter__()
    try:
        document = rich.sections("json")
        text = rich.sections("text")
    finally:
        # A cycle of tasks cannot be cancelled (each cancel() cancels what it
        # awaits, forever): stop the loop and keep it, tasks pending, until exit.
        running.loop.call_soon_threadsafe(running.loop.stop)
        running.thread.join(10)
        _abandoned.append(running)
    loop = loop_of(document, running.thread)
    names = ["cycle-1", "cycle-2", "cycle-3"]
    (cycle,) = loop["cycles"]
    start = cycle.index("cycle-1")
    assert cycle[start:] + cycle[:start] == names
    block = _loop_block(text, running.thread)
    # Each task's block once; the edge that closes the cycle once, named.
    for name in names:
        assert block.count("* Task(name=%r, id=" % name) == (2 if name == _closed(block) else 1)
    (closing,) = re.findall(r"\(cycle: (cycle-\d) awaits (cycle-\d)\)", block)
    assert closing in {("cycle-1", "cycle-2"), ("cycle-2", "cycle-3"), ("cycle-3", "cycle-1")}
    assert block.count("in async chase()") == 3
    assert len(block.splitlines()) < 40


_abandoned = []


def _closed(block):
    return re.search(r"\(cycle: cycle-\d awaits (cycle-\d)\)", block).group(1)


blocker = threading.Event()


async def block_the_loop(loop, gate, arrived):
    arrived.append("blocking")
    blocker.wait(30)  # at: block
    await gate


def test_a_loop_blocked_by_a_task_marks_it_running():
    with LoopThread("blocked-loop", block_the_loop, 1, blocks=True) as running:
        try:
            document = rich.sections("json")
            text = rich.sections("text")
        finally:
            blocker.set()
    (task,) = loop_of(document, running.thread)["tasks"]
    assert task["running"] and task["name"] == "blocked-loop-main"
    assert places(task) == [(__file__, AT["block"], "block_the_loop")]
    assert "* Task(name='blocked-loop-main', id=%#x) running\n" % task["id"] in text


def test_the_tasks_shown_are_bounded(monkeypatch):
    with LoopThread("bounded-loop", run_app, LEAVES):
        everything = rich.sections("json")
        monkeypatch.setattr(rich, "MAX_TASKS", 3)
        document = rich.sections("json")
        text = rich.sections("text")
    total = sum(len(loop["tasks"]) for loop in everything["asyncio"])
    assert sum(len(loop["tasks"]) for loop in document["asyncio"]) == 3
    assert document["asyncio_not_shown"] == total - 3
    assert text.startswith("Asyncio tasks (%d in " % total)
    assert ", %d not shown):" % (total - 3) in text.splitlines()[0]
    assert text.count("* Task(") == 3


def test_nothing_to_show_is_empty():
    assert all(item["tasks"] for item in rich.sections("json")["asyncio"])
    # No loop of ours runs now: whatever is left is other tests' abandoned cycles.
    text = rich.sections("text")
    assert text == "" or text.startswith("Asyncio tasks (")
    assert rich.sections("uwsgi") == ""
    with pytest.raises(ValueError):
        rich.sections("xml")


def test_a_part_that_fails_is_one_line_and_the_rest_goes_on(monkeypatch):
    def broken():
        raise RuntimeError("registry gone")

    monkeypatch.setattr(rich, "_loops", broken)
    with LoopThread("failing-loop", run_app, LEAVES):
        text = rich.sections("text")
        document = rich.sections("json")
    assert text.splitlines()[0] == "Asyncio tasks: not shown: RuntimeError: registry gone"
    assert document["asyncio_error"] == "not shown: RuntimeError: registry gone"
    assert "asyncio" not in document and "greenlets" in document


# ---------------------------------------------------------------- locals


@pytest.fixture(autouse=True)
def no_repr_threads_left():
    """The reprs' helper threads end once idle: none outlive a test by long
    (a later test that forks would be warned of them)."""
    yield
    for _ in range(500):  # bounded: 10 s
        if not [thread for thread in threading.enumerate() if thread.name == "tbfast-repr"]:
            return
        threading.Event().wait(0.02)
    raise AssertionError("tbfast-repr threads outlived their dump")


def hold_locals(park):
    count = 42
    label = "naïve"
    api_token = "s3cr3t-token-value"
    items = [1, 2, 3]
    park()  # at: hold-locals
    return count, label, api_token, items


def frame_of(document, ident, function):
    (frame,) = [frame for frame in thread_of(document, ident)["frames"] if frame["function"] == function]
    return frame


def test_locals_of_known_frames_and_masked_names(parked):
    shape = parked(hold_locals)
    ident = shape.thread.ident
    document = json.loads(tbfast.format_traceback(format="json", locals=True))
    frame = frame_of(document, ident, "hold_locals")
    assert frame["line"] == AT["hold-locals"]
    assert frame["locals"] == {"park": safe_repr.repr(shape.park), "count": repr(42),
                               "label": repr("naïve"), "api_token": MASKED, "items": repr([1, 2, 3])}
    text = tbfast.format_traceback(locals=True)
    assert "s3cr3t" not in text
    heading = 'File "%s", line %d in hold_locals' % (__file__, AT["hold-locals"])
    lines = text.splitlines()
    at = lines.index("  " + heading)
    assert lines[at + 1] == "    park()  # at: hold-locals"
    assert lines[at + 2:at + 7] == [
        "      park = %s" % safe_repr.repr(shape.park), "      count = 42", "      label = 'naïve'",
        "      api_token = %s" % MASKED, "      items = [1, 2, 3]"]
    # Without locals=True, and in the uwsgi format, there are none.
    lines = tbfast.format_traceback().splitlines()
    assert not lines[lines.index("  " + heading) + 2].startswith("      ")
    uwsgi = tbfast.format_traceback(format="uwsgi", locals=True).splitlines()
    assert all(line.startswith(("thread_id = ", "*** uWSGI")) for line in uwsgi if line)


def test_at_most_50_locals_a_frame(parked):
    names = ["v%02d" % number for number in range(60)]
    namespace = {}
    exec("def many(park):\n" + "".join("    %s = %d\n" % (name, number)
                                       for number, name in enumerate(names))
         + "    park()\n", namespace)
    shape = parked(namespace["many"])
    document = json.loads(tbfast.format_traceback(format="json", locals=True))
    shown = frame_of(document, shape.thread.ident, "many")["locals"]
    assert list(shown) == ["park"] + names[:49]
    text = tbfast.format_traceback(locals=True)
    assert "      v48 = 48\n      ... 11 more\n" in text


def test_locals_in_task_chains():
    with LoopThread("locals-loop", run_app, LEAVES) as running:
        document = rich.sections("json", locals=True)
        text = rich.sections("text", locals=True)
    loop = loop_of(document, running.thread)
    leaves = [task for task in loop["tasks"] if outermost(task) == "leaf"]
    for task in leaves:
        shown = task["frames"][0]["locals"]
        assert shown["weight"] == "17" and shown["session_id"] == MASKED
        assert shown["arrived"] == safe_repr.repr(running.arrived)
    assert "leaf-session-value" not in text
    assert text.count("  |       weight = 17\n") == LEAVES
    assert "locals" not in json.dumps(rich.sections("json"))


class SlowRepr:
    def __init__(self, release):
        self.release = release

    def __repr__(self):
        self.release.wait(30)
        return "SlowRepr()"


class BrokenRepr:
    def __repr__(self):
        raise ValueError("boom")


def hold_bad_values(park):
    slow = SlowRepr(release)
    broken = BrokenRepr()
    park()
    return slow, broken


release = threading.Event()


def test_a_repr_that_raises_or_sleeps_neither_breaks_nor_stalls_the_dump(parked):
    shape = parked(hold_bad_values)
    results = {}

    def dump():
        results["text"] = tbfast.format_traceback(locals=True)
        results["json"] = json.loads(tbfast.format_traceback(format="json", locals=True))

    dumper = threading.Thread(target=dump, daemon=True)
    try:
        dumper.start()
        dumper.join(60)  # each repr gets 0.05 s, a whole dump 1 s: this is generous
        assert not dumper.is_alive(), "the dump stalled"
    finally:
        release.set()
    shown = frame_of(results["json"], shape.thread.ident, "hold_bad_values")["locals"]
    assert shown["slow"].startswith("<SlowRepr object; repr ")
    assert "timed out" in shown["slow"] or "time budget" in shown["slow"]
    assert shown["broken"] == "<BrokenRepr object; repr raised ValueError: boom>"
    assert "      broken = <BrokenRepr object; repr raised ValueError: boom>" in results["text"]


def test_saferepr_bounds_and_budget():
    safe = SafeRepr(max_length=80, time_limit=0.05)
    shown = safe.repr("x" * 200)
    assert len(shown) <= 80 and "..." in shown
    gate = threading.Event()
    try:
        with safe.budget(0):
            assert "time budget" in safe.repr(SlowRepr(gate))
        assert safe.local("MY_PASSWORD", "hunter2") == MASKED
    finally:
        gate.set()
