"""greenhub.pool: ``Group`` and ``Pool``, gevent.pool's shape for virtual threads.

A ``Group`` keeps the virtual threads (asyncio Tasks) spawned through it; a ``Pool`` is a
group with at most `size` of them running at once.  The blocking methods (``spawn`` on a
full pool, ``map``, ``imap``, ``imap_unordered``, ``apply``, ``join``, ``kill``) are for
sync code: in a virtual thread they suspend only that virtual thread; in a thread with no
event loop running they run this thread's greenhub loop for the call, as
``greenhub.await_()`` does.  Async code uses their ``async_`` twins
(``await pool.async_map(...)``, ``async for r in pool.async_imap(...)``).

Semantics follow ``concurrent.futures`` where gevent and it differ:

- ``map`` / ``imap`` return results in the order of the arguments and raise the first
  exception *in that order*, when its turn comes; ``imap_unordered`` yields (and
  raises) in completion order.  When a map ends early - an exception, the caller
  cancelled, the iterator closed - the calls it started that are still running are
  cancelled and (for ``map``) waited for, as ``asyncio.TaskGroup`` does.
- ``kill()`` cancels every virtual thread of the group and waits for them to finish.
- ``join()`` waits until the group is empty.
- A full pool makes ``spawn`` wait, first come first served, for a slot; only the
  caller's virtual thread waits.

`fn` may be a sync function (it runs as a virtual thread, ``greenhub.spawn``) or a
coroutine function (its coroutine runs as a task); either way the pool limits how many
run at once.

How the arguments are fed.  A map feeds its arguments from a feeder virtual thread of
its own (so that a pool slot freed while the caller waits for an earlier result is used
at once, and so that a blocking iterable blocks only the feeder): the feeder spawns each
call through the pool - waiting for a slot when it is full - and hands the calls to the
consumer in order through a queue of the loop.  The feeder is not one of the group's
virtual threads; ``join()`` waits for the calls it has spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, TypeVar

from . import _core
from ._private import _get_running_loop
from ._vthread import spawn as _spawn_vthread

__all__ = ["Group", "Pool"]

_T = TypeVar("_T")
_R = TypeVar("_R")

_in_vthread = _core.in_vthread
_await = _core.await_
_CancelledError = asyncio.CancelledError


def _blocking(method: str, coro: Coroutine[Any, Any, _T]) -> _T:
    """Run a blocking method's coroutine for sync code: in a virtual thread only it
    waits; in a thread with no loop running, this thread's greenhub loop runs it."""
    if not _in_vthread() and _get_running_loop() is not None:
        coro.close()
        raise RuntimeError(
            f"{method}() blocks: call it from a virtual thread (greenhub.spawn, "
            f"greenhub.run), or in async code use 'await ...async_{method.rsplit('.', 1)[-1]}()'"
        )
    return _await(coro)


class Group:
    """A set of virtual threads with no limit on their number (gevent.pool.Group)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._empty_waiters: list[asyncio.Future[None]] = []
        # Slots (Pool only): how many are taken, and the spawners waiting for one.
        self._size: int | None = None
        self._used = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        size = "" if self._size is None else f" size={self._size}"
        return f"<{type(self).__module__}.{type(self).__qualname__} at {id(self):#x}{size} running={len(self._tasks)}>"

    # -- what is in the group ------------------------------------------------

    def __len__(self) -> int:
        """The number of virtual threads in the group that have not finished."""
        return len(self._tasks)

    def __contains__(self, task: object) -> bool:
        return task in self._tasks

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def free_count(self) -> int | None:
        """How many more virtual threads may start now without waiting (None: no limit)."""
        if self._size is None:
            return None
        return max(0, self._size - self._used - len(self._slot_waiters))

    def full(self) -> bool:
        """Whether ``spawn`` would wait."""
        return self.free_count() == 0

    # -- the loop ------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None or (self._loop is not loop and not self._tasks and not self._used):
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(f"{self!r} is bound to a different event loop")
        return loop

    # -- slots -----------------------------------------------------------------

    def _take_slot_now(self) -> bool:
        if self._size is None:
            return True
        if self._used < self._size and not self._slot_waiters:
            self._used += 1
            return True
        return False

    async def _take_slot(self) -> None:
        if self._take_slot_now():
            return
        fut = self._bind().create_future()
        self._slot_waiters.append(fut)
        try:
            await fut  # release_slot() hands its slot over: _used stays as it is
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release_slot()  # handed a slot, then cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(fut)
            raise

    def _release_slot(self) -> None:
        if self._size is None:
            return
        waiters = self._slot_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._used -= 1

    # -- spawning --------------------------------------------------------------

    def _start(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> asyncio.Task[Any]:
        """Start fn(*args, **kwargs) in a slot already taken."""
        try:
            loop = self._bind()
            if inspect.iscoroutinefunction(fn):
                task: asyncio.Task[Any] = loop.create_task(fn(*args, **kwargs))
            else:
                task = _spawn_vthread(fn, *args, **kwargs)
        except BaseException:
            self._release_slot()
            raise
        self._tasks.add(task)
        task.add_done_callback(self._discard)
        return task

    def _discard(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._release_slot()
        if not self._tasks:
            waiters, self._empty_waiters = self._empty_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def spawn(self, fn: Callable[..., _R], /, *args: Any, **kwargs: Any) -> asyncio.Task[_R]:
        """Start ``fn(*args, **kwargs)`` as a virtual thread of the group and return its
        Task.  On a full pool this waits for a slot: in a virtual thread only it waits;
        elsewhere (async code, a loop callback) a full pool raises RuntimeError - use
        ``await pool.async_spawn(...)`` there."""
        if not callable(fn):
            raise TypeError(f"{type(self).__name__}.spawn() needs a callable, got {fn!r}")
        if not self._take_slot_now():
            if not _in_vthread():
                raise RuntimeError(
                    f"{self!r} is full and this is not a virtual thread, which could wait "
                    "for a slot: in async code use 'await pool.async_spawn(...)'"
                )
            self._bind()
            _await(self._take_slot())
        return self._start(fn, args, kwargs)

    async def async_spawn(
        self, fn: Callable[..., _R], /, *args: Any, **kwargs: Any
    ) -> asyncio.Task[_R]:
        """``spawn()`` for async code: waits for a slot on a full pool."""
        if not callable(fn):
            raise TypeError(f"{type(self).__name__}.async_spawn() needs a callable, got {fn!r}")
        await self._take_slot()
        return self._start(fn, args, kwargs)

    # -- waiting ---------------------------------------------------------------

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every virtual thread of the group has finished (True), or
        `timeout` seconds have passed (False).  Their results and exceptions stay
        with their Tasks (an exception nobody retrieves is logged, as for any Task)."""
        return _blocking(f"{type(self).__name__}.join", self.async_join(timeout))

    async def async_join(self, timeout: float | None = None) -> bool:
        """``join()`` for async code."""
        loop = self._bind()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            fut = loop.create_future()
            self._empty_waiters.append(fut)
            try:
                if deadline is None:
                    await fut
                else:
                    done, _ = await asyncio.wait((fut,), timeout=max(0.0, deadline - loop.time()))
                    if not done:
                        return False
            finally:
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    self._empty_waiters.remove(fut)
        return True

    def kill(self, block: bool = True, timeout: float | None = None) -> None:
        """Cancel every virtual thread of the group; with `block`, wait (up to
        `timeout` seconds) for them to finish."""
        if not block:
            for task in list(self._tasks):
                task.cancel()
            return
        _blocking(f"{type(self).__name__}.kill", self.async_kill(timeout))

    async def async_kill(self, timeout: float | None = None) -> None:
        """``kill()`` for async code: cancel them all, wait (up to `timeout`)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # -- calling ---------------------------------------------------------------

    def apply(
        self, fn: Callable[..., _R], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None
    ) -> _R:
        """``fn(*args, **kwds)`` run in the group (taking a slot of a pool) and its
        result.  Called from one of the group's own virtual threads, it calls `fn`
        directly (a pool could otherwise wait for a slot held by its caller)."""
        if _in_vthread() and asyncio.current_task() in self._tasks:
            return fn(*args, **(kwds or {}))
        return _blocking(f"{type(self).__name__}.apply", self.async_apply(fn, args, kwds))

    async def async_apply(
        self, fn: Callable[..., _R], args: Iterable[Any] = (), kwds: dict[str, Any] | None = None
    ) -> _R:
        """``apply()`` for async code."""
        task = await self.async_spawn(fn, *args, **(kwds or {}))
        try:
            return await asyncio.shield(task)
        except _CancelledError:
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))
            raise

    def map(self, fn: Callable[..., _R], *iterables: Iterable[Any]) -> list[_R]:
        """``[fn(*args) for args in zip(*iterables)]``, the calls running in the group
        at once (at most `size` for a pool).  Results in order; the first exception in
        that order is raised once the calls still running are cancelled and done."""
        return _blocking(f"{type(self).__name__}.map", self.async_map(fn, *iterables))

    async def async_map(self, fn: Callable[..., _R], *iterables: Iterable[Any]) -> list[_R]:
        """``map()`` for async code."""
        run = _MapRun(self, fn, iterables, ordered=True)
        try:
            return [result async for result in run]
        finally:
            await run.close()

    def imap(self, fn: Callable[..., _R], *iterables: Iterable[Any]) -> Iterator[_R]:
        """An iterator over ``fn(*args)`` for ``args in zip(*iterables)``, in order;
        calls run ahead in the group.  Closing the iterator cancels the rest."""
        return self._iterate(fn, iterables, True, "imap")

    def imap_unordered(self, fn: Callable[..., _R], *iterables: Iterable[Any]) -> Iterator[_R]:
        """As imap(), yielding each result as its call finishes."""
        return self._iterate(fn, iterables, False, "imap_unordered")

    def async_imap(self, fn: Callable[..., _R], *iterables: Iterable[Any]) -> AsyncIterator[_R]:
        """``imap()`` for async code: ``async for result in pool.async_imap(...)``."""
        return _MapRun(self, fn, iterables, ordered=True)

    def async_imap_unordered(
        self, fn: Callable[..., _R], *iterables: Iterable[Any]
    ) -> AsyncIterator[_R]:
        """``imap_unordered()`` for async code."""
        return _MapRun(self, fn, iterables, ordered=False)

    def _iterate(
        self, fn: Callable[..., _R], iterables: tuple[Iterable[Any], ...], ordered: bool, name: str
    ) -> Iterator[_R]:
        method = f"{type(self).__name__}.{name}"
        if not _in_vthread() and _get_running_loop() is not None:
            raise RuntimeError(
                f"{method}() blocks: call it from a virtual thread (greenhub.spawn, "
                f"greenhub.run), or in async code use 'async for ... in ...async_{name}()'"
            )
        return _SyncIterator(_MapRun(self, fn, iterables, ordered=ordered))

    # -- with ------------------------------------------------------------------

    def __enter__(self) -> Group:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """Waits for the group's virtual threads; if the block raised, cancels them first."""
        if exc_type is not None:
            self.kill()
        else:
            self.join()

    async def __aenter__(self) -> Group:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            await self.async_kill()
        else:
            await self.async_join()


class Pool(Group):
    """A group running at most `size` virtual threads at once (gevent.pool.Pool);
    ``size=None`` puts no limit on it."""

    def __init__(self, size: int | None = None) -> None:
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool):
                raise TypeError(f"Pool size must be an int or None, not {type(size).__name__}")
            if size < 1:
                raise ValueError(f"Pool size must be at least 1, got {size}")
        super().__init__()
        self._size = size

    @property
    def size(self) -> int | None:
        """The most virtual threads the pool runs at once (None: no limit)."""
        return self._size


# --------------------------------------------------------------------------
# map, imap, imap_unordered


class _MapRun(Generic[_R]):
    """One map over a group: a feeder virtual thread spawns the calls; the consumer
    (async iteration) takes them in order, or as they finish."""

    def __init__(
        self,
        group: Group,
        fn: Callable[..., _R],
        iterables: tuple[Iterable[Any], ...],
        ordered: bool,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"map needs a callable, got {fn!r}")
        self._group = group
        self._fn = fn
        self._iterables = iterables
        self._ordered = ordered
        self._feeder: asyncio.Task[int] | None = None
        self._started: list[asyncio.Task[Any]] = []  # every call, in order
        self._ready: deque[asyncio.Task[Any]] = deque()  # the calls the consumer may take
        self._wakeup: asyncio.Future[None] | None = None  # the waiting consumer's
        self._taken = 0

    def _wake(self, _: object = None) -> None:
        fut, self._wakeup = self._wakeup, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _ready_one(self, task: asyncio.Task[Any]) -> None:
        self._ready.append(task)
        self._wake()

    def _feed(self) -> int:
        """The feeder (a virtual thread): spawns every call; returns how many."""
        group, fn = self._group, self._fn
        count = 0
        for args in zip(*self._iterables, strict=False):  # as map(): the shortest
            task = group.spawn(fn, *args)
            self._started.append(task)
            count += 1
            if self._ordered:
                self._ready_one(task)
            else:
                task.add_done_callback(self._ready_one)
        return count

    def __aiter__(self) -> _MapRun[_R]:
        return self

    async def __anext__(self) -> _R:
        if self._feeder is None:
            self._feeder = _spawn_vthread(self._feed)
            self._feeder.add_done_callback(self._wake)
        feeder = self._feeder
        while not self._ready:
            if feeder.done():
                if feeder.cancelled() or feeder.exception() is not None:
                    await self.close()
                    feeder.result()  # raises the iterable's (or spawn's) error
                if self._taken >= feeder.result():
                    raise StopAsyncIteration
            fut = self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await fut
            except BaseException:
                self._wakeup = None
                await self.close()
                raise
        task = self._ready.popleft()
        self._taken += 1
        try:
            return await asyncio.shield(task)
        except BaseException:
            # The call failed (its exception comes in its turn), or the consumer was
            # cancelled: the calls still running are cancelled and waited for.
            await self.close()
            raise

    async def close(self) -> None:
        """Cancel the feeder and the calls still running; wait for them to finish.
        Their results and exceptions are no longer anyone's (retrieved here)."""
        pending = [t for t in (self._feeder, *self._started) if t is not None and not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        for done in (self._feeder, *self._started):
            if done is not None and done.done() and not done.cancelled():
                done.exception()  # retrieved: not logged as "never retrieved"

    def aclose_soon(self) -> None:
        """What close() does, without waiting (a sync iterator dropped mid-way)."""
        for running in (self._feeder, *self._started):
            if running is not None and not running.done():
                running.cancel()


class _SyncIterator(Iterator[_R]):
    """imap()/imap_unordered() for sync code: each next() waits for the next result."""

    def __init__(self, run: _MapRun[_R]) -> None:
        self._run = run
        self._closed = False

    def __iter__(self) -> _SyncIterator[_R]:
        return self

    def __next__(self) -> _R:
        if self._closed:
            raise StopIteration
        try:
            return _await(_next(self._run))
        except _Exhausted:
            self._closed = True
            raise StopIteration from None
        except BaseException:
            self._closed = True
            raise

    def close(self) -> None:
        """Cancel the calls still running (and wait for them, in a virtual thread)."""
        if self._closed:
            return
        self._closed = True
        if _in_vthread():
            _await(self._run.close())
        else:
            self._run.aclose_soon()

    def __del__(self) -> None:
        if not self._closed:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing runs
                self._run.aclose_soon()

    def __enter__(self) -> _SyncIterator[_R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Exhausted(Exception):
    pass


async def _next(run: _MapRun[_R]) -> _R:
    try:
        return await run.__anext__()
    except StopAsyncIteration:
        raise _Exhausted from None
