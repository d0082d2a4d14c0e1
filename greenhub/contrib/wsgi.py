"""WSGI applications (Flask, Bottle, Pyramid, ...) on virtual threads, under an ASGI server.

    # app.py
    from flask import Flask
    from greenhub.contrib.wsgi import WSGIMiddleware

    flask_app = Flask(__name__)
    app = WSGIMiddleware(flask_app)

    # then: uvicorn --loop greenhub:new_event_loop app:app
    # (or hypercorn, or gunicorn -k greenhub.contrib.gunicorn.Worker: docs/guide-deploy.md)

The name is the one Starlette and a2wsgi give their adapters, so switching is one import.
What differs is where the application runs.  Thread-pool adapters (asgiref's
``WsgiToAsgi``, a2wsgi, Starlette's) hand each request to an OS thread, and every wait
of the application blocks that thread.  On a greenhub loop each request's ASGI task is
already a virtual thread (greenhub runs every task made by ``loop.create_task`` on a
greenlet), so this adapter calls the WSGI application right there, in the request's own
task: no thread, no pool size to tune.  Where the application waits - on the request
body (``wsgi.input``), on the client to take the response (``send`` with the server's
flow control), or on anything it reaches through ``greenhub.await_()``, green sockets or
``greenhub.monkey`` - only this request's task is suspended and the loop serves the
others.

PEP 3333, as a server implements it:

- ``environ`` from the ASGI scope: ``SCRIPT_NAME`` is the scope's ``root_path`` and
  ``PATH_INFO`` the rest of ``path`` (ASGI servers put the root path in front of
  ``path``; a path that does not start with it is taken whole), both as "bytes in
  latin-1 strings", as PEP 3333 wants; headers become ``HTTP_*`` keys (repeated headers
  joined with ``,``, cookies with ``;``), ``wsgi.input_terminated`` is true (the input
  ends where the body ends, so a chunked upload without Content-Length reads fine).
- ``wsgi.input`` streams: ``read()``, ``readline()``, ``readlines()`` and iteration
  take the body from the server as it arrives, one ``receive()`` at a time, each a
  cooperative wait; nothing is buffered beyond what a call asks for plus one message.
- ``start_response(status, headers, exc_info=None)`` checks its arguments (str status,
  a list of (str, str) tuples, latin-1 only) and returns ``write()``; a second call is
  allowed only with ``exc_info``, which replaces the status and headers while nothing
  was sent and re-raises ``exc_info`` once they were.  The status line and headers go
  out with the first non-empty body chunk (or ``write()``), or at the end for an empty
  body.
- The response streams: each chunk the iterable yields is sent as it comes (a list or
  tuple - the common case, Flask's - goes out in as few messages as it has items), and
  each send waits while the client does not keep up.  Framing (Content-Length or chunked
  transfer encoding, HEAD) is the server's business.
- ``close()`` of the iterable is always called: after the last chunk, after an error,
  and when the request is cancelled.
- An exception before the headers went out is logged (logger ``greenhub.contrib.wsgi``)
  and answered with a 500; after, it propagates to the server, which aborts the
  connection - the client sees a truncated response, which is the only honest signal
  left.  ``wsgi.errors`` is ``sys.stderr``.
- A client that disconnects cancels the request's task: the application sees
  ``asyncio.CancelledError`` at its next wait (a ``wsgi.input`` read, a send, an
  ``await_``), its iterable is closed, and the request ends quietly.

On a greenhub loop whose server makes its request tasks some other way than
``loop.create_task`` (so they are not virtual threads), the application runs in a
virtual thread started for it with ``greenhub.spawn``.  On any other loop it raises
RuntimeError: there is no thread pool to fall back to, on purpose.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from types import TracebackType
from typing import Any, TypeAlias

from .. import _core, _vthread

__all__ = ["WSGIMiddleware"]

# The shapes of WSGI and ASGI, spelled out here rather than imported from
# _typeshed.wsgi or asgiref.typing: the module imports nothing optional.
ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType | None]
OptExcInfo: TypeAlias = ExcInfo | tuple[None, None, None]
WriteCallable: TypeAlias = Callable[[bytes], object]
StartResponse: TypeAlias = Callable[..., WriteCallable]
Environ: TypeAlias = dict[str, Any]
WSGIApplication: TypeAlias = Callable[[Environ, StartResponse], Iterable[bytes]]
Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("greenhub.contrib.wsgi")

_await = _core.await_
_in_vthread = _core.in_vthread

_ERROR_BODY = b"Internal Server Error"
_ERROR_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_ERROR_BODY)).encode("ascii")),
]


class WSGIMiddleware:
    """An ASGI application that serves the WSGI application `app`, each request in its
    own virtual thread (module docstring).  `errors`: the ``wsgi.errors`` stream
    (default ``sys.stderr``)."""

    def __init__(self, app: WSGIApplication, *, errors: Any = None) -> None:
        if not callable(app):
            raise TypeError(f"WSGIMiddleware needs a WSGI application (a callable), got {app!r}")
        self.app = app
        self.errors = errors

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} app={self.app!r}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            # A WebSocket or another protocol: WSGI has nothing to serve it with.  The
            # server closes the connection (a WebSocket handshake gets a 403/500).
            raise ValueError(f"a WSGI application serves HTTP only, not {kind!r}")
        request = _Request(self, scope, receive, send)
        if _in_vthread():
            request.run()
            return
        loop = asyncio.get_running_loop()
        if not isinstance(loop, _core.Loop):
            raise RuntimeError(
                f"greenhub.contrib.wsgi runs WSGI applications on virtual threads, which "
                f"need a greenhub event loop, but the server runs {type(loop).__name__}: "
                f"start it on greenhub (e.g. uvicorn --loop greenhub:new_event_loop)"
            )
        # A greenhub loop, but a task not made by create_task: the request gets a
        # virtual thread of its own.  Cancelling this task cancels it (await of a task).
        await _vthread.spawn(request.run)


async def _lifespan(receive: Receive, send: Send) -> None:
    # WSGI has no startup or shutdown hooks: both are acknowledged at once, so servers
    # neither wait nor log that the application does not speak lifespan.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _Request:
    """One request: the environ, start_response, write, the response loop.  Runs
    synchronously in a virtual thread: every ASGI call goes through await_()."""

    def __init__(self, owner: WSGIMiddleware, scope: Scope, receive: Receive, send: Send):
        self.owner = owner
        self.scope = scope
        self._receive = receive
        self._send = send
        self.input = WSGIInput(self)
        self.status: int | None = None  # set by start_response
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_sent = False
        self.finished = False  # the last body message went out
        self.task: asyncio.Task[Any] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.left = False  # the client disconnected
        self.cancelled = False  # ... and the watcher cancelled the task for it

    # -- ASGI calls, each a cooperative wait of this virtual thread --------------------

    def receive(self) -> Message:
        return _await(self._receive())

    def send(self, message: Message) -> None:
        _await(self._send(message))

    def body_complete(self) -> None:
        """The whole request body was received: from now on the only message the
        server can send is ``http.disconnect``, which a watcher task waits for."""
        if self.watcher is None and self.task is not None and not self.finished:
            loop = asyncio.get_running_loop()
            self.watcher = loop.create_task(self._watch_disconnect(self.task))

    async def _watch_disconnect(self, task: asyncio.Task[Any]) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                break
        if not self.finished:
            self.left = self.cancelled = True
            task.cancel()

    # -- the request ------------------------------------------------------------------

    def run(self) -> None:
        self.task = asyncio.current_task()
        try:
            first = self.receive()  # the first body message: empty for most requests
            if first["type"] == "http.disconnect":
                return
            self.input.feed(first)
            environ = self.environ()
            self.respond(environ)
        except asyncio.CancelledError:
            if not self.left:
                raise  # not the client's doing (the server shuts down): propagate
            if self.cancelled and self.task is not None:
                self.task.uncancel()  # the client left: the request ends quietly
        finally:
            if self.watcher is not None:
                self.watcher.cancel()

    def respond(self, environ: Environ) -> None:
        result: Iterable[bytes] | None = None
        try:
            result = self.owner.app(environ, self.start_response)
            if isinstance(result, (list, tuple)):
                # Known length: the last item goes out with more_body=False.
                last = len(result) - 1
                for i, chunk in enumerate(result):
                    self.write_chunk(chunk, more=i < last)
            else:
                for chunk in result:
                    self.write_chunk(chunk, more=True)
            if not self.finished:
                self.finish()
        except BaseException as exc:
            if self.headers_sent or not isinstance(exc, Exception):
                # Too late for a 500 (or a KeyboardInterrupt/SystemExit): the server
                # logs it and aborts the connection.
                raise
            logger.error("exception in WSGI application %r", self.owner.app, exc_info=exc)
            self.status, self.headers = 500, list(_ERROR_HEADERS)
            self.headers_sent = True
            self.send({"type": "http.response.start", "status": 500, "headers": self.headers})
            self.finished = True
            self.send({"type": "http.response.body", "body": _ERROR_BODY})
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> WriteCallable:
        if exc_info is not None and exc_info[0] is not None:
            try:
                if self.headers_sent:
                    # PEP 3333: too late to change anything; the error goes on up.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no frame -> traceback -> frame cycle
        elif self.status is not None:
            raise AssertionError("start_response() called a second time without exc_info")
        code = _check_status(status)
        encoded = _check_headers(headers)
        self.status, self.headers = code, encoded
        return self.write

    def write(self, data: bytes) -> None:
        """PEP 3333's write(): the legacy imperative body, sent at once."""
        if self.status is None:
            raise AssertionError("write() called before start_response()")
        self.write_chunk(data, more=True)

    def write_chunk(self, chunk: bytes, *, more: bool) -> None:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise TypeError(f"a WSGI application must produce bytes, not {type(chunk).__name__}")
        if not chunk and more:
            return  # PEP 3333: empty chunks send nothing, not even the headers
        self.send_headers()
        if not more:
            self.finished = True
        self.send({"type": "http.response.body", "body": bytes(chunk), "more_body": more})

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        if self.status is None:
            raise AssertionError("the WSGI application produced a body before start_response()")
        self.headers_sent = True
        self.send({"type": "http.response.start", "status": self.status, "headers": self.headers})

    def finish(self) -> None:
        self.send_headers()
        self.finished = True
        self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def environ(self) -> Environ:
        scope = self.scope
        root_path: str = scope.get("root_path", "")
        path: str = scope["path"]
        if root_path and (path == root_path or path.startswith(root_path + "/")):
            path = path[len(root_path) :]
        server = scope.get("server") or ("localhost", 80)
        environ: Environ = {
            "REQUEST_METHOD": scope["method"],
            "SCRIPT_NAME": _latin1(root_path),
            "PATH_INFO": _latin1(path),
            "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
            "SERVER_NAME": str(server[0]),
            "SERVER_PORT": str(server[1] if server[1] is not None else 80),
            "SERVER_PROTOCOL": "HTTP/" + scope.get("http_version", "1.1"),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.get("scheme", "http"),
            "wsgi.input": self.input,
            "wsgi.errors": self.owner.errors if self.owner.errors is not None else sys.stderr,
            # Requests of one process run concurrently (virtual threads): shared state
            # needs the care it needs under threads.
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }
        client = scope.get("client")
        if client:
            environ["REMOTE_ADDR"] = str(client[0])
            environ["REMOTE_PORT"] = str(client[1])
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").upper().replace("-", "_")
            value = raw_value.decode("latin-1")
            if name == "CONTENT_LENGTH" or name == "CONTENT_TYPE":
                key = name
            else:
                key = "HTTP_" + name
            if key in environ:
                value = environ[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
            environ[key] = value
        return environ


class WSGIInput:
    """``wsgi.input``: the request body, read from the server as the application asks
    for it.  Each read that needs more data waits for the next ``http.request``
    message, suspending only the request's virtual thread."""

    def __init__(self, request: _Request) -> None:
        self._request = request
        self._buffer = bytearray()
        self._more = True  # more body messages to come

    def feed(self, message: Message) -> None:
        if message["type"] == "http.disconnect":
            # The client left while the body was read: the virtual thread is
            # cancelled here, where it waits, as the watcher cancels it later on.
            self._more = False
            self._request.left = True
            raise asyncio.CancelledError("the client disconnected")
        self._buffer += message.get("body", b"")
        if not message.get("more_body", False):
            self._more = False
            self._request.body_complete()

    def _fill(self) -> bool:
        """Receive one more message; False at the end of the body."""
        if not self._more:
            return False
        self.feed(self._request.receive())
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            size = len(self._buffer)
        else:
            while len(self._buffer) < size and self._fill():
                pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end >= 0:
                n = end + 1
                break
            if 0 <= limit <= len(self._buffer):
                n = limit
                break
            start = len(self._buffer)
            if not self._fill():
                n = len(self._buffer)
                break
        if 0 <= limit < n:
            n = limit
        return self._take(n)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                break
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data


def _latin1(text: str) -> str:
    # PEP 3333's "native strings" for paths: the URL's bytes (ASGI decoded them as
    # UTF-8) seen as latin-1.
    return text.encode("utf-8").decode("latin-1")


def _check_status(status: object) -> int:
    if not isinstance(status, str):
        raise TypeError(f"the WSGI status must be a str, not {type(status).__name__}")
    code = status[:3]
    if len(status) < 4 or not code.isdigit() or status[3] != " ":
        raise ValueError(f"a WSGI status is '<3 digits> <reason>', not {status!r}")
    return int(code)


def _check_headers(headers: object) -> list[tuple[bytes, bytes]]:
    if type(headers) is not list:
        raise TypeError(f"WSGI response headers must be a list, not {type(headers).__name__}")
    encoded = []
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"a WSGI response header must be a (name, value) tuple, not {item!r}")
        name, value = item
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"WSGI response header names and values must be str: {item!r}")
        encoded.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return encoded
