"""End-to-end runs of the pipeline against the sandbox: every id accounted for, once."""

from __future__ import annotations

import asyncio

import pytest

from bulkjob._errors import ConfigError, InputError
from bulkjob._report import RunReport
from bulkjob._runner import Runner
from bulkjob._settings import Settings
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    IdsWriter,
    SandboxFactory,
    make_ids,
    settings_for,
    wait_until,
)


def assert_accounted(report: RunReport) -> None:
    """The report's invariant, both as the property and spelled out."""
    assert report.accounted
    assert report.ids_read == (
        report.ids_submitted
        + report.ids_invalid
        + report.ids_duplicate
        + report.ids_rejected
        + report.ids_pending
    )


def assert_no_double_pay(report: RunReport, sb: Sandbox) -> None:
    """What the report says was submitted is exactly what the server accepted, once each."""
    assert sb.ledger.duplicates == 0
    assert report.ids_submitted == sb.ledger.ids_accepted
    assert {j.job_id for j in report.jobs} == set(sb.ledger.jobs)


async def run(settings: Settings, *inputs: object) -> RunReport:
    return await Runner(settings, [str(i) for i in inputs]).run()


async def test_every_valid_id_accepted_once(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """A clean run submits every id exactly once, in jobs of at most chunk_size."""
    sb = await sandbox()
    values = make_ids(1050)
    report = await run(settings_for(sb, chunk_size=100), ids(values))
    assert report.ok
    assert report.stop_reason is None
    assert set(sb.ledger.accepted_ids) == set(values)
    assert sb.ledger.duplicates == 0
    assert sb.ledger.largest_job <= 100
    assert len(report.jobs) == 11
    assert report.ids_submitted == report.ids_read == 1050
    assert_accounted(report)
    assert_no_double_pay(report, sb)


async def test_jobs_record_their_input_stretch(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """Each job in the report names its chunk and the file:line of its first and last id."""
    sb = await sandbox()
    path = ids(250)
    report = await run(settings_for(sb, chunk_size=100), path)
    assert [(j.chunk, j.ids) for j in report.jobs] == [(1, 100), (2, 100), (3, 50)]
    assert report.jobs[1].first == f"{path}:101"
    assert report.jobs[1].last == f"{path}:200"


async def test_several_inputs_in_one_run(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """Ids from several files are all submitted."""
    sb = await sandbox()
    a, b = make_ids(120, prefix="a"), make_ids(80, prefix="b")
    report = await run(settings_for(sb), ids(a, name="a.txt"), ids(b, name="b.txt"))
    assert set(sb.ledger.accepted_ids) == set(a) | set(b)
    assert_accounted(report)


async def test_throttle_window_never_exceeded(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """With the client's limit matching the server's, no 429 and no window over the limit."""
    sb = await sandbox(throttle_requests=10, throttle_window=0.3)
    values = make_ids(2000)
    settings = settings_for(sb, max_requests=10, per_seconds=0.3, chunk_size=100)
    report = await run(settings, ids(values))
    assert sb.ledger.throttled == 0
    assert report.throttled == 0
    assert sb.ledger.max_in_window(0.3) <= 10
    assert set(sb.ledger.accepted_ids) == set(values)
    assert_accounted(report)


async def test_faults_lose_and_duplicate_nothing(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """Under 10% server faults and 5% dropped connections every id is accepted exactly once."""
    sb = await sandbox(fault_5xx_rate=0.1, drop_rate=0.05, seed=7)
    values = make_ids(3000)
    report = await run(settings_for(sb, max_attempts=20), ids(values))
    assert report.ok
    assert sb.ledger.faults["5xx"] + sb.ledger.faults["drop"] > 0
    # Which requests the seeded faults hit depends on the order requests arrive in (it
    # differs between Python versions): a faulted submit is proven, anything else retried.
    assert report.retries + len(report.proven_chunks) > 0
    assert set(sb.ledger.accepted_ids) == set(values)
    assert_no_double_pay(report, sb)
    assert_accounted(report)


async def test_quota_exhausted_mid_run(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """Running out of quota stops the run with the rest pending and nothing paid twice."""
    sb = await sandbox(quota=550)
    report = await run(settings_for(sb, chunk_size=100), ids(1000))
    assert report.stop_reason == "quota"
    assert report.stop_message is not None
    assert report.ids_submitted == 500
    assert report.ids_pending == 500
    assert report.pending_chunks == sorted(report.pending_chunks)
    assert_accounted(report)
    assert_no_double_pay(report, sb)


async def test_queue_full_stops_the_run(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """With on_queue_full=stop, the running-job limit stops the run, everything accounted."""
    sb = await sandbox(running_job_limit=1, processing_after=60.0)
    report = await run(settings_for(sb, chunk_size=100, on_queue_full="stop"), ids(500))
    assert report.stop_reason == "queue_full"
    assert report.ids_submitted == 100
    assert report.ids_pending == 400
    assert_accounted(report)
    assert_no_double_pay(report, sb)


async def test_bad_token_stops_the_run(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """A refused token stops the run as auth with every id pending."""
    sb = await sandbox()
    report = await run(settings_for(sb, access_token="not-the-token"), ids(300))
    assert report.stop_reason == "auth"
    assert report.ids_submitted == 0
    assert report.ids_pending == 300
    assert sb.ledger.jobs == {}
    assert_accounted(report)


async def test_minted_token_run(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """A run with client credentials mints a token and submits everything."""
    sb = await sandbox()
    values = make_ids(300)
    settings = settings_for(sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    report = await run(settings, ids(values))
    assert report.ok
    assert set(sb.ledger.accepted_ids) == set(values)


async def test_server_rejection_is_counted_and_run_goes_on(
    sandbox: SandboxFactory, ids: IdsWriter
) -> None:
    """A chunk the server refuses is counted rejected; the other chunks still go."""
    # The client accepts any non-blank value, the server only 64-character ids.
    sb = await sandbox()
    values = [*make_ids(100), "short", *make_ids(100, start=100)]
    report = await run(settings_for(sb, id_pattern=r"\S+"), ids(values))
    assert report.stop_reason is None
    assert [(r.chunk, r.ids, r.error_number) for r in report.rejected] == [(2, 100, "400-105")]
    assert report.ids_rejected == 100
    assert report.ids_submitted == 101
    assert not report.ok
    assert_accounted(report)
    assert_no_double_pay(report, sb)


async def test_invalid_ids_counted_with_samples(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """Invalid lines are counted, not sent, and sampled with file:line."""
    sb = await sandbox()
    values = [*make_ids(10), "too-short", *make_ids(5, start=10), "has space" + "x" * 60]
    path = ids(values)
    report = await run(settings_for(sb), path)
    assert report.ids_invalid == 2
    assert report.ids_submitted == 15
    assert report.invalid_samples[0].startswith(f"{path}:11: 'too-short'")
    assert report.invalid_samples[1].startswith(f"{path}:17: ")
    assert sb.ledger.rejected["validation"] == 0
    assert_accounted(report)


async def test_dedupe_counts_duplicates(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """With dedupe each id is sent once and the repeats are counted."""
    sb = await sandbox()
    values = make_ids(200)
    report = await run(settings_for(sb, dedupe=True), ids([*values, *values[:50]]))
    assert report.ids_duplicate == 50
    assert report.ids_submitted == 200
    assert sb.ledger.duplicates == 0
    assert_accounted(report)


async def test_only_invalid_ids_is_input_error(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """A file without one valid id raises InputError and the sandbox hears nothing."""
    sb = await sandbox()
    with pytest.raises(InputError, match="no valid ids"):
        await run(settings_for(sb), ids(["nope", "also-bad", "x"]))
    assert sb.ledger.requests == 0


async def test_no_credentials_is_config_error(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """A run without any credentials fails before reading or sending anything."""
    sb = await sandbox()
    with pytest.raises(ConfigError):
        await run(settings_for(sb, access_token=None), ids(5))
    assert sb.ledger.requests == 0


async def test_request_stop_mid_run(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """request_stop() during a run ends it as interrupted with every id accounted for."""
    sb = await sandbox(latency=0.01)
    runner = Runner(settings_for(sb, concurrency=2, chunk_size=100), [str(ids(3000))])
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: sb.ledger.ids_accepted > 0)
    runner.request_stop()
    report = await task
    assert report.stop_reason == "interrupted"
    assert report.ids_pending > 0
    assert_accounted(report)
    assert_no_double_pay(report, sb)


async def test_first_stop_reason_wins(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """A later stop does not overwrite the reason of the first."""
    sb = await sandbox(quota=150)
    runner = Runner(settings_for(sb, chunk_size=100), [str(ids(500))])
    report = await runner.run()
    runner.request_stop("interrupted", "late")
    assert report.stop_reason == "quota"


async def test_drain_timeout_cancels_in_flight(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """Requests still in flight after drain_timeout are cancelled and counted pending."""
    sb = await sandbox(latency=0.3)
    settings = settings_for(sb, concurrency=2, chunk_size=100, drain_timeout=0.01)
    runner = Runner(settings, [str(ids(1000))])
    task = asyncio.create_task(runner.run())
    await wait_until(lambda: sb.ledger.requests >= 2)
    runner.request_stop()
    report = await task
    await sb.close()  # waits for the server's handlers, so the ledger is final
    assert report.stop_reason == "interrupted"
    assert report.ids_submitted == 0
    # A signal stops the reading too: everything read so far is pending.
    assert report.input_complete is False
    assert 0 < report.ids_pending == report.ids_read <= 1000
    assert_accounted(report)
    assert_no_double_pay(report, sb)


async def test_drop_after_accept_pays_nothing_twice(
    sandbox: SandboxFactory, ids: IdsWriter
) -> None:
    """A connection dropped after the server accepted a job does not get the ids paid twice."""
    sb = await sandbox(drop_after_accept_rate=0.2, seed=1)
    report = await run(settings_for(sb, max_attempts=20), ids(1000))
    assert_no_double_pay(report, sb)
