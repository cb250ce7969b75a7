"""Tests for the run's Prometheus metrics: scraped over HTTP while a real run is held up."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bulkjob._errors import ConfigError, ExitCode
from bulkjob._runner import Runner
from bulkjob._settings import Settings
from tests.conftest import (
    IdsWriter,
    SandboxFactory,
    cli_env,
    cli_flags,
    make_ids,
    run_cli,
    settings_for,
    submit_args,
    wait_until,
    write_ids,
)


async def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample at ``url``: (name, sorted labels) -> value."""
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_match_the_sandbox_ledger(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """Scraped while the run waits out a 429's Retry-After: ids, jobs, requests by kind, 429s,
    pauses and queue use are the sandbox's own counts; the endpoint is gone after the run."""
    # The server allows 2 requests a minute and says so in Retry-After: the third submit
    # is throttled and the run pauses for a minute, every count standing still meanwhile.
    sb = await sandbox(throttle_requests=2, throttle_window=60.0, lockout=False, retry_after=True)
    settings = settings_for(
        sb, max_requests=3, per_seconds=60.0, concurrency=3, metrics_port=0, max_running_jobs=5
    )
    runner = Runner(settings, [str(ids(1000))])
    run = asyncio.create_task(runner.run())

    def held() -> bool:  # paused, both accepts seen, every worker at its next send
        c = runner.counts()
        return bool(c.throttle_pauses and c.ids_submitted == 200 and c.queue_taken == 5)

    await wait_until(held)
    assert runner.metrics_url is not None
    got = await _scrape(runner.metrics_url)
    ledger = sb.ledger
    assert (ledger.throttled, len(ledger.jobs), ledger.ids_accepted) == (1, 2, 200)

    def one(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    assert one("bulkjob_ids_expected") == 1000
    assert one("bulkjob_ids_submitted_total") == ledger.ids_accepted
    assert one("bulkjob_ids_read_total") >= 300  # read ahead of the workers
    read = one("bulkjob_ids_read_total")
    assert one("bulkjob_ids_pending") == read - ledger.ids_accepted
    assert one("bulkjob_ids_rejected_total") == 0
    assert one("bulkjob_jobs_accepted_total") == len(ledger.jobs)
    assert one("bulkjob_jobs", state="open") == len(ledger.jobs)
    assert one("bulkjob_jobs", state="final") == 0
    assert one("bulkjob_requests_total", kind="submit") == ledger.routes["submit"] == 3
    for kind in ("status", "results", "cancel", "admin"):
        assert one("bulkjob_requests_total", kind=kind) == ledger.routes.get(kind, 0) == 0
    assert one("bulkjob_requests_total", kind="token") == ledger.token_requests == 0
    assert one("bulkjob_throttled_total") == ledger.throttled
    assert one("bulkjob_throttle_pauses_total") == 1
    assert one("bulkjob_throttle_paused_seconds_total") >= 1  # the Retry-After, in seconds
    # Two jobs open, three sends under way (the paused one, two waiting for a slot).
    assert (one("bulkjob_queue_jobs"), one("bulkjob_queue_limit")) == (5, 5)
    assert one("bulkjob_queue_full_total") == 0

    runner.request_stop("interrupted", "test over")
    report = await run
    assert report.ids_submitted == 200
    with pytest.raises(aiohttp.ClientConnectorError):
        await _scrape(runner.metrics_url)


async def test_two_runs_never_add_up(sandbox: SandboxFactory, ids: IdsWriter) -> None:
    """Two runs at once in one process: each endpoint shows its own run's counts only."""
    sb = await sandbox()
    # Two requests a minute each: both runs send two submits, then wait for the window.
    runners = [
        Runner(
            # Two accounts: runs of one account would share its window (two requests in all).
            settings_for(sb, max_requests=2, per_seconds=60.0, metrics_port=0, account=f"a{n}"),
            [str(ids(n, name=f"{n}.txt"))],
        )
        for n in (300, 500)
    ]
    tasks = [asyncio.create_task(r.run()) for r in runners]
    await wait_until(lambda: all(r.report.ids_submitted == 200 for r in runners))
    for runner, expected in zip(runners, (300, 500), strict=True):
        assert runner.metrics_url is not None
        got = await _scrape(runner.metrics_url)
        assert got[("bulkjob_ids_expected", ())] == expected
        assert got[("bulkjob_ids_submitted_total", ())] == 200
        assert got[("bulkjob_requests_total", (("kind", "submit"),))] == 2
    assert sb.ledger.routes["submit"] == 4
    for runner in runners:
        runner.request_stop("interrupted", "test over")
    await asyncio.gather(*tasks)


def test_metrics_port_without_the_extra_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without prometheus_client, metrics_port says how to install it."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'bulkjob\[metrics\]'"):
        Settings(metrics_port=9100)
    Settings()  # without metrics_port, nothing is needed


async def test_cli_metrics_port_without_the_extra_exits_2(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """bulkjob submit --metrics-port where prometheus_client cannot be imported: one error
    line naming the extra, exit 2, nothing sent."""
    sb = await sandbox()
    hide = tmp_path / "hide"
    hide.mkdir()
    # Imported at start-up: prometheus_client then cannot be found, as if not installed.
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['prometheus_client'] = None\n")
    path = write_ids(tmp_path / "ids.txt", make_ids(100))
    args = submit_args(path, tmp_path / "run.journal", *cli_flags(sb), "--metrics-port", "0")
    code, err = await run_cli(*args, env=cli_env(PYTHONPATH=str(hide)))
    assert code == ExitCode.USAGE
    assert err.strip().splitlines() == [
        "error: metrics_port: serving metrics needs prometheus_client: "
        "pip install 'bulkjob[metrics]'"
    ]
    assert sb.ledger.requests == 0
