"""Which contextvars.Context each protocol callback runs in, on both loops.

Python 3.15 gave socket transports a Context of their own.  A server copies the
context it is created in; each accepted connection gets a copy of that, in which
the accept task (so the protocol factory) and every callback of the connection's
protocol run.  create_connection() and its relatives run the new protocol's
callbacks in one copy of the caller's context.  A variable a protocol sets in
connection_made() is therefore seen by its data_received(), eof_received(),
connection_lost()..., and by no other connection.  Before 3.15 each callback ran
in a copy made when it was scheduled, and nothing here takes a `context`.

Each scenario records, for every protocol callback, the variables it sees, and
appends its own name to TRAIL: a callback sees the names of the earlier
callbacks that ran in its context (or in the context it was copied from).  The
records must equal the stock loop's on every version (``stock`` runs the same
scenario on a fresh stock loop); on 3.15 the tests also spell out the rules
above.  greenhub's reads and writes run protocol methods from C: those paths
must honour the transport's context too.  3.15 gives no context to datagram,
pipe and subprocess transports, nor a `context=` argument to the public
create_*()/start_*() functions: nothing to test there.
"""

import asyncio
import contextvars
import functools
import os
import socket
import ssl
import sys
import tempfile

import pytest
import support
from io_helpers import run

PY315 = sys.version_info >= (3, 15)

ORIGIN = contextvars.ContextVar("ORIGIN", default="unset")
TRAIL = contextvars.ContextVar("TRAIL", default=())


def note(log, who, name):
    log.append((who, name, ORIGIN.get(), TRAIL.get()))
    TRAIL.set(TRAIL.get() + (name,))


def play(loop, scenario, *args):
    """Runs the scenario on loop, in a fresh empty context (what runs outside the
    scenario's tasks, in the loop's own context, sets nothing in the test's); returns
    its records, each side's apart: the order in which the two ends of a connection
    run their callbacks is the kernel's and the poll's, not the loop's to keep."""
    log = contextvars.Context().run(run, loop, scenario(loop, *args))
    sides = {}
    for record in log:
        sides.setdefault(record[0], []).append(record)
    return sides


def stock(scenario, *args):
    """The scenario's records on a fresh stock loop: the reference."""
    loop = support.new_loop("asyncio")
    try:
        return play(loop, scenario, *args)
    finally:
        loop.close()


class Recorder(asyncio.Protocol):
    """Notes every callback in `log` as `who`; answers b"ping" with b"pong"; `lost`
    resolves at connection_lost()."""

    def __init__(self, loop, log, who):
        self.log, self.who = log, who
        note(log, who, "factory")
        self.got_data = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        note(self.log, self.who, "made")

    def data_received(self, data):
        note(self.log, self.who, "data")
        if data == b"ping":
            self.transport.write(b"pong")
        if not self.got_data.done():
            self.got_data.set_result(data)

    def eof_received(self):
        note(self.log, self.who, "eof")

    def connection_lost(self, exc):
        note(self.log, self.who, "lost")
        self.lost.set_result(exc)


class BufferedRecorder(asyncio.BufferedProtocol, Recorder):
    """The same through get_buffer()/buffer_updated() (greenhub's other C read path)."""

    def get_buffer(self, sizehint):
        note(self.log, self.who, "get_buffer")
        self.buf = bytearray(64)
        return self.buf

    def buffer_updated(self, nbytes):
        note(self.log, self.who, "buffer_updated")
        Recorder.data_received(self, bytes(self.buf[:nbytes]))


async def two_connections(loop, create_server, create_connection, server_protocol=Recorder):
    """A server and two connections to it, one after the other: each client sends
    b"ping", waits for b"pong", sends EOF (TLS: closes); the server closes at EOF."""
    log, served = [], []

    def server_factory():
        served.append(server_protocol(loop, log, "server"))
        return served[-1]

    ORIGIN.set("creates server")
    server = await create_server(server_factory)
    ORIGIN.set("after create_server")
    for n in (1, 2):
        ORIGIN.set(f"connects {n}")
        transport, client = await create_connection(
            functools.partial(Recorder, loop, log, f"client {n}")
        )
        log.append(("caller", n, ORIGIN.get(), TRAIL.get()))
        transport.write(b"ping")
        await client.got_data
        if transport.can_write_eof():
            transport.write_eof()
        else:  # TLS
            transport.close()
        await client.lost
        await served[-1].lost
    server.close()
    await server.wait_closed()
    return log


def server_records(sides, who="server"):
    return [(name, origin, trail) for _, name, origin, trail in sides[who]]


def check_315_rules(log, reads=("data",)):
    """The 3.15 rules, spelled out for a log of two_connections()."""
    server = server_records(log)
    per_conn = len(server) // 2
    first, second = server[:per_conn], server[per_conn:]
    # The accept task, the factory and every callback of a connection: one context,
    # a copy of the context the server was created in - for each connection afresh.
    for conn in (first, second):
        names = [name for name, _, _ in conn]
        assert names[:2] == ["factory", "made"]
        for i, (_, origin, trail) in enumerate(conn):
            assert origin == "creates server"
            assert trail == tuple(names[:i])
        assert set(reads) <= set(names)
    for n in (1, 2):
        check_client_rules(server_records(log, f"client {n}"), f"connects {n}")
        assert log["caller"][n - 1] == ("caller", n, f"connects {n}", ("factory",) * n)


def check_client_rules(records, origin):
    """create_connection() and its kin: the factory runs in the caller's context, the
    protocol's callbacks in one copy of it, made before the factory ran."""
    names = [name for name, _, _ in records]
    factory, *callbacks = records
    before = factory[2]
    assert factory[:2] == ("factory", origin)
    for i, (_, seen_origin, trail) in enumerate(callbacks, 1):
        assert seen_origin == origin
        assert trail == before + tuple(names[1:i])


# -- TCP, Unix, TLS ---------------------------------------------------------------------


async def tcp_scenario(loop, server_protocol_name="Recorder"):
    server_protocol = {"Recorder": Recorder, "BufferedRecorder": BufferedRecorder}[
        server_protocol_name
    ]
    port = []

    async def create_server(factory):
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        return server

    def create_connection(factory):
        return loop.create_connection(factory, "127.0.0.1", port[0])

    return await two_connections(loop, create_server, create_connection, server_protocol)


def test_tcp_protocol_callbacks(loop):
    log = play(loop, tcp_scenario)
    assert log == stock(tcp_scenario)
    if PY315:
        check_315_rules(log)


def test_tcp_buffered_protocol_callbacks(loop):
    log = play(loop, tcp_scenario, "BufferedRecorder")
    assert log == stock(tcp_scenario, "BufferedRecorder")
    if PY315:
        check_315_rules(log, reads=("get_buffer", "buffer_updated", "data"))


async def unix_scenario(loop):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s")

        def create_server(factory):
            return loop.create_unix_server(factory, path)

        def create_connection(factory):
            return loop.create_unix_connection(factory, path)

        return await two_connections(loop, create_server, create_connection)


def test_unix_protocol_callbacks(loop):
    log = play(loop, unix_scenario)
    assert log == stock(unix_scenario)
    if PY315:
        check_315_rules(log)


@pytest.fixture(scope="module")
def tls():
    return support.tls_contexts()


async def tls_scenario(loop, contexts):
    server_ctx, client_ctx = contexts
    port = []

    async def create_server(factory):
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx)
        port.append(server.sockets[0].getsockname()[1])
        return server

    def create_connection(factory):
        return loop.create_connection(
            factory, "127.0.0.1", port[0], ssl=client_ctx, server_hostname="localhost"
        )

    return await two_connections(loop, create_server, create_connection)


def test_tls_protocol_callbacks(loop, tls):
    log = play(loop, tls_scenario, tls)
    assert log == stock(tls_scenario, tls)
    if PY315:
        # asyncio's SSLProtocol calls the application's protocol from the socket
        # transport's callbacks: the same rules.
        check_315_rules(log)


async def accepted_socket_scenario(loop):
    """connect_accepted_socket() and create_connection(sock=) over a socket pair."""
    log = []
    a, b = socket.socketpair()
    ORIGIN.set("accepts")
    server_t, server = await loop.connect_accepted_socket(
        lambda: Recorder(loop, log, "server"), sock=a
    )
    ORIGIN.set("connects")
    client_t, client = await loop.create_connection(lambda: Recorder(loop, log, "client"), sock=b)
    client_t.write(b"ping")
    await client.got_data
    client_t.write_eof()
    await client.lost
    await server.lost
    return log


def test_connect_accepted_socket_and_sock_callbacks(loop):
    log = play(loop, accepted_socket_scenario)
    assert log == stock(accepted_socket_scenario)
    if PY315:
        check_client_rules(server_records(log, "server"), "accepts")
        check_client_rules(server_records(log, "client"), "connects")


async def streams_scenario(loop):
    """start_server()'s handler task starts in the connection's context."""
    seen = []

    async def handle(reader, writer):
        seen.append(("handler", ORIGIN.get(), TRAIL.get()))
        TRAIL.set(("handler",))
        writer.write(await reader.read(4))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    ORIGIN.set("starts server")
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for n in (1, 2):
        ORIGIN.set(f"opens {n}")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        seen.append(("client", ORIGIN.get(), await reader.read()))
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return seen


def test_streams_handler_context(loop):
    seen = play(loop, streams_scenario)
    assert seen == stock(streams_scenario)
    # Each handler in a copy of the server's context; not the first handler's TRAIL.
    assert seen["handler"] == [("handler", "starts server", ())] * 2


# -- flow control -----------------------------------------------------------------------


class Flooder(asyncio.Protocol):
    """Writes `chunk` once per loop iteration, from a callback scheduled in its
    connection_made() (so in a copy of the connection's context), until paused; the
    peer reads nothing until told to."""

    def __init__(self, loop, log, chunk, high):
        self.loop, self.log, self.chunk, self.high = loop, log, chunk, high
        self.paused = loop.create_future()
        self.resumed = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.set_write_buffer_limits(high=self.high)
        note(self.log, "writer", "made")
        self.loop.call_soon(self.pump, 0)

    def pump(self, n):
        if n == 0:
            TRAIL.set(TRAIL.get() + ("pump 0",))
        if self.paused.done() or n > 100_000:
            return
        self.transport.write(self.chunk)
        self.loop.call_soon(self.pump, n + 1)

    def pause_writing(self):
        note(self.log, "writer", "pause")
        self.paused.set_result(None)

    def resume_writing(self):
        note(self.log, "writer", "resume")
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_lost(self, exc):
        pass


class Sink(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        transport.pause_reading()

    def data_received(self, data):
        pass


async def flow_scenario(loop, chunk_size, high):
    log = []
    a, b = socket.socketpair()
    ORIGIN.set("writer")
    _, writer = await loop.create_connection(
        lambda: Flooder(loop, log, b"x" * chunk_size, high), sock=a
    )
    ORIGIN.set("sink")
    sink_t, _ = await loop.create_connection(Sink, sock=b)
    ORIGIN.set("main")
    await writer.paused
    sink_t.resume_reading()
    await writer.resumed
    writer.transport.abort()
    sink_t.abort()
    await asyncio.sleep(0)
    return log


@pytest.mark.parametrize(
    ("chunk_size", "high"),
    [(8192, 4096), (1024, 0)],
    ids=["chunk-over-high", "high-0"],
)
def test_pause_and_resume_writing(loop, chunk_size, high):
    # pause_writing() runs inside write(), in the caller's context (here a copy of the
    # connection's, with "pump 0" in TRAIL); resume_writing() in the writer callback's
    # (3.15: the connection's).  greenhub sends the writes of a loop iteration together
    # at its end, but a write that takes the queue past the high-water mark is sent at
    # once, as asyncio sends it, so that the protocol is paused where it would be.
    log = play(loop, flow_scenario, chunk_size, high)
    assert log == stock(flow_scenario, chunk_size, high)
    assert log["writer"][:2] == [
        ("writer", "made", "writer", ()),
        ("writer", "pause", "writer", ("made", "pump 0")),
    ]
    if PY315:
        assert log["writer"][2] == ("writer", "resume", "writer", ("made",))


# -- the private entry points -----------------------------------------------------------


@pytest.mark.parametrize("which", ["_add_reader", "_add_writer"])
def test_add_reader_writer_context_argument(loop, which):
    # 3.15's selector transports pass their context to _add_reader()/_add_writer(); the
    # Handle runs in it.  Before 3.15 neither method takes a keyword.
    a, b = socket.socketpair()
    var = contextvars.ContextVar("var", default="outside")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "inside")
    seen = []
    try:
        add = getattr(loop, which)
        if not PY315:
            with pytest.raises(TypeError, match="unexpected keyword argument 'context'"):
                add(a.fileno(), seen.append, "x", context=ctx)
            return
        handle = add(a.fileno(), lambda: seen.append(var.get()), context=ctx)
        assert handle.get_context() is ctx
        if which == "_add_reader":
            b.send(b"!")
        support.run_once(loop)
        support.run_once(loop)
        assert seen[:1] == ["inside"]
        # context=None: a copy of the current context, as without the argument.
        var.set("current")
        handle = add(a.fileno(), lambda: seen.append(var.get()), context=None)
        assert handle.get_context() is not ctx
        seen.clear()
        support.run_once(loop)
        assert seen[:1] == ["current"]
        with pytest.raises(TypeError, match="unexpected keyword argument 'ctx'"):
            add(a.fileno(), seen.append, ctx=ctx)
    finally:
        (loop._remove_reader if which == "_add_reader" else loop._remove_writer)(a.fileno())
        a.close()
        b.close()


@pytest.mark.parametrize("ssl_transport", [False, True], ids=["socket", "ssl"])
def test_make_transport_context_argument(loop, ssl_transport):
    # The loop's transport factories take `context` exactly where the stock loop's do.
    a, b = socket.socketpair()
    a.setblocking(False)
    var = contextvars.ContextVar("var", default="outside")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "inside")
    seen = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            seen.append(("made", var.get()))

    def make(**kwargs):
        waiter = loop.create_future()
        if ssl_transport:
            sslctx = ssl.create_default_context()
            sslctx.check_hostname = False
            sslctx.verify_mode = ssl.CERT_NONE
            return loop._make_ssl_transport(
                a, P(), sslctx, waiter, server_hostname="x", **kwargs
            ), waiter
        return loop._make_socket_transport(a, P(), waiter, **kwargs), waiter

    try:
        if not PY315:
            with pytest.raises(TypeError, match="context"):
                make(context=ctx)
            return
        transport, waiter = make(context=ctx)
        support.run_once(loop)
        if not ssl_transport:
            assert seen == [("made", "inside")]
        transport.abort()
        support.run_once(loop)
        waiter.cancel()
    finally:
        a.close()
        b.close()
