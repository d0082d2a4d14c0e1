"""The selectors' select() methods in a virtual thread: the green implementation
behind patch_selectors().

Each replacement dispatches: inside a virtual thread it waits cooperatively,
anywhere else it is the original (see greenhub/monkey/__init__.py).
"""

import math
import selectors as _selectors_mod

from .. import _waits
from ._common import (
    _EPOLLIN,
    _EPOLLOUT,
    _INVALID,
    _epoll_seconds,
    _in_vthread,
    _monotonic,
    _poll_milliseconds,
    _seconds,
    _sleep_until,
    _wait_fds,
    _wait_readable,
    _wraps,
)

_EVENT_MASKS = {
    _selectors_mod.EVENT_READ: _EPOLLIN,
    _selectors_mod.EVENT_WRITE: _EPOLLOUT,
    _selectors_mod.EVENT_READ | _selectors_mod.EVENT_WRITE: _EPOLLIN | _EPOLLOUT,
}


def _refused(selector, timeout):
    """Whether the original select() raises for `timeout` before it waits: its own
    conversion of the timeout (selectors.py), then the system call's.  The original
    is then called to raise it, with each version's exception and message."""
    try:
        if isinstance(selector, _selectors_mod.SelectSelector):
            return _seconds(max(timeout, 0)) is _INVALID
        if timeout <= 0:
            return False
        if isinstance(selector, _selectors_mod.EpollSelector):
            return _epoll_seconds(math.ceil(timeout * 1e3) * 1e-3) is _INVALID
        return _poll_milliseconds(math.ceil(timeout * 1e3)) is _INVALID
    except (TypeError, ValueError, OverflowError):
        return True


def _make_selector_select(original):
    def select(self, timeout=None):
        if not _in_vthread() or (timeout is not None and _refused(self, timeout)):
            return original(self, timeout)
        ready = original(self, 0)
        if ready or (timeout is not None and timeout <= 0):
            return ready
        deadline = None if timeout is None else _monotonic() + timeout
        if isinstance(self, _selectors_mod.EpollSelector):
            while True:  # the selector's own epoll fd says when to look again
                _wait_readable(self.fileno(), _waits.remaining(deadline))
                ready = original(self, 0)
                if ready or (deadline is not None and _monotonic() >= deadline):
                    return ready
        masks = {key.fd: _EVENT_MASKS.get(key.events, 0) for key in self.get_map().values()}
        if not masks:
            _sleep_until(deadline)
            return original(self, 0)
        return _wait_fds(masks, _waits.remaining(deadline), lambda: original(self, 0))

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
