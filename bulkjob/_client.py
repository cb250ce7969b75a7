"""The API client: one submit, with auth, throttle pauses, retries and answer classification.

Every request passes through the shared :class:`~bulkjob._limiter.WindowLimiter`, so
retries and status calls are counted against the token's window like everything else.
Answers are classified once, here, into the error tree of :mod:`bulkjob._errors`:

======================  =====================================================
200                     accepted: the job id
429                     every worker pauses (Retry-After honoured), then resend
5xx, timeout, reset     transient: jittered exponential backoff, bounded
400                     quota / queue full / rejected, by errorNumber + message
401                     mint a new token once; a second 401 is fatal
405, 403                fatal: not allowed to use this API
415, other 4xx          fatal protocol error, with the server's message
======================  =====================================================
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
from tenacity import RetryCallState

from ._auth import TokenSource
from ._chunker import Chunk
from ._errors import (
    AuthError,
    JobRejectedError,
    ProtocolError,
    QueueFullError,
    QuotaExhaustedError,
    ThrottledError,
    TransportError,
)
from ._limiter import WindowLimiter
from ._logging import get_logger, redact
from ._retry import Transient, retrying
from ._settings import Settings
from ._wire import ErrorBody, parse_body

__all__ = ["ApiClient", "ClientStats", "JobAccepted", "new_session"]

log = get_logger()


class SubmitHooks(Protocol):
    """What the runner's journal and reconciler plug into a submit."""

    async def admit(self, chunk: Chunk) -> None:
        """Called before a limiter slot is taken: may hold the request back."""

    async def sending(self, chunk: Chunk) -> None:
        """Called with a limiter slot held, right before the request leaves."""

    def answered(self, chunk: Chunk) -> None:
        """Called when the request is over, with or without an answer."""

    async def reconcile(self, chunk: Chunk, *, timed_out: bool) -> str | None:
        """No answer came back: the job id it became, or None if certainly not accepted.

        ``timed_out`` says the server may still be working on it (a timeout, a 502/504),
        as opposed to having closed the connection.

        Raises AmbiguousError when that cannot be told.
        """


@dataclass(frozen=True, slots=True)
class JobAccepted:
    """The server queued a job."""

    job_id: str
    status: str
    job_type: str


@dataclass(slots=True)
class ClientStats:
    """Counters the report and the progress line read."""

    requests: int = 0
    throttled: int = 0
    retries: int = 0
    token_refreshes: int = 0


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """A POST that may have reached the server but got no usable answer."""

    timed_out: bool
    status: int | None = None  # a gateway's 502/504, when that is what came back


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    content_type: str
    text: str
    retry_after: float | None
    written: int = 0  # bytes streamed to a sink file instead of ``text``


class ApiClient:
    """Talks to one API base URL on behalf of one run."""

    __slots__ = ("_limiter", "_queue_re", "_quota_re", "_session", "_settings", "_tokens", "stats")

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
        self._quota_re = _any_of(settings.quota_patterns)
        self._queue_re = _any_of(settings.queue_full_patterns)
        self.stats = ClientStats()

    def __repr__(self) -> str:
        return f"<ApiClient {self._settings.base_url} {self.stats}>"

    @property
    def limiter(self) -> WindowLimiter:
        """The limiter every request of this client goes through."""
        return self._limiter

    @classmethod
    def for_settings(
        cls, settings: Settings, session: aiohttp.ClientSession, history: Sequence[float] = ()
    ) -> ApiClient:
        """A client with its own limiter and token source: one per command or run.

        ``history``: completion times of the run's recent requests (see
        :meth:`WindowLimiter.history`), so a new command does not start with a fresh window.
        """
        limiter = WindowLimiter(
            settings.max_requests,
            settings.per_seconds,
            margin=settings.window_margin,
            initial_delay=settings.throttle_initial_delay,
            history=history,
        )
        return cls(settings, session, limiter, TokenSource(settings, session, limiter))

    async def submit(self, chunk: Chunk, hooks: SubmitHooks | None = None) -> JobAccepted:
        """Submit one chunk as one job; raises a :class:`RequestError` subclass on failure.

        A failure after which the job may exist on the server (no answer) is passed to
        ``hooks.reconcile`` before any resend; without hooks it is resent (fine against
        servers that only drop connections before accepting, as the sandbox's plain
        ``drop_rate`` does).
        """
        s = self._settings
        url = f"{s.base_url.rstrip('/')}/{s.job_kind.path}"
        params: dict[str, str] = {}
        if s.retrieve_company_details:
            params["retrieveCompanyDetails"] = "true"
        if s.webhook:
            params["webhook"] = s.webhook
        body = chunk.body()
        admit = (lambda: hooks.admit(chunk)) if hooks is not None else None
        before = (lambda: hooks.sending(chunk)) if hooks is not None else None
        after = (lambda: hooks.answered(chunk)) if hooks is not None else None
        try:
            async for attempt in retrying(s, self._on_retry):
                with attempt:
                    answer = await self._send(
                        "POST",
                        url,
                        chunk.seq,
                        params=params,
                        data=body,
                        admit=admit,
                        before=before,
                        after=after,
                    )
                    if isinstance(answer, NoAnswer) and hooks is not None:
                        job_id = await hooks.reconcile(chunk, timed_out=answer.timed_out)
                        if job_id is not None:
                            log.info("job.reconciled", chunk=chunk.seq, job_id=job_id)
                            return JobAccepted(job_id, "accepted", s.job_kind.job_type)
                    if isinstance(answer, NoAnswer):
                        what = f"gateway error {answer.status}" if answer.status else "no answer"
                        raise Transient(
                            f"{what} (the job list shows no such job)", status=answer.status
                        )
                    return self._accepted(answer, chunk.seq)
        except Transient as exc:
            raise TransportError(
                f"gave up after {s.max_attempts} attempts: {exc.reason}",
                status=exc.status,
                chunk=chunk.seq,
            ) from None
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, object]:
        """GET ``base_url/path`` (status, admin calls) through the limiter, with retries."""
        return await self._json("GET", path, params)

    async def delete_json(self, path: str) -> dict[str, object]:
        """DELETE ``base_url/path`` (cancel a job) through the limiter, with retries.

        A resend after a lost answer may meet a job the first attempt already cancelled:
        the caller sees that as the server's 400 and should re-read the job's status.
        """
        return await self._json("DELETE", path, None)

    async def _json(
        self, method: str, path: str, params: dict[str, str] | None
    ) -> dict[str, object]:
        answer = await self._call(method, path, params)
        return parse_body(answer.content_type, answer.text)

    async def _call(
        self, method: str, path: str, params: dict[str, str] | None, sink: Path | None = None
    ) -> _Answer:
        """A non-submit request with retries; raises unless the answer is a 200."""
        url = f"{self._settings.base_url.rstrip('/')}/{path.lstrip('/')}"
        try:
            async for attempt in retrying(self._settings, self._on_retry):
                with attempt:
                    answer = await self._send(method, url, None, params=params or {}, sink=sink)
                    if isinstance(answer, NoAnswer):
                        raise Transient("no answer (connection dropped or timed out)")
                    if answer.status != 200:
                        self._raise_for(answer, None)
                    return answer
        except Transient as exc:
            raise TransportError(
                f"{method} {path} failed: {exc.reason}", status=exc.status
            ) from None
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    async def _send(
        self,
        method: str,
        url: str,
        seq: int | None,
        *,
        params: dict[str, str],
        data: bytes = b"",
        admit: Callable[[], Awaitable[None]] | None = None,
        before: Callable[[], Awaitable[None]] | None = None,
        after: Callable[[], None] | None = None,
        sink: Path | None = None,
    ) -> _Answer | NoAnswer:
        """One request, repeated through 429 pauses and one token refresh.

        Returns None when the request may have reached the server but no answer came
        back; raises :class:`Transient` for failures that certainly did not get through
        (connection refused) or that are safe to repeat (5xx).
        """
        s = self._settings
        accept = "application/json" if s.accept == "json" else "application/xml"
        headers = {
            "Accept": "text/csv, */*" if sink is not None else accept,
            "Content-Type": "text/plain; charset=utf-8",
        }
        throttled_in_a_row = 0
        refreshed = False
        while True:
            token = await self._tokens.get()
            headers["accessToken"] = token
            if admit is not None:
                await admit()  # before the slot: holding one while held back could starve
            async with self._limiter:
                if before is not None:
                    await before()
                self.stats.requests += 1
                try:
                    answer = await self._exchange(method, url, headers, params, data, sink)
                except aiohttp.ClientConnectorError as exc:
                    raise Transient(f"cannot connect: {_oneline(exc)}") from None
                except (TimeoutError, aiohttp.ServerDisconnectedError, aiohttp.ClientError) as exc:
                    log.warning("request.dropped", chunk=seq, error=type(exc).__name__)
                    if method == "POST":
                        # A server that timed out on us may still be working on the job.
                        return NoAnswer(timed_out=isinstance(exc, TimeoutError))
                    raise Transient(f"{type(exc).__name__}: {_oneline(exc)}") from None
                finally:
                    if after is not None:
                        after()
            if answer.status == 429:
                throttled_in_a_row += 1
                self.stats.throttled += 1
                pause = self._limiter.throttled(answer.retry_after)
                log.warning(
                    "request.throttled",
                    chunk=seq,
                    pause_s=round(pause, 3),
                    in_a_row=throttled_in_a_row,
                )
                if throttled_in_a_row >= s.max_throttled:
                    raise ThrottledError(
                        f"still throttled after {throttled_in_a_row} pauses", status=429, chunk=seq
                    )
                continue
            if answer.status == 401 and not refreshed and self._tokens.can_refresh:
                refreshed = True
                self.stats.token_refreshes += 1
                log.info("token.refused", chunk=seq)
                await self._tokens.refresh(token)
                continue
            if answer.status in (502, 504) and method == "POST":
                # A gateway gave up on the API server, which may have accepted the job.
                log.warning("request.gateway_error", chunk=seq, status=answer.status)
                return NoAnswer(timed_out=True, status=answer.status)
            if answer.status >= 500:
                raise Transient(f"server error {answer.status}", status=answer.status)
            self._limiter.succeeded()
            return answer

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        params: dict[str, str],
        data: bytes,
        sink: Path | None = None,
    ) -> _Answer:
        async with self._session.request(
            method, url, headers=headers, params=params, data=data or None
        ) as resp:
            if sink is not None and resp.status == 200:
                # Streamed in 64 KiB blocks with plain writes: page-cache fast, and the
                # limiter slot is held until the last byte is in.
                written = 0
                with sink.open("wb") as out:
                    async for block in resp.content.iter_chunked(1 << 16):
                        out.write(block)
                        written += len(block)
                return _Answer(200, resp.content_type, "", None, written)
            text = await resp.text(errors="replace")
            return _Answer(resp.status, resp.content_type, text, _retry_after(resp))

    def _accepted(self, answer: _Answer, seq: int) -> JobAccepted:
        if answer.status != 200:
            self._raise_for(answer, seq)
        data = parse_body(answer.content_type, answer.text)
        job_id = data.get("jobId")
        if not isinstance(job_id, str) or not job_id:
            raise ProtocolError(
                "accepted answer without a jobId",
                status=200,
                chunk=seq,
                server_message=answer.text[:200],
            )
        return JobAccepted(
            job_id, str(data.get("status") or "accepted"), str(data.get("type") or "")
        )

    def _raise_for(self, answer: _Answer, seq: int | None) -> None:
        err = ErrorBody.from_data(parse_body(answer.content_type, answer.text), answer.text)
        ctx = {
            "status": answer.status,
            "error_number": err.error_number,
            "server_message": redact(err.message or ""),
            "chunk": seq,
        }
        s = self._settings
        if answer.status == 400:
            text = f"{err.error_number or ''} {err.message or ''}"
            if err.error_number in s.quota_error_numbers or self._quota_re.search(text):
                raise QuotaExhaustedError("transaction quota exhausted", **ctx)  # type: ignore[arg-type]
            if err.error_number in s.queue_full_error_numbers or self._queue_re.search(text):
                raise QueueFullError("too many jobs queued", **ctx)  # type: ignore[arg-type]
            raise JobRejectedError("job rejected", **ctx)  # type: ignore[arg-type]
        if answer.status in (401, 403, 405):
            what = "access token refused" if answer.status == 401 else "not allowed to use this API"
            raise AuthError(what, **ctx)  # type: ignore[arg-type]
        if answer.status == 415:
            raise ProtocolError("content type refused", **ctx)  # type: ignore[arg-type]
        raise ProtocolError(f"unexpected answer {answer.status}", **ctx)  # type: ignore[arg-type]

    def _on_retry(self, state: RetryCallState) -> None:
        self.stats.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "request.retrying",
            attempt=state.attempt_number,
            wait_s=round(wait, 3),
            reason=str(exc) if exc else None,
        )

    async def download(self, path: str, dest: Path) -> int:
        """GET ``base_url/path`` and stream the body into ``dest``; returns the bytes written.

        Same limiter slot, token, 429 pauses, token refresh and retries as :meth:`get_json`.
        The body goes to ``dest.part`` and is renamed once complete, so a crash never
        leaves half a file under the final name.
        """
        part = dest.with_suffix(dest.suffix + ".part")
        try:
            answer = await self._call("GET", path, None, sink=part)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        part.replace(dest)
        return answer.written


def _any_of(patterns: tuple[str, ...]) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # HTTP-date form: rare for APIs; the backoff takes over


def _oneline(exc: BaseException) -> str:
    return redact(" ".join(str(exc).split()))[:200] or type(exc).__name__


def new_session(settings: Settings) -> aiohttp.ClientSession:
    """The HTTP session of a run or command: connect and read timeouts, a bounded pool."""
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout, sock_read=settings.request_timeout
    )
    connector = aiohttp.TCPConnector(limit=settings.concurrency + 2)
    return aiohttp.ClientSession(timeout=timeout, connector=connector, raise_for_status=False)
