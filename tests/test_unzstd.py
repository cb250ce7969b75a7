"""The zstd reader reads what the zstd library reads, and fails where a file is damaged:
frames one after another, read in any pieces; a frame cut short, a wrong checksum, or
bytes that are no frame is an error, never a stream that just ends early."""

from __future__ import annotations

import io
import tracemalloc

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from bulkjob._unzstd import ZstdError, unzstd

_PAYLOAD = (
    st.binary(max_size=700)
    | st.text("ab\n", max_size=6000).map(str.encode)
    # Repeats inflate a few bytes into many: frames end mid-read, after reads cut short.
    | st.tuples(st.binary(min_size=1, max_size=4), st.integers(1, 4000)).map(lambda t: t[0] * t[1])
)
_FILES = st.lists(
    st.tuples(_PAYLOAD, st.integers(1, 5), st.booleans()), min_size=1, max_size=4
).map(lambda parts: [(p, _frame(p, lv, check)) for p, lv, check in parts])


def _frame(payload: bytes, level: int, checksum: bool) -> bytes:
    return zstandard.ZstdCompressor(level, write_checksum=checksum).compress(payload)


def _read(data: bytes, sizes: list[int], piece: int = 1 << 20) -> bytes | type[BaseException]:
    """The content read in pieces of ``sizes`` (cycled), or the kind of error raised."""
    stream = unzstd(io.BytesIO(data), piece)
    out = []
    try:
        for i in range(1_000_000):
            part = stream.read(sizes[i % len(sizes)])
            if not part:
                return b"".join(out)
            out.append(part)
    except (EOFError, ZstdError) as exc:
        return type(exc)
    raise AssertionError("no end")


@settings(max_examples=150, deadline=None)
@given(
    frames=_FILES,
    sizes=st.lists(st.integers(1, 5000) | st.just(-1), min_size=1, max_size=3),
    piece=st.integers(1, 9) | st.just(1 << 20),
)
def test_frames_read_as_one_stream_in_any_pieces(
    frames: list[tuple[bytes, bytes]], sizes: list[int], piece: int
) -> None:
    data = b"".join(frame for _, frame in frames)
    expected = b"".join(payload for payload, _ in frames)
    assert _read(data, sizes, piece) == expected
    library = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    assert library.read() == expected  # what the library itself reads


@settings(max_examples=150, deadline=None)
@given(frames=_FILES, data=st.data(), piece=st.integers(1, 9) | st.just(1 << 20))
def test_a_file_cut_anywhere_inside_a_frame_is_an_error(
    frames: list[tuple[bytes, bytes]], data: st.DataObject, piece: int
) -> None:
    """The library's stream reader hands back what it has at a cut: this one raises."""
    whole = b"".join(frame for _, frame in frames)
    ends = {sum(len(f) for _, f in frames[: i + 1]) for i in range(len(frames))}
    cut = data.draw(st.integers(1, len(whole) - 1).filter(lambda n: n not in ends))
    assert _read(whole[:cut], [4096], piece) in (EOFError, ZstdError)


def test_damage_is_an_error() -> None:
    payload = b"0123456789abcdef\n" * 5000
    good = _frame(payload, 1, True)
    assert _read(good, [-1]) == payload
    wrong_sum = bytearray(good)
    wrong_sum[-1] ^= 1
    assert _read(bytes(wrong_sum), [-1]) is ZstdError
    assert _read(good + b"not zstd", [-1]) is ZstdError
    assert _read(b"\x1f\x8b plainly gzip", [-1]) is ZstdError
    assert _read(b"", [-1]) == b""


def test_closing_the_reader_leaves_the_file_open() -> None:
    raw = io.BytesIO(_frame(b"x\n", 1, True))
    with unzstd(raw) as stream:
        assert stream.read() == b"x\n"
    assert not raw.closed


@pytest.mark.parametrize("size", [0, 1, 7])
def test_small_reads_after_the_end_stay_empty(size: int) -> None:
    stream = unzstd(io.BytesIO(_frame(b"abc", 3, False)))
    assert stream.read() == b"abc"
    assert stream.read(size) == b""


def test_a_file_that_inflates_a_thousandfold_is_read_in_flat_memory() -> None:
    """zstd hands back all that its input inflates to: 220 MB of one id repeated is a few
    kilobytes compressed. Read here, no piece of it is held much larger than a read."""
    line = b"Abcdefghijklmnopqrstuvwxyz0123456789-_ABCDEFGHIJKLMNOPQRSTUVWXYZab\n"
    squeeze = zstandard.ZstdCompressor(level=3).compressobj()
    block = line * (1 << 14)  # about a megabyte
    data = b"".join(squeeze.compress(block) for _ in range(200)) + squeeze.flush()
    assert len(data) < 200 * 1024
    stream = unzstd(io.BytesIO(data))
    tracemalloc.start()
    try:
        total = 0
        while part := stream.read(1 << 20):
            at = total % len(line)  # the content: the line repeated, cut anywhere
            assert part == (line * (len(part) // len(line) + 2))[at : at + len(part)]
            total += len(part)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 200 * len(block)
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB"
