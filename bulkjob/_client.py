"""The API client: speaks HTTP to one base URL through the shared limiter, nothing else.

Every request holds a :class:`~bulkjob._limiter.WindowLimiter` slot while it is on the
wire, so retries, status calls and downloads count against the token's window like
submits. What an answer *means* is decided by the pure functions of
:mod:`bulkjob._answers`; this module only carries requests and answers:

- :meth:`ApiClient.exchange` is one request in a slot the caller holds, returning a
  :class:`Reply` or, when no answer came, a :class:`Lost` that says whether anything
  may have been sent;
- :meth:`ApiClient.recover` is what a 429 or a 401 asks for: every worker pauses
  (Retry-After honoured), or a fresh token is minted once;
- :meth:`ApiClient.call` wraps both for idempotent requests (status, job list, usage,
  results, cancel), with bounded, jittered retries of 5xx and lost answers.

The submit is not retried here: a POST whose answer is lost may have created a job, and
only :class:`~bulkjob._submitter.Submitter` decides what happens to it.
"""

from __future__ import annotations

import email.utils
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from tenacity import RetryCallState

from ._answers import (
    Answered,
    ErrorRules,
    Lost,
    Refused,
    Reply,
    Retry,
    Throttled,
    TokenRefused,
    classify_call,
)
from ._auth import TokenSource
from ._errors import (
    ProxyRefusedError,
    ThrottledError,
    Transient,
    TransportError,
    UnreachableError,
)
from ._limiter import WindowLimiter
from ._logging import get_logger, redact
from ._network import ProxyRoute, connect_failure, proxy_route
from ._retry import retrying
from ._settings import Settings
from ._window_store import WindowStore, open_store
from ._wire import parse_body

__all__ = ["ApiClient", "ClientStats", "Tries"]

log = get_logger()
_CLOCK_SAMPLES = 256
#: 401s one request may answer with a fresh token before the credentials count as refused.
_MAX_REFUSED = 3


#: What a request to the API was, for the counts by kind (token requests are counted by
#: the token source: another host).
REQUEST_KINDS = ("submit", "status", "results", "cancel", "admin")


@dataclass(slots=True)
class ClientStats:
    """Counters the report, the progress line and the metrics read."""

    requests: int = 0
    #: Requests that found no connection (refused, unresolved, timed out connecting).
    unconnected: int = 0
    throttled: int = 0
    retries: int = 0
    token_refreshes: int = 0
    #: Requests by kind (see :data:`REQUEST_KINDS`); every kind present from the start,
    #: so that a reader in another thread never sees the dict change size.
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REQUEST_KINDS, 0))

    def count(self, method: str, path: str, *, download: bool) -> None:
        """One request more, of the kind ``method`` and ``path`` say."""
        self.requests += 1
        path = path.strip("/")
        if download or path.endswith("/results"):
            kind = "results"
        elif path.startswith("admin/"):
            kind = "admin"
        elif method == "POST":
            kind = "submit"
        elif method == "DELETE":
            kind = "cancel"
        else:
            kind = "status"
        self.by_kind[kind] += 1


@dataclass(slots=True)
class Tries:
    """One request's bookkeeping across 429 pauses and token refreshes."""

    throttled_in_a_row: int = 0
    #: The token this request's own 401 had minted: refused too, the credentials are bad.
    minted: str | None = None
    refused: int = 0
    chunk: int | None = field(default=None)


class ApiClient:
    """Talks to one API base URL on behalf of one run or command."""

    __slots__ = (
        "_clock",
        "_limiter",
        "_proxy",
        "_session",
        "_settings",
        "_tokens",
        "reached",
        "rules",
        "stats",
    )

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        limiter: WindowLimiter,
        tokens: TokenSource,
    ) -> None:
        self._settings = settings
        self._session = session
        self._limiter = limiter
        self._tokens = tokens
        # (our time, server time minus ours), from the Date header of recent answers.
        self._clock: deque[tuple[float, float]] = deque(maxlen=_CLOCK_SAMPLES)
        self.rules = ErrorRules.from_settings(settings)
        self.stats = ClientStats()
        self._proxy: ProxyRoute = proxy_route(settings, settings.base_url)
        #: Whether the server has answered anything in this command. Until it has, a
        #: connection that cannot be made is a wrong URL or a host that is down, and
        #: fails at once (:class:`UnreachableError`) instead of after every retry.
        self.reached = False

    def __repr__(self) -> str:
        return f"<ApiClient {self._settings.base_url} {self.stats}>"

    @classmethod
    def for_settings(
        cls,
        settings: Settings,
        session: aiohttp.ClientSession,
        store: WindowStore | None = None,
    ) -> ApiClient:
        """A client with its own limiter and token source: one per command or run.

        The limiter's window lives in ``store`` (by default the one ``throttle_store``
        names, shared with every process of the account); :meth:`aclose` gives it back.
        """
        limiter = WindowLimiter(
            settings.max_requests,
            settings.per_seconds,
            pace=settings.pacing == "even",
            store=store or open_store(settings),  # the window's numbers come with it
        )
        return cls(settings, session, limiter, TokenSource(settings, session, limiter))

    @property
    def token_requests(self) -> int:
        """Requests made to the token endpoint so far."""
        return self._tokens.requests

    async def aclose(self) -> None:
        """Give back the window store (this process's slots in it count as completed)."""
        await self._limiter.store.close()

    @property
    def limiter(self) -> WindowLimiter:
        """The limiter every request of this client goes through."""
        return self._limiter

    @property
    def server_offset(self) -> float | None:
        """Server clock minus ours in seconds, from the latest answer's Date header (to the
        second, and a clock that steps shows at once); None before any answer."""
        return self._clock[-1][1] if self._clock else None

    def offsets_since(self, since: float) -> list[float]:
        """Every clock difference seen from ``since`` (our clock) on, and the one in force
        then: a server whose clock stepped in between shows both."""
        before = [o for t, o in self._clock if t < since][-1:]
        return before + [o for t, o in self._clock if t >= since]

    async def token(self) -> str:
        """A token believed valid now (minted or refreshed as needed, outside any slot)."""
        return await self._tokens.get()

    async def exchange(
        self,
        method: str,
        path: str,
        *,
        token: str,
        params: dict[str, str] | None = None,
        body: bytes = b"",
        sink: Path | None = None,
    ) -> Reply | Lost:
        """One request; the caller holds a limiter slot. Never raises for an HTTP status.

        With ``sink``, a 200's body is streamed into that file instead of memory.
        """
        s = self._settings
        url = f"{s.base_url.rstrip('/')}/{path.lstrip('/')}"
        headers = {
            "Accept": "text/csv, */*"
            if sink is not None
            else ("application/json" if s.accept == "json" else "application/xml"),
            "Content-Type": "text/plain; charset=utf-8",
            "accessToken": token,
            **self._proxy.headers,
        }
        self.stats.count(method, path, download=sink is not None)
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                params=params or {},
                data=body or None,
                **self._proxy.options,
            ) as resp:
                if resp.status == ProxyRefusedError.STATUS:
                    # The proxy's answer in place of the API's: nothing was forwarded, and
                    # the same credentials will be refused again.
                    self.stats.unconnected += 1
                    raise ProxyRefusedError(url=s.base_url)
                self.reached = True
                self._note_date(resp.headers.get("Date"))
                if sink is not None and resp.status == 200:
                    written = 0
                    # What has arrived (up to 1 MiB) per plain write: page-cache fast, few
                    # loop turns per file, and the slot is held until the last byte is in.
                    with sink.open("wb") as out:
                        async for block in resp.content.iter_chunked(_SINK_BLOCK):
                            out.write(block)
                            written += len(block)
                    return Reply(200, resp.content_type, "", None, written)
                text = await resp.text(errors="replace")
                return Reply(resp.status, resp.content_type, text, _retry_after(resp))
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = connect_failure(exc)
            if failure is not None:  # never connected: nothing can have been sent
                self.stats.unconnected += 1
                if not self.reached:
                    raise UnreachableError(
                        f"{s.base_url} is unreachable: {failure}", url=s.base_url
                    ) from None
                return Lost(f"cannot connect: {failure}", sent=False)
            log.warning("request.lost", method=method, path=path, error=type(exc).__name__)
            return Lost(f"no answer ({type(exc).__name__}: {_oneline(exc)})", sent=True)

    async def recover(self, verdict: Throttled | TokenRefused, tries: Tries, token: str) -> None:
        """Do what a 429 or 401 asks before the same request goes again.

        A 429 pauses every request of this client (Retry-After honoured up to
        ``retry_after_max``); too many in a row raise :class:`ThrottledError`. A 401
        mints a fresh token (unless another request already did); a 401 for the token
        minted for this very request, or a fourth 401, raises the AuthError. A token
        revoked again while this request waited is no reason to give up.
        """
        if isinstance(verdict, Throttled):
            tries.throttled_in_a_row += 1
            self.stats.throttled += 1
            pause = await self._limiter.throttled(verdict.retry_after)
            log.warning(
                "request.throttled",
                chunk=tries.chunk,
                pause_s=round(pause, 3),
                in_a_row=tries.throttled_in_a_row,
            )
            if tries.throttled_in_a_row >= self._settings.max_throttled:
                raise ThrottledError(
                    f"still throttled after {tries.throttled_in_a_row} pauses",
                    status=429,
                    chunk=tries.chunk,
                )
            return
        tries.refused += 1
        if not self._tokens.can_refresh or token == tries.minted or tries.refused > _MAX_REFUSED:
            raise verdict.error
        log.info("token.refused", chunk=tries.chunk)
        minted = await self._tokens.refresh(token)
        if minted is not None:
            tries.minted = minted
            self.stats.token_refreshes += 1

    def succeeded(self) -> None:
        """A request went through: the next 429 starts the backoff from the beginning."""
        self._limiter.succeeded()

    def on_retry(self, state: RetryCallState) -> None:
        """tenacity's before-sleep hook: count and log the retry."""
        self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "request.retrying",
            attempt=state.attempt_number,
            wait_s=round(wait, 3),
            reason=str(exc) if exc else None,
        )

    # -- idempotent requests -------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        *,
        sink: Path | None = None,
    ) -> Reply:
        """A request that is safe to repeat; returns the 200 or raises a RequestError."""
        try:
            async for attempt in retrying(self._settings, self.on_retry):
                with attempt:
                    tries = Tries()
                    while True:
                        token = await self.token()
                        async with self._limiter:
                            answer = await self.exchange(
                                method, path, token=token, params=params, sink=sink
                            )
                        verdict = classify_call(answer, self.rules)
                        if isinstance(verdict, Throttled | TokenRefused):
                            await self.recover(verdict, tries, token)
                            continue
                        break
                    if isinstance(verdict, Retry):
                        raise Transient(verdict.reason, status=verdict.status)
                    self.succeeded()
                    if isinstance(verdict, Refused):
                        raise verdict.error
                    assert isinstance(verdict, Answered)
                    return verdict.reply
        except Transient as exc:
            raise TransportError(
                f"{method} {path} failed: {exc.reason}", status=exc.status
            ) from None
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, object]:
        """GET ``base_url/path`` (status, admin calls) as a flat dict."""
        reply = await self.call("GET", path, params)
        return parse_body(reply.content_type, reply.text)

    async def delete_json(self, path: str) -> dict[str, object]:
        """DELETE ``base_url/path`` (cancel a job).

        A resend after a lost answer may meet a job the first attempt already cancelled:
        the caller sees that as the server's 400 and should re-read the job's status.
        """
        reply = await self.call("DELETE", path)
        return parse_body(reply.content_type, reply.text)

    async def download(self, path: str, dest: Path) -> int:
        """GET ``base_url/path`` and stream the body into ``dest``; returns the bytes written.

        The body goes to a part file beside ``dest`` and is renamed once complete, so a
        crash never leaves half a file under the final name.
        """
        part = dest.with_name(f".{dest.name}.{id(self):x}.part")
        try:
            reply = await self.call("GET", path, sink=part)
            part.replace(dest)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return reply.written

    def _note_date(self, value: str | None) -> None:
        if not value:
            return
        try:
            server = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            return
        # The header has whole seconds: the server's clock was in [server, server + 1).
        now = time.time()
        offset = server + 0.5 - now
        if not self._clock or abs(self._clock[-1][1] - offset) > 0.75:
            self._clock.append((now, offset))  # only changes: a step, not every answer
        else:
            self._clock[-1] = (self._clock[-1][0], offset)


#: The most of a downloaded body written at once.
_SINK_BLOCK = 1 << 20


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:  # the HTTP-date form
        return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _oneline(exc: BaseException) -> str:
    return redact(" ".join(str(exc).split()))[:200] or type(exc).__name__
