"""The one place where a config file, environment variables and explicit values become Settings.

:func:`load_settings` is the only path: :meth:`Settings.load <bulkjob.Settings.load>`,
every Python entry point and every CLI command go through it. Precedence, highest first:
explicit value (keyword or CLI flag) > environment > config file > the journal's record
(for commands on an existing run) > default.

- Config file: TOML with the :class:`~bulkjob._settings.Settings` field names as
  top-level keys, or in a ``[bulkjob]`` table (see ``config.example.toml``); an unknown
  key is an error. Named by the caller (``config=``, ``--config``), else by the
  ``BULKJOB_CONFIG`` environment variable.
- Environment: ``INSIDEVIEW_ACCESS_TOKEN``, ``INSIDEVIEW_CLIENT_ID`` and
  ``INSIDEVIEW_CLIENT_SECRET`` for the credentials, and ``BULKJOB_<FIELD>`` (upper case)
  for any other field; lists are comma-separated (or a JSON list, for regular expressions
  that contain commas), booleans ``true``/``false``/``1``/``0``. An unknown ``BULKJOB_*``
  variable is ignored with a debug note: other tools (the project's own ``dev.py``) use
  the prefix too, and a stray variable must not stop every command.
- Explicit values: by field name; ``None`` means "not given".
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path

from ._errors import ConfigError
from ._logging import get_logger
from ._settings import Settings

__all__ = ["CONFIG_ENV", "ENV_CREDENTIALS", "FIXED_ON_RESUME", "load_settings"]

#: Settings that decide chunk boundaries or contents: a resume must keep the journal's.
FIXED_ON_RESUME = ("kind", "chunk_size", "column", "id_pattern", "dedupe", "strict")

ENV_CREDENTIALS = {
    "INSIDEVIEW_ACCESS_TOKEN": "access_token",
    "INSIDEVIEW_CLIENT_ID": "client_id",
    "INSIDEVIEW_CLIENT_SECRET": "client_secret",
}
ENV_PREFIX = "BULKJOB_"
#: The environment variable naming a config file when the caller names none.
CONFIG_ENV = "BULKJOB_CONFIG"
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_HINTS = typing.get_type_hints(Settings)

log = get_logger()


def load_settings(
    values: Mapping[str, object] | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    recorded: Mapping[str, object] | None = None,
) -> Settings:
    """Merge the sources into validated Settings; raises ConfigError naming the source.

    ``env`` defaults to ``os.environ``. ``recorded`` is a journal's record of its run's
    settings: a layer below the config file, and the settings that shape chunks
    (:data:`FIXED_ON_RESUME`) must end up as recorded.
    """
    environ = os.environ if env is None else env
    merged: dict[str, object] = {}
    for key, value in (recorded or {}).items():
        if key in _FIELDS:  # a journal from another version may know other fields
            merged[key] = _tuple(value)
    if config is not None:
        merged.update(_from_file(Path(config)))
    elif environ.get(CONFIG_ENV):
        merged.update(_from_file(Path(environ[CONFIG_ENV]), source=CONFIG_ENV))
    merged.update(_from_env(environ))
    for name, value in (values or {}).items():
        if value is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        merged[name] = _tuple(value)
    settings = Settings(**merged)  # type: ignore[arg-type]
    if recorded is not None:
        _keep_fixed(recorded, settings)
    return settings


def _tuple(value: object) -> object:
    """Lists (TOML, JSON, a caller's) become the tuples the frozen Settings hold."""
    return tuple(value) if isinstance(value, list) else value


def _keep_fixed(recorded: Mapping[str, object], settings: Settings) -> None:
    """Anything that shapes the chunks must stay as recorded, or the journal's chunk
    hashes would no longer describe the same chunks."""
    for name in FIXED_ON_RESUME:
        old = recorded.get(name)
        new = getattr(settings, name)
        if name in recorded and (list(new) if isinstance(new, tuple) else new) != old:
            raise ConfigError(
                f"{name}: cannot change on resume (the journal has {old!r}, now {new!r})"
            )


def _from_file(path: Path, source: str | None = None) -> dict[str, object]:
    where = f"{source}={path}" if source else str(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{where}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    if isinstance(data.get("bulkjob"), dict) and len(data) == 1:
        data = data["bulkjob"]  # a [bulkjob] table is accepted too
    out: dict[str, object] = {}
    for key, value in data.items():
        if key not in _FIELDS:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        out[key] = _tuple(value)
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for var, name in ENV_CREDENTIALS.items():
        if env.get(var):
            out[name] = env[var]
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV:
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name not in _FIELDS:
            log.debug("config.env_ignored", variable=var, reason="not a setting")
            continue
        out[name] = _coerce(name, raw, source=var)
    return out


def _coerce(name: str, raw: str, *, source: str) -> object:
    """Turn an environment string into the field's type."""
    hint = _HINTS[name]
    args = set(typing.get_args(hint))
    text = raw.strip()
    if hint is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{source}: expected true or false, got {raw!r}")
    if type(None) in args and text == "":
        return None
    try:
        if hint is int or int in args:
            return int(text)
        if hint is float or float in args:
            return float(text)
    except ValueError:
        raise ConfigError(f"{source}: expected a number, got {raw!r}") from None
    if typing.get_origin(hint) is tuple:
        if text.startswith("["):  # a JSON list: for regexes that contain commas
            try:
                items = json.loads(text)
            except ValueError:
                raise ConfigError(f"{source}: not a valid JSON list: {raw!r}") from None
            if not isinstance(items, list):
                raise ConfigError(f"{source}: expected a JSON list, got {raw!r}")
            return tuple(items)
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return text
