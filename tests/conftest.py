"""Shared fixtures: sandbox servers on ephemeral ports, id files, fast settings."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import csv
import io
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hypothesis
import pytest

from bulkjob._journal import ChunkRow, Journal
from bulkjob._settings import Settings
from bulkjob.sandbox._server import Sandbox, SandboxConfig

from .redis_server import start_server

#: The fixed token every default sandbox accepts, and its client credentials.
TOKEN = "sandbox-token"
CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret"

SandboxFactory = Callable[..., Awaitable[Sandbox]]
IdsWriter = Callable[..., Path]

# Property tests check results, never speed: Hypothesis's 200 ms per example is no bound on
# a CI machine running three test suites on two cores (one example once took 557 ms).
hypothesis.settings.register_profile("bulkjob", deadline=None)
hypothesis.settings.load_profile("bulkjob")


def make_ids(n: int, prefix: str = "id", start: int = 0) -> list[str]:
    """``n`` distinct, deterministic ids of the documented form: 64 chars of [A-Za-z0-9_-]."""
    width = 63 - len(prefix)
    return [f"{prefix}_{i:0{width}d}" for i in range(start, start + n)]


def settings_for(sandbox: Sandbox, **kw: object) -> Settings:
    """Settings aimed at ``sandbox`` with tiny windows and backoffs; ``kw`` overrides.

    The fixed sandbox token is used unless client credentials are given.
    """
    fast: dict[str, object] = {
        "base_url": sandbox.base_url,
        "token_url": sandbox.token_url,
        "max_requests": 10_000,
        "per_seconds": 1.0,
        "concurrency": 4,
        "chunk_size": 100,
        "max_attempts": 8,
        "retry_max_time": 10.0,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "throttle_initial_delay": 0.05,
        "request_timeout": 5.0,
        "connect_timeout": 2.0,
        "drain_timeout": 2.0,
        "reconcile_grace": 0.2,
        "proof_poll_interval": 0.05,
    }
    if "client_id" not in kw:
        fast["access_token"] = TOKEN
    fast.update(kw)
    return Settings(**fast)  # type: ignore[arg-type]


async def wait_until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until ``condition()`` holds (the test's own timeout bounds it)."""
    # The sandbox ledger offers no event to wait on: polling it is the only way.
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.002)


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxFactory]:
    """A factory: ``await sandbox(**SandboxConfig fields)`` starts one on 127.0.0.1:0."""
    started: list[Sandbox] = []

    async def start(**config: object) -> Sandbox:
        server = Sandbox(SandboxConfig(**config))  # type: ignore[arg-type]
        await server.start("127.0.0.1", 0)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis (or Valkey) server on a free 127.0.0.1 port for the whole session:
    ``redis://127.0.0.1:PORT/0``. Without a server binary the test fails, saying how to
    install one (see tests/redis_server.py)."""
    try:
        server = start_server(tmp_path_factory.mktemp("redis"))
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def ids(tmp_path: Path) -> IdsWriter:
    """A writer: ``ids(lines_or_count, name=...)`` writes an id file in tmp_path."""

    def write(lines: int | Iterable[str], name: str = "ids.txt") -> Path:
        values = make_ids(lines) if isinstance(lines, int) else list(lines)
        path = tmp_path / name
        path.write_text("".join(f"{v}\n" for v in values), encoding="utf-8")
        return path

    return write


#: Settings for CLI processes under test: short grace, polls and backoffs (env, as a user
#: would set them).
FAST_ENV = {
    "BULKJOB_RECONCILE_GRACE": "0.3",
    "BULKJOB_PROOF_POLL_INTERVAL": "0.05",
    "BULKJOB_BACKOFF_INITIAL": "0.01",
    "BULKJOB_BACKOFF_MAX": "0.05",
    "BULKJOB_THROTTLE_INITIAL_DELAY": "0.05",
    "BULKJOB_DRAIN_TIMEOUT": "2",
    "BULKJOB_REQUEST_TIMEOUT": "5",
    "BULKJOB_MAX_ATTEMPTS": "12",
}


#: Proxy variables: the tests talk to 127.0.0.1 directly unless a test sets its own.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ws_proxy", "wss_proxy")


def _is_proxy_variable(name: str) -> bool:
    return name.lower() in PROXY_VARIABLES


@pytest.fixture(autouse=True)
def _own_state_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each test's throttle stores (``throttle_store = "local"``, the default) live in a
    state directory of its own, for it and the CLI processes it starts: tests (and suites
    running side by side) never share an account's window by accident."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(autouse=True)
def _no_ambient_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy set for the machine (CI behind a corporate proxy) must not carry the tests'
    requests to 127.0.0.1: the session trusts the environment's proxy variables."""
    for name in [n for n in os.environ if _is_proxy_variable(n)]:
        monkeypatch.delenv(name)


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI process: no stray settings or proxies, the sandbox token,
    FAST_ENV."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INSIDEVIEW_", "BULKJOB_")) and not _is_proxy_variable(k)
    }
    env["INSIDEVIEW_ACCESS_TOKEN"] = TOKEN
    env.update(FAST_ENV)
    env.update(extra)
    return env


def submit_args(path: Path, journal: Path, *more: str, chunk_size: int = 100) -> list[str]:
    """``submit PATH --journal JOURNAL --chunk-size N MORE...``."""
    return ["submit", str(path), "--journal", str(journal), "--chunk-size", str(chunk_size), *more]


def cli_flags(
    sb: Sandbox, *, max_requests: int = 1000, per: float = 1.0, concurrency: int = 4
) -> list[str]:
    """Flags aiming a CLI process at ``sb``."""
    return [
        "--base-url",
        sb.base_url,
        "--token-url",
        sb.token_url,
        "--max-requests",
        str(max_requests),
        "--per",
        str(per),
        "--concurrency",
        str(concurrency),
        "--no-progress",
    ]


async def start_cli(
    *args: str, env: dict[str, str] | None = None, **kw: Any
) -> asyncio.subprocess.Process:
    """Start ``python -m bulkjob ARGS`` as a real process (stderr piped)."""
    kw.setdefault("stdin", asyncio.subprocess.DEVNULL)
    kw.setdefault("stdout", asyncio.subprocess.PIPE)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bulkjob",
        *args,
        stderr=asyncio.subprocess.PIPE,
        env=env or cli_env(),
        **kw,
    )


async def finish_cli(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    """Wait for a CLI process (90 s at most, then it is killed); (exit code, stderr)."""
    try:
        async with asyncio.timeout(90):
            _, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def run_cli(*args: str, env: dict[str, str] | None = None, **kw: Any) -> tuple[int, str]:
    """Run the CLI to its end; (exit code, stderr)."""
    return await finish_cli(await start_cli(*args, env=env, **kw))


def write_ids(path: Path, values: Iterable[str]) -> Path:
    """An id file holding ``values``, one per line."""
    path.write_text("".join(f"{v}\n" for v in values), encoding="utf-8")
    return path


def assert_paid_once(sb: Sandbox, values: Iterable[str]) -> None:
    """The sandbox's own ledger: every id of ``values`` accepted exactly once, nothing else."""
    wanted = list(values)
    assert sb.ledger.duplicates == 0, f"{sb.ledger.duplicates} ids paid twice"
    missing = set(wanted) - set(sb.ledger.accepted_ids)
    assert not missing, f"{len(missing)} ids never paid"
    assert set(sb.ledger.accepted_ids) == set(wanted)
    assert sb.ledger.ids_accepted == len(wanted)


def journal_rows(path: Path) -> dict[int, ChunkRow]:
    """seq -> row, read through a read-only handle that is closed again."""
    with Journal.open(path, readonly=True) as journal:
        return {row.seq: row for row in journal.rows()}


def edit_journal(path: Path, *statements: str) -> list[tuple[object, ...]]:
    """Run SQL on a journal file directly (a test's crash or tampering); the last result."""
    db = sqlite3.connect(path)
    try:
        with db:
            rows: list[tuple[object, ...]] = []
            for sql in statements:
                rows = db.execute(sql).fetchall()
        return rows
    finally:
        db.close()


async def wait_for_lock(journal: Path) -> None:
    """Until a process holds ``journal`` (its lock file names it)."""
    lock = journal.with_name(journal.name + ".lock")
    while not (lock.exists() and b"pid" in lock.read_bytes()):  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def kill_9(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL, unless the process already ended on its own (a race the test may lose)."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGKILL)


def parsed_merge(paths: Sequence[Path], line_ends: Sequence[str] | None = None) -> bytes:
    """The merge done with the csv module: the reference the byte merge must equal.

    Every file is parsed, its header checked against the first's, and its records written
    again with its own line end (``line_ends``, one per file; ``\n`` by default). The first
    file's byte order mark is kept; an empty file is skipped. Where the last file that
    adds records does not end with a line end, neither does the merge.
    """
    out = io.StringIO()
    header: list[str] | None = None
    bom = False
    last_end, ends_open = "\n", False
    for i, path in enumerate(paths):
        data = path.read_bytes()
        text = data.decode("utf-8-sig")
        if not text:
            continue
        records = list(csv.reader(io.StringIO(text, newline="")))
        end = line_ends[i] if line_ends is not None else "\n"
        writer = csv.writer(out, lineterminator=end)
        if header is None:
            header, bom = records[0], data.startswith(codecs.BOM_UTF8)
            writer.writerow(header)
        else:
            assert records[0] == header, f"{path.name}: another header"
        writer.writerows(records[1:])
        if header is records[0] or len(records) > 1:
            last_end, ends_open = end, not data.endswith(b"\n")
    merged = out.getvalue()
    if ends_open:
        merged = merged[: -len(last_end)]
    return (codecs.BOM_UTF8 if bom else b"") + merged.encode()
