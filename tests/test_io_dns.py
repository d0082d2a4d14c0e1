"""loop.getaddrinfo() / loop.getnameinfo(), on both loops.

Every answer is compared with a direct call of socket.getaddrinfo / socket.getnameinfo:
the same list in the same order, or the same exception (type and args).  greenhub answers
IP literals with numeric ports on the loop's thread; the stock loop (and greenhub for
everything else) uses the default executor.  Both must stay coroutines with the same
cancellation and closed-loop behaviour, and debug mode must log the same lines.
"""

import asyncio
import concurrent.futures
import logging
import re
import socket
import threading

import pytest

HOSTS = [
    None,
    "127.0.0.1",
    "0.0.0.0",
    "1.2.3.4",
    "::1",
    "::",
    "::ffff:127.0.0.1",
    "fe80::1",
    "2001:db8::dead:beef",
    b"127.0.0.1",
    b"::1",
    "127.1",  # inet_aton form: not an inet_pton literal, so the executor path
    "localhost",  # /etc/hosts: the executor path
    "",
    "1.2.3.4.5",
    "::1::",
    "127.0.0.1\x00",
    "fe80::1%lo",
    b"\xff",
    bytearray(b"127.0.0.1"),  # refused by socket.getaddrinfo
    123,
    1.5,
]

PORTS = [None, 0, 80, 65535, "80", b"80", "0080", "http", 65536, -1, 2**70, "", " 80", 1.5, True]

OPTIONS = [
    {},
    {"family": socket.AF_INET},
    {"family": socket.AF_INET6},
    {"family": socket.AF_UNIX},
    {"family": 12345},
    {"type": socket.SOCK_STREAM},
    {"type": socket.SOCK_DGRAM},
    {"type": 99},
    {"proto": socket.IPPROTO_TCP},
    {"proto": socket.IPPROTO_UDP, "type": socket.SOCK_STREAM},
    {"flags": socket.AI_PASSIVE},
    {"flags": socket.AI_NUMERICHOST},
    {"flags": socket.AI_CANONNAME},
    {"flags": socket.AI_ADDRCONFIG},
    {"flags": socket.AI_V4MAPPED, "family": socket.AF_INET6},
    {"flags": socket.AI_NUMERICSERV},
    {"flags": 0x7FFF},
    {"flags": -1},
    {"family": socket.AF_INET, "type": socket.SOCK_STREAM, "proto": 6, "flags": 0},
]


def outcome(fn, *args, **kwargs):
    try:
        return ("ok", fn(*args, **kwargs))
    except Exception as exc:  # noqa: BLE001 - the exception is what is compared
        return ("error", type(exc), exc.args)


def loop_outcome(loop, coro_fn, *args, **kwargs):
    async def call():
        return await coro_fn(*args, **kwargs)

    return outcome(loop.run_until_complete, asyncio.wait_for(call(), 10))


def gai_kwargs_to_args(options):
    return (
        options.get("family", 0),
        options.get("type", 0),
        options.get("proto", 0),
        options.get("flags", 0),
    )


@pytest.mark.parametrize("host", HOSTS, ids=repr)
def test_getaddrinfo_matches_socket_for_hosts_and_ports(loop, host):
    for port in PORTS:
        expected = outcome(socket.getaddrinfo, host, port)
        got = loop_outcome(loop, loop.getaddrinfo, host, port)
        assert got == expected, (host, port)


@pytest.mark.parametrize("host", [None, "127.0.0.1", "::1", "0.0.0.0", b"::", "localhost"], ids=repr)
def test_getaddrinfo_matches_socket_for_options(loop, host):
    for port in (None, 443, "8080"):
        for options in OPTIONS:
            expected = outcome(socket.getaddrinfo, host, port, *gai_kwargs_to_args(options))
            got = loop_outcome(loop, loop.getaddrinfo, host, port, **options)
            assert got == expected, (host, port, options)


def test_getaddrinfo_keyword_only_and_missing_arguments(both_loops):
    results = []
    for loop in both_loops.values():
        results.append(
            (
                outcome(loop.getaddrinfo, "127.0.0.1", 80, socket.AF_INET),
                outcome(loop.getaddrinfo, "127.0.0.1"),
                outcome(loop.getaddrinfo, "127.0.0.1", 80, bogus=1),
            )
        )
    # The messages name the defining class (BaseEventLoop vs greenhub's), so types only.
    for r in results:
        assert [o[:2] for o in r] == [("error", TypeError)] * 3


SOCKADDRS = [
    ("127.0.0.1", 80),
    ("127.0.0.1", 0),
    ("1.2.3.4", 65535),
    ("::1", 80),
    ("::1", 80, 0, 0),
    ("fe80::1", 80, 0, 1),
    ("::ffff:127.0.0.1", 22),
    ("localhost", 80),  # not numeric: refused under NI_NUMERICHOST parsing
    ("127.0.0.1", 70000),
    ("127.0.0.1", -1),
    ("127.0.0.1", "80"),
    ("127.0.0.1",),
    ("127.0.0.1", 80, 0, 0, 0),
    ("::1", 80, 2**40, 0),
    "127.0.0.1",
    None,
    (b"127.0.0.1", 80),
]

NUMERIC = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
NAMEINFO_FLAGS = [
    NUMERIC,
    NUMERIC | socket.NI_DGRAM,
    NUMERIC | socket.NI_NAMEREQD,
    NUMERIC | socket.NI_NOFQDN,
    socket.NI_NUMERICHOST,  # service names are looked up: executor path
    socket.NI_NUMERICSERV,  # host names are looked up: executor path
    2**40,
]


@pytest.mark.parametrize("sockaddr", SOCKADDRS, ids=repr)
def test_getnameinfo_matches_socket(loop, sockaddr):
    for flags in NAMEINFO_FLAGS:
        if not flags & socket.NI_NUMERICHOST and sockaddr != ("127.0.0.1", 80):
            continue  # a reverse lookup of anything but localhost could reach a DNS server
        expected = outcome(socket.getnameinfo, sockaddr, flags)
        got = loop_outcome(loop, loop.getnameinfo, sockaddr, flags)
        assert got == expected, (sockaddr, flags)


def test_getnameinfo_reverse_lookup_of_localhost(loop):
    expected = outcome(socket.getnameinfo, ("127.0.0.1", 80), 0)
    assert loop_outcome(loop, loop.getnameinfo, ("127.0.0.1", 80)) == expected


def test_both_return_coroutines(loop):
    for call in (loop.getaddrinfo("127.0.0.1", 80), loop.getnameinfo(("127.0.0.1", 80), NUMERIC)):
        assert asyncio.iscoroutine(call)
        call.close()


class RecordingExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self):
        super().__init__(max_workers=1)
        self.submitted = []

    def submit(self, fn, /, *args, **kwargs):
        self.submitted.append(args[:2])
        return super().submit(fn, *args, **kwargs)


def test_which_lookups_use_the_executor(loop, kind):
    executor = RecordingExecutor()
    loop.set_default_executor(executor)

    async def main():
        await loop.getaddrinfo("127.0.0.1", 80)
        await loop.getaddrinfo("::1", "443", type=socket.SOCK_STREAM)
        await loop.getaddrinfo(None, 0, flags=socket.AI_PASSIVE)
        await loop.getnameinfo(("127.0.0.1", 80), NUMERIC)
        numeric = len(executor.submitted)
        await loop.getaddrinfo("localhost", 80)
        await loop.getaddrinfo("127.0.0.1", "http")
        await loop.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST)
        return numeric, len(executor.submitted) - numeric

    numeric, other = loop.run_until_complete(main())
    executor.shutdown(wait=True)
    assert other == 3  # names to look up go to the executor on both loops
    assert numeric == (4 if kind == "asyncio" else 0)


def test_cancelled_before_it_runs(loop):
    async def main():
        task = asyncio.ensure_future(loop.getaddrinfo("127.0.0.1", 80))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert loop.run_until_complete(main()) is True


@pytest.mark.parametrize(
    "call",
    [
        lambda lp: lp.getaddrinfo("localhost", 80),
        lambda lp: lp.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST),
    ],
    ids=["getaddrinfo", "getnameinfo"],
)
def test_cancelled_while_the_executor_works(loop, call):
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(executor)
    gate = threading.Event()
    executor.submit(gate.wait, 10)  # occupies the only worker

    async def main():
        task = asyncio.ensure_future(call(loop))
        await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()
        # The loop still answers afterwards.
        return await call(loop)

    try:
        assert loop.run_until_complete(main())
    finally:
        gate.set()
        executor.shutdown(wait=True)


def test_wait_for_timeout_zero(loop):
    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.getaddrinfo("127.0.0.1", 80), 0)

    loop.run_until_complete(main())


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_after_shutdown_default_executor(loop, host):
    async def main():
        await loop.shutdown_default_executor()
        return await loop.getaddrinfo(host, 80)

    assert outcome(loop.run_until_complete, main()) == (
        "error",
        RuntimeError,
        ("Executor shutdown has been called",),
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_coroutine_of_a_closed_loop(loop_factory, host):
    closed = loop_factory()
    closed.close()
    runner = loop_factory()
    for coro in (closed.getaddrinfo(host, 80), closed.getnameinfo((host, 80), NUMERIC)):
        assert outcome(runner.run_until_complete, coro) == (
            "error",
            RuntimeError,
            ("Event loop is closed",),
        )


_TOOK = re.compile(r"took [0-9.]+ms")


def test_debug_mode_logs_each_lookup(loop, caplog):
    loop.set_debug(True)
    caplog.set_level(logging.DEBUG, logger="asyncio")

    async def main():
        await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
        await loop.getaddrinfo("localhost", 80, family=socket.AF_INET, flags=socket.AI_PASSIVE)

    loop.run_until_complete(main())
    lines = [
        _TOOK.sub("took Tms", r.getMessage())
        for r in caplog.records
        if "address info" in r.getMessage()
    ]
    assert lines[0] == "Get address info 127.0.0.1:80, type=<SocketKind.SOCK_STREAM: 1>"
    assert lines[1].startswith(
        "Getting address info 127.0.0.1:80, type=<SocketKind.SOCK_STREAM: 1> took Tms: ["
    )
    assert lines[2].startswith("Get address info localhost:80, family=<AddressFamily.AF_INET")
    assert lines[3].startswith("Getting address info localhost:80, family=")
    assert len(lines) == 4


def test_connections_to_literals_and_names(loop):
    """create_connection resolves through getaddrinfo; both kinds of host connect."""

    async def main():
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        peers = []
        for host in ("127.0.0.1", "localhost"):
            reader, writer = await asyncio.open_connection(host, port, family=socket.AF_INET)
            peers.append(writer.get_extra_info("peername"))
            await reader.read()
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return port, peers

    port, peers = loop.run_until_complete(main())
    assert peers == [("127.0.0.1", port)] * 2
