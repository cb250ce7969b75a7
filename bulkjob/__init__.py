"""bulkjob: push millions of ids through InsideView-style bulk job APIs, throttle-safe.

Streams ids from large inputs, cuts them into jobs of at most 10,000, submits them
concurrently under a sliding-window limiter, retries transient failures, stops cleanly
on quota / queue-full errors, and accounts for every id in a :class:`RunReport`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._enrich import Row
from ._enrich_iter import Enriched, EnrichedAsync, enrich, enrich_async
from ._errors import (
    AmbiguousError,
    AuthError,
    BulkJobError,
    ConfigError,
    InputError,
    JobRejectedError,
    JobsFailedError,
    JournalError,
    JournalLockedError,
    ProtocolError,
    ProxyRefusedError,
    QueueFullError,
    QuotaExhaustedError,
    RequestError,
    ThrottledError,
    TransportError,
    UnreachableError,
    WaitTimeoutError,
)
from ._lifecycle import ResultsSummary
from ._plan import Plan
from ._report import FailedJob, JobInfo, RejectedChunk, RunReport, RunStatus
from ._runner import Progress, Runner
from ._settings import Settings, SettingsValues
from ._sync import (
    plan,
    plan_async,
    results,
    results_async,
    resume,
    resume_async,
    submit,
    submit_async,
    wait,
    wait_async,
)

if TYPE_CHECKING:
    from . import sandbox as sandbox
    from .sandbox import Sandbox, SandboxConfig

    __version__: str


_LAZY = ("Sandbox", "SandboxConfig", "__version__", "sandbox")

if not TYPE_CHECKING:  # type checkers see the imports above: a misspelt name stays an error

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})

    def __getattr__(name: str) -> object:
        """The sandbox and the version, looked up when first asked for: a command-line run
        (``python -m bulkjob submit``) then starts without importing the sandbox's server or
        searching the installed packages' metadata, which several runs starting at once on
        a small host feel."""
        if name in ("Sandbox", "SandboxConfig", "sandbox"):
            import importlib

            sandbox = importlib.import_module(".sandbox", __name__)
            value = sandbox if name == "sandbox" else getattr(sandbox, name)
        elif name == "__version__":
            from importlib.metadata import PackageNotFoundError, version

            try:
                value = version("bulkjob")
            except PackageNotFoundError:  # pragma: no cover - running from a source tree
                value = "0+unknown"
        else:
            raise AttributeError(f"module 'bulkjob' has no attribute {name!r}")
        globals()[name] = value
        return value


__all__ = [
    "AmbiguousError",
    "AuthError",
    "BulkJobError",
    "ConfigError",
    "Enriched",
    "EnrichedAsync",
    "FailedJob",
    "InputError",
    "JobInfo",
    "JobRejectedError",
    "JobsFailedError",
    "JournalError",
    "JournalLockedError",
    "Plan",
    "Progress",
    "ProtocolError",
    "ProxyRefusedError",
    "QueueFullError",
    "QuotaExhaustedError",
    "RejectedChunk",
    "RequestError",
    "ResultsSummary",
    "Row",
    "RunReport",
    "RunStatus",
    "Runner",
    "Sandbox",
    "SandboxConfig",
    "Settings",
    "SettingsValues",
    "ThrottledError",
    "TransportError",
    "UnreachableError",
    "WaitTimeoutError",
    "__version__",
    "enrich",
    "enrich_async",
    "plan",
    "plan_async",
    "results",
    "results_async",
    "resume",
    "resume_async",
    "submit",
    "submit_async",
    "wait",
    "wait_async",
]
