"""Loop shutdown, unreachable virtual threads and Ctrl-C.

What greenhub guarantees (and these tests check):

- loop.close() with virtual threads suspended in await_() cancels them and runs the loop
  until they finish: CancelledError is raised at each await_ call, except/finally blocks
  in the synchronous frames run (and may still await_ for cleanup), and nothing is left
  behind (greenhub's live-object counters return to zero).
- A suspended virtual thread whose Task nothing else references is *not* collected while
  its loop lives: its greenlet stack holds it (and through it the Task).  No crash, no
  "Task was destroyed but it is pending!"; it is finished when the loop closes.
  (On the stock loop such a task would be garbage-collected and its coroutine closed.)
- Ctrl-C while a virtual thread is suspended deep in synchronous code behaves as on the
  stock loop: greenhub.run() cancels the main task (CancelledError at await_) and raises
  KeyboardInterrupt; other tasks are cancelled as asyncio.run() does.

Programs that could hang or that deliberately leak run in a child interpreter.
"""

import asyncio
import gc
import weakref

import greenlet
import pytest
from vthread_helpers import (  # noqa: F401 - fixture
    KILLED_BY_SIGINT,
    assert_counters_back,
    counters,
    gloop_fixture,
    last_line,
    run_child,
    sync_task,
)

import greenhub
from greenhub._task import green_coro


def run(loop, coro):
    return loop.run_until_complete(coro)


# --- loop.close() with suspended virtual threads -------------------------------------------


def test_close_with_100_suspended_vthreads_runs_their_finally_blocks(greenhub_leak_check):
    base = counters()
    loop = greenhub.new_event_loop()
    log = {"cancelled": [], "finally": [], "cleanup": []}

    def deep(i, n):
        if n:
            return deep(i, n - 1)
        try:
            kind = i % 4
            if kind == 0:
                greenhub.await_(asyncio.sleep(3600))
            elif kind == 1:  # parked inside a re-entrant await_ chain
                greenhub.await_(reenter(i))
            elif kind == 2:  # parked inside a child greenlet
                greenlet.greenlet(lambda: greenhub.await_(asyncio.sleep(3600))).switch()
            else:  # parked on a future nobody will complete
                greenhub.await_(asyncio.get_running_loop().create_future())
        except asyncio.CancelledError:
            log["cancelled"].append(i)
            raise
        finally:
            log["finally"].append(i)
            # cleanup that itself waits: allowed while the loop finishes them
            log["cleanup"].append(greenhub.await_(asyncio.sleep(0, i)))

    async def reenter(i):
        await asyncio.sleep(0)
        return greenhub.await_(asyncio.sleep(3600))

    async def start():
        for i in range(100):
            greenhub.spawn(deep, i, 20)
        await asyncio.sleep(0.01)

    run(loop, start())
    during = counters()
    assert during["parked"] - base["parked"] == 100
    loop.close()
    assert loop.is_closed()
    del loop
    assert sorted(log["cancelled"]) == list(range(100))
    assert sorted(log["finally"]) == list(range(100))
    assert sorted(log["cleanup"]) == list(range(100))
    assert_counters_back(base, "after close()")


def test_greenhub_run_cancels_leftover_vthreads_before_closing(greenhub_leak_check):
    log = []

    def vthread():
        try:
            greenhub.await_(asyncio.sleep(3600))
        finally:
            log.append("finally")

    async def main():
        greenhub.spawn(vthread)
        await asyncio.sleep(0.001)
        return "main done"

    assert greenhub.run(main()) == "main done"
    assert log == ["finally"]  # asyncio.Runner cancelled it before closing


def test_unreachable_suspended_vthread_is_kept_and_finished_at_close(greenhub_leak_check):
    base = counters()
    loop = greenhub.new_event_loop()
    handler_calls = []
    loop.set_exception_handler(lambda lp, ctx: handler_calls.append(ctx))
    log = []

    def forgotten():
        try:
            # a future only this stack references: nothing will ever complete it
            greenhub.await_(asyncio.get_running_loop().create_future())
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        finally:
            log.append("finally")

    async def start():
        t = greenhub.spawn(forgotten)
        await asyncio.sleep(0)
        return weakref.ref(t)

    ref = run(loop, start())
    for _ in range(3):
        gc.collect()
    # kept alive by its suspended stack; the loop keeps working
    assert ref() is not None and not ref().done()
    assert run(loop, asyncio.sleep(0.001, "still works")) == "still works"
    assert handler_calls == []
    assert log == []
    loop.close()
    del loop
    assert log == ["cancelled", "finally"]
    assert ref() is None or ref().cancelled()
    assert handler_calls == []
    assert_counters_back(base, "after close()")


def test_many_unreachable_vthreads_do_not_crash_the_collector(greenhub_leak_check):
    base = counters()
    loop = greenhub.new_event_loop()

    def forgotten(i):
        holder = [i]  # frames with locals in cycles with the task
        holder.append(holder)
        greenhub.await_(asyncio.get_running_loop().create_future())

    async def start():
        for i in range(500):
            greenhub.spawn(forgotten, i)
        await asyncio.sleep(0)
        for _ in range(3):
            gc.collect()
        await asyncio.sleep(0)
        return sum(1 for t in asyncio.all_tasks() if green_coro(t).parked)

    assert run(loop, start()) == 500
    loop.close()
    del loop
    assert_counters_back(base, "after close()")


def test_close_does_not_hang_on_a_vthread_that_refuses_cancellation():
    # A virtual thread that swallows CancelledError and waits again.  Stock
    # loop.close() never runs the loop; greenhub's close() runs it to finish parked
    # virtual threads, and must still return (unwinding the refusing stack, e.g. with
    # GeneratorExit at await_, as its own _close_core() intends).
    rc, out, err = run_child(
        """
        def stubborn():
            try:
                while True:
                    try:
                        greenhub.await_(asyncio.sleep(0.2))
                    except asyncio.CancelledError:
                        say("swallowed")
            finally:
                say("finally")
        async def start():
            greenhub.spawn(stubborn)
            await asyncio.sleep(0)
        loop = greenhub.new_event_loop()
        loop.run_until_complete(start())
        try:
            loop.close()
        except Exception as exc:
            say("close raised", type(exc).__name__)
        say("closed")
        """,
        timeout=20,
    )
    # Returning is the point, not how fast: a close() that waited on the stubborn
    # virtual thread would never return, and the child would be killed as hung.
    assert rc != "hung", f"loop.close() hung: stdout={out!r}"
    assert rc == 0, err
    assert "finally" in out and "closed" in out, (out, err)


def test_close_from_another_thread_with_parked_vthreads():
    # The loop ran in thread A (now stopped, thread still alive); thread B closes it.
    # Greenlets cannot be resumed from another thread.  Acceptable outcomes: close()
    # finishes the virtual threads (finally blocks run) or raises RuntimeError saying
    # why; not: an "Exception ignored" report and a silently leaked stack/loop.
    rc, out, err = run_child(
        """
        import threading, time
        log = []
        def body():
            try:
                greenhub.await_(asyncio.sleep(100))
            finally:
                log.append("finally")
        loop = greenhub.new_event_loop()
        stopped = threading.Event(); release = threading.Event()
        def thread_a():
            loop.call_soon(lambda: greenhub.spawn(body))
            loop.call_later(0.05, loop.stop)
            loop.run_forever()
            stopped.set()
            release.wait(10)
        a = threading.Thread(target=thread_a); a.start()
        stopped.wait(10)
        try:
            loop.close()
            outcome = "closed"
        except RuntimeError as exc:
            outcome = "RuntimeError"
        release.set(); a.join()
        say(outcome, log)
        """,
        timeout=10,
    )
    assert rc == 0, err
    assert "Exception ignored" not in err, err
    assert out in ("closed ['finally']\n", "RuntimeError []\n"), (out, err)


_DROPPED_SRC = """
import warnings
warnings.simplefilter("ignore")
KIND = sys.argv[1]
log = []
def body():
    try:
        greenhub.await_(asyncio.get_running_loop().create_future())
    finally:
        log.append("finally")
async def native():
    try:
        await asyncio.get_running_loop().create_future()
    finally:
        log.append("finally")
async def start():
    if KIND == "greenhub":
        greenhub.spawn(body)
    else:
        asyncio.get_running_loop().create_task(native())
    await asyncio.sleep(0)
loop = greenhub.new_event_loop() if KIND == "greenhub" else asyncio.new_event_loop()
loop.set_exception_handler(lambda lp, ctx: None)
loop.run_until_complete(start())
del loop
for _ in range(3):
    gc.collect()
c = _core.debug_counters()
say(log, c["loops"], c["coros"], c["parked"])
"""


@pytest.mark.xfail(
    strict=True,
    reason="known limitation, documented in docs/guide-vthreads.md: the cycle collector "
    "cannot see references held by a suspended greenlet's stack, so a loop dropped "
    "without close() while a virtual thread is parked in await_() stays alive; "
    "close() (or asyncio.run / greenhub.run) finishes such virtual threads",
)
def test_loop_dropped_without_close_with_a_parked_vthread():
    # Stock asyncio: an unclosed loop and its pending task are garbage-collected (with
    # ResourceWarning / "Task was destroyed but it is pending!"), and the coroutine's
    # finally block runs when it is closed.  The same is expected of a virtual thread.
    rc, out, err = run_child(_DROPPED_SRC, args=("asyncio",))
    assert (rc, out) == (0, "['finally'] 0 0 0\n"), err  # the stock reference
    rc, out, err = run_child(_DROPPED_SRC, args=("greenhub",))
    assert (rc, out) == (0, "['finally'] 0 0 0\n"), (out, err)


# --- Ctrl-C -------------------------------------------------------------------------------

_SIGINT_GREEN = """
def sync_wait(name, n):
    if n:
        return sync_wait(name, n - 1)
    try:
        greenhub.await_(asyncio.sleep(30))
    except asyncio.CancelledError:
        say(name, "cancelled")
        raise
    finally:
        say(name, "finally")

async def main():
    for i in range(3):
        greenhub.spawn(sync_wait, f"other{i}", 10 + i)
    asyncio.get_running_loop().call_later(0.02, ready)
    sync_wait("main", 50)

try:
    greenhub.run(main())
except KeyboardInterrupt:
    say("KeyboardInterrupt")
gc.collect()
c = _core.debug_counters()
say("counters", {k: v for k, v in c.items() if v})
"""

_SIGINT_STOCK = """
async def async_wait(name):
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        say(name, "cancelled")
        raise
    finally:
        say(name, "finally")

async def main():
    for i in range(3):
        asyncio.get_running_loop().create_task(async_wait(f"other{i}"))
    asyncio.get_running_loop().call_later(0.02, ready)
    await async_wait("main")

try:
    asyncio.run(main())
except KeyboardInterrupt:
    say("KeyboardInterrupt")
say("counters", {})
"""


def _sorted_lines(text):
    # the other tasks are cancelled together: their order is the set's, not fixed
    lines = text.splitlines()
    return lines[:2], sorted(lines[2:-2]), lines[-2:]


def test_sigint_while_vthreads_suspended_deep_in_sync_code():
    ref = run_child(_SIGINT_STOCK, sigint=True)
    got = run_child(_SIGINT_GREEN, sigint=True)
    assert ref[0] == 0, ref
    assert ref[1].startswith("main cancelled\nmain finally\n"), ref
    assert got[0] == 0, got[2]
    assert _sorted_lines(got[1]) == _sorted_lines(ref[1]), (got[1], got[2])


def test_sigint_uncaught_exit_status_with_suspended_vthread():
    body = """
    def deep(n):
        return greenhub.await_(asyncio.sleep(30)) if n == 0 else deep(n - 1)
    async def main():
        asyncio.get_running_loop().call_later(0.02, ready)
        deep(100)
    greenhub.run(main())
    """
    rc, _, err = run_child(body, sigint=True)
    assert rc == KILLED_BY_SIGINT, (rc, err)
    assert last_line(err) == "KeyboardInterrupt", err


def test_sigint_while_a_vthread_runs_busy_sync_code():
    # The signal lands while Python code runs on a worker greenlet (not in the poll):
    # asyncio.Runner's handler cancels the main task; the next await_ raises
    # CancelledError there; greenhub.run raises KeyboardInterrupt.
    body = """
    def busy():
        n = 0
        try:
            while True:
                n += 1
                if n % 1000 == 0:
                    greenhub.await_(asyncio.sleep(0))
                if n == 100_000:
                    ready()
        except asyncio.CancelledError:
            say("busy cancelled")
            raise
    async def main():
        busy()
    try:
        greenhub.run(main())
    except KeyboardInterrupt:
        say("KeyboardInterrupt")
    """
    rc, out, err = run_child(body, sigint=True)
    assert (rc, out) == (0, "busy cancelled\nKeyboardInterrupt\n"), err


def test_sigint_with_vthread_inside_sqlalchemy_greenlet_spawn():
    pytest.importorskip("sqlalchemy.util")
    body = """
    from sqlalchemy.util import greenlet_spawn, await_only
    def inner():
        try:
            await_only(asyncio.sleep(30))
        except asyncio.CancelledError:
            say("inner cancelled")
            raise
    def outer():
        return greenhub.await_(greenlet_spawn(inner))
    async def main():
        asyncio.get_running_loop().call_later(0.02, ready)
        outer()
    try:
        greenhub.run(main())
    except KeyboardInterrupt:
        say("KeyboardInterrupt")
    """
    rc, out, err = run_child(body, sigint=True)
    assert (rc, out) == (0, "inner cancelled\nKeyboardInterrupt\n"), err
