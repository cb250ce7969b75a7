"""Tests for the SQLite journal: write-ahead states, group commit, one writer, schemas,
and files that are not journals left untouched."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bulkjob._chunker import Chunk, chunked
from bulkjob._errors import InputError, JournalError, JournalLockedError
from bulkjob._journal import SCHEMA_VERSION, ChunkState, Journal
from bulkjob._lock import JournalLock, lock_path
from tests.conftest import edit_journal, make_ids


def _chunks(n: int, size: int = 10) -> list[Chunk]:
    """``n`` ids as chunks of ``size``."""
    return list(chunked(((v, "f.txt", i + 1) for i, v in enumerate(make_ids(n))), size))


def new_journal(path: Path, settings: dict[str, object] | None = None) -> Journal:
    """A journal of a new run, claimed and started."""
    journal = Journal.claim(path)
    journal.start(settings or {}, ["f.txt"])
    return journal


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_states_are_durable_in_order(tmp_path: Path) -> None:
    """sending then accepted are committed and readable by another connection."""
    path = tmp_path / "j.journal"
    journal = new_journal(path, {"chunk_size": 10})
    first, second = _chunks(20)
    await journal.add(first)
    await journal.sending(second)
    other = sqlite3.connect(path)
    assert other.execute("SELECT state FROM chunks WHERE seq = 2").fetchone() == ("sending",)
    await journal.accepted(2, "job-2")
    assert other.execute("SELECT state, job_id FROM chunks WHERE seq = 2").fetchone() == (
        "accepted",
        "job-2",
    )
    other.close()
    await journal.close()
    reopened = Journal.open(path)
    rows = list(reopened.rows())
    assert [(r.seq, r.state, r.ids, r.digest) for r in rows] == [
        (1, ChunkState.PENDING, 10, first.digest),
        (2, ChunkState.ACCEPTED, 10, second.digest),
    ]
    assert reopened.counts() == {"pending": (1, 10), "accepted": (1, 10)}
    assert reopened.recorded_settings() == {"chunk_size": 10}
    reopened.close_sync()


async def test_parked_chunk_keeps_what_its_proof_needs(tmp_path: Path) -> None:
    """park() records the id set and hashes; accepted() with evidence clears the hashes."""
    journal = new_journal(tmp_path / "j.journal")
    (chunk,) = _chunks(10)
    await journal.sending(chunk)
    await journal.park(1, "abc", b"\x01" * 80, "no answer", lost_at=5.0, server_offset=1.5)
    (row,) = journal.rows(ChunkState.UNKNOWN)
    assert (row.id_set, row.last_error, row.lost_at, row.server_offset) == (
        "abc",
        "no answer",
        5.0,
        1.5,
    )
    assert journal.id_hashes(1) == b"\x01" * 80
    await journal.accepted(1, "job-1", evidence="job job-1 holds exactly its ids")
    (row,) = journal.rows()
    assert (row.state, row.evidence) == (ChunkState.ACCEPTED, "job job-1 holds exactly its ids")
    assert journal.id_hashes(1) is None
    await journal.close()


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    """Many writers at once are group-committed into fewer transactions than writes."""
    journal = new_journal(tmp_path / "j.journal")
    chunks = _chunks(2000, 10)
    await asyncio.gather(*(journal.sending(c) for c in chunks))
    assert journal.counts()["sending"] == (200, 2000)
    assert journal.commits < 200
    await journal.close()


async def test_refuses_to_overwrite_a_journal_with_chunks(tmp_path: Path) -> None:
    """Claiming a path whose journal holds chunks is an error pointing at resume."""
    path = tmp_path / "j.journal"
    journal = new_journal(path)
    await journal.add(_chunks(10)[0])
    await journal.close()
    with pytest.raises(InputError, match="bulkjob resume"):
        Journal.claim(path)
    assert not lock_path(path).exists()


def test_open_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    """A missing path or a file that is not a journal gives a clear error naming it."""
    with pytest.raises(JournalError, match="no such journal"):
        Journal.open(tmp_path / "nope.journal")
    other = tmp_path / "other.db"
    other.write_text("definitely not sqlite" * 100)
    with pytest.raises(JournalError, match=r"other\.db.*not a bulkjob journal"):
        Journal.open(other)


@pytest.mark.parametrize("readonly", [False, True])
def test_an_unrelated_sqlite_file_is_never_modified(tmp_path: Path, readonly: bool) -> None:
    """Opening an application's own SQLite database is refused with every byte unchanged."""
    app = tmp_path / "app.db"
    with sqlite3.connect(app) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO users(name) VALUES ('ada')")
    db.close()
    before = _digest(app)
    with pytest.raises(JournalError, match="not a bulkjob journal"):
        Journal.open(app, readonly=readonly)
    with pytest.raises(JournalError, match="not a bulkjob journal"):
        Journal.claim(app)
    assert _digest(app) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]  # no -wal, -shm, .lock


async def test_an_older_schema_is_migrated_under_the_lock(tmp_path: Path) -> None:
    """A journal of schema 1, lacking today's columns, is brought up to date and resumable."""
    path = tmp_path / "old.journal"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE chunks (seq INTEGER PRIMARY KEY, first TEXT NOT NULL,
                last TEXT NOT NULL, ids INTEGER NOT NULL, digest TEXT NOT NULL,
                state TEXT NOT NULL DEFAULT 'pending', job_id TEXT);
            """
        )
        db.execute("INSERT INTO run VALUES ('version', '1')")
        db.execute("INSERT INTO run VALUES ('settings', '{}')")
        db.execute("INSERT INTO chunks VALUES (1, 'f:1', 'f:10', 10, 'd', 'accepted', 'job-1')")
    db.close()
    readonly = Journal.open(path, readonly=True)
    assert [(r.seq, r.state, r.job_id, r.evidence) for r in readonly.rows()] == [
        (1, ChunkState.ACCEPTED, "job-1", None)
    ]
    readonly.close_sync()
    journal = Journal.open(path)
    assert journal.meta("version") == SCHEMA_VERSION
    (chunk,) = _chunks(10)
    await journal.sending(chunk)
    await journal.park(1, "set", b"h" * 8, "lost", lost_at=5.0, server_offset=None)
    assert [r.state for r in journal.rows()] == [ChunkState.UNKNOWN]
    await journal.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    """A journal written by a newer bulkjob is refused with a message, not a traceback."""
    path = tmp_path / "new.journal"
    new_journal(path).close_sync()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE run SET value = ? WHERE key = 'version'", (json.dumps(99),))
    db.close()
    with pytest.raises(JournalError, match="newer bulkjob"):
        Journal.open(path)


def test_second_opener_is_refused_with_the_holder(tmp_path: Path) -> None:
    """While one handle holds the journal, another gets JournalLockedError naming the pid."""
    path = tmp_path / "j.journal"
    held = new_journal(path)
    with pytest.raises(JournalLockedError, match=rf"pid {os.getpid()} on host"):
        Journal.open(path, "bulkjob resume")
    reader = Journal.open(path, readonly=True)  # status without --refresh works alongside
    assert reader.counts() == {}
    reader.close_sync()
    held.close_sync()
    Journal.open(path).close_sync()  # free again once released


async def test_open_async_cancelled_closes_what_its_thread_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped while its journal opens in a worker thread: the thread cannot be
    stopped, and the journal it opens is closed (its lock released) once it is there,
    not left open to the garbage collector."""
    path = tmp_path / "j.journal"
    new_journal(path).close_sync()
    began, go_on = threading.Event(), threading.Event()
    opened: list[Journal] = []
    real_open = Journal.open

    def open_when_told(*args: object, **kw: object) -> Journal:
        began.set()
        go_on.wait(30)  # the caller is cancelled meanwhile
        journal = real_open(*args, **kw)  # type: ignore[arg-type]
        opened.append(journal)
        return journal

    monkeypatch.setattr(Journal, "open", open_when_told)
    opening = asyncio.ensure_future(Journal.open_async(path, "bulkjob resume"))
    await asyncio.to_thread(began.wait, 30)
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await opening
    go_on.set()
    async with asyncio.timeout(30):  # a hang detector: the opened journal gets closed
        while not (opened and opened[0]._conn is None):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    real_open(path, "bulkjob resume").close_sync()  # and its lock is free


def test_lock_of_a_process_killed_with_9_is_taken_over(tmp_path: Path) -> None:
    """A lock held by a process killed with SIGKILL is free at once for the next one."""
    path = tmp_path / "j.journal"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from bulkjob._lock import JournalLock\n"
            f"lock = JournalLock.acquire({str(path)!r}, 'holder')\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(JournalLockedError, match=rf"pid {holder.pid} .*holder"):
            JournalLock.acquire(path)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert lock_path(path).exists()  # left behind, but nobody holds it
    with JournalLock.acquire(path, "next") as lock:
        assert lock.held
    assert not lock_path(path).exists()


async def test_a_failed_write_becomes_journal_error_for_every_writer(tmp_path: Path) -> None:
    """A write the disk refuses is a JournalError naming the journal, now and for later writes."""
    path = tmp_path / "j.journal"
    journal = new_journal(path)
    first, second = _chunks(20)
    await journal.sending(first)
    # A read-only file system, as a full disk would: SQLite cannot write any more.
    os.chmod(path, 0o444)
    os.chmod(path.with_name(path.name + "-wal"), 0o444)
    if os.geteuid() == 0:  # root writes read-only files: stop the journal's connection instead
        assert journal._conn is not None
        journal._conn.execute("PRAGMA query_only=ON")
    with pytest.raises(JournalError, match=r"j\.journal: cannot write"):
        await journal.sending(second)
    with pytest.raises(JournalError, match=r"j\.journal"):
        await journal.accepted(1, "job-1")
    journal.close_sync()
    assert not lock_path(path).exists()


@pytest.mark.parametrize("alias", ["symlink", "hardlink"])
def test_a_link_to_the_journal_meets_the_same_lock(tmp_path: Path, alias: str) -> None:
    """The lock is on the file itself: a symlink or a hard link to it is refused too."""
    path = tmp_path / "j.journal"
    held = new_journal(path)
    other = tmp_path / "other-name.journal"
    if alias == "symlink":
        other.symlink_to(path)
    else:
        os.link(path, other)
    # Through a symlink the lock is met; through a hard link SQLite cannot even see the
    # holder's uncommitted WAL, and the file is refused as it looks: either way, refused.
    expected = JournalLockedError if alias == "symlink" else JournalError
    with pytest.raises(expected):
        Journal.open(other, "bulkjob resume")
    held.close_sync()
    Journal.open(other).close_sync()


def test_a_wal_mode_foreign_database_gets_no_side_files(tmp_path: Path) -> None:
    """An application's WAL-mode database is refused without a -wal or -shm appearing."""
    app = tmp_path / "app.db"
    db = sqlite3.connect(app)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="not a bulkjob journal"):
        Journal.open(app, readonly=True)
    assert sorted(os.listdir(tmp_path)) == ["app.db"]


def test_a_dangling_symlink_becomes_the_journal(tmp_path: Path) -> None:
    """--journal naming a symlink to a file not there yet: the target is created and used."""
    link = tmp_path / "j.journal"
    link.symlink_to(tmp_path / "store" / "real.journal")
    journal = Journal.claim(link)
    journal.start({}, ["f.txt"])
    journal.close_sync()
    assert (tmp_path / "store" / "real.journal").stat().st_size > 0
    Journal.open(link).close_sync()


def test_a_claim_never_started_leaves_no_file(tmp_path: Path) -> None:
    """A new run's journal that never got a chunk (its input failed the pre-pass) is gone."""
    path = tmp_path / "j.journal"
    Journal.claim(path).close_sync()
    assert sorted(os.listdir(tmp_path)) == []


async def test_the_schema_is_read_again_under_the_lock(tmp_path: Path) -> None:
    """A journal migrated by one command and still in its WAL: the next one sees it so."""
    path = tmp_path / "old.journal"
    edit_journal(
        path,
        "CREATE TABLE run (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE chunks (seq INTEGER PRIMARY KEY, first TEXT NOT NULL, last TEXT NOT NULL,"
        " ids INTEGER NOT NULL, digest TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending')",
        "INSERT INTO run VALUES ('version', '1')",
        "INSERT INTO run VALUES ('settings', '{}')",
    )
    first = Journal.open(path)  # migrates, in the WAL
    keep_wal = sqlite3.connect(path)  # holds the WAL open, as a killed command would leave it
    keep_wal.execute("SELECT 1").fetchall()
    first.close_sync()
    try:
        second = Journal.open(path)
        assert second.meta("version") == SCHEMA_VERSION
        second.close_sync()
    finally:
        keep_wal.close()


def test_a_journal_that_cannot_be_set_up_leaves_no_connection_open(tmp_path: Path) -> None:
    """When setting up the connection fails after it was made (another program holds the
    database locked), the journal's connection is closed, not left to the garbage
    collector (Python 3.13 warns about that: an error under this suite's settings)."""
    path = tmp_path / "run.journal"
    Journal.claim(path, "t").close_sync()
    with Journal.claim(path, "t") as journal:
        journal.start({}, [])
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode=DELETE")
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(JournalError, match="cannot open"):
            Journal.open(path, "t")
        gc.collect()  # an unclosed connection would warn here
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_a_delivery_recorded_from_another_thread(tmp_path: Path) -> None:
    """``delivered_soon`` writes from any thread without the loop: True once durable,
    False once the journal is closed (nothing written), JournalError once it failed."""
    path = tmp_path / "j.journal"
    journal = new_journal(path)
    first, second = _chunks(20)
    await journal.sending(first)
    await journal.accepted(1, "job-1")
    done = await asyncio.to_thread(lambda: journal.delivered_soon(1).result(10))
    assert done is True
    other = sqlite3.connect(path)
    assert other.execute(
        "SELECT delivered_at IS NOT NULL FROM chunks WHERE seq = 1"
    ).fetchone() == (1,)
    other.close()
    await journal.sending(second)
    os.chmod(path, 0o444)  # as a full disk would
    os.chmod(path.with_name(path.name + "-wal"), 0o444)
    if os.geteuid() == 0:
        assert journal._conn is not None
        journal._conn.execute("PRAGMA query_only=ON")
    with pytest.raises(JournalError, match=r"j\.journal: cannot write"):
        journal.delivered_soon(2).result(10)
    with pytest.raises(JournalError, match=r"j\.journal"):
        await journal.accepted(2, "job-2")  # the journal is failed for every writer
    journal.close_sync()
    os.chmod(path, 0o644)
    closed = new_journal(tmp_path / "k.journal")
    closed.close_sync()
    assert closed.delivered_soon(1).result(10) is False


def _close_while_recording(path: Path) -> list[str]:
    """One journal closed by this thread while another records deliveries as fast as it
    can; what either saw that is neither True, False nor a JournalError."""
    journal = Journal.claim(path)
    journal.start({}, ["f.txt"])
    started = threading.Event()
    futures: list[concurrent.futures.Future[bool]] = []
    bad: list[str] = []

    def consumer() -> None:
        try:
            while True:
                future = journal.delivered_soon(1)
                futures.append(future)
                started.set()
                if future.done() and future.exception() is None and not future.result():
                    return  # closed: False, nothing written
        except BaseException as exc:  # what the consumer of enrich would see
            started.set()
            bad.append(f"delivered_soon raised {exc!r}"[:200])

    thread = threading.Thread(target=consumer)
    thread.start()
    started.wait(10)
    journal.close_sync()
    thread.join(30)
    for future in futures:
        try:
            future.result(10)
        except Exception as exc:
            bad.append(f"the record's future: {exc!r}"[:200])
    return bad


def test_a_delivery_recorded_while_another_thread_closes_the_journal(tmp_path: Path) -> None:
    """Found by review 21 (a race). ``delivered_soon`` from the consumer's thread while the
    worker's thread closes the journal (close() from a third thread, the run's end):
    the future is True or False (or a JournalError), never another exception, and the call
    itself never raises. Between ``pool.shutdown()`` starting and ``self._pool = None``,
    ``submit`` raises RuntimeError and delivered_soon calls itself again, spinning with the
    GIL (5 ms switch interval) until RecursionError. (Also read, not seen failing:
    ``_apply_now`` checks ``self._conn`` then ``_apply`` reads it again: an AssertionError
    when close_sync clears it in between.) The consumer here submits without waiting for
    each record, to meet the close often; the real one meets it at a job's end only,
    rarely, but then the same way."""
    for attempt in range(40):
        bad = _close_while_recording(tmp_path / f"j{attempt}.journal")
        assert bad == [], f"attempt {attempt}"
