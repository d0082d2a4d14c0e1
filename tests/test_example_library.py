"""examples/kvclient: one sync-style implementation, a sync API and an async API.

The server runs on the stock asyncio loop in a thread of its own for the whole module,
so the clients' behaviour does not depend on the server's loop.  ``Client`` is tested
from a plain thread with no loop and from virtual threads; ``AsyncClient`` on both
loops (on greenhub its calls run in the awaiting task, elsewhere in worker threads).
"""

import asyncio
import inspect
import itertools
import sys
import threading

import pytest
from vthread_helpers import REPO, gloop_fixture, in_thread  # noqa: F401 - fixture

import greenhub

sys.path.insert(0, str(REPO / "examples"))
from kvclient import AsyncClient, Client, KVError, start_server  # noqa: E402

pytestmark = pytest.mark.timeout(30)
WAIT = 10
_keys = itertools.count()


def key(prefix="k"):
    return f"{prefix}{next(_keys)}"


@pytest.fixture(scope="module")
def port():
    ready, box = threading.Event(), {}

    async def serve():
        server = await start_server()
        box["port"] = server.sockets[0].getsockname()[1]
        box["stop"] = stop = asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        ready.set()
        async with server:
            await stop.wait()

    t = threading.Thread(target=asyncio.run, args=(serve(),))
    t.start()
    assert ready.wait(WAIT)
    yield box["port"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    t.join(WAIT)


def test_sync_client_from_a_plain_script(port):
    k, n = key(), key()

    def script():  # a thread with no event loop: a plain synchronous program
        with Client(port=port) as kv:
            out = [kv.get(k), kv.get(k, "dflt")]
            kv.set(k, "v a l")
            out += [kv.get(k), kv.incr(n), kv.incr(n), kv.delete(k), kv.delete(k)]
            kv.set(n, "not a number")
            with pytest.raises(KVError, match="not a number"):
                kv.incr(n)
            with pytest.raises(ValueError, match="newlines"):
                kv.set(k, "two\nlines")
            with pytest.raises(ValueError, match="key"):
                kv.get("has space")
            out.append(kv.get(k))  # the connection is still in step after the errors
            return out, asyncio._get_running_loop()

    out, running = in_thread(script)
    assert out == [None, "dflt", "v a l", 1, 2, True, False, None]
    assert running is None


def test_sync_client_virtual_threads_wait_without_blocking_each_other(gloop, port):
    k, n = key("ready"), key("count")

    def waiter():
        with Client(port=port) as kv:
            return kv.wait(k)  # only this virtual thread waits for the key

    def worker():
        with Client(port=port) as kv:
            return kv.incr(n)

    def setter():
        with Client(port=port) as kv:
            kv.set(k, "go")

    async def main():
        waiters = [greenhub.spawn(waiter) for _ in range(5)]
        workers = [greenhub.spawn(worker) for _ in range(20)]
        counts = await asyncio.gather(*workers)  # done while the waiters still wait
        assert not any(w.done() for w in waiters)
        await greenhub.spawn(setter)
        return sorted(counts), await asyncio.wait_for(asyncio.gather(*waiters), WAIT)

    counts, woken = gloop.run_until_complete(main())
    assert counts == list(range(1, 21))
    assert woken == ["go"] * 5


def test_async_client(loop, kind, port):
    k, n = key(), key()

    async def main():
        async with await AsyncClient.connect(port=port) as kv:
            waiting = asyncio.ensure_future(kv.wait(k))
            async with await AsyncClient.connect(port=port) as other:
                await other.set(k, "hello")
            assert await asyncio.wait_for(waiting, WAIT) == "hello"
            assert await kv.get(k) == "hello" and await kv.get(key()) is None
            # one connection shared by concurrent tasks: one request at a time
            counts = await asyncio.gather(*(kv.incr(n) for _ in range(20)))
            assert sorted(counts) == list(range(1, 21))
            assert await kv.delete(k) is True
            with pytest.raises(KVError, match="unknown|not a number"):
                await kv.set(n, "x") or await kv.incr(n)
            with pytest.raises(ValueError):
                await kv.get("")
        return asyncio.get_running_loop()._default_executor

    executor = loop.run_until_complete(main())
    # greenhub: every call ran in the awaiting task - no executor was ever started;
    # the stock loop: sync_to_async hopped to worker threads.
    assert (executor is None) == (kind == "greenhub")


def test_async_and_sync_apis_are_the_same_code():
    for name in ("get", "set", "delete", "incr", "wait", "close"):
        sync_method, async_method = getattr(Client, name), getattr(AsyncClient, name)
        assert async_method.__wrapped__ is sync_method
        assert inspect.iscoroutinefunction(async_method)
        assert not inspect.iscoroutinefunction(sync_method)
