"""Django sync views doing ORM work: greenhub virtual threads vs sync_to_async threads.

The same Django project (tests/django_app: sync views, the ORM over psycopg 3, a real
PostgreSQL) served by uvicorn in one process: on a greenhub loop (``--loop
greenhub:new_event_loop``) with ``greenhub.contrib.django.get_asgi_application()``, where
each request's sync view runs in the request's task and its database waits suspend only
that task; and on the stock asyncio loop with Django's own ``get_asgi_application()``,
where sync views reach the ORM through ``sync_to_async`` threads (Django's documented
ASGI deployment).  Three comparisons, each with the same database settings on both
sides, so that a sceptic can see where greenhub's lead comes from:

- ``greenhub`` / ``stock``: Django's defaults on both sides (CONN_MAX_AGE=0, no pool).
  Stock Django opens a server connection per request; greenhub keeps each closed
  connection for the next virtual thread (its ``reuse_connections``, the default).
- ``greenhub-noreuse`` / ``stock``: no connection reuse on either side
  (``get_asgi_application(reuse_connections=False)``: a new connection per request for
  greenhub too) - what the virtual threads alone are worth.
- ``greenhub-pool`` / ``stock-pool``: Django's psycopg pool on both sides
  (``OPTIONS={"pool": ...}`` as big as the load's connections, CONN_MAX_AGE=0 as Django
  requires).

Workloads (the same URLs for both): ``sleep`` - ``select pg_sleep(0.005)`` plus one
indexed count, a request that mostly waits on the database; ``lookup`` - three indexed
selects on a 1,000-row table.  Load: wrk, one thread, keep-alive, on the other CPU than
the server (``taskset``); a warm-up run, then the measured one; each server is fresh.
Reports requests/s, latency (avg, p50, p99), the server's CPU time per request and
its busy share of one CPU, the share of the time its event-loop thread was ready to run
but waited for a CPU ("starved": other work on the machine), and greenhub's ratios over
the stock setups.  Where other work competes for the CPUs, a one-thread server
(greenhub) gets a smaller share than a many-thread one (stock): busy + starved near 1
means the server was CPU-bound, and CPU per request is the fairer comparison.

    python benchmarks/bench_django.py                    # needs wrk and PostgreSQL
    python benchmarks/bench_django.py --dsn postgresql://user@host:port/db

Without --dsn it uses $GREENHUB_TEST_PG_DSN, else starts a throwaway cluster with
.ci/pg (and removes it afterwards).  uvicorn parses HTTP as it does by default: with
httptools (C) when it is installed, as ``uvicorn[standard]`` installs it, else with h11
(pure Python); BENCH_DJANGO_HTTP=h11 or =httptools picks one.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

from _common import machine_info, write_json  # noqa: E402 - after the path set-up
from bench_http import free_port, taskset, wait_port, wrk_cpus  # noqa: E402
from bench_http import wrk_one_thread as run_wrk  # noqa: E402

KINDS = ("greenhub", "stock", "greenhub-noreuse", "greenhub-pool", "stock-pool")
# greenhub's ratios, each over the stock setup with the same database settings.
PAIRS = (
    ("greenhub", "stock", "Django's defaults on both sides"),
    ("greenhub-noreuse", "stock", "no connection reuse on either side"),
    ("greenhub-pool", "stock-pool", "Django's pool on both sides"),
)
WORKLOADS = {"sleep": "/sleep/0.02", "lookup": "/lookup?k=17,420,999"}
ROWS = 1000
HTTP = os.environ.get("BENCH_DJANGO_HTTP", "auto")


def http_parser():
    """The HTTP implementation uvicorn uses with http=HTTP."""
    if HTTP != "auto":
        return HTTP
    try:
        import httptools  # noqa: F401 - uvicorn's "auto" prefers it
    except ImportError:
        return "h11"
    return "httptools"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def django_settings(dsn, kind, conns):
    import django_app

    conf = django_app.settings(dsn, MIDDLEWARE=["django.middleware.common.CommonMiddleware"])
    db = conf["DATABASES"]["default"]
    db["CONN_MAX_AGE"] = 0  # Django's default (and what its pool requires)
    if kind.endswith("-pool"):
        db["OPTIONS"] = {"pool": {"min_size": 4, "max_size": conns}}
    return conf


def serve(kind, port, dsn, conns):
    """Server process: configure Django, run uvicorn until SIGTERM."""
    import uvicorn
    from django.conf import settings

    settings.configure(**django_settings(dsn, kind, conns))
    if kind.startswith("greenhub"):
        from greenhub.contrib.django import get_asgi_application

        app = get_asgi_application(reuse_connections=kind != "greenhub-noreuse")
        loop = "greenhub:new_event_loop"
    else:
        from django.core.asgi import get_asgi_application

        app = get_asgi_application()
        loop = "asyncio"
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop=loop,
        http=HTTP,
        lifespan="off",
        log_level="warning",
        access_log=False,
        backlog=1024,
    )


def seed(dsn):
    """Create the table and its rows (plain Django, no loop)."""
    import django
    from django.conf import settings
    from django.core.management import call_command

    settings.configure(**django_settings(dsn, "greenhub", 1))
    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    from django.db import connection
    from django_app.models import Item

    Item.objects.all().delete()
    Item.objects.bulk_create(Item(name=f"item{i}", n=i) for i in range(ROWS))
    connection.close()


def measure(kind, workload, args, cpus):
    port = free_port()
    argv = taskset(cpus[0]) + [sys.executable, __file__, "--serve", kind, "--port", str(port)]
    argv += ["--dsn", args.dsn, "--conns", str(args.conns)]
    proc = subprocess.Popen(argv)
    try:
        wait_port(port, proc, 60)
        path = WORKLOADS[workload]
        run_wrk(port, path, args.conns, args.warmup, cpus[1])
        cpu0, wait0 = proc_cpu(proc.pid), runqueue_wait(proc.pid)
        r = run_wrk(port, path, args.conns, args.duration, cpus[1])
        r["cpu_per_req"] = (proc_cpu(proc.pid) - cpu0) / max(r["requests"], 1)
        r["server_busy"] = (proc_cpu(proc.pid) - cpu0) / r["seconds"]
        r["loop_starved"] = (runqueue_wait(proc.pid) - wait0) / r["seconds"]
        return r
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def proc_cpu(pid):
    """User + system CPU seconds of process `pid` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait(pid):
    """Seconds the main thread of `pid` (the one running the event loop) was ready to
    run but waited for a CPU (other work on the machine)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def fmt_ms(s):
    return f"{s * 1e3:7.1f}"


def report(results, args):
    print(
        f"Django {django_version()} sync views, uvicorn ({http_parser()}), wrk -t1 -c{args.conns} "
        f"{args.duration}s after {args.warmup}s warm-up; PostgreSQL over loopback"
    )
    print(
        f"{'workload':8} {'server':16} {'req/s':>9} {'avg ms':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'cpu/req':>8} {'busy':>5} {'starved':>7}  errors"
    )
    for workload in args.workloads:
        for kind in KINDS:
            r = results.get((workload, kind))
            if r is None:
                continue
            if "failed" in r:
                print(f"{workload:8} {kind:16} failed: {r['failed']}")
                continue
            errors = r["socket_errors"] + r["non_2xx"]
            print(
                f"{workload:8} {kind:16} {r['req_per_s']:9.0f} {fmt_ms(r['lat_avg'])} "
                f"{fmt_ms(r['lat_p50'])} {fmt_ms(r['lat_p99'])} "
                f"{r['cpu_per_req'] * 1e3:6.2f}ms {r['server_busy']:5.2f} "
                f"{r['loop_starved']:7.2f}  {errors}"
            )
        for gkind, kind, what in PAIRS:
            g, s = results.get((workload, gkind)), results.get((workload, kind))
            if g and s and "failed" not in g and "failed" not in s:
                print(
                    f"{workload:8} {gkind} / {kind} ({what}): "
                    f"{g['req_per_s'] / s['req_per_s']:.1f}x req/s, "
                    f"{s['cpu_per_req'] / g['cpu_per_req']:.1f}x less server CPU per request"
                )


def write_results(path, results, args):
    """The results as JSON: each setup per workload, and each pair greenhub/stock."""
    pairs = []
    for workload in args.workloads:
        for gkind, kind, what in PAIRS:
            g, s = results.get((workload, gkind)), results.get((workload, kind))
            servers = {}
            for side, r in (("greenhub", g), ("stock", s)):
                if r and "failed" not in r:
                    servers[side] = r
            pairs.append({"workload": workload, "setup": what, "servers": servers})
    doc = {
        "machine": machine_info(),
        "config": {"conns": args.conns, "duration": args.duration, "warmup": args.warmup},
        "django": django_version(),
        "http": http_parser(),
        "setups": {f"{w}/{k}": r for (w, k), r in results.items()},
        "results": pairs,
    }
    write_json(path, doc)


def django_version():
    import django

    return django.get_version()


def start_cluster():
    env = dict(os.environ, PY=sys.executable)
    out = subprocess.run(
        [os.path.join(REPO, ".ci", "pg"), "start"], capture_output=True, text=True, env=env
    )
    if out.returncode:
        sys.exit("could not start PostgreSQL with .ci/pg: " + out.stderr[-500:])
    values = dict(
        line.removeprefix("export ").split("=", 1) for line in out.stdout.split("\n") if line
    )
    return values["GREENHUB_TEST_PG_DSN"], values["GREENHUB_PG_DIR"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", help="PostgreSQL URL (default $GREENHUB_TEST_PG_DSN, else .ci/pg)")
    ap.add_argument("--conns", type=int, default=64, help="wrk connections (64)")
    ap.add_argument("-d", "--duration", type=int, default=5, help="measured seconds (5)")
    ap.add_argument("-w", "--warmup", type=int, default=1, help="warm-up seconds (1)")
    ap.add_argument("--workloads", default="sleep,lookup", help="sleep,lookup")
    ap.add_argument("--kinds", default=",".join(KINDS), help="servers to run: " + ",".join(KINDS))
    ap.add_argument("--pin", default="auto", help="SERVER_CPU,CLIENT_CPU, 'auto' or 'none'")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.dsn, args.conns)
        return
    args.workloads = args.workloads.split(",")
    args.kinds = args.kinds.split(",")
    if not set(args.kinds) <= set(KINDS):
        ap.error(f"--kinds: choose from {','.join(KINDS)}")
    if not shutil.which("wrk"):
        sys.exit("bench_django.py needs wrk, the HTTP load generator: apt-get install wrk")
    cpus = wrk_cpus(args.pin)

    cluster = None
    if not args.dsn:
        args.dsn = os.environ.get("GREENHUB_TEST_PG_DSN")
    if not args.dsn:
        log("starting a throwaway PostgreSQL (.ci/pg)")
        args.dsn, cluster = start_cluster()
    try:
        db_dsn = create_database(args.dsn)
        args.dsn = db_dsn
        subprocess.run([sys.executable, __file__, "--seed", db_dsn], check=True)
        results = {}
        for workload in args.workloads:
            for kind in args.kinds:
                log(f"{workload}: {kind} ...")
                try:
                    results[(workload, kind)] = measure(kind, workload, args, cpus)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    results[(workload, kind)] = {"failed": str(e)}
        report(results, args)
        if args.json:
            write_results(args.json, results, args)
    finally:
        if cluster:
            subprocess.run([os.path.join(REPO, ".ci", "pg"), "stop", cluster])


def create_database(dsn):
    """A fresh database `bench_django` on the server of `dsn`; its URL."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench_django WITH (FORCE)")
        conn.execute("CREATE DATABASE bench_django")
    return urlunsplit(urlsplit(dsn)._replace(path="/bench_django"))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--seed":
        seed(sys.argv[2])
    else:
        main()
