"""What patch_queue() puts in queue: greenhub.sync's queues, which wait
cooperatively inside a virtual thread and block as queue's do anywhere else."""

import queue

from .. import sync


def _plan_queue(batch):
    for name in ("Queue", "LifoQueue", "PriorityQueue"):
        batch.add("queue", queue, name, getattr(sync, name), ("queue",))
