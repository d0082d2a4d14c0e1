"""What a task says about its coroutine: get_coro(), task factories, eager tasks, and
3.14's call graphs (asyncio.capture_call_graph / print_call_graph / format_call_graph,
``python -m asyncio ps|pstree``).

greenhub steps every task through a GreenCoro wrapper (src/task_step.c); the Task it makes
is greenhub._task.Task, whose get_coro() returns the user's coroutine as the stock loop's
does (src/task_create.c says how factories are covered).  The tests run on both loops;
where a virtual thread waits in synchronous code (greenhub.await_()), the stock loop runs
the same program with the wait made by ``await`` in the coroutine, or with no wait at all,
which is what the synchronous frames look like on the stock loop.  One case has no stock
counterpart (a graph taken inside a coroutine that await_() runs): greenhub only.
"""

import asyncio
import inspect
import io
import os
import re
import subprocess
import sys
import types

import pytest
from support import PY312, normalise_repr, run
from vthread_helpers import gloop_fixture  # noqa: F401 - the gloop fixture

import greenhub
from greenhub import _core
from greenhub._task import green_coro

PY314 = sys.version_info >= (3, 14)
needs_graph = pytest.mark.skipif(not PY314, reason="asyncio.capture_call_graph is 3.14+")
needs_eager = pytest.mark.skipif(not PY312, reason="eager tasks are 3.12+")


# --- get_coro() is the coroutine ------------------------------------------------------


def test_get_coro_is_the_coroutine_passed_to_create_task(loop):
    async def body():
        await asyncio.sleep(0)
        return asyncio.current_task().get_coro()

    async def main():
        c1, c2, c3 = body(), body(), body()
        t1 = loop.create_task(c1)
        t2 = asyncio.create_task(c2, name="n")
        t3 = asyncio.ensure_future(c3)
        assert (t1.get_coro(), t2.get_coro(), t3.get_coro()) == (c1, c2, c3)
        assert t1.get_coro() is c1 and t2.get_coro() is c2 and t3.get_coro() is c3
        # from inside, while it runs, and once it is done
        assert await t1 is c1 and t1.get_coro() is c1
        async with asyncio.TaskGroup() as tg:
            c4 = body()
            t4 = tg.create_task(c4)
        assert t4.get_coro() is c4 and t4.result() is c4
        await asyncio.gather(t2, t3)
        return c1

    assert run(loop, main()) is not None


def test_get_coro_is_what_inspect_and_types_expect(loop):
    states = []

    async def body():
        states.append(inspect.getcoroutinestate(asyncio.current_task().get_coro()))
        await asyncio.sleep(0)

    async def main():
        t = loop.create_task(body())
        c = t.get_coro()
        assert type(c) is types.CoroutineType
        assert inspect.iscoroutine(c) and asyncio.iscoroutine(c)
        states.append(inspect.getcoroutinestate(c))
        await asyncio.sleep(0)
        states.append(inspect.getcoroutinestate(c))
        await t
        states.append(inspect.getcoroutinestate(c))

    run(loop, main())
    assert states == ["CORO_CREATED", "CORO_RUNNING", "CORO_SUSPENDED", "CORO_CLOSED"]


def test_task_repr_names_the_coroutine_as_on_the_stock_loop(both_loops):
    async def body(fut):
        await fut

    reprs = {}
    for kind, loop in both_loops.items():

        async def main(loop=loop):
            fut = loop.create_future()
            t = loop.create_task(body(fut), name="r")
            seen = [repr(t)]
            await asyncio.sleep(0)
            seen.append(repr(t))
            fut.set_result(None)
            await t
            seen.append(repr(t))
            return seen

        reprs[kind] = [normalise_repr(r) for r in run(loop, main())]
    assert reprs["greenhub"] == reprs["asyncio"]
    assert "coro=<test_task_repr_names_the_coroutine_as_on_the_stock_loop" in reprs["asyncio"][0]


def test_get_coro_in_debug_mode_and_the_source_traceback(loop):
    loop.set_debug(True)

    async def body():
        pass

    async def main():
        c = body()
        line = sys._getframe().f_lineno + 1
        t = loop.create_task(c)
        assert t.get_coro() is c
        assert t._source_traceback[-1][:2] == (__file__, line)
        await t

    run(loop, main())


def test_get_coro_through_a_replaced_asyncio_tasks_task(loop, monkeypatch):
    class Replaced(asyncio.Task):
        pass

    monkeypatch.setattr(asyncio.tasks, "Task", Replaced)

    async def body():
        return type(asyncio.current_task())

    async def main():
        c = body()
        t = loop.create_task(c)
        assert type(t) is Replaced and t.get_coro() is c
        return await t

    assert run(loop, main()) is Replaced


# --- task factories ---------------------------------------------------------------------


class MyTask(asyncio.Task):
    pass


class OwnGetCoro(asyncio.Task):
    calls = 0

    def get_coro(self):
        OwnGetCoro.calls += 1
        return super().get_coro()


@pytest.mark.parametrize("task_class", [asyncio.Task, MyTask])
def test_get_coro_with_a_task_factory(loop, task_class):
    made = []

    def factory(loop, coro, **kwargs):
        t = task_class(coro, loop=loop, **kwargs)
        made.append(t)
        return t

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def body():
        await asyncio.sleep(0)
        return asyncio.current_task().get_coro()

    async def main():
        c = body()
        t = asyncio.create_task(c, name="f")
        assert made[-1] is t and type(t) is task_class and t.get_name() == "f"
        assert t.get_coro() is c
        assert await t is c

    run(loop, main())


def test_a_task_class_with_its_own_get_coro_is_left_alone(loop, kind):
    loop.set_task_factory(lambda loop, coro, **kw: OwnGetCoro(coro, loop=loop, **kw))

    async def body():
        pass

    async def main():
        c = body()
        t = loop.create_task(c)
        before = OwnGetCoro.calls
        got = t.get_coro()
        assert OwnGetCoro.calls == before + 1  # the class's method ran
        await t
        return c, got

    c, got = run(loop, main())
    # super().get_coro() is asyncio's: the coroutine on the stock loop, greenhub's
    # wrapper on greenhub (the Task steps it); its .coroutine is the user's.
    if kind == "asyncio":
        assert got is c
    else:
        assert type(got) is _core.GreenCoro and got.coroutine is c


@needs_eager
def test_eager_task_factory_get_coro_and_get_task_factory(loop):
    loop.set_task_factory(asyncio.eager_task_factory)
    assert loop.get_task_factory() is asyncio.eager_task_factory
    steps = []

    async def body(fut):
        steps.append(("first step", asyncio.current_task().get_coro()))
        await fut
        return "done"

    async def main():
        fut = loop.create_future()
        c = body(fut)
        t = asyncio.create_task(c, name="eager")
        assert steps == [("first step", c)]  # ran inside create_task()
        assert t.get_coro() is c and t.get_name() == "eager" and not t.done()
        fut.set_result(None)
        return await t, t.get_coro() is c

    assert run(loop, main()) == ("done", True)
    # set back what get_task_factory() gave: still the eager factory, and eager
    loop.set_task_factory(loop.get_task_factory())
    assert loop.get_task_factory() is asyncio.eager_task_factory


@needs_eager
def test_custom_eager_task_factory_get_coro(loop):
    loop.set_task_factory(asyncio.create_eager_task_factory(MyTask))

    async def body(fut):
        await fut
        return "later"

    async def main():
        fut = loop.create_future()
        c = body(fut)
        t = loop.create_task(c)
        assert not t.done() and type(t) is MyTask and t.get_coro() is c
        fut.set_result(None)
        return await t

    assert run(loop, main()) == "later"


@pytest.mark.skipif(
    sys.version_info < (3, 13), reason="3.12.0-3.12.1 crash in get_coro() of such a task"
)
@pytest.mark.parametrize("factory", ["eager_task_factory", "custom", "eager_start"])
def test_get_coro_of_an_eager_task_done_in_its_first_step_is_none(loop, factory):
    """The Task drops a coroutine that finished in its eager first step (3.13+)."""
    if factory == "eager_start" and not PY314:
        pytest.skip("create_task(eager_start=) is 3.14+")
    if factory == "eager_task_factory":
        loop.set_task_factory(asyncio.eager_task_factory)
    elif factory == "custom":
        loop.set_task_factory(asyncio.create_eager_task_factory(MyTask))
    kwargs = {"eager_start": True} if factory == "eager_start" else {}

    async def body():
        return "at once"

    async def main():
        t = loop.create_task(body(), **kwargs)
        assert t.done() and t.get_coro() is None
        return t.result()

    assert run(loop, main()) == "at once"


@pytest.mark.skipif(not PY314, reason="create_task(eager_start=) is 3.14+")
def test_create_task_eager_start_get_coro(loop):
    async def body():
        return asyncio.current_task().get_coro()

    async def main():
        c = body()
        t = asyncio.create_task(c, eager_start=True)
        assert t.done() and t.result() is c and t.get_coro() is None  # dropped once done
        c2 = body()
        t2 = loop.create_task(c2, eager_start=False, name="lazy")
        assert not t2.done() and t2.get_coro() is c2
        return await t2

    assert run(loop, main()) is not None


# --- eager first steps that wait in synchronous code ------------------------------------


# What _eager_waiter_program() logs: the first step runs in create_task() and waits in
# sync code; the creator goes on; the task resumes as itself.
EAGER_WAITER_LOG = [
    "first step",
    "sync part waits",
    "created, done=False",
    "creator goes on",
    "sync part got 21",
    "current task is mine: True",
    "result 42",
]


def _eager_waiter_program(loop, kind, log):
    """A task whose eager first step waits (greenhub: in sync code, under await_)."""

    def sync_part(fut):
        log.append("sync part waits")
        got = greenhub.await_(fut)
        log.append(f"sync part got {got}")
        return got

    async def body(fut):
        log.append("first step")
        if kind == "greenhub":
            got = sync_part(fut)
        else:
            log.append("sync part waits")
            got = await fut
            log.append(f"sync part got {got}")
        log.append(f"current task is mine: {asyncio.current_task() is me[0]}")
        return got * 2

    me = []

    async def main(make):
        fut = loop.create_future()
        c = body(fut)
        t = make(c)
        me.append(t)
        log.append(f"created, done={t.done()}")
        assert t.get_coro() is c
        # only that task waits: this one goes on, and so does the loop
        await asyncio.sleep(0)
        log.append("creator goes on")
        fut.set_result(21)
        result = await t
        log.append(f"result {result}")

    return main


@needs_eager
def test_eager_factory_first_step_waits_in_sync_code(loop, kind):
    loop.set_task_factory(asyncio.eager_task_factory)
    log = []
    main = _eager_waiter_program(loop, kind, log)
    run(loop, main(asyncio.create_task))
    assert log == EAGER_WAITER_LOG


@pytest.mark.skipif(not PY314, reason="create_task(eager_start=) is 3.14+")
def test_eager_start_first_step_waits_in_sync_code(loop, kind):
    log = []
    main = _eager_waiter_program(loop, kind, log)
    run(loop, main(lambda c: asyncio.create_task(c, eager_start=True)))
    assert log == EAGER_WAITER_LOG


# --- 3.14: capture_call_graph(), print_call_graph(), format_call_graph() -----------------


def _walk(graph):
    """A FutureCallGraph as nested lists: (task name or "F", [frame entries], [awaiters]);
    frames as "a <coroutine>" / "s <function>" with their line numbers."""
    fut = graph.future
    name = _unnumbered(fut.get_name()) if isinstance(fut, asyncio.Task) else "F"
    frames = []
    for entry in graph.call_stack:
        f = entry.frame
        gen = f.f_generator
        tag = "s" if gen is None else "a"
        frames.append(f"{tag} {f.f_code.co_name}:{f.f_lineno}")
    return [name, frames, sorted((_walk(g) for g in graph.awaited_by), key=lambda e: e[0])]


def _unnumbered(name):
    """Default task names count the tasks of the whole process: "Task-N"."""
    return re.sub(r"\bTask-\d+\b", "Task-N", name)


def _format(text):
    """The lines of a printed graph, sorted: the awaiters of a future are a set, listed
    in no fixed order."""
    return sorted(_unnumbered(re.sub(r"id=0x[0-9a-f]+", "id=ID", text)).splitlines())


def _on_both(both_loops, scenario):
    """{kind: scenario(kind, loop)} for the stock loop and greenhub."""
    return {kind: scenario(kind, loop) for kind, loop in both_loops.items()}


def _graph_from_inside(kind, loop):
    got = {}

    async def leaf():
        await asyncio.sleep(0)
        got["graph"] = _walk(asyncio.capture_call_graph())
        buf = io.StringIO()
        asyncio.print_call_graph(file=buf)
        got["printed"] = _format(buf.getvalue())
        got["formatted"] = _format(asyncio.format_call_graph())

    async def middle():
        await leaf()

    async def waiter(t):
        await t

    async def main():
        async with asyncio.TaskGroup() as tg:
            t = tg.create_task(middle(), name="worker")
            tg.create_task(waiter(t), name="waiter")

    run(loop, main())
    return got


@needs_graph
def test_call_graph_from_inside_a_task(both_loops):
    out = _on_both(both_loops, _graph_from_inside)
    assert out["greenhub"] == out["asyncio"]
    assert out["asyncio"]["graph"][0] == "worker"
    assert [e.split(":")[0] for e in out["asyncio"]["graph"][1]] == ["a leaf", "a middle"]
    assert any("name='waiter'" in ln for ln in out["asyncio"]["printed"])
    assert any(
        "in async _graph_from_inside.<locals>.leaf()" in ln for ln in out["asyncio"]["formatted"]
    )


def _graph_from_sync_code(kind, loop):
    got = {}

    def sync_part():
        if kind == "greenhub":
            greenhub.await_(asyncio.sleep(0))
        got["graph"] = _walk(asyncio.capture_call_graph())
        got["formatted"] = _format(asyncio.format_call_graph())

    async def outer():
        await asyncio.sleep(0)
        sync_part()

    async def waiter(t):
        await t

    async def main():
        t = asyncio.create_task(outer(), name="vthread")
        await asyncio.create_task(waiter(t), name="waiter")

    run(loop, main())
    return got


@needs_graph
def test_call_graph_from_sync_code_is_the_stock_graph_of_a_sync_call(both_loops):
    """From a synchronous frame: on greenhub after it waited in await_(), on the stock loop
    from the same function called without a wait.  Same frames, sync ones included."""
    out = _on_both(both_loops, _graph_from_sync_code)
    assert out["greenhub"] == out["asyncio"]
    frames = out["asyncio"]["graph"][1]
    assert [e.split(":")[0] for e in frames] == ["s sync_part", "a outer"]
    assert out["asyncio"]["graph"][2][0][0] == "waiter"


@needs_graph
def test_call_graph_inside_a_coroutine_run_by_await_stops_at_await(gloop):
    """A coroutine that greenhub.await_() iterates is called by a synchronous frame, which
    asyncio's walk takes for the task's own step: the graph is that coroutine's frames
    (and the task's awaiters), as far as the await_() call."""
    got = {}

    async def inner():
        await asyncio.sleep(0)
        got["graph"] = _walk(asyncio.capture_call_graph())

    def sync_part():
        greenhub.await_(inner())

    async def outer():
        sync_part()

    async def main():
        t = asyncio.create_task(outer(), name="vthread")
        await t

    run(gloop, main())
    name, frames, awaited_by = got["graph"]
    assert name == "vthread"
    assert [e.split(":")[0] for e in frames] == ["a inner"]
    assert [[e.split(":")[0] for e in a[1]] for a in awaited_by] == [["a main"]]


def _graph_of_another_task(kind, loop):
    async def leaf(ev):
        await ev.wait()

    async def middle(ev):
        await leaf(ev)

    async def main():
        ev = asyncio.Event()
        t = asyncio.create_task(middle(ev), name="other")
        w = asyncio.create_task(asyncio.wait_for(t, None), name="w")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        graph = _walk(asyncio.capture_call_graph(t))
        printed = _format(asyncio.format_call_graph(t))
        ev.set()
        await w
        return graph, printed

    return run(loop, main())


@needs_graph
def test_call_graph_of_another_task(both_loops):
    """Another task suspended at a native await: its coroutine chain, as on the stock
    loop (greenhub's get_coro() is the coroutine asyncio.graph walks)."""
    out = _on_both(both_loops, _graph_of_another_task)
    assert out["greenhub"] == out["asyncio"]
    name, frames, _ = out["asyncio"][0]
    assert name == "other"
    assert [e.split(":")[0] for e in frames] == ["a wait", "a leaf", "a middle"]


def _graph_of_a_waiting_vthread(kind, loop):
    def sync_part(ev):
        greenhub.await_(ev.wait())

    async def outer(ev):
        if kind == "greenhub":
            sync_part(ev)
        else:
            await ev.wait()

    async def waiter(t):
        await t

    async def main():
        ev = asyncio.Event()
        t = asyncio.create_task(outer(ev), name="vthread")
        w = asyncio.create_task(waiter(t), name="waiter")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if kind == "greenhub":
            assert green_coro(t).parked
        graph = _walk(asyncio.capture_call_graph(t))
        ev.set()
        await w
        return graph

    return run(loop, main())


@needs_graph
def test_call_graph_of_a_task_waiting_in_sync_code(both_loops):
    """A virtual thread parked in await_(): its coroutine's frame at the call into sync
    code, and its awaiters.  asyncio.graph follows cr_await, which a coroutine running
    synchronous code does not have, so the sync frames below are not in it (they are in
    greenhub.task_stacks()).  On the stock loop the coroutine waits at an `await` on
    that line instead, and the graph goes on into what it awaits."""
    out = _on_both(both_loops, _graph_of_a_waiting_vthread)
    g_name, g_frames, g_awaited = out["greenhub"]
    s_name, s_frames, s_awaited = out["asyncio"]
    assert g_name == s_name == "vthread" and g_awaited == s_awaited
    assert g_awaited[0][0] == "waiter"
    # the same coroutine frame - on greenhub at the call into sync code, two lines above
    # the stock loop's `await` - where the stock graph goes on into what it awaits
    assert [e.split(":")[0] for e in s_frames] == ["a wait", "a outer"]
    assert [e.split(":")[0] for e in g_frames] == ["a outer"]
    assert int(g_frames[0].split(":")[1]) == int(s_frames[1].split(":")[1]) - 2


# --- 3.14: python -m asyncio ps / pstree ------------------------------------------------

_PS_TARGET = """\
import asyncio, sys
kind = sys.argv[1]
if kind == "greenhub":
    import greenhub

async def leaf(ev):
    await ev.wait()

async def middle(ev):
    await leaf(ev)

async def waiter(t):
    await t

async def main():
    loop = asyncio.get_running_loop()
    ev = asyncio.Event()
    done = loop.create_future()
    async with asyncio.TaskGroup() as tg:
        t = tg.create_task(middle(ev), name="native")
        tg.create_task(waiter(t), name="waits-native")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # read stdin until the parent has looked at us
        r = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(r), sys.stdin)
        print("ready", flush=True)
        await r.readline()
        ev.set()

lf = greenhub.new_event_loop if kind == "greenhub" else asyncio.new_event_loop
asyncio.run(main(), loop_factory=lf)
"""


def _ps(kind, tmp_path):
    script = tmp_path / "target.py"
    script.write_text(_PS_TARGET)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [os.path.dirname(os.path.dirname(greenhub.__file__)), env.get("PYTHONPATH")])
    )
    proc = subprocess.Popen(
        [sys.executable, str(script), kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        out = {}
        for cmd in ("ps", "pstree"):
            res = subprocess.run(
                [sys.executable, "-m", "asyncio", cmd, str(proc.pid)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if res.returncode != 0 and "ermission" in res.stderr + res.stdout:
                pytest.skip(f"not allowed to read another process's memory: {res.stderr[-200:]}")
            assert res.returncode == 0, res.stderr
            out[cmd] = res.stdout
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@needs_graph
@pytest.mark.timeout(120)
def test_python_m_asyncio_ps_and_pstree(tmp_path):
    """The out-of-process reader sees greenhub's tasks, their names and who awaits whom,
    as on the stock loop; it reads each Task's coroutine from the Task's C struct, where
    greenhub's Task holds the GreenCoro wrapper, which it cannot read as a coroutine: the
    coroutine stacks of greenhub's tasks come out empty."""
    stock = _ps("asyncio", tmp_path)
    green = _ps("greenhub", tmp_path)
    for cmd in ("ps", "pstree"):
        for name in ("native", "waits-native"):
            assert name in stock[cmd] and name in green[cmd]
    assert "middle" in stock["ps"] and "leaf" in stock["ps"]
    assert "middle" not in green["ps"] and "leaf" not in green["ps"]

    # the same tasks in the tree (on the stock loop with coroutine nodes between them)
    def tasks(text):
        return sorted(ln.split("(T) ")[1] for ln in text.splitlines() if "(T) " in ln)

    assert tasks(green["pstree"]) == tasks(stock["pstree"])
    assert tasks(stock["pstree"]).count("native") == 2  # under main, and under its waiter
