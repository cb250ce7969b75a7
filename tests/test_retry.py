"""Tests for the retry policy: bounded by attempts and by total time."""

from __future__ import annotations

import pytest

from bulkjob._retry import Transient, retrying
from bulkjob._settings import Settings


async def _attempts(settings: Settings, fail_times: int) -> int:
    """How many attempts a call that fails ``fail_times`` times gets."""
    calls = 0
    async for attempt in retrying(settings):
        with attempt:
            calls += 1
            if calls <= fail_times:
                raise Transient("boom")
    return calls


async def test_retries_transient_until_success() -> None:
    """Transient failures are retried and a later success returns."""
    settings = Settings(max_attempts=5, backoff_initial=0.0, backoff_max=0.0)
    assert await _attempts(settings, fail_times=3) == 4


async def test_gives_up_after_max_attempts() -> None:
    """After max_attempts the last Transient is raised."""
    settings = Settings(max_attempts=3, backoff_initial=0.0, backoff_max=0.0)
    with pytest.raises(Transient, match="boom"):
        await _attempts(settings, fail_times=10)


async def test_gives_up_after_retry_max_time() -> None:
    """A zero time budget stops after the first attempt, whatever max_attempts says."""
    settings = Settings(max_attempts=50, retry_max_time=0.0, backoff_initial=0.0, backoff_max=0.0)
    with pytest.raises(Transient):
        await _attempts(settings, fail_times=10)


async def test_other_errors_are_not_retried() -> None:
    """Anything but Transient propagates at once."""
    calls = 0

    async def call() -> None:
        nonlocal calls
        async for attempt in retrying(Settings(max_attempts=5)):
            with attempt:
                calls += 1
                raise KeyError("no")

    with pytest.raises(KeyError):
        await call()
    assert calls == 1
