"""Where can a task switch?  greenhub's debugging tools in one short program.

- `greenhub.no_switch()` turns an accidental switch inside a critical section into an
  error you see in the first run;
- the switch log shows each place sync code suspends;
- the watchdog reports a virtual thread that blocks the loop, with its stack;
- `greenhub.dump_tasks()` shows every task, the sync frames under `await_` included
  (`kill -USR1 <pid>` does the same while the program runs).

Run: python examples/debug_tools.py
"""

import asyncio
import logging
import signal
import time

import greenhub

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

accounts = {"alice": 100, "bob": 0}


def audit(entry):  # one day somebody makes this wait on the network...
    greenhub.sleep(0.01)


def transfer(src, dst, amount):
    with greenhub.no_switch("transfer"):
        accounts[src] -= amount
        audit((src, dst, amount))  # ... and the critical section would be interleaved
        accounts[dst] += amount


def legacy_report():
    time.sleep(0.3)  # blocks the whole loop: the watchdog reports it


def fetch_page(n):
    return greenhub.await_(asyncio.sleep(30, n))  # parked: dump_tasks shows this frame


def handler(n):
    return fetch_page(n)


async def main():
    loop = asyncio.get_running_loop()
    loop.set_watchdog(0.1)
    greenhub.enable_dump_on_signal(signal.SIGUSR1)

    try:
        await greenhub.spawn(transfer, "alice", "bob", 10)
    except greenhub.SwitchError as e:
        # no_switch does not roll anything back: it makes the design error loud.
        print("refused:", e)
        print("state the switch would have exposed to other tasks:", accounts)

    greenhub.set_switch_log(True)
    waiter = greenhub.spawn(handler, 1)
    waiter.set_name("page-fetcher")
    await asyncio.sleep(0.01)
    greenhub.set_switch_log(False)

    await greenhub.spawn(legacy_report)
    await asyncio.sleep(0)  # the watchdog's report is delivered here

    greenhub.dump_tasks()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


if __name__ == "__main__":
    greenhub.run(main())
