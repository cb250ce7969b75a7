"""An event loop whose clock jumps to the next timer instead of sleeping.

Limiter tests run hours of simulated traffic in milliseconds and see exact times.
Only for code that does no real I/O: sockets would not notice the jumps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """A selector loop whose ``time()`` only moves when nothing is ready to run."""

    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def _run_once(self) -> None:
        ready = self._ready  # type: ignore[attr-defined]
        live = [h.when() for h in self._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        if not ready and live:
            # Real time never stands still: step at least a microsecond, or a timer that
            # float rounding put a hair before its deadline would be re-armed forever.
            self._virtual_now = max(min(live), self._virtual_now + 1e-6)
        super()._run_once()  # type: ignore[misc]


def run_virtual(main: Callable[[], Awaitable[T]]) -> T:
    """Run ``main()`` to completion on a fresh virtual-clock loop."""
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(main())  # type: ignore[arg-type]
