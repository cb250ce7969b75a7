"""Exceptions raised by bulkjob.

The tree is shallow on purpose; the CLI maps each branch to one exit code::

    BulkJobError
    ├── ConfigError              bad setting, flag, env var or config file     (exit 2)
    ├── InputError               unreadable / malformed input, with file:line  (exit 2)
    ├── AuthError                401 after a token refresh, 405, bad creds     (exit 5)
    ├── QuotaExhaustedError      400: not enough transaction credits left      (exit 3)
    ├── QueueFullError           400: too many jobs running for the account    (exit 4)
    ├── JobRejectedError         400: the server refused this job's input      (exit 6)
    ├── ProtocolError            415 or an answer bulkjob cannot understand    (exit 1)
    ├── AmbiguousError           a submit got no answer and can't be reconciled (exit 8)
    └── TransportError           5xx / timeouts / resets after every retry     (exit 7)
        └── ThrottledError       429 and still 429 after every pause           (exit 7)

Every error carries the context it was raised in as attributes, never a secret:
request errors keep the HTTP status, the server's ``errorNumber`` and message, and
the chunk sequence number when one was being sent.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousError",
    "AuthError",
    "BulkJobError",
    "ConfigError",
    "InputError",
    "JobRejectedError",
    "ProtocolError",
    "QueueFullError",
    "QuotaExhaustedError",
    "ThrottledError",
    "TransportError",
]


class BulkJobError(Exception):
    """Root of every error bulkjob raises on purpose."""


class ConfigError(BulkJobError, ValueError):
    """A setting is out of range, unknown, or malformed."""


class InputError(BulkJobError):
    """An input cannot be used; names the file, the line (0 when unknown) and the problem."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}")


class RequestError(BulkJobError):
    """Base for errors that come from one HTTP exchange with the API."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_number: str | None = None,
        server_message: str | None = None,
        chunk: int | None = None,
    ) -> None:
        self.status = status
        self.error_number = error_number
        self.server_message = server_message
        self.chunk = chunk
        super().__init__(message)

    def __str__(self) -> str:
        parts = [super().__str__()]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.error_number:
            parts.append(f"errorNumber {self.error_number}")
        if self.server_message:
            parts.append(f"server said: {self.server_message}")
        if self.chunk is not None:
            parts.append(f"chunk {self.chunk}")
        return " | ".join(parts)


class AuthError(RequestError):
    """The credentials were refused (401 after one refresh, 405, or the token endpoint said no)."""


class QuotaExhaustedError(RequestError):
    """The account has fewer transaction credits left than the job needs."""


class QueueFullError(RequestError):
    """The account already has as many jobs queued or running as it may."""


class JobRejectedError(RequestError):
    """The server refused one job's input (a 400 that is neither quota nor queue-full)."""


class ProtocolError(RequestError):
    """The server answered in a way bulkjob cannot use (415, unparseable body, ...)."""


class AmbiguousError(RequestError):
    """A submit may have been accepted (no answer came back) and the job list can't tell."""


class TransportError(RequestError):
    """The request kept failing (5xx, timeouts, dropped connections) past every retry."""


class ThrottledError(TransportError):
    """The server kept answering 429 past every pause."""
