"""``enrich`` and ``enrich_async``: the rows of an :class:`~bulkjob._enrich.Enrichment`
as a plain iterator and an async one.

The async iterator runs on the caller's loop. The sync one always runs the enrichment on
a private loop in a worker thread (so it works the same in a script and in a notebook
cell, where a loop already runs) and hands each downloaded job's results text over a
queue of one; the consumer's thread makes the rows, a batch at a time, as it reads them.
The worker never waits for the consumer's loop body, and submission goes on while the
consumer works. Delivery marks are the consumer's doing: when it asks for the row after a
job's last one, the job is recorded delivered (and durably so) before any row of the
next job is handed over.

Breaking out, ``close()``, or the iterator being dropped stops the run as a Ctrl-C does:
requests in flight finish, nothing is cancelled on the server, the journal stays
consistent and the same call with the same journal resumes.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import os
import queue
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Unpack

from ._enrich import Enrichment, JobRows, Past, Row, read_results, text_batches
from ._errors import ConfigError
from ._report import RunReport
from ._settings import Settings, SettingsValues
from ._sync import settings_for_call

__all__ = ["Enriched", "EnrichedAsync", "enrich", "enrich_async"]

#: Rows made at a time from a job's results. Fewer than the cyclic GC's first threshold
#: (700 new objects): a batch made and freed in one thread sets off no collection.
BATCH_ROWS = 512
#: Downloaded jobs handed over to the consumer's thread ahead of the one it reads.
JOBS_AHEAD = 1
#: Rows an async consumer gets between two chances for the loop to run the rest of the run.
_YIELD_EVERY = BATCH_ROWS
#: How long a closing iterator waits for its run to wind down (see drain_timeout).
CLOSE_GRACE_SECONDS = 60.0
_PUT_POLL = 0.2


def _inputs(inputs: Sequence[str] | str, ids: object) -> list[str]:
    paths = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    if paths and ids is not None:
        raise ConfigError("enrich: give input paths or ids=, not both")
    if not paths and ids is None:
        raise ConfigError("enrich: give input paths or ids=")
    return [os.fspath(p) for p in paths]


class EnrichedAsync:
    """The rows of an enrich run, as an async iterator (``async for row in it``).

    Use it as ``async with enrich_async(...) as rows:`` (or call :meth:`aclose`) when
    you may stop early: that stops the run at once rather than when the iterator is
    garbage collected. :attr:`report` is the run's report, final after the iteration.
    """

    def __init__(self, make: Callable[[], Enrichment]) -> None:
        self._make = make
        self._core: Enrichment | None = None
        self._rows: AsyncGenerator[Row, None] | None = None

    @property
    def report(self) -> RunReport:
        """The run's report (empty until the iteration starts; final after it)."""
        return self._core.report if self._core is not None else RunReport()

    def __aiter__(self) -> EnrichedAsync:
        return self

    async def __anext__(self) -> Row:
        if self._rows is None:
            self._core = self._make()
            self._rows = self._generate(self._core)
        return await self._rows.__anext__()

    async def _generate(self, core: Enrichment) -> AsyncGenerator[Row, None]:
        async with contextlib.aclosing(core.jobs()) as jobs:
            async for job in jobs:
                n = 0
                with contextlib.closing(job.batches(_YIELD_EVERY)) as batches:
                    for batch in batches:
                        for row in batch:
                            yield row
                        n += len(batch)
                        await asyncio.sleep(0)
                await core.delivered(job, n)  # the consumer asked for the row after its last

    async def aclose(self) -> None:
        """Stop the run (as a Ctrl-C does) unless it ended; the journal stays resumable."""
        if self._rows is not None:
            await self._rows.aclose()

    async def __aenter__(self) -> EnrichedAsync:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def enrich_async(
    inputs: Sequence[str] | str = (),
    *,
    ids: Iterable[str] | object = None,
    journal: str | os.PathLike[str] | None = None,
    settings: Settings | None = None,
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> EnrichedAsync:
    """Submit every id of ``inputs`` (paths) or ``ids`` (an iterable or async iterable of
    str) and yield each finished job's results rows as :class:`Row` objects, while the
    run goes on. Settings as for :func:`bulkjob.submit_async`; queue-full always waits.

    With ``journal``, the run is recorded there and delivery per job too: calling again
    with the same journal resumes (nothing paid twice), skips delivered jobs and repeats
    at most the job that was being delivered. At the end, :class:`JobsFailedError` says
    which ids have no rows (failed or aborted jobs, rejected chunks).
    """
    paths = _inputs(inputs, ids)
    s = settings_for_call(settings, config, values)
    where = os.fspath(journal) if journal is not None else None
    return EnrichedAsync(lambda: Enrichment(s, paths, ids=ids, journal=where))


# -- the blocking twin ----------------------------------------------------------------------------

#: (a downloaded job, its results' text for the consumer to make rows of) | the end.
_Item = tuple[JobRows, str] | None


class _Worker:
    """The enrichment on a private loop in a daemon thread, handing over downloaded jobs.

    The consumer's thread reads each job's rows itself (:func:`_batches`): a row is made
    where it is used and freed, so rows never pile up between two threads (where the
    cyclic GC would keep scanning them), and the loop's thread stays free for requests.
    """

    def __init__(self, make: Callable[[], Enrichment]) -> None:
        self._make = make
        self.queue: queue.Queue[_Item] = queue.Queue(maxsize=JOBS_AHEAD)
        self.closing = threading.Event()
        self.core: Enrichment | None = None
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        #: What the jobs' delivery marks wait for, in the order the jobs were handed over.
        self._acks: collections.deque[asyncio.Future[Past]] = collections.deque()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, name="bulkjob-enrich", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            asyncio.run(self._main())
        except asyncio.CancelledError:
            pass  # closed by the consumer
        except BaseException as exc:  # handed over to the consumer's thread
            self.error = exc
        finally:
            self._put_now(None)

    async def _main(self) -> None:
        with self._lock:
            if self.closing.is_set():
                return
            self.loop = loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            self.core = core = self._make()
        async with contextlib.aclosing(core.jobs()) as jobs:
            async for job in jobs:
                ack: asyncio.Future[Past] = loop.create_future()
                self._acks.append(ack)
                text = await asyncio.to_thread(read_results, job.path)
                await self._put((job, text))
                # The consumer records the job delivered once it asked for the row after
                # its last one (see past_job), and hands over nothing of the next job
                # before that record is durable; the mark finishes the delivery here,
                # and the run's end raises the error of a record that failed.
                core.deliver_when(ack, job)

    def _ack(self, past: Past) -> None:
        if self._acks:
            ack = self._acks.popleft()
            if not ack.done():
                ack.set_result(past)

    async def _put(self, item: _Item) -> None:
        try:
            self.queue.put_nowait(item)
        except queue.Full:
            await asyncio.to_thread(self._put_blocking, item)

    def _put_blocking(self, item: _Item) -> None:
        while not self.closing.is_set():
            with contextlib.suppress(queue.Full):
                self.queue.put(item, timeout=_PUT_POLL)
                return

    def _put_now(self, item: _Item) -> None:
        """The end marker: room is made if the consumer is gone (closing)."""
        while True:
            try:
                self.queue.put(item, timeout=_PUT_POLL)
                return
            except queue.Full:
                if self.closing.is_set():
                    with contextlib.suppress(queue.Empty):
                        self.queue.get_nowait()

    def next_item(self) -> _Item:
        """The next hand-over; None at the end. A close() from another thread may have
        drained the end marker: a worker gone with nothing left is the end too."""
        while True:
            try:
                return self.queue.get(timeout=_PUT_POLL)
            except queue.Empty:
                if self.closing.is_set() and not self.thread.is_alive() and self.queue.empty():
                    return None

    def durable(self, mark: concurrent.futures.Future[bool]) -> BaseException | None:
        """Wait for a delivery record: None once it is durable, else what kept it from
        being (its error; CancelledError when the run was stopped meanwhile)."""
        while True:
            try:
                if mark.result(timeout=_PUT_POLL):
                    return None
                return concurrent.futures.CancelledError()  # the journal closed first
            except concurrent.futures.TimeoutError:
                if self.closing.is_set() and not self.thread.is_alive():
                    return concurrent.futures.CancelledError()
            except concurrent.futures.CancelledError as exc:
                return exc
            except Exception as exc:  # the mark's own error: the consumer raises it
                return exc

    def past_job(self, job: JobRows, rows: int) -> concurrent.futures.Future[bool] | None:
        """The consumer asked for the row after ``job``'s last one (``rows`` handed over):
        the job is recorded delivered, straight from this thread (the record's future;
        None without a journal), and the worker finishes its delivery."""
        loop, core = self.loop, self.core
        assert loop is not None and core is not None
        journal = core.runner.journal
        written = journal.delivered_soon(job.info.chunk) if journal is not None else None
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(self._ack, (rows, written))
        return written

    def close(self) -> None:
        """Stop the run (cancelling the worker's main task unwinds it as a Ctrl-C stop)."""
        with self._lock:
            first = not self.closing.is_set()
            self.closing.set()
            loop, task = self.loop, self._task
        # Cancelled once: a second cancel would cut short the first one's wind-down (the
        # journal left open, its lock held).
        if first and loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(task.cancel)
        while self.thread.is_alive():  # drain, so that no put holds the worker up
            with contextlib.suppress(queue.Empty):
                self.queue.get(timeout=_PUT_POLL)
        self.thread.join(CLOSE_GRACE_SECONDS)


class _Hand:
    """What an :class:`Enriched` and its stream of rows share. The stream holds no reference
    to the :class:`Enriched`, so that ``for row in enrich(...)`` left with ``break`` drops
    the stream at once (which stops the run), whatever became of the :class:`Enriched`."""

    __slots__ = ("done", "make", "rows", "worker")

    def __init__(self, make: Callable[[], Enrichment]) -> None:
        self.make = make
        self.worker: _Worker | None = None
        #: The batch being read: emptied by close(), which so ends it at once.
        self.rows: list[Row] = []
        self.done = False

    def closed(self) -> bool:
        """Whether the stream is done: at its end, or closed (from any thread)."""
        return self.done


def _batches(hand: _Hand) -> Generator[list[Row], None, None]:
    """The rows of the worker's jobs, in order, read here in batches. Asked for the next
    batch after a job's last one, the consumer is past that job: it is recorded delivered,
    and none of the next job's rows is handed over before that record is durable (its
    first batch is read meanwhile)."""
    if hand.done:
        return
    if hand.worker is None:
        hand.worker = _Worker(hand.make)
    worker = hand.worker
    before: concurrent.futures.Future[bool] | None = None  # the record of the job before
    try:
        while True:
            if hand.closed():  # closed (from any thread): nothing more is handed over
                worker.close()  # and the stream ends once the worker has
                return
            item = worker.next_item()
            if item is None:  # the end: the run's verdict, if any
                worker.thread.join(CLOSE_GRACE_SECONDS)
                hand.done = True
                if worker.error is not None:
                    raise worker.error
                return
            job, text = item
            rows = 0
            with contextlib.closing(text_batches(text, job.info.job_id, BATCH_ROWS)) as batches:
                del text, item
                for batch in itertools.chain(batches, ([],)):
                    if hand.closed():
                        worker.close()
                        return
                    if before is not None:
                        failed = worker.durable(before)
                        before = None
                        if isinstance(failed, concurrent.futures.CancelledError):
                            break  # the run was stopped: its end says how
                        if failed is not None:  # the job before is not delivered
                            hand.done = True
                            worker.close()
                            raise worker.error or failed
                    if not batch:  # the consumer asked for the row after the job's last
                        before = worker.past_job(job, rows)
                        break
                    hand.rows = batch
                    yield batch
                    rows += len(batch)
    except BaseException:  # the run's error, an interrupt, or the stream dropped (break)
        hand.done = True
        worker.close()
        raise


class Enriched:
    """The rows of an enrich run, as a plain iterator (``for row in it``).

    Works in scripts and in notebook cells alike. Breaking out of the loop, :meth:`close`
    or dropping the iterator stops the run as a Ctrl-C does; the journal stays
    resumable. :attr:`report` is the run's report, final after the iteration.

    ``iter(it)`` is the rows themselves, a C iterator over the worker's batches
    (``itertools.chain``): no Python call per row. ``next(it)`` reads the same stream.
    The stream, not this object, stops the run when it is dropped: ``iter(it)`` kept and
    ``it`` let go still reads every row.
    """

    def __init__(self, make: Callable[[], Enrichment]) -> None:
        self._hand = _Hand(make)
        self._rows: Iterator[Row] = itertools.chain.from_iterable(_batches(self._hand))

    @property
    def report(self) -> RunReport:
        """The run's report (empty until the iteration starts; final after it)."""
        worker = self._hand.worker
        return worker.core.report if worker is not None and worker.core else RunReport()

    def __iter__(self) -> Iterator[Row]:
        return self._rows

    def __next__(self) -> Row:
        return next(self._rows)

    def close(self) -> None:
        """Stop the run unless it ended (a stop like Ctrl-C); the journal stays resumable."""
        hand = self._hand
        hand.done = True
        hand.rows.clear()
        if hand.worker is not None:
            hand.worker.close()

    def __enter__(self) -> Enriched:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def enrich(
    inputs: Sequence[str] | str = (),
    *,
    ids: Iterable[str] | object = None,
    journal: str | os.PathLike[str] | None = None,
    settings: Settings | None = None,
    config: str | os.PathLike[str] | None = None,
    **values: Unpack[SettingsValues],
) -> Enriched:
    """Blocking twin of :func:`enrich_async`: an iterator of :class:`Row`; safe in a
    notebook cell (the run lives on a loop of its own, in a worker thread)."""
    paths = _inputs(inputs, ids)
    s = settings_for_call(settings, config, values)
    where = os.fspath(journal) if journal is not None else None
    return Enriched(lambda: Enrichment(s, paths, ids=ids, journal=where))
