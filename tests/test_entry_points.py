"""Ways to get a greenhub loop: Policy, install(), new_event_loop, run(), Runner, asyncio.run.

conftest resets the event loop policy before and after every test, so a test that
installs greenhub's policy cannot leak it into the next one.
"""

import asyncio
import contextvars
import gc
import re
import warnings

import pytest
from support import PY312, error_of

# These tests use asyncio's policy API on purpose, which 3.14 deprecates (its warnings
# are expected there; tests/test_policy_versions.py checks them).
pytestmark = pytest.mark.filterwarnings(
    "ignore:.* is deprecated and slated for removal in Python 3.16:DeprecationWarning"
)


@pytest.fixture
def gh(greenhub_leak_check):
    import greenhub as module

    return module


async def _loop_type_and_result(value):
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()), value


def test_new_event_loop_returns_a_greenhub_loop(gh):
    loop = gh.new_event_loop()
    try:
        assert isinstance(loop, gh.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert isinstance(loop, asyncio.BaseEventLoop)
        assert loop.is_closed() is False and loop.is_running() is False
        other = gh.new_event_loop()
        assert other is not loop
        other.close()
    finally:
        loop.close()


def test_policy_makes_asyncio_new_event_loop_greenhub(gh):
    policy = gh.Policy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    asyncio.set_event_loop_policy(policy)
    assert asyncio.get_event_loop_policy() is policy
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, gh.Loop)
    finally:
        loop.close()


def test_policy_set_event_loop_and_get_event_loop(gh):
    asyncio.set_event_loop_policy(gh.Policy())
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        assert asyncio.get_event_loop_policy().get_event_loop() is loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_asyncio_run_under_policy_uses_greenhub(gh):
    asyncio.set_event_loop_policy(gh.Policy())
    loop_type, value = asyncio.run(_loop_type_and_result(1))
    assert loop_type is gh.Loop and value == 1


def test_install_sets_the_policy(gh):
    assert gh.install() is None
    assert isinstance(asyncio.get_event_loop_policy(), gh.Policy)
    loop_type, value = asyncio.run(_loop_type_and_result("installed"))
    assert loop_type is gh.Loop and value == "installed"


@pytest.mark.skipif(not PY312, reason="asyncio.run(loop_factory=) is new in Python 3.12")
def test_asyncio_run_with_loop_factory(gh):
    loop_type, value = asyncio.run(_loop_type_and_result(2), loop_factory=gh.new_event_loop)
    assert loop_type is gh.Loop and value == 2
    assert isinstance(asyncio.get_event_loop_policy(), asyncio.DefaultEventLoopPolicy)


def test_asyncio_runner_with_loop_factory(gh):
    with asyncio.Runner(loop_factory=gh.new_event_loop) as runner:
        assert runner.run(_loop_type_and_result(3)) == (gh.Loop, 3)
        assert runner.run(_loop_type_and_result(4)) == (gh.Loop, 4)
        loop = runner.get_loop()
        assert isinstance(loop, gh.Loop)
    assert loop.is_closed()


def test_greenhub_run_returns_result(gh):
    assert gh.run(_loop_type_and_result(5)) == (gh.Loop, 5)


def test_greenhub_run_propagates_exception(gh):
    async def main():
        await asyncio.sleep(0)
        raise ValueError("from main")

    with pytest.raises(ValueError, match="from main"):
        gh.run(main())


@pytest.mark.parametrize("debug", [True, False])
def test_greenhub_run_debug(gh, debug):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert gh.run(main(), debug=debug) is debug


def test_greenhub_run_closes_loop_and_cleans_up(gh):
    finalised = []
    leftovers = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalised.append("agen")

    async def forever():
        try:
            await asyncio.sleep(3600)
        finally:
            finalised.append("task")

    async def main():
        g = agen()
        await g.__anext__()
        leftovers.append(g)
        asyncio.ensure_future(forever())
        await asyncio.sleep(0)
        await asyncio.get_running_loop().run_in_executor(None, int, "1")
        return asyncio.get_running_loop()

    loop = gh.run(main())
    assert loop.is_closed()
    # Like asyncio.run(): leftover tasks are cancelled, async generators closed.
    assert sorted(finalised) == ["agen", "task"]
    leftovers.clear()
    del loop
    gc.collect()


@pytest.mark.parametrize("runner", ["asyncio.run", "greenhub.run"])
def test_run_inside_a_running_loop_raises_at_once(gh, runner):
    # asyncio.run() refuses before it makes a loop: one clear RuntimeError, no loop
    # created and torn down half-way, no "coroutine ... was never awaited" warning.
    run = asyncio.run if runner == "asyncio.run" else gh.run

    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            return type(asyncio.get_running_loop()), error_of(run, coro)
        finally:
            coro.close()

    # Warnings are caught here, not by pytest: pytest keeps every recorded warning (and
    # its `source`, e.g. a coroutine holding a loop) alive until the session ends.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outer_type, err = asyncio.run(main())
        gc.collect()
        messages = [str(w.message) for w in caught]
        caught.clear()
    assert outer_type is asyncio.SelectorEventLoop or issubclass(
        outer_type, asyncio.SelectorEventLoop
    )
    assert err is not None and err[0] is RuntimeError
    # greenhub.run may name itself or asyncio.run; what matters is the reason.
    assert re.fullmatch(r"\w+\.run\(\) cannot be called from a running event loop", err[1]), err
    assert messages == []


def stock_run_error(main):
    """What asyncio.run(main) raises (ValueError up to 3.13, TypeError from 3.14)."""
    with pytest.raises(Exception) as stock:
        asyncio.run(main)
    return type(stock.value), str(stock.value)


def test_greenhub_run_rejects_non_coroutine(gh):
    with pytest.raises(Exception) as got:
        gh.run(42)
    assert (type(got.value), str(got.value)) == stock_run_error(42)


def test_greenhub_run_runs_main_in_a_copied_context(gh):
    var = contextvars.ContextVar("run_var", default="unset")

    async def main():
        seen = var.get()
        var.set("changed-in-main")
        return seen

    token = var.set("outer")
    try:
        assert gh.run(main()) == "outer"
        assert var.get() == "outer"
    finally:
        var.reset(token)


def test_policy_loops_are_independent_per_thread(gh):
    import threading

    asyncio.set_event_loop_policy(gh.Policy())
    seen = []

    def thread_main():
        seen.append(asyncio.run(_loop_type_and_result("thread")))

    t = threading.Thread(target=thread_main)
    t.start()
    t.join(10)
    assert seen == [(gh.Loop, "thread")]


def test_greenhub_run_sync_function_is_the_main_vthread():
    import greenhub

    def main(n, step):
        assert greenhub.in_vthread()
        tasks = [greenhub.spawn(greenhub.sleep, step) for _ in range(n)]
        greenhub.await_(asyncio.gather(*tasks))
        return asyncio.get_running_loop().__class__.__name__, n

    assert greenhub.run(main, 50, 0.01) == ("Loop", 50)
    assert asyncio.events._get_running_loop() is None

    def fails():
        raise KeyError("from the main vthread")

    with pytest.raises(KeyError, match="from the main vthread"):
        greenhub.run(fails)


def test_greenhub_run_rejects_args_with_a_coroutine_and_non_callables():
    import greenhub

    async def coro():
        return 1

    c = coro()
    with pytest.raises(TypeError, match="arguments only with a function"):
        greenhub.run(c, 1)
    assert c.cr_frame is None  # closed: no "never awaited" warning
    with pytest.raises(Exception) as got:
        greenhub.run(42)
    assert (type(got.value), str(got.value)) == stock_run_error(42)
