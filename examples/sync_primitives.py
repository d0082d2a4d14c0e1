"""Virtual threads, an OS thread and async code sharing greenhub's primitives.

Five sync workers (virtual threads) drain a bounded queue that an ordinary OS thread
fills; async code waits for them all.  Run: python examples/sync_primitives.py
"""

import asyncio
import threading
import time

import greenhub

jobs = greenhub.Queue(maxsize=4)
print_lock = greenhub.Lock()


def worker(n):  # plain sync code, run as a virtual thread
    done = 0
    while (job := jobs.get()) is not None:
        greenhub.sleep(0.05)  # only this virtual thread waits
        with print_lock:
            print(f"worker {n} finished job {job}")
        done += 1
        jobs.task_done()
    jobs.task_done()
    return done


def feeder():  # an OS thread: put() really blocks it while the queue is full
    for i in range(20):
        jobs.put(i)


async def main():
    t0 = time.monotonic()
    workers = [greenhub.spawn(worker, n) for n in range(5)]
    thread = threading.Thread(target=feeder)
    thread.start()
    await asyncio.to_thread(thread.join)
    for _ in workers:
        await jobs.async_put(None)  # async code uses the async_ methods
    await jobs.async_join()
    counts = await asyncio.gather(*workers)
    print(
        f"jobs per worker: {counts}; {time.monotonic() - t0:.2f} s (20 jobs x 0.05 s serially: 1 s)"
    )


if __name__ == "__main__":
    greenhub.run(main())
