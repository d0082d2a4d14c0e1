"""greenhub.await_() with no loop running, and calls across OS threads.

With no running loop, await_ runs the awaitable to completion on a greenhub loop that
belongs to the calling OS thread (kept in a thread-local and reused by later calls).
These tests run in helper threads (vthread_helpers.in_thread) so that each per-thread
loop dies with its thread; the main-thread case runs in a child interpreter.
"""

import asyncio
import threading
import warnings

import pytest
from vthread_helpers import (  # noqa: F401 - fixture
    assert_counters_back,
    counters,
    gloop_fixture,
    in_thread,
    last_line,
    run_child,
)

import greenhub
from greenhub._task import green_coro


async def _loop_of_this_call():
    await asyncio.sleep(0)
    return asyncio.get_running_loop()


def test_no_loop_runs_to_completion_and_reuses_one_loop_per_thread():
    base = counters()

    def go():
        results = []
        loops = []
        for i in range(50):
            loops.append(greenhub.await_(_loop_of_this_call()))
            results.append(greenhub.await_(asyncio.sleep(0, i)))
        assert asyncio._get_running_loop() is None  # not left running in between
        lp = loops[0]
        return (
            results,
            all(x is lp for x in loops),
            isinstance(lp, greenhub.Loop),
            lp.is_running(),
            lp.is_closed(),
        )

    results, same, is_greenhub, running, closed = in_thread(go)
    assert results == list(range(50))
    assert same and is_greenhub
    assert not running and not closed
    # the thread is gone: so is its loop
    assert_counters_back(base, "after the thread ended")


def test_no_loop_sync_code_under_it_can_await_again():
    def inner_sync(n):
        if n == 0:
            return asyncio.current_task()
        return greenhub.await_(step(n - 1))

    async def step(n):
        await asyncio.sleep(0)
        return inner_sync(n)

    def go():
        task = greenhub.await_(step(10))
        return isinstance(task, asyncio.Task)

    assert in_thread(go)


def test_no_loop_tasks_left_behind_continue_in_the_next_call():
    # A task started by one await_ call and not awaited stays pending until the next
    # call runs the thread's loop again (run_until_complete semantics: it got its first
    # step in the last iteration of the first call); the next result is unaffected.
    def go():
        log = []

        async def starts_background():
            async def bg():
                log.append("bg start")
                await asyncio.sleep(0)
                log.append("bg end")

            asyncio.get_running_loop().create_task(bg())
            return "first"

        first = greenhub.await_(starts_background())
        after_first = list(log)
        second = greenhub.await_(asyncio.sleep(0.01, "second"))
        return first, after_first, second, log

    first, after_first, second, log = in_thread(go)
    assert (first, second) == ("first", "second")
    assert after_first == ["bg start"]
    assert log == ["bg start", "bg end"]


def test_four_os_threads_at_once_each_with_their_own_loop():
    base = counters()
    barrier = threading.Barrier(4, timeout=10)

    def go(i):
        async def c():
            barrier.wait()  # all four are inside their loops at the same time
            await asyncio.sleep(0.01)
            total = 0
            for k in range(100):
                total += (
                    greenhub.await_(asyncio.sleep(0, k)) if k % 2 else await asyncio.sleep(0, k)
                )
            return asyncio.get_running_loop(), threading.get_ident(), total

        def sync():
            return greenhub.await_(c())

        lp, ident, total = sync()
        # a second call in the same thread reuses that thread's loop
        again = greenhub.await_(_loop_of_this_call())
        return id(lp), ident, total, again is lp

    out = {}
    errors = []

    def target(i):
        try:
            out[i] = go(i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(out) == 4
    assert len({v[0] for v in out.values()}) == 4  # four distinct loops
    assert len({v[1] for v in out.values()}) == 4
    assert all(v[2] == sum(range(100)) for v in out.values())
    assert all(v[3] for v in out.values())
    out.clear()
    assert_counters_back(base, "after four no-loop threads ended")


def _other_loop_future_errors(call):
    other = asyncio.new_event_loop()
    try:
        fut = other.create_future()
        try:
            call(fut)
        except Exception as exc:  # noqa: BLE001
            return type(exc), str(exc)
        return None
    finally:
        other.close()


def test_no_loop_future_of_another_loop_raises_as_asyncio():
    def stock(fut):
        lp = asyncio.new_event_loop()
        try:
            return lp.run_until_complete(fut)
        finally:
            lp.close()

    expected = _other_loop_future_errors(stock)
    assert expected is not None and expected[0] is ValueError
    got = in_thread(_other_loop_future_errors, greenhub.await_)
    # The stock error's type; its message says which loop owns the future and what to do.
    assert got[0] is expected[0]
    assert "belongs to <_UnixSelectorEventLoop running=False closed=False" in got[1], got[1]
    assert "which is not running" in got[1]


def test_no_loop_coroutine_awaiting_a_future_of_another_loop_raises_as_asyncio():
    async def waits(fut):
        return await fut

    def norm(err):
        # the message names the task; compare without task names and addresses
        return err[0], err[1].split(" got Future")[1] if " got Future" in err[1] else err[1]

    expected = _other_loop_future_errors(lambda fut: asyncio.run(waits(fut)))
    got = in_thread(_other_loop_future_errors, lambda fut: greenhub.await_(waits(fut)))
    assert expected is not None and expected[0] is RuntimeError
    assert norm(got) == norm(expected)


def test_running_mode_future_of_another_loop_raises_as_asyncio(loop):
    # `await fut` on the parametrised loop vs greenhub.await_(fut) on greenhub.
    async def native(fut):
        return await fut

    def sync(fut):
        return greenhub.await_(fut)

    def norm(err):
        return err[0], err[1].split(" got Future")[1]

    expected = _other_loop_future_errors(lambda fut: loop.run_until_complete(native(fut)))
    assert expected[0] is RuntimeError
    if isinstance(loop, greenhub.Loop):
        from vthread_helpers import sync_task

        got = _other_loop_future_errors(lambda fut: loop.run_until_complete(sync_task(sync, fut)))
        assert norm(got) == norm(expected)


def test_no_loop_non_awaitable_raises_type_error():
    def go():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                greenhub.await_(42)
            except TypeError as exc:
                return str(exc)

    assert in_thread(go) is not None


def test_no_loop_main_thread_in_a_fresh_interpreter():
    rc, out, err = run_child(
        """
        import threading, warnings
        warnings.simplefilter("error")
        assert threading.current_thread() is threading.main_thread()
        async def which():
            await asyncio.sleep(0)
            return asyncio.get_running_loop()
        def sync_deep(n):
            return greenhub.await_(asyncio.sleep(0, n)) if n == 0 else sync_deep(n - 1)
        a = greenhub.await_(which())
        b = greenhub.await_(which())
        say("same", a is b, type(a).__name__)
        say("deep", greenhub.await_(asyncio.sleep(0, sync_deep(50))))
        c = _core.debug_counters()
        say("idle", c["handles"], c["timers"], c["coros"], c["parked"], c["loops"])
        """
    )
    assert rc == 0, err
    # idle: the per-thread loop holds one Handle (its self-pipe reader) and nothing else
    assert out == "same True Loop\ndeep 0\nidle 1 0 0 0 1\n", err
    assert err == ""  # no warnings at exit (the per-thread loop is closed by atexit)


@pytest.mark.parametrize(
    "body",
    [
        "greenhub.await_(asyncio.sleep(0))",
        "greenhub.await_(asyncio.to_thread(int))",  # the thread's loop gets an executor
    ],
    ids=["await", "executor"],
)
def test_no_loop_threads_that_end_leave_nothing_behind(body):
    # A thread's loop is closed while CPython tears down the ended thread's state.  Running
    # the loop there made asyncio re-create the thread's dict, which 3.11 never freed (3
    # memory blocks per thread, found by `make asan`); shutting the executor down there
    # started a thread, which registered a dummy Thread for the dying one (a leak on every
    # version; 3.13 prints an error for each at exit).  A fresh interpreter, so that only
    # these threads allocate.
    rc, out, err = run_child(
        f"""
        import threading

        def go():
            {body}

        def dummies():
            return [t for t in threading.enumerate() if isinstance(t, threading._DummyThread)]

        def blocks_after_threads(n):
            for _ in range(n):
                t = threading.Thread(target=go)
                t.start()
                t.join()
            for t in threading.enumerate():  # executor workers told to exit: let them
                if t is not threading.current_thread() and t not in dummies():
                    t.join()
            gc.collect()
            return sys.getallocatedblocks()

        blocks_after_threads(20)  # warm-up: free lists and caches
        before = blocks_after_threads(1)
        grown = blocks_after_threads(200) - before
        say(grown, len(dummies()))
        """
    )
    assert rc == 0, err
    grown, dummy_threads = map(int, last_line(out).split())
    # One block per thread would be 200; no growth at all is typical (0 to 3 measured).
    assert grown < 50, out
    assert dummy_threads == 0, out
    assert err == ""


# --- across OS threads ------------------------------------------------------------------


def test_stepping_a_task_from_another_thread_raises_runtime_error(gloop):
    async def main():
        t = greenhub.spawn(greenhub.await_, asyncio.sleep(0.05, "done"))
        await asyncio.sleep(0)
        coro = green_coro(t)

        def from_thread():
            try:
                coro.send(None)
            except RuntimeError as exc:
                return str(exc)

        msg = await asyncio.to_thread(from_thread)
        return msg, await t

    msg, result = gloop.run_until_complete(main())
    assert msg is not None and "thread" in msg
    assert result == "done"


def test_spawn_from_a_thread_without_a_loop_raises_runtime_error(gloop):
    async def main():
        def from_thread():
            try:
                greenhub.spawn(lambda: None)
            except RuntimeError as exc:
                return str(exc)

        return await asyncio.to_thread(from_thread)

    assert gloop.run_until_complete(main()) is not None


def test_await_from_another_thread_on_a_future_of_the_running_loop(gloop):
    # That thread has no running loop: the future is waited for on the loop that owns
    # it, which runs (before, await_ ran it on the thread's own loop, which asyncio
    # refuses deep inside: "attached to a different loop").
    async def main():
        fut = gloop.create_future()
        cancelled = gloop.create_future()

        def from_thread():
            got = greenhub.await_(fut)
            try:
                greenhub.await_(cancelled)
            except asyncio.CancelledError:
                return got, "cancelled"

        waiting = asyncio.ensure_future(asyncio.to_thread(from_thread))
        fut.set_result(7)
        await asyncio.sleep(0)
        cancelled.cancel()
        return await waiting

    assert gloop.run_until_complete(main()) == (7, "cancelled")


def test_run_coroutine_threadsafe_into_a_loop_running_virtual_threads(gloop):
    def vthread(x):
        return greenhub.await_(asyncio.sleep(0.001, x)) + 1

    async def submitted(x):
        return await greenhub.spawn(vthread, x)

    async def main():
        def from_thread():
            futs = [asyncio.run_coroutine_threadsafe(submitted(i), gloop) for i in range(20)]
            return [f.result(10) for f in futs]

        return await asyncio.to_thread(from_thread)

    assert gloop.run_until_complete(main()) == list(range(1, 21))


def test_no_loop_await_of_a_task_in_a_thread_is_isolated():
    # Two threads' no-loop calls never see each other's loop or tasks.
    def go():
        async def c():
            await asyncio.sleep(0.005)
            return len(asyncio.all_tasks())

        return greenhub.await_(c())

    results = []
    ts = [threading.Thread(target=lambda: results.append(go())) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert results == [1, 1, 1]


def test_no_loop_keyboard_interrupt_like_asyncio_run():
    # Ctrl-C during a no-loop await_ in a plain program: the awaited work is cancelled
    # (its except/finally blocks run) and KeyboardInterrupt propagates, as with
    # asyncio.run.  Reference: the same program with asyncio.run and `await`.
    stock = """
        async def work():
            try:
                asyncio.get_running_loop().call_soon(ready)
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                say("cancelled")
                raise
            finally:
                say("finally")
        try:
            asyncio.run(work())
        except KeyboardInterrupt:
            say("KeyboardInterrupt")
        """
    green = """
        def deep(n):
            if n == 0:
                try:
                    greenhub.await_(asyncio.sleep(30))
                except asyncio.CancelledError:
                    say("cancelled")
                    raise
                finally:
                    say("finally")
            return deep(n - 1)
        async def work():
            asyncio.get_running_loop().call_soon(ready)
            return deep(30)
        try:
            greenhub.await_(work())
        except KeyboardInterrupt:
            say("KeyboardInterrupt")
        """
    ref = run_child(stock, sigint=True)
    got = run_child(green, sigint=True)
    assert ref[:2] == (0, "cancelled\nfinally\nKeyboardInterrupt\n"), ref
    assert got[:2] == ref[:2], got[2]
    assert last_line(got[2]) == last_line(ref[2])
