"""Tests for the Submitter's proof: what settles a lost answer, what waits, what cannot tell."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkjob._errors import IncompleteError
from bulkjob._evidence import IdSet
from bulkjob._journal import ChunkState
from bulkjob._lifecycle import status, wait
from bulkjob._progress import Progress
from bulkjob._runner import Runner
from tests.conftest import (
    SandboxFactory,
    assert_paid_once,
    journal_rows,
    make_ids,
    settings_for,
    write_ids,
)

ID = st.text("abcdefghij", min_size=1, max_size=6)


@given(st.lists(ID, min_size=1, max_size=40), st.randoms())
def test_id_set_ignores_order_and_repeats(ids: list[str], rnd: random.Random) -> None:
    """A results file in another order, with repeated rows, is the same set."""
    shuffled = ids + ids[: len(ids) // 2]
    rnd.shuffle(shuffled)
    assert IdSet.of(ids).relation(IdSet.of(shuffled)) == "same"


@given(st.sets(ID, min_size=2, max_size=40), ID)
def test_id_set_relations(ids: set[str], other: str) -> None:
    """An extra id makes a job foreign; a strict subset is only a part, never a proof."""
    chunk = IdSet.of(ids)
    if other not in ids:
        assert chunk.relation(IdSet.of([*ids, other])) == "foreign"
    part = sorted(ids)[:-1]
    assert chunk.relation(IdSet.of(part)) == "part"
    stored = IdSet.stored(chunk.digest, chunk.hashes)
    assert stored == chunk


async def test_a_running_candidate_is_waited_for(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """A lost answer whose job is still running: awaiting proof, then proven once it finishes."""
    sb = await sandbox(drop_after_accept_rate=0.5, finished_after=0.8, seed=1)
    values = make_ids(600)
    runner = Runner(settings_for(sb), [str(write_ids(tmp_path / "ids.txt", values))])
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(runner.snapshot().awaiting_proof)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    report = await runner.run()
    watcher.cancel()
    assert report.ok
    assert max(seen) > 0
    assert report.proven_chunks
    assert_paid_once(sb, values)


async def test_a_foreign_subset_cannot_rule_a_chunk_out(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A job of another client holding part of a never-accepted chunk: exit 8, no resend."""
    sb = await sandbox(fault_5xx_rate=1.0)  # every submit lost before any job exists
    values = make_ids(100)
    path = write_ids(tmp_path / "ids.txt", values)
    runner = Runner(settings_for(sb), [str(path)], journal=tmp_path / "j")

    async def someone_submits_part_of_it() -> None:
        while not runner.snapshot().awaiting_proof:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        sb.add_foreign_job(values[:60])
        sb.config.fault_5xx_rate = 0.0  # the job list and results can be read again

    helper = asyncio.create_task(someone_submits_part_of_it())
    report = await runner.run()
    await helper
    assert report.stop_reason == "ambiguous"
    assert report.ambiguous_chunks == [1]
    assert sb.ledger.ids_accepted == 0  # never resent on a guess
    row = journal_rows(tmp_path / "j")[1]
    assert row.state is ChunkState.AMBIGUOUS
    assert "60 of this chunk's 100 ids" in (row.evidence or "")


async def test_the_results_id_column_is_a_setting(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """With results_id_column naming the server's column, lost answers are proven."""
    sb = await sandbox(results_id_column="contact_key", drop_after_accept_rate=0.4, seed=2)
    values = make_ids(1000)
    path = write_ids(tmp_path / "ids.txt", values)
    report = await Runner(settings_for(sb, results_id_column="contact_key"), [str(path)]).run()
    assert report.ok
    assert report.proven_chunks
    assert_paid_once(sb, values)


async def test_a_wrong_results_column_is_unprovable_not_resent(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Results without the configured id column prove nothing: exit 8 naming the setting."""
    sb = await sandbox(drop_after_accept_rate=1.0)
    values = make_ids(100)
    path = write_ids(tmp_path / "ids.txt", values)
    report = await Runner(settings_for(sb, results_id_column="nope"), [str(path)]).run()
    assert report.stop_reason == "ambiguous"
    assert "results_id_column" in (report.stop_message or "") or report.ambiguous_chunks == [1]
    assert sb.ledger.ids_accepted == 100 and sb.ledger.duplicates == 0


async def test_a_job_list_slower_than_the_grace_is_covered_by_a_longer_grace(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A list lagging 0.5 s behind submits, grace 0.8 s: lost answers are still proven."""
    sb = await sandbox(list_lag=0.5, accept_then_5xx_rate=0.3, fault_5xx_rate=0.2, seed=3)
    values = make_ids(1000)
    path = write_ids(tmp_path / "ids.txt", values)
    report = await Runner(settings_for(sb, reconcile_grace=0.8), [str(path)]).run()
    assert report.ok, report.stop_message
    assert_paid_once(sb, values)


async def test_wait_proves_what_a_stopped_run_left_parked(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A run stopped with chunks awaiting proof; `wait` proves them from the journal alone."""
    sb = await sandbox(drop_after_accept_rate=0.5, finished_after=1.0, seed=4)
    values = make_ids(800)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "j.journal"
    settings = settings_for(sb)
    runner = Runner(settings, [str(path)], journal=journal)

    async def stop_while_parked() -> None:
        while not (sb.ledger.ids_accepted == 800 and runner.snapshot().awaiting_proof):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        runner.request_stop("interrupted", "test")

    stopper = asyncio.create_task(stop_while_parked())
    report = await runner.run()
    await stopper
    assert report.stop_reason == "interrupted"
    assert report.awaiting_proof
    assert report.accounted
    done = await wait(journal, settings, poll_interval=0.05)
    assert done.chunks == {"accepted": (8, 800)}
    assert len(done.evidence) == len(report.awaiting_proof)
    resumed = await Runner(settings, [str(path)], journal=journal, resume=True).run()
    assert resumed.ok
    assert_paid_once(sb, values)
    assert (await status(journal, settings)).chunks == {"accepted": (8, 800)}


async def test_a_long_history_without_time_filters_is_read_only_as_far_as_needed(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A server refusing start/end lists 2,500 old jobs newest first: the proof stops at
    the first job older than the send and resends, rather than call the list too long."""
    sb = await sandbox(time_filters=False, clock_skew=-7200.0)
    for n in range(2500):  # the account's history: two hours old on the server's clock
        sb.add_foreign_job([f"{'h' * 50}{n:014d}"])
    sb.config.clock_skew = 0.0
    sb.config.fault_5xx_rate = 1.0
    sb.config.submit_faults_only = True
    values = make_ids(100)
    runner = Runner(settings_for(sb), [str(write_ids(tmp_path / "ids.txt", values))])

    async def heal() -> None:
        while not runner.snapshot().awaiting_proof:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        sb.config.fault_5xx_rate = 0.0

    healer = asyncio.create_task(heal())
    report = await runner.run()
    await healer
    assert report.ok, report.stop_message
    assert report.proven_chunks == [1]
    assert sb.ledger.routes["jobs"] <= 6  # a page or two per round, never the whole history
    assert_paid_once(sb, values)


async def test_the_grace_counts_from_the_lost_answer(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A job created 1.5 s into a slow submit, listed 0.5 s later, grace 1 s: still proven."""
    sb = await sandbox(drop_after_accept_rate=1.0, list_lag=0.5, latency=1.5)
    values = make_ids(50)
    settings = settings_for(sb, chunk_size=50, concurrency=1, reconcile_grace=1.0)
    runner = Runner(settings, [str(write_ids(tmp_path / "ids.txt", values))])

    async def slow_submit_only() -> None:
        while sb.ledger.routes["submit"] < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        sb.config.latency = 0.0
        while not sb.ledger.ids_accepted:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        sb.config.drop_after_accept_rate = 0.0

    helper = asyncio.create_task(slow_submit_only())
    report = await runner.run()
    await helper
    assert report.ok and report.proven_chunks == [1]
    assert_paid_once(sb, values)


@pytest.mark.parametrize("step", [300.0, -300.0])
async def test_a_server_clock_step_after_the_send(
    sandbox: SandboxFactory, tmp_path: Path, step: float
) -> None:
    """The server's clock steps by 5 minutes after a lost answer: its send time still holds."""
    sb = await sandbox(drop_after_accept_rate=1.0, list_lag=0.0)
    values = make_ids(50)
    settings = settings_for(sb, chunk_size=50, concurrency=1, reconcile_grace=1.0)
    runner = Runner(settings, [str(write_ids(tmp_path / "ids.txt", values))])

    async def step_the_clock() -> None:
        while not sb.ledger.ids_accepted:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        sb.config.drop_after_accept_rate = 0.0
        sb.config.clock_skew = step

    helper = asyncio.create_task(step_the_clock())
    report = await runner.run()
    await helper
    assert report.ok and report.proven_chunks == [1]
    assert_paid_once(sb, values)


async def test_results_the_csv_module_cannot_read_end_the_run(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A results field past the csv module's limit: the chunk is unprovable; no hang."""
    sb = await sandbox(id_pattern=None, accept_then_garbage_rate=1.0, garbage_kinds=("no_job_id",))
    values = ["x" * 140_000]
    settings = settings_for(sb, chunk_size=10, concurrency=1, id_pattern=r"\S+")
    report = await asyncio.wait_for(
        Runner(settings, [str(write_ids(tmp_path / "ids.txt", values))]).run(), 30
    )
    assert report.stop_reason == "ambiguous"
    assert sb.ledger.ids_accepted == 1 and sb.ledger.duplicates == 0


async def test_a_token_on_a_login_host_two_hours_behind_is_minted_once(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """expirationTime is read on the login host's clock: one token, not one per request."""
    sb = await sandbox(clock_skew=-7200.0, token_lifetime=3600.0)
    values = make_ids(500)
    settings = settings_for(
        sb, client_id="sandbox-client", client_secret="sandbox-secret", concurrency=2
    ).replace(access_token=None)
    report = await Runner(settings, [str(write_ids(tmp_path / "ids.txt", values))]).run()
    assert report.ok
    assert sb.ledger.token_requests == 1


async def test_wait_never_takes_the_runs_own_jobs_for_candidates(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Own jobs that failed without results are no candidates: a lost submit is not ambiguous."""
    sb = await sandbox(job_fail_rate=1.0, fault_5xx_rate=1.0, submit_faults_only=True)
    values = make_ids(300)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "j.journal"
    settings = settings_for(sb, concurrency=1)
    runner = Runner(settings, [str(path)], journal=journal)

    async def lose_one_then_stop() -> None:
        while not runner.snapshot().awaiting_proof:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        sb.config.fault_5xx_rate = 0.0
        while sb.ledger.ids_accepted < 200:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        runner.request_stop("interrupted", "test")

    helper = asyncio.create_task(lose_one_then_stop())
    report = await runner.run()
    await helper
    assert report.awaiting_proof == [1]
    with pytest.raises(IncompleteError):  # chunk 1 proven never accepted: resume sends it
        await wait(journal, settings, poll_interval=0.05)
    assert journal_rows(journal)[1].state is ChunkState.PENDING
    assert sb.ledger.ids_accepted == 200


async def test_a_server_clock_step_before_a_lost_send(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The server's clock steps between two sends; the second loses its answer: proven."""
    sb = await sandbox(list_lag=0.0)
    values = make_ids(100)
    # Two requests a second, spread: the step lands between the first answer and the
    # second send.
    settings = settings_for(
        sb,
        chunk_size=50,
        concurrency=1,
        reconcile_grace=1.0,
        max_requests=2,
        per_seconds=1.0,
        pacing="even",
    )
    runner = Runner(settings, [str(write_ids(tmp_path / "ids.txt", values))])

    async def step_then_lose() -> None:
        while not sb.ledger.ids_accepted:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        sb.config.clock_skew = 300.0  # no answer carries the new clock before the loss
        sb.config.drop_after_accept_rate = 1.0
        while sb.ledger.ids_accepted < 100:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        sb.config.drop_after_accept_rate = 0.0

    helper = asyncio.create_task(step_then_lose())
    report = await runner.run()
    await helper
    assert report.ok and report.proven_chunks == [2]
    assert_paid_once(sb, values)


async def test_resubmit_ambiguous_resends_once(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """--resubmit-ambiguous sends a reported chunk once more; if that is lost too, exit 8."""
    sb = await sandbox(job_fail_rate=1.0, accept_then_garbage_rate=1.0)
    values = make_ids(100)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "j.journal"
    first = await Runner(settings_for(sb), [str(path)], journal=journal).run()
    assert first.stop_reason == "ambiguous"
    again = await Runner(
        settings_for(sb), [str(path)], journal=journal, resume=True, ambiguous="resubmit"
    ).run()
    assert again.stop_reason == "ambiguous"
    assert sb.ledger.ids_accepted == 200  # paid twice, as the user accepted: never three times


async def test_a_stop_with_a_full_parking_lot_ends_at_once(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Lost answers fill the parking lot; a stop frees the workers held back by it."""
    sb = await sandbox(fault_5xx_rate=1.0, submit_faults_only=True)
    settings = settings_for(sb, concurrency=1, reconcile_grace=600.0, drain_timeout=600.0)
    runner = Runner(settings, [str(write_ids(tmp_path / "ids.txt", make_ids(3000)))])

    async def stop_when_full() -> None:
        while runner.snapshot().awaiting_proof < 16:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.1)
        runner.request_stop("interrupted", "test")

    helper = asyncio.create_task(stop_when_full())
    report = await asyncio.wait_for(runner.run(), 60)  # a hang guard, not a timing
    await helper
    assert report.stop_reason == "interrupted"
    assert report.accounted
    assert len(report.awaiting_proof) == 16
    assert sb.ledger.ids_accepted == 0


async def test_final_progress_counts_the_chunks_left_awaiting_proof(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A run stopped while chunks are parked: its last progress snapshot (the TTY line and
    the final ``run.progress`` line) and its counts (the metrics) say as many chunks await
    proof as the report does, not 0 because the parking lot was emptied into the report."""
    sb = await sandbox(drop_after_accept_rate=0.5, finished_after=1.0, seed=4)
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(800)), tmp_path / "j.journal"
    snapshots: list[Progress] = []

    class Sink:
        def update(self, progress: Progress) -> None:
            snapshots.append(progress)

        def close(self) -> None:
            pass

    runner = Runner(settings_for(sb), [str(path)], journal=journal, progress=Sink())

    async def stop_while_parked() -> None:
        while not (sb.ledger.ids_accepted == 800 and runner.snapshot().awaiting_proof):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        runner.request_stop("interrupted", "test")

    stopper = asyncio.create_task(stop_while_parked())
    report = await runner.run()
    await stopper
    assert report.awaiting_proof
    assert snapshots[-1].awaiting_proof == len(report.awaiting_proof)
    assert runner.snapshot().awaiting_proof == len(report.awaiting_proof)
    assert runner.counts().awaiting_proof == len(report.awaiting_proof)
