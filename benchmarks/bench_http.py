#!/usr/bin/env python3
"""HTTP/1.1 keep-alive requests: greenhub vs uvloop vs the stock loop, loaded with wrk.

A minimal HTTP/1.1 server answers every request with a fixed "Hello, World".  It
parses each request's line and headers (no request bodies; pipelined requests are
answered in order) and keeps the connection open unless the client asks to close it.
Two variants, each on every loop kind, each in its own process:

    protocol  loop.create_server with a Protocol: one response per complete request head
    streams   asyncio.start_server: await reader.readuntil(b"\\r\\n\\r\\n"), writer.write,
              await writer.drain()

The load is wrk (Debian package `wrk`) with one thread, pinned to another CPU than the
server (--pin).  Each run is a 1 s wrk warm-up, then the measured wrk run; requests/s
and the latencies come from wrk's report, the server's CPU per request from its user
and system time (/proc/<pid>/stat) around the measured run.

    python3 benchmarks/bench_http.py                 # 3 rounds x 6 runs of 1+3 s, ~1.5 min
    python3 benchmarks/bench_http.py --quick         # smoke run, ~10 s
    python3 benchmarks/bench_http.py --conns 1,64 --json benchmarks/results/http.json
"""

import argparse
import asyncio
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time

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
    "protocol": "loop.create_server, Protocol: one response per complete request head",
    "streams": "asyncio.start_server: await reader.readuntil(), writer.write, await drain()",
}
BODY = b"Hello, World"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


# --------------------------------------------------------------------------
# Servers (worker side)
# --------------------------------------------------------------------------


def parse_request(head):
    """Parse one request head (without its final CRLF CRLF): keep the connection open?

    ValueError if the request line is not `METHOD TARGET HTTP/1.x`."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError("not HTTP/1.x")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    return connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"


class HttpProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        buf = self.buf + data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            try:
                keep_alive = parse_request(buf[:end])
                self.transport.write(RESPONSE)
            except ValueError:
                self.transport.write(BAD_REQUEST)
                keep_alive = False
            buf = buf[end + 4 :]
            if not keep_alive:
                self.transport.close()
                break
        self.buf = buf


async def http_streams(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            try:
                keep_alive = parse_request(head[:-4])
            except ValueError:
                writer.write(BAD_REQUEST)
                break
            writer.write(RESPONSE)
            await writer.drain()
            if not keep_alive:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def start_protocol(loop):
    server = await loop.create_server(HttpProtocol, "127.0.0.1", 0)
    return server.sockets[0].getsockname()[1]


async def start_streams(loop):
    server = await asyncio.start_server(http_streams, "127.0.0.1", 0)
    return server.sockets[0].getsockname()[1]


STARTERS = {"protocol": start_protocol, "streams": start_streams}


# --------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(text):
    """wrk's '512.30us', '1.20ms', '2.00s' in seconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError("unexpected wrk time %r" % text)
    return float(m[1]) * _UNITS[m[2]]


def parse_wrk(out):
    """The numbers of wrk's --latency report."""
    m = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    r = dict(zip(("lat_avg", "lat_stdev", "lat_max"), map(_seconds, m.groups()), strict=True))
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M):
        r["lat_p" + pct] = _seconds(value)
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    r["requests"], r["seconds"] = int(m[1]), _seconds(m[2])
    r["req_per_s"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non_2xx"] = int(m[1]) if m else 0
    return r


# --- for the scripts that run one server process under wrk (bench_django.py,
# bench_wsgi.py): a free port, waiting for the server, wrk with one thread ---


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout):
    """Until `port` accepts connections; RuntimeError if `proc` exits first or
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)  # a child process: nothing to wait on but its port
    raise RuntimeError("server did not start")


def wrk_cpus(pin):
    """--pin (SERVER_CPU,CLIENT_CPU, 'auto' or 'none') as (server cpu, client cpu)."""
    if pin == "none" or (os.cpu_count() or 1) < 2:
        return (None, None)
    if pin == "auto":
        return (0, 1)
    return tuple(int(c) for c in pin.split(","))


def taskset(cpu):
    """The argv prefix that pins a command to `cpu` (none without taskset or a cpu)."""
    if cpu is None or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


def wrk_one_thread(port, path, conns, seconds, cpu):
    """wrk -t1 against 127.0.0.1:`port``path`, pinned to `cpu`: parse_wrk()'s numbers."""
    argv = taskset(cpu) + ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    argv += ["--timeout", "10s", f"http://127.0.0.1:{port}{path}"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if p.returncode:
        raise RuntimeError("wrk: " + (p.stderr.strip()[-300:] or f"exit {p.returncode}"))
    return parse_wrk(p.stdout)


def wrk(srv, conns, seconds, client_cpu):
    """Run wrk for whole `seconds`: (its stdout, its CPU seconds)."""
    argv = ["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--latency", "--timeout", "5s"]
    argv.append("http://127.0.0.1:%d/" % srv.port)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.run(
        argv, capture_output=True, text=True, preexec_fn=pinned(client_cpu), timeout=seconds + 30
    )
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise RuntimeError("wrk: %s" % (p.stderr.strip()[-300:] or "exit %d" % p.returncode))
    cpu = ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime
    return p.stdout, cpu


def wrk_version():
    p = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    return (p.stdout + p.stderr).split("\n")[0]


def run_wrk(srv, conns, args, client_cpu):
    """A warm-up and a measured wrk run against `srv`: a result dict, or {"error": ...}."""
    try:
        if args.warmup:
            wrk(srv, conns, args.warmup, client_cpu)
        u0, s0, f0 = srv.cpu()
        out, client = wrk(srv, conns, args.duration, client_cpu)
        u1, s1, f1 = srv.cpu()
        r = parse_wrk(out)
    except subprocess.TimeoutExpired:
        return {"error": "wrk timed out"}
    except (RuntimeError, AttributeError, ValueError, TypeError) as e:  # AttributeError: no match
        return {"error": "%s: %s" % (type(e).__name__, e)}
    n = r["requests"]
    if not n:
        return {"error": "no request completed"}
    if r["socket_errors"] or r["non_2xx"]:
        r["error"] = "wrk saw %d socket errors, %d non-2xx responses" % (
            r["socket_errors"],
            r["non_2xx"],
        )
    return dict(
        r,
        user_us=(u1 - u0) / n * 1e6,
        faults=(f1 - f0) / n,
        sys_us=(s1 - s0) / n * 1e6,
        server_busy=(u1 - u0 + s1 - s0) / r["seconds"],
        client_busy=client / r["seconds"],
    )


def fmt_time(s):
    """Seconds as '512us', '1.23ms' (at most 6 characters)."""
    if s is None:
        return "-"
    us = s * 1e6
    return (
        "%.0fus" % us
        if us < 999.5
        else "%.2fms" % (us / 1e3)
        if us < 9995
        else "%.1fms" % (us / 1e3)
    )


def summarize_runs(runs):
    """Medians over the rounds of one (server, loop, conns), and the errors."""
    ok = [r for r in runs if "error" not in r]
    out = {"errors": [r["error"] for r in runs if "error" in r]}
    for key in (
        "req_per_s",
        "lat_avg",
        "lat_p99",
        "user_us",
        "sys_us",
        "faults",
        "server_busy",
        "client_busy",
    ):
        out[key] = statistics.median(r[key] for r in ok) if ok else None
    out["cpu_us"] = out["user_us"] + out["sys_us"] if ok else None
    return out


def report(args, kinds, loops, cells, summary, pins):
    pairs = greenhub_ratio_pairs(loops)
    L = [
        "run:     %d round(s) of fresh servers; per run %d s wrk warm-up + %d s measured, "
        "wrk -t1; servers interleaved; server on CPU %s, wrk on CPU %s"
        % (args.rounds, args.warmup, args.duration, *pins),
        "",
        "req/s from wrk; avg, p99 = wrk's latency; cpu = the server's user+sys CPU time in us "
        "per request; medians of %d round(s)" % args.rounds,
    ]
    head1 = "%-14s" % "" + "".join("  %-28s" % k for k in loops)
    head2 = "%-8s %5s" % ("server", "conns")
    head2 += "  %7s %6s %6s %6s" % ("req/s", "avg", "p99", "cpu") * len(loops)
    if pairs:
        names = " ".join("%6s" % ("%s/%s" % (RATIO_NAME[a], RATIO_NAME[b])) for a, b in pairs)
        head1 += "  %-*s  %s" % (len(names), "req/s ratio", "cpu/req ratio")
        head2 += "  " + names + "  " + names
    L += [head1, head2, "-" * len(head2)]
    results = []
    for s in kinds:
        for conns in cells:
            row = "%-8s %5d" % (s, conns)
            res = {"server": s, "conns": conns, "loops": {}, "ratios": {}}
            for k in loops:
                m = summary.get((s, k, conns))
                if not m:
                    row += "  %28s" % "-"
                    continue
                res["loops"][k] = m
                if m["req_per_s"] is None:
                    row += "  %28s" % "FAILED"
                else:
                    row += "  %7.0f %6s %6s %6.1f" % (
                        m["req_per_s"],
                        fmt_time(m["lat_avg"]),
                        fmt_time(m["lat_p99"]),
                        m["cpu_us"],
                    )
            if pairs:
                rq, cpu = [], []
                for a, b in pairs:
                    ma, mb = summary.get((s, a, conns)) or {}, summary.get((s, b, conns)) or {}
                    for metric, cols in (("req_per_s", rq), ("cpu_us", cpu)):
                        r = ratio(ma.get(metric), mb.get(metric))
                        res["ratios"]["%s/%s %s" % (a, b, metric)] = r
                        cols.append("%6s" % fmt_ratio(r))
                row += "  " + " ".join(rq) + "  " + " ".join(cpu)
            L.append(row)
            results.append(res)
    L += ["", "ratios: req/s above 1 and cpu/req below 1 mean greenhub does better."]
    L += load_notes(summary, loops, lambda c: "%d conns" % c, lambda c: c, "request")
    for (s, k, conns), m in summary.items():
        for e in m["errors"]:
            L.append("FAILED %s on %s, %d conns: %s" % (s, k, conns, e))
    return L, results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 1 s runs: a smoke test")
    ap.add_argument("-k", "--servers", default="", help="server kinds to run (substrings)")
    ap.add_argument("--loops", default=",".join(LOOP_KINDS), help="loop kinds and their order")
    ap.add_argument("--conns", default="64", help="wrk connections (comma-separated)")
    ap.add_argument("-r", "--rounds", type=int, help="rounds of fresh servers (3; quick 1)")
    ap.add_argument("-t", "--duration", type=int, help="measured seconds per run (3; quick 1)")
    ap.add_argument("-w", "--warmup", type=int, help="wrk warm-up seconds first (1; quick 0)")
    add_server_run_args(ap)
    args = ap.parse_args()
    if args.worker:
        use_greenhub_path(args.greenhub_path)
        return serve_worker(args.loop, STARTERS[args.worker], args.cpu)
    if not shutil.which("wrk"):
        sys.exit("bench_http.py needs wrk, the HTTP load generator: apt-get install wrk")
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    loops = [k for k in args.loops.split(",") if k]
    if any(k not in LOOP_KINDS for k in loops):
        sys.exit("--loops: choose from %s" % ", ".join(LOOP_KINDS))
    kinds = filter_ids(list(SERVERS), args.servers)
    cells = [int(c) for c in args.conns.split(",")]
    server_cpu, client_cpu = pin_cpus(args.pin)

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
        wrk=wrk_version(),
    )
    load = BackgroundLoad()
    raw, loop_info, unavailable, warnings = run_server_rounds(
        [(s, k) for s in kinds for k in loops],
        cells,
        args.rounds,
        start_server,
        lambda srv, conns: run_wrk(srv, conns, args, client_cpu),
        disturbed=lambda r, cell: starved(r, cell, args.min_busy),
        retries=args.retries,
    )
    background, elapsed = load.stop()

    shown = [k for k in loops if k not in unavailable]
    summary = {key: summarize_runs(runs) for key, runs in raw.items()}
    L = server_header(
        "greenhub HTTP benchmark (bench_http.py, took %.0f s)" % elapsed,
        minfo,
        background,
        loops,
        loop_info,
        unavailable,
    )
    L.append("wrk:     %s" % minfo["wrk"])
    if retaken_line(raw, loops, args.min_busy):
        L.append(retaken_line(raw, loops, args.min_busy))
    lines, results = report(args, kinds, shown, cells, summary, (server_cpu, client_cpu))
    L += lines + ["WARNING: " + w for w in warnings]
    print("\n".join(L))
    if args.json:
        for res in results:
            for k, m in res["loops"].items():
                m["rounds"] = raw[(res["server"], k, res["conns"])]
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
