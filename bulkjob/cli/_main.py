"""The ``bulkjob`` command: a thin layer that parses flags, runs, and maps errors to exit codes.

Exit codes: 0 done · 1 internal error · 2 usage/config/input error · 3 stopped on quota ·
4 stopped on queue full · 5 auth/permission failure · 6 done but some jobs rejected ·
7 gave up on a failing server (retries exhausted) · 8 chunks with no known outcome
(a submit got no answer and the job list cannot tell; resume decides) · 9 ``wait`` timed
out with jobs still open · 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from .. import __version__
from .. import _lifecycle as lifecycle
from .._config import load_settings, settings_for_resume
from .._errors import (
    STOP_EXIT_CODES,
    BulkJobError,
    ConfigError,
    ExitCode,
    IncompleteError,
    JournalError,
    WaitTimeoutError,
)
from .._journal import Journal
from .._logging import configure_logging, redact, register_secret
from .._report import RunReport, RunStatus
from .._runner import Runner
from .._settings import Settings
from ._progress_line import ProgressLine
from ._signals import run_command

__all__ = ["EXIT_CODES", "main"]

_T = TypeVar("_T")
#: Stop reason -> exit code (the one table lives in :mod:`bulkjob._errors`).
EXIT_CODES = STOP_EXIT_CODES
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


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error:`` line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _add_api_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that talks to the API; each maps to a Settings field."""
    p.add_argument("--config", metavar="FILE", help="TOML file of settings")
    p.add_argument("--base-url", dest="base_url", metavar="URL")
    p.add_argument("--token-url", dest="token_url", metavar="URL")
    p.add_argument(
        "--proxy",
        metavar="URL",
        help="http://[user:password@]host:port for every request (default: HTTP(S)_PROXY)",
    )
    p.add_argument(
        "--access-token",
        dest="access_token",
        metavar="T",
        help="prefer INSIDEVIEW_ACCESS_TOKEN: flags show up in process lists",
    )
    p.add_argument(
        "--max-requests",
        dest="max_requests",
        type=_positive_int,
        metavar="N",
        help="requests allowed per window (default 1000)",
    )
    p.add_argument(
        "--per",
        dest="per_seconds",
        type=_number,
        metavar="SECONDS",
        help="window length in seconds (default 300)",
    )
    p.add_argument("--concurrency", type=_positive_int, metavar="N")
    p.add_argument("--accept", choices=["json", "xml"])
    p.add_argument("--log-format", dest="log_format", choices=["console", "json"])
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("-v", "--verbose", action="store_true", help="log every job (info level)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Flags of the commands that submit: the API flags and the run's own."""
    _add_api_options(p)
    p.add_argument(
        "--on-queue-full",
        dest="on_queue_full",
        choices=["stop", "wait"],
        help="when the account's job queue is full: wait for room (default) or stop (exit 4)",
    )
    p.add_argument(
        "--max-running-jobs",
        dest="max_running_jobs",
        type=_positive_int,
        metavar="N",
        help="the account's running-job limit (default: learned from its first queue-full)",
    )
    p.add_argument(
        "--pacing",
        choices=["burst", "even"],
        help="burst (default): a window's budget may go at once; even: spread over it",
    )
    p.add_argument(
        "--webhook-listen",
        dest="webhook_listen",
        metavar="HOST:PORT",
        help="hear job finishes on this address (the URL given to the API: --webhook, "
        "else http://HOST:PORT/bulkjob/webhook)",
    )
    p.add_argument(
        "--require-quota",
        dest="require_quota",
        action="store_const",
        const=True,
        help="refuse to start when the account has fewer credits than ids",
    )
    p.add_argument("--report", metavar="PATH", help="write the run report as JSON")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bulkjob",
        description="Push millions of ids through InsideView-style bulk job APIs as fast as the "
        "throttle allows: never an id lost, paid twice, or a lockout.",
        epilog="exit codes: 0 done, 1 internal error, 2 usage/config/input error, 3 quota, "
        "4 queue full, 5 auth, 6 some jobs rejected, 7 server kept failing, 8 chunks whose "
        "outcome no job can prove (resume decides), 9 wait timed out, 10 the journal is in use "
        "by another process, 11 the journal cannot be written, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"bulkjob {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    submit = sub.add_parser("submit", help="submit every id of the inputs as bulk jobs")
    submit.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="files of ids (plain, CSV/TSV, gzip); '-' or none for stdin",
    )
    _add_run_options(submit)
    submit.add_argument(
        "--kind",
        choices=["new-contact-details", "contact-details", "new-company-details", "company-tech"],
    )
    submit.add_argument("--chunk-size", dest="chunk_size", type=_positive_int, metavar="N")
    submit.add_argument(
        "--retrieve-company-details",
        dest="retrieve_company_details",
        action="store_const",
        const=True,
    )
    submit.add_argument("--webhook", metavar="URL")
    submit.add_argument("--column", metavar="NAME", help="CSV/TSV column holding the ids")
    submit.add_argument("--id-pattern", dest="id_pattern", metavar="REGEX")
    submit.add_argument(
        "--dedupe",
        action="store_const",
        const=True,
        help="drop ids repeated anywhere in the run (~90 bytes per distinct id)",
    )
    submit.add_argument(
        "--strict",
        action="store_const",
        const=True,
        help="any invalid id is an input error before anything is sent",
    )
    submit.add_argument(
        "--journal",
        metavar="PATH",
        help="the run's journal (default: beside --report, else ./bulkjob-<time>.journal)",
    )

    resume = sub.add_parser("resume", help="continue a stopped run from its journal")
    resume.add_argument("journal", metavar="JOURNAL")
    _add_run_options(resume)
    choice = resume.add_mutually_exclusive_group()
    choice.add_argument(
        "--resubmit-ambiguous",
        dest="ambiguous",
        action="store_const",
        const="resubmit",
        help="send chunks of unknown outcome again",
    )
    choice.add_argument(
        "--abandon-ambiguous",
        dest="ambiguous",
        action="store_const",
        const="abandon",
        help="give up chunks of unknown outcome",
    )

    submit.add_argument(
        "--wait",
        dest="wait_jobs",
        action="store_true",
        help="after submitting, wait until every job is final",
    )

    status = sub.add_parser("status", help="chunks by state and jobs by server status")
    status.add_argument("journal", metavar="JOURNAL")
    status.add_argument("--refresh", action="store_true", help="ask the server for job status")
    _add_api_options(status)
    wait = sub.add_parser("wait", help="poll the run's jobs until all are final")
    wait.add_argument("journal", metavar="JOURNAL")
    wait.add_argument("--poll", type=_number, metavar="SECONDS", help="first poll interval")
    wait.add_argument("--timeout", type=_number, metavar="SECONDS")
    wait.add_argument(
        "--webhook-listen",
        dest="webhook_listen",
        metavar="HOST:PORT",
        help="hear job finishes on this address, as the submit did (polling stays)",
    )
    _add_api_options(wait)
    results = sub.add_parser("results", help="download the finished jobs' result CSVs")
    results.add_argument("journal", metavar="JOURNAL")
    results.add_argument("--out", required=True, metavar="DIR")
    results.add_argument(
        "--merge",
        metavar="FILE|-",
        help="also copy every results file into one CSV, header once ('-': to stdout, and "
        "every message to stderr)",
    )
    results.add_argument(
        "--keep-parts",
        dest="keep_parts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="keep the per-job results files once --merge is complete (default: keep)",
    )
    _add_api_options(results)
    cancel = sub.add_parser("cancel", help="cancel the run's jobs not yet processing")
    cancel.add_argument("journal", metavar="JOURNAL")
    _add_api_options(cancel)

    sandbox = sub.add_parser("sandbox", help="serve a local look-alike of the API", add_help=False)
    sandbox.add_argument("args", nargs=argparse.REMAINDER)

    demo = sub.add_parser("demo", help="submit a generated file to an embedded sandbox")
    demo.add_argument("--ids", type=_positive_int, default=200_000, metavar="N")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--dir", metavar="DIR", help="where to write the ids and the report")
    demo.add_argument("--no-progress", dest="progress", action="store_false")
    demo.add_argument("--debug", action="store_true")
    return parser


_NOT_SETTINGS = {
    "command",
    "inputs",
    "config",
    "debug",
    "verbose",
    "report",
    "progress",
    "args",
    "journal",
    "ambiguous",
    "wait_jobs",
    "refresh",
    "poll",
    "timeout",
    "out",
    "merge",
    "keep_parts",
}


def _setting_flags(args: argparse.Namespace) -> dict[str, object]:
    """The parsed flags that name Settings fields (None = not given)."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bulkjob`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sandbox"]:
        from ..sandbox._cli import sandbox_main

        return sandbox_main(argv[1:])
    args = _parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        if args.command == "demo":
            from ._demo import demo

            return demo(ids=args.ids, seed=args.seed, directory=args.dir, progress=args.progress)
        if args.command == "resume":
            return _resume(args)
        if args.command in ("status", "wait", "results", "cancel"):
            return _lifecycle_command(args)
        return _submit(args)
    except BulkJobError as exc:
        _traceback(exc, debug)
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        if isinstance(exc, WaitTimeoutError | IncompleteError):
            print(exc.status.render(), file=sys.stderr)  # type: ignore[attr-defined]
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except Exception as exc:  # the last resort: one line, no traceback
        _traceback(exc, debug)
        print(
            f"error: internal error: {redact(f'{type(exc).__name__}: {exc}')}"
            + ("" if debug else " (run with --debug for the traceback)"),
            file=sys.stderr,
        )
        return ExitCode.INTERNAL


def _traceback(exc: BaseException, debug: bool) -> None:
    """With --debug, the traceback, through the same redaction as everything else."""
    if debug:
        print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")


def _settings(args: argparse.Namespace, recorded: dict[str, object] | None = None) -> Settings:
    """Settings from flags > env > config file > (the journal's record) > defaults; every
    secret in them is registered for redaction before anything can print it."""
    flags = _setting_flags(args)
    config = getattr(args, "config", None)
    if recorded is None:
        settings = load_settings(flags=flags, config_path=config)
    else:
        settings = settings_for_resume(recorded, flags=flags, config_path=config)
    register_secret(settings.access_token)
    register_secret(settings.client_secret)
    return settings


def _submit(args: argparse.Namespace) -> int:
    settings = _settings(args)
    progress = _progress(args)
    _configure(args, settings, progress)
    inputs = list(args.inputs) or ["-"]
    path = Path(args.journal) if args.journal else default_journal(args.report)
    _distinct(path, args.report)
    journal = Journal.claim(path, "bulkjob submit")  # locked before anything is written
    try:
        if "-" in inputs:
            inputs = [str(_copy_stdin(path)) if p == "-" else p for p in inputs]
        print(f"journal: {path} (resume with: bulkjob resume {path})", file=sys.stderr)
        runner = Runner(settings, inputs, progress=progress, journal=journal)
        code = finish(run_with_signals(runner), args.report)
        if args.wait_jobs and code in (ExitCode.OK, ExitCode.REJECTED):
            final = run_command(
                lambda: lifecycle.wait(journal, settings, progress=_wait_line(args))
            )
            print(final.render(), file=sys.stderr)
        return code
    finally:
        journal.close_sync()


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


def _resume(args: argparse.Namespace) -> int:
    _distinct(args.journal, args.report)
    journal = Journal.open(args.journal, "bulkjob resume")
    try:
        settings = _settings(args, journal.recorded_settings())
        progress = _progress(args)
        _configure(args, settings, progress)
        print(f"resuming {args.journal}", file=sys.stderr)
        runner = Runner(
            settings,
            journal.inputs(),
            progress=progress,
            journal=journal,
            resume=True,
            ambiguous=args.ambiguous or "stop",
        )
        return finish(run_with_signals(runner), args.report)
    finally:
        journal.close_sync()


def _lifecycle_command(args: argparse.Namespace) -> int:
    readonly = args.command == "status" and not args.refresh
    journal = Journal.open(args.journal, f"bulkjob {args.command}", readonly=readonly)
    try:
        settings = _settings(args, journal.recorded_settings())
        _configure(args, settings)
        return _lifecyclerun_command(args, journal, settings)
    except KeyboardInterrupt:
        print(
            f"error: interrupted; the journal is consistent: run `bulkjob {args.command} "
            f"{args.journal}` again to go on",
            file=sys.stderr,
        )
        return ExitCode.INTERRUPTED
    finally:
        journal.close_sync()


def _lifecyclerun_command(args: argparse.Namespace, journal: Journal, settings: Settings) -> int:
    if args.command == "status":
        print(
            run_command(lambda: lifecycle.status(journal, settings, refresh=args.refresh)).render()
        )
    elif args.command == "wait":
        done = run_command(
            lambda: lifecycle.wait(
                journal,
                settings,
                poll_interval=args.poll,
                progress=_wait_line(args),
                timeout=args.timeout,
            )
        )
        print(done.render())
    elif args.command == "results":
        return _results(args, journal, settings)
    else:
        gone = run_command(lambda: lifecycle.cancel(journal, settings))
        print(
            f"cancelled {len(gone.cancelled):,} job(s) ({gone.ids_cancelled:,} ids); "
            f"{len(gone.not_cancellable):,} already processing; "
            f"{len(gone.skipped):,} skipped (not queued)"
        )
    return ExitCode.OK


def _results(args: argparse.Namespace, journal: Journal, settings: Settings) -> int:
    to_stdout = args.merge == "-"
    merge = sys.stdout.buffer if to_stdout else Path(args.merge) if args.merge else None
    say = sys.stderr if to_stdout else sys.stdout  # with --merge -, stdout holds only CSV
    try:
        got = run_command(
            lambda: lifecycle.results(
                journal, settings, Path(args.out), merge=merge, keep_parts=args.keep_parts
            )
        )
    except BrokenPipeError:
        if not to_stdout:
            raise
        # The reader went away (`| head`): not our failure. What is still buffered for
        # stdout would fail again at exit, so stdout now leads nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("error: stdout was closed before the merged CSV was complete", file=sys.stderr)
        return ExitCode.INTERNAL
    print(
        f"downloaded {got.downloaded:,} result file(s), {got.already_present:,} already "
        f"present, in {args.out}",
        file=say,
    )
    if merge is not None:
        into = "stdout" if to_stdout else str(got.merged)
        print(
            f"merged {len(got.files):,} file(s), {got.bytes_merged:,} bytes, into {into}", file=say
        )
    if got.removed:
        print(f"removed the {len(got.removed):,} merged result file(s)", file=say)
    if got.not_finished:
        print(
            f"{len(got.not_finished):,} job(s) not finished yet: run `bulkjob wait "
            f"{args.journal}` then `results` again",
            file=sys.stderr,
        )
    if got.failed:
        print(f"{len(got.failed):,} job(s) failed: chunks {_seqs(got.failed)}", file=sys.stderr)
    return ExitCode.OK


def _seqs(seqs: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in seqs[:20])
    return shown + (f" and {len(seqs) - 20:,} more" if len(seqs) > 20 else "")


def _wait_line(args: argparse.Namespace) -> Callable[[RunStatus], None]:
    line = ProgressLine(enabled=None if getattr(args, "progress", True) else False)

    def show(st: RunStatus) -> None:
        if line.enabled:
            sys.stderr.write(
                f"\rjobs: {st.total_jobs - st.open_jobs:,}/{st.total_jobs:,} final\x1b[K"
            )
            sys.stderr.flush()

    return show


def default_journal(report: str | None) -> Path:
    """Beside the report when there is one, else a timestamped file here."""
    if report:
        path = Path(report)
        journal = path.with_name(path.stem + ".journal")
        # --report run.journal must not name the journal itself: keep both.
        return journal if journal != path else path.with_name(path.name + ".run")
    return Path(f"bulkjob-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.journal")


def _configure(
    args: argparse.Namespace, settings: Settings, progress: ProgressLine | None = None
) -> None:
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    # With a live progress line, log lines go through it so they print above it.
    stream = progress if progress is not None and progress.enabled else None
    configure_logging(settings.log_format, level=level, stream=stream)  # type: ignore[arg-type]


def _progress(args: argparse.Namespace) -> ProgressLine:
    return ProgressLine(enabled=None if args.progress else False)


def run_with_signals(runner: Runner) -> RunReport:
    """Run; the first SIGINT/SIGTERM stops cleanly, a second one stops at once."""

    def first() -> None:
        print(
            "\nstopping: letting requests in flight finish (signal again to stop now)",
            file=sys.stderr,
        )
        runner.request_stop("interrupted", "interrupted by signal")

    try:
        return run_command(runner.run, first)
    except KeyboardInterrupt:
        if runner.report.journal:
            print(f"resume with: bulkjob resume {runner.report.journal}", file=sys.stderr)
        raise


def finish(report: RunReport, report_path: str | None) -> int:
    """Print the summary, write the report, and choose the exit code."""
    if report_path:
        try:
            report.write_json(report_path)
        except OSError as exc:
            print(
                f"warning: cannot write the report {report_path}: {exc.strerror}", file=sys.stderr
            )
    print(report.summary(), file=sys.stderr)
    if report.stop_reason == "journal":  # not the run's fault: a disk to look at
        print(f"error: {redact(report.stop_message or '')}", file=sys.stderr)
    if report.journal and (report.stop_reason in _RESUMABLE or report.ids_pending):
        print(f"resume with: bulkjob resume {report.journal}", file=sys.stderr)
    code = EXIT_CODES.get(report.stop_reason, ExitCode.INTERNAL)
    if code == ExitCode.OK and report.rejected:
        return ExitCode.REJECTED
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
