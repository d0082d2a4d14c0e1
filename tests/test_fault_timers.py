"""Numeric edges of every time argument: the loop's timers, asyncio's timeouts built on
them, TimerHandle ordering, an overridden time(), and greenhub's own waits.

Each scenario runs on the stock loop and on greenhub (``both_loops``) - or, for greenhub's
blocking primitives, against `threading`/`queue`/`time`/`socket` - and the outcomes
(result, exception type and message, when()'s value and type, callback order) must be
equal.  Where the stock behaviour is itself broken, the test says so and checks
greenhub's documented behaviour instead (docs/design.md, "Timer deadlines"):

- a NaN deadline is filed as -inf, so it is due at once; heapq leaves a NaN wherever its
  comparisons (all false) put it, so on the stock loop it may wait behind timers
  scheduled before it, and 3.13's selector raises ValueError for a NaN poll timeout;
- a timer whose heappush() comparison fails stays in asyncio's heap and breaks every
  later iteration; greenhub does not schedule it;
- with time() stuck at +/-inf, asyncio spins without running a timer due then;
- up to 3.13, threading's Condition.wait_for, Semaphore.acquire and queue get/put spin
  forever on a NaN timeout (Condition.wait(nan) does not block, and the NaN deadline never
  passes); greenhub's counterparts treat the NaN deadline as passed.  From 3.14
  Condition.wait(nan) raises ValueError, so they raise it at once, and greenhub does too.

No scenario waits for a real timer beyond a few hundredths of a second: deadlines are in
the past, or far in the future and never reached, and the loops stop on a readable fd or
a reference timer.
"""

import asyncio
import math
import queue
import socket
import sys
import threading
import time
from decimal import Decimal
from fractions import Fraction

import pytest

import greenhub
import greenhub.socket as gsocket
from greenhub import _core
from greenhub import sync as gsync

PY313 = sys.version_info >= (3, 13)

# 3.13's _run_once passes a NaN poll timeout on to selectors, whose math.ceil(nan * 1e3)
# raises: the stock loop is broken for good by a NaN timer that is the earliest while it
# idles.  greenhub does what 3.11 and 3.12 do there (the timer is due at once).
NAN_SELECT_ERROR = ("raise", "ValueError", "cannot convert float NaN to integer")


def stock_broken_by_nan(stock_outcome):
    return PY313 and stock_outcome == NAN_SELECT_ERROR


class FloatOnly:
    """A number-like object with __float__ and nothing else (no comparisons)."""

    def __init__(self, v):
        self.v = v

    def __float__(self):
        return float(self.v)

    def __repr__(self):
        return f"FloatOnly({self.v})"


class IndexOnly:
    def __init__(self, v):
        self.v = v

    def __index__(self):
        return int(self.v)

    def __repr__(self):
        return f"IndexOnly({self.v})"


class FloatRaises:
    def __float__(self):
        raise ZeroDivisionError("no float for you")

    def __repr__(self):
        return "FloatRaises()"


class FloatSub(float):
    pass


class IntSub(int):
    pass


EDGES = {
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "negative": -1.0,
    "zero": 0,
    "zero-float": 0.0,
    "1e308": 1e308,
    "-1e308": -1e308,
    "10**400": 10**400,
    "-10**400": -(10**400),
    "True": True,
    "False": False,
    "Decimal": Decimal("0.01"),
    "Decimal-nan": Decimal("NaN"),
    "Fraction": Fraction(1, 100),
    "float-only": FloatOnly(0.01),
    "index-only": IndexOnly(0),
    "float-raises": FloatRaises(),
    "float-subclass": FloatSub(0.01),
    "int-subclass": IntSub(0),
    "str": "1",
}
EDGE_IDS = list(EDGES)


def outcome(fn):
    """('ok', value) or ('raise', type name, message): comparable between runs."""
    try:
        return ("ok", fn())
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome
        return ("raise", type(exc).__name__, str(exc))


def when_info(h):
    """when() as asyncio reports it; a deadline computed from the clock is only 'finite'."""
    w = h.when()
    if isinstance(w, (int, float, Fraction)) and 1.5 < abs(w) < 1e15:
        return (type(w).__name__, "clock")  # read from time(): differs between two runs
    return (type(w).__name__, repr(w))


# --- call_at / call_later -----------------------------------------------------------


def _schedule(loop, api, value, ev):
    if api == "call_at":
        return loop.call_at(value, ev.append, "edge")
    return loop.call_later(value, ev.append, "edge")


def _alone(loop, api, value):
    """The edge timer is the only timer, so it is the earliest when the loop computes its
    poll timeout.  The loop stops on a reader of an fd that is readable already: one
    iteration, with an idle poll, no thread and no wait."""
    ev = []
    r, w = socket.socketpair()
    try:
        w.send(b"x")
        first = outcome(lambda: when_info(_schedule(loop, api, value, ev)))
        if first[0] == "ok":
            loop.add_reader(r, loop.stop)
            run = outcome(loop.run_forever)
            loop.remove_reader(r)
            if run[0] == "raise":
                first = run
        return first, ev
    finally:
        r.close()
        w.close()


def _behind_ref(loop, api, value):
    """A reference timer is scheduled first, so heappush() compares the edge with it; the
    reference stops the loop (0.01 s later)."""
    ev = []
    loop.call_later(0.01, lambda: (ev.append("ref"), loop.stop()))
    call = outcome(lambda: when_info(_schedule(loop, api, value, ev)))
    run = outcome(loop.run_forever)
    return call, run, ev


@pytest.mark.parametrize("api", ["call_at", "call_later"])
@pytest.mark.parametrize("edge", EDGE_IDS)
def test_timer_alone_edge(both_loops, api, edge):
    value = EDGES[edge]
    stock = _alone(both_loops["asyncio"], api, value)
    mine = _alone(both_loops["greenhub"], api, value)
    if edge == "nan" and PY313:
        assert stock_broken_by_nan(stock[0])
        assert mine == (("ok", ("float", "nan")), ["edge"])
        return
    assert mine == stock


@pytest.mark.parametrize("api", ["call_at", "call_later"])
@pytest.mark.parametrize("edge", EDGE_IDS)
def test_timer_behind_another_edge(both_loops, api, edge):
    value = EDGES[edge]
    s_call, s_run, s_ev = _behind_ref(both_loops["asyncio"], api, value)
    g_call, g_run, g_ev = _behind_ref(both_loops["greenhub"], api, value)
    assert g_call == s_call
    if s_call[0] == "raise":
        # asyncio's heappush() appended the timer before its comparison failed: the
        # stock heap now holds it and the next comparison breaks the loop.  greenhub
        # never scheduled it.
        assert (g_run, g_ev) == (("ok", None), ["ref"])
        return
    assert g_run == s_run
    if isinstance(value, float) and math.isnan(value):
        # Neither loop loses the NaN timer; greenhub runs it first (it is due at once),
        # the stock heap leaves it below the earlier-scheduled reference.
        assert sorted(s_ev) == sorted(g_ev) == ["edge", "ref"]
        assert g_ev == ["edge", "ref"]
        return
    assert g_ev == s_ev


def test_nan_timers_keep_the_heap_in_order(both_loops):
    """NaN deadlines among many others: greenhub runs the NaN timers first, in scheduling
    order, then the rest by deadline; no timer is lost or left behind on either loop."""
    import random

    rnd = random.Random(7)
    results = {}
    for kind, lp in both_loops.items():
        ev = []
        base = lp.time() - 1000.0  # all in the past: everything is due in one pass
        values = []
        for i in range(300):
            v = math.nan if i % 7 == 3 else base + rnd.random()
            values.append(v)
            lp.call_at(v, ev.append, i)
        lp.call_soon(lp.stop)
        lp.run_forever()
        lp.call_soon(lp.stop)
        lp.run_forever()
        results[kind] = (ev, values)
    for kind, (ev, _) in results.items():
        assert sorted(ev) == list(range(300)), kind
    ev, values = results["greenhub"]
    nans = [i for i, v in enumerate(values) if math.isnan(v)]
    rest = sorted((v, i) for i, v in enumerate(values) if not math.isnan(v))
    assert ev == nans + [i for _, i in rest]


def test_nan_timer_does_not_hang_the_loop(loop, kind):
    """The issue's reproducer: a NaN timer used to stay at the top of greenhub's heap,
    with a NaN poll timeout (wait forever), so no later timer ever fired."""
    ev = []

    async def main():
        lp = asyncio.get_running_loop()
        lp.call_at(float("nan"), ev.append, "nan")
        await asyncio.sleep(0.01)
        lp.call_later(float("nan"), ev.append, "nan-later")
        await asyncio.sleep(0.01)
        return ev

    res = outcome(lambda: loop.run_until_complete(main()))
    if kind == "asyncio" and stock_broken_by_nan(res):
        return
    assert res == ("ok", ["nan", "nan-later"])


# --- asyncio's timeouts over those timers -------------------------------------------


async def _sleep(v):
    lp = asyncio.get_running_loop()
    if v is True or v in (math.inf, 1e308):  # long sleeps: check that it has not ended
        t = asyncio.ensure_future(asyncio.sleep(v, "slept"))
        await asyncio.sleep(0.01)
        done = t.done()
        t.cancel()
        return ("still sleeping", not done)
    return await asyncio.sleep(v, "slept"), lp is not None


async def _wait_for(v):
    inner = asyncio.sleep(0.01, "done")
    try:
        return await asyncio.wait_for(inner, v)
    finally:
        inner.close()  # never started when wait_for() refused the timeout


async def _timeout(v):
    async with asyncio.timeout(v):
        await asyncio.sleep(0.01)
    return "done"


async def _timeout_at(v):
    async with asyncio.timeout_at(v):
        await asyncio.sleep(0.01)
    return "done"


TIMEOUT_APIS = {"sleep": _sleep, "wait_for": _wait_for}
if hasattr(asyncio, "timeout"):
    TIMEOUT_APIS.update(timeout=_timeout, timeout_at=_timeout_at)


@pytest.mark.parametrize("api", list(TIMEOUT_APIS))
@pytest.mark.parametrize("edge", EDGE_IDS)
def test_asyncio_timeouts_edge(both_loops, api, edge):
    value = EDGES[edge]
    fn = TIMEOUT_APIS[api]
    res = {}
    for kind, lp in both_loops.items():
        coro = fn(value)
        res[kind] = outcome(lambda: lp.run_until_complete(coro))  # noqa: B023
        coro.close()  # when it never started (the argument was refused first)
    if edge == "nan" and stock_broken_by_nan(res["asyncio"]):
        # 3.11/3.12: the timeout's NaN timer fires at once.
        assert res["greenhub"] == ("raise", "TimeoutError", "")
        return
    assert res["greenhub"] == res["asyncio"]


# --- TimerHandle comparisons ---------------------------------------------------------

CMP_VALUES = [math.nan, math.inf, -math.inf, 1.0, 2**53, 2**53 + 1, float(2**53), True]
CMP_VALUES += [Fraction(1, 3), 1 / 3, 10**400, FloatSub(1.0), IntSub(1)]


def _noop():
    pass


def test_timer_handle_comparisons(both_loops):
    ops = ["__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__"]
    results = {}
    for kind, lp in both_loops.items():
        hs = [lp.call_at(v, _noop) for v in CMP_VALUES]
        table = []
        for a in hs:
            table.append(("self", a == a, a != a, hash(a) == hash(a), when_info(a)))
            for b in hs:
                table.append(tuple(outcome(lambda: getattr(a, op)(b)) for op in ops))  # noqa: B023
        table.append(("set", all(h in set(hs) for h in hs)))
        for h in hs:
            h.cancel()
        results[kind] = table
    assert results["greenhub"] == results["asyncio"]


def test_nan_timer_hash_is_stable(loop):
    """hash(nan) depends on the float object; the handle keeps one."""
    for h in (loop.call_at(math.nan, _noop), loop.call_later(math.nan, _noop)):
        assert h.when() is h.when()
        assert hash(h) == hash(h)
        s = {h}
        s.discard(h)
        assert not s
        assert h != h  # asyncio's __eq__: nan == nan is false
        h.cancel()


# --- an overridden time() -------------------------------------------------------------

CLOCKS = {
    "nan": lambda t: math.nan,
    "int": lambda t: int(t),
    "Decimal": lambda t: Decimal(t),
    "Fraction": lambda t: Fraction(t),
    "float-subclass": lambda t: FloatSub(t),
    "int-subclass": lambda t: IntSub(int(t)),
}


def _with_clock(lp, clock):
    real = type(lp).time

    def time_():
        return clock(real(lp))

    lp.time = time_


async def _later_then_sleep(delay):
    lp = asyncio.get_running_loop()
    ev = []
    h = lp.call_later(delay, ev.append, "later")
    w = when_info(h)
    await asyncio.sleep(0.02)
    return w, ev


@pytest.mark.parametrize("clock", list(CLOCKS))
@pytest.mark.parametrize("delay", [0.01, 1, 0])
def test_overridden_time_values(both_loops, clock, delay):
    res = {}
    for kind, lp in both_loops.items():
        _with_clock(lp, CLOCKS[clock])
        coro = _later_then_sleep(delay)
        res[kind] = outcome(lambda: lp.run_until_complete(coro))  # noqa: B023
        coro.close()
        del lp.time
    if clock == "nan" and stock_broken_by_nan(res["asyncio"]):
        # 3.11/3.12: with a NaN clock every timer is due at once.
        assert res["greenhub"] == ("ok", (("float", "nan"), ["later"]))
        return
    assert res["greenhub"] == res["asyncio"]


@pytest.mark.parametrize("stuck", [math.inf, -math.inf])
def test_time_stuck_at_infinity_runs_due_timers(greenhub_leak_check, stuck):
    """With time() at +/-inf, a timer at that same deadline is due (not after now).
    asyncio spins there for ever (`inf >= inf` is its 'not yet', and inf - inf gives a
    zero timeout), so there is no stock behaviour to compare with."""
    lp = greenhub.new_event_loop()
    try:
        _stuck_clock(lp, stuck)
    finally:
        lp.close()


def _stuck_clock(lp, stuck):
    lp.time = lambda: stuck
    ev = []
    lp.call_later(1.0, ev.append, "due")
    lp.call_later(1.0, lp.stop)
    lp.run_forever()
    assert ev == ["due"]


# --- greenhub's own waits against threading / queue / time / socket -----------------

# threading's Lock/RLock treat -1 (and -1.0) as "no limit": on a held lock that blocks
# for ever in both, so the negative row uses -0.5.  True is a one-second timeout in
# threading: not worth a second per row.
SYNC_EDGES = [e for e in EDGE_IDS if e not in ("True",)]

# Numbers of other types at 0 and -1, for greenhub's own waits: the stdlib's checks take
# other paths there (`_time() + Decimal(0)` fails; a lock reads -1 as "no limit").
SYNC_EXTRA = {
    "Decimal-zero": Decimal(0),
    "Fraction-zero": Fraction(0),
    "Decimal-minus-one": Decimal(-1),
    "index-minus-one": IndexOnly(-1),
}
SYNC_EDGES += list(SYNC_EXTRA)
# A held lock waits for ever where the lock takes -1 as no limit: -2 and -0.5 there.
HELD_LOCK_VALUES = {"Decimal-minus-one": Decimal("-0.5"), "index-minus-one": IndexOnly(-2)}


def _value_for(prim, edge):
    v = EDGES[edge] if edge in EDGES else SYNC_EXTRA[edge]
    if edge == "negative" and prim in ("lock_held", "lock_free", "rlock"):
        return -0.5
    if prim == "lock_held" and edge in HELD_LOCK_VALUES:
        return HELD_LOCK_VALUES[edge]
    return v


def _primitives(th, qu):
    def lock_held(t):
        lk = th.Lock()
        lk.acquire()
        return lk.acquire(timeout=t)

    def lock_free(t):
        return th.Lock().acquire(timeout=t)

    def rlock(t):
        return th.RLock().acquire(timeout=t)

    def event(t):
        return th.Event().wait(t)

    def event_set(t):
        e = th.Event()
        e.set()
        return e.wait(t)

    def condition(t):
        c = th.Condition()
        with c:
            return c.wait(t)

    def wait_for(t):
        c = th.Condition()
        with c:
            return c.wait_for(lambda: False, t)

    def semaphore(t):
        return th.Semaphore(0).acquire(timeout=t)

    def semaphore_free(t):
        return th.Semaphore(1).acquire(timeout=t)

    def queue_get(t):
        return qu.Queue().get(timeout=t)

    def queue_get_ready(t):
        q = qu.Queue()
        q.put(1)
        return q.get(timeout=t)

    def queue_put(t):
        q = qu.Queue(1)
        q.put(1)
        return q.put(2, timeout=t)

    return {k: v for k, v in locals().items() if callable(v)}


STD = _primitives(threading, queue)
GREEN = _primitives(gsync, gsync)

# NaN rows where threading spins for ever (see the module docstring): greenhub's result.
NAN_SPINS = {"wait_for": ("ok", False), "semaphore": ("ok", False)}
NAN_SPINS.update(queue_get=("raise", "Empty", ""), queue_put=("raise", "Full", ""))


def _threading_spins_on_nan():
    """Whether those rows spin on this Python: Condition.wait(nan) returns at once there
    (up to 3.13); from 3.14 it raises ValueError, and so do the loops built on it."""
    c = threading.Condition()
    with c:
        try:
            c.wait(math.nan)
        except ValueError:
            return False
    return True


def _in_vthread(fn, arg):
    async def main():
        return await greenhub.spawn(fn, arg)

    lp = greenhub.new_event_loop()
    try:
        return lp.run_until_complete(main())
    finally:
        lp.close()


@pytest.mark.parametrize("prim", list(STD))
@pytest.mark.parametrize("edge", SYNC_EDGES)
def test_sync_primitive_timeouts_edge(greenhub_leak_check, prim, edge):
    arg = _value_for(prim, edge)
    if edge == "nan" and prim in NAN_SPINS and _threading_spins_on_nan():
        expected = NAN_SPINS[prim]
    else:
        expected = outcome(lambda: STD[prim](arg))
    assert outcome(lambda: GREEN[prim](arg)) == expected, "outside a virtual thread"
    assert outcome(lambda: _in_vthread(GREEN[prim], arg)) == expected, "in a virtual thread"


# time.sleep() raises or returns at once for these (the others would really sleep).
SLEEP_EDGES = ["nan", "inf", "-inf", "negative", "zero", "zero-float", "1e308", "-1e308"]
SLEEP_EDGES += ["10**400", "-10**400", "False", "Decimal", "Fraction", "float-only"]
SLEEP_EDGES += ["index-only", "float-raises", "int-subclass", "str", *SYNC_EXTRA]


@pytest.mark.parametrize("edge", SLEEP_EDGES)
def test_greenhub_sleep_edge(greenhub_leak_check, edge):
    arg = EDGES[edge] if edge in EDGES else SYNC_EXTRA[edge]
    expected = outcome(lambda: time.sleep(arg))
    assert outcome(lambda: gsync.sleep(arg)) == expected
    assert outcome(lambda: _in_vthread(gsync.sleep, arg)) == expected


@pytest.mark.parametrize("edge", EDGE_IDS)
def test_green_socket_settimeout_edge(edge):
    arg = EDGES[edge]
    res = []
    for make in (socket.socket, gsocket.socket):
        with make() as s:
            res.append(outcome(lambda: (s.settimeout(arg), s.gettimeout())[1]))  # noqa: B023
    assert res[1] == res[0]


# _core._wait_fd has no stdlib twin: its own documented rules (None and inf: no limit;
# NaN and negatives refused; a number otherwise, through float()).
WAIT_FD = {
    "nan": ("raise", "ValueError", "_wait_fd(): timeout must be None or a number >= 0, not nan"),
    "-inf": ("raise", "ValueError", "_wait_fd(): timeout must be None or a number >= 0, not -inf"),
    "negative": ("raise", "ValueError", "_wait_fd(): timeout must be None or a number >= 0, not -1.0"),
    "-1e308": ("raise", "ValueError", "_wait_fd(): timeout must be None or a number >= 0, not -1e+308"),
    "10**400": ("raise", "OverflowError", "int too large to convert to float"),
    "-10**400": ("raise", "OverflowError", "int too large to convert to float"),
    "Decimal-nan": (
        "raise",
        "ValueError",
        "_wait_fd(): timeout must be None or a number >= 0, not Decimal('NaN')",
    ),
    "float-raises": ("raise", "ZeroDivisionError", "no float for you"),
    "str": ("raise", "TypeError", "_wait_fd(): timeout must be None or a number, not str"),
}


@pytest.mark.parametrize("edge", EDGE_IDS)
def test_wait_fd_timeout_edge(greenhub_leak_check, edge):
    arg = EDGES[edge]
    expected = WAIT_FD.get(edge, ("ok", 2))  # the fd is writable: ready at once
    a, b = socket.socketpair()
    try:
        assert outcome(lambda: _core._wait_fd(b.fileno(), 2, arg)) == expected
        res = outcome(lambda: _in_vthread(lambda t: _core._wait_fd(b.fileno(), 2, t), arg))
        assert res == expected
    finally:
        a.close()
        b.close()


WATCHDOG_OK = {"float-subclass": 0.01}


@pytest.mark.parametrize("edge", EDGE_IDS)
def test_set_watchdog_threshold_edge(greenhub_leak_check, edge):
    """set_watchdog() is greenhub's own: no stock twin."""
    lp = greenhub.new_event_loop()
    try:
        _watchdog_edge(lp, edge)
    finally:
        lp.close()


def _watchdog_edge(lp, edge):
    arg = EDGES[edge]
    res = outcome(lambda: (lp.set_watchdog(arg), lp.get_watchdog())[1])
    if edge in WATCHDOG_OK:
        assert res == ("ok", WATCHDOG_OK[edge])
    else:
        # A positive number of seconds up to a day, or None; anything else is refused
        # with a clear exception (an int past the float range overflows).
        assert res[0] == "raise" and res[1] in ("ValueError", "TypeError", "OverflowError"), res
    lp.set_watchdog(None)
