"""greenhub.Loop: asyncio's event loop API over greenhub's C core.

The C type ``greenhub._core.Loop`` owns the hot paths - ``call_soon`` and its
siblings, timers, ``time()``, the run loop and ``create_task`` - and the state
they share with Python code (``_closed``, ``_stopping``, ``_debug``,
``_thread_id``, ``_task_factory``).  Everything that runs once per loop or on
error paths is inherited from ``asyncio.BaseEventLoop``:
``run_until_complete``, task factories, the exception handler,
``shutdown_asyncgens``, the executor API.
Inheriting rather than re-implementing is deliberate: those methods then
behave exactly as the stock loop's on every Python version, which is what a
drop-in loop must do.  This module adds what ``BaseEventLoop`` leaves to its
subclasses (signals) and the glue around the C run loop.
"""

import asyncio
import errno
import signal
import sys
import threading
import warnings
from asyncio import base_events, events, format_helpers
from asyncio.log import logger

from . import _core, _vthread

__all__ = ["Loop"]

# The inherited BaseEventLoop state that the C core replaces.  They are
# removed after BaseEventLoop.__init__ so that any code still reaching for
# them fails loudly instead of silently using a queue nobody runs.
_REPLACED_ATTRIBUTES = ("_ready", "_scheduled", "_timer_cancelled_count")

# How long close() lets cancelled virtual threads run their except/finally
# blocks before it unwinds the ones still suspended with GeneratorExit.
_CLOSE_GRACE_SECONDS = 1.0


class Loop(_core.Loop, base_events.BaseEventLoop):
    """An asyncio event loop whose scheduling core is C on libev."""

    __module__ = "greenhub"

    def __init__(self):
        super().__init__()
        for name in _REPLACED_ATTRIBUTES:
            self.__dict__.pop(name, None)
        # signal number -> Handle; see add_signal_handler().
        self._signal_handlers = {}

    # -- running ----------------------------------------------------------
    #
    # The C method _run() is the run loop; run_forever() wraps it in the
    # set-up and tear-down of the Python version at hand.

    if hasattr(base_events.BaseEventLoop, "_run_forever_setup"):
        # Python 3.13+: the base class names the steps around the run loop.

        def run_forever(self):
            """Run until stop() is called."""
            try:
                self._run_forever_setup()
                self._run()
            finally:
                self._run_forever_cleanup()

    else:
        # Python 3.11 and 3.12: the same steps, in the order these versions
        # take them (the checks come before the try block).

        def run_forever(self):
            """Run until stop() is called."""
            self._check_closed()
            self._check_running()
            self._set_coroutine_origin_tracking(self._debug)
            old_agen_hooks = sys.get_asyncgen_hooks()
            try:
                self._thread_id = threading.get_ident()
                sys.set_asyncgen_hooks(
                    firstiter=self._asyncgen_firstiter_hook,
                    finalizer=self._asyncgen_finalizer_hook,
                )
                events._set_running_loop(self)
                self._run()
            finally:
                self._stopping = False
                self._thread_id = None
                events._set_running_loop(None)
                self._set_coroutine_origin_tracking(False)
                sys.set_asyncgen_hooks(*old_agen_hooks)

    # -- tasks ------------------------------------------------------------

    # create_task() is the C type's: it wraps the coroutine in a GreenCoro
    # (src/task_step.c) and makes the Task, or defers to
    # BaseEventLoop.create_task() for task factories and debug mode.

    # -- closing ----------------------------------------------------------

    def close(self):
        """Close the loop: drop pending callbacks, shut the default executor
        down without waiting, remove signal handlers.  Idempotent; refuses to
        close a running loop."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self._debug:
            logger.debug("Close %r", self)
        self._finish_parked_vthreads()
        self._close_core()
        self._executor_shutdown_called = True
        executor, self._default_executor = self._default_executor, None
        if executor is not None:
            executor.shutdown(wait=False)
        if self._signal_handlers:
            if sys.is_finalizing():
                warnings.warn(
                    f"Closing the loop {self!r} on interpreter shutdown "
                    f"stage, skipping signal handlers removal",
                    ResourceWarning,
                    stacklevel=1,
                    source=self,
                )
                self._signal_handlers.clear()
            else:
                for sig in list(self._signal_handlers):
                    self.remove_signal_handler(sig)

    def _finish_parked_vthreads(self):
        """Virtual threads suspended inside await_() hold a greenlet stack.
        Cancel their tasks and run them until they are done (their
        CancelledError is raised at the await_ call, so except/finally
        blocks in the synchronous frames run), as asyncio.run() does for
        leftover tasks.  _close_core() unwinds whatever still refuses."""
        coros = self._parked_coros()
        if not coros:
            return
        here = threading.get_ident()
        elsewhere = {c._thread_id for c in coros} - {here}
        if elsewhere:
            # Their stacks live on greenlets of another OS thread, which
            # cannot be resumed from this one.  Refuse before changing state.
            raise RuntimeError(
                f"cannot close {self!r} from thread {here}: {len(coros)} virtual "
                f"thread(s) are suspended in greenhub.await_() on thread "
                f"{elsewhere.pop()}; close the loop in that thread"
            )
        parked = set(map(id, coros))
        tasks = [t for t in asyncio.all_tasks(self) if id(t.get_coro()) in parked]
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        try:
            # A virtual thread may ignore the cancellation; it then gets
            # GeneratorExit from _close_core() after this grace period.
            self.run_until_complete(asyncio.wait(tasks, timeout=_CLOSE_GRACE_SECONDS))
        except Exception as exc:
            logger.warning("Error while cancelling virtual threads on close: %r", exc)

    # -- signals ----------------------------------------------------------
    #
    # CPython runs Python-level signal handlers in the main thread, between
    # bytecodes.  The loop installs a handler that queues the user's callback
    # (like call_soon_threadsafe), and points signal.set_wakeup_fd() at a
    # pipe the reactor watches, so a signal that arrives while the loop
    # sleeps in the poll ends the poll at once; the C run loop then calls
    # PyErr_CheckSignals(), which runs our handler.

    def add_signal_handler(self, sig, callback, *args):
        """Run callback(*args) on the loop when signal `sig` arrives."""
        if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        try:
            # Only the main thread may do this; it raises ValueError elsewhere.
            signal.set_wakeup_fd(self._signal_wakeup_fd)
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from exc

        handle = events.Handle(callback, args, self, None)
        self._signal_handlers[sig] = handle
        try:
            signal.signal(sig, self._on_signal)
            # Let system calls restart instead of failing with EINTR.
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers:
                self._reset_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from exc
            raise

    def remove_signal_handler(self, sig):
        """Remove the handler for `sig`; return True if one was set."""
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from exc
            raise
        if not self._signal_handlers:
            self._reset_wakeup_fd()
        return True

    def _on_signal(self, sig, frame):
        handle = self._signal_handlers.get(sig)
        if handle is None:
            return
        if handle._cancelled:
            self.remove_signal_handler(sig)
        elif not self.is_closed():
            self.call_soon_threadsafe(handle._run)

    def _reset_wakeup_fd(self):
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(-1) failed: %s", exc)

    @staticmethod
    def _check_signal(sig):
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")


# -- hooks the C core calls on slow paths -----------------------------------


def _format_callback_source(callback, args, debug):
    try:
        return format_helpers._format_callback_source(callback, args, debug=debug)
    except TypeError:  # Python < 3.13 has no `debug` parameter
        return format_helpers._format_callback_source(callback, args)


def _handle_repr(handle):
    """repr() of a greenhub Handle/TimerHandle, in asyncio's format."""
    info = [type(handle).__name__]
    if handle._cancelled:
        info.append("cancelled")
    if isinstance(handle, _core.TimerHandle):
        info.append(f"when={handle._when}")
    if handle._callback is not None:
        info.append(
            _format_callback_source(handle._callback, handle._args, handle._loop.get_debug())
        )
    if handle._source_traceback:
        frame = handle._source_traceback[-1]
        info.append(f"created at {frame[0]}:{frame[1]}")
    return "<{}>".format(" ".join(info))


def _callback_error(handle, exc):
    """An exception escaped a callback: tell the loop's exception handler,
    with the same context dict asyncio builds."""
    loop = handle._loop
    cb = _format_callback_source(handle._callback, handle._args, loop.get_debug())
    context = {
        "message": f"Exception in callback {cb}",
        "exception": exc,
        "handle": handle,
    }
    if handle._source_traceback:
        context["source_traceback"] = handle._source_traceback
    loop.call_exception_handler(context)


def _slow_callback(handle, seconds):
    logger.warning("Executing %s took %.3f seconds", base_events._format_handle(handle), seconds)


_core._install_hooks(
    handle_repr=_handle_repr,
    callback_error=_callback_error,
    slow_callback=_slow_callback,
    extract_stack=format_helpers.extract_stack,
    run_sync=_vthread._run_sync,
)
