"""The sandbox's ledger: everything it saw and did, for tests and benchmarks to assert on.

The ledger only records: each job as a :class:`JobRecord`, and counts. The rules that decide
what gets recorded live in :mod:`bulkjob._sandbox_state`. Ids of jobs the sandbox made up for
"another client" (:meth:`bulkjob.Sandbox.add_foreign_job`) are counted apart, in
``foreign_ids``, so that ``accepted_ids`` and ``duplicates`` speak only of what the client
under test paid for.

Each job's timeline (accepted, processing start, processing end, all on the monotonic clock)
is kept on its record, so that tests and benchmarks can read how well a client keeps the
running-job limit busy: :meth:`Ledger.utilisation` and :meth:`Ledger.max_running`. Other
clients' jobs are in the timeline too: they hold slots of the same limit.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ._results import results_csv

__all__ = [
    "ABORTED",
    "ACCEPTED",
    "FAILED",
    "FINISHED",
    "PROCESSING",
    "STATUSES",
    "JobRecord",
    "JobTimes",
    "Ledger",
    "max_in_window",
]

ACCEPTED = "accepted"
PROCESSING = "processing"
FINISHED = "finished"
FAILED = "failed"
ABORTED = "aborted"
STATUSES = (ACCEPTED, PROCESSING, FINISHED, FAILED, ABORTED)


@dataclass
class JobRecord:
    """One accepted job. Its status is computed from its timestamps whenever it is asked for."""

    job_id: str
    kind: str
    ids: int
    created: float
    created_monotonic: float
    credits: int
    cancelled: bool = False
    retrieve_company_details: bool = False
    webhook: str | None = None
    # Copied from the config at acceptance (as are its fate and its results' layout below), so
    # that changing the config later does not rewrite the history of jobs already running.
    # processing_after: seconds from acceptance until the job may start; finished_after: its
    # processing time (finished_after spread by finished_jitter).
    processing_after: float = 0.0
    finished_after: float = 0.0
    # With queue_in_order: the monotonic time processing starts, once the job is ready and a
    # slot is free (AccountState places it); None: created_monotonic + processing_after.
    start_at: float | None = None
    fails: bool = False  # ends ``failed`` instead of ``finished``
    no_match_rate: float = 0.0
    id_column: str | None = None  # None: the kind's own name
    # Submitted by "another client" (Sandbox.add_foreign_job): listed and served like any job,
    # but its ids are kept out of the ledger's accepted ids.
    foreign: bool = False
    # The ids themselves, for the results file; None when the config does not track ids.
    id_list: tuple[str, ...] | None = field(default=None, repr=False)

    @property
    def accepted_at(self) -> float:
        """Monotonic time of acceptance."""
        return self.created_monotonic

    @property
    def processing_start(self) -> float | None:
        """Monotonic time processing starts (or started); None once cancelled, as it never will.

        A queued job's start can still move earlier, when a job ahead of it is cancelled; once
        it has passed, it is history (only a job not started yet can be cancelled).
        """
        if self.cancelled:
            return None
        if self.start_at is not None:
            return self.start_at
        return self.created_monotonic + self.processing_after

    @property
    def processing_end(self) -> float | None:
        """Monotonic time the job ends ``finished`` or ``failed``; None once cancelled."""
        start = self.processing_start
        return None if start is None else start + self.finished_after

    def status(self, now: float | None = None) -> str:
        """The job's status at monotonic time ``now`` (default: the current time)."""
        start = self.processing_start
        if start is None:
            return ABORTED
        # The same sums as processing_start and processing_end, so that the status and the
        # ledger's timeline agree to the last bit at a boundary: a slot one job frees at t is
        # the slot the next job takes at t, never both at once.
        now = time.monotonic() if now is None else now
        if now < start:
            return ACCEPTED
        if now < start + self.finished_after:
            return PROCESSING
        return FAILED if self.fails else FINISHED

    def results_csv(self) -> str:
        """The results file (layout in :mod:`bulkjob._sandbox_results`).

        When the sandbox does not track ids (benchmarks), it no longer knows them and writes
        placeholder ids ``untracked-0000001`` and so on instead.
        """
        ids = self.id_list
        if ids is None:
            ids = tuple(f"untracked-{n:07d}" for n in range(1, self.ids + 1))
        return results_csv(
            self.kind,
            ids,
            id_column=self.id_column,
            company_details=self.retrieve_company_details,
            no_match_rate=self.no_match_rate,
            failed=self.fails,
        )


@dataclass(frozen=True, slots=True)
class JobTimes:
    """One job's timeline on the monotonic clock; start and end are None for a cancelled job.

    Times not reached yet are the job's schedule: a job processing now ends when it says, and
    a queued job starts no later than it says (earlier only if a job ahead is cancelled).
    """

    job_id: str
    accepted: float
    start: float | None
    end: float | None


class Ledger:
    """Everything the sandbox saw and did, for tests and benchmarks to assert on."""

    def __init__(self) -> None:
        self.requests = 0
        #: Requests to the token endpoint (not counted in ``requests``: another host).
        self.token_requests = 0
        self.request_times: list[float] = []
        self.throttled = 0
        self.lockouts = 0
        self.faults: collections.Counter[str] = collections.Counter()
        #: API requests by what they were: submit, status, results, cancel, jobs, usage.
        self.routes: collections.Counter[str] = collections.Counter()
        self.rejected: collections.Counter[str] = collections.Counter()
        self.jobs: dict[str, JobRecord] = {}
        self.accepted_ids: collections.Counter[str] = collections.Counter()
        self.ids_accepted = 0
        self.largest_job = 0
        self.foreign_ids = 0  # ids of add_foreign_job jobs, never in accepted_ids
        #: Webhook calls by outcome: sent (answered 2xx), lost (webhook_loss_rate: never
        #: made), failed (refused, reset, timed out or answered otherwise; never retried).
        self.webhooks: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return (
            f"<Ledger requests={self.requests} throttled={self.throttled} "
            f"lockouts={self.lockouts} jobs={len(self.jobs)} ids_accepted={self.ids_accepted} "
            f"duplicates={self.duplicates} foreign_ids={self.foreign_ids}>"
        )

    @property
    def duplicates(self) -> int:
        """Ids accepted more than once, counted once per extra acceptance (needs ``track_ids``)."""
        return sum(n - 1 for n in self.accepted_ids.values() if n > 1)

    def max_in_window(self, window: float) -> int:
        """The most request arrivals inside any half-open interval ``[t, t + window)``."""
        return max_in_window(self.request_times, window)

    def timeline(self) -> list[JobTimes]:
        """Every job's accepted time, processing start and end, in acceptance order."""
        return [
            JobTimes(job.job_id, job.accepted_at, job.processing_start, job.processing_end)
            for job in self.jobs.values()
        ]

    def utilisation(
        self, limit: int, since: float | None = None, until: float | None = None
    ) -> float:
        """How full the running-job limit was kept over ``[since, until]``, from 0 to 1.

        The jobs' processing time inside the interval, over ``limit`` times its length.
        ``since`` defaults to the first acceptance and ``until`` to the last end: read after
        the jobs ended, or pass ``until=time.monotonic()`` for "so far" (a job still running
        counts up to its scheduled end). 0.0 for an empty interval or no jobs.
        """
        if limit < 1:
            raise ValueError(f"limit: must be >= 1, got {limit}")
        spans = _spans(self.jobs.values())
        if since is None:
            since = min((job.accepted_at for job in self.jobs.values()), default=0.0)
        if until is None:
            until = max((end for _, end in spans), default=since)
        if until <= since:
            return 0.0
        busy = sum(max(0.0, min(end, until) - max(start, since)) for start, end in spans)
        return busy / (limit * (until - since))

    def max_running(self) -> int:
        """The most jobs processing at once, over the whole timeline (schedule included)."""
        # A sweep over start (+1) and end (-1) events. Processing is half-open, [start, end):
        # at a time one job ends and another starts, the end is counted first, as the status
        # does (the slot a job frees at t is the slot the next one takes at t).
        spans = _spans(self.jobs.values())
        events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
        running = best = 0
        for _, step in events:
            running += step
            best = max(best, running)
        return best

    def record_job(self, job: JobRecord, ids: Sequence[str], *, track_ids: bool) -> None:
        self.jobs[job.job_id] = job
        self.ids_accepted += len(ids)
        self.largest_job = max(self.largest_job, len(ids))
        if track_ids:
            self.accepted_ids.update(ids)

    def record_foreign_job(self, job: JobRecord) -> None:
        self.jobs[job.job_id] = job
        self.foreign_ids += job.ids

    def counts(self, *, running_job_limit: int | None = None) -> dict[str, object]:
        """The ledger's counts, as ``GET /_sandbox/ledger`` serves them.

        ``utilisation`` (from the first acceptance to the last end) needs the limit; without
        one it is None.
        """
        utilisation = None
        if running_job_limit is not None:
            utilisation = self.utilisation(running_job_limit)
        return {
            "requests": self.requests,
            "token_requests": self.token_requests,
            "throttled": self.throttled,
            "lockouts": self.lockouts,
            "jobs": len(self.jobs),
            "ids_accepted": self.ids_accepted,
            "unique_ids": len(self.accepted_ids),
            "duplicates": self.duplicates,
            "largest_job": self.largest_job,
            "foreign_ids": self.foreign_ids,
            "faults": dict(self.faults),
            "routes": dict(self.routes),
            "rejected": dict(self.rejected),
            "webhooks": dict(self.webhooks),
            "max_running": self.max_running(),
            "utilisation": utilisation,
        }


def _spans(jobs: Iterable[JobRecord]) -> list[tuple[float, float]]:
    """(start, end) of every job that processes for some time (not cancelled, not instant)."""
    spans = []
    for job in jobs:
        start, end = job.processing_start, job.processing_end
        if start is not None and end is not None and end > start:
            spans.append((start, end))
    return spans


def max_in_window(times: Iterable[float], window: float) -> int:
    """Sliding-window maximum over sorted arrival times, with two pointers (O(n))."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(ordered):
        # Half-open: two arrivals exactly ``window`` apart never share a window, which is how
        # a server that forgets a request once it is ``window`` old would count them.
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
