"""Ids from a Python iterable (``ids=``): spooled, validated, resumable, paid once.

Every run talks to a real sandbox over HTTP; exactly-once is asserted on the sandbox's
own ledger. The resume cases stop a run on quota and continue it from the journal's
spool, without the caller's iterator.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import io
import os
import sqlite3
import tempfile
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bulkjob import ConfigError, InputError, _ids, resume_async, submit, submit_async
from bulkjob._ids import spool_path
from bulkjob._runner import Runner
from bulkjob._unzstd import unzstd
from tests.conftest import (
    SandboxFactory,
    assert_paid_once,
    cli_flags,
    make_ids,
    run_cli,
    settings_for,
)
from tests.test_sync import _serve_in_thread


def generate(values: list[str]) -> Iterator[str]:
    """A one-shot generator: it can be read once only, like a database cursor."""
    yield from values


async def agenerate(values: list[str]) -> AsyncIterator[str]:
    """An async generator that yields to the loop now and then, like a database driver."""
    for i, value in enumerate(values):
        if i % 1000 == 0:
            await asyncio.sleep(0)
        yield value


async def test_a_list_of_ids_is_submitted(sandbox: SandboxFactory) -> None:
    """A plain list: every id paid once, the report's input is ``ids``."""
    sb = await sandbox()
    values = make_ids(250)
    report = await submit_async(ids=values, settings=settings_for(sb))
    assert report.ok and report.accounted and report.ids_submitted == 250
    assert report.jobs[0].first == "ids[0]" and report.jobs[-1].last == "ids[249]"
    assert_paid_once(sb, values)


async def test_a_generator_of_100k_ids_is_paid_exactly_once(sandbox: SandboxFactory) -> None:
    """100,000 ids from a generator: the ledger holds each exactly once."""
    sb = await sandbox()
    values = make_ids(100_000)
    s = settings_for(sb, chunk_size=10_000)
    report = await Runner(s, ids=generate(values)).run()
    assert report.ok and report.accounted and report.ids_submitted == 100_000
    assert len(report.jobs) == 10
    assert_paid_once(sb, values)


async def test_an_async_generator_through_submit_async(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """An async generator is read on the loop, spooled beside the journal, paid once."""
    sb = await sandbox()
    values = make_ids(25_000)
    journal = tmp_path / "run.journal"
    report = await submit_async(
        ids=agenerate(values), settings=settings_for(sb, chunk_size=5_000), journal=journal
    )
    assert report.ok and report.ids_submitted == 25_000
    assert_paid_once(sb, values)
    with spool_path(journal).open("rb") as raw, unzstd(raw) as data:  # compressed, ids only
        assert io.TextIOWrapper(data).read().split() == values


async def test_inputs_and_ids_together_are_refused(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """Paths and ids= both, or neither, or one bare string: a one-line ConfigError."""
    sb = await sandbox()
    s = settings_for(sb)
    with pytest.raises(ConfigError, match="not both"):
        await submit_async([str(tmp_path / "ids.txt")], s, ids=make_ids(3))
    with pytest.raises(ConfigError, match="give input paths"):
        await submit_async(settings=s)
    with pytest.raises(ConfigError, match="not one string"):
        await submit_async(ids=make_ids(1)[0], settings=s)  # type: ignore[arg-type]
    assert sb.ledger.ids_accepted == 0


async def test_bad_items_are_rejected_with_their_index(sandbox: SandboxFactory) -> None:
    """A non-str item, an id off the pattern and a line break: rejected as ``ids[i]``."""
    sb = await sandbox()
    good = make_ids(3)
    items: list[object] = [good[0], 42, good[1], "not an id!", "a\nb", None, good[2]]
    report = await submit_async(ids=items, settings=settings_for(sb))  # type: ignore[arg-type]
    assert report.ids_submitted == 3 and report.ids_invalid == 4 and report.accounted
    assert report.invalid_samples == [
        "ids[1]: '42': not a str (int)",
        "ids[3]: 'not an id!': does not match id_pattern",
        "ids[4]: \"'a\\\\nb'\": contains a line break",
        "ids[5]: 'None': not a str (NoneType)",
    ]
    assert_paid_once(sb, good)


async def test_strict_mode_fails_on_a_bad_item_before_sending(sandbox: SandboxFactory) -> None:
    """Under strict, the first bad item is an InputError naming ``ids[i]``; nothing is sent."""
    sb = await sandbox()
    items: list[object] = [*make_ids(5), b"bytes-id"]
    with pytest.raises(InputError, match=r"^ids\[5\]: not a str \(bytes\): b'bytes-id'$"):
        await submit_async(ids=items, settings=settings_for(sb, strict=True))  # type: ignore[arg-type]
    assert sb.ledger.ids_accepted == 0


async def test_dedupe_drops_repeated_ids(sandbox: SandboxFactory) -> None:
    """With dedupe, an id given twice is counted duplicate and paid once."""
    sb = await sandbox()
    values = make_ids(300)
    report = await submit_async(ids=values + values[:120], settings=settings_for(sb, dedupe=True))
    assert report.ids_duplicate == 120 and report.ids_submitted == 300 and report.accounted
    assert_paid_once(sb, values)


async def test_resume_reads_the_spool_not_the_iterator(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Out of quota mid-run, then resumed from the journal alone: each id paid once."""
    sb = await sandbox(quota=450)
    values = make_ids(1000)
    journal = tmp_path / "run.journal"
    s = settings_for(sb, concurrency=2)
    first = await submit_async(ids=generate(values), settings=s, journal=journal)
    assert first.stop_reason == "quota" and first.accounted
    assert spool_path(journal).is_file()
    sb.add_quota(10_000)
    second = await resume_async(journal, **_aimed(sb))
    assert second.stop_reason is None and second.ids_submitted == 1000
    assert_paid_once(sb, values)


@contextlib.contextmanager
def gzip_spools(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Spools written inside as they were before zstd: ``<journal>.ids.gz``, gzip."""
    with monkeypatch.context() as old:
        old.setattr(_ids, "_pack", _gzip_pack)
        old.setattr(_ids, "SPOOL_SUFFIX", ".ids.gz")
        yield


def _gzip_pack(batch: list[object]) -> _ids._Member:
    """A batch as spools were packed before they were zstd: a gzip member of its own."""
    text, data = _ids._encode(batch)
    gz = zlib.compressobj(1, zlib.DEFLATED, 31, zlib.DEF_MEM_LEVEL, zlib.Z_RLE)
    content = bool(text.strip())
    first = content if text[:1] != "\ufeff" else bool(text[1:].strip())
    return _ids._Member(len(batch), data, gz.compress(data) + gz.flush(), first, content)


@pytest.mark.parametrize("how", ["resume", "same submit"])
async def test_a_journal_of_a_gzip_spool_still_continues(
    sandbox: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A journal written before spools were zstd names its ``<journal>.ids.gz``: resumed,
    or met by the same submit again, it is read (and proven) from there, never refused as
    another run's, and each id is paid once."""
    sb = await sandbox(quota=250)
    values = make_ids(600)
    journal = tmp_path / "run.journal"
    s = settings_for(sb, concurrency=2)
    with gzip_spools(monkeypatch):
        first = await submit_async(ids=generate(values), settings=s, journal=journal)
    assert first.stop_reason == "quota"
    gz = tmp_path / "run.journal.ids.gz"
    assert gz.read_bytes()[:2] == b"\x1f\x8b" and not spool_path(journal).exists()
    sb.add_quota(10_000)
    if how == "resume":
        second = await resume_async(journal, **_aimed(sb))
    else:
        second = await submit_async(ids=generate(values), settings=s, journal=journal)
        assert second.resumed
    assert second.stop_reason is None and second.accounted
    assert_paid_once(sb, values)
    assert sorted(n for n in os.listdir(tmp_path) if ".ids" in n) == ["run.journal.ids.gz"]


async def test_the_cli_resumes_a_run_of_ids(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """``bulkjob resume JOURNAL`` (a real process) continues a run of ids= from its spool."""
    sb = await sandbox(quota=250)
    values = make_ids(600)
    journal = tmp_path / "run.journal"
    first = await submit_async(ids=values, settings=settings_for(sb), journal=journal)
    assert first.stop_reason == "quota"
    sb.add_quota(10_000)
    code, err = await run_cli("resume", str(journal), *cli_flags(sb))
    assert code == 0, err
    assert_paid_once(sb, values)


async def test_the_same_submit_again_resumes_and_other_ids_are_refused(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Same ids and journal again: a resume. Other ids with that journal: refused, unsent."""
    sb = await sandbox(quota=250)
    values = make_ids(600)
    journal = tmp_path / "run.journal"
    s = settings_for(sb)
    first = await submit_async(ids=generate(values), settings=s, journal=journal)
    assert first.stop_reason == "quota"
    with pytest.raises(InputError, match="its ids differ"):
        await submit_async(ids=generate(values[::-1]), settings=s, journal=journal)
    sb.add_quota(10_000)
    again = await submit_async(ids=generate(values), settings=s, journal=journal)
    assert again.resumed and again.stop_reason is None and again.ids_submitted == 600
    assert_paid_once(sb, values)
    assert sorted(n for n in os.listdir(tmp_path) if ".ids" in n) == [
        "run.journal.ids.zst"  # the second spools are gone
    ]


async def test_without_a_journal_the_spool_is_deleted(
    sandbox: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No journal: the spool is a temporary file, removed when the run ends."""
    sb = await sandbox()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    report = await submit_async(ids=generate(make_ids(150)), settings=settings_for(sb))
    assert report.ok and report.ids_submitted == 150
    assert os.listdir(tmp_path) == []


async def test_an_iterable_that_fails_leaves_no_spool(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The caller's own error while reading is raised as it is; no spool, no journal."""
    sb = await sandbox()

    def broken() -> Iterator[str]:
        yield from make_ids(20_000)
        raise LookupError("cursor lost")

    with pytest.raises(LookupError, match="cursor lost"):
        await submit_async(ids=broken(), settings=settings_for(sb), journal=tmp_path / "j")
    assert os.listdir(tmp_path) == []
    assert sb.ledger.ids_accepted == 0


def test_sync_submit_inside_a_running_loop_reads_a_thread_bound_cursor(tmp_path: Path) -> None:
    """A notebook cell: blocking ``submit(ids=cursor)`` inside a running loop, where the
    cursor (sqlite3's, bound to its thread) is read in the caller's thread."""
    values = make_ids(2_500)
    db = sqlite3.connect(tmp_path / "contacts.db")
    db.execute("CREATE TABLE contacts (id TEXT)")
    db.executemany("INSERT INTO contacts VALUES (?)", [(v,) for v in values])
    sb, stop, thread = _serve_in_thread()

    async def cell() -> int:
        asyncio.get_running_loop()  # a loop is running here, as in a notebook cell
        cursor = db.execute("SELECT id FROM contacts ORDER BY rowid")
        report = submit(
            ids=(row[0] for row in cursor),
            base_url=sb.base_url,
            access_token="sandbox-token",
            chunk_size=1_000,
            journal=tmp_path / "run.journal",
        )
        return report.ids_submitted

    try:
        assert asyncio.run(cell()) == 2_500
    finally:
        stop.set()
        thread.join(10)
        db.close()
    assert_paid_once(sb, values)


def _aimed(sb: object) -> dict[str, object]:
    """The settings a resume needs that the journal does not keep (url, token, speed)."""
    s = settings_for(sb)  # type: ignore[arg-type]
    return {
        "base_url": s.base_url,
        "token_url": s.token_url,
        "access_token": "sandbox-token",
        "max_requests": s.max_requests,
        "per_seconds": s.per_seconds,
        "backoff_initial": s.backoff_initial,
        "backoff_max": s.backoff_max,
        "reconcile_grace": s.reconcile_grace,
        "proof_poll_interval": s.proof_poll_interval,
    }


_SPOOLING_CHILD = """
import sys, time, bulkjob
from bulkjob import Settings
url, token_url, token, journal, n = sys.argv[1:6]
def gen():
    for i in range(int(n)):
        if i == int(n) * 7 // 10:
            open(journal + ".reached", "w").close()
            time.sleep(60)
        yield f"id_{i:061d}"
bulkjob.submit(ids=gen(), journal=journal, settings=Settings(base_url=url, token_url=token_url,
    access_token=token, chunk_size=1000))
"""


async def test_a_spool_left_by_a_killed_writer_is_removed_by_the_next(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """kill -9 while the ids are being spooled (a real process) leaves its temporary spool;
    the next call on the same journal removes it (with 10M ids it is hundreds of MB), pays
    every id once, and leaves only the journal's own spool. (From a hostile review.)"""
    import sys

    from tests.conftest import TOKEN

    sb = await sandbox()
    journal = tmp_path / "run.journal"
    n = 50_000
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SPOOLING_CHILD, sb.base_url, sb.token_url, TOKEN, str(journal),
        str(n), stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    while not await asyncio.to_thread(os.path.exists, f"{journal}.reached"):
        assert proc.returncode is None, "the spooling process ended early"
        await asyncio.sleep(0.02)
    proc.kill()
    await proc.wait()
    left = glob.glob(f"{journal}.ids-*.tmp")
    assert left, "the killed writer left no temporary spool: nothing tested"
    values = [f"id_{i:061d}" for i in range(n)]
    report = await submit_async(
        ids=iter(values), settings=settings_for(sb, chunk_size=1000), journal=journal
    )
    assert report.stop_reason is None and report.ids_submitted == n
    assert_paid_once(sb, values)
    assert await asyncio.to_thread(os.path.isfile, spool_path(journal))
    assert not glob.glob(f"{tmp_path}/*.tmp"), "the dead writer's spool is still there"


def test_a_live_writers_spool_is_kept(tmp_path: Path) -> None:
    """A temporary spool beside the journal whose writer still runs (here a sleeping child
    of this test, of this host) is not touched when another spool is placed."""
    import subprocess
    import sys

    from bulkjob._ids_journal import _host_tag, spool_place
    from bulkjob._store_local import process_start

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = ""
        while not started:  # /proc may lag a moment behind the fork
            started = process_start(child.pid)
        live = tmp_path / f"run.journal.ids-{_host_tag()}-{child.pid}-{started}-abc.tmp"
        live.write_bytes(b"partial")
        other_host = tmp_path / f"run.journal.ids-00000000-{child.pid}-1-abc.tmp"
        other_host.write_bytes(b"partial")
        spool_place(tmp_path / "run.journal")
        assert live.exists() and other_host.exists()
        child.kill()
        child.wait()
        spool_place(tmp_path / "run.journal")
        assert not live.exists(), "the dead writer's spool stayed"
        assert other_host.exists(), "another host's spool was removed"
    finally:
        child.kill()
        child.wait()
