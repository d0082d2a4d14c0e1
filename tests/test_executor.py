"""run_in_executor, set_default_executor, shutdown_default_executor."""

import asyncio
import concurrent.futures
import multiprocessing
import threading

import pytest
from support import PY313, error_of


def _thread_name_and_args(*args):
    return threading.current_thread().name, args


def test_run_in_default_executor(loop):
    async def main():
        return await loop.run_in_executor(None, _thread_name_and_args, 1, "two")

    name, args = loop.run_until_complete(main())
    assert args == (1, "two")
    assert name != threading.current_thread().name


def test_run_in_executor_returns_an_asyncio_future(loop):
    fut = loop.run_in_executor(None, int, "5")
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert loop.run_until_complete(fut) == 5


def test_run_in_executor_propagates_exception(loop):
    def fails():
        raise ValueError("in thread")

    with pytest.raises(ValueError, match="in thread"):
        loop.run_until_complete(loop.run_in_executor(None, fails))


def test_run_in_custom_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="custom-pool") as ex:
        name, _ = loop.run_until_complete(loop.run_in_executor(ex, _thread_name_and_args))
    assert name.startswith("custom-pool")


def test_set_default_executor_is_used(loop):
    ex = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="default-pool")
    try:
        loop.set_default_executor(ex)
        name, _ = loop.run_until_complete(loop.run_in_executor(None, _thread_name_and_args))
        assert name.startswith("default-pool")
    finally:
        ex.shutdown(wait=True)


def test_set_default_executor_rejects_non_thread_pool(loop):
    class NotAThreadPool(concurrent.futures.Executor):
        pass

    assert error_of(loop.set_default_executor, NotAThreadPool()) == (
        TypeError,
        "executor must be ThreadPoolExecutor instance",
    )
    assert error_of(loop.set_default_executor, None) == (
        TypeError,
        "executor must be ThreadPoolExecutor instance",
    )


def test_shutdown_default_executor_joins_threads(loop):
    threads = []

    def record():
        threads.append(threading.current_thread())

    loop.run_until_complete(loop.run_in_executor(None, record))
    assert threads[0].is_alive()
    loop.run_until_complete(loop.shutdown_default_executor())
    assert not threads[0].is_alive()


def test_run_in_executor_after_shutdown_default_executor_raises(loop):
    loop.run_until_complete(loop.shutdown_default_executor())
    assert error_of(loop.run_in_executor, None, print) == (
        RuntimeError,
        "Executor shutdown has been called",
    )
    # An explicit executor is still allowed.
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        assert loop.run_until_complete(loop.run_in_executor(ex, int, "3")) == 3


def test_shutdown_default_executor_without_executor(loop):
    loop.run_until_complete(loop.shutdown_default_executor())


@pytest.mark.skipif(
    not PY313,
    reason="shutdown_default_executor(timeout=) is new in 3.12, but 3.12's stock loop awaits "
    "the executor before applying the timeout, so it only works from 3.13",
)
def test_shutdown_default_executor_timeout_warns(loop):
    release = threading.Event()
    try:
        loop.run_in_executor(None, release.wait, 5)
        with pytest.warns(RuntimeWarning, match="did not finishing joining its threads"):
            loop.run_until_complete(loop.shutdown_default_executor(timeout=0.01))
    finally:
        release.set()


def test_close_shuts_the_default_executor_down(loop):
    threads = []
    loop.run_until_complete(
        loop.run_in_executor(None, lambda: threads.append(threading.current_thread()))
    )
    loop.close()
    threads[0].join(5)
    assert not threads[0].is_alive()


def test_executor_callback_wakes_a_sleeping_loop(loop):
    # The result comes back through call_soon_threadsafe while the loop sleeps.
    started = threading.Event()

    def slowish():
        started.wait(5)
        threading.Event().wait(0.02)
        return "woke"

    async def main():
        fut = loop.run_in_executor(None, slowish)
        started.set()
        return await asyncio.wait_for(fut, 5)

    assert loop.run_until_complete(main()) == "woke"


def test_run_in_a_process_pool(loop):
    # The call goes to another process as it is: greenhub marks calls that run in its
    # threads (greenhub.await_() there runs on this loop), and a marked call, which
    # carries the loop, cannot be pickled.
    # "spawn": forking this multi-threaded process is deprecated (3.12+) and can deadlock.
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        assert loop.run_until_complete(loop.run_in_executor(pool, abs, -3)) == 3
