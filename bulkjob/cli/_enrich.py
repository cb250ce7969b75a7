"""``bulkjob enrich INPUT... --out FILE``: submit, and write every finished job's rows into
one output as they arrive (CSV with one header, or JSON Lines).

The output is crash-safe. After each job's rows are written (flushed and fsynced), the
journal records the job delivered together with the output's length then; a resume
(``bulkjob resume JOURNAL``, or the same ``enrich`` again) first cuts the output back to the
length recorded last, so rows of a job half-written when the process died (``kill -9``)
are written again once, never twice. The journal records that the run is an enrich, with
its ``--out`` and ``--format``, so that ``bulkjob resume`` goes on the same way.

The output holds the results CSV's columns and nothing else (no job id column): its CSV
is what merging the jobs' results files would give, in the order the jobs finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Any, TextIO

import click

from .._enrich import Enrichment, JobRows
from .._errors import BulkJobError, ConfigError, ExitCode, OutputError, ProtocolError
from .._journal import Journal
from .._progress import Progress
from .._report import RunReport
from .._rerun import open_for_submit
from .._settings import Settings
from ._commands import (
    Common,
    _copy_stdin,
    _distinct,
    _submit_dry_run,
    default_journal,
    finish,
)
from ._options import FILE_PATH, INPUT_PATH, run_options, submit_options
from ._progress_line import ProgressLine
from ._signals import run_command

__all__ = ["FORMATS", "OutputWriter", "enrich", "run_enrich"]

FORMATS = ("csv", "jsonl")
#: The journal's run-level key that marks an enrich run: {"out": path, "format": ...}.
ENRICH_META = "enrich"


class OutputWriter:
    """The one output file, appended to job by job; cut back to ``keep`` bytes first."""

    def __init__(self, path: Path, fmt: str, keep: int) -> None:
        self.path = path
        self.fmt = fmt
        self.header: list[str] | None = None
        try:
            size = path.stat().st_size if path.exists() else 0
        except OSError as exc:
            raise ConfigError(f"--out {path}: cannot read it: {exc.strerror}") from None
        if size < keep:  # removed or cut since: the delivered jobs' rows are not all there
            raise ConfigError(
                f"--out {path}: it holds {size:,} bytes, but the journal recorded {keep:,} "
                "delivered: restore it, or start a new run with another --out and --journal"
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab"):
                pass
            os.truncate(path, keep)  # what a killed process wrote after its last record
            if fmt == "csv" and keep:
                with path.open(newline="", encoding="utf-8-sig") as fh:
                    self.header = next(csv.reader(fh), None)
            self._fh: TextIO = path.open("a", newline="", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--out {path}: cannot write: {exc.strerror}") from None
        self._csv = csv.writer(self._fh)

    def write_job(self, job: JobRows) -> tuple[int, int]:
        """Append ``job``'s rows; (rows written, the output's length), once durable.
        A write that fails (a full disk) is one error naming the output; the journal
        still says where its last whole job ends, so a resume cuts the rest and goes on."""
        try:
            return self._write_job(job)
        except OSError as exc:
            raise OutputError(str(self.path), f"cannot be written: {exc.strerror}") from None

    def _write_job(self, job: JobRows) -> tuple[int, int]:
        n = 0
        with job.path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is not None:
                if self.fmt == "jsonl":
                    write = self._fh.write
                    for record in reader:
                        write(json.dumps(dict(zip(header, record, strict=False))) + "\n")
                        n += 1
                else:
                    if self.header is None:
                        self.header = header
                        self._csv.writerow(header)
                    elif header != self.header:
                        raise ProtocolError(
                            f"job {job.info.job_id}: its results have other columns "
                            f"({', '.join(header)}) than the output's ({', '.join(self.header)})"
                        )
                    for record in reader:
                        self._csv.writerow(record)
                        n += 1
        self._fh.flush()
        os.fsync(self._fh.fileno())
        return n, os.fstat(self._fh.fileno()).st_size

    def close(self) -> None:
        # After a failed write, what is left in the buffer fails again here: the journal
        # says where the last whole job ends, and a resume cuts the rest.
        with contextlib.suppress(OSError):
            self._fh.close()


class _EnrichLine:
    """The progress line of an enrich: the run's numbers, then jobs and rows."""

    def __init__(self, line: ProgressLine) -> None:
        self.line = line
        self.core: Enrichment | None = None
        self.rows = 0
        self._last: Progress | None = None

    def update(self, progress: Progress) -> None:
        self._last = progress
        self.draw()

    def draw(self) -> None:
        core = self.core
        if self._last is None or core is None:
            return
        self.line.show(
            f"{self.line.render(self._last)} · jobs running {core.jobs_open:,}, finished "
            f"{core.jobs_finished:,} · {self.rows:,} rows written"
        )

    def close(self) -> None:
        """The run's end is not the command's: the line ends with the command."""


def run_enrich(
    common: Common,
    journal: Journal,
    settings: Settings,
    inputs: list[str],
    *,
    out: Path,
    fmt: str,
    resume: bool,
    report_path: str | None,
) -> int:
    """Run (or resume) an enrich into ``out``; the exit code."""
    line = common.line()
    common.configure(settings, line)
    sink = _EnrichLine(line)
    delivered = [r for r in journal.rows() if r.delivered_at]
    if any(r.out_bytes is None for r in delivered):
        raise ConfigError(
            f"journal {journal.path}: some of its jobs were delivered elsewhere (by the "
            f"library's enrich), not to {out}: that output cannot be completed"
        )
    keep = max((r.out_bytes or 0 for r in delivered), default=0)
    writer = OutputWriter(out, fmt, keep)
    core: Enrichment | None = None
    main: asyncio.Task[Any] | None = None

    async def go() -> RunReport:
        nonlocal core, main
        main = asyncio.current_task()
        core = sink.core = Enrichment(
            settings, inputs, journal=journal, resume=resume, progress=sink
        )
        async with contextlib.aclosing(core.jobs()) as jobs:
            async for job in jobs:
                rows, size = await asyncio.to_thread(writer.write_job, job)
                await core.delivered(job, rows, out_bytes=size)
                sink.rows += rows
                sink.draw()
        return core.report

    def first() -> None:
        click.echo(
            "\nstopping: letting requests in flight finish (signal again to stop now)", err=True
        )
        if core is not None:
            core.runner.request_stop("interrupted", "interrupted by signal")
        if main is not None:
            main.cancel()  # the rows written so far are recorded; the rest on resume

    try:
        with line:
            report = run_command(go, first)
    except KeyboardInterrupt:
        click.echo(f"resume with: bulkjob resume {journal.path}", err=True)
        return ExitCode.INTERRUPTED
    except BulkJobError:
        if core is not None and core.report.journal:
            finish(core.report, report_path)
        raise
    finally:
        writer.close()
    click.echo(f"wrote {report.rows_delivered:,} rows to {out}", err=True)
    return finish(report, report_path)


@click.command("enrich")
@click.argument("inputs", nargs=-1, metavar="[INPUT]...", type=INPUT_PATH)
@click.option(
    "--out", required=True, metavar="FILE", type=FILE_PATH, help="the one output of every row"
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="csv",
    show_default=True,
    help="CSV with one header, or JSON Lines (one object per row)",
)
@run_options
@submit_options
@click.option(
    "--journal",
    metavar="PATH",
    type=FILE_PATH,
    help="the run's journal (default: beside --report, else ./bulkjob-<time>.journal); "
    "one of this same enrich is resumed",
)
def enrich(**kw: Any) -> int:
    """Submit every id of the INPUT files and write each finished job's rows to --out as
    they arrive; resumable (bulkjob resume JOURNAL), no row written twice."""
    common = Common.take(kw)
    settings = common.settings().replace(on_queue_full="wait")
    inputs = list(kw["inputs"]) or ["-"]
    if kw["dry_run"]:
        common.configure(settings)
        return _submit_dry_run(settings, inputs, kw["journal"], True)
    report_path: str | None = kw["report"]
    path = Path(kw["journal"]) if kw["journal"] else default_journal(report_path)
    _distinct(path, report_path)
    out = Path(kw["out"]).resolve()
    if out in {Path(p).resolve() for p in (path, report_path or path)}:
        raise ConfigError(f"--out {kw['out']}: that is the journal or the report; choose another")
    if out in {Path(p).resolve() for p in inputs if p != "-"}:
        raise ConfigError(f"--out {kw['out']}: that is an input; choose another")
    journal, resuming = open_for_submit(
        path, "bulkjob enrich", settings, inputs, resume_if_exists=True
    )
    try:
        if resuming:
            recorded = journal.meta_or(ENRICH_META)
            if not isinstance(recorded, dict) or recorded.get("out") != str(out):
                raise ConfigError(
                    f"--journal {path}: it holds a run writing elsewhere "
                    f"({recorded.get('out') if isinstance(recorded, dict) else 'no enrich'}): "
                    f"`bulkjob resume {path}` goes on with it, or choose another --journal"
                )
            fmt = str(recorded.get("format", "csv"))
            _same_columns(recorded, settings, str(path))
            click.echo(f"resuming {path}: it holds this same enrich", err=True)
        else:
            if "-" in inputs:
                inputs = [str(_copy_stdin(path)) if p == "-" else p for p in inputs]
            fmt = kw["fmt"]
            resolved = [str(Path(p).resolve()) if p != "-" else p for p in inputs]
            journal.start(settings.public(), resolved)
            journal.set_meta(
                ENRICH_META,
                {
                    "out": str(out),
                    "format": fmt,
                    "company_details": settings.retrieve_company_details,
                },
            )
            click.echo(f"journal: {path} (resume with: bulkjob resume {path})", err=True)
        return run_enrich(
            common,
            journal,
            settings,
            inputs,
            out=out,
            fmt=fmt,
            resume=resuming,
            report_path=report_path,
        )
    finally:
        journal.close_sync()


def _same_columns(recorded: dict[str, Any], settings: Settings, path: str) -> None:
    """One output has one set of columns: ``retrieve_company_details`` (which changes them)
    stays what the run began with."""
    if "company_details" in recorded and (
        bool(recorded["company_details"]) != settings.retrieve_company_details
    ):
        raise ConfigError(
            f"--journal {path}: its run was begun "
            f"{'with' if recorded['company_details'] else 'without'} "
            "--retrieve-company-details, which changes the output's columns; keep it so"
        )


def resume_enrich(
    common: Common, journal: Journal, settings: Settings, report_path: str | None
) -> int | None:
    """``bulkjob resume`` of an enrich run: go on writing its output (None: not one)."""
    recorded = journal.meta_or(ENRICH_META)
    if not isinstance(recorded, dict):
        return None
    click.echo(f"resuming {journal.path} (enrich into {recorded['out']})", err=True)
    company = recorded.get("company_details", settings.retrieve_company_details)
    return run_enrich(
        common,
        journal,
        settings.replace(on_queue_full="wait", retrieve_company_details=bool(company)),
        journal.inputs(),
        out=Path(str(recorded["out"])),
        fmt=str(recorded.get("format", "csv")),
        resume=True,
        report_path=report_path,
    )
