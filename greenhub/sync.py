"""Blocking primitives for virtual threads, OS threads and async code at once.

Each primitive has the `threading` / `queue` interface.  A blocking call made
inside a greenhub virtual thread (``greenhub.in_vthread()``: sync code running in
a task step) suspends only that task; the same call made anywhere else - an OS
thread, a program with no loop, a loop callback, a stock asyncio loop - blocks
the calling OS thread exactly as the `threading` call does.  Async code uses
the ``async_`` methods (``await lock.async_acquire()``, ``async with lock``,
``await event.async_wait()``, ``await q.async_get()``) on any asyncio loop.
One object may be shared by all three kinds of caller at once.

How a wait works.  Every primitive keeps its state under a short-lived raw
``_thread`` lock (its *mutex*: held only for a few non-blocking statements,
never across a wait) and parks blocked callers in a FIFO of ``_Waiter``s.
A waiter is either a future of the caller's loop (a virtual thread waits with
``await_(future)``, a coroutine with ``await future``) or a raw lock the
caller's OS thread blocks on.  ``notify`` marks a waiter woken *under the
mutex* - that mark, not the future, is what says a wakeup was consumed - and
then resolves its future (directly on the loop's own thread, else through
``call_soon_threadsafe``) or releases its raw lock.  A waiter that ends
without being woken (timeout) removes itself; one that was woken but then
cancelled passes the wakeup on, so no notification is ever lost.

The raw locks, ``get_ident``, ``time.sleep`` and ``threading.Condition``
are captured at import, so ``greenhub.monkey`` patching the
`threading`/`time` modules never changes them underneath.

Timeouts are taken as `threading`, `queue` and `time.sleep()` take them on
the running Python version, by letting the stdlib's own checks run: a free
raw lock's acquire() makes CPython's conversion of a timeout and raises its
errors; Condition.wait() itself decides what it accepts (_WaitProbe).
"""

import _thread
import asyncio
import heapq
import operator
import queue as _queue
import threading as _threading
import time as _time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

from . import _core, _timeout, _waits
from ._private import _get_running_loop

__all__ = [
    "BoundedSemaphore",
    "Condition",
    "Event",
    "LifoQueue",
    "Lock",
    "PriorityQueue",
    "Queue",
    "RLock",
    "Semaphore",
    "sleep",
]

_allocate_lock = _thread.allocate_lock
_Condition = _threading.Condition
_TIMEOUT_MAX = _thread.TIMEOUT_MAX
_get_ident = _thread.get_ident
_monotonic = _time.monotonic
_os_sleep = _time.sleep
_in_vthread = _core.in_vthread
_await = _core.await_
_running_loop = asyncio.get_running_loop  # where a loop must run (in a virtual thread)
_current_task = asyncio.current_task
_CancelledError = asyncio.CancelledError
# greenhub.timeout() in an OS thread: its deadline limits the raw-lock waits below.
_os_acquire = _timeout.os_acquire
_TimeoutInterrupt = _timeout.TimeoutInterrupt

_T = TypeVar("_T")
_Mutex: TypeAlias = _thread.LockType


# --------------------------------------------------------------------------
# sleep


def _seconds(timeout: Any) -> float:
    """The seconds a timeout stands for, once CPython's conversion of timeouts
    has accepted it: as that conversion reads it, a float's own value, else
    the integer ``__index__`` gives, else (3.15 takes any real number)
    ``float()``."""
    if isinstance(timeout, float):
        return float.__float__(timeout)  # a subclass's own value, as CPython reads it
    try:
        index = operator.index(timeout)
    except TypeError:
        return float(timeout)
    return float(index)


def _sleep_seconds(seconds: float) -> float:
    """time.sleep()'s argument as seconds >= 0; raises what time.sleep()
    raises for it, on this Python version.

    A free raw lock's acquire(True, seconds) makes CPython's conversion of a
    timeout - the one time.sleep() makes, with its TypeError, ValueError and
    OverflowError and their messages, which change between versions - and
    returns at once.  It refuses NaN and negative timeouts with a ValueError
    of its own and reads -1 as "no timeout"; time.sleep() refuses all of
    those at once, so for them time.sleep() itself is called, to raise."""
    if type(seconds) in (int, float) and 0 <= seconds <= _TIMEOUT_MAX:
        return seconds
    try:
        _allocate_lock().acquire(True, seconds)
    except ValueError:
        _os_sleep(seconds)  # raises: NaN or a negative length
        raise
    value = _seconds(seconds)
    if value < 0:
        _os_sleep(seconds)  # raises: a negative length (-1)
    return value


def _resolve(fut: asyncio.Future[_T], value: _T) -> None:
    if not fut.done():
        fut.set_result(value)


def sleep(seconds: float) -> None:
    """Sleep `seconds` seconds.

    In a virtual thread only that task sleeps (the loop runs everything
    else); anywhere else this is ``time.sleep(seconds)``.  In async code use
    ``await asyncio.sleep(seconds)``.
    """
    if not _in_vthread():
        if _timeout._local.blocks:  # in a greenhub.timeout() block
            return _timeout.os_sleep(_sleep_seconds(seconds))
        return _os_sleep(seconds)
    _waits.sleep(_sleep_seconds(seconds))
    return None


# --------------------------------------------------------------------------
# waiters


class _WaitProbe(_Condition):
    """threading.Condition whose wait(timeout) never blocks: it runs the
    interpreter's own Condition.wait() for its checks of the timeout.

    Condition.wait() queues a held raw lock as its waiter, releases the
    condition's lock (`_release_save`), then decides from `timeout` whether
    and how long to block on the waiter: ``timeout > 0`` up to 3.13,
    ``timeout <= 0`` from 3.14, where NaN reaches the lock, which refuses it.
    Here `_release_save` releases the waiter instead, so the acquire that
    follows returns at once, having made the stdlib's checks and conversion.
    The condition's own lock is held by nobody else and never released."""

    def __init__(self) -> None:
        lock = _allocate_lock()
        lock.acquire()  # owned, for wait()'s check
        super().__init__(lock)

    def _release_save(self) -> None:
        self._waiters[-1].release()  # type: ignore[attr-defined]

    def _acquire_restore(self, state: object) -> None:
        pass


def _cond_timeout(timeout: Any) -> float | None:
    """A timeout as threading.Condition.wait() takes it: None (no limit),
    0.0 (do not block: zero, negative, and NaN up to 3.13), else seconds as a
    float.  Raises what Condition.wait() raises for it on this Python
    version: every value but a plain number is checked by running
    Condition.wait() itself (_WaitProbe)."""
    if timeout is None:
        return None
    if type(timeout) in (int, float):
        if timeout <= 0:
            return 0.0
        if timeout <= _TIMEOUT_MAX:
            return float(timeout)
    _WaitProbe().wait(timeout)
    # Accepted.  It blocks for a number > 0 (on 3.14+ `not timeout <= 0`: the
    # same for every number; NaN, where the two differ, was refused there).
    return _seconds(timeout) if timeout > 0 else 0.0


class _Waiter:
    """One blocked caller.  `fut` (a future of `loop`) for a virtual thread or
    a coroutine, else `lock`, a raw lock held until the caller is woken."""

    __slots__ = ("fut", "lock", "loop", "woken")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        fut: asyncio.Future[bool] | None,
        lock: _Mutex | None,
    ) -> None:
        self.loop = loop
        self.fut = fut
        self.lock = lock
        self.woken = False

    def wake(self) -> None:
        """Called with the owner's mutex held.  Never switches or blocks."""
        self.woken = True
        fut = self.fut
        if fut is None:
            assert self.lock is not None
            self.lock.release()
        elif _get_running_loop() is self.loop:
            if not fut.done():
                fut.set_result(True)
        else:
            assert self.loop is not None
            try:
                self.loop.call_soon_threadsafe(_resolve, fut, True)
            except RuntimeError:
                pass  # that loop is closed: its waiters are gone


class _WaitQueue:
    """FIFO of waiters.  Every method is called with the owner's mutex held;
    `wait`/`async_wait` release it while blocked and hold it again on return."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: deque[_Waiter] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    def notify(self, n: int = 1) -> None:
        waiters = self._waiters
        while n > 0 and waiters:
            waiters.popleft().wake()
            n -= 1

    def notify_all(self) -> None:
        self.notify(len(self._waiters))

    def _add(self, coop: bool) -> _Waiter:
        if coop:
            loop = _running_loop()
            w = _Waiter(loop, loop.create_future(), None)
        else:
            lock = _allocate_lock()
            lock.acquire()
            w = _Waiter(None, None, lock)
        self._waiters.append(w)
        return w

    def _finish(self, w: _Waiter, raised: bool) -> bool:
        """After a wait, with the mutex held again: True if `w` was woken."""
        if w.woken:
            if raised:
                self.notify(1)  # cancelled after a wakeup: pass it on
            return True
        self._waiters.remove(w)
        return False

    def wait(self, mutex: _Mutex, timeout: float | None) -> bool:
        """Blocks the caller - cooperatively in a virtual thread - until
        notified (True) or `timeout` seconds pass (False)."""
        return self.wait_released(mutex, timeout, mutex.release)

    def wait_released(
        self, mutex: _Mutex, timeout: float | None, release: Callable[[], object]
    ) -> bool:
        """wait(), calling `release()` (which releases `mutex` and possibly a
        user's lock) once the waiter is registered."""
        coop = _in_vthread()
        w = self._add(coop)
        try:
            release()
        except BaseException:
            # `release` releases `mutex` first, so it failed after that.
            mutex.acquire()
            self._waiters.remove(w)
            raise
        raised = True
        try:
            if coop:
                _block_vthread(w, timeout)
            else:
                assert w.lock is not None
                _os_acquire(w.lock, timeout)
            raised = False
        finally:
            mutex.acquire()
            woken = self._finish(w, raised)
        return woken

    async def async_wait(self, mutex: _Mutex, timeout: float | None) -> bool:
        w = self._add(True)
        mutex.release()
        raised = True
        try:
            await _block_async(w, timeout)
            raised = False
        finally:
            mutex.acquire()
            woken = self._finish(w, raised)
        return woken


def _block_vthread(w: _Waiter, timeout: float | None) -> None:
    fut, loop = w.fut, w.loop
    assert fut is not None and loop is not None
    if timeout is None:
        _await(fut)
        return
    timer = loop.call_later(timeout, _resolve, fut, False)
    try:
        _await(fut)
    finally:
        timer.cancel()


async def _block_async(w: _Waiter, timeout: float | None) -> None:
    """_block_vthread() for a coroutine: await the waiter's future."""
    fut, loop = w.fut, w.loop
    assert fut is not None and loop is not None
    if timeout is None:
        await fut
        return
    timer = loop.call_later(timeout, _resolve, fut, False)
    try:
        await fut
    finally:
        timer.cancel()


def _deadline(timeout: float | None) -> float | None:
    """threading's `_time() + timeout`, with its errors (a Decimal timeout
    raises TypeError there)."""
    return None if timeout is None else _monotonic() + timeout


def _cond_remaining(deadline: float | None) -> float | None:
    """_waits.remaining() with threading's checks: seconds left before
    `deadline`, 0.0 once it has passed; as threading's loops do (`if remaining
    <= 0: ...`, else Condition.wait(remaining)), what is left goes through
    _cond_timeout()'s rules: an infinite deadline overflows there, and a NaN one
    raises ValueError from 3.14, as there.  Up to 3.13 Condition.wait(nan) does
    not block, and threading computes NaN again, forever; there
    _cond_timeout(nan) is 0.0, so the deadline counts as passed."""
    if deadline is None:
        return None
    left = deadline - _monotonic()
    return 0.0 if left <= 0 else _cond_timeout(left)


# --------------------------------------------------------------------------
# Lock, RLock


def _lock_timeout(blocking: bool, timeout: float) -> float | None:
    """threading.Lock.acquire()'s arguments -> None (forever) or seconds."""
    if type(timeout) in (int, float):
        if timeout == -1:
            return None if blocking else 0.0
        if blocking and 0 <= timeout <= _TIMEOUT_MAX:
            return float(timeout)
    # Anything else: a raw lock raises exactly what threading raises on this
    # Python version (the messages differ between versions).
    probe = _allocate_lock()
    probe.acquire(blocking, timeout)
    probe.release()
    if not blocking:
        return 0.0
    seconds = _seconds(timeout)
    # The lock refuses negative timeouts but -1, which it reads as no limit.
    return None if seconds < 0 else seconds


class Lock:
    """A lock with `threading.Lock`'s interface.

    It wraps a real ``_thread`` lock: outside a virtual thread ``acquire``
    is that lock's own blocking acquire.  A virtual thread that finds it held
    waits cooperatively and is woken by ``release``.  Not owned: any caller
    may release it, as with `threading.Lock`.
    """

    __slots__ = ("__weakref__", "_lock", "_mutex", "_waiters")

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._mutex = _allocate_lock()
        self._waiters = _WaitQueue()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        seconds = _lock_timeout(blocking, timeout)
        if self._lock.acquire(False):
            return True
        if seconds == 0.0:
            return False
        if not _in_vthread():
            return _os_acquire(self._lock, seconds)
        deadline = _deadline(seconds)
        mutex = self._mutex
        mutex.acquire()
        try:
            while True:
                if self._lock.acquire(False):
                    return True
                remaining = _cond_remaining(deadline)
                if remaining == 0.0:
                    return False
                self._waiters.wait(mutex, remaining)
        finally:
            mutex.release()

    async def async_acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """``acquire()`` for async code, on any asyncio loop."""
        seconds = _lock_timeout(blocking, timeout)
        if self._lock.acquire(False):
            return True
        if seconds == 0.0:
            return False
        deadline = _deadline(seconds)
        mutex = self._mutex
        mutex.acquire()
        try:
            while True:
                if self._lock.acquire(False):
                    return True
                remaining = _cond_remaining(deadline)
                if remaining == 0.0:
                    return False
                await self._waiters.async_wait(mutex, remaining)
        finally:
            mutex.release()

    def release(self) -> None:
        self._lock.release()  # RuntimeError("release unlocked lock") as threading
        mutex = self._mutex
        mutex.acquire()
        try:
            self._waiters.notify(1)
        finally:
            mutex.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def _at_fork_reinit(self) -> None:
        # Called in the child after fork() by stdlib code (logging, ...):
        # nobody waits there.
        self._lock = _allocate_lock()
        self._mutex = _allocate_lock()
        self._waiters = _WaitQueue()

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> None:
        await self.async_acquire()
        return None

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "locked" if self._lock.locked() else "unlocked"
        return (
            f"<{state} {type(self).__module__}.{type(self).__qualname__} object at {id(self):#x}>"
        )


# Who holds an RLock: a task, or an OS thread's ident.
_Owner: TypeAlias = "asyncio.Task[Any] | int"


def _owner(async_caller: bool = False) -> _Owner:
    """Who holds an RLock: the task in a virtual thread or async code, else
    the OS thread."""
    if async_caller or _in_vthread():
        task = _current_task()
        if task is not None:
            return task
    return _get_ident()


def _same_owner(owner: "_Owner | None", me: _Owner) -> bool:
    """Is `me` the holder `owner`?  Outside virtual threads the holder is the OS thread,
    which on the stock loop also holds every lock its tasks hold: a callback on a loop's
    thread re-enters a lock that one of that loop's tasks holds across an await (waiting
    for it there would stop the loop, and the task with it, for ever)."""
    if owner is None:
        return False
    if owner == me:
        return True
    if isinstance(me, int) and isinstance(owner, asyncio.Task):
        # BaseEventLoop's private _thread_id; typeshed does not declare it.
        return bool(getattr(owner.get_loop(), "_thread_id", None) == me)
    return False


# What RLock._release_save() returns and _acquire_restore() takes: (count, owner).
_RLockState: TypeAlias = "tuple[int, _Owner | None]"


class RLock:
    """A reentrant lock with `threading.RLock`'s interface.  Its owner is the
    virtual thread (the task) when taken in one, else the OS thread."""

    __slots__ = ("__weakref__", "_block", "_count", "_owner")

    def __init__(self) -> None:
        self._block = Lock()
        self._owner: _Owner | None = None
        self._count = 0

    def _reenter(self, me: _Owner) -> bool:
        if _same_owner(self._owner, me):
            self._count += 1
            return True
        return False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = _owner()
        if self._reenter(me):
            return True
        if self._block.acquire(blocking, timeout):
            self._owner = me
            self._count = 1
            return True
        return False

    async def async_acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = _owner(async_caller=True)
        if self._reenter(me):
            return True
        if await self._block.async_acquire(blocking, timeout):
            self._owner = me
            self._count = 1
            return True
        return False

    def _release_as(self, me: _Owner) -> None:
        if not _same_owner(self._owner, me):
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if self._count == 0:
            self._owner = None
            self._block.release()

    def release(self) -> None:
        self._release_as(_owner())

    def locked(self) -> bool:
        return self._block.locked()

    # The protocol threading.Condition uses on its lock (and so does ours).
    def _is_owned(self, async_caller: bool = False) -> bool:
        return _same_owner(self._owner, _owner(async_caller))

    def _release_save(self) -> _RLockState:
        state = (self._count, self._owner)
        self._count = 0
        self._owner = None
        self._block.release()
        return state

    def _acquire_restore(self, state: _RLockState) -> None:
        self._block.acquire()
        self._count, self._owner = state

    async def _async_acquire_restore(self, state: _RLockState) -> None:
        await self._block.async_acquire()
        self._count, self._owner = state

    def _at_fork_reinit(self) -> None:
        self._block._at_fork_reinit()
        self._owner = None
        self._count = 0

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> None:
        await self.async_acquire()
        return None

    async def __aexit__(self, *exc: object) -> None:
        self._release_as(_owner(async_caller=True))

    def __repr__(self) -> str:
        owner = self._owner
        state = "locked" if owner is not None else "unlocked"
        return (
            f"<{state} {type(self).__module__}.{type(self).__qualname__} object "
            f"owner={owner!r} count={self._count} at {id(self):#x}>"
        )


# --------------------------------------------------------------------------
# Condition


class Condition:
    """A condition variable with `threading.Condition`'s interface, over a
    greenhub Lock or RLock (an RLock by default).  Callers may mix virtual
    threads, OS threads and coroutines (``async with cond: await
    cond.async_wait()``)."""

    def __init__(self, lock: Lock | RLock | None = None) -> None:
        if lock is None:
            lock = RLock()
        self._lock = lock
        self.acquire = lock.acquire
        self.release = lock.release
        self._mutex = _allocate_lock()
        self._waiters = _WaitQueue()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        return self._lock.__exit__(*exc)

    async def __aenter__(self) -> None:
        return await self._lock.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        return await self._lock.__aexit__(*exc)

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__}({self._lock!r}, {len(self._waiters)})>"

    # Lock protocol: an RLock knows its owner; a Lock is "owned" when held.
    def _is_owned(self, async_caller: bool = False) -> bool:
        lock = self._lock
        if isinstance(lock, RLock):
            return lock._is_owned(async_caller)
        if hasattr(lock, "_is_owned"):  # a lock of threading's
            return bool(lock._is_owned())
        if lock.acquire(False):
            lock.release()
            return False
        return True

    def _release_save(self) -> Any:
        lock = self._lock
        return lock._release_save() if hasattr(lock, "_release_save") else lock.release()

    def _acquire_restore(self, state: Any) -> None:
        lock = self._lock
        if hasattr(lock, "_acquire_restore"):
            lock._acquire_restore(state)
        else:
            lock.acquire()

    async def _async_acquire_restore(self, state: Any) -> None:
        lock = self._lock
        if isinstance(lock, RLock):
            await lock._async_acquire_restore(state)
        else:
            await lock.async_acquire()

    def wait(self, timeout: float | None = None) -> bool:
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        seconds = _cond_timeout(timeout)
        saved: list[Any] = []

        def release() -> None:
            self._mutex.release()
            saved.append(self._release_save())

        mutex = self._mutex
        mutex.acquire()
        try:
            woken = self._waiters.wait_released(mutex, seconds, release)
        finally:
            mutex.release()
            self._reacquire(saved)
        return woken

    def _reacquire(self, saved: list[Any]) -> None:
        # Retake the user's lock even if the task is cancelled meanwhile, as
        # threading and asyncio do: wait()'s caller always holds it on return.
        if not saved:
            return
        cancelled = None
        while True:
            try:
                self._acquire_restore(saved[0])
                break
            except (_CancelledError, _TimeoutInterrupt) as exc:
                cancelled = exc
        if cancelled is not None:
            raise cancelled

    async def async_wait(self, timeout: float | None = None) -> bool:
        if not self._is_owned(async_caller=True):
            raise RuntimeError("cannot wait on un-acquired lock")
        seconds = _cond_timeout(timeout)
        mutex = self._mutex
        mutex.acquire()
        w = self._waiters._add(True)
        mutex.release()
        saved = self._release_save()
        raised = True
        try:
            await _block_async(w, seconds)
            raised = False
        finally:
            mutex.acquire()
            try:
                woken = self._waiters._finish(w, raised)
            finally:
                mutex.release()
            cancelled = None
            while True:
                try:
                    await self._async_acquire_restore(saved)
                    break
                except _CancelledError as exc:
                    cancelled = exc
            if cancelled is not None:
                raise cancelled
        return woken

    def wait_for(self, predicate: Callable[[], _T], timeout: float | None = None) -> _T:
        # threading's order: the predicate, then `_time() + timeout`, then
        # Condition.wait(timeout) with the timeout as given.
        result = predicate()
        if not result:
            deadline = _deadline(timeout)
            _cond_timeout(timeout)
        while not result:
            remaining = _cond_remaining(deadline)
            if remaining == 0.0:
                break
            self.wait(remaining)
            result = predicate()
        return result

    async def async_wait_for(self, predicate: Callable[[], _T], timeout: float | None = None) -> _T:
        result = predicate()
        if not result:
            deadline = _deadline(timeout)
            _cond_timeout(timeout)
        while not result:
            remaining = _cond_remaining(deadline)
            if remaining == 0.0:
                break
            await self.async_wait(remaining)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        if not (self._is_owned() or self._is_owned(async_caller=True)):
            raise RuntimeError("cannot notify on un-acquired lock")
        mutex = self._mutex
        mutex.acquire()
        try:
            self._waiters.notify(n)
        finally:
            mutex.release()

    def notify_all(self) -> None:
        self.notify(len(self._waiters))


# --------------------------------------------------------------------------
# Event, Semaphore, BoundedSemaphore


class Event:
    """An event flag with `threading.Event`'s interface."""

    def __init__(self) -> None:
        self._mutex = _allocate_lock()
        self._waiters = _WaitQueue()
        self._flag = False

    def __repr__(self) -> str:
        state = "set" if self._flag else "unset"
        return f"<{type(self).__module__}.{type(self).__qualname__} at {id(self):#x}: {state}>"

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        mutex = self._mutex
        mutex.acquire()
        try:
            self._flag = True
            self._waiters.notify_all()
        finally:
            mutex.release()

    def clear(self) -> None:
        mutex = self._mutex
        mutex.acquire()
        self._flag = False
        mutex.release()

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        seconds = _cond_timeout(timeout)
        mutex = self._mutex
        mutex.acquire()
        try:
            if not self._flag and seconds != 0.0:
                self._waiters.wait(mutex, seconds)
            return self._flag
        finally:
            mutex.release()

    async def async_wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        seconds = _cond_timeout(timeout)
        mutex = self._mutex
        mutex.acquire()
        try:
            if not self._flag and seconds != 0.0:
                await self._waiters.async_wait(mutex, seconds)
            return self._flag
        finally:
            mutex.release()

    def _at_fork_reinit(self) -> None:
        self._mutex = _allocate_lock()
        self._waiters = _WaitQueue()


def _semaphore_check(blocking: bool, timeout: float | None) -> None:
    """Semaphore.acquire()'s one check of its arguments before it has to
    wait; threading looks at the timeout only then (_first_deadline)."""
    if not blocking and timeout is not None:
        raise ValueError("can't specify timeout for non-blocking acquire")


def _first_deadline(timeout: float | None) -> float | None:
    """The deadline of a wait that is about to start, as threading computes
    it (`_time() + timeout`, then Condition.wait(timeout) as given)."""
    deadline = _deadline(timeout)
    _cond_timeout(timeout)
    return deadline


class Semaphore:
    """A counting semaphore with `threading.Semaphore`'s interface."""

    def __init__(self, value: int = 1) -> None:
        if value < 0:
            raise ValueError("semaphore initial value must be >= 0")
        self._mutex = _allocate_lock()
        self._waiters = _WaitQueue()
        self._value = value

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} at {id(self):#x}: value={self._value}>"

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        _semaphore_check(blocking, timeout)
        started = False
        deadline = None
        mutex = self._mutex
        mutex.acquire()
        try:
            while self._value == 0:
                if not blocking:
                    return False
                if not started:
                    deadline = _first_deadline(timeout)
                    started = True
                remaining = _cond_remaining(deadline)
                if remaining == 0.0:
                    return False
                self._waiters.wait(mutex, remaining)
            self._value -= 1
            return True
        finally:
            mutex.release()

    async def async_acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        _semaphore_check(blocking, timeout)
        started = False
        deadline = None
        mutex = self._mutex
        mutex.acquire()
        try:
            while self._value == 0:
                if not blocking:
                    return False
                if not started:
                    deadline = _first_deadline(timeout)
                    started = True
                remaining = _cond_remaining(deadline)
                if remaining == 0.0:
                    return False
                await self._waiters.async_wait(mutex, remaining)
            self._value -= 1
            return True
        finally:
            mutex.release()

    def _check_release(self, n: int) -> None:
        pass

    def release(self, n: int = 1) -> None:
        if n < 1:
            raise ValueError("n must be one or more")
        mutex = self._mutex
        mutex.acquire()
        try:
            self._check_release(n)
            self._value += n
            self._waiters.notify(n)
        finally:
            mutex.release()

    __enter__ = acquire

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> None:
        await self.async_acquire()
        return None

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class BoundedSemaphore(Semaphore):
    """A semaphore that refuses to be released above its initial value."""

    def __init__(self, value: int = 1) -> None:
        super().__init__(value)
        self._initial_value = value

    def __repr__(self) -> str:
        return (
            f"<{type(self).__module__}.{type(self).__qualname__} at {id(self):#x}: "
            f"value={self._value}/{self._initial_value}>"
        )

    def _check_release(self, n: int) -> None:
        if self._value + n > self._initial_value:
            raise ValueError("Semaphore released too many times")


# --------------------------------------------------------------------------
# Queues


class Queue(Generic[_T]):
    """A FIFO queue with `queue.Queue`'s interface (raising the standard
    `queue.Empty` and `queue.Full`), plus ``async_put``, ``async_get`` and
    ``async_join`` for async code.  Generic in the type of its items, as
    `queue.Queue` is for type checkers: ``greenhub.Queue[int]()``."""

    # As in typeshed's queue.Queue: subclasses keep other containers there.
    queue: Any

    def __init__(self, maxsize: int = 0) -> None:
        self.maxsize = maxsize
        self._init(maxsize)
        self.mutex = _allocate_lock()
        self._not_empty = _WaitQueue()
        self._not_full = _WaitQueue()
        self._all_done = _WaitQueue()
        self.unfinished_tasks = 0

    # Storage; subclasses override these four, as with queue.Queue.
    def _init(self, maxsize: int) -> None:
        self.queue = deque()

    def _qsize(self) -> int:
        return len(self.queue)

    def _put(self, item: _T) -> None:
        self.queue.append(item)

    def _get(self) -> _T:
        return self.queue.popleft()  # type: ignore[no-any-return] # the container is Any

    def qsize(self) -> int:
        with self.mutex:
            return self._qsize()

    def empty(self) -> bool:
        with self.mutex:
            return not self._qsize()

    def full(self) -> bool:
        with self.mutex:
            return 0 < self.maxsize <= self._qsize()

    def _put_done(self, item: _T) -> None:
        self._put(item)
        self.unfinished_tasks += 1
        self._not_empty.notify()

    def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        seconds = _queue_timeout(block, timeout)
        mutex = self.mutex
        mutex.acquire()
        try:
            if self.maxsize > 0:
                deadline = _deadline(seconds)
                while self._qsize() >= self.maxsize:
                    remaining = _cond_remaining(deadline)
                    if remaining == 0.0:
                        raise _queue.Full
                    self._not_full.wait(mutex, remaining)
            self._put_done(item)
        finally:
            mutex.release()

    async def async_put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        seconds = _queue_timeout(block, timeout)
        mutex = self.mutex
        mutex.acquire()
        try:
            if self.maxsize > 0:
                deadline = _deadline(seconds)
                while self._qsize() >= self.maxsize:
                    remaining = _cond_remaining(deadline)
                    if remaining == 0.0:
                        raise _queue.Full
                    await self._not_full.async_wait(mutex, remaining)
            self._put_done(item)
        finally:
            mutex.release()

    def _get_done(self) -> _T:
        item = self._get()
        self._not_full.notify()
        return item

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        seconds = _queue_timeout(block, timeout)
        mutex = self.mutex
        mutex.acquire()
        try:
            deadline = _deadline(seconds)
            while not self._qsize():
                remaining = _cond_remaining(deadline)
                if remaining == 0.0:
                    raise _queue.Empty
                self._not_empty.wait(mutex, remaining)
            return self._get_done()
        finally:
            mutex.release()

    async def async_get(self, block: bool = True, timeout: float | None = None) -> _T:
        seconds = _queue_timeout(block, timeout)
        mutex = self.mutex
        mutex.acquire()
        try:
            deadline = _deadline(seconds)
            while not self._qsize():
                remaining = _cond_remaining(deadline)
                if remaining == 0.0:
                    raise _queue.Empty
                await self._not_empty.async_wait(mutex, remaining)
            return self._get_done()
        finally:
            mutex.release()

    def put_nowait(self, item: _T) -> None:
        return self.put(item, block=False)

    def get_nowait(self) -> _T:
        return self.get(block=False)

    def task_done(self) -> None:
        mutex = self.mutex
        mutex.acquire()
        try:
            unfinished = self.unfinished_tasks - 1
            if unfinished <= 0:
                if unfinished < 0:
                    raise ValueError("task_done() called too many times")
                self._all_done.notify_all()
            self.unfinished_tasks = unfinished
        finally:
            mutex.release()

    def join(self) -> None:
        mutex = self.mutex
        mutex.acquire()
        try:
            while self.unfinished_tasks:
                self._all_done.wait(mutex, None)
        finally:
            mutex.release()

    async def async_join(self) -> None:
        mutex = self.mutex
        mutex.acquire()
        try:
            while self.unfinished_tasks:
                await self._all_done.async_wait(mutex, None)
        finally:
            mutex.release()


def _queue_timeout(block: bool, timeout: float | None) -> float | None:
    if not block:
        return 0.0
    if timeout is None:
        return None
    if timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
    return timeout  # as given: queue computes `time() + timeout` with it


class LifoQueue(Queue[_T]):
    """A last-in, first-out queue (`queue.LifoQueue`'s interface)."""

    queue: list[_T]

    def _init(self, maxsize: int) -> None:
        self.queue = []

    def _get(self) -> _T:
        return self.queue.pop()


class _SupportsLessThan(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


_OrderedT = TypeVar("_OrderedT", bound=_SupportsLessThan)


class PriorityQueue(Queue[_OrderedT]):
    """A queue that hands out the lowest entry first (`queue.PriorityQueue`'s
    interface: entries are usually ``(priority, data)`` tuples)."""

    queue: list[_OrderedT]

    def _init(self, maxsize: int) -> None:
        self.queue = []

    def _put(self, item: _OrderedT) -> None:
        heapq.heappush(self.queue, item)

    def _get(self) -> _OrderedT:
        return heapq.heappop(self.queue)
