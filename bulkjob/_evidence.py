"""Evidence of what a job holds: the account's job list, and the ids in a job's results.

A submit whose answer was lost is settled by content, never by guessing (see
:mod:`bulkjob._submitter`). The API gives two things that cost no credits:

- ``GET /admin/jobs`` lists the account's jobs, filtered by type and creation time. It
  says nothing reliable about what a job holds (its fields beyond ``creditsConsumed``
  are not public), so counts and times only *order* the candidates;
- a finished job's results file, which carries each input id in one column
  (``results_id_column``, by default the kind's ``newContactId``/``contactId``/...).

:class:`IdSet` is a set of ids as a proof needs it: a SHA-256 of the sorted distinct
ids (equal sets, equal digests, whatever order or repetition the results file uses),
and the sorted 64-bit BLAKE2b hashes of the ids (8 bytes an id, so that a parked chunk
can be kept in the journal and tested for membership without its ids). Between a job's
results and a chunk there are three relations:

- **same** — the digests are equal: the job holds exactly that chunk;
- **foreign** — the results hold an id the chunk does not: it is not that chunk;
- **part** — the results hold only ids of the chunk, but not all of them: a job that
  lost rows, or another client's job of a subset. It proves nothing either way.

:meth:`JobReader.prove` turns one look at the account into a typed :data:`Proof` for one
chunk: :class:`Proven`, :class:`NotAccepted`, :class:`Unprovable` or :class:`Waiting`.
What happens to the chunk then is :class:`~bulkjob._submitter.Submitter`'s business.
"""

from __future__ import annotations

import asyncio
import bisect
import csv
import hashlib
import tempfile
import time
from array import array
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeAlias

from ._client import ApiClient
from ._errors import AuthError, ProtocolError, RequestError
from ._logging import get_logger
from ._settings import Settings

__all__ = [
    "Candidate",
    "Final",
    "IdSet",
    "JobContent",
    "JobReader",
    "Look",
    "NotAccepted",
    "Proof",
    "Proven",
    "Running",
    "Unprovable",
    "Unreadable",
    "Waiting",
]

log = get_logger()
FINAL_STATUSES = frozenset({"finished", "failed", "aborted"})
_COUNT_FIELDS = ("ids", "totalRecords", "recordCount", "inputCount", "totalIds", "numberOfIds")
_TIME_FIELDS = ("created", "createdDate", "creationTime", "submittedAt", "submitted", "startTime")
#: A bound on one look at the job list (10,000 jobs): an account's list around a few
#: lost answers holds far fewer at any licensed rate; past it, a chunk is unprovable.
_MAX_PAGES = 200
_PAGE_SIZE = 50  # the documented maximum of resultsPerPage
_HASH_BYTES = 8


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=_HASH_BYTES).digest())


@dataclass(frozen=True, slots=True)
class IdSet:
    """A set of ids, kept as a digest and sorted 64-bit hashes (see the module docstring)."""

    digest: str
    count: int
    hashes: bytes

    @classmethod
    def of(cls, ids: Iterable[str]) -> IdSet:
        """The set of ``ids`` (repeats and order do not matter)."""
        distinct = sorted(set(ids))
        sha = hashlib.sha256()
        for value in distinct:
            sha.update(value.encode())
            sha.update(b"\n")
        hashes = array("Q", sorted(map(_hash, distinct)))
        return cls(sha.hexdigest(), len(distinct), hashes.tobytes())

    @classmethod
    def stored(cls, digest: str, hashes: bytes) -> IdSet:
        """An IdSet as the journal keeps it."""
        return cls(digest, len(hashes) // _HASH_BYTES, hashes)

    def relation(self, job: IdSet) -> Literal["same", "foreign", "part"]:
        """What ``job`` (a job's results) is to this set (a chunk)."""
        if job.digest == self.digest:
            return "same"
        mine = array("Q")
        mine.frombytes(self.hashes)
        theirs = array("Q")
        theirs.frombytes(job.hashes)
        for h in theirs:
            at = bisect.bisect_left(mine, h)
            if at == len(mine) or mine[at] != h:
                return "foreign"
        return "part"


@dataclass(frozen=True, slots=True)
class Candidate:
    """One job of the account's list that may hold a lost submit."""

    job_id: str
    status: str | None
    created: float | None  # server clock, POSIX seconds
    ids: int | None  # from the listing, when it says: for ordering only


@dataclass(frozen=True, slots=True)
class Final:
    """A final job whose results were read: the set of ids they hold."""

    status: str
    ids: IdSet


@dataclass(frozen=True, slots=True)
class Running:
    """A job not final yet: its results cannot be read until it is."""

    status: str


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A final job whose results do not tell what it held (aborted, failed without
    results, no id column): it can be neither matched nor ruled out."""

    status: str
    reason: str


JobContent: TypeAlias = Final | Running | Unreadable


@dataclass(frozen=True, slots=True)
class Proven:
    """A job's results hold exactly the chunk's ids: the chunk is that job."""

    job_id: str
    evidence: str


@dataclass(frozen=True, slots=True)
class NotAccepted:
    """No job holds the chunk: every candidate holds other ids, and the grace is over."""

    evidence: str


@dataclass(frozen=True, slots=True)
class Unprovable:
    """Candidates are left that can never tell (aborted, failed without results)."""

    evidence: str


@dataclass(frozen=True, slots=True)
class Waiting:
    """Candidates still running, or the grace not over yet: look again later."""

    running: int


Proof: TypeAlias = Proven | NotAccepted | Unprovable | Waiting


@dataclass(slots=True)
class Look:
    """One look at the account: its jobs around some sends, and what each was seen holding."""

    jobs: list[Candidate]
    complete: bool
    at: float  # our clock when the list was read
    seen: dict[str, JobContent] = field(default_factory=dict)


class JobReader:
    """Reads the account's job list and jobs' results for proofs; caches final answers."""

    __slots__ = ("_cache", "_client", "_run", "_settings", "_time_filter", "registry_hits")

    def __init__(self, settings: Settings, client: ApiClient, run: str = "") -> None:
        self._settings = settings
        self._client = client
        self._run = run
        self._cache: dict[str, Final | Unreadable] = {}
        self._time_filter = True  # dropped if the server refuses our start/end format
        #: Candidates ruled out by the account's registry of jobs (no download needed).
        self.registry_hits = 0

    def __repr__(self) -> str:
        return f"<JobReader cached={len(self._cache)}>"

    async def look(self, since: float, until: float) -> Look:
        """The account's jobs created between ``since`` and ``until`` (server clock)."""
        at = time.time()
        jobs, complete = await self.candidates(since, until)
        return Look(jobs, complete, at)

    async def prove(
        self,
        ids: IdSet,
        since: float,
        until: float,
        ready_at: float,
        look: Look,
        known: Collection[str],
    ) -> Proof:
        """What ``look`` says about a chunk of ``ids`` whose job, if any, was created between
        ``since`` and ``until`` (server clock). "No job holds it" is believed only from
        ``ready_at`` on (our clock: the grace after its answer was lost).

        ``known``: jobs already known to hold other chunks of the run. The period selects
        the candidates; within it counts and times only order them, content decides.
        Never an exception or a guess.
        """
        sent = since + self._settings.reconcile_skew  # roughly when it left, server clock
        candidates = [
            j
            for j in look.jobs
            if j.job_id not in known and (j.created is None or since <= j.created <= until)
        ]
        candidates.sort(key=lambda j: (j.ids != ids.count, abs((j.created or sent) - sent)))
        ruled_out: list[str] = []
        # Jobs another run of the account got an answer for hold no lost submit of this one:
        # ruled out by the account's registry, without downloading their results. This
        # run's own entries are not: one may name a job whose journal write died with the
        # process that registered it, and that job holds this very chunk.
        registered = await self._registered([j.job_id for j in candidates])
        ruled_out += [j.job_id for j in candidates if j.job_id in registered]
        candidates = [j for j in candidates if j.job_id not in registered]
        unclear: list[str] = []
        running = 0
        for job in candidates:
            content = look.seen.get(job.job_id)
            if content is None:
                content = look.seen[job.job_id] = await self.content(job)
            if isinstance(content, Running):
                running += 1
            elif isinstance(content, Unreadable):
                unclear.append(f"{job.job_id} ({content.status}: {content.reason})")
            else:
                relation = ids.relation(content.ids)
                if relation == "same":
                    return Proven(
                        job.job_id,
                        f"job {job.job_id} ({content.status}): its results hold exactly this "
                        f"chunk's {ids.count:,} ids",
                    )
                if relation == "foreign":
                    ruled_out.append(job.job_id)
                else:
                    unclear.append(
                        f"{job.job_id} (its results hold {content.ids.count:,} of this "
                        f"chunk's {ids.count:,} ids and no other)"
                    )
        if running or look.at < ready_at:
            return Waiting(running)
        if not look.complete:
            return Unprovable("the account's job list ran past the page cap around the send")
        if unclear:
            return Unprovable("candidate job(s) that cannot tell: " + "; ".join(unclear[:5]))
        if ruled_out:
            shown = ", ".join(ruled_out[:10]) + (" ..." if len(ruled_out) > 10 else "")
            return NotAccepted(
                f"not accepted: {len(ruled_out)} job(s) created around the send hold other "
                f"ids ({shown})"
            )
        return NotAccepted(
            f"not accepted: no job was created around the send "
            f"({self._settings.reconcile_grace:g}s grace passed)"
        )

    async def _registered(self, job_ids: list[str]) -> set[str]:
        """Which of ``job_ids`` another run of the account registered (none if the store
        cannot say: then content decides, as without a registry)."""
        if not job_ids:
            return set()
        try:
            runs = await self._client.limiter.store.registered(job_ids)
        except Exception as exc:
            log.warning("jobs.registry_unreadable", error=str(exc))
            return set()
        found = {job_id for job_id, run in runs.items() if run != self._run}
        self.registry_hits += len(found)
        return found

    async def candidates(self, since: float, until: float) -> tuple[list[Candidate], bool]:
        """Jobs of this kind created in [since, until] (server clock); and whether the
        list is complete for that period (False when it ran past the page cap first).

        A list that proves itself newest first (every creation time seen so far in
        order) is complete as soon as it reaches a job older than ``since``.
        """
        kind = self._settings.job_kind
        found: list[Candidate] = []
        newest_first, previous = True, float("inf")
        last_page: list[str] = []
        for page in range(1, _MAX_PAGES + 1):
            params = {
                "jobTypes": kind.job_type,
                "page": str(page),
                "resultsPerPage": str(_PAGE_SIZE),
            }
            if self._time_filter:
                params["start"] = _iso(since)
                params["end"] = _iso(until)
            try:
                data = await self._client.get_json("admin/jobs", params)
            except RequestError as exc:
                if exc.status == 400 and self._time_filter:
                    # Filter formats are not public: without them the list is longer, not wrong.
                    log.warning("jobs.time_filter_refused", error=str(exc))
                    self._time_filter = False
                    return await self.candidates(since, until)
                raise
            items = _items(data)
            ids = [str(i.get("jobId")) for i in items if isinstance(i, dict)]
            if page > 1 and ids and ids == last_page:
                log.warning("jobs.paging_ignored", page=page)
                return found, False  # the server repeats its first page: not the whole list
            last_page = ids
            older = False
            for item in items:
                if isinstance(item, dict) and (job := _candidate(item)) is not None:
                    if job.created is None or since <= job.created <= until:
                        found.append(job)
                    if job.created is None or job.created > previous:
                        newest_first = False
                    else:
                        previous = job.created
                        older |= job.created < since
            if len(items) < _PAGE_SIZE or (newest_first and older):
                return found, True
        return found, False

    async def content(self, job: Candidate) -> JobContent:
        """What ``job`` holds, if it can be known now (a results download once final)."""
        cached = self._cache.get(job.job_id)
        if cached is not None:
            return cached
        path = f"{self._settings.job_kind.path}/{job.job_id}"
        status = job.status
        if status not in FINAL_STATUSES:
            data = await self._client.get_json(path)
            status = str(data.get("status") or "") or None
        if status not in FINAL_STATUSES:
            return Running(status or "unknown")
        assert status is not None
        if status == "aborted":
            found: Final | Unreadable = Unreadable(status, "aborted: it has no results")
        else:
            found = await self._read_results(f"{path}/results", status)
        self._cache[job.job_id] = found
        return found

    async def _read_results(self, path: str, status: str) -> Final | Unreadable:
        with tempfile.TemporaryDirectory(prefix="bulkjob-proof-") as tmp:
            dest = Path(tmp) / "results.csv"
            try:
                await self._client.download(path, dest)
            except RequestError as exc:
                if isinstance(exc, AuthError) or exc.status is None or exc.status >= 500:
                    raise  # the server, not the job: the next round tries again
                return Unreadable(status, f"its results could not be read ({exc})")
            column = self._settings.id_column
            try:
                ids = await asyncio.to_thread(lambda: IdSet.of(_column_values(dest, column)))
            except ProtocolError as exc:
                return Unreadable(status, str(exc))
            except (csv.Error, UnicodeError) as exc:  # e.g. a field past the csv module's limit
                return Unreadable(status, f"its results are not readable CSV ({exc})")
        return Final(status, ids)


def _column_values(path: Path, column: str) -> Iterator[str]:
    """The values of ``column`` in a results CSV, streamed; ProtocolError without it."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return
        names = [h.strip() for h in header]
        if column in names:
            at = names.index(column)
        else:
            lowered = [n.lower() for n in names]
            if column.lower() not in lowered:
                raise ProtocolError(
                    f"its results have no column {column!r} (columns: {', '.join(names[:8])}); "
                    "set results_id_column"
                )
            at = lowered.index(column.lower())
        for row in reader:
            if len(row) > at and (value := row[at].strip()):
                yield value


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds")


def _items(data: dict[str, object]) -> list[object]:
    for key in ("jobs", "items", "results", "data", "job"):
        value = data.get(key)
        if isinstance(value, list):
            return value
        if isinstance(value, dict):
            return [value]
    return []


def _candidate(item: dict[str, object]) -> Candidate | None:
    job_id = str(item.get("jobId") or item.get("id") or "").strip()
    if not job_id:
        return None
    count = _first_int(item, _COUNT_FIELDS)
    if count is None:
        # Debited when processing starts, so 0 says nothing about the job's size.
        credits = _first_int(item, ("creditsConsumed",))
        count = credits if credits else None
    status = item.get("status") or item.get("jobStatus")
    return Candidate(
        job_id, str(status).lower() if status else None, _first_time(item), count or None
    )


def _first_time(item: dict[str, object]) -> float | None:
    for name in _TIME_FIELDS:
        value = item.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value / 1000 if value > 1e11 else float(value)  # epoch ms or s
        if isinstance(value, str) and value.strip():
            try:
                parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            except ValueError:
                continue
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)  # the API's times are UTC
            return parsed.timestamp()
    return None


def _first_int(item: dict[str, object], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = item.get(name)
        if value not in (None, ""):
            try:
                return int(str(value))
            except ValueError:
                continue
    return None
