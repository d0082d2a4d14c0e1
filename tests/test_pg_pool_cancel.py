"""Cancelled virtual threads never cost psycopg_pool a connection (greenhub.contrib.psycopg).

psycopg_pool's sync ConnectionPool was written for threads, which nothing interrupts:
its clean-ups catch ``Exception``, and a virtual thread's cancellation is
``CancelledError``.  Each test cancels a virtual thread at one precise place in the
pool's code - waiting for a connection, just handed one, in a query, giving one back,
waiting for the pool's lock, in ``wait()`` and ``check()`` - and then checks that the
pool is whole: every connection it counts is idle in it, nobody waits, none was lost or
replaced, and they all serve again.  Cancellations are made when the stats or the task
say the place is reached (events and polling of state, not sleeps).  The last test does
the same under load, a few rounds in a row.
"""

import asyncio
import threading
import time

import psycopg
import pytest
import support

import greenhub
import greenhub.contrib.psycopg as ghpg
from greenhub._task import green_coro

pytestmark = pytest.mark.timeout(60)

ghpg.install()  # before any pool is made: pools take their primitives when made

SIZE = 2


@pytest.fixture
def run(greenhub_leak_check):
    def run(coro_fn):
        loop = support.new_loop("greenhub")
        try:
            return loop.run_until_complete(coro_fn())
        finally:
            loop.close()

    return run


@pytest.fixture
def pool(pg_dsn):
    from psycopg_pool import ConnectionPool

    p = ConnectionPool(pg_dsn, min_size=SIZE, max_size=SIZE, open=False, timeout=10)
    p.open(wait=True)  # outside any loop: the pool's worker threads connect
    try:
        yield p
    finally:
        p.close()


async def until(predicate, what="condition", timeout=10.0):
    """Polls state another party changes (the pool's worker threads, other tasks)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def parked(task):
    while not green_coro(task).parked:
        await asyncio.sleep(0)


def waiting(pool):
    return pool.get_stats().get("requests_waiting", 0)


async def assert_whole(pool, connections_made=SIZE):
    """Every connection the pool counts is back and idle, nobody waits, none was lost
    or replaced (`connections_made` in all), and SIZE clients are served at once."""

    def back():
        s = pool.get_stats()
        return s["pool_available"] == s["pool_size"] == pool._nconns == SIZE and not waiting(pool)

    await until(back, f"the pool whole again: {pool.get_stats()}")
    stats = pool.get_stats()
    assert stats.get("connections_lost", 0) == 0 and stats.get("returns_bad", 0) == 0, stats
    assert stats["connections_num"] == connections_made, stats
    for conn in pool._pool:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    def hold_all():
        conns = [pool.getconn(timeout=5) for _ in range(SIZE)]  # PoolTimeout if one is lost
        try:
            return [c.execute("select 1").fetchone()[0] for c in conns]
        finally:
            for c in conns:
                pool.putconn(c)

    assert await greenhub.spawn(hold_all) == [1] * SIZE


def use(pool, sql="select 1"):
    with pool.connection() as conn:
        return conn.execute(sql).fetchone()[0]


@pytest.mark.parametrize("when", ["queued", "handed"])
def test_cancelled_waiter_loses_no_connection(pool, run, when):
    """The reported bug: a virtual thread cancelled while it waits for a connection
    ("queued"), or right after one was handed to it, before it ran ("handed").  Before
    the fix it stayed queued and the next connection returned was handed to it and
    lost - or the one handed to it was."""

    async def main():
        held = [pool.getconn() for _ in range(SIZE)]
        waiters = [greenhub.spawn(use, pool) for _ in range(3)]
        await until(lambda: waiting(pool) == 3, "3 clients waiting")
        if when == "handed":
            pool.putconn(held.pop())  # handed to waiters[0], which has not run yet
            waiters[0].cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiters[0]
            # It gave the connection back to the pool, which handed it on: served.
            assert await asyncio.wait_for(waiters[1], 10) == 1
            rest = waiters[2:]
        else:
            rest = waiters
        for w in rest:
            w.cancel()
        for w in rest:
            with pytest.raises(asyncio.CancelledError):
                await w
        for conn in held:
            pool.putconn(conn)
        await assert_whole(pool)

    run(main)


def test_cancelled_in_a_query(pool, run):
    """Cancelled while a query runs: the query is cancelled on the server, the
    connection rolled back and returned, not replaced."""

    async def main():
        t = greenhub.spawn(use, pool, "select pg_sleep(30)")
        await until(lambda: pool.get_stats()["pool_available"] == SIZE - 1, "a query running")
        await parked(t)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await assert_whole(pool)

    run(main)


def test_cancelled_while_giving_a_connection_back(pool, run):
    """putconn() rolls back an unfinished transaction, a wait on the server; a
    cancellation landing there used to lose the connection.  Now the connection is
    rolled back and returned, and the task is cancelled at its next wait."""
    log = []

    def body():
        conn = pool.getconn()
        conn.execute("select 1")  # a transaction is open: putconn() rolls it back
        asyncio.current_task().cancel()  # lands at putconn()'s first wait
        pool.putconn(conn)
        log.append("given back")
        greenhub.sleep(3600)

    async def main():
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(greenhub.spawn(body), 20)
        await assert_whole(pool)

    run(main)
    assert log == ["given back"]


def test_cancelled_while_a_connection_that_failed_its_check_goes_back(pg_dsn, run):
    """getconn() gives back a connection that failed the pool's ``check`` (rolling back
    what the check left open) and tries another.  A cancellation landing in that
    rollback used to make the pool discard the connection and swallow the
    cancellation; now the connection goes back whole and getconn() raises
    CancelledError at its next wait."""
    from psycopg_pool import ConnectionPool

    checks = []

    def check(conn):
        checks.append(conn)
        if len(checks) == 1:
            conn.execute("select 1")  # leaves a transaction open
            asyncio.current_task().cancel()  # lands at the rollback that follows
            raise psycopg.OperationalError("check failed")

    p = ConnectionPool(pg_dsn, min_size=SIZE, max_size=SIZE, open=False, check=check, timeout=10)
    p.open(wait=True)
    log = []

    def body():
        p.getconn()
        log.append("got a connection")

    async def main():
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(greenhub.spawn(body), 20)
        assert len(checks) == 1  # cancelled at the back-off, before a second attempt
        await assert_whole(p)

    try:
        run(main)
    finally:
        p.close()
    assert log == []


def test_cancelled_while_waiting_for_the_pools_lock(pool, run):
    """putconn() waits for the pool's lock, held by another thread (the pool's own
    workers take it): cancelled there, the connection used to be dropped."""
    log = []
    holding, release = threading.Event(), threading.Event()

    def other_thread():
        with pool._lock:
            holding.set()
            release.wait(20)

    def body(conn):
        pool.putconn(conn)
        log.append("given back")
        greenhub.sleep(3600)

    async def main():
        conn = pool.getconn()
        thread = threading.Thread(target=other_thread)
        thread.start()
        await asyncio.to_thread(holding.wait, 20)
        t = greenhub.spawn(body, conn)
        await parked(t)  # waiting for the lock
        t.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(t, 20)
        await asyncio.to_thread(thread.join)
        await assert_whole(pool)

    run(main)
    assert log == ["given back"]


def test_null_pool_cancelled_while_giving_a_connection_back(pg_dsn, run):
    """A NullConnectionPool decides under its lock, in putconn(), whether to close the
    connection: cancelled while waiting for that lock, the connection was neither closed
    nor counted out, and the pool (max_size=1) could never lend one again."""
    from psycopg_pool import NullConnectionPool

    p = NullConnectionPool(pg_dsn, max_size=1, open=False, timeout=5)
    p.open()
    holding, release = threading.Event(), threading.Event()

    def other_thread():
        with p._lock:
            holding.set()
            release.wait(20)

    def body(conn):
        p.putconn(conn)
        greenhub.sleep(3600)

    def use_again():
        with p.connection() as conn:
            return conn.execute("select 1").fetchone()[0]

    async def main():
        conn = await greenhub.spawn(p.getconn)
        thread = threading.Thread(target=other_thread)
        thread.start()
        await asyncio.to_thread(holding.wait, 20)
        t = greenhub.spawn(body, conn)
        await parked(t)  # waiting for the pool's lock
        t.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(t, 20)
        await asyncio.to_thread(thread.join)
        assert conn.closed and p._nconns == 0
        return await greenhub.spawn(use_again)

    try:
        assert run(main) == 1
    finally:
        p.close()


def test_handover_cut_by_a_cancel_at_the_clients_lock(pool, run, monkeypatch):
    """The pool's worker thread hands a connection to a waiting client under the
    client's lock; the client, arriving at that lock, is cancelled.  Had the cancel
    interrupted the client's acquire, the client would have checked for a connection
    before the worker stored it, given up, and the worker's hand-over would have
    succeeded to nobody.  Taking the pool's locks defers the cancellation instead: the
    client takes the connection, and is cancelled at its next wait, and gives the
    connection back.  The worker is held inside set() so the timing is exact."""
    from psycopg_pool import pool as pool_module

    in_set, finish_set = threading.Event(), threading.Event()
    client_queued = greenhub.Event()
    enter_wait = greenhub.Event()
    original_set = pool_module.WaitingClient.set
    original_wait = pool_module.WaitingClient.wait

    def slow_set(self, conn):
        with self._cond:  # what set() does first; then it is held there
            in_set.set()
            finish_set.wait(20)
            return original_set(self, conn)

    clients = []

    def gated_wait(self, timeout):
        clients.append(self)
        client_queued.set()
        enter_wait.wait()  # until the worker holds this client's lock
        return original_wait(self, timeout)

    monkeypatch.setattr(pool_module.WaitingClient, "set", slow_set)
    monkeypatch.setattr(pool_module.WaitingClient, "wait", gated_wait)

    def client_body():
        with pool.connection():
            greenhub.sleep(3600)  # where the deferred cancellation lands

    async def main():
        held = [pool.getconn() for _ in range(SIZE)]
        client = greenhub.spawn(client_body)
        await client_queued.async_wait()
        # A worker thread returns a connection and hands it to the client (as the pool's
        # ReturnConnection and AddConnection tasks do), stopping inside set().
        worker = threading.Thread(target=pool._return_connection, args=(held.pop(), False))
        worker.start()
        await asyncio.to_thread(in_set.wait, 20)
        enter_wait.set()
        lock = clients[0]._cond._lock  # the client's lock, which the worker holds
        await until(lambda: len(lock._block._waiters) == 1, "the client waiting for its lock")
        client.cancel()
        await asyncio.sleep(0)
        finish_set.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(client, 20)
        await asyncio.to_thread(worker.join)
        monkeypatch.undo()
        for conn in held:
            pool.putconn(conn)
        await assert_whole(pool)

    run(main)


def test_cancelled_wait_leaves_the_pool_waitable(pg_dsn, run):
    """pool.wait() (for the pool to fill) cancelled: psycopg_pool left its "pool full"
    event set, and every later wait() failed an assertion."""
    from psycopg_pool import ConnectionPool

    gate = threading.Event()
    p = ConnectionPool(pg_dsn, min_size=1, max_size=1, open=False, configure=lambda c: gate.wait(20))
    p.open()  # the worker connects, then waits in configure: the pool is not full

    async def main():
        t = greenhub.spawn(p.wait, 20)
        await parked(t)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        gate.set()
        await asyncio.wait_for(greenhub.spawn(p.wait, 20), 30)
        return p.get_stats()["pool_available"]

    try:
        assert run(main) == 1
    finally:
        gate.set()
        p.close()


def test_cancelled_check_puts_every_connection_back(pool, run):
    """check() takes every idle connection out and probes each with a query; cancelled
    there, the rest were lost, or (had the pool caught the cancellation) the probed one
    replaced and the cancellation swallowed.  Now check() finishes, then the task is
    cancelled."""
    log = []

    def body():
        asyncio.current_task().cancel()  # lands at the first probe
        pool.check()
        log.append("checked")
        greenhub.sleep(3600)

    async def main():
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(greenhub.spawn(body), 20)
        await assert_whole(pool)

    run(main)
    assert log == ["checked"]


def test_client_condition_defers_cancellation_at_its_lock(run):
    """The Condition install() gives psycopg_pool for its queued clients: taking its
    lock defers a cancellation to the next wait (the hand-over above relies on it), and
    its wait() stays interruptible."""
    from psycopg_pool import pool as pool_module

    assert pool_module.CLIENT_EXCEPTIONS == (Exception, asyncio.CancelledError)
    cond = pool_module.Condition()
    log = []
    holding, release = threading.Event(), threading.Event()

    def other_thread():
        with cond:
            holding.set()
            release.wait(20)

    def body():
        with cond:
            log.append("locked")
            try:
                cond.wait(3600)
            except asyncio.CancelledError:
                log.append("wait interrupted")
                raise

    async def main():
        thread = threading.Thread(target=other_thread)
        thread.start()
        await asyncio.to_thread(holding.wait, 20)
        t = greenhub.spawn(body)
        await parked(t)  # waiting for the lock the thread holds
        t.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(t, 20)
        await asyncio.to_thread(thread.join)

    run(main)
    assert log == ["locked", "wait interrupted"]
    assert not cond._lock.locked()


def test_rounds_of_cancelled_clients_under_load(pool, run):
    """Many more virtual threads than connections: SIZE in a query, the rest waiting;
    all cancelled at once; three rounds.  The pool stays whole, then serves them all."""
    n = 8 * SIZE

    async def main():
        for _ in range(3):
            tasks = [greenhub.spawn(use, pool, "select pg_sleep(30)") for _ in range(n)]
            await until(
                lambda: pool.get_stats()["pool_available"] == 0 and waiting(pool) == n - SIZE,
                "the pool saturated",
            )
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results), results
            await assert_whole(pool)
        return await asyncio.gather(*(greenhub.spawn(use, pool) for _ in range(n)))

    assert run(main) == [1] * (8 * SIZE)
