"""Subprocesses, on both loops: exit codes, signals, pipes, many children, a child killed
while the loop sleeps, a loop closed under a running child, and child watchers.

greenhub watches its children through pidfds and never needs the policy's child watcher;
the behaviour tests below hold it to the stock loop's results.  The greenhub-only tests at
the end check the mechanism: no thread per child, the threaded fallback, a watcher the user
installed is still used, and no DeprecationWarning from greenhub's own path.
"""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import pytest
import support
from support import PY312

from greenhub import _children

SH = "/bin/sh"
TIMEOUT = 10


def run(loop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, TIMEOUT))


@pytest.mark.parametrize("code", [0, 1, 3, 127, 255])
def test_exit_codes(loop, code):
    async def main():
        proc = await asyncio.create_subprocess_exec(SH, "-c", f"exit {code}")
        return await proc.wait(), proc.returncode

    assert run(loop, main()) == (code, code)


def test_shell_and_exec_see_the_same_exit_code(loop):
    async def main():
        a = await asyncio.create_subprocess_shell("exit 7")
        b = await asyncio.create_subprocess_exec(SH, "-c", "exit 7")
        return await a.wait(), await b.wait()

    assert run(loop, main()) == (7, 7)


@pytest.mark.parametrize(
    "how, expected",
    [
        ("terminate", -signal.SIGTERM),
        ("kill", -signal.SIGKILL),
        ("send_signal", -signal.SIGINT),
    ],
)
def test_signals(loop, how, expected):
    # The child restores SIGINT's default action: started from a shell's background
    # job, the test process (and so a plain `sleep`) would inherit SIGINT ignored.
    child = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_DFL); " \
        "print(flush=True); time.sleep(30)"

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", child, stdout=asyncio.subprocess.PIPE
        )
        await proc.stdout.readline()  # the handler is in place
        if how == "send_signal":
            proc.send_signal(signal.SIGINT)
        else:
            getattr(proc, how)()
        return await proc.wait()

    assert run(loop, main()) == expected


def test_child_killing_itself(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(SH, "-c", "kill -USR1 $$; sleep 5")
        return await proc.wait()

    assert run(loop, main()) == -signal.SIGUSR1


def test_communicate(loop):
    script = (
        "import sys; data = sys.stdin.buffer.read(); "
        "sys.stdout.buffer.write(data.upper()); sys.stderr.write('err:%d' % len(data)); "
        "sys.exit(4)"
    )

    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate(b"hello " * 100_000)
        return out, err, proc.returncode

    out, err, code = run(loop, main())
    assert out == b"HELLO " * 100_000
    assert err == b"err:600000"
    assert code == 4


def test_communicate_stderr_to_stdout_and_devnull(loop):
    async def main():
        a = await asyncio.create_subprocess_shell(
            "echo out; echo err >&2",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        b = await asyncio.create_subprocess_shell(
            "echo out; echo err >&2",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return await a.communicate(), await b.communicate()

    (a_out, a_err), (b_out, b_err) = run(loop, main())
    assert sorted(a_out.split()) == [b"err", b"out"] and a_err is None
    assert b_out is None and b_err == b"err\n"


def test_stream_reads_after_exit(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            SH, "-c", "printf 'a\\nb\\n'", stdout=subprocess.PIPE
        )
        code = await proc.wait()
        lines = [await proc.stdout.readline(), await proc.stdout.readline()]
        return code, lines, await proc.stdout.read()

    assert run(loop, main()) == (0, [b"a\n", b"b\n"], b"")


def test_many_concurrent_children(loop):
    n = 60

    async def one(i):
        proc = await asyncio.create_subprocess_exec(
            SH, "-c", f"echo {i}; exit {i % 7}", stdout=subprocess.PIPE
        )
        out, _ = await proc.communicate()
        return int(out), proc.returncode

    async def main():
        return await asyncio.gather(*(one(i) for i in range(n)))

    assert run(loop, main()) == [(i, i % 7) for i in range(n)]


def test_concurrent_waiters_on_one_child(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(SH, "-c", "sleep 0.1; exit 5")
        return await asyncio.gather(proc.wait(), proc.wait(), proc.wait())

    assert run(loop, main()) == [5, 5, 5]


def test_child_killed_from_outside_while_the_loop_sleeps(loop):
    """Nothing else is scheduled: the loop is blocked in its poll when the child dies."""

    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        killer = threading.Timer(0.1, os.kill, (proc.pid, signal.SIGKILL))
        killer.start()
        try:
            return await proc.wait()
        finally:
            killer.join()

    assert run(loop, main()) == -signal.SIGKILL


def test_child_killed_by_another_process(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        killer = await asyncio.create_subprocess_exec("kill", "-TERM", str(proc.pid))
        return await killer.wait(), await proc.wait()

    assert run(loop, main()) == (0, -signal.SIGTERM)


def test_protocol_events(loop):
    events = []

    class Proto(asyncio.SubprocessProtocol):
        def __init__(self):
            self.done = loop.create_future()

        def pipe_data_received(self, fd, data):
            events.append(("data", fd, data))

        def pipe_connection_lost(self, fd, exc):
            events.append(("pipe_lost", fd, exc))

        def process_exited(self):
            events.append(("exited",))

        def connection_lost(self, exc):
            events.append(("lost", exc))
            self.done.set_result(None)

    async def main():
        transport, proto = await loop.subprocess_exec(
            Proto, SH, "-c", "printf hi; exit 2", stdin=None, stderr=None
        )
        await proto.done
        code = transport.get_returncode()
        transport.close()
        return code

    assert run(loop, main()) == 2
    assert ("data", 1, b"hi") in events
    assert ("pipe_lost", 1, None) in events
    assert ("exited",) in events
    assert events[-1] == ("lost", None)


def test_cancelled_wait_leaves_the_child_watched(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(SH, "-c", "sleep 0.2; exit 9")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.01)
        return await proc.wait()

    assert run(loop, main()) == 9


def test_transport_close_kills_a_running_child(loop):
    async def main():
        transport, _ = await loop.subprocess_exec(asyncio.SubprocessProtocol, "sleep", "30")
        transport.close()
        return await transport._wait()

    assert run(loop, main()) == -signal.SIGKILL


def test_popen_error_is_raised(loop):
    async def main():
        await asyncio.create_subprocess_exec("/nonexistent/program")

    with pytest.raises(FileNotFoundError):
        run(loop, main())


def _proc_state(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def test_loop_closed_with_a_running_child(loop, caplog):
    """Closing the loop does not kill or wait for the child, on either loop.  What follows
    depends on the Python version's stock watcher, and greenhub follows it: on 3.11 a
    thread keeps waiting, reaps the child when it exits and logs a warning; from 3.12 nothing
    watches the child any more, which stays a zombie until the transport is closed."""

    async def main():
        return await loop.subprocess_exec(
            asyncio.SubprocessProtocol, "sleep", "0.3", stdin=None, stdout=None, stderr=None
        )

    transport, _ = run(loop, main())
    pid = transport.get_pid()
    loop.close()
    assert transport.get_returncode() is None
    assert not transport.is_closing()
    assert _proc_state(pid) not in (None, "Z")  # still running

    deadline = time.monotonic() + TIMEOUT
    while _proc_state(pid) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # let a waiting thread (3.11) finish
    if PY312:
        assert _proc_state(pid) == "Z"
    else:
        assert _proc_state(pid) is None
        assert any(
            r.levelname == "WARNING" and str(pid) in r.getMessage() for r in caplog.records
        )
    assert transport.get_returncode() is None  # never told: the loop is gone
    transport.close()  # no kill: the child is finished; reaps a zombie
    assert _proc_state(pid) is None
    _join_waiter_threads()


def test_child_watcher_installed_by_the_user_is_used(loop):
    if not hasattr(asyncio, "ThreadedChildWatcher"):
        pytest.skip("no child watchers on this Python")
    added = []

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: watchers are deprecated

        class Recording(asyncio.ThreadedChildWatcher):
            def add_child_handler(self, pid, callback, *args):
                added.append(pid)
                super().add_child_handler(pid, callback, *args)

        asyncio.set_child_watcher(Recording())

    async def main():
        proc = await asyncio.create_subprocess_exec(SH, "-c", "exit 6")
        return proc.pid, await proc.wait()

    try:
        pid, code = run(loop, main())
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(None)
    _join_waiter_threads()
    assert code == 6
    assert added == [pid]


def test_inactive_installed_watcher_refuses_as_on_stock(loop):
    if not hasattr(asyncio, "AbstractChildWatcher"):
        pytest.skip("no child watchers on this Python")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)

        class Inactive(asyncio.ThreadedChildWatcher):
            def is_active(self):
                return False

        asyncio.set_child_watcher(Inactive())

    async def main():
        await asyncio.create_subprocess_exec(SH, "-c", "exit 0")

    try:
        with pytest.raises(RuntimeError, match="not activated"):
            run(loop, main())
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(None)


# -- greenhub's mechanism ----------------------------------------------------------------


def _join_waiter_threads():
    for t in threading.enumerate():
        if t.name.startswith(("greenhub-waitpid", "asyncio-waitpid", "waitpid")):
            t.join(TIMEOUT)


@pytest.fixture
def greenhub_loop(greenhub_leak_check):
    lp = support.new_loop("greenhub")
    yield lp
    lp.close()


@pytest.mark.skipif(not _children._can_use_pidfd(), reason="pidfd_open not available")
def test_no_thread_per_child_with_pidfd(greenhub_loop):
    loop = greenhub_loop
    counts = []

    async def main():
        procs = [await asyncio.create_subprocess_exec("sleep", "0.2") for _ in range(10)]
        counts.append(threading.active_count())
        return [await p.wait() for p in procs]

    before = threading.active_count()
    assert run(loop, main()) == [0] * 10
    assert counts == [before]
    assert loop._gh_children == {}


@pytest.mark.skipif(
    _children._NO_CHILD_WATCHERS,
    reason="3.14+: greenhub takes the stock path (the loop's own child watcher), which "
    "CPython's test_subprocess covers under compat/run_cpython.py",
)
def test_threaded_fallback_without_pidfd(greenhub_loop, monkeypatch):
    loop = greenhub_loop
    monkeypatch.setattr(_children, "_pidfd_works", False)
    names = []

    async def main():
        proc = await asyncio.create_subprocess_exec(
            SH, "-c", "read x; echo got $x; exit 3", stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        names.extend(t.name for t in threading.enumerate())
        out, _ = await proc.communicate(b"it\n")
        return out, proc.returncode

    assert run(loop, main()) == (b"got it\n", 3)
    _join_waiter_threads()
    assert any(n.startswith("greenhub-waitpid") for n in names)


@pytest.mark.skipif(
    _children._NO_CHILD_WATCHERS,
    reason="3.14+: greenhub takes the stock path (the loop's own child watcher), which "
    "CPython's test_subprocess covers under compat/run_cpython.py",
)
def test_pidfd_exhaustion_falls_back_to_a_thread(greenhub_loop, monkeypatch):
    if not _children._can_use_pidfd():
        pytest.skip("pidfd_open not available")
    import errno

    def no_fds(pid, flags=0):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "pidfd_open", no_fds)

    async def main():
        proc = await asyncio.create_subprocess_exec(SH, "-c", "exit 8")
        return await proc.wait()

    assert run(greenhub_loop, main()) == 8
    _join_waiter_threads()


@pytest.mark.skipif(not _children._can_use_pidfd(), reason="pidfd_open not available")
def test_child_reaped_elsewhere_reports_255(greenhub_loop, caplog):
    """As the stock pidfd watcher does (on the stock loop the race with its watcher is
    not deterministic on 3.11, so this is checked on greenhub only)."""
    loop = greenhub_loop

    async def main():
        transport, _ = await loop.subprocess_exec(
            asyncio.SubprocessProtocol, SH, "-c", "sleep 0.2; exit 4"
        )
        os.waitpid(transport.get_pid(), 0)  # steal the exit status before the loop looks
        code = await transport._wait()
        transport.close()
        return code

    assert run(loop, main()) == 255
    assert any("255" in r.getMessage() for r in caplog.records)


def test_no_deprecation_warning_from_greenhub_path(greenhub_loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(SH, "-c", "exit 1")
        return await proc.wait()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run(greenhub_loop, main()) == 1


@pytest.mark.filterwarnings(
    "ignore:.* is deprecated and slated for removal in Python 3.16:DeprecationWarning"
)
def test_policy_without_child_watchers_still_runs_children(greenhub_loop):
    """A policy that does not implement get_child_watcher() (the stock loop raises
    NotImplementedError there on 3.11-3.13): greenhub needs no watcher, so it works."""

    class Minimal(asyncio.AbstractEventLoopPolicy):
        def get_event_loop(self):
            return greenhub_loop

        def set_event_loop(self, loop):
            pass

        def new_event_loop(self):
            raise AssertionError

    asyncio.set_event_loop_policy(Minimal())

    async def main():
        proc = await asyncio.create_subprocess_exec(SH, "-c", "exit 2")
        return await proc.wait()

    assert run(greenhub_loop, main()) == 2


CPYTHON_SUITE_ON_OWN_PATH = """
import asyncio, sys, unittest
import greenhub
from greenhub import _children

_children._policy_watcher = lambda: None  # ignore the watchers the tests install


class Policy(greenhub.Policy):
    pass


asyncio.DefaultEventLoopPolicy = Policy  # survives the tests' set_event_loop_policy(None)
asyncio.unix_events.DefaultEventLoopPolicy = Policy
asyncio.set_event_loop_policy(Policy())
from test.test_asyncio import test_subprocess as ts

# One class of SubprocessMixin's tests: with the watchers ignored, every watcher class
# (Threaded, Pidfd, ...) runs the same tests on the same greenhub path, only with a
# different unused watcher attached.
suite = unittest.TestLoader().loadTestsFromTestCase(ts.SubprocessThreadedWatcherTests)
result = unittest.TextTestRunner(verbosity=0).run(suite)
assert isinstance(asyncio.new_event_loop(), greenhub.Loop)
print("RAN", result.testsRun, flush=True)
sys.exit(not result.wasSuccessful())
"""


@pytest.mark.skipif(not _children._can_use_pidfd(), reason="pidfd_open not available")
@pytest.mark.skipif(
    _children._NO_CHILD_WATCHERS,
    reason="3.14+ has no child watchers: greenhub takes the stock path (the loop's own "
    "watcher), which compat/run_cpython.py runs test_subprocess on",
)
def test_cpython_subprocess_suite_on_greenhubs_own_path(tmp_path):
    """compat/run_cpython.py runs CPython's test_subprocess, whose tests install child
    watchers - which greenhub then uses.  Here the same tests run with greenhub ignoring
    those watchers, so they exercise greenhub's own pidfd path."""
    import sysconfig

    stdlib = sysconfig.get_path("stdlib")
    if not os.path.exists(os.path.join(stdlib, "test", "test_asyncio", "test_subprocess.py")):
        pytest.skip("this Python ships without its test package")
    script = tmp_path / "run.py"
    script.write_text(CPYTHON_SUITE_ON_OWN_PATH)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=50
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # SubprocessMixin has 29 tests on 3.11, 35 on 3.13.
    assert "RAN" in proc.stdout and int(proc.stdout.split("RAN")[1].split()[0]) >= 25
