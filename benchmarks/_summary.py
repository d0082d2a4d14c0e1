"""The benchmarks' results, summarised: what `python -m greenhub bench` prints at the end
and what report.py draws.

Each benchmark script writes its results as JSON (``--json PATH``).  ``section(name,
doc)`` turns one such document into a ``Section``: rows of one value per peer (a loop
kind, a server, a bridge) in one unit, and the ratio columns worth showing (greenhub's
value over a peer's).  ``ratio_table`` prints sections as text.  Nothing here measures.
"""

BENCHMARKS = (
    # (name, script, what it compares, part of the quick profile)
    ("scheduling", "bench_scheduling.py", "loop and task micro-benchmarks", True),
    ("bridge", "bench_vthread.py", "await from sync code: greenhub vs its peers", True),
    ("memory", "bench_memory.py", "bytes per idle task / virtual thread", True),
    ("echo", "bench_echo.py", "TCP echo servers, CPU per round trip", True),
    ("green", "bench_green.py", "green sockets and sleeps vs gevent", True),
    ("http", "bench_http.py", "HTTP keep-alive servers under wrk", False),
    ("django", "bench_django.py", "Django sync views on PostgreSQL under wrk", False),
    ("wsgi", "bench_wsgi.py", "a Flask app: greenhub vs gevent and thread pools", False),
)

LOOPS = ["greenhub", "uvloop", "asyncio"]
LOOP_RATIOS = [("greenhub", "uvloop"), ("greenhub", "asyncio")]


class Section:
    """One benchmark's rows: (label, {column: value}, unit), the columns in order, the
    ratio columns (numerator, denominator), and whether higher values are better."""

    def __init__(self, columns, ratios, rows, higher_is_better=False):
        self.columns = columns
        self.ratios = ratios
        self.rows = rows
        self.higher_is_better = higher_is_better


def _scheduling(doc):
    rows = []
    for r in doc["results"]:
        values = {k: v["median"] for k, v in r["loops"].items() if v.get("median")}
        rows.append((f"{r['bench']} (n={r['n']})", values, "ns/op"))
    return Section(LOOPS, LOOP_RATIOS, rows)


def _echo(doc):
    rows = []
    for r in doc["results"]:
        values = {k: v["user_us"] for k, v in r["loops"].items() if v.get("user_us")}
        rows.append((f"{r['server']} {r['size']} B x{r['conns']}", values, "user us/rt"))
    return Section(LOOPS, LOOP_RATIOS, rows)


def _http(doc):
    rows = []
    for r in doc["results"]:
        values = {k: v["cpu_us"] for k, v in r["loops"].items() if v.get("cpu_us")}
        rows.append((f"{r['server']} x{r['conns']}", values, "CPU us/req"))
    return Section(LOOPS, LOOP_RATIOS, rows)


def _bridge(doc):
    # Each way of awaiting from sync code: its extra cost per call over a native
    # `await` of the same coroutine (op "ret"), beside greenhub.await_'s.
    extra = {
        (r["contender"], r["label"].strip()): r["extra"]["median"]
        for r in doc["summary"]
        if r.get("op") == "ret" and r.get("extra")
    }
    ours = extra.get(("greenhub.await_@greenhub", "greenhub.await_(f()) in a sync fn"))
    rows = []
    for (contender, label), value in extra.items():
        values = {"bridge": value}
        if ours is not None:
            values["greenhub.await_"] = ours
        rows.append((f"{label} [{contender.rpartition('@')[2]}]", values, "ns/call"))
    return Section(["bridge", "greenhub.await_"], [("bridge", "greenhub.await_")], rows)


_MEMORY_ROWS = {
    "idle task": {"greenhub": "greenhub_task", "uvloop": "uvloop_task", "asyncio": "asyncio_task"},
    "idle virtual thread (in sync code)": {
        "greenhub": "greenhub_vthread",
        "gevent": "gevent_greenlet",
        "sqlalchemy": "sqla_asyncio",
    },
}


def _memory(doc):
    got = {k: v["bytes_per_obj"] for k, v in doc["summary"].items()}
    rows = []
    for label, kinds in _MEMORY_ROWS.items():
        values = {col: got[kind] for col, kind in kinds.items() if kind in got}
        if values:
            rows.append((label, values, "bytes"))
    columns = [*LOOPS, "gevent", "sqlalchemy"]
    return Section(columns, [("greenhub", c) for c in columns[1:]], rows)


def _green(doc):
    rows = []
    echo = doc["workloads"].get("echo", {}).get("results", {})
    values = {k: v["user_us"] for k, v in echo.items() if v.get("user_us")}
    if values:
        rows.append(("green socket echo, 64 conns", values, "user us/rt"))
    sleep = doc["workloads"].get("sleep", {}).get("results", {})
    values = {k: v["warm_cpu_s"] for k, v in sleep.items() if v.get("warm_cpu_s")}
    if values:
        rows.append(("10k patched time.sleep()", values, "CPU s"))
    return Section(["greenhub", "greenhub-await_", "gevent"], [("greenhub", "gevent")], rows)


def _django(doc):
    # One row per workload and setup pair: requests per second of greenhub and of the
    # stock setup doing the same database work (higher is better).
    rows = []
    for r in doc["results"]:
        values = {k: v["req_per_s"] for k, v in r["servers"].items() if v.get("req_per_s")}
        rows.append((f"{r['workload']}: {r['setup']}", values, "req/s"))
    return Section(["greenhub", "stock"], [("greenhub", "stock")], rows, higher_is_better=True)


def _wsgi(doc):
    # One row per workload: the server's CPU time per request of each way to serve the
    # Flask app (the fair number on a loaded machine; bench_wsgi.py prints req/s too).
    rows = []
    for r in doc["results"]:
        values = {
            k: v["cpu_per_req"] * 1e6 for k, v in r["servers"].items() if v.get("cpu_per_req")
        }
        rows.append((f"Flask {r['workload']}", values, "CPU us/req"))
    columns = ["greenhub", "gh-gunicorn", "gevent", "a2wsgi", "asgiref"]
    return Section(columns, [("greenhub", c) for c in columns[2:]], rows)


_SECTIONS = {
    "scheduling": _scheduling,
    "bridge": _bridge,
    "memory": _memory,
    "echo": _echo,
    "green": _green,
    "http": _http,
    "django": _django,
    "wsgi": _wsgi,
}


def section(name, doc):
    """The Section of benchmark `name` from its JSON document."""
    return _SECTIONS[name](doc)


def short(column):
    return {"greenhub": "gh", "asyncio": "aio", "greenhub.await_": "await_"}.get(column, column)


def ratio_table(results):
    """Text tables, one per benchmark in `results` ({name: JSON document}): each row's
    value per column, and the ratio columns (a/b: a's value divided by b's)."""
    out = []
    for name, doc in results.items():
        sec = section(name, doc)
        rows = sec.rows
        if not rows:
            continue
        present = [c for c in sec.columns if any(c in r[1] for r in rows)]
        ratios = [(a, b) for a, b in sec.ratios if a in present and b in present]
        width = max(len(name), *(len(r[0]) for r in rows)) + 2
        names = [f"{short(a)}/{short(b)}" for a, b in ratios]
        widths = [max(11, len(n) + 2) for n in names]
        head = f"{name:<{width}}{'unit':<11}" + "".join(f"{c:>16}" for c in present)
        head += "".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True))
        out += ["", head, "-" * len(head)]
        for label, values, unit in rows:
            line = f"{label:<{width}}{unit:<11}"
            line += "".join(f"{values[c]:>16.4g}" if c in values else f"{'-':>16}" for c in present)
            for (a, b), w in zip(ratios, widths, strict=True):
                ok = values.get(a) and values.get(b)
                line += f"{values[a] / values[b]:>{w}.2f}" if ok else f"{'-':>{w}}"
            out.append(line)
    out += [
        "",
        "a/b: a's value divided by b's. Time, CPU and bytes: below 1, a is better; "
        "req/s: above 1, a is better.",
    ]
    return "\n".join(out)
