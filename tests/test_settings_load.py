"""Tests for Settings.load and SettingsValues: one precedence, typed keywords, the env rules."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import typing
from collections.abc import Iterator
from pathlib import Path

import mypy.api
import pytest
import structlog

import bulkjob
from bulkjob import ConfigError, Settings, SettingsValues
from bulkjob._config import load_settings
from bulkjob._logging import configure_logging
from tests.conftest import cli_env, run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_settings_values_names_every_field_with_its_type() -> None:
    """SettingsValues and the dataclass cannot drift: same names, order and types."""
    names = [f.name for f in dataclasses.fields(Settings)]
    hints = typing.get_type_hints(SettingsValues)
    assert list(hints) == names
    assert hints == {name: typing.get_type_hints(Settings)[name] for name in names}
    assert SettingsValues.__optional_keys__ == frozenset(names)


def test_values_beat_env_beat_config_beat_default(tmp_path: Path) -> None:
    """Each field comes from the highest layer that has it."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_requests = 10\nper_seconds = 60\nconcurrency = 3\n")
    env = {"BULKJOB_MAX_REQUESTS": "20", "BULKJOB_PER_SECONDS": "30"}
    s = Settings.load(config=cfg, env=env, max_requests=40)
    assert (s.max_requests, s.per_seconds, s.concurrency, s.chunk_size) == (40, 30.0, 3, 10_000)


def test_none_counts_as_not_given() -> None:
    """An explicit None leaves the lower layers' value in place."""
    s = Settings.load(env={"BULKJOB_WEBHOOK": "https://hook.example/x"}, webhook=None)
    assert s.webhook == "https://hook.example/x"


@pytest.mark.parametrize(
    ("var", "raw", "field", "value"),
    [
        ("BULKJOB_MAX_RUNNING_JOBS", "3", "max_running_jobs", 3),
        ("BULKJOB_MAX_RUNNING_JOBS", "", "max_running_jobs", None),
        ("BULKJOB_METRICS_PORT", "9100", "metrics_port", 9100),
        ("BULKJOB_PROGRESS_INTERVAL", "0.5", "progress_interval", 0.5),
    ],
)
def test_optional_numbers_from_the_environment(
    var: str, raw: str, field: str, value: object
) -> None:
    """``int | None`` fields take a number (or nothing) from the environment."""
    assert getattr(Settings.load(env={var: raw}), field) == value


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``env``, os.environ is read; ``env={}`` reads nothing."""
    monkeypatch.setenv("BULKJOB_MAX_REQUESTS", "77")
    monkeypatch.setenv("INSIDEVIEW_ACCESS_TOKEN", "from-env")
    s = Settings.load()
    assert (s.max_requests, s.access_token) == (77, "from-env")
    assert Settings.load(env={}) == Settings()


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """JSON log lines at debug level into a buffer; structlog's defaults restored after."""
    buffer = io.StringIO()
    configure_logging("json", level=logging.DEBUG, stream=buffer)
    yield buffer
    structlog.reset_defaults()


def test_unknown_bulkjob_variable_is_ignored_with_a_debug_note(log_stream: io.StringIO) -> None:
    """BULKJOB_VENV (dev.py's) is not a setting: ignored, named in a debug line, no error."""
    env = {"BULKJOB_VENV": "/somewhere/.venv", "BULKJOB_CONCURRENCY": "2"}
    assert Settings.load(env=env) == Settings(concurrency=2)
    events = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    notes = [e for e in events if e["event"] == "config.env_ignored"]
    assert [(n["variable"], n["level"]) for n in notes] == [("BULKJOB_VENV", "debug")]
    assert "/somewhere" not in log_stream.getvalue()


def test_unknown_config_key_stays_an_error(tmp_path: Path) -> None:
    """A misspelt key in a config file is a ConfigError naming the file and the key."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_reqests = 6\n")
    with pytest.raises(ConfigError, match=r"c\.toml: unknown setting 'max_reqests'"):
        Settings.load(config=cfg, env={})


def test_bulkjob_config_names_the_file(tmp_path: Path) -> None:
    """BULKJOB_CONFIG is read when no config is given; an explicit one wins over it."""
    by_env, explicit = tmp_path / "env.toml", tmp_path / "explicit.toml"
    by_env.write_text("concurrency = 5\nmax_requests = 50\n")
    explicit.write_text("concurrency = 7\n")
    env = {"BULKJOB_CONFIG": str(by_env)}
    assert Settings.load(env=env).concurrency == 5
    s = Settings.load(config=explicit, env=env)
    assert (s.concurrency, s.max_requests) == (7, 1000)


@pytest.mark.parametrize("via_env", [False, True])
def test_missing_config_file_names_the_path(tmp_path: Path, via_env: bool) -> None:
    """A config path that does not exist is an error naming it (and the variable)."""
    missing = tmp_path / "nope.toml"
    env = {"BULKJOB_CONFIG": str(missing)} if via_env else {}
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found") as info:
        Settings.load(config=None if via_env else missing, env=env)
    assert ("BULKJOB_CONFIG" in str(info.value)) is via_env


def test_journal_record_sits_below_the_config_file(tmp_path: Path) -> None:
    """For a run that exists: config > record > default, and chunking stays as recorded."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("max_requests = 9\n")
    recorded = {"max_requests": 5, "concurrency": 3, "chunk_size": 100, "not_a_field": 1}
    s = load_settings({}, config=cfg, env={}, recorded=recorded)
    assert (s.max_requests, s.concurrency, s.chunk_size) == (9, 3, 100)
    with pytest.raises(ConfigError, match="chunk_size: cannot change on resume"):
        load_settings({"chunk_size": 50}, env={}, recorded=recorded)


def test_a_settings_object_and_a_config_are_not_mixed(tmp_path: Path) -> None:
    """Given a Settings object, a config file would be ignored: refused instead."""
    with pytest.raises(ConfigError, match="config: not read when a Settings object is given"):
        bulkjob.submit([str(tmp_path / "ids.txt")], Settings(), config=tmp_path / "c.toml")


def _mypy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> tuple[str, int]:
    """mypy --strict, as a user's project runs it, on ``source``; (report, exit status)."""
    script = tmp_path / "user_script.py"
    script.write_text(source)
    monkeypatch.setenv("MYPYPATH", str(ROOT))  # the package from this checkout
    out, err, status = mypy.api.run(
        [
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--no-error-summary",
            str(script),
        ]
    )
    return out + err, status


def test_mypy_catches_misspelt_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt keyword of submit or Settings.load, and a wrong type, are type errors."""
    report, status = _mypy(
        tmp_path,
        monkeypatch,
        "import bulkjob\n"
        'bulkjob.submit(["x"], acess_token="t")\n'
        "bulkjob.Settings.load(max_requets=5)\n"
        'bulkjob.wait("run.journal", max_requests="5")\n',
    )
    errors = [line for line in report.splitlines() if ": error:" in line]
    assert status == 1
    assert len(errors) == 3, report
    assert ":2: error:" in errors[0] and '"acess_token"' in errors[0], report
    assert ":3: error:" in errors[1] and '"max_requets"' in errors[1], report
    assert ":4: error:" in errors[2] and '"max_requests"' in errors[2], report


def test_mypy_accepts_every_entry_point_spelt_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same calls spelt right type-check clean under --strict, on every entry point."""
    report, status = _mypy(
        tmp_path,
        monkeypatch,
        "import bulkjob\n"
        'j = "run.journal"\n'
        'r = bulkjob.submit(["x"], access_token="t", max_requests=5, config="c.toml")\n'
        "s = bulkjob.Settings.load(max_requests=5, pacing='even').replace(concurrency=2)\n"
        "bulkjob.submit(['x'], s, per_seconds=60)\n"
        "bulkjob.resume(j, access_token='t', on_queue_full='stop')\n"
        "bulkjob.wait(j, timeout=5, client_id='c', client_secret='s')\n"
        "bulkjob.results(j, 'out', config='c.toml', concurrency=4)\n"
        "async def main() -> None:\n"
        "    await bulkjob.submit_async(['x'], journal=j, chunk_size=100)\n"
        "    await bulkjob.resume_async(j, max_requests=10)\n"
        "    await bulkjob.wait_async(j, per_seconds=1.5)\n"
        "    await bulkjob.results_async(j, 'out', dedupe=True)\n",
    )
    assert (status, report.strip()) == (0, "")


def test_process_settings_are_not_inherited_by_a_resume() -> None:
    """The proxy and the metrics address belong to a process, not to the run: a journal's
    record (Settings.public) leaves them out, so a resume reads them where it runs."""
    s = Settings(proxy="http://proxy.example:3128", metrics_port=9100, metrics_host="0.0.0.0")
    recorded = s.public()
    assert not {"proxy", "metrics_port", "metrics_host"} & set(recorded)
    assert recorded["max_requests"] == s.max_requests


@pytest.mark.parametrize("field", ["access_token", "client_secret", "proxy"])
async def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path, field: str) -> None:
    """An unquoted token in a TOML file is still the token: the type error names the field
    and never its value, in the library's exception and in the CLI's line."""
    config = tmp_path / "c.toml"
    config.write_text(f"{field} = 987654321987654\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Settings.load(config=config)
    assert str(info.value) == f"{field}: expected a string"
    env = cli_env()
    del env["INSIDEVIEW_ACCESS_TOKEN"]  # the file's token is the one read
    code, err = await run_cli("submit", "-", "--dry-run", "--config", str(config), env=env)
    assert code == 2, err
    assert err.strip() == f"error: {field}: expected a string"
