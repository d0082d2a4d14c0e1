"""greenhub's public API as a type-checked program uses it.

`make typecheck` runs ``mypy --strict`` over this file: each ``assert_type()`` states
the type a checker must infer (a wrong annotation in greenhub fails the check), and
tests/test_typed_usage.py runs it, so the example cannot rot.  It prints
"typed usage: ok" when every part ran.
"""

import asyncio
import io
import queue
from typing import assert_type

import greenhub
import greenhub.monkey
import greenhub.socket
from greenhub.contrib import sqlalchemy as gh_sqlalchemy


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


def label(n: int, suffix: str = "!") -> str:
    return f"{n}{suffix}"


def in_virtual_thread(n: int) -> int:
    """Sync code in a greenhub task: every wait suspends only this task."""
    value = greenhub.await_(double(n))
    assert_type(value, int)
    greenhub.sleep(0)
    assert_type(greenhub.to_thread(label, value, suffix="?"), str)
    assert_type(greenhub.async_to_sync(double)(value), int)
    with greenhub.defer_cancellation():
        greenhub.await_(asyncio.sleep(0))
    with greenhub.no_switch("no waits in here"):
        value += 1
    assert_type(greenhub.spawn(label, 1), asyncio.Task[str])
    return value


@greenhub.defer_cancellation
def deferred(n: int) -> str:
    return label(n)


@greenhub.no_switch
def critical(n: int) -> int:
    return n + 1


def primitives() -> None:
    q: greenhub.Queue[int] = greenhub.Queue(maxsize=2)
    q.put(1)
    q.put_nowait(2)
    assert_type(q.get(), int)
    assert q.get(timeout=1.0) == 2
    try:
        q.get_nowait()
    except queue.Empty:
        pass
    pq: greenhub.PriorityQueue[tuple[int, str]] = greenhub.PriorityQueue()
    pq.put((2, "b"))
    pq.put((1, "a"))
    assert_type(pq.get(), tuple[int, str])
    lifo: greenhub.LifoQueue[str] = greenhub.LifoQueue()
    lifo.put("x")
    assert_type(lifo.get(), str)

    lock = greenhub.Lock()
    with lock:
        assert lock.locked()
    assert_type(lock.acquire(timeout=0.5), bool)
    lock.release()
    rlock = greenhub.RLock()
    with rlock, rlock:
        pass
    cond = greenhub.Condition(greenhub.Lock())
    with cond:
        assert_type(cond.wait_for(lambda: 42, timeout=0), int)
        cond.notify_all()
    event = greenhub.Event()
    event.set()
    assert_type(event.wait(0.1), bool)
    sem = greenhub.BoundedSemaphore(2)
    with sem:
        assert_type(sem.acquire(blocking=False), bool)
        sem.release()


async def async_side() -> None:
    q: greenhub.Queue[str] = greenhub.Queue()
    await q.async_put("hello")
    assert_type(await q.async_get(), str)
    lock = greenhub.Lock()
    async with lock:
        pass
    cond = greenhub.Condition()
    async with cond:
        assert_type(await cond.async_wait(0), bool)
    assert_type(await greenhub.sync_to_async(label)(3, suffix="."), str)
    to_async = greenhub.sync_to_async(thread_sensitive=False)
    assert_type(await to_async(label)(4), str)


async def main() -> int:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, greenhub.Loop)
    handle = loop.call_soon(label, 1)
    assert isinstance(handle, asyncio.Handle)
    handle.cancel()
    task = greenhub.spawn(in_virtual_thread, 20)
    assert_type(task, asyncio.Task[int])
    value = await task
    await async_side()
    assert_type(greenhub.vthread.spawn(critical, 1), asyncio.Task[int])
    assert_type(await greenhub.spawn(gh_sqlalchemy.run, deferred, 5), str)

    out = io.StringIO()
    greenhub.dump_tasks(out)
    stacks = greenhub.task_stacks()
    assert_type(stacks[0].name, str)
    assert out.getvalue().startswith("greenhub:")
    assert_type(greenhub.get_include(), str)  # where greenhub.h is, for C extensions
    return value


def sockets() -> bytes:
    a, b = greenhub.socket.socketpair()
    with a, b:
        assert_type(a, greenhub.socket.socket)
        a.settimeout(5.0)
        a.sendall(b"ping")
        return b.recv(4)


def sync_main(n: int) -> str:
    """greenhub.run(fn, *args): the program's main virtual thread."""
    assert_type(greenhub.await_(double(n)), int)
    return label(n)


if __name__ == "__main__":
    assert_type(greenhub.run(main()), int)
    assert greenhub.run(main()) == 41
    assert_type(greenhub.run(sync_main, 7), str)
    assert greenhub.run(sync_main, 7, debug=False) == "7!"
    primitives()
    assert sockets() == b"ping"
    assert not greenhub.monkey.is_patched("time")
    assert_type(greenhub.monkey.patched(), dict[str, list[str]])
    assert_type(greenhub.get_switch_log(), bool)
    print("typed usage: ok")
