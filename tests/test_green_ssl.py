"""greenhub.ssl: TLS over green sockets; the handshake, reads, writes and unwrap suspend
only the calling virtual thread, and behave as ssl's own outside one."""

import asyncio
import ssl
import threading

import pytest
from vthread_helpers import gloop_fixture, in_thread  # noqa: F401 - fixture

import greenhub
import greenhub.socket as gsocket
import greenhub.ssl as gssl

trustme = pytest.importorskip("trustme", reason="trustme (make deps installs it)")


@pytest.fixture(scope="module")
def certs():
    ca = trustme.CA()
    return ca, ca.issue_cert("localhost", "127.0.0.1")


@pytest.fixture
def contexts(certs):
    ca, cert = certs
    server_ctx = gssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_ctx)
    client_ctx = gssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


def vrun(loop, fn, *args, timeout=20):
    async def main():
        return await asyncio.wait_for(greenhub.spawn(fn, *args), timeout)

    return loop.run_until_complete(main())


def tls_echo_server(server_ctx, lsock, n):
    """Accepts n TLS connections, echoes each until the peer unwraps."""

    def serve(conn):
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)
            conn.unwrap()

    for _ in range(n):
        conn, _ = lsock.accept()
        assert isinstance(conn, gssl.SSLSocket)
        greenhub.spawn(serve, conn)


def test_contexts_and_sockets_are_ssl_types(contexts):
    server_ctx, client_ctx = contexts
    assert isinstance(client_ctx, ssl.SSLContext) and isinstance(client_ctx, gssl.SSLContext)
    assert issubclass(gssl.SSLSocket, ssl.SSLSocket)
    assert issubclass(gssl.SSLSocket, gsocket.socket)
    assert gssl.PROTOCOL_TLS_CLIENT == ssl.PROTOCOL_TLS_CLIENT
    assert gssl.SSLError is ssl.SSLError


def test_handshake_echo_unwrap_in_virtual_threads(gloop, contexts):
    server_ctx, client_ctx = contexts
    n = 10

    def client(port, i):
        raw = gsocket.create_connection(("127.0.0.1", port))
        s = client_ctx.wrap_socket(raw, server_hostname="localhost")
        out = []
        for j in range(5):
            msg = b"%d-%d " % (i, j) * 500  # several TLS records
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                got += s.recv(65536)
            out.append(got == msg)
        plain = s.unwrap()
        plain.close()
        return all(out), isinstance(plain, gsocket.socket)

    def main():
        lsock = server_ctx.wrap_socket(gsocket.create_server(("127.0.0.1", 0)), server_side=True)
        with lsock:
            port = lsock.getsockname()[1]
            srv = greenhub.spawn(tls_echo_server, server_ctx, lsock, n)
            results = greenhub.await_(
                asyncio.gather(*(greenhub.spawn(client, port, i) for i in range(n)))
            )
            greenhub.await_(srv)
            return results

    assert vrun(gloop, main) == [(True, True)] * n


def test_read_timeout_in_a_virtual_thread(gloop, contexts):
    server_ctx, client_ctx = contexts

    def main():
        with gsocket.create_server(("127.0.0.1", 0)) as lsock:
            port = lsock.getsockname()[1]

            def server():
                conn, _ = lsock.accept()
                tls = server_ctx.wrap_socket(conn, server_side=True)
                greenhub.await_(asyncio.sleep(0.3))  # handshakes, then says nothing
                tls.close()

            srv = greenhub.spawn(server)
            s = client_ctx.wrap_socket(
                gsocket.create_connection(("127.0.0.1", port)), server_hostname="localhost"
            )
            s.settimeout(0.05)
            with pytest.raises(TimeoutError) as exc:
                s.recv(10)
            s.close()
            greenhub.await_(srv)
            return str(exc.value)

    assert vrun(gloop, main) == "The read operation timed out"


def test_cancel_during_handshake_leaves_nothing_behind(gloop, contexts):
    _, client_ctx = contexts
    lsock = gsocket.create_server(("127.0.0.1", 0))  # accepts, never answers

    async def main():
        raw = gsocket.create_connection(lsock.getsockname())
        task = greenhub.spawn(client_ctx.wrap_socket, raw, server_hostname="localhost")
        await asyncio.sleep(0.01)
        assert gloop._io_watchers().get(raw.fileno()) == 1 or raw.fileno() == -1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        raw.close()

    try:
        gloop.run_until_complete(asyncio.wait_for(main(), 10))
    finally:
        lsock.close()


def test_outside_a_virtual_thread_tls_is_ssls(contexts):
    server_ctx, client_ctx = contexts
    lsock = gsocket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def server():
        conn, _ = lsock.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(tls.recv(100).upper())
            tls.recv(100)  # the client's close_notify... or EOF

    t = threading.Thread(target=server)
    t.start()
    try:

        def client():
            with client_ctx.wrap_socket(
                gsocket.create_connection(("127.0.0.1", port)), server_hostname="localhost"
            ) as s:
                s.settimeout(5)
                s.sendall(b"hello tls")
                with s.makefile("rb") as f:
                    return f.read(9), s.version() is not None

        assert in_thread(client) == (b"HELLO TLS", True)
    finally:
        t.join(10)
        lsock.close()
