"""Misuse of greenlets against virtual threads, and close / garbage collection with
virtual threads in every state.

A virtual thread waiting in ``greenhub.await_()`` (or idle between two steps, or a worker
greenlet idle in the pool) may only be resumed by its event loop.  ``switch()`` and
``throw()`` on its greenlet from anywhere else - another virtual thread, a plain task, a
foreign greenlet - raise ``greenlet.error`` in the code that tried, and leave the waiting
virtual thread and every other task intact.  (Before, the victim's stack ran on with the
intruder's value and its result went to the intruder's task: a hijack, a leak, and on 3.13
a segfault at garbage collection.)

What bypasses those two methods - greenlet's base-class methods, a finished child
greenlet whose parent the waiting greenlet is, any switch into the greenlet running the
loop - is passed back to the intruder, and gets what it gets on the stock loop, where
every task runs on the main greenlet and such a switch is a switch to oneself: its own
value back, its own exception raised, the child's result.  The tests compute that
reference on the stock loop.

Then ``loop.close()`` and the garbage collector meet virtual threads in each state they
can be in: it must return (bounded), run their finally blocks, and leave greenhub's live
counters at zero.
"""

import asyncio
import gc
import subprocess
import sys
import textwrap
import warnings

import greenlet
import pytest
import support

import greenhub
from greenhub import _core

pytestmark = pytest.mark.timeout(30)


def _attempt(fn):
    try:
        return ("returned", fn())
    except greenlet.error as exc:
        return ("refused", "cannot switch into" in str(exc))
    except BaseException as exc:  # noqa: BLE001 - what happened is the point
        return ("raised", type(exc).__name__)


def _main_greenlet():
    g = greenlet.getcurrent()
    while g.parent is not None:
        g = g.parent
    return g


# How an intruder may try to resume a greenlet `g`.
_ATTACKS = {
    "switch": lambda g: g.switch("intruder"),
    "switch-kwargs": lambda g: g.switch(value="intruder"),
    "throw": lambda g: g.throw(ValueError("intruder")),
    "throw-default": lambda g: g.throw(),
    "base-switch": lambda g: greenlet.greenlet.switch(g, "intruder"),
    "base-throw": lambda g: greenlet.greenlet.throw(g, ValueError("intruder")),
    "dying-child": lambda g: greenlet.greenlet(lambda: "child's result", parent=g).switch(),
}
# Refused up front by the virtual thread's greenlet type.
_REFUSED = {"switch", "switch-kwargs", "throw", "throw-default"}


def _stock_outcome(attack):
    """What the attack gets on the stock loop, where the greenlet a task would attack is
    the main greenlet - the one running the attacker."""

    async def main():
        return _attempt(lambda: _ATTACKS[attack](greenlet.getcurrent()))

    loop = support.new_loop("asyncio")
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def _expected(attack):
    return ("refused", True) if attack in _REFUSED else _stock_outcome(attack)


@pytest.mark.parametrize("attack", sorted(_ATTACKS))
@pytest.mark.parametrize("intruder", ["vthread", "task", "foreign-greenlet"])
def test_resume_parked_vthread(attack, intruder, greenhub_leak_check):
    """A virtual thread parked in await_(): the intruder gets greenlet.error (or, when it
    bypasses the greenlet's methods, the stock loop's outcome); the victim keeps waiting
    and later gets its real result; no object is leaked."""

    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        seen = {}

        def victim():
            seen["g"] = greenlet.getcurrent()
            try:
                return ("victim got", greenhub.await_(fut))
            finally:
                seen["finally"] = True

        v = greenhub.spawn(victim)
        await asyncio.sleep(0)
        hit = _ATTACKS[attack]
        if intruder == "vthread":
            outcome = await greenhub.spawn(_attempt, lambda: hit(seen["g"]))
        elif intruder == "task":
            outcome = _attempt(lambda: hit(seen["g"]))
        else:
            # From a greenlet of the intruder's own.  A refusal comes back to it; what
            # bypasses the greenlet's methods is answered to the step's own greenlet
            # (greenlet does not say which greenlet switched), at its switch into the
            # nested one: the same outcome, one level up.
            outcome = await greenhub.spawn(
                _attempt,
                lambda: greenlet.greenlet(lambda: _attempt(lambda: hit(seen["g"]))).switch(),
            )
            if outcome[0] == "returned" and isinstance(outcome[1], tuple):
                outcome = outcome[1]
        await asyncio.sleep(0)
        fut.set_result("the real result")
        result = await asyncio.wait_for(v, 5)
        return outcome, result, seen.get("finally")

    outcome, result, finally_ran = greenhub.run(main())
    assert outcome == _expected(attack)
    assert result == ("victim got", "the real result")
    assert finally_ran


@pytest.mark.parametrize("attack", sorted(_ATTACKS))
def test_resume_idle_worker(attack, greenhub_leak_check):
    """A virtual thread's greenlet after its task finished (back in the pool or
    dropped), and between two steps of a task still running."""

    async def main():
        seen = {}
        gate = asyncio.Event()

        def first():
            seen["done"] = greenlet.getcurrent()

        await greenhub.spawn(first)

        async def between():
            seen["between"] = greenlet.getcurrent()
            await gate.wait()  # a native await: the task waits between steps
            return "second step ran"

        t = asyncio.get_running_loop().create_task(between())
        await asyncio.sleep(0)
        hit = _ATTACKS[attack]
        out = []
        for name in ("done", "between"):
            out.append(await greenhub.spawn(_attempt, lambda n=name: hit(seen[n])))
        gate.set()
        out.append(await t)
        out.append(await greenhub.spawn(greenhub.await_, asyncio.sleep(0, "still works")))
        return out

    expected = _expected(attack)
    assert greenhub.run(main()) == [expected, expected, "second step ran", "still works"]


def test_kill_idle_worker_from_outside(greenhub_leak_check):
    """greenlet.greenlet.throw(g) (GreenletExit) kills an idle worker for real - greenlet
    cannot tell it from the pool letting it go - and its task, between two steps, gets
    a new one for its next step."""

    async def main():
        seen = {}
        gate = asyncio.Event()

        async def between():
            seen["g"] = greenlet.getcurrent()
            await gate.wait()
            return "second step ran", greenlet.getcurrent() is not seen["g"]

        t = asyncio.get_running_loop().create_task(between())
        await asyncio.sleep(0)
        killed = await greenhub.spawn(_attempt, lambda: greenlet.greenlet.throw(seen["g"]))
        gate.set()
        return killed, seen["g"].dead, await t

    assert greenhub.run(main()) == (("returned", None), True, ("second step ran", True))


@pytest.mark.parametrize("attack", sorted(_ATTACKS))
def test_resume_loop_greenlet_from_a_step(attack, both_loops):
    """The greenlet running the loop waits for the step it drives: a step that switches
    into it (getcurrent().parent, walked to the top) gets what a task gets on the stock
    loop, where that greenlet is its own; the loop goes on."""

    async def main():
        hit = _ATTACKS[attack]
        if asyncio.get_running_loop().__class__.__module__.startswith("greenhub"):
            outcome = await greenhub.spawn(_attempt, lambda: hit(_main_greenlet()))
        else:
            outcome = _attempt(lambda: hit(_main_greenlet()))
        await asyncio.sleep(0.001)
        return outcome, "loop fine"

    results = {k: lp.run_until_complete(main()) for k, lp in both_loops.items()}
    assert results["greenhub"] == results["asyncio"]


def test_child_greenlet_switching_back_to_its_vthread_still_works(greenhub_leak_check):
    """What is allowed: code of a running step switching between its own greenlets
    (SQLAlchemy's greenlet_spawn pattern), await_() from the child included."""

    async def main():
        def child():
            parent = greenlet.getcurrent().parent
            value = greenhub.await_(asyncio.sleep(0, 21))
            return parent.switch(value * 2)

        def vthread():
            c = greenlet.greenlet(child)
            got = c.switch()
            return got

        return await greenhub.spawn(vthread)

    assert greenhub.run(main()) == 42


def test_greenlet_made_in_one_task_finished_by_another(both_loops):
    """Pure greenlet code across tasks: task A makes a greenlet and leaves it suspended,
    task B resumes it and it finishes.  Its parent is A's greenlet (the main greenlet on
    the stock loop); B's switch() gets its result, as on the stock loop."""
    results = {}
    for kind, loop in both_loops.items():
        store = {}

        async def a(store=store):
            def child():
                x = greenlet.getcurrent().parent.switch("first")
                return f"child finished with {x!r}"

            store["g"] = greenlet.greenlet(child)
            return store["g"].switch()

        async def b(store=store):
            return store["g"].switch("from B")

        first = loop.run_until_complete(loop.create_task(a()))
        second = loop.run_until_complete(loop.create_task(b()))
        store.clear()
        results[kind] = (first, second)
    assert results["greenhub"] == results["asyncio"]
    assert results["greenhub"] == ("first", "child finished with 'from B'")


def test_vthread_greenlet_is_a_greenlet():
    async def main():
        return await greenhub.spawn(greenlet.getcurrent)

    g = greenhub.run(main())
    assert isinstance(g, greenlet.greenlet)
    assert type(g) is _core.VirtualThreadGreenlet


# --- await_ before the Python layer is loaded ---------------------------------------


def test_core_await_before_python_layer():
    """greenhub._core loaded on its own (no greenhub package imported): await_() with
    no loop raises a clear RuntimeError instead of calling a hook that is not there."""
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("greenhub._core", {_core.__file__!r})
        core = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(core)
        async def coro():
            return 1
        try:
            core.await_(coro())
        except RuntimeError as exc:
            print("RuntimeError", "import greenhub first" in str(exc))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=support.hang_timeout(30),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "RuntimeError True"


# --- close with virtual threads in every state ----------------------------------------

_STATES = [
    "not-started",
    "native-await",
    "parked",
    "parked-in-child-greenlet",
    "parked-green-socket",
    "parked-cancel-pending",
    "finally-awaits-again",
    "finally-awaits-forever",
    "ignores-cancel",
    "in-no-switch",
    "finished",
]


def _start(loop, state, log):
    """Puts a virtual thread in `state` on `loop` (not running); returns its task."""
    fut = loop.create_future()

    def body():
        try:
            if state == "parked":
                greenhub.await_(fut)
            elif state == "parked-in-child-greenlet":

                def child():
                    return greenlet.getcurrent().parent.switch(greenhub.await_(fut))

                greenlet.greenlet(child).switch()
            elif state == "parked-green-socket":
                import greenhub.socket as gsocket

                a, b = gsocket.socketpair()
                log.append(b)  # kept open: the wait never ends by itself
                try:
                    a.recv(10)
                finally:
                    a.close()
            elif state in ("parked-cancel-pending",):
                greenhub.await_(fut)
            elif state == "finally-awaits-again":
                try:
                    greenhub.await_(fut)
                finally:
                    greenhub.await_(asyncio.sleep(0))
                    log.append("second await_ done")
            elif state == "finally-awaits-forever":
                try:
                    greenhub.await_(fut)
                finally:
                    greenhub.await_(asyncio.sleep(3600))
            elif state == "ignores-cancel":
                while True:
                    try:
                        greenhub.await_(loop.create_future())  # a new one: fut is cancelled
                    except asyncio.CancelledError:
                        log.append("ignored a cancel")
            elif state == "in-no-switch":
                try:
                    with greenhub.no_switch():
                        pass
                    greenhub.await_(fut)
                except greenhub.SwitchError:
                    pass
            elif state == "finished":
                return "done"
        finally:
            log.append(f"finally {state}")

    if state == "native-await":

        async def native():
            try:
                await fut
            finally:
                log.append(f"finally {state}")

        task = loop.create_task(native())
    else:
        task = loop.create_task(greenhub._vthread._call_sync(body, (), {}))  # spawn()'s task
    if state != "not-started":
        support.run_once(loop)
        support.run_once(loop)
    if state == "parked-cancel-pending":
        task.cancel()  # requested; the loop does not run again before close()
    return task


@pytest.mark.parametrize("state", _STATES)
def test_close_with_vthread(state, greenhub_leak_check):
    with support.warnings_ignored():
        _close_with_vthread(state)
        gc.collect()


def _close_with_vthread(state):
    loop = greenhub.new_event_loop()
    loop.set_exception_handler(lambda lp, ctx: None)
    log = []
    _start(loop, state, log)
    # close() is bounded: it returns.  Waiting on the virtual thread instead would take
    # an hour ("finally-awaits-forever") or for ever ("ignores-cancel"), which pytest's
    # timeout reports; how long close() takes is not the point.
    loop.close()
    if state not in ("not-started", "native-await", "finished"):
        # On a greenlet stack: close() unwinds it.  (A task with nothing on a greenlet
        # stack is left as the stock loop leaves it; its coroutine is closed when it is
        # collected.)
        assert f"finally {state}" in log, log
    for item in log:
        if hasattr(item, "close"):
            item.close()


@pytest.mark.parametrize("state", _STATES)
def test_vthread_dropped_without_close(state, greenhub_leak_check):
    """The loop and its tasks dropped without close(): collected without a crash;
    the leak check then finds nothing alive (greenlet kills what is suspended)."""

    def make():
        loop = greenhub.new_event_loop()
        loop.set_exception_handler(lambda lp, ctx: None)
        log = []
        _start(loop, state, log)
        if state in ("not-started", "native-await", "finished"):
            loop.close()  # the stock loop would warn about an unclosed loop otherwise
        for item in log:
            if hasattr(item, "close"):
                item.close()
        return loop

    with support.warnings_ignored():
        loop = make()
        if not loop.is_closed():
            # A loop with virtual threads parked in await_() cannot be collected (their
            # stacks hold it); closing is the only way out, and must work afterwards too.
            gc.collect()
            loop.close()
        del loop
        gc.collect()


# --- greenlet.settrace hooks, threads that end with their loop -----------------------------


def test_await_in_a_greenlet_trace_hook(greenhub_leak_check):
    """greenlet calls a settrace() hook on the greenlet a switch goes to - on the loop's
    greenlet right after a step parked, with the step still current.  await_() there
    parked the step a second time (its parked list then pointed at itself, and close()
    looped for ever).  It is outside the task: RuntimeError, and the task goes on."""
    calls = []

    def hook(event, args):
        if not calls:
            try:
                greenhub.await_(asyncio.sleep(0))
                calls.append("returned")
            except RuntimeError as exc:
                calls.append(("RuntimeError", "outside a task" in str(exc)))

    def vthread():
        old = greenlet.settrace(hook)
        try:
            return greenhub.await_(asyncio.sleep(0.001, "after"))
        finally:
            greenlet.settrace(old)

    async def main():
        return await asyncio.wait_for(greenhub.spawn(vthread), 10)

    assert greenhub.run(main()) == "after"
    assert calls == [("RuntimeError", True)]


_THREADS_BODY = """
import gc, logging, threading
logging.disable(logging.CRITICAL)   # "Task was destroyed but it is pending!"
async def main():
    asyncio.get_running_loop().create_task(asyncio.sleep(100))   # left pending
    await asyncio.sleep(0)
def worker():
    greenhub.await_(main())
for _ in range(25):
    ts = [threading.Thread(target=worker) for _ in range(8)]
    for t in ts: t.start()
    for t in ts: t.join()
gc.collect()
print({k: v for k, v in greenhub._core.debug_counters().items() if v})
"""


def test_threads_ending_with_pending_tasks_leave_no_worker():
    """Each thread's await_() runs on a loop of its own, closed when the thread ends,
    with a task still pending at a native await: its worker greenlet was never ended
    (greenlet cannot end it from another thread once the thread is gone).  close() now
    lets such workers go on the loop's thread."""
    script = "import asyncio, greenhub\n" + _THREADS_BODY
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "{}"


def test_two_threads_with_a_trace_hook_that_lets_the_gil_go():
    """Two threads, a greenhub loop each, and a greenlet.settrace() hook that releases
    the GIL - it runs on the target of every switch, between the driver handing a step
    to a worker and the worker taking it.  The hand-over was one field of the module,
    shared by the threads: the other thread's loop overwrote it and a worker spun for
    ever.  It is the task's own flag now."""
    script = textwrap.dedent(
        """
        import asyncio, threading, time, greenlet, greenhub

        def tracer(event, args):
            time.sleep(0)  # lets the GIL go

        async def task(n):
            for _ in range(n):
                await asyncio.sleep(0)

        async def main():
            await asyncio.gather(*(task(30) for _ in range(10)))

        def thread_main(i, out):
            greenlet.settrace(tracer)
            loop = greenhub.new_event_loop()
            try:
                loop.run_until_complete(main())
                out[i] = "ok"
            finally:
                loop.close()

        out = {}
        ts = [threading.Thread(target=thread_main, args=(i, out)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        print(sorted(out.items()))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[(0, 'ok'), (1, 'ok')]"


def test_close_when_cancelling_a_task_recurses(loop, kind):
    """A task suspended in a gather() of itself: Task.cancel() recurses through the gather
    back into the task until RecursionError.  The stock close() cancels nothing and
    closes; greenhub's cancels its virtual threads, and must close all the same (it raised
    RecursionError and left the loop open for good, its greenlet parked).  Found by
    tests/fuzz_loop.py."""
    log = []

    async def gathers_itself():
        try:
            await asyncio.gather(asyncio.current_task())
        finally:
            log.append("finally")

    def body():
        try:
            greenhub.await_(asyncio.gather(asyncio.current_task()))
        finally:
            log.append("finally")

    async def start():
        if kind == "greenhub":
            return greenhub.spawn(body)
        return loop.create_task(gathers_itself())

    task = loop.run_until_complete(start())
    support.run_once(loop)
    assert not task.done()
    loop.set_exception_handler(lambda lp, ctx: None)
    with support.warnings_ignored():
        loop.close()
        assert loop.is_closed()
        if kind == "greenhub":
            assert log == ["finally"]  # unwound by close()
        else:
            task.get_coro().close()  # what collecting it would do
        del task
        gc.collect()


def test_close_interrupted_by_a_callback_still_closes(loop, kind):
    """close() runs the loop for greenhub's suspended virtual threads (the stock close()
    runs nothing), so a callback queued before it runs - and its SystemExit propagates
    out of close().  The loop must be closed all the same, as the stock loop is: it was
    left open, and each later close() ran the loop again.  Found by tests/fuzz_loop.py."""
    log = []
    fut = loop.create_future()

    async def waits():
        try:
            await fut
        finally:
            log.append("finally")

    def body():
        try:
            greenhub.await_(fut)
        finally:
            log.append("finally")

    async def start():
        if kind == "greenhub":
            return greenhub.spawn(body)
        return loop.create_task(waits())

    task = loop.run_until_complete(start())
    support.run_once(loop)

    def exits():
        raise SystemExit("from a callback")

    loop.call_soon(exits)
    with support.warnings_ignored():
        if kind == "greenhub":
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no "coroutine 'wait' was never awaited"
                with pytest.raises(SystemExit):
                    loop.close()
            assert log == ["finally"]
        else:
            loop.close()  # drops the callback
            task.get_coro().close()  # what collecting it would do
        assert loop.is_closed()
        del task
        gc.collect()
