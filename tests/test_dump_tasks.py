"""greenhub.task_stacks() / dump_tasks(): every task with its stack, the synchronous
frames under each await_() included; and the dump on a signal."""

import asyncio
import io
import os
import signal
import time

import pytest
from vthread_helpers import gloop_fixture, run_child  # noqa: F401 - fixture

import greenhub


def level3():
    return greenhub.await_(asyncio.sleep(30))


def level2():
    return level3()


def level1():
    return level2()


async def parked_coroutine():
    return level1()


async def plain_waiter():
    await asyncio.sleep(30)


def names(summary):
    return [f.name for f in summary]


def test_task_stacks_show_sync_frames_under_await(gloop):
    async def main():
        parked = asyncio.create_task(parked_coroutine(), name="parked")
        plain = asyncio.create_task(plain_waiter(), name="plain")
        await asyncio.sleep(0.01)
        stacks = {ts.name: ts for ts in greenhub.task_stacks()}
        parked.cancel()
        plain.cancel()
        await asyncio.gather(parked, plain, return_exceptions=True)
        return stacks, asyncio.current_task()

    stacks, me = gloop.run_until_complete(main())
    p = stacks["parked"]
    assert p.state == "waiting in await_()"
    # traceback order: the task's coroutine, then the three sync calls down to await_
    assert names(p.frames) == ["parked_coroutine", "level1", "level2", "level3"]
    assert names(p.awaited_frames) == ["sleep"]
    assert isinstance(p.waiting_on, asyncio.Future)
    assert p.loop is gloop

    q = stacks["plain"]
    assert q.state == "waiting"
    assert names(q.frames) == ["plain_waiter", "sleep"]
    assert names(q.awaited_frames) == []

    running = stacks[me.get_name()]
    assert running.state == "running"
    assert names(running.frames)[-1] == "main"


def test_dump_text(gloop):
    out = io.StringIO()

    async def main():
        parked = greenhub.spawn(level1)
        parked.set_name("sync-vthread")
        await asyncio.sleep(0.01)
        greenhub.dump_tasks(out)
        parked.cancel()
        await asyncio.gather(parked, return_exceptions=True)

    gloop.run_until_complete(main())
    text = out.getvalue()
    assert text.startswith("greenhub: 2 task(s) on <Loop running=True")
    assert "Task 'sync-vthread' (waiting in await_()):" in text
    body = text[text.index("Task 'sync-vthread'") :]
    # the three sync frames in order, then the await_ boundary, then the awaitable
    i1, i2, i3 = (body.index(f"in level{n}\n") for n in (1, 2, 3))
    assert i1 < i2 < i3 < body.index("-- greenhub.await_() is waiting for") < body.index("in sleep")
    assert "waiting on <Future pending" in body


def test_dump_outside_any_loop_shows_every_live_loop(gloop):
    # Called with no loop running: every open greenhub loop (here one, not running,
    # with one parked virtual thread).
    async def start():
        return greenhub.spawn(level1)

    task = gloop.run_until_complete(start())
    gloop.run_until_complete(asyncio.sleep(0.01))
    stacks = [ts for ts in greenhub.task_stacks() if ts.loop is gloop]
    assert [ts.state for ts in stacks] == ["waiting in await_()"]
    assert names(stacks[0].frames)[-3:] == ["level1", "level2", "level3"]
    out = io.StringIO()
    greenhub.dump_tasks(out, loop=gloop)
    assert "in level3" in out.getvalue()
    task.cancel()
    gloop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    assert greenhub.task_stacks(gloop) == []


def test_done_tasks_and_closed_loops(gloop):
    async def quick():
        return 1

    async def main():
        t = asyncio.create_task(quick(), name="quick")
        await t
        return t

    gloop.run_until_complete(main())
    gloop.close()
    assert all(ts.loop is not gloop for ts in greenhub.task_stacks())
    out = io.StringIO()
    greenhub.dump_tasks(out, loop=gloop)
    assert out.getvalue() == "greenhub: no open greenhub loop\n"


def test_loop_registry_does_not_keep_loops_alive(greenhub_leak_check):
    import gc
    import weakref

    lp = greenhub.new_event_loop()
    ref = weakref.ref(lp)
    lp.close()
    del lp
    gc.collect()
    assert ref() is None


def test_bad_input(gloop):
    with pytest.raises(TypeError, match="needs a greenhub loop"):
        greenhub.task_stacks(loop=object())
    with pytest.raises(TypeError, match="needs a greenhub loop"):
        greenhub.dump_tasks(loop=3)
    with pytest.raises(TypeError, match="signal number must be an int"):
        greenhub.enable_dump_on_signal("USR1")
    with pytest.raises(TypeError, match="write"):
        greenhub.enable_dump_on_signal(signal.SIGUSR1, file=3)
    assert greenhub.disable_dump_on_signal(signal.SIGUSR2) is False


def test_enable_and_disable_restore_the_handler():
    def mine(signum, frame):
        pass

    old = signal.signal(signal.SIGUSR1, mine)
    try:
        greenhub.enable_dump_on_signal(signal.SIGUSR1, file=io.StringIO())
        assert signal.getsignal(signal.SIGUSR1) is not mine
        greenhub.enable_dump_on_signal(signal.SIGUSR1)  # again: still restores `mine`
        assert greenhub.disable_dump_on_signal(signal.SIGUSR1) is True
        assert signal.getsignal(signal.SIGUSR1) is mine
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_signal_dump_while_idle_and_while_blocked():
    # In a child process: SIGUSR1 while the loop waits in its poll (the signal ends the
    # poll), and while a task blocks the loop in time.sleep (interrupted, the handler
    # runs, the sleep goes on): both dumps show the parked virtual thread's sync frames;
    # the second also shows the blocking task's stack.
    body = """
    import os, threading, time
    greenhub.enable_dump_on_signal(signal.SIGUSR1)
    def level3():
        return greenhub.await_(asyncio.sleep(30))
    def level2():
        return level3()
    def level1():
        return level2()
    def blocking_sync_code():
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.2)
    async def main():
        parked = greenhub.spawn(level1)
        parked.set_name("parked")
        # from another thread while the loop waits in its poll
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        await asyncio.sleep(0.3)
        sys.stderr.write("=== blocked ===\\n")
        blocking_sync_code()
        parked.cancel()
        await asyncio.gather(parked, return_exceptions=True)
    greenhub.run(main())
    say("done")
    """
    rc, out, err = run_child(body)
    assert rc == 0, err
    assert out.strip() == "done"
    idle, blocked = err.split("=== blocked ===\n")
    for text in (idle, blocked):
        assert "Task 'parked' (waiting in await_()):" in text
        assert text.index("in level1") < text.index("in level2") < text.index("in level3")
    assert "Task 'Task-1' (waiting)" in idle
    assert "Task 'Task-1' (running)" in blocked
    assert "in blocking_sync_code" in blocked


def test_failing_signal_dump_does_not_raise_into_the_program(capfd):
    class Broken:
        def write(self, text):
            raise OSError("disk full")

        def flush(self):
            pass

    old = signal.getsignal(signal.SIGUSR1)
    greenhub.enable_dump_on_signal(signal.SIGUSR1, file=Broken())
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(10):  # the handler runs between these bytecodes
            time.sleep(0.001)
    finally:
        assert greenhub.disable_dump_on_signal(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) is old
    err = capfd.readouterr().err
    assert f"greenhub: task dump on signal {int(signal.SIGUSR1)} failed: OSError('disk full')" in err


def test_dump_of_a_loop_running_in_another_thread(greenhub_leak_check):
    # From the main thread, with the loop running in another: the parked virtual
    # thread's sync frames, and the running task's current stack (it blocks the loop).
    import threading

    blocking = threading.Event()
    release = threading.Event()
    box = {}

    def blocks_its_loop():
        blocking.set()
        release.wait(10)

    async def main():
        parked = greenhub.spawn(level1)
        parked.set_name("parked")
        await asyncio.sleep(0.01)
        blocks_its_loop()
        parked.cancel()
        await asyncio.gather(parked, return_exceptions=True)

    def run_loop():
        loop = greenhub.new_event_loop()
        box["loop"] = loop
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    t = threading.Thread(target=run_loop)
    t.start()
    try:
        assert blocking.wait(10)
        stacks = {ts.name: ts for ts in greenhub.task_stacks(box["loop"])}
    finally:
        release.set()
        t.join(10)
    assert names(stacks["parked"].frames)[-3:] == ["level1", "level2", "level3"]
    (running,) = [ts for ts in stacks.values() if ts.state == "running"]
    frames = names(running.frames)
    assert frames.index("main") + 1 == frames.index("blocks_its_loop")  # then Event.wait


def test_debug_tools_example_runs():
    import subprocess
    import sys

    from vthread_helpers import REPO, child_env

    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "debug_tools.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
        cwd=str(REPO),
    )
    assert proc.returncode == 0, proc.stderr
    assert "refused: greenhub.await_() would switch" in proc.stdout
    err = proc.stderr
    assert "greenhub.switches: task 'page-fetcher' suspends" in err
    assert "blocked the event loop" in err and "in legacy_report" in err
    assert "Task 'page-fetcher' (waiting in await_()):" in err
    assert "in fetch_page" in err
