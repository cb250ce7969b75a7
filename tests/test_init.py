"""Tests for the public surface of the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bulkjob
from tests.test_cli import bulkjob as run_cli

ROOT = Path(__file__).resolve().parent.parent


def test_all_is_sorted_and_complete() -> None:
    """``__all__`` is sorted and names exactly the public attributes."""
    assert list(bulkjob.__all__) == sorted(bulkjob.__all__)
    import types

    # Subpackages (bulkjob.sandbox, bulkjob.cli) are reached by their own names; the
    # sandbox's classes and the version are imported at first use, and dir() lists them.
    public = {
        n
        for n in dir(bulkjob)
        if not n.startswith("_") and not isinstance(getattr(bulkjob, n), types.ModuleType)
    } | {"__version__"}
    assert set(bulkjob.__all__) == public - {"annotations", "TYPE_CHECKING"}


def test_command_line_starts_without_the_sandbox() -> None:
    """The command line does not import the sandbox's server (several runs starting at
    once on a small host pay every import), while ``bulkjob.Sandbox`` still works."""
    code = (
        "import sys, bulkjob.cli._main; print('bulkjob.sandbox' in sys.modules); "
        "import bulkjob; print(bulkjob.Sandbox.__name__, 'bulkjob.sandbox' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split("\n")[:2] == ["False", "Sandbox True"], out.stderr


def test_version_from_metadata() -> None:
    """The version comes from the installed package metadata."""
    assert bulkjob.__version__ and bulkjob.__version__ != "0+unknown"


def test_error_tree_has_one_root() -> None:
    """Every exported error derives from BulkJobError."""
    errors = [getattr(bulkjob, n) for n in bulkjob.__all__ if n.endswith("Error")]
    assert all(issubclass(e, bulkjob.BulkJobError) for e in errors)


def test_readme_exit_codes_are_the_table() -> None:
    """The README's exit-code table lists exactly the codes of ExitCode, in order."""
    from pathlib import Path

    from bulkjob._errors import ExitCode

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    cells = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("|")]
    codes = [int(cell) for cell in cells if cell.isdigit()]
    assert codes == [int(c) for c in ExitCode]


async def test_shell_completion_after_version_flag_is_not_polluted() -> None:
    """Completing ``bulkjob --version su<TAB>`` prints completions only: ``--version``
    prints nothing while the shell's completion parses (zsh reads its answer as (type,
    value, help) triples, and a version line would shift every one)."""
    code, out, err = await run_cli(
        env={
            "_BULKJOB_COMPLETE": "zsh_complete",
            "COMP_WORDS": "bulkjob --version su",
            "COMP_CWORD": "2",
        }
    )
    assert code == 0, err
    assert out.splitlines()[:2] == ["plain", "submit"], out


def test_mypy_still_reports_a_misspelt_public_name(tmp_path: Path) -> None:
    """The lazy names' ``__getattr__`` is hidden from type checkers: seen, it would make
    every attribute of ``bulkjob`` valid, and ``from bulkjob import Runer`` or
    ``bulkjob.RunReprt`` would pass ``mypy --strict`` silently."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import bulkjob\nfrom bulkjob import Runer\n\nprint(Runer, bulkjob.RunReprt)\n"
    )
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(probe)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert 'Module "bulkjob" has no attribute "Runer"' in out.stdout, out.stdout
    assert 'Module has no attribute "RunReprt"' in out.stdout, out.stdout


def test_the_sandbox_subpackage_after_a_plain_import() -> None:
    """``import bulkjob; bulkjob.sandbox.SandboxConfig()`` works as when the package
    imported its sandbox at once."""
    code = "import bulkjob; print(bulkjob.sandbox.SandboxConfig.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "SandboxConfig", out.stderr
