"""Tests for the sliding-window limiter, on a virtual clock."""

from __future__ import annotations

import asyncio
import bisect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkjob._limiter import _EPSILON, WindowLimiter
from tests.vclock import run_virtual


def max_in_window(stamps: list[float], window: float) -> int:
    """Most stamps inside any half-open window (t - window, t]."""
    stamps = sorted(stamps)
    return max(
        (i + 1 - bisect.bisect_right(stamps, t - window) for i, t in enumerate(stamps)),
        default=0,
    )


async def _traffic(
    limiter: WindowLimiter, requests: int, workers: int, latency: float
) -> tuple[list[float], list[float]]:
    """Send ``requests`` through ``workers`` tasks; return send and completion times."""
    loop = asyncio.get_running_loop()
    sent: list[float] = []
    done: list[float] = []
    todo = iter(range(requests))

    async def worker() -> None:
        for _ in todo:
            async with limiter:
                sent.append(loop.time())
                await asyncio.sleep(latency)
                done.append(loop.time())

    await asyncio.gather(*(worker() for _ in range(workers)))
    return sent, done


@pytest.mark.parametrize(
    ("n", "per", "workers", "latency"),
    [(20, 1.0, 8, 0.003), (5, 10.0, 3, 2.0), (1000, 300.0, 16, 1.5)],
)
def test_never_more_than_n_in_any_window(n: int, per: float, workers: int, latency: float) -> None:
    """Neither sends nor completions ever exceed N inside one sliding window."""

    async def main() -> tuple[list[float], list[float]]:
        return await _traffic(WindowLimiter(n, per, margin=0.01), n * 4 + 3, workers, latency)

    sent, done = run_virtual(main)
    assert max_in_window(sent, per) <= n
    assert max_in_window(done, per) <= n


def test_server_arrival_anywhere_in_flight_stays_within_limit() -> None:
    """Any arrival time between send and completion keeps N per window (jitter-proof)."""

    async def main() -> tuple[list[float], list[float]]:
        return await _traffic(WindowLimiter(10, 1.0, margin=0.0), 55, 10, 0.05)

    sent, done = run_virtual(main)
    # Worst case for the guarantee: old requests arrive as late as possible, new ones early.
    pairs = sorted(zip(sent, done, strict=True))
    for i in range(len(pairs) - 10):
        assert pairs[i + 10][0] - pairs[i][1] >= 1.0 - 1e-9


def test_throughput_close_to_the_allowed_rate() -> None:
    """Steady state runs within margin plus latency of N per window."""

    async def main() -> float:
        limiter = WindowLimiter(20, 1.0, margin=0.01)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await _traffic(limiter, 400, 8, 0.003)
        return loop.time() - start

    elapsed = run_virtual(main)
    ideal = 400 / 20
    assert ideal * 0.9 <= elapsed <= ideal * 1.03


def test_throttled_pauses_every_worker_and_doubles() -> None:
    """A 429 pause holds all acquirers; consecutive pauses double up to one window."""

    async def main() -> tuple[list[float], float, list[float]]:
        limiter = WindowLimiter(100, 10.0, margin=0.0, initial_delay=1.0, pace=False)
        loop = asyncio.get_running_loop()
        delays = [await limiter.throttled() for _ in range(6)]
        paused_at = loop.time()
        stamps: list[float] = []

        async def one() -> None:
            async with limiter:
                stamps.append(loop.time())

        await asyncio.gather(*(one() for _ in range(5)))
        return delays, paused_at, stamps

    delays, paused_at, stamps = run_virtual(main)
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert all(t >= paused_at + 1.0 for t in stamps)


def test_retry_after_is_honoured_and_success_resets_backoff() -> None:
    """Retry-After sets the pause; a success restarts the doubling at the initial delay."""

    async def main() -> list[float]:
        limiter = WindowLimiter(10, 60.0, initial_delay=2.0)
        out = [await limiter.throttled(7.0), await limiter.throttled()]
        out.append(await limiter.throttled())
        limiter.succeeded()  # the store hears it with the next release
        async with limiter:
            pass
        out.append(await limiter.throttled())
        return out

    assert run_virtual(main) == [7.0, 2.0, 4.0, 2.0]


def test_release_without_acquire_is_an_error() -> None:
    """Releasing more slots than were taken is a bug and says so."""

    async def main() -> None:
        await WindowLimiter(1, 1.0).__aexit__(None, None, None)

    with pytest.raises(RuntimeError, match="without a matching"):
        run_virtual(main)


def test_cancelled_waiter_gives_its_slot_back() -> None:
    """A task cancelled while waiting holds no slot afterwards."""

    async def main() -> int:
        limiter = WindowLimiter(1, 10.0, pace=False)
        slot = await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await limiter.release(slot)
        return limiter.in_flight

    assert run_virtual(main) == 0


def test_rejects_bad_settings() -> None:
    """Zero requests or a non-positive window are refused with the field's name."""
    with pytest.raises(ValueError, match="max_requests"):
        WindowLimiter(0, 1.0)
    with pytest.raises(ValueError, match="per_seconds"):
        WindowLimiter(1, 0.0)


def test_pause_also_holds_callers_already_past_the_window_check() -> None:
    """A 429 pause started while callers wait on the pacer holds them too."""

    async def main() -> list[float]:
        limiter = WindowLimiter(100, 10.0, pace=True)  # paced: one per 0.1 s
        loop = asyncio.get_running_loop()
        sent: list[float] = []

        async def one() -> None:
            async with limiter:
                sent.append(loop.time())

        tasks = [asyncio.ensure_future(one()) for _ in range(8)]
        await asyncio.sleep(0.35)
        await limiter.throttled(5.0)
        await asyncio.gather(*tasks)
        return sent

    sent = run_virtual(main)
    assert all(t <= 0.35 or t >= 5.35 - 1e-6 for t in sent)
    assert len([t for t in sent if t >= 5.35 - 1e-6]) == 4


@given(
    n=st.integers(1, 25),
    per=st.floats(0.05, 5.0),
    workers=st.integers(1, 12),
    latencies=st.lists(st.floats(0.0, 3.0), min_size=1, max_size=40),
    pace=st.booleans(),
)
@settings(max_examples=80, deadline=None)
def test_no_window_ever_holds_more_than_n_whatever_the_latencies(
    n: int, per: float, workers: int, latencies: list[float], pace: bool
) -> None:
    """Property: with any latencies, burst or even, the server can never see N+1 in a window.

    A request reaches the server somewhere between its send and its answer; the worst case
    for the guarantee puts old requests at their answer and new ones at their send. So the
    (i+N)-th send must come at least a window after the i-th answer.
    """
    loop_latencies = iter(latencies * (1 + (4 * n + 3) // len(latencies)))

    async def main() -> tuple[list[float], list[float]]:
        limiter = WindowLimiter(n, per, margin=0.0, pace=pace)
        loop = asyncio.get_running_loop()
        sent: list[float] = []
        done: list[float] = []
        todo = iter(range(4 * n + 3))

        async def worker() -> None:
            for _ in todo:
                async with limiter:
                    start = loop.time()
                    await asyncio.sleep(next(loop_latencies))
                    sent.append(start)
                    done.append(loop.time())

        await asyncio.gather(*(worker() for _ in range(workers)))
        return sent, done

    sent, done = run_virtual(main)
    pairs = sorted(zip(sent, done, strict=True))
    starts = sorted(sent)
    ends = sorted(d for _, d in pairs)
    for i in range(len(starts) - n):
        # The n requests completed first leave no room for a send within a window of them
        # (to the limiter's resolution: a timer may fire a microsecond early).
        assert starts[i + n] - ends[i] >= per - _EPSILON - 1e-9


def test_a_store_failing_at_release_never_fails_the_request() -> None:
    """The answer is in when a slot is released: a store error there is logged, not raised
    (raising would make an accepted submit look unsent, and resume would pay again)."""
    from bulkjob._errors import ConfigError
    from bulkjob._window_store import MemoryStore, StoreParams

    class Failing(MemoryStore):
        async def release(self, slot: str, *, reset_backoff: bool) -> None:
            raise ConfigError("throttle store: database is locked")

    async def main() -> int:
        limiter = WindowLimiter(5, 1.0, store=Failing(StoreParams(5, 1.0, 0.1, 10.0)))
        async with limiter:
            pass
        return limiter.in_flight

    assert run_virtual(main) == 0


def test_one_task_per_process_asks_the_store_while_the_window_is_full() -> None:
    """Tasks waiting for a full window queue behind one asker: each slot that frees costs
    about one ask of the store, not one per waiting task (all would wake for that slot).
    For a shared store every ask is a transaction or a round trip."""
    from bulkjob._window_store import MemoryStore, StoreParams

    class Counting(MemoryStore):
        asks = 0

        async def acquire(self) -> tuple[str | None, float]:
            Counting.asks += 1
            return await super().acquire()

    async def main() -> int:
        store = Counting(StoreParams(2, 1.0, 0.0, 10.0))
        limiter = WindowLimiter(2, 1.0, pace=False, store=store)

        async def one() -> None:
            async with limiter:
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one() for _ in range(20)))
        return Counting.asks

    # 20 slots, 2 per window: 18 of them wait for one. Each wait costs the asker one ask
    # that finds the window full and one that takes the slot; with every waiting task
    # asking, it was about 20 per slot.
    assert run_virtual(main) <= 2 * 20
