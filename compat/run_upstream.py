#!/usr/bin/env python3
"""Run upstream projects' own test suites on the stock loop and on greenhub.

For each selected suite (anyio, aiohttp; asgiref, starlette, httpx, aiofiles, janus,
aiosqlite) the runner

1. finds the version of the project installed in the interpreter under test;
2. downloads that version's source distribution from PyPI with pip (once; it is kept in
   the cache directory, ~/.cache/greenhub/upstream, never in the repository) and unpacks its ``tests/`` directory and
   top-level files (the configuration) - not the package's sources, so the tests import
   the installed, compiled package;
3. runs the tests twice with pytest, each time in a fresh process with a time cap: on the
   stock loop, and with greenhub as the loop asyncio hands out (compat/upstream_plugin.py
   installs it and records every test's outcome);
4. compares the outcomes test by test.  A *regression* is a test that passes on the stock
   loop but does not pass on greenhub.  The exit status is 1 if there is any.

``--quick`` runs the subset CI runs (SUITES[...]["quick"]); without it, the whole suite.
See compat/README.md ("Upstream suites") for what is selected and why.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
# Outside the checkout, so that fresh clones (CI) reuse what earlier runs downloaded.
DEFAULT_CACHE = os.environ.get("GREENHUB_UPSTREAM_CACHE") or os.path.join(
    os.path.expanduser("~"), ".cache", "greenhub", "upstream"
)
DEFAULT_RESULTS = os.path.join(HERE, "results", "upstream")

SUITES = {
    "anyio": {
        # The project's pyproject addopts stay (they load anyio's plugin, pytest-mock and
        # pytest-timeout and turn pytest-asyncio and pytest-trio off).  anyio parametrises
        # its tests by backend: "asyncio" and "asyncio+eager" build their loops through
        # asyncio's policy, so they run on greenhub; "asyncio+uvloop" and "trio" are
        # deselected by the plugin on both sides.
        "args": ["tests"],
        # Test-only imports; blockbuster is left out on purpose (see compat/README.md).
        "deps": {
            "pytest_mock": "pytest-mock",
            "hypothesis": "hypothesis",
            "psutil": "psutil",
            "trustme": "trustme",
            "truststore": "truststore",
        },
        # Task groups and cancellation, synchronisation, sockets, streams and TLS,
        # threads, subprocesses, signals: the modules that exercise the loop.
        "quick": [
            "tests/test_taskgroups.py",
            "tests/test_sockets.py",
            "tests/test_synchronization.py",
            "tests/test_to_thread.py",
            "tests/test_from_thread.py",
            "tests/test_subprocesses.py",
            "tests/test_signals.py",
            "tests/streams",
        ],
        # Where "localhost" has no IPv6 address (CI's machine), every IPv6 case of
        # test_sockets fails on both loops after a slow lookup: most of the subset's time.
        # The two send tests of TestUDPSocketBackpressure fail on the stock loop too
        # (anyio 4.16.0 on CPython 3.13.0, CI's Python here: the blocked send is never
        # woken, so each of the 8 cases runs into its 5 s fail_after): they cannot show
        # a regression, and took 40 s of each side.  The class's other tests stay.
        "quick_k": "not ipv6 and not test_send_waits_for_the_os_to_accept_the_datagram"
        " and not test_cancelled_send_does_not_buffer_the_next_datagram",
    },
    "aiohttp": {
        # aiohttp's pytest.ini addopts need pytest-xdist and pytest-cov; they are replaced
        # by the marker selection its own CI uses by default.  Its loop fixture calls
        # asyncio.new_event_loop() ("pyloop"), so it runs on greenhub.
        "args": [
            "-o",
            "addopts=",
            "--strict-markers",
            "-m",
            "not dev_mode and not autobahn and not internal",
            "tests",
        ],
        "deps": {
            "pytest_mock": "pytest-mock",
            "freezegun": "freezegun",
            "coverage": "coverage",  # pytest.ini's filterwarnings names its warning class
            "trustme": "trustme",
        },
        # Functional suites: real servers and clients over the loop's transports (the
        # server side over HTTP and WebSockets, the client side over WebSockets).
        "quick": [
            "tests/test_web_functional.py",
            "tests/test_client_ws_functional.py",
            "tests/test_web_websocket_functional.py",
        ],
    },
    # The suites below are not part of --quick (no "quick" entry): run them by name.
    # websockets is not here: its sdist ships no tests.
    "asgiref": {
        # sync_to_async / async_to_sync (threads, executors, contextvars), Local, the
        # stateless server, timeouts.  pytest-asyncio (strict mode, setup.cfg) asks the
        # installed policy for its loops, so it stays loaded.
        "args": ["tests"],
        "asyncio_plugin": True,
        "deps": {
            "pytest_asyncio": "pytest-asyncio",
            "packaging": "packaging",
            "pytest_codspeed": "pytest-codspeed",  # the benchmark fixture of test_benchmark_local
        },
    },
    "starlette": {
        # Runs its apps through TestClient: an anyio blocking portal, that is an asyncio
        # loop in a worker thread (anyio's asyncio backend, asyncio.Runner from the
        # policy).  Its default anyio_backend is "asyncio"; pyproject's addopts and
        # filterwarnings=error stay.  blockbuster (its dev group) is left out, as for
        # anyio and aiohttp.
        "args": ["tests"],
        "deps": {
            "httpx2": "httpx2",
            "trio": "trio",  # imported by test_testclient
            "itsdangerous": "itsdangerous",
            "jinja2": "jinja2",
            "python_multipart": "python-multipart",
            "yaml": "pyyaml",
            "opentelemetry.sdk": "opentelemetry-sdk",
            "pytest_mock": "pytest-mock",
            "zstandard": "zstandard",  # httpx2[zstd]: the tests expect "zstd" in accept-encoding
        },
    },
    "httpx": {
        # The async client against a uvicorn server that conftest runs in a thread
        # (loop="asyncio": uvicorn asks asyncio for its loop), over real sockets, TLS
        # (trustme) and timeouts; tests marked anyio run on its default "asyncio" backend.
        # uvicorn's loop="asyncio" names asyncio.SelectorEventLoop: the plugin makes it
        # take its loop from the policy, so that the server runs on greenhub too.
        "args": ["tests"],
        "env": {"GREENHUB_UPSTREAM_UVICORN_POLICY": "1"},
        "deps": {
            "uvicorn": "uvicorn",
            "trustme": "trustme",
            "chardet": "chardet",
            "zstandard": "zstandard",
            "brotli": "brotli",
            "trio": "trio",
            "cryptography": "cryptography",
            "click": "click",
            "pygments": "pygments",
            "rich": "rich",
            "h2": "h2",
            "socksio": "socksio",
        },
    },
    "aiofiles": {
        # Thread-pool file I/O (run_in_executor), asyncio_mode=auto (pyproject).
        "args": ["tests"],
        "asyncio_plugin": True,
        "deps": {"pytest_asyncio": "pytest-asyncio"},
    },
    "janus": {
        # A queue shared by threads and tasks: call_soon_threadsafe from threads.
        # setup.cfg's addopts need pytest-cov; dropped.
        "args": ["-o", "addopts=", "tests"],
        "asyncio_plugin": True,
        "deps": {"pytest_asyncio": "pytest-asyncio",
                 "pytest_codspeed": "pytest-codspeed"},  # test_benchmarks' fixture
    },
    "aiosqlite": {
        # unittest IsolatedAsyncioTestCase (asyncio.Runner from the policy) over a
        # worker thread per connection.  The tests live in the package, aiosqlite/tests
        # (smoke.py, perf.py): unpacked as tests/ and named, as they match no test_*.py.
        "args": ["tests/smoke.py", "tests/perf.py"],
        "tests_from": "aiosqlite/tests",
        "deps": {},
    },
}

# Known differences: a regression whose failure on greenhub shows every string of an
# entry's "signature" is reported under that entry, with its reason, and does not fail
# the run.  Matched by how the test failed, not by its name, so the same test failing
# any other way is still a regression.  Each entry is a documented greenhub limitation.
KNOWN = []  # none at present (aiohttp's web.AppKey frame walk was one; now fixed)

PASS, FAIL, ERROR, SKIP, XFAIL, XPASS = "pass", "fail", "error", "skip", "xfail", "xpass"
CRASH, TIMEOUT, NOT_RUN = "crash", "timeout", "not-run"


def log(*args):
    print(*args, flush=True)


def run_py(python, code):
    return subprocess.run(
        [python, "-c", code], capture_output=True, text=True, check=False
    ).stdout.strip()


# ---------------------------------------------------------------------------
# Sources


def installed_version(python, dist):
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    return run_py(python, code) or None


def fetch_sdist(python, dist, version, cache):
    """Path of the sdist of dist==version, downloaded with pip into the cache once."""
    sdists = os.path.join(cache, "sdists")
    os.makedirs(sdists, exist_ok=True)
    names = [f"{dist}-{version}.tar.gz", f"{dist.replace('-', '_')}-{version}.tar.gz"]
    for name in names:
        if os.path.exists(os.path.join(sdists, name)):
            return os.path.join(sdists, name)
    log(f"downloading the {dist}=={version} sdist with pip")
    cmd = [python, "-m", "pip", "download", "--disable-pip-version-check", "-q",
           "--no-deps", "--no-binary", ":all:", f"{dist}=={version}", "-d", sdists]
    subprocess.run(cmd, check=True)
    for name in names:
        if os.path.exists(os.path.join(sdists, name)):
            return os.path.join(sdists, name)
    raise SystemExit(f"pip left no {names[0]} in {sdists}")


def unpack_tests(sdist, dest, tests_from="tests"):
    """Unpack the tests (tests_from, as tests/) and the top-level files (pytest and project
    configuration) only."""
    if os.path.isdir(dest):
        return dest
    tmp = dest + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = m.name.split("/", 1)
            if len(parts) != 2 or not (m.isfile() or m.isdir()):
                continue
            rel = parts[1]
            if rel.startswith(tests_from + "/") or rel == tests_from:
                m.name = "tests" + rel[len(tests_from):]
                members.append(m)
            elif m.isfile() and "/" not in rel:
                m.name = rel
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")
    os.rename(tmp, dest)
    return dest


def ensure_deps(python, suite, install):
    missing = [pkg for mod, pkg in SUITES[suite]["deps"].items()
               if run_py(python, f"import importlib.util as u; print(u.find_spec({mod!r}) is None)")
               != "False"]
    if missing and install:
        log(f"installing the {suite} test dependencies: {' '.join(missing)}")
        subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "--root-user-action=ignore", *missing], check=True)
        return []
    return missing


# ---------------------------------------------------------------------------
# Running one side


def read_events(path):
    collected, results, started = None, {}, []
    if not os.path.exists(path):
        return collected, results, started
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if "collected" in rec and collected is None:
                collected = rec["collected"]
            elif "start" in rec:
                started.append(rec["start"])
            elif "test" in rec:
                results[rec["test"]] = rec
    return collected, results, started


def run_side(python, suite, side, srcdir, outdir, opts, label=None, only_ids=None):
    """Run one suite on one side; returns (results by node id, facts about the run)."""
    label = label or side
    events = os.path.join(outdir, f"{suite}.{label}.events.jsonl")
    logpath = os.path.join(outdir, f"{suite}.{label}.log")
    only = os.path.join(outdir, f"{suite}.{label}.only")
    for p in (events, logpath, only):
        if os.path.exists(p):
            os.unlink(p)
    env = dict(os.environ)
    env["GREENHUB_UPSTREAM_LOOP"] = side
    env["GREENHUB_UPSTREAM_OUT"] = events
    env["PYTHONPATH"] = os.pathsep.join(
        [HERE, opts.greenhub_path or REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    env.update(SUITES[suite].get("env", {}))
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTHONASYNCIODEBUG", None)
    select = list(opts.tests) or (SUITES[suite].get("quick", []) if opts.quick else [])
    if only_ids is not None:
        # Node ids go through a file (the plugin deselects every other test): some
        # parametrised ids do not survive the command line.
        select = sorted({n.split("::")[0] for n in only_ids})
        with open(only, "w") as f:
            f.write("\n".join(only_ids) + "\n")
        env["GREENHUB_UPSTREAM_ONLY"] = only
    base = [python, "-P", "-m", "pytest", "-p", "upstream_plugin", "-p", "no:cacheprovider",
            "-q", "-rN", f"--timeout={opts.test_timeout}"]
    if not SUITES[suite].get("asyncio_plugin"):  # suites whose tests do not use pytest-asyncio
        base[6:6] = ["-p", "no:asyncio"]
    base += SUITES[suite]["args"]
    if select:  # replace the suite's default paths (tests, tests/...) by the selection
        base = [a for a in base if a != "tests" and not a.startswith("tests/")] + select
    ks = list(opts.k)
    if opts.quick and not opts.tests and SUITES[suite].get("quick_k"):
        ks.append(SUITES[suite]["quick_k"])
    if ks:
        base += ["-k", " and ".join(f"({k})" for k in ks)]

    deadline = time.monotonic() + opts.timeout
    facts = {"segments": 0, "crashes": [], "timed_out": False, "exit_codes": []}
    crashed = {}
    while True:
        facts["segments"] += 1
        cmd = list(base)
        with open(logpath, "a") as logf:
            logf.write(f"\n$ {' '.join(cmd)}\n")
            logf.flush()
            proc = subprocess.Popen(cmd, cwd=srcdir, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                rc = None
            finally:  # also when the runner itself is interrupted
                if proc.returncode is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        facts["exit_codes"].append(rc)
        collected, results, started = read_events(events)
        running = [n for n in started if n not in results and n not in crashed]
        if rc is None:
            facts["timed_out"] = True
            for n in running:
                crashed[n] = TIMEOUT
            break
        if collected is None:
            break  # nothing collected: a usage or collection error, see the log
        # pytest's exit codes 0-5 are its own; anything else (a signal, a hard exit
        # inside a test) means a test took the process down: resume after it.
        if rc in (0, 1, 2, 5) or not running:
            break
        for n in running:
            crashed[n] = CRASH
            facts["crashes"].append(n)
        remaining = [n for n in collected if n not in results and n not in crashed]
        if not remaining or facts["segments"] > opts.max_resumes:
            break
        with open(only, "w") as f:
            f.write("\n".join(remaining) + "\n")
        env["GREENHUB_UPSTREAM_ONLY"] = only
        # The resumed run reads the node ids; the events file keeps growing.
    collected, results, _ = read_events(events)
    out = {n: dict(r) for n, r in results.items()}
    for n, why in crashed.items():
        out[n] = {"test": n, "outcome": why, "seconds": 0, "built": 0, "ran": 0, "detail": why}
    for n in collected or []:
        out.setdefault(n, {"test": n, "outcome": NOT_RUN, "seconds": 0, "built": 0, "ran": 0,
                           "detail": "never ran (time cap, crash, or resumes exhausted)"})
    facts["collected"] = None if collected is None else len(collected)
    return out, facts


def rerun(python, suite, side, srcdir, outdir, opts, nodeids):
    """Run just nodeids on one side again; returns their outcomes."""
    sub = argparse.Namespace(**vars(opts))
    sub.k = []
    sub.timeout = min(opts.timeout, 120 + 10 * len(nodeids))
    res, _ = run_side(python, suite, side, srcdir, outdir, sub, label=side + "-rerun",
                      only_ids=nodeids)
    return {n: res.get(n, {}).get("outcome", NOT_RUN) for n in nodeids}


# ---------------------------------------------------------------------------
# Comparing


def counts(results):
    c = {PASS: 0, "failed": 0, "skipped": 0}
    for r in results.values():
        o = r["outcome"]
        if o == PASS:
            c[PASS] += 1
        elif o in (SKIP, XFAIL):
            c["skipped"] += 1
        else:
            c["failed"] += 1
    return c


def compare(stock, gh):
    regressions, improved = [], []
    for n, s in stock.items():
        g = gh.get(n, {"outcome": NOT_RUN})
        if s["outcome"] == PASS and g["outcome"] != PASS:
            regressions.append(n)
        elif s["outcome"] in (FAIL, ERROR) and g["outcome"] == PASS:
            improved.append(n)
    return sorted(regressions), sorted(improved)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suites", nargs="*", help=f"suites to run: {', '.join(SUITES)} (default: all; with --quick, "
                         "those with a CI subset)")
    ap.add_argument("--quick", action="store_true", help="the subset CI runs")
    ap.add_argument("--tests", action="append", default=[],
                    help="test files or node ids to run instead (repeatable)")
    ap.add_argument("-k", action="append", default=[], help="pytest -k expression (repeatable)")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--greenhub-path", help="import greenhub from this directory")
    ap.add_argument("--side", choices=["both", "stock", "greenhub"], default="both")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per suite and side")
    ap.add_argument("--test-timeout", type=float, default=60, help="seconds per test")
    ap.add_argument("--max-resumes", type=int, default=5)
    ap.add_argument("--rerun", type=int, default=2,
                    help="re-run regressed tests up to N times on both loops; a test that then "
                         "passes on greenhub, or fails on the stock loop too, is flaky")
    ap.add_argument("--install-deps", action="store_true",
                    help="pip install missing test dependencies")
    ap.add_argument("--cache-dir", default=DEFAULT_CACHE)
    ap.add_argument("--results-dir", default=DEFAULT_RESULTS)
    opts = ap.parse_args(argv)
    unknown = [s for s in opts.suites if s not in SUITES]
    if unknown:
        ap.error(f"unknown suite {unknown[0]!r}; known: {', '.join(SUITES)}")
    if opts.tests and len(opts.suites) != 1:
        ap.error("--tests needs exactly one suite")
    # With --quick, the suites that have a CI subset; otherwise every suite.
    suites = opts.suites or [s for s in SUITES if not opts.quick or "quick" in SUITES[s]]
    pyver = run_py(opts.python, "import sys; print('%d.%d.%d' % sys.version_info[:3])")
    if not pyver:
        raise SystemExit(f"cannot run {opts.python}")
    env = dict(os.environ, PYTHONPATH=opts.greenhub_path or REPO)
    if subprocess.run([opts.python, "-c", "import greenhub"], env=env, check=False).returncode:
        log("greenhub is not importable: make build first")
        return 2
    outdir = os.path.join(opts.results_dir, f"py{pyver}")
    os.makedirs(outdir, exist_ok=True)

    rows, summary, status = [], {"python": pyver, "suites": {}}, 0
    for suite in suites:
        version = installed_version(opts.python, suite)
        if version is None and opts.install_deps:
            log(f"installing {suite}")
            subprocess.run([opts.python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                            "--root-user-action=ignore", suite], check=True)
            version = installed_version(opts.python, suite)
        if version is None:
            log(f"{suite}: not installed in {opts.python}; skipped")
            status = max(status, 1)
            continue
        missing = ensure_deps(opts.python, suite, opts.install_deps)
        if missing:
            log(f"{suite}: test dependencies missing: {' '.join(missing)} (--install-deps)")
            status = max(status, 1)
            continue
        sdist = fetch_sdist(opts.python, suite, version, opts.cache_dir)
        srcdir = unpack_tests(sdist, os.path.join(opts.cache_dir, "src", f"{suite}-{version}"),
                              SUITES[suite].get("tests_from", "tests"))
        sides = ["stock", "greenhub"] if opts.side == "both" else [opts.side]
        res, facts, secs = {}, {}, {}
        for side in sides:
            log(f"== {suite} {version} on {side} (Python {pyver})")
            t0 = time.monotonic()
            res[side], facts[side] = run_side(opts.python, suite, side, srcdir, outdir, opts)
            secs[side] = round(time.monotonic() - t0, 1)
            c = counts(res[side])
            log(f"   {c[PASS]} passed, {c['failed']} failed, {c['skipped']} skipped "
                f"in {secs[side]} s")
            if facts[side]["collected"] is None:
                log(f"   nothing collected: see {outdir}/{suite}.{side}.log")
                status = max(status, 1)
        entry = {"version": version, "seconds": secs, "facts": facts,
                 "counts": {s: counts(r) for s, r in res.items()}}
        if len(sides) == 2:
            stock, gh = res["stock"], res["greenhub"]
            regressions, improved = compare(stock, gh)
            flaky = []
            for _ in range(opts.rerun):
                if not regressions:
                    break
                again_gh = rerun(opts.python, suite, "greenhub", srcdir, outdir, opts, regressions)
                again_st = rerun(opts.python, suite, "stock", srcdir, outdir, opts, regressions)
                for n in list(regressions):
                    if again_gh[n] == PASS or again_st[n] != PASS:
                        regressions.remove(n)
                        flaky.append(n)
            known = {}
            for n in list(regressions):
                detail = gh.get(n, {}).get("detail", "")
                for k in KNOWN:
                    if k["suite"] == suite and all(sig in detail for sig in k["signature"]):
                        regressions.remove(n)
                        known.setdefault(k["why"], []).append(n)
                        break
            on_gh = [n for n, r in gh.items() if r.get("built") or r.get("ran")]
            entry.update(
                regressions=[{"test": n, "stock": stock[n]["outcome"],
                              "greenhub": gh.get(n, {}).get("outcome", NOT_RUN),
                              "detail": gh.get(n, {}).get("detail", "")} for n in regressions],
                known=known, flaky=flaky, improved=improved, on_greenhub=len(on_gh),
                on_greenhub_passed=sum(gh[n]["outcome"] == PASS for n in on_gh),
            )
            sc, gc = entry["counts"]["stock"], entry["counts"]["greenhub"]
            rows.append((suite, version, sc[PASS], sc["failed"], sc["skipped"], gc[PASS],
                         gc["failed"], gc["skipped"], len(on_gh), len(regressions),
                         sum(map(len, known.values())), len(flaky), secs["stock"],
                         secs["greenhub"]))
            if regressions or facts["greenhub"]["collected"] is None:
                status = 1
        summary["suites"][suite] = entry
    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)

    if rows:
        head = ("suite", "version", "stock pass", "fail", "skip", "greenhub pass", "fail", "skip",
                "on gh", "regr", "known", "flaky", "stock s", "gh s")
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
        log("")
        for row in (head, *rows):
            log("  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))
    for suite, entry in summary["suites"].items():
        for r in entry.get("regressions", []):
            log(f"\nREGRESSION {suite} {r['test']}: stock pass, greenhub {r['greenhub']}")
            log("    " + "\n    ".join(r["detail"].splitlines()[-15:]))
        for why, tests in entry.get("known", {}).items():
            log(f"\nknown difference, {suite}, {len(tests)} tests: {why}")
            log("    " + "\n    ".join(tests))
        for n in entry.get("flaky", []):
            log(f"flaky {suite} {n}")
    log(f"\nresults: {outdir}/summary.json")
    return status


def _terminate(signum, frame):
    raise KeyboardInterrupt  # unwinds through run_side, which kills its pytest


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())
