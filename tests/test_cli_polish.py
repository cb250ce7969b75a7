"""The command line's shared affordances: version, help with defaults, the same options on
every subcommand, shell completion, one-line usage errors, and --dry-run (nothing sent)."""

from __future__ import annotations

from pathlib import Path

import pytest

import bulkjob
from tests.conftest import TOKEN, SandboxFactory, make_ids
from tests.test_cli import bulkjob as run_cli
from tests.test_cli import error_lines, fast_flags

SHARED = ("--config", "--access-token", "--pacing", "--verbose", "--debug", "--log-format")
JOURNAL_COMMANDS = ("status", "wait", "results", "cancel", "resume")


async def test_version_at_the_top_level() -> None:
    code, out, _ = await run_cli("--version")
    assert code == 0
    assert out.strip() == f"bulkjob {bulkjob.__version__}"


@pytest.mark.parametrize("command", ["submit", *JOURNAL_COMMANDS])
async def test_every_api_command_takes_the_shared_options(command: str) -> None:
    code, out, _ = await run_cli(command, "--help")
    assert code == 0
    missing = [flag for flag in SHARED if flag not in out]
    assert not missing, f"{command} --help lacks {missing}"
    assert "--no-progress" in out
    # defaults are shown, from the Settings fields themselves
    assert "[default: 1000]" in " ".join(out.split())


async def test_unknown_option_is_one_error_line_exit_2() -> None:
    code, out, err = await run_cli("status", "j.journal", "--no-such-flag")
    assert code == 2
    assert out == ""
    assert error_lines(err) == err.strip().splitlines()
    assert "--no-such-flag" in err and "bulkjob status --help" in err


async def test_completion_script_and_real_completions() -> None:
    code, out, _ = await run_cli("completion", "bash")
    assert code == 0
    assert "_BULKJOB_COMPLETE" in out and "complete " in out
    # What bash would ask, answered by the real program.
    env = {"_BULKJOB_COMPLETE": "bash_complete", "COMP_WORDS": "bulkjob su", "COMP_CWORD": "1"}
    code, out, _ = await run_cli(env=env)
    assert code == 0
    assert "plain,submit" in out.split()
    env = {
        "_BULKJOB_COMPLETE": "bash_complete",
        "COMP_WORDS": "bulkjob submit --pac",
        "COMP_CWORD": "2",
    }
    code, out, _ = await run_cli(env=env)
    assert "plain,--pacing" in out.split()


async def test_sandbox_help_names_its_token_and_base_url() -> None:
    code, out, _ = await run_cli("sandbox", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "sandbox-token" in text and "http://127.0.0.1:8080/api/v1" in text


def _ids(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("\n".join([*make_ids(count), "not an id"]) + "\n")
    return path


async def test_dry_run_sends_nothing_but_the_usage_question(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    sb = await sandbox(quota=1_000)
    path = _ids(tmp_path, 2_500)
    code, out, err = await run_cli(
        "submit",
        str(path),
        *fast_flags(sb),
        "--chunk-size",
        "1000",
        "--dry-run",
        env={"INSIDEVIEW_ACCESS_TOKEN": TOKEN},
    )
    assert code == 0, err
    assert dict(sb.ledger.routes) == {"usage": 1}
    assert sb.ledger.ids_accepted == 0 and not sb.ledger.jobs
    assert "2,500 valid, 1 invalid" in out
    assert "would submit: 2,500 ids in 3 job(s); credits needed: 2,500" in out
    assert "credits left on the account: 1,000 (NOT enough)" in out


async def test_resume_dry_run_counts_only_what_is_left(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    sb = await sandbox(quota=2_000)
    path = _ids(tmp_path, 5_000)
    journal = tmp_path / "run.journal"
    env = {"INSIDEVIEW_ACCESS_TOKEN": TOKEN}
    flags = [*fast_flags(sb), "--chunk-size", "1000", "--concurrency", "1"]
    code, _, err = await run_cli("submit", str(path), *flags, "--journal", str(journal), env=env)
    assert code == 3, err  # the quota stopped it after two jobs
    before = dict(sb.ledger.routes)
    code, out, err = await run_cli("resume", str(journal), *fast_flags(sb), "--dry-run", env=env)
    assert code == 0, err
    after = dict(sb.ledger.routes)
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k)} == {
        "usage": 1
    }
    assert sb.ledger.ids_accepted == 2_000
    assert "journal: 2 job(s) (2,000 ids) settled" in out
    assert "would submit: 3,000 ids in 3 job(s)" in out
    assert "credits left on the account: 0 (NOT enough)" in out


async def test_submit_dry_run_on_a_journal_forecasts_what_the_submit_would_do(
    sandbox: SandboxFactory, tmp_path: Path
) -> None:
    """``submit --dry-run --journal J`` reads J as the real submit does: with
    --resume-if-exists it forecasts the resume (only what is left), without it it is
    refused as the submit is (exit 2, the same line); J is never changed, and a dry run
    on a journal path that does not exist creates nothing."""
    sb = await sandbox(quota=2_000)
    path = _ids(tmp_path, 5_000)
    journal = tmp_path / "run.journal"
    env = {"INSIDEVIEW_ACCESS_TOKEN": TOKEN}
    flags = [*fast_flags(sb), "--chunk-size", "1000", "--concurrency", "1"]
    on_journal = [str(path), *flags, "--journal", str(journal)]
    code, _, err = await run_cli("submit", *on_journal, env=env)
    assert code == 3, err  # the quota stopped it after two jobs
    written = journal.read_bytes()

    code, out, err = await run_cli(
        "submit", *on_journal, "--resume-if-exists", "--dry-run", env=env
    )
    assert code == 0, err
    assert "journal: 2 job(s) (2,000 ids) settled" in out
    assert "would submit: 3,000 ids in 3 job(s)" in out

    code, out, refused = await run_cli("submit", *on_journal, "--dry-run", env=env)
    assert code == 2 and out == "", refused
    assert len(error_lines(refused)) == 1 and "a journal of another run is here" in refused
    code, _, err = await run_cli("submit", *on_journal, env=env)
    assert code == 2 and error_lines(err) == error_lines(refused)

    assert sb.ledger.ids_accepted == 2_000 and journal.read_bytes() == written
    fresh = tmp_path / "new.journal"
    code, out, err = await run_cli(
        "submit",
        str(path),
        *flags,
        "--journal",
        str(fresh),
        "--resume-if-exists",
        "--dry-run",
        env=env,
    )
    assert code == 0, err
    assert "would submit: 5,000 ids in 5 job(s)" in out
    assert not fresh.exists()


@pytest.mark.parametrize(
    ("where", "off"),
    [("config", "--no-require-quota"), ("env", "--no-strict")],
)
async def test_a_boolean_setting_turned_on_elsewhere_is_turned_off_by_its_flag(
    sandbox: SandboxFactory, tmp_path: Path, where: str, off: str
) -> None:
    """``require_quota = true`` in a config file (the account lacks credits) and
    ``BULKJOB_STRICT=1`` (an invalid id in the input) refuse the run; ``--no-require-quota``
    and ``--no-strict`` on the command line win over them, and the run goes."""
    sb = await sandbox(quota=1_000)
    path = _ids(tmp_path, 1_500)  # and one invalid line
    env = {"INSIDEVIEW_ACCESS_TOKEN": TOKEN}
    args = ["submit", str(path), *fast_flags(sb), "--chunk-size", "500"]
    if where == "config":
        config = tmp_path / "bulkjob.toml"
        config.write_text("require_quota = true\n")
        args += ["--config", str(config)]
    else:
        env["BULKJOB_STRICT"] = "1"
    code, _, err = await run_cli(*args, "--journal", str(tmp_path / "refused.journal"), env=env)
    assert code != 0, err  # refused before anything was sent
    assert sb.ledger.ids_accepted == 0
    code, _, err = await run_cli(*args, "--journal", str(tmp_path / "run.journal"), off, env=env)
    assert sb.ledger.ids_accepted == 1_000, err  # it went, until the account's credits ran out


@pytest.mark.parametrize(
    ("words", "answer"),
    [
        ("bulkjob submit ru", "file,ru"),
        ("bulkjob submit ids.txt --journal ru", "file,ru"),
        ("bulkjob submit ids.txt --report ru", "file,ru"),
        ("bulkjob status ru", "file,ru"),
        ("bulkjob resume ru", "file,ru"),
        ("bulkjob results run.journal --merge ru", "file,ru"),
        ("bulkjob results run.journal --out ru", "dir,ru"),
    ],
)
async def test_file_arguments_complete_as_files(words: str, answer: str) -> None:
    """Where a command takes a path, completion tells the shell to complete a file (or a
    directory) name from what was typed: click's script then lets the shell list the
    directory's entries (``compopt -o default`` in bash). Without a path type the answer
    is empty and the shell offers nothing."""
    env = {
        "_BULKJOB_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    code, out, err = await run_cli(env=env)
    assert code == 0, err
    assert out.split() == [answer]


async def test_bare_bulkjob_prints_its_help_exit_0() -> None:
    """``bulkjob`` alone asks for the help: on stdout, exit 0, no ``error:`` line."""
    code, out, err = await run_cli()
    assert code == 0, err
    assert err == ""
    assert out.startswith("Usage: bulkjob [OPTIONS] COMMAND [ARGS]...")
    assert "submit" in out and "error:" not in out


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--port", "abc"], "argument --port: expected a whole number, got 'abc'"),
        (["--port", "70000"], "argument --port: must be from 0 to 65535, got 70000"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
async def test_sandbox_usage_error_is_one_line_exit_2(args: list[str], said: str) -> None:
    """A bad ``bulkjob sandbox`` argument is one line, as the other commands say it."""
    code, out, err = await run_cli("sandbox", *args)
    assert code == 2 and out == ""
    assert err.splitlines() == [f"error: {said} (see bulkjob sandbox --help)"]
