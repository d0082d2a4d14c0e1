"""SQLAlchemy on greenhub, against a real PostgreSQL.

- SQLAlchemy's asyncio extension (``create_async_engine``, ``AsyncSession``) with asyncpg
  and with psycopg's async driver, on the stock loop and on greenhub.
- The ordinary sync ``Engine``/``Session`` API in virtual threads: over the same async
  drivers through ``greenhub.contrib.sqlalchemy.run``/``spawn``, and over psycopg's sync
  driver made cooperative by ``greenhub.contrib.psycopg`` with the cooperative
  ``QueuePool``.  Concurrent sessions meet at a barrier on the server (``pg_barrier``):
  their queries ran at the same time; nothing is timed.
"""

import asyncio
import threading
import time

import psycopg
import pytest
import sqlalchemy as sa
import support
from pg_fixtures import sqlalchemy_url
from sqlalchemy import ForeignKey, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

import greenhub
import greenhub.contrib.psycopg as ghpg
import greenhub.contrib.sqlalchemy as ghsa

pytestmark = pytest.mark.timeout(60)

ghpg.install()

ASYNC_DRIVERS = ("asyncpg", "psycopg_async")
N = 10
SLEEP_SQL = sa.text("select pg_sleep(:s), cast(:i as integer)")


def barrier_sql(barrier):
    """A query that returns :i once `barrier` (pg_fixtures.PgBarrier) opens."""
    return sa.text(f"select {barrier.call}, cast(:i as integer)")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "sa_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(unique=True)
    addresses: Mapped[list["Address"]] = relationship(back_populates="user", lazy="selectin")


class Address(Base):
    __tablename__ = "sa_addresses"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("sa_users.id"))
    email: Mapped[str]
    user: Mapped[User] = relationship(back_populates="addresses")


@pytest.fixture(scope="module")
def schema(pg_dsn):
    engine = sa.create_engine(sqlalchemy_url(pg_dsn, "psycopg"))
    Base.metadata.create_all(engine)
    engine.dispose()
    return pg_dsn


@pytest.fixture
def run(greenhub_leak_check):
    def run(coro_fn):
        loop = support.new_loop("greenhub")
        try:
            return loop.run_until_complete(asyncio.wait_for(coro_fn(), support.hang_timeout(45)))
        finally:
            loop.close()

    return run


def orm_roundtrip(session, tag):
    """Sync ORM work: insert a user with addresses, read it back through a relationship."""
    user = User(name=f"u-{tag}", addresses=[Address(email=f"{tag}-{i}@x") for i in range(3)])
    session.add(user)
    session.commit()
    session.expunge_all()
    got = session.scalars(select(User).where(User.name == f"u-{tag}")).one()
    return sorted(a.email for a in got.addresses)


def expected(tag):
    return [f"{tag}-{i}@x" for i in range(3)]


# --------------------------------------------------------------------------
# (a) the asyncio extension, on both loops


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_async_engine_orm_and_concurrency(loop, kind, schema, driver, pg_barrier):
    together = barrier_sql(pg_barrier(N))

    async def main():
        engine = create_async_engine(sqlalchemy_url(schema, driver), pool_size=N)
        try:
            async with AsyncSession(engine) as s:
                tag = f"a-{driver}-{kind}"
                s.add(User(name=f"u-{tag}", addresses=[Address(email=f"{tag}@x")]))
                await s.commit()
                got = await s.scalar(select(User).where(User.name == f"u-{tag}"))
                emails = [a.email for a in got.addresses]
                with pytest.raises(sa.exc.IntegrityError):
                    s.add(User(name=f"u-{tag}"))
                    await s.commit()
                await s.rollback()

            async def one(i):
                async with AsyncSession(engine) as s:
                    return (await s.execute(together, {"i": i})).one()[1]

            results = await asyncio.gather(*(one(i) for i in range(N)))
            return emails, tag, results
        finally:
            await engine.dispose()

    emails, tag, results = support.run(
        loop, asyncio.wait_for(main(), support.hang_timeout(45))
    )
    assert emails == [f"{tag}@x"]
    assert results == list(range(N))  # the N sessions' queries met at the barrier


# --------------------------------------------------------------------------
# (b) the sync API in virtual threads over async drivers


@pytest.mark.parametrize("driver", ASYNC_DRIVERS)
def test_sync_session_over_async_driver_in_vthreads(run, schema, driver, pg_barrier):
    engine = sa.create_engine(sqlalchemy_url(schema, driver), pool_size=N)
    together = barrier_sql(pg_barrier(N))

    def handler(i):  # plain sync SQLAlchemy code
        with Session(engine) as s:
            emails = orm_roundtrip(s, f"b-{driver}-{i}")
            value = s.execute(together, {"i": i}).one()[1]
            return emails, value

    async def main():
        results = await asyncio.gather(*(ghsa.spawn(handler, i) for i in range(N)))
        await ghsa.spawn(engine.dispose)
        return results

    # The N sessions' queries met at the barrier: they ran at the same time.
    assert run(main) == [(expected(f"b-{driver}-{i}"), i) for i in range(N)]


def test_run_inside_a_vthread_and_nested(run, schema):
    engine = sa.create_engine(sqlalchemy_url(schema, "asyncpg"))

    def inner():
        with engine.connect() as c:
            return c.execute(sa.text("select 1")).scalar()

    def outer():
        # run() nests: the inner call finds SQLAlchemy's marker and just calls.
        return ghsa.run(inner) + ghsa.run(lambda: ghsa.run(inner))

    async def main():
        value = await greenhub.spawn(ghsa.run, outer)
        await ghsa.spawn(engine.dispose)
        return value

    assert run(main) == 2


def test_sync_errors_and_cancellation_over_async_driver(run, schema):
    engine = sa.create_engine(sqlalchemy_url(schema, "asyncpg"), pool_size=2)

    def duplicate():
        with Session(engine) as s:
            s.add(User(name="dup-b"))
            s.commit()
            s.add(User(name="dup-b"))
            with pytest.raises(sa.exc.IntegrityError):
                s.commit()
            s.rollback()
            return s.scalar(select(sa.func.count()).select_from(User).where(User.name == "dup-b"))

    def slow():
        with engine.connect() as c:
            c.execute(sa.text("select pg_sleep(3600)"))

    def after():
        with engine.connect() as c:
            return c.execute(sa.text("select 3")).scalar()

    async def main():
        n = await ghsa.spawn(duplicate)
        # The cancel reaches the server: waiting out the query would take an hour.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ghsa.spawn(slow), 0.3)
        value = await ghsa.spawn(after)  # the engine is still usable
        await ghsa.spawn(engine.dispose)
        return n, value

    assert run(main) == (1, 3)


def test_run_with_no_loop_running(schema):
    # In a plain thread with no loop, run() waits on the thread's own greenhub loop.
    out = []

    def thread():
        engine = sa.create_engine(sqlalchemy_url(schema, "asyncpg"))

        def work():
            with Session(engine) as s:
                emails = orm_roundtrip(s, "noloop")
            engine.dispose()
            return emails

        out.append(ghsa.run(work))

    t = threading.Thread(target=thread)
    t.start()
    t.join(30)
    assert out == [expected("noloop")]


# --------------------------------------------------------------------------
# (c) the sync API over psycopg's sync driver, cooperative


def test_sync_session_over_cooperative_psycopg(run, schema, pg_barrier):
    # A fresh engine: the first connections of all vthreads race to initialise the
    # dialect under SQLAlchemy's first-connect mutex, which must be cooperative.
    engine = sa.create_engine(
        sqlalchemy_url(schema, "psycopg"), poolclass=ghsa.QueuePool, pool_size=N
    )
    together = barrier_sql(pg_barrier(N))

    def handler(i):
        with Session(engine) as s:
            emails = orm_roundtrip(s, f"c-{i}")
            return emails, s.execute(together, {"i": i}).one()[1]

    async def main():
        return await asyncio.gather(*(greenhub.spawn(handler, i) for i in range(N)))

    try:
        results = run(main)
    finally:
        engine.dispose()
    # The N sessions' queries met at the barrier: they ran at the same time.
    assert results == [(expected(f"c-{i}"), i) for i in range(N)]


def test_cooperative_pool_waits_for_a_free_connection(run, schema, pg_barrier):
    # 12 vthreads, 3 connections: the others wait for the pool without blocking the loop.
    # The three holders' first queries wait at a gate on the server that a coroutine on
    # the loop opens once it has seen the nine others waiting in the pool's queue.
    engine = sa.create_engine(
        sqlalchemy_url(schema, "psycopg"), poolclass=ghsa.QueuePool, pool_size=3, max_overflow=0
    )
    gate = pg_barrier(4)
    querying = support.Overlap()

    def handler(i):
        with engine.connect() as c:
            with querying:
                return c.execute(barrier_sql(gate), {"i": i}).one()[1]

    async def main():
        tasks = [greenhub.spawn(handler, i) for i in range(12)]
        await until(lambda: queue_waiters(engine) == 9, "nine virtual threads in the queue")
        async with await psycopg.AsyncConnection.connect(schema, autocommit=True) as conn:
            await conn.execute(gate.sql)
        return await asyncio.gather(*tasks)

    try:
        results = run(main)
        assert engine.pool.checkedout() == 0 and engine.pool.size() == 3
    finally:
        engine.dispose()
    assert results == list(range(12))
    assert querying.peak == 3  # the pool's three connections, together


def test_cooperative_pool_outside_vthreads(schema):
    # The same engine used from plain OS threads: the pool blocks them as the stock one.
    engine = sa.create_engine(
        sqlalchemy_url(schema, "psycopg"), poolclass=ghsa.QueuePool, pool_size=2, max_overflow=0
    )
    out = []

    def worker(i):
        with engine.connect() as c:
            out.append(c.execute(SLEEP_SQL, {"s": 0.05, "i": i}).one()[1])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    engine.dispose()
    assert sorted(out) == list(range(6))
    with pytest.raises(sa.exc.TimeoutError):
        engine2 = sa.create_engine(
            sqlalchemy_url(schema, "psycopg"),
            poolclass=ghsa.QueuePool,
            pool_size=1,
            max_overflow=0,
            pool_timeout=0.2,
        )
        with engine2.connect(), engine2.connect():
            pass
    engine2.dispose()


# --------------------------------------------------------------------------
# (c) cancelled virtual threads and the cooperative QueuePool


def queue_waiters(engine):
    """Virtual threads waiting in the pool's queue for a connection."""
    return len(engine.pool._pool._q._not_empty)


def cancelled_engine(schema):
    return sa.create_engine(
        sqlalchemy_url(schema, "psycopg"),
        poolclass=ghsa.QueuePool,
        pool_size=3,
        max_overflow=0,
        pool_timeout=10,
    )


async def until(predicate, what):
    deadline = time.monotonic() + support.hang_timeout(10)
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def assert_pool_whole(engine):
    """Nothing checked out or waiting, and the pool counts exactly the connections it
    holds (its overflow counter starts at -pool_size and counts connections made)."""
    pool = engine.pool
    assert pool.checkedout() == 0 and queue_waiters(engine) == 0, pool.status()
    assert pool.overflow() == pool.checkedin() - 3, pool.status()


def hold_all(engine):
    """All three connections at once (a lost one would time the third out)."""
    conns = [engine.connect() for _ in range(3)]
    try:
        return [c.execute(sa.text("select 1")).scalar() for c in conns]
    finally:
        for c in conns:
            c.close()


def test_rounds_of_cancelled_sessions_lose_no_connection(run, schema):
    """Sync Sessions in virtual threads, more than the pool has connections: three in a
    query, the rest waiting in the pool's queue; all cancelled at once, three rounds.
    The pool's counts come back every time (SQLAlchemy invalidates a connection whose
    query was interrupted by a BaseException: the next checkout reconnects), and all
    connections serve at once."""
    engine = cancelled_engine(schema)
    n = 16

    def session_work():
        with Session(engine) as s:
            return s.execute(sa.text("select pg_sleep(30), 1")).one()[1]

    async def main():
        for _ in range(3):
            tasks = [greenhub.spawn(session_work) for _ in range(n)]
            await until(
                lambda: engine.pool.checkedout() == 3 and queue_waiters(engine) == n - 3,
                "the pool saturated",
            )
            for t in tasks:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results), results
            assert_pool_whole(engine)
            assert await greenhub.spawn(hold_all, engine) == [1, 1, 1]

        def quick():
            with Session(engine) as s:
                return s.execute(sa.text("select 1")).scalar()

        return await asyncio.gather(*(greenhub.spawn(quick) for _ in range(n)))

    try:
        assert run(main) == [1] * n
    finally:
        engine.dispose()


@pytest.mark.parametrize("where", ["connect", "checkin"])
def test_cancel_while_connecting_or_checking_in(run, schema, where):
    """Cancelled at the first wait of a new connection (the pool's overflow count must
    come back), or at the rollback of a session's close (the connection goes back to
    the pool, invalidated by SQLAlchemy, and is reconnected on next use)."""
    engine = cancelled_engine(schema)

    def body():
        if where == "connect":
            asyncio.current_task().cancel()  # lands while connecting
            with engine.connect() as c:
                c.execute(sa.text("select 1"))
        else:
            s = Session(engine)
            s.execute(sa.text("select 1"))  # a transaction is open: close() rolls back
            asyncio.current_task().cancel()  # lands at the rollback
            s.close()
        greenhub.sleep(3600)

    async def main():
        with pytest.raises(asyncio.CancelledError):
            await greenhub.spawn(body)
        assert_pool_whole(engine)
        return await greenhub.spawn(hold_all, engine)

    try:
        assert run(main) == [1, 1, 1]
    finally:
        engine.dispose()
