"""Task steps on greenlets: which greenlet runs each step, worker pooling, and the
asyncio.Task surface of tasks whose coroutines greenhub wraps.

greenhub keeps CPython's asyncio.Task and wraps each coroutine in a GreenCoro whose
send()/throw() switch to a worker greenlet.  A task that can observe its greenlet (holds
greenlet.getcurrent(), a weak reference, an attribute, a child greenlet's parent link)
must see the same greenlet object in every step; workers are pooled across tasks, so a
long run of short tasks needs only a handful of greenlets.
"""

import asyncio
import contextvars
import sys
import weakref

import greenlet
import pytest
from vthread_helpers import (  # noqa: F401
    PY312,
    assert_counters_back,
    counters,
    gloop_fixture,
    sync_task,
)

import greenhub
from greenhub import _core
from greenhub._task import green_coro

VAR = contextvars.ContextVar("steps_var", default="unset")


def run(loop, coro):
    return loop.run_until_complete(coro)


# --- the same greenlet in every step ---------------------------------------------------


def test_task_holding_getcurrent_sees_the_same_greenlet_in_every_step(gloop):
    async def task(n_steps):
        g = greenlet.getcurrent()
        seen = []
        for k in range(n_steps):
            if k % 3 == 0:
                await asyncio.sleep(0)
            elif k % 3 == 1:
                greenhub.await_(asyncio.sleep(0))
            else:
                await asyncio.sleep(0.0005)
            seen.append(greenlet.getcurrent() is g)
        return g, seen

    async def main():
        return await asyncio.gather(*(task(12) for _ in range(300)))

    results = run(gloop, main())
    assert all(all(seen) for _, seen in results)
    # concurrently alive tasks never share a greenlet
    assert len({id(g) for g, _ in results}) == 300
    # and none of them is the loop's (main) greenlet
    assert all(g.parent is not None for g, _ in results)


def test_more_tasks_than_kept_workers_still_keep_their_greenlet(gloop):
    # Past a few dozen bound workers greenhub gives idle workers back to the pool, but
    # only those nobody can observe.  Holding the greenlet, a weak reference to it, an
    # attribute on it, or a child greenlet (its parent link) all pin it.
    async def strong():
        g = greenlet.getcurrent()
        for _ in range(6):
            await asyncio.sleep(0)
            if greenlet.getcurrent() is not g:
                return False
        return True

    async def weak():
        r = weakref.ref(greenlet.getcurrent())
        for _ in range(6):
            await asyncio.sleep(0)
            if r() is not greenlet.getcurrent():
                return False
        return True

    async def attribute(i):
        greenlet.getcurrent().owner = i
        for _ in range(6):
            await asyncio.sleep(0)
            if getattr(greenlet.getcurrent(), "owner", None) != i:
                return False
        return True

    async def child_parent():
        def child():
            parent = greenlet.getcurrent().parent
            while True:
                parent.switch(greenlet.getcurrent().parent)

        c = greenlet.greenlet(child)
        first = c.switch()
        for _ in range(6):
            await asyncio.sleep(0)
            if c.switch() is not first or first is not greenlet.getcurrent():
                return False
        c.throw(greenlet.GreenletExit)
        return True

    async def main():
        coros = []
        for i in range(150):
            coros += [strong(), weak(), attribute(i), child_parent()]
        return await asyncio.gather(*coros)

    assert all(run(gloop, main()))


def test_greenlet_attributes_do_not_leak_into_the_next_task(gloop):
    async def marks():
        greenlet.getcurrent().left_behind = "x"

    async def reads():
        return getattr(greenlet.getcurrent(), "left_behind", None)

    async def main():
        found = []
        for _ in range(50):
            await gloop.create_task(marks())
            found.append(await gloop.create_task(reads()))
        return found

    assert run(gloop, main()) == [None] * 50


def test_task_greenlet_is_not_the_loop_greenlet_and_current_task_is_right(gloop):
    loop_greenlet = greenlet.getcurrent()

    def sync(task):
        assert asyncio.current_task() is task
        assert asyncio.get_running_loop() is gloop
        greenhub.await_(asyncio.sleep(0))
        assert asyncio.current_task() is task
        return greenlet.getcurrent()

    async def main():
        me = asyncio.current_task()
        g = sync(me)
        assert asyncio.current_task() is me
        return g

    g = run(gloop, main())
    assert g is not loop_greenlet
    assert greenlet.getcurrent() is loop_greenlet


def _module_frame_below(frame):
    """The nearest frame named <module> down the f_back chain, as aiohttp's web.AppKey
    looks for it (to name a key after the module that made it)."""
    while frame is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    return frame


def test_task_frames_lead_down_to_a_module_frame_of_main(loop):
    # On the stock loop a step's caller frames lead down to the script that started the
    # loop; on greenhub the worker greenlet's base frame stands in for them - in an
    # async step, in sync code under await_, and in a greenhub.spawn() function.
    def sync_part():
        return _module_frame_below(sys._getframe())

    async def main():
        return _module_frame_below(sys._getframe()), sync_part()

    frames = loop.run_until_complete(main())
    assert [f.f_globals["__name__"] for f in frames] == ["__main__", "__main__"]
    if type(loop).__module__.startswith("greenhub"):
        # The worker's base frame is all there is below the task's frames: the
        # greenlet calls it directly (no exec() frames, which every suspended virtual
        # thread would keep on its saved C stack).
        assert [f.f_code.co_filename for f in frames] == ["<greenhub virtual thread>"] * 2
        assert [f.f_back for f in frames] == [None, None]


def test_aiohttp_app_key_made_in_a_task_and_in_a_virtual_thread(loop):
    web = pytest.importorskip("aiohttp.web", reason="test dependency: make deps installs it")

    async def main():
        return web.AppKey("in_task", int)

    key = loop.run_until_complete(main())
    assert "__main__.in_task" in repr(key)
    if type(loop).__module__.startswith("greenhub"):

        def sync_fn():
            return web.AppKey("in_vthread", str)

        async def spawn_it():
            return await greenhub.spawn(sync_fn)

        key = loop.run_until_complete(spawn_it())
        assert "__main__.in_vthread" in repr(key)


# --- pooling ---------------------------------------------------------------------------


def test_sequential_short_tasks_reuse_a_few_workers(gloop):
    n = 10_000

    async def short():
        await asyncio.sleep(0)

    def sync_short():
        greenhub.await_(asyncio.sleep(0))

    async def main():
        high = 0
        for i in range(n):
            if i % 2:
                await gloop.create_task(short())
            else:
                await greenhub.spawn(sync_short)
            high = max(high, _core.debug_counters()["workers"])
        return high

    before = _core.debug_counters()["workers"]
    high = run(gloop, main())
    assert high - before <= 4, f"{n} sequential tasks created {high - before} workers"


def test_idle_tasks_do_not_each_hold_a_greenlet(gloop):
    # An idle task that never observed its greenlet gives the worker back (design:
    # "many idle tasks cost no greenlet each").  A parked virtual thread cannot.
    n = 2000

    async def idle(fut):
        await fut

    def parked(fut):
        greenhub.await_(fut)

    async def main():
        before = _core.debug_counters()
        fut = gloop.create_future()
        tasks = [gloop.create_task(idle(fut)) for _ in range(n)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        idle_workers = _core.debug_counters()["workers"] - before["workers"]
        vts = [greenhub.spawn(parked, fut) for _ in range(200)]
        await asyncio.sleep(0)
        during = _core.debug_counters()
        fut.set_result(None)
        await asyncio.gather(*tasks, *vts)
        after = _core.debug_counters()
        return before, idle_workers, during, after

    before, idle_workers, during, after = run(gloop, main())
    assert idle_workers < n // 4, f"{n} idle tasks hold {idle_workers} workers"
    assert during["parked"] - before["parked"] == 200
    assert during["workers"] - before["workers"] >= 200
    assert after["parked"] == before["parked"]


def test_counters_count_coros_and_parked_then_return_to_zero(greenhub_leak_check):
    base = _core.debug_counters()
    loop = greenhub.new_event_loop()

    async def main():
        fut = loop.create_future()
        vts = [greenhub.spawn(greenhub.await_, fut) for _ in range(10)]
        await asyncio.sleep(0)
        mid = _core.debug_counters()
        fut.set_result(1)
        assert await asyncio.gather(*vts) == [1] * 10
        return mid

    mid = run(loop, main())
    assert mid["parked"] - base["parked"] == 10
    assert mid["coros"] - base["coros"] >= 11  # ten vthreads + main
    assert mid["workers"] - base["workers"] >= 10
    loop.close()
    loop = None
    assert_counters_back(base, "after closing the loop")


def test_worker_greenlet_left_in_a_garbage_cycle_is_killed(gloop):
    # A finished task's worker that the task's code kept (greenlet.getcurrent()) stays
    # suspended in greenhub's worker loop; dropped into a garbage cycle, the GC must kill
    # it (GreenletExit) like the last reference going away does.  On 3.15, greenlet lets
    # the GC tp_clear() a suspended greenlet, which made its dealloc discard the stack
    # without unwinding it: the worker was lost and the "workers" counter stayed up.
    baseline = counters()

    async def main():
        return await asyncio.get_running_loop().create_task(sync_task(greenlet.getcurrent))

    workers = []
    for _ in range(20):
        workers.append(run(gloop, main()))
    gloop.close()
    assert all(workers) and len(set(map(id, workers))) == len(workers)  # alive, suspended

    class Cycle:
        pass

    for w in workers:
        # Tracked after the worker, so the collector clears the worker before the cycle.
        c = Cycle()
        c.me, c.worker = c, w
    del w, c, workers
    assert_counters_back(baseline)


# --- the asyncio.Task surface ----------------------------------------------------------


def test_tasks_are_real_asyncio_tasks_wrapping_the_coroutine(gloop):
    async def coro():
        return asyncio.current_task()

    async def main():
        c = coro()
        t = gloop.create_task(c, name="wrapped")
        assert isinstance(t, asyncio.Task)
        assert t.get_coro() is c
        # greenhub's Task class adds get_coro() only; the Task steps the wrapper
        assert type(t).__mro__[1] is asyncio.Task and type(t).__name__ == "Task"
        gc_ = asyncio.Task.get_coro(t)
        assert gc_ is green_coro(t) and type(gc_) is _core.GreenCoro
        assert gc_.coroutine is c
        assert gc_.__qualname__ == c.__qualname__
        assert gc_.cr_code is c.cr_code
        assert t.get_name() == "wrapped"
        assert "coro()" in repr(t)
        assert t in asyncio.all_tasks()
        assert await t is t
        return t

    run(gloop, main())


def test_get_coro_on_the_stock_loop_is_the_coroutine_itself():
    loop = asyncio.new_event_loop()
    try:

        async def coro():
            pass

        c = coro()
        t = loop.create_task(c)
        assert t.get_coro() is c
        loop.run_until_complete(t)
    finally:
        loop.close()


def test_parked_virtual_threads_are_in_all_tasks_with_names(gloop):
    def sync(fut):
        return greenhub.await_(fut)

    async def main():
        fut = gloop.create_future()
        vts = [greenhub.spawn(sync, fut) for _ in range(5)]
        for i, t in enumerate(vts):
            t.set_name(f"vt-{i}")
        await asyncio.sleep(0)
        assert all(green_coro(t).parked for t in vts)
        assert all(isinstance(green_coro(t).greenlet, greenlet.greenlet) for t in vts)
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert {f"vt-{i}" for i in range(5)} <= names
        # the task's repr, stack and greenlet are inspectable while parked
        assert "vt-0" in repr(vts[0])
        fut.set_result("done")
        assert await asyncio.gather(*vts) == ["done"] * 5
        assert not any(green_coro(t).parked for t in vts)

    run(gloop, main())


def test_custom_task_factory_and_task_subclass(gloop):
    class MyTask(asyncio.Task):
        pass

    seen = []

    def factory(loop, coro, **kwargs):
        seen.append(type(coro))
        return MyTask(coro, loop=loop, **kwargs)

    gloop.set_task_factory(factory)

    def sync(x):
        assert type(asyncio.current_task()) is MyTask
        return greenhub.await_(asyncio.sleep(0.001, x)) * 2

    async def main():
        t = greenhub.spawn(sync, 21)
        assert isinstance(t, MyTask)
        return await t

    assert run(gloop, main()) == 42
    assert seen and all(t is _core.GreenCoro for t in seen)


def test_create_task_context_kwarg_is_the_context_of_sync_frames(gloop):
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "given")

    def sync():
        assert VAR.get() == "given"
        greenhub.await_(asyncio.sleep(0))
        VAR.set("changed in sync frame")
        greenhub.await_(asyncio.sleep(0))
        return VAR.get()

    async def main():
        t = gloop.create_task(sync_task(sync), context=ctx)
        return await t

    assert run(gloop, main()) == "changed in sync frame"
    assert ctx[VAR] == "changed in sync frame"
    assert VAR.get() == "unset"


@pytest.mark.skipif(not PY312, reason="eager tasks are 3.12+")
def test_eager_task_factory_with_virtual_threads(gloop):
    gloop.set_task_factory(asyncio.eager_task_factory)

    def sync(i):
        g = greenlet.getcurrent()
        me = asyncio.current_task()
        x = greenhub.await_(asyncio.sleep(0.001, i))
        assert greenlet.getcurrent() is g and asyncio.current_task() is me
        return x

    async def main(me_outer):
        # finishes inside create_task: no worker step ever parks
        t0 = greenhub.spawn(lambda: "at once")
        assert t0.done() and t0.result() == "at once"
        # first step (run inside create_task, from this task's greenlet) parks in await_
        ts = [greenhub.spawn(sync, i) for i in range(50)]
        assert not any(t.done() for t in ts)
        assert all(green_coro(t).parked for t in ts)
        assert asyncio.current_task() is me_outer

        # eager tasks created from inside a synchronous frame of another vthread
        def parent():
            kids = [greenhub.spawn(sync, i) for i in range(10)]
            return greenhub.await_(asyncio.gather(*kids))

        return await asyncio.gather(*ts), await greenhub.spawn(parent)

    async def outer():
        return await main(asyncio.current_task())

    got, nested = run(gloop, outer())
    assert got == list(range(50))
    assert nested == list(range(10))


@pytest.mark.skipif(not PY312, reason="eager tasks are 3.12+")
def test_eager_task_sees_its_own_context_in_sync_frames(gloop):
    gloop.set_task_factory(asyncio.eager_task_factory)

    def sync(tag):
        VAR.set(tag)
        greenhub.await_(asyncio.sleep(0))
        return VAR.get()

    async def main():
        VAR.set("parent")
        ts = [greenhub.spawn(sync, f"child-{i}") for i in range(5)]
        res = await asyncio.gather(*ts)
        return res, VAR.get()

    res, parent = run(gloop, main())
    assert res == [f"child-{i}" for i in range(5)]
    assert parent == "parent"


def test_create_task_with_coro_keyword_runs_on_a_greenlet():
    # create_task(coro=...) is accepted by asyncio's signature; the coroutine must be
    # wrapped as for a positional argument, so await_ works inside it.
    async def body():
        return greenhub.await_(asyncio.sleep(0, "kw"))

    async def main():
        loop = asyncio.get_running_loop()
        task = loop.create_task(coro=body(), name="by-keyword")
        assert task.get_name() == "by-keyword"
        return await task

    assert greenhub.run(main()) == "kw"
