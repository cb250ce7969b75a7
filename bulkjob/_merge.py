"""The merge: a run's results files as one CSV, by copying bytes.

Every results file of a run is a header and rows, and the headers are the same. Merging
them needs no parsing of the rows: the first file is copied whole, every later file from
just past its header. Only headers are parsed (with :mod:`csv`, so a header holding a
quoted newline is still one record), and every header is checked before a byte is
written, so a mismatch leaves nothing half-written, not even on a pipe.

What the byte copy has to take care of, that a parsed merge did by rewriting every row:

- a UTF-8 byte order mark opens a file: it is not part of the header when headers are
  compared, and only the first file's is copied (a later one would land mid-output);
- a file that does not end with a line end: its own line end is written before the next
  file's bytes, so that two rows never run together;
- line ends themselves are copied as they are; files with different line ends give an
  output with both (a parsed merge rewrote them all; nothing here rewrites a row).

Memory is bounded by one block. ``os.sendfile`` and ``os.copy_file_range`` were measured
no faster than this loop (Linux 6, ext4, files in the page cache: all near 4 GB/s), so
the portable loop is the only one.
"""

from __future__ import annotations

import codecs
import csv
import io
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ._errors import ConfigError, ProtocolError
from ._logging import get_logger

__all__ = ["check_closed", "merge_files", "remove_parts"]

log = get_logger()
_BOM = codecs.BOM_UTF8
#: The copy's block: large enough that the loop's overhead vanishes next to the copy.
_BLOCK = 1 << 20
#: A header longer than this is not a header: the file is not a results CSV.
_HEADER_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class _Part:
    """One file's share of the merge: its bytes from ``start`` to its end."""

    path: Path
    start: int
    #: The header's line end (``b"\r\n"``, ``b"\n"``, or ``b""`` when the file ends there).
    line_end: bytes


def merge_files(files: Iterable[Path], dest: Path | BinaryIO) -> int:
    """Copy ``files`` into ``dest``, the first header only; returns the bytes written.

    Empty files are skipped. A header that differs from the first file's is a
    :class:`ProtocolError` naming the file, raised before anything is written. A path
    is written through a part file of its own beside it, renamed once complete; a
    buffered binary stream (``sys.stdout.buffer``) is written to, flushed, and left open.
    """
    files = list(files)
    if not isinstance(dest, Path):
        parts = _plan(files)
        written = _copy(parts, dest)
        dest.flush()
        return written
    if dest.resolve() in {path.resolve() for path in files}:
        raise ConfigError(f"--merge {dest}: that is one of the results files; choose another")
    parts = _plan(files)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    part = Path(name)
    try:
        with open(fd, "wb") as out:
            written = _copy(parts, out)
        part.replace(dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return written


def remove_parts(files: Iterable[Path]) -> tuple[Path, ...]:
    """Delete merged results files; the ones removed (a failure is logged, not raised).

    Their paths stay in the journal: ``results`` finds a recorded file missing and
    downloads it again, so the journal never needs to forget them.
    """
    removed: list[Path] = []
    for path in files:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # the merge is complete: a part left over is no failure
            log.warning("results.part_kept", path=str(path), error=exc.strerror)
        else:
            removed.append(path)
    return tuple(removed)


def _plan(files: Iterable[Path]) -> list[_Part]:
    """Every non-empty file with where its copy starts; every header checked."""
    parts: list[_Part] = []
    header: list[str] | None = None
    for path in files:
        with path.open("rb") as src:
            found = read_header(src, path)
        if found is None:
            continue  # an empty file: no header, no rows
        fields, end, line_end = found
        if header is None:
            header = fields
            parts.append(_Part(path, 0, line_end))  # its byte order mark and header too
            continue
        if fields != header:
            raise ProtocolError(
                f"{path.name}: its columns differ from the first results file's "
                f"({parts[0].path.name})",
                server_message=",".join(fields)[:200],
            )
        if line_end and parts[0].line_end and line_end != parts[0].line_end:
            # Kept as they are: rewriting them would mean parsing every row again.
            log.info("results.line_ends_differ", path=str(path), first=str(parts[0].path))
        parts.append(_Part(path, end, line_end))
    return parts


def read_header(src: BinaryIO, path: Path) -> tuple[list[str], int, bytes] | None:
    """The first CSV record of ``src`` (read from its start), the offset just past it
    (byte order mark included) and its line end; ``None`` for an empty file.

    The record is parsed by :mod:`csv` itself, fed one line at a time: it asks for
    exactly the lines its first record spans, so a quoted newline in the header is
    followed just as a parsed merge follows it.
    """
    start = len(_BOM) if src.read(len(_BOM)) == _BOM else 0
    src.seek(start)
    taken: list[bytes] = []

    def lines() -> Iterator[str]:
        used = 0
        while True:
            if used >= _HEADER_LIMIT:  # asked for more: the header goes on past the limit
                raise ProtocolError(f"{path.name}: no header within {_HEADER_LIMIT:,} bytes")
            line = src.readline(_HEADER_LIMIT - used)
            if not line:
                return
            used += len(line)
            taken.append(line)
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError(f"{path.name}: its header is not UTF-8: {exc}") from None
            yield text

    try:
        record = next(csv.reader(lines()), None)
    except csv.Error as exc:
        raise ProtocolError(f"{path.name}: cannot read its header: {exc}") from None
    if record is None:
        return None
    last = taken[-1]
    line_end = b"\r\n" if last.endswith(b"\r\n") else b"\n" if last.endswith(b"\n") else b""
    return record, start + sum(len(line) for line in taken), line_end


def _copy(parts: Iterable[_Part], out: BinaryIO) -> int:
    """Each part's bytes after the other, a line end between where one is missing."""
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    written = 0
    owed = b""  # the line end the output lacks, written only if more bytes follow
    for part in parts:
        with part.path.open("rb", buffering=0) as src:
            src.seek(part.start)
            last = 0  # the length of the last block read
            while n := src.readinto(buf):
                if owed:
                    out.write(owed)
                    written += len(owed)
                    owed = b""
                out.write(view[:n])
                written += n
                last = n
        if last:
            owed = b"" if buf[last - 1] == ord("\n") else part.line_end or b"\n"
    return written


def check_closed(path: Path) -> None:
    """Raise ProtocolError when ``path``'s last row ends inside a quoted field.

    Such a file (cut short) would swallow the next file's rows in a byte merge, so each
    results file is checked as it is downloaded, where the network is the slow part: the
    merge itself then stays a byte copy. An odd count of quote bytes is the cheap sign; a
    bare quote in an unquoted field (``5"10``) gives one too, so only then are the rows
    parsed, strictly, to tell.
    """
    quotes = 0
    with path.open("rb", buffering=0) as src:
        while block := src.read(_BLOCK):
            quotes += block.count(b'"')
    if quotes % 2 == 0:
        return
    with path.open("rb") as src:
        text = io.TextIOWrapper(src, encoding="utf-8", errors="replace", newline="")
        try:
            for _ in csv.reader(text, strict=True):
                pass
        except csv.Error as exc:
            if "unexpected end of data" not in str(exc):
                return  # malformed otherwise, but closed: a parsed merge reads it the same
            raise ProtocolError(
                f"{path.name}: its last row ends inside a quoted field (the file is cut "
                "short); merged, it would swallow the rows after it"
            ) from None
