"""add_signal_handler / remove_signal_handler (Unix)."""

import asyncio
import os
import signal
import threading
import time

import pytest
import support
from support import CLOSED_MSG, error_of, run_once

SIG = signal.SIGUSR1


@pytest.fixture(autouse=True)
def _restore_sigusr1():
    # A test that fails half-way must not leave our handler (or SIG_DFL, which would
    # kill the test process on a stray SIGUSR1) behind.
    old = signal.getsignal(SIG)
    old_int = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(SIG, old)
    signal.signal(signal.SIGINT, old_int)


async def _raise_signal_and_spin():
    """Send SIG to this process, then give the loop a few passes to run handlers."""
    os.kill(os.getpid(), SIG)
    for _ in range(5):
        await asyncio.sleep(0)
    await asyncio.sleep(0.001)


def test_signal_handler_runs_on_the_loop_after_the_signal(loop):
    out = []

    def handler(*args):
        out.append(("handler", args, threading.get_ident(), asyncio.get_running_loop()))
        loop.stop()

    loop.add_signal_handler(SIG, handler, "arg1", 2)

    def send():
        os.kill(os.getpid(), SIG)
        out.append("after-kill")

    loop.call_soon(send)
    loop.call_later(5, loop.stop)  # safety net
    loop.run_forever()
    # The handler is a callback on the loop, not run inside os.kill().
    assert out == [
        "after-kill",
        ("handler", ("arg1", 2), threading.get_ident(), loop),
    ]
    assert loop.remove_signal_handler(SIG) is True


def test_signal_wakes_a_sleeping_loop(loop):
    # The loop has nothing to do for an hour; the signal must wake it.  Should the wake-up
    # be lost, a watchdog (a hang detector) wakes the loop through call_soon_threadsafe,
    # and the handler, which then runs too, records that it came after the watchdog.
    got = []
    watchdog_fired = threading.Event()

    def handler():
        got.append("after the watchdog" if watchdog_fired.is_set() else "woken by the signal")
        loop.stop()

    loop.add_signal_handler(SIG, handler)
    running = threading.Event()

    def other_thread():
        running.wait(30)
        time.sleep(0.03)  # let the loop go to sleep in its poll
        os.kill(os.getpid(), SIG)

    def watchdog():
        watchdog_fired.set()
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=other_thread)
    dog = threading.Timer(support.hang_timeout(20), watchdog)
    loop.call_soon(running.set)
    far = loop.call_later(3600, loop.stop)
    t.start()
    dog.start()
    try:
        loop.run_forever()
    finally:
        dog.cancel()
        t.join(30)
        far.cancel()
    assert got == ["woken by the signal"]
    loop.remove_signal_handler(SIG)


def test_signal_handler_runs_once_per_delivery(loop):
    count = []
    loop.add_signal_handler(SIG, lambda: count.append(1))

    async def main():
        for _ in range(3):
            os.kill(os.getpid(), SIG)
            for _ in range(5):
                await asyncio.sleep(0)
            await asyncio.sleep(0.001)

    loop.run_until_complete(main())
    assert len(count) == 3
    loop.remove_signal_handler(SIG)


def test_add_signal_handler_replaces_previous(loop):
    out = []
    loop.add_signal_handler(SIG, out.append, "first")
    loop.add_signal_handler(SIG, out.append, "second")

    loop.run_until_complete(_raise_signal_and_spin())
    assert out == ["second"]
    loop.remove_signal_handler(SIG)


def test_remove_signal_handler_return_value_and_disposition(loop):
    assert loop.remove_signal_handler(SIG) is False
    loop.add_signal_handler(SIG, lambda: None)
    assert signal.getsignal(SIG) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    assert loop.remove_signal_handler(SIG) is True
    assert signal.getsignal(SIG) == signal.SIG_DFL
    assert loop.remove_signal_handler(SIG) is False


def test_remove_sigint_handler_restores_default_int_handler(loop):
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(SIG, lambda: None)
    loop.close()
    assert signal.getsignal(SIG) == signal.SIG_DFL


@pytest.mark.parametrize(
    "sig,expected",
    [
        (0, (ValueError, "invalid signal number 0")),
        (-1, (ValueError, "invalid signal number -1")),
        (1000, (ValueError, "invalid signal number 1000")),
        ("SIGUSR1", (TypeError, "sig must be an int, not 'SIGUSR1'")),
        (1.5, (TypeError, "sig must be an int, not 1.5")),
    ],
)
def test_bad_signal_numbers(loop, sig, expected):
    assert error_of(loop.add_signal_handler, sig, lambda: None) == expected
    assert error_of(loop.remove_signal_handler, sig) == expected


def test_uncatchable_signal_raises_runtime_error(loop):
    assert error_of(loop.add_signal_handler, signal.SIGKILL, lambda: None) == (
        RuntimeError,
        f"sig {int(signal.SIGKILL)} cannot be caught",
    )
    assert loop.remove_signal_handler(signal.SIGKILL) is False


def test_coroutine_function_as_signal_handler_raises(loop):
    async def coro_handler():
        pass

    assert error_of(loop.add_signal_handler, SIG, coro_handler) == (
        TypeError,
        "coroutines cannot be used with add_signal_handler()",
    )
    coro = coro_handler()
    try:
        assert error_of(loop.add_signal_handler, SIG, coro) == (
            TypeError,
            "coroutines cannot be used with add_signal_handler()",
        )
    finally:
        coro.close()
    assert signal.getsignal(SIG) == signal.SIG_DFL


def test_add_signal_handler_on_closed_loop(loop):
    loop.close()
    assert error_of(loop.add_signal_handler, SIG, lambda: None) == (RuntimeError, CLOSED_MSG)


def test_add_signal_handler_from_non_main_thread_raises(loop):
    errs = []
    t = threading.Thread(target=lambda: errs.append(error_of(loop.add_signal_handler, SIG, print)))
    t.start()
    t.join(5)
    assert errs and errs[0][0] is RuntimeError
    assert signal.getsignal(SIG) == signal.SIG_DFL


def test_signal_handler_exception_goes_to_exception_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def handler():
        raise ValueError("in signal handler")

    loop.add_signal_handler(SIG, handler)

    loop.run_until_complete(_raise_signal_and_spin())
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ValueError)
    assert contexts[0]["message"].startswith("Exception in callback ")
    loop.remove_signal_handler(SIG)


def test_signal_handler_run_in_context(loop):
    import contextvars

    var = contextvars.ContextVar("sig_var", default="unset")
    seen = []
    token = var.set("at-add")
    try:
        loop.add_signal_handler(SIG, lambda: seen.append(var.get()))
    finally:
        var.reset(token)

    loop.run_until_complete(_raise_signal_and_spin())
    assert seen == ["at-add"]
    loop.remove_signal_handler(SIG)


def test_pending_signal_handler_runs_even_after_a_pass(loop):
    # The signal arrives while not running; the handler must run once the loop runs.
    out = []
    loop.add_signal_handler(SIG, out.append, "late")
    os.kill(os.getpid(), SIG)
    for _ in range(10):  # passes, not time: the stock loop needs two
        if out:
            break
        run_once(loop)
    assert out == ["late"]
    loop.remove_signal_handler(SIG)
