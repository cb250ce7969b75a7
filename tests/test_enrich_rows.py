"""Rows built a batch at a time: each job's rows share a class that carries its job id,
and the sync iterator hands them over with no Python call per row. Still plain rows to a
consumer: dicts keyed by the header, with ``job_id``, that pickle and copy; and a loop
left with ``break`` still stops the run at once."""

from __future__ import annotations

import collections
import copy
import csv
import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bulkjob
from bulkjob import Row
from bulkjob._enrich import row_batches
from tests.conftest import assert_paid_once, journal_rows, make_ids, settings_for, write_ids

ID = "newContactId"
_CELL = st.text(st.sampled_from(["a", ",", '"', "\n", "é", " "]), max_size=6)


@settings(max_examples=100, deadline=None)
@given(
    header=st.lists(st.sampled_from(["id", "a", "b", "c"]), min_size=1, max_size=4),
    records=st.lists(st.lists(_CELL, max_size=5), max_size=12),
    size=st.integers(1, 5),
    bom=st.booleans(),
)
def test_batches_are_the_rows_of_a_plain_csv_read(
    tmp_path_factory: pytest.TempPathFactory,
    header: list[str],
    records: list[list[str]],
    size: int,
    bom: bool,
) -> None:
    """Batches of any size hold exactly the rows a csv.reader and zip give, with the job id."""
    path = tmp_path_factory.mktemp("rows") / "r.csv"
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(records)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        next(reader)
        expected = [dict(zip(header, record, strict=False)) for record in reader]
    batches = list(row_batches(path, "job-7", size))
    assert all(0 < len(batch) <= size for batch in batches)
    rows = [row for batch in batches for row in batch]
    assert rows == expected
    assert all(isinstance(row, Row) and row.job_id == "job-7" for row in rows)


_PLAIN = ["a", "b", ",", "\n", "\r\n", " ", "é"]
_RAW = st.one_of(
    st.lists(st.sampled_from(_PLAIN), max_size=40).map("".join),
    st.lists(st.sampled_from([*_PLAIN, "\r", '"', "\x00"]), max_size=40).map("".join),
)


@settings(max_examples=400, deadline=None)
@given(text=_RAW, size=st.integers(1, 4), bom=st.booleans())
def test_batches_of_any_text_are_what_csv_reader_gives(
    tmp_path_factory: pytest.TempPathFactory, text: str, size: int, bom: bool
) -> None:
    """Any text, the plain ones that are cut with str.split (half the texts drawn) and
    the others: the rows, or the csv.Error, that csv.reader and zip give."""
    path = tmp_path_factory.mktemp("raw") / "r.csv"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            records = list(csv.reader(fh))
    except csv.Error:
        with pytest.raises(csv.Error):
            list(row_batches(path, "job-1", size))
        return
    expected = [dict(zip(records[0], r, strict=False)) for r in records[1:]] if records else []
    rows = [row for batch in row_batches(path, "job-1", size) for row in batch]
    assert rows == expected
    assert all(type(row).__mro__[1] is Row and row.job_id == "job-1" for row in rows)


def test_a_field_over_the_csv_limit_is_refused_as_csv_reader_does(tmp_path: Path) -> None:
    """A plain file is cut without the csv module, yet a field over its limit is still
    refused as csv.reader refuses it."""
    path = tmp_path / "r.csv"
    path.write_text("id,big\nx," + "y" * (csv.field_size_limit() + 1) + "\n")
    with pytest.raises(csv.Error):
        list(row_batches(path, "job-1", 10))


def test_enriched_rows_pickle_and_copy_as_rows(tmp_path: Path) -> None:
    """A row from enrich survives pickle, copy and deepcopy: same fields, same job id."""
    values = make_ids(300)
    path = write_ids(tmp_path / "ids.txt", values)
    with bulkjob.Sandbox.running() as sb:
        rows = list(bulkjob.enrich([str(path)], settings=settings_for(sb, chunk_size=100)))
    assert collections.Counter(row[ID] for row in rows) == collections.Counter(values)
    for row in (rows[0], rows[-1]):
        for again in (pickle.loads(pickle.dumps(row)), copy.copy(row), copy.deepcopy(row)):
            assert isinstance(again, Row)
            assert again == row and again.job_id == row.job_id
    assert {row.job_id for row in rows[:100]} == {rows[0].job_id}
    assert rows[0].job_id != rows[-1].job_id


def test_break_out_of_an_unnamed_enrich_stops_the_run_at_once(tmp_path: Path) -> None:
    """``for row in enrich(...): break`` (no name kept) stops the run as the loop ends:
    no worker left running; the same call with the journal then gives every row, paid once."""
    values = make_ids(2_000)
    path = write_ids(tmp_path / "ids.txt", values)
    journal = tmp_path / "run.journal"
    with bulkjob.Sandbox.running(bulkjob.SandboxConfig(running_job_limit=2)) as sb:
        s = settings_for(sb, chunk_size=200)
        first = []
        for row in bulkjob.enrich([str(path)], settings=s, journal=journal):
            first.append(row)
            if len(first) == 250:
                break
        assert not [t for t in threading.enumerate() if t.name == "bulkjob-enrich"]
        assert len([r for r in journal_rows(journal).values() if r.delivered_at]) == 1
        rest = list(bulkjob.enrich([str(path)], settings=s, journal=journal))
        assert_paid_once(sb, values)
    got = collections.Counter(row[ID] for row in first + rest)
    assert set(got) == set(values)
    assert sum(got.values()) - len(values) <= 200  # at most the one job being delivered


def test_close_ends_the_batch_being_read(tmp_path: Path) -> None:
    """close() in the middle of a batch: the next ``next()`` ends the iteration."""
    values = make_ids(1_000)
    path = write_ids(tmp_path / "ids.txt", values)
    with bulkjob.Sandbox.running() as sb:
        it = bulkjob.enrich([str(path)], settings=settings_for(sb, chunk_size=500))
        next(it)
        it.close()
        assert list(it) == []


def test_a_job_is_durably_delivered_before_the_next_jobs_first_row(tmp_path: Path) -> None:
    """The next job is read while the last one's mark is written, but its first row comes
    only once the journal holds that mark: at every change of job, the one before is in."""
    values = make_ids(1_500)
    path = write_ids(tmp_path / "ids.txt", values)
    journal = tmp_path / "run.journal"
    with bulkjob.Sandbox.running() as sb:
        s = settings_for(sb, chunk_size=100)
        seen: list[str] = []
        for row in bulkjob.enrich([str(path)], settings=s, journal=journal):
            if seen and row.job_id != seen[-1]:
                delivered = {r.job_id for r in journal_rows(journal).values() if r.delivered_at}
                assert set(seen) <= delivered
            if not seen or row.job_id != seen[-1]:
                seen.append(row.job_id)
        assert len(seen) == 15
        assert {r.job_id for r in journal_rows(journal).values() if r.delivered_at} == set(seen)


def test_the_rows_iterator_outlives_its_enriched(tmp_path: Path) -> None:
    """``iter(it)`` kept and ``it`` let go (a helper that peeks the first row and hands
    back the rest): the stream still gives every row, never ends early and silently.
    (From a hostile review: the Enriched stopped the run when it was collected.)"""
    n, chunk = 500, 100
    path = write_ids(tmp_path / "ids.txt", make_ids(n))

    def first_and_rest(s: bulkjob.Settings) -> tuple[Row, Iterator[Row]]:
        it = bulkjob.enrich([str(path)], settings=s, journal=tmp_path / "run.journal")
        first = next(it)
        return first, iter(it)

    with bulkjob.Sandbox.running() as sb:
        first, rest = first_and_rest(settings_for(sb, chunk_size=chunk))
        rows = [first, *rest]
    assert len(rows) == n, f"the stream ended after {len(rows)} of {n} rows"


def test_a_rows_job_id_can_be_set(tmp_path: Path) -> None:
    """``row.job_id`` is settable on a row from enrich as on a copy of it (a plain Row)."""
    path = write_ids(tmp_path / "ids.txt", make_ids(10))
    with bulkjob.Sandbox.running() as sb:
        rows = list(bulkjob.enrich([str(path)], settings=settings_for(sb, chunk_size=10)))
    job = rows[0].job_id
    assert job and isinstance(rows[0], Row)
    copied = pickle.loads(pickle.dumps(rows[0]))
    copied.job_id = "tagged"
    rows[0].job_id = "tagged"
    assert rows[0].job_id == copied.job_id == "tagged"
    assert rows[1].job_id == job  # the other rows of the job keep theirs
