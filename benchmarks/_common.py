"""Plumbing shared by the benchmark scripts in this directory.

Nothing here is timed.  It holds what every script needs around its measurements:

* the worker protocol: each script re-runs itself as a worker subprocess
  (``--worker``), which answers on stdout with lines ``MARK <json>``
  (``emit``) and, if it is driven step by step, reads one JSON command per
  line on stdin (``commands``); the parent side is ``WorkerProcess`` (a
  long-lived worker), ``run_worker_once`` (run to the end, collect its
  messages) and ``run_callgrind`` (the same under valgrind's callgrind);
* the loop kinds under test (``loop_factory``, ``loop_factory_info``);
* network servers in their own pinned processes (``serve_worker``,
  ``ServerProcess``, ``run_server_rounds``, ``pin_cpus``, ``pinned``,
  ``proc_cpu_times``) and their report (``server_header``, ``load_notes``),
  for bench_echo.py and bench_http.py;
* machine facts for the report header (``machine_info``, ``BackgroundLoad``);
* summary statistics and number formatting (``summarize``, ``fmt_ns``);
* small helpers: ``log``, ``write_json``, ``filter_ids``, ``libs_line``.
"""

import argparse
import datetime
import json
import os
import platform
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "@@BENCH "  # worker protocol lines on stdout start with this
LOOP_KINDS = ("greenhub", "uvloop", "asyncio")

# Debug/dev modes would change what we measure (asyncio debug mode, tracemalloc,
# debug allocators): workers never inherit them.
_WORKER_ENV_DROP = (
    "PYTHONASYNCIODEBUG",
    "PYTHONDEVMODE",
    "PYTHONMALLOC",
    "PYTHONTRACEMALLOC",
    "PYTHONPROFILEIMPORTTIME",
    "PYTHONBREAKPOINT",
)


def add_server_run_args(ap):
    """The options bench_echo.py and bench_http.py share: CPU pinning, retakes of
    starved runs, JSON output, server start-up, and the hidden worker-mode ones."""
    ap.add_argument(
        "--pin", default="auto", help="SERVER_CPU,CLIENT_CPU, 'auto' (the first two) or 'none'"
    )
    ap.add_argument(
        "--min-busy",
        type=float,
        default=0.8,
        help="retake a multi-connection run in which neither side got this share of a CPU",
    )
    ap.add_argument("--retries", type=int, default=1, help="times one run may be retaken")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--timeout", type=float, default=60, help="seconds a server may take to start")
    ap.add_argument("--greenhub-path", default=REPO)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--loop", help=argparse.SUPPRESS)
    ap.add_argument("--cpu", type=int, help=argparse.SUPPRESS)


def log(msg):
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def write_json(path, doc, log=log):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    log("wrote %s" % path)


def filter_ids(ids, spec):
    """The ids containing one of the comma-separated substrings in `spec` (all if empty)."""
    subs = [s for s in spec.split(",") if s]
    return [i for i in ids if not subs or any(s in i for s in subs)]


# --------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------


def emit(obj):
    """Send one protocol message to the parent."""
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def commands():
    """The parent's JSON commands, one per stdin line, until {"cmd": "quit"} or EOF."""
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            return
        yield cmd


def use_greenhub_path(path):
    """Import greenhub from `path` (the in-place build by default); '' = installed one."""
    if path:
        sys.path.insert(0, path)


def loop_factory(kind):
    """new_event_loop of the loop kind `kind` (imports only that library)."""
    if kind == "asyncio":
        import asyncio

        return asyncio.new_event_loop
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if kind == "greenhub":
        import greenhub

        return greenhub.new_event_loop
    raise ValueError("unknown loop kind %r" % kind)


def _libuv_version():
    try:
        import uvloop.loop

        v = uvloop.loop.libuv_get_version()
        return "%d.%d.%d" % ((v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF)
    except Exception:
        return None


def _dist_version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def loop_factory_info(kind):
    """Import only the library under test and return (factory, info dict)."""
    info = {"kind": kind}
    factory = loop_factory(kind)
    if kind == "asyncio":
        info["version"] = "stdlib " + platform.python_version()
    elif kind == "uvloop":
        import uvloop

        info["version"] = getattr(uvloop, "__version__", "?")
        info["libuv"] = _libuv_version()
        info["file"] = uvloop.__file__
    elif kind == "greenhub":
        import greenhub

        info["version"] = getattr(greenhub, "__version__", None) or _dist_version("greenhub")
        info["file"] = getattr(greenhub, "__file__", None)
        for attr in ("libev_version", "LIBEV_VERSION", "ev_version"):
            v = getattr(greenhub, attr, None)
            if v is not None:
                try:
                    info["libev"] = str(v() if callable(v) else v)
                except Exception:
                    pass
                break
        core = getattr(greenhub, "_core", None)
        if getattr(core, "__file__", None):
            # Which build ran: the lead rebuilds in place, so say when it was built.
            info["build"] = "%s built %s" % (
                os.path.basename(core.__file__),
                datetime.datetime.fromtimestamp(os.path.getmtime(core.__file__)).isoformat(
                    timespec="seconds"
                ),
            )
        try:
            import greenlet

            info["greenlet"] = greenlet.__version__
        except Exception:
            pass
    loop = factory()
    try:
        info["loop_class"] = "%s.%s" % (type(loop).__module__, type(loop).__qualname__)
        info["debug"] = bool(loop.get_debug())
    finally:
        loop.close()
    return factory, info


INSTR_MARK_FN = "getpgrp"


def instr_mark():
    """Under run_callgrind: dump the instructions counted since the previous mark."""
    os.getpgrp()


# --------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------


def worker_env():
    env = dict(os.environ)
    for var in _WORKER_ENV_DROP:
        env.pop(var, None)
    return env


def died_message(rc, stderr_tail):
    """'worker died (exit N; stderr: ...)' for a worker that ended without answering."""
    return "worker died (%s)%s" % (
        "signal %d" % -rc if rc < 0 else "exit %d" % rc,
        ("; stderr: " + stderr_tail) if stderr_tail else "",
    )


class WorkerFailed(RuntimeError):
    """A worker process died or hung."""


class WorkerProcess:
    """A long-lived worker: ``python argv...``, commands in on stdin, messages out.

    stderr goes to a temporary file (shown when the worker dies), so a chatty
    library can never block the worker on a full pipe; stray stdout lines
    without MARK are ignored.
    """

    def __init__(self, argv, timeout):
        self.timeout = timeout
        self.errf = tempfile.TemporaryFile(mode="w+b")
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.errf,
            env=worker_env(),
        )
        self.buf = b""

    def stderr_tail(self):
        try:
            self.errf.seek(0)
            return self.errf.read().decode("utf-8", "replace").strip()[-800:]
        except Exception:
            return ""

    def read(self, timeout=None):
        """The next message; WorkerFailed if the worker dies or takes too long."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line, self.buf = self.buf[:nl], self.buf[nl + 1 :]
                if line.startswith(MARK.encode()):
                    return json.loads(line[len(MARK) :])
                continue  # stray output from a library: ignore
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise WorkerFailed("timed out after %gs" % timeout)
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait()
                    raise WorkerFailed(died_message(self.proc.returncode, self.stderr_tail()))
                self.buf += chunk

    def send(self, **cmd):
        try:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            pass  # it died: read() reports how

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"cmd": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except Exception:
                self.kill()
        self.errf.close()


def run_worker_once(argv, timeout, prefix=()):
    """Run ``prefix... python argv...`` to the end.

    Returns (messages, returncode, stderr tail); WorkerFailed if it times out.
    """
    with tempfile.TemporaryFile() as errf:
        try:
            proc = subprocess.run(
                [*prefix, sys.executable, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errf,
                env=worker_env(),
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise WorkerFailed("timed out after %gs" % timeout) from None
        errf.seek(0)
        tail = errf.read().decode("utf-8", "replace").strip()[-800:]
    msgs = [
        json.loads(line[len(MARK) :])
        for line in proc.stdout.decode("utf-8", "replace").splitlines()
        if line.startswith(MARK)
    ]
    return msgs, proc.returncode, tail


def require_valgrind():
    if not shutil.which("valgrind"):
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")


class CallgrindDumps:
    """The numbered dumps of one callgrind run: dumps[k] = instructions in dump k."""

    def __init__(self, directory, base):
        self.totals = {}
        self.count = 0
        for name in os.listdir(directory):
            if not name.startswith(base + "."):
                continue
            self.count += 1
            with open(os.path.join(directory, name)) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        self.totals[name[len(base) + 1 :]] = int(line.split()[1])
                        break

    def __len__(self):
        return self.count

    def __getitem__(self, k):
        try:
            return self.totals[str(k)]
        except KeyError:
            raise ValueError("no summary in callgrind part %d" % k) from None


def run_callgrind(argv, timeout):
    """Run the worker ``python argv...`` under callgrind.

    Every instr_mark() in the worker dumps the instructions executed since the
    previous one into its own numbered part and zeroes the counter.  Returns
    (messages, dumps, returncode, stderr tail); WorkerFailed if it times out.
    """
    tmp = tempfile.mkdtemp(prefix="bench-cg-")
    try:
        out = os.path.join(tmp, "cg.out")
        prefix = [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=" + out,
            "--dump-before=" + INSTR_MARK_FN,
            "--dump-instr=no",
            "--dump-line=no",
        ]
        msgs, rc, tail = run_worker_once(argv, timeout, prefix)
        return msgs, CallgrindDumps(tmp, "cg.out"), rc, tail
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_parallel(fn, keys, *args):
    """{key: fn(key, *args)}, one thread per CPU (for the callgrind workers)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as ex:
        futs = {k: ex.submit(fn, k, *args) for k in keys}
    return {k: f.result() for k, f in futs.items()}


# --------------------------------------------------------------------------
# Machine facts for the header
# --------------------------------------------------------------------------


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _repo_git():
    try:
        r = subprocess.run(
            ["git", "-C", REPO, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return r.stdout.strip() or "no commits"
    except Exception:
        return None


def python_build_flags():
    """The configure flags that matter for speed, e.g. '--enable-optimizations --with-lto'."""
    try:
        import sysconfig

        cfg = sysconfig.get_config_var("CONFIG_ARGS") or ""
        flags = ("--enable-optimizations", "--with-lto", "--with-pydebug", "--disable-gil")
        return " ".join(f for f in flags if f in cfg) or "no PGO/LTO"
    except Exception:
        return None


def mem_total_kib():
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1])
    except OSError:
        return None


def machine_info(**extra):
    """Date, platform, CPU, Python and the repo's git describe, plus `extra`."""
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.replace("\n", " "),
        "python_executable": sys.executable,
    }
    info.update(extra)
    info["repo_git"] = _repo_git()
    return info


def libs_line(versions, repo_git, names=None):
    """'libs:    a 1.0, b 2.0; repo <describe>' in the order `names` (default: sorted)."""
    names = sorted(versions) if names is None else [k for k in names if k in versions]
    libs = ", ".join("%s %s" % (k, versions[k]) for k in names)
    return "libs:    %s; repo %s" % (libs, repo_git)


def _read_proc_stat():
    """(total, idle, steal) jiffies of all CPUs since boot, or None."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        return sum(vals[:8]), vals[3] + vals[4], (vals[7] if len(vals) > 7 else 0)
    except Exception:
        return None


class BackgroundLoad:
    """How busy other processes kept the machine between start and stop()."""

    def __init__(self):
        self.stat0 = _read_proc_stat()
        self.times0 = os.times()
        self.t0 = time.monotonic()

    def stop(self):
        """{"other_busy_cpus", "steal_pct"} (None without /proc/stat) and elapsed seconds."""
        elapsed = time.monotonic() - self.t0
        stat1, times1 = _read_proc_stat(), os.times()
        if not (self.stat0 and stat1):
            return None, elapsed
        hz = os.sysconf("SC_CLK_TCK")
        total = stat1[0] - self.stat0[0]
        busy = total - (stat1[1] - self.stat0[1])
        # CPU time of this process and its (finished) workers, in jiffies.
        ours = sum(times1[i] - self.times0[i] for i in range(4)) * hz
        ncpu = os.cpu_count() or 1
        return {
            "other_busy_cpus": max(0.0, (busy - ours) / total * ncpu) if total else 0,
            "steal_pct": 100.0 * (stat1[2] - self.stat0[2]) / total if total else 0,
        }, elapsed


# --------------------------------------------------------------------------
# Network servers (bench_echo.py, bench_http.py)
# --------------------------------------------------------------------------
#
# Each server runs in its own worker process (serve_worker), pinned to one CPU,
# and the load generator (a C program, wrk) is pinned to another, so that on a
# 2-CPU machine the two do not fight over one core.  The server's CPU time is
# read from /proc/<pid>/stat around the measured window.


def pin_cpus(spec):
    """(server CPU, client CPU) for --pin: 'auto' takes the first two CPUs this
    process may run on (no pinning with fewer), 'none' pins nothing, 'S,C' names them."""
    if spec == "none":
        return None, None
    if spec == "auto":
        cpus = sorted(os.sched_getaffinity(0))
        return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    server, client = (int(x) for x in spec.split(","))
    return server, client


def pinned(cpu):
    """A subprocess preexec_fn that pins the child (and the threads it starts) to `cpu`."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def proc_cpu_times(pid):
    """(user s, system s, minor page faults) of process `pid` so far (CPU in 10 ms ticks)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / hz, int(fields[12]) / hz, int(fields[7])  # utime, stime, minflt


def malloc_env():
    """glibc malloc tunables set in the environment (the servers inherit them)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}


def serve_worker(loop_kind, start, cpu=None):
    """Worker side of a server benchmark.

    Pins itself to `cpu`, makes a `loop_kind` loop, runs ``await start(loop)``
    (which starts listening on 127.0.0.1 and returns the port), reports
    ``{"event": "ready", "port", "info"}`` and serves until the parent writes to
    stdin or closes it, so a parent that dies takes its servers with it.
    """
    import asyncio

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    try:
        factory, info = loop_factory_info(loop_kind)
    except BaseException as e:  # not installed, not built: the parent reports it
        emit({"event": "unavailable", "error": "%s: %s" % (type(e).__name__, e)})
        return 0
    loop = factory()
    asyncio.set_event_loop(loop)
    port = loop.run_until_complete(start(loop))
    loop.add_reader(sys.stdin.fileno(), loop.stop)
    emit({"event": "ready", "port": port, "info": info})
    loop.run_forever()
    sys.stderr.flush()
    os._exit(0)  # no teardown: the last run's connections may still be open


class ServerProcess(WorkerProcess):
    """A server process running serve_worker: .port, .pid, .info, or .unavailable."""

    def __init__(self, argv, timeout=60):
        super().__init__(argv, timeout)
        self.pid = self.proc.pid
        self.unavailable = None
        try:
            msg = self.read()
        except BaseException:
            self.close()
            raise
        if msg.get("event") == "unavailable":
            self.unavailable = msg["error"]
            self.close()
        else:
            self.port, self.info = msg["port"], msg["info"]
            try:
                self.settle()
            except BaseException:
                self.close()
                raise

    def settle(self):
        """Open one connection and close it; wait until the server has closed its end.

        The first EOF a CPython server reads frees a whole 256 KiB receive buffer
        (asyncio's transports and sock_recv ask recv() for up to 256 KiB), which raises
        glibc's dynamic mmap threshold.  Until then every recv() mmaps and unmaps a
        fresh 256 KiB buffer: 2 page faults and tens of us of system time per call.  A
        long-running server is past that point, so a benchmark server must be too.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout) as s:
            s.shutdown(socket.SHUT_WR)
            while s.recv(4096):
                pass

    def alive(self):
        return self.proc.poll() is None

    def cpu(self):
        """(user, system) CPU seconds and minor page faults so far."""
        return proc_cpu_times(self.pid)


def run_server_rounds(
    pairs, cells, rounds, start_server, run_one, disturbed=None, retries=0, log=log
):
    """Measure every (server kind, loop kind) pair at every cell, `rounds` times.

    Each round starts a fresh server process per pair (``start_server(server,
    loop)`` returns a ServerProcess), then runs ``run_one(srv, cell)`` for each
    cell on each server in turn, rotating which goes first, so that background
    load that comes and goes falls on all of them alike.  A server that dies is
    reported and restarted for the remaining runs; every server is stopped at the
    end of its round, whatever happens.  A run for which ``disturbed(result, cell)``
    is true is taken again, at most `retries` times (the result says how often).

    Returns (raw, loop_info, unavailable, warnings): raw[(server, loop, cell)] is
    the list of run_one's results (a dict with "error" for a failed run).
    """
    raw, loop_info, unavailable, warnings = {}, {}, {}, []
    for rnd in range(rounds):
        servers = {}
        try:
            for s, k in pairs:
                if k in unavailable:
                    continue
                srv = start_server(s, k)
                if srv.unavailable:
                    unavailable[k] = srv.unavailable
                    log("%s unavailable: %s" % (k, srv.unavailable))
                    continue
                servers[(s, k)] = srv
                loop_info[k] = srv.info
            for ci, cell in enumerate(cells):
                log("round %d/%d  %s" % (rnd + 1, rounds, cell))
                order = list(servers)
                shift = (rnd + ci) % max(1, len(order))
                for s, k in order[shift:] + order[:shift]:
                    srv = servers[(s, k)]
                    r = run_one(srv, cell)
                    tries = 0
                    while "error" not in r and tries < retries and disturbed(r, cell):
                        tries += 1
                        r = run_one(srv, cell)
                    r["retaken"] = tries
                    if "error" in r and not srv.alive():
                        died = died_message(srv.proc.returncode, srv.stderr_tail()[-300:])
                        r["error"] = "server %s; %s" % (died, r["error"])
                        srv.close()
                        try:  # a fresh one for the remaining runs
                            servers[(s, k)] = start_server(s, k)
                        except WorkerFailed as e:
                            log("  restarting %s on %s failed: %s" % (s, k, e))
                    if "error" in r:
                        log("  %s on %s: FAILED: %s" % (s, k, r["error"]))
                    raw.setdefault((s, k, cell), []).append(r)
        finally:
            for (s, k), srv in servers.items():
                tail = srv.stderr_tail()
                if tail:
                    warnings.append("%s server on %s wrote to stderr: %s" % (s, k, tail[-300:]))
                srv.close()
    return raw, loop_info, unavailable, warnings


def starved(r, conns, min_busy):
    """Did other processes take the CPUs during this run?  With several connections
    in flight, a quiet machine keeps the server or the load generator busy; if
    neither got `min_busy` of its CPU, the run measured the machine."""
    return conns > 1 and max(r["server_busy"], r["client_busy"]) < min_busy


def retaken_line(raw, loops, min_busy):
    """'retaken ...' for the header, or None if no run was taken again."""
    counts = {}
    for (_, k, _), rs in raw.items():
        counts[k] = counts.get(k, 0) + sum(r.get("retaken", 0) for r in rs)
    if not any(counts.values()):
        return None
    return "         retaken because neither server nor client got %g of a CPU: %s" % (
        min_busy,
        ", ".join("%s %d" % (k, counts[k]) for k in loops if counts.get(k)),
    )


def server_header(title, minfo, background, loops, loop_info, unavailable):
    """The first lines of a server benchmark's report: machine, load, Python, loops."""
    L = [
        "%s  %s" % (title, minfo["date"]),
        "machine: %s, %s CPUs (%s usable), %s"
        % (minfo["cpu_model"], minfo["cpu_count"], minfo["cpus_usable"], minfo["platform"]),
    ]
    if background:
        L.append(
            "         during the run: other processes kept %.2f CPUs busy, steal %.1f%%%s"
            % (
                background["other_busy_cpus"],
                background["steal_pct"],
                "  <-- NOISY: numbers are suspect" if background["other_busy_cpus"] > 0.25 else "",
            )
        )
    L.append("python:  %s (%s)" % (minfo["python"].split()[0], minfo["python_build_flags"]))
    if minfo.get("malloc_env"):
        L.append("env:     %s" % " ".join("%s=%s" % kv for kv in minfo["malloc_env"].items()))
    for k in loops:
        if k in unavailable:
            L.append("%-9s UNAVAILABLE: %s" % (k + ":", unavailable[k][-200:]))
        elif k in loop_info:
            i = loop_info[k]
            extra = ", ".join(
                "%s %s" % (x, i[x]) for x in ("libuv", "greenlet", "build") if i.get(x)
            )
            L.append(
                "%-9s %s%s; %s"
                % (k + ":", i.get("version"), " (%s)" % extra if extra else "", i.get("loop_class"))
            )
    return L


def load_notes(summary, loops, cell_name, conns_of, per):
    """The notes under a server table, from the medians in summary[(server, loop, cell)]:
    how busy the servers were, and which runs were client-bound or page-faulting."""
    L = []

    def runs(pred):  # "server cell (loop, loop)" for the runs where pred(medians) holds
        hits = {}
        for (s, k, cell), m in summary.items():
            if pred(m):
                hits.setdefault((s, cell), []).append(k)
        return ", ".join(
            "%s %s (%s)" % (s, cell_name(cell), ", ".join(ks)) for (s, cell), ks in hits.items()
        )

    use = []
    for k in loops:
        v = [
            m["server_busy"]
            for (_, kk, cell), m in summary.items()
            if kk == k and conns_of(cell) > 1 and m["server_busy"] is not None
        ]
        if v:
            use.append("%s %.0f%%" % (k, 100 * statistics.median(v)))
    if use:
        L.append(
            "server CPU use in the multi-connection runs (median): %s. Well under 100%% means "
            "the server waited for the client or lost its CPU to other processes: its rate then "
            "understates it, and the CPU per %s is the number to compare." % (", ".join(use), per)
        )
    busy = runs(lambda m: (m["client_busy"] or 0) > 0.9)
    if busy:
        L.append(
            "client-bound (the load generator used > 90%% of its CPU, so the rate is capped; "
            "CPU per %s still holds): %s" % (per, busy)
        )
    faulting = runs(lambda m: (m["faults"] or 0) >= 0.5)
    if faulting:
        L.append(
            "page-faulting (>= 0.5 minor page faults per %s in the server: malloc handing "
            "buffers back to the kernel and taking them again): %s" % (per, faulting)
        )
    return L


def greenhub_ratio_pairs(loops):
    """[("greenhub", "uvloop"), ("greenhub", "asyncio")], for the kinds in `loops`."""
    if "greenhub" not in loops:
        return []
    return [("greenhub", b) for b in ("uvloop", "asyncio") if b in loops]


RATIO_NAME = {"greenhub": "gh", "uvloop": "uv", "asyncio": "aio"}


def ratio(a, b):
    return a / b if a and b else None


def fmt_ratio(v):
    return "-" if v is None else "%.2f" % v


# --------------------------------------------------------------------------
# Statistics and formatting
# --------------------------------------------------------------------------


def summarize(per_proc):
    """per_proc: one list of samples per worker process.

    spread is the range of the per-process medians / the median (with one
    process: the range of its samples / the median).  None if there are no samples.
    """
    per_proc = [s for s in per_proc if s]
    allv = [v for s in per_proc for v in s]
    if not allv:
        return None
    med = statistics.median(allv)
    meds = [statistics.median(s) for s in per_proc]
    lo, hi = (min(meds), max(meds)) if len(meds) > 1 else (min(allv), max(allv))
    return {
        "median": med,
        "best": min(allv),
        "spread": (hi - lo) / abs(med) if med else 0.0,
        "proc_medians": meds,
        "samples": len(allv),
        "processes": len(per_proc),
    }


def fmt_ns(v, small="%.1f"):
    """Nanoseconds in at most ~5 characters; `small` formats values below 1000."""
    if v is None:
        return "-"
    if abs(v) >= 100_000:
        return "%.0fus" % (v / 1000)
    if abs(v) >= 10_000:
        return "%.1fus" % (v / 1000)
    if abs(v) >= 1000:
        return "%.0f" % v
    return small % v
