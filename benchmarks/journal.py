"""Journal cost: end-to-end throughput with and without the run journal, side by side.

Each journaled run writes a fresh journal file in a temp dir. Two chunk sizes: the default
10,000 ids per job, and 100 ids per job, where per-chunk journal writes are 100 times as
frequent.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ._common import (
    fmt_rate,
    machine_line,
    median,
    quiet_logging,
    sandbox_process,
    table,
    write_ids_fast,
)
from .throughput import run_bulkjob

TITLE = "### journal: throughput with and without the run journal"


def _journal_value(tmp: Path, run: int) -> str:
    return str(tmp / f"journal-{run}.sqlite")


def main(quick: bool) -> str:
    quiet_logging()
    size = 100_000 if quick else 1_000_000
    rounds = 1 if quick else 3
    rows = []
    with tempfile.TemporaryDirectory(prefix="bulkjob-bench-journal-") as tmp_name:
        tmp = Path(tmp_name)
        path = tmp / "ids.txt"
        write_ids_fast(path, size)
        run = 0
        for chunk_size in (10_000, 100):
            without: list[float] = []
            with_journal: list[float] = []
            for _ in range(rounds):
                # Alternate the two variants inside each round, so noise hits both alike.
                for journal in (False, True):
                    extra: dict[str, object] = {"chunk_size": chunk_size}
                    if journal:
                        run += 1
                        extra["journal"] = _journal_value(tmp, run)
                    with sandbox_process(track_ids=False) as server:
                        wall, submitted = run_bulkjob(path, server.base_url, **extra)
                    assert submitted == size, (submitted, size)
                    (with_journal if journal else without).append(wall)
                for leftover in tmp.glob("journal-*"):
                    leftover.unlink()
            ratios = sorted(j / w for j, w in zip(with_journal, without, strict=True))
            rows.append(
                (
                    f"{chunk_size:,}",
                    f"{size // chunk_size:,}",
                    fmt_rate(size, median(without)),
                    fmt_rate(size, median(with_journal)),
                    f"{median(ratios):.3f}"
                    + (f" ({ratios[0]:.3f} to {ratios[-1]:.3f})" if rounds > 1 else ""),
                )
            )
    headers = (
        "ids per job",
        "jobs",
        "no journal (ids/s)",
        "journal (ids/s)",
        "time with ÷ time without",
    )
    title = (
        f"{TITLE}: {size:,} ids, no throttle, sandbox in its own process; "
        f"median of {rounds} round(s)\n\n"
    )
    return title + table(headers, rows) + "\n\n" + machine_line()


if __name__ == "__main__":
    import sys

    print(main("--quick" in sys.argv))
