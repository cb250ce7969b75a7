"""Tests for the network under every request: proxies (the setting and the environment)
through a real local forward proxy, and fast failure when a host was never reached."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import bulkjob
from bulkjob._errors import ConfigError, ProxyRefusedError
from bulkjob._journal import ChunkState
from bulkjob._settings import Settings
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    TOKEN,
    SandboxFactory,
    cli_env,
    cli_flags,
    journal_rows,
    make_ids,
    run_cli,
    submit_args,
    write_ids,
)
from tests.proxy import ForwardProxy

PROXY_USER, PROXY_PASSWORD = "corp", "proxy-pass-Zx81"
#: A name under the reserved .invalid TLD (RFC 6761): it never resolves.
NO_SUCH_HOST = "http://bulkjob-test.invalid:1/api/v1"


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    """A real forward proxy on 127.0.0.1:<ephemeral>, with credentials required."""
    server = await ForwardProxy(PROXY_USER, PROXY_PASSWORD).start()
    yield server
    await server.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound (so nobody else takes it) and
    never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _quick(sb: Sandbox) -> dict[str, object]:
    """Keywords for the public functions: aimed at ``sb``, fast, client credentials."""
    return {
        "base_url": sb.base_url,
        "token_url": sb.token_url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "max_requests": 10_000,
        "per_seconds": 1.0,
        "chunk_size": 100,
    }


# -- proxies ---------------------------------------------------------------------------------


async def test_proxy_setting_carries_every_request(
    sandbox: SandboxFactory, proxy: ForwardProxy, tmp_path: Path
) -> None:
    """With ``proxy=``, a whole submit, wait and results (token mints included) goes through
    the proxy: it forwarded exactly the requests the sandbox saw."""
    sb = await sandbox()
    ids = make_ids(250)
    path, journal = write_ids(tmp_path / "ids.txt", ids), tmp_path / "run.journal"
    common = {**_quick(sb), "proxy": proxy.url}
    report = await bulkjob.submit_async([str(path)], journal=journal, **common)
    assert report.ids_submitted == 250 and report.stop_reason is None
    assert (await bulkjob.wait_async(journal, poll_interval=0.05, **common)).all_final
    got = await bulkjob.results_async(journal, tmp_path / "out", **common)
    assert got.downloaded == len(report.jobs) == 3
    seen = sb.ledger.requests + sb.ledger.token_requests
    assert sb.ledger.routes["results"] == 3 and sb.ledger.token_requests >= 3
    assert len(proxy.forwarded) == seen and proxy.refused == 0
    assert all(f" http://127.0.0.1:{sb.port}/" in line for line in proxy.forwarded)
    # Its credentials are a secret: not in the report, nor in the journal.
    assert PROXY_PASSWORD not in json.dumps(report.settings) and "proxy" not in report.settings
    assert PROXY_PASSWORD.encode() not in journal.read_bytes()


async def test_proxy_setting_wins_over_the_environment(
    sandbox: SandboxFactory, proxy: ForwardProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit proxy is used even where the environment says no proxy for the host."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would refuse: never used
    sb = await sandbox()
    path = write_ids(tmp_path / "ids.txt", make_ids(30))
    report = await bulkjob.submit_async([str(path)], **_quick(sb), proxy=proxy.url)
    assert report.ids_submitted == 30
    assert len(proxy.forwarded) == sb.ledger.requests + sb.ledger.token_requests > 0


async def test_environment_proxy_carries_a_cli_run(
    sandbox: SandboxFactory, proxy: ForwardProxy, tmp_path: Path
) -> None:
    """``HTTP_PROXY`` in a real CLI process's environment (NO_PROXY not covering the
    host) carries every request of the run, with the credentials in its URL."""
    sb = await sandbox()
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(250)), tmp_path / "j.journal"
    env = cli_env(HTTP_PROXY=proxy.url, NO_PROXY="example.com")
    code, err = await run_cli(*submit_args(path, journal), *cli_flags(sb), env=env)
    assert code == 0, err
    assert sb.ledger.ids_accepted == 250
    assert len(proxy.forwarded) == sb.ledger.requests > 0 and proxy.refused == 0
    assert PROXY_PASSWORD not in err


async def test_proxy_flag_carries_a_cli_run(
    sandbox: SandboxFactory, proxy: ForwardProxy, tmp_path: Path
) -> None:
    """``--proxy URL`` carries every request of a real CLI run; its password is shown
    nowhere, not even with --debug logs."""
    sb = await sandbox()
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(250)), tmp_path / "j.journal"
    args = [*submit_args(path, journal), *cli_flags(sb), "--proxy", proxy.url, "--debug"]
    code, err = await run_cli(*args)
    assert code == 0, err
    assert sb.ledger.ids_accepted == 250
    assert len(proxy.forwarded) == sb.ledger.requests > 0 and proxy.refused == 0
    assert PROXY_PASSWORD not in err
    assert PROXY_PASSWORD.encode() not in journal.read_bytes()


async def test_no_proxy_covering_the_host_goes_direct(
    sandbox: SandboxFactory, proxy: ForwardProxy, tmp_path: Path
) -> None:
    """With ``NO_PROXY`` naming the host, the environment's proxy is not used."""
    sb = await sandbox()
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(250)), tmp_path / "j.journal"
    env = cli_env(HTTP_PROXY=proxy.url, NO_PROXY="localhost,127.0.0.1")
    code, err = await run_cli(*submit_args(path, journal), *cli_flags(sb), env=env)
    assert code == 0, err
    assert sb.ledger.ids_accepted == 250 and sb.ledger.requests > 0
    assert proxy.forwarded == []


async def test_proxy_tunnels_connect(proxy: ForwardProxy) -> None:
    """The test proxy's CONNECT tunnel relays bytes both ways (for https targets)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        auth = "Basic " + base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
        writer.write(
            f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nProxy-Authorization: {auth}\r\n\r\n".encode()
        )
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
    assert proxy.tunnels == [f"127.0.0.1:{port}"]


@pytest.mark.parametrize(
    "value",
    [
        "ftp://u:pw-Secret1@proxy:21",
        "proxy.example.com:3128",
        "http://",
        "http://u:pw-Secret1@proxy:port",
    ],
)
def test_proxy_setting_is_validated_without_echoing_it(value: str) -> None:
    """A proxy that is no http(s) URL is a ConfigError naming the field, never the value
    (it may hold a password)."""
    with pytest.raises(ConfigError, match=r"^proxy: ") as info:
        Settings(proxy=value)
    assert "pw-Secret1" not in str(info.value) and "proxy.example.com" not in str(info.value)


def test_proxy_password_is_registered_for_redaction() -> None:
    """Settings with a proxy password make it a secret at once: logs and errors hide it."""
    from bulkjob._logging import redact

    Settings(proxy="http://user:s3cret-Proxy-Pw@proxy.example.com:3128")
    assert "s3cret-Proxy-Pw" not in redact("connecting via user:s3cret-Proxy-Pw@proxy")


# -- fast failure ----------------------------------------------------------------------------


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _other_lines(err: str) -> list[str]:
    """Lines other than the error and the CLI's resume hints."""
    hints = ("journal: ", "resuming ", "resume with: ")
    return [
        line
        for line in err.splitlines()
        if line.strip() and not line.startswith("error:") and not line.startswith(hints)
    ]


@pytest.mark.parametrize("where", ["closed port", "no such name"])
async def test_cli_unreachable_base_url_fails_at_once(
    where: str, closed_port: int, tmp_path: Path
) -> None:
    """A base URL that never answers (refused, or a name that does not resolve) ends a
    real CLI run at the first attempt: exit 7, one error line, the chunk pending in the
    journal after one attempt (12 are allowed)."""
    url = f"http://127.0.0.1:{closed_port}/api/v1" if where == "closed port" else NO_SUCH_HOST
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(20)), tmp_path / "j.journal"
    code, err = await run_cli(
        *submit_args(path, journal), "--base-url", url, "--no-progress", "--concurrency", "1"
    )
    assert code == 7, err
    assert len(_error_lines(err)) == 1 and _other_lines(err) == [], err
    reason = "cannot connect" if where == "closed port" else "cannot resolve"
    assert reason in _error_lines(err)[0]
    (row,) = journal_rows(journal).values()
    assert row.state is ChunkState.PENDING and row.attempts == 1


async def test_cli_unreachable_token_endpoint_fails_at_once(
    sandbox: SandboxFactory, closed_port: int, tmp_path: Path
) -> None:
    """A token URL that never answers at the first mint: exit 7, one error line without
    the secret, nothing sent to the API."""
    sb = await sandbox()
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(20)), tmp_path / "j.journal"
    env = cli_env(INSIDEVIEW_CLIENT_ID=CLIENT_ID, INSIDEVIEW_CLIENT_SECRET=CLIENT_SECRET)
    del env["INSIDEVIEW_ACCESS_TOKEN"]
    flags = [*cli_flags(sb), "--token-url", f"http://127.0.0.1:{closed_port}/token.json"]
    code, err = await run_cli(*submit_args(path, journal), *flags, env=env)
    assert code == 7, err
    assert len(_error_lines(err)) == 1 and _other_lines(err) == [], err
    assert "token endpoint" in err and CLIENT_SECRET not in err
    assert sb.ledger.requests == 0
    (row,) = journal_rows(journal).values()
    assert row.state is ChunkState.PENDING and row.attempts == 0


async def test_cli_wait_on_a_host_gone_fails_at_once(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """``wait`` in a new command, with the API gone since the submit: exit 7, one line."""
    sb = await sandbox(finished_after=60.0)
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(20)), tmp_path / "j.journal"
    code, err = await run_cli(*submit_args(path, journal), *cli_flags(sb))
    assert code == 0, err
    await sb.close()
    code, err = await run_cli("wait", str(journal), "--poll", "0.05", "--no-progress")
    assert code == 7, err
    assert len(_error_lines(err)) == 1 and _other_lines(err) == [], err


@pytest.mark.parametrize("where", ["closed port", "no such name"])
async def test_library_unreachable_base_url_raises_at_once(
    where: str, closed_port: int, tmp_path: Path
) -> None:
    """``submit`` raises UnreachableError (stop reason "transport", exit 7) after one
    attempt per chunk it had started; every chunk is pending in the journal."""
    url = f"http://127.0.0.1:{closed_port}/api/v1" if where == "closed port" else NO_SUCH_HOST
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(250)), tmp_path / "j.journal"
    with pytest.raises(bulkjob.UnreachableError) as info:
        await bulkjob.submit_async(
            [str(path)],
            journal=journal,
            base_url=url,
            access_token=TOKEN,
            chunk_size=100,
            concurrency=1,
            max_attempts=10,
        )
    assert info.value.stop_reason == "transport" and info.value.url == url
    rows = journal_rows(journal)
    assert all(row.state is ChunkState.PENDING for row in rows.values())
    assert [row.attempts for row in rows.values()] == [1]  # concurrency 1: one was tried


# -- a proxy refusing the credentials ---------------------------------------------------------


def _wrong_password(proxy: ForwardProxy) -> str:
    return proxy.url.replace(PROXY_PASSWORD, "not-the-password")


async def test_cli_proxy_refusing_credentials_fails_at_once(
    sandbox: SandboxFactory, proxy: ForwardProxy, tmp_path: Path
) -> None:
    """An http:// base URL through a proxy that answers 407 (wrong password): the proxy
    forwarded nothing, so no chunk is of unknown outcome; the run ends at once with one
    line naming the 407, exit 7, every chunk pending."""
    sb = await sandbox()
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(250)), tmp_path / "j.journal"
    args = [*submit_args(path, journal), *cli_flags(sb), "--proxy", _wrong_password(proxy)]
    code, err = await run_cli(*args, "--concurrency", "1")
    assert code == 7, err
    assert len(_error_lines(err)) == 1 and _other_lines(err) == [], err
    assert "407 Proxy Authentication Required" in _error_lines(err)[0]
    assert proxy.refused >= 1 and proxy.forwarded == [] and sb.ledger.requests == 0
    rows = journal_rows(journal)
    assert {row.state for row in rows.values()} == {ChunkState.PENDING}


@pytest.mark.parametrize("first_request", ["status poll", "token mint"])
async def test_library_wait_through_a_proxy_refusing_credentials_raises(
    sandbox: SandboxFactory, proxy: ForwardProxy, tmp_path: Path, first_request: str
) -> None:
    """The idempotent requests (``wait``'s status polls) and the token endpoint meet the 407
    too: ProxyRefusedError (an UnreachableError, exit 7) at the first answer, not retries
    until they run out."""
    sb = await sandbox(finished_after=60.0)
    path, journal = write_ids(tmp_path / "ids.txt", make_ids(50)), tmp_path / "j.journal"
    if first_request == "token mint":
        credentials: dict[str, object] = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    else:
        credentials = {"access_token": TOKEN}
    await bulkjob.submit_async(
        [str(path)],
        journal=journal,
        base_url=sb.base_url,
        token_url=sb.token_url,
        **credentials,  # type: ignore[arg-type]
    )
    with pytest.raises(ProxyRefusedError) as info:
        await bulkjob.wait_async(
            journal,
            base_url=sb.base_url,
            token_url=sb.token_url,
            proxy=_wrong_password(proxy),
            max_attempts=50,
            **credentials,  # type: ignore[arg-type]
        )
    assert isinstance(info.value, bulkjob.UnreachableError)
    assert info.value.exit_code == 7 and "407" in str(info.value)
    assert proxy.refused == 1 and proxy.forwarded == []
