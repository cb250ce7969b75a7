"""Tests for what an answer proves: the pure classification of submits and other calls."""

from __future__ import annotations

import json

import pytest

from bulkjob._answers import (
    Accepted,
    Answered,
    ErrorRules,
    Lost,
    Refused,
    Reply,
    Retry,
    Throttled,
    TokenRefused,
    Unknown,
    classify_call,
    classify_submit,
)
from bulkjob._errors import (
    AuthError,
    JobRejectedError,
    ProtocolError,
    QueueFullError,
    QuotaExhaustedError,
)
from bulkjob._settings import Settings

RULES = ErrorRules.from_settings(Settings())
JSON = "application/json"
HTML = "text/html"


def error_body(number: str, message: str, status: int = 400) -> str:
    """The documented error body."""
    return json.dumps(
        {"errorType": "Bad Request", "status": status, "errorNumber": number, "message": message}
    )


def test_200_with_job_id_is_accepted() -> None:
    """A 200 carrying a jobId is an acceptance, in JSON or XML."""
    ok = Reply(200, JSON, '{"jobId": "abc", "status": "accepted", "type": "t"}')
    assert classify_submit(ok, RULES) == Accepted("abc", "accepted", "t")
    xml = "<BulkJobStatus><jobId>x1</jobId><status>accepted</status></BulkJobStatus>"
    assert classify_submit(Reply(200, "application/xml", xml), RULES) == Accepted(
        "x1", "accepted", ""
    )


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (JSON, '{"jobId": "abc", "sta'),  # truncated
        (JSON, '{"status": "accepted", "type": "targetContactDetails"}'),  # no jobId
        (JSON, '{"jobId": ""}'),  # empty jobId
        (HTML, "<html><body>OK</body></html>"),  # a proxy's page
        (JSON, ""),  # nothing at all
    ],
)
def test_200_without_a_usable_job_id_is_unknown(content_type: str, body: str) -> None:
    """A 200 that does not name its job proves nothing either way: the outcome is unknown."""
    verdict = classify_submit(Reply(200, content_type, body), RULES)
    assert isinstance(verdict, Unknown)
    assert verdict.status == 200


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@pytest.mark.parametrize(
    ("content_type", "body"),
    [(JSON, error_body("500-100", "fault")), (HTML, "<html>Bad Gateway</html>")],
)
def test_every_5xx_to_a_submit_is_unknown(status: int, content_type: str, body: str) -> None:
    """A 5xx, with an error body or an HTML page, may come after acceptance: unknown."""
    verdict = classify_submit(Reply(status, content_type, body), RULES)
    assert verdict == Unknown(verdict.reason, status)  # type: ignore[union-attr]


def test_lost_answer_is_unknown_unless_nothing_was_sent() -> None:
    """A dropped connection is unknown; a connection never made is a safe retry."""
    assert isinstance(classify_submit(Lost("reset", sent=True), RULES), Unknown)
    assert classify_submit(Lost("refused", sent=False), RULES) == Retry("refused")


def test_429_is_throttled_whatever_its_body() -> None:
    """A 429 proves nothing was done, with or without an error body."""
    assert classify_submit(Reply(429, HTML, "<html/>", 7.0), RULES) == Throttled(7.0)


@pytest.mark.parametrize(
    ("number", "message", "kind"),
    [
        ("400-201", "Insufficient transaction quota available", QuotaExhaustedError),
        ("400-301", "2 jobs are already running. Please try again", QueueFullError),
        ("400-105", "Invalid id on line 3", JobRejectedError),
    ],
)
def test_400_with_an_error_body_is_a_proven_refusal(number: str, message: str, kind: type) -> None:
    """A 400 with the documented body is refused before any job: quota, queue full, rejected."""
    verdict = classify_submit(Reply(400, JSON, error_body(number, message)), RULES, chunk=4)
    assert isinstance(verdict, Refused)
    assert type(verdict.error) is kind
    assert (verdict.error.error_number, verdict.error.chunk) == (number, 4)


def test_400_without_an_error_body_is_unknown() -> None:
    """A 400 page that is not the API's error body proves nothing: unknown."""
    verdict = classify_submit(Reply(400, HTML, "<html>Bad Request</html>"), RULES)
    assert isinstance(verdict, Unknown)


def test_401_403_405_415_with_error_body() -> None:
    """Documented refusals: 401 asks for a new token; 403/405 are auth; 415 is protocol."""
    body = error_body("401-101", "Cannot use API's without a valid accessToken", 401)
    assert isinstance(classify_submit(Reply(401, JSON, body), RULES), TokenRefused)
    for status, kind in ((403, AuthError), (405, AuthError), (415, ProtocolError)):
        verdict = classify_submit(Reply(status, JSON, error_body(f"{status}-1", "no")), RULES)
        assert isinstance(verdict, Refused)
        assert type(verdict.error) is kind


def test_calls_retry_5xx_and_lost_answers() -> None:
    """For idempotent requests a 5xx or a lost answer is simply retried."""
    assert classify_call(Reply(503, HTML, "<html/>"), RULES) == Retry("server error 503", 503)
    assert isinstance(classify_call(Lost("reset", sent=True), RULES), Retry)
    ok = Reply(200, JSON, "{}")
    assert classify_call(ok, RULES) == Answered(ok)
    assert isinstance(classify_call(Reply(401, HTML, "no"), RULES), TokenRefused)
    refused = classify_call(Reply(404, JSON, error_body("404-101", "Invalid ID", 404)), RULES)
    assert isinstance(refused, Refused)
    assert refused.error.status == 404
