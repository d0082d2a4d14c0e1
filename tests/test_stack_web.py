"""The asyncio web stack on greenhub: uvicorn, httpx, aiohttp, on both loops.

tests/test_io_third_party.py covers aiohttp's server and client, httpx and websockets
over plain TCP.  Here: uvicorn serving an ASGI app on the loop its ``loop`` setting
names (programmatically and through its command line, as docs/recipe-uvicorn.md shows),
httpx's async client against it, aiohttp over TLS and Unix sockets and with client
timeouts, and the reason to run these on greenhub - sync code in a request handler
waiting with ``greenhub.await_`` while the server keeps serving other requests.
"""

import asyncio
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import support

uvicorn = pytest.importorskip("uvicorn", reason="test dependency: make deps installs it")
httpx = pytest.importorskip("httpx", reason="test dependency: make deps installs it")
aiohttp = pytest.importorskip("aiohttp", reason="test dependency: make deps installs it")
trustme = pytest.importorskip("trustme", reason="test dependency: make deps installs it")
from aiohttp import web  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What uvicorn's `loop` setting is for each loop kind (docs/recipe-uvicorn.md).
UVICORN_LOOP = {"asyncio": "asyncio", "greenhub": "greenhub:new_event_loop"}


def loop_module():
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


# Where the /sync/ handlers wait (a support.Gathering): set by the test sending them.
SYNC_GATHERING = None


def sync_lookup(n):
    """Plain sync code (a blocking client library, an ORM) that waits on the loop: until
    every request of the test is in a handler waiting with it (else: why not)."""
    import greenhub

    try:
        greenhub.await_(SYNC_GATHERING.wait())
    except AssertionError as exc:
        return str(exc)
    return n * n


def make_asgi_app(started):
    async def reply(send, body, status=200):
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                    started.set()
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            while True:
                msg = await receive()
                if msg["type"] == "websocket.disconnect":
                    return
                await send({"type": "websocket.send", "text": msg["text"].upper()})
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        path = scope["path"]
        if path == "/loop":
            await reply(send, loop_module().encode())
        elif path == "/sha":
            await reply(send, hashlib.sha256(body).hexdigest().encode())
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(100):
                await send({"type": "http.response.body", "body": b"%d;" % i, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif path.startswith("/sync/"):
            await reply(send, str(sync_lookup(int(path[6:]))).encode())
        else:
            await reply(send, b"not found", 404)

    return app


class UvicornThread:
    """uvicorn.Server(Config(app, loop=...)).run() in a thread, on a pre-bound socket."""

    def __init__(self, loop_setting):
        self.started = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        # Listening from the start: uvicorn reports the app's lifespan startup (what
        # __enter__ waits for) before it listens on the socket itself, and a client
        # connecting in between was refused (seen in CI on 3.14 and 3.15, on a loaded
        # machine).  Connections made early wait in the backlog instead.
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(
            make_asgi_app(self.started), loop=loop_setting, lifespan="on", log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self):
        self.thread.start()
        bound = support.hang_timeout(30)
        assert self.started.wait(bound), "uvicorn did not start"
        deadline = time.monotonic() + bound
        while not self.server.started and time.monotonic() < deadline:  # serving too
            time.sleep(0.005)
        assert self.server.started, "uvicorn did not start serving"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(support.hang_timeout(30))
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def uvicorn_kind(kind, request):
    if kind == "greenhub":
        request.getfixturevalue("greenhub_leak_check")
    return kind


def test_uvicorn_serves_on_the_configured_loop(loop, uvicorn_kind):
    payload = os.urandom(2 * 1024 * 1024)

    async def client(base):
        async with httpx.AsyncClient(base_url=base, timeout=support.hang_timeout(30)) as c:
            which = (await c.get("/loop")).text
            many = await asyncio.gather(*(c.get("/loop") for _ in range(50)))
            sha = (await c.post("/sha", content=payload)).text
            async with c.stream("GET", "/stream") as r:
                streamed = b"".join([chunk async for chunk in r.aiter_bytes()])
            missing = (await c.get("/nope")).status_code
        return which, {r.text for r in many}, sha, streamed, missing

    with UvicornThread(UVICORN_LOOP[uvicorn_kind]) as srv:
        which, many, sha, streamed, missing = loop.run_until_complete(
            client(f"http://127.0.0.1:{srv.port}")
        )
        from websockets.sync.client import connect

        # Hang bounds, not websockets' defaults (a 10 s opening handshake): CI runs this
        # on two busy cores beside the sanitizer lane.
        bound = support.hang_timeout(30)
        with connect(
            f"ws://127.0.0.1:{srv.port}/ws", open_timeout=bound, close_timeout=bound
        ) as ws:
            echoes = []
            for text in ("abc", "x" * 70_000):
                ws.send(text)
                echoes.append(ws.recv(timeout=bound))
    assert which == uvicorn_kind  # the server's loop, from the request handler
    assert many == {uvicorn_kind}
    assert sha == hashlib.sha256(payload).hexdigest()
    assert streamed == b"".join(b"%d;" % i for i in range(100))
    assert missing == 404
    assert echoes == ["ABC", "X" * 70_000]


def test_uvicorn_sync_code_in_handlers_waits_concurrently(greenhub_leak_check, monkeypatch):
    # greenhub only: each request's handler calls sync code that waits through
    # greenhub.await_ until all ten handlers wait together: ten requests at once are
    # served together, not one after another.
    import greenhub

    monkeypatch.setattr(sys.modules[__name__], "SYNC_GATHERING", support.Gathering(10))

    async def client(base):
        async with httpx.AsyncClient(base_url=base, timeout=support.hang_timeout(60)) as c:
            replies = await asyncio.gather(*(c.get(f"/sync/{i}") for i in range(10)))
            return [r.text for r in replies]

    with UvicornThread(UVICORN_LOOP["greenhub"]) as srv:
        loop = greenhub.new_event_loop()
        try:
            texts = loop.run_until_complete(client(f"http://127.0.0.1:{srv.port}"))
        finally:
            loop.close()
    assert texts == [str(i * i) for i in range(10)]


APP_MODULE = """
import asyncio


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = type(asyncio.get_running_loop()).__module__.split(".")[0].encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


@pytest.mark.parametrize("loop_option", ["asyncio", "greenhub:new_event_loop"])
def test_uvicorn_command_line_loop_option(tmp_path, loop_option):
    # The documented command: uvicorn --loop greenhub:new_event_loop app:app
    (tmp_path / "app.py").write_text(textwrap.dedent(APP_MODULE))
    uds = str(tmp_path / "uvicorn.sock")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "uvicorn", "--loop", loop_option, "--uds", uds, "app:app"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + support.hang_timeout(30)
        while not os.path.exists(uds) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # a child process: nothing to wait on but its socket file
        assert os.path.exists(uds), proc.stdout.read() if proc.poll() is not None else "no socket"
        with httpx.Client(transport=httpx.HTTPTransport(uds=uds), timeout=30) as c:
            answer = c.get("http://uvicorn/").text
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=support.hang_timeout(30))
    assert answer == loop_option.split(":")[0]
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out


# --- aiohttp: TLS, Unix sockets, client timeouts, sync code in handlers ----------------


def aiohttp_app():
    async def hello(request):
        return web.Response(text=f"hi {request.match_info['n']} from {loop_module()}")

    async def slow(request):
        await asyncio.sleep(3600)  # only a client timeout ends the request
        return web.Response(text="late")

    async def sync_handler(request):
        # aiohttp 3.12+ on Python 3.12/3.13 builds its handler tasks with asyncio.Task()
        # itself, not loop.create_task(), so they are not virtual threads there: the sync
        # part runs as one (docs/recipe-aiohttp.md).
        import greenhub

        n = await greenhub.spawn(sync_lookup, int(request.match_info["n"]))
        return web.Response(text=str(n))

    app = web.Application()
    app.router.add_get("/h/{n}", hello)
    app.router.add_get("/slow", slow)
    app.router.add_get("/sync/{n}", sync_handler)
    return app


async def with_site(make_site, body):
    runner = web.AppRunner(aiohttp_app(), shutdown_timeout=1)
    await runner.setup()
    site = make_site(runner)
    await site.start()
    try:
        return await asyncio.wait_for(body(site), support.hang_timeout(60))
    finally:
        await runner.cleanup()
        await asyncio.get_running_loop().shutdown_default_executor()


def test_aiohttp_over_tls(loop, kind):
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def body(site):
        port = site._server.sockets[0].getsockname()[1]
        conn = aiohttp.TCPConnector(ssl=client_ctx)
        async with aiohttp.ClientSession(connector=conn) as s:
            replies = await asyncio.gather(
                *(s.get(f"https://127.0.0.1:{port}/h/{i}") for i in range(30))
            )
            return [await r.text() for r in replies]

    texts = loop.run_until_complete(
        with_site(lambda r: web.TCPSite(r, "127.0.0.1", 0, ssl_context=server_ctx), body)
    )
    assert texts == [f"hi {i} from {kind}" for i in range(30)]


def test_aiohttp_over_a_unix_socket_and_client_timeouts(loop, kind, tmp_path):
    path = str(tmp_path / "aiohttp.sock")

    async def body(site):
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=path)) as s:
            async with s.get("http://unix/h/7") as r:
                text = await r.text()
            timeout = aiohttp.ClientTimeout(total=0.1)
            deadline = loop.time() + 0.1
            with pytest.raises(asyncio.TimeoutError):
                await s.get("http://unix/slow", timeout=timeout)
            return text, loop.time() >= deadline

    text, not_early = loop.run_until_complete(with_site(lambda r: web.UnixSite(r, path), body))
    assert text == f"hi 7 from {kind}"
    assert not_early  # on the loop's clock


def test_aiohttp_sync_code_in_handlers_waits_concurrently(greenhub_leak_check, monkeypatch):
    # greenhub only: as the uvicorn test above, through aiohttp's server and client; the
    # handler runs its sync code with greenhub.spawn.
    import greenhub

    monkeypatch.setattr(sys.modules[__name__], "SYNC_GATHERING", support.Gathering(10))

    async def body(site):
        port = site._server.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as s:
            replies = await asyncio.gather(
                *(s.get(f"http://127.0.0.1:{port}/sync/{i}") for i in range(10))
            )
            return [await r.text() for r in replies]

    loop = greenhub.new_event_loop()
    try:
        texts = loop.run_until_complete(with_site(lambda r: web.TCPSite(r, "127.0.0.1", 0), body))
    finally:
        loop.close()
    assert texts == [str(i * i) for i in range(10)]
