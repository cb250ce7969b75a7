"""structlog set-up: console or JSON lines, with secrets redacted before anything is rendered.

Event names are dotted verbs (``job.accepted``, ``request.throttled``, ``run.stopped``).
Secrets reach the log only by accident (a token inside a URL, an exception text), so
redaction does not rely on field names alone: every secret value the run knows about
(the configured access token, the client secret, every token minted since) is
registered with :func:`register_secret` and scrubbed from every string in the event.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

import structlog

__all__ = ["configure_logging", "get_logger", "redact", "register_secret"]

REDACTED = "***"
_SECRET_KEYS = frozenset({"access_token", "accesstoken", "client_secret", "clientsecret", "token"})
_secrets: set[str] = set()
_lock = threading.Lock()
# A secret whose value was never registered (a server echoing a URL back, a setting read
# by someone else) is still recognisable by its name: ``clientSecret=...``, ``"accessToken":
# "..."``. Only name-and-value pairs match, so "a valid accessToken in header" is left alone.
_NAMED_SECRET = re.compile(
    r"""(?ix)
    (client[_-]?secret|access[_-]?token)   # the name
    (["']?\s*[:=]\s*["']?)                 # = or : , maybe quoted
    ([^&\s"',;<>]+)                         # the value, up to a delimiter
    """
)


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that it is scrubbed from every log line and report."""
    if value and len(value) >= 4:  # scrubbing tiny strings would mangle ordinary text
        with _lock:
            # Also as it looks inside a URL: the token endpoint takes the secret as a
            # query parameter, and an echoed URL would carry it percent-encoded.
            _secrets.update({value, quote(value, safe=""), quote_plus(value)})


def redact(text: str) -> str:
    """``text`` with every registered secret, and every named secret value, as ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _NAMED_SECRET.sub(rf"\1\2{REDACTED}", text)


def _scrub(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def redact_processor(
    logger: object, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank secret-named fields and scrub secret values anywhere."""
    for key in list(event_dict):
        if key.lower().replace("-", "_") in _SECRET_KEYS:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(
    fmt: str = "console", *, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Route structlog to ``stream`` (stderr by default) as console text or JSON lines."""
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "bulkjob") -> structlog.typing.FilteringBoundLogger:
    """The project's logger."""
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
