"""What greenhub.monkey's green implementations share.

The dispatch test (``in_vthread()``), the originals they build on (captured at
import, so that patching never changes them underneath: greenhub's modules are
never rewritten), the conversions of their timeout arguments, and the waits on
fds: a private, short-lived epoll set waited on through the loop (see the
package docstring, "Waiting on file descriptors").  Sleeping and deadlines are
greenhub._waits', shared with greenhub.sync.
"""

import _thread
import asyncio
import errno
import math
import operator
import select as _select_mod
import time as _time_mod

from .. import _core, _waits

_in_vthread = _core.in_vthread
_await = _core.await_
_wait_fd = _core._wait_fd
_running_loop = asyncio.get_running_loop  # where a loop must run (in a virtual thread)
_current_task = asyncio.current_task
_monotonic = _time_mod.monotonic

# The originals the green implementations build on, captured at import so that
# patching never changes them underneath (greenhub.* modules are never rewritten).
_orig_poll = _select_mod.poll
_orig_epoll = _select_mod.epoll
_orig_allocate_lock = _thread.allocate_lock
_EPOLLIN = _select_mod.EPOLLIN
_EPOLLOUT = _select_mod.EPOLLOUT
_EPOLLPRI = _select_mod.EPOLLPRI
_EPOLLONESHOT = _select_mod.EPOLLONESHOT

_MISSING = object()


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
# Cooperative waits on fds (called only inside a virtual thread)


def _wait_readable(fd, timeout):
    """Suspend this virtual thread until `fd` (an epoll or a pidfd: one nothing
    else watches) is readable or `timeout` seconds (None: no limit; 0: only
    look) pass.  A second virtual thread waiting on the same fd at once (two
    calls of one selector's select()) raises RuntimeError instead of taking
    the first one's wakeup."""
    _wait_fd(fd, 1, timeout)


def _wait_fds(masks, timeout, check):
    """Wait until ``check()`` (the original call with a zero timeout) has
    something to report, `timeout` seconds (None: forever) pass, or the
    virtual thread is cancelled; return check()'s last answer.

    `masks` maps fds to epoll event masks.  They go into a private epoll set
    (see the package docstring).  An fd epoll refuses (a regular file, which
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
            _wait_readable(ep.fileno(), _waits.remaining(deadline))
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
        _waits.sleep(_waits.remaining(deadline))


# Number conversions the C functions make, or _INVALID when the original
# would raise for the argument (it is then called, and raises its own error).
_INVALID = object()
_MAX_NS = 2**63 - 1  # CPython's clock (PyTime_t) limit: timeouts past it raise OverflowError
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
    if not value >= 0:  # also NaN
        return _INVALID
    # The interpreter's own check, exactly: a value just under the limit is accepted
    # there, so refusing it here would hand the original a timeout it then waits out.
    # (For a float: the C check is ceil(value * 1e9) < 2.0**63, the same as this.)
    if not value * (1e9 if isinstance(value, float) else 10**9) <= _MAX_NS:
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


def _check_lock_timeout(timeout):
    """Raise what a lock's ``acquire(True, timeout)`` raises for `timeout` (TypeError,
    ValueError for NaN, OverflowError past what the platform takes; the messages are
    each version's own) - without waiting: the lock is a fresh one, so it is free."""
    _orig_allocate_lock().acquire(True, timeout)


def _fileno(obj):
    return obj if isinstance(obj, int) else obj.fileno()
