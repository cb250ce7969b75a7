"""The account's registry of jobs: a job some bulkjob process got an answer for holds no
lost submit of another, so proofs rule it out without downloading its results."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bulkjob._journal import Journal
from bulkjob._runner import Runner
from bulkjob._settings import Settings
from bulkjob._window_store import open_store
from tests.conftest import (
    TOKEN,
    SandboxFactory,
    assert_paid_once,
    edit_journal,
    journal_rows,
    make_ids,
    settings_for,
    write_ids,
)


@pytest.mark.parametrize("store", ["memory", "local"])
async def test_a_registered_job_is_known_to_every_store_user(store: str, tmp_path: Path) -> None:
    settings = Settings(access_token=TOKEN, throttle_store=store, state_dir=str(tmp_path))
    first, second = open_store(settings), open_store(settings)
    try:
        await first.register_job("job-1", "d1", "run-a")
        # Memory stores are one process's own: only the local store is shared.
        seen = await second.registered(["job-1", "job-2"])
        assert seen == ({"job-1": "run-a"} if store == "local" else {})
        assert await first.registered(["job-1", "job-2"]) == {"job-1": "run-a"}
        assert await first.registered([]) == {}
    finally:
        await first.close()
        await second.close()


async def test_two_runs_rule_out_each_others_jobs_without_downloads(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Two runs of one account at once, answers lost after acceptance: each proof rules out
    the other run's jobs from the registry; every id is paid exactly once."""
    sb = await sandbox(drop_after_accept_rate=0.3, seed=5, list_lag=0.0)
    values_a, values_b = make_ids(1500, prefix="ka"), make_ids(1500, prefix="kb")
    runners = [
        Runner(
            settings_for(sb, concurrency=4),
            [str(write_ids(tmp_path / f"{name}.txt", values))],
            journal=tmp_path / f"{name}.journal",
        )
        for name, values in (("a", values_a), ("b", values_b))
    ]
    reports = await asyncio.gather(*(r.run() for r in runners))
    assert all(report.ok for report in reports), [r.stop_message for r in reports]
    assert_paid_once(sb, values_a + values_b)
    assert sum(len(r.proven_chunks) for r in reports) > 0  # answers were lost, and proven
    hits = sum(r._submitter._reader.registry_hits for r in runners)  # type: ignore[union-attr]
    assert hits > 0


async def test_a_runs_own_registered_job_is_proven_not_ruled_out(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A process may register its job and die before its journal says so: the resumed run
    finds its own run's entry in the registry and must still prove the job by content
    (ruling it out would resend the chunk and pay for it twice)."""
    sb = await sandbox(list_lag=0.0)
    values = make_ids(500)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "run.journal"
    first = await Runner(settings_for(sb, chunk_size=100), [str(path)], journal=journal).run()
    assert first.ok
    ((job_3,),) = edit_journal(journal, "SELECT job_id FROM chunks WHERE seq = 3")
    settings = settings_for(sb)
    store = open_store(settings)
    try:  # the registry holds the job, as this run's
        handle = Journal.open(journal, readonly=True)
        run_id = handle.run_id
        await handle.close()
        assert (await store.registered([str(job_3)])) == {str(job_3): run_id}
    finally:
        await store.close()
    # The crash: the server accepted chunk 3 (and it was registered), the journal never knew.
    edit_journal(journal, "UPDATE chunks SET state = 'sending', job_id = NULL WHERE seq = 3")
    runner = Runner(settings, [str(path)], journal=journal, resume=True)
    report = await runner.run()
    assert report.ok, report.stop_message
    assert_paid_once(sb, values)
    assert journal_rows(journal)[3].job_id == job_3
    assert runner._submitter is not None
    assert runner._submitter._reader.registry_hits == 0
