"""The run's throttle window on disk, so that the next command, even after ``kill -9``,
starts from the same window rather than a fresh one.

``JOURNAL.window`` is an append-only file of 8-byte floats: a negative wall-clock time when
a request takes a limiter slot, a positive one when its slot is returned (its answer came
back). Each is one unbuffered ``write``: a killed process loses nothing the kernel already
has, and a request costs a few microseconds. Read back, the returned slots still inside the
window are the window's history, and a slot taken but never returned (the process died with
the request in flight) counts as returned at the moment it is read: its arrival at the
server was no later than that. The file is compacted to what is still inside the window
whenever a command opens it.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from array import array
from pathlib import Path

__all__ = ["WindowLog"]

_ITEM = struct.Struct("<d")


class WindowLog:
    """One command's log of its request slots, beside the journal it belongs to."""

    __slots__ = ("_fd", "path")

    def __init__(self, journal: str | os.PathLike[str]) -> None:
        real = Path(os.path.realpath(journal))
        self.path = real.with_name(real.name + ".window")
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"<WindowLog {self.path} {'open' if self._fd is not None else 'closed'}>"

    def open(self, window: float) -> list[float]:
        """Compact the log to ``window`` seconds and open it for appending; the wall-clock
        completion times still inside the window (the history a limiter starts from)."""
        now = time.time()
        times = array("d")
        with contextlib.suppress(OSError):  # no log yet: a fresh window
            times.frombytes(_whole(self.path))
        in_flight = sum(1 for t in times if t < 0) - sum(1 for t in times if t > 0)
        history = sorted(t for t in times if t > 0 and t > now - window)
        history += [now] * max(in_flight, 0)  # died in flight: count them as done now
        try:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_bytes(array("d", history).tobytes())
            os.replace(tmp, self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError:
            self._fd = None  # a read-only or full disk: the window is then not carried over
        return history

    def taken(self) -> None:
        """A request took a slot."""
        self._append(-time.time())

    def freed(self) -> None:
        """A request's slot came back (its answer, or its failure, is in)."""
        self._append(time.time())

    def close(self) -> None:
        """Stop logging; safe twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _append(self, value: float) -> None:
        if self._fd is not None:
            try:
                os.write(self._fd, _ITEM.pack(value))
            except OSError:
                self.close()  # a full disk: the journal will say so; the window just stops


def _whole(path: Path) -> bytes:
    """The log's bytes, cut to whole items (a write cut short by a crash is dropped)."""
    data = path.read_bytes()
    return data[: len(data) - len(data) % _ITEM.size]
