"""Opt-in monkey-patching: blocking standard-library calls that suspend only
the calling virtual thread.

``greenhub.monkey.patch_all()`` (or one ``patch_*()`` per module) replaces
`time.sleep`, `select`, `selectors`, `subprocess` waits, `threading`'s
primitives, `queue`'s queues and (with `greenhub.socket`) `socket`/`ssl`.
Importing greenhub patches nothing.

The rule every replacement follows.  A call made *inside a greenhub virtual
thread* (``greenhub.in_vthread()``: a task step on a greenhub loop running in
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

# The package: the patch API and its registry are in _api; each green implementation
# is in the module named after what it replaces (_time, _select, _selectors,
# _subprocess, _threading, _queue, _socket), on top of what they share (_common).
from ._api import (
    MonkeyPatchWarning,
    get_original,
    is_patched,
    patch_all,
    patch_queue,
    patch_select,
    patch_selectors,
    patch_socket,
    patch_ssl,
    patch_subprocess,
    patch_thread,
    patch_time,
    patched,
    unpatch_all,
)
from ._threading import local

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

# Where they are documented and how they print: greenhub.monkey.patch_all,
# <class 'greenhub.monkey.local'>, as before the package was split.
for _obj in (*(globals()[_name] for _name in __all__), local):
    _obj.__module__ = __name__
del _obj
