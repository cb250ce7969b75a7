"""The run report: where every id of the input ended up, and why the run stopped.

Invariant (checked by :meth:`RunReport.accounted` and by the tests)::

    ids_read == ids_submitted + ids_invalid + ids_duplicate + ids_rejected + ids_pending
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._chunker import Chunk
from ._errors import BulkJobError, InputError, StopReason, UnreachableError, stop_reason_for
from ._logging import get_logger, redact

if TYPE_CHECKING:  # for annotations only: the client and the source never import the report
    from ._client import ClientStats
    from ._records import SourceStats

__all__ = [
    "FailedJob",
    "JobInfo",
    "RejectedChunk",
    "RunReport",
    "RunStatus",
    "StopReason",
    "StopSignal",
    "stop_reason_for",
]

log = get_logger()


class StopSignal:
    """The run's one stop: the first reason given wins; nothing new starts after it."""

    __slots__ = ("error", "event", "listeners", "message", "reason")

    def __init__(self) -> None:
        self.reason: StopReason | None = None
        self.message: str | None = None
        #: The error behind the stop, when one was given.
        self.error: BulkJobError | None = None
        self.event = asyncio.Event()
        #: Called once, synchronously, when the stop is requested.
        self.listeners: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"<StopSignal {self.reason or 'running'}>"

    @property
    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self.reason is not None

    def request(
        self, reason: StopReason, message: str | None = None, *, error: BulkJobError | None = None
    ) -> None:
        """Stop starting new work; only the first call counts."""
        if self.reason is None:
            self.reason, self.message, self.error = reason, message, error
            self.event.set()
            # An unreachable host ends the run with that error, raised: said once, there.
            say = log.debug if isinstance(error, UnreachableError) else log.warning
            say("run.stopping", reason=reason, message=redact(message or ""))
            for listener in self.listeners:
                listener()


@dataclass(frozen=True, slots=True)
class JobInfo:
    """One accepted job and the stretch of input it holds."""

    job_id: str
    chunk: int
    ids: int
    first: str
    last: str


@dataclass(frozen=True, slots=True)
class FailedJob:
    """An accepted job that ended without results (``failed`` or ``aborted``): ``enrich``
    yields no rows for its ids."""

    job_id: str
    chunk: int
    ids: int
    status: str


@dataclass(frozen=True, slots=True)
class RejectedChunk:
    """A chunk the server refused, with the reason it gave."""

    chunk: int
    ids: int
    first: str
    last: str
    reason: str
    status: int | None = None
    error_number: str | None = None


@dataclass(slots=True, kw_only=True)
class RunReport:
    """Counts, jobs and outcome of one run (``--report PATH`` writes it as JSON)."""

    ids_read: int = 0
    ids_submitted: int = 0
    ids_invalid: int = 0
    ids_duplicate: int = 0
    ids_rejected: int = 0
    ids_pending: int = 0
    jobs: list[JobInfo] = field(default_factory=list)
    rejected: list[RejectedChunk] = field(default_factory=list)
    pending_chunks: list[int] = field(default_factory=list)
    #: Chunks whose submit has an unknown outcome, still waiting for a job to prove it.
    awaiting_proof: list[int] = field(default_factory=list)
    #: Chunks whose outcome cannot be proven (their only candidates ended aborted or
    #: failed without results): ``resume --resubmit-ambiguous/--abandon-ambiguous``.
    ambiguous_chunks: list[int] = field(default_factory=list)
    #: Chunks whose lost answer was settled by a job's results (accepted or not).
    proven_chunks: list[int] = field(default_factory=list)
    invalid_samples: list[str] = field(default_factory=list)
    requests: int = 0
    throttled: int = 0
    retries: int = 0
    stop_reason: StopReason | None = None
    stop_message: str | None = None
    elapsed_s: float = 0.0
    settings: dict[str, object] = field(default_factory=dict)
    journal: str | None = None
    #: False when the run stopped reading early (a signal, a broken input): the counts
    #: then cover the input up to where reading stopped.
    input_complete: bool = False
    resumed: bool = False
    credits_remaining: int | None = None
    #: The account's running-job limit the run kept to, and where it came from:
    #: "setting", "message" (the queue-full answer's number), "open jobs" (counted at the
    #: first queue-full), or None when the run never met it.
    running_job_limit: int | None = None
    running_job_limit_source: str | None = None
    #: Queue-full answers met, and job status requests made to see finishes.
    queue_full_answers: int = 0
    status_polls: int = 0
    #: Things the user should know that did not stop the run (e.g. credits running short).
    warnings: list[str] = field(default_factory=list)
    #: ``enrich``: jobs that ended failed or aborted (no rows), and rows handed over.
    failed_jobs: list[FailedJob] = field(default_factory=list)
    rows_delivered: int = 0

    # -- tallies: each chunk of the input lands in exactly one of these, once -------------

    def add_accepted(self, chunk: Chunk, job_id: str, *, earlier: bool = False) -> None:
        """``chunk`` is job ``job_id`` (``earlier``: accepted by a previous command)."""
        self.jobs.append(JobInfo(job_id, chunk.seq, len(chunk), str(chunk.first), str(chunk.last)))
        self.ids_submitted += len(chunk)
        if not earlier:
            log.info("job.accepted", job_id=job_id, chunk=chunk.seq, ids=len(chunk))

    def add_rejected(
        self,
        chunk: Chunk,
        reason: str,
        status: int | None = None,
        error_number: str | None = None,
    ) -> None:
        """The server refused ``chunk`` (or the user abandoned it)."""
        first, last = str(chunk.first), str(chunk.last)
        self.rejected.append(
            RejectedChunk(chunk.seq, len(chunk), first, last, reason, status, error_number)
        )
        self.ids_rejected += len(chunk)
        log.warning("job.rejected", chunk=chunk.seq, ids=len(chunk), reason=reason)

    def add_pending(
        self, chunk: Chunk, *, awaiting_proof: bool = False, ambiguous: bool = False
    ) -> None:
        """``chunk`` is not accepted yet: the next ``resume`` takes it on."""
        self.ids_pending += len(chunk)
        self.pending_chunks.append(chunk.seq)
        if awaiting_proof:
            self.awaiting_proof.append(chunk.seq)
        if ambiguous:
            self.ambiguous_chunks.append(chunk.seq)

    @property
    def accounted(self) -> bool:
        """True when every id read is in exactly one outcome bucket."""
        return self.ids_read == (
            self.ids_submitted
            + self.ids_invalid
            + self.ids_duplicate
            + self.ids_rejected
            + self.ids_pending
        )

    @property
    def ok(self) -> bool:
        """The run finished with nothing pending and nothing rejected."""
        return self.stop_reason is None and not self.rejected and self.ids_pending == 0

    def to_dict(self) -> dict[str, object]:
        """Plain data for JSON; secrets are scrubbed from every message."""
        data = asdict(self)
        data["accounted"] = self.accounted
        if self.stop_message:
            data["stop_message"] = redact(self.stop_message)
        return data

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Write the report atomically (a reader never sees half a file)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".report-", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(self.to_dict(), out, indent=2)
                out.write("\n")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def finish(self, stats: SourceStats, stop: StopSignal, elapsed: float, files: str) -> None:
        """Close the books once the run ended: counts from the source, the stop reason,
        and whatever was read but never reached a worker, as pending."""
        self.ids_read, self.ids_invalid = stats.ids_read, stats.ids_invalid
        self.ids_duplicate = stats.ids_duplicate
        self.stop_reason, self.stop_message = stop.reason, stop.message
        if self.ambiguous_chunks and self.stop_reason is None:
            shown = ", ".join(map(str, sorted(self.ambiguous_chunks)[:10]))
            self.stop_reason = "ambiguous"
            self.stop_message = (
                f"{len(self.ambiguous_chunks)} chunk(s) may or may not have been accepted and "
                f"no job can prove which: {shown}. Resume with --resubmit-ambiguous to send "
                "them again (may pay twice) or --abandon-ambiguous to give them up"
            )
        for bucket in (self.pending_chunks, self.ambiguous_chunks, self.awaiting_proof):
            bucket.sort()
        self.proven_chunks.sort()
        self.jobs.sort(key=lambda j: j.chunk)
        self.rejected.sort(key=lambda j: j.chunk)
        self.invalid_samples = [
            f"{x.origin}: {x.value!r}: {x.reason}" for x in stats.invalid_samples
        ]
        self.elapsed_s = round(elapsed, 3)
        if not self.input_complete:
            # Ids read into chunks that never reached a worker are pending too.
            self.ids_pending += (
                stats.ids_valid - self.ids_submitted - self.ids_rejected - self.ids_pending
            )
        if stats.ids_valid == 0 and self.stop_reason is None:
            first = f" (first: {self.invalid_samples[0]})" if self.invalid_samples else ""
            raise InputError(files, 0, f"no valid ids: {stats.ids_invalid:,} invalid{first}")
        log.info(
            "run.finished" if self.stop_reason is None else "run.stopped",
            reason=self.stop_reason,
            submitted=self.ids_submitted,
            pending=self.ids_pending,
            jobs=len(self.jobs),
        )

    def count_requests(self, stats: ClientStats) -> None:
        """The client's request counters."""
        self.requests, self.throttled, self.retries = stats.requests, stats.throttled, stats.retries

    def summary(self) -> str:
        """A few human lines for the end of a CLI run."""
        lines = [
            f"ids read {self.ids_read:,}: submitted {self.ids_submitted:,} in "
            f"{len(self.jobs):,} jobs, invalid {self.ids_invalid:,}, duplicate "
            f"{self.ids_duplicate:,}, rejected {self.ids_rejected:,}, pending {self.ids_pending:,}",
            f"requests {self.requests:,} (throttled {self.throttled:,}, retries {self.retries:,}) "
            f"in {self.elapsed_s:,.1f}s",
        ]
        for sample in self.invalid_samples[:5]:
            lines.append(f"invalid: {sample}")
        for rej in self.rejected[:5]:
            lines.append(f"rejected chunk {rej.chunk} ({rej.first}..{rej.last}): {rej.reason}")
        if self.proven_chunks:
            lines.append(f"{len(self.proven_chunks):,} lost answer(s) settled by proof")
        if self.awaiting_proof:
            lines.append(f"{len(self.awaiting_proof):,} chunk(s) awaiting proof")
        if self.running_job_limit is not None:
            lines.append(
                f"running-job limit {self.running_job_limit} ({self.running_job_limit_source}): "
                f"{self.queue_full_answers:,} queue-full answer(s), "
                f"{self.status_polls:,} status poll(s)"
            )
        for job in self.failed_jobs[:5]:
            lines.append(f"job {job.job_id} (chunk {job.chunk}, {job.ids:,} ids): {job.status}")
        lines += [f"warning: {w}" for w in self.warnings]
        if self.stop_reason:
            lines.append(f"stopped: {self.stop_reason}: {redact(self.stop_message or '')}")
        return "\n".join(lines)


#: Display order; anything else the server or a newer journal says comes after, sorted.
_STATE_ORDER = ("pending", "sending", "accepted", "rejected", "unknown", "ambiguous", "abandoned")
_STATUS_ORDER = ("accepted", "processing", "finished", "failed", "aborted")


@dataclass(frozen=True, slots=True)
class RunStatus:
    """Where a run's chunks and jobs stand, as the journal knows it (after any refresh)."""

    #: Journal state (pending, accepted, rejected, ...) -> (chunks, ids).
    chunks: Mapping[str, tuple[int, int]]
    #: Last known server status of accepted jobs (accepted, processing, ...) -> (jobs, ids).
    jobs: Mapping[str, tuple[int, int]]
    total_chunks: int
    total_ids: int
    total_jobs: int
    #: Jobs whose last known status is not final (finished, failed, aborted).
    open_jobs: int
    #: Jobs whose status was asked of the server by the call that made this snapshot.
    refreshed: int = 0
    #: What settled each chunk whose answer was lost: (chunk, state, evidence).
    evidence: tuple[tuple[int, str, str], ...] = ()

    @property
    def all_final(self) -> bool:
        """True when no job is still queued or processing."""
        return self.open_jobs == 0

    def render(self) -> str:
        """A plain-text table: chunks by journal state, then jobs by server status."""
        lines = [f"{'chunk state':<16}{'chunks':>10}{'ids':>14}"]
        lines += [f"  {k:<14}{c:>10,}{i:>14,}" for k, (c, i) in _ordered(self.chunks, _STATE_ORDER)]
        lines.append(f"  {'total':<14}{self.total_chunks:>10,}{self.total_ids:>14,}")
        lines.append("")
        lines.append(f"{'job status':<16}{'jobs':>10}{'ids':>14}")
        lines += [f"  {k:<14}{c:>10,}{i:>14,}" for k, (c, i) in _ordered(self.jobs, _STATUS_ORDER)]
        job_ids = sum(i for _, i in self.jobs.values())
        lines.append(f"  {'total':<14}{self.total_jobs:>10,}{job_ids:>14,}")
        if self.open_jobs:
            lines.append(f"{self.open_jobs:,} job(s) not finished yet")
        if self.evidence:
            lines.append("")
            lines.append("lost answers and their proof")
            lines += [f"  chunk {seq:,} -> {state}: {why}" for seq, state, why in self.evidence]
        unsettled = [k for k in ("pending", "sending", "unknown", "ambiguous") if k in self.chunks]
        if unsettled:
            lines.append(f"chunks {', '.join(unsettled)}: `bulkjob resume` takes them on")
        return "\n".join(lines)


def _ordered(
    counts: Mapping[str, tuple[int, int]], order: tuple[str, ...]
) -> list[tuple[str, tuple[int, int]]]:
    rank = {k: n for n, k in enumerate(order)}
    return sorted(counts.items(), key=lambda kv: (rank.get(kv[0], len(order)), kv[0]))
