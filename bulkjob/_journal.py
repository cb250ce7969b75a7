"""The run journal: an SQLite file (WAL mode) that makes a run resumable after any stop.

It records the run's settings (never a secret), the identity of its inputs, and one
row per chunk: sequence number, origin range, id count, a hash of its ids, state,
job id, attempts, last error. States::

    pending ──► sending ──► accepted
                   │  └───► rejected
                   └──────► ambiguous   (no answer: the job may or may not exist)

Write-ahead order is what makes resume safe: a chunk is durably ``sending`` (committed)
before its request leaves, and durably ``accepted`` with its job id as soon as the
answer arrives. After a crash, every chunk is therefore either known accepted, known
not sent, or ``sending``/``ambiguous`` — and only those need reconciling.

Writes go through one thread and are group-committed: whatever piles up while one
transaction commits goes into the next, so concurrent workers share fsyncs and the
journal never becomes the bottleneck.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ._chunker import Chunk
from ._errors import ConfigError, InputError

__all__ = ["ChunkRow", "InputIdentity", "Journal", "verify_chunks"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    seq INTEGER PRIMARY KEY,
    first TEXT NOT NULL,
    last TEXT NOT NULL,
    ids INTEGER NOT NULL,
    digest TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    job_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at REAL,
    updated_at REAL NOT NULL,
    job_status TEXT,
    results_path TEXT
);
CREATE INDEX IF NOT EXISTS chunks_state ON chunks(state);
"""
_Op = tuple[str, tuple[object, ...], "asyncio.Future[None] | None"]


@dataclass(frozen=True, slots=True)
class InputIdentity:
    """Which file an input was: resume refuses a different one."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> InputIdentity:
        """Stat ``path`` now."""
        try:
            st = os.stat(path)
        except OSError as exc:
            raise InputError(path, 0, f"cannot read input: {exc.strerror}") from None
        return cls(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """One chunk as the journal knows it."""

    seq: int
    first: str
    last: str
    ids: int
    digest: str
    state: str
    job_id: str | None
    attempts: int
    last_error: str | None
    sent_at: float | None
    job_status: str | None
    results_path: str | None


class Journal:
    """One run's journal file. Belongs to the event loop it is used on."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        self._conn: sqlite3.Connection | None = None
        self._ops: list[_Op] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Transactions committed (each one may carry many writes).
        self.commits = 0

    def __repr__(self) -> str:
        return f"<Journal {self.path} commits={self.commits} queued={len(self._ops)}>"

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], settings: dict[str, object], inputs: list[str]
    ) -> Journal:
        """Start a new journal; an existing one with chunks in it is never overwritten."""
        cls.ensure_new(path)
        journal = cls(path)
        journal._connect()
        identity = [
            dataclasses.asdict(InputIdentity.of(p)) if os.path.exists(p) else {"path": p}
            for p in inputs
        ]
        meta = {
            "version": SCHEMA_VERSION,
            "created": time.time(),
            "settings": settings,
            "inputs": inputs,
            "identity": identity,
        }
        journal._run_sync(
            [("DELETE FROM run", ()), ("DELETE FROM chunks", ())]
            + [
                ("INSERT INTO run(key, value) VALUES (?, ?)", (k, json.dumps(v)))
                for k, v in meta.items()
            ]
        )
        return journal

    @classmethod
    def ensure_new(cls, path: str | os.PathLike[str]) -> None:
        """Raise InputError if ``path`` holds a journal with chunks: it is never reused."""
        if not (os.path.exists(path) and os.path.getsize(path) > 0):
            return
        existing = cls.open(path)
        try:
            has_chunks = existing._query("SELECT COUNT(*) FROM chunks")[0][0]
        finally:
            existing.close_sync()
        if has_chunks:
            raise InputError(
                str(path),
                0,
                "a journal of another run is here: resume it with "
                f"`bulkjob resume {path}` or choose another --journal",
            )

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Journal:
        """Open an existing journal (for resume, status, wait, results, cancel)."""
        journal = cls(path)
        if not journal.path.is_file():
            raise InputError(str(path), 0, "no such journal")
        journal._connect()
        try:
            version = journal.meta("version")
        except sqlite3.DatabaseError as exc:
            journal.close_sync()
            raise InputError(str(path), 0, f"not a bulkjob journal ({exc})") from None
        if version != SCHEMA_VERSION:
            journal.close_sync()
            raise InputError(str(path), 0, f"journal version {version} is not {SCHEMA_VERSION}")
        return journal

    def _connect(self) -> None:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed "sending"/"accepted" survives power loss, not just kill -9.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(_SCHEMA)
            return conn

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._pool.submit(connect).result()
        except (OSError, sqlite3.Error) as exc:
            self._pool.shutdown(wait=False)
            raise ConfigError(f"{self.path}: cannot open the journal: {exc}") from None

    # -- reading (synchronous: small, and used before or after the loop's busy part) -----

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        conn = self._conn
        assert conn is not None
        return self._pool.submit(lambda: conn.execute(sql, params).fetchall()).result()

    def meta(self, key: str) -> object:
        """A run-level value (settings, inputs, identity, created, version)."""
        rows = self._query("SELECT value FROM run WHERE key = ?", (key,))
        if not rows:
            raise sqlite3.DatabaseError(f"missing run key {key!r}")
        return json.loads(str(rows[0][0]))

    def check_identity(self) -> None:
        """Refuse inputs whose size changed since the journal was written."""
        identity = self.meta("identity")
        assert isinstance(identity, list)
        for old in identity:
            if "size" in old and os.path.exists(old["path"]):
                now = InputIdentity.of(old["path"])
                if now.size != old["size"]:
                    raise InputError(
                        old["path"],
                        0,
                        f"input changed since the journal was written "
                        f"({old['size']:,} -> {now.size:,} bytes); nothing was sent",
                    )

    def rows(self, state: str | None = None) -> Iterator[ChunkRow]:
        """Chunk rows in sequence order, optionally of one state."""
        sql = (
            "SELECT seq, first, last, ids, digest, state, job_id, attempts, last_error, "
            "sent_at, job_status, results_path FROM chunks"
        )
        params: tuple[object, ...] = ()
        if state is not None:
            sql += " WHERE state = ?"
            params = (state,)
        for row in self._query(sql + " ORDER BY seq", params):
            yield ChunkRow(*row)  # type: ignore[arg-type]

    def counts(self) -> dict[str, tuple[int, int]]:
        """state -> (chunks, ids)."""
        rows = self._query("SELECT state, COUNT(*), SUM(ids) FROM chunks GROUP BY state")
        return {str(s): (int(str(c)), int(str(i or 0))) for s, c, i in rows}

    # -- writing ---------------------------------------------------------------------------

    async def add(self, chunk: Chunk) -> None:
        """Record a chunk as pending (not awaited for durability: nothing was sent)."""
        await self._write(
            "INSERT OR IGNORE INTO chunks(seq, first, last, ids, digest, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (chunk.seq, str(chunk.first), str(chunk.last), len(chunk), chunk.digest, time.time()),
            durable=False,
        )

    async def sending(self, chunk: Chunk) -> None:
        """Durably mark ``chunk`` as about to be sent; returns once committed."""
        now = time.time()
        await self._write(
            "INSERT INTO chunks(seq, first, last, ids, digest, state, attempts, sent_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, 'sending', 1, ?, ?) "
            "ON CONFLICT(seq) DO UPDATE SET state = 'sending', attempts = attempts + 1, "
            "sent_at = excluded.sent_at, updated_at = excluded.updated_at",
            (chunk.seq, str(chunk.first), str(chunk.last), len(chunk), chunk.digest, now, now),
        )

    async def accepted(self, seq: int, job_id: str, status: str = "accepted") -> None:
        """Durably record the job id a chunk was accepted as."""
        await self._write(
            "UPDATE chunks SET state = 'accepted', job_id = ?, job_status = ?, "
            "last_error = NULL, updated_at = ? WHERE seq = ?",
            (job_id, status, time.time(), seq),
        )

    async def settle(self, seq: int, state: str, error: str | None) -> None:
        """Move a chunk to ``pending``, ``rejected``, ``ambiguous`` or ``abandoned``."""
        await self._write(
            "UPDATE chunks SET state = ?, last_error = ?, updated_at = ? WHERE seq = ?",
            (state, error, time.time(), seq),
        )

    async def job_update(
        self, seq: int, *, status: str | None = None, results_path: str | None = None
    ) -> None:
        """Record a job's latest server status and/or where its results were saved."""
        await self._write(
            "UPDATE chunks SET job_status = COALESCE(?, job_status), "
            "results_path = COALESCE(?, results_path), updated_at = ? WHERE seq = ?",
            (status, results_path, time.time(), seq),
        )

    def recent_requests(self) -> list[float]:
        """Wall-clock completion times of the run's latest requests (for the limiter)."""
        try:
            value = self.meta("recent_requests")
        except sqlite3.DatabaseError:
            return []
        return [float(t) for t in value] if isinstance(value, list) else []

    async def save_recent_requests(self, times: list[float]) -> None:
        """Remember the latest requests, so the next command of the run keeps the window."""
        await self._write(
            "INSERT OR REPLACE INTO run(key, value) VALUES ('recent_requests', ?)",
            (json.dumps(times),),
        )

    async def flush(self) -> None:
        """Wait until everything written so far is committed."""
        await self._write("SELECT 1", ())

    async def _write(self, sql: str, params: tuple[object, ...], *, durable: bool = True) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] | None = loop.create_future() if durable else None
        self._ops.append((sql, params, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        if future is not None:
            await asyncio.shield(future)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        while self._ops:
            batch, self._ops = self._ops, []
            try:
                await loop.run_in_executor(self._pool, self._apply, [(s, p) for s, p, _ in batch])
            except BaseException as exc:
                for _, _, fut in batch:
                    if fut is not None and not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
                raise
            for _, _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def _run_sync(self, ops: list[tuple[str, tuple[object, ...]]]) -> None:
        """Apply ``ops`` as one transaction, from any thread but the journal's own."""
        self._pool.submit(self._apply, ops).result()

    def _apply(self, ops: list[tuple[str, tuple[object, ...]]]) -> None:
        """One transaction; runs on the journal's thread."""
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in ops:
                conn.execute(sql, params)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        self.commits += 1

    async def close(self) -> None:
        """Commit what is queued and close the file."""
        try:
            if self._flusher is not None:
                await asyncio.shield(self._flusher)
        finally:
            self.close_sync()

    def close_sync(self) -> None:
        """Close without waiting for queued writes (they were awaited, or never mattered)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            self._pool.submit(conn.close).result()
        self._pool.shutdown(wait=True)


def verify_chunks(rows: dict[int, ChunkRow], chunks: Iterable[Chunk], inputs: list[str]) -> None:
    """Prove that ``chunks`` (the input re-read) are the chunks ``rows`` describe.

    Reads only as far as the last journaled chunk. Raises InputError on the first chunk
    whose hash differs, or when the input ends before it.
    """
    if not rows:
        return
    last = max(rows)
    for chunk in chunks:
        row = rows.get(chunk.seq)
        if row is not None and row.digest != chunk.digest:
            raise InputError(
                chunk.first.path,
                chunk.first.line,
                f"input changed since the journal was written: chunk {chunk.seq} "
                f"({row.first}..{row.last}) now holds other ids; nothing was sent",
            )
        if chunk.seq >= last:
            return
    raise InputError(
        ", ".join(inputs),
        0,
        f"input is shorter than when the journal was written (chunk {last} is gone); "
        "nothing was sent",
    )
