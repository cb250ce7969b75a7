"""The same submit again (a scheduler's retry): its journal resumed, another run's refused."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

import bulkjob
from bulkjob import InputError, RunReport
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    TOKEN,
    SandboxFactory,
    assert_paid_once,
    cli_flags,
    journal_rows,
    kill_9,
    make_ids,
    run_cli,
    start_cli,
    submit_args,
    wait_for_lock,
    write_ids,
)


async def again(sb: Sandbox, path: Path, journal: Path, **values: object) -> RunReport:
    """The one submit call a retried script makes, every time the same."""
    keywords: dict[str, object] = {
        "base_url": sb.base_url,
        "token_url": sb.token_url,
        "access_token": TOKEN,
        "per_seconds": 1.0,
        "chunk_size": 100,
        "concurrency": 2,
        "reconcile_grace": 0.2,
        "proof_poll_interval": 0.05,
    }
    keywords.update(values)
    inputs = ["-" if path == Path("-") else str(path)]
    return await bulkjob.submit_async(inputs, journal=journal, **keywords)  # type: ignore[arg-type]


async def test_same_submit_after_a_quota_stop_resumes(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Stopped half way, the very same submit call finishes the run: every id paid once."""
    sb = await sandbox(quota=450)
    values = make_ids(1000)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "run.journal"
    first = await again(sb, path, journal)
    assert first.stop_reason == "quota" and 0 < first.ids_submitted < 1000
    sb.add_quota(10_000)
    second = await again(sb, path, journal)
    assert second.resumed and second.ok, second.summary()
    assert second.ids_submitted == 1000
    assert_paid_once(sb, values)


async def test_a_completed_run_submitted_again_sends_nothing(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A finished journal submitted again: no submit request, and the report says done."""
    sb = await sandbox()
    values = make_ids(300)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "run.journal"
    assert (await again(sb, path, journal)).ok
    submits = sb.ledger.routes["submit"]
    report = await again(sb, path, journal)
    assert report.resumed and report.ok and report.ids_pending == 0
    assert report.ids_submitted == 300 and len(report.jobs) == 3
    assert sb.ledger.routes["submit"] == submits
    assert_paid_once(sb, values)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("other file", "a journal of another run is here (its inputs:"),
        ("chunk_size", "a journal of another run is here (chunk_size 100, this run 50)"),
        ("edited", "input changed since the journal was written"),
        ("stdin", "standard input cannot be proven"),
        ("not asked", "--resume-if-exists"),
    ],
)
async def test_another_runs_journal_is_refused(
    sandbox: SandboxFactory, tmp_path: Path, change: str, fragment: str
) -> None:
    """Other inputs, other chunking, an edited input, stdin, or resume_if_exists=False:
    refused with a reason, nothing sent, the journal untouched."""
    sb = await sandbox()
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(300)), tmp_path / "run.journal"
    assert (await again(sb, path, journal)).ok
    before, rows = sb.ledger.requests, journal_rows(journal)
    kw: dict[str, object] = {}
    if change == "other file":
        path = write_ids(tmp_path / "other.txt", make_ids(300, prefix="other"))
    elif change == "chunk_size":
        kw["chunk_size"] = 50
    elif change == "edited":  # the same size, other ids: only reading it again can tell
        write_ids(path, make_ids(300, prefix="ed"))
    elif change == "not asked":
        kw["resume_if_exists"] = False
    if change == "stdin":
        path, kw["stdin"] = Path("-"), io.BytesIO(path.read_bytes())
    with pytest.raises(InputError) as info:
        await again(sb, path, journal, **kw)
    assert fragment in str(info.value)
    assert sb.ledger.requests == before
    assert journal_rows(journal) == rows


async def test_cli_resume_if_exists_after_a_kill(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """kill -9 mid-run, then the same command line with --resume-if-exists: paid once;
    without the flag the command refuses, naming both ways on."""
    sb = await sandbox()
    values = make_ids(2000)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "run.journal"
    # Five requests a second: the kill lands after the first window's jobs, long before the last.
    command = [*submit_args(path, journal), *cli_flags(sb, max_requests=5), "--resume-if-exists"]
    proc = await start_cli(*command)
    await wait_for_lock(journal)
    while sb.ledger.ids_accepted < 100 and proc.returncode is None:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    kill_9(proc)
    await proc.wait()
    assert sb.ledger.ids_accepted < 2000
    code, err = await run_cli(*command[:-1])
    assert code == 2, err
    assert "--resume-if-exists" in err and f"bulkjob resume {journal}" in err
    code, err = await run_cli(*command)
    assert code == 0, err
    assert f"resuming {journal}" in err
    assert_paid_once(sb, values)
