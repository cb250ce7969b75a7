"""The network under every request: the HTTP session, proxies, and failed connections.

One session per run or command carries every request: API calls, token mints and
results downloads. Proxies come from two places, the explicit one first:

- ``proxy`` in the settings: every request goes through it, whatever the environment
  says (``NO_PROXY`` included: an explicit proxy is meant for everything);
- otherwise ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` (aiohttp's ``trust_env``),
  as curl and requests read them.

Credentials in a proxy URL are a secret: registered for redaction, sent only as a
``Proxy-Authorization`` header, never part of a URL that an error message could show.

A connection that was never made proves that nothing was sent. :func:`connect_failure`
says whether an exception is one, in words safe to show.
"""

from __future__ import annotations

import base64
import os
import socket
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ._logging import register_secret
from ._settings import Settings

__all__ = ["ProxyRoute", "connect_failure", "new_session", "proxy_route"]

#: Environment variables that may hold a proxy URL (and so a proxy password).
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "ws_proxy", "wss_proxy")


def new_session(settings: Settings) -> aiohttp.ClientSession:
    """The HTTP session of a run or command: connect and read timeouts, a bounded pool,
    and the environment's proxies (the explicit ``proxy`` goes with each request).

    ``trust_env`` only when a proxy variable is set: with it, aiohttp looks each
    request's proxy up in a worker thread (a thread hop per request) and reads
    ``~/.netrc``, neither of which is wanted for nothing.
    """
    environment_proxy = _register_environment_proxies()
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout, sock_read=settings.request_timeout
    )
    connector = aiohttp.TCPConnector(limit=settings.concurrency + 2)
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        raise_for_status=False,
        trust_env=environment_proxy and settings.proxy is None,
    )


@dataclass(frozen=True, slots=True)
class ProxyRoute:
    """How the requests to one URL go through the explicit proxy (nothing without one)."""

    #: ``proxy=`` (without credentials) and ``proxy_headers=`` for ``session.request``.
    options: dict[str, Any] = field(default_factory=dict)
    #: Headers of the request itself: ``Proxy-Authorization`` for a plain http target,
    #: whose request the proxy reads. Never for https: it would reach the server.
    headers: dict[str, str] = field(default_factory=dict)


def proxy_route(settings: Settings, url: str) -> ProxyRoute:
    """The route to ``url`` through ``settings.proxy``.

    Per request rather than per session: aiohttp before 3.11 has no session-wide proxy,
    and a session handed in by the caller is covered too. A request's explicit proxy
    makes aiohttp skip the environment's for it. Credentials go as headers because
    aiohttp ignores those in a proxy URL and deprecates ``proxy_auth``: in the CONNECT
    request for an https target, in the request itself for a plain http one.
    """
    if settings.proxy is None:
        return ProxyRoute()
    parts = urllib.parse.urlsplit(settings.proxy)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    options: dict[str, Any] = {"proxy": urllib.parse.urlunsplit((parts.scheme, netloc, "", "", ""))}
    if parts.username is None and parts.password is None:
        return ProxyRoute(options)
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    register_secret(password)
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    register_secret(token)
    authorization = {"Proxy-Authorization": f"Basic {token}"}
    if urllib.parse.urlsplit(url).scheme == "https":
        return ProxyRoute({**options, "proxy_headers": authorization})
    return ProxyRoute(options, authorization)


def connect_failure(exc: BaseException) -> str | None:
    """Why no connection was made, when ``exc`` says none was (refused, no such host,
    connect timed out, a proxy that refused the tunnel); None when one may have been.

    The words never include the exception's own text, which can hold a URL and, for
    the token endpoint, the client secret in its query.
    """
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return f"the proxy refused the connection ({exc.status})"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connecting timed out"
    if not isinstance(exc, aiohttp.ClientConnectorError):
        return None
    where = "the proxy: " if isinstance(exc, aiohttp.ClientProxyConnectionError) else ""
    # A certificate error carries no os_error: getattr, not the property's AttributeError.
    os_error = getattr(exc, "_os_error", None)
    if isinstance(os_error, socket.gaierror):
        return f"{where}cannot resolve {exc.host} ({os_error.strerror or 'no such name'})"
    if isinstance(os_error, OSError) and (os_error.errno or os_error.strerror):
        # asyncio words a refusal "Connect call failed ('127.0.0.1', 9)": the errno says it.
        reason = os.strerror(os_error.errno) if os_error.errno else str(os_error.strerror)
    else:
        reason = type(getattr(exc, "certificate_error", None) or os_error or exc).__name__
    return f"{where}cannot connect to {exc.host}:{exc.port} ({reason})"


def _register_environment_proxies() -> bool:
    """Whether the environment names a proxy; a password in ``HTTPS_PROXY`` & co. is as
    secret as one in the setting, and is registered for redaction."""
    found = False
    for name in _PROXY_VARIABLES:
        for value in (os.environ.get(name), os.environ.get(name.upper())):
            found = found or bool(value)
            if value and "@" in value:
                try:
                    password = urllib.parse.urlsplit(value).password
                except ValueError:
                    continue
                register_secret(password)
                register_secret(urllib.parse.unquote(password or ""))
    return found
