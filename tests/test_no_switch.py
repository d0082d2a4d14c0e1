"""greenhub.no_switch(): a critical section in which a virtual thread must not suspend,
and the switch log (greenhub.set_switch_log)."""

import asyncio
import logging
import re
import sys

import pytest
from vthread_helpers import gloop_fixture, in_thread, run_child  # noqa: F401 - fixture

import greenhub
from greenhub import _core


def run(loop, coro):
    return loop.run_until_complete(coro)


def in_vthread(loop, fn, *args):
    async def main():
        return await greenhub.spawn(fn, *args)

    return run(loop, main())


def test_switch_error_is_a_runtime_error():
    assert issubclass(greenhub.SwitchError, RuntimeError)
    assert greenhub.SwitchError is _core.SwitchError


def test_await_inside_no_switch_raises(gloop):
    def critical():
        with greenhub.no_switch():
            greenhub.await_(asyncio.sleep(0))

    with pytest.raises(greenhub.SwitchError) as info:
        in_vthread(gloop, critical)
    msg = str(info.value)
    assert "greenhub.await_() would switch virtual threads inside a greenhub.no_switch()" in msg
    assert re.search(r"entered at .*test_no_switch\.py:\d+ in critical\(\)", msg), msg


def test_refused_coroutine_is_closed_not_left_unawaited(gloop, recwarn):
    def critical():
        with greenhub.no_switch():
            greenhub.await_(asyncio.sleep(0))

    with pytest.raises(greenhub.SwitchError):
        in_vthread(gloop, critical)
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_refused_even_if_it_would_not_have_waited(gloop):
    # Deterministic: a done future would not suspend, but await_ is a switch point.
    def critical():
        fut = gloop.create_future()
        fut.set_result(1)
        with greenhub.no_switch("reading the cache"):
            return greenhub.await_(fut)

    with pytest.raises(greenhub.SwitchError, match=r"\(reading the cache\)"):
        in_vthread(gloop, critical)


def test_green_blocking_calls_inside_no_switch_raise(gloop):
    # greenhub.sleep, a contended Lock, an empty Queue: they suspend through await_().
    lock = greenhub.Lock()
    queue = greenhub.Queue()

    def critical():
        errors = []
        for call in (
            lambda: greenhub.sleep(0.01),
            lambda: greenhub.sleep(0),
            lambda: lock.acquire(),
            lambda: queue.get(),
        ):
            with greenhub.no_switch("green calls"):
                try:
                    call()
                except greenhub.SwitchError as e:
                    errors.append(str(e))
        greenhub.sleep(0.001)  # and after the blocks they work
        return errors

    async def main():
        assert lock.acquire()  # held by someone else: acquire() would wait
        try:
            return await greenhub.spawn(critical)
        finally:
            lock.release()

    errors = run(gloop, main())
    assert len(errors) == 4
    assert all(e.startswith("greenhub.await_() would switch") for e in errors)
    assert all(e.endswith("(green calls)") for e in errors)
    assert not lock.locked() and queue.empty()


def test_green_socket_wait_inside_no_switch_raises(gloop):
    # Green sockets suspend through gh_suspend() directly (not await_): the check there
    # refuses them too, and the wait is cleaned up (the next recv works).
    import greenhub.socket as gsocket

    a, b = gsocket.socketpair()

    def reader():
        with greenhub.no_switch("socket section"):
            with pytest.raises(greenhub.SwitchError, match=r"\(socket section\)"):
                a.recv(10)  # nothing there: it would wait
        b.sendall(b"hi")
        return a.recv(10)

    try:
        assert in_vthread(gloop, reader) == b"hi"
    finally:
        a.close()
        b.close()


def test_monkey_patched_sleep_inside_no_switch_raises(gloop):
    import time

    from greenhub import monkey

    was_patched = monkey.is_patched("time")
    monkey.patch_time()
    try:

        def critical():
            with greenhub.no_switch("patched"):
                time.sleep(0.001)

        with pytest.raises(greenhub.SwitchError, match=r"\(patched\)"):
            in_vthread(gloop, critical)
    finally:
        if not was_patched:
            monkey.unpatch_all()
    time.sleep(0)  # outside any loop: the original call, never refused


def test_await_after_the_block_works(gloop):
    def critical():
        with greenhub.no_switch():
            x = 1 + 1
        return greenhub.await_(asyncio.sleep(0, x))

    assert in_vthread(gloop, critical) == 2


def test_nested_blocks_name_the_innermost_and_unwind(gloop):
    def critical():
        errors = []
        with greenhub.no_switch("outer"):
            with greenhub.no_switch("inner"):
                try:
                    greenhub.await_(asyncio.sleep(0))
                except greenhub.SwitchError as e:
                    errors.append(str(e))
            try:
                greenhub.await_(asyncio.sleep(0))
            except greenhub.SwitchError as e:
                errors.append(str(e))
        errors.append(greenhub.await_(asyncio.sleep(0, "free again")))
        return errors

    inner, outer, free = in_vthread(gloop, critical)
    assert inner.endswith("(inner)")
    assert outer.endswith("(outer)")
    assert free == "free again"


def test_no_state_left_after_an_exception(gloop):
    def critical():
        try:
            with greenhub.no_switch():
                raise KeyError("boom")
        except KeyError:
            pass
        return greenhub.await_(asyncio.sleep(0, "ok"))

    assert in_vthread(gloop, critical) == "ok"


def test_switch_error_can_be_caught_and_the_task_goes_on(gloop):
    def critical():
        with greenhub.no_switch():
            with pytest.raises(greenhub.SwitchError):
                greenhub.await_(asyncio.sleep(0))
        return greenhub.await_(asyncio.sleep(0, "after"))

    assert in_vthread(gloop, critical) == "after"


def test_decorator_forms(gloop):
    @greenhub.no_switch
    def bare():
        greenhub.await_(asyncio.sleep(0))

    @greenhub.no_switch("custom reason")
    def with_reason():
        greenhub.await_(asyncio.sleep(0))

    @greenhub.no_switch()
    def fine(x):
        return x * 2

    with pytest.raises(greenhub.SwitchError, match=r"@greenhub.no_switch on .*bare\(\)"):
        in_vthread(gloop, bare)
    with pytest.raises(greenhub.SwitchError, match=r"\(custom reason\)"):
        in_vthread(gloop, with_reason)
    assert in_vthread(gloop, fine, 21) == 42
    assert bare.__name__ == "bare"
    # Each call is its own block: nothing is left after a refused call.
    assert in_vthread(gloop, lambda: greenhub.await_(asyncio.sleep(0, 7))) == 7


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are new in Python 3.12")
def test_per_virtual_thread(gloop):
    # Task a sits in a no_switch block while task b - started eagerly inside the block,
    # so its first step runs right there, on its own GreenCoro - suspends freely: a
    # block belongs to the task that entered it.
    gloop.set_task_factory(asyncio.eager_task_factory)
    order = []

    def b_sync():
        order.append("b starts")
        greenhub.await_(asyncio.sleep(0))
        order.append("b resumed")

    async def b():
        b_sync()

    def a_sync():
        with greenhub.no_switch():
            t = gloop.create_task(b())
            order.append("a still in its block")
            with pytest.raises(greenhub.SwitchError):
                greenhub.await_(asyncio.sleep(0))
        return t

    async def a():
        return a_sync()

    async def main():
        await (await gloop.create_task(a()))

    run(gloop, main())
    assert order == ["b starts", "a still in its block", "b resumed"]


def test_block_does_not_follow_into_a_task_created_inside_it(gloop):
    def child():
        greenhub.await_(asyncio.sleep(0))
        return "child done"

    async def child_coro():
        return child()

    async def parent():
        with greenhub.no_switch():
            t = asyncio.create_task(child_coro())
        return await t

    assert run(gloop, parent()) == "child done"


def test_native_await_that_waits_is_refused(gloop):
    async def main():
        with greenhub.no_switch("async section"):
            await asyncio.sleep(0)

    with pytest.raises(greenhub.SwitchError, match=r"`await` would switch .*\(async section\)"):
        run(gloop, main())


def test_native_await_that_does_not_wait_is_fine(gloop):
    async def immediate():
        return 5

    async def main():
        with greenhub.no_switch():
            return await immediate()

    assert run(gloop, main()) == 5


def test_async_decorator(gloop):
    @greenhub.no_switch
    async def must_not_wait(wait):
        if wait:
            await asyncio.sleep(0)
        return "ok"

    assert run(gloop, must_not_wait(False)) == "ok"
    with pytest.raises(greenhub.SwitchError, match="must_not_wait"):
        run(gloop, must_not_wait(True))
    assert run(gloop, must_not_wait(False)) == "ok"


def test_native_refusal_can_be_caught(gloop):
    async def main():
        with greenhub.no_switch():
            try:
                await asyncio.sleep(0)
            except greenhub.SwitchError:
                pass
        await asyncio.sleep(0)
        return "recovered"

    assert run(gloop, main()) == "recovered"


def test_outside_a_virtual_thread_it_is_a_marker(loop):
    # In a loop callback, on the stock loop, with no loop: entering and leaving is
    # allowed and changes nothing.
    result = []

    def callback():
        with greenhub.no_switch():
            result.append("in callback")

    loop.call_soon(callback)
    loop.call_soon(loop.stop)
    loop.run_forever()

    async def coro():
        with greenhub.no_switch():
            await asyncio.sleep(0)  # a stock-loop task is not a virtual thread
        return "done"

    if isinstance(loop, greenhub.Loop):
        with pytest.raises(greenhub.SwitchError):
            loop.run_until_complete(coro())
    else:
        assert loop.run_until_complete(coro()) == "done"
    assert result == ["in callback"]


def test_await_with_no_loop_inside_block_runs():
    # No loop running: await_ runs the awaitable to completion on the thread's loop,
    # which is not a switch of the calling code.
    def body():
        with greenhub.no_switch():
            return greenhub.await_(asyncio.sleep(0, "ran"))

    assert in_thread(body) == "ran"


def test_check_switch(gloop):
    def critical():
        greenhub.check_switch()  # fine outside a block
        with greenhub.no_switch("checked"):
            greenhub.check_switch()

    with pytest.raises(greenhub.SwitchError, match=r"a blocking call would switch.*\(checked\)"):
        in_vthread(gloop, critical)
    greenhub.check_switch()  # no loop: fine


def test_public_names_for_blocking_calls(gloop):
    """What a blocking call of the user's own asks (docs/api.md): public, in __all__,
    and the C functions themselves (the private names keep working)."""
    for name in ("in_vthread", "check_switch"):
        assert name in greenhub.__all__
        assert getattr(greenhub, name) is getattr(_core, name)

    def inside():
        return greenhub.in_vthread()

    assert in_vthread(gloop, inside) is True
    assert greenhub.in_vthread() is False  # no loop running


def test_bad_input():
    with pytest.raises(TypeError, match="reason must be a string"):
        greenhub.no_switch(3)
    with pytest.raises(TypeError, match="needs a token"):
        _core._no_switch_exit(3)
    with pytest.raises(TypeError, match="decorates a callable"):
        greenhub.no_switch("x")(5)


def test_exit_twice_is_refused(gloop):
    def misuse():
        token = _core._no_switch_enter("x")
        _core._no_switch_exit(token)
        with pytest.raises(RuntimeError, match="exited twice"):
            _core._no_switch_exit(token)
        return greenhub.await_(asyncio.sleep(0, "intact"))

    assert in_vthread(gloop, misuse) == "intact"


def test_no_switch_costs_nothing_left_behind(gloop):
    # A refcount-delta loop over enter/exit and refused await_ calls.
    block = "leak check block"

    def many():
        for _ in range(2000):
            with greenhub.no_switch(block):
                try:
                    greenhub.await_(asyncio.sleep(0))
                except greenhub.SwitchError:
                    pass

    in_vthread(gloop, many)
    refs = sys.getrefcount(block)
    blocks = sys.getallocatedblocks()
    in_vthread(gloop, many)
    assert sys.getrefcount(block) == refs
    assert sys.getallocatedblocks() - blocks < 200


# -- the switch log -----------------------------------------------------------------


def parked_three_deep():
    def level3():
        return greenhub.await_(asyncio.sleep(0, "woke"))

    def level2():
        return level3()

    def level1():
        return level2()

    return level1()


def test_switch_log_logs_each_suspension_with_its_stack(gloop, caplog):
    greenhub.set_switch_log(True)
    try:
        assert greenhub.get_switch_log()
        with caplog.at_level(logging.INFO, logger="greenhub.switches"):
            assert in_vthread(gloop, parked_three_deep) == "woke"
    finally:
        greenhub.set_switch_log(False)
    assert not greenhub.get_switch_log()
    records = [r for r in caplog.records if r.name == "greenhub.switches"]
    assert len(records) == 1
    rec = records[0]
    assert [f.name for f in rec.stack][-3:] == ["level1", "level2", "level3"]
    # The task's frames only: not the worker greenlet's base frames outside them (as
    # dump_tasks() and the watchdog show a stack).
    assert "<greenhub virtual thread>" not in [f.filename for f in rec.stack]
    assert "virtual_thread" not in [f.name for f in rec.stack]
    assert "suspends, waiting on None" in rec.getMessage()  # sleep(0): a bare yield
    assert "in level3" in rec.getMessage()


def test_switch_log_shows_green_socket_waits(gloop, caplog):
    import greenhub.socket as gsocket

    a, b = gsocket.socketpair()

    def reader():
        return a.recv(10)

    async def main():
        t = greenhub.spawn(reader)
        await asyncio.sleep(0.01)
        b.sendall(b"x")
        return await t

    greenhub.set_switch_log(True)
    try:
        with caplog.at_level(logging.INFO, logger="greenhub.switches"):
            assert run(gloop, main()) == b"x"
    finally:
        greenhub.set_switch_log(False)
        a.close()
        b.close()
    records = [r for r in caplog.records if r.name == "greenhub.switches"]
    assert len(records) == 1
    # greenhub.socket's recv() (Python) called by the vthread's code
    assert [f.name for f in records[0].stack][-2:] == ["reader", "recv"]
    assert isinstance(records[0].waiting_on, asyncio.Future)


def test_switch_log_off_logs_nothing(gloop, caplog):
    with caplog.at_level(logging.DEBUG, logger="greenhub.switches"):
        in_vthread(gloop, parked_three_deep)
    assert not [r for r in caplog.records if r.name == "greenhub.switches"]


def test_switch_log_from_environment(monkeypatch):
    # GREENHUB_LOG_SWITCHES=1 turns it on at import, with a handler if logging is not
    # configured.
    monkeypatch.setenv("GREENHUB_LOG_SWITCHES", "1")
    rc, out, err = run_child(
        """
        def sync_waiter():
            return greenhub.await_(asyncio.sleep(0))
        async def main():
            await greenhub.spawn(sync_waiter)
        greenhub.run(main())
        say("done")
        """
    )
    assert rc == 0, err
    assert out.strip() == "done"
    assert "suspends, waiting on" in err
    assert "in sync_waiter" in err
