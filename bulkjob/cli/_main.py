"""The ``bulkjob`` command: parse, run one subcommand, map what happened to an exit code.

Exit codes: 0 done · 1 internal error · 2 usage/config/input error · 3 stopped on quota ·
4 stopped on queue full · 5 auth/permission failure · 6 done but some jobs rejected ·
7 gave up on a failing server (retries exhausted) · 8 chunks with no known outcome
(a submit got no answer and the job list cannot tell; resume decides) · 9 ``wait`` timed
out with jobs still open · 10 the journal is in use · 11 the journal cannot be written ·
130 interrupted.

Every failure is one ``error:`` line on stderr (``--debug`` adds the traceback, through
the same redaction as everything else). Shell completion: ``bulkjob completion bash``.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import traceback
from collections.abc import Sequence

import click

from .._errors import (
    STOP_EXIT_CODES,
    BulkJobError,
    ExitCode,
    IncompleteError,
    WaitTimeoutError,
)
from .._logging import redact
from ._commands import COMMANDS
from ._enrich import enrich

__all__ = ["EXIT_CODES", "cli", "main"]

#: Stop reason -> exit code (the one table lives in :mod:`bulkjob._errors`).
EXIT_CODES = STOP_EXIT_CODES

_EPILOG = (
    "Exit codes: 0 done, 1 internal error, 2 usage/config/input error, 3 quota, "
    "4 queue full, 5 auth, 6 some jobs rejected, 7 server kept failing, 8 chunks whose "
    "outcome no job can prove (resume decides), 9 wait timed out, 10 the journal is in use "
    "by another process, 11 the journal cannot be written, 130 interrupted."
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_EPILOG,
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    # Not while the shell's completion parses the line: it reads only the completions.
    callback=lambda ctx, _param, on: (
        _print_version(ctx) if on and not ctx.resilient_parsing else None
    ),
    help="Show the version and exit.",
)
def cli() -> None:
    """Push millions of ids through InsideView-style bulk job APIs as fast as the throttle
    allows: never an id lost, paid twice, or a lockout."""


def _print_version(ctx: click.Context) -> None:
    """``--version``: the package's metadata is searched only when asked (start-up time
    every other command would pay)."""
    from .. import __version__

    click.echo(f"bulkjob {__version__}")
    ctx.exit()


for _command in COMMANDS:
    cli.add_command(_command)
cli.add_command(enrich)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bulkjob`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["sandbox"]:  # its own parser, its own --help
        from ..sandbox._cli import sandbox_main

        return sandbox_main(args[1:])
    debug = "--debug" in args
    _terminate_as_interrupt()
    try:
        code = cli.main(args, prog_name="bulkjob", standalone_mode=False)
    except click.exceptions.Exit as done:  # --help, --version
        return int(done.exit_code)
    except click.UsageError as exc:
        asked = _help_asked_for(exc)
        if asked is None:
            return _usage_error(exc)
        # Bare ``bulkjob``: the help it asks for, as ``--help`` gives it (docker and
        # kubectl do the same on no arguments), not an error.
        click.echo(asked)
        return ExitCode.OK
    except click.ClickException as exc:
        click.echo(f"error: {redact(exc.format_message())}", err=True)
        return ExitCode.USAGE
    except (click.Abort, KeyboardInterrupt):
        click.echo("error: interrupted", err=True)
        return ExitCode.INTERRUPTED
    except BulkJobError as exc:
        _traceback(exc, debug)
        click.echo(f"error: {redact(str(exc))}", err=True)
        if isinstance(exc, WaitTimeoutError | IncompleteError):
            click.echo(exc.status.render(), err=True)  # type: ignore[attr-defined]
        return int(exc.exit_code)
    except Exception as exc:  # the last resort: one line, no traceback
        _traceback(exc, debug)
        click.echo(
            f"error: internal error: {redact(f'{type(exc).__name__}: {exc}')}"
            + ("" if debug else " (run with --debug for the traceback)"),
            err=True,
        )
        return ExitCode.INTERNAL
    return int(code) if isinstance(code, int) else ExitCode.OK


def _help_asked_for(exc: click.UsageError) -> str | None:
    """The help of a group run without its subcommand (click 8.2+ raises this; 8.1
    printed the help and exited 0 itself), else None."""
    no_args = getattr(click.exceptions, "NoArgsIsHelpError", None)
    if no_args is None or not isinstance(exc, no_args) or exc.ctx is None:
        return None
    help_text: str = exc.ctx.get_help()
    return help_text


def _usage_error(exc: click.UsageError) -> int:
    where = exc.ctx.command_path if exc.ctx is not None else "bulkjob"
    click.echo(f"error: {exc.format_message()} (see {where} --help)", err=True)
    return ExitCode.USAGE


def _terminate_as_interrupt() -> None:
    """SIGTERM before a command installs its own handling (a slow start, the imports)
    ends like Ctrl-C: one line and exit 130, not a silent death by signal."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        signal.signal(signal.SIGTERM, interrupt)


def _traceback(exc: BaseException, debug: bool) -> None:
    """With --debug, the traceback, through the same redaction as everything else."""
    if debug:
        click.echo(redact("".join(traceback.format_exception(exc))), err=True, nl=False)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
