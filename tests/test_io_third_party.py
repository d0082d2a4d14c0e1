"""Real asyncio network libraries over greenhub's transports, on both loops.

aiohttp (server and client), httpx and websockets drive the socket transports the way
applications do: many concurrent keep-alive requests, multi-megabyte bodies both ways,
chunked streaming, WebSocket frames and flow control.  Every test runs on the stock loop
too, so a difference is greenhub's.
"""

import asyncio
import hashlib
import os

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="test dependency: make deps installs it")
httpx = pytest.importorskip("httpx", reason="test dependency: make deps installs it")
websockets = pytest.importorskip("websockets", reason="test dependency: make deps installs it")
from aiohttp import web  # noqa: E402

BIG = 3 * 1024 * 1024


def make_app():
    async def hello(request):
        return web.Response(text="hi " + request.match_info["n"])

    async def big(request):
        return web.Response(body=bytes(range(256)) * (BIG // 256))

    async def stream(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(200):
            await resp.write(b"chunk%d;" % i)
        await resp.write_eof()
        return resp

    async def upload(request):
        return web.Response(text=hashlib.sha256(await request.read()).hexdigest())

    async def echo_ws(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(msg.data.upper())
        return ws

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/h/{n}", hello)
    app.router.add_get("/big", big)
    app.router.add_get("/stream", stream)
    app.router.add_post("/up", upload)
    app.router.add_get("/ws", echo_ws)
    return app


async def serve(body):
    runner = web.AppRunner(make_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        return await asyncio.wait_for(body(f"127.0.0.1:{port}"), 30)
    finally:
        await runner.cleanup()
        # Name resolution may have started executor threads (on the stock loop): end
        # them here, as asyncio.run() would, rather than let them exit during later tests.
        await asyncio.get_running_loop().shutdown_default_executor()


def test_aiohttp_server_and_client(loop):
    async def body(addr):
        base = f"http://{addr}"
        async with aiohttp.ClientSession() as s:
            replies = await asyncio.gather(*(s.get(f"{base}/h/{i}") for i in range(200)))
            texts = [await r.text() for r in replies]
            async with s.get(f"{base}/big") as r:
                big = await r.read()
            async with s.get(f"{base}/stream") as r:
                streamed = await r.text()
            payload = os.urandom(5 * 1024 * 1024)
            async with s.post(f"{base}/up", data=payload) as r:
                digest = await r.text()
            async with s.ws_connect(f"{base}/ws") as ws:
                echoes = []
                for i in range(50):
                    await ws.send_str("msg%d" % i)
                    echoes.append((await ws.receive()).data)
        return texts, big, streamed, digest == hashlib.sha256(payload).hexdigest(), echoes

    texts, big, streamed, digest_ok, echoes = loop.run_until_complete(serve(body))
    assert texts == ["hi %d" % i for i in range(200)]
    assert big == bytes(range(256)) * (BIG // 256)
    assert streamed == "".join("chunk%d;" % i for i in range(200))
    assert digest_ok
    assert echoes == ["MSG%d" % i for i in range(50)]


def test_httpx_client(loop):
    async def body(addr):
        async with httpx.AsyncClient() as client:
            replies = await asyncio.gather(*(client.get(f"http://{addr}/h/{i}") for i in range(100)))
            big = await client.get(f"http://{addr}/big")
        return [r.text for r in replies], big.content

    texts, big = loop.run_until_complete(serve(body))
    assert texts == ["hi %d" % i for i in range(100)]
    assert big == bytes(range(256)) * (BIG // 256)


def test_websockets_client(loop):
    async def body(addr):
        async with websockets.connect(f"ws://{addr}/ws") as ws:
            got = []
            for text in ["abc", "x" * 100_000, "last"]:
                await ws.send(text)
                got.append(await ws.recv())
            return got

    assert loop.run_until_complete(serve(body)) == ["ABC", "X" * 100_000, "LAST"]
