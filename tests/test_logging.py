"""Tests for log set-up and secret redaction: no token or secret ever reaches the output."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import pytest
import structlog

from bulkjob._logging import (
    REDACTED,
    configure_logging,
    get_logger,
    redact,
    register_secret,
    unconfigure_logging,
)
from bulkjob._runner import Runner
from tests.conftest import (
    CLIENT_ID,
    TOKEN,
    IdsWriter,
    SandboxFactory,
    cli_env,
    make_ids,
    run_cli,
    settings_for,
)

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


class _Collect(logging.Handler):
    """An application's handler: keeps every record it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def app_handler() -> Iterator[_Collect]:
    """A handler attached to the ``bulkjob`` logger as an application would, at INFO."""
    handler = _Collect()
    logger = logging.getLogger("bulkjob")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


def _seen_by(record: logging.LogRecord) -> str:
    """Everything a handler or formatter can read from a record."""
    return f"{record.getMessage()} {record.args} {record.exc_info} {vars(record)}"


async def test_library_use_prints_nothing_when_logging_is_not_configured(
    sandbox: SandboxFactory, ids: IdsWriter, tmp_path: Path
) -> None:
    """A script calling bulkjob.submit, logging untouched, prints nothing on stdout or stderr
    even though the run logs warnings (server faults, retries)."""
    sb = await sandbox(fault_5xx_rate=0.2, seed=3)
    script = (
        "import sys, bulkjob\n"
        "report = bulkjob.submit(\n"
        f"    [{str(ids(600))!r}], base_url={sb.base_url!r}, token_url={sb.token_url!r},\n"
        f"    access_token={TOKEN!r}, chunk_size=100, max_requests=10_000, per_seconds=1.0,\n"
        "    max_attempts=20, backoff_initial=0.01, backoff_max=0.05, reconcile_grace=0.2,\n"
        "    proof_poll_interval=0.05, request_timeout=5.0,\n"
        f"    journal={str(tmp_path / 'run.journal')!r})\n"
        f"open({str(tmp_path / 'ok')!r}, 'w').write(str(report.ok))\n"
    )
    env = {k: v for k, v in cli_env().items() if not k.startswith(("INSIDEVIEW_", "BULKJOB_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert (tmp_path / "ok").read_text() == "True"
    assert sum(sb.ledger.faults.values()) > 0  # there were warnings to print
    assert (out, err) == (b"", b"")


async def test_app_handler_gets_bulkjobs_records_redacted(
    app_handler: _Collect, sandbox: SandboxFactory, ids: IdsWriter
) -> None:
    """A handler the application attaches sees job.accepted with its fields, and no secret
    in any record, message, argument or exception."""
    sb = await sandbox(access_tokens=(SECRET,))
    report = await Runner(settings_for(sb, access_token=SECRET), [str(ids(300))]).run()
    assert report.ok
    get_logger().warning("request.echoed", url=f"https://x/?accessToken={SECRET}")
    try:
        raise RuntimeError(f"server echoed {SECRET}")
    except RuntimeError:
        get_logger().exception("request.crashed")
    accepted = [r for r in app_handler.records if r.getMessage().startswith("job.accepted")]
    assert len(accepted) == 3
    assert accepted[0].name == "bulkjob" and accepted[0].levelno == logging.INFO
    assert {"job_id", "chunk", "ids"} <= set(accepted[0].bulkjob_event)
    crashed = app_handler.records[-1]
    assert not crashed.exc_info  # the traceback is text in the message, scrubbed
    assert "RuntimeError: server echoed ***" in crashed.getMessage()
    for record in app_handler.records:
        assert SECRET not in _seen_by(record)
        # What a plain formatter makes of it, traceback included, holds no secret either.
        assert SECRET not in logging.Formatter().format(record)


async def test_app_can_silence_bulkjob(
    app_handler: _Collect, sandbox: SandboxFactory, ids: IdsWriter
) -> None:
    """logging.getLogger("bulkjob").setLevel silences the library's records."""
    logging.getLogger("bulkjob").setLevel(logging.CRITICAL)
    sb = await sandbox(fault_5xx_rate=0.2, seed=3)
    report = await Runner(settings_for(sb, max_attempts=20), [str(ids(600))]).run()
    assert report.ok and sum(sb.ledger.faults.values()) > 0
    assert app_handler.records == []


async def test_hosts_structlog_configuration_is_left_alone(
    sandbox: SandboxFactory, ids: IdsWriter
) -> None:
    """A run neither reads nor changes the application's structlog configuration."""
    seen: list[str] = []

    def record(logger: object, method: str, event: MutableMapping[str, Any]) -> str:
        seen.append(str(event.get("event")))
        raise structlog.DropEvent

    structlog.configure(processors=[record])
    try:
        before = structlog.get_config()
        sb = await sandbox()
        report = await Runner(settings_for(sb), [str(ids(300))]).run()
        assert report.ok
        assert structlog.get_config() == before
        assert seen == []  # bulkjob's events never went through the host's processors
    finally:
        structlog.reset_defaults()


def test_progress_lines_shown_at_the_default_level(stream: io.StringIO) -> None:
    """configure_logging(progress=True) shows bulkjob.progress INFO lines at WARNING."""
    configure_logging("json", level=logging.WARNING, stream=stream, progress=True)
    get_logger().info("job.accepted")
    get_logger("bulkjob.progress").info("run.progress", ids_read=5)
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["event"] == "run.progress"
    assert json.loads(line)["logger"] == "bulkjob.progress"


def test_loggers_outside_bulkjob_refused() -> None:
    """get_logger only hands out bulkjob's own loggers."""
    with pytest.raises(ValueError, match="bulkjob"):
        get_logger("app")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "https://x/token?clientSecret=val-Ue81&grant=1",
            "https://x/token?clientSecret=***&grant=1",
        ),
        ("access_token = 'val-Ue81'", "access_token = '***'"),
        ('{"accessToken": "val-Ue81"}', '{"accessToken": "***"}'),
        ("{'client_secret': 'val-Ue81'}", "{'client_secret': '***'}"),
        ('accessToken: "val-Ue81"', 'accessToken: "***"'),
        # Prose: a config error names the field, then says what is wrong with it.
        (
            "client_secret: required when client_id is set",
            "client_secret: required when client_id is set",
        ),
        ("access_token: expected a string", "access_token: expected a string"),
    ],
)
def test_named_secrets_are_pairs_not_prose(text: str, expected: str) -> None:
    """A name followed by ``=``, or a quote around ``:``, is a pair and its value blanked;
    ``name: words`` is a sentence about the setting and stays as written."""
    assert redact(text) == expected


async def test_cli_config_error_about_a_secret_is_readable() -> None:
    """The CLI's one error line about a secret setting reads as written, with no value."""
    env = cli_env()
    del env["INSIDEVIEW_ACCESS_TOKEN"]
    code, err = await run_cli("submit", "-", "--dry-run", "--client-id", "abc", env=env)
    assert code == 2, err
    assert err.strip() == "error: client_secret: required when client_id is set"
