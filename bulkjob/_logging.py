"""Logging through the standard library's ``logging``, with secrets redacted before a record exists.

bulkjob is a library first: it logs under the ``bulkjob`` logger (``bulkjob.progress`` for
the periodic progress lines) and adds a :class:`logging.NullHandler` there, so nothing is
printed unless the application configures logging; ``logging.getLogger("bulkjob")`` then
silences, filters or routes it like any other library's records. structlog builds the
events (dotted verbs such as ``job.accepted``, with ids and counts as fields) through a
private wrapper around the stdlib logger: bulkjob never calls ``structlog.configure``, so a
host application's own structlog set-up is left alone.

Secrets reach the log only by accident (a token inside a URL, an exception text), so
redaction does not rely on field names alone: every secret value the run knows about
(the configured access token, the client secret, every token minted since) is
registered with :func:`register_secret` and scrubbed from every string in the event.
Redaction runs in bulkjob's own processor chain, before the stdlib record is made: the
record's message, its ``bulkjob_event`` fields and any traceback text are already
scrubbed, and no ``exc_info`` is passed on, so no handler an application attaches can
see a secret. Only the CLI (:func:`configure_logging`) attaches a handler that prints.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

import structlog

__all__ = [
    "LOGGER_NAME",
    "PROGRESS_LOGGER_NAME",
    "configure_logging",
    "get_logger",
    "redact",
    "register_secret",
]

#: The library's logger; every bulkjob logger is it or a child of it.
LOGGER_NAME = "bulkjob"
#: The periodic progress lines (INFO): a CLI off a terminal shows them at its default level.
PROGRESS_LOGGER_NAME = "bulkjob.progress"
#: The attribute of a stdlib record that holds the event's (redacted) fields.
EVENT_ATTR = "bulkjob_event"

REDACTED = "***"
_SECRET_KEYS = frozenset({"access_token", "accesstoken", "client_secret", "clientsecret", "token"})
_secrets: set[str] = set()
_lock = threading.Lock()
# A secret whose value was never registered (a server echoing a URL back, a setting read
# by someone else) is still recognisable by its name: ``clientSecret=...``, ``"accessToken":
# "..."``. Only name-and-value pairs match (``=``, or a quote on either side of ``:``), so
# prose is left alone: "a valid accessToken in header", "client_secret: required when...".
_NAMED_SECRET = re.compile(
    r"""(?ix)
    (client[_-]?secret|access[_-]?token)   # the name, then how its value follows:
    (\s*=\s*["']?                           #   name=value, name = 'value'
    |["']\s*:\s*["']?                       #   "name": value (JSON, a dict's repr)
    |\s*:\s*["'])                           #   name: "value"
    ([^&\s"',;<>]+)                         # the value, up to a delimiter
    """
)
# A library adds a NullHandler to its logger and nothing else (the logging HOWTO's rule):
# records then never reach logging's "last resort" stderr handler.
logging.getLogger(LOGGER_NAME).addHandler(logging.NullHandler())


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


def _to_record(
    logger: object, method: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[str], dict[str, Any]]:
    """The last processor: the stdlib call's arguments, a readable message and the fields.

    The message reads ``job.accepted chunk=3 ids=100`` for any handler; the fields go on
    the record as ``bulkjob_event`` for a structured formatter (the CLI's JSON lines).
    """
    fields = dict(event_dict)
    event = str(fields.get("event", ""))
    exception = fields.get("exception")
    pairs = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("event", "exception"))
    message = f"{event} {pairs}" if pairs else event
    if exception:
        message += f"\n{exception}"
    # exc_info=False: Logger.exception would attach the live exception, unscrubbed; its
    # text is in the message already. stacklevel: the record names the bulkjob module
    # that logged, not structlog.
    return (message,), {"extra": {EVENT_ATTR: fields}, "exc_info": False, "stacklevel": 4}


_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.stdlib.filter_by_level,  # below the logger's level: dropped before any work
    structlog.contextvars.merge_contextvars,
    structlog.processors.format_exc_info,  # the traceback becomes text, and so is scrubbed
    redact_processor,
    _to_record,
]


def get_logger(name: str = LOGGER_NAME) -> structlog.stdlib.BoundLogger:
    """A structlog logger over the stdlib logger ``name`` (``bulkjob`` or a child of it).

    A private wrapper, not ``structlog.get_logger``: the processors are bulkjob's own,
    whatever the host application configured for structlog.
    """
    if name != LOGGER_NAME and not name.startswith(LOGGER_NAME + "."):
        raise ValueError(f"bulkjob logs under {LOGGER_NAME!r}, not {name!r}")
    return structlog.stdlib.BoundLogger(logging.getLogger(name), list(_PROCESSORS), {})


class StructFormatter(logging.Formatter):
    """Renders bulkjob's records as console text or JSON lines (the CLI's output).

    A record without bulkjob's fields (another library's) is rendered from its message,
    through the same redaction.
    """

    def __init__(self, fmt: str = "console") -> None:
        super().__init__()
        self._renderer: structlog.typing.Processor = (
            structlog.processors.JSONRenderer()
            if fmt == "json"
            else structlog.dev.ConsoleRenderer(colors=False)
        )

    def format(self, record: logging.LogRecord) -> str:
        """One line (or a line and its traceback) for ``record``."""
        fields = getattr(record, EVENT_ATTR, None)
        event: dict[str, Any]
        if isinstance(fields, Mapping):
            event = dict(fields)
        else:
            event = {"event": record.getMessage()}
            if record.exc_info:
                event["exception"] = self.formatException(record.exc_info)
            redact_processor(None, record.levelname.lower(), event)
        when = datetime.fromtimestamp(record.created, UTC)
        event["timestamp"] = when.isoformat().replace("+00:00", "Z")
        event["level"] = record.levelname.lower()
        if record.name != LOGGER_NAME:
            event["logger"] = record.name
        rendered = self._renderer(None, record.levelname.lower(), event)
        return rendered if isinstance(rendered, str) else str(rendered)


#: The handler configure_logging attached last (replaced, not added to, on a second call).
_handler: logging.Handler | None = None


def configure_logging(
    fmt: str = "console",
    *,
    level: int = logging.INFO,
    stream: TextIO,
    progress: bool = False,
) -> logging.Handler:
    """For the CLI: print bulkjob's records to ``stream`` (its stderr) as console text or
    JSON. The stream is the caller's to name: the library never picks a process stream.

    ``level`` applies to the ``bulkjob`` logger. ``progress`` shows the periodic
    ``run.progress`` lines (INFO) whatever ``level`` is: a CLI off a terminal wants them
    by default; without it they are hidden (a terminal has its live line instead).
    Libraries never call this: attaching a handler is the application's business.
    """
    global _handler
    logger = logging.getLogger(LOGGER_NAME)
    if _handler is not None:
        logger.removeHandler(_handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(StructFormatter(fmt))
    logger.addHandler(handler)
    logger.setLevel(level)
    logging.getLogger(PROGRESS_LOGGER_NAME).setLevel(
        logging.INFO if progress else max(level, logging.WARNING)
    )
    _handler = handler
    return handler


def unconfigure_logging() -> None:
    """Undo :func:`configure_logging` (tests; a CLI run in-process)."""
    global _handler
    logger = logging.getLogger(LOGGER_NAME)
    if _handler is not None:
        logger.removeHandler(_handler)
        _handler = None
    logger.setLevel(logging.NOTSET)
    logging.getLogger(PROGRESS_LOGGER_NAME).setLevel(logging.NOTSET)
