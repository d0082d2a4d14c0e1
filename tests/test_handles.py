"""Handle and TimerHandle: cancel, when, context, comparisons, and repr vs the stock loop."""

import asyncio
import contextvars
import functools
import gc
import weakref

import pytest
from support import PY312, PY313, normalise_repr, run_once


def cb(*args):
    pass


class Target:
    def method(self, x):
        pass


def test_handles_are_asyncio_handle_instances(loop):
    # asyncio's typing says call_soon() -> Handle and call_later() -> TimerHandle; code
    # in the wild checks isinstance(h, asyncio.TimerHandle).
    h = loop.call_soon(cb)
    t = loop.call_later(10, cb)
    ts = loop.call_soon_threadsafe(cb)
    assert isinstance(h, asyncio.Handle), type(h).__mro__
    assert isinstance(ts, asyncio.Handle), type(ts).__mro__
    assert isinstance(t, asyncio.TimerHandle), type(t).__mro__
    t.cancel()


def test_handle_type_names(loop):
    h = loop.call_soon(cb)
    t = loop.call_later(10, cb)
    assert type(h).__name__ == "Handle"
    assert type(t).__name__ == "TimerHandle"
    t.cancel()


def test_cancel_prevents_the_call(loop):
    out = []
    h = loop.call_soon(out.append, "cancelled")
    loop.call_soon(out.append, "kept")
    assert h.cancelled() is False
    assert h.cancel() is None
    assert h.cancelled() is True
    h.cancel()  # twice is fine
    run_once(loop)
    assert out == ["kept"]


def test_cancel_after_the_call_marks_cancelled(loop):
    out = []
    h = loop.call_soon(out.append, 1)
    run_once(loop)
    h.cancel()
    assert h.cancelled() is True
    run_once(loop)
    assert out == [1]


@pytest.mark.parametrize("timer", [False, True], ids=["Handle", "TimerHandle"])
def test_cancel_releases_callback_and_args(loop, timer):
    class Obj:
        def __call__(self, *args):
            pass

    fn, arg = Obj(), Obj()
    refs = [weakref.ref(fn), weakref.ref(arg)]
    h = loop.call_later(3600, fn, arg) if timer else loop.call_soon(fn, arg)
    del fn, arg
    h.cancel()
    gc.collect()
    # The handle itself is still referenced here; what it held must be gone.
    assert [r() for r in refs] == [None, None]
    assert h._callback is None and h._args is None
    run_once(loop)


def test_cancelled_timer_from_another_callback(loop):
    out = []
    t = loop.call_later(0.001, out.append, "timer")
    loop.call_soon(t.cancel)
    loop.call_later(0.005, loop.stop)
    loop.run_forever()
    assert out == []
    assert t.cancelled()


def test_timer_when(loop):
    when = loop.time() + 50
    t = loop.call_at(when, cb)
    assert t.when() == when
    t.cancel()
    assert t.when() == when


@pytest.mark.skipif(not PY312, reason="Handle.get_context() is new in Python 3.12")
def test_handle_get_context(loop):
    ctx = contextvars.copy_context()
    h1 = loop.call_soon(cb, context=ctx)
    t1 = loop.call_later(10, cb, context=ctx)
    h2 = loop.call_soon(cb)
    assert h1.get_context() is ctx
    assert t1.get_context() is ctx
    assert isinstance(h2.get_context(), contextvars.Context)
    assert h2.get_context() is not ctx
    t1.cancel()
    run_once(loop)


def test_timer_handle_ordering_and_equality(loop):
    now = loop.time()
    a = loop.call_at(now + 10, cb, 1)
    b = loop.call_at(now + 20, cb, 1)
    a2 = loop.call_at(now + 10, cb, 1)
    other = loop.call_at(now + 10, cb, 2)
    try:
        assert a < b and a <= b and b > a and b >= a
        assert not (b < a) and not (a > b)
        assert a <= a2 and a >= a2 and not (a < a2)
        # Equal when deadline, callback, args and cancelled state are equal.
        assert a == a2 and not (a != a2)  # noqa: SIM202 - testing __ne__ itself
        assert a != other and a != b
        assert sorted([b, other, a])[2] is b
        assert hash(a) == hash(a2) == hash(now + 10)
        assert (a == "x") is False and (a != "x") is True
        with pytest.raises(TypeError):
            a < 1  # noqa: B015
        a2.cancel()
        assert a != a2
    finally:
        for t in (a, b, a2, other):
            t.cancel()


def test_plain_handles_compare_by_identity(loop):
    h1 = loop.call_soon(cb, 1)
    h2 = loop.call_soon(cb, 1)
    assert h1 == h1 and h1 != h2  # noqa: PLR0124 - testing __eq__ itself
    assert len({h1, h2}) == 2
    run_once(loop)


def test_handles_are_weakly_referenceable(loop):
    h = loop.call_soon(cb)
    t = loop.call_later(10, cb)
    assert weakref.ref(h)() is h
    assert weakref.ref(t)() is t
    t.cancel()
    run_once(loop)


# -- repr, compared between the two loops ----------------------------------------------


def _handle_reprs(lp):
    reprs = {}
    target = Target()
    h = lp.call_soon(cb, 1, "a")
    reprs["handle"] = repr(h)
    reprs["handle-no-args"] = repr(lp.call_soon(cb))
    reprs["handle-partial"] = repr(lp.call_soon(functools.partial(cb, 1), 2))
    reprs["handle-method"] = repr(lp.call_soon(target.method, 3))
    reprs["handle-builtin"] = repr(lp.call_soon(print))
    t = lp.call_at(1000.5, cb, 2)
    reprs["timer"] = repr(t)
    reprs["timer-later"] = repr(lp.call_later(1, cb))
    t.cancel()
    reprs["timer-cancelled"] = repr(t)
    h.cancel()
    reprs["handle-cancelled"] = repr(h)
    ran = lp.call_soon(cb, "ran")
    run_once(lp)
    reprs["handle-after-run"] = repr(ran)
    return reprs


def _debug_handle_reprs(lp):
    lp.set_debug(True)
    reprs = {}
    # Both loops run this same line, so the 'created at file:line' parts must agree.
    h = lp.call_soon(cb, 1)
    reprs["debug-handle"] = repr(h)
    t = lp.call_at(1000.5, cb)
    reprs["debug-timer"] = repr(t)
    h.cancel()
    t.cancel()
    reprs["debug-handle-cancelled"] = repr(h)
    reprs["debug-timer-cancelled"] = repr(t)
    run_once(lp)
    lp.set_debug(False)
    return reprs


def test_handle_reprs_match_stock(both_loops):
    got = {
        k: {n: normalise_repr(r) for n, r in _handle_reprs(lp).items()}
        for k, lp in both_loops.items()
    }
    for name, stock in got["asyncio"].items():
        assert got["greenhub"][name] == stock, name
    # And they are the asyncio shapes, not just equal to each other.
    assert got["asyncio"]["handle-cancelled"] == "<Handle cancelled>"
    assert got["asyncio"]["timer-cancelled"] == "<TimerHandle cancelled when=T>"
    args = "()" if PY313 else "(2)"  # 3.13 shows arguments only in debug mode
    assert got["asyncio"]["timer"].startswith(f"<TimerHandle when=T cb{args} at ")


def test_debug_handle_reprs_match_stock(both_loops):
    got = {
        k: {n: normalise_repr(r) for n, r in _debug_handle_reprs(lp).items()}
        for k, lp in both_loops.items()
    }
    for name, stock in got["asyncio"].items():
        assert got["greenhub"][name] == stock, name
    assert " created at " in got["asyncio"]["debug-handle"]
    assert got["asyncio"]["debug-handle-cancelled"].startswith("<Handle cancelled cb(1) at ")


def test_timer_when_repr_is_the_when_value(loop):
    t = loop.call_at(1234.5, cb)
    assert "when=1234.5 " in repr(t)
    t.cancel()
    assert repr(t) == "<TimerHandle cancelled when=1234.5>"


def test_cancel_a_later_handle_of_the_same_pass(loop):
    out = []
    later = []

    def canceller():
        out.append("canceller")
        later[0].cancel()

    loop.call_soon(canceller)
    later.append(loop.call_soon(out.append, "cancelled"))
    loop.call_soon(out.append, "kept")
    run_once(loop)
    assert out == ["canceller", "kept"]


def test_cancel_a_handle_from_inside_its_own_callback(loop):
    out = []
    me = []

    def self_cancel():
        me[0].cancel()
        out.append(me[0].cancelled())

    me.append(loop.call_soon(self_cancel))
    t = loop.call_later(0, lambda: out.append(me[1].cancel()))
    me.append(t)
    run_once(loop)
    assert out == [True, None]
    assert t.cancelled()
