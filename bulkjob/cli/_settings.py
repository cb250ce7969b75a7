"""How every command builds its settings: the library's one path, plus what only a CLI does.

The flags go to :func:`~bulkjob._config.load_settings` like a Python caller's keywords
(flag > environment > ``--config`` or ``BULKJOB_CONFIG`` > the journal's record >
default), so no command can read its settings differently from another, or from the
library.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

from .._config import load_settings
from .._logging import configure_logging, register_secret
from .._settings import Settings

__all__ = ["command_settings"]


def command_settings(
    flags: Mapping[str, object],
    *,
    config: str | None,
    recorded: Mapping[str, object] | None = None,
    debug: bool = False,
    log_format: str | None = None,
) -> Settings:
    """The command's settings; every secret in them registered for redaction at once.

    ``flags`` are the parsed flags that name Settings fields (``None``: not given);
    ``recorded`` is the journal's record for commands on an existing run.
    """
    # Logging first, to stderr: loading notes an ignored BULKJOB_* variable at debug level,
    # and structlog left unconfigured would print it to stdout, which `--merge -` owns.
    level = logging.DEBUG if debug else logging.WARNING
    configure_logging(log_format or "console", level=level, stream=sys.stderr)
    settings = load_settings(flags, config=config, recorded=recorded)
    register_secret(settings.access_token)
    register_secret(settings.client_secret)
    return settings
