#!/usr/bin/env python3
"""greenhub's virtual-thread toolkit against gevent, on the same workloads, in one run.

Workloads (each compares greenhub with gevent; add one by writing a function
`workload_NAME(args) -> (report lines, json dict)` and listing it in WORKLOADS):

    echo   TCP echo server, one virtual thread / greenlet per connection, plain blocking-style
           socket code: `while data := conn.recv(64 KiB): conn.sendall(data)`.
             greenhub         greenhub.socket sockets, greenhub.spawn() per connection
             greenhub-await_  the same loop with greenhub.await_(loop.sock_recv(...)) /
                              greenhub.await_(loop.sock_sendall(...)) (for reference)
             gevent           gevent.server.StreamServer, gevent sockets
           Load: bench_echo.py's C load generator (echo_client.c), 1 KiB messages, 64
           connections by default; the server is pinned to one CPU and the client to another.
           Reported: round trips/s, the server's user and system CPU per round trip, and the
           greenhub/gevent ratios.  Issue 5's goal: greenhub's user CPU per round trip at most
           half of gevent's.

    sleep  10,000 virtual threads / greenlets that each call time.sleep(0.1), patched by
           greenhub.monkey / gevent.monkey, spawned at once and joined; each library in fresh
           processes, a cold round then a warm one.  Reported: wall time (and its part beyond
           the 0.1 s sleep: the scheduling cost), CPU time and peak RSS, and the ratios.
           Issue 5's goal: about 0.1 s of wall time plus the scheduling cost.

    python3 benchmarks/bench_green.py                 # 3 rounds x 2 s per server
    python3 benchmarks/bench_green.py --quick         # smoke run, a few seconds
    python3 benchmarks/bench_green.py --json benchmarks/results/green.json
"""

import argparse
import os
import shutil
import socket
import sys
import tempfile

from _common import (
    BackgroundLoad,
    ServerProcess,
    add_server_run_args,
    emit,
    filter_ids,
    fmt_ratio,
    machine_info,
    pin_cpus,
    python_build_flags,
    ratio,
    run_server_rounds,
    serve_worker,
    server_header,
    starved,
    use_greenhub_path,
    write_json,
)
from bench_echo import build_client, fmt_us, run_client, summarize_runs

READ_SIZE = 65536

# --------------------------------------------------------------------------
# echo: servers (worker side)
# --------------------------------------------------------------------------

ECHO_SERVERS = {
    "greenhub": "greenhub.socket + greenhub.spawn per connection: conn.recv / conn.sendall",
    "greenhub-await_": "greenhub.spawn per connection: await_(loop.sock_recv / sock_sendall)",
    "gevent": "gevent.server.StreamServer, a greenlet per connection: conn.recv / conn.sendall",
}
# The loop kind each server runs on (the worker's --loop).
ECHO_LOOP = {"greenhub": "greenhub", "greenhub-await_": "greenhub", "gevent": "gevent"}


def echo_green(conn):
    """Plain blocking-style code; in a virtual thread only this connection waits."""
    with conn:
        try:
            while data := conn.recv(READ_SIZE):
                conn.sendall(data)
        except ConnectionError:
            pass


def echo_await(loop, conn):
    from greenhub import await_

    with conn:
        try:
            while data := await_(loop.sock_recv(conn, READ_SIZE)):
                await_(loop.sock_sendall(conn, data))
        except ConnectionError:
            pass


def listener(sockmod):
    lsock = sockmod.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(128)
    return lsock


async def start_greenhub(loop):
    import greenhub
    import greenhub.socket as gsocket

    lsock = listener(gsocket)

    def accept_forever():
        while True:
            conn, _ = lsock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            greenhub.spawn(echo_green, conn)

    loop._bench_acceptor = greenhub.spawn(accept_forever)
    return lsock.getsockname()[1]


async def start_greenhub_await(loop):
    import greenhub

    lsock = listener(socket)
    lsock.setblocking(False)

    def accept_forever():
        while True:
            conn, _ = greenhub.await_(loop.sock_accept(lsock))
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            greenhub.spawn(echo_await, loop, conn)

    loop._bench_acceptor = greenhub.spawn(accept_forever)
    return lsock.getsockname()[1]


def serve_gevent(cpu):
    """The worker for gevent: the same protocol as _common.serve_worker."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        import gevent
        import gevent.select
        import gevent.server
        import greenlet
    except BaseException as e:
        emit({"event": "unavailable", "error": "%s: %s" % (type(e).__name__, e)})
        return 0

    def handle(conn, _addr):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        echo_green(conn)

    server = gevent.server.StreamServer(("127.0.0.1", 0), handle)
    server.start()
    info = {
        "kind": "gevent",
        "version": gevent.__version__,
        "greenlet": greenlet.__version__,
        "loop_class": type(gevent.get_hub().loop).__module__,
    }
    emit({"event": "ready", "port": server.server_port, "info": info})
    gevent.select.select([sys.stdin.fileno()], [], [])  # until the parent writes or goes
    sys.stderr.flush()
    os._exit(0)


ECHO_STARTERS = {"greenhub": start_greenhub, "greenhub-await_": start_greenhub_await}


def echo_worker(args):
    if args.worker == "gevent":
        return serve_gevent(args.cpu)
    use_greenhub_path(args.greenhub_path)
    return serve_worker("greenhub", ECHO_STARTERS[args.worker], args.cpu)


# --------------------------------------------------------------------------
# echo: parent
# --------------------------------------------------------------------------


def workload_echo(args):
    kinds = filter_ids(list(ECHO_SERVERS), args.servers)
    cells = [(int(args.size), int(args.conns))]
    server_cpu, client_cpu = pin_cpus(args.pin)
    pairs = [(s, ECHO_LOOP[s]) for s in kinds]

    def start_server(s, k):
        argv = [os.path.abspath(__file__), "--worker", s, "--greenhub-path", args.greenhub_path]
        if server_cpu is not None:
            argv += ["--cpu", str(server_cpu)]
        return ServerProcess(argv, timeout=args.timeout)

    tmpdir = tempfile.mkdtemp(prefix="bench-green-")
    try:
        exe = build_client(tmpdir)
        raw, loop_info, unavailable, warnings = run_server_rounds(
            pairs,
            cells,
            args.rounds,
            start_server,
            lambda srv, cell: run_client(exe, srv, cell, args, client_cpu),
            disturbed=lambda r, cell: starved(r, cell[1], args.min_busy),
            retries=args.retries,
        )
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    summary = {(s, cell): summarize_runs(raw[(s, k, cell)]) for (s, k, cell) in raw}
    cell = cells[0]
    L = ["", "== echo: %d B messages, %d connections ==" % cell]
    for k, i in loop_info.items():
        L.append(
            "%-9s %s (greenlet %s); %s"
            % (k + ":", i.get("version"), i.get("greenlet"), i.get("loop_class"))
        )
    for k, why in unavailable.items():
        L.append("%-9s UNAVAILABLE: %s" % (k + ":", why[-200:]))
    L.append(
        "run: %d round(s) of fresh servers, %g s warm-up + %g s measured each; server on CPU %s, "
        "client on CPU %s; medians"
        % (args.rounds, args.warmup, args.duration, server_cpu, client_cpu)
    )
    L.append(
        "%-16s %9s %8s %8s %9s %9s" % ("server", "rt/s", "usr us", "sys us", "usr/gev", "cpu/gev")
    )
    gev = summary.get(("gevent", cell)) or {}
    results = {}
    for s in kinds:
        m = summary.get((s, cell))
        if not m or m["rt_per_s"] is None:
            L.append("%-16s %9s" % (s, "FAILED" if m else "-"))
            continue
        results[s] = m
        L.append(
            "%-16s %9.0f %8s %8s %9s %9s"
            % (
                s,
                m["rt_per_s"],
                fmt_us(m["user_us"]),
                fmt_us(m["sys_us"]),
                fmt_ratio(ratio(m["user_us"], gev.get("user_us"))),
                fmt_ratio(ratio(m["cpu_us"], gev.get("cpu_us"))),
            )
        )
    gh, gv = results.get("greenhub"), results.get("gevent")
    if gh and gv:
        r = gh["user_us"] / gv["user_us"]
        L.append(
            "goal (issue 5): greenhub user CPU per round trip <= 0.5 x gevent's: %.2f x, %s"
            % (r, "MET" if r <= 0.5 else "MISSED")
        )
    for (s, _k, _cell), runs in raw.items():
        for run in runs:
            if "error" in run:
                L.append("FAILED %s: %s" % (s, run["error"]))
    L += ["WARNING: " + w for w in warnings]
    return L, {
        "servers": {s: ECHO_SERVERS[s] for s in kinds},
        "loops": loop_info,
        "results": results,
    }


# --------------------------------------------------------------------------
# sleep: 10,000 virtual threads / greenlets each calling a patched time.sleep()
# --------------------------------------------------------------------------

SLEEP_KINDS = ("greenhub", "gevent")


def sleep_child(kind, n, secs, greenhub_path):
    """Runs in a fresh interpreter: two rounds of n concurrent time.sleep(secs)
    calls under the library's monkey patching; prints one JSON line."""
    import json
    import resource
    import time

    def rounds(spawn_all):
        out = []
        for _ in range(2):  # a cold round (greenlets made), then a warm one
            ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            spawn_all()
            wall = time.perf_counter() - t0
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
            out.append({"wall_s": wall, "cpu_s": cpu})
        return out

    if kind == "gevent":
        from gevent import monkey

        monkey.patch_time()
        import gevent

        def spawn_all():
            gevent.joinall([gevent.spawn(time.sleep, secs) for _ in range(n)])

        res = rounds(spawn_all)
        patched = "gevent.monkey.patch_time()"
    else:
        use_greenhub_path(greenhub_path)
        import asyncio

        import greenhub

        try:
            from greenhub import monkey

            monkey.patch_time()
            patched = "greenhub.monkey.patch_time()"
        except ImportError:  # before greenhub.monkey existed: the same call, unpatched
            time.sleep = greenhub.sleep
            patched = "time.sleep = greenhub.sleep"

        def spawn_all():
            greenhub.await_(asyncio.gather(*(greenhub.spawn(time.sleep, secs) for _ in range(n))))

        res = greenhub.run(rounds, spawn_all)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rounds": res, "patched": patched, "maxrss_kib": maxrss}))
    return 0


def workload_sleep(args):
    import json
    import statistics
    import subprocess

    n, secs = int(args.sleepers), float(args.sleep)
    reps = 1 if args.quick else 3
    per = {k: [] for k in SLEEP_KINDS}
    errors = {}
    for _ in range(reps):
        for kind in SLEEP_KINDS:
            argv = [sys.executable, os.path.abspath(__file__), "--sleep-child", kind]
            argv += ["--sleepers", str(n), "--sleep", str(secs)]
            argv += ["--greenhub-path", args.greenhub_path]
            p = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout)
            if p.returncode != 0:
                errors[kind] = p.stderr[-300:]
                continue
            per[kind].append(json.loads(p.stdout.strip().splitlines()[-1]))
    L = ["", "== sleep: %d concurrent time.sleep(%g) under monkey patching ==" % (n, secs)]
    L.append(
        "%d run(s) per library, each a fresh process with a cold and a warm round; medians" % reps
    )
    L.append(
        "%-10s %12s %12s %12s %12s %10s"
        % ("library", "cold wall s", "warm wall s", "warm over", "warm cpu s", "maxrss MiB")
    )
    results = {}
    for kind in SLEEP_KINDS:
        runs = per[kind]
        if not runs:
            L.append("%-10s FAILED: %s" % (kind, errors.get(kind, "?")))
            continue
        m = {
            "cold_wall_s": statistics.median(r["rounds"][0]["wall_s"] for r in runs),
            "warm_wall_s": statistics.median(r["rounds"][1]["wall_s"] for r in runs),
            "warm_cpu_s": statistics.median(r["rounds"][1]["cpu_s"] for r in runs),
            "maxrss_kib": statistics.median(r["maxrss_kib"] for r in runs),
            "patched": runs[0]["patched"],
        }
        results[kind] = m
        L.append(
            "%-10s %12.3f %12.3f %12.3f %12.3f %10.1f"
            % (
                kind,
                m["cold_wall_s"],
                m["warm_wall_s"],
                m["warm_wall_s"] - secs,
                m["warm_cpu_s"],
                m["maxrss_kib"] / 1024,
            )
        )
    gh, gv = results.get("greenhub"), results.get("gevent")
    if gh and gv:
        L.append(
            "greenhub/gevent: scheduling cost beyond the %g s sleep %s (warm), %s (cold); cpu %s"
            % (
                secs,
                fmt_ratio(ratio(gh["warm_wall_s"] - secs, gv["warm_wall_s"] - secs)),
                fmt_ratio(ratio(gh["cold_wall_s"] - secs, gv["cold_wall_s"] - secs)),
                fmt_ratio(ratio(gh["warm_cpu_s"], gv["warm_cpu_s"])),
            )
        )
        L.append("patching: " + ", ".join("%s: %s" % (k, results[k]["patched"]) for k in results))
    return L, {"sleepers": n, "sleep_s": secs, "results": results}


WORKLOADS = {"echo": workload_echo, "sleep": workload_sleep}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round of short runs: a smoke test")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="workloads to run")
    ap.add_argument("-k", "--servers", default="", help="echo: server kinds to run (substrings)")
    ap.add_argument("--size", default="1024", help="echo: message size in bytes")
    ap.add_argument("--conns", default="64", help="echo: concurrent connections")
    ap.add_argument("-r", "--rounds", type=int, help="rounds of fresh servers (3; quick 1)")
    ap.add_argument("-t", "--duration", type=float, help="measured seconds per run (2; quick 0.5)")
    ap.add_argument("-w", "--warmup", type=float, help="seconds before that (0.5; quick 0.2)")
    ap.add_argument("--sleepers", default="10000", help="sleep: concurrent sleepers")
    ap.add_argument("--sleep", default="0.1", help="sleep: seconds each sleeps")
    ap.add_argument("--sleep-child", help=argparse.SUPPRESS)
    add_server_run_args(ap)
    args = ap.parse_args()
    if args.sleep_child:
        return sleep_child(
            args.sleep_child, int(args.sleepers), float(args.sleep), args.greenhub_path
        )
    if args.worker:
        return echo_worker(args)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (0.5 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.2 if args.quick else 0.5)
    server_cpu, client_cpu = pin_cpus(args.pin)
    minfo = machine_info(
        python_build_flags=python_build_flags(),
        cpus_usable=len(os.sched_getaffinity(0)),
        pin={"server": server_cpu, "client": client_cpu},
    )
    load = BackgroundLoad()
    lines, docs = [], {}
    for name in filter_ids(list(WORKLOADS), args.workloads):
        wl_lines, docs[name] = WORKLOADS[name](args)
        lines += wl_lines
    background, elapsed = load.stop()
    L = server_header(
        "greenhub vs gevent (bench_green.py, took %.0f s)" % elapsed, minfo, background, [], {}, {}
    )
    print("\n".join(L + lines))
    if args.json:
        doc = {"machine": minfo, "background": background, "elapsed_s": elapsed}
        doc["workloads"] = docs
        doc["table"] = "\n".join(L + lines)
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
