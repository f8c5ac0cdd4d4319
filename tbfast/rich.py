"""Dumps that need the GIL: what a C walk of thread stacks cannot see.

- asyncio: every pending task of every event loop, in every thread, with its
  await chain (a suspended task's own stack has only its outermost frame) and
  which task awaits which, as a tree close to Python 3.14's
  ``asyncio.print_call_graph``; await cycles are reported, never followed.
- gevent/greenlet: every greenlet with its stack, the hub marked.  Found by
  ``greenlet.settrace`` tracking once ``track_greenlets()`` ran, else by a
  ``gc.get_objects()`` scan (O(heap); the output says which).
- locals (opt-in): each frame's ``{name: safe repr}`` (tbfast.saferepr).

``sections(format)`` is what a dump appends after its threads.  Nothing here
imports asyncio, gevent or greenlet: what the program has not imported has no
task or greenlet to show, and a dump must not import (docs/rich.md).
Every walk is bounded.
"""

import gc
import json
import sys
import threading
import traceback
import weakref

from . import _pyformat
from ._limits import FUNCTION_LIMIT, check_format
from .saferepr import DUMP_TIME_BUDGET, frame_locals, safe_repr

__all__ = ["sections", "gil_dump", "frame_locals", "track_greenlets", "greenlets_tracked",
           "await_chain", "format_task_stack"]

MAX_AWAIT_DEPTH = 1000  # an await chain is a chain, but bound it all the same
MAX_FRAMES = 1000       # a greenlet's stack
MAX_TASKS = 1000        # tasks a dump shows, all loops together
MAX_GREENLETS = 1000
MAX_TREE_DEPTH = 100    # tasks awaiting tasks awaiting ..., in the text tree


def _awaited(awaitable):
    """``(frame, kind)`` of a coroutine (or generator) and of each one it
    awaits, outermost first; kind is "async", "async generator" or "generator"."""
    depth = 0
    while awaitable is not None and depth < MAX_AWAIT_DEPTH:
        for frame_attribute, next_attribute, kind in (
                ("cr_frame", "cr_await", "async"), ("ag_frame", "ag_await", "async generator"),
                ("gi_frame", "gi_yieldfrom", "generator")):
            frame = getattr(awaitable, frame_attribute, None)
            if frame is not None:
                break
        else:
            return
        yield frame, kind
        awaitable = getattr(awaitable, next_attribute, None)
        depth += 1


def await_chain(awaitable):
    """The frames of a coroutine (or generator) and of each one it awaits,
    outermost first, as a traceback lists them."""
    return [frame for frame, _ in _awaited(awaitable)]


def format_task_stack(task):
    """A task's await chain as traceback lines, innermost last."""
    summary = traceback.StackSummary.extract((frame, frame.f_lineno)
                                             for frame in await_chain(task.get_coro()))
    return "Stack of %s (most recent call last):\n%s" % (task.get_name(), "".join(summary.format()))


# ---------------------------------------------------------------- asyncio


def _snapshot(collection):
    """A list of a set another thread may change while we copy it (as
    asyncio.all_tasks copies its WeakSet)."""
    for _ in range(100):
        try:
            return list(collection)
        except RuntimeError:  # changed size during iteration
            continue
    return []


def _all_tasks():
    """Every pending task asyncio knows, of every loop.  3.11 to 3.13 keep them all in
    global registries (3.11: _all_tasks; 3.12, 3.13: _scheduled_tasks and _eager_tasks).
    3.14 keeps its C tasks in per-thread lists that only asyncio.all_tasks(loop)
    reads, so there the loops come first: the loop running in each thread and the
    loops of the tasks in the registries (which still hold tasks of other kinds)."""
    tasks_module = sys.modules.get("asyncio.tasks")
    if tasks_module is None:
        return []
    candidates = []
    for name in ("_all_tasks", "_scheduled_tasks", "_eager_tasks"):
        registry = getattr(tasks_module, name, None)
        if isinstance(registry, (set, weakref.WeakSet)):
            candidates += _snapshot(registry)
    if sys.version_info >= (3, 14):
        loops = {id(loop): loop for loop in _running_loops()}
        loops.update((id(task.get_loop()), task.get_loop()) for task in candidates)
        for loop in loops.values():
            candidates += tasks_module.all_tasks(loop)
    found, seen = [], set()
    for task in candidates:
        if id(task) not in seen and not task.done():
            seen.add(id(task))
            found.append(task)
    return found


def _running_loops():
    """The event loop each thread runs now: the ``self`` of its frame in
    BaseEventLoop.run_forever (subclasses that override it call it too)."""
    base_events = sys.modules.get("asyncio.base_events")
    if base_events is None:
        return []
    run_forever = base_events.BaseEventLoop.run_forever.__code__
    loops = []
    for frame in _pyformat.current_frames().values():
        for _ in range(MAX_FRAMES):
            if frame is None:
                break
            if frame.f_code is run_forever:
                loops.append(frame.f_locals.get("self"))
                break
            frame = frame.f_back
    return [loop for loop in loops if loop is not None]


class _Node:
    """A task, a gather's future or a TaskGroup, in the await graph."""

    __slots__ = ("future", "children", "parents")

    def __init__(self, future):
        self.future, self.children, self.parents = future, [], []


def _is_task(future):
    return future is not None and hasattr(future, "get_coro")


def _is_gather(future):
    return isinstance(getattr(future, "_children", None), list)


def _is_task_group(item):
    group_type = getattr(sys.modules.get("asyncio.taskgroups"), "TaskGroup", None)
    return group_type is not None and isinstance(item, group_type)


def _waits_on(task):
    """What a task waits for that the graph shows: a task, a gather's future,
    or the TaskGroup whose exit it is in (which waits for the group's tasks)."""
    waiter = getattr(task, "_fut_waiter", None)
    if _is_task(waiter) or _is_gather(waiter):
        return waiter
    if waiter is not None and "asyncio.taskgroups" in sys.modules:
        for frame, _ in _awaited(task.get_coro()):
            if frame.f_code.co_name in ("__aexit__", "_aexit"):  # _aexit: 3.13
                group = frame.f_locals.get("self")
                if _is_task_group(group):
                    return group
    return None


def _awaits(future):
    """The nodes a task, gather or TaskGroup waits for; finished tasks left out."""
    if _is_task(future):
        waits = _waits_on(future)
        children = [] if waits is None else [waits]
    elif _is_gather(future):
        children = list(future._children)
    else:
        children = _snapshot(future._tasks)
    return [child for child in children if (_is_task(child) and not child.done())
            or _is_gather(child) or _is_task_group(child)]


def _graph(tasks):
    """``{id: _Node}`` for the tasks and the gathers and TaskGroups between them."""
    nodes = {id(task): _Node(task) for task in tasks}
    pending = list(tasks)
    while pending:
        future = pending.pop()
        node = nodes[id(future)]
        for child in _awaits(future):
            if id(child) not in nodes:
                if _is_task(child):  # past MAX_TASKS, or in no registry: not shown
                    continue
                nodes[id(child)] = _Node(child)
                pending.append(child)
            node.children.append(nodes[id(child)])
            nodes[id(child)].parents.append(node)
    return nodes


def _kind(future):
    return "task" if _is_task(future) else "gather" if _is_gather(future) else "taskgroup"


def _task_label(future):
    kind = _kind(future)
    if kind == "task":
        return "Task(name=%r, id=%#x)" % (future.get_name(), id(future))
    if kind == "gather":
        return "Future(id=%#x, gather of %d)" % (id(future), len(future._children))
    return "TaskGroup(id=%#x)" % id(future)


def _name(node):
    kind = _kind(node.future)
    return node.future.get_name() if kind == "task" else "%s %#x" % (kind, id(node.future))


def _cycles(nodes):
    """Each await cycle once, as the list of its nodes, found by a depth-first walk."""
    cycles, done = [], set()
    for start in nodes.values():
        if id(start) in done:
            continue
        path, on_path = [], set()
        stack = [(start, iter(start.children))]
        path.append(start)
        on_path.add(id(start))
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(id(node))
                done.add(id(node))
            elif id(child) in on_path:
                cycles.append(path[path.index(child):])
            elif id(child) not in done:
                stack.append((child, iter(child.children)))
                path.append(child)
                on_path.add(id(child))
    return cycles


def _roots(nodes):
    """The nodes to start the tree from: those no one awaits, then one node of
    each part that only cycles reach, in the order the tasks were found."""
    roots = [node for node in nodes.values() if not node.parents]
    reached = _reach(roots, set())
    for node in nodes.values():
        if id(node) not in reached:
            roots.append(node)
            _reach([node], reached)
    return roots


def _reach(starts, reached):
    """Adds to `reached` the ids of the nodes `starts` await, transitively."""
    pending = list(starts)
    while pending:
        node = pending.pop()
        if id(node) not in reached:
            reached.add(id(node))
            pending.extend(node.children)
    return reached


class _Loop:
    __slots__ = ("loop", "thread", "thread_name", "running", "tasks", "nodes", "cycles", "current")

    def __init__(self, loop, tasks):
        self.loop, self.tasks = loop, tasks
        self.running = bool(getattr(loop, "is_running", lambda: False)())
        # The task whose step runs now: if the loop is blocked, the one blocking it.
        self.current = sys.modules["asyncio.tasks"].current_task(loop)
        self.thread = getattr(loop, "_thread_id", None) if self.running else None
        known = threading._active.get(self.thread) if self.thread is not None else None
        self.thread_name = known.name if known is not None else None
        self.nodes = _graph(tasks)
        self.cycles = _cycles(self.nodes)


def _loops():
    """``(loops, more)``: the loops with pending tasks, each with its tasks, in
    the order found, and how many tasks past MAX_TASKS are left out."""
    found = _all_tasks()
    by_loop = {}
    for task in found[:MAX_TASKS]:
        loop = task.get_loop()
        by_loop.setdefault(id(loop), (loop, []))[1].append(task)
    return [_Loop(loop, tasks) for loop, tasks in by_loop.values()], max(0, len(found) - MAX_TASKS)


def _frames_of(task, safe):
    """The task's await chain, innermost first, as ``(Frame, kind, qualname)``."""
    checked = set()
    return [(_pyformat.Frame(frame, checked, safe), kind,
             _pyformat.bounded(frame.f_code.co_qualname, FUNCTION_LIMIT))
            for frame, kind in reversed(list(_awaited(task.get_coro())))]


def _loop_heading(item):
    where = "not running"
    if item.running:
        where = "running in thread %#018x" % item.thread if item.thread is not None else "running"
        if item.thread_name is not None:
            where += " " + _quoted(item.thread_name)
    return "Loop %#x (%s), %d task%s:" % (id(item.loop), where, len(item.tasks),
                                          "" if len(item.tasks) == 1 else "s")


def _text_tree(item, safe):
    lines, shown = [], set()

    def add(level, text):
        lines.append("    " * level + text)

    def render(node, level, path):
        future = node.future
        if id(node) in shown:
            add(level, "* %s (shown above)" % _task_label(future))
            return
        shown.add(id(node))
        add(level, "* " + _task_label(future) + (" running" if future is item.current else ""))
        if _is_task(future):
            frames = _frames_of(future, safe)
            if frames:
                add(level, "  + Call stack:")
            for frame, kind, qualname in frames:
                add(level, "  |   File %r, line %d, in %s %s()" % (
                    frame.file.decode(), frame.line, kind, qualname.decode()))
                if frame.source is not None:
                    add(level, "  |     " + frame.source.decode())
                for local in _pyformat.format_text_locals(frame).decode().splitlines():
                    add(level, "  | " + local)
        if not node.children:
            return
        add(level, "  + Awaiting:")
        if level >= MAX_TREE_DEPTH:
            add(level + 1, "* ... (%d deeper levels not shown)" % len(node.children))
            return
        for child in node.children:
            if id(child) in path:
                add(level + 1, "* %s (cycle: %s awaits %s)" % (
                    _task_label(child.future), _name(node), _name(child)))
            else:
                render(child, level + 1, path | {id(child)})

    for root in _roots(item.nodes):
        render(root, 0, {id(root)})
    return lines


def _asyncio_text(loops, more, safe):
    count = sum(len(item.tasks) for item in loops)
    if not count:
        return ""
    out = ["Asyncio tasks (%d in %d loop%s%s):" % (
        count + more, len(loops), "" if len(loops) == 1 else "s",
        ", %d not shown" % more if more else "")]
    for item in loops:
        out.append(_loop_heading(item))
        out.extend(_text_tree(item, safe))
        for cycle in item.cycles:
            out.append("Await cycle: %s" % " -> ".join(_name(node) for node in cycle + cycle[:1]))
        out.append("")
    return "\n".join(out) + "\n"


def _json_frame(frame):
    item = {"file": frame.file.decode(), "line": frame.line, "function": frame.function.decode(),
            "source": None if frame.source is None else frame.source.decode()}
    if frame.locals is not None:
        item["locals"] = {name.decode(): value.decode() for name, value in frame.locals}
    return item


def _asyncio_json(loops, safe):
    documents = []
    for item in loops:
        tasks = []
        for task in item.tasks:
            node = item.nodes[id(task)]
            awaited = node.children[0].future if node.children else None
            tasks.append({
                "id": id(task), "name": task.get_name(), "running": task is item.current,
                "frames": [_json_frame(frame) for frame, _, _ in _frames_of(task, safe)],
                "awaits": None if awaited is None else {
                    "id": id(awaited), "kind": _kind(awaited),
                    "tasks": _nearest_tasks(node.children, lambda near: near.children)},
                "awaited_by": _nearest_tasks(node.parents, lambda near: near.parents)})
        documents.append({
            "loop": id(item.loop), "running": item.running, "thread": item.thread,
            "thread_name": item.thread_name, "tasks": tasks,
            "cycles": [[_name(node) for node in cycle] for cycle in item.cycles]})
    return documents


def _nearest_tasks(starts, neighbours):
    """The ids of the first tasks met from `starts` (themselves included),
    going through gathers and TaskGroups by `neighbours` (children or parents)."""
    found, pending, seen = [], list(starts), set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if _is_task(current.future):
            found.append(id(current.future))
        else:
            pending.extend(neighbours(current))
    return found


# ---------------------------------------------------------------- greenlets

_tracked = {"greenlets": None, "threads": set()}


def track_greenlets():
    """Record every greenlet that switches in, from now on, in this thread.

    Call it once in each thread that runs greenlets (the thread of the gevent
    hub), early; it also records, with one gc scan, the greenlets alive now.
    The trace function chains to the one installed before (gevent's monitor
    uses one).  Dumps then list the recorded greenlets instead of scanning the
    whole heap.
    """
    import greenlet  # a setup call, not a dump: importing here is safe

    seen = _tracked["greenlets"]
    if seen is None:
        seen = _tracked["greenlets"] = weakref.WeakSet()
    if threading.get_ident() in _tracked["threads"]:
        return
    seen.add(greenlet.getcurrent())
    seen.update(obj for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet))
    previous = greenlet.gettrace()
    record = seen.add

    def trace(event, args):
        if event == "switch" or event == "throw":
            record(args[1])
        if previous is not None:
            previous(event, args)

    greenlet.settrace(trace)
    _tracked["threads"].add(threading.get_ident())


def greenlets_tracked():
    """The threads whose greenlets ``track_greenlets()`` records (idents)."""
    return set(_tracked["threads"])


def _greenlets():
    """``(greenlets, found_by)``: the live greenlets, hubs first, and "tracking"
    or "gc" (None without greenlet)."""
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return [], None
    if _tracked["greenlets"] is not None:
        found, found_by = _snapshot(_tracked["greenlets"]), "tracking"
    else:
        found = [obj for obj in gc.get_objects() if isinstance(obj, greenlet.greenlet)]
        found_by = "gc"
    found = [item for item in found if not item.dead]
    found.sort(key=lambda item: not _is_hub(item))
    return found, found_by


def _found_by_text(found_by):
    if found_by == "gc":
        return "found by a gc scan: greenlet tracking is off"
    threads = sorted(_tracked["threads"])
    return "tracked by greenlet.settrace in thread%s %s" % (
        "" if len(threads) == 1 else "s", ", ".join("%#018x" % ident for ident in threads))


def _is_hub(item):
    hub_module = sys.modules.get("gevent.hub")
    hub_type = getattr(hub_module, "Hub", None)
    return hub_type is not None and isinstance(item, hub_type)


class _Greenlet:
    __slots__ = ("id", "type", "name", "hub", "main", "state", "frames")

    def __init__(self, item, safe):
        self.id, self.type = id(item), type(item).__name__
        name = getattr(item, "name", None) if hasattr(type(item), "minimal_ident") else None
        self.name = name if isinstance(name, str) else None  # gevent's Greenlet names
        self.hub, self.main = _is_hub(item), item.parent is None
        frame = item.gr_frame
        # greenlet's own truth test: gevent's says True for a greenlet only scheduled to start.
        started = sys.modules["greenlet"].greenlet.__bool__(item)
        self.state = "suspended" if frame is not None else "running" if started else "not started"
        self.frames, checked = [], set()
        while frame is not None and len(self.frames) < MAX_FRAMES:
            self.frames.append(_pyformat.Frame(frame, checked, safe))
            frame = frame.f_back


def _greenlet_heading(item):
    parts = ["type %s" % item.type]
    if item.name is not None:
        parts.append("name %s" % _quoted(item.name))
    if item.hub:
        parts.append("the hub")
    if item.main:
        parts.append("main greenlet of its thread")
    parts.append(item.state)
    tail = " (most recent call first):" if item.frames else \
        ": its stack is its thread's, above" if item.state == "running" else ""
    return "Greenlet %#018x (%s)%s" % (item.id, ", ".join(parts), tail)


def _quoted(text):
    return '"%s"' % _pyformat.bounded(text, FUNCTION_LIMIT).decode()


def _greenlets_text(items, found_by, more):
    if not items:
        return ""
    out = ["Greenlets (%d, %s):\n" % (len(items) + more, _found_by_text(found_by))]
    for item in items:
        out.append(_greenlet_heading(item) + "\n")
        out.append(_pyformat.format_text_frames(item.frames).decode() + "\n")
    if more:
        out.append("... %d more greenlets not shown\n\n" % more)
    return "".join(out)


def _greenlets_json(items):
    return [{"id": item.id, "type": item.type, "name": item.name, "hub": item.hub,
             "main": item.main, "state": item.state,
             "frames": [_json_frame(frame) for frame in item.frames]} for item in items]


# ---------------------------------------------------------------- the sections


def sections(format="text", *, locals=False, safe=None):
    """What a dump adds after its threads, made while holding the GIL.

    "text": the ``Asyncio tasks`` and ``Greenlets`` sections, "" when there is
    nothing to show; "json": a dict of keys to merge into the dump's document
    (``asyncio``, ``greenlets``, ``greenlets_found_by``); "uwsgi": "" (its
    parsers know only thread lines).  With ``locals=True`` each frame has its
    locals, repr'd by ``safe`` (default: tbfast.saferepr.safe_repr).  A part
    that fails is replaced by one line (or key) saying why: the dump goes on.
    """
    check_format(format)
    if format == "uwsgi":
        return ""
    safe = (safe or safe_repr) if locals else None
    with (safe or safe_repr).budget(DUMP_TIME_BUDGET):
        asyncio_part = _guarded(format, "Asyncio tasks", lambda: _asyncio_part(format, safe))
        greenlet_part = _guarded(format, "Greenlets", lambda: _greenlets_part(format, safe))
    if format == "json":
        return {**asyncio_part, **greenlet_part}
    text = "".join(part for part in (asyncio_part, greenlet_part) if part)
    # Task and greenlet names come from the application, maybe from a request.
    return "\n".join(_pyformat.printable(line.encode("utf-8", "backslashreplace")).decode()
                     for line in text.split("\n"))


def gil_dump(walk, fmt, with_locals, trigger="socket"):
    """A dump made holding the GIL, without the calling thread (a server's own):
    `walk`'s (a backend's format_dump), or with `with_locals` the Python formatter's,
    whose locals are safe reprs; then the sections."""
    if with_locals:
        data = _pyformat.format_dump(True, fmt, 0, trigger, True, safe=safe_repr)
    else:
        data = walk(True, fmt, 0, trigger, True)
    extra = sections(fmt, locals=with_locals)
    if not extra:
        return data
    if fmt == "json":
        document = json.loads(data)
        document.update(extra)
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    return data + extra.encode("utf-8", "replace")


def _guarded(format, title, make):
    try:
        return make()
    except Exception as error:  # noqa: BLE001 - one broken section must not lose the dump
        message = "not shown: %s: %s" % (type(error).__name__, error)
        return {title.split()[0].lower() + "_error": message} if format == "json" \
            else "%s: %s\n" % (title, message)


def _asyncio_part(format, safe):
    loops, more = _loops()
    if format == "json":
        return {"asyncio": _asyncio_json(loops, safe), "asyncio_not_shown": more}
    return _asyncio_text(loops, more, safe)


def _greenlets_part(format, safe):
    found, found_by = _greenlets()
    items = [_Greenlet(item, safe) for item in found[:MAX_GREENLETS]]
    more = max(0, len(found) - MAX_GREENLETS)
    if format == "json":
        return {"greenlets": _greenlets_json(items), "greenlets_found_by": found_by}
    return _greenlets_text(items, found_by, more)
