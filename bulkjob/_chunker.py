"""The chunker: cut the stream of id records into jobs of at most ``size`` ids.

Boundaries depend only on the input order and the size, never on timing, so the same
input and size always give the same chunks (sequence numbers, ids, origins, digests):
that is what lets a resumed run recognise the chunks it already submitted.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncGenerator, Iterable, Iterator
from dataclasses import dataclass, field

from ._errors import ConfigError
from ._records import IdRecord, IdRun, Origin
from ._settings import MAX_CHUNK_SIZE

__all__ = ["Chunk", "chunked", "chunked_blocks", "read_ahead"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One job's worth of ids, with where its first and last id came from."""

    seq: int
    ids: list[str]
    first: Origin
    last: Origin
    # Filled on first use of ``digest``: hashing costs a join + sha256 of up to ~650 KB,
    # paid only by callers that need it, and only once.
    _digest: str | None = field(default=None, init=False, repr=False, compare=False)
    # The body the digest was taken of, kept for the request that sends it (see
    # take_body): joined and encoded once, in the reader's thread.
    _body: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def body(self) -> bytes:
        """The HTTP request body: the ids, one per line with a trailing newline, UTF-8."""
        body = self._body
        if body is None:
            # Joining with a trailing empty item gives the final newline without copying
            # the ~650 KB string a second time.
            body = "\n".join([*self.ids, ""]).encode()
        return body

    def take_body(self) -> bytes:
        """:meth:`body`, no longer kept by the chunk (a chunk kept for later holds its ids
        only)."""
        body = self.body()
        object.__setattr__(self, "_body", None)
        return body

    @property
    def digest(self) -> str:
        """SHA-256 hex of :meth:`body`: identifies the chunk's content for resume."""
        digest = self._digest
        if digest is None:
            body = self.body()
            object.__setattr__(self, "_body", body)
            digest = hashlib.sha256(body).hexdigest()
            # Frozen only guards against callers; caching a value derived from the
            # (never reassigned) fields keeps the instance observably immutable.
            object.__setattr__(self, "_digest", digest)
        return digest


def chunked(records: Iterable[IdRecord], size: int, *, start: int = 1) -> Iterator[Chunk]:
    """Group ``records`` into chunks of ``size`` ids (the last may be smaller), numbered from
    ``start``. Arguments are checked at the call, not at the first ``next``."""
    return chunked_blocks((records,), size, start=start)


def chunked_blocks(
    blocks: Iterable[IdRun | Iterable[IdRecord]], size: int, *, start: int = 1
) -> Iterator[Chunk]:
    """:func:`chunked` over the main pass's blocks (:meth:`IdSource.blocks`): the same
    chunks, but a run of valid ids is cut by slicing, with no tuple per id."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_CHUNK_SIZE:
        raise ConfigError(f"chunk_size: must be from 1 to {MAX_CHUNK_SIZE}, got {size!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 1:
        raise ConfigError(f"start: must be an integer of at least 1, got {start!r}")
    return _block_chunks(iter(blocks), size, start)


def _block_chunks(
    blocks: Iterator[IdRun | Iterable[IdRecord]], size: int, seq: int
) -> Iterator[Chunk]:
    ids: list[str] = []
    first = last = Origin("", 0)
    for block in blocks:
        if isinstance(block, IdRun):
            run, at, end = block.ids, 0, len(block.ids)
            while at < end:
                take = min(size - len(ids), end - at)
                if not ids:
                    first = Origin(block.path, block.line + at)
                ids += run[at : at + take]
                at += take
                block.taken = at  # handed on once the chunk is, at the latest
                if len(ids) == size:
                    last = Origin(block.path, block.line + at - 1)
                    yield Chunk(seq, ids, first, last)
                    seq, ids = seq + 1, []
            if ids:
                last = Origin(block.path, block.line + end - 1)
            continue
        for value, path, line in block:  # a block of rejects, blanks or dedupe: rare
            if not ids:
                first = Origin(path, line)
            ids.append(value)
            if len(ids) == size:
                yield Chunk(seq, ids, first, Origin(path, line))
                seq, ids = seq + 1, []
            else:
                last = Origin(path, line)
    if ids:
        yield Chunk(seq, ids, first, last)


async def read_ahead(
    chunks: Iterator[Chunk], ahead: int, *, digest: bool
) -> AsyncGenerator[Chunk, None]:
    """Yield ``chunks`` produced by a thread of their own, at most ``ahead`` in front.

    Reading and chunking run off the event loop and hand chunks over without waiting
    for each hand-off (a loop round trip per chunk would stall the reader at every GIL
    switch); the semaphore keeps memory flat. With ``digest``, chunks are hashed in the
    thread too. Whatever the thread raises (an input that changed under us) is raised
    here. Close the generator (``contextlib.aclosing``) to stop the thread early.
    """
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Chunk | BaseException | None] = asyncio.Queue()
    room = threading.Semaphore(ahead)
    quit_reading = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                if digest:
                    _ = chunk.digest  # cached on the chunk
                room.acquire()
                if quit_reading.is_set():
                    return
                loop.call_soon_threadsafe(inbox.put_nowait, chunk)
            loop.call_soon_threadsafe(inbox.put_nowait, None)
        except BaseException as exc:  # handed to the loop, which decides
            loop.call_soon_threadsafe(inbox.put_nowait, exc)

    reader = loop.run_in_executor(None, produce)
    try:
        while (item := await inbox.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
            room.release()
    finally:
        quit_reading.set()
        room.release()  # wake the thread if it waits for room
        await asyncio.shield(reader)
