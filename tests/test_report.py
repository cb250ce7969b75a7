"""Tests for the run report: the accounting invariant, JSON output, scrubbed messages."""

from __future__ import annotations

import json
from pathlib import Path

from bulkjob._logging import REDACTED, register_secret
from bulkjob._report import JobInfo, RejectedChunk, RunReport

SECRET = "report-secret-Qx81"


def balanced() -> RunReport:
    """A report whose buckets add up to ids_read."""
    return RunReport(
        ids_read=100,
        ids_submitted=60,
        ids_invalid=10,
        ids_duplicate=5,
        ids_rejected=15,
        ids_pending=10,
        jobs=[JobInfo("job1", 1, 60, "a.txt:1", "a.txt:70")],
        rejected=[RejectedChunk(2, 15, "a.txt:71", "a.txt:85", "bad id", 400, "400-105")],
        pending_chunks=[3],
        invalid_samples=["a.txt:9: 'x': does not match id_pattern"],
        stop_reason="quota",
        stop_message="transaction quota exhausted",
        settings={"chunk_size": 60, "quota_patterns": ["quota"]},
    )


def test_accounted_when_buckets_add_up() -> None:
    """accounted is True when every id read is in one bucket."""
    assert balanced().accounted


def test_not_accounted_when_an_id_is_missing() -> None:
    """accounted is False when the buckets fall short of ids_read."""
    report = balanced()
    report.ids_pending -= 1
    assert not report.accounted


def test_not_accounted_when_an_id_is_counted_twice() -> None:
    """accounted is False when the buckets exceed ids_read."""
    report = balanced()
    report.ids_submitted += 1
    assert not report.accounted


def test_empty_report_is_accounted_and_ok() -> None:
    """A fresh report is trivially accounted and ok."""
    report = RunReport()
    assert report.accounted
    assert report.ok


def test_ok_false_on_stop_rejection_or_pending() -> None:
    """ok needs no stop reason, no rejected chunk and nothing pending."""
    assert not balanced().ok
    assert not RunReport(ids_read=1, ids_pending=1).ok
    assert not RunReport(rejected=[RejectedChunk(1, 1, "a:1", "a:1", "r")]).ok


def test_to_dict_includes_accounted() -> None:
    """to_dict carries every field plus the accounted flag."""
    data = balanced().to_dict()
    assert data["accounted"] is True
    assert data["jobs"] == [
        {"job_id": "job1", "chunk": 1, "ids": 60, "first": "a.txt:1", "last": "a.txt:70"}
    ]
    assert data["rejected"][0]["error_number"] == "400-105"  # type: ignore[index]


def test_write_json_round_trip(tmp_path: Path) -> None:
    """write_json writes exactly to_dict() as JSON, creating the directory."""
    report = balanced()
    target = tmp_path / "out" / "report.json"
    report.write_json(target)
    assert json.loads(target.read_text(encoding="utf-8")) == report.to_dict()
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_write_json_replaces_existing(tmp_path: Path) -> None:
    """Writing twice leaves the newer report, whole."""
    target = tmp_path / "report.json"
    RunReport(ids_read=1, ids_pending=1).write_json(target)
    balanced().write_json(target)
    assert json.loads(target.read_text(encoding="utf-8"))["ids_read"] == 100


def test_stop_message_secret_scrubbed() -> None:
    """A secret inside stop_message is redacted in to_dict and in the summary."""
    register_secret(SECRET)
    report = balanced()
    report.stop_message = f"access token {SECRET} refused"
    assert report.to_dict()["stop_message"] == f"access token {REDACTED} refused"
    assert SECRET not in report.summary()


def test_stop_message_secret_scrubbed_on_disk(tmp_path: Path) -> None:
    """The written report file never holds a registered secret."""
    register_secret(SECRET)
    report = balanced()
    report.stop_message = f"token {SECRET}"
    report.write_json(tmp_path / "r.json")
    assert SECRET not in (tmp_path / "r.json").read_text(encoding="utf-8")


def test_summary_names_counts_and_stop() -> None:
    """The summary shows the buckets, rejected chunks and the stop reason."""
    text = balanced().summary()
    assert "ids read 100: submitted 60 in 1 jobs" in text
    assert "rejected chunk 2 (a.txt:71..a.txt:85): bad id" in text
    assert text.splitlines()[-1] == "stopped: quota: transaction quota exhausted"
