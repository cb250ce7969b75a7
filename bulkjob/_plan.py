"""A dry run: what a submit (or a resume) would send, and whether the account can pay.

It reads the inputs as the run would (the pre-pass, then every id, validated and
chunked), leaves out the chunks a journal already settled, and asks ``GET
/admin/usage`` once for the account's credits. No job is submitted and nothing is
written to a journal: one usage request is all that reaches the server, through the
throttle window of the journal when there is one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from ._account import read_credits
from ._chunker import chunked_blocks
from ._client import ApiClient
from ._errors import BulkJobError
from ._journal import Journal
from ._journal_schema import UNSETTLED, ChunkRow, ChunkState
from ._network import new_session
from ._settings import Settings
from ._source import IdSource

__all__ = ["Plan", "plan"]

_SETTLED = frozenset({ChunkState.ACCEPTED, ChunkState.REJECTED, ChunkState.ABANDONED})


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run over these inputs needs. One credit per id submitted."""

    files: tuple[str, ...]
    lines: int
    ids_valid: int
    ids_invalid: int
    ids_duplicate: int
    #: Jobs (chunks) a run would submit, and their ids: the credits it needs.
    jobs: int
    ids_to_submit: int
    #: On a resume: chunks (and ids) the journal already settled, and those whose
    #: outcome is still being proven (resume decides about them; counted as to submit).
    jobs_done: int = 0
    ids_done: int = 0
    jobs_unsettled: int = 0
    credits_remaining: int | None = None
    credits_error: str | None = None

    @property
    def fits(self) -> bool | None:
        """Whether the account's credits cover the ids to submit (None: unknown)."""
        if self.credits_remaining is None:
            return None
        return self.credits_remaining >= self.ids_to_submit

    def render(self) -> str:
        """A few lines for a person."""
        lines = [
            f"inputs: {', '.join(self.files) or '-'} ({self.lines:,} lines)",
            f"ids: {self.ids_valid:,} valid, {self.ids_invalid:,} invalid, "
            f"{self.ids_duplicate:,} duplicate",
        ]
        if self.jobs_done or self.ids_done or self.jobs_unsettled:
            lines.append(
                f"journal: {self.jobs_done:,} job(s) ({self.ids_done:,} ids) settled, "
                f"{self.jobs_unsettled:,} of unknown outcome (resume decides)"
            )
        lines.append(
            f"would submit: {self.ids_to_submit:,} ids in {self.jobs:,} job(s); "
            f"credits needed: {self.ids_to_submit:,}"
        )
        if self.credits_remaining is not None:
            verdict = "enough" if self.fits else "NOT enough"
            lines.append(f"credits left on the account: {self.credits_remaining:,} ({verdict})")
        else:
            lines.append(f"credits left on the account: unknown ({self.credits_error})")
        lines.append("dry run: nothing was submitted")
        return "\n".join(lines)


async def plan(
    settings: Settings,
    inputs: Sequence[str],
    *,
    journal: Journal | None = None,
    stdin: BinaryIO | None = None,
) -> Plan:
    """Count what a run would send (skipping what ``journal`` settled) and ask for credits."""
    settings.require_credentials()
    # A journal of ids= reads its spool as the run does: items, markers and all.
    spooled = journal is not None and journal.ids_record() is not None

    def source(stdin: BinaryIO | None = None) -> IdSource:
        return IdSource(
            inputs,
            column=settings.column,
            id_pattern=settings.id_pattern,
            dedupe=settings.dedupe,
            strict=settings.strict,
            stdin=stdin,
            spooled_ids=spooled,
        )

    with source(stdin) as reading:
        summary = await asyncio.to_thread(reading.check)
        rows: dict[int, ChunkRow] = {}
        if journal is not None:  # the inputs must be the journaled ones, as on resume
            with source() as again:
                await asyncio.to_thread(again.check)
                chunks = chunked_blocks(again.blocks(), settings.chunk_size)
                rows = await asyncio.to_thread(journal.resumable_rows, chunks, list(inputs))
        counts = await asyncio.to_thread(_count, reading, settings.chunk_size, rows)
        stats = reading.stats
    remaining, error = await _credits(settings)
    jobs, ids, jobs_done, ids_done, unsettled = counts
    return Plan(
        files=tuple(summary.files),
        lines=summary.lines,
        ids_valid=stats.ids_valid,
        ids_invalid=stats.ids_invalid,
        ids_duplicate=stats.ids_duplicate,
        jobs=jobs,
        ids_to_submit=ids,
        jobs_done=jobs_done,
        ids_done=ids_done,
        jobs_unsettled=unsettled,
        credits_remaining=remaining,
        credits_error=error,
    )


def _count(source: IdSource, size: int, rows: dict[int, ChunkRow]) -> tuple[int, ...]:
    """(jobs, ids) to submit, (jobs, ids) already settled, chunks of unknown outcome."""
    jobs = ids = jobs_done = ids_done = unsettled = 0
    for chunk in chunked_blocks(source.blocks(), size):
        row = rows.get(chunk.seq)
        if row is not None and row.state in _SETTLED:
            jobs_done += 1
            ids_done += len(chunk)
            continue
        if row is not None and row.state in UNSETTLED:
            unsettled += 1
        jobs += 1
        ids += len(chunk)
    return jobs, ids, jobs_done, ids_done, unsettled


async def _credits(settings: Settings) -> tuple[int | None, str | None]:
    """The account's remaining credits, or why they are unknown (one request, through
    the account's shared window)."""
    async with new_session(settings) as session:
        client = ApiClient.for_settings(settings, session)
        try:
            return await read_credits(client), None
        except BulkJobError as exc:
            return None, str(exc)
        finally:
            await client.aclose()
