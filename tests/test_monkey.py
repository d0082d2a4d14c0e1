"""greenhub.monkey: cooperative inside virtual threads, the original everywhere else.

Patching is process-global, so every test runs its program in a fresh interpreter
(``run_child``) and checks what that program prints; the rest of the suite never sees
a patched module.  Nothing is timed: "N waits overlap" is shown by counting the
virtual threads inside a wait at once (``Overlap``, as tests/support.py explains, exact
for virtual threads started together) or by a barrier that only opens when all N are in
flight; the only time bounds are hang detectors, scaled under the sanitizers.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import support

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shared by the child programs: run sync functions as virtual threads, count overlaps.
PRELUDE = """
import asyncio, json, os, select, selectors, socket, subprocess, sys, threading, time
import greenhub
from greenhub import monkey

# Hang detectors only (a barrier's patience, a client's timeout): 5x under the sanitizers.
HANG = 30 * (5 if os.environ.get("GREENHUB_ASAN_LOG") else 1)

def in_vthreads(fn, n, *args):
    async def main():
        return await asyncio.gather(*(greenhub.spawn(fn, i, *args) for i in range(n)))
    return greenhub.run(main())

class Overlap:
    # tests/support.py's: `with overlap:` around a wait; .peak is the most inside at once.
    def __init__(self):
        self.now = self.peak = 0
    def __enter__(self):
        self.now += 1; self.peak = max(self.peak, self.now)
    def __exit__(self, *exc):
        self.now -= 1

def errors(fn, values):
    out = []
    for v in values:
        try:
            fn(v)
            out.append("ok")
        except Exception as exc:
            out.append(f"{type(exc).__name__}: {exc}")
    return out

def emit(**kw):
    print("RESULT " + json.dumps(kw))
"""


def run_child(body, timeout=60):
    """Run PRELUDE + body (a string, or pieces each dedented on its own) in a new
    interpreter; return what it passed to emit().  `timeout` only detects a hung child
    (times support.SLOW: the sanitizer build is several times slower)."""
    import json

    if isinstance(body, tuple):
        body = "".join(textwrap.dedent(piece) for piece in body)

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        env=env,
        timeout=support.hang_timeout(timeout),
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"child printed no result:\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(lines[-1][len("RESULT ") :])
    result["_stderr"] = proc.stderr
    return result


@pytest.mark.timeout(60)
def test_importing_greenhub_patches_nothing():
    r = run_child(
        """
        import builtins, queue
        names = {"time": ["sleep"], "select": ["select", "poll", "epoll"],
                 "threading": ["Lock", "RLock", "Event", "Condition", "Semaphore", "local"],
                 "queue": ["Queue"], "socket": ["socket", "create_connection"]}
        mods = {m: sys.modules[m] for m in names}
        modules_of = {f"{m}.{a}": getattr(getattr(mods[m], a), "__module__", None)
                      for m, attrs in names.items() for a in attrs}
        emit(modules=modules_of, patched=monkey.patched(),
             any_patched=[g for g in ("time", "thread", "socket") if monkey.is_patched(g)])
        """
    )
    assert r["patched"] == {} and r["any_patched"] == []
    assert all(not (mod or "").startswith("greenhub") for mod in r["modules"].values()), r[
        "modules"
    ]


@pytest.mark.timeout(60)
def test_time_sleep_is_cooperative_in_vthreads_and_real_elsewhere():
    r = run_child(
        """
        original = time.sleep
        monkey.patch_time()
        # 50 virtual threads sleeping 0.2 s each: all asleep at once, not one after another
        asleep = Overlap()
        def sleeper(i):
            with asleep:
                time.sleep(0.2)
            return i
        res = in_vthreads(sleeper, 50)
        # outside any virtual thread: a real sleep
        t0 = time.monotonic(); time.sleep(0.1); outside = time.monotonic() - t0

        # in a loop callback (not a task): blocks the loop, as unpatched - a task that
        # runs at every pass of the loop does not run while the callback sleeps
        async def callback_blocks():
            loop = asyncio.get_running_loop()
            passes = []
            async def ticker():
                while True:
                    passes.append(None); await asyncio.sleep(0)
            t = asyncio.ensure_future(ticker())
            await asyncio.sleep(0)
            done = loop.create_future()
            def callback():
                before = len(passes); t0 = time.monotonic()
                time.sleep(0.1)
                done.set_result([time.monotonic() - t0 >= 0.1, len(passes) == before])
            loop.call_soon(callback)
            held = await done
            t.cancel()
            return held
        held_loop = greenhub.run(callback_blocks())

        # on a stock asyncio loop, inside tasks: blocks, as unpatched (no overlap)
        async def two_tasks():
            inside = Overlap()
            async def blocker():
                with inside:
                    time.sleep(0.1)
            await asyncio.gather(blocker(), blocker())
            return inside.peak
        stock = asyncio.run(two_tasks())

        bad = ["x", -1, float("nan"), 1e300, None, 1.5j]
        in_vthread = in_vthreads(lambda i: errors(time.sleep, bad), 1)[0]
        emit(peak=asleep.peak, res=res, outside=outside, held_loop=held_loop,
             stock=stock, errors_vthread=in_vthread, errors_patched=errors(time.sleep, bad),
             errors_original=errors(original, bad), zero=in_vthreads(lambda i: time.sleep(0), 3))
        """
    )
    assert r["res"] == list(range(50))
    assert r["peak"] == 50, r  # one after another: 1
    assert r["outside"] >= 0.1  # slept for real (a lower bound: no machine is too fast)
    assert r["held_loop"] == [True, True], r  # the callback's sleep held the loop
    assert r["stock"] == 1, r  # two blocking sleeps, one after the other
    assert r["errors_vthread"] == r["errors_original"] == r["errors_patched"], r
    assert r["errors_original"][0].startswith("TypeError")
    assert r["zero"] == [None, None, None]


@pytest.mark.timeout(60)
def test_patched_sleep_in_os_thread_and_without_loop_is_the_original():
    r = run_child(
        """
        monkey.patch_time()
        calls = []
        real = monkey.get_original("time.sleep")
        def spy(s):
            calls.append(threading.current_thread().name)
            return real(s)
        # The dispatcher calls the original it wrapped: observe it through __wrapped__.
        assert time.sleep.__wrapped__ is real
        th = threading.Thread(target=lambda: time.sleep(0.05), name="T")
        t0 = time.monotonic(); th.start(); th.join(); in_thread = time.monotonic() - t0
        # A thread running its own greenhub loop: vthreads there are cooperative too.
        def loop_thread():
            asleep = Overlap()
            def sleeper(i):
                with asleep:
                    time.sleep(0.2)
            in_vthreads(sleeper, 20)
            return asleep.peak
        out = []
        th = threading.Thread(target=lambda: out.append(loop_thread())); th.start(); th.join()
        emit(in_thread=in_thread, other_loop=out[0], is_orig=monkey.get_original("time.sleep") is real)
        """
    )
    assert r["in_thread"] >= 0.05
    assert r["other_loop"] == 20, r  # all asleep at once; one after another: 1
    assert r["is_orig"]


@pytest.mark.timeout(60)
def test_select_poll_epoll_selectors_wait_cooperatively_with_the_originals_answers():
    r = run_child(
        """
        monkey.patch_select(); monkey.patch_selectors()
        waiting = Overlap()
        def worker(i):
            with waiting:
                return probe()
        def probe():
            a, b = socket.socketpair()
            try:
                out = {}
                out["select_timeout"] = select.select([a], [], [], 0.2)
                out["select_w"] = select.select([], [a], [], 1) == ([], [a], [])
                out["select_gen"] = select.select((x for x in [a]), [], [], 0.01)
                b.send(b"x")
                out["select_r"] = select.select([a], [], [a], 1) == ([a], [], [])
                p = select.poll(); p.register(a, select.POLLIN)
                out["poll_r"] = p.poll(1000) == [(a.fileno(), select.POLLIN)]
                a.recv(1)
                out["poll_none"] = p.poll(200)
                ep = select.epoll(); ep.register(a.fileno(), select.EPOLLIN)
                out["epoll_none"] = ep.poll(0.2)
                b.send(b"y")
                out["epoll_r"] = ep.poll(1) == [(a.fileno(), select.EPOLLIN)]
                a.recv(1); ep.close()
                for cls in (selectors.DefaultSelector, selectors.PollSelector, selectors.SelectSelector):
                    with cls() as s:
                        s.register(a, selectors.EVENT_READ, "data")
                        out[cls.__name__ + "_none"] = s.select(0.2)
                        b.send(b"z")
                        ready = s.select(1)
                        out[cls.__name__] = [(k.fileobj is a, k.data, ev) for k, ev in ready]
                        a.recv(1)
                return out
            finally:
                a.close(); b.close()
        res = in_vthreads(worker, 10)
        # The originals say the same outside virtual threads.
        emit(res=res, peak=waiting.peak, outside=probe())
        """
    )
    assert r["peak"] == 10, r  # the ten waited together; one after another: 1
    for out in r["res"]:
        assert out == r["outside"], (out, r["outside"])
    out = r["outside"]
    assert out["select_timeout"] == [[], [], []] and out["select_w"] and out["select_r"]
    assert out["poll_r"] and out["poll_none"] == [] and out["epoll_none"] == []
    assert out["epoll_r"] and out["select_gen"] == [[], [], []]
    for name in ("EpollSelector", "PollSelector", "SelectSelector"):
        assert out[name] == [[True, "data", 1]] and out[name + "_none"] == [], out


@pytest.mark.timeout(60)
def test_select_bad_arguments_raise_as_the_originals_inside_vthreads():
    r = run_child(
        """
        monkey.patch_select()
        orig_select = monkey.get_original("select.select")
        a, b = socket.socketpair()
        cases = [
            lambda: select.select([a], [], [], -1),
            lambda: select.select([a], [], [], "x"),
            lambda: select.select([a], [], [], float("nan")),
            lambda: select.select(5, [], [], 0),
            lambda: select.select([object()], [], [], 0),
            lambda: select.select([-1], [], [], 0),
            lambda: select.poll().poll("x"),
            lambda: select.poll().poll(float("nan")),
            lambda: select.poll().register("x"),
            lambda: select.poll().unregister(12345),
            lambda: select.epoll().poll(0, 0),
            lambda: select.epoll().poll("x"),
        ]
        if sys.version_info < (3, 15):  # 3.15's poll() takes it: a 35-year wait
            cases.append(lambda: select.poll().poll(2**40))
        def run_all(_=None):
            return errors(lambda case: case(), cases)
        orig_cases = errors(lambda case: case(), [
            lambda: orig_select([a], [], [], -1),
            lambda: orig_select([a], [], [], "x"),
            lambda: orig_select([a], [], [], float("nan")),
            lambda: orig_select(5, [], [], 0),
            lambda: orig_select([object()], [], [], 0),
            lambda: orig_select([-1], [], [], 0),
        ])
        emit(vthread=in_vthreads(lambda i: run_all(), 1)[0], outside=run_all(), orig=orig_cases)
        """
    )
    assert r["vthread"] == r["outside"], r
    assert r["outside"][:6] == r["orig"], r
    assert all(e != "ok" for e in r["outside"]), r


@pytest.mark.timeout(60)
def test_selectors_and_join_bad_timeouts_raise_as_the_originals_inside_vthreads():
    # A timeout the original refuses (NaN, infinite, past the clock's range, not a
    # number) raised there but was waited on here (NaN: forever), as was a finite one
    # just under the clock's limit that the original takes.
    r = run_child(
        """
        import selectors, threading
        bad = [float("nan"), float("inf"), 1e300, 9223372037, 2**70, "x", 1.5j]
        classes = [selectors.SelectSelector, selectors.PollSelector, selectors.EpollSelector]
        def select_errors(_=None):
            out = {}
            for cls in classes:
                sel = cls()
                a, b = socket.socketpair()
                sel.register(a, selectors.EVENT_READ)
                out[cls.__name__] = errors(sel.select, bad)
                sel.close(); a.close(); b.close()
            return out
        def join_errors(_=None):
            out = []
            for v in bad + [-1]:
                stop = threading.Event()
                t = threading.Thread(target=stop.wait)  # alive while it is joined
                t.start()
                out += errors(t.join, [v])
                stop.set()
                t.join()
            return out
        orig = {"select": select_errors(), "join": join_errors()}
        monkey.patch_selectors()
        monkey.patch_thread()
        inside = in_vthreads(lambda i: {"select": select_errors(), "join": join_errors()}, 1)[0]
        emit(orig=orig, inside=inside)
        """
    )
    assert r["inside"] == r["orig"], r
    assert all(e != "ok" for errs in r["orig"]["select"].values() for e in errs), r
    assert r["orig"]["join"][-1] == "ok" and "ok" not in r["orig"]["join"][:-1], r


@pytest.mark.timeout(60)
def test_communicate_without_timeout_outlasting_polls_limit_loses_nothing():
    # communicate() with one pipe and no timeout waits through the selector path with
    # the longest timeout poll() takes (~24.8 days) and starts again when it passes;
    # here that limit is shortened to 50 ms for a child that writes across it.
    r = run_child(
        """
        import subprocess
        from greenhub.monkey import _subprocess
        _subprocess._LONG_WAIT = 0.05
        monkey.patch_subprocess()
        cmd = [sys.executable, "-c",
               "import sys, time; print('a', flush=True); time.sleep(0.3); print('b')"]
        def run(_=None):
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            out, _ = p.communicate()
            return out, p.returncode
        emit(inside=in_vthreads(lambda i: run(), 1)[0], outside=run())
        """
    )
    assert r["inside"] == r["outside"] == ["a\nb\n", 0], r


@pytest.mark.timeout(60)
def test_cancelling_a_vthread_in_select_leaves_no_watcher_behind():
    r = run_child(
        """
        monkey.patch_all(socket=False, ssl=False)
        a, b = socket.socketpair()
        async def main():
            loop = asyncio.get_running_loop()
            before = dict(loop._selector.get_map())   # the loop's own self-pipe
            def poller():
                p = select.poll(); p.register(a, select.POLLIN); p.poll()
            def selector():
                with selectors.PollSelector() as s:
                    s.register(a, selectors.EVENT_READ); s.select()
            outcomes = []
            for fn in (lambda: select.select([a], [], [], None), poller, selector,
                       lambda: time.sleep(100),
                       lambda: subprocess.run(["sleep", "100"])):
                t = greenhub.spawn(fn)
                await asyncio.sleep(0.1)
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    outcomes.append("cancelled")
            # nothing left on the loop: no readers, no pending timers of ours
            return outcomes, dict(loop._selector.get_map()) == before
        outcomes, watched = greenhub.run(main())
        emit(outcomes=outcomes, watched=watched)
        """
    )
    assert r["outcomes"] == ["cancelled"] * 5
    assert r["watched"] is True


@pytest.mark.timeout(60)
def test_two_vthreads_in_one_epoll_selectors_select_the_second_is_refused():
    # Both would wait on the selector's own epoll fd: one watcher, one waiter.  The
    # second gets a RuntimeError at once; the first is still woken by its event.
    r = run_child(
        """
        monkey.patch_selectors()
        a, b = socket.socketpair()
        async def main():
            with selectors.EpollSelector() as sel:
                sel.register(a, selectors.EVENT_READ)
                first = greenhub.spawn(sel.select, 5)
                await asyncio.sleep(0.02)
                try:
                    await greenhub.spawn(sel.select, 5)
                    second = "returned"
                except RuntimeError as exc:
                    second = str(exc)
                b.send(b"x")
                events = await first
                return second, [key.fileobj is a for key, _ in events]
        second, first = greenhub.run(main())
        emit(second=second, first=first)
        """
    )
    assert "already waited on for reading" in r["second"], r
    assert r["first"] == [True], r


@pytest.mark.timeout(60)
def test_subprocess_waits_are_cooperative_with_the_same_results():
    r = run_child(
        """
        monkey.patch_subprocess()
        waiting = Overlap()
        def worker(i):
            with waiting:
                return probe()
        def probe():
            out = {}
            cp = subprocess.run(["sh", "-c", "sleep 0.3; echo out; echo err >&2"],
                                capture_output=True, text=True)
            out["run"] = [cp.returncode, cp.stdout, cp.stderr]
            out["check_output"] = subprocess.check_output(["sh", "-c", "sleep 0.3; echo hi"]).decode()
            out["input"] = subprocess.run(["cat"], input=b"abc" * 100000, stdout=subprocess.PIPE).stdout == b"abc" * 100000
            out["call"] = subprocess.call(["sh", "-c", "exit 3"])
            p = subprocess.Popen(["sleep", "10"])
            try:
                p.wait(0.2)
            except subprocess.TimeoutExpired as exc:
                out["timeout"] = str(exc)
            try:
                subprocess.run(["sleep", "10"], timeout=0.2)
            except subprocess.TimeoutExpired as exc:
                out["run_timeout"] = str(exc)
            p.kill()
            out["killed"] = p.wait()
            with subprocess.Popen(["sh", "-c", "exit 7"]) as p2:
                pass
            out["with"] = p2.returncode
            return out
        res = in_vthreads(worker, 10)
        emit(res=res, peak=waiting.peak, outside=probe())
        """
    )
    assert r["peak"] == 10, r  # the ten waited together; one after another: 1
    for out in r["res"]:
        assert out.pop("run_timeout")[:45] == r["outside"]["run_timeout"][:45]
        assert out == {k: v for k, v in r["outside"].items() if k != "run_timeout"}
    out = r["outside"]
    assert out["run"] == [0, "out\n", "err\n"] and out["check_output"] == "hi\n" and out["input"]
    assert out["call"] == 3 and out["killed"] == -9 and out["with"] == 7
    assert out["timeout"] == "Command '['sleep', '10']' timed out after 0.2 seconds"
    # run() reports the time left when communicate() gave up, as unpatched
    assert out["run_timeout"].startswith("Command '['sleep', '10']' timed out after 0.")


@pytest.mark.timeout(60)
def test_threading_primitives_and_queue_in_vthreads_os_threads_and_both():
    r = run_child(
        """
        import queue
        monkey.patch_thread(); monkey.patch_queue(); monkey.patch_time()
        q = queue.Queue()
        lock, rlock = threading.Lock(), threading.RLock()
        ev, cond, sem = threading.Event(), threading.Condition(), threading.BoundedSemaphore(3)
        state = {"active": 0, "peak": 0, "in_lock": 0, "overlap": False}
        # The OS thread below sets `ev` only once all nine workers wait for it, which they
        # reach only if the loop runs while the coordinator waits in join(): an event of
        # the unpatched kind, waited on for real in that OS thread.
        all_waiting = monkey.get_original("threading.Event")()
        at_ev = [0]
        def worker(i):
            with sem:
                state["active"] += 1; state["peak"] = max(state["peak"], state["active"])
                time.sleep(0.1)
                state["active"] -= 1
            with lock:
                state["in_lock"] += 1
                state["overlap"] |= state["in_lock"] > 1
                with rlock, rlock:
                    time.sleep(0.01)
                state["in_lock"] -= 1
            at_ev[0] += 1
            if at_ev[0] == 9:
                all_waiting.set()
            assert ev.wait(HANG)
            with cond:
                cond.notify_all()
            q.put(i)
        def os_thread():
            state["join_cooperative"] = all_waiting.wait(HANG)  # a real wait: an OS thread
            ev.set()
        def coordinator(_):
            th = threading.Thread(target=os_thread)
            th.start(); th.join()    # join waits cooperatively
            items = sorted(q.get(timeout=HANG) for _ in range(9))
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                items.append("empty")
            return items
        async def main():
            tasks = [greenhub.spawn(worker, i) for i in range(9)]
            items = await greenhub.spawn(coordinator, 0)
            await asyncio.gather(*tasks)
            return items
        items = greenhub.run(main())
        try:
            queue.Queue(maxsize=1).put(1) or queue.Queue(maxsize=1).put_nowait(1)
            full = queue.Queue(maxsize=1); full.put(1); full.put(2, timeout=0.01)
        except queue.Full:
            full = "full"
        emit(items=items, state=state, full=full,
             types=[type(x).__module__ for x in (q, lock, rlock, ev, cond, sem)])
        """
    )
    assert r["items"] == list(range(9)) + ["empty"]
    assert r["state"]["peak"] == 3 and not r["state"]["overlap"]
    assert r["state"]["join_cooperative"] is True, r  # the workers ran during join()
    assert r["full"] == "full"
    assert set(r["types"]) == {"greenhub.sync"}


@pytest.mark.timeout(60)
def test_threading_local_is_per_vthread_inside_and_per_thread_outside():
    r = run_child(
        """
        monkey.patch_thread()
        class Conn(threading.local):
            made = 0
            def __init__(self, name):
                Conn.made += 1
                self.name = name
            @property
            def upper(self):
                return self.name.upper()
        conn = Conn("main")
        conn.name = "main-thread"
        plain = threading.local()
        plain.x = "main-thread"
        def worker(i):
            seen = [conn.name, hasattr(plain, "x")]
            conn.name = f"vt{i}"; plain.x = i
            time.sleep(0.05)   # other vthreads set theirs meanwhile
            seen += [conn.name, conn.upper, plain.x, sorted(vars(conn))]
            del plain.x
            seen.append(hasattr(plain, "x"))
            return seen
        time_patch = monkey.patch_time()
        res = in_vthreads(worker, 3)
        out = []
        def other_thread():
            out.append([conn.name, hasattr(plain, "x")])
        th = threading.Thread(target=other_thread); th.start(); th.join()
        try:
            threading.local(1)
        except TypeError as exc:
            err = str(exc)
        emit(res=res, main=[conn.name, plain.x], thread=out[0], made=Conn.made, err=err,
             subclass=issubclass(threading.local, monkey.get_original("threading.local")))
        """
    )
    assert r["res"] == [
        ["main", False, f"vt{i}", f"VT{i}", i, ["name"], False] for i in range(3)
    ], r
    assert r["main"] == ["main-thread", "main-thread"]  # the OS thread's namespace untouched
    assert r["thread"] == ["main", False]
    assert r["made"] == 1 + 3 + 1  # main thread, 3 vthreads, the other thread
    assert r["err"] == "Initialization arguments are not supported"
    assert r["subclass"]


@pytest.mark.timeout(60)
def test_patch_after_import_rewrites_references_and_unpatch_restores_identity():
    r = run_child(
        """
        import queue, types
        from time import sleep as early_sleep
        from threading import Lock as EarlyLock, Event as EarlyEvent
        from select import select as early_select
        from queue import Queue as EarlyQueue
        keep = {}
        holders = {"time": time, "select": select, "selectors": selectors, "threading": threading,
                   "queue": queue, "Popen": subprocess.Popen, "Thread": threading.Thread}
        for cls in vars(selectors).values():
            if isinstance(cls, type):
                holders["selectors." + cls.__name__] = cls
        before = {k: dict(vars(h)) for k, h in holders.items()}
        main_before = {k: globals()[k] for k in ("early_sleep", "EarlyLock", "EarlyEvent", "early_select", "EarlyQueue")}
        monkey.patch_all(socket=False, ssl=False)
        monkey.patch_all(socket=False, ssl=False)   # twice: a no-op
        patched_names = monkey.patched()
        during = dict(early_sleep=early_sleep is time.sleep, EarlyLock=EarlyLock is threading.Lock,
                      EarlyEvent=EarlyEvent is threading.Event, early_select=early_select is select.select,
                      EarlyQueue=EarlyQueue is queue.Queue)
        flags = {g: monkey.is_patched(g) for g in ("time", "select", "selectors", "thread", "queue", "subprocess", "socket")}
        dotted = [monkey.is_patched("time.sleep"), monkey.is_patched("selectors.EpollSelector.select")]
        # a module imported while patched picks up replacements; unpatch fixes it too
        mod = types.ModuleType("late"); sys.modules["late"] = mod
        exec("from time import sleep", mod.__dict__)
        late_patched = mod.sleep is time.sleep
        monkey.unpatch_all()
        after = {k: dict(vars(h)) for k, h in holders.items()}
        changed = [f"{k}.{a}" for k in before for a in set(before[k]) | set(after[k])
                   if before[k].get(a, "<missing>") is not after[k].get(a, "<missing>")]
        main_ok = all(globals()[k] is v for k, v in main_before.items())
        emit(during=during, flags=flags, dotted=dotted, changed=changed, main_ok=main_ok,
             late=[late_patched, mod.sleep is main_before["early_sleep"]],
             after=monkey.patched(), count=sum(len(v) for v in patched_names.values()),
             again=[monkey.patch_time(), monkey.is_patched("time"), monkey.unpatch_all(), monkey.is_patched("time")])
        """
    )
    assert all(r["during"].values()), r["during"]
    assert r["flags"] == dict.fromkeys(
        ("time", "select", "selectors", "thread", "queue", "subprocess"), True
    ) | {"socket": False}
    assert r["dotted"] == [True, True]
    assert r["changed"] == [], r["changed"]
    assert r["main_ok"] and r["late"] == [True, True]
    assert r["after"] == {}
    assert r["again"] == [None, True, None, False]


@pytest.mark.timeout(60)
def test_a_target_someone_else_replaced_fails_loudly_and_changes_nothing():
    r = run_child(
        """
        def fake_sleep(s):
            pass
        time.sleep = fake_sleep
        try:
            monkey.patch_time()
        except RuntimeError as exc:
            msg = str(exc)
        emit(msg=msg, still=time.sleep is fake_sleep, patched=monkey.patched())
        """
    )
    assert "time.sleep is already replaced" in r["msg"]
    assert r["still"] and r["patched"] == {}


@pytest.mark.timeout(60)
def test_patching_while_a_loop_runs_in_another_thread():
    r = run_child(
        """
        started = threading.Event()
        out = []
        def loop_thread():
            async def main():
                started.set()
                # unpatched at first: these would block; after the patch they cooperate
                while not monkey.is_patched("time"):
                    await asyncio.sleep(0.01)
                asleep = Overlap()
                def sleeper():
                    with asleep:
                        time.sleep(0.2)
                await asyncio.gather(*(greenhub.spawn(sleeper) for _ in range(20)))
                return asleep.peak
            out.append(greenhub.run(main()))
        th = threading.Thread(target=loop_thread); th.start()
        started.wait(HANG)
        monkey.patch_all(socket=False, ssl=False)
        th.join(HANG)
        emit(peak=out[0])
        """
    )
    assert r["peak"] == 20, r  # all asleep at once; 20 blocking sleeps: 1


@pytest.mark.timeout(90)
def test_gevent_style_program_under_patch_all():
    """Sync code written for gevent.monkey: workers, sleeps, a queue, a lock, an
    event, a pool of connections (semaphore), a subprocess and a select loop."""
    r = run_child(
        """
        monkey.patch_all(socket=False, ssl=False)
        import queue
        jobs, results = queue.Queue(), queue.Queue()
        pool = threading.BoundedSemaphore(4)
        # Holders of the pool line up four at a time, then do their "I/O" together: the
        # count inside it reaches four only if those waits overlap.
        four = threading.Barrier(4, timeout=HANG)
        doing_io = Overlap()
        log_lock = threading.Lock()
        log = []
        done = threading.Event()
        def worker(wid):
            while True:
                job = jobs.get()
                if job is None:
                    jobs.task_done(); return wid
                with pool:
                    four.wait()
                    with doing_io:
                        time.sleep(0.05)                   # "I/O"
                        a, b = socket.socketpair()
                        b.send(str(job).encode())
                        select.select([a], [], [], 5)
                        n = int(a.recv(16)); a.close(); b.close()
                with log_lock:
                    log.append(n)
                results.put(n * n)
                jobs.task_done()
        def producer(_):
            for j in range(40):
                jobs.put(j)
            for _ in range(8):
                jobs.put(None)
            jobs.join()
            out = subprocess.check_output(["echo", "all done"]).decode().strip()
            done.set()
            return out
        async def main():
            workers = [greenhub.spawn(worker, i) for i in range(8)]
            msg = await greenhub.spawn(producer, 0)
            await asyncio.gather(*workers)
            total = 0
            while not results.empty():
                total += results.get_nowait()
            return msg, total, sorted(log), done.is_set()
        msg, total, log_sorted, is_done = greenhub.run(main())
        emit(msg=msg, total=total, log=log_sorted, done=is_done, peak=doing_io.peak)
        """
    )
    assert r["msg"] == "all done" and r["done"]
    assert r["log"] == list(range(40))
    assert r["total"] == sum(j * j for j in range(40))
    assert r["peak"] == 4, r  # the pool's four holders waited together; serially: 1


# A threaded HTTP server (a thread per connection).  A request for /together/...
# is answered only once TOGETHER requests of that kind are in its handlers at the same
# time: the clients' requests were in flight together.  If they came one after another
# the first waits HANG seconds, then each is answered with what went wrong.
HTTP_SERVER = """
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
TOGETHER = 20
together = threading.Barrier(TOGETHER, timeout=HANG)   # in the server's OS threads: real waits
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = ("hello " + self.path).encode()
        if self.path.startswith("/together/"):
            try:
                together.wait()
            except threading.BrokenBarrierError:
                body = f"{self.path}: not all {TOGETHER} requests were in flight at once".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(ThreadingHTTPServer):
    request_queue_size = 128       # 20 connections at once (socketserver's default: 5)
server = Server(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
URL = f"http://127.0.0.1:{server.server_address[1]}/"
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("client", ["requests", "urllib3", "urllib.request"])
def test_http_clients_in_many_vthreads_run_concurrently(client):
    setup = """
        monkey.patch_all()
        """
    r = run_child(
        textwrap.dedent(setup)
        + HTTP_SERVER
        + f"CLIENT = {client!r}\n"
        + textwrap.dedent(
            """
        if CLIENT == "requests":
            import requests
            session = None
            def get(path):
                return requests.get(URL + path, timeout=2 * HANG).text
        elif CLIENT == "urllib3":
            import urllib3
            pool = urllib3.PoolManager(maxsize=20)
            def get(path):
                return pool.request("GET", URL + path, timeout=2 * HANG).data.decode()
        else:
            import urllib.request
            def get(path):
                with urllib.request.urlopen(URL + path, timeout=2 * HANG) as resp:
                    return resp.read().decode()
        first = get("0")   # outside: blocking
        res = in_vthreads(lambda i: get(f"together/{i}"), 20)
        server.shutdown()
        emit(res=res, first=first)
        """
        ),
        timeout=80,
    )
    assert r["first"] == "hello /0"
    # all 20 in the server's handlers at once: the clients' waits overlapped
    assert r["res"] == [f"hello /together/{i}" for i in range(20)]


@pytest.mark.timeout(60)
def test_patched_socket_outside_vthreads_behaves_as_unpatched():
    r = run_child(
        """
        def probe():
            out = {}
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0)); listener.listen()
            port = listener.getsockname()[1]
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            s, _ = listener.accept()
            c.settimeout(0.1)
            t0 = time.monotonic()
            try:
                c.recv(10)
            except Exception as exc:
                out["recv_timeout"] = [type(exc).__name__, str(exc), time.monotonic() - t0 >= 0.09]
            s.sendall(b"abc"); out["recv"] = c.recv(10).decode()
            c.setblocking(False)
            try:
                c.recv(10)
            except Exception as exc:
                out["nonblocking"] = type(exc).__name__
            out["timeout_attr"] = [c.gettimeout(), c.getblocking()]
            a, b = socket.socketpair()
            a.sendall(b"x" * 100); out["pair"] = len(b.recv(1000))
            f = s.makefile("rwb"); c.setblocking(True); c.sendall(b"line\\n")
            out["makefile"] = f.readline().decode()
            for x in (a, b, c, s, f, listener):
                x.close()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5)
            except Exception as exc:
                out["refused"] = type(exc).__name__
            out["addrinfo"] = [list(x[4]) for x in socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)]
            out["localhost"] = bool(socket.getaddrinfo("localhost", 80))
            try:
                socket.getaddrinfo("127.0.0.1", "no-such-service-xyz")
            except Exception as exc:
                out["bad_service"] = type(exc).__name__
            return out
        unpatched = probe()
        original_class = socket.socket
        monkey.patch_socket()
        patched = probe()
        in_vthread = in_vthreads(lambda i: probe(), 2)
        emit(unpatched=unpatched, patched=patched, in_vthread=in_vthread,
             green=socket.socket.__module__, sub=issubclass(socket.socket, original_class),
             pair_type=type(socket.socketpair()[0]).__module__)
        """
    )
    assert r["patched"] == r["unpatched"], r
    for out in r["in_vthread"]:
        assert out == r["unpatched"]
    assert r["unpatched"]["recv_timeout"] == ["TimeoutError", "timed out", True]
    assert r["unpatched"]["refused"] == "ConnectionRefusedError"
    assert r["green"] == "greenhub.socket" and r["sub"] and r["pair_type"] == "greenhub.socket"


@pytest.mark.timeout(60)
def test_socket_waits_in_vthreads_overlap_and_lookups_do_not_hold_the_loop():
    r = run_child(
        """
        monkey.patch_socket(); monkey.patch_time()
        listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(100)
        port = listener.getsockname()[1]
        listener.settimeout(HANG)
        in_recv, looking_up = Overlap(), Overlap()
        gave_up = []   # a wait held the loop: one HANG is enough to say so
        def server(_):
            conns = []
            for _ in range(10):
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    gave_up.append("no client came: accept() held the loop")
                    return -1
                conns.append(conn)
            # A client waits in recv() right after sending: once every message is here,
            # all ten clients wait together (with a blocking recv the first one would
            # have stopped the loop, and this server, until its timeout).
            msgs = [conn.recv(100) for conn in conns]
            waiting = in_recv.now
            for conn, msg in zip(conns, msgs):
                conn.sendall(msg.upper()); conn.close()
            return waiting
        def client(i):
            if gave_up:
                return gave_up[0]
            with socket.create_connection(("127.0.0.1", port), timeout=HANG) as c:
                c.sendall(b"v%d" % i)
                with in_recv:
                    try:
                        return c.recv(100).decode()
                    except TimeoutError:
                        gave_up.append("the server never answered: recv() held the loop")
                        return gave_up[0]
        # The resolver's own work on "localhost" may be too quick for five lookups to be
        # seen in progress together (an /etc/hosts hit): each one, in the executor's
        # thread, waits until all five are there - which they only can be if none held
        # the loop (a lookup that did would break the barrier after HANG).
        import _socket, threading
        real_getaddrinfo, together = _socket.getaddrinfo, threading.Barrier(5, timeout=HANG)
        def slow_getaddrinfo(host, *args):
            if host == "localhost":
                together.wait()
            return real_getaddrinfo(host, *args)
        _socket.getaddrinfo = slow_getaddrinfo
        def lookup(i):
            with looking_up:
                return len(socket.getaddrinfo("localhost", 80)) > 0
        async def main():
            srv = greenhub.spawn(server, 0)
            res = await asyncio.gather(*(greenhub.spawn(client, i) for i in range(10)))
            waiting = await srv
            looked = await asyncio.gather(*(greenhub.spawn(lookup, i) for i in range(5)))
            return res, waiting, looked
        res, waiting, looked = greenhub.run(main())
        emit(res=res, waiting=waiting, looked=looked, lookups_overlap=looking_up.peak)
        """
    )
    assert r["res"] == [f"V{i}" for i in range(10)]
    assert r["waiting"] == 10, r  # the ten clients were in recv() together
    assert r["looked"] == [True] * 5
    # The five lookups were in progress together: each let the loop go on meanwhile
    # (a lookup that held the loop would end before the next began: 1).
    assert r["lookups_overlap"] == 5, r


@pytest.mark.timeout(90)
def test_https_with_requests_in_many_vthreads_under_patch_all():
    r = run_child(
        (
            """
        import ssl, warnings
        warnings.simplefilter("error", monkey.MonkeyPatchWarning)   # all of it is patched
        monkey.patch_all()
        import requests, trustme
        """,
            HTTP_SERVER,
            """
        ca = trustme.CA()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
        URL = URL.replace("http:", "https:")
        with ca.cert_pem.tempfile() as cafile:
            def get(path):
                return requests.get(URL + path, timeout=2 * HANG, verify=cafile).text
            first = get("0")
            res = in_vthreads(lambda i: get(f"together/{i}"), 20)
        emit(first=first, res=res)
        """,
        ),
        timeout=80,
    )
    assert r["first"] == "hello /0"
    # all 20 in the server's handlers at once: the TLS clients' waits overlapped
    assert r["res"] == [f"hello /together/{i}" for i in range(20)]


@pytest.mark.timeout(60)
def test_the_porting_guide_example_runs():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "gevent_port.py")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=support.hang_timeout(50),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("100 answers, e.g. ['HELLO 0', 'HELLO 1', 'HELLO 10']")
    assert "Warning" not in proc.stderr, proc.stderr
