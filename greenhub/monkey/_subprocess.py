"""subprocess.Popen's waits in a virtual thread: the green implementations behind
patch_subprocess().

Each replacement dispatches: inside a virtual thread it waits cooperatively,
anywhere else it is the original (see greenhub/monkey/__init__.py).
"""

import os
import subprocess as _subprocess_mod

from .. import _waits
from ._common import _in_vthread, _monotonic, _wait_readable, _wraps

# A communicate() given no timeout but a single pipe reads or writes it with
# one blocking call; with a timeout it takes the selector path, which waits
# cooperatively.  This is the longest timeout that path's poll() takes (INT_MAX ms,
# about 24.8 days); a communicate() that outlasts it starts again, which loses
# nothing (subprocess documents retrying after TimeoutExpired).
_LONG_WAIT = (2**31 - 1) // 1000


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
        remaining = _waits.remaining(deadline)
        if remaining == 0.0:
            return False
        _waits.sleep(delay if remaining is None else min(delay, remaining))
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
            while True:
                try:
                    return original(self, input, _LONG_WAIT)
                except _subprocess_mod.TimeoutExpired:
                    input = None  # sent already: communication has started
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
