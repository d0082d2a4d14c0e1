"""The cooperative waits that greenhub's blocking calls are built on.

Called only inside a virtual thread (``greenhub.in_vthread()``): each suspends the
calling task on the running greenhub loop, which goes on with everything else.
``greenhub.sync`` (``sleep()``, the locks' and queues' timeouts) and the green
implementations of ``greenhub.monkey`` wait through these, so that one wait is
written once.  The callers check their arguments, with the errors of the blocking
call they stand in for, before they come here.
"""

import asyncio
import time
from typing import overload

from . import _core

__all__ = ["remaining", "sleep"]

_await = _core.await_
_monotonic = time.monotonic
_running_loop = asyncio.get_running_loop  # where a loop must run (in a virtual thread)


def _resolve(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


def sleep(seconds: float) -> None:
    """Suspend the calling virtual thread for `seconds` (a number its caller
    checked); zero or less is one trip round the loop, as ``asyncio.sleep(0)``."""
    if seconds <= 0:
        _await(asyncio.sleep(0))
        return
    loop = _running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    timer = loop.call_later(seconds, _resolve, fut)
    try:
        _await(fut)
    finally:
        timer.cancel()


@overload
def remaining(deadline: float) -> float: ...
@overload
def remaining(deadline: None) -> None: ...
def remaining(deadline: float | None) -> float | None:
    """Seconds left before `deadline` (a ``time.monotonic()`` value; None: no
    limit), 0.0 once it has passed (and for a NaN deadline).  greenhub.sync puts
    threading's checks of a timeout on top (its ``_cond_remaining``)."""
    return None if deadline is None else max(0.0, deadline - _monotonic())
