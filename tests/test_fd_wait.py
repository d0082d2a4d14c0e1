"""_core._wait_fd(fd, events, timeout): a virtual thread waits for a bare file descriptor.

events is a mask (1 readable, 2 writable, 3 either); the result is the ready mask, 0 when
the timeout passed.  In a virtual thread only the calling task waits, on the loop's
watchers, and every way the wait ends - ready, timed out, cancelled, unwound at loop
close - leaves no watcher, timer or Handle behind (conftest's leak check runs after each
test that uses ``gloop``).  Anywhere else the call blocks in poll(), as greenhub.socket's
waits do; the tests over ``loop`` run a task on both loops and expect the same results.
"""

import asyncio
import errno
import gc
import os
import sys
import threading
import time

import pytest
import support
from vthread_helpers import gloop_fixture, in_thread  # noqa: F401 - fixture

import greenhub
import greenhub.socket as gsocket
from greenhub import _core

pytestmark = pytest.mark.timeout(30)

R, W, RW = 1, 2, 3

wait_fd = _core._wait_fd


def vrun(loop, fn, *args, timeout=10):
    """Run fn(*args) as a virtual thread on `loop`; its result."""

    async def main():
        return await asyncio.wait_for(greenhub.spawn(fn, *args), timeout)

    return loop.run_until_complete(main())


def watched(loop, fd):
    """The loop's watcher events on fd (0: none)."""
    return loop._io_watchers().get(fd, 0)


def fill(sock):
    """Send until the socket's buffer is full (it is then not writable)."""
    sock.setblocking(False)
    chunk = b"x" * 65536
    try:
        while True:
            sock.send(chunk)
    except BlockingIOError:
        pass


def drain(sock):
    sock.setblocking(False)
    try:
        while sock.recv(1 << 20):
            pass
    except BlockingIOError:
        pass


# -- in a virtual thread -----------------------------------------------------------------


def test_readable_waits_only_this_virtual_thread(gloop, pair):
    a, b = pair
    ticks = []

    def waiter():
        r = wait_fd(a.fileno(), R, None)
        return r, list(ticks)

    def ticker():
        for i in range(5):
            greenhub.await_(asyncio.sleep(0.001))
            ticks.append(i)
        b.send(b"x")

    async def main():
        return await asyncio.gather(greenhub.spawn(waiter), greenhub.spawn(ticker))

    (ready, seen), _ = gloop.run_until_complete(asyncio.wait_for(main(), 10))
    assert ready == R and seen == [0, 1, 2, 3, 4]
    assert watched(gloop, a.fileno()) == 0
    assert a.recv(10) == b"x"


def test_writable(gloop, pair):
    a, b = pair
    assert vrun(gloop, wait_fd, a.fileno(), W, None) == W
    fill(a)

    def waiter():
        return wait_fd(a.fileno(), W, 5), time.monotonic()

    async def main():
        task = greenhub.spawn(waiter)
        await asyncio.sleep(0.02)
        assert watched(gloop, a.fileno()) == W
        drained = time.monotonic()
        drain(b)
        ready, woke = await task
        return ready, woke >= drained

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == (W, True)
    assert watched(gloop, a.fileno()) == 0


def test_either_direction_reports_the_one_that_fired(gloop, pair):
    a, b = pair
    # writable at once, nothing to read
    assert vrun(gloop, wait_fd, a.fileno(), RW, None) == W
    # not writable (buffer full): data arriving wakes it for reading
    fill(a)

    async def main():
        task = greenhub.spawn(wait_fd, a.fileno(), RW, 5)
        await asyncio.sleep(0.02)
        assert watched(gloop, a.fileno()) == RW  # both watchers armed
        b.send(b"ping")
        return await task

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == R
    assert watched(gloop, a.fileno()) == 0


def test_timeout_returns_zero_and_leaves_nothing(gloop, pair):
    a, _ = pair

    def waiter():
        deadline = gloop.time() + 0.05
        r = wait_fd(a.fileno(), R, 0.05)
        return r, gloop.time() >= deadline  # not early, on the loop's clock

    assert vrun(gloop, waiter) == (0, True)
    assert watched(gloop, a.fileno()) == 0
    # both directions, nothing becomes ready
    fill(a)
    assert vrun(gloop, wait_fd, a.fileno(), RW, 0.02) == 0
    assert watched(gloop, a.fileno()) == 0


def test_zero_timeout_only_looks(gloop, pair):
    a, b = pair
    ticks = []

    def looker():
        first = wait_fd(a.fileno(), R, 0)
        b.send(b"x")
        second = wait_fd(a.fileno(), RW, 0.0)
        return first, second, list(ticks)

    async def ticker():
        ticks.append(1)

    async def main():
        task = greenhub.spawn(looker)
        gloop.create_task(ticker())
        return await task

    # neither call suspended: the ticker had not run when they returned
    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == (0, RW, [])


def test_no_timeout_waits_as_long_as_it_takes(gloop, pair):
    a, b = pair

    async def main():
        task = greenhub.spawn(wait_fd, a.fileno(), R, None)
        await asyncio.sleep(0.05)
        assert not task.done()
        b.send(b"x")
        return await task

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == R


def test_infinite_timeout_is_no_limit(gloop, pair):
    a, b = pair

    async def main():
        task = greenhub.spawn(wait_fd, a.fileno(), R, float("inf"))
        await asyncio.sleep(0.01)
        b.send(b"x")
        return await task

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == R


def test_int_subclasses_and_int_timeout_accepted(gloop, pair):
    import enum

    class Wait(enum.IntEnum):  # psycopg passes its Wait enum
        R = 1
        W = 2

    a, _ = pair
    assert vrun(gloop, wait_fd, a.fileno(), Wait.W, 1) == W


def test_in_debug_mode(gloop, pair):
    a, b = pair
    gloop.set_debug(True)
    gloop.slow_callback_duration = 10  # a busy machine must not make it log

    async def main():
        writable = await greenhub.spawn(wait_fd, a.fileno(), RW, 5)
        timed_out = await greenhub.spawn(wait_fd, a.fileno(), R, 0.01)
        task = greenhub.spawn(wait_fd, a.fileno(), R, None)
        await asyncio.sleep(0.01)
        b.send(b"x")
        return writable, timed_out, await task

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == (W, 0, R)
    assert watched(gloop, a.fileno()) == 0


# -- cancellation, closing, misuse -------------------------------------------------------


@pytest.mark.parametrize("events", [R, RW])
def test_cancel_while_waiting_then_wait_again(gloop, pair, events):
    a, b = pair
    if events == RW:
        fill(a)
    seen = []

    def waiter():
        try:
            return wait_fd(a.fileno(), events, 5)
        except BaseException as exc:
            seen.append(type(exc))
            raise

    async def main():
        task = greenhub.spawn(waiter)
        for _ in range(3):
            await asyncio.sleep(0)
        assert watched(gloop, a.fileno()) == events
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert watched(gloop, a.fileno()) == 0
        # a later wait on the same fd works
        again = greenhub.spawn(wait_fd, a.fileno(), R, 5)
        await asyncio.sleep(0.01)
        b.send(b"x")
        return await again

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == R
    assert seen == [asyncio.CancelledError]
    assert watched(gloop, a.fileno()) == 0


def test_asyncio_timeout_around_the_wait(gloop, pair):
    a, b = pair

    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.02):
                await greenhub.spawn(wait_fd, a.fileno(), R, None)
        assert watched(gloop, a.fileno()) == 0
        b.send(b"x")
        return await greenhub.spawn(wait_fd, a.fileno(), R, 5)

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == R


def test_two_waiters_on_one_fd(gloop, pair):
    a, b = pair
    fill(a)

    async def main():
        first = greenhub.spawn(wait_fd, a.fileno(), R, 5)
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="already waited on for reading"):
            await greenhub.spawn(wait_fd, a.fileno(), R, 5)
        with pytest.raises(RuntimeError, match="already waited on for reading"):
            await greenhub.spawn(wait_fd, a.fileno(), RW, 5)
        # the other direction is free: a writer may wait beside the reader
        writer = greenhub.spawn(wait_fd, a.fileno(), W, 5)
        await asyncio.sleep(0.01)
        assert watched(gloop, a.fileno()) == RW
        b.send(b"x")
        drain(b)
        return await first, await writer

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == (R, W)
    assert watched(gloop, a.fileno()) == 0


def test_an_add_reader_callback_on_the_fd_is_another_waiter(gloop, pair):
    a, _ = pair

    async def main():
        gloop.add_reader(a.fileno(), lambda: None)
        try:
            with pytest.raises(RuntimeError, match="already waited on"):
                await greenhub.spawn(wait_fd, a.fileno(), R, 1)
        finally:
            assert gloop.remove_reader(a.fileno())

    gloop.run_until_complete(asyncio.wait_for(main(), 10))


def test_closing_a_green_socket_wakes_its_waiters(gloop):
    a, b = gsocket.socketpair()
    fd = a.fileno()

    def closer():
        greenhub.await_(asyncio.sleep(0.01))
        a.close()

    async def main():
        waiter = greenhub.spawn(wait_fd, fd, R, 5)
        await greenhub.spawn(closer)
        with pytest.raises(OSError) as exc:
            await waiter
        return exc.value.errno

    try:
        assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == errno.EBADF
    finally:
        a.close()
        b.close()
    assert fd not in gloop._io_watchers()


def test_loop_close_unwinds_a_parked_wait(greenhub_leak_check, pair):
    a, _ = pair
    loop = greenhub.new_event_loop()
    seen = []

    def waiter():
        try:
            wait_fd(a.fileno(), R, None)
        except BaseException as exc:
            seen.append(type(exc))
            raise

    async def body():
        return waiter()

    task = loop.create_task(body())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert watched(loop, a.fileno()) == R
    loop.close()
    assert seen == [asyncio.CancelledError] and task.cancelled()


def test_inside_no_switch_refused_and_nothing_left(gloop, pair):
    a, _ = pair

    def critical():
        with greenhub.no_switch():
            assert wait_fd(a.fileno(), W, 0) == W  # only looks: allowed
            wait_fd(a.fileno(), R, 1)

    with pytest.raises(greenhub.SwitchError):
        vrun(gloop, critical)
    assert watched(gloop, a.fileno()) == 0


def test_bad_fd_raises_oserror(gloop):
    r, w = os.pipe()
    os.close(r)
    os.close(w)  # r is now a closed fd number
    for timeout in (None, 1, 0):
        with pytest.raises(OSError) as exc:
            vrun(gloop, wait_fd, r, R, timeout)
        assert exc.value.errno == errno.EBADF
        with pytest.raises(OSError) as exc:
            wait_fd(r, R, timeout)  # outside: poll() says POLLNVAL
        assert exc.value.errno == errno.EBADF
    assert watched(gloop, r) == 0


@pytest.mark.parametrize(
    "args, exc, match",
    [
        (("3", R, None), TypeError, "fd must be an int, not str"),
        ((3.0, R, None), TypeError, "fd must be an int, not float"),
        ((-1, R, None), ValueError, "fd must be a file descriptor"),
        ((2**40, R, None), ValueError, "fd must be a file descriptor"),
        ((2**80, R, None), ValueError, "fd must be a file descriptor"),
        ((0, 0, None), ValueError, r"events must be 1 \(readable\), 2 \(writable\) or 3"),
        ((0, 4, None), ValueError, "events must be 1"),
        ((0, -1, None), ValueError, "events must be 1"),
        ((0, "r", None), TypeError, "events must be an int, not str"),
        ((0, R, -0.5), ValueError, "timeout must be None or a number >= 0"),
        ((0, R, float("nan")), ValueError, "timeout must be None or a number >= 0"),
        ((0, R, "1"), TypeError, "timeout must be None or a number, not str"),
        ((0, R), TypeError, r"takes 3 arguments \(2 given\)"),
        ((0, R, None, None), TypeError, r"takes 3 arguments \(4 given\)"),
    ],
)
def test_bad_arguments(gloop, args, exc, match):
    # the same errors in a virtual thread and outside, before anything is watched
    before = gloop._io_watchers()  # the self-pipe's reader
    with pytest.raises(exc, match=match):
        vrun(gloop, wait_fd, *args)
    with pytest.raises(exc, match=match):
        wait_fd(*args)
    assert gloop._io_watchers() == before


def test_keyword_arguments_refused():
    with pytest.raises(TypeError):
        wait_fd(fd=0, events=R, timeout=None)


# -- outside a virtual thread: poll() ----------------------------------------------------


def test_outside_in_an_os_thread_blocks_in_poll(pair):
    a, b = pair
    assert in_thread(wait_fd, a.fileno(), R, 0.02) == 0
    assert in_thread(wait_fd, a.fileno(), W, None) == W
    sent = []

    def send_late():
        sent.append(True)
        b.send(b"late")

    threading.Timer(0.02, send_late).start()
    # Blocks until the data is there, and not less: when it returns the send had happened.
    assert in_thread(lambda: (wait_fd(a.fileno(), R, None), bool(sent))) == (R, True)
    assert wait_fd(a.fileno(), RW, 0) == RW  # data to read and room to write


def test_outside_a_hang_up_reports_what_was_asked(pair):
    a, b = pair
    b.close()
    assert wait_fd(a.fileno(), R, 1) == R
    assert wait_fd(a.fileno(), RW, 1) & R


@pytest.mark.timeout(60)
def test_outside_the_gil_is_released_while_polling(pair):
    # The helper thread makes the fd readable only after 10,000 steps of Python code, all
    # of which need the GIL: the wait returns R only if it let the GIL go.  Holding it,
    # the wait would time out (returning 0) with the helper still stuck at its first step.
    a, b = pair
    go = threading.Event()
    steps = []

    def helper():
        go.wait(30)
        for i in range(10_000):
            steps.append(i)
        b.send(b"x")

    t = threading.Thread(target=helper)
    t.start()
    try:
        go.set()  # this thread keeps the GIL until it waits (or for a switch interval)
        ready = wait_fd(a.fileno(), R, support.hang_timeout(20))
        during = len(steps)
    finally:
        t.join()
    assert (ready, during) == (R, 10_000), f"the helper ran {during} steps during the wait"


def test_in_a_loop_callback_blocks_in_poll(gloop, pair):
    a, b = pair
    box = {}

    def callback():
        box["empty"] = wait_fd(a.fileno(), R, 0.01)
        b.send(b"x")
        box["data"] = wait_fd(a.fileno(), R, None)
        gloop.stop()

    gloop.call_soon(callback)
    gloop.run_forever()
    assert box == {"empty": 0, "data": R}
    assert watched(gloop, a.fileno()) == 0


def test_in_a_task_on_either_loop(loop, kind, pair):
    """Same results in a task of either loop (a virtual thread on greenhub; on the stock
    loop the task is no virtual thread and the call blocks in poll())."""
    a, b = pair

    async def main():
        empty = wait_fd(a.fileno(), R, 0.01)
        b.send(b"x")
        return empty, wait_fd(a.fileno(), R, None), wait_fd(a.fileno(), W, 1)

    assert loop.run_until_complete(asyncio.wait_for(main(), 10)) == (0, R, W)
    if kind == "greenhub":
        assert watched(loop, a.fileno()) == 0


# -- references ----------------------------------------------------------------------------


def test_no_leaked_references(gloop, pair):
    """Many waits of every kind: the counters go back and the arguments' reference
    counts and the number of gc-tracked objects do not grow."""
    a, b = pair
    fd = a.fileno()
    timeout = 5.0
    short = 0.0001

    def waits(n):
        for _ in range(n):
            b.send(b"x")
            assert wait_fd(fd, R, timeout) == R
            a.recv(10)
            assert wait_fd(fd, W, None) == W
            assert wait_fd(fd, R, short) == 0
            assert wait_fd(fd, RW, timeout) == W

    async def cancelled(n):
        for _ in range(n):
            task = greenhub.spawn(wait_fd, fd, R, timeout)
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    async def round_(n):
        await greenhub.spawn(waits, n)
        await cancelled(n)

    gloop.run_until_complete(round_(50))  # warm-up
    gc.collect()
    refs = (sys.getrefcount(timeout), sys.getrefcount(short))
    objects = len(gc.get_objects())
    gloop.run_until_complete(round_(500))
    gc.collect()
    assert (sys.getrefcount(timeout), sys.getrefcount(short)) == refs
    assert len(gc.get_objects()) - objects < 100
    # While the loop lives: no parked step, and Handles bounded (the self-pipe reader,
    # cancelled timers the heap drops lazily), not one per wait.
    counters = _core.debug_counters()
    assert counters["parked"] == 0 and counters["handles"] < 200, counters
    assert watched(gloop, fd) == 0
