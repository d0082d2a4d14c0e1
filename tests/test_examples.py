"""The example programs in examples/ run and print what their docstrings promise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_example(name, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / name)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_sync_primitives_example():
    out = run_example("sync_primitives.py")
    assert out.count("finished job") == 20
    assert "jobs per worker: [" in out


def test_green_echo_example():
    out = run_example("green_echo.py")
    assert "50 clients echoed 10000 lines" in out


@pytest.mark.timeout(120)
def test_demo():
    assert run_example("demo.py", timeout=110).strip()


def test_flask_wsgi_example():
    pytest.importorskip("flask", reason="test dependency: make deps installs it")
    out = run_example("flask_wsgi.py")
    # How long it took is the example's to show, not the test's to assert.
    assert "20 requests answered in" in out
    assert "by 1 OS thread, each in a virtual thread of a greenhub loop: True" in out


def test_chat_server_example():
    out = run_example("chat_server.py")
    assert "5 bots exchanged 60 lines" in out
    assert "the idle one was told: * idle too long, bye" in out
