"""One account's job queue shared by its runs: the book's rules, then real processes in wait
mode against a sandbox whose account runs two jobs at a time, checked on its own ledger."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
from pathlib import Path

import pytest

from bulkjob import _queue_book as book
from bulkjob._settings import Settings
from bulkjob._window_store import WindowStore, open_store
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    TOKEN,
    SandboxFactory,
    assert_paid_once,
    cli_flags,
    finish_cli,
    kill_9,
    make_ids,
    start_cli,
    submit_args,
    write_ids,
)
from tests.test_cli import bulkjob as run_cli

ALIVE = frozenset({"h1", "h2", "h3"})


def _take(b: book.Book, run: str, now: float, cap: int | None = None) -> book.QueueView:
    return book.take(b, run, f"h{run[-1]}", cap, now, ALIVE.__contains__)


def test_no_limit_known_grants_without_counting() -> None:
    b = book.new_book()
    view = _take(b, "r1", 0.0)
    assert view.granted and view.place is None and b["places"] == {}


def test_a_free_place_goes_to_the_run_holding_fewest_then_waiting_longest() -> None:
    b = book.new_book()
    book.learned(b, 2, 2, "message")
    first, second = _take(b, "r1", 0.0), _take(b, "r1", 0.1)
    assert first.place and second.place and first.place != second.place
    assert not _take(b, "r2", 0.2).granted  # full: r2 waits in line
    assert not _take(b, "r3", 0.3).granted  # and r3 behind it
    book.free(b, first.place, final=True)
    assert not _take(b, "r1", 0.4).granted  # r1 holds one: the others come first
    assert not _take(b, "r3", 0.5).granted  # r3 waited less long than r2
    granted = _take(b, "r2", 0.6)
    assert granted.granted and granted.place
    book.free(b, second.place, final=True)
    assert not _take(b, "r1", 0.7).granted  # r1 and r2 hold one each: r3 holds none
    assert _take(b, "r3", 0.8).granted


def test_a_waiter_that_stops_asking_loses_its_turn() -> None:
    b = book.new_book()
    book.learned(b, 1, 1, "message")
    held = _take(b, "r1", 0.0)
    assert not _take(b, "r2", 0.1).granted
    assert held.place is not None
    book.free(b, held.place)
    assert not _take(b, "r1", 0.2).granted  # r2's turn...
    later = 0.2 + book.WAITER_FRESH + 0.1
    assert _take(b, "r1", later).granted  # ...until r2 has not asked for a while


def test_places_of_a_gone_holder_become_orphans_then_are_adopted() -> None:
    b = book.new_book()
    book.learned(b, 2, 2, "message")
    sending = _take(b, "r1", 0.0)
    running = _take(b, "r1", 0.0)
    assert sending.place and running.place
    book.place_job(b, running.place, "job-9")
    # h1 dies: its send (no job) goes, its job stays counted as an orphan.
    view = book.take(b, "r2", "h2", None, 1.0, lambda h: h != "h1")
    assert view.granted and view.orphans == ((running.place, "job-9"),)
    assert view.taken == 2  # the orphan and r2's new place
    assert book.adopt(b, "r1", "h3", "job-9", 2.0) == running.place  # the resumed run
    assert b["places"][running.place]["holder"] == "h3"
    book.leave(b, "h3", "r1")  # it closes with the job still open: an orphan again
    assert b["places"][running.place]["holder"] == ""


def test_a_refusal_lowers_the_limit_to_the_others_and_holds_every_run() -> None:
    b = book.new_book()
    book.learned(b, 3, 3, "message")
    places = [_take(b, f"r{n}", 0.0).place for n in (1, 2, 3)]
    book.refused(b, places[2], 3, 0.5, 1.0)  # a foreign job holds the third place
    assert b["limit"] == 2
    view = _take(b, "r2", 1.2)
    assert not view.granted and view.held_for == pytest.approx(0.3)
    assert places[0] is not None
    book.free(b, places[0], final=True)  # a job of ours ended: there is room for certain
    book.free(b, str(places[2]))
    assert _take(b, "r1", 1.3).granted


async def _jobs_in_book(store: WindowStore) -> int:
    def count(b: book.Book, now: float, alive: book.Alive) -> int:
        if b["limit"] is None:
            return 0
        return sum(1 for p in b["places"].values() if p["job"])

    return await store.queue(count)


def _ledger_order(sb: Sandbox) -> list[str]:
    """Which run each job belonged to, in the order the server accepted them."""
    jobs = sorted(sb.ledger.jobs.values(), key=lambda j: j.accepted_at)
    return [(j.id_list or ("?",))[0][:2] for j in jobs]


async def _runs_in_wait_mode(
    sb: Sandbox, tmp_path: Path, *more: str, runs: int = 3, jobs_each: int = 6
) -> list[str]:
    procs, values = [], []
    for n in range(runs):
        ids = make_ids(50 * jobs_each, prefix=f"w{n}")
        values += ids
        path = write_ids(tmp_path / f"{n}.txt", ids)
        args = submit_args(path, tmp_path / f"{n}.journal", *more, chunk_size=50)
        procs.append(await start_cli(*args, *cli_flags(sb, concurrency=4)))
    for proc in procs:
        code, err = await finish_cli(proc)
        assert code == 0, err
    return values


@pytest.mark.parametrize("store", ["local", "redis"])
async def test_three_runs_in_wait_mode_share_a_limit_of_two(
    store: str, sandbox: SandboxFactory, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Three runs at once, each in wait mode, on an account that runs two jobs at a time:
    all finish, every id paid once, no storm of queue-full 400s, and no run waits while
    another takes job after job."""
    sb = await sandbox(running_job_limit=2, finished_after=0.2)
    more = ["--on-queue-full", "wait"]
    if store == "redis":
        more += ["--throttle-store", request.getfixturevalue("redis_url")]

    values = await _runs_in_wait_mode(sb, tmp_path, *more, jobs_each=10)
    assert_paid_once(sb, values)
    assert sb.ledger.max_running() <= 2
    # Only the lesson costs refusals: the sends already on their way when the limit was
    # learned, at most 4 (--concurrency) a run, however many jobs follow; then the book
    # holds every send. (Runs each on their own count, --throttle-store memory, pay one at
    # most jobs: 16 for these 30 jobs.)
    assert sb.ledger.rejected["queue_full"] <= 3 * 4
    order = _ledger_order(sb)
    everyone = max(order.index(run) for run in ("w0", "w1", "w2"))
    last_start = min(len(order) - order[::-1].index(run) for run in ("w0", "w1", "w2"))
    streaks = [len(list(g)) for _, g in itertools.groupby(order[everyone:last_start])]
    assert max(streaks, default=0) <= 3, order  # turns go round while all three wait
    # The store shows the queue: the limit as learned; the jobs still open are orphans.
    where = ["--base-url", sb.base_url, *more[2:]]
    code, out, err = await run_cli(
        "throttle", "--json", *where, env={"INSIDEVIEW_ACCESS_TOKEN": TOKEN}
    )
    assert code == 0, err
    queue = json.loads(out)["queue"]
    assert (queue["limit"], queue["limit_source"]) == (2, "message")
    assert queue["places"] <= 2 and set(queue["holders"]) <= {"orphans"}


async def test_the_jobs_of_a_killed_run_hold_their_places_until_they_end(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """kill -9 of a run whose jobs fill the account's queue: they still run on the server,
    so they stay counted (orphans) until another run sees them end; that run then takes
    their places without one queue-full 400."""
    sb = await sandbox(running_job_limit=2, finished_after=2.0)
    first = write_ids(tmp_path / "a.txt", make_ids(500, prefix="ka"))
    flags = cli_flags(sb, concurrency=4)
    args = submit_args(first, tmp_path / "a.journal", chunk_size=50)
    proc = await start_cli(*args, *flags)
    store = open_store(Settings(access_token=TOKEN, base_url=sb.base_url))
    jobs_in_book = functools.partial(_jobs_in_book, store)
    try:
        async with asyncio.timeout(60):
            # Both places hold jobs, and the limit was learned, as the book says.
            while await jobs_in_book() < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await store.close()
    kill_9(proc)
    await proc.wait()
    refused_before = sb.ledger.rejected["queue_full"]
    values = make_ids(300, prefix="kb")
    second = write_ids(tmp_path / "b.txt", values)
    code, err = await finish_cli(
        await start_cli(*submit_args(second, tmp_path / "b.journal", chunk_size=50), *flags)
    )
    assert code == 0, err
    assert sb.ledger.rejected["queue_full"] == refused_before
    assert sb.ledger.max_running() <= 2
    assert set(values) <= set(sb.ledger.accepted_ids) and sb.ledger.duplicates == 0
