"""The live progress line on a terminal, and the choice between it and progress log lines.

On a TTY, one line is redrawn in place: a submit's ids/s, jobs, throttled and ETA, or a
``wait``'s jobs final. Two promises: the last line drawn holds the final numbers (the
runner draws once more at its end), and whatever is printed after it starts on a line
of its own (:meth:`ProgressLine.close` ends the line; use the line as a context manager
so that an error ends it too). Off a TTY nothing is drawn: the library's ``run.progress``
log lines (every ``progress_interval`` seconds) are the sign of life instead.
"""

from __future__ import annotations

import os
import shutil
import sys
from types import TracebackType
from typing import TextIO

from .._progress import Progress, format_duration
from .._report import RunStatus

__all__ = ["ProgressLine", "progress_logs"]

#: Columns assumed when the stream's terminal cannot say (nor ``COLUMNS``).
FALLBACK_COLUMNS = 80


def progress_logs(progress: bool, stream: TextIO | None = None) -> bool:
    """Whether the CLI shows ``run.progress`` log lines: progress wanted, and no terminal
    to draw the live line on."""
    return progress and not (stream or sys.stderr).isatty()


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
        eta = p.eta_s
        text = (
            f"{p.ids_submitted:,}/{p.ids_total:,} ids submitted · {p.rate:,.0f} ids/s · "
            f"{p.jobs:,} jobs · {p.requests:,} requests · throttled {p.throttled:,} · "
            f"ETA {format_duration(eta) if eta else '--'}"
        )
        if p.awaiting_proof:
            text += f" · {p.awaiting_proof:,} chunks awaiting proof"
        if p.stopping:
            text += f" · stopping ({p.stopping})"
        return text

    @staticmethod
    def render_status(st: RunStatus) -> str:
        """The text of the line for one ``wait`` round."""
        return f"jobs: {st.total_jobs - st.open_jobs:,}/{st.total_jobs:,} final"

    def update(self, progress: Progress) -> None:
        """Redraw with the latest snapshot of a run."""
        self.show(self.render(progress))

    def update_status(self, status: RunStatus) -> None:
        """Redraw with the latest round of a ``wait``."""
        self.show(self.render_status(status))

    def show(self, text: str) -> None:
        """Redraw the line as ``text``."""
        if self.enabled and not self._mid_line:
            self._last = text[: self._columns() - 1]
            self._stream.write("\r" + self._last + "\x1b[K")
            self._stream.flush()
            self._drawn = True

    def _columns(self) -> int:
        """The terminal's width now (it may have been resized since the last draw).

        A line as wide as the terminal, or wider, wraps (or leaves the cursor in the last
        column): the next ``\r`` then goes back to the start of the last row only, and
        the rows above stay on screen. The line is cut one short of the width instead.
        """
        try:
            return os.get_terminal_size(self._stream.fileno()).columns or FALLBACK_COLUMNS
        except (AttributeError, ValueError, OSError):  # not a real terminal (a test's stream)
            return shutil.get_terminal_size((FALLBACK_COLUMNS, 24)).columns

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
        """End the line so that what follows starts on a fresh one; drawing again later
        starts a new line."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
