"""One account, many processes: the window, its 429 pause and dead holders, shared on one
host through the local store (the default), checked on the sandbox's own ledger."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

import bulkjob._store_local as store_local
from bulkjob._errors import ConfigError
from bulkjob._settings import Settings
from bulkjob._window_store import account_key, open_store
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    TOKEN,
    SandboxFactory,
    assert_paid_once,
    cli_flags,
    finish_cli,
    kill_9,
    make_ids,
    start_cli,
    submit_args,
    write_ids,
)
from tests.test_cli import bulkjob as run_cli


async def _runs_at_once(
    sb: Sandbox, tmp_path: Path, runs: int, ids_each: int, *more: str
) -> list[str]:
    """``runs`` CLI submits at once, each given the whole licence; all their ids."""
    procs, values = [], []
    for n in range(runs):
        ids = make_ids(ids_each, prefix=f"r{n}")
        values += ids
        path = write_ids(tmp_path / f"{n}.txt", ids)
        flags = cli_flags(sb, max_requests=20, per=1.0, concurrency=4)
        args = submit_args(path, tmp_path / f"{n}.journal", *more, chunk_size=20)
        procs.append(await start_cli(*args, *flags))
    for proc in procs:
        code, err = await finish_cli(proc)
        assert code == 0, err
    return values


async def test_three_processes_share_the_window_without_a_429(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Three runs at once on one token, each told the licence's 20/s: 0 x 429 together."""
    sb = await sandbox(throttle_requests=20, throttle_window=1.0)
    values = await _runs_at_once(sb, tmp_path, 3, 400)
    assert sb.ledger.throttled == 0
    assert sb.ledger.max_in_window(1.0) <= 20
    assert_paid_once(sb, values)


async def test_with_memory_stores_they_trip_each_other(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The control: each process on its own window overfills the account's."""
    sb = await sandbox(throttle_requests=20, throttle_window=1.0, lockout_seconds=0.2)
    # 50 requests each, 2.5 s at 20/s: they overlap even when a busy machine starts the
    # processes seconds apart (10 each, 0.5 s, once did not).
    values = await _runs_at_once(sb, tmp_path, 3, 1000, "--throttle-store", "memory")
    assert sb.ledger.throttled > 0
    assert_paid_once(sb, values)


async def test_slots_of_a_killed_process_do_not_stall_the_account(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """kill -9 while every slot of the window is in flight in that process: the next run
    counts them as answered when it notices, finishes, and trips nothing."""
    sb = await sandbox(throttle_requests=4, throttle_window=1.0, latency=30.0)
    first = write_ids(tmp_path / "a.txt", make_ids(400, prefix="a"))
    flags = cli_flags(sb, max_requests=4, per=1.0, concurrency=4)
    proc = await start_cli(*submit_args(first, tmp_path / "a.journal", chunk_size=100), *flags)
    async with asyncio.timeout(60):
        while sb.ledger.requests < 4:  # noqa: ASYNC110 - all four slots are in flight
            await asyncio.sleep(0.01)
    kill_9(proc)
    await proc.wait()
    sb.config.latency = 0.0
    values = make_ids(300, prefix="b")
    second = write_ids(tmp_path / "b.txt", values)
    proc = await start_cli(*submit_args(second, tmp_path / "b.journal", chunk_size=100), *flags)
    code, err = await finish_cli(proc)
    assert code == 0, err
    assert sb.ledger.throttled == 0
    assert set(values) <= set(sb.ledger.accepted_ids)


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(access_token=TOKEN, state_dir=str(tmp_path / "state"), **kw)  # type: ignore[arg-type]


async def test_a_429_in_one_process_pauses_another(tmp_path: Path) -> None:
    """Another OS process records a 429 in the store: this one is told to wait."""
    code = (
        "import asyncio, sys\n"
        "from bulkjob._settings import Settings\n"
        "from bulkjob._window_store import open_store\n"
        "async def main():\n"
        f"    s = Settings(access_token={TOKEN!r}, state_dir=sys.argv[1])\n"
        "    store = open_store(s)\n"
        "    print(await store.throttled(30.0))\n"
        "    await store.close()\n"
        "asyncio.run(main())\n"
    )
    settings = _settings(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, settings.state_dir or "", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    assert out.decode().strip() == "(30.0, 30.0)"
    store = open_store(settings)
    try:
        slot, wait = await store.acquire()
        assert slot is None and 25.0 < wait <= 30.0
        state = await store.state()
        assert state.paused_for > 25.0 and state.last_429_ago is not None
    finally:
        await store.close()


async def test_a_corrupt_store_file_is_one_clear_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    path = settings.resolved_state_dir / f"throttle-{account_key(settings)}.sqlite3"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database at all" * 100)
    store = open_store(settings)
    with pytest.raises(ConfigError, match=r"throttle store .*: not a usable bulkjob window"):
        await store.open()  # the probe a run makes before its journal
    with pytest.raises(ConfigError, match=r"throttle store .*: not a usable bulkjob window"):
        await store.acquire()
    await store.close()


async def test_a_locked_store_file_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_local, "_BUSY_TIMEOUT", 0.2)
    settings = _settings(tmp_path)
    store = open_store(settings)
    await store.state()  # creates the file
    other = sqlite3.connect(store.path, isolation_level=None)  # type: ignore[attr-defined]
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ConfigError, match="database is locked"):
            await store.open()  # the probe a run makes before its journal
        with pytest.raises(ConfigError, match="database is locked"):
            await store.acquire()
    finally:
        other.rollback()
        other.close()
        await store.close()


async def test_the_cli_names_a_corrupt_store_and_sends_nothing(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    sb = await sandbox()
    state = tmp_path / "state"
    settings = Settings(access_token=TOKEN, state_dir=str(state), base_url=sb.base_url)
    path = state / f"throttle-{account_key(settings)}.sqlite3"
    state.mkdir()
    path.write_bytes(b"garbage" * 1000)
    ids = write_ids(tmp_path / "ids.txt", make_ids(50))
    journal = tmp_path / "run.journal"
    code, _, err = await run_cli(
        "submit",
        str(ids),
        "--journal",
        str(journal),
        *cli_flags(sb),
        env={"BULKJOB_STATE_DIR": str(state), "INSIDEVIEW_ACCESS_TOKEN": TOKEN},
    )
    assert code == 2, err
    # Found by the probe before the journal exists: one line, nothing sent, no journal.
    [line] = err.strip().splitlines()
    assert line.startswith("error: throttle store ") and "delete it" in line, err
    assert not journal.exists() and sb.ledger.requests == 0


def test_the_account_key_is_a_hash_and_groups_on_request(tmp_path: Path) -> None:
    a = _settings(tmp_path)
    b = Settings(access_token="another-token-entirely", state_dir=a.state_dir)
    assert TOKEN not in account_key(a) and len(account_key(a)) == 32
    assert account_key(a) != account_key(b)
    grouped = [s.replace(account="acme") for s in (a, b)]
    assert account_key(grouped[0]) == account_key(grouped[1])
    minted = Settings(client_id="cid", client_secret="very-secret")
    assert account_key(minted) == account_key(minted.replace(client_secret="rotated"))
    # Another server is another account: its throttle, its queue, its job ids.
    elsewhere = minted.replace(base_url="http://127.0.0.1:9/api/v1")
    assert account_key(minted) != account_key(elsewhere)
    assert account_key(elsewhere) == account_key(elsewhere.replace(base_url="http://127.0.0.1:9/x"))
    https = minted.replace(base_url="https://API.example.com/v1")
    assert account_key(https) == account_key(https.replace(base_url="https://api.example.com:443"))


async def test_memory_store_leaves_no_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path, throttle_store="memory")
    store = open_store(settings)
    await store.open()
    slot, _ = await store.acquire()
    assert slot is not None
    await store.release(slot, reset_backoff=True)
    await store.close()
    assert not settings.resolved_state_dir.exists()


async def test_throttle_command_shows_the_window(sandbox: SandboxFactory, tmp_path: Path) -> None:
    sb = await sandbox()
    ids = write_ids(tmp_path / "ids.txt", make_ids(300))
    env = {"BULKJOB_STATE_DIR": str(tmp_path / "state"), "INSIDEVIEW_ACCESS_TOKEN": TOKEN}
    code, _, err = await run_cli(
        "submit", str(ids), "--chunk-size", "100", *cli_flags(sb, per=60.0), env=env
    )
    assert code == 0, err
    where = ("--base-url", sb.base_url)  # the account is the credentials on this server
    code, out, err = await run_cli("throttle", "--json", "--per", "60", *where, env=env)
    assert code == 0, err
    state = json.loads(out)
    assert state["store"] == "local" and state["in_flight"] == 0
    assert state["recent"] == sb.ledger.requests
    assert TOKEN not in out and os.path.basename(state["path"]).startswith("throttle-")
    code, out, _ = await run_cli("throttle", "--per", "60", *where, env=env)
    assert code == 0 and f"{sb.ledger.requests} of 1,000 requests" in out


async def test_a_cancelled_transaction_keeps_the_connection_until_its_thread_is_done(
    tmp_path: Path,
) -> None:
    """A caller cancelled while its transaction waits in a worker thread (a drain, Ctrl-C):
    close() waits for that thread before it closes the connection (using a connection
    another thread is inside of crashes the process)."""
    settings = _settings(tmp_path)
    store = open_store(settings)
    await store.state()  # the file exists
    other = sqlite3.connect(store.path, isolation_level=None)  # type: ignore[attr-defined]
    other.execute("BEGIN EXCLUSIVE")  # the store's next transaction waits in its thread
    acquiring = asyncio.create_task(store.acquire())
    await asyncio.sleep(0.2)
    acquiring.cancel()
    with pytest.raises(asyncio.CancelledError):
        await acquiring
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0.2)
    assert not closing.done()  # held back by the thread still inside its transaction
    other.rollback()
    other.close()
    await asyncio.wait_for(closing, 30)
    again = open_store(settings)
    state = await again.state()
    await again.close()
    assert state.in_flight <= 1  # the cancelled acquire may have taken its slot, no more


async def test_stores_opening_a_fresh_file_at_once_all_open(tmp_path: Path) -> None:
    """Four connections set up one new store file at the same moment (two runs in one
    process, or several processes starting together): none meets SQLite's at-once "locked"."""
    for n in range(30):
        settings = Settings(access_token=TOKEN, state_dir=str(tmp_path / f"s{n}"))
        stores = [open_store(settings) for _ in range(4)]
        try:
            await asyncio.gather(*(store.open() for store in stores))
        finally:
            for store in stores:
                await store.close()
