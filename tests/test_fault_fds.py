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


async def _server_fd_closed_under():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    sock = server.sockets[0]
    os.close(sock.fileno())  # the listening fd, under the server's accept reader
    await asyncio.sleep(0.01)
    closing = _outcome(server.close)  # closes the socket object: EBADF
    await asyncio.sleep(0)
    return closing, server.is_serving()


async def _datagram_fd_closed_under():
    loop = asyncio.get_running_loop()
    errors = []

    class Proto(asyncio.DatagramProtocol):
        def error_received(self, exc):
            errors.append(type(exc).__name__)

    transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    os.close(transport.get_extra_info("socket").fileno())
    transport.sendto(b"x", peer.getsockname())
    await asyncio.sleep(0.01)
    transport.abort()
    await asyncio.sleep(0)
    peer.close()
    return errors


async def _read_pipe_fd_closed_under():
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    proto = _Recorder()
    transport, _ = await loop.connect_read_pipe(lambda: proto, os.fdopen(r, "rb", 0))
    os.close(r)
    wrote = _outcome(os.write, w, b"data")  # EPIPE: no reader left
    await asyncio.sleep(0.01)
    state = [wrote] + list(proto.events)
    transport.close()
    await asyncio.sleep(0)
    os.close(w)
    return state


async def _write_pipe_fd_closed_under():
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    proto = _Recorder()
    transport, _ = await loop.connect_write_pipe(lambda: proto, os.fdopen(w, "wb", 0))
    os.close(w)
    outcome = _outcome(transport.write, b"y" * (1 << 20))
    await asyncio.sleep(0.01)
    state = list(proto.events)
    transport.abort()
    await asyncio.sleep(0)
    os.close(r)
    return outcome, state


async def _sock_recvfrom_then_close():
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    task = asyncio.ensure_future(loop.sock_recvfrom(s, 100))
    await asyncio.sleep(0)
    os.close(s.detach())
    await asyncio.sleep(0.01)
    state = _future_state(task)
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, OSError):
        pass
    return state


_MORE = {
    "server": _server_fd_closed_under,
    "datagram": _datagram_fd_closed_under,
    "read-pipe": _read_pipe_fd_closed_under,
    "write-pipe": _write_pipe_fd_closed_under,
}
if sys.version_info >= (3, 11):
    _MORE["sock_recvfrom"] = _sock_recvfrom_then_close


@pytest.mark.parametrize("what", sorted(_MORE))
def test_more_fd_closed_underneath(both_loops, what):
    """The listening socket of a server, a datagram endpoint, pipe transports and a
    pending sock_recvfrom(), each with its fd closed under it."""
    results = {}
    for kind, loop in both_loops.items():
        loop.set_exception_handler(lambda lp, ctx: None)
        results[kind] = (loop.run_until_complete(_MORE[what]()), _healthy(loop))
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


# --- what epoll cannot watch ------------------------------------------------------------


def _watch_outcome(loop, opener):
    fd = opener()
    try:
        return (
            _outcome(lambda: loop.add_reader(fd, print) and 1),
            _outcome(loop.remove_reader, fd),
        )
    finally:
        os.close(fd)


_UNWATCHABLE = {
    # O_PATH: fcntl() accepts it, epoll_ctl() says EBADF (libev used to abort on it).
    "o-path": lambda: os.open("/", os.O_PATH),
    "o-path-fifo": lambda: os.open(_fifo_path(), os.O_PATH),
    # epoll refuses files without poll support with EPERM; libev called their
    # watcher on every poll instead.
    "regular-file": lambda: os.open(__file__, os.O_RDONLY),
    "dev-null": lambda: os.open(os.devnull, os.O_RDONLY),
    "directory": lambda: os.open("/", os.O_RDONLY | os.O_DIRECTORY),
}


def _fifo_path():
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "fifo")
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("what", sorted(_UNWATCHABLE))
def test_add_reader_on_what_epoll_cannot_watch(both_loops, what):
    results = {}
    for kind, loop in both_loops.items():
        results[kind] = (_watch_outcome(loop, _UNWATCHABLE[what]), _healthy(loop))
    assert results["greenhub"] == results["asyncio"]
    assert results["greenhub"][0][0][0] == "raised"


@pytest.mark.parametrize("fd", [10**7, 2**30 + 1, 2**31 - 1], ids=["1e7", "2^30+1", "2^31-1"])
def test_add_reader_on_a_huge_fd_number(both_loops, fd):
    """Not open: EBADF at once.  (greenhub grew its tables to the fd's number first -
    hundreds of MiB - and past 2**30 the doubling overflowed and never ended.)"""
    import resource

    results = {}
    for kind, loop in both_loops.items():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        outcome = _outcome(lambda lp=loop: lp.add_reader(fd, print) and 1)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        results[kind] = (outcome, grown < 10 * 1024)  # KiB
    assert results["greenhub"] == results["asyncio"] == (("raised", "OSError", 9), True)


@pytest.mark.parametrize("fd_kind", ["huge", "o-path"])
def test_wait_fd_on_an_unwatchable_fd(fd_kind, greenhub_leak_check):
    import greenhub
    from greenhub import _core

    fd = 2**31 - 1 if fd_kind == "huge" else os.open("/", os.O_PATH)

    def vthread():
        try:
            return _core._wait_fd(fd, 1, 0.1)
        except OSError as exc:
            return ("OSError", exc.errno)

    try:
        assert greenhub.run(vthread) == ("OSError", 9)
    finally:
        if fd_kind == "o-path":
            os.close(fd)


# --- BufferedProtocol.get_buffer() closing the socket -------------------------------------


class _StealingProtocol(asyncio.BufferedProtocol):
    """get_buffer() closes the transport's socket, and a new socket pair - which gets
    its fd number - has data waiting."""

    def __init__(self):
        self.buf = bytearray(100)
        self.got = []
        self.lost = None
        self.others = []

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        if not self.others:
            self.transport._sock.close()
            x, y = socket.socketpair()
            self.others += [x, y]
            x.send(b"another connection's data")
            y.send(b"another connection's data")
        return self.buf

    def buffer_updated(self, nbytes):
        self.got.append(bytes(self.buf[:nbytes]))

    def connection_lost(self, exc):
        self.lost = type(exc).__name__ if exc else None


async def _get_buffer_closes_socket():
    loop = asyncio.get_running_loop()
    a, b = _pair()
    transport, proto = await loop.create_connection(_StealingProtocol, sock=a)
    b.send(b"hello")
    for _ in range(20):
        await asyncio.sleep(0.005)
        if proto.lost is not None:
            break
    for s in proto.others + [b]:
        s.close()
    return proto.got, proto.lost


def test_get_buffer_closes_the_socket(both_loops):
    """The C read path looked the fd up before get_buffer() ran: it read the other
    connection's data into the protocol.  Now it reads from the socket as it is after
    get_buffer(): EBADF, the connection is lost, as on the stock loop."""
    results = {}
    for kind, loop in both_loops.items():
        loop.set_exception_handler(lambda lp, ctx: None)
        results[kind] = (loop.run_until_complete(_get_buffer_closes_socket()), _healthy(loop))
    assert results["greenhub"] == results["asyncio"]
    assert results["greenhub"][0] == ([], "OSError")


# --- writes and fork, writes and drain ----------------------------------------------------

_FORK_WRITE_BODY = """
a, b = socket.socketpair()
async def main():
    r, w = await asyncio.open_connection(sock=a)
    w.write(b"HELLO")
    pid = os.fork()   # in the iteration of the write: greenhub's queue is not sent yet
    if pid == 0:
        # The child runs the end of its iteration, then exits.  (Through a callback: from
        # 3.14 a task cannot resume in a forked child - the running loop is reset there.)
        loop.call_soon(os._exit, 0)
        await asyncio.sleep(0)
    os.waitpid(pid, 0)
    await asyncio.sleep(0.05)
    b.setblocking(False)
    print(b.recv(100))
    w.close()
loop.run_until_complete(main())
loop.close()
"""


@pytest.mark.parametrize("kind", support.LOOP_KINDS)
def test_fork_after_write_sends_once(kind):
    """The child inherited the transport's unsent queue and sent it too: the peer got
    the data twice.  The stock loop sent it in write(), before the fork."""
    rc, out, err = _run_script(kind, _FORK_WRITE_BODY)
    assert rc == 0, err
    assert out == "b'HELLO'"


async def _write_drain_then_read_peer():
    a, b = _pair()
    r, w = await asyncio.open_connection(sock=a)
    w.write(b"hello")
    await w.drain()  # returns without yielding: the transport is not paused
    try:
        got = b.recv(10)  # same iteration, not through the loop
    except BlockingIOError:
        got = "nothing there"
    w.close()
    await w.wait_closed()
    b.close()
    return got


def test_data_is_sent_when_drain_returns(both_loops):
    """greenhub queues write()s until the end of the iteration; drain() sends them, so
    code that reads the peer right after drain() - without going through the loop -
    finds the data, as on the stock loop."""
    results = {k: lp.run_until_complete(_write_drain_then_read_peer()) for k, lp in both_loops.items()}
    assert results["greenhub"] == results["asyncio"] == b"hello"


def test_add_reader_while_a_collection_grows_the_fd_table(greenhub_leak_check):
    """add_reader() makes its Handle, which allocates; a garbage collection there runs a
    __del__ that adds a reader on a high fd and so moves the loop's fd table.  greenhub
    kept a pointer into the old table: the new reader went into freed memory and was
    never called."""
    import gc

    import greenhub

    loop = greenhub.new_event_loop()
    r, w = os.pipe()
    high = os.dup2(r, 900)
    fired = []

    class Trigger:
        def __del__(self):
            loop.add_reader(high, lambda: None)

    gc.collect()
    gc.disable()
    t = Trigger()
    t.self = t  # a cycle: freed only by the collector
    del t
    old = gc.get_threshold()
    add, callback = loop._add_reader, fired.append  # no allocation left before the call
    try:
        gc.enable()
        gc.set_threshold(1)
        add(r, callback, "fired")  # the collection runs in there
    finally:
        gc.set_threshold(*old)
        gc.enable()
    try:
        watchers = loop._io_watchers()  # the loop's own self-pipe is there too
        assert watchers[r] == 1 and watchers[high] == 1
        os.write(w, b"x")
        loop.call_later(0.05, loop.stop)
        loop.run_forever()
        assert fired == ["fired"] * len(fired) and fired
    finally:
        loop.remove_reader(r)
        loop.remove_reader(high)
        loop.close()
        for fd in (r, w, high):
            os.close(fd)
