"""Tests for access tokens: fixed, minted from client credentials, refreshed, refused."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import aiohttp
import pytest

from bulkjob._auth import TokenSource, parse_expiration
from bulkjob._errors import AuthError, TransportError, UnreachableError
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    TOKEN,
    SandboxFactory,
    settings_for,
    wait_until,
)


async def _accepted_by(sandbox: Sandbox, session: aiohttp.ClientSession, token: str) -> int:
    """The status of a usage call made with ``token``."""
    url = f"{sandbox.base_url}/admin/usage"
    headers = {"accessToken": token, "Accept": "application/json"}
    async with session.get(url, headers=headers) as resp:
        await resp.read()
        return resp.status


def test_parse_expiration_documented_format() -> None:
    """The documented expirationTime parses to the right UTC instant."""
    expected = datetime(2015, 7, 21, 21, 8, 17, tzinfo=UTC).timestamp()
    assert parse_expiration("Tue, Jul 21, 2015 09:08:17 PM GMT") == expected


def test_parse_expiration_morning_and_midnight() -> None:
    """AM times and 12 AM (midnight) read on the 24-hour clock correctly."""
    assert parse_expiration("Wed, Jul 22, 2015 12:00:05 AM GMT") == (
        datetime(2015, 7, 22, 0, 0, 5, tzinfo=UTC).timestamp()
    )


def test_parse_expiration_rfc1123() -> None:
    """The HTTP-date form is accepted too."""
    expected = datetime(2015, 7, 21, 21, 8, 17, tzinfo=UTC).timestamp()
    assert parse_expiration("Tue, 21 Jul 2015 21:08:17 GMT") == expected


@pytest.mark.parametrize("text", ["", "tomorrow", "2015-07-21T21:08:17Z", "Tue, Jul 21, 2015"])
def test_parse_expiration_unreadable_is_none(text: str) -> None:
    """An unreadable expirationTime gives None, not an exception."""
    assert parse_expiration(text) is None


async def test_fixed_token_is_used_as_is(sandbox: SandboxFactory) -> None:
    """A configured access token is handed out without calling the token endpoint."""
    sb = await sandbox()
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings_for(sb), session)
        assert await tokens.get() == TOKEN
        assert tokens.mints == 0
        assert not tokens.can_refresh
    assert sb.ledger.requests == 0


async def test_fixed_token_refused_cannot_refresh(sandbox: SandboxFactory) -> None:
    """Without client credentials a refused token is an AuthError."""
    sb = await sandbox()
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings_for(sb), session)
        with pytest.raises(AuthError):
            await tokens.refresh(TOKEN)


async def test_no_credentials_is_auth_error(sandbox: SandboxFactory) -> None:
    """Neither token nor client credentials: get() raises AuthError."""
    sb = await sandbox()
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings_for(sb, access_token=None), session)
        with pytest.raises(AuthError, match="no credentials"):
            await tokens.get()


async def test_minted_token_is_accepted(sandbox: SandboxFactory) -> None:
    """Client id + secret mint a token from the token endpoint that the API accepts."""
    sb = await sandbox()
    settings = settings_for(sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings, session)
        token = await tokens.get()
        assert token != TOKEN
        assert tokens.mints == 1
        assert await _accepted_by(sb, session, token) == 200


async def test_minted_token_is_reused(sandbox: SandboxFactory) -> None:
    """A long-lived minted token is minted once and then reused."""
    sb = await sandbox(token_lifetime=3600.0)
    settings = settings_for(sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings, session)
        first = await tokens.get()
        assert [await tokens.get() for _ in range(5)] == [first] * 5
        assert tokens.mints == 1


async def test_concurrent_gets_mint_once(sandbox: SandboxFactory) -> None:
    """Many workers asking at once share one minted token."""
    sb = await sandbox()
    settings = settings_for(sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings, session)
        got = await asyncio.gather(*(tokens.get() for _ in range(10)))
        assert len(set(got)) == 1
        assert tokens.mints == 1


async def test_token_refreshed_ahead_of_expiry(sandbox: SandboxFactory) -> None:
    """A short-lived token is replaced before the server stops accepting it."""
    sb = await sandbox(token_lifetime=1.0)
    settings = settings_for(
        sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_refresh_margin=300.0
    )
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings, session)
        first = await tokens.get()
        # The refresh point lies at most half-way through the (<= 1 s) life.
        await asyncio.sleep(0.55)
        second = await tokens.get()
        assert second != first
        assert tokens.mints == 2
        assert await _accepted_by(sb, session, second) == 200


async def test_refresh_mints_a_new_token(sandbox: SandboxFactory) -> None:
    """refresh() of the current token mints a replacement."""
    sb = await sandbox()
    settings = settings_for(sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings, session)
        first = await tokens.get()
        await tokens.refresh(first)
        assert await tokens.get() != first
        assert tokens.mints == 2


async def test_refresh_of_stale_token_is_a_no_op(sandbox: SandboxFactory) -> None:
    """refresh() of a token already replaced by another worker does not mint again."""
    sb = await sandbox()
    settings = settings_for(sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings, session)
        first = await tokens.get()
        await tokens.refresh(first)
        await tokens.refresh(first)
        assert tokens.mints == 2


async def test_wrong_secret_is_auth_error_without_the_secret(sandbox: SandboxFactory) -> None:
    """A refused client secret raises AuthError whose text never shows the secret."""
    sb = await sandbox()
    secret = "wrong-secret-Zq9x"
    settings = settings_for(sb, client_id=CLIENT_ID, client_secret=secret)
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings, session)
        with pytest.raises(AuthError) as info:
            await tokens.get()
    assert info.value.status == 401
    assert secret not in str(info.value)
    assert secret not in repr(info.value)
    assert secret not in repr(tokens)


async def test_unreachable_token_endpoint_hides_the_secret(sandbox: SandboxFactory) -> None:
    """A token endpoint that is down at the first mint fails at the first attempt, with an
    UnreachableError (a TransportError) without the secret in it."""
    sb = await sandbox()
    url = sb.token_url
    await sb.close()
    secret = "down-secret-Pw7k"
    settings = settings_for(
        sb, token_url=url, client_id=CLIENT_ID, client_secret=secret, max_attempts=5
    )
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings, session)
        with pytest.raises(UnreachableError, match="token endpoint") as info:
            await tokens.get()
    assert isinstance(info.value, TransportError)
    assert tokens.attempts == 1
    assert secret not in str(info.value) and secret not in info.value.url
    assert info.value.__cause__ is None


async def test_token_endpoint_down_after_a_mint_is_ridden_out(sandbox: SandboxFactory) -> None:
    """Once the login host has answered, a refused connection is retried: a login host
    restarting between two mints is waited for."""
    sb = await sandbox()
    settings = settings_for(
        sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, max_attempts=50, backoff_max=0.02
    )
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings, session)
        first = await tokens.get()
        port = sb.port
        await sb.close()
        mint = asyncio.create_task(tokens.refresh(first))
        await wait_until(lambda: tokens.attempts >= 3)
        again = Sandbox()
        await again.start("127.0.0.1", port)
        try:
            assert await mint not in (None, first)
        finally:
            await again.close()
    assert tokens.mints == 2 and again.ledger.token_requests == 1


@pytest.mark.parametrize("kind", ["5xx", "reset", "garbage"])
async def test_token_endpoint_faults_are_retried(sandbox: SandboxFactory, kind: str) -> None:
    """A 5xx, a reset or an answer without a token from the login host is retried, not fatal."""
    sb = await sandbox(token_fault_rate=0.6, token_fault_kinds=(kind,), seed=4)
    settings = settings_for(sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, max_attempts=20)
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings, session)
        for _ in range(5):
            await tokens.refresh(await tokens.get())
        assert await _accepted_by(sb, session, await tokens.get()) == 200
    assert sb.ledger.faults[f"token_{kind}"] > 0
    assert tokens.mints == 6


async def test_token_endpoint_failing_for_good_is_transport_not_auth(
    sandbox: SandboxFactory,
) -> None:
    """A login host that keeps failing is exit 7's TransportError, never a credentials refusal."""
    sb = await sandbox(token_fault_rate=1.0, token_fault_kinds=("5xx",))
    secret = "flaky-secret-Qm3v"
    settings = settings_for(sb, client_id=CLIENT_ID, client_secret=secret, max_attempts=3)
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings, session)
        with pytest.raises(TransportError, match="token endpoint kept failing") as info:
            await tokens.get()
    assert not isinstance(info.value, AuthError)
    assert sb.ledger.token_requests == 3
    assert secret not in str(info.value)


async def test_slow_login_host_still_mints(sandbox: SandboxFactory) -> None:
    """A login host slower than usual (but within the timeout) is simply waited for."""
    sb = await sandbox(token_latency=0.3)
    settings = settings_for(sb, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    async with aiohttp.ClientSession() as session:
        tokens = TokenSource(settings, session)
        assert await _accepted_by(sb, session, await tokens.get()) == 200
