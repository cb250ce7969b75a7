"""The main pass a block at a time: the same records, rejects and counts as line by line.

A block whose every line is a valid id is read by C loops; any other block line by line.
These property tests hold both to a plain per-line reference, also when the reader stops
part-way through a block, and hold a spool writer's scan to what the pre-pass finds.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkjob import _ids
from bulkjob._chunker import chunked, chunked_blocks
from bulkjob._errors import InputError
from bulkjob._ids import spool_async, spool_sync
from bulkjob._settings import DEFAULT_ID_PATTERN
from bulkjob._source import NO_MATCH, IdSource, _all_matcher, _matcher
from bulkjob._unzstd import unzstd

PATTERN = r"[a-c]{2}"
_LINES = st.lists(
    st.one_of(
        st.sampled_from(["aa", "ab", "bc", "cc", "ca"]),  # valid, most of the time
        st.sampled_from(["", "  ", " ab ", "abc", "zz", "a", "\tcc", "ab\r"]),
    ),
    max_size=60,
)


def reference(lines: list[str]) -> list[tuple[str, int, str]]:
    """(kind, line, value) per physical line, as the per-line loop decides it."""
    out = []
    for number, raw in enumerate(lines, 1):
        value = raw.strip()
        kind = (
            "blank"
            if not value
            else "id"
            if len(value) == 2 and set(value) <= set("abc")
            else "bad"
        )
        out.append((kind, number, value))
    return out


def write(tmp: Path, lines: list[str]) -> Path:
    path = tmp / "ids.txt"
    path.write_text("".join(line + "\n" for line in lines))
    return path


@settings(max_examples=150, deadline=None)
@given(lines=_LINES, block=st.integers(1, 40), stop=st.integers(0, 70))
def test_blocks_match_the_per_line_reference(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], block: int, stop: int
) -> None:
    """Records, line numbers, rejects and counts are the reference's, read whole or cut short."""
    path = write(tmp_path_factory.mktemp("blocks"), lines)
    expected = reference(lines)
    if all(kind == "blank" for kind, _, _ in expected):
        return  # an input of no ids is refused by the pre-pass, tested elsewhere
    ids = [(value, str(path), number) for kind, number, value in expected if kind == "id"]
    with IdSource([str(path)], id_pattern=PATTERN, block_size=block) as source:
        records = iter(source)
        got = list(itertools.islice(records, stop))
        records.close()  # type: ignore[attr-defined]
        assert got == ids[:stop]
        # Counted up to the last record handed over (everything, when read to the end).
        upto = len(lines) if stop > len(ids) else got[-1][2] if got else 0
        seen = expected[:upto]
        assert source.stats.ids_read == sum(kind != "blank" for kind, _, _ in seen)
        assert source.stats.blank == sum(kind == "blank" for kind, _, _ in seen)
        assert source.stats.ids_invalid == sum(kind == "bad" for kind, _, _ in seen)
        bad = [(n, v) for kind, n, v in seen if kind == "bad"][: len(source.stats.invalid_samples)]
        samples = [(s.origin.line, s.value, s.reason) for s in source.stats.invalid_samples]
        assert samples == [(n, v, NO_MATCH) for n, v in bad]


def test_a_block_of_ids_and_the_next_with_a_reject_keep_their_lines(tmp_path: Path) -> None:
    """A reject after an all-valid block is reported at its own line, not the block's."""
    path = write(tmp_path, ["aa", "ab", "bc", "zz", "cc"])
    with IdSource([str(path)], id_pattern=PATTERN, block_size=9) as source:
        assert [line for _, _, line in source] == [1, 2, 3, 5]
        assert [s.origin.line for s in source.stats.invalid_samples] == [4]


_ITEMS = st.lists(
    st.one_of(
        st.text(st.sampled_from(["a", " ", "\t", "\ufeff", "\u2003", "\x85", "\n", "\x00"])),
        st.integers(),
        st.just("\ud800"),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(items=_ITEMS)
def test_a_spool_writer_knows_what_the_pre_pass_finds(
    tmp_path_factory: pytest.TempPathFactory, items: list[object]
) -> None:
    """Lines, bytes and whether there is any id: the writer's scan equals the pre-pass's."""
    spool = spool_sync(items, tmp_path_factory.mktemp("spool"), "t-")
    try:
        assert spool.scan is not None
        scanned = IdSource([str(spool.path)], spooled_ids=True, scanned=spool.scan)
        read = IdSource([str(spool.path)], spooled_ids=True)
        outcomes = []
        for source in (scanned, read):
            try:
                outcomes.append(source.check())
            except InputError as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1]
    finally:
        spool.discard()


@settings(max_examples=150, deadline=None)
@given(
    lines=_LINES,
    block=st.integers(1, 40),
    size=st.integers(1, 7),
    stop=st.integers(0, 12),
    dedupe=st.booleans(),
)
def test_chunks_cut_from_blocks_are_the_chunks_of_the_records(
    tmp_path_factory: pytest.TempPathFactory,
    lines: list[str],
    block: int,
    size: int,
    stop: int,
    dedupe: bool,
) -> None:
    """Runs cut by slicing give the very chunks (ids, origins, numbers) and counts of
    chunking the records one by one, read whole or stopped after some chunks."""
    path = write(tmp_path_factory.mktemp("chunks"), lines)
    if all(kind == "blank" for kind, _, _ in reference(lines)):
        return
    outcomes = []
    for by_blocks in (False, True):
        with IdSource([str(path)], id_pattern=PATTERN, block_size=block, dedupe=dedupe) as source:
            blocks = source.blocks()
            records = iter(source)
            chunks = chunked_blocks(blocks, size) if by_blocks else chunked(records, size)
            got = [(c.seq, c.ids, c.first, c.last) for c in itertools.islice(chunks, stop)]
            chunks.close()  # type: ignore[attr-defined]
            (blocks if by_blocks else records).close()  # type: ignore[attr-defined]
            outcomes.append((got, source.stats))
    assert outcomes[0] == outcomes[1]


@settings(max_examples=100, deadline=None)
@given(items=_ITEMS, batch=st.integers(1, 4))
def test_a_spool_of_many_members_is_the_stream_in_one(
    tmp_path_factory: pytest.TempPathFactory, items: list[object], batch: int
) -> None:
    """Batches are packed as zstd frames of their own (in a thread, ahead of the writes):
    the file still reads as the one stream the items make (by bulkjob's reader and by the
    zstd library's own), with the same digest and scan as one frame, and the same bytes
    whether the items came sync or async."""
    tmp = tmp_path_factory.mktemp("members")
    whole = spool_sync(items, tmp, "whole-")

    async def agen() -> AsyncIterator[object]:
        for item in items:
            yield item

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_ids, "BATCH", batch)
        spools = [
            spool_sync(iter(items), tmp, "sync-"),
            asyncio.run(spool_async(agen(), tmp, "a-")),
        ]
    try:
        _, expected = _ids._encode(items) if items else ("", b"")
        for spool in spools:
            packed = spool.path.read_bytes()
            assert unzstd(io.BytesIO(packed)).read() == expected
            library = zstandard.ZstdDecompressor().stream_reader(packed, read_across_frames=True)
            assert library.read() == expected
            assert (spool.digest, spool.items, spool.scan) == (
                whole.digest,
                whole.items,
                whole.scan,
            )
        assert spools[0].path.read_bytes() == spools[1].path.read_bytes()
        if len(items) > batch:  # one frame per batch
            first = zstandard.ZstdDecompressor().decompressobj()
            assert first.decompress(spools[0].path.read_bytes()) != expected
    finally:
        for spool in (whole, *spools):
            spool.discard()


_ID_CHARS = st.sampled_from([*"aZ09_-", "é", "\x01", " ", "+", "\u0660"])


@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.text(st.sampled_from("aZ09_-"), min_size=63, max_size=65),
            st.text(_ID_CHARS, min_size=63, max_size=65),
            st.builds(lambda s, c: s[:10] + c + s[11:], st.just("a" * 64), _ID_CHARS),
            st.just("b" * 64),
        ),
        min_size=1,
        max_size=6,
    ),
    spooled=st.booleans(),
)
def test_the_default_patterns_block_check_is_fullmatch_on_every_value(
    values: list[str], spooled: bool
) -> None:
    """The API's id form is checked on a block's bytes at once: the same verdict as the
    pattern's fullmatch on each value (lengths 63 to 65, non-ASCII look-alikes, markers)."""
    fullmatch = _matcher(DEFAULT_ID_PATTERN, spooled)
    assert _all_matcher(DEFAULT_ID_PATTERN, fullmatch)(values) == all(map(fullmatch, values))
    other = _matcher(r"[a-b]{64}", spooled)
    assert _all_matcher(r"[a-b]{64}", other)(values) == all(map(other, values))


_DEFAULT_LINES = st.lists(
    st.one_of(
        st.sampled_from(["a" * 64, "Z" * 64, "0-_" * 21 + "b"]),  # ids as they stand
        st.sampled_from([" " + "a" * 64, "a" * 64 + "\r", "\t" + "b" * 64 + " ", "", "  "]),
        st.sampled_from(["a" * 63, "a" * 65, "a" * 63 + "é", "a" * 32 + " " + "a" * 31]),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(lines=_DEFAULT_LINES, block=st.integers(1, 400))
def test_default_pattern_blocks_match_the_per_line_reference(
    tmp_path_factory: pytest.TempPathFactory, lines: list[str], block: int
) -> None:
    """With the API's own id form, a block whose lines are ids as they stand is handed on
    unstripped, any other block stripped and checked: the records, lines and rejects are
    still those of stripping and matching each line (CRLF ends, padding, blanks)."""
    path = write(tmp_path_factory.mktemp("default"), lines)
    stripped = [raw.strip() for raw in lines]
    if not any(stripped):
        return  # an input of no ids is refused by the pre-pass, tested elsewhere
    fullmatch = re.compile(DEFAULT_ID_PATTERN).fullmatch
    ids = [(v, str(path), n) for n, v in enumerate(stripped, 1) if v and fullmatch(v)]
    bad = [(n, v) for n, v in enumerate(stripped, 1) if v and not fullmatch(v)]
    with IdSource([str(path)], block_size=block) as source:
        assert list(source) == ids
        assert source.stats.ids_invalid == len(bad)
        assert source.stats.blank == sum(1 for v in stripped if not v)
        samples = [(s.origin.line, s.value) for s in source.stats.invalid_samples]
        assert samples == bad[: len(samples)]
