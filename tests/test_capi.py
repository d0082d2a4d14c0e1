"""greenhub's C API (greenhub/include/greenhub.h, greenhub/capi.pxd) from real extensions.

Two small extensions in tests/capi_ext/ - gh_capi_c.c in C, gh_capi_cy.pyx in Cython -
are built here, at test time, from what the installed greenhub ships and nothing else:
the include path is Python's and ``greenhub.get_include()``, Cython finds ``capi.pxd`` in
the greenhub package, and nothing is linked against greenhub.  Both expose the same
functions (the API's three, and ``fetch``: a client that connects to a TCP port, sends a
request and reads the reply to EOF, waiting through the API), so each test runs on both.

Overlap is shown by ordering, not timing: N virtual threads are all inside the
extension's wait at once (their watchers armed, their futures awaited) before any is
released.
"""

import asyncio
import errno
import importlib.util
import math
import os
import shlex
import socket
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest
from vthread_helpers import gloop_fixture, in_thread  # noqa: F401 - fixture

import greenhub
import greenhub.socket as gsocket
from greenhub import _core

pytestmark = pytest.mark.timeout(120)  # the first test builds both extensions

HERE = Path(__file__).resolve().parent / "capi_ext"
R, W, RW = 1, 2, 3
N = 5


def _compile(source, out, *, werror):
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    includes = {sysconfig.get_paths()["include"], sysconfig.get_paths()["platinclude"]}
    cmd = [*cc, "-shared", "-fPIC", "-O1", "-Wall", "-Wextra"]
    cmd += ["-Werror"] if werror else []
    cmd += [f"-I{d}" for d in sorted(includes)] + [f"-I{greenhub.get_include()}"]
    proc = subprocess.run([*cmd, str(source), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """{"c": gh_capi_c, "cython": gh_capi_cy}, built from the installed headers."""
    out = tmp_path_factory.mktemp("capi_ext")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    _compile(HERE / "gh_capi_c.c", out / f"gh_capi_c{suffix}", werror=True)
    # Cython looks for greenhub/capi.pxd on the include path: the directory holding
    # the greenhub package under test (site-packages when installed).
    site = Path(greenhub.__file__).resolve().parent.parent
    pyx_c = out / "gh_capi_cy.c"
    proc = subprocess.run(
        [sys.executable, "-m", "cython", "-3", "-I", str(site), str(HERE / "gh_capi_cy.pyx"),
         "-o", str(pyx_c)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _compile(pyx_c, out / f"gh_capi_cy{suffix}", werror=False)
    return {
        "c": _load("gh_capi_c", out / f"gh_capi_c{suffix}"),
        "cython": _load("gh_capi_cy", out / f"gh_capi_cy{suffix}"),
    }


@pytest.fixture(params=["c", "cython"])
def ext(request, built):
    return built[request.param]


def vrun(loop, fn, *args):
    async def main():
        return await asyncio.wait_for(greenhub.spawn(fn, *args), 10)

    return loop.run_until_complete(main())


def watched(loop, fd):
    return loop._io_watchers().get(fd, 0)


async def until(cond, limit=1000):
    """Let the loop run until cond() holds (a bounded number of iterations)."""
    for _ in range(limit):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


@pytest.fixture
def pairs():
    made = [socket.socketpair() for _ in range(N)]
    for a, b in made:
        a.setblocking(False)
        b.setblocking(False)
    yield made
    for a, b in made:
        a.close()
        b.close()


# -- the capsule and the table -----------------------------------------------------------


def test_capsule_and_table(ext):
    assert type(_core._C_API).__name__ == "PyCapsule"
    assert "greenhub._core._C_API" in repr(_core._C_API)
    info = ext.api_info()
    assert info["version"] == info["header_version"] == 1
    assert info["has_await"] and info["size"] >= 16 + 3 * 8


def test_get_include_holds_the_header():
    inc = Path(greenhub.get_include())
    assert inc.is_absolute() and (inc / "greenhub.h").is_file()
    assert (Path(greenhub.__file__).parent / "capi.pxd").is_file()


# -- in a virtual thread: only it waits -------------------------------------------------


def test_in_vthread(ext, loop, kind):
    # True exactly where greenhub.in_vthread() is: in a greenhub task, not in a stock
    # loop's task, not in a callback, not outside a loop.
    async def main():
        here = ext.in_vthread(), _core.in_vthread()
        fut = loop.create_future()
        loop.call_soon(lambda: fut.set_result((ext.in_vthread(), _core.in_vthread())))
        return here, await fut

    in_task, in_callback = loop.run_until_complete(main())
    assert in_task == (kind == "greenhub",) * 2
    assert in_callback == (False, False)
    assert ext.in_vthread() is False


def test_wait_fd_overlaps(ext, gloop, pairs):
    order = []

    def waiter(i):
        a = pairs[i][0]
        ready = ext.wait_fd(a.fileno(), R, math.inf)
        order.append(i)
        return ready, a.recv(10)

    async def main():
        tasks = [greenhub.spawn(waiter, i) for i in range(N)]
        # every one of them is inside the extension's wait at once ...
        await until(lambda: all(watched(gloop, a.fileno()) == R for a, _ in pairs))
        assert not any(t.done() for t in tasks) and order == []
        # ... and each wakes when its own fd becomes readable, in that order
        for i in reversed(range(N)):
            pairs[i][1].send(b"%d" % i)
        return await asyncio.gather(*tasks)

    results = gloop.run_until_complete(asyncio.wait_for(main(), 10))
    assert results == [(R, b"%d" % i) for i in range(N)]
    assert order == list(reversed(range(N)))
    assert all(watched(gloop, a.fileno()) == 0 for a, _ in pairs)


def test_await_overlaps(ext, gloop):
    futs = []

    def waiter(i):
        return ext.await_(futs[i])

    async def main():
        futs.extend(gloop.create_future() for _ in range(N))
        tasks = [greenhub.spawn(waiter, i) for i in range(N)]
        await until(lambda: all(f._callbacks for f in futs))  # each one awaited
        assert not any(t.done() for t in tasks)
        for i in reversed(range(N)):
            futs[i].set_result(i * 10)
        return await asyncio.gather(*tasks)

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == [i * 10 for i in range(N)]


def test_await_a_coroutine_and_its_exception(ext, gloop):
    async def value():
        await asyncio.sleep(0)
        return "done"

    async def fails():
        await asyncio.sleep(0)
        raise KeyError("k")

    assert vrun(gloop, ext.await_, value()) == "done"
    with pytest.raises(KeyError):
        vrun(gloop, ext.await_, fails())


def test_client_requests_overlap(ext, gloop):
    # The server answers nobody until all N requests are in: the clients, each inside
    # the extension's waits, must all be connected and waiting at the same time.
    arrived = []
    all_in = asyncio.Event()

    async def handle(reader, writer):
        request = await reader.readexactly(4)
        arrived.append(request)
        if len(arrived) == N:
            all_in.set()
        await all_in.wait()
        writer.write(b"reply to " + request)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await asyncio.gather(
                *(greenhub.spawn(ext.fetch, port, b"r%03d" % i, 10.0) for i in range(N))
            )

    replies = gloop.run_until_complete(asyncio.wait_for(main(), 20))
    assert replies == [b"reply to r%03d" % i for i in range(N)]


# -- outside a virtual thread: the blocking call ----------------------------------------


def test_outside_blocks_in_poll(ext, pair):
    a, b = pair
    assert in_thread(ext.wait_fd, a.fileno(), R, 0.02) == 0
    assert in_thread(ext.wait_fd, a.fileno(), W, math.inf) == W
    sent = []

    def send_late():
        sent.append(True)
        b.send(b"late")

    threading.Timer(0.02, send_late).start()
    # blocks until the data is there, and no less: when it returns the send happened
    assert in_thread(lambda: (ext.wait_fd(a.fileno(), R, math.inf), bool(sent))) == (R, True)
    assert ext.wait_fd(a.fileno(), RW, 0) == RW


def test_outside_releases_the_gil(ext, pair):
    # The helper makes the fd readable only after 10,000 steps of Python code, which
    # need the GIL: the wait returns R only if it let the GIL go.
    a, b = pair
    go = threading.Event()

    def helper():
        go.wait(30)
        total = 0
        for i in range(10_000):
            total += i
        b.send(b"x")

    t = threading.Thread(target=helper)
    t.start()
    go.set()
    try:
        assert ext.wait_fd(a.fileno(), R, 30.0) == R
    finally:
        t.join()


def test_outside_client_against_a_thread_server(ext):
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve():
        conn, _ = srv.accept()
        with conn:
            conn.sendall(b"echo " + conn.recv(4))

    t = threading.Thread(target=serve)
    t.start()
    try:
        assert in_thread(ext.fetch, port, b"ping", 10.0) == b"echo ping"
    finally:
        t.join()
        srv.close()


def test_await_outside_a_loop_runs_it(ext):
    async def value():
        await asyncio.sleep(0)
        return 7

    # with no loop running, as greenhub.await_(): on this thread's greenhub loop
    assert in_thread(ext.await_, value()) == 7


def test_await_where_nothing_can_wait_as_await_(ext, loop):
    # In a loop callback (greenhub) and under another loop (asyncio): greenhub.await_'s
    # own RuntimeError, and the coroutine is closed (no "never awaited" warning).
    async def value():
        return 1

    def both():
        errors = []
        for fn in (greenhub.await_, ext.await_):
            coro = value()
            try:
                fn(coro)
            except Exception as exc:  # noqa: BLE001 - compared below
                errors.append((type(exc), str(exc), coro.cr_frame is None))
            else:
                errors.append(None)
        return errors

    async def main():
        fut = loop.create_future()
        loop.call_soon(lambda: fut.set_result(both()))
        return await fut

    theirs, ours = loop.run_until_complete(main())
    assert ours == theirs and ours[0] is RuntimeError and ours[2]  # the coroutine closed


# -- timeouts and errors ----------------------------------------------------------------


@pytest.fixture
def silent_port():
    """A listening port whose connections the kernel accepts and nobody answers."""
    srv = socket.create_server(("127.0.0.1", 0))
    yield srv.getsockname()[1]
    srv.close()


def test_timeout_in_a_vthread(ext, gloop, pair, silent_port):
    a, _ = pair

    def waiter():
        deadline = gloop.time() + 0.03
        return ext.wait_fd(a.fileno(), R, 0.03), gloop.time() >= deadline

    assert vrun(gloop, waiter) == (0, True)
    assert watched(gloop, a.fileno()) == 0
    with pytest.raises(TimeoutError):
        vrun(gloop, ext.fetch, silent_port, b"x", 0.03)


def test_zero_timeout_only_looks(ext, gloop, pair):
    a, b = pair
    ticks = []

    def looker():
        first = ext.wait_fd(a.fileno(), R, 0.0)
        b.send(b"x")
        return first, ext.wait_fd(a.fileno(), RW, 0.0), list(ticks)

    async def ticker():
        ticks.append(1)

    async def main():
        task = greenhub.spawn(looker)
        gloop.create_task(ticker())
        return await task

    # neither call suspended: the ticker had not run when they returned
    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == (0, RW, [])


@pytest.mark.parametrize(
    "args, match",
    [
        ((-1, R, 1.0), "fd must be >= 0, not -1"),
        ((0, 0, 1.0), "events must be GREENHUB_READ, GREENHUB_WRITE or both, not 0"),
        ((0, 4, 1.0), "not 4"),
        ((0, R, -0.5), r"timeout must be >= 0 seconds \(or GREENHUB_FOREVER\), not -0.5"),
        ((0, R, -math.inf), "not -inf"),
        ((0, R, math.nan), "not nan"),
    ],
)
def test_bad_arguments(ext, gloop, args, match):
    before = gloop._io_watchers()
    with pytest.raises(ValueError, match=match):
        vrun(gloop, ext.wait_fd, *args)
    with pytest.raises(ValueError, match=match):
        ext.wait_fd(*args)
    assert gloop._io_watchers() == before


def test_bad_fd(ext, gloop):
    r, w = os.pipe()
    os.close(r)
    os.close(w)  # r is now a closed fd number
    for timeout in (math.inf, 1.0, 0.0):
        with pytest.raises(OSError) as exc:
            vrun(gloop, ext.wait_fd, r, R, timeout)
        assert exc.value.errno == errno.EBADF
        with pytest.raises(OSError) as exc:
            ext.wait_fd(r, R, timeout)
        assert exc.value.errno == errno.EBADF
    assert watched(gloop, r) == 0


def test_fd_closed_while_waited_on(ext, gloop):
    # Closing a green socket wakes the C wait on its fd with EBADF.
    a, b = gsocket.socketpair()
    fd = a.fileno()

    def closer():
        greenhub.await_(asyncio.sleep(0.01))
        a.close()

    async def main():
        waiter = greenhub.spawn(ext.wait_fd, fd, R, math.inf)
        await greenhub.spawn(closer)
        with pytest.raises(OSError) as exc:
            await waiter
        return exc.value.errno

    try:
        assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == errno.EBADF
    finally:
        a.close()
        b.close()
    assert fd not in gloop._io_watchers()


def test_second_waiter_on_one_direction(ext, gloop, pair):
    a, b = pair

    async def main():
        first = greenhub.spawn(ext.wait_fd, a.fileno(), R, math.inf)
        await until(lambda: watched(gloop, a.fileno()) == R)
        with pytest.raises(RuntimeError, match="already waited on for reading"):
            await greenhub.spawn(ext.wait_fd, a.fileno(), R, 5.0)
        b.send(b"x")
        return await first

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == R


def test_inside_no_switch(ext, gloop, pair):
    a, _ = pair

    def critical():
        with greenhub.no_switch():
            assert ext.wait_fd(a.fileno(), W, 0.0) == W  # only looks: allowed
            ext.wait_fd(a.fileno(), R, 1.0)

    with pytest.raises(greenhub.SwitchError):
        vrun(gloop, critical)
    assert watched(gloop, a.fileno()) == 0


# -- cancellation of a virtual thread waiting inside C ----------------------------------


def test_cancel_a_wait_inside_c(ext, gloop, pair):
    a, b = pair
    seen = []

    def waiter():
        try:
            return ext.wait_fd(a.fileno(), R, math.inf)
        except BaseException as exc:
            seen.append(type(exc))
            raise

    async def main():
        task = greenhub.spawn(waiter)
        await until(lambda: watched(gloop, a.fileno()) == R)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert watched(gloop, a.fileno()) == 0
        # the fd can be waited on again
        again = greenhub.spawn(ext.wait_fd, a.fileno(), R, 5.0)
        await until(lambda: watched(gloop, a.fileno()) == R)
        b.send(b"x")
        return await again

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) == R
    assert seen == [asyncio.CancelledError]


def test_cancel_an_await_inside_c(ext, gloop):
    inner = []

    def waiter():
        fut = gloop.create_future()
        inner.append(fut)
        return ext.await_(fut)

    async def main():
        task = greenhub.spawn(waiter)
        await until(lambda: inner and inner[0]._callbacks)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return inner[0].cancelled()

    assert gloop.run_until_complete(asyncio.wait_for(main(), 10)) is True


def test_cancel_a_client_inside_c(ext, gloop):
    # asyncio.timeout() around a task whose client waits in C for a reply that never
    # comes: the task is cancelled inside the extension, which closes its socket.
    async def main():
        server_conns = []

        async def handle(reader, writer):
            server_conns.append(writer)
            await reader.read()  # until the client goes away
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            task = greenhub.spawn(ext.fetch, port, b"ping", math.inf)
            await until(lambda: server_conns)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.02):
                    await task
            assert task.cancelled()

    gloop.run_until_complete(asyncio.wait_for(main(), 10))


@pytest.mark.parametrize(
    "flags",
    [
        ["-std=c99", "-Wpedantic", "-DPy_LIMITED_API=0x030b0000"],  # the limited API
        ["-std=c11", "-DGREENHUB_NO_HELPERS"],  # the table only
    ],
)
def test_header_compiles_warning_free(tmp_path, flags):
    # Included and unused, or used: no warning with -Wall -Wextra (-Werror below).
    src = tmp_path / "use.c"
    src.write_text(
        "#include <Python.h>\n#include <greenhub.h>\n"
        "int use(void);\n"
        "int use(void) { return Greenhub_ImportCAPI() == NULL ? -1 : 0; }\n"
    )
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    inc = [f"-I{sysconfig.get_paths()['include']}", f"-I{greenhub.get_include()}"]
    cmd = [*cc, "-fsyntax-only", "-Wall", "-Wextra", "-Werror", *flags, *inc, str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _legacy_subinterpreter():
    """(module, id) of a new subinterpreter sharing the GIL, as greenhub supports."""
    try:
        import _interpreters as mod  # 3.13+

        return mod, mod.create("legacy")
    except ImportError:
        import _xxsubinterpreters as mod

        try:
            return mod, mod.create(isolated=False)  # 3.12
        except TypeError:
            return mod, mod.create()  # 3.11


def test_in_a_subinterpreter(built, tmp_path):
    # The table is process-wide: the pointer the extension imported in the main
    # interpreter serves a subinterpreter too, where each call finds that interpreter's
    # own greenhub._core (its own loops and module state).
    so = built["c"].__file__
    out = tmp_path / "out.txt"
    site = str(Path(greenhub.__file__).resolve().parent.parent)  # the greenhub under test
    code = f"""if True:
        import sys
        sys.path.insert(0, {site!r})
        import asyncio, importlib.util, math, socket, greenhub
        spec = importlib.util.spec_from_file_location("gh_capi_c", {so!r})
        ext = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ext)
        a, b = socket.socketpair()

        def waiter():
            return ext.in_vthread(), ext.wait_fd(a.fileno(), 1, math.inf), a.recv(5)

        async def value():
            return "awaited"

        async def main():
            task = greenhub.spawn(waiter)
            await asyncio.sleep(0.01)
            b.send(b"hello")
            return await task, await greenhub.spawn(ext.await_, value())

        result = greenhub.run(main())
        a.close()
        b.close()
        with open({str(out)!r}, "w") as f:
            f.write(repr(result))
    """
    mod, iid = _legacy_subinterpreter()
    try:
        err = mod.run_string(iid, code)
    finally:
        mod.destroy(iid)
    assert err is None
    assert out.read_text() == repr(((True, R, b"hello"), "awaited"))


def test_helpers_before_import_raise(tmp_path):
    # An extension that forgot Greenhub_Import() gets RuntimeError, not a crash.
    src = tmp_path / "gh_capi_noimport.c"
    src.write_text(
        "#include <Python.h>\n#include <greenhub.h>\n"
        "static PyObject *wait(PyObject *m, PyObject *a) {\n"
        "    (void)m; (void)a;\n"
        "    return Greenhub_WaitFd(0, GREENHUB_READ, 0.0) < 0 ? NULL : Py_NewRef(Py_None);\n"
        "}\n"
        "static PyObject *aw(PyObject *m, PyObject *a) { (void)m; return Greenhub_Await(a); }\n"
        "static PyObject *inv(PyObject *m, PyObject *a) {\n"
        "    (void)m; (void)a;\n"
        "    return Greenhub_InVirtualThread() < 0 ? NULL : Py_NewRef(Py_None);\n"
        "}\n"
        "static PyMethodDef methods[] = {{\"wait\", wait, METH_NOARGS, NULL},\n"
        "    {\"aw\", aw, METH_O, NULL}, {\"inv\", inv, METH_NOARGS, NULL}, {NULL, NULL, 0, NULL}};\n"
        "static PyModuleDef def = {PyModuleDef_HEAD_INIT, .m_name = \"gh_capi_noimport\",\n"
        "    .m_methods = methods};\n"
        "PyMODINIT_FUNC PyInit_gh_capi_noimport(void) { return PyModule_Create(&def); }\n"
    )
    so = tmp_path / f"gh_capi_noimport{sysconfig.get_config_var('EXT_SUFFIX')}"
    _compile(src, so, werror=True)
    mod = _load("gh_capi_noimport", so)
    for call in (mod.wait, mod.inv, lambda: mod.aw(None)):
        with pytest.raises(RuntimeError, match=r"call Greenhub_Import\(\) first"):
            call()
