"""psycopg's sync API in virtual threads, against a real PostgreSQL (greenhub.contrib.psycopg).

Inside a virtual thread a sync ``psycopg.Connection`` suspends only its task while it
waits on the server; everywhere else it is psycopg's own blocking wait.  Overlap is shown
without timing: queries meet at a barrier on the server (``pg_barrier``), which opens only
once all of them are running at the same time, and "the loop kept running" by a gate that
a coroutine on the loop must open while the virtual threads wait.
"""

import asyncio
import os
import threading
import time

import psycopg
import pytest
import support
from psycopg import waiting

import greenhub
import greenhub.contrib.psycopg as ghpg

pytestmark = pytest.mark.timeout(60)

ghpg.install()

N = 20


@pytest.fixture
def run(greenhub_leak_check):
    """run(coro_fn): run coro_fn() on a fresh greenhub loop, close the loop."""

    def run(coro_fn):
        loop = support.new_loop("greenhub")
        try:
            return loop.run_until_complete(coro_fn())
        finally:
            loop.close()

    return run


@pytest.fixture
def counted_waits(monkeypatch):
    """Counts calls of psycopg's original wait functions (the blocking ones)."""
    calls = {"wait": 0, "wait_conn": 0}
    for name in calls:
        orig = ghpg._saved[name]

        def counting(*args, _orig=orig, _name=name, **kwargs):
            calls[_name] += 1
            return _orig(*args, **kwargs)

        monkeypatch.setitem(ghpg._saved, name, counting)
    return calls


def sleepy_query(dsn, i, seconds=0):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("select pg_sleep(%s), %s::int * 2", (seconds, i)).fetchone()[1]


def query_at(dsn, i, barrier):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(f"select {barrier.call}, %s::int * 2", (i,)).fetchone()[1]


async def join(dsn, barrier):
    """A session of the test's own, on the loop, arrives at `barrier` (used as a gate,
    it is the last party the virtual threads' queries wait for)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(barrier.sql)


async def until(predicate, what):
    """Poll (on the loop) until predicate(); a hang detector bounds the wait."""
    deadline = time.monotonic() + support.hang_timeout(30)
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def test_install_replaces_the_c_wait_too():
    assert ghpg.installed()
    assert waiting.wait is ghpg.wait and waiting.wait_conn is ghpg.wait_conn
    if getattr(waiting, "wait_c", None) is not None and "PSYCOPG_WAIT_FUNC" not in os.environ:
        # psycopg picked its C-accelerated wait; install() must have replaced it.
        assert ghpg._saved["wait"] is waiting.wait_c
    ghpg.install()  # idempotent
    assert ghpg._saved["wait"] is not ghpg.wait


def test_uninstall_restores_psycopg():
    original = ghpg._saved["wait"]
    ghpg.uninstall()
    try:
        assert not ghpg.installed()
        assert waiting.wait is original and psycopg.Connection.wait is not ghpg._connection_wait
        assert psycopg.connection.Lock is threading.Lock
    finally:
        ghpg.install()
    assert waiting.wait is ghpg.wait and psycopg.Connection.wait is ghpg._connection_wait


def test_concurrent_queries_overlap(pg_dsn, run, counted_waits, pg_barrier):
    # The N queries meet at a barrier on the server: they ran at the same time (with a
    # blocking wait the first would wait there alone until the barrier gave up).
    barrier = pg_barrier(N)
    before = dict(counted_waits)  # making the barrier: psycopg's own waits, outside a loop

    async def main():
        tasks = [greenhub.spawn(query_at, pg_dsn, i, barrier) for i in range(N)]
        return await asyncio.gather(*tasks)

    assert run(main) == [2 * i for i in range(N)]
    # Every wait, connecting included, went through the cooperative path.
    assert counted_waits == before


def test_connection_pool_waits_cooperatively(pg_dsn, run, pg_barrier):
    """More virtual threads than a psycopg_pool.ConnectionPool has connections: those
    that find none wait for one without blocking the loop (threading's Condition would
    block it, and with it the holders' queries: a deadlock until the pool's timeout).

    The two holders' first queries wait on the server at a gate that a coroutine on the
    loop opens only after it has seen the four others waiting in the pool: the loop ran
    while they waited, and the holders' queries overlapped."""
    from psycopg_pool import ConnectionPool

    n, size = 6, 2
    pool = ConnectionPool(
        pg_dsn, min_size=1, max_size=size, open=False, timeout=support.hang_timeout(40)
    )
    pool.open(wait=True)  # outside any loop: the pool's own threads connect
    gate = pg_barrier(size + 1)
    querying = support.Overlap()

    def use(i):
        with pool.connection() as conn:
            with querying:
                conn.execute(gate.sql)  # the first `size` wait for the coroutine below
            return conn.execute("select %s::int + 1", (i,)).fetchone()[0]

    async def main():
        tasks = [greenhub.spawn(use, i) for i in range(n)]
        await until(
            lambda: pool.get_stats().get("requests_waiting") == n - size,
            f"{n - size} virtual threads waiting for a connection",
        )
        await join(pg_dsn, gate)
        return await asyncio.gather(*tasks)

    try:
        results = run(main)
    finally:
        pool.close()
    assert results == [i + 1 for i in range(n)]
    assert querying.peak == size  # never more than the pool's connections; those together
    stats = pool.get_stats()
    assert stats.get("requests_waiting", 0) == 0


def test_pool_check_back_off_lets_the_loop_run(pg_dsn, run):
    """getconn() retries after a connection fails the pool's ``check``, sleeping
    between attempts (about 1 s the second time): that sleep suspends only the virtual
    thread (it was time.sleep, which stopped the loop).  A coroutine waiting for the
    second failure must run before the third check."""
    from psycopg_pool import ConnectionPool

    checks = []
    failed_twice = greenhub.Event()
    ran_meanwhile = []

    def check(conn):
        checks.append(bool(ran_meanwhile))
        if len(checks) <= 2:
            if len(checks) == 2:
                failed_twice.set()
            raise psycopg.OperationalError("check failed")

    pool = ConnectionPool(pg_dsn, min_size=1, max_size=1, open=False, check=check, timeout=20)
    pool.open(wait=True)

    async def main():
        async def other():
            await failed_twice.async_wait()
            ran_meanwhile.append(True)

        other_task = asyncio.ensure_future(other())
        conn = await greenhub.spawn(pool.getconn)
        pool.putconn(conn)
        await other_task

    try:
        run(main)
    finally:
        pool.close()
    assert checks == [False, False, True]


def test_uninstall_restores_psycopg_pools_primitives():
    import threading

    from psycopg_pool import pool as pool_module

    def patched():
        return (
            pool_module.Condition,
            pool_module.Lock,
            pool_module.Event,
            pool_module.sleep,
            pool_module.CLIENT_EXCEPTIONS,
            *(pool_module.ConnectionPool.__dict__[m] for m in ghpg._POOL_METHODS),
        )

    ours = (
        ghpg._ClientCondition,
        greenhub.RLock,
        greenhub.Event,
        greenhub.sleep,
        (Exception, asyncio.CancelledError),
        *ghpg._POOL_METHODS.values(),
    )
    assert patched() == ours
    assert issubclass(ghpg._ClientCondition, greenhub.Condition)
    assert issubclass(ghpg._ClientLock, greenhub.RLock)
    ghpg.uninstall()
    try:
        originals = patched()
        assert originals[:5] == (
            threading.Condition,
            threading.RLock,
            threading.Event,
            time.sleep,
            Exception,
        )
        assert not set(originals[5:]) & set(ghpg._POOL_METHODS.values())
    finally:
        ghpg.install()
    assert patched() == ours


def test_same_code_outside_vthreads_uses_psycopgs_wait(pg_dsn, counted_waits):
    # A program with no loop, an OS thread, a coroutine on the stock loop and a plain
    # greenhub loop callback all block as psycopg always does.
    assert sleepy_query(pg_dsn, 1, 0) == 2
    out = []
    t = threading.Thread(target=lambda: out.append(sleepy_query(pg_dsn, 2, 0)))
    t.start()
    t.join(30)
    assert out == [4]

    async def coro():
        return sleepy_query(pg_dsn, 3, 0)

    stock = support.new_loop("asyncio")
    try:
        assert stock.run_until_complete(coro()) == 6
    finally:
        stock.close()
    assert counted_waits["wait"] >= 3 and counted_waits["wait_conn"] >= 3


def test_loop_callback_is_not_a_vthread(pg_dsn, run, counted_waits):
    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_soon(lambda: fut.set_result(sleepy_query(pg_dsn, 4, 0)))
        return await fut

    assert run(main) == 8
    assert counted_waits["wait"] >= 1


def test_other_tasks_run_while_a_query_waits(pg_dsn, run, pg_barrier):
    # The virtual thread's query returns only once a coroutine on the loop has joined it
    # at a gate on the server: the loop ran while the query waited.
    gate = pg_barrier(2)

    async def main():
        task = greenhub.spawn(query_at, pg_dsn, 21, gate)
        await join(pg_dsn, gate)
        return await task

    assert run(main) == 42


def test_a_query_larger_than_the_socket_buffers_waits_for_writing(pg_dsn, run, monkeypatch):
    # psycopg flushes a big query in pieces, waiting for "readable or writable" (RW)
    # between them: both of the loop's watchers armed at once, the ready direction
    # passed back to psycopg's generator.
    seen = []

    def recording(fd, state, timeout, _wait=ghpg._c_wait_fd):
        ready = _wait(fd, state, timeout)
        seen.append((int(state), ready))
        return ready

    monkeypatch.setattr(ghpg, "_c_wait_fd", recording)
    big = "x" * 32_000_000

    def query():
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            return conn.execute("select length(%s)", (big,)).fetchone()[0]

    async def main():
        return await greenhub.spawn(query)

    assert run(main) == len(big)
    assert (waiting.WAIT_RW, waiting.READY_W) in seen, seen
    assert all(ready in (0, 1, 2) for _, ready in seen), seen


def test_errors_are_psycopgs(pg_dsn, run):
    def bad_sql():
        with psycopg.connect(pg_dsn) as conn:
            with pytest.raises(psycopg.errors.UndefinedTable):
                conn.execute("select * from no_such_table")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            conn.rollback()
            with pytest.raises(psycopg.errors.SyntaxError):
                conn.execute("selec 1")
            conn.rollback()
            return conn.execute("select 41 + 1").fetchone()[0]

    def refused():
        # A port nobody listens on: the connection attempt fails as psycopg reports it.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg_dsn.rsplit(":", 1)[0] + ":1/x", connect_timeout=5)
        return "refused"

    async def main():
        return await greenhub.spawn(bad_sql), await greenhub.spawn(refused)

    assert run(main) == (42, "refused")


def test_server_closing_the_connection(pg_dsn, run):
    async def main():
        admin = await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)
        try:
            victim = psycopg.connect(pg_dsn, autocommit=True)
            pid = victim.info.backend_pid
            task = greenhub.spawn(lambda: victim.execute("select pg_sleep(3600)"))
            await asyncio.sleep(0.3)
            await admin.execute("select pg_terminate_backend(%s)", (pid,))
            # The wait ends with the connection, not with the query's hour.
            with pytest.raises(psycopg.OperationalError):
                await task
            assert victim.closed or victim.broken
            victim.close()
        finally:
            await admin.close()

    run(main)


def test_cancelling_the_task_cancels_the_query(pg_dsn, run):
    conn = psycopg.connect(pg_dsn, autocommit=True)
    pid = conn.info.backend_pid

    async def main():
        # Without the cancel reaching the server, the clean-up would wait out the hour.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(greenhub.spawn(conn.execute, "select pg_sleep(3600)"), 0.3)
        # The connection was cleaned up, not left mid-query: usable, and the server runs
        # nothing for it.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert await greenhub.spawn(lambda: conn.execute("select 7").fetchone()[0]) == 7
        with psycopg.connect(pg_dsn, autocommit=True) as other:
            state = other.execute(
                "select state from pg_stat_activity where pid = %s", (pid,)
            ).fetchone()[0]
        assert state == "idle"

    try:
        run(main)
    finally:
        conn.close()


def test_cancel_at_the_implicit_begin(pg_dsn, run):
    """Outside autocommit psycopg first sends BEGIN, then the query, from one generator.
    A task cancelled at BEGIN's wait had its cancel request answered by BEGIN, and the
    clean-up, driving the generator on, then sent the query, which ran in full; after
    5 s the connection was closed.  The request is now repeated until the query itself
    is cancelled: the connection stays open, its transaction failed."""
    conn = psycopg.connect(pg_dsn)
    pid = conn.info.backend_pid

    def body():
        asyncio.current_task().cancel()  # lands at the first wait: BEGIN's
        conn.execute("select pg_sleep(30)")

    def rollback_and_ask():
        conn.rollback()
        return conn.execute("select pg_backend_pid()").fetchone()[0]

    async def main():
        for _ in range(3):
            with pytest.raises(asyncio.CancelledError):
                await greenhub.spawn(body)
            assert not conn.closed
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            assert await greenhub.spawn(rollback_and_ask) == pid

    try:
        run(main)
    finally:
        conn.close()


def test_cancel_inside_a_transaction_leaves_it_failed(pg_dsn, run):
    conn = psycopg.connect(pg_dsn)

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(greenhub.spawn(conn.execute, "select pg_sleep(30)"), 0.3)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR

        def recover():
            conn.rollback()
            return conn.execute("select 1").fetchone()[0]

        return await greenhub.spawn(recover)

    try:
        assert run(main) == 1
    finally:
        conn.close()


def test_one_connection_shared_by_vthreads(pg_dsn, run):
    # psycopg serialises a connection's users with conn.lock; after install() that is a
    # greenhub.Lock, so vthreads queue for it instead of blocking the loop (deadlock).
    conn = psycopg.connect(pg_dsn, autocommit=True)
    assert isinstance(conn.lock, greenhub.Lock)

    def use(i):
        return conn.execute("select pg_sleep(0.05), %s::int", (i,)).fetchone()[1]

    async def main():
        return await asyncio.gather(*(greenhub.spawn(use, i) for i in range(8)))

    try:
        assert run(main) == list(range(8))
    finally:
        conn.close()


def test_transactions_copy_and_server_cursor(pg_dsn, run):
    def work():
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("create table if not exists t_copy (id int, name text)")
            conn.execute("truncate t_copy")
            with conn.cursor().copy("copy t_copy (id, name) from stdin") as cp:
                for i in range(1000):
                    cp.write_row((i, f"n{i}"))
            with conn.transaction():
                conn.execute("update t_copy set name = 'x' where id < 10")
            try:
                with conn.transaction():
                    conn.execute("delete from t_copy")
                    raise RuntimeError("roll back")
            except RuntimeError:
                pass
            rows = []
            with conn.cursor().copy(
                "copy (select id, name from t_copy order by id) to stdout"
            ) as cp:
                rows.extend(cp.rows())
            with conn.cursor(name="srv") as cur:
                cur.itersize = 100
                cur.execute("select id from t_copy order by id")
                total = sum(r[0] for r in cur)
            with conn.pipeline():
                for i in range(5):
                    conn.execute("insert into t_copy values (%s, 'p')", (10_000 + i,))
            n = conn.execute("select count(*) from t_copy").fetchone()[0]
            conn.commit()
            return len(rows), rows[0], rows[20], total, n

    async def main():
        return await greenhub.spawn(work)

    assert run(main) == (1000, ("0", "x"), ("20", "n20"), sum(range(1000)), 1005)


def test_notifies_with_timeout(pg_dsn, run):
    timed_out = greenhub.Event()

    def listen():
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("listen chan")
            t0 = time.monotonic()
            assert list(conn.notifies(timeout=0.2)) == []  # the timeout path
            waited = time.monotonic() - t0
            timed_out.set()
            got = [
                n.payload
                for n in conn.notifies(timeout=support.hang_timeout(30), stop_after=1)
            ]
            return got, waited

    def notify():
        timed_out.wait()  # after the timeout path: the notification ends the second wait
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("notify chan, 'hello'")

    async def main():
        return await asyncio.gather(greenhub.spawn(listen), greenhub.spawn(notify))

    (got, waited), _ = run(main)
    assert got == ["hello"]
    assert waited > 0.15  # not (much) early: psycopg's own deadline, on time.monotonic()


def test_connection_closed_by_another_vthread(pg_dsn, run):
    conn = psycopg.connect(pg_dsn, autocommit=True)

    def closer():
        greenhub.sleep(0.3)
        conn.close()

    async def main():
        victim = greenhub.spawn(conn.execute, "select pg_sleep(3600)")
        await greenhub.spawn(closer)
        # The wait ends with the connection, not with the query's hour.
        with pytest.raises(psycopg.OperationalError):
            await victim

    run(main)
