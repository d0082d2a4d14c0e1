"""greenhub.Loop: asyncio's event loop API over greenhub's C core.

The C type ``greenhub._core.Loop`` owns the hot paths - ``call_soon`` and its
siblings, timers, ``time()``, the run loop, ``create_task`` and the fd
watchers (``_add_reader`` and friends, on libev) - and the state they share
with Python code (``_closed``, ``_stopping``, ``_debug``, ``_thread_id``,
``_task_factory``).  Everything else is inherited from asyncio's own Unix
selector loop: ``run_until_complete``, task factories, the exception handler,
``shutdown_asyncgens``, the executor API, and the I/O layer - ``sock_*``,
transports, servers, pipes, subprocesses and signal handling - which asyncio
builds on ``_add_reader``/``_add_writer`` and so runs on greenhub's libev
watchers.  Inheriting rather than re-implementing is deliberate: those
methods then behave exactly as the stock loop's on every Python version,
which is what a drop-in loop must do.  The selector itself is never used.
"""

import asyncio
import collections.abc
import contextvars
import functools
import os as _os
import selectors
import socket
import ssl
import sys
import threading
import weakref
from asyncio import base_events, sslproto
from asyncio.log import logger
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import Any, NoReturn, TypeVar, TypeVarTuple, Unpack

from . import _core, _dump, _task, _transport
from ._children import ChildrenMixin
from ._private import (
    HAVE_RUN_FOREVER_SETUP,
    TRANSPORT_CONTEXT,
    TRANSPORT_REFUSES_USED_FDS,
    _fileobj_to_fd,
    _format_handle,
    _set_running_loop,
    _UnixSelectorEventLoop,
    format_callback_source,
)
from ._resolve import ResolveMixin

__all__ = ["Loop"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


class _Unused:
    """Stands in for the stock loop's ready queue and timer heap, which the C
    core replaces: the inherited code may clear them, and anything else fails
    loudly instead of using a queue nobody runs."""

    def __init__(self, name: str) -> None:
        self._name = name

    def clear(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __len__(self) -> int:
        return 0

    def __getattr__(self, attr: str) -> NoReturn:
        raise RuntimeError(f"greenhub.Loop does not use {self._name} (tried .{attr})")


# How long close() lets cancelled virtual threads run their except/finally
# blocks before it unwinds the ones still suspended with GeneratorExit.
_CLOSE_GRACE_SECONDS = 1.0


class _WatcherMap(collections.abc.Mapping[Any, selectors.SelectorKey]):
    """What a selector's get_map() returns: SelectorKeys by fd, looked up by fd
    or by any object with a fileno() (a socket), as a selector's map is."""

    def __init__(self, keys: dict[int, selectors.SelectorKey]) -> None:
        self._keys = keys

    def __getitem__(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys[_fileobj_to_fd(fileobj)]

    def __iter__(self) -> Iterator[int]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class _SelectorView:
    """Takes the selector's place for the inherited code that inspects it
    (transport reprs ask whether a fd is polled): a read-only view of the
    loop's libev watchers.  Registering through it is refused."""

    def __init__(self, loop: "Loop") -> None:
        self._loop = weakref.ref(loop)

    def get_map(self) -> _WatcherMap:
        loop = self._loop()
        watched = loop._io_watchers() if loop is not None else {}
        return _WatcherMap(
            {fd: selectors.SelectorKey(fd, fd, ev, None) for fd, ev in watched.items()}
        )

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        try:
            return self.get_map()[fileobj]
        except KeyError:
            raise KeyError(f"{fileobj!r} is not registered") from None

    def close(self) -> None:
        pass

    def __getattr__(self, attr: str) -> NoReturn:
        raise RuntimeError(f"greenhub.Loop watches fds with libev, not a selector (tried .{attr})")


def _stock_setup_inside_try() -> bool:
    """Whether the stock run_forever() calls _run_forever_setup() inside its
    try block (its cleanup then runs when the setup fails) - which changed in
    a patch release (python/cpython#130145).  Asked of the stock method
    itself, with the setup and cleanup stubbed out: no loop is made."""
    if not HAVE_RUN_FOREVER_SETUP:
        return True  # 3.11/3.12: Loop.run_forever below spells their order out

    class _Failed(Exception):
        pass

    class _Probe:
        cleaned = False

        def _run_forever_setup(self) -> None:
            raise _Failed

        def _run_forever_cleanup(self) -> None:
            self.cleaned = True

    probe = _Probe()
    try:
        base_events.BaseEventLoop.run_forever(probe)  # type: ignore[arg-type]
    except _Failed:
        pass
    return probe.cleaned


_SETUP_INSIDE_TRY = _stock_setup_inside_try()


class Loop(_core.Loop, ChildrenMixin, ResolveMixin, _UnixSelectorEventLoop):
    """An asyncio event loop whose scheduling core is C on libev.

    Subprocess exits are watched through pidfds without the policy's child
    watcher (``_children.py``); getaddrinfo()/getnameinfo() skip the executor
    when there is nothing to resolve (``_resolve.py``)."""

    __module__ = "greenhub"

    def __init__(self) -> None:
        self._init_children()
        super().__init__(selector=_SelectorView(self))  # type: ignore[arg-type]  # a stand-in
        self._ready = _Unused("BaseEventLoop._ready")
        self._scheduled = _Unused("BaseEventLoop._scheduled")
        self.__dict__.pop("_timer_cancelled_count", None)
        _dump.register_loop(self)  # for greenhub.dump_tasks()

    def _add_callback(self, handle: asyncio.Handle) -> None:
        # asyncio's signal handling queues its Handle objects through here.
        if not handle._cancelled:
            self.call_soon(_run_unless_cancelled, handle)

    # -- transports --------------------------------------------------------
    #
    # TCP and Unix socket connections (plain and TLS) get greenhub's socket
    # transport: asyncio's, with reads and writes in C (_transport.py).

    if sys.version_info >= (3, 15):  # TRANSPORT_CONTEXT, spelled out for the type checkers
        # 3.15: the transport runs its protocol's callbacks in `context` (the server's
        # per-connection copy, or a copy of the context create_connection() ran in).

        def _make_socket_transport(
            self,
            sock: socket.socket,
            protocol: asyncio.BaseProtocol,
            waiter: asyncio.Future[None] | None = None,
            *,
            extra: dict[str, Any] | None = None,
            server: asyncio.Server | None = None,
            context: contextvars.Context | None = None,
        ) -> _transport.SocketTransport:
            if TRANSPORT_REFUSES_USED_FDS:
                self._ensure_fd_no_transport(sock)
            return _transport.SocketTransport(
                self, sock, protocol, waiter, extra, server, context=context
            )

    else:

        def _make_socket_transport(
            self,
            sock: socket.socket,
            protocol: asyncio.BaseProtocol,
            waiter: asyncio.Future[None] | None = None,
            *,
            extra: dict[str, Any] | None = None,
            server: asyncio.Server | None = None,
        ) -> _transport.SocketTransport:
            if TRANSPORT_REFUSES_USED_FDS:
                self._ensure_fd_no_transport(sock)
            return _transport.SocketTransport(self, sock, protocol, waiter, extra, server)

    # -- sock_* ------------------------------------------------------------
    #
    # asyncio's algorithm with the calls in C (src/sock.c), which keeps the
    # fd's watcher armed between receives instead of re-registering it; the
    # C helpers answer None when asyncio's own method must handle the call.

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        result = None if self._debug else self._gh_sock_recv(sock, n)
        if result is None:
            return await super().sock_recv(sock, n)
        if result.__class__ is bytes:
            return result
        return await result  # type: ignore[misc,no-any-return]  # a Future here

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        result = None if self._debug else self._gh_sock_recv_into(sock, buf)
        if result is None:
            return await super().sock_recv_into(sock, buf)
        if result.__class__ is int:
            return result
        return await result  # type: ignore[misc,no-any-return]  # a Future here

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        sent = None if self._debug else self._gh_sock_send(sock, data)
        if sent is None:
            return await super().sock_sendall(sock, data)
        if sent == len(data):
            return
        # The rest goes as asyncio sends it: a writer that retries on writability.
        fut: asyncio.Future[None] = self.create_future()
        fd = sock.fileno()
        self._ensure_fd_no_transport(fd)
        handle = self._add_writer(fd, self._sock_sendall, fut, sock, memoryview(data), [sent])
        fut.add_done_callback(functools.partial(self._sock_write_done, fd, handle=handle))
        return await fut

    def _make_ssl_transport(
        self,
        rawsock: socket.socket,
        protocol: asyncio.BaseProtocol,
        sslcontext: ssl.SSLContext,
        waiter: asyncio.Future[None] | None = None,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        extra: dict[str, Any] | None = None,
        server: asyncio.Server | None = None,
        **timeouts: Any,
    ) -> asyncio.Transport:
        if TRANSPORT_REFUSES_USED_FDS:
            self._ensure_fd_no_transport(rawsock)
        # From 3.15 `context` comes with the timeouts, for the socket transport
        # (the stock method gives it only to that, not to the SSLProtocol).
        transport_kwargs = {}
        if TRANSPORT_CONTEXT:
            transport_kwargs["context"] = timeouts.pop("context", None)
        ssl_protocol = sslproto.SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,  # type: ignore[arg-type]  # None is fine, as in asyncio's own call
            server_side,
            server_hostname,
            **timeouts,
        )
        _transport.SocketTransport(
            self, rawsock, ssl_protocol, extra=extra, server=server, **transport_kwargs
        )
        return ssl_protocol._app_transport

    # -- running ----------------------------------------------------------
    #
    # The C method _run() is the run loop; run_forever() wraps it in the
    # set-up and tear-down of the Python version at hand.

    if HAVE_RUN_FOREVER_SETUP and _SETUP_INSIDE_TRY:
        # Python 3.13+: the base class names the steps around the run loop.
        # Up to 3.13.2 a failed setup (another loop running) runs the cleanup too,
        # which unregisters the running loop (python/cpython#130145)...

        def run_forever(self) -> None:
            """Run until stop() is called."""
            try:
                self._run_forever_setup()
                self._run()
            finally:
                self._run_forever_cleanup()

    elif HAVE_RUN_FOREVER_SETUP:
        # ... from 3.13.3 and 3.14 the setup comes before the try block.

        def run_forever(self) -> None:
            """Run until stop() is called."""
            self._run_forever_setup()
            try:
                self._run()
            finally:
                self._run_forever_cleanup()

    else:
        # Python 3.11 and 3.12: the same steps, in the order these versions
        # take them (the checks come before the try block).

        def run_forever(self) -> None:
            """Run until stop() is called."""
            self._check_closed()
            self._check_running()
            self._set_coroutine_origin_tracking(self._debug)
            old_agen_hooks = sys.get_asyncgen_hooks()
            try:
                self._thread_id = threading.get_ident()
                sys.set_asyncgen_hooks(
                    firstiter=self._asyncgen_firstiter_hook,
                    finalizer=self._asyncgen_finalizer_hook,
                )
                _set_running_loop(self)
                self._run()
            finally:
                self._stopping = False
                self._thread_id = None
                _set_running_loop(None)
                self._set_coroutine_origin_tracking(False)
                sys.set_asyncgen_hooks(*old_agen_hooks)

    # -- tasks ------------------------------------------------------------

    # create_task() is the C type's: it wraps the coroutine in a GreenCoro
    # (src/task_step.c) and makes the Task (greenhub._task.Task, whose get_coro()
    # looks through the wrapper), or defers to BaseEventLoop.create_task() for
    # task factories (src/task_create.c).

    # -- executor ---------------------------------------------------------

    # greenhub._colours sets this (it is a layer up): mark(loop, executor, func) ->
    # (call, done) or None; see run_in_executor().
    _mark_executor_call: (
        Callable[
            ["Loop", Executor | None, Callable[..., Any]],
            tuple[Callable[..., Any], Callable[["asyncio.Future[Any]"], None]] | None,
        ]
        | None
    ) = None

    def run_in_executor(
        self,
        executor: Executor | None,
        func: Callable[[Unpack[_Ts]], _T],
        *args: Unpack[_Ts],
    ) -> "asyncio.Future[_T]":
        """asyncio's run_in_executor(), with the call marked as this loop's:
        greenhub.await_() in the worker thread, during the call, runs its
        awaitable as a task of this loop and blocks only that thread (as
        asgiref's async_to_sync does), so sync code in asyncio.to_thread() or
        an executor can use this loop's objects.  Cancelling the returned
        future cancels what the thread waits for in await_().  Only calls that
        run in threads are marked: a process pool gets `func` as it is."""
        mark = self._mark_executor_call
        marked = mark(self, executor, func) if mark is not None else None
        if marked is None:
            return super().run_in_executor(executor, func, *args)
        if self._debug:  # the stock checks, on `func` itself rather than the wrapper
            self._check_closed()
            self._check_callback(func, "run_in_executor")
        call, done = marked
        fut = super().run_in_executor(executor, call, *args)  # type: ignore[arg-type]  # (call(*args) is func(*args))
        fut.add_done_callback(done)
        return fut

    # -- closing ----------------------------------------------------------

    def close(self) -> None:
        """Close the loop: finish virtual threads suspended in await_(), then
        close as the stock loop does (self-pipe, default executor, signal
        handlers), then drop pending callbacks, timers and fd watchers.
        Idempotent; refuses to close a running loop."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        self._finish_parked_vthreads()
        self._close_rest()

    def _close_rest(self) -> None:
        self._release_idle_workers()
        self._close_children()
        super().close()
        self._close_core()

    def _release_idle_workers(self) -> None:
        """Tasks still pending at a native await keep their idle worker greenlet.
        Let those go here, on the loop's thread: a greenlet can only be ended in its
        own thread, and a thread that ends with its loop (await_() with no loop
        running) would leave them to be freed without running their exit."""
        for task in asyncio.all_tasks(self):
            coro = _task.green_coro(task)
            if coro is not None:
                coro._release_worker()

    def _finish_parked_vthreads(self) -> None:
        """Virtual threads suspended inside await_() hold a greenlet stack.
        Cancel their tasks and run them until they are done (their
        CancelledError is raised at the await_ call, so except/finally
        blocks in the synchronous frames run), as asyncio.run() does for
        leftover tasks.  _close_core() unwinds whatever still refuses."""
        coros = self._parked_coros()
        if not coros:
            return
        here = threading.get_ident()
        elsewhere = {c._thread_id for c in coros} - {here}
        if elsewhere:
            # Their stacks live on greenlets of another OS thread, which
            # cannot be resumed from this one.  Refuse before changing state.
            raise RuntimeError(
                f"cannot close {self!r} from thread {here}: {len(coros)} virtual "
                f"thread(s) are suspended in greenhub.await_() on thread "
                f"{elsewhere.pop()}; close the loop in that thread"
            )
        parked = set(map(id, coros))
        tasks = [t for t in asyncio.all_tasks(self) if id(_task.green_coro(t)) in parked]
        if not tasks:
            return
        for task in tasks:
            try:
                task.cancel()
            except Exception as exc:
                # Task.cancel() recurses through what the task awaits: a cycle (a task
                # in a gather() of itself, two tasks awaiting each other) ends in
                # RecursionError.  The stock close() cancels nothing and cannot meet
                # it; here the loop still closes, and _close_core() unwinds the task.
                logger.warning("Error while cancelling virtual threads on close: %r", exc)
        # A virtual thread may ignore the cancellation; it then gets
        # GeneratorExit from _close_core() after this grace period.
        waiter = asyncio.wait(tasks, timeout=_CLOSE_GRACE_SECONDS)
        try:
            self.run_until_complete(waiter)
        except Exception as exc:
            logger.warning("Error while cancelling virtual threads on close: %r", exc)
        except BaseException:
            # Ctrl-C, or SystemExit from a callback that ran meanwhile: it goes on
            # up, but the loop closes first (what is still suspended is unwound).
            # Left open, each later close() would run the loop again; the stock
            # close() never runs callbacks and always closes.  The wait may not
            # have started: closed, it warns of no coroutine never awaited.
            waiter.close()
            self._close_rest()
            raise


def _run_unless_cancelled(handle: asyncio.Handle) -> None:
    if not handle._cancelled:
        handle._run()


# -- hooks the C core calls on slow paths -----------------------------------


def _handle_repr(handle: _core.Handle | _core.TimerHandle) -> str:
    """repr() of a greenhub Handle/TimerHandle, in asyncio's format."""
    info = [type(handle).__name__]
    if handle._cancelled:
        info.append("cancelled")
    if isinstance(handle, _core.TimerHandle):
        info.append(f"when={handle._when}")
    if handle._callback is not None:
        info.append(
            format_callback_source(handle._callback, handle._args, handle._loop.get_debug())
        )
    if handle._source_traceback:
        frame = handle._source_traceback[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


def _callback_error(handle: _core.Handle | _core.TimerHandle, exc: BaseException) -> None:
    """An exception escaped a callback: tell the loop's exception handler,
    with the same context dict asyncio builds."""
    loop = handle._loop
    cb = format_callback_source(handle._callback, handle._args, loop.get_debug())
    context = {
        "message": f"Exception in callback {cb}",
        "exception": exc,
        "handle": handle,
    }
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    loop.call_exception_handler(context)


def _slow_callback(handle: asyncio.Handle, seconds: float) -> None:
    # Through base_events' own name for the logger, as the stock loop logs it,
    # so that code patching asyncio.base_events.logger sees this warning too.
    base_events.logger.warning("Executing %s took %.3f seconds", _format_handle(handle), seconds)


# (extract_stack, asyncio's, the C module installs itself; run_sync is
# _thread_loop's, a layer up.)
_core._install_hooks(
    handle_repr=_handle_repr,
    callback_error=_callback_error,
    slow_callback=_slow_callback,
)

# A forked child gets kernel state of its own for every loop (epoll set and wakeup fd):
# sharing the parent's epoll set would let each process change what the other watches.
if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(after_in_child=_core._after_fork_child)
