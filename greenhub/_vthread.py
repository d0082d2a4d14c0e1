"""Virtual threads: synchronous code that waits on async code.

``await_`` is implemented in C (src/bridge.c); this module holds ``spawn`` and
the base frame every worker greenlet runs under.  ``await_`` with no loop
running is ``_thread_loop.run_sync`` (a layer up: it needs ``greenhub.Loop``).
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import sys
import types
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from . import _core
from ._core import await_
from ._core import await_ as run_sync
from ._private import _get_running_loop

_P = ParamSpec("_P")
_T = TypeVar("_T")

__all__ = ["await_", "run_sync", "spawn"]


# The base of every worker greenlet's frame stack: a frame named ``<module>``, in the
# namespace of ``__main__``, so that a task's frames end in a module frame of
# ``__main__`` as they do on the stock loop, where the step's caller frames lead down to
# the script that started the loop.  Code that walks ``f_back`` to the nearest module
# frame (aiohttp's ``web.AppKey``, which names a key after it) then finds one.  It is a
# function whose code is renamed ``<module>``, not module code run by exec(): the
# greenlet calls it directly, which keeps two interpreter calls and exec()'s own C
# frames off the stack every suspended virtual thread saves.  The worker's return value
# is kept: greenlet hands it to the parent when a resumed await_() ends the greenlet.
def _make_worker_base() -> types.CodeType:
    source = "def base(_greenhub_worker):\n    return _greenhub_worker()\n"
    module = compile(source, "<greenhub virtual thread>", "exec")
    (code,) = (c for c in module.co_consts if isinstance(c, types.CodeType))
    return code.replace(co_name="<module>", co_qualname="<module>")


_WORKER_BASE = _make_worker_base()


def _worker_run(worker_main: Callable[[], object]) -> Callable[[], object]:
    """What a new worker greenlet runs: worker_main under the base frame, whose
    globals are those of ``__main__`` as it is now."""
    main = sys.modules.get("__main__")
    namespace = getattr(main, "__dict__", None)
    if not isinstance(namespace, dict) or "__builtins__" not in namespace:
        namespace = {"__name__": "__main__", "__builtins__": builtins}
    return types.FunctionType(_WORKER_BASE, namespace, "<module>", (worker_main,))


_core._set_worker_base(_worker_run)


async def _call_sync(fn: Callable[..., _T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> _T:
    return fn(*args, **kwargs)


_CORO_FN_HINT = (
    "hint: that is a coroutine function; {where}() runs a coroutine - call it: "
    "{where}(main()) - or a synchronous function"
)


def _is_coroutine_function(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or (
        callable(fn)
        and not inspect.isfunction(fn)
        and not inspect.ismethod(fn)
        and inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004
    )


def _run_refusal(fn: object) -> Exception:
    """The exception asyncio.run(fn) raises for a coroutine function on this version:
    up to 3.13 Runner.run()'s ValueError; from 3.14, which runs any awaitable, the
    TypeError of ensure_future(), raised here by ensure_future() itself (it checks
    before it looks for a loop)."""
    if sys.version_info >= (3, 14):
        try:
            asyncio.ensure_future(fn)  # type: ignore[call-overload]  # refused: it raises
        except TypeError as exc:
            return exc
    return ValueError(f"a coroutine was expected, got {fn!r}")


def spawn(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> asyncio.Task[_T]:
    """Run the synchronous function ``fn(*args, **kwargs)`` as a virtual
    thread: an asyncio Task on the running greenhub loop whose result is what
    ``fn`` returns.  Inside ``fn`` (at any depth), ``greenhub.await_()``
    suspends only this task."""
    if not callable(fn):
        raise TypeError(f"greenhub.spawn() needs a callable, got {fn!r}")
    if _is_coroutine_function(fn):
        # asyncio.run()'s error for the same slip (the function's call would return a
        # coroutine that is never awaited), and what to use instead.
        exc = _run_refusal(fn)
        exc.add_note(
            "hint: that is a coroutine function; greenhub.spawn() runs a synchronous "
            "function as a virtual thread - for a coroutine use asyncio.create_task(fn(...))"
        )
        raise exc
    loop = _get_running_loop()
    if loop is None:
        raise RuntimeError(
            "greenhub.spawn() needs a running greenhub loop in this thread, and none is "
            "running: call it from code that greenhub.run() runs (a task or a virtual "
            "thread), or start one with greenhub.run(fn)"
        )
    if not isinstance(loop, _core.Loop):
        raise RuntimeError(
            f"greenhub.spawn() needs a running greenhub loop, but this thread runs "
            f"{type(loop).__name__}; start the program with greenhub.run()"
        )
    return loop.create_task(_call_sync(fn, args, kwargs))
