"""Tests for the public surface of the package."""

from __future__ import annotations

import bulkjob


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
    import subprocess
    import sys

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
