"""The sandbox's settings: one mutable dataclass, validated where it is built.

:class:`SandboxConfig` is mutable on purpose: tests change it while the server runs
(``sandbox.config.quota = 10``). ``__post_init__`` refuses a bad value with a
:class:`~bulkjob._errors.ConfigError` naming the field, instead of letting it surface later as
a confusing server-side exception mid-test.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ._errors import ConfigError

__all__ = ["GARBAGE_KINDS", "SandboxConfig"]

#: What a 200 answer to an accepted submit can be garbled into (``accept_then_garbage_rate``):
#: a body cut off mid-way, a well-formed body without ``jobId``, an HTML page.
GARBAGE_KINDS = ("truncated", "no_job_id", "html")

_RATES = (
    "fault_5xx_rate",
    "drop_rate",
    "drop_after_accept_rate",
    "accept_then_5xx_rate",
    "accept_then_garbage_rate",
    "job_fail_rate",
    "no_match_rate",
)
_DURATIONS = ("token_lifetime", "latency", "processing_after", "finished_after", "list_lag")


@dataclass(kw_only=True)
class SandboxConfig:
    """How the sandbox behaves. Mutable on purpose: tests change it while the server runs."""

    access_tokens: tuple[str, ...] = ("sandbox-token",)
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    token_lifetime: float = 3600.0
    throttle_requests: int | None = None
    throttle_window: float = 300.0
    lockout: bool = True
    #: How long a lockout lasts; None = one throttle window.
    lockout_seconds: float | None = None
    retry_after: bool = False
    quota: int | None = None
    running_job_limit: int | None = None
    processing_after: float = 0.0
    finished_after: float = 0.0
    #: Share of jobs (drawn at acceptance) that end ``failed`` instead of ``finished``.
    job_fail_rate: float = 0.0
    #: Whether a failed job's results are served (200) or refused (400).
    failed_results: bool = False
    #: Share of ids (fixed per id, from its hash) that come back in the results as not found.
    no_match_rate: float = 0.0
    #: Name of the results' id column for every kind; None = the kind's own name.
    results_id_column: str | None = None
    #: Seconds a job waits after acceptance before ``GET /admin/jobs`` lists it.
    list_lag: float = 0.05
    #: Seconds added to the server's wall clock (Date header, created times, token expiry).
    clock_skew: float = 0.0
    max_ids_per_job: int = 10_000
    id_pattern: str | None = r"[A-Za-z0-9_-]{64}"
    fault_5xx_rate: float = 0.0
    #: Simulated 5xx answers are a gateway's HTML page instead of the API's error body.
    fault_html: bool = False
    latency: float = 0.0
    drop_rate: float = 0.0
    drop_after_accept_rate: float = 0.0
    accept_then_5xx_rate: float = 0.0
    accept_then_garbage_rate: float = 0.0
    garbage_kinds: tuple[str, ...] = GARBAGE_KINDS
    seed: int | None = 0
    track_ids: bool = True

    def __post_init__(self) -> None:
        for name in _RATES:
            _check(name, getattr(self, name), 0.0, 1.0)
        for name in _DURATIONS:
            _check(name, getattr(self, name), 0.0, math.inf)
        if self.lockout_seconds is not None:
            _check("lockout_seconds", self.lockout_seconds, 0.0, math.inf)
        if not math.isfinite(self.clock_skew):
            raise ConfigError(
                f"clock_skew: must be a finite number of seconds, got {self.clock_skew}"
            )
        _check("throttle_window", self.throttle_window, 1e-6, math.inf)
        for name in ("throttle_requests", "running_job_limit"):
            value = getattr(self, name)
            if value is not None:
                _check(name, value, 1, math.inf)
        if self.quota is not None:
            _check("quota", self.quota, 0, math.inf)
        _check("max_ids_per_job", self.max_ids_per_job, 1, math.inf)
        if self.id_pattern is not None:
            try:
                re.compile(self.id_pattern)
            except re.error as exc:
                raise ConfigError(f"id_pattern: invalid regular expression: {exc}") from None
        unknown = [k for k in self.garbage_kinds if k not in GARBAGE_KINDS]
        if unknown or not self.garbage_kinds:
            raise ConfigError(
                f"garbage_kinds: must be one or more of {', '.join(GARBAGE_KINDS)}, "
                f"got {', '.join(self.garbage_kinds) or 'none'}"
            )
        column = self.results_id_column
        # The column name is written into a CSV header as is: a comma, quote or line break
        # would make a header the client cannot be expected to parse back to this name.
        if column is not None and (not column or any(c in column for c in ',"\r\n')):
            raise ConfigError(
                f"results_id_column: must be a non-empty name without commas, quotes or "
                f"line breaks, got {column!r}"
            )


def _check(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}: must be from {low:g} to {high:g}, got {value}")
