"""Throttle adherence and use: bulkjob next to aiolimiter, PyrateLimiter and a sleep loop.

Each client runs against a fresh sandbox (in its own process) that throttles at N requests per
sliding window and locks the account out for a whole window once exceeded, at two latencies.
"Rate ÷ allowed" is the jobs per second achieved over N per window: above 1 is possible,
since the first window's budget may go at once (the physical limit is ``1 + window / run``);
the 429s, duplicates and lost ids come from the server's ledger.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import baselines
from ._common import TOKEN, machine_line, median, quiet_logging, sandbox_process, table

CHUNK = 100
CONCURRENCY = 8


def _params(quick: bool) -> dict[str, Any]:
    if quick:
        return {"n": 20, "window": 0.5, "jobs": 80, "rounds": 1, "latencies": (0.0, 0.05)}
    return {"n": 50, "window": 1.0, "jobs": 400, "rounds": 3, "latencies": (0.0, 0.05)}


async def _bulkjob(base_url: str, path: Path, n: int, window: float) -> dict[str, int]:
    import bulkjob

    report = await bulkjob.submit_async(
        [str(path)],
        base_url=base_url,
        access_token=TOKEN,
        max_requests=n,
        per_seconds=window,
        chunk_size=CHUNK,
        concurrency=CONCURRENCY,
    )
    return {
        "ok": len(report.jobs),
        "failed": len(report.rejected) + len(report.pending_chunks),
        "client_429": report.throttled,
    }


async def _textbook(base_url: str, path: Path, n: int, window: float) -> dict[str, int]:
    return await baselines.textbook(
        base_url,
        path,
        max_requests=n,
        per_seconds=window,
        token=TOKEN,
        chunk_size=CHUNK,
        concurrency=CONCURRENCY,
    )


async def _pyrate(base_url: str, path: Path, n: int, window: float) -> dict[str, int]:
    return await baselines.pyrate(
        base_url,
        path,
        max_requests=n,
        per_seconds=window,
        token=TOKEN,
        chunk_size=CHUNK,
        concurrency=CONCURRENCY,
    )


async def _sequential(base_url: str, path: Path, n: int, window: float) -> dict[str, int]:
    return await baselines.sequential(
        base_url, path, max_requests=n, per_seconds=window, token=TOKEN, chunk_size=CHUNK
    )


Client = Callable[[str, Path, int, float], Awaitable[dict[str, int]]]
CLIENTS: list[tuple[str, Client]] = [
    ("bulkjob (Runner, concurrency 8)", _bulkjob),
    ("textbook: gather + Semaphore(8) + AsyncLimiter(N, T) + tenacity", _textbook),
    ("the same with PyrateLimiter's sliding-window log", _pyrate),
    ("sequential: sleep(T/N) between requests", _sequential),
]


def _one_round(
    client: Client,
    path: Path,
    n: int,
    window: float,
    expected: int,
    timeout: float,
    latency: float,
) -> dict[str, Any]:
    with sandbox_process(n, window, track_ids=True, latency=latency) as server:
        t0 = time.perf_counter()
        timed_out = False
        try:
            result = asyncio.run(
                asyncio.wait_for(client(server.base_url, path, n, window), timeout)
            )
        except TimeoutError:
            result, timed_out = {}, True
        wall = time.perf_counter() - t0
        ledger = server.ledger()
    return {
        "wall": wall,
        "timed_out": timed_out,
        "result": result,
        "throttled": ledger["throttled"],
        "lockouts": ledger["lockouts"],
        "max_in_window": ledger["max_in_window"],
        "duplicates": ledger["duplicates"],
        "lost": expected - ledger["unique_ids"],
        "requests": ledger["requests"],
    }


def main(quick: bool) -> str:
    quiet_logging()
    p = _params(quick)
    n, window, jobs, rounds = p["n"], p["window"], p["jobs"], p["rounds"]
    ideal = jobs / (n / window)
    # Bounded: a client still running after this is cancelled and reported as timed out.
    timeout = 5 * ideal + 10
    expected = jobs * CHUNK
    rows = []
    with tempfile.TemporaryDirectory(prefix="bulkjob-bench-throttle-") as tmp:
        path = Path(tmp) / "ids.txt"
        from bulkjob.cli._demo import write_ids

        write_ids(path, expected, seed=7)
        for latency in p["latencies"]:
            for name, client in CLIENTS:
                n_rounds = rounds if client is _bulkjob else 1
                runs = [
                    _one_round(client, path, n, window, expected, timeout, latency)
                    for _ in range(n_rounds)
                ]
                rates = [ideal / r["wall"] for r in runs]
                rate = f"**{median(rates):.3f}**"
                if n_rounds > 1:
                    rate += f" ({min(rates):.3f} to {max(rates):.3f})"
                if any(r["timed_out"] for r in runs):
                    rate = f"< {ideal / timeout:.2f} (timed out, cancelled)"
                rows.append(
                    (
                        f"{latency * 1000:g} ms",
                        name,
                        rate,
                        sum(r["throttled"] for r in runs),
                        sum(r["lockouts"] for r in runs),
                        f"{max(r['max_in_window'] for r in runs)} / {n}",
                        sum(r["duplicates"] for r in runs),
                        sum(r["lost"] for r in runs),
                        sum(r["result"].get("failed", 0) for r in runs),
                    )
                )
    headers = (
        "latency",
        "client",
        "rate ÷ allowed",
        "429s",
        "lockouts",
        "max requests in a window",
        "ids duplicated",
        "ids lost",
        "jobs given up",
    )
    title = (
        f"### throttle: {jobs} jobs of {CHUNK} ids, sandbox throttle {n} per {window:g} s "
        f"with lockout (ideal {ideal:.1f} s at exactly the allowed rate)\n\n"
    )
    note = (
        "\n\nbulkjob: median (and range) of its rounds; the others one round each; counts "
        "summed over rounds, each round a fresh sandbox process. 'max requests in a window' "
        "is the server's sliding-window maximum of arrivals."
    )
    return title + table(headers, rows) + note + "\n\n" + machine_line()


if __name__ == "__main__":
    import sys

    print(main("--quick" in sys.argv))
