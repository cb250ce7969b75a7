"""The throttle-safe limiter every API request goes through (retries and status calls included).

The API counts requests per token over a sliding window and, once the count is
exceeded, locks the whole account out for a full window. Being a little slow costs
a percent; being one request too fast costs the window. So the limiter gives a hard
guarantee rather than an average rate:

    never more than ``max_requests`` requests in any sliding window of ``per_seconds``.

Two mechanisms, in this order:

1. A *sliding-window log* of slots. A request holds a slot from before it is sent
   until its answer (or failure) is back, and the slot is only reused a full window
   (plus ``margin``) after that moment. The server's arrival time of a request lies
   between our send and our receipt of the answer, so counting from the receipt keeps
   the guarantee whatever the network jitter or the server's clock does.
2. An :class:`aiolimiter.AsyncLimiter` ``(1, per_seconds / max_requests)`` as a pacer,
   spreading requests evenly instead of sending the window's worth as one burst.
   aiolimiter on its own is a leaky bucket that starts empty, so ``AsyncLimiter(N, T)``
   would let N through at once and then keep leaking: up to ~2N in the first window
   (aiolimiter issues #240, #298). Here it only shapes; the log is what guarantees.

On a 429 every worker pauses together (:meth:`WindowLimiter.throttled`): the pause
honours Retry-After as sent, up to ``max_pause`` (a lockout may outlast one window, so
the cap is not the window); without Retry-After it starts at ``initial_delay`` and
doubles on each consecutive 429, capped at one window.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Protocol

from aiolimiter import AsyncLimiter

__all__ = ["SlotRecorder", "WindowLimiter"]

_EPSILON = 1e-6


def _to_monotonic(wall_times: Sequence[float]) -> list[float]:
    """Wall-clock times as event-loop times (asyncio's loop clock is time.monotonic)."""
    offset = time.monotonic() - time.time()
    return sorted(t + offset for t in wall_times)


class SlotRecorder(Protocol):
    """Where a limiter writes its slots down (see :mod:`bulkjob._windowlog`)."""

    def taken(self) -> None:
        """A request took a slot and is about to leave."""

    def freed(self) -> None:
        """A request's slot came back."""


class WindowLimiter:
    """At most ``max_requests`` request slots in any sliding window of ``per_seconds``."""

    __slots__ = (
        "_done",
        "_in_flight",
        "_next_delay",
        "_pacer",
        "_recorder",
        "_released",
        "_resume_at",
        "initial_delay",
        "margin",
        "max_pause",
        "max_requests",
        "paused_s",
        "pauses",
        "per_seconds",
        "window",
    )

    def __init__(
        self,
        max_requests: int,
        per_seconds: float,
        *,
        margin: float = 0.01,
        initial_delay: float = 5.0,
        pace: bool = True,
        max_pause: float = 3600.0,
        history: Sequence[float] = (),
        recorder: SlotRecorder | None = None,
    ) -> None:
        if max_requests < 1:
            raise ValueError(f"max_requests: must be at least 1, got {max_requests}")
        if per_seconds <= 0:
            raise ValueError(f"per_seconds: must be positive, got {per_seconds}")
        self.max_requests = max_requests
        self.per_seconds = per_seconds
        self.margin = margin
        #: The effective window a slot stays used after its request completed.
        self.window = per_seconds * (1.0 + margin)
        self.initial_delay = min(initial_delay, per_seconds)
        #: The longest pause a Retry-After can ask for.
        self.max_pause = max_pause
        self._next_delay = self.initial_delay
        # Completion times of the last requests, oldest first; never longer than max_requests.
        self._done: collections.deque[float] = collections.deque(_to_monotonic(history))
        self._in_flight = 0
        self._resume_at = 0.0
        #: Pauses after 429s, and the seconds they added up to (overlaps counted once).
        self.pauses = 0
        self.paused_s = 0.0
        self._released: asyncio.Event | None = None
        self._pacer = AsyncLimiter(1, per_seconds / max_requests) if pace else None
        self._recorder = recorder

    def __repr__(self) -> str:
        return (
            f"<WindowLimiter {self.max_requests}/{self.per_seconds:g}s "
            f"in_flight={self._in_flight} recent={len(self._done)} "
            f"paused_until={self._resume_at:.3f}>"
        )

    @property
    def in_flight(self) -> int:
        """Requests holding a slot right now."""
        return self._in_flight

    async def acquire(self) -> None:
        """Wait for a slot; the caller must :meth:`release` it once the answer is back."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if now + _EPSILON < self._resume_at:
                await asyncio.sleep(self._resume_at - now)
                continue
            self._expire(now)
            if self._in_flight + len(self._done) < self.max_requests:
                break
            if self._done:
                # The oldest completed request leaves the window at done[0] + window;
                # a release could free nothing earlier, since in-flight slots re-enter the log.
                await asyncio.sleep(self._done[0] + self.window - now)
            else:
                # Every slot is in flight: only a release changes anything.
                await self._wait_release()
        self._in_flight += 1
        try:
            if self._pacer is not None:
                await self._pacer.acquire()
            # A 429 may have paused everyone while this caller waited for the pacer. A
            # deadline, not an event: another 429 can move it while this one sleeps.
            while (wait := self._resume_at - loop.time()) > _EPSILON:  # noqa: ASYNC110
                await asyncio.sleep(wait)
        except BaseException:
            self._in_flight -= 1
            raise
        if self._recorder is not None:
            self._recorder.taken()

    def release(self) -> None:
        """Return a slot: its window starts now, when the answer (or failure) came back."""
        if self._in_flight <= 0:
            raise RuntimeError("release() without a matching acquire()")
        self._in_flight -= 1
        self._done.append(asyncio.get_running_loop().time())
        if self._recorder is not None:
            self._recorder.freed()
        if self._released is not None:
            self._released.set()
            self._released = None

    def throttled(self, retry_after: float | None = None) -> float:
        """A 429 arrived: pause every worker; returns the pause in seconds.

        With Retry-After the pause is what the server asked for, up to ``max_pause``.
        Without it the pause starts at ``initial_delay`` and doubles per consecutive 429
        up to one window, the documented length of a lockout.
        """
        if retry_after is not None and retry_after >= 0:
            delay = min(retry_after, self.max_pause)
        else:
            delay = self._next_delay
            self._next_delay = min(self._next_delay * 2, self.window)
        now = asyncio.get_running_loop().time()
        # Concurrent 429s share one pause: only what this one adds to it is counted.
        added = now + delay - max(self._resume_at, now)
        if added > 0:
            self.pauses += 1
            self.paused_s += added
        self._resume_at = max(self._resume_at, now + delay)
        return delay

    def succeeded(self) -> None:
        """A request went through: the next 429 starts the backoff from the beginning."""
        self._next_delay = self.initial_delay

    async def __aenter__(self) -> WindowLimiter:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _expire(self, now: float) -> None:
        # A timer may fire a hair before its deadline (the loop's clock resolution, float
        # rounding); counting that as expired avoids spinning on sub-microsecond sleeps.
        done = self._done
        while done and done[0] + self.window <= now + _EPSILON:
            done.popleft()

    async def _wait_release(self) -> None:
        if self._released is None:
            self._released = asyncio.Event()
        await self._released.wait()
