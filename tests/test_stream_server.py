"""greenhub.server.StreamServer: gevent's accept-loop server on virtual threads.

Handlers are sync code in virtual threads, which exist only on greenhub, so these tests
run on greenhub alone; the clients are asyncio streams (async code, independent of the
green sockets the server hands to its handlers).  Concurrency is shown with
support.Overlap / support.Gathering, never by timing.
"""

import asyncio
import os
import socket
import ssl
import threading

import pytest
from support import Gathering, Overlap, hang_timeout, tls_contexts
from vthread_helpers import gloop_fixture, in_thread, run_child

import greenhub
import greenhub.socket as gsocket
from greenhub import Pool
from greenhub.server import StreamServer

gloop = gloop_fixture


def echo(sock, address):
    with sock.makefile("rb") as lines:
        for line in lines:
            sock.sendall(line.upper())


async def talk(address, line=b"hello\n", ssl_context=None):
    """One client: send a line, return the answer (b"" at EOF)."""
    host, port = address[:2]
    kwargs = {"ssl": ssl_context, "server_hostname": "localhost"} if ssl_context else {}
    reader, writer = await asyncio.open_connection(host, port, **kwargs)
    try:
        writer.write(line)
        await writer.drain()
        try:
            return await reader.readline()
        except ConnectionResetError:
            return b""  # (a server that closed the connection without reading everything)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


def in_vthread(gloop, fn, *args):
    async def main():
        return await greenhub.spawn(fn, *args)

    return gloop.run_until_complete(main())


def test_echo_and_the_handler_gets_a_green_socket(gloop):
    seen = []

    def handle(sock, address):
        seen.append((type(sock), address[0], sock.gettimeout()))
        echo(sock, address)

    def main():
        with StreamServer(("127.0.0.1", 0), handle) as server:
            assert server.started and not server.closed
            answers = [greenhub.await_(talk(server.address, b"line %d\n" % i)) for i in range(3)]
        assert server.closed and not server.started
        return answers

    assert in_vthread(gloop, main) == [b"LINE 0\n", b"LINE 1\n", b"LINE 2\n"]
    assert seen == [(gsocket.socket, "127.0.0.1", None)] * 3


def test_socket_closed_when_handle_returns(gloop):
    def main():
        with StreamServer(("127.0.0.1", 0), lambda sock, addr: sock.sendall(b"bye\n")) as server:
            return greenhub.await_(_read_all(server.address))

    assert in_vthread(gloop, main) == b"bye\n"  # then EOF: the server closed it


async def _read_all(address):
    reader, writer = await asyncio.open_connection(*address[:2])
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    return data


def test_handlers_run_concurrently(gloop):
    together = Gathering(10)

    def handle(sock, address):
        greenhub.await_(together.wait())
        sock.sendall(b"ok\n")

    def main():
        with StreamServer(("127.0.0.1", 0), handle) as server:
            clients = [greenhub.spawn(greenhub.await_, talk(server.address)) for _ in range(10)]
            return greenhub.await_(asyncio.gather(*clients))

    assert in_vthread(gloop, main) == [b"ok\n"] * 10
    assert together.arrived == 10


@pytest.mark.parametrize("how", ["max_connections", "spawn"])
def test_connection_limit(gloop, how):
    inside = Overlap()

    def handle(sock, address):
        with inside:
            greenhub.sleep(0.001)
        sock.sendall(b"ok\n")

    def main():
        limit = {"max_connections": 3} if how == "max_connections" else {"spawn": Pool(3)}
        with StreamServer(("127.0.0.1", 0), handle, **limit) as server:
            clients = [greenhub.spawn(greenhub.await_, talk(server.address)) for _ in range(12)]
            return greenhub.await_(asyncio.gather(*clients)), server.pool.size

    assert in_vthread(gloop, main) == ([b"ok\n"] * 12, 3)
    assert inside.peak == 3  # the others waited in the backlog, then were served


def test_graceful_stop_waits_for_running_handlers(gloop):
    log = []
    release = greenhub.Event()

    def handle(sock, address):
        log.append("handler started")
        release.wait()
        sock.sendall(b"finished\n")
        log.append("handler finished")

    def stopper(server):
        server.stop(timeout=3600)
        log.append("stop returned")

    def main():
        server = StreamServer(("127.0.0.1", 0), handle)
        server.start()
        client = greenhub.spawn(greenhub.await_, talk(server.address))
        while not log:
            greenhub.sleep(0.001)
        stopping = greenhub.spawn(stopper, server)
        greenhub.sleep(0)
        assert server.closed and not stopping.done()
        # No longer accepting: a new connection is refused.
        with pytest.raises(ConnectionRefusedError):
            greenhub.await_(talk(server.address))
        log.append("releasing")
        release.set()
        greenhub.await_(stopping)
        return greenhub.await_(client)

    assert in_vthread(gloop, main) == b"finished\n"
    assert log == ["handler started", "releasing", "handler finished", "stop returned"]


def test_stop_cancels_handlers_left_after_the_timeout(gloop):
    cancelled = []

    def handle(sock, address):
        try:
            greenhub.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(address[0])
            raise

    def main():
        server = StreamServer(("127.0.0.1", 0), handle)
        server.start()
        client = greenhub.spawn(greenhub.await_, talk(server.address))
        while not server._handlers:
            greenhub.sleep(0.001)
        server.stop(timeout=0.01)
        return greenhub.await_(client), len(server.pool)

    assert in_vthread(gloop, main) == (b"", 0)  # the handler's socket was closed
    assert cancelled == ["127.0.0.1"]


@pytest.mark.parametrize(
    "bad, error",
    [("x", TypeError), (None, None), (True, TypeError), (float("nan"), ValueError)],
    ids=["str", "none-default", "bool", "nan"],
)
def test_stop_with_a_bad_timeout_raises_before_stopping_anything(gloop, bad, error):
    # stop(timeout="x") closed the listening socket, then raised TypeError from
    # asyncio.wait(), leaving the handlers running and never cancelled.
    def main():
        server = StreamServer(("127.0.0.1", 0), echo)
        server.start()
        if error is None:
            server.stop_timeout = bad  # None as the default: a TypeError too
        with pytest.raises(TypeError if error is None else error, match="stop timeout"):
            server.stop() if error is None else server.stop(timeout=bad)
        with pytest.raises(TypeError if error is None else error, match="stop timeout"):
            greenhub.await_(server.async_stop() if error is None else server.async_stop(bad))
        still = greenhub.await_(talk(server.address, b"still serving\n"))
        server.stop(timeout=-5)  # negative: no grace, handlers cancelled at once
        return still, repr(server).startswith("<greenhub.server.StreamServer stopped")

    assert in_vthread(gloop, main) == (b"STILL SERVING\n", True)  # echo upper-cases


def _waits_until_cancelled(cancelled):
    """A handler that waits for ever, and records its cancellation in `cancelled`."""

    def handle(sock, address):
        try:
            greenhub.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    return handle


def test_serve_forever_with_a_bad_stop_timeout_still_stops_its_handlers(gloop):
    cancelled = []
    handle = _waits_until_cancelled(cancelled)

    def main():
        server = StreamServer(("127.0.0.1", 0), handle)
        server.stop_timeout = "x"
        serving = greenhub.spawn(server.serve_forever)
        greenhub.sleep(0)
        client = greenhub.spawn(greenhub.await_, talk(server.address))
        while not server._handlers:
            greenhub.sleep(0.001)
        server.close()
        with pytest.raises(TypeError, match="stop timeout"):
            greenhub.await_(serving)
        return greenhub.await_(client), len(server._handlers)

    assert in_vthread(gloop, main) == (b"", 0)
    assert cancelled == [True]


def test_stop_leaves_other_work_of_a_shared_pool(gloop):
    def main():
        pool = Pool(10)
        other = pool.spawn(greenhub.sleep, 0.01)
        server = StreamServer(("127.0.0.1", 0), echo, spawn=pool)
        server.start()
        server.stop(timeout=0)
        return greenhub.await_(other), other.cancelled()

    assert in_vthread(gloop, main) == (None, False)


def test_serve_forever_in_a_vthread_returns_after_close_or_stop(gloop):
    def handle(sock, address, server_box):
        sock.sendall(b"closing\n")
        server_box[0].close()  # from a handler: serve_forever stops gracefully

    def main():
        box = []
        server = StreamServer(("127.0.0.1", 0), lambda s, a: handle(s, a, box))
        box.append(server)
        serving = greenhub.spawn(server.serve_forever)
        greenhub.sleep(0)
        answer = greenhub.await_(talk(server.address))
        greenhub.await_(serving)
        return answer, repr(server).startswith("<greenhub.server.StreamServer stopped")

    assert in_vthread(gloop, main) == (b"closing\n", True)


async def _serving_one_connection(handle, stop_timeout=None):
    """A server run by serve_forever() in a virtual thread, with one client connected
    and its handler running: (server, serving task, reader, writer)."""
    server = StreamServer(("127.0.0.1", 0), handle)
    if stop_timeout is not None:
        server.stop_timeout = stop_timeout
    serving = greenhub.spawn(server.serve_forever)
    await asyncio.sleep(0)
    reader, writer = await asyncio.open_connection(*server.address)
    while not server._handlers:
        await asyncio.sleep(0.001)
    return server, serving, reader, writer


def test_cancelling_serve_forever_stops_the_server(gloop):
    cancelled = []

    async def main():
        server, serving, reader, writer = await _serving_one_connection(
            _waits_until_cancelled(cancelled)
        )
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        eof = await reader.read()
        writer.close()
        await writer.wait_closed()
        return eof, server.closed

    assert gloop.run_until_complete(main()) == (b"", True)
    assert cancelled == [True]


@pytest.mark.parametrize("how", ["serve_forever", "async_stop"])
def test_cancelling_a_graceful_stop_stops_the_server_at_once(gloop, how):
    # Cancelled during its grace period (close() called, handlers still running), a
    # stop becomes a stop at once: the handlers are cancelled and waited for before the
    # cancelled call raises.  (It used to end with the server "stopped" and the
    # handlers running on, and every later stop returned at once without them.)
    cancelled = []

    async def main():
        server, serving, reader, writer = await _serving_one_connection(
            _waits_until_cancelled(cancelled), stop_timeout=3600
        )
        if how == "async_stop":
            stopping = asyncio.ensure_future(server.async_stop(3600))
        else:
            server.close()
            stopping = serving
        for _ in range(3):
            await asyncio.sleep(0)
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        running = len(server._handlers)
        for task in list(server._handlers):  # (only without the fix: no hang then)
            task.cancel()
        await server.async_stop(0)
        if how == "async_stop":
            await serving
        eof = await reader.read()
        writer.close()
        await writer.wait_closed()
        return running, eof, server.closed

    assert gloop.run_until_complete(main()) == (0, b"", True)
    assert cancelled == [True]


@pytest.mark.parametrize("first_grace", [3600, float("inf")])
def test_a_later_stop_with_a_shorter_grace_ends_the_grace_period(gloop, first_grace):
    # stop(0) while a stop(3600) waits out its grace period stops at once (it waited
    # for the first stop's full grace period); both return once the handlers are gone.
    cancelled = []

    async def main():
        server, serving, reader, writer = await _serving_one_connection(
            _waits_until_cancelled(cancelled)
        )
        first = asyncio.ensure_future(server.async_stop(first_grace))
        for _ in range(3):
            await asyncio.sleep(0)
        graceful = (first.done(), list(cancelled))
        await asyncio.wait_for(server.async_stop(0), hang_timeout(10))
        await asyncio.wait_for(first, hang_timeout(10))
        await serving
        eof = await reader.read()
        writer.close()
        await writer.wait_closed()
        return graceful, eof, server.closed

    assert gloop.run_until_complete(main()) == ((False, []), b"", True)
    assert cancelled == [True]


def test_stop_with_a_grace_period_inside_defer_cancellation(gloop):
    # The grace period ends by a timeout, not by cancelling the stopping task: inside
    # a defer_cancellation() block (a natural place for cleanup) that cancellation
    # would be held back and the stop would wait for ever on a handler that never ends.
    cancelled = []

    def body(server):
        with greenhub.defer_cancellation():
            server.stop(0.01)
        return len(server._handlers), server.closed

    async def main():
        server, serving, reader, writer = await _serving_one_connection(
            _waits_until_cancelled(cancelled)
        )
        stopping = greenhub.spawn(body, server)
        done, _ = await asyncio.wait([stopping], timeout=hang_timeout(5))
        if not done:  # (a regression: unstick it so that the test ends)
            for task in list(server._handlers):
                task.cancel()
            await asyncio.wait([stopping], timeout=hang_timeout(5))
        await serving
        writer.close()
        await writer.wait_closed()
        return bool(done), stopping.result()

    assert gloop.run_until_complete(main()) == (True, (0, True))
    assert cancelled == [True]


@pytest.mark.parametrize("where", ["this thread", "another thread"])
def test_stop_and_serve_forever_run_an_idle_servers_loop(gloop, where):
    # A harness starts the server in one run_until_complete() and stops it between
    # two: stop() (and serve_forever()) run the server's idle loop to do so.  They
    # waited on a fresh loop of their own with the idle loop's futures, for ever.
    # Another thread cannot run it (the server's virtual threads are greenlets of the
    # thread that started it): there both raise RuntimeError, and this thread stops it.
    cancelled = []

    async def start():
        server, serving, reader, writer = await _serving_one_connection(
            _waits_until_cancelled(cancelled), stop_timeout=0
        )
        return server, serving, reader, writer

    server, serving, reader, writer = gloop.run_until_complete(start())
    outcome = []

    def stop_then_serve():
        server.stop()
        outcome.append(server.closed)
        server.serve_forever()  # stopped: returns at once
        outcome.append("serve_forever returned")

    def refused():
        for call in (server.stop, server.serve_forever):
            try:
                call()
            except RuntimeError as exc:
                outcome.append("needs the server's event loop running" in str(exc))

    if where == "another thread":
        other = threading.Thread(target=refused, daemon=True)
        other.start()
        other.join(hang_timeout(10))
        assert not other.is_alive()
    stop_then_serve()

    async def finish():
        await serving
        eof = await reader.read()
        writer.close()
        await writer.wait_closed()
        return eof

    assert gloop.run_until_complete(finish()) == b""
    refusals = [True, True] if where == "another thread" else []
    assert outcome == [*refusals, True, "serve_forever returned"]
    assert cancelled == [True]


def test_stop_in_a_virtual_thread_of_another_loop_while_the_servers_is_idle(gloop):
    server, *_ = gloop.run_until_complete(
        _serving_one_connection(_waits_until_cancelled([]), stop_timeout=0)
    )

    async def stop_there():
        await greenhub.spawn(server.stop)

    other = greenhub.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="needs the server's event loop running"):
            other.run_until_complete(stop_there())
    finally:
        other.close()
    gloop.run_until_complete(server.async_stop(0))


@pytest.mark.parametrize("how", ["stop", "close"])
def test_stop_or_close_from_another_os_thread(gloop, how):
    # A plain thread (no loop running there) stops the server its loop runs.  stop()
    # used to run the stop on that thread's own loop with the server's tasks and
    # futures: the two loops then waited for each other for ever.  close() did its work
    # from the wrong thread and the idle loop was never woken up.  Both now go through
    # the server's loop (a daemon thread here, so a regression fails instead of hanging).
    cancelled = []
    done = threading.Event()

    def other(server):
        server.stop(0) if how == "stop" else server.close()
        done.set()

    async def main():
        server, serving, reader, writer = await _serving_one_connection(
            _waits_until_cancelled(cancelled), stop_timeout=0
        )
        threading.Thread(target=other, args=(server,), daemon=True).start()
        stopped, _ = await asyncio.wait([serving], timeout=hang_timeout(5))
        if not stopped:  # (a regression: unstick the server so that the test ends)
            for task in list(server._handlers):
                task.cancel()
            if not server._finished.done():
                server._finished.set_result(None)
            await asyncio.wait([serving], timeout=hang_timeout(5))
        eof = await reader.read()
        writer.close()
        await writer.wait_closed()
        stopper = await asyncio.to_thread(done.wait, hang_timeout(5))
        return bool(stopped), eof, server.closed, stopper

    assert gloop.run_until_complete(main()) == (True, b"", True, True)
    assert cancelled == [True]


def test_serve_forever_from_another_os_thread_waits_on_the_servers_loop(gloop):
    # serve_forever() in a plain thread for a server started on a loop that runs in
    # another thread: it waits until that loop stops the server (it raised a
    # RuntimeError about a task of another loop).
    outcome = []

    def other(server):
        try:
            server.serve_forever()
            outcome.append("returned")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion
            outcome.append(repr(exc))

    async def main():
        server = StreamServer(("127.0.0.1", 0), lambda sock, address: None)
        server.start()
        waiter = threading.Thread(target=other, args=(server,), daemon=True)
        waiter.start()
        while not outcome and not _waiting_on(server):
            await asyncio.sleep(0.001)
        state_while_waiting = (list(outcome), waiter.is_alive())
        await server.async_stop(0)
        await asyncio.to_thread(waiter.join, hang_timeout(5))
        return state_while_waiting, outcome, waiter.is_alive()

    assert gloop.run_until_complete(main()) == (([], True), ["returned"], False)


def _waiting_on(server):
    """Whether a serve_forever() from another thread waits on the server's loop: a task
    of that loop other than the accept loop awaits the server's close."""
    return any(
        task is not server._accepting and "async_serve_forever" in repr(task.get_coro())
        for task in asyncio.all_tasks()
    )


class _RefusingGroup(greenhub.Group):
    def spawn(self, fn, /, *args, **kwargs):
        raise ValueError("no more")


@pytest.mark.parametrize("how", ["spawn raises", "accept loop cancelled"])
def test_accept_loop_that_dies_stops_the_server(gloop, how):
    # The accept loop ended by anything but close(): the server used to stay "started"
    # with nothing accepting, and serve_forever() waited for ever.  Now the server is
    # stopped; an error that ended the loop is reported and raised by serve_forever().
    reported = []
    gloop.set_exception_handler(lambda loop, context: reported.append(context["message"]))

    async def main():
        server = StreamServer(
            ("127.0.0.1", 0), echo, spawn=_RefusingGroup() if how == "spawn raises" else None
        )
        serving = greenhub.spawn(server.serve_forever)
        await asyncio.sleep(0)
        if how == "spawn raises":
            answer = await talk(server.address)  # accepted, then closed: the pool refused
        else:
            answer = b""
            server._accepting.cancel()
        done, _ = await asyncio.wait([serving], timeout=hang_timeout(5))
        if not done:  # (a regression: end it, so that the test fails instead of hanging)
            await server.async_stop(0)
        try:
            outcome = await serving
        except RuntimeError as exc:
            outcome = repr(exc.__cause__)
        return bool(done), answer, outcome, server.closed

    expected = "ValueError('no more')" if how == "spawn raises" else None
    assert gloop.run_until_complete(main()) == (True, b"", expected, True)
    assert reported == (
        ["StreamServer: the accept loop failed; the server stops"] if expected else []
    )


def test_listening_socket_closed_under_the_server():
    # The listening socket closed by someone else (the caller's own greenhub socket
    # given as listener): accept() failed at once with EBADF, and the accept loop
    # retried for ever without a wait - the loop starved, the process spun.  Now the
    # server stops and serve_forever() raises.  (In a child: the old spin cannot be
    # interrupted from inside.)
    rc, out, err = run_child(
        """
        import errno
        from greenhub.server import StreamServer

        def main():
            listener = greenhub.socket.create_server(("127.0.0.1", 0))
            server = StreamServer(listener, lambda sock, address: None)
            server.start()
            greenhub.sleep(0)
            listener.close()
            try:
                server.serve_forever()
            except RuntimeError as exc:
                say("raised", exc.__cause__.errno == errno.EBADF, server.closed)

        greenhub.run(main)
        """,
        timeout=10,
    )
    assert (rc, out) == (0, "raised True True\n"), err


def test_serve_forever_from_a_plain_thread_runs_its_own_loop():
    # As in a script: no loop running, serve_forever() runs one (greenhub.run).
    def handle(sock, address):
        sock.sendall(b"served\n")
        server.close()

    server = StreamServer(("127.0.0.1", 0), handle)

    def script():
        server.serve_forever()
        return server.closed

    def client():
        import time

        while server.socket is None:
            time.sleep(0.001)
        with socket.create_connection(server.address) as sock, sock.makefile("rb") as f:
            return f.readline()

    import threading

    box = {}
    t = threading.Thread(target=lambda: box.setdefault("answer", client()))
    t.start()
    assert in_thread(script) is True
    t.join()
    assert box["answer"] == b"served\n"


@pytest.mark.parametrize("kind", ["plain listening", "plain bound", "green"])
def test_listener_socket(gloop, kind):
    if kind == "green":
        sock = gsocket.create_server(("127.0.0.1", 0))
    else:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        if kind == "plain listening":
            sock.listen()

    def main():
        with StreamServer(sock, echo) as server:
            assert server.address == sock.getsockname()
            return greenhub.await_(talk(server.address))

    try:
        assert in_vthread(gloop, main) == b"HELLO\n"
        if kind == "green":
            assert sock.fileno() == -1  # the server's: closed when it stopped
        else:
            assert sock.fileno() != -1  # the caller's stays theirs (the server used a dup)
    finally:
        sock.close()


def test_tls(gloop):
    server_ctx, client_ctx = tls_contexts()
    versions = []

    def handle(sock, address):
        versions.append(type(sock).__module__ + "." + type(sock).__name__)
        echo(sock, address)

    def main():
        with StreamServer(("127.0.0.1", 0), handle, ssl_context=server_ctx) as server:
            secure = greenhub.await_(talk(server.address, b"secret\n", client_ctx))
            # A client that does not speak TLS: the handshake fails, the server carries on.
            plain = greenhub.await_(talk(server.address, b"GET / HTTP/1.0\r\n\r\n"))
            again = greenhub.await_(talk(server.address, b"again\n", client_ctx))
        return secure, plain, again

    assert in_vthread(gloop, main) == (b"SECRET\n", b"", b"AGAIN\n")
    assert versions == ["greenhub.ssl.SSLSocket"] * 2


def test_handler_exception_is_reported_and_the_server_carries_on(gloop):
    reported = []
    gloop.set_exception_handler(lambda loop, context: reported.append(context))

    def handle(sock, address):
        if not reported:
            raise ValueError("handler bug")
        sock.sendall(b"fine\n")

    def main():
        with StreamServer(("127.0.0.1", 0), handle) as server:
            return [greenhub.await_(talk(server.address)) for _ in range(2)]

    assert in_vthread(gloop, main) == [b"", b"fine\n"]
    assert len(reported) == 1
    assert isinstance(reported[0]["exception"], ValueError)
    assert "handle() failed" in reported[0]["message"]


def test_async_twins(gloop):
    async def main():
        server = StreamServer(("127.0.0.1", 0), echo)
        async with server:
            answer = await talk(server.address)
        assert server.closed
        server2 = StreamServer(("127.0.0.1", 0), echo)
        serving = asyncio.ensure_future(server2.async_serve_forever())
        await asyncio.sleep(0)
        answer2 = await talk(server2.address, b"two\n")
        await server2.async_stop(0)
        await serving
        return answer, answer2

    assert gloop.run_until_complete(main()) == (b"HELLO\n", b"TWO\n")


def test_misuse(gloop):
    with pytest.raises(TypeError):
        StreamServer(("127.0.0.1", 0), "not callable")
    with pytest.raises(TypeError):
        StreamServer(("127.0.0.1", 0), echo, spawn=Pool(1), max_connections=2)
    with pytest.raises(TypeError):
        StreamServer(("127.0.0.1", 0), echo, ssl_context="yes")
    with pytest.raises(RuntimeError, match="no running event loop"):
        StreamServer(("127.0.0.1", 0), echo).start()

    def main():
        server = StreamServer(("127.0.0.1", 0), echo)
        server.start()
        try:
            with pytest.raises(RuntimeError, match="already been started"):
                server.start()
        finally:
            server.stop(0)
        StreamServer(("127.0.0.1", 0), echo).stop()  # never started: nothing to do
        return True

    assert in_vthread(gloop, main)


def test_stock_loop_is_refused():
    async def main():
        with pytest.raises(RuntimeError, match="greenhub loop"):
            StreamServer(("127.0.0.1", 0), echo).start()

    asyncio.run(main())


def test_ctrl_c_stops_serve_forever_in_a_script():
    # A script's serve_forever() runs its own loop; Ctrl-C cancels the handlers, stops
    # the server and raises KeyboardInterrupt, as greenhub.run() does.
    rc, out, err = run_child(
        """
        import socket, threading, time
        from greenhub.server import StreamServer

        def handle(sock, address):
            ready()
            try:
                greenhub.Event().wait()
            except BaseException as exc:
                say("handler:", type(exc).__name__)
                raise

        server = StreamServer(("127.0.0.1", 0), handle)
        clients = []

        def connect():
            while server.socket is None:
                time.sleep(0.001)
            clients.append(socket.create_connection(server.address))

        threading.Thread(target=connect, daemon=True).start()
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            say("KeyboardInterrupt; closed:", server.closed)
        """,
        sigint=True,
    )
    assert rc == 0, err
    assert out.splitlines()[-2:] == ["handler: CancelledError", "KeyboardInterrupt; closed: True"]


async def unix_talk(path, line):
    """One client of a Unix socket server: send a line, return the answer."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(line)
    answer = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return answer


def test_unix_socket_path(gloop, tmp_path):
    path = str(tmp_path / "chat.sock")

    def main():
        with StreamServer(path, echo) as server:
            assert server.address == path
            return greenhub.await_(unix_talk(path, b"unix\n"))

    assert in_vthread(gloop, main) == b"UNIX\n"


def test_async_handle(gloop):
    # A coroutine function as handle: its coroutine is awaited in the connection's task.
    async def handle(sock, address):
        await asyncio.sleep(0)
        sock.sendall(b"async\n")

    def main():
        with StreamServer(("127.0.0.1", 0), handle) as server:
            return greenhub.await_(talk(server.address))

    assert in_vthread(gloop, main) == b"async\n"


def test_unix_socket_file_is_removed_on_stop_and_a_stale_one_replaced(gloop, tmp_path):
    # A Unix path outlives its socket.  As asyncio's Unix servers do, StreamServer
    # replaces a socket file left at the path (a previous run that did not clean up)
    # and removes its own file when it stops, so the program can run again or restart
    # the server - before, the second start failed with EADDRINUSE.
    path = str(tmp_path / "svc.sock")

    def leave_a_stale_socket_file():
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(path)
        stale.close()  # the file stays behind, as a crashed server's does

    leave_a_stale_socket_file()

    async def stock_loop_takes_a_stale_socket_file_too():
        server = await asyncio.start_unix_server(lambda r, w: w.close(), path)
        server.close()
        await server.wait_closed()

    asyncio.run(stock_loop_takes_a_stale_socket_file_too())
    if not os.path.exists(path):  # removed on close from 3.13 on; 3.11/3.12 leave it
        leave_a_stale_socket_file()

    def main():
        answers = []
        for _ in range(2):  # a restart in the same program
            with StreamServer(path, echo):
                answers.append(greenhub.await_(unix_talk(path, b"again\n")))
            answers.append(os.path.exists(path))
        # Only the server's own file goes: not a newer one's at the same path ...
        old = StreamServer(path, echo)
        old.start()
        os.remove(path)
        with StreamServer(path, echo):
            old.stop()
            answers.append(os.path.exists(path))
            answers.append(greenhub.await_(unix_talk(path, b"again\n")))
        # ... and a path holding something else than a socket is not touched.
        with open(path, "w") as f:
            f.write("data")
        with pytest.raises(OSError):
            StreamServer(path, echo).start()
        with open(path) as f:
            answers.append(f.read())
        return answers

    assert in_vthread(gloop, main) == [
        b"AGAIN\n",
        False,
        b"AGAIN\n",
        False,
        True,
        b"AGAIN\n",
        "data",
    ]
