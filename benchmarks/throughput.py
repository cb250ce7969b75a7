"""End-to-end throughput without a throttle, next to the floor of reading the same file.

The floor is what no submitter can beat: the pre-pass (``IdSource.check``) plus one iteration
of the source (validation included). bulkjob runs in this process against a sandbox in its own
process (``track_ids=False``, no latency), jobs of 10,000 ids, concurrency 8.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ._common import (
    TOKEN,
    UNTHROTTLED,
    fmt_rate,
    machine_line,
    median,
    quiet_logging,
    read_floor,
    sandbox_process,
    table,
    write_ids_fast,
)


def _sizes(quick: bool) -> list[int]:
    return [100_000, 300_000] if quick else [1_000_000, 10_000_000]


def run_bulkjob(path: Path, base_url: str, **extra: object) -> tuple[float, int]:
    """Seconds for one ``bulkjob.submit`` of ``path``, and the ids it reports submitted."""
    import bulkjob

    t0 = time.perf_counter()
    report = bulkjob.submit(
        [str(path)], base_url=base_url, access_token=TOKEN, **UNTHROTTLED, **extra
    )
    wall = time.perf_counter() - t0
    if not (report.ok and report.accounted):
        raise RuntimeError(f"bulkjob run failed: {report.summary()}")
    return wall, report.ids_submitted


def main(quick: bool) -> str:
    quiet_logging()
    rounds = 1 if quick else 3
    rows = []
    with tempfile.TemporaryDirectory(prefix="bulkjob-bench-throughput-") as tmp:
        for size in _sizes(quick):
            path = Path(tmp) / f"ids-{size}.txt"
            write_ids_fast(path, size)
            floors: list[float] = []
            walls: list[float] = []
            accepted = 0
            # Floor and bulkjob alternate inside each round, so machine noise hits both alike.
            for _ in range(rounds):
                floor, n = read_floor(path)
                assert n == size, (n, size)
                floors.append(floor)
                with sandbox_process(track_ids=False) as server:
                    wall, submitted = run_bulkjob(path, server.base_url)
                    accepted = server.ledger()["ids_accepted"]
                assert submitted == size and accepted == size, (submitted, accepted, size)
                walls.append(wall)
            path.unlink()
            floor, wall = median(floors), median(walls)
            ratios = sorted(w / f for w, f in zip(walls, floors, strict=True))
            rows.append(
                (
                    f"{size:,}",
                    fmt_rate(size, floor),
                    fmt_rate(size, wall),
                    f"{median(ratios):.2f}"
                    + (f" ({ratios[0]:.2f} to {ratios[-1]:.2f})" if rounds > 1 else ""),
                    f"{accepted:,}",
                )
            )
    headers = (
        "ids",
        "floor: check + iterate IdSource (ids/s)",
        "bulkjob end to end (ids/s)",
        "bulkjob time ÷ floor time",
        "ids accepted by server",
    )
    title = (
        "### throughput: no throttle, jobs of 10,000 ids, concurrency 8, sandbox in its own "
        f"process; median of {rounds} round(s)\n\n"
    )
    return title + table(headers, rows) + "\n\n" + machine_line()


if __name__ == "__main__":
    import sys

    print(main("--quick" in sys.argv))
