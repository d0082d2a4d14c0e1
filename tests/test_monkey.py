"""greenhub.monkey: cooperative inside virtual threads, the original everywhere else.

Patching is process-global, so every test runs its program in a fresh interpreter
(``run_child``) and checks what that program prints; the rest of the suite never sees
a patched module.  Timing assertions compare against the serial time with wide
margins (the machine is small and shared): "N virtual threads that each wait T finish
in well under N*T", never "in exactly T".
"""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shared by the child programs: run sync functions as virtual threads and time them.
PRELUDE = """
import asyncio, json, os, select, selectors, socket, subprocess, sys, threading, time
import greenhub
from greenhub import monkey

def in_vthreads(fn, n, *args):
    async def main():
        t0 = time.monotonic()
        results = await asyncio.gather(*(greenhub.spawn(fn, i, *args) for i in range(n)))
        return results, time.monotonic() - t0
    return greenhub.run(main())

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
    interpreter; return what it passed to emit()."""
    import json

    if isinstance(body, tuple):
        body = "".join(textwrap.dedent(piece) for piece in body)

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
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
        # 50 virtual threads sleeping 0.2 s each: about 0.2 s, not 10 s
        res, elapsed = in_vthreads(lambda i: time.sleep(0.2) or i, 50)
        # outside any virtual thread: a real sleep
        t0 = time.monotonic(); time.sleep(0.1); outside = time.monotonic() - t0

        # in a loop callback (not a task): blocks the loop, as unpatched
        async def callback_blocks():
            loop = asyncio.get_running_loop()
            stamps = []
            async def ticker():
                for _ in range(6):
                    stamps.append(time.monotonic()); await asyncio.sleep(0.02)
            t = asyncio.ensure_future(ticker())
            await asyncio.sleep(0.03)
            loop.call_soon(time.sleep, 0.3)
            await t
            return max(b - a for a, b in zip(stamps, stamps[1:]))
        gap_callback = greenhub.run(callback_blocks())

        # on a stock asyncio loop, inside tasks: blocks, as unpatched
        async def two_tasks():
            t0 = time.monotonic()
            async def blocker(): time.sleep(0.2)
            await asyncio.gather(blocker(), blocker())
            return time.monotonic() - t0
        stock = asyncio.run(two_tasks())

        bad = ["x", -1, float("nan"), 1e300, None, 1.5j]
        in_vthread = in_vthreads(lambda i: errors(time.sleep, bad), 1)[0][0]
        emit(elapsed=elapsed, res=res, outside=outside, gap_callback=gap_callback,
             stock=stock, errors_vthread=in_vthread, errors_patched=errors(time.sleep, bad),
             errors_original=errors(original, bad), zero=in_vthreads(lambda i: time.sleep(0), 3)[0])
        """
    )
    assert r["res"] == list(range(50))
    assert r["elapsed"] < 2.5, r  # serial: 10 s
    assert r["outside"] >= 0.1
    assert r["gap_callback"] >= 0.29, r  # the callback's sleep held the loop
    assert r["stock"] >= 0.39, r  # two blocking sleeps, one after the other
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
            return in_vthreads(lambda i: time.sleep(0.2), 20)[1]
        out = []
        th = threading.Thread(target=lambda: out.append(loop_thread())); th.start(); th.join()
        emit(in_thread=in_thread, other_loop=out[0], is_orig=monkey.get_original("time.sleep") is real)
        """
    )
    assert r["in_thread"] >= 0.05
    assert r["other_loop"] < 2.0, r  # serial: 4 s
    assert r["is_orig"]


@pytest.mark.timeout(60)
def test_select_poll_epoll_selectors_wait_cooperatively_with_the_originals_answers():
    r = run_child(
        """
        monkey.patch_select(); monkey.patch_selectors()
        def worker(i):
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
        res, elapsed = in_vthreads(worker, 10)
        # The originals say the same outside virtual threads.
        emit(res=res, elapsed=elapsed, outside=worker(0))
        """
    )
    assert r["elapsed"] < 4.0, r  # serial: 10 x 1.2 s of timeouts
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
            lambda: select.poll().poll(2**40),
            lambda: select.poll().register("x"),
            lambda: select.poll().unregister(12345),
            lambda: select.epoll().poll(0, 0),
            lambda: select.epoll().poll("x"),
        ]
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
        emit(vthread=in_vthreads(lambda i: run_all(), 1)[0][0], outside=run_all(), orig=orig_cases)
        """
    )
    assert r["vthread"] == r["outside"], r
    assert r["outside"][:6] == r["orig"], r
    assert all(e != "ok" for e in r["outside"]), r


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
        def worker(i):
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
        res, elapsed = in_vthreads(worker, 10)
        emit(res=res, elapsed=elapsed, outside=worker(0))
        """
    )
    assert r["elapsed"] < 5.0, r  # serial: 10 x ~1 s
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
            assert ev.wait(5)
            with cond:
                cond.notify_all()
            q.put(i)
        def os_thread():
            time.sleep(0.3)   # a real sleep: not in a virtual thread
            ev.set()
        def coordinator(_):
            th = threading.Thread(target=os_thread)
            th.start(); th.join()    # join waits cooperatively
            items = sorted(q.get(timeout=5) for _ in range(9))
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                items.append("empty")
            return items
        async def main():
            t0 = time.monotonic()
            tasks = [greenhub.spawn(worker, i) for i in range(9)]
            items = await greenhub.spawn(coordinator, 0)
            await asyncio.gather(*tasks)
            return items, time.monotonic() - t0
        items, elapsed = greenhub.run(main())
        try:
            queue.Queue(maxsize=1).put(1) or queue.Queue(maxsize=1).put_nowait(1)
            full = queue.Queue(maxsize=1); full.put(1); full.put(2, timeout=0.01)
        except queue.Full:
            full = "full"
        emit(items=items, elapsed=elapsed, state=state, full=full,
             types=[type(x).__module__ for x in (q, lock, rlock, ev, cond, sem)])
        """
    )
    assert r["items"] == list(range(9)) + ["empty"]
    assert r["state"]["peak"] == 3 and not r["state"]["overlap"]
    assert r["full"] == "full"
    assert r["elapsed"] < 3.0, r
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
        res, _ = in_vthreads(worker, 3)
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
                t0 = time.monotonic()
                # unpatched at first: these block; after the patch they cooperate
                while not monkey.is_patched("time"):
                    await asyncio.sleep(0.01)
                await asyncio.gather(*(greenhub.spawn(time.sleep, 0.2) for _ in range(20)))
                return time.monotonic() - t0
            out.append(greenhub.run(main()))
        th = threading.Thread(target=loop_thread); th.start()
        started.wait(5)
        time.sleep(0.05)
        monkey.patch_all(socket=False, ssl=False)
        th.join(10)
        emit(elapsed=out[0])
        """
    )
    assert r["elapsed"] < 2.0, r  # 20 blocking sleeps would take 4 s


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
        log_lock = threading.Lock()
        log = []
        done = threading.Event()
        def worker(wid):
            while True:
                job = jobs.get()
                if job is None:
                    jobs.task_done(); return wid
                with pool:
                    time.sleep(0.05)                       # "I/O"
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
            t0 = time.monotonic()
            workers = [greenhub.spawn(worker, i) for i in range(8)]
            msg = await greenhub.spawn(producer, 0)
            await asyncio.gather(*workers)
            total = 0
            while not results.empty():
                total += results.get_nowait()
            return msg, total, sorted(log), done.is_set(), time.monotonic() - t0
        msg, total, log_sorted, is_done, elapsed = greenhub.run(main())
        emit(msg=msg, total=total, log=log_sorted, done=is_done, elapsed=elapsed)
        """
    )
    assert r["msg"] == "all done" and r["done"]
    assert r["log"] == list(range(40))
    assert r["total"] == sum(j * j for j in range(40))
    assert r["elapsed"] < 2.0, r  # 40 jobs x 0.05 s, 4 at a time: ~0.5 s; serial 2 s


HTTP_SERVER = """
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        time.sleep(0.2)            # in the server's OS threads: a real sleep
        body = ("hello " + self.path).encode()
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
            def get(i):
                return requests.get(URL + str(i), timeout=10).text
        elif CLIENT == "urllib3":
            import urllib3
            pool = urllib3.PoolManager(maxsize=20)
            def get(i):
                return pool.request("GET", URL + str(i), timeout=10).data.decode()
        else:
            import urllib.request
            def get(i):
                with urllib.request.urlopen(URL + str(i), timeout=10) as resp:
                    return resp.read().decode()
        t0 = time.monotonic(); first = get(0); one = time.monotonic() - t0   # outside: blocking
        res, elapsed = in_vthreads(get, 20)
        server.shutdown()
        emit(res=res, elapsed=elapsed, one=one, first=first)
        """
        ),
        timeout=80,
    )
    assert r["first"] == "hello /0"
    assert r["res"] == [f"hello /{i}" for i in range(20)]
    serial = 20 * 0.2
    assert r["elapsed"] < 0.5 * serial, r


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
        in_vthread = in_vthreads(lambda i: probe(), 2)[0]
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
        def server(_):
            conns = []
            for _ in range(10):
                conn, _ = listener.accept()
                conns.append(conn)
            time.sleep(0.3)             # every client waits in recv meanwhile
            for conn in conns:
                conn.sendall(conn.recv(100).upper()); conn.close()
        def client(i):
            with socket.create_connection(("127.0.0.1", port)) as c:
                c.sendall(b"v%d" % i)
                return c.recv(100).decode()
        def lookup(i):
            return len(socket.getaddrinfo("localhost", 80)) > 0
        async def main():
            t0 = time.monotonic()
            srv = greenhub.spawn(server, 0)
            res = await asyncio.gather(*(greenhub.spawn(client, i) for i in range(10)))
            await srv
            looked = await asyncio.gather(*(greenhub.spawn(lookup, i) for i in range(5)))
            return res, looked, time.monotonic() - t0
        res, looked, elapsed = greenhub.run(main())
        emit(res=res, looked=looked, elapsed=elapsed)
        """
    )
    assert r["res"] == [f"V{i}" for i in range(10)]
    assert r["looked"] == [True] * 5
    assert r["elapsed"] < 3.0, r


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
            def get(i):
                return requests.get(URL + str(i), timeout=10, verify=cafile).text
            first = get(0)
            res, elapsed = in_vthreads(get, 20)
        emit(first=first, res=res, elapsed=elapsed)
        """,
        ),
        timeout=80,
    )
    assert r["first"] == "hello /0"
    assert r["res"] == [f"hello /{i}" for i in range(20)]
    assert r["elapsed"] < 0.5 * 20 * 0.2, r


@pytest.mark.timeout(60)
def test_the_porting_guide_example_runs():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "gevent_port.py")],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=50,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("100 answers, e.g. ['HELLO 0', 'HELLO 1', 'HELLO 10']")
    assert "Warning" not in proc.stderr, proc.stderr
