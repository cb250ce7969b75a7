"""Signals for the CLI's commands: SIGINT and SIGTERM end every command with exit 130.

A run stops cleanly on the first signal (requests in flight finish, the journal is
closed, the resume command printed) and at once on a second; the other commands stop at
the first. Where the event loop cannot take signal handlers (Windows), ``signal.signal``
hands the signal over to the loop instead.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["run_command"]

_T = TypeVar("_T")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run_command(
    make: Callable[[], Awaitable[_T]], on_first: Callable[[], None] | None = None
) -> _T:
    """Run a command's coroutine with SIGINT/SIGTERM handled.

    With ``on_first`` the first signal calls it (a run stops cleanly) and a second one
    cancels; without, the first signal cancels. Cancellation ends in KeyboardInterrupt,
    which the CLI turns into exit 130 with a message.
    """

    async def main() -> _T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        seen = 0

        def on_signal() -> None:
            nonlocal seen
            seen += 1
            if seen == 1 and on_first is not None:
                on_first()
            elif task is not None:
                task.cancel()

        installed = _install_signals(loop, on_signal)
        try:
            return await make()
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        finally:
            _remove_signals(loop, installed)

    return asyncio.run(main())


def _install_signals(
    loop: asyncio.AbstractEventLoop, handler: Callable[[], None]
) -> list[tuple[signal.Signals, object]]:
    """Route SIGINT/SIGTERM to ``handler`` on the loop; returns what to restore.

    Where the loop cannot (Windows), ``signal.signal`` hands the signal to the loop:
    the handler runs in the main thread between two bytecodes, and
    ``call_soon_threadsafe`` wakes the loop (its selector or proactor) to run ``handler``.
    """
    installed: list[tuple[signal.Signals, object]] = []
    for sig in _SIGNALS:
        try:
            loop.add_signal_handler(sig, handler)
            installed.append((sig, None))
        except (NotImplementedError, RuntimeError):
            try:
                previous = signal.signal(sig, lambda *_: loop.call_soon_threadsafe(handler))
            except ValueError:
                # Not the main thread (an embedding host ran the command in one): only the
                # main thread may handle signals, so they stay its business.
                continue
            installed.append((sig, previous))
    return installed


def _remove_signals(
    loop: asyncio.AbstractEventLoop, installed: list[tuple[signal.Signals, object]]
) -> None:
    for sig, previous in installed:
        if previous is None:
            loop.remove_signal_handler(sig)
        else:
            signal.signal(sig, previous)  # type: ignore[arg-type]
