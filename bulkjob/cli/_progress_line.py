"""The live progress line: ids/s, jobs accepted, throttled, ETA — on a terminal only."""

from __future__ import annotations

import sys
from typing import TextIO

from .._progress import Progress, format_duration

__all__ = ["ProgressLine"]


class ProgressLine:
    """Redraws one line on a TTY; does nothing at all when the stream is not a TTY."""

    __slots__ = ("__weakref__", "_drawn", "_last", "_mid_line", "_stream", "enabled")

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self._stream = stream or sys.stderr
        self.enabled = self._stream.isatty() if enabled is None else enabled
        self._drawn = False
        self._last = ""
        self._mid_line = False

    def render(self, p: Progress) -> str:
        """The text of the line for one snapshot."""
        rate = p.ids_submitted / p.elapsed_s if p.elapsed_s > 0 else 0.0
        remaining = max(p.ids_total - p.ids_submitted, 0)
        eta = format_duration(remaining / rate) if rate > 0 and remaining else "--"
        text = (
            f"{p.ids_submitted:,}/{p.ids_total:,} ids submitted · {rate:,.0f} ids/s · "
            f"{p.jobs:,} jobs · {p.requests:,} requests · throttled {p.throttled:,} · ETA {eta}"
        )
        if p.awaiting_proof:
            text += f" · {p.awaiting_proof:,} chunks awaiting proof"
        if p.stopping:
            text += f" · stopping ({p.stopping})"
        return text

    def update(self, progress: Progress) -> None:
        """Redraw with the latest snapshot."""
        if self.enabled and not self._mid_line:
            self._last = self.render(progress)
            self._stream.write("\r" + self._last + "\x1b[K")
            self._stream.flush()
            self._drawn = True

    def write(self, text: str) -> int:
        """Print ``text`` (log lines) above the progress line, which is then redrawn.

        A line may come in pieces (``print`` writes the newline on its own): the
        progress line is wiped before the first piece and redrawn after the newline.
        """
        if self._drawn and not self._mid_line:
            self._stream.write("\r\x1b[K")
        self._stream.write(text)
        self._mid_line = not text.endswith("\n")
        if self._drawn and not self._mid_line:
            self._stream.write(self._last + "\x1b[K")
        return len(text)

    def flush(self) -> None:
        """Flush the underlying stream."""
        self._stream.flush()

    def close(self) -> None:
        """End the line so that what follows starts on a fresh one."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
