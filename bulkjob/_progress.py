"""Progress snapshots of a run, the protocol of whatever displays them, and the progress log.

A terminal gets a live line (the CLI's :class:`~bulkjob.cli._progress_line.ProgressLine`).
Everywhere else (cron, Kubernetes, a notebook's log) the sign of life is a structured log
line every ``progress_interval`` seconds on the ``bulkjob.progress`` logger, written by
:class:`ProgressLog`: at INFO, so a library user sees it once logging is configured at
that level, and the CLI shows it by default when stderr is not a terminal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ._errors import StopReason
from ._logging import PROGRESS_LOGGER_NAME, get_logger

__all__ = ["Progress", "ProgressLog", "ProgressSink", "format_duration"]


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for progress displays."""

    ids_total: int  # upper bound from the pre-pass (physical lines)
    ids_read: int
    ids_submitted: int
    jobs: int
    throttled: int
    requests: int
    elapsed_s: float
    stopping: StopReason | None
    #: Chunks whose submit lost its answer, waiting for a job's results to prove it.
    awaiting_proof: int = 0
    #: The run's jobs queued or running as far as it knows (None: not tracked yet).
    jobs_open: int | None = None

    @property
    def rate(self) -> float:
        """Ids submitted per second so far."""
        return self.ids_submitted / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds to go at the rate so far; None before there is a rate, 0 when done."""
        remaining = max(self.ids_total - self.ids_submitted, 0)
        if not remaining:
            return 0.0
        return remaining / self.rate if self.rate > 0 else None

    def fields(self) -> dict[str, object]:
        """The snapshot as log fields (``run.progress``)."""
        eta = self.eta_s
        return {
            "ids_read": self.ids_read,
            "ids_submitted": self.ids_submitted,
            "ids_total": self.ids_total,
            "jobs": self.jobs,
            "jobs_open": self.jobs_open,
            "awaiting_proof": self.awaiting_proof,
            "throttled": self.throttled,
            "requests": self.requests,
            "rate": round(self.rate, 1),
            "elapsed_s": round(self.elapsed_s, 3),
            "eta_s": None if eta is None else round(eta, 1),
            "stopping": self.stopping,
        }


class ProgressSink(Protocol):
    """Receives snapshots every half second while a run goes on."""

    def update(self, progress: Progress) -> None: ...

    def close(self) -> None: ...


class ProgressLog:
    """Logs ``event`` with the fields of the latest snapshot every ``interval`` seconds.

    :meth:`run` is the periodic task; :meth:`emit` logs once more (the final line, with
    ``final=True``). Nothing is built when the ``bulkjob.progress`` logger would drop it.
    """

    __slots__ = ("_fields", "_log", "_logger", "event", "interval", "lines")

    def __init__(
        self, event: str, interval: float, fields: Callable[[], Mapping[str, object]]
    ) -> None:
        self.event = event
        self.interval = interval
        self._fields = fields
        self._logger = logging.getLogger(PROGRESS_LOGGER_NAME)
        self._log = get_logger(PROGRESS_LOGGER_NAME)
        #: Lines logged so far.
        self.lines = 0

    def __repr__(self) -> str:
        return f"<ProgressLog {self.event} every {self.interval:g}s lines={self.lines}>"

    async def run(self) -> None:
        """Log every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.emit()

    def emit(self, *, final: bool = False) -> None:
        """One progress line now (when the logger would show it)."""
        if self._logger.isEnabledFor(logging.INFO):
            self.lines += 1
            extra = {"final": True} if final else {}
            self._log.info(self.event, **self._fields(), **extra)


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``4000`` -> ``1h06m``."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
