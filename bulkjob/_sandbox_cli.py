"""``bulkjob sandbox``: serve the sandbox API on loopback until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys

from ._errors import ConfigError
from ._sandbox import Sandbox
from ._sandbox_state import SandboxConfig

__all__ = ["sandbox_main"]


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be from 0 to 1, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0.0):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"must be from 0 to 65535, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bulkjob sandbox",
        description="Serve a local look-alike of the InsideView bulk job API until Ctrl-C.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=8080, help="0 = an ephemeral port")
    p.add_argument("--throttle", type=_count, metavar="N", help="requests per window")
    p.add_argument("--window", type=_seconds, default=300.0, metavar="S")
    p.add_argument("--retry-after", action="store_true", help="send Retry-After on 429")
    p.add_argument("--no-lockout", action="store_true", help="429 without locking the account")
    p.add_argument("--quota", type=_count, metavar="N", help="transaction credits (unlimited)")
    p.add_argument("--running-job-limit", type=_count, metavar="N")
    p.add_argument("--processing-after", type=_seconds, default=0.0, metavar="S")
    p.add_argument("--finished-after", type=_seconds, default=0.0, metavar="S")
    p.add_argument("--fault-5xx", type=_rate, default=0.0, metavar="RATE")
    p.add_argument("--latency", type=_seconds, default=0.0, metavar="S")
    p.add_argument("--drop-rate", type=_rate, default=0.0, metavar="RATE")
    p.add_argument("--drop-after-accept-rate", type=_rate, default=0.0, metavar="RATE")
    p.add_argument("--token", action="append", metavar="T", help="a valid token (repeatable)")
    p.add_argument("--client-id", default=SandboxConfig.client_id)
    p.add_argument("--client-secret", default=SandboxConfig.client_secret)
    p.add_argument("--seed", type=int, default=0)
    return p


def sandbox_main(argv: list[str]) -> int:
    """``bulkjob sandbox``: serve until Ctrl-C. Bad arguments exit 2 through argparse."""
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
            processing_after=args.processing_after,
            finished_after=args.finished_after,
            fault_5xx_rate=args.fault_5xx,
            latency=args.latency,
            drop_rate=args.drop_rate,
            drop_after_accept_rate=args.drop_after_accept_rate,
            seed=args.seed,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve(config, args.host, args.port))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(config: SandboxConfig, host: str, port: int) -> None:
    sandbox = Sandbox(config)
    await sandbox.start(host, port)
    try:
        print(f"bulkjob sandbox: base_url={sandbox.base_url} token_url={sandbox.token_url}")
        sys.stdout.flush()
        await asyncio.Event().wait()
    finally:
        await sandbox.close()
