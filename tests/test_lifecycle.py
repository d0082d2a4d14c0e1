"""run_forever / run_until_complete / stop / close / is_running / is_closed."""

import asyncio
import gc
import sys
import threading
import weakref

import pytest
import support
from support import CLOSED_MSG, error_of, run_once

# -- run_forever and stop ------------------------------------------------------------


def test_stop_before_run_forever_runs_exactly_one_pass(loop):
    out = []

    def a():
        out.append("a")
        loop.call_soon(out.append, "next-pass")

    loop.call_soon(a)
    loop.call_soon(out.append, "b")
    loop.stop()
    loop.run_forever()
    assert out == ["a", "b"]
    assert not loop.is_running()
    # The callback queued during that pass is still pending and runs next time.
    loop.stop()
    loop.run_forever()
    assert out == ["a", "b", "next-pass"]


def test_stop_before_run_forever_with_nothing_scheduled_returns(loop):
    loop.stop()
    loop.run_forever()  # must not block
    assert not loop.is_running()


def test_stop_from_a_callback_finishes_the_current_pass(loop):
    out = []

    def stopper():
        out.append("stop")
        loop.stop()
        loop.call_soon(out.append, "scheduled-by-stopper")

    loop.call_soon(out.append, "before")
    loop.call_soon(stopper)
    loop.call_soon(out.append, "after")
    loop.run_forever()
    assert out == ["before", "stop", "after"]
    loop.stop()
    loop.run_forever()
    assert out == ["before", "stop", "after", "scheduled-by-stopper"]


def test_stop_does_not_skip_expired_timers_of_that_pass(loop):
    out = []
    loop.call_later(0, out.append, "timer")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["timer"]


def test_stop_from_a_timer(loop):
    out = []
    loop.call_later(0.005, loop.stop)
    loop.call_later(3600, out.append, "never")
    loop.run_forever()
    assert out == []


def test_stop_twice_is_harmless(loop):
    loop.stop()
    loop.stop()
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_run_forever_can_run_again_after_stop(loop):
    out = []
    for i in range(3):
        loop.call_soon(out.append, i)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert out == [0, 1, 2]


def test_is_running(loop):
    seen = []
    assert loop.is_running() is False
    loop.call_soon(lambda: seen.append(loop.is_running()))
    run_once(loop)
    assert seen == [True]
    assert loop.is_running() is False


def test_is_closed(loop):
    assert loop.is_closed() is False
    loop.close()
    assert loop.is_closed() is True


def test_run_forever_restores_state_after_base_exception(loop):
    # SystemExit and KeyboardInterrupt leave run_forever; the loop must be reusable.
    out = []

    def boom():
        raise SystemExit(3)

    loop.call_soon(boom)
    loop.call_soon(out.append, "after")
    with pytest.raises(SystemExit) as ei:
        loop.run_forever()
    assert ei.value.code == 3
    assert loop.is_running() is False
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    # The rest of the interrupted pass is not lost.
    run_once(loop)
    assert out == ["after"]


def test_keyboard_interrupt_subclass_propagates_from_callback(loop):
    class MyInterrupt(KeyboardInterrupt):
        pass

    def boom():
        raise MyInterrupt

    loop.call_soon(boom)
    with pytest.raises(MyInterrupt):
        loop.run_forever()
    assert not loop.is_running()
    loop.stop()
    loop.run_forever()


def test_run_forever_sets_and_resets_running_loop(loop):
    assert asyncio._get_running_loop() is None
    seen = []
    loop.call_soon(lambda: seen.append(asyncio._get_running_loop()))
    run_once(loop)
    assert seen == [loop]
    assert asyncio._get_running_loop() is None


def test_run_forever_restores_asyncgen_hooks(loop):
    def firstiter(agen):
        pass

    def finalizer(agen):
        pass

    old = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)
    try:
        seen = []
        loop.call_soon(lambda: seen.append(sys.get_asyncgen_hooks()))
        run_once(loop)
        during = seen[0]
        assert during.firstiter is not firstiter and during.firstiter is not None
        assert during.finalizer is not finalizer and during.finalizer is not None
        after = sys.get_asyncgen_hooks()
        assert after.firstiter is firstiter and after.finalizer is finalizer
    finally:
        sys.set_asyncgen_hooks(*old)


def test_loop_runs_in_another_thread(loop):
    out = []

    def thread_main():
        loop.call_soon(lambda: out.append(threading.get_ident()))
        run_once(loop)

    t = threading.Thread(target=thread_main)
    t.start()
    t.join(5)
    assert out == [t.ident]


# -- run_until_complete ------------------------------------------------------------


def test_run_until_complete_returns_coroutine_result(loop):
    async def main(x):
        await asyncio.sleep(0)
        return x * 2

    assert loop.run_until_complete(main(21)) == 42


def test_run_until_complete_raises_coroutine_exception(loop):
    async def main():
        await asyncio.sleep(0)
        raise ValueError("from coroutine")

    with pytest.raises(ValueError, match="from coroutine"):
        loop.run_until_complete(main())
    assert not loop.is_running()


def test_run_until_complete_with_future(loop):
    fut = loop.create_future()
    loop.call_later(0.001, fut.set_result, "fut-result")
    assert loop.run_until_complete(fut) == "fut-result"


def test_run_until_complete_with_done_future(loop):
    fut = loop.create_future()
    fut.set_result(7)
    assert loop.run_until_complete(fut) == 7


def test_run_until_complete_with_awaitable(loop):
    class Awaitable:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "awaited"

    assert loop.run_until_complete(Awaitable()) == "awaited"


def test_run_until_complete_rejects_non_awaitable(loop):
    err = error_of(loop.run_until_complete, 42)
    assert err == (TypeError, "An asyncio.Future, a coroutine or an awaitable is required")


def test_run_until_complete_rejects_future_of_another_loop(loop, loop_factory):
    other = loop_factory()
    fut = other.create_future()
    err = error_of(loop.run_until_complete, fut)
    assert err == (
        ValueError,
        "The future belongs to a different loop than the one specified as the loop argument",
    )


def test_run_until_complete_stopped_early_raises(loop):
    async def main():
        loop.stop()
        await asyncio.sleep(3600)

    coro = main()
    err = error_of(loop.run_until_complete, coro)
    assert err == (RuntimeError, "Event loop stopped before Future completed.")
    # Clean the pending task up.
    for task in asyncio.all_tasks(loop):
        task.cancel()
    run_once(loop)
    run_once(loop)


def test_run_until_complete_system_exit_propagates(loop):
    async def main():
        await asyncio.sleep(0)
        raise SystemExit(5)

    with pytest.raises(SystemExit):
        loop.run_until_complete(main())
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, "again")) == "again"


def test_current_task_inside_run_until_complete(loop):
    async def main():
        return asyncio.current_task()

    task = loop.create_task(main())
    assert loop.run_until_complete(task) is task


# -- nesting -------------------------------------------------------------------------


def test_nested_run_forever_raises(loop):
    errs = []
    loop.call_soon(lambda: errs.append(error_of(loop.run_forever)))
    run_once(loop)
    assert errs == [(RuntimeError, "This event loop is already running")]


def test_nested_run_until_complete_raises(loop):
    errs = []

    def nested():
        coro = asyncio.sleep(0)
        errs.append(error_of(loop.run_until_complete, coro))
        coro.close()

    loop.call_soon(nested)
    run_once(loop)
    assert errs == [(RuntimeError, "This event loop is already running")]


def _nested_run_outcome(outer, inner):
    """Run inner.run_forever() from a callback of outer: (error, outer still registered)."""
    seen = []

    def cb():
        err = error_of(inner.run_forever)
        seen.append((err, asyncio._get_running_loop() is outer))

    outer.call_soon(cb)
    run_once(outer)
    return seen[0]


def test_running_another_loop_inside_a_running_loop_raises(loop, loop_factory):
    other = loop_factory()
    err, outer_kept = _nested_run_outcome(loop, other)
    assert err == (RuntimeError, "Cannot run the event loop while another loop is running")
    assert not other.is_running()
    # Whether the failed attempt leaves the outer loop registered as the running loop is
    # what the stock loop of this Python version does (3.13.0's stock loop drops it).
    stock_outer, stock_inner = support.new_loop("asyncio"), support.new_loop("asyncio")
    try:
        assert outer_kept == _nested_run_outcome(stock_outer, stock_inner)[1]
    finally:
        stock_outer.close()
        stock_inner.close()


def test_close_a_running_loop_raises(loop):
    errs = []
    loop.call_soon(lambda: errs.append(error_of(loop.close)))
    run_once(loop)
    assert errs == [(RuntimeError, "Cannot close a running event loop")]
    assert not loop.is_closed()


# -- close ---------------------------------------------------------------------------


def test_close_is_idempotent(loop):
    loop.close()
    loop.close()
    assert loop.is_closed()


def test_close_drops_pending_callbacks_and_timers(loop):
    class Arg:
        pass

    a, b = Arg(), Arg()
    refs = [weakref.ref(a), weakref.ref(b)]
    out = []
    loop.call_soon(out.append, a)
    loop.call_later(3600, out.append, b)
    del a, b
    loop.close()
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert out == []


def test_close_from_another_thread_after_run(loop):
    run_once(loop)
    t = threading.Thread(target=loop.close)
    t.start()
    t.join(5)
    assert loop.is_closed()


def _closed_loop_calls(loop):
    async def coro():
        pass

    c1, c2 = coro(), coro()
    calls = {
        "call_soon": lambda: loop.call_soon(print),
        "call_later": lambda: loop.call_later(1, print),
        "call_at": lambda: loop.call_at(loop.time() + 1, print),
        "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(print),
        "run_forever": loop.run_forever,
        "run_until_complete": lambda: loop.run_until_complete(c1),
        "create_task": lambda: loop.create_task(c2),
        "run_in_executor": lambda: loop.run_in_executor(None, print),
    }
    return calls, (c1, c2)


@pytest.mark.parametrize(
    "method",
    [
        "call_soon",
        "call_later",
        "call_at",
        "call_soon_threadsafe",
        "run_forever",
        "run_until_complete",
        "create_task",
        "run_in_executor",
    ],
)
def test_methods_on_a_closed_loop_raise(loop, method):
    loop.close()
    calls, coros = _closed_loop_calls(loop)
    try:
        assert error_of(calls[method]) == (RuntimeError, CLOSED_MSG)
    finally:
        for c in coros:
            c.close()


def test_call_soon_threadsafe_from_another_thread_after_close(loop):
    loop.close()
    errs = []
    t = threading.Thread(target=lambda: errs.append(error_of(loop.call_soon_threadsafe, print)))
    t.start()
    t.join(5)
    assert errs == [(RuntimeError, CLOSED_MSG)]


def test_close_inside_run_until_complete_callback_is_refused_then_allowed(loop):
    async def main():
        return error_of(loop.close)

    assert loop.run_until_complete(main()) == (
        RuntimeError,
        "Cannot close a running event loop",
    )
    loop.close()
    assert loop.is_closed()


def test_repr_shape_matches_stock(loop):
    from support import normalise_loop_repr

    assert normalise_loop_repr(repr(loop)) == "<LOOP running=False closed=False debug=False>"
    seen = []
    loop.call_soon(lambda: seen.append(repr(loop)))
    run_once(loop)
    assert normalise_loop_repr(seen[0]) == "<LOOP running=True closed=False debug=False>"
    loop.set_debug(True)
    loop.close()
    assert normalise_loop_repr(repr(loop)) == "<LOOP running=False closed=True debug=True>"


def test_run_until_complete_cancelled_future_raises_cancelled_error(loop):
    fut = loop.create_future()
    loop.call_soon(fut.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(fut)


def test_get_event_loop_and_current_task_in_a_callback(loop):
    seen = []
    loop.call_soon(lambda: seen.append((asyncio.get_event_loop(), asyncio.current_task())))
    run_once(loop)
    assert seen == [(loop, None)]


def test_slow_callback_duration_default(loop):
    assert loop.slow_callback_duration == 0.1


def test_unclosed_loop_warns_and_releases_on_collection(kind):
    import warnings

    from support import new_loop

    class Arg:
        pass

    arg = Arg()
    ref = weakref.ref(arg)
    lp = new_loop(kind)
    lp.call_soon(print, arg)
    lp.call_later(3600, print, arg)
    del arg
    # Caught here rather than by pytest, which would keep the warning (and through its
    # `source`, the loop) alive for the rest of the session.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del lp
        gc.collect()
        msgs = [(w.category, str(w.message)) for w in caught]
        caught.clear()
    assert len(msgs) == 1 and msgs[0][0] is ResourceWarning, msgs
    assert msgs[0][1].startswith("unclosed event loop <")
    gc.collect()
    assert ref() is None


def test_callback_in_an_already_entered_context_is_reported(loop, caplog):
    import contextvars
    import logging

    # The default handler is used: since 3.12 a custom one is itself run in the handle's
    # context, which fails the same way.
    caplog.set_level(logging.DEBUG, logger="asyncio")
    ctx = contextvars.copy_context()
    # The loop itself runs inside ctx, so a callback asking for ctx cannot enter it.
    loop.call_soon(lambda: None, context=ctx)
    ctx.run(run_once, loop)
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    assert records[0].getMessage().startswith("Exception in callback ")
    assert records[0].exc_info[0] is RuntimeError
    assert "cannot enter context" in str(records[0].exc_info[1])
    caplog.clear()


def test_is_running_seen_from_another_thread(loop):
    seen = []

    def check_from_thread():
        t = threading.Thread(target=lambda: seen.append(loop.is_running()))
        t.start()
        t.join(5)

    loop.call_soon(check_from_thread)
    run_once(loop)
    assert seen == [True]


# -- interpreter exit with greenhub objects still alive -------------------------------

EXIT_WITH_LIVE_OBJECTS = r"""
import asyncio, socket, sys
sys.path.insert(0, {repo!r})
import greenhub, greenhub._core as core, greenhub.contrib.psycopg as gp

loop = greenhub.new_event_loop()
loop.call_later(30, print)          # a TimerHandle and a Handle still queued
loop.call_soon(print)
fut = loop.create_future()

async def parked():
    greenhub.await_(fut)            # a virtual thread parked in await_()

task = loop.create_task(parked())
loop.run_until_complete(asyncio.sleep(0))
a, b = socket.socketpair()
transport = loop.run_until_complete(loop.connect_accepted_socket(asyncio.Protocol, a))[0]

class Holder:
    pass

holder = Holder()
holder.self, holder.loop, holder.task, holder.transport = holder, loop, task, transport
core.holder = gp.holder = holder    # cycles through the modules themselves
def user_function():
    pass
gp.anything = user_function
gp.install()
print("exiting")
"""


def test_interpreter_exit_with_live_loop_objects_does_not_crash(tmp_path):
    """Exit with an unclosed loop, queued handles, a parked virtual thread and a
    transport reachable from cycles through greenhub's modules: shutdown's last
    garbage collection may clear our types before their instances, and deallocating
    those must not touch freed module state."""
    import os
    import subprocess

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "exit_live.py"
    script.write_text(EXIT_WITH_LIVE_OBJECTS.format(repo=repo))
    for _ in range(3):
        p = subprocess.run(
            [sys.executable, "-X", "dev", str(script)], capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
        assert "exiting" in p.stdout
