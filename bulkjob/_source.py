"""The input source: stream ids from files (or standard input) in two passes.

``check()`` is the pre-pass. It runs before anything is submitted and works on 1 MiB
blocks at C speed (``bytes.count``, ``bytes.find``, an incremental UTF-8 decoder), so a
binary file, a bad byte on line 7,000,000 or a missing CSV column fails the run before
a single credit is spent. With ``strict=True`` it also validates every id. A spool of
``ids=`` just written skips the scan: its writer saw the same (``scanned``).

Iterating the source is the main pass. Its per-id path is kept lean on purpose: a
whole block is decoded and split in C; a block whose every line is a valid id (the
usual case, without ``dedupe``) is stripped and matched by C loops (``map``) and handed
on whole as an :class:`IdRun`, which the chunker cuts by slicing: no Python code and no
tuple per id (:meth:`IdSource.blocks`; iterating gives records). Any other block goes line
by line: one ``strip``, one precompiled ``fullmatch`` and one plain ``(id, path,
line)`` tuple per line, so blanks, rejects and their line numbers come out exactly as
before. Counters are kept in locals and flushed to :class:`SourceStats` once per block.

Every non-blank value is accounted for: yielded, counted invalid (with the first few
kept as samples), or counted duplicate (only with ``dedupe``).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import itertools
import os
import re
import shutil
import sys
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from hashlib import blake2b
from types import TracebackType
from typing import BinaryIO

from ._decompress import compression, decompressed
from ._errors import InputError
from ._ids import MARK, SpoolScan, decode_marker
from ._records import IDS, IdRecord, IdRun, InputSummary, InvalidSample, Origin, SourceStats
from ._settings import DEFAULT_ID_ALPHABET, DEFAULT_ID_LENGTH, DEFAULT_ID_PATTERN
from ._unzstd import ZstdError

__all__ = [
    "IdBlock",
    "IdRecord",
    "IdRun",
    "IdSource",
    "InputSummary",
    "InvalidSample",
    "Origin",
    "SourceStats",
    "records_of",
]

#: Read size of both passes: large enough that per-block overhead vanishes, small
#: enough that memory stays constant whatever the file size.
BLOCK_SIZE = 1 << 20
STDIN = "<stdin>"
SAMPLE_CHARS = 80
NO_MATCH = "does not match id_pattern"

_TSV_SUFFIXES = (".tsv", ".tab", ".tsv.gz", ".tab.gz", ".tsv.zst", ".tab.zst")
# What reading an input raises, compressed or not: BadGzipFile is an OSError, a truncated
# stream is an EOFError, a bad deflate block is a zlib.error, bad zstd data a ZstdError.
_READ_ERRORS = (OSError, EOFError, zlib.error, ZstdError)


def _shorten(value: str) -> str:
    return value if len(value) <= SAMPLE_CHARS else value[:SAMPLE_CHARS] + "…"


def _not_utf8(exc: UnicodeDecodeError) -> str:
    if exc.start < len(exc.object):
        return f"not UTF-8 text: invalid byte 0x{exc.object[exc.start]:02x}"
    return "not UTF-8 text: truncated character at end of file"  # pragma: no cover


class IdSource:
    """Ids from files, CSV/TSV columns or standard input, validated and optionally deduped.

    Use as a context manager (the standard input spool file is removed on exit)::

        with IdSource(["ids.txt.gz"]) as source:
            summary = source.check()      # raises InputError before any submit
            for id_, path, line in source:
                ...

    ``dedupe`` keeps one 16-byte BLAKE2b digest per distinct id in a set instead of the
    id itself: measured with tracemalloc on 200,000 distinct 64-character ids, the set
    costs about 91 bytes per distinct id (a 49-byte bytes object plus its share of the
    set's table; 83 at one million), against about 155 for a set of the 64-character
    strings. Ten million distinct ids therefore need roughly 0.85 GB.
    """

    __slots__ = (
        "_all_ids",
        "_block_size",
        "_column",
        "_entries",
        "_fullmatch",
        "_ids",
        "_max_samples",
        "_pattern",
        "_scanned",
        "_seen",
        "_spool",
        "_stdin",
        "_strict",
        "_summary",
        "_text_ids",
        "dedupe",
        "stats",
    )

    def __init__(
        self,
        inputs: Sequence[str],
        *,
        column: str | None = None,
        id_pattern: str = DEFAULT_ID_PATTERN,
        dedupe: bool = False,
        strict: bool = False,
        stdin: BinaryIO | None = None,
        max_samples: int = 10,
        block_size: int = BLOCK_SIZE,
        spooled_ids: bool = False,
        scanned: SpoolScan | None = None,
    ) -> None:
        if isinstance(inputs, str):
            raise TypeError("inputs: expected a sequence of paths, not one string")
        if block_size < 1:
            raise ValueError(f"block_size: must be at least 1, got {block_size}")
        if spooled_ids and len(inputs) != 1:
            raise ValueError("spooled_ids: expected the one spool file of an iterable")
        self._pattern = id_pattern
        self._ids = spooled_ids
        self._fullmatch = _matcher(id_pattern, spooled_ids)
        self._all_ids = _all_matcher(id_pattern, self._fullmatch)
        self._text_ids = _text_matcher(id_pattern)
        # An iterable's items are values, not CSV rows: ``column`` does not apply.
        self._column = None if spooled_ids else column
        self._strict = strict
        self._stdin = stdin
        self._max_samples = max_samples
        self._block_size = block_size
        self.dedupe = dedupe
        # (display path, path on disk); the disk path of "-" is known once spooled.
        self._entries: list[tuple[str, str]] = [
            (STDIN, "-") if name == "-" else (name, name) for name in (inputs or ["-"])
        ]
        if spooled_ids:
            self._entries = [(IDS, inputs[0])]
        # The writer of a spool just written knows what the pre-pass's scan would find.
        self._scanned = scanned if spooled_ids else None
        self._spool: str | None = None
        self._summary: InputSummary | None = None
        self._seen: set[bytes] | None = None
        self.stats = SourceStats()

    def __repr__(self) -> str:
        files = ", ".join(display for display, _ in self._entries)
        s = self.stats
        return (
            f"<IdSource [{files}] checked={self._summary is not None} read={s.ids_read} "
            f"invalid={s.ids_invalid} duplicate={s.ids_duplicate} blank={s.blank}>"
        )

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> IdSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the standard input spool file, if any. Safe to call twice."""
        if self._spool is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._spool)
            self._spool = None
            self._summary = None

    def relocate(self, spool: str) -> None:
        """Read the iterable's spool from ``spool`` from now on (it was moved, or the
        journal's own copy of the same ids replaces it)."""
        assert self._ids, "only the spool of ids= moves"
        self._entries = [(IDS, spool)]

    # -- pre-pass ----------------------------------------------------------------------

    def check(self) -> InputSummary:
        """Scan every input once, cheaply; raise :class:`InputError` on the first problem."""
        if self._summary is not None:
            return self._summary
        if any(disk == "-" for _, disk in self._entries):
            spool = self._spool_stdin()
            self._entries = [(d, spool if disk == "-" else disk) for d, disk in self._entries]
        lines = size = 0
        content = False
        if self._scanned is not None:  # no need to read it back: nothing else wrote it
            lines, size, content = self._scanned.lines, self._scanned.bytes, self._scanned.content
        else:
            for entry in self._entries:
                n, b, c = self._scan(entry)
                lines += n
                size += b
                content = content or c
        files = tuple(display for display, _ in self._entries)
        if not content:
            raise InputError(", ".join(files), 0, "no ids (empty file / only blank lines)")
        if self._column is not None:
            for entry in self._entries:
                with self._open(entry) as stream, _text(stream) as text:
                    self._csv_reader(text, entry[0])
        if self._strict or self._column is not None:
            # Strict mode validates every id up front; CSV is parsed in full up front too,
            # so that malformed quoting (which swallows the rest of a file) is an input
            # error before anything is sent, not a surprise halfway through.
            scratch = SourceStats()
            for entry in self._entries:
                deque(records_of(self._file_blocks(entry, scratch, None, strict=self._strict)), 0)
        self._summary = InputSummary(files=files, lines=lines, bytes=size)
        return self._summary

    def _spool_stdin(self) -> str:
        # The main pass needs a second read of standard input: copy it to a temporary
        # file in blocks (constant memory) rather than keeping it.
        source = self._stdin if self._stdin is not None else sys.stdin.buffer
        fd, name = tempfile.mkstemp(prefix="bulkjob-stdin-", suffix=".spool")
        self._spool = name
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out, self._block_size)
        except OSError as exc:
            self.close()
            raise InputError(STDIN, 0, f"cannot read standard input: {exc}") from exc
        return name

    def _scan(self, entry: tuple[str, str]) -> tuple[int, int, bool]:
        """Lines, decompressed bytes, and whether any non-whitespace byte was seen."""
        display = entry[0]
        lines = size = 0
        content = False
        head = True
        last = b"\n"
        decode = codecs.getincrementaldecoder("utf-8")().decode
        with self._open(entry) as stream:
            packed = compression(stream)
            while True:
                block = _read(stream, self._block_size, display, lines, packed)
                if not block:
                    break
                where = block.find(b"\x00")
                if where >= 0:
                    line = lines + block.count(b"\n", 0, where) + 1
                    raise InputError(
                        display, line, "binary data (NUL byte), not a text list of ids"
                    )
                try:
                    text = decode(block)
                except UnicodeDecodeError as exc:
                    # exc.object is the decoder's pending bytes (part of one character,
                    # never a newline) plus this block, so counting in it is exact.
                    line = lines + exc.object.count(b"\n", 0, exc.start) + 1
                    raise InputError(display, line, _not_utf8(exc)) from None
                if not content and text:
                    if head:
                        head = False
                        text = text.removeprefix("\ufeff")
                    content = bool(text.strip())
                lines += block.count(b"\n")
                size += len(block)
                last = block[-1:]
            try:
                decode(b"", True)
            except UnicodeDecodeError as exc:
                raise InputError(display, lines + 1, _not_utf8(exc)) from None
        if last != b"\n":
            lines += 1
        return lines, size, content

    # -- main pass ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[IdRecord]:
        """The main pass: valid ids in input order, each with its path and line.

        Each call is a fresh pass: ``stats`` and the dedupe memory start over.
        """
        return records_of(self.blocks())

    def blocks(self) -> Generator[IdBlock, None, None]:
        """The main pass a block at a time, to be read in order, each to its end before the
        next is asked for: an :class:`IdRun` (set its ``taken``), or an iterable of records.

        Close it when stopping early: the block being read then counts, in ``stats``,
        exactly the records handed over from it, as :meth:`__iter__` does.
        """
        self.check()
        self.stats = stats = SourceStats()
        seen: set[bytes] | None = set() if self.dedupe else None
        self._seen = seen
        for entry in self._entries:
            yield from self._file_blocks(entry, stats, seen, strict=False)

    def _file_blocks(
        self, entry: tuple[str, str], stats: SourceStats, seen: set[bytes] | None, *, strict: bool
    ) -> Generator[IdBlock, None, None]:
        with self._open(entry) as stream:
            if self._column is None:
                yield from self._plain_blocks(stream, entry[0], stats, seen, strict)
            else:
                records = self._csv_records(stream, entry[0], stats, seen, strict)
                try:
                    yield records
                finally:
                    records.close()

    def _plain_blocks(
        self,
        stream: BinaryIO,
        display: str,
        stats: SourceStats,
        seen: set[bytes] | None,
        strict: bool,
    ) -> Generator[IdBlock, None, None]:
        all_ids, text_ids = self._all_ids, self._text_ids
        decode = codecs.getincrementaldecoder("utf-8")().decode
        packed = compression(stream)
        size = self._block_size
        done = 0  # physical lines completed before the current block
        tail = ""  # the unfinished last line of the previous block
        head = True
        final = False
        while not final:
            block = _read(stream, size, display, done, packed)
            final = not block
            try:
                text = decode(block, final)
            except UnicodeDecodeError as exc:
                line = done + exc.object.count(b"\n", 0, exc.start) + 1
                raise InputError(display, line, _not_utf8(exc)) from None
            if head and text:
                # Checked on text, not bytes: a tiny block may split the BOM's 3 bytes.
                head = False
                if text[0] == "\ufeff":
                    text = text[1:]
            if final:
                read, tail = tail, ""
                lines = [read] if read else []
            else:
                read = tail + text if tail else text
                lines = read.split("\n")
                tail = lines.pop()
                read = read[: len(read) - len(tail) - 1]  # the block's whole lines, joined
            if not lines:
                continue
            if seen is None:
                values: list[str] | None = lines
                if text_ids is None or not text_ids(read, len(lines)):
                    # Not ids as they stand (nothing then to strip): stripped, checked.
                    values = list(map(str.strip, lines))
                    if "" in values or not all_ids(values):
                        values = None
                if values is not None:
                    # The usual block, every line an id: checked by C loops and handed on
                    # whole, no Python code per id. Counted by where the reader got to.
                    run = IdRun(values, display, done + 1)
                    try:
                        yield run
                    finally:
                        stats.ids_read += run.taken
                    done += len(values)
                    continue
            # Otherwise line by line: blanks, rejects (with their line) and dedupe.
            records = self._line_records(lines, done, display, stats, seen, strict)
            try:
                yield records
            finally:
                records.close()
            done += len(lines)

    def _line_records(
        self,
        lines: list[str],
        done: int,
        display: str,
        stats: SourceStats,
        seen: set[bytes] | None,
        strict: bool,
    ) -> Generator[IdRecord, None, None]:
        """One block's lines (the first is line ``done + 1``), one at a time."""
        # The hot loop of a block that is not all ids: everything it touches is a local.
        fullmatch = self._fullmatch
        lineno = done
        blank = 0
        try:
            for lineno, raw in enumerate(lines, done + 1):
                value = raw.strip()
                if not value:
                    blank += 1
                elif fullmatch(value) is None:
                    self._reject(stats, display, lineno, value, NO_MATCH, strict)
                elif seen is None:
                    yield value, display, lineno
                else:
                    key = blake2b(value.encode(), digest_size=16).digest()
                    if key in seen:
                        stats.ids_duplicate += 1
                    else:
                        seen.add(key)
                        yield value, display, lineno
        finally:
            # Also runs when the reader stops mid-block: count what it saw.
            stats.ids_read += lineno - done - blank
            stats.blank += blank

    def _csv_reader(
        self, text: io.TextIOWrapper, display: str
    ) -> tuple[Iterator[list[str]], Callable[[], int], int] | None:
        """Read the header; return (rows, line_num getter, column index), None if empty."""
        column = self._column
        assert column is not None
        first = text.readline()
        if not first.strip():
            return None  # an empty file has no header and no ids
        tab = display.lower().endswith(_TSV_SUFFIXES) or "\t" in first
        # strict: an unterminated quote is an error, not the rest of the file as one cell.
        reader = csv.reader(
            itertools.chain((first,), text), delimiter="\t" if tab else ",", strict=True
        )
        try:
            header = next(reader)
        except csv.Error as exc:
            raise InputError(display, 1, f"malformed header: {exc}") from None
        names = [name.strip().lstrip("\ufeff").strip() for name in header]
        if column not in names:
            raise InputError(
                display, 1, f"no column {column!r} in header; columns are: {', '.join(names)}"
            )
        return reader, lambda: reader.line_num, names.index(column)

    def _csv_records(
        self,
        stream: BinaryIO,
        display: str,
        stats: SourceStats,
        seen: set[bytes] | None,
        strict: bool,
    ) -> Generator[IdRecord, None, None]:
        fullmatch = self._fullmatch
        missing = f"row has no value for column {self._column!r}"
        line = 1
        try:
            with _text(stream) as text:
                opened = self._csv_reader(text, display)
                if opened is None:
                    return
                rows, line_num, index = opened
                end = line_num()
                while True:
                    line = end + 1  # the record starts on the line after the previous one ended
                    row = next(rows, None)  # a malformed record raises here, at its start
                    if row is None:
                        break
                    end = line_num()
                    if index < len(row):
                        value = row[index].strip()
                        if not value:
                            stats.blank += 1
                            continue
                    elif not any(cell.strip() for cell in row):
                        stats.blank += 1
                        continue
                    else:
                        stats.ids_read += 1
                        self._reject(stats, display, line, "", missing, strict)
                        continue
                    stats.ids_read += 1
                    if fullmatch(value) is None:
                        self._reject(stats, display, line, value, NO_MATCH, strict)
                        continue
                    if seen is not None:
                        key = blake2b(value.encode(), digest_size=16).digest()
                        if key in seen:
                            stats.ids_duplicate += 1
                            continue
                        seen.add(key)
                    yield value, display, line
        except UnicodeDecodeError as exc:
            raise InputError(display, line, _not_utf8(exc)) from None
        except csv.Error as exc:
            raise InputError(display, line, f"malformed CSV: {exc}") from None
        except _READ_ERRORS as exc:
            raise InputError(display, line, _unread(compression(stream), exc)) from None

    def _reject(
        self, stats: SourceStats, display: str, line: int, value: str, reason: str, strict: bool
    ) -> None:
        if self._ids and value[:1] == MARK:
            reason, value = decode_marker(value)  # an item that was no id string at all
            if strict:
                raise InputError(display, line, f"{reason}: {value}")
        if strict:
            if reason == NO_MATCH:
                problem = f"invalid id {_shorten(value)!r}: {reason} {self._pattern}"
            else:
                problem = reason
            raise InputError(display, line, problem)
        stats.ids_invalid += 1
        if len(stats.invalid_samples) < self._max_samples:
            sample = InvalidSample(Origin(display, line), _shorten(value), reason)
            stats.invalid_samples.append(sample)

    # -- opening -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _open(self, entry: tuple[str, str]) -> Iterator[BinaryIO]:
        """The binary stream of one input, decompressed when it starts with the gzip or
        zstd magic."""
        display, disk = entry
        try:
            raw = open(disk, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            raise InputError(display, 0, "no such file") from None
        except IsADirectoryError:
            raise InputError(display, 0, "is a directory, not a file") from None
        except PermissionError:
            raise InputError(display, 0, "permission denied (cannot read the file)") from None
        except OSError as exc:
            raise InputError(display, 0, f"cannot open: {exc.strerror or exc}") from None
        with raw:
            try:
                content = decompressed(raw)
            except IsADirectoryError:
                raise InputError(display, 0, "is a directory, not a file") from None
            except OSError as exc:
                raise InputError(display, 0, f"cannot read: {exc.strerror or exc}") from None
            if content is None:
                yield raw
            else:
                with content:
                    yield content


#: What :meth:`IdSource.blocks` hands on.
IdBlock = IdRun | Iterable[IdRecord]


def records_of(blocks: Generator[IdBlock, None, None]) -> Generator[IdRecord, None, None]:
    """The records of ``blocks``, one at a time (closing it closes ``blocks``)."""
    try:
        for block in blocks:
            if isinstance(block, IdRun):
                at = itertools.count(block.line)  # drawn once per record handed on
                try:
                    yield from zip(block.ids, itertools.repeat(block.path), at)
                finally:
                    block.taken = next(at) - block.line
            else:
                yield from block
    finally:
        blocks.close()  # counts what was handed on of a block left part-read


def _matcher(pattern: str, spooled_ids: bool) -> Callable[[str], re.Match[str] | None]:
    """``fullmatch`` of ``pattern``; for an iterable's spool, one that never matches a marker
    line, whatever the pattern (a lookahead in the same C call: nothing added per id)."""
    compiled = re.compile(pattern)
    if not spooled_ids:
        return compiled.fullmatch
    try:
        guarded = re.compile(f"(?!{MARK})(?:{pattern})", compiled.flags)
    except re.error:  # e.g. global flags inside: check the marker in Python instead
        fullmatch = compiled.fullmatch
        return lambda value: None if value[:1] == MARK else fullmatch(value)
    return guarded.fullmatch


def _all_matcher(
    pattern: str, fullmatch: Callable[[str], re.Match[str] | None]
) -> Callable[[list[str]], bool]:
    """Whether every value of a block is an id. The API's own id form (the default
    pattern: a fixed length over an ASCII alphabet) is checked on the block's bytes as a
    whole, by a few C passes, rather than by one regex call per id; any other pattern by
    ``fullmatch`` per value. A marker line (``MARK`` is no id character) fails both."""
    text_ids = _text_matcher(pattern)
    if text_ids is None:
        return lambda values: all(map(fullmatch, values))
    return lambda values: text_ids("\n".join(values), len(values))


def _text_matcher(pattern: str) -> Callable[[str, int], bool] | None:
    """For the API's own id form (the default pattern), whether a text of ``n`` lines
    joined by ``\n`` is ``n`` ids exactly as they stand: nothing around them to strip (the
    alphabet holds no whitespace), no blank line, no marker. None for any other pattern."""
    if pattern != DEFAULT_ID_PATTERN:
        return None
    length, alphabet = DEFAULT_ID_LENGTH, DEFAULT_ID_ALPHABET.encode()

    def text_ids(text: str, n: int) -> bool:
        # Every value ``length`` long: the separators sit exactly every length + 1.
        if len(text) != (length + 1) * n - 1 or text[length :: length + 1] != "\n" * (n - 1):
            return False
        try:
            data = text.encode("ascii")
        except UnicodeEncodeError:
            return False
        return not data.translate(None, alphabet + b"\n")

    return text_ids


def _read(stream: BinaryIO, size: int, display: str, done: int, packed: str | None) -> bytes:
    """One block, with read errors turned into InputError at the line reached so far
    (``packed``: the input's compression, which names the damage)."""
    try:
        return stream.read(size)
    except _READ_ERRORS as exc:
        raise InputError(display, done + 1, _unread(packed, exc)) from None


def _unread(packed: str | None, exc: BaseException) -> str:
    """What a failed read of an input says: damaged data, named by its compression, or a
    plain read error."""
    return f"corrupt {packed} data: {exc}" if packed else f"read error: {exc}"


def _text(stream: BinaryIO) -> io.TextIOWrapper:
    # utf-8-sig drops a BOM at the start; newline="" leaves line endings to the csv module.
    # Closing this wrapper closes ``stream`` too, which the opener then closes again (a no-op).
    return io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
