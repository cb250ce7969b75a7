"""Exactly once under lost and odd answers, overlapping processes and other clients.

Every test asserts on the sandbox's own ledger of what it accepted (``assert_paid_once``),
never on the client's report alone. Overlap and crash cases use real OS processes.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from bulkjob._runner import Runner
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    SandboxFactory,
    assert_paid_once,
    cli_env,
    cli_flags,
    finish_cli,
    kill_9,
    make_ids,
    run_cli,
    settings_for,
    start_cli,
    submit_args,
    wait_for_lock,
    write_ids,
)


async def submit_until_done(
    sb: Sandbox, path: Path, journal: Path, *extra: str, resumes: int = 3
) -> tuple[int, list[int]]:
    """``bulkjob submit`` then ``resume`` while it stops; (last exit code, every exit code)."""
    code, err = await run_cli(
        *submit_args(path, journal),
        *cli_flags(sb),
        *extra,
    )
    codes = [code]
    while code != 0 and len(codes) <= resumes:
        assert "bulkjob resume" in err, err
        code, err = await run_cli("resume", str(journal), *cli_flags(sb))
        codes.append(code)
    assert code == 0, err
    return code, codes


def journal_jobs(journal: Path) -> set[str]:
    """The job ids a journal holds (read-only)."""
    db = sqlite3.connect(f"{journal.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {r[0] for r in db.execute("SELECT job_id FROM chunks WHERE job_id IS NOT NULL")}
    finally:
        db.close()


# -- lost answers ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
async def test_5xx_before_and_drops_after_acceptance(
    sandbox: SandboxFactory, tmp_path: Path, seed: int
) -> None:
    """40% 5xx before any job exists, 40% accepted then dropped: every id paid once, exit 0."""
    sb = await sandbox(fault_5xx_rate=0.4, drop_after_accept_rate=0.4, seed=seed)
    values = make_ids(2000)
    report = tmp_path / "r.json"
    await submit_until_done(
        sb, write_ids(tmp_path / "ids.txt", values), tmp_path / "j.journal", "--report", str(report)
    )
    assert sb.ledger.faults["5xx"] > 0 and sb.ledger.faults["drop_after_accept"] > 0
    assert_paid_once(sb, values)


@pytest.mark.parametrize("kind", ["truncated", "no_job_id", "html", "5xx"])
async def test_job_created_but_the_answer_is_unusable(
    sandbox: SandboxFactory, tmp_path: Path, kind: str
) -> None:
    """A 200 truncated, without jobId or HTML, or a 5xx after acceptance: proven, not resent."""
    if kind == "5xx":
        sb = await sandbox(accept_then_5xx_rate=0.3, seed=3)
    else:
        sb = await sandbox(accept_then_garbage_rate=0.3, garbage_kinds=(kind,), seed=3)
    values = make_ids(2000)
    report = tmp_path / "r.json"
    _, codes = await submit_until_done(
        sb, write_ids(tmp_path / "ids.txt", values), tmp_path / "j.journal", "--report", str(report)
    )
    assert codes == [0]  # the proof completes within the submit itself
    faults = sb.ledger.faults["accept_then_5xx"] + sb.ledger.faults["accept_then_garbage"]
    assert faults > 0
    data = json.loads(report.read_text())
    assert len(data["proven_chunks"]) == faults
    assert data["accounted"] and data["ids_pending"] == 0
    assert_paid_once(sb, values)


async def test_status_shows_the_evidence(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """The journal records which job proved what, and `status` shows it."""
    sb = await sandbox(drop_after_accept_rate=0.5, seed=5)
    journal = tmp_path / "j.journal"
    await submit_until_done(sb, write_ids(tmp_path / "ids.txt", make_ids(1000)), journal)
    proc = await start_cli("status", str(journal))
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    text = out.decode()
    assert "lost answers and their proof" in text
    proven = [line for line in text.splitlines() if "results hold exactly" in line]
    assert len(proven) == sb.ledger.faults["drop_after_accept"]


@pytest.mark.parametrize("skew", [3600.0, -3600.0])
async def test_server_clock_skew(sandbox: SandboxFactory, tmp_path: Path, skew: float) -> None:
    """A server clock an hour off: candidates are found on its clock, not ours."""
    sb = await sandbox(clock_skew=skew, drop_after_accept_rate=0.3, seed=8)
    values = make_ids(1500)
    path = write_ids(tmp_path / "ids.txt", values)
    report = await Runner(settings_for(sb), [str(path)]).run()
    assert report.ok, report.stop_message
    assert sb.ledger.faults["drop_after_accept"] > 0
    assert_paid_once(sb, values)


# -- other clients of the account ------------------------------------------------------------


async def test_jobs_of_another_client_are_ruled_out_by_content(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Jobs made by hand around each lost submit, same size, some still running: none claimed."""
    sb = await sandbox(drop_after_accept_rate=0.3, accept_then_5xx_rate=0.1, seed=13)
    values = make_ids(2000)
    path = write_ids(tmp_path / "ids.txt", values)
    stop = asyncio.Event()

    async def person_in_the_web_ui() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            # Same size as the run's chunks, created at the same moments, finishing later.
            sb.add_foreign_job(make_ids(100, prefix=f"hand{n}"), finished_after=0.3)
            await asyncio.sleep(0.02)

    person = asyncio.create_task(person_in_the_web_ui())
    try:
        report = await Runner(settings_for(sb), [str(path)], journal=tmp_path / "j").run()
    finally:
        stop.set()
        await person
    assert report.ok, report.stop_message
    assert report.proven_chunks
    assert sb.ledger.foreign_ids > 0
    assert_paid_once(sb, values)
    foreign = {j.job_id for j in sb.ledger.jobs.values() if j.foreign}
    assert not foreign & {j.job_id for j in report.jobs}


async def test_two_backfills_at_once_on_one_account(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Two runs at once, 10% HTML 502 pages before any job: each id once, no job in both."""
    sb = await sandbox(fault_5xx_rate=0.1, fault_html=True, seed=21)
    a, b = make_ids(3000, prefix="runa"), make_ids(3000, prefix="runb")
    ja, jb = tmp_path / "a.journal", tmp_path / "b.journal"
    runs = await asyncio.gather(
        submit_until_done(sb, write_ids(tmp_path / "a.txt", a), ja),
        submit_until_done(sb, write_ids(tmp_path / "b.txt", b), jb),
    )
    assert [codes[-1] for _, codes in runs] == [0, 0]
    assert sb.ledger.faults["5xx"] > 0
    assert_paid_once(sb, a + b)
    jobs_a, jobs_b = journal_jobs(ja), journal_jobs(jb)
    assert not jobs_a & jobs_b
    assert jobs_a | jobs_b == set(sb.ledger.jobs)


# -- one writer per journal ------------------------------------------------------------------

#: A held submit asks often whether the queue has room again: released, it ends soon.
_POLL = cli_env(BULKJOB_QUEUE_POLL_INTERVAL="0.05")


def _hold_the_queue(sb: Sandbox) -> Callable[[], None]:
    """Another client's job takes the account's only running-job slot, so a run waits on
    "queue full", holding its journal, for as long as the test needs (however slowly the
    overlapping commands start on a busy machine); the returned call lets it go on."""
    sb.config.running_job_limit = 1
    blocker = sb.add_foreign_job(make_ids(1, prefix="other"), finished_after=3600.0)

    def release() -> None:
        sb.config.running_job_limit = None
        sb.ledger.jobs[blocker].finished_after = 0.0

    return release


async def test_two_resumes_at_once(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """A second `resume` of the same journal exits 10 naming the first; nothing paid twice."""
    sb = await sandbox(quota=1500, latency=0.1)
    values = make_ids(5000)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "j.journal"
    code, _ = await run_cli(*submit_args(path, journal), *cli_flags(sb))
    assert code == 3
    sb.add_quota(10_000)
    release = _hold_the_queue(sb)  # the first resume waits (holding the journal) until released
    first = await start_cli("resume", str(journal), *cli_flags(sb, concurrency=1), env=_POLL)
    await wait_for_lock(journal)
    code, err = await run_cli("resume", str(journal), *cli_flags(sb))
    assert code == 10, err
    assert f"in use by pid {first.pid} on host" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    release()
    code, err = await finish_cli(first)
    assert code == 0, err
    assert_paid_once(sb, values)


async def test_resume_while_the_submit_still_runs(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """`resume` during the original `submit` (cron overlap) exits 10; the submit finishes once."""
    sb = await sandbox(throttle_requests=10, throttle_window=1.0, latency=0.01)
    release = _hold_the_queue(sb)  # the submit outlives the three overlapping commands
    values = make_ids(6000)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "j.journal"
    flags = cli_flags(sb, max_requests=10)
    submit = await start_cli(*submit_args(path, journal), *flags, env=_POLL)
    await wait_for_lock(journal)
    for command in (["resume"], ["wait"], ["results", "--out", str(tmp_path / "out")]):
        code, err = await run_cli(*command, str(journal), *cli_flags(sb))
        assert code == 10, err
        assert f"pid {submit.pid}" in err
    release()
    code, err = await finish_cli(submit)
    assert code == 0, err
    assert_paid_once(sb, values)
    assert sb.ledger.throttled == 0


async def test_status_reads_alongside_a_running_submit(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """`status` without --refresh takes no lock: it works while a submit holds the journal."""
    sb = await sandbox(throttle_requests=10, throttle_window=1.0)
    release = _hold_the_queue(sb)  # the submit holds the journal until released
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(4000)), tmp_path / "j.journal"
    submit = await start_cli(
        *submit_args(path, journal),
        *cli_flags(sb, max_requests=10),
        env=_POLL,
    )
    await wait_for_lock(journal)
    code, err = await run_cli("status", str(journal))
    assert code == 0, err
    code, err = await run_cli("status", str(journal), "--refresh", *cli_flags(sb))
    assert code == 10, err
    release()
    assert (await finish_cli(submit))[0] == 0


# -- crashes ------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_kill_9_at_random_points_with_lost_answers(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """kill -9 at random points (mid-send, mid-proof), under lost answers: resume pays once."""
    rng = random.Random(17)
    for round_ in range(4):
        sb = await sandbox(
            drop_after_accept_rate=0.25,
            accept_then_garbage_rate=0.1,
            throttle_requests=40,
            throttle_window=1.0,
            latency=0.01,
            seed=round_,
        )
        values = make_ids(2500, prefix=f"k{round_}")
        path, journal = write_ids(tmp_path / f"{round_}.txt", values), tmp_path / f"{round_}.j"
        flags = cli_flags(sb, max_requests=40)
        proc = await start_cli(*submit_args(path, journal), *flags)
        # The run's journal exists once it sends (a slow start must not be killed first).
        async with asyncio.timeout(60):
            while not sb.ledger.requests:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        for _ in range(2):  # killed twice: once in the submit, once in the first resume
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            kill_9(proc)
            await proc.wait()
            proc = await start_cli("resume", str(journal), *flags)
        code, err = await finish_cli(proc)
        assert code == 0, err
        assert_paid_once(sb, values)
        assert sb.ledger.throttled == 0


# -- what cannot be proven ----------------------------------------------------------------------


async def test_unprovable_lost_answer_exits_8_until_the_user_decides(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Lost answers whose jobs failed without results: exit 8, never a resend on a guess."""
    sb = await sandbox(drop_after_accept_rate=0.3, job_fail_rate=1.0, seed=2)
    values = make_ids(1000)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "j.journal"
    report = tmp_path / "r.json"
    code, err = await run_cli(
        *submit_args(path, journal),
        *cli_flags(sb),
        "--report",
        str(report),
    )
    assert code == 8, err
    data = json.loads(report.read_text())
    assert data["ambiguous_chunks"] and data["accounted"]
    assert "--abandon-ambiguous" in err
    paid = sb.ledger.ids_accepted
    assert sb.ledger.duplicates == 0 and paid == len(values)
    code, err = await run_cli("resume", str(journal), *cli_flags(sb), "--abandon-ambiguous")
    assert code == 6, err  # done; the abandoned chunks are reported as rejected
    assert "abandoned by request" in err
    assert sb.ledger.ids_accepted == paid


# -- a bounded, seeded chaos run ----------------------------------------------------------------


@pytest.mark.slow
async def test_chaos(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """Seeded random scenarios mixing every fault, crashes and resumes: each pays once."""
    rng = random.Random(2026)
    for n in range(6):
        faults = {
            "fault_5xx_rate": rng.choice([0.0, 0.1, 0.3]),
            "fault_html": rng.random() < 0.5,
            "drop_rate": rng.choice([0.0, 0.05]),
            "drop_after_accept_rate": rng.choice([0.0, 0.2, 0.4]),
            "accept_then_5xx_rate": rng.choice([0.0, 0.1]),
            "accept_then_garbage_rate": rng.choice([0.0, 0.1]),
            "clock_skew": rng.choice([0.0, 90.0, -400.0]),
            "list_lag": rng.choice([0.0, 0.05, 0.15]),
        }
        sb = await sandbox(seed=n, **faults)
        values = make_ids(rng.randrange(500, 2500), prefix=f"c{n}")
        chunk = str(rng.choice([50, 100, 333]))
        path, journal = write_ids(tmp_path / f"c{n}.txt", values), tmp_path / f"c{n}.j"
        flags = [*cli_flags(sb, concurrency=rng.choice([1, 4, 8])), "--chunk-size", chunk]
        proc = await start_cli("submit", str(path), "--journal", str(journal), *flags)
        if rng.random() < 0.5:
            await asyncio.sleep(rng.uniform(0.1, 0.6))
            kill_9(proc)
        code, err = await finish_cli(proc)
        for _ in range(4):
            if code == 0:
                break
            if journal.exists():
                code, err = await run_cli("resume", str(journal), *cli_flags(sb))
            else:  # killed before the journal existed: nothing was sent, submit again
                assert sb.ledger.requests == 0
                code, err = await run_cli("submit", str(path), "--journal", str(journal), *flags)
        assert code == 0, f"scenario {n} {faults}: {err}"
        assert_paid_once(sb, values)
