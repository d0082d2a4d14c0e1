"""A tiny asyncio key-value server for the kvclient example and its tests.

Protocol: one request line, one reply line, UTF-8.

    GET key          -> VALUE <value> | NONE
    SET key value    -> OK                       (value: the rest of the line)
    DEL key          -> DELETED 1 | DELETED 0
    INCR key         -> VALUE <n>                (missing counts as 0)
    WAIT key         -> VALUE <value>            (replies once the key exists)
    anything else    -> ERR <message>

Run it: ``python examples/kvclient/server.py [port]``.
"""

import asyncio
import sys


class Store:
    def __init__(self):
        self.data = {}
        self.changed = asyncio.Condition()

    async def handle(self, reader, writer):
        try:
            while line := await reader.readline():
                reply = await self.execute(line.decode().rstrip("\n"))
                writer.write(reply.encode() + b"\n")
                await writer.drain()
        except (ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    async def execute(self, line):
        cmd, _, rest = line.partition(" ")
        key, _, value = rest.partition(" ")
        if not key:
            return f"ERR bad request {line!r}"
        if cmd == "GET":
            return f"VALUE {self.data[key]}" if key in self.data else "NONE"
        if cmd == "SET":
            await self.set(key, value)
            return "OK"
        if cmd == "DEL":
            return f"DELETED {int(self.data.pop(key, None) is not None)}"
        if cmd == "INCR":
            try:
                n = int(self.data.get(key, "0")) + 1
            except ValueError:
                return f"ERR {key} is not a number"
            await self.set(key, str(n))
            return f"VALUE {n}"
        if cmd == "WAIT":
            async with self.changed:
                await self.changed.wait_for(lambda: key in self.data)
            return f"VALUE {self.data[key]}"
        return f"ERR unknown command {cmd!r}"

    async def set(self, key, value):
        self.data[key] = value
        async with self.changed:
            self.changed.notify_all()


async def start_server(host="127.0.0.1", port=0):
    """Start serving on the running loop; returns the asyncio.Server."""
    return await asyncio.start_server(Store().handle, host, port)


async def _main(port):
    server = await start_server(port=port)
    print("kv server on port", server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main(int(sys.argv[1]) if len(sys.argv) > 1 else 7777))
