"""The async entry point and its synchronous twin for plain scripts and notebooks.

``submit()`` owns its event loop. Called where a loop is already running in this
thread (a Jupyter cell), it cannot nest ``asyncio.run``; it then runs the whole run on
a private loop in a worker thread and waits for it, so the caller sees the same
blocking call either way. The runner, its session and its limiter live and die on
that one loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import BinaryIO, TypeVar

from . import _lifecycle
from ._config import settings_for_resume
from ._journal import Journal
from ._lifecycle import ResultsSummary, RunStatus
from ._report import RunReport
from ._runner import AmbiguousPolicy, ProgressSink, Runner
from ._settings import Settings

__all__ = [
    "results",
    "results_async",
    "resume",
    "resume_async",
    "run_sync",
    "submit",
    "submit_async",
    "wait",
    "wait_async",
]

T = TypeVar("T")


async def submit_async(
    inputs: Sequence[str],
    settings: Settings | None = None,
    *,
    stdin: BinaryIO | None = None,
    progress: ProgressSink | None = None,
    journal: str | os.PathLike[str] | None = None,
    **changes: object,
) -> RunReport:
    """Submit every valid id of ``inputs`` (paths, or ``"-"`` for stdin) and report.

    ``changes`` override fields of ``settings`` (or of the defaults), e.g.
    ``submit_async(["ids.txt"], access_token=..., max_requests=1000, per_seconds=300)``.
    With ``journal``, the run is recorded there and can be continued with :func:`resume`.
    """
    s = (settings or Settings()).replace(**changes) if changes else (settings or Settings())
    return await Runner(s, inputs, stdin=stdin, progress=progress, journal=journal).run()


async def resume_async(
    journal: str | os.PathLike[str],
    *,
    ambiguous: AmbiguousPolicy = "stop",
    progress: ProgressSink | None = None,
    **changes: object,
) -> RunReport:
    """Continue the run recorded in ``journal``; ``changes`` supply credentials and pacing.

    Credentials also come from the ``INSIDEVIEW_*`` environment variables. Settings that
    shape the chunks cannot change. Chunks whose outcome is unknown stop the run unless
    ``ambiguous`` is ``"resubmit"`` or ``"abandon"``.
    """
    async with _held(journal, "resume", **changes) as (handle, s):
        runner = Runner(
            s,
            handle.inputs(),
            progress=progress,
            journal=handle,
            resume=True,
            ambiguous=ambiguous,
        )
        return await runner.run()


@contextlib.asynccontextmanager
async def _held(
    journal: str | os.PathLike[str], command: str, **changes: object
) -> AsyncIterator[tuple[Journal, Settings]]:
    """The journal opened (and locked) once for a whole call, with the run's settings."""
    handle = await asyncio.to_thread(Journal.open, journal, command)
    try:
        yield handle, settings_for_resume(handle.recorded_settings(), flags=changes)
    finally:
        handle.close_sync()


def submit(
    inputs: Sequence[str],
    settings: Settings | None = None,
    *,
    stdin: BinaryIO | None = None,
    progress: ProgressSink | None = None,
    journal: str | os.PathLike[str] | None = None,
    **changes: object,
) -> RunReport:
    """Blocking twin of :func:`submit_async`; safe to call from a notebook cell."""
    return run_sync(
        lambda: submit_async(
            inputs, settings, stdin=stdin, progress=progress, journal=journal, **changes
        )
    )


def resume(
    journal: str | os.PathLike[str],
    *,
    ambiguous: AmbiguousPolicy = "stop",
    progress: ProgressSink | None = None,
    **changes: object,
) -> RunReport:
    """Blocking twin of :func:`resume_async`."""
    return run_sync(
        lambda: resume_async(journal, ambiguous=ambiguous, progress=progress, **changes)
    )


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine ``make()`` to completion, whether or not a loop is running here."""

    async def main() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    # A loop is running in this thread: nesting is impossible, so use a thread of our own.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="bulkjob") as pool:
        return pool.submit(asyncio.run, main()).result()


async def wait_async(
    journal: str | os.PathLike[str],
    *,
    poll_interval: float | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the last snapshot goes with the error
    **changes: object,
) -> RunStatus:
    """Prove lost answers, then poll the jobs of the run in ``journal`` until all are final."""
    async with _held(journal, "wait", **changes) as (handle, settings):
        return await _lifecycle.wait(handle, settings, poll_interval=poll_interval, timeout=timeout)


def wait(
    journal: str | os.PathLike[str],
    *,
    poll_interval: float | None = None,
    timeout: float | None = None,
    **changes: object,
) -> RunStatus:
    """Blocking twin of :func:`wait_async`."""
    return run_sync(
        lambda: wait_async(journal, poll_interval=poll_interval, timeout=timeout, **changes)
    )


async def results_async(
    journal: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    merge: str | os.PathLike[str] | BinaryIO | None = None,
    keep_parts: bool = True,
    **changes: object,
) -> ResultsSummary:
    """Download the finished jobs' CSVs into ``out_dir`` (resumably); ``merge`` into one.

    ``merge`` is a path or a binary stream (``sys.stdout.buffer``); without
    ``keep_parts`` the per-job files are deleted once the merge is complete.
    """
    into = Path(merge) if isinstance(merge, str | os.PathLike) else merge
    async with _held(journal, "results", **changes) as (handle, settings):
        return await _lifecycle.results(
            handle, settings, Path(out_dir), merge=into, keep_parts=keep_parts
        )


def results(
    journal: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    merge: str | os.PathLike[str] | BinaryIO | None = None,
    keep_parts: bool = True,
    **changes: object,
) -> ResultsSummary:
    """Blocking twin of :func:`results_async`."""
    return run_sync(
        lambda: results_async(journal, out_dir, merge=merge, keep_parts=keep_parts, **changes)
    )
