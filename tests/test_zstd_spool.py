"""The zstd spool of ``ids=`` runs and zstd inputs, as hostile review 22 tried to break
them: bounded memory, skippable frames, empty spools, journals written before spools were
zstd, and journals whose recorded spool is gone. Tests whose docstring starts with "Was
broken" failed on the first zstd version (78dcac5) and describe what they caught then."""

from __future__ import annotations

import gzip
import io
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from bulkjob import BulkJobError, InputError, enrich_async, submit_async
from bulkjob._decompress import decompressed
from bulkjob._ids import spool_sync
from bulkjob._source import IdSource
from tests.conftest import (
    SandboxFactory,
    assert_paid_once,
    cli_flags,
    kill_9,
    make_ids,
    run_cli,
    settings_for,
    start_cli,
    wait_until,
)
from tests.test_ids_iterable import generate, gzip_spools

#: The same 64-character id, 200 MB of it: a file that compresses a thousandfold.
_LINE = make_ids(1)[0].encode() + b"\n"
_INFLATED = 200 * 1024 * 1024
_PIECE = _LINE * ((1 << 20) // len(_LINE))
#: What reading such a file may hold at once. The gzip reader stays under 7 MB.
_BOUND = 32 * 1024 * 1024
#: A skippable zstd frame (magic 0x184D2A50..5F, little-endian): the zstd format says a
#: decoder skips it; pzstd starts every frame with one, the seekable format ends with one.
_SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"


def _repeated(path: Path, kind: str) -> Path:
    """``_INFLATED`` bytes of ``_LINE`` as ``kind`` (zstd as the ``zstd`` tool writes a
    pipe: one frame, no content size), written a megabyte at a time."""
    piece, rounds = _PIECE, _INFLATED // len(_PIECE)
    with path.open("wb") as out:
        if kind == "gzip":
            with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6) as gz:
                for _ in range(rounds):
                    gz.write(piece)
        else:
            z = zstandard.ZstdCompressor(level=3, write_checksum=True).compressobj()
            for _ in range(rounds):
                out.write(z.compress(piece))
            out.write(z.flush())
    return path


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_a_highly_compressible_input_is_read_in_bounded_memory(tmp_path: Path, kind: str) -> None:
    """Was broken (zstd): the zstd reader inflates a whole compressed piece (1 MB) in
    one ``decompress`` call, with no bound on its output, where the gzip reader passes the
    caller's buffer size to zlib. A 17 KB zstd file of one id repeated (200 MB of text)
    holds 200+ MB at once in the pre-pass; a 1 MB one (some 10 GB of text) would hold
    ~10 GB. The gzip case passes (a peak of ~6.5 MB); zstd peaks at ~210 MB."""
    path = _repeated(tmp_path / f"same.{kind}", kind)
    assert path.stat().st_size < 1 << 20  # one piece of the reader: all of it at once
    tracemalloc.start()
    try:
        with IdSource([str(path)]) as source:
            summary = source.check()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.bytes == _INFLATED // len(_PIECE) * len(_PIECE)
    assert peak < _BOUND, f"{kind}: {peak / 1e6:.0f} MB held at once"


def _skippable(payload: bytes) -> bytes:
    return _SKIPPABLE_MAGIC + struct.pack("<I", len(payload)) + payload


def _frame(text: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(text)


_IDS = make_ids(3000)
_TEXT = "".join(f"{v}\n" for v in _IDS).encode()
_HALF = len(_IDS) // 2 * len(_IDS[0] + "\n")


@pytest.mark.parametrize(
    "layout",
    [
        # pzstd's layout: a skippable frame (the next frame's size) before every frame.
        "pzstd",
        # the seekable format's layout: frames, then a skippable frame with the seek table.
        "seek table at the end",
    ],
)
def test_skippable_frames_are_read_as_the_zstd_tool_reads_them(tmp_path: Path, layout: str) -> None:
    """Was broken: ``_unzstd`` says it reads "what the zstd tool reads", but a
    skippable frame is refused: a file made by ``pzstd`` (which begins with one) is not
    even recognised as zstd (``decompressed`` looks for the frame magic only) and fails as
    "binary data (NUL byte)"; a skippable frame after the data is "corrupt zstd data: not
    a zstd frame". ``zstd -t``/``zstd -d`` and zstandard's own stream_reader read both.
    Not a silent loss (both are errors), but valid inputs refused."""
    one, two = _frame(_TEXT[:_HALF]), _frame(_TEXT[_HALF:])
    if layout == "pzstd":
        data = _skippable(struct.pack("<I", len(one))) + one
        data += _skippable(struct.pack("<I", len(two))) + two
    else:
        data = one + two + _skippable(b"\x00" * 20 + b"seek")
    library = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    assert library.read() == _TEXT  # the reference: what a zstd decoder reads
    path = tmp_path / "ids.zst"
    path.write_bytes(data)
    with IdSource([str(path)]) as source:
        assert [value for value, _, _ in source] == _IDS


def test_an_empty_spool_reads_as_no_ids(tmp_path: Path) -> None:
    """Was broken (minor, internal API): an empty iterable makes a 0-byte spool (no
    frame is written for an empty batch). Iterating that ``IdSpool`` raised nothing with
    gzip (``gzip.open`` reads an empty file as empty); now ``decompressed`` finds no magic
    and ``IdSpool.__iter__`` raises ConfigError "not a spool of ids (neither zstd nor
    gzip)". The runner reads spools through IdSource, which treats 0 bytes as an empty
    plain file, so ``submit(ids=[])`` still says "no ids"."""
    spool = spool_sync([], tmp_path, "empty-")
    try:
        assert spool.path.stat().st_size == 0
        assert list(spool) == []
    finally:
        spool.discard()


def test_the_reader_of_an_empty_file_is_not_confused_with_zstd(tmp_path: Path) -> None:
    """(passes) A file holding only the zstd magic is a frame cut short, not no ids."""
    path = tmp_path / "magic.zst"
    path.write_bytes(b"\x28\xb5\x2f\xfd")
    with path.open("rb") as raw:
        stream = decompressed(raw)
        assert stream is not None
        with pytest.raises(EOFError):
            stream.read()


async def test_the_same_submit_meets_an_old_journal_that_recorded_no_chunk(
    sandbox: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was broken: an old journal (its spool ``.ids.gz``) whose run stopped before its
    first chunk (here ``require_quota`` refused the run; a kill -9 after the journal was
    written does the same) is claimed afresh by the same submit after the upgrade. Its
    inputs are taken from the old record (``spool_for``: ``.ids.gz``) while the new spool
    is adopted as ``.ids.zst``: the journal now records ``inputs=[….ids.gz]`` (and the
    stale .ids.gz's size as its identity) but ``ids.path=….ids.zst``. The run works and
    ``resume`` works (it follows ``ids.path``); but the same submit called a third time
    (a scheduler's retry after this run stopped) computes ``….ids.zst`` and is refused:
    "a journal of another run is here (its inputs: ….ids.gz)"."""
    sb = await sandbox(quota=250)
    values = make_ids(600)
    journal = tmp_path / "run.journal"
    with gzip_spools(monkeypatch):
        first = await submit_async(
            ids=generate(values), settings=settings_for(sb, require_quota=True), journal=journal
        )
    assert first.stop_reason == "quota" and first.ids_submitted == 0
    s = settings_for(sb)
    second = await submit_async(ids=generate(values), settings=s, journal=journal)
    assert second.stop_reason == "quota" and not second.resumed  # no chunk: a new run
    sb.add_quota(10_000)
    third = await submit_async(ids=generate(values), settings=s, journal=journal)
    assert third.resumed and third.stop_reason is None and third.accounted
    assert_paid_once(sb, values)


async def test_the_cli_resumes_an_old_journal_of_a_gzip_spool(
    sandbox: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(passes) ``bulkjob resume`` (a real process) continues a journal written before
    spools were zstd from its ``.ids.gz``, and a stale ``.ids.zst`` of other ids lying
    beside it is not read."""
    sb = await sandbox(quota=250)
    values = make_ids(600)
    journal = tmp_path / "run.journal"
    with gzip_spools(monkeypatch):
        first = await submit_async(ids=generate(values), settings=settings_for(sb), journal=journal)
    assert first.stop_reason == "quota"
    stale = spool_sync(make_ids(600, prefix="other"), tmp_path, "stale-")
    stale.adopt(tmp_path / "run.journal.ids.zst")
    sb.add_quota(10_000)
    code, err = await run_cli("resume", str(journal), *cli_flags(sb))
    assert code == 0, err
    assert_paid_once(sb, values)
    assert sorted(n for n in os.listdir(tmp_path) if ".ids" in n) == [
        "run.journal.ids.gz",
        "run.journal.ids.zst",
    ]


def test_a_zstd_input_cut_short_names_file_and_line(tmp_path: Path) -> None:
    """(passes) A .zst input (one frame, as the zstd tool writes it) cut anywhere inside
    is one InputError naming the file, where zstandard's stream_reader would hand back
    the ids before the cut without a word."""
    whole = io.BytesIO()
    z = zstandard.ZstdCompressor(write_checksum=True).compressobj()
    whole.write(z.compress(_TEXT) + z.flush())
    data = whole.getvalue()
    for cut in (5, len(data) // 3, len(data) - 5, len(data) - 1):
        short = zstandard.ZstdDecompressor().stream_reader(data[:cut], read_across_frames=True)
        assert _TEXT.startswith(short.read())  # the library: no error, ids lost or not
        path = tmp_path / f"cut{cut}.zst"
        path.write_bytes(data[:cut])
        with IdSource([str(path)]) as source, pytest.raises(InputError) as info:
            source.check()
        text = str(info.value)
        assert str(path) in text and "corrupt zstd data" in text and "\n" not in text


async def test_kill_9_while_resuming_an_old_gzip_journal_then_resume(
    sandbox: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(passes) A journal of a gzip spool resumed by ``bulkjob resume`` (a real process),
    killed -9 mid-run, then resumed again: each id paid once, from the .ids.gz."""
    sb = await sandbox(quota=250)
    values = make_ids(1_500)
    journal = tmp_path / "run.journal"
    with gzip_spools(monkeypatch):
        first = await submit_async(ids=generate(values), settings=settings_for(sb), journal=journal)
    assert first.stop_reason == "quota"
    sb.add_quota(100_000)
    slow = cli_flags(sb, max_requests=4, per=1.0, concurrency=1)
    proc = await start_cli("resume", str(journal), *slow)
    await wait_until(lambda: sb.ledger.ids_accepted >= 400 or proc.returncode is not None)
    kill_9(proc)
    await proc.wait()
    assert sb.ledger.ids_accepted < len(values)  # killed mid-run, not after it
    code, err = await run_cli("resume", str(journal), *cli_flags(sb))
    assert code == 0, err
    assert_paid_once(sb, values)


async def test_enrich_again_on_an_old_gzip_journal(
    sandbox: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(passes) ``enrich_async(ids=..., journal=...)`` whose journal was written before
    spools were zstd: the same call again resumes from the .ids.gz, every id paid once and
    every row handed over across the two calls."""
    sb = await sandbox(quota=250)
    values = make_ids(600)
    journal = tmp_path / "run.journal"
    s = settings_for(sb)
    rows: list[str] = []

    async def enrich_once() -> BaseException | None:
        try:
            async with enrich_async(ids=generate(values), settings=s, journal=journal) as it:
                async for row in it:  # kept one by one: the stop is raised after rows
                    rows.append(row["newContactId"])
        except BulkJobError as exc:
            return exc
        return None

    with gzip_spools(monkeypatch):
        stopped = await enrich_once()
    assert stopped is not None and len(rows) < len(values)
    sb.add_quota(10_000)
    assert await enrich_once() is None
    assert sorted(rows) == sorted(values)
    assert_paid_once(sb, values)
    assert sorted(n for n in os.listdir(tmp_path) if ".ids" in n) == ["run.journal.ids.gz"]


@pytest.mark.parametrize("how", ["journal moved", "spool deleted"])
async def test_the_same_submit_when_the_recorded_spool_is_gone(
    sandbox: SandboxFactory, tmp_path: Path, how: str
) -> None:
    """Was broken: the same submit on a journal whose recorded spool path no longer
    exists (the journal's directory moved, or the spool deleted) fails with
    "ids: no such file": no path named, nothing said of the journal, while ``resume``
    on the same journal says "<path>: the journal's copy of the run's ids is gone". Before
    this change a moved journal was refused as "a journal of another run is here (its
    inputs: <old path>)"; ``spool_for`` now takes the recorded path, so the run goes on to
    discard the fresh spool (same digest) and open a file that is not there. (The
    deleted case was the same before: not a regression, same poor message.)"""
    sb = await sandbox(quota=250)
    values = make_ids(600)
    a = tmp_path / "a"
    a.mkdir()
    s = settings_for(sb)
    first = await submit_async(ids=generate(values), settings=s, journal=a / "run.journal")
    assert first.stop_reason == "quota"
    recorded = a / "run.journal.ids.zst"
    if how == "journal moved":
        journal = tmp_path / "b" / "run.journal"
        a.rename(journal.parent)
    else:
        journal = a / "run.journal"
        recorded.unlink()
    with pytest.raises(InputError) as info:
        await submit_async(ids=generate(values), settings=s, journal=journal)
    assert str(recorded) in str(info.value)
