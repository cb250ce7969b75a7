"""Tests for the progress line."""

from __future__ import annotations

import asyncio
import fcntl
import io
import json
import os
import pty
import re
import struct
import sys
import termios
import tty
from pathlib import Path
from typing import Any

import pytest

from bulkjob._progress import Progress, format_duration
from bulkjob.cli._progress_line import ProgressLine
from bulkjob.sandbox._server import Sandbox
from tests.conftest import (
    SandboxFactory,
    cli_env,
    cli_flags,
    finish_cli,
    make_ids,
    run_cli,
    start_cli,
    submit_args,
    write_ids,
)


def _snap(**kw: object) -> Progress:
    base: dict[str, object] = dict(
        ids_total=100_000,
        ids_read=50_000,
        ids_submitted=40_000,
        jobs=4,
        throttled=1,
        requests=6,
        elapsed_s=10.0,
        stopping=None,
    )
    base.update(kw)
    return Progress(**base)  # type: ignore[arg-type]


def test_render_shows_rate_jobs_throttled_and_eta() -> None:
    """The line carries ids/s, jobs, throttled and an ETA from the current rate."""
    text = ProgressLine(io.StringIO(), enabled=True).render(_snap())
    assert "4,000 ids/s" in text and "4 jobs" in text and "throttled 1" in text
    assert "ETA 15s" in text


def test_silent_when_not_a_tty() -> None:
    """Nothing is written to a stream that is not a terminal."""
    out = io.StringIO()
    line = ProgressLine(out)
    line.update(_snap())
    line.close()
    assert out.getvalue() == ""


def test_redraws_in_place_and_ends_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Updates return to the line start; close() ends the line once."""
    monkeypatch.setenv("COLUMNS", "200")  # a stream without a terminal: COLUMNS, else 80
    out = io.StringIO()
    line = ProgressLine(out, enabled=True)
    line.update(_snap())
    line.update(_snap(stopping="quota"))
    line.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and "stopping (quota)" in text


def test_format_duration() -> None:
    """Durations read as s, m+s, h+m."""
    assert [format_duration(x) for x in (5, 75, 4000)] == ["5s", "1m15s", "1h06m"]


def test_log_lines_print_above_the_progress_line() -> None:
    """A log line written in pieces lands on its own line and the progress is redrawn."""
    out = io.StringIO()
    line = ProgressLine(out, enabled=True)
    line.update(_snap())
    line.write("request.retrying attempt=1")
    line.write("\n")
    line.close()
    text = out.getvalue()
    # Wiped once before the log line, redrawn once after it.
    assert text.count("\r\x1b[K") == 1
    assert "request.retrying attempt=1\n" in text
    assert text.count("ids submitted") == 2


# -- a real CLI process on a terminal, and off one ----------------------------------------


def _read_all(fd: int) -> bytes:
    """Everything the terminal's other side gets, until every writer has closed it."""
    chunks = []
    while True:
        try:
            data = os.read(fd, 1 << 16)
        except OSError:  # EIO: the last writer is gone
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


async def _on_a_terminal(*args: str, env: dict[str, str], columns: int = 200) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on one pseudo-terminal ``columns`` wide; (exit code,
    what it shows)."""
    master, slave = pty.openpty()
    tty.setraw(slave)  # no "\n" -> "\r\n": the bytes exactly as the program wrote them
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bulkjob",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            env=env,
        )
    finally:
        os.close(slave)
    try:
        reader = asyncio.ensure_future(asyncio.to_thread(_read_all, master))
        async with asyncio.timeout(90):
            code = await proc.wait()
            out = await reader
    finally:
        os.close(master)
    return code, out.decode()


def _draws(out: str, containing: str) -> list[re.Match[str]]:
    """Every redraw of the live line whose text holds ``containing``."""
    return [m for m in re.finditer(r"\r([^\r\n]*)\x1b\[K", out) if containing in m.group(1)]


def _terminal_flags(sb: Sandbox) -> list[str]:
    """Aim at ``sb``, 5 submits a second (the run lasts seconds), progress left on."""
    return [f for f in cli_flags(sb, max_requests=5) if f != "--no-progress"]


async def test_terminal_line_ends_exact_and_before_the_next_output(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """submit --wait on a terminal: the last submit line shows 1,000/1,000, the last wait
    line 10/10, and what follows each starts on a line of its own."""
    sb = await sandbox(finished_after=0.5)
    path = write_ids(tmp_path / "ids.txt", make_ids(1000))
    args = submit_args(path, tmp_path / "run.journal", "--wait", *_terminal_flags(sb))
    code, out = await _on_a_terminal(*args, env=cli_env(BULKJOB_QUEUE_POLL_INTERVAL="0.1"))
    assert code == 0, out
    last = _draws(out, "ids submitted")[-1]
    assert last.group(1).startswith("1,000/1,000 ids submitted")
    assert out[last.end() :].startswith("\nids read 1,000: submitted 1,000")
    last = _draws(out, "final")[-1]
    assert last.group(1) == "jobs: 10/10 final"
    assert out[last.end() :].startswith("\nchunk state")


async def test_terminal_line_fits_an_80_column_terminal(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """On a terminal 80 columns wide (with COLUMNS unset, as under most shells' exports) no
    drawn line is 80 columns or more: a wider one wraps, and every redraw would leave the
    wrapped rows behind. The submit line and the wait line both fit in 79."""
    sb = await sandbox(finished_after=0.5)
    path = write_ids(tmp_path / "ids.txt", make_ids(1000))
    args = submit_args(path, tmp_path / "run.journal", "--wait", *_terminal_flags(sb))
    env = cli_env(BULKJOB_QUEUE_POLL_INTERVAL="0.1")
    env.pop("COLUMNS", None)
    code, out = await _on_a_terminal(*args, env=env, columns=80)
    assert code == 0, out
    drawn = [m.group(1) for m in re.finditer(r"\r([^\r\n]*)\x1b\[K", out)]
    assert _draws(out, "ids submitted") and _draws(out, "final")
    assert max(len(text) for text in drawn) == 79  # cut to fit, not shortened further
    last = _draws(out, "ids submitted")[-1]
    assert last.group(1).startswith("1,000/1,000 ids submitted")


async def test_wait_line_ends_before_the_table(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """bulkjob wait on a terminal: the last line shows every job final, then the table starts
    on a fresh line."""
    sb = await sandbox(finished_after=1.0)
    journal = tmp_path / "run.journal"
    path = write_ids(tmp_path / "ids.txt", make_ids(500))
    code, err = await run_cli(*submit_args(path, journal, *cli_flags(sb)))
    assert code == 0, err
    flags = [f for f in cli_flags(sb) if f != "--no-progress"]
    code, out = await _on_a_terminal("wait", str(journal), "--poll", "0.1", *flags, env=cli_env())
    assert code == 0, out
    last = _draws(out, "final")[-1]
    assert last.group(1) == "jobs: 5/5 final"
    assert out[last.end() :].startswith("\nchunk state")


def _progress_events(err: str) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [e for e in events if e["event"] == "run.progress"]


async def test_progress_log_lines_when_stderr_is_not_a_terminal(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Off a terminal, run.progress JSON lines come every progress_interval with growing
    counts, and a final one with the final numbers."""
    sb = await sandbox()
    path = write_ids(tmp_path / "ids.txt", make_ids(2000))
    args = submit_args(path, tmp_path / "run.journal", *_terminal_flags(sb), "--log-format", "json")
    code, err = await run_cli(*args, env=cli_env(BULKJOB_PROGRESS_INTERVAL="0.2"))
    assert code == 0, err
    events = _progress_events(err)
    *periodic, final = events
    assert final["final"] is True
    assert (final["ids_submitted"], final["ids_total"], final["jobs"]) == (2000, 2000, 20)
    # 5 submits a second: 20 take three windows, and a line comes every 0.2 s.
    assert len(periodic) >= 3
    submitted = [e["ids_submitted"] for e in periodic]
    assert submitted == sorted(submitted) and submitted[0] < 2000
    assert {"ids_read", "jobs_open", "throttled", "requests", "eta_s", "elapsed_s"} <= set(final)
    assert [e["level"] for e in events] == ["info"] * len(events)


async def test_no_progress_means_no_progress_lines(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """--no-progress off a terminal: no run.progress lines at all."""
    sb = await sandbox()
    path = write_ids(tmp_path / "ids.txt", make_ids(1000))
    args = submit_args(path, tmp_path / "run.journal", *cli_flags(sb, max_requests=5))
    code, err = await run_cli(
        *args, "--log-format", "json", env=cli_env(BULKJOB_PROGRESS_INTERVAL="0.2")
    )
    assert code == 0, err
    assert "run.progress" not in err


async def test_wait_logs_progress_when_stderr_is_not_a_terminal(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """bulkjob wait off a terminal: wait.progress lines while jobs run, the last one final."""
    # The jobs run until the test has seen the wait log them open (however slowly a busy
    # machine starts the two processes), then finish.
    sb = await sandbox(finished_after=3600.0)
    journal = tmp_path / "run.journal"
    path = write_ids(tmp_path / "ids.txt", make_ids(300))
    code, err = await run_cli(*submit_args(path, journal, *cli_flags(sb)))
    assert code == 0, err
    flags = [f for f in cli_flags(sb) if f != "--no-progress"]
    proc = await start_cli(
        "wait",
        str(journal),
        "--poll",
        "0.1",
        *flags,
        "--log-format",
        "json",
        env=cli_env(BULKJOB_PROGRESS_INTERVAL="0.2"),
    )
    assert proc.stderr is not None
    seen: list[bytes] = []
    async with asyncio.timeout(90):  # a hang detector: the wait must log while jobs run
        while True:
            line = await proc.stderr.readline()
            assert line, b"".join(seen).decode()  # it ended without one such line
            seen.append(line)
            if b'"wait.progress"' in line and json.loads(line)["jobs_open"]:
                break
    for job in sb.ledger.jobs.values():
        job.finished_after = 0.0
    code, rest = await finish_cli(proc)
    err = b"".join(seen).decode() + rest
    assert code == 0, err
    events = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
    *periodic, final = [e for e in events if e["event"] == "wait.progress"]
    assert periodic and any(e["jobs_open"] for e in periodic)  # jobs still ran then
    assert (final["final"], final["jobs"], final["jobs_final"], final["jobs_open"]) == (
        True,
        3,
        3,
        0,
    )
