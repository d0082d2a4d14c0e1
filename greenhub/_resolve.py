"""getaddrinfo()/getnameinfo() without a thread when nothing needs resolving.

The stock loop runs every ``getaddrinfo()``/``getnameinfo()`` in the default
executor, because the C library may block on DNS or NSS.  For an IP literal
(or no host) with a numeric (or no) port there is nothing to look up:
``socket.getaddrinfo`` only parses the strings and sorts the result, so
greenhub calls it on the loop's thread.  The answer and any exception are
therefore exactly ``socket.getaddrinfo``'s - it is the same call - and no
executor thread is started.  Likewise ``getnameinfo()`` with both
``NI_NUMERICHOST`` and ``NI_NUMERICSERV`` (CPython parses the address with
``AI_NUMERICHOST``, so nothing is resolved).  Everything else goes to the
executor exactly as on the stock loop, through the inherited methods.

The checks the stock call makes before it reaches the executor are kept (a
closed loop, a default executor already shut down), and so is debug mode's
logging of each lookup and its duration.  Both methods stay coroutines; the
fast path just completes without suspending, as the stock loop's own
``_ensure_resolved()`` does for IP literals in ``create_connection()``.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from ._private import _UnixSelectorEventLoop

if TYPE_CHECKING:  # mixed into greenhub.Loop, before asyncio's loop
    from socket import _GetAddrInfoResult

    _LoopBase = _UnixSelectorEventLoop
else:
    _LoopBase = object

_NUMERIC_NAMEINFO = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV


def _is_ip_literal(host: object) -> bool:
    if host is None:
        return True
    if isinstance(host, bytes):
        if not host.isascii():
            return False
        host = host.decode("ascii")
    elif not isinstance(host, str):
        return False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return True
    return False


def _is_numeric_port(port: object) -> bool:
    if port is None or isinstance(port, int):
        # Out-of-range ints are refused by socket.getaddrinfo itself, at once.
        return True
    if isinstance(port, (str, bytes)):
        # ASCII digits only: anything else may be a service name to look up.
        return port.isascii() and port.isdigit()
    return False


class ResolveMixin(_LoopBase):
    """The name-resolution part of greenhub.Loop (mixed in before asyncio's loop)."""

    async def getaddrinfo(
        self,
        host: bytes | str | None,
        port: bytes | str | int | None,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> _GetAddrInfoResult:
        if _is_ip_literal(host) and _is_numeric_port(port):
            # What run_in_executor() checks before it submits.
            self._check_closed()
            self._check_default_executor()
            if self._debug:
                return self._getaddrinfo_debug(host, port, family, type, proto, flags)  # type: ignore[no-any-return]  # asyncio's private
            return socket.getaddrinfo(host, port, family, type, proto, flags)
        return await super().getaddrinfo(
            host, port, family=family, type=type, proto=proto, flags=flags
        )

    async def getnameinfo(
        self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int = 0
    ) -> tuple[str, str]:
        if isinstance(flags, int) and flags & _NUMERIC_NAMEINFO == _NUMERIC_NAMEINFO:
            self._check_closed()
            self._check_default_executor()
            return socket.getnameinfo(sockaddr, flags)
        return await super().getnameinfo(sockaddr, flags)
