"""The pipeline: input source → chunker → bounded queue → ``concurrency`` workers → Submitter.

Orchestration only: what happens to each chunk is :class:`~bulkjob._submitter.Submitter`'s
business, and the report keeps the tallies. Memory stays flat whatever the input size:
the source streams, the queue holds at most ``concurrency`` chunks, and only per-job
summaries are kept for the report.

A stop (quota exhausted, queue full, auth failure, retries exhausted, a signal, a
failing journal) is one :class:`~bulkjob._report.StopSignal`: no new submission
starts, requests in flight get ``drain_timeout`` seconds to finish, and the rest of the
input is still read, only to be counted as pending (a signal stops the reading too), so
the report accounts for every id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import aiohttp

from ._account import CreditCheck
from ._chunker import Chunk, chunked_blocks, read_ahead
from ._client import REQUEST_KINDS, ApiClient
from ._counts import RunCounts
from ._errors import ConfigError, InputError, JournalError, UnreachableError, first_error
from ._ids import IdSpool, spool_async
from ._ids_journal import check_given, recorded_spool, settle, spool_for, spool_place
from ._jobqueue import JobQueue
from ._journal import ChunkRow, Journal
from ._logging import get_logger
from ._network import new_session
from ._progress import Progress, ProgressLog, ProgressSink
from ._report import RunReport, StopReason, StopSignal
from ._rerun import open_for_submit
from ._settings import Settings
from ._source import IdSource, InputSummary
from ._submitter import AmbiguousPolicy, Submitter
from ._webhook import WebhookReceiver
from ._window_store import WindowStore, opened_store

__all__ = ["AmbiguousPolicy", "Progress", "ProgressSink", "Runner"]  # the sinks, re-exported

log = get_logger()
_PROGRESS_INTERVAL = 0.5


class Runner:
    """One submit (or resume) run over some inputs. Belongs to the event loop it runs on.

    ``journal`` is a path (the runner claims or opens it, and closes it at the end) or a
    :class:`Journal` handle the caller holds (claimed for a new run, or opened for a
    resume), which the runner leaves open for the caller's next command. With
    ``resume_if_exists``, a journal path that already holds this very run (same inputs,
    same chunking) is resumed instead of refused; another run's journal still is.

    ``ids`` (instead of ``inputs``) is any iterable or async iterable of id strings; it is
    spooled to a compressed file as it is read (see :mod:`bulkjob._ids`), beside the
    journal when there is one, so that a resume needs only the journal.
    """

    def __init__(
        self,
        settings: Settings,
        inputs: Sequence[str] = (),
        *,
        ids: Iterable[str] | AsyncIterable[str] | None = None,
        stdin: BinaryIO | None = None,
        progress: ProgressSink | None = None,
        session: aiohttp.ClientSession | None = None,
        journal: str | os.PathLike[str] | Journal | None = None,
        resume: bool = False,
        resume_if_exists: bool = False,
        ambiguous: AmbiguousPolicy = "stop",
        keep_journal: bool = False,
    ) -> None:
        if not resume:  # a resume reads the inputs its journal recorded
            check_given(inputs, ids)
        self.settings = settings
        self.inputs = list(inputs)
        self._ids = ids
        #: The spool of ``ids`` (or of the resumed journal's run of ids), once written.
        self._spool: IdSpool | None = None
        self._journal_arg = journal
        self._keep_journal = keep_journal
        #: The run's journal once opened (``keep_journal``: left open for the caller to close).
        self.journal: Journal | None = None
        #: Called with (job id, chunk, status) when the run's queue sees a job final.
        self.job_final_listeners: list[Callable[[str, int, str], None]] = []
        self._resume = resume
        self._resume_if_exists = resume_if_exists
        self._ambiguous = ambiguous
        self._stdin = stdin
        self._progress = progress
        self._session = session
        self.report = RunReport(settings=settings.public())
        self.stop = StopSignal()
        self.stop.listeners.append(self._drain)
        self.summary: InputSummary | None = None
        self._source: IdSource | None = None
        self._client: ApiClient | None = None
        self._submitter: Submitter | None = None
        self._deadlines: set[asyncio.Timeout] = set()
        self._credits: CreditCheck | None = None
        self._started = 0.0
        #: The ``run.progress`` log lines, every ``progress_interval`` seconds.
        self.progress_log = ProgressLog(
            "run.progress", settings.progress_interval, lambda: self.snapshot().fields()
        )
        #: Where the run's Prometheus metrics are served (with ``metrics_port``), once known.
        self.metrics_url: str | None = None

    def __repr__(self) -> str:
        r = self.report
        return f"<Runner submitted={r.ids_submitted} jobs={len(r.jobs)} stop={self.stop.reason}>"

    @property
    def queue(self) -> JobQueue | None:
        """The run's view of the account's job queue, once the run has a client."""
        return self._submitter.queue if self._submitter is not None else None

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (no new submission starts)."""
        return self.stop.is_set

    def request_stop(self, reason: StopReason = "interrupted", message: str | None = None) -> None:
        """Stop starting new submissions; requests in flight get ``drain_timeout``."""
        self.stop.request(reason, message)

    def _drain(self) -> None:
        deadline = asyncio.get_running_loop().time() + self.settings.drain_timeout
        for timeout in self._deadlines:
            timeout.reschedule(deadline)

    async def run(self) -> RunReport:
        """Run to the end (or to a stop) and return the report."""
        s = self.settings
        s.require_credentials()
        self._started = time.monotonic()
        try:
            spooled = await self._spool_ids()
        except BaseException:
            if self._progress is not None:
                self._progress.close()
            raise
        # A new spool is read where it was written until the journal settles it.
        reading = [str(self._spool.path)] if self._spool is not None else self.inputs
        source = self._source = IdSource(
            reading,
            column=s.column,
            id_pattern=s.id_pattern,
            dedupe=s.dedupe,
            strict=s.strict,
            stdin=self._stdin,
            spooled_ids=spooled,
            scanned=self._spool.scan if self._spool is not None else None,
        )
        journal: Journal | None = None
        owned = not isinstance(self._journal_arg, Journal) and not self._keep_journal
        try:
            self.summary = await asyncio.to_thread(source.check)
            async with contextlib.AsyncExitStack() as stack:
                # Reached and checked before the journal exists: a store that points
                # nowhere leaves nothing behind (the client gives it back at its end).
                store = await opened_store(s)
                stack.push_async_callback(store.close)
                journal, rows = await asyncio.to_thread(self._open_journal, source)
                log.info("run.started", inputs=list(self.summary.files), lines=self.summary.lines)
                await self._serve_metrics(stack)
                session = self._session
                if session is None:
                    session = await stack.enter_async_context(new_session(s))
                await self._pipeline(
                    session, await self._listen(stack), source, journal, rows, store
                )
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        finally:
            source.close()
            if self._spool is not None:
                self._spool.discard()  # a temporary spool; a journal's own copy stays
            if self._progress is not None:
                if self.summary is not None:
                    # The last drawn numbers are the final ones, not the previous tick's.
                    self._progress.update(self.snapshot())
                self._progress.close()
            if self.summary is not None:
                self.progress_log.emit(final=True)
            if journal is not None:
                await self._close_journal(journal, owned)
        files = ", ".join(self.summary.files) if self.summary else "input"
        self.report.finish(source.stats, self.stop, time.monotonic() - self._started, files)
        if self._client is not None:
            self.report.count_requests(self._client.stats)
        if isinstance(self.stop.error, UnreachableError):
            # The host never answered: a wrong URL or a host that is down, said as one
            # error rather than a report of nothing. Every chunk it held back is pending.
            raise self.stop.error
        return self.report

    async def _spool_ids(self) -> bool:
        """Spool ``ids`` (or find the resumed journal's spool); whether the input is one."""
        arg = self._journal_arg
        if self._ids is None:
            recorded = await asyncio.to_thread(recorded_spool, arg, self._resume)
            if recorded is not None:
                self.inputs = [recorded]
            return recorded is not None
        directory, prefix = await asyncio.to_thread(spool_place, arg)
        spool = self._spool = await spool_async(self._ids, directory, prefix)
        if arg is None:
            self.inputs = [str(spool.path)]
        else:  # what the journal records, and compares when the same submit comes again
            self.inputs = [str((await asyncio.to_thread(spool_for, arg)).resolve())]
        return True

    def _open_journal(self, source: IdSource) -> tuple[Journal | None, dict[int, ChunkRow]]:
        """Claim and start the journal of a new run, or open one and prove the input the same."""
        arg = self._journal_arg
        if arg is None:
            return None, {}
        if isinstance(arg, Journal):
            journal = arg
        elif self._resume:
            journal = Journal.open(arg, "resume")
        else:
            journal, self._resume = open_for_submit(
                arg, "submit", self.settings, self.inputs, resume_if_exists=self._resume_if_exists
            )
        self.report.journal = str(journal.path)
        self.journal = journal
        self.report.resumed = self._resume
        try:
            spool = self._spool
            if spool is not None:  # moved beside the journal, or proven the recorded ids
                final = Path(self.inputs[0])  # spool_for: what the journal records
                source.relocate(str(settle(journal, spool, self._resume, final)))
            if not self._resume:
                if not journal.started:
                    inputs = [str(Path(p).resolve()) if p != "-" else p for p in self.inputs]
                    ids = spool.record() if spool is not None else None
                    journal.start(self.settings.public(), inputs, ids=ids)
                return journal, {}
            blocks = source.blocks()
            chunks = chunked_blocks(blocks, self.settings.chunk_size)
            try:
                return journal, journal.resumable_rows(chunks, self.inputs)
            finally:  # verification may stop early: release the open input file now
                _close(chunks, blocks)
        except BaseException:
            if not isinstance(arg, Journal):
                journal.close_sync()
                self.journal = None  # closed: nothing may write to it any more
            raise

    async def _close_journal(self, journal: Journal, owned: bool) -> None:
        try:
            await journal.flush()
        except JournalError as exc:
            self.request_stop("journal", str(exc))
        finally:
            if owned:
                journal.close_sync()

    async def _listen(self, stack: contextlib.AsyncExitStack) -> Settings:
        """With ``webhook_listen``, start the webhook receiver: the settings that give the
        API its URL."""
        s = self.settings
        if s.webhook_listen is None:
            return s
        receiver = WebhookReceiver(s.webhook_listen, self._heard, s.webhook)
        await receiver.start()
        stack.push_async_callback(receiver.close)
        return s.replace(webhook=receiver.url)

    async def _serve_metrics(self, stack: contextlib.AsyncExitStack) -> None:
        """With ``metrics_port``, serve /metrics until the run ends."""
        s = self.settings
        if s.metrics_port is None:
            return
        try:
            from ._metrics import MetricsServer
        except ImportError:
            raise ConfigError(
                "metrics_port: serving metrics needs prometheus_client: "
                "pip install 'bulkjob[metrics]'"
            ) from None
        server = MetricsServer(s.metrics_host, s.metrics_port, self.counts)
        await server.start()
        stack.push_async_callback(server.close)
        self.metrics_url = server.url

    def _heard(self, job_id: str | None) -> None:
        if self._submitter is not None:
            self._submitter.queue.finished(job_id)

    async def _pipeline(
        self,
        session: aiohttp.ClientSession,
        s: Settings,
        source: IdSource,
        journal: Journal | None,
        rows: dict[int, ChunkRow],
        store: WindowStore,
    ) -> None:
        self._client = client = ApiClient.for_settings(s, session, store)
        try:
            await self._with_client(client, s, source, journal, rows)
        finally:
            await client.aclose()

    async def _with_client(
        self,
        client: ApiClient,
        s: Settings,
        source: IdSource,
        journal: Journal | None,
        rows: dict[int, ChunkRow],
    ) -> None:
        assert self.summary is not None
        if s.require_quota:  # the account's credits, only when asked: it costs a request
            self._credits = CreditCheck(client, s, self.summary.lines)
        submitter = Submitter(
            s, client, journal, self.report, self.stop, rows, ambiguous=self._ambiguous
        )
        self._submitter = submitter
        submitter.queue.final_listeners.extend(self.job_final_listeners)
        queue: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=s.concurrency)
        ticker = asyncio.create_task(self._tick()) if self._progress is not None else None
        logger = asyncio.create_task(self.progress_log.run())
        # Ids flow block by block and are cut into chunks by slicing: no Python code per id.
        blocks = source.blocks()
        chunks = chunked_blocks(blocks, s.chunk_size)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(chunks, queue, digest=journal is not None))
                for _ in range(s.concurrency):
                    group.create_task(self._work(queue, submitter))
            await submitter.finish(prove=not self.stop.is_set)
        finally:
            await submitter.close()
            if ticker is not None:
                ticker.cancel()
            logger.cancel()
            _close(chunks, blocks)  # now, so the source's counts include what it had read

    async def _read(
        self, chunks: Iterator[Chunk], queue: asyncio.Queue[Chunk | None], *, digest: bool
    ) -> None:
        """Feed the workers; after a stop, keep reading only so that pending is counted."""
        ahead = 2 * self.settings.concurrency
        try:
            async with contextlib.aclosing(read_ahead(chunks, ahead, digest=digest)) as stream:
                async for chunk in stream:
                    await queue.put(chunk)
                    if self.stop.reason == "interrupted":
                        break  # a signal stops the reading too: what was read is pending
                else:
                    self.report.input_complete = True
        except InputError as exc:  # the input changed after the pre-pass found it fine
            self.request_stop("input", str(exc))
        # Not in a finally: when the reader is cancelled, so are the workers, and a full
        # queue nobody reads any more would hold this put forever.
        for _ in range(self.settings.concurrency):
            await queue.put(None)

    async def _work(self, queue: asyncio.Queue[Chunk | None], submitter: Submitter) -> None:
        while (chunk := await queue.get()) is not None:
            if self._credits is not None and not self.stop.is_set:
                await self._credits.once(self.report, self.stop)
            try:
                # No deadline while running; a stop gives what is in flight drain_timeout.
                async with asyncio.timeout(None) as deadline:
                    self._deadlines.add(deadline)
                    try:
                        await submitter.take(chunk)
                    finally:
                        self._deadlines.discard(deadline)
            except TimeoutError:
                log.warning("run.drain_timeout", chunk=chunk.seq, s=self.settings.drain_timeout)

    async def _tick(self) -> None:
        while self._progress is not None:
            await asyncio.sleep(_PROGRESS_INTERVAL)
            self._progress.update(self.snapshot())

    def snapshot(self) -> Progress:
        """Where the run is now."""
        stats = self._client.stats if self._client else None
        return Progress(
            ids_total=self.summary.lines if self.summary else 0,
            ids_read=self._source.stats.ids_read if self._source else 0,
            ids_submitted=self.report.ids_submitted,
            jobs=len(self.report.jobs),
            throttled=stats.throttled if stats else 0,
            requests=stats.requests if stats else 0,
            elapsed_s=time.monotonic() - self._started,
            stopping=self.stop.reason,
            awaiting_proof=self._awaiting_proof(),
            jobs_open=self._submitter.queue.open_jobs if self._submitter else None,
        )

    def _awaiting_proof(self) -> int:
        """Chunks whose outcome is still to be proven: parked now, or already in the report.

        The submitter's close() moves what is parked into the report (and a stopping run
        reports journaled chunks there without parking them): the final snapshot, drawn
        after close(), must count those too. A chunk is in one place or the other.
        """
        parked = self._submitter.awaiting_proof if self._submitter else 0
        return parked + len(self.report.awaiting_proof)

    def counts(self) -> RunCounts:
        """Every counter of the run now (what its metrics expose)."""
        r = self.report
        source = self._source.stats if self._source else None
        client = self._client
        queue = self._submitter.queue if self._submitter else None
        requests = dict.fromkeys((*REQUEST_KINDS, "token"), 0)
        if client is not None:
            requests.update(client.stats.by_kind)
            requests["token"] = client.token_requests
        valid = source.ids_valid if source else 0
        return RunCounts(
            ids_expected=self.summary.lines if self.summary else 0,
            ids_read=source.ids_read if source else 0,
            ids_submitted=r.ids_submitted,
            ids_rejected=r.ids_rejected,
            ids_invalid=source.ids_invalid if source else 0,
            ids_duplicate=source.ids_duplicate if source else 0,
            ids_pending=max(valid - r.ids_submitted - r.ids_rejected, 0),
            jobs_accepted=len(r.jobs),
            jobs_open=queue.open_jobs if queue else 0,
            jobs_final=queue.seen_final if queue else 0,
            chunks_rejected=len(r.rejected),
            awaiting_proof=self._awaiting_proof(),
            requests=requests,
            throttled=client.stats.throttled if client else 0,
            retries=client.stats.retries if client else 0,
            throttle_pauses=client.limiter.pauses if client else 0,
            throttle_paused_s=client.limiter.paused_s if client else 0.0,
            queue_taken=queue.taken if queue else 0,
            queue_limit=queue.limit if queue else None,
            queue_full=queue.queue_full if queue else 0,
            elapsed_s=time.monotonic() - self._started if self._started else 0.0,
        )


def _close(*iterators: Iterator[object]) -> None:
    """Close generators (a partly read input file) now rather than at garbage collection."""
    for it in iterators:
        close = getattr(it, "close", None)
        if close is not None:
            close()
