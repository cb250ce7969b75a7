"""Access tokens: a fixed one, or one minted from client id + secret and kept fresh.

InsideView sends the token in a custom ``accessToken`` header. Minted tokens carry an
``expirationTime`` such as ``"Tue, Jul 21, 2015 09:08:17 PM GMT"`` whose lifetime varies
per key, so the token is re-fetched ahead of that time, and once more on a 401.
Every token value is registered for log redaction the moment it is known.

The login host is a service of its own and fails like one: a 5xx, a reset connection, a
timeout or an answer without a token is retried with the run's backoff, like any
transient error. Only a 4xx (other than 429) is a refusal of the credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
from datetime import UTC, datetime

import aiohttp

from ._errors import AuthError, ProxyRefusedError, Transient, TransportError, UnreachableError
from ._limiter import WindowLimiter
from ._logging import get_logger, register_secret
from ._network import ProxyRoute, connect_failure, proxy_route
from ._retry import retrying
from ._settings import Settings
from ._wire import ErrorBody, parse_body

__all__ = ["TokenSource", "parse_expiration"]

_EXPIRATION_FORMATS = ("%a, %b %d, %Y %I:%M:%S %p GMT", "%a, %d %b %Y %H:%M:%S GMT")
log = get_logger()


def parse_expiration(text: str) -> float | None:
    """The documented ``expirationTime`` as a POSIX timestamp, or None if unreadable."""
    for fmt in _EXPIRATION_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


def _clock_offset(date_header: str | None, now: float) -> float:
    """The login host's clock minus ours, from its Date header (0 without one)."""
    if not date_header:
        return 0.0
    try:
        return email.utils.parsedate_to_datetime(date_header).timestamp() + 0.5 - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return 0.0


class TokenSource:
    """Hands out a valid access token; refreshes minted tokens before they expire."""

    __slots__ = (
        "_expires",
        "_limiter",
        "_lock",
        "_proxy",
        "_reached",
        "_refresh_at",
        "_session",
        "_settings",
        "_token",
        "attempts",
        "mints",
        "requests",
    )

    def __init__(
        self,
        settings: Settings,
        session: aiohttp.ClientSession,
        limiter: WindowLimiter | None = None,
    ) -> None:
        self._settings = settings
        self._session = session
        # Token requests go to the login host, which the docs do not say is throttled;
        # counting them anyway costs one slot per mint and can never cost a lockout.
        self._limiter = limiter
        self._token: str | None = settings.access_token
        self._expires: float | None = None
        self._refresh_at = float("inf") if settings.access_token else 0.0
        self._lock = asyncio.Lock()
        self._proxy: ProxyRoute = proxy_route(settings, settings.token_url)
        #: Whether the login host has answered in this command: until then, a connection
        #: that cannot be made fails at once (a wrong token URL is no outage to ride out).
        self._reached = False
        #: How many tokens were minted from the client credentials, and how many requests
        #: to the token endpoint that took (retries included).
        self.mints = 0
        #: Requests made to the token endpoint (retries included).
        self.requests = 0
        #: Connection attempts to the token endpoint, made or not.
        self.attempts = 0
        register_secret(settings.access_token)
        register_secret(settings.client_secret)

    def __repr__(self) -> str:
        state = "fixed" if self._settings.access_token else f"minted x{self.mints}"
        return f"<TokenSource {state} expires={self._expires}>"

    @property
    def can_refresh(self) -> bool:
        """Whether a 401 can be answered by minting a new token."""
        s = self._settings
        return s.client_id is not None and s.client_secret is not None

    async def get(self) -> str:
        """A token believed valid now."""
        if self._token is not None and time.time() < self._refresh_at:
            return self._token
        async with self._lock:
            if self._token is None or time.time() >= self._refresh_at:
                if not self.can_refresh:
                    if self._token is None:
                        raise AuthError(
                            "no credentials: set an access token (INSIDEVIEW_ACCESS_TOKEN or "
                            "--access-token) or a client id and secret"
                        )
                    return self._token
                await self._mint()
            assert self._token is not None
            return self._token

    async def refresh(self, rejected: str) -> str | None:
        """The server refused ``rejected`` (401): mint a new one unless another task did.

        Returns the token this call minted, or None when another task had already.
        """
        if not self.can_refresh:
            raise AuthError("the access token was refused", status=401)
        async with self._lock:
            if self._token != rejected:
                return None
            await self._mint()
            return self._token

    async def _mint(self) -> None:
        try:
            async for attempt in retrying(self._settings):
                with attempt:
                    await self._mint_once()
        except Transient as exc:
            raise TransportError(
                f"the token endpoint kept failing: {exc.reason}", status=exc.status
            ) from None

    async def _mint_once(self) -> None:
        s = self._settings
        params = {"clientId": s.client_id or "", "clientSecret": s.client_secret or ""}
        params["grantType"] = "cred"
        self.attempts += 1
        try:
            async with contextlib.AsyncExitStack() as slot:
                if self._limiter is not None:
                    await slot.enter_async_context(self._limiter)
                self.requests += 1
                async with self._session.post(
                    s.token_url,
                    params=params,
                    headers={"Accept": "application/json", **self._proxy.headers},
                    **self._proxy.options,
                ) as resp:
                    self._reached = True
                    text = await resp.text(errors="replace")
                    status, ctype = resp.status, resp.content_type
                    server_date = resp.headers.get("Date")
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Never the exception's text: it would hold the URL, and with it the secret.
            failure = connect_failure(exc)
            if failure is not None and not self._reached:
                url = s.token_url.split("?", 1)[0]
                raise UnreachableError(
                    f"the token endpoint {url} is unreachable: {failure}", url=url
                ) from None
            log.warning("token.unreachable", error=type(exc).__name__)
            raise Transient(f"unreachable ({type(exc).__name__})") from None
        if status == ProxyRefusedError.STATUS:  # the proxy's answer: the endpoint saw nothing
            raise ProxyRefusedError(url=s.token_url.split("?", 1)[0])
        data = parse_body(ctype, text)
        if status == 429 or status >= 500 or (status < 400 and status != 200):
            log.warning("token.failed", status=status)
            if status == 429 and self._limiter is not None:
                await self._limiter.throttled(None)
            raise Transient(f"answered {status}", status=status)
        if status != 200:
            err = ErrorBody.from_data(data, text)
            raise AuthError(
                "the token endpoint refused the client credentials",
                status=status,
                error_number=err.error_number,
                server_message=err.message,
            )
        details = data.get("accessTokenDetails", data)
        token = details.get("accessToken") if isinstance(details, dict) else None
        if not isinstance(token, str) or not token:
            log.warning("token.unreadable", status=status)
            raise Transient("answered 200 without an accessToken", status=status)
        register_secret(token)
        expiry_text = details.get("expirationTime") if isinstance(details, dict) else None
        expires = parse_expiration(expiry_text) if isinstance(expiry_text, str) else None
        now = time.time()
        if expires is not None:
            # expirationTime is on the login host's clock: move it onto ours.
            expires -= _clock_offset(server_date, now)
        self._token, self._expires = token, expires
        if expires is None:
            self._refresh_at = float("inf")  # unknown lifetime: refresh on a 401 only
        else:
            # Refresh a margin ahead of expiry, but never less than half-way through a
            # short-lived token's life (a margin longer than the life would loop).
            life = max(expires - now, 0.0)
            self._refresh_at = expires - min(s.token_refresh_margin, life / 2)
        self.mints += 1
        log.info("token.minted", expires=expiry_text, mints=self.mints)
