"""I/O error paths, on both loops: the same exception must arrive in the same place -
the protocol's connection_lost(exc), the awaited future, or the loop's exception handler -
and the loop must keep serving other connections afterwards.

Covered: a peer that resets the connection (RST) while we read and while we write, refused
connections, running out of file descriptors in a server (EMFILE, in a child process with a
low RLIMIT_NOFILE), closed sockets given to sock_* methods, and bad addresses.
"""

import asyncio
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from io_helpers import (
    RecordingProtocol,
    aoutcome,
    echo_server,
    exc_summary,
    free_port,
    nonblocking_pair,
    outcome,
    run,
    set_rst_on_close,
    still_serving,
)
from support import PY312

RESET_ERRORS = (ConnectionResetError, BrokenPipeError)


@pytest.fixture
def handler_calls(loop):
    calls = []
    loop.set_exception_handler(lambda lp, ctx: calls.append(ctx))
    return calls


async def _accepting_server(loop):
    """A listening socket whose accepted peers are handed to the test (not served)."""
    accepted = asyncio.Queue()

    def on_connect(reader, writer):
        accepted.put_nowait(writer)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], accepted


def _reset(writer):
    sock = writer.get_extra_info("socket")
    set_rst_on_close(sock)
    writer.transport.abort()


# -- the peer resets the connection ------------------------------------------------------


def test_reset_while_reading_reaches_connection_lost(loop, handler_calls):
    async def main():
        server, port, accepted = await _accepting_server(loop)
        transport, proto = await loop.create_connection(
            lambda: RecordingProtocol(loop), "127.0.0.1", port
        )
        peer = await accepted.get()
        peer.write(b"before")
        await asyncio.sleep(0.05)
        _reset(peer)
        exc = await proto.lost
        result = (bytes(proto.data), proto.events, exc_summary(exc) if exc else None)
        server.close()
        await server.wait_closed()
        return result, await still_serving(loop)

    (data, events, exc), serving = run(loop, main())
    assert data == b"before"
    assert events == ["made", "data", "lost"]  # no eof_received: a reset is not an EOF
    assert exc[1] is ConnectionResetError
    assert handler_calls == []  # a reset is not reported to the exception handler
    assert serving


def test_reset_while_reading_a_stream(loop, handler_calls):
    async def main():
        server, port, accepted = await _accepting_server(loop)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = await accepted.get()
        read = asyncio.ensure_future(reader.read(100))
        await asyncio.sleep(0.05)
        _reset(peer)
        got = await aoutcome(read)
        again = await aoutcome(reader.read(100))
        writer.write(b"x")
        drained = await aoutcome(writer.drain())
        writer.close()
        closed = await aoutcome(writer.wait_closed())
        server.close()
        await server.wait_closed()
        return got, again, drained, closed, await still_serving(loop)

    got, again, drained, closed, serving = run(loop, main())
    assert got[1] is ConnectionResetError
    assert again[1] is ConnectionResetError  # the stream keeps the exception
    assert drained[1] is ConnectionResetError
    assert closed[1] is ConnectionResetError
    assert handler_calls == []
    assert serving


def test_reset_while_writing(loop, handler_calls, caplog):
    async def main():
        server, port, accepted = await _accepting_server(loop)
        transport, proto = await loop.create_connection(
            lambda: RecordingProtocol(loop), "127.0.0.1", port
        )
        peer = await accepted.get()
        chunk = b"x" * 65536
        while transport.get_write_buffer_size() < 4 * 1024 * 1024:
            transport.write(chunk)  # the peer never reads: the buffer fills
        await asyncio.sleep(0.05)
        _reset(peer)
        exc = await proto.lost
        size_after = transport.get_write_buffer_size()
        # Writes to a lost connection are dropped; from the fifth on, each logs a warning.
        for _ in range(8):
            transport.write(b"late")
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        server.close()
        await server.wait_closed()
        return exc, proto.events, size_after, warnings, await still_serving(loop)

    exc, events, size_after, warnings, serving = run(loop, main())
    assert isinstance(exc, RESET_ERRORS)
    assert events[0] == "made" and events[-1] == "lost"
    assert "pause_writing" in events
    assert "resume_writing" not in events
    assert size_after == 0
    assert warnings == ["socket.send() raised exception."] * 4
    assert handler_calls == []
    assert serving


def test_reset_while_sock_sendall(loop, handler_calls):
    async def main():
        server, port, accepted = await _accepting_server(loop)
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        peer = await accepted.get()
        send = asyncio.ensure_future(loop.sock_sendall(sock, b"y" * (32 * 1024 * 1024)))
        await asyncio.sleep(0.05)
        assert not send.done()
        _reset(peer)
        got = await aoutcome(send)
        again = await aoutcome(loop.sock_sendall(sock, b"z"))
        recv = await aoutcome(loop.sock_recv(sock, 10))
        sock.close()
        server.close()
        await server.wait_closed()
        return got, again, recv, await still_serving(loop)

    got, again, recv, serving = run(loop, main())
    assert got[1] in RESET_ERRORS
    assert again[1] in RESET_ERRORS
    assert recv in (("ok", b""), exc_summary(ConnectionResetError(104, "Connection reset by peer")))
    assert handler_calls == []
    assert serving


def test_reset_while_sock_recv(loop):
    async def main():
        server, port, accepted = await _accepting_server(loop)
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        peer = await accepted.get()
        recv = asyncio.ensure_future(loop.sock_recv(sock, 10))
        await asyncio.sleep(0.05)
        _reset(peer)
        got = await aoutcome(recv)
        after = await aoutcome(loop.sock_recv(sock, 10))
        sock.close()
        server.close()
        await server.wait_closed()
        return got, after, await still_serving(loop)

    got, after, serving = run(loop, main())
    assert got == ("error", ConnectionResetError, 104, "[Errno 104] Connection reset by peer")
    assert after == ("ok", b"")  # the error is reported once; then the socket reads EOF
    assert serving


def test_reset_under_a_server_protocol(loop, handler_calls):
    """The server side sees the client's reset in connection_lost too."""

    async def main():
        protos = []

        def factory():
            protos.append(RecordingProtocol(loop))
            return protos[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        while not protos:
            await asyncio.sleep(0.01)
        await protos[0].made
        set_rst_on_close(client)
        client.close()
        exc = await protos[0].lost
        server.close()
        await server.wait_closed()
        return exc, protos[0].events, await still_serving(loop)

    exc, events, serving = run(loop, main())
    assert isinstance(exc, ConnectionResetError)
    assert events == ["made", "lost"]
    assert handler_calls == []
    assert serving


# -- refused connections -----------------------------------------------------------------


def test_create_connection_refused(loop):
    port = free_port()

    async def main():
        return await aoutcome(loop.create_connection(asyncio.Protocol, "127.0.0.1", port))

    assert run(loop, main()) == (
        "error",
        ConnectionRefusedError,
        111,
        f"[Errno 111] Connect call failed ('127.0.0.1', {port})",
    )
    assert run(loop, still_serving(loop))


def test_open_connection_refused_then_serving(loop):
    port = free_port()

    async def main():
        got = await aoutcome(asyncio.open_connection("127.0.0.1", port))
        return got, await still_serving(loop)

    got, serving = run(loop, main())
    assert got[1] is ConnectionRefusedError
    assert serving


def test_create_connection_refused_on_every_address(loop):
    """Two addresses (IPv6 and IPv4 loopback) both refuse: one combined OSError."""
    port = free_port()
    infos = [
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
    ]

    async def fake_getaddrinfo(*args, **kwargs):
        return infos

    loop.getaddrinfo = fake_getaddrinfo

    async def main():
        plain = await aoutcome(loop.create_connection(asyncio.Protocol, "refuser", port))
        group = None
        if PY312:
            try:
                await loop.create_connection(asyncio.Protocol, "refuser", port, all_errors=True)
            except ExceptionGroup as eg:  # noqa: F821 - 3.11+ builtin
                group = [exc_summary(e) for e in eg.exceptions]
        return plain, group

    plain, group = run(loop, main())
    assert plain[1] is OSError and plain[2] is None
    assert plain[3] == (
        f"Multiple exceptions: [Errno 111] Connect call failed ('::1', {port}, 0, 0), "
        f"[Errno 111] Connect call failed ('127.0.0.1', {port})"
    )
    if PY312:
        assert [g[1] for g in group] == [ConnectionRefusedError, ConnectionRefusedError]


def test_sock_connect_refused(loop):
    port = free_port()

    async def attempt(lp):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            first = await aoutcome(lp.sock_connect(sock, ("127.0.0.1", port)))
            # What a second connect on the same socket gives depends on the kernel;
            # it must be what the stock loop gets.
            retry = await aoutcome(lp.sock_connect(sock, ("127.0.0.1", port)))
        finally:
            sock.close()
        return ("ok", (first, retry))

    got = run(loop, attempt(loop))
    assert got == _stock_outcome(attempt)
    assert got[1][0] == (
        "error",
        ConnectionRefusedError,
        111,
        f"[Errno 111] Connect call failed ('127.0.0.1', {port})",
    )
    assert run(loop, still_serving(loop))


# -- out of file descriptors in a server -------------------------------------------------

EMFILE_SERVER = textwrap.dedent(
    """
    import asyncio, os, resource, sys
    sys.path.insert(0, sys.argv[2])
    import support

    loop = support.new_loop(sys.argv[1])

    def handler(loop, context):
        exc = context.get("exception")
        print("HANDLER", context["message"], type(exc).__name__, getattr(exc, "errno", None),
              "socket" in context, flush=True)

    loop.set_exception_handler(handler)

    async def serve(reader, writer):
        data = await reader.read(100)
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=50)
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + 3, hard))  # 3 spare fds
        print("PORT", server.sockets[0].getsockname()[1], flush=True)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        await reader.read()  # until the parent closes our stdin
        server.close()
        print("DONE", flush=True)

    loop.run_until_complete(main())
    loop.close()
    """
)


def test_emfile_in_accept_is_reported_and_the_server_recovers(kind, tmp_path):
    script = tmp_path / "server.py"
    script.write_text(EMFILE_SERVER)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests_dir), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, str(script), kind, tests_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("PORT"), line + proc.stderr.read()
        port = int(line.split()[1])
        # Six clients: the server accepts three, then runs out of fds.
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(6)]
        first = proc.stdout.readline().split()
        # Free the server's fds: the three it accepted see EOF and close.
        for s in held:
            s.shutdown(socket.SHUT_WR)
        replies = []
        for s in held:
            s.settimeout(5)
            replies.append(s.recv(100))  # served once the server accepts again (~1 s)
            s.close()
        # A new client is served too.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(b"ping")
            c.shutdown(socket.SHUT_WR)
            late = c.recv(100)
        proc.stdin.close()
        rest = proc.stdout.read()
        assert proc.wait(timeout=10) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert " ".join(first) == "HANDLER socket.accept() out of system resource OSError 24 True"
    assert replies == [b"echo:"] * 6
    assert late == b"echo:ping"
    assert rest.split("\n")[-2] == "DONE"


# -- closed sockets given to sock_* ------------------------------------------------------


def _closed_socket(family=socket.AF_INET, type=socket.SOCK_STREAM):
    sock = socket.socket(family, type)
    sock.setblocking(False)
    sock.close()
    return sock


SOCK_CALLS = {
    "sock_recv": lambda lp, s: lp.sock_recv(s, 10),
    "sock_recv_into": lambda lp, s: lp.sock_recv_into(s, bytearray(10)),
    "sock_sendall": lambda lp, s: lp.sock_sendall(s, b"data"),
    "sock_sendall_empty": lambda lp, s: lp.sock_sendall(s, b""),
    "sock_connect": lambda lp, s: lp.sock_connect(s, ("127.0.0.1", 9)),
    "sock_accept": lambda lp, s: lp.sock_accept(s),
}
if sys.version_info >= (3, 11):
    SOCK_CALLS.update(
        {
            "sock_recvfrom": lambda lp, s: lp.sock_recvfrom(s, 10),
            "sock_recvfrom_into": lambda lp, s: lp.sock_recvfrom_into(s, bytearray(10)),
            "sock_sendto": lambda lp, s: lp.sock_sendto(s, b"x", ("127.0.0.1", 9)),
        }
    )


def _stock_outcome(coro_fn):
    """What the stock loop gives for the same call: coro_fn(loop) is an awaitable that
    returns a value (wrapped here) or already an outcome tuple (passed through)."""
    from support import new_loop

    stock = new_loop("asyncio")
    try:
        got = stock.run_until_complete(aoutcome(coro_fn(stock)))
    finally:
        stock.close()
    if got[0] == "ok" and isinstance(got[1], tuple) and got[1][:1] in (("ok",), ("error",)):
        return got[1]
    return got


@pytest.mark.parametrize("name", sorted(SOCK_CALLS))
def test_closed_socket_given_to_sock_methods(loop, name):
    call = SOCK_CALLS[name]
    got = run(loop, aoutcome(call(loop, _closed_socket())))
    expected = _stock_outcome(lambda lp: call(lp, _closed_socket()))
    assert got == expected
    assert got[0] == "error"
    assert run(loop, still_serving(loop))


def test_closed_socket_given_to_sock_sendfile(loop, tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"z" * 1000)

    async def attempt(lp):
        with open(path, "rb") as f:
            return await aoutcome(lp.sock_sendfile(_closed_socket(), f))

    assert run(loop, attempt(loop)) == _stock_outcome(attempt)
    assert run(loop, still_serving(loop))


def test_socket_closed_while_sock_recv_waits(loop):
    """Neither loop notices a socket closed under a pending sock_recv (the fd just stops
    being polled); cancelling the call cleans up, and a new socket that reuses the fd
    number is served normally."""

    async def main():
        a, b = nonblocking_pair()
        fd = a.fileno()
        pending = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0.02)
        a.close()
        b.close()
        timed_out = await aoutcome(asyncio.wait_for(asyncio.shield(pending), 0.2))
        pending.cancel()
        cancelled = None
        try:
            await pending
        except asyncio.CancelledError:
            cancelled = "cancelled"
        c, d = nonblocking_pair()
        try:
            reused = c.fileno() == fd or d.fileno() == fd
            reader = c if c.fileno() == fd else d
            writer = d if reader is c else c
            recv = asyncio.ensure_future(loop.sock_recv(reader, 10))
            await asyncio.sleep(0.01)
            writer.send(b"new")
            got = await recv
        finally:
            c.close()
            d.close()
        return timed_out[1], cancelled, reused, got

    assert run(loop, main()) == (asyncio.TimeoutError, "cancelled", True, b"new")


# -- bad addresses -----------------------------------------------------------------------

NUMERIC_ONLY = socket.AI_NUMERICHOST

BAD_CONNECTIONS = {
    "host int": dict(host=123, port=80),
    "host float": dict(host=1.5, port=80),
    "host bytearray": dict(host=bytearray(b"127.0.0.1"), port=80),
    "port too big": dict(host="127.0.0.1", port=70000),
    "port negative": dict(host="127.0.0.1", port=-1),
    "port float": dict(host="127.0.0.1", port=1.5),
    "port unknown service": dict(host="127.0.0.1", port="no-such-service"),
    "name with numeric-only flag": dict(host="name.invalid", port=80, flags=NUMERIC_ONLY),
    "bad literal numeric-only": dict(host="1.2.3.4.5", port=80, flags=NUMERIC_ONLY),
    "family mismatch": dict(host="::1", port=80, family=socket.AF_INET),
    "bad family": dict(host="127.0.0.1", port=80, family=12345),
    "port only": dict(host=None, port=80),
    "host only": dict(host="127.0.0.1", port=None),
    "local_addr bad": dict(host="127.0.0.1", port=80, local_addr=("1.2.3.4.5", 0)),
    "local_addr unknown": dict(
        host="127.0.0.1", port=80, local_addr=("name.invalid", 0), flags=NUMERIC_ONLY
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONNECTIONS))
def test_bad_addresses_for_create_connection(loop, case):
    kwargs = dict(BAD_CONNECTIONS[case])

    def attempt(lp):
        return lp.create_connection(asyncio.Protocol, **kwargs)

    got = run(loop, aoutcome(attempt(loop)))
    assert got == _stock_outcome(attempt)
    assert got[0] == "error"
    assert run(loop, still_serving(loop))


BAD_SOCK_ADDRESSES = {
    "tuple too short": ("127.0.0.1",),
    "tuple too long": ("127.0.0.1", 80, 0),
    "port str": ("127.0.0.1", "80"),
    "port too big": ("127.0.0.1", 70000),
    "host int": (123, 80),
    "not a tuple": "127.0.0.1:80",
    "ipv6 on ipv4 socket": ("::1", 80),
    "none": None,
}


@pytest.mark.parametrize("case", sorted(BAD_SOCK_ADDRESSES))
def test_bad_addresses_for_sock_connect(loop, case):
    address = BAD_SOCK_ADDRESSES[case]

    async def attempt(lp):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            return await aoutcome(lp.sock_connect(sock, address))
        finally:
            sock.close()

    got = run(loop, attempt(loop))
    assert got == _stock_outcome(attempt)
    assert got[0] == "error"
    assert run(loop, still_serving(loop))


BAD_SERVERS = {
    "port too big": dict(host="127.0.0.1", port=70000),
    "host int": dict(host=123, port=0),
    "name with numeric-only flag": dict(host="name.invalid", port=0, flags=NUMERIC_ONLY),
    "address not local": dict(host="192.0.2.123", port=0),
    "bad family": dict(host="127.0.0.1", port=0, family=12345),
    "host and sock": dict(host="127.0.0.1", port=0, sock=True),
}


@pytest.mark.parametrize("case", sorted(BAD_SERVERS))
def test_bad_addresses_for_create_server(loop, case):
    kwargs = dict(BAD_SERVERS[case])

    async def attempt(lp):
        kw = dict(kwargs)
        with socket.socket() as sock:
            if kw.get("sock"):
                kw["sock"] = sock
            return await aoutcome(lp.create_server(asyncio.Protocol, **kw))

    got = run(loop, attempt(loop))
    assert got == _stock_outcome(attempt)
    if got[0] == "ok":  # pragma: no cover - only if the environment allows the bind
        got[1].close()
    assert run(loop, still_serving(loop))


def test_server_port_in_use(loop):
    async def main():
        server, port = await echo_server(loop)
        try:
            return port, await aoutcome(loop.create_server(asyncio.Protocol, "127.0.0.1", port))
        finally:
            server.close()
            await server.wait_closed()

    port, got = run(loop, main())
    assert got[:3] == ("error", OSError, 98)
    assert got[3].startswith(
        f"[Errno 98] error while attempting to bind on address ('127.0.0.1', {port}): "
    )


def test_bad_remote_address_for_datagram_endpoint(loop):
    def attempt(lp):
        return lp.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=("1.2.3.4.5", 9), flags=NUMERIC_ONLY
        )

    got = run(loop, aoutcome(attempt(loop)))
    assert got == _stock_outcome(attempt)
    assert got[0] == "error"


def test_unix_connection_to_missing_path(loop, tmp_path):
    path = str(tmp_path / "nobody-listens")

    def attempt(lp):
        return lp.create_unix_connection(asyncio.Protocol, path)

    got = run(loop, aoutcome(attempt(loop)))
    assert got == _stock_outcome(attempt)
    assert got[1] is FileNotFoundError
    assert run(loop, still_serving(loop))


def test_sock_methods_refuse_blocking_sockets_in_debug_mode(loop):
    loop.set_debug(True)
    a, b = socket.socketpair()  # blocking
    try:
        results = [
            run(loop, aoutcome(loop.sock_recv(a, 1))),
            run(loop, aoutcome(loop.sock_sendall(a, b"x"))),
        ]
    finally:
        a.close()
        b.close()
    assert results == [
        ("error", ValueError, None, "the socket must be non-blocking"),
        ("error", ValueError, None, "the socket must be non-blocking"),
    ]


def test_write_after_close_and_to_aborted_transport(loop):
    async def main():
        server, port = await echo_server(loop)
        transport, proto = await loop.create_connection(
            lambda: RecordingProtocol(loop), "127.0.0.1", port
        )
        transport.abort()
        after_abort = outcome(transport.write, b"x")
        eof = outcome(transport.write_eof)
        lost = await proto.lost
        server.close()
        await server.wait_closed()
        return after_abort, eof, lost, transport.is_closing()

    after_abort, eof, lost, closing = run(loop, main())
    assert after_abort == ("ok", None)  # dropped silently (counted for the warning)
    assert eof == ("ok", None)
    assert lost is None
    assert closing
