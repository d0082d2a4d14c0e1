#!/usr/bin/env python3
"""Virtual-thread benchmarks: what it costs to wait on async code from sync code.

Part 1 (bridge): ns per call of a *bridge* - sync code waiting on a coroutine - against
a native ``await`` of the same coroutine in the same process, on the same loop:

    greenhub.await_(f())              sync function called by a greenhub task
    greenlet_spawn + await_only       SQLAlchemy's bridge (stock loop, uvloop, greenhub)
    greenback.await_                  after greenback.ensure_portal()
    asgiref async_to_sync             from a sync_to_async thread (Django's bridge)
    greenhub.async_to_sync            the same adapter from a virtual thread (no thread)
    sync_to_async(a2s) round trip     `await sync_to_async(g)()` where the sync g calls
                                      async_to_sync(f)(): greenhub's on greenhub vs asgiref's
                                      on the stock loop
    run_coroutine_threadsafe          .result() from a worker thread

with two coroutines: ``ret`` (``async def f(): return 1``, never suspends) and ``sleep0``
(``await asyncio.sleep(0); return 1``, one task step).  The "extra" column is
bridge - native: the price of the bridge over ``await``.

Part 2 (tasks): a task that never calls await_ (sleep(0) steps, task creation) on
greenhub's create_task (one greenlet per task) versus an ``asyncio.Task(coro, loop=loop)``
made directly on the same greenhub loop (no greenlet), uvloop and the stock loop.

Every contender runs in its own fresh subprocess (default: 3 rounds of fresh processes).
The parent drives the workers in lock step - one pass of one worker at a time, rotating
the order - so background load that comes and goes falls on every contender alike.
Inside a worker the native and bridged runs alternate, so each "extra" is a paired
difference measured under the same conditions.

    python3 benchmarks/bench_vthread.py                 # full run, ~2 min
    python3 benchmarks/bench_vthread.py --quick         # smoke run, ~20 s
    python3 benchmarks/bench_vthread.py --json benchmarks/results/vthread.json
    python3 benchmarks/bench_vthread.py -k greenhub     # contenders whose id contains this
    python3 benchmarks/bench_vthread.py --instructions  # callgrind counts, ~3-10 min

Numbers are ns per call (lower is better) of process CPU time - steadier than wall time
on a busy machine - except for the bridges that hop to another thread, which are timed
by the wall clock (--metric picks); "median (best)" is over all processes x passes.
See benchmarks/README.md for how to read the tables.
"""

import argparse
import gc
import os
import sys
import time

from _common import (
    REPO,
    BackgroundLoad,
    WorkerFailed,
    WorkerProcess,
    commands,
    died_message,
    emit,
    filter_ids,
    instr_mark,
    libs_line,
    log,
    loop_factory,
    machine_info,
    python_build_flags,
    require_valgrind,
    run_callgrind,
    run_parallel,
    summarize,
    use_greenhub_path,
    write_json,
)
from _common import fmt_ns as _fmt_ns

perf_counter_ns = time.perf_counter_ns
process_time_ns = time.process_time_ns

# --------------------------------------------------------------------------
# Contenders: id "method@loop", section (bridge or tasks), loop kind, label, and the
# bridge's calls per timed run for each op, chosen so a run takes roughly 10-50 ms on a
# slow machine; the native run of the same item uses NATIVE_N.
# --------------------------------------------------------------------------

OPS = ("ret", "sleep0")
NATIVE_N = {"ret": 50000, "sleep0": 5000}
FAST = {"ret": 50000, "sleep0": 5000}
MEDIUM = {"ret": 5000, "sleep0": 2000}
SLOW = {"ret": 400, "sleep0": 400}


class Contender:
    def __init__(self, cid, section, loop, label, sizes, libs=()):
        self.id, self.section, self.loop, self.label = cid, section, loop, label
        self.sizes, self.libs = sizes, libs


CONTENDERS = [
    Contender(
        "greenhub.await_@greenhub", "bridge", "greenhub", "greenhub.await_(f()) in a sync fn", FAST
    ),
    Contender(
        "greenhub.await_deep20@greenhub",
        "bridge",
        "greenhub",
        "  same, 20 C-level frames deeper",
        FAST,
    ),
    Contender(
        "sqla.await_only@greenhub",
        "bridge",
        "greenhub",
        "SQLAlchemy await_only in greenlet_spawn",
        FAST,
        ("sqlalchemy",),
    ),
    Contender(
        "sqla.await_only@uvloop",
        "bridge",
        "uvloop",
        "SQLAlchemy await_only in greenlet_spawn",
        FAST,
        ("sqlalchemy",),
    ),
    Contender(
        "sqla.await_only@asyncio",
        "bridge",
        "asyncio",
        "SQLAlchemy await_only in greenlet_spawn",
        FAST,
        ("sqlalchemy",),
    ),
    Contender(
        "sqla.spawn_each@greenhub",
        "bridge",
        "greenhub",
        "SQLAlchemy greenlet_spawn+await_only per call",
        MEDIUM,
        ("sqlalchemy",),
    ),
    Contender(
        "sqla.spawn_each@uvloop",
        "bridge",
        "uvloop",
        "SQLAlchemy greenlet_spawn+await_only per call",
        MEDIUM,
        ("sqlalchemy",),
    ),
    Contender(
        "sqla.spawn_each@asyncio",
        "bridge",
        "asyncio",
        "SQLAlchemy greenlet_spawn+await_only per call",
        MEDIUM,
        ("sqlalchemy",),
    ),
    Contender(
        "greenback@asyncio",
        "bridge",
        "asyncio",
        "greenback.await_ (ensure_portal)",
        MEDIUM,
        ("greenback",),
    ),
    Contender(
        "greenback@uvloop",
        "bridge",
        "uvloop",
        "greenback.await_ (ensure_portal)",
        MEDIUM,
        ("greenback",),
    ),
    Contender(
        "greenback@greenhub",
        "bridge",
        "greenhub",
        "greenback.await_ (ensure_portal)",
        MEDIUM,
        ("greenback",),
    ),
    Contender(
        "asgiref.async_to_sync@asyncio",
        "bridge",
        "asyncio",
        "asgiref async_to_sync(f)() in s2a thread",
        SLOW,
        ("asgiref",),
    ),
    Contender(
        "asgiref.roundtrip@asyncio",
        "bridge",
        "asyncio",
        "asgiref sync_to_async(a2s) per call",
        SLOW,
        ("asgiref",),
    ),
    Contender(
        "greenhub.async_to_sync@greenhub",
        "bridge",
        "greenhub",
        "greenhub async_to_sync(f)() in a vthread",
        FAST,
    ),
    Contender(
        "greenhub.roundtrip@greenhub",
        "bridge",
        "greenhub",
        "greenhub sync_to_async(a2s) per call",
        FAST,
    ),
    Contender(
        "run_coroutine_threadsafe@asyncio",
        "bridge",
        "asyncio",
        "run_coroutine_threadsafe().result()",
        SLOW,
    ),
    Contender(
        "run_coroutine_threadsafe@uvloop",
        "bridge",
        "uvloop",
        "run_coroutine_threadsafe().result()",
        SLOW,
    ),
    Contender(
        "run_coroutine_threadsafe@greenhub",
        "bridge",
        "greenhub",
        "run_coroutine_threadsafe().result()",
        SLOW,
    ),
    Contender("tasks@greenhub", "tasks", "greenhub", "greenhub", None),
    Contender("tasks@uvloop", "tasks", "uvloop", "uvloop", None),
    Contender("tasks@asyncio", "tasks", "asyncio", "asyncio", None),
]
BY_ID = {c.id: c for c in CONTENDERS}

TASK_ITEMS = {
    # name: (default n, description)
    "sleep0_one_task": (10000, "one task, N x await asyncio.sleep(0) (step + loop iteration)"),
    "sleep0_100_tasks": (20000, "100 tasks, N/100 x await asyncio.sleep(0) each (step cost)"),
    "create_task": (5000, "N x create a task of `async def noop(): pass`, run it to completion"),
}
TASK_VARIANTS = {
    "greenhub": ("create_task", "asyncio.Task"),
    "uvloop": ("create_task",),
    "asyncio": ("create_task",),
}


# --------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------


def _sync_waiter(wait):
    """body(fn, n): sync code timing n x wait(fn()); returns (wall_ns, cpu_ns)."""

    def body(fn, n):
        rng = range(n)
        c0 = process_time_ns()
        t0 = perf_counter_ns()
        for _ in rng:
            wait(fn())
        t1 = perf_counter_ns()
        return t1 - t0, process_time_ns() - c0

    return body


def build_bridge(c):
    """Return (native(fn, n), bridge(fn, n)) coroutine functions; each returns
    (wall_ns, cpu_ns) of its timed section.  The timed section is the loop of
    calls and nothing else: set-up (greenlet_spawn, ensure_portal, starting the
    executor thread) happens before the clock starts."""
    import asyncio

    async def native(fn, n):
        rng = range(n)
        c0 = process_time_ns()
        t0 = perf_counter_ns()
        for _ in rng:
            await fn()
        t1 = perf_counter_ns()
        return t1 - t0, process_time_ns() - c0

    method = c.id.split("@")[0]

    if method in ("greenhub.await_", "greenhub.await_deep20"):
        import greenhub

        body = _sync_waiter(greenhub.await_)

        if method == "greenhub.await_":

            async def bridge(fn, n):
                return body(fn, n)
        else:

            def deep(k, fn, n):
                # next(map(...)) puts C frames (map_next, vectorcall) between the
                # Python frames, so the greenlet's C stack really grows.
                if k == 0:
                    return body(fn, n)
                return next(map(deep, (k - 1,), (fn,), (n,)))

            async def bridge(fn, n):
                return deep(20, fn, n)

    elif method in ("sqla.await_only", "sqla.spawn_each"):
        from sqlalchemy import util as sa_util

        greenlet_spawn = sa_util.greenlet_spawn
        await_only = getattr(sa_util, "await_only", None) or sa_util.await_
        body = _sync_waiter(await_only)

        def one(fn):
            return await_only(fn())

        if method == "sqla.await_only":

            async def bridge(fn, n):
                return await greenlet_spawn(body, fn, n)
        else:

            async def bridge(fn, n):
                rng = range(n)
                c0 = process_time_ns()
                t0 = perf_counter_ns()
                for _ in rng:
                    await greenlet_spawn(one, fn)
                t1 = perf_counter_ns()
                return t1 - t0, process_time_ns() - c0

    elif method == "greenback":
        import greenback

        body = _sync_waiter(greenback.await_)

        async def bridge(fn, n):
            await greenback.ensure_portal()
            return body(fn, n)

    elif method == "asgiref.async_to_sync":
        from asgiref.sync import async_to_sync, sync_to_async

        def body(fn, n):
            rng = range(n)
            c0 = process_time_ns()
            t0 = perf_counter_ns()
            for _ in rng:
                async_to_sync(fn)()
            t1 = perf_counter_ns()
            return t1 - t0, process_time_ns() - c0

        async def bridge(fn, n):
            return await sync_to_async(body)(fn, n)

    elif method == "asgiref.roundtrip":
        from asgiref.sync import async_to_sync, sync_to_async

        def one(fn):
            return async_to_sync(fn)()

        async def bridge(fn, n):
            s2a = sync_to_async(one)
            await s2a(fn)  # the executor thread exists before the clock starts
            rng = range(n)
            c0 = process_time_ns()
            t0 = perf_counter_ns()
            for _ in rng:
                await s2a(fn)
            t1 = perf_counter_ns()
            return t1 - t0, process_time_ns() - c0

    elif method == "greenhub.async_to_sync":
        import greenhub

        def body(fn, n):
            a2s = greenhub.async_to_sync
            rng = range(n)
            c0 = process_time_ns()
            t0 = perf_counter_ns()
            for _ in rng:
                a2s(fn)()  # made per call, as in the asgiref row
            t1 = perf_counter_ns()
            return t1 - t0, process_time_ns() - c0

        async def bridge(fn, n):
            return await greenhub.sync_to_async(body)(fn, n)

    elif method == "greenhub.roundtrip":
        import greenhub

        def one(fn):
            return greenhub.async_to_sync(fn)()

        async def bridge(fn, n):
            s2a = greenhub.sync_to_async(one)
            rng = range(n)
            c0 = process_time_ns()
            t0 = perf_counter_ns()
            for _ in rng:
                await s2a(fn)
            t1 = perf_counter_ns()
            return t1 - t0, process_time_ns() - c0

    elif method == "run_coroutine_threadsafe":
        rcts = asyncio.run_coroutine_threadsafe

        def body(loop, fn, n):
            rng = range(n)
            c0 = process_time_ns()
            t0 = perf_counter_ns()
            for _ in rng:
                rcts(fn(), loop).result()
            t1 = perf_counter_ns()
            return t1 - t0, process_time_ns() - c0

        async def bridge(fn, n):
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, body, loop, fn, n)
    else:
        raise ValueError(method)
    return native, bridge


def bridge_worker_items(c, quick, div=None):
    import asyncio

    async def ret():
        return 1

    async def sleep0():
        await asyncio.sleep(0)
        return 1

    fns = {"ret": ret, "sleep0": sleep0}
    native, bridge = build_bridge(c)
    div = div or (10 if quick else 1)
    items = []
    for op in OPS:
        nn = max(NATIVE_N[op] // div, 10)
        nb = max(c.sizes[op] // div, 10)
        variants = {"native": (native, nn), "bridge": (bridge, nb)}
        items.append((op, fns[op], variants))
    return items


def task_worker_items(c, quick, div=None):
    import asyncio

    sleep = asyncio.sleep

    async def noop():
        pass

    def bench_sleep0_one(loop, mk, n):
        async def body():
            rng = range(n)
            c0 = process_time_ns()
            t0 = perf_counter_ns()
            for _ in rng:
                await sleep(0)
            t1 = perf_counter_ns()
            return t1 - t0, process_time_ns() - c0

        return loop.run_until_complete(mk(body()))

    def bench_sleep0_100(loop, mk, n):
        per = n // 100

        async def w():
            for _ in range(per):
                await sleep(0)

        async def driver():
            tasks = [mk(w()) for _ in range(100)]
            c0 = process_time_ns()
            t0 = perf_counter_ns()
            await asyncio.wait(tasks)
            t1 = perf_counter_ns()
            return t1 - t0, process_time_ns() - c0

        return loop.run_until_complete(loop.create_task(driver()))

    def bench_create_task(loop, mk, n):
        async def driver():
            rng = range(n)
            c0 = process_time_ns()
            t0 = perf_counter_ns()
            t = None
            for _ in rng:
                t = mk(noop())  # earlier tasks are freed as they finish
            await t  # FIFO: the last one created finishes last
            t1 = perf_counter_ns()
            return t1 - t0, process_time_ns() - c0

        return loop.run_until_complete(loop.create_task(driver()))

    fns = {
        "sleep0_one_task": bench_sleep0_one,
        "sleep0_100_tasks": bench_sleep0_100,
        "create_task": bench_create_task,
    }
    div = div or (10 if quick else 1)
    items = []
    for name, (n, _desc) in TASK_ITEMS.items():
        n = max(n // div, 100)
        variants = {}
        for v in TASK_VARIANTS[c.loop]:
            variants[v] = (v, n)
        items.append((name, fns[name], variants))
    return items


def lib_versions(names):
    out = {}
    for name in names:
        try:
            mod = sys.modules.get(name) or __import__(name)
            out[name] = getattr(mod, "__version__", "?")
        except Exception as exc:  # pragma: no cover
            out[name] = "not importable: %s" % exc
    return out


def worker_main(cid, quick, gh_path, instr=False):
    use_greenhub_path(gh_path)
    c = BY_ID[cid]
    send = emit

    try:
        import asyncio

        loop = loop_factory(c.loop)()
        asyncio.set_event_loop(loop)

        def on_error(lp, ctx):
            lp.default_exception_handler(ctx)
            lp.stop()

        loop.set_exception_handler(on_error)
        # Under callgrind (~50x slower) 1/20 of the default sizes: fixed costs
        # cancel out of the count, so small sizes lose no precision.
        div = 20 if instr else None
        if c.section == "bridge":
            items = bridge_worker_items(c, quick, div)
        else:
            items = task_worker_items(c, quick, div)
        libs = ["greenlet"] + [c.loop] * (c.loop != "asyncio") + list(c.libs)
        versions = lib_versions(libs)
        if c.loop == "greenhub":
            import greenhub

            versions["greenhub_file"] = os.path.dirname(greenhub.__file__)
        dbg = loop.get_debug()
    except Exception as exc:
        send({"unavailable": "%s: %s" % (type(exc).__name__, exc)})
        return 0
    send(
        {
            "ready": True,
            "versions": versions,
            "debug": dbg,
            "items": [[name, list(vs)] for name, _fn, vs in items],
        }
    )

    def run_one(name, fn, vname, vspec, n=None):
        if c.section == "bridge":
            coro_fn, n0 = vspec
            n = n or n0
            task = loop.create_task(coro_fn(fn, n))
            wall, cpu = loop.run_until_complete(task)
        else:
            mode, n0 = vspec
            n = n or n0
            if mode == "asyncio.Task":
                mk = lambda coro: asyncio.Task(coro, loop=loop)  # noqa: E731
            else:
                mk = loop.create_task
            wall, cpu = fn(loop, mk, n)
        return [wall, cpu, n]

    if instr:
        # Under callgrind: every os.getpgrp() dumps the instructions counted since
        # the previous one.  Per (item, variant): run(n) to warm up, then
        # mark; run(n); mark; run(2n); mark - (part 2n - part n) / n is the count
        # per call with every fixed cost (task creation, run_until_complete,
        # greenlet_spawn set-up, ...) cancelled out.
        marks = 0
        for name, fn, variants in items:
            for vname, vspec in variants.items():
                n = vspec[1]
                try:
                    run_one(name, fn, vname, vspec, n)
                    gc.collect()
                    gc.disable()
                    instr_mark()
                    run_one(name, fn, vname, vspec, n)
                    instr_mark()
                    run_one(name, fn, vname, vspec, 2 * n)
                    instr_mark()
                    marks += 3
                    send({"instr": [name, vname], "part_n": marks - 1, "part_2n": marks, "n": n})
                except BaseException as exc:
                    send(
                        {
                            "instr_error": [name, vname],
                            "error": "%s: %s" % (type(exc).__name__, exc),
                        }
                    )
                    break
                finally:
                    gc.enable()
        send({"end": True, "marks": marks})
        os._exit(0)

    for cmd in commands():  # {"cmd": "pass", "rep": N}: one timed pass
        rep = cmd["rep"]
        res = {}
        for name, fn, variants in items:
            order = list(variants.items())
            if rep % 2:
                order.reverse()
            res[name] = {}
            for vname, vspec in order:
                gc.collect()
                gc.disable()
                try:
                    res[name][vname] = run_one(name, fn, vname, vspec)
                except BaseException as exc:
                    res[name][vname] = {"error": "%s: %s" % (type(exc).__name__, exc)}
                finally:
                    gc.enable()
        send({"pass": rep, "results": res})
    try:
        loop.close()
    except Exception:
        pass
    return 0


# --------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------


def start_worker(cid, args):
    argv = [os.path.abspath(__file__), "--worker", cid, "--greenhub-path", args.greenhub_path]
    if args.quick:
        argv.append("--quick")
    return WorkerProcess(argv, args.timeout)


def in_section(cids, section):
    return [c for c in cids if BY_ID[c].section == section]


def fmt_ns(v):
    return _fmt_ns(v, small="%.0f")


THREADED = ("asgiref.", "run_coroutine_threadsafe")
# greenhub's adapters run in one thread but are compared with asgiref's, which are timed
# by the wall clock: time them the same way so the ratio means something.
WALL_TIMED = THREADED + ("greenhub.async_to_sync", "greenhub.roundtrip")


def metric_for(cid, metric):
    """'cpu' (process CPU time) or 'wall' for this contender.  auto: CPU time for
    contenders that run in one thread - it does not count time the process spent
    descheduled, so it is far steadier on a busy machine - and wall time for the
    thread-hopping bridges, whose cost is mostly waiting for the other thread."""
    if metric == "auto":
        return "wall" if cid.startswith(WALL_TIMED) else "cpu"
    return metric


class Results:
    """passes[cid][round] = list of {item: {variant: [wall_ns, cpu_ns, n] | {error}}},
    one dict per timed pass.  Variants of one item in one pass ran back to back, so
    their difference or ratio is a paired measurement."""

    def __init__(self, rounds, metric):
        self.passes = {}
        self.rounds = rounds
        self.metric = metric

    def add(self, cid, rnd, res):
        self.passes.setdefault(cid, [[] for _ in range(self.rounds)])[rnd].append(res)

    def _val(self, cid, r):
        if not isinstance(r, list):
            return None
        wall, cpu, n = r
        return (cpu if metric_for(cid, self.metric) == "cpu" else wall) / n

    def per_proc(self, cid, item, var):
        out = []
        for plist in self.passes.get(cid, []):
            vals = [self._val(cid, p.get(item, {}).get(var)) for p in plist]
            out.append([v for v in vals if v is not None])
        return out

    def paired(self, cid, item, va, vb, how):
        """per process: [how(a, b) for each pass where both ran]"""
        out = []
        for plist in self.passes.get(cid, []):
            vals = []
            for p in plist:
                a = self._val(cid, p.get(item, {}).get(va))
                b = self._val(cid, p.get(item, {}).get(vb))
                if a is not None and b is not None:
                    vals.append(how(a, b))
            out.append(vals)
        return out


def run_round(cids, args, rnd, results, status, versions):
    workers = {}
    for cid in cids:
        if status.get(cid, "").startswith("UNAVAILABLE"):
            continue
        workers[cid] = start_worker(cid, args)
    live = []
    for cid, w in workers.items():
        try:
            msg = w.read()
        except RuntimeError as exc:
            status[cid] = "FAILED: %s" % exc
            continue
        if "unavailable" in msg:
            status[cid] = "UNAVAILABLE: %s" % msg["unavailable"]
            w.close()
            continue
        versions.update(msg["versions"])
        if msg.get("debug"):
            status.setdefault("_debug", []).append(cid)
        live.append(cid)
    for rep in range(-args.warmup, args.repeats):
        k = (max(rep, 0) + rnd) % len(live) if live else 0
        for cid in live[k:] + live[:k]:  # rotate who goes first
            w = workers[cid]
            try:
                w.send(cmd="pass", rep=max(rep, 0))
                msg = w.read()
            except RuntimeError as exc:
                status[cid] = "FAILED: %s" % exc
                live.remove(cid)
                continue
            for item, vres in msg["results"].items():
                for vname, r in vres.items():
                    if isinstance(r, dict):
                        status[cid] = "FAILED: %s %s: %s" % (item, vname, r["error"])
            if rep >= 0:
                results.add(cid, rnd, msg["results"])
        if args.verbose:
            log("  round %d pass %d done" % (rnd + 1, rep))
    for w in workers.values():
        w.close()


def run_instructions(cid, args):
    """One contender under callgrind.  Returns (versions, {(item, variant): instr/call},
    status or None)."""
    argv = [os.path.abspath(__file__), "--worker", cid, "--quick", "--instr-worker"]
    argv += ["--greenhub-path", args.greenhub_path]
    try:
        msgs, dumps, rc, err = run_callgrind(argv, args.timeout * 4)
    except WorkerFailed:
        return {}, {}, "FAILED: callgrind worker timed out"
    if not msgs:
        return {}, {}, "FAILED: worker died under valgrind: " + err[-400:]
    if "unavailable" in msgs[0]:
        return {}, {}, "UNAVAILABLE: " + msgs[0]["unavailable"]
    versions = msgs[0].get("versions", {})
    res, st = {}, None
    end = [m for m in msgs if "end" in m]
    if end and end[0]["marks"] != len(dumps):
        return (
            versions,
            {},
            "FAILED: callgrind dumps %d != marks %d" % (len(dumps), end[0]["marks"]),
        )
    for m in msgs:
        if "instr" in m:
            res[tuple(m["instr"])] = (dumps[m["part_2n"]] - dumps[m["part_n"]]) / m["n"]
        elif "instr_error" in m:
            st = "FAILED: %s %s: %s" % (m["instr_error"][0], m["instr_error"][1], m["error"])
    if not end and st is None:
        st = "FAILED: " + died_message(rc, err[-300:]) + " under valgrind"
    return versions, res, st


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="10x smaller sizes, 1 round x 3 passes (smoke run, ~20 s)",
    )
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument(
        "-p",
        "--processes",
        type=int,
        default=None,
        help="rounds of fresh processes (default 3, quick 1)",
    )
    ap.add_argument(
        "-r",
        "--repeats",
        type=int,
        default=None,
        help="timed passes per process (default 7, quick 3)",
    )
    ap.add_argument("--warmup", type=int, default=1, help="untimed passes first")
    ap.add_argument(
        "-k",
        "--filter",
        default="",
        help="comma-separated substrings; run contenders whose id contains one",
    )
    ap.add_argument("--list", action="store_true", help="list contenders and exit")
    ap.add_argument(
        "--metric",
        choices=("auto", "cpu", "wall"),
        default="auto",
        help="time to report: process CPU time or wall time; auto (default) = "
        "CPU time except for bridges that hop to another thread (wall)",
    )
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per call under valgrind's callgrind instead of "
        "timing (deterministic; small sizes; skips thread-hopping bridges; ~3-10 min)",
    )
    ap.add_argument("--timeout", type=float, default=300, help="seconds per worker pass")
    ap.add_argument(
        "--greenhub-path", default=REPO, help="where to import greenhub from (default: this repo)"
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--instr-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(args.worker, args.quick, args.greenhub_path, args.instr_worker)
    if args.list:
        for c in CONTENDERS:
            print("%-36s %-8s %s" % (c.id, c.section, c.label))
        return 0
    args.processes = args.processes or (1 if args.quick else 3)
    args.repeats = args.repeats or (3 if args.quick else 7)
    cids = filter_ids([c.id for c in CONTENDERS], args.filter)
    if args.instructions:
        return main_instructions(args, cids)

    minfo = vthread_machine_info()
    results = Results(args.processes, args.metric)
    status, versions = {}, {}
    load = BackgroundLoad()
    for rnd in range(args.processes):
        log("round %d/%d: %d workers" % (rnd + 1, args.processes, len(cids)))
        run_round(cids, args, rnd, results, status, versions)
    noise, elapsed = load.stop()
    if noise:
        noise["elapsed_s"] = elapsed
    minfo["noise"] = noise
    minfo["versions"] = versions

    table, summary = render(cids, results, status, minfo, args)
    print(table)
    if args.json:
        doc = {
            "machine": minfo,
            "mode": "time",
            "args": {k: v for k, v in vars(args).items() if k not in ("worker", "instr_worker")},
            "metric": {cid: metric_for(cid, args.metric) for cid in cids},
            "status": status,
            "summary": summary,
            "passes": results.passes,
            "table": table,
        }
        write_json(args.json, doc)
    return 0


def main_instructions(args, cids):
    require_valgrind()
    minfo = vthread_machine_info()
    skipped = [c for c in cids if c.startswith(THREADED)]
    cids = [c for c in cids if c not in skipped]
    log("counting instructions under callgrind for %d contenders (slow: ~3-10 min)" % len(cids))
    counts, status, versions = {}, {}, {}
    for cid, (v, res, st) in run_parallel(run_instructions, cids, args).items():
        versions.update(v)
        for (item, var), val in res.items():
            counts[(cid, item, var)] = val
        if st:
            status[cid] = st
    minfo["versions"] = versions
    table, summary = render_instructions(cids, counts, status, minfo, skipped)
    print(table)
    if args.json:
        write_json(
            args.json,
            {
                "machine": minfo,
                "mode": "instructions",
                "status": status,
                "skipped": skipped,
                "summary": summary,
                "table": table,
            },
        )
    return 0


def vthread_machine_info():
    return machine_info(loadavg_at_start=os.getloadavg(), python_build_flags=python_build_flags())


def header(minfo, args, L):
    m = minfo
    L.append("machine: %s, %s CPUs, %s" % (m["cpu_model"], m["cpu_count"], m["platform"]))
    L.append(
        "python:  %s (%s) %s"
        % (m["python"].split()[0], m["python_build_flags"], m["python_executable"])
    )
    libs = ("greenhub", "greenlet", "uvloop", "sqlalchemy", "greenback", "asgiref")
    L.append(libs_line(m["versions"], m["repo_git"], libs))


def fmt_x(r):
    return ("%.1f" % r) if abs(r) < 100 else "%.0f" % r


def render(cids, results, status, minfo, args):
    L, summary = [], []
    m = minfo
    L.append("greenhub virtual-thread benchmarks (bench_vthread.py)  %s" % m["date"])
    header(minfo, args, L)
    n = m.get("noise")
    if n:
        tag = (
            "  NOISY: compare within rows; quote absolute numbers from a quiet run"
            if n["other_busy_cpus"] > 0.25
            else ""
        )
        L.append(
            "during the run (%.0f s): other processes kept %.2f CPUs busy, steal %.1f%%,"
            " load avg at start %.2f%s"
            % (n["elapsed_s"], n["other_busy_cpus"], n["steal_pct"], m["loadavg_at_start"][0], tag)
        )
    L.append(
        "sizes: %s; %d process round(s) x %d timed passes; median (best) ns per call"
        % ("quick (1/10)" if args.quick else "default", args.processes, args.repeats)
    )
    L.append(
        "time: %s"
        % {
            "auto": "process CPU time, except wall time for rows marked "
            "[wall] (bridges through another thread)",
            "cpu": "process CPU time (all threads)",
            "wall": "wall clock",
        }[args.metric]
    )
    if status.get("_debug"):
        L.append("DEBUG MODE ON in: %s" % ", ".join(status["_debug"]))

    bridge = in_section(cids, "bridge")
    extras = {}
    if bridge:
        L.append("")
        L.append(
            "1. Bridge: sync code waiting on a coroutine vs native `await` of it, same "
            "loop, same process"
        )
        L.append("   ret = `async def f(): return 1`;  sleep0 = `await asyncio.sleep(0); return 1`")
        L.append(
            "   extra = bridge - native: median of the paired per-pass differences; "
            "x = bridge / native (median of per-pass ratios)"
        )
        bridge_table_head(L, 38, "%15s %7s %9s %4s")
        for cid in bridge:
            c = BY_ID[cid]
            label = c.label
            if args.metric == "auto" and metric_for(cid, "auto") == "wall":
                label = label + " [wall]"
            row = "%-48s %-8s" % (label, c.loop)
            st = status.get(cid, "")
            if cid not in results.passes:
                L.append(row + " | " + (st or "no result")[:120])
                continue
            for op in OPS:
                b = summarize(results.per_proc(cid, op, "bridge"))
                nat = summarize(results.per_proc(cid, op, "native"))
                d = results.paired(cid, op, "native", "bridge", lambda a, b: b - a)
                rt = results.paired(cid, op, "native", "bridge", lambda a, b: b / a)
                ds, rs = summarize(d), summarize(rt)
                if not b or not nat or not ds:
                    row += " | %-38s" % "FAILED"
                    continue
                extras[(cid, op)] = ds
                row += " | %15s %7s %9s %4s" % (
                    "%s (%s)" % (fmt_ns(b["median"]), fmt_ns(b["best"])),
                    fmt_ns(nat["median"]),
                    fmt_ns(ds["median"]),
                    fmt_x(rs["median"]),
                )
                summary.append(
                    {
                        "contender": cid,
                        "label": c.label,
                        "loop": c.loop,
                        "op": op,
                        "metric": metric_for(cid, args.metric),
                        "bridge": b,
                        "native": nat,
                        "extra": ds,
                        "ratio": rs,
                    }
                )
            L.append(row)
            if st.startswith("FAILED"):
                L.append("    " + st[:200])
        L.append("")
        for op in OPS:
            ds = extras.get(("greenhub.await_@greenhub", op))
            if ds:
                L.append(
                    "goal greenhub.await_ <= native await + 500 ns [%s]: extra %s ns "
                    "(per process: %s) -> %s"
                    % (
                        op,
                        fmt_ns(ds["median"]),
                        " ".join(fmt_ns(x) for x in ds["proc_medians"]),
                        "MET" if ds["median"] <= 500 else "MISSED",
                    )
                )
        for op in OPS:
            g = extras.get(("greenhub.await_@greenhub", op))
            if not g or g["median"] <= 0:
                continue
            parts = []
            for other in (
                "sqla.await_only@greenhub",
                "sqla.await_only@asyncio",
                "greenback@asyncio",
                "asgiref.async_to_sync@asyncio",
                "run_coroutine_threadsafe@asyncio",
            ):
                o = extras.get((other, op))
                if o:
                    parts.append(
                        "%s %s"
                        % (
                            other.split("@")[0] + "@" + other.split("@")[1],
                            fmt_x(o["median"] / g["median"]) + "x",
                        )
                    )
            if parts:
                L.append(
                    "extra over native, relative to greenhub.await_'s [%s]: %s"
                    % (op, ", ".join(parts))
                )
        for op in OPS:
            parts = []
            for mine, theirs, what in (
                (
                    "greenhub.async_to_sync@greenhub",
                    "asgiref.async_to_sync@asyncio",
                    "async_to_sync",
                ),
                ("greenhub.roundtrip@greenhub", "asgiref.roundtrip@asyncio", "sync_to_async(a2s)"),
            ):
                g, a = extras.get((mine, op)), extras.get((theirs, op))
                if g and a and g["median"] > 0:
                    parts.append("%s %sx" % (what, fmt_x(a["median"] / g["median"])))
            if parts:
                L.append(
                    "asgiref's adapters (stock loop, threads) / greenhub's (greenhub, no "
                    "thread), extra over native, both wall time [%s]: %s" % (op, ", ".join(parts))
                )
        if any(metric_for(c, args.metric) != metric_for(bridge[0], args.metric) for c in bridge):
            L.append(
                "(rows timed by wall clock and by CPU time are not comparable to each "
                "other beyond their order of magnitude)"
            )

    tasks = in_section(cids, "tasks")
    if tasks:
        L.append("")
        L.append(
            "2. Tasks that never call await_: ns per step (sleep0_*) or per task (create_task)"
        )
        cols = [
            (cid, v)
            for cid in tasks
            for v in TASK_VARIANTS[BY_ID[cid].loop]
            if cid in results.passes
        ]
        hdr, rdefs = task_table_head("%-17s %6s" % ("benchmark", "N"), cols)
        L.append(hdr)
        L.append("%-17s %6s" % ("", "") + " %22s" % "median (best) spread" * len(cols))
        L.append("-" * len(hdr))
        div = 10 if args.quick else 1
        pair_ratio = {}
        for item, (n0, _d) in TASK_ITEMS.items():
            row = "%-17s %6d" % (item, max(n0 // div, 100))
            sm = {}
            for cid, v in cols:
                s = summarize(results.per_proc(cid, item, v))
                sm[(cid, v)] = s
                if s:
                    row += " %22s" % (
                        "%s (%s) %3.0f%%"
                        % (fmt_ns(s["median"]), fmt_ns(s["best"]), 100 * s["spread"])
                    )
                    summary.append(
                        {
                            "contender": cid,
                            "variant": v,
                            "item": item,
                            "metric": metric_for(cid, args.metric),
                            **s,
                        }
                    )
                else:
                    row += " %22s" % (status.get(cid, "FAILED")[:22] or "FAILED")
            for a, b, _name in rdefs:
                if a[0] == b[0]:  # same process: median of paired per-pass ratios
                    pr = summarize(results.paired(a[0], item, b[1], a[1], lambda x, y: y / x))
                    pair_ratio[item] = pr
                    r = pr["median"] if pr else None
                else:
                    sa, sb = sm.get(a), sm.get(b)
                    r = sa["median"] / sb["median"] if sa and sb else None
                row += " %9s" % (("%.2f" % r) if r else "-")
            L.append(row)
        L.append(
            "ratios: a/b > 1 means a is slower; gh/ghTask is the median of per-pass "
            "ratios (same process), the others are median/median"
        )
        L.append("")
        for item in TASK_ITEMS:
            pr = pair_ratio.get(item)
            if pr:
                L.append(
                    "goal greenhub create_task within 10%% of asyncio.Task on the same "
                    "loop [%s]: %.2fx (per process %s) -> %s"
                    % (
                        item,
                        pr["median"],
                        " ".join("%.2f" % x for x in pr["proc_medians"]),
                        "MET" if pr["median"] <= 1.10 else "MISSED",
                    )
                )
        for item, (_n, d) in TASK_ITEMS.items():
            L.append("  %-17s %s" % (item, d))
    for cid, st in status.items():
        if cid != "_debug" and st.startswith(("UNAVAILABLE", "FAILED")):
            L.append("%s: %s" % (cid, st[:300]))
    return "\n".join(L), summary


TASK_COLNAME = {
    ("tasks@greenhub", "create_task"): "greenhub create_task",
    ("tasks@greenhub", "asyncio.Task"): "greenhub asyncio.Task",
    ("tasks@uvloop", "create_task"): "uvloop",
    ("tasks@asyncio", "create_task"): "asyncio",
}
TASK_RATIOS = [
    (("tasks@greenhub", "create_task"), ("tasks@greenhub", "asyncio.Task"), "gh/ghTask"),
    (("tasks@greenhub", "create_task"), ("tasks@uvloop", "create_task"), "gh/uv"),
    (("tasks@greenhub", "asyncio.Task"), ("tasks@uvloop", "create_task"), "ghTask/uv"),
    (("tasks@greenhub", "create_task"), ("tasks@asyncio", "create_task"), "gh/aio"),
]


def bridge_table_head(L, width, sub_fmt):
    """Append the bridge table's head: a column group `width` wide per op."""
    hdr = "%-48s %-8s" % ("bridge", "loop")
    sub = "%-48s %-8s" % ("", "")
    for op in OPS:
        hdr += " | %-*s" % (width, op.center(width))
        sub += " | " + sub_fmt % ("bridge", "native", "extra", "x")
    L.append(hdr)
    L.append(sub)
    L.append("-" * len(sub))


def task_table_head(first, cols):
    """The tasks table's header line after `first`, and the ratio columns it has."""
    hdr = first + "".join(" %22s" % TASK_COLNAME.get(col, "%s %s" % col) for col in cols)
    rdefs = [r for r in TASK_RATIOS if r[0] in cols and r[1] in cols]
    return hdr + "".join(" %9s" % r[2] for r in rdefs), rdefs


def fmt_i(v):
    return "%.0f" % v if v is not None else "-"


def render_instructions(cids, counts, status, minfo, skipped):
    L, summary = [], []
    L.append(
        "greenhub virtual-thread benchmarks: instructions per call (callgrind)  %s" % minfo["date"]
    )
    header(minfo, None, L)
    L.append(
        "user-space instructions per call = (count of a run of 2N - count of a run of "
        "N) / N, N = 1/20 of the default sizes; deterministic to ~1%, blind to cache misses and syscalls"
    )
    bridge = in_section(cids, "bridge")
    if bridge:
        L.append("")
        L.append("1. Bridge vs native await (instructions per call)")
        bridge_table_head(L, 34, "%9s %7s %9s %5s")
        for cid in bridge:
            c = BY_ID[cid]
            row = "%-48s %-8s" % (c.label, c.loop)
            for op in OPS:
                b, nat = counts.get((cid, op, "bridge")), counts.get((cid, op, "native"))
                if b is None or nat is None:
                    row += " | %-34s" % (status.get(cid, "FAILED")[:34])
                    continue
                row += " | %9s %7s %9s %5s" % (fmt_i(b), fmt_i(nat), fmt_i(b - nat), fmt_x(b / nat))
                summary.append(
                    {"contender": cid, "op": op, "bridge": b, "native": nat, "extra": b - nat}
                )
            L.append(row)
        if skipped:
            L.append(
                "not counted (thread hops; instructions say nothing about them): "
                + ", ".join(skipped)
            )
    tasks = in_section(cids, "tasks")
    if tasks:
        L.append("")
        L.append("2. Tasks that never call await_ (instructions per step / per task)")
        cols = [(cid, v) for cid in tasks for v in TASK_VARIANTS[BY_ID[cid].loop]]
        hdr, rdefs = task_table_head("%-17s" % "benchmark", cols)
        L.append(hdr)
        L.append("-" * len(hdr))
        for item in TASK_ITEMS:
            row = "%-17s" % item
            for cid, v in cols:
                val = counts.get((cid, item, v))
                row += " %22s" % fmt_i(val)
                if val is not None:
                    summary.append(
                        {"contender": cid, "variant": v, "item": item, "instructions": val}
                    )
            for a, b, _name in rdefs:
                va, vb = counts.get((a[0], item, a[1])), counts.get((b[0], item, b[1]))
                row += " %9s" % (("%.2f" % (va / vb)) if va and vb else "-")
            L.append(row)
    for cid, st in status.items():
        L.append("%s: %s" % (cid, st[:300]))
    return "\n".join(L), summary


if __name__ == "__main__":
    sys.exit(main())
