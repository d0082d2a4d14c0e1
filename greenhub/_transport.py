"""greenhub's socket transport: asyncio's, with the hot paths in C.

``SocketTransport`` is asyncio's own ``_SelectorSocketTransport`` with the C
mixin ``_core._SocketTransportBase`` in front, which replaces the read
callbacks and ``write()`` (see ``src/transport.c``).  Everything else is
asyncio's code, so the transport behaves as the stock loop's on every Python
version, and it is an instance of the same asyncio classes.

``write()`` does not send at once: it queues the data, and the loop sends
each transport's queue with one ``writev()`` at the end of the iteration.
The methods below send the queue wherever asyncio's code would see the
difference - the buffer size, EOF, closing, ``writelines()``, sendfile, the
writer callback's resuming of the protocol, and ``is_closing()``, which
``StreamWriter.drain()`` calls - so no caller can tell the data waited.
(Synchronous code that blocks right after ``transport.write()``, without
``drain()``, waits with the data until the iteration ends.)
"""

import asyncio
import socket
from typing import Any

from . import _core
from ._private import _SelectorSocketTransport

__all__ = ["SocketTransport"]


# typeshed does not declare asyncio's private _SelectorSocketTransport: to mypy the base is
# Any, and this class is checked for its own code only.
class SocketTransport(
    _core._SocketTransportBase,
    _SelectorSocketTransport,  # type: ignore[misc]
):
    def __init__(
        self,
        loop: _core.Loop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        server: asyncio.Server | None = None,
        **context: Any,
    ) -> None:
        # `context` (3.15+: the contextvars.Context the protocol's callbacks run in)
        # goes to asyncio's __init__, which decides whether it takes one.
        self._gh_state = _core.TransportState(loop)
        super().__init__(loop, sock, protocol, waiter, extra, server, **context)

    def is_closing(self) -> bool:
        # StreamWriter.drain() asks this first: once drain() returns, what was written
        # is on the wire, as on the stock loop, whose write() sends at once - code that
        # then blocks (a test reading the peer with a blocking socket) sees it.
        self._gh_flush()
        return super().is_closing()  # type: ignore[no-any-return]

    def get_write_buffer_size(self) -> int:
        self._gh_flush()
        return super().get_write_buffer_size()  # type: ignore[no-any-return]

    def writelines(self, list_of_data: Any) -> None:
        self._gh_flush()
        super().writelines(list_of_data)

    def write_eof(self) -> None:
        self._gh_flush()
        super().write_eof()

    def close(self) -> None:
        self._gh_flush()
        super().close()

    def abort(self) -> None:
        self._gh_flush()
        super().abort()

    def _maybe_resume_protocol(self) -> None:
        # asyncio's writer callback resumes the protocol, which may write,
        # and then closes or shuts down the socket if its buffer is empty:
        # what the protocol wrote must be on the wire (or in that buffer)
        # by then.
        super()._maybe_resume_protocol()
        self._gh_flush()

    def _make_empty_waiter(self) -> asyncio.Future[None]:
        self._gh_flush()
        return super()._make_empty_waiter()  # type: ignore[no-any-return]


# Named as asyncio's class, so reprs and logs read as on the stock loop.
SocketTransport.__name__ = SocketTransport.__qualname__ = "_SelectorSocketTransport"
