"""psycopg on greenhub: the sync API in virtual threads, and the async API.

Run it against a throwaway PostgreSQL (docs/recipe-psycopg.md):

    .ci/pg run python3 examples/recipe_psycopg.py

or against your own server:

    GREENHUB_TEST_PG_DSN=postgresql://user@host/db python3 examples/recipe_psycopg.py
"""

import asyncio
import os
import time

import psycopg

import greenhub
import greenhub.contrib.psycopg

greenhub.contrib.psycopg.install()  # before connections are made

DSN = os.environ["GREENHUB_TEST_PG_DSN"]


def report(n):
    """Plain sync code: a connection, a transaction, a 0.3 s query."""
    with psycopg.connect(DSN) as conn:
        with conn.transaction():
            row = conn.execute("select pg_sleep(0.3), %s::int * %s::int", (n, n)).fetchone()
        return row[1]


async def main():
    # 20 virtual threads, 20 connections: the waits overlap.
    t0 = time.perf_counter()
    squares = await asyncio.gather(*(greenhub.spawn(report, n) for n in range(20)))
    print(f"sync psycopg, 20 virtual threads: {squares[:5]}... in {time.perf_counter() - t0:.2f}s")

    # A task cancelled mid-query: the query is cancelled on the server too.
    conn = await greenhub.spawn(psycopg.connect, DSN, autocommit=True)
    try:
        await asyncio.wait_for(greenhub.spawn(conn.execute, "select pg_sleep(60)"), 0.2)
    except TimeoutError:
        print("cancelled; connection state:", conn.info.transaction_status.name)
    conn.close()

    # The async API runs on greenhub unchanged.
    async with await psycopg.AsyncConnection.connect(DSN) as aconn:
        cur = await aconn.execute(
            "select 'async psycopg on ' || %s", (type(asyncio.get_running_loop()).__name__,)
        )
        print((await cur.fetchone())[0])


if __name__ == "__main__":
    greenhub.run(main())
    # Outside virtual threads the same function is ordinary blocking psycopg.
    t0 = time.perf_counter()
    print(f"sync psycopg, no loop: {report(7)} in {time.perf_counter() - t0:.2f}s")
