"""After a run, against the sandbox: status, wait, results and cancel, from the run's journal."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from bulkjob._errors import ConfigError
from bulkjob._lifecycle import (
    RunStatus,
    WaitTimeoutError,
    cancel,
    results,
    settings_from_journal,
    status,
    wait,
)
from bulkjob._runner import Runner
from bulkjob._settings import Settings
from bulkjob.sandbox import Sandbox
from bulkjob.sandbox._state import ACCEPTED, PROCESSING, JobRecord
from tests.conftest import (
    TOKEN,
    IdsWriter,
    SandboxFactory,
    journal_rows,
    make_ids,
    parsed_merge,
    settings_for,
)

IDS = make_ids(250)  # three jobs of 100, 100 and 50 ids


async def submitted(sb: Sandbox, ids: IdsWriter, tmp_path: Path) -> tuple[Path, Settings]:
    """Run IDS through ``sb`` with a journal; return it and the settings lifecycle calls use."""
    journal = tmp_path / "j.journal"
    report = await Runner(settings_for(sb, chunk_size=100), [str(ids(IDS))], journal=journal).run()
    assert report.ok
    return journal, settings_from_journal(journal, access_token=TOKEN)


def journal_statuses(journal: Path) -> dict[int, str | None]:
    """seq -> job status as the journal has it."""
    return {seq: row.job_status for seq, row in journal_rows(journal).items()}


def job_of(sb: Sandbox, journal: Path, seq: int) -> JobRecord:
    """The sandbox's record of the job chunk ``seq`` became."""
    job_id = journal_rows(journal)[seq].job_id
    assert job_id is not None
    return sb.ledger.jobs[job_id]


async def test_settings_from_journal_merges_overrides(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """The run's settings come back, tuples as tuples, with non-None overrides on top."""
    sb = await sandbox()
    journal, _ = await submitted(sb, ids, tmp_path)
    settings = settings_from_journal(journal, access_token="other", concurrency=None)
    assert settings.access_token == "other"
    assert settings.chunk_size == 100
    assert settings.base_url == sb.base_url
    assert isinstance(settings.quota_patterns, tuple)


async def test_status_counts_after_run(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """Without refresh the table comes from the journal alone, with no request sent."""
    sb = await sandbox(processing_after=60)
    journal, settings = await submitted(sb, ids, tmp_path)
    before = sb.ledger.requests
    st = await status(journal, settings)
    assert sb.ledger.requests == before
    assert st.chunks == {"accepted": (3, 250)}
    assert st.jobs == {"accepted": (3, 250)}
    assert (st.total_chunks, st.total_ids, st.total_jobs, st.open_jobs) == (3, 250, 3, 3)
    table = st.render()
    assert "accepted" in table
    assert "250" in table


async def test_status_refresh_records_server_statuses(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """With refresh every open job's server status is asked and written to the journal."""
    sb = await sandbox(processing_after=0, finished_after=60)
    journal, settings = await submitted(sb, ids, tmp_path)
    st = await status(journal, settings, refresh=True)
    assert st.jobs == {"processing": (3, 250)}
    assert st.refreshed == 3
    assert journal_statuses(journal) == {1: "processing", 2: "processing", 3: "processing"}


async def test_wait_until_all_finished(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """wait polls until every job is finished, calling progress after each round."""
    sb = await sandbox(finished_after=0.2)
    journal, settings = await submitted(sb, ids, tmp_path)
    seen: list[RunStatus] = []
    st = await wait(journal, settings, poll_interval=0.02, progress=seen.append)
    assert st.all_final
    assert st.jobs == {"finished": (3, 250)}
    assert seen
    assert seen[-1] == st
    assert journal_statuses(journal) == {1: "finished", 2: "finished", 3: "finished"}


async def test_wait_timeout_raises(sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path) -> None:
    """wait gives up with TimeoutError once the timeout passes, having recorded what it saw."""
    sb = await sandbox(processing_after=0, finished_after=60)
    journal, settings = await submitted(sb, ids, tmp_path)
    with pytest.raises(TimeoutError) as caught:
        await wait(journal, settings, poll_interval=0.01, timeout=0.05)
    assert isinstance(caught.value, WaitTimeoutError)
    assert caught.value.status.open_jobs == 3
    assert journal_statuses(journal) == {1: "processing", 2: "processing", 3: "processing"}


async def test_results_one_csv_per_job(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """Each finished job's results land in their own {seq}-{jobId}.csv, with no .part left."""
    sb = await sandbox()
    journal, settings = await submitted(sb, ids, tmp_path)
    out = tmp_path / "results"
    summary = await results(journal, settings, out)
    assert summary.downloaded == 3
    assert summary.already_present == 0
    assert summary.not_finished == summary.failed == ()
    names = sorted(p.name for p in out.iterdir())
    expected = sorted(f"{seq:06d}-{job_of(sb, journal, seq).job_id}.csv" for seq in (1, 2, 3))
    assert names == expected
    assert [len((out / n).read_text().splitlines()) for n in names] == [101, 101, 51]


async def test_results_merge_holds_every_id_once(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """merge writes one header, then exactly one row per submitted id, in chunk order."""
    sb = await sandbox()
    journal, settings = await submitted(sb, ids, tmp_path)
    merged = tmp_path / "all.csv"
    summary = await results(journal, settings, tmp_path / "results", merge=merged)
    with merged.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "newContactId"
    assert [r for r in rows[1:] if r == rows[0]] == []
    assert [r[0] for r in rows[1:]] == IDS
    assert merged.read_bytes() == parsed_merge(summary.files)
    assert summary.bytes_merged == merged.stat().st_size
    assert summary.removed == ()
    assert all(p.is_file() for p in summary.files)


async def test_results_merge_into_a_stream(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """A binary stream gets the merged CSV; the summary names no merged path."""
    sb = await sandbox()
    journal, settings = await submitted(sb, ids, tmp_path)
    stream = io.BytesIO()
    summary = await results(journal, settings, tmp_path / "results", merge=stream)
    assert stream.getvalue() == parsed_merge(summary.files)
    assert summary.bytes_merged == len(stream.getvalue())
    assert summary.merged is None


async def test_merge_without_parts_deletes_them_and_a_later_merge_downloads_again(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """keep_parts=False deletes the job files once merged; the next merge fetches them again."""
    sb = await sandbox()
    journal, settings = await submitted(sb, ids, tmp_path)
    out, merged = tmp_path / "results", tmp_path / "all.csv"
    first = await results(journal, settings, out, merge=merged, keep_parts=False)
    assert len(first.files) == 3
    assert first.removed == first.files
    assert list(out.iterdir()) == []
    assert [r.results_path for r in journal_rows(journal).values()] == [str(p) for p in first.files]
    once = merged.read_bytes()
    merged.unlink()
    before = sb.ledger.requests
    again = await results(journal, settings, out, merge=merged)
    assert sb.ledger.requests - before == 3
    assert (again.downloaded, again.already_present) == (3, 0)
    assert again.files == first.files
    assert merged.read_bytes() == once == parsed_merge(again.files)


async def test_no_keep_parts_needs_a_merge(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """Without a merge the parts are the results: keep_parts=False is a ConfigError."""
    sb = await sandbox()
    journal, settings = await submitted(sb, ids, tmp_path)
    with pytest.raises(ConfigError, match="--no-keep-parts"):
        await results(journal, settings, tmp_path / "results", keep_parts=False)
    assert not (tmp_path / "results").exists()


async def test_results_is_resumable(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """A second call downloads only the file that went missing, with one request."""
    sb = await sandbox()
    journal, settings = await submitted(sb, ids, tmp_path)
    out = tmp_path / "results"
    first = await results(journal, settings, out)
    first.files[1].unlink()
    before = sb.ledger.requests
    again = await results(journal, settings, out)
    assert sb.ledger.requests - before == 1
    assert (again.downloaded, again.already_present) == (1, 2)
    assert first.files[1].is_file()


async def test_results_skips_unfinished_jobs(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """Jobs not finished yet are listed, not downloaded; the finished one is."""
    sb = await sandbox(processing_after=60)
    journal, settings = await submitted(sb, ids, tmp_path)
    job_of(sb, journal, 2).processing_after = 0.0  # finished_after is 0: done now
    summary = await results(journal, settings, tmp_path / "results")
    assert summary.downloaded == 1
    assert summary.not_finished == (1, 3)
    assert [p.name[:6] for p in summary.files] == ["000002"]


async def test_cancel_aborts_queued_jobs_and_refunds(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """Jobs still accepted are cancelled, recorded aborted, and their credits come back."""
    sb = await sandbox(processing_after=60, quota=1000)
    journal, settings = await submitted(sb, ids, tmp_path)
    assert sb.config.quota == 750
    summary = await cancel(journal, settings)
    assert summary.cancelled == (1, 2, 3)
    assert summary.not_cancellable == summary.skipped == ()
    assert summary.ids_cancelled == 250
    assert sb.config.quota == 1000
    assert journal_statuses(journal) == {1: "aborted", 2: "aborted", 3: "aborted"}


async def test_cancel_reports_not_cancellable(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """A job that starts processing between the refresh and its DELETE is reported, not fatal."""
    sb = await sandbox(processing_after=60, quota=1000)
    journal, settings = await submitted(sb, ids, tmp_path)
    racing = job_of(sb, journal, 2)
    looks = iter([ACCEPTED])
    # The race made deterministic: the refresh sees it queued, every later look processing.
    racing.status = lambda now=None: next(looks, PROCESSING)  # type: ignore[method-assign]
    summary = await cancel(journal, settings)
    assert summary.cancelled == (1, 3)
    assert summary.not_cancellable == (2,)
    assert sb.config.quota == 1000 - 100
    assert journal_statuses(journal)[2] == "processing"


async def test_cancel_skips_jobs_already_started(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """Jobs already processing or final when cancel starts are skipped without a DELETE."""
    sb = await sandbox()
    journal, settings = await submitted(sb, ids, tmp_path)
    summary = await cancel(journal, settings)
    assert summary.skipped == (1, 2, 3)
    assert summary.cancelled == summary.not_cancellable == ()
    assert sb.ledger.rejected["not_cancellable"] == 0


async def test_window_carries_over_from_submit_to_the_next_command(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """Status calls right after a run that filled the window wait for it: no 429."""
    sb = await sandbox(throttle_requests=6, throttle_window=0.6, processing_after=30.0)
    settings = settings_for(sb, max_requests=6, per_seconds=0.6, concurrency=2)
    journal = tmp_path / "run.journal"
    await Runner(settings, [str(ids(500))], journal=journal).run()
    first = await status(journal, settings, refresh=True)
    second = await status(journal, settings, refresh=True)
    assert first.refreshed == second.refreshed == 5
    assert sb.ledger.throttled == 0
    assert sb.ledger.max_in_window(0.6) <= 6
