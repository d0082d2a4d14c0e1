"""greenhub.contrib.wsgi: WSGI applications (real Flask, and bare PEP 3333 apps) served by
uvicorn, each request in its own virtual thread.

Every server test runs twice: on greenhub through ``WSGIMiddleware``, and on the stock
loop through a2wsgi's ``WSGIMiddleware`` (a thread pool, streaming both ways), the
adapter people use there; both must answer the same.  (asgiref's ``WsgiToAsgi`` was the
first choice; served from a thread by uvicorn it fails now and then with "CurrentThreadExecutor
already quit or is broken" and once returned a corrupted 8 MiB body, so it cannot be a
reference.)  Where only virtual threads can do what is tested (overlapping waits in one
OS thread, cancelling a request whose client left) or a2wsgi departs from PEP 3333 (a
chunked upload, the headers sent by start_response() itself), the test runs on greenhub
alone.  The ``wsgi.input`` file protocol is checked against
``io.BytesIO`` by driving the ASGI application directly.
"""

import asyncio
import concurrent.futures
import hashlib
import io
import json
import os
import socket
import sys
import threading

import pytest
import support

import greenhub
from greenhub import _core

uvicorn = pytest.importorskip("uvicorn", reason="test dependency: make deps installs it")
httpx = pytest.importorskip("httpx", reason="test dependency: make deps installs it")
flask = pytest.importorskip("flask", reason="test dependency: make deps installs it")
a2wsgi = pytest.importorskip("a2wsgi", reason="test dependency: make deps installs it")

from greenhub.contrib.wsgi import WSGIMiddleware  # noqa: E402

UVICORN_LOOP = {"asyncio": "asyncio", "greenhub": "greenhub:new_event_loop"}
PATIENCE = support.hang_timeout(30)


def wait_for(fut):
    """Wait, from a WSGI application, for a concurrent.futures.Future the test sets:
    in a virtual thread cooperatively, in asgiref's worker thread by blocking it."""
    if _core.in_vthread():
        return greenhub.await_(asyncio.wait_for(asyncio.wrap_future(fut), PATIENCE))
    return fut.result(PATIENCE)


def where():
    return {
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0]
        if _core.in_vthread()
        else "thread",
        "vthread": _core.in_vthread(),
        "thread": threading.get_ident(),
    }


class State:
    """What a test shares with the application: futures either side sets, a log."""

    def __init__(self):
        self.futures = {}
        self.log = []
        self.gathering = None

    def future(self, name):
        return self.futures.setdefault(name, concurrent.futures.Future())


def make_flask(state):
    from flask import Flask, Response, request, stream_with_context, url_for

    app = Flask(__name__)

    @app.get("/where")
    def where_view():
        return where()

    @app.route("/echo", methods=["GET", "POST"])
    def echo():
        return {"args": request.args.to_dict(), "body": request.get_data().decode("latin-1"),
                "type": request.content_type}

    @app.post("/sha")
    def sha():
        h = hashlib.sha256()
        n = 0
        while chunk := request.stream.read(65536):
            h.update(chunk)
            n += len(chunk)
        return {"sha": h.hexdigest(), "n": n}

    @app.post("/lines")
    def lines():
        return {"lines": [len(line) for line in request.stream]}

    @app.post("/interleaved")
    def interleaved():
        # The body's first line is here while the client still holds the rest back.
        first = request.stream.readline()
        state.future("read first line").set_result(first)
        return {"first": first.decode(), "rest": request.stream.read().decode()}

    @app.get("/stream")
    def stream():
        def chunks():
            yield "first;"
            # The client sets this only once it has received "first;": the chunk was
            # sent while the generator was suspended, not buffered until the end.
            wait_for(state.future("client got first"))
            for i in range(100):
                yield f"{i};"

        return Response(stream_with_context(chunks()))

    @app.get("/big")
    def big():
        block = bytes(range(256)) * 256  # 64 KiB

        def blocks():
            for _ in range(128):  # 8 MiB: far over any socket buffer, so sends must wait
                yield block

        return Response(blocks(), mimetype="application/octet-stream")

    @app.get("/slow/<int:n>")
    def slow(n):
        # A slow request: sync code that waits (a database, a remote API) until every
        # request of the test waits with it.
        arrived = greenhub.await_(state.gathering.wait())
        return {"n": n, "arrived": arrived, **where()}

    @app.get("/hang")
    def hang():
        def body():
            try:
                yield b"x" * 10
                state.future("streaming").set_result(True)
                while True:  # an endless stream to a client that leaves
                    greenhub.await_(asyncio.sleep(0))
                    yield b"y" * 65536
            except BaseException as exc:
                state.log.append(("stream stopped by", type(exc).__name__))
                raise
            finally:
                state.log.append("generator closed")

        return Response(body())

    @app.get("/wait")
    def wait_view():
        state.future("waiting").set_result(True)
        try:
            greenhub.await_(asyncio.Event().wait())  # only a cancel ends this
        except BaseException as exc:
            state.log.append(("view interrupted by", type(exc).__name__))
            raise
        return "never"

    @app.post("/upload")
    def upload():
        state.future("reading").set_result(True)
        try:
            request.stream.read()
        except BaseException as exc:
            state.log.append(("read interrupted by", type(exc).__name__))
            raise
        return "never"

    @app.get("/script")
    def script():
        return {"root": request.script_root, "path": request.path, "url": url_for("where_view")}

    @app.get("/boom")
    def boom():
        raise RuntimeError("view failed")

    return app


class Closing:
    """A response iterable with close(), as PEP 3333 servers must call it."""

    def __init__(self, log, chunks, fail_at=None):
        self.log, self.chunks, self.fail_at = log, chunks, fail_at

    def __iter__(self):
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise RuntimeError("iteration failed")
            yield chunk

    def close(self):
        self.log.append("closed")


def make_bare_app(state):
    """PEP 3333 corner cases, without a framework in between."""

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        headers = [("Content-Type", "text/plain")]
        if path == "/before":
            raise RuntimeError("failed before start_response")
        if path == "/exc_info":
            start_response("200 OK", headers)
            try:
                raise ValueError("changed its mind")
            except ValueError:
                start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
            return [b"handled"]
        if path == "/after":
            start_response("200 OK", headers)
            return Closing(state.log, [b"partial", b"never"], fail_at=1)
        if path == "/late_exc_info":

            def late():
                yield b"partial"
                try:
                    raise ValueError("too late")
                except ValueError:
                    start_response("500 Oops", headers, sys.exc_info())
                yield b"never"

            start_response("200 OK", headers)
            return late()
        if path == "/twice":
            start_response("200 OK", headers)
            start_response("201 Created", headers)
            return [b"never"]
        if path == "/write":
            write = start_response("200 OK", headers)
            write(b"a")
            write(b"b")
            return Closing(state.log, [b"c", b"", b"d"])
        if path == "/closing":
            start_response("200 OK", headers)
            return Closing(state.log, [b"one", b"two"])
        if path == "/failing_closing":
            start_response("200 OK", headers)
            return Closing(state.log, [b"one", b"two"], fail_at=0)
        if path == "/latin1":
            start_response("200 OK", [("X-Latin", "caf\xe9"), *headers])
            return [environ["HTTP_X_LATIN"].encode("latin-1")]
        if path == "/not_latin1":
            start_response("200 OK", [("X-Euro", "\u20ac")])
            return [b"never"]
        if path == "/not_bytes":
            start_response("200 OK", headers)
            return ["text"]
        if path == "/environ":
            keys = ["REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING",
                    "SERVER_PROTOCOL", "CONTENT_TYPE", "CONTENT_LENGTH", "HTTP_X_TWICE",
                    "HTTP_HOST", "wsgi.url_scheme", "wsgi.version"]
            seen = {k: environ.get(k) for k in keys}
            seen["errors"] = callable(environ["wsgi.errors"].write)
            seen["body"] = environ["wsgi.input"].read().decode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(seen).encode()]
        start_response("404 Not Found", headers)
        return [b"not found"]

    return app


class Served:
    """uvicorn serving `wsgi_app` in a thread, on a pre-bound socket: on greenhub
    through WSGIMiddleware, on the stock loop through asgiref's WsgiToAsgi."""

    def __init__(self, kind, wsgi_app, **config):
        self.kind = kind
        self.started = threading.Event()
        adapter = WSGIMiddleware(wsgi_app) if kind == "greenhub" else a2wsgi.WSGIMiddleware(wsgi_app)
        started = self.started

        async def asgi(scope, receive, send):
            if scope["type"] == "lifespan":  # asgiref's adapter speaks HTTP only
                while True:
                    msg = await receive()
                    if msg["type"] == "lifespan.startup":
                        self.server_thread = threading.get_ident()
                        await send({"type": "lifespan.startup.complete"})
                        started.set()
                    else:
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            await adapter(scope, receive, send)

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(100)  # connections wait in the backlog until uvicorn accepts
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(asgi, loop=UVICORN_LOOP[kind], lifespan="on",
                             log_level=os.environ.get("WSGI_TEST_LOG", "critical"), **config)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self):
        self.thread.start()
        assert self.started.wait(PATIENCE), "uvicorn did not start"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(PATIENCE)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def client(self):
        return httpx.Client(base_url=self.base, timeout=PATIENCE)


@pytest.fixture(params=support.LOOP_KINDS)
def kind(request):
    if request.param == "greenhub":
        request.getfixturevalue("greenhub_leak_check")
    return request.param


@pytest.fixture
def greenhub_only(greenhub_leak_check):
    return "greenhub"


# --- Flask -------------------------------------------------------------------------


def test_flask_get_and_post(kind):
    state = State()
    with Served(kind, make_flask(state)) as srv, srv.client() as c:
        here = c.get("/where").json()
        got = c.get("/echo", params={"q": "a b", "r": "\xe9"}).json()
        posted = c.post("/echo", data={"name": "x y"}).json()
        raw = c.post("/echo", content=b"\x00\xff raw", headers={"Content-Type": "x/y"}).json()
        empty = c.post("/echo", content=b"").json()
        lines = c.post("/lines", content=b"one\ntwo two\n\nlast").json()
        boom = c.get("/boom")
    if kind == "greenhub":
        # In the request's own task, on the server's loop and OS thread.
        assert here == {"loop": "greenhub", "vthread": True, "thread": srv.server_thread}
    else:
        assert here["vthread"] is False and here["thread"] != srv.server_thread
    assert got == {"args": {"q": "a b", "r": "\xe9"}, "body": "", "type": None}
    assert posted == {"args": {}, "body": "name=x+y", "type": "application/x-www-form-urlencoded"}
    assert raw == {"args": {}, "body": "\x00\xff raw", "type": "x/y"}
    assert empty["body"] == ""
    assert lines == {"lines": [4, 8, 1, 4]}
    assert boom.status_code == 500  # Flask's own error page


def test_flask_large_bodies_both_ways(kind):
    payload = bytes(range(251)) * (6 * 1024 * 1024 // 251)  # ~6 MiB
    want = {"sha": hashlib.sha256(payload).hexdigest(), "n": len(payload)}

    def chunked():  # no Content-Length: chunked transfer encoding
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    with Served(kind, make_flask(State())) as srv, srv.client() as c:
        sized = c.post("/sha", content=payload).json()
        # Chunked (no Content-Length): a2wsgi does not set wsgi.input_terminated, so
        # Flask reads the body as empty there; greenhub's only.
        streamed = c.post("/sha", content=chunked()).json() if kind == "greenhub" else want
        with c.stream("GET", "/big") as r:
            h = hashlib.sha256()
            for chunk in r.iter_bytes():
                h.update(chunk)
            big_headers = r.headers
    assert sized == want
    assert streamed == want
    assert h.hexdigest() == hashlib.sha256(bytes(range(256)) * 256 * 128).hexdigest()
    assert big_headers.get("transfer-encoding") == "chunked"  # the server framed it


def test_flask_streaming_response_sends_each_chunk_as_it_comes(kind):
    state = State()
    with Served(kind, make_flask(state)) as srv, srv.client() as c:
        with c.stream("GET", "/stream") as r:
            parts = r.iter_raw()
            first = next(parts)
            # Only now may the generator go on (it waits for this).
            state.future("client got first").set_result(True)
            rest = b"".join(parts)
    assert first == b"first;"
    assert rest == b"".join(b"%d;" % i for i in range(100))


def test_flask_streaming_request_body_is_read_as_it_arrives(greenhub_only):
    # A chunked upload (no Content-Length).  a2wsgi does not set wsgi.input_terminated,
    # so under it Flask reads such a body as empty: greenhub only.
    state = State()

    def body():
        yield b"line one\n"
        # The view read the first line while the rest is still held back here.
        state.future("read first line").result(PATIENCE)
        yield b"and the "
        yield b"rest"

    with Served("greenhub", make_flask(state)) as srv, srv.client() as c:
        reply = c.post("/interleaved", content=body()).json()
    assert reply == {"first": "line one\n", "rest": "and the rest"}


def test_flask_slow_requests_overlap_on_one_loop(greenhub_only):
    # Ten requests whose views each wait until all ten wait at once: served together,
    # each in its own virtual thread, all in the server's one OS thread.
    state = State()
    state.gathering = support.Gathering(10)

    async def client(base):
        async with httpx.AsyncClient(base_url=base, timeout=PATIENCE) as c:
            return await asyncio.gather(*(c.get(f"/slow/{i}") for i in range(10)))

    with Served("greenhub", make_flask(state)) as srv:
        replies = asyncio.run(client(srv.base))
        server_thread = srv.server_thread
    seen = [r.json() for r in replies]
    assert [s["n"] for s in seen] == list(range(10))
    assert {s["thread"] for s in seen} == {server_thread}
    assert all(s["vthread"] and s["loop"] == "greenhub" for s in seen)
    assert max(s["arrived"] for s in seen) == 10


def test_flask_script_name_from_root_path(kind):
    with Served(kind, make_flask(State()), root_path="/api") as srv, srv.client() as c:
        # uvicorn puts root_path in front of the path a (prefix-stripping) proxy sent.
        reply = c.get("/script").json()
    assert reply == {"root": "/api", "path": "/script", "url": "/api/where"}


# --- client disconnects (greenhub only: asgiref's threads cannot be interrupted) -----


def raw_request(port, head, body=b""):
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE)
    sock.sendall(head + body)
    return sock


def test_disconnect_cancels_a_waiting_view(greenhub_only):
    state = State()
    with Served("greenhub", make_flask(state)) as srv:
        sock = raw_request(srv.port, b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        state.future("waiting").result(PATIENCE)
        sock.close()
        with srv.client() as c:  # the server carries on
            assert c.get("/where").json()["vthread"] is True
        srv.server.should_exit = True
    assert state.log == [("view interrupted by", "CancelledError")]


def test_disconnect_stops_a_streaming_response_and_closes_it(greenhub_only):
    state = State()
    with Served("greenhub", make_flask(state)) as srv:
        sock = raw_request(srv.port, b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        state.future("streaming").result(PATIENCE)
        sock.recv(100)
        sock.close()
    # The generator was interrupted where it waited and closed (Flask's response
    # close() closes it); the server stopped only after the request ended.
    assert state.log in (
        [("stream stopped by", "CancelledError"), "generator closed"],
        [("stream stopped by", "GeneratorExit"), "generator closed"],
    )


def test_disconnect_while_the_body_is_read(greenhub_only):
    state = State()
    with Served("greenhub", make_flask(state)) as srv:
        sock = raw_request(
            srv.port,
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
            b"only ten b",
        )
        state.future("reading").result(PATIENCE)
        sock.close()
    assert state.log == [("read interrupted by", "CancelledError")]


# --- PEP 3333 on a bare application -------------------------------------------------


def test_pep3333_common_cases(kind):
    # What every adapter agrees on (a2wsgi, the stock loop's, included).
    state = State()
    with Served(kind, make_bare_app(state)) as srv, srv.client() as c:
        before = c.get("/before")
        write = c.get("/write")
        closing = c.get("/closing")
        latin1 = c.get("/latin1", headers={"X-Latin": b"na\xefve"})
    assert (before.status_code, before.text) == (500, "Internal Server Error")
    assert write.text == "abcd"
    assert closing.text == "onetwo"
    assert latin1.content == b"na\xefve"
    assert (b"x-latin", b"caf\xe9") in [(k.lower(), v) for k, v in latin1.headers.raw]
    assert state.log == ["closed"] * 2  # /write, /closing


def test_pep3333_start_response_and_errors(greenhub_only):
    # The corner cases a2wsgi does not follow (it sends the headers from
    # start_response(), so a later exc_info or an error before the first chunk cannot
    # become a 500, and it never re-raises a late exc_info): PEP 3333's rules here.
    state = State()
    with Served("greenhub", make_bare_app(state)) as srv, srv.client() as c:
        exc_info = c.get("/exc_info")
        twice = c.get("/twice")
        not_latin1 = c.get("/not_latin1")
        not_bytes = c.get("/not_bytes")
        failing_closing = c.get("/failing_closing")
        aborted = []
        for path in ("/after", "/late_exc_info"):
            with c.stream("GET", path) as r:
                parts = r.iter_raw()
                aborted.append((r.status_code, next(parts)))
                with pytest.raises(httpx.RemoteProtocolError):
                    for _ in parts:
                        pass
    # Nothing was sent yet: exc_info replaced the status and headers.
    assert (exc_info.status_code, exc_info.text) == (500, "handled")
    assert exc_info.headers["content-type"] == "text/plain"
    # Misuse found before the headers went out: a 500.
    assert twice.status_code == 500
    assert not_latin1.status_code == 500
    assert not_bytes.status_code == 500
    assert failing_closing.status_code == 500
    # Headers went out with the first chunk; then the failure (or exc_info re-raised by
    # start_response) cut the connection: no terminating chunk.
    assert aborted == [(200, b"partial"), (200, b"partial")]
    # close() after an error too: /failing_closing, /after.
    assert state.log == ["closed"] * 2


def test_pep3333_environ(kind):
    with Served(kind, make_bare_app(State()), root_path="/app") as srv, srv.client() as c:
        seen = c.post(
            "/environ",
            params={"a": "1", "b": "\xe9"},
            content=b"the body",
            headers=[("X-Twice", "1"), ("X-Twice", "2"), ("Content-Type", "text/x")],
        ).json()
        plain = c.get("/environ").json()
    host = f"127.0.0.1:{srv.port}"
    assert seen == {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/app",
        "PATH_INFO": "/environ",
        "QUERY_STRING": "a=1&b=%C3%A9",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "text/x",
        "CONTENT_LENGTH": "8",
        "HTTP_X_TWICE": "1,2",
        "HTTP_HOST": host,
        "wsgi.url_scheme": "http",
        "wsgi.version": [1, 0],
        "errors": True,
        "body": "the body",
    }
    assert plain["REQUEST_METHOD"] == "GET" and plain["body"] == ""


# --- the ASGI application driven directly -------------------------------------------


def drive(loop, asgi, messages, path="/", make_task=None):
    """Call `asgi` for one request whose body arrives as `messages`; return what it
    sent.  After the body, receive() waits until the response is complete, as servers'
    does."""
    sent = []
    done = asyncio.Event()
    queue = list(messages)

    async def receive():
        if queue:
            await asyncio.sleep(0)
            return queue.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [], "http_version": "1.1", "scheme": "http"}

    async def main():
        coro = asgi(scope, receive, send)
        task = make_task(coro) if make_task else asyncio.get_running_loop().create_task(coro)
        await task
        await asyncio.sleep(0)  # the disconnect watcher's cancellation runs

    loop.run_until_complete(main())
    return sent


READS = [
    ("read", 3), ("readline", -1), ("readline", 2), ("readline", None), ("read", 0),
    ("readlines", 5), ("read", 4), ("iter", None), ("readline", -1), ("read", -1),
]
BODY = b"abcdef\nxy\nlonger line here\n\nshort\nmore text\nfinal line\nno newline at end"


def file_ops(f):
    out = []
    for op, arg in READS:
        if op == "iter":
            out.append([next(f)])
        elif op == "readlines":
            out.append(f.readlines(arg))
        else:
            out.append(getattr(f, op)(arg))
    out.append(f.readlines())
    out.append(list(f))
    out.append(f.read())
    return out


@pytest.mark.parametrize("split", [1, 5, len(BODY)])
def test_wsgi_input_reads_as_a_file_does(split, greenhub_only):
    # Whatever way the body arrives, wsgi.input answers each call as a BytesIO of the
    # whole body does.
    results = []

    def app(environ, start_response):
        results.append(file_ops(environ["wsgi.input"]))
        start_response("200 OK", [])
        return [b"ok"]

    chunks = [BODY[i : i + split] for i in range(0, len(BODY), split)]
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    loop = greenhub.new_event_loop()
    try:
        sent = drive(loop, WSGIMiddleware(app), messages)
    finally:
        loop.close()
    assert results == [file_ops(io.BytesIO(BODY))]
    assert sent[-1] == {"type": "http.response.body", "body": b"ok", "more_body": False}


def test_needs_a_greenhub_loop_and_makes_its_own_virtual_thread(greenhub_only):
    def app(environ, start_response):
        start_response("200 OK", [("X-Where", json.dumps(where()))])
        return [b""]

    one = [{"type": "http.request", "body": b"", "more_body": False}]
    stock = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="need a greenhub event loop"):
            drive(stock, WSGIMiddleware(app), one)
    finally:
        stock.close()
    loop = greenhub.new_event_loop()
    try:
        # A task not made by loop.create_task (as some servers make them) is no virtual
        # thread: the request gets one of its own.
        sent = drive(loop, WSGIMiddleware(app), one, make_task=lambda c: asyncio.Task(c))
    finally:
        loop.close()
    seen = json.loads(dict(sent[0]["headers"])[b"x-where"])
    assert seen["vthread"] is True and seen["loop"] == "greenhub"
    assert sent[1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_lifespan_is_acknowledged_and_websockets_refused(greenhub_only):
    asgi = WSGIMiddleware(lambda environ, start_response: [])
    sent = []
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive():
        return incoming.pop(0)

    async def send(message):
        sent.append(message["type"])

    async def main():
        await asgi({"type": "lifespan"}, receive, send)
        with pytest.raises(ValueError, match="HTTP only"):
            await asgi({"type": "websocket"}, receive, send)

    loop = greenhub.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    with pytest.raises(TypeError, match="WSGI application"):
        WSGIMiddleware("not an app")
