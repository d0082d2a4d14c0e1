"""greenhub.socket: blocking-style sockets that suspend only the calling virtual thread.

Inside a virtual thread every blocking call waits on the loop (other virtual threads run
meanwhile); anywhere else - an OS thread with no loop, a task of the stock asyncio loop -
it must behave exactly as the same call on a plain socket.socket with the same timeout.
The compare tests run one script on both kinds of socket and require identical results
and exceptions.
"""

import asyncio
import errno
import os
import socket
import tempfile
import threading

import pytest
import support
from vthread_helpers import gloop_fixture, in_thread  # noqa: F401 - fixture

import greenhub
import greenhub.socket as gsocket


def vrun(loop, fn, *args, timeout=10):
    """Run fn(*args) as a virtual thread on `loop`; its result."""

    async def main():
        return await asyncio.wait_for(greenhub.spawn(fn, *args), timeout)

    return loop.run_until_complete(main())


def vrun_many(loop, calls, timeout=10):
    """Run each (fn, *args) as its own virtual thread; their results in order."""

    async def main():
        tasks = [greenhub.spawn(*c) for c in calls]
        return await asyncio.wait_for(asyncio.gather(*tasks), timeout)

    return loop.run_until_complete(main())


def watched(loop, sock):
    """The loop's watcher events on sock's fd (0: none)."""
    return loop._io_watchers().get(sock.fileno(), 0)


@pytest.fixture
def gpair():
    a, b = gsocket.socketpair()
    yield a, b
    a.close()
    b.close()


# -- the class -------------------------------------------------------------------


def test_is_a_socket_socket(gpair):
    a, _ = gpair
    assert isinstance(a, socket.socket)
    assert type(a) is gsocket.socket
    assert a.gettimeout() is None and a.getblocking() and a.timeout is None
    assert not os.get_blocking(a.fileno())  # the fd itself never blocks
    assert "greenhub.socket.socket" in repr(a)
    assert gsocket.AF_INET == socket.AF_INET and gsocket.timeout is socket.timeout
    assert gsocket.error is OSError and gsocket.SOL_SOCKET == socket.SOL_SOCKET


def test_timeout_settings_read_back_as_socket_does(gpair):
    a, _ = gpair
    plain = socket.socket()
    try:
        for value in (0, 0.0, 1, 2.5, None, 0.001):
            a.settimeout(value)
            plain.settimeout(value)
            assert (a.gettimeout(), a.getblocking(), a.timeout) == (
                plain.gettimeout(),
                plain.getblocking(),
                plain.timeout,
            )
            assert not os.get_blocking(a.fileno())
        for flag in (False, True, 0, 1):
            a.setblocking(flag)
            plain.setblocking(flag)
            assert (a.gettimeout(), a.getblocking()) == (plain.gettimeout(), plain.getblocking())
        for bad in (-1, "x", float("nan")):
            with pytest.raises(Exception) as mine:
                a.settimeout(bad)
            with pytest.raises(Exception) as theirs:
                plain.settimeout(bad)
            assert (mine.type, str(mine.value)) == (theirs.type, str(theirs.value))
        for odd in ("x", 2.5, None):  # what socket accepts varies between versions
            mine = support.error_of(a.setblocking, odd)
            assert mine == support.error_of(plain.setblocking, odd)
            assert (a.gettimeout(), a.getblocking()) == (plain.gettimeout(), plain.getblocking())
    finally:
        plain.close()


def test_default_timeout_and_accept_inherit_like_socket():
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(3.0)
    try:
        s = gsocket.socket()
        assert s.gettimeout() == 3.0
        s.close()
    finally:
        socket.setdefaulttimeout(old)
    with gsocket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(5)
        c = gsocket.create_connection(srv.getsockname())
        conn, _ = srv.accept()  # no loop: a plain blocking accept
        assert type(conn) is gsocket.socket
        assert conn.gettimeout() is None  # socket.accept()'s rule
        conn.close()
        c.close()


# -- in virtual threads: every call waits without holding up the loop ----------------


def test_recv_waits_only_this_virtual_thread(gloop, gpair):
    a, b = gpair
    ticks = []

    def reader():
        return a.recv(100)

    def ticker():
        for i in range(5):
            greenhub.await_(asyncio.sleep(0.001))
            ticks.append(i)
        b.sendall(b"hello")

    data, _ = vrun_many(gloop, [(reader,), (ticker,)])
    assert data == b"hello" and ticks == [0, 1, 2, 3, 4]
    assert watched(gloop, a) == 0  # an armed watcher is invisible


def test_each_call_in_a_virtual_thread(gloop):
    """recv, recv_into, recvfrom, recvfrom_into, send, sendall, sendto, recvmsg, sendmsg,
    makefile: each called before its data exists, so each must wait and be woken."""

    def scenario():
        a, b = gsocket.socketpair()
        out = []
        with a, b:
            for send, recv in [
                (lambda: b.send(b"one"), lambda: a.recv(10)),
                (
                    lambda: b.sendall(b"two"),
                    lambda: (lambda buf: bytes(buf[: a.recv_into(buf)]))(bytearray(10)),
                ),
                (lambda: b.sendall(b"three"), lambda: a.recvfrom(10)[0]),
                (
                    lambda: b.sendall(b"four"),
                    lambda: (lambda buf: bytes(buf[: a.recvfrom_into(buf)[0]]))(bytearray(10)),
                ),
                (lambda: b.sendmsg([b"fi", b"ve"]), lambda: a.recvmsg(10)[0]),
                (
                    lambda: b.sendall(b"six"),
                    lambda: (lambda buf: bytes(buf[: a.recv_into(buffer=buf, nbytes=3)]))(
                        bytearray(10)
                    ),
                ),
            ]:
                later = greenhub.spawn(lambda s=send: (greenhub.await_(asyncio.sleep(0.002)), s()))
                out.append(recv())
                greenhub.await_(later)
            rf, wf = a.makefile("rb"), b.makefile("wb")
            with rf, wf:
                writer = greenhub.spawn(
                    lambda: (
                        greenhub.await_(asyncio.sleep(0.002)),
                        wf.write(b"line 1\nline 2\n"),
                        wf.flush(),
                    )
                )
                out.append(rf.readline())
                out.append(rf.readline())
                greenhub.await_(writer)
        return out

    assert vrun(gloop, scenario) == [
        b"one", b"two", b"three", b"four", b"five", b"six", b"line 1\n", b"line 2\n",
    ]  # fmt: skip


def test_udp_sendto_recvfrom(gloop):
    def scenario():
        a = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with a, b:
            a.bind(("127.0.0.1", 0))
            later = greenhub.spawn(
                lambda: (greenhub.await_(asyncio.sleep(0.002)), b.sendto(b"dgram", a.getsockname()))
            )
            data, addr = a.recvfrom(100)
            greenhub.await_(later)
            return data, addr[1] == b.getsockname()[1]

    assert vrun(gloop, scenario) == (b"dgram", True)


def test_accept_connect_and_echo_many_connections(gloop):
    n = 50

    def echo(conn):
        with conn:
            while data := conn.recv(1000):
                conn.sendall(data)

    def server(lsock):
        for _ in range(n):
            conn, _ = lsock.accept()
            assert type(conn) is gsocket.socket
            greenhub.spawn(echo, conn)

    def client(port, i):
        with gsocket.create_connection(("127.0.0.1", port)) as s:
            for j in range(20):
                msg = b"%d:%d;" % (i, j) * 10
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    got += s.recv(1000)
                assert got == msg
        return i

    def main():
        with gsocket.create_server(("127.0.0.1", 0)) as lsock:
            acceptor = greenhub.spawn(server, lsock)
            port = lsock.getsockname()[1]
            results = greenhub.await_(
                asyncio.gather(*(greenhub.spawn(client, port, i) for i in range(n)))
            )
            greenhub.await_(acceptor)
            return results

    assert vrun(gloop, main, timeout=30) == list(range(n))


def test_connect_refused_and_connect_ex(gloop):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: refuses

    def scenario():
        s = gsocket.socket()
        with s:
            err = s.connect_ex(("127.0.0.1", port))
        with pytest.raises(ConnectionRefusedError) as exc:
            gsocket.create_connection(("127.0.0.1", port))
        with pytest.raises(ExceptionGroup):
            gsocket.create_connection(("127.0.0.1", port), all_errors=True)
        return err, exc.value.errno

    assert vrun(gloop, scenario) == (errno.ECONNREFUSED, errno.ECONNREFUSED)


def test_sendfile(gloop, tmp_path):
    payload = os.urandom(300_000)
    path = tmp_path / "data"
    path.write_bytes(payload)

    def scenario():
        a, b = gsocket.socketpair()
        with a, b:
            got = bytearray()

            def reader():
                while len(got) < len(payload) - 1000:
                    got.extend(b.recv(65536))

            r = greenhub.spawn(reader)
            with open(path, "rb") as f:
                sent = a.sendfile(f, offset=1000)  # more than the socket buffer: waits
                pos = f.tell()
            greenhub.await_(r)
            return sent, pos, bytes(got) == payload[1000:]

    assert vrun(gloop, scenario) == (len(payload) - 1000, len(payload), True)


def test_name_resolution_in_a_virtual_thread(gloop):
    def scenario():
        infos = gsocket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        host = gsocket.gethostbyname("localhost")
        return infos == socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM), host

    same, host = vrun(gloop, scenario)
    assert same and host == socket.gethostbyname("localhost")


# -- timeouts, non-blocking mode ---------------------------------------------------


def test_timeout_in_a_virtual_thread(gloop, gpair):
    a, b = gpair
    a.settimeout(0.05)

    def scenario():
        deadline = gloop.time() + 0.05
        with pytest.raises(TimeoutError) as exc:
            a.recv(10)
        not_early = gloop.time() >= deadline  # on the loop's clock
        b.sendall(b"after")
        return str(exc.value), not_early, a.recv(10)  # still usable

    assert vrun(gloop, scenario) == ("timed out", True, b"after")
    assert watched(gloop, a) == 0 and greenhub._core.debug_counters()["timers"] == 0


def test_sendall_timeout_applies_to_the_whole_call(gloop, gpair):
    a, b = gpair
    a.settimeout(0.05)

    def scenario():
        with pytest.raises(TimeoutError):
            a.sendall(b"x" * 10_000_000)  # nobody reads

    vrun(gloop, scenario)
    assert watched(gloop, a) == 0


def test_non_blocking_mode_raises_at_once(gloop, gpair):
    a, b = gpair
    a.setblocking(False)

    def scenario():
        with pytest.raises(BlockingIOError):
            a.recv(10)
        b.send(b"x")
        return a.recv(10)

    assert vrun(gloop, scenario) == b"x"


# -- cancellation, closing, misuse ---------------------------------------------------


def test_cancel_mid_recv_leaves_nothing_behind(gloop, gpair):
    a, b = gpair

    async def main():
        task = greenhub.spawn(a.recv, 10)
        for _ in range(3):
            await asyncio.sleep(0)
        assert watched(gloop, a) == 1  # waiting for reading
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert watched(gloop, a) == 0
        b.send(b"still works")
        return await greenhub.spawn(a.recv, 100)

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == b"still works"


def test_asyncio_timeout_around_sendall_with_a_peer_not_reading(gloop, gpair):
    a, b = gpair

    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await greenhub.spawn(a.sendall, b"y" * 20_000_000)
        assert watched(gloop, a) == 0
        # the socket still works: drain what was sent, then a fresh exchange
        b.setblocking(False)
        while True:
            try:
                if not b.recv(1 << 20):
                    break
            except BlockingIOError:
                break
        await greenhub.spawn(a.sendall, b"z")
        return await greenhub.spawn(b.recv, 10)

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == b"z"


def test_closing_a_socket_another_virtual_thread_waits_on(gloop, gpair):
    a, _ = gpair
    fd = a.fileno()

    def closer():
        greenhub.await_(asyncio.sleep(0.002))
        a.close()

    async def main():
        waiter = greenhub.spawn(a.recv, 10)
        await greenhub.spawn(closer)
        with pytest.raises(OSError) as exc:
            await waiter
        return exc.value.errno

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == errno.EBADF
    assert fd not in gloop._io_watchers()


def test_two_virtual_threads_receiving_on_one_socket(gloop, gpair):
    a, b = gpair

    async def main():
        first = greenhub.spawn(a.recv, 10)
        await asyncio.sleep(0)
        second = greenhub.spawn(a.recv, 10)
        with pytest.raises(RuntimeError, match="already waited on"):
            await second
        b.send(b"one")
        return await first

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == b"one"


def test_loop_close_unwinds_a_virtual_thread_parked_in_recv(greenhub_leak_check, gpair):
    a, _ = gpair
    loop = greenhub.new_event_loop()
    seen = []

    def reader():
        try:
            a.recv(10)
        except BaseException as exc:
            seen.append(type(exc))
            raise

    task = loop.create_task(_as_coro(reader))
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    assert seen == [asyncio.CancelledError] and task.cancelled()


async def _as_coro(fn):
    return fn()


def test_bad_arguments_raise_as_socket_does(gloop, gpair):
    a, _ = gpair
    plain_a, plain_b = socket.socketpair()

    def errors(s):
        out = []
        for call in (
            lambda: s.recv(),
            lambda: s.recv(-1),
            lambda: s.recv("x"),
            lambda: s.recv_into(bytes(2)),
            lambda: s.recv_into(bytearray(2), 5),
            lambda: s.recv_into(bytearray(2), -1),
            lambda: s.recv_into(bytearray(2), 1, 2, 3),
            lambda: s.recv_into(bytearray(2), nosuch=1),
            lambda: s.send("str"),
            lambda: s.send(),
            lambda: s.send(b"x", 1, 2),
            lambda: s.sendall(),
            lambda: s.sendall(b"x", 1, 2),
            lambda: s.sendto(b"x"),
            lambda: s.connect(("no such host at all.invalid", 80, 1, 2, 3)),
        ):
            try:
                call()
                out.append(None)
            except Exception as exc:  # noqa: BLE001
                out.append((type(exc), str(exc)))
        return out

    try:
        assert vrun(gloop, errors, a) == errors(plain_a)
    finally:
        plain_a.close()
        plain_b.close()


# -- outside a virtual thread: exactly socket.socket ------------------------------------


def _script(make_pair, make_listener):
    """A sync program that touches every call in blocking, timeout and non-blocking
    modes; returns a transcript of results and exceptions."""
    log = []

    def rec(label, fn, *args, **kw):
        try:
            r = fn(*args, **kw)
            if isinstance(r, tuple) and r and isinstance(r[0], socket.socket):
                r = ("socket", type(r[0]).__mro__[-3].__name__)
            log.append((label, "ok", r))
        except Exception as exc:  # noqa: BLE001
            log.append((label, type(exc).__name__, getattr(exc, "errno", None), str(exc)))

    a, b = make_pair()
    with a, b:
        rec("send", b.send, b"abc")
        rec("recv", a.recv, 10)
        a.settimeout(0.05)
        rec("recv timeout", a.recv, 10)
        rec("timeouts", lambda: (a.gettimeout(), a.getblocking(), a.timeout))
        b.sendall(b"0123456789")
        buf = bytearray(4)
        rec("recv_into", a.recv_into, buf)
        rec("buf", bytes, buf)
        rec("recv_into nbytes", a.recv_into, buf, 2)
        rec("recvfrom", a.recvfrom, 2)
        rec("recvfrom_into", a.recvfrom_into, bytearray(5))
        rec("recv empty", a.recv, 10)
        b.sendmsg([b"m", b"sg"])
        rec("recvmsg", lambda: a.recvmsg(10)[0])
        rec("sendall timeout", a.sendall, b"x" * 5_000_000)
        a.setblocking(False)
        rec("nonblocking recv", b.recv, 1)  # b is still blocking: it has data
        b.setblocking(False)
        rec("nonblocking", lambda: (b.gettimeout(), b.getblocking()))
        while True:
            try:
                if not b.recv(1 << 20):
                    break
            except BlockingIOError:
                break
        rec("nonblocking recv empty", b.recv, 1)
        rec("nonblocking send", a.send, b"x" * 10)
        a.setblocking(True)
        rec("blocking send", a.sendall, b"end")
        rec("dup", lambda: (d := a.dup(), d.gettimeout(), d.close())[1])
        with a.makefile("rwb") as f:
            rec("makefile write", lambda: (f.write(b"line\n"), f.flush()))
        with b.makefile("rb") as f:
            b.settimeout(1)
            rec("makefile readline", f.readline)
        b.shutdown(socket.SHUT_WR)
        rec("eof", a.recv, 10)
    rec("closed recv", a.recv, 1)
    rec("closed send", a.send, b"x")
    with make_listener() as lsock:
        lsock.settimeout(0.05)
        rec("accept timeout", lsock.accept)
        port = lsock.getsockname()[1]
        c = type(lsock)()
        rec("connect", c.connect, ("127.0.0.1", port))
        rec("accept", lambda: lsock.accept()[0].close())
        c.close()
        c = type(lsock)()
        rec("connect_ex", c.connect_ex, ("127.0.0.1", port))
        c.close()
    c = type(lsock)()
    rec("connect refused", c.connect, ("127.0.0.1", port))
    rec("connect_ex refused", c.connect_ex, ("127.0.0.1", port))
    c.close()
    return log


PLAIN = (socket.socketpair, lambda: socket.create_server(("127.0.0.1", 0)))
GREEN = (gsocket.socketpair, lambda: gsocket.create_server(("127.0.0.1", 0)))


def test_outside_a_virtual_thread_same_as_socket_in_an_os_thread():
    assert in_thread(_script, *GREEN) == in_thread(_script, *PLAIN)


def test_in_a_stock_asyncio_task_same_as_socket():
    # A task of the stock loop is no virtual thread: the green socket blocks as socket
    # does.  (On greenhub every task is a virtual thread.)
    async def main(kinds):
        return _script(*kinds)

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(main(GREEN)) == loop.run_until_complete(main(PLAIN))
    finally:
        loop.close()


def test_in_a_greenhub_loop_callback_blocks_like_socket(gloop):
    box = {}

    def callback():
        box["green"] = _script(*GREEN)
        box["plain"] = _script(*PLAIN)
        gloop.stop()

    gloop.call_soon(callback)
    gloop.run_forever()
    assert box["green"] == box["plain"]


def test_blocking_recv_from_an_os_thread_waits_for_data(gpair):
    a, b = gpair
    threading.Timer(0.02, b.sendall, (b"late",)).start()
    assert in_thread(a.recv, 10) == b"late"


@pytest.mark.parametrize("where", ["vthread", "outside"])
def test_sendfile_of_a_pipe_sends_nothing(gloop, where):
    """A pipe's size is 0: socket.sendfile() takes it for an empty file and returns 0,
    sending nothing; greenhub's sent it with send() and then raised (a pipe cannot
    seek)."""
    import os

    def attempt(mod):
        a, b = mod.socketpair()
        r, w = os.pipe()
        os.write(w, b"pipe data")
        os.close(w)
        with os.fdopen(r, "rb") as f:
            sent = a.sendfile(f)
        b.setblocking(False)
        try:
            got = b.recv(100)
        except BlockingIOError:
            got = b""
        a.close()
        b.close()
        return sent, got

    expected = attempt(socket)
    if where == "outside":
        assert attempt(gsocket) == expected
    else:

        async def main():
            return await greenhub.spawn(attempt, gsocket)

        assert gloop.run_until_complete(main()) == expected
    assert expected == (0, b"")


def test_sendfile_outside_is_sockets(gpair):
    a, b = gpair
    with tempfile.TemporaryFile() as f:
        f.write(b"file data")
        f.seek(0)
        assert a.sendfile(f) == 9
    assert b.recv(100) == b"file data"
