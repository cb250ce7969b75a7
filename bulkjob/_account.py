"""The account's credits, as one run meets them: ``GET /admin/usage`` before the first
submit, with ``require_quota`` (the job queue is :mod:`bulkjob._jobqueue`'s)."""

from __future__ import annotations

import asyncio

from ._client import ApiClient
from ._errors import BulkJobError, ProtocolError, QuotaExhaustedError
from ._logging import get_logger
from ._report import RunReport, StopSignal
from ._settings import Settings

__all__ = ["CreditCheck", "read_credits", "remaining_credits"]

log = get_logger()


async def remaining_credits(client: ApiClient, settings: Settings, need: int) -> int | None:
    """The account's remaining credits from ``GET /admin/usage`` (None when unreadable).

    With ``require_quota``, fewer credits than ``need`` (or no answer) raise
    :class:`QuotaExhaustedError`; otherwise a shortfall is only warned about.
    """
    try:
        remaining = await read_credits(client)
    except BulkJobError as exc:
        if settings.require_quota:
            raise QuotaExhaustedError(f"cannot read the account's credits: {exc}") from None
        log.warning("quota.unknown", error=str(exc))
        return None
    if remaining >= need:
        log.info("quota.ok", remaining=remaining, ids=need)
        return remaining
    fits = f"{remaining:,} ids ({remaining // settings.chunk_size:,} full jobs) fit"
    message = f"only {remaining:,} credits left for up to {need:,} ids: {fits}"
    if settings.require_quota:
        raise QuotaExhaustedError(message)
    log.warning("quota.short", remaining=remaining, ids=need, message=message)
    return remaining


async def read_credits(client: ApiClient) -> int:
    """Allocated minus consumed credits, from ``GET /admin/usage``; ProtocolError when
    the answer does not say."""
    data = await client.get_json("admin/usage")
    credits = data.get("creditsForAccount")
    try:
        assert isinstance(credits, dict)
        return int(str(credits["allocatedCredits"])) - int(str(credits["consumedCredits"]))
    except (AssertionError, KeyError, ValueError):
        raise ProtocolError(f"admin/usage: no usable creditsForAccount: {credits!r}") from None


class CreditCheck:
    """The credit preflight, once per run, just before its first send.

    Not before: an input that turns out to hold no valid id causes no request at all. The
    other workers wait for the verdict: ``require_quota`` may stop the run before any send.
    """

    def __init__(self, client: ApiClient, settings: Settings, lines: int) -> None:
        self._client = client
        self._settings = settings
        self._lines = lines  # an upper bound of the ids: lines, not valid ids
        self._lock = asyncio.Lock()
        self._done = asyncio.Event()  # set once the verdict is in

    def __repr__(self) -> str:
        return f"<CreditCheck done={self._done.is_set()}>"

    async def once(self, report: RunReport, stop: StopSignal) -> None:
        """Run the check unless it ran; a refusal stops the run, a shortfall warns."""
        if self._done.is_set():
            return
        async with self._lock:  # the others wait here for the verdict
            if self._done.is_set():
                return
            try:
                await self._check(report, stop)
            finally:
                self._done.set()

    async def _check(self, report: RunReport, stop: StopSignal) -> None:
        need = max(self._lines - report.ids_submitted, 0)
        try:
            remaining = await remaining_credits(self._client, self._settings, need)
        except BulkJobError as exc:
            stop.request(exc.stop_reason, str(exc), error=exc)
            return
        report.credits_remaining = remaining
        if remaining is not None and remaining < need:
            report.warnings.append(f"only {remaining:,} credits left for up to {need:,} ids")
