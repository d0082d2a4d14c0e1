"""Bad arguments outside debug mode.

The stock loop validates callbacks only in debug mode (test_debug.py compares those
messages).  Outside debug mode a loop may reject a bad callback at once, but if it accepts
one, the failure must come out through the exception handler when the callback runs -
never a crash, a hang or silence.
"""

import warnings

import pytest
from support import error_of, run_once


async def _coro_fn():
    pass


def test_call_soon_non_callable(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    err = error_of(loop.call_soon, 42)
    if err is not None:
        assert err == (TypeError, "a callable object was expected by call_soon(), got 42")
        return
    loop.call_soon(contexts.append, "next")
    run_once(loop)
    assert len(contexts) == 2
    assert isinstance(contexts[0]["exception"], TypeError)
    assert contexts[0]["message"] == "Exception in callback 42()"
    assert contexts[1] == "next"


def test_call_later_non_callable(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    err = error_of(loop.call_later, 0, None)
    if err is not None:
        assert err == (TypeError, "a callable object was expected by call_at(), got None")
        return
    run_once(loop)
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], TypeError)


def test_call_soon_coroutine_function(loop):
    err = error_of(loop.call_soon, _coro_fn)
    if err is not None:
        assert err == (TypeError, "coroutines cannot be used with call_soon()")
        return
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        run_once(loop)
    assert contexts == []  # the stock loop just calls it; the coroutine is never awaited


@pytest.mark.parametrize(
    "delay,expected",
    [
        (None, "delay must not be None"),
        ("1", None),
        ([1], None),
        (object(), None),
    ],
    ids=["None", "str", "list", "object"],
)
def test_call_later_non_number_delay(loop, delay, expected):
    err = error_of(loop.call_later, delay, print)
    assert err is not None and err[0] is TypeError, err
    if expected is not None:
        assert err[1] == expected


def test_call_at_none(loop):
    assert error_of(loop.call_at, None, print) == (TypeError, "when cannot be None")


def test_call_soon_no_callback(loop):
    err = error_of(loop.call_soon)
    assert err is not None and err[0] is TypeError


def test_call_later_no_args(loop):
    assert error_of(loop.call_later)[0] is TypeError
    assert error_of(loop.call_later, 1)[0] is TypeError


def test_call_at_with_bool_and_int(loop):
    # Any real number is a valid deadline.
    out = []
    loop.call_at(0, out.append, "int")
    loop.call_at(True, out.append, "bool")
    run_once(loop)
    assert sorted(out) == ["bool", "int"]


def test_run_in_executor_non_callable(loop):
    err = error_of(loop.run_in_executor, None, 42)
    if err is None:
        # Accepted: the executor reports the TypeError through the future.
        async def main():
            return await loop.run_in_executor(None, 42)

        with pytest.raises(TypeError):
            loop.run_until_complete(main())
    else:
        assert err[0] is TypeError


def test_call_soon_threadsafe_non_callable_from_thread(loop):
    import threading

    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    errs = []
    t = threading.Thread(target=lambda: errs.append(error_of(loop.call_soon_threadsafe, 42)))
    t.start()
    t.join(5)
    if errs[0] is not None:
        assert errs[0] == (
            TypeError,
            "a callable object was expected by call_soon_threadsafe(), got 42",
        )
        return
    run_once(loop)
    assert len(contexts) == 1 and isinstance(contexts[0]["exception"], TypeError)


def test_stop_and_close_take_no_arguments(loop):
    assert error_of(loop.stop, 1)[0] is TypeError
    assert error_of(loop.close, 1)[0] is TypeError
    assert error_of(loop.time, 1)[0] is TypeError


def test_run_until_complete_of_a_finished_coroutine(loop):
    async def main():
        return 1

    coro = main()
    assert loop.run_until_complete(coro) == 1
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
        loop.run_until_complete(coro)


def test_create_future_then_set_result_on_closed_loop(loop):
    fut = loop.create_future()
    fut.add_done_callback(lambda f: None)
    loop.close()
    # Scheduling the done callback needs call_soon: the closed loop refuses.
    assert error_of(fut.set_result, 1) == (RuntimeError, "Event loop is closed")
