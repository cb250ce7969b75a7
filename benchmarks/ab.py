"""A/B against an earlier commit, side by side in one run: throttle, throughput, memory, journal.

``python -m benchmarks ab --base REV`` checks REV out into a temporary git worktree and runs
the same measurements with each tree's own ``bulkjob`` (A = REV, B = this checkout), in fresh
child processes, alternating A and B inside every round so that machine noise hits both alike.
The sandbox is this checkout's, in a process of its own, fresh for every measurement.
``--base HEAD`` (the default) is an A/A run: it shows how large the noise alone is.

Only the public API (``bulkjob.submit``) is driven, so any two commits compare.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._common import (
    PYTHON,
    TOKEN,
    UNTHROTTLED,
    machine_line,
    median,
    sandbox_process,
    table,
    write_ids_fast,
)

ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT = 600.0

# One submit in a fresh interpreter; prints its wall time, report counters and peak RSS.
_CHILD = """
import json, resource, sys, time
import bulkjob
from bulkjob._logging import configure_logging
configure_logging("console", level=30, stream=sys.stderr)
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
report = bulkjob.submit([args["path"]], base_url=args["base_url"], access_token=args["token"],
                        **args["settings"])
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "ok": report.ok and report.accounted,
                  "requests": report.requests, "throttled": report.throttled,
                  "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


@contextlib.contextmanager
def base_tree(rev: str) -> Iterator[Path]:
    """``rev`` checked out in a temporary worktree, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bulkjob-ab-") as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )


def one_submit(tree: Path, path: Path, base_url: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One ``bulkjob.submit`` with ``tree``'s code, in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BULKJOB_", "INSIDEVIEW_"))}
    env["PYTHONPATH"] = str(tree)
    arg = {"path": str(path), "base_url": base_url, "token": TOKEN, "settings": settings}
    done = subprocess.run(
        [PYTHON, "-c", _CHILD, json.dumps(arg)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"{tree}: child failed: {done.stderr[-800:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if not out["ok"]:
        raise RuntimeError(f"{tree}: the run did not account for every id")
    return out


def _pair(
    trees: dict[str, Path],
    rounds: int,
    measure: Any,
) -> dict[str, list[dict[str, Any]]]:
    """``measure(tree)`` for A and B, alternating which goes first each round."""
    seen: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    order = list(trees)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            seen[name].append(measure(trees[name]))
    return seen


def main(quick: bool, base: str = "HEAD") -> str:
    rounds = 2 if quick else 5
    size = 200_000 if quick else 1_000_000
    jobs = 100 if quick else 400
    rows: list[tuple[str, str, str, str]] = []
    with base_tree(base) as tree, tempfile.TemporaryDirectory(prefix="bulkjob-ab-ids-") as tmp:
        trees = {"A": tree, "B": ROOT}
        big = Path(tmp) / "big.txt"
        write_ids_fast(big, size)
        small = Path(tmp) / "small.txt"
        write_ids_fast(small, jobs * 100)

        def throttle(t: Path) -> dict[str, Any]:
            settings = {"max_requests": 20, "per_seconds": 1.0, "chunk_size": 100}
            with sandbox_process(throttle=20, window=1.0) as server:
                out = one_submit(t, small, server.base_url, settings)
                out["429"] = server.ledger()["throttled"]
            out["ratio"] = out["wall"] / (jobs / 20)
            return out

        def throughput(t: Path) -> dict[str, Any]:
            with sandbox_process(track_ids=False) as server:
                return one_submit(t, big, server.base_url, dict(UNTHROTTLED))

        def journaled(t: Path) -> dict[str, Any]:
            journal = Path(tmp) / f"j-{os.urandom(4).hex()}.journal"
            settings = {**UNTHROTTLED, "chunk_size": 1000, "journal": str(journal)}
            with sandbox_process(track_ids=False) as server:
                out = one_submit(t, big, server.base_url, settings)
            for leftover in Path(tmp).glob(f"{journal.name}*"):
                leftover.unlink()
            return out

        thr = _pair(trees, rounds, throttle)
        rows.append(_row("throttle: wall ÷ ideal (20/s, lockout)", thr, "ratio", "429"))
        tpt = _pair(trees, rounds, throughput)
        rows.append(_row(f"throughput: {size:,} ids, seconds", tpt, "wall"))
        rows.append(_row(f"memory: peak RSS of that submit, MiB ({size:,} ids)", tpt, "rss_mib"))
        jnl = _pair(trees, rounds, journaled)
        rows.append(_row(f"journal: {size:,} ids in jobs of 1,000, seconds", jnl, "wall"))
    headers = ("measure (median of rounds)", f"A = {base}", "B = this checkout", "B ÷ A")
    title = (
        f"### A/B: {base} (A) against this checkout (B), {rounds} alternating rounds, "
        "each run in a fresh process\n\n"
    )
    return title + table(headers, rows) + "\n\n" + machine_line()


def _row(
    label: str, seen: dict[str, list[dict[str, Any]]], key: str, extra: str | None = None
) -> tuple[str, str, str, str]:
    for runs in seen.values():
        for run in runs:
            run["rss_mib"] = run["rss_kib"] / 1024
    a = median([run[key] for run in seen["A"]])
    b = median([run[key] for run in seen["B"]])

    def cell(name: str, value: float) -> str:
        text = f"{value:.3f}" if value < 10 else f"{value:.1f}"
        if extra is not None:
            text += f" ({sum(run[extra] for run in seen[name])} x {extra})"
        return text

    return (label, cell("A", a), cell("B", b), f"**{b / a:.3f}**")


if __name__ == "__main__":
    import sys

    print(main("--quick" in sys.argv))
