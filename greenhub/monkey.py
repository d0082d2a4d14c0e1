"""Opt-in monkey-patching: blocking standard-library calls that suspend only
the calling virtual thread.

``greenhub.monkey.patch_all()`` (or one ``patch_*()`` per module) replaces
`time.sleep`, `select`, `selectors`, `subprocess` waits, `threading`'s
primitives, `queue`'s queues and (with `greenhub.socket`) `socket`/`ssl`.
Importing greenhub patches nothing.

The rule every replacement follows.  A call made *inside a greenhub virtual
thread* (``_core.in_vthread()``: a task step on a greenhub loop running in
this OS thread) waits cooperatively: only that task is suspended, on the
loop's own watchers and timers.  The same call made anywhere else - another
OS thread, no loop, the loop's callbacks, a stock asyncio loop - is the
original, called with the same arguments: same results, same exceptions,
same blocking.  A replaced function is therefore a small dispatcher; a
replaced class makes objects that decide per call (the `greenhub.sync`
primitives are built that way).

Patching after other imports.  A module that did ``from time import sleep``
before patching holds the original object in its globals.  Each patch call
therefore also rewrites such module-level references in every loaded module
(recorded, and put back by ``unpatch_all()``); what it cannot reach - an
original kept in a default argument, a class attribute or a container, an
object made before patching (a `threading.Lock()` created at import time
stays a real lock), a subclass of a replaced class defined before patching -
is listed in the docs, and the last case is reported with a
`MonkeyPatchWarning`.  A target already replaced by someone else (gevent,
eventlet, a mock) makes the patch call raise instead of stacking on it.

Waiting on file descriptors.  The loop's ``add_reader`` keeps one callback per
fd and replaces a previous one, so a select() in a virtual thread must not
register the caller's fds on the loop: a transport or another virtual thread
may be watching the same fd.  It registers them in a private, short-lived
``epoll`` instead (an fd may sit in any number of epoll sets) and waits for
*that* epoll fd to become readable on the loop (``_core._wait_fd``).  An
epoll selector waits on its own epoll fd the same way (two virtual threads in
one selector's select() at once: the second raises RuntimeError), and a child
process on its pidfd.  After each
wake-up the original call is repeated with a zero timeout, so the result is
always the original function's own answer.
"""

import _thread
import asyncio
import errno
import functools
import math
import operator
import os
import select as _select_mod
import selectors as _selectors_mod
import subprocess as _subprocess_mod
import sys
import threading as _threading_mod
import time as _time_mod
import types
import warnings
import weakref
from typing import Any

from . import _core
from ._private import _getframe, _local

__all__ = [
    "MonkeyPatchWarning",
    "get_original",
    "is_patched",
    "patch_all",
    "patch_queue",
    "patch_select",
    "patch_selectors",
    "patch_socket",
    "patch_ssl",
    "patch_subprocess",
    "patch_thread",
    "patch_time",
    "patched",
    "unpatch_all",
]

_in_vthread = _core.in_vthread
_await = _core.await_
_wait_fd = _core._wait_fd
_running_loop = asyncio.get_running_loop  # where a loop must run (in a virtual thread)
_current_task = asyncio.current_task
_monotonic = _time_mod.monotonic

# The originals this module needs itself, captured at import so that patching
# never changes them underneath (greenhub.* modules are never rewritten).
_orig_sleep = _time_mod.sleep
_orig_select = _select_mod.select
_orig_poll = _select_mod.poll
_orig_epoll = _select_mod.epoll
_EPOLLIN = _select_mod.EPOLLIN
_EPOLLOUT = _select_mod.EPOLLOUT
_EPOLLPRI = _select_mod.EPOLLPRI
_EPOLLONESHOT = _select_mod.EPOLLONESHOT

_MISSING = object()


class MonkeyPatchWarning(RuntimeWarning):
    """Something loaded before patching keeps using an unpatched original."""


# --------------------------------------------------------------------------
# The registry: what is patched, with the originals to put back


class _Item:
    """One replaced attribute: ``holder.name`` was ``original``."""

    __slots__ = ("holder", "name", "original", "replacement", "label")

    def __init__(self, holder, name, original, replacement, label):
        self.holder = holder
        self.name = name
        self.original = original
        self.replacement = replacement
        self.label = label


_registry_lock = _thread.allocate_lock()  # patch/unpatch may be called from several threads
_applied: dict[
    str, list[_Item]
] = {}  # group ("time", "thread", ...) -> [_Item] in the order applied
_references: dict[
    str, list[tuple[dict[str, Any], str, Any, Any]]
] = {}  # group -> [(module dict, key, original, replacement)] rewritten by the scan
_originals: dict[str, Any] = {}  # label ("time.sleep") -> original, for get_original()

# Modules whose globals the reference scan leaves alone: greenhub keeps the
# originals it builds on; the C modules define them; the import system must
# keep real locks; other monkey-patchers keep their own saved originals.
_SCAN_SKIP = ("greenhub", "_thread", "builtins", "sys", "importlib", "gevent", "eventlet")


def _skip_module(name):
    for prefix in _SCAN_SKIP:
        if name == prefix or name.startswith(prefix + "."):
            return True
    return False


def _qualname(holder, name):
    if isinstance(holder, types.ModuleType):
        return f"{holder.__name__}.{name}"
    return f"{holder.__module__}.{holder.__qualname__}.{name}"


class _Batch:
    """The replacements of one patch call.  Checks every target first (a
    target someone else replaced makes the call fail before anything
    changes), applies them, then rewrites references in loaded modules."""

    def __init__(self):
        self.plans = []  # (group, holder, name, replacement, modules)

    def add(self, group, holder, name, replacement, modules):
        """Plan ``holder.name = replacement``; `modules` are the ``__module__``
        values the current object may have (else it is someone else's)."""
        self.plans.append((group, holder, name, replacement, modules))

    def apply(self):
        planned = []
        for group, holder, name, replacement, modules in self.plans:
            current = holder.__dict__.get(name, _MISSING)
            if current is _MISSING:
                continue  # not on this Python version / platform
            owner = getattr(current, "__module__", None)
            if owner not in modules:
                raise RuntimeError(
                    f"greenhub.monkey: {_qualname(holder, name)} is already replaced by "
                    f"{current!r} (from {owner!r}), probably by another monkey-patcher; "
                    f"greenhub will not patch over it.  Use one patcher per process."
                )
            planned.append(
                (group, _Item(holder, name, current, replacement, _qualname(holder, name)))
            )
        swaps = {}
        for group, item in planned:
            setattr(item.holder, item.name, item.replacement)
            _applied.setdefault(group, []).append(item)
            _originals.setdefault(item.label, item.original)
            if isinstance(item.holder, types.ModuleType):
                swaps[id(item.original)] = (item.original, item.replacement, group)
        _rewrite_references(swaps)


def _module_namespaces():
    """The globals of every loaded module whose names patching may rewrite."""
    for modname, module in list(sys.modules.items()):
        if isinstance(module, types.ModuleType) and not _skip_module(modname):
            yield module.__dict__


def _rewrite_references(swaps):
    """Point module-level names that hold a patched original (``from time
    import sleep`` done before patching) at the replacement."""
    if not swaps:
        return
    for namespace in _module_namespaces():
        for key, value in list(namespace.items()):
            swap = swaps.get(id(value))
            if swap is None or swap[0] is not value:
                continue
            original, replacement, group = swap
            if namespace.get(key) is not value:
                continue
            namespace[key] = replacement
            _references.setdefault(group, []).append((namespace, key, original, replacement))


def _unpatch_group(group):
    for namespace, key, original, replacement in reversed(_references.pop(group, [])):
        if namespace.get(key) is replacement:
            namespace[key] = original
    items = _applied.pop(group, [])
    for item in reversed(items):
        setattr(item.holder, item.name, item.original)
    # Modules imported while patched picked up replacements by name.
    back = {
        id(item.replacement): item for item in items if isinstance(item.holder, types.ModuleType)
    }
    if not back:
        return
    for namespace in _module_namespaces():
        for key, value in list(namespace.items()):
            found = back.get(id(value))
            if found is not None and found.replacement is value:
                namespace[key] = found.original


def _patch(group, plan):
    """Run ``plan(batch)`` unless `group` is already patched (then a no-op)."""
    with _registry_lock:
        if group in _applied:
            return
        batch = _Batch()
        plan(batch)
        batch.apply()
        _applied.setdefault(group, [])


def _wraps(original, replacement):
    """Give `replacement` the original's names, so reprs, pickling by
    reference and ``inspect.signature`` (via ``__wrapped__``) still work."""
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        try:
            setattr(replacement, attr, getattr(original, attr))
        except (AttributeError, TypeError):
            pass
    replacement.__wrapped__ = original
    return replacement


# --------------------------------------------------------------------------
# Cooperative waits (called only inside a virtual thread)


def _resolve(fut):
    if not fut.done():
        fut.set_result(None)


def _green_sleep(seconds):
    """Suspend this virtual thread for `seconds` (a validated number)."""
    if seconds <= 0:
        _await(asyncio.sleep(0))  # one trip round the loop, like asyncio.sleep(0)
        return
    loop = _running_loop()
    fut = loop.create_future()
    timer = loop.call_later(seconds, _resolve, fut)
    try:
        _await(fut)
    finally:
        timer.cancel()


def _wait_readable(fd, timeout):
    """Suspend this virtual thread until `fd` (an epoll or a pidfd: one nothing
    else watches) is readable or `timeout` seconds (None: no limit; 0: only
    look) pass.  A second virtual thread waiting on the same fd at once (two
    calls of one selector's select()) raises RuntimeError instead of taking
    the first one's wakeup."""
    _wait_fd(fd, 1, timeout)


def _remaining(deadline):
    return None if deadline is None else max(0.0, deadline - _monotonic())


def _wait_fds(masks, timeout, check):
    """Wait until ``check()`` (the original call with a zero timeout) has
    something to report, `timeout` seconds (None: forever) pass, or the
    virtual thread is cancelled; return check()'s last answer.

    `masks` maps fds to epoll event masks.  They go into a private epoll set
    (see the module docstring).  An fd epoll refuses (a regular file, which
    poll() and select() always report ready) is left out: check() sees it."""
    deadline = None if timeout is None else _monotonic() + timeout
    ep = _orig_epoll()
    try:
        for fd, mask in masks.items():
            if mask == _EPOLLPRI:
                # Only "exceptional conditions" (select's xlist): epoll also
                # reports hang-ups, which select() does not list there; one
                # shot keeps such an fd from waking us again and again.
                mask |= _EPOLLONESHOT
            try:
                ep.register(fd, mask)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EBADF, errno.EEXIST):
                    raise
        while True:
            _wait_readable(ep.fileno(), _remaining(deadline))
            result = check()
            if result or (deadline is not None and _monotonic() >= deadline):
                return result
    finally:
        ep.close()


def _sleep_until(deadline):
    """Wait with nothing to watch (an empty select); None: until cancelled."""
    if deadline is None:
        _await(_running_loop().create_future())
    else:
        _green_sleep(_remaining(deadline))


# Number conversions the C functions make, or _INVALID when the original
# would raise for the argument (it is then called, and raises its own error).
_INVALID = object()
_MAX_SECONDS = 9.2e9  # CPython's clock limit is 2**63 ns, ~9.22e9 s
_INT_MAX = 2**31 - 1


def _seconds(value):
    """A non-negative number of seconds as time.sleep() and select() accept
    it (a float, or an integer by ``__index__``), else _INVALID."""
    if isinstance(value, float):
        value = float(value)
    else:
        try:
            value = operator.index(value)
        except TypeError:
            return _INVALID
    if not 0 <= value <= _MAX_SECONDS:  # also NaN
        return _INVALID
    return value


def _poll_milliseconds(value):
    """poll()'s timeout in ms -> seconds, None (wait forever) or _INVALID."""
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:
            return _INVALID
        ms = math.ceil(value) if value >= 0 else math.floor(value)
    else:
        try:
            ms = operator.index(value)
        except TypeError:
            return _INVALID
    if not -_INT_MAX - 1 <= ms <= _INT_MAX:
        return _INVALID
    return None if ms < 0 else ms / 1000


def _epoll_seconds(value):
    """epoll.poll()'s timeout in seconds -> seconds, None or _INVALID."""
    if value is None:
        return None
    if isinstance(value, float):
        if value != value:
            return _INVALID
        ms = value * 1000
        ms = math.ceil(ms) if ms >= 0 else math.floor(ms)
    else:
        try:
            ms = operator.index(value) * 1000
        except TypeError:
            return _INVALID
    if not -_INT_MAX - 1 <= ms <= _INT_MAX:
        return _INVALID
    return None if ms < 0 else ms / 1000


def _fileno(obj):
    return obj if isinstance(obj, int) else obj.fileno()


# --------------------------------------------------------------------------
# time


def _make_sleep(original):
    def sleep(secs):
        if not _in_vthread():
            return original(secs)
        seconds = _seconds(secs)
        if seconds is _INVALID:
            return original(secs)  # raises exactly its own error
        _green_sleep(seconds)

    return _wraps(original, sleep)


def _plan_time(batch):
    batch.add("time", _time_mod, "sleep", _make_sleep(_time_mod.sleep), ("time",))


def patch_time() -> None:
    """Patch `time.sleep`: in a virtual thread it suspends only that task."""
    _patch("time", _plan_time)


# --------------------------------------------------------------------------
# select: select(), poll(), epoll


def _make_select(original):
    def select(rlist, wlist, xlist, timeout=None, /):
        if not _in_vthread():
            return original(rlist, wlist, xlist, timeout)
        seconds = None if timeout is None else _seconds(timeout)
        if seconds is _INVALID:
            return original(rlist, wlist, xlist, timeout)  # raises its own error
        # select() accepts any iterables; look at each only once.
        try:
            lists = [x if type(x) in (list, tuple) else list(x) for x in (rlist, wlist, xlist)]
        except TypeError:
            return original(rlist, wlist, xlist, timeout)  # raises its own error
        rlist, wlist, xlist = lists

        def check():
            r, w, x = original(rlist, wlist, xlist, 0)
            return (r, w, x) if r or w or x else None

        ready = check()
        if ready is not None:
            return ready
        if seconds == 0:
            return ([], [], [])
        masks: dict[int, int] = {}
        for objs, bit in ((rlist, _EPOLLIN), (wlist, _EPOLLOUT), (xlist, _EPOLLPRI)):
            for obj in objs:
                fd = _fileno(obj)
                masks[fd] = masks.get(fd, 0) | bit
        if not masks:
            _sleep_until(None if seconds is None else _monotonic() + seconds)
            return ([], [], [])
        return _wait_fds(masks, seconds, check) or ([], [], [])

    return _wraps(original, select)


_DEFAULT_POLL_MASK = _select_mod.POLLIN | _select_mod.POLLPRI | _select_mod.POLLOUT
_POLL_TO_EPOLL = (
    _select_mod.POLLIN
    | _select_mod.POLLPRI
    | _select_mod.POLLOUT
    | _select_mod.POLLRDNORM
    | _select_mod.POLLRDBAND
    | _select_mod.POLLWRNORM
    | _select_mod.POLLWRBAND
    | _select_mod.POLLRDHUP
)  # bit for bit the same as the epoll events on Linux


class _Poll:
    """What the patched `select.poll()` returns: a real poll object whose
    ``poll()`` waits cooperatively in a virtual thread.  The registrations
    are kept here too, so that a wait can watch them without the loop."""

    __slots__ = ("_poll", "_masks")

    def __init__(self):
        self._poll = _orig_poll()
        self._masks = {}

    def register(self, *args):
        self._poll.register(*args)
        self._masks[_fileno(args[0])] = args[1] if len(args) > 1 else _DEFAULT_POLL_MASK

    def modify(self, *args):
        self._poll.modify(*args)
        self._masks[_fileno(args[0])] = args[1]

    def unregister(self, *args):
        self._poll.unregister(*args)
        self._masks.pop(_fileno(args[0]), None)

    def poll(self, *args):
        poll = self._poll.poll
        if not _in_vthread() or len(args) > 1:
            return poll(*args)
        timeout = args[0] if args else None
        seconds = _poll_milliseconds(timeout)
        if seconds is _INVALID:
            return poll(timeout)  # raises its own error
        ready = poll(0)
        if ready or seconds == 0:
            return ready
        masks = {fd: mask & _POLL_TO_EPOLL for fd, mask in self._masks.items()}
        if not masks:
            _sleep_until(None if seconds is None else _monotonic() + seconds)
            return poll(0)
        return _wait_fds(masks, seconds, lambda: poll(0))

    def __getattr__(self, name):
        return getattr(self._poll, name)

    def __repr__(self):
        return repr(self._poll)


def _make_poll(original):
    def poll():
        return _Poll()

    return _wraps(original, poll)


class _Epoll:
    """What the patched `select.epoll` makes: a real epoll object (which
    cannot be subclassed) whose ``poll()`` waits cooperatively in a virtual
    thread, on the epoll fd itself."""

    __slots__ = ("_epoll", "__weakref__")

    def __init__(self, *args, **kwargs):
        self._epoll = _orig_epoll(*args, **kwargs)

    @classmethod
    def fromfd(cls, fd, /):
        self = cls.__new__(cls)
        self._epoll = _orig_epoll.fromfd(fd)
        return self

    @property
    def closed(self):
        return self._epoll.closed

    def close(self):
        self._epoll.close()

    def fileno(self):
        return self._epoll.fileno()

    def register(self, *args, **kwargs):
        return self._epoll.register(*args, **kwargs)

    def modify(self, *args, **kwargs):
        return self._epoll.modify(*args, **kwargs)

    def unregister(self, *args, **kwargs):
        return self._epoll.unregister(*args, **kwargs)

    def poll(self, timeout=None, maxevents=-1):
        poll = self._epoll.poll
        if not _in_vthread():
            return poll(timeout, maxevents)
        seconds = _epoll_seconds(timeout)
        if seconds is _INVALID:
            return poll(timeout, maxevents)  # raises its own error
        ready = poll(0, maxevents)  # also checks maxevents and closed
        if ready or seconds == 0:
            return ready
        deadline = None if seconds is None else _monotonic() + seconds
        while True:
            _wait_readable(self._epoll.fileno(), _remaining(deadline))
            ready = poll(0, maxevents)
            if ready or (deadline is not None and _monotonic() >= deadline):
                return ready

    def __enter__(self):
        self._epoll.__enter__()
        return self

    def __exit__(self, *exc):
        return self._epoll.__exit__(*exc)

    def __repr__(self):
        return repr(self._epoll)


_Epoll.__name__ = _Epoll.__qualname__ = "epoll"


def _plan_select(batch):
    batch.add("select", _select_mod, "select", _make_select(_select_mod.select), ("select",))
    batch.add("select", _select_mod, "poll", _make_poll(_select_mod.poll), ("select",))
    batch.add("select", _select_mod, "epoll", _Epoll, ("select",))


def patch_select() -> None:
    """Patch `select.select`, `select.poll` and `select.epoll`: their waits
    suspend only the calling virtual thread."""
    _patch("select", _plan_select)


# --------------------------------------------------------------------------
# selectors


_EVENT_MASKS = {
    _selectors_mod.EVENT_READ: _EPOLLIN,
    _selectors_mod.EVENT_WRITE: _EPOLLOUT,
    _selectors_mod.EVENT_READ | _selectors_mod.EVENT_WRITE: _EPOLLIN | _EPOLLOUT,
}


def _make_selector_select(original):
    def select(self, timeout=None):
        if not _in_vthread():
            return original(self, timeout)
        ready = original(self, 0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        deadline = None if timeout is None else _monotonic() + timeout
        if isinstance(self, _selectors_mod.EpollSelector):
            while True:  # the selector's own epoll fd says when to look again
                _wait_readable(self.fileno(), _remaining(deadline))
                ready = original(self, 0)
                if ready or (deadline is not None and _monotonic() >= deadline):
                    return ready
        masks = {key.fd: _EVENT_MASKS.get(key.events, 0) for key in self.get_map().values()}
        if not masks:
            _sleep_until(deadline)
            return original(self, 0)
        return _wait_fds(masks, _remaining(deadline), lambda: original(self, 0))

    return _wraps(original, select)


def _selector_classes():
    names = ("SelectSelector", "PollSelector", "EpollSelector", "DevpollSelector")
    return [getattr(_selectors_mod, n) for n in names if hasattr(_selectors_mod, n)]


def _plan_selectors(batch):
    seen = set()
    for cls in _selector_classes():
        for owner in cls.__mro__:  # patch the class that defines select()
            if "select" in owner.__dict__:
                break
        if owner in seen or owner is _selectors_mod.BaseSelector:
            continue
        seen.add(owner)
        original = owner.__dict__["select"]
        batch.add("selectors", owner, "select", _make_selector_select(original), ("selectors",))


def patch_selectors() -> None:
    """Patch the ``select()`` method of `selectors`' selector classes
    (`DefaultSelector` among them), in place: selectors made before
    patching, and classes other modules hold (subprocess, socketserver),
    wait cooperatively in virtual threads too."""
    _patch("selectors", _plan_selectors)


# --------------------------------------------------------------------------
# subprocess


# A communicate() given no timeout but a single pipe reads or writes it with
# one blocking call; with a timeout it takes the selector path, which waits
# cooperatively.  This one is long enough never to expire (about 31 years).
_FOREVER = 1e9


def _child_exit_wait(popen, timeout):
    """Wait in a virtual thread until `popen`'s child has exited (True) or
    `timeout` seconds pass (False).  Does not reap it."""
    try:
        pidfd = os.pidfd_open(popen.pid)
    except ProcessLookupError:
        return True  # reaped already: the original wait reports it
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        try:
            _wait_readable(pidfd, timeout)
        finally:
            os.close(pidfd)
        return _child_exited(popen.pid)
    # No pidfds (old kernel, seccomp): poll, backing off to 50 ms.
    deadline = None if timeout is None else _monotonic() + timeout
    delay = 0.0005
    while True:
        if _child_exited(popen.pid):
            return True
        remaining = _remaining(deadline)
        if remaining == 0.0:
            return False
        _green_sleep(delay if remaining is None else min(delay, remaining))
        delay = min(delay * 2, 0.05)


def _child_exited(pid):
    """True if the child can be reaped now (without reaping it)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True  # not ours to wait for any more: the original says so
    return info is not None and info.si_pid == pid


def _make_popen_wait(original):
    def _wait(self, timeout):
        if (
            self.returncode is not None
            or not _in_vthread()
            or (timeout is not None and timeout <= 0)
        ):
            return original(self, timeout)
        if not _child_exit_wait(self, timeout):
            raise _subprocess_mod.TimeoutExpired(self.args, timeout)
        return original(self, None)  # the child has exited: reaps at once

    return _wraps(original, _wait)


def _make_communicate(original):
    def communicate(self, input=None, timeout=None):
        if (
            timeout is None
            and not self._communication_started
            and [self.stdin, self.stdout, self.stderr].count(None) >= 2
            and _in_vthread()
        ):
            timeout = _FOREVER
        return original(self, input, timeout)

    return _wraps(original, communicate)


def _plan_subprocess(batch):
    popen = _subprocess_mod.Popen
    original_wait = popen._wait  # type: ignore[attr-defined]  # (private: typeshed omits it)
    batch.add("subprocess", popen, "_wait", _make_popen_wait(original_wait), ("subprocess",))
    batch.add(
        "subprocess",
        popen,
        "communicate",
        _make_communicate(popen.communicate),
        ("subprocess",),
    )


def patch_subprocess() -> None:
    """Patch `subprocess.Popen`'s waits in place: ``wait()``,
    ``communicate()`` and so ``run()``, ``call()``, ``check_output()`` and
    the ``with Popen(...)`` exit suspend only the calling virtual thread."""
    _patch("subprocess", _plan_subprocess)
    # communicate() waits on its pipes through selectors.
    patch_selectors()


# --------------------------------------------------------------------------
# threading


_local_base = _local
_local_getattribute = _local_base.__getattribute__
_local_setattr = _local_base.__setattr__
_local_delattr = _local_base.__delattr__


class local(_local_base):
    """`threading.local` whose namespace, inside a virtual thread, belongs to
    that virtual thread.

    Outside virtual threads every access is the real thread-local's: one
    namespace per OS thread (the loop's callbacks share their thread's).
    Inside a virtual thread the namespace is the task's own, made on first
    use and initialised as a new OS thread's would be (a subclass's
    ``__init__`` runs again with the constructor's arguments), and dropped
    with the task.  Attributes are looked up as usual: class attributes and
    descriptors first where Python puts them.
    """

    # Shared by every thread and task: the constructor's arguments, and a
    # real thread-local holding {task: namespace} for each OS thread (tasks
    # never leave their loop's thread).
    __slots__ = ("_gh_args", "_gh_tasks")

    def __new__(cls, /, *args: Any, **kwargs: Any) -> "local":
        self = super().__new__(cls, *args, **kwargs)
        _ARGS_SLOT.__set__(self, (args, kwargs))
        _TASKS_SLOT.__set__(self, _local_base())
        if _in_vthread():
            task = _current_task()
            if task is not None:
                # __init__ runs next (type.__call__) and fills this one.
                _task_namespaces(self)[task] = {}
        return self

    def __getattribute__(self, name: str) -> Any:
        if _in_vthread():
            ns = _vthread_namespace(self)
            if ns is not None:
                return _getattr_in(self, name, ns)
        return _local_getattribute(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if _in_vthread():
            ns = _vthread_namespace(self)
            if ns is not None:
                return _setattr_in(self, name, value, ns)
        return _local_setattr(self, name, value)

    def __delattr__(self, name: str) -> None:
        if _in_vthread():
            ns = _vthread_namespace(self)
            if ns is not None:
                return _delattr_in(self, name, ns)
        return _local_delattr(self, name)


_ARGS_SLOT = local.__dict__["_gh_args"]
_TASKS_SLOT = local.__dict__["_gh_tasks"]


def _task_namespaces(self):
    per_thread = _TASKS_SLOT.__get__(self, local)
    try:
        return _local_getattribute(per_thread, "tasks")
    except AttributeError:
        tasks: weakref.WeakKeyDictionary[asyncio.Task[Any], dict[str, Any]]
        tasks = weakref.WeakKeyDictionary()
        _local_setattr(per_thread, "tasks", tasks)
        return tasks


def _vthread_namespace(self):
    task = _current_task()
    if task is None:
        return None
    tasks = _task_namespaces(self)
    ns = tasks.get(task)
    if ns is None:
        ns = tasks[task] = {}
        init = type(self).__init__
        if init is not object.__init__:
            args, kwargs = _ARGS_SLOT.__get__(self, local)
            try:
                init(self, *args, **kwargs)
            except BaseException:
                del tasks[task]
                raise
    return ns


def _lookup(tp, name):
    for klass in tp.__mro__:
        attr = klass.__dict__.get(name, _MISSING)
        if attr is not _MISSING:
            return attr
    return _MISSING


def _getattr_in(self, name, ns):
    """Generic attribute lookup with `ns` as the instance dict."""
    if name == "__dict__":
        return ns
    tp = type(self)
    attr = _lookup(tp, name)
    if attr is not _MISSING:
        kind = type(attr)
        get = getattr(kind, "__get__", None)
        if get is not None and (hasattr(kind, "__set__") or hasattr(kind, "__delete__")):
            return get(attr, self, tp)
    try:
        return ns[name]
    except KeyError:
        pass
    if attr is not _MISSING:
        get = getattr(type(attr), "__get__", None)
        return attr if get is None else get(attr, self, tp)
    raise AttributeError(f"{tp.__name__!r} object has no attribute {name!r}", name=name, obj=self)


def _setattr_in(self, name, value, ns) -> None:
    tp = type(self)
    if name == "__dict__":
        raise AttributeError(f"{tp.__name__!r} object attribute '__dict__' is read-only")
    attr = _lookup(tp, name)
    if attr is not _MISSING and hasattr(type(attr), "__set__"):
        type(attr).__set__(attr, self, value)
        return
    ns[name] = value


def _delattr_in(self, name, ns) -> None:
    tp = type(self)
    if name == "__dict__":
        raise AttributeError(f"{tp.__name__!r} object attribute '__dict__' is read-only")
    attr = _lookup(tp, name)
    if attr is not _MISSING and hasattr(type(attr), "__delete__"):
        type(attr).__delete__(attr, self)
        return
    try:
        del ns[name]
    except KeyError:
        raise AttributeError(
            f"{tp.__name__!r} object has no attribute {name!r}", name=name, obj=self
        ) from None


def _make_join(original):
    def join(self, timeout=None):
        if not _in_vthread() or (timeout is not None and timeout <= 0):
            return original(self, timeout)
        # The original first: it raises for a thread not started or the
        # current one, and returns at once with a zero timeout.
        original(self, 0)
        if not self.is_alive():
            return
        # A thread's end is signalled by a lock its C code releases: nothing
        # the loop can watch, so poll, backing off to 50 ms.
        deadline = None if timeout is None else _monotonic() + timeout
        delay = 0.0005
        while self.is_alive():
            remaining = _remaining(deadline)
            if remaining == 0.0:
                return
            _green_sleep(delay if remaining is None else min(delay, remaining))
            delay = min(delay * 2, 0.05)
        original(self, 0)

    return _wraps(original, join)


def _plan_thread(batch):
    from . import sync

    th = _threading_mod
    lock_modules = ("_thread",)
    batch.add("thread", th, "Lock", sync.Lock, lock_modules)
    batch.add("thread", th, "_allocate_lock", sync.Lock, lock_modules)
    batch.add("thread", th, "RLock", sync.RLock, ("threading",))
    for name in ("Condition", "Event", "Semaphore", "BoundedSemaphore"):
        batch.add("thread", th, name, getattr(sync, name), ("threading",))
    batch.add("thread", th, "local", local, ("_thread",))
    batch.add("thread", th.Thread, "join", _make_join(th.Thread.join), ("threading",))


def patch_thread() -> None:
    """Patch `threading`'s ``Lock``, ``RLock``, ``Condition``, ``Event``,
    ``Semaphore``, ``BoundedSemaphore`` (the `greenhub.sync` classes),
    ``local`` (one namespace per virtual thread inside virtual threads) and
    ``Thread.join`` (waits cooperatively in a virtual thread).  `_thread`
    itself is left alone: the import system makes its module locks there."""
    _patch("thread", _plan_thread)


# --------------------------------------------------------------------------
# queue


def _plan_queue(batch):
    import queue

    from . import sync

    for name in ("Queue", "LifoQueue", "PriorityQueue"):
        batch.add("queue", queue, name, getattr(sync, name), ("queue",))


def patch_queue() -> None:
    """Patch `queue.Queue`, `queue.LifoQueue` and `queue.PriorityQueue` with
    `greenhub.sync`'s (same interface, same `queue.Empty`/`queue.Full`)."""
    _patch("queue", _plan_queue)


# --------------------------------------------------------------------------
# socket, ssl


# Blocking name lookups.  In a virtual thread they run in the loop's default
# executor (the loop goes on meanwhile), except when there is nothing to look
# up (an IP literal and a numeric port): then the original answers at once.
# greenhub's own resolver calls socket.getaddrinfo for those from inside task
# steps, so the literal check is also what keeps the two from calling each
# other forever.
_RESOLVERS = ("getaddrinfo", "getnameinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr")


def _needs_lookup(name, args, kwargs):
    from ._resolve import _is_ip_literal, _is_numeric_port

    if name == "getaddrinfo":
        host = args[0] if args else kwargs.get("host")
        port = args[1] if len(args) > 1 else kwargs.get("port")
        return not (_is_ip_literal(host) and _is_numeric_port(port))
    if name == "getnameinfo":
        import socket

        flags = args[1] if len(args) > 1 else 0
        numeric = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
        return not (isinstance(flags, int) and flags & numeric == numeric)
    if name == "gethostbyname":
        return not (args and _is_ip_literal(args[0]) and args[0] is not None)
    return True


def _make_resolver(name, original):
    def resolver(*args, **kwargs):
        if not _in_vthread() or not _needs_lookup(name, args, kwargs):
            return original(*args, **kwargs)
        loop = _running_loop()
        return _await(loop.run_in_executor(None, functools.partial(original, *args, **kwargs)))

    return _wraps(original, resolver)


def _plan_socket(batch):
    import socket

    from . import socket as green

    batch.add("socket", socket, "socket", green.socket, ("socket",))
    for name in _RESOLVERS:
        batch.add(
            "socket",
            socket,
            name,
            _make_resolver(name, getattr(socket, name)),
            ("socket", "_socket"),
        )


def patch_socket() -> None:
    """Patch `socket.socket` with `greenhub.socket.socket` (so `socketpair`,
    `create_connection`, `create_server`, `fromfd` and ``accept()`` make
    green sockets too) and the blocking name lookups (``getaddrinfo`` & co.,
    which run in the loop's executor from a virtual thread)."""
    _patch("socket", _plan_socket)
    _warn_subclasses(
        "socket", "socket.socket", handled=("ssl.SSLSocket",) if is_patched("ssl") else ()
    )


def _warn_subclasses(group, label, handled=()):
    """Report classes derived from a replaced class before it was replaced:
    their instances keep the original's blocking behaviour."""
    original = _originals.get(label)
    if original is None or not is_patched(label):
        return
    found, todo = [], list(original.__subclasses__())
    while todo:
        cls = todo.pop()
        name = f"{cls.__module__}.{cls.__qualname__}"
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("greenhub") or name in handled:
            continue
        found.append(name)
    if found:
        warnings.warn(
            f"greenhub.monkey: classes derived from the original {label} before patching "
            f"keep its blocking calls, which hold up the whole loop in virtual threads: "
            f"{', '.join(sorted(found))}.  Patch before importing the modules that define "
            f"them.",
            MonkeyPatchWarning,
            stacklevel=_caller_stacklevel(),
        )


def _caller_stacklevel():
    """warnings.warn's stacklevel for the first frame outside this module."""
    frame: types.FrameType | None = _getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    return level


def _plan_ssl(batch):
    import ssl

    from . import ssl as green

    # In place on the class: contexts made before patching (a library's
    # module-level context) wrap into green SSL sockets too.
    batch.add("ssl", ssl.SSLContext, "sslsocket_class", green.SSLSocket, ("ssl",))


def patch_ssl() -> None:
    """Make every `ssl.SSLContext` (made before or after patching) wrap
    sockets into `greenhub.ssl.SSLSocket`: TLS handshakes, reads and writes
    suspend only the calling virtual thread."""
    _patch("ssl", _plan_ssl)


# --------------------------------------------------------------------------
# all, undo, inspection


_GROUPS = ("time", "ssl", "socket", "select", "selectors", "thread", "queue", "subprocess")


def patch_all(
    *,
    time: bool = True,
    socket: bool = True,
    ssl: bool = True,
    select: bool = True,
    selectors: bool = True,
    thread: bool = True,
    queue: bool = True,
    subprocess: bool = True,
) -> None:
    """Apply every patch (or the ones left True).  Idempotent; patching a
    group a second time does nothing."""
    flags = {
        "time": (time, patch_time),
        "socket": (socket, patch_socket),
        "ssl": (ssl, patch_ssl),
        "select": (select, patch_select),
        "selectors": (selectors, patch_selectors),
        "thread": (thread, patch_thread),
        "queue": (queue, patch_queue),
        "subprocess": (subprocess, patch_subprocess),
    }
    for group in _GROUPS:
        wanted, patcher = flags[group]
        if wanted:
            patcher()


def unpatch_all() -> None:
    """Undo every patch: each replaced attribute, and each module-level
    reference rewritten, is the original object again.  Objects made while
    patched (a greenhub Lock from `threading.Lock()`) stay what they are."""
    with _registry_lock:
        for group in reversed(list(_applied)):
            _unpatch_group(group)


def is_patched(name: str) -> bool:
    """True if `name` is patched: a group (``"time"``, ``"socket"``,
    ``"ssl"``, ``"select"``, ``"selectors"``, ``"thread"``, ``"queue"``,
    ``"subprocess"``) or a dotted attribute (``"time.sleep"``,
    ``"threading.Lock"``, ``"selectors.EpollSelector.select"``)."""
    if not isinstance(name, str):
        raise TypeError(f"is_patched() needs a group or dotted name, got {name!r}")
    if name in _GROUPS:
        return name in _applied
    return any(item.label == name for items in _applied.values() for item in items)


def patched() -> dict[str, list[str]]:
    """What is patched now: ``{group: [dotted names]}``, including other
    modules' references that the patch rewrote (``"mymodule.sleep"``)."""
    with _registry_lock:
        result = {}
        for group, items in _applied.items():
            names = [item.label for item in items]
            for namespace, key, _, _ in _references.get(group, ()):
                names.append(f"{namespace.get('__name__', '?')}.{key}")
            result[group] = names
        return result


def get_original(name: str) -> Any:
    """The original object behind a dotted name such as ``"time.sleep"``,
    whether patched now or not."""
    if not isinstance(name, str) or "." not in name:
        raise TypeError(f"get_original() needs a dotted name such as 'time.sleep', got {name!r}")
    if name in _originals and is_patched(name):
        return _originals[name]
    module_name, _, attr = name.rpartition(".")
    obj = _resolve_dotted(module_name)
    return getattr(obj, attr)


def _resolve_dotted(name):
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None:
            obj = module
            for part in parts[i:]:
                obj = getattr(obj, part)
            return obj
    raise LookupError(f"greenhub.monkey.get_original: no loaded module in {name!r}")
