"""Tests for the API client and the submit path against the sandbox: acceptance, pauses,
retries, 400 classes. Submits go through :meth:`Submitter.post`, the one place that sends
them; the client itself only carries requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from bulkjob._answers import Accepted, Refused, TokenRefused, Unknown
from bulkjob._auth import TokenSource
from bulkjob._chunker import Chunk
from bulkjob._client import ApiClient, Tries
from bulkjob._errors import (
    AuthError,
    JobRejectedError,
    QueueFullError,
    QuotaExhaustedError,
    RequestError,
    TransportError,
    UnreachableError,
)
from bulkjob._limiter import WindowLimiter
from bulkjob._report import RunReport, StopSignal
from bulkjob._settings import Settings
from bulkjob._source import Origin
from bulkjob._submitter import Submitter
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    SandboxFactory,
    make_ids,
    settings_for,
    wait_until,
)

ClientFactory = Callable[..., Awaitable["Api"]]


def chunk_of(ids: list[str], seq: int = 1) -> Chunk:
    """A chunk holding ``ids``, as the chunker would build it from a file."""
    return Chunk(seq, ids, Origin("ids.txt", 1), Origin("ids.txt", len(ids)))


def chunks(n: int, size: int = 10) -> list[Chunk]:
    """``n`` chunks of ``size`` distinct ids each."""
    return [chunk_of(make_ids(size, start=i * size), seq=i + 1) for i in range(n)]


class Api:
    """An ApiClient and the Submitter that posts through it (no journal)."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        limiter = WindowLimiter(
            settings.max_requests,
            settings.per_seconds,
            margin=settings.window_margin,
            initial_delay=settings.throttle_initial_delay,
            max_pause=settings.retry_after_max,
        )
        self.client = ApiClient(settings, session, limiter, TokenSource(settings, session))
        self.stats = self.client.stats
        self.submitter = Submitter(settings, self.client, None, RunReport(), StopSignal())

    async def submit(self, chunk: Chunk) -> Accepted:
        """Post ``chunk``; a refusal is raised as its error, an unknown outcome fails."""
        verdict, _ = await self.submitter.post(chunk)
        if isinstance(verdict, Refused):
            raise verdict.error
        assert isinstance(verdict, Accepted), verdict
        return verdict

    async def get_json(self, path: str) -> dict[str, object]:
        """The client's GET."""
        return await self.client.get_json(path)


@pytest.fixture
async def client() -> AsyncIterator[ClientFactory]:
    """A factory: ``await client(settings)`` builds an Api on a session closed at teardown."""
    sessions: list[aiohttp.ClientSession] = []

    async def build(settings: Settings) -> Api:
        session = aiohttp.ClientSession()
        sessions.append(session)
        return Api(settings, session)

    yield build
    for session in sessions:
        await session.close()


async def _submit_all(api: Api, todo: list[Chunk]) -> list[str]:
    return [(await api.submit(c)).job_id for c in todo]


# -- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", ["json", "xml"])
async def test_submit_accepted(sandbox: SandboxFactory, client: ClientFactory, accept: str) -> None:
    """A valid chunk is accepted as one job, whichever answer format is asked for."""
    sb = await sandbox()
    api = await client(settings_for(sb, accept=accept))
    ids = make_ids(5)
    job = await api.submit(chunk_of(ids))
    assert job.job_id in sb.ledger.jobs
    assert (job.status, job.job_type) == ("accepted", "targetContactDetails")
    assert set(sb.ledger.accepted_ids) == set(ids)
    assert api.stats.requests == 1


async def test_submit_sends_query_options(sandbox: SandboxFactory, client: ClientFactory) -> None:
    """retrieveCompanyDetails and webhook reach the server."""
    sb = await sandbox()
    settings = settings_for(sb, retrieve_company_details=True, webhook="https://hooks.example/x")
    job = await (await client(settings)).submit(chunk_of(make_ids(2)))
    record = sb.ledger.jobs[job.job_id]
    assert record.retrieve_company_details
    assert record.webhook == "https://hooks.example/x"


async def test_get_json_reads_usage(sandbox: SandboxFactory, client: ClientFactory) -> None:
    """get_json returns the parsed answer of a GET call."""
    sb = await sandbox(quota=1000)
    api = await client(settings_for(sb))
    await api.submit(chunk_of(make_ids(10)))
    usage = await api.get_json("admin/usage")
    assert usage["creditsForAccount"] == {"allocatedCredits": 1000, "consumedCredits": 10}


# -- throttling and transient failures --------------------------------------------------------


async def test_429_with_retry_after_pauses_and_succeeds(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """A 429 with Retry-After pauses once, for as long as asked, and then succeeds."""
    # A window of a whole second (the client's 0.3 s pacing puts both requests in it, even on
    # a busy machine). The sandbox's "Retry-After: 1" covers its lockout, so exactly one 429
    # shows the header was honoured (backoff alone would start at 0.05 s and meet the
    # lockout again).
    sb = await sandbox(throttle_requests=1, throttle_window=1.0, retry_after=True)
    api = await client(settings_for(sb, per_seconds=0.3, throttle_initial_delay=0.05))
    await _submit_all(api, chunks(2))
    assert api.stats.throttled == 1
    assert sb.ledger.throttled == 1
    assert sb.ledger.ids_accepted == 20
    assert api.stats.retries == 0


async def test_429_without_retry_after_backs_off(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """Without Retry-After the client keeps pausing until the lockout ends, then succeeds."""
    sb = await sandbox(throttle_requests=1, throttle_window=1.0)  # both requests in it
    api = await client(settings_for(sb, per_seconds=0.3, throttle_initial_delay=0.02))
    await _submit_all(api, chunks(2))
    assert api.stats.throttled >= 1
    assert api.stats.throttled == sb.ledger.throttled
    assert sb.ledger.ids_accepted == 20


async def test_5xx_on_a_get_is_retried_and_counted(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """Server faults on an idempotent request are retried, each retry counted."""
    sb = await sandbox(fault_5xx_rate=0.5, seed=3)
    api = await client(settings_for(sb, max_attempts=30))
    for _ in range(8):
        await api.get_json("admin/usage")
    assert sb.ledger.faults["5xx"] > 0
    assert api.stats.retries == sb.ledger.faults["5xx"]


async def test_5xx_forever_on_a_get_is_transport_error(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """A server that always fails gives TransportError after max_attempts tries."""
    sb = await sandbox(fault_5xx_rate=1.0)
    api = await client(settings_for(sb, max_attempts=3))
    with pytest.raises(TransportError) as info:
        await api.get_json("admin/usage")
    assert info.value.status in (500, 502, 503)
    assert sb.ledger.requests == 3
    assert api.stats.retries == 2


async def test_5xx_to_a_submit_is_an_unknown_outcome_not_resent(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """A submit answered 5xx is not resent: its outcome is unknown until proven."""
    sb = await sandbox(fault_5xx_rate=1.0)
    api = await client(settings_for(sb, max_attempts=3))
    verdict, _ = await api.submitter.post(chunk_of(make_ids(3), seq=7))
    assert isinstance(verdict, Unknown)
    assert verdict.status in (500, 502, 503)
    assert sb.ledger.requests == 1


async def test_dropped_connection_to_a_submit_is_an_unknown_outcome(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """A dropped connection after a submit went out is never resent on a guess."""
    sb = await sandbox(drop_rate=1.0)
    api = await client(settings_for(sb, max_attempts=30))
    verdict, _ = await api.submitter.post(chunk_of(make_ids(3)))
    assert isinstance(verdict, Unknown)
    assert sb.ledger.requests == 1


async def test_server_never_reached_fails_at_the_first_attempt(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """A server that has not answered once in this command is not retried: one attempt,
    UnreachableError (a TransportError), nothing sent."""
    sb = await sandbox()
    settings = settings_for(sb, max_attempts=5)
    await sb.close()
    api = await client(settings)
    with pytest.raises(UnreachableError, match="cannot connect") as raised:
        await api.submit(chunk_of(make_ids(1)))
    assert isinstance(raised.value, TransportError)
    assert raised.value.url == settings.base_url
    assert (api.stats.requests, api.stats.unconnected, api.stats.retries) == (1, 1, 0)


async def test_refused_after_an_answer_is_ridden_out(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """Once the server has answered, refused connections are retried with backoff, so a
    server restarting mid-run is waited for."""
    sb = await sandbox()
    api = await client(settings_for(sb, max_attempts=50, backoff_max=0.02))
    await api.get_json("admin/usage")
    port = sb.port
    await sb.close()
    call = asyncio.create_task(api.get_json("admin/usage"))
    await wait_until(lambda: api.stats.unconnected >= 2)
    again = Sandbox()
    await again.start("127.0.0.1", port)
    try:
        await call
    finally:
        await again.close()
    assert api.stats.retries >= 2 and api.stats.unconnected == api.stats.retries
    assert again.ledger.requests == 1


# -- 401 ---------------------------------------------------------------------------------------


async def test_401_remints_once_then_succeeds(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """A revoked token with client credentials configured is replaced once and the job goes."""
    sb = await sandbox()
    settings = settings_for(
        sb, access_token="revoked-token-1", client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    )
    api = await client(settings)
    job = await api.submit(chunk_of(make_ids(3)))
    assert job.job_id in sb.ledger.jobs
    assert api.stats.token_refreshes == 1
    assert sb.ledger.requests == 2


async def test_token_revoked_mid_run_is_replaced(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """A token revoked between two submits is replaced by a minted one."""
    sb = await sandbox()
    settings = settings_for(sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    settings = settings.replace(access_token="sandbox-token")
    api = await client(settings)
    await api.submit(chunk_of(make_ids(3)))
    sb.config.access_tokens = ()  # the fixed token is revoked
    await api.submit(chunk_of(make_ids(3, start=3), seq=2))
    assert api.stats.token_refreshes == 1
    assert sb.ledger.ids_accepted == 6


async def test_second_401_is_auth_error(sandbox: SandboxFactory, client: ClientFactory) -> None:
    """When the fresh token is refused too, the client raises AuthError."""
    api_server = await sandbox()
    issuer = await sandbox()  # mints tokens the API server does not know
    settings = settings_for(
        api_server, token_url=issuer.token_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
    )
    api = await client(settings)
    with pytest.raises(AuthError) as info:
        await api.submit(chunk_of(make_ids(3), seq=4))
    assert info.value.status == 401
    assert info.value.chunk == 4
    assert api.stats.token_refreshes == 1
    assert api_server.ledger.requests == 2
    assert api_server.ledger.jobs == {}


async def test_401_after_another_request_reminted_is_not_the_end(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """Another request's refresh, then that token revoked too: this request mints once more.

    Only a 401 for the token minted for this very request proves the credentials bad.
    """
    sb = await sandbox()
    settings = settings_for(sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    api = (await client(settings.replace(access_token=None))).client
    refused = TokenRefused(AuthError("refused", status=401))
    first = await api.token()
    await api.recover(refused, Tries(), first)  # another request's 401: it mints
    second = await api.token()
    assert second != first
    mine = Tries()
    await api.recover(refused, mine, first)  # mine was sent with the old token: no mint
    assert await api.token() == second and mine.minted is None
    await api.recover(refused, mine, second)  # revoked again: mine mints
    third = await api.token()
    assert mine.minted == third != second
    with pytest.raises(AuthError):
        await api.recover(refused, mine, third)  # its own fresh token refused: bad credentials
    assert api.stats.token_refreshes == 2


async def test_401_without_credentials_is_auth_error(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """A refused fixed token with no client credentials fails at once."""
    sb = await sandbox()
    api = await client(settings_for(sb, access_token="not-a-valid-token"))
    with pytest.raises(AuthError):
        await api.submit(chunk_of(make_ids(3)))
    assert sb.ledger.requests == 1


# -- 400 classification -----------------------------------------------------------------------


async def _first_refusal(sb: Sandbox, api: Api) -> Exception:
    with pytest.raises(RequestError) as info:
        await api.submit(chunk_of(make_ids(100), seq=2))
    assert sb.ledger.jobs == {}
    return info.value


async def test_quota_is_quota_exhausted(sandbox: SandboxFactory, client: ClientFactory) -> None:
    """The sandbox's quota 400 is classified QuotaExhaustedError, with its context."""
    sb = await sandbox(quota=50)
    exc = await _first_refusal(sb, await client(settings_for(sb)))
    assert isinstance(exc, QuotaExhaustedError)
    assert (exc.status, exc.error_number, exc.chunk) == (400, "400-201", 2)
    assert exc.server_message is not None
    assert "quota" in exc.server_message.lower()


async def test_queue_full_is_queue_full(sandbox: SandboxFactory, client: ClientFactory) -> None:
    """Too many running jobs is classified QueueFullError."""
    sb = await sandbox(running_job_limit=1, processing_after=60.0)
    api = await client(settings_for(sb))
    await api.submit(chunk_of(make_ids(1, prefix="first")))
    with pytest.raises(QueueFullError) as info:
        await api.submit(chunk_of(make_ids(5), seq=2))
    assert info.value.error_number == "400-301"
    assert len(sb.ledger.jobs) == 1


async def test_validation_is_job_rejected(sandbox: SandboxFactory, client: ClientFactory) -> None:
    """An id the server refuses is JobRejectedError, not a stop-the-run error."""
    sb = await sandbox()
    api = await client(settings_for(sb))
    with pytest.raises(JobRejectedError) as info:
        await api.submit(chunk_of(["short-id"]))
    assert info.value.error_number == "400-105"
    assert not isinstance(info.value, QuotaExhaustedError | QueueFullError)


async def test_quota_patterns_off_makes_quota_a_rejection(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """With quota_patterns=() the quota 400 is an unknown 400: JobRejectedError."""
    sb = await sandbox(quota=50)
    exc = await _first_refusal(sb, await client(settings_for(sb, quota_patterns=())))
    assert type(exc) is JobRejectedError


async def test_quota_error_number_setting(sandbox: SandboxFactory, client: ClientFactory) -> None:
    """quota_error_numbers classifies by errorNumber alone."""
    sb = await sandbox(quota=50)
    settings = settings_for(sb, quota_patterns=(), quota_error_numbers=("400-201",))
    exc = await _first_refusal(sb, await client(settings))
    assert isinstance(exc, QuotaExhaustedError)


async def test_queue_full_error_number_setting(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """queue_full_error_numbers classifies by errorNumber alone."""
    sb = await sandbox(running_job_limit=1, processing_after=60.0)
    settings = settings_for(sb, queue_full_patterns=(), queue_full_error_numbers=("400-301",))
    api = await client(settings)
    await api.submit(chunk_of(make_ids(1, prefix="first")))
    with pytest.raises(QueueFullError):
        await api.submit(chunk_of(make_ids(5), seq=2))


async def test_queue_full_patterns_off_makes_it_a_rejection(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """With queue_full_patterns=() the queue-full 400 is JobRejectedError."""
    sb = await sandbox(running_job_limit=1, processing_after=60.0)
    api = await client(settings_for(sb, queue_full_patterns=()))
    await api.submit(chunk_of(make_ids(1, prefix="first")))
    with pytest.raises(JobRejectedError) as info:
        await api.submit(chunk_of(make_ids(5), seq=2))
    assert type(info.value) is JobRejectedError


async def test_classified_400_is_not_retried(
    sandbox: SandboxFactory, client: ClientFactory
) -> None:
    """A 400 is answered once: it spends no retry."""
    sb = await sandbox(quota=50)
    api = await client(settings_for(sb))
    await _first_refusal(sb, api)
    assert sb.ledger.requests == 1
    assert api.stats.retries == 0
