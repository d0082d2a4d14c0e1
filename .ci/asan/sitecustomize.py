"""Leak check for `make asan`: every Python process of the run imports this module
at startup (the Makefile puts this directory first on PYTHONPATH; child processes
inherit it), and it arranges for LeakSanitizer to run once the interpreter has been
finalized.

Why not LeakSanitizer's own check at exit: the sanitizer runtime is preloaded into
every process the tests start, and most of those are not Python (git, redis-server,
openssl, sh...), with leaks of their own that are not greenhub's business.  So the
run sets ASAN_OPTIONS=leak_check_at_exit=0, and only Python processes ask for the
check, from here: Py_AtExit() calls __lsan_do_leak_check() at the very end of
Py_FinalizeEx(), after CPython has freed what it frees.  What is still allocated then
and reachable from nothing is a leak: for greenhub, a reference it took and never
released (an object with a refcount nobody will drop), or a block it malloc'ed and
lost.

These processes are not checked, because what they leak is not greenhub's or is
leaked by design:
- one that never imported greenhub._core (a tool the tests run: report.py drawing
  with matplotlib, the Cython compiler, a server's master process): nothing of
  greenhub's can leak there, and third-party extensions keep much until exit;
- a benchmark script (`python -m greenhub bench` in tests/test_cli.py);
- one that loaded pydantic-core, orjson or numpy (FastAPI, matplotlib): they keep
  objects until exit, allocated through CPython's API, so no suppression can tell
  them from greenhub's (the live-object counters of tests/conftest.py still check
  greenhub's own objects after every test);
- one that exits while other Python threads still run (daemon threads): CPython
  abandons them mid-flight with their frames and arguments;
- one that exits with greenlets suspended (a greenhub loop that was never closed
  keeps its worker greenlets): greenlet cannot unwind them during finalization, and
  what their stacks refer to stays allocated.
The last two are rare in the test suite (tests that exit that way on purpose, in children).
"""

import atexit
import sys


def _arm_leak_check():
    # Registered first, so it runs last of the atexit callbacks: after greenhub's own
    # (the watchdog's stop, the per-thread loops' close) and the program's.  Threads
    # that are not daemons were joined before the atexit callbacks run.
    import ctypes
    import threading

    if "greenhub._core" not in sys.modules:
        return _skipped("greenhub._core never imported")
    script = sys.argv[0] if sys.argv else ""
    if "/benchmarks/" in script or "/_benchmarks/" in script:
        return _skipped("a benchmark script (it measures, and exits without cleaning up)")
    leaky = sorted(m for m in _LEAKY_EXTENSIONS if m in sys.modules)
    if leaky:
        # Their Rust/C code allocates through CPython's API, so the stacks of what they
        # keep show only CPython frames and no suppression can name them.
        return _skipped(f"extensions that keep objects until exit: {', '.join(leaky)}")
    if set(sys._current_frames()) - {threading.get_ident()}:
        return _skipped("Python threads still running")
    if _suspended_greenlets():
        core = sys.modules.get("greenhub._core")
        loops = _loops(core) if core is not None else []
        closed = sum(lp.is_closed() for lp in loops)
        return _skipped(f"greenlets still suspended; greenhub loops: {len(loops)}, closed {closed}")
    try:
        check = ctypes.CDLL(None).__lsan_do_leak_check
    except AttributeError:  # the runtime is not preloaded: nothing to check with
        return
    # A C function with no arguments, called after finalization: no Python code runs.
    ctypes.pythonapi.Py_AtExit(ctypes.cast(check, ctypes.c_void_p))


# Third-party extension modules that keep objects allocated until the process exits.
_LEAKY_EXTENSIONS = ("pydantic_core", "orjson", "numpy")


def _skipped(reason):
    # Told to .ci/asan/run, which lists such processes after the run (not a failure).
    import os

    log = os.environ.get("GREENHUB_ASAN_LOG")
    if log:
        with open(os.path.join(log, f"no-leak-check.{os.getpid()}"), "w") as f:
            f.write(f"{reason}: {' '.join(sys.argv)[:200]}\n")


def _loops(core):
    import gc

    return [o for o in gc.get_objects() if issubclass(type(o), core.Loop)]


def _suspended_greenlets():
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return False
    import gc

    current = greenlet.getcurrent()
    # type(), not isinstance(): isinstance() reads `__class__`, which a lazy object can
    # compute (Django's unconfigured LazySettings raised here, and the check was lost).
    gtype = greenlet.greenlet
    return any(
        issubclass(type(g), gtype) and g and g.parent is not None and g is not current
        for g in gc.get_objects()
    )


def _in_main_interpreter():
    # A subinterpreter (the C API test makes one) imports this module too, and runs its
    # atexit callbacks when it ends: its Py_AtExit() would arm the process-wide check
    # for whatever process it runs in, past that process's own decision.
    import ctypes

    api = ctypes.pythonapi
    api.PyInterpreterState_Get.restype = ctypes.c_void_p
    api.PyInterpreterState_Main.restype = ctypes.c_void_p
    return api.PyInterpreterState_Get() == api.PyInterpreterState_Main()


def _arm_leak_check_or_say_why_not():
    # A leak check that could not be armed must not pass as a clean run: the error is
    # written where .ci/asan/run counts it as a report.
    try:
        _arm_leak_check()
    except BaseException:
        import os
        import traceback

        log = os.environ.get("GREENHUB_ASAN_LOG")
        if log:
            with open(os.path.join(log, f"leak-check-not-armed.{os.getpid()}"), "w") as f:
                f.write(" ".join(sys.argv) + "\n" + traceback.format_exc())
        raise


if _in_main_interpreter():
    atexit.register(_arm_leak_check_or_say_why_not)
