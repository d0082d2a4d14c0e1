"""A user's pytest-asyncio test suite running on greenhub (docs/recipe-pytest-asyncio.md).

Each test writes a small test project - the conftest.py the recipe shows and test
modules of the kinds users write (marked and auto-mode async tests, async fixtures,
module-scoped loops, sync code calling greenhub.await_) - and runs pytest on it in a
child process, as a user would, then checks the child's outcome line.  The project is run
with greenhub and with the stock loop chosen the same way, so the recipe's mechanism is
shown to pick the loop rather than assumed to.
"""

import os
import re
import subprocess
import sys
import textwrap

import pytest

pytest_asyncio = pytest.importorskip("pytest_asyncio", reason="make deps installs it")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The recipe: a conftest.py hook (pytest-asyncio 1.4+) naming the loop factory.
HOOK_CONFTEST = """
import asyncio
import os

import greenhub


def pytest_asyncio_loop_factories(config, item):
    if os.environ["INNER_LOOP"] == "greenhub":
        return {"greenhub": greenhub.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}
"""

# Older pytest-asyncio (0.23 - 1.3): override the event_loop_policy fixture.  1.4+ still
# honours it, with a deprecation warning.
POLICY_CONFTEST = """
import asyncio
import os

import greenhub
import pytest


@pytest.fixture(scope="session")
def event_loop_policy():
    if os.environ["INNER_LOOP"] == "greenhub":
        return greenhub.Policy()
    return asyncio.DefaultEventLoopPolicy()
"""

USER_TESTS = """
import asyncio
import os

import pytest
import pytest_asyncio

EXPECTED = "greenhub" if os.environ["INNER_LOOP"] == "greenhub" else "asyncio"


def loop_module():
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@pytest_asyncio.fixture
async def server():
    async def handle(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared_loop_state():
    return {"loop": asyncio.get_running_loop()}


@pytest.mark.asyncio
async def test_runs_on_the_chosen_loop():
    assert loop_module() == EXPECTED


@pytest.mark.asyncio
async def test_async_fixture_serves_on_the_same_loop(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"hello\\n")
    assert await reader.readline() == b"HELLO\\n"
    writer.close()
    await writer.wait_closed()


@pytest.mark.asyncio(loop_scope="module")
async def test_module_scoped_loop_a(shared_loop_state):
    assert asyncio.get_running_loop() is shared_loop_state["loop"]
    assert loop_module() == EXPECTED


@pytest.mark.asyncio(loop_scope="module")
async def test_module_scoped_loop_b(shared_loop_state):
    assert asyncio.get_running_loop() is shared_loop_state["loop"]


@pytest.mark.asyncio
async def test_task_group_and_timeout():
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(asyncio.sleep(0.01, result=i)) for i in range(10)]
    assert [t.result() for t in tasks] == list(range(10))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(10)
"""

# Sync code awaiting through greenhub inside a test: greenhub only.
AWAIT_TESTS = """
import asyncio

import greenhub
import pytest


def sync_helper(n):
    return greenhub.await_(asyncio.sleep(0.01, result=n * 2))


@pytest.mark.asyncio
async def test_sync_code_awaits():
    results = await asyncio.gather(*(asyncio.to_thread(int, 1) for _ in range(2)))
    assert results == [1, 1]
    assert [sync_helper(i) for i in range(3)] == [0, 2, 4]
"""

AUTO_MODE_TESTS = """
import asyncio
import os


async def test_unmarked_test_runs_in_auto_mode():
    expected = "greenhub" if os.environ["INNER_LOOP"] == "greenhub" else "asyncio"
    assert type(asyncio.get_running_loop()).__module__.split(".")[0] == expected
"""


def run_inner(tmp_path, files, kind, *args):
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    env = dict(os.environ)
    env["INNER_LOOP"] = kind
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTEST_ADDOPTS", None)
    # Only pytest-asyncio is loaded: other installed plugins would slow every start-up.
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "pytest_asyncio.plugin",
           "-p", "no:cacheprovider", "-W", "error",
           "-o", "asyncio_default_fixture_loop_scope=function", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return proc.returncode, summary, proc.stdout + proc.stderr


def counts(summary):
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}


@pytest.mark.parametrize("kind", ["asyncio", "greenhub"])
def test_loop_factories_hook(tmp_path, kind):
    files = {"conftest.py": HOOK_CONFTEST, "test_user.py": USER_TESTS}
    if kind == "greenhub":
        files["test_await.py"] = AWAIT_TESTS
    rc, summary, out = run_inner(tmp_path, files, kind)
    assert rc == 0, out
    assert counts(summary) == {"passed": 5 + (kind == "greenhub")}, out


@pytest.mark.parametrize("kind", ["asyncio", "greenhub"])
def test_auto_mode(tmp_path, kind):
    files = {"conftest.py": HOOK_CONFTEST, "test_auto.py": AUTO_MODE_TESTS}
    rc, summary, out = run_inner(tmp_path, files, kind, "-o", "asyncio_mode=auto")
    assert rc == 0, out
    assert counts(summary) == {"passed": 1}, out


@pytest.mark.parametrize("kind", ["asyncio", "greenhub"])
def test_event_loop_policy_fixture(tmp_path, kind):
    files = {"conftest.py": POLICY_CONFTEST, "test_user.py": USER_TESTS}
    # pytest-asyncio 1.4+ deprecates overriding the fixture; the warning is expected.  So
    # are, on Python 3.14+, the DeprecationWarnings of asyncio's policy API, which this
    # older recipe uses (asyncio.DefaultEventLoopPolicy, greenhub.Policy).
    ignore = ["-W", "ignore::pytest.PytestDeprecationWarning"]
    if sys.version_info >= (3, 14):
        ignore += ["-W", "ignore::DeprecationWarning"]
    rc, summary, out = run_inner(tmp_path, files, kind, *ignore)
    assert rc == 0, out
    assert counts(summary) == {"passed": 5}, out


def test_a_failing_user_test_fails(tmp_path):
    # The inner runs above can only pass if the checks inside them run: a test expecting
    # the wrong loop must fail.
    files = {"conftest.py": HOOK_CONFTEST, "test_user.py": USER_TESTS}
    rc, summary, out = run_inner(tmp_path, files, "greenhub", "-k", "chosen_loop")
    assert rc == 0, out
    (tmp_path / "test_user.py").write_text(
        textwrap.dedent(USER_TESTS).replace('EXPECTED = "greenhub" if', 'EXPECTED = "x" if')
    )
    rc, summary, out = run_inner(tmp_path, {}, "greenhub", "-k", "chosen_loop")
    assert rc == 1 and counts(summary).get("failed") == 1, out
