"""await_() with no loop running: each OS thread's own greenhub loop.

``greenhub.await_()`` called outside any loop (a plain synchronous program, a thread
of a thread pool) runs the awaitable to completion on a greenhub loop that belongs to
the calling thread, made on first use and closed when the thread ends (at exit for
the main thread).  The C core calls ``run_sync`` for that (the ``run_sync`` hook this
module installs); ``greenhub._colours`` calls it too, and records in ``local.home``
the loop a sync_to_async() thread's caller waits on, which then runs the awaitable.

Above ``_loop`` (it makes ``greenhub.Loop`` objects) and below ``_colours``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from . import _core, _timeout
from ._loop import Loop

if TYPE_CHECKING:
    from ._colours import _Home

_T = TypeVar("_T")

__all__ = ["local", "run_sync", "thread_loop"]


class _ThreadLoop:
    """This thread's greenhub loop for await_() calls made with no loop
    running; closed when the thread's locals go away (or at exit)."""

    def __init__(self) -> None:
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


# Per OS thread: `holder`, the _ThreadLoop; `home`, set by greenhub._colours in a thread
# that sync_to_async() started for a caller on another loop.
local = threading.local()


def thread_loop() -> Loop:
    holder: _ThreadLoop | None = getattr(local, "holder", None)
    if holder is None or holder.loop.is_closed():
        holder = local.holder = _ThreadLoop()
        if threading.current_thread() is threading.main_thread():
            atexit.register(holder.close)
    return holder.loop


def _existing_thread_loop() -> Loop | None:
    holder: _ThreadLoop | None = getattr(local, "holder", None)
    return holder.loop if holder is not None else None


# greenhub._colours installs this (it is a layer up): owner_home(awaitable, own_loop)
# is the _Home of the running loop that owns what this thread does, or None.
owner_home: Callable[[object, Loop | None], _Home | None] | None = None


def run_sync(awaitable: Awaitable[_T], context: contextvars.Context | None = None) -> _T:
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
    # Not `holder` as a local here: a traceback that outlives the thread (an exception
    # kept by the caller) would keep it, and its __del__ would then close the loop from
    # another thread, where the loop's worker greenlets cannot be ended.
    home = owner_home(awaitable, _existing_thread_loop()) if owner_home is not None else None
    # Inside a greenhub.timeout() block of this thread, the wait ends at its deadline.
    block = _timeout.innermost()
    if block is not None:
        left = block.when() - time.monotonic()  # type: ignore[operator]  # (a deadline)
        if left <= 0:
            if inspect.iscoroutine(awaitable):
                awaitable.close()  # never to run: no "never awaited" warning
            raise _timeout.expire(block)
        awaitable = _within(awaitable, left)
    try:
        if home is not None:
            return home.run(awaitable, context)
        return _run_here(awaitable, context)
    except _DeadlinePassed:
        assert block is not None
        raise _timeout.expire(block) from None


def _run_here(awaitable: Awaitable[_T], context: contextvars.Context | None) -> _T:
    loop = thread_loop()
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


class _DeadlinePassed(Exception):
    """The deadline of the waiting thread's greenhub.timeout() block passed (raised on
    the loop, turned into that block's interruption in the thread)."""


async def _within(awaitable: Awaitable[_T], delay: float) -> _T:
    timeout = asyncio.timeout(delay)
    try:
        async with timeout:
            return await awaitable
    except TimeoutError:
        if timeout.expired():
            raise _DeadlinePassed from None
        raise  # the awaitable's own


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


_core._install_hooks(run_sync=run_sync)
