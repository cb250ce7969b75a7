"""Tests for the sandbox's job timeline, over real HTTP on ephemeral ports.

Durations spread by a seed, a processing queue that keeps to the running-job limit, the
ledger's utilisation of that limit, and webhook calls when a job's status is final.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bulkjob.sandbox import Sandbox
from bulkjob.sandbox._state import JobRecord, Ledger
from tests.conftest import SandboxFactory, make_ids, wait_until

TOKEN = "sandbox-token"
CONTACT = "target/contact/job"
HEADERS = {"accessToken": TOKEN, "Accept": "application/json", "Content-Type": "text/plain"}
DURATIONS = (0.1, 0.3, 0.2, 0.15, 0.05)
QUEUE_FULL_MESSAGE = (
    "2 jobs are already running. Please try again once the previous jobs are finished."
)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post_job(
    session: aiohttp.ClientSession,
    sb: Sandbox,
    ids: list[str],
    *,
    webhook: str | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST a job, with ``?webhook=`` when given; (status, parsed JSON body)."""
    params = {} if webhook is None else {"webhook": webhook}
    url = f"{sb.base_url}/{CONTACT}"
    async with session.post(url, data="\n".join(ids), headers=HEADERS, params=params) as r:
        return r.status, json.loads(await r.text())


async def submit(
    session: aiohttp.ClientSession, sb: Sandbox, n: int = 1, *, webhook: str | None = None
) -> str:
    """POST a job of ``n`` fresh ids that must be accepted; its job id."""
    prefix = f"j{len(sb.ledger.jobs)}"
    status, body = await post_job(session, sb, make_ids(n, prefix), webhook=webhook)
    assert status == 200, body
    job_id: str = body["jobId"]
    return job_id


async def foreign_job(session: aiohttp.ClientSession, sb: Sandbox, finished_after: float) -> str:
    """Another client's job, added through POST /_sandbox/jobs; its job id."""
    spec = {"ids": make_ids(1, f"other{len(sb.ledger.jobs)}"), "finished_after": finished_after}
    async with session.post(f"http://127.0.0.1:{sb.port}/_sandbox/jobs", json=spec) as r:
        assert r.status == 200
        job_id: str = (await r.json())["jobId"]
        return job_id


async def listed_statuses(session: aiohttp.ClientSession, sb: Sandbox) -> dict[str, str]:
    """job id -> status, as one GET /admin/jobs answer has them (one instant for all)."""
    url = f"{sb.base_url}/admin/jobs"
    async with session.get(url, headers=HEADERS) as r:
        assert r.status == 200
        return {job["jobId"]: job["status"] for job in (await r.json())["jobs"]}


def durations(sb: Sandbox) -> list[float]:
    """Each job's processing time, in acceptance order."""
    return [job.finished_after for job in sb.ledger.jobs.values()]


def times(job: JobRecord) -> tuple[float, float]:
    """(start, end) of a job that is not cancelled."""
    start, end = job.processing_start, job.processing_end
    assert start is not None and end is not None
    return start, end


def just_before(t: float) -> float:
    """The float right before ``t``: the last instant a status can differ from its value at t."""
    return math.nextafter(t, -math.inf)


# -- durations ------------------------------------------------------------------------------------


async def test_durations_vary_within_the_jitter_bounds(
    sandbox: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    """With finished_jitter each job processes finished_after x [1 - j, 1 + j], not all alike."""
    sb = await sandbox(finished_after=10.0, finished_jitter=0.5)
    for _ in range(30):
        await submit(session, sb)
    spread = durations(sb)
    assert all(5.0 <= d <= 15.0 for d in spread)
    assert len(set(spread)) == len(spread)
    for job in sb.ledger.jobs.values():
        _, end = times(job)
        assert (job.status(just_before(end)), job.status(end)) == ("processing", "finished")


async def test_durations_are_reproducible_with_a_seed(
    sandbox: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    """The same seed draws the same durations; another seed draws others."""
    runs = []
    for seed in (7, 7, 8):
        sb = await sandbox(finished_after=10.0, finished_jitter=0.3, seed=seed)
        for _ in range(10):
            await submit(session, sb)
        runs.append(durations(sb))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


async def test_without_jitter_every_job_takes_finished_after(
    sandbox: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    """finished_jitter 0 (the default) keeps the fixed processing time."""
    sb = await sandbox(finished_after=3.0)
    for _ in range(5):
        await submit(session, sb)
    assert durations(sb) == [3.0] * 5


async def test_jitter_leaves_the_fault_sequence_alone(
    sandbox: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    """Durations have a generator of their own: the same seed faults the same submits."""
    outcomes = []
    for jitter in (0.0, 0.9):
        sb = await sandbox(fault_5xx_rate=0.5, finished_after=1.0, finished_jitter=jitter, seed=3)
        statuses = [(await post_job(session, sb, make_ids(1, f"x{n}")))[0] for n in range(20)]
        outcomes.append(statuses)
    assert outcomes[0] == outcomes[1]
    assert 200 in outcomes[0] and set(outcomes[0]) - {200}, outcomes[0]


# -- the processing queue -------------------------------------------------------------------------


async def test_queue_keeps_to_the_limit_and_starts_jobs_in_order(
    sandbox: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    """With queue_in_order and a limit of 2, never 3 process; jobs start in order as slots free."""
    sb = await sandbox(running_job_limit=2, queue_in_order=True, list_lag=0.0)
    # Added in-process, all in one instant: the queue forms whatever the machine's speed.
    order = [
        sb.add_foreign_job(make_ids(1, f"o{n}"), finished_after=d) for n, d in enumerate(DURATIONS)
    ]
    snapshots = []
    while not snapshots or set(snapshots[-1].values()) != {"finished"}:
        snapshots.append(await listed_statuses(session, sb))
    for snapshot in snapshots:
        statuses = [snapshot[job_id] for job_id in order]
        assert statuses.count("processing") <= 2, statuses
        started = [status != "accepted" for status in statuses]
        assert started == sorted(started, reverse=True), statuses  # a prefix has started
    assert sb.ledger.max_running() == 2
    jobs = [sb.ledger.jobs[job_id] for job_id in order]
    for n, job in enumerate(jobs[2:], start=2):
        start, _ = times(job)
        # It waited, accepted, while both slots were taken, and starts the instant one frees.
        before, at = just_before(start), start
        assert (job.status(before), job.status(at)) == ("accepted", "processing")
        assert [j.status(before) for j in jobs[:n]].count("processing") == 2
        assert [j.status(at) for j in jobs[:n]].count("processing") < 2


async def test_queue_full_refusal_still_names_the_limit(
    sandbox: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    """A queue behind the limit refuses submits with the 400 that names the limit, not the queue."""
    sb = await sandbox(running_job_limit=2, queue_in_order=True)
    for _ in range(3):
        await foreign_job(session, sb, 60.0)
    status, body = await post_job(session, sb, make_ids(1))
    assert (status, body["errorNumber"], body["message"]) == (400, "400-301", QUEUE_FULL_MESSAGE)
    assert sb.ledger.rejected["queue_full"] == 1


async def test_cancelling_a_queued_job_gives_its_place_to_the_next(
    sandbox: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    """A cancel frees the cancelled job's place: the job behind it starts when a slot frees."""
    sb = await sandbox(running_job_limit=2, queue_in_order=True)
    long, short, queued, behind = [
        await foreign_job(session, sb, d) for d in (600.0, 30.0, 600.0, 1.0)
    ]
    jobs = sb.ledger.jobs
    assert times(jobs[queued])[0] == times(jobs[short])[1]
    assert times(jobs[behind])[0] == times(jobs[long])[1]
    url = f"{sb.base_url}/{CONTACT}/{queued}"
    async with session.delete(url, headers=HEADERS) as r:
        assert (r.status, (await r.json())["status"]) == (200, "aborted")
    assert jobs[queued].processing_start is None
    start, _ = times(jobs[behind])
    assert times(jobs[short])[1] <= start < times(jobs[long])[1]
    assert jobs[behind].status() == "accepted"


async def test_without_the_queue_jobs_keep_their_fixed_times(
    sandbox: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    """queue_in_order off: every job processes from its own acceptance, over the limit or not."""
    sb = await sandbox(running_job_limit=2, processing_after=0.0)
    ids = [await foreign_job(session, sb, 60.0) for _ in range(3)]
    assert [sb.ledger.jobs[i].status() for i in ids] == ["processing"] * 3
    assert sb.ledger.max_running() == 3
    assert all(sb.ledger.jobs[i].start_at is None for i in ids)


# -- utilisation ----------------------------------------------------------------------------------


def ledger_of(schedule: Iterable[tuple[float, float | None, float | None]]) -> Ledger:
    """A ledger holding one job per (accepted, start, end); start None = cancelled."""
    ledger = Ledger()
    for n, (accepted, start, end) in enumerate(schedule):
        job = JobRecord(
            job_id=f"job{n}",
            kind="targetContactDetails",
            ids=1,
            created=0.0,
            created_monotonic=accepted,
            credits=1,
            cancelled=start is None,
            processing_after=0.0 if start is None else start - accepted,
            finished_after=0.0 if start is None or end is None else end - start,
            start_at=start,
        )
        ledger.record_job(job, [job.job_id], track_ids=True)
    return ledger


def test_utilisation_of_a_constructed_schedule() -> None:
    """Processing time inside [since, until] over limit x length; defaults span the timeline."""
    ledger = ledger_of([(0.0, 0.0, 10.0), (0.0, 0.0, 4.0), (1.0, 6.0, 10.0), (2.0, None, None)])
    assert ledger.utilisation(2) == pytest.approx(18 / 20)
    assert ledger.utilisation(2, since=2.0, until=8.0) == pytest.approx((6 + 2 + 2) / 12)
    assert ledger.utilisation(4) == pytest.approx(18 / 40)
    assert ledger.utilisation(2, since=20.0, until=30.0) == 0.0
    assert ledger.max_running() == 2
    assert [(t.accepted, t.start, t.end) for t in ledger.timeline()] == [
        (0.0, 0.0, 10.0),
        (0.0, 0.0, 4.0),
        (1.0, 6.0, 10.0),
        (2.0, None, None),
    ]


def test_max_running_counts_a_freed_slot_once() -> None:
    """Back to back (one ends as the next starts) is one slot; a real overlap is two."""
    assert ledger_of([(0.0, 0.0, 4.0), (0.0, 4.0, 6.0)]).max_running() == 1
    assert ledger_of([(0.0, 0.0, 4.0), (0.0, 3.0, 6.0), (0.0, 3.5, 5.0)]).max_running() == 3


def test_utilisation_of_nothing_is_zero_and_the_limit_is_checked() -> None:
    """No jobs or an empty interval is 0.0; a limit below 1 is a ValueError naming it."""
    assert Ledger().utilisation(2) == 0.0
    assert Ledger().max_running() == 0
    with pytest.raises(ValueError, match=r"^limit:"):
        Ledger().utilisation(0)


async def test_control_ledger_serves_max_running_and_utilisation(
    sandbox: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    """GET /_sandbox/ledger has max_running and the limit's utilisation over the timeline."""
    sb = await sandbox(running_job_limit=2, queue_in_order=True)
    for d in (60.0, 120.0, 60.0):
        await foreign_job(session, sb, d)
    url = f"http://127.0.0.1:{sb.port}/_sandbox/ledger"
    async with session.get(url) as r:
        counts = await r.json()
    assert counts["max_running"] == 2
    assert counts["utilisation"] == pytest.approx(sb.ledger.utilisation(2))
    assert 0.0 < counts["utilisation"] <= 1.0
    sb.config.running_job_limit = None
    async with session.get(url) as r:
        assert (await r.json())["utilisation"] is None


# -- webhooks -------------------------------------------------------------------------------------


@dataclass
class Call:
    """One request the webhook target received."""

    method: str
    path_qs: str
    content_type: str
    body: Any
    arrived: float


@dataclass
class Receiver:
    """A tiny webhook target on 127.0.0.1: records each request, answers ``status``."""

    url: str = ""
    status: int = 200
    calls: list[Call] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def hook(request: web.Request) -> web.Response:
        text = await request.text()
        call = Call(request.method, request.path_qs, request.content_type, json.loads(text), 0.0)
        call.arrived = time.monotonic()
        rec.calls.append(call)
        return web.Response(status=rec.status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    rec.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    yield rec
    await runner.cleanup()


async def test_webhook_is_posted_when_the_job_finishes(
    sandbox: SandboxFactory, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """At finish, unasked, the sandbox POSTs {jobId, status, type} as JSON to the job's webhook."""
    sb = await sandbox(processing_after=0.05, finished_after=0.1)
    job_id = await submit(session, sb, webhook=receiver.url + "?run=7")
    await wait_until(lambda: sb.ledger.webhooks["sent"] == 1)
    (call,) = receiver.calls
    assert (call.method, call.path_qs, call.content_type) == (
        "POST",
        "/hook?run=7",
        "application/json",
    )
    assert call.body == {"jobId": job_id, "status": "finished", "type": "targetContactDetails"}
    assert call.arrived >= times(sb.ledger.jobs[job_id])[1]
    assert dict(sb.ledger.routes) == {"submit": 1}  # nobody asked for the status
    assert dict(sb.ledger.webhooks) == {"sent": 1}


async def test_webhook_reports_a_failed_job(
    sandbox: SandboxFactory, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A job that ends failed is reported failed."""
    sb = await sandbox(job_fail_rate=1.0, finished_after=0.05)
    job_id = await submit(session, sb, webhook=receiver.url)
    await wait_until(lambda: len(receiver.calls) == 1)
    assert receiver.calls[0].body["status"] == "failed"
    assert receiver.calls[0].body["jobId"] == job_id


async def test_webhook_is_posted_for_a_cancel(
    sandbox: SandboxFactory, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A cancelled job's webhook gets status aborted at the cancel, not at its planned end."""
    sb = await sandbox(processing_after=600.0)
    job_id = await submit(session, sb, webhook=receiver.url)
    async with session.delete(f"{sb.base_url}/{CONTACT}/{job_id}", headers=HEADERS) as r:
        assert r.status == 200
    await wait_until(lambda: sb.ledger.webhooks["sent"] == 1)
    assert [c.body["status"] for c in receiver.calls] == ["aborted"]


async def test_webhook_waits_for_the_delay(
    sandbox: SandboxFactory, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """webhook_delay puts the call that many seconds after the final status."""
    sb = await sandbox(finished_after=0.05, webhook_delay=0.2)
    job_id = await submit(session, sb, webhook=receiver.url)
    await wait_until(lambda: len(receiver.calls) == 1)
    assert receiver.calls[0].arrived >= times(sb.ledger.jobs[job_id])[1] + 0.2


async def test_lost_webhook_calls_are_counted_and_never_made(
    sandbox: SandboxFactory, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """webhook_loss_rate drops that share of calls, counted lost; the rest arrive."""
    sb = await sandbox(webhook_loss_rate=0.5, seed=5)
    for _ in range(20):
        await submit(session, sb, webhook=receiver.url)
    await wait_until(lambda: sb.ledger.webhooks["sent"] + sb.ledger.webhooks["lost"] == 20)
    sent, lost = sb.ledger.webhooks["sent"], sb.ledger.webhooks["lost"]
    assert sent > 0 and lost > 0
    assert len(receiver.calls) == sent
    assert len({c.body["jobId"] for c in receiver.calls}) == sent


async def test_failing_webhook_targets_are_counted_and_not_retried(
    sandbox: SandboxFactory, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A refused connection and a 5xx answer each count as failed, one attempt each."""
    with socket.create_server(("127.0.0.1", 0)) as closed:
        refusing = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
    receiver.status = 503
    sb = await sandbox()
    await submit(session, sb, webhook=refusing)
    await submit(session, sb, webhook=receiver.url)
    await wait_until(lambda: sb.ledger.webhooks["failed"] == 2)
    assert dict(sb.ledger.webhooks) == {"failed": 2}
    assert len(receiver.calls) == 1


@pytest.mark.parametrize(
    "webhook",
    [
        "http://10.0.0.1/hook",
        "https://hooks.acme-corp.com/x",
        "http://127.0.0.1.nip.io/x",
        "ftp://127.0.0.1/x",
        "http://127.0.0.1:notaport/x",
        "not a url",
    ],
)
async def test_a_webhook_off_this_machine_is_refused(
    sandbox: SandboxFactory, session: aiohttp.ClientSession, webhook: str
) -> None:
    """Only loopback webhooks are taken: others are a 400 at submit, and no job is made."""
    sb = await sandbox()
    status, body = await post_job(session, sb, make_ids(1), webhook=webhook)
    assert (status, body["errorNumber"]) == (400, "400-105")
    assert body["message"] == "webhook must be a loopback URL in the sandbox"
    assert not sb.ledger.jobs
    assert sb.ledger.rejected["webhook"] == 1


async def test_a_webhook_on_a_reserved_name_is_kept_but_never_called(
    sandbox: SandboxFactory, session: aiohttp.ClientSession
) -> None:
    """A host under .example resolves nowhere: taken and stored, its call counted failed."""
    sb = await sandbox()
    job_id = await submit(session, sb, webhook="https://hooks.example/x")
    assert sb.ledger.jobs[job_id].webhook == "https://hooks.example/x"
    await wait_until(lambda: sb.ledger.webhooks["failed"] == 1)


async def test_closing_the_sandbox_cancels_calls_not_due(
    sandbox: SandboxFactory, session: aiohttp.ClientSession, receiver: Receiver
) -> None:
    """A call due after close is never made; close waits for nothing."""
    sb = await sandbox(finished_after=0.2)
    await submit(session, sb, webhook=receiver.url)
    await sb.close()
    assert "armed=0 calling=0" in repr(sb._webhooks)
    await asyncio.sleep(0.3)
    assert not receiver.calls
