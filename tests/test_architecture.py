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
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in _IMPORT_CALLS:
            target = _imported_by_name(node, here)
            if target is not None:
                found.add(target)
    return {m for m in found if m in MODULES and m != module}


#: Calls that import a module named by a string.
_IMPORT_CALLS = {"importlib.import_module", "import_module", "__import__"}


def _imported_by_name(call: ast.Call, here: str) -> str | None:
    """The module ``importlib.import_module("bulkjob.x")`` (or ``(".x", __package__)``)
    loads, when its name is written out."""
    if not call.args or not isinstance(call.args[0], ast.Constant):
        return None
    name = call.args[0].value
    if not isinstance(name, str):
        return None
    if name.startswith("."):
        level = len(name) - len(name.lstrip("."))
        anchor = here.split(".")[: len(here.split(".")) - (level - 1)]
        name = ".".join([*anchor, name.lstrip(".")] if name.lstrip(".") else anchor)
    return name


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
    """The checks below mean something: known edges are seen, relative and nested ones too,
    and modules imported by a name in a string."""
    assert "bulkjob._client" in reaches("bulkjob._runner")
    assert "bulkjob._journal" in reaches("bulkjob.cli._main")
    assert "bulkjob.sandbox._server" in GRAPH["bulkjob.sandbox"]
    # imported inside a function of the CLI
    assert "bulkjob.sandbox._cli" in GRAPH["bulkjob.cli._main"]
    for sample, here in [
        ("importlib.import_module('bulkjob.cli._main')", "bulkjob"),
        ("import_module('.cli._main', __package__)", "bulkjob"),
        ("__import__('bulkjob.cli._main')", "bulkjob"),
    ]:
        call = ast.parse(sample).body[0].value  # type: ignore[attr-defined]
        assert _imported_by_name(call, here) == "bulkjob.cli._main", sample


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
    """What the sandbox loads, directly or through the shared modules, is its own or the
    wire's: a shared module importing the runner would bring the submitting side along."""
    for module in MODULES:
        if not _in(module, ("bulkjob.sandbox",)):
            continue
        foreign = {
            m
            for m in reaches(module)
            if not _in(m, ("bulkjob.sandbox",)) and m not in SHARED_WITH_SANDBOX
        }
        assert not foreign, f"{module} reaches {sorted(foreign)}"


def test_library_modules_never_import_the_cli() -> None:
    for module in MODULES:
        if _in(module, CLI) or module == "bulkjob":
            continue
        bad = sorted(m for m in reaches(module) if _in(m, CLI))
        assert not bad, f"{module} reaches the command line: {bad}"


#: Names that print or exit wherever they are used (called, or passed on as a value).
_BUILTINS = {"print", "exit", "quit", "breakpoint"}
#: Dotted names that print or exit, used anywhere: ``sys.exit``, ``click.echo``, the root
#: ``logging`` module's functions (they print through ``basicConfig``: a library logs
#: through its own logger), ``traceback.print_*``...
_OUTPUT_ATTRIBUTES = {
    "sys.exit",
    "os._exit",
    "os.abort",
    "click.echo",
    "click.secho",
    "click.echo_via_pager",
    "click.get_text_stream",
    "click.get_binary_stream",
    "signal.raise_signal",
    *(
        f"logging.{f}"
        for f in ("debug", "info", "warning", "warn", "error", "exception", "critical", "log")
    ),
    *(
        f"traceback.{f}"
        for f in ("print_exc", "print_exception", "print_last", "print_stack", "print_tb")
    ),
}
#: The process's own standard streams, as text or bytes.
_STD_STREAMS = {
    f"sys.{stream}{buffer}"
    for stream in ("stdout", "stderr", "__stdout__", "__stderr__")
    for buffer in ("", ".buffer")
}
#: Names that print or exit once imported bare: ``from sys import exit``.
_OUTPUT_IMPORTS = {
    "sys": {"exit", "stdout", "stderr", "__stdout__", "__stderr__"},
    "os": {"_exit", "abort"},
    "click": {"echo", "secho", "echo_via_pager", "get_text_stream", "get_binary_stream"},
    "traceback": {"print_exc", "print_exception", "print_last", "print_stack", "print_tb"},
    "signal": {"raise_signal"},
}


def _prints_or_exits(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every place that prints to the process's stdout/stderr or ends the process.

    ``warnings.warn`` is allowed: a warning is the standard library's channel to the
    application, which decides (through the warnings filters) whether it is shown.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in _BUILTINS:
            yield node.lineno, node.id
        elif isinstance(node, ast.Attribute):
            text = ast.unparse(node)
            if text in _OUTPUT_ATTRIBUTES or text in _STD_STREAMS:
                yield node.lineno, text
        elif isinstance(node, ast.ImportFrom) and not node.level:
            bad = _OUTPUT_IMPORTS.get(node.module or "", set())
            for alias in node.names:
                if alias.name in bad or (alias.name == "*" and bad):
                    yield node.lineno, f"from {node.module} import {alias.name}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            yield from _writes_or_kills_itself(node)
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in ("SystemExit", "KeyboardInterrupt"):
                yield node.lineno, f"raise {exc.id}"


def _writes_or_kills_itself(call: ast.Call) -> Iterator[tuple[int, str]]:
    """``os.write(1 or 2, ...)`` (or to a standard stream's fileno), and
    ``os.kill(os.getpid(), ...)``: a write to stdout/stderr, a signal to this process."""
    what = ast.unparse(call.func)
    first = ast.unparse(call.args[0]) if call.args else ""
    if what == "os.write" and (
        first in ("1", "2") or any(stream in first for stream in ("stdout", "stderr"))
    ):
        yield call.lineno, f"os.write({first}, ...)"
    if what == "os.kill" and first == "os.getpid()":
        yield call.lineno, "os.kill(os.getpid(), ...)"


def test_nothing_outside_the_cli_prints_or_exits() -> None:
    found = [
        f"{module}:{line}: {what}"
        for module, path in MODULES.items()
        if not _in(module, CLI)
        for line, what in _prints_or_exits(ast.parse(path.read_text()))
    ]
    assert not found, found


#: One sample per pattern the check must see (and each on a line of its own).
_PRINT_SAMPLES = [
    "print('x')",
    "say = print",
    "exit(1)",
    "sys.exit(1)",
    "leave = sys.exit",
    "os._exit(1)",
    "os.abort()",
    "sys.stderr.write('y')",
    "sys.stdout.write('y')",
    "sys.stdout.buffer.write(b'y')",
    "sys.stderr.buffer.write(b'y')",
    "sys.__stderr__.write('y')",
    "print_to(sys.stderr)",
    "from sys import stderr",
    "from sys import exit as leave",
    "from sys import stdout",
    "from click import echo",
    "from traceback import print_exc",
    "click.echo('x')",
    "click.secho('x')",
    "logging.warning('x')",
    "logging.info('x')",
    "logging.exception('x')",
    "traceback.print_exc()",
    "traceback.print_exception(e)",
    "os.write(1, b'x')",
    "os.write(2, b'x')",
    "os.write(sys.stderr.fileno(), b'x')",
    "os.kill(os.getpid(), signal.SIGTERM)",
    "signal.raise_signal(signal.SIGINT)",
    "raise SystemExit(2)",
    "raise KeyboardInterrupt",
]
#: What stays allowed: a library's own logger, warnings, writes to its own files, other
#: processes' signals.
_ALLOWED_SAMPLES = [
    "logging.getLogger('bulkjob').warning('x')",
    "log.warning('x')",
    "warnings.warn('x')",
    "out.write(b'x')",
    "os.write(fd, b'x')",
    "os.kill(pid, signal.SIGTERM)",
    "from sys import version_info",
    "traceback.format_exception(e)",
]


@pytest.mark.parametrize("sample", _PRINT_SAMPLES)
def test_the_print_check_sees_each_pattern(sample: str) -> None:
    assert [line for line, _ in _prints_or_exits(ast.parse(sample))] != [], sample


@pytest.mark.parametrize("sample", _ALLOWED_SAMPLES)
def test_the_print_check_leaves_the_allowed_alone(sample: str) -> None:
    assert list(_prints_or_exits(ast.parse(sample))) == [], sample


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
