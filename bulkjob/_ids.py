"""Ids from a Python iterable (``ids=``): spooled to a zstd file as they are read.

The run reads its input again (the main pass; a resume reads it once more), but a
generator over a database cursor can be read once. So the iterable is
written, as it is read, to a compressed spool file, and the run reads that as an input
named ``ids`` (:data:`~bulkjob._records.IDS`): line ``n`` holds item ``ids[n - 1]``, so
rejects, chunk ranges and errors all say ``ids[i]``. Memory stays flat whatever the
count: items pass through in batches of :data:`BATCH`, nothing keeps the list.

The writer also notes what the source's pre-pass would find (lines, bytes, whether any
line is more than whitespace: :class:`SpoolScan`), so a spool just written is not read
back for it.

One item is one line, always, so that line numbers stay indexes. An item that cannot be
a line of ids (not a ``str``, or holding a line break, a NUL, or a lone surrogate) is
written as a *marker line*: :data:`MARK`, the reason, :data:`MARK`, a short repr. The
source recognises markers (in spool mode only) and rejects them with that reason, as it
rejects a line that does not match ``id_pattern``.

With a journal, the spool is written beside it under a temporary name, fsynced, and
moved to ``<journal>.ids.zst`` before the journal records the run (:meth:`IdSpool.adopt`):
``resume`` then reads the spool and never needs the caller's iterator. Its digest
(BLAKE2b of the uncompressed lines) is recorded too, so that the same submit called
again with the same ids resumes, and with other ids is refused. The spool holds ids
only, never a secret.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import io
import itertools
import os
import reprlib
import tempfile
import threading
from collections.abc import AsyncIterable, Iterable, Iterator
from dataclasses import dataclass
from hashlib import blake2b
from pathlib import Path
from typing import BinaryIO

import zstandard

from ._decompress import decompressed
from ._errors import ConfigError

__all__ = [
    "BATCH",
    "COMPRESS_LEVEL",
    "MARK",
    "SPOOL_SUFFIX",
    "IdSpool",
    "SpoolScan",
    "spool_async",
    "spool_path",
    "spool_sync",
]

#: Items per write: large enough that the per-batch work (one join, one encode, one
#: compress call) dominates nothing, small enough to keep memory flat.
BATCH = 8192
#: zstd level 1: the spool is written once and read two or three times, and sits on the
#: run's path before the first send and again as it is read back. Random ids (base64 of
#: random bytes, the usual kind) shrink to ~76% either way, the entropy of their alphabet;
#: sequential or padded ids several-fold. On 1M such ids (65 MB) zstd took 0.10 s to write
#: and 0.12 s to read, gzip's fastest (level 1, run-length) 0.50 s and 0.28 s.
COMPRESS_LEVEL = 1
#: Batches packed ahead of the one being written (see _spool).
_AHEAD = 1
#: Starts (and splits) a marker line. Not whitespace (``str.strip`` would eat it), not
#: NUL (the pre-pass refuses NUL as binary data), and never a character of a real id.
MARK = "\x01"
#: ``<journal>`` + this: where a journaled run keeps its ids.
SPOOL_SUFFIX = ".ids.zst"
_BAD = ("\n", "\x00", MARK)
_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxother = 60


def spool_path(journal: str | os.PathLike[str]) -> Path:
    """Where the run recorded in ``journal`` keeps its ids."""
    path = Path(journal)
    return path.with_name(path.name + SPOOL_SUFFIX)


@dataclass(frozen=True, slots=True)
class SpoolScan:
    """What the writer saw of the text it wrote: the pre-pass's findings, for free."""

    lines: int
    bytes: int
    content: bool


@dataclass(slots=True)
class IdSpool:
    """A spooled id stream: the file, and what proves it the same stream later.

    Iterating it yields its lines, so it is itself an iterable of ids: passed as ``ids=``,
    it is used as it is, not spooled again.
    """

    path: Path
    #: BLAKE2b (32 bytes, hex) of the uncompressed spool: the stream's identity.
    digest: str
    items: int
    #: Deleted by :meth:`discard` (a temporary file), or kept (adopted by a journal).
    temporary: bool = True
    #: Uncompressed bytes, and whether any line holds more than whitespace: what the
    #: source's pre-pass would find, known by the writer (every line ends in a newline,
    #: so lines == items; no NUL and valid UTF-8 by construction). None: not known.
    scan: SpoolScan | None = None

    def __iter__(self) -> Iterator[str]:
        with open(self.path, "rb") as raw:
            data = decompressed(raw)  # zstd; gzip in journals written before zstd spools
            if data is None:
                if not raw.read(1):
                    return  # no item: no frame was written
                raise ConfigError(f"{self.path}: not a spool of ids (neither zstd nor gzip)")
            with io.TextIOWrapper(data, encoding="utf-8", newline="\n") as lines:
                for line in lines:
                    yield line.removesuffix("\n")

    def record(self) -> dict[str, object]:
        """What the journal keeps of it (paths and counts, never an id)."""
        return {"path": str(self.path), "digest": self.digest, "items": self.items}

    def discard(self) -> None:
        """Delete a temporary spool; safe to call twice, a no-op once adopted."""
        if self.temporary:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def adopt(self, final: Path) -> None:
        """Move the spool to ``final`` for good (atomically, durably): a journal keeps it."""
        os.replace(self.path, final)
        _fsync_dir(final.parent)
        self.path = final
        self.temporary = False


@dataclass(frozen=True, slots=True)
class _Member:
    """One batch made ready to write: its text's UTF-8, that compressed as a zstd frame
    of its own, and whether the text holds more than whitespace (as the first batch of
    the file, where a BOM is not content, and as any other)."""

    items: int
    data: bytes
    packed: bytes
    content_first: bool
    content: bool


def _pack(batch: list[object]) -> _Member:
    """Encode and compress one batch, touching no shared state: batches are packed in a
    thread of their own while the next batch is read and the one before is written."""
    text, data = _encode(batch)
    # With its checksum: a damaged spool is an error when read back, never other ids.
    packed = zstandard.ZstdCompressor(COMPRESS_LEVEL, write_checksum=True).compress(data)
    content = bool(text.strip())
    first = content if text[:1] != "\ufeff" else bool(text[1:].strip())
    return _Member(len(batch), data, packed, first, content)


class _Writer:
    """The spool file being written, a zstd frame per batch, hashing what goes in.

    A zstd file may hold several frames: every zstd reader reads them as one stream.
    Frames are cut at fixed batches of items, so the same ids give the same bytes.
    """

    __slots__ = ("_content", "_hash", "_raw", "_size", "index", "path")

    def __init__(self, directory: Path | None, prefix: str) -> None:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
        self.path = Path(name)
        self._raw: BinaryIO = os.fdopen(fd, "wb")
        self._hash = blake2b(digest_size=32)
        #: Items written so far: the next item's index.
        self.index = 0
        self._size = 0
        self._content = False

    def write(self, member: _Member) -> None:
        """Append a packed batch (in the order of the stream; never an empty one)."""
        if not self._content:
            # As the pre-pass decides it: a BOM at the very start is not content.
            self._content = member.content if self.index else member.content_first
        self._size += len(member.data)
        self._hash.update(member.data)
        self._raw.write(member.packed)
        self.index += member.items

    def finish(self) -> IdSpool:
        """Close the file, on disk for good (fsynced)."""
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        scan = SpoolScan(self.index, self._size, self._content)
        return IdSpool(self.path, self._hash.hexdigest(), self.index, scan=scan)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self._raw.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _encode(batch: list[object]) -> tuple[str, bytes]:
    """One line per item, as text and UTF-8: a single join and encode when every item is a
    plain id."""
    try:
        text = "\n".join(batch)  # type: ignore[arg-type]  # non-str items raise TypeError
    except TypeError:
        pass
    else:
        if text.count("\n") == len(batch) - 1 and "\x00" not in text and MARK not in text:
            text += "\n"
            with contextlib.suppress(UnicodeEncodeError):  # a lone surrogate: marker lines
                return text, text.encode()
    text = "".join(_line(item) for item in batch)
    return text, text.encode()


def _line(item: object) -> str:
    """The spool line of one item: itself, or a marker saying why it is no id."""
    if not isinstance(item, str):
        return _marker(f"not a str ({type(item).__name__})", _SHORT.repr(item))
    if "\n" in item:
        return _marker("contains a line break", repr(item))
    if "\x00" in item or MARK in item:
        return _marker("contains a control character", repr(item))
    try:
        item.encode()
    except UnicodeEncodeError:
        return _marker("not encodable as UTF-8", repr(item))
    return item + "\n"


def _marker(reason: str, shown: str) -> str:
    shown = shown[:80].replace("\n", " ").replace("\x00", " ").replace(MARK, " ")
    return f"{MARK}{reason}{MARK}{shown}\n"


def decode_marker(value: str) -> tuple[str, str]:
    """(reason, shown value) of a marker line (stripped of its newline)."""
    _, reason, shown = value.split(MARK, 2)
    return reason, shown


def _checked(ids: object) -> None:
    if isinstance(ids, str | bytes):
        raise ConfigError(
            "ids: expected an iterable of id strings, not one string (wrap it in a list)"
        )
    if not isinstance(ids, Iterable | AsyncIterable):
        raise ConfigError(f"ids: expected an iterable of id strings, not {type(ids).__name__}")


def spool_sync(ids: Iterable[object], directory: Path | None, prefix: str) -> IdSpool:
    """Write ``ids`` to a new temporary spool in ``directory`` (None: the temp dir), here.

    Runs in the calling thread: a cursor that belongs to its thread (sqlite3) is read
    where it was made. Whatever the iterable raises is raised, the spool removed.
    """
    _checked(ids)
    return _spool(ids, directory, prefix, None)


class _Abandoned(Exception):
    """The awaiting task was cancelled: stop reading the iterable."""


def _spool(
    ids: Iterable[object], directory: Path | None, prefix: str, stop: threading.Event | None
) -> IdSpool:
    writer = _Writer(directory, prefix)
    try:
        items = iter(ids)
        # Batches are taken in C (islice) and packed (encoded, compressed outside the
        # GIL) by a thread of their own, one batch ahead of the one being read; each is
        # written (hashed outside the GIL) here, in order, once packed.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ids-spool") as pool:
            packing: collections.deque[concurrent.futures.Future[_Member]] = collections.deque()
            try:
                while batch := list(itertools.islice(items, BATCH)):
                    if stop is not None and stop.is_set():
                        raise _Abandoned
                    packing.append(pool.submit(_pack, batch))
                    del batch
                    if len(packing) > _AHEAD:
                        writer.write(packing.popleft().result())
                while packing:
                    writer.write(packing.popleft().result())
            finally:
                for future in packing:
                    future.cancel()
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


async def spool_async(
    ids: Iterable[object] | AsyncIterable[object], directory: Path | None, prefix: str
) -> IdSpool:
    """Write ``ids`` to a new temporary spool without blocking the event loop.

    A sync iterable is read in a worker thread (its ``next`` may block on a database).
    An async iterable is read on the loop, and its batches are packed and written by a
    thread of their own while the next batch is read: at most three batches exist at a time.
    """
    _checked(ids)
    if isinstance(ids, IdSpool):
        return ids
    if not isinstance(ids, AsyncIterable):
        return await _in_thread(ids, directory, prefix)
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ids-spool") as pool:
        writer = await loop.run_in_executor(pool, _Writer, directory, prefix)
        pending: asyncio.Future[None] | None = None
        try:
            batch: list[object] = []
            async for item in ids:
                batch.append(item)
                if len(batch) >= BATCH:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(pool, _pack_write, writer, batch)
                    batch = []
            if pending is not None:
                await pending
            pending = None
            await loop.run_in_executor(pool, _pack_write, writer, batch)
            return await loop.run_in_executor(pool, writer.finish)
        except BaseException:
            if pending is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(pending)  # the writer must be idle to abort
            await asyncio.shield(loop.run_in_executor(pool, writer.abort))
            raise


def _pack_write(writer: _Writer, batch: list[object]) -> None:
    if batch:
        writer.write(_pack(batch))


async def _in_thread(ids: Iterable[object], directory: Path | None, prefix: str) -> IdSpool:
    """``_spool`` in a worker thread; cancelled, it stops the thread at its next batch.

    A thread cannot be interrupted inside the iterable's ``next``: it is told to stop,
    and a spool it still finishes is deleted rather than left behind.
    """
    stop = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(None, _spool, ids, directory, prefix, stop)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        future.add_done_callback(_discard_result)
        raise


def _discard_result(future: asyncio.Future[IdSpool]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().discard()


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
