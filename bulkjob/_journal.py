"""The run journal: an SQLite file (WAL mode) that makes a run resumable after any stop.

It records the run's settings (never a secret), the identity of its inputs, and one
row per chunk: sequence number, origin range, id count, a hash of its ids, state, job
id, attempts, last error, and the evidence that settled it. States (:class:`ChunkState`)::

    pending ──► sending ──► accepted            the answer, or a proof, named its job
       ▲           ├──────► rejected            the server refused it (400)
       │           └──────► unknown ──► accepted   a job's results hold exactly its ids
       └───────────────────────┤                   every candidate job holds other ids
                               └──► ambiguous      unprovable: resume decides
                                        └──► abandoned (by request)

Write-ahead order is what makes resume safe: a chunk is durably ``sending`` (committed)
before its request leaves, and durably ``accepted`` or ``unknown`` when the answer
arrives. After a crash, every chunk is known accepted, known not sent, or
``sending``/``unknown``: only those need a proof.

A journal has one writer: every command that may change it holds its
:class:`~bulkjob._lock.JournalLock` from start to end. ``status`` without ``--refresh``
reads it through a read-only connection and takes no lock. A file that is not a bulkjob
journal is recognised through a read-only connection before anything is written to it.

Writes go through one thread and are group-committed: whatever piles up while one
transaction commits goes into the next, so concurrent workers share fsyncs. A write that
fails (a full disk, an I/O error) becomes a :class:`~bulkjob._errors.JournalError` for
every writer waiting on it, and for every later write.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from ._chunker import Chunk
from ._errors import InputError, JournalError
from ._journal_schema import (
    ADDED_COLUMNS,
    ROW_COLUMNS,
    SCHEMA,
    SCHEMA_VERSION,
    UNSETTLED,
    ChunkRow,
    ChunkState,
    InputIdentity,
    cause,
    inspect,
    read_only,
    state_of,
    verify_chunks,
)
from ._lock import JournalLock

__all__ = [
    "SCHEMA_VERSION",
    "UNSETTLED",
    "ChunkRow",
    "ChunkState",
    "InputIdentity",
    "Journal",
    "verify_chunks",
]

_T = TypeVar("_T")
_Op = tuple[str, tuple[object, ...], "asyncio.Future[None] | None"]


class Journal:
    """One run's journal file, held by one process. Used from one event loop at a time."""

    def __init__(self, path: str | os.PathLike[str], *, lock: JournalLock | None = None) -> None:
        self.path = Path(path)
        self._lock = lock
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._columns = frozenset(ROW_COLUMNS) | frozenset(ADDED_COLUMNS)
        self._ops: list[_Op] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failure: JournalError | None = None
        self.readonly = False
        #: Transactions committed (each one may carry many writes).
        self.commits = 0

    def __repr__(self) -> str:
        mode = "read-only" if self.readonly else "locked" if self.locked else "unlocked"
        return f"<Journal {self.path} {mode} commits={self.commits} queued={len(self._ops)}>"

    @property
    def locked(self) -> bool:
        """Whether this handle holds the journal's lock."""
        return self._lock is not None and self._lock.held

    @property
    def started(self) -> bool:
        """Whether the file is open (a claimed journal is not, until :meth:`start`)."""
        return self._conn is not None

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def claim(cls, path: str | os.PathLike[str], command: str = "submit") -> Journal:
        """Lock ``path`` for a new run; :meth:`start` creates the file later.

        Refused (before anything is written) when ``path`` holds a journal with chunks,
        or any file that is not a bulkjob journal.
        """
        cls.ensure_new(path)
        journal = cls(path, lock=JournalLock.acquire(path, command))
        try:
            cls.ensure_new(path)  # again, now that no one else can write it
        except BaseException:
            journal.release()
            raise
        return journal

    @classmethod
    def ensure_new(cls, path: str | os.PathLike[str]) -> None:
        """Raise unless ``path`` is free for a new run: absent, empty, or a journal that
        never recorded a chunk. Reads only."""
        if cls.has_chunks(path):
            raise InputError(
                str(path),
                0,
                "a journal of another run is here: resume it with "
                f"`bulkjob resume {path}` (or submit again with --resume-if-exists), "
                "or choose another --journal",
            )

    @staticmethod
    def has_chunks(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` is a journal that recorded a chunk (something else is refused
        with a JournalError). Reads only."""
        if not (os.path.exists(path) and os.path.getsize(path) > 0):
            return False
        inspect(Path(path))
        ((count,),) = read_only(Path(path), "SELECT COUNT(*) FROM chunks")[0]
        return bool(count)

    def start(
        self,
        settings: dict[str, object],
        inputs: list[str],
        *,
        ids: dict[str, object] | None = None,
    ) -> None:
        """Create the journal file of a claimed, new run (``ids``: the spool of an iterable's
        ids, which is then the one input)."""
        assert self.locked and not self.started, "claim() first, once"
        identity = [
            dataclasses.asdict(InputIdentity.of(p)) if os.path.exists(p) else {"path": p}
            for p in inputs
        ]
        meta = {
            "version": SCHEMA_VERSION,
            "run_id": uuid.uuid4().hex,
            "created": time.time(),
            "settings": settings,
            "inputs": inputs,
            "identity": identity,
        }
        if ids is not None:
            meta["ids"] = ids
        self._connect()
        self._run_sync(
            [("DELETE FROM run", ()), ("DELETE FROM chunks", ())]
            + [
                ("INSERT INTO run(key, value) VALUES (?, ?)", (k, json.dumps(v)))
                for k, v in meta.items()
            ]
        )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        command: str = "bulkjob",
        *,
        readonly: bool = False,
        lock: JournalLock | None = None,
    ) -> Journal:
        """Open an existing journal: locked for ``command``, or read-only without a lock.

        The file is first read through a read-only connection: something that is not a
        bulkjob journal is refused untouched. An older schema is migrated (under the
        lock); a newer one is refused. ``lock``, already held, is used instead of taking
        one; the caller releases it if this raises (releasing twice is harmless).
        """
        path = Path(path)
        if not path.is_file():
            raise JournalError(str(path), "no such journal", usable=False)
        version, columns = inspect(path)
        if version > SCHEMA_VERSION:
            raise JournalError(
                str(path),
                f"written by a newer bulkjob (schema {version}, this one reads up to "
                f"{SCHEMA_VERSION}): upgrade bulkjob",
                usable=False,
            )
        journal = cls(path)
        journal._columns = columns
        if readonly:
            journal.readonly = True
            journal._connect()
            return journal
        journal._lock = lock or JournalLock.acquire(path, command)
        try:
            journal._connect()
            # Read again now that nobody else can change it, through the connection that
            # sees the WAL too: another command may have migrated it a moment ago.
            columns = frozenset(str(r[1]) for r in journal._query("PRAGMA table_info(chunks)"))
            journal._columns = columns
            version = int(str(journal.meta("version")))
            if version < SCHEMA_VERSION or any(c not in columns for c in ADDED_COLUMNS):
                journal._migrate(columns)
        except BaseException:
            journal.close_sync()
            raise
        return journal

    @classmethod
    async def open_async(
        cls, path: str | os.PathLike[str], command: str = "bulkjob", *, readonly: bool = False
    ) -> Journal:
        """:meth:`open` in a worker thread, for a coroutine.

        A caller cancelled meanwhile (a run stopped at once) cannot stop the thread; the
        journal it opens is closed, and its lock released, as soon as it is there, rather
        than left open to the garbage collector. A plain future, not a task: the end of
        ``asyncio.run`` cancels every task still running, and would lose it.
        """
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(
            None, functools.partial(cls.open, path, command, readonly=readonly)
        )
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)
            raise

    def _migrate(self, columns: frozenset[str]) -> None:
        """Bring an older journal to this schema: add what it lacks, in one transaction."""
        missing = [c for c in ADDED_COLUMNS if c not in columns]
        ops: list[tuple[str, tuple[object, ...]]] = [
            (f"ALTER TABLE chunks ADD COLUMN {c} {ADDED_COLUMNS[c]}", ()) for c in missing
        ]
        ops.append(("CREATE INDEX IF NOT EXISTS chunks_state ON chunks(state)", ()))
        ops.append(
            (
                "INSERT OR REPLACE INTO run(key, value) VALUES ('version', ?)",
                (json.dumps(SCHEMA_VERSION),),
            )
        )
        self._run_sync(ops)
        self._columns = columns | frozenset(ADDED_COLUMNS)

    def _connect(self) -> None:
        path = self.path
        readonly = self.readonly

        def connect() -> sqlite3.Connection:
            if readonly:
                conn = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
                )
            else:
                conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            try:
                if readonly:
                    conn.execute("PRAGMA query_only=ON")
                    return conn
                conn.execute("PRAGMA journal_mode=WAL")
                # FULL: a committed "sending"/"accepted" survives power loss, not just kill -9.
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=5000")
                conn.executescript(SCHEMA)
            except BaseException:
                # A file that is no database fails here, after the connection was made:
                # closed now, not left to the garbage collector (a ResourceWarning on 3.13).
                conn.close()
                raise
            return conn

        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal")
        try:
            if not readonly:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._pool.submit(connect).result()
        except (OSError, sqlite3.Error) as exc:
            self._pool.shutdown(wait=False)
            self._pool = None
            raise JournalError(str(path), f"cannot open: {exc}") from None

    # -- reading (synchronous: small, and used before or after the loop's busy part) -----

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        conn, pool = self._conn, self._pool
        assert conn is not None and pool is not None, "the journal is not open"
        return self._guarded(
            lambda: pool.submit(lambda: conn.execute(sql, params).fetchall()).result()
        )

    def _guarded(self, work: Callable[[], _T]) -> _T:
        try:
            return work()
        except sqlite3.Error as exc:
            raise JournalError(str(self.path), cause(exc)) from None

    def meta(self, key: str) -> object:
        """A run-level value (settings, inputs, identity, created, version)."""
        rows = self._query("SELECT value FROM run WHERE key = ?", (key,))
        if not rows:
            raise JournalError(str(self.path), f"holds no {key!r}: not a complete journal")
        return json.loads(str(rows[0][0]))

    @functools.cached_property
    def run_id(self) -> str:
        """The run's name among the account's runs (the registry of known jobs): drawn when
        the run starts. A journal from before it gets one at its first use by a command that
        holds it (before that command registers anything, so the name never changes, even if
        the file moves); read-only, one derived from when it was created."""
        recorded = self.meta_or("run_id")
        if recorded is not None:
            return str(recorded)
        if self.readonly or not self.locked:
            basis = f"{os.path.realpath(self.path)}\0{self.meta('created')}"
            return hashlib.sha256(basis.encode()).hexdigest()[:32]
        run_id = uuid.uuid4().hex
        self._run_sync(
            [("INSERT INTO run(key, value) VALUES ('run_id', ?)", (json.dumps(run_id),))]
        )
        return run_id

    def recorded_settings(self) -> dict[str, object]:
        """The settings the run recorded (never a secret)."""
        value = self.meta("settings")
        if not isinstance(value, dict):
            raise JournalError(str(self.path), "holds no run settings")
        return value

    def inputs(self) -> list[str]:
        """The run's inputs, as recorded."""
        value = self.meta("inputs")
        if not isinstance(value, list):
            raise JournalError(str(self.path), "holds no inputs")
        return [str(i) for i in value]

    def ids_record(self) -> dict[str, object] | None:
        """The spool of a run of ``ids=`` (path, digest, items), None for a run of files."""
        value = self.meta_or("ids")
        return value if isinstance(value, dict) else None

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

    def resumable_rows(self, chunks: Iterable[Chunk], inputs: list[str]) -> dict[int, ChunkRow]:
        """seq -> row, once the inputs are proven to be the ones journaled: same sizes, and
        ``chunks`` (the inputs read again) holding the same ids as every journaled chunk."""
        self.check_identity()
        rows = {row.seq: row for row in self.rows()}
        verify_chunks(rows, chunks, inputs)
        return rows

    def rows(self, *states: ChunkState) -> Iterator[ChunkRow]:
        """Chunk rows in sequence order, optionally of some states only."""
        # An older journal read without migrating (read-only) lacks some columns.
        cols = ", ".join(c if c in self._columns else f"NULL AS {c}" for c in ROW_COLUMNS)
        sql = f"SELECT {cols} FROM chunks"
        if states:
            sql += f" WHERE state IN ({', '.join('?' * len(states))})"
        for row in self._query(sql + " ORDER BY seq", tuple(str(s) for s in states)):
            values = list(row)
            values[5] = state_of(str(values[5]))
            values[7] = int(str(values[7] or 0))
            yield ChunkRow(*values)  # type: ignore[arg-type]

    def id_hashes(self, seq: int) -> bytes | None:
        """The sorted 64-bit hashes of a parked chunk's ids (see :mod:`bulkjob._evidence`)."""
        if "id_hashes" not in self._columns:
            return None
        rows = self._query("SELECT id_hashes FROM chunks WHERE seq = ?", (seq,))
        value = rows[0][0] if rows else None
        return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None

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

    async def accepted(
        self, seq: int, job_id: str, *, status: str = "accepted", evidence: str | None = None
    ) -> None:
        """Durably record the job a chunk became (from its answer, or proven)."""
        await self._write(
            "UPDATE chunks SET state = 'accepted', job_id = ?, job_status = ?, "
            "last_error = NULL, evidence = COALESCE(?, evidence), id_hashes = NULL, "
            "updated_at = ? WHERE seq = ?",
            (job_id, status, evidence, time.time(), seq),
        )

    async def park(
        self,
        seq: int,
        id_set: str,
        id_hashes: bytes,
        reason: str,
        *,
        lost_at: float,
        server_offset: float | None,
    ) -> None:
        """Durably record that a chunk's submit has an unknown outcome, with what its
        proof needs: the digest of its id set, the sorted hashes of its ids, when its
        answer was lost and the server's clock difference when it was sent."""
        await self._write(
            "UPDATE chunks SET state = 'unknown', id_set = ?, id_hashes = ?, last_error = ?, "
            "lost_at = ?, server_offset = ?, updated_at = ? WHERE seq = ?",
            (id_set, id_hashes, reason, lost_at, server_offset, time.time(), seq),
        )

    async def settle(
        self,
        seq: int,
        state: ChunkState,
        error: str | None,
        *,
        evidence: str | None = None,
        durable: bool = True,
    ) -> None:
        """Move a chunk to ``pending``, ``rejected``, ``ambiguous`` or ``abandoned``."""
        await self._write(
            "UPDATE chunks SET state = ?, last_error = ?, evidence = COALESCE(?, evidence), "
            "updated_at = ? WHERE seq = ?",
            (str(state), error, evidence, time.time(), seq),
            durable=durable,
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

    async def delivered(self, seq: int, *, out_bytes: int | None = None) -> None:
        """Durably record that job ``seq``'s rows reached the consumer (``enrich``), and
        with ``out_bytes`` the output file's length once they were written into it."""
        await self._write(*_delivered(seq, out_bytes))

    def delivered_soon(self, seq: int) -> concurrent.futures.Future[bool]:
        """:meth:`delivered`, from any thread and without the loop: the write goes to the
        journal's thread at once (the consumer of a blocking ``enrich`` waits for it
        before it hands over the next job's rows, so every hop counts). The future is
        True once the record is durable, False when the journal was closed first (nothing
        written: the run was stopped), and a JournalError when the write failed."""
        pool = self._pool
        if self._failure is None and pool is not None:
            with contextlib.suppress(RuntimeError):  # shutting down: the journal is closing
                return pool.submit(self._apply_now, [_delivered(seq, None)])
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        if self._failure is not None:
            done.set_exception(self._failure)
        else:
            done.set_result(False)
        return done

    def _apply_now(self, ops: list[tuple[str, tuple[object, ...]]]) -> bool:
        """:meth:`_apply` on the journal's thread for a writer off the loop (see
        :meth:`delivered_soon`); a failure fails the journal as one in :meth:`_flush` does."""
        conn = self._conn  # read once: close_sync clears it from another thread
        if conn is None:
            return False
        if self._failure is not None:
            raise self._failure
        try:
            self._apply(ops, conn)
        except (sqlite3.Error, OSError) as exc:
            self._failure = self._cannot_write(exc)
            raise self._failure from None
        return True

    def set_meta(self, key: str, value: object) -> None:
        """Record a run-level value (e.g. that the run is an ``enrich`` and its output)."""
        self._run_sync(
            [("INSERT OR REPLACE INTO run(key, value) VALUES (?, ?)", (key, json.dumps(value)))]
        )

    def meta_or(self, key: str, default: object = None) -> object:
        """A run-level value, or ``default`` when the journal holds none."""
        rows = self._query("SELECT value FROM run WHERE key = ?", (key,))
        return json.loads(str(rows[0][0])) if rows else default

    async def flush(self) -> None:
        """Wait until everything written so far is committed (raises a past failure)."""
        await self._write("SELECT 1", ())

    async def _write(self, sql: str, params: tuple[object, ...], *, durable: bool = True) -> None:
        if self._failure is not None:
            raise self._failure
        assert not self.readonly, "a read-only journal is never written"
        if self._pool is None:  # closed, or its opening failed: nothing would ever commit
            raise JournalError(str(self.path), "cannot write: the journal is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] | None = loop.create_future() if durable else None
        self._ops.append((sql, params, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush())
        if future is not None:
            await asyncio.shield(future)

    async def _flush(self) -> None:
        """Commit queued writes in batches. Never raises: a failure goes to the waiters."""
        loop = asyncio.get_running_loop()
        pool = self._pool
        assert pool is not None
        while self._ops:
            batch, self._ops = self._ops, []
            try:
                await loop.run_in_executor(pool, self._apply, [(s, p) for s, p, _ in batch])
            except (sqlite3.Error, OSError) as exc:
                self._failure = self._cannot_write(exc)
                for _, _, fut in batch + self._ops:
                    if fut is not None and not fut.done():
                        fut.set_exception(self._failure)
                self._ops = []
                return
            except BaseException:  # cancelled with the loop: so are the writers waiting
                for _, _, fut in batch + self._ops:
                    if fut is not None:
                        fut.cancel()
                raise
            for _, _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def _run_sync(self, ops: list[tuple[str, tuple[object, ...]]]) -> None:
        """Apply ``ops`` as one transaction, from any thread but the journal's own."""
        pool = self._pool
        assert pool is not None
        try:
            pool.submit(self._apply, ops).result()
        except (sqlite3.Error, OSError) as exc:
            raise self._cannot_write(exc) from None

    def _cannot_write(self, exc: sqlite3.Error | OSError) -> JournalError:
        """The error of a write the file refused (a full disk, an I/O error)."""
        return JournalError(str(self.path), f"cannot write: {cause(exc)}")

    def _apply(
        self, ops: list[tuple[str, tuple[object, ...]]], conn: sqlite3.Connection | None = None
    ) -> None:
        """One transaction; runs on the journal's thread (on ``conn`` when the caller read
        the connection already, else on the journal's own)."""
        conn = conn if conn is not None else self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in ops:
                conn.execute(sql, params)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                # SQLite rolls back by itself what it could not commit.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        self.commits += 1

    async def close(self) -> None:
        """Commit what is queued, close the file and release the lock."""
        try:
            if self._flusher is not None and not self._flusher.done():
                await asyncio.shield(self._flusher)
        finally:
            self.close_sync()

    def close_sync(self) -> None:
        """Close without waiting for queued writes and release the lock; safe twice."""
        if self._conn is not None and self._pool is not None:
            conn, self._conn = self._conn, None
            # Nothing left to save: every write that mattered was awaited.
            with contextlib.suppress(sqlite3.Error):
                self._pool.submit(conn.close).result()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.release()

    def release(self) -> None:
        """Give up the lock (the file is closed first by :meth:`close_sync`)."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_sync()


def _close_opened(opening: asyncio.Future[Journal]) -> None:
    """The journal a cancelled :meth:`Journal.open_async` opened after all: closed."""
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close_sync()


def _delivered(seq: int, out_bytes: int | None) -> tuple[str, tuple[object, ...]]:
    """The write that records job ``seq`` delivered (see :meth:`Journal.delivered`)."""
    now = time.time()
    return (
        "UPDATE chunks SET delivered_at = ?, out_bytes = ?, updated_at = ? WHERE seq = ?",
        (now, out_bytes, now, seq),
    )
