"""Tests for log set-up and secret redaction: no token or secret ever reaches the output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from urllib.parse import quote_plus

import aiohttp
import pytest

from bulkjob._logging import (
    REDACTED,
    configure_logging,
    get_logger,
    redact,
    register_secret,
    unconfigure_logging,
)
from bulkjob._runner import Runner
from tests.conftest import CLIENT_ID, IdsWriter, SandboxFactory, make_ids, settings_for

SECRET = "tok-7f3a9c1e55d04b2a"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """A StringIO for configure_logging; the handler it attaches is removed afterwards."""
    buffer = io.StringIO()
    register_secret(SECRET)
    yield buffer
    unconfigure_logging()


def _log_everything() -> None:
    log = get_logger()
    log.info("token.seen", token=SECRET)
    log.info("request.sent", access_token=SECRET, accessToken=SECRET, client_secret=SECRET)
    log.warning(f"request.failed with {SECRET} inside", url=f"https://x/?t={SECRET}")
    log.info("nested", extra={"headers": {"x": SECRET}}, items=[SECRET, (SECRET,)])
    try:
        raise RuntimeError(f"server echoed {SECRET}")
    except RuntimeError as exc:
        log.error("request.crashed", exc_info=exc)
        log.error("request.failed", error=exc)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_secret_never_logged(stream: io.StringIO, fmt: str) -> None:
    """A registered secret is redacted from fields, messages, nested data and exceptions."""
    configure_logging(fmt, stream=stream)
    _log_everything()
    out = stream.getvalue()
    assert SECRET not in out
    assert out.count(REDACTED) >= 10


def test_json_lines_are_valid(stream: io.StringIO) -> None:
    """JSON output is one object per line with event, level and timestamp."""
    configure_logging("json", stream=stream)
    get_logger().info("job.accepted", job_id="j1", chunk=3, token=SECRET)
    (line,) = stream.getvalue().splitlines()
    event = json.loads(line)
    assert (event["event"], event["level"], event["chunk"]) == ("job.accepted", "info", 3)
    assert event["token"] == REDACTED
    assert "timestamp" in event


def test_secret_named_field_redacted_even_unregistered(stream: io.StringIO) -> None:
    """A field named like a secret is blanked even when its value was never registered."""
    configure_logging("json", stream=stream)
    get_logger().info("x", token="never-registered-value", Client_Secret="other-value")
    out = stream.getvalue()
    assert "never-registered-value" not in out
    assert "other-value" not in out


def test_exception_with_secret_redacted(stream: io.StringIO) -> None:
    """A traceback whose message holds the secret is scrubbed but still shown."""
    configure_logging("console", stream=stream)
    try:
        raise ValueError(f"bad token {SECRET}")
    except ValueError:
        get_logger().exception("run.crashed")
    out = stream.getvalue()
    assert SECRET not in out
    assert "ValueError: bad token ***" in out


def test_level_filters(stream: io.StringIO) -> None:
    """Events below the configured level are dropped."""
    configure_logging("json", level=logging.WARNING, stream=stream)
    get_logger().info("quiet")
    get_logger().warning("loud")
    assert [json.loads(x)["event"] for x in stream.getvalue().splitlines()] == ["loud"]


def test_redact_ignores_tiny_secrets() -> None:
    """Values shorter than four characters are not registered (they would mangle text)."""
    register_secret("ab")
    register_secret(None)
    assert redact("ab cab") == "ab cab"


async def test_run_log_holds_no_secret_or_token(
    stream: io.StringIO, sandbox: SandboxFactory, ids: IdsWriter
) -> None:
    """A full run with a refused token, minting and faults logs neither secret nor any token."""
    client_secret = "client-secret-Hq2v8"
    revoked = "revoked-token-Lm4n6"
    sb = await sandbox(client_secret=client_secret, fault_5xx_rate=0.2, drop_rate=0.1, seed=5)
    configure_logging("json", level=logging.DEBUG, stream=stream)
    sent_tokens: set[str] = set()

    async def record(
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        if "accessToken" in params.headers:
            sent_tokens.add(params.headers["accessToken"])

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(record)
    settings = settings_for(
        sb,
        access_token=revoked,
        client_id=CLIENT_ID,
        client_secret=client_secret,
        max_attempts=20,
    )
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        report = await Runner(settings, [str(ids(make_ids(500)))], session=session).run()
    assert report.ok
    minted = sent_tokens - {revoked}
    assert minted  # the revoked token was replaced by a minted one
    out = stream.getvalue()
    assert "token.minted" in out
    assert sum(sb.ledger.faults.values()) > 0
    # A fault on a status or list call is retried; on a submit, its outcome is unknown.
    assert "request.retrying" in out or "chunk.unknown_outcome" in out
    for secret in (client_secret, *sent_tokens):
        assert secret not in out


def test_percent_encoded_secret_is_redacted_too() -> None:
    """A secret echoed inside a URL (percent-encoded) is scrubbed as well."""
    secret = "s3cr+t/with=chars"
    register_secret(secret)
    url = f"https://login.example/token.json?clientSecret={quote_plus(secret)}"
    assert secret not in redact(url)
    assert quote_plus(secret) not in redact(url)
