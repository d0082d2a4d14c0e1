"""Ctrl-C: the same program, interrupted with SIGINT, on the stock loop and on greenhub.

Each test runs one small program in a child process once per loop kind, waits until the
program says (from inside the running loop) that it is ready, lets it settle for a moment,
sends SIGINT and compares what the two runs printed, their last line of stderr and their
exit status.  A child that ignores the signal is killed after a timeout and reported.
"""

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support import PY312

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 10
EXIT_TIMEOUT = 5

PROLOGUE = """\
import asyncio, functools, signal, sys
# Ctrl-C must raise KeyboardInterrupt even if the test runner was started with SIGINT
# ignored (as a background job of a non-interactive shell would be).
signal.signal(signal.SIGINT, signal.default_int_handler)
KIND = sys.argv[1]

def new_loop():
    if KIND == "asyncio":
        return asyncio.new_event_loop()
    import greenhub
    return greenhub.new_event_loop()

def runner_run(main):
    if KIND == "asyncio":
        return asyncio.run(main)
    import greenhub
    return greenhub.run(main)

def ready():
    print("ready", flush=True)
"""


def _run_child(body, kind):
    src = PROLOGUE + textwrap.dedent(body)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTHONASYNCIODEBUG", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", src, kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )
    try:
        readable, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        first = proc.stdout.readline() if readable else ""
        if first != "ready\n":
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"[{kind}] child never became ready: {first!r}{out!r}\n{err}")
        time.sleep(0.05)  # let the loop reach its poll (or spin a while)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return {
                "returncode": "hung",
                "stdout": out,
                "stderr_last": f"no exit {EXIT_TIMEOUT}s after SIGINT",
                "stderr": err,
            }
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err_lines = err.strip().splitlines()
    return {
        "returncode": proc.returncode,
        "stdout": out,
        "stderr_last": err_lines[-1] if err_lines else "",
        "stderr": err,
    }


# What asyncio's run_forever() cleanup race looks like to these programs.  That cleanup is
# Python code on both loops (greenhub's Loop uses asyncio's _run_forever_cleanup()); a
# SIGINT whose KeyboardInterrupt is raised in it before it clears the loop's thread id
# leaves the loop marked running, and the program's close() then fails.  Seen once on
# 3.14's stock loop, with busy tasks; asyncio's race, not a behaviour to compare.
CLEANUP_RACE = "RuntimeError: Cannot close a running event loop"


def _run_past_cleanup_race(body, kind, attempts=3):
    """_run_child(), again (at most `attempts` runs in all) while a run shows only the
    cleanup race; any other outcome is returned as it is."""
    for _ in range(attempts):
        result = _run_child(body, kind)
        if result["stderr_last"] != CLEANUP_RACE:
            break
    return result


def _compare(body, expect_stdout, expect_stderr_last, expect_returncode):
    """Run body on both loops; expect_stderr_last=None: don't compare stderr."""
    keys = ("stdout", "returncode") + (("stderr_last",) if expect_stderr_last is not None else ())
    expected = {"stdout": expect_stdout, "returncode": expect_returncode}
    if expect_stderr_last is not None:
        expected["stderr_last"] = expect_stderr_last
    # The program's expected behaviour is what the stock loop does; check that first so a
    # broken test is not mistaken for a greenhub bug.
    stock = _run_past_cleanup_race(body, "asyncio")
    assert {k: stock[k] for k in keys} == expected, stock["stderr"]
    gh = _run_past_cleanup_race(body, "greenhub")
    assert {k: gh[k] for k in keys} == expected, gh["stderr"]


# Uncaught KeyboardInterrupt: Python re-raises SIGINT at exit, so the status is -SIGINT.
KILLED_BY_SIGINT = -signal.SIGINT


def test_run_until_complete_sleep_is_interrupted():
    _compare(
        """
        loop = new_loop()
        loop.call_soon(ready)
        try:
            loop.run_until_complete(asyncio.sleep(30))
        except KeyboardInterrupt:
            print("KeyboardInterrupt", "running=%s" % loop.is_running(), flush=True)
        loop.run_until_complete(asyncio.sleep(0))  # the loop is still usable
        loop.close()
        print("closed", flush=True)
        """,
        "KeyboardInterrupt running=False\nclosed\n",
        "",
        0,
    )


def test_run_until_complete_sleep_uncaught_interrupt_exit_status():
    _compare(
        """
        loop = new_loop()
        loop.call_soon(ready)
        loop.run_until_complete(asyncio.sleep(30))
        """,
        "",
        "KeyboardInterrupt",
        KILLED_BY_SIGINT,
    )


def test_run_forever_idle_is_interrupted():
    _compare(
        """
        loop = new_loop()
        loop.call_soon(ready)
        try:
            loop.run_forever()
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
        loop.close()
        """,
        "KeyboardInterrupt\n",
        "",
        0,
    )


@pytest.mark.parametrize(
    "wait",
    ["await asyncio.sleep(30)", "while True:\n                    await asyncio.sleep(0)"],
    ids=["sleeping", "busy"],
)
def test_runner_cancels_main_task_then_raises_keyboard_interrupt(wait):
    # The Runner's SIGINT handler cancels the main task first, whether it sleeps or is
    # busy stepping, then raises KeyboardInterrupt.
    _compare(
        f"""
        async def main():
            asyncio.get_running_loop().call_soon(ready)
            try:
                {wait}
            except asyncio.CancelledError:
                print("main cancelled", flush=True)
                raise
        try:
            runner_run(main())
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
        """,
        "main cancelled\nKeyboardInterrupt\n",
        "",
        0,
    )


def test_runner_uncaught_interrupt_exit_status():
    _compare(
        """
        async def main():
            asyncio.get_running_loop().call_soon(ready)
            await asyncio.sleep(30)
        runner_run(main())
        """,
        "",
        "KeyboardInterrupt",
        KILLED_BY_SIGINT,
    )


def test_runner_main_that_swallows_cancellation_returns_normally():
    # asyncio.Runner only turns Ctrl-C into KeyboardInterrupt if main stays cancelled.
    _compare(
        """
        async def main():
            asyncio.get_running_loop().call_soon(ready)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()
                return "swallowed"
        print(runner_run(main()), flush=True)
        """,
        "swallowed\n",
        "",
        0,
    )


@pytest.mark.skipif(not PY312, reason="asyncio.run(loop_factory=) is new in Python 3.12")
def test_asyncio_run_with_greenhub_loop_factory_is_interrupted():
    _compare(
        """
        async def main():
            asyncio.get_running_loop().call_soon(ready)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                print("main cancelled", flush=True)
                raise
        factory = asyncio.new_event_loop if KIND == "asyncio" else None
        if factory is None:
            import greenhub
            factory = greenhub.new_event_loop
        try:
            asyncio.run(main(), loop_factory=factory)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
        """,
        "main cancelled\nKeyboardInterrupt\n",
        "",
        0,
    )


def test_busy_python_callbacks_are_interrupted():
    _compare(
        """
        loop = new_loop()
        count = 0
        def spin():
            global count
            count += 1
            if count == 1:
                ready()
            loop.call_soon(spin)
        loop.call_soon(spin)
        try:
            loop.run_forever()
        except KeyboardInterrupt:
            print("KeyboardInterrupt", count > 1, loop.is_running(), flush=True)
        loop.close()
        """,
        "KeyboardInterrupt True False\n",
        "",
        0,
    )


@pytest.mark.parametrize(
    "reschedule",
    ["loop.call_soon, (spin,)", "loop.call_later, (0, spin)"],
    ids=["call_soon", "call_later_0"],
)
def test_busy_c_level_callbacks_are_interrupted(reschedule):
    # A callback that re-schedules itself without running any Python bytecode in between
    # (a functools.partial of loop.call_soon / call_later(0, ...) whose argument is
    # itself): only the loop's own signal checks can notice Ctrl-C here.
    _compare(
        f"""
        loop = new_loop()
        spin = functools.partial(print)
        spin.__setstate__(({reschedule}, None, None))
        loop.call_soon(ready)
        loop.call_soon(spin)
        try:
            loop.run_forever()
        except KeyboardInterrupt:
            print("KeyboardInterrupt", loop.is_running(), flush=True)
        loop.close()
        """,
        "KeyboardInterrupt False\n",
        "",
        0,
    )


def test_busy_tasks_are_interrupted():
    # stderr is not compared: where Ctrl-C lands is a matter of timing, and when it lands
    # inside a task step that task ends with the KeyboardInterrupt and asyncio logs "Task
    # exception was never retrieved" at exit - on the stock loop too, only less often.
    _compare(
        """
        loop = new_loop()
        async def spinner():
            while True:
                await asyncio.sleep(0)
        async def main():
            loop.call_soon(ready)
            await asyncio.gather(spinner(), spinner())
        try:
            loop.run_until_complete(main())
        except KeyboardInterrupt:
            print("KeyboardInterrupt", loop.is_running(), flush=True)
        loop.close()
        """,
        "KeyboardInterrupt False\n",
        None,
        0,
    )


def test_sigint_handler_set_with_add_signal_handler_runs_instead():
    _compare(
        """
        loop = new_loop()
        def on_sigint():
            print("handler", flush=True)
            loop.stop()
        loop.add_signal_handler(signal.SIGINT, on_sigint)
        loop.call_soon(ready)
        loop.run_forever()
        print("stopped", flush=True)
        loop.close()
        """,
        "handler\nstopped\n",
        "",
        0,
    )
