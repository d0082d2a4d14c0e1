"""redis-py's asyncio client against a real Redis server, on both loops.

The server: the one at GREENHUB_TEST_REDIS_URL if set; otherwise the tests start a
throwaway ``redis-server`` on loopback (no persistence, in a temporary directory) for the
session and stop it at the end.  Without either the tests are skipped - except when
GREENHUB_REQUIRE_REDIS=1 (CI sets it, and .ci/run installs Debian's redis-server), where
a missing server is a failure.
"""

import asyncio
import os
import shutil
import socket
import subprocess
import time

import pytest

redis_asyncio = pytest.importorskip("redis.asyncio", reason="make deps installs redis")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("GREENHUB_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("GREENHUB_REQUIRE_REDIS") == "1":
            pytest.fail("GREENHUB_REQUIRE_REDIS=1 but no redis-server and no GREENHUB_TEST_REDIS_URL")
        pytest.skip("no redis-server (apt-get install redis-server) and no GREENHUB_TEST_REDIS_URL")
    workdir = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # a child process: poll until it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (workdir / "redis.log").read_text() if (workdir / "redis.log").exists() else ""
                    pytest.fail(f"redis-server did not start: {log[-2000:]}")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(30)


def run(loop, redis_url, body):
    async def main():
        client = redis_asyncio.from_url(redis_url, decode_responses=True)
        try:
            return await asyncio.wait_for(body(client), 30)
        finally:
            await client.aclose()

    return loop.run_until_complete(main())


def key(kind, name):
    return f"greenhub-test:{kind}:{name}"


def test_commands_and_pipelines(loop, kind, redis_url):
    async def body(r):
        k = key(kind, "basic")
        await r.delete(k, k + ":h")
        await r.set(k, "1")
        values = await asyncio.gather(*(r.incr(k) for _ in range(100)))
        async with r.pipeline(transaction=True) as pipe:
            pipe.hset(k + ":h", mapping={"a": "1", "b": "2"}).hgetall(k + ":h").get(k)
            results = await pipe.execute()
        await r.delete(k, k + ":h")
        return sorted(values), results

    values, results = run(loop, redis_url, body)
    assert values == list(range(2, 102))
    assert results == [2, {"a": "1", "b": "2"}, "101"]


def test_blocking_pop_waits_while_other_tasks_run(loop, kind, redis_url):
    async def body(r):
        k = key(kind, "queue")
        await r.delete(k)

        async def producer():
            for i in range(5):
                await asyncio.sleep(0.01)
                await r.rpush(k, i)

        async def consumer():
            # Its own connection: BLPOP holds it for the whole wait.
            got = []
            while len(got) < 5:
                _, item = await r.blpop([k], timeout=10)
                got.append(item)
            return got

        got, _ = await asyncio.gather(consumer(), producer())
        return got

    assert run(loop, redis_url, body) == ["0", "1", "2", "3", "4"]


def test_pubsub(loop, kind, redis_url):
    async def body(r):
        channel = key(kind, "chan")
        async with r.pubsub() as ps:
            await ps.subscribe(channel)
            assert (await ps.get_message(timeout=10))["type"] == "subscribe"
            for i in range(3):
                await r.publish(channel, f"m{i}")
            got = []
            while len(got) < 3:
                msg = await ps.get_message(ignore_subscribe_messages=True, timeout=10)
                if msg is not None:
                    got.append(msg["data"])
            return got

    assert run(loop, redis_url, body) == ["m0", "m1", "m2"]


def test_sync_code_uses_the_async_client_in_virtual_threads(redis_url, greenhub_leak_check):
    # greenhub only: sync functions (a cache helper deep in a sync code base) use the
    # asyncio client through greenhub.await_; 20 of them block on BLPOP at once, each in
    # its own virtual thread, and all are released by one task.
    import greenhub

    def wait_for_job(r, k):  # plain sync code
        _, item = greenhub.await_(r.blpop([k], timeout=10))
        return int(item)

    async def main():
        pool = redis_asyncio.BlockingConnectionPool.from_url(
            redis_url, decode_responses=True, max_connections=32
        )
        r = redis_asyncio.Redis(connection_pool=pool)
        try:
            k = key("greenhub", "jobs")
            await r.delete(k)
            workers = [greenhub.spawn(wait_for_job, r, k) for _ in range(20)]
            await asyncio.sleep(0.05)
            await r.rpush(k, *range(20))
            return sorted(await asyncio.wait_for(asyncio.gather(*workers), 30))
        finally:
            await r.aclose()
            await pool.aclose()

    assert greenhub.run(main()) == list(range(20))
