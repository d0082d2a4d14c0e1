"""``python -m greenhub``: run a program on greenhub, benchmark it, describe the build.

    python -m greenhub run [--debug] [--watchdog SECONDS] [--patch] script.py [args...]
    python -m greenhub run [--debug] [--watchdog SECONDS] [--patch] -m module [args...]
    python -m greenhub bench [--full] [--only NAMES] [--json DIR]
    python -m greenhub info [--json]

``run`` makes greenhub the loop asyncio creates (``greenhub.install()``) and then runs
the program as ``python script.py`` / ``python -m module`` would: same ``sys.argv``,
``sys.path[0]`` and ``__main__``.  ``bench`` runs the benchmark scripts (shipped in the
wheel as ``greenhub._benchmarks``; ``benchmarks/`` in a checkout) against the peers that
are installed and ends with one table of ratios.  ``info`` prints what a bug report needs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import runpy
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Sequence
from importlib import metadata
from typing import Any

_PROG = "python -m greenhub"


# -- run ---------------------------------------------------------------------------

_RUN_USAGE = f"""\
usage: {_PROG} run [--debug] [--watchdog SECONDS] [--patch] script.py [args...]
       {_PROG} run [--debug] [--watchdog SECONDS] [--patch] -m module [args...]

Run a Python program with greenhub as the asyncio event loop: asyncio.run(),
asyncio.Runner() and asyncio.new_event_loop() without a loop factory make greenhub
loops (greenhub.install()), and greenhub.await_() works in the program's sync code.

options (before the script or -m; everything after belongs to the program):
  -h, --help           show this help and exit
  --debug              asyncio's debug mode on every loop (PYTHONASYNCIODEBUG=1, also
                       for processes the program starts) and warnings shown as in
                       Python's development mode
  --watchdog SECONDS   report any callback or task step that holds a greenhub loop
                       longer than SECONDS (sets GREENHUB_WATCHDOG=SECONDS: every
                       greenhub loop the program makes, or its child processes make,
                       watches itself)
  --patch              greenhub.monkey.patch_all() before the program starts

A loop the program builds itself (asyncio.SelectorEventLoop(); uvicorn's default
--loop auto) stays the stock loop, with a warning: give uvicorn
--loop greenhub:new_event_loop.
"""


class _UsageError(Exception):
    pass


def _parse_run(argv: Sequence[str]) -> dict[str, Any]:
    """The run subcommand's options, parsed as the interpreter parses its own: options
    end at the script (or -m MODULE); what follows is the program's."""
    opts: dict[str, Any] = {"debug": False, "watchdog": None, "patch": False}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            opts["help"] = True
            return opts
        if arg == "--debug":
            opts["debug"] = True
        elif arg == "--patch":
            opts["patch"] = True
        elif arg == "--watchdog" or arg.startswith("--watchdog="):
            if "=" in arg:
                value = arg.partition("=")[2]
            else:
                i += 1
                if i == len(argv):
                    raise _UsageError("--watchdog needs a number of seconds")
                value = argv[i]
            opts["watchdog"] = _watchdog_seconds(value)
        elif arg == "-m" or (arg.startswith("-m") and not arg.startswith("--")):
            module = arg[2:] or (argv[i + 1] if i + 1 < len(argv) else "")
            if not module:
                raise _UsageError("-m needs a module name")
            rest = argv[i + 1 :] if arg[2:] else argv[i + 2 :]
            opts["module"], opts["args"] = module, list(rest)
            return opts
        elif arg == "--":
            if i + 1 == len(argv):
                raise _UsageError("a script or -m module is required")
            opts["script"], opts["args"] = argv[i + 1], list(argv[i + 2 :])
            return opts
        elif arg.startswith("-") and arg != "-":
            raise _UsageError(f"unknown option {arg!r}")
        else:
            opts["script"], opts["args"] = arg, list(argv[i + 1 :])
            return opts
        i += 1
    raise _UsageError("a script or -m module is required")


def _watchdog_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise _UsageError(f"--watchdog takes seconds (a number), not {value!r}") from None
    from . import _core

    try:
        _core._check_watchdog_threshold(seconds)
    except (TypeError, ValueError) as exc:
        raise _UsageError(f"--watchdog {value}: {exc}") from None
    return seconds


def _foreign_loop_warning(greenhub_loop: type) -> Any:
    """What ``run`` does when a loop starts running: once, if it is not a greenhub loop,
    say so - the program built that loop itself (uvicorn's default ``--loop auto``
    makes an ``asyncio.SelectorEventLoop``), which install() cannot change."""
    warned = False

    def seen(loop: Any) -> None:
        nonlocal warned
        if warned or isinstance(loop, greenhub_loop):
            return
        warned = True
        cls = type(loop)
        sys.stderr.write(
            f"{_PROG} run: warning: the program runs an event loop it builds itself "
            f"({cls.__module__}.{cls.__qualname__}), not a greenhub loop "
            "(uvicorn: pass --loop greenhub:new_event_loop)\n"
        )
        sys.stderr.flush()

    return seen


def _module_problem(name: str) -> str | None:
    """Why ``-m name`` cannot run (what the interpreter says), or None.  Finding the
    module imports its parent packages, as ``python -m`` does; runpy then reuses them,
    and an exception their code raises propagates as the program's."""
    try:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            main = importlib.util.find_spec(name + ".__main__")
            if main is None:
                return (
                    f"No module named {name}.__main__; "
                    f"{name!r} is a package and cannot be directly executed"
                )
    except (ImportError, ValueError) as exc:  # ValueError: a relative name
        # A package on the way that is missing is the command's problem; an ImportError
        # its own code raises is the program's, and keeps its traceback (as python -m).
        missing = getattr(exc, "name", None)
        if isinstance(exc, ImportError) and (
            missing is None or not (name == missing or name.startswith(missing + "."))
        ):
            raise
        problem = f"{type(exc).__name__}: {exc}"
        return f"Error while finding module specification for {name!r} ({problem})"
    return f"No module named {name}" if spec is None else None


def _cmd_run(argv: Sequence[str]) -> int:
    try:
        opts = _parse_run(argv)
    except _UsageError as exc:
        sys.stderr.write(_RUN_USAGE.split("\n\n")[0] + f"\n{_PROG} run: error: {exc}\n")
        return 2
    if opts.get("help"):
        sys.stdout.write(_RUN_USAGE)
        return 0
    if "script" in opts and not os.path.exists(opts["script"]):
        # What the interpreter says for a missing script, and its exit status.
        path = os.path.abspath(opts["script"])
        sys.stderr.write(f"{_PROG} run: can't open file {path!r}: No such file or directory\n")
        return 2
    if "script" in opts and os.path.isdir(opts["script"]):
        if not os.path.exists(os.path.join(opts["script"], "__main__.py")):
            path = os.path.abspath(opts["script"])
            sys.stderr.write(f"{_PROG} run: can't find '__main__' module in {path!r}\n")
            return 2
    if opts["debug"]:
        os.environ["PYTHONASYNCIODEBUG"] = "1"  # read by every new loop, as asyncio does
        if not sys.warnoptions:
            warnings.simplefilter("default")  # what -X dev shows: ResourceWarning & co.
    if opts["watchdog"] is not None:
        os.environ["GREENHUB_WATCHDOG"] = repr(opts["watchdog"])
    import greenhub
    from greenhub import _private

    if opts["patch"]:
        from greenhub import monkey

        monkey.patch_all()
    greenhub.install()
    _private.watch_running_loops(_foreign_loop_warning(greenhub.Loop))
    if "module" in opts:
        # As `python -m`: the current directory first on sys.path; runpy sets argv[0].
        sys.argv[:] = [opts["module"], *opts["args"]]
        sys.path[0] = os.getcwd()
        problem = _module_problem(opts["module"])
        if problem is not None:
            sys.stderr.write(f"{_PROG} run: {problem}\n")
            return 2
        runpy.run_module(opts["module"], run_name="__main__", alter_sys=True)
    else:
        script = opts["script"]
        sys.argv[:] = [script, *opts["args"]]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        runpy.run_path(script, run_name="__main__")
    return 0


# -- info --------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _loaded_library(prefix: str) -> str | None:
    """The path of the shared library named ``prefix*.so*`` that this process mapped
    (Linux's /proc/self/maps), or None: which libev _core resolved at run time (the
    wheel's own copy, or the system's), not the one it was built against."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(None, 5)[-1].strip()
                name = os.path.basename(path)
                if name.startswith(prefix) and ".so" in name:
                    return os.path.realpath(path)
    except OSError:
        pass
    return None


def info() -> dict[str, Any]:
    """What `python -m greenhub info` reports, as a dict."""
    import greenlet

    import greenhub
    from greenhub import _core

    loop = greenhub.new_event_loop()
    try:
        backend = loop._backend
    finally:
        loop.close()
    peers = {}
    for dist in ("uvloop", "gevent", "greenback", "asgiref", "sqlalchemy", "anyio", "django"):
        version = _version(dist)
        if version is not None:
            peers[dist] = version
    return {
        "greenhub": {
            "version": _version("greenhub-loop") or "unknown (not installed: a checkout?)",
            "path": os.path.dirname(os.path.abspath(greenhub.__file__)),
            "extension": os.path.abspath(_core.__file__),
            "debug_build": bool(_core.DEBUG_BUILD),
            "build_flags": _core.BUILD_FLAGS,
        },
        "libev": {
            "version": "%d.%d" % _core.LIBEV_VERSION,
            "backend": backend,
            "library": _loaded_library("libev"),
        },
        "greenlet": greenlet.__version__,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
            "free_threaded_build": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        },
        "platform": platform.platform(),
        "peers": peers,
    }


def _cmd_info(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog=f"{_PROG} info",
        description="Versions of greenhub, libev (and the backend it chose), greenlet and "
        "Python, the extension's build flags, and the peers installed: what a bug report needs.",
    )
    p.add_argument("--json", action="store_true", help="print it as JSON")
    args = p.parse_args(argv)
    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    gh, ev, py = data["greenhub"], data["libev"], data["python"]
    build = "debug build" if gh["debug_build"] else "release build"
    lines = [
        f"greenhub   {gh['version']}  ({gh['path']})",
        f"extension  {build}: {gh['build_flags']}",
        f"           {gh['extension']}",
        f"libev      {ev['version']}, backend {ev['backend']}"
        + (f"  ({ev['library']})" if ev["library"] else ""),
        f"greenlet   {data['greenlet']}",
        f"Python     {py['version']} ({py['implementation']}, {py['executable']})",
        f"platform   {data['platform']}",
        "peers      "
        + (", ".join(f"{k} {v}" for k, v in data["peers"].items()) or "none installed"),
    ]
    print("\n".join(lines))
    return 0


# -- bench -------------------------------------------------------------------------


def benchmarks_dir() -> str | None:
    """Where the benchmark scripts are: inside the installed package, or the
    checkout's benchmarks/ next to an in-place build."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (
        os.path.join(here, "_benchmarks"),
        os.path.join(os.path.dirname(here), "benchmarks"),
    ):
        if os.path.exists(os.path.join(path, "_common.py")):
            return path
    return None


def _summary(where: str) -> Any:
    """benchmarks/_summary.py (shipped beside the scripts): the benchmark list, and
    what turns their JSON results into the ratio table."""
    spec = importlib.util.spec_from_file_location(
        "greenhub_bench_summary", os.path.join(where, "_summary.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cmd_bench(argv: Sequence[str]) -> int:
    where = benchmarks_dir()
    summary = _summary(where) if where is not None else None
    quick = [b for b in summary.BENCHMARKS if b[3]] if summary is not None else []
    names = [b[0] for b in quick]
    p = argparse.ArgumentParser(
        prog=f"{_PROG} bench",
        description="Run greenhub's benchmarks side by side with the stock asyncio loop, "
        "uvloop and gevent (each where installed: pip install 'greenhub-loop[bench]') and "
        "print one table of ratios.  The quick profile takes about a minute; each "
        "benchmark's own table is printed too (--quiet: only the summary).  The HTTP and "
        "Django benchmarks need wrk and PostgreSQL: `make bench` in a checkout runs them.",
    )
    p.add_argument("--full", action="store_true", help="the full runs (several minutes)")
    p.add_argument("--only", metavar="NAMES", help="comma-separated subset of: " + ",".join(names))
    p.add_argument(
        "--json",
        metavar="DIR",
        help="keep each benchmark's JSON results in DIR, with charts and report.md "
        "(benchmarks/report.py) when matplotlib is installed",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary table")
    args = p.parse_args(argv)
    if where is None or summary is None:
        sys.stderr.write(f"{_PROG} bench: the benchmark scripts are not installed\n")
        return 2
    selected = names
    if args.only:
        selected = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in selected if n not in names]
        if unknown or not selected:
            p.error(f"unknown benchmark {', '.join(unknown) or '(none)'}; choose from {names}")
    import greenhub

    # The workers import the same greenhub as this process.
    gh_path = os.path.dirname(os.path.dirname(os.path.abspath(greenhub.__file__)))
    out_dir = args.json or tempfile.mkdtemp(prefix="greenhub-bench-")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        p.error(f"--json {out_dir}: {exc.strerror or exc}")
    results: dict[str, dict[str, Any]] = {}
    failed = []
    todo = [b for b in quick if b[0] in selected]
    for n, (name, script, what, _) in enumerate(todo, 1):
        print(f"[{n}/{len(todo)}] {name}: {what} ...", file=sys.stderr, flush=True)
        path = os.path.join(out_dir, f"{name}.json")
        cmd = [sys.executable, os.path.join(where, script), "--json", path]
        cmd += ["--greenhub-path", gh_path] + ([] if args.full else ["--quick"])
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        took = time.monotonic() - start
        if not args.quiet and proc.stdout.strip():
            print(proc.stdout.rstrip() + "\n", flush=True)
        if proc.returncode != 0 or not os.path.exists(path):
            failed.append(name)
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            print(
                f"[{n}/{len(todo)}] {name}: FAILED (exit {proc.returncode})\n{tail}",
                file=sys.stderr,
            )
            continue
        with open(path) as f:
            results[name] = json.load(f)
        print(f"[{n}/{len(todo)}] {name}: done in {took:.0f} s", file=sys.stderr, flush=True)
    print("summary: greenhub and its peers, side by side from this run", flush=True)
    print(summary.ratio_table(results))
    if args.json:
        if results and importlib.util.find_spec("matplotlib") is not None:
            report = [sys.executable, os.path.join(where, "report.py"), out_dir]
            subprocess.run(report, stdout=subprocess.DEVNULL, check=False)
        print(f"results in {out_dir}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# -- main --------------------------------------------------------------------------

_COMMANDS = {
    "run": (_cmd_run, "run a script or module with greenhub as the asyncio loop"),
    "bench": (_cmd_bench, "benchmarks against the stock loop, uvloop and gevent"),
    "info": (_cmd_info, "versions, libev backend and build flags"),
}


def _usage() -> str:
    lines = [f"usage: {_PROG} {{{','.join(_COMMANDS)}}} ...", "", "commands:"]
    lines += [f"  {name:<8}{help_}" for name, (_, help_) in _COMMANDS.items()]
    lines.append(f"\n'{_PROG} COMMAND --help' describes each.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        (sys.stdout if args else sys.stderr).write(_usage())
        return 0 if args else 2
    command = _COMMANDS.get(args[0])
    if command is None:
        sys.stderr.write(_usage() + f"{_PROG}: error: unknown command {args[0]!r}\n")
        return 2
    return command[0](args[1:])
