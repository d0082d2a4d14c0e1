"""Where a virtual thread may switch: ``no_switch()`` and the switch log.

The checks are C (src/switches.c; ``greenhub.await_()`` tests one counter on
the task's GreenCoro); this module holds the context manager / decorator and
the switch log's formatting.
"""

import asyncio
import functools
import inspect
import logging
import os
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, cast, overload

from . import _core
from ._core import SwitchError
from ._private import _getframe

_P = ParamSpec("_P")
_T = TypeVar("_T")

__all__ = ["SwitchError", "no_switch", "set_switch_log", "get_switch_log"]

switch_logger = logging.getLogger("greenhub.switches")


class _NoSwitch:
    """What ``greenhub.no_switch()`` returns: a context manager, and a
    decorator that opens a block around every call."""

    __slots__ = ("_reason", "_tokens")

    def __init__(self, reason: str | None) -> None:
        self._reason = reason
        # one per active `with` of this object (nested use)
        self._tokens: list[tuple[_core.GreenCoro, str | None] | None] = []

    def __enter__(self) -> "_NoSwitch":
        block = self._reason
        if block is None:
            f = _getframe(1)
            block = f"entered at {f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}()"
        self._tokens.append(_core._no_switch_enter(block))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        _core._no_switch_exit(self._tokens.pop())
        return False

    def __call__(self, fn: Callable[_P, _T]) -> Callable[_P, _T]:
        if not callable(fn):
            raise TypeError(f"greenhub.no_switch() decorates a callable, not {fn!r}")
        block = self._reason or f"@greenhub.no_switch on {fn.__qualname__}()"
        enter, leave = _core._no_switch_enter, _core._no_switch_exit
        if inspect.iscoroutinefunction(fn):
            # The whole coroutine must run without suspending.
            coroutine_fn = fn  # (narrowed to a coroutine function)

            @functools.wraps(fn)
            async def no_switch_coroutine(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                token = enter(block)
                try:
                    return await coroutine_fn(*args, **kwargs)
                finally:
                    leave(token)

            return cast(Callable[_P, _T], no_switch_coroutine)

        @functools.wraps(fn)
        def no_switch_call(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            token = enter(block)
            try:
                return fn(*args, **kwargs)
            finally:
                leave(token)

        return no_switch_call

    def __repr__(self) -> str:
        return f"greenhub.no_switch({self._reason!r})"


@overload
def no_switch(reason: str | None = None) -> _NoSwitch: ...
@overload
def no_switch(reason: Callable[_P, _T]) -> Callable[_P, _T]: ...
def no_switch(reason: str | Callable[_P, _T] | None = None) -> _NoSwitch | Callable[_P, _T]:
    """Mark a critical section in which this virtual thread must not switch.

    ``with greenhub.no_switch():`` (or ``@greenhub.no_switch()`` /
    ``@greenhub.no_switch`` on a function) makes every attempt of the current
    task to suspend inside the block - ``greenhub.await_()``, any cooperative
    blocking call built on it, an ``await`` that would wait - raise
    ``greenhub.SwitchError`` instead of letting other tasks run.  Blocks nest;
    they belong to the task that entered them (an object used as a context
    manager should be entered by one task at a time - ``with no_switch():``
    makes a new one each time, and each call of a decorated function opens its
    own block).  Outside a greenhub task nothing can switch, and the block only
    marks the code.  `reason` (a string) names
    the block in the error message; by default it is where the block was
    entered.
    """
    if callable(reason) and not isinstance(reason, str):
        return _NoSwitch(None)(reason)  # bare @greenhub.no_switch
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"greenhub.no_switch() reason must be a string, not {reason!r}")
    return _NoSwitch(reason)


def set_switch_log(enabled: bool = True) -> None:
    """Log every place synchronous code suspends (``greenhub.await_()``,
    greenhub's blocking calls, green sockets) with its stack, at INFO level through the
    ``greenhub.switches`` logger.  A debugging aid; off by default
    (``GREENHUB_LOG_SWITCHES=1`` turns it on at import)."""
    _core._set_switch_log(bool(enabled))
    _state["on"] = bool(enabled)


def get_switch_log() -> bool:
    """True while the switch log is on."""
    return _state["on"]


_state = {"on": False}

# The file name of the code a worker greenlet runs its task under (_vthread.py).
_WORKER_BASE_FILE = "<greenhub virtual thread>"


def _log_switch(yielded: object) -> None:
    """Called (from C) each time sync code suspends, waiting on `yielded`."""
    if not switch_logger.isEnabledFor(logging.INFO):
        return
    # The suspending call (await_(), a green socket method) is C: frame 1 is
    # the code that called it.
    # The stack stops at the worker greenlet's base frame (greenhub._vthread's
    # _WORKER_BASE), as dump_tasks() and the watchdog's do: what is outside it is
    # greenhub's, not the task's.
    frames = []
    for frame, lineno in traceback.walk_stack(_getframe(1)):
        if frame.f_code.co_filename == _WORKER_BASE_FILE:
            break
        frames.append((frame, lineno))
    frames.reverse()
    stack = traceback.StackSummary.extract(iter(frames), limit=None)
    task = asyncio.current_task()
    name = task.get_name() if task is not None else "?"
    switch_logger.info(
        "task %r suspends, waiting on %r; stack (most recent call last):\n%s",
        name,
        yielded,
        "".join(stack.format()).rstrip(),
        extra={"task": task, "waiting_on": yielded, "stack": stack},
    )


_core._install_tool_hooks(log_switch=_log_switch)

if os.environ.get("GREENHUB_LOG_SWITCHES", "") not in ("", "0"):
    set_switch_log(True)
    if not switch_logger.hasHandlers():
        # Asked for from the environment, with logging not configured: show it.
        switch_logger.addHandler(logging.StreamHandler())
    if switch_logger.getEffectiveLevel() > logging.INFO:
        switch_logger.setLevel(logging.INFO)
