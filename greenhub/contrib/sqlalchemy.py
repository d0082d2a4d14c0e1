"""SQLAlchemy's sync ``Engine``/``Session`` API in virtual threads.

Two ways, both with SQLAlchemy's ordinary sync API and real concurrency between
virtual threads:

1. **Over an async driver** (``postgresql+asyncpg://``, ``postgresql+psycopg_async://``):
   a sync ``create_engine()`` with an async dialect works in code run by ``run()``::

       engine = sqlalchemy.create_engine("postgresql+asyncpg://...")

       def handler():                          # sync code, e.g. a view
           with Session(engine) as s:
               return s.scalars(select(User)).all()

       await greenhub.contrib.sqlalchemy.spawn(handler)   # a virtual thread
       # or, inside a virtual thread: greenhub.contrib.sqlalchemy.run(handler)

2. **Over psycopg's sync driver** made cooperative by ``greenhub.contrib.psycopg``:
   no wrapper at all, only the pool must not block the OS thread::

       greenhub.contrib.psycopg.install()
       engine = sqlalchemy.create_engine("postgresql+psycopg://...",
                                         poolclass=greenhub.contrib.sqlalchemy.QueuePool)

Why ``run()`` is needed for async drivers.  SQLAlchemy's adaptors for async drivers
call ``sqlalchemy.util.await_()``, which accepts only a greenlet that SQLAlchemy's own
``greenlet_spawn()`` made (it checks for the ``__sqlalchemy_greenlet_provider__``
marker), and hands the awaitable to that greenlet's parent with a switch.  greenhub's
task greenlets wait differently (``greenhub.await_()``), and SQLAlchemy binds
``await_`` by name into each dialect module, so no single patch point exists that would
make every adaptor see a virtual thread.  ``run(fn)`` is the sync twin of
``greenlet_spawn``: it runs ``fn`` on a child greenlet carrying the marker and, each
time SQLAlchemy switches out with an awaitable, waits for it with ``greenhub.await_()``
- suspending only the calling task - and switches back with the result or exception.
It costs one greenlet per call and one switch pair per database wait.  Inside a
``run()`` (or inside SQLAlchemy's own ``greenlet_spawn``, e.g. ``AsyncSession.run_sync``)
it simply calls ``fn``.  With no loop running it works too: ``greenhub.await_()`` then
runs each wait on the thread's own greenhub loop.

An engine's connections belong to the loop that opened them (as with
``create_async_engine``): use one engine per loop, and ``engine.dispose()`` inside that
loop (for instance in ``run(engine.dispose)``) before it closes.
"""

import asyncio
import queue as _queue
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import greenlet as _greenlet
from sqlalchemy import pool as _sa_pool
from sqlalchemy.util import queue as _sa_queue

from .. import _core, sync
from .._vthread import spawn as _spawn

__all__ = ["QueuePool", "run", "spawn"]

_await = _core.await_
_getcurrent = _greenlet.getcurrent
_MARK = "__sqlalchemy_greenlet_provider__"

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _Provider(_greenlet.greenlet):
    """A greenlet on which sqlalchemy.util.await_() may be called."""

    __sqlalchemy_greenlet_provider__ = True


def run(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Call sync ``fn(*args, **kwargs)`` so that SQLAlchemy's async-driver adaptors
    work in it, and return its result.

    Each database wait suspends only the calling virtual thread (``greenhub.await_``);
    cancelling the task raises ``CancelledError`` inside ``fn`` at the wait.
    """
    current = _getcurrent()
    if getattr(current, _MARK, False):
        return fn(*args, **kwargs)
    child = _Provider(fn, current)
    # The child runs in the caller's contextvars Context (the task's), as SQLAlchemy's
    # greenlet_spawn does for its own.
    child.gr_context = current.gr_context
    result = child.switch(*args, **kwargs)
    while not child.dead:
        try:
            value = _await(result)
        except BaseException as exc:  # noqa: BLE001 - raised in fn, where it belongs
            result = child.throw(exc)
        else:
            result = child.switch(value)
    return result  # type: ignore[no-any-return]  # what fn returned


def spawn(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> asyncio.Task[_T]:
    """``greenhub.spawn(run, fn, *args, **kwargs)``: ``fn`` as a virtual thread in
    which SQLAlchemy's async-driver adaptors work."""
    return _spawn(run, fn, *args, **kwargs)


class _CoopQueue(_sa_queue.QueueCommon[_T]):
    """SQLAlchemy's pool queue on greenhub.Queue: a virtual thread waiting for a free
    connection suspends only its task; an OS thread blocks as with the stock queue."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize
        self.use_lifo = use_lifo
        self._q: sync.Queue[_T] = sync.LifoQueue(maxsize) if use_lifo else sync.Queue(maxsize)

    def empty(self) -> bool:
        return self._q.empty()

    def full(self) -> bool:
        return self._q.full()

    def qsize(self) -> int:
        return self._q.qsize()

    def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        try:
            self._q.put(item, block, timeout)
        except _queue.Full:
            raise _sa_queue.Full() from None

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        try:
            return self._q.get(block, timeout)
        except _queue.Empty:
            raise _sa_queue.Empty() from None


class QueuePool(_sa_pool.QueuePool):
    """``sqlalchemy.pool.QueuePool`` for sync drivers whose waits are cooperative in
    virtual threads (psycopg after ``greenhub.contrib.psycopg.install()``).

    The stock pool blocks the OS thread - and so the loop - when a virtual thread waits
    for a free connection; this one suspends only that virtual thread (and blocks an OS
    thread as before).  The same goes for the lock SQLAlchemy holds while the first
    connection initialises the dialect (a few queries): with a ``threading.Lock`` there,
    virtual threads connecting at once would deadlock.  Same arguments as
    ``QueuePool``: ``create_engine(url, poolclass=QueuePool, pool_size=..., ...)``.
    """

    _queue_class = _CoopQueue  # type: ignore[assignment]  # (generic: for any entry)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SQLAlchemy creates this mutex lazily (a threading.Lock for a sync dialect) in
        # the pool's "connect" event collection, which the engine's dialect-initialising
        # listener joins after the pool exists: giving the collection a cooperative
        # mutex now is what that listener will run under.
        for name in ("connect", "first_connect"):
            coll = getattr(self.dispatch, name).for_modify(self.dispatch)
            if getattr(coll, "_exec_once_mutex", False) is None:
                coll._exec_once_mutex = sync.Lock()
