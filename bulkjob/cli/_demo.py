"""``bulkjob demo``: the whole main job against an embedded sandbox, in a few seconds.

It starts the sandbox in-process on a free loopback port (throttled, with a little
fault injection so retries show), writes a seeded file of valid ids, submits it with
the progress line, prints the summary and checks the sandbox's ledger: every id
accepted exactly once, no 429.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import sys
import tempfile
from pathlib import Path

from .._logging import configure_logging
from .._report import RunReport
from .._runner import Runner
from .._settings import Settings
from ..sandbox import Sandbox, SandboxConfig
from ._progress_line import ProgressLine

__all__ = ["demo", "write_ids"]

DEMO_THROTTLE = 10
DEMO_WINDOW = 1.0


def write_ids(path: Path, count: int, seed: int) -> None:
    """Write ``count`` distinct-looking valid ids (64 chars of [A-Za-z0-9_-]), seeded."""
    rng = random.Random(seed)
    with path.open("w", encoding="ascii") as out:
        for _ in range(count):
            # 48 random bytes are exactly 64 URL-safe base64 characters, no padding.
            out.write(base64.urlsafe_b64encode(rng.randbytes(48)).decode("ascii"))
            out.write("\n")


async def _run(path: Path, progress: bool) -> tuple[RunReport, str]:
    config = SandboxConfig(
        throttle_requests=DEMO_THROTTLE,
        throttle_window=DEMO_WINDOW,
        fault_5xx_rate=0.05,
        drop_after_accept_rate=0.05,
        latency=0.02,
        token_lifetime=3600.0,
    )
    async with Sandbox(config) as sandbox:
        settings = Settings(
            base_url=sandbox.base_url,
            token_url=sandbox.token_url,
            client_id=config.client_id,
            client_secret=config.client_secret,
            max_requests=DEMO_THROTTLE,
            per_seconds=DEMO_WINDOW,
            backoff_initial=0.1,
            backoff_max=1.0,
            # The sandbox lists a job 0.05 s after accepting it: a lost answer is proven
            # within a second, not the two minutes a real account's lagging list needs.
            reconcile_grace=1.0,
            proof_poll_interval=0.2,
        )
        print(
            f"sandbox: {sandbox.base_url} ({DEMO_THROTTLE} requests per {DEMO_WINDOW:g}s, "
            "lockout when exceeded, 5% server errors, 5% of answers lost after acceptance)",
            file=sys.stderr,
        )
        line = ProgressLine(enabled=None if progress else False)
        if line.enabled:  # log lines print above the progress line
            configure_logging("console", level=logging.WARNING, stream=line)  # type: ignore[arg-type]
        report = await Runner(settings, [str(path)], progress=line).run()
        ledger = sandbox.ledger
        verdict = (
            f"sandbox ledger: {ledger.ids_accepted:,} ids accepted in {len(ledger.jobs):,} jobs, "
            f"{ledger.duplicates:,} duplicates, {ledger.throttled:,} throttled (429), "
            f"largest job {ledger.largest_job:,} ids"
        )
        return report, verdict


def demo(
    *, ids: int = 200_000, seed: int = 1, directory: str | None = None, progress: bool = True
) -> int:
    """Run the demo; returns the process exit code (0 when every id was accepted once)."""
    configure_logging("console", level=logging.WARNING, stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bulkjob-demo-") as tmp:
        where = Path(directory) if directory else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        path = where / "ids.txt"
        write_ids(path, ids, seed)
        print(f"wrote {ids:,} ids to {path}", file=sys.stderr)
        report, verdict = asyncio.run(_run(path, progress))
        report.write_json(where / "report.json")
    print(report.summary(), file=sys.stderr)
    print(verdict, file=sys.stderr)
    return 0 if report.ok and report.accounted else 1
