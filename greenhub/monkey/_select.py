"""select.select(), select.poll() and select.epoll in a virtual thread: the green
implementations behind patch_select().

Each replacement dispatches: inside a virtual thread it waits cooperatively,
anywhere else it is the original (see greenhub/monkey/__init__.py).
"""

import select as _select_mod

from .. import _waits
from ._common import (
    _EPOLLIN,
    _EPOLLOUT,
    _EPOLLPRI,
    _INVALID,
    _epoll_seconds,
    _fileno,
    _in_vthread,
    _monotonic,
    _orig_epoll,
    _orig_poll,
    _poll_milliseconds,
    _seconds,
    _sleep_until,
    _wait_fds,
    _wait_readable,
    _wraps,
)


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
            _wait_readable(self._epoll.fileno(), _waits.remaining(deadline))
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
