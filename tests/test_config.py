"""Tests for the mapping of config file, environment and flags onto Settings."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from bulkjob._errors import ConfigError
from bulkjob._settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_lists_every_setting_with_its_default(tmp_path: Path) -> None:
    """config.example.toml, uncommented, names every field and loads to the defaults."""
    text = (ROOT / "config.example.toml").read_text()
    lines = re.findall(r"^# (\w+) = (.*)$", text, flags=re.M)
    names = {name for name, _ in lines}
    assert names == {f.name for f in dataclasses.fields(Settings)}
    # Fields whose default is None are shown as "" and stay commented.
    defaults = Settings()
    active = [f"{n} = {v}" for n, v in lines if getattr(defaults, n) is not None]
    cfg = tmp_path / "all.toml"
    cfg.write_text("\n".join(active) + "\n")
    assert Settings.load(config=cfg, env={}) == defaults


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    """A flag beats the environment, which beats the file, which beats the default."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_requests = 10\nper_seconds = 60\nconcurrency = 3\n")
    env = {"BULKJOB_MAX_REQUESTS": "20", "BULKJOB_PER_SECONDS": "30"}
    s = Settings.load(config=cfg, env=env, max_requests=40, concurrency=None)
    assert (s.max_requests, s.per_seconds, s.concurrency, s.chunk_size) == (40, 30.0, 3, 10_000)


def test_credentials_from_insideview_env() -> None:
    """The three INSIDEVIEW_* variables fill the credentials."""
    env = {"INSIDEVIEW_CLIENT_ID": "cid", "INSIDEVIEW_CLIENT_SECRET": "shh"}
    s = Settings.load(env=env)
    assert (s.client_id, s.client_secret, s.access_token) == ("cid", "shh", None)
    assert "shh" not in repr(s) and "client_secret" not in s.public()


def test_env_values_are_coerced() -> None:
    """Booleans, numbers and comma lists are read from environment strings."""
    env = {
        "BULKJOB_DEDUPE": "true",
        "BULKJOB_WINDOW_MARGIN": "0.05",
        "BULKJOB_QUOTA_ERROR_NUMBERS": "400-201, 400-202",
    }
    s = Settings.load(env=env)
    assert s.dedupe is True and s.window_margin == 0.05
    assert s.quota_error_numbers == ("400-201", "400-202")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"BULKJOB_DEDUPE": "maybe"}, "BULKJOB_DEDUPE"),
        ({"BULKJOB_MAX_REQUESTS": "many"}, "BULKJOB_MAX_REQUESTS"),
        ({"BULKJOB_CHUNK_SIZE": "10001"}, "chunk_size"),
        ({"BULKJOB_ID_PATTERN": "(["}, "id_pattern"),
    ],
)
def test_bad_env_names_the_variable_or_field(env: dict[str, str], fragment: str) -> None:
    """A bad environment value is a ConfigError naming where it came from."""
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        Settings.load(env=env)


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    """Malformed TOML is a ConfigError naming the file."""
    cfg = tmp_path / "broken.toml"
    cfg.write_text("max_requests = = 3\n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        Settings.load(config=cfg, env={})


def test_bulkjob_table_is_accepted(tmp_path: Path) -> None:
    """Settings may also sit in a [bulkjob] table."""
    cfg = tmp_path / "t.toml"
    cfg.write_text("[bulkjob]\nconcurrency = 2\n")
    assert Settings.load(config=cfg, env={}).concurrency == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("chunk_size", 0),
        ("chunk_size", 10_001),
        ("max_requests", -1),
        ("per_seconds", 0.0),
        ("concurrency", 0),
        ("accept", "yaml"),
        ("kind", "people"),
        ("base_url", "api.example.com"),
        ("max_attempts", True),
    ],
)
def test_settings_validation_names_the_field(field: str, value: object) -> None:
    """Out-of-range settings raise a ConfigError (a ValueError) naming the field."""
    with pytest.raises(ValueError, match=field):
        Settings(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('quota_patterns = "quota"\n', "quota_patterns: expected a list of strings"),
        ("column = 5\n", "column: expected a string"),
        ('dedupe = "yes"\n', "dedupe: expected true or false"),
    ],
)
def test_wrong_types_in_the_file_are_config_errors(
    tmp_path: Path, toml: str, fragment: str
) -> None:
    """A value of the wrong type is refused, naming the field, not used half-right."""
    cfg = tmp_path / "t.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError, match=fragment):
        Settings.load(config=cfg, env={})


def test_env_list_may_be_json_for_regexes_with_commas() -> None:
    """A JSON list keeps a regular expression's commas intact."""
    env = {"BULKJOB_QUOTA_PATTERNS": '["credits? {1,3}", "quota"]'}
    assert Settings.load(env=env).quota_patterns == ("credits? {1,3}", "quota")
