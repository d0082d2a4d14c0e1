"""greenhub.timeout() / timeout_at(): asyncio.timeout() for sync code.

The first tests are differential: each scenario is written twice, with
``async with asyncio.timeout()`` run on the stock loop and with
``with greenhub.timeout()`` in a virtual thread on greenhub, and both must give the same
observations (exception, expired(), repr, the task's cancellation count).  Then every
waiting path of a virtual thread, the OS-thread mechanism (greenhub's blocking
primitives honour the deadline; other blocking code is not interrupted), and the
refusal in async code.  Deadlines are short; nothing asserts how long anything took.
"""

import asyncio
import gc
import inspect
import queue
import sys
import threading
import time

import pytest
from vthread_helpers import gloop_fixture, in_thread, run_child

import greenhub
import greenhub.socket as gsocket
from greenhub import _core

gloop = gloop_fixture

PY313 = sys.version_info >= (3, 13)
SHORT = 0.02


def run_scenario(kind, loop, async_version, sync_version):
    """The observations of `async_version` (a coroutine function) on the stock loop, or of
    `sync_version` (a sync function) run as a virtual thread on greenhub."""

    async def main():
        if kind == "asyncio":
            return await async_version(loop)
        return await greenhub.spawn(sync_version, loop)

    return loop.run_until_complete(main())


def outcome(fn):
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the observation
        return type(exc).__name__
    return "ok"


# --- differential scenarios ----------------------------------------------------


def test_expires_while_waiting(kind, loop):
    async def a(loop):
        log = []
        try:
            async with asyncio.timeout(SHORT) as t:
                try:
                    await loop.create_future()
                finally:
                    log.append("finally ran")
                log.append("not reached")
        except TimeoutError as exc:
            log.append(("TimeoutError", type(exc.__cause__).__name__))
        log += [t.expired(), repr(t), asyncio.current_task().cancelling()]
        return log

    def s(loop):
        log = []
        try:
            with greenhub.timeout(SHORT) as t:
                try:
                    greenhub.await_(loop.create_future())
                finally:
                    log.append("finally ran")
                log.append("not reached")
        except TimeoutError as exc:
            log.append(("TimeoutError", type(exc.__cause__).__name__))
        log += [t.expired(), repr(t).replace("greenhub.", ""), asyncio.current_task().cancelling()]
        return log

    assert run_scenario(kind, loop, a, s) == [
        "finally ran",
        ("TimeoutError", "CancelledError"),
        True,
        "<Timeout [expired]>",
        0,
    ]


def test_not_expired(kind, loop):
    async def a(loop):
        async with asyncio.timeout(3600) as t:
            fut = loop.create_future()
            loop.call_soon(fut.set_result, 5)
            value = await fut
            entered = repr(t)
        return [value, t.expired(), entered.split(" when=")[0], repr(t)]

    def s(loop):
        with greenhub.timeout(3600) as t:
            fut = loop.create_future()
            loop.call_soon(fut.set_result, 5)
            value = greenhub.await_(fut)
            entered = repr(t).replace("greenhub.", "")
        return [value, t.expired(), entered.split(" when=")[0], repr(t).replace("greenhub.", "")]

    assert run_scenario(kind, loop, a, s) == [5, False, "<Timeout [active]", "<Timeout [finished]>"]


@pytest.mark.parametrize("first", ["inner", "outer"])
def test_nested(kind, loop, first):
    inner_delay, outer_delay = (SHORT, 3600) if first == "inner" else (3600, SHORT)

    async def a(loop):
        log = []
        try:
            async with asyncio.timeout(outer_delay) as outer:
                try:
                    async with asyncio.timeout(inner_delay) as inner:
                        await loop.create_future()
                except TimeoutError:
                    log.append("inner block raised")
                    await asyncio.sleep(0)
        except TimeoutError:
            log.append("outer block raised")
        return [*log, inner.expired(), outer.expired(), asyncio.current_task().cancelling()]

    def s(loop):
        log = []
        try:
            with greenhub.timeout(outer_delay) as outer:
                try:
                    with greenhub.timeout(inner_delay) as inner:
                        greenhub.await_(loop.create_future())
                except TimeoutError:
                    log.append("inner block raised")
                    greenhub.sleep(0)
        except TimeoutError:
            log.append("outer block raised")
        return [*log, inner.expired(), outer.expired(), asyncio.current_task().cancelling()]

    expected = (
        ["inner block raised", True, False, 0] if first == "inner" else ["outer block raised", False, True, 0]
    )
    assert run_scenario(kind, loop, a, s) == expected


@pytest.mark.parametrize("change", ["sooner", "none", "past"])
def test_reschedule(kind, loop, change):
    def new_when(loop, t):
        return {"sooner": loop.time() + SHORT, "none": None, "past": loop.time() - 1}[change]

    async def a(loop):
        start = 3600 if change != "none" else SHORT
        try:
            async with asyncio.timeout(start) as t:
                t.reschedule(new_when(loop, t))
                fut = loop.create_future()
                loop.call_later(SHORT * 3, fut.set_result, "done")
                await fut
        except TimeoutError:
            return ["TimeoutError", t.expired(), t.when() == new_when(loop, t) if change == "none" else None]
        return ["ok", t.expired(), t.when()]

    def s(loop):
        start = 3600 if change != "none" else SHORT
        try:
            with greenhub.timeout(start) as t:
                t.reschedule(new_when(loop, t))
                fut = loop.create_future()
                loop.call_later(SHORT * 3, fut.set_result, "done")
                greenhub.await_(fut)
        except TimeoutError:
            return ["TimeoutError", t.expired(), t.when() == new_when(loop, t) if change == "none" else None]
        return ["ok", t.expired(), t.when()]

    expected = ["ok", False, None] if change == "none" else ["TimeoutError", True, None]
    assert run_scenario(kind, loop, a, s) == expected


def test_state_errors(kind, loop):
    async def a(loop):
        log = []
        t = asyncio.timeout(1)
        log.append(outcome(lambda: t.reschedule(None)))
        async with t:
            pass
        log.append(str(_err(lambda: t.reschedule(None))))
        try:
            async with t:
                pass
        except RuntimeError as exc:
            log.append(str(exc))
        log.append(str(_err(lambda: asyncio.timeout(1).reschedule(1))))
        return log

    def s(loop):
        log = []
        t = greenhub.timeout(1)
        log.append(outcome(lambda: t.reschedule(None)))
        with t:
            pass
        log.append(str(_err(lambda: t.reschedule(None))))
        try:
            with t:
                pass
        except RuntimeError as exc:
            log.append(str(exc))
        log.append(str(_err(lambda: greenhub.timeout(1).reschedule(1))))
        return log

    assert run_scenario(kind, loop, a, s) == [
        "RuntimeError",
        "Cannot change state of finished Timeout",
        "Timeout has already been entered",
        "Timeout has not been entered",
    ]


def _err(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("no error")


def test_fires_while_another_cancellation_is_pending(kind, loop):
    # The deadline passes and, in the same iteration, someone else cancels the task:
    # the block must let that CancelledError through instead of turning it into
    # TimeoutError (the task's cancellation count says it is not the block's alone).
    async def a(loop):
        task = asyncio.current_task()
        try:
            async with asyncio.timeout_at(loop.time() - 1) as t:
                loop.call_soon(task.cancel)
                await loop.create_future()
        except asyncio.CancelledError:
            result = ["CancelledError", t.expired(), task.cancelling()]
            task.uncancel()
            return result
        return ["no CancelledError"]

    def s(loop):
        task = asyncio.current_task()
        try:
            with greenhub.timeout_at(loop.time() - 1) as t:
                loop.call_soon(task.cancel)
                greenhub.await_(loop.create_future())
        except asyncio.CancelledError:
            result = ["CancelledError", t.expired(), task.cancelling()]
            task.uncancel()
            return result
        return ["no CancelledError"]

    assert run_scenario(kind, loop, a, s) == ["CancelledError", True, 1]


def test_exception_raised_inside_after_expiry(kind, loop):
    # An exception raised while handling the interruption: it propagates; from 3.13 a
    # TimeoutError is put between it and the CancelledError in its __context__ chain.
    def chain(exc):
        names = []
        while exc is not None:
            names.append(type(exc).__name__)
            exc = exc.__context__
        return names

    async def a(loop):
        try:
            async with asyncio.timeout(SHORT):
                try:
                    await loop.create_future()
                except asyncio.CancelledError:
                    raise ValueError("boom") from None
        except ValueError as exc:
            return chain(exc)

    def s(loop):
        try:
            with greenhub.timeout(SHORT):
                try:
                    greenhub.await_(loop.create_future())
                except asyncio.CancelledError:
                    raise ValueError("boom") from None
        except ValueError as exc:
            return chain(exc)

    expected = ["ValueError", "TimeoutError", "CancelledError"] if PY313 else ["ValueError", "CancelledError"]
    assert run_scenario(kind, loop, a, s) == expected


def test_unrelated_exception_is_untouched(kind, loop):
    async def a(loop):
        try:
            async with asyncio.timeout(3600) as t:
                raise KeyError("k")
        except KeyError:
            return [t.expired(), repr(t)]

    def s(loop):
        try:
            with greenhub.timeout(3600) as t:
                raise KeyError("k")
        except KeyError:
            return [t.expired(), repr(t).replace("greenhub.", "")]

    assert run_scenario(kind, loop, a, s) == [False, "<Timeout [finished]>"]


@pytest.mark.parametrize("delay", [0, -1, None])
def test_zero_negative_and_none(kind, loop, delay):
    # Not waiting: never interrupted (the deadline is only looked at by a wait).
    # Waiting: 0 and negative deadlines interrupt the first wait; None never does.
    async def a(loop):
        async with asyncio.timeout(delay) as t1:
            pass
        try:
            async with asyncio.timeout(delay) as t2:
                fut = loop.create_future()
                loop.call_later(SHORT, fut.set_result, None)
                await fut
        except TimeoutError:
            return [t1.expired(), "TimeoutError", t2.expired()]
        return [t1.expired(), "ok", t2.expired()]

    def s(loop):
        with greenhub.timeout(delay) as t1:
            pass
        try:
            with greenhub.timeout(delay) as t2:
                fut = loop.create_future()
                loop.call_later(SHORT, fut.set_result, None)
                greenhub.await_(fut)
        except TimeoutError:
            return [t1.expired(), "TimeoutError", t2.expired()]
        return [t1.expired(), "ok", t2.expired()]

    expected = [False, "ok", False] if delay is None else [False, "TimeoutError", True]
    assert run_scenario(kind, loop, a, s) == expected


def test_refused_in_async_code(kind, loop):
    # A coroutine (on either loop) cannot be interrupted by a sync block: a clear error.
    async def main():
        with pytest.raises(RuntimeError, match=r"async with asyncio\.timeout"):
            with greenhub.timeout(1):
                pass
        with pytest.raises(RuntimeError, match=r"asyncio\.timeout"):
            with greenhub.timeout_at(None):
                pass

    loop.run_until_complete(main())


# --- every waiting path of a virtual thread -------------------------------------


def _green_pair():
    a, b = gsocket.socketpair()
    return a, b


def _wait_recv():
    a, b = _green_pair()
    with a, b:
        a.recv(10)


def _wait_accept():
    with gsocket.create_server(("127.0.0.1", 0)) as srv:
        srv.accept()


def _wait_sendall():
    a, b = _green_pair()
    with a, b:
        a.sendall(b"x" * (64 << 20))  # more than the socket buffers hold


def _wait_lock():
    lock = greenhub.Lock()
    lock.acquire()
    lock.acquire()


def _wait_rlock_other_owner():
    lock = greenhub.RLock()
    holder = greenhub.spawn(lambda: (lock.acquire(), greenhub.sleep(3600)))
    greenhub.sleep(0)
    try:
        lock.acquire()
    finally:
        holder.cancel()
        greenhub.await_(asyncio.wait([holder]))


def _wait_condition():
    cond = greenhub.Condition()
    with cond:
        try:
            cond.wait()
        finally:
            assert cond._is_owned()  # the lock is held again on the way out


def _wait_semaphore():
    greenhub.Semaphore(0).acquire()


def _wait_queue_get():
    greenhub.Queue().get()


def _wait_queue_put():
    q = greenhub.Queue(1)
    q.put(1)
    q.put(2)


def _wait_task():
    child = greenhub.spawn(greenhub.sleep, 3600)
    greenhub.await_(child)


WAITS = {
    "await_": lambda: greenhub.await_(asyncio.get_running_loop().create_future()),
    "asyncio.sleep": lambda: greenhub.await_(asyncio.sleep(3600)),
    "greenhub.sleep": lambda: greenhub.sleep(3600),
    "Lock": _wait_lock,
    "RLock": _wait_rlock_other_owner,
    "Condition": _wait_condition,
    "Event": lambda: greenhub.Event().wait(),
    "Semaphore": _wait_semaphore,
    "Queue.get": _wait_queue_get,
    "Queue.put": _wait_queue_put,
    "socket.recv": _wait_recv,
    "socket.accept": _wait_accept,
    "socket.sendall": _wait_sendall,
    "await_(task)": _wait_task,
}


@pytest.mark.parametrize("wait", list(WAITS))
def test_interrupts_every_wait_in_a_vthread(gloop, wait):
    def main():
        timers_before = _core.debug_counters()["timers"]
        try:
            with greenhub.timeout(SHORT) as t:
                WAITS[wait]()
        except TimeoutError as exc:
            cause = type(exc.__cause__)
        # (not kept: the traceback's frames hold the interrupted wait's own objects)
        assert t.expired() and cause is asyncio.CancelledError
        assert asyncio.current_task().cancelling() == 0
        greenhub.sleep(0)
        # The virtual thread carries on normally: its waits work, nothing is pending.
        assert greenhub.Queue().put(1) is None
        greenhub.sleep(0.001)
        gc.collect()  # (the counter counts live TimerHandles; a cancelled task's cycle holds one)
        return timers_before, _core.debug_counters()["timers"]

    async def run():
        return await greenhub.spawn(main)

    before, after = gloop.run_until_complete(run())
    assert after == before  # the block's timer is gone


def test_no_timer_left_behind(gloop):
    def main():
        before = _core.debug_counters()["timers"]
        for _ in range(3):
            with greenhub.timeout(3600) as t:
                t.reschedule(gloop.time() + 7200)
                greenhub.sleep(0)
        greenhub.sleep(0)
        return before, _core.debug_counters()["timers"]

    async def run():
        return await greenhub.spawn(main)

    before, after = gloop.run_until_complete(run())
    assert after == before


def test_rescheduled_from_another_vthread(gloop):
    # A watchdog virtual thread moves the deadline of a block it does not run in.
    def worker(box, ready):
        with greenhub.timeout(None) as t:
            box.append(t)
            ready.set()
            greenhub.sleep(3600)

    def main():
        box, ready = [], greenhub.Event()
        task = greenhub.spawn(worker, box, ready)
        ready.wait()
        box[0].reschedule(gloop.time())
        with pytest.raises(TimeoutError):
            greenhub.await_(task)
        return box[0].expired()

    async def run():
        return await greenhub.spawn(main)

    assert gloop.run_until_complete(run()) is True


def test_cancel_of_the_vthread_is_not_a_timeout(gloop):
    def worker():
        with greenhub.timeout(3600):
            greenhub.sleep(3600)

    async def run():
        task = greenhub.spawn(worker)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert gloop.run_until_complete(run()) is True


def test_greenhub_run_main_program(greenhub_leak_check):
    # The gevent-style program: greenhub.run(main) with a sync main.
    def main():
        try:
            with greenhub.timeout(SHORT):
                greenhub.sleep(3600)
        except TimeoutError:
            return "timed out"

    assert greenhub.run(main) == "timed out"


# --- OS threads: greenhub's primitives honour the deadline ---------------------


def _os_condition():
    cond = greenhub.Condition()
    with cond:
        try:
            cond.wait()
        finally:
            assert cond._is_owned()  # held again, although the wait was interrupted


def _os_rlock():
    lock = greenhub.RLock()
    taken = threading.Event()
    done = threading.Event()

    def hold():
        with lock:
            taken.set()
            done.wait()

    other = threading.Thread(target=hold)
    other.start()
    taken.wait()
    try:
        lock.acquire()
    finally:
        done.set()
        other.join()


OS_WAITS = {
    "greenhub.sleep": lambda: greenhub.sleep(3600),
    "Lock": _wait_lock,
    "RLock": _os_rlock,
    "Condition": _os_condition,
    "Event": lambda: greenhub.Event().wait(),
    "Event with a timeout": lambda: greenhub.Event().wait(3600),
    "Semaphore": _wait_semaphore,
    "Queue.get": _wait_queue_get,
    "Queue.get with a timeout": lambda: greenhub.Queue().get(timeout=3600),
    "Queue.put": _wait_queue_put,
}


@pytest.mark.parametrize("wait", list(OS_WAITS))
def test_os_thread_primitives_honour_the_deadline(wait):
    def body():
        with pytest.raises(TimeoutError) as info:
            with greenhub.timeout(SHORT) as t:
                OS_WAITS[wait]()
        assert t.expired() and repr(t) == "<greenhub.Timeout [expired]>"
        assert type(info.value.__cause__).__name__ == "TimeoutInterrupt"
        return True

    assert in_thread(body) is True


def test_os_thread_short_waits_are_not_interrupted():
    # A wait that ends before the deadline returns as it would without the block.
    def body():
        with greenhub.timeout(3600) as t:
            assert greenhub.Event().wait(SHORT) is False
            with pytest.raises(queue.Empty):
                greenhub.Queue().get(timeout=SHORT)
            assert greenhub.Lock().acquire(timeout=SHORT) is True
            greenhub.sleep(0.001)
        return t.expired()

    assert in_thread(body) is False


def test_os_thread_nesting_earliest_deadline_wins():
    def body():
        log = []
        try:
            with greenhub.timeout(SHORT) as outer:
                try:
                    with greenhub.timeout(3600) as inner:
                        greenhub.sleep(3600)
                except TimeoutError:
                    log.append("inner block raised")
        except TimeoutError:
            log.append("outer block raised")
        return [*log, inner.expired(), outer.expired()]

    assert in_thread(body) == ["outer block raised", False, True]


def test_os_thread_reschedule():
    def body():
        with greenhub.timeout(SHORT) as t:
            t.reschedule(None)
            assert greenhub.Event().wait(SHORT * 3) is False  # no longer limited
        try:
            with greenhub.timeout(3600) as t2:
                t2.reschedule(time.monotonic() + SHORT)
                greenhub.sleep(3600)
        except TimeoutError:
            return [t.expired(), t2.expired()]

    assert in_thread(body) == [False, True]


def test_os_thread_other_blocking_code_is_not_interrupted():
    # Documented: time.sleep() (C code, plain sockets) runs to its end; the block then
    # exits normally, as asyncio.timeout() does when nothing awaited.
    def body():
        with greenhub.timeout(0.001) as t:
            time.sleep(SHORT)
        return t.expired()

    assert in_thread(body) is False


def test_os_thread_interrupt_is_not_an_exception():
    # `except Exception` between the wait and the block does not swallow it.
    def body():
        try:
            with greenhub.timeout(SHORT):
                try:
                    greenhub.sleep(3600)
                except Exception:  # noqa: BLE001
                    return "swallowed"
        except TimeoutError:
            return "TimeoutError"

    assert in_thread(body) == "TimeoutError"


def test_exports():
    assert {"timeout", "timeout_at", "Timeout"} <= set(greenhub.__all__)
    assert greenhub.timeout_at(5).when() == 5
    assert greenhub.timeout(None).when() is None


def test_interrupts_monkey_patched_calls():
    # Patched blocking calls wait through the loop in a virtual thread: interrupted too.
    rc, out, err = run_child(
        """
        from greenhub import monkey
        monkey.patch_all()
        import socket, threading, time

        def main():
            results = []
            pair = socket.socketpair()  # (both ends kept open: no EOF)
            for name, wait in [
                ("time.sleep", lambda: time.sleep(3600)),
                ("threading.Event", lambda: threading.Event().wait()),
                ("socket.recv", lambda: pair[0].recv(1)),
            ]:
                try:
                    with greenhub.timeout(0.01):
                        wait()
                except TimeoutError:
                    results.append(name)
            return results

        say(greenhub.run(main))
        """
    )
    assert rc == 0, err
    assert out.strip() == "['time.sleep', 'threading.Event', 'socket.recv']"


def test_os_thread_condition_wait_holds_the_lock_again_when_interrupted_twice():
    # The inner deadline interrupts the wait; while the condition's lock is retaken
    # (another thread holds it) the outer deadline passes too: wait() still returns
    # with the lock held, and the outer block raises TimeoutError.
    cond = greenhub.Condition()
    box = {}
    waiting = threading.Event()

    def other():
        waiting.wait()
        with cond:  # taken as soon as the waiter released it
            box["taken"] = True
            while not (box["outer"].expired() or box.get("done")):
                time.sleep(0.001)

    def body():
        helper = threading.Thread(target=other)
        helper.start()
        try:
            # (0.2 s for the other thread to take the lock: "taken" says it did)
            with greenhub.timeout(0.4) as outer:
                box["outer"] = outer
                with greenhub.timeout(0.2):
                    with cond:
                        waiting.set()
                        try:
                            cond.wait()
                        finally:
                            box["owned"] = cond._is_owned()
        except TimeoutError:
            return box["owned"], box.get("taken")
        finally:
            box["done"] = True
            helper.join()

    assert in_thread(body) == (True, True)


def test_os_thread_await_without_a_loop_honours_the_deadline():
    # greenhub.await_() with no loop running runs the thread's own loop: the block's
    # deadline ends that wait too (before, it ran to its end).
    def body():
        out = []
        with pytest.raises(TimeoutError) as info:
            with greenhub.timeout(SHORT) as t:
                greenhub.await_(asyncio.sleep(3600))
        out += [t.expired(), type(info.value.__cause__).__name__]

        async def own():
            raise TimeoutError("mine")

        with greenhub.timeout(3600) as t2:  # the awaitable's own TimeoutError is not it
            with pytest.raises(TimeoutError, match="mine"):
                greenhub.await_(own())
        out.append(t2.expired())
        with greenhub.timeout(3600):
            out.append(greenhub.await_(asyncio.sleep(0, "done")))
        return out

    assert in_thread(body) == [True, "TimeoutInterrupt", False, "done"]


def test_os_thread_await_after_the_deadline_closes_the_coroutine(loop):
    # The deadline passed before greenhub.await_() is called in a thread with no loop
    # running (its own loop, or one that owns the call): TimeoutError at once, and the
    # coroutine, which never runs, is closed (it was left to warn "never awaited").
    def body():
        coros = [asyncio.sleep(3600), asyncio.sleep(3600)]
        out = []
        for coro in coros:
            with pytest.raises(TimeoutError):
                with greenhub.timeout(0):
                    greenhub.await_(coro)
            out.append(inspect.getcoroutinestate(coro))
        return out

    async def main():
        return await asyncio.to_thread(body)

    closed = [inspect.CORO_CLOSED] * 2
    assert in_thread(body) == closed
    assert loop.run_until_complete(main()) == closed


def test_await_in_a_worker_thread_of_a_running_loop_honours_the_deadline(gloop):
    # In asyncio.to_thread()'s thread greenhub.await_() runs on the loop that owns the
    # call: the block's deadline ends that wait, and nothing is left on the loop.
    def body():
        with greenhub.timeout(SHORT):
            greenhub.await_(asyncio.sleep(3600))

    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(body)
        await asyncio.sleep(0)
        return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]

    assert gloop.run_until_complete(main()) == []
