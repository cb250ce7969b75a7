"""Ids in, rows out: ``bulkjob.enrich`` end to end against the sandbox, next to the floor of
merely parsing the same results CSVs from disk, and its peak RSS at two sizes.

Each measurement is a child process (peak RSS through the memory benchmark's launcher),
against a sandbox in a process of its own that serves results at once (``finished_after``
0). The child enriches every id, with a journal, and prints its rows/s; the same job
results are then downloaded once (``bulkjob.results``, not timed) and parsed from disk as
a consumer minimally would (``csv.reader``, a dict per row): that is the floor. The ids
come from a generator when the Runner takes ``ids=``, else from a file. The smaller size
runs :data:`ROUNDS` such pairs, and the ratio is their median.
"""

from __future__ import annotations

import csv
import inspect
import json
import statistics
import tempfile
import time
from pathlib import Path

from ._common import TOKEN, UNTHROTTLED, machine_line, sandbox_process, table, write_ids_fast
from .memory import child_maxrss_kib

CHUNK = 10_000
#: Paired rounds at the smaller size (an enrich run, then the floor on its own results):
#: the ratio is their median. One pair moved by a third between runs on a shared machine.
ROUNDS = 3

_CHILD = """
import base64, json, os, sys, time
import bulkjob
from bulkjob._logging import configure_logging
configure_logging("console", level=30, stream=sys.stderr)
path, base_url, journal, count, use_ids, out = sys.argv[1:7]
count = int(count)

def generate():
    left = count
    while left > 0:
        n = min(10_000, left)
        enc = base64.urlsafe_b64encode(os.urandom(48 * n)).decode()
        yield from (enc[i : i + 64] for i in range(0, 64 * n, 64))
        left -= n

source = dict(ids=generate()) if use_ids == "1" else dict(inputs=[path])
t0 = time.perf_counter()
rows = 0
for row in bulkjob.enrich(**source, journal=journal, base_url=base_url, access_token={token!r},
                          max_requests={max_requests}, per_seconds={per_seconds},
                          chunk_size={chunk}):
    rows += 1
elapsed = time.perf_counter() - t0
with open(out, "w") as fh:
    json.dump({{"rows": rows, "seconds": elapsed}}, fh)
""".format(token=TOKEN, chunk=CHUNK, **UNTHROTTLED)


def _takes_ids() -> bool:
    from bulkjob._runner import Runner

    return "ids" in inspect.signature(Runner).parameters


def _parse_floor(files: list[Path]) -> tuple[float, int]:
    """Seconds to parse ``files`` into a dict per row, as a consumer minimally would."""
    t0 = time.perf_counter()
    n = 0
    for path in files:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            for record in reader:
                dict(zip(header, record, strict=False))
                n += 1
    return time.perf_counter() - t0, n


def _measure(
    size: int, tmp: Path, use_ids: bool, *, floor: bool, round_: int = 0
) -> dict[str, float]:
    import bulkjob

    path = tmp / f"ids-{size}.txt"
    if not use_ids:
        write_ids_fast(path, size)
    journal, out = tmp / f"run-{size}-{round_}.journal", tmp / f"out-{size}-{round_}.json"
    with sandbox_process(track_ids=False) as server:
        args = [_CHILD, str(path), server.base_url, str(journal), str(size), "01"[use_ids]]
        rss = child_maxrss_kib([*args, str(out)])
        result = json.loads(out.read_text())
        assert result["rows"] == size, (result, size)
        got: dict[str, float] = {"rss_kib": rss, "rows_s": result["rows"] / result["seconds"]}
        if floor:
            parts = tmp / f"results-{size}-{round_}"
            summary = bulkjob.results(
                journal, parts, base_url=server.base_url, access_token=TOKEN, **UNTHROTTLED
            )
            seconds, rows = _parse_floor(list(summary.files))
            assert rows == size, (rows, size)
            got["floor_rows_s"] = rows / seconds
    path.unlink(missing_ok=True)
    return got


def main(quick: bool) -> str:
    small, big = (100_000, 500_000) if quick else (1_000_000, 5_000_000)
    use_ids = _takes_ids()
    with tempfile.TemporaryDirectory(prefix="bulkjob-bench-enrich-") as name:
        tmp = Path(name)
        rounds = [_measure(small, tmp, use_ids, floor=True, round_=i) for i in range(1, ROUNDS + 1)]
        second = _measure(big, tmp, use_ids, floor=False)
    ratios = [r["rows_s"] / r["floor_rows_s"] for r in rounds]
    ratio = statistics.median(ratios)
    rss_ratio = second["rss_kib"] / statistics.median(r["rss_kib"] for r in rounds)
    rows = [
        (
            f"{small:,} (round {i})",
            f"{r['rows_s']:,.0f}",
            f"{r['floor_rows_s']:,.0f}",
            f"{r['rows_s'] / r['floor_rows_s']:.3f}",
            f"{r['rss_kib'] / 1024:,.1f}",
        )
        for i, r in enumerate(rounds, 1)
    ]
    big_rss = f"{second['rss_kib'] / 1024:,.1f}"
    rows.append((f"{big:,}", f"{second['rows_s']:,.0f}", "", "", big_rss))
    source = "a generator (ids=)" if use_ids else "a file (ids= not in this build)"
    title = (
        f"### enrich: ids from {source} to rows, sandbox in its own process, results at once\n\n"
    )
    summary = (
        f"\n\nrows/s ÷ parse floor at {small:,} ids, median of {ROUNDS} rounds: **{ratio:.3f}** "
        f"({'meets' if ratio >= 0.5 else 'MISSES'} the ≥ 0.5 target); peak RSS {big:,} ÷ "
        f"{small:,} ids (median): **{rss_ratio:.3f}** "
        f"({'meets' if rss_ratio <= 1.2 else 'MISSES'} the ≤ 1.2 target)."
    )
    headers = ("ids", "enrich rows/s", "parse floor rows/s", "ratio", "peak RSS (MiB)")
    return title + table(headers, rows) + summary + "\n\n" + machine_line()


if __name__ == "__main__":
    import sys

    print(main("--quick" in sys.argv))
