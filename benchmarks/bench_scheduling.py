#!/usr/bin/env python3
"""Scheduling micro-benchmarks: greenhub vs stock asyncio vs uvloop.

One invocation runs every selected benchmark for every loop kind side by side
and prints the machine, Python and library versions above the table.  Each
loop kind runs in its own fresh subprocess (by default 3 rounds of fresh
processes), so one loop's allocations, caches and heap layout never leak into
another's numbers.  The parent drives the workers in lock step, one timed run
at a time, rotating which kind goes first, so background load that comes and
goes is shared fairly between the kinds.

    python3 benchmarks/bench_scheduling.py                  # full run, ~40 s
    python3 benchmarks/bench_scheduling.py --quick          # smoke run, ~3 s
    python3 benchmarks/bench_scheduling.py --loops asyncio,uvloop -b call_soon
    python3 benchmarks/bench_scheduling.py -n 1000,100000 --json out.json

See benchmarks/README.md for what each benchmark measures and how to read the
table.  Numbers are wall-clock nanoseconds per operation (lower is better);
ratios are median / median of the reference loop (>1 means slower).
"""

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import socket
import statistics
import sys
import threading
import time

from _common import (
    LOOP_KINDS,
    REPO,
    BackgroundLoad,
    WorkerFailed,
    WorkerProcess,
    commands,
    emit,
    fmt_ns,
    instr_mark,
    loop_factory_info,
    machine_info,
    python_build_flags,
    require_valgrind,
    run_callgrind,
    run_parallel,
    summarize,
    use_greenhub_path,
    write_json,
)

ALL_KINDS = LOOP_KINDS

perf_counter_ns = time.perf_counter_ns
process_time_ns = time.process_time_ns


# --------------------------------------------------------------------------
# Benchmarks.  Each function takes (loop, n) and returns (wall_ns, cpu_ns, ops)
# for the timed section only.  The timed section starts and ends *inside* the
# running loop (in a callback or task), so run_forever()/run_until_complete()
# start-up, task creation for the harness, thread start-up etc. are excluded.
# --------------------------------------------------------------------------

BENCHMARKS = {}


class Bench:
    def __init__(self, name, fn, default_n, quick_n, unit, desc):
        self.name, self.fn, self.default_n, self.quick_n = name, fn, default_n, quick_n
        self.unit, self.desc = unit, desc


def bench(name, default_n, quick_n, unit, desc):
    def deco(fn):
        BENCHMARKS[name] = Bench(name, fn, default_n, quick_n, unit, desc)
        return fn

    return deco


class Clock:
    """t0/t1 pair taken inside the loop; wall and process-CPU time."""

    __slots__ = ("w0", "w1", "c0", "c1")

    def __init__(self):
        self.w0 = self.w1 = self.c0 = self.c1 = 0

    def start(self):
        self.c0 = process_time_ns()
        self.w0 = perf_counter_ns()

    def stop(self):
        self.w1 = perf_counter_ns()
        self.c1 = process_time_ns()

    def result(self, ops):
        if not self.w1:
            raise RuntimeError("benchmark finished without stopping its clock")
        return self.w1 - self.w0, self.c1 - self.c0, ops


def _run_callback(loop, start):
    loop.call_soon(start)
    loop.run_forever()


def _noop():
    pass


def _callback_batch(method, from_thread=False):
    """N x loop.<method>(cb) back to back, then one last call schedules the callback
    that stops the clock (FIFO: it runs after the N callbacks).  The calls come from a
    callback on the loop, or with `from_thread` from a second thread while the loop
    runs (thread start-up is outside the timed section)."""

    def run(loop, n):
        clk = Clock()
        rng = range(n)

        def done():
            clk.stop()
            loop.stop()

        def start():
            call = getattr(loop, method)
            cb = _noop
            clk.start()
            for _ in rng:
                call(cb)
            call(done)  # FIFO: runs after the N callbacks

        if not from_thread:
            _run_callback(loop, start)
            return clk.result(n)
        go = threading.Event()

        def producer():
            go.wait()
            start()

        th = threading.Thread(target=producer, daemon=True)
        th.start()  # thread start-up is outside the timed section
        loop.call_soon(go.set)
        loop.run_forever()
        th.join()
        return clk.result(n)

    return run


bench(
    "call_soon_batch",
    20000,
    2000,
    "call",
    "N x loop.call_soon(cb) from one callback, then the loop runs them all",
)(_callback_batch("call_soon"))


@bench(
    "call_soon_chain",
    10000,
    1000,
    "call",
    "each callback does call_soon(next): one callback per loop iteration",
)
def b_call_soon_chain(loop, n):
    clk = Clock()

    def start():
        cs = loop.call_soon
        left = n

        def step():
            nonlocal left
            left -= 1
            if left:
                cs(step)
            else:
                clk.stop()
                loop.stop()

        clk.start()
        cs(step)

    _run_callback(loop, start)
    return clk.result(n)


def _with_idle_reader(fn):
    """Run `fn` with an idle socket registered by add_reader (set up and torn
    down outside the timed section).  A loop with no I/O watcher may skip the
    poll system call when callbacks are ready (greenhub does); a real server
    always has sockets, so these variants show the iteration cost it sees."""

    def wrapped(loop, n):
        a, b = socket.socketpair()
        try:
            loop.add_reader(a.fileno(), _noop)
            try:
                return fn(loop, n)
            finally:
                loop.remove_reader(a.fileno())
        finally:
            a.close()
            b.close()

    return wrapped


bench(
    "call_soon_chain_io",
    10_000,
    1_000,
    "call",
    "call_soon_chain with one idle add_reader() socket registered",
)(_with_idle_reader(b_call_soon_chain))


@bench(
    "call_later_cancel",
    10000,
    1000,
    "timer",
    "N x call_later(random 10-20 s, cb), cancel all, one more iteration",
)
def b_call_later_cancel(loop, n):
    clk = Clock()
    rnd = random.Random(12345)
    delays = [10.0 + 10.0 * rnd.random() for _ in range(n)]

    def done():
        clk.stop()
        loop.stop()

    def start():
        cl = loop.call_later
        cb = _noop
        clk.start()
        handles = [cl(d, cb) for d in delays]
        for h in handles:
            h.cancel()
        # The next iteration is where lazy loops (stock asyncio) purge the
        # cancelled handles from their heap: include it.
        loop.call_soon(done)

    _run_callback(loop, start)
    return clk.result(n)


@bench(
    "call_later_fire",
    10000,
    1000,
    "timer",
    "N x call_later(random <1 us, cb): all due by the next poll, all fire",
)
def b_call_later_fire(loop, n):
    clk = Clock()
    rnd = random.Random(54321)
    # Distinct sub-microsecond delays: every timer is already due when the
    # loop polls (scheduling N of them takes far longer than 1 us), so the
    # loop never sleeps and we measure timer CPU cost, not waiting.
    delays = [rnd.random() * 1e-6 for _ in range(n)]

    def start():
        cl = loop.call_later
        left = n

        def cb():
            nonlocal left
            left -= 1
            if not left:
                clk.stop()
                loop.stop()

        clk.start()
        for d in delays:
            cl(d, cb)

    _run_callback(loop, start)
    return clk.result(n)


SLEEP0_TASKS = 100


@bench(
    "sleep0_100_tasks",
    20000,
    2000,
    "step",
    "100 tasks each doing N/100 x `await asyncio.sleep(0)` (ns per step)",
)
def b_sleep0_tasks(loop, n):
    clk = Clock()
    k = SLEEP0_TASKS
    m = max(1, n // k)
    sleep = asyncio.sleep
    left = k

    async def worker(fut):
        nonlocal left
        for _ in range(m):
            await sleep(0)
        left -= 1
        if not left:
            clk.stop()
            fut.set_result(None)

    async def main():
        fut = loop.create_future()
        for _ in range(k):
            loop.create_task(worker(fut))
        clk.start()  # tasks are created but none has run its first step yet
        await fut

    loop.run_until_complete(main())
    return clk.result(k * m)


@bench(
    "sleep0_one_task",
    10000,
    1000,
    "step",
    "one task alone doing N x `await asyncio.sleep(0)` (ns per step)",
)
def b_sleep0_one(loop, n):
    clk = Clock()
    sleep = asyncio.sleep

    async def main():
        clk.start()
        for _ in range(n):
            await sleep(0)
        clk.stop()

    loop.run_until_complete(main())
    return clk.result(n)


bench(
    "sleep0_one_task_io",
    10_000,
    1_000,
    "step",
    "sleep0_one_task with one idle add_reader() socket registered",
)(_with_idle_reader(b_sleep0_one))


bench(
    "threadsafe_other_thread",
    10000,
    1000,
    "call",
    "a second thread does N x call_soon_threadsafe(cb) while the loop runs",
)(_callback_batch("call_soon_threadsafe", from_thread=True))

bench(
    "threadsafe_same_thread",
    10000,
    1000,
    "call",
    "N x call_soon_threadsafe(cb) from a callback on the loop thread itself",
)(_callback_batch("call_soon_threadsafe"))


async def _noop_coro():
    pass


@bench(
    "create_task_batch",
    5000,
    500,
    "task",
    "N x loop.create_task(trivial()) fire-and-forget, until all have completed",
)
def b_create_task_batch(loop, n):
    clk = Clock()
    rng = range(n)

    async def main():
        create = loop.create_task
        coro = _noop_coro
        fut = loop.create_future()

        async def fin():
            clk.stop()
            fut.set_result(None)

        clk.start()
        for _ in rng:
            create(coro())
        create(fin())  # FIFO: its first step runs after all N tasks ran
        await fut

    loop.run_until_complete(main())
    return clk.result(n)


@bench(
    "create_task_await", 3000, 300, "task", "N x `await loop.create_task(trivial())`, one at a time"
)
def b_create_task_await(loop, n):
    clk = Clock()
    rng = range(n)

    async def main():
        create = loop.create_task
        coro = _noop_coro
        clk.start()
        for _ in rng:
            await create(coro())
        clk.stop()

    loop.run_until_complete(main())
    return clk.result(n)


@bench(
    "future_roundtrip",
    3000,
    300,
    "await",
    "N x {f = create_future(); call_soon(f.set_result, None); await f}",
)
def b_future_roundtrip(loop, n):
    clk = Clock()
    rng = range(n)

    async def main():
        cf = loop.create_future
        cs = loop.call_soon
        clk.start()
        for _ in rng:
            f = cf()
            cs(f.set_result, None)
            await f
        clk.stop()

    loop.run_until_complete(main())
    return clk.result(n)


# --------------------------------------------------------------------------
# Worker: one process, one loop kind.  It reads commands on stdin and answers
# on stdout, one JSON line each:
#   {"cmd": "begin", "bench": B, "n": N, "warmup": W}  fresh loop + W untimed runs
#   {"cmd": "sample"}                                   one timed run
#   {"cmd": "end"}                                      close that loop
# The parent drives all loop kinds' workers in lock step (one runs at a time,
# the others wait idle in read()), so background load hits every kind alike.
# --------------------------------------------------------------------------


def _emit(**obj):
    emit(obj)


def _fmt_exc(e):
    """'Type: message (in function)' for a failure cell."""
    import traceback

    where = ""
    tb = traceback.extract_tb(e.__traceback__) if e.__traceback__ else []
    if tb:
        where = " (in %s, %s:%d)" % (tb[-1].name, os.path.basename(tb[-1].filename), tb[-1].lineno)
    return "%s: %s%s" % (type(e).__name__, e, where)


class Runner:
    """Runs a benchmark on a loop; an error inside the loop fails the run.

    A callback or task that raises would only be logged by the loop, which
    then goes on and the benchmark never stops its clock: our exception
    handler records the error and stops the loop instead.
    """

    def __init__(self, factory):
        self.factory = factory
        self.errors = []

    def new_loop(self):
        loop = self.factory()
        loop.set_exception_handler(self._on_error)
        return loop

    def _on_error(self, loop, context):
        exc = context.get("exception")
        self.errors.append(
            "%s%s"
            % (
                context.get("message", "error in loop"),
                (": %s: %s" % (type(exc).__name__, exc)) if exc else "",
            )
        )
        loop.stop()

    def run(self, b, loop, n):
        del self.errors[:]
        try:
            res = b.fn(loop, n)
        except BaseException:
            if self.errors:
                raise RuntimeError(self.errors[0]) from None
            raise
        if self.errors:
            raise RuntimeError(self.errors[0])
        return res


def worker_main(args):
    use_greenhub_path(args.greenhub_path)
    try:
        factory, info = loop_factory_info(args.worker)
    except BaseException as e:  # report, don't crash: the parent shows it
        _emit(event="unavailable", error=_fmt_exc(e))
        return 0
    _emit(event="info", **info)
    if args.instr_items:
        return instr_worker(Runner(factory), json.loads(args.instr_items))
    runner = Runner(factory)
    b = loop = n = None
    for cmd in commands():
        c = cmd["cmd"]
        try:
            if c == "begin":
                b, n = BENCHMARKS[cmd["bench"]], cmd["n"]
                loop = runner.new_loop()
                for _ in range(cmd["warmup"]):
                    runner.run(b, loop, n)
                _emit(event="ok")
            elif c == "sample":
                gc.collect()
                gc.disable()
                try:
                    w, cpu, ops = runner.run(b, loop, n)
                finally:
                    gc.enable()
                _emit(event="sample", wall=w / ops, cpu=cpu / ops, ops=ops)
            elif c == "end":
                if loop is not None:
                    loop.close()
                b = loop = None
                _emit(event="ok")
        except BaseException as e:
            _emit(event="error", error=_fmt_exc(e))
    return 0


# Instruction counting (--instructions): the worker runs under callgrind (see
# _common.run_callgrind), so every instr_mark() dumps the instructions executed
# since the previous one into its own numbered part and zeroes the counter.
# Each item is bracketed as  mark; run(n); mark; run(2n); mark  and the
# difference of the last two parts, divided by n, is the instruction count per
# operation with every fixed per-run cost cancelled out.


def instr_worker(runner, items):
    marks = 0

    def mark():
        nonlocal marks
        instr_mark()
        marks += 1
        return marks

    for name, n in items:
        b = BENCHMARKS[name]
        try:
            loop = runner.new_loop()
            try:
                gc.collect()
                gc.disable()
                runner.run(b, loop, 2 * n)  # warm-up at the larger size
                mark()
                _, _, ops1 = runner.run(b, loop, n)
                p1 = mark()
                _, _, ops2 = runner.run(b, loop, 2 * n)
                p2 = mark()
            finally:
                gc.enable()
                loop.close()
        except BaseException as e:
            _emit(event="error", bench=name, n=n, error=_fmt_exc(e))
            continue
        _emit(event="instr", bench=name, n=n, part1=p1, part2=p2, ops1=ops1, ops2=ops2)
    _emit(event="end", marks=marks)
    return 0


# --------------------------------------------------------------------------
# Parent: spawn workers, drive them in lock step, aggregate, print.
# --------------------------------------------------------------------------


class Worker(WorkerProcess):
    """One fresh process for one loop kind; `info` describes its loop, or
    `unavailable` says why it could not make one."""

    def __init__(self, kind, args):
        self.kind = kind
        argv = [os.path.abspath(__file__), "--worker", kind, "--greenhub-path", args.greenhub_path]
        super().__init__(argv, args.timeout)
        self.info = self.unavailable = None
        msg = self.read(max(self.timeout, 60.0))
        if msg["event"] == "unavailable":
            self.unavailable = msg["error"]
            self.close()
        else:
            self.info = msg

    def request(self, **cmd):
        self.send(**cmd)
        msg = self.read()
        if msg["event"] == "error":
            raise RuntimeError(msg["error"])
        return msg


def run_instructions(kind, items, args):
    """Count instructions per operation for one loop kind under callgrind.

    Returns (info, {item: instructions per op}, {item: error}, unavailable).
    """
    argv = [os.path.abspath(__file__), "--worker", kind, "--instr-items", json.dumps(items)]
    argv += ["--greenhub-path", args.greenhub_path]
    res, fails = {}, {}
    try:
        msgs, dumps, rc, err_tail = run_callgrind(argv, args.timeout * max(1, len(items)))
    except WorkerFailed:
        return None, res, fails, "callgrind worker timed out"
    if msgs and msgs[0]["event"] == "unavailable":
        return None, res, fails, msgs[0]["error"]
    if not msgs or msgs[0]["event"] != "info":
        return None, res, fails, "worker failed under valgrind: " + err_tail
    info = msgs[0]
    ended = [m for m in msgs if m["event"] == "end"]
    if ended and ended[0]["marks"] != len(dumps):
        # Something else called the marker function: parts are misaligned.
        return (
            info,
            {},
            {},
            "callgrind dump count %d != markers %d (is os.getpgrp() called by the loop?)"
            % (len(dumps), ended[0]["marks"]),
        )
    for m in msgs:
        key = (m.get("bench"), m.get("n"))
        if m["event"] == "instr":
            res[key] = (dumps[m["part2"]] - dumps[m["part1"]]) / (m["ops2"] - m["ops1"])
        elif m["event"] == "error":
            fails[key] = m["error"]
    if not ended:
        done = set(res) | set(fails)
        for it in items:
            if tuple(it) not in done:
                fails[tuple(it)] = "worker died under valgrind (exit %s): %s" % (
                    rc,
                    err_tail[-300:],
                )
                break
    return info, res, fails, None


def main_instructions(args, kinds, items, log):
    require_valgrind()
    minfo = sched_machine_info()
    t0 = time.monotonic()
    log("counting instructions under callgrind for %s (slow: ~1 min)" % ", ".join(kinds))
    results = run_parallel(run_instructions, kinds, [list(it) for it in items], args)
    unavailable = {k: r[3] for k, r in results.items() if r[3]}
    shown = [k for k in kinds if k not in unavailable]
    print(
        "greenhub scheduling micro-benchmarks: instructions per operation (callgrind)  "
        "%s  (took %.0f s)" % (minfo["date"], time.monotonic() - t0)
    )
    print(
        "python  : %s, %s (%s)"
        % (platform.python_version(), minfo["python_executable"], minfo["python_build_flags"])
    )
    for k in kinds:
        if k in unavailable:
            print("%-8s: UNAVAILABLE: %s" % (k, (unavailable[k].strip().splitlines() or ["?"])[-1]))
        else:
            i = results[k][0] or {}
            print(
                "%-8s: %s; %s%s"
                % (
                    k,
                    i.get("version"),
                    i.get("loop_class"),
                    ("; " + i["build"]) if i.get("build") else "",
                )
            )
    print()
    pairs = ratio_pairs(shown)
    hdr = "%-23s %6s " % ("benchmark", "N") + "".join(k.rjust(12) for k in shown)
    hdr += "".join(("%s/%s" % (SHORT[a], SHORT[b])).rjust(7) for a, b in pairs)
    print(hdr)
    print("-" * len(hdr))
    doc_rows = []
    for it in items:
        row = "%-23s %6d " % it
        vals = {}
        for k in shown:
            _, res, fails, _ = results[k]
            if it in res:
                vals[k] = res[it]
                row += ("%.0f" % res[it]).rjust(12)
            else:
                row += ("FAILED" if it in fails else "-").rjust(12)
        for a, b in pairs:
            row += (
                ("%.2f" % (vals[a] / vals[b])) if a in vals and b in vals and vals[b] > 0 else "-"
            ).rjust(7)
        print(row)
        doc_rows.append({"bench": it[0], "n": it[1], "instructions_per_op": vals})
    print("-" * len(hdr))
    print(
        "user-space instructions per operation (all threads), from callgrind: (count of a "
        "run of 2N - count of a run of N) / N,\nafter a warm-up run. Deterministic, so immune "
        "to machine noise, but blind to cache misses and kernel time (syscalls)."
    )
    for k in shown:
        for (name, n), msg in results[k][2].items():
            print("FAILED %s %s n=%d: %s" % (k, name, n, msg))
    if args.json:
        doc = {
            "machine": minfo,
            "mode": "instructions",
            "loops": {k: results[k][0] for k in shown},
            "unavailable": unavailable,
            "results": doc_rows,
        }
        write_json(args.json, doc, log)
    return 0


def sched_machine_info():
    return machine_info(
        machine=platform.machine(),
        cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        loadavg=os.getloadavg() if hasattr(os, "getloadavg") else None,
        python_implementation=platform.python_implementation(),
        python_build_flags=python_build_flags(),
        gil_switch_interval_s=sys.getswitchinterval(),
    )


SHORT = {"greenhub": "gh", "uvloop": "uv", "asyncio": "aio"}


def ratio_pairs(kinds):
    pairs = []
    for ref in ("uvloop", "asyncio"):
        if ref not in kinds:
            continue
        for k in kinds:
            if k != ref and (ref, k) not in pairs:
                pairs.append((k, ref))
    return pairs


def per_process_ratios(raw, a, b, it):
    """Median ratio a/b for each process round in which both ran."""
    pa, pb = raw[a].get(it, []), raw[b].get(it, [])
    return [
        statistics.median(x) / statistics.median(y) for x, y in zip(pa, pb, strict=False) if x and y
    ]


def print_slower(kinds, items, summary, raw, out=sys.stdout):
    """List where each loop is slower than uvloop (the bar greenhub aims at)."""
    if "uvloop" not in kinds:
        return
    for k in kinds:
        if k in ("uvloop", "asyncio"):
            continue
        rows = []
        for it in items:
            sa = summary.get(it, {}).get(k) or {}
            sb = summary.get(it, {}).get("uvloop") or {}
            if "median" in sa and "median" in sb and sa["median"] > sb["median"]:
                pr = per_process_ratios(raw, k, "uvloop", it)
                rows.append(
                    "  %-23s %6d  %.2fx uvloop (+%.0f ns/op)%s"
                    % (
                        it[0],
                        it[1],
                        sa["median"] / sb["median"],
                        sa["median"] - sb["median"],
                        ("; per process %s" % " ".join("%.2f" % r for r in pr))
                        if len(pr) > 1
                        else "",
                    )
                )
        print(file=out)
        if rows:
            print("%s is slower than uvloop in:" % k, file=out)
            print("\n".join(rows), file=out)
        else:
            print("%s is not slower than uvloop in any benchmark run here." % k, file=out)


def print_table(kinds, items, summary, out=sys.stdout):
    pairs = ratio_pairs(kinds)
    cell_w = 25
    hdr = "%-23s %6s " % ("benchmark", "N")
    hdr += "".join(k.rjust(cell_w) for k in kinds)
    hdr += "".join(("%s/%s" % (SHORT[a], SHORT[b])).rjust(7) for a, b in pairs)
    sub = "%-23s %6s " % ("", "")
    sub += "".join("median (best) spread".rjust(cell_w) for _ in kinds)
    print(hdr, file=out)
    print(sub, file=out)
    print("-" * len(hdr), file=out)
    flagged = False
    for name, n in items:
        row = "%-23s %6d " % (name, n)
        for k in kinds:
            s = summary.get((name, n), {}).get(k)
            if s is None:
                cell = "-"
            elif "error" in s:
                cell = "FAILED"
            else:
                mark = " "
                if s.get("cpu_ratio") is not None and s["cpu_ratio"] < 0.8:
                    mark = "*"
                    flagged = True
                cell = "%s (%s) %3.0f%%%s" % (
                    fmt_ns(s["median"]),
                    fmt_ns(s["best"]),
                    100 * s["spread"],
                    mark,
                )
            row += cell.rjust(cell_w)
        for a, b in pairs:
            sa = summary.get((name, n), {}).get(a) or {}
            sb = summary.get((name, n), {}).get(b) or {}
            if "median" in sa and "median" in sb:
                row += ("%.2f" % (sa["median"] / sb["median"])).rjust(7)
            else:
                row += "-".rjust(7)
        print(row, file=out)
    print("-" * len(hdr), file=out)
    print(
        "ns per operation (wall clock, lower is better): median and best of all "
        "processes x repeats.\nspread: range of the per-process medians / median "
        "(with one process: range of the repeats).\nratio columns: median / median; "
        ">1 means the first loop is slower.",
        file=out,
    )
    if flagged:
        print(
            "*: process CPU time < 80% of wall time while timed, i.e. that loop "
            "slept, waited on the GIL or was preempted\n   by another process (see the header's "
            "background load).",
            file=out,
        )


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--loops",
        default=",".join(ALL_KINDS),
        help="comma-separated loop kinds (default: %(default)s); a kind that "
        "cannot be imported is reported and skipped",
    )
    p.add_argument(
        "-b",
        "--bench",
        default="",
        help="comma-separated benchmark names or name prefixes (default: all)",
    )
    p.add_argument(
        "-n",
        "--sizes",
        default="",
        help="comma-separated operation counts; every selected benchmark runs "
        "at each size (default: a per-benchmark size, see --list)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: small sizes, 1 process, 3 repeats (a few seconds)",
    )
    p.add_argument(
        "-p",
        "--processes",
        type=int,
        default=None,
        help="fresh processes per loop kind, run one after another (default 3, quick 1)",
    )
    p.add_argument(
        "-r",
        "--repeats",
        type=int,
        default=None,
        help="timed repeats per process (default 7, quick 3)",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument(
        "--min-cpu",
        type=float,
        default=0.9,
        metavar="RATIO",
        help="retake a timed run whose process CPU time is below RATIO x its wall "
        "time, i.e. it was preempted or slept (default %(default)s; 0 = off)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=5,
        help="how often one timed run may be retaken (default %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds one run may take before its worker is killed (default %(default)s)",
    )
    p.add_argument(
        "--json", metavar="PATH", help="also write machine info, every summary and raw samples here"
    )
    p.add_argument(
        "--greenhub-path",
        default=REPO,
        help="directory put first on sys.path to import greenhub (default: this "
        "repo, i.e. the in-place `make build`); '' for the installed one",
    )
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per operation under valgrind's callgrind instead "
        "of timing: slow, but deterministic (immune to a noisy machine)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal
    p.add_argument("--instr-items", help=argparse.SUPPRESS)  # internal
    a = p.parse_args(argv)
    if a.processes is None:
        a.processes = 1 if a.quick else 3
    if a.repeats is None:
        a.repeats = 3 if a.quick else 7
    if a.processes < 1 or a.repeats < 1 or a.warmup < 0:
        p.error("--processes and --repeats must be >= 1, --warmup >= 0")
    return a


def select_benches(spec):
    if not spec:
        return list(BENCHMARKS)
    out = []
    for tok in spec.split(","):
        tok = tok.strip()
        hits = [n for n in BENCHMARKS if n == tok or n.startswith(tok)]
        if not hits:
            sys.exit("unknown benchmark %r (see --list)" % tok)
        out += [h for h in hits if h not in out]
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.list:
        for b in BENCHMARKS.values():
            print(
                "%-24s n=%-6d quick=%-5d per %-5s %s"
                % (b.name, b.default_n, b.quick_n, b.unit, b.desc)
            )
        return 0

    kinds = []
    for k in args.loops.split(","):
        k = k.strip()
        if k and k not in ALL_KINDS:
            sys.exit("unknown loop kind %r (choose from %s)" % (k, ", ".join(ALL_KINDS)))
        if k and k not in kinds:
            kinds.append(k)
    names = select_benches(args.bench)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    items = []
    for name in names:
        b = BENCHMARKS[name]
        for n in sizes or [b.quick_n if args.quick else b.default_n]:
            items.append((name, n))

    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if args.instructions:
        if not args.sizes:  # callgrind is ~50x slower: use the small sizes
            items = [(name, BENCHMARKS[name].quick_n) for name in names]
        return main_instructions(args, kinds, items, log)
    minfo = sched_machine_info()
    load = BackgroundLoad()

    raw = {k: {} for k in kinds}  # kind -> item -> [per-process [ns/op, ...]]
    raw_cpu = {k: {} for k in kinds}
    failures = {k: {} for k in kinds}  # kind -> item -> message
    kinfo, unavailable = {}, {}
    rejected = {}  # kind -> samples retaken (see --min-cpu)
    builds = {}  # kind -> set of builds seen (rebuilt mid-run?)

    def spawn(k):
        try:
            w = Worker(k, args)
        except WorkerFailed as e:
            unavailable[k] = str(e)
            return None
        if w.unavailable:
            unavailable[k] = w.unavailable
            log("%s unavailable: %s" % (k, w.unavailable))
            return None
        kinfo[k] = w.info
        if w.info.get("build"):
            builds.setdefault(k, set()).add(w.info["build"])
        return w

    def replace(workers, k):
        """The worker for `k` died or hung: start a fresh one for the rest."""
        workers.pop(k).close()
        w = spawn(k)
        if w is not None:
            workers[k] = w

    def fail(workers, k, it, e):
        """A request for item `it` failed (an error in the benchmark, or WorkerFailed):
        record it and replace a worker that died or hung."""
        failures[k][it] = str(e)
        log("  %s %s n=%d FAILED: %s" % (k, it[0], it[1], e))
        if isinstance(e, WorkerFailed):
            replace(workers, k)

    for rnd in range(args.processes):
        workers = {}
        for k in kinds:
            if k not in unavailable:
                w = spawn(k)
                if w:
                    workers[k] = w
        for it in items:
            name, n = it
            active = []
            for k in kinds:
                if k not in workers or it in failures[k]:
                    continue
                try:
                    workers[k].request(cmd="begin", bench=name, n=n, warmup=args.warmup)
                    active.append(k)
                    raw[k].setdefault(it, []).append([])
                    raw_cpu[k].setdefault(it, []).append([])
                except RuntimeError as e:
                    fail(workers, k, it, e)
            log(
                "process %d/%d  %-24s n=%-7d %s"
                % (rnd + 1, args.processes, name, n, " ".join(active))
            )
            for rep in range(args.repeats):
                # Interleave the kinds repeat by repeat, rotating who goes first,
                # so drifting background load is shared fairly.
                order = active[rep % len(active) :] + active[: rep % len(active)] if active else []
                for k in order:
                    if it in failures[k]:
                        continue
                    try:
                        msg = workers[k].request(cmd="sample")
                        # A run during which the process got less than
                        # --min-cpu of the wall time was preempted (or slept):
                        # it measures the machine, not the loop.  Retake it.
                        tries = 0
                        while msg["cpu"] < args.min_cpu * msg["wall"] and tries < args.retries:
                            tries += 1
                            rejected[k] = rejected.get(k, 0) + 1
                            msg = workers[k].request(cmd="sample")
                    except RuntimeError as e:
                        fail(workers, k, it, e)
                        continue
                    raw[k][it][-1].append(msg["wall"])
                    raw_cpu[k][it][-1].append(msg["cpu"])
            for k in active:
                if k in workers:  # close the loop even after a failed run
                    try:
                        workers[k].request(cmd="end")
                    except RuntimeError as e:  # WorkerFailed is one too
                        log("  %s %s n=%d: error closing the loop: %s" % (k, name, n, e))
                        if isinstance(e, WorkerFailed):
                            replace(workers, k)
        for w in workers.values():
            w.close()

    background, elapsed = load.stop()

    shown = [k for k in kinds if k not in unavailable]
    summary = {}
    for it in items:
        row = summary.setdefault(it, {})
        for k in shown:
            procs = [p for p in raw[k].get(it, []) if p]
            if it in failures[k]:
                row[k] = {"error": failures[k][it]}
            elif procs:
                s = summarize(procs)
                c = [v for p in raw_cpu[k][it] for v in p]
                s["cpu_median"] = statistics.median(c)
                s["cpu_ratio"] = s["cpu_median"] / s["median"]
                row[k] = s

    # ---- report ----
    print("greenhub scheduling micro-benchmarks  %s  (took %.0f s)" % (minfo["date"], elapsed))
    print(
        "machine : %s, %s cpus (%s usable), %s, load avg %s"
        % (
            minfo["cpu_model"],
            minfo["cpu_count"],
            minfo["cpus_usable"],
            minfo["platform"],
            " ".join("%.2f" % x for x in minfo["loadavg"]) if minfo["loadavg"] else "?",
        )
    )
    if background:
        print(
            "          during the run: other processes kept %.2f cpus busy, steal %.1f%%%s"
            % (
                background["other_busy_cpus"],
                background["steal_pct"],
                "  <-- NOISY: numbers are suspect" if background["other_busy_cpus"] > 0.25 else "",
            )
        )
    print(
        "python  : %s, %s, %s (%s); GIL switch interval %g ms"
        % (
            platform.python_version(),
            minfo["python_implementation"],
            minfo["python_executable"],
            minfo["python_build_flags"],
            1000 * minfo["gil_switch_interval_s"],
        )
    )
    for k in kinds:
        if k in unavailable:
            print("%-8s: UNAVAILABLE: %s" % (k, (unavailable[k].strip().splitlines() or ["?"])[-1]))
            continue
        i = kinfo.get(k) or {}
        extra = ", ".join("%s %s" % (x, i[x]) for x in ("libuv", "libev", "greenlet") if i.get(x))
        if i.get("build"):
            extra += ", " + i["build"]
        print(
            "%-8s: %s%s; %s%s%s"
            % (
                k,
                i.get("version"),
                (" (" + extra + ")") if extra else "",
                i.get("loop_class"),
                ("; repo " + minfo["repo_git"]) if k == "greenhub" and minfo["repo_git"] else "",
                "; DEBUG MODE ON" if i.get("debug") else "",
            )
        )
    print(
        "run     : %d fresh process(es) per loop kind x %d timed repeats (after %d warm-up), "
        "kinds interleaved, gc disabled while timing" % (args.processes, args.repeats, args.warmup)
    )
    for k, seen in builds.items():
        if len(seen) > 1:
            print(
                "WARNING : %s was rebuilt during the run (%s): its rows mix builds"
                % (k, "; ".join(sorted(seen)))
            )
    if rejected:
        print(
            "          retaken because CPU < %g x wall (preempted): %s"
            % (args.min_cpu, ", ".join("%s %d" % (k, rejected[k]) for k in kinds if k in rejected))
        )
    print()
    if shown:
        print_table(shown, items, summary)
        print_slower(shown, items, summary, raw)
    for k in kinds:
        for (name, n), msg in failures[k].items():
            print("FAILED %s %s n=%d: %s" % (k, name, n, msg))

    if args.json:
        doc = {
            "machine": minfo,
            "background": background,
            "elapsed_s": elapsed,
            "config": {
                "loops": kinds,
                "processes": args.processes,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "quick": args.quick,
                "min_cpu": args.min_cpu,
                "retries": args.retries,
            },
            "retaken_samples": rejected,
            "loops": {k: kinfo.get(k) for k in shown},
            "unavailable": unavailable,
            "benchmarks": {
                b: {"desc": BENCHMARKS[b].desc, "unit": BENCHMARKS[b].unit} for b in names
            },
            "results": [
                {
                    "bench": name,
                    "n": n,
                    "ratios": {
                        "%s/%s" % (a, b): summary[(name, n)][a]["median"]
                        / summary[(name, n)][b]["median"]
                        for a, b in ratio_pairs(shown)
                        if "median" in summary[(name, n)].get(a, {})
                        and "median" in summary[(name, n)].get(b, {})
                    },
                    "ratios_per_process": {
                        "%s/%s" % (a, b): per_process_ratios(raw, a, b, (name, n))
                        for a, b in ratio_pairs(shown)
                    },
                    "loops": {
                        k: dict(
                            summary[(name, n)].get(k, {}),
                            wall_samples=raw[k].get((name, n)),
                            cpu_samples=raw_cpu[k].get((name, n)),
                        )
                        for k in shown
                    },
                }
                for name, n in items
            ],
        }
        write_json(args.json, doc, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
