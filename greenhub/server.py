"""greenhub.server: ``StreamServer``, gevent's accept-loop server on virtual threads.

::

    def handle(sock, address):          # sync code, in its own virtual thread
        with sock.makefile("rb") as lines:
            for line in lines:
                sock.sendall(line)

    StreamServer(("127.0.0.1", 8000), handle, max_connections=1000).serve_forever()

An accept loop runs as a virtual thread; each connection it accepts is handed to
``handle(sock, address)`` in a virtual thread of its own, with a green socket
(``greenhub.socket.socket``, or ``greenhub.ssl.SSLSocket`` with ``ssl_context=``), which
is closed when ``handle`` returns.  The handlers run in a ``greenhub.Group`` - or the
``Pool`` given as ``spawn=``, or a ``Pool(max_connections)`` - so a full pool makes the
accept loop wait: the connections beyond the limit wait in the listen backlog.

``stop(timeout)`` is graceful: the server stops accepting (its listening socket is
closed), waits up to `timeout` seconds for the running handlers to finish, then cancels
those still running (``CancelledError`` where they wait) and waits for them to end.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import socket as _stdsocket
import ssl as _ssl
import stat
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from . import _core
from . import socket as _gsocket
from . import ssl as _gssl
from ._private import _get_running_loop
from ._vthread import spawn as _spawn_vthread
from .pool import Group, Pool
from .sync import sleep as _sleep

__all__ = ["StreamServer"]

_in_vthread = _core.in_vthread
_await = _core.await_
_logger = logging.getLogger("greenhub.server")

# accept() errors that mean "out of resources for now": wait, then accept again, as
# asyncio's servers do (they pause one second, ACCEPT_RETRY_DELAY).
_ACCEPT_RETRY_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_ACCEPT_RETRY_DELAY = 1.0
# accept() errors that mean the listening socket cannot accept at all.
_ACCEPT_FATAL_ERRNOS = (errno.EBADF, errno.ENOTSOCK, errno.EINVAL, errno.EOPNOTSUPP)

Handler = Callable[[Any, Any], object]


def _wait_on(loop: asyncio.AbstractEventLoop, coro: Any) -> None:
    """Run `coro` on `loop`, which runs in another OS thread, and wait for it here (a
    virtual thread of this thread's loop, or a plain thread).  Not on this thread's own
    loop, which await_() would pick: a server's tasks and futures are its loop's, and
    that loop must be woken up."""
    done = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        if _in_vthread():
            _await(asyncio.wrap_future(done))
        else:
            done.result()
    except BaseException:
        done.cancel()  # Ctrl-C, a cancelled virtual thread: the call is withdrawn there too
        raise


def _is_listening(sock: _stdsocket.socket) -> bool:
    try:
        return bool(sock.getsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_ACCEPTCONN))
    except OSError:
        return False


_INF = float("inf")


def _grace(timeout: Any) -> float:
    """A stop's grace period in seconds, checked before the server is touched: a real
    number (bool is refused); NaN is a ValueError; a negative one means none."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"stop timeout must be a number of seconds, not {type(timeout).__name__}")
    if timeout != timeout:
        raise ValueError("stop timeout must be a number of seconds, not NaN")
    return max(float(timeout), 0.0)


class StreamServer:
    """A TCP (or Unix stream) server whose handler, ``handle(sock, address)``, runs as
    a virtual thread per connection (gevent.server.StreamServer's shape).

    `listener`: an address to listen on, ``(host, port)`` (port 0 picks a free one:
    see ``address``), or a bound socket, listening or not (the server listens on a
    duplicate of its fd and leaves the socket itself open).  `backlog`: ``listen()``'s
    (default: the system's).  `spawn`: the ``Group`` or ``Pool`` the handlers run in;
    or `max_connections`: a ``Pool`` of that size.  `ssl_context`: an
    ``ssl.SSLContext`` for the server side; each connection's handshake runs in its
    handler's virtual thread before ``handle`` is called.
    """

    stop_timeout: float = 1.0  # stop()'s default grace period, as gevent's

    def __init__(
        self,
        listener: tuple[Any, ...] | str | _stdsocket.socket,
        handle: Handler,
        *,
        backlog: int | None = None,
        spawn: Group | None = None,
        max_connections: int | None = None,
        ssl_context: _ssl.SSLContext | None = None,
    ) -> None:
        if not callable(handle):
            raise TypeError(f"StreamServer needs a callable handle, got {handle!r}")
        if spawn is not None and max_connections is not None:
            raise TypeError("give StreamServer spawn= or max_connections=, not both")
        if spawn is not None and not isinstance(spawn, Group):
            raise TypeError(f"spawn= must be a greenhub Group or Pool, not {type(spawn).__name__}")
        if ssl_context is not None and not isinstance(ssl_context, _ssl.SSLContext):
            raise TypeError(
                f"ssl_context= must be an ssl.SSLContext, not {type(ssl_context).__name__}"
            )
        self.handle = handle
        self.ssl_context = ssl_context
        self.backlog = backlog
        self.pool: Group = (
            spawn
            if spawn is not None
            else (Group() if max_connections is None else Pool(max_connections))
        )
        self._listener_arg = listener
        self.socket: _gsocket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._closed: asyncio.Future[None] | None = None  # set by close()
        self._finished: asyncio.Future[None] | None = None  # set once stopped
        self._shutting_down = False
        self._thread = 0  # the thread that started it
        self._grace_ends = _INF  # loop time a stop's grace period ends (the earliest asked)
        self._hurry: asyncio.Future[None] | None = None  # set: _grace_ends came forward
        self._accept_error: Exception | None = None  # what ended the accept loop, if not close()
        self._handlers: set[asyncio.Task[None]] = set()  # this server's, in the pool
        self._state = "new"  # -> "started" -> "stopping" -> "stopped"
        self._bound: Any = None  # the listening socket's address
        # (path, st_dev, st_ino) of the socket file this server made for a Unix path
        # listener: close() removes that file, and only if it is still this one.
        self._unix_file: tuple[str, int, int] | None = None

    def __repr__(self) -> str:
        where = self.address
        return f"<greenhub.server.StreamServer {self._state} at {where!r}>"

    # -- the listening socket ----------------------------------------------------

    def _listen(self) -> _gsocket.socket:
        arg = self._listener_arg
        if isinstance(arg, _gsocket.socket):
            sock = arg  # the server's from now on (closed when it stops), as gevent's
        elif isinstance(arg, _stdsocket.socket):
            # A duplicate fd, so the caller's socket object stays valid; the two share
            # the open file, whose O_NONBLOCK greenhub's socket sets.
            sock = _gsocket.fromfd(arg.fileno(), arg.family, arg.type, arg.proto)
        else:
            sock = None
        if sock is not None:
            if not _is_listening(sock):
                try:
                    sock.listen(*(() if self.backlog is None else (self.backlog,)))
                except BaseException:
                    sock.close()
                    raise
            return sock
        if isinstance(arg, str):
            return self._listen_unix(arg)
        if not isinstance(arg, tuple):
            raise TypeError(
                f"StreamServer listener must be an address or a socket, not {type(arg).__name__}"
            )
        host = arg[0]
        family = (
            _stdsocket.AF_INET6 if isinstance(host, str) and ":" in host else _stdsocket.AF_INET
        )
        return _gsocket.create_server(arg, family=family, backlog=self.backlog)

    def _listen_unix(self, path: str) -> _gsocket.socket:
        # A path is a file that outlives its socket: as asyncio's Unix servers do, a
        # socket file left at `path` (a server that did not clean up, a previous run
        # of the program) is removed before binding, and the file this server makes is
        # removed when it closes - otherwise the next run, or a restart in this one,
        # fails with EADDRINUSE.  Anything other than a socket there is left alone
        # (bind() then fails).  An abstract address ("\0...") has no file.
        abstract = path.startswith("\0")
        if not abstract:
            try:
                if stat.S_ISSOCK(os.stat(path).st_mode):
                    os.remove(path)
            except FileNotFoundError:
                pass
        sock = _gsocket.create_server(path, family=_stdsocket.AF_UNIX, backlog=self.backlog)
        if not abstract:
            try:
                st = os.stat(path)
            except OSError:
                pass  # removed already by someone else: nothing of ours to clean up
            else:
                self._unix_file = (path, st.st_dev, st.st_ino)
        return sock

    def _remove_unix_file(self) -> None:
        unix_file, self._unix_file = self._unix_file, None
        if unix_file is None:
            return
        path, dev, ino = unix_file
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == (dev, ino):  # not a newer server's socket
                os.remove(path)
        except OSError:
            pass  # gone already, or not ours to remove

    @property
    def address(self) -> Any:
        """The address the server listens on (with the port picked for port 0)."""
        return self._listener_arg if self._bound is None else self._bound

    @property
    def server_host(self) -> Any:
        return self.address[0]

    @property
    def server_port(self) -> Any:
        return self.address[1]

    @property
    def started(self) -> bool:
        """Whether the server accepts connections."""
        return self._state == "started"

    @property
    def closed(self) -> bool:
        """Whether the server stopped accepting (stop() or close())."""
        return self._state in ("stopping", "stopped")

    # -- starting ----------------------------------------------------------------

    def start(self) -> None:
        """Start accepting connections, in a virtual thread of the running greenhub
        loop; returns at once.  Usable from sync and async code on that loop."""
        if self._state != "new":
            raise RuntimeError(f"{self!r} has already been started")
        loop = asyncio.get_running_loop()
        if not isinstance(loop, _core.Loop):
            raise RuntimeError(
                "StreamServer needs a running greenhub loop: start the program with greenhub.run()"
            )
        self.socket = self._listen()
        self._thread = threading.get_ident()  # whose greenlets its virtual threads are
        self._bound = self.socket.getsockname()
        self._closed = loop.create_future()
        self._finished = loop.create_future()
        self._state = "started"
        self._accepting = _spawn_vthread(self._accept_loop, self.socket)
        self._accepting.add_done_callback(self._accept_ended)

    def serve_forever(self) -> None:
        """Start (if not started) and wait until the server is stopped.

        In a virtual thread only that virtual thread waits.  Called where no loop runs
        (a plain script), it runs one, as ``greenhub.run(server.serve_forever)``:
        Ctrl-C then stops the server (handlers cancelled) and raises
        KeyboardInterrupt.  In async code use ``await server.async_serve_forever()``.
        For a server started on a loop that runs in another OS thread, the wait runs on
        that loop and this thread (or virtual thread) waits for it."""
        if not _in_vthread() and _get_running_loop() is not None:
            raise RuntimeError(
                "serve_forever() blocks: call it from a virtual thread, from a script with "
                "no event loop running, or in async code use 'await server.async_serve_forever()'"
            )
        if self._closed is not None:  # started: wait where it was started
            self._wait_for(self.async_serve_forever, "serve_forever()")
            return
        if _in_vthread():
            _await(self.async_serve_forever())
            return
        from . import run

        run(self.serve_forever)

    async def async_serve_forever(self) -> None:
        """``serve_forever()`` for async code.  It returns once the server is closed
        (``close()``, ``stop()``), after a graceful stop (``stop_timeout``); cancelling
        it stops the server at once: the handlers are cancelled and waited for.  An
        accept loop that fails stops the server, and this raises ``RuntimeError`` from
        its error."""
        if self._state == "new":
            self.start()
        closed = self._closed
        if closed is None:
            return  # closed before it started
        try:
            await asyncio.shield(closed)
        except _CancelledError:
            await self._shutdown(0)
            raise
        try:
            grace = _grace(self.stop_timeout)
        except (TypeError, ValueError):
            await self._shutdown(0)  # a bad stop_timeout must not leave handlers running
            raise
        await self._shutdown(grace)
        error = self._accept_error
        if error is not None:
            raise RuntimeError(f"{self!r} stopped: its accept loop failed") from error

    # -- the accept loop -----------------------------------------------------------

    def _accept_loop(self, listener: _gsocket.socket) -> None:
        while True:
            try:
                conn, addr = listener.accept()
            except OSError as exc:
                if self._state != "started":
                    return
                if exc.errno in _ACCEPT_RETRY_ERRNOS:
                    asyncio.get_running_loop().call_exception_handler(
                        {
                            "message": "StreamServer: accept() failed; retrying after a pause",
                            "exception": exc,
                            "socket": listener,
                        }
                    )
                    _sleep(_ACCEPT_RETRY_DELAY)
                elif exc.errno in _ACCEPT_FATAL_ERRNOS or listener.fileno() < 0:
                    # The listening socket itself is gone (closed by someone else, not
                    # listening): every accept() would fail at once, without a wait, and
                    # this loop would spin with the event loop starved.  The server
                    # stops (_accept_ended) and serve_forever() raises this.
                    raise
                # ECONNABORTED and the like: that connection is gone; accept the next.
                continue
            try:
                task = self.pool.spawn(self._serve_one, conn, addr)  # may wait for a slot
            except BaseException:
                conn.close()
                raise
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    def _accept_ended(self, task: asyncio.Task[None]) -> None:
        # Anything but close() ending the accept loop (a spawn= pool that refuses, a
        # cancel() of its task) used to leave the server "started" with nothing
        # accepting and serve_forever() waiting for ever: stop it instead; an error
        # is reported and raised by serve_forever().
        error = None if task.cancelled() else task.exception()  # retrieved, whatever follows
        if isinstance(error, Exception):
            if self._state == "started":
                self._accept_error = error  # serve_forever() raises it
            task.get_loop().call_exception_handler(
                {
                    "message": "StreamServer: the accept loop failed; the server stops",
                    "exception": error,
                    "server": self,
                }
            )
        if self._state == "started":
            self.close()

    def _serve_one(self, conn: _gsocket.socket, address: Any) -> None:
        sock: Any = conn
        try:
            if self.ssl_context is not None:
                sock = _wrap_tls(self.ssl_context, conn)
                try:
                    sock.do_handshake()
                except (OSError, ValueError) as exc:
                    _logger.debug("TLS handshake with %r failed: %r", address, exc)
                    return
            try:
                result = self.handle(sock, address)
                if inspect.isawaitable(result):
                    _await(result)  # an async handle(): awaited in the connection's task
            except Exception as exc:
                asyncio.get_running_loop().call_exception_handler(
                    {
                        "message": f"StreamServer: handle() failed for the connection from {address!r}",
                        "exception": exc,
                        "server": self,
                    }
                )
        finally:
            sock.close()

    # -- stopping ------------------------------------------------------------------

    def _loop_elsewhere(self) -> asyncio.AbstractEventLoop | None:
        """The server's loop if it runs in another OS thread than the caller, else None."""
        closed = self._closed
        if closed is None:
            return None
        loop = closed.get_loop()
        if loop.is_running() and getattr(loop, "_thread_id", None) != threading.get_ident():
            return loop
        return None

    def close(self) -> None:
        """Stop accepting connections (the handlers carry on); returns at once.  A
        ``serve_forever()`` in progress then stops the server gracefully and returns.
        From another OS thread than the one its loop runs in, the close is scheduled
        on that loop (``call_soon_threadsafe``)."""
        loop = self._loop_elsewhere()
        if loop is not None:
            # The server's task, futures and socket belong to its loop's thread: done
            # from here they raced it (the loop was not even woken up).
            try:
                loop.call_soon_threadsafe(self.close)
                return
            except RuntimeError:
                pass  # that loop closed meanwhile: nothing runs there any more
        if self._state in ("new", "started"):
            self._state = "stopping" if self._closed is not None else "stopped"
        if self._accepting is not None:
            self._accepting.cancel()
        if self.socket is not None:
            self.socket.close()
        self._remove_unix_file()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, wait up to `timeout` seconds (default: ``stop_timeout``)
        for the running handlers to finish, then cancel those left and wait for them.
        In async code: ``await server.async_stop(timeout)``.  A stop made while another
        is under way waits for that one, whose grace period it can only shorten
        (``stop(0)`` cancels the handlers at once).  From another OS thread than the
        one the server's loop runs in, the stop runs on that loop and this thread (or
        virtual thread) waits for it."""
        if not _in_vthread() and _get_running_loop() is not None:
            raise RuntimeError(
                "stop() blocks: call it from a virtual thread, or in async code use "
                "'await server.async_stop()'"
            )
        _grace(self.stop_timeout if timeout is None else timeout)  # before anything stops
        if self._closed is None:
            self.close()
            return
        if self._closed.get_loop().is_closed():
            self.close()  # its handlers went with the loop's close()
            return
        self._wait_for(lambda: self.async_stop(timeout), "stop()")

    def _wait_for(self, make: Callable[[], Any], what: str) -> None:
        """Run the coroutine make() on the started server's loop and wait for it here:
        in this virtual thread if that loop runs it; from another OS thread through
        run_coroutine_threadsafe(); if that loop is not running, by running it here
        (a plain script or test harness between two run_until_complete() calls)."""
        loop = self._closed.get_loop() if self._closed is not None else None
        assert loop is not None
        if loop.is_running():
            if getattr(loop, "_thread_id", None) != threading.get_ident():
                _wait_on(loop, make())
            else:
                _await(make())  # a virtual thread of the server's loop
            return
        if loop.is_closed():
            raise RuntimeError(f"{what}: the server's event loop is closed")
        if threading.get_ident() != self._thread:
            # Its virtual threads (the accept loop, the handlers) are greenlets of the
            # thread that started it: only that thread can run them.
            raise RuntimeError(
                f"{what} needs the server's event loop running, and it is not: its virtual "
                "threads belong to the thread that started the server; call it there, or "
                "while the loop runs"
            )
        if _in_vthread():
            raise RuntimeError(
                f"{what} needs the server's event loop running, and this thread runs "
                "another one: call it where the server's loop runs, or from a thread with "
                "no loop running"
            )
        task = loop.create_task(make())
        try:
            loop.run_until_complete(task)
        except BaseException:
            # Ctrl-C: as under greenhub.run(), the call is cancelled (a cancelled
            # serve_forever() or stop() stops the server at once) before this raises.
            if not task.done():
                task.cancel()
                loop.run_until_complete(asyncio.wait((task,)))
            raise

    async def async_stop(self, timeout: float | None = None) -> None:
        """``stop()`` for async code."""
        await self._shutdown(_grace(self.stop_timeout if timeout is None else timeout))

    async def _shutdown(self, grace: float) -> None:
        """Every stop ends here; the first does the work, the others wait for it."""
        self.close()
        finished = self._finished
        if finished is None:
            return  # never started
        if self._shutting_down:
            # A stop is under way: this one waits for it, and may only shorten its grace
            # period (stop(0) during a stop(10) stops at once, as gevent's would).
            when = asyncio.get_running_loop().time() + grace
            if when < self._grace_ends:
                self._grace_ends = when
                hurry = self._hurry
                if hurry is not None and not hurry.done():
                    hurry.set_result(None)
            await asyncio.shield(finished)
            return
        self._shutting_down = True
        loop = asyncio.get_running_loop()
        self._grace_ends = loop.time() + grace
        accepting = self._accepting
        try:
            try:
                if accepting is not None and not accepting.done():
                    await asyncio.wait((accepting,))
                if self._handlers:
                    await self._grace_period(loop)
            finally:
                # Also when the graceful part is cancelled (serve_forever() or a stop
                # cancelled during its grace period): that makes it a stop at once,
                # never one that reports "stopped" with handlers still running.
                if accepting is not None and not accepting.done():
                    await asyncio.wait((accepting,))
                while self._handlers:
                    left = set(self._handlers)
                    for task in left:
                        task.cancel()
                    await asyncio.wait(left)
        finally:
            self._state = "stopped"
            if not finished.done():
                finished.set_result(None)

    async def _grace_period(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for the handlers until self._grace_ends, which a later stop may bring
        forward (it wakes this up through self._hurry).  Waits with a timeout, never by
        cancelling the current task, which may be the caller's own (stop() runs this in
        its virtual thread) and may hold cancellations back (defer_cancellation())."""
        handlers = asyncio.ensure_future(asyncio.wait(set(self._handlers)))
        try:
            while not handlers.done():
                left = self._grace_ends - loop.time()
                if left <= 0:
                    return
                self._hurry = hurry = loop.create_future()
                await asyncio.wait(
                    (handlers, hurry),
                    timeout=None if left == _INF else left,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            self._hurry = None
            handlers.cancel()

    # -- with ------------------------------------------------------------------------

    def __enter__(self) -> StreamServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> StreamServer:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        await self.async_stop()


_CancelledError = asyncio.CancelledError


def _wrap_tls(context: _ssl.SSLContext, conn: _gsocket.socket) -> _gssl.SSLSocket:
    """A server-side greenhub SSLSocket over `conn`, with `context` (a stock
    ssl.SSLContext too: greenhub's SSLSocket class makes the socket, as a greenhub
    SSLContext's wrap_socket() does; the handshake is left to the caller)."""
    if isinstance(context, _gssl.SSLContext):
        return context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)  # type: ignore[return-value]
    return _gssl.SSLSocket._create(  # type: ignore[attr-defined,no-any-return]
        sock=conn, server_side=True, do_handshake_on_connect=False, context=context
    )
