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

The log, the pause and the backoff step live in a :class:`~bulkjob._window_store.WindowStore`:
this process's memory, or a store every process of the account shares, so that several
runs on one account keep one window between them. The pacer stays per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from types import TracebackType

from aiolimiter import AsyncLimiter

from ._logging import get_logger
from ._window_store import EPSILON, MemoryStore, StoreParams, WindowStore

__all__ = ["WindowLimiter"]

log = get_logger()

_EPSILON = EPSILON
#: With every slot in flight, a shared store is asked again this often (a share of the
#: spacing ``per / N``, bounded): a release by another process wakes no one here.
_POLL_SHARE, _POLL_MIN, _POLL_MAX = 0.5, 0.002, 0.05


class WindowLimiter:
    """At most ``max_requests`` request slots in any sliding window of ``per_seconds``."""

    __slots__ = (
        "_asking",
        "_held",
        "_in_flight",
        "_pacer",
        "_poll",
        "_released",
        "_reset_backoff",
        "max_requests",
        "paused_s",
        "pauses",
        "per_seconds",
        "store",
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
        store: WindowStore | None = None,
    ) -> None:
        if max_requests < 1:
            raise ValueError(f"max_requests: must be at least 1, got {max_requests}")
        if per_seconds <= 0:
            raise ValueError(f"per_seconds: must be positive, got {per_seconds}")
        self.max_requests = max_requests
        self.per_seconds = per_seconds
        # Without a store of its own, the window (and its margin, backoff and longest
        # pause) is this process's, in memory; a given store carries its own numbers.
        self.store: WindowStore = store or MemoryStore(
            StoreParams.of(
                max_requests,
                per_seconds,
                margin=margin,
                initial_delay=initial_delay,
                max_pause=max_pause,
            )
        )
        self._in_flight = 0
        #: One task of this process asks the store at a time, the others queue behind it
        #: (first come, first served): a full window then costs one ask per process per
        #: slot that frees, not one per waiting task (all woken for the same slot).
        self._asking = asyncio.Lock()
        #: Pauses after 429s seen by this process, and the seconds they added to the
        #: account's pause (overlaps counted once).
        self.pauses = 0
        self.paused_s = 0.0
        self._released: asyncio.Event | None = None
        self._reset_backoff = False
        self._held: dict[asyncio.Task[object] | None, list[str]] = {}
        spacing = per_seconds / max_requests
        self._poll = min(max(spacing * _POLL_SHARE, _POLL_MIN), _POLL_MAX)
        self._pacer = AsyncLimiter(1, spacing) if pace else None

    def __repr__(self) -> str:
        return (
            f"<WindowLimiter {self.max_requests}/{self.per_seconds:g}s "
            f"in_flight={self._in_flight} store={self.store.name}>"
        )

    @property
    def in_flight(self) -> int:
        """Requests of this process holding a slot right now."""
        return self._in_flight

    async def acquire(self) -> str:
        """Wait for a slot and return it; the caller must :meth:`release` it once the
        answer is back."""
        self._in_flight += 1
        try:
            if self._pacer is not None:
                await self._pacer.acquire()
            async with self._asking:
                return await self._ask()
        except BaseException:
            self._in_flight -= 1
            raise

    async def _ask(self) -> str:
        """Ask the store until it gives a slot (the caller is this process's one asker)."""
        while True:
            slot, wait = await self.store.acquire()
            if slot is not None:
                return slot
            if not math.isinf(wait):
                await asyncio.sleep(wait)  # a pause, or the oldest completion leaving
            elif self.store.name == "memory":
                await self._wait_release()  # every slot in flight here: a release frees
            else:
                # Every slot in flight, some maybe in other processes, whose releases are
                # not heard here: ask the store again soon (or at a release here).
                await self._wait_release(self._poll)

    async def release(self, slot: str) -> None:
        """Return a slot: its window starts now, when the answer (or failure) came back."""
        reset, self._reset_backoff = self._reset_backoff, False
        try:
            await self.store.release(slot, reset_backoff=reset)
        except Exception as exc:
            # The slot stays counted in the store (a lease lapses, a dead holder is reaped):
            # safe for the window. Raising here would make an accepted submit look unsent.
            log.warning("throttle.release_failed", store=self.store.name, error=str(exc))
        finally:
            self._in_flight -= 1
            if self._released is not None:
                self._released.set()
                self._released = None

    async def throttled(self, retry_after: float | None = None) -> float:
        """A 429 arrived: pause every worker of every process on the account; returns the
        pause in seconds (see the module docstring)."""
        delay, added = await self.store.throttled(retry_after)
        if added > 0:
            self.pauses += 1
            self.paused_s += added
        return delay

    def succeeded(self) -> None:
        """A request went through: the next 429 starts the backoff from the beginning
        (the store hears it with this process's next release)."""
        self._reset_backoff = True

    async def __aenter__(self) -> WindowLimiter:
        slot = await self.acquire()
        self._held.setdefault(asyncio.current_task(), []).append(slot)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        slots = self._held.get(task)
        if not slots:
            raise RuntimeError("release() without a matching acquire()")
        slot = slots.pop()
        if not slots:
            del self._held[task]
        await self.release(slot)

    async def _wait_release(self, at_most: float | None = None) -> None:
        """Until a slot of this process comes back (or ``at_most`` seconds)."""
        if self._released is None:
            self._released = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), at_most)
