"""greenhub: virtual threads for Python.

An asyncio event loop written in C on libev.  Use it as any asyncio loop::

    import asyncio, greenhub

    greenhub.run(main())                                   # like asyncio.run()
    asyncio.run(main(), loop_factory=greenhub.new_event_loop)   # Python 3.12+
    greenhub.install()               # every new asyncio loop is a greenhub loop
"""

import asyncio as _asyncio
import sys as _sys
import warnings as _warnings
from collections.abc import Callable as _Callable
from collections.abc import Coroutine as _Coroutine
from typing import Any as _Any
from typing import TypeVar as _TypeVar
from typing import TypeVarTuple as _TypeVarTuple
from typing import Unpack as _Unpack
from typing import overload as _overload

try:
    from . import _core
except ImportError as _exc:  # not built for this Python, or it does not load: say which
    from ._build_hint import core_import_error

    raise core_import_error(_exc) from None
from . import _core, _private, _thread_loop, _vthread, _watchdog, vthread  # noqa: F401 - _core: diagnostics
from ._cancel import defer_cancellation
from ._colours import async_to_sync, sync_to_async, to_thread
from ._core import GreenCoro, check_switch, in_vthread
from ._dump import (
    TaskStack,
    disable_dump_on_signal,
    dump_tasks,
    enable_dump_on_signal,
    task_stacks,
)
from ._loop import Loop
from ._private import _get_running_loop
from ._switches import SwitchError, get_switch_log, no_switch, set_switch_log
from ._timeout import Timeout, timeout, timeout_at
from ._vthread import await_, spawn
from .pool import Group, Pool
from .sync import (
    BoundedSemaphore,
    Condition,
    Event,
    LifoQueue,
    Lock,
    PriorityQueue,
    Queue,
    RLock,
    Semaphore,
    sleep,
)

__all__ = [
    "BoundedSemaphore",
    "Condition",
    "Event",
    "GreenCoro",
    "Group",
    "LifoQueue",
    "Lock",
    "Loop",
    "Policy",
    "Pool",
    "PriorityQueue",
    "Queue",
    "RLock",
    "Semaphore",
    "SwitchError",
    "TaskStack",
    "Timeout",
    "async_to_sync",
    "await_",
    "check_switch",
    "defer_cancellation",
    "disable_dump_on_signal",
    "dump_tasks",
    "enable_dump_on_signal",
    "get_include",
    "get_switch_log",
    "in_vthread",
    "install",
    "new_event_loop",
    "no_switch",
    "run",
    "set_switch_log",
    "sleep",
    "spawn",
    "sync_to_async",
    "task_stacks",
    "timeout",
    "timeout_at",
    "to_thread",
    "vthread",
]
__all__ += ["server", "socket", "ssl"]  # imported on first use: import greenhub.socket
__version__ = "0.1.0.dev0"

_T = _TypeVar("_T")
_Ts = _TypeVarTuple("_Ts")


def new_event_loop() -> Loop:
    """Return a new greenhub event loop (usable as ``loop_factory=``)."""
    return Loop()


def get_include() -> str:
    """Return the directory of greenhub's C header, ``greenhub.h``: add it to the include
    path of a C or Cython extension that uses greenhub's C API (``greenhub/capi.pxd``
    for Cython; docs/guide-c-api.md).  Nothing needs to be linked."""
    import os

    return os.path.join(os.path.dirname(__file__), "include")


# asyncio's event loop policies are deprecated from Python 3.14 and go in 3.16: there
# `asyncio.DefaultEventLoopPolicy` warns when it is looked up, so greenhub's policy
# derives from the class behind that name (unix_events._DefaultEventLoopPolicy), which
# does not, and `greenhub.Policy` warns the same way when it is looked up (the module
# __getattr__ below) - never at `import greenhub`.
if _sys.version_info >= (3, 14):
    _PolicyBase = _private.DefaultEventLoopPolicy  # type: ignore[attr-defined]  # (3.14+)
else:
    _PolicyBase = _asyncio.DefaultEventLoopPolicy


class _Policy(_PolicyBase):  # type: ignore[valid-type,misc]
    """An asyncio event loop policy whose loops are greenhub loops.

    ``asyncio.set_event_loop_policy(greenhub.Policy())`` makes
    ``asyncio.new_event_loop()``, ``asyncio.run()`` and
    ``asyncio.get_event_loop()`` (main thread) use greenhub.  Deprecated on
    Python 3.14+, as asyncio's own policies are: use ``greenhub.run()``,
    ``asyncio.run(main(), loop_factory=greenhub.new_event_loop)`` or
    ``greenhub.install()``.
    """

    _loop_factory = Loop

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__}>"


_Policy.__name__ = _Policy.__qualname__ = "Policy"

if _sys.version_info < (3, 14):
    Policy = _Policy
    """An asyncio event loop policy whose loops are greenhub loops (deprecated on 3.14+)."""
else:
    __all__.remove("Policy")  # as asyncio's __all__ dropped its policy classes

    def __getattr__(name: str) -> object:
        if name == "Policy":
            _warnings.warn(
                "'greenhub.Policy' is deprecated and slated for removal in Python 3.16",
                DeprecationWarning,
                stacklevel=2,
            )
            return _Policy
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install() -> None:
    """Make greenhub the loop asyncio creates by default in this process:
    ``asyncio.run()``, ``asyncio.new_event_loop()`` and ``asyncio.Runner()``
    without a loop factory then make greenhub loops.

    It sets a greenhub policy as asyncio's event loop policy - on Python
    3.14+ without the DeprecationWarning that ``asyncio.set_event_loop_policy()``
    gives, as greenhub, not the caller, uses the deprecated mechanism there."""
    if _sys.version_info >= (3, 14):
        _private.set_event_loop_policy(_Policy())  # type: ignore[attr-defined]  # (3.14+)
    else:
        _asyncio.set_event_loop_policy(_Policy())


@_overload
def run(
    main: _Coroutine[_Any, _Any, _T],
    /,
    *,
    debug: bool | None = None,
    watchdog: float | None = None,
) -> _T: ...
@_overload
def run(
    main: _Callable[[_Unpack[_Ts]], _T],
    /,
    *args: _Unpack[_Ts],
    debug: bool | None = None,
    watchdog: float | None = None,
) -> _T: ...
def run(
    main: object,
    /,
    *args: object,
    debug: bool | None = None,
    watchdog: float | None = None,
) -> _Any:
    """Run `main` on a new greenhub loop and return its result.

    `main` is a coroutine - then this behaves as ``asyncio.run(main,
    debug=debug)``: it cancels leftover tasks, finalises async generators,
    shuts the default executor down and closes the loop; Ctrl-C cancels
    `main` and raises KeyboardInterrupt - or a synchronous function, which
    then runs as the program's main virtual thread, ``main(*args)``, under
    the same rules: inside it ``greenhub.spawn()``, ``greenhub.await_()``
    and greenhub's blocking calls work (the gevent-style entry point).
    ``watchdog=seconds`` turns the loop's watchdog on (``Loop.set_watchdog``).
    """
    if _get_running_loop() is not None:
        # Checked before a loop is made, as asyncio.run() does.
        raise RuntimeError("greenhub.run() cannot be called from a running event loop")
    if watchdog is not None:
        try:
            _core._check_watchdog_threshold(watchdog)  # bad values fail before a loop exists
        except (TypeError, ValueError):
            if _asyncio.iscoroutine(main):
                main.close()
            raise
    refused = False
    if _asyncio.iscoroutine(main):
        if args:
            main.close()
            raise TypeError("greenhub.run() takes arguments only with a function, not a coroutine")
        coro: object = main
    elif _vthread._is_coroutine_function(main):
        # Not a sync main: asyncio.Runner refuses it with asyncio.run()'s own error
        # (calling it here would return a coroutine that is never awaited).
        coro = main
        refused = True
    elif callable(main):
        coro = _vthread._call_sync(main, args, {})
    else:
        coro = main  # asyncio.Runner refuses it, with its own message
    factory = new_event_loop
    if watchdog is not None:

        def factory() -> Loop:
            loop = Loop()
            loop.set_watchdog(watchdog)
            return loop

    with _asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        if refused:
            try:
                return runner.run(coro)  # type: ignore[arg-type]  # refused: it raises
            except (TypeError, ValueError) as exc:
                exc.add_note(_vthread._CORO_FN_HINT.format(where="greenhub.run"))
                raise
        return runner.run(coro)  # type: ignore[arg-type]  # (refused there if no coroutine)
