"""``python -m benchmarks [NAME...] [--quick] [--base REV]``: run the named benchmarks
(default: all).

Prints one markdown section per benchmark, with how long it took. ``--quick`` runs a
scaled-down version of each (a smoke test that finishes in well under a minute).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

NAMES = (
    "throttle",
    "throughput",
    "memory",
    "journal",
    "proof",
    "queue",
    "ab",
    "merge",
    "shared",
    "enrich",
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(NAMES)}")
    p.add_argument("--quick", action="store_true", help="scaled-down smoke-test sizes")
    p.add_argument(
        "--base",
        default="HEAD",
        metavar="REV",
        help="ab: the commit to compare this checkout with (default HEAD: an A/A run)",
    )
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    names = args.names or list(NAMES)
    mode = "quick" if args.quick else "full"
    print(f"# bulkjob benchmarks ({mode}): {', '.join(names)}\n", flush=True)
    failed = 0
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            out = module.main(args.quick, args.base) if name == "ab" else module.main(args.quick)
        except Exception as exc:
            failed += 1
            out = f"### {name}\n\nFAILED: {type(exc).__name__}: {exc}"
        print(f"{out}\n\n_{name} took {time.perf_counter() - t0:.1f} s_\n", flush=True)
    print(f"_total: {time.perf_counter() - start:.1f} s_", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
