"""The differential fuzzer (tests/fuzz_loop.py), quick profile: a fixed set of seeds.

Each seed is a program of random loop operations run on greenhub and on the stock loop;
the two transcripts must be equal (see fuzz_loop's docstring for the vocabulary and the
normalisations).  A failing seed is shrunk for a while and reported with the smaller
program and the command that replays it.  The long profile is ``make fuzz``.
"""

import json
import time

import fuzz_loop
import pytest

import greenhub

pytestmark = pytest.mark.timeout(60)

OPS = 200
SEEDS = range(1000)


def _fail(seed, div):
    small = fuzz_loop.shrink(div.prog, deadline=time.monotonic() + 20)
    again = fuzz_loop.check(small)
    shown = again if again is not None else div
    pytest.fail(
        f"seed {seed} ({OPS} ops): greenhub and the stock loop differ.\n"
        f"{shown.describe()}\n"
        f"shrunk program ({len(small)} operations{'' if again else ', not failing: flaky?'}):\n"
        f"{json.dumps(small)}\n"
        f"replay: python tests/fuzz_loop.py --seeds {seed}:{seed + 1} --ops {OPS}",
        pytrace=False,
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_seed(seed, greenhub_leak_check):
    div = fuzz_loop.check_seed(seed, OPS)
    if div is not None:
        _fail(seed, div)


@pytest.mark.parametrize("kind", ["greenhub", "asyncio"])
def test_a_program_gives_one_transcript(kind, greenhub_leak_check):
    """The harness is deterministic: the same program twice on one kind of loop (the stock
    one replaying greenhub's I/O order) gives the same transcript, so a difference
    between the loops is the loops'."""
    prog = fuzz_loop.generate(7, OPS)
    orders = None
    if kind == "asyncio":
        g = fuzz_loop.Run("greenhub")
        g.run_program(prog)
        orders = fuzz_loop.io_orders_from_trace(g.trace)
    logs = [fuzz_loop.Run(kind, io_orders=orders).run_program(prog) for _ in range(2)]
    assert len(logs[0]) > 100
    assert logs[0] == logs[1]


def test_normalisations_are_needed():
    """Without normalisations 1 (equal deadlines) and 2 (I/O order) the loops' transcripts
    differ for a program that has such ties: the quick profile would not pass by
    comparing nothing."""
    prog = [
        ["pair", 0],
        ["pair", 1],
        ["add_reader", [0, 0], 0, [["recv", [0, 0], 100]], False],
        ["add_reader", [1, 0], 1, [["recv", [1, 0], 100]], False],
        ["run", 1],
        ["send", [0, 1], 5],
        ["send", [1, 1], 5],
        ["run", 2],
    ]
    assert fuzz_loop.check(prog) is None
    g = fuzz_loop.Run("greenhub")
    glog = g.run_program(prog)
    slog = fuzz_loop.Run("asyncio", io_orders={}).run_program(prog)  # the stock order
    io = [e[0] for e in glog if e[1] == "io"]
    assert sorted(io) == sorted(e[0] for e in slog if e[1] == "io")
    assert glog != slog  # libev's order is the reverse of epoll's here


def test_io_trace_lists_reported_fds_in_queue_order():
    """Loop._io_trace, the hook the fuzzer replays: each fd a poll reports, in the order
    its handles are queued; off (None) by default; only a list is accepted."""
    import socket

    loop = greenhub.new_event_loop()
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        assert loop._io_trace is None
        with pytest.raises(TypeError):
            loop._io_trace = ()
        ran = []
        for a, _b in pairs:
            a.setblocking(False)
            loop.add_reader(a.fileno(), lambda a=a: ran.append(a.recv(10) and a.fileno()))
        trace = loop._io_trace = []
        for _a, b in pairs:
            b.send(b"x")
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert sorted(trace) == sorted(a.fileno() for a, _b in pairs)
        assert ran == trace
        loop._io_trace = None
        assert loop._io_trace is None
    finally:
        for a, b in pairs:
            loop.remove_reader(a.fileno())
            a.close()
            b.close()
        loop.close()
