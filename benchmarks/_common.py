"""Shared helpers: the sandbox server process, id files, timing, markdown tables."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import platform
import select
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYTHON = sys.executable
TOKEN = "sandbox-token"
#: How long a server process gets to print its address before we give up on it.
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 5.0
#: Spacing-free settings for "no throttle": the largest window count Settings accepts.
UNTHROTTLED = {"max_requests": 1_000_000, "per_seconds": 0.001}


def machine_line() -> str:
    return (
        f"_machine: {platform.platform()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}_"
    )


def quiet_logging() -> None:
    """bulkjob logs every accepted job at INFO; a benchmark wants only warnings."""
    from bulkjob._logging import configure_logging

    configure_logging("console", level=logging.WARNING, stream=sys.stderr)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


@dataclass
class ServerInfo:
    base_url: str
    token_url: str
    ledger_url: str

    def ledger(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.ledger_url, timeout=30) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data


@contextlib.contextmanager
def sandbox_process(
    throttle: int | None = None,
    window: float = 300.0,
    *,
    track_ids: bool = True,
    latency: float = 0.0,
) -> Iterator[ServerInfo]:
    """A fresh sandbox in a child process; terminated (then killed) on exit."""
    cmd = [PYTHON, "-m", "benchmarks._server", "--window", str(window)]
    cmd += ["--latency", str(latency)]
    if throttle is not None:
        cmd += ["--throttle", str(throttle)]
    if not track_ids:
        cmd.append("--no-track-ids")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, cwd=root, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], _START_TIMEOUT)
        line = proc.stdout.readline() if ready else ""
        if not line:
            raise RuntimeError(f"sandbox server did not start (exit code {proc.poll()})")
        yield ServerInfo(**json.loads(line))
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_ids_fast(path: Path, count: int, block: int = 10_000) -> None:
    """``count`` valid random ids (64 chars of [A-Za-z0-9_-]), one per line.

    Same shape as :func:`bulkjob.cli._demo.write_ids` but random rather than seeded and several
    times faster: one ``urandom`` + base64 per block of ids, then 64-character slices.
    """
    with path.open("wb") as out:
        left = count
        while left > 0:
            n = min(block, left)
            enc = base64.urlsafe_b64encode(os.urandom(48 * n))
            out.write(b"\n".join([enc[i : i + 64] for i in range(0, 64 * n, 64)]))
            out.write(b"\n")
            left -= n


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - t0, result


def read_floor(path: Path) -> tuple[float, int]:
    """Seconds to pre-check and iterate the file with :class:`IdSource`: the floor of a run."""
    from bulkjob._source import IdSource

    t0 = time.perf_counter()
    n = 0
    with IdSource([str(path)]) as source:
        source.check()
        for _ in source:
            n += 1
    return time.perf_counter() - t0, n


def fmt_rate(ids: int, seconds: float) -> str:
    return f"{ids / seconds:,.0f}" if seconds > 0 else "inf"
