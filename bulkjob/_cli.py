"""The ``bulkjob`` command: a thin layer that parses flags, runs, and maps errors to exit codes.

Exit codes: 0 done · 1 internal error · 2 usage/config/input error · 3 stopped on quota ·
4 stopped on queue full · 5 auth/permission failure · 6 done but some jobs rejected ·
7 gave up on a failing server (retries exhausted) · 8 chunks with no known outcome
(a submit got no answer and the job list cannot tell; resume decides) · 9 ``wait`` timed
out with jobs still open · 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from . import _lifecycle as lifecycle
from ._config import load_settings, settings_for_resume
from ._errors import (
    BulkJobError,
    ConfigError,
)
from ._journal import Journal
from ._lifecycle import WaitTimeoutError
from ._logging import configure_logging, redact
from ._progress import ProgressLine
from ._report import RunReport, stop_reason_for
from ._runner import Runner
from ._settings import Settings

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_QUOTA = 3
EXIT_QUEUE_FULL = 4
EXIT_AUTH = 5
EXIT_REJECTED = 6
EXIT_TRANSPORT = 7
EXIT_AMBIGUOUS = 8
EXIT_WAIT_TIMEOUT = 9
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    None: EXIT_OK,
    "quota": EXIT_QUOTA,
    "queue_full": EXIT_QUEUE_FULL,
    "auth": EXIT_AUTH,
    "transport": EXIT_TRANSPORT,
    "protocol": EXIT_INTERNAL,
    "input": EXIT_USAGE,
    "interrupted": EXIT_INTERRUPTED,
    "ambiguous": EXIT_AMBIGUOUS,
}
#: Stops after which ``bulkjob resume`` continues the run.
_RESUMABLE = {"quota", "queue_full", "auth", "transport", "interrupted", "ambiguous", "protocol"}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one ``error:`` line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


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
    p.add_argument("-v", "--verbose", action="store_true", help="log every job (info level)")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Flags of the commands that submit: the API flags and the run's own."""
    _add_api_options(p)
    p.add_argument(
        "--on-queue-full",
        dest="on_queue_full",
        choices=["stop", "wait"],
        help="when the account's job queue is full: stop (default) or wait for room",
    )
    p.add_argument(
        "--require-quota",
        dest="require_quota",
        action="store_const",
        const=True,
        help="refuse to start when the account has fewer credits than ids",
    )
    p.add_argument("--report", metavar="PATH", help="write the run report as JSON")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bulkjob",
        description="Push millions of ids through InsideView-style bulk job APIs as fast as the "
        "throttle allows: never an id lost, paid twice, or a lockout.",
        epilog="exit codes: 0 done, 1 internal error, 2 usage/config/input error, 3 quota, "
        "4 queue full, 5 auth, 6 some jobs rejected, 7 server kept failing, 8 chunks of unknown "
        "outcome (resume decides), 9 wait timed out, 130 interrupted",
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
    wait.add_argument("--no-progress", dest="progress", action="store_false")
    _add_api_options(wait)
    results = sub.add_parser("results", help="download the finished jobs' result CSVs")
    results.add_argument("journal", metavar="JOURNAL")
    results.add_argument("--out", required=True, metavar="DIR")
    results.add_argument("--merge", metavar="FILE", help="also write one CSV of every row")
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
}


def _setting_flags(args: argparse.Namespace) -> dict[str, object]:
    """The parsed flags that name Settings fields (None = not given)."""
    return {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from flags > env > config file > defaults."""
    flags = _setting_flags(args)
    return load_settings(flags=flags, config_path=args.config)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bulkjob`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sandbox"]:
        from ._sandbox_cli import sandbox_main

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
        if debug:
            raise
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return _exit_code(exc)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # the last resort: one line, no traceback
        if debug:
            raise
        print(
            f"error: internal error: {redact(f'{type(exc).__name__}: {exc}')} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


def _exit_code(exc: BulkJobError) -> int:
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, WaitTimeoutError):
        print(exc.status.render(), file=sys.stderr)
        return EXIT_WAIT_TIMEOUT
    return EXIT_CODES[stop_reason_for(exc)]


def _submit(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    progress = _progress(args)
    _configure(args, settings, progress)
    inputs = list(args.inputs) or ["-"]
    journal = Path(args.journal) if args.journal else default_journal(args.report)
    Journal.ensure_new(journal)  # before anything is written beside it
    if "-" in inputs:
        # Standard input can't be read twice: keep a copy beside the journal for resume.
        copy = journal.with_name(journal.name + ".stdin")
        with copy.open("wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
        inputs = [str(copy) if p == "-" else p for p in inputs]
    print(f"journal: {journal} (resume with: bulkjob resume {journal})", file=sys.stderr)
    runner = Runner(settings, inputs, progress=progress, journal=journal)
    code = finish(run_with_signals(runner), args.report)
    if args.wait_jobs and code in (EXIT_OK, EXIT_REJECTED):
        final = asyncio.run(lifecycle.wait(journal, settings, progress=_wait_line(args)))
        print(final.render(), file=sys.stderr)
    return code


def _lifecycle_command(args: argparse.Namespace) -> int:
    flags = _setting_flags(args)
    settings = lifecycle.settings_from_journal(args.journal, **flags)
    _configure(args, settings)
    journal = args.journal
    if args.command == "status":
        print(asyncio.run(lifecycle.status(journal, settings, refresh=args.refresh)).render())
    elif args.command == "wait":
        done = asyncio.run(
            lifecycle.wait(
                journal,
                settings,
                poll_interval=args.poll,
                progress=_wait_line(args),
                timeout=args.timeout,
            )
        )
        print(done.render())
    elif args.command == "results":
        merge = Path(args.merge) if args.merge else None
        got = asyncio.run(lifecycle.results(journal, settings, Path(args.out), merge=merge))
        print(
            f"downloaded {got.downloaded:,} result file(s), {got.already_present:,} already "
            f"present, in {args.out}"
        )
        if got.merged is not None:
            print(f"merged {got.rows_merged:,} rows into {got.merged}")
        if got.not_finished:
            print(
                f"{len(got.not_finished):,} job(s) not finished yet: run `bulkjob wait "
                f"{journal}` then `results` again",
                file=sys.stderr,
            )
        if got.failed:
            print(f"{len(got.failed):,} job(s) failed: chunks {_seqs(got.failed)}", file=sys.stderr)
    else:
        gone = asyncio.run(lifecycle.cancel(journal, settings))
        print(
            f"cancelled {len(gone.cancelled):,} job(s) ({gone.ids_cancelled:,} ids); "
            f"{len(gone.not_cancellable):,} already processing; "
            f"{len(gone.skipped):,} skipped (not queued)"
        )
    return EXIT_OK


def _seqs(seqs: Sequence[int]) -> str:
    shown = ", ".join(str(n) for n in seqs[:20])
    return shown + (f" and {len(seqs) - 20:,} more" if len(seqs) > 20 else "")


def _wait_line(args: argparse.Namespace) -> Callable[[lifecycle.RunStatus], None]:
    line = ProgressLine(enabled=None if getattr(args, "progress", True) else False)

    def show(st: lifecycle.RunStatus) -> None:
        if line.enabled:
            sys.stderr.write(
                f"\rjobs: {st.total_jobs - st.open_jobs:,}/{st.total_jobs:,} final\x1b[K"
            )
            sys.stderr.flush()

    return show


def _resume(args: argparse.Namespace) -> int:
    recorded, inputs = lifecycle.read_run(args.journal)
    flags = _setting_flags(args)
    settings = settings_for_resume(recorded, flags=flags, config_path=args.config)
    progress = _progress(args)
    _configure(args, settings, progress)
    print(f"resuming {args.journal}", file=sys.stderr)
    runner = Runner(
        settings,
        inputs,
        progress=progress,
        journal=args.journal,
        resume=True,
        ambiguous=args.ambiguous or "stop",
    )
    return finish(run_with_signals(runner), args.report)


def default_journal(report: str | None) -> Path:
    """Beside the report when there is one, else a timestamped file here."""
    if report:
        path = Path(report)
        return path.with_name(path.stem + ".journal")
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

    async def main() -> RunReport:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        signals = (signal.SIGINT, signal.SIGTERM)
        seen = 0

        def on_signal() -> None:
            nonlocal seen
            seen += 1
            if seen == 1:
                print(
                    "\nstopping: letting requests in flight finish (signal again to stop now)",
                    file=sys.stderr,
                )
                runner.request_stop("interrupted", "interrupted by signal")
            elif task is not None:
                task.cancel()

        for sig in signals:
            loop.add_signal_handler(sig, on_signal)
        try:
            return await runner.run()
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    return asyncio.run(main())


def finish(report: RunReport, report_path: str | None) -> int:
    """Print the summary, write the report, and choose the exit code."""
    if report_path:
        report.write_json(report_path)
    print(report.summary(), file=sys.stderr)
    if report.journal and (report.stop_reason in _RESUMABLE or report.ids_pending):
        print(f"resume with: bulkjob resume {report.journal}", file=sys.stderr)
    code = EXIT_CODES.get(report.stop_reason, EXIT_INTERNAL)
    if code == EXIT_OK and report.rejected:
        return EXIT_REJECTED
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
