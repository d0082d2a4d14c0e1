"""greenhub showcase: synchronous code using an async library, concurrently.

Run it with `make demo`.

The "async library" below is a tiny async key-value client whose every call
takes 50 ms (as a network round trip would).  The application code is plain
synchronous Python - a repository class and a request handler that know
nothing about asyncio - and it calls the library through greenhub.await_().
Each request runs as a virtual thread (an asyncio Task on a greenlet), so
while one request waits for the "network", the others run: 200 requests that
each make 3 sequential calls finish in about 3 x 50 ms, not 200 x 150 ms.
"""

import asyncio
import sys
import threading
import time

import greenhub

LATENCY = 0.050


# --- an async library (it could be asyncpg, httpx, redis.asyncio ...) -------


class AsyncKV:
    def __init__(self):
        self._data = {}

    async def get(self, key):
        await asyncio.sleep(LATENCY)  # the network round trip
        return self._data.get(key)

    async def set(self, key, value):
        await asyncio.sleep(LATENCY)
        self._data[key] = value


# --- plain synchronous application code --------------------------------------


class Repository:
    """A sync data layer, e.g. deep inside an ORM."""

    def __init__(self, kv):
        self.kv = kv

    def load(self, key):
        return greenhub.await_(self.kv.get(key))  # suspends this request only

    def save(self, key, value):
        greenhub.await_(self.kv.set(key, value))


def handle_request(repo, n):
    """A sync request handler: read, modify, write - three round trips."""
    visits = repo.load(f"user:{n}") or 0
    repo.save(f"user:{n}", visits + 1)
    return repo.load(f"user:{n}")


async def serve(requests):
    repo = Repository(AsyncKV())
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(greenhub.spawn(handle_request, repo, n) for n in range(requests))
    )
    return results, time.perf_counter() - t0


def main():
    requests = 200
    print(
        f"{requests} sync request handlers, each making 3 async calls of "
        f"{LATENCY * 1000:.0f} ms, run as virtual threads on greenhub:"
    )
    results, elapsed = greenhub.run(serve(requests))
    assert results == [1] * requests
    sequential = requests * 3 * LATENCY
    print(
        f"  finished in {elapsed * 1000:.0f} ms; one after another it would take "
        f"{sequential:.0f} s -> {sequential / elapsed:.0f}x overlap"
    )

    # A plain script (no event loop running) can call the async library too.
    kv = AsyncKV()
    t0 = time.perf_counter()
    greenhub.await_(kv.set("answer", 42))
    value = greenhub.await_(kv.get("answer"))
    print(
        f"  from a plain script: greenhub.await_(kv.get('answer')) -> {value} "
        f"({(time.perf_counter() - t0) * 1000:.0f} ms for 2 calls)"
    )

    # Several OS threads, each with its own greenhub loop, at the same time.
    def thread_main(out):
        out.append(greenhub.await_(serve(50))[1])

    outs = []
    threads = [threading.Thread(target=thread_main, args=(outs,)) for _ in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"  4 OS threads x 50 virtual threads each: {(time.perf_counter() - t0) * 1000:.0f} ms")
    print(
        f"greenhub on Python {sys.version.split()[0]}, libev "
        f"{'.'.join(map(str, greenhub._core.LIBEV_VERSION))}; `make bench` compares "
        f"it with asyncio and uvloop"
    )


if __name__ == "__main__":
    main()
