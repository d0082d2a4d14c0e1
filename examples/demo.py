"""greenhub showcase: an ordinary asyncio program, run on greenhub's C loop.

Run it with `make demo`.  It shows that greenhub is a drop-in asyncio loop
(tasks, timers, threads, timeouts and task groups behave as asyncio's) and
how its scheduling compares with the stock loop on this machine.
"""

import asyncio
import sys
import threading
import time

import greenhub


async def worker(name, delay, results):
    await asyncio.sleep(delay)
    results.append(name)
    return name


async def showcase():
    loop = asyncio.get_running_loop()
    print(f"running on {type(loop).__module__}.{type(loop).__qualname__} "
          f"(libev {'.'.join(map(str, greenhub._core.LIBEV_VERSION))}, {loop._backend})")

    # 1. Many concurrent tasks with timers: 1,000 sleepers overlap.
    results = []
    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(1000):
            tg.create_task(worker(i, 0.05 + (i % 10) / 1000, results))
    elapsed = time.perf_counter() - t0
    print(f"1,000 tasks each sleeping ~50 ms finished in {elapsed * 1000:.0f} ms "
          f"(they overlapped: sequentially it would take {1000 * 0.05:.0f} s)")

    # 2. Timeouts and cancellation behave as asyncio's.
    try:
        async with asyncio.timeout(0.01):
            await asyncio.sleep(10)
    except TimeoutError:
        print("asyncio.timeout(0.01) around sleep(10): TimeoutError, as expected")

    # 3. Another OS thread hands work to the loop with call_soon_threadsafe.
    fut = loop.create_future()
    threading.Thread(
        target=lambda: loop.call_soon_threadsafe(fut.set_result, threading.get_ident())
    ).start()
    tid = await fut
    print(f"a result set from thread {tid} woke the loop in thread {threading.get_ident()}")

    # 4. A blocking call runs in the default executor while the loop keeps going.
    t0 = time.perf_counter()
    await asyncio.gather(*(loop.run_in_executor(None, time.sleep, 0.05) for _ in range(4)),
                         asyncio.sleep(0.05))
    print(f"4 x time.sleep(0.05) in the executor alongside the loop: "
          f"{(time.perf_counter() - t0) * 1000:.0f} ms")


def steps_per_second(new_loop, n=100_000):
    async def stepper():
        for _ in range(n):
            await asyncio.sleep(0)

    loop = new_loop()
    try:
        t0 = time.perf_counter()
        loop.run_until_complete(stepper())
        return n / (time.perf_counter() - t0)
    finally:
        loop.close()


def main():
    greenhub.run(showcase())
    stock = max(steps_per_second(asyncio.new_event_loop) for _ in range(3))
    green = max(steps_per_second(greenhub.new_event_loop) for _ in range(3))
    print(f"task steps (await asyncio.sleep(0)) per second: stock asyncio {stock:,.0f}, "
          f"greenhub {green:,.0f}  ({green / stock:.1f}x)")
    print(f"Python {sys.version.split()[0]}; see `make bench` for the full comparison "
          f"with uvloop")


if __name__ == "__main__":
    main()
