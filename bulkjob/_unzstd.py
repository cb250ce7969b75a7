"""A zstd file's decompressed bytes, read in large pieces, every frame checked to its end.

The spool of an ``ids=`` run is zstd (see :mod:`bulkjob._ids`), and an input file may be
one. ``zstandard``'s own stream reader hands back what it has when a file ends inside a
frame: a spool cut short would lose its last ids without a word. Here each frame goes
through a decompressor of its own, and a file that ends before its frame does is an
``EOFError``, as a gzip member cut short is.

What it reads is what the ``zstd`` tool reads: frames one after another (a checksum,
when the frame has one, checked at its end), and skippable frames anywhere among them
(``pzstd`` starts each frame with one, a seekable file ends with one), passed over.

zstd's decompressor hands back all that its input inflates to, and a few bytes of a
repetitive file inflate to megabytes: so the input goes in slices that grow while what
they give stays small (a few hundred kilobytes) and shrink when it does not, which keeps
memory flat for any list of ids.

A damaged file raises :class:`zstandard.ZstdError` for bad data, a wrong checksum, or
bytes that are no frame; ``EOFError`` for a frame (or skippable frame) cut short.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import zstandard

__all__ = ["MAGIC", "Unzstded", "ZstdError", "is_zstd", "unzstd"]

#: The first bytes of a zstd frame.
MAGIC = b"\x28\xb5\x2f\xfd"
#: A skippable frame: its first byte is 0x50 to 0x5F, then these three; then its size
#: (4 bytes, little-endian) and that many bytes of anything.
_SKIPPABLE = b"\x2a\x4d\x18"
_SKIPPABLE_HEAD = 8
#: Compressed bytes read from the file at a time.
_READ = 1 << 20
#: Compressed bytes inflated at once: the first slice, the most and the least, and the
#: output at which a slice stops growing (above four times that, it shrinks).
_FEED_FIRST, _FEED_MOST, _FEED_LEAST = 1 << 6, 1 << 18, 1 << 6
_OUT_TARGET = 1 << 19
ZstdError = zstandard.ZstdError


class _Inflater(io.RawIOBase):
    """The raw stream under :class:`Unzstded`: each ``readinto`` hands out what the
    frames inflate to, a piece of compressed bytes at a time."""

    def __init__(self, raw: BinaryIO, piece: int) -> None:
        super().__init__()
        self._raw = raw
        self._piece = piece
        self._context = zstandard.ZstdDecompressor()
        #: The frame being inflated; None between frames.
        self._frame: zstandard.ZstdDecompressionObj | None = None
        #: Compressed bytes read, inflated up to ``_pos``.
        self._data = b""
        self._pos = 0
        #: Inflated bytes not handed out yet, from ``_at`` on.
        self._out = b""
        self._at = 0
        self._feed = _FEED_FIRST

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        if self._at >= len(self._out):
            self._out, self._at = self._inflate(), 0
        n = min(len(view), len(self._out) - self._at)
        view[:n] = memoryview(self._out)[self._at : self._at + n]
        self._at += n
        return n

    def _inflate(self) -> bytes:
        """The next inflated bytes (never empty), or b"" at the end of the last frame."""
        while True:
            if self._frame is None and not self._next_frame():
                return b""
            frame = self._frame
            assert frame is not None
            if self._pos >= len(self._data):
                self._data, self._pos = self._raw.read(self._piece), 0
                if not self._data:
                    raise EOFError("zstd file ended before the end of its frame")
            feed = memoryview(self._data)[self._pos : self._pos + self._feed]
            out = frame.decompress(feed)
            if frame.eof:  # what follows the frame (the next one) is not consumed
                self._pos += len(feed) - len(frame.unused_data)
                self._frame = None
            else:
                self._pos += len(feed)
            if len(out) < _OUT_TARGET:
                self._feed = min(self._feed * 2, _FEED_MOST)
            elif len(out) > 4 * _OUT_TARGET:
                self._feed = max(self._feed // 8, _FEED_LEAST)
            if out:
                return out

    def _next_frame(self) -> bool:
        """Start the next frame (True), or find the end of the file (False), passing over
        skippable frames."""
        self._data, self._pos = self._data[self._pos :], 0
        while True:
            if not self._have(len(MAGIC)):
                if self._data:
                    raise ZstdError(f"not a zstd frame ({self._data!r})")
                return False
            if self._data.startswith(MAGIC):
                self._frame = self._context.decompressobj()
                return True
            if not _skippable(self._data):
                raise ZstdError(f"not a zstd frame ({self._data[:4]!r})")
            if not self._have(_SKIPPABLE_HEAD):
                raise EOFError("zstd file ended inside a skippable frame's header")
            skip = _SKIPPABLE_HEAD + int.from_bytes(self._data[4:_SKIPPABLE_HEAD], "little")
            while len(self._data) < skip:
                skip -= len(self._data)
                self._data = self._raw.read(self._piece)
                if not self._data:
                    raise EOFError("zstd file ended inside a skippable frame")
            self._data = self._data[skip:]

    def _have(self, n: int) -> bool:
        """Whether ``n`` bytes are read and not used (reading more as needed)."""
        while len(self._data) < n:
            more = self._raw.read(self._piece)
            if not more:
                return False
            self._data += more
        return True


def _skippable(head: bytes) -> bool:
    return len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == _SKIPPABLE


def is_zstd(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first 4 bytes) is zstd."""
    return head[:4] == MAGIC or _skippable(head)


class Unzstded(io.BufferedReader):
    """A readable binary stream of a zstd file's content (see the module docstring)."""


def unzstd(raw: BinaryIO, piece: int = _READ) -> Unzstded:
    """The decompressed content of the zstd file ``raw``, read from its current position
    ``piece`` compressed bytes at a time. Closing it does not close ``raw``."""
    return Unzstded(_Inflater(raw, piece), buffer_size=piece)
