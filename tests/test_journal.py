"""Tests for the SQLite journal: write-ahead states, group commit, refusing to overwrite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bulkjob._chunker import chunked
from bulkjob._errors import ConfigError, InputError
from bulkjob._journal import Journal
from tests.conftest import make_ids


def _chunks(n: int, size: int = 10) -> list:
    """``n`` ids as chunks of ``size``."""
    return list(chunked(((v, "f.txt", i + 1) for i, v in enumerate(make_ids(n))), size))


async def test_states_are_durable_in_order(tmp_path: Path) -> None:
    """sending then accepted are committed and readable by another connection."""
    path = tmp_path / "j.journal"
    journal = Journal.create(path, {"chunk_size": 10}, ["f.txt"])
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
        (1, "pending", 10, first.digest),
        (2, "accepted", 10, second.digest),
    ]
    assert reopened.counts() == {"pending": (1, 10), "accepted": (1, 10)}
    assert reopened.meta("settings") == {"chunk_size": 10}
    reopened.close_sync()


async def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    """Many writers at once are group-committed into fewer transactions than writes."""
    import asyncio

    journal = Journal.create(tmp_path / "j.journal", {}, [])
    chunks = _chunks(2000, 10)
    await asyncio.gather(*(journal.sending(c) for c in chunks))
    assert journal.counts()["sending"] == (200, 2000)
    assert journal.commits < 200
    await journal.close()


async def test_refuses_to_overwrite_a_journal_with_chunks(tmp_path: Path) -> None:
    """Creating over a journal that holds chunks is an error pointing at resume."""
    path = tmp_path / "j.journal"
    journal = Journal.create(path, {}, [])
    await journal.add(_chunks(10)[0])
    await journal.close()
    with pytest.raises(InputError, match="bulkjob resume"):
        Journal.create(path, {}, [])


def test_open_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    """A missing path or a file that is not a journal gives a clear error."""
    with pytest.raises(InputError, match="no such journal"):
        Journal.open(tmp_path / "nope.journal")
    other = tmp_path / "other.db"
    other.write_text("definitely not sqlite" * 100)
    with pytest.raises((InputError, ConfigError), match=r"other\.db"):
        Journal.open(other)
