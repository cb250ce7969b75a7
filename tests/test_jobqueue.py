"""Tests for keeping the account's job queue full: the limit, room, polls and webhooks."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from bulkjob._lifecycle import wait
from bulkjob._runner import Runner
from bulkjob._webhook import job_id_in
from tests.conftest import (
    SandboxFactory,
    assert_paid_once,
    make_ids,
    settings_for,
    write_ids,
)


async def run_through(
    sb: object, tmp_path: Path, jobs: int, **settings: object
) -> tuple[list[str], object]:
    """``jobs`` jobs of 100 ids through ``sb``; the ids and the report."""
    values = make_ids(jobs * 100)
    path = write_ids(tmp_path / "ids.txt", values)
    report = await Runner(settings_for(sb, **settings), [str(path)]).run()  # type: ignore[arg-type]
    return values, report


async def test_a_known_limit_is_kept_without_a_single_refusal(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """max_running_jobs=2: never more than 2 running, no queue-full answer at all."""
    sb = await sandbox(running_job_limit=2, finished_after=0.2)
    values, report = await run_through(sb, tmp_path, 12, max_running_jobs=2)
    assert report.ok  # type: ignore[attr-defined]
    assert sb.ledger.rejected["queue_full"] == 0
    assert sb.ledger.max_running() == 2
    assert (report.running_job_limit, report.running_job_limit_source) == (2, "setting")  # type: ignore[attr-defined]
    assert_paid_once(sb, values)


async def test_the_limit_is_learned_from_the_queue_full_message(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Without the setting, the first queue-full's "2 jobs are already running" is the limit."""
    sb = await sandbox(running_job_limit=2, finished_after=0.2)
    values, report = await run_through(sb, tmp_path, 16, concurrency=4)
    assert report.ok  # type: ignore[attr-defined]
    assert (report.running_job_limit, report.running_job_limit_source) == (2, "message")  # type: ignore[attr-defined]
    # One burst while it is learned (the sends already on their way), then none.
    assert sb.ledger.rejected["queue_full"] <= 4
    assert sb.ledger.max_running() <= 2
    assert_paid_once(sb, values)


async def test_without_a_number_the_limit_is_the_open_jobs(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A queue-full text without a number: the run's open jobs at that moment are the limit."""
    sb = await sandbox(
        running_job_limit=3,
        finished_after=0.2,
        queue_full_text="Too many job submitted to the processing queue.",
    )
    values, report = await run_through(sb, tmp_path, 12, concurrency=1)
    assert report.ok  # type: ignore[attr-defined]
    assert (report.running_job_limit, report.running_job_limit_source) == (3, "open jobs")  # type: ignore[attr-defined]
    assert sb.ledger.rejected["queue_full"] == 1
    assert_paid_once(sb, values)


async def test_a_limit_shrinks_while_another_client_holds_slots(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Another client takes a slot mid-run: the run lowers its share, no storm of 400s."""
    sb = await sandbox(running_job_limit=2, finished_after=0.2)
    values = make_ids(2000)
    runner = Runner(
        settings_for(sb, max_running_jobs=2, queue_poll_interval=0.5),
        [str(write_ids(tmp_path / "ids.txt", values))],
    )

    async def someone_else() -> None:
        while len(sb.ledger.jobs) < 4:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        sb.add_foreign_job(make_ids(10, prefix="other"), finished_after=2.0)

    helper = asyncio.create_task(someone_else())
    report = await runner.run()
    await helper
    assert report.ok
    assert report.running_job_limit is not None
    assert 1 <= sb.ledger.rejected["queue_full"] <= 4
    assert sb.ledger.max_running() <= 3  # the hand-made job is let in over the limit
    assert_paid_once(sb, values)


async def test_polls_and_submits_share_the_window(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """Status polls count against the throttle like submits: never a 429."""
    sb = await sandbox(
        running_job_limit=2, finished_after=0.3, throttle_requests=8, throttle_window=0.5
    )
    values, report = await run_through(
        sb, tmp_path, 10, max_requests=8, per_seconds=0.5, max_running_jobs=2
    )
    assert report.ok  # type: ignore[attr-defined]
    assert report.status_polls > 0  # type: ignore[attr-defined]
    assert sb.ledger.throttled == 0
    assert sb.ledger.max_in_window(0.5) <= 8
    assert_paid_once(sb, values)


async def test_on_queue_full_stop_still_stops(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """--on-queue-full stop keeps exit 4's meaning: the run ends on the first refusal."""
    sb = await sandbox(running_job_limit=1, processing_after=30.0)
    _, report = await run_through(sb, tmp_path, 3, concurrency=1, on_queue_full="stop")
    assert report.stop_reason == "queue_full"  # type: ignore[attr-defined]
    assert sb.ledger.ids_accepted == 100


async def test_webhooks_make_finishes_seen_and_lost_ones_are_polled(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """With --webhook-listen the sandbox's finish calls are heard; lost ones are polled."""
    sb = await sandbox(running_job_limit=2, finished_after=0.3, webhook_loss_rate=0.5, seed=3)
    values, report = await run_through(
        sb, tmp_path, 12, max_running_jobs=2, webhook_listen="127.0.0.1:0"
    )
    assert report.ok  # type: ignore[attr-defined]
    assert sb.ledger.webhooks["sent"] > 0  # answered by the receiver
    assert sb.ledger.webhooks["lost"] > 0  # and the run went on all the same
    assert all(job.webhook and "/bulkjob/webhook" in job.webhook for job in sb.ledger.jobs.values())
    assert_paid_once(sb, values)


@pytest.mark.parametrize(
    ("content_type", "body", "query", "expected"),
    [
        ("application/json", '{"jobId": "a1", "status": "finished"}', {}, "a1"),
        ("application/json", '{"job": {"id": "b2"}}', {}, "b2"),
        ("application/xml", "<BulkJobStatus><jobId>c3</jobId></BulkJobStatus>", {}, "c3"),
        ("application/x-www-form-urlencoded", "jobId=d4&status=finished", {}, "d4"),
        ("", "", {"jobId": "e5"}, "e5"),
        ("text/plain", "something finished", {}, None),
    ],
)
def test_a_webhook_names_its_job_wherever_it_puts_it(
    content_type: str, body: str, query: dict[str, str], expected: str | None
) -> None:
    """The payload is not public: the job id is read from JSON, XML, a form or the query."""
    assert job_id_in(content_type, body, query) == expected


async def test_wait_hears_the_webhooks_of_the_jobs_it_waits_for(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """`wait --webhook-listen` on the submit's address is woken by each finish, not the poll."""
    probe = socket.create_server(("127.0.0.1", 0))
    listen = f"127.0.0.1:{probe.getsockname()[1]}"
    probe.close()
    sb = await sandbox(finished_after=3.0)  # the wait is listening long before they finish
    journal = tmp_path / "j.journal"
    settings = settings_for(sb, webhook_listen=listen)
    path = write_ids(tmp_path / "ids.txt", make_ids(300))
    assert (await Runner(settings, [str(path)], journal=journal).run()).ok
    # A poll interval far longer than the jobs: only the webhooks can end this early.
    done = await asyncio.wait_for(wait(journal, settings, poll_interval=120.0), 60)
    assert done.jobs == {"finished": (3, 300)}
    assert sb.ledger.webhooks["sent"] == 3
