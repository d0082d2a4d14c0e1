"""The watchdog's Python side: formats a report and hands it to the loop.

The watchdog itself is C (src/watchdog.c): a native thread per running loop
that notices when one callback or task step has held the loop longer than the
threshold, takes the GIL and captures the loop thread's stack, the current task
and the running handle.  It then calls ``_report`` below, on the watchdog
thread, which turns the frames into a ``traceback.StackSummary`` and queues
``_deliver`` on the loop with ``call_soon_threadsafe()``.  So the report runs on
the loop thread, through the loop's exception handler (or the handler given
to ``set_watchdog()``), as soon as the blocking code gives control back.
"""

import atexit
import traceback

from . import _core

__all__ = ["Stack"]


class Stack(traceback.StackSummary):
    """The stack in a watchdog report (outermost call first).  Its repr is the
    formatted stack, so asyncio's default exception handler, which prints each
    context value's repr, shows it as a traceback."""

    def __repr__(self):
        return "(most recent call last):\n" + "".join(self.format()).rstrip()


def _report(loop, task, handle, frames, since, threshold, handler):
    """On the watchdog thread, with the GIL: `frames` is [(frame, lineno), ...]
    innermost first, or None when the episode ended before the stack could be
    read (the blocking code held the GIL until it returned)."""
    stack = None
    if frames is not None:
        stack = Stack.extract(reversed(frames), limit=None)
    try:
        loop.call_soon_threadsafe(_deliver, loop, task, handle, stack, since, threshold, handler)
    except RuntimeError:
        pass  # the loop was closed meanwhile: nobody to tell


def _deliver(loop, task, handle, stack, since, threshold, handler):
    """On the loop thread, once the blocking callback has returned."""
    blocked_for = loop.time() - since
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
    context = {"message": message, "blocked_for": blocked_for, "threshold": threshold}
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
