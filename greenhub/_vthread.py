"""Virtual threads: synchronous code that waits on async code.

``await_`` is implemented in C (src/bridge.c); this module holds the parts
that run once per call site or per thread: running an awaitable when no loop
is running, and ``spawn``.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import contextvars
import inspect
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from . import _core
from ._private import _get_running_loop

if TYPE_CHECKING:
    from ._loop import Loop

_P = ParamSpec("_P")
_T = TypeVar("_T")

__all__ = ["await_", "run_sync", "spawn"]

await_ = _core.await_
run_sync = _core.await_

# The base of every worker greenlet's frame stack: module-level code, so that a task's
# frames end in a ``<module>`` frame of ``__main__`` as they do on the stock loop, where
# the step's caller frames lead down to the script that started the loop.  Code that
# walks ``f_back`` to the nearest module frame (aiohttp's ``web.AppKey``, which names a
# key after it) then finds one.  The worker's return value is kept: greenlet hands it
# to the parent when a resumed await_() ends the greenlet.
_WORKER_BASE = compile("_greenhub_result = _greenhub_worker()", "<greenhub virtual thread>", "exec")


def _worker_entry(worker_main: Callable[[], object]) -> Callable[[], object]:
    def virtual_thread() -> object:
        main = sys.modules.get("__main__")
        namespace = getattr(main, "__dict__", None)
        if not isinstance(namespace, dict) or "__builtins__" not in namespace:
            namespace = {"__name__": "__main__", "__builtins__": builtins}
        local = {"_greenhub_worker": worker_main}
        exec(_WORKER_BASE, namespace, local)
        return local["_greenhub_result"]

    return virtual_thread


_core._wrap_worker_main(_worker_entry)


class _ThreadLoop:
    """This thread's greenhub loop for await_() calls made with no loop
    running; closed when the thread's locals go away (or at exit)."""

    def __init__(self) -> None:
        from ._loop import Loop

        self.loop: Loop = Loop()

    def close(self) -> None:
        """At exit (atexit, main thread): what asyncio.run() does at its end."""
        loop = self.loop
        if not loop.is_closed() and not loop.is_running():
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    def __del__(self) -> None:
        # The thread has ended: this runs inside CPython's teardown of its thread state,
        # after the thread's dict (where asyncio keeps the running loop) and its entry in
        # threading's table were dropped.  Running the loop there makes asyncio create a
        # new dict, which 3.11 never frees (about 300 bytes per thread), and
        # shutdown_default_executor() starts a thread, whose constructor (and any join)
        # registers a dummy Thread for the dying one: a leak on every version, and on
        # 3.13 an error printed for each at exit.  So only async generators, which need
        # the loop to finish, make it run; close() shuts the executor down without
        # waiting for its idle workers, which then exit on their own.
        try:
            loop = self.loop
            if loop.is_closed() or loop.is_running():
                return
            try:
                # BaseEventLoop's private set of live async generators (not in typeshed).
                if getattr(loop, "_asyncgens", None):
                    loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
        except Exception:  # interpreter shutdown: modules may be gone
            pass


_local = threading.local()


def _thread_loop() -> Loop:
    holder: _ThreadLoop | None = getattr(_local, "holder", None)
    if holder is None or holder.loop.is_closed():
        holder = _local.holder = _ThreadLoop()
        if threading.current_thread() is threading.main_thread():
            atexit.register(holder.close)
    return holder.loop


def _existing_thread_loop() -> Loop | None:
    holder: _ThreadLoop | None = getattr(_local, "holder", None)
    return holder.loop if holder is not None else None


def _run_sync(awaitable: Awaitable[_T], context: contextvars.Context | None = None) -> _T:
    """await_() with no running loop: run `awaitable` to completion on this
    thread's greenhub loop.  Ctrl-C (or any exception out of the loop)
    cancels it and waits for it to finish before re-raising, as asyncio.run
    does for its main task.

    In a thread whose call a running loop owns - greenhub.sync_to_async()'s
    threads, a greenhub loop's executor calls (run_in_executor, to_thread),
    anyio's worker threads - or for a Future of a loop running in another
    thread, the awaitable runs on that loop instead and only this thread
    waits, as asgiref's async_to_sync does (greenhub/_colours.py).
    `context`: the Context to run it in (default: a copy of the current one)."""
    from ._colours import _owner_home

    # Not `holder` as a local here: a traceback that outlives the thread (an exception
    # kept by the caller) would keep it, and its __del__ would then close the loop from
    # another thread, where the loop's worker greenlets cannot be ended.
    home = _owner_home(awaitable, _existing_thread_loop())
    if home is not None:
        return home.run(awaitable, context)
    loop = _thread_loop()
    if context is None:
        task = asyncio.ensure_future(awaitable, loop=loop)
    else:
        task = loop.create_task(_awaited(awaitable), context=context)
    try:
        return loop.run_until_complete(task)
    except BaseException:
        if not task.done():
            task.cancel()
            try:
                loop.run_until_complete(task)
            except BaseException:
                pass
        raise


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


async def _call_sync(fn: Callable[..., _T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _T:
    return fn(*args, **kwargs)


_CORO_FN_HINT = (
    "hint: that is a coroutine function; {where}() runs a coroutine - call it: "
    "{where}(main()) - or a synchronous function"
)


def _is_coroutine_function(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or (
        callable(fn)
        and not inspect.isfunction(fn)
        and not inspect.ismethod(fn)
        and inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
    )


def spawn(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> asyncio.Task[_T]:
    """Run the synchronous function ``fn(*args, **kwargs)`` as a virtual
    thread: an asyncio Task on the running greenhub loop whose result is what
    ``fn`` returns.  Inside ``fn`` (at any depth), ``greenhub.await_()``
    suspends only this task."""
    if not callable(fn):
        raise TypeError(f"greenhub.spawn() needs a callable, got {fn!r}")
    if _is_coroutine_function(fn):
        # asyncio.run()'s error for the same slip (the function's call would return a
        # coroutine that is never awaited), and what to use instead.
        exc = ValueError(f"a coroutine was expected, got {fn!r}")
        exc.add_note(
            "hint: that is a coroutine function; greenhub.spawn() runs a synchronous "
            "function as a virtual thread - for a coroutine use asyncio.create_task(fn(...))"
        )
        raise exc
    loop = _get_running_loop()
    if loop is None:
        raise RuntimeError(
            "greenhub.spawn() needs a running greenhub loop in this thread, and none is "
            "running: call it from code that greenhub.run() runs (a task or a virtual "
            "thread), or start one with greenhub.run(fn)"
        )
    if not isinstance(loop, _core.Loop):
        raise RuntimeError(
            f"greenhub.spawn() needs a running greenhub loop, but this thread runs "
            f"{type(loop).__name__}; start the program with greenhub.run()"
        )
    return loop.create_task(_call_sync(fn, args, kwargs))
