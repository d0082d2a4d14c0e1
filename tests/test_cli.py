"""`python -m greenhub`: run, info and bench, as a user runs them (a child interpreter
importing the same greenhub as this suite).

The command line has no stock-asyncio counterpart to compare with; where it runs a
program, the program's view (sys.argv, sys.path[0], __main__, exit status, traceback)
is compared with what the plain interpreter gives the same program.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import support

import greenhub
from greenhub import _core

GREENHUB_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(greenhub.__file__)))


def _env(**extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONASYNCIODEBUG", "GREENHUB_WATCHDOG", "PYTHONDEVMODE")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [GREENHUB_ROOT, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def cli(*args, cwd=None, timeout=50, **env):
    return subprocess.run(
        [sys.executable, "-m", "greenhub", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(**env),
        timeout=timeout,
    )


def plain(*args, cwd=None):
    """The same program under the plain interpreter."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=_env(), timeout=50
    )


PROGRAM = textwrap.dedent(
    """
    import asyncio, json, sys

    async def main():
        loop = asyncio.get_running_loop()
        return {"loop": type(loop).__module__ + "." + type(loop).__qualname__,
                "debug": loop.get_debug()}

    out = asyncio.run(main())
    out.update(argv=sys.argv, path0=sys.path[0], name=__name__,
               main_file=sys.modules["__main__"].__file__)
    print(json.dumps(out))
    """
)


@pytest.fixture
def program(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(PROGRAM)
    return path


def _last_json(stdout):
    return json.loads(stdout.strip().splitlines()[-1])


# -- run -------------------------------------------------------------------------


def test_run_script_gets_a_greenhub_loop_and_the_interpreters_view(program, tmp_path):
    got = cli("run", str(program), "a", "--b", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    ours = _last_json(got.stdout)
    theirs = _last_json(plain(str(program), "a", "--b", cwd=tmp_path).stdout)
    assert ours["loop"] == "greenhub.Loop"
    assert theirs["loop"] != "greenhub.Loop"
    for key in ("argv", "path0", "name", "main_file", "debug"):
        assert ours[key] == theirs[key], key


def test_run_module_as_python_dash_m(tmp_path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(PROGRAM)
    got = cli("run", "-m", "mypkg", "x", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    ours = _last_json(got.stdout)
    theirs = _last_json(plain("-m", "mypkg", "x", cwd=tmp_path).stdout)
    assert ours["loop"] == "greenhub.Loop"
    for key in ("argv", "path0", "name", "main_file"):
        assert ours[key] == theirs[key], key


def test_run_exit_status_and_traceback_are_the_programs(tmp_path):
    (tmp_path / "exits.py").write_text("import sys; sys.exit(3)\n")
    assert cli("run", "exits.py", cwd=tmp_path).returncode == 3
    (tmp_path / "raises.py").write_text("def f():\n    raise KeyError('boom')\nf()\n")
    got = cli("run", "raises.py", cwd=tmp_path)
    assert got.returncode == plain("raises.py", cwd=tmp_path).returncode == 1
    assert got.stderr.rstrip().endswith("KeyError: 'boom'")
    assert 'raises.py", line 2, in f' in got.stderr


def test_run_warns_once_when_the_program_builds_its_own_stock_loop(tmp_path):
    """install() makes the loops asyncio makes; a program that builds its loop class
    itself (uvicorn's default --loop auto: asyncio.SelectorEventLoop) keeps it, which
    run says once instead of leaving the user to believe it runs on greenhub."""
    (tmp_path / "own.py").write_text(
        "import asyncio\n"
        "async def main():\n    return type(asyncio.get_running_loop()).__name__\n"
        "for _ in range(2):\n"
        "    loop = asyncio.SelectorEventLoop()\n"
        "    print(loop.run_until_complete(main()))\n"
        "    loop.close()\n"
        "print(asyncio.run(main()))\n"
    )
    got = cli("run", "own.py", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == ["_UnixSelectorEventLoop", "_UnixSelectorEventLoop", "Loop"]
    assert got.stderr.count("warning: the program runs an event loop it builds itself") == 1
    assert "(asyncio.unix_events._UnixSelectorEventLoop), not a greenhub loop" in got.stderr
    assert "--loop greenhub:new_event_loop" in got.stderr
    (tmp_path / "ours.py").write_text(
        "import asyncio\nasync def main():\n    await asyncio.sleep(0)\n"
        "asyncio.run(main())\nasyncio.new_event_loop().run_until_complete(main())\n"
    )
    quiet = cli("run", "ours.py", cwd=tmp_path)
    assert (quiet.returncode, quiet.stderr) == (0, "")


def test_run_sync_program_awaits_at_top_level(tmp_path):
    (tmp_path / "sync.py").write_text(
        "import asyncio, greenhub\n"
        "async def f():\n    await asyncio.sleep(0)\n    return 42\n"
        "print(greenhub.await_(f()))\n"
    )
    got = cli("run", "sync.py", cwd=tmp_path)
    assert (got.returncode, got.stdout.strip()) == (0, "42"), got.stderr


def test_run_debug_turns_on_asyncio_debug_mode(program):
    got = cli("run", "--debug", str(program))
    assert got.returncode == 0, got.stderr
    assert _last_json(got.stdout)["debug"] is True


def test_run_watchdog_reports_a_blocking_step(tmp_path):
    (tmp_path / "blocks.py").write_text(
        "import asyncio, time\n"
        "async def main():\n    time.sleep(0.5)\n    await asyncio.sleep(0)\n"
        "asyncio.run(main())\n"
    )
    got = cli("run", "--watchdog", "0.05", "blocks.py", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    assert "blocked the event loop" in got.stderr
    assert "blocks.py" in got.stderr  # the stack points at the blocking line
    quiet = cli("run", "blocks.py", cwd=tmp_path)
    assert "blocked the event loop" not in quiet.stderr


def test_run_patch_patches_before_the_program(tmp_path):
    (tmp_path / "patched.py").write_text(
        "import greenhub.monkey as m\nprint(m.is_patched('time'), m.is_patched('socket'))\n"
    )
    assert cli("run", "--patch", "patched.py", cwd=tmp_path).stdout.strip() == "True True"
    assert cli("run", "patched.py", cwd=tmp_path).stdout.strip() == "False False"


@pytest.mark.parametrize(
    "args, message",
    [
        (["run"], "a script or -m module is required"),
        (["run", "--debug"], "a script or -m module is required"),
        (["run", "-m"], "-m needs a module name"),
        (["run", "--watchdog"], "--watchdog needs a number of seconds"),
        (["run", "--watchdog", "soon", "x.py"], "not 'soon'"),
        (["run", "--watchdog", "nan", "x.py"], "--watchdog nan"),
        (["run", "--watchdog=-1", "x.py"], "--watchdog -1"),
        (["run", "--frobnicate", "x.py"], "unknown option '--frobnicate'"),
        (["run", "missing.py"], "can't open file"),
        (["frobnicate"], "unknown command 'frobnicate'"),
        ([], "usage: python -m greenhub"),
        (["bench", "--only", "nope"], "unknown benchmark nope"),
    ],
)
def test_usage_errors_exit_2_with_a_message(args, message, tmp_path):
    got = cli(*args, cwd=tmp_path)
    assert got.returncode == 2
    assert message in got.stderr
    assert "Traceback" not in got.stderr


def test_run_unrunnable_module_or_directory_is_a_message_not_a_traceback(tmp_path):
    """What the interpreter says (in one line) for a -m module or a directory it cannot
    run, with the usage-error status; the program's own ImportError stays a traceback."""
    (tmp_path / "nomain").mkdir()
    (tmp_path / "nomain" / "__init__.py").write_text("")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "__init__.py").write_text("raise ImportError('no dep')\n")
    (tmp_path / "broken" / "sub.py").write_text("")
    (tmp_path / "adir").mkdir()
    cases = [
        (["-m", "no_such_module_xyz"], "No module named no_such_module_xyz"),
        (["-m", "nomain"], "'nomain' is a package and cannot be directly executed"),
        (["-m", "nomain.sub"], "No module named nomain.sub"),
        (["-m", "nopkg_xyz.sub"], "for 'nopkg_xyz.sub' (ModuleNotFoundError: No module"),
        (["adir"], "can't find '__main__' module in"),
    ]
    for args, message in cases:
        got = cli("run", *args, cwd=tmp_path)
        assert message in plain(*args, cwd=tmp_path).stderr, args
        assert (got.returncode, "Traceback" in got.stderr) == (2, False), (args, got.stderr)
        assert message in got.stderr, args
    (tmp_path / "imports.py").write_text("import no_such_dependency_xyz\n")
    for args in (["-m", "imports"], ["-m", "broken.sub"]):
        got, theirs = cli("run", *args, cwd=tmp_path), plain(*args, cwd=tmp_path)
        assert got.returncode == theirs.returncode == 1
        assert got.stderr.splitlines()[-1] == theirs.stderr.splitlines()[-1]
        assert "Traceback" in got.stderr


def test_bench_json_that_is_not_a_directory_is_a_usage_error(tmp_path):
    (tmp_path / "afile").write_text("")
    got = cli("bench", "--only", "memory", "--json", "afile", cwd=tmp_path)
    assert (got.returncode, "Traceback" in got.stderr) == (2, False), got.stderr
    assert "--json afile: File exists" in got.stderr


def test_help_of_each_command(program):
    assert "commands:" in cli("--help").stdout
    assert "--watchdog SECONDS" in cli("run", "--help").stdout
    assert "--only NAMES" in cli("bench", "--help").stdout
    assert "--json" in cli("info", "--help").stdout
    # Options after the script belong to the program, as with the interpreter.
    got = cli("run", str(program), "--help", "--debug")
    assert _last_json(got.stdout)["argv"][1:] == ["--help", "--debug"]


# -- info ------------------------------------------------------------------------


def test_info_describes_this_build():
    got = cli("info", "--json")
    assert got.returncode == 0, got.stderr
    data = json.loads(got.stdout)
    assert data["greenhub"]["path"] == os.path.dirname(os.path.abspath(greenhub.__file__))
    assert data["greenhub"]["debug_build"] is bool(_core.DEBUG_BUILD)
    assert data["greenhub"]["build_flags"] == _core.BUILD_FLAGS
    assert "-Wall" in _core.BUILD_FLAGS  # setup.py's flags, recorded at build time
    assert data["libev"]["version"] == "%d.%d" % _core.LIBEV_VERSION
    loop = greenhub.new_event_loop()
    try:
        assert data["libev"]["backend"] == loop._backend
    finally:
        loop.close()
    assert data["python"]["version"] == "%d.%d.%d" % sys.version_info[:3]
    import greenlet

    assert data["greenlet"] == greenlet.__version__
    # The libev this process loaded (the wheel's copy when installed from the wheel),
    # which the build flags' "libev from DIR" (where it was built) need not be.
    ldd = subprocess.run(["ldd", _core.__file__], capture_output=True, text=True, check=True)
    (resolved,) = [line.split()[2] for line in ldd.stdout.splitlines() if "libev" in line]
    assert data["libev"]["library"] == os.path.realpath(resolved)
    text = cli("info")
    assert text.returncode == 0
    assert f"({data['libev']['library']})" in text.stdout
    assert f"libev      {data['libev']['version']}, backend {data['libev']['backend']}" in (
        text.stdout
    )


# -- bench -----------------------------------------------------------------------


def test_bench_quick_profile_prints_one_ratio_table(tmp_path):
    got = cli("bench", "--only", "scheduling,memory", "-q", "--json", str(tmp_path), timeout=55)
    assert got.returncode == 0, got.stderr
    assert "[1/2] scheduling" in got.stderr and "[2/2] memory" in got.stderr
    table = got.stdout
    assert "gh/aio" in table  # greenhub against the stock loop, always there
    assert "sleep0_100_tasks (n=" in table and "idle task" in table
    for name in ("scheduling", "memory"):
        with open(tmp_path / f"{name}.json") as f:
            assert json.load(f)  # each benchmark's raw results are kept
    # ... with their charts and report (matplotlib is in the [test] extra)
    assert (tmp_path / "scheduling.svg").stat().st_size > 0
    assert (tmp_path / "scheduling.png").stat().st_size > 0
    report = (tmp_path / "report.md").read_text()
    assert "![scheduling](scheduling.svg)" in report
    assert "python3 benchmarks/bench_scheduling.py --quick" in report


def test_report_draws_the_server_benchmarks(tmp_path):
    """report.py on results of the benchmarks a test cannot run (wrk, PostgreSQL), in
    the form bench_http.py and bench_django.py write them."""
    machine = {"date": "2026-01-01T00:00:00", "cpu_model": "X", "cpu_count": 2}
    http = {
        "machine": machine,
        "config": {"quick": False},
        "results": [
            {
                "server": "streams",
                "conns": 64,
                "loops": {
                    "greenhub": {"cpu_us": 20.0},
                    "uvloop": {"cpu_us": 25.0},
                    "asyncio": {"cpu_us": 50.0},
                },
            }
        ],
    }
    django = {
        "machine": machine,
        "config": {},
        "results": [
            {
                "workload": "lookup",
                "setup": "greenhub vs stock",
                "servers": {"greenhub": {"req_per_s": 3000.0}, "stock": {"req_per_s": 1000.0}},
            }
        ],
    }
    wsgi = {  # bench_wsgi.py's form
        "machine": machine,
        "config": {"quick": False},
        "results": [
            {
                "workload": "slow",
                "servers": {
                    "greenhub": {"cpu_per_req": 100e-6},
                    "gevent": {"cpu_per_req": 200e-6},
                    "a2wsgi": {"failed": "RuntimeError: server did not start"},
                },
            }
        ],
    }
    for name, doc in (("http", http), ("django", django), ("wsgi", wsgi)):
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    from greenhub._cli import benchmarks_dir

    got = subprocess.run(
        [sys.executable, os.path.join(benchmarks_dir(), "report.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "http.svg").exists() and (tmp_path / "django.svg").exists()
    report = (tmp_path / "report.md").read_text()
    assert "streams x64" in report and "0.80" in report  # greenhub/uvloop CPU per request
    assert "lookup: greenhub vs stock" in report and "3.00" in report  # req/s, higher better
    assert (tmp_path / "wsgi.svg").exists()
    assert "Flask slow" in report and "0.50" in report  # greenhub/gevent CPU per request


def test_report_charts_give_each_ratio_its_own_colour_and_readable_ticks(tmp_path, request):
    """memory.json's four ratios (gh/uvloop, gh/aio, gh/gevent, gh/sqlalchemy): the
    last drew in uvloop's blue (matplotlib's first default colour), so the legend could
    not tell the two apart; and its narrow range (1.09-1.39) had one labelled tick."""
    if support.run_in_child(request):  # matplotlib loads numpy: see run_in_child
        return
    import importlib.util

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    from greenhub._cli import benchmarks_dir

    spec = importlib.util.spec_from_file_location(
        "greenhub_bench_report", os.path.join(benchmarks_dir(), "report.py")
    )
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    doc = {
        "machine": {"date": "2026-01-01T00:00:00", "cpu_model": "X", "cpu_count": 2},
        "config": {},
        "summary": {  # bench_memory.py's form
            kind: {"bytes_per_obj": value}
            for kind, value in [
                ("asyncio_task", 980.8),
                ("uvloop_task", 1032.2),
                ("greenhub_task", 1367.0),
                ("greenhub_vthread", 9487.0),
                ("gevent_greenlet", 8689.0),
                ("sqla_asyncio", 7727.0),
            ]
        },
    }
    drawn = []

    class Plt:
        def subplots(self, *args, **kwargs):
            fig, ax = pyplot.subplots(*args, **kwargs)
            drawn.append(ax)
            return fig, ax

        def close(self, fig):
            pass

    assert report.figure("memory", doc, str(tmp_path), Plt())
    (ax,) = drawn
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["gh / uvloop", "gh / aio", "gh / gevent", "gh / sqlalchemy"]
    colours = [tuple(h.patches[0].get_facecolor()) for h in handles]
    assert len(set(colours)) == len(colours)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert len(ticks) >= 3 and "1" in ticks
    pyplot.close("all")
