"""``bulkjob sandbox``: serve the sandbox API on loopback until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from typing import NoReturn

from .._errors import ConfigError
from ._bodies import API_PREFIX
from ._config import GARBAGE_KINDS, TOKEN_FAULT_KINDS, SandboxConfig
from ._server import Sandbox

__all__ = ["parse_args", "sandbox_main"]


def _number(convert: type[int] | type[float], text: str) -> float:
    """``text`` as a number; argparse's own words ("invalid _port value") name a function."""
    try:
        return convert(text)
    except ValueError:
        what = "a whole number" if convert is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _rate(text: str) -> float:
    value = _number(float, text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def _seconds(text: str) -> float:
    value = _number(float, text)
    if not (math.isfinite(value) and value >= 0.0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _offset(text: str) -> float:
    value = _number(float, text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text}")
    return value


def _garbage_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [k for k in kinds if k not in GARBAGE_KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated list of {', '.join(GARBAGE_KINDS)}, got {text!r}"
        )
    return kinds


def _count(text: str) -> int:
    value = int(_number(int, text))
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(_number(int, text))
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said as the ``bulkjob`` command says one: one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="bulkjob sandbox",
        description=(
            "Serve a local look-alike of the InsideView bulk job API until Ctrl-C. "
            f"Point a client at it with --base-url http://HOST:PORT{API_PREFIX} "
            f"(http://127.0.0.1:8080{API_PREFIX} by default) and the access token "
            f"{SandboxConfig.access_tokens[0]!r} (or --token), or mint tokens as client "
            f"{SandboxConfig.client_id!r} (its secret is --client-secret's default)."
        ),
        epilog=(
            "RATE is a share from 0 to 1, S a number of seconds. While it runs, "
            "POST /_sandbox/config (a JSON object of settings) changes the settings, "
            "GET /_sandbox/ledger reads the counts and POST /_sandbox/jobs adds another "
            "client's job; these need no token and are not counted."
        ),
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8080, help="0 = an ephemeral port")
    p.add_argument("--token", action="append", metavar="T", help="a valid token (repeatable)")
    p.add_argument("--client-id", default=SandboxConfig.client_id)
    p.add_argument("--client-secret", default=SandboxConfig.client_secret)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clock-skew",
        type=_offset,
        default=0.0,
        metavar="S",
        help="seconds added to the server's clock, may be negative (--clock-skew=-60)",
    )

    limits = p.add_argument_group("throttle and limits")
    limits.add_argument("--throttle", type=_count, metavar="N", help="requests per window")
    limits.add_argument("--window", type=_seconds, default=300.0, metavar="S")
    limits.add_argument("--retry-after", action="store_true", help="send Retry-After on 429")
    limits.add_argument("--no-lockout", action="store_true", help="429 without a lockout")
    limits.add_argument(
        "--lockout-seconds",
        type=_seconds,
        metavar="S",
        help="how long a lockout lasts (default: one window)",
    )
    limits.add_argument("--quota", type=_count, metavar="N", help="credits (default unlimited)")
    limits.add_argument("--running-job-limit", type=_count, metavar="N")
    limits.add_argument(
        "--queue-in-order",
        action="store_true",
        help="a job starts processing once fewer than the limit do (accepted jobs wait in order)",
    )

    jobs = p.add_argument_group("jobs and results")
    jobs.add_argument("--processing-after", type=_seconds, default=0.0, metavar="S")
    jobs.add_argument("--finished-after", type=_seconds, default=0.0, metavar="S")
    jobs.add_argument(
        "--finished-jitter",
        type=_rate,
        default=0.0,
        metavar="J",
        help="each job processes finished-after x U[1-J, 1+J] seconds (J from 0 to 1)",
    )
    jobs.add_argument(
        "--list-lag",
        type=_seconds,
        default=SandboxConfig.list_lag,
        metavar="S",
        help="age a job needs to appear in /admin/jobs (default %(default)s)",
    )
    jobs.add_argument(
        "--no-time-filters",
        dest="time_filters",
        action="store_false",
        help="/admin/jobs refuses start/end (400): the list is the whole history",
    )
    jobs.add_argument(
        "--job-fail-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="share of jobs that end failed",
    )
    jobs.add_argument(
        "--failed-results",
        action="store_true",
        help="serve a failed job's results (default: refuse with 400)",
    )
    jobs.add_argument(
        "--no-match-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="share of ids that come back not found",
    )
    jobs.add_argument(
        "--results-cut-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="share of results files served cut short inside a quoted field",
    )
    jobs.add_argument(
        "--results-id-column",
        metavar="NAME",
        help="the results' id column for every kind (default: per kind)",
    )

    faults = p.add_argument_group("faults")
    faults.add_argument(
        "--fault-5xx",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="5xx before the endpoint runs, on any API request",
    )
    faults.add_argument(
        "--fault-html", action="store_true", help="simulated 5xx are a gateway's HTML page"
    )
    faults.add_argument(
        "--submit-faults-only",
        action="store_true",
        help="--fault-5xx and --drop-rate hit job submits only",
    )
    faults.add_argument("--latency", type=_seconds, default=0.0, metavar="S")
    faults.add_argument(
        "--drop-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="close the connection before the request is checked",
    )
    faults.add_argument(
        "--drop-after-accept-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="submits: create the job, then close the connection",
    )
    faults.add_argument(
        "--accept-then-5xx-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="submits: create the job, then answer 5xx",
    )
    faults.add_argument(
        "--accept-then-garbage-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="submits: create the job, then answer a 200 with an unusable body",
    )
    faults.add_argument(
        "--garbage-kinds",
        type=_garbage_kinds,
        default=GARBAGE_KINDS,
        metavar="K,K",
        help=f"from {','.join(GARBAGE_KINDS)} (default: all)",
    )
    hooks = p.add_argument_group("webhooks (loopback URLs only)")
    hooks.add_argument(
        "--webhook-loss-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="share of webhook calls never made",
    )
    hooks.add_argument(
        "--webhook-delay",
        type=_seconds,
        default=0.0,
        metavar="S",
        help="seconds from a job's final status to its webhook call",
    )
    login = p.add_argument_group("the token endpoint (a login host of its own)")
    login.add_argument("--token-latency", type=_seconds, default=0.0, metavar="S")
    login.add_argument(
        "--token-fault-rate",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help=f"token requests that fail, as one of: {', '.join(TOKEN_FAULT_KINDS)}",
    )
    return p


def parse_args(argv: list[str]) -> tuple[SandboxConfig, str, int]:
    """(config, host, port) from the command line; bad arguments exit 2 through argparse."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = SandboxConfig(
            access_tokens=tuple(args.token) if args.token else SandboxConfig.access_tokens,
            client_id=args.client_id,
            client_secret=args.client_secret,
            throttle_requests=args.throttle,
            throttle_window=args.window,
            lockout=not args.no_lockout,
            retry_after=args.retry_after,
            quota=args.quota,
            running_job_limit=args.running_job_limit,
            queue_in_order=args.queue_in_order,
            processing_after=args.processing_after,
            finished_after=args.finished_after,
            finished_jitter=args.finished_jitter,
            webhook_loss_rate=args.webhook_loss_rate,
            webhook_delay=args.webhook_delay,
            lockout_seconds=args.lockout_seconds,
            list_lag=args.list_lag,
            time_filters=args.time_filters,
            job_fail_rate=args.job_fail_rate,
            failed_results=args.failed_results,
            no_match_rate=args.no_match_rate,
            results_id_column=args.results_id_column,
            results_cut_rate=args.results_cut_rate,
            clock_skew=args.clock_skew,
            fault_5xx_rate=args.fault_5xx,
            fault_html=args.fault_html,
            submit_faults_only=args.submit_faults_only,
            latency=args.latency,
            drop_rate=args.drop_rate,
            drop_after_accept_rate=args.drop_after_accept_rate,
            accept_then_5xx_rate=args.accept_then_5xx_rate,
            accept_then_garbage_rate=args.accept_then_garbage_rate,
            garbage_kinds=args.garbage_kinds,
            token_latency=args.token_latency,
            token_fault_rate=args.token_fault_rate,
            seed=args.seed,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    return config, args.host, args.port


def sandbox_main(argv: list[str]) -> int:
    """``bulkjob sandbox``: serve until Ctrl-C. Bad arguments exit 2 through argparse."""
    config, host, port = parse_args(argv)
    try:
        asyncio.run(_serve(config, host, port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(config: SandboxConfig, host: str, port: int) -> None:
    sandbox = Sandbox(config)
    await sandbox.start(host, port)
    try:
        # The fixed tokens and the client id are the sandbox's own test credentials, printed so
        # that a client can be pointed at it without reading the source; the secret is left
        # out all the same, so that no habit of printing secrets starts here.
        print(
            f"bulkjob sandbox: base_url={sandbox.base_url} token_url={sandbox.token_url} "
            f"access_tokens={','.join(config.access_tokens)} client_id={config.client_id}"
        )
        sys.stdout.flush()
        await asyncio.Event().wait()
    finally:
        await sandbox.close()
