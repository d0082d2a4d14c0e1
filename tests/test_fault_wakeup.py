"""call_soon_threadsafe() from another thread while Python code runs in each window of
an iteration: the callback must run at once, not when the next timer fires.

Every test parks a far timer (30 s) that fails the test if it fires first, makes the
loop thread run Python code at a chosen point of an iteration, and there hands the GIL
to a helper thread with a threading.Event handshake: the loop thread waits for the
helper (releasing the GIL) while the helper calls call_soon_threadsafe().  Nothing
sleeps; the only bound is the far timer.  Each runs on both loops.

The windows (docs/design.md, "Threads and the GIL"):
- an overridden time() called to compute the poll timeout, and to find due timers;
- a finalizer (__del__) and a weakref callback run by the release of what time()
  returned, right before the poll;
- a gc.callbacks hook run by a collection while greenhub frees idle pooled worker
  greenlets before the poll (many finished virtual threads, then an idle loop);
- a slow callback;
- a signal whose Python handler runs in the time() window.
"""

import asyncio
import gc
import os
import signal
import threading
import weakref

import pytest

import greenhub

FAR = 30.0


class Handshake:
    """`fire()` on the loop thread hands the GIL to a helper thread that calls
    loop.call_soon_threadsafe(deliver) - the callback that resolves `done` - and waits
    until it has."""

    def __init__(self, loop, action=None):
        self.loop = loop
        self.armed = False
        self.far_when = None
        self.done = loop.create_future()
        self._go = threading.Event()
        self._sent = threading.Event()
        self._action = action or self._send
        self._thread = threading.Thread(target=self._helper, daemon=True)
        self._thread.start()

    def _deliver(self):
        if self.done.done():
            return
        if self.far_when is not None and self.loop.time() >= self.far_when:
            # The far timer is due too: both run in this iteration, this one first, but
            # only because the poll waited for that timer.
            self.done.set_exception(AssertionError("the wakeup waited for a far timer"))
        else:
            self.done.set_result("delivered")

    def _send(self):
        self.loop.call_soon_threadsafe(self._deliver)

    def _helper(self):
        self._go.wait()
        try:
            self._action()
        finally:
            self._sent.set()

    def fire(self):
        """Runs on the loop thread, inside the window under test."""
        if not self.armed:
            return
        self.armed = False
        self._go.set()
        self._sent.wait()  # blocks: the GIL goes to the helper

    def far_timer(self):
        def too_late():
            if not self.done.done():
                self.done.set_exception(AssertionError("the wakeup waited for a far timer"))

        far = self.loop.call_later(FAR, too_late)
        self.far_when = far.when()
        return far

    def run(self):
        far = self.far_timer()
        try:
            return self.loop.run_until_complete(self.done)
        finally:
            far.cancel()
            self._go.set()
            self._thread.join()


def clocked_loop(kind, hook):
    """A loop of `kind` whose time() calls hook() first (a subclass override)."""
    base = greenhub.Loop if kind == "greenhub" else asyncio.SelectorEventLoop

    class Clocked(base):
        def time(self):
            hook()
            return super().time()

    return Clocked()


@pytest.fixture
def make_clocked(kind):
    loops = []

    def make(hook):
        lp = clocked_loop(kind, hook)
        loops.append(lp)
        return lp

    yield make
    for lp in loops:
        lp.close()


@pytest.mark.parametrize("window", ["poll-timeout", "due-check"])
def test_time_override_window(make_clocked, window):
    """The first time() call after arming.  With nothing ready (the far timer is the
    earliest) it computes the poll timeout, right before the poll; with a callback
    still queued the poll does not wait, and the first call looks for due timers."""
    hs = None

    def hook():
        if hs is not None:
            hs.fire()

    lp = make_clocked(hook)
    hs = Handshake(lp)

    def arm():
        if window == "due-check":
            lp.call_soon(lambda: None)
        hs.armed = True  # last: the next time() call is the one under test

    lp.call_soon(arm)
    assert hs.run() == "delivered"


class Stamp(float):
    """What time() returns; its release runs Python code in the window."""

    on_del = None

    def __del__(self):
        if self.on_del is not None:
            self.on_del()


def test_finalizer_of_time_result_window(kind):
    """time()'s result is released right before the poll: its __del__ runs there."""
    base = greenhub.Loop if kind == "greenhub" else asyncio.SelectorEventLoop
    hs = None

    class Clocked(base):
        def time(self):
            t = Stamp(super().time())
            if hs is not None and hs.armed:
                t.on_del = hs.fire
            return t

    lp = Clocked()
    try:
        hs = Handshake(lp)
        lp.call_soon(setattr, hs, "armed", True)
        assert hs.run() == "delivered"
    finally:
        lp.close()


def test_weakref_callback_window(kind):
    """Same release, seen through a weak reference's callback."""
    base = greenhub.Loop if kind == "greenhub" else asyncio.SelectorEventLoop
    hs = None
    refs = []

    class Clocked(base):
        def time(self):
            t = Stamp(super().time())
            if hs is not None and hs.armed:
                refs.append(weakref.ref(t, lambda r: hs.fire()))
            return t

    lp = Clocked()
    try:
        hs = Handshake(lp)
        lp.call_soon(setattr, hs, "armed", True)
        assert hs.run() == "delivered"
    finally:
        lp.close()


def test_gc_during_pool_trim_window(greenhub_leak_check):
    """A burst of virtual threads leaves more idle worker greenlets than the pool keeps;
    greenhub frees them when the loop is about to sleep, and the collection that freeing
    triggers runs gc.callbacks there.  The stock loop has no such step (where its first
    collection falls depends on the version: on 3.13 only after select() returns), so
    this runs on greenhub alone."""
    lp = greenhub.new_event_loop()
    try:
        _pool_trim_window(lp)
    finally:
        lp.close()


def _pool_trim_window(lp):
    hs = Handshake(lp)
    # More than the pool keeps (task_step.c: POOL_MAX, 256), and few enough that one
    # trim pass (up to 128) frees the rest: the loop then sleeps until the far timer
    # instead of coming back for another pass soon.
    n = 300

    def worker(ev):
        greenhub.await_(ev.wait())

    async def burst():
        ev = asyncio.Event()
        tasks = [greenhub.spawn(worker, ev) for _ in range(n)]
        await asyncio.sleep(0)
        ev.set()
        await asyncio.gather(*tasks)

    lp.run_until_complete(burst())

    def on_gc(phase, info):
        if phase == "start":
            hs.fire()

    def arm():
        # The last callback before the loop idles: from here a collection runs at the
        # first allocation of a GC-tracked object, which the freeing of the workers makes.
        gc.set_threshold(1)
        hs.armed = True

    old = gc.get_threshold()
    gc.callbacks.append(on_gc)
    try:
        lp.call_soon(arm)
        assert hs.run() == "delivered"
    finally:
        gc.callbacks.remove(on_gc)
        gc.set_threshold(*old)


def test_slow_callback_window(loop):
    """The helper pushes while a callback holds the loop (and gives the GIL away)."""
    hs = Handshake(loop)

    def slow():
        hs.armed = True
        hs.fire()

    loop.call_soon(slow)
    assert hs.run() == "delivered"


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals")
def test_signal_in_time_window(make_clocked):
    """A signal sent from the helper while the loop thread is in time(): asyncio's handler
    queues the callback (through _add_callback_signalsafe/_write_to_self, and the wakeup
    fd); it runs before the far timer."""
    hs = None

    def hook():
        if hs is not None and hs.armed:
            hs.fire()

    lp = make_clocked(hook)

    def send():
        os.kill(os.getpid(), signal.SIGUSR1)

    hs = Handshake(lp, action=send)
    lp.add_signal_handler(signal.SIGUSR1, hs._deliver)
    try:
        lp.call_soon(setattr, hs, "armed", True)
        assert hs.run() == "delivered"
    finally:
        lp.remove_signal_handler(signal.SIGUSR1)


def test_stop_from_another_thread_wakes_greenhub(greenhub_leak_check):
    """stop() is not thread-safe in asyncio (its select() does not notice the flag before
    the next event, here the far timer); greenhub wakes for it.  No stock twin."""
    hs = None

    def hook():
        if hs is not None and hs.armed:
            hs.fire()

    lp = clocked_loop("greenhub", hook)
    try:
        hs = Handshake(lp, action=lambda: lp.stop())
        far = hs.far_timer()
        lp.call_soon(setattr, hs, "armed", True)
        lp.run_forever()  # returns once stop() is seen
        assert not hs.done.done()  # the far timer did not fire
        far.cancel()
        hs._go.set()
        hs._thread.join()
    finally:
        lp.close()


def test_threadsafe_storm_into_busy_loop(loop):
    """Many call_soon_threadsafe() calls while the loop is busy all run, in order."""
    got = []
    n = 2000
    done = loop.create_future()

    def producer():
        for i in range(n):
            loop.call_soon_threadsafe(got.append, i)
        loop.call_soon_threadsafe(lambda: done.set_result(None))

    async def busy():
        t = threading.Thread(target=producer)
        t.start()
        while not done.done():
            await asyncio.sleep(0)
        t.join()

    loop.run_until_complete(busy())
    assert got == list(range(n))


def test_add_reader_from_another_thread_while_sleeping(loop):
    """Not thread-safe in asyncio, but the selector's epoll_ctl() takes effect at once,
    so on the stock loop a reader added by another thread while the loop sleeps fires
    when the fd becomes readable.  greenhub applies watcher changes at the next poll,
    so the registration wakes the sleeping one."""
    import socket

    a, b = socket.socketpair()
    got = loop.create_future()
    asleep = threading.Event()
    loop.call_soon(asleep.set)

    def other():
        asleep.wait(5)
        # The loop has run the callback above and is in (or on its way to) its poll,
        # with a 30 s timer as the only thing to wait for.
        loop.add_reader(a, lambda: got.done() or got.set_result(a.recv(10)))
        b.send(b"x")

    far = loop.call_later(30, lambda: None)
    t = threading.Thread(target=other)
    t.start()
    try:
        assert loop.run_until_complete(asyncio.wait_for(got, 20)) == b"x"
    finally:
        t.join()
        far.cancel()
        loop.remove_reader(a)
        a.close()
        b.close()


# --- a reentrant _run_once() inside time() --------------------------------------------


def test_reentrant_run_once_in_time_takes_the_last_timer(greenhub_leak_check):
    """time() runs the loop itself (a reentrant _run_once(), as asyncio allows), which
    pops the only timer while the outer iteration computes its poll timeout from it:
    greenhub read the heap's top without looking again (a NULL dereference)."""
    import time

    import greenhub

    loop = greenhub.new_event_loop()
    ran = []
    state = {"armed": False}

    def my_time():
        if state["armed"]:
            state["armed"] = False
            loop._run_once()  # takes the due timer: the heap is empty afterwards
        return time.monotonic()

    try:
        loop.time = my_time
        loop.call_at(0.0, ran.append, "timer")
        state["armed"] = True
        loop._run_once()
        assert ran == ["timer"]
    finally:
        del loop.time
        loop.close()


def test_reentrant_run_once_in_time_loses_no_wakeup(greenhub_leak_check):
    """The inner iteration is woken by a push, which leaves `wakeup_sent` set; the outer
    one must clear it again when it goes back to sleep, or a call_soon_threadsafe() made
    during the outer poll sends nothing and waits for the far timer."""
    import time

    import greenhub

    loop = greenhub.new_event_loop()
    far = loop.call_later(20, lambda: None)  # the poll timeout of both iterations
    ran = []
    inner_polling = threading.Event()
    inner_done = threading.Event()
    state = {"armed": False, "depth": 0}

    def my_time():
        if state["depth"] == 1:
            inner_polling.set()  # the inner iteration's look before its poll
        if state["armed"] and state["depth"] == 0:
            state["armed"] = False
            state["depth"] += 1
            try:
                loop._run_once()  # sleeps until the first push wakes it
            finally:
                state["depth"] -= 1
                inner_done.set()
        return time.monotonic()

    def pusher():
        inner_polling.wait(30)
        time.sleep(0.05)  # let it reach its poll
        loop.call_soon_threadsafe(ran.append, "first")  # wakes the inner poll
        inner_done.wait(30)
        time.sleep(0.05)  # the outer iteration goes back to sleep
        loop.call_soon_threadsafe(ran.append, "second")  # must wake the outer poll

    t = threading.Thread(target=pusher)
    try:
        loop.time = my_time
        state["armed"] = True
        t.start()
        loop._run_once()  # the outer iteration
        while "second" not in ran:
            loop._run_once()
        assert ran == ["first", "second"]
        assert time.monotonic() < far.when()  # woken, not timed out
    finally:
        t.join()
        far.cancel()
        del loop.time
        loop.close()
