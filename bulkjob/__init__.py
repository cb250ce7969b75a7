"""bulkjob: push millions of ids through InsideView-style bulk job APIs, throttle-safe.

Streams ids from large inputs, cuts them into jobs of at most 10,000, submits them
concurrently under a sliding-window limiter, retries transient failures, stops cleanly
on quota / queue-full errors, and accounts for every id in a :class:`RunReport`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

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
from .sandbox import Sandbox, SandboxConfig

try:
    __version__ = version("bulkjob")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

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
