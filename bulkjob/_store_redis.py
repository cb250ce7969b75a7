"""``throttle_store = "redis://…"``: the account's window in Redis, shared across hosts.

Every acquire, release and 429 is one Lua script, so the check for room and the taking
of a slot are one atomic step for every process on every host that points at the same
Redis. Times are Redis's own clock (``TIME`` inside the scripts): the hosts' clocks
never enter, however far apart they drift.

Keys, all under ``bulkjob:{<account hash>}:`` (the hash tag keeps them in one cluster
slot, so the scripts may touch them together):

- ``done``: a sorted set of completed slots, scored by their completion time;
- ``flying``: a sorted set of in-flight slots, scored by their lease's expiry; a member
  is ``seq|host|pid|started``, so it names its holder;
- ``meta``: a hash of the pause deadline (``resume_at``), the backoff step
  (``next_delay``), the last 429 (``last_429``), the longest window any process of the
  account uses (``keep``) and the slot counter (``seq``).

Every script sets the three keys to expire a few windows (and any pause) after the last
use, so an idle account leaves nothing behind.

**Dead holders.** A host cannot tell whether a process on another host still runs, so an
in-flight slot is a lease (``slot_lease``, 30 s by default). A live holder renews its
leases every third of the lease (a task of this store, started with the first slot,
stopped by :meth:`RedisStore.close`). A lease that lapsed counts as completed at the
moment it lapsed: the acquire script moves it into ``done`` with its expiry as score.
The holder was alive at its last renewal and its request reached the server before it
died, so that moment is never earlier than the request's arrival and the window never
overfills. What a dead holder costs: each of its in-flight slots (at most its
``concurrency``) stays counted until its lease lapses, at most ``slot_lease`` after the
death, and then for one more window as a completion; a normal completion is counted for
the window alone. So the account loses at most ``concurrency`` slots for ``slot_lease``
seconds more than a clean exit would, and only while the window is full: with room left
in it nobody waits at all. With the defaults (1000 per 300 s, 8 at once, 30 s) that is 8
of 1000 slots coming back 30 s late.

A live holder that cannot renew for two thirds of a lease (Redis out of reach, a stalled
host) loses its leases the same way: each is then counted as a completion from its
lapse, and its late release counts it again from its real answer. The slot stays counted
throughout unless the stall outlasts the lease plus a whole window.

**Failures.** Nothing answering at the URL on the first contact (:meth:`RedisStore.open`,
before a run creates its journal) is a :class:`~bulkjob._errors.ConfigError` (exit 2):
the setting points nowhere, and nothing was sent. A connection lost later is a
:class:`~bulkjob._errors.TransportError` (exit 7) once the client's own retries are
spent, as the API's own transport failures are. A release never raises: its answer is
already in, and an error there would make an accepted submit look unsent; a release
that fails is logged and its lease left to lapse, which counts it later than it really
completed (safe, at the cost of that lease).

No secret reaches Redis or an error: the account is a hash, the URL's password is
registered for redaction and errors name the server as ``host:port`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from ._errors import ConfigError, TransportError
from ._logging import get_logger, redact, register_secret
from ._queue_book import Book, load
from ._store_local import holder_key, process_start
from ._window_store import EPSILON, BookChange, Holder, StoreParams, WindowState

__all__ = ["KEY_PREFIX", "RedisStore", "keys_of"]

log = get_logger(__name__)

KEY_PREFIX = "bulkjob"
#: Idle keys expire this many windows (plus a lease, plus any pause) after the last use.
_TTL_WINDOWS = 3
#: A live holder renews its leases this many times per lease.
_RENEWALS_PER_LEASE = 3
#: The queue book outlives its last writer this long (seconds): open jobs run for hours.
_BOOK_KEPT = 2 * 86_400
T = TypeVar("T")
#: How long the first contact, and any later command, waits for Redis.
_CONNECT_TIMEOUT = 5.0
_COMMAND_TIMEOUT = 10.0

# Shared by the scripts: Redis's clock as float seconds, scores with microseconds (Lua's
# tostring keeps 14 digits, too few for a Unix time with them), and the keys' expiry.
_PRELUDE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local function f(x) return string.format('%.6f', x) end
local flying, done, meta = KEYS[1], KEYS[2], KEYS[3]
local function expire_all(keep, lease)
  local resume = tonumber(redis.call('HGET', meta, 'resume_at') or '0')
  local ttl = math.max(keep * %(windows)d + lease, resume - now + keep)
  ttl = math.ceil(ttl) + 1
  redis.call('EXPIRE', flying, ttl)
  redis.call('EXPIRE', done, ttl)
  redis.call('EXPIRE', meta, ttl)
end
""".replace("%(windows)d", str(_TTL_WINDOWS))

# ARGV: window, max_requests, lease, holder ("host|pid|started"), epsilon.
# Returns {slot or '', wait}: '' with the seconds to wait, or 'inf' when every slot is
# in flight.
_ACQUIRE = (
    _PRELUDE
    + """
local window, max_requests = tonumber(ARGV[1]), tonumber(ARGV[2])
local lease, holder, eps = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local keep = math.max(window, tonumber(redis.call('HGET', meta, 'keep') or '0'))
redis.call('HSET', meta, 'keep', f(keep))
local resume = tonumber(redis.call('HGET', meta, 'resume_at') or '0')
if now + eps < resume then
  expire_all(keep, lease)
  return {'', f(resume - now)}
end
-- Lapsed leases: completed when they lapsed.
local lapsed = redis.call('ZRANGEBYSCORE', flying, '-inf', f(now), 'WITHSCORES')
for i = 1, #lapsed, 2 do
  redis.call('ZADD', done, lapsed[i + 1], lapsed[i])
end
if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', flying, '-inf', f(now)) end
redis.call('ZREMRANGEBYSCORE', done, '-inf', f(now - keep))
local since = '(' .. f(now + eps - window)
local recent = redis.call('ZCOUNT', done, since, '+inf')
local in_flight = redis.call('ZCARD', flying)
local answer
if recent + in_flight < max_requests then
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local slot = seq .. '|' .. holder
  redis.call('ZADD', flying, f(now + lease), slot)
  answer = {slot, '0'}
else
  local oldest = redis.call('ZRANGEBYSCORE', done, since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #oldest == 0 then
    answer = {'', 'inf'}
  else
    answer = {'', f(math.max(tonumber(oldest[2]) + window - now, eps))}
  end
end
expire_all(keep, lease)
return answer
"""
)

# ARGV: initial_delay or '' (reset the backoff step to it), lease, then the slots.
_RELEASE = (
    _PRELUDE
    + """
local reset, lease = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call('ZREM', flying, ARGV[i])
  redis.call('ZADD', done, f(now), ARGV[i])
end
if reset ~= '' then redis.call('HSET', meta, 'next_delay', reset) end
expire_all(tonumber(redis.call('HGET', meta, 'keep') or '0'), lease)
return 1
"""
)

# ARGV: lease, then the slots. Only slots still in flight are renewed: a lapsed one is
# already counted as completed (its release moves that to its real time).
_RENEW = (
    _PRELUDE
    + """
local lease = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', flying, 'XX', 'CH', f(now + lease), ARGV[i])
end
expire_all(tonumber(redis.call('HGET', meta, 'keep') or '0'), lease)
return renewed
"""
)

# ARGV: retry_after or '', max_pause, initial_delay, window, lease.
# Returns {delay, added}; the step logic is next_pause's (bulkjob._window_store).
_THROTTLED = (
    _PRELUDE
    + """
local retry_after, max_pause = ARGV[1], tonumber(ARGV[2])
local initial, window, lease = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local step = tonumber(redis.call('HGET', meta, 'next_delay') or ARGV[3])
local delay
if retry_after ~= '' and tonumber(retry_after) >= 0 then
  delay = math.min(tonumber(retry_after), max_pause)
else
  delay = step
  step = math.min(step * 2, window)
end
local resume = tonumber(redis.call('HGET', meta, 'resume_at') or '0')
local added = math.max(now + delay - math.max(resume, now), 0)
redis.call('HSET', meta, 'resume_at', f(math.max(resume, now + delay)),
  'next_delay', f(step), 'last_429', f(now))
local keep = math.max(window, tonumber(redis.call('HGET', meta, 'keep') or '0'))
redis.call('HSET', meta, 'keep', f(keep))
expire_all(keep, lease)
return {f(delay), f(added)}
"""
)

# ARGV: window. Returns {now, recent, lapsed leases still in the window, meta fields,
# then the in-flight slots}.
_STATE = (
    _PRELUDE
    + """
local window = tonumber(ARGV[1])
local recent = redis.call('ZCOUNT', done, '(' .. f(now - window), '+inf')
local lapsed = redis.call('ZCOUNT', flying, '(' .. f(now - window), f(now))
local live = redis.call('ZRANGEBYSCORE', flying, '(' .. f(now), '+inf')
local m = redis.call('HMGET', meta, 'resume_at', 'last_429', 'next_delay')
local answer = {f(now), recent, lapsed, m[1] or '', m[2] or '', m[3] or ''}
for i = 1, #live do answer[#answer + 1] = live[i] end
return answer
"""
)


#: Jobs an answer named, kept this long (seconds): longer than any proof waits.
_JOBS_KEPT = 30 * 86_400
_REGISTER = """
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[4], tonumber(ARGV[3]))
return 1
"""
# The queue book and Redis's time, read at one moment (KEYS[5] is the book).
_PEEK = """
local t = redis.call('TIME')
return {redis.call('GET', KEYS[5]) or '', t[1], t[2]}
"""
_LOOKUP = """
local out = {}
for i, job in ipairs(ARGV) do out[i] = redis.call('HGET', KEYS[4], job) or '' end
return out
"""


def keys_of(account: str) -> list[str]:
    """The account's keys: in-flight slots, completions, and the pause and backoff."""
    names = ("flying", "done", "meta", "jobs", "queue")
    return [f"{KEY_PREFIX}:{{{account}}}:{name}" for name in names]


def server_of(url: str) -> str:
    """``host:port/db`` of a redis URL: what errors and ``bulkjob throttle`` show."""
    parts = urllib.parse.urlsplit(url)
    db = parts.path.strip("/") or "0"
    return f"{parts.hostname}:{parts.port or 6379}/{db}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """The account's window in the Redis at ``url`` (see the module docstring)."""

    name = "redis"

    def __init__(self, params: StoreParams, account: str, url: str, *, lease: float) -> None:
        self.params = params
        self.account = account
        self.lease = lease
        self.server = server_of(url)
        parts = urllib.parse.urlsplit(url)
        register_secret(parts.password)
        if parts.password:
            register_secret(urllib.parse.unquote(parts.password))
        self.me = Holder(socket.gethostname(), os.getpid(), process_start(os.getpid()))
        self.holder = holder_key(self.me)
        self._keys = keys_of(account)
        self._client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=_COMMAND_TIMEOUT,
        )
        self._acquire = self._client.register_script(_ACQUIRE)
        self._release = self._client.register_script(_RELEASE)
        self._renew = self._client.register_script(_RENEW)
        self._throttled = self._client.register_script(_THROTTLED)
        self._state = self._client.register_script(_STATE)
        self._register = self._client.register_script(_REGISTER)
        self._lookup = self._client.register_script(_LOOKUP)
        self._peek = self._client.register_script(_PEEK)
        self._scripts = (
            self._acquire,
            self._release,
            self._renew,
            self._throttled,
            self._state,
            self._register,
            self._lookup,
            self._peek,
        )
        self._reached = False
        self._closed = False
        self._mine: set[str] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._in_queue = False  # whether this process has a say in the queue book

    def __repr__(self) -> str:
        return f"<RedisStore {self.server} in_flight={len(self._mine)}>"

    # -- the protocol --------------------------------------------------------------------------

    async def open(self) -> None:
        """PING, then load the scripts: a wrong port or host, refused credentials, or a
        server that will not run Lua is a ConfigError before the run writes anything."""
        if self._reached:
            return
        await self._call(self._client.ping)
        for script in self._scripts:
            await self._call(functools.partial(self._client.script_load, script.script))

    async def acquire(self) -> tuple[str | None, float]:
        p = self.params
        slot, wait = await self._run(
            self._acquire, p.window, p.max_requests, self.lease, self.holder, EPSILON
        )
        if slot:
            self._mine.add(_text(slot))
            self._start_renewer()
            return _text(slot), 0.0
        return None, float(_text(wait))

    async def release(self, slot: str, *, reset_backoff: bool) -> None:
        if self._closed:
            return  # close() counted it as completed already
        self._mine.discard(slot)  # renewed no more: if the release fails, its lease lapses
        reset = repr(self.params.initial_delay) if reset_backoff else ""
        try:
            await self._run(self._release, reset, self.lease, slot)
        except (ConfigError, TransportError) as exc:
            log.warning("throttle_store.release_failed", store=self.server, error=str(exc))

    async def throttled(self, retry_after: float | None) -> tuple[float, float]:
        p = self.params
        asked = "" if retry_after is None else repr(float(retry_after))
        delay, added = await self._run(
            self._throttled, asked, p.max_pause, p.initial_delay, p.window, self.lease
        )
        return float(_text(delay)), float(_text(added))

    async def state(self) -> WindowState:
        answer = await self._run(self._state, self.params.window)
        now, recent, lapsed = float(_text(answer[0])), int(answer[1]), int(answer[2])
        resume_at, last_429, next_delay = (_text(v) for v in answer[3:6])
        counts: dict[Holder, int] = {}
        for member in answer[6:]:
            _, _, who = _text(member).partition("|")
            host, pid, started = who.rsplit("|", 2)
            holder = Holder(host, int(pid), started)
            counts[holder] = counts.get(holder, 0) + 1
        holders = tuple(sorted(counts.items(), key=lambda hc: (hc[0].host, hc[0].pid)))
        return WindowState(
            store=self.name,
            account=self.account,
            max_requests=self.params.max_requests,
            window=self.params.window,
            recent=recent + lapsed,
            in_flight=sum(counts.values()),
            holders=holders,
            paused_for=max(float(resume_at or 0) - now, 0.0),
            last_429_ago=now - float(last_429) if last_429 else None,
            next_delay=float(next_delay) if next_delay else self.params.initial_delay,
            extra={"server": self.server, "lease": self.lease},
        )

    async def register_job(self, job_id: str, digest: str, run: str) -> None:
        await self._run(self._register, job_id, f"{run} {digest}", int(_JOBS_KEPT))

    async def registered(self, job_ids: Collection[str]) -> dict[str, str]:
        ids = list(job_ids)
        if not ids:
            return {}
        answer = await self._run(self._lookup, *ids)
        return {
            job_id: _text(value).split(" ", 1)[0]
            for job_id, value in zip(ids, answer, strict=True)
            if value
        }

    async def queue(self, change: BookChange[T]) -> T:
        """``change`` made to the queue book in one atomic step, on Redis's clock. A holder
        is there while it keeps its lease (its entry in the book's ``seen``).

        First one read (the book and the time, one script): a change that leaves the book
        as it was (an ask granted while no limit is known, a look at who waits) is answered
        from it, a read at that moment. Only a change that writes goes on to a
        read-change-write under WATCH, retried when another process wrote in between: the
        common ask of a run that meets no limit costs one round trip and meets no conflict.
        """
        if self._closed:
            raise RuntimeError("the throttle store is closed")
        raw, seconds, micros = await self._run(self._peek)
        book = load(raw)
        now = int(seconds) + int(micros) / 1e6
        alive = self._alive(book, now)
        before = json.dumps(book)
        answer = change(book, now, alive)
        if json.dumps(book) == before and not self._must_renew(book, now):
            self._in_queue = self._in_queue or self.holder in book["seen"]
            return answer
        return await self._write_queue(change)

    def _alive(self, book: Book, now: float) -> Callable[[str], bool]:
        """Whether a holder is there: heard from within a lease (the book's ``seen``)."""
        if not isinstance(book.get("seen"), dict):
            book["seen"] = {}
        seen: dict[str, float] = book["seen"]
        return lambda holder: holder in seen and now - seen[holder] <= self.lease

    def _must_renew(self, book: Book, now: float) -> bool:
        """Whether this process's entry in ``seen`` is due: it holds places (or had an
        entry) and was last heard from a renewal period ago or more."""
        heard: float | None = book["seen"].get(self.holder)
        if heard is None:
            return any(p["holder"] == self.holder for p in book["places"].values())
        return now - heard >= self.lease / _RENEWALS_PER_LEASE

    async def _write_queue(self, change: BookChange[T]) -> T:
        """The read-change-write under WATCH (see :meth:`queue`)."""
        key = self._keys[4]
        with self._errors():
            async with self._client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.get(key)
                        seconds, micros = await pipe.time()
                        now = seconds + micros / 1e6
                        book: Book = load(raw)
                        alive = self._alive(book, now)
                        seen: dict[str, float] = book["seen"]
                        for holder in [h for h in seen if not alive(h)]:
                            del seen[holder]
                        seen[self.holder] = now
                        answer = change(book, now, alive)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.set(key, json.dumps(book), ex=_BOOK_KEPT)
                        await pipe.execute()
                    except redis_errors.WatchError:
                        continue
                    self._in_queue = True
                    self._start_renewer()
                    return answer

    async def close(self) -> None:
        if self._closed:
            return
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        try:
            if self._mine:
                mine, self._mine = sorted(self._mine), set()
                await self._run(self._release, "", self.lease, *mine)
        except (ConfigError, TransportError) as exc:
            log.warning("throttle_store.close_failed", store=self.server, error=str(exc))
        finally:
            self._closed = True
            await self._client.aclose()

    # -- plumbing ------------------------------------------------------------------------------

    async def _run(self, script: Any, *args: object) -> Any:
        """One script (loaded on its first use if :meth:`open` did not)."""
        return await self._call(lambda: script(keys=self._keys, args=list(args)))

    async def _call(self, command: Callable[[], Awaitable[Any]]) -> Any:
        """One command, its Redis errors as bulkjob's (see the module docstring)."""
        if self._closed:
            raise RuntimeError("the throttle store is closed")
        with self._errors():
            return await command()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Redis errors as bulkjob's (see the module docstring)."""
        try:
            yield
        except redis_errors.AuthenticationError as exc:
            raise ConfigError(
                f"throttle_store: Redis at {self.server} refused the credentials: "
                f"{redact(str(exc))}"
            ) from None
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
            reason = redact(str(exc)) or type(exc).__name__
            if not self._reached:
                raise ConfigError(
                    f"throttle_store: cannot reach Redis at {self.server}: {reason} "
                    "(--throttle-store local keeps the window on this host)"
                ) from None
            raise TransportError(f"throttle store: lost Redis at {self.server}: {reason}") from None
        except redis_errors.RedisError as exc:
            raise ConfigError(
                f"throttle_store: Redis at {self.server} answered: {redact(str(exc))}"
            ) from None
        self._reached = True

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(
                self._renew_forever(), name="bulkjob-lease-renewer"
            )

    async def _renew_forever(self) -> None:
        """Renew this process's leases every third of a lease while it holds any."""
        every = self.lease / _RENEWALS_PER_LEASE
        while True:
            await asyncio.sleep(every)
            try:
                if self._in_queue:  # this process's places in the queue book live on
                    await self._write_queue(lambda book, now, alive: None)
                if not self._mine:
                    continue
                await self._run(self._renew, self.lease, *sorted(self._mine))
            except (ConfigError, TransportError) as exc:
                # Retried at the next turn; leases left unrenewed lapse, which is safe.
                log.warning("throttle_store.renew_failed", store=self.server, error=str(exc))
