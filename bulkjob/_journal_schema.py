"""The journal's file format: its schema, chunk states and rows, how a file is recognised,
and how a resumed run proves its inputs are the ones the journal describes.

A file is recognised as a bulkjob journal through a read-only connection (:func:`inspect`)
before anything may write to it, so that an application's own SQLite database is never
touched. Its schema version says how to read it: an older one is migrated by adding what
it lacks (:data:`ADDED_COLUMNS`), a newer one refused.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from ._chunker import Chunk
from ._errors import InputError, JournalError

__all__ = [
    "ADDED_COLUMNS",
    "ROW_COLUMNS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "UNSETTLED",
    "ChunkRow",
    "ChunkState",
    "InputIdentity",
    "cause",
    "inspect",
    "read_only",
    "state_of",
    "verify_chunks",
]

SCHEMA_VERSION = 2
SQLITE_MAGIC = b"SQLite format 3\x00"
SCHEMA = """
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
    updated_at REAL NOT NULL DEFAULT 0,
    job_status TEXT,
    results_path TEXT,
    id_set TEXT,
    id_hashes BLOB,
    evidence TEXT,
    lost_at REAL,
    server_offset REAL,
    delivered_at REAL,
    out_bytes INTEGER
);
CREATE INDEX IF NOT EXISTS chunks_state ON chunks(state);
"""
#: Columns an older journal may lack, with what they are added as when it is migrated.
ADDED_COLUMNS = {
    "job_id": "TEXT",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "last_error": "TEXT",
    "sent_at": "REAL",
    "updated_at": "REAL NOT NULL DEFAULT 0",
    "job_status": "TEXT",
    "results_path": "TEXT",
    "id_set": "TEXT",
    "id_hashes": "BLOB",
    "evidence": "TEXT",
    "lost_at": "REAL",
    "server_offset": "REAL",
    "delivered_at": "REAL",
    "out_bytes": "INTEGER",
}
REQUIRED_COLUMNS = ("seq", "first", "last", "ids", "digest", "state")
ROW_COLUMNS = [
    "seq",
    "first",
    "last",
    "ids",
    "digest",
    "state",
    "job_id",
    "attempts",
    "last_error",
    "sent_at",
    "job_status",
    "results_path",
    "id_set",
    "evidence",
    "lost_at",
    "server_offset",
    "delivered_at",
    "out_bytes",
]


class ChunkState(StrEnum):
    """Where a chunk stands (see the module docstring for the transitions)."""

    PENDING = "pending"
    SENDING = "sending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    AMBIGUOUS = "ambiguous"
    ABANDONED = "abandoned"


#: States whose submit may have created a job that nobody has proven yet.
UNSETTLED = frozenset({ChunkState.SENDING, ChunkState.UNKNOWN, ChunkState.AMBIGUOUS})


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
    state: ChunkState
    job_id: str | None = None
    attempts: int = 0
    last_error: str | None = None
    sent_at: float | None = None
    job_status: str | None = None
    results_path: str | None = None
    #: SHA-256 of the chunk's distinct ids, sorted: what a job's results must match.
    id_set: str | None = None
    #: Which job proved what, or which candidates were ruled out (for ``status``).
    evidence: str | None = None
    #: When its answer was lost (our clock), and the server's clock difference then.
    lost_at: float | None = None
    server_offset: float | None = None
    #: ``enrich``: when the consumer iterated past the job's last row (None: not yet).
    delivered_at: float | None = None
    #: ``bulkjob enrich --out``: the output file's length once this job's rows were in it.
    out_bytes: int | None = None


def state_of(value: str) -> ChunkState:
    try:
        return ChunkState(value)
    except ValueError:
        return ChunkState.AMBIGUOUS  # a state this version does not know: never guessed


def cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text


def read_only(path: Path, *queries: str, immutable: bool = False) -> list[list[tuple[object, ...]]]:
    """Queries through one read-only connection: nothing about the file can change.

    ``immutable`` reads the main file alone, as SQLite's ``immutable=1`` does: no lock, no
    ``-shm``, and no look at a ``-wal`` either.
    """
    mode = "mode=ro&immutable=1" if immutable else "mode=ro"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?{mode}", uri=True)
    except sqlite3.Error as exc:
        raise JournalError(str(path), f"cannot open: {cause(exc)}") from None
    try:
        return [conn.execute(sql).fetchall() for sql in queries]
    except sqlite3.Error as exc:
        raise JournalError(
            str(path), f"not a bulkjob journal ({cause(exc)})", usable=False
        ) from None
    finally:
        conn.close()


def inspect(path: Path) -> tuple[int, frozenset[str]]:
    """(schema version, chunk columns) of a journal, read without changing a byte;
    raises JournalError for anything that is not a bulkjob journal.

    The main file is read as immutable first, so that even another program's WAL-mode
    database gets no ``-shm`` beside it. Only if that does not show a journal and a
    ``-wal`` is there (a journal written a moment ago, or left by a crash, has its tables
    in the WAL) is it read again as SQLite readers do, WAL included.
    """
    try:
        with path.open("rb") as fh:
            magic = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise JournalError(str(path), f"cannot read: {exc.strerror}") from None
    if magic != SQLITE_MAGIC:
        raise JournalError(str(path), "not a bulkjob journal (not an SQLite file)", usable=False)
    real = Path(os.path.realpath(path))  # SQLite keeps the -wal beside the real file
    try:
        return _schema_of(path, immutable=True)
    except JournalError:
        if not real.with_name(real.name + "-wal").exists():
            raise
    return _schema_of(path, immutable=False)


def _schema_of(path: Path, *, immutable: bool) -> tuple[int, frozenset[str]]:
    (names,) = read_only(path, "SELECT name FROM sqlite_master", immutable=immutable)
    if not {"run", "chunks"} <= {str(r[0]) for r in names}:
        raise JournalError(
            str(path), "not a bulkjob journal (an unrelated SQLite database)", usable=False
        )
    column_rows, version_rows = read_only(
        path,
        "PRAGMA table_info(chunks)",
        "SELECT value FROM run WHERE key = 'version'",
        immutable=immutable,
    )
    columns = frozenset(str(r[1]) for r in column_rows)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise JournalError(
            str(path), f"not a bulkjob journal (no column {missing[0]!r})", usable=False
        )
    try:
        version = int(json.loads(str(version_rows[0][0]))) if version_rows else 0
    except (ValueError, TypeError):
        version = 0
    if version < 1:
        raise JournalError(str(path), "not a bulkjob journal (no schema version)", usable=False)
    return version, columns


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
