"""The sandbox's ledger: everything it saw and did, for tests and benchmarks to assert on.

The ledger only records: each job as a :class:`JobRecord`, and counts. The rules that decide
what gets recorded live in :mod:`bulkjob._sandbox_state`. Ids of jobs the sandbox made up for
"another client" (:meth:`bulkjob.Sandbox.add_foreign_job`) are counted apart, in
``foreign_ids``, so that ``accepted_ids`` and ``duplicates`` speak only of what the client
under test paid for.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ._sandbox_results import results_csv

__all__ = [
    "ABORTED",
    "ACCEPTED",
    "FAILED",
    "FINISHED",
    "PROCESSING",
    "STATUSES",
    "JobRecord",
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
    processing_after: float = 0.0
    finished_after: float = 0.0
    fails: bool = False  # ends ``failed`` instead of ``finished``
    no_match_rate: float = 0.0
    id_column: str | None = None  # None: the kind's own name
    # Submitted by "another client" (Sandbox.add_foreign_job): listed and served like any job,
    # but its ids are kept out of the ledger's accepted ids.
    foreign: bool = False
    # The ids themselves, for the results file; None when the config does not track ids.
    id_list: tuple[str, ...] | None = field(default=None, repr=False)

    def status(self, now: float | None = None) -> str:
        """The job's status at monotonic time ``now`` (default: the current time)."""
        if self.cancelled:
            return ABORTED
        elapsed = (time.monotonic() if now is None else now) - self.created_monotonic
        if elapsed < self.processing_after:
            return ACCEPTED
        if elapsed < self.processing_after + self.finished_after:
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

    def record_job(self, job: JobRecord, ids: Sequence[str], *, track_ids: bool) -> None:
        self.jobs[job.job_id] = job
        self.ids_accepted += len(ids)
        self.largest_job = max(self.largest_job, len(ids))
        if track_ids:
            self.accepted_ids.update(ids)

    def record_foreign_job(self, job: JobRecord) -> None:
        self.jobs[job.job_id] = job
        self.foreign_ids += job.ids

    def counts(self) -> dict[str, object]:
        """The ledger's counts, as ``GET /_sandbox/ledger`` serves them."""
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
        }


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
