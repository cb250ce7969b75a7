"""After a run: the jobs its journal recorded — their status, waiting for them, their
results files, and cancelling the ones still queued.

Every command works from a run's journal file and the settings the run recorded there
(merged with the caller's credentials and overrides by :func:`settings_from_journal`).
Each command owns one session and one :class:`~bulkjob._limiter.WindowLimiter`: status
calls are not charged against the quota, but they do count against the token's throttle
window, so they are paced like everything else. What the server said is written back
to the journal as it arrives (job status, results path), which makes ``wait`` and
``results`` resumable job by job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar, Unpack

from ._client import ApiClient
from ._config import load_settings
from ._errors import (
    AmbiguousError,
    ConfigError,
    IncompleteError,
    ProtocolError,
    RequestError,
    WaitTimeoutError,
    error_for_stop,
    first_error,
)
from ._evidence import FINAL_STATUSES as _FINAL_STATUSES
from ._journal import ChunkRow, ChunkState, Journal
from ._logging import get_logger
from ._merge import check_closed, merge_files, remove_parts
from ._network import new_session
from ._progress import ProgressLog
from ._report import RunReport, RunStatus, StopSignal
from ._settings import Settings, SettingsValues
from ._submitter import Submitter
from ._webhook import WebhookReceiver
from ._window_store import opened_store

__all__ = [
    "CancelSummary",
    "JournalArg",
    "ResultsSummary",
    "RunStatus",
    "cancel",
    "results",
    "settings_from_journal",
    "status",
    "wait",
]

#: A journal as the commands take it: a path (opened for the call) or a handle held.
JournalArg = str | os.PathLike[str] | Journal

log = get_logger()
_T = TypeVar("_T")
#: Display order; anything else the server or a newer journal says comes after, sorted.
#: Chunks that are not jobs yet and not given up: ``wait`` cannot complete them.
_NOT_SENT = (ChunkState.PENDING, ChunkState.SENDING, ChunkState.UNKNOWN)
#: ``wait`` backs off by this factor per round, up to this multiple of the first interval.
_BACKOFF_FACTOR = 1.5
_BACKOFF_CAP = 10.0
#: A webhook call naming no job makes a full round at most once per this share of the
#: first poll interval.
_ANONYMOUS_GAP = 0.25
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9_.-]")


def settings_from_journal(
    journal: JournalArg,
    *,
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> Settings:
    """The settings a run recorded in its journal, under ``values`` > environment > config.

    The journal never holds secrets: credentials come from ``values`` or the
    ``INSIDEVIEW_*`` environment variables. Settings that shape chunks cannot change.
    A path is read through a read-only connection, without taking the lock.
    """
    if isinstance(journal, Journal):
        recorded = journal.recorded_settings()
    else:
        with Journal.open(journal, readonly=True) as opened:
            recorded = opened.recorded_settings()
    return load_settings(values, config=config, recorded=recorded)


# -- results of the commands ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResultsSummary:
    """What a ``results`` call did. Sequences hold chunk numbers, in order."""

    downloaded: int
    already_present: int
    not_finished: tuple[int, ...]
    failed: tuple[int, ...]
    bytes_downloaded: int = 0
    #: Every results file known after the call, in chunk order.
    files: tuple[Path, ...] = ()
    #: The merged CSV's path (``None`` without a merge, or when merged into a stream).
    merged: Path | None = None
    #: Bytes the merge wrote: rows are copied, not parsed, so they are not counted.
    bytes_merged: int = 0
    #: Results files deleted after the merge (``keep_parts=False``): all of ``files``.
    removed: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class CancelSummary:
    """What a ``cancel`` call did. Sequences hold chunk numbers, in order."""

    cancelled: tuple[int, ...]
    #: The server refused: the job had started processing in the meantime.
    not_cancellable: tuple[int, ...]
    #: Not attempted: the job was already processing or final when cancel began.
    skipped: tuple[int, ...]
    #: Ids in the cancelled jobs (their credits go back to the account).
    ids_cancelled: int = 0


# -- the commands --------------------------------------------------------------------------


async def status(journal: JournalArg, settings: Settings, *, refresh: bool = False) -> RunStatus:
    """The run's chunks and jobs; with ``refresh``, ask the server about every open job first.

    Without ``refresh`` nothing is sent and nothing written: a path is opened read-only,
    without the lock, so that this works while another command drives the run.
    """
    async with _Command(journal, settings, online=refresh, command="status") as cmd:
        asked = await cmd.refresh() if refresh else 0
        return cmd.snapshot(asked)


async def wait(
    journal: JournalArg,
    settings: Settings,
    *,
    poll_interval: float | None = None,
    progress: Callable[[RunStatus], None] | None = None,
    # Not asyncio.timeout(): cancelling mid-round would lose what the round saw, and the
    # caller should get the last snapshot with the error.
    timeout: float | None = None,  # noqa: ASYNC109
) -> RunStatus:
    """Settle lost answers by proof, then poll the open jobs until every one is final.

    Chunks whose submit lost its answer are proven first (waiting for the jobs that may
    hold them to finish); those proven not accepted are left ``pending`` for ``resume``.
    Rounds are ``poll_interval`` (default ``settings.queue_poll_interval``) apart at
    first, growing by half each round up to ten times that; with ``webhook_listen``, a
    webhook call starts the next round at once. Raises
    :class:`WaitTimeoutError` (a :class:`TimeoutError`) once ``timeout`` seconds have
    passed with jobs still open; what was seen is in the journal by then.
    """
    first = settings.queue_poll_interval if poll_interval is None else poll_interval
    if first <= 0:
        raise ConfigError(f"poll_interval: must be positive, got {first}")
    if timeout is not None and timeout < 0:
        raise ConfigError(f"timeout: must be >= 0, got {timeout}")
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    delay = first
    calls = _Calls(gap=first * _ANONYMOUS_GAP)
    seen = _WaitProgress()
    async with contextlib.AsyncExitStack() as stack:
        progress_log = ProgressLog("wait.progress", settings.progress_interval, seen.fields)
        logger = asyncio.create_task(progress_log.run())
        stack.callback(logger.cancel)
        stack.callback(progress_log.emit, final=True)
        if settings.webhook_listen is not None:
            receiver = WebhookReceiver(settings.webhook_listen, calls.heard)
            await stack.enter_async_context(receiver)
        cmd = await stack.enter_async_context(
            _Command(journal, settings, online=True, command="wait")
        )
        await cmd.prove(None if deadline is None else deadline - loop.time())
        next_full = loop.time()  # the first round looks at every open job
        named: set[str] = set()
        while True:
            now = loop.time()
            at_deadline = deadline is not None and now >= deadline
            if calls.full_round(now, due=now >= next_full or at_deadline):
                asked = await cmd.refresh()  # every open job: the polling round
                next_full = loop.time() + delay
                delay = min(delay * _BACKOFF_FACTOR, first * _BACKOFF_CAP)
            else:
                asked = await cmd.refresh(only=named)  # the jobs webhooks named, if ours
            snapshot = seen.latest = cmd.snapshot(asked)
            if progress is not None:
                progress(snapshot)
            if snapshot.all_final and not snapshot.chunks.get(str(ChunkState.UNKNOWN)):
                log.info("wait.done", jobs=snapshot.total_jobs)
                return _complete(snapshot, cmd.journal.path)
            pause = max(next_full - loop.time(), 0.0)
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WaitTimeoutError(
                        f"{snapshot.open_jobs:,} of {snapshot.total_jobs:,} job(s) still open "
                        f"after {timeout:g}s",
                        snapshot,
                    )
                # One last round right at the deadline, so the error reports fresh statuses.
                pause = min(pause, remaining)
            log.info("wait.polling", open=snapshot.open_jobs, next_s=round(pause, 3))
            named = await calls.wait(pause)  # a webhook: look at its job now


class _Calls:
    """Webhook calls heard by ``wait`` and not yet acted on.

    Each names a job (looked at alone, if it is one of the run's) or none (every open
    job is looked at, at most once per ``gap`` seconds). Nothing heard while a round
    runs is lost: what was heard is taken when the next wait begins.
    """

    def __init__(self, gap: float) -> None:
        self._event = asyncio.Event()
        self._named: set[str] = set()
        self._anonymous = False
        self._gap = gap
        self._anonymous_at = -float("inf")

    def heard(self, job_id: str | None) -> None:
        if job_id:
            self._named.add(job_id)
        else:
            self._anonymous = True
        self._event.set()

    async def wait(self, pause: float) -> set[str]:
        """Wait up to ``pause`` for a call (none if one came already); the jobs named."""
        if not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), pause)
        self._event.clear()
        named, self._named = self._named, set()
        return named

    def full_round(self, now: float, *, due: bool) -> bool:
        """Whether this round looks at every open job: it is ``due``, or a call named no
        job and the last such round is ``gap`` seconds past."""
        if due or (self._anonymous and now - self._anonymous_at >= self._gap):
            if self._anonymous:
                self._anonymous, self._anonymous_at = False, now
            return True
        return False


class _WaitProgress:
    """The latest snapshot of a ``wait``, as ``wait.progress`` log fields."""

    def __init__(self) -> None:
        self.latest: RunStatus | None = None
        self._started = time.monotonic()

    def fields(self) -> dict[str, object]:
        st = self.latest
        fields: dict[str, object] = {"elapsed_s": round(time.monotonic() - self._started, 3)}
        if st is not None:
            fields.update(
                jobs=st.total_jobs,
                jobs_final=st.total_jobs - st.open_jobs,
                jobs_open=st.open_jobs,
                ids_total=st.total_ids,
                by_status={k: n for k, (n, _) in st.jobs.items()},
            )
        return fields


async def results(
    journal: JournalArg,
    settings: Settings,
    out_dir: Path,
    *,
    merge: Path | BinaryIO | None = None,
    keep_parts: bool = True,
    refresh: bool = True,
) -> ResultsSummary:
    """Download the results file of every finished job not downloaded yet, into ``out_dir``.

    Files are named ``{seq:06d}-{jobId}.csv``; each path is recorded in the journal as
    soon as its file is complete, so a second call fetches only what is missing. With
    ``refresh`` (the default) the statuses of open jobs are asked first.

    With ``merge`` (a path, or a binary stream such as ``sys.stdout.buffer``), every
    results file is then copied into that one CSV, in chunk order, header once: bytes are
    copied, rows are not parsed, and every file's header must match the first's (else a
    :class:`ProtocolError` naming the file, before anything is written). Without
    ``keep_parts``, the results files are deleted once the merge is complete; a later
    call downloads again whatever it needs.
    """
    if not keep_parts and merge is None:
        raise ConfigError("--no-keep-parts: only with --merge (else the parts are the results)")
    out_dir = Path(out_dir)
    await asyncio.to_thread(_make_dir, out_dir, "--out")
    if isinstance(merge, Path):
        if await asyncio.to_thread(merge.is_dir):
            raise ConfigError(f"--merge {merge}: that is a directory; give the merged CSV's path")
        await asyncio.to_thread(_make_dir, merge.parent, "--merge")
    async with _Command(journal, settings, online=True, command="results") as cmd:
        if refresh:
            await cmd.refresh()
        not_finished, failed, present, wanted = await asyncio.to_thread(_plan, cmd.jobs())
        already = len(present)
        sizes: list[int] = []

        async def fetch(row: ChunkRow) -> None:
            assert row.job_id is not None
            safe_id = _UNSAFE_FILENAME.sub("_", row.job_id)
            dest = (out_dir / f"{row.seq:06d}-{safe_id}.csv").resolve()
            size = await cmd.client.download(f"{cmd.kind_path}/{row.job_id}/results", dest)
            try:  # a file cut short would swallow the next file's rows in the merge
                await asyncio.to_thread(check_closed, dest)
            except ProtocolError as exc:
                await asyncio.to_thread(dest.unlink, missing_ok=True)
                raise ProtocolError(
                    f"job {row.job_id} (chunk {row.seq}): {exc}; the file was not kept, run "
                    "`results` again to download it again"
                ) from None
            await cmd.journal.job_update(row.seq, results_path=str(dest))
            present[row.seq] = dest
            sizes.append(size)
            log.info("results.downloaded", chunk=row.seq, job_id=row.job_id, bytes=size)

        await _bounded(fetch, wanted, settings.concurrency)
        files = tuple(present[seq] for seq in sorted(present))
        bytes_merged = 0
        removed: tuple[Path, ...] = ()
        if merge is not None:
            # Under the journal's lock: another `results` must not see parts vanish mid-merge.
            bytes_merged = await asyncio.to_thread(merge_files, files, merge)
            where = str(merge) if isinstance(merge, Path) else "stream"
            log.info("results.merged", path=where, files=len(files), bytes=bytes_merged)
            if not keep_parts:
                removed = await asyncio.to_thread(remove_parts, files)
    return ResultsSummary(
        downloaded=len(sizes),
        already_present=already,
        not_finished=tuple(not_finished),
        failed=tuple(failed),
        bytes_downloaded=sum(sizes),
        files=files,
        merged=merge if isinstance(merge, Path) else None,
        bytes_merged=bytes_merged,
        removed=removed,
    )


async def cancel(journal: JournalArg, settings: Settings) -> CancelSummary:
    """Cancel every job still queued (status ``accepted``); the server refunds its credits.

    Statuses are refreshed first. A job that starts processing before its cancel
    arrives is refused by the server (400): it is reported as not cancellable.
    """
    async with _Command(journal, settings, online=True, command="cancel") as cmd:
        await cmd.refresh()
        cancelled: list[int] = []
        refused: list[int] = []
        skipped: list[int] = []
        queued: list[ChunkRow] = []
        for row in cmd.jobs():
            if row.job_status == "accepted":
                queued.append(row)
            else:
                skipped.append(row.seq)
        ids_cancelled = 0

        async def abort(row: ChunkRow) -> None:
            nonlocal ids_cancelled
            path = f"{cmd.kind_path}/{row.job_id}"
            try:
                data = await cmd.client.delete_json(path)
                now = _status_in(data, default="aborted")
            except RequestError as exc:
                if exc.status != 400:
                    raise
                # Refused: it started processing, or an earlier attempt whose answer was
                # lost already cancelled it. Only the job's status tells which.
                now = _status_in(await cmd.client.get_json(path))
            await cmd.journal.job_update(row.seq, status=now)
            if now == "aborted":
                cancelled.append(row.seq)
                ids_cancelled += row.ids
                log.info("job.cancelled", chunk=row.seq, job_id=row.job_id)
            else:
                refused.append(row.seq)
                log.warning("job.not_cancellable", chunk=row.seq, job_id=row.job_id, status=now)

        await _bounded(abort, queued, settings.concurrency)
    return CancelSummary(
        cancelled=tuple(sorted(cancelled)),
        not_cancellable=tuple(sorted(refused)),
        skipped=tuple(skipped),
        ids_cancelled=ids_cancelled,
    )


# -- plumbing --------------------------------------------------------------------------------


class _Command:
    """One command's journal and, when ``online``, its session, limiter and client.

    A path is opened for the command (locked, or read-only when offline) and closed at
    its end; a :class:`Journal` handle stays the caller's.
    """

    def __init__(
        self, journal: JournalArg, settings: Settings, *, online: bool, command: str
    ) -> None:
        self._journal_arg = journal
        self._settings = settings
        self._online = online
        self._command = command
        self.kind_path = settings.job_kind.path
        self._journal: Journal | None = None
        self._client: ApiClient | None = None
        self._stack = contextlib.AsyncExitStack()

    @property
    def journal(self) -> Journal:
        assert self._journal is not None
        return self._journal

    @property
    def client(self) -> ApiClient:
        assert self._client is not None
        return self._client

    async def __aenter__(self) -> _Command:
        s = self._settings
        if self._online:
            s.require_credentials()
        async with contextlib.AsyncExitStack() as stack:
            arg = self._journal_arg
            if isinstance(arg, Journal):
                journal = arg
            else:
                journal = await Journal.open_async(arg, self._command, readonly=not self._online)
                stack.callback(journal.close_sync)
            self._journal = journal
            if self._online:
                store = await opened_store(s)  # a store that points nowhere: said first
                stack.push_async_callback(store.close)
                session = await stack.enter_async_context(new_session(s))
                self._client = client = ApiClient.for_settings(s, session, store)
                stack.push_async_callback(client.aclose)
                stack.push_async_callback(journal.flush)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def prove(self, timeout: float | None) -> None:  # noqa: ASYNC109
        """Settle the journal's lost answers that can be proven without the input."""
        stop = StopSignal()
        rows = {row.seq: row for row in self.journal.rows()}  # its jobs are no candidates
        submitter = Submitter(self._settings, self.client, self.journal, RunReport(), stop, rows)
        await submitter.adopt_journal()
        try:
            async with asyncio.timeout(timeout):
                await submitter.finish(prove=True)
        except TimeoutError:
            await submitter.close()
            log.warning("wait.proof_timeout", awaiting_proof=submitter.awaiting_proof)
        if stop.reason is not None:
            raise error_for_stop(stop.reason, stop.message or "")

    def jobs(self) -> list[ChunkRow]:
        """Accepted chunks with a job id, in chunk order."""
        return [row for row in self.journal.rows(ChunkState.ACCEPTED) if row.job_id]

    async def refresh(self, only: set[str] | None = None) -> int:
        """Ask the server for every open job's status (or only those of ``only`` that
        are the run's) and record it; returns how many were asked."""
        open_rows = [
            row
            for row in self.jobs()
            if row.job_status not in _FINAL_STATUSES and (only is None or row.job_id in only)
        ]

        async def ask(row: ChunkRow) -> None:
            data = await self.client.get_json(f"{self.kind_path}/{row.job_id}")
            now = _status_in(data)
            if now != row.job_status:
                log.info("job.status", chunk=row.seq, job_id=row.job_id, status=now)
            await self.journal.job_update(row.seq, status=now)

        await _bounded(ask, open_rows, self._settings.concurrency)
        return len(open_rows)

    def snapshot(self, refreshed: int) -> RunStatus:
        """The journal's view right now."""
        chunks = self.journal.counts()
        jobs: dict[str, tuple[int, int]] = {}
        open_jobs = 0
        evidence = tuple(
            (row.seq, str(row.state), row.evidence) for row in self.journal.rows() if row.evidence
        )
        for row in self.jobs():
            key = row.job_status or "unknown"
            n, ids = jobs.get(key, (0, 0))
            jobs[key] = (n + 1, ids + row.ids)
            open_jobs += key not in _FINAL_STATUSES
        return RunStatus(
            chunks=chunks,
            jobs=jobs,
            total_chunks=sum(c for c, _ in chunks.values()),
            total_ids=sum(i for _, i in chunks.values()),
            total_jobs=sum(n for n, _ in jobs.values()),
            open_jobs=open_jobs,
            refreshed=refreshed,
            evidence=evidence,
        )


async def _bounded(
    work: Callable[[_T], Awaitable[None]], items: Iterable[_T], concurrency: int
) -> None:
    """Run ``work`` over ``items``, at most ``concurrency`` at a time; the first error wins."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(item: _T) -> None:
        async with semaphore:
            await work(item)

    try:
        async with asyncio.TaskGroup() as group:
            for item in items:
                group.create_task(one(item))
    except BaseExceptionGroup as failed:  # one error, with its own exit code, for the caller
        raise first_error(failed) from None


def _plan(
    rows: Iterable[ChunkRow],
) -> tuple[list[int], list[int], dict[int, Path], list[ChunkRow]]:
    """Sort jobs for ``results``: not finished, failed, file present, file to download."""
    not_finished: list[int] = []
    failed: list[int] = []
    present: dict[int, Path] = {}
    wanted: list[ChunkRow] = []
    for row in rows:
        if row.job_status == "failed":
            failed.append(row.seq)
        elif row.job_status != "finished":
            not_finished.append(row.seq)
        elif row.results_path and Path(row.results_path).is_file():
            present[row.seq] = Path(row.results_path)
        else:
            wanted.append(row)
    return not_finished, failed, present, wanted


def _status_in(data: Mapping[str, object], default: str | None = None) -> str:
    value = data.get("status")
    if isinstance(value, str) and value:
        return value
    if default is not None:
        return default
    raise ProtocolError("job status answer without a status", server_message=str(data)[:200])


def _complete(snapshot: RunStatus, journal: Path) -> RunStatus:
    """``snapshot`` if the run is complete; else the error that says what is left."""
    ambiguous = snapshot.chunks.get(str(ChunkState.AMBIGUOUS))
    if ambiguous:
        raise AmbiguousError(
            f"{ambiguous[0]:,} chunk(s) ({ambiguous[1]:,} ids) may or may not have been "
            f"accepted and no job can prove which: `bulkjob resume {journal}` with "
            "--resubmit-ambiguous (may pay twice) or --abandon-ambiguous"
        )
    left = [snapshot.chunks.get(str(s), (0, 0)) for s in _NOT_SENT]
    chunks, ids = sum(c for c, _ in left), sum(i for _, i in left)
    if chunks:
        raise IncompleteError(
            f"every job is final, but {chunks:,} chunk(s) ({ids:,} ids) are not accepted "
            f"yet: `bulkjob resume {journal}` sends them",
            snapshot,
        )
    return snapshot


def _make_dir(path: Path, flag: str) -> None:
    """``path`` as a directory (made if missing); a usage error if it cannot be one."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot be a directory: {exc.strerror}") from None
