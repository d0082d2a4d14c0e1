"""Debug mode: the flag, slow-callback warnings, thread checks, callback checks."""

import logging
import os
import re
import sys
import threading
import time
from unittest import mock

import pytest
import support
from support import error_of, run_once

NOT_THREAD_SAFE = "Non-thread-safe operation invoked on an event loop other than the current one"


def _busy_wait(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_debug_default_follows_environment(kind):
    expected = sys.flags.dev_mode or bool(os.environ.get("PYTHONASYNCIODEBUG"))
    loop = support.new_loop(kind, debug=None)
    try:
        assert loop.get_debug() is expected
    finally:
        loop.close()


def test_set_debug_and_get_debug(loop):
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_slow_callback_is_logged_in_debug_mode(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    def slow_cb():
        _busy_wait(0.02)

    loop.call_soon(slow_cb)
    loop.call_soon(lambda: None)  # fast: not logged
    run_once(loop)
    warnings = [r for r in caplog.records if r.name == "asyncio" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    msg = warnings[0].getMessage()
    assert re.fullmatch(
        r"Executing <Handle test_slow_callback_is_logged_in_debug_mode\.<locals>\.slow_cb\(\) "
        r"at \S+test_debug\.py:\d+ created at \S+test_debug\.py:\d+> took (\d+\.\d{3}) seconds",
        msg,
    ), msg
    took = float(msg.rsplit(" took ", 1)[1].split()[0])
    assert took >= 0.02


def test_slow_callback_not_logged_without_debug(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.set_debug(False)
    loop.slow_callback_duration = 0.001
    loop.call_soon(_busy_wait, 0.005)
    run_once(loop)
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_slow_task_step_is_logged_with_the_task_repr(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    async def slow_step():
        _busy_wait(0.02)

    loop.run_until_complete(loop.create_task(slow_step(), name="slowpoke"))
    msgs = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and r.levelno == logging.WARNING
    ]
    assert len(msgs) == 1, msgs
    assert msgs[0].startswith("Executing <Task ")
    assert "name='slowpoke'" in msgs[0]
    assert re.search(r" took \d+\.\d{3} seconds$", msgs[0])


def test_slow_callback_goes_through_base_events_logger(loop):
    # The stock loop logs through asyncio.base_events.logger; code (CPython's own
    # test_base_events) that patches that name must see greenhub's warning as well.
    loop.set_debug(True)
    loop.slow_callback_duration = 0.0
    with mock.patch("asyncio.base_events.logger") as m_logger:
        loop.call_soon(loop.stop)
        loop.run_forever()
    fmt, *args = m_logger.warning.call_args[0]
    assert re.fullmatch(r"Executing <Handle .*stop.*> took \d+\.\d{3} seconds", fmt % tuple(args))


def test_debug_call_soon_from_another_thread_raises(loop):
    loop.set_debug(True)
    errs = []

    def in_loop():
        t = threading.Thread(
            target=lambda: errs.append(
                [
                    error_of(loop.call_soon, print),
                    error_of(loop.call_later, 1, print),
                    error_of(loop.call_at, loop.time() + 1, print),
                ]
            )
        )
        t.start()
        t.join(5)

    loop.call_soon(in_loop)
    run_once(loop)
    assert errs == [[(RuntimeError, NOT_THREAD_SAFE)] * 3]


def test_debug_call_soon_threadsafe_from_another_thread_is_allowed(loop):
    loop.set_debug(True)
    out = []
    errs = []

    def in_loop():
        t = threading.Thread(
            target=lambda: errs.append(error_of(loop.call_soon_threadsafe, out.append, 1))
        )
        t.start()
        t.join(5)

    loop.call_soon(in_loop)
    run_once(loop)
    run_once(loop)
    assert errs == [None]
    assert out == [1]


def test_debug_call_soon_from_another_thread_when_not_running_is_allowed(loop):
    # The thread check only applies while the loop runs in some thread.
    loop.set_debug(True)
    errs, out = [], []
    t = threading.Thread(target=lambda: errs.append(error_of(loop.call_soon, out.append, 1)))
    t.start()
    t.join(5)
    assert errs == [None]
    run_once(loop)
    assert out == [1]


async def _coro_fn():
    pass


@pytest.mark.parametrize(
    "method,args,expected",
    [
        ("call_soon", (42,), "a callable object was expected by call_soon(), got 42"),
        ("call_soon", (_coro_fn,), "coroutines cannot be used with call_soon()"),
        ("call_later", (0, 42), "a callable object was expected by call_at(), got 42"),
        ("call_later", (0, _coro_fn), "coroutines cannot be used with call_at()"),
        ("call_at", (0, 42), "a callable object was expected by call_at(), got 42"),
        (
            "call_soon_threadsafe",
            (42,),
            "a callable object was expected by call_soon_threadsafe(), got 42",
        ),
        (
            "call_soon_threadsafe",
            (_coro_fn,),
            "coroutines cannot be used with call_soon_threadsafe()",
        ),
        (
            "run_in_executor",
            (None, _coro_fn),
            "coroutines cannot be used with run_in_executor()",
        ),
    ],
    ids=[
        "call_soon-non-callable",
        "call_soon-coroutine-function",
        "call_later-non-callable",
        "call_later-coroutine-function",
        "call_at-non-callable",
        "call_soon_threadsafe-non-callable",
        "call_soon_threadsafe-coroutine-function",
        "run_in_executor-coroutine-function",
    ],
)
def test_debug_mode_checks_callbacks(loop, method, args, expected):
    loop.set_debug(True)
    assert error_of(getattr(loop, method), *args) == (TypeError, expected)


def test_debug_mode_rejects_coroutine_objects(loop):
    loop.set_debug(True)
    coro = _coro_fn()
    try:
        assert error_of(loop.call_soon, coro) == (
            TypeError,
            "coroutines cannot be used with call_soon()",
        )
    finally:
        coro.close()


def test_debug_mode_handle_records_where_it_was_created(loop):
    loop.set_debug(True)
    line = sys._getframe().f_lineno + 1
    h = loop.call_soon(print, "x")
    assert h._source_traceback[-1][:2] == (__file__, line)
    assert repr(h).endswith(f"created at {__file__}:{line}>")
    h.cancel()


def test_debug_mode_exception_context_has_source_traceback(loop):
    loop.set_debug(True)
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def boom():
        raise ValueError

    line = sys._getframe().f_lineno + 1
    loop.call_soon(boom)
    run_once(loop)
    assert len(contexts) == 1
    assert set(contexts[0]) == {"message", "exception", "handle", "source_traceback"}
    assert contexts[0]["source_traceback"][-1][:2] == (__file__, line)


def test_debug_mode_enables_coroutine_origin_tracking_while_running(loop):
    before = sys.get_coroutine_origin_tracking_depth()
    loop.set_debug(True)
    seen = []
    loop.call_soon(lambda: seen.append(sys.get_coroutine_origin_tracking_depth()))
    run_once(loop)
    assert seen and seen[0] > 0
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_debug_mode_logs_close(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.set_debug(True)
    loop.close()
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert msgs == [f"Close {loop!r}"]


def test_set_debug_while_running_takes_effect(loop, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.slow_callback_duration = 0.005

    def enable():
        loop.set_debug(True)

    loop.call_soon(enable)
    run_once(loop)
    loop.call_soon(_busy_wait, 0.01)
    run_once(loop)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("Executing <Handle _busy_wait(0.01)")
