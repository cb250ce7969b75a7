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
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import aiohttp

from ._auth import TokenSource
from ._chunker import Chunk, chunked
from ._client import ApiClient
from ._errors import (
    AuthError,
    BulkJobError,
    ConfigError,
    InputError,
    JobRejectedError,
    ProtocolError,
    QueueFullError,
    QuotaExhaustedError,
    TransportError,
)
from ._limiter import WindowLimiter
from ._logging import get_logger, redact
from ._report import JobInfo, RejectedChunk, RunReport, StopReason
from ._settings import Settings
from ._source import IdSource, InputSummary

__all__ = ["Progress", "ProgressSink", "Runner"]

log = get_logger()
_PROGRESS_INTERVAL = 0.5


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for progress displays."""

    ids_total: int  # upper bound from the pre-pass (physical lines)
    ids_read: int
    ids_submitted: int
    jobs: int
    throttled: int
    requests: int
    elapsed_s: float
    stopping: StopReason | None


class ProgressSink(Protocol):
    """Receives snapshots every half second while a run goes on."""

    def update(self, progress: Progress) -> None: ...

    def close(self) -> None: ...


def _stop_reason(exc: BulkJobError) -> StopReason:
    if isinstance(exc, QuotaExhaustedError):
        return "quota"
    if isinstance(exc, QueueFullError):
        return "queue_full"
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, TransportError):
        return "transport"
    return "protocol"


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
    ) -> None:
        self.settings = settings
        self.inputs = list(inputs)
        self._stdin = stdin
        self._progress = progress
        self._external_session = session
        self.report = RunReport(settings=settings.public())
        self.summary: InputSummary | None = None
        self._stop: StopReason | None = None
        self._stopped = asyncio.Event()
        self._pending_ids = 0
        self._client: ApiClient | None = None
        self._source: IdSource | None = None
        self._started = 0.0

    def __repr__(self) -> str:
        r = self.report
        return f"<Runner submitted={r.ids_submitted} jobs={len(r.jobs)} stop={self._stop}>"

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
        if not s.has_credentials:
            raise ConfigError(
                "no credentials: set INSIDEVIEW_ACCESS_TOKEN (or --access-token), or "
                "INSIDEVIEW_CLIENT_ID and INSIDEVIEW_CLIENT_SECRET"
            )
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
            log.info("run.started", inputs=list(self.summary.files), lines=self.summary.lines)
            session = self._external_session or _new_session(s)
            try:
                await self._pipeline(session, source)
            finally:
                if self._external_session is None:
                    await session.close()
        finally:
            source.close()
            if self._progress is not None:
                self._progress.close()
        self._finish(source)
        return self.report

    async def _pipeline(self, session: aiohttp.ClientSession, source: IdSource) -> None:
        s = self.settings
        limiter = WindowLimiter(
            s.max_requests,
            s.per_seconds,
            margin=s.window_margin,
            initial_delay=s.throttle_initial_delay,
        )
        self._client = ApiClient(s, session, limiter, TokenSource(s, session))
        queue: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=s.concurrency)
        chunks = chunked(iter(source), s.chunk_size)
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
        """Feed chunks to the workers; after a stop, keep reading only to count pending ids."""
        try:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                if self._stop is not None:
                    self._pending(chunk)
                else:
                    await queue.put(chunk)
        except InputError as exc:
            # The input changed after the pre-pass found it fine: stop, keep the count.
            self.request_stop("input", str(exc))
        for _ in range(self.settings.concurrency):
            await queue.put(None)

    async def _work(self, queue: asyncio.Queue[Chunk | None]) -> None:
        assert self._client is not None
        while True:
            chunk = await queue.get()
            if chunk is None:
                return
            if self._stop is not None:
                self._pending(chunk)
                continue
            try:
                accepted = await self._client.submit(chunk)
            except JobRejectedError as exc:
                self._rejected(chunk, exc)
            except (
                QuotaExhaustedError,
                QueueFullError,
                AuthError,
                TransportError,
                ProtocolError,
            ) as exc:
                self._pending(chunk)
                self.request_stop(_stop_reason(exc), str(exc))
            except asyncio.CancelledError:
                self._pending(chunk)
                raise
            else:
                info = JobInfo(
                    accepted.job_id, chunk.seq, len(chunk), str(chunk.first), str(chunk.last)
                )
                self.report.jobs.append(info)
                self.report.ids_submitted += len(chunk)
                log.info("job.accepted", job_id=accepted.job_id, chunk=chunk.seq, ids=len(chunk))

    def _pending(self, chunk: Chunk) -> None:
        self._pending_ids += len(chunk)
        self.report.pending_chunks.append(chunk.seq)

    def _rejected(self, chunk: Chunk, exc: JobRejectedError) -> None:
        reason = redact(exc.server_message or str(exc))
        self.report.rejected.append(
            RejectedChunk(
                chunk.seq,
                len(chunk),
                str(chunk.first),
                str(chunk.last),
                reason,
                exc.status,
                exc.error_number,
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
        r.jobs.sort(key=lambda j: j.chunk)
        r.rejected.sort(key=lambda j: j.chunk)
        r.invalid_samples = [f"{x.origin}: {x.value!r}: {x.reason}" for x in st.invalid_samples]
        if self._client is not None:
            r.requests = self._client.stats.requests
            r.throttled = self._client.stats.throttled
            r.retries = self._client.stats.retries
        r.elapsed_s = round(time.monotonic() - self._started, 3)
        if r.stop_reason == "input":
            # The chunk being built when the input broke never reached a worker.
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


def _new_session(settings: Settings) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout, sock_read=settings.request_timeout
    )
    connector = aiohttp.TCPConnector(limit=settings.concurrency + 2)
    return aiohttp.ClientSession(timeout=timeout, connector=connector, raise_for_status=False)
