"""psycopg's async API and asyncpg on greenhub, against a real PostgreSQL.

Every test runs on the stock loop and on greenhub (the ``loop`` fixture): queries,
transactions, LISTEN/NOTIFY, COPY, pools under many concurrent tasks, and a running
query cancelled by ``asyncio.timeout()`` - which both drivers turn into a cancel request
to the server, so the connection stays usable.
"""

import asyncio

import asyncpg
import psycopg
import psycopg_pool
import pytest
import support

pytestmark = pytest.mark.timeout(60)

TASKS = 50


def run(loop, coro):
    return support.run(loop, asyncio.wait_for(coro, support.hang_timeout(45)))


async def backend_state(dsn, pid):
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("select state from pg_stat_activity where pid = $1", pid)
    finally:
        await conn.close()


# --------------------------------------------------------------------------
# psycopg AsyncConnection


def test_psycopg_async_queries_and_transactions(loop, pg_dsn):
    async def main():
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            await conn.execute("create table if not exists pa_t (id int primary key, v text)")
            await conn.execute("truncate pa_t")
            async with conn.transaction():
                cur = conn.cursor()
                await cur.executemany(
                    "insert into pa_t values (%s, %s)", [(i, f"v{i}") for i in range(100)]
                )
            with pytest.raises(psycopg.errors.UniqueViolation):
                async with conn.transaction():
                    await conn.execute("insert into pa_t values (1, 'dup')")
            with pytest.raises(RuntimeError):
                async with conn.transaction():
                    await conn.execute("delete from pa_t")
                    raise RuntimeError("roll back")
            cur = await conn.execute("select count(*), max(v) from pa_t")
            row = await cur.fetchone()
            async with conn.cursor(name="srv") as scur:
                await scur.execute("select id from pa_t order by id")
                ids = [r[0] async for r in scur]
            await conn.commit()
            return row, ids

    row, ids = run(loop, main())
    assert row == (100, "v99")
    assert ids == list(range(100))


def test_psycopg_async_copy(loop, pg_dsn):
    async def main():
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute("create table if not exists pa_copy (id int, name text)")
            await conn.execute("truncate pa_copy")
            cur = conn.cursor()
            async with cur.copy("copy pa_copy from stdin") as cp:
                for i in range(5000):
                    await cp.write_row((i, f"name {i}"))
            out = []
            async with cur.copy("copy (select * from pa_copy order by id) to stdout") as cp:
                async for row in cp.rows():
                    out.append(row)
            return out

    out = run(loop, main())
    assert len(out) == 5000 and out[1234] == ("1234", "name 1234")


def test_psycopg_async_listen_notify(loop, pg_dsn):
    async def main():
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as lconn:
            await lconn.execute("listen pa_chan")
            async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as nconn:

                async def send():
                    await asyncio.sleep(0.1)
                    for i in range(3):
                        await nconn.execute(f"notify pa_chan, 'm{i}'")

                sender = asyncio.create_task(send())
                got = []
                async for n in lconn.notifies(timeout=20, stop_after=3):
                    got.append(n.payload)
                await sender
                return got

    assert run(loop, main()) == ["m0", "m1", "m2"]


def test_psycopg_async_pool_many_tasks(loop, pg_dsn, pg_barrier):
    # The pool's 10 connections run their queries at the same time: the first 10 meet
    # at a barrier on the server (one after another, the first would wait there alone).
    barrier = pg_barrier(10)

    async def main():
        async with psycopg_pool.AsyncConnectionPool(pg_dsn, min_size=2, max_size=10) as pool:

            async def one(i):
                async with pool.connection() as conn:
                    cur = await conn.execute(f"select {barrier.call}, %s::int + 1", (i,))
                    return (await cur.fetchone())[1]

            return await asyncio.gather(*(one(i) for i in range(TASKS)))

    assert run(loop, main()) == [i + 1 for i in range(TASKS)]


def test_psycopg_async_cancel_by_timeout(loop, pg_dsn):
    async def main():
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            pid = conn.info.backend_pid
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await conn.execute("select pg_sleep(3600)")
            # Answered at once only if the query was cancelled on the server.
            cur = await conn.execute("select 5")
            return (await cur.fetchone())[0], await backend_state(pg_dsn, pid)

    assert run(loop, main()) == (5, "idle")


# --------------------------------------------------------------------------
# asyncpg


def test_asyncpg_queries_and_transactions(loop, pg_dsn):
    async def main():
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("create table if not exists ap_t (id int primary key, v text)")
            await conn.execute("truncate ap_t")
            async with conn.transaction():
                await conn.executemany(
                    "insert into ap_t values ($1, $2)", [(i, f"v{i}") for i in range(100)]
                )
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute("insert into ap_t values (1, 'dup')")
            stmt = await conn.prepare("select v from ap_t where id = $1")
            vs = [await stmt.fetchval(i) for i in (3, 50)]
            async with conn.transaction():
                ids = [r["id"] async for r in conn.cursor("select id from ap_t order by id")]
            return await conn.fetchrow("select count(*) as n from ap_t"), vs, ids
        finally:
            await conn.close()

    row, vs, ids = run(loop, main())
    assert row["n"] == 100 and vs == ["v3", "v50"] and ids == list(range(100))


def test_asyncpg_copy(loop, pg_dsn):
    async def main():
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("create table if not exists ap_copy (id int, name text)")
            await conn.execute("truncate ap_copy")
            await conn.copy_records_to_table(
                "ap_copy", records=[(i, f"name {i}") for i in range(5000)]
            )
            chunks = []

            async def sink(data):
                chunks.append(data)

            await conn.copy_from_query("select * from ap_copy order by id", output=sink)
            return b"".join(chunks)
        finally:
            await conn.close()

    data = run(loop, main())
    lines = data.decode().splitlines()
    assert len(lines) == 5000 and lines[1234] == "1234\tname 1234"


def test_asyncpg_listen_notify(loop, pg_dsn):
    async def main():
        lconn = await asyncpg.connect(pg_dsn)
        nconn = await asyncpg.connect(pg_dsn)
        try:
            got = asyncio.Queue()
            await lconn.add_listener("ap_chan", lambda c, pid, ch, payload: got.put_nowait(payload))
            for i in range(3):
                await nconn.execute(f"notify ap_chan, 'm{i}'")
            return [await asyncio.wait_for(got.get(), 20) for _ in range(3)]
        finally:
            await lconn.close()
            await nconn.close()

    assert run(loop, main()) == ["m0", "m1", "m2"]


def test_asyncpg_pool_many_tasks(loop, pg_dsn, pg_barrier):
    barrier = pg_barrier(10)  # as for psycopg's pool: 10 connections query together

    async def main():
        async with asyncpg.create_pool(pg_dsn, min_size=2, max_size=10) as pool:

            async def one(i):
                async with pool.acquire() as conn:
                    return await conn.fetchval(f"select $1::int + 1 from {barrier.call}", i)

            return await asyncio.gather(*(one(i) for i in range(TASKS)))

    assert run(loop, main()) == [i + 1 for i in range(TASKS)]


def test_asyncpg_cancel_by_timeout(loop, pg_dsn):
    async def main():
        conn = await asyncpg.connect(pg_dsn)
        try:
            pid = conn.get_server_pid()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await conn.execute("select pg_sleep(3600)")
            # Answered at once only if the query was cancelled on the server.
            five = await conn.fetchval("select 5")
            return five, await backend_state(pg_dsn, pid)
        finally:
            await conn.close()

    assert run(loop, main()) == (5, "idle")
