"""Tests for the sandbox server, over real HTTP on an ephemeral port."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from bulkjob.sandbox import Sandbox
from bulkjob.sandbox._cli import parse_args, sandbox_main
from bulkjob.sandbox._config import SandboxConfig
from bulkjob.sandbox._state import Ledger

TOKEN = "sandbox-token"
CONTACT = "target/contact/job"
JSON_HEADERS = {"accessToken": TOKEN, "Accept": "application/json"}


def make_ids(n: int, prefix: str = "id") -> list[str]:
    """``n`` distinct ids of the documented form (64 characters of [A-Za-z0-9_-])."""
    return [f"{prefix}_{i:0{63 - len(prefix)}d}" for i in range(n)]


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox() as sb:
        yield sb


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def submit(
    session: aiohttp.ClientSession,
    sandbox: Sandbox,
    ids: list[str],
    *,
    kind: str = CONTACT,
    headers: Mapping[str, str] = JSON_HEADERS,
    content_type: str = "text/plain",
) -> tuple[int, dict[str, Any]]:
    """POST a job and return (status, parsed JSON body)."""
    body = "\n".join(ids).encode()
    all_headers = {**headers, "Content-Type": content_type}
    async with session.post(f"{sandbox.base_url}/{kind}", data=body, headers=all_headers) as r:
        return r.status, json.loads(await r.text())


async def get_json(
    session: aiohttp.ClientSession, url: str, *, method: str = "GET"
) -> tuple[int, dict[str, Any]]:
    async with session.request(method, url, headers=JSON_HEADERS) as r:
        return r.status, json.loads(await r.text())


# -- formats --------------------------------------------------------------------------------------


async def test_submit_answers_json_when_asked(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Accept: application/json gets the documented JSON submit answer."""
    status, body = await submit(session, sandbox, make_ids(3))
    assert status == 200
    assert set(body) == {"jobId", "status", "type"}
    assert re.fullmatch(r"[a-z0-9]{20}", body["jobId"])
    assert (body["status"], body["type"]) == ("accepted", "targetContactDetails")


async def test_submit_answers_xml_by_default(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Without Accept the answer is the documented BulkJobStatus XML."""
    headers = {"accessToken": TOKEN, "Content-Type": "text/plain"}
    async with session.post(
        f"{sandbox.base_url}/{CONTACT}", data=make_ids(1)[0], headers=headers
    ) as r:
        text = await r.text()
        assert r.content_type == "application/xml"
    assert text.startswith('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>')
    root = ET.fromstring(text)
    assert root.tag == "BulkJobStatus"
    assert [child.tag for child in root] == ["jobId", "status", "type"]
    assert root.findtext("status") == "accepted"


@pytest.mark.parametrize(
    ("kind", "job_type"),
    [
        ("contact/job", "contactDetails"),
        ("target/company/fetch/job", "targetCompanyDetails"),
        ("company/techProfile/job", "companyTechProfile"),
    ],
)
async def test_every_job_kind_reports_its_type(
    sandbox: Sandbox, session: aiohttp.ClientSession, kind: str, job_type: str
) -> None:
    """Each job kind's submit route answers with its own type string."""
    status, body = await submit(session, sandbox, make_ids(2), kind=kind)
    assert (status, body["type"]) == (200, job_type)


async def test_bad_content_type_is_415(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    """A JSON Content-Type on submit is refused with 415 and the error body."""
    status, body = await submit(session, sandbox, make_ids(1), content_type="application/json")
    assert status == 415
    assert body["errorType"] == "Unsupported Media Type"
    assert body["status"] == 415
    assert not sandbox.ledger.jobs


async def test_octet_stream_with_charset_is_accepted(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """application/octet-stream is allowed and CRLF bodies are split cleanly."""
    ids = make_ids(2)
    headers = {**JSON_HEADERS, "Content-Type": "text/plain; charset=utf-8"}
    body = ("\r\n".join(ids) + "\r\n\r\n").encode()
    async with session.post(f"{sandbox.base_url}/{CONTACT}", data=body, headers=headers) as r:
        assert r.status == 200
    assert sandbox.ledger.ids_accepted == 2
    status, _ = await submit(session, sandbox, make_ids(1), content_type="application/octet-stream")
    assert status == 200


async def test_wrong_method_is_405_with_error_body(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """PUT on a known path answers 405 with the API's error body."""
    status, body = await get_json(session, f"{sandbox.base_url}/{CONTACT}", method="PUT")
    assert status == 405
    assert body["errorType"] == "Method Not Allowed"


# -- auth -----------------------------------------------------------------------------------------


async def test_missing_token_is_401(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    """A request without the accessToken header is refused with 401."""
    status, body = await submit(
        session, sandbox, make_ids(1), headers={"Accept": "application/json"}
    )
    assert (status, body["errorType"]) == (401, "Unauthorized")
    assert sandbox.ledger.requests == 1
    assert not sandbox.ledger.jobs


async def test_bad_token_is_401_in_xml_by_default(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """An unknown token gets a 401 whose default format is the <error> XML body."""
    async with session.get(f"{sandbox.base_url}/admin/usage", headers={"accessToken": "x"}) as r:
        assert r.status == 401
        root = ET.fromstring(await r.text())
    assert root.tag == "error"
    assert root.findtext("status") == "401"
    assert root.findtext("errorType") == "Unauthorized"


async def test_token_endpoint_mints_a_usable_token(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """The token endpoint returns a working token and an expirationTime in the documented format."""
    params = {"clientId": "sandbox-client", "clientSecret": "sandbox-secret", "grantType": "cred"}
    async with session.post(sandbox.token_url, params=params) as r:
        assert r.status == 200
        details = (await r.json())["accessTokenDetails"]
    assert details["tokenType"] == "bearer"
    expires = datetime.strptime(details["expirationTime"], "%a, %b %d, %Y %I:%M:%S %p GMT")
    expected = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=3600)
    assert abs(expires - expected) < timedelta(seconds=5)
    headers = {"accessToken": details["accessToken"], "Accept": "application/json"}
    async with session.get(f"{sandbox.base_url}/admin/usage", headers=headers) as r:
        assert r.status == 200
    assert sandbox.ledger.requests == 1  # the token call itself is not an API request


async def test_token_endpoint_accepts_form_fields_and_answers_xml_without_suffix(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Credentials as form fields work, and the path without .json answers XML."""
    form = {"clientId": "sandbox-client", "clientSecret": "sandbox-secret", "grantType": "cred"}
    async with session.post(sandbox.token_url.removesuffix(".json"), data=form) as r:
        assert r.status == 200
        root = ET.fromstring(await r.text())
    assert root.tag == "accessTokenDetails"
    assert root.findtext("tokenType") == "bearer"


async def test_token_endpoint_refuses_a_wrong_secret(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A wrong client secret gets 401 with the error body."""
    params = {"clientId": "sandbox-client", "clientSecret": "nope", "grantType": "cred"}
    async with session.post(sandbox.token_url, params=params) as r:
        assert r.status == 401
        assert (await r.json())["errorType"] == "Unauthorized"


async def test_minted_token_expires(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    """A minted token is refused once its lifetime has passed."""
    sandbox.config.token_lifetime = 0.1
    params = {"clientId": "sandbox-client", "clientSecret": "sandbox-secret", "grantType": "cred"}
    async with session.post(sandbox.token_url, params=params) as r:
        token = (await r.json())["accessTokenDetails"]["accessToken"]
    await asyncio.sleep(0.15)
    async with session.get(f"{sandbox.base_url}/admin/usage", headers={"accessToken": token}) as r:
        assert r.status == 401


# -- validation, quota, running jobs -------------------------------------------------------------


async def test_too_many_ids_is_a_validation_400(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """More ids than max_ids_per_job gets 400-105 and nothing is accepted."""
    sandbox.config.max_ids_per_job = 3
    status, body = await submit(session, sandbox, make_ids(4))
    assert (status, body["errorNumber"]) == (400, "400-105")
    assert sandbox.ledger.rejected["validation"] == 1
    assert sandbox.ledger.ids_accepted == 0


async def test_empty_body_is_a_validation_400(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A body with only blank lines gets 400-105."""
    status, body = await submit(session, sandbox, ["", "  ", ""])
    assert (status, body["errorNumber"]) == (400, "400-105")


async def test_bad_id_is_named_by_line(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    """An id that does not match id_pattern gets 400-105 naming its line."""
    ids = [*make_ids(2), "short!", *make_ids(1, "z")]
    status, body = await submit(session, sandbox, ids)
    assert (status, body["errorNumber"]) == (400, "400-105")
    assert "line 3" in body["message"]
    assert "short!" in body["message"]


async def test_quota_refusal_has_error_body_and_debits_nothing(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A job larger than the remaining quota gets 400-201 and the quota is unchanged."""
    sandbox.config.quota = 2
    status, body = await submit(session, sandbox, make_ids(3))
    assert status == 400
    assert body["errorNumber"] == "400-201"
    assert body["message"] == (
        "Insufficient transaction quota available: the job needs 3 credits, 2 remain."
    )
    assert sandbox.config.quota == 2
    assert sandbox.ledger.rejected["quota"] == 1
    assert not sandbox.ledger.jobs


async def test_add_quota_lets_the_job_through(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """After add_quota the same job is accepted and debited at acceptance."""
    sandbox.config.quota = 2
    assert (await submit(session, sandbox, make_ids(3)))[0] == 400
    sandbox.add_quota(5)
    status, _ = await submit(session, sandbox, make_ids(3))
    assert status == 200
    assert sandbox.config.quota == 4


async def test_usage_reports_allocated_and_consumed(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """/admin/usage reports the initial quota plus additions, and what jobs consumed."""
    sandbox.config.quota = 10
    sandbox.add_quota(5)
    await submit(session, sandbox, make_ids(4))
    status, body = await get_json(session, f"{sandbox.base_url}/admin/usage")
    assert status == 200
    assert body == {"creditsForAccount": {"allocatedCredits": 15, "consumedCredits": 4}}


async def test_running_job_limit_refuses_then_frees_up(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """At the running-job limit a submit gets 400-301; once jobs finish it is accepted again."""
    sandbox.config.running_job_limit = 1
    sandbox.config.processing_after = 0.05
    sandbox.config.finished_after = 0.05
    assert (await submit(session, sandbox, make_ids(1)))[0] == 200
    status, body = await submit(session, sandbox, make_ids(1))
    assert (status, body["errorNumber"]) == (400, "400-301")
    assert body["message"] == (
        "1 jobs are already running. Please try again once the previous jobs are finished."
    )
    assert sandbox.ledger.rejected["queue_full"] == 1
    await asyncio.sleep(0.15)
    assert (await submit(session, sandbox, make_ids(1)))[0] == 200


# -- throttle -------------------------------------------------------------------------------------


async def test_request_over_the_window_limit_is_429(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """The N+1th request inside one window is throttled, without Retry-After by default."""
    sandbox.config.throttle_requests = 3
    sandbox.config.throttle_window = 1.0  # four requests in one window, even on a busy machine
    url = f"{sandbox.base_url}/admin/usage"
    statuses = []
    for _ in range(4):
        async with session.get(url, headers=JSON_HEADERS) as r:
            statuses.append(r.status)
            if r.status == 429:
                body = await r.json()
                assert "Retry-After" not in r.headers
    assert statuses == [200, 200, 200, 429]
    assert body["errorType"] == "Too Many Requests"
    assert (sandbox.ledger.throttled, sandbox.ledger.lockouts) == (1, 1)


async def test_lockout_denies_every_token_for_a_full_window(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A lockout outlasts the sliding window, covers other tokens, and ends after one window."""
    sandbox.config.access_tokens = ("one", "two")
    # A window of a whole second: each step has 0.4 s or more to spare on a busy machine.
    sandbox.config.throttle_requests = 2
    sandbox.config.throttle_window = 1.0
    url = f"{sandbox.base_url}/admin/usage"

    async def call(token: str) -> int:
        async with session.get(url, headers={"accessToken": token}) as r:
            return r.status

    assert await call("one") == 200  # t = 0
    await asyncio.sleep(0.6)
    assert await call("one") == 200  # t = 0.6
    assert await call("one") == 429  # t = 0.6: lockout until 1.6
    await asyncio.sleep(0.5)
    # t = 1.1: the first request has left the window, but the account is still locked out.
    assert await call("two") == 429
    await asyncio.sleep(0.65)
    assert await call("two") == 200  # t = 1.75
    assert sandbox.ledger.lockouts == 1


async def test_without_lockout_the_window_slides(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """With lockout off, a slot frees as soon as the oldest request leaves the window."""
    sandbox.config.throttle_requests = 2
    sandbox.config.throttle_window = 1.0  # the third request has 0.4 s to spare
    sandbox.config.lockout = False
    url = f"{sandbox.base_url}/admin/usage"
    statuses = []
    for pause in (0.0, 0.6, 0.0, 0.5):
        await asyncio.sleep(pause)
        async with session.get(url, headers=JSON_HEADERS) as r:
            statuses.append(r.status)
    assert statuses == [200, 200, 429, 200]
    assert sandbox.ledger.lockouts == 0


async def test_retry_after_is_sent_when_enabled(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """With retry_after on, a 429 carries Retry-After in whole seconds (at least 1)."""
    sandbox.config.throttle_requests = 1
    sandbox.config.throttle_window = 1.0  # both requests in one window, even on a busy machine
    sandbox.config.retry_after = True
    url = f"{sandbox.base_url}/admin/usage"
    async with session.get(url, headers=JSON_HEADERS) as r:
        assert r.status == 200
    async with session.get(url, headers=JSON_HEADERS) as r:
        assert r.status == 429
        assert r.headers["Retry-After"] == "1"


# -- ledger ---------------------------------------------------------------------------------------


async def test_ledger_counts_duplicates_and_largest_job(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Ids accepted twice show up as duplicates; the largest job is remembered."""
    ids = make_ids(5)
    await submit(session, sandbox, ids)
    await submit(session, sandbox, ids[:2] + make_ids(1, "other"))
    ledger = sandbox.ledger
    assert (ledger.ids_accepted, ledger.largest_job, ledger.duplicates) == (8, 5, 2)
    assert ledger.accepted_ids[ids[0]] == 2
    assert ledger.requests == len(ledger.request_times) == 2


async def test_untracked_ids_are_only_counted(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """With track_ids off the ledger keeps counts only and results use placeholder ids."""
    sandbox.config.track_ids = False
    _, job = await submit(session, sandbox, make_ids(3))
    assert (sandbox.ledger.ids_accepted, len(sandbox.ledger.accepted_ids)) == (3, 0)
    url = f"{sandbox.base_url}/{CONTACT}/{job['jobId']}/results"
    async with session.get(url, headers={"accessToken": TOKEN}) as r:
        rows = (await r.text()).splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == [f"untracked-{n:07d}" for n in (1, 2, 3)]


def test_max_in_window_on_synthetic_times() -> None:
    """max_in_window counts arrivals in half-open windows of the given length."""
    ledger = Ledger()
    ledger.request_times = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 13.0]
    assert ledger.max_in_window(1.0) == 1  # arrivals exactly one window apart never share one
    assert ledger.max_in_window(2.0) == 2
    assert ledger.max_in_window(3.0) == 3
    assert ledger.max_in_window(4.0) == 4
    assert Ledger().max_in_window(1.0) == 0


# -- lifecycle ------------------------------------------------------------------------------------


async def test_status_goes_accepted_processing_finished(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Status moves through the lifecycle and totalProcessed appears only when finished."""
    sandbox.config.processing_after = 0.1
    sandbox.config.finished_after = 0.1
    _, job = await submit(session, sandbox, make_ids(3))
    url = f"{sandbox.base_url}/{CONTACT}/{job['jobId']}"
    seen = []
    for pause in (0.0, 0.12, 0.1):
        await asyncio.sleep(pause)
        _, body = await get_json(session, url)
        seen.append(body)
    assert [b["status"] for b in seen] == ["accepted", "processing", "finished"]
    assert "totalProcessed" not in seen[1]
    assert seen[2]["totalProcessed"] == 3


async def test_unknown_job_is_404(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    """An unknown job id gets 404 "Invalid ID, record not found"."""
    status, body = await get_json(session, f"{sandbox.base_url}/{CONTACT}/nosuchjob")
    assert (status, body["message"]) == (404, "Invalid ID, record not found")


async def test_results_csv_has_a_header_and_one_row_per_id(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A finished job's results are a CSV attachment with a header and one row per id."""
    ids = make_ids(4)
    _, job = await submit(session, sandbox, ids)
    url = f"{sandbox.base_url}/{CONTACT}/{job['jobId']}/results"
    async with session.get(url, headers={"accessToken": TOKEN}) as r:
        assert r.status == 200
        assert r.content_type == "text/csv"
        assert r.headers["Content-Disposition"] == f'attachment; filename="{job["jobId"]}.csv"'
        lines = (await r.text()).splitlines()
    assert lines[0] == "newContactId,firstName,lastName,email,jobTitle,phone,matchStatus"
    assert [line.split(",")[0] for line in lines[1:]] == ids
    assert {line.split(",")[-1] for line in lines[1:]} == {"found"}


async def test_results_before_finish_is_400(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Asking for results of an unfinished job gets 400 "Job is not finished"."""
    sandbox.config.processing_after = 5.0
    _, job = await submit(session, sandbox, make_ids(1))
    status, body = await get_json(session, f"{sandbox.base_url}/{CONTACT}/{job['jobId']}/results")
    assert (status, body["message"]) == (400, "Job is not finished")


async def test_cancel_before_processing_aborts_and_refunds(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """DELETE on a queued job aborts it and gives its credits back."""
    sandbox.config.quota = 10
    sandbox.config.processing_after = 5.0
    _, job = await submit(session, sandbox, make_ids(3))
    assert sandbox.config.quota == 7
    url = f"{sandbox.base_url}/{CONTACT}/{job['jobId']}"
    status, body = await get_json(session, url, method="DELETE")
    assert (status, body["status"]) == (200, "aborted")
    assert sandbox.config.quota == 10
    assert (await get_json(session, url))[1]["status"] == "aborted"
    _, usage = await get_json(session, f"{sandbox.base_url}/admin/usage")
    assert usage["creditsForAccount"]["consumedCredits"] == 0


async def test_cancel_after_processing_started_is_400(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A job that has started processing cannot be cancelled."""
    sandbox.config.finished_after = 5.0
    _, job = await submit(session, sandbox, make_ids(1))
    url = f"{sandbox.base_url}/{CONTACT}/{job['jobId']}"
    status, _ = await get_json(session, url, method="DELETE")
    assert status == 400
    assert (await get_json(session, url))[1]["status"] == "processing"


# -- admin/jobs -----------------------------------------------------------------------------------


async def test_admin_jobs_filters_by_type_and_status(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """jobTypes and jobStatuses narrow the listing."""
    sandbox.config.list_lag = 0.0  # about the filters: the lag has tests of its own
    _, first = await submit(session, sandbox, make_ids(1))
    _, second = await submit(session, sandbox, make_ids(2), kind="contact/job")
    sandbox.config.processing_after = 5.0
    _, third = await submit(session, sandbox, make_ids(3))
    base = f"{sandbox.base_url}/admin/jobs"
    _, by_type = await get_json(session, f"{base}?jobTypes=targetContactDetails")
    assert [j["jobId"] for j in by_type["jobs"]] == [third["jobId"], first["jobId"]]
    _, by_status = await get_json(session, f"{base}?jobStatuses=finished")
    assert [j["jobId"] for j in by_status["jobs"]] == [second["jobId"], first["jobId"]]
    item = by_status["jobs"][0]
    assert (item["type"], item["ids"], item["creditsConsumed"]) == ("contactDetails", 2, 2)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", item["created"])


async def test_admin_jobs_pages_newest_first(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """Paging is 1-based over the newest-first listing."""
    sandbox.config.list_lag = 0.0  # about paging: the lag has tests of its own
    job_ids = [(await submit(session, sandbox, make_ids(1)))[1]["jobId"] for _ in range(5)]
    _, page = await get_json(session, f"{sandbox.base_url}/admin/jobs?page=2&resultsPerPage=2")
    assert [j["jobId"] for j in page["jobs"]] == [job_ids[2], job_ids[1]]
    assert (page["page"], page["resultsPerPage"], page["totalResults"]) == (2, 2, 5)


async def test_admin_jobs_filters_by_time(sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
    """start and end (ISO-8601) bound the creation time."""
    sandbox.config.list_lag = 0.0  # about the time filters: the lag has tests of its own
    await submit(session, sandbox, make_ids(1))
    base = f"{sandbox.base_url}/admin/jobs"
    past = "2000-01-01T00:00:00Z"
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    _, inside = await get_json(session, f"{base}?start={past}&end={future.replace('+', '%2B')}")
    _, before = await get_json(session, f"{base}?end={past}")
    assert (inside["totalResults"], before["totalResults"]) == (1, 0)


async def test_admin_jobs_refuses_more_than_50_per_page(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """resultsPerPage above 50 is a 400."""
    status, body = await get_json(session, f"{sandbox.base_url}/admin/jobs?resultsPerPage=51")
    assert (status, body["errorNumber"]) == (400, "400-105")


# -- faults ---------------------------------------------------------------------------------------


async def test_drop_fault_disconnects_before_recording_anything(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A dropped request reaches the client as a server disconnect and creates no job."""
    sandbox.config.drop_rate = 1.0
    sandbox.config.quota = 10
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await submit(session, sandbox, make_ids(2))
    ledger = sandbox.ledger
    assert (ledger.requests, ledger.faults["drop"]) == (1, 1)
    assert not ledger.jobs
    assert ledger.ids_accepted == 0
    assert sandbox.config.quota == 10


async def test_drop_after_accept_records_the_job_but_disconnects(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """drop_after_accept creates and debits the job, then closes without an answer."""
    sandbox.config.drop_after_accept_rate = 1.0
    sandbox.config.quota = 10
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await submit(session, sandbox, make_ids(2))
    ledger = sandbox.ledger
    assert ledger.faults["drop_after_accept"] == 1
    assert len(ledger.jobs) == 1
    assert ledger.ids_accepted == 2
    assert sandbox.config.quota == 8


async def test_5xx_fault_answers_an_error_and_records_nothing(
    sandbox: Sandbox, session: aiohttp.ClientSession
) -> None:
    """A 5xx fault answers 500/502/503 with the error body before the endpoint runs."""
    sandbox.config.fault_5xx_rate = 1.0
    status, body = await submit(session, sandbox, make_ids(1))
    assert status in (500, 502, 503)
    assert body["status"] == status
    assert sandbox.ledger.faults["5xx"] == 1
    assert not sandbox.ledger.jobs


# -- CLI ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        ["--fault-5xx", "2"],
        ["--port", "70000"],
        ["--throttle", "0"],
        ["--accept-then-5xx-rate", "1.5"],
        ["--accept-then-garbage-rate", "-1"],
        ["--garbage-kinds", "truncated,bogus"],
        ["--list-lag", "-1"],
        ["--lockout-seconds", "nan"],
        ["--clock-skew", "inf"],
        ["--job-fail-rate", "2"],
        ["--no-match-rate", "x"],
        ["--results-id-column", "a,b"],
        ["--finished-jitter", "1.5"],
        ["--webhook-loss-rate", "-0.1"],
        ["--webhook-delay", "-1"],
    ],
)
def test_sandbox_main_rejects_bad_arguments(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad flags or values end in argparse's exit status 2."""
    with pytest.raises(SystemExit) as exc_info:
        sandbox_main(argv)
    assert exc_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_parse_args_maps_every_new_flag_onto_its_setting() -> None:
    """Each fault, clock, list and results flag sets the SandboxConfig field of its name."""
    config, host, port = parse_args(
        [
            "--fault-html",
            "--accept-then-5xx-rate=0.25",
            "--accept-then-garbage-rate=0.5",
            "--garbage-kinds=html,truncated",
            "--clock-skew=-90",
            "--list-lag=2",
            "--job-fail-rate=0.1",
            "--failed-results",
            "--no-match-rate=0.2",
            "--results-id-column=inputId",
            "--lockout-seconds=600",
            "--port=0",
        ]
    )
    assert (host, port) == ("127.0.0.1", 0)
    assert config.fault_html and config.failed_results
    assert (config.accept_then_5xx_rate, config.accept_then_garbage_rate) == (0.25, 0.5)
    assert config.garbage_kinds == ("html", "truncated")
    assert (config.clock_skew, config.list_lag, config.lockout_seconds) == (-90.0, 2.0, 600.0)
    assert (config.job_fail_rate, config.no_match_rate) == (0.1, 0.2)
    assert config.results_id_column == "inputId"


def test_parse_args_maps_the_queue_and_webhook_flags() -> None:
    """--finished-jitter, --queue-in-order, --webhook-loss-rate and --webhook-delay set theirs."""
    config, _, _ = parse_args(
        [
            "--finished-jitter=0.25",
            "--queue-in-order",
            "--webhook-loss-rate=0.1",
            "--webhook-delay=2.5",
        ]
    )
    assert (config.finished_jitter, config.queue_in_order) == (0.25, True)
    assert (config.webhook_loss_rate, config.webhook_delay) == (0.1, 2.5)


def test_parse_args_defaults_are_the_configs() -> None:
    """Without flags the CLI builds the library's default SandboxConfig."""
    config, _, _ = parse_args([])
    assert config == SandboxConfig()


def test_sandbox_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names every knob, the control routes included."""
    with pytest.raises(SystemExit) as exc_info:
        sandbox_main(["--help"])
    assert exc_info.value.code == 0
    out = capsys.readouterr().out
    flags = (
        "--fault-html --accept-then-5xx-rate --accept-then-garbage-rate --garbage-kinds "
        "--clock-skew --list-lag --job-fail-rate --failed-results --no-match-rate "
        "--results-id-column --lockout-seconds --drop-after-accept-rate --fault-5xx"
    )
    for flag in flags.split():
        assert flag in out, flag
    assert "/_sandbox/config" in out


def test_sandbox_main_serves_until_interrupted() -> None:
    """The CLI prints its URLs and credentials on one line, serves, and exits 0 on Ctrl-C."""
    code = "import sys, bulkjob.sandbox._cli as s; sys.exit(s.sandbox_main(sys.argv[1:]))"
    with subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert re.search(r"base_url=http://127\.0\.0\.1:\d+/api/v1 ", line), line
    assert "token_url=http://127.0.0.1:" in line
    assert " access_tokens=sandbox-token " in line
    assert line.rstrip().endswith(" client_id=sandbox-client")
    assert "sandbox-secret" not in line
    assert proc.returncode == 0, err


def test_sandbox_in_another_process_is_steered_over_http() -> None:
    """A sandbox started with flags takes config changes and reports its ledger over HTTP."""
    code = "import sys, bulkjob.sandbox._cli as s; sys.exit(s.sandbox_main(sys.argv[1:]))"
    argv = ["--port", "0", "--token", "t1", "--token", "t2", "--accept-then-5xx-rate", "1"]
    with subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        try:
            match = re.search(r"base_url=(http://127\.0\.0\.1:\d+)/api/v1 ", line)
            assert match, line
            root = match[1]
            assert " access_tokens=t1,t2 " in line

            def call(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
                headers = {"accessToken": "t2", "Content-Type": "text/plain"}
                req = urllib.request.Request(url, body, headers, method=method)
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        return r.status, r.read()
                except urllib.error.HTTPError as exc:
                    return exc.code, exc.read()

            submit_url = f"{root}/api/v1/{CONTACT}"
            assert call("POST", submit_url, make_ids(1)[0].encode())[0] in (500, 502, 503)
            change = json.dumps({"accept_then_5xx_rate": 0, "garbage_kinds": ["html"]}).encode()
            assert call("POST", f"{root}/_sandbox/config", change)[0] == 200
            assert call("POST", submit_url, make_ids(1, "b")[0].encode())[0] == 200
            status, ledger = call("GET", f"{root}/_sandbox/ledger")
            assert status == 200
            counts = json.loads(ledger)
            assert (counts["requests"], counts["jobs"]) == (2, 2)
            assert counts["faults"] == {"accept_then_5xx": 1}
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
