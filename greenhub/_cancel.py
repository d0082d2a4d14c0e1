"""``defer_cancellation()``: synchronous code that a cancellation must not cut short.

The block is counted in C on the task's GreenCoro, and every suspension of synchronous
code inside it waits through a stand-in future (src/defer.c explains how).  This module
holds the context manager / decorator, the stand-in's Python half (``_DeferredWait``)
and the re-arming of the held-back cancellation when the outermost block ends.  The
rule it serves is in docs/guide-cancellation.md.
"""

import asyncio
import functools
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal, ParamSpec, TypeVar, overload

from . import _core
from ._private import _get_running_loop

_P = ParamSpec("_P")
_T = TypeVar("_T")

__all__ = ["defer_cancellation"]

_enter = _core._defer_enter
_exit = _core._defer_exit
_current_task = asyncio.current_task


class _DeferredWait:
    """One wait of synchronous code inside a block, on `inner` (a pending future of
    the running loop).  ``standin()`` gives the future the Task waits on instead;
    ``inner``'s done callback completes it.  Cancelling a stand-in leaves `inner`
    alone, and C asks for a new one."""

    __slots__ = ("_inner", "_loop", "_standin")

    def __init__(self, inner: asyncio.Future[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._inner = inner
        self._loop = loop
        self._standin: asyncio.Future[None] | None = None
        inner.add_done_callback(self._inner_done)

    def _inner_done(self, inner: asyncio.Future[Any]) -> None:
        standin = self._standin
        if standin is not None and not standin.done():
            standin.set_result(None)

    def standin(self) -> asyncio.Future[None] | None:
        """A new future to wait on, or None once `inner` is done."""
        if self._inner.done():
            return None
        standin: asyncio.Future[None] = self._loop.create_future()
        self._standin = standin
        standin._asyncio_future_blocking = True  # as Future.__await__ does before yielding
        return standin

    def close(self) -> None:
        self._standin = None
        self._inner.remove_done_callback(self._inner_done)


def _deferred_wait(yielded: Any) -> _DeferredWait | None:
    """Called by C for each suspension inside a block: a _DeferredWait, or None
    when `yielded` is no pending future of this loop (a bare yield; anything else is
    left to the Task to accept or refuse)."""
    if getattr(yielded, "_asyncio_future_blocking", None) is None:
        return None
    loop = _get_running_loop()
    try:
        if yielded.done() or yielded.get_loop() is not loop:
            return None
    except AttributeError:
        return None
    assert loop is not None  # the future's loop is
    return _DeferredWait(yielded, loop)


_core._install_tool_hooks(deferred_wait=_deferred_wait)


def _rearm(cancelled: asyncio.CancelledError) -> None:
    """The outermost block ended with `cancelled` (the CancelledError it held
    back): cancel the task again, as a running task is cancelled, so that its next
    suspension raises.  uncancel() first: the original cancel() is already counted."""
    try:
        task = _current_task()
    except RuntimeError:
        # No running loop: close() is unwinding the stack (GeneratorExit); there is
        # no next suspension to deliver the cancellation at.
        return
    if task is None or task.done():
        return
    msg = cancelled.args[0] if cancelled.args else None
    task.uncancel()
    task.cancel(msg)


def call_deferring(fn: Callable[..., _T], /, *args: Any) -> _T:
    """``fn(*args)`` in a defer_cancellation() block, without the context manager's
    object: for wrappers on hot paths (greenhub.contrib.psycopg's pool methods)."""
    token = _enter()
    try:
        return fn(*args)
    finally:
        cancelled = _exit(token)
        if cancelled is not None:
            _rearm(cancelled)


class _DeferCancellation:
    """What ``greenhub.defer_cancellation()`` returns: a context manager, and a
    decorator that opens a block around every call."""

    __slots__ = ("_tokens",)

    def __init__(self) -> None:
        # one per active `with` of this object (nested use)
        self._tokens: list[_core.GreenCoro | None] = []

    def __enter__(self) -> "_DeferCancellation":
        self._tokens.append(_enter())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Literal[False]:
        cancelled = _exit(self._tokens.pop())
        if cancelled is not None:
            _rearm(cancelled)
        return False

    def __call__(self, fn: Callable[_P, _T]) -> Callable[_P, _T]:
        if not callable(fn):
            raise TypeError(f"greenhub.defer_cancellation() decorates a callable, not {fn!r}")
        if inspect.iscoroutinefunction(fn):
            raise TypeError(
                "greenhub.defer_cancellation() decorates synchronous functions; "
                "in async code use asyncio.shield()"
            )

        @functools.wraps(fn)
        def deferring_cancellation(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            token = _enter()
            try:
                return fn(*args, **kwargs)
            finally:
                cancelled = _exit(token)
                if cancelled is not None:
                    _rearm(cancelled)

        return deferring_cancellation

    def __repr__(self) -> str:
        return "greenhub.defer_cancellation()"


@overload
def defer_cancellation(fn: None = None) -> _DeferCancellation: ...
@overload
def defer_cancellation(fn: Callable[_P, _T]) -> Callable[_P, _T]: ...
def defer_cancellation(
    fn: Callable[_P, _T] | None = None,
) -> _DeferCancellation | Callable[_P, _T]:
    """Run a block of synchronous code to its end even if its task is cancelled.

    ``with greenhub.defer_cancellation():`` (or ``@greenhub.defer_cancellation`` on a
    function): inside a virtual thread, a cancellation of the task (``task.cancel()``,
    ``asyncio.timeout()``, a client disconnect) does not interrupt the block's waits -
    blocking calls and ``greenhub.await_()`` complete as if nothing happened - and is
    delivered when the outermost block ends: ``CancelledError`` is raised at the task's
    next wait, its next ``await``, or the task ends cancelled, as for a task cancelled
    while it runs.  Blocks nest.  For short sections that hold a resource across a
    wait (returning a connection to a pool, finishing a hand-over); a wait in a block
    should have a bound (a timeout), since nothing else can stop it.  Outside a virtual
    thread nothing can be cancelled and the block only marks the code.  An ``await``
    of the task's own coroutine inside a block raises RuntimeError: async code has
    ``asyncio.shield()``.  See docs/guide-cancellation.md.
    """
    if fn is not None:
        return _DeferCancellation()(fn)
    return _DeferCancellation()
