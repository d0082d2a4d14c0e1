"""Serve tests/django_app with uvicorn on a greenhub loop, in a process of its own
(tests/test_pg_disconnects.py; Django's settings and its psycopg pool are per process).

    python tests/django_app/serve.py DSN MODE

MODE ``pool``: Django's psycopg pool (``OPTIONS={"pool": {...}}``, CONN_MAX_AGE=0), at
most POOL_SIZE connections.  MODE ``reuse``: greenhub's per-virtual-thread connections
(``reuse_connections``, the default), lent to at most POOL_SIZE requests at once
(``max_connections``).  Prints the port it listens on, then serves until its stdin is
closed.
"""

import asyncio
import os
import sys

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(TESTS), TESTS]

POOL_SIZE = 4


def configure(dsn, mode):
    from django.conf import settings

    import django_app

    conf = django_app.settings(dsn, MIDDLEWARE=[])
    db = conf["DATABASES"]["default"]
    db["CONN_MAX_AGE"] = 0  # Django requires it with its pool; greenhub reuses anyway
    if mode == "pool":
        # min_size < max_size: the pool grows under load, so its worker threads hand
        # new connections to waiting clients too.
        db["OPTIONS"] = {"pool": {"min_size": 2, "max_size": POOL_SIZE, "timeout": 10}}
    elif mode != "reuse":
        raise SystemExit(f"unknown mode {mode!r}")
    settings.configure(**conf)

    from greenhub.contrib.django import get_asgi_application

    return get_asgi_application(max_connections=POOL_SIZE if mode == "reuse" else None)


async def serve(app):
    import uvicorn

    loop = asyncio.get_running_loop()
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve())
    while not server.started:
        if serving.done():
            serving.result()  # it failed to start: say why
            raise SystemExit("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    print(server.servers[0].sockets[0].getsockname()[1], flush=True)

    stdin_closed = loop.create_future()

    def on_stdin():
        if not os.read(0, 4096) and not stdin_closed.done():
            stdin_closed.set_result(None)

    loop.add_reader(0, on_stdin)
    try:
        await stdin_closed
    finally:
        loop.remove_reader(0)
        server.should_exit = True
        await serving


def main():
    dsn, mode = sys.argv[1:3]
    app = configure(dsn, mode)
    import greenhub

    loop = greenhub.new_event_loop()
    try:
        loop.run_until_complete(serve(app))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
