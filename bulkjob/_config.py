"""The one place where a config file, environment variables and CLI flags become Settings.

Precedence, highest first: flag > environment > config file > default.

- Config file: TOML with the :class:`~bulkjob._settings.Settings` field names as
  top-level keys (see ``config.example.toml``); an unknown key is an error.
- Environment: ``INSIDEVIEW_ACCESS_TOKEN``, ``INSIDEVIEW_CLIENT_ID`` and
  ``INSIDEVIEW_CLIENT_SECRET`` for the credentials, and ``BULKJOB_<FIELD>`` (upper case)
  for any other field; lists are comma-separated (or a JSON list, for regular expressions
  that contain commas), booleans ``true``/``false``/``1``/``0``.
- Flags: whatever the CLI parsed, by field name; ``None`` means "not given".
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
from ._settings import Settings

__all__ = ["ENV_CREDENTIALS", "FIXED_ON_RESUME", "load_settings", "settings_for_resume"]

#: Settings that decide chunk boundaries or contents: a resume must keep the journal's.
FIXED_ON_RESUME = ("kind", "chunk_size", "column", "id_pattern", "dedupe", "strict")

ENV_CREDENTIALS = {
    "INSIDEVIEW_ACCESS_TOKEN": "access_token",
    "INSIDEVIEW_CLIENT_ID": "client_id",
    "INSIDEVIEW_CLIENT_SECRET": "client_secret",
}
ENV_PREFIX = "BULKJOB_"
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_HINTS = typing.get_type_hints(Settings)


def load_settings(
    *,
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    base: Mapping[str, object] | None = None,
) -> Settings:
    """Merge the sources into validated Settings; raises ConfigError naming the source.

    ``base`` is a layer below the config file (a journal's recorded settings).
    """
    values: dict[str, object] = {}
    for key, value in (base or {}).items():
        if key in _FIELDS:
            values[key] = tuple(value) if isinstance(value, list) else value
    if config_path is not None:
        values.update(_from_file(Path(config_path)))
    values.update(_from_env(os.environ if env is None else env))
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = value
    return Settings(**values)  # type: ignore[arg-type]


def _from_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if isinstance(data.get("bulkjob"), dict) and len(data) == 1:
        data = data["bulkjob"]  # a [bulkjob] table is accepted too
    out: dict[str, object] = {}
    for key, value in data.items():
        if key not in _FIELDS:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def _from_env(env: Mapping[str, str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for var, name in ENV_CREDENTIALS.items():
        if env.get(var):
            out[name] = env[var]
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name not in _FIELDS:
            raise ConfigError(f"environment variable {var}: unknown setting {name!r}")
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
        if hint is int:
            return int(text)
        if hint is float:
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


def settings_for_resume(
    recorded: Mapping[str, object],
    *,
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> Settings:
    """A journal's settings, with credentials and pacing from the usual sources on top.

    Anything that shapes the chunks must stay as recorded, or the journal's chunk
    hashes would no longer describe the same chunks.
    """
    settings = load_settings(flags=flags, env=env, config_path=config_path, base=recorded)
    for name in FIXED_ON_RESUME:
        old = recorded.get(name)
        new = getattr(settings, name)
        if name in recorded and (list(new) if isinstance(new, tuple) else new) != old:
            raise ConfigError(
                f"{name}: cannot change on resume (the journal has {old!r}, now {new!r})"
            )
    return settings
