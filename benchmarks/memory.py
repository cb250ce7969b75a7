"""Peak memory of one submit, in a child process per measurement.

Files at several sizes (with and without dedupe), then ``submit(ids=generator)`` at two
sizes: the iterable is spooled as it is read, so its peak RSS must not grow with the count.

Each measurement is a fresh ``python`` child that runs one ``bulkjob.submit`` of the file
against a sandbox in another process (``track_ids=False``, no throttle). Its peak RSS is the
``ru_maxrss`` that ``os.wait4`` returns for exactly that child (``RUSAGE_CHILDREN`` would be the
maximum over every child waited for so far, not this one's), reaped by a small launcher process
(see ``_LAUNCHER``). A child that only imports bulkjob gives the interpreter's own baseline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

from ._common import (
    PYTHON,
    TOKEN,
    UNTHROTTLED,
    machine_line,
    sandbox_process,
    table,
    write_ids_fast,
)

CHILD_TIMEOUT = 300.0

_CHILD = """
import sys
import bulkjob
from bulkjob._logging import configure_logging
configure_logging("console", level=30, stream=sys.stderr)
path, base_url, dedupe = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
report = bulkjob.submit([path], base_url=base_url, access_token={token!r},
                        max_requests={max_requests}, per_seconds={per_seconds}, dedupe=dedupe)
sys.exit(0 if report.ok and report.accounted else 1)
""".format(token=TOKEN, **UNTHROTTLED)

_IMPORT_ONLY = "import bulkjob"

# ids= from a generator: nothing holds the list, the spool streams to a zstd file.
_CHILD_IDS = """
import sys
import bulkjob
from bulkjob._logging import configure_logging
configure_logging("console", level=30, stream=sys.stderr)
count, base_url = int(sys.argv[1]), sys.argv[2]
ids = (f"id_{{i:061d}}" for i in range(count))
report = bulkjob.submit(ids=ids, base_url=base_url, access_token={token!r},
                        max_requests={max_requests}, per_seconds={per_seconds})
sys.exit(0 if report.ok and report.accounted and report.ids_submitted == count else 1)
""".format(token=TOKEN, **UNTHROTTLED)


def _generator_sizes(quick: bool) -> tuple[int, int]:
    return (200_000, 1_000_000) if quick else (1_000_000, 5_000_000)


def _sizes(quick: bool) -> list[int]:
    # The pipeline's buffers (chunks read ahead, queued, in flight) fill up by ~320k ids
    # at the defaults: below that, peak RSS still grows with the input by design.
    return [100_000, 1_000_000, 3_000_000] if quick else [100_000, 1_000_000, 10_000_000]


# The launcher: a fresh, small interpreter that starts the measured child and reaps it with
# os.wait4. Linux carries the high-water RSS across fork and execve, so a child forked straight
# from this (by then large) benchmark process would report *our* peak; forked from the
# launcher, it inherits only the launcher's few MiB, below anything it measures itself.
_LAUNCHER = """
import json, os, subprocess, sys, time
timeout, argv = float(sys.argv[1]), sys.argv[2:]
proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
deadline = time.monotonic() + timeout
while True:
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid:
        break
    if time.monotonic() > deadline:
        proc.kill()
        pid, status, usage = os.wait4(proc.pid, 0)
        print(json.dumps({"timeout": True}))
        sys.exit(0)
    time.sleep(0.02)
code = os.waitstatus_to_exitcode(status)
print(json.dumps({"timeout": False, "code": code, "maxrss_kib": usage.ru_maxrss}))
"""


def child_maxrss_kib(args: list[str], timeout: float = CHILD_TIMEOUT) -> int:
    """Run ``python -c ...args`` (via the launcher); return its peak RSS in KiB."""
    cmd = [PYTHON, "-c", _LAUNCHER, str(timeout), PYTHON, "-c", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout + 30)
    finally:
        if proc.poll() is None:  # the launcher itself hung: end its whole session
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    result = json.loads(out)
    if result["timeout"]:
        raise TimeoutError(f"memory child ran past {timeout:.0f} s")
    if result["code"] != 0:
        raise RuntimeError(f"memory child failed with exit code {result['code']}")
    return int(result["maxrss_kib"])


def _mib(kib: int) -> str:
    return f"{kib / 1024:,.1f}"


def main(quick: bool) -> str:
    sizes = _sizes(quick)
    baseline = child_maxrss_kib([_IMPORT_ONLY])
    peaks: dict[tuple[int, bool], int] = {}
    with tempfile.TemporaryDirectory(prefix="bulkjob-bench-memory-") as tmp:
        for size in sizes:
            path = Path(tmp) / f"ids-{size}.txt"
            write_ids_fast(path, size)
            for dedupe in (False, True):
                with sandbox_process(track_ids=False) as server:
                    peaks[size, dedupe] = child_maxrss_kib(
                        [_CHILD, str(path), server.base_url, "1" if dedupe else "0"]
                    )
                    accepted = server.ledger()["ids_accepted"]
                assert accepted == size, (accepted, size)
            path.unlink()
    generated: dict[int, int] = {}
    for size in _generator_sizes(quick):
        with sandbox_process(track_ids=False) as server:
            generated[size] = child_maxrss_kib([_CHILD_IDS, str(size), server.base_url])
            accepted = server.ledger()["ids_accepted"]
        assert accepted == size, (accepted, size)
    rows = []
    for size in sizes:
        plain, dd = peaks[size, False], peaks[size, True]
        per_id = (dd - plain) * 1024 / size
        rows.append((f"{size:,}", _mib(plain), _mib(dd), f"{per_id:,.0f}"))
    big, mid = sizes[-1], sizes[-2]
    ratio = peaks[big, False] / peaks[mid, False]
    verdict = "meets" if ratio <= 1.2 else "MISSES"
    headers = (
        "ids",
        "peak RSS, no dedupe (MiB)",
        "peak RSS, dedupe (MiB)",
        "dedupe extra bytes per id",
    )
    title = (
        "### memory: peak RSS of a child running one submit (no throttle, sandbox in its own "
        f"process); `import bulkjob` alone: {_mib(baseline)} MiB\n\n"
    )
    summary = (
        f"\n\nPeak RSS {big:,} ÷ {mid:,} ids without dedupe: **{ratio:.3f}** "
        f"({verdict} the ≤ 1.2 target)."
    )
    small, large = _generator_sizes(quick)
    gen_ratio = generated[large] / generated[small]
    gen_verdict = "meets" if gen_ratio <= 1.2 else "MISSES"
    gen = (
        f"\n\n`submit(ids=generator)`: peak RSS {_mib(generated[small])} MiB at {small:,} ids, "
        f"{_mib(generated[large])} MiB at {large:,}; ratio **{gen_ratio:.3f}** "
        f"({gen_verdict} the ≤ 1.2 target)."
    )
    return title + table(headers, rows) + summary + gen + "\n\n" + machine_line()


if __name__ == "__main__":
    import sys

    print(main("--quick" in sys.argv))
