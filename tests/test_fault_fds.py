"""Closed, reused and duplicated file descriptors under every API that watches one.

asyncio lets a program close an fd at any moment - with a reader on it, right after
add_writer(), while sock_recv() waits on it - and the stock loop survives: the kernel
drops a closed fd from its epoll set and the selector key just never fires again.
greenhub's libev applies watcher changes at the next poll and (Debian's build) aborts the
process if epoll_ctl() then meets a closed fd, so greenhub checks every fd before libev
sees it (src/reactor.c).  Each scenario here runs on both loops and records what a program
can observe - callbacks run, exceptions raised, futures' states, remove_*() results -
then checks that the loop still works (a timer, a fresh socket pair); the transcripts must
be equal.  An abort takes the test run down, which fails CI as loudly as any assert.

Two differences are greenhub's on purpose, and tested as such: an fd number reused by a
new file and watched again is watched (the selector's stale key makes the stock loop
either raise FileNotFoundError or silently watch nothing), and a forked child's loop gets
an epoll set of its own (the stock loop shares the parent's, so the child's changes
remove the parent's registrations).
"""

import asyncio
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import support

pytestmark = pytest.mark.timeout(30)


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - the outcome is the point
        return ("raised", type(exc).__name__, getattr(exc, "errno", None))


def _future_state(fut):
    if not fut.done():
        return "pending"
    if fut.cancelled():
        return "cancelled"
    exc = fut.exception()
    if exc is not None:
        return ("exception", type(exc).__name__, getattr(exc, "errno", None))
    return ("result", fut.result())


def _tick(loop, n=2):
    for _ in range(n):
        support.run_once(loop)


async def _still_healthy():
    """The loop runs timers and watches a fresh socket pair after the fault."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        fut = loop.create_future()
        loop.add_reader(a, lambda: fut.done() or fut.set_result(a.recv(16)))
        loop.call_soon(b.send, b"healthy")
        data = await asyncio.wait_for(fut, 5)
        loop.remove_reader(a)
        await asyncio.sleep(0.001)
        return data
    finally:
        a.close()
        b.close()


def _healthy(loop):
    return loop.run_until_complete(_still_healthy())


def _pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _fill(sock):
    try:
        while True:
            sock.send(b"x" * 65536)
    except BlockingIOError:
        pass


# --- add_reader / add_writer -------------------------------------------------------


def _watch_then_close(loop, which, close, applied):
    """add_<which>(fd); [one poll]; close the fd; two polls."""
    log = []
    a, b = _pair()
    fd = a.fileno()
    add = loop.add_reader if which == "reader" else loop.add_writer
    remove = loop.remove_reader if which == "reader" else loop.remove_writer
    if which == "reader":
        b.send(b"data")  # readable at once: the callback would run if the fd were alive
    add(fd, log.append, "called")
    if applied:
        _tick(loop, 1)
        log.append(("before close", log.count("called") > 0))
        remove(fd)
        add(fd, log.append, "called again")
    if close == "sock.close":
        a.close()
    else:
        os.close(a.detach())
    _tick(loop)
    log.append(("remove", _outcome(remove, fd)))
    b.close()
    return log


@pytest.mark.parametrize("which", ["reader", "writer"])
@pytest.mark.parametrize("close", ["sock.close", "os.close"])
@pytest.mark.parametrize("applied", [False, True], ids=["same-iteration", "after-poll"])
def test_watch_then_close(both_loops, which, close, applied):
    results = {}
    for kind, loop in both_loops.items():
        results[kind] = (_watch_then_close(loop, which, close, applied), _healthy(loop))
    assert results["greenhub"] == results["asyncio"]


def _close_then_change(loop, first, second):
    """add_<first>(fd); poll; close; add_<second>(fd): the selector loop's modify()
    fails when the events change, and drops the whole key."""
    log = []
    a, b = _pair()
    fd = a.fileno()
    adders = {"reader": loop.add_reader, "writer": loop.add_writer}
    adders[first](fd, log.append, first)
    _tick(loop, 1)
    os.close(a.detach())
    log.append(("add " + second, _outcome(lambda: adders[second](fd, log.append, second) and 1)))
    _tick(loop)
    log.append(("remove_reader", _outcome(loop.remove_reader, fd)))
    log.append(("remove_writer", _outcome(loop.remove_writer, fd)))
    b.close()
    return [x for x in log if x != "writer"]  # a live writer would have run before close


@pytest.mark.parametrize("first", ["reader", "writer"])
@pytest.mark.parametrize("second", ["reader", "writer"])
def test_close_then_change_watcher(both_loops, first, second):
    results = {}
    for kind, loop in both_loops.items():
        results[kind] = (_close_then_change(loop, first, second), _healthy(loop))
    assert results["greenhub"] == results["asyncio"]


def _close_then_change_by_object(loop, first, second):
    """add_<first>(sock); poll; sock.close(); add_<second>(sock): the socket's fileno() is
    -1 now, and the selector finds the key by the object itself - so a new event fails on
    the closed fd (and drops the key) while a new callback for the same event does not."""
    log = []
    a, b = _pair()
    adders = {"reader": loop.add_reader, "writer": loop.add_writer}
    adders[first](a, log.append, first)
    _tick(loop, 1)
    a.close()
    log.append(("add " + second, _outcome(lambda: adders[second](a, log.append, second) and 1)))
    _tick(loop)
    log.append(("remove_reader", _outcome(loop.remove_reader, a)))
    log.append(("remove_writer", _outcome(loop.remove_writer, a)))
    b.close()
    return [x for x in log if x != "writer"]  # a live writer would have run before close


@pytest.mark.parametrize("first", ["reader", "writer"])
@pytest.mark.parametrize("second", ["reader", "writer"])
def test_close_then_change_watcher_by_object(both_loops, first, second):
    """greenhub raised ValueError("Invalid file descriptor: -1") for the second add (it
    looked the closed socket up only in remove_*()); found by tests/fuzz_loop.py."""
    results = {}
    for kind, loop in both_loops.items():
        results[kind] = (_close_then_change_by_object(loop, first, second), _healthy(loop))
    assert results["greenhub"] == results["asyncio"]


def test_add_reader_on_closed_fd_raises(both_loops):
    results = {}
    for kind, loop in both_loops.items():
        a, b = _pair()
        fd = a.fileno()
        a.close()
        b.close()
        results[kind] = (
            _outcome(lambda lp=loop, fd=fd: lp.add_reader(fd, print) and 1),
            _outcome(loop.remove_reader, fd),
            _healthy(loop),
        )
    assert results["greenhub"] == results["asyncio"]
    assert results["greenhub"][0] == ("raised", "OSError", 9)


def test_many_watchers_closed_together(both_loops):
    """Hundreds of fds closed with watchers on them, in one iteration, some of them
    changed after the close: nothing reaches libev."""
    results = {}
    for kind, loop in both_loops.items():
        log = []
        pairs = [_pair() for _ in range(200)]
        for i, (a, _b) in enumerate(pairs):
            loop.add_reader(a.fileno(), log.append, i)
            if i % 2:
                loop.add_writer(a.fileno(), log.append, -i)
        _tick(loop, 1)
        log.clear()  # the writers ran: the pairs are writable
        fds = [a.fileno() for a, _b in pairs]
        for a, b in pairs:
            a.close()
            b.close()
        for i, fd in enumerate(fds):
            if i % 3 == 0:
                log.append(_outcome(loop.remove_writer, fd))
        _tick(loop)
        for fd in fds:  # the stale keys would shadow the healthy check's new fds
            log.append((_outcome(loop.remove_reader, fd), _outcome(loop.remove_writer, fd)))
        results[kind] = (log, _healthy(loop))
    assert results["greenhub"] == results["asyncio"]


# --- sock_* coroutines ---------------------------------------------------------------


async def _sock_op_then_close(op, applied):
    loop = asyncio.get_running_loop()
    a, b = _pair()
    listener = None
    if op == "sock_recv":
        coro = loop.sock_recv(a, 100)
    elif op == "sock_recv_into":
        coro = loop.sock_recv_into(a, bytearray(100))
    elif op == "sock_sendall":
        _fill(a)
        coro = loop.sock_sendall(a, b"y" * 200000)
    elif op == "sock_accept":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        a.close()
        a = listener
        coro = loop.sock_accept(listener)
    else:
        raise AssertionError(op)
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0)  # the task starts and waits
    if applied:
        await asyncio.sleep(0.01)
    os.close(a.detach())
    await asyncio.sleep(0.01)
    state = _future_state(task)
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, OSError):
        pass
    b.close()
    return state


@pytest.mark.parametrize("op", ["sock_recv", "sock_recv_into", "sock_sendall", "sock_accept"])
@pytest.mark.parametrize("applied", [False, True], ids=["same-iteration", "after-poll"])
def test_sock_op_then_close(both_loops, op, applied):
    results = {}
    for kind, loop in both_loops.items():
        results[kind] = (
            loop.run_until_complete(_sock_op_then_close(op, applied)),
            _healthy(loop),
        )
    assert results["greenhub"] == results["asyncio"]


# --- transports ----------------------------------------------------------------------


class _Recorder(asyncio.Protocol):
    def __init__(self):
        self.events = []
        self.lost = None

    def connection_made(self, transport):
        self.events.append("made")
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.events.append(("data", len(data)))

    def eof_received(self):
        self.events.append("eof")

    def pause_writing(self):
        self.events.append("pause_writing")

    def resume_writing(self):
        self.events.append("resume_writing")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(None)


async def _transport_fd_closed_under(action):
    loop = asyncio.get_running_loop()
    a, b = _pair()
    transport, proto = await loop.connect_accepted_socket(_Recorder, a)
    await asyncio.sleep(0)
    fd = transport.get_extra_info("socket").fileno()
    os.close(fd)  # under the transport's feet: its reader is registered
    outcome = None
    if action == "write-big":
        outcome = _outcome(transport.write, b"z" * (1 << 20))
    elif action == "pause-resume":
        transport.pause_reading()
        outcome = _outcome(transport.resume_reading)
    elif action == "write-small":
        outcome = _outcome(transport.write, b"hello")
    elif action == "nothing":
        pass
    await asyncio.sleep(0.02)
    state = list(proto.events)
    transport.abort()
    await asyncio.sleep(0)
    b.close()
    a.detach()  # already closed underneath
    return outcome, state


@pytest.mark.parametrize("action", ["nothing", "write-small", "write-big", "pause-resume"])
def test_transport_fd_closed_underneath(both_loops, action):
    results = {}
    for kind, loop in both_loops.items():
        loop.set_exception_handler(lambda lp, ctx: None)  # the fatal-error reports
        results[kind] = (
            loop.run_until_complete(_transport_fd_closed_under(action)),
            _healthy(loop),
        )
    assert results["greenhub"] == results["asyncio"]


# --- duplicated fds: the kernel keeps reporting a closed number ------------------------


def test_dup_then_close_with_events(both_loops):
    """add_reader(fd); dup(fd); close(fd): the kernel keeps the registration (the file is
    still open through the dup) and reports the old number; then the reader is removed
    while events keep coming.  libev meets an fd it cannot touch and rebuilds its epoll
    set from every watcher - greenhub checks each one first."""
    results = {}
    for kind, loop in both_loops.items():
        log = []
        a, b = _pair()
        other_a, other_b = _pair()  # a second watcher, alive, in the rebuilt set
        loop.add_reader(other_a, lambda log=log, s=other_a: log.append(("other", s.recv(10))))
        fd = a.fileno()
        loop.add_reader(fd, log.append, "reader")
        _tick(loop, 1)
        dup = os.dup(fd)
        os.close(a.detach())
        b.send(b"ping")
        _tick(loop, 1)
        log.append(("remove", _outcome(loop.remove_reader, fd)))
        b.send(b"more")
        _tick(loop, 3)
        other_b.send(b"still")
        _tick(loop, 2)
        loop.remove_reader(other_a)
        os.close(dup)
        for s in (b, other_a, other_b):
            s.close()
        results[kind] = (log, _healthy(loop))
    assert results["greenhub"] == results["asyncio"]


# --- numbers reused by new files (greenhub watches the new file) ----------------------


def test_reused_fd_number_is_watched(loop, kind):
    """Closed with a reader on it, then the number comes back as a new socket whose
    reader is added: on greenhub the new socket is watched.  (The stock loop keeps the
    stale key: same events, no system call, nothing watched.)"""
    a, b = _pair()
    fd = a.fileno()
    loop.add_reader(fd, print)
    _tick(loop, 1)
    a.close()
    b.close()
    c, d = _pair()
    if d.fileno() == fd:  # the kernel hands out the lowest free numbers
        c, d = d, c
    assert c.fileno() == fd
    fut = loop.create_future()
    loop.add_reader(c, lambda: fut.done() or fut.set_result(c.recv(10)))
    d.send(b"new")
    if kind == "greenhub":
        assert loop.run_until_complete(asyncio.wait_for(fut, 5)) == b"new"
    else:
        _tick(loop, 2)
        assert not fut.done()  # the stock loop's stale key
    loop.remove_reader(c)
    c.close()
    d.close()
    assert _healthy(loop) == b"healthy"


# --- green waits ------------------------------------------------------------------------


def test_wait_fd_then_close_same_iteration():
    import greenhub
    from greenhub import _core

    async def main():
        a, b = _pair()
        fd = a.fileno()

        def waiter():
            return _core._wait_fd(fd, 1, 0.05)

        task = greenhub.spawn(waiter)
        await asyncio.sleep(0)  # the wait is registered
        os.close(a.detach())
        result = await asyncio.wait_for(task, 5)
        b.close()
        return result, await _still_healthy()

    assert greenhub.run(main()) == (0, b"healthy")  # timed out: nothing to report


def test_green_socket_recv_raw_fd_closed_underneath():
    import greenhub
    import greenhub.socket as gsocket

    async def main():
        a, b = gsocket.socketpair()
        a.settimeout(0.05)

        def reader():
            try:
                return a.recv(10)
            except OSError as exc:
                return type(exc).__name__

        task = greenhub.spawn(reader)
        await asyncio.sleep(0)
        os.close(a.detach())
        result = await asyncio.wait_for(task, 5)
        b.close()
        return result, await _still_healthy()

    assert greenhub.run(main()) == ("OSError", b"healthy")  # as a plain socket: EBADF


# --- fork ---------------------------------------------------------------------------------


def _run_script(kind, body):
    script = textwrap.dedent(
        f"""
        import asyncio, os, socket, sys
        import greenhub
        kind = {kind!r}
        loop = asyncio.new_event_loop() if kind == "asyncio" else greenhub.new_event_loop()
        """
    ) + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    return proc.returncode, proc.stdout.strip(), proc.stderr[-2000:]


_FORK_BODY = """
a, b = socket.socketpair()
got = loop.create_future()
loop.add_reader(a, lambda: got.done() or got.set_result(a.recv(10)))
loop.run_until_complete(asyncio.sleep(0.01))
pid = os.fork()
if pid == 0:
    c, d = socket.socketpair()
    fut = loop.create_future()
    loop.add_reader(c, lambda: fut.done() or fut.set_result(c.recv(10)))
    d.send(b"child")
    r = loop.run_until_complete(asyncio.wait_for(fut, 5))
    loop.remove_reader(a)
    a.close()
    loop.close()
    os._exit(0 if r == b"child" else 3)
_, status = os.waitpid(pid, 0)
b.send(b"x")
try:
    print(loop.run_until_complete(asyncio.wait_for(got, 1)), os.waitstatus_to_exitcode(status))
except TimeoutError:
    print("parent lost its reader", os.waitstatus_to_exitcode(status))
loop.close()
"""


def test_fork_child_has_its_own_epoll_set():
    """The child uses the loop it inherited, removes the parent's reader and closes
    the fd: the parent keeps its reader on greenhub.  (On the stock loop the two share
    one epoll set and the parent loses it: shown here too, so that the difference is
    known, not assumed.)"""
    rc, out, err = _run_script("greenhub", _FORK_BODY)
    assert rc == 0, err
    assert out == "b'x' 0"
    rc, out, err = _run_script("asyncio", _FORK_BODY)
    assert rc == 0, err
    assert out == "parent lost its reader 0"


# --- EMFILE ---------------------------------------------------------------------------------

_EMFILE_BODY = """
import errno, gc, resource, warnings
warnings.simplefilter("ignore")
fds = []
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
try:
    while True:
        fds.append(os.open(os.devnull, os.O_RDONLY))
except OSError as exc:
    assert exc.errno == errno.EMFILE
sys.unraisablehook = lambda u: None  # a half-made stock loop's __del__ complains
for spare in range(8):
    try:
        lp = asyncio.new_event_loop() if kind == "asyncio" else greenhub.new_event_loop()
    except OSError as exc:
        print(spare, "OSError", exc.errno)
    else:
        lp.run_until_complete(asyncio.sleep(0))
        lp.close()
        print(spare, "ok")
    gc.collect()  # a failed loop's fds are closed when it is collected
    os.close(fds.pop())
"""


@pytest.mark.parametrize("kind", support.LOOP_KINDS)
def test_new_loop_out_of_fds_raises(kind):
    """With too few fds to spare a new loop raises OSError(EMFILE), with each number of
    spare fds until it has enough.  (libev makes its own wakeup fd lazily and aborts the
    process when it cannot; greenhub's loop makes its own first.)"""
    rc, out, err = _run_script(kind, _EMFILE_BODY)
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 8, out
    assert lines[0] == "0 OSError 24"
    assert lines[-1] == "7 ok"
    first_ok = next(i for i, line in enumerate(lines) if line.endswith("ok"))
    assert all(line.endswith("OSError 24") for line in lines[:first_ok]), out
    assert all(line.endswith("ok") for line in lines[first_ok:]), out
