"""Hostile review of issue 11 (enrich): each test is a reproduction of a defect found.

Every test talks to the sandbox over HTTP; crash cases run real CLI processes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import resource
import signal
import threading
from pathlib import Path

import pytest

import bulkjob
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
from tests.test_enrich import read_output

ID = "newContactId"


def enrich_args(path: Path, out: Path, journal: Path) -> list[str]:
    """``bulkjob enrich PATH --out OUT --journal JOURNAL``: the run most tests here start."""
    return ["enrich", str(path), "--out", str(out), "--journal", str(journal)]


async def kill_when(proc: asyncio.subprocess.Process, out: Path, size: int) -> None:
    while not await asyncio.to_thread(lambda: out.exists() and out.stat().st_size > size):
        assert proc.returncode is None, "ended before it could be killed"
        await asyncio.sleep(0.005)
    kill_9(proc)
    await proc.wait()


# -- 1. --out naming the input file: the input is truncated before it is read


async def test_out_is_the_input_file(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """`bulkjob enrich ids.txt --out ids.txt`: refused (as --out = journal is), the
    input left alone. Observed: the input is truncated to 0 bytes before it is read."""
    sb = await sandbox()
    values = make_ids(300)
    path = write_ids(tmp_path / "ids.txt", values)
    before = path.read_bytes()
    code, err = await run_cli(
        *enrich_args(path, path, tmp_path / "j"),
        *cli_flags(sb),
    )
    assert path.read_bytes() == before, f"the input was overwritten (exit {code}: {err})"
    assert code == 2, err


# -- 2. resume with the output gone: truncate() extends it with NUL bytes


async def test_resume_after_the_output_was_removed(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """The output deleted (or moved) between the crash and the resume: a clear error, or
    a complete output. Observed: os.truncate(path, keep) grows the new empty file to
    ``keep`` NUL bytes, the rows of the delivered jobs are never written again."""
    sb = await sandbox(running_job_limit=2, finished_after=0.05)
    values = make_ids(3_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal, out = tmp_path / "run.journal", tmp_path / "out.csv"
    args = ["--journal", str(journal), "--chunk-size", "200", *cli_flags(sb)]
    proc = await start_cli("enrich", str(path), "--out", str(out), *args)
    await kill_when(proc, out, 80_000)
    assert any(r.delivered_at for r in journal_rows(journal).values())
    out.unlink()
    code, err = await finish_cli(await start_cli("resume", str(journal), *cli_flags(sb)))
    data = out.read_bytes() if out.exists() else b""
    assert b"\x00" not in data, f"NUL bytes in the output (exit {code})"
    if code == 0:
        rows = read_output(out, "csv")
        assert collections.Counter(r[ID] for r in rows) == collections.Counter(values)
    else:
        assert code == 2 and "out.csv" in err, err


# -- 3. close() from another thread while the consumer waits: the consumer hangs


def test_close_from_another_thread_ends_the_consumer(tmp_path: Path) -> None:
    """A watchdog thread closes a sync enrich whose consumer waits for the first job.
    Observed: close() drains the hand-over queue, the end marker included, so the
    consumer's ``queue.get()`` (no timeout) blocks forever."""
    values = make_ids(400)
    path = write_ids(tmp_path / "ids.txt", values)
    config = bulkjob.SandboxConfig(finished_after=30.0)
    with bulkjob.Sandbox.running(config) as sb:
        it = bulkjob.enrich([str(path)], settings=settings_for(sb, drain_timeout=1.0))
        ended = threading.Event()
        got: list[object] = []

        def consume() -> None:
            try:
                got.extend(it)
            except BaseException as exc:
                got.append(exc)
            finally:
                ended.set()

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        while sb.ledger.ids_accepted < len(values):  # the run is waiting for its jobs
            threading.Event().wait(0.01)
        it.close()
        # A hang detector, not a timing assertion: the consumer must end at all.
        assert ended.wait(60), "the consumer still waits after close() from another thread"


# -- 4. a full disk (RLIMIT_FSIZE): one error line, resumable


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (700_000, 700_000))


async def test_output_hits_a_file_size_limit(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """Writing the output fails (EFBIG, as ENOSPC would): one `error:` line naming the
    output, no 'internal error', and the run resumable once there is room."""
    sb = await sandbox(finished_after=0.02)
    values = make_ids(20_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal, out = tmp_path / "run.journal", tmp_path / "out.csv"
    proc = await start_cli(
        *enrich_args(path, out, journal),
        "--chunk-size",
        "500",
        *cli_flags(sb),
        preexec_fn=_limit_file_size,
    )
    code, err = await finish_cli(proc)
    assert code != 0
    assert "internal error" not in err and "Traceback" not in err, err
    # The output or the journal (whichever meets the limit first) is named in one error.
    assert "out.csv" in err or "run.journal" in err, err
    code, err = await finish_cli(await start_cli("resume", str(journal), *cli_flags(sb)))
    assert code == 0, err
    rows = read_output(out, "csv")
    assert collections.Counter(r[ID] for r in rows) == collections.Counter(values)
    assert_paid_once(sb, values)


# -- 5. retrieve_company_details changed on a resume: columns change mid-output


async def test_resume_with_other_company_details_flag(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """kill -9, then the same `bulkjob enrich` with --retrieve-company-details: refused as
    another run (the columns differ), or one consistent output. Observed: it resumes;
    the new jobs have other columns, the CSV output can never be finished."""
    sb = await sandbox(running_job_limit=2, finished_after=0.05)
    values = make_ids(4_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal, out = tmp_path / "run.journal", tmp_path / "out.csv"
    args = ["--journal", str(journal), "--chunk-size", "200", *cli_flags(sb)]
    proc = await start_cli("enrich", str(path), "--out", str(out), *args)
    await kill_when(proc, out, 20_000)
    again = ["enrich", str(path), "--out", str(out), *args, "--retrieve-company-details"]
    code, err = await finish_cli(await start_cli(*again))
    if code == 2:  # refused as another run: fine
        return
    assert code == 0, err
    rows = read_output(out, "csv")
    assert collections.Counter(r[ID] for r in rows) == collections.Counter(values)


# -- 6. failed jobs on a resume


async def test_failed_jobs_reported_once_on_resume(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """An enrich whose jobs partly fail ends with exit 1 naming them; `bulkjob resume`
    says the same (each failed job once) and adds no row."""
    sb = await sandbox(job_fail_rate=0.3, finished_after=0.02, seed=5)
    values = make_ids(2_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal, out = tmp_path / "run.journal", tmp_path / "out.csv"
    report = tmp_path / "report.json"
    proc = await start_cli(
        *enrich_args(path, out, journal),
        "--report",
        str(report),
        "--chunk-size",
        "200",
        *cli_flags(sb),
    )
    code, err = await finish_cli(proc)
    assert code != 0 and "ids have no rows" in err, err
    first = json.loads(report.read_text())
    failed = [j["job_id"] for j in first["failed_jobs"]]
    assert failed and len(failed) == len(set(failed))
    rows = read_output(out, "csv")
    before = out.read_bytes()
    code2, err2 = await finish_cli(
        await start_cli("resume", str(journal), "--report", str(report), *cli_flags(sb))
    )
    assert code2 == code, err2
    again = json.loads(report.read_text())
    failed2 = [j["job_id"] for j in again["failed_jobs"]]
    assert sorted(failed2) == sorted(failed), (failed, failed2)
    assert out.read_bytes() == before
    n_failed_ids = sum(j["ids"] for j in first["failed_jobs"])
    assert len(rows) + n_failed_ids == len(values)
    assert_paid_once(sb, values)


# -- 7. SIGINT / SIGTERM: exit 130, then resume to exactly once


async def test_sigterm_then_resume(sandbox: SandboxFactory, tmp_path: Path) -> None:
    sb = await sandbox(running_job_limit=2, finished_after=0.05)
    values = make_ids(4_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal, out = tmp_path / "run.journal", tmp_path / "out.jsonl"
    args = ["--journal", str(journal), "--chunk-size", "200", "--format", "jsonl", *cli_flags(sb)]
    proc = await start_cli("enrich", str(path), "--out", str(out), *args)
    while not (out.exists() and out.stat().st_size > 20_000):
        assert proc.returncode is None
        await asyncio.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    code, err = await finish_cli(proc)
    assert code == 130, err
    assert "resume" in err
    code, err = await finish_cli(await start_cli("resume", str(journal), *cli_flags(sb)))
    assert code == 0, err
    rows = read_output(out, "jsonl")
    assert collections.Counter(r[ID] for r in rows) == collections.Counter(values)
    assert_paid_once(sb, values)


# -- 8. kill -9 at many points, resumed each time


async def test_repeated_kill_9_then_resume(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """Killed again and again at growing output sizes, each time resumed: every row once."""
    sb = await sandbox(running_job_limit=3, finished_after=0.02, finished_jitter=0.9)
    values = make_ids(8_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal, out = tmp_path / "run.journal", tmp_path / "out.csv"
    flags = cli_flags(sb)
    proc = await start_cli(
        *enrich_args(path, out, journal),
        "--chunk-size",
        "100",
        *flags,
    )
    size = 5_000
    for _ in range(6):
        try:
            await kill_when(proc, out, size)
        except AssertionError:
            break
        size = out.stat().st_size + 7_000
        proc = await start_cli("resume", str(journal), *flags)
    code, err = await finish_cli(proc)
    if code != 0:
        code, err = await finish_cli(await start_cli("resume", str(journal), *flags))
    assert code == 0, err
    rows = read_output(out, "csv")
    assert collections.Counter(r[ID] for r in rows) == collections.Counter(values)
    assert_paid_once(sb, values)


# -- 9. a results file cut short


async def test_cut_results_then_resume(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """A results file served cut short: the rows of the job are not lost; after the
    run (and a resume if it stopped) the output holds every row once."""
    sb = await sandbox(results_cut_rate=0.3, finished_after=0.02, seed=2)
    values = make_ids(2_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal, out = tmp_path / "run.journal", tmp_path / "out.csv"
    flags = cli_flags(sb)
    code, err = await run_cli(
        *enrich_args(path, out, journal),
        "--chunk-size",
        "200",
        *flags,
    )
    tries = 0
    while code != 0 and tries < 20:
        assert "Traceback" not in err
        code, err = await run_cli("resume", str(journal), *flags)
        tries += 1
    assert code == 0, err
    rows = read_output(out, "csv")
    assert collections.Counter(r[ID] for r in rows) == collections.Counter(values)
    assert_paid_once(sb, values)
    print("resumes needed:", tries, "cuts:", sb.ledger.faults["results_cut"])


# -- 10. the library's enrich on a CLI enrich journal


async def test_library_enrich_on_a_cli_journal(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """bulkjob.enrich(journal=J) on a `bulkjob enrich --out` journal marks jobs delivered
    (with no out_bytes): `bulkjob resume J` then never writes those rows to --out."""
    sb = await sandbox(running_job_limit=2, finished_after=0.05)
    values = make_ids(3_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal, out = tmp_path / "run.journal", tmp_path / "out.csv"
    flags = cli_flags(sb)
    proc = await start_cli(
        *enrich_args(path, out, journal),
        "--chunk-size",
        "200",
        *flags,
    )
    await kill_when(proc, out, 20_000)
    s = settings_for(sb, chunk_size=200)
    try:
        lib = [row async for row in bulkjob.enrich_async([str(path)], settings=s, journal=journal)]
    except bulkjob.BulkJobError:
        return  # refused: another kind of run's journal
    assert lib
    code, err = await run_cli("resume", str(journal), *flags)
    assert code == 0, err
    rows = read_output(out, "csv")
    assert collections.Counter(r[ID] for r in rows) == collections.Counter(values)


# -- 11. stdin enrich, killed, resumed


async def test_stdin_enrich_kill_9_then_resume(sandbox: SandboxFactory, tmp_path: Path) -> None:
    sb = await sandbox(running_job_limit=2, finished_after=0.05)
    values = make_ids(4_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal, out = tmp_path / "run.journal", tmp_path / "out.csv"
    flags = cli_flags(sb)
    with path.open("rb") as stdin:
        proc = await start_cli(
            "enrich",
            "-",
            "--out",
            str(out),
            "--journal",
            str(journal),
            "--chunk-size",
            "200",
            *flags,
            stdin=stdin,
        )
        await kill_when(proc, out, 30_000)
    proc = await start_cli("resume", str(journal), *flags, "-v")
    try:
        async with asyncio.timeout(60):  # a hang detector: the resume of 4,000 ids never ends
            _, raw = await proc.communicate()
    except TimeoutError:
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(5)
        kill_9(proc)
        _, raw = await proc.communicate()
        raise AssertionError("resume hung:\n" + raw.decode()[-5000:]) from None
    code, err = proc.returncode, raw.decode()
    assert code == 0, err
    rows = read_output(out, "csv")
    assert collections.Counter(r[ID] for r in rows) == collections.Counter(values)
    assert_paid_once(sb, values)


# -- 12. ids= generators: raising mid-way, non-str items


async def test_ids_generator_raising_midway(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """The generator's own exception reaches the consumer; nothing is paid."""
    sb = await sandbox()

    def gen() -> object:
        yield from make_ids(20_000)
        raise RuntimeError("cursor lost")

    journal = tmp_path / "run.journal"
    with pytest.raises(RuntimeError, match="cursor lost"):
        list(bulkjob.enrich(ids=gen(), settings=settings_for(sb), journal=journal))
    assert sb.ledger.ids_accepted == 0


async def test_ids_with_non_str_items(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """Non-str items are rejected with ids[i]; the others come back once each."""
    sb = await sandbox()
    good = make_ids(500)
    items: list[object] = [*good[:250], 42, None, b"x" * 64, *good[250:]]
    it = bulkjob.enrich_async(ids=items, settings=settings_for(sb))
    rows = [row async for row in it]
    assert collections.Counter(r[ID] for r in rows) == collections.Counter(good)
    assert it.report.ids_invalid == 3, it.report
    assert all("ids[" in origin for origin in it.report.invalid_samples), it.report
    assert_paid_once(sb, good)


# -- 13. a results file cut short stops the whole library run


async def test_library_enrich_survives_one_cut_results_file(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """One results response cut short (a transient network/server fault): the download
    is tried again, every row comes back. Observed: ProtocolError, the run stopped
    (submission too) as if the consumer had quit."""
    sb = await sandbox(results_cut_rate=0.15, finished_after=0.02, seed=4)
    values = make_ids(2_000)
    it = bulkjob.enrich_async(ids=values, settings=settings_for(sb, chunk_size=200))
    rows = [row async for row in it]
    assert collections.Counter(r[ID] for r in rows) == collections.Counter(values)
