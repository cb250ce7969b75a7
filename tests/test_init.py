"""Tests for the public surface of the package."""

from __future__ import annotations

import bulkjob


def test_all_is_sorted_and_complete() -> None:
    """``__all__`` is sorted and names exactly the public attributes."""
    assert list(bulkjob.__all__) == sorted(bulkjob.__all__)
    import types

    # Subpackages (bulkjob.sandbox, bulkjob.cli) are reached by their own names.
    public = {
        n
        for n, v in vars(bulkjob).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    } | {"__version__"}
    assert set(bulkjob.__all__) == public - {"annotations", "version", "PackageNotFoundError"}


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
