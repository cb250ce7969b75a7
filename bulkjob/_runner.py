"""The pipeline: input source → chunker → bounded queue → ``concurrency`` submitters.

Memory stays flat whatever the input size: the source streams, the queue holds at
most ``concurrency`` chunks, and only per-job summaries are kept for the report.

A stop (quota exhausted, queue full, auth failure, retries exhausted, a signal) is
cooperative: no new submission starts, requests in flight finish (bounded by
``drain_timeout``), and the rest of the input is still read, only to be counted as
pending, so the report accounts for every id of the input.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from ._account import QueueRoom, remaining_credits
from ._chunker import Chunk, chunked
from ._client import ApiClient, new_session
from ._errors import (
    AmbiguousError,
    AuthError,
    InputError,
    JobRejectedError,
    ProtocolError,
    QueueFullError,
    QuotaExhaustedError,
    TransportError,
)
from ._guard import AmbiguousPolicy, StopRequested, SubmitGuard
from ._journal import ChunkRow, Journal, verify_chunks
from ._logging import get_logger, redact
from ._progress import Progress, ProgressSink
from ._report import JobInfo, RejectedChunk, RunReport, StopReason, stop_reason_for
from ._settings import Settings
from ._source import IdSource, InputSummary

__all__ = ["AmbiguousPolicy", "Progress", "ProgressSink", "Runner"]  # the sinks, re-exported


log = get_logger()
_PROGRESS_INTERVAL = 0.5


class Runner:
    """One submit run over some inputs. Belongs to the event loop it runs on."""

    def __init__(
        self,
        settings: Settings,
        inputs: Sequence[str],
        *,
        stdin: BinaryIO | None = None,
        progress: ProgressSink | None = None,
        session: aiohttp.ClientSession | None = None,
        journal: str | os.PathLike[str] | None = None,
        resume: bool = False,
        ambiguous: AmbiguousPolicy = "stop",
    ) -> None:
        self.settings = settings
        self.inputs = list(inputs)
        self.journal_path = Path(journal) if journal is not None else None
        self._resume = resume
        self._ambiguous_policy = ambiguous
        self._journal: Journal | None = None
        self._rows: dict[int, ChunkRow] = {}
        self._guard = SubmitGuard(settings, None, {})  # replaced once the journal is open
        self._preflight_lock = asyncio.Lock()
        self._preflight_done = False
        self._stdin = stdin
        self._progress = progress
        self._external_session = session
        self.report = RunReport(settings=settings.public())
        self.summary: InputSummary | None = None
        self._stop: StopReason | None = None
        self._stopped = asyncio.Event()
        self._room = QueueRoom(settings, None, self._stopped)  # replaced with the journal's
        self._pending_ids = 0
        self._client: ApiClient | None = None
        self._source: IdSource | None = None
        self._started = 0.0

    def __repr__(self) -> str:
        r = self.report
        return f"<Runner submitted={r.ids_submitted} jobs={len(r.jobs)} stop={self._stop}>"

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (no new submission starts)."""
        return self._stop is not None

    def request_stop(self, reason: StopReason = "interrupted", message: str | None = None) -> None:
        """Stop starting new submissions; the first reason given is the one reported."""
        if self._stop is None:
            self._stop = reason
            self.report.stop_reason = reason
            self.report.stop_message = message
            self._stopped.set()
            log.warning("run.stopping", reason=reason, message=redact(message or ""))

    async def run(self) -> RunReport:
        """Run to the end (or to a stop) and return the report."""
        s = self.settings
        s.require_credentials()
        self._started = time.monotonic()
        source = IdSource(
            self.inputs,
            column=s.column,
            id_pattern=s.id_pattern,
            dedupe=s.dedupe,
            strict=s.strict,
            stdin=self._stdin,
        )
        self._source = source
        try:
            self.summary = await asyncio.to_thread(source.check)
            if self.journal_path is not None:
                await asyncio.to_thread(self._open_journal, source)
            log.info(
                "run.started",
                inputs=list(self.summary.files),
                lines=self.summary.lines,
                journal=str(self.journal_path) if self.journal_path else None,
            )
            session = self._external_session or new_session(s)
            try:
                await self._pipeline(session, source)
            finally:
                if self._external_session is None:
                    await session.close()
        finally:
            source.close()
            if self._journal is not None:
                try:
                    if self._client is not None:
                        await self._journal.save_recent_requests(self._client.limiter.history())
                finally:
                    await self._journal.close()
            if self._progress is not None:
                self._progress.close()
        self._finish(source)
        return self.report

    def _open_journal(self, source: IdSource) -> None:
        """Create the journal, or open it for resume and prove the input unchanged."""
        assert self.journal_path is not None
        if not self._resume:
            inputs = [str(Path(p).resolve()) if p != "-" else p for p in self.inputs]
            self._journal = Journal.create(self.journal_path, self.settings.public(), inputs)
            self.report.journal = str(self.journal_path)
            return
        journal = Journal.open(self.journal_path)
        self._journal = journal
        self.report.journal = str(self.journal_path)
        self.report.resumed = True
        journal.check_identity()
        self._rows = {row.seq: row for row in journal.rows()}
        records = iter(source)
        chunks = chunked(records, self.settings.chunk_size)
        try:
            verify_chunks(self._rows, chunks, self.inputs)
        finally:  # verification may stop early: release the open input file now
            _close(chunks, records)

    async def _pipeline(self, session: aiohttp.ClientSession, source: IdSource) -> None:
        s = self.settings
        history = self._journal.recent_requests() if self._journal is not None else []
        self._client = ApiClient.for_settings(s, session, history)
        self._guard = SubmitGuard(s, self._journal, self._rows, stopping=lambda: self.stopping)
        self._room = QueueRoom(s, self._journal, self._stopped)
        self._room.client = self._client
        self._guard.attach(self._client)
        await self._reconcile_rows()
        queue: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=s.concurrency)
        records = iter(source)
        chunks = chunked(records, s.chunk_size)
        tasks = [asyncio.create_task(self._read(chunks, queue))]
        if self._progress is not None:
            tasks.append(asyncio.create_task(self._tick()))
        workers = [asyncio.create_task(self._work(queue)) for _ in range(s.concurrency)]
        try:
            if await self._await_workers(workers):
                # In-flight work was cancelled: a worker that only counts what is still
                # queued as pending lets the reader finish its count.
                await self._work(queue)
            await tasks[0]
        finally:
            for task in tasks + workers:
                task.cancel()
            await asyncio.gather(*tasks, *workers, return_exceptions=True)
            # Close the generators now, so the source's counts include what they had read.
            _close(chunks, records)

    async def _await_workers(self, workers: list[asyncio.Task[None]]) -> bool:
        """Wait for the workers; once a stop is requested, give in-flight requests
        ``drain_timeout`` seconds, then cancel them (their chunks count as pending).
        Returns True if workers had to be cancelled."""
        stop_wait = asyncio.ensure_future(self._stopped.wait())
        cancelled = False
        try:
            pending: set[asyncio.Future[Any]] = {*workers, stop_wait}
            while pending - {stop_wait}:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stop_wait}:
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if stop_wait in done:
                    if not pending:
                        break
                    _, late = await asyncio.wait(pending, timeout=self.settings.drain_timeout)
                    if late:
                        log.warning("run.drain_timeout", seconds=self.settings.drain_timeout)
                        for task in late:
                            task.cancel()
                        await asyncio.gather(*late, return_exceptions=True)
                        cancelled = True
                    break
            return cancelled
        finally:
            stop_wait.cancel()

    async def _read(self, chunks: Iterator[Chunk], queue: asyncio.Queue[Chunk | None]) -> None:
        """Feed chunks to the workers; after a stop, keep reading only to count pending ids.

        Reading runs in a thread of its own that keeps going while the loop sends, handing
        chunks over without waiting for each hand-off (a round trip per chunk through the
        loop would stall the reader at every GIL switch). A semaphore bounds how far it
        may run ahead, so memory stays flat.
        """
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue()
        room = threading.Semaphore(2 * self.settings.concurrency)
        quit_reading = threading.Event()
        journaled = self._journal is not None

        def produce() -> None:
            try:
                for chunk in chunks:
                    if journaled:
                        _ = chunk.digest  # hashed here, off the loop (it is cached)
                    room.acquire()
                    if quit_reading.is_set():
                        return
                    loop.call_soon_threadsafe(inbox.put_nowait, chunk)
                loop.call_soon_threadsafe(inbox.put_nowait, None)
            except BaseException as exc:  # handed to the loop, which decides
                loop.call_soon_threadsafe(inbox.put_nowait, exc)

        reader = loop.run_in_executor(None, produce)
        try:
            while (item := await inbox.get()) is not None:
                if isinstance(item, InputError):
                    # The input changed after the pre-pass found it fine: stop, keep counts.
                    self.request_stop("input", str(item))
                    break
                if isinstance(item, BaseException):
                    raise item
                await self._route(item, queue)
                room.release()
                if self._stop == "interrupted":
                    break  # a signal stops the reading too; what was read counts as pending
            else:
                self.report.input_complete = True
        finally:
            quit_reading.set()
            room.release()  # wake the reader if it waits for room
            await asyncio.shield(reader)
        for _ in range(self.settings.concurrency):
            await queue.put(None)

    async def _route(self, chunk: Chunk, queue: asyncio.Queue[Chunk | None]) -> None:
        """Send a chunk to the workers, or account for it if the journal or a stop says so."""
        row = self._rows.get(chunk.seq)
        if row is not None and row.state == "accepted" and row.job_id:
            self._accepted(chunk, row.job_id, earlier=True)
        elif row is not None and row.state in ("rejected", "abandoned"):
            self._rejected(chunk, row.last_error or row.state, None, None)
        elif row is not None and row.state == "ambiguous":
            self._pending(chunk, ambiguous=True)
        elif self._stop is not None:
            self._pending(chunk)
        else:
            if self._journal is not None and row is None:
                await self._journal.add(chunk)
            await queue.put(chunk)

    async def _work(self, queue: asyncio.Queue[Chunk | None]) -> None:
        while True:
            chunk = await queue.get()
            if chunk is None:
                return
            if self._stop is not None:
                self._pending(chunk)
                continue
            try:
                if not self._preflight_done:
                    async with self._preflight_lock:  # the others wait for its verdict
                        if not self._preflight_done:
                            try:
                                await self._preflight()
                            finally:
                                self._preflight_done = True
                if self.stopping:  # the preflight refused to start
                    self._pending(chunk)
                    continue
                job_id = await self._submit(chunk)
            # Each outcome goes into the report before any await: a cancel landing in the
            # journal write must not leave the chunk in no bucket.
            except JobRejectedError as exc:
                reason = redact(exc.server_message or str(exc))
                self._rejected(chunk, reason, exc.status, exc.error_number)
                await self._settle(chunk.seq, "rejected", reason)
            except AmbiguousError as exc:
                self._pending(chunk, ambiguous=True)
                await self._settle(chunk.seq, "ambiguous", str(exc))
            except StopRequested:
                self._pending(chunk)  # never left: held back by the stop
                await self._settle(chunk.seq, "pending", "stopped before sending")
            except (
                QuotaExhaustedError,
                QueueFullError,
                AuthError,
                TransportError,
                ProtocolError,
            ) as exc:
                self.request_stop(stop_reason_for(exc), str(exc))  # before any await
                self._pending(chunk)
                await self._settle(chunk.seq, "pending", str(exc))
            except asyncio.CancelledError:
                # Left as the journal has it ("sending" if it may have left): resume
                # reconciles it rather than trusting either outcome.
                self._pending(chunk)
                raise
            else:
                self._accepted(chunk, job_id, earlier=False)
                await self._guard.accepted(chunk.seq, job_id)

    async def _submit(self, chunk: Chunk) -> str:
        """Submit ``chunk``; with ``on_queue_full=wait``, wait out a full queue and retry."""
        assert self._client is not None
        while True:
            try:
                return (await self._client.submit(chunk, self._guard)).job_id
            except QueueFullError:
                if self.settings.on_queue_full != "wait" or self._stop is not None:
                    raise
                await self._room.wait()
                if self._stop is not None:
                    raise

    async def _settle(self, seq: int, state: str, error: str | None) -> None:
        await self._guard.settle(seq, state, error)

    def _accepted(self, chunk: Chunk, job_id: str, *, earlier: bool) -> None:
        info = JobInfo(job_id, chunk.seq, len(chunk), str(chunk.first), str(chunk.last))
        self.report.jobs.append(info)
        self.report.ids_submitted += len(chunk)
        if not earlier:
            self._room.open_jobs[job_id] = chunk.seq
            log.info("job.accepted", job_id=job_id, chunk=chunk.seq, ids=len(chunk))

    async def _preflight(self) -> None:
        """Compare the account's remaining credits with the ids about to be sent.

        Done just before the first submit, so that an input that turns out to hold no
        valid id causes no request at all.
        """
        assert self._client is not None and self.summary is not None
        done = sum(r.ids for r in self._rows.values() if r.state == "accepted")
        need = max(self.summary.lines - done, 0)  # an upper bound: lines, not valid ids
        remaining = await remaining_credits(self._client, self.settings, need)
        self.report.credits_remaining = remaining
        if remaining is not None and remaining < need:
            print(
                f"warning: only {remaining:,} credits left for up to {need:,} ids", file=sys.stderr
            )

    async def _reconcile_rows(self) -> None:
        """On resume: settle chunks left ``sending``/``ambiguous`` before sending anything."""
        updated, unresolved = await self._guard.settle_rows(
            self._rows.values(), self._ambiguous_policy
        )
        self._rows.update((row.seq, row) for row in updated)
        if unresolved and self._ambiguous_policy == "stop":
            listed = ", ".join(f"{r.seq} ({r.first}..{r.last})" for r in unresolved[:10])
            self.request_stop(
                "ambiguous",
                f"{len(unresolved)} chunk(s) may or may not have been accepted: {listed}. "
                "Resume with --resubmit-ambiguous to send them again (may pay twice) or "
                "--abandon-ambiguous to give them up",
            )

    def _pending(self, chunk: Chunk, *, ambiguous: bool = False) -> None:
        self._pending_ids += len(chunk)
        self.report.pending_chunks.append(chunk.seq)
        if ambiguous:
            self.report.ambiguous_chunks.append(chunk.seq)

    def _rejected(
        self, chunk: Chunk, reason: str, status: int | None, error_number: str | None
    ) -> None:
        self.report.rejected.append(
            RejectedChunk(
                chunk.seq,
                len(chunk),
                str(chunk.first),
                str(chunk.last),
                reason,
                status,
                error_number,
            )
        )
        self.report.ids_rejected += len(chunk)
        log.warning("job.rejected", chunk=chunk.seq, ids=len(chunk), reason=reason)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_PROGRESS_INTERVAL)
            if self._progress is not None:
                self._progress.update(self.snapshot())

    def snapshot(self) -> Progress:
        """Where the run is now."""
        stats = self._client.stats if self._client else None
        source_stats = self._source.stats if self._source else None
        return Progress(
            ids_total=self.summary.lines if self.summary else 0,
            ids_read=source_stats.ids_read if source_stats else 0,
            ids_submitted=self.report.ids_submitted,
            jobs=len(self.report.jobs),
            throttled=stats.throttled if stats else 0,
            requests=stats.requests if stats else 0,
            elapsed_s=time.monotonic() - self._started,
            stopping=self._stop,
        )

    def _finish(self, source: IdSource) -> None:
        r = self.report
        st = source.stats
        r.ids_read = st.ids_read
        r.ids_invalid = st.ids_invalid
        r.ids_duplicate = st.ids_duplicate
        r.ids_pending = self._pending_ids
        r.pending_chunks.sort()
        r.ambiguous_chunks.sort()
        if r.ambiguous_chunks and r.stop_reason is None:
            r.stop_reason = "ambiguous"
            r.stop_message = (
                f"{len(r.ambiguous_chunks)} chunk(s) got no answer and cannot be reconciled"
            )
        r.jobs.sort(key=lambda j: j.chunk)
        r.rejected.sort(key=lambda j: j.chunk)
        r.invalid_samples = [f"{x.origin}: {x.value!r}: {x.reason}" for x in st.invalid_samples]
        if self._client is not None:
            r.requests = self._client.stats.requests
            r.throttled = self._client.stats.throttled
            r.retries = self._client.stats.retries
        r.elapsed_s = round(time.monotonic() - self._started, 3)
        if not r.input_complete:
            # Ids read into chunks that never reached a worker (the input broke, or a
            # signal stopped the reading) are pending too.
            r.ids_pending += st.ids_valid - r.ids_submitted - r.ids_rejected - r.ids_pending
        if st.ids_valid == 0 and r.stop_reason is None:
            first = f" (first: {r.invalid_samples[0]})" if r.invalid_samples else ""
            files = ", ".join(self.summary.files) if self.summary else "input"
            raise InputError(files, 0, f"no valid ids: {st.ids_invalid:,} invalid{first}")
        log.info(
            "run.finished" if r.stop_reason is None else "run.stopped",
            reason=r.stop_reason,
            submitted=r.ids_submitted,
            pending=r.ids_pending,
            jobs=len(r.jobs),
        )


def _close(*iterators: Iterator[object]) -> None:
    """Close generators (a partly read input file) now rather than at garbage collection."""
    for it in iterators:
        close = getattr(it, "close", None)
        if close is not None:
            close()
