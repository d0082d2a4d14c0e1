"""create_future, create_task (name=, context=, eager start) and task factories."""

import asyncio
import contextvars
import sys

import pytest
from support import PY312, error_of, run_once

VAR = contextvars.ContextVar("task_var", default="unset")


def test_create_future_is_a_pending_future_of_this_loop(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert not fut.done()
    fut.cancel()


def test_future_done_callbacks_run_on_the_loop(loop):
    fut = loop.create_future()
    out = []
    fut.add_done_callback(lambda f: out.append(f.result()))
    fut.set_result("r")
    assert out == []  # scheduled with call_soon, not called synchronously
    run_once(loop)
    assert out == ["r"]


def test_create_task_runs_coroutine(loop):
    async def coro(x):
        await asyncio.sleep(0)
        return x + 1

    task = loop.create_task(coro(1))
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == 2


def test_create_task_does_not_start_before_the_loop_runs(loop):
    started = []

    async def coro():
        started.append(True)

    task = loop.create_task(coro())
    assert started == []
    loop.run_until_complete(task)
    assert started == [True]


def test_create_task_name(loop):
    async def coro():
        pass

    named = loop.create_task(coro(), name="my-task")
    unnamed = loop.create_task(coro())
    assert named.get_name() == "my-task"
    assert unnamed.get_name().startswith("Task-")
    loop.run_until_complete(asyncio.gather(named, unnamed))


def test_create_task_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "task-ctx")

    async def coro():
        await asyncio.sleep(0)
        seen = VAR.get()
        VAR.set("changed-in-task")
        return seen

    task = loop.create_task(coro(), context=ctx)
    assert loop.run_until_complete(task) == "task-ctx"
    assert ctx[VAR] == "changed-in-task"
    assert VAR.get() == "unset"
    if PY312:
        assert task.get_context() is ctx


def test_create_task_copies_current_context_by_default(loop):
    async def coro():
        return VAR.get()

    token = VAR.set("outer")
    try:
        task = loop.create_task(coro())
    finally:
        VAR.reset(token)
    assert loop.run_until_complete(task) == "outer"


def test_tasks_interleave_fifo(loop):
    out = []

    async def worker(name):
        for i in range(3):
            out.append((name, i))
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(worker("a"), worker("b"))

    loop.run_until_complete(main())
    assert out == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_task_cancel(loop):
    async def sleeper():
        await asyncio.sleep(3600)

    async def main():
        task = asyncio.ensure_future(sleeper())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert loop.run_until_complete(main()) is True


def test_all_tasks_and_current_task(loop):
    async def child():
        await asyncio.sleep(0)

    async def main():
        t = asyncio.ensure_future(child())
        tasks = asyncio.all_tasks()
        assert asyncio.current_task() in tasks and t in tasks
        await t
        return asyncio.current_task()

    main_task = loop.create_task(main())
    assert loop.run_until_complete(main_task) is main_task


def test_create_task_with_a_non_coroutine_raises(loop):
    err = error_of(loop.create_task, 42)
    assert err is not None and err[0] is TypeError
    assert "a coroutine was expected" in err[1]


# -- task factories ------------------------------------------------------------------


def test_task_factory_default_is_none(loop):
    assert loop.get_task_factory() is None


def test_set_task_factory_is_used_by_create_task(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def coro():
        return "made"

    task = loop.create_task(coro(), name="factory-made")
    assert task.get_name() == "factory-made"
    assert loop.run_until_complete(task) == "made"
    assert calls[0][0] is loop
    # 3.14 passes create_task()'s keyword arguments on to the factory, name included.
    assert calls[0][1] == ({"name": "factory-made"} if sys.version_info >= (3, 14) else {})


def test_task_factory_receives_context_kwarg(loop):
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append(kwargs)
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "factory-ctx")

    async def coro():
        return VAR.get()

    assert loop.run_until_complete(loop.create_task(coro(), context=ctx)) == "factory-ctx"
    assert calls == [{"context": ctx}]


def test_task_factory_used_by_run_until_complete(loop):
    made = []

    def factory(lp, coro, **kwargs):
        t = asyncio.Task(coro, loop=lp, **kwargs)
        made.append(t)
        return t

    loop.set_task_factory(factory)

    async def coro():
        return 1

    assert loop.run_until_complete(coro()) == 1
    assert len(made) == 1


def test_set_task_factory_none_restores_default(loop):
    loop.set_task_factory(lambda lp, coro, **kw: asyncio.Task(coro, loop=lp, **kw))
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_set_task_factory_rejects_non_callable(loop):
    assert error_of(loop.set_task_factory, 42) == (
        TypeError,
        "task factory must be a callable or None",
    )
    assert loop.get_task_factory() is None


# -- eager tasks (3.12+) -------------------------------------------------------------


@pytest.mark.skipif(not PY312, reason="eager tasks are new in Python 3.12")
def test_eager_task_factory_runs_first_step_synchronously(loop):
    loop.set_task_factory(asyncio.eager_task_factory)
    out = []

    async def eager(tag):
        out.append(("start", tag))
        await asyncio.sleep(0)
        out.append(("end", tag))
        return tag

    async def no_suspend():
        out.append(("whole", "sync"))
        return "done-eagerly"

    async def main():
        t1 = loop.create_task(eager("x"))
        out.append("after-create")
        t2 = loop.create_task(no_suspend())
        assert t2.done() and t2.result() == "done-eagerly"
        return await t1

    assert loop.run_until_complete(main()) == "x"
    assert out == [("start", "x"), "after-create", ("whole", "sync"), ("end", "x")]


@pytest.mark.skipif(not PY312, reason="eager tasks are new in Python 3.12")
def test_task_eager_start_true(loop):
    out = []

    async def child():
        out.append("child-first-step")
        await asyncio.sleep(0)
        return asyncio.current_task()

    async def main():
        task = asyncio.Task(child(), loop=loop, eager_start=True)
        out.append("after-construct")
        assert await task is task
        return True

    assert loop.run_until_complete(main()) is True
    assert out == ["child-first-step", "after-construct"]


@pytest.mark.skipif(not PY312, reason="eager tasks are new in Python 3.12")
def test_eager_task_sees_its_own_current_task_and_context(loop):
    loop.set_task_factory(asyncio.eager_task_factory)
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "eager-ctx")

    async def child():
        return asyncio.current_task(), VAR.get()

    async def main():
        outer = asyncio.current_task()
        task = loop.create_task(child(), context=ctx)
        assert task.done()
        assert asyncio.current_task() is outer
        return task, task.result()

    task, (current, value) = loop.run_until_complete(main())
    assert current is task
    assert value == "eager-ctx"


@pytest.mark.skipif(not PY312, reason="eager tasks are new in Python 3.12")
def test_eager_start_outside_a_running_loop_is_lazy(loop):
    out = []

    async def child():
        out.append("ran")

    task = asyncio.Task(child(), loop=loop, eager_start=True)
    assert out == []
    loop.run_until_complete(task)
    assert out == ["ran"]
