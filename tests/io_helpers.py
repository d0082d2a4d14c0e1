"""Helpers shared by the I/O behaviour tests (test_io_*.py)."""

import asyncio
import socket
import struct

TIMEOUT = 10


def run(loop, coro, timeout=TIMEOUT):
    """Run coro on loop, bounded by a timeout so a hang fails instead of blocking."""
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def outcome(fn, *args, **kwargs):
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the exception is what is compared
        return exc_summary(exc)


async def aoutcome(awaitable):
    try:
        return ("ok", await awaitable)
    except Exception as exc:  # noqa: BLE001
        return exc_summary(exc)


def exc_summary(exc):
    return ("error", type(exc), getattr(exc, "errno", None), str(exc))


def nonblocking_pair(family=socket.AF_UNIX, type=socket.SOCK_STREAM):
    a, b = socket.socketpair(family, type)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def set_rst_on_close(sock):
    """close() then sends a TCP RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def free_port():
    """A TCP port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def echo_server(loop, host="127.0.0.1"):
    """A streams echo server on the running loop: returns (server, port)."""

    async def handle(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, 0)
    return server, server.sockets[0].getsockname()[1]


async def still_serving(loop, port=None, payload=b"still alive"):
    """One echo round trip through a fresh connection: the loop keeps serving.
    With no port, a temporary echo server is started (and closed) for it."""
    server = None
    if port is None:
        server, port = await echo_server(loop)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        got = await reader.readexactly(len(payload))
        writer.close()
        await writer.wait_closed()
        return got == payload
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()


class RecordingProtocol(asyncio.Protocol):
    """Records every callback; `lost` is a future resolved by connection_lost."""

    def __init__(self, loop):
        self.events = []
        self.data = bytearray()
        self.transport = None
        self.made = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")
        self.made.set_result(None)

    def data_received(self, data):
        self.data += data
        if not self.events or self.events[-1] != "data":
            self.events.append("data")

    def eof_received(self):
        self.events.append("eof")

    def pause_writing(self):
        self.events.append("pause_writing")

    def resume_writing(self):
        self.events.append("resume_writing")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)
