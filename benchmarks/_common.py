"""Plumbing shared by the benchmark scripts in this directory.

Nothing here is timed.  It holds what every script needs around its measurements:

* the worker protocol: each script re-runs itself as a worker subprocess
  (``--worker``), which answers on stdout with lines ``MARK <json>``
  (``emit``) and, if it is driven step by step, reads one JSON command per
  line on stdin (``commands``); the parent side is ``WorkerProcess`` (a
  long-lived worker), ``run_worker_once`` (run to the end, collect its
  messages) and ``run_callgrind`` (the same under valgrind's callgrind);
* the loop kinds under test (``loop_factory``);
* machine facts for the report header (``machine_info``, ``BackgroundLoad``);
* summary statistics and number formatting (``summarize``, ``fmt_ns``);
* small helpers: ``log``, ``write_json``, ``filter_ids``, ``libs_line``.
"""

import datetime
import json
import os
import platform
import select
import shutil
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
