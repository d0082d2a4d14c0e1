"""greenhub.await_() in worker threads runs on the loop that owns the work.

Sync code in a thread that a running loop handed work to - ``loop.run_in_executor()``,
``asyncio.to_thread()``, anyio's worker threads (Starlette's thread pool, so FastAPI's
``def`` endpoints), asgiref's ``sync_to_async`` (Django's) - waits with
``greenhub.await_()`` on *that* loop: objects bound to it (an ``asyncio.Queue``, an
``httpx.AsyncClient``) work, and only the worker thread blocks.

Each test runs on both loops.  Where the stock loop has its own way to do the same from
that thread, the stock run uses it and the results must be equal:

- run_in_executor / to_thread: nothing marks a stock loop's executor calls, so sync code
  there must name the loop by hand: ``asyncio.run_coroutine_threadsafe(coro,
  loop).result()`` (asgiref's ``async_to_sync`` there would start a private loop, the
  very problem this fixes);
- asgiref ``sync_to_async`` threads: asgiref's ``async_to_sync``;
- anyio worker threads: anyio names the thread's loop on any loop, so greenhub.await_()
  itself runs on the stock loop too.
"""

import asyncio
import concurrent.futures
import contextvars
import socket
import threading

import pytest
import support
from vthread_helpers import gloop_fixture, in_thread  # noqa: F401 - fixture

import greenhub

N = 50  # concurrent workers, as many as a busy web server's thread pool runs

VAR = contextvars.ContextVar("VAR", default="unset")


async def _awaited(awaitable):
    return await awaitable


def executor_bridge(kind, loop):
    """How sync code in an executor thread of `loop` waits on it."""
    if kind == "greenhub":
        return greenhub.await_
    # The stock loop: by hand (see the module docstring).
    return lambda aw: asyncio.run_coroutine_threadsafe(_awaited(aw), loop).result()


def asgiref_bridge(kind):
    """How sync code in an asgiref sync_to_async thread waits on the caller's loop."""
    if kind == "greenhub":
        return greenhub.await_
    from asgiref.sync import async_to_sync

    return lambda aw: async_to_sync(_awaited)(aw)


async def _on_which_loop(value):
    await asyncio.sleep(0)
    return asyncio.get_running_loop(), value


def _queue_round_trip(bridge, q, i):
    """What each worker does: puts into and takes from a Queue of the loop, and says on
    which loop its awaitables ran."""
    bridge(q.put(i))
    got = bridge(q.get())
    ran_on, _ = bridge(_on_which_loop(i))
    return got, ran_on, threading.get_ident()


def _check_round_trips(results, loop):
    assert sorted(r[0] for r in results) == list(range(N))
    assert {r[1] for r in results} == {loop}
    assert threading.get_ident() not in {r[2] for r in results}


def test_to_thread_workers_use_the_loops_queue(loop, kind):
    async def main():
        q = asyncio.Queue()
        bridge = executor_bridge(kind, loop)
        return await asyncio.gather(
            *(asyncio.to_thread(_queue_round_trip, bridge, q, i) for i in range(N))
        )

    _check_round_trips(support.run(loop, main()), loop)


@pytest.mark.parametrize("which", ["default", "own"])
def test_run_in_executor_workers_use_the_loops_queue(loop, kind, which):
    async def main(executor):
        q = asyncio.Queue()
        bridge = executor_bridge(kind, loop)
        return await asyncio.gather(
            *(loop.run_in_executor(executor, _queue_round_trip, bridge, q, i) for i in range(N))
        )

    if which == "default":
        _check_round_trips(support.run(loop, main(None)), loop)
    else:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            _check_round_trips(support.run(loop, main(pool)), loop)


def test_exceptions_reach_the_waiting_thread(loop, kind):
    async def fails():
        await asyncio.sleep(0)
        if asyncio.get_running_loop() is loop:
            raise KeyError("from the loop")

    def work(bridge):
        try:
            bridge(fails())
        except KeyError as exc:
            return repr(exc)

    async def main():
        return await asyncio.to_thread(work, executor_bridge(kind, loop))

    assert support.run(loop, main()) == "KeyError('from the loop')"


def test_cancelling_run_in_executor_cancels_what_its_thread_waits_for(gloop):
    # greenhub only: a stock loop's executor future has no link to what its thread
    # waits for by hand, so cancelling it cannot reach that wait.  Here, as with
    # asgiref's sync_to_async, it does: await_() in the thread raises CancelledError.
    outcome = []

    async def main():
        started = asyncio.Event()

        async def waits():
            started.set()
            await asyncio.Event().wait()

        def work():
            try:
                greenhub.await_(waits())
            except asyncio.CancelledError:
                outcome.append("cancelled")
            return "not cancelled"

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = gloop.run_in_executor(pool, work)
            await started.wait()
            fut.cancel()
            # The same single thread: runs once work() has returned.
            return await gloop.run_in_executor(pool, lambda: "after")

    assert gloop.run_until_complete(main()) == "after"
    assert outcome == ["cancelled"]


def test_cancelled_before_its_thread_waits_the_coroutine_is_closed(gloop, recwarn):
    # The run_in_executor() future is cancelled before its thread reaches await_(): the
    # wait raises CancelledError without running the coroutine.  Before, the coroutine
    # was dropped unclosed and warned "coroutine 'Lock.acquire' was never awaited"; a
    # stock-loop task cancelled before its first step closes its coroutine likewise.
    outcome = []

    async def main():
        lock = asyncio.Lock()
        await lock.acquire()
        entered, gate = threading.Event(), threading.Event()
        coros = []

        def work():
            entered.set()
            gate.wait()
            coro = lock.acquire()
            coros.append(coro)
            try:
                greenhub.await_(coro)
            except asyncio.CancelledError:
                outcome.append("cancelled")

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = gloop.run_in_executor(pool, work)
            await asyncio.to_thread(entered.wait)  # the thread runs work(), at the gate
            fut.cancel()
            gate.set()
            await gloop.run_in_executor(pool, lambda: None)  # work() has returned
        lock.release()
        return [c.cr_frame is None for c in coros], lock.locked()

    assert gloop.run_until_complete(main()) == ([True], False)
    assert outcome == ["cancelled"]
    import gc

    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_to_thread_contextvars_go_in_and_come_back(gloop):
    # greenhub only (stock has no such call): to_thread copies the caller's context
    # into the thread; await_() runs the awaitable in a copy of the thread's context
    # and copies its changes back, as asgiref's async_to_sync does.
    async def reads_and_sets():
        seen = VAR.get()
        VAR.set("set on the loop")
        return seen

    def work():
        seen = greenhub.await_(reads_and_sets())
        return seen, VAR.get()

    async def main():
        VAR.set("from the caller")
        return await asyncio.to_thread(work)

    assert gloop.run_until_complete(main()) == ("from the caller", "set on the loop")


def test_call_marked_by_a_loop_that_is_not_running_keeps_its_own_loop(gloop):
    # A call marked as gloop's (as run_in_executor() submits it) whose loop is not
    # running falls back to what await_() did before: this thread's own loop - not a
    # wait that no loop would ever end.
    from greenhub import _colours

    async def here():
        return asyncio.get_running_loop()

    def work():
        return greenhub.await_(here())

    ran_on = in_thread(_colours._owned_call, _colours._Home(gloop), work)
    assert ran_on is not gloop and isinstance(ran_on, greenhub.Loop)


def test_thread_waiting_on_a_loop_that_gets_closed_is_told(gloop, monkeypatch):
    # greenhub only (a marked call).  The loop stops and is closed while a worker thread
    # waits for a task on it: the task is dropped, so nothing would ever end the wait;
    # the thread notices the closed loop (it looks every _CLOSED_POLL seconds, shortened
    # here) and raises RuntimeError instead of hanging.
    from greenhub import _colours

    monkeypatch.setattr(_colours, "_CLOSED_POLL", 0.01)

    events = {}

    async def waits():
        events["started"].set()
        await asyncio.Event().wait()

    def work():
        try:
            greenhub.await_(waits())
        except RuntimeError as exc:
            return str(exc)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:

        async def main():
            events["started"] = asyncio.Event()
            call = pool.submit(_colours._owned_call, _colours._Home(gloop), work)
            await events["started"].wait()
            events.clear()
            return call

        call = gloop.run_until_complete(main())
        with support.warnings_ignored():
            gloop.close()
        message = call.result(support.hang_timeout(30))
    assert message is not None and "was closed while this thread waited" in message


# -- asgiref / Django ----------------------------------------------------------


@pytest.fixture
def asgiref_sync():
    mod = pytest.importorskip("asgiref.sync", reason="test dependency: make deps installs it")
    yield mod
    # asgiref's one thread for thread-sensitive calls keeps the last caller's loop in its
    # thread-local (main_event_loop) until its next call: let go of the test's loop.
    local = mod.SyncToAsync.threadlocal
    mod.SyncToAsync.single_thread_executor.submit(lambda: vars(local).clear()).result()


def test_asgiref_sync_to_async_threads(loop, kind, asgiref_sync):
    bridge = asgiref_bridge(kind)

    async def reads_and_sets():
        seen = VAR.get()
        VAR.set("set on the loop")
        return seen

    def view(q, i):
        got = _queue_round_trip(bridge, q, i)
        VAR.set(f"view {i}")
        seen = bridge(reads_and_sets())
        return got, seen, VAR.get()

    async def main():
        q = asyncio.Queue()
        calls = [asgiref_sync.sync_to_async(view, thread_sensitive=False)(q, i) for i in range(N)]
        return await asyncio.gather(*calls)

    results = support.run(loop, main())
    _check_round_trips([r[0] for r in results], loop)
    assert [r[1:] for r in results] == [(f"view {i}", "set on the loop") for i in range(N)]


def test_asgiref_sync_to_async_cancellation(loop, kind, asgiref_sync):
    bridge = asgiref_bridge(kind)
    outcome = []

    async def main():
        waiting = asyncio.Event()
        never = asyncio.Event()

        async def waits():
            waiting.set()
            await never.wait()

        def view():
            try:
                bridge(waits())
            except asyncio.CancelledError:
                outcome.append("cancelled")
                raise

        task = asyncio.ensure_future(asgiref_sync.sync_to_async(view)())
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    support.run(loop, main())
    assert outcome == ["cancelled"]


def test_django_sync_to_async_view_code(loop, kind, asgiref_sync):
    # Django's adapter (asgiref's) with thread_sensitive=True, as Django's ORM calls
    # use it: every call shares one thread, which waits on the caller's loop.
    pytest.importorskip("django", reason="test dependency")
    sync_to_async = asgiref_sync.sync_to_async

    bridge = asgiref_bridge(kind)

    async def main():
        q = asyncio.Queue()
        return await asyncio.gather(
            *(sync_to_async(_queue_round_trip)(bridge, q, i) for i in range(N))
        )

    results = support.run(loop, main())
    assert sorted(r[0] for r in results) == list(range(N))
    assert {r[1] for r in results} == {loop}
    assert len({r[2] for r in results}) == 1  # the one thread-sensitive thread


# -- anyio, Starlette, FastAPI ---------------------------------------------------


def test_anyio_to_thread_workers_use_the_loops_queue(loop):
    to_thread = pytest.importorskip("anyio.to_thread", reason="test dependency")

    async def main():
        q = asyncio.Queue()
        return await asyncio.gather(
            *(to_thread.run_sync(_queue_round_trip, greenhub.await_, q, i) for i in range(N))
        )

    _check_round_trips(support.run(loop, main()), loop)


def _fastapi_app():
    fastapi = pytest.importorskip("fastapi", reason="test dependency: make deps installs it")
    httpx = pytest.importorskip("httpx", reason="test dependency")
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # Bound to the server's loop, as an app's shared client or pool is.
        app.state.loop = asyncio.get_running_loop()
        app.state.queue = asyncio.Queue()
        app.state.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=inner))
        async with app.state.client:
            yield

    inner = fastapi.FastAPI()

    @inner.get("/square/{n}")
    async def square(n: int):
        await asyncio.sleep(0)
        return {"square": n * n}

    app = fastapi.FastAPI(lifespan=lifespan)

    @app.get("/sync/{n}")
    def sync_endpoint(n: int, request: fastapi.Request):  # runs in the thread pool
        state = request.app.state
        greenhub.await_(state.queue.put(n))
        got = greenhub.await_(state.queue.get())
        reply = greenhub.await_(state.client.get(f"http://inner/square/{n}"))
        ran_on = greenhub.await_(_on_which_loop(0))[0]
        loop_kind = type(ran_on).__module__.split(".")[0]
        return {
            "got": got,
            "square": reply.json()["square"],
            "loop": loop_kind,
            "server's loop": ran_on is state.loop,
        }

    return app


def _expect(kind):
    return sorted(range(N)), [n * n for n in range(N)], {kind}, {True}


def _replies(bodies):
    return (
        sorted(b["got"] for b in bodies),
        [b["square"] for b in bodies],
        {b["loop"] for b in bodies},
        {b["server's loop"] for b in bodies},
    )


def test_fastapi_def_endpoints_use_loop_bound_clients(loop, kind, request):
    if support.run_in_child(request):  # FastAPI loads pydantic-core: see run_in_child
        return
    httpx = pytest.importorskip("httpx", reason="test dependency")
    app = _fastapi_app()

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                replies = await asyncio.gather(*(c.get(f"/sync/{n}") for n in range(N)))
        assert [r.status_code for r in replies] == [200] * N, [r.text for r in replies]
        return [r.json() for r in replies]

    assert _replies(support.run(loop, main())) == _expect(kind)


def test_fastapi_def_endpoints_under_uvicorn(loop, kind, request):
    if support.run_in_child(request):
        return
    uvicorn = pytest.importorskip("uvicorn", reason="test dependency")
    httpx = pytest.importorskip("httpx", reason="test dependency")
    app = _fastapi_app()
    setting = {"asyncio": "asyncio", "greenhub": "greenhub:new_event_loop"}[kind]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, loop=setting, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()

    async def main():
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            for _ in range(int(support.hang_timeout(30) / 0.01)):
                if server.started:
                    break
                await asyncio.sleep(0.01)
            replies = await asyncio.gather(*(c.get(f"/sync/{n}") for n in range(N)))
        assert [r.status_code for r in replies] == [200] * N, [r.text for r in replies]
        return [r.json() for r in replies]

    try:
        bodies = support.run(loop, main())
    finally:
        server.should_exit = True
        thread.join(support.hang_timeout(30))
        sock.close()
    assert not thread.is_alive()
    assert _replies(bodies) == _expect(kind)


# -- errors a user understands ---------------------------------------------------


async def _main():
    return "never runs"


def _error(fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError(f"{fn!r} did not raise")


def test_run_of_a_coroutine_function_fails_as_asyncio_run(greenhub_leak_check):
    # Before: greenhub.run(main) called main as a sync function and returned the
    # coroutine, which then warned "never awaited".
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine ... was never awaited"
        expected = _error(asyncio.run, _main)
        got = _error(greenhub.run, _main)
        got_with_args = _error(greenhub.run, _main, 1)
        import gc

        gc.collect()
    for exc in (got, got_with_args):
        assert (type(exc), str(exc)) == (type(expected), str(expected))
        assert "greenhub.run(main())" in exc.__notes__[0]


def test_spawn_of_a_coroutine_function_fails_as_asyncio_run(gloop):
    expected = _error(asyncio.run, _main)

    async def main():
        before = len(asyncio.all_tasks())
        exc = _error(greenhub.spawn, _main)
        return exc, len(asyncio.all_tasks()) - before

    got, new_tasks = gloop.run_until_complete(main())
    assert (type(got), str(got)) == (type(expected), str(expected))
    assert "asyncio.create_task" in got.__notes__[0]
    assert new_tasks == 0


def test_spawn_with_no_loop_says_what_to_do():
    exc = in_thread(_error, greenhub.spawn, print)
    assert isinstance(exc, RuntimeError)
    assert "none is running" in str(exc) and "greenhub.run(" in str(exc)


def _await_error(thing):
    """greenhub.await_(thing)'s error, as (type, message, notes)."""
    exc = _error(greenhub.await_, thing)
    return type(exc), str(exc), getattr(exc, "__notes__", [])


@pytest.mark.parametrize("thing", [42, _main], ids=["int", "coroutine-function"])
def test_non_awaitable_gets_the_same_error_everywhere(gloop, thing):
    # The message `await thing` gives in a coroutine, wherever await_() is called: in a
    # virtual thread, with no loop, in a worker thread, in a loop callback (before: a
    # RuntimeError about the callback there, asyncio's "An asyncio.Future, a coroutine
    # or an awaitable is required" with no loop).
    async def native():
        await thing

    expected = _error(asyncio.run, native())
    places = {}

    async def main():
        places["virtual thread"] = await greenhub.spawn(_await_error, thing)
        places["worker thread"] = await asyncio.to_thread(_await_error, thing)
        fut = gloop.create_future()
        gloop.call_soon(lambda: fut.set_result(_await_error(thing)))
        places["loop callback"] = await fut

    gloop.run_until_complete(main())
    places["no loop"] = in_thread(_await_error, thing)
    hint = ["hint: that is a coroutine function"] if thing is _main else []
    for where, (typ, msg, notes) in places.items():
        assert (typ, msg) == (type(expected), str(expected)), where
        assert [n[: len(hint[0])] for n in notes] == hint, where
