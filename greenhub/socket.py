"""greenhub.socket: the standard socket API, cooperative inside virtual threads.

``greenhub.socket.socket`` is a subclass of ``socket.socket``.  A blocking call
(``recv``, ``send``, ``sendall``, ``accept``, ``connect``, ...) made inside a
virtual thread - a task of the greenhub loop running in this thread, e.g. a
function started with ``greenhub.spawn()`` - suspends only that virtual thread
while it waits; the loop runs everything else.  Anywhere else (another OS
thread, no loop, a loop callback, another event loop) every call blocks and
behaves exactly as the same call on a plain ``socket.socket`` with the same
timeout.

How: the fd is always non-blocking, and the socket's timeout (``settimeout``,
``setblocking``, ``gettimeout``, ``getblocking``, ``.timeout``) is kept in the
``_gh_timeout`` slot.  A call tries the system call and, when it would block,
waits - on the loop's watcher in a virtual thread, in ``poll()`` elsewhere -
and tries again, raising ``TimeoutError('timed out')`` when the timeout
expires, as socket does.  ``recv``, ``recv_into``, ``send`` and ``sendall``
are C (src/green_sock.c); the rest is written here over ``_core._green_wait``.

Name resolution (``getaddrinfo``, ``gethostbyname``, ...) runs on the loop's
resolver (the default executor, or nothing for IP literals) in a virtual
thread, so it does not hold up the loop either.

Everything else of the ``socket`` module (constants, exceptions, helpers) is
re-exported unchanged.
"""

from __future__ import annotations

import errno as _errno
import io as _io
import os as _os
import socket as _std
from collections.abc import Callable
from socket import SO_ERROR, SOCK_STREAM, SOL_SOCKET, AddressFamily, SocketKind, getdefaulttimeout
from time import monotonic as _now
from typing import TYPE_CHECKING, Any

if not TYPE_CHECKING:
    # This module is a drop-in for socket.  (Type checkers see this import at the
    # end of the module, so that the green class and functions below keep their
    # own types rather than socket's.)
    from socket import *  # noqa: F403

from . import _core
from ._private import _GLOBAL_DEFAULT_TIMEOUT, _socket

if TYPE_CHECKING:
    from socket import _Address, _GetAddrInfoResult, _RetAddress

__all__ = list(_std.__all__)

_stdsocket = _std.socket
_in_vthread = _core.in_vthread
_await = _core.await_
_recv = _core._green_recv
_recv_into = _core._green_recv_into
_send = _core._green_send
_sendall = _core._green_sendall
_wait = _core._green_wait
_closing = _core._green_closing

_CONNECT_PENDING = (_errno.EINPROGRESS, _errno.EALREADY)
_SENDFILE_BLOCK = 1 << 30  # at most this much per os.sendfile() call


class socket(_stdsocket):
    """A ``socket.socket`` whose blocking calls suspend only the calling
    virtual thread (see the module docstring)."""

    __slots__ = ("_gh_timeout",)

    def __init__(
        self,
        family: AddressFamily | int = -1,
        type: SocketKind | int = -1,
        proto: int = -1,
        fileno: int | None = None,
    ) -> None:
        super().__init__(family, type, proto, fileno)
        # None, 0.0 or seconds: what socket's own timeout would be.
        self._gh_timeout: float | None = _stdsocket.gettimeout(self)
        _stdsocket.settimeout(self, 0.0)

    # -- timeouts ----------------------------------------------------------

    def settimeout(self, value: float | None, /) -> None:
        """As socket.settimeout(); the fd itself stays non-blocking."""
        if value is not None:
            _stdsocket.settimeout(self, value)  # socket's own checks and conversion
            value = _stdsocket.gettimeout(self)
            _stdsocket.settimeout(self, 0.0)
        self._gh_timeout = value

    def gettimeout(self) -> float | None:
        return self._gh_timeout

    def setblocking(self, flag: bool, /) -> None:
        """As socket.setblocking(): True means settimeout(None), False settimeout(0.0)."""
        if flag.__class__ not in (bool, int):
            _stdsocket.setblocking(self, flag)  # socket's own checks
            _stdsocket.settimeout(self, 0.0)
        self._gh_timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._gh_timeout != 0.0

    @property
    def timeout(self) -> float | None:
        """The timeout in seconds (None: blocking), as socket.socket.timeout."""
        return self._gh_timeout

    # -- the calls that may wait -------------------------------------------

    # The calls that take socket's own arguments pass them through as they are (C
    # parses them with socket's formats): to a type checker they take any arguments,
    # and return what socket's return.

    def recv(self, *args: Any) -> bytes:
        return _recv(self, args)

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        return _recv_into(self, args, kwargs or None)

    def send(self, *args: Any) -> int:
        return _send(self, args)

    def sendall(self, *args: Any) -> None:
        return _sendall(self, args)

    def _gh_io(self, write: bool, call: Callable[..., Any], *args: Any) -> Any:
        """call(self, *args) on the non-blocking fd, waiting while it would block."""
        timeout = self._gh_timeout
        if timeout == 0.0:
            return call(self, *args)
        deadline = None
        while True:
            try:
                return call(self, *args)
            except BlockingIOError:
                pass
            deadline = self._gh_wait(write, timeout, deadline)

    def _gh_wait(self, write: bool, timeout: float | None, deadline: float | None) -> float | None:
        """One wait within the call's timeout; returns the call's deadline."""
        if timeout is None:
            _wait(self, write, None)
            return None
        if deadline is None:
            deadline = _now() + timeout
        _wait(self, write, deadline - _now())  # TimeoutError when none is left
        return deadline

    def recvfrom(self, *args: Any) -> tuple[bytes, _RetAddress]:
        return self._gh_io(False, _stdsocket.recvfrom, *args)  # type: ignore[no-any-return]

    def recvfrom_into(self, *args: Any, **kwargs: Any) -> tuple[int, _RetAddress]:
        return self._gh_io(False, _call_kw(_stdsocket.recvfrom_into, kwargs), *args)  # type: ignore[no-any-return]

    def sendto(self, *args: Any) -> int:
        return self._gh_io(True, _stdsocket.sendto, *args)  # type: ignore[no-any-return]

    if hasattr(_stdsocket, "recvmsg"):

        def recvmsg(self, *args: Any) -> tuple[bytes, list[tuple[int, int, bytes]], int, Any]:
            return self._gh_io(False, _stdsocket.recvmsg, *args)  # type: ignore[no-any-return]

        def recvmsg_into(self, *args: Any) -> tuple[int, list[tuple[int, int, bytes]], int, Any]:
            return self._gh_io(False, _stdsocket.recvmsg_into, *args)  # type: ignore[no-any-return]

        def sendmsg(self, *args: Any) -> int:
            return self._gh_io(True, _stdsocket.sendmsg, *args)  # type: ignore[no-any-return]

    def accept(self) -> tuple["socket", _RetAddress]:
        """As socket.accept(); the connection is a greenhub.socket.socket."""
        fd, addr = self._gh_io(False, _stdsocket._accept)  # type: ignore[attr-defined]
        sock = socket(self.family, self.type, self.proto, fileno=fd)
        # socket.accept()'s rule: a listening socket with a timeout hands out
        # blocking connections when there is no default timeout.
        if getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock, addr

    def _gh_connect(self, address: _Address) -> int:
        """connect(), waiting for it to complete: its errno (0: connected)."""
        timeout = self._gh_timeout
        if timeout is None and not _in_vthread():
            # A blocking connect() leaves the socket in another state than a
            # non-blocking one when it fails (a second attempt then gives
            # ECONNREFUSED again, not ECONNABORTED): make the very same call.
            _stdsocket.settimeout(self, None)
            try:
                return _stdsocket.connect_ex(self, address)
            finally:
                _stdsocket.settimeout(self, 0.0)
        deadline = None
        while True:
            err = _stdsocket.connect_ex(self, address)
            if timeout == 0.0 or err not in (*_CONNECT_PENDING, _errno.EAGAIN):
                return err
            deadline = self._gh_wait(True, timeout, deadline)
            if err != _errno.EAGAIN:  # (a Unix socket's full backlog: try again)
                return self.getsockopt(SOL_SOCKET, SO_ERROR)

    def connect(self, address: _Address, /) -> None:
        """As socket.connect()."""
        err = self._gh_connect(address)
        if err:
            raise OSError(err, _os.strerror(err))

    def connect_ex(self, address: _Address, /) -> int:
        """As socket.connect_ex(): the errno, EWOULDBLOCK on timeout."""
        try:
            return self._gh_connect(address)
        except TimeoutError:
            return _errno.EWOULDBLOCK

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """As socket.sendfile(): os.sendfile() where it can, else send()."""
        if not _in_vthread():
            return super().sendfile(file, offset, count)  # blocks in poll, as socket's
        self._check_sendfile_params(file, offset, count)  # type: ignore[attr-defined]
        if self._gh_timeout == 0.0:
            raise ValueError("non-blocking sockets are not supported")
        try:
            fileno = file.fileno()
            size = _os.fstat(fileno).st_size
        except (AttributeError, _io.UnsupportedOperation, OSError):
            # No fd, or no size: socket gives up on os.sendfile() and sends.
            return self._sendfile_use_send(file, offset, count)  # type: ignore[attr-defined,no-any-return]
        if not size:
            return 0  # socket's "empty file" (a pipe, too): nothing is sent
        if offset >= size:
            return 0
        left = min(count, size - offset) if count else size - offset
        total = 0
        deadline = None
        try:
            while left > 0:
                try:
                    sent = _os.sendfile(self.fileno(), fileno, offset, min(left, _SENDFILE_BLOCK))
                except BlockingIOError:
                    deadline = self._gh_wait(True, self._gh_timeout, deadline)
                    continue
                except OSError:
                    if total == 0:  # not supported for this file or socket
                        return self._sendfile_use_send(file, offset, count)  # type: ignore[attr-defined,no-any-return]
                    raise
                if sent == 0:
                    break  # end of file
                offset += sent
                total += sent
                left -= sent
            return total
        finally:
            if total > 0 and hasattr(file, "seek"):
                file.seek(offset)

    # -- closing -------------------------------------------------------------

    def _real_close(self, _ss: type[_socket.socket] = _socket.socket) -> None:
        # Virtual threads waiting on this socket would never hear of the
        # close (epoll forgets a closed fd): wake them first; they fail with
        # EBADF as a call on a closed socket does.
        _closing(self)
        _ss.close(self)

    def detach(self) -> int:
        _closing(self)
        return super().detach()


def _call_kw(call: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[..., Any]:
    if not kwargs:
        return call
    return lambda sock, *args: call(sock, *args, **kwargs)


def _green(sock: _std.socket) -> socket:
    """A greenhub socket in place of the plain socket `sock` (which is detached)."""
    return socket(sock.family, sock.type, sock.proto, sock.detach())


# asyncio's C paths (socket transports, sock_recv/sock_sendall) treat this
# class as socket.socket: a program under greenhub.monkey.patch_socket() keeps
# them for the sockets asyncio itself makes.
_core._register_green_socket(socket)


def socketpair(
    family: int | AddressFamily | None = None, type: int | SocketKind = SOCK_STREAM, proto: int = 0
) -> tuple[socket, socket]:
    """As socket.socketpair(), returning greenhub sockets."""
    if family is None:
        a, b = _std.socketpair(type=type, proto=proto)
    else:
        a, b = _std.socketpair(family, type, proto)
    return _green(a), _green(b)


def fromfd(fd: int, family: AddressFamily | int, type: SocketKind | int, proto: int = 0) -> socket:
    """As socket.fromfd(): a greenhub socket on a duplicate of fd."""
    return socket(family, type, proto, _os.dup(fd))


def create_server(address: _Address, **kwargs: Any) -> socket:
    """As socket.create_server(), returning a greenhub socket (nothing here
    waits: socket's own function makes it, and it is then converted)."""
    return _green(_std.create_server(address, **kwargs))


def create_connection(
    address: tuple[str, int],
    timeout: float | None = _GLOBAL_DEFAULT_TIMEOUT,
    source_address: _Address | None = None,
    *,
    all_errors: bool = False,
) -> socket:
    """As socket.create_connection(): resolves (without holding up the loop
    in a virtual thread) and connects a greenhub socket."""
    host, port = address
    exceptions: list[OSError] = []
    for af, socktype, proto, _canon, sa in getaddrinfo(host, port, 0, SOCK_STREAM):
        sock = None
        try:
            sock = socket(af, socktype, proto)
            if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sa)
            exceptions.clear()  # no reference cycle through the tracebacks
            return sock
        except OSError as exc:
            if not all_errors:
                exceptions.clear()
            exceptions.append(exc)
            if sock is not None:
                sock.close()
    if not exceptions:
        raise OSError("getaddrinfo returns an empty list")
    try:
        if not all_errors:
            raise exceptions[0]
        raise ExceptionGroup("create_connection failed", exceptions)
    finally:
        exceptions.clear()


# -- name resolution ----------------------------------------------------------
#
# In a virtual thread the resolver runs where the loop runs it (the default
# executor; greenhub's loop answers IP literals at once), so the loop goes
# on meanwhile.  Elsewhere these are socket's own functions.


def _running_loop() -> "asyncio.AbstractEventLoop":
    import asyncio

    return asyncio.get_running_loop()


def _in_executor(fn: Callable[..., _T], *args: Any) -> _T:
    return _await(_running_loop().run_in_executor(None, fn, *args))


def getaddrinfo(
    host: bytes | str | None,
    port: bytes | str | int | None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> _GetAddrInfoResult:
    if not _in_vthread():
        return _std.getaddrinfo(host, port, family, type, proto, flags)
    loop = _running_loop()
    return _await(loop.getaddrinfo(host, port, family=family, type=type, proto=proto, flags=flags))


def getnameinfo(
    sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int, /
) -> tuple[str, str]:
    if not _in_vthread():
        return _std.getnameinfo(sockaddr, flags)
    return _await(_running_loop().getnameinfo(sockaddr, flags))


def gethostbyname(hostname: str, /) -> str:
    if not _in_vthread():
        return _std.gethostbyname(hostname)
    return _in_executor(_std.gethostbyname, hostname)


def gethostbyname_ex(hostname: str, /) -> tuple[str, list[str], list[str]]:
    if not _in_vthread():
        return _std.gethostbyname_ex(hostname)
    return _in_executor(_std.gethostbyname_ex, hostname)


def gethostbyaddr(ip_address: str, /) -> tuple[str, list[str], list[str]]:
    if not _in_vthread():
        return _std.gethostbyaddr(ip_address)
    return _in_executor(_std.gethostbyaddr, ip_address)


def getfqdn(name: str = "") -> str:
    if not _in_vthread():
        return _std.getfqdn(name)
    return _in_executor(_std.getfqdn, name)


if TYPE_CHECKING:
    import asyncio
    from typing import TypeVar

    _T = TypeVar("_T")

    # The drop-in import, where type checkers see it (see the top of the module): the
    # names defined above keep their own types.
    from socket import *  # type: ignore[assignment]  # noqa: F403
