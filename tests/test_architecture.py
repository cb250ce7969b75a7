"""The layout's "never" rules, checked over the package's real import graph.

Every ``import`` and ``from ... import`` in every module (at any depth, including
imports inside functions) is resolved to a ``bulkjob`` module name; the rules are then
checked on what each module reaches, directly or through others.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import bulkjob

PACKAGE = Path(bulkjob.__file__).resolve().parent
#: The command-line side: the only modules that may print or exit.
CLI = ("bulkjob.cli", "bulkjob.sandbox._cli", "bulkjob.__main__")
#: What the sandbox may share with the submitting side: the wire's types and errors.
SHARED_WITH_SANDBOX = {"bulkjob._errors", "bulkjob._wire", "bulkjob._kinds"}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _direct(module: str) -> set[str]:
    """The bulkjob modules that ``module`` imports anywhere in its text."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    here = module if _is_package(module) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m in MODULES and m != module}


GRAPH = {m: _direct(m) for m in MODULES}


def reaches(module: str) -> set[str]:
    """Every bulkjob module that importing ``module`` can load (its packages' too)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for dep in GRAPH[todo.pop()]:
            parts = dep.split(".")
            for i in range(2, len(parts) + 1):  # importing a.b.c runs a.b/__init__ too
                parent = ".".join(parts[:i])
                if parent in MODULES and parent not in seen and parent != module:
                    seen.add(parent)
                    todo.append(parent)
    return seen


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_graph_is_read() -> None:
    """The checks below mean something: known edges are seen, relative and nested ones too."""
    assert "bulkjob._client" in reaches("bulkjob._runner")
    assert "bulkjob._journal" in reaches("bulkjob.cli._main")
    assert "bulkjob.sandbox._server" in GRAPH["bulkjob.sandbox"]
    # imported inside a function of the CLI
    assert "bulkjob.sandbox._cli" in GRAPH["bulkjob.cli._main"]


@pytest.mark.parametrize(
    ("module", "never"),
    [
        ("bulkjob._client", ("bulkjob._journal", "bulkjob._runner", "bulkjob.cli")),
        ("bulkjob._limiter", ("bulkjob._client",)),
    ],
)
def test_lower_layers_never_reach_higher_ones(module: str, never: tuple[str, ...]) -> None:
    bad = sorted(m for m in reaches(module) if _in(m, never))
    assert not bad, f"{module} reaches {bad}"


def test_the_sandbox_shares_only_the_wire_with_the_submitting_side() -> None:
    for module in MODULES:
        if not _in(module, ("bulkjob.sandbox",)):
            continue
        foreign = {
            m
            for m in GRAPH[module]
            if not _in(m, ("bulkjob.sandbox",)) and m not in SHARED_WITH_SANDBOX
        }
        assert not foreign, f"{module} imports {sorted(foreign)}"


def test_library_modules_never_import_the_cli() -> None:
    for module in MODULES:
        if _in(module, CLI) or module == "bulkjob":
            continue
        bad = sorted(m for m in reaches(module) if _in(m, CLI))
        assert not bad, f"{module} reaches the command line: {bad}"


def _prints_or_exits(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in ("print", "exit", "quit", "breakpoint"):
                yield node.lineno, f"{f.id}()"
            if isinstance(f, ast.Attribute) and (
                (isinstance(f.value, ast.Name) and (f.value.id, f.attr) in _EXITS)
                or (f.attr == "write" and _is_std_stream(f.value))
            ):
                yield node.lineno, ast.unparse(f)
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in ("SystemExit", "KeyboardInterrupt"):
                yield node.lineno, f"raise {exc.id}"


_EXITS = {("sys", "exit"), ("os", "_exit"), ("os", "abort")}


def _is_std_stream(node: ast.expr) -> bool:
    text = ast.unparse(node)
    return text in ("sys.stdout", "sys.stderr")


def test_nothing_outside_the_cli_prints_or_exits() -> None:
    found = [
        f"{module}:{line}: {what}"
        for module, path in MODULES.items()
        if not _in(module, CLI)
        for line, what in _prints_or_exits(ast.parse(path.read_text()))
    ]
    assert not found, found


def test_the_print_check_sees_prints() -> None:
    sample = "import sys\nprint('x')\nsys.exit(1)\nsys.stderr.write('y')\nraise SystemExit(2)\n"
    assert sorted(line for line, _ in _prints_or_exits(ast.parse(sample))) == [2, 3, 4, 5]
    assert list(_prints_or_exits(ast.parse(sample.replace("\nprint", "\nlog")))) != []


def _readme_tree() -> set[str]:
    """The module paths the README's layout tree names (``bulkjob/cli/_main.py``, ...)."""
    readme = (PACKAGE.parent / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```", 2)[1]
    named: set[str] = set()
    stack: list[tuple[int, str]] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        name = line.split()[0]
        while stack and stack[-1][0] >= depth:
            stack.pop()
        path = "/".join([*(d for _, d in stack), name.rstrip("/")])
        if name.endswith("/"):
            stack.append((depth, name.rstrip("/")))
        elif path.startswith("bulkjob/"):
            named.add(path)
    return named


def test_the_readme_layout_names_every_module() -> None:
    actual = {str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py")}
    named = _readme_tree()
    assert named, "no layout tree found in the README"
    assert sorted(actual - named) == [], "modules missing from the README's layout"
    assert sorted(named - actual) == [], "the README's layout names modules that do not exist"
