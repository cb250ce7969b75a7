"""A process that uses a Redis window store, for the store's multi-process tests.

    python -m tests.store_hammer URL ACCOUNT MAX_REQUESTS PER_SECONDS MODE ...

MODE ``hammer TASKS COUNT OUT``: TASKS workers each make COUNT requests through a
:class:`~bulkjob._limiter.WindowLimiter` on the store, holding the slot for a short
random while, and write every slot's (acquired, released) wall-clock times to OUT as
JSON. ``ready`` is printed once the store answered, ``go`` read from stdin starts them.

MODE ``hold K LEASE``: take K slots (leases of LEASE seconds, renewed), print ``held``
and wait to be killed.

MODE ``throttled RETRY_AFTER...``: one 429 per argument (``none``: without
Retry-After), then close.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

from bulkjob._limiter import WindowLimiter
from bulkjob._store_redis import RedisStore
from bulkjob._window_store import StoreParams

#: The limiter's defaults, as in the tests: the margin makes the window.
MARGIN = 0.01
INITIAL_DELAY = 0.05


def store_for(url: str, account: str, max_requests: int, per: float, lease: float) -> RedisStore:
    params = StoreParams(max_requests, per * (1 + MARGIN), INITIAL_DELAY, 60.0)
    return RedisStore(params, account, url, lease=lease)


async def hammer(store: RedisStore, per: float, tasks: int, count: int) -> list[list[float]]:
    limiter = WindowLimiter(store.params.max_requests, per, margin=MARGIN, pace=False, store=store)
    times: list[list[float]] = []
    rng = random.Random()

    async def worker() -> None:
        for _ in range(count):
            async with limiter:
                acquired = time.time()
                await asyncio.sleep(rng.uniform(0.0, 0.02))
                times.append([acquired, time.time()])

    await asyncio.gather(*(worker() for _ in range(tasks)))
    return times


async def main(argv: list[str]) -> None:
    url, account, max_requests, per, mode, *rest = argv
    lease = float(rest[1]) if mode == "hold" else 30.0
    store = store_for(url, account, int(max_requests), float(per), lease)
    try:
        if mode == "hammer":
            tasks, count, out = int(rest[0]), int(rest[1]), rest[2]
            await store.state()  # reached: the start is the same for every process
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            times = await hammer(store, float(per), tasks, count)
            Path(out).write_text(json.dumps(times))  # noqa: ASYNC240 - the run is over
        elif mode == "hold":
            for _ in range(int(rest[0])):
                slot, _wait = await store.acquire()
                assert slot is not None
            print("held", flush=True)
            await asyncio.Event().wait()
        elif mode == "throttled":
            for arg in rest:
                await store.throttled(None if arg == "none" else float(arg))
        else:
            raise SystemExit(f"unknown mode {mode}")
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
