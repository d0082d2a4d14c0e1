"""Virtual threads under their own names.

``run_sync(awaitable)`` is :func:`greenhub.await_`: from synchronous code,
wait for an awaitable; ``spawn(fn, *args, **kwargs)`` runs a synchronous
function as a virtual thread (an asyncio Task).
"""

from ._vthread import run_sync, spawn

__all__ = ["run_sync", "spawn"]
