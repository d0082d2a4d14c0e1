"""loop.sock_* methods, on both loops: basic behaviour, and cancellation safety - a
cancelled call leaves the socket usable and loses no data that the kernel has not
already moved.

Methods: sock_recv, sock_recv_into, sock_recvfrom, sock_recvfrom_into, sock_sendall,
sock_sendto, sock_connect, sock_accept, sock_sendfile (native and fallback).  Where the
outcome of a cancellation depends on how far the kernel got (a partly sent buffer), the
test checks the invariants the stock loop gives: what the peer receives is a prefix of
what was sent, followed exactly by what is sent after the cancellation.
"""

import asyncio
import io
import os
import socket
import ssl

import pytest
from io_helpers import aoutcome, nonblocking_pair, run

BIG = 32 * 1024 * 1024


async def _pending(task):
    """Let the task start and block; fail if it finished instead."""
    for _ in range(3):
        await asyncio.sleep(0.01)
    assert not task.done(), task
    return task


async def _cancel(task):
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    return ("finished", task.result())


def _drain(sock):
    """Everything readable from a non-blocking socket right now."""
    chunks = []
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


async def _read_exactly(loop, sock, n):
    chunks = []
    while n > 0:
        data = await loop.sock_recv(sock, min(n, 1 << 20))
        assert data, "unexpected EOF"
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


async def _read_all(loop, sock):
    chunks = []
    while data := await loop.sock_recv(sock, 1 << 20):
        chunks.append(data)
    return b"".join(chunks)


def _pattern(n):
    block = bytes(range(256)) * 4096  # 1 MiB, position-dependent content
    return (block * (n // len(block) + 1))[:n]


@pytest.fixture
def pair():
    a, b = nonblocking_pair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.setblocking(False)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    yield srv
    srv.close()


# -- sock_recv / sock_recv_into ----------------------------------------------------------


def test_sock_recv_basic(loop, pair):
    a, b = pair

    async def main():
        b.send(b"ready")
        first = await loop.sock_recv(a, 100)  # data already there
        task = asyncio.ensure_future(loop.sock_recv(a, 3))
        await _pending(task)
        b.send(b"abcdef")
        second = await task
        third = await loop.sock_recv(a, 100)
        b.shutdown(socket.SHUT_WR)
        eof = await loop.sock_recv(a, 100)
        return first, second, third, eof

    assert run(loop, main()) == (b"ready", b"abc", b"def", b"")


def test_sock_recv_cancelled_loses_nothing(loop, pair):
    a, b = pair

    async def main():
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await _pending(task)
        cancelled = await _cancel(task)
        b.send(b"after cancel")
        got = await loop.sock_recv(a, 100)
        # And again, with the cancel racing data that is already queued.
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await _pending(task)
        task.cancel()
        b.send(b"second")
        try:
            lost = await task
        except asyncio.CancelledError:
            lost = b""
        rest = await loop.sock_recv(a, 100)
        return cancelled, got, lost + rest

    assert run(loop, main()) == ("cancelled", b"after cancel", b"second")


def test_sock_recv_into_basic_and_cancelled(loop, pair):
    a, b = pair

    async def main():
        buf = bytearray(8)
        task = asyncio.ensure_future(loop.sock_recv_into(a, buf))
        await _pending(task)
        cancelled = await _cancel(task)
        untouched = bytes(buf)
        b.send(b"0123456789")
        n1 = await loop.sock_recv_into(a, buf)
        first = bytes(buf[:n1])
        view = memoryview(buf)[2:5]
        n2 = await loop.sock_recv_into(a, view)
        return cancelled, untouched, n1, first, n2, bytes(buf[2 : 2 + n2])

    assert run(loop, main()) == ("cancelled", bytes(8), 8, b"01234567", 2, b"89")


def test_two_concurrent_sock_recv_on_one_socket(loop, pair):
    """The stock loop keeps one reader per fd: the later call replaces the earlier one,
    which then waits until it is cancelled."""
    a, b = pair

    async def main():
        first = asyncio.ensure_future(loop.sock_recv(a, 10))
        await _pending(first)
        second = asyncio.ensure_future(loop.sock_recv(a, 10))
        await _pending(second)
        b.send(b"hello")
        got = await asyncio.wait_for(second, 5)
        await asyncio.sleep(0.05)
        state = first.done()
        first.cancel()
        return got, state

    assert run(loop, main()) == (b"hello", False)


def test_sock_recv_large_stream_intact(loop, pair):
    a, b = pair
    data = _pattern(8 * 1024 * 1024)

    async def main():
        reader = asyncio.ensure_future(_read_exactly(loop, a, len(data)))
        await loop.sock_sendall(b, data)
        return await reader

    assert run(loop, main()) == data


def test_sock_methods_reject_ssl_sockets(loop):
    ctx = ssl.create_default_context()
    raw = socket.socket()
    wrapped = ctx.wrap_socket(raw, do_handshake_on_connect=False, server_hostname="x")
    try:
        got = run(loop, aoutcome(loop.sock_recv(wrapped, 1)))
    finally:
        wrapped.close()
    assert got[1] is TypeError
    assert got[3] == "Socket cannot be of type SSLSocket"


# -- sock_recvfrom / sock_recvfrom_into / sock_sendto ------------------------------------


def test_sock_recvfrom_and_sendto_basic(loop, udp_pair):
    a, b = udp_pair

    async def main():
        sent = await loop.sock_sendto(b, b"datagram", a.getsockname())
        data, addr = await loop.sock_recvfrom(a, 100)
        buf = bytearray(4)
        await loop.sock_sendto(b, b"truncated!", a.getsockname())
        n, addr2 = await loop.sock_recvfrom_into(a, buf)
        buf2 = bytearray(10)
        await loop.sock_sendto(b, b"abcdef", a.getsockname())
        n2, _ = await loop.sock_recvfrom_into(a, buf2, 3)
        return sent, data, addr, n, bytes(buf), addr2, n2, bytes(buf2)

    sent, data, addr, n, buf, addr2, n2, buf2 = run(loop, main())
    assert (sent, data, addr, addr2) == (8, b"datagram", b.getsockname(), b.getsockname())
    assert (n, buf) == (4, b"trun")
    assert (n2, buf2) == (3, b"abc" + bytes(7))


def test_sock_recvfrom_cancelled_loses_no_datagram(loop, udp_pair):
    a, b = udp_pair

    async def main():
        task = asyncio.ensure_future(loop.sock_recvfrom(a, 100))
        await _pending(task)
        cancelled = await _cancel(task)
        await loop.sock_sendto(b, b"one", a.getsockname())
        await loop.sock_sendto(b, b"two", a.getsockname())
        first = await loop.sock_recvfrom(a, 100)
        buf = bytearray(10)
        task = asyncio.ensure_future(loop.sock_recvfrom_into(a, buf))
        await asyncio.sleep(0)
        second = await task
        task = asyncio.ensure_future(loop.sock_recvfrom_into(a, buf))
        await _pending(task)
        cancelled_into = await _cancel(task)
        await loop.sock_sendto(b, b"three", a.getsockname())
        third = await loop.sock_recvfrom_into(a, buf)
        return cancelled, first[0], second[0], cancelled_into, third[0], bytes(buf[:5])

    assert run(loop, main()) == ("cancelled", b"one", 3, "cancelled", 5, b"three")


def test_sock_sendto_errors_and_cancel_before_start(loop, udp_pair):
    a, b = udp_pair

    async def main():
        bad = await aoutcome(loop.sock_sendto(b, b"x", ("127.0.0.1", 70000)))
        task = asyncio.ensure_future(loop.sock_sendto(b, b"never", a.getsockname()))
        task.cancel()
        cancelled = await _cancel(task)
        await loop.sock_sendto(b, b"after", a.getsockname())
        data, _ = await loop.sock_recvfrom(a, 100)
        return bad[1], cancelled, data

    assert run(loop, main()) == (OverflowError, "cancelled", b"after")


def test_unix_datagram_sock_methods(loop, tmp_path):
    path_a, path_b = str(tmp_path / "a"), str(tmp_path / "b")
    a = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.bind(path_a)
    b.bind(path_b)
    a.setblocking(False)
    b.setblocking(False)

    async def main():
        task = asyncio.ensure_future(loop.sock_recvfrom(a, 100))
        await _pending(task)
        await loop.sock_sendto(b, b"unix", path_a)
        return await task

    try:
        assert run(loop, main()) == (b"unix", path_b)
    finally:
        a.close()
        b.close()


# -- sock_sendall ------------------------------------------------------------------------


def test_sock_sendall_basic(loop, pair):
    a, b = pair

    async def main():
        empty = await loop.sock_sendall(a, b"")
        result = await loop.sock_sendall(a, b"hello")
        await loop.sock_sendall(a, memoryview(b"-view-")[1:5])
        await loop.sock_sendall(a, bytearray(b"!"))
        return empty, result, await _read_exactly(loop, b, 10)

    assert run(loop, main()) == (None, None, b"hellovie" + b"w!")


def test_sock_sendall_cancelled_midway_keeps_the_stream_consistent(loop, pair):
    """A sendall cancelled on a full buffer: the peer gets a prefix of the data (what the
    kernel took before the cancel), then exactly what is sent afterwards."""
    a, b = pair
    data = _pattern(BIG)

    async def main():
        task = asyncio.ensure_future(loop.sock_sendall(a, data))
        await _pending(task)
        cancelled = await _cancel(task)
        after = b"<after the cancel>"
        await asyncio.sleep(0.01)
        reader = asyncio.ensure_future(_read_all(loop, b))
        await loop.sock_sendall(a, after)
        a.shutdown(socket.SHUT_WR)
        return cancelled, after, await reader

    cancelled, after, received = run(loop, main())
    assert cancelled == "cancelled"
    assert received.endswith(after)
    prefix = received[: -len(after)]
    assert 0 < len(prefix) < len(data)
    assert prefix == data[: len(prefix)]


def test_sock_sendall_concurrent_reader_gets_all(loop):
    async def main():
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        try:
            accept = asyncio.ensure_future(loop.sock_accept(srv))
            await loop.sock_connect(client, srv.getsockname())
            conn, _ = await accept
            data = _pattern(BIG)
            reader = asyncio.ensure_future(_read_exactly(loop, conn, len(data)))
            await loop.sock_sendall(client, data)
            got = await reader
            conn.close()
            return got == data
        finally:
            client.close()
            srv.close()

    assert run(loop, main())


# -- sock_connect / sock_accept ----------------------------------------------------------


def test_sock_connect_and_accept_basic(loop, listener):
    async def main():
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        await _pending(accept)
        client = socket.socket()
        client.setblocking(False)
        try:
            connected = await loop.sock_connect(client, listener.getsockname())
            conn, addr = await accept
            with conn:
                info = (
                    connected,
                    addr == client.getsockname(),
                    conn.gettimeout(),
                    conn.getpeername() == client.getsockname(),
                )
                await loop.sock_sendall(client, b"ping")
                info += (await loop.sock_recv(conn, 10),)
            return info
        finally:
            client.close()

    assert run(loop, main()) == (None, True, 0.0, True, b"ping")


def test_sock_connect_resolves_names_and_unix_paths(loop, listener, tmp_path):
    path = str(tmp_path / "sock")
    usrv = socket.socket(socket.AF_UNIX)
    usrv.bind(path)
    usrv.listen(1)
    usrv.setblocking(False)

    async def main():
        port = listener.getsockname()[1]
        tcp = socket.socket()
        tcp.setblocking(False)
        unix = socket.socket(socket.AF_UNIX)
        unix.setblocking(False)
        try:
            await loop.sock_connect(tcp, ("localhost", port))
            await loop.sock_connect(unix, path)
            return tcp.getpeername(), unix.getpeername()
        finally:
            tcp.close()
            unix.close()

    try:
        assert run(loop, main()) == (("127.0.0.1", listener.getsockname()[1]), path)
    finally:
        usrv.close()


def test_sock_accept_cancelled_loses_no_connection(loop, listener):
    async def main():
        task = asyncio.ensure_future(loop.sock_accept(listener))
        await _pending(task)
        cancelled = await _cancel(task)
        client = socket.socket()
        client.setblocking(False)
        try:
            await loop.sock_connect(client, listener.getsockname())
            await loop.sock_sendall(client, b"queued")
            conn, addr = await loop.sock_accept(listener)
            with conn:
                return cancelled, addr == client.getsockname(), await loop.sock_recv(conn, 10)
        finally:
            client.close()

    assert run(loop, main()) == ("cancelled", True, b"queued")


def test_sock_connect_cancelled_leaves_a_usable_socket(loop, listener):
    """Cancelled right after it started: the kernel may finish the connect anyway; the
    socket must then behave as on the stock loop (checked by comparing outcomes)."""
    from support import new_loop

    async def attempt(lp):
        client = socket.socket()
        client.setblocking(False)
        try:
            task = asyncio.ensure_future(lp.sock_connect(client, listener.getsockname()))
            await asyncio.sleep(0)
            cancelled = await _cancel(task)
            again = await aoutcome(lp.sock_connect(client, listener.getsockname()))
            sent = await aoutcome(lp.sock_sendall(client, b"x"))
            return cancelled, again[:2], sent[:2]
        finally:
            client.close()

    got = run(loop, attempt(loop))
    stock = new_loop("asyncio")
    try:
        expected = stock.run_until_complete(attempt(stock))
    finally:
        stock.close()
    assert got == expected


def test_sock_connect_cancelled_before_start(loop, listener):
    async def main():
        client = socket.socket()
        client.setblocking(False)
        try:
            task = asyncio.ensure_future(loop.sock_connect(client, listener.getsockname()))
            task.cancel()
            cancelled = await _cancel(task)
            not_connected = await aoutcome(asyncio.to_thread(client.getpeername))
            await loop.sock_connect(client, listener.getsockname())
            return cancelled, not_connected[1], client.getpeername() == listener.getsockname()
        finally:
            client.close()

    assert run(loop, main()) == ("cancelled", OSError, True)


# -- sock_sendfile -----------------------------------------------------------------------


@pytest.fixture
def tcp_pair(listener):
    client = socket.socket()
    client.connect(listener.getsockname())
    listener.setblocking(True)
    conn, _ = listener.accept()
    client.setblocking(False)
    conn.setblocking(False)
    yield client, conn
    client.close()
    conn.close()


@pytest.fixture
def data_file(tmp_path):
    data = _pattern(BIG)
    path = tmp_path / "data"
    path.write_bytes(data)
    return path, data


def test_sock_sendfile_native_basic(loop, tcp_pair, data_file):
    client, conn = tcp_pair
    path, data = data_file

    async def main():
        with open(path, "rb") as f:
            reader = asyncio.ensure_future(_read_exactly(loop, conn, 1000 + 5000))
            sent = await loop.sock_sendfile(client, f, offset=1000, count=5000)
            pos = f.tell()
            sent2 = await loop.sock_sendfile(client, f, offset=0, count=1000)
            return sent, pos, sent2, await reader

    sent, pos, sent2, got = run(loop, main())
    assert (sent, pos, sent2) == (5000, 6000, 1000)
    assert got == data[1000:6000] + data[:1000]


def test_sock_sendfile_whole_file(loop, tcp_pair, data_file):
    client, conn = tcp_pair
    path, data = data_file

    async def main():
        with open(path, "rb") as f:
            reader = asyncio.ensure_future(_read_exactly(loop, conn, len(data)))
            sent = await loop.sock_sendfile(client, f)
            return sent, f.tell(), await reader

    sent, pos, got = run(loop, main())
    assert (sent, pos) == (len(data), len(data))
    assert got == data


def test_sock_sendfile_fallback_for_non_files(loop, tcp_pair):
    client, conn = tcp_pair
    data = _pattern(300_000)

    async def main():
        f = io.BytesIO(data)
        reader = asyncio.ensure_future(_read_exactly(loop, conn, len(data) - 10))
        sent = await loop.sock_sendfile(client, f, offset=10)
        no_fallback = await aoutcome(loop.sock_sendfile(client, io.BytesIO(b"x"), fallback=False))
        return sent, f.tell(), await reader, no_fallback[1]

    sent, pos, got, no_fallback = run(loop, main())
    assert (sent, pos) == (len(data) - 10, len(data))
    assert got == data[10:]
    assert no_fallback is asyncio.SendfileNotAvailableError


def test_sock_sendfile_bad_arguments(loop, tcp_pair, data_file, tmp_path):
    client, _ = tcp_pair
    path, _ = data_file
    from support import new_loop

    async def attempt(lp):
        results = []
        with open(path, "rb") as f:
            results.append(await aoutcome(lp.sock_sendfile(client, f, offset=-1)))
            results.append(await aoutcome(lp.sock_sendfile(client, f, count=0)))
            results.append(await aoutcome(lp.sock_sendfile(client, f, count="1")))
        with open(tmp_path / "text", "w") as t:
            results.append(await aoutcome(lp.sock_sendfile(client, t)))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setblocking(False)
        with udp, open(path, "rb") as f:
            results.append(await aoutcome(lp.sock_sendfile(udp, f)))
        return results

    got = run(loop, attempt(loop))
    stock = new_loop("asyncio")
    try:
        expected = stock.run_until_complete(attempt(stock))
    finally:
        stock.close()
    assert got == expected
    assert all(r[0] == "error" for r in got)


async def _read_until_quiet(loop, sock, quiet=0.2):
    received = bytearray()
    while True:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), quiet)
        except asyncio.TimeoutError:
            return bytes(received)
        received += chunk


@pytest.mark.parametrize("native", [True, False], ids=["native", "fallback"])
def test_sock_sendfile_cancelled_midway(loop, tcp_pair, data_file, native):
    """Cancelled on a full socket buffer: the peer gets a prefix of the file, then exactly
    what is sent afterwards.  The stock native path (os.sendfile with explicit offsets)
    leaves the file position where it was when cancelled - its cancellation callback only
    removes the writer.  The fallback path moves the position past the chunks it
    finished, so it may lag what the kernel took."""
    client, conn = tcp_pair
    path, data = data_file

    async def main():
        f = open(path, "rb") if native else io.BytesIO(data)
        with f:
            task = asyncio.ensure_future(loop.sock_sendfile(client, f))
            await _pending(task)
            cancelled = await _cancel(task)
            pos_at_once = f.tell()
            prefix = await _read_until_quiet(loop, conn)
            await asyncio.sleep(0.05)
            pos = f.tell()
            after = b"<after>"
            await loop.sock_sendall(client, after)
            client.shutdown(socket.SHUT_WR)
            return cancelled, pos_at_once, pos, prefix, after, await _read_all(loop, conn)

    cancelled, pos_at_once, pos, prefix, after, rest = run(loop, main())
    assert cancelled == "cancelled"
    assert rest == after
    assert 0 < len(prefix) < len(data)
    assert prefix == data[: len(prefix)]
    if native:
        assert pos_at_once == pos == 0
    else:
        assert pos <= len(prefix)


def test_loop_sendfile_on_a_transport(loop, data_file):
    """loop.sendfile() (the transport-level API), native and with a fallback file."""
    path, data = data_file

    async def main():
        received = bytearray()
        done = loop.create_future()

        class Sink(asyncio.Protocol):
            def data_received(self, chunk):
                received.extend(chunk)

            def eof_received(self):
                done.set_result(None)

        server = await loop.create_server(Sink, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        with open(path, "rb") as f:
            sent = await loop.sendfile(transport, f, offset=5, count=1_000_000)
        sent2 = await loop.sendfile(transport, io.BytesIO(b"tail-bytes"))
        transport.write_eof()
        await done
        transport.close()
        server.close()
        await server.wait_closed()
        return sent, sent2, bytes(received)

    sent, sent2, received = run(loop, main())
    assert (sent, sent2) == (1_000_000, 10)
    assert received == data[5:1_000_005] + b"tail-bytes"


def test_os_level_state_after_many_cancellations(loop, pair):
    """Cancel sock_recv and sock_sendall repeatedly: no watcher is left behind (the fd
    can get a plain reader afterwards) and the stream is still in order."""
    a, b = pair

    async def main():
        for _ in range(20):
            task = asyncio.ensure_future(loop.sock_recv(a, 10))
            await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        got = loop.create_future()
        loop.add_reader(a.fileno(), lambda: got.done() or got.set_result(a.recv(100)))
        b.send(b"plain reader")
        data = await got
        loop.remove_reader(a.fileno())
        return data

    assert run(loop, main()) == b"plain reader"
    assert os.get_blocking(a.fileno()) is False
