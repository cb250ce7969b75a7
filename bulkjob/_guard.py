"""Exactly-once around each submit: the write-ahead journal and the reconciliation of
submits whose answer never came.

:class:`SubmitGuard` is what the runner plugs into :meth:`ApiClient.submit` (the
``SubmitHooks`` protocol):

- ``admit`` — before a limiter slot is taken: held while a reconcile runs;
- ``sending`` — a limiter slot is held and the request is about to leave: the chunk is
  made durably ``sending`` in the journal first, so a crash at any later point leaves
  a trace to reconcile;
- ``answered`` — the request is over (answered or not): it no longer counts in flight;
- ``reconcile`` — no answer came back: new submits are held and those in flight allowed
  to finish, so that every job on the account except the unanswered ones is known to
  the run, and only then is the job list read (see :mod:`bulkjob._reconcile`).

On resume, :meth:`SubmitGuard.settle_rows` does the same for chunks a crash left
``sending`` (or a run left ``ambiguous``) before anything new is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from ._chunker import Chunk
from ._client import ApiClient
from ._errors import AmbiguousError, BulkJobError
from ._journal import ChunkRow, Journal
from ._logging import get_logger, redact
from ._reconcile import UNRESOLVED, Ambiguous, Reconciler
from ._settings import Settings

__all__ = ["AmbiguousPolicy", "StopRequested", "SubmitGuard"]

#: What resume does with chunks whose submit has no known outcome.
AmbiguousPolicy = Literal["stop", "resubmit", "abandon"]

log = get_logger()


class StopRequested(BulkJobError):
    """The run is stopping: a submit that has not left yet is not sent."""


class SubmitGuard:
    """Journals each submit ahead of sending and reconciles the ones left unanswered."""

    def __init__(
        self,
        settings: Settings,
        journal: Journal | None,
        rows: Mapping[int, ChunkRow],
        *,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._settings = settings
        self._stopping = stopping
        self._journal = journal
        #: Job ids this run knows it owns: excluded when matching the account's job list.
        self.known_jobs: set[str] = {r.job_id for r in rows.values() if r.job_id}
        self._sent_at: dict[int, float] = {}
        # Accepted job -> when its request left: calibrates server creation times.
        self._sent_of_job = {r.job_id: r.sent_at for r in rows.values() if r.job_id and r.sent_at}
        self._reconciler: Reconciler | None = None
        self._gate = asyncio.Event()  # open unless a reconcile needs the account quiet
        self._gate.set()
        self._idle = asyncio.Event()  # set while no submit is in flight
        self._idle.set()
        self._in_flight = 0
        self._reconciling = 0

    def __repr__(self) -> str:
        return (
            f"<SubmitGuard in_flight={self._in_flight} reconciling={self._reconciling} "
            f"known_jobs={len(self.known_jobs)}>"
        )

    def attach(self, client: ApiClient) -> None:
        """Use ``client`` for job-list lookups."""
        self._reconciler = Reconciler(self._settings, client, self.known_jobs, self._sent_of_job)

    # -- SubmitHooks ---------------------------------------------------------------------

    async def admit(self, chunk: Chunk) -> None:
        """Hold new submits while a reconcile needs a quiet account.

        Waited on before a limiter slot is taken: the reconcile's own job-list request
        needs a slot, and held-back submits must not be sitting on all of them.
        """
        # Re-checked after each wake: another reconcile may close it in the same tick.
        while not self._gate.is_set():
            await self._gate.wait()

    async def sending(self, chunk: Chunk) -> None:
        """Journal the chunk as ``sending`` (durably) just before its request leaves.

        A stop requested while this request waited for its slot wins: nothing is sent.
        """
        if self._stopping():
            raise StopRequested(f"chunk {chunk.seq}: the run is stopping")
        self._in_flight += 1
        self._idle.clear()
        self._sent_at[chunk.seq] = time.time()
        if self._journal is not None:
            await self._journal.sending(chunk)

    def answered(self, chunk: Chunk) -> None:
        """The request is over, answered or not."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    async def reconcile(self, chunk: Chunk, *, timed_out: bool) -> str | None:
        """A submit got no answer: the job id it became, or None if it certainly did not."""
        assert self._reconciler is not None, "attach() a client first"
        sent_at = self._sent_at.get(chunk.seq, time.time())
        if timed_out:
            # The server may still create the job: nothing about this chunk is asked (or
            # decided alongside another chunk) before reconcile_grace has passed since
            # the send. Other submits go on meanwhile.
            await asyncio.sleep(max(sent_at + self._settings.reconcile_grace - time.time(), 0))
        self._reconciling += 1
        self._gate.clear()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self._settings.request_timeout)
            return await self._reconciler.resolve_one(chunk.seq, len(chunk), sent_at)
        except LookupError as exc:
            raise AmbiguousError(
                "submit got no answer and the job list cannot tell whether it was accepted",
                chunk=chunk.seq,
                server_message=str(exc),
            ) from None
        finally:
            self._reconciling -= 1
            if not self._reconciling:
                self._gate.set()

    # -- outcomes --------------------------------------------------------------------------

    async def accepted(self, seq: int, job_id: str) -> None:
        """Record the job a chunk became: known at once, then durably journaled."""
        self.known_jobs.add(job_id)  # before any await: a reconcile may be listing jobs
        if seq in self._sent_at:
            self._sent_of_job[job_id] = self._sent_at[seq]
        if self._journal is not None:
            await self._journal.accepted(seq, job_id)

    async def settle(self, seq: int, state: str, error: str | None) -> None:
        """Journal a chunk's new state (pending, rejected, ambiguous, abandoned)."""
        if self._journal is not None:
            await self._journal.settle(seq, state, redact(error or "") or None)

    async def settle_rows(
        self, rows: Iterable[ChunkRow], policy: AmbiguousPolicy
    ) -> tuple[list[ChunkRow], list[ChunkRow]]:
        """Reconcile rows left ``sending``/``ambiguous``; returns (updated, unresolved).

        Unresolved rows are resubmitted, abandoned or kept ambiguous as ``policy`` says.
        """
        rows = [r for r in rows if r.state in ("sending", "ambiguous")]
        if not rows:
            return [], []
        assert self._reconciler is not None, "attach() a client first"
        outcome = await self._reconciler.resolve(
            [Ambiguous(r.seq, r.ids, r.sent_at or 0.0) for r in rows]
        )
        updated: list[ChunkRow] = []
        unresolved: list[ChunkRow] = []
        for row in rows:
            found = outcome.get(row.seq, UNRESOLVED)
            if found == UNRESOLVED:
                unresolved.append(row)
                new_state = {"resubmit": "pending", "abandon": "abandoned"}.get(policy)
                if new_state is not None:
                    await self.settle(row.seq, new_state, f"{new_state} by request")
                updated.append(_with(row, new_state or "ambiguous", None))
            elif found is None:
                await self.settle(row.seq, "pending", "reconciled: not accepted")
                updated.append(_with(row, "pending", None))
            else:
                await self.accepted(row.seq, found)
                updated.append(_with(row, "accepted", found))
            log.info("chunk.reconciled", chunk=row.seq, state=updated[-1].state, job_id=found)
        return updated, unresolved


def _with(row: ChunkRow, state: str, job_id: str | None) -> ChunkRow:
    return ChunkRow(
        row.seq,
        row.first,
        row.last,
        row.ids,
        row.digest,
        state,
        job_id,
        row.attempts,
        row.last_error,
        row.sent_at,
        row.job_status,
        row.results_path,
    )
