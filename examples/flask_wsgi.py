"""A Flask application on virtual threads: greenhub.contrib.wsgi under uvicorn.

Serve it as you would deploy it (docs/guide-deploy.md):

    uvicorn --loop greenhub:new_event_loop examples.flask_wsgi:app
    gunicorn -k greenhub.contrib.gunicorn.Worker examples.flask_wsgi:app

or run this file: it starts uvicorn on a greenhub loop on a free port, sends 20
requests at once to a view whose "database query" takes 0.2 s, and prints

    20 requests answered in 0.2x s (the queries overlapped) by 1 OS thread, each in a
    virtual thread of a greenhub loop: True

The view is plain sync Flask code.  Its query waits through ``greenhub.await_()`` (a
real application would reach the same wait through a cooperative driver:
``greenhub.contrib.psycopg``, or ``greenhub.monkey``), which suspends only that
request's virtual thread, so one thread serves all 20 at once - no thread pool.
"""

import asyncio
import threading
import time

from flask import Flask, jsonify

import greenhub
from greenhub.contrib.wsgi import WSGIMiddleware

flask_app = Flask(__name__)


def slow_query(user_id):
    """Sync code that waits, as a database driver would."""
    greenhub.await_(asyncio.sleep(0.2))
    return {"id": user_id, "name": f"user {user_id}"}


@flask_app.get("/users/<int:user_id>")
def user(user_id):
    row = slow_query(user_id)
    # Where it ran: the server's OS thread, in a virtual thread of its greenhub loop.
    return jsonify(row=row, thread=threading.get_ident(), vthread=greenhub.in_vthread())


app = WSGIMiddleware(flask_app)  # the ASGI application a server loads


def main():
    import socket

    import httpx
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(100)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, loop="greenhub:new_event_loop", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()

    async def clients():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            await c.get("/users/0")  # waits (in the listen backlog) until the server is up
            start = time.perf_counter()
            replies = await asyncio.gather(*(c.get(f"/users/{i}") for i in range(20)))
            return replies, time.perf_counter() - start

    try:
        replies, elapsed = asyncio.run(clients())
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
    rows = [r.json() for r in replies]
    assert [row["row"]["id"] for row in rows] == list(range(20))
    threads = {row["thread"] for row in rows}
    in_vthreads = all(row["vthread"] for row in rows)
    overlapped = "the queries overlapped" if elapsed < 20 * 0.2 / 2 else "one after another"
    print(
        f"{len(rows)} requests answered in {elapsed:.2f} s ({overlapped}) by "
        f"{len(threads)} OS thread, each in a virtual thread of a greenhub loop: {in_vthreads}"
    )


if __name__ == "__main__":
    main()
