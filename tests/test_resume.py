"""Backfill-grade runs: resume after quota, crash, signal and ambiguity; never paid twice."""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest

from bulkjob._config import load_settings
from bulkjob._errors import ConfigError, InputError
from bulkjob._report import RunReport
from bulkjob._runner import Runner
from bulkjob._settings import Settings
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    IdsWriter,
    SandboxFactory,
    cli_flags,
    edit_journal,
    journal_rows,
    kill_9,
    make_ids,
    settings_for,
    start_cli,
    submit_args,
    wait_until,
)


async def run(settings: Settings, path: Path, journal: Path, **kw: object) -> RunReport:
    """One run (or resume) with a journal."""
    return await Runner(settings, [str(path)], journal=journal, **kw).run()  # type: ignore[arg-type]


def assert_exactly_once(sb: Sandbox, values: list[str]) -> None:
    """The server accepted every id of ``values`` exactly once, and nothing else."""
    assert sb.ledger.duplicates == 0
    assert set(sb.ledger.accepted_ids) == set(values)
    assert sb.ledger.ids_accepted == len(values)


def forget_job(sb: Sandbox, job_id: str, its_ids: list[str]) -> None:
    """Make the server as if ``job_id`` (holding ``its_ids``) had never arrived."""
    sb.ledger.jobs.pop(job_id)
    for v in its_ids:
        sb.ledger.accepted_ids[v] -= 1
        if not sb.ledger.accepted_ids[v]:
            del sb.ledger.accepted_ids[v]
    sb.ledger.ids_accepted -= len(its_ids)


async def test_quota_stop_then_resume_completes_once(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """Out of credits mid-run: stop with pending ids; after more credits, resume finishes."""
    sb = await sandbox(quota=450)
    values = make_ids(1000)
    path, journal = ids(values), tmp_path / "run.journal"
    first = await run(settings_for(sb, concurrency=2), path, journal)
    assert first.stop_reason == "quota"
    assert first.ids_pending == 1000 - first.ids_submitted
    assert first.accounted
    sb.add_quota(10_000)
    second = await run(settings_for(sb, concurrency=2), path, journal, resume=True)
    assert second.stop_reason is None
    assert second.ids_submitted == 1000
    assert second.accounted
    assert len(second.jobs) == 10
    assert_exactly_once(sb, values)


async def test_changed_input_is_refused_before_sending(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """An input edited between runs makes resume refuse, with nothing sent."""
    sb = await sandbox(quota=300)
    values = make_ids(1000)
    path, journal = ids(values), tmp_path / "run.journal"
    await run(settings_for(sb), path, journal)
    values[50] = make_ids(1, prefix="changed")[0]
    path.write_text("".join(f"{v}\n" for v in values))
    before = sb.ledger.requests
    with pytest.raises(InputError, match="input changed"):
        await run(settings_for(sb), path, journal, resume=True)
    assert sb.ledger.requests == before


async def test_resume_cannot_change_chunking(tmp_path: Path) -> None:
    """Settings that shape chunks are fixed on resume."""
    with pytest.raises(ConfigError, match="chunk_size"):
        load_settings({"chunk_size": 50}, env={}, recorded={"chunk_size": 100})


async def test_unanswered_sending_chunk_is_reconciled_not_resent(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """A chunk left 'sending' whose job exists is matched from /admin/jobs, not resent."""
    sb = await sandbox()
    values = make_ids(500)
    path, journal = ids(values), tmp_path / "run.journal"
    await run(settings_for(sb, max_requests=20, per_seconds=1.0), path, journal)
    # Simulate a crash between the server accepting chunk 3 and the journal recording it.
    edit_journal(journal, "UPDATE chunks SET state = 'sending', job_id = NULL WHERE seq = 3")
    # ...and a crash after journaling 'sending' for chunk 5, before its request left.
    ((job_5,),) = edit_journal(journal, "SELECT job_id FROM chunks WHERE seq = 5")
    edit_journal(journal, "UPDATE chunks SET state = 'sending', job_id = NULL WHERE seq = 5")
    forget_job(sb, str(job_5), values[400:500])
    report = await run(settings_for(sb), path, journal, resume=True)
    assert report.stop_reason is None
    assert report.ids_submitted == 500
    assert_exactly_once(sb, values)
    states = {seq: (r.state, r.job_id) for seq, r in journal_rows(journal).items()}
    assert states[3][0] == "accepted"
    assert states[3][1] in sb.ledger.jobs


async def test_unprovable_chunks_stop_then_follow_the_users_choice(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """A lost answer whose only candidate job failed without results: exit 8 until told."""
    sb = await sandbox()
    values = make_ids(300)
    path, journal = ids(values), tmp_path / "run.journal"
    await run(settings_for(sb), path, journal)
    jobs = dict(edit_journal(journal, "SELECT seq, job_id FROM chunks WHERE seq IN (1, 2)"))
    edit_journal(journal, "UPDATE chunks SET state = 'sending', job_id = NULL WHERE seq IN (1, 2)")
    # Chunk 2's request never arrived; chunk 1's job failed and left no results to read.
    forget_job(sb, jobs[2], values[100:200])
    sb.ledger.jobs[jobs[1]].fails = True
    stopped = await run(settings_for(sb), path, journal, resume=True)
    assert stopped.stop_reason == "ambiguous"
    assert stopped.ambiguous_chunks == [1, 2]  # job 1 can be neither chunk's proof nor ruled out
    assert stopped.accounted
    assert sb.ledger.ids_accepted == 200  # nothing was sent on a guess
    rows = journal_rows(journal)
    assert rows[1].state == "ambiguous"
    assert jobs[1] in (rows[1].evidence or "")
    abandoned = await run(settings_for(sb), path, journal, resume=True, ambiguous="abandon")
    assert abandoned.stop_reason is None
    assert abandoned.ids_rejected == 200
    assert abandoned.accounted
    assert sb.ledger.ids_accepted == 200


async def test_queue_full_wait_completes(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """With on_queue_full=wait, a 2-running-job limit is waited out and everything lands."""
    # Jobs that run half a second: four workers posting at once meet the limit even when a
    # busy machine spreads their posts apart.
    sb = await sandbox(running_job_limit=2, processing_after=0.05, finished_after=0.5)
    values = make_ids(800)
    s = settings_for(sb, on_queue_full="wait", queue_poll_interval=0.05, concurrency=4)
    report = await run(s, ids(values), tmp_path / "run.journal")
    assert report.stop_reason is None
    assert sb.ledger.rejected["queue_full"] > 0
    assert_exactly_once(sb, values)


async def test_require_quota_refuses_to_start(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """Fewer credits than ids with require_quota: stop on quota before any job is sent."""
    sb = await sandbox(quota=150)
    report = await run(settings_for(sb, require_quota=True), ids(500), tmp_path / "j.journal")
    assert report.stop_reason == "quota"
    assert "150" in (report.stop_message or "")
    assert not sb.ledger.jobs
    assert report.ids_pending == 500


@pytest.mark.slow
async def test_kill_9_at_random_points_then_resume_exactly_once(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """kill -9 mid-run, three times at random points, then resume: every id accepted once."""
    rng = random.Random(7)
    for round_ in range(3):
        sb = await sandbox(throttle_requests=20, throttle_window=1.0, latency=0.01)
        values = make_ids(3000, prefix=f"k{round_}")
        path = tmp_path / f"ids{round_}.txt"
        path.write_text("".join(f"{v}\n" for v in values))
        journal = tmp_path / f"run{round_}.journal"
        proc = await start_cli(*submit_args(path, journal), *cli_flags(sb, max_requests=20))
        # Mid-run: from the first request on (a loaded machine can take longer than a fixed
        # delay just to start the process), at a random point.
        await wait_until(lambda: sb.ledger.requests > 0)  # noqa: B023
        await asyncio.sleep(rng.uniform(0.0, 0.8))
        kill_9(proc)
        await proc.wait()
        assert sb.ledger.ids_accepted < 3000
        proc = await start_cli("resume", str(journal), *cli_flags(sb, max_requests=20))
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert sb.ledger.throttled == 0
        assert_exactly_once(sb, values)


@pytest.mark.slow
async def test_sigint_exits_130_and_resume_completes(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """SIGINT stops cleanly with exit 130 and the resume command; resume completes."""
    sb = await sandbox(throttle_requests=20, throttle_window=1.0)
    values = make_ids(3000)
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"{v}\n" for v in values))
    journal = tmp_path / "run.journal"
    proc = await start_cli(*submit_args(path, journal), *cli_flags(sb, max_requests=20))
    async with asyncio.timeout(60):  # once it sends: a slow start (a loaded machine) aside
        while sb.ledger.ids_accepted == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, err.decode()
    assert f"bulkjob resume {journal}" in err.decode()
    proc = await start_cli("resume", str(journal), *cli_flags(sb, max_requests=20))
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert_exactly_once(sb, values)


async def test_content_tells_which_of_two_sends_became_the_job(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """Two same-size 'sending' chunks and one job: its results pair it with the right one."""
    sb = await sandbox()
    values = make_ids(500)
    path, journal = ids(values), tmp_path / "run.journal"
    await run(settings_for(sb), path, journal)
    jobs = dict(edit_journal(journal, "SELECT seq, job_id FROM chunks WHERE seq IN (2, 3)"))
    edit_journal(journal, "UPDATE chunks SET state = 'sending', job_id = NULL WHERE seq IN (2, 3)")
    job_of_2 = jobs[2]
    # Chunk 3's request never arrived: forget its job on the server side.
    forget_job(sb, jobs[3], values[200:300])
    report = await run(settings_for(sb), path, journal, resume=True)
    assert report.stop_reason is None
    assert_exactly_once(sb, values)
    assert journal_rows(journal)[2].job_id == job_of_2
