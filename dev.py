#!/usr/bin/env python3
"""Project tasks that need nothing but python3: a private venv is made on first use.

python3 dev.py demo    run `bulkjob demo` against the embedded sandbox
python3 dev.py test    lint (ruff), types (mypy --strict on the package), then the test suite
                       on every supported Python found (3.11, 3.12, 3.13), each in its venv
python3 dev.py test --python 3.13 [PYTEST ARGS]   the suite on the named version(s) only
python3 dev.py bench   the benchmarks in benchmarks/

Pythons are looked up in pyenv's versions directory, then as python3.X on PATH; one not
found is reported and skipped (the one running dev.py is always there). The one running
dev.py uses .venv (or $BULKJOB_VENV); the others .venv-3.X.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("BULKJOB_VENV", ROOT / ".venv"))
BIN_DIR = "Scripts" if os.name == "nt" else "bin"
BIN = VENV / BIN_DIR
#: The Python versions the suite runs on (pyproject's requires-python and up).
VERSIONS = ("3.11", "3.12", "3.13")
#: The suites of the other versions run side by side with the first one's (measured on
#: 2 cores: the suite mostly waits on timers and sockets, so three at once take about as
#: long as the slowest alone rather than the sum).
CONCURRENT = True
CURRENT = f"{sys.version_info.major}.{sys.version_info.minor}"


def _run(*cmd: str | Path) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    code = subprocess.call([str(c) for c in cmd], cwd=ROOT)
    if code:
        sys.exit(code)


def ensure_venv(python: Path | None = None, where: Path = VENV) -> Path:
    """Create a venv (with ``python``, else this interpreter) and install the project with its
    dev extra, again when pyproject changes; returns its bin directory."""
    bin_dir = where / BIN_DIR
    stamp = where / ".bulkjob-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == want:
        return bin_dir
    if not (bin_dir / "python").exists():
        print(f"creating {where}", flush=True)
        if python is None:
            venv.EnvBuilder(with_pip=True, clear=True).create(where)
        else:
            _run(python, "-m", "venv", "--clear", where)
    _run(
        bin_dir / "python",
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "-e",
        f"{ROOT}[dev]",
    )
    stamp.write_text(want)
    return bin_dir


def find_python(version: str) -> Path | None:
    """An interpreter of ``version`` (X.Y): pyenv's newest X.Y.*, else pythonX.Y on PATH."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(
        (p for p in root.glob(f"{version}.*") if p.name.replace(".", "").isdigit()),
        key=lambda p: [int(n) for n in p.name.split(".")],
    )
    candidates = [p / BIN_DIR / "python3" for p in reversed(found)]
    on_path = shutil.which(f"python{version}")
    if on_path:
        candidates.append(Path(on_path))
    for python in candidates:
        # A pyenv shim for a version not selected exists but fails: ask it for its version.
        try:
            said = subprocess.run(
                [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if said == version:
            return python
    return None


def _versions(args: list[str]) -> tuple[list[str], list[str]]:
    """``--python X.Y`` options (any number) taken out of ``args``: (versions, the rest)."""
    chosen: list[str] = []
    rest: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == "--python":
            chosen.append(next(it, ""))
        elif arg.startswith("--python="):
            chosen.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    for version in chosen:
        if version not in VERSIONS:
            print(f"error: --python {version}: one of {', '.join(VERSIONS)}", file=sys.stderr)
            sys.exit(2)
    return chosen or list(VERSIONS), rest


def demo(args: list[str]) -> None:
    ensure_venv()
    _run(BIN / "bulkjob", "demo", *args)


def test(args: list[str]) -> None:
    """Lint and types once, then the suite on every version asked for and found."""
    versions, pytest_args = _versions(args)
    ensure_venv()
    _run(BIN / "ruff", "check", "bulkjob", "tests", "benchmarks", "dev.py")
    _run(BIN / "ruff", "format", "--check", "bulkjob", "tests", "benchmarks", "dev.py")
    _run(BIN / "mypy", "bulkjob")
    runs: dict[str, Path] = {}
    for version in versions:
        if version == CURRENT:
            runs[version] = BIN
            continue
        python = find_python(version)
        if python is None:
            print(f"python {version}: not found (pyenv or python{version} on PATH), skipped")
            continue
        runs[version] = ensure_venv(python, ROOT / f".venv-{version}")
    failed = _pytest_all(runs, pytest_args)
    if failed:
        print(f"tests failed on Python {', '.join(failed)}", flush=True)
        sys.exit(1)


def _pytest_all(runs: dict[str, Path], args: list[str]) -> list[str]:
    """Run pytest in each venv (concurrently when CONCURRENT), each version's output in one
    block, prefixed; returns the versions that failed."""
    started = time.monotonic()
    if len(runs) == 1:
        ((version, bin_dir),) = runs.items()
        print(f"+ [python {version}] pytest -q {' '.join(args)}", flush=True)
        code = subprocess.call([str(bin_dir / "python"), "-m", "pytest", "-q", *args], cwd=ROOT)
        return [version] if code else []
    with tempfile.TemporaryDirectory(prefix="bulkjob-dev-") as tmp:
        procs: dict[str, tuple[subprocess.Popen[bytes], Path, float]] = {}
        for version, bin_dir in runs.items():
            log = Path(tmp) / f"pytest-{version}.log"
            print(f"+ [python {version}] pytest -q {' '.join(args)}", flush=True)
            with log.open("wb") as out:
                cmd = [str(bin_dir / "python"), "-m", "pytest", "-q", *args]
                if version != CURRENT:  # one cache writer: the main venv's run
                    cmd[3:3] = ["-p", "no:cacheprovider"]
                proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
            procs[version] = (proc, log, time.monotonic())
            if not CONCURRENT:
                proc.wait()
        failed = []
        for version, (proc, log, began) in procs.items():
            code = proc.wait()
            took = time.monotonic() - began
            print(f"--- python {version}: exit {code} ---", flush=True)
            sys.stdout.buffer.write(log.read_bytes())
            print(f"--- python {version}: {'ok' if code == 0 else 'FAILED'} ---", flush=True)
            if not CONCURRENT:
                print(f"    ({took:.0f} s)", flush=True)
            if code:
                failed.append(version)
    print(f"pytest on {', '.join(runs)}: {time.monotonic() - started:.0f} s", flush=True)
    return failed


def bench(args: list[str]) -> None:
    ensure_venv()
    _run(BIN / "python", "-m", "benchmarks", *args)


TASKS = {"demo": demo, "test": test, "bench": bench}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    TASKS[sys.argv[1]](sys.argv[2:])
