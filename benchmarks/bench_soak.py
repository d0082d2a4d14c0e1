#!/usr/bin/env python3
"""Soak test: does a greenhub server's memory stay flat under hours-like churn?

Two scenarios, each in a fresh greenhub server process whose RSS the parent samples
from /proc/PID/status every --interval seconds (10):

  conns     a line-protocol TCP server on loopback with five kinds of handler, one
            listener each (see HANDLERS), against a separate client process that
            keeps --conns (10,000) connections open and replaces them continuously:
            each connection makes a few requests with think time between them, then
            ends gracefully, with an RST (idle or with a request in flight), with a
            half-close (pipelined requests, shutdown(SHUT_WR), read to EOF) or by
            asking the server to close.  The client runs on the stock asyncio loop
            by default (--client-loop), so a greenhub bug cannot hide on both sides.
  vthreads  waves of --wave (10,000) virtual threads, greenhub.spawn(fn), each
            parking in greenhub.await_() on a timer, a future, a nested await_, a
            future that fails, a cancellation or a timeout, then finishing; waves
            follow each other for the whole run.

Each sample is VmRSS and the peak RSS since the previous sample (VmHWM, reset through
/proc/PID/clear_refs).  After the run the client stops, the server is told to stop
(SIGTERM), closes what is left, returns from greenhub.run() (which closes the loop),
collects garbage and reports greenhub._core.debug_counters().  A scenario passes when
those counters are all zero, neither side saw an unexpected error, and RSS is flat
after warm-up (the first --warmup share of the run): the least-squares slope of the
per-interval peak RSS over the second half is not above --max-growth (1 %) of its
median per 10 minutes by more than two standard errors of the slope.  To tell a leak
from an allocator that keeps freed memory, the server also records its live memory
right after each full garbage collection (Python blocks, glibc malloc's bytes in use).

    python3 benchmarks/bench_soak.py                  # both scenarios, 10 minutes each
    python3 benchmarks/bench_soak.py --quick          # both, 30 s each, smaller sizes
    python3 benchmarks/bench_soak.py --scenario vthreads --minutes 3
    python3 benchmarks/bench_soak.py --plot benchmarks/results/soak-conns.json

Each scenario writes benchmarks/results/soak-<scenario>.json (machine, parameters, raw
samples, the server's own periodic statistics, the verdict) and, when matplotlib can
be imported, soak-<scenario>.png; --plot redraws PNGs from JSON files.  The exit status
is 0 when every scenario passed.
"""

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

from _common import MARK, REPO, emit, log, machine_info, use_greenhub_path, worker_env, write_json

RESULTS = os.path.join(REPO, "benchmarks", "results")

# The server's handlers, one listener each.  Every one speaks the same protocol.
HANDLERS = {
    "streams": "asyncio.start_server; async handler: readline / write / drain",
    "streams_sync": "asyncio.start_server; the handler calls a sync function that does "
    "greenhub.await_(reader.readline()) / write / greenhub.await_(drain())",
    "protocol": "loop.create_server with an asyncio.Protocol (data_received / write)",
    "green": "greenhub.socket: an acceptor virtual thread, greenhub.spawn per connection, "
    "blocking-style recv / sendall, greenhub.sleep",
    "sock": "plain sockets: an acceptor virtual thread doing greenhub.await_(loop.sock_accept), "
    "greenhub.spawn per connection, greenhub.await_(loop.sock_recv / sock_sendall)",
}
KINDS = tuple(HANDLERS)

# The protocol: one request per line, answered in order.
#   E<payload>\n   echo: the reply is the request line itself
#   B<n>\n         bulk: the reply is "B", n bytes of "x", "\n" (n <= MAX_BULK)
#   S<ms>\n        the handler sleeps ms milliseconds (the Protocol handler does not),
#                  then replies "S\n"
#   Q\n            the server closes the connection (no reply)
MAX_BULK = 256 * 1024
BULK = b"x" * MAX_BULK
MAX_LINE = 64 * 1024

# How a client connection ends (weights).
ENDINGS = {
    "close": 50,  # after its requests: close(), wait for the close
    "rst_idle": 10,  # SO_LINGER 0 and abort(): an RST, nothing in flight
    "rst_busy": 10,  # a request (often a bulk one) sent, then an RST without reading
    "half": 20,  # pipelined requests, shutdown(SHUT_WR), read every reply and EOF
    "server": 10,  # "Q": the server closes, the client reads EOF
}

# What the virtual threads of the vthreads scenario park on.
VARIANTS = {
    "timer": "greenhub.await_(asyncio.sleep(d))",
    "future": "greenhub.await_(fut), fut resolved by loop.call_later(d, ...)",
    "nested": "greenhub.await_(coro) where coro calls sync code that calls greenhub.await_ again",
    "sleep": "greenhub.sleep(d)",
    "error": "greenhub.await_(fut), fut failed by call_later(d, ...); the exception ends the task",
    "cancel": "greenhub.await_(a future nobody resolves); the task is cancelled after d",
    "timeout": "greenhub.await_(asyncio.wait_for(never, d)) -> TimeoutError, caught",
}
MAX_DELAY = 0.05  # seconds a virtual thread stays parked, at most

STALL_S = 2.0  # a loop that did not run for this long: starved by the machine, or busy

PROFILES = {
    # The defaults of the options left unset: minutes per scenario, concurrent
    # connections, virtual threads per wave, seconds between samples, mean think time
    # and requests per connection (a connection lives about think x requests seconds),
    # seconds over which the client opens its connections.
    "full": {
        "minutes": 10.0,
        "conns": 10000,
        "wave": 10000,
        "interval": 10.0,
        "think": 2.0,
        "requests": 10,
        "ramp": 10.0,
        "judge_rss": True,
    },
    "quick": {
        "minutes": 0.5,
        "conns": 2000,
        "wave": 2000,
        "interval": 2.0,
        "think": 0.5,
        "requests": 4,
        "ramp": 2.0,
        # Half a minute is too short for RSS to settle (the first connections are not
        # yet replaced): only the counters and errors are judged.
        "judge_rss": False,
    },
}


def now():
    return time.monotonic()


def ignore_sigint():
    # Ctrl-C reaches the whole process group: the parent handles it and stops the
    # children with SIGTERM, so they get to report.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def orphaned(parent_pid):
    return os.getppid() != parent_pid


async def heartbeat(stop, stats):
    """Record the stalls of this process's loop: STALL_S or more without running."""
    last = now()
    while not stop.is_set():
        await asyncio.sleep(0.25)
        t = now()
        if t - last >= STALL_S:
            stats.stalls.append([last, t - last])
        last = t


# --------------------------------------------------------------------------
# Server side (greenhub loop)
# --------------------------------------------------------------------------


def respond(line):
    """(reply or None, close after it, seconds to wait first) for one request line."""
    op = line[:1]
    if op == b"E":
        return line, False, 0.0
    if op == b"B":
        n = min(int(line[1:-1]), MAX_BULK)
        return b"B" + BULK[:n] + b"\n", False, 0.0
    if op == b"S":
        return b"S\n", False, int(line[1:-1]) / 1000
    if op == b"Q":
        return None, True, 0.0
    raise ValueError("bad request %r" % line[:40])


class ServerStats:
    def __init__(self):
        self.kinds = {
            k: {"accepted": 0, "active": 0, "requests": 0, "resets": 0, "eof": 0, "closes": 0}
            for k in KINDS
        }
        self.errors = 0
        self.error_samples = []
        self.stalls = []  # [monotonic start, seconds]: the loop did not run

    def error(self, what):
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(what)


def read_lines(recv):
    """The request lines read with recv() (returns b"" at EOF), as a generator."""
    buf = b""
    while True:
        i = buf.find(b"\n")
        while i < 0:
            if len(buf) > MAX_LINE:
                raise ValueError("request line too long")
            data = recv()
            if not data:
                return
            start = len(buf)
            buf += data
            i = buf.find(b"\n", start)
        yield buf[: i + 1]
        buf = buf[i + 1 :]


class Server:
    """The conns scenario's server: five listeners on 127.0.0.1."""

    def __init__(self, loop, stats):
        self.loop = loop
        self.stats = stats
        self.servers = []  # asyncio Server objects
        self.listeners = []  # sockets the acceptor virtual threads own
        self.acceptors = []  # their tasks
        self.handlers = set()  # tasks of live connection handlers
        self.transports = set()  # live Protocol transports
        self.addrs = {}

    def track(self, task):
        self.handlers.add(task)
        task.add_done_callback(self.handlers.discard)

    # -- the handlers --------------------------------------------------------

    def _opened(self, kind):
        k = self.stats.kinds[kind]
        k["accepted"] += 1
        k["active"] += 1

    def _closed(self, kind, how):
        k = self.stats.kinds[kind]
        k["active"] -= 1
        k[how] += 1

    async def streams(self, reader, writer):
        self.track(asyncio.current_task())
        self._opened("streams")
        how = "eof"
        try:
            while True:
                line = await reader.readline()
                if not line.endswith(b"\n"):
                    break
                self.stats.kinds["streams"]["requests"] += 1
                reply, close, delay = respond(line)
                if delay:
                    await asyncio.sleep(delay)
                if reply is not None:
                    writer.write(reply)
                    await writer.drain()
                if close:
                    how = "closes"
                    break
        except ConnectionError:
            how = "resets"
        except Exception as e:
            self.stats.error("streams: %r" % e)
        finally:
            writer.close()
            self._closed("streams", how)

    async def streams_sync(self, reader, writer):
        # A coroutine handler that calls synchronous code: the task runs on a greenlet,
        # so that code can await_ the streams' coroutines.
        self.track(asyncio.current_task())
        self._opened("streams_sync")
        self._streams_sync(reader, writer)

    def _streams_sync(self, reader, writer):
        import greenhub

        await_ = greenhub.await_
        how = "eof"
        try:
            while True:
                line = await_(reader.readline())
                if not line.endswith(b"\n"):
                    break
                self.stats.kinds["streams_sync"]["requests"] += 1
                reply, close, delay = respond(line)
                if delay:
                    await_(asyncio.sleep(delay))
                if reply is not None:
                    writer.write(reply)
                    await_(writer.drain())
                if close:
                    how = "closes"
                    break
        except ConnectionError:
            how = "resets"
        except Exception as e:
            self.stats.error("streams_sync: %r" % e)
        finally:
            writer.close()
            self._closed("streams_sync", how)

    def protocol_factory(self):
        return LineProtocol(self)

    def green_acceptor(self, lsock):
        import greenhub

        while True:
            conn, _ = lsock.accept()
            self.track(greenhub.spawn(self.green, conn))

    def green(self, conn):
        import greenhub

        self._opened("green")
        how = "eof"
        try:
            with conn:
                for line in read_lines(lambda: conn.recv(65536)):
                    self.stats.kinds["green"]["requests"] += 1
                    reply, close, delay = respond(line)
                    if delay:
                        greenhub.sleep(delay)
                    if reply is not None:
                        conn.sendall(reply)
                    if close:
                        how = "closes"
                        break
        except ConnectionError:
            how = "resets"
        except Exception as e:
            self.stats.error("green: %r" % e)
        finally:
            self._closed("green", how)

    def sock_acceptor(self, lsock):
        import greenhub

        loop = self.loop
        while True:
            conn, _ = greenhub.await_(loop.sock_accept(lsock))
            self.track(greenhub.spawn(self.sock, conn))

    def sock(self, conn):
        import greenhub

        await_ = greenhub.await_
        loop = self.loop
        self._opened("sock")
        how = "eof"
        try:
            with conn:
                for line in read_lines(lambda: await_(loop.sock_recv(conn, 65536))):
                    self.stats.kinds["sock"]["requests"] += 1
                    reply, close, delay = respond(line)
                    if delay:
                        await_(asyncio.sleep(delay))
                    if reply is not None:
                        await_(loop.sock_sendall(conn, reply))
                    if close:
                        how = "closes"
                        break
        except ConnectionError:
            how = "resets"
        except Exception as e:
            self.stats.error("sock: %r" % e)
        finally:
            self._closed("sock", how)

    # -- start and stop ------------------------------------------------------

    async def start(self, backlog, kinds):
        host = "127.0.0.1"
        for kind, start in (
            ("streams", lambda: asyncio.start_server(self.streams, host, 0, backlog=backlog)),
            (
                "streams_sync",
                lambda: asyncio.start_server(self.streams_sync, host, 0, backlog=backlog),
            ),
            (
                "protocol",
                lambda: self.loop.create_server(self.protocol_factory, host, 0, backlog=backlog),
            ),
        ):
            if kind in kinds:
                server = await start()
                self.servers.append(server)
                self.addrs[kind] = server.sockets[0].getsockname()[:2]
        if "green" in kinds:
            import greenhub
            import greenhub.socket as gsocket

            lsock = gsocket.create_server((host, 0), backlog=backlog)
            self.listeners.append(lsock)
            self.addrs["green"] = lsock.getsockname()[:2]
            self.acceptors.append(greenhub.spawn(self.green_acceptor, lsock))
        if "sock" in kinds:
            import greenhub

            lsock = socket.create_server((host, 0), backlog=backlog)
            lsock.setblocking(False)
            self.listeners.append(lsock)
            self.addrs["sock"] = lsock.getsockname()[:2]
            self.acceptors.append(greenhub.spawn(self.sock_acceptor, lsock))

    async def stop(self):
        """Stop listening, then end every connection still open (abruptly)."""
        for server in self.servers:
            server.close()
        for task in self.acceptors:
            task.cancel()
        await asyncio.gather(*self.acceptors, return_exceptions=True)
        for lsock in self.listeners:
            lsock.close()
        for transport in list(self.transports):
            transport.abort()
        handlers = list(self.handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()


class LineProtocol(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.kind = server.stats.kinds["protocol"]
        self.transport = None
        self.buf = b""
        self.how = "eof"

    def connection_made(self, transport):
        self.transport = transport
        self.server.transports.add(transport)
        self.server._opened("protocol")

    def data_received(self, data):
        self.buf += data
        while True:
            i = self.buf.find(b"\n")
            if i < 0:
                if len(self.buf) > MAX_LINE:
                    self.server.stats.error("protocol: request line too long")
                    self.transport.abort()
                return
            line, self.buf = self.buf[: i + 1], self.buf[i + 1 :]
            self.kind["requests"] += 1
            try:
                reply, close, _ = respond(line)  # the Protocol handler never sleeps
            except Exception as e:
                self.server.stats.error("protocol: %r" % e)
                self.transport.abort()
                return
            if reply is not None:
                self.transport.write(reply)
            if close:
                self.how = "closes"
                self.transport.close()
                return

    def eof_received(self):
        return False  # close once the replies are sent

    def connection_lost(self, exc):
        self.server.transports.discard(self.transport)
        self.server._closed("protocol", "resets" if exc is not None else self.how)
        self.transport = None


# -- the vthreads scenario ---------------------------------------------------


class Boom(Exception):
    pass


def vt_timer(i, d):
    import greenhub

    greenhub.await_(asyncio.sleep(d))
    return i


def vt_future(i, d):
    import greenhub

    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_later(d, fut.set_result, i)
    return greenhub.await_(fut)


async def _nested(i, d):
    await asyncio.sleep(0)
    return _nested_sync(i, d)


def _nested_sync(i, d):
    import greenhub

    greenhub.await_(asyncio.sleep(d))
    return i


def vt_nested(i, d):
    import greenhub

    return greenhub.await_(_nested(i, d))


def vt_sleep(i, d):
    import greenhub

    greenhub.sleep(d)
    return i


def vt_error(i, d):
    import greenhub

    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_later(d, fut.set_exception, Boom(i))
    greenhub.await_(fut)
    return None  # not reached


def vt_cancel(i, d):
    import greenhub

    greenhub.await_(asyncio.get_running_loop().create_future())  # never resolved
    return None  # not reached: the wave cancels the task


def vt_timeout(i, d):
    import greenhub

    never = asyncio.get_running_loop().create_future()
    try:
        greenhub.await_(asyncio.wait_for(never, d))
    except TimeoutError:
        return i
    return None


VT_FUNCS = {
    "timer": vt_timer,
    "future": vt_future,
    "nested": vt_nested,
    "sleep": vt_sleep,
    "error": vt_error,
    "cancel": vt_cancel,
    "timeout": vt_timeout,
}
assert set(VT_FUNCS) == set(VARIANTS)


class WaveStats:
    def __init__(self):
        self.waves = 0
        self.vthreads = 0
        self.ok = dict.fromkeys(VARIANTS, 0)
        self.errors = 0
        self.error_samples = []
        self.wave_seconds = []  # wall time of recent waves
        self.stalls = []  # [monotonic start, seconds]: the loop did not run

    def error(self, what):
        self.errors += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(what)


def check_vthread(variant, i, result, stats):
    if variant == "error":
        good = isinstance(result, Boom) and result.args == (i,)
    elif variant == "cancel":
        good = isinstance(result, asyncio.CancelledError)
    else:
        good = result == i
    if good:
        stats.ok[variant] += 1
    else:
        stats.error("%s #%d: %r" % (variant, i, result))


async def run_waves(stop, wave, max_gap, stats, rng):
    import greenhub

    loop = asyncio.get_running_loop()
    names = list(VARIANTS)
    while not stop.is_set():
        t0 = now()
        tasks = []
        for i in range(wave):
            variant = names[i % len(names)]
            d = rng.uniform(0, MAX_DELAY)
            task = greenhub.spawn(VT_FUNCS[variant], i, d)
            if variant == "cancel":
                loop.call_later(d, task.cancel)
            tasks.append(task)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for i, result in enumerate(results):
            check_vthread(names[i % len(names)], i, result, stats)
        del tasks, results, result
        stats.waves += 1
        stats.vthreads += wave
        stats.wave_seconds.append(now() - t0)
        # A pause of random length between waves: the loop goes idle sometimes, which
        # is when it trims its pool of idle worker greenlets.
        try:
            await asyncio.wait_for(stop.wait(), rng.uniform(0, max_gap))
        except TimeoutError:
            pass


def malloc_info_fn():
    """A function returning glibc's malloc statistics (mallinfo2) as a dict of bytes,
    or None where there is no mallinfo2 (not glibc, or glibc before 2.33)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks")
    names += ("uordblks", "fordblks", "keepcost")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in names]

    mallinfo2.restype = MallInfo2

    def info():
        m = mallinfo2()
        # in_use: what malloc has handed out and not had back (heap chunks and mmapped
        # ones); from_os: what it holds from the system (its heaps and those mmaps);
        # the difference, free_held, is freed memory it keeps rather than returns.
        return {
            "in_use": m.uordblks + m.hblkhd,
            "from_os": m.arena + m.hblkhd,
            "free_held": m.fordblks,
        }

    return info


def server_main(args):
    ignore_sigint()
    use_greenhub_path(args.greenhub_path)
    import greenhub
    from greenhub import _core

    rng = random.Random(args.seed)
    parent = os.getppid()
    stats = ServerStats() if args.scenario == "conns" else WaveStats()

    def exception_handler(loop, context):
        stats.error("loop: %s %r" % (context.get("message"), context.get("exception")))

    # Live memory, free of the noise of garbage waiting for the collector: right after
    # each full collection the program runs anyway (none is forced), the Python blocks
    # allocated and malloc's in-use bytes.  Closed transports are cyclic garbage on
    # every asyncio loop (asyncio's transport keeps a bound method of itself), so
    # between full collections both include thousands of dead connections.
    malloc_info = malloc_info_fn()
    fullgc = []

    def on_gc(phase, info):
        if phase == "stop" and info["generation"] == 2:
            entry = {"t": now(), "blocks": sys.getallocatedblocks()}
            if malloc_info is not None:
                entry.update(malloc_info())
            fullgc.append(entry)

    gc.callbacks.append(on_gc)

    def report(event):
        doc = {
            "event": event,
            "t": now(),
            "counters": _core.debug_counters(),
            "blocks": sys.getallocatedblocks(),
            "tasks": len(asyncio.all_tasks()) if event != "exit" else 0,
            "gc_collections": [g["collections"] for g in gc.get_stats()],
            "errors": stats.errors,
            "error_samples": stats.error_samples,
            "malloc": malloc_info() if malloc_info is not None else None,
            "fullgc": fullgc[:],
            "stalls": stats.stalls,
        }
        fullgc.clear()
        if isinstance(stats, ServerStats):
            doc["kinds"] = stats.kinds
        else:
            doc["waves"] = stats.waves
            doc["vthreads"] = stats.vthreads
            doc["ok"] = stats.ok
            if stats.wave_seconds:
                doc["wave_seconds_median"] = statistics.median(stats.wave_seconds)
                stats.wave_seconds.clear()
        emit(doc)

    trim = None
    if args.malloc_trim:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim  # glibc: return free heap pages to the system

    async def reporter(stop):
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), args.interval)
            except TimeoutError:
                if trim is not None:
                    trim(0)
                report("stats")
                if orphaned(parent):
                    stop.set()

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(exception_handler)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        rep = asyncio.ensure_future(reporter(stop))
        beat = asyncio.ensure_future(heartbeat(stop, stats))
        if args.scenario == "conns":
            server = Server(loop, stats)
            await server.start(args.backlog, args.handlers.split(","))
            emit({"event": "ready", "addrs": server.addrs})
            await stop.wait()
            report("stopping")
            await server.stop()
            del server
        else:
            emit({"event": "ready"})
            await run_waves(stop, args.wave, args.gap, stats, rng)
        await rep
        await beat
        report("stopped")  # every connection or wave is over; the loop is still open
        loop.remove_signal_handler(signal.SIGTERM)

    if args.server_loop == "greenhub":
        greenhub.run(main())
    else:  # for comparison: the stock loop, with the handlers it can run
        asyncio.run(main())
    # The loop is closed: collect, then every counter must be back to zero.
    gc.collect()
    gc.callbacks.remove(on_gc)
    report("exit")
    return 0


# --------------------------------------------------------------------------
# Client side (separate process; the stock asyncio loop by default)
# --------------------------------------------------------------------------

LINGER_RST = struct.pack("ii", 1, 0)
# A run whose client or parent stood still this long at a time after warm-up is
# disturbed: its RSS slope is no evidence either way.
DISTURBED_S = 20.0


class ClientStats:
    def __init__(self):
        self.opened = 0
        self.active = 0
        self.ended = dict.fromkeys(ENDINGS, 0)
        self.requests = 0
        self.bytes_in = 0
        self.errors = {}  # kind of failure -> count
        self.error_samples = []
        self.max_latency = 0.0  # of one request, since the last report
        self.stalls = []  # [monotonic start, seconds]: the client's loop did not run
        self.stall_timeouts = 0  # timeouts that a stall of the client explains

    def stalled(self, since):
        """True if the client's loop stalled at some point after `since`."""
        return any(start + length > since for start, length in self.stalls)

    def error(self, what, detail):
        self.errors[what] = self.errors.get(what, 0) + 1
        if len(self.error_samples) < 10:
            self.error_samples.append("%s: %s" % (what, detail))


class ProtocolError(Exception):
    pass


def make_request(rng, letters, bulk, allow_sleep=True):
    """(request line, expected reply or its length); bulk replies of up to `bulk` bytes."""
    r = rng.random()
    if r < 0.05 and bulk:
        n = rng.randint(1, bulk)
        return b"B%d\n" % n, n + 2
    if r < 0.15 and allow_sleep:
        return b"S%d\n" % rng.randint(1, 50), b"S\n"
    start = rng.randrange(len(letters) - 2048)
    line = b"E" + letters[start : start + rng.randint(0, 2000)] + b"\n"
    return line, line


async def read_reply(reader, expect):
    line = await reader.readline()
    if not line.endswith(b"\n"):
        raise ProtocolError("EOF instead of a reply")
    if isinstance(expect, int):
        if len(line) != expect or line[:1] != b"B":
            raise ProtocolError("bulk reply of %d bytes, expected %d" % (len(line), expect))
    elif line != expect:
        raise ProtocolError("reply %r, expected %r" % (line[:40], expect[:40]))
    return len(line)


async def one_connection(addr, args, rng, letters, stats):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(*addr, limit=2 * MAX_BULK), args.timeout
    )
    stats.opened += 1
    stats.active += 1
    ending = rng.choices(list(ENDINGS), weights=list(ENDINGS.values()))[0]
    done = False
    try:
        for _ in range(rng.randint(1, 2 * args.requests - 1)):
            await asyncio.sleep(rng.uniform(0, 2 * args.think))
            req, expect = make_request(rng, letters, args.bulk)
            t0 = now()
            writer.write(req)
            async with asyncio.timeout(args.timeout):
                stats.bytes_in += await read_reply(reader, expect)
            stats.requests += 1
            stats.max_latency = max(stats.max_latency, now() - t0)
        if ending == "close":
            writer.close()
            await writer.wait_closed()
        elif ending == "rst_idle":
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST
            )
            writer.transport.abort()
        elif ending == "rst_busy":
            if args.bulk and rng.random() < 0.5:
                req = b"B%d\n" % args.bulk
            else:
                req = make_request(rng, letters, args.bulk)[0]
            writer.write(req)
            await asyncio.sleep(rng.choice((0, 0, 0.001, 0.01)))
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST
            )
            writer.transport.abort()
        elif ending == "half":
            reqs = [
                make_request(rng, letters, args.bulk, allow_sleep=False)
                for _ in range(rng.randint(1, 8))
            ]
            writer.write(b"".join(r for r, _ in reqs))
            writer.write_eof()
            async with asyncio.timeout(args.timeout):
                for _, expect in reqs:
                    stats.bytes_in += await read_reply(reader, expect)
                    stats.requests += 1
                if await reader.read(1) != b"":
                    raise ProtocolError("data after the last reply")
            writer.close()
            await writer.wait_closed()
        else:  # "server"
            writer.write(b"Q\n")
            async with asyncio.timeout(args.timeout):
                if await reader.read(1) != b"":
                    raise ProtocolError("data instead of EOF after Q")
            writer.close()
            await writer.wait_closed()
        stats.ended[ending] += 1
        done = True
    finally:
        stats.active -= 1
        if not done:
            writer.transport.abort()


async def client_slot(n, addrs, args, stop, stats, seed, letters):
    rng = random.Random(seed)
    await asyncio.sleep(args.ramp * n / args.conns)  # ramp up
    kinds = [k for k in KINDS if k in addrs]
    while not stop.is_set():
        kind = kinds[rng.randrange(len(kinds))]
        try:
            await one_connection(addrs[kind], args, rng, letters, stats)
        except asyncio.CancelledError:
            raise
        except TimeoutError as e:
            # A machine that starves the client for longer than the timeout expires its
            # deadlines however fast the server is: that says nothing about the server.
            if stats.stalled(now() - args.timeout - STALL_S):
                stats.stall_timeouts += 1
            else:
                stats.error("timeout " + kind, repr(e))
        except ProtocolError as e:
            stats.error("protocol " + kind, str(e))
        except OSError as e:
            stats.error("%s %s" % (type(e).__name__, kind), repr(e))
            await asyncio.sleep(0.1)  # e.g. out of ephemeral ports: do not spin


def client_main(args):
    ignore_sigint()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _common import loop_factory

    if args.client_loop == "greenhub":
        use_greenhub_path(args.greenhub_path)
    addrs = {k: tuple(v) for k, v in json.loads(args.addrs).items()}
    stats = ClientStats()
    parent = os.getppid()
    rng = random.Random(args.seed + 1)
    letters = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(1 << 16))

    def report(event):
        emit(
            {
                "event": event,
                "t": now(),
                "opened": stats.opened,
                "active": stats.active,
                "ended": stats.ended,
                "requests": stats.requests,
                "bytes_in": stats.bytes_in,
                "errors": stats.errors,
                "error_samples": stats.error_samples,
                "max_latency": stats.max_latency,
                "stalls": stats.stalls,
                "stall_timeouts": stats.stall_timeouts,
            }
        )
        stats.max_latency = 0.0

    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        slots = [
            asyncio.ensure_future(client_slot(n, addrs, args, stop, stats, args.seed + n, letters))
            for n in range(args.conns)
        ]
        slots.append(asyncio.ensure_future(heartbeat(stop, stats)))
        emit({"event": "ready", "loop": "%s.%s" % (type(loop).__module__, type(loop).__name__)})
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), args.interval)
            except TimeoutError:
                report("stats")
                if orphaned(parent):
                    break
        for slot in slots:
            slot.cancel()
        await asyncio.gather(*slots, return_exceptions=True)
        report("exit")

    with asyncio.Runner(loop_factory=loop_factory(args.client_loop)) as runner:
        runner.run(main())
    return 0


# --------------------------------------------------------------------------
# Parent: runs a scenario, samples the server's RSS, judges
# --------------------------------------------------------------------------


def raise_nofile(needed):
    """Raise RLIMIT_NOFILE's soft limit to the hard one (children inherit it); as root,
    raise the hard limit too when it is below `needed`.  Returns what was done."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = (soft, hard)
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            hard = needed
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    after = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {"before": before, "after": after, "needed": needed}


def proc_status(pid):
    """The memory lines of /proc/PID/status in KiB (VmRSS, RssAnon, VmHWM...), Threads."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith(("Vm", "Rss")) or key == "Threads":
                out[key] = int(value.split()[0])
    return out


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / hz


class Child:
    """A child process speaking the MARK protocol on stdout; a thread collects its
    messages; stderr goes to a file whose tail is reported if it fails."""

    def __init__(self, argv, name, out):
        self.name = name
        self.messages = []
        self.cond = threading.Condition()
        self.stderr_path = os.path.join(out, "soak-%s.stderr" % name)
        os.makedirs(out, exist_ok=True)
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable] + argv,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            env=worker_env(),
            text=True,
        )
        self.pid = self.proc.pid
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(MARK):
                msg = json.loads(line[len(MARK) :])
                msg["t_parent"] = now()
                with self.cond:
                    self.messages.append(msg)
                    self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_event(self, event, timeout):
        deadline = now() + timeout
        with self.cond:
            while True:
                for msg in self.messages:
                    if msg["event"] == event:
                        return msg
                if self.proc.poll() is not None and not self.thread.is_alive():
                    raise RuntimeError(
                        "%s exited (%s) before %r; %s"
                        % (self.name, self.proc.returncode, event, self.tail())
                    )
                left = deadline - now()
                if left <= 0:
                    raise RuntimeError(
                        "%s: no %r within %.0f s; %s" % (self.name, event, timeout, self.tail())
                    )
                self.cond.wait(min(left, 1.0))

    def events(self, event):
        with self.cond:
            return [m for m in self.messages if m["event"] == event]

    def tail(self):
        self.stderr.flush()
        try:
            with open(self.stderr_path) as f:
                return "stderr: " + f.read()[-2000:]
        except OSError:
            return "no stderr"

    def alive(self):
        return self.proc.poll() is None

    def stop(self, timeout):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(5)
        self.stderr.close()
        if os.path.getsize(self.stderr_path) == 0:
            os.unlink(self.stderr_path)  # kept only when there is something to read


def fit(samples):
    """Least-squares line through (t s, y KiB): (slope, its standard error) in KiB/min."""
    n = len(samples)
    if n < 3:
        return None, None
    mt = statistics.fmean(t for t, _ in samples)
    my = statistics.fmean(y for _, y in samples)
    sxx = sum((t - mt) ** 2 for t, _ in samples)
    if sxx == 0:
        return None, None
    slope = sum((t - mt) * (y - my) for t, y in samples) / sxx
    resid = sum((y - my - slope * (t - mt)) ** 2 for t, y in samples)
    return 60 * slope, 60 * (resid / (n - 2) / sxx) ** 0.5


def work_rate(doc, t_from):
    """(units, per minute) of work the server did from t_from to the end of the run:
    connections accepted, or virtual threads finished."""
    stats = [m for m in doc.get("server_stats", []) if m["event"] == "stats"]
    if doc["scenario"] == "conns":
        pts = [(m["t"], sum(k["accepted"] for k in m["kinds"].values())) for m in stats]
        unit = "connection"
    else:
        pts = [(m["t"], m["vthreads"]) for m in stats]
        unit = "virtual thread"
    pts = [(t, n) for t, n in pts if t >= t_from]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return unit, None
    return unit, 60 * (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


def judge(doc, max_growth_pct):
    """The verdict: RSS flat over the second half, counters zero, no errors.

    RSS is judged by its per-interval peak (VmHWM, which the parent resets after
    each sample): an instantaneous VmRSS reading depends on where in its cycle the
    workload happens to be (mid-wave or between waves), the peak does not, and a
    leak raises both.  Without peaks (clear_refs refused) VmRSS is used."""
    p = doc["parameters"]
    run_s = p["minutes"] * 60
    run = [s for s in doc["samples"] if s["phase"] == "run"]
    key = "peak" if run and all(s.get("peak") for s in run[1:]) else "VmRSS"
    v = {"series": key}
    for k in ("VmRSS", "peak"):
        pts = [(s["t"], s[k]) for s in run[1:] if s.get(k)]
        second = [(t, y) for t, y in pts if t >= run_s / 2]
        slope, se = fit(second)
        v[k] = {
            "slope_second_half_kib_per_min": slope,
            "slope_stderr_kib_per_min": se,
            "slope_after_warmup_kib_per_min": fit([x for x in pts if x[0] >= p["warmup_s"]])[0],
            "median_second_half_kib": statistics.median(y for _, y in second) if second else None,
        }
    after_warmup = [s for s in run if s["t"] >= p["warmup_s"]]
    if after_warmup:
        v["rss_at_warmup_end_kib"] = after_warmup[0]["VmRSS"]
        v["rss_max_after_warmup_kib"] = max(s.get(key) or s["VmRSS"] for s in after_warmup)
        v["rss_end_kib"] = run[-1]["VmRSS"]
    slope = v[key]["slope_second_half_kib_per_min"]
    se = v[key]["slope_stderr_kib_per_min"]
    median = v[key]["median_second_half_kib"]
    if not p.get("judge_rss", True):
        v["rss_not_judged"] = "too short a run for RSS to settle (--quick)"
    v["criterion"] = (
        "the %s RSS is flat after warm-up unless its least-squares slope over the second "
        "half of the run is above %g %% of its median per 10 minutes by more than two "
        "standard errors of the slope"
        % ("per-interval peak" if key == "peak" else "VmRSS", max_growth_pct)
    )
    problems = []
    # Disturbances: the longest time after warm-up that the machine starved the
    # client's loop, or the parent's sampling.  Stalls of a few seconds are the usual
    # noise of a shared machine; a client that stops for a minute and then catches up
    # at once changes the server's memory profile for reasons unrelated to the server.
    client = doc.get("client_exit") or {}
    stalls = [x for x in client.get("stalls") or () if x[0] + x[1] >= p["warmup_s"]]
    longest = max((length for _, length in stalls), default=0.0)
    late = max((s.get("late_s", 0) for s in run if s["t"] >= p["warmup_s"]), default=0)
    v["client_stalls"] = client.get("stalls") or []
    v["client_longest_stall_s"] = longest
    v["parent_late_max_s"] = late
    disturbed = []
    if longest >= DISTURBED_S:
        disturbed.append("the client's loop stood still for %.0f s" % longest)
    if late >= DISTURBED_S:
        disturbed.append("a sample was taken %.0f s late" % late)
    v["disturbed"] = disturbed
    unit, rate = work_rate(doc, run_s / 2)
    if rate:
        v["work_per_min"] = rate
        v["work_unit"] = unit
    if slope is None or median is None:
        problems.append("too few samples in the second half to fit a slope")
    else:
        v["slope_kib_per_min"] = slope
        v["slope_stderr_kib_per_min"] = se
        v["limit_kib_per_min"] = median * max_growth_pct / 100 / 10
        v["growth_pct_per_10min"] = 100 * slope * 10 / median
        # The smallest slope that fails: what the run could detect.
        v["fails_above_kib_per_min"] = v["limit_kib_per_min"] + 2 * se
        if rate:
            # The same as a steady leak per unit of work.
            v["bytes_per_unit_at_slope"] = 1024 * slope / rate
            v["bytes_per_unit_detectable"] = 1024 * v["fails_above_kib_per_min"] / rate
        if slope > v["fails_above_kib_per_min"] and p.get("judge_rss", True):
            growth = "RSS grows %.1f +- %.1f KiB/min over the second half (limit %.1f)" % (
                slope,
                se,
                v["limit_kib_per_min"],
            )
            if disturbed:
                v["inconclusive"] = growth + ", but the run was disturbed"
            else:
                problems.append(growth)
    # Diagnostics, not judged: live memory right after each full collection, as its
    # lowest value in each reporting interval.  The lowest, because a collection can
    # come at any point of the workload's cycle (10,000 parked virtual threads, or
    # none): the floor is what is left between cycles, and a leak raises it.
    groups = [
        [e for e in m.get("fullgc") or () if run_s / 2 <= e["t"] <= run_s]
        for m in doc.get("server_stats", [])
    ]
    groups = [g for g in groups if g]
    live = {"full_collections": sum(len(g) for g in groups)}
    for k, scale in (("blocks", 1), ("in_use", 1 / 1024)):
        pts = [
            min(((e["t"], e[k] * scale) for e in g if k in e), key=lambda x: x[1], default=None)
            for g in groups
        ]
        pts = [x for x in pts if x is not None]
        sl, sl_se = fit(pts)
        if sl is not None:
            live[k] = {
                "slope_per_min": sl,
                "stderr": sl_se,
                "median": statistics.median(y for _, y in pts),
            }
            if rate:
                live[k]["per_unit"] = sl / rate * (1 if k == "blocks" else 1024)
    v["live_after_full_gc"] = live
    exit_msg = doc.get("server_exit") or {}
    counters = exit_msg.get("counters")
    if counters is None:
        problems.append("the server did not report its counters on exit")
    elif any(counters.values()):
        problems.append(
            "debug counters not zero after close: %s" % {k: n for k, n in counters.items() if n}
        )
    if exit_msg.get("errors"):
        problems.append(
            "server errors: %d, e.g. %s" % (exit_msg["errors"], exit_msg["error_samples"][:3])
        )
    if client.get("errors"):
        problems.append(
            "client errors: %s, e.g. %s" % (client["errors"], client["error_samples"][:3])
        )
    if doc["scenario"] == "conns" and not client:
        problems.append("the client did not report")
    v["problems"] = problems
    v["passed"] = not problems and "inconclusive" not in v
    v["result"] = "FAIL" if problems else "INCONCLUSIVE" if "inconclusive" in v else "PASS"
    return v


def run_scenario(scenario, args, nofile):
    me = os.path.abspath(__file__)
    common = ["--interval", str(args.interval), "--seed", str(args.seed)]
    common += ["--greenhub-path", args.greenhub_path]
    params = {
        "minutes": args.minutes,
        "interval_s": args.interval,
        "warmup_s": args.warmup * args.minutes * 60,
        "seed": args.seed,
        "max_growth_pct": args.max_growth,
        "judge_rss": args.judge_rss,
    }
    if scenario == "conns":
        params.update(
            conns=args.conns,
            think_mean_s=args.think,
            requests_mean=args.requests,
            ramp_s=args.ramp,
            timeout_s=args.timeout,
            backlog=args.backlog,
            client_loop=args.client_loop,
            server_loop=args.server_loop,
            bulk_max=args.bulk,
            malloc_trim=args.malloc_trim,
            handlers_used=args.handlers.split(","),
            handlers=HANDLERS,
            endings=ENDINGS,
        )
    else:
        params.update(wave=args.wave, max_gap_s=args.gap, max_park_s=MAX_DELAY, variants=VARIANTS)
    server_argv = [me, "--role", "server", "--scenario", scenario, "--backlog", str(args.backlog)]
    server_argv += ["--handlers", args.handlers, "--server-loop", args.server_loop]
    server_argv += ["--malloc-trim"] if args.malloc_trim else []
    server_argv += ["--wave", str(args.wave), "--gap", str(args.gap)] + common
    server = Child(server_argv, scenario + "-server", args.out)
    client = None
    samples = []
    doc = {
        "benchmark": "bench_soak.py",
        "scenario": scenario,
        "machine": machine_info(nofile=nofile, loadavg_start=os.getloadavg()),
        "parameters": params,
    }

    def sample(phase):
        st = proc_status(server.pid)
        st.update(t=now() - t0, phase=phase, cpu_s=proc_cpu(server.pid))
        st["loadavg1"] = os.getloadavg()[0]
        # VmHWM is the peak RSS since the previous sample: reset it for the next one.
        st["peak"] = st.get("VmHWM") if samples else None
        try:
            with open("/proc/%d/clear_refs" % server.pid, "w") as f:
                f.write("5")
        except OSError:
            st["peak"] = None
        if client is not None and client.alive():
            st["client_cpu_s"] = proc_cpu(client.pid)
            st["client_VmRSS"] = proc_status(client.pid)["VmRSS"]
        samples.append(st)
        return st

    try:
        ready = server.wait_event("ready", 60)
        t0 = now()
        if scenario == "conns":
            client_argv = [me, "--role", "client", "--addrs", json.dumps(ready["addrs"])]
            client_argv += ["--conns", str(args.conns), "--think", str(args.think)]
            client_argv += ["--requests", str(args.requests), "--ramp", str(args.ramp)]
            client_argv += ["--timeout", str(args.timeout), "--client-loop", args.client_loop]
            client_argv += ["--bulk", str(args.bulk)]
            client = Child(client_argv + common, scenario + "-client", args.out)
            doc["client_loop"] = client.wait_event("ready", 60)["loop"]
        run_s = args.minutes * 60
        k = 0
        while True:
            st = sample("run")
            st["late_s"] = st["t"] - k * args.interval  # > 0: the parent was starved
            log(
                "[%s] %5.0f s  server RSS %7.1f MiB  cpu %6.1f s%s"
                % (
                    scenario,
                    st["t"],
                    st["VmRSS"] / 1024,
                    st["cpu_s"],
                    progress(server, client),
                )
            )
            for child in (server, client):
                if child is not None and not child.alive():
                    raise RuntimeError(
                        "%s died (%s); %s" % (child.name, child.proc.returncode, child.tail())
                    )
            k += 1
            if k * args.interval > run_s + 1e-9:
                break
            time.sleep(max(0.0, t0 + k * args.interval - now()))
        if client is not None:
            client.stop(120)
            doc["client_exit"] = strip_t(client.wait_event("exit", 1), t0)
            time.sleep(min(args.interval, 5))
            sample("after client")
        server.stop(120)
        doc["server_exit"] = strip_t(server.wait_event("exit", 1), t0)
    finally:
        for child in (client, server):
            if child is not None and child.alive():
                child.stop(10)
    doc["samples"] = samples
    doc["server_stats"] = [strip_t(m, t0) for m in server.messages if m["event"] != "ready"]
    if client is not None:
        doc["client_stats"] = [strip_t(m, t0) for m in client.messages if m["event"] != "ready"]
    doc["machine"]["loadavg_end"] = os.getloadavg()
    doc["verdict"] = judge(doc, args.max_growth)
    return doc


def strip_t(msg, t0):
    """The message with its times made relative to t0 (time.monotonic() is
    CLOCK_MONOTONIC, one clock for every process of the machine)."""
    msg = dict(msg)
    msg.pop("t_parent", None)
    msg["t"] -= t0
    if "fullgc" in msg:
        msg["fullgc"] = [dict(entry, t=entry["t"] - t0) for entry in msg["fullgc"]]
    if "stalls" in msg:
        msg["stalls"] = [[start - t0, length] for start, length in msg["stalls"]]
    return msg


def progress(server, client):
    parts = []
    s = server.events("stats")
    if s:
        last = s[-1]
        c = last["counters"]
        parts.append(
            "handles %d timers %d workers %d parked %d"
            % (c["handles"], c["timers"], c["workers"], c["parked"])
        )
        if "waves" in last:
            parts.append("waves %d vthreads %d" % (last["waves"], last["vthreads"]))
        if last["errors"]:
            parts.append("SERVER ERRORS %d" % last["errors"])
    if client is not None:
        cs = client.events("stats")
        if cs:
            last = cs[-1]
            parts.append(
                "conns %d opened %d requests %d"
                % (last["active"], last["opened"], last["requests"])
            )
            if last["errors"]:
                parts.append("CLIENT ERRORS %s" % last["errors"])
    return ("  " + "  ".join(parts)) if parts else ""


def summary_lines(doc):
    v = doc["verdict"]
    p = doc["parameters"]
    lines = ["== %s: %.1f min, warm-up %.0f s ==" % (doc["scenario"], p["minutes"], p["warmup_s"])]
    if v.get("rss_at_warmup_end_kib") is not None:
        lines.append(
            "server RSS: %.1f MiB at warm-up end, max %.1f MiB after it, %.1f MiB at the end"
            % (
                v["rss_at_warmup_end_kib"] / 1024,
                v["rss_max_after_warmup_kib"] / 1024,
                v["rss_end_kib"] / 1024,
            )
        )
    for key, label in (("peak", "peak per interval"), ("VmRSS", "VmRSS")):
        f = v.get(key) or {}
        if f.get("slope_second_half_kib_per_min") is not None:
            lines.append(
                "RSS slope over the second half (%s): %+.1f +- %.1f KiB/min%s"
                % (
                    label,
                    f["slope_second_half_kib_per_min"],
                    f["slope_stderr_kib_per_min"],
                    "  <- criterion" if key == v["series"] and not v.get("rss_not_judged") else "",
                )
            )
    if v.get("limit_kib_per_min") is not None:
        lines.append(
            "  = %+.2f %% of RSS per 10 min; limit %.1f KiB/min (%g %%), fails above %.1f"
            % (
                v["growth_pct_per_10min"],
                v["limit_kib_per_min"],
                doc["parameters"]["max_growth_pct"],
                v["fails_above_kib_per_min"],
            )
        )
    if v.get("bytes_per_unit_at_slope") is not None:
        lines.append(
            "  %.0f %ss/min: as a steady leak, %.2f bytes per %s (detectable: %.2f)"
            % (
                v["work_per_min"],
                v["work_unit"],
                v["bytes_per_unit_at_slope"],
                v["work_unit"],
                v["bytes_per_unit_detectable"],
            )
        )
    live = v.get("live_after_full_gc") or {}
    if "blocks" in live:
        text = (
            "live memory after full collections (%d in the second half; the lowest per "
            "%g s): Python blocks %+.0f +- %.0f/min"
            % (
                live["full_collections"],
                doc["parameters"]["interval_s"],
                live["blocks"]["slope_per_min"],
                live["blocks"]["stderr"],
            )
        )
        if "in_use" in live:
            text += ", malloc in use %+.1f +- %.1f KiB/min" % (
                live["in_use"]["slope_per_min"],
                live["in_use"]["stderr"],
            )
        lines.append(text)
    if v.get("problems") or v.get("inconclusive"):
        flat = [
            k
            for k in ("blocks", "in_use")
            if k in live and live[k]["slope_per_min"] <= 2 * live[k]["stderr"]
        ]
        if len(flat) == 2:
            lines.append(
                "  Python blocks and malloc's bytes in use did not grow: the growth is not "
                "live objects but memory kept after it was freed (see benchmarks/README.md)"
            )
    run = [x for x in doc["samples"] if x["phase"] == "run"]
    if len(run) > 1 and run[-1]["t"] > run[0]["t"]:
        span = run[-1]["t"] - run[0]["t"]
        text = "CPU over the run: server %.0f %% of one CPU" % (
            100 * (run[-1]["cpu_s"] - run[0]["cpu_s"]) / span
        )
        cl = [x for x in run if "client_cpu_s" in x]
        if len(cl) > 1 and cl[-1]["t"] > cl[0]["t"]:
            text += ", client %.0f %%" % (
                100 * (cl[-1]["client_cpu_s"] - cl[0]["client_cpu_s"]) / (cl[-1]["t"] - cl[0]["t"])
            )
        loads = [x["loadavg1"] for x in run if "loadavg1" in x]
        if loads:
            text += "; machine load average (1 min) %.1f-%.1f on %d CPUs" % (
                min(loads),
                max(loads),
                os.cpu_count(),
            )
        lines.append(text)
    ex = doc.get("server_exit") or {}
    if "counters" in ex:
        lines.append("debug counters after close + gc: %s" % ex["counters"])
    if doc["scenario"] == "conns" and doc.get("client_exit"):
        c = doc["client_exit"]
        lines.append(
            "client (%s): %d connections, %d requests, endings %s"
            % (doc.get("client_loop"), c["opened"], c["requests"], c["ended"])
        )
    if doc["scenario"] == "vthreads" and ex:
        lines.append(
            "virtual threads: %d in %d waves" % (ex.get("vthreads", 0), ex.get("waves", 0))
        )
    if v.get("rss_not_judged"):
        lines.append("RSS not judged: " + v["rss_not_judged"])
    stalls = (doc.get("server_exit") or {}).get("stalls") or []
    if stalls:
        start, length = max(stalls, key=lambda x: x[1])
        lines.append(
            "server loop stalls of %g s or more: %d, the longest %.1f s at %.0f s"
            % (STALL_S, len(stalls), length, start)
        )
    if v.get("disturbed"):
        lines.append("disturbed by the machine: " + "; ".join(v["disturbed"]))
    if doc.get("client_exit", {}).get("stall_timeouts"):
        lines.append(
            "client timeouts explained by stalls of the client (not errors): %d"
            % doc["client_exit"]["stall_timeouts"]
        )
    result = v.get("result", "PASS" if v["passed"] else "FAIL")
    why = v["problems"] or ([v["inconclusive"]] if "inconclusive" in v else [])
    lines.append("verdict: %s%s" % (result, (": " + "; ".join(why)) if why else ""))
    return lines


# --------------------------------------------------------------------------
# Plot (matplotlib; optional)
# --------------------------------------------------------------------------


def plot(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = doc["parameters"]
    v = doc["verdict"]
    run = [s for s in doc["samples"] if s["phase"] == "run"]
    ts = [s["t"] / 60 for s in run]
    rss = [s["VmRSS"] / 1024 for s in run]
    fig, (ax, axl, ax2) = plt.subplots(
        3, 1, figsize=(9, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1.6, 1.4]}
    )
    ax.axvspan(0, p["warmup_s"] / 60, color="0.88", label="warm-up")
    ax.plot(ts, rss, "o", ms=3, color="C0", label="server VmRSS, every %g s" % p["interval_s"])
    peaks = [(s["t"] / 60, s["peak"] / 1024) for s in run if s.get("peak")]
    if peaks:
        ax.plot(
            [t for t, _ in peaks],
            [y for _, y in peaks],
            "-",
            lw=1,
            color="C1",
            label="peak RSS in each interval (VmHWM, reset per sample)",
        )
    half = p["minutes"] / 2
    key = v.get("series", "VmRSS")
    slope = (v.get(key) or {}).get("slope_second_half_kib_per_min")
    series = peaks if key == "peak" else list(zip(ts, rss, strict=True))
    second = [(t, y) for t, y in series if t >= half]
    if slope is not None and second:
        mt = statistics.fmean(t for t, _ in second)
        my = statistics.fmean(y for _, y in second)
        xs = [second[0][0], second[-1][0]]
        ax.plot(
            xs,
            [my + slope / 1024 * (x - mt) for x in xs],
            "r-",
            lw=2,
            label="fit over the second half: %+.1f KiB/min" % slope,
        )
    ax.axvline(half, color="0.6", lw=0.8, ls=":")
    rss = rss + [y for _, y in peaks]
    ax.set_ylabel("MiB")
    lo = min(rss) if rss else 0
    ax.set_ylim(bottom=0 if lo < 20 else lo * 0.8, top=max(rss) * 1.1 if rss else 1)
    ax.legend(loc="lower right", fontsize=8)
    verdict = v.get("result", "PASS" if v["passed"] else "FAIL")
    ax.set_title(
        "greenhub soak, %s scenario: server RSS every %g s (%s)"
        % (doc["scenario"], p["interval_s"], verdict),
        fontsize=10,
    )
    # Live memory right after each full collection (the server's gc callback).
    fullgc = [e for m in doc.get("server_stats", []) for e in m.get("fullgc") or ()]
    fullgc = [e for e in fullgc if 0 <= e["t"] <= p["minutes"] * 60]
    axl.axvspan(0, p["warmup_s"] / 60, color="0.88")
    axl.plot(
        [e["t"] / 60 for e in fullgc],
        [e["blocks"] / 1000 for e in fullgc],
        ".-",
        ms=3,
        lw=0.8,
        color="C2",
        label="Python blocks allocated (thousands)",
    )
    axl.set_ylabel("k blocks")
    axl.set_ylim(bottom=0)
    handles, labels = axl.get_legend_handles_labels()
    if any("in_use" in e for e in fullgc):
        axm = axl.twinx()
        axm.plot(
            [e["t"] / 60 for e in fullgc if "in_use" in e],
            [e["in_use"] / 2**20 for e in fullgc if "in_use" in e],
            ".-",
            ms=3,
            lw=0.8,
            color="C4",
            label="glibc malloc, bytes in use (MiB)",
        )
        axm.plot(
            [e["t"] / 60 for e in fullgc if "from_os" in e],
            [e["from_os"] / 2**20 for e in fullgc if "from_os" in e],
            "--",
            lw=0.8,
            color="C4",
            label="glibc malloc, bytes held from the system (MiB)",
        )
        axm.set_ylabel("MiB")
        axm.set_ylim(bottom=0)
        h2, l2 = axm.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    axl.legend(
        handles,
        labels,
        loc="lower right",
        fontsize=8,
        title_fontsize=8,
        title="live, right after each full garbage collection",
    )
    stats = [m for m in doc.get("server_stats", []) if m["event"] == "stats"]
    if doc["scenario"] == "conns":
        cs = [m for m in doc.get("client_stats", []) if m["event"] == "stats"]
        ax2.plot(
            [m["t"] / 60 for m in cs], [m["active"] for m in cs], label="client: open connections"
        )
        ax2.plot(
            [m["t"] / 60 for m in stats],
            [sum(k["active"] for k in m["kinds"].values()) for m in stats],
            "--",
            label="server: open connections",
        )
        ax2.set_ylabel("connections")
    else:
        prev = None
        xs, ys = [], []
        for m in stats:
            if prev is not None and m["t"] > prev["t"]:
                xs.append(m["t"] / 60)
                ys.append((m["vthreads"] - prev["vthreads"]) / (m["t"] - prev["t"]))
            prev = m
        ax2.plot(xs, ys, label="virtual threads finished per second")
        ax2.set_ylabel("per second")
    ax2.axvspan(0, p["warmup_s"] / 60, color="0.85")
    ax2.set_xlabel("minutes")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    log("wrote %s" % path)


def try_plot(doc, path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log(
            "matplotlib is not installed: no PNG (pip install matplotlib, then --plot %s)"
            % (os.path.splitext(path)[0] + ".json")
        )
        return
    plot(doc, path)


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scenario", default="conns,vthreads", help="conns, vthreads or both (comma-separated)"
    )
    ap.add_argument(
        "--quick", action="store_true", help="30 s per scenario, 2,000 connections, waves of 2,000"
    )
    ap.add_argument("--minutes", type=float, help="minutes per scenario (default 10; --quick 0.5)")
    ap.add_argument("--conns", type=int, help="concurrent client connections (10000)")
    ap.add_argument("--wave", type=int, help="virtual threads per wave (10000)")
    ap.add_argument("--interval", type=float, help="seconds between RSS samples (10; --quick 2)")
    ap.add_argument(
        "--warmup", type=float, default=0.2, help="share of the run that is warm-up (0.2)"
    )
    ap.add_argument(
        "--max-growth", type=float, default=1.0, help="pass limit: %% of RSS per 10 min (1)"
    )
    ap.add_argument(
        "--think", type=float, help="mean seconds between a connection's requests (2; --quick 0.5)"
    )
    ap.add_argument("--requests", type=int, help="mean requests per connection (10; --quick 4)")
    ap.add_argument(
        "--ramp", type=float, help="seconds over which the connections open (10; --quick 2)"
    )
    ap.add_argument(
        "--timeout", type=float, default=30.0, help="seconds a connect or a reply may take"
    )
    ap.add_argument("--backlog", type=int, default=4096)
    ap.add_argument("--gap", type=float, default=1.0, help="longest pause between waves, seconds")
    ap.add_argument(
        "--judge-rss",
        action=argparse.BooleanOptionalAction,
        help="let the RSS slope fail the run (default; not with --quick)",
    )
    ap.add_argument(
        "--handlers",
        default=",".join(KINDS),
        help="the server's handlers the client uses (default: all of %s)" % ",".join(KINDS),
    )
    ap.add_argument(
        "--server-loop",
        default="greenhub",
        choices=("greenhub", "asyncio"),
        help="asyncio: the stock loop, for comparison (handlers streams,protocol only)",
    )
    ap.add_argument(
        "--malloc-trim",
        action="store_true",
        help="the server calls glibc's malloc_trim(0) every interval (a diagnosis: RSS "
        "that then stays flat was freed memory malloc kept, not live memory)",
    )
    ap.add_argument(
        "--bulk",
        type=int,
        default=MAX_BULK,
        help="largest bulk reply a request asks for, bytes (%d; 0: none)" % MAX_BULK,
    )
    ap.add_argument("--client-loop", default="asyncio", choices=("asyncio", "greenhub", "uvloop"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=RESULTS, help="directory for the JSON and PNG files")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument(
        "--plot",
        nargs="+",
        metavar="JSON",
        help="only judge these result files again (the verdict in each is replaced) and "
        "draw their PNGs",
    )
    ap.add_argument("--greenhub-path", default=REPO)
    ap.add_argument("--role", choices=("server", "client"), help=argparse.SUPPRESS)
    ap.add_argument("--addrs", help=argparse.SUPPRESS)
    args = ap.parse_args()

    profile = PROFILES["quick" if args.quick else "full"]
    for key, value in profile.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.role == "server":
        return server_main(args)
    if args.role == "client":
        return client_main(args)
    if args.plot:
        for path in args.plot:
            with open(path) as f:
                doc = json.load(f)
            # Judged again from the raw samples, with this version's criterion.
            doc["verdict"] = judge(doc, doc["parameters"]["max_growth_pct"])
            write_json(path, doc)
            for line in summary_lines(doc):
                log(line)
            plot(doc, os.path.splitext(path)[0] + ".png")
        return 0

    scenarios = [s for s in args.scenario.split(",") if s]
    if not 0 <= args.bulk <= MAX_BULK:
        ap.error("--bulk: 0 to %d" % MAX_BULK)
    handlers = args.handlers.split(",")
    if not handlers or set(handlers) - set(KINDS):
        ap.error("--handlers: choose from %s" % ",".join(KINDS))
    if args.server_loop == "asyncio" and (
        set(handlers) - {"streams", "protocol"} or "vthreads" in scenarios
    ):
        ap.error("the stock loop runs the conns scenario with --handlers streams,protocol only")
    for s in scenarios:
        if s not in ("conns", "vthreads"):
            ap.error("unknown scenario %r" % s)
    nofile = raise_nofile(args.conns + 1024 if "conns" in scenarios else 1024)
    log("RLIMIT_NOFILE: %s -> %s" % (nofile["before"], nofile["after"]))
    if "conns" in scenarios and nofile["after"][0] < args.conns + 256:
        log("RLIMIT_NOFILE %d is too low for %d connections" % (nofile["after"][0], args.conns))
        return 2
    ok = True
    for s in scenarios:
        try:
            doc = run_scenario(s, args, nofile)
        except KeyboardInterrupt:
            log("interrupted")
            return 130
        except RuntimeError as e:  # a child died or did not answer
            log("%s: FAILED: %s" % (s, e))
            ok = False
            continue
        path = os.path.join(args.out, "soak-%s.json" % s)
        write_json(path, doc)
        if not args.no_plot:
            try_plot(doc, os.path.splitext(path)[0] + ".png")
        for line in summary_lines(doc):
            log(line)
        ok = ok and doc["verdict"]["passed"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
