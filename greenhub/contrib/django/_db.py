"""Django's database connections, one per virtual thread.

Django keeps its connections in ``connections._connections``, an asgiref ``Local``
created with ``thread_critical=True``: per OS thread in sync code, per context in
async code.  On a greenhub loop every request is a task on the loop's one OS thread,
and a task's context is a copy of its creator's, so neither rule gives a virtual thread
a connection of its own: a connection set before tasks were created is shared by all of
them, and one set inside a task is copied into every task it creates.

``install()`` replaces two things on the ``connections`` object (and nothing on its
class, so ``uninstall()`` simply puts them back):

- ``_connections`` becomes ``_Connections``: inside a virtual thread
  (``greenhub.in_vthread()``) it keeps ``{alias: DatabaseWrapper}`` per *task*; anywhere
  else it hands every access to the original ``Local``, so OS threads, scripts and
  management commands see Django's own behaviour.
- ``create_connection`` (called by ``connections[alias]`` when the task has none yet)
  takes a wrapper from a per-thread pool of idle ones before it makes a new one.

When the task ends (a done callback), its wrappers go back to the pool.  A wrapper
goes back with its database connection open only if Django would have kept it open
at the end of a request - not past its maximum age, no errors since the last
commit, autocommit as configured, no transaction open on the server - otherwise the
connection is closed first (the wrapper itself is reused: it reconnects on first
use).  The maximum age is ``CONN_MAX_AGE``, except that with ``reuse`` on (the
default) ``CONN_MAX_AGE=0`` - Django's default, "close at the end of each request" -
keeps the connection for up to ``POOLED_MAX_AGE`` seconds instead, as Django's own
``pool`` option keeps its connections: a wrapper lent from the pool sets its
``close_at`` that way each time it connects (``_connect_pooled``, which also closes a
connection whose set-up a cancellation cut short).  A wrapper left inside ``atomic()``
(its task died mid-transaction) is closed and dropped.  So connections are reused across requests exactly as Django's
persistent connections are reused across requests on one OS thread, and a task that
ends never leaks one.  The pool holds as many connections as virtual threads once
used the database at the same time; ``max_connections`` caps the number lent out at
once (a virtual thread that asks for one beyond the cap waits cooperatively until
another task returns one).

The pool and the lent wrappers are per OS thread (each thread running a greenhub
loop has its own), because Django refuses to use a wrapper in another thread than the
one that created it.
"""

import asyncio
import threading
import time
from types import MethodType
from typing import Any

from ... import _core
from ..._cancel import defer_cancellation
from ...sync import BoundedSemaphore

_in_vthread = _core.in_vthread
_current_task = asyncio.current_task
_monotonic = time.monotonic

# Per OS thread: .pools ({alias: _Pool}), .tasks ({task: {alias: wrapper}}),
# .closing (True while a done callback closes a connection; see allow_unsafe()).
_local = threading.local()

# Set by install(): the cap on wrappers lent out at once per alias and thread (None:
# no cap), whether CONN_MAX_AGE=0 connections are kept for reuse, and the connection
# handler's original create_connection.
_max_connections = None
_reuse = True
_saved: Any = None

# How long a connection is reused when CONN_MAX_AGE is 0 and reuse is on: psycopg_pool's
# default max_lifetime, so that a long-running server still renews its connections.
POOLED_MAX_AGE = 3600.0


def _state():
    try:
        return _local.pools, _local.tasks
    except AttributeError:
        _local.pools = {}
        _local.tasks = {}
        _local.closing = False
        return _local.pools, _local.tasks


def closing():
    """True while this module closes a connection outside any virtual thread (a
    task's done callback): Django's async-unsafe check must let that close() run."""
    return getattr(_local, "closing", False)


class _Pool:
    """The idle wrappers of one alias in one OS thread, and those lent to tasks."""

    def __init__(self, limit):
        self.idle = []  # DatabaseWrappers no task holds; owned; reused last-in first-out
        self.lent = {}  # id(wrapper) -> wrapper held by a task; owned
        self.slots = None
        self.set_limit(limit)

    def set_limit(self, limit):
        if self.lent:
            raise RuntimeError("max_connections can change only while no connection is lent")
        # Cooperative in virtual threads, so a task waiting for a slot suspends only
        # itself; released from done callbacks on the loop's thread.
        self.slots = None if limit is None else BoundedSemaphore(limit)

    def take(self, alias):
        if self.slots is not None:
            self.slots.acquire()
        try:
            if self.idle:
                conn = self.idle.pop()
                if conn.connection is not None and _expired(conn):
                    _close(conn)
                # Django clears this at the start of every request for the
                # connections it keeps: the first use then runs the
                # CONN_HEALTH_CHECKS check (when enabled) on a reused connection.
                conn.health_check_done = False
            else:
                conn = _saved(alias)
                conn.connect = MethodType(_connect_pooled, conn)
        except BaseException:
            if self.slots is not None:
                self.slots.release()
            raise
        self.lent[id(conn)] = conn
        return conn

    def give_back(self, conn):
        if self.lent.pop(id(conn), None) is None:
            return  # not ours (set with connections[alias] = ...): left as Django would
        try:
            if conn.in_atomic_block or conn.closed_in_transaction:
                _close(conn)  # its state is that of an unfinished atomic(): drop it
            else:
                if conn.connection is not None and not _reusable(conn):
                    _close(conn)
                self.idle.append(conn)
        finally:
            if self.slots is not None:
                self.slots.release()

    def close_idle(self):
        idle, self.idle = self.idle, []
        for conn in idle:
            _close(conn)


def _connect_pooled(conn):
    """``DatabaseWrapper.connect`` of a pooled wrapper: Django's, then the pool's
    maximum age when reuse is on and CONN_MAX_AGE is 0 (Django has just set close_at to
    now, which would close the connection at the end of the request).  Not with
    Django's own pool (``OPTIONS["pool"]``): there closing is how the connection goes
    back to that pool.

    Django's connect() stores the new database connection before it sets it up (the
    session time zone and role, the connection_created signal).  A virtual thread
    cancelled in between - at one of those queries - would leave the wrapper holding a
    connection Django never finished, which greenhub's pool would lend to the next
    task; so an interrupted connect() closes it first (handing it back to Django's pool
    if it came from there), and the wrapper connects afresh on next use."""
    try:
        type(conn).connect(conn)
    except BaseException:
        if conn.connection is not None:
            with defer_cancellation():
                _close(conn)
        raise
    settings = conn.settings_dict
    if _reuse and settings["CONN_MAX_AGE"] == 0 and not settings.get("OPTIONS", {}).get("pool"):
        conn.close_at = _monotonic() + POOLED_MAX_AGE


def _expired(conn):
    return conn.close_at is not None and _monotonic() >= conn.close_at


def _reusable(conn):
    """Whether an open connection may serve the next task as it is.  No I/O: this
    runs in done callbacks, where nothing may wait."""
    if conn.errors_occurred or _expired(conn):
        return False
    if conn.autocommit != conn.settings_dict["AUTOCOMMIT"]:
        return False
    info = getattr(conn.connection, "info", None)  # psycopg 3's ConnectionInfo
    if info is not None:
        if getattr(conn.connection, "closed", False):
            return False
        if int(info.transaction_status) != 0:  # psycopg.pq.TransactionStatus.IDLE
            return False
    return True


def _close(conn):
    prev = closing()
    _local.closing = True
    try:
        conn.close()
    except Exception:
        pass  # a broken connection: dropping the wrapper's reference is all that is left
    finally:
        _local.closing = prev


def _pool(alias):
    pools, _ = _state()
    pool = pools.get(alias)
    if pool is None:
        pool = pools[alias] = _Pool(_max_connections)
    return pool


def _task_done(task):
    _, tasks = _state()
    conns = tasks.pop(task, None)
    if conns:
        for alias, conn in conns.items():
            _pool(alias).give_back(conn)


def _task_conns(create):
    """The current task's {alias: wrapper} (None if it has none and not `create`)."""
    _, tasks = _state()
    task = _current_task()
    conns = tasks.get(task)
    if conns is None and create:
        assert task is not None  # (in a virtual thread: its task)
        conns = tasks[task] = {}
        task.add_done_callback(_task_done)
    return conns


class _Connections:
    """Stands in for ``ConnectionHandler._connections``: per task in virtual threads,
    the original ``Local`` elsewhere."""

    __slots__ = ("_outside",)

    def __init__(self, outside):
        object.__setattr__(self, "_outside", outside)

    def __getattr__(self, alias):
        if _in_vthread():
            conns = _task_conns(False)
            if conns is not None and alias in conns:
                return conns[alias]
            raise AttributeError(alias)
        return getattr(self._outside, alias)

    def __setattr__(self, alias, conn):
        if _in_vthread():
            conns = _task_conns(True)
            old = conns.get(alias)
            conns[alias] = conn
            if old is not None and old is not conn:
                _pool(alias).give_back(old)
        else:
            setattr(self._outside, alias, conn)

    def __delattr__(self, alias):
        if _in_vthread():
            conns = _task_conns(False)
            if conns is None or alias not in conns:
                raise AttributeError(alias)
            _pool(alias).give_back(conns.pop(alias))
        else:
            delattr(self._outside, alias)


def _create_connection(alias):
    if _in_vthread():
        return _pool(alias).take(alias)
    return _saved(alias)


def install(connections, max_connections, reuse=True):
    """Give each virtual thread its own connections (see the module docstring)."""
    global _saved, _max_connections, _reuse
    if max_connections is not None and (
        not isinstance(max_connections, int) or isinstance(max_connections, bool)
    ):
        raise TypeError(f"max_connections must be an int or None, not {max_connections!r}")
    if max_connections is not None and max_connections < 1:
        raise ValueError("max_connections must be at least 1 (or None)")
    if not isinstance(reuse, bool):
        raise TypeError(f"reuse_connections must be True or False, not {reuse!r}")
    _reuse = reuse
    if max_connections != _max_connections:
        pools, _ = _state()
        for pool in pools.values():
            pool.set_limit(max_connections)
        _max_connections = max_connections
    if _saved is not None:
        return
    _saved = connections.create_connection
    connections._connections = _Connections(connections._connections)
    connections.create_connection = _create_connection


def uninstall(connections):
    global _saved
    if _saved is None:
        return
    close_idle()
    connections._connections = connections._connections._outside
    del connections.create_connection  # the instance attribute: the method shows again
    _saved = None


def close_idle():
    """Close the idle pooled connections of this OS thread (those lent to running
    tasks are closed when they come back, if Django's rules say so)."""
    pools, _ = _state()
    for pool in pools.values():
        pool.close_idle()


def stats():
    """{alias: {"idle": n, "in_use": n}} for this OS thread's pool."""
    pools, _ = _state()
    return {alias: {"idle": len(p.idle), "in_use": len(p.lent)} for alias, p in pools.items()}
