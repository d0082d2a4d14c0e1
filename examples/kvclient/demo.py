"""kvclient demo: the same library used from a plain script and from async code.

python examples/kvclient/demo.py
"""

import asyncio
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import greenhub  # noqa: E402
from kvclient import AsyncClient, Client, start_server  # noqa: E402


def serve_in_background():
    """The server on its own thread and loop (the stock asyncio loop, to show that
    nothing here depends on the server's loop)."""
    ready, box = threading.Event(), {}

    async def main():
        server = await start_server()
        box["port"] = server.sockets[0].getsockname()[1]
        ready.set()
        await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()
    ready.wait()
    return box["port"]


def sync_use(port):
    # A plain script: no event loop, no async, no threads.
    with Client(port=port) as kv:
        kv.set("greeting", "hello")
        print("sync :", kv.get("greeting"), kv.incr("hits"), kv.incr("hits"))


async def async_use(port):
    async with await AsyncClient.connect(port=port) as kv:
        waiter = asyncio.ensure_future(kv.wait("ready"))  # blocks until someone sets it
        async with await AsyncClient.connect(port=port) as other:
            await other.set("ready", "yes")
        print("async:", await waiter, await kv.get("greeting"), await kv.incr("hits"))


def vthread_use(port):
    # Sync code in a virtual thread: each call suspends only this task.
    with Client(port=port) as kv:
        return kv.incr("vthreads")


async def main(port):
    await async_use(port)
    results = await asyncio.gather(*(greenhub.spawn(vthread_use, port) for _ in range(50)))
    print("vthreads:", max(results), "increments from 50 virtual threads")


if __name__ == "__main__":
    port = serve_in_background()
    sync_use(port)
    greenhub.run(main(port))  # AsyncClient on greenhub: no thread hop
    asyncio.run(async_use(port))  # ... and on the stock loop: a worker thread per call
