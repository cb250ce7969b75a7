"""Reconciling submits that may or may not have been accepted, from the account's job list.

A submit is ambiguous when its request may have reached the server but no answer came
back (the connection dropped or timed out after sending, or the process died between
journaling ``sending`` and journaling the answer). Resending blindly could pay for the
same ids twice; dropping could lose them. The documented ``GET /admin/jobs`` lists the
account's jobs; the API gives no way to tag a job, so matching is by job type, id count
and creation time, among jobs this run does not already know:

- no unknown job of that type and size since the send: it was not accepted (resend);
- as many such jobs as ambiguous chunks of that size: all were accepted, paired in
  time order;
- otherwise, the creation times decide, if they can: the offset and spread between
  our send times and the server's creation times are measured on this run's known jobs
  in the same listing, and a job is paired with the one ambiguous chunk sent within
  that spread of its creation (requests leave paced, so sends are well apart);
- anything still open (a job that fits two chunks, no timing to measure): unresolved.
  It is never guessed: the chunk stays ``ambiguous`` until the user resubmits or
  abandons it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ._client import ApiClient
from ._errors import BulkJobError, ProtocolError
from ._logging import get_logger
from ._settings import Settings

__all__ = ["Ambiguous", "Reconciler", "RemoteJob"]

log = get_logger()
_COUNT_FIELDS = ("ids", "totalRecords", "recordCount", "inputCount", "totalIds", "numberOfIds")
_TIME_FIELDS = ("created", "createdDate", "creationTime", "submittedAt", "submitted", "startTime")
_MAX_PAGES = 40
_PAGE_SIZE = 50  # the documented maximum of resultsPerPage


@dataclass(frozen=True, slots=True)
class Ambiguous:
    """A chunk whose submit has no known outcome."""

    seq: int
    ids: int
    sent_at: float  # POSIX time the request was about to leave


@dataclass(frozen=True, slots=True)
class RemoteJob:
    """One entry of the account's job list."""

    job_id: str
    ids: int | None
    created: float | None


UNRESOLVED = "?"


class Reconciler:
    """Finds out, from ``GET /admin/jobs``, which ambiguous chunks became jobs."""

    __slots__ = (
        "_client",
        "_known",
        "_lock",
        "_resolved",
        "_sent_of_job",
        "_settings",
        "_unanswered",
    )

    def __init__(
        self,
        settings: Settings,
        client: ApiClient,
        known_job_ids: set[str],
        sent_at_of_job: dict[str, float] | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._known = known_job_ids  # shared with the runner: grows as jobs are accepted
        self._sent_of_job = sent_at_of_job if sent_at_of_job is not None else {}
        self._unanswered: dict[int, Ambiguous] = {}
        self._resolved: dict[int, str | None] = {}
        self._lock = asyncio.Lock()

    async def resolve(self, chunks: Sequence[Ambiguous]) -> dict[int, str | None]:
        """seq -> job id (accepted), None (not accepted) or ``UNRESOLVED``."""
        if not chunks:
            return {}
        since = min(c.sent_at for c in chunks) - self._settings.reconcile_skew
        try:
            jobs = await self._list(since)
        except BulkJobError as exc:
            log.warning("reconcile.unavailable", error=str(exc))
            return {c.seq: UNRESOLVED for c in chunks}
        return match(chunks, jobs, self._known, self._settings.reconcile_skew, self._sent_of_job)

    async def resolve_one(self, seq: int, ids: int, sent_at: float) -> str | None:
        """The job id ``seq`` became, or None; raises LookupError when it cannot be told.

        Used mid-run right after a submit got no answer. Every chunk in that state is
        matched together (two dropped submits of the same size are only told apart
        jointly), and requests still in flight may own some of the unknown jobs for a
        moment, so a crowded answer is asked again a few times, spaced out.
        """
        self._unanswered[seq] = Ambiguous(seq, ids, sent_at)
        async with self._lock:
            for attempt in range(4):
                if seq in self._resolved:
                    break
                if attempt:
                    await asyncio.sleep(min(2.0**attempt, self._settings.request_timeout))
                outcome = await self.resolve(list(self._unanswered.values()))
                for other, found in outcome.items():
                    if found != UNRESOLVED:
                        self._resolved[other] = found
                        self._unanswered.pop(other, None)
                        if found is not None:
                            self._known.add(found)
            self._unanswered.pop(seq, None)
            if seq in self._resolved:
                return self._resolved.pop(seq)
        raise LookupError(f"chunk {seq}: cannot tell whether it was accepted")

    async def _list(self, since: float) -> list[RemoteJob]:
        kind = self._settings.job_kind
        jobs: list[RemoteJob] = []
        for page in range(1, _MAX_PAGES + 1):
            params = {
                "jobTypes": kind.job_type,
                "start": datetime.fromtimestamp(since, tz=UTC).isoformat(timespec="milliseconds"),
                "page": str(page),
                "resultsPerPage": str(_PAGE_SIZE),
            }
            data = await self._client.get_json("admin/jobs", params)
            items = _items(data)
            jobs.extend(_job(item) for item in items if isinstance(item, dict))
            if len(items) < _PAGE_SIZE:
                return [j for j in jobs if j.job_id]
        raise ProtocolError(f"more than {_MAX_PAGES} pages of jobs since the send")


def match(
    chunks: Iterable[Ambiguous],
    jobs: Iterable[RemoteJob],
    known: set[str],
    skew: float,
    sent_of_job: dict[str, float] | None = None,
) -> dict[int, str | None]:
    """Pair ambiguous chunks with unknown jobs of the same size (see module docstring)."""
    jobs = list(jobs)
    by_size: dict[int, list[Ambiguous]] = defaultdict(list)
    for c in chunks:
        by_size[c.ids].append(c)
    unknown = [j for j in jobs if j.job_id not in known]
    timing = _calibrate(jobs, sent_of_job or {})
    out: dict[int, str | None] = {}
    for size, group in by_size.items():
        group.sort(key=lambda c: c.sent_at)
        earliest = group[0].sent_at - skew
        candidates = sorted(
            (
                j
                for j in unknown
                if j.ids in (size, None) and (j.created is None or j.created >= earliest)
            ),
            key=lambda j: j.created or 0.0,
        )
        if any(j.ids is None for j in candidates):
            out.update({c.seq: UNRESOLVED for c in group})  # sizes unknown: can't tell
        elif not candidates:
            out.update({c.seq: None for c in group})
        elif len(candidates) == len(group):
            out.update({c.seq: j.job_id for c, j in zip(group, candidates, strict=True)})
        else:
            out.update(_by_time(group, candidates, timing))
    return out


def _calibrate(jobs: list[RemoteJob], sent_of_job: dict[str, float]) -> tuple[float, float] | None:
    """(offset, tolerance) between our send times and the server's creation times."""
    deltas = sorted(
        j.created - sent_of_job[j.job_id]
        for j in jobs
        if j.created is not None and j.job_id in sent_of_job
    )
    if len(deltas) < 3:
        return None
    offset = deltas[len(deltas) // 2]
    # The observed spread, doubled, plus the listing's millisecond rounding.
    tolerance = 2 * (deltas[-1] - deltas[0]) + 0.002
    return offset, tolerance


def _by_time(
    group: list[Ambiguous], candidates: list[RemoteJob], timing: tuple[float, float] | None
) -> dict[int, str | None]:
    unresolved: dict[int, str | None] = {c.seq: UNRESOLVED for c in group}
    if timing is None:
        return unresolved
    offset, tolerance = timing
    out: dict[int, str | None] = {c.seq: None for c in group}
    for job in candidates:
        if job.created is None:
            return unresolved
        fits = [c for c in group if abs(job.created - offset - c.sent_at) <= tolerance]
        if len(fits) > 1 or (fits and out[fits[0].seq] is not None):
            return unresolved  # one job could be either chunk's, or two jobs fit one
        if fits:
            out[fits[0].seq] = job.job_id
        # A job that fits no chunk of ours was someone else's: it is not evidence.
    return out


def _items(data: dict[str, object]) -> list[object]:
    for key in ("jobs", "items", "results", "data", "job"):
        value = data.get(key)
        if isinstance(value, list):
            return value
        if isinstance(value, dict):
            return [value]
    return []


def _job(item: dict[str, object]) -> RemoteJob:
    count = _first_int(item, _COUNT_FIELDS)
    if count is None:
        # The one documented field. It is debited when processing starts, so 0 says
        # nothing about the job's size (unknown: never matched as "a different size").
        credits = _first_int(item, ("creditsConsumed",))
        count = credits if credits else None
    created: float | None = None
    for name in _TIME_FIELDS:
        value = item.get(name)
        if isinstance(value, str) and value:
            try:
                created = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
                break
            except ValueError:
                continue
    return RemoteJob(str(item.get("jobId") or ""), count, created)


def _first_int(item: dict[str, object], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = item.get(name)
        if value not in (None, ""):
            try:
                return int(str(value))
            except ValueError:
                continue
    return None
