#!/usr/bin/env python3
"""Project tasks that need nothing but python3: a private venv is made on first use.

python3 dev.py demo    run `bulkjob demo` against the embedded sandbox
python3 dev.py test    lint (ruff), types (mypy --strict on the package), the test suite
python3 dev.py bench   the benchmarks in benchmarks/
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("BULKJOB_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _run(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    code = subprocess.call([str(c) for c in cmd], cwd=ROOT)
    if code:
        sys.exit(code)


def ensure_venv() -> None:
    """Create .venv and install the project with its dev extra, again when pyproject changes."""
    stamp = VENV / ".bulkjob-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == want:
        return
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    _run(
        BIN / "python",
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "-e",
        f"{ROOT}[dev]",
    )
    stamp.write_text(want)


def demo(args: list[str]) -> None:
    ensure_venv()
    _run(BIN / "bulkjob", "demo", *args)


def test(args: list[str]) -> None:
    ensure_venv()
    _run(BIN / "ruff", "check", "bulkjob", "tests", "benchmarks", "dev.py")
    _run(BIN / "ruff", "format", "--check", "bulkjob", "tests", "benchmarks", "dev.py")
    _run(BIN / "mypy", "bulkjob")
    _run(BIN / "python", "-m", "pytest", "-q", *args)


def bench(args: list[str]) -> None:
    ensure_venv()
    _run(BIN / "python", "-m", "benchmarks", *args)


TASKS = {"demo": demo, "test": test, "bench": bench}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    TASKS[sys.argv[1]](sys.argv[2:])
