"""The command line's options, shared by the subcommands that take them.

Each setting flag maps onto one :class:`~bulkjob.Settings` field. Its click default is
``None`` ("not given"), so that the environment and the config file below it still count;
the default shown in ``--help`` is the field's own.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import click

from .._kinds import KINDS
from .._settings import Settings

__all__ = [
    "DIR_PATH",
    "FILE_PATH",
    "INPUT_PATH",
    "OUTPUT_OPTIONS",
    "api_options",
    "run_options",
    "setting",
    "submit_options",
]

F = TypeVar("F", bound=Callable[..., Any])
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_HINTS = typing.get_type_hints(Settings)
#: Path types: nothing is checked here (the commands say what is wrong in their own
#: words), but the shell completes file names (or directories) for them. ``-`` stays
#: standard input / output where the command takes it.
FILE_PATH = click.Path(dir_okay=False)
INPUT_PATH = click.Path(dir_okay=False, allow_dash=True)
DIR_PATH = click.Path(file_okay=False)
#: Options of a command that are not Settings fields (the command reads them itself).
OUTPUT_OPTIONS = frozenset({"config", "debug", "verbose", "progress"})


def _click_type(name: str) -> Any:
    hint = _HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return click.Choice(list(typing.get_args(hint)))
    if hint is int or args == [int]:
        return click.INT
    if hint is float or args == [float]:
        return click.FLOAT
    return None


def _shown(name: str) -> str:
    default = _FIELDS[name].default
    if default is None:
        return ""
    if isinstance(default, bool):
        return ""
    return f"  [default: {default}]"


def setting(*decls: str, name: str, help: str = "", **kw: Any) -> Callable[[F], F]:
    """A flag for the Settings field ``name``; ``None`` when not given.

    A boolean field gets an on and an off flag (``--strict/--no-strict``): a config file
    or the environment may have turned it on, and the command line must be able to say no.
    """
    hint = _HINTS[name]
    if hint is bool and not kw.get("is_flag") and all("/" not in d for d in decls):
        decls = tuple(f"{d}/--no-{d[2:]}" if d.startswith("--") else d for d in decls)
    kw.setdefault("type", _click_type(name))
    if kw["type"] is None:
        del kw["type"]
    return click.option(*decls, name, default=None, help=help + _shown(name), **kw)


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


_OUTPUT = (
    click.option(
        "--config",
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="TOML file of settings (also BULKJOB_CONFIG)",
    ),
    setting("--log-format", name="log_format", help="log lines as text or JSON"),
    click.option("-v", "--verbose", is_flag=True, help="log every job (info level)"),
    click.option("--debug", is_flag=True, help="show tracebacks and debug logs"),
    click.option(
        "--no-progress",
        "progress",
        is_flag=True,
        flag_value=False,
        default=True,
        help="no live progress line on a terminal, no run.progress log lines elsewhere",
    ),
)

_API = (
    *_OUTPUT,
    setting(
        "--progress-interval",
        name="progress_interval",
        metavar="SECONDS",
        help="seconds between run.progress log lines when stderr is not a terminal",
    ),
    setting("--base-url", name="base_url", metavar="URL", help="the API's root"),
    setting("--token-url", name="token_url", metavar="URL", help="where tokens are minted"),
    setting(
        "--access-token",
        name="access_token",
        metavar="T",
        help="prefer INSIDEVIEW_ACCESS_TOKEN: flags show up in process lists",
    ),
    setting(
        "--client-id",
        name="client_id",
        metavar="ID",
        help="mint tokens with this client id (secret: INSIDEVIEW_CLIENT_SECRET)",
    ),
    setting(
        "--proxy",
        name="proxy",
        metavar="URL",
        help="http://[user:password@]host:port for every request (default: HTTP(S)_PROXY)",
    ),
    setting("--max-requests", name="max_requests", metavar="N", help="requests per window"),
    setting("--per", name="per_seconds", metavar="SECONDS", help="the window's length"),
    setting("--concurrency", name="concurrency", metavar="N", help="requests at once"),
    setting(
        "--pacing", name="pacing", help="burst: a window's budget may go at once; even: spread"
    ),
    setting("--accept", name="accept", help="the API's answer format"),
    setting(
        "--throttle-store",
        name="throttle_store",
        metavar="STORE",
        help="where the account's window lives: local (this host), memory (this process), "
        "or redis://[:password@]host:port/db shared across hosts (pip install 'bulkjob[redis]')",
    ),
    setting(
        "--account",
        name="account",
        metavar="NAME",
        help="share the window under this name (default: the client id, else the token's hash)",
    ),
    setting(
        "--slot-lease",
        name="slot_lease",
        metavar="SECONDS",
        help="a Redis slot of a process that died counts as done this long after its last renewal",
    ),
)

_RUN = (
    setting(
        "--on-queue-full",
        name="on_queue_full",
        help="when the account's job queue is full: wait for room, or stop (exit 4)",
    ),
    setting(
        "--max-running-jobs",
        name="max_running_jobs",
        metavar="N",
        help="the account's running-job limit (default: learned from its first queue-full)",
    ),
    setting(
        "--webhook-listen",
        name="webhook_listen",
        metavar="HOST:PORT",
        help="hear job finishes on this address (the URL given to the API: --webhook, "
        "else http://HOST:PORT/bulkjob/webhook)",
    ),
    setting(
        "--require-quota",
        name="require_quota",
        help="refuse to start when the account has fewer credits than ids",
    ),
    setting(
        "--metrics-port",
        name="metrics_port",
        metavar="N",
        help="serve Prometheus metrics on this port while the run lasts (0: any free port; "
        "needs pip install 'bulkjob[metrics]')",
    ),
    setting(
        "--metrics-host",
        name="metrics_host",
        metavar="HOST",
        help="the address --metrics-port listens on",
    ),
    click.option("--report", metavar="PATH", type=FILE_PATH, help="write the run report as JSON"),
    click.option(
        "--dry-run",
        is_flag=True,
        help="read the inputs and the account's credits; send nothing, print what a run needs",
    ),
)

_SUBMIT = (
    setting("--kind", name="kind", type=click.Choice(list(KINDS)), help="the bulk endpoint"),
    setting("--chunk-size", name="chunk_size", metavar="N", help="ids per job"),
    setting(
        "--retrieve-company-details",
        name="retrieve_company_details",
        help="ask for company details too",
    ),
    setting("--webhook", name="webhook", metavar="URL", help="the API calls it on a job's finish"),
    setting("--column", name="column", metavar="NAME", help="CSV/TSV column holding the ids"),
    setting("--id-pattern", name="id_pattern", metavar="REGEX", help="what a valid id looks like"),
    setting(
        "--dedupe",
        name="dedupe",
        help="drop ids repeated anywhere in the run (~90 bytes per distinct id)",
    ),
    setting(
        "--strict",
        name="strict",
        help="any invalid id is an input error before anything is sent",
    ),
)

output_options = _stack(*_OUTPUT)
api_options = _stack(*_API)
run_options = _stack(*_API, *_RUN)
submit_options = _stack(*_SUBMIT)
