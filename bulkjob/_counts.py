"""Everything a run has counted so far, in one snapshot: what its metrics expose.

Kept apart from :mod:`bulkjob._metrics` so that the runner can build a snapshot without
``prometheus_client``, which only the ``metrics`` extra installs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["RunCounts"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCounts:
    """A run's live counters (see :meth:`bulkjob._runner.Runner.counts`)."""

    #: Lines the pre-pass found: an upper bound on the ids to come.
    ids_expected: int = 0
    ids_read: int = 0
    ids_submitted: int = 0
    ids_rejected: int = 0
    ids_invalid: int = 0
    ids_duplicate: int = 0
    #: Valid ids read and not accepted or rejected yet (queued, in flight, or stopped).
    ids_pending: int = 0
    jobs_accepted: int = 0
    #: Accepted jobs queued or running as far as the run knows, and those seen final.
    jobs_open: int = 0
    jobs_final: int = 0
    chunks_rejected: int = 0
    #: Chunks whose submit lost its answer, waiting for a job to prove what happened.
    awaiting_proof: int = 0
    #: API requests by kind (submit, status, results, cancel, admin) and token requests.
    requests: Mapping[str, int] = field(default_factory=dict)
    throttled: int = 0
    retries: int = 0
    throttle_pauses: int = 0
    throttle_paused_s: float = 0.0
    #: Places of the account's job queue the run holds (open jobs, sends in flight,
    #: unproven lost answers), and the running-job limit it keeps to (None: not known).
    queue_taken: int = 0
    queue_limit: int | None = None
    queue_full: int = 0
    elapsed_s: float = 0.0
