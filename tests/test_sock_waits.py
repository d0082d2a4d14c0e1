"""sock_recv / sock_recv_into / sock_sendall around their waits, on both loops.

greenhub does these in C and leaves a socket's fd watcher armed between receives
(src/sock.c), so these tests walk the edges of that state: data arriving while nobody
waits, the fd closed and its number reused, other users of the fd, cancellation, and
the cases that must go through asyncio's own code.
"""

import asyncio
import socket

import pytest


def run(loop, coro, timeout=5):
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


def test_receive_after_receive_waits_for_new_data(loop, pair):
    a, b = pair

    async def main():
        got = []
        for i in range(5):
            loop.call_later(0.005, b.send, b"msg%d" % i)
            got.append(await loop.sock_recv(a, 100))
        return got

    assert run(loop, main()) == [b"msg%d" % i for i in range(5)]


def test_data_arriving_while_nobody_waits_is_read_at_once(loop, pair):
    a, b = pair

    async def main():
        loop.call_later(0.005, b.send, b"first")
        first = await loop.sock_recv(a, 100)
        b.send(b"second")
        for _ in range(3):  # iterations with no receive waiting
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        second = await loop.sock_recv(a, 100)
        return first, second

    assert run(loop, main()) == (b"first", b"second")


def test_fd_number_reused_by_a_new_socket(loop):
    # The first socket's wait leaves its fd watched; it is closed and the next socket
    # gets the same fd number.  Receiving on the new socket must not wait forever.
    async def main():
        results = []
        for round_ in range(5):
            a, b = socket.socketpair()
            a.setblocking(False)
            fd = a.fileno()
            loop.call_later(0.002, b.send, b"r%d" % round_)
            results.append((fd, await loop.sock_recv(a, 100)))
            a.close()
            b.close()
            c, d = socket.socketpair()
            c.setblocking(False)
            d.send(b"new%d" % round_)
            results.append((fd in (c.fileno(), d.fileno()), await loop.sock_recv(c, 100)))
            c.close()
            d.close()
        return results

    results = run(loop, main(), timeout=15)
    assert any(reused for reused, _ in results[1::2])  # the case under test happened
    assert [data for _, data in results] == [
        x for i in range(5) for x in (b"r%d" % i, b"new%d" % i)
    ]


def test_fd_number_reused_when_the_data_is_late(loop):
    # As above, but the new socket's data comes after the receive started waiting.
    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        loop.call_later(0.002, b.send, b"x")
        await loop.sock_recv(a, 10)
        old_fd = a.fileno()
        a.close()
        b.close()
        c, d = socket.socketpair()
        c.setblocking(False)
        try:
            loop.call_later(0.01, d.send, b"late")
            data = await asyncio.wait_for(loop.sock_recv(c, 10), 2)
            return old_fd in (c.fileno(), d.fileno()), data
        finally:
            c.close()
            d.close()

    _, data = run(loop, main())
    assert data == b"late"


def test_add_reader_after_a_receive(loop, pair):
    a, b = pair

    async def main():
        loop.call_later(0.002, b.send, b"1")
        await loop.sock_recv(a, 10)
        fired = loop.create_future()
        loop.add_reader(a, lambda: fired.done() or fired.set_result(a.recv(10)))
        b.send(b"2")
        try:
            return await fired
        finally:
            assert loop.remove_reader(a) is True

    assert run(loop, main()) == b"2"


def test_no_reader_is_left_registered_after_a_receive(loop, pair):
    a, b = pair

    async def main():
        loop.call_later(0.002, b.send, b"1")
        await loop.sock_recv(a, 10)
        await asyncio.sleep(0)
        # As with the stock loop: nothing is registered for the fd any more.
        assert loop.remove_reader(a) is False
        with pytest.raises(KeyError):
            loop._selector.get_key(a.fileno())
        b.send(b"2")
        return await loop.sock_recv(a, 10)

    assert run(loop, main()) == b"2"


def test_cancelled_receive_loses_no_data(loop, pair):
    a, b = pair

    async def main():
        loop.call_later(0.002, b.send, b"before")
        await loop.sock_recv(a, 100)
        waiter = loop.create_task(loop.sock_recv(a, 100))
        await asyncio.sleep(0.005)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        b.send(b"kept")
        return await loop.sock_recv(a, 100)

    assert run(loop, main()) == b"kept"


def _finished_at_once(coro):
    """Steps a sock_* coroutine by hand: its result if it finished without suspending;
    otherwise its wait is cancelled and "waited" returned."""
    try:
        fut = coro.send(None)
    except StopIteration as stop:
        return stop.value
    fut.cancel()
    coro.close()
    return "waited"


@pytest.mark.parametrize("data", ["rest-of-a-partial-read", "sent-after-the-read"])
@pytest.mark.parametrize("method", ["sock_recv", "sock_recv_into"])
def test_receive_after_a_wait_reads_what_is_there_at_once(loop, pair, method, data):
    """After a receive that had to wait, the next one reads at once when data is there:
    what the first one did not take, or what this thread sent since.  greenhub skipped
    that recv() while the fd's watcher was left armed for the socket (it took "armed and
    not reported readable" for "empty"), and waited until the next poll.  Found by
    tests/fuzz_loop.py."""
    a, b = pair

    def receive():
        if method == "sock_recv":
            return loop.sock_recv(a, 100)
        return loop.sock_recv_into(a, bytearray(100))

    def size(result):
        return len(result) if isinstance(result, bytes) else result

    async def main():
        loop.call_soon(b.send, b"x" * (150 if data == "rest-of-a-partial-read" else 60))
        n1 = size(await receive())  # waits: the data comes once it does
        if data == "sent-after-the-read":
            b.send(b"y" * 10)
        n2 = _finished_at_once(receive())
        await asyncio.sleep(0)  # a cancelled wait's done-callback
        return n1, size(n2)

    expected = (100, 50) if data == "rest-of-a-partial-read" else (60, 10)
    assert run(loop, main()) == expected


def test_recv_into_after_recv_and_partial_buffers(loop, pair):
    a, b = pair

    async def main():
        loop.call_later(0.002, b.send, b"abc")
        first = await loop.sock_recv(a, 100)
        buf = bytearray(4)
        loop.call_later(0.002, b.send, b"defghij")
        n1 = await loop.sock_recv_into(a, buf)
        part1 = bytes(buf[:n1])
        n2 = await loop.sock_recv_into(a, memoryview(buf)[1:])
        part2 = bytes(buf[1 : 1 + n2])
        return first, part1 + part2

    assert run(loop, main()) == (b"abc", b"defghij")


def test_sendall_of_more_than_the_socket_buffer(loop, pair):
    a, b = pair
    data = bytes(range(256)) * 8192  # 2 MiB

    async def reader():
        got = bytearray()
        while len(got) < len(data):
            got += await loop.sock_recv(b, 65536)
        return bytes(got)

    async def main():
        r = loop.create_task(reader())
        await loop.sock_sendall(a, data)
        return await r

    assert run(loop, main()) == data


def test_zero_byte_receive_returns_at_once(loop, pair):
    a, b = pair

    async def main():
        loop.call_later(0.002, b.send, b"x")
        await loop.sock_recv(a, 10)
        return await loop.sock_recv(a, 0)

    assert run(loop, main()) == b""


def test_peer_closing_ends_the_receive_with_eof(loop, pair):
    a, b = pair

    async def main():
        loop.call_later(0.002, b.send, b"x")
        await loop.sock_recv(a, 10)
        loop.call_later(0.002, b.close)
        return await loop.sock_recv(a, 10)

    assert run(loop, main()) == b""


def test_receive_errors_are_socket_errors(loop, pair):
    a, b = pair

    async def main():
        with pytest.raises(ValueError, match="negative buffersize"):
            await loop.sock_recv(a, -1)
        with pytest.raises(TypeError):
            await loop.sock_recv(a, "10")
        with pytest.raises(TypeError):
            await loop.sock_recv_into(a, b"read-only")
        with pytest.raises(TypeError):
            await loop.sock_sendall(a, "text")
        closed = socket.socket()
        closed.close()
        with pytest.raises(OSError):
            await loop.sock_recv(closed, 10)
        with pytest.raises(OSError):
            await loop.sock_sendall(closed, b"x")
        return True

    assert run(loop, main())


def test_blocking_socket_and_debug_mode_use_asyncio_rules(loop, pair):
    a, b = pair

    async def main():
        a.setblocking(True)
        b.send(b"ready")
        data = await loop.sock_recv(a, 10)  # data is there: no blocking either way
        loop.set_debug(True)
        with pytest.raises(ValueError, match="non-blocking"):
            await loop.sock_recv(a, 10)
        a.setblocking(False)
        b.send(b"debug")
        debug_data = await loop.sock_recv(a, 10)
        loop.set_debug(False)
        return data, debug_data

    assert run(loop, main()) == (b"ready", b"debug")


def test_socket_subclass_goes_through_its_own_methods(loop):
    calls = []

    class Counting(socket.socket):
        def recv(self, *args):
            calls.append("recv")
            return super().recv(*args)

        def send(self, *args):
            calls.append("send")
            return super().send(*args)

    a, b = socket.socketpair()
    sub = Counting(a.family, a.type, a.proto, fileno=a.detach())
    sub.setblocking(False)
    b.setblocking(False)

    async def main():
        await loop.sock_sendall(sub, b"out")
        loop.call_later(0.002, b.send, b"in")
        return await loop.sock_recv(sub, 10)

    try:
        assert run(loop, main()) == b"in"
        assert b.recv(10) == b"out"
        assert "recv" in calls and "send" in calls
    finally:
        sub.close()
        b.close()


def test_receive_on_a_transport_socket_is_refused(loop, pair):
    a, b = pair

    async def main():
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        try:
            with pytest.raises(RuntimeError, match="is used by transport"):
                await loop.sock_recv(a, 10)
        finally:
            transport.close()
            await asyncio.sleep(0)

    run(loop, main())


def test_receive_on_a_closed_loop(loop_factory, pair):
    a, b = pair
    loop = loop_factory()
    coro = loop.sock_recv(a, 10)
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        coro.send(None)
