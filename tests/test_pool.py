"""greenhub.Pool and greenhub.Group: gevent.pool's API for virtual threads.

A pool's calls are virtual threads, which exist only on greenhub; what users expect of
``map`` (order, the first exception in order) is checked against
``concurrent.futures.ThreadPoolExecutor.map`` on the same functions.  Concurrency is
shown by counting callers inside a wait at once (support.Overlap), never by timing; the
order in which calls finish is set with events, not sleeps.
"""

import asyncio
import concurrent.futures
import threading

import pytest
from support import Overlap
from vthread_helpers import gloop_fixture, in_thread

import greenhub
from greenhub import Group, Pool

gloop = gloop_fixture


def in_vthread(gloop, fn, *args):
    async def main():
        return await greenhub.spawn(fn, *args)

    return gloop.run_until_complete(main())


# Calls that finish in the reverse order of their arguments, without a clock: call i
# waits until call i+1 has finished (the last one does not wait).
class Reversed:
    def __init__(self, n, blocking):
        self.n = n
        self.blocking = blocking  # greenhub.Event waits (vthreads) or threading.Event
        self.done = [(greenhub.Event() if blocking == "green" else threading.Event()) for _ in range(n + 1)]
        self.done[n].set()
        self.finished = []

    def __call__(self, i, fail_at=()):
        self.done[i + 1].wait()
        self.finished.append(i)
        self.done[i].set()
        if i in fail_at:
            raise ValueError(i)
        return i * 10


def test_map_results_in_order_as_concurrent_futures(gloop):
    expected = list(concurrent.futures.ThreadPoolExecutor(8).map(Reversed(8, "os"), range(8)))
    call = Reversed(8, "green")
    assert in_vthread(gloop, lambda: Pool(8).map(call, range(8))) == expected == [i * 10 for i in range(8)]
    assert call.finished == list(range(7, -1, -1))  # finished last-first: order is map's


def test_map_raises_first_exception_in_order(gloop):
    # 2 and 5 fail; 5 fails first in time, 2 is first in order: both executors raise 2.
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        with pytest.raises(ValueError) as stock:
            list(ex.map(Reversed(8, "os"), range(8), [(2, 5)] * 8))
    call = Reversed(8, "green")
    with pytest.raises(ValueError) as green:
        in_vthread(gloop, lambda: Pool(8).map(call, range(8), [(2, 5)] * 8))
    assert green.value.args == stock.value.args == (2,)


def test_map_error_cancels_and_waits_for_the_rest(gloop):
    cancelled = []

    def work(i):
        if i == 0:
            greenhub.sleep(0)
            raise KeyError(i)
        try:
            greenhub.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    def main():
        pool = Pool(3)
        with pytest.raises(KeyError):
            pool.map(work, range(6))
        return len(pool)

    assert in_vthread(gloop, main) == 0
    assert sorted(cancelled) == [1, 2]  # running when 0 failed; 3..5 never started


def test_pool_limits_concurrency_group_does_not(gloop):
    inside = {"pool": Overlap(), "group": Overlap()}

    def work(kind, i):
        with inside[kind]:
            greenhub.sleep(0.001)
        return i

    def main():
        assert Pool(3).map(work, ["pool"] * 12, range(12)) == list(range(12))
        assert Group().map(work, ["group"] * 12, range(12)) == list(range(12))

    in_vthread(gloop, main)
    assert inside["pool"].peak == 3
    assert inside["group"].peak == 12


def test_spawn_on_a_full_pool_suspends_only_the_caller(gloop):
    log = []
    release = greenhub.Event()

    def holder():
        release.wait()
        log.append("holder done")

    def spawner(pool):
        pool.spawn(holder)
        log.append("first spawned")
        pool.spawn(lambda: log.append("second ran"))  # waits for the slot
        log.append("second spawned")
        pool.join()

    def other():
        log.append("others run meanwhile")
        release.set()

    def main():
        pool = Pool(1)
        t = greenhub.spawn(spawner, pool)
        greenhub.spawn(other)
        greenhub.await_(t)
        return pool.full(), pool.free_count()

    assert in_vthread(gloop, main) == (False, 1)
    assert log == ["first spawned", "others run meanwhile", "holder done", "second spawned", "second ran"]


def test_waiting_spawners_are_served_in_order_and_a_cancelled_one_passes_its_slot(gloop):
    order = []

    def spawner(pool, name):
        pool.spawn(order.append, name)

    def main():
        pool = Pool(1)
        gate = greenhub.Event()
        pool.spawn(gate.wait)
        waiters = [greenhub.spawn(spawner, pool, n) for n in "abc"]
        greenhub.sleep(0)
        waiters[0].cancel()  # cancelled while waiting: its turn passes on
        greenhub.sleep(0)
        gate.set()
        greenhub.await_(asyncio.gather(*waiters, return_exceptions=True))
        pool.join()
        return pool.free_count()

    assert in_vthread(gloop, main) == 1
    assert order == ["b", "c"]


def in_callback(gloop, fn):
    """fn() run in a loop callback: a thread running the loop outside a virtual thread."""

    async def main():
        fut = gloop.create_future()

        def callback():
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                fut.set_exception(exc)

        gloop.call_soon(callback)
        return await fut

    return gloop.run_until_complete(main())


def test_full_pool_spawn_outside_a_vthread_points_at_async_spawn(gloop):
    pool = Pool(1)
    gate = asyncio.Event()

    async def hold():
        await gate.wait()

    with pytest.raises(RuntimeError, match="async_spawn"):
        in_callback(gloop, lambda: (pool.spawn(hold), pool.spawn(print)))

    async def main():
        waiting = asyncio.ensure_future(pool.async_spawn(lambda: "late"))
        await asyncio.sleep(0)
        assert not waiting.done()
        gate.set()
        task = await waiting
        return await task

    assert gloop.run_until_complete(main()) == "late"


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda pool: pool.map(abs, [1]), "async_map"),
        (lambda pool: pool.join(), "async_join"),
        (lambda pool: pool.kill(), "async_kill"),
        (lambda pool: pool.apply(abs, (1,)), "async_apply"),
        (lambda pool: pool.imap(abs, [1]), "async_imap"),
        (lambda pool: pool.imap_unordered(abs, [1]), "async_imap_unordered"),
    ],
)
def test_blocking_methods_refused_outside_a_vthread(gloop, call, name):
    # A loop callback cannot wait without blocking the loop: a clear error instead.
    with pytest.raises(RuntimeError, match=name):
        in_callback(gloop, lambda: call(Pool(2)))


def test_blocking_methods_in_a_coroutine_on_greenhub_suspend_the_task(gloop):
    # On greenhub every task can wait like a virtual thread (as greenhub.sync's calls do).
    async def main():
        return Pool(2).map(abs, [-1, -2])

    assert gloop.run_until_complete(main()) == [1, 2]


def test_kill_cancels_and_waits(gloop):
    seen = []

    def work():
        try:
            greenhub.Event().wait()
        except asyncio.CancelledError:
            greenhub.sleep(0)  # cleanup that waits: kill() waits for it
            seen.append("cleaned up")
            raise

    def main():
        pool = Pool(5)
        tasks = [pool.spawn(work) for _ in range(3)]
        greenhub.sleep(0)
        pool.kill()
        return [t.cancelled() for t in tasks], len(pool)

    assert in_vthread(gloop, main) == ([True] * 3, 0)
    assert seen == ["cleaned up"] * 3


def test_kill_without_blocking(gloop):
    def main():
        pool = Group()
        task = pool.spawn(greenhub.sleep, 3600)
        greenhub.sleep(0)
        pool.kill(block=False)
        assert not task.done()
        greenhub.await_(asyncio.wait([task]))
        return task.cancelled()

    assert in_vthread(gloop, main) is True


def test_join_waits_and_times_out(gloop):
    def main():
        pool = Pool(2)
        gate = greenhub.Event()
        tasks = [pool.spawn(gate.wait) for _ in range(2)]
        assert pool.join(timeout=0.01) is False
        assert len(pool) == 2 and all(t in pool for t in tasks) and set(pool) == set(tasks)
        gate.set()
        assert pool.join() is True
        return len(pool), Group().join()

    assert in_vthread(gloop, main) == (0, True)


def test_apply(gloop):
    def inner(x):
        return x + 1

    def outer(pool, x):
        return pool.apply(inner, (x,))  # from inside the pool: called directly

    def main():
        pool = Pool(1)  # outer holds the only slot: a spawn for inner would never run
        return pool.apply(outer, (pool, 1)), pool.apply(inner, kwds={"x": 5})

    assert in_vthread(gloop, main) == (2, 6)


def test_apply_exception(gloop):
    def main():
        with pytest.raises(ZeroDivisionError):
            Pool(1).apply(lambda: 1 / 0)
        return True

    assert in_vthread(gloop, main)


def test_imap_is_ordered_and_imap_unordered_is_completion_order(gloop):
    def main():
        call = Reversed(5, "green")
        ordered = list(Pool(5).imap(call, range(5)))
        call = Reversed(5, "green")
        unordered = list(Group().imap_unordered(call, range(5)))
        return ordered, unordered

    assert in_vthread(gloop, main) == ([0, 10, 20, 30, 40], [40, 30, 20, 10, 0])


def test_imap_unordered_raises_in_completion_order(gloop):
    def main():
        call = Reversed(5, "green")
        it = Pool(5).imap_unordered(call, range(5), [(1, 3)] * 5)
        got = [next(it)]  # 4 finishes first
        with pytest.raises(ValueError) as info:
            next(it)
        with pytest.raises(StopIteration):
            next(it)
        return got, info.value.args

    assert in_vthread(gloop, main) == ([40], (3,))


def test_closing_imap_early_cancels_the_rest(gloop):
    started = []

    def work(i):
        started.append(i)
        if i:
            greenhub.Event().wait()
        return i

    def main():
        pool = Pool(3)
        it = pool.imap(work, range(100))
        assert next(it) == 0
        it.close()
        after_close = len(pool)
        greenhub.sleep(0.001)
        return after_close, max(started), list(it)

    # Closed: nothing left running, nothing started later; the feeder never ran more
    # than the pool's size ahead (calls 0..2 at most), and the iterator is exhausted.
    running, furthest, rest = in_vthread(gloop, main)
    assert running == 0 and furthest <= 2 and rest == []


def test_iterable_error_propagates(gloop):
    def items():
        yield 1
        yield 2
        raise OSError("source broke")

    def main():
        with pytest.raises(OSError, match="source broke"):
            Pool(2).map(abs, items())
        return True

    assert in_vthread(gloop, main)


def test_cancelling_the_caller_cancels_its_map(gloop):
    cancelled = []

    def work(i):
        try:
            greenhub.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    async def main():
        pool = Pool(2)
        caller = greenhub.spawn(pool.map, work, range(4))
        for _ in range(3):
            await asyncio.sleep(0)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        return len(pool)

    assert gloop.run_until_complete(main()) == 0
    assert sorted(cancelled) == [0, 1]


def test_timeout_around_map(gloop):
    def main():
        pool = Pool(2)
        with pytest.raises(TimeoutError):
            with greenhub.timeout(0.01):
                pool.map(greenhub.sleep, [3600] * 4)
        return len(pool)

    assert in_vthread(gloop, main) == 0


def test_coroutine_functions(gloop):
    inside = Overlap()

    async def work(i):
        with inside:
            await asyncio.sleep(0.001)
        return -i

    def main():
        return Pool(2).map(work, range(6))

    assert in_vthread(gloop, main) == [0, -1, -2, -3, -4, -5]
    assert inside.peak == 2


def test_async_twins(gloop):
    async def main():
        pool = Pool(2)
        results = [await pool.async_map(abs, [-1, -2, -3])]
        results.append([r async for r in pool.async_imap(abs, [-4, -5])])
        results.append(sorted([r async for r in pool.async_imap_unordered(abs, [-6, -7])]))
        results.append(await pool.async_apply(abs, (-8,)))
        gate = asyncio.Event()
        task = await pool.async_spawn(lambda: greenhub.await_(gate.wait()))
        results.append(await pool.async_join(timeout=0.01))
        gate.set()
        results.append(await pool.async_join())
        task = await pool.async_spawn(greenhub.sleep, 3600)
        await asyncio.sleep(0)
        await pool.async_kill()
        results.append(task.cancelled())
        async with Group() as group:
            late = group.spawn(abs, -9)
        results.append(late.result())
        return results

    assert gloop.run_until_complete(main()) == [[1, 2, 3], [4, 5], [6, 7], 8, False, True, True, 9]


def test_with_block_joins_or_kills(gloop):
    def main():
        with Pool(2) as pool:
            done = pool.spawn(lambda: greenhub.sleep(0.001) or "done")
        assert done.result() == "done"
        with pytest.raises(KeyError):
            with Group() as group:
                stuck = group.spawn(greenhub.sleep, 3600)
                greenhub.sleep(0)
                raise KeyError("body failed")
        return stuck.cancelled()

    assert in_vthread(gloop, main) is True


def test_map_from_a_plain_thread_runs_a_loop():
    # No loop running: the call runs this thread's greenhub loop, as await_() does.
    assert in_thread(lambda: Pool(3).map(lambda x: greenhub.sleep(0.001) or x * x, range(5))) == [0, 1, 4, 9, 16]


def test_bad_arguments(gloop):
    with pytest.raises(ValueError):
        Pool(0)
    with pytest.raises(TypeError):
        Pool(1.5)
    assert Pool().size is None and Pool(4).size == 4 and Pool().free_count() is None

    def main():
        with pytest.raises(TypeError):
            Pool(1).spawn(42)
        with pytest.raises(TypeError):
            Pool(1).map(42, [1])
        return "Pool" in repr(Pool(2)) and "size=2" in repr(Pool(2))

    assert in_vthread(gloop, main)


def test_exports():
    assert {"Pool", "Group"} <= set(greenhub.__all__)
    assert issubclass(Pool, Group)
