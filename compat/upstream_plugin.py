"""pytest plugin loaded (``-p upstream_plugin``) into each run of an upstream test suite.

compat/run_upstream.py runs a project's own tests twice, with this plugin in both runs:

* ``GREENHUB_UPSTREAM_LOOP=stock``: nothing is patched; the plugin only records outcomes.
* ``GREENHUB_UPSTREAM_LOOP=greenhub``: before any test module is imported, greenhub becomes
  the loop asyncio hands out.  Upstream suites get their loops in many ways
  (``asyncio.new_event_loop()``, ``asyncio.Runner()`` with no factory, ``asyncio.run``,
  pytest plugins that call the policy), and their fixtures reset the policy with
  ``set_event_loop_policy(None)``, after which asyncio builds a new
  ``asyncio.DefaultEventLoopPolicy()`` looked up on the package at call time.  So the
  plugin replaces that name with a greenhub policy class, as compat/run_cpython.py does,
  and checks the result: a reset policy must still hand out greenhub loops, or the run
  stops (exit status 3) instead of reporting stock results as greenhub's.

Outcomes go to the JSON-lines file ``GREENHUB_UPSTREAM_OUT``, one line per test: its
node id, the outcome (pass, fail, error, skip, xfail, xpass), the seconds it took, and
how many greenhub loops it built and ran, so that the report can say which tests ran on
greenhub at all.  The first line lists the collected node ids, so the runner can resume
after a crash with the tests not yet run (``GREENHUB_UPSTREAM_ONLY``: a file of node ids;
every other test is deselected).

Parametrisations that pick another loop or library explicitly (anyio's ``asyncio+uvloop``
and ``trio`` backends) are deselected on both sides: they never run on greenhub.
"""

import asyncio
import json
import os
import sys
import time

import pytest

LOOP = os.environ.get("GREENHUB_UPSTREAM_LOOP", "stock")
OUT = os.environ.get("GREENHUB_UPSTREAM_OUT")
ONLY = os.environ.get("GREENHUB_UPSTREAM_ONLY")

# Loops built (Loop.__init__) and run (run_forever) so far; stays zero on the stock side.
_counts = {"built": 0, "ran": 0}


def _install_greenhub():
    import greenhub

    loop_cls = greenhub.Loop
    orig_init = loop_cls.__init__
    orig_run_forever = loop_cls.run_forever

    def counting_init(self, *args, **kwargs):
        _counts["built"] += 1
        orig_init(self, *args, **kwargs)

    def counting_run_forever(self, *args, **kwargs):
        _counts["ran"] += 1
        return orig_run_forever(self, *args, **kwargs)

    loop_cls.__init__ = counting_init
    loop_cls.run_forever = counting_run_forever

    class UpstreamPolicy(greenhub.Policy):
        """greenhub's policy under the name asyncio resets to."""

    asyncio.DefaultEventLoopPolicy = UpstreamPolicy
    unix_events = sys.modules.get("asyncio.unix_events")
    if unix_events is not None and hasattr(unix_events, "DefaultEventLoopPolicy"):
        unix_events.DefaultEventLoopPolicy = UpstreamPolicy
    asyncio.set_event_loop_policy(None)
    loop = asyncio.new_event_loop()
    try:
        if not isinstance(loop, greenhub.Loop):
            sys.stderr.write(f"upstream_plugin: a reset policy made {type(loop)!r}\n")
            sys.exit(3)
    finally:
        loop.close()
    _counts["built"] = _counts["ran"] = 0


if LOOP == "greenhub":
    _install_greenhub()
elif LOOP != "stock":
    sys.stderr.write(f"upstream_plugin: unknown GREENHUB_UPSTREAM_LOOP {LOOP!r}\n")
    sys.exit(3)


def _uvicorn_loop_from_policy():
    """uvicorn's loop="asyncio" builds ``asyncio.SelectorEventLoop`` by name, not through
    the policy, so a server a suite runs with it (httpx's test server) would stay on the
    stock loop on both sides.  ``GREENHUB_UPSTREAM_UVICORN_POLICY=1`` maps "asyncio" to
    no factory, i.e. ``asyncio.Runner``'s loop from the policy: the same stock class on
    the stock side, a greenhub loop on the greenhub side."""
    import uvicorn.config

    uvicorn.config.LOOP_FACTORIES["asyncio"] = None


if os.environ.get("GREENHUB_UPSTREAM_UVICORN_POLICY") == "1":
    _uvicorn_loop_from_policy()


def _foreign_loop(item):
    """True for a parametrisation that names another loop or async library."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    if any(word in callspec.id for word in ("uvloop", "winloop")):
        return True
    backend = callspec.params.get("anyio_backend")
    name = backend[0] if isinstance(backend, tuple) else backend
    return isinstance(name, str) and name != "asyncio"


def pytest_collection_modifyitems(config, items):
    only = None
    if ONLY:
        with open(ONLY) as f:
            only = {line.rstrip("\n") for line in f if line.strip()}
    keep, drop = [], []
    for item in items:
        if _foreign_loop(item) or (only is not None and item.nodeid not in only):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


class _Recorder:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)  # noqa: SIM115 - open for the whole session
        self.reports = {}
        self.started = {}

    def emit(self, **rec):
        self.f.write(json.dumps(rec) + "\n")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session):
        self.emit(collected=[item.nodeid for item in session.items])

    def pytest_runtest_logstart(self, nodeid, location):
        self.reports[nodeid] = []
        self.started[nodeid] = (time.monotonic(), dict(_counts))
        # Written before the test runs: if the process dies now, the runner knows which
        # test killed it.
        self.emit(start=nodeid)

    def pytest_runtest_logreport(self, report):
        self.reports.setdefault(report.nodeid, []).append(report)

    def pytest_runtest_logfinish(self, nodeid, location):
        reports = self.reports.pop(nodeid, [])
        t0, before = self.started.pop(nodeid, (time.monotonic(), dict(_counts)))
        outcome, detail = _outcome(reports)
        self.emit(
            test=nodeid,
            outcome=outcome,
            seconds=round(time.monotonic() - t0, 3),
            built=_counts["built"] - before["built"],
            ran=_counts["ran"] - before["ran"],
            detail=detail,
        )


def _outcome(reports):
    """One outcome for a test from its setup, call and teardown reports."""
    for rep in reports:
        if rep.failed:
            text = rep.longreprtext[-3000:] if rep.longrepr is not None else ""
            if rep.when == "call":
                return ("xpass" if hasattr(rep, "wasxfail") else "fail"), text
            return "error", f"in {rep.when}: {text}"
    for rep in reports:
        if rep.skipped:
            if hasattr(rep, "wasxfail"):
                return "xfail", rep.wasxfail
            reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else ""
            return "skip", reason
    for rep in reports:
        if rep.when == "call" and hasattr(rep, "wasxfail"):
            return "xpass", rep.wasxfail
    if not any(rep.when == "call" for rep in reports):
        return "error", "no call phase reported"
    return "pass", ""


def pytest_configure(config):
    if OUT:
        config.pluginmanager.register(_Recorder(OUT), "greenhub_upstream_recorder")
