"""Cancellation and timeouts of virtual threads.

A task suspended in greenhub.await_() is cancelled exactly as one suspended at `await`:
CancelledError is raised by the await_ call, the sync frames' except/finally blocks run,
and asyncio.timeout / wait_for / TaskGroup / cancel() / uncancel() / cancelling() give the
same results as for a native coroutine.  The parity tests run the native version on both
loops (``loop`` fixture) and the virtual-thread version on greenhub, and compare.
"""

import asyncio
import sys

import pytest
from vthread_helpers import gloop_fixture, sync_task  # noqa: F401 - fixture

import greenhub
from greenhub._task import green_coro


def run(loop, coro):
    return loop.run_until_complete(coro)


def test_cancel_raises_cancelled_error_at_await_(gloop):
    log = []

    def body():
        try:
            greenhub.await_(asyncio.sleep(3600))
        except asyncio.CancelledError as exc:
            log.append(("except", exc.args, asyncio.current_task().cancelling()))
            raise
        finally:
            log.append("finally")

    async def main():
        t = greenhub.spawn(body)
        await asyncio.sleep(0.001)
        assert green_coro(t).parked
        t.cancel("the reason")
        with pytest.raises(asyncio.CancelledError) as info:
            await t
        assert t.cancelled()
        return info.value.args

    assert run(gloop, main()) == ("the reason",)
    assert log == [("except", ("the reason",), 1), "finally"]


def test_cancel_before_first_step_never_runs_the_function(gloop):
    ran = []

    async def main():
        t = greenhub.spawn(ran.append, 1)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    run(gloop, main())
    assert ran == []


def test_cancelled_error_can_be_caught_in_sync_code_and_work_continues(gloop):
    def body():
        try:
            greenhub.await_(asyncio.sleep(3600))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task.cancelling() == 1
            assert task.uncancel() == 0
        # still a working virtual thread
        return greenhub.await_(asyncio.sleep(0.001, "recovered"))

    async def main():
        t = greenhub.spawn(body)
        await asyncio.sleep(0.001)
        t.cancel()
        return await t

    assert run(gloop, main()) == "recovered"


def test_cancel_while_awaiting_a_task_via_await_cancels_the_awaited_chain(gloop):
    log = []

    async def inner():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append("inner cancelled")
            raise

    def sync():
        try:
            greenhub.await_(inner())
        except asyncio.CancelledError:
            log.append("sync cancelled")
            raise

    async def main():
        t = greenhub.spawn(sync)
        await asyncio.sleep(0.001)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    run(gloop, main())
    assert log == ["inner cancelled", "sync cancelled"]


# --- timeouts ---------------------------------------------------------------------------


def test_asyncio_timeout_around_sync_code(gloop):
    log = []

    def sync():
        try:
            greenhub.await_(asyncio.sleep(3600))
        finally:
            log.append("sync finally")

    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):  # noqa: ASYNC100 - sync code waits
                sync()
        return asyncio.current_task().cancelling()

    assert run(gloop, main()) == 0
    assert log == ["sync finally"]


def test_asyncio_timeout_inside_awaited_coroutine(gloop):
    async def with_timeout(delay):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(delay)
            return "in time"

    def sync():
        out = []
        for delay in (3600, 0, 3600):
            try:
                out.append(greenhub.await_(with_timeout(delay)))
            except TimeoutError:
                out.append(("timeout", asyncio.current_task().cancelling()))
        return out

    assert run(gloop, sync_task(sync)) == [("timeout", 0), "in time", ("timeout", 0)]


def test_wait_for_through_await_(gloop):
    def sync():
        with pytest.raises(TimeoutError):
            greenhub.await_(asyncio.wait_for(asyncio.sleep(3600), 0.01))
        assert greenhub.await_(asyncio.wait_for(asyncio.sleep(0, "ok"), 1)) == "ok"
        return asyncio.current_task().cancelling()

    assert run(gloop, sync_task(sync)) == 0


def test_wait_for_a_virtual_thread(gloop):
    log = []

    def slow():
        try:
            greenhub.await_(asyncio.sleep(3600))
        finally:
            log.append("slow finally")

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(greenhub.spawn(slow), 0.01)

    run(gloop, main())
    assert log == ["slow finally"]


def test_nested_timeouts_in_sync_and_async_layers(gloop):
    # outer timeout (async) > sync > await_(inner timeout) : the inner one fires first and
    # is handled in sync code; then the outer one fires while sync code waits again.
    def sync():
        async def inner():
            async with asyncio.timeout(0.005):
                await asyncio.sleep(3600)

        try:
            greenhub.await_(inner())
        except TimeoutError:
            pass
        greenhub.await_(asyncio.sleep(3600))

    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):  # noqa: ASYNC100 - sync code waits
                sync()
        return asyncio.current_task().cancelling()

    assert run(gloop, main()) == 0


# --- TaskGroup --------------------------------------------------------------------------


def test_taskgroup_with_sync_children(gloop):
    def child(i):
        greenhub.await_(asyncio.sleep(0.001 * (i % 3)))
        return i * 10

    async def main():
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(sync_task(child, i)) for i in range(20)]
        return [t.result() for t in tasks]

    assert run(gloop, main()) == [i * 10 for i in range(20)]


def test_taskgroup_failing_sync_child_cancels_sync_siblings(gloop):
    log = []

    def failing():
        greenhub.await_(asyncio.sleep(0.005))
        raise ValueError("child failed")

    def slow(i):
        try:
            greenhub.await_(asyncio.sleep(3600))
        except asyncio.CancelledError:
            log.append(i)
            raise

    async def main():
        with pytest.raises(ExceptionGroup) as info:
            async with asyncio.TaskGroup() as tg:
                siblings = [tg.create_task(sync_task(slow, i)) for i in range(5)]
                tg.create_task(sync_task(failing))
        assert all(s.cancelled() for s in siblings)
        return info.value

    eg = run(gloop, main())
    assert [type(e) for e in eg.exceptions] == [ValueError]
    assert sorted(log) == list(range(5))


def test_taskgroup_inside_sync_code_via_await_(gloop):
    async def group():
        async with asyncio.TaskGroup() as tg:
            ts = [
                tg.create_task(sync_task(lambda i=i: greenhub.await_(asyncio.sleep(0, i))))
                for i in range(5)
            ]
        return [t.result() for t in ts]

    def sync():
        return greenhub.await_(group())

    assert run(gloop, sync_task(sync)) == list(range(5))


# --- parity of cancel/uncancel/cancelling with native tasks -------------------------------


def _scenario_native(rec):
    async def body():
        task = asyncio.current_task()
        for round_ in range(3):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError as exc:
                rec.append(("caught", round_, exc.args, task.cancelling()))
                if round_ < 2:
                    rec.append(("uncancel", task.uncancel()))
                else:
                    raise
        return "unreachable"

    return body()


def _scenario_sync(rec):
    def body():
        task = asyncio.current_task()
        for round_ in range(3):
            try:
                greenhub.await_(asyncio.sleep(3600))
            except asyncio.CancelledError as exc:
                rec.append(("caught", round_, exc.args, task.cancelling()))
                if round_ < 2:
                    rec.append(("uncancel", task.uncancel()))
                else:
                    raise
        return "unreachable"

    return sync_task(body)


async def _drive(loop, coro, rec):
    t = loop.create_task(coro)
    await asyncio.sleep(0.001)
    rec.append(("cancel", t.cancel("r0"), t.cancelling()))
    await asyncio.sleep(0.001)
    rec.append(("cancel", t.cancel("r1a"), t.cancelling()))
    rec.append(("cancel", t.cancel("r1b"), t.cancelling()))  # twice before it runs
    await asyncio.sleep(0.001)
    rec.append(("cancel", t.cancel("r2"), t.cancelling()))
    try:
        await t
    except asyncio.CancelledError as exc:
        rec.append(("result", "cancelled", exc.args, t.cancelled(), t.cancelling()))
    rec.append(("cancel after done", t.cancel()))
    return rec


def test_cancel_uncancel_cancelling_same_as_native_tasks(loop):
    native = run(loop, _drive(loop, _scenario_native([]), []))
    if not isinstance(loop, greenhub.Loop):
        # on the stock loop only the reference exists; check it is what we think it is
        assert native[0] == ("cancel", True, 1)
        return
    ref_loop = asyncio.new_event_loop()
    try:
        rec = []
        reference = ref_loop.run_until_complete(_drive(ref_loop, _scenario_native(rec), rec))
    finally:
        ref_loop.close()
    rec = []
    vthread = run(loop, _drive(loop, _scenario_sync(rec), rec))
    rec = []
    green_native = run(loop, _drive(loop, _scenario_native(rec), rec))
    assert green_native == reference
    assert vthread == reference


def test_cancel_parked_vthread_that_was_cancel_requested_twice(gloop):
    # Two cancel() calls before the task runs: one CancelledError, cancelling() == 2.
    def body():
        try:
            greenhub.await_(asyncio.sleep(3600))
        except asyncio.CancelledError:
            return asyncio.current_task().cancelling()

    async def main():
        t = greenhub.spawn(body)
        await asyncio.sleep(0.001)
        t.cancel()
        t.cancel()
        return await t

    assert run(gloop, main()) == 2


@pytest.mark.skipif(sys.version_info < (3, 11), reason="3.11+")
def test_timeout_reschedule_from_sync_code(gloop):
    # Margins wide enough for a loaded machine: the deadline is moved long before it
    # passes, and the second wait outlasts the original deadline.
    def sync(cm):
        greenhub.await_(asyncio.sleep(0))
        cm.reschedule(asyncio.get_running_loop().time() + 3600)  # extend from sync code
        greenhub.await_(asyncio.sleep(0.4))
        return "not timed out"

    async def main():
        async with asyncio.timeout(0.2) as cm:  # noqa: ASYNC100 - sync code waits
            return sync(cm)

    assert run(gloop, main()) == "not timed out"
