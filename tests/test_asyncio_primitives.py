"""asyncio's own building blocks running on the loop: they exercise call_soon, call_at,
timer cancellation and futures the way real programs do."""

import asyncio
import contextvars
import threading

import pytest


def test_wait_for_times_out_not_early(loop):
    async def main():
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(3600), 0.01)
        return loop.time() - t0

    assert loop.run_until_complete(main()) >= 0.01


def test_wait_for_completes_before_timeout(loop):
    async def main():
        return await asyncio.wait_for(asyncio.sleep(0, "ok"), 3600)

    assert loop.run_until_complete(main()) == "ok"


def test_asyncio_timeout_context_manager(loop):
    async def main():
        t0 = loop.time()
        try:
            async with asyncio.timeout(0.01) as cm:
                await asyncio.sleep(3600)
        except TimeoutError:
            pass
        assert cm.expired()
        elapsed = loop.time() - t0
        async with asyncio.timeout(None) as cm2:
            cm2.reschedule(loop.time() + 3600)
            await asyncio.sleep(0)
        assert not cm2.expired()
        return elapsed

    assert loop.run_until_complete(main()) >= 0.01


def test_queue_producer_consumer(loop):
    async def main():
        q = asyncio.Queue(maxsize=3)
        got = []

        async def producer():
            for i in range(50):
                await q.put(i)
            await q.put(None)

        async def consumer():
            while (item := await q.get()) is not None:
                got.append(item)

        await asyncio.gather(producer(), consumer())
        return got

    assert loop.run_until_complete(main()) == list(range(50))


def test_event_lock_semaphore(loop):
    async def main():
        ev = asyncio.Event()
        lock = asyncio.Lock()
        sem = asyncio.Semaphore(2)
        order = []
        inside = 0
        max_inside = 0

        async def worker(i):
            nonlocal inside, max_inside
            await ev.wait()
            async with sem:
                inside += 1
                max_inside = max(max_inside, inside)
                await asyncio.sleep(0)
                inside -= 1
            async with lock:
                order.append(i)

        tasks = [asyncio.ensure_future(worker(i)) for i in range(6)]
        await asyncio.sleep(0)
        assert order == []
        ev.set()
        await asyncio.gather(*tasks)
        return order, max_inside

    order, max_inside = loop.run_until_complete(main())
    assert sorted(order) == list(range(6))
    assert max_inside == 2


def test_task_group_cancels_siblings_on_error(loop):
    async def main():
        cancelled = []

        async def fails():
            await asyncio.sleep(0)
            raise ValueError("tg")

        async def sleeper():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        with pytest.raises(ExceptionGroup) as ei:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(sleeper())
                tg.create_task(fails())
        return cancelled, ei.value.exceptions

    cancelled, excs = loop.run_until_complete(main())
    assert cancelled == [True]
    assert [type(e) for e in excs] == [ValueError]


def test_shield_and_cancel(loop):
    async def main():
        inner = asyncio.ensure_future(asyncio.sleep(0.005, "inner-result"))
        outer = asyncio.ensure_future(asyncio.shield(inner))
        await asyncio.sleep(0)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        return await inner

    assert loop.run_until_complete(main()) == "inner-result"


def test_to_thread_copies_context(loop):
    var = contextvars.ContextVar("to_thread_var", default="unset")

    def in_thread():
        return threading.current_thread() is not threading.main_thread(), var.get()

    async def main():
        var.set("from-task")
        return await asyncio.to_thread(in_thread)

    assert loop.run_until_complete(main()) == (True, "from-task")


def test_gather_return_exceptions(loop):
    async def ok():
        await asyncio.sleep(0)
        return 1

    async def bad():
        await asyncio.sleep(0)
        raise KeyError("k")

    async def main():
        return await asyncio.gather(ok(), bad(), return_exceptions=True)

    res = loop.run_until_complete(main())
    assert res[0] == 1 and isinstance(res[1], KeyError)


def test_as_completed_orders_by_completion(loop):
    async def delayed(x, d):
        await asyncio.sleep(d)
        return x

    async def main():
        aws = [delayed("slow", 0.02), delayed("fast", 0.001), delayed("mid", 0.01)]
        return [await f for f in asyncio.as_completed(aws)]

    assert loop.run_until_complete(main()) == ["fast", "mid", "slow"]


def test_wrap_future_from_thread_pool(loop):
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        cf = ex.submit(sum, [1, 2, 3])
        fut = asyncio.wrap_future(cf, loop=loop)
        assert loop.run_until_complete(fut) == 6


def test_run_coroutine_threadsafe(loop):
    results = []

    async def add(a, b):
        await asyncio.sleep(0)
        return a + b

    def other_thread():
        results.append(asyncio.run_coroutine_threadsafe(add(2, 3), loop).result(5))
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=other_thread)
    loop.call_soon(t.start)
    loop.call_later(10, loop.stop)  # safety net
    loop.run_forever()
    t.join(5)
    assert results == [5]
