"""call_soon and call_soon_threadsafe: order, arguments, context, passes, threads."""

import asyncio
import contextvars
import gc
import signal
import threading
import time
import weakref

import pytest
import support
from support import CLOSED_MSG, run_once

VAR = contextvars.ContextVar("VAR", default="unset")


def test_call_soon_runs_callbacks_fifo(loop):
    out = []
    for i in range(100):
        loop.call_soon(out.append, i)
    run_once(loop)
    assert out == list(range(100))


def test_call_soon_passes_positional_args(loop):
    out = []

    def cb(*args, **kwargs):
        out.append((args, kwargs))

    loop.call_soon(cb)
    loop.call_soon(cb, 1)
    loop.call_soon(cb, 1, "two", None, [3])
    run_once(loop)
    assert out == [((), {}), ((1,), {}), ((1, "two", None, [3]), {})]


def test_call_soon_rejects_unknown_keyword(loop):
    # Only context= is a keyword; anything else is not forwarded to the callback.
    with pytest.raises(TypeError):
        loop.call_soon(print, foo=1)


def test_call_soon_returns_a_handle(loop):
    # isinstance(h, asyncio.Handle) is checked once, in test_handles.py.
    out = []
    h = loop.call_soon(out.append, 1)
    assert h.cancelled() is False
    assert not hasattr(h, "when")
    run_once(loop)
    assert out == [1]
    assert h.cancelled() is False


def test_callback_scheduled_during_a_pass_runs_on_the_next_pass(loop):
    out = []

    def a():
        out.append("a")
        loop.call_soon(c)

    def c():
        out.append("c")

    loop.call_soon(a)
    loop.call_soon(out.append, "b")
    run_once(loop)
    # run_once's stop() was queued before c, so the pass ends before c.
    assert out == ["a", "b"]
    run_once(loop)
    assert out == ["a", "b", "c"]


def test_self_rescheduling_callback_does_not_starve_the_pass(loop):
    # A callback that keeps re-adding itself runs once per pass, not forever.
    count = 0

    def again():
        nonlocal count
        count += 1
        loop.call_soon(again)

    loop.call_soon(again)
    run_once(loop)
    assert count == 1
    run_once(loop)
    assert count == 2


def test_call_soon_context_kwarg_runs_callback_in_that_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "in-ctx")
    seen = []
    loop.call_soon(lambda: seen.append(VAR.get()), context=ctx)
    loop.call_soon(lambda: seen.append(VAR.get()))
    run_once(loop)
    assert seen == ["in-ctx", "unset"]


def test_call_soon_copies_the_current_context_at_call_time(loop):
    seen = []
    token = VAR.set("at-schedule")
    try:
        loop.call_soon(lambda: seen.append(VAR.get()))
        VAR.set("later")
    finally:
        VAR.reset(token)
    run_once(loop)
    assert seen == ["at-schedule"]


def test_context_changes_in_a_callback_do_not_leak_out(loop):
    def setter():
        VAR.set("set-in-callback")

    seen = []
    loop.call_soon(setter)
    loop.call_soon(lambda: seen.append(VAR.get()))
    run_once(loop)
    assert seen == ["unset"]
    assert VAR.get() == "unset"


def test_callbacks_sharing_a_context_see_each_others_changes(loop):
    ctx = contextvars.copy_context()
    seen = []
    loop.call_soon(VAR.set, "shared", context=ctx)
    loop.call_soon(lambda: seen.append(VAR.get()), context=ctx)
    run_once(loop)
    assert seen == ["shared"]
    assert ctx[VAR] == "shared"


def test_call_soon_context_none_means_copy_current(loop):
    seen = []
    token = VAR.set("current")
    try:
        loop.call_soon(lambda: seen.append(VAR.get()), context=None)
    finally:
        VAR.reset(token)
    run_once(loop)
    assert seen == ["current"]


def test_running_loop_is_visible_in_callbacks(loop):
    seen = []
    loop.call_soon(lambda: seen.append(asyncio.get_running_loop()))
    run_once(loop)
    assert seen == [loop]
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_loop_releases_callback_args_after_running(loop):
    class Arg:
        pass

    arg = Arg()
    ref = weakref.ref(arg)
    loop.call_soon(lambda a: None, arg)
    del arg
    assert ref() is not None  # the queued handle holds it
    run_once(loop)
    gc.collect()
    assert ref() is None


# -- call_soon_threadsafe ------------------------------------------------------------


def test_call_soon_threadsafe_from_loop_thread_behaves_like_call_soon(loop):
    out = []
    h = loop.call_soon_threadsafe(out.append, 1)
    loop.call_soon(out.append, 2)
    loop.call_soon_threadsafe(out.append, 3)
    assert h.cancelled() is False
    run_once(loop)
    assert out == [1, 2, 3]


def test_call_soon_threadsafe_context_kwarg(loop):
    ctx = contextvars.copy_context()
    ctx.run(VAR.set, "ts-ctx")
    seen = []
    loop.call_soon_threadsafe(lambda: seen.append(VAR.get()), context=ctx)
    run_once(loop)
    assert seen == ["ts-ctx"]


class NotWoken(Exception):
    pass


def _wake_from_thread(loop, thread_action, *, far_timer):
    """Run the loop idle (optionally with a far timer) and wake it from another thread.

    If the wake-up is lost the loop would sleep for good (the far timer is an hour
    away); a watchdog - a hang detector, not a measure of promptness - then interrupts
    the main thread with SIGUSR2, whose handler raises NotWoken out of run_forever().
    """
    running = threading.Event()
    errors = []

    def other_thread():
        try:
            assert running.wait(5)
            # Give the loop time to go to sleep in its poll, then wake it.
            time.sleep(0.03)
            thread_action()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    patience = support.hang_timeout(20)

    def not_woken(signum, frame):
        raise NotWoken(f"the loop was not woken: still asleep after {patience} s")

    if far_timer:
        loop.call_later(3600, lambda: None)
    loop.call_soon(running.set)
    t = threading.Thread(target=other_thread)
    old_handler = signal.signal(signal.SIGUSR2, not_woken)
    watchdog = threading.Timer(
        patience, signal.pthread_kill, (threading.get_ident(), signal.SIGUSR2)
    )
    t.start()
    watchdog.start()
    try:
        loop.run_forever()
    finally:
        watchdog.cancel()
        watchdog.join(5)
        signal.signal(signal.SIGUSR2, old_handler)
        t.join(5)
    assert not errors, errors


@pytest.mark.parametrize("far_timer", [True, False], ids=["far-timer", "no-timer"])
def test_call_soon_threadsafe_wakes_a_sleeping_loop(loop, far_timer):
    # Woken, run_forever() returns; asleep for good, NotWoken fails the test.
    _wake_from_thread(loop, lambda: loop.call_soon_threadsafe(loop.stop), far_timer=far_timer)


def test_call_soon_threadsafe_callback_runs_on_loop_thread(loop):
    seen = []

    def record():
        seen.append(threading.get_ident())
        loop.stop()

    _wake_from_thread(loop, lambda: loop.call_soon_threadsafe(record), far_timer=True)
    assert seen == [threading.get_ident()]


def test_call_soon_threadsafe_many_threads_all_delivered(loop):
    n_threads, per_thread = 4, 250
    got = []
    go = threading.Event()

    def producer(k):
        go.wait(5)
        for i in range(per_thread):
            loop.call_soon_threadsafe(got.append, (k, i))

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()

    async def main():
        go.set()
        deadline = loop.time() + 10
        while len(got) < n_threads * per_thread and loop.time() < deadline:
            await asyncio.sleep(0.001)

    try:
        loop.run_until_complete(main())
    finally:
        for t in threads:
            t.join(5)
    assert len(got) == n_threads * per_thread
    for k in range(n_threads):
        # Each producer's callbacks keep their order.
        assert [i for (kk, i) in got if kk == k] == list(range(per_thread))


def test_call_soon_threadsafe_before_run_is_not_lost(loop):
    out = []
    t = threading.Thread(target=lambda: loop.call_soon_threadsafe(out.append, "x"))
    t.start()
    t.join(5)
    run_once(loop)
    assert out == ["x"]


def test_call_soon_threadsafe_racing_with_close(loop):
    # Another thread keeps scheduling while the loop runs and then closes: every call
    # either succeeds or raises "Event loop is closed"; nothing crashes or hangs.
    outcomes = {"ok": 0, "closed": 0, "other": []}
    stop = threading.Event()
    started = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                loop.call_soon_threadsafe(int)
                outcomes["ok"] += 1
            except RuntimeError as exc:
                if str(exc) == CLOSED_MSG:
                    outcomes["closed"] += 1
                    return
                outcomes["other"].append(exc)
                return
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                outcomes["other"].append(exc)
                return
            started.set()

    t = threading.Thread(target=hammer)
    t.start()
    try:
        assert started.wait(5)
        for _ in range(20):
            run_once(loop)
        loop.close()
        t.join(5)
    finally:
        stop.set()
        t.join(5)
    assert outcomes["other"] == []
    assert outcomes["ok"] > 0
    assert outcomes["closed"] == 1
