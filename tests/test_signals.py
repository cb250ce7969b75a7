"""Tests for the CLI's signal handling, on the path for loops without signal handlers
(Windows): ``signal.signal`` hands a real signal over to the loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import warnings
from collections.abc import Iterator

import pytest

from bulkjob.cli._signals import run_command
from tests.conftest import wait_until


class _NoSignalsLoop(asyncio.SelectorEventLoop):
    """A loop that cannot take signal handlers, as on Windows; it counts the attempts."""

    attempts = 0

    def add_signal_handler(self, sig: int, callback: object, *args: object) -> None:
        type(self).attempts += 1
        raise NotImplementedError


class _Policy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _NoSignalsLoop()


@contextlib.contextmanager
def _loops_without_signal_handlers() -> Iterator[None]:
    """asyncio.run (as run_command calls it) makes its loop from this policy meanwhile."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the policy API, from 3.14 on
        previous = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(_Policy())
    _NoSignalsLoop.attempts = 0
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(previous)


def _handlers() -> tuple[object, object]:
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def test_first_signal_stops_cleanly_second_cancels_without_loop_handlers() -> None:
    """With a loop that refuses add_signal_handler, a real SIGINT calls on_first, a real
    SIGTERM after it cancels the command (KeyboardInterrupt), and the process's previous
    handlers are back afterwards."""
    calls: list[str] = []
    reached: list[str] = []

    async def command() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        await wait_until(lambda: calls == ["first"])
        reached.append("after the first")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(30)  # the second signal cancels this
        reached.append("never")

    before = _handlers()
    with _loops_without_signal_handlers(), pytest.raises(KeyboardInterrupt):
        run_command(command, lambda: calls.append("first"))
    assert _NoSignalsLoop.attempts == 2  # SIGINT and SIGTERM: the fallback was taken
    assert calls == ["first"] and reached == ["after the first"]
    assert _handlers() == before


def test_first_signal_cancels_without_on_first() -> None:
    """Without on_first, the first real signal cancels the command at once."""

    async def command() -> str:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(30)
        return "not cancelled"

    before = _handlers()
    with _loops_without_signal_handlers(), pytest.raises(KeyboardInterrupt):
        run_command(command)
    assert _handlers() == before


def test_a_command_that_ends_restores_the_handlers() -> None:
    """A command that ends normally returns its value; the handlers are restored."""

    async def command() -> int:
        return 42

    before = _handlers()
    with _loops_without_signal_handlers():
        assert run_command(command) == 42
    assert _NoSignalsLoop.attempts == 2
    assert _handlers() == before


def test_off_the_main_thread_runs_without_signal_handlers() -> None:
    """In a thread other than the main one, where no signal handler can be set, a command
    still runs (signals stay the main thread's business)."""
    result: list[object] = []

    async def command() -> str:
        return "ran"

    def main() -> None:
        try:
            result.append(run_command(command))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(30)
    assert result == ["ran"]
