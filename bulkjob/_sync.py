"""The async entry points and their synchronous twins for plain scripts and notebooks.

Every entry point takes ``config=`` and the settings as typed keywords
(``**values: Unpack[SettingsValues]``) and builds its settings through
:func:`~bulkjob._config.load_settings`, the one path the CLI uses too: values >
environment > config file (> the journal's record, for a run that exists) > default.

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
import dataclasses
import functools
import os
import signal
import threading
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar, Unpack

from . import _lifecycle
from ._config import load_settings
from ._errors import ConfigError
from ._ids import IdSpool, spool_sync
from ._ids_journal import check_given, spool_place
from ._journal import Journal
from ._lifecycle import ResultsSummary, RunStatus
from ._plan import Plan
from ._plan import plan as _plan
from ._report import RunReport
from ._runner import AmbiguousPolicy, ProgressSink, Runner
from ._settings import Settings, SettingsValues

__all__ = [
    "plan",
    "plan_async",
    "results",
    "results_async",
    "resume",
    "resume_async",
    "run_sync",
    "settings_for_call",
    "submit",
    "submit_async",
    "wait",
    "wait_async",
]

T = TypeVar("T")


async def submit_async(
    inputs: Sequence[str] = (),
    settings: Settings | None = None,
    *,
    ids: Iterable[str] | AsyncIterable[str] | None = None,
    stdin: BinaryIO | None = None,
    progress: ProgressSink | None = None,
    journal: str | os.PathLike[str] | None = None,
    resume_if_exists: bool = True,
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> RunReport:
    """Submit every valid id of ``inputs`` (paths, or ``"-"`` for stdin), or of ``ids``.

    ``ids`` is any iterable or async iterable of id strings (a list, a generator over a
    database cursor, a pandas Series), read once and spooled to a compressed file as it
    is read: beside ``journal`` (``<journal>.ids.zst``) when there is one, so that
    :func:`resume` never needs it again. Items are validated, deduplicated and reported
    like lines of a file, their origin being ``ids[i]``. Give ``inputs`` or ``ids``.

    Settings come from ``values`` > environment > ``config`` (else ``BULKJOB_CONFIG``)
    > defaults, as :meth:`Settings.load` reads them, e.g.
    ``submit_async(["ids.txt"], max_requests=1000, per_seconds=300)`` with the token in
    ``INSIDEVIEW_ACCESS_TOKEN``. Given a ``settings`` object instead, ``values`` replace
    its fields and neither the environment nor a config file is read.

    With ``journal``, the run is recorded there and can be continued with :func:`resume`.
    A journal that already holds this same run (same input files, same chunking) is
    resumed, so calling the same submit again is safe; ``resume_if_exists=False``
    refuses it instead. A journal of another run is always refused. For ``ids``, the same
    run means the same ids in the same order (their spool's digest is compared).
    """
    check_given(inputs, ids)
    s = _settings(settings, config, values)
    runner = Runner(
        s,
        inputs,
        ids=ids,
        stdin=stdin,
        progress=progress,
        journal=journal,
        resume_if_exists=resume_if_exists,
    )
    return await runner.run()


def _settings(
    settings: Settings | None, config: str | os.PathLike[str] | None, values: Mapping[str, object]
) -> Settings:
    """Loaded through the one path, or an explicit object with ``values`` applied."""
    if settings is None:
        return load_settings(values, config=config)
    if config is not None:
        raise ConfigError("config: not read when a Settings object is given; pass one or the other")
    given = {k: v for k, v in values.items() if v is not None}
    return dataclasses.replace(settings, **given) if given else settings  # type: ignore[arg-type]


#: The settings of a library call, as every entry point reads them (``enrich`` too).
settings_for_call = _settings


async def resume_async(
    journal: str | os.PathLike[str],
    *,
    ambiguous: AmbiguousPolicy = "stop",
    progress: ProgressSink | None = None,
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> RunReport:
    """Continue the run recorded in ``journal``.

    Settings come from ``values`` > environment > ``config`` > the journal's record (it
    holds no secrets: credentials come from the first three). Settings that shape the
    chunks cannot change. Chunks whose outcome is unknown stop the run unless
    ``ambiguous`` is ``"resubmit"`` or ``"abandon"``.
    """
    async with _held(journal, "resume", config, values) as (handle, s):
        runner = Runner(
            s,
            handle.inputs(),
            progress=progress,
            journal=handle,
            resume=True,
            ambiguous=ambiguous,
        )
        return await runner.run()


async def plan_async(
    inputs: Sequence[str] | None = None,
    settings: Settings | None = None,
    *,
    journal: str | os.PathLike[str] | None = None,
    stdin: BinaryIO | None = None,
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> Plan:
    """A dry run: what a submit of ``inputs`` (or a resume of ``journal``) would send.

    Reads the inputs as the run would, leaves out the chunks the journal settled, and asks
    the account's credits once (``GET /admin/usage``). Nothing is submitted, no journal is
    written. Settings are read as :func:`submit_async` (or :func:`resume_async`) reads them.
    """
    if (inputs is None) == (journal is None):
        raise ConfigError("plan: give the inputs of a new run, or the journal of one to resume")
    if journal is None:
        assert inputs is not None
        return await _plan(_settings(settings, config, values), inputs, stdin=stdin)
    async with _held(journal, "plan", config, values) as (handle, s):
        return await _plan(s, handle.inputs(), journal=handle)


def plan(
    inputs: Sequence[str] | None = None,
    settings: Settings | None = None,
    *,
    journal: str | os.PathLike[str] | None = None,
    stdin: BinaryIO | None = None,
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> Plan:
    """Blocking twin of :func:`plan_async`."""
    return run_sync(
        lambda: plan_async(inputs, settings, journal=journal, stdin=stdin, config=config, **values)
    )


@contextlib.asynccontextmanager
async def _held(
    journal: str | os.PathLike[str],
    command: str,
    config: str | os.PathLike[str] | None,
    values: Mapping[str, object],
) -> AsyncIterator[tuple[Journal, Settings]]:
    """The journal opened (and locked) once for a whole call, with the run's settings."""
    handle = await Journal.open_async(journal, command)
    try:
        recorded = handle.recorded_settings()
        yield handle, load_settings(values, config=config, recorded=recorded)
    finally:
        handle.close_sync()


def submit(
    inputs: Sequence[str] = (),
    settings: Settings | None = None,
    *,
    ids: Iterable[str] | AsyncIterable[str] | None = None,
    stdin: BinaryIO | None = None,
    progress: ProgressSink | None = None,
    journal: str | os.PathLike[str] | None = None,
    resume_if_exists: bool = True,
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> RunReport:
    """Blocking twin of :func:`submit_async`; safe to call from a notebook cell.

    A sync ``ids`` iterable is read here, in the calling thread, before the run starts
    (the caller waits either way): a cursor bound to its thread, as sqlite3's are, works.
    """
    check_given(inputs, ids)
    spool: IdSpool | None = None
    if ids is not None and not isinstance(ids, AsyncIterable | IdSpool):
        settings = _settings(settings, config, values)
        config, values = None, {}
        ids = spool = spool_sync(ids, *spool_place(journal))
    try:
        return run_sync(
            lambda: submit_async(
                inputs,
                settings,
                ids=ids,
                stdin=stdin,
                progress=progress,
                journal=journal,
                resume_if_exists=resume_if_exists,
                config=config,
                **values,
            )
        )
    finally:
        if spool is not None:
            spool.discard()  # unless a journal adopted it


def resume(
    journal: str | os.PathLike[str],
    *,
    ambiguous: AmbiguousPolicy = "stop",
    progress: ProgressSink | None = None,
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> RunReport:
    """Blocking twin of :func:`resume_async`."""
    return run_sync(
        lambda: resume_async(
            journal, ambiguous=ambiguous, progress=progress, config=config, **values
        )
    )


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine ``make()`` to completion, whether or not a loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:

        async def main() -> T:
            return await make()

        return asyncio.run(main())
    # A loop is running in this thread: nesting is impossible, so use a thread of our own.
    return _InWorker(make).result()


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt here while the caller blocks, under ``asyncio.run`` too.

    ``asyncio.run`` replaces Python's SIGINT handler with one that only cancels its main
    task, and that task is the one blocked in this call: the interrupt would wait for the
    whole run. For the wait, in the main thread, Python's own handler is put back.
    Any other handler (a host's own, or an ignored SIGINT) is left as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    current = signal.getsignal(signal.SIGINT)
    method = current.func if isinstance(current, functools.partial) else current
    if not isinstance(getattr(method, "__self__", None), asyncio.Runner):
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, current)


INTERRUPT_GRACE_SECONDS = 30.0
"""How long an interrupted blocking call waits for its run to wind down in the worker.

The run stops as on a second Ctrl-C (requests in flight are abandoned, the journal is
closed as cancellation unwinds), which takes well under a second; the bound only guards
against a run stuck in a blocking call. A second interrupt stops the wait at once."""


class _InWorker(Generic[T]):
    """A coroutine run on a private loop in a daemon thread, interruptible from the caller.

    The caller's thread (a notebook kernel's main thread) is the one that gets
    KeyboardInterrupt. Waiting on the worker's result must not swallow it until the run
    ends, so the interrupt cancels the run's main task on the worker's loop
    (``call_soon_threadsafe``), waits a bounded while for it to unwind, and is re-raised.
    The thread is a daemon so that an abandoned wait never holds up interpreter exit.
    """

    def __init__(self, make: Callable[[], Awaitable[T]]) -> None:
        self._make = make
        self._future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._interrupted = False
        self._running: tuple[asyncio.AbstractEventLoop, asyncio.Task[object]] | None = None
        thread = threading.Thread(target=self._work, name="bulkjob-run", daemon=True)
        thread.start()

    async def _main(self) -> T:
        task = asyncio.current_task()
        assert task is not None
        with self._lock:
            if self._interrupted:
                raise asyncio.CancelledError
            self._running = (asyncio.get_running_loop(), task)
        return await self._make()

    def _work(self) -> None:
        try:
            value = asyncio.run(self._main())
        except BaseException as exc:  # handed over to the caller's thread
            self._future.set_exception(exc)
        else:
            self._future.set_result(value)

    def result(self) -> T:
        with _interruptible():
            return self._wait()

    def _wait(self) -> T:
        try:
            return self._future.result()
        except KeyboardInterrupt:
            self._cancel()
            with contextlib.suppress(BaseException):
                # A second KeyboardInterrupt lands here too: it stops the wait.
                self._future.result(timeout=INTERRUPT_GRACE_SECONDS)
            raise

    def _cancel(self) -> None:
        with self._lock:
            self._interrupted = True
            running = self._running
        if running is not None:
            loop, task = running
            with contextlib.suppress(RuntimeError):  # the loop already closed: nothing to stop
                loop.call_soon_threadsafe(task.cancel)


async def wait_async(
    journal: str | os.PathLike[str],
    *,
    poll_interval: float | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the last snapshot goes with the error
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> RunStatus:
    """Prove lost answers, then poll the jobs of the run in ``journal`` until all are final.

    Settings as for :func:`resume_async`.
    """
    async with _held(journal, "wait", config, values) as (handle, settings):
        return await _lifecycle.wait(handle, settings, poll_interval=poll_interval, timeout=timeout)


def wait(
    journal: str | os.PathLike[str],
    *,
    poll_interval: float | None = None,
    timeout: float | None = None,
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> RunStatus:
    """Blocking twin of :func:`wait_async`."""
    return run_sync(
        lambda: wait_async(
            journal, poll_interval=poll_interval, timeout=timeout, config=config, **values
        )
    )


async def results_async(
    journal: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    merge: str | os.PathLike[str] | BinaryIO | None = None,
    keep_parts: bool = True,
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> ResultsSummary:
    """Download the finished jobs' CSVs into ``out_dir`` (resumably); ``merge`` into one.

    ``merge`` is a path or a binary stream (``sys.stdout.buffer``); without
    ``keep_parts`` the per-job files are deleted once the merge is complete. Settings
    as for :func:`resume_async`.
    """
    into = Path(merge) if isinstance(merge, str | os.PathLike) else merge
    async with _held(journal, "results", config, values) as (handle, settings):
        return await _lifecycle.results(
            handle, settings, Path(out_dir), merge=into, keep_parts=keep_parts
        )


def results(
    journal: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    merge: str | os.PathLike[str] | BinaryIO | None = None,
    keep_parts: bool = True,
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> ResultsSummary:
    """Blocking twin of :func:`results_async`."""
    return run_sync(
        lambda: results_async(
            journal, out_dir, merge=merge, keep_parts=keep_parts, config=config, **values
        )
    )
