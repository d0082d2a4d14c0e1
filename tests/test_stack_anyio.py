"""anyio's asyncio backend on greenhub, on both loops.

anyio runs its asyncio backend on the loop a ``loop_factory`` backend option builds
(docs/recipe-anyio.md), so each test hands it the ``loop_factory`` fixture: the same
program runs on the stock loop and on greenhub.  Task groups, cancel scopes, memory
object streams, worker threads and sockets are the parts of anyio that lean on the loop;
the last tests mix anyio with greenhub's ``await_`` from sync code.
"""

import socket
import threading

import pytest
import support

anyio = pytest.importorskip("anyio", reason="test dependency: make deps installs it")


def run(loop_factory, fn, *args):
    return anyio.run(fn, *args, backend="asyncio", backend_options={"loop_factory": loop_factory})


def test_runs_on_the_loop_the_factory_builds(loop_factory):
    async def main():
        import asyncio

        return type(asyncio.get_running_loop()).__module__

    module = run(loop_factory, main)
    assert module.startswith("greenhub" if loop_factory.kind == "greenhub" else "asyncio")


def test_task_group_failure_cancels_the_siblings(loop_factory):
    async def main():
        cancelled = []

        async def sleeper(i):
            try:
                await anyio.sleep(30)
            except anyio.get_cancelled_exc_class():
                cancelled.append(i)
                raise

        async def failer():
            await anyio.sleep(0.01)
            raise ValueError("boom")

        with pytest.raises(ExceptionGroup) as info:
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(sleeper, i)
                tg.start_soon(failer)
        return sorted(cancelled), [type(e) for e in info.value.exceptions]

    assert run(loop_factory, main) == ([0, 1, 2, 3, 4], [ValueError])


def test_cancel_scopes_deadlines_and_shielding(loop_factory):
    async def main():
        events = []
        with anyio.move_on_after(0.02) as scope:
            await anyio.sleep(30)
        events.append(("moved on", scope.cancelled_caught))

        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.02):
                await anyio.sleep(30)
        events.append("failed after")

        with anyio.CancelScope() as outer:
            outer.cancel()
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # the shield keeps the cancellation out
                events.append("shielded")
            await anyio.sleep(30)
        events.append(("outer", outer.cancelled_caught))

        async def started_child(*, task_status=anyio.TASK_STATUS_IGNORED):
            task_status.started("ready")
            await anyio.sleep(30)

        async with anyio.create_task_group() as tg:
            events.append(await tg.start(started_child))
            tg.cancel_scope.cancel()
        return events

    assert run(loop_factory, main) == [
        ("moved on", True),
        "failed after",
        "shielded",
        ("outer", True),
        "ready",
    ]


def test_memory_object_streams_between_tasks(loop_factory):
    async def main():
        send, receive = anyio.create_memory_object_stream[int](max_buffer_size=4)
        got = []

        async def producer():
            async with send:
                for i in range(200):
                    await send.send(i)  # waits whenever the buffer is full

        async def consumer():
            async with receive:
                async for item in receive:
                    got.append(item)

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            tg.start_soon(consumer)
        return got

    assert run(loop_factory, main) == list(range(200))


def test_to_thread_and_back_with_from_thread(loop_factory):
    async def main():
        loop_thread = threading.get_ident()

        async def on_loop(x):
            await anyio.sleep(0)
            return x * 2, threading.get_ident() == loop_thread

        def in_worker(x):
            assert threading.get_ident() != loop_thread
            return anyio.from_thread.run(on_loop, x)

        results = []
        async with anyio.create_task_group() as tg:

            async def one(x):
                results.append(await anyio.to_thread.run_sync(in_worker, x))

            for x in range(8):
                tg.start_soon(one, x)
        return sorted(results)

    assert run(loop_factory, main) == [(x * 2, True) for x in range(8)]


def test_tcp_and_udp_sockets(loop_factory):
    async def main():
        async def echo(stream):
            async with stream:
                async for chunk in stream:
                    await stream.send(chunk.upper())

        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, echo)
                replies = []
                async with await anyio.connect_tcp("127.0.0.1", port) as client:
                    for word in (b"abc", b"x" * 200_000):
                        await client.send(word)
                        got = b""
                        while len(got) < len(word):
                            got += await client.receive()
                        replies.append(got)
                tg.cancel_scope.cancel()

        async with await anyio.create_udp_socket(
            family=socket.AF_INET, local_host="127.0.0.1"
        ) as server, await anyio.create_connected_udp_socket(
            "127.0.0.1", server.extra(anyio.abc.SocketAttribute.local_port)
        ) as client:
            await client.send(b"ping")
            data, addr = await server.receive()
            await server.sendto(data.upper(), *addr)
            replies.append(await client.receive())
        return replies

    assert run(loop_factory, main) == [b"ABC", b"X" * 200_000, b"PING"]


def test_sync_code_awaits_inside_anyio_tasks(greenhub_leak_check):
    # greenhub's own point (so greenhub only): anyio tasks are greenhub tasks, so sync
    # code they call can wait with greenhub.await_ (only its own task waits), and a
    # cancel scope reaches a wait made from sync code.
    import greenhub

    waiting = support.Overlap()

    def fetch(i):  # plain sync code, e.g. a library's blocking API
        with waiting:
            greenhub.await_(anyio.sleep(0.1))
        return i

    def blocked_forever():
        greenhub.await_(anyio.sleep(3600))

    async def main():
        results = []
        async with anyio.create_task_group() as tg:

            async def one(i):
                results.append(fetch(i))

            for i in range(20):
                tg.start_soon(one, i)

        with anyio.move_on_after(0.02) as scope:
            blocked_forever()
        return sorted(results), scope.cancelled_caught

    results, caught = run(greenhub.new_event_loop, main)
    assert results == list(range(20))
    assert waiting.peak == 20  # the 20 waits overlapped; one after another: 1
    assert caught


ANYIO_CONFTEST = """
import greenhub
import pytest


@pytest.fixture
def anyio_backend():
    return "asyncio", {"loop_factory": greenhub.new_event_loop}
"""

ANYIO_USER_TESTS = """
import asyncio

import anyio
import greenhub
import pytest


@pytest.mark.anyio
async def test_on_greenhub():
    assert isinstance(asyncio.get_running_loop(), greenhub.Loop)
    with anyio.fail_after(5):
        assert greenhub.await_(asyncio.sleep(0, result=7)) == 7
"""


def test_anyio_pytest_plugin_with_greenhub_backend(tmp_path):
    # docs/recipe-anyio.md: a user's anyio-marked tests, in an inner pytest process, run
    # on greenhub through the anyio_backend fixture.
    import os
    import subprocess
    import sys

    (tmp_path / "conftest.py").write_text(ANYIO_CONFTEST)
    (tmp_path / "test_user.py").write_text(ANYIO_USER_TESTS)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "anyio", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("1 passed"), proc.stdout
