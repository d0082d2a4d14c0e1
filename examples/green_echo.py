"""A blocking-style echo server and its clients, all virtual threads on one loop.

Plain socket code - accept(), recv(), sendall(), makefile().readline() - where every
blocking call suspends only its own virtual thread.  Run: python examples/green_echo.py
"""

import asyncio
import time

import greenhub
from greenhub import socket


def handle(conn):
    with conn:
        while data := conn.recv(65536):  # waits for this connection only
            conn.sendall(data)


def serve(listener):
    while True:
        conn, _addr = listener.accept()
        greenhub.spawn(handle, conn)


def client(port, n, lines):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rwb")
        for i in range(lines):
            f.write(b"client %d line %d\n" % (n, i))
            f.flush()
            assert f.readline() == b"client %d line %d\n" % (n, i)
    return lines


def main():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = greenhub.spawn(serve, listener)
    t0 = time.monotonic()
    clients = [greenhub.spawn(client, port, n, 200) for n in range(50)]
    total = sum(greenhub.await_(asyncio.gather(*clients)))
    print(f"{len(clients)} clients echoed {total} lines in {time.monotonic() - t0:.2f} s")
    server.cancel()
    listener.close()


if __name__ == "__main__":
    greenhub.run(main)
