"""greenhub.await_() from synchronous code: at any depth, through C code and third-party
greenlets, re-entrantly; context variables, tracebacks, the awaitables it accepts, the
errors it raises where it cannot wait, and greenhub.spawn()."""

import asyncio
import contextvars
import functools
import gc
import json
import re
import traceback
import types
import warnings

import greenlet
import pytest
from vthread_helpers import gloop_fixture, in_thread, sync_task  # noqa: F401 - fixture

import greenhub

VAR = contextvars.ContextVar("await_var", default="unset")


def run(loop, coro):
    return loop.run_until_complete(coro)


def test_vthread_names_are_the_same_functions():
    assert greenhub.vthread.run_sync is greenhub.await_
    assert greenhub.vthread.spawn is greenhub.spawn


# --- depth ------------------------------------------------------------------------------


def test_await_at_depth_200_through_python_recursion(gloop):
    def down(n, tag):
        if n == 0:
            return greenhub.await_(asyncio.sleep(0.001, tag))
        # wait at every level too, so that deep stacks are switched many times
        greenhub.await_(asyncio.sleep(0))
        return down(n - 1, tag)

    async def main():
        return await asyncio.gather(*(greenhub.spawn(down, 200, i) for i in range(20)))

    assert run(gloop, main()) == list(range(20))


def test_await_at_depth_200_through_c_code_calling_back(gloop):
    # sorted() returns the list item, not the key: make the key the answer
    def sorted_level(n, tag):
        box = []
        sorted([n], key=lambda _: box.append(level(n - 1, tag)))
        return box[0]

    def level(n, tag):
        greenhub.await_(asyncio.sleep(0))
        if n == 0:
            return greenhub.await_(asyncio.sleep(0.001, tag))
        kind = n % 5
        if kind == 0:
            return sorted_level(n, tag)
        if kind == 1:
            return functools.reduce(lambda acc, _: level(n - 1, tag), [0], None)
        if kind == 2:
            return list(map(level, [n - 1], [tag]))[0]  # noqa: RUF015 - map consumed by list
        if kind == 3:
            return json.loads("{}", object_hook=lambda _: level(n - 1, tag))
        return int(re.sub("x", lambda _: str(level(n - 1, tag)), "x"))

    async def main():
        return await asyncio.gather(*(greenhub.spawn(level, 200, i) for i in range(10)))

    assert run(gloop, main()) == list(range(10))


def test_reentrant_100_levels(gloop):
    def sync_level(n):
        if n == 0:
            return [asyncio.current_task()]
        return greenhub.await_(async_level(n - 1)) + [asyncio.current_task()]

    async def async_level(n):
        await asyncio.sleep(0)
        return sync_level(n)

    async def main():
        return sync_level(100), asyncio.current_task()

    tasks, me = run(gloop, main())
    assert len(tasks) == 101
    assert all(t is me for t in tasks)  # one task all the way down


def test_reentrant_cancellation_unwinds_every_level_in_order(gloop):
    log = []
    ready = None

    def sync_level(n):
        try:
            if n == 0:
                ready.set_result(None)
                return greenhub.await_(asyncio.sleep(3600))
            return greenhub.await_(async_level(n - 1))
        finally:
            log.append(("sync", n))

    async def async_level(n):
        try:
            return sync_level(n)
        finally:
            log.append(("async", n))

    async def main():
        nonlocal ready
        ready = gloop.create_future()
        t = greenhub.spawn(sync_level, 50)
        await ready
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        return t

    t = run(gloop, main())
    assert t.cancelled()
    expected = []
    for n in range(50):
        expected += [("sync", n), ("async", n)]
    expected.append(("sync", 50))
    assert log == expected


# --- third-party greenlets --------------------------------------------------------------


def test_await_inside_a_plain_child_greenlet(gloop):
    def child(x, task):
        assert asyncio.current_task() is task
        r = greenhub.await_(asyncio.sleep(0.001, x)) + 1
        assert asyncio.current_task() is task
        return r

    def sync(x):
        return greenlet.greenlet(child).switch(x, asyncio.current_task())

    async def main():
        return await asyncio.gather(*(greenhub.spawn(sync, i) for i in range(50)))

    assert run(gloop, main()) == list(range(1, 51))


def test_child_greenlet_suspended_across_task_steps(gloop):
    # A generator-like child greenlet switches back to its parent (the task's greenlet)
    # and is resumed in later steps, after both `await` and await_().
    def gen():
        parent = greenlet.getcurrent().parent
        for i in range(3):
            parent.switch(i)
        return "end"

    async def uses():
        g = greenlet.greenlet(gen)
        out = []
        for _ in range(4):
            out.append(g.switch())
            await asyncio.sleep(0.0005)
            greenhub.await_(asyncio.sleep(0))
        return out

    async def main():
        return await asyncio.gather(*(uses() for _ in range(200)))

    assert run(gloop, main()) == [[0, 1, 2, "end"]] * 200


def test_await_at_depth_200_through_a_child_greenlet(gloop):
    # task greenlet: 100 frames -> child greenlet -> sorted(key=) -> 100 frames -> await_
    def bottom(n, box):
        if n == 0:
            box.append(greenhub.await_(asyncio.sleep(0.001, "deep")))
            return 0
        greenhub.await_(asyncio.sleep(0))
        return bottom(n - 1, box)

    def in_child():
        box = []
        sorted([0], key=lambda _: bottom(100, box))
        return box[0]

    def top(n):
        if n == 0:
            return greenlet.greenlet(in_child).switch()
        return top(n - 1)

    async def main():
        return await asyncio.gather(*(greenhub.spawn(top, 100) for _ in range(10)))

    assert run(gloop, main()) == ["deep"] * 10


def test_plain_child_greenlet_context_is_stable_across_await_(gloop):
    # greenlet starts a new greenlet with its own (empty) context; greenhub must not
    # swap another context in when await_ suspends and resumes that greenlet.
    def child():
        before = VAR.get()
        VAR.set("child")
        greenhub.await_(asyncio.sleep(0.001))
        return before, VAR.get()

    async def main():
        VAR.set("task")
        got = greenlet.greenlet(child).switch()
        return got, VAR.get()

    (before, after), in_task = run(gloop, main())
    assert after == "child"
    assert in_task == "task"
    assert before in ("unset", "task")


def _sqlalchemy():
    return pytest.importorskip("sqlalchemy.util", reason="needs sqlalchemy")


def test_sqlalchemy_greenlet_spawn_in_many_concurrent_tasks(gloop):
    greenlet_spawn = _sqlalchemy().greenlet_spawn
    await_only = _sqlalchemy().await_only

    def body(i):
        g = greenlet.getcurrent()
        x = await_only(asyncio.sleep(0.001, i))
        assert greenlet.getcurrent() is g
        y = greenhub.await_(asyncio.sleep(0, x))  # greenhub.await_ inside greenlet_spawn
        assert greenlet.getcurrent() is g
        z = await_only(asyncio.sleep(0, y))
        assert VAR.get() == f"task-{i}"
        return z * 2

    async def one(i):
        VAR.set(f"task-{i}")
        parent = greenlet.getcurrent()
        r = await greenlet_spawn(body, i)
        assert greenlet.getcurrent() is parent
        return r

    async def main():
        return await asyncio.gather(*(one(i) for i in range(500)))

    assert run(gloop, main()) == [i * 2 for i in range(500)]


def test_sqlalchemy_greenlet_spawn_inside_a_virtual_thread(gloop):
    greenlet_spawn = _sqlalchemy().greenlet_spawn
    await_only = _sqlalchemy().await_only

    def inner(i):
        return await_only(asyncio.sleep(0.001, i)) + greenhub.await_(asyncio.sleep(0, 1))

    def vthread(i):
        # sync -> await_ -> async -> greenlet_spawn -> sync -> await_only / await_
        return greenhub.await_(greenlet_spawn(inner, i))

    async def main():
        return await asyncio.gather(*(greenhub.spawn(vthread, i) for i in range(100)))

    assert run(gloop, main()) == [i + 1 for i in range(100)]


def test_sqlalchemy_greenlet_spawn_exception_and_cancellation(gloop):
    greenlet_spawn = _sqlalchemy().greenlet_spawn
    await_only = _sqlalchemy().await_only
    log = []

    def failing():
        await_only(asyncio.sleep(0))
        greenhub.await_(asyncio.sleep(0))
        raise KeyError("from greenlet_spawn")

    def blocking():
        try:
            greenhub.await_(asyncio.sleep(3600))
        finally:
            log.append("blocking finally")

    async def main():
        with pytest.raises(KeyError, match="from greenlet_spawn"):
            await greenlet_spawn(failing)
        t = gloop.create_task(greenlet_spawn(blocking))
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    run(gloop, main())
    assert log == ["blocking finally"]


# --- context variables ------------------------------------------------------------------


def test_sync_frames_share_the_task_context(gloop):
    async def read():
        await asyncio.sleep(0)
        return VAR.get()

    def sync():
        assert VAR.get() == "set by coroutine"
        greenhub.await_(asyncio.sleep(0))
        assert VAR.get() == "set by coroutine"
        VAR.set("set by sync frame")
        seen_by_async = greenhub.await_(read())
        greenhub.await_(asyncio.sleep(0.001))
        return seen_by_async, VAR.get(), contextvars.copy_context()[VAR]

    async def main():
        VAR.set("set by coroutine")
        seen = sync()
        return seen, VAR.get()

    (seen_by_async, after_await, copied), in_coroutine = run(gloop, main())
    assert seen_by_async == "set by sync frame"
    assert after_await == copied == in_coroutine == "set by sync frame"


def test_each_virtual_thread_has_its_own_context(gloop):
    def sync(i):
        assert VAR.get() == "parent"  # spawn copies the spawner's context
        VAR.set(i)
        for _ in range(5):
            greenhub.await_(asyncio.sleep(0))
            assert VAR.get() == i
        # a callback scheduled from the sync frame runs in this context
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(lambda: fut.set_result(VAR.get()))
        return greenhub.await_(fut)

    async def main():
        VAR.set("parent")
        res = await asyncio.gather(*(greenhub.spawn(sync, i) for i in range(100)))
        return res, VAR.get()

    res, parent = run(gloop, main())
    assert res == list(range(100))
    assert parent == "parent"


def test_child_task_changes_are_not_seen_by_the_parent_sync_frame(gloop):
    async def child():
        VAR.set("child")
        return VAR.get()

    def sync():
        VAR.set("parent")
        got = greenhub.await_(asyncio.get_running_loop().create_task(child()))
        return got, VAR.get()

    assert run(gloop, sync_task(sync)) == ("child", "parent")


def test_context_in_child_greenlet_of_sqlalchemy_matches_task(gloop):
    greenlet_spawn = _sqlalchemy().greenlet_spawn

    def body():
        before = VAR.get()
        VAR.set("in greenlet_spawn")
        greenhub.await_(asyncio.sleep(0))
        return before, VAR.get()

    async def main():
        VAR.set("task")
        return await greenlet_spawn(body)

    assert run(gloop, main()) == ("task", "in greenlet_spawn")


# --- exceptions and tracebacks ----------------------------------------------------------


def _tb_names(exc):
    return [f.name for f in traceback.extract_tb(exc.__traceback__)]


def test_exception_raised_after_await_shows_the_sync_frames(gloop):
    def deep3():
        greenhub.await_(asyncio.sleep(0))
        raise KeyError("k")

    def deep2():
        return deep3()

    def deep1():
        return deep2()

    async def main():
        with pytest.raises(KeyError) as info:
            await greenhub.spawn(deep1)
        return info.value

    names = _tb_names(run(gloop, main()))
    assert names[-3:] == ["deep1", "deep2", "deep3"], names


def test_exception_from_the_awaited_coroutine_passes_through_sync_frames(gloop):
    async def failing():
        await asyncio.sleep(0)
        raise ValueError("async failure")

    def sync_b():
        return greenhub.await_(failing())

    def sync_a():
        try:
            return sync_b()
        except ValueError as exc:
            return exc

    async def main():
        return sync_a()

    exc = run(gloop, main())
    assert isinstance(exc, ValueError)
    names = _tb_names(exc)
    assert names[-3:] == ["sync_a", "sync_b", "failing"], names


def test_exception_in_no_loop_mode_shows_sync_frames():
    async def failing():
        await asyncio.sleep(0)
        raise ZeroDivisionError

    def sync_outer():
        return greenhub.await_(failing())

    def go():
        try:
            sync_outer()
        except ZeroDivisionError as exc:
            return _tb_names(exc)

    names = in_thread(go)
    assert names[0] == "go" and "sync_outer" in names and names[-1] == "failing", names


# --- what await_ accepts ----------------------------------------------------------------


class Awaitable:
    def __init__(self, value):
        self.value = value

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return self.value


@types.coroutine
def generator_based(value):
    yield from asyncio.sleep(0).__await__()
    return value


def test_await_accepts_what_await_accepts(gloop):
    async def coro():
        await asyncio.sleep(0)
        return "coroutine"

    async def never_yields():
        return "immediate"

    def sync():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_later(0.001, fut.set_result, "future")
        done = loop.create_future()
        done.set_result("done future")
        task = loop.create_task(coro())
        return [
            greenhub.await_(coro()),
            greenhub.await_(never_yields()),
            greenhub.await_(fut),
            greenhub.await_(done),
            greenhub.await_(task),
            greenhub.await_(Awaitable("__await__")),
            greenhub.await_(generator_based("types.coroutine")),
            greenhub.await_(asyncio.gather(coro(), never_yields())),
            greenhub.await_(asyncio.shield(coro())),
            greenhub.await_(asyncio.wait_for(coro(), 5)),
        ]

    assert run(gloop, sync_task(sync)) == [
        "coroutine",
        "immediate",
        "future",
        "done future",
        "coroutine",
        "__await__",
        "types.coroutine",
        ["coroutine", "immediate"],
        "coroutine",
        "coroutine",
    ]


class AwaitReturnsNonIterator:
    def __await__(self):
        return 42


class AwaitReturnsCoroutine:
    def __await__(self):
        return _bare()


async def _bare():
    pass


@types.coroutine
def _iterable_coroutine():
    yield


class AwaitReturnsIterableCoroutine:
    """`await` refuses a @types.coroutine generator from __await__, as a coroutine."""

    def __await__(self):
        return _iterable_coroutine()


def _plain_generator():
    yield


@pytest.mark.parametrize(
    "make",
    [
        lambda: 1,
        lambda: None,
        lambda: "text",
        lambda: object(),
        lambda: AwaitReturnsNonIterator(),
        lambda: AwaitReturnsCoroutine(),
        lambda: AwaitReturnsIterableCoroutine(),
        lambda: _plain_generator(),
        lambda: asyncio.sleep,
    ],
    ids=[
        "int",
        "None",
        "str",
        "object",
        "await-non-iterator",
        "await-coroutine",
        "await-types-coroutine",
        "plain-generator",
        "function",
    ],
)
def test_non_awaitable_raises_the_type_error_await_raises(gloop, make):
    async def with_await():
        try:
            await make()
        except TypeError as exc:
            return str(exc)

    def with_await_():
        try:
            greenhub.await_(make())
        except TypeError as exc:
            # raised by await_() itself: no frame of greenhub's own below the caller's
            assert exc.__traceback__.tb_next is None
            return str(exc)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # __await__'s coroutine, never awaited
        expected = run(gloop, with_await())
        assert expected is not None
        assert run(gloop, sync_task(with_await_)) == expected


def test_already_awaited_coroutine_raises_like_await(gloop):
    async def coro():
        return 1

    async def main():
        c = coro()
        await c
        with pytest.raises(RuntimeError) as a:
            await c
        with pytest.raises(RuntimeError) as b:
            greenhub.await_(c)
        return str(a.value), str(b.value)

    a, b = run(gloop, main())
    assert a == b


def test_awaitable_raising_stop_iteration_like_await(gloop):
    async def stops():
        raise StopIteration("x")

    async def main():
        with pytest.raises(RuntimeError) as a:
            await stops()
        with pytest.raises(RuntimeError) as b:
            greenhub.await_(stops())
        return str(a.value), str(b.value)

    a, b = run(gloop, main())
    assert a == b == "coroutine raised StopIteration"


# --- where await_ cannot wait -----------------------------------------------------------


def test_await_on_a_running_stock_loop_raises_runtime_error():
    async def inner():
        return 1

    async def main():
        c = inner()
        with pytest.raises(RuntimeError, match="greenhub") as info:
            greenhub.await_(c)
        assert c.cr_frame is None  # closed, so it will not warn "never awaited"
        return str(info.value)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        msg = asyncio.run(main())
        gc.collect()
    assert "needs a greenhub event loop" in msg


def test_await_in_a_call_soon_callback_raises_runtime_error(gloop):
    async def inner():
        return 1

    out = []

    def callback():
        c = inner()
        try:
            greenhub.await_(c)
        except RuntimeError as exc:
            out.append(str(exc))
        out.append(c.cr_frame is None)

    async def main():
        gloop.call_soon(callback)
        await asyncio.sleep(0.001)
        gloop.call_later(0.0001, callback)
        await asyncio.sleep(0.01)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(gloop, main())
        gc.collect()
    assert len(out) == 4, out
    assert "outside a task" in out[0] and out[1] is True
    assert out[2] == out[0] and out[3] is True


def test_await_in_a_done_callback_of_a_vthread_raises_runtime_error(gloop):
    # A future's done callback runs as a loop callback, even if it was added by sync code
    # inside a task.
    out = []

    def cb(fut):
        try:
            greenhub.await_(asyncio.sleep(0))
        except RuntimeError as exc:
            out.append("outside a task" in str(exc))

    def sync():
        t = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        t.add_done_callback(cb)
        greenhub.await_(t)
        greenhub.await_(asyncio.sleep(0))

    run(gloop, sync_task(sync))
    assert out == [True]


def test_await_in_a_task_built_with_asyncio_task_directly_raises_runtime_error(gloop):
    # asyncio.Task(coro) steps its coroutine itself, on the loop's greenlet: a clear
    # error naming the task, no wait, the loop unharmed.
    def sync():
        c = asyncio.sleep(0)
        try:
            greenhub.await_(c)
        except RuntimeError as exc:
            return str(exc), greenhub.in_vthread(), c.cr_frame is None

    async def coro():
        return sync()

    async def main():
        t = asyncio.Task(coro(), loop=gloop, name="direct")
        msg, in_vthread, closed = await t
        assert "cannot wait in <Task" in msg and "name='direct'" in msg, msg
        assert "asyncio.Task() directly" in msg
        assert in_vthread is False and closed is True
        return await greenhub.spawn(lambda: greenhub.await_(asyncio.sleep(0, "ok")))

    assert run(gloop, main()) == "ok"


@pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"), reason="asyncio.Task() takes eager_start from Python 3.12 on")
def test_await_in_an_eager_step_nested_in_a_vthread_raises_runtime_error(gloop):
    # The eager first step of asyncio.Task(..., eager_start=True) runs inside the step of
    # the task that creates it, on that task's greenlet.  A wait there used to park the
    # creator under the eager task: asyncio's current task went wrong and the loop hung.
    seen = []

    def sync():
        seen.append(greenhub.in_vthread())
        try:
            greenhub.await_(asyncio.sleep(0))
        except RuntimeError as exc:
            seen.append(str(exc))
        return asyncio.current_task().get_name()

    async def eager():
        return sync()

    def creator():
        me = asyncio.current_task()
        t = asyncio.Task(eager(), loop=gloop, eager_start=True, name="eager")
        assert asyncio.current_task() is me
        assert t.done() and t.result() == "eager"
        # the creator's own waits still work, before and after
        return greenhub.await_(asyncio.sleep(0.001, "creator"))

    assert run(gloop, sync_task(creator)) == "creator"
    assert seen[0] is False
    assert "eager first step of <Task" in seen[1] and "name='eager'" in seen[1], seen


# --- spawn ------------------------------------------------------------------------------


def test_spawn_result_exception_and_task_api(gloop):
    def add(a, b, *, scale=1):
        greenhub.await_(asyncio.sleep(0.001))
        return (a + b) * scale

    def fails():
        greenhub.await_(asyncio.sleep(0))
        raise LookupError("spawned failure")

    async def main():
        t = greenhub.spawn(add, 1, 2, scale=10)
        assert isinstance(t, asyncio.Task)
        assert t.get_loop() is gloop
        assert t.get_name().startswith("Task-")
        t.set_name("adder")
        assert t.get_name() == "adder"
        assert not t.done()
        assert await t == 30
        assert t.result() == 30
        f = greenhub.spawn(fails)
        with pytest.raises(LookupError, match="spawned failure"):
            await f
        assert isinstance(f.exception(), LookupError)
        with pytest.raises(LookupError):
            f.result()
        return True

    assert run(gloop, main())


def test_spawn_passes_kwargs_named_like_task_options_to_the_function(gloop):
    def fn(*, name, context):
        return name, context

    async def main():
        return await greenhub.spawn(fn, name="n", context="c")

    assert run(gloop, main()) == ("n", "c")


def test_spawn_from_sync_frame_and_await_it_with_await_(gloop):
    def child(i):
        return greenhub.await_(asyncio.sleep(0, i * i))

    def parent():
        kids = [greenhub.spawn(child, i) for i in range(10)]
        return [greenhub.await_(k) for k in kids]

    assert run(gloop, sync_task(parent)) == [i * i for i in range(10)]


def test_spawn_without_a_running_loop_raises_runtime_error():
    with pytest.raises(RuntimeError):
        greenhub.spawn(lambda: None)


def test_spawn_on_a_stock_loop_raises_runtime_error():
    async def main():
        with pytest.raises(RuntimeError, match="greenhub"):
            greenhub.spawn(lambda: None)

    asyncio.run(main())


def test_spawn_non_callable_raises_type_error(gloop):
    async def main():
        with pytest.raises(TypeError):
            greenhub.spawn(42)

    run(gloop, main())
