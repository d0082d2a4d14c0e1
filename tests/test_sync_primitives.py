"""greenhub.sync: sleep, locks, conditions, events, semaphores and queues.

Three kinds of caller share the same objects: virtual threads (sync code in a task on a
greenhub loop: a blocking call suspends only that task), plain OS threads (the call really
blocks, exactly as the `threading` call), and async code (the ``async_`` methods, on the
stock loop and on greenhub - see ``loop`` tests below).  "Concurrently" is checked by
counting the callers inside a wait at once (support.Overlap), never by timing; "not
early" compares the loop's clock with a deadline.
"""

import asyncio
import queue
import threading
import time

import pytest
from support import Overlap
from vthread_helpers import gloop_fixture, in_thread

import greenhub

gloop = gloop_fixture

PRIMS = {
    "Lock": (greenhub.Lock, threading.Lock),
    "RLock": (greenhub.RLock, threading.RLock),
    "Semaphore": (greenhub.Semaphore, threading.Semaphore),
    "BoundedSemaphore": (greenhub.BoundedSemaphore, threading.BoundedSemaphore),
}


def run_vthreads(gloop, fn, n, *args):
    """Runs fn(i, *args) in n virtual threads on gloop; returns their results."""

    async def main():
        return await asyncio.gather(*(greenhub.spawn(fn, i, *args) for i in range(n)))

    return gloop.run_until_complete(main())


def elapsed(fn, *args):
    t0 = time.monotonic()
    result = fn(*args)
    return time.monotonic() - t0, result


# --- sleep -------------------------------------------------------------------------


def test_sleep_in_vthreads_overlaps(gloop):
    asleep = Overlap()

    def sleeper(i):
        deadline = gloop.time() + 0.2
        with asleep:
            greenhub.sleep(0.2)
        return gloop.time() >= deadline

    assert run_vthreads(gloop, sleeper, 20) == [True] * 20  # each slept, none woke early
    assert asleep.peak == 20  # all asleep at once; one after another: 1


def test_sleep_outside_vthread_is_time_sleep():
    took, res = elapsed(greenhub.sleep, 0.05)
    assert res is None and took >= 0.049


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), "1", 1j, None])
def test_sleep_rejects_what_time_sleep_rejects(gloop, bad):
    with pytest.raises(Exception) as expected:
        time.sleep(bad)
    with pytest.raises(type(expected.value), match=str(expected.value).replace("(", r"\(").replace(")", r"\)")):
        run_vthreads(gloop, lambda i: greenhub.sleep(bad), 1)


def test_sleep_zero_lets_others_run(gloop):
    order = []

    def a(i):
        order.append("a1")
        greenhub.sleep(0)
        order.append("a2")

    def b(i):
        order.append("b")

    async def main():
        await asyncio.gather(greenhub.spawn(a, 0), greenhub.spawn(b, 0))

    gloop.run_until_complete(main())
    assert order == ["a1", "b", "a2"]


def test_cancelled_sleep_leaves_no_timer(gloop, monkeypatch):
    fired = []
    monkeypatch.setattr(greenhub.sync, "_resolve", lambda fut, value: fired.append(value))

    async def main():
        task = greenhub.spawn(greenhub.sleep, 0.1)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # past the sleep's end: its timer must not fire

    gloop.run_until_complete(main())
    assert fired == []


# --- Lock / RLock / Semaphore: mutual exclusion across callers ----------------------------


def test_lock_excludes_vthreads(gloop):
    lock = greenhub.Lock()
    inside = []

    def worker(i):
        with lock:
            inside.append(i)
            assert len(inside) == 1
            greenhub.sleep(0.005)
            inside.remove(i)
        return i

    assert run_vthreads(gloop, worker, 10) == list(range(10))
    assert not lock.locked()


def test_lock_shared_by_vthreads_and_os_threads(gloop):
    lock = greenhub.Lock()
    counter = [0]

    def bump(n):
        for _ in range(n):
            with lock:
                v = counter[0]
                if greenhub.in_vthread():
                    greenhub.sleep(0)  # switch while holding it
                else:
                    time.sleep(0)
                counter[0] = v + 1

    threads = [threading.Thread(target=bump, args=(200,)) for _ in range(3)]
    for t in threads:
        t.start()
    run_vthreads(gloop, lambda i: bump(200), 5)
    for t in threads:
        t.join(30)
    assert counter[0] == 8 * 200


def test_os_thread_waits_for_vthread_holder(gloop):
    lock = greenhub.Lock()
    got = []

    def holder(i):
        with lock:
            t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=20)))
            t.start()
            greenhub.sleep(0.1)  # the OS thread really blocks meanwhile
            assert got == []
        greenhub.await_(asyncio.get_running_loop().run_in_executor(None, t.join))

    run_vthreads(gloop, holder, 1)
    assert got == [True]


def test_vthread_waits_for_os_thread_holder(gloop):
    lock = greenhub.Lock()
    held = threading.Event()
    release = threading.Event()
    ticks = []

    def os_holder():
        with lock:
            held.set()
            release.wait(20)

    t = threading.Thread(target=os_holder)
    t.start()
    held.wait(20)

    def waiter(i):
        acquired = lock.acquire()
        lock.release()
        return acquired

    async def ticker():
        for _ in range(5):
            ticks.append(1)
            await asyncio.sleep(0.01)
        release.set()

    async def main():
        return await asyncio.gather(greenhub.spawn(waiter, 0), ticker())

    assert gloop.run_until_complete(main())[0] is True
    t.join(20)
    assert len(ticks) == 5  # the loop kept running while the vthread waited


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore", "BoundedSemaphore"])
def test_timeouts_and_nonblocking_like_threading(gloop, kind):
    ours, theirs = PRIMS[kind]
    sem = "Semaphore" in kind
    ours_obj, theirs_obj = (ours(0), theirs(0)) if sem else (ours(), theirs())

    def holder_thread(obj):
        if not sem:
            ready = threading.Event()

            def hold():
                obj.acquire()
                ready.set()

            threading.Thread(target=hold).start()
            ready.wait(10)

    holder_thread(ours_obj)
    holder_thread(theirs_obj)
    for obj in (ours_obj, theirs_obj):
        assert obj.acquire(False) is False
        assert obj.acquire(timeout=0.05) is False

    def in_vt(i):
        deadline = gloop.time() + 0.1
        r = ours_obj.acquire(timeout=0.1)
        return r, gloop.time() >= deadline

    assert run_vthreads(gloop, in_vt, 1) == [(False, True)]  # timed out, not early


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore"])
def test_bad_arguments_like_threading(kind):
    ours, theirs = PRIMS[kind]
    for args in [(False, 1), (True, -2)]:
        if "Semaphore" in kind and args == (True, -2):
            continue  # threading.Semaphore treats a negative timeout as 0
        with pytest.raises(ValueError) as expected:
            theirs().acquire(*args)
        with pytest.raises(ValueError, match=str(expected.value)):
            ours().acquire(*args)


def test_release_errors_like_threading(gloop):
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        greenhub.Lock().release()
    with pytest.raises(RuntimeError, match="cannot release un-acquired lock"):
        greenhub.RLock().release()
    b = greenhub.BoundedSemaphore(1)
    with pytest.raises(ValueError, match="Semaphore released too many times"):
        b.release()
    with pytest.raises(ValueError, match="n must be one or more"):
        greenhub.Semaphore().release(0)
    with pytest.raises(ValueError, match="initial value must be >= 0"):
        greenhub.Semaphore(-1)


def test_rlock_owner_is_the_vthread(gloop):
    rlock = greenhub.RLock()
    log = []

    def a(i):
        with rlock:
            with rlock:  # reentrant in the same vthread
                log.append("a in")
                greenhub.sleep(0.05)
                log.append("a out")

    def b(i):
        greenhub.sleep(0.01)
        with pytest.raises(RuntimeError):
            rlock.release()  # not the owner, although the same OS thread
        with rlock:
            log.append("b")

    async def main():
        await asyncio.gather(greenhub.spawn(a, 0), greenhub.spawn(b, 1))

    gloop.run_until_complete(main())
    assert log == ["a in", "a out", "b"]


@pytest.mark.parametrize("make", [threading.RLock, greenhub.RLock], ids=["threading", "greenhub"])
@pytest.mark.parametrize("kind", ["asyncio", "greenhub"])
def test_rlock_held_by_a_task_is_reentered_by_a_callback(kind, make, greenhub_leak_check):
    """A task holds the lock across an await; a loop callback takes it.  On the stock
    loop the OS thread owns a threading.RLock, so the callback re-enters it.  A virtual
    thread owns greenhub's RLock (and threading's, once monkey-patched), but a callback
    on the loop's thread re-enters what that loop's tasks hold: waiting there would stop
    the loop, and the task with it, for ever."""
    import support

    lock = make()
    log = []

    async def holder():
        with lock:
            log.append("task holds")
            await asyncio.sleep(0.001)
            log.append("task still holds")
        log.append("task released")

    def callback():
        with lock:
            log.append("callback in lock")

    async def main():
        loop = asyncio.get_running_loop()
        t = loop.create_task(holder())
        await asyncio.sleep(0)
        loop.call_soon(callback)
        await asyncio.wait_for(t, 10)

    loop = support.new_loop(kind)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert log == ["task holds", "callback in lock", "task still holds", "task released"]
    assert not lock._is_owned()


def test_semaphore_limits_concurrency(gloop):
    sem = greenhub.BoundedSemaphore(3)
    active, peak = [0], [0]

    def worker(i):
        with sem:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            greenhub.sleep(0.02)
            active[0] -= 1

    run_vthreads(gloop, worker, 12)
    assert peak[0] == 3  # three at a time: more would break the limit, fewer the overlap


def test_cancelled_waiter_passes_the_lock_on(gloop):
    lock = greenhub.Lock()

    async def main():
        lock.acquire()
        first = greenhub.spawn(lock.acquire)
        second = greenhub.spawn(lock.acquire)
        await asyncio.sleep(0.01)
        lock.release()  # wakes `first` ...
        first.cancel()  # ... which is cancelled before it runs: `second` must get it
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await asyncio.wait_for(second, 5) is True
        lock.release()

    gloop.run_until_complete(main())
    assert not lock.locked()


# --- Condition / Event ---------------------------------------------------------------


def test_condition_between_vthread_and_os_thread(gloop):
    cond = greenhub.Condition()
    items = []

    def producer():
        for i in range(5):
            time.sleep(0.01)
            with cond:
                items.append(i)
                cond.notify()

    def consumer(i):
        got = []
        with cond:
            while len(got) < 5:
                cond.wait_for(lambda: items)
                got.append(items.pop(0))
        return got

    t = threading.Thread(target=producer)
    t.start()
    assert run_vthreads(gloop, consumer, 1) == [[0, 1, 2, 3, 4]]
    t.join(10)


def test_condition_wait_timeout_and_errors(gloop):
    cond = greenhub.Condition(greenhub.Lock())
    with pytest.raises(RuntimeError, match="cannot wait on un-acquired lock"):
        cond.wait(0)
    with pytest.raises(RuntimeError, match="cannot notify on un-acquired lock"):
        cond.notify()

    def vt(i):
        with cond:
            deadline = gloop.time() + 0.05
            return cond.wait(0.05), gloop.time() >= deadline, cond._lock.locked()

    ((woken, not_early, locked),) = run_vthreads(gloop, vt, 1)
    assert woken is False and not_early and locked
    assert not cond._lock.locked()


def test_event_set_from_os_thread_wakes_vthreads(gloop):
    ev = greenhub.Event()
    threading.Timer(0.05, ev.set).start()
    assert run_vthreads(gloop, lambda i: ev.wait(10), 20) == [True] * 20
    assert ev.is_set()
    ev.clear()
    assert run_vthreads(gloop, lambda i: ev.wait(0.01), 2) == [False, False]


def test_event_os_thread_waits_for_vthread(gloop):
    ev = greenhub.Event()
    result = []
    t = threading.Thread(target=lambda: result.append(ev.wait(20)))
    t.start()

    def setter(i):
        greenhub.sleep(0.02)
        ev.set()

    run_vthreads(gloop, setter, 1)
    t.join(20)
    assert result == [True]


# --- queues --------------------------------------------------------------------------


def test_queue_pipeline_vthreads_and_threads(gloop):
    q = greenhub.Queue(maxsize=2)  # small: producers block on full
    out = greenhub.Queue()

    def os_producer():
        for i in range(50):
            q.put(("t", i))

    def vt_worker(i):
        while True:
            item = q.get()
            if item is None:
                q.task_done()
                return
            out.put(item)
            q.task_done()

    t = threading.Thread(target=os_producer)
    t.start()

    async def main():
        workers = [greenhub.spawn(vt_worker, i) for i in range(4)]
        await asyncio.get_running_loop().run_in_executor(None, t.join)
        for _ in workers:
            await q.async_put(None)
        await q.async_join()
        await asyncio.gather(*workers)

    gloop.run_until_complete(asyncio.wait_for(main(), 20))
    got = sorted(out.get_nowait() for _ in range(out.qsize()))
    assert got == [("t", i) for i in range(50)]


def test_queue_orders_and_errors():
    for cls, expected in [
        (greenhub.Queue, [3, 1, 2]),
        (greenhub.LifoQueue, [2, 1, 3]),
        (greenhub.PriorityQueue, [1, 2, 3]),
    ]:
        q = cls()
        for x in (3, 1, 2):
            q.put(x)
        assert [q.get() for _ in range(3)] == expected
    q = greenhub.Queue(1)
    q.put(1)
    assert q.full() and q.qsize() == 1 and not q.empty()
    with pytest.raises(queue.Full):
        q.put_nowait(2)
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.01)
    q.get()
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(ValueError, match="'timeout' must be a non-negative number"):
        q.get(True, -1)
    q.task_done()
    with pytest.raises(ValueError, match="task_done"):
        q.task_done()


def test_queue_get_timeout_in_vthread(gloop):
    q = greenhub.Queue()

    def vt(i):
        deadline = gloop.time() + 0.05
        with pytest.raises(queue.Empty):
            q.get(timeout=0.05)
        return gloop.time() >= deadline

    assert run_vthreads(gloop, vt, 3) == [True] * 3  # timed out, not early


def test_queue_in_os_threads_only():
    # No loop anywhere: the queue is an ordinary thread-safe queue.
    def run():
        q = greenhub.Queue()
        threads = [threading.Thread(target=lambda: [q.put(i) for i in range(100)]) for _ in range(4)]
        for t in threads:
            t.start()
        got = [q.get(timeout=10) for _ in range(400)]
        for t in threads:
            t.join()
        return sorted(got)

    assert in_thread(run) == sorted(list(range(100)) * 4)


def test_cancelled_get_does_not_lose_an_item(gloop):
    q = greenhub.Queue()

    async def main():
        a = greenhub.spawn(q.get)
        b = greenhub.spawn(q.get)
        await asyncio.sleep(0.01)
        q.put("x")  # wakes `a` ...
        a.cancel()  # ... cancelled first: `b` must receive the item
        with pytest.raises(asyncio.CancelledError):
            await a
        return await asyncio.wait_for(b, 5)

    assert gloop.run_until_complete(main()) == "x"


# --- async API, on both loops --------------------------------------------------------


def test_async_api(loop):
    lock, rlock, ev = greenhub.Lock(), greenhub.RLock(), greenhub.Event()
    sem, cond, q = greenhub.Semaphore(2), greenhub.Condition(), greenhub.Queue(1)

    async def main():
        async with lock:
            assert lock.locked()
            assert await lock.async_acquire(False) is False
            assert await lock.async_acquire(timeout=0.01) is False
        async with rlock:
            async with rlock:
                pass
        assert not rlock.locked()

        async def consumer():
            async with cond:
                await cond.async_wait_for(lambda: ev.is_set())
                return "seen"

        c = asyncio.ensure_future(consumer())
        await asyncio.sleep(0.01)
        threading.Timer(0.01, ev.set).start()
        assert await ev.async_wait(10) is True
        async with cond:
            cond.notify_all()
        assert await asyncio.wait_for(c, 10) == "seen"

        async with sem:
            async with sem:
                assert await sem.async_acquire(timeout=0.01) is False

        await q.async_put(1)
        with pytest.raises(queue.Full):
            await q.async_put(2, timeout=0.01)
        # an OS thread takes it out while we wait to put
        threading.Timer(0.02, q.get).start()
        await q.async_put(2, timeout=10)
        assert await q.async_get() == 2
        with pytest.raises(queue.Empty):
            await q.async_get(timeout=0.01)

    loop.run_until_complete(asyncio.wait_for(main(), 20))


def test_async_waiter_cancelled(loop):
    ev = greenhub.Event()

    async def main():
        t = asyncio.ensure_future(ev.async_wait())
        await asyncio.sleep(0.01)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        assert len(ev._waiters) == 0

    loop.run_until_complete(main())


def test_mixed_async_and_vthread(gloop):
    q = greenhub.Queue()

    def vt_producer(i):
        for n in range(20):
            q.put(n)
            greenhub.sleep(0)

    async def main():
        p = greenhub.spawn(vt_producer, 0)
        got = [await q.async_get() for _ in range(20)]
        await p
        return got

    assert gloop.run_until_complete(main()) == list(range(20))


def test_reprs():
    lock = greenhub.Lock()
    assert "unlocked greenhub.sync.Lock" in repr(lock)
    lock.acquire()
    assert "<locked" in repr(lock)
    assert "unset" in repr(greenhub.Event())
    assert "value=2" in repr(greenhub.Semaphore(2))
    assert "value=1/1" in repr(greenhub.BoundedSemaphore(1))


# --- cancellation never loses a lock, a slot, an item or a wakeup ---------------------
#
# Two callers wait on one primitive; one unit is made available (a release, an item, a
# notify), which wakes the first; the first is cancelled before it runs again.  The
# second must get the unit, the first must end cancelled holding nothing, and the
# primitive's state must be what one successful wait leaves.  The same with a caller
# cancelled while still queued (nothing to pass on: it only leaves the queue).  Virtual
# threads on greenhub; the async API on both loops.


class _Case:
    """A primitive made unavailable, one wait on it (sync and async), what makes one
    unit available, and the state one successful wait leaves."""

    def __init__(self, name):
        self.name = name
        self.q = None
        if name in ("Lock", "RLock"):
            self.p = getattr(greenhub, name)()
        elif name == "Semaphore":
            self.p = greenhub.Semaphore(0)
        elif name == "BoundedSemaphore":
            self.p = greenhub.BoundedSemaphore(1)
        elif name == "Condition":
            self.p = greenhub.Condition()
        elif name.endswith("Queue.get"):
            self.p = getattr(greenhub, name.split(".")[0])()
        elif name == "Queue.put":
            self.p = greenhub.Queue(1)
            self.p.put("old")
        else:
            raise ValueError(name)

    def take(self):
        """Called by the test's task: an RLock is owned by whoever takes it."""
        if self.name in ("Lock", "RLock", "BoundedSemaphore"):
            self.p.acquire()

    def wait(self, tag):
        p = self.p
        if self.name in ("Lock", "RLock", "Semaphore", "BoundedSemaphore"):
            p.acquire()
            p.release()  # the unit goes back: the other caller's turn
            return tag
        if self.name == "Condition":
            with p:
                return tag if p.wait() else None
        if self.name == "Queue.put":
            p.put(tag)
            return tag
        return p.get()

    async def async_wait(self, tag):
        p = self.p
        if self.name in ("Lock", "RLock", "Semaphore", "BoundedSemaphore"):
            async with p:
                return tag
        if self.name == "Condition":
            async with p:
                return tag if await p.async_wait() else None
        if self.name == "Queue.put":
            await p.async_put(tag)
            return tag
        return await p.async_get()

    def queued(self):
        """How many callers wait on the primitive now."""
        p = self.p
        if self.name == "RLock":
            return len(p._block._waiters)
        if self.name == "Queue.put":
            return len(p._not_full)
        if self.name.endswith("Queue.get"):
            return len(p._not_empty)
        return len(p._waiters)

    def make_one_available(self):
        p = self.p
        if self.name == "Condition":
            with p:
                p.notify()
        elif self.name == "Queue.put":
            assert p.get() == "old"
        elif self.name.endswith("Queue.get"):
            p.put("item")
        else:
            p.release()

    def expected(self, second):
        """What the second caller returns."""
        return "item" if self.name.endswith("Queue.get") else second

    def assert_settled(self, second):
        p = self.p
        if self.name in ("Lock", "RLock"):
            assert not p.locked()
        elif self.name in ("Semaphore", "BoundedSemaphore"):
            assert p._value == 1
        elif self.name == "Condition":
            assert not p._lock.locked() and len(p._waiters) == 0
        elif self.name == "Queue.put":
            assert list(p.queue) == [second]
        else:
            assert p.qsize() == 0
        for attr in ("_waiters", "_not_empty", "_not_full"):
            waiters = getattr(p, attr, None)
            if waiters is not None:
                assert len(waiters) == 0, attr


CASES = [
    "Lock",
    "RLock",
    "Semaphore",
    "BoundedSemaphore",
    "Condition",
    "Queue.get",
    "LifoQueue.get",
    "PriorityQueue.get",
    "Queue.put",
]


async def until(predicate):
    while not predicate():
        await asyncio.sleep(0)


async def _two_waiters_one_unit(case, spawn, when):
    case.take()
    fn = case.wait if spawn is greenhub.spawn else case.async_wait
    first = spawn(fn, "first")
    await until(lambda: case.queued() == 1)  # `first` queues before `second`
    second = spawn(fn, "second")
    await until(lambda: case.queued() == 2)
    if when == "woken":
        case.make_one_available()  # wakes `first` ...
        first.cancel()  # ... which is cancelled before it has run
    else:
        first.cancel()  # still queued
        await until(lambda: case.queued() == 1)
        case.make_one_available()
    with pytest.raises(asyncio.CancelledError):
        await first
    return await asyncio.wait_for(second, 5)


def _spawn_async(fn, tag):
    return asyncio.ensure_future(fn(tag))


@pytest.mark.parametrize("when", ["woken", "queued"])
@pytest.mark.parametrize("name", CASES)
def test_cancelled_vthread_waiter_loses_nothing(gloop, name, when):
    case = _Case(name)
    second = gloop.run_until_complete(_two_waiters_one_unit(case, greenhub.spawn, when))
    assert second == case.expected("second")
    case.assert_settled("second")


@pytest.mark.parametrize("when", ["woken", "queued"])
@pytest.mark.parametrize("name", CASES)
def test_cancelled_async_waiter_loses_nothing(loop, name, when):
    case = _Case(name)
    second = loop.run_until_complete(_two_waiters_one_unit(case, _spawn_async, when))
    assert second == case.expected("second")
    case.assert_settled("second")


def test_condition_wait_cancelled_returns_with_the_lock_held(gloop):
    """Cancelled while it waits to take the lock back (another virtual thread holds it
    across a wait): wait() still returns holding the lock, as threading's and asyncio's
    do, so the caller's `with` releases what it holds, and nothing else."""
    cond = greenhub.Condition()
    log = []

    def waiter():
        with cond:
            try:
                cond.wait()
            except asyncio.CancelledError:
                log.append(("cancelled, lock owned", cond._is_owned()))
                raise

    def holder(release):
        with cond:
            cond.notify()
            release.wait()  # holds the lock across a wait

    async def main():
        w = greenhub.spawn(waiter)
        await until(lambda: len(cond._waiters) == 1)
        release = greenhub.Event()
        h = greenhub.spawn(holder, release)
        # `w` is notified, and waits to take the lock back from `h`
        await until(lambda: len(release._waiters) == 1 and len(cond._lock._block._waiters) == 1)
        w.cancel()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not w.done()  # it cannot return without the lock
        release.set()
        await h
        with pytest.raises(asyncio.CancelledError):
            await w

    gloop.run_until_complete(main())
    assert log == [("cancelled, lock owned", True)]
    assert not cond._lock.locked()
