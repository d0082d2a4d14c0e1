"""greenhub.await_() typed at a pdb prompt inside a task.

A child process runs a program that stops at ``breakpoint()`` - once in sync code in a
virtual thread, once in an ``async def`` coroutine - and pdb reads its commands from
the child's stdin.  At each prompt ``p greenhub.await_(...)`` must run the loop until
the value is ready and print it, the background task must have advanced meanwhile,
and after ``c`` each task must carry on and finish normally.  The stock loop has no
equivalent (``await`` is a syntax error at the prompt; asyncio.run() inside a running
loop raises), so there is no asyncio variant of these tests.
"""

import re
import subprocess
import sys
import textwrap

import pytest
from vthread_helpers import REPO, child_env

pytestmark = pytest.mark.timeout(60)

PROGRAM = """\
import asyncio, greenhub

counter = 0

async def background():
    global counter
    while True:
        counter += 1
        await asyncio.sleep(0.001)

async def fetch(n):
    await asyncio.sleep(0.05)
    return {"id": n}

def sync_code(x):
    total = x * 2
    breakpoint()
    return total + 1

async def async_code():
    y = 7
    breakpoint()
    return y * 3

async def main():
    bg = asyncio.create_task(background())
    a = await greenhub.spawn(sync_code, 10)
    b = await async_code()
    bg.cancel()
    print("results", a, b, flush=True)

greenhub.run(main())
"""

COMMANDS = """\
p ("before", counter)
p greenhub.await_(asyncio.sleep(0.2, result=42))
p ("after", counter)
p total, greenhub.await_(fetch(total))
c
p ("before", counter)
p y + greenhub.await_(fetch(1))["id"]
p ("after", counter)
c
"""


def run_under_pdb(tmp_path, program, commands):
    script = tmp_path / "prog.py"
    script.write_text(program)
    env = child_env()
    env.pop("PYTHONBREAKPOINT", None)
    proc = subprocess.run(
        [sys.executable, str(script)],
        input=commands,
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=30,
    )
    return proc.returncode, proc.stdout, proc.stderr


def test_await_at_the_pdb_prompt_runs_the_loop_and_prints_the_value(tmp_path):
    rc, out, err = run_under_pdb(tmp_path, PROGRAM, COMMANDS)
    assert rc == 0, out + err
    counts = [int(n) for n in re.findall(r"\('(?:before|after)', (\d+)\)", out)]
    assert len(counts) == 4, out
    # in sync code in a virtual thread
    assert "(Pdb) 42\n" in out
    assert "(Pdb) (20, {'id': 20})\n" in out
    assert counts[1] > counts[0], out  # the background task ran during the await_
    # in an async def coroutine (a task, so a virtual thread too)
    assert "(Pdb) 8\n" in out
    assert counts[3] > counts[2], out
    # `c` resumed both tasks, which finished normally
    assert out.rstrip().endswith("results 21 21"), out
    assert "***" not in out, out  # pdb reported no error


def test_await_at_a_prompt_outside_any_task_is_a_clear_error(tmp_path):
    program = textwrap.dedent(
        """\
        import asyncio, greenhub

        def callback(fut):
            breakpoint()
            fut.set_result("callback done")

        async def main():
            fut = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(callback, fut)
            print(await fut, flush=True)

        greenhub.run(main())
        """
    )
    commands = "p greenhub.await_(asyncio.sleep(0, 1))\nc\n"
    rc, out, err = run_under_pdb(tmp_path, program, commands)
    assert rc == 0, out + err
    assert "*** RuntimeError: greenhub.await_() called outside a task" in out, out
    assert out.rstrip().endswith("callback done"), out
