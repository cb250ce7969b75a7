"""``results --merge``: bulkjob's byte merge next to a plain byte copy and the old parsed merge.

Results files of ten columns (a few quoted: commas, quotes, now and then a newline) are
written once; then, in alternating order inside each round, the same files are merged by
bulkjob (:func:`bulkjob._merge.merge_files`), copied byte for byte into one file as ``cat``
would (same block size, no header handling: the floor), and merged the way bulkjob did it
before (csv reader and writer, every row parsed and written again). The files are in the
page cache. Outputs go beside them, without fsync: writing them to disk takes the disk's
time, the same for all three. Before each timing an untimed byte copy and ``os.sync()`` put
the machine in the same state, so that no variant pays for what the one before left.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ._common import machine_line, median, quiet_logging, table

HEADER = (
    "newContactId",
    "firstName",
    "lastName",
    "email",
    "jobTitle",
    "phone",
    "companyName",
    "website",
    "address",
    "matchStatus",
)
_FIRST = ("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken")
_LAST = ("Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
_TITLES = ("CTO", "Engineer", 'VP "Growth"', "Director, Sales", "Architect", "Analyst")
_COMPANIES = ("Acme, Inc.", "Globex", "Initech LLC", 'Umbrella "Corp"', "Hooli", "Stark, Ltd")
_STREETS = ("1 Main St", "22 Rue de Lyon", "5 Harbour Rd, Suite 3", "10 Downing St\nLondon")


def _row_tails(rng: random.Random, n: int) -> list[bytes]:
    """``n`` rows without their id, as the csv module writes them (the id goes in front)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    tails = []
    for _ in range(n):
        first, last, company = rng.choice(_FIRST), rng.choice(_LAST), rng.choice(_COMPANIES)
        domain = company.split(",")[0].split()[0].strip('"').lower()
        writer.writerow(
            (
                first,
                last,
                f"{first}.{last}@{domain}.example".lower(),
                rng.choice(_TITLES),
                f"+1-555-01{rng.randrange(100):02d}",
                company,
                f"www.{domain}.example",
                rng.choice(_STREETS),
                "found" if rng.random() < 0.9 else "not found",
            )
        )
        tails.append(out.getvalue().encode())
        out.seek(0)
        out.truncate()
    return tails


def write_results(directory: Path, files: int, file_bytes: int) -> list[Path]:
    """``files`` results files of about ``file_bytes`` each; one id per row, all distinct."""
    rng = random.Random(7)
    tails = _row_tails(rng, 4096)
    header = (",".join(HEADER) + "\n").encode()
    paths = []
    row = 0
    for i in range(files):
        path = directory / f"{i + 1:06d}-job{i}.csv"
        size = 0
        with path.open("wb") as out:
            out.write(header)
            while size < file_bytes:
                block = b"".join(
                    b"%064d," % (row + k) + tails[rng.randrange(len(tails))] for k in range(1000)
                )
                row += 1000
                out.write(block)
                size += len(block)
        paths.append(path)
    return paths


def byte_copy(files: Sequence[Path], dest: Path) -> None:
    """The floor: every file's bytes into ``dest``, headers and all, in blocks like bulkjob's."""
    from bulkjob._merge import _BLOCK

    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with dest.open("wb") as out:
        for path in files:
            with path.open("rb", buffering=0) as src:
                while n := src.readinto(buf):
                    out.write(view[:n])


def parsed_merge(files: Sequence[Path], dest: Path) -> None:
    """bulkjob's merge before it copied bytes: every row parsed and written again."""
    header: list[str] | None = None
    with dest.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        for path in files:
            with path.open(encoding="utf-8", newline="") as src:
                reader = csv.reader(src)
                first = next(reader, None)
                if first is None:
                    continue
                if header is None:
                    header = first
                    writer.writerow(header)
                elif first != header:
                    raise ValueError(f"{path.name}: other columns")
                for row in reader:
                    writer.writerow(row)


def bulkjob_merge(files: Sequence[Path], dest: Path) -> None:
    from bulkjob._merge import merge_files

    merge_files(files, dest)


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main(quick: bool) -> str:
    quiet_logging()
    files, file_bytes = (8, 2_500_000) if quick else (40, 10_000_000)
    rounds = 3 if quick else 6  # a multiple of 3: each variant goes first, second, third alike
    variants: dict[str, Callable[[Sequence[Path], Path], None]] = {
        "byte copy (cat, 1 MiB blocks)": byte_copy,
        "bulkjob merge (bytes)": bulkjob_merge,
        "parsed merge (csv reader + writer)": parsed_merge,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="bulkjob-bench-merge-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        paths = write_results(root / "in", files, file_bytes)
        total = sum(p.stat().st_size for p in paths)
        dest = root / "merged.csv"
        digests: dict[str, str] = {}
        names = list(variants)
        for r in range(rounds):
            # Each round starts with another variant, so no one always runs first (or last).
            for name in names[r % len(names) :] + names[: r % len(names)]:
                # Every timing starts from the same state: just after an untimed byte copy,
                # with nothing left to write back. Without it, the first pass and whatever
                # followed the parsed merge were seen running 3 to 8 times slower.
                byte_copy(paths, dest)
                dest.unlink()
                os.sync()
                t0 = time.perf_counter()
                variants[name](paths, dest)
                times[name].append(time.perf_counter() - t0)
                if r == 0:
                    digests[name] = _digest(dest)
                dest.unlink()
    merge_name, copy_name, parsed_name = names[1], names[0], names[2]
    # The inputs are what the csv module writes: the two merges must agree byte for byte.
    assert digests[merge_name] == digests[parsed_name], "byte merge differs from parsed merge"
    rows = []
    for name in names:
        ratios = sorted(t / c for t, c in zip(times[name], times[copy_name], strict=True))
        rows.append(
            (
                name,
                f"{total / median(times[name]) / 1e6:,.0f}",
                f"{median(ratios):.2f} ({ratios[0]:.2f} to {ratios[-1]:.2f})",
            )
        )
    headers = ("variant", "MB/s (median)", "time ÷ byte copy time (median, range)")
    title = (
        f"### merge: {files} results files, {total / 1e6:,.0f} MB in all, 10 columns; "
        f"median of {rounds} alternating rounds\n\n"
    )
    note = (
        f"\n\nTarget: bulkjob merge ÷ byte copy ≤ 1.5. The {merge_name} output is byte for "
        f"byte the {parsed_name} output (checked)."
    )
    return title + table(headers, rows) + note + "\n\n" + machine_line()


if __name__ == "__main__":
    import sys

    print(main("--quick" in sys.argv))
