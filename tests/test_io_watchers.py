"""add_reader / add_writer / remove_reader / remove_writer, on both loops."""

import asyncio
import functools
import selectors
import socket

import pytest


def run_until(loop, predicate, timeout=2.0):
    async def wait():
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError("condition not reached")
            await asyncio.sleep(0.001)

    loop.run_until_complete(wait())


def test_reader_runs_while_data_is_pending(loop, pair):
    a, b = pair
    got = []

    def on_readable(tag):
        got.append((tag, a.recv(100)))

    assert loop.add_reader(a.fileno(), on_readable, "r") is None
    b.send(b"hello")
    run_until(loop, lambda: got)
    assert got == [("r", b"hello")]
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_reader(a.fileno()) is False


def test_level_triggered_until_drained(loop, pair):
    a, b = pair
    calls = []

    def on_readable():
        calls.append(1)
        if len(calls) == 3:
            a.recv(100)  # drained on the third call
            loop.remove_reader(a)

    loop.add_reader(a, on_readable)  # a file object works as well as an fd
    b.send(b"x")
    run_until(loop, lambda: len(calls) >= 3)
    loop.run_until_complete(asyncio.sleep(0.01))
    assert len(calls) == 3


def test_writer_and_replacement(loop, pair):
    a, _ = pair
    got = []
    loop.add_writer(a.fileno(), got.append, "first")
    loop.add_writer(a.fileno(), got.append, "second")  # replaces the first
    run_until(loop, lambda: got)
    assert set(got) == {"second"}
    assert loop.remove_writer(a.fileno()) is True
    assert loop.remove_writer(a.fileno()) is False


def test_reader_and_writer_on_one_fd_are_independent(loop, pair):
    a, b = pair
    events = []
    loop.add_reader(a.fileno(), lambda: events.append("r") or a.recv(10))
    loop.add_writer(a.fileno(), lambda: events.append("w") or loop.remove_writer(a.fileno()))
    b.send(b"z")
    run_until(loop, lambda: "r" in events and "w" in events)
    assert loop.remove_reader(a.fileno()) is True
    assert loop.remove_writer(a.fileno()) is False


def test_cancelled_reader_handle_is_not_run(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a.fileno(), got.append, 1)
    loop.remove_reader(a.fileno())
    b.send(b"data")
    loop.run_until_complete(asyncio.sleep(0.02))
    assert got == []


def test_reader_exception_goes_to_the_exception_handler(loop, pair):
    a, b = pair
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def boom():
        a.recv(10)
        raise ZeroDivisionError("in reader")

    loop.add_reader(a.fileno(), boom)
    b.send(b"!")
    run_until(loop, lambda: contexts)
    loop.remove_reader(a.fileno())
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert contexts[0]["message"].startswith("Exception in callback")


def _error(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the exception itself is compared
        return type(exc), str(exc)
    return None


@pytest.mark.parametrize("bad", [-1, "nope", object(), 1.5])
def test_bad_fds_raise_as_on_the_stock_loop(both_loops, bad):
    results = []
    for loop in both_loops.values():
        results.append(
            (
                _error(functools.partial(loop.add_reader, bad, print)),
                _error(functools.partial(loop.add_writer, bad, print)),
                _error(functools.partial(loop.remove_reader, bad)),
                _error(functools.partial(loop.remove_writer, bad)),
            )
        )
    assert results[0] == results[1]


def _outcome(fn):
    try:
        return ("returned", fn())
    except Exception as exc:  # noqa: BLE001 - the exception itself is compared
        return type(exc), str(exc)


class _Fileno:
    def __init__(self, value):
        self.value = value

    def fileno(self):
        return self.value


@pytest.mark.parametrize(
    "make",
    [
        lambda fd: _Fileno(str(fd)),  # asyncio takes what int() takes
        lambda fd: _Fileno(fd + 0.25),
        lambda fd: _Fileno(2**40),  # OverflowError from the selector; remove: False
        lambda fd: _Fileno(2**31),
        lambda fd: _Fileno(-(2**70)),
        lambda fd: 2**70,
    ],
    ids=["str", "float", "2**40", "2**31", "-2**70", "int-2**70"],
)
def test_fileno_values_int_takes_or_a_c_int_cannot_hold(both_loops, pair, make):
    results = []
    for loop in both_loops.values():
        obj = make(pair[0].fileno())
        results.append(
            [
                _outcome(functools.partial(loop.add_reader, obj, print)),
                _outcome(functools.partial(loop.add_writer, obj, print)),
                _outcome(functools.partial(loop.remove_reader, obj)),
                _outcome(functools.partial(loop.remove_writer, obj)),
                _outcome(functools.partial(loop.remove_reader, obj)),
            ]
        )
    assert results[0] == results[1]


def test_closed_fd_raises_oserror(both_loops):
    kinds = []
    for loop in both_loops.values():
        a, b = socket.socketpair()
        fd = a.fileno()
        a.close()
        b.close()
        with pytest.raises(OSError) as info:
            loop.add_reader(fd, print)
        kinds.append(info.value.errno)
    assert kinds[0] == kinds[1]


def test_closed_loop(both_loops, pair):
    a, _ = pair
    results = []
    for loop in both_loops.values():
        loop.add_reader(a.fileno(), print)
        loop.close()
        results.append(
            (
                _error(functools.partial(loop.add_reader, a.fileno(), print)),
                loop.remove_reader(a.fileno()),
                loop.remove_writer(a.fileno()),
            )
        )
    assert results[0] == results[1]
    assert results[0][0] == (RuntimeError, "Event loop is closed")


def test_sync_code_in_virtual_threads_waits_on_sockets():
    # Sync code waits for readability through await_ on a future that a reader callback
    # resolves: 20 virtual threads each wait on their own socket at the same time.
    import greenhub

    def wait_readable(sock):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.add_reader(sock.fileno(), fut.set_result, None)
        try:
            greenhub.await_(fut)
        finally:
            loop.remove_reader(sock.fileno())
        return sock.recv(100)

    async def main():
        pairs = [socket.socketpair() for _ in range(20)]
        for a, _ in pairs:
            a.setblocking(False)
        tasks = [greenhub.spawn(wait_readable, a) for a, _ in pairs]
        await asyncio.sleep(0.01)
        assert not any(t.done() for t in tasks)  # all suspended, none blocking the loop
        for i, (_, b) in enumerate(reversed(pairs)):
            b.send(b"%d" % i)
        results = await asyncio.gather(*tasks)
        for a, b in pairs:
            a.close()
            b.close()
        return results

    assert greenhub.run(main()) == [b"%d" % i for i in reversed(range(20))]


def test_streams_and_subprocesses_work(loop):
    # asyncio's own transports, servers and subprocess support run on the loop's fd
    # watchers; the same program must give the same result on both loops.
    async def echo(reader, writer):
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def client(i):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello %d" % i)
            await writer.drain()
            data = await reader.read(100)
            writer.close()
            await writer.wait_closed()
            return data

        replies = await asyncio.gather(*(client(i) for i in range(10)))
        server.close()
        await server.wait_closed()
        proc = await asyncio.create_subprocess_exec(
            "echo", "from a child", stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        return replies, out, proc.returncode

    replies, out, rc = loop.run_until_complete(main())
    assert replies == [b"HELLO %d" % i for i in range(10)]
    assert (out, rc) == (b"from a child\n", 0)


def test_transport_repr_reports_polling_state(loop):
    # asyncio's transports describe themselves by asking the loop's selector what it
    # polls; greenhub answers from its libev watchers, so the text is the stock one.
    async def main():
        accepted = []
        server = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
        text = repr(writer.transport)
        writer.close()
        await writer.wait_closed()
        for w in accepted:  # 3.12+ wait_closed() waits for the server's connections too
            w.close()
        server.close()
        await server.wait_closed()
        return text

    text = loop.run_until_complete(main())
    assert text.startswith("<_SelectorSocketTransport fd=")
    assert text.endswith(" read=polling write=<idle, bufsize=0>>")


def test_selector_key_lookup_by_file_object(loop, pair):
    # asyncio's own code and tests ask loop._selector for a fd's key by the socket
    # object as well as by the fd (CPython's test_unix_events does, for sendfile);
    # greenhub's stand-in for the selector answers both, as a selector does.
    a, _ = pair
    loop.add_writer(a.fileno(), lambda: None)
    try:
        selector = loop._selector
        for fileobj in (a, a.fileno()):
            key = selector.get_key(fileobj)
            assert (key.fd, key.events) == (a.fileno(), selectors.EVENT_WRITE)
            assert fileobj in selector.get_map()
        assert len(selector.get_map()) == len(list(selector.get_map()))
    finally:
        loop.remove_writer(a.fileno())
    with pytest.raises(KeyError, match="is not registered"):
        selector.get_key(a)
    assert a not in selector.get_map()
    with pytest.raises(ValueError):
        selector.get_key(-1)


@pytest.mark.parametrize("which", ["reader", "writer"])
def test_remove_by_a_closed_socket_object(loop, which):
    # A selector keeps the object a watcher was added with; once that socket is closed
    # (fileno() -1), remove_reader(sock) still finds its watcher by the object and removes
    # it (anyio closes sockets that way); a closed socket not (or no longer) watched
    # raises ValueError.
    add, remove = getattr(loop, "add_" + which), getattr(loop, "remove_" + which)
    a, b = socket.socketpair()
    other, other_peer = socket.socketpair()
    b.close()
    other_peer.close()
    add(a, print)
    add(other, print)  # a second watched fd: the lookup must pick the right one
    a.close()
    assert remove(a) is True
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        remove(a)
    assert remove(other) is True
    other.close()
    with pytest.raises(ValueError, match="Invalid file descriptor: -1"):
        remove(other)
