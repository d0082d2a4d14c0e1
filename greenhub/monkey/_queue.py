"""What patch_queue() puts in queue: greenhub.sync's queues.

Each replacement dispatches: inside a virtual thread it waits cooperatively,
anywhere else it is the original (see greenhub/monkey/__init__.py).
"""

import queue

from .. import sync


def _plan_queue(batch):
    for name in ("Queue", "LifoQueue", "PriorityQueue"):
        batch.add("queue", queue, name, getattr(sync, name), ("queue",))
