"""greenhub.defer_cancellation(): synchronous code that a cancellation must not cut short.

Inside a block, a cancellation of the virtual thread's task does not interrupt its waits
(greenhub's blocking calls, green sockets, greenhub.await_()); it is delivered when the
outermost block ends, exactly as a cancel() of a running task is on any loop: at the
next wait, the next `await`, or by the task ending cancelled.  The parity test checks
that last claim against native tasks on both loops.  Cancellations are made at precise
points (the task is parked on a known wait; events, not sleeps, say when).
"""

import asyncio
import socket
import sys
import threading

import pytest
from vthread_helpers import gloop_fixture  # noqa: F401 - fixture

import greenhub
from greenhub import _core
from greenhub._task import green_coro


def run(loop, coro):
    return loop.run_until_complete(coro)


async def parked(task):
    """Until `task` is suspended in sync code (its greenlet parked in a wait)."""
    while not green_coro(task).parked:
        await asyncio.sleep(0)


def test_cancel_waits_for_the_block_then_lands_at_the_next_wait(gloop):
    log = []
    ev = greenhub.Event()

    def body():
        with greenhub.defer_cancellation():
            log.append(("woken", ev.wait()))
            greenhub.sleep(0.001)  # a second wait inside the block: not interrupted either
            log.append("block done")
        log.append("after the block")
        try:
            greenhub.sleep(3600)
        except asyncio.CancelledError as exc:
            log.append(("cancelled", exc.args, asyncio.current_task().cancelling()))
            raise

    async def main():
        t = greenhub.spawn(body)
        await parked(t)
        assert t.cancel("the reason") is True
        for _ in range(5):
            await asyncio.sleep(0)
        assert not t.done() and log == []  # still waiting for the event
        ev.set()
        with pytest.raises(asyncio.CancelledError) as info:
            await t
        return info.value.args, t.cancelled()

    assert run(gloop, main()) == (("the reason",), True)
    assert log == [
        ("woken", True),
        "block done",
        "after the block",
        ("cancelled", ("the reason",), 1),
    ]


def _running_cancel_native(log):
    """What the deferred cancel must look like: a task cancelled while it runs."""

    async def body():
        asyncio.current_task().cancel("r")
        log.append("runs on")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError as exc:
            log.append(("cancelled", exc.args, asyncio.current_task().cancelling()))
            raise

    return body()


def _running_cancel_deferred(log):
    def body():
        with greenhub.defer_cancellation():
            asyncio.current_task().cancel("r")
            greenhub.sleep(0.001)
        log.append("runs on")
        try:
            greenhub.sleep(3600)
        except asyncio.CancelledError as exc:
            log.append(("cancelled", exc.args, asyncio.current_task().cancelling()))
            raise

    return _as_coro(body)


async def _as_coro(fn):
    return fn()  # sync code in the task itself: a virtual thread on greenhub


def _outcome(loop, make):
    log = []

    async def main():
        t = loop.create_task(make(log))
        try:
            await t
        except asyncio.CancelledError:
            log.append(("task", t.cancelled(), t.cancelling()))
        return log

    return run(loop, main())


def test_delivery_is_that_of_a_cancel_while_running(loop):
    """The deferred cancel behaves as cancel() of a running task: same exception,
    message, cancelling() count and outcome as a native task on this loop."""
    reference = _outcome(loop, _running_cancel_native)
    assert reference == ["runs on", ("cancelled", ("r",), 1), ("task", True, 1)]
    if isinstance(loop, greenhub.Loop):
        assert _outcome(loop, _running_cancel_deferred) == reference


def test_task_ends_cancelled_without_another_wait(gloop):
    ev = greenhub.Event()
    log = []

    def body():
        with greenhub.defer_cancellation():
            ev.wait()
        log.append("returns")
        return "returned"  # no wait after the block: the task must still end cancelled

    async def main():
        t = greenhub.spawn(body)
        await parked(t)
        t.cancel()
        ev.set()
        with pytest.raises(asyncio.CancelledError):
            await t
        return t.cancelled()

    assert run(gloop, main()) is True
    assert log == ["returns"]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
def test_asyncio_timeout_still_raises_timeout_error(gloop):
    """asyncio.timeout() expiring during a block: TimeoutError after the block (its
    cancel is recognised as its own: the count of cancel requests is unchanged)."""
    ev = greenhub.Event()
    log = []

    def sync():
        with greenhub.defer_cancellation():
            log.append(ev.wait())
        greenhub.sleep(3600)

    async def main():
        loop = asyncio.get_running_loop()
        # The timeout expires while the block waits; the event is set only after it
        # has (a callback scheduled by the expiry's own cancel).
        loop.call_later(0.01, lambda: loop.call_soon(ev.set))
        try:
            async with asyncio.timeout(0.01):  # noqa: ASYNC100 - sync code waits
                sync()
        except TimeoutError:
            log.append(("timeout", asyncio.current_task().cancelling()))
        return log

    assert run(gloop, gloop.create_task(main())) == [True, ("timeout", 0)]


async def _in_timeout(ev):
    async with asyncio.timeout(0.001):
        await ev.wait()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout is 3.11+")
@pytest.mark.parametrize("timeout", ["greenhub", "asyncio"])
@pytest.mark.parametrize("cancel", ["none", "stale", "also", "with"])
def test_timeout_inside_a_block_that_expired_and_ended_cancels_nothing(gloop, timeout, cancel):
    """A timeout inside a block (the docs' advice: bound a block's waits) is deferred
    like any cancellation; once its own block has ended it has withdrawn its request
    (uncancel()), so leaving the outer block must not cancel the task.  It used to:
    the next wait raised CancelledError though nobody cancelled the task.  "stale": a
    cancellation swallowed before (the count stays 1) changes nothing; "also": a real
    cancel() during the block is still delivered after it; "with": so is one made as
    the timeout expired, before the task took the one CancelledError that stands for
    both requests."""
    log = []

    def body(ev):
        if cancel == "stale":
            try:
                greenhub.sleep(3600)
            except asyncio.CancelledError:
                log.append("swallowed")
        with greenhub.defer_cancellation():
            if timeout == "greenhub":
                with greenhub.timeout(0.001):
                    ev.wait()
            else:
                greenhub.await_(_in_timeout(ev))
        log.append("block ended")
        try:
            greenhub.sleep(0)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        return "went on"

    async def main():
        ev = asyncio.Event() if timeout == "asyncio" else greenhub.Event()
        t = greenhub.spawn(body, ev)
        if cancel == "stale":
            await parked(t)
            t.cancel()
            while not log:
                await asyncio.sleep(0)
        base = t.cancelling()
        while t.cancelling() == base:  # the timeout expired: it cancelled the task
            await asyncio.sleep(0)
        if cancel == "with":  # before the task steps again (its wakeup is queued after us)
            t.cancel()
        for _ in range(3):  # the task takes the CancelledError into the block
            await asyncio.sleep(0)
        if cancel == "also":
            t.cancel()
            await asyncio.sleep(0)
        ev.set()
        try:
            log.append(await t)
        except asyncio.CancelledError:
            log.append("task cancelled")
        return log

    expected = ["block ended", "went on"]
    if cancel == "stale":
        expected.insert(0, "swallowed")
    if cancel in ("also", "with"):
        expected = ["block ended", "cancelled", "task cancelled"]
    assert run(gloop, main()) == expected


def test_nested_blocks_deliver_after_the_outermost(gloop):
    log = []
    ev = greenhub.Event()

    def body():
        with greenhub.defer_cancellation():
            with greenhub.defer_cancellation():
                ev.wait()
            log.append("inner block ended")
            greenhub.sleep(0.001)  # still inside the outer block
            log.append("outer block ends")
        greenhub.sleep(3600)

    async def main():
        t = greenhub.spawn(body)
        await parked(t)
        t.cancel()
        ev.set()
        with pytest.raises(asyncio.CancelledError):
            await t

    run(gloop, main())
    assert log == ["inner block ended", "outer block ends"]


def test_two_cancels_one_cancelled_error(gloop):
    ev = greenhub.Event()

    def body():
        with greenhub.defer_cancellation():
            ev.wait()
        try:
            greenhub.sleep(3600)
        except asyncio.CancelledError:
            return asyncio.current_task().cancelling()

    async def main():
        t = greenhub.spawn(body)
        await parked(t)
        t.cancel()
        await asyncio.sleep(0)
        t.cancel()  # again, while the block still waits
        ev.set()
        return await t

    assert run(gloop, main()) == 2  # as two cancel() calls of a native task


@pytest.mark.parametrize("what", ["Lock", "Semaphore", "Queue", "Condition"])
def test_primitive_acquired_in_a_block_is_not_lost(gloop, what):
    """Cancelled while waiting for a greenhub primitive inside a block: the wait
    completes (the lock, the slot, the item is the task's) and the code after it - here
    the release - runs before the cancellation is delivered."""
    lock, sem, q, cond = (
        greenhub.Lock(),
        greenhub.Semaphore(1),
        greenhub.Queue(),
        greenhub.Condition(),
    )
    got = []

    def body():
        with greenhub.defer_cancellation():
            if what == "Lock":
                with lock:
                    got.append("lock")
            elif what == "Semaphore":
                with sem:
                    got.append("slot")
            elif what == "Queue":
                got.append(q.get())
            else:
                with cond:
                    got.append(cond.wait())
        greenhub.sleep(3600)

    def make_it_available():
        if what == "Lock":
            lock.release()
        elif what == "Semaphore":
            sem.release()
        elif what == "Queue":
            q.put("item")
        else:
            with cond:
                cond.notify()

    async def main():
        lock.acquire()
        sem.acquire()
        t = greenhub.spawn(body)
        await parked(t)
        t.cancel()
        await asyncio.sleep(0)
        make_it_available()
        with pytest.raises(asyncio.CancelledError):
            await t

    run(gloop, main())
    expected = {"Lock": "lock", "Semaphore": "slot", "Queue": "item", "Condition": True}
    assert got == [expected[what]]
    assert not lock.locked() if what == "Lock" else sem._value == (1 if what == "Semaphore" else 0)
    assert q.qsize() == 0 and not cond._lock.locked()


def test_socket_wait_in_a_block(gloop):
    """A fd wait (what psycopg's queries and green sockets use) in a block: it ends
    with the readiness, and leaves no watcher behind."""
    a, b = socket.socketpair()
    a.setblocking(False)

    def body():
        with greenhub.defer_cancellation():
            ready = _core._wait_fd(a.fileno(), 1, None)
            data = a.recv(10)
        try:
            greenhub.sleep(3600)
        except asyncio.CancelledError:
            return ready, data

    async def main():
        t = greenhub.spawn(body)
        await parked(t)
        t.cancel()
        await asyncio.sleep(0)
        b.send(b"hi")
        return await t

    try:
        assert run(gloop, main()) == (1, b"hi")
    finally:
        a.close()
        b.close()


def test_bare_yield_and_await_in_a_block(gloop):
    """greenhub.await_() of a coroutine that yields bare (asyncio.sleep(0)) and of a
    future, inside a block: both complete."""

    def body():
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, fut.set_result, "later")
        with greenhub.defer_cancellation():
            asyncio.current_task().cancel()
            greenhub.await_(asyncio.sleep(0))
            value = greenhub.await_(fut)
        try:
            greenhub.sleep(3600)
        except asyncio.CancelledError:
            return value

    async def main():
        return await greenhub.spawn(body)

    assert run(gloop, main()) == "later"


def test_wakeup_and_cancel_in_the_same_iteration(gloop):
    """The lock is released and the task cancelled before it runs again: inside a
    block the task has the lock, as it would without the cancel."""
    lock = greenhub.Lock()
    got = []

    def body():
        with greenhub.defer_cancellation():
            got.append(lock.acquire())
        lock.release()
        greenhub.sleep(3600)

    async def main():
        lock.acquire()
        t = greenhub.spawn(body)
        await parked(t)
        lock.release()  # wakes the waiter ...
        t.cancel()  # ... and cancels it before it has run
        with pytest.raises(asyncio.CancelledError):
            await t

    run(gloop, main())
    assert got == [True] and not lock.locked()


def test_exception_of_the_wait_itself_is_delivered(gloop):
    def body():
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(fut.set_exception, KeyError("k"))
        with greenhub.defer_cancellation():
            asyncio.current_task().cancel()
            try:
                greenhub.await_(fut)
            except KeyError as exc:
                caught = exc.args
        try:
            greenhub.sleep(3600)
        except asyncio.CancelledError:
            return caught

    async def main():
        return await greenhub.spawn(body)

    assert run(gloop, main()) == ("k",)


def test_await_in_a_block_is_refused(gloop):
    async def body():
        with greenhub.defer_cancellation():
            await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="asyncio.shield"):
        run(gloop, body())
    with pytest.raises(TypeError, match="asyncio.shield"):
        greenhub.defer_cancellation(body)


def test_outside_virtual_threads_a_block_only_marks_code(gloop):
    results = []

    @greenhub.defer_cancellation
    def f(x):
        return x * 2

    def thread():
        with greenhub.defer_cancellation():
            results.append(f(2))

    t = threading.Thread(target=thread)
    t.start()
    t.join()
    gloop.call_soon(lambda: results.append(f(3)))  # a loop callback
    gloop.run_until_complete(asyncio.sleep(0))
    with greenhub.defer_cancellation():
        results.append(f(4))
    assert results == [4, 6, 8]
    assert repr(greenhub.defer_cancellation()) == "greenhub.defer_cancellation()"


def test_decorated_function_defers(gloop):
    ev = greenhub.Event()

    @greenhub.defer_cancellation
    def critical():
        return ev.wait()

    def body():
        woken = critical()
        try:
            greenhub.sleep(3600)
        except asyncio.CancelledError:
            return woken

    async def main():
        t = greenhub.spawn(body)
        await parked(t)
        t.cancel()
        ev.set()
        return await t

    assert run(gloop, main()) is True


def test_loop_close_unwinds_a_block_that_never_ends(gloop):
    """A wait in a block that never completes does not keep the loop from closing:
    close() cancels (deferred), then unwinds the task with GeneratorExit."""
    log = []

    def body():
        try:
            with greenhub.defer_cancellation():
                greenhub.Event().wait()
        finally:
            log.append("unwound")

    async def main():
        t = greenhub.spawn(body)
        await parked(t)

    run(gloop, main())
    gloop.close()
    assert log == ["unwound"]


def test_block_exited_twice_is_an_error(gloop):
    async def main():
        def body():
            token = _core._defer_enter()
            _core._defer_exit(token)
            with pytest.raises(RuntimeError, match="exited twice"):
                _core._defer_exit(token)
            with pytest.raises(TypeError):
                _core._defer_exit(object())

        await greenhub.spawn(body)

    run(gloop, main())
