"""The subcommands: each reads its settings through the one loader, runs, and says what
happened. Errors propagate to :func:`bulkjob.cli.main`, which maps them to exit codes."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from .. import _lifecycle as lifecycle
from .._errors import STOP_EXIT_CODES, ConfigError, ExitCode, JournalError
from .._journal import Journal
from .._logging import configure_logging, redact
from .._plan import plan
from .._report import RunReport
from .._rerun import open_for_dry_run, open_for_submit
from .._runner import Runner
from .._settings import Settings
from .._window_store import check_store, render_state, state_dict, window_state
from ._options import (
    DIR_PATH,
    FILE_PATH,
    INPUT_PATH,
    api_options,
    output_options,
    run_options,
    submit_options,
)
from ._progress_line import ProgressLine, progress_logs
from ._settings import command_settings
from ._signals import run_command

__all__ = ["COMMANDS", "default_journal", "finish"]

_FIELDS = frozenset(f.name for f in dataclasses.fields(Settings))
#: Stops after which ``bulkjob resume`` continues the run.
_RESUMABLE = {
    "quota",
    "queue_full",
    "auth",
    "transport",
    "interrupted",
    "ambiguous",
    "protocol",
    "journal",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Common:
    """What every command reads besides its settings."""

    config: str | None
    debug: bool
    verbose: bool
    progress: bool
    flags: dict[str, object]

    @classmethod
    def take(cls, kw: dict[str, Any]) -> Common:
        """Pop the shared options from a command's keyword arguments."""
        flags = {k: kw.pop(k) for k in list(kw) if k in _FIELDS}
        return cls(
            config=kw.pop("config", None),
            debug=kw.pop("debug", False),
            verbose=kw.pop("verbose", False),
            progress=kw.pop("progress", True),
            flags=flags,
        )

    def settings(self, recorded: dict[str, object] | None = None) -> Settings:
        """flags > env > config file > (the journal's record) > defaults, through the one
        loader the library uses too; every secret is registered for redaction at once."""
        return command_settings(
            self.flags,
            config=self.config,
            recorded=recorded,
            debug=self.debug,
            log_format=self.flags.get("log_format"),  # type: ignore[arg-type]
        )

    def configure(self, settings: Settings, progress: ProgressLine | None = None) -> None:
        """Logging to stderr at the level the flags ask for."""
        level = logging.DEBUG if self.debug else logging.INFO if self.verbose else logging.WARNING
        # With a live progress line, log lines go through it so they print above it.
        # Without one (stderr not a terminal), run.progress log lines are the sign of life.
        stream = progress if progress is not None and progress.enabled else sys.stderr
        configure_logging(
            settings.log_format,
            level=level,
            stream=stream,  # type: ignore[arg-type]
            progress=progress_logs(self.progress),
        )

    def line(self) -> ProgressLine:
        """The live progress line (a no-op off a terminal or with --no-progress)."""
        return ProgressLine(enabled=None if self.progress else False)


@click.command()
@click.argument("inputs", nargs=-1, metavar="[INPUT]...", type=INPUT_PATH)
@run_options
@submit_options
@click.option(
    "--journal",
    metavar="PATH",
    type=FILE_PATH,
    help="the run's journal (default: beside --report, else ./bulkjob-<time>.journal)",
)
@click.option(
    "--resume-if-exists",
    is_flag=True,
    help="if --journal already holds this same run (same inputs and chunking), resume it; "
    "another run's journal is still refused",
)
@click.option("--wait", "wait_jobs", is_flag=True, help="then wait until every job is final")
def submit(**kw: Any) -> int:
    """Submit every id of the INPUT files (plain, CSV/TSV, gzip or zstd; '-' or none: stdin)."""
    common = Common.take(kw)
    settings = common.settings()
    inputs = list(kw["inputs"]) or ["-"]
    if kw["dry_run"]:
        common.configure(settings)
        return _submit_dry_run(settings, inputs, kw["journal"], kw["resume_if_exists"])
    progress = common.line()
    common.configure(settings, progress)
    report_path: str | None = kw["report"]
    path = Path(kw["journal"]) if kw["journal"] else default_journal(report_path)
    _distinct(path, report_path)
    # The throttle store reached and checked before any file is written: one pointing
    # nowhere (a closed port, a locked file) is a config error that leaves nothing behind.
    settings.require_credentials()
    run_command(lambda: check_store(settings))
    # Locked before anything is written; with --resume-if-exists, this run's journal reopened.
    journal, resuming = open_for_submit(
        path, "bulkjob submit", settings, inputs, resume_if_exists=kw["resume_if_exists"]
    )
    try:
        if "-" in inputs:  # never when resuming: standard input is not reopened
            inputs = [str(_copy_stdin(path)) if p == "-" else p for p in inputs]
        if resuming:
            click.echo(f"resuming {path}: it holds this same run", err=True)
        else:
            click.echo(f"journal: {path} (resume with: bulkjob resume {path})", err=True)
        runner = Runner(settings, inputs, progress=progress, journal=journal, resume=resuming)
        code = finish(run_with_signals(runner), report_path)
        if kw["wait_jobs"] and code in (ExitCode.OK, ExitCode.REJECTED):
            with progress:  # the line ends before what follows, whatever happens
                final = run_command(
                    lambda: lifecycle.wait(journal, settings, progress=progress.update_status)
                )
            click.echo(final.render(), err=True)
        return code
    finally:
        journal.close_sync()


@click.command()
@click.argument("journal", metavar="JOURNAL", type=FILE_PATH)
@run_options
@click.option(
    "--resubmit-ambiguous",
    "ambiguous",
    flag_value="resubmit",
    default=None,
    help="send chunks of unknown outcome again",
)
@click.option(
    "--abandon-ambiguous",
    "ambiguous",
    flag_value="abandon",
    help="give up chunks of unknown outcome",
)
def resume(**kw: Any) -> int:
    """Continue a stopped run from its JOURNAL."""
    common = Common.take(kw)
    report_path: str | None = kw["report"]
    _distinct(kw["journal"], report_path)
    dry = bool(kw["dry_run"])
    # Locked even for a dry run: what it counts as settled cannot change under it.
    journal = Journal.open(kw["journal"], "bulkjob resume")
    try:
        settings = common.settings(journal.recorded_settings())
        if dry:
            common.configure(settings)
            return _dry_run(settings, journal.inputs(), journal)
        from ._enrich import resume_enrich  # imports this module

        enriched = resume_enrich(common, journal, settings, report_path)
        if enriched is not None:  # an enrich run: its output goes on too
            return enriched
        progress = common.line()
        common.configure(settings, progress)
        click.echo(f"resuming {kw['journal']}", err=True)
        runner = Runner(
            settings,
            journal.inputs(),
            progress=progress,
            journal=journal,
            resume=True,
            ambiguous=kw["ambiguous"] or "stop",
        )
        return finish(run_with_signals(runner), report_path)
    finally:
        journal.close_sync()


def _submit_dry_run(
    settings: Settings, inputs: Sequence[str], path: str | None, resume_if_exists: bool
) -> int:
    """What the submit would send: a new run's all, a resumed journal's rest, or its refusal."""
    journal = None
    if path is not None:
        journal = open_for_dry_run(
            path, "bulkjob submit --dry-run", settings, inputs, resume_if_exists=resume_if_exists
        )
    try:
        return _dry_run(settings, inputs, journal)
    finally:
        if journal is not None:
            journal.close_sync()


def _dry_run(settings: Settings, inputs: Sequence[str], journal: Journal | None) -> int:
    found = run_command(lambda: plan(settings, inputs, journal=journal))
    click.echo(found.render())
    return ExitCode.OK


_Body = Callable[[Journal, Settings, dict[str, Any]], int]


def _journal_command(
    name: str, *, readonly: Callable[[dict[str, Any]], bool]
) -> Callable[[_Body], Callable[..., int]]:
    """Open the journal (locked unless read-only), load the run's settings, run ``body``."""

    def wrap(body: _Body) -> Callable[..., int]:
        def command(**kw: Any) -> int:
            common = Common.take(kw)
            kw["common"] = common
            journal = Journal.open(kw["journal"], f"bulkjob {name}", readonly=readonly(kw))
            try:
                settings = common.settings(journal.recorded_settings())
                kw["line"] = line = common.line()
                common.configure(settings, line)
                with line:  # a wait's line ends before what follows, whatever happens
                    return body(journal, settings, kw)
            except KeyboardInterrupt:
                click.echo(
                    f"error: interrupted; the journal is consistent: run `bulkjob {name} "
                    f"{kw['journal']}` again to go on",
                    err=True,
                )
                return ExitCode.INTERRUPTED
            finally:
                journal.close_sync()

        command.__name__ = name
        command.__doc__ = body.__doc__
        return command

    return wrap


@click.command("status")
@click.argument("journal", metavar="JOURNAL", type=FILE_PATH)
@click.option("--refresh", is_flag=True, help="ask the server for the jobs' status")
@api_options
@_journal_command("status", readonly=lambda kw: not kw["refresh"])
def status(journal: Journal, settings: Settings, kw: dict[str, Any]) -> int:
    """Chunks by state and jobs by server status, from the JOURNAL."""
    st = run_command(lambda: lifecycle.status(journal, settings, refresh=kw["refresh"]))
    click.echo(st.render())
    return ExitCode.OK


@click.command("wait")
@click.argument("journal", metavar="JOURNAL", type=FILE_PATH)
@click.option("--poll", type=float, metavar="SECONDS", help="the first poll interval")
@click.option("--timeout", type=float, metavar="SECONDS", help="give up after (exit 9)")
@click.option(
    "--webhook-listen",
    "webhook_listen",
    metavar="HOST:PORT",
    help="hear job finishes on this address, as the submit did (polling stays)",
)
@api_options
@_journal_command("wait", readonly=lambda kw: False)
def wait(journal: Journal, settings: Settings, kw: dict[str, Any]) -> int:
    """Prove lost answers, then poll the JOURNAL's jobs until all are final."""
    done = run_command(
        lambda: lifecycle.wait(
            journal,
            settings,
            poll_interval=kw["poll"],
            progress=kw["line"].update_status,
            timeout=kw["timeout"],
        )
    )
    kw["line"].close()
    click.echo(done.render())
    return ExitCode.OK


@click.command("results")
@click.argument("journal", metavar="JOURNAL", type=FILE_PATH)
@click.option(
    "--out", required=True, metavar="DIR", type=DIR_PATH, help="where the per-job CSVs go"
)
@click.option(
    "--merge",
    metavar="FILE|-",
    type=INPUT_PATH,
    help="also copy every results file into one CSV, header once ('-': to stdout, and "
    "every message to stderr)",
)
@click.option(
    "--keep-parts/--no-keep-parts",
    default=True,
    show_default=True,
    help="keep the per-job results files once --merge is complete",
)
@api_options
@_journal_command("results", readonly=lambda kw: False)
def results(journal: Journal, settings: Settings, kw: dict[str, Any]) -> int:
    """Download the finished jobs' result CSVs (resumably), and merge them if asked."""
    to_stdout = kw["merge"] == "-"
    merge = sys.stdout.buffer if to_stdout else Path(kw["merge"]) if kw["merge"] else None
    say_err = to_stdout  # with --merge -, stdout holds only CSV
    try:
        got = run_command(
            lambda: lifecycle.results(
                journal, settings, Path(kw["out"]), merge=merge, keep_parts=kw["keep_parts"]
            )
        )
    except BrokenPipeError:
        if not to_stdout:
            raise
        # The reader went away (`| head`): not our failure. What is still buffered for
        # stdout would fail again at exit, so stdout now leads nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        click.echo("error: stdout was closed before the merged CSV was complete", err=True)
        return ExitCode.INTERNAL
    click.echo(
        f"downloaded {got.downloaded:,} result file(s), {got.already_present:,} already "
        f"present, in {kw['out']}",
        err=say_err,
    )
    if merge is not None:
        into = "stdout" if to_stdout else str(got.merged)
        click.echo(
            f"merged {len(got.files):,} file(s), {got.bytes_merged:,} bytes, into {into}",
            err=say_err,
        )
    if got.removed:
        click.echo(f"removed the {len(got.removed):,} merged result file(s)", err=say_err)
    if got.not_finished:
        click.echo(
            f"{len(got.not_finished):,} job(s) not finished yet: run `bulkjob wait "
            f"{kw['journal']}` then `results` again",
            err=True,
        )
    if got.failed:
        click.echo(f"{len(got.failed):,} job(s) failed: chunks {_seqs(got.failed)}", err=True)
    return ExitCode.OK


@click.command("cancel")
@click.argument("journal", metavar="JOURNAL", type=FILE_PATH)
@api_options
@_journal_command("cancel", readonly=lambda kw: False)
def cancel(journal: Journal, settings: Settings, kw: dict[str, Any]) -> int:
    """Cancel the JOURNAL's jobs that are not yet processing."""
    gone = run_command(lambda: lifecycle.cancel(journal, settings))
    click.echo(
        f"cancelled {len(gone.cancelled):,} job(s) ({gone.ids_cancelled:,} ids); "
        f"{len(gone.not_cancellable):,} already processing; "
        f"{len(gone.skipped):,} skipped (not queued)"
    )
    return ExitCode.OK


@click.command("demo")
@click.option("--ids", type=click.IntRange(min=1), default=200_000, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--dir", "directory", metavar="DIR", help="where to write the ids and the report")
@output_options
def demo(**kw: Any) -> int:
    """Submit a generated file to an embedded sandbox, and check its ledger."""
    from ._demo import demo as run_demo

    common = Common.take(kw)
    return run_demo(
        ids=kw["ids"], seed=kw["seed"], directory=kw["directory"], progress=common.progress
    )


@click.command(
    "sandbox",
    add_help_option=False,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sandbox(args: tuple[str, ...]) -> int:
    """Serve a local look-alike of the API (see bulkjob sandbox --help)."""
    from ..sandbox._cli import sandbox_main

    return sandbox_main(list(args))


@click.command("throttle")
@click.option("--json", "as_json", is_flag=True, help="print the window as JSON")
@api_options
def throttle(**kw: Any) -> int:
    """The account's throttle window as its store sees it (no request is sent)."""
    common = Common.take(kw)
    settings = common.settings()
    common.configure(settings)
    settings.require_credentials()  # the account is named by them (as a hash)
    state = run_command(lambda: window_state(settings))
    if kw["as_json"]:
        click.echo(json.dumps(state_dict(state), indent=2))
    else:
        click.echo(render_state(state))
    return ExitCode.OK


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> int:
    """Print the shell completion script, e.g. eval "$(bulkjob completion bash)"."""
    from click.shell_completion import get_completion_class

    from ._main import cli

    cls = get_completion_class(shell)
    assert cls is not None  # the choice lists only shells click knows
    click.echo(cls(cli, {}, "bulkjob", "_BULKJOB_COMPLETE").source())
    return ExitCode.OK


COMMANDS = (
    submit,
    resume,
    status,
    wait,
    results,
    cancel,
    throttle,
    demo,
    sandbox,
    completion,
)


def _distinct(journal: str | Path, report: str | None) -> None:
    """The report must not overwrite the journal (or its lock, its stdin copy...)."""
    if report is None:
        return
    real = os.path.realpath(journal)
    if os.path.realpath(report) in {real, *(real + s for s in (".lock", ".stdin", "-wal", "-shm"))}:
        raise ConfigError(f"--report {report}: that is the journal's own file; choose another")


def _copy_stdin(journal: Path) -> Path:
    """Standard input can't be read twice: keep a copy beside the journal for resume."""
    copy = journal.with_name(journal.name + ".stdin")
    try:
        with copy.open("wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
    except OSError as exc:
        raise JournalError(str(copy), f"cannot keep a copy of stdin: {exc.strerror}") from None
    return copy


def _seqs(seqs: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in seqs[:20])
    return shown + (f" and {len(seqs) - 20:,} more" if len(seqs) > 20 else "")


def default_journal(report: str | None) -> Path:
    """Beside the report when there is one, else a timestamped file here."""
    if report:
        path = Path(report)
        journal = path.with_name(path.stem + ".journal")
        # --report run.journal must not name the journal itself: keep both.
        return journal if journal != path else path.with_name(path.name + ".run")
    return Path(f"bulkjob-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.journal")


def run_with_signals(runner: Runner) -> RunReport:
    """Run; the first SIGINT/SIGTERM stops cleanly, a second one stops at once."""

    def first() -> None:
        click.echo(
            "\nstopping: letting requests in flight finish (signal again to stop now)", err=True
        )
        runner.request_stop("interrupted", "interrupted by signal")

    try:
        return run_command(runner.run, first)
    except KeyboardInterrupt:
        if runner.report.journal:
            click.echo(f"resume with: bulkjob resume {runner.report.journal}", err=True)
        raise


def finish(report: RunReport, report_path: str | None) -> int:
    """Print the summary, write the report, and choose the exit code."""
    if report_path:
        try:
            report.write_json(report_path)
        except OSError as exc:
            click.echo(f"warning: cannot write the report {report_path}: {exc.strerror}", err=True)
    click.echo(report.summary(), err=True)
    if report.stop_reason == "journal":  # not the run's fault: a disk to look at
        click.echo(f"error: {redact(report.stop_message or '')}", err=True)
    if report.journal and (report.stop_reason in _RESUMABLE or report.ids_pending):
        click.echo(f"resume with: bulkjob resume {report.journal}", err=True)
    code = STOP_EXIT_CODES.get(report.stop_reason, ExitCode.INTERNAL)
    if code == ExitCode.OK and report.rejected:
        return ExitCode.REJECTED
    return code
