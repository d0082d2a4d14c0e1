"""Clients that disconnect under load must not take a Django server on greenhub down.

tests/django_app served by uvicorn on a greenhub loop in a process of its own
(tests/django_app/serve.py), against a real PostgreSQL, with at most POOL_SIZE
database connections: Django's psycopg pool (``OPTIONS={"pool": ...}``) or greenhub's
per-virtual-thread connections (``reuse_connections`` with ``max_connections``).

Each round opens more requests than there are connections, to a view that waits on
the server for 30 s: POOL_SIZE of them run a query, the others wait for a connection.
Once the server's stats say so, the client drops every one of them (half the sockets
closed, half reset).  The server cancels their tasks - in a query, or waiting for a
connection - and must get every connection back: the stats come back to "all idle,
nobody waiting", the server runs no query any more, and after a few rounds ordinary
requests are all served.  (Before the fix, psycopg_pool's sync pool left a cancelled
waiter queued and handed it the next connection returned: after a round the pool was
empty and every request ended in ``PoolTimeout``.)

The stock asyncio loop is not compared: there Django runs sync views in a thread, which
a disconnect does not interrupt.
"""

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import psycopg
import pytest

pytestmark = pytest.mark.timeout(60)

TESTS = os.path.dirname(os.path.abspath(__file__))
SERVE = os.path.join(TESTS, "django_app", "serve.py")
POOL_SIZE = 4  # serve.py's
CLIENTS = 6 * POOL_SIZE  # requests in flight per round
ROUNDS = 3
SETTLE = 20.0  # seconds a dropped round gets to hand every connection back


@pytest.fixture(scope="module")
def db(pg_dsn):
    """This module's database with tests/django_app's table (made with SQL, so that
    this process never configures Django: test_django.py does)."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "create table django_app_item (id serial primary key, "
            "name varchar(100) not null, n integer not null default 0)"
        )
    return pg_dsn


class Server:
    """serve.py in a child process; stopped by closing its stdin."""

    def __init__(self, dsn, mode, tmp_path):
        self.stderr = open(tmp_path / f"serve-{mode}.log", "w+")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, SERVE, dsn, mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
        )
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            pytest.fail(f"server did not start: {line!r}\n{self.log()}")
        self.port = int(line)

    def log(self):
        self.stderr.seek(0)
        return self.stderr.read()[-4000:]

    def stop(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            self.stderr.close()


@pytest.fixture(params=["pool", "reuse"])
def server(request, db, tmp_path):
    s = Server(db, request.param, tmp_path)
    s.mode = request.param
    yield s
    code = s.proc.poll()
    s.stop()
    assert code is None, f"the server died during the test:\n{s.log()}"


async def stats(client):
    r = await client.get("/stats")
    assert r.status_code == 200, r.text
    return r.json()


def running_queries(dsn):
    """Queries the server runs for this database, other than this one's."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and pid <> pg_backend_pid() and state = 'active'"
        ).fetchone()[0]


def saturated(mode, s):
    """POOL_SIZE requests hold a connection and every other one waits for one."""
    waiting = CLIENTS - POOL_SIZE
    if mode == "pool":
        p = s["pool"]
        return p["pool_size"] == POOL_SIZE and p["pool_available"] == 0 and (
            p.get("requests_waiting", 0) == waiting
        )
    g = s["greenhub"]
    return g["in_use"] == POOL_SIZE and g["waiting"] == waiting


def settled(mode, s):
    """Every connection the pool has is back, and nobody waits for one."""
    g = s["greenhub"]
    if g["in_use"] or g["waiting"]:
        return False
    if mode == "pool":
        p = s["pool"]
        return (
            p.get("requests_waiting", 0) == 0
            and p["pool_available"] == p["pool_size"] == s["pool_nconns"]
            and p["pool_size"] >= 2  # min_size: a lost connection is not replaced
        )
    return g["idle"] <= POOL_SIZE


async def poll(client, predicate, what, deadline):
    while True:
        s = await stats(client)
        if predicate(s):
            return s
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: the server still reports {json.dumps(s)}")
        await asyncio.sleep(0.05)


async def drop_a_round(port, client, mode):
    """CLIENTS requests to a view that waits 30 s on the database; once the pool is
    saturated, every socket is dropped (even ones closed, odd ones reset)."""
    request = b"GET /sleep/30 HTTP/1.1\r\nHost: test\r\n\r\n"
    conns = []
    for _ in range(CLIENTS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        conns.append(writer)
    await poll(client, lambda s: saturated(mode, s), "not saturated", time.monotonic() + 20)
    for i, writer in enumerate(conns):
        if i % 2:
            writer.transport.abort()
        else:
            writer.close()
    await poll(client, lambda s: settled(mode, s), "connections lost", time.monotonic() + SETTLE)


def test_dropped_clients_leave_every_connection_usable(server, db):
    async def main():
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for _ in range(ROUNDS):
                await drop_a_round(server.port, client, server.mode)
                assert await asyncio.to_thread(running_queries, db) == 0  # all cancelled
            # Ordinary requests, more than there are connections: all served.  A lost
            # connection shows as a 500 after the pool's 10 s timeout.
            rs = await asyncio.gather(*(client.get("/sleep/0") for _ in range(2 * POOL_SIZE)))
            return [r.status_code for r in rs], await stats(client)

    codes, final = asyncio.run(main())
    assert codes == [200] * (2 * POOL_SIZE), server.log()
    assert settled(server.mode, final), final
    if server.mode == "pool":
        assert final["pool"].get("connections_lost", 0) == 0, final
