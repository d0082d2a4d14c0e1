"""Async generator finalisation: firstiter/finalizer hooks and shutdown_asyncgens()."""

import asyncio
import gc
import sys
import warnings


def _agen_factory(log):
    async def agen(tag):
        try:
            yield 1
            yield 2
        finally:
            log.append(("finally", tag, asyncio.get_running_loop() is not None))

    return agen


def test_shutdown_asyncgens_closes_unfinished_generators(loop):
    log = []
    agen = _agen_factory(log)
    keep = []

    async def main():
        for tag in ("a", "b"):
            g = agen(tag)
            assert await g.__anext__() == 1
            keep.append(g)

    loop.run_until_complete(main())
    assert log == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert sorted(log) == [("finally", "a", True), ("finally", "b", True)]


def test_shutdown_asyncgens_ignores_finished_generators(loop):
    log = []
    agen = _agen_factory(log)

    async def main():
        return [x async for x in agen("done")]

    assert loop.run_until_complete(main()) == [1, 2]
    assert log == [("finally", "done", True)]
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == [("finally", "done", True)]


def test_shutdown_asyncgens_reports_errors_to_exception_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    keep = []

    async def bad_agen():
        try:
            yield 1
        finally:
            raise ValueError("aclose failed")

    async def main():
        g = bad_agen()
        await g.__anext__()
        keep.append(g)

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(contexts) == 1
    ctx = contexts[0]
    assert ctx["message"].startswith("an error occurred during closing of asynchronous generator")
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["asyncgen"] is keep[0]


def test_unreferenced_generator_is_aclosed_on_the_loop(loop):
    # The finalizer hook schedules aclose() on the loop when the generator is collected.
    log = []
    agen = _agen_factory(log)

    async def main():
        g = agen("dropped")
        await g.__anext__()
        del g
        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert log == [("finally", "dropped", True)]


def test_generator_iterated_after_shutdown_warns(loop):
    loop.run_until_complete(loop.shutdown_asyncgens())

    async def agen():
        yield 1

    async def main():
        g = agen()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            await g.__anext__()
        await g.aclose()
        return [str(x.message) for x in w if x.category is ResourceWarning]

    msgs = loop.run_until_complete(main())
    assert len(msgs) == 1
    assert "was scheduled after loop.shutdown_asyncgens() call" in msgs[0]


def test_asyncgen_hooks_are_the_loops_while_running(loop):
    seen = []

    async def main():
        hooks = sys.get_asyncgen_hooks()
        seen.append((hooks.firstiter, hooks.finalizer))

    loop.run_until_complete(main())
    firstiter, finalizer = seen[0]
    assert firstiter is not None and finalizer is not None
    assert getattr(firstiter, "__self__", None) is loop
    assert getattr(finalizer, "__self__", None) is loop
