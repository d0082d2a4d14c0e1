"""greenhub.to_thread, greenhub.sync_to_async and greenhub.async_to_sync.

The async side of each adapter is exercised on both loops (the ``loop`` fixture): on
greenhub the adapters hop no thread, on the stock loop they follow asgiref's thread
model; each test states what differs.  Calls with no loop run in helper threads
(vthread_helpers.in_thread) so the per-thread greenhub loop dies with its thread.
"""

import asyncio
import contextvars
import inspect
import sys
import threading
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
from vthread_helpers import gloop_fixture, in_thread  # noqa: F401 - fixture

import greenhub
from greenhub import _colours

pytestmark = pytest.mark.timeout(30)

cv = contextvars.ContextVar("cv", default="unset")
WAIT = 10  # seconds a thread may wait for an event that is normally set at once


@pytest.fixture(autouse=True, scope="module")
def _sensitive_thread_started_once():
    # The process-wide thread for thread-sensitive fallback calls lives until exit; start
    # it before any test so the leak check does not wait for it as a thread of that test.
    _colours._sensitive_executor().submit(int).result()


def run(loop, coro):
    return loop.run_until_complete(coro)


async def in_task(fn, *args):
    """Run the sync fn as a task body: a virtual thread on greenhub."""
    return fn(*args)


class Progress:
    """A task that counts loop iterations: shows the loop ran while something waited."""

    def __init__(self):
        self.n = 0
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        while True:
            self.n += 1
            await asyncio.sleep(0)

    def stop(self):
        self.task.cancel()


# --------------------------------------------------------------------------
# to_thread
# --------------------------------------------------------------------------


def test_to_thread_in_vthread_runs_in_a_pool_thread_while_the_loop_runs(gloop):
    release = threading.Event()

    def blocking(x):
        # Blocks in "C code" until a task on the loop sets the event: it can only
        # return if the loop kept running while this virtual thread waited.
        assert release.wait(WAIT)
        return x, threading.current_thread() is not threading.main_thread(), cv.get()

    def vthread():
        cv.set("copied")
        return greenhub.to_thread(blocking, 7)

    async def main():
        t = greenhub.spawn(vthread)
        while not t.done():
            await asyncio.sleep(0.001)
            release.set()
        return await t

    assert run(gloop, main()) == (7, True, "copied")


def test_to_thread_exception_propagates_with_the_threads_frames(gloop):
    def fails():
        raise KeyError("from the thread")

    async def main():
        return greenhub.to_thread(fails)

    with pytest.raises(KeyError, match="from the thread") as info:
        run(gloop, main())
    assert "fails" in [f.name for f in traceback.extract_tb(info.value.__traceback__)]


def test_to_thread_cancel_ends_the_wait_not_the_call(gloop):
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    def blocking():
        entered.set()
        assert release.wait(WAIT)
        finished.set()

    def vthread():
        try:
            greenhub.to_thread(blocking)
        except asyncio.CancelledError:
            return "cancelled at to_thread"

    async def main():
        t = greenhub.spawn(vthread)
        while not entered.is_set():
            await asyncio.sleep(0.001)
        t.cancel()
        result = await t
        still_running = not finished.is_set()
        release.set()
        return result, still_running

    assert run(gloop, main()) == ("cancelled at to_thread", True)
    assert finished.wait(WAIT)


def test_to_thread_without_a_loop_calls_fn_in_the_calling_thread():
    def go():
        cv.set("mine")
        me = threading.current_thread()
        return greenhub.to_thread(
            lambda a, b=0: (a + b, threading.current_thread() is me, cv.get()), 1, b=2
        )

    assert in_thread(go) == (3, True, "mine")


def test_to_thread_in_a_loop_outside_a_greenhub_task_raises(loop):
    called = []

    async def main():
        greenhub.to_thread(called.append, 1)

    if isinstance(loop, greenhub.Loop):
        # a coroutine on greenhub is in a task, so it may wait; a callback may not
        fut = loop.create_future()
        loop.call_soon(lambda: _capture(fut, greenhub.to_thread, called.append, 1))
        exc = run(loop, fut)
    else:
        with pytest.raises(RuntimeError) as info:
            run(loop, main())
        exc = info.value
    assert isinstance(exc, RuntimeError)
    assert "asyncio.to_thread" in str(exc)
    assert called == []


def _capture(fut, fn, *args):
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001
        fut.set_result(exc)
    else:
        fut.set_result(None)


def test_to_thread_bad_input():
    with pytest.raises(TypeError, match="callable"):
        greenhub.to_thread(42)
    with pytest.raises(TypeError):
        greenhub.to_thread()


# --------------------------------------------------------------------------
# sync_to_async
# --------------------------------------------------------------------------


def where_am_i():
    return threading.current_thread(), asyncio._get_running_loop()


def test_sync_to_async_where_fn_runs(loop, kind):
    # greenhub: in the awaiting task itself (the loop's thread, no hop);
    # stock loop: asgiref's threads - one shared thread for thread-sensitive calls.
    async def main():
        a = await greenhub.sync_to_async(where_am_i)()
        b = await greenhub.sync_to_async(where_am_i)()
        with ThreadPoolExecutor(1, thread_name_prefix="mine") as ex:
            c = await greenhub.sync_to_async(where_am_i, thread_sensitive=False, executor=ex)()
        d = await greenhub.sync_to_async(where_am_i, thread_sensitive=False)()
        return a, b, c, d

    a, b, c, d = run(loop, main())
    main_thread = threading.current_thread()
    assert c[0].name.startswith("mine") and c[1] is None  # an explicit executor is used
    if kind == "greenhub":
        assert a == b == d == (main_thread, loop)
    else:
        assert a[0] is b[0] and a[0].name.startswith("greenhub-sync")
        assert d[0] is not main_thread and d[0].name.startswith("asyncio")
        assert a[1] is b[1] is d[1] is None


def test_sync_to_async_on_greenhub_fn_is_a_virtual_thread(gloop):
    # fn runs in the awaiting task, and its await_ suspends only that task.
    def fn():
        task = asyncio.current_task()
        return task, greenhub.await_(asyncio.sleep(0.01, result="slept"))

    async def main():
        p = Progress()
        try:
            task, result = await greenhub.sync_to_async(fn)()
            return task is asyncio.current_task(), result, p.n
        finally:
            p.stop()

    same_task, result, progressed = run(gloop, main())
    assert same_task and result == "slept" and progressed > 0


def test_sync_to_async_results_exceptions_and_tracebacks(loop):
    def add(a, b=0):
        return a + b

    def fails():
        raise ValueError("sync failure")

    async def main():
        assert await greenhub.sync_to_async(add)(1, b=2) == 3
        with pytest.raises(ValueError, match="sync failure") as info:
            await greenhub.sync_to_async(fails)()
        return [f.name for f in traceback.extract_tb(info.value.__traceback__)]

    assert "fails" in run(loop, main())


class Thing:
    @greenhub.sync_to_async
    def method(self, x):
        """Docstring kept."""
        return self, x

    @greenhub.sync_to_async(thread_sensitive=False)
    def method2(self, x):
        return self, x


def test_sync_to_async_decorator_forms_methods_and_metadata(loop):
    t = Thing()

    async def main():
        return await t.method(1), await t.method2(2), await Thing.method(t, 3)

    assert run(loop, main()) == ((t, 1), (t, 2), (t, 3))
    assert Thing.method.__name__ == "method" and Thing.method.__doc__ == "Docstring kept."
    assert Thing.method.__wrapped__.__qualname__ == "Thing.method"
    for f in (Thing.method, t.method, t.method2, greenhub.sync_to_async(len)):
        assert inspect.iscoroutinefunction(f)
        if sys.version_info < (3, 14):  # deprecated (and warning) from 3.14
            assert asyncio.iscoroutinefunction(f)


def test_sync_to_async_bad_input():
    async def coro_fn():
        pass

    class AsyncCallable:
        async def __call__(self):
            pass

    for bad in (coro_fn, AsyncCallable(), 42):
        with pytest.raises(TypeError, match="only be applied to sync functions"):
            greenhub.sync_to_async(bad)
    with pytest.raises(TypeError, match="only be applied to sync functions"):
        greenhub.sync_to_async()(coro_fn)  # the decorator-with-arguments form
    with pytest.raises(TypeError, match="thread_sensitive"):
        greenhub.sync_to_async(len, executor=ThreadPoolExecutor(1))
    with pytest.raises(TypeError, match="Executor"):
        greenhub.sync_to_async(len, thread_sensitive=False, executor=object())
    with pytest.raises(TypeError, match="Context"):
        greenhub.sync_to_async(len, context={})


def test_sync_to_async_contextvars_flow_both_ways(loop):
    def fn():
        seen = cv.get()
        cv.set("set by fn")
        return seen

    async def main():
        cv.set("caller")
        seen = await greenhub.sync_to_async(fn)()
        return seen, cv.get()

    assert run(loop, main()) == ("caller", "set by fn")


def test_sync_to_async_given_context_is_used(loop):
    ctx = contextvars.copy_context()
    ctx.run(cv.set, "in ctx")

    def fn():
        cv.set("changed")
        return cv.get()

    async def main():
        cv.set("caller")
        r = await greenhub.sync_to_async(fn, context=ctx)()
        return r, cv.get()

    assert run(loop, main()) == ("changed", "caller")
    assert ctx[cv] == "changed"


def test_sync_to_async_thread_awaits_on_the_callers_loop(loop):
    # In the stock loop's fallback thread, await_ (and async_to_sync) run the awaitable
    # on the caller's loop - a sync-style library over that loop's objects works there.
    async def on_loop():
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    def fn():
        return greenhub.await_(on_loop()), greenhub.async_to_sync(on_loop)()

    async def main():
        return await greenhub.sync_to_async(fn)()

    assert run(loop, main()) == (loop, loop)


def test_sync_to_async_nested_thread_sensitive_calls_do_not_deadlock(loop, kind):
    # sync -> async -> sync, all thread-sensitive: the inner sync call runs in the
    # thread of the outer one (which is waiting), as with asgiref.
    def inner():
        return threading.current_thread()

    async def middle():
        return await greenhub.sync_to_async(inner)()

    def outer():
        return threading.current_thread(), greenhub.async_to_sync(middle)()

    async def main():
        return await greenhub.sync_to_async(outer)()

    t_outer, t_inner = run(loop, main())
    assert t_outer is t_inner
    assert (t_outer is threading.current_thread()) == (kind == "greenhub")


def test_sync_to_async_cancel_reaches_what_the_thread_waits_for(loop, kind):
    inner_started = asyncio.Event()
    fn_ended = threading.Event()
    outcome = []

    async def forever():
        inner_started.set()
        await asyncio.sleep(3600)

    def fn():
        try:
            greenhub.await_(forever())
        except asyncio.CancelledError:
            outcome.append("inner cancelled")
            return "fn returned"
        finally:
            fn_ended.set()

    async def main():
        t = asyncio.ensure_future(greenhub.sync_to_async(fn)())
        await inner_started.wait()
        t.cancel()
        try:
            result = await t
        except asyncio.CancelledError:
            result = "outer cancelled"
        for _ in range(WAIT * 1000):  # the thread ends soon after (stock loop)
            if fn_ended.is_set():
                break
            await asyncio.sleep(0.001)
        return result

    # greenhub: fn runs in the task, so await_ raises CancelledError in it and fn returns;
    # stock loop: the outer await is cancelled, and so is what the thread waits for on
    # the loop (as asgiref does), so the thread's call ends too.
    result = run(loop, main())
    assert result == ("fn returned" if kind == "greenhub" else "outer cancelled")
    assert outcome == ["inner cancelled"]


# --------------------------------------------------------------------------
# async_to_sync
# --------------------------------------------------------------------------


async def double(x):
    await asyncio.sleep(0)
    return 2 * x


async def set_cv():
    await asyncio.sleep(0)
    seen = cv.get()
    cv.set("set by coroutine")
    return seen


def test_async_to_sync_in_a_vthread_is_await_(gloop):
    def vthread():
        p = Progress()
        try:
            cv.set("vthread")
            got = greenhub.async_to_sync(double)(21)
            later = greenhub.async_to_sync(asyncio.sleep)(0.01, "x")
            return got, later, greenhub.async_to_sync(set_cv)(), cv.get(), p.n
        finally:
            p.stop()

    got, later, seen, after, progressed = run(gloop, in_task(vthread))
    assert (got, later, seen, after) == (42, "x", "vthread", "set by coroutine")
    assert progressed > 0


def test_async_to_sync_without_a_loop_runs_on_a_greenhub_loop():
    async def which_loop():
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop())

    def go():
        cv.set("caller")
        seen = greenhub.async_to_sync(set_cv)()
        return greenhub.async_to_sync(which_loop)(), seen, cv.get()

    assert in_thread(go) == (greenhub.Loop, "caller", "set by coroutine")


def test_async_to_sync_in_a_running_loop_outside_a_task_raises(loop):
    made = []

    async def coro_fn():
        made.append(1)

    msg = "You cannot use AsyncToSync in the same thread as an async event loop"
    call = greenhub.async_to_sync(coro_fn)
    if isinstance(loop, greenhub.Loop):
        fut = loop.create_future()
        loop.call_soon(_capture, fut, call)
        exc = run(loop, fut)
    else:

        async def main():
            call()

        with pytest.raises(RuntimeError) as info:
            run(loop, main())
        exc = info.value
    assert isinstance(exc, RuntimeError) and msg in str(exc)
    assert made == []  # the coroutine function was not even called: nothing unawaited


class Remote:
    @greenhub.async_to_sync
    async def get(self, x):
        """Remote get."""
        await asyncio.sleep(0)
        return self, x


def test_async_to_sync_decorator_methods_metadata_and_errors():
    r = Remote()
    assert not inspect.iscoroutinefunction(Remote.get)
    assert not inspect.iscoroutinefunction(greenhub.async_to_sync(double))
    assert Remote.get.__doc__ == "Remote get." and Remote.get.__name__ == "get"

    async def fails():
        await asyncio.sleep(0)
        raise LookupError("async failure")

    def go():
        out = r.get(1), Remote.get(r, 2), greenhub.async_to_sync()(double)(3)
        with pytest.raises(LookupError, match="async failure") as info:
            greenhub.async_to_sync(fails)()
        names = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
        return out, names

    out, names = in_thread(go)
    assert out == ((r, 1), (r, 2), 6)
    assert "fails" in names


def test_async_to_sync_bad_input():
    with pytest.raises(TypeError, match="async function"):
        greenhub.async_to_sync(42)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = greenhub.async_to_sync(lambda: double(4))  # works, but is not marked
    assert [str(w.message) for w in caught] == [
        "async_to_sync was passed a non-async-marked callable"
    ]
    assert in_thread(wrapped) == 8
    with pytest.warns(UserWarning), pytest.raises(TypeError, match="await"):
        in_thread(greenhub.async_to_sync(lambda: 42))  # not awaitable: await's TypeError


def test_async_to_sync_force_new_loop(gloop):
    async def current_loop():
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    fresh = greenhub.async_to_sync(current_loop, force_new_loop=True)

    def go():
        a, b = fresh(), fresh()
        return a is not b and a.is_closed() and isinstance(a, greenhub.Loop)

    assert in_thread(go)
    # in a virtual thread: a new loop in a helper thread, only this task waits
    other = run(gloop, in_task(fresh))
    assert other is not gloop and other.is_closed()


def test_both_adapters_nest_deeply_on_one_task(gloop):
    # async -> sync -> async -> sync ... all in one task, no thread.
    def sync_level(n):
        if n == 0:
            return asyncio.current_task(), threading.current_thread()
        return greenhub.async_to_sync(async_level)(n - 1)

    async def async_level(n):
        return await greenhub.sync_to_async(sync_level)(n)

    async def main():
        task, thread = await async_level(20)
        return task is asyncio.current_task() and thread is threading.current_thread()

    assert run(gloop, main())
