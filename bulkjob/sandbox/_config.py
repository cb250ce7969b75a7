"""The sandbox's settings: one mutable dataclass, validated where it is built or changed.

:class:`SandboxConfig` is mutable on purpose: tests change it while the server runs, either
in-process (``sandbox.config.quota = 10``) or, when the sandbox runs in another process, through
``POST /_sandbox/config`` (see :func:`apply_changes`). Both paths end in ``__post_init__``, so a
bad value is refused with a :class:`~bulkjob._errors.ConfigError` naming the field instead of
surfacing later as a confusing server-side exception mid-test.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .._errors import ConfigError

__all__ = ["GARBAGE_KINDS", "TOKEN_FAULT_KINDS", "SandboxConfig", "apply_changes"]

#: What a 200 answer to an accepted submit can be garbled into (``accept_then_garbage_rate``):
#: a body cut off mid-way, a well-formed body without ``jobId``, an HTML page.
GARBAGE_KINDS = ("truncated", "no_job_id", "html")
#: How the token endpoint can fail (``token_fault_rate``): a 5xx page, a reset connection, or
#: a 200 whose body holds no token.
TOKEN_FAULT_KINDS = ("5xx", "reset", "garbage")

_RATES = (
    "fault_5xx_rate",
    "drop_rate",
    "drop_after_accept_rate",
    "accept_then_5xx_rate",
    "accept_then_garbage_rate",
    "job_fail_rate",
    "no_match_rate",
    "results_cut_rate",
    "token_fault_rate",
    "finished_jitter",
    "webhook_loss_rate",
)
_DURATIONS = (
    "token_lifetime",
    "token_latency",
    "latency",
    "processing_after",
    "finished_after",
    "list_lag",
    "webhook_delay",
)
# Fields POST /_sandbox/config may not change: the seed is consumed when the random generators
# are built, so changing it afterwards would claim a reproducibility the server cannot give.
_FIXED = frozenset({"seed"})


@dataclass(kw_only=True)
class SandboxConfig:
    """How the sandbox behaves. Mutable on purpose: tests change it while the server runs."""

    access_tokens: tuple[str, ...] = ("sandbox-token",)
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-secret"
    token_lifetime: float = 3600.0
    #: A slow login host: seconds before the token endpoint answers.
    token_latency: float = 0.0
    #: Share of token requests that fail, each in one of ``token_fault_kinds``.
    token_fault_rate: float = 0.0
    token_fault_kinds: tuple[str, ...] = TOKEN_FAULT_KINDS
    throttle_requests: int | None = None
    throttle_window: float = 300.0
    lockout: bool = True
    #: How long a lockout lasts; None = one throttle window.
    lockout_seconds: float | None = None
    retry_after: bool = False
    quota: int | None = None
    running_job_limit: int | None = None
    #: The queue-full 400's message; ``{limit}`` is the running-job limit. The default is the
    #: one text seen publicly; the documented cause reads "Too many job submitted to the
    #: processing queue", which names no number.
    queue_full_text: str = (
        "{limit} jobs are already running. Please try again once the previous jobs are finished."
    )
    #: True: a job starts processing only once it is ready (processing_after) and fewer than
    #: running_job_limit jobs are processing; ready jobs wait, accepted, in acceptance order.
    queue_in_order: bool = False
    processing_after: float = 0.0
    finished_after: float = 0.0
    #: Each job's processing time is finished_after x U[1 - jitter, 1 + jitter], drawn at
    #: acceptance from a generator of its own (the fault sequence a seed promises stays put).
    finished_jitter: float = 0.0
    #: Share of jobs (drawn at acceptance) that end ``failed`` instead of ``finished``.
    job_fail_rate: float = 0.0
    #: Share of webhook calls (drawn when due, from a generator of their own) never made.
    webhook_loss_rate: float = 0.0
    #: Seconds from a job's final status to its webhook call.
    webhook_delay: float = 0.0
    #: Whether a failed job's results are served (200) or refused (400).
    failed_results: bool = False
    #: Share of ids (fixed per id, from its hash) that come back in the results as not found.
    no_match_rate: float = 0.0
    #: Share of results files served cut short inside a quoted field (a broken file).
    results_cut_rate: float = 0.0
    #: Name of the results' id column for every kind; None = the kind's own name.
    results_id_column: str | None = None
    #: Seconds a job waits after acceptance before ``GET /admin/jobs`` lists it.
    list_lag: float = 0.05
    #: False: /admin/jobs refuses ``start``/``end`` (400), as a server taking another date
    #: format would; the list is then the whole history, newest first.
    time_filters: bool = True
    #: Seconds added to the server's wall clock (Date header, created times, token expiry).
    clock_skew: float = 0.0
    max_ids_per_job: int = 10_000
    id_pattern: str | None = r"[A-Za-z0-9_-]{64}"
    fault_5xx_rate: float = 0.0
    #: fault_5xx_rate and drop_rate hit job submits only (default: every API request).
    submit_faults_only: bool = False
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
        unknown = [k for k in self.token_fault_kinds if k not in TOKEN_FAULT_KINDS]
        if unknown or not self.token_fault_kinds:
            raise ConfigError(
                f"token_fault_kinds: must be one or more of {', '.join(TOKEN_FAULT_KINDS)}, "
                f"got {', '.join(self.token_fault_kinds) or 'none'}"
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


def apply_changes(config: SandboxConfig, changes: Mapping[str, object]) -> list[str]:
    """Set fields of ``config`` from JSON values; all or nothing. Returns the changed names.

    Raises :class:`ConfigError` naming the field for an unknown or fixed field, a value of
    the wrong type, or one ``__post_init__`` refuses. JSON lists become tuples.
    """
    types = {f.name: str(f.type) for f in dataclasses.fields(SandboxConfig)}
    coerced: dict[str, object] = {}
    for name, value in changes.items():
        if name not in types:
            raise ConfigError(f"{name}: no such sandbox setting")
        if name in _FIXED:
            raise ConfigError(f"{name}: fixed when the sandbox starts")
        coerced[name] = coerce(name, types[name], value)
    # Validate on a copy first, so a refused change leaves the running config untouched.
    dataclasses.replace(config, **coerced)  # type: ignore[arg-type]
    for name, value in coerced.items():
        setattr(config, name, value)
    return sorted(coerced)


def coerce(name: str, annotation: str, value: object) -> object:
    """``value`` (decoded JSON) as the Python type the field's annotation names."""
    base = annotation.removesuffix(" | None")
    if value is None:
        if base != annotation:
            return None
        raise ConfigError(f"{name}: must not be null")
    # bool is an int to Python but never a number to a JSON writer: true is not 1 here.
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if base == "str" and isinstance(value, str):
        return value
    if (
        base == "tuple[str, ...]"
        and isinstance(value, list | tuple)
        and all(isinstance(v, str) for v in value)
    ):
        return tuple(value)
    if base not in ("bool", "int", "float", "str", "tuple[str, ...]"):
        raise AssertionError(f"{name}: no JSON mapping for the type {annotation}")
    shown = "a list of strings" if base.startswith("tuple") else base
    raise ConfigError(f"{name}: must be {shown}, got {value!r}")
