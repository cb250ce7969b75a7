"""An input's content, decompressed when its first bytes say it is gzip or zstd."""

from __future__ import annotations

from typing import BinaryIO

from ._gunzip import MAGIC as GZIP_MAGIC
from ._gunzip import Gunzipped, gunzip
from ._unzstd import MAGIC as ZSTD_MAGIC
from ._unzstd import Unzstded, is_zstd, unzstd

__all__ = ["compression", "decompressed"]


def decompressed(raw: BinaryIO) -> Gunzipped | Unzstded | None:
    """The content of ``raw`` (at its start) decompressed, or None for a file of neither
    kind; ``raw`` is left at its start either way. Reading the magic may raise OSError."""
    magic = raw.read(len(ZSTD_MAGIC))
    raw.seek(0)
    if magic.startswith(GZIP_MAGIC):
        return gunzip(raw)
    if is_zstd(magic):
        return unzstd(raw)
    return None


def compression(stream: object) -> str | None:
    """ "gzip" or "zstd" for a stream :func:`decompressed` made, else None."""
    if isinstance(stream, Gunzipped):
        return "gzip"
    if isinstance(stream, Unzstded):
        return "zstd"
    return None
