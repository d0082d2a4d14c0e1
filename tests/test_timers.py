"""call_later / call_at and loop.time(): ordering, precision, never firing early."""

import asyncio
import time

import pytest
from support import run_once


def _busy_wait(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def _run_for(loop, seconds):
    loop.call_later(seconds, loop.stop)
    loop.run_forever()


def test_call_later_returns_timer_handle(loop):
    # isinstance(h, asyncio.TimerHandle) is checked once, in test_handles.py.
    h = loop.call_later(10, lambda: None)
    assert h.cancelled() is False
    assert isinstance(h.when(), float)
    h.cancel()
    assert h.cancelled() is True


def test_call_later_orders_by_time_not_by_scheduling(loop):
    out = []
    loop.call_later(0.03, out.append, "c")
    loop.call_later(0.01, out.append, "a")
    loop.call_later(0.02, out.append, "b")
    loop.call_later(0.04, loop.stop)
    loop.run_forever()
    assert out == ["a", "b", "c"]


def test_call_at_orders_by_time(loop):
    out = []
    now = loop.time()
    for i, dt in enumerate([0.005, 0.001, 0.003, 0.002, 0.004]):
        loop.call_at(now + dt, out.append, (dt, i))
    loop.call_at(now + 0.02, loop.stop)
    loop.run_forever()
    assert [dt for dt, _ in out] == [0.001, 0.002, 0.003, 0.004, 0.005]


def test_equal_time_timers_two_run_in_scheduling_order(loop):
    # The stock loop's heap keeps FIFO for two timers with the same deadline (not for three
    # or more: asyncio documents that order as undefined), so only two are compared.
    out = []
    when = loop.time() + 0.001
    loop.call_at(when, out.append, 1)
    loop.call_at(when, out.append, 2)
    loop.call_at(when + 0.01, loop.stop)
    loop.run_forever()
    assert out == [1, 2]


def test_equal_time_timers_all_run_in_the_same_pass(loop):
    out = []
    when = loop.time() + 0.002

    def marker():
        out.append("after")
        loop.stop()

    for i in range(50):
        loop.call_at(when, out.append, i)
    # Scheduled from the first of them, so it runs on a later pass than all 50.
    loop.call_at(when, lambda: loop.call_soon(marker))
    safety = loop.call_at(when + 10, loop.stop)  # only if marker never runs
    loop.run_forever()
    safety.cancel()
    assert sorted(out[:50]) == list(range(50))
    assert out[50:] == ["after"]


def test_zero_and_negative_delay_run_on_the_next_pass(loop):
    out = []
    loop.call_later(0, out.append, "zero")
    loop.call_later(-5, out.append, "negative")
    loop.call_at(loop.time() - 1, out.append, "past")
    run_once(loop)
    # Each expired timer runs in the first pass, earliest deadline first.
    assert out == ["negative", "past", "zero"]


def test_expired_timers_run_after_already_ready_callbacks(loop):
    out = []
    loop.call_later(0, out.append, "timer")
    loop.call_soon(out.append, "soon")
    run_once(loop)
    assert out == ["soon", "timer"]


@pytest.mark.parametrize("delay", [0.001, 0.004, 0.011, 0.023])
def test_call_later_never_fires_early(loop, delay):
    fired = []
    h = loop.call_later(delay, lambda: fired.append(loop.time()))
    _run_for(loop, delay + 0.02)
    assert len(fired) == 1
    assert fired[0] >= h.when(), f"fired {h.when() - fired[0]:.6f}s early"


def test_call_later_from_a_slow_callback_never_fires_early(loop):
    # A callback that has run for a while schedules a timer: the deadline must count from
    # the real current time, not from the time cached when the pass started.
    fired = []
    handles = []

    def slow_then_schedule():
        _busy_wait(0.02)
        handles.append(loop.call_later(0.005, fire))

    def fire():
        fired.append(loop.time())
        loop.stop()

    loop.call_soon(slow_then_schedule)
    loop.run_forever()
    assert len(fired) == 1
    assert fired[0] >= handles[0].when(), f"fired {handles[0].when() - fired[0]:.6f}s early"


def test_call_at_never_fires_early(loop):
    fired = []
    when = loop.time() + 0.007
    loop.call_at(when, lambda: fired.append(loop.time()))
    _run_for(loop, 0.03)
    assert fired and fired[0] >= when


def test_call_later_when_is_time_plus_delay(loop):
    t0 = loop.time()
    h = loop.call_later(100, lambda: None)
    t1 = loop.time()
    assert t0 + 100 <= h.when() <= t1 + 100
    h.cancel()


def test_call_at_when_is_returned_unchanged(loop):
    when = loop.time() + 123.456
    h = loop.call_at(when, lambda: None)
    assert h.when() == when
    h.cancel()


def test_call_later_accepts_int_and_float(loop):
    out = []
    loop.call_later(0, out.append, "int")
    loop.call_later(0.0, out.append, "float")
    run_once(loop)
    assert out == ["int", "float"]


def test_call_later_args_and_context(loop):
    import contextvars

    var = contextvars.ContextVar("timer_var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "timer-ctx")
    out = []
    loop.call_later(0, lambda *a: out.append((a, var.get())), 1, 2, context=ctx)
    loop.call_at(loop.time(), lambda *a: out.append((a, var.get())), 3, context=ctx)
    run_once(loop)
    assert out == [((1, 2), "timer-ctx"), ((3,), "timer-ctx")]


def test_cancelled_timer_does_not_run(loop):
    out = []
    h = loop.call_later(0.001, out.append, "cancelled")
    loop.call_later(0.002, out.append, "kept")
    h.cancel()
    _run_for(loop, 0.01)
    assert out == ["kept"]


def test_timer_cancelled_from_an_earlier_timer_in_the_same_pass(loop):
    out = []
    when = loop.time() + 0.002
    later = []

    def first():
        out.append("first")
        later[0].cancel()

    loop.call_at(when, first)
    later.append(loop.call_at(when + 1e-6, out.append, "second"))
    _run_for(loop, 0.02)
    assert out == ["first"]


def test_many_cancelled_timers_are_dropped(loop):
    out = []
    handles = [loop.call_later(0.001 + i * 1e-6, out.append, i) for i in range(1000)]
    for h in handles[::2]:
        h.cancel()
    _run_for(loop, 0.02)
    assert out == list(range(1, 1000, 2))


def test_far_timer_does_not_keep_run_until_complete_waiting(loop):
    h = loop.call_later(3600, lambda: None)

    async def main():
        await asyncio.sleep(0.001)
        return "done"

    # Waiting for the timer would take an hour: pytest's timeout would end the test.
    assert loop.run_until_complete(main()) == "done"
    assert not h.cancelled() and h.when() > loop.time() + 3000
    h.cancel()


def test_asyncio_sleep_takes_at_least_the_delay(loop):
    async def main():
        t0 = loop.time()
        await asyncio.sleep(0.01)
        return loop.time() - t0

    assert loop.run_until_complete(main()) >= 0.01


# -- loop.time() ---------------------------------------------------------------------


def test_time_is_a_float(loop):
    assert type(loop.time()) is float


def test_time_is_monotonic(loop):
    prev = loop.time()
    for _ in range(20000):
        now = loop.time()
        assert now >= prev
        prev = now


def test_time_has_sub_millisecond_resolution(loop):
    # The smallest step between two different readings: a clock that counts milliseconds
    # never shows less than one.  (The largest says nothing: the process may be descheduled
    # between two readings on a busy machine.)  Bounded by readings, not by time.
    steps = []
    prev = loop.time()
    for _ in range(1_000_000):
        now = loop.time()
        if now != prev:
            steps.append(now - prev)
            prev = now
            if len(steps) == 20:
                break
    assert len(steps) >= 2, f"loop.time() changed only {len(steps)} times"
    assert min(steps) < 0.001, f"loop.time() steps: {steps}"


def test_time_is_consistent_with_time_monotonic(loop):
    # Libraries mix time.monotonic() and loop.time(); the stock loop's clock *is*
    # time.monotonic().  Allow 1 ms for a clock read differently, not a different clock.
    for _ in range(100):
        t0 = time.monotonic()
        lt = loop.time()
        t1 = time.monotonic()
        assert t0 - 0.001 <= lt <= t1 + 0.001, (t0, lt, t1)


def test_time_is_consistent_with_time_monotonic_while_running(loop):
    samples = []

    def sample():
        t0 = time.monotonic()
        lt = loop.time()
        t1 = time.monotonic()
        samples.append((t0, lt, t1))

    for _ in range(10):
        loop.call_soon(sample)
    loop.call_later(0.002, sample)
    _run_for(loop, 0.01)
    assert len(samples) == 11
    for t0, lt, t1 in samples:
        assert t0 - 0.001 <= lt <= t1 + 0.001, (t0, lt, t1)


def test_time_advances_inside_a_callback(loop):
    # Code such as `deadline = loop.time() + x; while loop.time() < deadline: ...` must
    # terminate: time() is not frozen for the length of a pass.
    seen = []

    def busy():
        t0 = loop.time()
        _busy_wait(0.005)
        seen.append(loop.time() - t0)

    loop.call_soon(busy)
    run_once(loop)
    assert seen and seen[0] >= 0.005


def test_many_timers_fire_in_deadline_order(loop):
    import random

    rnd = random.Random(1234)
    fired = []
    now = loop.time()
    deadlines = [now + rnd.uniform(0, 0.02) for _ in range(2000)]
    handles = [loop.call_at(w, fired.append, w) for w in deadlines]
    for h in rnd.sample(handles, 500):
        h.cancel()
    expected = sorted(h.when() for h in handles if not h.cancelled())
    _run_for(loop, 0.04)
    assert fired == expected


def test_timers_rescheduled_from_timer_callbacks(loop):
    # A timer wheel in miniature: every firing cancels one pending timer and adds two.
    import random

    rnd = random.Random(99)
    pending = []
    fired = []

    def fire(tag):
        fired.append((loop.time(), tag))
        if len(fired) == 200:
            loop.stop()
        else:
            done = {t for _, t in fired}
            alive = [h for i, h in enumerate(pending) if not h.cancelled() and i not in done]
            if alive:
                rnd.choice(alive).cancel()
            for _ in range(2):
                pending.append(loop.call_later(rnd.uniform(0, 0.0005), fire, len(pending)))

    pending.append(loop.call_later(0, fire, 0))
    safety = loop.call_later(5, loop.stop)
    loop.run_forever()
    safety.cancel()
    for h in pending:
        h.cancel()
    assert len(fired) >= 200  # others due in the same pass still run
    times = [t for t, _ in fired]
    assert times == sorted(times)
    tags = [tag for _, tag in fired]
    assert len(set(tags)) == len(tags)  # nothing ran twice
    assert len(pending) > 300


@pytest.mark.parametrize("delay", [float("inf"), 1e12], ids=["inf", "1e12"])
def test_huge_delay_never_fires_and_does_not_block(loop, delay):
    out = []
    h = loop.call_later(delay, out.append, "never")
    loop.call_later(0.002, loop.stop)
    loop.run_forever()  # returns: the huge timer did not make the poll wait for it
    assert out == []
    assert h.when() >= loop.time() + delay / 2
    h.cancel()


def test_huge_negative_delay_runs_soon(loop):
    out = []
    loop.call_later(-1e12, out.append, "past")
    loop.call_at(-float("inf"), out.append, "minus-inf")
    run_once(loop)
    assert sorted(out) == ["minus-inf", "past"]


def test_a_patched_time_method_drives_the_timers(loop):
    # Tests move a loop's time by hand with mock.patch.object(loop, "time") (aiohttp's
    # keep-alive tests do): timers fire, and call_later() counts, by the patched clock.
    from unittest import mock

    fired = []
    start = loop.time()

    async def main():
        with mock.patch.object(loop, "time") as clock:
            clock.return_value = start
            loop.call_at(start + 1000, fired.append, "at")
            loop.call_later(1000, fired.append, "later")
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            before = list(fired)
            clock.return_value = start + 1000
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        return before, fired

    assert loop.run_until_complete(main()) == ([], ["at", "later"])


def test_a_subclass_clock_drives_the_timers(kind, greenhub_leak_check):
    import greenhub

    base = greenhub.Loop if kind == "greenhub" else asyncio.SelectorEventLoop

    class ManualClock(base):
        now = 0.0

        def time(self):
            return self.now

    loop = ManualClock()
    try:
        fired = []
        loop.call_later(50, fired.append, 1)
        loop.call_soon(loop.stop)
        loop.run_forever()
        first = list(fired)
        loop.now = 50.0
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert (first, fired) == ([], [1])
    finally:
        loop.close()
