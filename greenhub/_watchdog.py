"""The watchdog's Python side: formats a report and hands it to the loop.

The watchdog itself is C (src/watchdog.c): a native thread per running loop
that notices when one callback or task step has held the loop longer than the
threshold, takes the GIL and captures the loop thread's stack, the current task
and the running handle.  It then calls ``_report`` below, on the watchdog
thread, which turns the frames into a ``traceback.StackSummary`` and queues
``_deliver`` on the loop with ``call_soon_threadsafe()``.  So the report runs on
the loop thread, through the loop's exception handler (or the handler given
to ``set_watchdog()``), as soon as the blocking code gives control back.

``_report`` returns an ``_Episode``, which the watchdog thread calls with the
time the episode ended once it sees the loop move on: the report's
``blocked_for`` is that end minus the start, not the time until delivery
(several blocking callbacks back to back deliver their reports together,
after the last one).
"""

import asyncio
import atexit
import traceback
from collections.abc import Callable
from types import FrameType
from typing import Any

from . import _core

# set_watchdog()'s handler: handler(loop, context)
_Handler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]

__all__ = ["Stack"]


class Stack(traceback.StackSummary):
    """The stack in a watchdog report (outermost call first).  Its repr is the
    formatted stack, so asyncio's default exception handler, which prints each
    context value's repr, shows it as a traceback."""

    def __repr__(self) -> str:
        return "(most recent call last):\n" + "".join(self.format()).rstrip()


class _Episode:
    """One reported blocking episode; called (on the watchdog thread) with the
    monotonic time it ended, when the watchdog sees that."""

    __slots__ = ("end",)

    def __init__(self) -> None:
        self.end: float | None = None

    def __call__(self, end: float) -> None:
        if self.end is None:
            self.end = end


# The file name of the code every worker greenlet runs its task under
# (greenhub._vthread._WORKER_BASE); that frame and the ones outside it are greenhub's.
_WORKER_BASE_FILE = "<greenhub virtual thread>"


def _task_frames(frames: list[tuple[FrameType, int]]) -> list[tuple[FrameType, int]]:
    """`frames` (innermost first) up to the task's own outermost frame: a virtual
    thread's stack ends in the worker greenlet's base frames, which are not the user's
    (greenhub.dump_tasks() leaves them out too)."""
    for i, (frame, _) in enumerate(frames):
        if frame.f_code.co_filename == _WORKER_BASE_FILE:
            return frames[:i]
    return frames


def _report(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any] | None,
    handle: asyncio.Handle | None,
    frames: list[tuple[FrameType, int]] | None,
    since: float,
    threshold: float,
    handler: _Handler | None,
) -> _Episode | None:
    """On the watchdog thread, with the GIL: `frames` is [(frame, lineno), ...]
    innermost first, or None when the episode ended before the stack could be
    read (the blocking code held the GIL until it returned)."""
    stack = None
    if frames is not None:
        stack = Stack.extract(reversed(_task_frames(frames)), limit=None)
    episode = _Episode()
    try:
        loop.call_soon_threadsafe(
            _deliver, loop, task, handle, stack, since, threshold, handler, episode
        )
    except RuntimeError:
        return None  # the loop was closed meanwhile: nobody to tell
    return episode


def _deliver(
    loop: asyncio.AbstractEventLoop,
    task: asyncio.Task[Any] | None,
    handle: asyncio.Handle | None,
    stack: traceback.StackSummary | None,
    since: float,
    threshold: float,
    handler: _Handler | None,
    episode: _Episode,
) -> None:
    """On the loop thread, once the blocking callback has returned."""
    # The end the watchdog saw, or - when it has not looked since - now: the
    # episode has just ended (this runs as soon as the loop is free again).
    end = episode.end if episode.end is not None else loop.time()
    blocked_for = max(end - since, 0.0)
    if task is not None:
        what = f"Task {task.get_name()!r}"
    elif handle is not None:
        what = f"Callback {handle!r}"
    else:
        what = "The event loop's own code"
    message = (
        f"{what} blocked the event loop for {blocked_for:.3f} seconds "
        f"(greenhub watchdog, threshold {threshold:g} s)"
    )
    if stack is None:
        message += (
            "; no stack: the blocking code did not release the GIL until it returned "
            "(a C call that holds the GIL?)"
        )
    context: dict[str, Any] = {
        "message": message,
        "blocked_for": blocked_for,
        "threshold": threshold,
    }
    if task is not None:
        context["task"] = task
    elif handle is not None:
        context["handle"] = handle
    context["stack"] = stack
    if handler is not None:
        handler(loop, context)
    else:
        loop.call_exception_handler(context)


_core._install_tool_hooks(watchdog=_report)
# Stop every watchdog thread before the interpreter is finalized (a loop may
# still be running in a daemon thread then).
atexit.register(_core._watchdog_atexit)
