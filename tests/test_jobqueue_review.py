"""Regressions found by a hostile review of the job queue, webhooks and the byte merge."""

from __future__ import annotations

import asyncio
import csv
import io
import socket
from pathlib import Path

import aiohttp
import pytest

import bulkjob._jobqueue as jobqueue_module
from bulkjob._errors import ConfigError, ProtocolError, QueueFullError
from bulkjob._jobqueue import JobQueue
from bulkjob._lifecycle import wait
from bulkjob._merge import check_closed, merge_files
from bulkjob._report import StopSignal
from bulkjob._runner import Runner
from bulkjob._settings import Settings
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    SandboxFactory,
    assert_paid_once,
    make_ids,
    parsed_merge,
    settings_for,
    write_ids,
)


def _free_address() -> str:
    probe = socket.create_server(("127.0.0.1", 0))
    try:
        return f"127.0.0.1:{probe.getsockname()[1]}"
    finally:
        probe.close()


def _own_max_running(sb: Sandbox) -> int:
    """The most jobs of this run (not another client's) that ever processed at once."""
    edges: list[tuple[float, int]] = []
    for job in sb.ledger.jobs.values():
        start, end = job.processing_start, job.processing_end
        if not job.foreign and start is not None and end is not None and end > start:
            edges += [(start, 1), (end, -1)]
    running = most = 0
    for _, step in sorted(edges):
        running += step
        most = max(most, running)
    return most


async def test_a_lost_answer_proven_a_job_lets_the_waiting_sends_go(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The only place is held by a lost answer; once it is proven a job, the sends that
    wait for room must hear that job finish (they used to wait forever)."""
    sb = await sandbox(finished_after=0.3, accept_then_5xx_rate=1.0)
    values = make_ids(400)
    runner = Runner(
        settings_for(sb, max_running_jobs=1, concurrency=2),
        [str(write_ids(tmp_path / "ids.txt", values))],
        journal=tmp_path / "j.journal",
    )
    task = asyncio.create_task(runner.run())
    while not sb.ledger.jobs:  # noqa: ASYNC110 - the first submit, answered 5xx
        await asyncio.sleep(0.001)
    sb.config.accept_then_5xx_rate = 0.0
    report = await asyncio.wait_for(task, 60)
    assert report.ok
    assert_paid_once(sb, values)


async def test_a_limit_learned_from_open_jobs_rises_when_the_others_leave(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """No number in the queue-full text and another client's two jobs at the start: the
    limit learned (1) is probed upward once they are gone, up to the account's 3."""
    sb = await sandbox(
        running_job_limit=3,
        finished_after=0.2,
        queue_full_text="Too many job submitted to the processing queue.",
    )
    sb.add_foreign_job(make_ids(10, prefix="other"), finished_after=0.6)
    sb.add_foreign_job(make_ids(10, prefix="oth2"), finished_after=0.6)
    values = make_ids(24 * 100)
    report = await Runner(
        settings_for(sb, concurrency=4, queue_poll_interval=0.3),
        [str(write_ids(tmp_path / "ids.txt", values))],
    ).run()
    assert report.ok
    assert report.running_job_limit_source == "open jobs"
    assert _own_max_running(sb) == 3
    assert_paid_once(sb, values)


def _queue(poll: float) -> JobQueue:
    settings = Settings(access_token="t", queue_poll_interval=poll)
    return JobQueue(settings, None, None, StopSignal())  # type: ignore[arg-type]


def test_queue_full_backoff_stays_at_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refusals that each come as the last hold ends: the hold doubles up to one poll
    interval and stays there (it used to fall back to an eighth and climb again)."""
    now = [100.0]
    monkeypatch.setattr(jobqueue_module.time, "monotonic", lambda: now[0])
    queue = _queue(poll=1.0)
    queue.limit, queue.source = 1, "setting"
    refused = QueueFullError("full", server_message="Too many jobs")
    holds = []
    for _ in range(7):
        place = jobqueue_module.Place(queue)
        queue.full(refused, place)
        holds.append(queue._hold_until - now[0])
        now[0] = queue._hold_until + 0.01  # the next send leaves as the hold ends
    assert holds == [0.125, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0]


def test_webhooks_naming_other_jobs_make_nothing_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call naming a job not of this run is ignored; one naming none makes every open
    job due, but not twice within a share of the poll interval."""
    now = [100.0]
    monkeypatch.setattr(jobqueue_module.time, "monotonic", lambda: now[0])
    queue = _queue(poll=10.0)
    monkeypatch.setattr(queue, "_start_polling", lambda: None)
    queue._open["ours"] = jobqueue_module._Open(seq=1, since=100.0, due=160.0)
    queue.finished("someone-elses")
    queue.finished("12345")
    assert queue._open["ours"].due == 160.0
    queue.finished("ours")
    assert queue._open["ours"].due == 100.0
    queue._open["ours"].due = 160.0
    queue.finished(None)
    assert queue._open["ours"].due == pytest.approx(100.05)
    queue._open["ours"].due = 160.0
    now[0] += 1.0
    queue.finished(None)  # too soon after the last anonymous call
    assert queue._open["ours"].due == 160.0


async def test_wait_looks_only_at_the_jobs_the_webhooks_name(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Each finish call costs one look at its own job, none is lost while a round runs,
    and calls about other jobs cost nothing."""
    listen = _free_address()
    jobs = 12
    sb = await sandbox(finished_after=2.0, finished_jitter=0.9, seed=1)
    journal = tmp_path / "j.journal"
    settings = settings_for(sb, webhook_listen=listen)
    path = write_ids(tmp_path / "ids.txt", make_ids(jobs * 100))
    assert (await Runner(settings, [str(path)], journal=journal).run()).ok
    before = sb.ledger.routes["status"]

    async def noise() -> None:
        async with aiohttp.ClientSession() as session:
            for n in range(30):
                await asyncio.sleep(0.03)
                url = f"http://{listen}/bulkjob/webhook"
                async with session.post(url, json={"jobId": f"not-ours-{n}"}) as answer:
                    assert answer.status == 204

    # A poll interval far longer than the jobs: only the webhooks can end this in time.
    noisy = asyncio.create_task(noise())
    done = await asyncio.wait_for(wait(journal, settings, poll_interval=300.0), 60)
    await noisy
    assert done.jobs == {"finished": (jobs, jobs * 100)}
    asked = sb.ledger.routes["status"] - before
    # The first round looks at every job; then one look per finish call.
    assert asked <= 2 * jobs, asked


async def test_a_webhook_body_in_another_charset_is_heard(sandbox: SandboxFactory) -> None:
    """Bytes that are not UTF-8 are decoded leniently: 204, and the call is counted."""
    from bulkjob._webhook import WebhookReceiver

    heard: list[str | None] = []
    async with WebhookReceiver("127.0.0.1:0", heard.append) as receiver:
        body = '{"jobId": "j1", "who": "Ren\xe9"}'.encode("latin-1")
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                receiver.url, data=body, headers={"Content-Type": "application/json"}
            ) as answer,
        ):
            assert answer.status == 204
    assert heard == ["j1"]


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def test_a_file_cut_inside_a_quoted_field_is_caught(tmp_path: Path) -> None:
    """A file ending inside quotes would swallow the next file's rows in the byte merge."""
    cut = _write(tmp_path / "1.csv", 'id,name\nid1,"Smith, J\n')
    with pytest.raises(ProtocolError, match=r"1\.csv: its last row ends inside a quoted"):
        check_closed(cut)
    check_closed(_write(tmp_path / "2.csv", 'id,name\nid2,"Jones, K"\n'))


def test_bare_quotes_inside_unquoted_fields_are_no_cut(tmp_path: Path) -> None:
    """An odd count of quotes is not always an open field: ``5"10`` is read as it is."""
    files = [
        _write(tmp_path / "1.csv", 'id,height\nid1,5"10\n'),
        _write(tmp_path / "2.csv", 'id,height\nid2,"6\'1"\n'),
    ]
    for path in files:
        check_closed(path)
    dest = tmp_path / "all.csv"
    merge_files(files, dest)
    rows = list(csv.reader(io.StringIO(dest.read_text())))
    assert rows == [["id", "height"], ["id1", '5"10'], ["id2", "6'1"]]
    assert rows == list(csv.reader(io.StringIO(parsed_merge(files).decode())))


async def test_results_cut_short_by_the_server_are_not_kept(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The sandbox serves a results file cut inside quotes: `results` refuses to keep it
    (so no merge can swallow rows with it), and a later call downloads it again."""
    from bulkjob._lifecycle import results

    sb = await sandbox(results_cut_rate=1.0)
    journal = tmp_path / "j.journal"
    settings = settings_for(sb, concurrency=1)
    path = write_ids(tmp_path / "ids.txt", make_ids(100))
    assert (await Runner(settings, [str(path)], journal=journal).run()).ok
    out = tmp_path / "out"
    with pytest.raises(ProtocolError, match="ends inside a quoted field"):
        await results(journal, settings, out, merge=tmp_path / "all.csv")
    assert list(out.iterdir()) == [] and not (tmp_path / "all.csv").exists()
    sb.config.results_cut_rate = 0.0
    got = await results(journal, settings, out, merge=tmp_path / "all.csv")
    assert got.downloaded == 1 and sb.ledger.faults["results_cut"] == 1


async def test_merge_into_a_directory_is_a_usage_error(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """--merge naming a directory fails at once, before any download, leaving nothing."""
    from bulkjob._lifecycle import results

    sb = await sandbox()
    journal = tmp_path / "j.journal"
    settings = settings_for(sb)
    path = write_ids(tmp_path / "ids.txt", make_ids(100))
    assert (await Runner(settings, [str(path)], journal=journal).run()).ok
    target = tmp_path / "merged"
    target.mkdir()
    with pytest.raises(ConfigError, match="that is a directory"):
        await results(journal, settings, tmp_path / "out", merge=target)
    assert list(target.iterdir()) == []
    assert sb.ledger.routes["results"] == 0
