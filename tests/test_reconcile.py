"""Tests for matching unanswered submits against the account's job list."""

from __future__ import annotations

from bulkjob._reconcile import UNRESOLVED, Ambiguous, RemoteJob, _job, match


def test_no_unknown_job_means_not_accepted() -> None:
    """Only known jobs in the list: the unanswered chunk was not accepted."""
    out = match([Ambiguous(1, 100, 1000.0)], [RemoteJob("known", 100, 1000.1)], {"known"}, 60)
    assert out == {1: None}


def test_as_many_jobs_as_chunks_pairs_them_in_time_order() -> None:
    """Two unanswered chunks, two unknown jobs of their size: paired by time."""
    chunks = [Ambiguous(2, 100, 1001.0), Ambiguous(1, 100, 1000.0)]
    jobs = [RemoteJob("b", 100, 1001.1), RemoteJob("a", 100, 1000.1)]
    assert match(chunks, jobs, set(), 60) == {1: "a", 2: "b"}


def test_other_sizes_are_not_candidates() -> None:
    """An unknown job of another size is not this chunk's."""
    out = match([Ambiguous(1, 100, 1000.0)], [RemoteJob("x", 99, 1000.1)], set(), 60)
    assert out == {1: None}


def test_unknown_size_is_never_a_mismatch() -> None:
    """A job whose size the list does not give makes the chunk unresolved, not resent."""
    out = match([Ambiguous(1, 100, 1000.0)], [RemoteJob("x", None, 1000.1)], set(), 60)
    assert out == {1: UNRESOLVED}


def test_timing_decides_between_two_sends() -> None:
    """With known jobs to calibrate, one job is paired with the send it fits."""
    known = {f"k{i}": 990.0 + i for i in range(4)}
    jobs = [RemoteJob(k, 100, t + 0.01) for k, t in known.items()]
    jobs.append(RemoteJob("new", 100, 1000.31))
    chunks = [Ambiguous(7, 100, 1000.0), Ambiguous(8, 100, 1000.3)]
    assert match(chunks, jobs, set(known), 60, known) == {7: None, 8: "new"}


def test_timing_that_fits_both_is_unresolved() -> None:
    """A job that fits either send is never guessed."""
    known = {f"k{i}": 990.0 + i for i in range(4)}
    jobs = [RemoteJob(k, 100, t + 0.01) for k, t in known.items()]
    jobs.append(RemoteJob("new", 100, 1000.01))
    chunks = [Ambiguous(7, 100, 1000.0), Ambiguous(8, 100, 1000.0)]
    assert match(chunks, jobs, set(known), 60, known) == {7: UNRESOLVED, 8: UNRESOLVED}


def test_list_items_are_read_from_several_field_names() -> None:
    """Counts and times are read from the usual names; zero credits mean size unknown."""
    assert _job({"jobId": "a", "totalRecords": "10", "createdDate": "2026-01-01T00:00:00Z"}) == (
        RemoteJob("a", 10, 1767225600.0)
    )
    assert _job({"jobId": "b", "creditsConsumed": 0}).ids is None
    assert _job({"jobId": "c", "creditsConsumed": 42}).ids == 42
