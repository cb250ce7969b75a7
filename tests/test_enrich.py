"""enrich / enrich_async / ``bulkjob enrich``: ids in, rows out, against the sandbox.

Every test checks the sandbox's own ledger (each id paid once) besides the rows; crash
cases kill a real CLI process with SIGKILL once its output holds rows.
"""

from __future__ import annotations

import asyncio
import collections
import csv
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import bulkjob
from bulkjob import JobsFailedError, Row
from bulkjob._errors import InputError
from tests.conftest import (
    SandboxFactory,
    assert_paid_once,
    cli_flags,
    finish_cli,
    journal_rows,
    kill_9,
    make_ids,
    run_cli,
    settings_for,
    start_cli,
    write_ids,
)
from tests.test_ids_iterable import agenerate, generate

ID = "newContactId"


def counts(rows: list[Row]) -> collections.Counter[str]:
    """How often each id came back."""
    return collections.Counter(row[ID] for row in rows)


async def test_file_of_100k_ids_gives_one_row_per_id(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """100,000 ids: one row per id, each paid once; rows are dicts with their job id."""
    sb = await sandbox(no_match_rate=0.1)
    values = make_ids(100_000)
    path = write_ids(tmp_path / "ids.txt", values)
    s = settings_for(sb, chunk_size=10_000, concurrency=4)
    it = bulkjob.enrich_async([str(path)], settings=s)
    rows = [row async for row in it]
    assert counts(rows) == collections.Counter(values)
    assert_paid_once(sb, values)
    jobs = {job.job_id for job in it.report.jobs}
    assert {row.job_id for row in rows} == jobs and len(jobs) == 10
    assert isinstance(rows[0], dict) and rows[0]["matchStatus"] in ("found", "not found")
    assert it.report.rows_delivered == 100_000


async def test_enrich_async_with_an_async_generator(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Rows of a file come from the same async iterator whatever drives it."""
    sb = await sandbox()
    values = make_ids(1_000)
    path = write_ids(tmp_path / "ids.txt", values)

    async def consume() -> AsyncIterator[Row]:
        async with bulkjob.enrich_async(str(path), settings=settings_for(sb)) as rows:
            async for row in rows:
                yield row

    got = [row async for row in consume()]
    assert counts(got) == collections.Counter(values)
    assert_paid_once(sb, values)


def test_sync_enrich_inside_a_running_loop(tmp_path: Path) -> None:
    """Called from a coroutine (a notebook cell), the blocking enrich works all the same."""
    values = make_ids(500)
    path = write_ids(tmp_path / "ids.txt", values)
    with bulkjob.Sandbox.running() as sb:

        async def cell() -> list[Row]:
            return list(bulkjob.enrich([str(path)], settings=settings_for(sb)))

        rows = asyncio.run(cell())
        assert counts(rows) == collections.Counter(values)
        assert_paid_once(sb, values)


def test_break_then_resume_with_the_journal(tmp_path: Path) -> None:
    """A consumer that breaks out early, then enriches again with the journal: every row,
    nothing paid twice, at most one job's rows repeated."""
    values = make_ids(2_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal = tmp_path / "run.journal"
    with bulkjob.Sandbox.running(bulkjob.SandboxConfig(running_job_limit=2)) as sb:
        s = settings_for(sb, chunk_size=200)
        first: list[Row] = []
        it = bulkjob.enrich([str(path)], settings=s, journal=journal)
        for row in it:
            first.append(row)
            if len(first) == 450:  # two jobs and a part of a third
                break
        it.close()
        delivered = {r.job_id for r in journal_rows(journal).values() if r.delivered_at}
        assert len(delivered) == 2
        rest = list(bulkjob.enrich([str(path)], settings=s, journal=journal))
        assert_paid_once(sb, values)
    got = counts(first + rest)
    assert set(got) == set(values)
    repeated = {row.job_id for row in first + rest if got[row[ID]] > 1}
    assert len(repeated) <= 1
    assert not delivered & {row.job_id for row in rest}


async def test_queue_limit_two_and_failed_jobs(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """A queue limit of 2, jobs that fail: the rows of the others, then JobsFailedError
    naming the failed jobs, which the report lists too."""
    sb = await sandbox(running_job_limit=2, job_fail_rate=0.3, finished_after=0.05, seed=3)
    values = make_ids(3_000)
    path = write_ids(tmp_path / "ids.txt", values)
    it = bulkjob.enrich_async([str(path)], settings=settings_for(sb, chunk_size=250))
    rows: list[Row] = []

    async def consume() -> None:
        async for row in it:
            rows.append(row)

    with pytest.raises(JobsFailedError) as caught:
        await consume()
    failed = {job.job_id for job in it.report.failed_jobs}
    assert failed and {j.job_id for j in caught.value.jobs} == failed  # type: ignore[attr-defined]
    assert caught.value.ids == 250 * len(failed)
    assert it.report.running_job_limit == 2
    assert_paid_once(sb, values)
    assert len(rows) + caught.value.ids == len(values)
    assert not failed & {row.job_id for row in rows}


async def test_bad_input_is_the_submit_error(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """Binary data is an InputError naming the file, as for submit; nothing is sent."""
    sb = await sandbox()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\x00\x01\x02binary")
    with pytest.raises(InputError, match=r"bad\.txt"):
        async for _ in bulkjob.enrich_async([str(bad)], settings=settings_for(sb)):
            pass
    assert sb.ledger.ids_accepted == 0


async def test_cli_bad_input_exits_2(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """`bulkjob enrich` on a binary file: one error line naming it, exit 2."""
    sb = await sandbox()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\x00\x01\x02binary")
    code, err = await run_cli(
        "enrich", str(bad), "--out", str(tmp_path / "o.csv"), *cli_flags(sb), cwd=tmp_path
    )
    assert code == 2, err
    assert "error:" in err and "bad.txt" in err and "Traceback" not in err


def read_output(path: Path, fmt: str) -> list[dict[str, str]]:
    """The rows of an enrich output, CSV (one header) or JSON Lines."""
    text = path.read_text(encoding="utf-8")
    if fmt == "jsonl":
        return [json.loads(line) for line in text.splitlines()]
    records = list(csv.reader(io.StringIO(text, newline="")))
    header = records[0]
    assert header[0] == ID and all(r != header for r in records[1:]), "one header only"
    return [dict(zip(header, r, strict=True)) for r in records[1:]]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_kill_9_mid_output_then_resume(
    sandbox: SandboxFactory, tmp_path: Path, fmt: str
) -> None:
    """kill -9 once the output holds rows, then `bulkjob resume`: every row exactly once in
    the output, nothing paid twice."""
    sb = await sandbox(running_job_limit=2, finished_after=0.05)
    values = make_ids(6_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal, out = tmp_path / "run.journal", tmp_path / f"out.{fmt}"
    args = ["--journal", str(journal), "--chunk-size", "200", *cli_flags(sb)]
    proc = await start_cli("enrich", str(path), "--out", str(out), "--format", fmt, *args)
    while not (out.exists() and out.stat().st_size > 20_000):
        assert proc.returncode is None, "ended before it could be killed"
        await asyncio.sleep(0.01)
    kill_9(proc)
    await proc.wait()
    # start_cli's environment: a short proof grace for the sends the kill cut off.
    code, err = await finish_cli(await start_cli("resume", str(journal), *cli_flags(sb)))
    assert code == 0, err
    rows = read_output(out, fmt)
    assert collections.Counter(r[ID] for r in rows) == collections.Counter(values)
    assert_paid_once(sb, values)


async def test_cli_enrich_writes_csv_and_resume_of_a_done_run(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A whole `bulkjob enrich` run: one CSV with one header; resuming it adds nothing."""
    sb = await sandbox()
    values = make_ids(1_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal, out = tmp_path / "run.journal", tmp_path / "out.csv"
    proc = await start_cli(
        "enrich", str(path), "--out", str(out), "--journal", str(journal), *cli_flags(sb)
    )
    code, err = await finish_cli(proc)
    assert code == 0, err
    assert "1,000 rows" in err
    before = out.read_bytes()
    assert len(read_output(out, "csv")) == 1_000
    code, err = await run_cli("resume", str(journal), *cli_flags(sb))
    assert code == 0, err
    assert out.read_bytes() == before
    assert_paid_once(sb, values)


# -- ids from a Python iterable (ids=) and from standard input -------------------------------------


def test_a_generator_of_100k_ids_gives_one_row_per_id(tmp_path: Path) -> None:
    """``bulkjob.enrich(ids=gen())`` of 100,000 ids: one row per id, each id paid exactly
    once in the sandbox's ledger, every job's rows delivered and recorded so."""
    values = make_ids(100_000)
    journal = tmp_path / "run.journal"
    with bulkjob.Sandbox.running() as sb:
        s = settings_for(sb, chunk_size=10_000)
        it = bulkjob.enrich(ids=generate(values), settings=s, journal=journal)
        rows = list(it)
        assert_paid_once(sb, values)
    assert counts(rows) == collections.Counter(values)
    assert it.report.rows_delivered == 100_000 and len(it.report.jobs) == 10
    assert all(r.delivered_at for r in journal_rows(journal).values())


async def test_an_async_generator_through_enrich_async(sandbox: SandboxFactory) -> None:
    """``enrich_async(ids=agen())``: the async generator is read on the loop, one row per id,
    each paid once."""
    sb = await sandbox(no_match_rate=0.2)
    values = make_ids(20_000)
    s = settings_for(sb, chunk_size=2_500)
    async with bulkjob.enrich_async(ids=agenerate(values), settings=s) as it:
        rows = [row async for row in it]
    assert counts(rows) == collections.Counter(values)
    assert {row["matchStatus"] for row in rows} == {"found", "not found"}
    assert it.report.rows_delivered == 20_000
    assert_paid_once(sb, values)


async def test_cli_enrich_reads_ids_from_stdin(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """``bulkjob enrich - --out F`` (a real process) reads the ids from standard input."""
    sb = await sandbox()
    values = make_ids(3_000)
    out = tmp_path / "out.csv"
    proc = await start_cli(
        "enrich", "-", "--out", str(out), "--chunk-size", "1000", *cli_flags(sb),
        stdin=asyncio.subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    async with asyncio.timeout(90):
        _, err = await proc.communicate("".join(f"{v}\n" for v in values).encode())
    assert proc.returncode == 0, err.decode()
    rows = read_output(out, "csv")
    assert collections.Counter(r[ID] for r in rows) == collections.Counter(values)
    assert_paid_once(sb, values)


async def test_bad_items_through_ids_are_handled_as_submit_handles_them(
    sandbox: SandboxFactory,
) -> None:
    """Bad items in ``ids=``: rejected with their index, counted and sampled in the report
    exactly as ``submit_async(ids=...)`` does; the good ones come back as rows."""
    good = make_ids(3)
    items: list[object] = [good[0], 42, good[1], "not an id!", "a\nb", None, good[2]]
    sb_submit = await sandbox()
    submitted = await bulkjob.submit_async(ids=items, settings=settings_for(sb_submit))  # type: ignore[arg-type]
    sb = await sandbox()
    it = bulkjob.enrich_async(ids=items, settings=settings_for(sb))
    rows = [row async for row in it]
    assert counts(rows) == collections.Counter(good)
    r = it.report
    assert (r.ids_submitted, r.ids_invalid) == (submitted.ids_submitted, submitted.ids_invalid)
    assert r.invalid_samples == submitted.invalid_samples
    assert r.invalid_samples[0] == "ids[1]: '42': not a str (int)"
    assert_paid_once(sb, good)


async def test_strict_bad_item_through_ids_is_the_submit_error(sandbox: SandboxFactory) -> None:
    """Under strict, the first bad item of ``ids=`` is submit's InputError; nothing is sent."""
    sb = await sandbox()
    items: list[object] = [*make_ids(5), b"bytes-id"]
    s = settings_for(sb, strict=True)
    with pytest.raises(InputError, match=r"^ids\[5\]: not a str \(bytes\): b'bytes-id'$"):
        async for _ in bulkjob.enrich_async(ids=items, settings=s):
            pass
    with pytest.raises(InputError, match=r"^ids\[5\]: not a str \(bytes\): b'bytes-id'$"):
        await bulkjob.submit_async(ids=items, settings=s)  # type: ignore[arg-type]
    assert sb.ledger.ids_accepted == 0
