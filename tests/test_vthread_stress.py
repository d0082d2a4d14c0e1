"""Stress: 10,000 concurrent virtual threads, each doing 20 await_ calls (sleep(0) or
short random sleeps; one of them re-entrant, in a child greenlet or 30 frames deep), with cancellations and asyncio.timeout expiries.

Every task's outcome is predicted from its plan and checked:

- "ok":       returns the sum of what its await_ calls returned;
- "cancel":   blocks at a chosen step; cancelled at a random time (some before they
              start) -> cancelled;
- "race":     cancelled when another random task ends (so at times spread over the
              whole run), while running normally: cancel() returned True -> cancelled,
              False -> its result;
- "timeout":  blocks at a chosen step inside asyncio.timeout(short) -> TimeoutError,
              with cancelling() back to 0;
- "tmo-race": asyncio.timeout that expires when another random task ends, while running
              normally -> its result or TimeoutError, never CancelledError, cancelling()
              back to 0.

Each virtual thread checks at every step that current_task(), its context variable
and (for half of them) greenlet.getcurrent() are its own, and that a finally block ran
once for every function that started.  After the loop is closed greenhub's counters are
back to zero, and the number of gc-tracked objects does not grow from one run to the next.
"""

import asyncio
import collections
import contextvars
import functools
import gc
import random
import time

import greenlet
from vthread_helpers import assert_counters_back, counters

import greenhub

N = 10_000
STEPS = 20
RUNS = 3  # gc-tracked objects must not grow from the second run to the third
GC_OBJECTS_TOLERANCE = 50

VAR = contextvars.ContextVar("stress_var")


def make_plan(seed):
    rnd = random.Random(seed)
    plans = []
    for i in range(N):
        kind = rnd.choices(["ok", "cancel", "race", "timeout", "tmo-race"], [50, 15, 15, 10, 10])[0]
        delays = [0 if rnd.random() < 0.75 else rnd.uniform(0, 0.003) for _ in range(STEPS)]
        plans.append(
            {
                "kind": kind,
                "delays": delays,
                "block_at": rnd.randrange(STEPS),
                # "cancel": at a random time (10% before their first step)
                "cancel_at": 0 if rnd.random() < 0.1 else rnd.uniform(0, 0.05),
                # "race" / "tmo-race": when another, random task finishes (time-independent
                # spread over the whole run; 10% of races are cancelled before starting)
                "trigger": -1 if rnd.random() < 0.1 else rnd.randrange(N),
                # one step of each task takes a special path (see _one_step)
                "special_at": rnd.randrange(STEPS),
                "shape": i % 4,
            }
        )
    return plans


def _wait(i, k, d):
    return greenhub.await_(asyncio.sleep(d, k))


async def _reenter(i, k, d):
    await asyncio.sleep(0)
    return _wait(i, k, d)


def _one_step(i, k, d, shape):
    if shape == 1:  # re-entrant: sync -> await_ -> async -> sync -> await_
        return greenhub.await_(_reenter(i, k, d))
    if shape == 2:  # inside a third-party child greenlet
        return greenlet.greenlet(_wait).switch(i, k, d)
    return _wait(i, k, d)


def _deep(n, fn, *args):
    return fn(*args) if n == 0 else _deep(n - 1, fn, *args)


def vthread(i, plan, journal):
    journal["started"].append(i)
    task = asyncio.current_task()
    hold = greenlet.getcurrent() if i % 2 else None
    blocking = plan["kind"] in ("cancel", "timeout")
    acc = 0
    try:
        for k, d in enumerate(plan["delays"]):
            if blocking and k == plan["block_at"]:
                greenhub.await_(asyncio.sleep(3600))
            if k != plan["special_at"]:
                acc += greenhub.await_(asyncio.sleep(d, k))
            elif plan["shape"] == 3:  # 30 sync frames deep
                acc += _deep(30, _one_step, i, k, d, 0)
            else:
                acc += _one_step(i, k, d, plan["shape"])
            assert VAR.get() == i, "context of another task"
            assert asyncio.current_task() is task, "current_task of another task"
            if hold is not None:
                assert greenlet.getcurrent() is hold, "greenlet changed between steps"
        return acc
    finally:
        journal["finally"].append(i)


async def runner(i, plan, journal, timeouts):
    VAR.set(i)
    kind = plan["kind"]
    if kind == "timeout":
        try:
            async with asyncio.timeout(0.002):  # noqa: ASYNC100 - sync code waits
                return vthread(i, plan, journal)
        except TimeoutError:
            return ("timeout", asyncio.current_task().cancelling())
    if kind == "tmo-race":
        try:
            async with asyncio.timeout(None) as cm:  # noqa: ASYNC100 - sync code waits
                timeouts[i] = cm  # another task's end makes it expire (see stress())
                return vthread(i, plan, journal)
        except TimeoutError:
            return ("timeout", asyncio.current_task().cancelling())
    async with asyncio.timeout(600):  # noqa: ASYNC100 - never expires: the no-expiry path
        return vthread(i, plan, journal)


async def stress(plans):
    loop = asyncio.get_running_loop()
    journal = {"started": [], "finally": []}
    cancel_returned = {}
    timeouts = {}
    tasks = [loop.create_task(runner(i, p, journal, timeouts)) for i, p in enumerate(plans)]

    def cancel(i, _=None):
        cancel_returned[i] = tasks[i].cancel()

    def expire(i, _=None):
        cm = timeouts.get(i)
        if cm is not None and not tasks[i].done():
            cm.reschedule(loop.time())

    for i, p in enumerate(plans):
        if p["kind"] == "cancel":
            if p["cancel_at"] == 0:
                cancel(i)  # before its first step
            else:
                loop.call_later(p["cancel_at"], cancel, i)
        elif p["kind"] == "race":
            if p["trigger"] < 0:
                cancel(i)
            else:
                tasks[p["trigger"]].add_done_callback(functools.partial(cancel, i))
        elif p["kind"] == "tmo-race" and p["trigger"] >= 0:
            tasks[p["trigger"]].add_done_callback(functools.partial(expire, i))
    _, pending = await asyncio.wait(tasks, timeout=30)
    assert not pending, f"{len(pending)} virtual threads never finished"
    return tasks, journal, cancel_returned


def check_outcomes(plans, tasks, journal, cancel_returned):
    expect = STEPS * (STEPS - 1) // 2
    tally = collections.Counter()
    for i, (t, p) in enumerate(zip(tasks, plans, strict=True)):
        kind = p["kind"]
        if t.cancelled():
            outcome = "cancelled"
        elif t.exception() is not None:
            raise AssertionError(f"task {i} ({kind}) raised {t.exception()!r}")
        else:
            outcome = t.result()
        if kind == "ok":
            assert outcome == expect, (i, kind, outcome)
        elif kind == "cancel":
            assert cancel_returned[i] is True and outcome == "cancelled", (i, kind, outcome)
        elif kind == "race":
            want = "cancelled" if cancel_returned[i] else expect
            assert outcome == want, (i, kind, outcome, cancel_returned[i])
        elif kind == "timeout":
            assert outcome == ("timeout", 0), (i, kind, outcome)
        else:  # tmo-race
            assert outcome in (expect, ("timeout", 0)), (i, kind, outcome)
        tally[kind, outcome if not isinstance(outcome, int) else "result"] += 1
    started = collections.Counter(journal["started"])
    finished = collections.Counter(journal["finally"])
    assert started == finished, "a started virtual thread did not run its finally block"
    assert max(started.values()) == 1
    return tally


def run_stress(seed):
    plans = make_plan(seed)
    loop = greenhub.new_event_loop()
    loop.set_debug(False)  # the same test under `python -X dev`
    try:
        tasks, journal, cancel_returned = loop.run_until_complete(stress(plans))
        tally = check_outcomes(plans, tasks, journal, cancel_returned)
    finally:
        loop.close()
    del loop, tasks, journal, plans
    return tally


def _live_types():
    gc.collect()
    objs = gc.get_objects()
    n = len(objs)
    kinds = collections.Counter(
        type(o).__name__
        for o in objs
        # type(), not isinstance(): isinstance() reads o.__class__, which lazy
        # proxies (Django's unconfigured settings) answer by raising.
        if issubclass(type(o), (asyncio.Future, greenlet.greenlet, greenhub.Loop))
    )
    del objs
    return n, kinds


def test_10000_virtual_threads_with_cancellations_and_timeouts(greenhub_leak_check):
    base = counters()
    t0 = time.monotonic()
    sizes = []
    for run_no in range(RUNS):
        tally = run_stress(seed=run_no)
        assert_counters_back(base, f"after stress run {run_no}")
        sizes.append(_live_types())
        # every planned kind and outcome occurred
        assert tally["ok", "result"] > 0
        assert tally["cancel", "cancelled"] > 0
        assert tally["race", "cancelled"] > 0 and tally["race", "result"] > 0
        assert tally["timeout", ("timeout", 0)] > 0
        assert tally["tmo-race", ("timeout", 0)] > 0 and tally["tmo-race", "result"] > 0
        print(f"run {run_no}: {time.monotonic() - t0:.1f}s {dict(tally)}")
    (n1, kinds1), (n2, kinds2) = sizes[-2], sizes[-1]
    assert n2 - n1 <= GC_OBJECTS_TOLERANCE, f"gc objects grew by {n2 - n1} between runs"
    assert kinds2 == kinds1, f"live futures/greenlets/loops changed: {kinds1} -> {kinds2}"
    assert not kinds2.get("Loop"), kinds2
