"""Helpers shared by the behaviour tests (imported as ``support``).

Every behaviour test runs twice, on the stock asyncio loop and on greenhub, through the
``loop`` / ``loop_factory`` fixtures in conftest.py; the helpers here are what those tests
need beyond the fixtures: building a loop of either kind, reading greenhub's live-object
counters, and turning reprs into a form that can be compared between the two loops.
"""

import asyncio
import contextlib
import gc
import os
import re
import sys
import warnings

LOOP_KINDS = ("asyncio", "greenhub")

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)

CLOSED_MSG = "Event loop is closed"


def _under_asan():
    try:
        with open("/proc/self/maps") as f:
            return any("/libasan" in line for line in f)
    except OSError:
        return False


# The process runs on AddressSanitizer's allocator (`make asan`): freed memory waits in a
# quarantine of up to 256 MiB before reuse, so the resident set grows whatever the program
# does.  Tests that measure memory skip that measure there; LeakSanitizer checks the
# whole process instead (.ci/asan/sitecustomize.py).
UNDER_ASAN = _under_asan()

# How much slower than usual the suite may run: 5 under the sanitizers (`make asan`; its
# .ci/asan/run sets GREENHUB_ASAN_LOG, which child processes inherit), else 1.  Only hang
# detectors are multiplied by it - pytest's per-test timeout (conftest.py), a child
# process's timeout, a barrier's patience - never what a test asserts: no test asserts
# how long anything took.
SLOW = 5 if (UNDER_ASAN or os.environ.get("GREENHUB_ASAN_LOG")) else 1


def hang_timeout(seconds):
    """A hang detector's bound: `seconds`, times SLOW."""
    return seconds * SLOW


_CHILD_ENV = "GREENHUB_TEST_IN_CHILD"


def run_in_child(request, timeout=120):
    """Runs the calling test again, alone, in a child pytest process, and returns True
    there (the caller returns); returns False in that child, where the test goes on.

    For tests that import extensions which keep objects allocated until the process
    exits (FastAPI's pydantic-core, matplotlib's numpy): under `make asan` a process that loaded them is not
    leak-checked (.ci/asan/sitecustomize.py), and the pytest process, where most of the
    suite runs, must stay checked.  The child's failure output becomes this test's."""
    import subprocess

    nodeid = request.node.nodeid
    if os.environ.get(_CHILD_ENV) == nodeid:
        return False
    env = dict(os.environ, **{_CHILD_ENV: nodeid})
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid]
    got = subprocess.run(
        argv,
        cwd=request.config.rootpath,
        env=env,
        capture_output=True,
        text=True,
        timeout=hang_timeout(timeout),
    )
    output = got.stdout + got.stderr
    if got.returncode != 0 or not re.search(r"^1 passed\b", output, re.M):
        raise AssertionError(f"{nodeid} failed in its child process:\n{output[-4000:]}")
    return True


def new_loop(kind, debug=False):
    """A fresh, not-current loop of the given kind.

    Debug mode is off unless asked for (debug=None keeps the loop's own default, which
    `python -X dev` or PYTHONASYNCIODEBUG turn on), so the suite means the same under
    `-X dev`; tests of debug mode turn it on themselves.
    """
    loop = _make_loop(kind)
    if debug is not None:
        loop.set_debug(debug)
    return loop


def _make_loop(kind):
    if kind == "asyncio":
        # The default policy's loop: on Linux a _UnixSelectorEventLoop.  conftest resets the
        # policy around every test, so this is the stock loop even if a test installed
        # greenhub's policy and failed before restoring it.
        loop = asyncio.new_event_loop()
        assert isinstance(loop, asyncio.SelectorEventLoop), type(loop)
        return loop
    if kind == "greenhub":
        import greenhub

        loop = greenhub.new_event_loop()
        assert isinstance(loop, greenhub.Loop), type(loop)
        return loop
    raise ValueError(kind)


def greenhub_counters():
    """greenhub._core.debug_counters(), after a full collection unless already all zero."""
    from greenhub import _core

    counters = dict(_core.debug_counters())
    if any(counters.values()):
        # Loops and handles often sit in reference cycles (a loop's bound methods in its
        # own queue); only a collection frees them.
        for _ in range(3):
            if not gc.collect():
                break
        counters = dict(_core.debug_counters())
    return counters


def live_greenhub_loops():
    import greenhub

    # type(), not isinstance(): isinstance() asks a lazy proxy's __class__, and Django's
    # LazySettings then tries to configure itself (ImproperlyConfigured) mid-report.
    return [o for o in gc.get_objects() if issubclass(type(o), greenhub.Loop)]


def describe_referrers(obj, ignore=(), limit=5):
    """Short text naming what keeps obj alive: for leak reports."""
    refs = [
        r
        for r in gc.get_referrers(obj)
        if not any(r is i for i in ignore) and type(r).__name__ not in ("frame", "generator")
    ]
    parts = []
    for r in refs[:limit]:
        if isinstance(r, dict):
            keys = [k for k, v in r.items() if v is obj][:3]
            text = f"dict with keys {keys}"
        elif isinstance(r, (list, tuple, set)):
            text = f"{type(r).__name__} of {len(r)}"
        else:
            text = repr(r)[:120]
        parts.append(f"{type(r).__name__}: {text}")
    return "; ".join(parts) or "no referrers found (held from C?)"


def assert_greenhub_counters_zero(where, baseline=None):
    """All counters zero.  With a baseline (counters before the test), objects that an
    earlier test leaked and that are still alive are not blamed on this test again."""
    counters = greenhub_counters()
    baseline = baseline or {}
    leaked = {
        name: n
        for name, n in counters.items()
        if n and (n > baseline.get(name, 0) or not baseline.get(name, 0))
    }
    if not leaked:
        return
    detail = ""
    if leaked.get("loops"):
        # conftest freezes the objects alive after collection (gc.freeze()); a frozen
        # holder would be invisible to gc.get_referrers().
        frozen = gc.get_freeze_count()
        gc.unfreeze()
        loops = live_greenhub_loops()
        held = []
        for i in range(min(3, len(loops))):
            held.append(f"{loops[i]!r} held by [{describe_referrers(loops[i], (loops,))}]")
        detail = "; live loops: " + " | ".join(held)
        del loops
        if frozen:
            gc.freeze()
    earlier = {k: v for k, v in baseline.items() if v}
    note = f" ({earlier} were already alive before this test)" if earlier else ""
    raise AssertionError(
        f"greenhub live-object counters not back to zero {where}: leaked {leaked} "
        f"(all counters: {counters}){note}{detail}"
    )


def run_once(loop):
    """Run exactly the callbacks that are ready now (one pass of the loop)."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def run(loop, coro_or_future):
    return loop.run_until_complete(coro_or_future)


_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")
_WHEN = re.compile(r"when=[0-9.e+-]+")
_LOOP_CLASS = re.compile(r"^<\w+ ")


def normalise_repr(text):
    """Drop what legitimately differs between two runs: addresses and absolute times."""
    text = _ADDR.sub(" at 0xADDR", text)
    return _WHEN.sub("when=T", text)


def normalise_loop_repr(text):
    """A loop's repr starts with its class name, which differs between loops by design."""
    return _LOOP_CLASS.sub("<LOOP ", normalise_repr(text))


def error_of(fn, *args, **kwargs):
    """(type, message) of the exception fn raises, or None if it returns."""
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the point is to catch anything
        return type(exc), str(exc)
    return None


def error_of_stock(kind_fn):
    """error_of() run on a fresh stock loop: the reference for message comparisons."""
    loop = new_loop("asyncio")
    try:
        return kind_fn(loop)
    finally:
        loop.close()


class Overlap:
    """``with overlap:`` around a wait counts the callers waiting there at once;
    ``overlap.peak`` is the most there ever were.

    "n waits overlap" is then ``peak == n``, and a wait that blocked the thread (the
    loop) instead of suspending one task makes it 1: each caller would leave before the
    next came in.  This is exact, not a matter of timing, for callers started together:
    tasks created in one step take their first steps in one pass of the loop, and a wait
    begun in a pass - on a timer, I/O or another thread - cannot end before the next
    pass.  For one loop's tasks and virtual threads only (no lock)."""

    def __init__(self):
        self.now = 0
        self.peak = 0

    def __enter__(self):
        self.now += 1
        self.peak = max(self.peak, self.now)
        return self

    def __exit__(self, *exc):
        self.now -= 1


class Gathering:
    """A barrier for the tasks of one loop: ``await gathering.wait()`` (from sync code
    in a virtual thread, ``greenhub.await_(gathering.wait())``) returns only once
    `parties` callers are waiting at the same time - it shows that many requests, views
    or handlers in progress together.  Callers that came one after another would leave
    the first one waiting: after `patience` seconds (a hang detector, times SLOW) it
    raises AssertionError saying how many had arrived.  The loop is the first caller's."""

    def __init__(self, parties, patience=30):
        self.parties = parties
        self.patience = hang_timeout(patience)
        self.arrived = 0
        self._all_here = None

    async def wait(self):
        if self._all_here is None:
            self._all_here = asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.parties:
            self._all_here.set()
        try:
            await asyncio.wait_for(self._all_here.wait(), self.patience)
        except asyncio.TimeoutError:
            raise AssertionError(
                f"only {self.arrived} of {self.parties} callers were ever waiting at once "
                f"(gave up after {self.patience} s): they did not run concurrently"
            ) from None
        return self.arrived


@contextlib.contextmanager
def warnings_ignored():
    """For tests that leave objects behind on purpose (a pending task at close())."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def tls_contexts():
    """(server, client) SSLContexts for "localhost"/127.0.0.1 from a throwaway CA;
    skips the test where trustme is missing."""
    import ssl

    import pytest

    trustme = pytest.importorskip("trustme", reason="trustme (make deps installs it)")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx
