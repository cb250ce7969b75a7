"""The large-piece gzip reader reads what gzip.GzipFile reads, and fails where it fails:
members one after another, zero padding, header fields, files cut short or damaged."""

from __future__ import annotations

import gzip
import io
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkjob._gunzip import gunzip

_ERRORS = (OSError, EOFError, zlib.error)
# Files of stored (level 0) members are as large as their content: hypothesis then warns
# that an example's repr is large, which is no fault of the test.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning"
)
_PAYLOAD = (
    st.binary(max_size=700)
    | st.text("ab\n", max_size=6000).map(str.encode)
    # Repeats inflate a few bytes into many: members end mid-read, after reads cut short.
    | st.tuples(st.binary(min_size=1, max_size=4), st.integers(1, 4000)).map(lambda t: t[0] * t[1])
)


def _member(payload: bytes, level: int, name: bool) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="ids.txt" if name else "", mode="wb", fileobj=out,
                       compresslevel=level, mtime=0) as gz:  # fmt: skip
        gz.write(payload)
    return out.getvalue()


_FILES = st.lists(
    st.tuples(_PAYLOAD, st.integers(0, 9), st.booleans(), st.integers(0, 3)),
    min_size=1,
    max_size=4,
).map(lambda parts: b"".join(_member(p, lv, nm) + b"\0" * pad for p, lv, nm, pad in parts))


def _read(
    data: bytes, sizes: list[int], reader: str, piece: int = 1 << 20
) -> bytes | type[BaseException]:
    """The content read in pieces of ``sizes`` (cycled), or the kind of error raised."""
    raw = io.BytesIO(data)
    stream = gunzip(raw, piece) if reader == "ours" else gzip.GzipFile(fileobj=raw, mode="rb")
    out = []
    try:
        for i in range(1_000_000):  # 1-byte reads of the largest files: 64,000
            piece = stream.read(sizes[i % len(sizes)])
            if not piece:
                return b"".join(out)
            out.append(piece)
    except _ERRORS as exc:
        return type(exc)
    raise AssertionError("no end")


@settings(max_examples=200, deadline=None)
@given(
    data=_FILES,
    sizes=st.lists(st.integers(1, 5000) | st.just(1 << 20), min_size=1, max_size=3),
    piece=st.integers(1, 3000) | st.just(1 << 20),
)
def test_whole_files_read_the_same(data: bytes, sizes: list[int], piece: int) -> None:
    """Any read sizes, any piece size (small ones end members mid-read and mid-piece)."""
    assert _read(data, sizes, "ours", piece) == gzip.decompress(data)


@settings(max_examples=300, deadline=None)
@given(
    data=_FILES,
    cut=st.integers(2),
    flip=st.integers(10),
    tail=st.binary(max_size=3),
    piece=st.integers(1, 3000) | st.just(1 << 20),
)
def test_damaged_files_fail_as_gzip_fails(
    data: bytes, cut: int, flip: int, tail: bytes, piece: int
) -> None:
    """Cut short, a byte changed past the fixed header, or bytes after the end: the same
    content when gzip reads it, an error (of the kinds gzip raises) when gzip fails."""
    damaged = [data[: 2 + cut % max(len(data) - 1, 1)], data + tail]
    if flip < len(data):
        changed = bytearray(data)
        changed[flip] ^= 0x5A
        damaged.append(bytes(changed))
    for case in damaged:
        theirs = _read(case, [1 << 20], "gzip")
        ours = _read(case, [1 << 20], "ours", piece)
        if isinstance(theirs, bytes):
            assert ours == theirs
        else:
            assert isinstance(ours, type) and issubclass(ours, _ERRORS)


def test_members_that_inflate_many_fold_in_small_pieces() -> None:
    """A member ending in the zlib call after one cut short by the output's size: what
    follows it is read once (zlib's unconsumed_tail then repeats its unused_data)."""
    data = b"".join(gzip.compress(text * 5000) for text in (b"ab\n", b"ba\n", b"cc\n"))
    for piece in (30, 100, 4096, 1 << 20):
        for size in (7, 1000, 1 << 20):
            assert _read(data, [size], "ours", piece) == gzip.decompress(data)
