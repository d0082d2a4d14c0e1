"""One implementation, both colours: ``to_thread``, ``sync_to_async``, ``async_to_sync``.

On a greenhub loop every task is a virtual thread, so the two adapters need no thread:
``await sync_to_async(fn)()`` calls ``fn`` right in the awaiting task (its
``greenhub.await_()`` calls suspend only that task), and ``async_to_sync(f)()`` called
from sync code in a task is ``greenhub.await_(f())``.  The signatures are asgiref's, so
code written for asgiref (Django's adapters) runs unchanged.

Anywhere else they fall back to asgiref's model, implemented here so the behaviour does
not depend on whether asgiref is installed:

- ``sync_to_async`` awaited on another loop (or outside a task) runs ``fn`` in a thread:
  one process-wide thread for ``thread_sensitive=True`` calls, ``executor`` (or the
  loop's default executor) otherwise; the context is copied in and its changes copied
  back.  While such a thread is inside the call, ``greenhub.await_()`` and
  ``async_to_sync()`` in it run the awaitable as a task of the *caller's* loop and
  wait for it - what asgiref's ``async_to_sync`` does - so a library written once in
  sync style over the caller's loop's objects (streams, connections) works from its
  thread too.  A thread-sensitive ``sync_to_async`` reached from that awaitable runs
  back in the waiting thread (asgiref's CurrentThreadExecutor idea), so nesting the
  two does not deadlock on the single thread.
- ``async_to_sync`` with no loop running in the thread runs the coroutine on this
  thread's greenhub loop (as ``greenhub.await_`` does); in a thread that runs a loop
  outside a greenhub task it raises asgiref's RuntimeError.
"""

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import queue
import sys
import threading
import types
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures import Future as _CFuture
from typing import Any, ParamSpec, TypeAlias, TypeVar, TypeVarTuple, Unpack, overload

from . import _core, _thread_loop
from ._loop import Loop
from ._private import _get_running_loop

_P = ParamSpec("_P")
_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

__all__ = ["async_to_sync", "sync_to_async", "to_thread"]

_in_vthread = _core.in_vthread
_await = _core.await_

_A2S_IN_LOOP = (
    "You cannot use AsyncToSync in the same thread as an async event loop - "
    "just await the async function directly."
)


# --------------------------------------------------------------------------
# to_thread
# --------------------------------------------------------------------------


def to_thread(fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Call ``fn(*args, **kwargs)`` in a real thread and return its result.

    For calls that block in C code and cannot be made cooperative.  In a virtual
    thread (sync code in a greenhub task) ``fn`` runs in the loop's default executor
    with a copy of the caller's context, as ``asyncio.to_thread`` does, and only this
    task waits; cancelling the task ends the wait, not the thread's call.  With no
    event loop running in the calling thread there is nothing to keep responsive, so
    ``fn`` is simply called here.  In a thread that runs a loop outside a greenhub
    task (async code on another loop, a loop callback) waiting would block the loop:
    RuntimeError - async code uses ``await asyncio.to_thread(...)``.
    """
    if not callable(fn):
        raise TypeError(f"greenhub.to_thread() needs a callable, got {fn!r}")
    if _in_vthread():
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return _await(loop.run_in_executor(None, call))
    running = _get_running_loop()
    if running is not None:
        raise RuntimeError(
            f"greenhub.to_thread() would block the running {type(running).__name__}: it "
            f"waits only inside a greenhub task; in async code use "
            f"`await asyncio.to_thread(fn, ...)`"
        )
    return fn(*args, **kwargs)


# --------------------------------------------------------------------------
# sync_to_async
# --------------------------------------------------------------------------


# Django-style code makes an adapter per call (`await sync_to_async(fn)(...)`), so making
# one must be cheap: plain functions - the usual case - take the short paths below
# (~1 us instead of ~3-5 us through inspect and functools.update_wrapper).
_FunctionType = types.FunctionType
_CO_COROUTINE = inspect.CO_COROUTINE
_HAS_TYPE_PARAMS = hasattr(_FunctionType, "__type_params__")  # 3.12+


def _is_async_callable(fn: object) -> bool:
    if type(fn) is _FunctionType and not fn.__dict__:  # no marker can be set
        return bool(fn.__code__.co_flags & _CO_COROUTINE)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object whose __call__ is async
    )


def _wrap(wrapper: Any, fn: Callable[..., Any]) -> Any:
    """functools.update_wrapper(wrapper, fn), minus any "coroutine function" mark:
    copying fn's __dict__ would carry asyncio's or inspect's mark onto a sync
    wrapper."""
    if type(fn) is _FunctionType:
        wrapper.__module__ = fn.__module__
        wrapper.__name__ = fn.__name__
        wrapper.__qualname__ = fn.__qualname__
        wrapper.__doc__ = fn.__doc__
        if _HAS_TYPE_PARAMS:
            wrapper.__type_params__ = fn.__type_params__  # type: ignore[attr-defined,unused-ignore]  # 3.12+
        if fn.__dict__:
            wrapper.__dict__.update(fn.__dict__)
        wrapper.__wrapped__ = fn
    else:
        functools.update_wrapper(wrapper, fn)
    d = wrapper.__dict__
    if "_is_coroutine_marker" in d or "_is_coroutine" in d:
        d.pop("_is_coroutine_marker", None)
        d.pop("_is_coroutine", None)
    return wrapper


@overload
def sync_to_async(
    func: None = None,
    *,
    thread_sensitive: bool = True,
    executor: Executor | None = None,
    context: contextvars.Context | None = None,
) -> Callable[[Callable[_P, _T]], Callable[_P, Coroutine[Any, Any, _T]]]: ...
@overload
def sync_to_async(
    func: Callable[_P, _T],
    *,
    thread_sensitive: bool = True,
    executor: Executor | None = None,
    context: contextvars.Context | None = None,
) -> Callable[_P, Coroutine[Any, Any, _T]]: ...
def sync_to_async(
    func: Callable[_P, _T] | None = None,
    *,
    thread_sensitive: bool = True,
    executor: Executor | None = None,
    context: contextvars.Context | None = None,
) -> Any:
    """Make an async function (``await``-able) from the sync function ``func``.

    On a greenhub loop ``func`` runs in the awaiting task itself - a virtual thread -
    so its ``greenhub.await_()`` calls suspend only that task and no thread is used,
    unless ``executor`` is given (an explicit request for that executor's threads).
    Elsewhere ``func`` runs in a thread as with asgiref (see the module docstring).
    Usable as a decorator with or without arguments, and on methods.
    """
    if func is None:
        return lambda f: sync_to_async(
            f, thread_sensitive=thread_sensitive, executor=executor, context=context
        )
    if not callable(func) or _is_async_callable(func):
        raise TypeError("sync_to_async can only be applied to sync functions.")
    if thread_sensitive and executor is not None:
        raise TypeError("executor must not be set when thread_sensitive is True")
    if executor is None and context is None:

        async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            if _in_vthread():
                return func(*args, **kwargs)
            return await _hop(func, args, kwargs, thread_sensitive, None, None)

    else:
        if executor is not None and not isinstance(executor, Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, got {executor!r}")
        if context is not None and not isinstance(context, contextvars.Context):
            raise TypeError(f"context must be a contextvars.Context, got {context!r}")

        async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            if executor is None and _in_vthread():
                assert context is not None  # (executor and context are not both None here)
                return context.run(func, *args, **kwargs)
            return await _hop(func, args, kwargs, thread_sensitive, executor, context)

    return _wrap(wrapper, func)


# The fallback: a thread hop, asgiref's model.

_sensitive_lock = threading.Lock()
# the process-wide single thread for thread_sensitive calls
_sensitive: ThreadPoolExecutor | None = None

# In the loop's tasks started by a waiting _Home: that home (so a thread-sensitive
# sync_to_async there runs in the waiting thread rather than deadlocking on it).
_home_var: contextvars.ContextVar["_Home"] = contextvars.ContextVar("greenhub_sync_home")


def _sensitive_executor() -> ThreadPoolExecutor:
    global _sensitive
    with _sensitive_lock:
        if _sensitive is None:
            _sensitive = ThreadPoolExecutor(max_workers=1, thread_name_prefix="greenhub-sync")
        return _sensitive


async def _hop(
    func: Callable[..., _T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    thread_sensitive: bool,
    executor: Executor | None,
    context: contextvars.Context | None,
) -> _T:
    loop = asyncio.get_running_loop()
    if thread_sensitive:
        home = _home_var.get(None)
        if home is not None and home.loop is loop and home.waiting:
            executor = home
        else:
            executor = _sensitive_executor()
    ctx = contextvars.copy_context() if context is None else context
    home = _Home(loop)
    fut = loop.run_in_executor(executor, _in_thread, home, ctx, func, args, kwargs)
    try:
        return await fut
    except asyncio.CancelledError:
        # As asgiref: the thread's own call cannot be stopped, but what it is
        # waiting for on this loop can be cancelled, which usually ends it.
        home.cancel_tasks()
        raise
    finally:
        if context is None:
            _restore_context(ctx)


def _in_thread(
    home: "_Home",
    ctx: contextvars.Context,
    func: Callable[..., _T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> _T:
    local = _thread_loop.local
    outer = getattr(local, "home", None)
    local.home = home
    try:
        return ctx.run(func, *args, **kwargs)
    finally:
        local.home = outer


def _restore_context(ctx: contextvars.Context) -> None:
    """Copy the variables of ctx that differ into the current context."""
    for var, value in ctx.items():
        if var is _home_var:
            continue
        try:
            if var.get() is value:
                continue
        except LookupError:
            pass
        var.set(value)


# What _Home.submit() queues for the waiting thread: (future, fn, args, kwargs).
_WorkItem: TypeAlias = tuple[_CFuture[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class _Home(Executor):
    """A thread inside a fallback sync_to_async call, seen from the caller's loop.

    ``run(awaitable)`` (greenhub.await_ in that thread, through _thread_loop.run_sync)
    runs the awaitable as a task of the loop and blocks the thread until it is done,
    meanwhile running what thread-sensitive calls ``submit()`` here.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.cancel_next = False
        self._work: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _CFuture[_T]:
        if not self.waiting:  # the thread moved on; asyncio checked just before
            return _sensitive_executor().submit(fn, *args, **kwargs)
        fut: _CFuture[_T] = _CFuture()
        self._work.put((fut, fn, args, kwargs))
        return fut

    def cancel_tasks(self) -> None:
        # On the loop's thread.  No task yet (the thread is about to start one: its
        # start() is queued): that one is cancelled as it starts.
        self.cancel_next = not self._tasks
        for task in list(self._tasks):
            task.cancel()

    def run(self, awaitable: Awaitable[_T], context: contextvars.Context | None = None) -> _T:
        ctx = contextvars.copy_context() if context is None else context
        ctx.run(_home_var.set, self)
        done: _CFuture[_T] = _CFuture()
        # In an asgiref sync_to_async thread, the task joins the list asgiref's own
        # async_to_sync tasks join: cancelling the sync_to_async call then cancels it
        # and waits for it, as it does theirs.
        asgiref_tasks = _asgiref_task_context()

        def start() -> None:  # on the loop's thread
            try:
                task = self.loop.create_task(_outcome(awaitable), context=ctx)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                done.set_exception(exc)
                return
            self._tasks.add(task)
            if asgiref_tasks is not None:
                asgiref_tasks.append(task)
            task.add_done_callback(finished)
            if self.cancel_next:
                self.cancel_next = False
                task.cancel()

        def finished(task: "asyncio.Task[tuple[bool, Any]]") -> None:
            self._tasks.discard(task)
            if asgiref_tasks is not None and task in asgiref_tasks:
                asgiref_tasks.remove(task)
            if task.cancelled():  # before it started
                # _outcome() never ran, so neither did the awaitable: close a coroutine,
                # as a task cancelled before its first step does (its coroutine gets the
                # CancelledError), or it warns "never awaited" when collected.
                if inspect.iscoroutine(awaitable):
                    awaitable.close()
                done.set_exception(asyncio.CancelledError())
                return
            ok, value = task.result()
            if ok:
                done.set_result(value)
            else:
                done.set_exception(value)

        done.add_done_callback(lambda _: self._work.put(None))
        # Counted before the task can start: once start() is scheduled the loop may run
        # the awaitable, and a thread-sensitive call it makes must find this thread
        # waiting (submit() here), not queue behind it on the busy shared executor.
        self.waiting += 1
        try:
            self.loop.call_soon_threadsafe(start)
        except RuntimeError:
            self.waiting -= 1
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise
        try:
            while not done.done():
                try:
                    item = self._work.get(timeout=_CLOSED_POLL)
                except queue.Empty:
                    # A loop closed while its task was pending drops the task: no
                    # callback will ever end this wait, so look at the loop now and
                    # then instead of blocking this thread for good.
                    if self.loop.is_closed() and not done.done():
                        raise RuntimeError(
                            f"greenhub.await_(): {self.loop!r} was closed while this "
                            f"thread waited for {awaitable!r} on it"
                        ) from None
                    continue
                self._run_one(item)
        finally:
            self.waiting -= 1
            while not self._work.empty():  # submitted as we stopped: still this thread
                self._run_one(self._work.get())
        if context is None:
            _restore_context(ctx)
        try:
            return done.result()
        finally:
            done = None  # type: ignore[assignment]  # the traceback would keep the future (and itself) alive

    @staticmethod
    def _run_one(item: "_WorkItem | None") -> None:
        if item is None:
            return
        fut, fn, args, kwargs = item
        if not fut.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the submitter
            fut.set_exception(exc)
        else:
            fut.set_result(result)


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


async def _outcome(awaitable: Awaitable[_T]) -> tuple[bool, Any]:
    """The task _Home.run() starts: whatever the awaitable raises - CancelledError
    included - is the waiting thread's to raise, so the task itself ends normally, as
    asgiref's async_to_sync tasks do (a sync_to_async call that cancels one then waits
    for its thread, which sees the CancelledError, instead of abandoning it)."""
    try:
        return True, await awaitable
    except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
        return False, exc


# How often (seconds) a thread waiting in _Home.run() checks that the loop is not closed.
_CLOSED_POLL = 1.0


# --------------------------------------------------------------------------
# The loop that owns a worker thread's call
# --------------------------------------------------------------------------
#
# greenhub.await_() with no loop running in the thread (greenhub/_thread_loop.py run_sync)
# asks _owner_home() whether some running loop owns what this thread is doing; if one
# does, the awaitable runs as a task of that loop and only this thread waits (_Home.run),
# as asgiref's async_to_sync does from its sync_to_async threads.  The owner is known
# without contextvars (executors need not copy them, and run_in_executor() does not):
#
# - a greenhub.Loop marks every call it submits to an executor (run_in_executor(), so
#   also asyncio.to_thread(), getaddrinfo, asgiref's and Django's sync_to_async): the
#   call runs under _owned_call(), which sets this thread's `home` for its duration;
# - anyio's worker threads (anyio.to_thread.run_sync, Starlette's run_in_threadpool,
#   FastAPI's `def` endpoints and dependencies) record their loop in anyio's thread
#   locals for the thread's whole life, as the token anyio.from_thread.run() uses;
# - an asyncio Future or Task knows its loop: awaited from any thread, it is waited for
#   on that loop, if it runs.
#
# A loop running in this very thread never owns the call here: there get_running_loop()
# is set, and await_() never reaches _run_sync (a loop callback that calls it gets
# today's error, a task waits as a virtual thread), so the owner cannot be the loop the
# waiting thread blocks.


def _owned_call(home: "_Home", func: Callable[[Unpack[_Ts]], _T], /, *args: Unpack[_Ts]) -> _T:
    """What greenhub.Loop.run_in_executor() submits: ``func(*args)``, during which
    greenhub.await_() in this thread runs on home.loop."""
    local = _thread_loop.local
    outer = getattr(local, "home", None)
    local.home = home
    try:
        return func(*args)
    finally:
        local.home = outer


def _cancel_owned(home: "_Home", fut: "asyncio.Future[Any]") -> None:
    """run_in_executor()'s future is done: if it was cancelled, so is what the thread
    waits for on the loop (as _hop() does for sync_to_async, and asgiref): the call
    itself cannot be stopped, but its await_() then raises CancelledError."""
    if fut.cancelled():
        home.cancel_tasks()


def _anyio_loop() -> asyncio.AbstractEventLoop | None:
    """The asyncio loop of the anyio worker thread this is, or None."""
    mod = sys.modules.get("anyio._core._eventloop")
    if mod is None:
        return None
    token = getattr(getattr(mod, "threadlocals", None), "current_token", None)
    loop = getattr(token, "native_token", None)  # a trio token on anyio's trio backend
    return loop if isinstance(loop, asyncio.AbstractEventLoop) else None


def _asgiref_task_context() -> list[Any] | None:
    """In a thread asgiref's SyncToAsync runs: the list of tasks that cancelling its
    call cancels (its async_to_sync tasks put themselves there), else None."""
    mod = sys.modules.get("asgiref.sync")
    local = getattr(getattr(mod, "SyncToAsync", None), "threadlocal", None)
    tasks = getattr(local, "task_context", None)
    return tasks if isinstance(tasks, list) else None


def _runs_elsewhere(loop: asyncio.AbstractEventLoop) -> bool:
    return (
        loop.is_running()
        and not loop.is_closed()
        and getattr(loop, "_thread_id", None) != threading.get_ident()
    )


def _owner_home(awaitable: object, own_loop: object) -> "_Home | None":
    """The _Home that greenhub.await_(awaitable) in this thread, with no loop running
    here, waits through; None: run it on this thread's own loop (`own_loop`, or None
    if the thread has none yet), as before."""
    get_loop = getattr(awaitable, "get_loop", None) if asyncio.isfuture(awaitable) else None
    if get_loop is not None:  # (a future-like without get_loop(): nothing to go by)
        target = get_loop()
        if target is not own_loop and isinstance(target, asyncio.AbstractEventLoop):
            if _runs_elsewhere(target):
                return _Home(target)
            if isinstance(awaitable, asyncio.Future):  # not some other future-like
                # ValueError, as asyncio's run_until_complete() of another loop's
                # future, but saying which loop and what to do.
                raise ValueError(
                    f"greenhub.await_() cannot wait on {awaitable!r} in this thread: it "
                    f"belongs to {target!r}, which is not running; await it in that "
                    f"loop's code, or run that loop"
                )
    home: _Home | None = getattr(_thread_loop.local, "home", None)
    if home is not None and _runs_elsewhere(home.loop):
        return home
    loop = _anyio_loop()
    if loop is not None and _runs_elsewhere(loop):
        return _Home(loop)
    return None


def _runs_in_threads(executor: Executor | None) -> bool:
    """Whether `executor` runs its calls in threads of this process, where the call can
    be marked: the default executor, thread pools, asgiref's CurrentThreadExecutor.  Not
    process or interpreter pools, which must pickle the call (and the loop it would
    carry), nor executors greenhub does not know."""
    if executor is None:
        return True
    interpreters = getattr(concurrent.futures, "InterpreterPoolExecutor", None)  # 3.14+
    if interpreters is not None and isinstance(executor, interpreters):
        return False
    if isinstance(executor, ThreadPoolExecutor):
        return True
    mod = sys.modules.get("asgiref.current_thread_executor")
    current = getattr(mod, "CurrentThreadExecutor", None)
    return isinstance(current, type) and isinstance(executor, current)


def _mark_executor_call(
    loop: Loop, executor: Executor | None, func: Callable[..., Any]
) -> tuple[Callable[..., Any], Callable[[asyncio.Future[Any]], None]] | None:
    """greenhub.Loop.run_in_executor()'s hook: the call to submit instead of `func`
    (``func(*args)`` during which greenhub.await_() in the worker thread runs on `loop`)
    and the done callback of its future, or None to submit `func` as it is."""
    if func is _in_thread or not _runs_in_threads(executor):
        return None  # greenhub.sync_to_async's call (marked already), or not a thread
    home = _Home(loop)
    return functools.partial(_owned_call, home, func), functools.partial(_cancel_owned, home)


_thread_loop.owner_home = _owner_home
Loop._mark_executor_call = staticmethod(_mark_executor_call)

# --------------------------------------------------------------------------
# async_to_sync
# --------------------------------------------------------------------------


@overload
def async_to_sync(
    awaitable: None = None, *, force_new_loop: bool = False
) -> Callable[[Callable[_P, Awaitable[_T]]], Callable[_P, _T]]: ...
@overload
def async_to_sync(
    awaitable: Callable[_P, Awaitable[_T]], *, force_new_loop: bool = False
) -> Callable[_P, _T]: ...
def async_to_sync(
    awaitable: Callable[_P, Awaitable[_T]] | None = None, *, force_new_loop: bool = False
) -> Any:
    """Make a sync function from the async function ``awaitable``.

    From sync code in a greenhub task the call is ``greenhub.await_(awaitable(...))``:
    only that task waits.  With no loop running in the thread it runs the coroutine on
    this thread's greenhub loop - or, inside a fallback ``sync_to_async`` thread, on
    the loop that called it.  In a thread running a loop outside a greenhub task it
    raises RuntimeError, as asgiref does.  ``force_new_loop=True`` always runs the
    coroutine on a new greenhub loop (in a helper thread if this thread runs one).
    """
    if awaitable is None:
        return lambda f: async_to_sync(f, force_new_loop=force_new_loop)
    if not callable(awaitable):
        raise TypeError(f"async_to_sync needs an async function, got {awaitable!r}")
    if not _is_async_callable(awaitable):
        # As asgiref: detection has false negatives (a sync function returning an
        # awaitable is fine), so only a warning.
        warnings.warn("async_to_sync was passed a non-async-marked callable", stacklevel=2)
    fn = awaitable

    if force_new_loop:

        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            if _in_vthread():
                return to_thread(_run_new_loop, fn, args, kwargs)
            if _get_running_loop() is not None:
                raise RuntimeError(_A2S_IN_LOOP)
            return _run_new_loop(fn, args, kwargs)

    else:

        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            if _in_vthread():
                return _await(fn(*args, **kwargs))
            if _get_running_loop() is not None:
                raise RuntimeError(_A2S_IN_LOOP)
            # No loop here: this thread's greenhub loop, or the caller's loop from
            # a sync_to_async thread; the context's changes come back as asgiref's.
            ctx = contextvars.copy_context()
            try:
                return _thread_loop.run_sync(fn(*args, **kwargs), context=ctx)
            finally:
                _restore_context(ctx)

    return _wrap(wrapper, fn)


def _run_new_loop(
    fn: Callable[..., Awaitable[_T]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _T:
    # greenhub.run(coroutine), spelled out: greenhub/__init__.py is the layer above.
    with asyncio.Runner(loop_factory=Loop) as runner:
        return runner.run(_awaited(fn(*args, **kwargs)))
