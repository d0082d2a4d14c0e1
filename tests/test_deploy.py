"""Deployment as docs/guide-deploy.md shows it: real uvicorn, gunicorn and hypercorn
processes serving a Flask app (through greenhub.contrib.wsgi) and a plain ASGI app.

Each server is started as a user would start it, on an ephemeral port (read back from
its log), with a timeout, and stopped at the end.  The applications report from inside
each request which loop runs it and whether it is a virtual thread; slow Flask requests
wait in the server until all of them wait together, so they overlap in one worker
process - none of this is timed.
"""

import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
import support

httpx = pytest.importorskip("httpx", reason="test dependency: make deps installs it")
pytest.importorskip("flask", reason="test dependency: make deps installs it")
pytest.importorskip("uvicorn", reason="test dependency: make deps installs it")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATIENCE = support.hang_timeout(30)

APP_MODULE = """
import asyncio
import json
import os

import greenhub
from flask import Flask
from greenhub import _core
from greenhub.contrib.wsgi import WSGIMiddleware

if os.environ.get("DEPLOY_TEST_INSTALL"):
    greenhub.install()  # what docs/guide-deploy.md has hypercorn users do


def where():
    loop = asyncio.get_running_loop()
    return {"loop": type(loop).__module__.split(".")[0], "vthread": _core.in_vthread(),
            "pid": os.getpid()}


class Gathering:
    # Returns once `parties` requests wait here at the same time (else gives up).
    def __init__(self, parties):
        self.parties, self.arrived, self.event = parties, 0, None

    async def wait(self):
        if self.event is None:
            self.event = asyncio.Event()
        self.arrived += 1
        if self.arrived >= self.parties:
            self.event.set()
        try:
            await asyncio.wait_for(self.event.wait(), PATIENCE)
        except asyncio.TimeoutError:
            return f"only {self.arrived} requests ever waited together"
        return self.arrived


PATIENCE = float(os.environ["DEPLOY_TEST_PATIENCE"])
GATHERING = Gathering(5)
flask_app = Flask(__name__)


@flask_app.get("/where")
def flask_where():
    return where()


@flask_app.get("/slow/<int:n>")
def flask_slow(n):
    # Plain sync code that waits (a query, an API call): a virtual thread's wait.
    arrived = greenhub.await_(GATHERING.wait())
    return {"n": n, "arrived": arrived, **where()}


wsgi_app = WSGIMiddleware(flask_app)


async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = json.dumps(where()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


def gunicorn_command(app):
    import gunicorn.config

    cmd = [sys.executable, "-m", "gunicorn", "-k", "greenhub.contrib.gunicorn.Worker",
           "-w", "1", "-b", "127.0.0.1:0"]
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        cmd.append("--no-control-socket")  # gunicorn 25+: else a fixed path in $HOME
    return cmd + [f"deployapp:{app}"]


def command(server, app):
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--loop", "greenhub:new_event_loop",
                "--host", "127.0.0.1", "--port", "0", f"deployapp:{app}"], {}
    if server == "gunicorn":
        pytest.importorskip("gunicorn", reason="test dependency: make deps installs it")
        return gunicorn_command(app), {}
    pytest.importorskip("hypercorn", reason="test dependency: make deps installs it")
    return [sys.executable, "-m", "hypercorn", "-b", "127.0.0.1:0", f"deployapp:{app}"], {
        "DEPLOY_TEST_INSTALL": "1"
    }


class ServerProcess:
    """A server started as a subprocess; its port is read from what it logs."""

    PORT = re.compile(r"(?:running on|listening at:) http://127\.0\.0\.1:(\d+)", re.I)

    def __init__(self, cmd, cwd, env):
        env = dict(os.environ, **env, DEPLOY_TEST_PATIENCE=str(PATIENCE))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines = []
        self.ports = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = self.PORT.search(line)
            if m:
                self.ports.put(int(m.group(1)))
        self.ports.put(None)  # the server exited

    def port(self):
        try:
            port = self.ports.get(timeout=PATIENCE)
        except queue.Empty:
            port = None
        assert port is not None, "the server did not start:\n" + "".join(self.lines)
        return port

    def stop(self):
        if self.proc.poll() is None:
            # SIGTERM: gunicorn's and hypercorn's graceful stop; uvicorn's too.  The
            # whole session, so that gunicorn's and hypercorn's workers go with them.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(PATIENCE)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(PATIENCE)
        self.reader.join(PATIENCE)
        return "".join(self.lines)


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "deployapp.py").write_text(textwrap.dedent(APP_MODULE))
    return tmp_path


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn", "hypercorn"])
@pytest.mark.parametrize("app", ["wsgi_app", "asgi_app"])
def test_server_runs_requests_in_virtual_threads_on_greenhub(server, app, app_dir):
    cmd, env = command(server, app)
    srv = ServerProcess(cmd, app_dir, env)
    try:
        base = f"http://127.0.0.1:{srv.port()}"
        with httpx.Client(base_url=base, timeout=PATIENCE) as c:
            here = c.get("/where").json()
        slow = None
        if app == "wsgi_app":

            async def five_at_once():
                async with httpx.AsyncClient(base_url=base, timeout=PATIENCE) as c:
                    return await asyncio.gather(*(c.get(f"/slow/{i}") for i in range(5)))

            slow = [r.json() for r in asyncio.run(five_at_once())]
    finally:
        log = srv.stop()
    assert here["loop"] == "greenhub" and here["vthread"] is True, log
    if slow is not None:
        # Five slow sync views waited together, in one process, each a virtual thread.
        assert [s["arrived"] for s in slow] == [5] * 5, slow
        assert {s["pid"] for s in slow} == {here["pid"]}
        assert all(s["loop"] == "greenhub" and s["vthread"] for s in slow)
    assert "Traceback" not in log, log


def test_hypercorn_without_greenhub_install_gets_a_clear_error(app_dir):
    # Hypercorn's asyncio worker makes its loop through asyncio's policy: without
    # greenhub.install() the loop is the stock one, and the WSGI adapter says so
    # instead of falling back to a thread pool.
    pytest.importorskip("hypercorn", reason="test dependency: make deps installs it")
    cmd = [sys.executable, "-m", "hypercorn", "-b", "127.0.0.1:0", "deployapp:wsgi_app"]
    srv = ServerProcess(cmd, app_dir, {})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{srv.port()}", timeout=PATIENCE) as c:
            status = c.get("/where").status_code
    finally:
        log = srv.stop()
    assert status == 500
    assert "need a greenhub event loop" in log, log


@pytest.mark.parametrize(
    "setting, on_greenhub",
    [("greenhub:new_event_loop", True), ("auto", False), ("asyncio", False), ("none", True)],
)
def test_uvicorn_loop_settings_with_greenhub_install(setting, on_greenhub, greenhub_leak_check):
    # docs/guide-deploy.md's table: with greenhub's policy installed, uvicorn's "auto" and
    # "asyncio" still make their own loops (they pass a loop factory); "none" leaves it
    # to the policy; greenhub's factory works whatever the policy.
    import uvicorn

    import greenhub

    greenhub.install()  # (conftest restores the default policy afterwards)
    factory = uvicorn.Config(app=None, loop=setting).get_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, greenhub.Loop) is on_greenhub, type(loop)
