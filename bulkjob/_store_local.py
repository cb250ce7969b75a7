"""``throttle_store = "local"``: the account's window in a SQLite file, shared on one host.

One file per account (``throttle-<account hash>.sqlite3``) in the state directory. Every
acquire, release and 429 is one short write transaction, so processes of the same user on
this host see one window: the check for room and the taking of a slot cannot interleave.
A slot is taken by one ``INSERT ... SELECT ... RETURNING`` statement when the window has
room (SQLite takes the write lock before the statement reads: it is a transaction of its
own); a wait, a full window, dead holders and the clearing of old rows take a whole
``BEGIN IMMEDIATE`` transaction. Times are the host's wall clock, which every process
shares.

A slot is a row: who holds it (host, pid, and the process's start time, so that a
reused pid is not taken for its holder) and, once its answer is back, when. A holder
that died with a slot in flight (``kill -9``) is noticed when the window is full: its
slot then counts as completed at that moment, which is no earlier than the request's
arrival at the server, so the window never overfills; it also no longer blocks anyone.

The file holds no secret: the account is a hash, and only counts and times are kept.
A corrupt or foreign file, or one locked for longer than ``_BUSY_TIMEOUT``, is a
:class:`~bulkjob._errors.ConfigError` that names it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import ParamSpec, TypeVar

from ._errors import ConfigError, StoreError
from ._queue_book import Book, load
from ._window_store import EPSILON, BookChange, Holder, StoreParams, WindowState, next_pause

__all__ = ["LocalStore", "holder_key", "process_start"]

P = ParamSpec("P")
T = TypeVar("T")
_BUSY_TIMEOUT = 10.0  # seconds a transaction waits for another process's
_SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT NOT NULL,
    taken REAL NOT NULL,
    done REAL
);
CREATE INDEX IF NOT EXISTS slots_done ON slots(done);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v REAL NOT NULL);
CREATE TABLE IF NOT EXISTS book (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, digest TEXT NOT NULL, run TEXT NOT NULL, at REAL NOT NULL
);
"""
#: Jobs stay registered this long: longer than any proof waits for a lost answer.
_JOBS_KEPT = 30 * 86_400.0
_MARK = ("bulkjob-window", 1)  # the meta row that says what this file is
#: Tries at opening the file when another connection sets it up at the same moment.
_SETUP_TRIES = 8
#: SQLite 3.35 and later hand back the row an INSERT made (RETURNING): a slot is then
#: taken in one statement whenever the window has room (see LocalStore._take).
_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
#: A take is one statement unless this store's last whole transaction, which also clears
#: the completions that left the window, is older than this (or than the window): so
#: every process clears them at its first take, and then every so often.
_SWEEP_SECONDS = 0.05
#: One registration in this many, the first of each store among them, is the whole
#: transaction, which also clears the jobs past their keeping time.
_SWEEP_EVERY = 64
#: A slot taken in one statement: only when no pause is on, the kept completions cover
#: this process's window, and the window has room; else nothing, and the whole
#: transaction decides (the wait, the slots of dead holders, the keeping time).
_TAKE = """
INSERT INTO slots(host, pid, started, taken)
SELECT :host, :pid, :started, :now
WHERE COALESCE((SELECT v FROM meta WHERE k = 'resume_at'), 0) <= :soon
  AND COALESCE((SELECT v FROM meta WHERE k = 'keep'), 0) >= :window
  AND (SELECT COUNT(*) FROM slots WHERE done IS NULL OR done + :window > :soon) < :most
RETURNING id
"""


def process_start(pid: int) -> str:
    """When ``pid`` started, as the kernel says (Linux /proc); "" where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""  # field 22, starttime


def _nothing() -> None:
    """The transaction of :meth:`LocalStore.open`: taking the write lock is the check."""


def _alive(holder: Holder) -> bool:
    """Whether the process of ``holder`` (on this host) still runs."""
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return not holder.started or process_start(holder.pid) in ("", holder.started)


def process_alive(pid: int, started: str = "") -> bool:
    """Whether process ``pid`` of this host (started at ``started``, when given) still runs."""
    return _alive(Holder(socket.gethostname(), pid, started))


def holder_key(holder: Holder) -> str:
    """A holder as the queue book names it."""
    return f"{holder.host}|{holder.pid}|{holder.started}"


def _alive_key(key: str) -> bool:
    """Whether the holder ``key`` names still runs (a holder of another host: assumed so)."""
    host, _, rest = key.partition("|")
    pid, _, started = rest.partition("|")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    return _alive(Holder(host, int(pid), started))


class LocalStore:
    """The account's window in ``state_dir/throttle-<account>.sqlite3``."""

    name = "local"

    def __init__(self, params: StoreParams, account: str, state_dir: Path) -> None:
        self.params = params
        self.account = account
        self.path = state_dir / f"throttle-{account}.sqlite3"
        self.me = Holder(socket.gethostname(), os.getpid(), process_start(os.getpid()))
        self.holder = holder_key(self.me)
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one connection: one transaction at a time
        self._mine: set[int] = set()
        #: When this store last took the whole transaction for a slot and got one
        #: (monotonic; -inf after a wait), and how many jobs it registered (see
        #: _SWEEP_SECONDS and _SWEEP_EVERY).
        self._swept = -math.inf
        self._registrations = 0

    def __repr__(self) -> str:
        return f"<LocalStore {self.path} in_flight={len(self._mine)}>"

    # -- the protocol --------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or open the file and check it in one empty write transaction: a corrupt,
        foreign or locked file is a ConfigError now, before the run writes anything."""
        await self._run(_nothing)

    async def acquire(self) -> tuple[str | None, float]:
        # Each statement lets go of the GIL, and in a busy process (an enrich making rows)
        # each waits milliseconds to get it back: a slot taken in one statement when the
        # window has room is most of what made this store cost 13% of enrich's rows/s.
        since = time.monotonic() - self._swept
        quick = _RETURNING and since < max(self.params.window, _SWEEP_SECONDS)
        slot = await self._run_alone(self._take) if quick else None
        wait = 0.0
        if slot is None:
            self._swept = time.monotonic()
            slot, wait = await self._run(self._acquire)
            if slot is None:  # a wait: the next ask is the whole transaction at once
                self._swept = -math.inf
        if slot is not None:
            self._mine.add(slot)
            return str(slot), 0.0
        return None, wait

    async def release(self, slot: str, *, reset_backoff: bool) -> None:
        # Statements of their own: a completion and a backoff reset need not be one step.
        await self._run_alone(self._release, int(slot), reset_backoff)
        self._mine.discard(int(slot))

    async def throttled(self, retry_after: float | None) -> tuple[float, float]:
        return await self._run(self._throttled, retry_after)

    async def state(self) -> WindowState:
        return await self._run(self._state)

    async def register_job(self, job_id: str, digest: str, run: str) -> None:
        self._registrations += 1
        if self._registrations % _SWEEP_EVERY != 1:
            await self._run_alone(self._register_one, job_id, digest, run)
        else:
            await self._run(self._register, job_id, digest, run)

    async def registered(self, job_ids: Collection[str]) -> dict[str, str]:
        return await self._run(self._registered, list(job_ids)) if job_ids else {}

    async def queue(self, change: BookChange[T]) -> T:
        return await self._run(self._queue, change)

    async def close(self) -> None:
        try:
            if self._mine:
                mine = sorted(self._mine)
                await self._run(self._release_all, mine)
        finally:
            # Shielded: a caller cancelled again while it waits still gets the file closed.
            await asyncio.shield(self._disconnect())

    async def _disconnect(self) -> None:
        # After any step still running in its thread, and not only when a connection is
        # there now: a first step cancelled while its thread opens the file (a run stopped
        # at once) has none yet, and would leave the one it makes open.
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()

    # -- transactions (run in a worker thread, one at a time) ----------------------------------

    async def _run(self, op: Callable[P, T], *args: P.args, **kw: P.kwargs) -> T:
        """One transaction in a worker thread, one at a time.

        A caller cancelled mid-transaction (a run's drain, Ctrl-C) cannot stop the thread:
        the lock is held until the thread is done, so that nothing (close() above all)
        touches the connection while it still runs.
        """
        return await self._in_thread(lambda: self._transaction(op, *args, **kw))

    async def _run_alone(self, op: Callable[P, T], *args: P.args, **kw: P.kwargs) -> T:
        """:meth:`_run` for ``op``s whose every statement is a whole step of its own
        (SQLite makes each its own transaction): no BEGIN and COMMIT around them."""
        return await self._in_thread(lambda: self._guarded(lambda: op(*args, **kw)))

    async def _in_thread(self, work: Callable[[], T]) -> T:
        await self._lock.acquire()
        try:
            done = asyncio.get_running_loop().run_in_executor(None, work)
        except BaseException:
            self._lock.release()
            raise
        done.add_done_callback(lambda _: self._lock.release())
        return await asyncio.shield(done)

    def _transaction(self, op: Callable[P, T], *args: P.args, **kw: P.kwargs) -> T:
        return self._guarded(lambda: self._begun(op, *args, **kw))

    def _begun(self, op: Callable[P, T], *args: P.args, **kw: P.kwargs) -> T:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            result = op(*args, **kw)
        except BaseException:
            db.rollback()
            raise
        db.commit()
        return result

    def _guarded(self, work: Callable[[], T]) -> T:
        """``work`` on the connection, its errors said as this store's."""
        try:
            self._connect()
            return work()
        except sqlite3.OperationalError as exc:
            if "disk" in str(exc):  # "disk I/O error", "database or disk is full"
                raise StoreError(str(self.path), f"cannot be written: {exc}") from None
            raise ConfigError(
                f"throttle store {self.path}: {exc} (another program holds it? "
                "--throttle-store memory runs without it)"
            ) from None
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"throttle store {self.path}: not a usable bulkjob window file ({exc}); "
                "delete it to start a fresh window"
            ) from None

    def _setup(self) -> sqlite3.Connection:
        """A connection to the file, in WAL mode, its tables and mark in place."""
        db = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # the window, not the journal: no fsync
            # A few hundred rows at most: keep the write-ahead log as small as they are.
            db.execute("PRAGMA wal_autocheckpoint=32")
            db.execute("PRAGMA journal_size_limit=262144")
            # The tables and the mark in one write transaction, taken at once: a read that
            # then wants to write can deadlock with another connection doing the same on a
            # fresh file, and SQLite answers that "locked" at once, without waiting.
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                row = db.execute("SELECT v FROM meta WHERE k = ?", (_MARK[0],)).fetchone()
                if row is None:
                    db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", _MARK)
                elif row[0] != _MARK[1]:
                    raise sqlite3.DatabaseError(f"window file version {row[0]}")
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise
        except BaseException:
            db.close()
            raise
        return db

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"state_dir {self.path.parent}: cannot create it: {exc.strerror}"
            ) from None
        # Connections opening a fresh file at once can meet SQLite's "locked" that does
        # not wait (switching to WAL, a read upgraded to a write): set-up is idempotent,
        # so it is tried again a few times before the file is called locked.
        for attempt in itertools.count(1):
            began = time.monotonic()
            try:
                db = self._setup()
                break
            except sqlite3.OperationalError as exc:
                waited = time.monotonic() - began >= 1.0  # a lock held: the busy timeout ran
                if "locked" not in str(exc) or waited or attempt >= _SETUP_TRIES:
                    raise
                time.sleep(0.02 * attempt)
        self._db = db
        return db

    def _meta(self, key: str, default: float) -> float:
        assert self._db is not None
        row = self._db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return float(row[0]) if row else default

    def _set(self, key: str, value: float) -> None:
        assert self._db is not None
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def _acquire(self) -> tuple[int | None, float]:
        db = self._db
        assert db is not None
        now = time.time()
        resume_at = self._meta("resume_at", 0.0)
        if now + EPSILON < resume_at:
            return None, resume_at - now
        window = self.params.window
        # Completions are kept for the longest window any process of the account uses.
        keep = self._meta("keep", 0.0)
        if window > keep:  # written only when it grows: not a second write per acquire
            keep = window
            self._set("keep", keep)
        db.execute("DELETE FROM slots WHERE done IS NOT NULL AND done + ? <= ?", (keep, now))
        for _ in range(2):  # once more after counting the slots of dead holders completed
            (recent,) = db.execute(
                "SELECT COUNT(*) FROM slots WHERE done IS NOT NULL AND done + ? > ?",
                (window, now + EPSILON),
            ).fetchone()
            (flying,) = db.execute("SELECT COUNT(*) FROM slots WHERE done IS NULL").fetchone()
            if recent + flying < self.params.max_requests:
                cur = db.execute(
                    "INSERT INTO slots(host, pid, started, taken) VALUES (?, ?, ?, ?)",
                    (self.me.host, self.me.pid, self.me.started, now),
                )
                assert cur.lastrowid is not None
                return cur.lastrowid, 0.0
            if not flying or not self._reap(now):
                break
        oldest = db.execute(
            "SELECT MIN(done) FROM slots WHERE done IS NOT NULL AND done + ? > ?",
            (window, now + EPSILON),
        ).fetchone()[0]
        if oldest is None:
            return None, float("inf")
        return None, max(float(oldest) + window - now, EPSILON)

    def _reap(self, now: float) -> bool:
        """Count the in-flight slots of dead processes on this host as completed now."""
        assert self._db is not None
        dead = [
            slot
            for slot, pid, started in self._db.execute(
                "SELECT id, pid, started FROM slots WHERE done IS NULL AND host = ?",
                (self.me.host,),
            )
            if pid != self.me.pid and not _alive(Holder(self.me.host, pid, started))
        ]
        if dead:
            self._db.executemany("UPDATE slots SET done = ? WHERE id = ?", [(now, s) for s in dead])
        return bool(dead)

    def _take(self) -> int | None:
        """A slot in one statement when the window has room (see _TAKE), else None."""
        assert self._db is not None
        now = time.time()
        window = self.params.window
        rows = self._db.execute(
            _TAKE,
            {
                "host": self.me.host,
                "pid": self.me.pid,
                "started": self.me.started,
                "now": now,
                "soon": now + EPSILON,
                "window": window,
                "most": self.params.max_requests,
            },
        ).fetchall()
        return int(rows[0][0]) if rows else None

    def _release(self, slot: int, reset_backoff: bool) -> None:
        assert self._db is not None
        self._db.execute(
            "UPDATE slots SET done = ? WHERE id = ? AND done IS NULL", (time.time(), slot)
        )
        if reset_backoff:  # a write only when a 429 raised the step
            self._db.execute(
                "UPDATE meta SET v = ? WHERE k = 'next_delay' AND v <> ?",
                (self.params.initial_delay, self.params.initial_delay),
            )

    def _register(self, job_id: str, digest: str, run: str) -> None:
        """:meth:`_register_one`, after clearing the jobs past their keeping time."""
        assert self._db is not None
        self._db.execute("DELETE FROM jobs WHERE at < ?", (time.time() - _JOBS_KEPT,))
        self._register_one(job_id, digest, run)

    def _register_one(self, job_id: str, digest: str, run: str) -> None:
        assert self._db is not None
        self._db.execute(
            "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?)", (job_id, digest, run, time.time())
        )

    def _registered(self, job_ids: list[str]) -> dict[str, str]:
        assert self._db is not None
        found: dict[str, str] = {}
        for start in range(0, len(job_ids), 500):
            part = job_ids[start : start + 500]
            marks = ", ".join("?" * len(part))
            query = f"SELECT job_id, run FROM jobs WHERE job_id IN ({marks})"
            found.update((str(job), str(run)) for job, run in self._db.execute(query, part))
        return found

    def _queue(self, change: BookChange[T]) -> T:
        assert self._db is not None
        row = self._db.execute("SELECT v FROM book WHERE k = 'queue'").fetchone()
        book: Book = load(row[0] if row else None)
        answer = change(book, time.time(), _alive_key)
        self._db.execute("INSERT OR REPLACE INTO book VALUES ('queue', ?)", (json.dumps(book),))
        return answer

    def _release_all(self, slots: list[int]) -> None:
        assert self._db is not None
        now = time.time()
        self._db.executemany(
            "UPDATE slots SET done = ? WHERE id = ? AND done IS NULL", [(now, s) for s in slots]
        )

    def _throttled(self, retry_after: float | None) -> tuple[float, float]:
        now = time.time()
        step = self._meta("next_delay", self.params.initial_delay)
        delay, step = next_pause(self.params, step, retry_after)
        resume_at = self._meta("resume_at", 0.0)
        added = max(now + delay - max(resume_at, now), 0.0)
        self._set("resume_at", max(resume_at, now + delay))
        self._set("next_delay", step)
        self._set("last_429", now)
        return delay, added

    def _state(self) -> WindowState:
        assert self._db is not None
        now = time.time()
        window = self.params.window
        (recent,) = self._db.execute(
            "SELECT COUNT(*) FROM slots WHERE done IS NOT NULL AND done + ? > ?", (window, now)
        ).fetchone()
        holders = tuple(
            (Holder(host, pid, started), count)
            for host, pid, started, count in self._db.execute(
                "SELECT host, pid, started, COUNT(*) FROM slots WHERE done IS NULL "
                "GROUP BY host, pid, started ORDER BY host, pid"
            )
        )
        last = self._meta("last_429", -1.0)
        return WindowState(
            store=self.name,
            account=self.account,
            max_requests=self.params.max_requests,
            window=window,
            recent=int(recent),
            in_flight=sum(count for _, count in holders),
            holders=holders,
            paused_for=max(self._meta("resume_at", 0.0) - now, 0.0),
            last_429_ago=None if last < 0 else now - last,
            next_delay=self._meta("next_delay", self.params.initial_delay),
            extra={"path": str(self.path)},
        )
