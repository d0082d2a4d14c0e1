"""Django's sync views and sync ORM on virtual threads (greenhub.contrib.django), against
a real PostgreSQL through psycopg 3.

The project is tests/django_app (one model, sync and async views, an async-only
middleware).  Requests go to the ASGI application either directly (httpx's ASGI
transport, each request in its own task as a server would run it) or through a real
uvicorn server on the same greenhub loop.  Overlap is shown without timing: the views
meet at a barrier on the server (``pg_barrier``, passed in the URL), which opens only
once all of them are running their queries at the same time.
"""

import asyncio
import threading
import time

import django
import httpx
import psycopg
import pytest
import support
import uvicorn
from django.conf import settings
from django.core.exceptions import SynchronousOnlyOperation

import greenhub
import greenhub.contrib.django as ghdj

pytestmark = pytest.mark.timeout(60)

N = 10


@pytest.fixture(scope="module")
def app(pg_dsn):
    """The ASGI application over this module's database, with the table created."""
    import django_app

    assert not settings.configured, "tests/test_django.py configures Django itself"
    settings.configure(**django_app.settings(pg_dsn))
    django.setup()
    from django.core.management import call_command
    from django.db import connections

    call_command("migrate", run_syncdb=True, verbosity=0)  # outside any loop: plain Django
    connections.close_all()
    application = ghdj.get_asgi_application()
    try:
        yield application
    finally:
        ghdj.uninstall()
        connections.close_all()


@pytest.fixture
def run(app, greenhub_leak_check):
    """run(fn): run the coroutine function fn(client) on a fresh greenhub loop with an
    httpx client bound to the application, and close the loop."""

    def run(fn):
        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await fn(client)

        loop = support.new_loop("greenhub")
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()

    return run


@pytest.fixture
def clean_pool(app):
    """Start and end with no pooled connection (and limits reset)."""
    ghdj.close_idle_connections()
    yield
    ghdj.close_idle_connections()
    ghdj.install(max_connections=None)


def server_connections(dsn, expected):
    """Connections to the test database other than the one asking: polled until it is
    `expected` (a server process ends shortly after its client closes), or for at most
    10 s (a hang detector, scaled under the sanitizers)."""
    deadline = time.monotonic() + support.hang_timeout(10)
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            n = conn.execute(
                "select count(*) from pg_stat_activity "
                "where datname = current_database() and pid <> pg_backend_pid()"
            ).fetchone()[0]
            if n == expected or time.monotonic() > deadline:
                return n
            time.sleep(0.05)


def test_concurrent_sync_views_overlap(run, pg_barrier):
    # The N views wait at a barrier on the server: it opens only with all N queries
    # running at once (views one after another: the first waits alone, and fails).
    barrier = pg_barrier(N)

    async def main(client):
        await client.get("/sleep/0")  # connections made
        return await asyncio.gather(*(client.get(f"/together?{barrier.query}") for _ in range(N)))

    responses = run(main)
    assert [r.status_code for r in responses] == [200] * N, responses[0].text
    assert all(r.json()["items"] == 0 for r in responses)


def test_each_virtual_thread_has_its_own_connection(run, clean_pool, pg_dsn, pg_barrier):
    # Each round's N requests are in their views at once (a barrier on the server).
    rounds = [pg_barrier(N), pg_barrier(N)]

    async def main(client):
        first = await asyncio.gather(*(client.get(f"/pid?{rounds[0].query}") for _ in range(N)))
        stats_between = ghdj.connection_stats()
        second = await asyncio.gather(*(client.get(f"/pid?{rounds[1].query}") for _ in range(N)))
        return first, stats_between, second

    first, stats_between, second = run(main)
    pids1 = {r.json()["pid"] for r in first}
    pids2 = {r.json()["pid"] for r in second}
    assert len(pids1) == N  # concurrent requests never share a server session
    assert len({r.json()["wrapper"] for r in first}) == N
    # Ended tasks gave their connections back (CONN_MAX_AGE=60 keeps them open) and
    # the next round reused them instead of opening more: nothing leaked.
    assert stats_between == {"default": {"idle": N, "in_use": 0}}
    assert pids2 == pids1
    assert ghdj.connection_stats() == {"default": {"idle": N, "in_use": 0}}
    assert server_connections(pg_dsn, N) == N
    ghdj.close_idle_connections()
    assert server_connections(pg_dsn, 0) == 0


def test_conn_max_age_zero_reuses_connections_by_default(
    run, clean_pool, pg_dsn, monkeypatch, pg_barrier
):
    from django.db import connections

    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)
    rounds = [pg_barrier(3) for _ in range(3)]  # three requests at once, each round

    async def main(client):
        first = await asyncio.gather(*(client.get(f"/pid?{rounds[0].query}") for _ in range(3)))
        between = server_connections(pg_dsn, 3)
        second = await asyncio.gather(*(client.get(f"/pid?{rounds[1].query}") for _ in range(3)))
        return first, between, second

    first, between, second = run(main)
    pids = {r.json()["pid"] for r in first}
    assert len(pids) == 3
    # Kept open across requests (as Django's pool option keeps them), for the next
    # virtual threads: the second round ran on the same server sessions.
    assert between == 3
    assert {r.json()["pid"] for r in second} == pids
    assert ghdj.connection_stats() == {"default": {"idle": 3, "in_use": 0}}
    # ...for up to POOLED_MAX_AGE, then closed as Django closes an obsolete connection.
    from greenhub.contrib.django import _db

    idle = _db._pool("default").idle
    now = time.monotonic()
    assert all(
        now < c.close_at <= now + _db.POOLED_MAX_AGE and c.connection is not None for c in idle
    )
    for c in idle:
        c.close_at = now - 1

    async def again(client):
        return await asyncio.gather(*(client.get(f"/pid?{rounds[2].query}") for _ in range(3)))

    renewed = {r.json()["pid"] for r in run(again)}  # each taken one was closed first
    assert len(renewed) == 3 and not renewed & pids
    assert server_connections(pg_dsn, 3) == 3


def test_conn_max_age_zero_closes_at_request_end_without_reuse(
    run, clean_pool, pg_dsn, monkeypatch, pg_barrier
):
    from django.db import connections

    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)
    ghdj.install(reuse_connections=False)
    barrier = pg_barrier(3)  # three requests at once: three connections

    async def main(client):
        return await asyncio.gather(*(client.get(f"/pid?{barrier.query}") for _ in range(3)))

    responses = run(main)
    assert len({r.json()["pid"] for r in responses}) == 3
    # request_finished closed them (Django's rule for CONN_MAX_AGE=0); the pool keeps
    # only the closed wrappers.
    assert server_connections(pg_dsn, 0) == 0
    assert ghdj.connection_stats() == {"default": {"idle": 3, "in_use": 0}}


def test_install_checks_its_arguments(app):
    with pytest.raises(ValueError, match="at least 1"):
        ghdj.install(max_connections=0)
    with pytest.raises(TypeError, match="max_connections"):
        ghdj.install(max_connections="8")
    with pytest.raises(TypeError, match="reuse_connections"):
        ghdj.install(reuse_connections=None)


def test_atomic_is_isolated_per_virtual_thread(run):
    from django_app import views

    async def main(client):
        views.INSERTED = greenhub.Event()
        try:
            writer = asyncio.ensure_future(client.get("/atomic/uncommitted/0.3"))
            await views.INSERTED.async_wait()
            # The writer's row exists in its open transaction; another request must
            # not see it (with a shared connection it would run inside that transaction).
            during = await client.get("/count/uncommitted")
            await client.get("/commit/committed")
            return await writer, during, await client.get("/count/committed")
        finally:
            views.INSERTED = None

    writer, during, committed = run(main)
    assert writer.json() == {"seen_inside": 1, "after": 0}  # rolled back
    assert during.json() == {"count": 0}
    assert committed.json() == {"count": 1}


def test_errors_give_djangos_responses(run, caplog):
    async def main(client):
        return await client.get("/fail"), await client.get("/no/such/page")

    with caplog.at_level("ERROR", logger="django.request"):
        fail, missing = run(main)
    assert fail.status_code == 500
    assert "Server Error (500)" in fail.text
    assert any("boom" in str(rec.exc_info) for rec in caplog.records)
    assert missing.status_code == 404
    assert "Not Found" in missing.text


def test_async_view_and_async_middleware(run):
    async def main(client):
        return await client.get("/async"), await client.get("/async-sync-orm")

    r, sync_orm = run(main)
    assert sync_orm.status_code == 200 and sync_orm.json() == {"count": 0}
    assert r.status_code == 200
    # acount() ran without a thread hop (its sync_to_async stayed in the task), and the
    # async-only middleware was reached through async_to_sync from the sync chain.
    assert r.json() == {"count": 0, "in_vthread": True, "middleware": True}
    assert r.headers["x-async-middleware"] == "1"


def test_streaming_and_file_responses(run):
    async def main(client):
        return await client.get("/stream"), await client.get("/astream"), await client.get("/file")

    sync_stream, async_stream, file = run(main)
    assert sync_stream.text == "part0:0;part1:0;part2:0;"  # queried while being sent
    assert async_stream.text == "apart0;apart1;apart2;"
    assert file.status_code == 200 and file.content == b"x" * 200_000
    assert file.headers["content-disposition"] == 'inline; filename="x.bin"'


def test_request_body_and_form(run):
    async def main(client):
        return await client.post("/echo", data={"a": "b" * 70_000})

    r = run(main)
    assert r.json() == {"method": "POST", "a": "b" * 70_000, "len": 70_002}


def test_client_disconnect_cancels_the_view(app, run):
    """A disconnect while a sync view waits on the server cancels the request: the view
    sees CancelledError at its wait, the query is cancelled on the server, nothing is
    sent, and the connection serves the next request."""

    async def main(client):
        sent = []
        body_done = asyncio.Event()

        async def receive():
            if not body_done.is_set():
                body_done.set()
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(0.2)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/sleep/3600",
            "raw_path": b"/sleep/3600",
            "query_string": b"",
            "headers": [(b"host", b"test")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        # Returns once the view is cancelled: waiting out its query would take an hour.
        await app(scope, receive, send)
        return sent, await client.get("/sleep/0")

    sent, after = run(main)
    assert sent == []
    assert after.status_code == 200


def test_max_connections_makes_virtual_threads_wait(run, clean_pool, pg_dsn, pg_barrier):
    """Six requests, two connections: the first two views wait on the server at a gate
    that the test opens only once it has seen the four others waiting for a connection
    (while the loop runs on); every view reports how many connections were in use."""
    from greenhub.contrib.django import _db

    ghdj.install(max_connections=2)
    gate = pg_barrier(3)

    def waiting_for_a_connection():
        slots = _db._pool("default").slots
        return len(slots._waiters) if slots is not None else 0

    async def main(client):
        requests = [
            asyncio.ensure_future(client.get(f"/together?{gate.query}")) for _ in range(6)
        ]
        deadline = time.monotonic() + support.hang_timeout(30)  # a hang detector
        while waiting_for_a_connection() != 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        seen = (ghdj.connection_stats()["default"]["in_use"], waiting_for_a_connection())
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
            await conn.execute(gate.sql)  # the gate opens: the rest pass it at once
        return seen, await asyncio.gather(*requests)

    seen, responses = run(main)
    assert seen == (2, 4)  # two views at the gate, four requests waiting for a connection
    assert [r.status_code for r in responses] == [200] * 6, responses[0].text
    assert max(r.json()["in_use"] for r in responses) == 2
    assert ghdj.connection_stats()["default"]["idle"] == 2


def test_uvicorn_on_greenhub_serves_concurrently(app, greenhub_leak_check, pg_barrier):
    """A real server: uvicorn on a greenhub loop, requests over TCP; the N views meet at
    a barrier on the server."""
    barrier = pg_barrier(N)

    async def main():
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            timeout = support.hang_timeout(60)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", timeout=timeout
            ) as client:
                await client.get("/sleep/0")
                responses = await asyncio.gather(
                    *(client.get(f"/together?{barrier.query}") for _ in range(N))
                )
                fail = await client.get("/fail")
        finally:
            server.should_exit = True
            await serving
        return responses, fail

    loop = support.new_loop("greenhub")
    try:
        responses, fail = loop.run_until_complete(main())
    finally:
        loop.close()
    assert [r.status_code for r in responses] == [200] * N, responses[0].text
    assert fail.status_code == 500


def test_unchanged_outside_virtual_threads(app):
    """On a stock asyncio loop the async-unsafe check still refuses the sync ORM, and an
    OS thread keeps Django's own thread-local connection."""
    from django.db import connection
    from django_app.models import Item

    async def on_stock_loop():
        Item.objects.count()

    with pytest.raises(SynchronousOnlyOperation):
        asyncio.run(on_stock_loop())

    seen = []

    def in_thread():
        seen.append((Item.objects.filter(n=-1).count(), id(connection.connection)))
        seen.append(id(connection.connection))
        connection.close()

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen[0][0] == 0 and seen[0][1] == seen[1]  # one connection for the thread
    assert ghdj.connection_stats().get("default", {}).get("in_use", 0) == 0


def test_other_loops_get_djangos_own_handler(app, monkeypatch, caplog):
    """On the stock loop the application hands requests to Django's ASGIHandler (sync
    views in asgiref's threads, connections per OS thread) and still serves them."""
    from django.db import connections

    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)  # threads end
    monkeypatch.setattr(app, "_stock", None)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/sleep/0"), await client.get("/async")

    with caplog.at_level("WARNING", logger="greenhub.contrib.django"):
        sync_view, async_view = asyncio.run(main())
    assert sync_view.status_code == 200 and sync_view.json() == {"items": 0}
    assert async_view.json() == {"count": 0, "in_vthread": False, "middleware": True}
    assert "not running in a greenhub task" in caplog.text
    assert ghdj.connection_stats().get("default", {}).get("in_use", 0) == 0


def test_cancelled_virtual_thread_mid_transaction_leaks_nothing(
    app, clean_pool, pg_dsn, greenhub_leak_check
):
    """A virtual thread cancelled inside atomic() while its query runs: the query is
    cancelled on the server, atomic() rolls back, and the connection goes back to the
    pool in a state the next virtual thread can use."""
    from django.db import connection, transaction
    from django_app.models import Item

    started = greenhub.Event()

    def writer():
        with transaction.atomic():
            Item.objects.create(name="cancelled")
            started.set()
            with connection.cursor() as cur:
                cur.execute("select pg_sleep(3600)")

    def reader():
        return Item.objects.filter(name="cancelled").count()

    async def main():
        task = greenhub.spawn(writer)
        await started.async_wait()
        await asyncio.sleep(0.1)
        task.cancel()
        # Returns once the query is cancelled on the server, not after its hour.
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = ghdj.connection_stats()
        return stats, await greenhub.spawn(reader)

    loop = support.new_loop("greenhub")
    try:
        stats, count = loop.run_until_complete(main())
    finally:
        loop.close()
    assert stats == {"default": {"idle": 1, "in_use": 0}}
    assert count == 0  # rolled back
    assert server_connections(pg_dsn, 1) == 1  # the reader reused the writer's connection


def test_cancel_while_connecting_leaves_no_half_set_up_connection(
    app, clean_pool, monkeypatch, greenhub_leak_check
):
    """A virtual thread cancelled inside Django's connect(), after the database
    connection was made but before Django finished setting it up (its session time zone,
    the connection_created signal): the wrapper goes back to greenhub's pool, and the next
    virtual thread must not get that half-set-up connection, but a new, complete one."""
    from django.db import connection
    from django.db.backends.postgresql.base import DatabaseWrapper
    from django.db.backends.signals import connection_created

    created, cut_short = [], []

    def on_created(sender, connection, **kwargs):
        created.append(connection.connection.info.backend_pid)

    init = DatabaseWrapper.init_connection_state

    def cancelled_init(self):
        if not cut_short:  # the first connection: its set-up is cut short
            cut_short.append(self.connection.info.backend_pid)
            asyncio.current_task().cancel()  # lands at the set-up's first query
        init(self)

    monkeypatch.setattr(DatabaseWrapper, "init_connection_state", cancelled_init)
    connection_created.connect(on_created)

    def use():
        with connection.cursor() as cur:
            cur.execute("show timezone")
            return cur.fetchone()[0], connection.connection.info.backend_pid

    async def main():
        with pytest.raises(asyncio.CancelledError):
            await greenhub.spawn(use)
        await asyncio.sleep(0)  # the task's done callbacks (the wrapper's return) run
        assert ghdj.connection_stats() == {"default": {"idle": 1, "in_use": 0}}
        return await greenhub.spawn(use)

    loop = support.new_loop("greenhub")
    try:
        timezone, pid = loop.run_until_complete(main())
    finally:
        loop.close()
        connection_created.disconnect(on_created)
    assert created == [pid]  # the connection used was set up completely ...
    assert pid != cut_short[0]  # ... and is not the one whose set-up was cut short
    assert timezone == "UTC"


DJANGO_POOL_SCRIPT = r"""
import asyncio, json, sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
import django, httpx
from django.conf import settings
import django_app

conf = django_app.settings({dsn!r})
db = conf["DATABASES"]["default"]
db["CONN_MAX_AGE"] = 0  # Django requires it with its pool
db["OPTIONS"] = {{"pool": {{"min_size": 1, "max_size": 2, "timeout": {pool_timeout}}}}}
settings.configure(**conf)
import greenhub
from greenhub.contrib.django import get_asgi_application

app = get_asgi_application()

async def main():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        rs = await asyncio.gather(*(client.get("/pid") for _ in range(6)))
        return [r.status_code for r in rs], [r.json()["pid"] for r in rs]

loop = greenhub.new_event_loop()
codes, pids = loop.run_until_complete(main())
loop.close()
print(json.dumps({{"codes": codes, "pids": pids}}))
"""


def test_djangos_own_pool_option_waits_cooperatively(app, pg_dsn, tmp_path):
    """OPTIONS={"pool": ...} (Django's psycopg_pool): more virtual threads than pooled
    connections wait for one cooperatively, and closing at the end of the request
    returns it to Django's pool (greenhub's reuse stands aside).  In a fresh process,
    because Django's pool is made once per alias and process."""
    import json
    import os
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "django_pool.py"
    script.write_text(
        DJANGO_POOL_SCRIPT.format(
            repo=os.path.dirname(tests),
            tests=tests,
            dsn=pg_dsn,
            pool_timeout=support.hang_timeout(20),
        )
    )
    p = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=support.hang_timeout(50),
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    # All six served (a virtual thread that blocked the loop while waiting for the pool
    # would have held up the two holders too: a pool timeout, a 500) by two sessions.
    assert out["codes"] == [200] * 6
    assert len(set(out["pids"])) <= 2
