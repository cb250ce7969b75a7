"""Keeping the account's job queue full: bulkjob next to a simple polling loop.

The sandbox (in this process) allows ``LIMIT`` running jobs; each job runs ``DURATION``
seconds once accepted, and a submit beyond the limit gets the public queue-full 400 ("2 jobs
are already running..."). Every request counts against one sliding window (the sandbox
throttles at ``THROTTLE`` per second with lockout, a budget no client should need to come
near). The ideal is ``jobs x DURATION / LIMIT``; utilisation is the jobs' running time over
``LIMIT`` times the span from the first acceptance to the last finish, read from the sandbox's
own timeline; requests per job counts every request the server saw.

The polling loop is what a careful user writes: submit; on queue-full, poll the run's own open
jobs every ``POLL`` seconds until one is final, then submit again.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from ._common import TOKEN, machine_line, quiet_logging, table, write_ids_fast

LIMIT = 2
THROTTLE = 50
POLL = 0.25
JOB_PATH = "target/contact/job"


def _params(quick: bool) -> dict[str, Any]:
    return {"jobs": 10, "duration": 0.6} if quick else {"jobs": 40, "duration": 2.2}


async def _bulkjob(base_url: str, path: Path, ids_per_job: int) -> None:
    import bulkjob

    report = await bulkjob.submit_async(
        [str(path)],
        base_url=base_url,
        access_token=TOKEN,
        max_requests=THROTTLE,
        per_seconds=1.0,
        chunk_size=ids_per_job,
        concurrency=8,
    )
    if not report.ok:
        raise RuntimeError(report.summary())


async def _polling_loop(base_url: str, path: Path, ids_per_job: int) -> None:
    """Submit each job; while the queue is full, poll own open jobs every POLL seconds."""
    text = await asyncio.to_thread(path.read_text)
    ids = [line for line in text.split("\n") if line]
    bodies = ["\n".join(ids[i : i + ids_per_job]) for i in range(0, len(ids), ids_per_job)]
    headers = {"accessToken": TOKEN, "Accept": "application/json"}
    open_jobs: list[str] = []
    async with aiohttp.ClientSession() as session:
        for body in bodies:
            while True:
                post = {**headers, "Content-Type": "text/plain"}
                async with session.post(f"{base_url}/{JOB_PATH}", data=body, headers=post) as r:
                    data = json.loads(await r.text())
                if r.status == 200:
                    open_jobs.append(data["jobId"])
                    break
                if r.status != 400:
                    raise RuntimeError(f"{r.status}: {data}")
                while True:  # the queue is full: wait for one of ours to finish
                    await asyncio.sleep(POLL)
                    for job_id in list(open_jobs):
                        url = f"{base_url}/{JOB_PATH}/{job_id}"
                        async with session.get(url, headers=headers) as r:
                            status = json.loads(await r.text())["status"]
                        if status in ("finished", "failed", "aborted"):
                            open_jobs.remove(job_id)
                    if len(open_jobs) < LIMIT:
                        break


async def _measure(name: str, jobs: int, duration: float, path: Path) -> dict[str, Any]:
    from bulkjob import Sandbox, SandboxConfig

    config = SandboxConfig(
        running_job_limit=LIMIT,
        finished_after=duration,
        throttle_requests=THROTTLE,
        throttle_window=1.0,
        track_ids=False,
    )
    async with Sandbox(config) as sandbox:
        client = _bulkjob if name == "bulkjob" else _polling_loop
        started = time.monotonic()
        await client(sandbox.base_url, path, 100)
        wall = time.monotonic() - started
        ledger = sandbox.ledger
        return {
            "wall": wall,
            "utilisation": ledger.utilisation(LIMIT),
            "per_job": ledger.requests / jobs,
            "queue_full": ledger.rejected["queue_full"],
            "throttled": ledger.throttled,
            "max_running": ledger.max_running(),
            "jobs": len(ledger.jobs),
        }


def main(quick: bool) -> str:
    quiet_logging()
    p = _params(quick)
    jobs, duration = p["jobs"], p["duration"]
    ideal = jobs * duration / LIMIT
    rows = []
    with tempfile.TemporaryDirectory(prefix="bulkjob-bench-queue-") as tmp:
        path = Path(tmp) / "ids.txt"
        write_ids_fast(path, jobs * 100)
        for name in ("bulkjob", f"polling loop, {POLL} s"):
            got = asyncio.run(_measure(name, jobs, duration, path))
            assert got["jobs"] == jobs and got["max_running"] <= LIMIT, got
            rows.append(
                (
                    name,
                    f"**{got['utilisation']:.3f}**",
                    f"{got['wall'] / ideal:.3f}",
                    f"{got['per_job']:.1f}",
                    f"{got['queue_full']}",
                    f"{got['throttled']}",
                )
            )
    headers = (
        "client",
        "utilisation of the queue",
        "wall ÷ ideal",
        "requests per job",
        "queue-full 400s",
        "429s",
    )
    title = (
        f"### queue: {jobs} jobs, a running-job limit of {LIMIT}, {duration:g} s each "
        f"(ideal {ideal:g} s), every request counted in a {THROTTLE}/s window\n\n"
    )
    return title + table(headers, rows) + "\n\n" + machine_line()


if __name__ == "__main__":
    import sys

    print(main("--quick" in sys.argv))
