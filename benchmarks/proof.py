"""What proving lost answers costs: extra requests per chunk whose submit lost its answer.

200 jobs of 100 ids against an in-process sandbox, once without faults and once per kind of
lost answer; the sandbox counts every request by route. The extra requests of a faulty run
over the clean one, divided by the submits whose outcome was unknown, is the price of a
proof. Grace and polling keep the defaults' proportion (grace = 4 polls: 120 s and 30 s by
default), scaled down to 1 s and 0.25 s so that the run takes seconds; the window of
candidate jobs around a send (``reconcile_skew``, ``request_timeout``) is scaled down too.
Another client's jobs in that window must each be read once to be ruled out.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from ._common import TOKEN, machine_line, quiet_logging, table, write_ids_fast

JOBS = 200
ROUTES = ("submit", "jobs", "status", "results")
SCENARIOS: dict[str, dict[str, Any]] = {
    "no lost answer": {},
    "20% accepted, then the connection dropped": {"drop_after_accept_rate": 0.2},
    "20% accepted, then a 200 without jobId": {
        "accept_then_garbage_rate": 0.2,
        "garbage_kinds": ("no_job_id",),
    },
    "20% 5xx before any job exists": {"fault_5xx_rate": 0.2, "submit_faults_only": True},
    "20% dropped after acceptance, another client submitting 5 jobs/s": {
        "drop_after_accept_rate": 0.2,
        "_foreign_per_s": 5,
    },
    "20% 5xx before any job exists, another client submitting 5 jobs/s": {
        "fault_5xx_rate": 0.2,
        "submit_faults_only": True,
        "_foreign_per_s": 5,
    },
}


async def _measure(path: Path, faults: dict[str, Any]) -> tuple[Counter[str], int]:
    from bulkjob import Runner, Sandbox, SandboxConfig, Settings
    from bulkjob.sandbox._ledger import Ledger

    foreign_rate = faults.pop("_foreign_per_s", 0)
    sandbox = Sandbox(SandboxConfig(seed=7, **faults))
    await sandbox.start()
    settings = Settings(
        base_url=sandbox.base_url,
        access_token=TOKEN,
        max_requests=1_000_000,
        per_seconds=0.001,
        chunk_size=100,
        reconcile_grace=1.0,
        proof_poll_interval=0.25,
        # The sandbox's clock is exact: a short window around each send, scaled like the rest.
        reconcile_skew=2.0,
        request_timeout=2.0,
        backoff_initial=0.01,
        backoff_max=0.05,
        max_attempts=20,
    )
    stop = asyncio.Event()

    async def other_client() -> None:
        n = 0
        while foreign_rate and not stop.is_set():
            n += 1
            sandbox.add_foreign_job([f"{'x' * 50}{n:014d}"] * 1, finished_after=0.5)
            await asyncio.sleep(1 / foreign_rate)

    other = asyncio.create_task(other_client())
    try:
        report = await Runner(settings, [str(path)]).run()
    finally:
        stop.set()
        await other
        await sandbox.close()
    ledger: Ledger = sandbox.ledger
    if not report.ok or ledger.duplicates or ledger.ids_accepted != JOBS * 100:
        raise RuntimeError(f"not exactly once: {report.summary()}")
    lost = sum(ledger.faults[k] for k in ("drop_after_accept", "accept_then_garbage", "5xx"))
    return Counter(ledger.routes), lost


def main(quick: bool) -> str:
    quiet_logging()
    # Every lost answer is a warning; here they are the point, not news.
    from bulkjob._logging import configure_logging

    configure_logging("console", level=logging.ERROR, stream=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bulkjob-bench-proof-") as tmp:
        path = Path(tmp) / "ids.txt"
        write_ids_fast(path, JOBS * 100)
        clean: Counter[str] | None = None
        for name, faults in SCENARIOS.items():
            routes, lost = asyncio.run(_measure(path, dict(faults)))
            if clean is None:
                clean = routes
            extra = {r: routes[r] - clean[r] for r in ROUTES}
            per = " · ".join(f"{extra[r] / lost:.2f} {r}" for r in ROUTES) if lost else "—"
            total = sum(extra.values())
            rows.append(
                (
                    name,
                    f"{lost}",
                    f"{sum(routes[r] for r in ROUTES):,}",
                    f"{total / lost:.2f}" if lost else "0",
                    per,
                )
            )
    headers = (
        f"{JOBS} jobs of 100 ids",
        "submits with a lost answer",
        "requests",
        "extra requests per lost answer",
        "... of which (resent submits, job lists, statuses, results)",
    )
    title = "### proof: the price of a lost answer, in requests (all throttled like any)\n\n"
    return title + table(headers, rows) + "\n\n" + machine_line()


if __name__ == "__main__":
    import sys

    print(main("--quick" in sys.argv))
