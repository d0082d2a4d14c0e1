"""Every Python sample in the docs runs, and the output the docs show is what it prints.

Each ```python block of docs/*.md and README.md runs as a script in a fresh interpreter
(in a temporary directory, with this suite's greenhub importable) and must exit 0.  An
HTML comment right before a block says more, and is invisible on the rendered page:

    <!-- test: prelude
    import asyncio, greenhub
    async def fetch_user(uid): ...
    -->
        code run before the block (what a fragment takes for granted);
    <!-- test: continues -->
        the block runs after the page's previous sample (and its prelude), as one script;
    <!-- test: file NAME -->
        the block is a file of a sample project: it is written as NAME in the directory
        the page's later samples run in, and not run itself;
    <!-- test: hidden-file NAME
    ...
    -->
        anywhere on the page, not before a block: a file of the sample project that the
        page does not show (a settings module), written for the samples after it;
    <!-- test: server PORT -->
        the block is a server: it runs in the background while the page's next sample
        runs (once PORT accepts connections), must still be running then, and is stopped;
    <!-- test: stdin
    p ticks
    c
    -->
        the lines after `stdin` are the block's standard input (a pdb session);
    <!-- test: postgres -->
        the block gets DATABASE_URL: the PostgreSQL server the database tests use
        (GREENHUB_TEST_PG_DSN), with their rules for when there is none;
    <!-- test: redis -->
        the block gets REDIS_URL: a throwaway redis-server on loopback;
    <!-- test: output -->  (before a ```text block that follows a sample)
        the sample's standard output, where `...` matches anything within a line and a
        line that is only `...` matches any number of lines;
    <!-- test: stderr -->  (the same, for what it writes to standard error)

Directives combine: `<!-- test: continues postgres -->`.
"""

import contextlib
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import greenhub

ROOT = Path(__file__).resolve().parent.parent
GREENHUB_ROOT = Path(greenhub.__file__).resolve().parent.parent

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_DIRECTIVE = re.compile(r"<!--\s*test:\s*(.*?)-->\s*$", re.S)


@dataclass
class Sample:
    page: str
    line: int
    code: str
    prelude: str = ""
    continues: bool = False
    file: str | None = None
    server: int | None = None
    postgres: bool = False
    redis: bool = False
    output: str | None = None
    stderr: str | None = None
    stdin: str | None = None
    previous: "Sample | None" = None
    files: list = field(default_factory=list)
    servers: list = field(default_factory=list)

    @property
    def id(self):
        return f"{self.page}:{self.line}"

    def script(self):
        parts = []
        if self.continues and self.previous is not None:
            parts.append(self.previous.script())
        if self.prelude:
            parts.append(self.prelude)
        parts.append(self.code)
        return "\n".join(parts)

    def _needs(self, what):
        chain = [self, *self.servers]
        if self.continues and self.previous is not None:
            return (
                getattr(self, what)
                or self.previous._needs(what)
                or any(getattr(s, what) for s in self.servers)
            )
        return any(getattr(s, what) for s in chain)

    @property
    def needs_postgres(self):
        return self._needs("postgres")

    @property
    def needs_redis(self):
        return self._needs("redis")


def _directive(text_before):
    """The directive comment that ends `text_before` (only blank lines after it)."""
    text = text_before.rstrip()
    if not text.endswith("-->"):
        return None
    m = _DIRECTIVE.match(text[text.rfind("<!--") :])
    return m.group(1) if m else None


def _parse(directive):
    head, _, body = directive.partition("\n")
    words = head.split()
    opts = {"prelude": "", "continues": False, "file": None, "postgres": False}
    opts.update(server=None, redis=False)
    i = 0
    while i < len(words):
        w = words[i]
        if w == "prelude":
            opts["prelude"] = body
        elif w == "stdin":
            opts["stdin"] = body
        elif w == "continues":
            opts["continues"] = True
        elif w == "postgres":
            opts["postgres"] = True
        elif w == "redis":
            opts["redis"] = True
        elif w == "server":
            i += 1
            opts["server"] = int(words[i])
        elif w == "file":
            i += 1
            opts["file"] = words[i]
        elif w in ("output", "stderr"):
            opts[w] = True
        else:
            raise ValueError(f"unknown docs test directive {w!r}")
        i += 1
    return opts


FILES = []  # every `file` sample (with its page), for test_docs_files_compile


def samples_of(path):
    text = path.read_text()
    page = str(path.relative_to(ROOT))
    out, previous, files, servers = [], None, [], []
    pending = None  # the last sample, waiting for an output block
    hidden = [
        (m.start(), m.group(1), m.group(2))
        for m in re.finditer(r"<!--\s*test:\s*hidden-file\s+(\S+)\n(.*?)-->", text, re.S)
    ]
    pos = 0
    for m in _FENCE.finditer(text):
        lang, code = m.group(1), m.group(2)
        before = text[pos : m.start()]
        pos = m.end()
        for start, name, content in hidden:
            if start < m.start() and not any(f.file == name for f in files):
                files.append(Sample(page, 0, content, file=name))
        directive = _directive(before)
        if directive and directive.startswith("hidden-file"):
            directive = None
        opts = _parse(directive) if directive else {}
        if lang == "text" and (opts.get("output") or opts.get("stderr")):
            if pending is None:
                raise ValueError(f"{page}: an output block with no sample before it")
            if opts.get("output"):
                pending.output = code
            else:
                pending.stderr = code
            continue
        if lang != "python":
            continue
        line = text.count("\n", 0, m.start()) + 2
        sample = Sample(
            page,
            line,
            code,
            prelude=opts.get("prelude", ""),
            continues=opts.get("continues", False),
            file=opts.get("file"),
            server=opts.get("server"),
            postgres=opts.get("postgres", False),
            redis=opts.get("redis", False),
            stdin=opts.get("stdin"),
            previous=previous,
            files=list(files),
        )
        if sample.file:
            files.append(sample)
            FILES.append(sample)
            continue
        if sample.server:
            servers.append(sample)
            continue
        sample.servers, servers = servers, []
        out.append(sample)
        previous = pending = sample
    if servers:
        raise ValueError(f"{page}: a server sample with no sample after it to run against")
    return out


def _pages():
    pages = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    return [p for p in pages if p.exists()]


SAMPLES = [s for page in _pages() for s in samples_of(page)]


def _matches(expected, actual):
    """`expected` with `...` wildcards against `actual`, line by line."""
    pattern = []
    for line in expected.rstrip("\n").split("\n"):
        if line.strip() == "...":
            pattern.append(r"(?:.*\n)*?")
        else:
            parts = [re.escape(p) for p in line.rstrip().split("...")]
            pattern.append("[^\n]*".join(parts) + r"[ \t]*\n")
    return re.fullmatch("".join(pattern), actual.rstrip("\n") + "\n") is not None


@pytest.mark.parametrize("sample", [f for f in FILES if f.file.endswith(".py")], ids=lambda s: s.id)
def test_docs_files_compile(sample):
    # A sample project's file is imported by the samples after it; one that nothing
    # imports (a setup.py) is at least valid Python.
    compile(sample.code, sample.file, "exec")


def test_the_docs_have_samples():
    # The parser found the samples (a broken fence pattern would find none).
    assert len(SAMPLES) > 20
    assert any(s.page == "README.md" for s in SAMPLES)


def _wait_listening(port, proc, deadline):
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.05)
    return False


# The docs show fixed ports (8000, 8080) on loopback.  CI runs two pytest processes at
# once (the host's Python and the sid chroot's, which share the network and this
# checkout), so a sample that listens on or connects to one of them holds this lock, a
# file in the checkout that both see, for as long as it runs.
_NET_LOCK = ROOT / "build" / "docs-samples-ports.lock"
_USES_PORT = re.compile(r"(127\.0\.0\.1|localhost|0\.0\.0\.0)\D{1,4}\d{4,5}\b|port\s*=\s*\d{4,5}\b")


def _uses_fixed_port(sample):
    texts = [
        sample.script(),
        *(s.script() for s in sample.servers),
        *(f.code for f in sample.files),
    ]
    return bool(sample.servers) or any(_USES_PORT.search(t) for t in texts)


@contextlib.contextmanager
def _port_lock(sample, deadline_s=120):
    if not _uses_fixed_port(sample):
        yield
        return
    _NET_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(_NET_LOCK, "a") as f:
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"{sample.id}: {_NET_LOCK} held by another process for {deadline_s} s"
                    )
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture
def redis_url(tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("GREENHUB_REQUIRE_REDIS") == "1":
            pytest.fail("GREENHUB_REQUIRE_REDIS=1 but there is no redis-server")
        pytest.skip("no redis-server (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    proc = subprocess.Popen(
        [*argv, "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        assert _wait_listening(port, proc, time.monotonic() + 20), "redis-server did not start"
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.timeout(240)  # up to 120 s waiting for the port lock, 50 s running, servers
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: s.id)
def test_docs_sample_runs(sample, tmp_path, request):
    with _port_lock(sample):
        _run_sample(sample, tmp_path, request)


def _run_sample(sample, tmp_path, request):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONASYNCIODEBUG")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(GREENHUB_ROOT), env.get("PYTHONPATH")]))
    if sample.needs_postgres:
        dsn = os.environ.get("GREENHUB_TEST_PG_DSN")
        if not dsn:
            if os.environ.get("GREENHUB_REQUIRE_PG") == "1":
                pytest.fail("GREENHUB_REQUIRE_PG=1 but GREENHUB_TEST_PG_DSN is not set")
            pytest.skip("needs PostgreSQL: set GREENHUB_TEST_PG_DSN (.ci/pg start)")
        env["DATABASE_URL"] = dsn
    if sample.needs_redis:
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    for f in sample.files:
        dest = tmp_path / f.file
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(f.code)
    servers = []
    try:
        for n, server in enumerate(sample.servers):
            path = tmp_path / f"server{n}.py"
            path.write_text(server.script())
            log = open(tmp_path / f"server{n}.log", "w+")
            proc = subprocess.Popen(
                [sys.executable, str(path)], cwd=tmp_path, env=env, stdout=log, stderr=log
            )
            servers.append((server, proc, log))
            if not _wait_listening(server.server, proc, time.monotonic() + 30):
                log.seek(0)
                pytest.fail(f"{server.id}: nothing listens on {server.server}:\n{log.read()}")
        script = tmp_path / "sample.py"
        script.write_text(sample.script())
        got = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            input=sample.stdin or "",
            capture_output=True,
            text=True,
            timeout=50,
        )
        assert got.returncode == 0, f"{sample.id} failed:\n{got.stderr[-3000:]}"
        for shown, printed in ((sample.output, got.stdout), (sample.stderr, got.stderr)):
            if shown is not None:
                assert _matches(shown, printed), (
                    f"{sample.id}: the docs show\n{shown}\nbut it printed\n{printed}"
                )
        for server, proc, log in servers:
            log.seek(0)
            assert proc.poll() is None, f"{server.id} exited:\n{log.read()[-3000:]}"
    finally:
        for _, proc, log in servers:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
