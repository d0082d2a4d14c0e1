#!/usr/bin/env python3
"""Memory per idle task / virtual thread / greenlet: RSS delta / N, fresh process each.

Each contender runs in its own fresh subprocess (default 3 processes per contender,
interleaved), which creates N idle objects, each blocked on its own never-completed
event, and reports (RSS after - RSS before) / N, both read from /proc/self/statm after
gc.collect():

    asyncio task            stock loop: loop.create_task(idle(fut)), `await fut`
    uvloop task             the same on uvloop
    greenhub task           the same on greenhub (create_task: the task runs on a greenlet)
    greenhub asyncio.Task   asyncio.Task(idle(fut), loop=loop) made directly on greenhub's
                            loop, bypassing create_task's greenlet wrapping
    greenhub vthread        greenhub.spawn(fn, fut); fn -> helper -> greenhub.await_(fut),
                            i.e. suspended inside sync code two frames deep
    SQLAlchemy greenlet     stock loop: a task in greenlet_spawn(fn, fut), fn ->
                            await_only(fut) (what an idle AsyncSession call costs)
    gevent greenlet         gevent.spawn(fn, ev); fn -> ev.wait() on a gevent.event.Event

Every object gets its own future (or Event), counted in its cost, and the process keeps
a list of the objects and of the futures (16 bytes per object, the same for all).
Before the baseline the worker makes and finishes 200 objects, so imports, code
objects and pools that exist once per process are not charged to the N objects.

    python3 benchmarks/bench_memory.py                 # N=100,000, 3 processes each
    python3 benchmarks/bench_memory.py --quick         # N=10,000, 1 process each
    python3 benchmarks/bench_memory.py --json benchmarks/results/memory.json

Also reported: the time to create the N objects and run each to its suspension point,
and the time to wake them all and run them to completion (ns per object).

Where the bytes go (every run): for each contender, the C stack its suspended greenlets
hold saved on the heap (greenlet's `_stack_saved`, per object), and - from one more
fresh process per contender, run under tracemalloc - what is allocated through Python's
allocators (objects, greenlet stack copies) as against what is not: the rest of the RSS
delta, which for a greenlet that ran Python code is mostly the page of CPython's frame
stack (its "data stack" chunk) that the greenlet touched.  `--no-breakdown` skips the
traced processes.
"""

import argparse
import os
import platform
import statistics
import sys
import time

from _common import (
    REPO,
    WorkerFailed,
    died_message,
    emit,
    filter_ids,
    libs_line,
    log,
    loop_factory,
    machine_info,
    mem_total_kib,
    run_worker_once,
    use_greenhub_path,
    write_json,
)

WARMUP = 200

CONTENDERS = [
    # id, label, libraries whose version to report
    ("asyncio_task", "asyncio task (stock loop)", ()),
    ("uvloop_task", "uvloop task", ("uvloop",)),
    ("greenhub_task", "greenhub task (create_task)", ("greenhub", "greenlet")),
    ("greenhub_plain_task", "greenhub loop, asyncio.Task direct", ("greenhub",)),
    ("greenhub_vthread", "greenhub vthread in await_ (2 deep)", ("greenhub", "greenlet")),
    ("sqla_asyncio", "SQLAlchemy greenlet_spawn task (stock)", ("sqlalchemy", "greenlet")),
    ("gevent_greenlet", "gevent greenlet in Event.wait()", ("gevent", "greenlet")),
]
LABEL = {c[0]: c[1] for c in CONTENDERS}
PAGE = os.sysconf("SC_PAGE_SIZE")
TRACE = False  # set in a worker process by --trace


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


# --------------------------------------------------------------------------
# Worker: one contender, one process.
# --------------------------------------------------------------------------


def _result(n, rss0, rss1, t0, t1, t2, t3, held):
    """A worker's answer: RSS before/after (t0..t1 creates the N objects, t2..t3 wakes
    them); `held` is what _held() measured while the N objects were suspended."""
    return {
        "rss0": rss0,
        "rss1": rss1,
        "create_ns": (t1 - t0) / n,
        "wake_ns": (t3 - t2) / n,
        "n": n,
        "per_obj": (rss1 - rss0) / n,
        **held,
    }


def _trace_start():
    """Under --trace: count what Python's allocators hand out from here on."""
    if TRACE:
        import tracemalloc

        tracemalloc.start()


def _held(n):
    """With the N objects suspended: what their greenlets hold as saved C stack, and
    under --trace what Python's allocators handed out since _trace_start(), per object."""
    import gc

    held = {}
    if TRACE:  # first: the scan below allocates a list of its own
        import tracemalloc

        held["traced"] = tracemalloc.get_traced_memory()[0] / n
        tracemalloc.stop()
    try:
        import greenlet
    except ImportError:
        greenlet = None
    if greenlet is not None:
        # A greenlet that is started and not dead (bool(g)) and not running holds the
        # part of the C stack it had used, copied to the heap.
        here = greenlet.getcurrent()
        saved = [
            g._stack_saved
            for g in gc.get_objects()
            if isinstance(g, greenlet.greenlet) and g and g is not here
        ]
        held["greenlets"] = len(saved)
        held["stack_saved"] = sum(saved) / n
    return held


def measure_asyncio_like(kind, n):
    import asyncio
    import gc

    if kind in ("asyncio_task", "sqla_asyncio"):
        loop = loop_factory("asyncio")()
    elif kind == "uvloop_task":
        loop = loop_factory("uvloop")()
    else:
        loop = loop_factory("greenhub")()
    asyncio.set_event_loop(loop)
    state = {"started": 0, "finished": 0}

    async def idle(fut):
        state["started"] += 1
        await fut
        state["finished"] += 1

    if kind in ("asyncio_task", "uvloop_task", "greenhub_task"):

        def make(fut):
            return loop.create_task(idle(fut))
    elif kind == "greenhub_plain_task":

        def make(fut):
            return asyncio.Task(idle(fut), loop=loop)
    elif kind == "greenhub_vthread":
        import greenhub

        await_ = greenhub.await_

        def helper(fut):
            return await_(fut)

        def fn(fut):
            state["started"] += 1
            helper(fut)
            state["finished"] += 1

        def make(fut):
            return greenhub.spawn(fn, fut)
    elif kind == "sqla_asyncio":
        from sqlalchemy import util as sa_util

        greenlet_spawn = sa_util.greenlet_spawn
        await_only = getattr(sa_util, "await_only", None) or sa_util.await_

        def sfn(fut):
            state["started"] += 1
            await_only(fut)
            state["finished"] += 1

        async def sq(fut):
            await greenlet_spawn(sfn, fut)

        def make(fut):
            return loop.create_task(sq(fut))
    else:
        raise ValueError(kind)

    async def batch(count):
        futs = [loop.create_future() for _ in range(count)]
        objs = [make(f) for f in futs]
        while state["started"] < target[0]:
            await asyncio.sleep(0)
        return futs, objs

    async def finish(futs, objs):
        for f in futs:
            f.set_result(None)
        while state["finished"] < target[1]:
            await asyncio.sleep(0)
        await asyncio.sleep(0)

    target = [0, 0]

    async def main():
        # Warm-up: make and finish a few objects so per-process one-time costs
        # (code paths, free lists, pools) are not charged to the N objects.
        target[:] = [WARMUP, WARMUP]
        futs, objs = await batch(WARMUP)
        await finish(futs, objs)
        del futs, objs
        gc.collect()
        _trace_start()
        r0 = rss_bytes()
        target[:] = [WARMUP + n, WARMUP + n]
        t0 = time.perf_counter_ns()
        futs, objs = await batch(n)
        t1 = time.perf_counter_ns()
        gc.collect()
        r1 = rss_bytes()
        held = _held(n)
        t2 = time.perf_counter_ns()
        await finish(futs, objs)
        t3 = time.perf_counter_ns()
        return _result(n, r0, r1, t0, t1, t2, t3, held)

    return loop.run_until_complete(main())


def measure_gevent(n):
    import gc

    import gevent
    import gevent.event

    state = {"started": 0, "finished": 0}

    def fn(ev):
        state["started"] += 1
        ev.wait()
        state["finished"] += 1

    def batch(count, target):
        evs = [gevent.event.Event() for _ in range(count)]
        objs = [gevent.spawn(fn, ev) for ev in evs]
        while state["started"] < target:
            gevent.sleep(0)
        return evs, objs

    def finish(evs, objs, target):
        for ev in evs:
            ev.set()
        while state["finished"] < target:
            gevent.sleep(0)
        gevent.sleep(0)

    evs, objs = batch(WARMUP, WARMUP)
    finish(evs, objs, WARMUP)
    del evs, objs
    gc.collect()
    _trace_start()
    r0 = rss_bytes()
    t0 = time.perf_counter_ns()
    evs, objs = batch(n, WARMUP + n)
    t1 = time.perf_counter_ns()
    gc.collect()
    r1 = rss_bytes()
    held = _held(n)
    t2 = time.perf_counter_ns()
    finish(evs, objs, WARMUP + n)
    t3 = time.perf_counter_ns()
    return _result(n, r0, r1, t0, t1, t2, t3, held)


def worker_main(kind, n, gh_path, trace):
    global TRACE
    TRACE = trace
    use_greenhub_path(gh_path)
    libs = {c[0]: c[2] for c in CONTENDERS}[kind]
    try:
        versions = {}
        for lib in libs:
            mod = __import__(lib)
            versions[lib] = getattr(mod, "__version__", "?")
    except Exception as exc:
        emit({"unavailable": "%s: %s" % (type(exc).__name__, exc)})
        os._exit(0)
    try:
        if kind == "gevent_greenlet":
            res = measure_gevent(n)
        else:
            res = measure_asyncio_like(kind, n)
    except BaseException as exc:
        emit({"error": "%s: %s" % (type(exc).__name__, exc)})
        os._exit(0)
    res["versions"] = versions
    emit(res)
    # Skip interpreter teardown: tearing down 100,000 objects is not what we measure.
    sys.stdout.flush()
    os._exit(0)


# --------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------


def run_worker(kind, n, args, trace=False):
    argv = [
        os.path.abspath(__file__),
        "--worker",
        kind,
        "-n",
        str(n),
        "--greenhub-path",
        args.greenhub_path,
    ] + (["--trace"] if trace else [])
    try:
        msgs, rc, err = run_worker_once(argv, args.timeout)
    except WorkerFailed as exc:
        return {"error": str(exc)}
    return msgs[0] if msgs else {"error": died_message(rc, err[-500:])}


def fmt_b(v):
    return "%.0f" % v


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="N=10,000 and 1 process each")
    ap.add_argument("-n", type=int, default=None, help="objects per process (100,000)")
    ap.add_argument(
        "-p",
        "--processes",
        type=int,
        default=None,
        help="fresh processes per contender (default 3, quick 1)",
    )
    ap.add_argument(
        "-k", "--filter", default="", help="comma-separated substrings of contender ids to run"
    )
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--greenhub-path", default=REPO)
    ap.add_argument(
        "--no-breakdown",
        action="store_true",
        help="skip the tracemalloc process per contender (where the bytes go)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    n = args.n or (10_000 if args.quick else 100_000)
    if args.worker:
        return worker_main(args.worker, n, args.greenhub_path, args.trace)
    procs = args.processes or (1 if args.quick else 3)
    kinds = filter_ids([c[0] for c in CONTENDERS], args.filter)

    minfo = machine_info(
        mem_total_kib=mem_total_kib(), page_size=PAGE, glibc=" ".join(platform.libc_ver())
    )
    results = {k: [] for k in kinds}
    status = {}
    versions = {}
    for rnd in range(procs):
        order = kinds[rnd % len(kinds) :] + kinds[: rnd % len(kinds)]
        log("round %d/%d" % (rnd + 1, procs))
        for k in order:
            if k in status:
                continue
            r = run_worker(k, n, args)
            if "unavailable" in r:
                status[k] = "UNAVAILABLE: " + r["unavailable"]
            elif "error" in r:
                status[k] = "FAILED: " + r["error"]
            else:
                versions.update(r.pop("versions"))
                results[k].append(r)
    minfo["versions"] = versions
    traced = {}
    if not args.no_breakdown:
        log("where the bytes go: one process per contender under tracemalloc")
        for k in kinds:
            if results[k]:
                r = run_worker(k, n, args, trace=True)
                if "traced" in r:
                    traced[k] = r["traced"]

    summ = {}
    for k, rs in results.items():
        if rs:
            per = [r["per_obj"] for r in rs]
            summ[k] = {
                "bytes_per_obj": statistics.median(per),
                "min": min(per),
                "max": max(per),
                "create_ns": statistics.median([r["create_ns"] for r in rs]),
                "wake_ns": statistics.median([r["wake_ns"] for r in rs]),
                "rss0_mib": statistics.median([r["rss0"] for r in rs]) / 2**20,
                "processes": len(rs),
            }
            if "stack_saved" in rs[0]:
                summ[k]["stack_saved"] = statistics.median([r["stack_saved"] for r in rs])
                summ[k]["greenlets_per_obj"] = rs[0]["greenlets"] / n
            if k in traced:
                summ[k]["traced"] = traced[k]

    L = []
    L.append("greenhub memory benchmark (bench_memory.py)  %s" % minfo["date"])
    L.append(
        "machine: %s, %s CPUs, %.1f GiB RAM, %s, page %d B"
        % (
            minfo["cpu_model"],
            minfo["cpu_count"],
            (minfo["mem_total_kib"] or 0) / 2**20,
            minfo["platform"],
            PAGE,
        )
    )
    L.append("python:  %s %s" % (minfo["python"].split()[0], minfo["python_executable"]))
    L.append(libs_line(versions, minfo["repo_git"]))
    L.append(
        "N = %d idle objects per fresh process, %d process(es) each; bytes/object = "
        "RSS delta / N after gc.collect()" % (n, procs)
    )
    L.append("")
    hdr = "%-40s %12s %15s %9s %9s %10s %10s" % (
        "idle object",
        "bytes/object",
        "min..max",
        "KiB",
        "vs aio",
        "create ns",
        "wake ns",
    )
    L.append(hdr)
    L.append("-" * len(hdr))
    base = summ.get("asyncio_task", {}).get("bytes_per_obj")
    for k in kinds:
        s = summ.get(k)
        if not s:
            L.append("%-40s %s" % (LABEL[k], status.get(k, "no result")[:150]))
            continue
        L.append(
            "%-40s %12s %15s %9.2f %9s %10.0f %10.0f"
            % (
                LABEL[k],
                fmt_b(s["bytes_per_obj"]),
                "%s..%s" % (fmt_b(s["min"]), fmt_b(s["max"])),
                s["bytes_per_obj"] / 1024,
                ("%.2fx" % (s["bytes_per_obj"] / base)) if base else "-",
                s["create_ns"],
                s["wake_ns"],
            )
        )
        if k in status:
            L.append("    " + status[k][:150])
    L.append("")
    if any("traced" in s or "stack_saved" in s for s in summ.values()):
        L.append(
            "where the bytes go, per object: Python heap = allocated through Python's "
            "allocators (tracemalloc, its own process),"
        )
        L.append(
            "  of which C stack = greenlet stack slices saved to the heap; rest = RSS "
            "minus Python heap (CPython's frame-stack pages, malloc overhead)"
        )
        hdr = "%-40s %9s %12s %9s %9s %11s" % (
            "idle object",
            "RSS",
            "Python heap",
            "C stack",
            "rest",
            "greenlets",
        )
        L.append(hdr)
        L.append("-" * len(hdr))
        for k in kinds:
            s = summ.get(k)
            if not s:
                continue
            heap = s.get("traced")
            L.append(
                "%-40s %9s %12s %9s %9s %11s"
                % (
                    LABEL[k],
                    fmt_b(s["bytes_per_obj"]),
                    fmt_b(heap) if heap is not None else "-",
                    fmt_b(s["stack_saved"]) if "stack_saved" in s else "-",
                    fmt_b(s["bytes_per_obj"] - heap) if heap is not None else "-",
                    ("%.2f" % s["greenlets_per_obj"]) if "greenlets_per_obj" in s else "-",
                )
            )
        L.append("")
    # The goals of zero-switch task steps (docs/design.md): an idle task no larger than
    # the stock loop's, a virtual thread suspended in sync code at most 6 KiB.
    if "greenhub_task" in summ and base:
        v = summ["greenhub_task"]["bytes_per_obj"]
        L.append(
            "goal %s <= asyncio task: %.2f KiB vs %.2f KiB -> %s"
            % (LABEL["greenhub_task"], v / 1024, base / 1024, "MET" if v <= base else "MISSED")
        )
    if "greenhub_vthread" in summ:
        v = summ["greenhub_vthread"]["bytes_per_obj"]
        L.append(
            "goal %s <= 6 KiB: %.2f KiB -> %s"
            % (LABEL["greenhub_vthread"], v / 1024, "MET" if v <= 6144 else "MISSED")
        )
    L.append(
        "create ns: make N objects and run each to its suspension point; wake ns: "
        "complete every future/event and run all to the end (wall time, per object)"
    )
    report = "\n".join(L)
    print(report)
    if args.json:
        doc = {
            "machine": minfo,
            "n": n,
            "processes": procs,
            "status": status,
            "summary": summ,
            "raw": results,
            "table": report,
        }
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
