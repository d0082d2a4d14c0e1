#!/usr/bin/env python3
"""TCP echo round trips: greenhub vs uvloop vs the stock loop, each server in its own process.

Server kinds (each on every loop kind; `vthread` on greenhub only):

    protocol  loop.create_server with a Protocol whose data_received writes the data back
    streams   asyncio.start_server: await reader.read(64 KiB), writer.write, await writer.drain()
    sock      loop.sock_accept; a task per connection: await loop.sock_recv(64 KiB) /
              await loop.sock_sendall()
    vthread   the sock server's connection task calls a plain function that does the same
              through greenhub.await_(loop.sock_recv(...)) / greenhub.await_(loop.sock_sendall(...))

The load generator is echo_client.c, compiled at run time with `cc -O2` into a temporary
directory.  Each of its connections sends SIZE bytes, reads the SIZE bytes back, and
repeats; after a warm-up it counts the round trips of a fixed window and reads the
server's user and system CPU time (/proc/<pid>/stat) at the window's edges.  The server
is pinned to one CPU and the client to another (--pin).

    python3 benchmarks/bench_echo.py                 # 3 rounds x 40 runs of 2 s, ~4-5 min
    python3 benchmarks/bench_echo.py --quick         # smoke run, ~20 s
    python3 benchmarks/bench_echo.py -k protocol,sock --sizes 1024 --conns 64
    python3 benchmarks/bench_echo.py --json benchmarks/results/echo.json
"""

import argparse
import asyncio
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile

from _common import (
    LOOP_KINDS,
    RATIO_NAME,
    BackgroundLoad,
    ServerProcess,
    add_server_run_args,
    filter_ids,
    fmt_ratio,
    greenhub_ratio_pairs,
    load_notes,
    machine_info,
    malloc_env,
    pin_cpus,
    pinned,
    python_build_flags,
    ratio,
    retaken_line,
    run_server_rounds,
    serve_worker,
    server_header,
    starved,
    use_greenhub_path,
    write_json,
)

SERVERS = {
    "protocol": "loop.create_server, Protocol.data_received -> transport.write",
    "streams": "asyncio.start_server: await reader.read, writer.write, await writer.drain()",
    "sock": "loop.sock_accept, a task per connection: await loop.sock_recv / sock_sendall",
    "vthread": "sock, but the task calls a sync function: greenhub.await_(loop.sock_recv(...))",
}
GREENHUB_ONLY = ("vthread",)
READ_SIZE = 65536
CLIENT_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "echo_client.c")

# The I/O milestone's budget: server user CPU (us) per 1 KiB round trip, 64 connections.
# (uvloop as measured when the budget was set, greenhub's goal)
GOALS = {"protocol": (0.85, 0.5), "streams": (2.8, 2.2), "sock": (6.5, 3.0)}


# --------------------------------------------------------------------------
# Servers (worker side)
# --------------------------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def start_protocol(loop):
    server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
    return server.sockets[0].getsockname()[1]


async def echo_streams(reader, writer):
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def start_streams(loop):
    server = await asyncio.start_server(echo_streams, "127.0.0.1", 0)
    return server.sockets[0].getsockname()[1]


async def echo_sock(loop, conn):
    with conn:
        try:
            while data := await loop.sock_recv(conn, READ_SIZE):
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass


def echo_sync(loop, conn):
    """Plain synchronous code: each await_ suspends only the task it runs in."""
    from greenhub import await_

    with conn:
        try:
            while data := await_(loop.sock_recv(conn, READ_SIZE)):
                await_(loop.sock_sendall(conn, data))
        except ConnectionError:
            pass


async def echo_vthread(loop, conn):
    echo_sync(loop, conn)


def sock_server(handler):
    async def start(loop):
        lsock = socket.socket()
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(128)
        lsock.setblocking(False)
        tasks = set()

        async def accept():
            while True:
                conn, _ = await loop.sock_accept(lsock)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                task = loop.create_task(handler(loop, conn))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        tasks.add(loop.create_task(accept()))
        return lsock.getsockname()[1]

    return start


STARTERS = {
    "protocol": start_protocol,
    "streams": start_streams,
    "sock": sock_server(echo_sock),
    "vthread": sock_server(echo_vthread),
}


# --------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------


def build_client(tmpdir):
    """Compile echo_client.c with `cc -O2` (or $CC) into tmpdir; its path."""
    cc = shlex.split(os.environ.get("CC", "")) or [shutil.which("cc") or shutil.which("gcc") or ""]
    if not cc[0] or not shutil.which(cc[0]):
        sys.exit(
            "bench_echo.py compiles its load generator and needs a C compiler: "
            "apt-get install gcc, or set CC"
        )
    exe = os.path.join(tmpdir, "echo_client")
    r = subprocess.run(
        [*cc, "-O2", "-o", exe, CLIENT_SRC], capture_output=True, text=True, timeout=120
    )
    if r.returncode:
        sys.exit("compiling %s failed:\n%s" % (CLIENT_SRC, r.stderr))
    return exe


def run_client(exe, srv, cell, args, client_cpu):
    """One client run against server `srv`: a result dict, or {"error": ...}."""
    size, conns = cell
    argv = [exe, "127.0.0.1", srv.port, conns, size, args.warmup, args.duration, srv.pid]
    try:
        p = subprocess.run(
            [str(a) for a in argv],
            capture_output=True,
            text=True,
            preexec_fn=pinned(client_cpu),
            timeout=args.warmup + args.duration + 30,
        )
    except subprocess.TimeoutExpired:
        return {"error": "the client timed out"}
    if p.returncode:
        return {"error": "client: %s" % (p.stderr.strip()[-300:] or "exit %d" % p.returncode)}
    r = json.loads(p.stdout)
    n, secs = r["round_trips"], r["seconds"]
    if not n:
        return {"error": "no round trip completed in %.1f s" % secs}
    return dict(
        r,
        rt_per_s=n / secs,
        user_us=r["server_user"] / n * 1e6,
        sys_us=r["server_sys"] / n * 1e6,
        faults=r["server_minflt"] / n,
        server_busy=(r["server_user"] + r["server_sys"]) / secs,
        client_busy=r["client_cpu"] / secs,
    )


def fmt_size(n):
    return "%dKiB" % (n // 1024) if n % 1024 == 0 else "%dB" % n


def fmt_us(v):
    """Microseconds in at most 5 characters."""
    return "%.2f" % v if v < 9.995 else "%.1f" % v if v < 99.95 else "%.0f" % v


def summarize_runs(runs):
    """Medians over the rounds of one (server, loop, cell), and the errors."""
    ok = [r for r in runs if "error" not in r]
    out = {"errors": [r["error"] for r in runs if "error" in r]}
    for key in ("rt_per_s", "user_us", "sys_us", "faults", "server_busy", "client_busy"):
        out[key] = statistics.median(r[key] for r in ok) if ok else None
    out["cpu_us"] = out["user_us"] + out["sys_us"] if ok else None
    return out


def report(args, kinds, loops, cells, summary, pins):
    """The table, the ratios and the goal check: (lines, per-cell results for the JSON)."""
    pairs = greenhub_ratio_pairs(loops)
    L = [
        "run:     %d round(s) of fresh servers; per run %g s warm-up + %g s measured; "
        "servers interleaved; server on CPU %s, client on CPU %s"
        % (args.rounds, args.warmup, args.duration, *pins),
        "",
        "rt/s = round trips per second (all connections together); usr, sys = the server's "
        "CPU time in us per round trip; medians of %d round(s)" % args.rounds,
    ]
    head1 = "%-20s" % "" + "".join("  %-19s" % k for k in loops)
    head2 = "%-8s %5s %5s" % ("server", "size", "conns")
    head2 += "  %7s %5s %5s" % ("rt/s", "usr", "sys") * len(loops)
    if pairs:
        names = " ".join("%6s" % ("%s/%s" % (RATIO_NAME[a], RATIO_NAME[b])) for a, b in pairs)
        head1 += "  %-*s  %s" % (len(names), "rt/s ratio", "cpu/rt ratio")
        head2 += "  " + names + "  " + names
    L += [head1, head2, "-" * len(head2)]

    def peer(s, k, cell):  # vthread runs on greenhub only: compare with the others' sock
        return (
            summary.get((s if k == "greenhub" or s not in GREENHUB_ONLY else "sock", k, cell)) or {}
        )

    results = []
    for s in kinds:
        for cell in cells:
            row = "%-8s %5s %5s" % (s, fmt_size(cell[0]), cell[1])
            res = {"server": s, "size": cell[0], "conns": cell[1], "loops": {}, "ratios": {}}
            for k in loops:
                m = summary.get((s, k, cell))
                if not m:
                    row += "  %19s" % "-"
                    continue
                res["loops"][k] = m
                if m["rt_per_s"] is None:
                    row += "  %19s" % "FAILED"
                else:
                    row += "  %7.0f %5s %5s" % (
                        m["rt_per_s"],
                        fmt_us(m["user_us"]),
                        fmt_us(m["sys_us"]),
                    )
            if pairs:
                rt, cpu = [], []
                for a, b in pairs:
                    ma, mb = peer(s, a, cell), peer(s, b, cell)
                    for metric, cols in (("rt_per_s", rt), ("cpu_us", cpu)):
                        r = ratio(ma.get(metric), mb.get(metric))
                        res["ratios"]["%s/%s %s" % (a, b, metric)] = r
                        cols.append("%6s" % fmt_ratio(r))
                row += "  " + " ".join(rt) + "  " + " ".join(cpu)
            L.append(row)
            results.append(res)
    L += [
        "",
        "ratios: rt/s above 1 and cpu/rt (usr+sys) below 1 mean greenhub does better; "
        "vthread is compared with the other loops' sock rows.",
    ]
    L += load_notes(
        summary, loops, lambda c: "%s x %d" % (fmt_size(c[0]), c[1]), lambda c: c[1], "round trip"
    )
    if (1024, 64) in cells and "greenhub" in loops:
        L.append(
            "goals, server user CPU per 1 KiB round trip at 64 connections (the budget's "
            "uvloop figures came from another machine: compare the ratios too):"
        )
        for s, (uv_ref, goal) in GOALS.items():
            gh = (summary.get((s, "greenhub", (1024, 64))) or {}).get("user_us")
            uv = (summary.get((s, "uvloop", (1024, 64))) or {}).get("user_us")
            if gh is not None:
                L.append(
                    "  %-8s greenhub %5.2f us, goal <= %.1f: %-6s  greenhub/uvloop here %s, "
                    "goal/uvloop in the budget %.2f (%.1f/%.2f)"
                    % (
                        s,
                        gh,
                        goal,
                        "MET" if gh <= goal else "MISSED",
                        fmt_ratio(ratio(gh, uv)),
                        goal / uv_ref,
                        goal,
                        uv_ref,
                    )
                )
    for (s, k, cell), m in summary.items():
        for e in m["errors"]:
            L.append("FAILED %s on %s, %s x %d: %s" % (s, k, fmt_size(cell[0]), cell[1], e))
    return L, results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round of short runs: a smoke test")
    ap.add_argument("-k", "--servers", default="", help="server kinds to run (substrings)")
    ap.add_argument("--loops", default=",".join(LOOP_KINDS), help="loop kinds and their order")
    ap.add_argument("--sizes", default="1024,65536", help="message sizes in bytes")
    ap.add_argument("--conns", default="1,64", help="concurrent connections")
    ap.add_argument("-r", "--rounds", type=int, help="rounds of fresh servers (3; quick 1)")
    ap.add_argument("-t", "--duration", type=float, help="measured seconds per run (2; quick 0.3)")
    ap.add_argument("-w", "--warmup", type=float, help="seconds before that (0.5; quick 0.1)")
    add_server_run_args(ap)
    args = ap.parse_args()
    if args.worker:
        use_greenhub_path(args.greenhub_path)
        return serve_worker(args.loop, STARTERS[args.worker], args.cpu)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (0.3 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.1 if args.quick else 0.5)
    loops = [k for k in args.loops.split(",") if k]
    if any(k not in LOOP_KINDS for k in loops):
        sys.exit("--loops: choose from %s" % ", ".join(LOOP_KINDS))
    kinds = filter_ids(list(SERVERS), args.servers)
    cells = [(int(s), int(c)) for s in args.sizes.split(",") for c in args.conns.split(",")]
    server_cpu, client_cpu = pin_cpus(args.pin)
    pairs = [(s, k) for s in kinds for k in loops if k == "greenhub" or s not in GREENHUB_ONLY]

    def start_server(s, k):
        argv = [os.path.abspath(__file__), "--worker", s, "--loop", k]
        argv += ["--greenhub-path", args.greenhub_path]
        if server_cpu is not None:
            argv += ["--cpu", str(server_cpu)]
        return ServerProcess(argv, timeout=args.timeout)

    minfo = machine_info(
        python_build_flags=python_build_flags(),
        cpus_usable=len(os.sched_getaffinity(0)),
        malloc_env=malloc_env(),
        pin={"server": server_cpu, "client": client_cpu},
    )
    load = BackgroundLoad()
    tmpdir = tempfile.mkdtemp(prefix="bench-echo-")
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
    background, elapsed = load.stop()

    shown = [k for k in loops if k not in unavailable]
    summary = {key: summarize_runs(runs) for key, runs in raw.items()}
    L = server_header(
        "greenhub TCP echo benchmark (bench_echo.py, took %.0f s)" % elapsed,
        minfo,
        background,
        loops,
        loop_info,
        unavailable,
    )
    if retaken_line(raw, loops, args.min_busy):
        L.append(retaken_line(raw, loops, args.min_busy))
    lines, results = report(args, kinds, shown, cells, summary, (server_cpu, client_cpu))
    L += lines + ["WARNING: " + w for w in warnings]
    print("\n".join(L))
    if args.json:
        for res in results:
            for k, m in res["loops"].items():
                m["rounds"] = raw[(res["server"], k, (res["size"], res["conns"]))]
        doc = {
            "machine": minfo,
            "background": background,
            "elapsed_s": elapsed,
            "config": {
                k: getattr(args, k)
                for k in (
                    "rounds",
                    "duration",
                    "warmup",
                    "min_busy",
                    "retries",
                    "sizes",
                    "conns",
                    "quick",
                    "pin",
                )
            },
            "loops": loop_info,
            "unavailable": unavailable,
            "servers": {s: SERVERS[s] for s in kinds},
            "results": results,
            "table": "\n".join(L),
        }
        write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
