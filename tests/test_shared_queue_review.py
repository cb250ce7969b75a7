"""The shared queue book and the registry under attack (a hostile review of issue 10 part 5):
each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

from bulkjob import _queue_book as book
from bulkjob._runner import Runner
from bulkjob._settings import Settings
from bulkjob._window_store import open_store
from tests.conftest import (
    TOKEN,
    SandboxFactory,
    assert_paid_once,
    cli_flags,
    finish_cli,
    make_ids,
    settings_for,
    start_cli,
    submit_args,
    wait_until,
    write_ids,
)
from tests.redis_server import start_server


async def test_one_runs_own_cap_does_not_become_the_accounts_limit_forever(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A modest run (--max-running-jobs 1) on an account that runs 3 at a time; later a run
    that says the account runs 3 gets 3, not the first run's self-restraint."""
    sb = await sandbox(running_job_limit=3, finished_after=0.3)
    first = make_ids(300, prefix="c1")
    modest = settings_for(sb, chunk_size=50, max_running_jobs=1, on_queue_full="wait")
    report = await Runner(modest, [str(write_ids(tmp_path / "a.txt", first))]).run()
    assert report.ok
    later = make_ids(600, prefix="c2")
    full = settings_for(sb, chunk_size=50, max_running_jobs=3, on_queue_full="wait")
    report = await Runner(full, [str(write_ids(tmp_path / "b.txt", later))]).run()
    assert report.ok
    assert report.running_job_limit == 3, report.running_job_limit


async def test_a_store_failure_after_acceptance_never_resends_the_chunk(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The Redis store goes away while a submit is on its way and the server accepts it:
    the chunk is a job; no resume may send it again."""
    sb = await sandbox(latency=1.0, list_lag=0.0)
    (tmp_path / "redis").mkdir()
    server = start_server(tmp_path / "redis")
    values = make_ids(100, prefix="sf")
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "run.journal"
    settings = settings_for(
        sb, chunk_size=100, max_running_jobs=2, throttle_store=server.url, request_timeout=5.0
    )
    run = asyncio.create_task(Runner(settings, [str(path)], journal=journal).run())
    try:
        async with asyncio.timeout(30):
            await wait_until(lambda: sb.ledger.routes["submit"] >= 1)
    finally:
        server.stop()  # while the submit waits out the latency
    report = await run
    assert sb.ledger.ids_accepted == 100  # the server has the chunk as a job
    again = settings_for(sb, chunk_size=100, max_running_jobs=2, throttle_store="memory")
    sb.config.latency = 0.0
    report = await Runner(again, [str(path)], journal=journal, resume=True).run()
    assert report.ok, report.stop_message
    assert_paid_once(sb, values)


async def test_a_corrupt_queue_book_is_a_clear_error_or_recovered(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The local store's file holds a queue book that is not JSON (a crash of an editor, a
    disk fault): one clear line or a recovered book, never a traceback."""

    sb = await sandbox()
    flags = cli_flags(sb)
    first = write_ids(tmp_path / "a.txt", make_ids(200, prefix="ca"))
    code, err = await finish_cli(
        await start_cli(*submit_args(first, tmp_path / "a.journal"), *flags)
    )
    assert code == 0, err
    (path,) = (Path(os.environ["XDG_STATE_HOME"]) / "bulkjob").glob("throttle-*.sqlite3")
    db = sqlite3.connect(path)
    with db:
        db.execute("INSERT OR REPLACE INTO book VALUES ('queue', '{\"limit\": 2, \"pla')")
    db.close()
    second = write_ids(tmp_path / "b.txt", make_ids(200, prefix="cb"))
    code, err = await finish_cli(
        await start_cli(*submit_args(second, tmp_path / "b.journal"), *flags)
    )
    assert "Traceback" not in err, err
    assert code in (0, 2), err


async def test_a_live_run_proving_a_lost_answer_does_not_hold_finished_jobs_places(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Run C sent its last chunks; one answer was lost (never accepted), so C waits out its
    grace (120 s by default; 10 s here) before it resends. Its other job ended long ago,
    yet the book
    still counts it: run B, alone with room on the server, waits for C's grace."""

    sb = await sandbox(
        running_job_limit=2, finished_after=0.2, list_lag=0.0, submit_faults_only=True
    )
    c_values = make_ids(100, prefix="cc")
    c_settings = settings_for(
        sb, chunk_size=50, concurrency=1, max_running_jobs=2, reconcile_grace=10.0
    )
    c = asyncio.create_task(
        Runner(
            c_settings,
            [str(write_ids(tmp_path / "c.txt", c_values))],
            journal=tmp_path / "c.journal",
        ).run()
    )
    async with asyncio.timeout(30):
        await wait_until(lambda: len(sb.ledger.jobs) >= 1)
    sb.config.drop_rate = 1.0  # C's second submit is lost before the server takes it
    async with asyncio.timeout(30):
        await wait_until(lambda: sb.ledger.faults["drop"] >= 1)
    sb.config.drop_rate = 0.0
    b_values = make_ids(100, prefix="bb")
    b = await start_cli(
        *submit_args(
            write_ids(tmp_path / "b.txt", b_values), tmp_path / "b.journal", chunk_size=50
        ),
        *cli_flags(sb),
    )
    b_done = asyncio.create_task(finish_cli(b))
    try:
        done, _ = await asyncio.wait([b_done, c], return_when=asyncio.FIRST_COMPLETED)
        assert b_done in done, "B waited for C's grace while the server had room"
    finally:
        code, err = await b_done
        report = await c
    assert code == 0, err
    assert report.ok, report.stop_message
    assert_paid_once(sb, c_values + b_values)


async def test_closing_one_runs_queue_keeps_another_runs_sends_of_the_same_process(
    tmp_path: Path,
) -> None:
    """What JobQueue.close does for run A (book.leave of its holder) must not touch the
    places of run B that lives in the same process (a service with two Runners)."""

    settings = Settings(access_token=TOKEN, state_dir=str(tmp_path))
    store_a, store_b = open_store(settings), open_store(settings)
    try:
        await store_a.queue(lambda b, now, alive: book.learned(b, 4, 4, "setting"))
        view = await store_b.queue(
            lambda b, now, alive: book.take(b, "run-b", store_b.holder, 4, now, alive)
        )
        assert view.granted and view.place
        holder_a = store_a.holder
        await store_a.queue(lambda b, now, alive: book.leave(b, holder_a, "run-a"))  # A closes
        places = await store_b.queue(lambda b, now, alive: dict(b["places"]))
        assert view.place in places, "run A's close deleted run B's send in flight"
    finally:
        await store_a.close()
        await store_b.close()
