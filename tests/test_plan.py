"""The library's dry run: a typed plan, one usage request, nothing submitted or journaled."""

from __future__ import annotations

from pathlib import Path

import pytest

import bulkjob
from bulkjob import ConfigError
from bulkjob.sandbox import Sandbox
from tests.conftest import TOKEN, SandboxFactory, make_ids


def _values(sb: Sandbox) -> dict[str, object]:
    return {
        "base_url": sb.base_url,
        "token_url": sb.token_url,
        "access_token": TOKEN,
        "max_requests": 1000,
        "per_seconds": 1.0,
        "chunk_size": 1000,
    }


async def test_plan_of_a_new_run(sandbox: SandboxFactory, tmp_path: Path) -> None:
    sb = await sandbox(quota=10_000)
    path = tmp_path / "ids.txt"
    ids = make_ids(2_100)
    path.write_text("\n".join([*ids, ids[0], "bad"]) + "\n")
    found = await bulkjob.plan_async([str(path)], dedupe=True, **_values(sb))
    assert (found.ids_valid, found.ids_invalid, found.ids_duplicate) == (2_100, 1, 1)
    assert (found.jobs, found.ids_to_submit) == (3, 2_100)
    assert found.credits_remaining == 10_000 and found.fits is True
    assert dict(sb.ledger.routes) == {"usage": 1}
    assert not sb.ledger.jobs


async def test_plan_of_a_resume_leaves_out_what_is_settled(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    sb = await sandbox(quota=3_000)
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(make_ids(5_500)) + "\n")
    journal = tmp_path / "run.journal"
    values = {**_values(sb), "concurrency": 1}
    report = await bulkjob.submit_async([str(path)], journal=journal, **values)
    assert report.stop_reason == "quota" and report.ids_submitted == 3_000
    jobs_before = len(sb.ledger.jobs)
    found = await bulkjob.plan_async(journal=journal, **values)
    assert (found.jobs_done, found.ids_done) == (3, 3_000)
    assert (found.jobs, found.ids_to_submit) == (3, 2_500)
    assert found.credits_remaining == 0 and found.fits is False
    assert len(sb.ledger.jobs) == jobs_before
    assert "dry run: nothing was submitted" in found.render()


async def test_plan_needs_inputs_or_a_journal_not_both(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="inputs of a new run, or the journal"):
        await bulkjob.plan_async(access_token=TOKEN)
    with pytest.raises(ConfigError, match="inputs of a new run, or the journal"):
        await bulkjob.plan_async(["x"], journal=tmp_path / "j", access_token=TOKEN)


async def test_plan_without_credentials_is_the_runs_error(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(make_ids(3)) + "\n")
    with pytest.raises(ConfigError, match="no credentials"):
        await bulkjob.plan_async([str(path)], bulkjob.Settings())
