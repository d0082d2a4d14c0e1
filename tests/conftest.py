"""Fixtures that run every behaviour test on the stock asyncio loop and on greenhub.

``loop_factory`` is parametrised with the ids "asyncio" and "greenhub"; ``loop`` is one
loop made by it.  A test written against ``loop`` therefore checks that greenhub behaves
like the stock loop instead of assuming it (the uvloop test-suite idea).

Leak check.  For greenhub, the live-object counters of greenhub._core must be back to zero
once the test's loops are closed and collected.  The check cannot run inside the fixture's
own teardown: until the teardown phase is over pytest still holds the test's fixture values
(``item.funcargs``) and the log records it captured during the call phase, and a record
logged with ``exc_info`` (the default exception handler does that) keeps a traceback whose
frames reach the test function and so the loop.  So the fixture only marks the test, and a
``pytest_runtest_teardown`` wrapper checks the counters after the whole teardown phase; an
AssertionError raised there is reported as an error in that test's teardown.

One more holder is out of reach: pytest keeps every warning a test lets through, with its
``source`` (an unawaited coroutine, an unclosed loop), until the session ends.  Tests that
expect such a warning about a greenhub object catch it themselves with
``warnings.catch_warnings(record=True)``; otherwise the object counts as leaked.  The check
compares against the counters at the start of the test, so one leak is reported once, by
the test that caused it, not again by every test after it.
"""

import asyncio
import gc
import importlib.metadata
import os
import socket
import sys
import sysconfig
import threading
from pathlib import Path

import pytest
import support

# pg_dsn and pg_admin_dsn: a real PostgreSQL for the database tests (tests/pg_fixtures.py).
pytest_plugins = ("pg_fixtures",)

_LEAK_CHECK = pytest.StashKey[bool]()
_THREADS_BEFORE = pytest.StashKey[set]()
_COUNTERS_BEFORE = pytest.StashKey[dict]()


def pytest_configure(config):
    if os.environ.get("GREENHUB_TEST_INSTALLED") == "1":
        _check_installed_greenhub()
    # An exception that escapes a helper thread, or is raised where Python can only print
    # it (a __del__, a dealloc, a weakref callback), fails the test instead of passing by.
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnhandledThreadExceptionWarning")
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnraisableExceptionWarning")


def pytest_collection_modifyitems(config, items):
    # Under the sanitizers everything runs about five times slower (support.SLOW): give
    # each test's hang detector, pytest-timeout's limit, as much more room.  The tests
    # themselves assert nothing about time.
    if support.SLOW == 1:
        return
    default = config.getini("timeout")
    for item in items:
        marker = item.get_closest_marker("timeout")
        if marker is None:
            seconds = default
        else:
            seconds = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
        if seconds:
            item.add_marker(pytest.mark.timeout(float(seconds) * support.SLOW), append=False)


def pytest_collection_finish(session):
    # Speed, not semantics.  The leak check below runs gc.collect() after every greenhub
    # test, and with every test module imported (Django, SQLAlchemy, aiohttp, ...) a full
    # collection walks about 150,000 objects: some 0.1 s each time, well over half of the
    # suite's run time.  gc.freeze() moves everything alive now to the permanent
    # generation, which collections skip; what a test creates is collected as before, so
    # the check sees the same leaks.  (Frozen objects are only hidden from
    # gc.get_objects()/get_referrers(); support.py unfreezes to name a leak's holders.)
    gc.collect()
    gc.freeze()


def _check_installed_greenhub():
    """GREENHUB_TEST_INSTALLED=1 (.ci/installed-tests): the suite tests the installed
    distribution, so refuse to run if greenhub was imported from anywhere else - a source
    tree on sys.path, the current directory - or if child processes, which get the tests'
    parent directory on PYTHONPATH, would find a source tree there."""
    import greenhub

    dist_name = "greenhub-loop"
    here = Path(__file__).resolve().parent
    problems = []
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        problems.append(f"the {dist_name} distribution is not installed in {sys.prefix}")
    else:  # the files imported are those the distribution installed (its RECORD)
        record = {Path(dist.locate_file(f)).resolve() for f in dist.files or ()}
        for module in (greenhub, greenhub._core):
            if Path(module.__file__).resolve() not in record:
                problems.append(f"{module.__name__} comes from {module.__file__}, not {dist_name}")
    site_dirs = {Path(sysconfig.get_path(k)).resolve() for k in ("purelib", "platlib")}
    if not any(Path(greenhub.__file__).resolve().is_relative_to(d) for d in site_dirs):
        problems.append(f"greenhub ({greenhub.__file__}) is not in {sorted(map(str, site_dirs))}")
    if (here.parent / "greenhub").exists():
        problems.append(f"{here.parent} holds a greenhub/ source tree that child processes import")
    if problems:
        raise pytest.UsageError(
            "GREENHUB_TEST_INSTALLED=1 but this run would not test the installed greenhub:\n  "
            + "\n  ".join(problems)
        )


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    # Before the summaries: plugins may import and introspect there (hypothesis'
    # register_random() asks gc.get_referrers(), which does not see frozen objects).
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _stock_policy_and_no_current_loop():
    """Every test starts and ends with the default policy and no current loop."""
    _reset_policy()
    yield
    _reset_policy()


def _reset_policy():
    # 3.14 deprecates set_event_loop_policy() (it warns); the setter behind it does not.
    if sys.version_info >= (3, 14):
        asyncio.events._set_event_loop_policy(None)
    else:
        asyncio.set_event_loop_policy(None)


@pytest.fixture(params=support.LOOP_KINDS)
def loop_factory(request):
    """Callable making fresh loops of the parametrised kind; closes them all at teardown."""
    kind = request.param
    created = []

    def factory():
        lp = support.new_loop(kind)
        created.append(lp)
        return lp

    factory.kind = kind
    if kind == "greenhub":
        _want_leak_check(request.node)
    yield factory
    try:
        _close_all(created)
    finally:
        created.clear()


@pytest.fixture
def loop(loop_factory):
    """A new loop of the parametrised kind; not set as current (tests that need it do so)."""
    return loop_factory()


@pytest.fixture
def pair():
    """A connected non-blocking socket pair, closed at teardown."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def kind(loop_factory):
    return loop_factory.kind


@pytest.fixture
def both_loops(request):
    """{'asyncio': stock loop, 'greenhub': greenhub loop} for tests that compare the two."""
    _want_leak_check(request.node)
    loops = {}
    try:
        for k in support.LOOP_KINDS:
            loops[k] = support.new_loop(k)
        yield loops
    finally:
        _close_all(list(loops.values()))
        loops.clear()


@pytest.fixture
def greenhub_leak_check(request):
    """For tests that make greenhub loops by other means (runners, policies)."""
    _want_leak_check(request.node)


def _want_leak_check(item):
    if item.stash.get(_LEAK_CHECK, False):
        return
    item.stash[_LEAK_CHECK] = True
    item.stash[_THREADS_BEFORE] = set(threading.enumerate())
    # Normally all zero.  Not zero only if an earlier test leaked objects that are still
    # alive; they are reported there, and are not blamed on every later test again.
    item.stash[_COUNTERS_BEFORE] = support.greenhub_counters()


def _close_all(loops):
    errors = []
    for lp in loops:
        if lp.is_running():  # only a broken test leaves one running; say so
            errors.append(f"{lp!r} still running at teardown")
            continue
        try:
            lp.close()
        except Exception as exc:  # noqa: BLE001 - report after closing the others
            errors.append(f"{lp!r}.close() raised {exc!r}")
    asyncio.set_event_loop(None)
    assert not errors, "; ".join(errors)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    if item.stash.get(_LEAK_CHECK, False):
        _drop_pytest_references(item)
        _join_new_threads(item.stash.get(_THREADS_BEFORE, set()))
        support.assert_greenhub_counters_zero(
            f"after {item.nodeid}", baseline=item.stash.get(_COUNTERS_BEFORE, {})
        )
    return result


def _drop_pytest_references(item):
    # pytest clears item.funcargs right after this hook; do it now so the loops can die.
    funcargs = getattr(item, "funcargs", None)
    if funcargs:
        funcargs.clear()
    # A failing test leaves its traceback (frames holding the loop) in sys.last_*; pytest
    # deletes them when the next test starts, too late for this check.
    for name in ("last_type", "last_value", "last_traceback", "last_exc"):
        if hasattr(sys, name):
            delattr(sys, name)


def _join_new_threads(before, timeout=5.0):
    # Executor workers exit shortly after close(); until then they may hold the loop.
    for t in threading.enumerate():
        if t not in before and t is not threading.current_thread() and not t.daemon:
            t.join(timeout)
