"""Hostile review (2) of commit 2dd1bc9: the consumer's thread makes the rows of the sync
``enrich`` and waits for each job's delivery mark.

Tests marked ``DEFECT`` reproduce a defect found (they fail until it is fixed); the others
are attacks that held, kept as regression tests. Every test talks to the sandbox over
HTTP. A journal write is made to fail for real: another SQLite connection holds the
journal's write lock past the journal's busy timeout (5 s), so these tests take seconds.
Hangs are detected by running the consumer in a thread and joining it with a generous
bound: a hang detector, not a timing assertion.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import csv
import io
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bulkjob
from bulkjob import InputError, JobsFailedError, Row
from bulkjob._enrich import text_batches
from bulkjob._errors import JournalError
from tests.conftest import assert_paid_once, journal_rows, make_ids, settings_for, write_ids

ID = "newContactId"
#: How long a consumer may take before it is called hung (the runs here take seconds).
HUNG = 90.0
#: The journal's SQLite busy timeout (bulkjob/_journal.py), plus a margin: a write lock
#: held this long makes the journal's next write fail.
LOCK_BEATS_BUSY_TIMEOUT = 5.0 + 2.0


def _run_files(tmp_path: Path, n: int) -> tuple[list[str], Path, Path]:
    """``n`` ids, the file that holds them and where the run's journal goes."""
    values = make_ids(n)
    return values, write_ids(tmp_path / "ids.txt", values), tmp_path / "run.journal"


def counts(rows: list[Row]) -> collections.Counter[str]:
    return collections.Counter(row[ID] for row in rows)


def enrich_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bulkjob-enrich"]


@contextmanager
def write_lock(journal: Path) -> Iterator[None]:
    """Hold the journal's write lock from another connection (as another process would)."""
    # Waits for a write of the run in progress (a lock taken at once could fail on one).
    db = sqlite3.connect(journal, timeout=HUNG, isolation_level=None, check_same_thread=False)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.rollback()
    finally:
        db.close()


class Consumer:
    """Iterates ``it`` in a thread of its own, calling ``body(row, n)`` per row."""

    def __init__(self, it: bulkjob.Enriched, body: Callable[[Row, int], None] = lambda r, n: None):
        self.it = it
        self.rows: list[Row] = []
        self.error: BaseException | None = None
        self._body = body
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for row in self.it:
                self.rows.append(row)
                self._body(row, len(self.rows))
        except BaseException as exc:
            self.error = exc
            self.it.close()  # a loop body that raised: no run left going for the next test

    def ended(self) -> bool:
        """Whether the consumer ended (else it is closed, so that no thread is left)."""
        self.thread.join(HUNG)
        if self.thread.is_alive():
            self.it.close()
            self.thread.join(HUNG)
            return False
        return True


# -- DEFECT 1: close() does not end the job being read --------------------------------------------


@pytest.mark.parametrize("where", ["same thread", "another thread"])
def test_defect_close_ends_the_rows_of_a_job_of_several_batches(tmp_path: Path, where: str) -> None:
    """DEFECT (regression of 2dd1bc9; 2dd1bc9~1 passes). ``close()`` after the first row of
    a job of 2,000 rows (4 batches of 512): the next ``next()`` must end the iteration.
    Observed: the 1,488 other rows of the job still come, after close() and with the
    worker gone (a close() from a watchdog thread does not stop the consumer's loop
    either). Cause: _batches checks ``hand.done`` only between jobs; close() clears the
    batch being read (hand.rows) but the generator then reads on in the job's
    text_batches. Fix: in _batches' inner loop, ``if hand.done: return`` before each
    ``yield batch`` (and before past_job)."""
    values, path, journal = _run_files(tmp_path, 4_000)
    with bulkjob.Sandbox.running() as sb:
        s = settings_for(sb, chunk_size=2_000)
        it = bulkjob.enrich([str(path)], settings=s, journal=journal)
        first = next(it)
        if where == "same thread":
            it.close()
        else:
            closer = threading.Thread(target=it.close)
            closer.start()
            closer.join(HUNG)
        after = list(it)
        assert not enrich_threads()
        assert after == [], f"{len(after)} rows came after close()"
        assert not [r for r in journal_rows(journal).values() if r.delivered_at]
        rest = list(bulkjob.enrich([str(path)], settings=s, journal=journal))
        assert_paid_once(sb, values)
    assert set(counts([first, *rest])) == set(values)


# -- DEFECT 2: a failed delivery mark hangs the run -----------------------------------------------


def test_defect_a_failed_mark_with_the_last_job_waiting_ends_with_the_error(
    tmp_path: Path,
) -> None:
    """DEFECT (regression of 2dd1bc9; 2dd1bc9~1 raises JournalError). Four chunks at a
    queue limit of 3: jobs 1-3 finish, the consumer stops at job 1's last row until jobs
    2 and 3 are downloaded (the worker waits to hand over job 3), then the journal's
    write lock is held by another connection until a write of the run (job 4's) fails.
    The journal is then failed for good, so job 1's mark fails as soon as the consumer
    asks for the next row. Expected: JournalError. Observed: both threads wait forever.

    Cause: the worker learns of a failed mark (a) at the top of its loop, when another
    job arrives, or (b) from ``gather(*core._marks)`` at the end of the jobs; but
    ``deliver_when`` drops *done* marks, failed ones included, from ``core._marks``, and
    job 1's mark failed between job 3's loop top and job 3's ``deliver_when``. No job
    follows, so the gather waits for the marks of jobs 2 and 3, whose acks never come:
    the consumer, told by ``durable()`` that the mark failed, skips every hand-over
    silently, waiting for an end that needs those acks.

    Fix: let the consumer raise the mark's own exception (durable() has it) after
    ``worker.close()``, rather than drain and rely on the worker; and/or keep failed
    marks in ``_marks`` (prune only those that succeeded), and end the worker's run as
    soon as a mark fails (a done callback that cancels the main task with the error)."""
    _, path, journal = _run_files(tmp_path, 400)
    config = bulkjob.SandboxConfig(running_job_limit=3, finished_after=2.0)
    with bulkjob.Sandbox.running(config) as sb:
        s = settings_for(sb, chunk_size=100, queue_poll_interval=0.5)
        it = bulkjob.enrich([str(path)], settings=s, journal=journal)

        def body(row: Row, n: int) -> None:
            if n != 100:
                return
            worker = it._hand.worker
            assert worker is not None and worker.core is not None
            while worker.core.jobs_finished < 3:
                time.sleep(0.01)
            with write_lock(journal):  # job 4 turns final meanwhile: its write fails
                time.sleep(config.finished_after + LOCK_BEATS_BUSY_TIMEOUT)

        consumer = Consumer(it, body)
        assert consumer.ended(), "hung: a failed delivery mark left both threads waiting"
        assert isinstance(consumer.error, JournalError), consumer.error
        assert not enrich_threads()


# -- DEFECT 3 (older than 2dd1bc9): a failed status write is a silent, empty, clean end ---------


def test_defect_a_status_write_that_fails_is_not_a_clean_run_without_rows(
    tmp_path: Path,
) -> None:
    """DEFECT (not from 2dd1bc9: 2dd1bc9~1 does the same). The journal cannot be written
    while the jobs turn final (its write lock is held by another connection past the
    busy timeout). Expected: the run's rows, or an error. Observed: the iteration ends
    cleanly with NO row and no exception, report.failed_jobs empty, rows lost silently.

    Cause: Enrichment._look deletes the job from ``_watched`` and then awaits
    ``journal.job_update``; the JournalError (a BulkJobError) is caught by _poll_due as
    a "failing server" to poll again later, but the job is no longer watched: it is
    never made final, never downloaded, and the watch ends with nothing watched. Fix:
    let JournalError out of _poll_due (it is not the server failing), so _serve fails
    and the verdict raises it; and remove the job from _watched only once recorded."""
    values, path, journal = _run_files(tmp_path, 300)
    config = bulkjob.SandboxConfig(finished_after=1.0)
    with bulkjob.Sandbox.running(config) as sb:
        s = settings_for(sb, chunk_size=100)
        it = bulkjob.enrich([str(path)], settings=s, journal=journal)
        consumer = Consumer(it)
        while sb.ledger.ids_accepted < len(values) or not journal.exists():
            time.sleep(0.01)
        while sum(1 for r in journal_rows(journal).values() if r.job_id) < 3:
            time.sleep(0.01)
        with write_lock(journal):  # the jobs turn final meanwhile: their writes fail
            time.sleep(config.finished_after + LOCK_BEATS_BUSY_TIMEOUT)
        assert consumer.ended()
        assert consumer.error is not None or len(consumer.rows) == len(values), (
            f"a clean end with {len(consumer.rows)} of {len(values)} rows and no error; "
            f"failed_jobs={it.report.failed_jobs}"
        )


# -- DEFECT 4 (older than 2dd1bc9): a journal the run cannot open hangs enrich -----------------


@pytest.mark.parametrize("how", ["enrich", "enrich_async"])
def test_defect_resume_with_a_changed_input_raises_not_hangs(tmp_path: Path, how: str) -> None:
    """DEFECT (not from 2dd1bc9: 2dd1bc9~1 hangs alike). enrich broken out of, its input
    file then rewritten with other ids, and enrich called again with the journal.
    Expected: the InputError "input changed since the journal was written" (as submit
    raises). Observed: enrich and enrich_async wait forever (asyncio logs the InputError
    as "Task exception was never retrieved", then an AssertionError in Journal._flush).

    Cause: Runner._open_journal sets ``self.journal`` before it verifies the input, and
    on failure closes that journal (close_sync: its pool is gone) but leaves it set;
    Enrichment._shutdown then awaits ``journal.flush()`` on the closed journal: _write
    queues an op and starts a _flush task whose ``assert pool is not None`` fails, so the
    op's future is never resolved. (Any failure of _open_journal after that line does it,
    e.g. a fresh journal file another connection holds locked: "cannot open".) Fix:
    Journal._write raises JournalError when the journal is closed (and _flush never
    raises, as its docstring says); Runner._open_journal sets ``self.journal`` only once
    the journal is ready, or resets it when it closes it."""
    path = write_ids(tmp_path / "ids.txt", make_ids(400))
    journal = tmp_path / "run.journal"
    with bulkjob.Sandbox.running() as sb:
        s = settings_for(sb, chunk_size=100)
        for n, _ in enumerate(bulkjob.enrich([str(path)], settings=s, journal=journal)):
            if n == 150:
                break
        write_ids(path, make_ids(400, prefix="other"))
        if how == "enrich":
            consumer = Consumer(bulkjob.enrich([str(path)], settings=s, journal=journal))
            assert consumer.ended(), "hung on a journal whose input changed"
            error = consumer.error
        else:

            async def rows() -> list[Row]:
                it = bulkjob.enrich_async([str(path)], settings=s, journal=journal)
                return [row async for row in it]

            async def bounded() -> BaseException | None:
                try:
                    await asyncio.wait_for(rows(), HUNG)
                except BaseException as exc:
                    return exc
                return None

            error = asyncio.run(bounded())
            assert not isinstance(error, TimeoutError), "hung on a journal whose input changed"
        assert isinstance(error, InputError), error
        assert "input changed" in str(error)


# -- attacks that held ----------------------------------------------------------------------------


def _hold_lock(journal: Path) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """A thread that takes the journal's write lock when started (``locked`` set once
    held) and keeps it until ``unlock`` is set."""
    locked, unlock = threading.Event(), threading.Event()

    def hold() -> None:
        with write_lock(journal):
            locked.set()
            unlock.wait(HUNG)

    return threading.Thread(target=hold, daemon=True), locked, unlock


def test_ctrl_c_while_the_consumer_waits_for_a_mark(tmp_path: Path) -> None:
    """A KeyboardInterrupt in the consumer's thread while it waits for job 1's mark to be
    durable (the journal's write lock held elsewhere): the interrupt comes out at once,
    no worker is left, and the same call resumes: every row, paid once, at most job 1's
    rows twice."""
    values, path, journal = _run_files(tmp_path, 400)
    with bulkjob.Sandbox.running() as sb:
        s = settings_for(sb, chunk_size=100)
        it = bulkjob.enrich([str(path)], settings=s, journal=journal)
        first: list[Row] = []
        holder, locked, unlock = _hold_lock(journal)

        def read() -> None:
            for row in it:
                first.append(row)
                if len(first) == 100:  # job 1's last row: its mark will wait for the lock
                    holder.start()
                    locked.wait(HUNG)
                    threading.Timer(1.0, _thread.interrupt_main).start()

        try:
            with pytest.raises(KeyboardInterrupt):
                read()
        finally:
            unlock.set()
            holder.join(HUNG)
        assert len(first) == 100
        assert not enrich_threads()
        rest = list(bulkjob.enrich([str(path)], settings=s, journal=journal))
        assert_paid_once(sb, values)
    got = counts(first + rest)
    assert set(got) == set(values)
    assert sum(got.values()) - len(values) <= 100


def test_a_journal_locked_from_the_start_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """Another connection holds the journal's write lock before the run opens it: the
    run cannot start, and enrich says so (JournalError) rather than waiting for ever
    (a flush on the journal whose opening failed once waited on a writer never started)."""
    values, path, journal = _run_files(tmp_path, 200)
    with bulkjob.Sandbox.running() as sb:
        s = settings_for(sb, chunk_size=100)
        with write_lock(journal):
            consumer = Consumer(bulkjob.enrich([str(path)], settings=s, journal=journal))
            assert consumer.ended(), "hung on a journal locked from the start"
        assert isinstance(consumer.error, JournalError), consumer.error
        assert consumer.rows == []
        assert not enrich_threads()
        rows = list(bulkjob.enrich([str(path)], settings=s, journal=journal))
        assert_paid_once(sb, values)
    assert set(counts(rows)) == set(values)


def test_close_from_another_thread_while_the_consumer_waits_for_a_mark(tmp_path: Path) -> None:
    """close() from a watchdog thread while the consumer waits for a mark that cannot be
    written: the consumer ends (no hang), no worker is left, and the journal resumes."""
    values, path, journal = _run_files(tmp_path, 400)
    with bulkjob.Sandbox.running() as sb:
        s = settings_for(sb, chunk_size=100)
        it = bulkjob.enrich([str(path)], settings=s, journal=journal)
        locked = threading.Event()
        unlock = threading.Event()

        def hold() -> None:
            with write_lock(journal):
                locked.set()
                unlock.wait(HUNG)

        holder = threading.Thread(target=hold, daemon=True)

        def body(row: Row, n: int) -> None:
            if n == 100:
                holder.start()
                locked.wait(HUNG)
                threading.Timer(1.0, it.close).start()

        consumer = Consumer(it, body)
        ended = consumer.ended()
        unlock.set()
        holder.join(HUNG)
        assert ended, "hung after close() from another thread"
        assert len(consumer.rows) == 100
        assert consumer.error is None or isinstance(consumer.error, JournalError)
        assert not enrich_threads()
        rest = list(bulkjob.enrich([str(path)], settings=s, journal=journal))
        assert_paid_once(sb, values)
    assert set(counts(consumer.rows + rest)) == set(values)


def test_slow_consumer_queue_limit_2_and_failing_jobs(tmp_path: Path) -> None:
    """A slow consumer at a queue limit of 2 with a share of jobs failing: every row of
    the finished jobs, then JobsFailedError naming exactly the others; each job
    delivered in the journal once its rows were read; paid once."""
    values, path, journal = _run_files(tmp_path, 3_000)
    config = bulkjob.SandboxConfig(running_job_limit=2, job_fail_rate=0.3, seed=3)
    with bulkjob.Sandbox.running(config) as sb:
        s = settings_for(sb, chunk_size=300, queue_poll_interval=0.2)
        it = bulkjob.enrich([str(path)], settings=s, journal=journal)
        consumer = Consumer(it, lambda row, n: time.sleep(0.02) if n % 300 == 0 else None)
        assert consumer.ended()
        assert isinstance(consumer.error, JobsFailedError), consumer.error
        failed = {j.job_id for j in consumer.error.jobs}
        assert failed
        got = {row.job_id for row in consumer.rows}
        assert not failed & got
        assert len(consumer.rows) + consumer.error.ids == len(values)
        assert len(counts(consumer.rows)) == len(consumer.rows)
        rows = journal_rows(journal).values()
        assert {r.job_id for r in rows if r.delivered_at} == got
        assert_paid_once(sb, values)


def test_a_consumer_that_raises_inside_its_loop_then_resumes(tmp_path: Path) -> None:
    """An exception in the loop body of ``with enrich(...) as it`` mid-job: the run stops,
    no worker is left, and the same call resumes with at most that job repeated."""
    values, path, journal = _run_files(tmp_path, 3_000)
    with bulkjob.Sandbox.running() as sb:
        s = settings_for(sb, chunk_size=1_000)
        first: list[Row] = []

        def read(it: bulkjob.Enriched) -> None:
            for row in it:
                first.append(row)
                if len(first) == 1_600:
                    _ = 1 / 0

        it = bulkjob.enrich([str(path)], settings=s, journal=journal)
        with it, pytest.raises(ZeroDivisionError):
            read(it)
        assert not enrich_threads()
        assert len([r for r in journal_rows(journal).values() if r.delivered_at]) == 1
        rest = list(bulkjob.enrich([str(path)], settings=s, journal=journal))
        assert_paid_once(sb, values)
    got = counts(first + rest)
    assert set(got) == set(values) and sum(got.values()) - len(values) <= 1_000


_ODD = ["a", ",", "\n", "\r\n", "\r", " ", "é", "\x0b", "\x0c", "\x1c", "\x1e", "\x85"]
_ODD += ["\u2028", "\ufeff", "\t", "\\", "'", "\x00", '"', "\n\n"]


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    parts=st.lists(st.sampled_from(_ODD), max_size=50),
    limit=st.sampled_from([None, 1, 2, 3, 5]),
    size=st.integers(1, 4),
)
def test_rows_of_any_text_at_any_field_limit(
    parts: list[str], limit: int | None, size: int
) -> None:
    """Characters other line-splitters see as line ends (VT, FF, FS, RS, NEL, U+2028), a
    BOM mid-text, and a small csv field limit (so the str.split path's length guard is
    exercised on short texts): the same rows, or csv.Error, as csv.reader and zip."""
    text = "".join(parts)
    old = csv.field_size_limit()
    if limit is not None:
        csv.field_size_limit(limit)
    try:
        try:
            records = list(csv.reader(io.StringIO(text, newline="")))
        except csv.Error:
            with pytest.raises(csv.Error):
                list(text_batches(text, "j", size))
            return
        expected = [dict(zip(records[0], r, strict=False)) for r in records[1:]] if records else []
        assert [row for batch in text_batches(text, "j", size) for row in batch] == expected
    finally:
        csv.field_size_limit(old)
