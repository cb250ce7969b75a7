"""Retry policy for transient failures (5xx, timeouts, dropped connections), on tenacity.

Bounded both ways, as stamina does: at most ``max_attempts`` tries and at most
``retry_max_time`` seconds since the first one, with exponential backoff and full
jitter so that workers which failed together do not come back together.
429s are not handled here: they pause every worker through the limiter and do not
spend attempts (see :mod:`bulkjob._limiter`). A submit whose answer is lost is not
retried at all: its outcome is unknown until proven (see :mod:`bulkjob._submitter`).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)

from ._errors import Transient
from ._settings import Settings

__all__ = ["backoff", "retrying"]


def retrying(
    settings: Settings, on_retry: Callable[[RetryCallState], None] | None = None
) -> AsyncRetrying:
    """A tenacity controller for one request: ``async for attempt in retrying(s): ...``."""
    return AsyncRetrying(
        retry=retry_if_exception_type(Transient),
        stop=stop_after_attempt(settings.max_attempts) | stop_after_delay(settings.retry_max_time),
        wait=backoff(settings.backoff_initial, settings.backoff_max),
        before_sleep=on_retry,
        reraise=True,
    )


def backoff(initial: float, cap: float) -> Callable[[RetryCallState], float]:
    """``initial * 2**(n-1)`` plus up to ``initial`` of jitter, capped at ``cap``.

    This is tenacity's ``wait_exponential_jitter``, spelled out because its ``initial``
    argument is deprecated (a DeprecationWarning since tenacity 9.x) while its replacement,
    ``multiplier``, does not exist in the 8.x releases this package still supports.
    """

    def wait(state: RetryCallState) -> float:
        exp = initial * 2.0 ** (state.attempt_number - 1)
        return min(exp + random.uniform(0.0, initial), cap)

    return wait
