#!/usr/bin/env python3
"""Run CPython's own asyncio test-suite on the stock loop and on greenhub.

Every selected ``test.test_asyncio`` module of the interpreter in use is run
twice, each time in a fresh subprocess with a timeout:

* ``stock``     -- the interpreter's unmodified asyncio event loop;
* candidate     -- greenhub (``--loop greenhub``, the default) or, to check the
                   runner itself, a counted copy of the stock loop
                   (``--loop asyncio``).

Outcomes are recorded test by test (JSON under ``compat/results/``) and
compared: a *regression* is a test that passes on the stock loop but not on
the candidate.  The exit status is non-zero if there is any regression, or if
a module crashed / timed out / failed to set up on the candidate but not on
the stock loop.

With ``--baseline on-demand`` (what ``make test-compat`` and CI use) the
candidate runs first and the stock side runs only what it did not pass: the
whole module if anything failed, crashed or hung (then everything above holds
as is), only the skipped tests if it merely skipped some, nothing if it passed
every test.  The regressions found are the same; the stock side's own counts
(and tests that only the candidate passes) are reported only with the default,
``--baseline full``.

The candidate is installed as the event loop policy and, for the I/O suites
that build their loops from ``asyncio.SelectorEventLoop`` themselves, also
built in place of that class inside the tests' loop factories (``--group io``;
see _SelectorRedirect).  The stock child runs the unmodified tests.

The tests are imported from the interpreter's own ``test`` package; nothing of
CPython's test code lives in this repository.  Only the standard library (and
greenhub, in the candidate child) is used.

See compat/README.md for details.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_RESULTS = os.path.join(HERE, "results")

DEFAULT_MODULES = [
    "test_tasks",
    "test_futures",
    "test_futures2",
    "test_locks",
    "test_queues",
    "test_taskgroups",
    "test_timeouts",
    "test_waitfor",
    "test_runners",
    "test_context",
    "test_pep492",
    "test_threads",
    # beyond the list: scheduling-level suites that also pass
    "test_eager_task_factory",  # 3.12+ (absent on 3.11: reported and skipped)
    "test_staggered",
    "test_free_threading",  # 3.14+: tasks, futures and all_tasks() across threads
    "test_graph",  # 3.14+: capture_call_graph() and friends
]

# The I/O suites: sockets, transports, servers, streams, TLS, pipes,
# subprocesses, signals.  Most of them build their loops from
# asyncio.SelectorEventLoop directly; the greenhub child builds greenhub
# loops there instead (see _SelectorRedirect).  Left out, because they test
# asyncio's classes with mocked selectors or loops, never greenhub:
# test_selector_events (BaseSelectorEventLoop and the selector transports
# with a mocked selector and loop), test_protocols and test_transports
# (abstract base classes; no loop at all).
IO_MODULES = [
    "test_events",
    "test_sock_lowlevel",
    "test_sendfile",
    "test_server",
    "test_streams",
    "test_ssl",
    "test_sslproto",
    "test_subprocess",
    "test_buffered_proto",
    "test_unix_events",
    "test_base_events",
]

GROUPS = {
    "default": DEFAULT_MODULES,
    "io": IO_MODULES,
    "all": DEFAULT_MODULES + IO_MODULES,
}

PKG = "test.test_asyncio"

# Python 3.14 deprecated asyncio's policy API (removal in 3.16): the public names warn,
# so this harness uses what stands behind them (events._get_event_loop_policy and
# _set_event_loop_policy, unix_events._DefaultEventLoopPolicy), as 3.14's own tests do.
NO_POLICY_NAMES = sys.version_info >= (3, 14)

# Outcome vocabulary (shared by child and parent).
PASS = "pass"
FAIL = "fail"
ERROR = "error"
SKIP = "skip"
XFAIL = "expected-failure"
XPASS = "unexpected-success"
# Parent only:
CRASHED = "crash"    # the child died while this test was running
TIMEDOUT = "timeout"  # the child was killed while this test was running
NOT_RUN = "not-run"  # no outcome at all (module did not load, resumes exhausted)

# Module status vocabulary.
ST_OK = "ok"
ST_TIMEOUT = "timeout"
ST_CRASH = "crash"
ST_SETUP = "setup-error"
ST_ABSENT = "absent"
BAD_STATUSES = (ST_TIMEOUT, ST_CRASH, ST_SETUP)

# Exit code of a child whose loop check / module import failed.
CHILD_SETUP_EXIT = 3


# ---------------------------------------------------------------------------
# Child side: runs inside the interpreter under test.
# ---------------------------------------------------------------------------

class _Events:
    """Line-oriented JSON event log; flushed after every record so that the
    parent can see how far a child got even if it is killed."""

    def __init__(self, path):
        self._f = open(path, "w", encoding="utf-8")
        self._lock = threading.Lock()

    def emit(self, **rec):
        line = json.dumps(rec, default=repr)
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()


def _qualname(obj_or_type):
    t = obj_or_type if isinstance(obj_or_type, type) else type(obj_or_type)
    return "%s.%s" % (t.__module__, t.__qualname__)


class _LoopStats:
    """Counts candidate event loops: those handed out by the policy, every
    construction of the loop class (whatever the route), those built in place
    of a stock selector loop (see _SelectorRedirect), and run_forever() calls
    on candidate loops."""

    def __init__(self, loop_cls):
        self.loop_cls = loop_cls
        self.lock = threading.Lock()
        self.total = 0          # loops returned by the policy
        self.foreign = 0        # ... that were NOT instances of loop_cls
        self.by_type = {}
        self.constructed = None  # loop_cls.__init__ calls, if hookable
        self.redirected = 0     # candidate loops built for asyncio.SelectorEventLoop(...)
        self.ran = 0            # run_forever() calls on candidate loops
        self.enabled = True

    def bump(self, name):
        if self.enabled:
            with self.lock:
                setattr(self, name, getattr(self, name) + 1)

    def record(self, loop):
        if not self.enabled:
            return
        name = _qualname(loop)
        with self.lock:
            self.total += 1
            if not isinstance(loop, self.loop_cls):
                self.foreign += 1
            self.by_type[name] = self.by_type.get(name, 0) + 1

    def snapshot(self):
        with self.lock:
            return {"total": self.total, "foreign": self.foreign,
                    "by_type": dict(self.by_type),
                    "constructed": self.constructed,
                    "redirected": self.redirected, "ran": self.ran}


def _install_candidate(loop_kind, events_log):
    """Make ``loop_kind`` the asyncio default, in a way that survives
    ``asyncio.set_event_loop_policy(None)``.

    Returns (stats, policy_cls, loop_cls).
    """
    import asyncio
    import asyncio.events

    if loop_kind == "greenhub":
        import greenhub
        # greenhub.Policy warns on 3.14+ (as asyncio's policy classes do): the class.
        base_policy = greenhub._Policy
        loop_cls = greenhub.Loop
        events_log.emit(ev="info", greenhub_file=getattr(greenhub, "__file__", None),
                        greenhub_version=getattr(greenhub, "__version__", None))
    elif loop_kind == "asyncio":
        # Self-test mode: the "candidate" is the stock loop, but installed and
        # counted through exactly the same machinery as greenhub would be.
        base_policy = (asyncio.unix_events._DefaultEventLoopPolicy if NO_POLICY_NAMES
                       else asyncio.DefaultEventLoopPolicy)
        loop_cls = getattr(base_policy, "_loop_factory", None) or asyncio.SelectorEventLoop
    else:
        raise SystemExit("unknown --loop %r" % loop_kind)

    stats = _LoopStats(loop_cls)

    # Secondary count: constructions of the loop class itself, if its
    # __init__ can be wrapped (pure-Python class or heap type).  Loops built
    # by bypassing the policy would show up here only.
    orig_init = loop_cls.__dict__.get("__init__")
    try:
        if orig_init is None:
            # Only hook a class that defines __init__ itself; inserting one
            # above a C type that only has __new__ would change behaviour.
            raise TypeError("no own __init__")
        def counting_init(self, *args, **kwargs):
            stats.bump("constructed")
            return orig_init(self, *args, **kwargs)
        counting_init.__wrapped__ = orig_init
        stats.constructed = 0
        loop_cls.__init__ = counting_init
    except (TypeError, AttributeError):
        stats.constructed = None

    # Loops that actually ran: run_until_complete() goes through run_forever().
    orig_run_forever = loop_cls.run_forever

    def counting_run_forever(self):
        stats.bump("ran")
        return orig_run_forever(self)
    counting_run_forever.__wrapped__ = orig_run_forever
    try:
        loop_cls.run_forever = counting_run_forever
    except (TypeError, AttributeError):
        pass

    try:
        class CompatCountingPolicy(base_policy):
            """Candidate policy: records every loop it creates."""

            def new_event_loop(self):
                loop = super().new_event_loop()
                stats.record(loop)
                return loop

        CompatCountingPolicy.__qualname__ = "CompatCountingPolicy[%s]" % _qualname(base_policy)
        policy_cls = CompatCountingPolicy
    except TypeError:
        # Not subclassable (a C type without Py_TPFLAGS_BASETYPE): wrap the
        # instance instead.  The tests only ever *call* DefaultEventLoopPolicy.
        class _Wrapper:
            def __init__(self):
                self.__dict__["_inner"] = base_policy()

            def __getattr__(self, name):
                return getattr(self._inner, name)

            def __setattr__(self, name, value):
                setattr(self._inner, name, value)

            def new_event_loop(self):
                loop = self._inner.new_event_loop()
                stats.record(loop)
                return loop

        _Wrapper.__qualname__ = "CompatWrappedPolicy[%s]" % _qualname(base_policy)
        policy_cls = _Wrapper

    # asyncio.events._init_event_loop_policy() does
    # ``from . import DefaultEventLoopPolicy`` at call time on 3.11-3.13, i.e. it
    # reads the attribute of the asyncio package; 3.14+ imports
    # unix_events._DefaultEventLoopPolicy, which asyncio.__getattr__ also returns
    # (with its DeprecationWarning) for the deprecated public name - which must stay
    # unset there, or the tests of that warning would not see it.  Patch those, plus
    # the per-platform module that defines it, so every view agrees.
    if NO_POLICY_NAMES:
        asyncio.unix_events._DefaultEventLoopPolicy = policy_cls
        asyncio.events._set_event_loop_policy(policy_cls())
        return stats, policy_cls, loop_cls
    asyncio.DefaultEventLoopPolicy = policy_cls
    for modname in ("unix_events", "windows_events"):
        mod = sys.modules.get("asyncio." + modname)
        if mod is not None and hasattr(mod, "DefaultEventLoopPolicy"):
            mod.DefaultEventLoopPolicy = policy_cls
    asyncio.set_event_loop_policy(policy_cls())
    return stats, policy_cls, loop_cls


# TestCase methods inside which CPython's I/O suites build their loops
# directly from the selector loop class instead of asking the policy:
# ``create_event_loop`` (test_events, test_sock_lowlevel, test_sendfile),
# ``new_loop`` (functional.FunctionalTestCaseMixin: test_server,
# test_buffered_proto, test_sslproto) and ``setUp`` (test_unix_events,
# test_base_events).
LOOP_FACTORY_METHODS = ("create_event_loop", "new_loop", "setUp")


class _SelectorRedirect:
    """While one of LOOP_FACTORY_METHODS of a test class runs,
    ``asyncio.SelectorEventLoop(selector=None)`` builds a candidate loop (the
    selector, if one is passed, is closed: greenhub watches fds with libev).

    The patch is scoped to those calls, so ``asyncio.SelectorEventLoop`` is
    the real class everywhere else (``isinstance`` checks in tests keep
    working), and loops that tests build from other classes
    (``test_utils.TestLoop``, ``BaseEventLoop()`` or ``BaseSelectorEventLoop``
    subclasses with mocked selectors) are left alone: those tests check
    asyncio's own Python code, whatever the loop.
    """

    def __init__(self, make_loop, stats):
        import asyncio
        import asyncio.unix_events

        self._asyncio = asyncio
        self._unix_events = asyncio.unix_events
        self.real = asyncio.SelectorEventLoop
        self._make_loop = make_loop
        self._stats = stats
        self._depth = 0
        self.wrapped = []  # "Class.method" names

    def factory(self, selector=None):
        if selector is not None:
            selector.close()
        self._stats.bump("redirected")
        return self._make_loop()

    def __enter__(self):
        if self._depth == 0:
            self._asyncio.SelectorEventLoop = self.factory
            self._unix_events.SelectorEventLoop = self.factory
        self._depth += 1

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            self._asyncio.SelectorEventLoop = self.real
            self._unix_events.SelectorEventLoop = self.real

    def wrap(self, method):
        redirect = self

        def wrapper(*args, **kwargs):
            with redirect:
                return method(*args, **kwargs)

        wrapper.__name__ = method.__name__
        wrapper.__qualname__ = method.__qualname__
        wrapper.__wrapped__ = method
        wrapper._compat_redirect = True
        return wrapper

    def install(self, test_classes):
        """Wrap the loop-building methods of the given TestCase classes."""
        import inspect

        for cls in sorted(test_classes, key=_qualname):
            for name in LOOP_FACTORY_METHODS:
                method = getattr(cls, name, None)
                if not inspect.isfunction(method) or getattr(method, "_compat_redirect", False):
                    continue
                setattr(cls, name, self.wrap(method))
                self.wrapped.append("%s.%s" % (cls.__qualname__, name))


def _test_classes(suite):
    import unittest

    classes = set()
    stack = [suite]
    while stack:
        t = stack.pop()
        if isinstance(t, unittest.TestSuite):
            stack.extend(t)
        elif isinstance(t, unittest.TestCase):
            classes.add(type(t))
    return classes


def _check_candidate(stats, policy_cls, loop_cls, phase, events_log, out):
    """Verify that asyncio hands out candidate loops (loops created here are
    not counted).  Returns True if OK."""
    import asyncio

    res = {"phase": phase}
    ok = True
    if NO_POLICY_NAMES:
        get_policy, set_policy = (asyncio.events._get_event_loop_policy,
                                  asyncio.events._set_event_loop_policy)
    else:
        get_policy, set_policy = asyncio.get_event_loop_policy, asyncio.set_event_loop_policy
    stats.enabled = False
    try:
        # What a test's tearDown/tearDownModule does:
        set_policy(None)
        pol = get_policy()
        res["policy_after_reset"] = _qualname(pol)
        if not isinstance(pol, policy_cls):
            ok = False
        loop = asyncio.new_event_loop()
        try:
            res["new_event_loop"] = _qualname(loop)
            res["is_candidate_loop"] = isinstance(loop, loop_cls)
            ok = ok and res["is_candidate_loop"]
        finally:
            loop.close()
        # Leave the policy unset again, as the tests expect.
        set_policy(None)
        res["default_policy_attr"] = _qualname(
            asyncio.unix_events._DefaultEventLoopPolicy if NO_POLICY_NAMES
            else asyncio.DefaultEventLoopPolicy)
    except BaseException as exc:  # noqa
        ok = False
        res["exception"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    finally:
        stats.enabled = True
    res["ok"] = ok
    events_log.emit(ev="check", **res)
    out.write("[compat] %s check: policy after set_event_loop_policy(None) -> %s; "
              "asyncio.new_event_loop() -> %s; expected %s: %s\n"
              % (phase, res.get("policy_after_reset"), res.get("new_event_loop"),
                 _qualname(loop_cls), "OK" if ok else "FAILED"))
    if "exception" in res:
        out.write(res["exception"])
    out.flush()
    return ok


def _make_result_class(events_log, stats, policy_cls):
    import unittest

    base = unittest.TextTestResult

    class CompatResult(base):
        """TextTestResult that also streams per-test outcomes as JSON."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._cur = None

        # -- bookkeeping -------------------------------------------------
        @staticmethod
        def _snap():
            """loops: candidate loops from the policy; built: candidate loops
            built by any route; redirected: built for asyncio.SelectorEventLoop
            (see _SelectorRedirect); ran: run_forever() calls on them."""
            if stats is None:
                return {"loops": 0, "built": 0, "redirected": 0, "ran": 0}
            with stats.lock:
                return {"loops": stats.total,
                        "built": stats.total if stats.constructed is None else stats.constructed,
                        "redirected": stats.redirected, "ran": stats.ran}

        def _policy_state(self):
            try:
                import asyncio.events as aev
                pol = aev._event_loop_policy
            except Exception:
                return "unknown"
            if pol is None:
                return "unset"
            if policy_cls is not None and isinstance(pol, policy_cls):
                return "candidate"
            return "foreign:" + _qualname(pol)

        def _fmt(self, err, test):
            try:
                return self._exc_info_to_string(err, test)
            except Exception:
                return "".join(traceback.format_exception(*err))

        def _finish_standalone(self, test, outcome, detail):
            # Module/class fixture errors (_ErrorHolder) have no start/stop.
            events_log.emit(ev="result", id=test.id(), outcome=outcome,
                            detail=detail, duration=0.0, loops=0, built=0,
                            redirected=0, ran=0, policy_at_start=None, fixture=True)

        def _set(self, test, outcome, detail=None):
            cur = self._cur
            if cur is None or cur["test"] is not test:
                self._finish_standalone(test, outcome, detail)
                return
            # A failing subtest must not be overwritten by a later success.
            if cur["outcome"] in (FAIL, ERROR) and outcome == PASS:
                return
            cur["outcome"] = outcome
            if detail is not None:
                cur["detail"] = detail

        # -- unittest hooks ----------------------------------------------
        def startTest(self, test):
            super().startTest(test)
            self._cur = {
                "test": test,
                "id": test.id(),
                "outcome": None,
                "detail": None,
                "subtests": [],
                "t0": time.perf_counter(),
                "snap0": self._snap(),
                "policy_at_start": self._policy_state() if stats else None,
            }
            events_log.emit(ev="start", id=test.id())

        def stopTest(self, test):
            super().stopTest(test)
            cur = self._cur
            self._cur = None
            if cur is None or cur["test"] is not test:
                return
            outcome = cur["outcome"]
            if cur["subtests"]:
                failed = [s for s in cur["subtests"] if s["outcome"] in (FAIL, ERROR)]
                if failed and outcome in (None, PASS):
                    outcome = failed[0]["outcome"]
                    cur["detail"] = "\n".join(
                        "[subtest %s]\n%s" % (s["id"], s["detail"]) for s in failed)
            if outcome is None:
                outcome = ERROR
                cur["detail"] = "compat runner: test reported no outcome"
            used = {k: v - cur["snap0"][k] for k, v in self._snap().items()}
            events_log.emit(ev="result", id=cur["id"], outcome=outcome,
                            detail=cur["detail"],
                            duration=round(time.perf_counter() - cur["t0"], 4),
                            policy_at_start=cur["policy_at_start"], **used,
                            subtests_failed=sum(1 for s in cur["subtests"]
                                                if s["outcome"] in (FAIL, ERROR)))

        def addSuccess(self, test):
            super().addSuccess(test)
            self._set(test, PASS)

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._set(test, FAIL, self._fmt(err, test))

        def addError(self, test, err):
            super().addError(test, err)
            self._set(test, ERROR, self._fmt(err, test))

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._set(test, SKIP, str(reason))

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            self._set(test, XFAIL, self._fmt(err, test))

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._set(test, XPASS)

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is None:
                return
            if issubclass(err[0], test.failureException):
                oc = FAIL
            else:
                oc = ERROR
            rec = {"id": subtest.id(), "outcome": oc, "detail": self._fmt(err, test)}
            if self._cur is not None and self._cur["test"] is test:
                self._cur["subtests"].append(rec)
            else:
                self._finish_standalone(subtest, oc, rec["detail"])

    return CompatResult


def child_main(args):
    out = sys.stdout
    events_log = _Events(args.events)
    import platform
    events_log.emit(ev="hello", side=args.side, loop=args.loop, module=args.module,
                    python=sys.executable, version=platform.python_version(),
                    pid=os.getpid())

    # Stack dumps on fatal signals (a crash in C code) and on SIGUSR1, which
    # the parent sends before killing a child that ran over its timeout.
    import faulthandler
    faulthandler.enable(file=sys.stderr, all_threads=True)
    if hasattr(faulthandler, "register") and hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)

    stats = policy_cls = loop_cls = None
    if args.side == "candidate":
        try:
            stats, policy_cls, loop_cls = _install_candidate(args.loop, events_log)
        except BaseException as exc:  # noqa
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            events_log.emit(ev="setup_error", what="install %s" % args.loop, detail=tb)
            out.write("[compat] could not install %s as the asyncio loop:\n%s" % (args.loop, tb))
            return CHILD_SETUP_EXIT
        if not _check_candidate(stats, policy_cls, loop_cls, "before", events_log, out):
            events_log.emit(ev="setup_error", what="candidate check failed (before)",
                            detail="asyncio.new_event_loop() does not return %s"
                                   % _qualname(loop_cls))
            return CHILD_SETUP_EXIT

    import importlib
    import unittest
    modname = "%s.%s" % (PKG, args.module)
    try:
        mod = importlib.import_module(modname)
        loader = unittest.TestLoader()
        if args.k:
            loader.testNamePatterns = [p if "*" in p else "*%s*" % p for p in args.k]
        if args.tests:
            with open(args.tests, encoding="utf-8") as f:
                names = [ln.strip() for ln in f if ln.strip()]
            suite = loader.loadTestsFromNames(names)
        else:
            suite = loader.loadTestsFromModule(mod)
    except BaseException as exc:  # noqa
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        events_log.emit(ev="setup_error", what="import/load %s" % modname, detail=tb)
        out.write("[compat] could not load %s:\n%s" % (modname, tb))
        return CHILD_SETUP_EXIT

    def _flatten(t):
        if isinstance(t, unittest.TestSuite):
            for x in t:
                yield from _flatten(x)
        else:
            yield t.id()
    events_log.emit(ev="loaded", count=suite.countTestCases(), ids=list(_flatten(suite)))
    if stats is not None and args.redirect:
        redirect = _SelectorRedirect(loop_cls, stats)
        redirect.install(_test_classes(suite))
        events_log.emit(ev="redirect", wrapped=redirect.wrapped)
    resultclass = _make_result_class(events_log, stats, policy_cls)
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2 if args.verbose else 1,
                                     resultclass=resultclass)
    t0 = time.perf_counter()
    result = runner.run(suite)
    elapsed = time.perf_counter() - t0

    done = {"tests_run": result.testsRun, "elapsed": round(elapsed, 3)}
    if stats is not None:
        done["loops"] = stats.snapshot()
        done["after_check_ok"] = _check_candidate(stats, policy_cls, loop_cls, "after",
                                                  events_log, out)
        s = done["loops"]
        out.write("[compat] %s loops created by the policy during the module: %d "
                  "(non-%s: %d)%s; built for asyncio.SelectorEventLoop(): %d; "
                  "run_forever() calls: %d\n"
                  % (args.loop, s["total"], loop_cls.__name__, s["foreign"],
                     "" if s["constructed"] is None
                     else "; %s.__init__ calls: %d" % (loop_cls.__name__, s["constructed"]),
                     s["redirected"], s["ran"]))
    events_log.emit(ev="done", **done)
    out.flush()
    # Exit status 0 = the run completed, whatever the outcomes.  A normal
    # interpreter exit is kept on purpose: a crash or hang at shutdown is
    # reported by the parent as such ("at interpreter exit").
    return 0


# ---------------------------------------------------------------------------
# Parent side.
# ---------------------------------------------------------------------------

def _probe(python, loop):
    """Ask the target interpreter for its version, its test_asyncio modules
    and (for greenhub) whether greenhub imports."""
    code = r"""
import json, os, sys, platform
info = {"version": platform.python_version(), "executable": sys.executable}
try:
    import test.test_asyncio as t
    d = os.path.dirname(t.__file__)
    info["test_dir"] = d
    info["modules"] = sorted(
        n[:-3] if n.endswith(".py") else n for n in os.listdir(d)
        if n.startswith("test_") and (n.endswith(".py") or os.path.isdir(os.path.join(d, n))))
except Exception as e:
    info["test_error"] = repr(e)
if LOOP == "greenhub":
    try:
        import greenhub
        info["greenhub"] = {"file": greenhub.__file__,
                            "Loop": repr(greenhub.Loop), "Policy": repr(greenhub.Policy)}
    except Exception as e:
        import traceback
        info["greenhub_error"] = traceback.format_exc()
print(json.dumps(info))
""".replace("LOOP", repr(loop))
    env = _child_env()
    with tempfile.TemporaryDirectory(prefix="greenhub-compat-") as cwd:
        p = subprocess.run([python, "-c", code], capture_output=True, text=True,
                           env=env, cwd=cwd, timeout=120)
    if p.returncode != 0:
        raise SystemExit("cannot run %s: %s" % (python, p.stderr.strip()))
    return json.loads(p.stdout.strip().splitlines()[-1])


_GREENHUB_PATH = [REPO]


def _child_env():
    env = dict(os.environ)
    pp = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(_GREENHUB_PATH + ([pp] if pp else []))
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def _read_events(path):
    evs = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    evs.append(json.loads(line))
                except ValueError:
                    pass  # truncated last line of a killed child
    except FileNotFoundError:
        pass
    return evs


def _extract_stack_dump(log_text, max_lines=60):
    """The last faulthandler dump in a chunk of a child's output, if any."""
    starts = [m.start() for m in re.finditer(
        r"Fatal Python error|(?:Current thread|Thread) 0x[0-9a-f]+ \(most recent call first\)",
        log_text)]
    if not starts:
        return None
    fatal = log_text.rfind("Fatal Python error")
    idx = fatal if fatal >= 0 else starts[0]
    lines = log_text[idx:].strip().splitlines()
    if len(lines) > max_lines:
        lines = lines[:max_lines] + ["... (%d more lines in the log)" % (len(lines) - max_lines)]
    return "\n".join(lines)


class _Segment:
    """One child process, running a whole module or a list of test ids."""

    def __init__(self):
        self.status = ST_OK
        self.returncode = None
        self.events = []
        self.elapsed = 0.0
        self.stack_dump = None
        self.timeout_kind = None


def _tail_events(path, pos, sink):
    """Read complete new lines of a JSONL file from byte offset pos."""
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            data = f.read()
    except FileNotFoundError:
        return pos
    end = data.rfind(b"\n")
    if end < 0:
        return pos
    for line in data[:end].splitlines():
        try:
            sink.append(json.loads(line.decode("utf-8", "replace")))
        except ValueError:
            pass
    return pos + end + 1


def _run_segment(opts, python, module, side, events_path, log, tests_file=None, label=""):
    cmd = [python, os.path.abspath(__file__), "--child", "--side", side,
           "--loop", opts.loop, "--module", module, "--events", events_path]
    for k in opts.k or ():
        cmd += ["-k", k]
    if tests_file:
        cmd += ["--tests", tests_file]
    if opts.verbose:
        cmd.append("--verbose")
    if not opts.redirect:
        cmd.append("--no-redirect")

    seg = _Segment()
    cwd = tempfile.mkdtemp(prefix="greenhub-compat-%s-" % module)
    t0 = time.monotonic()
    written = [0]
    log.write("\n===== [compat] %s\n" % " ".join(cmd))
    log.flush()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=cwd, env=_child_env(),
                            start_new_session=True)

    def pump():
        for raw in iter(proc.stdout.readline, b""):
            text = raw.decode("utf-8", "replace")
            log.write(text)
            log.flush()
            written[0] += len(text)
            if opts.verbose:
                sys.stdout.write("    [%s %s] %s" % (module, label, text))
                sys.stdout.flush()

    th = threading.Thread(target=pump, daemon=True)
    th.start()

    pos = 0
    current = None       # id of the test running now
    current_since = None
    deadline = t0 + opts.timeout
    rc = None
    while True:
        try:
            rc = proc.wait(timeout=0.25)
            break
        except subprocess.TimeoutExpired:
            pass
        new = []
        pos = _tail_events(events_path, pos, new)
        for ev in new:
            seg.events.append(ev)
            if ev.get("ev") == "start":
                current, current_since = ev.get("id"), time.monotonic()
            elif ev.get("ev") == "result" and ev.get("id") == current:
                current = None
        now = time.monotonic()
        if now > deadline:
            seg.timeout_kind = "module"
        elif (opts.test_timeout and current is not None
              and now - current_since > opts.test_timeout):
            seg.timeout_kind = "test"
        if seg.timeout_kind:
            seg.status = ST_TIMEOUT
            mark = written[0]
            # Ask for a stack dump first, then kill the whole process group.
            try:
                os.kill(proc.pid, signal.SIGUSR1)
                time.sleep(1.5)
            except (ProcessLookupError, AttributeError):
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc = proc.wait()
            th.join(timeout=10)
            log.flush()
            try:
                with open(log.name, encoding="utf-8", errors="replace") as f:
                    text = f.read()
                seg.stack_dump = _extract_stack_dump(text[-(written[0] - mark):]
                                                     if written[0] > mark else "")
            except OSError:
                pass
            break
    th.join(timeout=10)
    # Reap any grandchildren left behind in the group.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    shutil.rmtree(cwd, ignore_errors=True)
    seg.elapsed = time.monotonic() - t0
    seg.returncode = rc
    seg.events.extend(_read_events(events_path)[len(seg.events):])
    if seg.status == ST_OK and rc != 0:
        seg.status = ST_CRASH
        log.flush()
        try:
            with open(log.name, encoding="utf-8", errors="replace") as f:
                seg.stack_dump = _extract_stack_dump(f.read()[-200000:])
        except OSError:
            pass
    return seg


def run_child(opts, python, module, side, outdir, tests_file=None, tag=""):
    """Run one module on one side, resuming after a crash or hang so that
    one bad test does not hide the rest of the module.  Returns the side's
    result dict (also written as JSON)."""
    os.makedirs(outdir, exist_ok=True)
    label = side if side == "stock" else _cand_label(opts.loop)
    base = os.path.join(outdir, "%s.%s%s" % (module, label, tag))
    log_path = base + ".log"
    res = {"module": module, "side": side, "label": label, "status": ST_OK,
           "returncode": None, "elapsed": 0.0, "tests": {}, "checks": [],
           "loops": None, "log": os.path.relpath(log_path, os.getcwd()),
           "setup_error": None, "incidents": [], "info": {}, "segments": 0}
    loops_total = None
    all_ids = None
    seg_tests_file = tests_file
    tmp_files = []
    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        while True:
            res["segments"] += 1
            nseg = res["segments"]
            events_path = base + (".events.jsonl" if nseg == 1 else ".seg%d.events.jsonl" % nseg)
            seg = _run_segment(opts, python, module, side, events_path, log,
                               tests_file=seg_tests_file, label=label)
            res["elapsed"] += seg.elapsed
            res["returncode"] = seg.returncode
            started, done, seg_setup_error = [], None, None
            for ev in seg.events:
                kind = ev.get("ev")
                if kind == "hello":
                    res["python_version"] = ev.get("version")
                elif kind == "info":
                    res["info"].update({k: v for k, v in ev.items() if k != "ev"})
                elif kind == "check":
                    res["checks"].append({k: v for k, v in ev.items() if k != "ev"})
                elif kind == "setup_error":
                    seg_setup_error = "%s\n%s" % (ev.get("what"), ev.get("detail"))
                elif kind == "loaded":
                    if all_ids is None:
                        all_ids = list(ev.get("ids") or [])
                        res["loaded"] = ev.get("count")
                elif kind == "start":
                    started.append(ev["id"])
                elif kind == "result":
                    tid = ev["id"]
                    rec = {k: v for k, v in ev.items() if k not in ("ev", "id")}
                    if nseg > 1:
                        rec["segment"] = nseg
                    if tid in res["tests"]:  # e.g. a fixture error on top of a result
                        tid = tid + " [+%d]" % sum(1 for t in res["tests"] if t.startswith(tid))
                    res["tests"][tid] = rec
                elif kind == "done":
                    done = ev
            if done is not None:
                lp = done.get("loops")
                if lp is not None:
                    if loops_total is None:
                        loops_total = {"total": 0, "foreign": 0, "by_type": {},
                                       "constructed": 0 if lp.get("constructed") is not None
                                       else None, "redirected": 0, "ran": 0}
                    for k in ("total", "foreign", "redirected", "ran"):
                        loops_total[k] += lp.get(k, 0)
                    for k, v in lp["by_type"].items():
                        loops_total["by_type"][k] = loops_total["by_type"].get(k, 0) + v
                    if loops_total["constructed"] is not None and lp.get("constructed") is not None:
                        loops_total["constructed"] += lp["constructed"]
                if done.get("after_check_ok") is False:
                    res["after_check_ok"] = False
                elif "after_check_ok" in done:
                    res.setdefault("after_check_ok", True)
            else:
                # Best effort, for a segment that died: per-test counts.
                part = sum(t.get("built", t.get("loops", 0)) for t in res["tests"].values()
                           if t.get("segment", 1) == nseg)
                res["loops_partial"] = res.get("loops_partial", 0) + part

            status = seg.status
            if status == ST_OK:
                if done is None:
                    status = (ST_SETUP if seg.returncode == CHILD_SETUP_EXIT and seg_setup_error
                              else ST_CRASH)
            if status == ST_SETUP:
                res["setup_error"] = seg_setup_error
                res["status"] = ST_SETUP
                break
            if status == ST_OK:
                break

            unfinished = [t for t in started if t not in res["tests"]]
            culprit = unfinished[-1] if unfinished else None
            if done is not None:
                culprit = "<interpreter exit, after all tests>"
            inc = {"kind": status, "test": culprit, "returncode": seg.returncode,
                   "segment": nseg, "stack_dump": seg.stack_dump,
                   "timeout_kind": seg.timeout_kind}
            res["incidents"].append(inc)
            if res["status"] == ST_OK:
                res["status"] = status
            if culprit and culprit in (all_ids or ()):
                res["tests"][culprit] = {
                    "outcome": "crash" if status == ST_CRASH else "timeout",
                    "detail": "%s %s\n%s" % (
                        "child crashed (exit code %s) in this test" % seg.returncode
                        if status == ST_CRASH else
                        "%s timeout (%ss) hit in this test" % (
                            seg.timeout_kind,
                            opts.test_timeout if seg.timeout_kind == "test" else opts.timeout),
                        "", seg.stack_dump or "(no stack dump)"),
                    "loops": 0, "segment": nseg}
            if done is not None or all_ids is None:
                break
            remaining = [t for t in all_ids if t not in res["tests"] and t not in started]
            if not remaining or len(res["incidents"]) > opts.max_resumes:
                break
            fd, path = tempfile.mkstemp(prefix="compat-resume-", suffix=".txt")
            with os.fdopen(fd, "w") as f:
                f.write("\n".join(remaining) + "\n")
            tmp_files.append(path)
            seg_tests_file = path
            log.write("\n===== [compat] %s after %s in %s: resuming with %d remaining tests\n"
                      % (status, "test" if culprit else "module", culprit, len(remaining)))
    for path in tmp_files:
        try:
            os.remove(path)
        except OSError:
            pass
    res["elapsed"] = round(res["elapsed"], 2)
    res["loops"] = loops_total
    # Loaded but never reported (a crash with no resume left, a killed child).
    res["missing"] = [t for t in all_ids or () if t not in res["tests"]]
    if res["incidents"]:
        first = res["incidents"][0]
        res["hung_in" if first["kind"] == ST_TIMEOUT else "crashed_in"] = first["test"]
        res["stack_dump"] = first["stack_dump"]
        res["at_exit"] = all(i["test"] == "<interpreter exit, after all tests>"
                             for i in res["incidents"])
    res["counts"] = _count(res["tests"])
    with open(base + ".json", "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    return res


# Ids that name a test loadTestsFromNames() can load on its own (not a subtest record,
# a module or class fixture error like "setUpClass (test.test_asyncio.x.Tests)").
_LOADABLE_ID = re.compile(r"^[\w.]+$")


def _baseline_on_demand(opts, python, module, cand, outdir):
    """The stock side for --baseline on-demand, after the candidate ran.

    A test that passes on the candidate cannot be a regression, so the stock side
    runs only what the candidate did not pass.  If the candidate had anything worse
    than a skip or an expected failure (a failure, an error, an unexpected success, a
    crash, a timeout, a test not run, a module that did not set up), the whole stock
    module runs, exactly as with --baseline full: the comparison, the crash check and
    the report are then the same.  If it only skipped some tests, just those run on
    the stock loop (a test that greenhub skips but the stock loop passes is a
    regression).  If it passed everything, nothing runs."""
    worse = [t for t, r in cand["tests"].items() if r["outcome"] not in (PASS, SKIP, XFAIL)]
    unpassed = [t for t, r in cand["tests"].items() if r["outcome"] != PASS]
    if (cand["status"] != ST_OK or worse or cand.get("missing") or not cand["tests"]
            or not all(_LOADABLE_ID.match(t) for t in unpassed)):
        res = run_child(opts, python, module, "stock", outdir)
        res["baseline"] = "full"
        return res
    if not unpassed:
        return {"module": module, "side": "stock", "label": "stock", "status": ST_OK,
                "returncode": None, "elapsed": 0.0, "tests": {}, "checks": [],
                "loops": None, "setup_error": None, "incidents": [], "segments": 0,
                "counts": _count({}), "baseline": "none"}
    fd, path = tempfile.mkstemp(prefix="compat-baseline-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(sorted(unpassed)) + "\n")
    try:
        res = run_child(opts, python, module, "stock", outdir, tests_file=path)
    finally:
        os.remove(path)
    res["baseline"] = "partial"
    return res


def _cand_label(loop):
    return "greenhub" if loop == "greenhub" else "selftest"


def _count(tests):
    c = {PASS: 0, FAIL: 0, ERROR: 0, SKIP: 0, XFAIL: 0, XPASS: 0, CRASHED: 0, TIMEDOUT: 0}
    for t in tests.values():
        c[t["outcome"]] = c.get(t["outcome"], 0) + 1
    return c


def compare(stock, cand):
    """Test-by-test comparison.  Returns (regressions, improvements, other_diffs).

    With an on-demand baseline (stock["baseline"] != "full") the stock side ran only
    the tests the candidate did not pass; the candidate's passes are not compared."""
    regressions, improvements, diffs = [], [], []
    st, ct = stock["tests"], cand["tests"]
    ids = set(st) | set(ct) if stock.get("baseline", "full") == "full" else set(st)
    for tid in sorted(ids):
        so = st.get(tid, {}).get("outcome", NOT_RUN)
        co = ct.get(tid, {}).get("outcome", NOT_RUN)
        if so == co:
            continue
        item = {"id": tid, "stock": so, "candidate": co,
                "detail": ct.get(tid, {}).get("detail"),
                "stock_detail": st.get(tid, {}).get("detail")}
        if so == PASS:
            if co == NOT_RUN:
                if cand["status"] == ST_SETUP:
                    item["detail"] = "not run: the %s child failed to set up" % cand["label"]
                elif cand.get("incidents"):
                    last = cand["incidents"][-1]
                    item["detail"] = "not run: the %s child %s in %s (no resume left)" % (
                        cand["label"], "crashed" if last["kind"] == ST_CRASH else "timed out",
                        last["test"])
                else:
                    item["detail"] = "not run on %s (not collected?)" % cand["label"]
            regressions.append(item)
        elif co == PASS:
            improvements.append(item)
        else:
            diffs.append(item)
    return regressions, improvements, diffs


def _short_tb(text, head, tail=3):
    if not text:
        return ["(no traceback)"]
    lines = text.rstrip().splitlines()
    if len(lines) <= head + tail:
        return lines
    return lines[:head] + ["    ... (%d lines) ..." % (len(lines) - head - tail)] + lines[-tail:]


def _short_id(tid):
    return tid[len(PKG) + 1:] if tid.startswith(PKG + ".") else tid


def _fmt_side(r):
    if r is None or r.get("baseline", "full") != "full":
        return ("-", "-", "-")
    c = r["counts"]
    return (str(c[PASS]), str(c[FAIL] + c[ERROR] + c[XPASS] + c[CRASHED] + c[TIMEDOUT]),
            str(c[SKIP] + c[XFAIL]))


def _status_word(r):
    if r is None:
        return "-"
    s = r["status"]
    incs = r.get("incidents") or ()
    n = " x%d" % len(incs) if len(incs) > 1 else ""
    if s == ST_TIMEOUT:
        return "TIMEOUT" + n
    if s == ST_CRASH:
        rcs = sorted({str(i["returncode"]) for i in incs if i["kind"] == ST_CRASH})
        return "CRASH(rc=%s)%s" % ("/".join(rcs) or r.get("returncode"), n)
    if s == ST_SETUP:
        return "SETUP-ERROR"
    return "ok"


_NOISE_FRAME = re.compile(r'File ".*(?:/unittest/(?:case|suite|runner|main)\.py|run_cpython\.py)"')


def _clean_stack(dump):
    """Drop the unittest/runner frames at the bottom of a stack dump."""
    out, dropped = [], 0
    for ln in dump.splitlines():
        if _NOISE_FRAME.search(ln):
            dropped += 1
            continue
        if dropped:
            out.append("  ... (%d unittest/runner frames)" % dropped)
            dropped = 0
        out.append(ln)
    if dropped:
        out.append("  ... (%d unittest/runner frames)" % dropped)
    return out


def normalise_module(name):
    name = name.strip()
    if name.startswith(PKG + "."):
        name = name[len(PKG) + 1:]
    if name.endswith(".py"):
        name = name[:-3]
    if not name.startswith("test_"):
        name = "test_" + name
    return name


def parent_main(opts):
    python = opts.python or sys.executable
    if opts.greenhub_path:
        _GREENHUB_PATH[:] = [os.path.abspath(opts.greenhub_path)]
    probe = _probe(python, opts.loop)
    pyver = probe["version"]
    cand_label = _cand_label(opts.loop)
    print("compat: Python %s (%s)" % (pyver, probe["executable"]))
    if "test_error" in probe:
        print("compat: this interpreter has no test.test_asyncio: %s" % probe["test_error"])
        return 2
    print("compat: tests from %s" % probe["test_dir"])
    if opts.loop == "greenhub":
        if "greenhub_error" in probe:
            print("compat: greenhub is not importable with PYTHONPATH=%s:\n%s"
                  % (_GREENHUB_PATH[0], probe["greenhub_error"]))
            print("compat: build it first (make build [PY=...]) or use --loop asyncio")
            return 2
        print("compat: greenhub from %s; Loop=%s Policy=%s"
              % (probe["greenhub"]["file"], probe["greenhub"]["Loop"],
                 probe["greenhub"]["Policy"]))
    else:
        print("compat: --loop asyncio: candidate is the stock loop installed through the "
              "counting policy (runner self-test)")

    named = list(opts.modules or ())
    for group in opts.only or ():
        named += [m for m in group.split(",") if m.strip()]
    for g in opts.group or ():
        named += GROUPS[g]
    requested = [normalise_module(m) for m in (named or DEFAULT_MODULES)]
    skip = {normalise_module(m) for g in (opts.skip or ()) for m in g.split(",") if m.strip()}
    available = set(probe["modules"])
    modules = []
    absent = []
    for m in requested:
        if m in skip or m in modules:
            continue
        if m not in available:
            absent.append(m)
            print("compat: %s is absent from Python %s's test.test_asyncio -- skipped"
                  % (m, pyver))
            continue
        modules.append(m)
    if not modules:
        print("compat: nothing to run")
        return 2 if not absent else 0

    outdir = os.path.join(opts.results_dir, "py%s-%s" % (pyver, cand_label))
    os.makedirs(outdir, exist_ok=True)
    # Drop stale per-module files of this configuration.
    for fn in os.listdir(outdir):
        if fn.split(".", 1)[0] in modules or fn == "summary.json":
            try:
                os.remove(os.path.join(outdir, fn))
            except OSError:
                pass

    print("compat: modules: %s; timeout %ss per module and side; stock baseline %s; "
          "results in %s\n"
          % (" ".join(modules), opts.timeout, opts.baseline, os.path.relpath(outdir)))

    rows = []

    def run_module(m):
        if opts.baseline == "full":
            stock = run_child(opts, python, m, "stock", outdir)
            cand = run_child(opts, python, m, "candidate", outdir)
        else:
            cand = run_child(opts, python, m, "candidate", outdir)
            stock = _baseline_on_demand(opts, python, m, cand, outdir)
        return m, stock, cand

    results = []
    if opts.jobs > 1:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(opts.jobs) as ex:
            futs = [ex.submit(run_module, m) for m in modules]
            for f in futs:
                m, stock, cand = f.result()
                _progress(m, stock, cand)
                results.append((m, stock, cand))
    else:
        for m in modules:
            m, stock, cand = run_module(m)
            _progress(m, stock, cand)
            results.append((m, stock, cand))

    any_bad = False
    all_regressions = []
    summary_modules = {}
    for m, stock, cand in results:
        regs, imps, diffs = compare(stock, cand)
        flaky = []
        if regs and opts.rerun > 0:
            regs, flaky = _rerun(opts, python, m, outdir, regs)
        crash_only_cand = cand["status"] in BAD_STATUSES and stock["status"] not in BAD_STATUSES
        loops = cand.get("loops") or {}
        if loops:
            nloops = loops["total"] if loops.get("constructed") is None else loops["constructed"]
        else:
            nloops = cand.get("loops_partial")
        on_cand = [t for t in cand["tests"].values() if _ran_on_candidate(t)]
        tests_using = len(on_cand)
        on_cand_pass = sum(1 for t in on_cand if t["outcome"] == PASS)
        notes = []
        if stock.get("baseline") == "partial":
            notes.append("stock ran %d test(s) %s skipped" % (len(stock["tests"]), cand_label))
        if stock["status"] != ST_OK:
            notes.append("stock %s" % _status_word(stock))
        if cand["status"] != ST_OK:
            notes.append("%s %s%s" % (cand_label, _status_word(cand),
                                      " at exit" if cand.get("at_exit") else ""))
        if not nloops:
            notes.append("%s NEVER USED" % cand_label)
        if loops and loops.get("foreign"):
            notes.append("%d non-%s loops" % (loops["foreign"], cand_label))
        if cand.get("after_check_ok") is False:
            notes.append("after-check FAILED")
        leaks = sum(1 for t in cand["tests"].values()
                    if str(t.get("policy_at_start") or "").startswith("foreign"))
        if leaks:
            notes.append("%d tests started under a foreign policy" % leaks)
        if flaky:
            notes.append("%d flaky" % len(flaky))
        if imps:
            notes.append("%d improved" % len(imps))
        rows.append({"module": m, "stock": stock, "cand": cand, "loops": nloops or 0,
                     "redirected": loops.get("redirected", 0), "on_cand": tests_using,
                     "on_cand_pass": on_cand_pass, "regressions": len(regs),
                     "notes": notes})
        if regs or crash_only_cand:
            any_bad = True
        for r in regs:
            r["module"] = m
        all_regressions.extend(regs)
        summary_modules[m] = {
            "stock": {"status": stock["status"], "counts": stock["counts"],
                      "baseline": stock.get("baseline", "full"),
                      "elapsed": stock["elapsed"], "incidents": stock.get("incidents"),
                      "setup_error": stock.get("setup_error")},
            cand_label: {"status": cand["status"], "counts": cand["counts"],
                         "elapsed": cand["elapsed"], "loops": loops or None,
                         "loops_partial": cand.get("loops_partial"),
                         "tests_using_loop": tests_using,
                         "tests_using_loop_passed": on_cand_pass,
                         "checks": cand["checks"], "incidents": cand.get("incidents"),
                         "setup_error": cand.get("setup_error")},
            "regressions": regs, "flaky": flaky, "improvements": imps,
            "other_differences": diffs, "notes": notes,
        }
        if opts.verbose and (imps or diffs):
            for it in imps + diffs:
                print("  note: %s: stock=%s %s=%s" % (_short_id(it["id"]), it["stock"],
                                                      cand_label, it["candidate"]))

    _print_table(pyver, cand_label, rows, absent)
    _print_problems(opts, cand_label, results, all_regressions, summary_modules)

    summary = {"python": pyver, "executable": probe["executable"], "loop": cand_label,
               "modules": summary_modules, "absent": absent,
               "regressions": len(all_regressions), "ok": not any_bad}
    with open(os.path.join(outdir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    print("\ncompat: per-test results in %s" % os.path.relpath(outdir))
    if any_bad:
        print("compat: FAILED (%d regression(s)%s)" % (
            len(all_regressions),
            "; %s-only crash/timeout" % cand_label
            if any(r["stock"]["status"] not in BAD_STATUSES
                   and r["cand"]["status"] in BAD_STATUSES for r in rows) else ""))
        return 1
    print("compat: OK (no regressions against the stock loop)")
    return 0


def _progress(m, stock, cand):
    def one(r):
        if r.get("baseline") == "none":
            return "%s: not run (%s passed every test)" % (r["label"], cand["label"])
        c = r["counts"]
        s = "%s: %d pass, %d fail, %d error, %d skip" % (
            r["label"], c[PASS], c[FAIL], c[ERROR], c[SKIP])
        if c[XFAIL] or c[XPASS]:
            s += ", %d xfail, %d xpass" % (c[XFAIL], c[XPASS])
        if r["status"] != ST_OK:
            s += " [%s]" % _status_word(r)
        if r.get("baseline") == "partial":
            s += " [only what %s did not pass]" % cand["label"]
        return s + " (%.1fs)" % r["elapsed"]
    extra = ""
    if cand["checks"]:
        ck = cand["checks"][0]
        extra = "; new_event_loop() -> %s%s" % (ck.get("new_event_loop"),
                                                "" if ck.get("ok") else " CHECK FAILED")
    lp = cand.get("loops")
    if lp:
        built = lp["total"] if lp.get("constructed") is None else lp["constructed"]
        extra += "; %d loops (%d from the policy, %d redirected)" % (
            built, lp["total"], lp.get("redirected", 0))
    print("%-16s %s | %s%s" % (m, one(stock), one(cand), extra), flush=True)


def _ran_on_candidate(t):
    """A test ran on the candidate loop if it built one (through the policy,
    the selector-loop redirect or directly) or ran one."""
    return bool(t.get("built", t.get("loops")) or t.get("ran"))


def _print_table(pyver, cand_label, rows, absent):
    short = "gh" if cand_label == "greenhub" else "self"
    hdr = ["module", "stock pass", "fail", "skip", "%s pass" % cand_label, "fail", "skip",
           "loops", "redir", "on %s" % short, "pass", "regr", "stock s", "%s s" % short,
           "notes"]
    ncols = len(hdr)
    table = []
    tot = [0] * (ncols - 4)
    tsec = [0.0, 0.0]
    for r in rows:
        vals = list(_fmt_side(r["stock"])) + list(_fmt_side(r["cand"])) + [
            str(r[k]) for k in ("loops", "redirected", "on_cand", "on_cand_pass",
                                "regressions")]
        for i, v in enumerate(vals):
            tot[i] += int(v) if v.isdigit() else 0
        secs = (r["stock"]["elapsed"], r["cand"]["elapsed"])
        tsec = [tsec[0] + secs[0], tsec[1] + secs[1]]
        table.append([r["module"]] + vals + ["%.1f" % x for x in secs]
                     + [", ".join(r["notes"])])
    # A column that no row filled (stock counts under --baseline on-demand) totals "-".
    filled = [any(r[i + 1] != "-" for r in table) for i in range(len(tot))]
    table.append(["TOTAL"] + [str(x) if f else "-" for x, f in zip(tot, filled, strict=True)]
                 + ["%.1f" % x for x in tsec] + [""])
    for m in absent:
        table.append([m] + ["-"] * (ncols - 2) + ["absent in Python %s" % pyver])
    widths = [max(len(hdr[i]), *(len(r[i]) for r in table)) for i in range(ncols)]

    def fmt(r):
        return "  ".join(v.ljust(widths[i]) if i in (0, ncols - 1) else v.rjust(widths[i])
                         for i, v in enumerate(r)).rstrip()

    print("\nPython %s: stock asyncio vs %s" % (pyver, cand_label))
    head = fmt(hdr)
    print(head)
    print("-" * len(head))
    for r in table:
        if r[0] == "TOTAL":
            print("-" * len(head))
        print(fmt(r))
    print("(fail = failures + errors + unexpected successes; skip = skips + expected failures;\n"
          " loops = %(c)s loops built during the module (policy, redirect or direct);\n"
          " redir = of those, built in place of asyncio.SelectorEventLoop(...) in a test's\n"
          "   create_event_loop/new_loop/setUp;\n"
          " on %(s)s = tests that built or ran a %(c)s loop; pass = of those, passed;\n"
          " stock s, %(s)s s = seconds per side;\n"
          " stock columns '-': --baseline on-demand, the stock side ran only what %(c)s\n"
          "   did not pass)" % {"c": cand_label, "s": short})


def _final_line(item):
    """The last line of a regression's traceback, addresses blanked, for
    grouping regressions by cause."""
    if item["candidate"] == NOT_RUN:
        return "(not run)"
    if item["candidate"] in (CRASHED, TIMEDOUT):
        return "(%s)" % item["candidate"]
    lines = [ln for ln in (item.get("detail") or "").strip().splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else "(no traceback)"
    last = last.lstrip("|+ ").strip()
    return re.sub(r"0x[0-9a-fA-F]+", "0x...", last)


def _print_problems(opts, cand_label, results, regressions, summary_modules):
    for m, stock, cand in results:
        for r in (stock, cand):
            if r["status"] == ST_OK:
                continue
            print("\n%s on %s: %s (%.1fs, %d child process(es)), log %s"
                  % (m, r["label"], _status_word(r), r["elapsed"], r.get("segments", 1),
                     r["log"]))
            if r.get("setup_error"):
                for ln in _short_tb(r["setup_error"], 25, 5):
                    print("    " + ln)
            seen = {}
            for inc in r.get("incidents", ()):
                what = ("crashed (exit code %s)" % inc["returncode"]
                        if inc["kind"] == ST_CRASH else
                        "hit the %s timeout" % (inc.get("timeout_kind") or "module"))
                print("    %s in %s" % (what, _short_id(inc["test"] or "<between tests>")))
                if not inc.get("stack_dump"):
                    print("      (no stack dump in the log)")
                    continue
                lines = _clean_stack(inc["stack_dump"])
                key = re.sub(r"0x[0-9a-f]+", "", "\n".join(lines))
                if key in seen:
                    print("      (same stack as in %s)" % _short_id(seen[key] or "?"))
                    continue
                seen[key] = inc["test"]
                for ln in lines[:opts.stack_lines]:
                    print("      | " + ln)
    if regressions:
        print("\nRegressions (pass on stock, not on %s): %d" % (cand_label, len(regressions)))
        notrun = [it for it in regressions if it["candidate"] == NOT_RUN]
        for it in regressions:
            if it["candidate"] == NOT_RUN:
                continue
            print("\n  [%s] %s: stock=%s %s=%s" % (it["module"], _short_id(it["id"]),
                                                  it["stock"], cand_label, it["candidate"]))
            lines = it.get("detail")
            if it["candidate"] in (CRASHED, TIMEDOUT):
                lines = (lines or "").split("\n", 1)[0] + "  (stack dump above)"
            for ln in _short_tb(lines, opts.tb_lines):
                print("      " + ln)
        groups = {}
        for it in regressions:
            groups.setdefault(_final_line(it), []).append(it)
        if len(groups) < len(regressions):
            print("\n  Regressions grouped by their final error line:")
            for line, its in sorted(groups.items(), key=lambda kv: -len(kv[1])):
                mods = sorted({it["module"] for it in its})
                print("    %4d  %s  [%s]" % (len(its), line[:150], ", ".join(mods)))
        if notrun:
            by_reason = {}
            for it in notrun:
                by_reason.setdefault((it["module"], it["detail"]), []).append(it["id"])
            for (m, why), ids in by_reason.items():
                print("\n  [%s] %d test(s) passing on stock were %s" % (m, len(ids), why))
                shown = ids if opts.verbose else ids[:8]
                for tid in shown:
                    print("      " + _short_id(tid))
                if len(shown) < len(ids):
                    print("      ... and %d more (--verbose, or summary.json)"
                          % (len(ids) - len(shown)))
    flaky = [(m, f) for m, s in summary_modules.items() for f in s.get("flaky", [])]
    if flaky:
        print("\nFlaky (failed on %s, then passed on a rerun; not counted as regressions):"
              % cand_label)
        for m, f in flaky:
            last = (f.get("detail") or "").strip().splitlines()[-1:] or [""]
            print("  [%s] %s: first run %s: %s" % (m, _short_id(f["id"]), f["candidate"],
                                                   last[0][:160]))


def _rerun(opts, python, module, outdir, regs):
    """Re-run the regressed tests on the candidate; ones that pass become
    'flaky'.  Tests that were never run (module crashed) are rerun as well."""
    ids = [r["id"] for r in regs if " [+" not in r["id"] and "(" not in r["id"]]
    if not ids:
        return regs, []
    still = {r["id"]: r for r in regs}
    flaky = []
    for attempt in range(opts.rerun):
        pending = [i for i in ids if i in still]
        if not pending:
            break
        fd, path = tempfile.mkstemp(prefix="compat-rerun-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(pending) + "\n")
        try:
            res = run_child(opts, python, module, "candidate", outdir, tests_file=path,
                            tag=".rerun%d" % (attempt + 1))
        finally:
            os.remove(path)
        for i in pending:
            if res["tests"].get(i, {}).get("outcome") == PASS:
                item = still.pop(i)
                item["rerun_passed"] = attempt + 1
                flaky.append(item)
    return [r for r in regs if r["id"] in still], flaky


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Default modules: %s\nI/O modules (--group io): %s"
               % (" ".join(DEFAULT_MODULES), " ".join(IO_MODULES)))
    ap.add_argument("modules", nargs="*", metavar="MODULE",
                    help="test.test_asyncio modules to run (test_tasks, tasks, "
                         "test.test_asyncio.test_tasks all work); default: the list below")
    ap.add_argument("--python", metavar="EXE",
                    help="interpreter whose test-suite to run (default: the one running "
                         "this script); greenhub must be built for it")
    ap.add_argument("--only", action="append", metavar="MOD[,MOD...]",
                    help="same as naming modules positionally (comma-separated, repeatable)")
    ap.add_argument("--group", action="append", choices=sorted(GROUPS),
                    help="add a named group of modules: default (scheduling suites), io "
                         "(sockets, transports, servers, TLS, subprocesses), all (both); "
                         "repeatable, combines with named modules")
    ap.add_argument("--no-redirect", dest="redirect", action="store_false",
                    help="do not build candidate loops where a test builds "
                         "asyncio.SelectorEventLoop() itself (then only loops made by the "
                         "policy are candidate loops)")
    ap.add_argument("--skip", action="append", metavar="MODULE",
                    help="leave a module out (repeatable)")
    ap.add_argument("-k", action="append", metavar="PATTERN",
                    help="only run tests whose id contains PATTERN (unittest -k "
                         "semantics: substring, or fnmatch pattern if it contains '*'); "
                         "repeatable, OR-ed")
    ap.add_argument("--loop", choices=("greenhub", "asyncio"), default="greenhub",
                    help="candidate loop; 'asyncio' runs the stock loop through the same "
                         "machinery to self-test the runner (must give zero regressions)")
    ap.add_argument("--greenhub-path", metavar="DIR",
                    help="directory put first on the children's PYTHONPATH to import "
                         "greenhub from (default: this repository, built in place)")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds per module and side (default %(default)s)")
    ap.add_argument("--test-timeout", type=float, default=60.0,
                    help="seconds a single test may run before its child is killed "
                         "(0 = no per-test limit; default %(default)s)")
    ap.add_argument("--max-resumes", type=int, default=5,
                    help="after a crash or timeout, restart the module's remaining tests "
                         "in a new child up to this many times (default %(default)s)")
    ap.add_argument("-j", "--jobs", type=int, default=1,
                    help="modules to run in parallel (default 1; >1 can make "
                         "timing-sensitive tests flaky)")
    ap.add_argument("--baseline", choices=("full", "on-demand"), default="full",
                    help="full: run every module on the stock loop too (the whole "
                         "comparison table); on-demand: run the candidate first and, on "
                         "the stock loop, only what it did not pass - the whole module "
                         "if anything failed, crashed or hung, just the tests if it only "
                         "skipped some, nothing if it passed all (the same regressions, "
                         "about half the time; make test-compat; default %(default)s)")
    ap.add_argument("--rerun", type=int, default=0, metavar="N",
                    help="re-run regressed tests up to N times on the candidate; those "
                         "that pass are reported as flaky and not counted (default 0)")
    ap.add_argument("--tb-lines", type=int, default=8,
                    help="traceback lines shown per regression (default %(default)s)")
    ap.add_argument("--stack-lines", type=int, default=25,
                    help="lines of a crash/hang stack dump shown (default %(default)s)")
    ap.add_argument("--results-dir", default=DEFAULT_RESULTS,
                    help="where JSON results and logs go (default compat/results)")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="stream the children's verbose unittest output and list "
                         "every outcome difference")
    # Internal: child mode.
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--side", choices=("stock", "candidate"), help=argparse.SUPPRESS)
    ap.add_argument("--module", help=argparse.SUPPRESS)
    ap.add_argument("--events", help=argparse.SUPPRESS)
    ap.add_argument("--tests", help=argparse.SUPPRESS)
    opts = ap.parse_args(argv)
    if opts.child:
        return child_main(opts)
    return parent_main(opts)


if __name__ == "__main__":
    sys.exit(main())
