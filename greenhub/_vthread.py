"""Virtual threads: synchronous code that waits on async code.

``await_`` is implemented in C (src/bridge.c); this module holds ``spawn`` and
the base frame every worker greenlet runs under.  ``await_`` with no loop
running is ``_thread_loop.run_sync`` (a layer up: it needs ``greenhub.Loop``).
"""

from __future__ import annotations

import asyncio
import builtins
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from . import _core

_P = ParamSpec("_P")
_T = TypeVar("_T")

__all__ = ["await_", "run_sync", "spawn"]

await_ = _core.await_
run_sync = _core.await_

# The base of every worker greenlet's frame stack: module-level code, so that a task's
# frames end in a ``<module>`` frame of ``__main__`` as they do on the stock loop, where
# the step's caller frames lead down to the script that started the loop.  Code that
# walks ``f_back`` to the nearest module frame (aiohttp's ``web.AppKey``, which names a
# key after it) then finds one.  The worker's return value is kept: greenlet hands it
# to the parent when a resumed await_() ends the greenlet.
_WORKER_BASE = compile("_greenhub_result = _greenhub_worker()", "<greenhub virtual thread>", "exec")


def _worker_entry(worker_main: Callable[[], object]) -> Callable[[], object]:
    def virtual_thread() -> object:
        main = sys.modules.get("__main__")
        namespace = getattr(main, "__dict__", None)
        if not isinstance(namespace, dict) or "__builtins__" not in namespace:
            namespace = {"__name__": "__main__", "__builtins__": builtins}
        local = {"_greenhub_worker": worker_main}
        exec(_WORKER_BASE, namespace, local)
        return local["_greenhub_result"]

    return virtual_thread


_core._wrap_worker_main(_worker_entry)


async def _call_sync(fn: Callable[..., _T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _T:
    return fn(*args, **kwargs)


def spawn(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> asyncio.Task[_T]:
    """Run the synchronous function ``fn(*args, **kwargs)`` as a virtual
    thread: an asyncio Task on the running greenhub loop whose result is what
    ``fn`` returns.  Inside ``fn`` (at any depth), ``greenhub.await_()``
    suspends only this task."""
    if not callable(fn):
        raise TypeError(f"greenhub.spawn() needs a callable, got {fn!r}")
    loop = asyncio.get_running_loop()
    if not isinstance(loop, _core.Loop):
        raise RuntimeError(
            f"greenhub.spawn() needs a running greenhub loop, but this thread runs "
            f"{type(loop).__name__}; start the program with greenhub.run()"
        )
    return loop.create_task(_call_sync(fn, args, kwargs))
