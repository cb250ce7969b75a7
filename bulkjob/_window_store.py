"""Where a limiter's window lives: in this process, or shared by every process of an account.

The throttle belongs to the account, not to a process: three runs on one token each
keeping their own window trip each other's lockout. So the limiter's state (in-flight
slots, completion times, the 429 pause deadline and the backoff step) sits in a
:class:`WindowStore`, chosen by ``throttle_store``:

- ``memory``: this process only (:class:`MemoryStore`), the loop's clock;
- ``local`` (the default): a SQLite file per account in the state directory, shared
  by every process of the user on this host (:mod:`bulkjob._store_local`);
- ``redis://`` / ``rediss://``: the same log in Redis, shared across hosts
  (:mod:`bulkjob._store_redis`).

Every store gives the same guarantee: a slot is granted only while in-flight slots plus
completions inside the window are fewer than ``max_requests``, checked and taken in one
atomic step; a slot counts from when its request's answer came back.

The account key names the shared state: the client id when tokens are minted, else a
SHA-256 of the access token, or ``account`` when set. Only hashes reach a store, a key
or a file name.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import importlib.util
import itertools
import urllib.parse
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ._errors import ConfigError
from ._queue_book import Alive, Book, holding, new_book
from ._settings import REDIS_MISSING, Settings

__all__ = [
    "EPSILON",
    "Holder",
    "MemoryStore",
    "StoreParams",
    "WindowState",
    "WindowStore",
    "account_key",
    "check_store",
    "open_store",
    "opened_store",
]

T = TypeVar("T")
#: A change to the account's queue book (see :mod:`bulkjob._queue_book`): given the book,
#: the store's clock and who is still there, it changes the book and says what it did.
BookChange = Callable[[Book, float, Alive], T]

#: Timers may fire a hair early (clock resolution, float rounding): a completion this
#: close to leaving the window counts as gone, so waits never spin on microseconds.
EPSILON = 1e-6


@dataclass(frozen=True, slots=True)
class StoreParams:
    """What every process on the account agrees to (each checks its own ``max_requests``)."""

    max_requests: int
    #: How long a completed slot stays counted: the window plus its margin.
    window: float
    initial_delay: float
    max_pause: float

    @classmethod
    def of(
        cls,
        max_requests: int,
        per_seconds: float,
        *,
        margin: float,
        initial_delay: float,
        max_pause: float,
    ) -> StoreParams:
        """The numbers a limiter of N per ``per_seconds`` works with: a slot stays counted
        the window plus ``margin`` of it, and no 429 backoff starts above one window."""
        return cls(
            max_requests=max_requests,
            window=per_seconds * (1.0 + margin),
            initial_delay=min(initial_delay, per_seconds),
            max_pause=max_pause,
        )


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds an in-flight slot: enough to tell whether it is still alive."""

    host: str
    pid: int
    #: The process's start time (from /proc where there is one): a reused pid is not it.
    started: str = ""


@dataclass(frozen=True, slots=True)
class WindowState:
    """The window as the store sees it (for ``bulkjob throttle``)."""

    store: str
    account: str
    max_requests: int
    window: float
    #: Completions still inside the window.
    recent: int
    in_flight: int
    holders: tuple[tuple[Holder, int], ...] = ()
    #: Seconds until the shared pause ends (0: none), and since the last 429 (None: none).
    paused_for: float = 0.0
    last_429_ago: float | None = None
    next_delay: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def used(self) -> int:
        """Slots counted against the window right now."""
        return self.recent + self.in_flight


class WindowStore(Protocol):
    """The shared state of one account's window. Every method is one atomic step."""

    name: str
    #: This process's name in the queue book: host, pid and start time.
    holder: str

    async def open(self) -> None:
        """Reach the store and check it, before a run creates its journal or sends
        anything: a store that points nowhere (a closed port, a corrupt or locked file)
        is a :class:`~bulkjob._errors.ConfigError` here, not at the first request.
        Idempotent; the other methods open it on first use all the same."""

    async def acquire(self) -> tuple[str | None, float]:
        """Take a slot: ``(slot id, 0.0)``, or ``(None, seconds)`` to wait before asking
        again (the pause left, the time until the oldest completion leaves the window,
        or a short poll when every slot is in flight)."""

    async def release(self, slot: str, *, reset_backoff: bool) -> None:
        """The slot's answer came back: it counts as a completion from now. With
        ``reset_backoff`` a request went through, so the next 429 starts the backoff anew."""

    async def throttled(self, retry_after: float | None) -> tuple[float, float]:
        """A 429: pause every process of the account. Returns the pause this 429 asks
        for and the seconds it added to the shared pause (0 when one already covered it)."""

    async def state(self) -> WindowState:
        """The window right now."""

    async def register_job(self, job_id: str, digest: str, run: str) -> None:
        """Run ``run`` knows ``job_id`` holds its chunk of ``digest``: it holds no lost
        submit of any other run of the account."""

    async def registered(self, job_ids: Collection[str]) -> dict[str, str]:
        """Which of ``job_ids`` some run of the account registered: job id -> that run."""

    async def queue(self, change: BookChange[T]) -> T:
        """Apply ``change`` to the account's queue book in one atomic step."""

    async def close(self) -> None:
        """Give back what this process holds (its in-flight slots count as completed)."""


_DEFAULT_PORTS = {"http": 80, "https": 443}


def account_key(settings: Settings) -> str:
    """The account's name in a store: a hash, never a secret.

    ``account`` when set; else the client id when tokens are minted; else a SHA-256 of
    the access token. Hashed all the same, so that a file name reveals nothing. The API's
    host is part of it: the same credentials on another server (a sandbox, a staging
    host) are another throttle, another queue, and other job ids.
    """
    if settings.account:
        basis = f"account:{settings.account}"
    elif settings.client_id:
        basis = f"client:{settings.client_id}"
    else:
        basis = f"token:{settings.access_token or ''}"
    server = urllib.parse.urlsplit(settings.base_url)
    port = server.port if server.port not in (None, _DEFAULT_PORTS.get(server.scheme)) else None
    basis += f"\0{server.scheme}://{server.hostname or ''}" + (f":{port}" if port else "")
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def params_of(settings: Settings) -> StoreParams:
    """The window's numbers from the settings."""
    return StoreParams.of(
        settings.max_requests,
        settings.per_seconds,
        margin=settings.window_margin,
        initial_delay=settings.throttle_initial_delay,
        max_pause=settings.retry_after_max,
    )


class MemoryStore:
    """One process's window, on the event loop's clock: ``throttle_store = "memory"``."""

    name = "memory"

    def __init__(self, params: StoreParams, account: str = "") -> None:
        self.params = params
        self.account = account
        self._done: collections.deque[float] = collections.deque()
        self._flying: set[str] = set()
        self._ids = itertools.count(1)
        self._resume_at = 0.0
        self._last_429: float | None = None
        self._next_delay = params.initial_delay
        self._jobs: dict[str, str] = {}
        self._book = new_book()
        #: This process's name in the queue book.
        self.holder = "memory"

    def __repr__(self) -> str:
        return f"<MemoryStore in_flight={len(self._flying)} recent={len(self._done)}>"

    async def open(self) -> None:
        """Nothing to reach: the window is this process's."""

    async def acquire(self) -> tuple[str | None, float]:
        now = asyncio.get_running_loop().time()
        if now + EPSILON < self._resume_at:
            return None, self._resume_at - now
        window, done = self.params.window, self._done
        while done and done[0] + window <= now + EPSILON:
            done.popleft()
        if len(self._flying) + len(done) < self.params.max_requests:
            slot = str(next(self._ids))
            self._flying.add(slot)
            return slot, 0.0
        if done:
            # The oldest completion leaves the window then; a release frees nothing
            # sooner, since an in-flight slot re-enters the log as a completion.
            return None, done[0] + window - now
        return None, float("inf")  # every slot in flight: only a release changes that

    async def release(self, slot: str, *, reset_backoff: bool) -> None:
        if slot not in self._flying:
            raise RuntimeError(f"release of a slot not held: {slot}")
        self._flying.discard(slot)
        self._done.append(asyncio.get_running_loop().time())
        if reset_backoff:
            self._next_delay = self.params.initial_delay

    async def throttled(self, retry_after: float | None) -> tuple[float, float]:
        now = asyncio.get_running_loop().time()
        delay, self._next_delay = next_pause(self.params, self._next_delay, retry_after)
        added = max(now + delay - max(self._resume_at, now), 0.0)
        self._resume_at = max(self._resume_at, now + delay)
        self._last_429 = now
        return delay, added

    async def state(self) -> WindowState:
        now = asyncio.get_running_loop().time()
        recent = sum(1 for t in self._done if t + self.params.window > now + EPSILON)
        return WindowState(
            store=self.name,
            account=self.account,
            max_requests=self.params.max_requests,
            window=self.params.window,
            recent=recent,
            in_flight=len(self._flying),
            paused_for=max(self._resume_at - now, 0.0),
            last_429_ago=None if self._last_429 is None else now - self._last_429,
            next_delay=self._next_delay,
        )

    async def register_job(self, job_id: str, digest: str, run: str) -> None:
        self._jobs[job_id] = run

    async def registered(self, job_ids: Collection[str]) -> dict[str, str]:
        return {job_id: self._jobs[job_id] for job_id in job_ids if job_id in self._jobs}

    async def queue(self, change: BookChange[T]) -> T:
        return change(self._book, asyncio.get_running_loop().time(), lambda _: True)

    async def close(self) -> None:
        for slot in list(self._flying):
            await self.release(slot, reset_backoff=False)


def next_pause(
    params: StoreParams, next_delay: float, retry_after: float | None
) -> tuple[float, float]:
    """(this 429's pause, the backoff step after it).

    With Retry-After the pause is what the server asked for, up to ``max_pause``.
    Without it the pause is the backoff step, which doubles per 429 up to one window,
    the documented length of a lockout.
    """
    if retry_after is not None and retry_after >= 0:
        return min(retry_after, params.max_pause), next_delay
    return next_delay, min(next_delay * 2, params.window)


def open_store(settings: Settings) -> WindowStore:
    """The store ``settings.throttle_store`` names, for the settings' account."""
    key = account_key(settings)
    params = params_of(settings)
    spec = settings.throttle_store
    if spec == "memory":
        return MemoryStore(params, key)
    if spec == "local":
        from ._store_local import LocalStore

        return LocalStore(params, key, settings.resolved_state_dir)
    if spec.startswith(("redis://", "rediss://")):
        if importlib.util.find_spec("redis") is None:  # Settings checks it too
            raise ConfigError(REDIS_MISSING)
        from ._store_redis import RedisStore

        return RedisStore(params, key, spec, lease=settings.slot_lease)
    raise ConfigError(f"throttle_store: unknown store {spec.split(':', 1)[0]!r}")


async def opened_store(settings: Settings) -> WindowStore:
    """:func:`open_store`, reached and checked (:meth:`WindowStore.open`): what a run or a
    command sets up before its journal or its first request."""
    store = open_store(settings)
    try:
        await store.open()
    except BaseException:
        await store.close()
        raise
    return store


async def check_store(settings: Settings) -> None:
    """Reach and check the store ``settings.throttle_store`` names, then let it go: the
    CLI's probe before it creates a journal (its run opens the store again in its loop)."""
    store = await opened_store(settings)
    await store.close()


async def window_state(settings: Settings) -> WindowState:
    """The account's window as ``settings.throttle_store`` sees it; nothing is sent."""
    store = open_store(settings)
    try:
        state = await store.state()
        queue = await store.queue(_queue_summary)
    finally:
        await store.close()
    return dataclasses.replace(state, extra={**state.extra, "queue": queue})


def _queue_summary(book: Book, now: float, alive: Alive) -> dict[str, object]:
    """The queue book for ``bulkjob throttle``: the limit, the places and who holds them."""
    holders = holding(book, alive)
    return {
        "limit": book["limit"],
        "limit_source": book["source"],
        "places": len(book["places"]),
        "holders": {
            (h.replace("|", " pid ", 1).rsplit("|", 1)[0] or "orphans"): n
            for h, n in sorted(holders.items())
        },
        "runs_waiting": len(book["waiters"]),
        "hold_s": round(max(book.get("hold_until", 0.0) - now, 0.0), 3),
    }


def state_dict(state: WindowState) -> dict[str, object]:
    """``state`` as plain data (``bulkjob throttle --json``)."""
    return {
        "store": state.store,
        "account": state.account,
        "max_requests": state.max_requests,
        "window_s": round(state.window, 6),
        "used": state.used,
        "recent": state.recent,
        "in_flight": state.in_flight,
        "holders": [{"host": h.host, "pid": h.pid, "slots": n} for h, n in state.holders],
        "paused_for_s": round(state.paused_for, 3),
        "last_429_ago_s": None if state.last_429_ago is None else round(state.last_429_ago, 3),
        "next_backoff_s": round(state.next_delay, 3),
        **state.extra,
    }


def render_state(state: WindowState) -> str:
    """A few lines for a person (``bulkjob throttle``)."""
    lines = [
        f"store: {state.store}" + (f" ({state.extra['path']})" if "path" in state.extra else ""),
        f"account: {state.account}",
        f"window: {state.used:,} of {state.max_requests:,} requests counted in the last "
        f"{state.window:g}s ({state.recent:,} answered, {state.in_flight:,} in flight)",
    ]
    for holder, slots in state.holders:
        lines.append(f"  in flight: {slots:,} slot(s) held by pid {holder.pid} on {holder.host}")
    if state.paused_for > 0:
        lines.append(f"paused: {state.paused_for:.1f}s more (after a 429)")
    else:
        lines.append("paused: no")
    last = "never" if state.last_429_ago is None else f"{state.last_429_ago:.1f}s ago"
    lines.append(f"last 429: {last}; next backoff step {state.next_delay:g}s")
    queue = state.extra.get("queue")
    if isinstance(queue, dict):
        limit = queue["limit"] if queue["limit"] is not None else "not known yet"
        source = f" ({queue['limit_source']})" if queue["limit_source"] else ""
        lines.append(
            f"job queue: {queue['places']} place(s) taken, limit {limit}{source}, "
            f"{queue['runs_waiting']} run(s) waiting"
        )
        for holder, places in queue["holders"].items():
            lines.append(f"  {places} place(s): {holder}")
    return "\n".join(lines)
