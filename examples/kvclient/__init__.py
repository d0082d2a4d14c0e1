"""kvclient: a tiny key-value protocol client written ONCE, in sync style, offering a
synchronous API (``Client``) and an asynchronous one (``AsyncClient``) from the same
code.  See README.md.

The implementation (``_Connection``) is plain sync code that talks to the server over
asyncio streams through ``greenhub.await_()``:

- ``Client`` calls it directly: from a plain script (no event loop: greenhub runs the
  stream operations on this thread's loop) or from a virtual thread (only that task
  waits);
- ``AsyncClient`` exposes the same methods made with ``greenhub.sync_to_async``: on a
  greenhub loop they run in the awaiting task with no thread hop; on another asyncio
  loop they run in a worker thread whose ``await_`` calls go back to that loop.
"""

from .client import AsyncClient, Client, KVError
from .server import start_server

__all__ = ["AsyncClient", "Client", "KVError", "start_server"]
