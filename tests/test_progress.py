"""Tests for the progress line."""

from __future__ import annotations

import io

from bulkjob._progress import Progress, format_duration
from bulkjob.cli._progress_line import ProgressLine


def _snap(**kw: object) -> Progress:
    base: dict[str, object] = dict(
        ids_total=100_000,
        ids_read=50_000,
        ids_submitted=40_000,
        jobs=4,
        throttled=1,
        requests=6,
        elapsed_s=10.0,
        stopping=None,
    )
    base.update(kw)
    return Progress(**base)  # type: ignore[arg-type]


def test_render_shows_rate_jobs_throttled_and_eta() -> None:
    """The line carries ids/s, jobs, throttled and an ETA from the current rate."""
    text = ProgressLine(io.StringIO(), enabled=True).render(_snap())
    assert "4,000 ids/s" in text and "4 jobs" in text and "throttled 1" in text
    assert "ETA 15s" in text


def test_silent_when_not_a_tty() -> None:
    """Nothing is written to a stream that is not a terminal."""
    out = io.StringIO()
    line = ProgressLine(out)
    line.update(_snap())
    line.close()
    assert out.getvalue() == ""


def test_redraws_in_place_and_ends_the_line() -> None:
    """Updates return to the line start; close() ends the line once."""
    out = io.StringIO()
    line = ProgressLine(out, enabled=True)
    line.update(_snap())
    line.update(_snap(stopping="quota"))
    line.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and "stopping (quota)" in text


def test_format_duration() -> None:
    """Durations read as s, m+s, h+m."""
    assert [format_duration(x) for x in (5, 75, 4000)] == ["5s", "1m15s", "1h06m"]


def test_log_lines_print_above_the_progress_line() -> None:
    """A log line written in pieces lands on its own line and the progress is redrawn."""
    out = io.StringIO()
    line = ProgressLine(out, enabled=True)
    line.update(_snap())
    line.write("request.retrying attempt=1")
    line.write("\n")
    line.close()
    text = out.getvalue()
    # Wiped once before the log line, redrawn once after it.
    assert text.count("\r\x1b[K") == 1
    assert "request.retrying attempt=1\n" in text
    assert text.count("ids submitted") == 2
