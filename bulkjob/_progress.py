"""Progress snapshots of a run, and the protocol of whatever displays them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ._errors import StopReason

__all__ = ["Progress", "ProgressSink", "format_duration"]


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


class ProgressSink(Protocol):
    """Receives snapshots every half second while a run goes on."""

    def update(self, progress: Progress) -> None: ...

    def close(self) -> None: ...


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``4000`` -> ``1h06m``."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
