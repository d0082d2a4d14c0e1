"""Subprocess exit notification without child watchers.

asyncio's Unix loop (3.11-3.13) learns that a child exited from the child
watcher of the event loop *policy*: on 3.11 a thread per child blocked in
``waitpid()`` by default, on 3.12/3.13 a pidfd watcher (both deprecated from
3.12, removed in 3.14).  greenhub watches its children itself:

* normally through a pidfd (``os.pidfd_open``, Linux 5.3+): the fd becomes
  readable when the child exits, and the loop's own libev reader on it reaps
  the child - no thread, no signal handler, no policy involved;
* where pidfds are unavailable (old kernel, seccomp), a daemon thread per
  child waits in ``waitpid()``, as asyncio's threaded watcher does.

A child watcher that the user installed on the policy is respected: if the
current policy holds one (``set_child_watcher()``, or one an earlier
``get_child_watcher()`` call created), the inherited stock code path uses it
unchanged.  Either way the transport learns the exit code through the
inherited ``_child_watcher_callback``, so what it sees is the stock loop's
order of events on each Python version.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import sys
import threading
import warnings
from asyncio import events
from asyncio.log import logger
from typing import TYPE_CHECKING, Any

from ._private import _UnixDefaultEventLoopPolicy, _UnixSelectorEventLoop, _UnixSubprocessTransport

if TYPE_CHECKING:  # mixed into greenhub.Loop, before asyncio's loop
    _LoopBase = _UnixSelectorEventLoop
else:
    _LoopBase = object

# Python 3.11's stock default watcher is a thread per child, which keeps
# waiting after the loop is closed and logs the exit then; from 3.12 the
# default is a pidfd reader that stops with the loop.  greenhub mirrors the
# version at hand when a loop is closed with children still running.
_STOCK_WAITS_IN_THREADS = sys.version_info < (3, 12)
# Python 3.14 removed child watchers and the policy's slot for one.
_NO_CHILD_WATCHERS = sys.version_info >= (3, 14)

_pidfd_works: bool | None = None  # probed once per process
_thread_ids = itertools.count(1)


def _can_use_pidfd() -> bool:
    global _pidfd_works
    if _pidfd_works is None:
        try:
            os.close(os.pidfd_open(os.getpid()))
        except (AttributeError, OSError):
            _pidfd_works = False
        else:
            _pidfd_works = True
    return _pidfd_works


def _policy_watcher() -> Any:
    """The child watcher the current policy already holds, or None.

    Never creates one and never triggers the 3.12+ DeprecationWarning: the
    stock policy's slot is read directly; a policy of another kind is asked
    only if it implements get_child_watcher() itself.  Python 3.14 removed
    child watchers: always None there."""
    if _NO_CHILD_WATCHERS:
        return None
    policy = events.get_event_loop_policy()
    if isinstance(policy, _UnixDefaultEventLoopPolicy):
        return policy._watcher
    getter = type(policy).get_child_watcher
    if getter is events.AbstractEventLoopPolicy.get_child_watcher:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return policy.get_child_watcher()
        except NotImplementedError:
            return None


def _exit_code(pid: int) -> int:
    """Reap child `pid`; its returncode as subprocess reports it."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        # Someone else (os.wait(), Popen.wait()) collected the status first.
        logger.warning("child process %d was reaped elsewhere; reporting returncode 255", pid)
        return 255
    return os.waitstatus_to_exitcode(status)


class ChildrenMixin(_LoopBase):
    """The subprocess part of greenhub.Loop (mixed in before asyncio's loop)."""

    # pid -> (pidfd, transport), children watched by pidfd
    _gh_children: dict[int, tuple[int, asyncio.SubprocessTransport]]

    def _init_children(self) -> None:
        self._gh_children = {}

    async def _make_subprocess_transport(
        self,
        protocol: asyncio.BaseProtocol,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        extra: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> asyncio.SubprocessTransport:
        if _NO_CHILD_WATCHERS or _policy_watcher() is not None:
            # The user chose a watcher: the stock path, exactly.  On 3.14+ always: the
            # stock loop watches its children itself there (a pidfd reader through
            # the loop's own _add_reader(), else a thread per child), as greenhub does.
            # (asyncio's private method, which typeshed does not declare)
            return await super()._make_subprocess_transport(  # type: ignore[misc,no-any-return]
                protocol, args, shell, stdin, stdout, stderr, bufsize, extra=extra, **kwargs
            )
        waiter = self.create_future()
        transp: asyncio.SubprocessTransport = _UnixSubprocessTransport(
            self,
            protocol,
            args,
            shell,
            stdin,
            stdout,
            stderr,
            bufsize,
            waiter=waiter,
            extra=extra,
            **kwargs,
        )
        self._watch_child(transp.get_pid(), transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    def _watch_child(self, pid: int, transp: asyncio.SubprocessTransport) -> None:
        if _can_use_pidfd():
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                # Already reaped by someone else: report it as a thread would.
                self._child_watcher_callback(pid, _exit_code(pid), transp)
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
                    raise
                # Out of fds right now: this child gets a thread instead.
            else:
                self._gh_children[pid] = (pidfd, transp)
                self._add_reader(pidfd, self._child_exited, pid, transp)
                return
        self._wait_in_thread(pid, transp)

    def _child_exited(self, pid: int, transp: asyncio.SubprocessTransport) -> None:
        pidfd, _ = self._gh_children.pop(pid)
        self._remove_reader(pidfd)
        os.close(pidfd)
        returncode = _exit_code(pid)
        if self.get_debug():
            logger.debug("process %s exited with returncode %s", pid, returncode)
        self._child_watcher_callback(pid, returncode, transp)

    def _wait_in_thread(self, pid: int, transp: asyncio.SubprocessTransport) -> None:
        thread = threading.Thread(
            target=self._child_waiter,
            args=(pid, transp),
            name=f"greenhub-waitpid-{next(_thread_ids)}",
            daemon=True,
        )
        thread.start()

    def _child_waiter(self, pid: int, transp: asyncio.SubprocessTransport) -> None:
        returncode = _exit_code(pid)
        if self.get_debug():
            logger.debug("process %s exited with returncode %s", pid, returncode)
        try:
            if not self.is_closed():
                self.call_soon_threadsafe(self._child_watcher_callback, pid, returncode, transp)
                return
        except RuntimeError:  # closed between the check and the call
            pass
        logger.warning("process %d exited after its event loop %r was closed", pid, self)

    def _close_children(self) -> None:
        """At close(): stop watching.  The pidfds are closed; on 3.11, whose
        stock loop keeps a thread waiting for each child, threads take over
        so the children are still reaped (and the exit logged) as there, and
        the transports stay alive until their child exits, as there."""
        children, self._gh_children = self._gh_children, {}
        for pid, (pidfd, transp) in children.items():
            self._remove_reader(pidfd)
            os.close(pidfd)
            if _STOCK_WAITS_IN_THREADS:
                self._wait_in_thread(pid, transp)
