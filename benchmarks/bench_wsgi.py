"""One Flask app, five ways to serve it: virtual threads against gevent and thread pools.

The same Flask application (this module's ``flask_app``), one server process each,
side by side in one run:

- greenhub: uvicorn on greenhub's loop (``--loop greenhub:new_event_loop``) serving
  ``greenhub.contrib.wsgi.WSGIMiddleware(flask_app)``: each request's view runs in the
  request's own task, a virtual thread; ``greenhub.monkey.patch_time()`` makes its
  ``time.sleep`` suspend only that request.
- gh-gunicorn: the same application under gunicorn with greenhub's worker class
  (``gunicorn -k greenhub.contrib.gunicorn.Worker -w 1``: uvicorn inside).
- gevent: gunicorn's gevent worker (``gunicorn -k gevent -w 1``), which monkey-patches
  the process (``time.sleep`` included) and serves each request in a greenlet - the
  deployment a gevent user has today.
- a2wsgi: uvicorn on the stock asyncio loop serving ``a2wsgi.WSGIMiddleware(flask_app)``,
  a thread-pool adapter (a2wsgi's default pool: 10 threads).
- asgiref: uvicorn on the stock asyncio loop serving asgiref's ``WsgiToAsgi(flask_app)``,
  which runs the application through ``sync_to_async`` (thread-sensitive: one thread for
  every request of the process).

Each is one process on one CPU: the comparison is per core, as a deployment would run
one worker per core.  Workloads: ``fast`` - a view that returns a small JSON document
at once; ``slow`` - the same after ``time.sleep(0.01)``, standing for a 10 ms database
query or API call.  Load: wrk, one thread, keep-alive, on the other CPU than the server;
a warm-up run, then the measured one; each server is fresh.  Reports requests/s,
latency (avg, p50, p99), the server's CPU time per request and its busy share of one
CPU, and greenhub's ratios over the others.

    python benchmarks/bench_wsgi.py                     # needs wrk; about 1 minute
    python benchmarks/bench_wsgi.py --quick             # 1 s runs, a smoke test
    python benchmarks/bench_wsgi.py --kinds greenhub,gevent --workloads slow --conns 256
    python benchmarks/bench_wsgi.py --json benchmarks/results/wsgi.json

uvicorn parses HTTP with httptools when it is installed (``make bench`` installs it),
else h11; gevent's worker uses gevent's own parser (pywsgi).
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _common import machine_info, python_build_flags, write_json  # noqa: E402
from bench_http import free_port, taskset, wait_port, wrk_cpus  # noqa: E402
from bench_http import wrk_one_thread as run_wrk  # noqa: E402

KINDS = ("greenhub", "gh-gunicorn", "gevent", "a2wsgi", "asgiref")
WORKLOADS = {"fast": "/fast", "slow": "/slow"}
SLOW_SECONDS = 0.01


def make_flask_app():
    from flask import Flask

    app = Flask("bench_wsgi")

    @app.get("/fast")
    def fast():
        return {"message": "Hello, World", "n": 1}

    @app.get("/slow")
    def slow():
        time.sleep(SLOW_SECONDS)  # a query or an API call; cooperative where patched
        return {"message": "Hello, World", "n": 1}

    return app


# gunicorn imports this module by name: bench_wsgi:flask_app in its gevent worker (after
# it has monkey-patched the process), bench_wsgi:asgi_app in greenhub's worker.  The
# uvicorn servers make the application in serve().
if os.environ.get("BENCH_WSGI_GUNICORN") == "gevent":
    flask_app = make_flask_app()
elif os.environ.get("BENCH_WSGI_GUNICORN") == "greenhub":
    import greenhub.monkey
    from greenhub.contrib.wsgi import WSGIMiddleware

    greenhub.monkey.patch_time()
    asgi_app = WSGIMiddleware(make_flask_app())


def http_parser():
    try:
        import httptools  # noqa: F401 - uvicorn's "auto" prefers it
    except ImportError:
        return "h11"
    return "httptools"


def serve(kind, port):
    """Server process for the uvicorn kinds: run until SIGTERM."""
    import uvicorn

    app = make_flask_app()
    if kind == "greenhub":
        import greenhub.monkey
        from greenhub.contrib.wsgi import WSGIMiddleware

        greenhub.monkey.patch_time()
        asgi, loop = WSGIMiddleware(app), "greenhub:new_event_loop"
    elif kind == "a2wsgi":
        import a2wsgi

        asgi, loop = a2wsgi.WSGIMiddleware(app), "asyncio"
    else:
        from asgiref.wsgi import WsgiToAsgi

        asgi, loop = WsgiToAsgi(app), "asyncio"
    uvicorn.run(
        asgi,
        host="127.0.0.1",
        port=port,
        loop=loop,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=2048,
    )


def server_argv(kind, port):
    if kind in ("gevent", "gh-gunicorn"):
        worker, app = {
            "gevent": ("gevent", "flask_app"),
            "gh-gunicorn": ("greenhub.contrib.gunicorn.Worker", "asgi_app"),
        }[kind]
        argv = [sys.executable, "-m", "gunicorn", "-k", worker, "-w", "1"]
        argv += ["--worker-connections", "4096", "--backlog", "2048", "--log-level", "warning"]
        argv += ["-b", f"127.0.0.1:{port}", f"bench_wsgi:{app}"]
        import gunicorn.config

        if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
            argv.append("--no-control-socket")
        return argv
    return [sys.executable, os.path.abspath(__file__), "--serve", kind, "--port", str(port)]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def proc_tree_cpu(pid):
    """User + system CPU seconds of process `pid` and its children (gunicorn's worker),
    every thread included."""
    total = 0.0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def measure(kind, workload, args, cpus):
    port = free_port()
    gunicorn = {"gevent": "gevent", "gh-gunicorn": "greenhub"}.get(kind, "")
    env = dict(os.environ, BENCH_WSGI_GUNICORN=gunicorn)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, HERE, env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        taskset(cpus[0]) + server_argv(kind, port), cwd=HERE, env=env, start_new_session=True
    )
    try:
        wait_port(port, proc, 60)
        path = WORKLOADS[workload]
        if args.warmup:
            run_wrk(port, path, args.conns, args.warmup, cpus[1])
        cpu0 = proc_tree_cpu(proc.pid)
        r = run_wrk(port, path, args.conns, args.duration, cpus[1])
        cpu = proc_tree_cpu(proc.pid) - cpu0
        r["cpu_per_req"] = cpu / max(r["requests"], 1)
        r["server_busy"] = cpu / r["seconds"]
        return r
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def fmt_ms(s):
    return f"{s * 1e3:7.1f}"


def report(results, args, minfo):
    lines = [
        f"bench_wsgi.py  {minfo['date']}",
        f"machine: {minfo['cpu_model']}, {minfo['cpu_count']} CPUs, {minfo['platform']}",
        f"python:  {minfo['python'].split()[0]} ({minfo['python_build_flags']}); {versions()}",
        f"Flask app, one server process on one CPU each; uvicorn parses with {http_parser()}; "
        f"wrk -t1 -c{args.conns} {args.duration}s after {args.warmup}s warm-up; "
        f"slow = time.sleep({SLOW_SECONDS}) in the view",
        "",
        f"{'workload':8} {'server':17} {'req/s':>9} {'avg ms':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'cpu/req':>9} {'busy':>5}  {'errors':>6}",
    ]
    for workload in args.workloads:
        for kind in args.kinds:
            r = results.get((workload, kind))
            if r is None:
                continue
            if "failed" in r:
                lines.append(f"{workload:8} {kind:17} failed: {r['failed']}")
                continue
            errors = r["socket_errors"] + r["non_2xx"]
            lines.append(
                f"{workload:8} {kind:17} {r['req_per_s']:9.0f} {fmt_ms(r['lat_avg'])} "
                f"{fmt_ms(r['lat_p50'])} {fmt_ms(r['lat_p99'])} "
                f"{r['cpu_per_req'] * 1e6:7.0f}us {r['server_busy']:5.2f}  {errors:6d}"
            )
    lines += ["", "greenhub's ratios (req/s: above 1 is better; cpu/req: below 1 is better):"]
    for workload in args.workloads:
        g = results.get((workload, "greenhub"))
        if not g or "failed" in g:
            continue
        cols = []
        for kind in args.kinds:
            o = results.get((workload, kind))
            if kind in ("greenhub", "gh-gunicorn") or not o or "failed" in o:
                continue
            cols.append(
                f"vs {kind} {g['req_per_s'] / o['req_per_s']:.2f}x req/s, "
                f"{g['cpu_per_req'] / o['cpu_per_req']:.2f}x cpu/req"
            )
        lines.append(f"{workload:8} " + "; ".join(cols))
    return lines


def versions():
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("flask", "uvicorn", "gunicorn", "gevent", "a2wsgi", "asgiref", "greenlet"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 s runs, no warm-up: a smoke test")
    ap.add_argument("--conns", type=int, default=64, help="wrk connections (64)")
    ap.add_argument("-d", "--duration", type=int, help="measured seconds (5; quick 1)")
    ap.add_argument("-w", "--warmup", type=int, help="warm-up seconds (1; quick 0)")
    ap.add_argument("--workloads", default="fast,slow", help="fast,slow")
    ap.add_argument("--kinds", default=",".join(KINDS), help="servers: " + ",".join(KINDS))
    ap.add_argument("--pin", default="auto", help="SERVER_CPU,CLIENT_CPU, 'auto' or 'none'")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        sys.path.insert(0, REPO)
        serve(args.serve, args.port)
        return
    args.duration = args.duration or (1 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.quick else 1)
    args.workloads = args.workloads.split(",")
    args.kinds = args.kinds.split(",")
    if not set(args.kinds) <= set(KINDS):
        ap.error(f"--kinds: choose from {','.join(KINDS)}")
    if not set(args.workloads) <= set(WORKLOADS):
        ap.error(f"--workloads: choose from {','.join(WORKLOADS)}")
    if not shutil.which("wrk"):
        sys.exit("bench_wsgi.py needs wrk, the HTTP load generator: apt-get install wrk")
    cpus = wrk_cpus(args.pin)
    minfo = machine_info(python_build_flags=python_build_flags())
    results = {}
    for workload in args.workloads:
        for kind in args.kinds:
            log(f"{workload}: {kind} ...")
            try:
                results[(workload, kind)] = measure(kind, workload, args, cpus)
            except (RuntimeError, subprocess.TimeoutExpired, ImportError) as e:
                results[(workload, kind)] = {"failed": f"{type(e).__name__}: {e}"}
    print("\n".join(report(results, args, minfo)))
    if args.json:
        doc = {
            "machine": minfo,
            "config": {
                k: getattr(args, k) for k in ("quick", "conns", "duration", "warmup", "pin")
            },
            "command": "python3 benchmarks/bench_wsgi.py",
            "versions": versions(),
            "http_parser": http_parser(),
            "results": [
                {"workload": w, "servers": {k: results[(w, k)] for k in args.kinds}}
                for w in args.workloads
            ],
        }
        write_json(args.json, doc)


if __name__ == "__main__":
    main()
