"""``greenhub.timeout()`` and ``greenhub.timeout_at()``: ``asyncio.timeout()`` for sync code.

Two mechanisms, chosen when the block is entered:

- **In a virtual thread** (``_core.in_vthread()``) the block is asyncio's own design: a
  timer of the running loop cancels the virtual thread's task at the deadline, so
  whatever the code is waiting on - ``greenhub.await_()``, greenhub's blocking calls,
  green sockets, monkey-patched calls, all of which wait through the task - is
  interrupted by ``CancelledError``, and leaving the block turns that cancellation into
  the builtin ``TimeoutError``.  The task's cancellation count (``cancelling()`` /
  ``uncancel()``) tells a cancellation this block made from one that came from
  elsewhere, exactly as in ``asyncio.timeouts``: a timeout that fires while the task
  was also cancelled by someone else lets the ``CancelledError`` through.  The timer is
  cancelled on the way out, so none is left behind.

- **In an OS thread with no event loop running** there is no task to cancel and nothing
  that could interrupt arbitrary blocking code.  The block's deadline is pushed on a
  per-thread stack that greenhub's own blocking primitives consult (``greenhub.sleep``,
  ``Lock``, ``RLock``, ``Condition``, ``Event``, ``Semaphore``, the queues: see
  :func:`os_acquire`): they wait no longer than the earliest deadline and, when it cuts
  a wait short, raise :class:`TimeoutInterrupt` (a ``BaseException``, the stand-in for
  the ``CancelledError`` of the first mechanism), which the block that owns the deadline
  turns into ``TimeoutError``.  ``greenhub.await_()`` honours it too (on this thread's
  own loop, or on the loop that owns a worker thread's call).  Anything else -
  ``time.sleep()``, a green socket or a plain socket, C code - runs to its end; the
  block then exits normally, as ``asyncio.timeout()`` does when nothing awaited.

Entered in async code - written directly in a coroutine (on greenhub a task's coroutine
could be interrupted, but not on another loop), or anywhere in a thread that runs an
event loop outside a virtual thread (a loop callback) - the block raises
``RuntimeError`` that points at ``asyncio.timeout()``.
"""

from __future__ import annotations

import _thread
import asyncio
import inspect
import sys
import threading
import time
from types import TracebackType

from . import _core
from ._private import _get_running_loop

__all__ = ["Timeout", "TimeoutInterrupt", "timeout", "timeout_at"]

_in_vthread = _core.in_vthread
_monotonic = time.monotonic  # what loop.time() reads on greenhub's and the stock loop
# Captured at import, so that greenhub.monkey's patching never changes them (as in sync.py).
_os_sleep = time.sleep
_allocate_lock = _thread.allocate_lock
_CancelledError = asyncio.CancelledError
_CANCEL_SUBCLASSES = sys.version_info >= (3, 13)  # 3.13's __aexit__ rules (see _exit_vthread)


_ASYNC_CODE = inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR | inspect.CO_ITERABLE_COROUTINE
_IN_ASYNC_CODE = (
    "greenhub.timeout() is for sync code in a virtual thread or in an OS thread with no "
    "event loop running; in async code use 'async with asyncio.timeout(...)'"
)


class _State:
    """A block's states (asyncio.timeouts' names, which repr() and errors show)."""

    CREATED = "created"
    ENTERED = "active"
    EXPIRING = "expiring"
    EXPIRED = "expired"
    EXITED = "finished"


class TimeoutInterrupt(BaseException):
    """Raised out of a greenhub blocking call in an OS thread when the deadline of an
    enclosing ``greenhub.timeout()`` block cut the wait short; that block turns it into
    ``TimeoutError``.  A ``BaseException``, as ``CancelledError`` is, so that
    ``except Exception`` between the wait and the block does not swallow it."""

    def __init__(self, owner: Timeout) -> None:
        super().__init__(f"the deadline of {owner!r} passed")
        self.owner = owner


class _Stack(threading.local):
    def __init__(self) -> None:
        self.blocks: list[Timeout] = []  # OS-thread blocks entered in this thread


_local = _Stack()


class Timeout:
    """A sync ``with`` block limited in time; made by :func:`timeout` and
    :func:`timeout_at`.  The methods are those of ``asyncio.Timeout``."""

    __slots__ = ("_cancelling", "_handle", "_loop", "_state", "_task", "_when")

    def __init__(self, when: float | None) -> None:
        """`when`: a deadline on the clock of ``loop.time()`` (``time.monotonic()``),
        or None for no deadline.  Usually made by ``greenhub.timeout()`` or
        ``greenhub.timeout_at()``."""
        self._state = _State.CREATED
        self._when = when
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._task: asyncio.Task[object] | None = None  # None: the OS-thread mechanism
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cancelling = 0

    def when(self) -> float | None:
        """The deadline (``loop.time()``'s clock), or None."""
        return self._when

    def reschedule(self, when: float | None) -> None:
        """Move the deadline to `when` (None: no deadline); only while the block runs."""
        if self._state != _State.ENTERED:
            if self._state == _State.CREATED:
                raise RuntimeError("Timeout has not been entered")
            raise RuntimeError(f"Cannot change state of {self._state} Timeout")
        self._when = when
        if self._task is None:
            return  # OS thread: the waits read the deadline each time
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if when is not None:
            loop = self._loop
            assert loop is not None
            if when <= loop.time():
                self._handle = loop.call_soon(self._on_timeout)
            else:
                self._handle = loop.call_at(when, self._on_timeout)

    def expired(self) -> bool:
        """Whether the deadline interrupted the block (so far)."""
        return self._state in (_State.EXPIRING, _State.EXPIRED)

    def __repr__(self) -> str:
        info = ""
        if self._state == _State.ENTERED:
            when = round(self._when, 3) if self._when is not None else None
            info = f" when={when}"
        return f"<greenhub.Timeout [{self._state}]{info}>"

    # -- entering ------------------------------------------------------------

    def __enter__(self) -> Timeout:
        if self._state != _State.CREATED:
            raise RuntimeError("Timeout has already been entered")
        frame = inspect.currentframe()
        caller = frame.f_back if frame is not None else None
        if caller is not None and caller.f_code.co_flags & _ASYNC_CODE:
            # Written in async code: on greenhub every task step can wait like a virtual
            # thread, so the block would work here, but not on another loop.
            raise RuntimeError(_IN_ASYNC_CODE)
        if _in_vthread():
            task = asyncio.current_task()
            assert task is not None  # a virtual thread is a task step
            self._task = task
            self._loop = asyncio.get_running_loop()
            self._cancelling = task.cancelling()
            self._state = _State.ENTERED
            self.reschedule(self._when)
        elif _get_running_loop() is not None:
            raise RuntimeError(_IN_ASYNC_CODE)
        else:
            self._state = _State.ENTERED
            _local.blocks.append(self)
        return self

    def _on_timeout(self) -> None:
        # Loop callback (virtual-thread mechanism): asyncio's own.
        assert self._task is not None and self._state == _State.ENTERED
        self._task.cancel()
        self._state = _State.EXPIRING
        self._handle = None

    # -- leaving -------------------------------------------------------------

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if self._state not in (_State.ENTERED, _State.EXPIRING):
            raise RuntimeError(f"Cannot exit a {self._state} Timeout")
        if self._task is None:
            self._exit_thread(exc_val)
        else:
            self._exit_vthread(exc_type, exc_val)

    def _exit_vthread(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None
    ) -> None:
        assert self._task is not None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._state == _State.ENTERED:
            self._state = _State.EXITED
            return
        self._state = _State.EXPIRED
        # The rules of asyncio.Timeout.__aexit__ on the running Python version.
        if self._task.uncancel() > self._cancelling or exc_type is None:
            return  # a cancellation of the task's own is pending: it goes through
        if _CANCEL_SUBCLASSES:
            if issubclass(exc_type, _CancelledError):
                raise TimeoutError from exc_val
            if exc_val is not None:
                _insert_timeout_error(exc_val, _CancelledError)
                if isinstance(exc_val, BaseExceptionGroup):
                    for exc in exc_val.exceptions:
                        _insert_timeout_error(exc, _CancelledError)
        elif exc_type is _CancelledError:
            raise TimeoutError from exc_val

    def _exit_thread(self, exc_val: BaseException | None) -> None:
        blocks = _local.blocks
        if self in blocks:
            blocks.remove(self)
        if self._state == _State.ENTERED:
            self._state = _State.EXITED
            return
        self._state = _State.EXPIRED
        if isinstance(exc_val, TimeoutInterrupt) and exc_val.owner is self:
            raise TimeoutError from exc_val
        if exc_val is not None and _CANCEL_SUBCLASSES:
            _insert_timeout_error(exc_val, TimeoutInterrupt)


def _insert_timeout_error(exc: BaseException, interrupt: type[BaseException]) -> None:
    """As 3.13's asyncio: an exception raised while the interruption was being handled
    gets a TimeoutError between it and the interruption in its __context__ chain."""
    while exc.__context__ is not None:
        if isinstance(exc.__context__, interrupt):
            te = TimeoutError()
            te.__context__ = te.__cause__ = exc.__context__
            exc.__context__ = te
            break
        exc = exc.__context__


def timeout(delay: float | None) -> Timeout:
    """``with greenhub.timeout(seconds):`` - the sync twin of ``asyncio.timeout()``.

    In a virtual thread the block is interrupted at the deadline wherever it waits
    (``await_``, greenhub's blocking calls, green sockets, patched calls) and
    ``TimeoutError`` is raised out of the block.  In an OS thread with no event loop,
    greenhub's own blocking primitives honour the deadline; other blocking code is not
    interrupted.  None means no deadline (it can be set later with ``reschedule()``)."""
    if delay is None:
        return Timeout(None)
    loop = _get_running_loop()
    now = loop.time() if loop is not None and _in_vthread() else _monotonic()
    return Timeout(now + delay)


def timeout_at(when: float | None) -> Timeout:
    """As :func:`timeout`, with an absolute deadline on ``loop.time()``'s clock
    (``time.monotonic()``, which is that clock on greenhub's and the stock loop)."""
    return Timeout(when)


# --------------------------------------------------------------------------
# the OS-thread mechanism: what greenhub.sync's blocking calls use


def innermost() -> Timeout | None:
    """The active greenhub.timeout() block of this OS thread with the earliest
    deadline, if any (what greenhub.await_() with no loop running honours)."""
    return _limit()


def expire(block: Timeout) -> TimeoutInterrupt:
    """Mark `block`'s deadline as passed: the interruption to raise out of the wait."""
    return _expire(block)


def _limit() -> Timeout | None:
    """The active OS-thread block with the earliest deadline, if any."""
    blocks = _local.blocks
    if not blocks:
        return None
    earliest: Timeout | None = None
    for block in blocks:
        if block._state == _State.ENTERED and block._when is not None:
            if earliest is None or block._when < earliest._when:  # type: ignore[operator]
                earliest = block
    return earliest


def _expire(block: Timeout) -> TimeoutInterrupt:
    block._state = _State.EXPIRING
    return TimeoutInterrupt(block)


def os_acquire(lock: _thread.LockType, seconds: float | None) -> bool:
    """``lock.acquire(True, seconds)`` (None: no limit) in an OS thread, cut short by
    the deadline of an enclosing greenhub.timeout() block (TimeoutInterrupt)."""
    block = _limit()
    if block is None:
        return lock.acquire(True, -1 if seconds is None else seconds)
    if lock.acquire(False):
        return True
    when = block._when
    assert when is not None
    left = when - _monotonic()
    if left <= 0:
        raise _expire(block)
    if seconds is not None and seconds <= left:
        return lock.acquire(True, seconds)
    if lock.acquire(True, left):
        return True
    raise _expire(block)


def os_sleep(seconds: float) -> None:
    """``time.sleep(seconds)`` (already checked) within the deadline of an enclosing
    block: a raw lock nobody releases is what it waits on."""
    block = _limit()
    if block is None:
        _os_sleep(seconds)
        return
    lock = _allocate_lock()
    lock.acquire()
    os_acquire(lock, seconds)
