"""Helpers for the virtual-thread tests (tests/test_vthread*.py).

- ``gloop``: a fresh greenhub loop, closed at teardown, with conftest's leak check on
  (greenhub's live-object counters must be back to zero after the test).  Test modules
  import ``gloop_fixture`` to use it.
- ``sync_task(fn, *args)``: a coroutine that calls the synchronous ``fn`` - what a
  TaskGroup or ``loop.create_task`` needs to run sync code as a child task.
- ``counters()`` / ``assert_counters_back(baseline)``: greenhub._core.debug_counters()
  after a full collection, and the check that a test left nothing behind.  The
  per-thread loop that ``await_`` uses when no loop is running lives as long as its
  thread (the main thread's until exit), so "loops" and "workers" may stay at what they
  were before the test; everything else must be zero.
- ``in_thread(fn)``: run fn in a new OS thread, return its result or re-raise its
  exception.  No-loop tests run there so that the per-thread loop dies with the thread
  instead of living in the test runner's main thread for the rest of the session.
- ``run_child(src, ...)``: run a small program in a child process (for Ctrl-C tests and
  for what only the main thread of a fresh interpreter can show).
"""

import asyncio
import gc
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import support

import greenhub
from greenhub import _core

REPO = Path(__file__).resolve().parents[1]

PY312 = sys.version_info >= (3, 12)

# Counters that must be exactly zero once no loop is alive except idle per-thread
# no-loop loops (those hold no timers, tasks or parked virtual threads; each holds one
# Handle, the reader of asyncio's self-pipe, so "handles" is compared with the baseline).
MUST_BE_ZERO = ("timers", "queued", "coros", "parked")


@pytest.fixture(name="gloop")
def gloop_fixture(greenhub_leak_check):
    loop = greenhub.new_event_loop()
    loop.set_debug(False)
    try:
        yield loop
    finally:
        if not loop.is_closed():
            loop.close()
        asyncio.set_event_loop(None)


async def sync_task(fn, /, *args, **kwargs):
    """Run a synchronous function as the body of a task (for TaskGroup & co.)."""
    return fn(*args, **kwargs)


def collect():
    for _ in range(4):
        if not gc.collect():
            break


def counters():
    collect()
    return dict(_core.debug_counters())


def assert_counters_back(baseline, where=""):
    now = counters()
    bad = {k: v for k, v in now.items() if k in MUST_BE_ZERO and v}
    bad.update({k: v for k, v in now.items() if k not in MUST_BE_ZERO and v > baseline.get(k, 0)})
    assert not bad, f"greenhub counters not back {where}: {bad} (now {now}, before {baseline})"


def in_thread(fn, *args, timeout=30):
    box = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"{fn!r} still running after {timeout}s"
    if "error" in box:
        err = box.pop("error")
        try:
            raise err
        finally:
            del err
    return box.get("result")


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    return env


CHILD_PROLOGUE = """\
import asyncio, gc, signal, sys, greenhub
from greenhub import _core
signal.signal(signal.SIGINT, signal.default_int_handler)

def ready():
    print("ready", flush=True)

def say(*args):
    print(*args, flush=True)
"""


def run_child(body, *, sigint=False, timeout=20, args=()):
    """Run CHILD_PROLOGUE + body in `python -c`; with sigint=True wait until the child
    prints "ready", give it a moment, send SIGINT.  Returns (returncode, stdout, stderr);
    returncode is "hung" if the child had to be killed.  `timeout` is a hang detector
    (times support.SLOW under the sanitizers)."""
    timeout = support.hang_timeout(timeout)
    src = CHILD_PROLOGUE + textwrap.dedent(body)
    proc = subprocess.Popen(
        [sys.executable, "-c", src, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        cwd=str(REPO),
    )
    try:
        if sigint:
            readable, _, _ = select.select([proc.stdout], [], [], timeout)
            first = proc.stdout.readline() if readable else ""
            if first != "ready\n":
                proc.kill()
                out, err = proc.communicate()
                pytest.fail(f"child never became ready: {first!r}{out!r}\n{err}")
            time.sleep(0.1)  # let the loop reach its poll / the busy code
            proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return "hung", out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def last_line(text):
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


KILLED_BY_SIGINT = -signal.SIGINT
