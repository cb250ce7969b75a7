"""Tests for the sync facade: plain scripts and already-running loops (notebooks)."""

from __future__ import annotations

import asyncio
import io
import signal
import socket
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from bulkjob import Sandbox, SandboxConfig, submit
from bulkjob._sync import run_sync
from tests.conftest import (
    TOKEN,
    SandboxFactory,
    assert_paid_once,
    cli_env,
    journal_rows,
    make_ids,
    parsed_merge,
    wait_until,
)


def _serve_in_thread() -> tuple[Sandbox, threading.Event, threading.Thread]:
    """A sandbox on its own loop in a thread, so the caller's thread has no loop."""
    started, stop = threading.Event(), threading.Event()
    holder: list[Sandbox] = []

    def main() -> None:
        async def serve() -> None:
            async with Sandbox(SandboxConfig()) as sb:
                holder.append(sb)
                started.set()
                await asyncio.to_thread(stop.wait)

        asyncio.run(serve())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    started.wait(10)
    return holder[0], stop, thread


def test_submit_from_a_plain_script(tmp_path: Path) -> None:
    """``submit()`` runs its own loop and returns the report."""
    sb, stop, thread = _serve_in_thread()
    try:
        path = tmp_path / "ids.txt"
        path.write_text("\n".join(make_ids(250)) + "\n")
        report = submit([str(path)], base_url=sb.base_url, access_token=TOKEN, chunk_size=100)
    finally:
        stop.set()
        thread.join(10)
    assert report.ids_submitted == 250 and len(report.jobs) == 3 and report.accounted


def test_submit_reads_credentials_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token in INSIDEVIEW_ACCESS_TOKEN is enough for ``submit()``, as for the CLI."""
    monkeypatch.setenv("INSIDEVIEW_ACCESS_TOKEN", TOKEN)
    sb, stop, thread = _serve_in_thread()
    try:
        path = tmp_path / "ids.txt"
        path.write_text("\n".join(make_ids(150)) + "\n")
        report = submit([str(path)], base_url=sb.base_url, chunk_size=100)
    finally:
        stop.set()
        thread.join(10)
    assert report.ok and report.ids_submitted == 150
    assert sb.ledger.ids_accepted == 150


async def test_submit_while_a_loop_is_running(tmp_path: Path) -> None:
    """Called from inside a running loop (a notebook cell), ``submit()`` still works."""
    async with Sandbox(SandboxConfig()) as sb:
        path = tmp_path / "ids.txt"
        path.write_text("\n".join(make_ids(50)) + "\n")
        # The blocking call runs in a helper thread with its own loop; this loop must keep
        # serving the sandbox meanwhile, so the blocking call itself goes to a thread here.
        report = await asyncio.to_thread(
            submit, [str(path)], base_url=sb.base_url, access_token=TOKEN, chunk_size=20
        )
        assert report.ids_submitted == 50
        assert sb.ledger.ids_accepted == 50


async def test_run_sync_inside_a_running_loop_uses_a_private_loop() -> None:
    """``run_sync`` does not nest in the caller's loop: the coroutine runs on another loop."""
    outer = asyncio.get_running_loop()

    async def where() -> bool:
        return asyncio.get_running_loop() is outer

    assert run_sync(where) is False


def test_resume_wait_results_from_a_script(tmp_path: Path) -> None:
    """The Python API covers a whole backfill: submit, resume, wait, results."""
    from bulkjob import results, resume, wait

    sb, stop, thread = _serve_in_thread()
    try:
        sb.config.quota = 120
        sb.config.finished_after = 0.05
        path = tmp_path / "ids.txt"
        values = make_ids(250)
        path.write_text("\n".join(values) + "\n")
        journal = tmp_path / "run.journal"
        common = {"base_url": sb.base_url, "access_token": TOKEN, "queue_poll_interval": 0.05}
        first = submit([str(path)], chunk_size=100, journal=journal, **common)
        assert first.stop_reason == "quota"
        sb.add_quota(1000)
        second = resume(journal, **common)
        assert second.ids_submitted == 250
        assert wait(journal, **common).all_final
        got = results(journal, tmp_path / "out", merge=tmp_path / "all.csv", **common)
    finally:
        stop.set()
        thread.join(10)
    merged = (tmp_path / "all.csv").read_bytes()
    assert got.bytes_merged == len(merged)
    assert len(merged.splitlines()) == 1 + 250
    assert sb.ledger.duplicates == 0


def test_results_merge_into_a_stream_without_parts(tmp_path: Path) -> None:
    """``results`` passes a binary stream and ``keep_parts=False`` through to the merge."""
    from bulkjob import results, wait

    sb, stop, thread = _serve_in_thread()
    try:
        sb.config.finished_after = 0.05
        path = tmp_path / "ids.txt"
        path.write_text("\n".join(make_ids(150)) + "\n")
        journal = tmp_path / "run.journal"
        common = {"base_url": sb.base_url, "access_token": TOKEN, "queue_poll_interval": 0.05}
        assert submit([str(path)], chunk_size=100, journal=journal, **common).ok
        assert wait(journal, **common).all_final
        expected = parsed_merge(results(journal, tmp_path / "out", **common).files)
        stream = io.BytesIO()
        got = results(journal, tmp_path / "out", merge=stream, keep_parts=False, **common)
    finally:
        stop.set()
        thread.join(10)
    assert stream.getvalue() == expected
    assert got.merged is None
    assert got.removed == got.files
    assert not any(p.exists() for p in got.files)


async def test_notebook_pattern_sandbox_running_in_a_thread(tmp_path: Path) -> None:
    """The notebook recipe, inside a running loop: ``with Sandbox.running()`` and a blocking
    ``submit()`` in the same cell complete, every id accepted once."""
    asyncio.get_running_loop()  # a loop is running here, as in a notebook cell
    path = tmp_path / "ids.txt"
    ids = make_ids(250)
    path.write_text("\n".join(ids) + "\n")
    with Sandbox.running() as sb:
        report = submit([str(path)], base_url=sb.base_url, access_token=sb.token, chunk_size=100)
        assert sb.ledger.ids_accepted == 250  # read from this thread while it serves
        assert_paid_once(sb, ids)
    assert report.ids_submitted == 250 and len(report.jobs) == 3 and report.accounted


def test_sandbox_running_stops_on_exit_and_on_error() -> None:
    """The block's end stops the server, an exception in it too (and goes on up)."""
    port = 0

    def fail_inside() -> None:
        nonlocal port
        with Sandbox.running() as sb:
            port = sb.port
            ask = urllib.request.Request(f"{sb.base_url}/admin/usage")
            ask.add_header("accessToken", sb.token)
            with urllib.request.urlopen(ask, timeout=30) as answer:  # it serves
                assert answer.status == 200
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        fail_inside()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_sandbox_running_on_a_taken_port_raises_here() -> None:
    """A sandbox that cannot listen raises its error in the caller's thread."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="in use"), Sandbox.running(port=port):
            pass


#: A notebook cell in a real process: a blocking submit inside a running loop, as
#: ``asyncio.run`` (its own SIGINT handler) or a kernel's ``run_until_complete`` (Python's)
#: runs it. It prints how the call ended.
_CELL = """
import asyncio, sys
import bulkjob

async def cell():
    try:
        bulkjob.submit([sys.argv[1]], base_url=sys.argv[2], access_token=sys.argv[3],
                       chunk_size=10, concurrency=1, journal=sys.argv[4])
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        raise
    print("returned", flush=True)

if sys.argv[5] == "asyncio.run":
    asyncio.run(cell())
else:
    asyncio.new_event_loop().run_until_complete(cell())
"""


@pytest.mark.parametrize("host", ["asyncio.run", "run_until_complete"])
async def test_interrupt_stops_a_blocking_submit_inside_a_running_loop(
    sandbox: SandboxFactory, tmp_path: Path, host: str
) -> None:
    """Ctrl-C ("interrupt kernel") during a blocking ``submit()`` in a running loop ends the
    call with KeyboardInterrupt while the run is young, not when the whole run is done: the
    run's task on the worker loop is cancelled and the interrupt re-raised."""
    sb = await sandbox(latency=0.2)
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(make_ids(3000)) + "\n")  # 300 requests of 0.2 s, one at a time
    journal = tmp_path / "run.journal"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CELL,
        str(path),
        sb.base_url,
        TOKEN,
        str(journal),
        host,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    try:
        async with asyncio.timeout(30):
            await wait_until(lambda: sb.ledger.ids_accepted > 0)
            proc.send_signal(signal.SIGINT)
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert out.decode().split() == ["interrupted"], err.decode()
    assert "KeyboardInterrupt" in err.decode()
    assert sb.ledger.ids_accepted <= 300  # a few requests, not the run's 3,000 ids
    assert journal_rows(journal)  # the journal opens again: closed, consistent, resumable
