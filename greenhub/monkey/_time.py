"""time.sleep in a virtual thread: the green implementation behind patch_time().

Each replacement dispatches: inside a virtual thread it waits cooperatively,
anywhere else it is the original (see greenhub/monkey/__init__.py).
"""

import time as _time_mod

from .. import _waits
from ._common import _INVALID, _in_vthread, _seconds, _wraps


def _make_sleep(original):
    def sleep(secs):
        if not _in_vthread():
            return original(secs)
        seconds = _seconds(secs)
        if seconds is _INVALID:
            return original(secs)  # raises exactly its own error
        _waits.sleep(seconds)

    return _wraps(original, sleep)


def _plan_time(batch):
    batch.add("time", _time_mod, "sleep", _make_sleep(_time_mod.sleep), ("time",))
