"""The account's job queue as one run meets it: keep it exactly full, and see finishes soon.

A real backfill is rarely limited by the request throttle: it is limited by how many jobs the
account may run at once (the public error reads "2 jobs are already running. Please try again
once the previous jobs are finished."), while each job takes minutes to hours. So the speed
of a run is how well it keeps that queue full. :class:`JobQueue` does three things:

- **The limit.** ``max_running_jobs`` when set. Else it is learned at the first queue-full
  400: the number in its message when there is one (the account's limit, other clients'
  jobs included), else the run's open jobs at that moment. A later queue-full lowers it to
  the run's open jobs then (another client holds slots), and once a poll interval has
  passed without one it creeps back up by one per finished job, never above the account's
  known limit.
- **Room.** A send takes a place (:meth:`JobQueue.place`) before it leaves: only while the
  run's open jobs, sends in flight and unproven lost answers are fewer than the limit.
  Submits the server would refuse are not sent; after a queue-full the next try also waits
  a backoff, so other clients' jobs cannot cause a storm of 400s.
- **Finishes.** While sends wait for room, the run's open jobs are polled, each on its own
  schedule: sparse while young, dense around the finish predicted from the durations seen
  so far, backing off for jobs that run long. A webhook (see :mod:`bulkjob._webhook`)
  makes a job be looked at at once; polling stays the fallback, since webhooks get lost.
  Polls go through the same throttle as everything else: they only run while sends wait,
  so they never hold a submit back.

The places themselves, and the limit as learned, live in the account's queue book in the
throttle store (:mod:`bulkjob._queue_book`), shared by every bulkjob run of the account:
the book grants a place only while the account's jobs are fewer than the limit, and among
waiting runs to the one holding the fewest. The run keeps its own view (its open jobs and
when to poll them, the hold after a queue-full) and tells the book what became of each
place. While waiting it asks the book again every :data:`~bulkjob._queue_book.QUEUE_POLL`
(a place freed by another run), and at once when one of its own is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from . import _queue_book as book
from ._client import ApiClient
from ._errors import BulkJobError, QueueFullError, RequestError
from ._evidence import FINAL_STATUSES
from ._journal import Journal
from ._logging import get_logger
from ._report import StopSignal
from ._settings import Settings
from ._window_store import BookChange, WindowStore

__all__ = ["JobQueue", "Place"]

log = get_logger()
T = TypeVar("T")
_LIMIT_IN_MESSAGE = re.compile(r"(\d+)\s+jobs?\s+(?:are\s+|is\s+)?already\s+running", re.I)
#: Polls of a job of unknown length come at this fraction of its age (a geometric series).
_YOUNG = 0.3
#: Around the predicted finish, polls come this often (a share of the predicted duration)...
_DENSE = 0.02
#: ...from this share of it to that one; then back off as for a job of unknown length.
_DENSE_FROM, _DENSE_TO = 0.95, 1.2
_MIN_POLL = 0.05  # seconds: no job is looked at more often
#: A probe above a learned limit that meets a queue-full doubles the quiet time the next
#: probe waits for, up to this many poll intervals: a stable account pays O(log) refusals.
_PROBE_BACKOFF_CAP = 64
#: Webhook calls naming no readable job make every open job due at most this often
#: (a share of the poll interval): a stream of odd calls cannot become a stream of polls.
_ANONYMOUS_GAP = 0.25
#: Seconds between looks, by a run with open jobs and no send waiting, whether another run
#: of the account waits for a place.
_WATCH_EVERY = 1.0


@dataclass(slots=True)
class _Open:
    seq: int
    since: float  # monotonic: accepted
    due: float  # monotonic: next look
    looks: int = 0
    #: Its place in the account's queue book (None until the book has answered).
    place: str | None = None


class Place:
    """A send's place in the queue: given back unless the send became a job (or may have)."""

    __slots__ = ("_queue", "id", "kept", "since")

    def __init__(self, queue: JobQueue, place_id: str | None = None) -> None:
        self._queue = queue
        #: The place in the account's queue book (None: granted without one, at a stop).
        self.id = place_id
        self.kept = False
        self.since = time.monotonic()

    def job(self, job_id: str, seq: int) -> None:
        """The send became ``job_id``: the place is that job's until it is final."""
        self.kept = True
        self._queue.opened(job_id, seq, place=self.id)

    def unproven(self, seq: int) -> None:
        """The answer was lost: the place stays taken until a proof says what it is."""
        self.kept = True
        self._queue.unproven[seq] = self.id


class JobQueue:
    """The run's view of the account's job queue (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        client: ApiClient,
        journal: Journal | None,
        stop: StopSignal,
        *,
        run: str = "",
        store: WindowStore | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._journal = journal
        self._stop = stop
        #: The account's queue book: in the throttle store (None: a private one).
        self._store = store if store is not None else (client.limiter.store if client else None)
        self._book = book.new_book()
        self._run = run
        self._holder = self._store.holder if self._store is not None else "memory"
        #: Book changes not yet made (sync callers: a job opened, a place settled).
        self._to_book: list[Callable[[], Awaitable[None]]] = []
        self._turn = asyncio.Lock()  # one send of the run asks the book at a time
        self._writing = asyncio.Lock()
        #: Places the account's other runs hold, as of the last answer of the book.
        self._others = 0
        #: Jobs nobody polls (their holder is gone): polled while sends wait, freed when final.
        self._orphans: dict[str, _Open] = {}
        #: Whether another run waits for a place (this run's open jobs are then polled even
        #: with no send of its own waiting), and the task that looks.
        self._wanted = False
        self._watcher: asyncio.Task[None] | None = None
        #: How many jobs this run may have queued or running; None until known.
        self.limit: int | None = settings.max_running_jobs
        #: The account's own limit, when a setting or a queue-full message gave it.
        self.account_limit: int | None = settings.max_running_jobs
        #: Where the limit came from: "setting", "message", "open jobs", or None.
        self.source: str | None = "setting" if settings.max_running_jobs else None
        self._open: dict[str, _Open] = {}
        #: Lost answers that may hold a place: seq -> its place in the book.
        self.unproven: dict[int, str | None] = {}
        self._sending = 0  # places taken by sends in flight
        self._waiting = 0  # sends waiting for a place
        self._durations: list[float] = []
        self._changed = asyncio.Event()
        self._hold_until = 0.0  # monotonic: after a queue-full, no send before this
        self._backoff = 0.0
        self._last_full = -float("inf")
        self._poller: asyncio.Task[None] | None = None
        #: Quiet time (no queue-full) before the limit may grow; see _creep_up.
        self._quiet = settings.queue_poll_interval
        self._probing = False  # the limit was last raised above what was learned
        self._anonymous_at = -float("inf")
        self._raised_at = -float("inf")
        stop.listeners.append(self._changed.set)
        self.queue_full = 0
        self.polls = 0
        #: Jobs of this run seen final by a poll.
        self.seen_final = 0
        #: Called with (job id, chunk, status) when a poll sees a job final (``enrich``).
        self.final_listeners: list[Callable[[str, int, str], None]] = []

    def __repr__(self) -> str:
        return (
            f"<JobQueue limit={self.limit} ({self.source}) open={len(self._open)} "
            f"sending={self._sending} unproven={len(self.unproven)} waiting={self._waiting}>"
        )

    @property
    def open_jobs(self) -> int:
        """The run's jobs queued or running, as far as it knows."""
        return len(self._open)

    @property
    def polling(self) -> bool:
        """Whether the open jobs are being polled now (sends wait for room)."""
        return self._poller is not None and not self._poller.done()

    @property
    def taken(self) -> int:
        """Places in use: open jobs, sends in flight, lost answers not yet proven."""
        return len(self._open) + self._sending + len(self.unproven)

    @contextlib.asynccontextmanager
    async def place(self) -> AsyncIterator[Place]:
        """Wait for room in the queue, and hold a place while the send is on its way."""
        async with self._turn:
            place_id = await self._wait_for_place()
        self._sending += 1
        place = Place(self, place_id)
        try:
            yield place
            # What became of it, at once: this process may die. Never an error here.
            await self._write_book(quiet=True)
        finally:
            self._sending -= 1
            if not place.kept and place.id is not None:
                self._later(book.free, place.id)
            self._changed.set()

    async def _wait_for_place(self) -> str | None:
        """A place from the account's book: asked for whenever this run is not held back
        after a queue-full, again every QUEUE_POLL (another run may free one) and at once
        when one of this run's is freed. None at a stop."""
        waiting = False  # for room: a refusal of the book, or a hold (not this run's turn)
        try:
            while not self._stop.is_set:
                await self._write_book()
                pause = self._hold_until - time.monotonic()
                if pause <= 0:
                    view = await self._change_book(self._take)
                    self._heard(view)
                    if view.granted:
                        return view.place
                    pause = view.held_for or book.QUEUE_POLL
                if not waiting:
                    waiting, self._waiting = True, self._waiting + 1
                self._start_polling()
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), pause)
            return None
        finally:
            if waiting:
                self._waiting -= 1

    async def _free_final(self, job: _Open) -> None:
        """``job`` is final: its place (if the book counts one for it) is free."""
        place = job.place
        if place is not None:
            await self._change_book(lambda b, now, alive: book.free(b, place, final=True))

    def _count_open_jobs(self) -> None:
        """A limit is known from now on, so the book counts places: this run's open jobs
        (granted while none was known) get theirs."""
        for job_id, job in self._open.items():
            if job.place is None:
                self._adopt_later(job_id, job)

    def _teach(self) -> None:
        """Tell the book the limit this run now goes by. The account's own limit only when
        a message named it: a run's setting is that run's ceiling, not the account's."""
        account = self.account_limit if self.source == "message" else None
        self._later(book.learned, self.limit, account, self.source)

    def _start_watching(self) -> None:
        if self._store is not None and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.create_task(self._watch_others())

    async def _watch_others(self) -> None:
        """While this run has open jobs and no send waiting (it proves a lost answer, or
        drains), look now and then whether another run of the account waits for a place:
        then poll them, so that their places free when they end."""
        run = self._run
        while self._open and not self._stop.is_set:
            await asyncio.sleep(_WATCH_EVERY)
            if self._waiting:
                continue  # the poller runs anyway
            try:
                others = await self._change_book(lambda b, now, alive: book.waiting(b, run, now))
            except Exception as exc:  # the store's trouble: the sends will meet it too
                log.warning("queue.book_unread", error=str(exc))
                continue
            self._wanted = others > 0
            if self._wanted:
                self._start_polling()

    def _adopt_later(self, job_id: str, job: _Open) -> None:
        """Give the open ``job_id`` a place in the book (its own, or its orphan)."""
        run, holder = self._run, self._holder

        async def adopt() -> None:
            job.place = await self._change_book(
                lambda b, at, alive: book.adopt(b, run, holder, job_id, at)
            )

        self._to_book.append(adopt)

    def _take(self, b: book.Book, now: float, alive: book.Alive) -> book.QueueView:
        cap = self._settings.max_running_jobs
        return book.take(b, self._run, self._holder, cap, now, alive)

    def _heard(self, view: book.QueueView) -> None:
        """What the book says: the limit as the account's runs know it, other runs' places,
        and jobs nobody polls."""
        self._others = max(view.taken - self.taken - (view.place is not None), 0)
        if view.limit is not None and view.limit != self.limit:
            if self.limit is None:
                self._count_open_jobs()
            # Another run's lesson: the quiet time before this run raises it starts anew.
            self._raised_at = time.monotonic()
            self.limit = view.limit
            cap = self._settings.max_running_jobs
            if cap is not None and view.limit >= cap:
                self.source = "setting"  # this run's own ceiling (the book may allow more)
            else:
                self.source = view.source or self.source
                if view.account_limit is not None and cap is None:
                    self.account_limit = view.account_limit
        for place_id, job_id in view.orphans:
            if job_id not in self._open and job_id not in self._orphans:
                now = time.monotonic()
                self._orphans[job_id] = _Open(-1, now, now, place=place_id)

    async def _change_book(self, change: BookChange[T]) -> T:
        if self._store is None:
            return change(self._book, time.monotonic(), lambda _: True)
        return await self._store.queue(change)

    def _later(self, change: Callable[..., object], *args: object) -> None:
        """Tell the book ``change(book, *args)`` at the next chance (callers here are sync)."""

        async def write() -> None:
            await self._change_book(lambda b, now, alive: change(b, *args))

        self._to_book.append(write)

    async def _write_book(self, *, quiet: bool = False) -> None:
        """Make the book changes waiting, in order. ``quiet``: a failing store is logged,
        not raised, and what is left is made at the next chance (after a send, the verdict
        must reach the journal whatever the store does: the book only counts)."""
        async with self._writing:  # one writer: each change made once, in order
            while self._to_book:
                try:
                    await self._to_book[0]()
                except Exception as exc:  # a store error, or a store already closed
                    if not quiet:
                        raise
                    log.warning("queue.book_unwritten", error=str(exc))
                    return
                self._to_book.pop(0)

    def full(self, error: QueueFullError, place: Place) -> None:
        """A queue-full 400 to the send holding ``place``: learn the limit, or lower it, and
        hold the next send back a while. Refusals of sends that left before the previous
        one arrived are the same event: they lower the limit but do not lengthen the hold.

        The first refusal only teaches the limit: from then on the book counts the
        account's jobs against it and holds every send that would meet another, so there
        is no hold to wait out (a hold would also cost this run its turn in the book)."""
        self.queue_full += 1
        learning = self.limit is None
        if learning:
            self._count_open_jobs()
        elif place.id is None and self._store is not None and self.source != "setting":
            # Sent before any limit was known (the book counted no place for it): the
            # same lesson as the one that taught the limit, which the book keeps.
            log.info("queue.full", limit=self.limit, source=self.source, lesson=True)
            return
        # The account's jobs but the refused send's: this run's, and the other runs' as the
        # book last said.
        mine = max(self.taken + self._others - 1, 0)
        match = _LIMIT_IN_MESSAGE.search(error.server_message or "")
        if match and self.source != "setting":
            self.account_limit = int(match.group(1))
        if self.limit is None:
            # The message names the account's limit: the book counts every bulkjob run's
            # jobs against it; another client's jobs meet a refusal that lowers it.
            self.limit, self.source = (
                (self.account_limit, "message")
                if match and self.account_limit
                else (max(mine, 1), "open jobs")
            )
        else:
            self.limit = max(1, min(self.limit, mine))
        if self._probing:  # a probe above the learned limit was refused: probe less often
            self._probing = False
            cap = self._settings.queue_poll_interval * _PROBE_BACKOFF_CAP
            self._quiet = min(self._quiet * 2, cap)
        log.info("queue.full", limit=self.limit, source=self.source, mine=mine)
        now = time.monotonic()
        if learning:  # sends that left before the lesson came are part of it
            self._last_full = now
            self._teach()
            return
        if place.since <= self._last_full:  # sent before the last refusal came: same event
            self._refused(place, 0.0)
            return
        # Other clients' jobs may hold slots: wait longer each time it happens in a row.
        poll = self._settings.queue_poll_interval
        # In a row: this refusal came within a poll interval of the hold the last one set.
        in_a_row = self._backoff > 0 and now - self._last_full < poll + self._backoff
        self._backoff = min(self._backoff * 2, poll) if in_a_row else poll / 8
        self._last_full = now
        self._hold_until = now + self._backoff
        self._refused(place, self._backoff)

    def _refused(self, place: Place, hold: float) -> None:
        """Tell the book: the limit comes down to what it counts then (this run's count of
        the others' places is old), and every run holds back ``hold`` seconds."""
        account = self.account_limit if self.source == "message" else None
        place_id, cap = place.id, self._settings.max_running_jobs

        async def write() -> None:
            await self._change_book(
                lambda b, now, alive: book.refused(b, place_id, account, hold, now, cap)
            )

        self._to_book.append(write)

    def opened(self, job_id: str, seq: int, place: str | None = None) -> None:
        """``job_id`` (chunk ``seq``) is queued or running: it holds a place till final
        (the send's, a lost answer's, or one the book adopts: a resumed run's job)."""
        lost = self.unproven.pop(seq, None)  # a lost answer's place, now the job's
        place = place or lost
        now = time.monotonic()
        job = self._open[job_id] = _Open(seq, now, now + self._first_look(), place=place)
        self._orphans.pop(job_id, None)
        if place is not None:
            self._later(book.place_job, place, job_id)
        elif self.limit is not None:
            self._adopt_later(job_id, job)
        # Sends may be waiting on this place (a lost answer proven a job, after the
        # polls had stopped): they need the poller to hear the job finish.
        self._start_polling()
        self._start_watching()
        self._changed.set()

    def settled(self, seq: int) -> None:
        """A lost answer was proven not to be a job (or given up): its place is free."""
        if seq in self.unproven:
            place = self.unproven.pop(seq)
            if place is not None:
                self._later(book.free, place)
            self._changed.set()

    def finished(self, job_id: str | None) -> None:
        """A webhook says ``job_id`` may be final: look at it now.

        A job not of this run (another client's, or made up) is ignored. A call naming no
        readable job makes every open job due, at most once per a share of the poll
        interval."""
        now = time.monotonic()
        if job_id:
            job = self._open.get(job_id)
            if job is None:
                return
            job.due = now
        else:
            if now - self._anonymous_at < self._settings.queue_poll_interval * _ANONYMOUS_GAP:
                return
            self._anonymous_at = now
            for other in self._open.values():
                other.due = min(other.due, now + _MIN_POLL)
        self._start_polling()
        self._changed.set()

    async def close(self) -> None:
        """Stop polling; tell the book what became of this run's places. Jobs still open
        become orphans there, for the account's other runs to poll."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        holder, run = self._holder, self._run
        try:
            await self._write_book()
            await self._change_book(lambda b, now, alive: book.leave(b, holder, run))
        except Exception as exc:  # the store's trouble: its leases and reaping cover it
            log.warning("queue.book_unwritten", error=str(exc))

    # -- polling ------------------------------------------------------------------------------

    def _start_polling(self) -> None:
        if (self._open or self._orphans) and (self._poller is None or self._poller.done()):
            self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        """Look at the open jobs that are due, while sends wait for a place."""
        while (
            (self._open or self._orphans)
            and (self._waiting or self._wanted)
            and not self._stop.is_set
        ):
            now = time.monotonic()
            jobs = [*self._open.items(), *self._orphans.items()]
            due = [(job_id, job) for job_id, job in jobs if job.due <= now]
            if not due:
                soonest = min(job.due for _, job in jobs)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), soonest - now)
                continue
            try:
                await asyncio.gather(*(self._look(job_id, job) for job_id, job in due[:8]))
                await self._write_book(quiet=True)  # freed places, with no send to tell
            except BulkJobError as exc:  # a failing server: the sends will meet it too
                log.warning("queue.poll_failed", error=str(exc))
                await asyncio.sleep(self._settings.queue_poll_interval / 8)

    async def _look(self, job_id: str, job: _Open) -> None:
        job.looks += 1
        self.polls += 1
        if job.seq < 0:
            await self._look_orphan(job_id, job)
            return
        data = await self._client.get_json(f"{self._settings.job_kind.path}/{job_id}")
        status = str(data.get("status") or "")
        now = time.monotonic()
        if status not in FINAL_STATUSES:
            job.due = now + self._next_look(now - job.since)
            return
        self._open.pop(job_id, None)
        # Its place as the book will know it once the changes before this one are made
        # (a resumed run's job may be seen final before its adoption was written).
        self._to_book.append(functools.partial(self._free_final, job))
        self.seen_final += 1
        self._durations.append(now - job.since)
        self._hold_until = 0.0  # a slot of ours is free for certain
        if self._journal is not None:
            await self._journal.job_update(job.seq, status=status)
        self._creep_up(now)
        log.info("queue.job_final", job_id=job_id, status=status, looks=job.looks)
        for listener in self.final_listeners:
            listener(job_id, job.seq, status)
        self._changed.set()

    async def _look_orphan(self, job_id: str, job: _Open) -> None:
        """A job of a run that is gone: its place is freed once it is final, or unreadable
        to this client (another client's job: its own runs free it, or a queue-full tells)."""
        try:
            data = await self._client.get_json(f"{self._settings.job_kind.path}/{job_id}")
            status = str(data.get("status") or "")
        except RequestError as exc:
            log.info("queue.orphan_unreadable", job_id=job_id, error=str(exc))
            status = ""  # no status to wait for: its place goes, as a final job's does
        now = time.monotonic()
        if status and status not in FINAL_STATUSES:
            job.due = now + min(max(now - job.since, _MIN_POLL), self._settings.queue_poll_interval)
            return
        self._orphans.pop(job_id, None)
        self._to_book.append(functools.partial(self._free_final, job))
        self._hold_until = 0.0
        self._changed.set()

    def _creep_up(self, now: float) -> None:
        """A quiet while since the last queue-full: try one more job at a time.

        Up to the account's known limit first (other clients' jobs have gone). A limit
        that was learned, not set, is then probed above too: the account's limit may have
        been raised, or was only ever seen through this run's open jobs. A refused probe
        doubles the quiet time the next one waits for."""
        if self.limit is None or now - max(self._last_full, self._raised_at) <= self._quiet:
            return
        known = self.account_limit
        if known is not None and self.limit < known:
            self.limit += 1
        elif self.source != "setting":
            self.limit += 1
            self._probing = True
            self._raised_at = now  # the next probe waits a quiet time again
            log.info("queue.probe", limit=self.limit, source=self.source)
        else:
            return
        self._teach()

    def _predicted(self) -> float | None:
        return statistics.median(self._durations[-25:]) if self._durations else None

    def _first_look(self) -> float:
        predicted = self._predicted()
        return _MIN_POLL if predicted is None else predicted * _DENSE_FROM

    def _next_look(self, age: float) -> float:
        """Sparse while young, dense near the predicted finish, backing off when long."""
        cap = self._settings.queue_poll_interval
        predicted = self._predicted()
        if predicted is not None:
            if age < predicted * _DENSE_FROM:
                return max(predicted * _DENSE_FROM - age, _MIN_POLL)
            if age < predicted * _DENSE_TO:
                return max(predicted * _DENSE, _MIN_POLL)
        return min(max(age * _YOUNG, _MIN_POLL), cap)
