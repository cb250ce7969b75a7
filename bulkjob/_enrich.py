"""Ids in, rows out: a run whose finished jobs' results come back as rows while it goes on.

:class:`Enrichment` runs a :class:`~bulkjob._runner.Runner` (queue-full always waits) and,
beside it, watches the run's jobs. A job seen ``finished`` has its results downloaded at
once (to a part file, checked not cut short) and handed over, job by job, through
:meth:`Enrichment.jobs`, while submission goes on: a 10M-id run at a queue limit of 2
hands over rows from its first jobs, not at its end.

Watching costs few requests. While sends wait for room, the run's job queue already
polls the open jobs (:mod:`bulkjob._jobqueue`) and tells us what it sees final; only
when it does not (sends flowing, or submission over) are the jobs polled here, each on
its own schedule, sparse while young. Jobs the journal already knows final are not
asked again.

Memory is bounded by a few jobs' results: each job's CSV is on disk, downloaded
:data:`DOWNLOADS` at a time and at most :data:`PREFETCH` jobs ahead of the consumer, and
its rows are made a batch at a time from its text.

**Delivery is recorded per job** (with a journal): a job counts as delivered once the
consumer has iterated past its last row — it asked for the next row, or the iteration
ended. Calling enrich again with the journal resumes the run (the Runner pays nothing
twice), skips delivered jobs and re-yields at most the one job that was being delivered:
at-least-once at job granularity.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import csv
import io
import itertools
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

from ._client import ApiClient
from ._errors import (
    BulkJobError,
    ConfigError,
    JobsFailedError,
    JournalError,
    ProtocolError,
    error_for_stop,
    first_error,
)
from ._evidence import FINAL_STATUSES
from ._journal import ChunkRow, ChunkState, Journal
from ._logging import get_logger
from ._merge import check_closed
from ._network import new_session
from ._progress import ProgressSink
from ._report import FailedJob, JobInfo, RunReport
from ._runner import Runner
from ._settings import Settings

__all__ = [
    "PREFETCH",
    "Enrichment",
    "JobRows",
    "Row",
    "read_results",
    "row_batches",
    "row_class",
    "text_batches",
]

log = get_logger()

#: Jobs downloaded ahead of the consumer: the next one is ready when a job's rows end.
PREFETCH = 2
#: Results downloaded at once.
DOWNLOADS = 2
#: How often new jobs of the run are looked for (seconds): a list scan, no request.
_SCAN = 0.05
#: A job of unknown length is polled at this share of its age, never more often than
#: _MIN_POLL, never less often than the queue poll interval (a geometric series).
_YOUNG = 0.3
_MIN_POLL = 0.05
#: Status requests at once when many jobs are due.
_POLL_BATCH = 8
_END = None


class Row(dict[str, str]):
    """One results row: the results CSV's header -> field, as a plain ``dict[str, str]``
    (``pd.DataFrame(rows)`` takes it as is), plus ``job_id``, the job it came from."""

    __slots__ = ("_job_id",)
    #: The job of the rows of a per-job class (see row_class); a row's own, once set.
    _job: ClassVar[str] = ""

    @property
    def job_id(self) -> str:
        """The job this row came from."""
        try:
            return self._job_id
        except AttributeError:
            return self._job

    @job_id.setter
    def job_id(self, value: str) -> None:
        self._job_id = value

    def __repr__(self) -> str:
        return f"Row({dict.__repr__(self)}, job_id={self.job_id!r})"

    def __reduce__(self) -> tuple[Callable[[dict[str, str], str], Row], tuple[dict[str, str], str]]:
        # A job's rows are of a class made for that job (see row_class): pickled and copied
        # as a plain Row.
        return _restore_row, (dict(self), self.job_id)


def _restore_row(fields: dict[str, str], job_id: str) -> Row:
    row = Row(fields)
    row.job_id = job_id
    return row


def row_class(job_id: str) -> type[Row]:
    """A :class:`Row` subclass that knows its job: a job's rows are built by calling it in C
    (``map``), with no attribute set per row (``job_id`` stays settable on each row)."""
    return type("Row", (Row,), {"__slots__": (), "_job": job_id, "__module__": __name__})


@dataclass(frozen=True, slots=True)
class JobRows:
    """A finished job whose results file is downloaded and ready to be read."""

    info: JobInfo
    path: Path

    def batches(self, size: int) -> Generator[list[Row], None, None]:
        """Its rows, read from disk ``size`` at a time."""
        return row_batches(self.path, self.info.job_id, size)


def row_batches(path: Path, job_id: str, size: int) -> Generator[list[Row], None, None]:
    """Rows of a results CSV file keyed by its header, in lists of ``size`` (see
    :func:`text_batches`)."""
    return text_batches(read_results(path), job_id, size)


def read_results(path: Path) -> str:
    """A results file's text, line ends as they are, a UTF-8 BOM dropped."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return fh.read()


def text_batches(text: str, job_id: str, size: int) -> Generator[list[Row], None, None]:
    """Rows of a results CSV text keyed by its header, in lists of ``size``, exactly as
    ``csv.reader`` and ``zip`` give them, made rows in C loops.

    A text that has nothing for the csv module to interpret (see :func:`_plain_lines`)
    is cut with ``str.split``: the same fields at about half the cost. Any other text is
    parsed by ``csv.reader``."""
    make = row_class(job_id)
    lines = _plain_lines(text)
    records: Iterator[list[str]]
    if lines is None:
        records = csv.reader(io.StringIO(text, newline=""))
    else:
        records = map(str.split, lines, itertools.repeat(","))
    del text, lines
    header = next(records, None)
    if header is None:
        return
    rows = map(make, map(zip, itertools.repeat(header), records))
    while batch := list(itertools.islice(rows, size)):
        yield batch


def _plain_lines(text: str) -> list[str] | None:
    """The lines of a CSV text whose records are its lines cut at every comma: no quote,
    no NUL, no line end but ``\n`` or ``\r\n``, no blank line (``csv.reader`` gives
    ``[]`` for one), no line over the csv module's field limit (it raises). None for any
    other text: that one needs ``csv.reader``."""
    if '"' in text or "\x00" in text:
        return None
    if "\r" in text:
        if text.count("\r") != text.count("\r\n"):
            return None
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if "" in lines or (lines and max(map(len, lines)) > csv.field_size_limit()):
        return None
    return lines


@dataclass(slots=True)
class _Watched:
    info: JobInfo
    since: float  # monotonic: first seen
    due: float  # monotonic: next look


#: What the consumer of a blocking enrich tells of a job it is past: how many rows it had,
#: and the future of the journal's record of it (None without a journal).
Past = tuple[int, "concurrent.futures.Future[bool] | None"]


class Enrichment:
    """One enrich run on the current event loop: submit, watch, download, hand over.

    ``journal`` is a path (opened by the Runner: a journal of this same run is resumed,
    not refused) or a :class:`Journal` handle the caller holds and closes. Use
    :meth:`jobs` once; the run ends when it ends (or is closed early).
    """

    def __init__(
        self,
        settings: Settings,
        inputs: list[str],
        *,
        ids: object = None,
        journal: str | Path | Journal | None = None,
        resume: bool = False,
        stdin: BinaryIO | None = None,
        progress: ProgressSink | None = None,
    ) -> None:
        # A full queue is the normal state of a long run here: wait for room, never stop.
        self.settings = settings = settings.replace(on_queue_full="wait")
        extra: dict[str, Any] = {} if ids is None else {"ids": ids}
        self.runner = Runner(
            settings,
            inputs,
            stdin=stdin,
            progress=progress,
            journal=journal,
            resume=resume,
            resume_if_exists=True,
            keep_journal=not isinstance(journal, Journal),
            **extra,
        )
        self._owns_journal = journal is not None and not isinstance(journal, Journal)
        self._journal_path = Path(journal) if self._owns_journal else None  # type: ignore[arg-type]
        self.runner.job_final_listeners.append(self._heard_final)
        self._watched: dict[str, _Watched] = {}
        self._scanned = 0  # report.jobs seen so far
        self._scanned_full = False
        self._seen: set[int] = set()  # chunks taken
        self._known: dict[int, ChunkRow] | None = None  # the journal's rows at the start
        self._ready: asyncio.Queue[JobInfo | None] = asyncio.Queue()
        self._making_tmp = asyncio.Lock()
        self._out: asyncio.Queue[JobRows | None] = asyncio.Queue(maxsize=PREFETCH)
        self._changed = asyncio.Event()
        self._run: asyncio.Task[RunReport] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Delivery marks waiting for the consumer (see deliver_when).
        self._marks: list[asyncio.Task[None]] = []
        self._tmp: Path | None = None
        self._closed = False
        #: Jobs finished and downloaded, jobs skipped as delivered by an earlier call.
        self.jobs_finished = 0
        self.jobs_skipped = 0

    def __repr__(self) -> str:
        return (
            f"<Enrichment watched={len(self._watched)} finished={self.jobs_finished} "
            f"rows={self.report.rows_delivered}>"
        )

    @property
    def report(self) -> RunReport:
        """The run's report (final once :meth:`jobs` has ended)."""
        return self.runner.report

    @property
    def jobs_open(self) -> int:
        """Jobs accepted and not seen final yet."""
        return len(self._watched)

    # -- the consumer's side -----------------------------------------------------------------

    def _refuse_cli_runs(self) -> None:
        """A journal of ``bulkjob enrich`` writes its own output: marking its jobs delivered
        here would leave that output without their rows."""
        path = self._journal_path
        if path is None or not Journal.has_chunks(path):
            return
        handle = Journal.open(path, readonly=True)
        try:
            cli_run = handle.meta_or("enrich") is not None
        finally:
            handle.close_sync()
        if cli_run:
            raise ConfigError(
                f"journal {path}: a `bulkjob enrich` run writing its own output; "
                f"continue it with `bulkjob resume {path}`, or choose another journal"
            )

    async def jobs(self) -> AsyncGenerator[JobRows, None]:
        """Each finished job, downloaded, as soon as it is; then the run's verdict.

        Ends by raising what kept ids from having rows: the run's own error (bad input, an
        unreachable host...), :class:`JobsFailedError` (failed/aborted jobs, rejected
        chunks), or the error of the stop that ended the run early (quota, auth...).
        Closing it early stops the run as a Ctrl-C does; nothing is cancelled on the server.
        """
        await asyncio.to_thread(self._refuse_cli_runs)
        self._run = asyncio.create_task(self.runner.run())
        self._tasks = [asyncio.create_task(self._serve())]
        ended = False
        try:
            while (job := await self._out.get()) is not None:
                yield job
            ended = not any(_failed(t) for t in self._tasks)
            await asyncio.gather(*self._marks)  # the last jobs' marks, before the journal closes
        except BaseException:
            ended = False
            raise
        finally:
            for mark in self._marks:
                mark.cancel()  # a consumer gone before a job's end: not delivered
            await self._shutdown(early=not ended)
        self._verdict()

    async def delivered(self, job: JobRows, rows: int, *, out_bytes: int | None = None) -> None:
        """The consumer is past ``job``'s last row (``rows`` of them): record it, durably."""
        journal = self.runner.journal
        if journal is not None:
            await journal.delivered(job.info.chunk, out_bytes=out_bytes)
        await self._past(job, rows)

    async def _past(self, job: JobRows, rows: int) -> None:
        """What follows a job's delivery, once recorded: counted, its results file gone."""
        self.report.rows_delivered += rows
        await asyncio.to_thread(job.path.unlink, missing_ok=True)
        log.info("enrich.delivered", job_id=job.info.job_id, chunk=job.info.chunk, rows=rows)

    def deliver_when(self, past: asyncio.Future[Past], job: JobRows) -> asyncio.Task[None]:
        """Finish ``job``'s delivery once ``past`` is set: the consumer is past its last
        row, had that many rows, and had the journal record it (see
        :meth:`Journal.delivered_soon`: the future of that write, None without a journal).
        In a task of its own: the next job is read meanwhile. The run's end waits for it
        (and raises a failed record's error); closed early, it is cancelled."""

        async def mark() -> None:
            rows, written = await past
            if written is None or await asyncio.wrap_future(written):
                await self._past(job, rows)

        # Marks done well are dropped; a failed one stays for the run's end to raise.
        self._marks = [m for m in self._marks if not m.done() or _failed(m)]
        task = asyncio.create_task(mark())
        self._marks.append(task)
        return task

    def _verdict(self) -> None:
        """Raise what the consumer must know once every row it could get was handed over."""
        assert self._run is not None
        for task in (self._run, *self._tasks):
            if _failed(task):
                raise task.exception()  # type: ignore[misc]
        r = self.report
        if r.failed_jobs or r.rejected:
            ids = sum(j.ids for j in r.failed_jobs) + sum(c.ids for c in r.rejected)
            shown = ", ".join(f"{j.job_id} ({j.status}, {j.ids:,} ids)" for j in r.failed_jobs[:10])
            parts = [f"{len(r.failed_jobs):,} job(s) ended without results: {shown}"]
            if r.rejected:
                chunks = ", ".join(str(c.chunk) for c in r.rejected[:10])
                parts.append(f"{len(r.rejected):,} chunk(s) rejected: {chunks}")
            raise JobsFailedError(
                f"{ids:,} ids have no rows: " + "; ".join(parts),
                jobs=tuple(r.failed_jobs),
                rejected=tuple(c.chunk for c in r.rejected),
                ids=ids,
            )
        if r.stop_reason is not None:
            raise error_for_stop(r.stop_reason, r.stop_message or r.stop_reason)

    async def _shutdown(self, *, early: bool) -> None:
        """End the run and the watching; leave the journal consistent and closed."""
        if self._closed:
            return
        self._closed = True
        run = self._run
        try:
            if run is not None and not run.done():
                if early:  # the consumer went away: a stop like Ctrl-C, then the drain
                    self.runner.request_stop("interrupted", "the consumer stopped reading")
                await asyncio.wait([run])
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            journal = self.runner.journal
            if journal is not None and self._owns_journal:
                with contextlib.suppress(BulkJobError):
                    await journal.flush()
                journal.close_sync()
            if self._tmp is not None:
                await asyncio.to_thread(shutil.rmtree, self._tmp, True)

    # -- watching ----------------------------------------------------------------------------

    async def _serve(self) -> None:
        """Watch and download with one client of our own; then hand over the end (after
        an error too: the consumer then raises it)."""
        try:
            async with new_session(self.settings) as session:
                client = ApiClient.for_settings(self.settings, session)
                try:
                    async with asyncio.TaskGroup() as group:
                        group.create_task(self._watch(client))
                        group.create_task(self._download_all(client))
                finally:
                    await client.aclose()
        except asyncio.CancelledError:
            raise  # shutting down: nobody reads any more
        except BaseExceptionGroup as group:
            await self._out.put(_END)
            raise first_error(group) from None
        await self._out.put(_END)

    async def _watch(self, client: ApiClient) -> None:
        """Find the run's jobs, learn when each is final, queue the finished for download."""
        try:
            await self._watch_with(client)
        finally:
            self._ready.put_nowait(_END)

    async def _watch_with(self, client: ApiClient) -> None:
        assert self._run is not None
        while True:
            run_over = self._run.done()  # read before the scan: nothing is added after it
            self._scan(full=run_over)
            queue = self.runner.queue
            if self._watched and (queue is None or not queue.polling or run_over):
                await self._poll_due(client)
            if run_over and not self._watched:
                return
            now = time.monotonic()
            soonest = min((w.due for w in self._watched.values()), default=now + _SCAN)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), max(min(soonest - now, _SCAN), 0))

    def _scan(self, *, full: bool) -> None:
        """Take the jobs the run accepted since the last look. The report's list only grows
        while the run lasts, but is sorted at its end: then it is read ``full``y once."""
        jobs = self.report.jobs
        if self._scanned == len(jobs) and not (full and not self._scanned_full):
            return
        self._scanned_full = full
        if self._known is None:
            journal = self.runner.journal
            rows = journal.rows(ChunkState.ACCEPTED) if journal is not None else iter(())
            self._known = {row.seq: row for row in rows}
        now = time.monotonic()
        for info in jobs if full else jobs[self._scanned :]:
            if info.chunk in self._seen:
                continue
            self._seen.add(info.chunk)
            row = self._known.get(info.chunk)
            if row is not None and row.delivered_at is not None:
                self.jobs_skipped += 1
                continue
            status = row.job_status if row is not None and row.job_id == info.job_id else None
            if status in FINAL_STATUSES:
                self._final(info, str(status))
            else:
                self._watched[info.job_id] = _Watched(info, now, now)
        self._scanned = len(jobs)

    def _heard_final(self, job_id: str, seq: int, status: str) -> None:
        """The run's queue saw ``job_id`` final (its poll already journaled the status)."""
        watched = self._watched.pop(job_id, None)
        if watched is not None:
            self._final(watched.info, status)
            self._changed.set()

    def _final(self, info: JobInfo, status: str) -> None:
        if status == "finished":
            self._ready.put_nowait(info)
        else:
            self.report.failed_jobs.append(FailedJob(info.job_id, info.chunk, info.ids, status))
            log.warning("enrich.job_failed", job_id=info.job_id, chunk=info.chunk, status=status)

    async def _poll_due(self, client: ApiClient) -> None:
        now = time.monotonic()
        due = [w for w in self._watched.values() if w.due <= now][:_POLL_BATCH]
        if not due:
            return
        try:
            await asyncio.gather(*(self._look(client, w) for w in due))
        except JournalError:
            raise  # not the server failing: the run cannot record what it learns
        except BulkJobError as exc:  # a failing server: try again a while later
            log.warning("enrich.poll_failed", error=str(exc))
            later = time.monotonic() + self.settings.queue_poll_interval / 8
            for w in due:
                w.due = max(w.due, later)

    async def _look(self, client: ApiClient, watched: _Watched) -> None:
        info = watched.info
        data = await client.get_json(f"{self.settings.job_kind.path}/{info.job_id}")
        status = str(data.get("status") or "")
        journal = self.runner.journal
        if info.job_id not in self._watched:
            return  # the queue saw it final meanwhile
        now = time.monotonic()
        if status not in FINAL_STATUSES:
            age = now - watched.since
            watched.due = now + min(max(age * _YOUNG, _MIN_POLL), self.settings.queue_poll_interval)
            return
        if journal is not None:  # recorded first: a job is let go of only once it is
            await journal.job_update(info.chunk, status=status)
        if self._watched.pop(info.job_id, None) is None:
            return  # the queue saw it final meanwhile
        queue = self.runner.queue
        if queue is not None:
            queue.finished(info.job_id)  # its place is free: the queue looks at once
        self._final(info, status)

    # -- downloading -------------------------------------------------------------------------

    async def _download_all(self, client: ApiClient) -> None:
        """Download each finished job's results, :data:`DOWNLOADS` at once, at most
        :data:`PREFETCH` ahead of the consumer. One at a time, the results of a run whose
        jobs finish at once came slower than the consumer reads them: each download
        waits for the server to write the file and for its turn on the loop."""
        async with asyncio.TaskGroup() as group:
            for _ in range(DOWNLOADS):
                group.create_task(self._download_each(client))

    async def _download_each(self, client: ApiClient) -> None:
        while (info := await self._ready.get()) is not None:
            async with self._making_tmp:
                if self._tmp is None:
                    made = await asyncio.to_thread(tempfile.mkdtemp, prefix="bulkjob-enrich-")
                    self._tmp = Path(made)
            dest = self._tmp / f"{info.chunk:06d}.csv"
            for tries_left in range(_CUT_TRIES - 1, -1, -1):
                await client.download(f"{self.settings.job_kind.path}/{info.job_id}/results", dest)
                try:  # a file cut short would lose its last rows without a word
                    await asyncio.to_thread(check_closed, dest)
                    break
                except ProtocolError as exc:
                    if not tries_left:  # the same file cut every time: not a lost packet
                        problem = f"job {info.job_id} (chunk {info.chunk}): {exc}"
                        raise ProtocolError(problem) from None
                    log.warning("enrich.results_cut", job_id=info.job_id, error=str(exc))
            self.jobs_finished += 1
            await self._out.put(JobRows(info, dest))
        self._ready.put_nowait(_END)  # the end, for the other downloaders too


#: A results file that arrives cut short is downloaded again, up to this many times in all.
_CUT_TRIES = 4


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None
