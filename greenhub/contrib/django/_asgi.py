"""An ASGI handler that runs Django's sync request path in the request's own task.

Django's ``ASGIHandler`` loads its middleware in async mode and reaches every sync
piece (sync middleware, sync views, ``response.close()``) through
``sync_to_async(thread_sensitive=True)``: a thread per request, and the ORM's waits
block that thread.  On a greenhub loop the request's task is already a virtual
thread, so this handler loads the middleware in *sync* mode - Django's WSGI path,
``BaseHandler.get_response`` - and calls it right in the task.  The ORM's waits are
cooperative (``greenhub.contrib.psycopg``), so they suspend only this request.

Everything that is not the middleware chain follows Django's ``ASGIHandler`` (this
class is a subclass and reuses its request construction, body reading and
error-to-500 handling): the body is read before the request is built,
``request_started`` is sent before and ``request_finished`` after (through
``response.close()``), a client disconnect while the view runs cancels the request
(here the task is cancelled: the view sees ``CancelledError`` at its next wait, and
a running query is cancelled on the server), and streaming responses are sent chunk
by chunk - a sync iterator (``StreamingHttpResponse``, ``FileResponse``) is iterated
in the virtual thread itself, an async one with ``async for``.

Async views and async-only middleware need no thread either: ``install()`` makes
asgiref's ``async_to_sync`` (which Django's sync path uses to call them) a plain
``greenhub.await_()`` inside virtual threads.

Outside a greenhub task (the server runs on another loop) a request goes to Django's
own ``ASGIHandler``, so the application works everywhere and is fast on greenhub.
"""

import asyncio
import logging
from contextlib import aclosing

from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import asgi as django_asgi
from django.core.handlers import base
from django.http import FileResponse
from django.urls import set_script_prefix

from ... import _core
from . import _db

_in_vthread = _core.in_vthread

logger = logging.getLogger("greenhub.contrib.django")


class ASGIHandler(django_asgi.ASGIHandler):
    """Django's ASGI handler with the sync request path run in the request's task."""

    def __init__(self):
        # BaseHandler.__init__, not ASGIHandler's: that one loads async middleware.
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self._stock = None  # Django's own handler, made on first use off greenhub

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if kind != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {kind}.")
        if not _in_vthread():
            if self._stock is None:
                logger.warning(
                    "not running in a greenhub task: requests go through Django's own "
                    "ASGIHandler (sync views in threads); start the server on a greenhub loop"
                )
                self._stock = django_asgi.ASGIHandler()
            await self._stock(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def _lifespan(self, receive, send):
        # Acknowledged, so servers do not log that the app lacks lifespan support; at
        # shutdown the pooled idle connections of this thread are closed.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                _db.close_idle()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(django_asgi.get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            try:
                await self.send_response(error_response, send)
            finally:
                error_response.close()
            return

        task = asyncio.current_task()
        assert task is not None  # (a greenhub task runs this)
        # "sent": the response is out, so a disconnect no longer cancels anything;
        # "left": the watcher cancelled this task because the client disconnected.
        state = {"sent": False, "left": False}
        watcher = asyncio.get_running_loop().create_task(
            self._cancel_on_disconnect(receive, task, state)
        )
        response = None
        try:
            try:
                response = self.get_response(request)
                response._handler_class = self.__class__
                if isinstance(response, FileResponse):
                    response.block_size = self.chunk_size  # the server chunks further
                await self.send_response(response, send)
                state["sent"] = True
            except asyncio.CancelledError:
                if not state["left"]:
                    raise  # not the client's disconnect (e.g. server shutdown)
                task.uncancel()  # the client left: finish quietly, as Django does
        finally:
            watcher.cancel()
            try:
                if response is not None:
                    response.close()  # sends request_finished
                else:
                    signals.request_finished.send(sender=self.__class__)
            finally:
                body_file.close()

    async def _cancel_on_disconnect(self, receive, task, state):
        try:
            await self.listen_for_disconnect(receive)
        except RequestAborted:
            if not state["sent"]:
                state["left"] = True
                task.cancel()
        except AssertionError:
            # A message other than http.disconnect after the body: a server bug, which
            # Django's handler raises; the request itself is not disturbed here.
            logger.exception("unexpected ASGI message while the request ran")

    async def send_response(self, response, send):
        """Send `response` over ASGI: as Django's handler does, except that a sync
        streaming iterator is iterated here, in the virtual thread, not in a thread."""
        headers = [(_encode(k, "ascii"), _encode(v, "latin1")) for k, v in response.items()]
        for cookie in response.cookies.values():
            headers.append((b"Set-Cookie", cookie.output(header="").encode("ascii").strip()))
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        if not response.streaming:
            for chunk, last in self.chunk_bytes(response.content):
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            return
        if response.is_async:
            async with aclosing(aiter(response)) as parts:
                async for part in parts:
                    await self._send_part(part, send)
        else:
            for part in response:
                await self._send_part(part, send)
        await send({"type": "http.response.body"})

    async def _send_part(self, part, send):
        for chunk, _ in self.chunk_bytes(part):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})


def _encode(s, encoding):
    # Header names are ASCII and values latin-1 on the wire, as in Django's handler.
    return bytes(s.encode(encoding) if isinstance(s, str) else s)
