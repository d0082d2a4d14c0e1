"""psycopg 3's sync API, cooperative in virtual threads.

    import greenhub.contrib.psycopg
    greenhub.contrib.psycopg.install()        # once, before connections are made

    def handler(dsn):                          # sync code in a virtual thread
        with psycopg.connect(dsn) as conn:     # connecting suspends only this task
            return conn.execute("select pg_sleep(0.3)").fetchall()   # so does the query

After ``install()``, every wait of a sync ``psycopg.Connection`` made inside a virtual
thread (``greenhub.in_vthread()``) suspends only that task: ``_core._wait_fd``, in C,
arms the loop's watchers on the libpq socket and a timer, suspends the task until one
fires and removes them.  The same call anywhere else - an OS thread, a program with no
loop, a stock asyncio loop - is psycopg's own wait, unchanged, whichever psycopg picked
(the C ``wait_c`` included).

The hook.  Every wait of psycopg's sync connections goes through two functions of
``psycopg.waiting``, looked up as module attributes at each call: ``wait`` (queries,
commits, COPY, pipelines, server cursors, ``notifies()``; all reached through
``Connection.wait``) and ``wait_conn`` (connecting, ``cancel_safe()``).  psycopg binds
``wait`` to its C-accelerated ``wait_c`` when it can - a C loop around ``poll()`` that a
greenlet cannot interrupt - so patching the select module, as gevent does, is not
enough; replacing the two attributes is, because psycopg never calls ``wait_c`` except
through them.  ``install()`` replaces them with functions that decide per call, and
keeps the originals for every caller outside virtual threads.

More things a shared process needs:

- ``psycopg_pool.ConnectionPool`` hands connections to waiting clients through
  ``threading`` primitives; ``install()`` gives its module greenhub's (see
  ``_POOL_PRIMITIVES``), so a virtual thread waiting for a connection suspends only
  its task.  The sync pool was written for threads, which nothing interrupts, and its
  clean-ups catch ``Exception`` only: a virtual thread cancelled while it waited for a
  connection stayed queued, and the next connection returned was handed to it and
  lost.  ``install()`` makes the pool cancellation-safe (see "The pool and
  cancellation" below).

- ``Connection.lock`` (psycopg serialises the users of one connection with it) is a
  ``threading.Lock``.  A virtual thread that blocked on it while another held it across
  a cooperative wait would block the loop, and so the holder: a deadlock.  Connections
  made after ``install()`` get a ``greenhub.Lock`` instead, which behaves as
  ``threading.Lock`` outside virtual threads and waits cooperatively inside.
- Cancellation.  psycopg's sync wait cleans up after ``KeyboardInterrupt`` (it asks the
  server to cancel the query and reads the reply, so the connection is usable again), but
  not after ``asyncio.CancelledError``, which a virtual thread gets when its task is
  cancelled (``task.cancel()``, ``asyncio.timeout()``).  ``install()`` wraps
  ``Connection.wait`` to do the same for it: a query cancelled while it runs is cancelled
  on the server (``cancel_safe()``), its ``QueryCanceled`` reply is consumed, and the
  ``CancelledError`` propagates.  The connection is then idle (autocommit) or in a failed
  transaction that must be rolled back - as after psycopg's own async cancellation.  The
  request is repeated while no reply comes (one may miss: cancelled at the BEGIN psycopg
  sends before a query, the query follows it).  If the server does not answer within
  5 s, or the task is cancelled again meanwhile, the connection is closed instead.
  Either way it is never left mid-query.

The pool and cancellation (docs/guide-cancellation.md has the general rule).  A
cancellation may land in a virtual thread at any wait of the pool's code; ``install()``
makes each such place either handle it or not see it:

- Waiting for a connection must stay interruptible (the pool's timeout is 30 s).  The
  sync pool's module names the exceptions its clean-ups catch ``CLIENT_EXCEPTIONS``;
  the async pool, whose tasks get ``CancelledError``, catches ``(Exception,
  CancelledError)``.  ``install()`` gives the sync module the async pool's tuple, so
  a cancelled ``getconn()`` does what psycopg's own async pool does: the waiting
  client is marked failed (no connection is handed to it any more), a connection
  handed over just before is returned to the pool, and ``CancelledError`` propagates.
- A queued client's lock is held for a few statements at a time, by the client or
  by whoever hands it a connection (often the pool's worker thread): a cancellation
  that arrives while a virtual thread waits for it is deferred
  (``greenhub.defer_cancellation()``) to the next wait, so no hand-over is ever cut in
  half.
- Giving a connection back (``putconn()``, and ``_return_connection()``, which
  ``getconn()`` also uses: the pool's lock, the rollback of an unfinished transaction,
  the ``reset`` callback, the hand-over to a queued client) and ``check()`` run in
  deferred blocks: they finish, then the task is cancelled.  Interrupted, they dropped
  a connection the pool still counted, or swallowed the cancellation.
- ``wait()`` interrupted left the pool's "full" event set, and every later ``wait()``
  failed an assertion; the wrapper clears it.

The clean-ups that now also catch ``CancelledError`` and do not re-raise it (the
rollback in ``_reset_connection``, ``check()``'s probe) run only inside those deferred
blocks or in the pool's worker threads, where nothing is cancelled.
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable, Generator
from types import ModuleType
from typing import Any, TypeVar

from .. import _core
from .. import sync as _sync
from .._cancel import call_deferring as _call_deferring
from .._cancel import defer_cancellation as _defer_cancellation
from ..sync import Lock as _CoopLock

__all__ = ["install", "installed", "uninstall", "wait", "wait_conn"]

logger = logging.getLogger(__name__)

_in_vthread = _core.in_vthread
_c_wait_fd = _core._wait_fd
_monotonic = time.monotonic

# The server gets this long to answer a cancellation request before the connection is
# closed instead (psycopg's own Ctrl-C handling waits as long).
CANCEL_TIMEOUT = 5.0
# Without a reply after this long, the cancel request is sent again (then after twice
# as long, ...): the server ignores one that comes before it has read the query.
CANCEL_RETRY = 0.1

_RV = TypeVar("_RV")
# psycopg's wait generators: they yield what to wait for and take what became ready.
_PQGen = Generator[Any, Any, _RV]

# What install() replaced: {"wait": ..., "wait_conn": ..., ...}; None when not installed.
_saved: Any = None

# psycopg's Wait and Ready flags are selectors' EVENT_READ (1) and EVENT_WRITE (2), and
# WAIT_RW both: the masks _core._wait_fd takes and returns, so they pass through as they
# are (install() checks).
_FLAGS = {"WAIT_R": 1, "WAIT_W": 2, "WAIT_RW": 3, "READY_R": 1, "READY_W": 2}


def _errors() -> ModuleType:
    import psycopg

    return psycopg.errors


def _wait_timeout_error() -> type[Exception]:
    # psycopg >= 3.3 raises this private class from its wait functions when `timeout`
    # expires and catches it where it passed one (notifies(timeout=), connect_timeout);
    # the replacement must raise the same class for those callers to work.
    e = _errors()
    found: type[Exception] = getattr(e, "_WaitTimeout", e.OperationalError)
    return found


def _check_fd_open(fileno: int) -> None:
    try:
        os.fstat(fileno)
    except OSError as ex:
        raise _errors().OperationalError("connection socket closed") from ex


def _bad_state(state: object) -> Exception:
    error: Exception = _errors().InternalError(f"bad poll status: {state}")
    return error


def _drive(
    gen: _PQGen[_RV], fileno: Any, interval: float | None, timeout: float | None, moves: bool
) -> _RV:
    """Run a psycopg generator to completion, waiting cooperatively.  `moves`: the
    generator yields (fileno, state) pairs (connection generators, whose socket may
    change) rather than states.

    Each wait is ``_core._wait_fd(fileno, state, delay)``: it suspends this virtual
    thread until the socket is ready for `state` (a psycopg Wait: R, W or RW) or
    `delay` passes - the interval, or what is left before the deadline if that is
    sooner - and returns the psycopg Ready flags (0: nothing became ready)."""
    deadline = None if timeout is None else _monotonic() + timeout
    delay = interval or None
    try:
        if moves:
            fileno, state = next(gen)
        else:
            state = next(gen)
        while True:
            if deadline is not None:
                left = max(0.0, deadline - _monotonic())
                delay = min(interval, left) if interval else left
            try:
                ready = _c_wait_fd(fileno, state, delay)
            except ValueError:
                if state not in (1, 2, 3):  # noqa: SIM102
                    raise _bad_state(state) from None
                raise
            if ready:
                if moves:
                    fileno, state = gen.send(ready)
                else:
                    state = gen.send(ready)
            else:
                # The interval passed with nothing to read or write: a socket closed
                # under us (another thread closed the connection) never becomes ready,
                # so look, as psycopg's own waits do.  The generator is not resumed:
                # with no readiness it would only ask for the same wait again.
                _check_fd_open(fileno)
            if deadline is not None and _monotonic() >= deadline:
                raise _wait_timeout_error()("wait timeout expired")
    except StopIteration as ex:
        return ex.value
    except OSError as ex:
        raise _errors().OperationalError("connection socket closed") from ex


def wait(
    gen: _PQGen[_RV], fileno: int, interval: float | None = None, timeout: float | None = None
) -> _RV:
    """``psycopg.waiting.wait`` as installed: cooperative in a virtual thread,
    psycopg's original wait anywhere else."""
    if _in_vthread():
        return _drive(gen, fileno, interval, timeout, False)
    if timeout is None:  # psycopg 3.2's waits take no timeout
        return _saved["wait"](gen, fileno, interval=interval)
    return _saved["wait"](gen, fileno, interval=interval, timeout=timeout)


def wait_conn(gen: _PQGen[_RV], interval: float | None = None, timeout: float | None = None) -> _RV:
    """``psycopg.waiting.wait_conn`` as installed (connecting, cancel requests)."""
    if _in_vthread():
        return _drive(gen, None, interval, timeout, True)
    if timeout is None:
        return _saved["wait_conn"](gen, interval=interval)
    return _saved["wait_conn"](gen, interval=interval, timeout=timeout)


def _connection_wait(self: Any, gen: _PQGen[_RV], *args: Any, **kwargs: Any) -> _RV:
    """``psycopg.Connection.wait`` as installed: the original, plus the clean-up after a
    virtual thread's task is cancelled mid-query (see the module docstring)."""
    try:
        return _saved["Connection.wait"](self, gen, *args, **kwargs)
    except asyncio.CancelledError:
        if _in_vthread():
            _cancel_running_query(self, gen)
        raise


def _cancel_running_query(conn: Any, gen: _PQGen[Any]) -> None:
    """Cancel the query `gen` runs on the server and read its reply (see the module
    docstring).  One cancel request may miss it: outside autocommit `gen` first runs
    BEGIN and then sends the query, so a task cancelled at BEGIN's wait has BEGIN answer
    the request and the query, sent when `gen` is driven on, runs in full; and the
    server ignores a request that arrives before it has read the query.  So the request
    is sent again when no reply has come after CANCEL_RETRY seconds, then after twice
    that, and so on until CANCEL_TIMEOUT.  A repeated request is as harmless as the
    first: the backend ignores it unless a query of this connection runs."""
    import psycopg

    if conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.ACTIVE:
        return  # nothing is running (e.g. cancelled in notifies()): state is defined
    deadline = _monotonic() + CANCEL_TIMEOUT
    retry = CANCEL_RETRY
    timed_out = _wait_timeout_error()
    try:
        while True:
            conn.cancel_safe(timeout=max(0.1, deadline - _monotonic()))
            try:
                # Ends with QueryCanceled; normally only if the query ended first.
                _drive(gen, conn.pgconn.socket, 0.1, min(retry, deadline - _monotonic()), False)
                break
            except timed_out:
                if _monotonic() >= deadline:
                    raise
                retry *= 2
    except psycopg.errors.QueryCanceled:
        pass  # the expected reply: the connection is usable again
    except BaseException as ex:
        logger.warning(
            "query not cancelled cleanly after its task was cancelled (%s): closing connection",
            type(ex).__name__,
        )
        conn.pgconn.finish()
        if not isinstance(ex, Exception):
            raise  # cancelled again, or another interruption: let it through


class _ClientLock(_sync.RLock):
    """The lock of a queued client's Condition: a greenhub RLock whose blocking acquire
    defers a cancellation to the task's next wait.  psycopg_pool hands a connection to
    a queued client under this lock: the giver (often one of the pool's worker threads)
    stores the connection unless the client has failed; the client, arriving at its
    wait, takes the connection or marks itself failed.  Cancelled while it waited for
    this lock, a client gave up before the giver had stored the connection, and the
    giver then handed it to nobody.  The lock is held for a few statements at a time, so
    the deferred acquire ends soon."""

    __slots__ = ()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if blocking and super().acquire(False):
            return True  # not contended: nothing to defer
        with _defer_cancellation():
            return super().acquire(blocking, timeout)

    __enter__ = acquire


class _ClientCondition(_sync.Condition):
    """greenhub's Condition over a _ClientLock: its wait() stays interruptible (the
    pool withdraws the client then), taking its lock defers a cancellation."""

    def __init__(self, lock: _sync.Lock | _sync.RLock | None = None) -> None:
        super().__init__(_ClientLock() if lock is None else lock)


# psycopg_pool's sync ConnectionPool takes its primitives from these names of its
# ``pool`` module when it makes a pool (its ``_lock``), a queued client (a Condition it
# waits on until a connection is handed over) and its "pool full" event, and sleeps
# with ``sleep`` when a connection fails its ``check`` (time.sleep: it stopped the
# loop).  install() replaces them with greenhub's, which are the threading ones outside
# virtual threads and suspend only the task inside; the pool's own workers and
# scheduler stay OS threads (greenhub's primitives may be shared by both).  Pools made
# before install() keep threading's.  The pool's own lock is a plain RLock: a cancel
# while taking it is harmless at the start of getconn(), and everywhere a connection is
# being given back the acquire runs in a deferred block anyway (_POOL_METHODS); a
# NullConnectionPool holds it while it connects, which a deferred acquire would wait out.
_POOL_PRIMITIVES = {
    "Lock": _sync.RLock,
    "Condition": _ClientCondition,
    "Event": _sync.Event,
    "sleep": _sync.sleep,
}

# What the sync pool's clean-ups catch after install(): psycopg_pool's async pool's
# tuple (see the module docstring).
_POOL_CLIENT_EXCEPTIONS = (Exception, asyncio.CancelledError)


def _pool_putconn(self: Any, conn: Any) -> None:
    """``ConnectionPool.putconn`` as installed: the original, run to its end even if
    the task is cancelled meanwhile (the cancellation follows).  Cut short - taking the
    pool's lock, rolling back the connection's transaction - it lost the connection."""
    return _call_deferring(_saved["pool"]["putconn"], self, conn)


def _pool_return_connection(self: Any, conn: Any, from_getconn: bool) -> None:
    """``ConnectionPool._return_connection`` as installed, deferring cancellation as
    putconn() does: getconn() also gives a connection back through it, when the
    connection fails the pool's ``check``."""
    return _call_deferring(_saved["pool"]["_return_connection"], self, conn, from_getconn)


def _pool_check(self: Any) -> None:
    """``ConnectionPool.check`` as installed: the connections it took out of the pool
    all go back (or are replaced) before a cancellation is delivered."""
    return _call_deferring(_saved["pool"]["check"], self)


def _pool_wait(self: Any, timeout: float = 30.0) -> None:
    """``ConnectionPool.wait`` as installed: cancelled, it leaves no "pool full" event
    behind (psycopg_pool's own would make every later wait() fail an assertion)."""
    try:
        return _saved["pool"]["wait"](self, timeout)
    except asyncio.CancelledError:
        with _defer_cancellation(), self._lock:
            self._pool_full_event = None
        raise


_POOL_METHODS: dict[str, Callable[..., Any]] = {
    "putconn": _pool_putconn,
    "_return_connection": _pool_return_connection,
    "check": _pool_check,
    "wait": _pool_wait,
}


def _pool_module() -> ModuleType | None:
    """psycopg_pool.pool if psycopg_pool is installed and names the primitives, the
    clean-ups' exceptions and the methods install() wraps as expected."""
    try:
        import psycopg_pool
        from psycopg_pool import pool
    except ImportError:
        return None
    cls = getattr(pool, "ConnectionPool", None)
    if (
        not all(hasattr(pool, name) for name in _POOL_PRIMITIVES)
        or getattr(pool, "CLIENT_EXCEPTIONS", None) is not Exception
        or cls is None
        or not all(name in cls.__dict__ for name in _POOL_METHODS)
    ):
        logger.warning(
            "psycopg_pool %s does not name its primitives, clean-ups and methods as "
            "expected: its waits stay blocking in virtual threads, and are not safe to "
            "cancel there",
            getattr(psycopg_pool, "__version__", "?"),
        )
        return None
    return pool


def install() -> None:
    """Make psycopg's sync connections wait cooperatively in virtual threads.

    Idempotent.  Affects the whole process, but only calls made inside virtual
    threads change behaviour.  Connections made before the call keep a
    ``threading.Lock``: make them after it.  Needs psycopg >= 3.2.
    """
    global _saved
    if _saved is not None:
        return
    import psycopg
    from psycopg import connection, waiting

    flags = {name: getattr(waiting, name, None) for name in _FLAGS}
    if (
        getattr(connection, "waiting", None) is not waiting
        or not hasattr(connection, "Lock")
        or flags != _FLAGS
    ):
        raise RuntimeError(
            f"greenhub.contrib.psycopg does not support psycopg {psycopg.__version__}: "
            "psycopg.connection no longer waits through psycopg.waiting with the "
            f"selectors flags (Wait/Ready: {flags})"
        )
    saved = {
        "wait": waiting.wait,
        "wait_conn": waiting.wait_conn,
        "Connection.wait": psycopg.Connection.__dict__["wait"],
        "Lock": connection.Lock,
    }
    pool_module = _pool_module()
    if pool_module is not None:
        cls = pool_module.ConnectionPool
        saved["pool"] = {name: getattr(pool_module, name) for name in _POOL_PRIMITIVES}
        saved["pool"]["CLIENT_EXCEPTIONS"] = pool_module.CLIENT_EXCEPTIONS
        saved["pool"].update((name, cls.__dict__[name]) for name in _POOL_METHODS)
    _saved = saved
    waiting.wait = wait
    waiting.wait_conn = wait_conn
    psycopg.Connection.wait = _connection_wait  # type: ignore[method-assign]
    connection.Lock = _CoopLock
    if pool_module is not None:
        for name, coop in _POOL_PRIMITIVES.items():
            setattr(pool_module, name, coop)
        pool_module.CLIENT_EXCEPTIONS = _POOL_CLIENT_EXCEPTIONS  # type: ignore[attr-defined]
        for name, method in _POOL_METHODS.items():
            setattr(pool_module.ConnectionPool, name, method)


def uninstall() -> None:
    """Undo ``install()`` (connections made meanwhile keep their ``greenhub.Lock``)."""
    global _saved
    if _saved is None:
        return
    import psycopg
    from psycopg import connection, waiting

    waiting.wait = _saved["wait"]
    waiting.wait_conn = _saved["wait_conn"]
    psycopg.Connection.wait = _saved["Connection.wait"]  # type: ignore[method-assign]
    connection.Lock = _saved["Lock"]  # type: ignore[attr-defined]
    if "pool" in _saved:
        from psycopg_pool import pool as pool_module

        for name, original in _saved["pool"].items():
            target = pool_module.ConnectionPool if name in _POOL_METHODS else pool_module
            setattr(target, name, original)
    _saved = None


def installed() -> bool:
    """True while ``install()`` is in effect."""
    return _saved is not None
