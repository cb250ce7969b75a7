"""Tests for the sandbox's fault situations and controls, over real HTTP on an ephemeral port.

Everything a client needs to prove a submit's outcome by content: results with an id column,
failed jobs, answers lost after acceptance, a skewed server clock, a lagging job list, other
clients' jobs, long lockouts, and runtime control over HTTP.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest

from bulkjob._errors import ConfigError
from bulkjob.sandbox import Sandbox
from bulkjob.sandbox._config import SandboxConfig
from tests.conftest import make_ids

TOKEN = "sandbox-token"
CONTACT = "target/contact/job"
JSON_HEADERS = {"accessToken": TOKEN, "Accept": "application/json"}
CONTACT_HEADER = ["newContactId", "firstName", "lastName", "email", "jobTitle", "phone"]
COMPANY_FIELDS = ["companyName", "website", "industry", "city", "country"]


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as sb:
        yield sb


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def post_job(
    session: aiohttp.ClientSession,
    sandbox: Sandbox,
    ids: list[str],
    *,
    kind: str = CONTACT,
    accept: str = "application/json",
    query: str = "",
) -> tuple[int, str, str]:
    """POST a job; (status, content type, body text), whatever the body is."""
    headers = {"accessToken": TOKEN, "Accept": accept, "Content-Type": "text/plain"}
    url = f"{sandbox.base_url}/{kind}{query}"
    async with session.post(url, data="\n".join(ids).encode(), headers=headers) as r:
        return r.status, r.content_type, await r.text()


async def submit(
    session: aiohttp.ClientSession, sandbox: Sandbox, ids: list[str], **kw: str
) -> str:
    """POST a job that must be accepted; its job id."""
    status, _, text = await post_job(session, sandbox, ids, **kw)
    assert status == 200, text
    job_id: str = json.loads(text)["jobId"]
    return job_id


async def get_json(
    session: aiohttp.ClientSession, url: str, *, method: str = "GET"
) -> tuple[int, dict[str, Any]]:
    async with session.request(method, url, headers=JSON_HEADERS) as r:
        return r.status, json.loads(await r.text())


async def results(
    session: aiohttp.ClientSession, sandbox: Sandbox, job_id: str, kind: str = CONTACT
) -> list[list[str]]:
    """The job's results file as CSV rows, header first (the request must succeed)."""
    url = f"{sandbox.base_url}/{kind}/{job_id}/results"
    async with session.get(url, headers={"accessToken": TOKEN}) as r:
        assert r.status == 200, await r.text()
        return list(csv.reader(io.StringIO(await r.text())))


async def listed(session: aiohttp.ClientSession, sandbox: Sandbox, query: str = "") -> list[str]:
    """Job ids /admin/jobs lists now, newest first."""
    status, body = await get_json(session, f"{sandbox.base_url}/admin/jobs{query}")
    assert status == 200, body
    return [j["jobId"] for j in body["jobs"]]


async def control(
    session: aiohttp.ClientSession, sandbox: Sandbox, path: str, body: object = None
) -> tuple[int, Any]:
    """GET (no body) or POST (a JSON body) a control route; (status, parsed JSON)."""
    url = f"http://127.0.0.1:{sandbox.port}/_sandbox/{path}"
    if body is None:
        async with session.get(url) as r:
            return r.status, await r.json()
    data = body if isinstance(body, str) else json.dumps(body)
    async with session.post(url, data=data) as r:
        return r.status, await r.json()


# -- results file ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "column"),
    [
        ("target/contact/job", "newContactId"),
        ("contact/job", "contactId"),
        ("target/company/fetch/job", "companyId"),
        ("company/techProfile/job", "companyId"),
    ],
)
async def test_results_id_column_is_named_per_kind(
    sandbox: Sandbox, session: aiohttp.ClientSession, kind: str, column: str
) -> None:
    """The results' first column holds the submitted ids under the kind's own name."""
    ids = make_ids(3)
    rows = await results(session, sandbox, await submit(session, sandbox, ids, kind=kind), kind)
    assert rows[0][0] == column
    assert rows[0][-1] == "matchStatus"
    assert [r[0] for r in rows[1:]] == ids


async def test_results_id_column_setting_names_it_for_every_kind(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """results_id_column overrides the id column's name whatever the kind."""
    sandbox.config.results_id_column = "inputId"
    contact = await submit(session, sandbox, make_ids(1))
    company = await submit(session, sandbox, make_ids(1), kind="target/company/fetch/job")
    assert (await results(session, sandbox, contact))[0][0] == "inputId"
    rows = await results(session, sandbox, company, "target/company/fetch/job")
    assert rows[0][0] == "inputId"


async def test_company_fields_only_with_retrieve_company_details(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Contact results carry the company fields only when retrieveCompanyDetails=true."""
    ids = make_ids(2)
    plain = await submit(session, sandbox, ids)
    rich = await submit(session, sandbox, ids, query="?retrieveCompanyDetails=true")
    assert (await results(session, sandbox, plain))[0] == [*CONTACT_HEADER, "matchStatus"]
    rows = await results(session, sandbox, rich)
    assert rows[0] == [*CONTACT_HEADER, *COMPANY_FIELDS, "matchStatus"]
    assert all(r[len(CONTACT_HEADER)] for r in rows[1:])  # companyName filled in


async def test_results_have_one_row_per_id_line_in_order(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """An id sent twice in one body comes back twice, in submission order."""
    a, b = make_ids(2)
    rows = await results(session, sandbox, await submit(session, sandbox, [b, a, b]))
    assert [r[0] for r in rows[1:]] == [b, a, b]
    assert rows[1] == rows[3]


async def test_results_are_the_same_for_the_same_id_in_any_job(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A row depends only on its id: another job, another server, the same row."""
    ids = make_ids(5)
    first = await results(session, sandbox, await submit(session, sandbox, ids))
    async with Sandbox() as other:
        again = await results(session, other, await submit(session, other, ids[::-1]))
    assert again[1:] == first[1:][::-1]


async def test_unmatched_ids_come_back_with_empty_fields(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """At no_match_rate 0.5 some rows are 'not found' with only the id, the same ids each time."""
    sandbox.config.no_match_rate = 0.5
    ids = make_ids(40)
    rows = await results(session, sandbox, await submit(session, sandbox, ids))
    missing = [r for r in rows[1:] if r[-1] == "not found"]
    assert 0 < len(missing) < len(ids)
    assert all(r[0] and not any(r[1:-1]) for r in missing)
    assert {r[-1] for r in rows[1:]} == {"found", "not found"}
    again = await results(session, sandbox, await submit(session, sandbox, ids))
    assert again == rows


async def test_no_match_rate_one_matches_nothing(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """At no_match_rate 1 every id still has its row, all 'not found'."""
    sandbox.config.no_match_rate = 1.0
    ids = make_ids(4)
    rows = await results(session, sandbox, await submit(session, sandbox, ids))
    assert [r[0] for r in rows[1:]] == ids
    assert {r[-1] for r in rows[1:]} == {"not found"}


# -- failed jobs ----------------------------------------------------------------------------------


async def test_failed_job_refuses_its_results_and_keeps_the_credits(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """At job_fail_rate 1 the job ends 'failed', results are a 400, credits stay consumed."""
    sandbox.config.job_fail_rate = 1.0
    sandbox.config.quota = 10
    job_id = await submit(session, sandbox, make_ids(3))
    url = f"{sandbox.base_url}/{CONTACT}/{job_id}"
    status, body = await get_json(session, url)
    assert (status, body["status"]) == (200, "failed")
    assert "totalProcessed" not in body
    status, error = await get_json(session, url + "/results")
    assert (status, error["errorNumber"]) == (400, "400-403")
    assert "failed" in error["message"]
    assert sandbox.ledger.rejected["job_failed"] == 1
    assert sandbox.config.quota == 7
    _, usage = await get_json(session, f"{sandbox.base_url}/admin/usage")
    assert usage["creditsForAccount"]["consumedCredits"] == 3


async def test_failed_results_serves_the_file_with_every_id(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """With failed_results on, a failed job's file lists its ids, each marked failed."""
    sandbox.config.job_fail_rate = 1.0
    sandbox.config.failed_results = True
    ids = make_ids(3)
    rows = await results(session, sandbox, await submit(session, sandbox, ids))
    assert [r[0] for r in rows[1:]] == ids
    assert {r[-1] for r in rows[1:]} == {"failed"}


async def test_failed_jobs_are_listed_and_filtered(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """/admin/jobs reports a failed job as failed and jobStatuses=failed finds it."""
    sandbox.config.list_lag = 0.0
    ok = await submit(session, sandbox, make_ids(1))
    sandbox.config.job_fail_rate = 1.0
    bad = await submit(session, sandbox, make_ids(1, "b"))
    assert await listed(session, sandbox, "?jobStatuses=failed") == [bad]
    assert await listed(session, sandbox, "?jobStatuses=finished") == [ok]


async def test_job_failures_follow_the_seed_not_the_faults(session: aiohttp.ClientSession) -> None:
    """Which jobs fail depends on the seed alone, not on faults drawn in between."""
    outcomes = []
    for fault_rate in (0.0, 0.5):
        config = SandboxConfig(job_fail_rate=0.5, accept_then_5xx_rate=fault_rate, seed=7)
        async with Sandbox(config) as sb:
            for n in range(12):
                await post_job(session, sb, make_ids(1, f"j{n}"))
            outcomes.append([job.status() for job in sb.ledger.jobs.values()])
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {"finished", "failed"}


# -- answers lost after acceptance ----------------------------------------------------------------


async def test_fault_html_turns_a_5xx_into_a_gateway_page(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """With fault_html, a 5xx before acceptance is an HTML page and no job exists."""
    sandbox.config.fault_5xx_rate = 1.0
    sandbox.config.fault_html = True
    status, content_type, text = await post_job(session, sandbox, make_ids(1))
    assert status in (500, 502, 503)
    assert content_type == "text/html"
    assert text.startswith("<html>")
    assert f"<title>{status} " in text
    assert (sandbox.ledger.faults["5xx"], len(sandbox.ledger.jobs)) == (1, 0)


async def test_accept_then_5xx_creates_and_pays_the_job(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """accept_then_5xx answers a 5xx error body although the job exists and is paid."""
    sandbox.config.accept_then_5xx_rate = 1.0
    sandbox.config.quota = 10
    ids = make_ids(2)
    status, content_type, text = await post_job(session, sandbox, ids)
    assert status in (500, 502, 503)
    assert content_type == "application/json"
    assert json.loads(text)["status"] == status
    ledger = sandbox.ledger
    assert (ledger.faults["accept_then_5xx"], len(ledger.jobs), ledger.ids_accepted) == (1, 1, 2)
    assert sandbox.config.quota == 8
    (job_id,) = ledger.jobs
    assert [r[0] for r in (await results(session, sandbox, job_id))[1:]] == ids


async def test_accept_then_5xx_with_fault_html_is_a_gateway_page(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """With fault_html the 5xx after acceptance is an HTML page too."""
    sandbox.config.accept_then_5xx_rate = 1.0
    sandbox.config.fault_html = True
    status, content_type, text = await post_job(session, sandbox, make_ids(1))
    assert (status // 100, content_type) == (5, "text/html")
    assert "<title>" in text
    assert len(sandbox.ledger.jobs) == 1


async def test_submit_faults_leave_other_requests_alone(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Accept-then faults apply to job submits only: status and usage calls answer normally."""
    job_id = await submit(session, sandbox, make_ids(1))
    sandbox.config.accept_then_5xx_rate = 1.0
    sandbox.config.accept_then_garbage_rate = 1.0
    assert (await get_json(session, f"{sandbox.base_url}/{CONTACT}/{job_id}"))[0] == 200
    assert (await get_json(session, f"{sandbox.base_url}/admin/usage"))[0] == 200
    assert sum(sandbox.ledger.faults.values()) == 0


async def test_garbage_truncated_json_is_cut_inside_the_job_id(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A truncated JSON answer is a 200 that does not parse and holds half the job id."""
    sandbox.config.accept_then_garbage_rate = 1.0
    sandbox.config.garbage_kinds = ("truncated",)
    status, content_type, text = await post_job(session, sandbox, make_ids(1))
    assert (status, content_type) == (200, "application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    (job_id,) = sandbox.ledger.jobs
    assert text.startswith('{"jobId": "')
    assert job_id.startswith(text.removeprefix('{"jobId": "'))
    assert len(text.removeprefix('{"jobId": "')) < len(job_id)
    assert sandbox.ledger.faults["accept_then_garbage"] == 1


async def test_garbage_truncated_xml_does_not_parse(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Without Accept the truncated answer is XML cut off mid-way."""
    sandbox.config.accept_then_garbage_rate = 1.0
    sandbox.config.garbage_kinds = ("truncated",)
    status, content_type, text = await post_job(session, sandbox, make_ids(1), accept="")
    assert (status, content_type) == (200, "application/xml")
    assert "<jobId>" in text
    with pytest.raises(ET.ParseError):
        ET.fromstring(text)


@pytest.mark.parametrize("accept", ["application/json", "application/xml"])
async def test_garbage_without_job_id_is_well_formed(
    sandbox: Sandbox, session: aiohttp.ClientSession, accept: str
) -> None:
    """The no_job_id answer parses, says accepted and its type, but has no jobId."""
    sandbox.config.accept_then_garbage_rate = 1.0
    sandbox.config.garbage_kinds = ("no_job_id",)
    status, _, text = await post_job(session, sandbox, make_ids(1), accept=accept)
    assert status == 200
    if accept == "application/json":
        assert json.loads(text) == {"status": "accepted", "type": "targetContactDetails"}
    else:
        root = ET.fromstring(text)
        assert [child.tag for child in root] == ["status", "type"]
    assert len(sandbox.ledger.jobs) == 1


async def test_garbage_html_is_a_200_page(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    """The html answer is a 200 text/html page, and the job exists."""
    sandbox.config.accept_then_garbage_rate = 1.0
    sandbox.config.garbage_kinds = ("html",)
    status, content_type, text = await post_job(session, sandbox, make_ids(1))
    assert (status, content_type) == (200, "text/html")
    assert "<html>" in text
    assert (sandbox.ledger.faults["accept_then_garbage"], len(sandbox.ledger.jobs)) == (1, 1)


async def test_garbage_kinds_are_drawn_among_the_configured_ones(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """With every kind allowed, a seeded run of submits meets all three, and only them."""
    sandbox.config.accept_then_garbage_rate = 1.0
    seen = set()
    for n in range(30):
        status, content_type, text = await post_job(session, sandbox, make_ids(1, f"g{n}"))
        assert status == 200
        if content_type == "text/html":
            seen.add("html")
        else:
            try:
                body = json.loads(text)
            except json.JSONDecodeError:
                seen.add("truncated")
            else:
                assert "jobId" not in body
                seen.add("no_job_id")
    assert seen == {"truncated", "no_job_id", "html"}
    assert sandbox.ledger.faults["accept_then_garbage"] == len(sandbox.ledger.jobs) == 30


# -- server clock ---------------------------------------------------------------------------------


def date_of(headers: Mapping[str, str]) -> datetime:
    return parsedate_to_datetime(headers["Date"])


async def test_every_response_has_one_date_header_from_the_skewed_clock(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Answers, errors, the token endpoint and control routes all carry one skewed Date."""
    sandbox.config.clock_skew = 3600.0
    urls = [
        (f"{sandbox.base_url}/admin/usage", JSON_HEADERS),  # 200
        (f"{sandbox.base_url}/admin/usage", {}),  # 401
        (f"{sandbox.base_url}/{CONTACT}/nosuchjob", JSON_HEADERS),  # 404
        (f"http://127.0.0.1:{sandbox.port}/_sandbox/ledger", {}),
    ]
    expected = datetime.now(UTC) + timedelta(hours=1)
    for url, headers in urls:
        async with session.get(url, headers=headers) as r:
            assert len(r.headers.getall("Date")) == 1
            assert abs(date_of(r.headers) - expected) < timedelta(minutes=5), url
    async with session.post(sandbox.token_url) as r:
        assert r.status == 401
        assert abs(date_of(r.headers) - expected) < timedelta(minutes=5)
        assert r.headers["Date"].endswith(" GMT")


async def test_without_skew_the_date_header_is_the_real_clock(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """The default Date header is IMF-fixdate on the real clock, exactly one."""
    async with session.get(f"{sandbox.base_url}/admin/usage", headers=JSON_HEADERS) as r:
        assert len(r.headers.getall("Date")) == 1
        assert abs(date_of(r.headers) - datetime.now(UTC)) < timedelta(minutes=5)


async def test_clock_skew_moves_created_times_and_the_time_filters(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A server an hour behind lists jobs an hour old and reads start on its own clock."""
    sandbox.config.list_lag = 0.0
    sandbox.config.clock_skew = -3600.0
    job_id = await submit(session, sandbox, make_ids(1))
    _, body = await get_json(session, f"{sandbox.base_url}/admin/jobs")
    created = datetime.fromisoformat(body["jobs"][0]["created"].replace("Z", "+00:00"))
    assert abs(created - (datetime.now(UTC) - timedelta(hours=1))) < timedelta(minutes=5)
    client_minute_ago = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S")
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S")
    assert await listed(session, sandbox, f"?start={client_minute_ago}") == []
    assert await listed(session, sandbox, f"?start={two_hours_ago}") == [job_id]


async def test_clock_skew_moves_the_token_expiration(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """expirationTime is read off the skewed clock."""
    sandbox.config.clock_skew = -86400.0
    params = {"clientId": "sandbox-client", "clientSecret": "sandbox-secret", "grantType": "cred"}
    async with session.post(sandbox.token_url, params=params) as r:
        details = (await r.json())["accessTokenDetails"]
    expires = datetime.strptime(details["expirationTime"], "%a, %b %d, %Y %I:%M:%S %p GMT")
    lifetime = timedelta(seconds=sandbox.config.token_lifetime)
    expected = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1) + lifetime
    assert abs(expires - expected) < timedelta(minutes=5)


# -- job list lag ---------------------------------------------------------------------------------


async def test_a_job_younger_than_the_lag_is_unlisted_but_served(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A fresh job is missing from /admin/jobs, though its status and results already work."""
    sandbox.config.list_lag = 60.0
    ids = make_ids(2)
    job_id = await submit(session, sandbox, ids)
    assert await listed(session, sandbox) == []
    status, body = await get_json(session, f"{sandbox.base_url}/{CONTACT}/{job_id}")
    assert (status, body["status"]) == (200, "finished")
    assert [r[0] for r in (await results(session, sandbox, job_id))[1:]] == ids
    assert await listed(session, sandbox) == []
    sandbox.config.list_lag = 0.0  # the lag is read live: the same job is listed now
    assert await listed(session, sandbox) == [job_id]


async def test_a_job_joins_the_list_once_it_is_old_enough(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """With the default lag, a job shows up in /admin/jobs by itself, a moment later."""
    assert sandbox.config.list_lag > 0
    job_id = await submit(session, sandbox, make_ids(1))
    # Polling is how a client sees the list change; the timeout bounds a broken sandbox only.
    async with asyncio.timeout(30):
        while not await listed(session, sandbox):  # noqa: ASYNC110
            await asyncio.sleep(sandbox.config.list_lag / 4)
    assert await listed(session, sandbox) == [job_id]


async def test_a_lagging_job_can_be_cancelled_at_once(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Cancel works on a job the list does not show yet."""
    sandbox.config.list_lag = 60.0
    sandbox.config.processing_after = 60.0
    job_id = await submit(session, sandbox, make_ids(1))
    status, body = await get_json(
        session, f"{sandbox.base_url}/{CONTACT}/{job_id}", method="DELETE"
    )
    assert (status, body["status"]) == (200, "aborted")
    assert await listed(session, sandbox) == []


# -- other clients' jobs --------------------------------------------------------------------------


async def test_foreign_job_is_served_like_any_job_but_not_paid_by_the_client(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A foreign job is listed, has status and results, and its ids stay out of accepted_ids."""
    sandbox.config.list_lag = 0.0
    sandbox.config.quota = 10
    ids = make_ids(3, "other")
    job_id = sandbox.add_foreign_job(ids)
    assert await listed(session, sandbox) == [job_id]
    _, body = await get_json(session, f"{sandbox.base_url}/{CONTACT}/{job_id}")
    assert (body["status"], body["type"]) == ("finished", "targetContactDetails")
    assert [r[0] for r in (await results(session, sandbox, job_id))[1:]] == ids
    ledger = sandbox.ledger
    assert (ledger.foreign_ids, ledger.ids_accepted, len(ledger.accepted_ids)) == (3, 0, 0)
    assert ledger.requests == 3  # the client's own calls only
    assert sandbox.config.quota == 7  # the account's credits are shared by its clients


async def test_foreign_jobs_count_for_the_running_job_limit(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A running foreign job fills the queue: the client's submit gets the queue-full 400."""
    sandbox.config.running_job_limit = 1
    sandbox.add_foreign_job(make_ids(1, "other"), finished_after=60.0)
    status, _, text = await post_job(session, sandbox, make_ids(1))
    assert (status, json.loads(text)["errorNumber"]) == (400, "400-301")


async def test_foreign_job_of_another_kind_can_fail(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """kind and fail shape the foreign job: found under its own route, ending failed."""
    job_id = sandbox.add_foreign_job(make_ids(2), kind="contactDetails", fail=True)
    _, body = await get_json(session, f"{sandbox.base_url}/contact/job/{job_id}")
    assert (body["status"], body["type"]) == ("failed", "contactDetails")
    status, _ = await get_json(session, f"{sandbox.base_url}/{CONTACT}/{job_id}")
    assert status == 404


@pytest.mark.parametrize(
    ("ids", "kw", "field"),
    [
        (["x" * 64], {"kind": "bogus"}, "kind"),
        ([], {}, "ids"),
        (["short"], {}, "ids"),
        (["x" * 64], {"finished_after": -1.0}, "finished_after"),
    ],
)
def test_add_foreign_job_refuses_bad_arguments(
    ids: list[str], kw: dict[str, Any], field: str
) -> None:
    """A bad kind, id list or duration is a ValueError naming it, and no job is made."""
    sandbox = Sandbox()
    with pytest.raises(ValueError, match=f"^{field}:"):
        sandbox.add_foreign_job(ids, **kw)
    assert not sandbox.ledger.jobs


def test_add_foreign_job_refuses_more_than_the_quota() -> None:
    """A foreign job larger than the remaining credits is refused like a submit would be."""
    sandbox = Sandbox(SandboxConfig(quota=1))
    with pytest.raises(ValueError, match="credits"):
        sandbox.add_foreign_job(make_ids(2))
    assert sandbox.config.quota == 1


# -- lockouts -------------------------------------------------------------------------------------


async def test_retry_after_covers_a_lockout_longer_than_the_window(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """With lockout_seconds past the window, Retry-After says so and the lockout holds."""
    # A window of a whole second: two requests sent back to back must land in one window
    # even on a busy machine (0.1 s was once not enough, and the second request was a 200).
    sandbox.config.throttle_requests = 1
    sandbox.config.throttle_window = 1.0
    sandbox.config.lockout_seconds = 5.0
    sandbox.config.retry_after = True
    url = f"{sandbox.base_url}/admin/usage"
    async with session.get(url, headers=JSON_HEADERS) as r:
        assert r.status == 200
    async with session.get(url, headers=JSON_HEADERS) as r:
        assert r.status == 429
        assert int(r.headers["Retry-After"]) == 5
    assert int(r.headers["Retry-After"]) > math.ceil(sandbox.config.throttle_window)
    await asyncio.sleep(2.0)  # two windows later, still locked out
    async with session.get(url, headers=JSON_HEADERS) as r:
        assert r.status == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 5
    assert sandbox.ledger.lockouts == 1


# -- control over HTTP ----------------------------------------------------------------------------


async def test_control_config_changes_the_running_config(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """POST /_sandbox/config sets fields live; lists become tuples; GET reads them back."""
    changes = {"quota": 5, "garbage_kinds": ["html"], "clock_skew": -2, "lockout_seconds": None}
    status, body = await control(session, sandbox, "config", changes)
    assert (status, body) == (200, {"changed": sorted(changes)})
    config = sandbox.config
    assert (config.quota, config.garbage_kinds, config.clock_skew) == (5, ("html",), -2.0)
    assert isinstance(config.clock_skew, float)
    status, current = await control(session, sandbox, "config")
    assert (status, current["quota"], current["garbage_kinds"]) == (200, 5, ["html"])


async def test_control_config_takes_back_every_field_it_serves(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Every field GET /_sandbox/config serves (but the fixed seed) can be POSTed back as is."""
    sandbox.config.lockout_seconds = 30.0
    _, current = await control(session, sandbox, "config")
    before = SandboxConfig(**vars(sandbox.config))
    del current["seed"]
    status, body = await control(session, sandbox, "config", current)
    assert (status, body["changed"]) == (200, sorted(current))
    assert sandbox.config == before


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"quota": 5, "nope": 1}, "nope"),
        ({"quota": 5, "fault_5xx_rate": 2}, "fault_5xx_rate"),
        ({"quota": 5, "fault_5xx_rate": "0.5"}, "fault_5xx_rate"),
        ({"quota": 5, "lockout": 1}, "lockout"),
        ({"quota": 5, "throttle_requests": True}, "throttle_requests"),
        ({"quota": 5, "garbage_kinds": ["bogus"]}, "garbage_kinds"),
        ({"quota": 5, "access_tokens": "abc"}, "access_tokens"),
        ({"quota": 5, "client_id": None}, "client_id"),
        ({"quota": 5, "seed": 3}, "seed"),
        ({"quota": 5, "queue_in_order": 1}, "queue_in_order"),
        ({"quota": 5, "finished_jitter": 1.2}, "finished_jitter"),
        ({"quota": 5, "webhook_loss_rate": -1}, "webhook_loss_rate"),
        ({"quota": 5, "webhook_delay": "soon"}, "webhook_delay"),
        ([1, 2], "object"),
        ("{not json", "JSON"),
    ],
)
async def test_control_config_refuses_bad_changes_and_changes_nothing(
    sandbox: Sandbox, session: aiohttp.ClientSession, body: object, named: str
) -> None:
    """An unknown field or bad value is a 400 naming it, and no field changes."""
    status, answer = await control(session, sandbox, "config", body)
    assert status == 400
    assert named in answer["error"]
    assert sandbox.config.quota is None


async def test_control_config_changes_the_job_timeline_settings(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """POST /_sandbox/config turns on the queue, jitter and webhook knobs for the next jobs."""
    changes = {
        "queue_in_order": True,
        "running_job_limit": 1,
        "finished_after": 60,
        "finished_jitter": 0.5,
        "webhook_loss_rate": 1,
        "webhook_delay": 0.5,
    }
    status, body = await control(session, sandbox, "config", changes)
    assert (status, body) == (200, {"changed": sorted(changes)})
    config = sandbox.config
    assert (config.queue_in_order, config.finished_jitter) == (True, 0.5)
    assert (config.webhook_loss_rate, config.webhook_delay) == (1.0, 0.5)
    first = sandbox.add_foreign_job(make_ids(1, "a"))
    second = sandbox.add_foreign_job(make_ids(1, "b"))
    jobs = sandbox.ledger.jobs
    assert 30.0 <= jobs[first].finished_after <= 90.0
    assert jobs[first].finished_after != jobs[second].finished_after
    assert jobs[second].processing_start == jobs[first].processing_end  # queued behind it


async def test_control_ledger_reports_the_counts(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """GET /_sandbox/ledger has every count, foreign ids apart from the client's."""
    ids = make_ids(3)
    await submit(session, sandbox, ids)
    await submit(session, sandbox, ids[:1])
    sandbox.add_foreign_job(make_ids(2, "other"))
    await post_job(session, sandbox, ["bad"])
    status, counts = await control(session, sandbox, "ledger")
    assert status == 200
    assert counts == {
        "requests": 3,
        "token_requests": 0,
        "throttled": 0,
        "lockouts": 0,
        "jobs": 3,
        "ids_accepted": 4,
        "unique_ids": 3,
        "duplicates": 1,
        "largest_job": 3,
        "foreign_ids": 2,
        "faults": {},
        "routes": {"submit": 3},
        "rejected": {"validation": 1},
        "webhooks": {},
        "max_running": 0,
        "utilisation": None,
    }


async def test_control_jobs_adds_a_foreign_job(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """POST /_sandbox/jobs creates another client's job and answers its id."""
    spec = {"ids": make_ids(2), "kind": "contactDetails", "finished_after": 60, "fail": False}
    status, body = await control(session, sandbox, "jobs", spec)
    assert status == 200
    job = sandbox.ledger.jobs[body["jobId"]]
    assert (job.kind, job.foreign, job.status()) == ("contactDetails", True, "processing")
    assert sandbox.ledger.foreign_ids == 2


@pytest.mark.parametrize(
    "spec",
    [
        {"ids": "abc"},
        {"ids": [1, 2]},
        {"ids": ["x" * 64], "kind": "bogus"},
        {"ids": ["x" * 64], "finished_after": "soon"},
        {"ids": ["x" * 64], "fail": 1},
        {"ids": ["x" * 64], "extra": 1},
    ],
)
async def test_control_jobs_refuses_a_bad_spec(
    sandbox: Sandbox, session: aiohttp.ClientSession, spec: dict[str, object]
) -> None:
    """A malformed foreign-job spec is a 400 with an error message, and no job is made."""
    status, body = await control(session, sandbox, "jobs", spec)
    assert status == 400
    assert body["error"]
    assert not sandbox.ledger.jobs


async def test_control_routes_are_neither_counted_nor_throttled(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Control calls during a lockout succeed, and the ledger counts none of them."""
    sandbox.config.throttle_requests = 1
    sandbox.config.throttle_window = 60.0
    async with session.get(f"{sandbox.base_url}/admin/usage", headers=JSON_HEADERS) as r:
        assert r.status == 200
    async with session.get(f"{sandbox.base_url}/admin/usage", headers=JSON_HEADERS) as r:
        assert r.status == 429
    for _ in range(3):
        assert (await control(session, sandbox, "ledger"))[0] == 200
        assert (await control(session, sandbox, "config", {"latency": 0}))[0] == 200
    assert (await control(session, sandbox, "jobs", {"ids": make_ids(1)}))[0] == 200
    assert (sandbox.ledger.requests, sandbox.ledger.throttled) == (2, 1)


async def test_control_changes_reach_the_api_at_once(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A fault switched on over HTTP applies to the very next submit."""
    await control(session, sandbox, "config", {"accept_then_5xx_rate": 1.0})
    status, _, _ = await post_job(session, sandbox, make_ids(1))
    assert status in (500, 502, 503)
    assert sandbox.ledger.faults["accept_then_5xx"] == 1


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("accept_then_5xx_rate", 1.5),
        ("accept_then_garbage_rate", -0.1),
        ("job_fail_rate", 2.0),
        ("no_match_rate", float("nan")),
        ("list_lag", -1.0),
        ("lockout_seconds", -1.0),
        ("clock_skew", float("inf")),
        ("garbage_kinds", ("truncated", "bogus")),
        ("garbage_kinds", ()),
        ("results_id_column", ""),
        ("results_id_column", "a,b"),
        ("finished_jitter", 1.5),
        ("finished_jitter", -0.1),
        ("webhook_loss_rate", 2.0),
        ("webhook_delay", -1.0),
        ("webhook_delay", float("nan")),
    ],
)
def test_config_refuses_out_of_range_values(field: str, value: object) -> None:
    """Each new setting is checked at construction, with a ConfigError naming the field."""
    with pytest.raises(ConfigError, match=f"^{field}:"):
        SandboxConfig(**{field: value})  # type: ignore[arg-type]


def test_config_accepts_a_negative_clock_skew() -> None:
    """clock_skew may put the server behind the client."""
    assert SandboxConfig(clock_skew=-90.0).clock_skew == -90.0


async def test_submit_faults_only_spares_other_requests(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """With submit_faults_only, every submit fails 5xx while the job list stays readable."""
    sandbox.config.fault_5xx_rate = 1.0
    sandbox.config.submit_faults_only = True
    status, _, _ = await post_job(session, sandbox, make_ids(2))
    assert status in (500, 502, 503)
    assert await listed(session, sandbox) == []
    assert sandbox.ledger.routes == {"submit": 1, "jobs": 1}
    assert sandbox.ledger.faults["5xx"] == 1


async def test_token_endpoint_faults(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    """token_fault_rate makes the login host fail as configured; each is counted."""
    sandbox.config.token_fault_rate = 1.0
    sandbox.config.token_fault_kinds = ("5xx", "garbage")
    statuses = []
    for _ in range(6):
        params = {
            "clientId": "sandbox-client",
            "clientSecret": "sandbox-secret",
            "grantType": "cred",
        }
        async with session.post(sandbox.token_url, params=params) as resp:
            body = await resp.text()
            statuses.append(resp.status)
            assert 'accessToken": "' not in body
    assert set(statuses) <= {200, 500, 502, 503}
    faults = sandbox.ledger.faults
    assert faults["token_5xx"] + faults["token_garbage"] == 6 == sandbox.ledger.token_requests
