"""Tests for the ``bulkjob`` command: exit codes, one-line errors, reports, env and flags."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import zstandard

from bulkjob.sandbox import Sandbox
from tests.conftest import (
    TOKEN,
    SandboxFactory,
    cli_env,
    finish_cli,
    make_ids,
    parsed_merge,
    start_cli,
)


async def bulkjob(
    *args: str, env: dict[str, str] | None = None, stdin: bytes = b""
) -> tuple[int, str, str]:
    """Run ``python -m bulkjob ARGS`` as a real process; return code, stdout, stderr."""
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("INSIDEVIEW_", "BULKJOB_"))
    }
    full_env.update(env or {})
    # A scratch working directory: default journals land there, not in the checkout.
    scratch = tempfile.mkdtemp(prefix="bulkjob-cli-")
    proc = await start_cli(*args, env=full_env, cwd=scratch, stdin=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def fast_flags(sb: Sandbox) -> list[str]:
    """Flags aiming at ``sb`` with a generous throttle."""
    return [
        "--base-url",
        sb.base_url,
        "--token-url",
        sb.token_url,
        "--max-requests",
        "1000",
        "--per",
        "1",
        "--no-progress",
    ]


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of a run's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


async def test_submit_accepts_every_id_and_writes_the_report(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A clean run exits 0, every id is accepted once and the JSON report accounts for all."""
    sb = await sandbox()
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(make_ids(2_500)) + "\n")
    report = tmp_path / "out" / "report.json"
    code, _, err = await bulkjob(
        "submit",
        str(path),
        *fast_flags(sb),
        "--chunk-size",
        "1000",
        "--report",
        str(report),
        env={"INSIDEVIEW_ACCESS_TOKEN": TOKEN},
    )
    assert code == 0, err
    data = json.loads(report.read_text())
    assert data["ids_submitted"] == 2_500 and data["accounted"] is True
    assert [j["ids"] for j in data["jobs"]] == [1000, 1000, 500]
    assert sb.ledger.ids_accepted == 2_500 and sb.ledger.duplicates == 0
    assert TOKEN not in report.read_text() and TOKEN not in err


async def test_stdin_input(sandbox: SandboxFactory) -> None:
    """Ids piped on stdin are submitted like a file."""
    sb = await sandbox()
    code, _, err = await bulkjob(
        "submit",
        "-",
        *fast_flags(sb),
        "--access-token",
        TOKEN,
        stdin=("\n".join(make_ids(30)) + "\n").encode(),
    )
    assert code == 0, err
    assert sb.ledger.ids_accepted == 30


async def test_quota_exhausted_exits_3_with_pending(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Running out of credits mid-run stops with exit 3 and reports the rest as pending."""
    sb = await sandbox(quota=250)
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(make_ids(1_000)) + "\n")
    report = tmp_path / "r.json"
    code, _, err = await bulkjob(
        "submit",
        str(path),
        *fast_flags(sb),
        "--chunk-size",
        "100",
        "--concurrency",
        "1",
        "--report",
        str(report),
        env={"INSIDEVIEW_ACCESS_TOKEN": TOKEN},
    )
    data = json.loads(report.read_text())
    assert code == 3, err
    assert data["stop_reason"] == "quota" and data["ids_submitted"] == 200
    assert data["ids_pending"] == 800 and data["accounted"] is True


async def test_queue_full_exits_4(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """With --on-queue-full stop, a full job queue stops the run with exit 4."""
    sb = await sandbox(running_job_limit=1, processing_after=30.0)
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(make_ids(300)) + "\n")
    code, _, err = await bulkjob(
        "submit",
        str(path),
        *fast_flags(sb),
        "--on-queue-full",
        "stop",
        "--chunk-size",
        "100",
        "--concurrency",
        "1",
        env={"INSIDEVIEW_ACCESS_TOKEN": TOKEN},
    )
    assert code == 4, err
    assert sb.ledger.ids_accepted == 100


async def test_bad_token_exits_5(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """A refused token is an auth failure, exit 5, and the token is not echoed."""
    sb = await sandbox()
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(make_ids(10)) + "\n")
    code, out, err = await bulkjob(
        "submit", str(path), *fast_flags(sb), env={"INSIDEVIEW_ACCESS_TOKEN": "not-the-right-token"}
    )
    assert code == 5, err
    assert "not-the-right-token" not in out + err


async def test_rejected_jobs_exit_6(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """Jobs the server refuses are listed and the run exits 6 once the rest is done."""
    sb = await sandbox(id_pattern=r"[a-z0-9_]{64}")  # the server refuses upper-case ids
    good = make_ids(100)
    upper = [i.upper() for i in make_ids(100, prefix="up")]
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(good + upper) + "\n")
    code, _, err = await bulkjob(
        "submit",
        str(path),
        *fast_flags(sb),
        "--chunk-size",
        "100",
        env={"INSIDEVIEW_ACCESS_TOKEN": TOKEN},
    )
    assert code == 6, err
    assert "rejected chunk 2" in err
    assert sb.ledger.ids_accepted == 100


async def test_unreachable_base_url_exits_7(tmp_path: Path) -> None:
    """Nothing listening at the base URL, never answered: the run exits 7 at once, with
    one error line and no retries (see test_network.py for the attempts counted)."""
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(make_ids(5)) + "\n")
    code, _, err = await bulkjob(
        "submit",
        str(path),
        "--base-url",
        "http://127.0.0.1:9/api/v1",
        "--no-progress",
        env={
            "INSIDEVIEW_ACCESS_TOKEN": TOKEN,
            "BULKJOB_MAX_ATTEMPTS": "2",
            "BULKJOB_BACKOFF_INITIAL": "0.01",
        },
    )
    assert code == 7, err
    assert "error: http://127.0.0.1:9/api/v1 is unreachable" in err
    assert "retrying" not in err and "stopped:" not in err


def _binary(p: Path) -> None:
    p.write_bytes(b"\x00\x01\x02" * 100)


def _latin1(p: Path) -> None:
    p.write_bytes(("\n".join(make_ids(3)) + "\ncaf\xe9\n").encode("latin-1"))


def _huge_line(p: Path) -> None:
    p.write_text("x" * 10_000_000 + "\n")


def _csv_no_column(p: Path) -> None:
    p.write_text("id,name\n" + make_ids(1)[0] + ",a\n")


def _spaces_commas(p: Path) -> None:
    p.write_text("ab cd\nef,gh\n")


def _ids(p: Path) -> None:
    p.write_text("\n".join(make_ids(5)) + "\n")


def _gzip_corrupt(p: Path) -> None:
    p.write_bytes(gzip.compress(b"x" * 1000)[:20])


def _zstd_corrupt(p: Path) -> None:
    p.write_bytes(zstandard.ZstdCompressor().compress(b"x" * 1000)[:12])


def _zstd_bad_checksum(p: Path) -> None:
    data = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(b"y\n" * 900))
    data[-1] ^= 1
    p.write_bytes(bytes(data))


def _csv_open_quote(p: Path) -> None:
    ids = make_ids(50)
    p.write_text("id,name\n" + ids[0] + ',"Smith\n' + "".join(f"{i},x\n" for i in ids[1:]))


BAD_INPUTS = [
    # (name, writer, extra flags, expected fragment of the one error line)
    ("empty file", lambda p: p.write_text(""), [], "no ids"),
    ("only blank lines", lambda p: p.write_text("\n  \n\r\n"), [], "no ids"),
    ("binary", _binary, [], "binary"),
    ("non-utf8", _latin1, [], "not UTF-8"),
    ("10 MB line", _huge_line, [], "no valid ids"),
    ("csv without column", _csv_no_column, ["--column", "newContactId"], "no column"),
    ("csv with an unterminated quote", _csv_open_quote, ["--column", "id"], "malformed CSV"),
    ("ids with spaces or commas", _spaces_commas, [], "no valid ids"),
    (
        "strict with an invalid id",
        lambda p: p.write_text(make_ids(1)[0] + "\nbad id\n"),
        ["--strict"],
        "invalid id",
    ),
    ("corrupt gzip", _gzip_corrupt, [], "gzip"),
    ("zstd cut short", _zstd_corrupt, [], "corrupt zstd data"),
    ("zstd wrong checksum", _zstd_bad_checksum, [], "corrupt zstd data"),
    ("chunk size 0", _ids, ["--chunk-size", "0"], "chunk_size"),
    ("chunk size 10,001", _ids, ["--chunk-size", "10001"], "chunk_size"),
    ("negative rate", _ids, ["--max-requests", "-5"], "max_requests"),
    ("negative window", _ids, ["--per", "-1"], "per_seconds"),
    ("not a number", _ids, ["--per", "soon"], "--per': 'soon' is not a valid float"),
    ("webhook not a URL", _ids, ["--webhook", "ftp:/x"], "webhook"),
]


@pytest.mark.parametrize(
    ("name", "write", "flags", "fragment"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS]
)
async def test_bad_input_is_one_line_exit_2_nothing_sent(
    sandbox: SandboxFactory,
    tmp_path: Path,
    name: str,
    write: object,
    flags: list[str],
    fragment: str,
) -> None:
    """Each malformed input or setting: exit 2, one ``error:`` line, no request sent."""
    sb = await sandbox()
    path = tmp_path / "input.txt"
    write(path)  # type: ignore[operator]
    code, _, err = await bulkjob(
        "submit", str(path), *fast_flags(sb), *flags, env={"INSIDEVIEW_ACCESS_TOKEN": TOKEN}
    )
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err
    assert sb.ledger.requests == 0


async def test_missing_file_names_it(tmp_path: Path) -> None:
    """A missing input is named in a one-line error, exit 2."""
    code, _, err = await bulkjob("submit", str(tmp_path / "nope.txt"), "--access-token", TOKEN)
    assert code == 2
    assert error_lines(err) == [line for line in err.splitlines() if "nope.txt" in line]


async def test_unknown_config_key_is_exit_2(tmp_path: Path) -> None:
    """A config file with an unknown key names the file and the key."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_requests = 5\nmax_reqests = 6\n")
    path = tmp_path / "ids.txt"
    path.write_text(make_ids(1)[0] + "\n")
    code, _, err = await bulkjob("submit", str(path), "--config", str(cfg), "--access-token", TOKEN)
    assert code == 2
    assert "c.toml" in err and "max_reqests" in err


async def test_no_credentials_is_exit_2(tmp_path: Path) -> None:
    """Without a token or client credentials nothing is attempted."""
    path = tmp_path / "ids.txt"
    path.write_text(make_ids(1)[0] + "\n")
    code, _, err = await bulkjob("submit", str(path))
    assert code == 2
    assert "INSIDEVIEW_ACCESS_TOKEN" in err


async def test_flag_beats_env_beats_config(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """The chunk size comes from the flag over the env var over the config file."""
    sb = await sandbox()
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(make_ids(120)) + "\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text("chunk_size = 7\n")
    env = {"INSIDEVIEW_ACCESS_TOKEN": TOKEN, "BULKJOB_CHUNK_SIZE": "30"}
    code, _, err = await bulkjob(
        "submit", str(path), *fast_flags(sb), "--config", str(cfg), "--chunk-size", "60", env=env
    )
    assert code == 0, err
    assert sb.ledger.largest_job == 60
    code, _, err = await bulkjob(
        "submit", str(path), *fast_flags(sb), "--config", str(cfg), env=env
    )
    assert sb.ledger.largest_job == 60 and len(sb.ledger.jobs) == 2 + 4


async def test_demo_runs_clean(tmp_path: Path) -> None:
    """``bulkjob demo`` (small) exits 0 and reports no duplicates and no 429."""
    code, _, err = await bulkjob("demo", "--ids", "20000", "--dir", str(tmp_path), "--no-progress")
    assert code == 0, err
    assert "0 duplicates, 0 throttled" in err
    assert json.loads((tmp_path / "report.json").read_text())["ids_submitted"] == 20_000


async def test_submit_wait_then_results_merge(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """``submit --wait`` then ``results --merge``: one CSV with a row for every id."""
    sb = await sandbox(processing_after=0.05, finished_after=0.1)
    values = make_ids(450)
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(values) + "\n")
    journal = tmp_path / "run.journal"
    env = {"INSIDEVIEW_ACCESS_TOKEN": TOKEN, "BULKJOB_QUEUE_POLL_INTERVAL": "0.05"}
    code, _, err = await bulkjob(
        "submit",
        str(path),
        *fast_flags(sb),
        "--chunk-size",
        "100",
        "--journal",
        str(journal),
        "--wait",
        env=env,
    )
    assert code == 0, err
    assert "finished" in err
    code, out, err = await bulkjob("status", str(journal), env=env)
    assert code == 0, err
    assert "accepted" in out and "450" in out
    merged = tmp_path / "all.csv"
    code, out, err = await bulkjob(
        "results", str(journal), "--out", str(tmp_path / "res"), "--merge", str(merged), env=env
    )
    assert code == 0, err
    rows = merged.read_text().splitlines()
    assert len(rows) == 1 + 450
    assert {r.split(",")[0] for r in rows[1:]} == set(values)


async def submitted(sb: Sandbox, tmp_path: Path, values: list[str], name: str = "ids") -> Path:
    """Submit ``values`` in jobs of 100 through the CLI; return the run's journal."""
    path = tmp_path / f"{name}.txt"
    path.write_text("\n".join(values) + "\n")
    journal = tmp_path / f"{name}.journal"
    code, _, err = await bulkjob(
        "submit",
        str(path),
        *fast_flags(sb),
        "--chunk-size",
        "100",
        "--journal",
        str(journal),
        env={"INSIDEVIEW_ACCESS_TOKEN": TOKEN},
    )
    assert code == 0, err
    return journal


async def test_cancel_command(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """``cancel`` aborts the run's queued jobs."""
    sb = await sandbox(processing_after=60.0)
    journal = await submitted(sb, tmp_path, make_ids(200))
    env = {"INSIDEVIEW_ACCESS_TOKEN": TOKEN}
    code, out, err = await bulkjob("cancel", str(journal), env=env)
    assert code == 0, err
    assert "cancelled 2 job(s) (200 ids)" in out


async def test_results_merge_to_stdout(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """``results --merge -``: stdout holds exactly the merged CSV, every message is on stderr."""
    sb = await sandbox()
    journal = await submitted(sb, tmp_path, make_ids(250))
    out = tmp_path / "res"
    proc = await start_cli("results", str(journal), "--out", str(out), "--merge", "-")
    async with asyncio.timeout(60):
        csv_bytes, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    parts = sorted(out.iterdir())
    assert len(parts) == 3
    assert csv_bytes == parsed_merge(parts)
    assert f"merged 3 file(s), {len(csv_bytes):,} bytes, into stdout" in err.decode()


async def test_results_merge_into_a_closed_pipe(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """``results --merge - | head``: exit 1 with one error line, not an internal error."""
    sb = await sandbox()
    journal = await submitted(sb, tmp_path, make_ids(5_000))  # ~750 KB: more than a pipe holds
    out = tmp_path / "res"
    cli = [sys.executable, "-m", "bulkjob", "results", str(journal), "--out", str(out)]
    script = '"$@" --merge - | head -c 100 >/dev/null; exit "${PIPESTATUS[0]}"'
    shell = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        script,
        "bash",
        *cli,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    code, err = await finish_cli(shell)
    assert code == 1, err
    assert error_lines(err) == ["error: stdout was closed before the merged CSV was complete"]
    assert len(list(out.iterdir())) == 50


async def test_results_no_keep_parts_then_again(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """``--no-keep-parts`` deletes the job files after the merge; the next merge downloads them."""
    sb = await sandbox()
    journal = await submitted(sb, tmp_path, make_ids(250))
    out, merged = tmp_path / "res", tmp_path / "all.csv"
    args = ["results", str(journal), "--out", str(out), "--merge", str(merged)]
    code, said, err = await bulkjob(
        *args, "--no-keep-parts", env={"INSIDEVIEW_ACCESS_TOKEN": TOKEN}
    )
    assert code == 0, err
    assert "removed the 3 merged result file(s)" in said
    assert list(out.iterdir()) == []
    once = merged.read_bytes()
    code, said, err = await bulkjob(*args, env={"INSIDEVIEW_ACCESS_TOKEN": TOKEN})
    assert code == 0, err
    assert "downloaded 3 result file(s), 0 already present" in said
    assert merged.read_bytes() == once == parsed_merge(sorted(out.iterdir()))


async def test_wait_timeout_exits_9(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """``wait --timeout`` with jobs still queued exits 9 and shows the table."""
    sb = await sandbox(processing_after=60.0)
    journal = await submitted(sb, tmp_path, make_ids(100))
    env = {"INSIDEVIEW_ACCESS_TOKEN": TOKEN}
    code, _, err = await bulkjob(
        "wait", str(journal), "--poll", "0.05", "--timeout", "0.2", env=env
    )
    assert code == 9, err
    assert "not finished" in err


async def test_journal_of_another_input_is_refused(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """A journal reused for a new input, or resumed over a changed one: exit 2, nothing sent."""
    sb = await sandbox()
    journal = await submitted(sb, tmp_path, make_ids(300), name="a")
    first, other = tmp_path / "a.txt", tmp_path / "b.txt"
    other.write_text("\n".join(make_ids(300, prefix="other")) + "\n")
    env = {"INSIDEVIEW_ACCESS_TOKEN": TOKEN}
    before = sb.ledger.requests
    code, _, err = await bulkjob(
        "submit", str(other), *fast_flags(sb), "--journal", str(journal), env=env
    )
    assert code == 2, err
    assert len(error_lines(err)) == 1
    assert "bulkjob resume" in error_lines(err)[0]
    first.write_text("\n".join(make_ids(300, prefix="edited")) + "\n")
    code, _, err = await bulkjob("resume", str(journal), *fast_flags(sb), env=env)
    assert code == 2, err
    assert "input changed" in error_lines(err)[0]
    assert sb.ledger.requests == before


@pytest.mark.parametrize("command", ["status", "wait", "results", "cancel", "resume", "submit"])
async def test_missing_config_file_is_exit_2_for_every_command(
    sandbox: SandboxFactory, tmp_path: Path, command: str
) -> None:
    """--config naming no file is one error line naming it, whatever the command."""
    sb = await sandbox()
    journal = await submitted(sb, tmp_path, make_ids(100))
    before = sb.ledger.requests
    missing = tmp_path / "missing.toml"
    target = [str(tmp_path / "ids.txt"), "--journal", str(tmp_path / "new.journal")]
    args = target if command == "submit" else [str(journal)]
    more = ["--out", str(tmp_path / "out")] if command == "results" else []
    code, _, err = await bulkjob(
        command, *args, *more, "--config", str(missing), env={"INSIDEVIEW_ACCESS_TOKEN": TOKEN}
    )
    assert code == 2, err
    assert error_lines(err) == [f"error: {missing}: config file not found"], err
    assert sb.ledger.requests == before


async def test_unknown_bulkjob_variable_is_ignored(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """BULKJOB_VENV (dev.py's own) is no setting: commands run; --debug notes it on stderr."""
    sb = await sandbox()
    journal = await submitted(sb, tmp_path, make_ids(100))
    env = {"INSIDEVIEW_ACCESS_TOKEN": TOKEN, "BULKJOB_VENV": str(tmp_path / "venv")}
    code, out, err = await bulkjob("status", str(journal), env=env)
    assert code == 0, err
    assert out.splitlines()[0].startswith("chunk state") and not err
    code, out, err = await bulkjob("status", str(journal), "--debug", env=env)
    assert code == 0, err
    assert "config.env_ignored" in err and "BULKJOB_VENV" in err
    assert "config.env_ignored" not in out
