"""The local store's one-statement steps, as hostile review 23 tried to break them: old
rows are still cleared (short runs, any pattern of steps), a locked file is still one
clear error, and processes hammering one window never overfill it. Tests whose docstring
starts with "Was broken" failed on the first version (75f2e7c, a step counter per store
object) and describe what they caught then."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import textwrap
import time
from pathlib import Path

import pytest

import bulkjob._store_local as store_local
from bulkjob._errors import ConfigError
from bulkjob._settings import Settings
from bulkjob._window_store import open_store
from tests.conftest import TOKEN


def _settings(tmp_path: Path, most: int, per: float) -> Settings:
    return Settings(
        access_token=TOKEN, state_dir=str(tmp_path / "state"), max_requests=most, per_seconds=per
    )


def _store(settings: Settings) -> store_local.LocalStore:
    store = open_store(settings)
    assert isinstance(store, store_local.LocalStore)
    return store


def _rows(path: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        (rows,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    return int(rows)


@pytest.fixture(params=["one statement", "whole transaction"])
def one_statement(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    if request.param == "whole transaction":
        monkeypatch.setattr(store_local, "_RETURNING", False)
    return bool(store_local._RETURNING)


async def test_short_runs_never_clear_old_completions(tmp_path: Path, one_statement: bool) -> None:
    """Was broken: the sweep is every _SWEEP_EVERY-th step *of one LocalStore object*
    (self._steps starts at 0 in every process). Runs that each make fewer steps than that
    (small batches from cron, `bulkjob throttle`, short CLI runs) while the window has
    room never run the whole transaction, so no process ever deletes a completion: the
    slots table keeps one row per request the account ever made, and every one-statement
    take counts over all of them (`done + :window > :soon` cannot use the index on done:
    a full scan, inside the write lock every process waits for). The whole-transaction
    path (the previous version) keeps only the rows still in the window."""
    settings = _settings(tmp_path, 1000, 0.01)
    for _run in range(10):  # ten short runs, each its own store, as a new process has
        store = _store(settings)
        try:
            for _ in range(40):
                slot, _wait = await store.acquire()
                assert slot is not None
                await store.release(slot, reset_backoff=False)
            await asyncio.sleep(0.05)  # this run's completions leave the window
        finally:
            await store.close()
    rows = _rows(store.path, "slots")
    assert rows <= store_local._SWEEP_EVERY + 20, f"{rows} rows for 400 requests"


async def test_jobs_past_their_keeping_time_stay_after_short_runs(
    tmp_path: Path, one_statement: bool
) -> None:
    """Was broken (the jobs table, same cause): a job registered more than
    _JOBS_KEPT ago is deleted by the next registration on the whole-transaction path;
    with one-statement registrations, runs of fewer than _SWEEP_EVERY steps never delete
    it, so the jobs table also grows for good (one row per job of every run)."""
    settings = _settings(tmp_path, 1000, 60.0)
    store = _store(settings)
    await store.open()
    with contextlib.closing(sqlite3.connect(store.path)) as db, db:
        old = time.time() - store_local._JOBS_KEPT - 86_400.0
        db.execute("INSERT INTO jobs VALUES ('ancient', 'd', 'r0', ?)", (old,))
    try:
        for n in range(10):
            await store.register_job(f"job-{n}", "digest", "r1")
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(store.path)) as db, db:
        left = db.execute("SELECT COUNT(*) FROM jobs WHERE job_id = 'ancient'").fetchone()[0]
    assert left == 0, "a job past _JOBS_KEPT is still registered"


async def test_a_submit_pattern_starves_the_acquires_sweep(
    tmp_path: Path, one_statement: bool
) -> None:
    """Was broken: acquire and register_job share one step counter. When a process's
    steps come in a period that divides _SWEEP_EVERY with the registration last (a
    create-job request, then its registration: period 2), every sweep lands on a
    registration, which clears jobs, never slots: even one long run never deletes a
    completion while the window has room (tests/test_store_local_steps.py's pile-up test
    acquires only, so it does not see it)."""
    store = _store(_settings(tmp_path, 1000, 0.01))
    try:
        for n in range(400):
            slot, _wait = await store.acquire()
            assert slot is not None
            await store.release(slot, reset_backoff=True)
            await store.register_job(f"job-{n}", "digest", "run")
            await asyncio.sleep(0.001)
        rows = _rows(store.path, "slots")
        assert rows <= store_local._SWEEP_EVERY + 20, f"{rows} rows for 400 requests"
    finally:
        await store.close()


# -- guards: what held ------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from bulkjob._settings import Settings
    from bulkjob._window_store import open_store

    async def main(state, most, per, count, out):
        store = open_store(Settings(access_token={token!r}, state_dir=state,
                                    max_requests=most, per_seconds=per))
        await store.open()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        got = []
        try:
            while len(got) < count:
                slot, wait = await store.acquire()
                if slot is None:
                    await asyncio.sleep(min(wait, 0.002))
                    continue
                got.append(int(slot))
                await store.release(slot, reset_backoff=len(got) % 7 == 0)
                if len(got) % 50 == 0:
                    await store.throttled(0.01)  # a 429 now and then: a short pause
        finally:
            await store.close()
        with open(out, "w") as f:
            json.dump(got, f)

    a = sys.argv[1:]
    asyncio.run(main(a[0], int(a[1]), float(a[2]), int(a[3]), a[4]))
    """
)

#: The resolution of SQLite's 'now'.
_CLOCK_STEP = 0.001
_AUDIT = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, slot INTEGER NOT NULL, at REAL, done REAL
);
CREATE TRIGGER audit_take AFTER INSERT ON slots BEGIN
    INSERT INTO events(slot, at)
    VALUES (NEW.id, (julianday('now') - 2440587.5) * 86400.0);
END;
CREATE TRIGGER audit_done AFTER UPDATE OF done ON slots BEGIN
    INSERT INTO events(slot, done) VALUES (NEW.id, NEW.done);
END;
"""


async def test_processes_hammering_one_window_never_overfill_it(
    tmp_path: Path, one_statement: bool
) -> None:
    """Guard (passes): four OS processes take and release slots as fast as they can
    through a window of 5 per 0.05 s, with 429s now and then. Triggers (real SQLite, run
    inside each statement) log every take and every completion, in commit order, to a
    table the store never clears, a take with the time it was written (SQLite's clock,
    inside the write lock). Replayed in that order, each take must have found fewer than
    max_requests slots in flight or completed within a window of that time: the
    INSERT ... SELECT takes the write lock before it reads, so no two takes interleave.

    The take's own `taken` column is no yardstick: it is the caller's clock before it
    waited for the lock (a whole transaction of another process may meanwhile have
    cleared completions that were still in the window at `taken`, not at the commit).
    SQLite's 'now' is in whole milliseconds, below the true time: a completion counts
    when it left the window more than _CLOCK_STEP after that."""
    most, per = 5, 0.05
    settings = _settings(tmp_path, most, per)
    store = _store(settings)
    await store.open()
    window = store.params.window
    with contextlib.closing(sqlite3.connect(store.path)) as db, db:
        db.executescript(_AUDIT)
    await store.close()
    code = _CHILD.format(token=TOKEN)
    if not one_statement:  # the children on the whole-transaction path too
        code = "import bulkjob._store_local as s\ns._RETURNING = False\n" + code
    procs = []
    for n in range(4):
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                code,
                settings.state_dir or "",
                str(most),
                str(per),
                "150",
                str(tmp_path / f"out{n}.json"),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        )
    for proc in procs:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    for proc in procs:
        await asyncio.wait_for(proc.wait(), 120)
        assert proc.returncode == 0
    with contextlib.closing(sqlite3.connect(store.path)) as db, db:
        events = db.execute("SELECT slot, at, done FROM events ORDER BY seq").fetchall()
    flying: set[int] = set()
    completed: list[float] = []
    worst = takes = 0
    for slot, at, done in events:
        if at is None:
            flying.discard(slot)
            completed.append(done)
            continue
        takes += 1
        used = len(flying) + sum(1 for d in completed if d + window > at + _CLOCK_STEP)
        assert used < most, (takes, used)
        worst = max(worst, used + 1)
        flying.add(slot)
    assert takes == 600 and not flying
    assert worst == most  # the window was really filled, not just trickled


async def test_a_locked_file_is_one_clear_error_for_every_one_statement_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guard (passes): another program holds the file's write lock. The one-statement
    take, release and registration wait the busy timeout and say it as the whole
    transaction did: one ConfigError naming the file, no sqlite3 error."""
    monkeypatch.setattr(store_local, "_BUSY_TIMEOUT", 0.2)
    store = _store(_settings(tmp_path, 1000, 60.0))
    slot, _wait = await store.acquire()  # the file set up, its keep written
    assert slot is not None
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        for step in (
            store.acquire(),
            store.release(slot, reset_backoff=True),
            store.register_job("job", "digest", "run"),
        ):
            with pytest.raises(ConfigError, match=r"throttle store .*database is locked"):
                await step
    finally:
        other.rollback()
        other.close()
        await store.close()


async def test_close_while_the_first_step_still_opens_the_file(tmp_path: Path) -> None:
    """Was broken: close() returned at once when no connection was there yet, but a first
    step cancelled while its thread was still opening the file (a run stopped at once)
    made one a moment later, left open: a ResourceWarning wherever the garbage collector
    met it, and a file handle held meanwhile. close() now waits for that thread."""
    settings = _settings(tmp_path, 1000, 60.0)
    first = _store(settings)
    await first.open()  # the file is there, set up
    await first.close()
    other = sqlite3.connect(first.path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # the next store's set-up waits for this lock
        store = _store(settings)
        opening = asyncio.ensure_future(store.open())
        while not store._lock.locked():  # noqa: ASYNC110 (its thread is opening the file)
            await asyncio.sleep(0.001)
        opening.cancel()
        closing = asyncio.ensure_future(store.close())
        await asyncio.sleep(0.05)
        other.rollback()  # the set-up goes on, and makes its connection
    finally:
        other.close()
    await closing
    with contextlib.suppress(asyncio.CancelledError):
        await opening
    while store._lock.locked():  # noqa: ASYNC110 (the thread's step is done)
        await asyncio.sleep(0.001)
    assert store._db is None
