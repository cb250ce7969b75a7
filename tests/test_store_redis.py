"""The Redis window store, against a real server (the ``redis_url`` fixture starts one).

Real OS processes share one account's window through it: store-level hammering, two
``bulkjob submit`` processes standing for two hosts, a 429 in one process pausing
another, and a ``kill -9`` of a holder of leases.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bulkjob._errors import ConfigError, ExitCode
from bulkjob._logging import redact
from bulkjob._settings import REDIS_MISSING, Settings
from bulkjob._store_redis import RedisStore, keys_of
from bulkjob._window_store import MemoryStore, StoreParams, account_key, open_store

from .conftest import (
    TOKEN,
    SandboxFactory,
    assert_paid_once,
    cli_env,
    cli_flags,
    finish_cli,
    kill_9,
    make_ids,
    run_cli,
    start_cli,
    submit_args,
    write_ids,
)
from .store_hammer import INITIAL_DELAY, MARGIN, hammer, store_for

ROOT = Path(__file__).resolve().parent.parent


def _account() -> str:
    """A fresh account per test: the session's server is shared."""
    return uuid.uuid4().hex


async def _hammer_proc(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.store_hammer",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=cli_env(),
    )


def _max_in_any_window(times: list[list[float]], per: float) -> int:
    """The most slots whose [acquired, released] meets one window of ``per`` seconds.

    A slot meets the window [t, t + per) iff t lies in (acquired - per, released]: the
    most such intervals over one point. The recorded times lie inside the true ones
    (taken after the acquire returned, before the release), so this never counts more
    than the truth, and the store's guarantee bounds the truth by ``max_requests``.
    """
    events = sorted(
        [(a - per, 1) for a, _ in times] + [(r, -1) for _, r in times],
        # At a tie an end goes first: (a - per, r] holds r, and another slot's interval
        # starting at r does not: the two never hold one point together.
        key=lambda e: (e[0], e[1]),
    )
    most = held = 0
    for _, step in events:
        held += step
        most = max(most, held)
    return most


# -- the store's guarantee ----------------------------------------------------------------


async def test_never_more_than_n_across_processes_and_clients(
    redis_url: str, tmp_path: Path
) -> None:
    """Two OS processes and two in-process clients (several tasks each) on one account:
    no window of per_seconds ever meets more than max_requests slots, and every slot
    taken is given back."""
    account, n, per = _account(), 6, 0.25
    args = [redis_url, account, str(n), str(per)]
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [await _hammer_proc(*args, "hammer", "4", "10", str(out)) for out in outs]
    for proc in procs:
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
    stores = [store_for(redis_url, account, n, per, 30.0) for _ in range(2)]
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    local = await asyncio.gather(*(hammer(store, per, 3, 10) for store in stores))
    for proc in procs:
        assert await proc.wait() == 0
    times = [t for out in outs for t in json.loads(out.read_text())]
    times += [t for ts in local for t in ts]
    assert len(times) == 2 * 4 * 10 + 2 * 3 * 10
    assert _max_in_any_window(times, per) <= n
    state = await stores[0].state()
    assert state.in_flight == 0
    assert state.holders == ()
    for store in stores:
        await store.close()


def test_the_window_check_counts_what_it_should() -> None:
    """The check above is not vacuous: n + 1 slots inside one window are seen as such,
    slots a full window apart are not."""
    per = 1.0
    assert _max_in_any_window([[0.0, 0.1], [0.5, 0.6], [1.05, 1.1]], per) == 3
    assert _max_in_any_window([[0.0, 0.1], [1.2, 1.3]], per) == 1


# -- leases ---------------------------------------------------------------------------------


async def test_a_killed_holders_leases_lapse_and_count_from_then(redis_url: str) -> None:
    """kill -9 of a process holding every slot: its leases lapse, each then counts as a
    completion at its expiry (so for one more window), and the account goes on."""
    account, n, per, lease = _account(), 3, 3.0, 1.0
    proc = await _hammer_proc(redis_url, account, str(n), str(per), "hold", str(n), str(lease))
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"held\n"
    store = store_for(redis_url, account, n, per, 30.0)
    held = await store.state()
    assert held.in_flight == n
    assert [(h.pid, count) for h, count in held.holders] == [(proc.pid, n)]
    kill_9(proc)
    await proc.wait()
    waits = []
    slot, wait = await store.acquire()
    while slot is None:
        waits.append(wait)
        await asyncio.sleep(0.05 if wait == float("inf") else wait)
        slot, wait = await store.acquire()
    # Lapsed, the dead slots were completions still inside the window: a finite wait
    # for them to leave it, not a slot handed out at once.
    assert any(w != float("inf") for w in waits)
    after = await store.state()
    assert [(h.pid, count) for h, count in after.holders] == [(os.getpid(), 1)]
    await store.release(slot, reset_backoff=False)
    await store.close()


async def test_leases_of_a_live_holder_are_renewed(redis_url: str) -> None:
    """A live holder keeps its slots past several lease lengths: its renewer runs."""
    account, lease = _account(), 1.0
    holder = store_for(redis_url, account, 2, 0.2, lease)
    other = store_for(redis_url, account, 2, 0.2, lease)
    slots = [(await holder.acquire())[0] for _ in range(2)]
    assert None not in slots
    for _ in range(4):  # four lease lengths
        await asyncio.sleep(lease)
        state = await other.state()
        assert state.in_flight == 2
        assert (await other.acquire())[0] is None
    for slot in slots:
        assert slot is not None
        await holder.release(slot, reset_backoff=False)
    await holder.close()
    assert (await other.state()).in_flight == 0
    await other.close()


async def test_close_counts_this_process_slots_as_completed(redis_url: str) -> None:
    """close(): the slots still held are completions from now, not in flight."""
    account = _account()
    store = store_for(redis_url, account, 5, 10.0, 30.0)
    for _ in range(3):
        assert (await store.acquire())[0] is not None
    await store.close()
    other = store_for(redis_url, account, 5, 10.0, 30.0)
    state = await other.state()
    assert (state.in_flight, state.recent) == (0, 3)
    await other.close()


async def test_keys_hold_the_account_hash_only_and_expire(redis_url: str) -> None:
    """Keys are bulkjob:{hash}:..., every one with a TTL of a few windows; nothing in
    them is a secret."""
    settings = Settings(access_token="a-secret-token-value", throttle_store=redis_url)
    store = open_store(settings)
    assert isinstance(store, RedisStore)
    names = keys_of(account_key(settings))
    assert all(name.startswith(f"bulkjob:{{{account_key(settings)}}}:") for name in names)
    longest = 3 * settings.window + settings.slot_lease + 2
    client = aioredis.Redis.from_url(redis_url)
    try:
        slot, _ = await store.acquire()
        assert slot is not None
        assert 0 < await client.ttl(names[0]) <= longest  # in flight
        await store.throttled(None)
        await store.release(slot, reset_backoff=False)
        assert await client.exists(names[0]) == 0  # nothing in flight: no key
        for name in names[1:3]:  # the completions; the pause and backoff
            assert 0 < await client.ttl(name) <= longest
        await store.register_job("job-1", "digest", "run-1")  # known jobs: kept for days
        assert 86_400 < await client.ttl(names[3]) <= 30 * 86_400
        dumped = [await client.dump(name) or b"" for name in names]
        assert all(b"a-secret-token-value" not in d for d in dumped)
    finally:
        await client.aclose()
        await store.close()


# -- the 429 pause --------------------------------------------------------------------------


async def test_a_429_in_one_process_pauses_another(redis_url: str) -> None:
    """Another process's 429s (two without Retry-After, one with 30 s) pause this one,
    and the backoff step they doubled is this one's too."""
    account = _account()
    proc = await _hammer_proc(redis_url, account, "5", "1.0", "throttled", "none", "none", "30")
    assert await proc.wait() == 0
    store = store_for(redis_url, account, 5, 1.0, 30.0)
    slot, wait = await store.acquire()
    assert slot is None
    assert 0 < wait <= 30
    state = await store.state()
    assert 0 < state.paused_for <= 30
    assert state.last_429_ago is not None
    assert state.next_delay == pytest.approx(4 * INITIAL_DELAY)
    await store.close()


async def test_a_release_after_success_resets_the_shared_backoff(redis_url: str) -> None:
    """release(reset_backoff=True) after a 429 starts the backoff anew for every process."""
    account = _account()
    one = store_for(redis_url, account, 5, 1.0, 30.0)
    two = store_for(redis_url, account, 5, 1.0, 30.0)
    delay, added = await one.throttled(None)
    assert delay == pytest.approx(INITIAL_DELAY)
    assert added > 0
    assert (await two.state()).next_delay == pytest.approx(2 * INITIAL_DELAY)
    slot, wait = await two.acquire()
    while slot is None:
        await asyncio.sleep(wait)
        slot, wait = await two.acquire()
    await two.release(slot, reset_backoff=True)
    assert (await one.state()).next_delay == pytest.approx(INITIAL_DELAY)
    await one.close()
    await two.close()


async def test_same_semantics_as_memory_for_one_client(redis_url: str) -> None:
    """One client, no time passing to speak of: the same answers as MemoryStore."""
    params = StoreParams(3, 60.0 * (1 + MARGIN), INITIAL_DELAY, 60.0)
    memory, store = MemoryStore(params), RedisStore(params, _account(), redis_url, lease=30.0)
    for s in (memory, store):
        got = [await s.acquire() for _ in range(4)]
        assert [slot is not None for slot, _ in got] == [True, True, True, False]
        assert got[3][1] == float("inf")
        first = got[0][0]
        assert first is not None
        await s.release(first, reset_backoff=False)
        slot, wait = await s.acquire()
        assert slot is None
        assert 59 < wait <= params.window
        state = await s.state()
        assert (state.recent, state.in_flight) == (1, 2)
        await s.close()


# -- configuration and failures -------------------------------------------------------------


def test_the_url_password_is_registered_for_redaction() -> None:
    """A password in the store's URL is scrubbed from logs once the settings are made."""
    Settings(throttle_store="redis://:pw-9f8e7d@127.0.0.1:6379/0")
    assert "pw-9f8e7d" not in redact("connecting with pw-9f8e7d")


def test_without_the_redis_package_settings_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'bulkjob\[redis\]'"):
        Settings(throttle_store="redis://127.0.0.1:6379/0")
    Settings(throttle_store="local")  # the other stores need nothing


async def test_cli_without_the_redis_package_exits_2(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """bulkjob submit --throttle-store redis://... where redis cannot be imported: one
    error line naming the extra, exit 2, nothing sent."""
    sb = await sandbox()
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['redis'] = None\n")
    path = write_ids(tmp_path / "ids.txt", make_ids(100))
    args = submit_args(path, tmp_path / "run.journal", *cli_flags(sb))
    store = ["--throttle-store", "redis://:pw-1a2b3c@127.0.0.1:6379/0"]
    code, err = await run_cli(*args, *store, env=cli_env(PYTHONPATH=str(hide)))
    assert code == ExitCode.USAGE
    assert err.strip().splitlines() == [f"error: {REDIS_MISSING}"]
    assert sb.ledger.requests == 0


def _closed_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_cli_with_no_redis_at_the_url_exits_2_naming_it(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Nothing listening at the store's URL: one error line naming host:port (never the
    password), exit 2, before the journal exists: nothing sent, no file left behind."""
    sb = await sandbox()
    port = _closed_port()
    path = write_ids(tmp_path / "ids.txt", make_ids(100))
    args = submit_args(path, tmp_path / "run.journal", *cli_flags(sb))
    url = f"redis://:pw-4d5e6f@127.0.0.1:{port}/0"
    code, err = await run_cli(*args, "--throttle-store", url, cwd=tmp_path)
    assert code == ExitCode.USAGE, err
    assert err.strip().splitlines() == [
        f"error: throttle_store: cannot reach Redis at 127.0.0.1:{port}/0: "
        + err.split(f"127.0.0.1:{port}/0: ", 1)[1].strip()
    ]
    assert "(--throttle-store local keeps the window on this host)" in err
    assert "pw-4d5e6f" not in err
    assert os.listdir(tmp_path) == ["ids.txt"]  # no journal
    assert sb.ledger.requests == 0


async def test_cli_without_a_journal_flag_leaves_no_default_journal(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """The default journal (./bulkjob-<time>.journal) and the stdin copy beside it are not
    created either when the store cannot be reached."""
    sb = await sandbox()
    url = f"redis://127.0.0.1:{_closed_port()}/0"
    proc = await start_cli(
        "submit", "-", *cli_flags(sb), "--throttle-store", url, cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write("".join(f"{v}\n" for v in make_ids(10)).encode())
    proc.stdin.close()
    code, err = await finish_cli(proc)
    assert code == ExitCode.USAGE and len(err.strip().splitlines()) == 1, err
    assert os.listdir(tmp_path) == []
    assert sb.ledger.requests == 0


async def test_a_run_of_the_library_probes_the_store_before_its_journal(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """bulkjob.submit_async(..., journal=PATH) with no Redis at the URL: ConfigError, and
    the journal was never created."""
    import bulkjob

    sb = await sandbox()
    path = write_ids(tmp_path / "ids.txt", make_ids(100))
    journal = tmp_path / "run.journal"
    with pytest.raises(ConfigError, match=r"cannot reach Redis at 127\.0\.0\.1:"):
        await bulkjob.submit_async(
            [str(path)],
            journal=journal,
            access_token=TOKEN,
            base_url=sb.base_url,
            throttle_store=f"redis://127.0.0.1:{_closed_port()}/0",
        )
    assert not journal.exists()
    assert sb.ledger.requests == 0


async def test_open_pings_and_loads_every_script(redis_url: str) -> None:
    """open() on a live server loads every script (so a server that cannot run Lua
    fails there), and is idempotent."""
    admin = aioredis.Redis.from_url(redis_url)
    try:
        await admin.script_flush()
        store = store_for(redis_url, _account(), 10, 1.0, 30.0)
        try:
            await store.open()
            await store.open()
            shas = [script.sha for script in store._scripts]
            assert len(set(shas)) == len(store._scripts)
            assert await admin.script_exists(*shas) == [True] * len(shas)
            slot, _ = await store.acquire()
            assert slot is not None
            await store.release(slot, reset_backoff=True)
        finally:
            await store.close()
    finally:
        await admin.aclose()


async def test_open_of_an_unreachable_server_is_a_config_error() -> None:
    """open() against a closed port: the ConfigError a first acquire would give, now."""
    port = _closed_port()
    store = store_for(f"redis://127.0.0.1:{port}/0", _account(), 10, 1.0, 30.0)
    with pytest.raises(ConfigError, match=rf"cannot reach Redis at 127\.0\.0\.1:{port}/0"):
        await store.open()
    await store.close()


# -- end to end: CLI processes sharing one window -------------------------------------------


def _host_env(tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    """The environment of a process standing for its own host: its own HOME and state."""
    home = tmp_path / name
    (home / "state").mkdir(parents=True)
    return cli_env(HOME=str(home), XDG_STATE_HOME=str(home / "state"), **extra)


@pytest.mark.slow
async def test_two_hosts_share_the_window_through_redis(
    redis_url: str, sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """Two bulkjob submit processes (two "hosts": own HOME, own state directory), each
    given the account's whole budget, against a server that locks the account out for a
    window after one request too many: no 429, every id paid once."""
    sb = await sandbox(throttle_requests=10, throttle_window=1.0, latency=0.01)
    flags = [*cli_flags(sb, max_requests=10), "--throttle-store", redis_url]
    account = ["--account", _account()]
    values = {name: make_ids(1500, prefix=name) for name in ("hosta", "hostb")}
    procs = [
        await start_cli(
            *submit_args(write_ids(tmp_path / f"{name}.txt", ids), tmp_path / f"{name}.j"),
            *flags,
            *account,
            env=_host_env(tmp_path, name),
        )
        for name, ids in values.items()
    ]
    for proc in procs:
        code, err = await finish_cli(proc)
        assert code == 0, err
    assert sb.ledger.throttled == 0
    assert_paid_once(sb, values["hosta"] + values["hostb"])


@pytest.mark.slow
async def test_kill_9_of_a_lease_holder_then_the_next_run_finishes(
    redis_url: str, sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """A submit killed with -9 while its requests hold leases (2 s): the resume takes
    the account's window over once they lapse, with no 429, every id paid once."""
    sb = await sandbox(throttle_requests=10, throttle_window=1.0, latency=0.3)
    account = _account()
    flags = [
        *cli_flags(sb, max_requests=10),
        *("--throttle-store", redis_url, "--slot-lease", "2", "--account", account),
    ]
    values = make_ids(3000)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "run.j"
    env = _host_env(tmp_path, "host")
    proc = await start_cli(*submit_args(path, journal), *flags, env=env)
    watcher = open_store(
        Settings(
            access_token=TOKEN,
            account=account,
            throttle_store=redis_url,
            per_seconds=1.0,
            base_url=sb.base_url,
        )
    )
    # Killed while it holds slots in Redis (the sandbox answers after 0.3 s).
    async with asyncio.timeout(60):
        # Redis offers no event for it: polling the store is the way.
        while not any(h.pid == proc.pid for h, _ in (await watcher.state()).holders):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    kill_9(proc)
    await proc.wait()
    code, err = await finish_cli(await start_cli("resume", str(journal), *flags, env=env))
    assert code == 0, err
    assert sb.ledger.throttled == 0
    assert_paid_once(sb, values)
    state = await watcher.state()
    assert state.in_flight == 0
    await watcher.close()


async def test_registered_jobs_are_shared_through_redis(redis_url: str) -> None:
    """A job one process registered is known to another store on the same account."""
    account = f"registry-{uuid.uuid4().hex}"
    first = store_for(redis_url, account, 5, 1.0, 30.0)
    second = store_for(redis_url, account, 5, 1.0, 30.0)
    try:
        await first.register_job("job-r1", "digest", "run-x")
        assert await second.registered(["job-r1", "job-r2"]) == {"job-r1": "run-x"}
        assert await second.registered([]) == {}
    finally:
        await first.close()
        await second.close()


# -- the queue book -------------------------------------------------------------------------


async def test_a_queue_change_that_changes_nothing_writes_nothing(redis_url: str) -> None:
    """An ask for a place while no limit is known (every send of a run that meets none) is
    answered from one read: the book is not written, so runs cannot conflict over it.
    A change that writes still does, and a read leaves the book as it was."""
    from bulkjob import _queue_book as book

    params = StoreParams(10, 1.0, INITIAL_DELAY, 60.0)
    account = _account()
    store = RedisStore(params, account, redis_url, lease=30.0)
    client = aioredis.Redis.from_url(redis_url)
    key = keys_of(account)[4]

    def take(b: book.Book, now: float, alive: book.Alive) -> book.QueueView:
        return book.take(b, "run-a", store.holder, None, now, alive)

    try:
        view = await store.queue(take)
        assert view.granted and view.place is None and view.limit is None
        assert await client.exists(key) == 0, "a grant with no limit known wrote the book"
        await store.queue(lambda b, now, alive: book.learned(b, 2, 2, "message"))
        written = await client.get(key)
        assert json.loads(written)["limit"] == 2
        assert await store.queue(lambda b, now, alive: book.waiting(b, "run-a", now)) == 0
        assert await client.get(key) == written, "a look at the book rewrote it"
        view = await store.queue(take)  # a limit is known: the place is counted, written
        assert view.granted and view.place in json.loads(await client.get(key))["places"]
    finally:
        await store.close()
        await client.aclose()


async def test_a_holder_of_places_stays_alive_in_the_book_past_its_lease(redis_url: str) -> None:
    """A process holding places and asking for nothing that writes is still renewed in the
    book (its renewer writes when due), so another run never takes its places for orphans."""
    from bulkjob import _queue_book as book

    params = StoreParams(10, 1.0, INITIAL_DELAY, 60.0)
    account = _account()
    lease = 0.6
    holder = RedisStore(params, account, redis_url, lease=lease)
    other = RedisStore(params, account, redis_url, lease=lease)
    other.holder = "another-host|1|1"  # as another host's process would be named
    try:
        await holder.queue(lambda b, now, alive: book.learned(b, 2, 2, "message"))
        view = await holder.queue(
            lambda b, now, alive: book.take(b, "run-a", holder.holder, None, now, alive)
        )
        assert view.place is not None
        await asyncio.sleep(3 * lease)  # the renewer's only: nothing else of the holder
        seen = await other.queue(
            lambda b, now, alive: book.take(b, "run-b", other.holder, None, now, alive)
        )
        assert seen.orphans == (), "a live holder's places were taken for orphans"
        assert seen.taken == 2  # its place, and the one just granted to run-b
    finally:
        await holder.close()
        await other.close()
