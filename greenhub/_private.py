"""The private asyncio and CPython names greenhub depends on, in one place.

greenhub behaves exactly like the stock asyncio loop by *being* it where it can:
``greenhub.Loop`` subclasses asyncio's Unix selector loop, its socket transport
subclasses asyncio's, and its C types stand in for asyncio's handles.  That reaches
names no Python release promises to keep.  This module is the contract:

1. Module-level names (private classes and functions of asyncio and CPython) are
   imported here, and every other greenhub module imports them from here.  If a new
   Python drops one, ``import greenhub`` fails in this file, at the line that imports
   it; its entry in ``NAMES`` says what greenhub needs from it.
2. Where a name differs between the supported versions (3.11 - 3.15), it is resolved
   once, below, with the version condition spelled out.
3. ``NAMES`` lists every private name greenhub relies on - these imports, the
   private attributes and methods of the stock classes greenhub's code reads, calls
   or overrides (in Python and in ``src/*.c``), and the private names of the
   libraries ``greenhub.contrib`` adapts - with the versions that have it and what
   greenhub needs from it.  ``tests/test_private_names.py`` checks every entry on the
   running interpreter, and checks that greenhub's modules reach no private stdlib
   name except through this module.

A new Python: run ``python -m pytest tests/test_private_names.py`` with it, and see
docs/development.md ("The private-name contract") for what to do with a failure.
"""

import _socket
import sys
from _thread import _local
from asyncio import Task as _asyncio_Task
from asyncio import events as _events
from asyncio.base_events import _format_handle  # type: ignore[attr-defined]
from asyncio.events import _get_running_loop
from asyncio.format_helpers import _format_callback_source
from asyncio.selector_events import _SelectorSocketTransport  # type: ignore[attr-defined]
from asyncio.unix_events import (  # type: ignore[attr-defined]  # (_UnixSubprocessTransport)
    _UnixDefaultEventLoopPolicy,
    _UnixSelectorEventLoop,
    _UnixSubprocessTransport,
)
from collections.abc import Callable, Sequence
from selectors import _fileobj_to_fd  # type: ignore[attr-defined]
from socket import _GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]
from sys import _current_frames, _getframe
from typing import Any, NamedTuple

__all__ = [
    "HAVE_RUN_FOREVER_SETUP",
    "NO_POLICY_NAMES",
    "TRANSPORT_CONTEXT",
    "TRANSPORT_REFUSES_USED_FDS",
    "task_coro_field",
    "NAMES",
    "PrivateName",
    "_GLOBAL_DEFAULT_TIMEOUT",
    "_SelectorSocketTransport",
    "_UnixDefaultEventLoopPolicy",
    "_UnixSelectorEventLoop",
    "_UnixSubprocessTransport",
    "_current_frames",
    "_fileobj_to_fd",
    "_format_handle",
    "_get_running_loop",
    "_getframe",
    "_local",
    "_set_running_loop",
    "_socket",
    "format_callback_source",
    "watch_running_loops",
]


def _set_running_loop(loop: Any) -> None:
    """asyncio.events._set_running_loop(), looked up at each call as asyncio's own
    run_forever() looks it up: CPython's tests swap in its pure-Python twin there."""
    _events._set_running_loop(loop)


def watch_running_loops(seen: Callable[[Any], None]) -> None:
    """From now on call ``seen(loop)`` whenever a loop becomes this thread's running
    loop through asyncio.events._set_running_loop(), which the stock run_forever()
    (and greenhub's) call: how ``python -m greenhub run`` notices a program running a
    loop it built itself (uvicorn's ``--loop auto``) instead of a greenhub one."""
    original = _events._set_running_loop

    def _set_running_loop(loop: Any) -> None:
        if loop is not None:
            seen(loop)
        original(loop)

    _events._set_running_loop = _set_running_loop


# -- what differs between versions ------------------------------------------------

# 3.13 split BaseEventLoop.run_forever() into _run_forever_setup(), the loop, and
# _run_forever_cleanup(); greenhub.Loop.run_forever() calls the two around its C
# loop there, and repeats the older versions' steps itself on 3.11 and 3.12.
HAVE_RUN_FOREVER_SETUP = sys.version_info >= (3, 13)

if sys.version_info >= (3, 13):

    def format_callback_source(
        callback: Callable[..., object] | None, args: Sequence[Any], debug: bool
    ) -> str:
        """asyncio's text for a callback and its arguments (as in a Handle's repr)."""
        text: str = _format_callback_source(callback, args, debug=debug)
        return text

else:  # 3.11, 3.12: no `debug` parameter

    def format_callback_source(
        callback: Callable[..., object] | None, args: Sequence[Any], debug: bool
    ) -> str:
        """asyncio's text for a callback and its arguments (as in a Handle's repr)."""
        text: str = _format_callback_source(callback, args)
        return text


# 3.14 deprecated the policy API (removal in 3.16): asyncio.DefaultEventLoopPolicy
# and asyncio.set_event_loop_policy() warn.  greenhub's policy derives from the class
# behind the name, and greenhub.install() sets it through the setter behind the
# function, neither of which warns.
NO_POLICY_NAMES = sys.version_info >= (3, 14)

if sys.version_info >= (3, 14):  # (spelled out for the type checkers)
    from asyncio.events import _set_event_loop_policy as set_event_loop_policy
    from asyncio.unix_events import _DefaultEventLoopPolicy as DefaultEventLoopPolicy

    __all__ += ["DefaultEventLoopPolicy", "set_event_loop_policy"]


# The Task's coroutine field, through asyncio.Task's own `_coro` descriptor (greenhub's
# Task overrides get_coro(); greenhub._task reads the wrapper with this).
task_coro_field = _asyncio_Task._coro.__get__  # type: ignore[attr-defined]


# 3.15 gave socket transports a contextvars.Context: the loop's _make_socket_transport()
# and _make_ssl_transport() and _SelectorSocketTransport() take `context`, and the
# transport runs its protocol's callbacks in it (through _add_reader(), _add_writer()
# and call_soon() with context=).  greenhub's overrides take it from 3.15 on, as the
# stock methods do, and refuse it before.
TRANSPORT_CONTEXT = sys.version_info >= (3, 15)


def _stock_refuses_used_fds() -> bool:
    """Whether the stock _make_socket_transport() and _make_ssl_transport() refuse a
    socket that another open transport uses (_ensure_fd_no_transport(), which 3.12
    added there), asked of the stock methods' code rather than of the version number:
    a patch release may have it too."""
    from asyncio.selector_events import BaseSelectorEventLoop

    for name in ("_make_socket_transport", "_make_ssl_transport"):
        code = getattr(getattr(BaseSelectorEventLoop, name), "__code__", None)
        if code is None or "_ensure_fd_no_transport" not in code.co_names:
            return False
    return True


# greenhub's overrides of the two make the same check where the stock ones do.
TRANSPORT_REFUSES_USED_FDS = _stock_refuses_used_fds()


# -- the table ----------------------------------------------------------------------

# Kinds.  Module-level names (``owner`` is the module):
#   class, function, value (any other object).
# Names on a class (``owner`` is the class greenhub uses or subclasses):
#   method: greenhub calls it;
#   attribute: greenhub reads or sets it (an instance attribute: one the owner's code sets);
#   overridden method: greenhub's subclass replaces it, and the stock code calls it;
#   overridden attribute: greenhub's subclass provides it, and the stock code reads it.
CLASS = "class"
FUNCTION = "function"
VALUE = "value"
METHOD = "method"
ATTRIBUTE = "attribute"
OVERRIDDEN_METHOD = "overridden method"
OVERRIDDEN_ATTRIBUTE = "overridden attribute"


class PrivateName(NamedTuple):
    """One private name greenhub relies on."""

    #: the module, class or function that has it, dotted ("asyncio.events.Handle")
    owner: str
    #: the name itself
    name: str
    #: one of the kinds above
    kind: str
    #: the Python versions that have it: "3.11+" (every supported version from 3.11
    #: on) or "3.11-3.13" (from 3.11 to 3.13, inclusive)
    versions: str
    #: where greenhub uses it
    used_in: str
    #: what greenhub needs from it
    need: str
    #: for what greenhub calls or overrides: the parameters (without self, defaults
    #: left out) it was written against - one string, or {"3.11": ..., "3.13": ...}
    #: read as "from that version on".  None: not checked (a C function).
    params: str | dict[str, str] | None = None


_LOOP = "asyncio.unix_events._UnixSelectorEventLoop"
_TRANSPORT = "asyncio.selector_events._SelectorSocketTransport"
_HANDLE = "asyncio.events.Handle"
_POLICY = "asyncio.unix_events._UnixDefaultEventLoopPolicy"

# fmt: off
NAMES: tuple[PrivateName, ...] = (
    # -- asyncio, module level ------------------------------------------------------
    PrivateName(
        "asyncio.unix_events", "_UnixSelectorEventLoop", CLASS, "3.11+",
        "_loop.py; _children.py, _resolve.py (their type-checking base)",
        "the base class of greenhub.Loop: everything greenhub does not replace "
        "(run_until_complete, the I/O layer, subprocesses, signals) is inherited",
        params="selector",
    ),
    PrivateName(
        "asyncio.unix_events", "_UnixSubprocessTransport", CLASS, "3.11+",
        "_children.py",
        "the stock subprocess transport, made directly (as the stock "
        "_make_subprocess_transport() makes it) when greenhub watches the child itself",
        params="loop, protocol, args, shell, stdin, stdout, stderr, bufsize, waiter, extra, **kwargs",
    ),
    PrivateName(
        "asyncio.unix_events", "_UnixDefaultEventLoopPolicy", CLASS, "3.11+",
        "_children.py",
        "isinstance() test for the stock policy, whose child watcher slot is then read "
        "directly (asking would create a watcher, and warn on 3.12+)",
    ),
    PrivateName(
        "asyncio.selector_events", "_SelectorSocketTransport", CLASS, "3.11+",
        "_transport.py; src/transport.c (looked up by name)",
        "the base class of greenhub's socket transport, which keeps all its behaviour "
        "but the read callbacks and write(); C calls its own versions of those too; "
        "3.15 added `context`",
        params={
            "3.11": "loop, sock, protocol, waiter, extra, server",
            "3.15": "loop, sock, protocol, waiter, extra, server, context",
        },
    ),
    PrivateName(
        "asyncio.events", "_get_running_loop", FUNCTION, "3.11+",
        "__init__.py, _cancel.py, _colours.py, _dump.py, sync.py; "
        "src/module.c (looked up by name)",
        "the running loop or None, without raising: how every greenhub call decides "
        "whether it is inside a loop",
        params="",
    ),
    PrivateName(
        "asyncio.events", "_set_running_loop", FUNCTION, "3.11+",
        "_loop.py (run_forever on 3.11 and 3.12); _cli.py (run: wrapped, to notice "
        "a program running a loop that is not greenhub's)",
        "marks the loop as this thread's running loop, as the stock run_forever() does",
        params="loop, /",
    ),
    PrivateName(
        "asyncio.base_events", "_format_handle", FUNCTION, "3.11+",
        "_loop.py (slow-callback warning)",
        "the text of the stock 'Executing <Handle ...> took N seconds' warning",
        params="handle",
    ),
    PrivateName(
        "asyncio.format_helpers", "_format_callback_source", FUNCTION, "3.11+",
        "_private.format_callback_source (greenhub Handle reprs, callback errors)",
        "the stock text for a callback in Handle reprs and 'Exception in callback' "
        "messages; 3.13 added `debug`",
        params={"3.11": "func, args", "3.13": "func, args, *, debug"},
    ),
    PrivateName(
        "asyncio.coroutines", "_is_coroutine", VALUE, "3.11+",
        "_colours.py",
        "asyncio's coroutine-function mark, which asyncio.iscoroutinefunction() looks "
        "for in a function's `_is_coroutine` attribute: sync_to_async()/async_to_sync() "
        "wrappers drop that attribute rather than copy it",
    ),
    PrivateName(
        "asyncio.events", "_ThreadSafeHandle", CLASS, "3.14+",
        "src/handle.c (looked up by name; greenhub's _ThreadSafeHandle subclasses it)",
        "what call_soon_threadsafe() returns: a Handle whose cancel()/cancelled() take "
        "an RLock that the loop holds while the callback runs",
    ),
    PrivateName(
        "asyncio.unix_events", "_DefaultEventLoopPolicy", CLASS, "3.14+",
        "__init__.py (greenhub.Policy's base on 3.14+)",
        "the stock policy class behind the deprecated asyncio.DefaultEventLoopPolicy "
        "name, which warns when looked up",
    ),
    PrivateName(
        "asyncio.events", "_set_event_loop_policy", FUNCTION, "3.14+",
        "__init__.py (greenhub.install())",
        "sets the policy without the DeprecationWarning of asyncio.set_event_loop_policy()",
        "policy",
    ),
    PrivateName(
        "asyncio.coroutines", "_iscoroutinefunction", FUNCTION, "3.14+",
        "src/module.c (looked up by name; call_soon() and friends)",
        "the coroutine-function test the stock call_soon() makes, without the "
        "DeprecationWarning of asyncio.iscoroutinefunction()",
        "func",
    ),
    # -- CPython, module level ---------------------------------------------------
    PrivateName(
        "inspect.markcoroutinefunction", "_is_coroutine_marker", ATTRIBUTE, "3.12+",
        "_colours.py",
        "the attribute inspect's coroutine-function mark is stored under: wrappers "
        "drop it rather than copy it",
    ),
    PrivateName(
        "selectors", "_fileobj_to_fd", FUNCTION, "3.11+",
        "_loop.py (the selector stand-in's get_map())",
        "fd of a file object, with selectors' own errors, so that the stand-in's map "
        "is looked up as a selector's is",
        params="fileobj",
    ),
    PrivateName(
        "socket", "_GLOBAL_DEFAULT_TIMEOUT", VALUE, "3.11+",
        "socket.py",
        "the 'no timeout given' default of socket.create_connection(), which the "
        "green version takes too",
    ),
    PrivateName(
        "_socket", "socket", CLASS, "3.11+",
        "socket.py (greenhub.socket.socket._real_close)",
        "the C socket type under socket.socket, through which _real_close() closes, "
        "as socket.socket's own does",
    ),
    PrivateName(
        "sys", "_getframe", FUNCTION, "3.11+",
        "_dump.py, _switches.py, monkey/_api.py",
        "the caller's frame: where a task dump or switch-log entry starts, and "
        "warnings' stacklevel",
        params="depth, /",
    ),
    PrivateName(
        "sys", "_current_frames", FUNCTION, "3.11+",
        "_dump.py",
        "the frames of a loop running in another thread, for its running task's stack",
        params="",
    ),
    PrivateName(
        "_thread", "_local", CLASS, "3.11+",
        "monkey/_threading.py",
        "the C thread-local type (threading.local), base class of greenhub.monkey.local",
    ),
    PrivateName(
        "threading", "_allocate_lock", FUNCTION, "3.11+",
        "monkey/_threading.py (patch_thread() replaces it)",
        "how threading's own code (Condition.wait()'s waiter) makes raw locks: "
        "patching it makes those greenhub locks",
    ),
    # -- asyncio's Unix selector loop: what greenhub.Loop calls or reads ------------
    PrivateName(
        _LOOP, "_run_forever_setup", METHOD, "3.13+",
        "_loop.py (run_forever)",
        "the stock set-up before the run loop (running-loop, async-generator hooks, "
        "thread id, coroutine-origin tracking)",
        params="",
    ),
    PrivateName(
        _LOOP, "_run_forever_cleanup", METHOD, "3.13+",
        "_loop.py (run_forever)",
        "the stock tear-down after the run loop",
        params="",
    ),
    PrivateName(
        _LOOP, "_check_running", METHOD, "3.11+",
        "_loop.py (run_forever on 3.11 and 3.12)",
        "the stock 'already running' errors",
        params="",
    ),
    PrivateName(
        _LOOP, "_set_coroutine_origin_tracking", METHOD, "3.11+",
        "_loop.py (run_forever on 3.11 and 3.12)",
        "debug mode's coroutine-origin tracking, switched as the stock loop does",
        params="enabled",
    ),
    PrivateName(
        _LOOP, "_asyncgen_firstiter_hook", METHOD, "3.11+",
        "_loop.py (run_forever on 3.11 and 3.12)",
        "the async-generator hooks installed while the loop runs",
        params="agen",
    ),
    PrivateName(
        _LOOP, "_asyncgen_finalizer_hook", METHOD, "3.11+",
        "_loop.py (run_forever on 3.11 and 3.12)",
        "the async-generator hooks installed while the loop runs",
        params="agen",
    ),
    PrivateName(
        _LOOP, "_ensure_fd_no_transport", METHOD, "3.11+",
        "_loop.py (sock_sendall, _make_socket_transport, _make_ssl_transport)",
        "the stock refusal of sock_* calls, and from 3.12 of a new transport, on a "
        "socket a transport owns",
        params="fd",
    ),
    PrivateName(
        _LOOP, "_sock_sendall", METHOD, "3.11+",
        "_loop.py (sock_sendall)",
        "the stock writer callback that sends the rest of sock_sendall()'s data",
        params="fut, sock, view, pos",
    ),
    PrivateName(
        _LOOP, "_sock_write_done", METHOD, "3.11+",
        "_loop.py (sock_sendall)",
        "the stock clean-up of that writer when the future is done",
        params="fd, fut, handle",
    ),
    PrivateName(
        _LOOP, "_child_watcher_callback", METHOD, "3.11+",
        "_children.py",
        "tells a subprocess transport its child's exit status, in the stock order",
        params="pid, returncode, transp",
    ),
    PrivateName(
        _LOOP, "_check_default_executor", METHOD, "3.11+",
        "_resolve.py",
        "the stock 'executor shutdown has been called' error, kept when "
        "getaddrinfo()/getnameinfo() skip the executor",
        params="",
    ),
    PrivateName(
        _LOOP, "_getaddrinfo_debug", METHOD, "3.11+",
        "_resolve.py",
        "debug mode's logged getaddrinfo()",
        params="host, port, family, type, proto, flags",
    ),
    PrivateName(
        _LOOP, "_ready", ATTRIBUTE, "3.11+",
        "_loop.py (Loop.__init__)",
        "the stock ready queue, replaced by a stand-in that fails loudly if used "
        "(the C core has its own)",
    ),
    PrivateName(
        _LOOP, "_scheduled", ATTRIBUTE, "3.11+",
        "_loop.py (Loop.__init__)",
        "the stock timer heap, replaced by the same kind of stand-in",
    ),
    PrivateName(
        _LOOP, "_timer_cancelled_count", ATTRIBUTE, "3.11+",
        "_loop.py (Loop.__init__)",
        "the stock cancelled-timer count, dropped (the C core counts its own)",
    ),
    PrivateName(
        _LOOP, "_asyncgens", ATTRIBUTE, "3.11+",
        "_vthread.py",
        "the live async generators: a thread's loop that has none closes without running",
    ),
    PrivateName(
        _LOOP, "_clock_resolution", ATTRIBUTE, "3.11+",
        "src/sched.c (looked up by name)",
        "the stock 'not due yet' margin for deadlines that are not floats",
    ),
    PrivateName(
        _LOOP, "_transports", ATTRIBUTE, "3.11+",
        "src/sock.c (looked up by name; reads its .data dict)",
        "fd -> transport: the C sock_* paths refuse a socket a transport owns, as the "
        "stock ones do",
    ),
    # ... and what greenhub.Loop replaces (C: src/loop.c, sched.c, run.c, io.c; Python: _loop.py)
    PrivateName(
        _LOOP, "_closed", OVERRIDDEN_ATTRIBUTE, "3.11+", "src/loop.c",
        "a C property, so that the inherited code and the C core share one flag",
    ),
    PrivateName(
        _LOOP, "_stopping", OVERRIDDEN_ATTRIBUTE, "3.11+", "src/loop.c; _loop.py",
        "a C property (one flag for both sides); run_forever resets it on 3.11 and 3.12",
    ),
    PrivateName(
        _LOOP, "_debug", OVERRIDDEN_ATTRIBUTE, "3.11+", "src/loop.c; _loop.py, _resolve.py",
        "a C property (one flag for both sides)",
    ),
    PrivateName(
        _LOOP, "_thread_id", OVERRIDDEN_ATTRIBUTE, "3.11+",
        "src/loop.c; _loop.py, _dump.py; sync.py (on any loop)",
        "a C property: the running loop's thread, which the inherited thread checks "
        "read; greenhub.sync reads it on a task's (any) loop",
    ),
    PrivateName(
        _LOOP, "_current_handle", OVERRIDDEN_ATTRIBUTE, "3.11+", "src/loop.c",
        "a C property: the handle running now, which the stock debug code reads",
    ),
    PrivateName(
        _LOOP, "_task_factory", OVERRIDDEN_ATTRIBUTE, "3.11+", "src/loop.c",
        "a C property: the inherited set/get_task_factory() and the C create_task() "
        "share it",
    ),
    PrivateName(
        _LOOP, "_run_once", OVERRIDDEN_METHOD, "3.11+", "src/run.c",
        "one iteration of the C run loop, for stock code that calls it",
        params="",
    ),
    PrivateName(
        _LOOP, "_check_closed", OVERRIDDEN_METHOD, "3.11+", "src/sched.c",
        "the closed-loop error, in C", params="",
    ),
    PrivateName(
        _LOOP, "_check_thread", OVERRIDDEN_METHOD, "3.11+", "src/sched.c",
        "debug mode's wrong-thread error, in C", params="",
    ),
    PrivateName(
        _LOOP, "_check_callback", OVERRIDDEN_METHOD, "3.11+", "src/sched.c",
        "the stock 'a callable is required' errors, in C", params="callback, method",
    ),
    PrivateName(
        _LOOP, "_write_to_self", OVERRIDDEN_METHOD, "3.11+", "src/sched.c",
        "wakes the C loop's poll (the stock signal code calls it)", params="",
    ),
    PrivateName(
        _LOOP, "_timer_handle_cancelled", OVERRIDDEN_METHOD, "3.11+", "src/sched.c",
        "called by a cancelled stock TimerHandle", params="handle",
    ),
    PrivateName(
        _LOOP, "_add_reader", OVERRIDDEN_METHOD, "3.11+", "src/io.c; _children.py",
        "the fd-watching primitive the whole inherited I/O layer is built on: "
        "libev instead of the selector; 3.15 added `context`",
        params={"3.11": "fd, callback, *args", "3.15": "fd, callback, *args, context"},
    ),
    PrivateName(
        _LOOP, "_add_writer", OVERRIDDEN_METHOD, "3.11+", "src/io.c; _loop.py",
        "as _add_reader; 3.15 added `context`",
        params={"3.11": "fd, callback, *args", "3.15": "fd, callback, *args, context"},
    ),
    PrivateName(
        _LOOP, "_remove_reader", OVERRIDDEN_METHOD, "3.11+", "src/io.c; _children.py",
        "as _add_reader", params="fd",
    ),
    PrivateName(
        _LOOP, "_remove_writer", OVERRIDDEN_METHOD, "3.11+", "src/io.c",
        "as _add_reader", params="fd",
    ),
    PrivateName(
        _LOOP, "_add_callback", OVERRIDDEN_METHOD, "3.11+", "_loop.py",
        "how stock signal handling queues its Handles (greenhub reads the Handle's "
        "_cancelled and calls its _run(): see asyncio.events.Handle)",
        params="handle",
    ),
    PrivateName(
        _LOOP, "_make_socket_transport", OVERRIDDEN_METHOD, "3.11+", "_loop.py",
        "where the inherited code makes a TCP/Unix transport: greenhub's instead; "
        "3.15 added `context`",
        params={
            "3.11": "sock, protocol, waiter, *, extra, server",
            "3.15": "sock, protocol, waiter, *, extra, server, context",
        },
    ),
    PrivateName(
        _LOOP, "_make_ssl_transport", OVERRIDDEN_METHOD, "3.11+", "_loop.py",
        "where the inherited code makes a TLS transport: asyncio's SSLProtocol over "
        "greenhub's socket transport; 3.15 added `context`",
        params={
            "3.11": "rawsock, protocol, sslcontext, waiter, *, server_side, "
            "server_hostname, extra, server, ssl_handshake_timeout, ssl_shutdown_timeout",
            "3.15": "rawsock, protocol, sslcontext, waiter, *, server_side, "
            "server_hostname, extra, server, ssl_handshake_timeout, ssl_shutdown_timeout, "
            "context",
        },
    ),
    PrivateName(
        _LOOP, "_make_subprocess_transport", OVERRIDDEN_METHOD, "3.11+", "_children.py",
        "where the inherited code makes a subprocess transport: greenhub watches the "
        "child through a pidfd (and calls the stock one when the policy has a watcher)",
        params="protocol, args, shell, stdin, stdout, stderr, bufsize, extra, **kwargs",
    ),
    # -- the stock event loop policy --------------------------------------------------
    PrivateName(
        _POLICY, "_watcher", ATTRIBUTE, "3.11-3.13",
        "_children.py",
        "the child watcher the user installed, if any (read without creating one); "
        "3.14 removed child watchers",
    ),
    PrivateName(
        _POLICY, "_loop_factory", OVERRIDDEN_ATTRIBUTE, "3.11+",
        "__init__.py (greenhub.Policy)",
        "what the stock policy's new_event_loop() calls: greenhub.Loop",
    ),
    # -- stock transports and protocols -------------------------------------------
    PrivateName(
        "asyncio.unix_events._UnixSubprocessTransport", "_wait", METHOD, "3.11+",
        "_children.py",
        "waits for the child after a failed start, as the stock path does",
        params="",
    ),
    PrivateName(
        "asyncio.sslproto.SSLProtocol", "_app_transport", ATTRIBUTE, "3.11+",
        "_loop.py (_make_ssl_transport)",
        "the transport the application sees, returned as the stock method returns it",
    ),
    PrivateName(
        _TRANSPORT, "_read_ready", OVERRIDDEN_METHOD, "3.11+", "src/transport.c",
        "the fd's reader callback: one recv() into the protocol, in C", params="",
    ),
    PrivateName(
        _TRANSPORT, "_read_ready__data_received", OVERRIDDEN_METHOD, "3.11+",
        "src/transport.c (also calls the stock one, looked up by name)",
        "the Protocol read path, in C", params="",
    ),
    PrivateName(
        _TRANSPORT, "_read_ready__get_buffer", OVERRIDDEN_METHOD, "3.11+",
        "src/transport.c (also calls the stock one, looked up by name)",
        "the BufferedProtocol read path, in C", params="",
    ),
    PrivateName(
        _TRANSPORT, "_read_ready__on_eof", METHOD, "3.11+", "src/transport.c",
        "the stock EOF handling, called from the C read path", params="",
    ),
    PrivateName(
        _TRANSPORT, "_fatal_error", METHOD, "3.11+", "src/transport.c",
        "the stock error handling, called from the C paths", params="exc, message",
    ),
    PrivateName(
        _TRANSPORT, "_maybe_resume_protocol", OVERRIDDEN_METHOD, "3.11+", "_transport.py",
        "sends what a resumed protocol wrote before the stock code looks at the buffer",
        params="",
    ),
    PrivateName(
        _TRANSPORT, "_make_empty_waiter", OVERRIDDEN_METHOD, "3.11+", "_transport.py",
        "sends the queued writes before sendfile waits for an empty buffer", params="",
    ),
    *(
        PrivateName(
            _TRANSPORT, name, OVERRIDDEN_ATTRIBUTE, "3.11+", "src/transport.c",
            "stored in the C TransportState (a data descriptor), so that the stock "
            "Python code and the C paths share one copy",
        )
        for name in (
            "_conn_lost",
            "_eof",
            "_empty_waiter",
            "_buffer",
            "_sock",
            "_protocol",
            "_read_ready_cb",
        )
    ),
    PrivateName(
        _TRANSPORT, "_high_water", OVERRIDDEN_ATTRIBUTE, "3.11+", "src/transport.c",
        "stored in the C TransportState as the others above: write() sends the queue at "
        "once when it grows past the mark, where the stock write() may pause the protocol",
    ),
    # -- handles, futures, tasks ------------------------------------------------------
    PrivateName(
        _HANDLE, "_run", OVERRIDDEN_METHOD, "3.11+", "src/handle.c; _loop.py",
        "runs the callback; greenhub's Handle is a subclass whose _run() is C, and "
        "greenhub runs stock signal Handles through theirs",
        params="",
    ),
    PrivateName(
        _HANDLE, "_cancelled", OVERRIDDEN_ATTRIBUTE, "3.11+", "src/handle.c; _loop.py",
        "a C property of greenhub's Handle; read on stock signal Handles",
    ),
    *(
        PrivateName(
            _HANDLE, name, OVERRIDDEN_ATTRIBUTE, "3.11+", "src/handle.c; _loop.py",
            "a C property of greenhub's Handle, for the stock code and tools that "
            "read it (_format_handle, reprs, exception contexts)",
        )
        for name in ("_callback", "_args", "_source_traceback", "_repr", "_context", "_loop")
    ),
    PrivateName(
        "asyncio.events.TimerHandle", "_when", OVERRIDDEN_ATTRIBUTE, "3.11+",
        "src/handle.c; _loop.py",
        "a C property of greenhub's TimerHandle (the deadline object, as asyncio keeps it)",
    ),
    PrivateName(
        "asyncio.events.TimerHandle", "_scheduled", OVERRIDDEN_ATTRIBUTE, "3.11+",
        "src/handle.c",
        "a C property of greenhub's TimerHandle (whether it is in the heap)",
    ),
    PrivateName(
        "asyncio.futures.Future", "_asyncio_future_blocking", ATTRIBUTE, "3.11+",
        "_cancel.py; src/fd_wait.c (looked up by name)",
        "the flag a Task checks on what a step yields: greenhub sets it on the "
        "stand-in futures it hands the Task and reads it on yielded objects",
    ),
    PrivateName(
        "asyncio.tasks.Task", "_coro", ATTRIBUTE, "3.11+",
        "_task.py; src/task_create.c, src/task_step.c (looked up by name)",
        "the Task's coroutine field as stored (greenhub's GreenCoro wrapper), read "
        "through the class's descriptor: what asyncio.Task.get_coro() returns, without "
        "the crash of 3.12.0-3.12.1's get_coro() on an eager task that dropped it; "
        "await_() reads it on asyncio's current task, to tell its own step from the "
        "eager first step of a Task built by asyncio.Task() inside it (by name on a "
        "Task written in Python)",
    ),
    PrivateName(
        "asyncio.tasks.Task", "_fut_waiter", ATTRIBUTE, "3.11+",
        "_dump.py",
        "the future a task waits on, shown in task dumps",
    ),
    # -- socket, ssl, subprocess, threading ---------------------------------------------
    PrivateName(
        "socket.socket", "_accept", METHOD, "3.11+", "socket.py",
        "the raw accept() (fd, address) under socket.accept(), retried on EAGAIN",
    ),
    PrivateName(
        "socket.socket", "_check_sendfile_params", METHOD, "3.11+", "socket.py",
        "socket.sendfile()'s argument checks, same errors", params="file, offset, count",
    ),
    PrivateName(
        "socket.socket", "_sendfile_use_send", METHOD, "3.11+", "socket.py",
        "socket.sendfile()'s send() fallback", params="file, offset, count",
    ),
    PrivateName(
        "socket.socket", "_real_close", OVERRIDDEN_METHOD, "3.11+", "socket.py",
        "where a socket really closes (socket.close() and the last makefile() "
        "reference): the green socket wakes its waiters first",
        params="_ss",
    ),
    PrivateName(
        "ssl.SSLSocket", "_check_connected", METHOD, "3.11+", "ssl.py",
        "do_handshake()'s not-connected error", params="",
    ),
    PrivateName(
        "ssl.SSLSocket", "_sslobj", ATTRIBUTE, "3.11+", "ssl.py",
        "the SSLObject whose do_handshake() the green socket drives",
    ),
    PrivateName(
        "ssl.SSLSocket", "_create", METHOD, "3.11+", "server.py",
        "what SSLContext.wrap_socket() calls: StreamServer makes greenhub SSLSockets "
        "with a stock ssl.SSLContext through it",
        params="sock, server_side, do_handshake_on_connect, suppress_ragged_eofs, "
        "server_hostname, context, session",
    ),
    PrivateName(
        "subprocess.Popen", "_wait", OVERRIDDEN_METHOD, "3.11+",
        "monkey/_subprocess.py (patch_subprocess() replaces it)",
        "the wait every Popen wait goes through (wait(), communicate(), __exit__)",
        params="timeout",
    ),
    PrivateName(
        "subprocess.Popen", "_communication_started", ATTRIBUTE, "3.11+",
        "monkey/_subprocess.py",
        "whether communicate() was already called (then its timeout rules differ)",
    ),
    PrivateName(
        "_thread.RLock", "_is_owned", METHOD, "3.11+", "sync.py",
        "the Condition lock protocol: greenhub.sync.Condition calls these on a "
        "threading lock it is given, and greenhub.sync.RLock provides them for "
        "threading.Condition",
    ),
    PrivateName(
        "_thread.RLock", "_release_save", METHOD, "3.11+", "sync.py",
        "the Condition lock protocol (see _is_owned)",
    ),
    PrivateName(
        "_thread.RLock", "_acquire_restore", METHOD, "3.11+", "sync.py",
        "the Condition lock protocol (see _is_owned)",
    ),
    PrivateName(
        "_thread.LockType", "_at_fork_reinit", METHOD, "3.11+", "sync.py",
        "resets a raw lock in a forked child: greenhub.sync's RLock calls it on its "
        "raw lock; its Lock provides it for threading's after-fork code",
    ),
    PrivateName(
        "threading.Event", "_at_fork_reinit", OVERRIDDEN_METHOD, "3.11+", "sync.py",
        "threading's after-fork code calls it on each thread's started Event, which "
        "patch_thread() makes a greenhub.sync.Event",
        params="",
    ),
    PrivateName(
        "threading.Condition", "_release_save", OVERRIDDEN_METHOD, "3.11+", "sync.py",
        "Condition.wait() calls it after queueing its waiter: greenhub.sync's _WaitProbe "
        "releases the waiter there, so that wait(timeout) makes the stdlib's checks of "
        "the timeout without blocking",
        params="",
    ),
    PrivateName(
        "threading.Condition", "_acquire_restore", OVERRIDDEN_METHOD, "3.11+", "sync.py",
        "Condition.wait() calls it on the way out: _WaitProbe has nothing to restore",
        params="x",
    ),
    PrivateName(
        "threading.Condition", "_waiters", ATTRIBUTE, "3.11+", "sync.py",
        "the queue of waiter locks, whose last one _WaitProbe releases",
    ),
    # -- greenhub.contrib: private names of the libraries it adapts -----------------
    # Checked when the library is installed (the [test] extra installs them all).
    PrivateName(
        "psycopg.errors", "_WaitTimeout", CLASS, "3.11+", "contrib/psycopg.py",
        "what psycopg >= 3.3's wait functions raise on timeout (greenhub's raise it "
        "too; OperationalError on older psycopg)",
    ),
    PrivateName(
        "psycopg_pool.ConnectionPool", "_return_connection", OVERRIDDEN_METHOD, "3.11+",
        "contrib/psycopg.py",
        "where a connection goes back to the pool: run in a defer_cancellation() block",
        params="conn, from_getconn",
    ),
    PrivateName(
        "psycopg_pool.ConnectionPool", "_lock", ATTRIBUTE, "3.11+", "contrib/psycopg.py",
        "the pool's lock, taken to drop a cancelled wait()'s event",
    ),
    PrivateName(
        "psycopg_pool.ConnectionPool", "_pool_full_event", ATTRIBUTE, "3.11+",
        "contrib/psycopg.py",
        "wait()'s event, which a cancelled wait() must not leave behind",
    ),
    PrivateName(
        "sqlalchemy.pool.QueuePool", "_queue_class", OVERRIDDEN_ATTRIBUTE, "3.11+",
        "contrib/sqlalchemy.py",
        "the queue class the pool makes: greenhub's cooperative one",
    ),
    PrivateName(
        "sqlalchemy.event.attr._CompoundListener", "_exec_once_mutex", ATTRIBUTE, "3.11+",
        "contrib/sqlalchemy.py",
        "the lock an event collection makes lazily for exec_once listeners: "
        "greenhub gives the pool's a cooperative one first",
    ),
    PrivateName(
        "django.utils.connection.BaseConnectionHandler", "_connections", ATTRIBUTE, "3.11+",
        "contrib/django/_db.py",
        "Django's per-thread connection store, replaced by a per-task one in virtual "
        "threads",
    ),
    PrivateName(
        "django.http.response.HttpResponseBase", "_handler_class", ATTRIBUTE, "3.11+",
        "contrib/django/_asgi.py",
        "set by Django's handlers on each response (request_finished's sender): "
        "greenhub's ASGI handler sets it as Django's does",
    ),
    PrivateName(
        "anyio._core._eventloop", "threadlocals", VALUE, "3.11+", "_colours.py",
        "its `current_token.native_token` is the loop of an anyio worker thread (what "
        "anyio.from_thread.run() goes back to): greenhub.await_() there runs on it",
    ),
    PrivateName(
        "asgiref.sync.SyncToAsync", "_thread_sensitive", ATTRIBUTE, "3.11+",
        "contrib/django/__init__.py",
        "whether the call asked for the caller's thread: in a virtual thread that is "
        "the task itself",
    ),
)
# fmt: on
