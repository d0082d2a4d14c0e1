"""A small gevent program ported to greenhub (see docs/porting-from-gevent.md).

An echo server handles each connection in its own virtual thread; 100 clients,
at most 10 at a time, send a line each and collect the answers in a queue; the
whole run has a 5 second time limit.  The code is plain blocking code - sockets,
a queue, a semaphore - made cooperative by greenhub.monkey.patch_all().

    python examples/gevent_port.py
"""

from greenhub import monkey

monkey.patch_all()  # first, before the modules that use sockets and locks are imported

import asyncio  # noqa: E402
import queue  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402

import greenhub  # noqa: E402


def handle(conn):
    """One connection: answer each line in upper case (a virtual thread)."""
    with conn, conn.makefile("rb") as lines:
        for line in lines:
            conn.sendall(line.upper())


def serve(listener):
    """Accept connections forever, one virtual thread each (gevent's StreamServer)."""
    while True:
        conn, _ = listener.accept()
        greenhub.spawn(handle, conn)


def client(n, address, pool, results):
    with pool:  # at most 10 clients at a time (gevent.pool.Pool(10))
        with socket.create_connection(address) as sock, sock.makefile("rb") as answers:
            sock.sendall(b"hello %d\n" % n)
            results.put(answers.readline().decode().strip())


def main():
    listener = socket.create_server(("127.0.0.1", 0))
    server = greenhub.spawn(serve, listener)
    results = queue.Queue()
    pool = threading.BoundedSemaphore(10)
    clients = [greenhub.spawn(client, n, listener.getsockname(), pool, results) for n in range(100)]
    # gevent.joinall(clients) under gevent.Timeout(5):
    greenhub.await_(asyncio.wait_for(asyncio.gather(*clients), 5))
    server.cancel()
    listener.close()
    answers = sorted(results.get_nowait() for _ in range(results.qsize()))
    print(len(answers), "answers, e.g.", answers[:3])
    return answers


if __name__ == "__main__":
    greenhub.run(main)
