"""The Task that greenhub loops make, and how greenhub finds a task's GreenCoro.

``Loop.create_task()`` (src/loop.c) wraps the coroutine in a ``_core.GreenCoro``,
whose ``send()``/``throw()`` run each step on a greenlet, and builds CPython's own
``asyncio.Task`` around the wrapper: the Task steps what its coroutine field holds.
That field is also what ``asyncio.Task.get_coro()`` returns, while users,
``asyncio.graph`` and debuggers expect the coroutine they passed.  So the Task
greenhub makes is this module's ``Task``: an ``asyncio.Task`` whose ``get_coro()``
looks through the wrapper, and nothing else (no new state, no other method).  Why
the other cases (task factories, the eager factory) are as they are is written in
src/task_create.c.

greenhub's own code reads the wrapper with ``green_coro()``.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from . import _core
from ._private import task_coro_field

__all__ = ["Task", "green_coro"]

_T_co = TypeVar("_T_co", covariant=True)

# The Task's coroutine field, read by asyncio.Task's own `_coro` descriptor whatever the
# Task's class or instance attributes say: what asyncio's get_coro() returns, and None
# once the Task has dropped it (an eager task that finished in its first step), where
# the get_coro() of 3.12.0 and 3.12.1 crashes.
_coro_field = task_coro_field


class Task(asyncio.Task[_T_co]):
    """An ``asyncio.Task`` whose ``get_coro()`` returns the coroutine it was made
    for, not the ``GreenCoro`` that runs its steps on a greenlet."""

    __slots__ = ()

    # Typed as asyncio's, which typeshed spells differently per version (None from 3.12).
    def get_coro(self) -> Any:
        coro = _coro_field(self)
        if type(coro) is _core.GreenCoro:
            return coro.coroutine
        return coro


def green_coro(task: object) -> _core.GreenCoro | None:
    """The GreenCoro that runs `task`'s steps, or None if it has none (a task that
    did not come from a greenhub loop's ``create_task()``, a Future-like object)."""
    if not issubclass(type(task), asyncio.Task):  # type(): a mock's __class__ may say Task
        return None
    coro = _coro_field(task)
    return coro if type(coro) is _core.GreenCoro else None


def _eager_task_factory() -> Any:
    make = getattr(asyncio, "create_eager_task_factory", None)  # 3.12+
    return make(Task) if make is not None else None


_core._install_task_type(Task, _eager_task_factory())
