"""Every exception bulkjob raises, and the one table of exit codes the CLI derives from them.

The tree is shallow on purpose; each branch carries its exit code and the stop reason a
run reports when it ends on it::

    BulkJobError                                                           exit
    ├── ConfigError              bad setting, flag, env var or config file     2
    ├── InputError               unreadable / malformed input, with file:line  2
    ├── JournalError             the journal cannot be written (11), or the
    │                            path is no usable journal (2)
    │   └── JournalLockedError   another process holds the journal            10
    ├── StopRequested            the run is stopping: a send was held back   130
    ├── WaitTimeoutError         ``wait`` ran out of time, jobs still open     9
    ├── IncompleteError          ``wait``: every job final, chunks not sent   12
    ├── JobsFailedError          ``enrich``: jobs failed/aborted, chunks        6
    │                            rejected: their ids have no rows
    └── RequestError             one HTTP exchange with the API went wrong
        ├── AuthError            credentials refused (401 twice, 403, 405)     5
        ├── QuotaExhaustedError  400: not enough transaction credits left      3
        ├── QueueFullError       400: too many jobs running for the account    4
        ├── JobRejectedError     400: the server refused this job's input      6
        ├── ProtocolError        415, or an answer bulkjob cannot use          1
        ├── AmbiguousError       a submit's outcome cannot be proven           8
        └── TransportError       5xx / timeouts / resets after every retry     7
            ├── ThrottledError   429 and still 429 after every pause           7
            └── UnreachableError no connection at the first try (wrong URL,    7
                                 no such host, nothing listening): not retried

Errors are translated where they enter (``raise ... from exc``) and carry the context
they were raised in as attributes, never a secret: request errors keep the HTTP
status, the server's ``errorNumber`` and message, and the chunk sequence number.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar, Literal

__all__ = [
    "STOP_EXIT_CODES",
    "AmbiguousError",
    "AuthError",
    "BulkJobError",
    "ConfigError",
    "ExitCode",
    "IncompleteError",
    "InputError",
    "JobRejectedError",
    "JobsFailedError",
    "JournalError",
    "JournalLockedError",
    "OutputError",
    "ProtocolError",
    "QueueFullError",
    "QuotaExhaustedError",
    "RequestError",
    "SandboxRefusal",
    "StopReason",
    "StopRequested",
    "ThrottledError",
    "Transient",
    "TransportError",
    "UnreachableError",
    "WaitTimeoutError",
    "error_for_stop",
    "first_error",
    "stop_reason_for",
]


class ExitCode(IntEnum):
    """The CLI's exit codes (the README's table is this one)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    QUOTA = 3
    QUEUE_FULL = 4
    AUTH = 5
    REJECTED = 6
    TRANSPORT = 7
    AMBIGUOUS = 8
    WAIT_TIMEOUT = 9
    JOURNAL_LOCKED = 10
    JOURNAL = 11
    INCOMPLETE = 12
    INTERRUPTED = 130


#: Why a run stopped before its end (``None`` in a report: it did not).
StopReason = Literal[
    "quota",
    "queue_full",
    "auth",
    "interrupted",
    "transport",
    "protocol",
    "input",
    "ambiguous",
    "journal",
]

#: The exit code of a run that ended on each stop reason.
STOP_EXIT_CODES: dict[StopReason | None, ExitCode] = {
    None: ExitCode.OK,
    "quota": ExitCode.QUOTA,
    "queue_full": ExitCode.QUEUE_FULL,
    "auth": ExitCode.AUTH,
    "transport": ExitCode.TRANSPORT,
    "protocol": ExitCode.INTERNAL,
    "input": ExitCode.USAGE,
    "interrupted": ExitCode.INTERRUPTED,
    "ambiguous": ExitCode.AMBIGUOUS,
    "journal": ExitCode.JOURNAL,
}


class BulkJobError(Exception):
    """Root of every error bulkjob raises on purpose."""

    stop_reason: ClassVar[StopReason] = "protocol"

    @property
    def exit_code(self) -> ExitCode:
        """What the CLI exits with when this error ends a command."""
        return STOP_EXIT_CODES[self.stop_reason]


def stop_reason_for(exc: BulkJobError) -> StopReason:
    """The stop reason an error means (the CLI's exit code follows from it)."""
    return exc.stop_reason


class ConfigError(BulkJobError, ValueError):
    """A setting is out of range, unknown, or malformed."""

    stop_reason = "input"


class InputError(BulkJobError):
    """An input cannot be used; names the file, the line (0 when unknown) and the problem."""

    stop_reason = "input"

    def __init__(self, path: str, line: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line else path
        if line and hasattr(path, "origin_of"):  # ids= (an IdsName): ``ids[i]``
            where = path.origin_of(line)
        super().__init__(f"{where}: {problem}")


class JournalError(BulkJobError):
    """The journal cannot be opened, read or written (a full disk, an I/O error, a file
    that is not a journal). Names the journal and the cause."""

    stop_reason = "journal"

    def __init__(self, path: str, problem: str, *, usable: bool = True) -> None:
        self.path = path
        self.problem = problem
        #: False when the file is not a journal bulkjob can use at all (missing, foreign,
        #: newer): a usage error (exit 2), not a failing disk.
        self.usable = usable
        super().__init__(f"journal {path}: {problem}" if path else problem)

    @property
    def exit_code(self) -> ExitCode:
        """Exit 11 for a journal that cannot be written; 2 for a path that is no journal."""
        return ExitCode.JOURNAL if self.usable else ExitCode.USAGE


class OutputError(JournalError):
    """``bulkjob enrich``'s output cannot be written (a full disk, an I/O error): like a
    journal that cannot be written, a disk to look at (exit 11); the run resumes."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.args = (f"--out {path}: {problem}",)


class StoreError(JournalError):
    """The account's throttle store cannot be written (a full disk, an I/O error): like a
    journal that cannot be written, a disk to look at (exit 11)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.args = (f"throttle store {path}: {problem}",)


class JournalLockedError(JournalError):
    """Another process drives this journal; nothing was changed."""

    def __init__(self, path: str, holder: str) -> None:
        self.holder = holder
        super().__init__(path, f"in use by {holder}; nothing was changed")

    @property
    def exit_code(self) -> ExitCode:
        """Exit 10, apart from other journal errors: waiting and retrying makes sense."""
        return ExitCode.JOURNAL_LOCKED


class StopRequested(BulkJobError):
    """The run is stopping: a submit that had not left yet was not sent."""

    stop_reason = "interrupted"


class WaitTimeoutError(BulkJobError, TimeoutError):
    """``wait`` ran out of time with jobs still open; ``status`` is the last snapshot."""

    def __init__(self, message: str, status: object) -> None:
        super().__init__(message)
        self.status = status

    @property
    def exit_code(self) -> ExitCode:
        """Exit 9: the jobs are fine, only the waiting stopped."""
        return ExitCode.WAIT_TIMEOUT


class IncompleteError(BulkJobError):
    """``wait`` found every job final but chunks of the run not accepted yet (stopped
    before sending, or proven never accepted): ``resume`` sends them."""

    def __init__(self, message: str, status: object) -> None:
        super().__init__(message)
        self.status = status

    @property
    def exit_code(self) -> ExitCode:
        """Exit 12: the jobs are done, the run is not."""
        return ExitCode.INCOMPLETE


class JobsFailedError(BulkJobError):
    """``enrich`` delivered every row it could, but some ids have none: their jobs ended
    ``failed`` or ``aborted``, or their chunks were rejected. Raised at the end of the
    iteration; ``jobs`` holds (job id, chunk, ids, status) per job, ``rejected`` the chunk
    numbers, ``ids`` how many ids in all."""

    def __init__(
        self, message: str, *, jobs: tuple[object, ...], rejected: tuple[int, ...], ids: int
    ) -> None:
        super().__init__(message)
        self.jobs = jobs
        self.rejected = rejected
        self.ids = ids

    @property
    def exit_code(self) -> ExitCode:
        """Exit 6, as a run with rejected jobs: done, but not every id has rows."""
        return ExitCode.REJECTED


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
    """The credentials were refused (401 after one refresh, 403, 405, or the token
    endpoint said no with a 4xx)."""

    stop_reason = "auth"


class QuotaExhaustedError(RequestError):
    """The account has fewer transaction credits left than the job needs."""

    stop_reason = "quota"


class QueueFullError(RequestError):
    """The account already has as many jobs queued or running as it may."""

    stop_reason = "queue_full"


class JobRejectedError(RequestError):
    """The server refused one job's input (a 400 that is neither quota nor queue-full)."""


class ProtocolError(RequestError):
    """The server answered in a way bulkjob cannot use (415, unparseable body, ...)."""


class AmbiguousError(RequestError):
    """A submit may have been accepted and no proof either way can be had: its only
    candidate jobs ended aborted or failed without results."""

    stop_reason = "ambiguous"


class TransportError(RequestError):
    """The request kept failing (5xx, timeouts, dropped connections) past every retry."""

    stop_reason = "transport"


class ThrottledError(TransportError):
    """The server kept answering 429 past every pause."""


class UnreachableError(TransportError):
    """No connection could be made, and none ever was in this command: a wrong URL, a
    name that does not resolve, nothing listening, a proxy that refuses.

    Raised at the first attempt instead of after every retry: a host that has never
    answered is far likelier misconfigured than restarting. Once it has answered (or
    anything was accepted), the same failure is retried with the usual backoff.
    Nothing was sent, so nothing can have been created. ``url`` is the URL aimed at.
    """

    def __init__(self, message: str, *, url: str, chunk: int | None = None) -> None:
        super().__init__(message, chunk=chunk)
        self.url = url


class ProxyRefusedError(UnreachableError):
    """The proxy answered 407 (Proxy Authentication Required): it wants other credentials.

    Only a proxy sends a 407, and it sends it instead of forwarding the request, so
    nothing reached the API and nothing was created. No resend can do better with the
    same credentials: raised at once, whether or not the API answered before (exit 7).
    ``url`` is the URL the refused request was for.
    """

    #: The HTTP status a proxy refuses credentials with.
    STATUS: ClassVar[int] = 407

    def __init__(self, *, url: str, chunk: int | None = None) -> None:
        super().__init__(
            f"the proxy refused the request for {url}: 407 Proxy Authentication Required "
            "(check the proxy's user and password)",
            url=url,
            chunk=chunk,
        )


class Transient(Exception):
    """Internal: one attempt failed in a way that is safe to repeat (the request
    certainly did not create anything, or it is idempotent). Never leaves the package:
    the retry loop turns the last one into a :class:`TransportError`."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class SandboxRefusal(Exception):
    """The sandbox server's own: a request it answers with an error body (status,
    errorNumber, message). Never raised to a client of bulkjob; not a BulkJobError."""

    def __init__(self, status: int, error_number: str, message: str) -> None:
        self.status = status
        self.error_number = error_number
        self.message = message
        super().__init__(f"{status} {error_number}: {message}")


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a task group's failure stands for: its first bulkjob error, else the
    first error at all (a caller wants one error with one exit code, not a group)."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, BulkJobError)), leaves[0])


def error_for_stop(reason: StopReason, message: str) -> BulkJobError:
    """An error that ends a command the way a run that stopped for ``reason`` ends."""
    if reason == "input":
        return InputError("input", 0, message)
    if reason == "journal":
        return JournalError("", message)
    kinds: dict[StopReason, type[RequestError]] = {
        "quota": QuotaExhaustedError,
        "queue_full": QueueFullError,
        "auth": AuthError,
        "transport": TransportError,
        "ambiguous": AmbiguousError,
    }
    if reason == "interrupted":
        return StopRequested(message)
    return kinds.get(reason, ProtocolError)(message)
