"""Failure paths keep their promises: exit codes of every command, secrets never shown,
a failing login host, a full disk, Retry-After, signals, old and foreign journals."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bulkjob._runner import Runner
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    SandboxFactory,
    assert_paid_once,
    cli_env,
    cli_flags,
    edit_journal,
    finish_cli,
    make_ids,
    run_cli,
    settings_for,
    start_cli,
    submit_args,
    wait_for_lock,
    write_ids,
)

LIFECYCLE = (["status", "--refresh"], ["wait"], ["results", "--out", "out"], ["cancel"])


async def a_journal(sb: Sandbox, tmp_path: Path, n: int = 300) -> Path:
    """A finished run's journal (chunks of 100)."""
    journal = tmp_path / "j.journal"
    path = write_ids(tmp_path / "ids.txt", make_ids(n))
    report = await Runner(settings_for(sb), [str(path)], journal=journal).run()
    assert report.ok
    return journal


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of a command's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
async def echoing_login_host() -> AsyncIterator[str]:
    """A login host that refuses every request, echoing the URL (and its secret) back."""

    async def refuse(request: web.Request) -> web.Response:
        body = {"errorType": "Unauthorized", "message": f"bad credentials for {request.url}"}
        return web.json_response(body, status=401)

    app = web.Application()
    app.router.add_post("/token.json", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/token.json"
    await runner.cleanup()


# -- lifecycle exit codes -----------------------------------------------------------------------


@pytest.mark.parametrize("command", LIFECYCLE)
async def test_lifecycle_refused_token_exits_5(
    sandbox: SandboxFactory, tmp_path: Path, command: list[str]
) -> None:
    """A refused token is exit 5 in every lifecycle command, one error line, no group."""
    sb = await sandbox(processing_after=60)
    journal = await a_journal(sb, tmp_path)
    env = cli_env(INSIDEVIEW_ACCESS_TOKEN="revoked-token")
    code, err = await run_cli(command[0], str(journal), *command[1:], env=env, cwd=tmp_path)
    assert code == 5, err
    assert len(error_lines(err)) == 1
    assert "ExceptionGroup" not in err and "Traceback" not in err


@pytest.mark.parametrize("command", LIFECYCLE)
async def test_lifecycle_unreachable_server_exits_7(
    sandbox: SandboxFactory, tmp_path: Path, command: list[str]
) -> None:
    """A server that is gone is exit 7 in every lifecycle command, one error line."""
    sb = await sandbox(processing_after=60)
    journal = await a_journal(sb, tmp_path)
    gone = sb.base_url
    await sb.close()
    code, err = await run_cli(
        command[0], str(journal), *command[1:], "--base-url", gone, cwd=tmp_path
    )
    assert code == 7, err
    assert len(error_lines(err)) == 1
    assert "ExceptionGroup" not in err and "Traceback" not in err


# -- secrets --------------------------------------------------------------------------------


@pytest.mark.parametrize("debug", [False, True])
async def test_no_secret_in_output_even_with_debug(
    sandbox: SandboxFactory, tmp_path: Path, echoing_login_host: str, debug: bool
) -> None:
    """A login host echoing clientSecret=... back: not in the output, traceback included."""
    sb = await sandbox(processing_after=60)
    journal = await a_journal(sb, tmp_path)
    secret = "echoed-secret-Vb71"
    env = cli_env(INSIDEVIEW_CLIENT_ID=CLIENT_ID, INSIDEVIEW_CLIENT_SECRET=secret)
    del env["INSIDEVIEW_ACCESS_TOKEN"]
    args = ["--token-url", echoing_login_host, *(["--debug"] if debug else [])]
    code, err = await run_cli("wait", str(journal), *args, env=env)
    assert code == 5, err
    assert secret not in err
    assert "clientSecret=***" in err
    if debug:
        assert "Traceback" in err


async def test_token_endpoint_failing_on_the_refresh_after_a_401(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A mid-run 401, then 5xx and resets from the login host on the refresh: the run goes on."""
    sb = await sandbox(token_fault_rate=0.5, token_fault_kinds=("5xx", "reset"), seed=6)
    values = make_ids(3000)
    path = write_ids(tmp_path / "ids.txt", values)
    settings = settings_for(
        sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, concurrency=2, max_attempts=20
    )
    settings = settings.replace(access_token=None)
    runner = Runner(settings, [str(path)], journal=tmp_path / "j.journal")

    async def revoke_tokens_mid_run() -> None:
        for at in range(300, 3000, 300):
            while sb.ledger.ids_accepted < at:  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            sb._state.minted_tokens.clear()  # the tokens in use are refused from now on: 401

    revoker = asyncio.create_task(revoke_tokens_mid_run())
    report = await runner.run()
    revoker.cancel()
    assert report.ok, report.stop_message
    assert sb.ledger.faults["token_5xx"] + sb.ledger.faults["token_reset"] > 0
    assert_paid_once(sb, values)


# -- the journal's disk ---------------------------------------------------------------------


def _disk_of(size: int) -> None:
    """preexec_fn: no file of this process may grow past ``size`` bytes, like a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


async def test_full_disk_stops_cleanly_then_resume_completes(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The journal's disk fills mid-run: exit 11, one error line, report and resume hint."""
    sb = await sandbox()
    values = make_ids(5000)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "j.journal"
    flags = ["--chunk-size", "50", *cli_flags(sb)]
    code, err = await run_cli(
        "submit", str(path), "--journal", str(journal), *flags, preexec_fn=lambda: _disk_of(150_000)
    )
    assert code == 11, err
    assert "Traceback" not in err and "Task exception" not in err
    (line,) = error_lines(err)
    assert str(journal) in line and "cannot write" in line
    assert f"resume with: bulkjob resume {journal}" in err
    assert "pending" in err  # the summary
    assert 0 < sb.ledger.ids_accepted < len(values)
    code, err = await run_cli("resume", str(journal), *cli_flags(sb))
    assert code == 0, err
    assert_paid_once(sb, values)


# -- throttle ---------------------------------------------------------------------------------


async def test_retry_after_longer_than_the_window_is_honoured(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Retry-After of 3 windows is waited out in full: every 429 starts a lockout, none hits one."""
    sb = await sandbox(
        throttle_requests=5, throttle_window=0.3, lockout_seconds=0.9, retry_after=True
    )
    values = make_ids(3000)
    path = write_ids(tmp_path / "ids.txt", values)
    # The client believes in 20 per 0.3 s: it will be throttled, and must then wait. One
    # request at a time, so that no request was already on its way when a 429 came.
    s = settings_for(sb, max_requests=20, per_seconds=0.3, concurrency=1)
    report = await Runner(s, [str(path)]).run()
    assert report.ok
    assert sb.ledger.throttled > 0
    assert sb.ledger.throttled == sb.ledger.lockouts
    assert_paid_once(sb, values)


# -- signals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["wait", "--poll", "0.05"], ["status", "--refresh"]])
async def test_sigterm_exits_130_in_lifecycle_commands(
    sandbox: SandboxFactory, tmp_path: Path, command: list[str]
) -> None:
    """SIGTERM during `wait` (or a slow status refresh) exits 130 with a message."""
    sb = await sandbox(processing_after=60)
    journal = await a_journal(sb, tmp_path)
    sb.config.latency = 5.0  # every status call hangs: the signal lands mid-request
    before = sb.ledger.routes["status"]
    proc = await start_cli(command[0], str(journal), *command[1:])
    async with asyncio.timeout(60):  # a slow start (a loaded machine) is not the point
        while sb.ledger.routes["status"] == before:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    code, err = await finish_cli(proc)
    assert code == 130, err
    assert "interrupted" in err
    assert "Traceback" not in err


async def test_sigterm_exits_130_in_submit(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """SIGTERM during a submit stops it cleanly: exit 130 and the resume command."""
    sb = await sandbox(throttle_requests=20, throttle_window=1.0)
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(3000)), tmp_path / "j.journal"
    proc = await start_cli(
        *submit_args(path, journal),
        *cli_flags(sb, max_requests=20),
    )
    async with asyncio.timeout(60):  # once the run sends, so that it has a journal
        while sb.ledger.ids_accepted == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    code, err = await finish_cli(proc)
    assert code == 130, err
    assert f"bulkjob resume {journal}" in err


# -- journals that are old, foreign or busy ------------------------------------------------------


async def test_older_journal_schema_is_read_and_migrated(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A journal without today's columns: status reads it, resume migrates and continues."""
    sb = await sandbox()
    values = make_ids(300)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "j.journal"
    await Runner(settings_for(sb), [str(path)], journal=journal).run()
    edit_journal(  # what a schema-1 journal lacks
        journal,
        *(f"ALTER TABLE chunks DROP COLUMN {c}" for c in ("id_set", "id_hashes", "evidence")),
        "UPDATE run SET value = '1' WHERE key = 'version'",
    )
    code, err = await run_cli("status", str(journal))
    assert code == 0, err
    code, err = await run_cli("resume", str(journal), *cli_flags(sb))
    assert code == 0, err
    assert_paid_once(sb, values)


@pytest.mark.parametrize("command", [["status"], ["resume"], ["wait"], ["results", "--out", "o"]])
async def test_an_unrelated_sqlite_file_is_refused_untouched(
    tmp_path: Path, command: list[str]
) -> None:
    """`bulkjob status app.db` on an application's database: exit 2, not a byte changed."""
    app = tmp_path / "app.db"
    edit_journal(app, "CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    before = hashlib.sha256(app.read_bytes()).hexdigest()
    code, err = await run_cli(command[0], str(app), *command[1:], cwd=tmp_path)
    assert code == 2, err
    assert "not a bulkjob journal" in err
    assert hashlib.sha256(app.read_bytes()).hexdigest() == before
    assert sorted(os.listdir(tmp_path)) == ["app.db"]


async def test_two_results_merges_at_once(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """Two `results --merge` on one journal: one merges, the other exits 10; no half file."""
    sb = await sandbox(latency=0.05)
    journal = await a_journal(sb, tmp_path, n=2000)
    merged = tmp_path / "all.csv"
    args = ["results", str(journal), "--out", str(tmp_path / "out"), "--merge", str(merged)]
    first = await start_cli(*args, *cli_flags(sb, concurrency=1))
    second = await start_cli(*args, *cli_flags(sb, concurrency=1))
    codes = sorted([(await finish_cli(first))[0], (await finish_cli(second))[0]])
    assert codes in ([0, 10], [0, 0])  # [0, 0] only if one ended before the other began
    rows = merged.read_text().splitlines()
    assert len(rows) == 2001
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".all.csv")]


async def test_report_names_every_lost_answer_settled(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The JSON report lists the chunks settled by proof; the summary says how many."""
    sb = await sandbox(drop_after_accept_rate=0.4, seed=4)
    path, report = write_ids(tmp_path / "ids.txt", make_ids(1000)), tmp_path / "r.json"
    code, err = await run_cli(
        "submit", str(path), "--chunk-size", "100", "--report", str(report), *cli_flags(sb)
    )
    assert code == 0, err
    data = json.loads(report.read_text())
    assert len(data["proven_chunks"]) == sb.ledger.faults["drop_after_accept"] > 0
    assert f"{len(data['proven_chunks'])} lost answer(s) settled by proof" in err


async def test_wait_exit_codes_say_what_is_left(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """`wait` exits 12 when chunks are still to send, 8 when some are ambiguous, 0 when done."""
    sb = await sandbox(quota=150)
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(300)), tmp_path / "j.journal"
    code, _ = await run_cli(*submit_args(path, journal), *cli_flags(sb))
    assert code == 3
    code, err = await run_cli("wait", str(journal), "--poll", "0.05")
    assert code == 12, err
    assert f"bulkjob resume {journal}" in err
    edit_journal(journal, "UPDATE chunks SET state = 'ambiguous' WHERE seq = 2")
    code, err = await run_cli("wait", str(journal), "--poll", "0.05")
    assert code == 8, err
    edit_journal(journal, "UPDATE chunks SET state = 'abandoned' WHERE seq > 1")
    code, err = await run_cli("wait", str(journal), "--poll", "0.05")
    assert code == 0, err


async def test_report_and_journal_never_share_a_file(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """`--report run.journal` keeps the journal apart; `--report` naming it is refused."""
    sb = await sandbox(quota=150)
    path = write_ids(tmp_path / "ids.txt", make_ids(300))
    report = tmp_path / "run.journal"
    code, err = await run_cli(
        "submit", str(path), "--report", str(report), "--chunk-size", "100", *cli_flags(sb)
    )
    assert code == 3, err
    assert json.loads(report.read_text())["stop_reason"] == "quota"
    code, err = await run_cli("status", str(tmp_path / "run.journal.run"))
    assert code == 0, err
    code, err = await run_cli(
        "resume", str(tmp_path / "run.journal.run"), "--report", str(tmp_path / "run.journal.run")
    )
    assert code == 2, err


async def test_results_usage_errors_exit_2(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """`--out` naming a file is a usage error (exit 2); `--merge` into a new folder works."""
    sb = await sandbox()
    journal = await a_journal(sb, tmp_path)
    a_file = write_ids(tmp_path / "not-a-dir", ["x"])
    code, err = await run_cli("results", str(journal), "--out", str(a_file))
    assert code == 2, err
    assert len(error_lines(err)) == 1
    merged = tmp_path / "new" / "dir" / "all.csv"
    code, err = await run_cli(
        "results", str(journal), "--out", str(tmp_path / "out"), "--merge", str(merged)
    )
    assert code == 0, err
    assert len(merged.read_text().splitlines()) == 301


async def test_a_second_signal_stops_at_once(sandbox: SandboxFactory, tmp_path: Path) -> None:
    """Two SIGINTs against a slow server: the second ends the submit now, exit 130."""
    sb = await sandbox(latency=1.0)
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(2000)), tmp_path / "j.journal"
    proc = await start_cli(*submit_args(path, journal), *cli_flags(sb))
    await wait_for_lock(journal)
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    await asyncio.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(15):  # a hang would take the 1 s requests' drain and forever
        code, err = await finish_cli(proc)
    assert code == 130, err
    assert f"bulkjob resume {journal}" in err
    assert "Traceback" not in err
