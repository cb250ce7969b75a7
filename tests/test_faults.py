"""The fault suite: hostile servers, and every id still accepted exactly once.

Each test checks the server's own ledger (nothing lost, nothing paid twice) and the
report's accounting. Bounded: small inputs, sub-second windows, loopback only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bulkjob._report import RunReport
from bulkjob._runner import Runner
from bulkjob._settings import Settings
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    IdsWriter,
    SandboxFactory,
    make_ids,
    settings_for,
)


def assert_exactly_once(report: RunReport, sb: Sandbox, values: list[str]) -> None:
    """Every id accepted once by the server, the report agreeing and accounting for all."""
    assert report.stop_reason is None, report.stop_message
    assert report.accounted
    assert sb.ledger.duplicates == 0
    assert set(sb.ledger.accepted_ids) == set(values)
    assert report.ids_submitted == sb.ledger.ids_accepted == len(values)


async def run(settings: Settings, path: Path, journal: Path | None = None) -> RunReport:
    """One run of ``path``."""
    return await Runner(settings, [str(path)], journal=journal).run()


async def test_server_errors_and_drops_together(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """10% 5xx, 5% dropped connections and 10% accept-then-drop: exactly once, journaled."""
    sb = await sandbox(fault_5xx_rate=0.1, drop_rate=0.05, drop_after_accept_rate=0.1, seed=3)
    values = make_ids(3000)
    report = await run(settings_for(sb, max_attempts=30), ids(values), tmp_path / "j.journal")
    assert sb.ledger.faults["5xx"] > 0
    assert sb.ledger.faults["drop_after_accept"] > 0
    assert_exactly_once(report, sb, values)


async def test_slow_answers_past_the_timeout_are_not_paid_twice(
    sandbox: SandboxFactory, ids: IdsWriter
) -> None:
    """The server accepts after the client timed out: reconcile waits, finds, never resends."""
    sb = await sandbox(latency=0.3)
    values = make_ids(1000)
    settings = settings_for(sb, request_timeout=0.1, reconcile_grace=0.6, concurrency=4)

    async def calm_down() -> None:
        await asyncio.sleep(0.35)  # the first submits have timed out by now
        sb.config.latency = 0.0

    calm = asyncio.create_task(calm_down())
    report = await run(settings, ids(values))
    await calm
    assert_exactly_once(report, sb, values)


async def test_429_storm_from_a_stricter_server(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """A server throttling at a quarter of what the client believes: paused, never lost."""
    sb = await sandbox(throttle_requests=5, throttle_window=0.25, retry_after=False)
    values = make_ids(2000)
    settings = settings_for(
        sb, max_requests=20, per_seconds=0.25, throttle_initial_delay=0.05, max_throttled=200
    )
    report = await run(settings, ids(values))
    assert sb.ledger.throttled > 0
    assert report.throttled == sb.ledger.throttled
    assert_exactly_once(report, sb, values)


async def test_matching_throttle_gets_no_429(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """With the client's window equal to the server's: no 429, N per window at most."""
    sb = await sandbox(throttle_requests=10, throttle_window=0.3)
    values = make_ids(2500)
    report = await run(settings_for(sb, max_requests=10, per_seconds=0.3), ids(values))
    assert sb.ledger.throttled == 0
    assert sb.ledger.max_in_window(0.3) <= 10
    assert_exactly_once(report, sb, values)


async def test_token_expiring_mid_run_is_renewed(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """Minted tokens that expire every 0.3 s are renewed ahead of time or after a 401."""
    sb = await sandbox(token_lifetime=0.3, throttle_requests=20, throttle_window=0.5)
    values = make_ids(3000)
    settings = settings_for(
        sb,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        max_requests=20,
        per_seconds=0.5,
        token_refresh_margin=0.1,
    )
    report = await run(settings, ids(values))
    assert len(sb._state.minted_tokens) > 1
    assert_exactly_once(report, sb, values)


async def test_quota_hitting_zero_then_resume(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """Quota runs out mid-run (exit on quota), is raised, and resume completes exactly once."""
    sb = await sandbox(quota=1234, fault_5xx_rate=0.05, seed=5)
    values = make_ids(3000)
    path, journal = ids(values), tmp_path / "j.journal"
    first = await run(settings_for(sb), path, journal)
    assert first.stop_reason == "quota"
    assert first.accounted
    sb.add_quota(5000)
    second = await Runner(settings_for(sb), [str(path)], journal=journal, resume=True).run()
    assert_exactly_once(second, sb, values)


async def test_reconcile_with_fewer_slots_than_workers(
    sandbox: SandboxFactory, ids: IdsWriter
) -> None:
    """Held-back submits don't sit on the limiter slots a reconcile's lookup needs."""
    sb = await sandbox(drop_after_accept_rate=0.3, seed=11)
    values = make_ids(1000)
    settings = settings_for(sb, max_requests=2, per_seconds=0.1, concurrency=6, max_attempts=20)
    report = await asyncio.wait_for(run(settings, ids(values)), timeout=60)
    assert sb.ledger.faults["drop_after_accept"] > 0
    assert_exactly_once(report, sb, values)
