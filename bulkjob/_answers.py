"""What an API answer proves: pure functions from one HTTP exchange to a typed verdict.

The submit POST has no idempotency key, so its answers are read for what they *prove*.
A resend is safe only when the answer proves that no job was created; anything that
does not prove it leaves the outcome **unknown**, and the chunk is parked until the
account's jobs prove it either way (see :mod:`bulkjob._submitter`). The rule, explicit
and conservative:

=====================================================  ===================================
answer to a submit                                     verdict
=====================================================  ===================================
200 with a ``jobId``                                   accepted
429 (any body)                                         throttled: not accepted, resend
400 with the documented error body                     refused: quota, queue full, rejected
401 with the documented error body                     token refused: not accepted, resend
403 / 405 / 413 / 415 with the documented error body   refused (auth, protocol)
407 (a proxy's answer, sent instead of forwarding)     not sent; the client raises
                                                       ProxyRefusedError: the run stops
connection refused (nothing was sent)                  not sent: resend with backoff
                                                       (never answered yet in this command:
                                                       the client raises UnreachableError)
200 without a usable ``jobId`` (truncated, HTML, ...)  **unknown**
any 5xx, any HTML or unreadable error page             **unknown**
connection dropped or timed out after sending          **unknown**
anything else                                          **unknown**
=====================================================  ===================================

Other requests (status, job list, usage, results, cancel) change nothing that a repeat
could pay for twice: a 5xx or a lost answer there is simply retried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

from ._errors import (
    AuthError,
    JobRejectedError,
    ProtocolError,
    QueueFullError,
    QuotaExhaustedError,
    RequestError,
)
from ._logging import redact
from ._settings import Settings
from ._wire import ErrorBody, parse_body

__all__ = [
    "Accepted",
    "Answered",
    "ErrorRules",
    "Lost",
    "Refused",
    "Reply",
    "Retry",
    "Throttled",
    "TokenRefused",
    "Unknown",
    "classify_call",
    "classify_submit",
]


# -- what came back --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer, read in full (or streamed to a file: ``written`` bytes)."""

    status: int
    content_type: str
    text: str
    retry_after: float | None = None
    written: int = 0


@dataclass(frozen=True, slots=True)
class Lost:
    """No answer. ``sent`` is False only when the connection was never established."""

    reason: str
    sent: bool


# -- what it means ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """The server queued a job."""

    job_id: str
    status: str
    job_type: str


@dataclass(frozen=True, slots=True)
class Answered:
    """A 200 to a request that is not a submit."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Throttled:
    """429: nothing was done; pause, then send again."""

    retry_after: float | None


@dataclass(frozen=True, slots=True)
class TokenRefused:
    """401: nothing was done; a fresh token may help once."""

    error: AuthError


@dataclass(frozen=True, slots=True)
class Refused:
    """The server said no, and its answer proves nothing was created."""

    error: RequestError


@dataclass(frozen=True, slots=True)
class Retry:
    """Safe to send again after a backoff: nothing was sent, or the request is idempotent."""

    reason: str
    status: int | None = None


@dataclass(frozen=True, slots=True)
class Unknown:
    """A submit that may have created a job: never resent before a proof."""

    reason: str
    status: int | None = None


SubmitVerdict: TypeAlias = Accepted | Throttled | TokenRefused | Refused | Retry | Unknown
CallVerdict: TypeAlias = Answered | Throttled | TokenRefused | Refused | Retry


@dataclass(frozen=True, slots=True)
class ErrorRules:
    """How a 400 is told apart: quota exhausted, queue full, or this job rejected."""

    quota: re.Pattern[str]
    queue_full: re.Pattern[str]
    quota_numbers: frozenset[str]
    queue_full_numbers: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> ErrorRules:
        """Compile the settings' patterns once."""
        return cls(
            _any_of(settings.quota_patterns),
            _any_of(settings.queue_full_patterns),
            frozenset(settings.quota_error_numbers),
            frozenset(settings.queue_full_error_numbers),
        )

    def error_for(self, status: int, body: ErrorBody | None, chunk: int | None) -> RequestError:
        """The error a refusal with this status and body stands for."""
        message = redact(body.message or "") if body is not None else None
        number = body.error_number if body is not None else None
        ctx = {"status": status, "error_number": number, "server_message": message, "chunk": chunk}
        if status == 400:
            text = f"{number or ''} {message or ''}"
            if number in self.quota_numbers or self.quota.search(text):
                return QuotaExhaustedError("transaction quota exhausted", **ctx)  # type: ignore[arg-type]
            if number in self.queue_full_numbers or self.queue_full.search(text):
                return QueueFullError("too many jobs queued", **ctx)  # type: ignore[arg-type]
            return JobRejectedError("job rejected", **ctx)  # type: ignore[arg-type]
        if status == 401:
            return AuthError("access token refused", **ctx)  # type: ignore[arg-type]
        if status in (403, 405):
            return AuthError("not allowed to use this API", **ctx)  # type: ignore[arg-type]
        if status == 415:
            return ProtocolError("content type refused", **ctx)  # type: ignore[arg-type]
        return ProtocolError(f"unexpected answer {status}", **ctx)  # type: ignore[arg-type]


#: 4xx answers whose documented error body proves the request was refused before a job
#: could exist. 429 needs no body: throttling happens before anything else.
_PROVEN_REFUSALS = frozenset({400, 401, 403, 405, 413, 415})


def classify_submit(
    answer: Reply | Lost, rules: ErrorRules, chunk: int | None = None
) -> SubmitVerdict:
    """What the answer to a job submit proves (see the module's table)."""
    if isinstance(answer, Lost):
        return Unknown(answer.reason) if answer.sent else Retry(answer.reason)
    status = answer.status
    if status == 429:
        return Throttled(answer.retry_after)
    if status == 200:
        data = parse_body(answer.content_type, answer.text)
        job_id = data.get("jobId")
        if isinstance(job_id, str) and job_id.strip():
            status_text = str(data.get("status") or "accepted")
            return Accepted(job_id.strip(), status_text, str(data.get("type") or ""))
        return Unknown(f"a 200 answer without a usable jobId: {_excerpt(answer.text)}", 200)
    body = ErrorBody.parse(answer.content_type, answer.text)
    if status in _PROVEN_REFUSALS and body is not None:
        error = rules.error_for(status, body, chunk)
        if status == 401:
            assert isinstance(error, AuthError)
            return TokenRefused(error)
        return Refused(error)
    what = "server error" if status >= 500 else "answer"
    return Unknown(f"{what} {status}: {_excerpt(answer.text)}", status)


def classify_call(answer: Reply | Lost, rules: ErrorRules) -> CallVerdict:
    """What the answer to an idempotent request (status, list, results, cancel) means."""
    if isinstance(answer, Lost):
        return Retry(answer.reason)
    status = answer.status
    if status == 200:
        return Answered(answer)
    if status == 429:
        return Throttled(answer.retry_after)
    if status >= 500:
        return Retry(f"server error {status}", status)
    body = ErrorBody.parse(answer.content_type, answer.text)
    if body is None:
        body = ErrorBody(None, None, _excerpt(answer.text) or None)
    error = rules.error_for(status, body, None)
    if status == 401:
        assert isinstance(error, AuthError)
        return TokenRefused(error)
    return Refused(error)


def _excerpt(text: str) -> str:
    """The start of a body, on one line, secrets scrubbed: for messages, never parsed."""
    return redact(" ".join(text.split()))[:120] or "(empty body)"


def _any_of(patterns: tuple[str, ...]) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)
