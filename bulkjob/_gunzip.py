"""A gzip file's decompressed bytes, read in large pieces.

``gzip.GzipFile`` (Python 3.11) reads and inflates 8 KiB at a time: reading back a 10M-id
spool is some 120,000 file reads and zlib calls, each letting go of the GIL and waiting
to get it back from the threads that parse results meanwhile. Here a file read and a zlib
call take a megabyte at a time (zlib checks each member's CRC and length itself).

What it reads is what ``gzip.GzipFile`` reads: members one after another, zero bytes
between and after them as padding. A damaged file raises what gzip and zlib raise:
:class:`gzip.BadGzipFile` for data that is no gzip member, ``EOFError`` for a member cut
short, ``zlib.error`` for a bad deflate block or check.
"""

from __future__ import annotations

import gzip
import io
import zlib
from typing import BinaryIO

__all__ = ["MAGIC", "Gunzipped", "gunzip"]

#: Compressed bytes read from the file at a time.
_READ = 1 << 20
#: The first bytes of a gzip member.
MAGIC = b"\x1f\x8b"
#: zlib's window bits for a gzip member (header and trailer checked by zlib).
_GZIP_WBITS = 31


class _Inflater(io.RawIOBase):
    """The raw stream under :class:`Gunzipped`: each ``readinto`` inflates as much as the
    caller's buffer holds (a large read goes straight here, past the buffer)."""

    def __init__(self, raw: BinaryIO, piece: int) -> None:
        super().__init__()
        self._raw = raw
        self._piece = piece
        #: The member being inflated; None between members.
        self._member: zlib._Decompress | None = None
        #: Compressed bytes read and not inflated yet.
        self._data = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        if not view:
            return 0
        while True:
            if self._member is None and not self._next_member():
                return 0
            member = self._member
            assert member is not None
            if not self._data:
                self._data = self._raw.read(self._piece)
                if not self._data:
                    raise EOFError(
                        "Compressed file ended before the end-of-stream marker was reached"
                    )
            out = member.decompress(self._data, len(view))
            if member.eof:  # what follows the member (unconsumed_tail may repeat it)
                self._data = member.unused_data
                self._member = None
            else:
                self._data = member.unconsumed_tail
            if out:
                view[: len(out)] = out
                return len(out)

    def _next_member(self) -> bool:
        """Skip zero padding; start the next member (True) or find the end (False)."""
        while True:
            self._data = self._data.lstrip(b"\0")
            if len(self._data) >= len(MAGIC):
                break
            more = self._raw.read(self._piece)
            if not more:
                if self._data:
                    raise gzip.BadGzipFile(f"Not a gzipped file ({self._data!r})")
                return False
            self._data += more
        if not self._data.startswith(MAGIC):
            raise gzip.BadGzipFile(f"Not a gzipped file ({self._data[:2]!r})")
        self._member = zlib.decompressobj(_GZIP_WBITS)
        return True


class Gunzipped(io.BufferedReader):
    """A readable binary stream of a gzip file's content (see the module docstring)."""


def gunzip(raw: BinaryIO, piece: int = _READ) -> Gunzipped:
    """The decompressed content of the gzip file ``raw``, read from its current position
    ``piece`` bytes at a time (compressed and not). Closing it does not close ``raw``."""
    return Gunzipped(_Inflater(raw, piece), buffer_size=piece)
