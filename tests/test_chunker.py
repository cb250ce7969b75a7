"""Tests for bulkjob._chunker: deterministic, bounded chunks with origins and digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulkjob._chunker import Chunk, chunked
from bulkjob._source import IdRecord, IdSource, Origin


def records(n: int, path: str = "ids.txt") -> list[IdRecord]:
    """n records with distinct ids on lines 1..n."""
    return [(f"id{i}", path, i) for i in range(1, n + 1)]


def test_chunks_have_at_most_size_ids() -> None:
    """Ids are grouped by size with a smaller last chunk."""
    assert [len(c) for c in chunked(records(7), 3)] == [3, 3, 1]


def test_sequence_numbers_start_at_one() -> None:
    """Chunks are numbered 1, 2, ... by default."""
    assert [c.seq for c in chunked(records(5), 2)] == [1, 2, 3]


def test_start_sets_the_first_sequence_number() -> None:
    """start shifts the numbering (for resumed runs)."""
    assert [c.seq for c in chunked(records(4), 2, start=9)] == [9, 10]


def test_empty_input_gives_no_chunks() -> None:
    """No records means no chunk, never an empty one."""
    assert list(chunked([], 10)) == []


def test_origins_are_first_and_last_records() -> None:
    """A chunk spanning two files knows where its first and last id came from."""
    data = [("a", "x.txt", 4), ("b", "x.txt", 9), ("c", "y.txt", 2)]
    (chunk,) = chunked(data, 10)
    assert (chunk.first, chunk.last) == (Origin("x.txt", 4), Origin("y.txt", 2))


@pytest.mark.parametrize("size", [0, -1, 10_001, True, 2.0])
def test_size_out_of_range_is_rejected(size: int) -> None:
    """A size outside 1..10000 raises ValueError naming chunk_size, at the call."""
    with pytest.raises(ValueError, match="chunk_size"):
        chunked(records(1), size)


def test_start_below_one_is_rejected() -> None:
    """start must be a positive sequence number."""
    with pytest.raises(ValueError, match="start"):
        chunked(records(1), 1, start=0)


def test_maximum_size_is_accepted() -> None:
    """10000 ids fit in one chunk."""
    assert [len(c) for c in chunked(records(10_001), 10_000)] == [10_000, 1]


def test_body_is_ids_one_per_line_utf8() -> None:
    """The request body is the ids joined by newlines, newline-terminated, UTF-8."""
    chunk = Chunk(1, ["a", "é"], Origin("p", 1), Origin("p", 2))
    assert chunk.body() == "a\né\n".encode()


def test_digest_is_sha256_of_body() -> None:
    """digest is the SHA-256 hex of the body and stays the same on repeat use."""
    chunk = Chunk(1, ["a", "b"], Origin("p", 1), Origin("p", 2))
    assert chunk.digest == hashlib.sha256(b"a\nb\n").hexdigest()
    assert chunk.digest == hashlib.sha256(b"a\nb\n").hexdigest()


def test_digest_does_not_affect_equality() -> None:
    """A chunk whose digest was computed equals one whose digest was not."""
    a = Chunk(1, ["a"], Origin("p", 1), Origin("p", 1))
    b = Chunk(1, ["a"], Origin("p", 1), Origin("p", 1))
    assert a.digest
    assert a == b


def test_chunks_from_an_id_source(tmp_path: Path) -> None:
    """The chunker consumes an IdSource's records directly."""
    path = tmp_path / "ids.txt"
    path.write_text("".join(f"{i:064d}\n" for i in range(5)))
    with IdSource([str(path)]) as source:
        chunks = list(chunked(source, 2))
    assert [(c.first.line, c.last.line) for c in chunks] == [(1, 2), (3, 4), (5, 5)]


# -- properties -----------------------------------------------------------------------

record_lists = st.lists(
    st.tuples(st.text(max_size=5), st.sampled_from(["a.txt", "b.csv"]), st.integers(1, 10**7)),
    max_size=200,
)
sizes = st.integers(min_value=1, max_value=50)


@given(data=record_lists, size=sizes)
def test_concatenated_ids_equal_input(data: list[IdRecord], size: int) -> None:
    """Joining every chunk's ids gives back the input ids in order."""
    assert [i for c in chunked(data, size) for i in c.ids] == [r[0] for r in data]


@given(data=record_lists, size=sizes)
def test_all_chunks_full_but_the_last(data: list[IdRecord], size: int) -> None:
    """Every chunk but the last holds exactly size ids; the last holds 1..size."""
    lengths = [len(c) for c in chunked(data, size)]
    assert all(n == size for n in lengths[:-1])
    assert all(1 <= n <= size for n in lengths)


@given(data=record_lists, size=sizes, start=st.integers(1, 1000))
def test_sequence_numbers_are_consecutive(data: list[IdRecord], size: int, start: int) -> None:
    """Sequence numbers run from start without gaps."""
    seqs = [c.seq for c in chunked(data, size, start=start)]
    assert seqs == list(range(start, start + len(seqs)))


@given(data=record_lists, size=sizes)
def test_origins_match_records(data: list[IdRecord], size: int) -> None:
    """Each chunk's first and last origins are those of its first and last records."""
    for n, chunk in enumerate(chunked(data, size)):
        part = data[n * size : (n + 1) * size]
        assert chunk.first == Origin(part[0][1], part[0][2])
        assert chunk.last == Origin(part[-1][1], part[-1][2])


@given(data=record_lists, size=sizes)
def test_chunking_is_deterministic(data: list[IdRecord], size: int) -> None:
    """Chunking the same input twice gives equal chunks and digests."""
    first = list(chunked(iter(data), size))
    second = list(chunked(iter(data), size))
    assert first == second
    assert [c.digest for c in first] == [c.digest for c in second]
