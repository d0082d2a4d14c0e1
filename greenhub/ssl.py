"""greenhub.ssl: TLS over greenhub sockets, cooperative inside virtual threads.

``greenhub.ssl.SSLContext`` is a ``ssl.SSLContext`` whose ``wrap_socket()``
returns ``greenhub.ssl.SSLSocket`` objects: ``ssl.SSLSocket`` on top of a
``greenhub.socket.socket``.  The fd stays non-blocking, so OpenSSL answers
"want read" / "want write" instead of blocking; the handshake, reads, writes
and ``unwrap()`` then wait for the fd - suspending only the calling virtual
thread inside one, in ``poll()`` elsewhere - and try again, within the
socket's timeout (``TimeoutError("The read operation timed out")`` and its
siblings, as ssl raises them).  Anything else is ssl's own code.

``create_default_context()`` returns a greenhub ``SSLContext``; every other
name of the ``ssl`` module is re-exported unchanged.
"""

from __future__ import annotations

import ssl as _ssl
from collections.abc import Callable
from ssl import Purpose, SSLWantReadError, SSLWantWriteError
from typing import TYPE_CHECKING, Any

if not TYPE_CHECKING:
    # This module is a drop-in for ssl (type checkers see this import at the end of
    # the module, as in greenhub.socket).
    from ssl import *  # noqa: F403

from . import socket as _gsocket

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, StrOrBytesPath

# ssl.wrap_socket() (3.11 only, deprecated) would make a stock SSLContext:
# use SSLContext.wrap_socket() or create_default_context().
globals().pop("wrap_socket", None)

__all__ = [
    name
    for name, value in vars(_ssl).items()
    if not name.startswith("_")
    and not isinstance(value, type(_ssl))
    and getattr(value, "__module__", None) not in ("socket", "_socket")
    and name != "wrap_socket"
]


# (ssl.SSLSocket's accept() comes first in the MRO, and returns SSL sockets.)
class SSLSocket(_ssl.SSLSocket, _gsocket.socket):  # type: ignore[misc]
    """An ``ssl.SSLSocket`` whose waits suspend only the calling virtual thread."""

    def _gh_ssl(self, what: str | None, call: Callable[..., Any], *args: Any) -> Any:
        """call(*args), waiting for the fd while OpenSSL wants to read or write."""
        timeout = self._gh_timeout
        if timeout == 0.0:
            return call(*args)
        deadline = None
        while True:
            try:
                return call(*args)
            except SSLWantReadError:
                write = False
            except SSLWantWriteError:
                write = True
            try:
                deadline = self._gh_wait(write, timeout, deadline)
            except TimeoutError:
                op = what or ("write" if write else "read")
                raise TimeoutError(f"The {op} operation timed out") from None

    def do_handshake(self, block: bool = False) -> None:
        """As ssl.SSLSocket.do_handshake()."""
        self._check_connected()  # type: ignore[attr-defined]
        timeout = self._gh_timeout
        if timeout == 0.0 and block:
            timeout = None
        saved, self._gh_timeout = self._gh_timeout, timeout
        try:
            self._gh_ssl("handshake", self._sslobj.do_handshake)  # type: ignore[attr-defined]
        finally:
            self._gh_timeout = saved

    def read(self, len: int = 1024, buffer: bytearray | None = None) -> bytes:  # type: ignore[override]
        return self._gh_ssl("read", super().read, len, buffer)  # type: ignore[no-any-return]

    def write(self, data: ReadableBuffer) -> int:
        return self._gh_ssl("write", super().write, data)  # type: ignore[no-any-return]

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        return self._gh_ssl("write", super().send, data, flags)  # type: ignore[no-any-return]

    def unwrap(self) -> _gsocket.socket:
        return self._gh_ssl(None, super().unwrap)  # type: ignore[no-any-return]


class SSLContext(_ssl.SSLContext):
    """An ``ssl.SSLContext`` whose sockets are ``greenhub.ssl.SSLSocket``."""

    sslsocket_class = SSLSocket


def create_default_context(
    purpose: Purpose = Purpose.SERVER_AUTH,
    *,
    cafile: StrOrBytesPath | None = None,
    capath: StrOrBytesPath | None = None,
    cadata: str | ReadableBuffer | None = None,
) -> SSLContext:
    """As ssl.create_default_context(), returning a greenhub SSLContext."""
    ctx = _ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)
    ctx.__class__ = SSLContext
    return ctx  # type: ignore[return-value]  # (its class is now greenhub's)


if TYPE_CHECKING:
    # The drop-in import, where type checkers see it (see the top of the module): the
    # names defined above keep their own types.
    from ssl import *  # type: ignore[assignment]  # noqa: F403
