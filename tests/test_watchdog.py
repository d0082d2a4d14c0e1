"""The watchdog (src/watchdog.c, greenhub/_watchdog.py): a native thread that reports a
callback or task step holding the loop longer than a threshold, with its stack at the
time, through the loop's exception handler or set_watchdog()'s handler.

The API is greenhub's own (the stock loop has no watchdog), so these tests run on
greenhub only.  Timing margins are wide: blocking episodes last 0.3 s against thresholds
of 0.05 s, and "not blocked" cases never hold the loop for more than a few ms against
0.2 s."""

import asyncio
import os
import re
import sys
import time

import pytest
from vthread_helpers import gloop_fixture, run_child  # noqa: F401 - fixture

import greenhub
from greenhub import _core


def native_threads(expect=None):
    """The process's OS threads.  A joined thread can stay listed in /proc for a moment
    (the kernel wakes the joiner before it reaps the thread), so with `expect` this
    waits up to a second for the count to settle there."""
    deadline = time.monotonic() + 1.0
    while True:
        n = len(os.listdir("/proc/self/task"))
        if expect is None or n == expect or time.monotonic() > deadline:
            return n
        time.sleep(0.005)


def sleeps_in_sync_code(seconds):
    time.sleep(seconds)


def reports_of(loop):
    reports = []
    loop.set_watchdog(0.05, handler=lambda lp, ctx: reports.append((lp, ctx)))
    return reports


def test_blocking_task_is_reported_with_its_stack(gloop):
    reports = reports_of(gloop)

    async def blocker():
        sleeps_in_sync_code(0.3)

    async def main():
        task = asyncio.create_task(blocker(), name="the-blocker")
        await task
        await asyncio.sleep(0)  # the report is delivered by then
        return task

    task = gloop.run_until_complete(main())
    assert len(reports) == 1, reports
    lp, ctx = reports[0]
    assert lp is gloop
    assert ctx["task"] is task
    assert "handle" not in ctx
    assert "Task 'the-blocker' blocked the event loop for" in ctx["message"]
    assert 0.25 <= ctx["blocked_for"] < 5
    assert ctx["threshold"] == 0.05
    names = [f.name for f in ctx["stack"]]
    # Outermost first, as a traceback: the coroutine, then the function, then the sleep;
    # nothing of greenhub's below the coroutine (the worker greenlet's base frames).
    assert names == ["blocker", "sleeps_in_sync_code"], names
    assert "time.sleep(seconds)" in repr(ctx["stack"])


def test_report_goes_to_the_exception_handler_by_default(gloop):
    seen = []
    gloop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
    gloop.set_watchdog(0.05)
    assert gloop.get_watchdog() == 0.05

    async def main():
        sleeps_in_sync_code(0.3)
        await asyncio.sleep(0)

    gloop.run_until_complete(main())
    assert len(seen) == 1
    assert "blocked the event loop" in seen[0]["message"]
    assert "sleeps_in_sync_code" in repr(seen[0]["stack"])


def test_default_exception_handler_prints_the_stack(gloop, caplog):
    gloop.set_watchdog(0.05)

    async def main():
        sleeps_in_sync_code(0.3)
        await asyncio.sleep(0)

    with caplog.at_level("ERROR", logger="asyncio"):
        gloop.run_until_complete(main())
    text = caplog.text
    assert "blocked the event loop" in text
    assert "stack: (most recent call last):" in text
    assert "in sleeps_in_sync_code" in text


def test_virtual_thread_blocking_under_await_is_reported(gloop):
    reports = reports_of(gloop)

    def deep():
        greenhub.await_(asyncio.sleep(0.01))
        sleeps_in_sync_code(0.3)

    async def main():
        await greenhub.spawn(deep)
        await asyncio.sleep(0)

    gloop.run_until_complete(main())
    assert len(reports) == 1
    assert [f.name for f in reports[0][1]["stack"]][-2:] == ["deep", "sleeps_in_sync_code"]


def test_blocking_callback_is_reported_with_its_handle(gloop):
    reports = reports_of(gloop)

    async def main():
        gloop.call_soon(sleeps_in_sync_code, 0.3)
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)

    gloop.run_until_complete(main())
    assert len(reports) == 1
    ctx = reports[0][1]
    assert "task" not in ctx
    assert "sleeps_in_sync_code" in repr(ctx["handle"])
    assert ctx["message"].startswith("Callback <Handle sleeps_in_sync_code")
    assert [f.name for f in ctx["stack"]][-1] == "sleeps_in_sync_code"


def test_one_report_per_episode(gloop):
    reports = reports_of(gloop)

    async def main():
        sleeps_in_sync_code(0.3)  # an episode of 6 thresholds
        await asyncio.sleep(0)
        sleeps_in_sync_code(0.3)  # a second episode
        await asyncio.sleep(0)

    gloop.run_until_complete(main())
    assert len(reports) == 2


def test_back_to_back_episodes_each_report_their_own_duration(gloop):
    # Three tasks that each block for 0.3 s, one after the other in one iteration: the
    # three reports are delivered together after the last, and each says how long its
    # own task blocked (before: the time until delivery, 0.9, 0.6 and 0.3 s).
    reports = reports_of(gloop)

    async def blocker():
        sleeps_in_sync_code(0.3)

    async def main():
        start = time.monotonic()
        await asyncio.gather(blocker(), blocker(), blocker())
        elapsed = time.monotonic() - start
        await asyncio.sleep(0)
        return elapsed

    elapsed = gloop.run_until_complete(main())
    durations = [ctx["blocked_for"] for _, ctx in reports]
    assert len(durations) == 3, durations
    # Each within a sample (threshold/4) of the others, and together no more than the
    # time all three took: relations, not thresholds.
    assert max(durations) < 1.5 * min(durations), durations
    assert sum(durations) < 1.1 * elapsed, (durations, elapsed)
    assert all(f"for {ctx['blocked_for']:.3f} seconds" in ctx["message"] for _, ctx in reports)


def test_task_that_yields_often_is_never_reported(gloop):
    reports = []
    gloop.set_watchdog(0.2, handler=lambda lp, ctx: reports.append(ctx))

    async def busy_but_polite():
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            t = time.monotonic() + 0.002
            while time.monotonic() < t:  # 2 ms of work per step
                pass
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(busy_but_polite(), busy_but_polite())

    gloop.run_until_complete(main())
    assert reports == []


def test_idle_loop_is_never_reported(gloop):
    reports = reports_of(gloop)
    gloop.run_until_complete(asyncio.sleep(0.3))  # waits in the poll
    assert reports == []


def gil_holding_range(seconds):
    """A range() that sum() takes about `seconds` over: sum() of ints runs in C and
    never lets the GIL go."""
    n = 2_000_000
    t0 = time.perf_counter()
    sum(range(n))
    per_item = (time.perf_counter() - t0) / n
    return range(int(seconds / max(per_item, 1e-9)))


def test_gil_holding_c_call_is_reported_when_it_returns(gloop):
    # The watchdog gets the GIL only after sum() returns.  Python 3.11 and 3.12 hand it
    # over at the next bytecode, still in the blocked callback: the stack shows the
    # call.  3.13 may not before the callback returns: then there is no stack.
    numbers = gil_holding_range(0.4)
    reports = reports_of(gloop)

    def holds_the_gil():
        sum(numbers)

    async def main():
        gloop.call_soon(holds_the_gil)
        await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)  # a poll that lets the GIL go, for the report

    gloop.run_until_complete(main())
    assert len(reports) == 1, reports
    ctx = reports[0][1]
    if sys.version_info < (3, 13):
        assert ctx["stack"][-1].name == "holds_the_gil"
    else:
        assert ctx["stack"] is None or ctx["stack"][-1].name == "holds_the_gil"
    assert ctx["blocked_for"] >= 0.1  # threshold 0.05; sum() calibrated to ~0.4 s


def test_gil_holding_c_callback_is_reported_without_a_stack(gloop):
    # The callback is the C function itself: when it returns, the loop goes on in C to
    # the next callback or the poll, and the episode is over before the watchdog gets
    # the GIL.
    numbers = gil_holding_range(0.4)
    reports = reports_of(gloop)

    async def main():
        gloop.call_soon(sum, numbers)
        await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)  # a poll that lets the GIL go, for the report

    gloop.run_until_complete(main())
    assert len(reports) == 1, reports
    ctx = reports[0][1]
    assert ctx["stack"] is None
    assert "no stack" in ctx["message"]
    assert ctx["blocked_for"] >= 0.1  # threshold 0.05; sum() calibrated to ~0.4 s


def test_watchdog_thread_lives_while_the_loop_runs(gloop):
    time.sleep(0.05)  # threads of earlier tests are gone
    before = native_threads()
    gloop.set_watchdog(0.05)
    assert native_threads(before) == before  # not running: no thread yet
    during = []

    async def main():
        during.append(native_threads(before + 1))
        gloop.set_watchdog(None)  # off while running: the thread goes at once
        during.append(native_threads(before))
        gloop.set_watchdog(0.1)
        during.append(native_threads(before + 1))

    gloop.run_until_complete(main())
    assert during == [before + 1, before, before + 1]
    assert native_threads(before) == before  # stopped with the loop
    gloop.run_until_complete(asyncio.sleep(0))
    assert native_threads(before) == before
    gloop.close()
    assert native_threads(before) == before


def test_off_by_default_and_set_watchdog_none(gloop):
    assert gloop.get_watchdog() is None
    gloop.set_watchdog(0.5)
    assert gloop.get_watchdog() == 0.5
    gloop.set_watchdog(None)
    assert gloop.get_watchdog() is None
    before = native_threads()
    gloop.run_until_complete(asyncio.sleep(0))
    assert native_threads(before) == before


@pytest.mark.parametrize(
    "args, kwargs, exc, pattern",
    [
        ((0,), {}, ValueError, "positive number of seconds"),
        ((-1.0,), {}, ValueError, "positive number of seconds"),
        ((float("nan"),), {}, ValueError, "positive number of seconds"),
        ((float("inf"),), {}, ValueError, "positive number of seconds"),
        (("0.1",), {}, TypeError, "number of seconds or None, not str"),
        ((True,), {}, TypeError, "not bool"),
        ((), {}, TypeError, "one positional argument"),
        ((0.1, 2), {}, TypeError, "one positional argument"),
        ((0.1,), {"handler": 3}, TypeError, "must be a callable"),
        ((0.1,), {"bogus": 1}, TypeError, "unexpected keyword argument 'bogus'"),
    ],
)
def test_bad_arguments(gloop, args, kwargs, exc, pattern):
    with pytest.raises(exc, match=re.escape(pattern)):
        gloop.set_watchdog(*args, **kwargs)
    assert gloop.get_watchdog() is None


def test_greenhub_run_watchdog_argument(greenhub_leak_check):
    seen = []

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda lp, ctx: seen.append(ctx))
        assert asyncio.get_running_loop().get_watchdog() == 0.05
        sleeps_in_sync_code(0.3)
        await asyncio.sleep(0)

    greenhub.run(main(), watchdog=0.05)
    assert len(seen) == 1

    coro = main()
    with pytest.raises(ValueError, match="positive number"):
        greenhub.run(coro, watchdog=-1)
    coro.close()


def test_report_after_loop_closed_is_dropped(gloop):
    # A loop stopped from inside the blocking callback: the report is queued on a loop
    # that stops, then closes; nothing runs it and nothing leaks.
    reports = reports_of(gloop)

    def block_then_stop():
        sleeps_in_sync_code(0.3)
        gloop.stop()

    gloop.call_soon(block_then_stop)
    gloop.run_forever()
    gloop.close()
    assert reports == []


def test_environment_variable_and_daemon_thread_at_exit(monkeypatch):
    # GREENHUB_WATCHDOG sets every new loop's threshold.  The interpreter exits while a
    # loop in a daemon thread is blocked and watched: no crash, no hang.
    body = """
    import os, threading, time
    loop = greenhub.new_event_loop()
    say("threshold", loop.get_watchdog())
    loop.set_exception_handler(lambda lp, ctx: say("report", ctx["task"].get_name(),
                               [f.name for f in ctx["stack"]][-1]))
    def blocked():
        time.sleep(0.3)
    async def main():
        blocked()
        await asyncio.sleep(0)
    loop.run_until_complete(main())
    loop.close()

    def forever():
        lp = greenhub.new_event_loop()
        async def spin():
            while True:
                time.sleep(0.05)   # blocks the loop again and again
                await asyncio.sleep(0)
        lp.run_until_complete(spin())
    threading.Thread(target=forever, daemon=True).start()
    time.sleep(0.3)
    say("exiting")
    """
    monkeypatch.setenv("GREENHUB_WATCHDOG", "0.02")
    rc, out, err = run_child(body)
    assert rc == 0, (out, err)
    lines = out.splitlines()
    assert lines[0] == "threshold 0.02"
    assert "report Task-1 blocked" in lines
    assert lines[-1] == "exiting"


def test_environment_variable_bad_value(monkeypatch):
    monkeypatch.setenv("GREENHUB_WATCHDOG", "soon")
    rc, out, err = run_child("greenhub.new_event_loop()\n")
    assert rc == 1
    assert "ValueError: GREENHUB_WATCHDOG=soon: expected a threshold in seconds" in err
    # Refused before the Loop exists: no half-made loop whose __del__ then fails.
    assert "Exception ignored" not in err, err


def test_no_leak_over_many_reports(gloop):
    # A refcount-delta loop over the C paths: reports with stacks, tasks and handles,
    # threads started and stopped.
    marker = object()

    async def episode():
        sleeps_in_sync_code(0.012)
        return marker

    gloop.set_watchdog(0.002, handler=lambda lp, ctx: None)
    for _ in range(3):  # warm up
        gloop.run_until_complete(episode())
    refs = sys.getrefcount(marker)
    blocks = sys.getallocatedblocks()
    for _ in range(40):
        gloop.run_until_complete(episode())
    assert sys.getrefcount(marker) == refs
    assert sys.getallocatedblocks() - blocks < 400
    assert _core.debug_counters()["parked"] == 0


def test_ctrl_c_still_interrupts_a_watched_loop():
    # The watchdog thread blocks every signal, so SIGINT still ends the loop's poll.
    rc, out, err = run_child(
        """
        loop = greenhub.new_event_loop()
        loop.set_watchdog(0.02)
        loop.call_soon(ready)
        try:
            loop.run_until_complete(asyncio.sleep(30))
        except KeyboardInterrupt:
            say("KeyboardInterrupt")
        loop.close()
        """,
        sigint=True,
    )
    assert rc == 0, err
    assert out.splitlines() == ["ready", "KeyboardInterrupt"] or out.strip() == "KeyboardInterrupt"


def test_set_watchdog_from_another_thread_while_running(gloop):
    # Switched on and off from another OS thread while the loop runs and blocks: no
    # deadlock (the joins release the GIL), and the last setting holds.
    import threading

    reports = []
    stop = threading.Event()

    def toggler():
        while not stop.is_set():
            gloop.set_watchdog(0.01, handler=lambda lp, ctx: reports.append(ctx))
            time.sleep(0.002)
            gloop.set_watchdog(None)
            time.sleep(0.002)
        gloop.set_watchdog(0.01, handler=lambda lp, ctx: reports.append(ctx))

    async def main(episodes, seconds):
        for _ in range(episodes):
            sleeps_in_sync_code(seconds)
            await asyncio.sleep(0.005)

    t = threading.Thread(target=toggler)
    t.start()
    try:
        gloop.run_until_complete(main(20, 0.02))
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
    assert gloop.get_watchdog() == 0.01
    reports.clear()
    gloop.run_until_complete(main(3, 0.15))
    assert len(reports) == 3


def test_worker_base_file_name_matches_the_worker_code():
    # _watchdog recognises the worker greenlet's base frames by their file name.
    from greenhub import _vthread, _watchdog

    assert _watchdog._WORKER_BASE_FILE == _vthread._WORKER_BASE.co_filename
