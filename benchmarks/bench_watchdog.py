#!/usr/bin/env python3
"""What the watchdog costs when it is on: the same workloads with it off and on, in
one process, interleaved (off, on, on, off, ...) so that background load falls on
both alike; reported as ratios of median times (on / off; 1.00 = no cost).

    python3 benchmarks/bench_watchdog.py            # ~30 s
    python3 benchmarks/bench_watchdog.py --quick    # smoke run

The loop thread does the same work either way (it bumps a counter per callback
whether or not a watchdog thread reads it); "on" adds the watchdog thread, which
wakes every threshold/4 - so the thresholds measured are 0.1 s (a typical
setting) and 0.004 s (a wakeup every millisecond, far more than anyone needs).
"""

import argparse
import asyncio
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import greenhub  # noqa: E402


def call_soon_chain(loop, n):
    done = loop.create_future()
    left = [n]

    def step():
        left[0] -= 1
        if left[0]:
            loop.call_soon(step)
        else:
            done.set_result(None)

    loop.call_soon(step)
    loop.run_until_complete(done)


def task_steps(loop, n):
    async def worker(k):
        for _ in range(k):
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(*(worker(n // 100) for _ in range(100)))

    loop.run_until_complete(main())


def vthread_awaits(loop, n):
    def worker(k):
        for _ in range(k):
            greenhub.await_(asyncio.sleep(0))

    async def main():
        await asyncio.gather(*(greenhub.spawn(worker, n // 100) for _ in range(100)))

    loop.run_until_complete(main())


def sock_echo(loop, n):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    msg = b"x" * 1024

    async def server():
        for _ in range(n):
            data = await loop.sock_recv(b, 65536)
            await loop.sock_sendall(b, data)

    async def client():
        for _ in range(n):
            await loop.sock_sendall(a, msg)
            got = 0
            while got < len(msg):
                got += len(await loop.sock_recv(a, 65536))

    async def main():
        await asyncio.gather(server(), client())

    try:
        loop.run_until_complete(main())
    finally:
        a.close()
        b.close()


CASES = [
    ("call_soon chain", call_soon_chain, 200_000),
    ("task steps (sleep(0), 100 tasks)", task_steps, 100_000),
    ("vthread await_(sleep(0)), 100 vthreads", vthread_awaits, 50_000),
    ("sock_recv/sock_sendall echo, 1 KiB", sock_echo, 20_000),
]


def timed(fn, n, threshold):
    """(wall, loop-thread CPU, other threads' CPU) seconds per operation."""
    loop = greenhub.new_event_loop()
    try:
        if threshold is not None:
            loop.set_watchdog(threshold, handler=lambda lp, ctx: None)
        fn(loop, n // 10)  # warm-up
        w0, t0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
        fn(loop, n)
        w, t, p = time.perf_counter() - w0, time.thread_time() - t0, time.process_time() - p0
        return w / n, t / n, max(p - t, 0.0) / w
    finally:
        loop.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else args.rounds
    scale = 0.1 if args.quick else 1.0
    thresholds = [0.1, 0.004]
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {rounds} rounds")
    print(
        "Ratios on/off of medians: wall time, and CPU time of the loop thread alone\n"
        "(time.thread_time(), which background load does not inflate); 'wd CPU' is the\n"
        "CPU the other threads (the watchdog) used, as a share of the run's wall time."
    )
    header = "".join(
        f"{'wall ' + format(t, 'g'):>11}{'loop CPU':>10}{'wd CPU':>9}" for t in thresholds
    )
    print(f"{'workload':<40}{'off ns/op':>10}{header}")
    for name, fn, n in CASES:
        n = max(100, int(n * scale))
        res = {None: [], **{t: [] for t in thresholds}}
        order = [None, *thresholds]
        for r in range(rounds):
            for th in order if r % 2 == 0 else reversed(order):
                res[th].append(timed(fn, n, th))

        def med(th, i, res=res):
            return statistics.median(x[i] for x in res[th])

        cols = "".join(
            f"{med(t, 0) / med(None, 0):>11.3f}{med(t, 1) / med(None, 1):>10.3f}"
            f"{med(t, 2):>8.2%} "
            for t in thresholds
        )
        print(f"{name:<40}{med(None, 0) * 1e9:>10.0f}{cols}", flush=True)


if __name__ == "__main__":
    main()
