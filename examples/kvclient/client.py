"""The kvclient library: one implementation in sync style, two APIs.

Everything that talks to the server is in ``_Connection``, written as ordinary
synchronous code.  Where it must wait for the network it calls ``greenhub.await_()``
on an asyncio stream operation; that is the only line that knows about async.
"""

import asyncio

import greenhub


class KVError(Exception):
    """The server refused a request."""


class _Connection:
    """The one implementation: sync methods over asyncio streams."""

    def _open(self, host, port):
        self._reader, self._writer = greenhub.await_(asyncio.open_connection(host, port))
        # One request at a time per connection, even when several virtual threads (or
        # tasks) share it: replies come back in order, on one stream.
        self._lock = asyncio.Lock()

    def _request(self, *words):
        line = " ".join(words)
        if "\n" in line:
            raise ValueError("keys and values cannot contain newlines")
        greenhub.await_(self._lock.acquire())
        try:
            self._writer.write(line.encode() + b"\n")
            greenhub.await_(self._writer.drain())
            reply = greenhub.await_(self._reader.readline())
        finally:
            self._lock.release()
        if not reply:
            raise ConnectionError("the server closed the connection")
        kind, _, rest = reply.decode().rstrip("\n").partition(" ")
        if kind == "ERR":
            raise KVError(rest)
        return kind, rest

    @staticmethod
    def _key(key):
        if not isinstance(key, str) or not key or " " in key:
            raise ValueError(f"a key is a non-empty string without spaces, got {key!r}")
        return key

    def get(self, key, default=None):
        """The value stored under key, or default."""
        kind, rest = self._request("GET", self._key(key))
        return rest if kind == "VALUE" else default

    def set(self, key, value):
        """Store the string value under key."""
        self._request("SET", self._key(key), str(value))

    def delete(self, key):
        """Remove key; True if it existed."""
        return self._request("DEL", self._key(key))[1] == "1"

    def incr(self, key):
        """Add one to the number stored under key (0 if missing); the new value."""
        return int(self._request("INCR", self._key(key))[1])

    def wait(self, key):
        """Block until key exists, then return its value."""
        return self._request("WAIT", self._key(key))[1]

    def close(self):
        writer = getattr(self, "_writer", None)
        if writer is not None:
            self._writer = None
            writer.close()
            try:
                greenhub.await_(writer.wait_closed())
            except ConnectionError:
                pass


class Client(_Connection):
    """Synchronous client: from a plain script, or from a virtual thread.

    With no event loop running, its calls run on this thread's greenhub loop (so use
    a client in the thread that made it); in a virtual thread, a call suspends only
    that virtual thread.
    """

    def __init__(self, host="127.0.0.1", port=7777):
        self._open(host, port)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_async = greenhub.sync_to_async(thread_sensitive=False)  # see AsyncClient


class AsyncClient(_Connection):
    """Asynchronous client: the same methods, awaited.

    Made with ``greenhub.sync_to_async`` from the sync implementation.  On a greenhub
    loop each call runs in the awaiting task (no thread).  On another asyncio loop it
    runs in a worker thread whose ``await_`` calls go back to that loop; the calls are
    safe to run in several threads at once (each holds the connection's lock while it
    talks), hence ``thread_sensitive=False``: a ``wait()`` does not hold up other
    clients' calls.
    """

    @classmethod
    async def connect(cls, host="127.0.0.1", port=7777):
        self = cls.__new__(cls)
        await _async(self._open)(host, port)
        return self

    get = _async(_Connection.get)
    set = _async(_Connection.set)
    delete = _async(_Connection.delete)
    incr = _async(_Connection.incr)
    wait = _async(_Connection.wait)
    close = _async(_Connection.close)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
