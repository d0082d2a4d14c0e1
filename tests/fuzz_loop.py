"""Randomized differential test: greenhub's loop against the stock asyncio loop.

A seed makes a *program*: a list of loop operations (timers, futures, tasks, virtual
threads, fd watchers on socket pairs, sock_recv/sock_sendall, call_soon_threadsafe from a
helper thread, stop/run restarts, exceptions in callbacks, close).  The program runs once on
greenhub and once on the stock loop; each run writes a *transcript* of everything a program
can observe - which callback ran when, what each call returned or raised (type, message,
errno), future and task states, remove_*() results, the exception handler's contexts - and
the two transcripts must be equal.

    python tests/fuzz_loop.py --seeds 0:10000 --ops 200   # first diverging seed, shrunk
    python tests/fuzz_loop.py --seconds 600               # random seeds for 10 minutes
    python tests/fuzz_loop.py --show 1234                 # both transcripts of one seed

The vocabulary.  Every operation has an exact stock-asyncio equivalent, so that one program
means the same on both loops:

- call_soon, call_later, call_at (delays in multiples of DT, 0 and negative included; call_at
  at another timer's deadline, for ties), call_soon_threadsafe (from a helper thread that
  runs one queued command at a time and acknowledges it, so the interleaving is fixed by
  the program, not by the scheduler), Handle.cancel() from anywhere;
- futures: create, set_result, set_exception, cancel, add_done_callback;
- socket pairs: add_reader/add_writer (by fd number or by socket object), remove_*, send and
  recv on either end, close of either end at any point - watchers registered or not, so fd
  numbers come back for new pairs;
- tasks (create_task of a coroutine) and virtual threads (``greenhub.spawn(fn)`` where fn
  calls ``greenhub.await_()``; on the stock loop, ``create_task`` of the coroutine that awaits
  the same things), whose steps await futures, tasks, ``sleep()``, ``gather()``,
  ``wait_for()``, ``sock_recv()``, ``sock_sendall()``, may catch a cancellation, and end by
  returning or raising; Task.cancel() from anywhere;
- loop.stop(); run_forever() for a given number of iterations (see "Clock and iterations");
  run_forever()/close() called from inside a callback; exceptions (ValueError, SystemExit)
  raised by callbacks and tasks; close() at random points, then the same operations on the
  closed loop.

Clock and iterations.  Both loops' ``time()`` return a fake clock that only the program
moves (``advance``), in steps of DT = 1/64 s, so timers fire in the same iteration on both
loops whatever the machine's speed.  A ``run`` operation runs the loop for a given number of
iterations: a harness callback (the *tick*) is queued once per iteration and calls stop()
after the last one.  Every iteration therefore has a callback ready, so neither loop ever
blocks in its poll waiting for a fake deadline.

Normalisations.  Where asyncio leaves an order unspecified, the comparison fixes it instead
of giving up on the whole transcript; each one is listed here with why it is legitimate:

1. Timers with equal deadlines.  asyncio documents their order as undefined (its heapq
   leaves ties in heap order); greenhub runs them in scheduling order (design.md).  The
   stock loop of this harness breaks heap ties with a scheduling sequence number
   (``_StockLoop.call_at``), which is one of the orders asyncio allows; everything else
   about its timers is untouched.
2. I/O readiness order between fds in one poll.  The stock loop queues the handles in
   epoll's order; greenhub in libev's (which runs pending watchers last-in first-out, so
   often the reverse).  greenhub's run records its order (``Loop._io_trace``) and the stock
   loop's ``_process_events`` queues the same fds in that order: a permutation of what its
   own epoll reported, which asyncio does not specify.  Which fds are ready is not
   normalised: an fd only one loop reports changes the transcript.
3. close() with virtual threads suspended in ``await_()``.  greenhub's close() cancels
   their tasks and runs the loop until they finish, then unwinds any left with
   GeneratorExit, most recently suspended first (design.md, "Shutdown and safety"); a
   stock program has no virtual threads, so on the stock loop the harness does exactly
   those steps around close() for the tasks that model them.  greenhub cancels in
   ``asyncio.all_tasks()`` order, a set's (memory addresses), as ``asyncio.run()`` does;
   so that what runs during close() comes in one order, the harness itself first cancels
   the suspended virtual threads in the order they were made, on both loops, as a
   program may before it closes a loop.  close()'s own cancel() of an already cancelled
   task only sets flags, in any order.  (That the same tasks count as suspended is
   checked: greenhub's list, ``Loop._parked_coros()``, against the model's suspended
   coroutines.)
4. Stale selector keys.  The stock selector keeps a key for a closed fd until it is
   removed; a new file that gets the same number then inherits it (FileNotFoundError, or
   silently nothing watched), while greenhub watches the new file (a documented
   difference: tests/test_fault_fds.py::test_reused_fd_number_is_watched).  Before a new
   pair is made, the harness removes the watchers of every fd that was closed with
   watchers on it - what a correct program does before the number can come back - and
   records what remove_reader/remove_writer returned or raised.
5. Messages that depend on garbage collection ("Task was destroyed but it is pending!",
   "... exception was never retrieved") are logged when an object is collected; when
   that happens depends on reference cycles, which asyncio does not specify.  They are
   counted, not compared.  Masked in messages: object addresses, default task names, the
   coroutine in a task's repr (greenhub's ``_call_sync`` for a virtual thread, the
   harness's coroutine for its model; in debug mode, where it was created), and the name
   of a loop-internal callback in "Exception in callback ..." (asyncio's
   ``_sock_read_done`` is a C object in greenhub) - the exception itself is compared.  A
   RecursionError is compared by type only, and ``Task.cancelling()`` up to 20: how deep
   a recursion gets depends on the stack it started from.
6. On a Python whose run_forever(), called from inside the running loop, raises and
   then clears the running loop anyway (3.13.0; CPython later moved its checks out of
   the try block), the harness does not make that call: both loops follow the same
   broken steps, and what fails next differs only because ``greenhub.await_()`` needs
   the running loop where a native ``await`` does not.

DT makes a seventh unnecessary: the stock loop fires a timer whose deadline is less than the
clock's resolution (1 ns) in the future, greenhub never early (design.md).  All deadlines
here are multiples of 1/64 s, exactly representable, so no deadline is ever within 1 ns.

Input classes under repair elsewhere are generated only with their flag:
``--timer-edges`` (NaN, infinite and huge delays and deadlines) and
``--cross-thread-wakeups`` (call_soon_threadsafe waking a loop asleep in its poll).
``--await-cycles`` lets tasks await each other in a cycle: Task.cancel() then recurses
until RecursionError, and finalizers that the garbage collector happens to run at that
depth fail and print "Exception ignored" - CPython's behaviour, noise for this test (the
one greenhub bug it showed, close() failing, has its own regression test).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import heapq
import inspect
import json
import logging
import math
import os
import queue
import random
import re
import signal
import socket
import sys
import threading
import time

if __package__ in (None, ""):
    # Run as a script: the worktree (greenhub) must be importable.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import greenhub  # noqa: E402
from greenhub._task import green_coro  # noqa: E402

DT = 1.0 / 64  # the clock's step and the unit of every delay
CLOCK_START = 100.0
BUDGET = 3000  # operations one run may execute (bodies of repeating callbacks re-run)
MAX_LOG = 100_000  # transcript entries: past this a run is a runaway (Abort)
MAX_PAIRS = 12  # socket pairs alive at once
CLOSE_TICKS = 64  # iterations close() may run the loop for (greenhub's parked vthreads)
GC_MESSAGES = ("was destroyed but it is pending", "exception was never retrieved")


class Options:
    """What the generator may produce.  The flags switch on input classes that other
    changes are fixing; they stay off until those land."""

    def __init__(
        self, timer_edges=False, cross_thread_wakeups=False, debug=False, await_cycles=False
    ):
        self.timer_edges = timer_edges
        self.cross_thread_wakeups = cross_thread_wakeups
        self.debug = debug
        self.await_cycles = await_cycles

    def __repr__(self):
        return f"Options({vars(self)})"


# --- the generator ---------------------------------------------------------------------

AWAITS = ("await_fut", "await_task", "sleep", "gather", "wait_for", "sock_recv", "sock_sendall")


class _Gen:
    def __init__(self, rnd, opts):
        self.r = rnd
        self.opts = opts
        self.next = collections.Counter()
        self.known = collections.defaultdict(list)

    def new(self, kind):
        i = self.next[kind]
        self.next[kind] += 1
        self.known[kind].append(i)
        return i

    def ref(self, kind, avoid=None):
        """A recent object of `kind` (now and then one that does not exist).  `avoid`: a
        task's own id, taken only now and then - awaiting itself through a gather makes
        Task.cancel() recurse until RecursionError, which should not be most programs."""
        if avoid is not None and self.r.random() > 0.05:
            known = [k for k in self.known[kind] if k != avoid]
            if known:
                back = min(int(self.r.expovariate(0.25)), len(known) - 1)
                return known[-1 - back]
        known = self.known[kind]
        if not known or self.r.random() < 0.04:
            return self.next[kind] + self.r.randrange(2)  # made later, or never
        back = min(int(self.r.expovariate(0.25)), len(known) - 1)
        return known[-1 - back]

    def end(self):
        return [self.ref("p"), self.r.randrange(2)]

    def quanta(self, choices=(0, 0, 0, 1, 1, 2, 3, 4, 8, -1)):
        return self.r.choice(choices)

    def delay(self):
        if self.opts.timer_edges and self.r.random() < 0.05:
            return self.r.choice(["nan", "inf", "-inf", "1e300", "-1e300"])
        if self.r.random() < 0.08:
            return ["int", self.r.choice([0, 1, 2])]  # an int, as a program may pass
        return self.quanta()

    def size(self):
        return self.r.choice([1, 3, 16, 100, 4096, 70000])

    def top(self):
        r = self.r.random()
        if r < 0.24:
            return ["run", self.r.choice([1, 1, 2, 3, 5, 8])]
        if r < 0.30:
            return ["advance", self.r.choice([0, 1, 1, 2, 4, 8, 16])]
        if self.opts.cross_thread_wakeups and r < 0.32:
            return ["sleep_wake", self.new("h"), self.body(2)]
        op = self.sync(depth=3, where="top")
        if op[0] == "vthread":  # spawn needs a running loop: from a callback
            op = ["soon", self.new("h"), [op]]
        return op

    def sync(self, depth, where):
        """One operation that runs to completion where it is called."""
        r = self.r
        menu = [
            ("soon", 8),
            ("later", 6),
            ("at", 4),
            ("at_same", 2),
            ("threadsafe", 3),
            ("cancel", 7),
            ("fut", 4),
            ("fset", 4),
            ("fexc", 2),
            ("fcancel", 3),
            ("fcb", 2),
            ("pair", 3),
            ("add_reader", 5),
            ("add_writer", 3),
            ("remove_reader", 3),
            ("remove_writer", 3),
            ("send", 6),
            ("recv", 3),
            ("close_end", 2),
            ("task", 4),
            ("vthread", 4),
            ("tcancel", 4),
            ("stop", 1),
            ("advance", 2),
            ("probe", 1),
            ("run_inside", 0.3 if where != "top" else 0),
            ("close_inside", 0.3 if where != "top" else 0),
        ]
        kind = r.choices([k for k, _ in menu], [w for _, w in menu])[0]
        d = depth - 1
        if kind == "soon":
            return ["soon", self.new("h"), self.body(d)]
        if kind == "later":
            return ["later", self.new("h"), self.delay(), self.body(d)]
        if kind == "at":
            return ["at", self.new("h"), self.delay(), self.body(d)]
        if kind == "at_same":
            return ["at_same", self.new("h"), self.ref("h"), self.body(d)]
        if kind == "threadsafe":
            return ["threadsafe", self.new("h"), self.body(d)]
        if kind == "cancel":
            return ["cancel", self.ref("h")]
        if kind == "fut":
            return ["fut", self.new("f")]
        if kind in ("fset", "fexc"):
            return [kind, self.ref("f")]
        if kind == "fcancel":
            return ["fcancel", self.ref("f"), r.choice([None, None, "why"])]
        if kind == "fcb":
            return ["fcb", self.ref("f"), self.new("d"), self.body(d)]
        if kind == "pair":
            return ["pair", self.new("p")]
        if kind in ("add_reader", "add_writer"):
            end = self.end()
            return [kind, end, self.new("w"), self.io_body(kind, end, d), r.random() < 0.2]
        if kind in ("remove_reader", "remove_writer"):
            return [kind, self.end(), r.random() < 0.2]
        if kind == "send":
            return ["send", self.end(), self.size()]
        if kind == "recv":
            return ["recv", self.end(), r.choice([1, 10, 1000, 1 << 20])]
        if kind == "close_end":
            return ["close_end", self.end()]
        if kind == "task":
            t = self.new("t")
            return ["task", t, self.steps(d, t)]
        if kind == "vthread":
            t = self.new("t")
            return ["vthread", t, self.steps(d, t), r.choice([0, 0, 1, 5])]
        if kind == "tcancel":
            return ["tcancel", self.ref("t"), r.choice([None, None, "stop it"])]
        if kind == "advance":
            return ["advance", r.choice([1, 2, 4])]
        return [kind]

    def body(self, depth):
        """What a callback does when it runs."""
        if depth <= 0:
            return []
        ops = [self.sync(depth, "cb") for _ in range(self.r.choice([0, 1, 1, 2, 3]))]
        r = self.r.random()
        if r < 0.08:
            ops.append(["raise", "ValueError"])
        elif r < 0.09:
            ops.append(["raise", "SystemExit"])
        return ops

    def io_body(self, kind, end, depth):
        """What a reader or writer callback does each time its fd is ready."""
        r = self.r
        ops = []
        if kind == "add_reader" and r.random() < 0.7:
            ops.append(["recv", end, r.choice([1, 100, 1 << 20])])
        if r.random() < 0.3:
            ops.append(["remove_reader" if kind == "add_reader" else "remove_writer", end, False])
        if kind == "add_writer" and r.random() < 0.2:
            ops.append(["send", end, self.size()])
        if depth > 0 and r.random() < 0.3:
            ops.append(self.sync(depth, "cb"))
        if r.random() < 0.04:
            ops.append(["raise", "ValueError"])
        return ops

    def steps(self, depth, own):
        """The steps of a task or virtual thread: awaits and plain operations."""
        r = self.r
        out = []
        for _ in range(r.choice([1, 2, 3, 4, 6])):
            if r.random() < 0.6:
                out.append(self.await_step(own))
            elif depth > 0:
                out.append(self.sync(depth, "task"))
        r2 = r.random()
        if r2 < 0.3:
            out.append(["return", r.randrange(100)])
        elif r2 < 0.4:
            out.append(["raise", "ValueError"])
        elif r2 < 0.405:
            out.append(["raise", "SystemExit"])
        return out

    def await_step(self, own):
        r = self.r
        catch = r.random() < 0.15
        kind = r.choices(AWAITS, [5, 3, 5, 2, 1, 2, 1])[0]
        if kind == "await_fut":
            return ["await_fut", self.ref("f"), catch]
        if kind == "await_task":
            return ["await_task", self.ref("t", avoid=own), catch]
        if kind == "sleep":
            return ["sleep", r.choice([0, 0, 0, 1, 2, 4]), catch]
        if kind == "gather":
            refs = []
            for _ in range(r.choice([0, 1, 2, 3])):
                k = r.choice("fts")
                g = self.ref("f") if k == "f" else self.ref("t", avoid=own) if k == "t" else 1
                refs.append([k, g])
            return ["gather", refs, r.random() < 0.5, catch]
        if kind == "wait_for":
            return ["wait_for", self.ref("f"), r.choice([0, 1, 4]), catch]
        if kind == "sock_recv":
            return ["sock_recv", self.end(), r.choice([1, 100, 1 << 16]), catch]
        return ["sock_sendall", self.end(), r.choice([1, 100, 300000]), catch]


def generate(seed, n_ops=200, opts=None):
    """The program of a seed: a list of operations (JSON-able lists)."""
    opts = opts or Options()
    g = _Gen(random.Random(seed), opts)
    prog = [g.top() for _ in range(n_ops)]
    if g.r.random() < 0.2:
        # Close part-way: what follows runs against a closed loop.
        at = g.r.randrange(n_ops * 2 // 3, n_ops + 1)
        prog.insert(at, ["close"])
    return prog


# --- summaries: what a transcript holds --------------------------------------------------

# Normalisation 5: what messages may not be compared.
_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")
_TASK_NAME = re.compile(r"Task-\d+")
# A virtual thread's coroutine is greenhub's _call_sync(), its model's the harness's own.
_CORO = re.compile(r"coro=<[^>]*>")
# Debug mode: where a task or handle was made (greenhub.spawn() vs the harness).
_CREATED_AT = re.compile(r" created at \S+:\d+")
# The stock loop's internal callbacks and greenhub's C ones have different reprs.
_INTERNAL_CALLBACK = re.compile(
    r"^Exception in callback (?!Run\.|functools\.partial\(<bound method Run\.).*"
)


def _text(s):
    s = _CREATED_AT.sub(" created at ?", _ADDR.sub(" at 0x?", str(s)))
    return _CORO.sub("coro=<?>", _TASK_NAME.sub("Task-N", s))


def exc_summary(e):
    if isinstance(e, RecursionError):
        return ("RecursionError",)  # where the limit hits depends on the stack's depth
    out = (type(e).__name__, _text(e))
    if isinstance(e, OSError):
        out += (e.errno,)
    return out


def summarise(v):
    if isinstance(v, (bytes, bytearray)):
        return ("bytes", len(v), bytes(v[:24]))
    if isinstance(v, (list, tuple)):
        return [summarise(x) for x in v]
    if isinstance(v, BaseException):
        return ("exc",) + exc_summary(v)
    if isinstance(v, float):
        return repr(v)  # NaN == NaN in a transcript
    if v is None or isinstance(v, (int, str, bool)):
        return v
    return _text(type(v).__name__)


def fut_state(f):
    if not f.done():
        return "pending"
    if f.cancelled():
        return "cancelled"
    e = f.exception()
    if e is not None:
        return ("exception",) + exc_summary(e)
    return ("result", summarise(f.result()))


def _delay_value(d):
    """A generated delay (quanta, ["int", n], or an edge value's name) as a number."""
    if isinstance(d, str):
        return float(d)
    if isinstance(d, list):
        return d[1]
    return d * DT


# --- the two loops -----------------------------------------------------------------------


def _nested_run_clears_running_loop():
    """Whether this Python's run_forever(), called on a loop that is running, raises and
    then clears the running loop anyway (3.13.0: its clean-up sits in the finally block of
    the try that holds the checks; CPython moved the checks out later).  greenhub's
    run_forever() follows the stock one's steps, so both loops are left half running;
    what breaks next differs (greenhub.await_() needs the running loop, a native await
    does not), so the fuzzer does not call run_forever() from inside such a loop."""
    loop = asyncio.new_event_loop()
    seen = []

    def nested():
        try:
            loop.run_forever()
        except RuntimeError:
            pass
        seen.append(asyncio._get_running_loop() is loop)
        loop.stop()

    try:
        loop.call_soon(nested)
        loop.run_forever()
    finally:
        loop.close()
        asyncio._set_running_loop(None)
    return not seen[0]


_NESTED_RUN_CLEARS_RUNNING_LOOP = _nested_run_clears_running_loop()


class _GreenhubLoop(greenhub.Loop):
    """greenhub's loop with the harness's clock (loop_now() calls an overriding time())."""

    def time(self):
        return self._fuzz.clock


def _tie_key(timer):
    # A timer not numbered yet is the one call_at() is pushing: the newest.
    return (timer._when, timer._loop._fuzz.seq.get(id(timer), math.inf))


class _TieOrderedTimerHandle(asyncio.TimerHandle):
    """Normalisation 1: the stock heap's ties broken by scheduling order."""

    __slots__ = ()

    def __lt__(self, other):
        return _tie_key(self) < _tie_key(other)

    def __le__(self, other):
        return _tie_key(self) <= _tie_key(other)

    def __gt__(self, other):
        return _tie_key(self) > _tie_key(other)

    def __ge__(self, other):
        return _tie_key(self) >= _tie_key(other)


class _StockLoop(asyncio.SelectorEventLoop):
    """The stock loop with the harness's clock, normalisations 1 and 2."""

    def time(self):
        return self._fuzz.clock

    def call_at(self, when, callback, *args, context=None):
        timer = super().call_at(when, callback, *args, context=context)
        fz = self._fuzz
        fz.seq[id(timer)] = len(fz.seq)
        fz.timer_refs.append(timer)  # keeps id() unique for the run
        timer.__class__ = _TieOrderedTimerHandle
        heapq.heapify(self._scheduled)
        return timer

    def _process_events(self, event_list):
        fz = self._fuzz
        order = fz.io_orders.get((fz.ticks, fz.runs)) if fz.io_orders is not None else None
        if order:
            pos = {label: i for i, label in enumerate(order)}

            def key(event):
                label = fz.fd_owner.get(event[0].fd)
                if label is None:
                    return -1  # the self-pipe: no visible effect
                return pos.get(label, len(pos))

            event_list = sorted(event_list, key=key)
        super()._process_events(event_list)


def io_orders_from_trace(trace):
    """greenhub's I/O trace -> {(ticks, runs): [end labels in dispatch order]}."""
    orders = collections.defaultdict(list)
    ticks = runs = 0
    owner = {}
    for item in trace:
        if item is None:
            ticks += 1
        elif item == "R":
            runs += 1
        elif isinstance(item, tuple):
            owner[item[0]] = item[1]
        else:
            orders[(ticks, runs)].append(owner.get(item, f"fd{item}"))
    return dict(orders)


class _Helper:
    """A thread that runs one command at a time for the loop's thread and acknowledges it:
    call_soon_threadsafe() from another thread, at a point fixed by the program."""

    def __init__(self):
        self.jobs = queue.SimpleQueue()
        self.acks = queue.SimpleQueue()
        self.thread = None

    def _main(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            when_idle, fn, args = job
            if when_idle is not None:
                _wait_until_asleep(*when_idle)
            try:
                self.acks.put((True, fn(*args)))
            except BaseException as e:  # noqa: BLE001 - handed to the loop's thread
                self.acks.put((False, e))

    def submit(self, fn, *args, when_idle=None):
        """Run fn(*args) in the helper thread; with when_idle=(thread ident, loop kind),
        once that thread's loop is asleep in its poll."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._main, name="fuzz-helper", daemon=True)
            self.thread.start()
        self.jobs.put((when_idle, fn, args))

    def result(self):
        ok, v = self.acks.get(timeout=30)
        if not ok:
            raise v
        return v

    def call(self, fn, *args):
        self.submit(fn, *args)
        return self.result()

    def stop(self):
        if self.thread is not None:
            self.jobs.put(None)
            self.thread.join(30)
            self.thread = None


def _in_poll(frame, kind):
    """Whether the loop thread whose innermost Python frame is `frame` waits in its poll:
    the stock loop in selectors' select(), greenhub in the C _run() under run_forever()."""
    if frame is None:
        return False
    if kind == "greenhub":
        return frame.f_code.co_name == "run_forever" and frame.f_code.co_filename.endswith(
            os.path.join("greenhub", "_loop.py")
        )
    return frame.f_code.co_name == "select" and frame.f_code.co_filename.endswith("selectors.py")


def _wait_until_asleep(ident, kind, samples=20, limit=5.0):
    """Until the loop thread has been seen in its poll `samples` times in a row, 1 ms
    apart: a loop with work to do is seen elsewhere (its callbacks, its time())."""
    seen = 0
    deadline = time.monotonic() + limit
    while seen < samples and time.monotonic() < deadline:
        seen = seen + 1 if _in_poll(sys._current_frames().get(ident), kind) else 0
        time.sleep(0.001)


class Abort(BaseException):
    """The harness gives up on a run (not part of any transcript): it hung, or its
    transcript grew past MAX_LOG (a loop that never stops, with a watcher that fires each
    iteration).  Every catch-all of the harness lets it through."""


class _Timeout(Abort):
    pass


class _Runaway(Abort):
    pass


def _make_exc(kind, label):
    if kind == "SystemExit":
        return SystemExit(f"exit from {label}")
    return ValueError(f"boom from {label}")


# --- the interpreter ---------------------------------------------------------------------


class Run:
    """One program on one loop; .log is its transcript."""

    def __init__(self, kind, opts=None, io_orders=None):
        self.kind = kind
        self.opts = opts or Options()
        self.log = []
        self.frozen = False
        self.clock = CLOCK_START
        self.instances = collections.Counter()
        self.objs = collections.defaultdict(dict)  # kind -> gen id -> (label, obj)
        self.all_objs = []  # (kind, label, obj) in creation order
        self.task_names = set()
        self.bodies = {}
        self.vthreads = []  # tasks that are virtual threads (greenhub) or model them
        self.fd_of = {}  # end label -> fd number it had when made
        self.fd_owner = {}  # fd -> label of the end that has it now
        self.stale = set()
        self.ctx = "main"
        self.budget = BUDGET
        self.budget_noted = False
        self.no_watchers = False  # in a sleep_wake segment
        self.ticks = 0
        self.runs = 0
        self.tick_pending = False
        self.tick_remaining = 0
        self.trace = []
        self.io_orders = io_orders
        self.coros = []
        self.park_seq = {}  # task label -> when it last awaited (unwinding order at close)
        self.waits_on = {}  # task label -> labels of the tasks it awaits now
        self.parks = 0
        self.seq = {}
        self.timer_refs = []
        self.gc_messages = []
        self.helper = _Helper()
        self.loop = (_GreenhubLoop if kind == "greenhub" else _StockLoop)()
        self.loop._fuzz = self
        self.loop.set_debug(self.opts.debug)
        self.loop.set_exception_handler(self._on_exception)
        if kind == "greenhub":
            self.loop._io_trace = self.trace

    # -- recording ---------------------------------------------------------------------

    def rec(self, *items):
        if self.frozen:
            return
        if len(self.log) >= MAX_LOG:
            raise _Runaway(
                f"{self.kind}: transcript past {MAX_LOG} entries (a loop that never stops?)"
            )
        self.log.append((self.ctx,) + items)

    def _on_exception(self, loop, context):
        msg = str(context.get("message"))
        if any(s in msg for s in GC_MESSAGES):
            self.gc_messages.append(msg)  # normalisation 5
            return
        exc = context.get("exception")
        self.rec(
            "exception-handler",
            _INTERNAL_CALLBACK.sub("Exception in callback <internal>", _text(msg)),
            exc_summary(exc) if exc is not None else None,
            sorted(k for k in context if k != "source_traceback"),
        )

    # -- objects ------------------------------------------------------------------------

    def label(self, prefix, g):
        n = self.instances[(prefix, g)]
        self.instances[(prefix, g)] += 1
        return f"{prefix}{g}" if n == 0 else f"{prefix}{g}.{n}"

    def put(self, kind, g, label, obj):
        if kind == "t":
            self.task_names.add(label)
        self.objs[kind][g] = (label, obj)
        self.all_objs.append((kind, label, obj))

    def get(self, kind, g):
        found = self.objs[kind].get(g)
        if found is None:
            self.rec("missing", f"{kind}{g}")
        return found

    def end(self, end):
        """(label, socket, fd number it was made with) of a pair's end, or None."""
        p, side = end
        found = self.objs["p"].get(p)
        if found is None:
            self.rec("missing", f"p{p}")
            return None
        label, socks = found
        lab = label + "ab"[side]
        return lab, socks[side], self.fd_of[lab]

    # -- running the program ---------------------------------------------------------------

    def run_program(self, prog):
        try:
            for op in prog:
                self.ctx = "main"
                self.top(op)
            self.ctx = "main"
            self.op_close()  # every program ends with a close() (a no-op if closed)
            self.final_states()
        finally:
            self.frozen = True
            self.cleanup()
        return self.log

    def top(self, op):
        if op[0] == "run":
            return self.op_run(*op[1:])
        if op[0] == "close":
            return self.op_close()
        if op[0] == "sleep_wake":
            return self.op_sleep_wake(*op[1:])
        return self.do(op)

    def do(self, op):
        if self.budget <= 0:
            if not self.budget_noted:
                self.budget_noted = True
                self.rec("budget exhausted")
            return
        self.budget -= 1
        try:
            getattr(self, "op_" + op[0])(*op[1:])
        except Exception as e:  # noqa: BLE001 - the outcome is the point
            self.rec(op[0], "raised", exc_summary(e))

    def run_body(self, body):
        for op in body:
            if op[0] == "raise":
                raise _make_exc(op[1], self.ctx)
            self.do(op)

    # -- callbacks ---------------------------------------------------------------------

    def _cb(self, label):
        prev, self.ctx = self.ctx, label
        try:
            self.rec("run")
            self.run_body(self.bodies[label])
        finally:
            self.ctx = prev

    def _wake_cb(self, label):
        self.loop.stop()  # first: the body may raise, or the budget be spent
        self._cb(label)

    def _io(self, label):
        prev, self.ctx = self.ctx, label
        try:
            self.rec("io")
            self.run_body(self.bodies[label])
        finally:
            self.ctx = prev

    def _done(self, label, fut):
        prev, self.ctx = self.ctx, label
        try:
            self.rec("done", fut_state(fut))
            self.run_body(self.bodies[label])
        finally:
            self.ctx = prev

    def _tick(self):
        self.tick_pending = False
        self.ticks += 1
        self.trace.append(None)
        if self.tick_remaining > 0:
            self.tick_remaining -= 1
            self.loop.call_soon(self._tick)
            self.tick_pending = True
        else:
            self.loop.stop()

    # -- top-level operations --------------------------------------------------------------

    def _start_run(self, ticks):
        """Before run_forever() or a close() that may run the loop: mark the run and queue
        the tick (normalisation 2 needs both; the tick also keeps the poll from blocking)."""
        self.runs += 1
        self.trace.append("R")
        self.tick_remaining = ticks
        if not self.tick_pending and not self.loop.is_closed():
            self.loop.call_soon(self._tick)
            self.tick_pending = True

    def op_run(self, n):
        self._start_run(n)
        self.ctx = "loop"
        try:
            self.loop.run_forever()
            out = "ok"
        except Abort:
            raise
        except BaseException as e:  # noqa: BLE001 - SystemExit from a callback included
            out = exc_summary(e)
        self.ctx = "main"
        self.rec("run", n, out)

    def op_close(self):
        if self.loop.is_running():
            self.loop.close()  # raises RuntimeError; do() records it
            return
        closed = self.loop.is_closed()
        self.rec("close-begin", closed)
        if not closed:
            parked = self._parked_vthreads()
            self.rec("suspended virtual threads", [t.get_name() for t in parked])
            for t in parked:  # normalisation 3: in the order they were made
                try:
                    self.rec("cancel before close", t.get_name(), t.cancel())
                except Exception as e:  # noqa: BLE001 - RecursionError (a gather cycle)
                    self.rec("cancel before close", t.get_name(), exc_summary(e))
            self._start_run(CLOSE_TICKS)
        self.ctx = "loop"
        try:
            if self.kind == "greenhub":
                self.loop.close()
            else:
                self._stock_close()
            out = "ok"
        except Abort:
            raise
        except BaseException as e:  # noqa: BLE001
            out = exc_summary(e)
        self.ctx = "main"
        self.tick_pending = False
        self.rec("close-end", out, self.loop.is_closed())

    def _parked_vthreads(self):
        """The virtual threads suspended in await_() (their models: suspended coroutines),
        in the order they were made."""
        if self.kind == "greenhub":
            parked = {id(c) for c in self.loop._parked_coros()}
            return [t for t in self.vthreads if id(green_coro(t)) in parked]
        return [t for t in self.vthreads if self._suspended(t)]

    def _stock_close(self):
        """Normalisation 3: what greenhub.Loop.close() does for virtual threads suspended in
        await_(), done here for the tasks that model them, then the stock close()."""
        loop = self.loop
        if loop.is_running() or loop.is_closed():
            return loop.close()
        parked = [t for t in self.vthreads if self._suspended(t)]
        if parked:
            for t in parked:
                try:
                    t.cancel()
                except Exception:  # noqa: BLE001 - RecursionError: greenhub logs it
                    pass
            waiter = asyncio.wait(parked, timeout=1.0)
            try:
                loop.run_until_complete(waiter)
            except Exception:  # noqa: BLE001 - greenhub logs it and goes on
                pass
            except BaseException:
                waiter.close()
                self._unwind_vthreads()
                loop.close()
                raise
        self._unwind_vthreads()
        loop.close()

    def _suspended(self, task):
        return (
            not task.done() and inspect.getcoroutinestate(task.get_coro()) == inspect.CORO_SUSPENDED
        )

    def _unwind_vthreads(self):
        # greenhub's _close_core() unwinds every virtual thread still suspended (GeneratorExit
        # at the await_() call), including those spawned while the loop ran for the others,
        # most recently suspended first.
        left = [t for t in self.vthreads if self._suspended(t)]
        for t in sorted(left, key=lambda t: -self.park_seq[t.get_name()]):
            if self._suspended(t):
                try:
                    t.get_coro().close()
                except BaseException:  # noqa: BLE001 - greenhub: unraisable
                    pass

    def op_sleep_wake(self, g, body):
        """(--cross-thread-wakeups) run_forever() until the loop has nothing left to do and
        sleeps in its poll; then a helper thread's call_soon_threadsafe() wakes it and the
        callback stops it.  So that the loop does fall asleep, it starts with no fd
        watched, and add_reader/add_writer are refused until it is woken (a level-
        triggered watcher on a ready fd would keep it busy for ever)."""
        label = self.label("h", g)
        loop = self.loop
        if loop.is_closed() or self.tick_pending or self._watched():
            self.rec("sleep_wake", label, "skipped")
            return
        self.bodies[label] = body
        self.runs += 1
        self.trace.append("R")
        self.no_watchers = True
        self.helper.submit(
            loop.call_soon_threadsafe,
            self._wake_cb,
            label,
            when_idle=(threading.get_ident(), self.kind),
        )
        self.ctx = "loop"
        try:
            loop.run_forever()
            out = "ok"
        except Abort:
            raise
        except BaseException as e:  # noqa: BLE001
            out = exc_summary(e)
        self.no_watchers = False
        self.ctx = "main"
        try:
            h = self.helper.result()
            self.put("h", g, label, h)
        except Exception as e:  # noqa: BLE001
            out = (out, exc_summary(e))
        self.rec("sleep_wake", label, out)

    # -- scheduling ----------------------------------------------------------------------

    def _schedule(self, g, body, how):
        label = self.label("h", g)
        self.bodies[label] = body
        h = how(label)
        self.put("h", g, label, h)
        extra = (repr(h.when()),) if isinstance(h, asyncio.TimerHandle) else ()
        self.rec("scheduled", label, *extra)

    def op_soon(self, g, body):
        self._schedule(g, body, lambda label: self.loop.call_soon(self._cb, label))

    def op_later(self, g, delay, body):
        d = _delay_value(delay)
        self._schedule(g, body, lambda label: self.loop.call_later(d, self._cb, label))

    def op_at(self, g, offset, body):
        if isinstance(offset, list):  # an int deadline
            when = int(self.clock) + offset[1]
        else:
            when = self.clock + _delay_value(offset)
        self._schedule(g, body, lambda label: self.loop.call_at(when, self._cb, label))

    def op_at_same(self, g, other, body):
        found = self.objs["h"].get(other)
        if found is not None and isinstance(found[1], asyncio.TimerHandle):
            when = found[1].when()
        else:
            when = self.clock
        self._schedule(g, body, lambda label: self.loop.call_at(when, self._cb, label))

    def op_threadsafe(self, g, body):
        self._schedule(
            g, body, lambda label: self.helper.call(self.loop.call_soon_threadsafe, self._cb, label)
        )

    def op_cancel(self, g):
        found = self.get("h", g)
        if found:
            label, h = found
            before = h.cancelled()
            h.cancel()
            self.rec("cancel", label, before, h.cancelled())

    # -- futures -------------------------------------------------------------------------

    def op_fut(self, g):
        label = self.label("f", g)
        self.put("f", g, label, self.loop.create_future())
        self.rec("fut", label)

    def op_fset(self, g):
        found = self.get("f", g)
        if found:
            label, f = found
            f.set_result(f"value of {label}")
            self.rec("fset", label)

    def op_fexc(self, g):
        found = self.get("f", g)
        if found:
            label, f = found
            f.set_exception(ValueError(f"error of {label}"))
            self.rec("fexc", label)

    def op_fcancel(self, g, msg):
        found = self.get("f", g)
        if found:
            label, f = found
            self.rec("fcancel", label, f.cancel() if msg is None else f.cancel(msg))

    def op_fcb(self, g, d, body):
        found = self.get("f", g)
        if found:
            label = self.label("d", d)
            self.bodies[label] = body
            found[1].add_done_callback(functools.partial(self._done, label))
            self.rec("fcb", found[0], label)

    # -- sockets -------------------------------------------------------------------------

    def _watched(self):
        """{end label: events} the loop's selector (greenhub: its view) has keys for."""
        if self.loop.is_closed():
            return {}
        keys = self.loop._selector.get_map()
        return {self.fd_owner[fd]: keys[fd].events for fd in keys if fd in self.fd_owner}

    def op_pair(self, g):
        live = sum(
            1 for kind, _, socks in self.all_objs if kind == "p" for s in socks if s.fileno() >= 0
        )
        if live >= 2 * MAX_PAIRS:
            self.rec("pair", "too many")
            return
        self._remove_stale_keys()
        label = self.label("p", g)
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        self.put("p", g, label, (a, b))
        for side, s in enumerate((a, b)):
            lab = label + "ab"[side]
            fd = s.fileno()
            self.fd_of[lab] = fd
            self.fd_owner[fd] = lab
            self.trace.append((fd, lab))
        self.rec("pair", label)

    def _remove_stale_keys(self):
        """Normalisation 4: before a new pair can get the number of an fd that was closed
        with watchers on it, remove them, as a correct program does (and record what
        remove_reader/remove_writer did: on a closed fd they may raise)."""
        for fd in sorted(self.stale):
            self.stale.discard(fd)
            if self.loop.is_closed() or fd not in self.loop._selector.get_map():
                continue
            out = []
            for remove in (self.loop.remove_reader, self.loop.remove_writer):
                try:
                    out.append(remove(fd))
                except OSError as e:
                    out.append(exc_summary(e))
            self.rec("stale key removed", self.fd_owner.get(fd), out)

    def _add(self, which, end, g, body, by_obj):
        found = self.end(end)
        if found and self.no_watchers:
            self.rec("add", which, found[0], "refused until the loop is woken")
        elif found:
            elabel, sock, fd = found
            label = self.label("w", g)
            self.bodies[label] = body
            add = self.loop.add_reader if which == "r" else self.loop.add_writer
            add(sock if by_obj else fd, self._io, label)
            self.rec("add", which, elabel, label)

    def op_add_reader(self, end, g, body, by_obj):
        self._add("r", end, g, body, by_obj)

    def op_add_writer(self, end, g, body, by_obj):
        self._add("w", end, g, body, by_obj)

    def _remove(self, which, end, by_obj):
        found = self.end(end)
        if found:
            elabel, sock, fd = found
            remove = self.loop.remove_reader if which == "r" else self.loop.remove_writer
            self.rec("remove", which, elabel, remove(sock if by_obj else fd))

    def op_remove_reader(self, end, by_obj):
        self._remove("r", end, by_obj)

    def op_remove_writer(self, end, by_obj):
        self._remove("w", end, by_obj)

    def _payload(self, label, n):
        head = f"<{label}:{self.budget}>".encode()
        return (head * (n // len(head) + 1))[:n]

    def op_send(self, end, n):
        found = self.end(end)
        if found:
            elabel, sock, _ = found
            try:
                self.rec("send", elabel, sock.send(self._payload(elabel, n)))
            except OSError as e:
                self.rec("send", elabel, exc_summary(e))

    def op_recv(self, end, n):
        found = self.end(end)
        if found:
            elabel, sock, _ = found
            try:
                self.rec("recv", elabel, summarise(sock.recv(n)))
            except OSError as e:
                self.rec("recv", elabel, exc_summary(e))

    def op_close_end(self, end):
        found = self.end(end)
        if found:
            elabel, sock, fd = found
            was_open = sock.fileno() >= 0
            sock.close()
            watched = was_open and elabel in self._watched()
            if watched:
                self.stale.add(fd)
            self.rec("close_end", elabel, was_open, watched)

    # -- tasks and virtual threads -------------------------------------------------------

    def op_task(self, g, steps):
        label = self.label("t", g)
        coro = _drive_async(self._body(label, steps))
        self.coros.append(coro)
        t = self.loop.create_task(coro, name=label)
        self.put("t", g, label, t)
        self.rec("task", label)

    def op_vthread(self, g, steps, depth):
        label = self.label("t", g)
        if not self.loop.is_running():
            self.rec("vthread", label, "loop not running")
            return
        if self.kind == "greenhub":
            t = greenhub.spawn(self._vthread_main, label, steps, depth)
            t.set_name(label)
        else:
            coro = _drive_async(self._body(label, steps), functools.partial(self._parked, label))
            self.coros.append(coro)
            t = self.loop.create_task(coro, name=label)
        self.vthreads.append(t)
        self.put("t", g, label, t)
        self.rec("vthread", label)

    def _parked(self, label):
        self.parks += 1
        self.park_seq[label] = self.parks

    def _vthread_main(self, label, steps, depth):
        if depth > 0:
            return self._vthread_main(label, steps, depth - 1)
        return _drive_sync(self._body(label, steps), greenhub.await_)

    def op_tcancel(self, g, msg):
        found = self.get("t", g)
        if found:
            label, t = found
            self.rec("tcancel", label, t.cancel() if msg is None else t.cancel(msg))

    def _body(self, label, steps):
        """The steps of a task: a generator that yields what to await and is sent
        (ok, value) back, so the same code serves `await` and `greenhub.await_()`."""
        self.ctx = label
        self.rec("start")
        try:
            for step in steps:
                self.ctx = label
                kind = step[0]
                if kind == "return":
                    self.rec("end", "return", step[1])
                    return step[1]
                if kind == "raise":
                    raise _make_exc(step[1], label)
                if kind not in AWAITS:
                    self.do(step)
                    continue
                targets = self._awaited_tasks(step, label)
                if not self.opts.await_cycles and self._closes_cycle(label, targets):
                    self.rec(kind, "left out: it would close a cycle of tasks awaiting tasks")
                    continue
                try:
                    aw = self._awaitable(step)
                except Exception as e:  # noqa: BLE001
                    self.rec(kind, "raised", exc_summary(e))
                    continue
                if aw is None:
                    continue
                self.ctx = "loop"
                self.waits_on[label] = targets
                try:
                    ok, v = yield aw
                finally:
                    self.waits_on.pop(label, None)
                self.ctx = label
                if ok:
                    self.rec(kind, "ok", summarise(v))
                    continue
                self.rec(kind, "raised", exc_summary(v))
                if isinstance(v, asyncio.CancelledError):
                    if step[-1]:
                        self.rec("end", "caught")
                        return "caught"
                    raise v
                if not isinstance(v, Exception):
                    raise v
            self.rec("end", "done")
            return None
        except Abort:
            raise
        except BaseException as e:
            if not self.frozen:
                self.ctx = label
                self.rec("end", "raised", exc_summary(e))
            raise
        finally:
            self.ctx = "loop"  # what runs next is the loop's, not this task's

    def _awaited_tasks(self, step, label):
        """Labels of the harness's tasks that `step` awaits (its own, only through a
        gather: awaiting itself directly is a clean RuntimeError)."""
        if step[0] == "await_task":
            found = self.objs["t"].get(step[1])
            return {found[0]} - {label} if found else set()
        if step[0] == "gather":
            return {self.objs["t"][g][0] for k, g in step[1] if k == "t" and g in self.objs["t"]}
        return set()

    def _closes_cycle(self, label, targets):
        """Whether awaiting `targets` would make `label` wait on itself through tasks
        awaiting tasks.  Task.cancel() follows such a cycle until RecursionError, and at
        that depth any finalizer the garbage collector runs fails too: CPython's
        behaviour, noise here (--await-cycles lets them through)."""
        seen, todo = set(), list(targets)
        while todo:
            t = todo.pop()
            if t == label:
                return True
            if t not in seen:
                seen.add(t)
                todo.extend(self.waits_on.get(t, ()))
        return False

    def _awaitable(self, step):
        kind = step[0]
        loop = self.loop
        if kind in ("await_fut", "await_task"):
            found = self.get("f" if kind == "await_fut" else "t", step[1])
            return found and found[1]
        if kind == "sleep":
            return asyncio.sleep(step[1] * DT)
        if kind == "gather":
            aws = []
            for k, g in step[1]:
                if k == "s":
                    aws.append(asyncio.sleep(g * DT))
                else:
                    found = self.objs[k].get(g)
                    if found:
                        aws.append(found[1])
            return asyncio.gather(*aws, return_exceptions=step[2])
        if kind == "wait_for":
            found = self.get("f", step[1])
            return found and asyncio.wait_for(found[1], step[2] * DT)
        found = self.end(step[1])
        if not found:
            return None
        if kind == "sock_recv":
            return loop.sock_recv(found[1], step[2])
        return loop.sock_sendall(found[1], self._payload(found[0], step[2]))

    # -- the rest --------------------------------------------------------------------------

    def op_stop(self):
        self.loop.stop()
        self.rec("stop")

    def op_advance(self, q):
        self.clock += q * DT
        self.rec("advance", repr(self.clock))

    def op_probe(self):
        loop = self.loop
        self.rec(
            "probe",
            loop.is_running(),
            loop.is_closed(),
            sorted(self._watched().items()),
            # The harness's own pending tasks: it holds them, while a loop-internal task
            # left behind (close()'s wait, gather's children) stays in all_tasks() until
            # the garbage collector gets to it.
            sorted(n for t in asyncio.all_tasks(loop) if (n := t.get_name()) in self.task_names),
        )

    def op_run_inside(self):
        if _NESTED_RUN_CLEARS_RUNNING_LOOP:
            self.rec("run_inside", "skipped: this Python's run_forever() bug")
            return
        self.loop.run_forever()

    def op_close_inside(self):
        self.loop.close()

    def final_states(self):
        self.ctx = "final"
        for kind, label, obj in self.all_objs:
            if kind == "h":
                self.rec(label, obj.cancelled())
            elif kind == "f":
                self.rec(label, fut_state(obj))
            elif kind == "t":
                # Capped: a cancel() that recursed until RecursionError (a task awaiting
                # itself through a gather) counts one request per level of the stack.
                self.rec(label, fut_state(obj), min(obj.cancelling(), 20))
        if self.gc_messages:
            self.rec("gc messages", len(self.gc_messages) > 0)

    def cleanup(self):
        try:
            if not self.loop.is_closed():
                self.loop.close()
        except Exception:  # noqa: BLE001 - the transcript has what close() raised
            pass
        finally:
            self.helper.stop()
            for kind, _label, obj in self.all_objs:
                if kind == "p":
                    for s in obj:
                        s.close()
            # Tasks that never started (ours, gather's children): no "never awaited" warning.
            coros = self.coros + [t.get_coro() for t in asyncio.all_tasks(self.loop)]
            for coro in coros:
                try:
                    if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                        coro.close()
                except (AttributeError, ValueError):
                    pass
            self.loop._fuzz = None
            if self.kind == "greenhub":
                self.loop._io_trace = None
            self.objs.clear()
            self.all_objs.clear()
            self.vthreads.clear()
            self.coros.clear()
            self.timer_refs.clear()


def _drive_sync(gen, await_):
    try:
        aw = next(gen)
        while True:
            try:
                res = (True, await_(aw))
            except BaseException as e:  # noqa: BLE001 - handed to the body
                res = (False, e)
            aw = gen.send(res)
    except StopIteration as stop:
        return stop.value


class _Tracked:
    """`await _Tracked(aw, note)` is `await aw`, calling note() each time it suspends:
    the model of a virtual thread knows when it last parked, as greenhub's list does."""

    def __init__(self, aw, note):
        self.aw = aw
        self.note = note

    def __await__(self):
        it = self.aw.__await__()
        value, exc = None, None
        while True:
            try:
                out = it.send(value) if exc is None else it.throw(exc)
            except StopIteration as stop:
                return stop.value
            self.note()
            try:
                value, exc = (yield out), None
            except BaseException as e:  # noqa: BLE001 - passed in, as `await` does
                value, exc = None, e


async def _drive_async(gen, note=None):
    try:
        aw = next(gen)
        while True:
            try:
                res = (True, await (aw if note is None else _Tracked(aw, note)))
            except BaseException as e:  # noqa: BLE001 - handed to the body
                res = (False, e)
            aw = gen.send(res)
    except StopIteration as stop:
        return stop.value


# --- comparing -----------------------------------------------------------------------------


class Divergence:
    def __init__(self, prog, index, greenhub_log, stock_log):
        self.prog = prog
        self.index = index
        self.greenhub_log = greenhub_log
        self.stock_log = stock_log

    def describe(self, context=6):
        i = self.index
        lines = [f"transcripts differ at entry {i}:"]
        for name, log in (("greenhub", self.greenhub_log), ("stock", self.stock_log)):
            lines.append(f"  {name}:")
            for j in range(max(0, i - context), min(len(log), i + 3)):
                mark = ">>" if j == i else "  "
                lines.append(f"    {mark} {j}: {log[j]!r}")
            if i >= len(log):
                lines.append(f"    >> {i}: (transcript ends)")
        return "\n".join(lines)


def run_both(prog, opts=None):
    """(greenhub transcript, stock transcript)."""
    opts = opts or Options()
    g = Run("greenhub", opts)
    glog = g.run_program(prog)
    orders = io_orders_from_trace(g.trace)
    s = Run("asyncio", opts, io_orders=orders)
    slog = s.run_program(prog)
    return glog, slog


def check(prog, opts=None):
    """None if both loops agree on `prog`, else a Divergence."""
    glog, slog = run_both(prog, opts)
    if glog == slog:
        return None
    i = next(
        (k for k, (a, b) in enumerate(zip(glog, slog, strict=False)) if a != b),
        min(len(glog), len(slog)),
    )
    return Divergence(prog, i, glog, slog)


def check_seed(seed, n_ops=200, opts=None):
    return check(generate(seed, n_ops, opts), opts)


# --- shrinking -----------------------------------------------------------------------------


def _lists_in(prog):
    """Every list of operations in prog (the program, bodies, steps), outermost first."""
    out = [prog]
    for op in prog:
        for arg in op[1:]:
            if isinstance(arg, list) and arg and all(isinstance(x, list) for x in arg):
                if all(x and isinstance(x[0], str) for x in arg):
                    out.extend(_lists_in(arg))
    return out


def shrink(prog, opts=None, still_fails=None, deadline=None, alarm=0):
    """A smaller program that still diverges: removes chunks of the top-level list, then
    single operations anywhere in the tree, until nothing more can go (or the deadline
    passes).  alarm: seconds each try may take (SIGALRM; main thread only)."""
    import copy

    def fails(p):
        if deadline is not None and time.monotonic() > deadline:
            return False
        if alarm:
            signal.alarm(alarm)
        try:
            return (still_fails or check)(p, opts) is not None
        except Abort:
            return False
        finally:
            if alarm:
                signal.alarm(0)

    prog = copy.deepcopy(prog)
    n = 2
    while len(prog) >= 2:
        chunk = max(1, len(prog) // n)
        changed = False
        for start in range(0, len(prog), chunk):
            cand = prog[:start] + prog[start + chunk :]
            if cand and fails(cand):
                prog = cand
                n = max(n - 1, 2)
                changed = True
                break
        if not changed:
            if chunk == 1:
                break
            n = min(len(prog), n * 2)
    progress = True
    while progress:
        progress = False
        for lst in _lists_in(prog):
            i = 0
            while i < len(lst):
                removed = lst.pop(i)
                if lst is not prog or lst:
                    if fails(prog):
                        progress = True
                        continue
                lst.insert(i, removed)
                i += 1
    return prog


# --- command line ----------------------------------------------------------------------------


def _alarm(signum, frame):
    # Again in a second, in case this one lands where it cannot propagate (a greenlet's
    # or a generator's finalizer, which only print it); main() disarms it.
    signal.alarm(1)
    raise _Timeout("seed took too long (a hang?)")


def _parse_seeds(text):
    if ":" in text:
        a, b = text.split(":")
        return range(int(a), int(b))
    return [int(x) for x in text.split(",")]


def _report(seed, div, args, opts):
    print(f"\nseed {seed} diverges ({args.ops} ops, {opts}).", flush=True)
    print(div.describe())
    print("shrinking...", flush=True)
    small = shrink(
        div.prog, opts, deadline=time.monotonic() + args.shrink_seconds, alarm=args.seed_timeout
    )
    final = check(small, opts)
    print(f"shrunk to {len(small)} top-level operations:")
    print(json.dumps(small))
    if final is not None:
        print(final.describe())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0:1000", help="A:B (range) or a,b,c")
    ap.add_argument("--ops", type=int, default=200, help="top-level operations per program")
    ap.add_argument("--seconds", type=float, help="random seeds until this time is up")
    ap.add_argument("--show", type=int, help="print both transcripts of this seed")
    ap.add_argument("--replay", help="a JSON program (from a report) to check")
    ap.add_argument("--keep-going", action="store_true", help="report every diverging seed")
    ap.add_argument("--shrink-seconds", type=float, default=120)
    ap.add_argument("--seed-timeout", type=int, default=60)
    ap.add_argument("--timer-edges", action="store_true", help="NaN/inf/huge delays (flag)")
    ap.add_argument(
        "--cross-thread-wakeups", action="store_true", help="wakeups of a sleeping loop (flag)"
    )
    ap.add_argument("--debug", action="store_true", help="both loops in debug mode")
    ap.add_argument(
        "--await-cycles", action="store_true", help="tasks awaiting each other in a cycle"
    )
    args = ap.parse_args(argv)
    opts = Options(args.timer_edges, args.cross_thread_wakeups, args.debug, args.await_cycles)
    # greenhub's close() logs the cancellations it could not finish; the transcript has
    # what matters.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    signal.signal(signal.SIGALRM, _alarm)

    if args.show is not None or args.replay:
        prog = (
            json.loads(open(args.replay).read())
            if args.replay
            else generate(args.show, args.ops, opts)
        )
        glog, slog = run_both(prog, opts)
        for name, log in (("greenhub", glog), ("stock", slog)):
            print(f"--- {name} ({len(log)} entries)")
            for i, entry in enumerate(log):
                print(f"{i:5} {entry!r}")
        div = check(prog, opts)
        print("EQUAL" if div is None else div.describe())
        return 0 if div is None else 1

    if args.seconds is not None:
        start_seed = random.SystemRandom().randrange(1 << 32)
        print(f"random seeds from {start_seed} for {args.seconds:.0f} s", flush=True)
        seeds = range(start_seed, start_seed + (1 << 40))
        stop_at = time.monotonic() + args.seconds
    else:
        seeds = _parse_seeds(args.seeds)
        stop_at = None
    t0 = time.monotonic()
    done = ops = failures = 0
    last = None
    for seed in seeds:
        if stop_at is not None and time.monotonic() > stop_at:
            break
        last = seed
        signal.alarm(args.seed_timeout)
        try:
            prog = generate(seed, args.ops, opts)
            div = check(prog, opts)
        except Abort as e:
            div = None
            print(f"\nseed {seed}: {type(e).__name__}: {e}", flush=True)
            failures += 1
        finally:
            signal.alarm(0)
        done += 1
        ops += args.ops
        if div is not None:
            failures += 1
            _report(seed, div, args, opts)
            if not args.keep_going:
                break
        if done % 200 == 0:
            print(f"  {done} seeds, {time.monotonic() - t0:.0f} s", flush=True)
    print(
        f"{done} seeds ({seeds[0]}..{last}) x {args.ops} ops "
        f"({ops} top-level operations) in {time.monotonic() - t0:.0f} s: {failures} diverging",
        flush=True,
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
