"""greenhub.dump_tasks(): every task with its whole stack, sync frames included.

A stock asyncio task suspended at an ``await`` has a chain of suspended
coroutines (``cr_await``), which is all ``Task.get_stack()`` can show.  A
virtual thread suspended in ``greenhub.await_()`` also has synchronous frames
between its coroutine and the ``await_`` call; they live on the greenlet the
task is parked on (``GreenCoro.greenlet.gr_frame``, whose ``f_back`` chain
leads from the ``await_`` caller back to the task's coroutine).  Below the
``await_`` call, the awaitable it iterates (``GreenCoro.awaiting``) is again
a chain of suspended coroutines ending at the future the task waits on.

Loops are found through a registry of weak references, filled by
``greenhub.Loop.__init__``, so a dump made outside any loop shows every live
greenhub loop without keeping one alive.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import traceback
import weakref
from collections.abc import Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Protocol

from . import _core, _task
from ._private import _current_frames, _get_running_loop, _getframe
from ._vthread import _WORKER_BASE

if TYPE_CHECKING:
    from ._loop import Loop

__all__ = [
    "TaskStack",
    "disable_dump_on_signal",
    "dump_tasks",
    "enable_dump_on_signal",
    "task_stacks",
]

_loops: weakref.WeakSet[Loop] = weakref.WeakSet()
_Frames = list[tuple[FrameType, int]]  # (frame, line number), outermost first


class _TextOut(Protocol):
    """Where a dump is written: sys.stderr, a text file, io.StringIO..."""

    def write(self, text: str, /) -> object: ...
    def flush(self) -> object: ...


def register_loop(loop: Loop) -> None:
    """Called by greenhub.Loop.__init__."""
    _loops.add(loop)


class TaskStack(NamedTuple):
    """One task as ``greenhub.task_stacks()`` reports it."""

    task: asyncio.Task[Any]
    loop: asyncio.AbstractEventLoop
    name: str
    #: "running", "waiting in await_()", "waiting", "done", "cancelled" or "failed"
    state: str
    #: from the task's coroutine to the innermost frame (to the await_() call
    #: for a task waiting in await_()), outermost first, as a traceback shows it
    frames: traceback.StackSummary
    #: below await_(): the frames of the awaitable it waits for (else empty)
    awaited_frames: traceback.StackSummary
    #: what the task waits on at the bottom (a future, a task), or None
    waiting_on: Optional[Any]


def _summary(pairs: Iterable[tuple[FrameType, int]]) -> traceback.StackSummary:
    return traceback.StackSummary.extract(iter(pairs), limit=None)


def _frames_from(frame: FrameType | None) -> _Frames:
    """[(frame, lineno)] from `frame` outwards, reversed: outermost first.  The
    worker greenlet's base frames (``_vthread._WORKER_BASE``) are not the task's."""
    pairs: _Frames = []
    while frame is not None and frame.f_code is not _WORKER_BASE:
        pairs.append((frame, frame.f_lineno))
        frame = frame.f_back
    pairs.reverse()
    return pairs


def _await_chain(aw: Any) -> tuple[_Frames, Any]:
    """The frames of a chain of suspended coroutines/generators, outermost
    first, and the object at its bottom (usually a future)."""
    pairs: _Frames = []
    seen = 0
    while aw is not None and seen < 1000:
        seen += 1
        frame = getattr(aw, "cr_frame", None)
        nxt = getattr(aw, "cr_await", None)
        if frame is None and nxt is None:
            frame = getattr(aw, "gi_frame", None)
            nxt = getattr(aw, "gi_yieldfrom", None)
        if frame is None and nxt is None:
            return pairs, aw  # a future, a task, or some other awaitable
        if frame is not None:
            pairs.append((frame, frame.f_lineno))
        aw = nxt
    return pairs, None


def _state(task: asyncio.Task[Any]) -> str:
    if not task.done():
        return "waiting"
    if task.cancelled():
        return "cancelled"
    return "failed" if task.exception() is not None else "done"


def _task_stack(
    loop: Loop, task: asyncio.Task[Any], running_frames: dict[asyncio.Task[Any], _Frames]
) -> TaskStack:
    green = _task.green_coro(task)
    frames: _Frames = []
    awaited: _Frames = []
    waiting_on: Any = None
    state = _state(task)
    if task.done():
        pass
    elif task in running_frames:
        state = "running"
        frames = running_frames[task]
    elif green is not None and green.parked:
        state = "waiting in await_()"
        g = green.greenlet
        frames = _frames_from(g.gr_frame if g is not None else None)
        awaited, waiting_on = _await_chain(green.awaiting)
    else:
        inner = green.coroutine if green is not None else task.get_coro()
        frames, waiting_on = _await_chain(inner)
    if not task.done():
        # The bottom of the chain is often a future's __await__ iterator; the
        # Task knows the future itself.
        waiting_on = getattr(task, "_fut_waiter", None) or waiting_on
    return TaskStack(
        task,
        loop,
        task.get_name(),
        state,
        _summary(frames),
        _summary(awaited),
        waiting_on,
    )


def _running_frames(loops: list[Loop], frame: FrameType | None) -> dict[asyncio.Task[Any], _Frames]:
    """{task: frames} for the task running now on each loop: the calling
    thread's stack from `frame`, other threads' from sys._current_frames()."""
    out = {}
    here = threading.get_ident()
    others = None
    for loop in loops:
        task = asyncio.current_task(loop) if loop.is_running() else None
        if task is None:
            continue
        if loop._thread_id == here:
            f = frame
        else:
            if others is None:
                others = _current_frames()
            f = others.get(loop._thread_id) if loop._thread_id is not None else None
        out[task] = _frames_from(f)
    return out


def _loops_to_dump(loop: Loop | None) -> list[Loop]:
    if loop is not None:
        return [loop]
    running = _get_running_loop()
    if isinstance(running, _core.Loop):
        return [running]
    return sorted(_loops, key=id)


def task_stacks(loop: Loop | None = None, *, _frame: FrameType | None = None) -> list[TaskStack]:
    """A ``TaskStack`` for every task of `loop` - by default the running loop,
    or every live greenhub loop when no greenhub loop runs in this thread -
    including, for a virtual thread waiting in ``greenhub.await_()``, the
    synchronous frames between its coroutine and the ``await_`` call."""
    if loop is not None and not isinstance(loop, _core.Loop):
        raise TypeError(f"task_stacks() needs a greenhub loop, not {loop!r}")
    loops = [lp for lp in _loops_to_dump(loop) if not lp.is_closed()]
    running = _running_frames(loops, _frame or _getframe(1))
    result: list[TaskStack] = []
    for lp in loops:
        tasks = sorted(asyncio.all_tasks(lp), key=lambda t: t.get_name())
        result.extend(_task_stack(lp, t, running) for t in tasks)
    return result


def _format(stacks: list[TaskStack], loops: list[Loop]) -> str:
    lines: list[str] = []
    by_loop: dict[int, list[TaskStack]] = {}
    for ts in stacks:
        by_loop.setdefault(id(ts.loop), []).append(ts)
    for lp in loops:
        mine = by_loop.get(id(lp), [])
        lines.append(f"greenhub: {len(mine)} task(s) on {lp!r}\n")
        for ts in mine:
            lines.append(f"\nTask {ts.name!r} ({ts.state}): {ts.task!r}\n")
            if ts.frames:
                lines.append("Stack (most recent call last):\n")
                lines.extend(ts.frames.format())
            if ts.state == "waiting in await_()":
                lines.append("  -- greenhub.await_() is waiting for the awaitable below --\n")
                lines.extend(ts.awaited_frames.format())
            if ts.waiting_on is not None:
                lines.append(f"  waiting on {ts.waiting_on!r}\n")
    return "".join(lines)


def dump_tasks(
    file: _TextOut | None = None,
    *,
    loop: Loop | None = None,
    _frame: FrameType | None = None,
) -> None:
    """Print every task - of `loop`, by default the running loop, or of every
    live greenhub loop when called outside one - with its name, state and
    stack, the synchronous frames under each ``greenhub.await_()`` included,
    to `file` (default sys.stderr)."""
    if loop is not None and not isinstance(loop, _core.Loop):
        raise TypeError(f"dump_tasks() needs a greenhub loop, not {loop!r}")
    loops = [lp for lp in _loops_to_dump(loop) if not lp.is_closed()]
    stacks = task_stacks(loop, _frame=_frame or _getframe(1))
    text = _format(stacks, loops) if loops else "greenhub: no open greenhub loop\n"
    out: _TextOut = file if file is not None else sys.stderr
    out.write(text)
    out.flush()


# -- dump on a signal ----------------------------------------------------------

# signum -> (previous handler, file)
_on_signal: dict[int, tuple[Any, _TextOut | None]] = {}


def enable_dump_on_signal(signum: int = signal.SIGUSR1, file: _TextOut | None = None) -> None:
    """When signal `signum` (default SIGUSR1) arrives, dump the tasks of every
    live greenhub loop to `file` (default sys.stderr).  Must be called from the
    main thread.  The dump runs as a Python signal handler, in the main
    thread between two bytecodes: at once while the loop waits in its poll (the
    signal ends the poll), and while sync code blocks the loop as soon as that
    code runs Python again or a system call it is in is interrupted (a
    ``time.sleep`` is) - showing the blocking code's stack too - but only after
    a C call that holds the GIL returns."""
    if not isinstance(signum, int):
        raise TypeError(f"signal number must be an int, not {signum!r}")
    if file is not None and not hasattr(file, "write"):
        raise TypeError(f"file must have a write() method, not {file!r}")

    def handler(sig: int, frame: FrameType | None) -> None:
        # A diagnostic must never raise into the code the signal interrupted
        # (e.g. a reentrant write to the same stream): report and go on.
        try:
            dump_tasks(file if file is not None else sys.stderr, _frame=frame)
        except Exception as exc:  # noqa: BLE001
            try:
                os.write(2, f"greenhub: task dump on signal {sig} failed: {exc!r}\n".encode())
            except OSError:
                pass

    previous = signal.signal(signum, handler)
    if signum in _on_signal:
        previous = _on_signal[signum][0]  # re-enabled: keep the original
    _on_signal[signum] = (previous, file)


def disable_dump_on_signal(signum: int = signal.SIGUSR1) -> bool:
    """Undo enable_dump_on_signal(signum): restore the handler it replaced.
    Returns False if the dump was not enabled for `signum`."""
    entry = _on_signal.get(signum)
    if entry is None:
        return False
    signal.signal(signum, entry[0] if entry[0] is not None else signal.SIG_DFL)
    del _on_signal[signum]
    return True
