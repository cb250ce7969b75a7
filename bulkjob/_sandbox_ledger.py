"""The sandbox's ledger: everything it saw and did, for tests and benchmarks to assert on.

The ledger only records; the rules that decide what gets recorded live in
:mod:`bulkjob._sandbox_state`. Ids of jobs the sandbox made up for "another client"
(:meth:`bulkjob.Sandbox.add_foreign_job`) are counted apart, in ``foreign_ids``, so that
``accepted_ids`` and ``duplicates`` speak only of what the client under test paid for.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._sandbox_state import JobRecord

__all__ = ["Ledger", "max_in_window"]


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
