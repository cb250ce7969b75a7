"""Settings precedence as one table over every entry point, library and CLI alike.

Each row names the highest layer present; every lower layer is present too. A layer
sets ``max_requests`` (config 11, env 12, explicit 13) and an access token that is
right only in the highest layer, wrong in the others: the sandbox accepting the run
proves which token won, the run report's recorded settings show which max_requests did.
With no layer at all there is no token: the command refuses, naming where one comes from.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import bulkjob
from bulkjob import ConfigError
from bulkjob._runner import Runner
from bulkjob.sandbox import Sandbox
from tests.conftest import (
    FAST_ENV,
    TOKEN,
    SandboxFactory,
    assert_paid_once,
    make_ids,
    run_cli,
    settings_for,
    write_ids,
)

WRONG = "a-token-the-sandbox-refuses"
TOPS = ["default", "config", "env", "explicit"]
MAX_REQUESTS = {"config": 11, "env": 12, "explicit": 13}
ENTRIES = [
    ("library", "submit"),
    ("library", "resume"),
    ("library", "wait"),
    ("library", "results"),
    ("cli", "submit"),
    ("cli", "resume"),
    ("cli", "wait"),
    ("cli", "results"),
    ("cli", "status"),
]
#: The fast knobs of tests/conftest.py's settings_for, as keywords (env for the CLI).
FAST = {
    "per_seconds": 1.0,
    "concurrency": 4,
    "chunk_size": 100,
    "backoff_initial": 0.01,
    "backoff_max": 0.05,
    "reconcile_grace": 0.2,
    "proof_poll_interval": 0.05,
    "request_timeout": 5.0,
}


class Layers:
    """The config file, environment and explicit values of one row of the table."""

    def __init__(self, top: str, tmp_path: Path) -> None:
        present = TOPS[1 : TOPS.index(top) + 1]
        token = {layer: TOKEN if layer == top else WRONG for layer in present}
        self.config: Path | None = None
        if "config" in present:
            self.config = tmp_path / "settings.toml"
            self.config.write_text(
                f'max_requests = {MAX_REQUESTS["config"]}\naccess_token = "{token["config"]}"\n'
            )
        self.env: dict[str, str] = {}
        if "env" in present:
            self.env = {
                "BULKJOB_MAX_REQUESTS": str(MAX_REQUESTS["env"]),
                "INSIDEVIEW_ACCESS_TOKEN": token["env"],
            }
        self.explicit: dict[str, object] = {}
        if "explicit" in present:
            self.explicit = {"max_requests": MAX_REQUESTS["explicit"], "access_token": TOKEN}
        #: None: no layer sets it (and there is no token at all).
        self.max_requests = MAX_REQUESTS.get(top)

    def flags(self) -> list[str]:
        """The config file and explicit values as CLI flags."""
        out = ["--config", str(self.config)] if self.config else []
        if self.explicit:
            out += ["--max-requests", str(self.explicit["max_requests"])]
            out += ["--access-token", str(self.explicit["access_token"])]
        return out


async def _journal_for(command: str, sb: Sandbox, path: Path, journal: Path) -> None:
    """The run a journal command works on: stopped half way for resume, else complete."""
    if command == "submit":
        return
    report = await Runner(settings_for(sb), [str(path)], journal=journal).run()
    assert report.stop_reason == ("quota" if command == "resume" else None)
    if command == "resume":
        sb.add_quota(10_000)


async def _library(command: str, sb: Sandbox, layers: Layers, path: Path, journal: Path) -> dict:
    """Run one library entry point; what the sandbox and the report say."""
    config, explicit = layers.config, layers.explicit
    if command == "submit":
        aim = {"base_url": sb.base_url, "token_url": sb.token_url, **FAST}
        report = await bulkjob.submit_async(
            [str(path)], journal=journal, config=config, **aim, **explicit
        )
        return {"ok": report.stop_reason is None, "max_requests": report.settings["max_requests"]}
    if command == "resume":
        report = await bulkjob.resume_async(journal, config=config, **explicit)
        return {"ok": report.stop_reason is None, "max_requests": report.settings["max_requests"]}
    if command == "wait":
        return {"ok": (await bulkjob.wait_async(journal, config=config, **explicit)).all_final}
    summary = await bulkjob.results_async(journal, path.parent / "out", config=config, **explicit)
    return {"ok": summary.downloaded == 3}


async def _cli(command: str, sb: Sandbox, layers: Layers, path: Path, journal: Path) -> dict:
    """Run one CLI command as a real process; what the sandbox and the report say."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INSIDEVIEW_", "BULKJOB_"))}
    env.update(FAST_ENV, **layers.env)
    report = path.parent / "report.json"
    args: list[str] = [command]
    if command == "submit":
        args += [str(path), "--journal", str(journal), "--chunk-size", "100"]
        args += ["--base-url", sb.base_url, "--token-url", sb.token_url, "--per", "1"]
    else:
        args.append(str(journal))
    args += {
        "submit": ["--report", str(report), "--no-progress"],
        "resume": ["--report", str(report), "--no-progress"],
        "wait": ["--no-progress"],
        "results": ["--out", str(path.parent / "out")],
        "status": ["--refresh"],
    }[command]
    code, err = await run_cli(*args, *layers.flags(), env=env)
    got: dict[str, object] = {"ok": code == 0, "code": code, "stderr": err}
    if code == 2:
        got["error"] = err
    if report.exists():
        got["max_requests"] = json.loads(report.read_text())["settings"]["max_requests"]
    return got


@pytest.mark.parametrize("top", TOPS)
@pytest.mark.parametrize(("side", "command"), ENTRIES, ids=[f"{s}-{c}" for s, c in ENTRIES])
async def test_precedence(
    side: str,
    command: str,
    top: str,
    sandbox: SandboxFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """explicit/flag > environment > config file > default, for every entry point."""
    sb = await sandbox(quota=150 if command == "resume" else None)
    values = make_ids(300)
    path, journal = write_ids(tmp_path / "ids.txt", values), tmp_path / "run.journal"
    await _journal_for(command, sb, path, journal)
    requests = sb.ledger.requests
    layers = Layers(top, tmp_path)
    if side == "library":
        for name in [n for n in os.environ if n.startswith(("INSIDEVIEW_", "BULKJOB_"))]:
            monkeypatch.delenv(name)
        for name, value in layers.env.items():
            monkeypatch.setenv(name, value)
    if top == "default":  # nothing names a token: refused before any request
        if side == "library":
            with pytest.raises(ConfigError, match="no credentials"):
                await _library(command, sb, layers, path, journal)
        else:
            got = await _cli(command, sb, layers, path, journal)
            assert got["code"] == 2 and "INSIDEVIEW_ACCESS_TOKEN" in str(got["error"]), got
        assert sb.ledger.requests == requests
        return
    run = _library if side == "library" else _cli
    got = await run(command, sb, layers, path, journal)
    assert got["ok"], got  # only the winning layer's token is one the sandbox accepts
    assert sb.ledger.requests > requests
    if command in ("submit", "resume"):
        assert got["max_requests"] == layers.max_requests
        assert_paid_once(sb, values)


async def test_a_settings_object_is_used_as_given(
    sandbox: SandboxFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a Settings object, keywords replace its fields and the environment is not read."""
    sb = await sandbox()
    path = write_ids(tmp_path / "ids.txt", make_ids(120))
    monkeypatch.setenv("BULKJOB_CONCURRENCY", "1")
    monkeypatch.setenv("INSIDEVIEW_ACCESS_TOKEN", WRONG)
    report = await bulkjob.submit_async([str(path)], settings_for(sb), max_requests=77)
    assert report.stop_reason is None and report.ids_submitted == 120
    assert (report.settings["max_requests"], report.settings["concurrency"]) == (77, 4)
