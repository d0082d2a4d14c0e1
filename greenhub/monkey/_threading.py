"""threading.local and Thread.join in a virtual thread, and what patch_thread() puts
in threading (the greenhub.sync primitives).

Each replacement dispatches: inside a virtual thread it waits cooperatively,
anywhere else it is the original (see greenhub/monkey/__init__.py).
"""

import asyncio
import threading as _threading_mod
import weakref
from typing import Any

from .. import _waits, sync
from .._private import _local
from ._common import (
    _MISSING,
    _check_lock_timeout,
    _current_task,
    _in_vthread,
    _monotonic,
    _wraps,
)

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
        if not _in_vthread():
            return original(self, timeout)
        if timeout is not None:
            # As the original: a negative timeout counts as 0, and a timeout its lock
            # wait cannot take (NaN, too large) raises before anything waits.
            timeout = max(timeout, 0)
            if timeout == 0:
                return original(self, 0)
            _check_lock_timeout(timeout)
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
            remaining = _waits.remaining(deadline)
            if remaining == 0.0:
                return
            _waits.sleep(delay if remaining is None else min(delay, remaining))
            delay = min(delay * 2, 0.05)
        original(self, 0)

    return _wraps(original, join)


def _plan_thread(batch):
    th = _threading_mod
    lock_modules = ("_thread",)
    batch.add("thread", th, "Lock", sync.Lock, lock_modules)
    batch.add("thread", th, "_allocate_lock", sync.Lock, lock_modules)
    batch.add("thread", th, "RLock", sync.RLock, ("threading",))
    for name in ("Condition", "Event", "Semaphore", "BoundedSemaphore"):
        batch.add("thread", th, name, getattr(sync, name), ("threading",))
    batch.add("thread", th, "local", local, ("_thread",))
    batch.add("thread", th.Thread, "join", _make_join(th.Thread.join), ("threading",))
