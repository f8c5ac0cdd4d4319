"""Dumps that need the GIL: what a C walk of thread stacks cannot see.

So far: the await chain of an asyncio task, the frames of the coroutines it
awaits, down to the innermost one (a suspended task's own stack has only its
outermost frame).
"""

import traceback

MAX_AWAIT_DEPTH = 1000  # an await chain is a chain, but bound it all the same


def await_chain(awaitable):
    """The frames of a coroutine (or generator) and of each one it awaits,
    outermost first, as a traceback lists them."""
    frames = []
    while awaitable is not None and len(frames) < MAX_AWAIT_DEPTH:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None) \
            or getattr(awaitable, "ag_frame", None)
        if frame is None:
            break
        frames.append(frame)
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None) \
            or getattr(awaitable, "ag_await", None)
    return frames


def format_task_stack(task):
    """A task's await chain as traceback lines, innermost last."""
    summary = traceback.StackSummary.extract((frame, frame.f_lineno)
                                             for frame in await_chain(task.get_coro()))
    return "Stack of %s (most recent call last):\n%s" % (task.get_name(), "".join(summary.format()))
