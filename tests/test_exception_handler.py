"""Exception handler API: set/get, default handler logging, contexts, errors in handlers."""

import contextvars
import logging
import re

import pytest
from support import PY312, PY313, error_of, run_once


# Python 3.13 shows a callback's arguments in messages and reprs only in debug mode.
def _args(text):
    return "()" if PY313 else text


def _raise_value_error(*args):
    raise ValueError("boom")


def test_exception_handler_default_is_none(loop):
    assert loop.get_exception_handler() is None


def test_set_and_get_exception_handler(loop):
    def handler(lp, context):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_set_exception_handler_rejects_non_callable(loop):
    assert error_of(loop.set_exception_handler, 42) == (
        TypeError,
        "A callable object or None is expected, got 42",
    )


def test_callback_exception_context(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    h = loop.call_soon(_raise_value_error, 1, "a")
    loop.call_soon(lambda: contexts.append("next callback still runs"))
    run_once(loop)
    assert len(contexts) == 2
    lp, ctx = contexts[0]
    assert lp is loop
    assert set(ctx) == {"message", "exception", "handle"}
    assert re.fullmatch(
        r"Exception in callback _raise_value_error"
        + re.escape(_args("(1, 'a')"))
        + r" at .*test_exception_handler\.py:\d+",
        ctx["message"],
    ), ctx["message"]
    assert isinstance(ctx["exception"], ValueError)
    assert str(ctx["exception"]) == "boom"
    assert ctx["exception"].__traceback__ is not None
    assert ctx["handle"] is h
    assert contexts[1] == "next callback still runs"


def test_timer_callback_exception_context(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    h = loop.call_later(0, _raise_value_error)
    run_once(loop)
    assert [c["handle"] for c in contexts] == [h]
    assert contexts[0]["message"].startswith("Exception in callback _raise_value_error()")


def test_base_exception_subclass_in_callback_goes_to_handler(loop):
    # Only SystemExit and KeyboardInterrupt leave the loop; any other BaseException
    # is reported like an Exception.
    class Custom(BaseException):
        pass

    def boom():
        raise Custom("custom")

    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    loop.call_soon(boom)
    run_once(loop)
    assert len(contexts) == 1
    assert type(contexts[0]["exception"]) is Custom


def test_default_exception_handler_logs_to_asyncio_logger(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.call_soon(_raise_value_error)
    run_once(loop)
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    rec = records[0]
    assert rec.levelno == logging.ERROR
    lines = rec.getMessage().splitlines()
    assert lines[0].startswith("Exception in callback _raise_value_error()")
    assert lines[1].startswith("handle: <Handle _raise_value_error() at ")
    assert rec.exc_info[0] is ValueError
    caplog.clear()


def test_call_exception_handler_with_custom_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    ctx = {"message": "hello", "extra": 1}
    loop.call_exception_handler(ctx)
    assert contexts == [(loop, ctx)]


def test_call_exception_handler_default_logs_message_and_keys(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.call_exception_handler({"message": "custom message", "zeta": 1, "alpha": "x"})
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert msgs == ["custom message\nalpha: 'x'\nzeta: 1"]


def test_default_exception_handler_without_message(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.default_exception_handler({})
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert msgs == ["Unhandled exception in event loop"]


def test_error_in_custom_handler_is_logged_by_default_handler(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")

    def bad_handler(lp, ctx):
        raise RuntimeError("handler failed")

    loop.set_exception_handler(bad_handler)
    loop.call_soon(_raise_value_error)
    loop.call_soon(lambda: None)
    run_once(loop)
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    assert records[0].getMessage().startswith("Unhandled error in exception handler")
    assert records[0].exc_info[0] is RuntimeError
    caplog.clear()


def test_keyboard_interrupt_from_exception_handler_propagates(loop):
    class Stop(KeyboardInterrupt):
        pass

    def handler(lp, ctx):
        raise Stop

    loop.set_exception_handler(handler)
    loop.call_soon(_raise_value_error)
    with pytest.raises(Stop):
        run_once(loop)
    assert not loop.is_running()
    run_once(loop)  # run_once's stop() is still queued


@pytest.mark.skipif(not PY312, reason="the handler runs in the handle's context since 3.12")
def test_custom_handler_runs_in_the_callback_context(loop):
    var = contextvars.ContextVar("handler_var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "callback-ctx")
    seen = []
    loop.set_exception_handler(lambda lp, c: seen.append(var.get()))
    loop.call_soon(_raise_value_error, context=ctx)
    run_once(loop)
    assert seen == ["callback-ctx"]


def test_task_exception_never_retrieved_is_reported(loop):
    import gc

    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def fails():
        raise ValueError("task failed")

    task = loop.create_task(fails())
    run_once(loop)
    assert task.done()
    del task
    gc.collect()
    assert len(contexts) == 1
    assert contexts[0]["message"] == "Task exception was never retrieved"
    assert isinstance(contexts[0]["exception"], ValueError)
    contexts.clear()


def test_exception_message_is_the_same_on_both_loops(both_loops):
    # Same callback, same args: the message text must be identical across loops.
    messages = {}
    for kind, lp in both_loops.items():
        got = []
        lp.set_exception_handler(lambda _lp, ctx, got=got: got.append(ctx["message"]))
        lp.call_soon(_raise_value_error, 1, [2], {"k": 3})
        run_once(lp)
        messages[kind] = got
    assert messages["greenhub"] == messages["asyncio"]
    assert len(messages["asyncio"]) == 1


def test_asyncio_future_exception_in_done_callback(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    fut = loop.create_future()
    fut.add_done_callback(_raise_value_error)
    fut.set_result(None)
    run_once(loop)
    assert len(contexts) == 1
    expected = "Exception in callback _raise_value_error" + ("()" if PY313 else "(<Future")
    assert contexts[0]["message"].startswith(expected), contexts[0]["message"]
    assert isinstance(contexts[0]["exception"], ValueError)
