"""The import graph of the `integrity` package has no cycle, and the pure core imports no Dagster.

The graph is read from the source with `ast`, not by importing: every `import` and
`from … import` counts, wherever it is written (inside functions, and in `TYPE_CHECKING`
blocks too: an import that only a type checker runs is still an arrow between two modules, and
a cycle of them is one a later runtime import closes). An import inside a function can hide a
cycle from the interpreter at load time; it cannot hide it from this test.

Importing `a.b.c` first runs the packages `a` and `a.b`, so those are arrows too, except for
the importer's own enclosing packages (already being imported when the importer runs; counting
them would make every package that re-exports its submodules a cycle).
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "integrity"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# The Dagster layer and the command line; everything else is the pure core.
SHELL = ("integrity.defs", "integrity.definitions", "integrity.cli")


@dataclass(frozen=True)
class Import:
    """One arrow: `importer` imports `target`, written at `line` (inside a function or not)."""

    importer: str
    target: str
    line: int
    in_function: bool


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def discover_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _known_prefix(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is a module of the package (`pkg.mod.attr`)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


def _relative_base(importer: str, is_package: bool, level: int, module: str | None) -> str:
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        package = package[: len(package) - (level - 1)]
    return ".".join([*package, *([module] if module else [])])


class _Walker(ast.NodeVisitor):
    """Collects every import of a module with its line and whether a function encloses it."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
        self._depth = 0

    def _function(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self._depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found.append((node, self._depth > 0))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The package modules `name` imports, directly or as the packages around them."""
    walker = _Walker()
    walker.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    own = set(_ancestors(name))
    arrows: list[Import] = []

    def add(target: str | None, node: ast.stmt, in_function: bool) -> None:
        if target is None:
            return
        implied = [a for a in _ancestors(target) if a not in own]
        for each in [*implied, target]:
            if each != name:
                arrows.append(Import(name, each, node.lineno, in_function))

    for node, in_function in walker.found:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(_known_prefix(alias.name, modules), node, in_function)
            continue
        base = (
            _relative_base(name, path.name == "__init__.py", node.level, node.module)
            if node.level
            else node.module or ""
        )
        if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
            continue
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            # `from pkg import sub` imports the submodule; `from pkg import name` reads pkg.
            add(
                submodule if submodule in modules else _known_prefix(base, modules),
                node,
                in_function,
            )
    return arrows


def import_graph(root: Path = ROOT) -> dict[str, list[Import]]:
    modules = discover_modules(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Tarjan's components with more than one module (a module importing itself is ignored)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for arrow in graph.get(node, []):
            nxt = arrow.target
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def one_cycle(graph: dict[str, list[Import]], component: list[str]) -> list[Import]:
    """A shortest cycle through the component's first module, as the imports that close it."""
    members = set(component)
    start = component[0]
    came_from: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for arrow in graph[node]:
            if arrow.target not in members:
                continue
            if arrow.target == start:
                path = [arrow]
                while path[0].importer != start:
                    path.insert(0, came_from[path[0].importer])
                return path
            if arrow.target not in came_from:
                came_from[arrow.target] = arrow
                queue.append(arrow.target)
    raise AssertionError(f"{component} is not strongly connected")


def describe(graph: dict[str, list[Import]], component: list[str]) -> str:
    lines = [f"import cycle over {len(component)} modules: {', '.join(component)}", "  e.g.:"]
    for arrow in one_cycle(graph, component):
        where = " (inside a function)" if arrow.in_function else ""
        lines.append(f"    {arrow.importer} -> {arrow.target}  [line {arrow.line}{where}]")
    return "\n".join(lines)


def is_shell(name: str) -> bool:
    return any(name == s or name.startswith(s + ".") for s in SHELL)


# --------------------------------------------------------------------------- the tests


def test_the_package_has_no_import_cycle() -> None:
    """Each domain of integrity/defs/ and each core package imports downwards only; a cycle is
    printed as the modules in it and one loop of imports through them (file lines)."""
    graph = import_graph()
    cycles = strongly_connected(graph)
    report = "\n".join(describe(graph, component) for component in cycles)
    print(report)
    assert not cycles, report


def core_imports_of_the_shell(root: Path = ROOT) -> list[str]:
    """Each import of Dagster (or a dagster_* package), or of a module of the Dagster layer or
    the CLI, written at module level in the pure core (outside any function; a TYPE_CHECKING
    block counts too: the core has no reason to name Dagster's types)."""
    offenders = []
    modules = discover_modules(root)
    for name, path in modules.items():
        if is_shell(name):
            continue
        walker = _Walker()
        walker.visit(ast.parse(path.read_text(encoding="utf-8")))
        for node, in_function in walker.found:
            if in_function:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.level == 0 and node.module:
                targets = [node.module]
            else:
                targets = []
            for target in targets:
                top = target.split(".")[0]
                if top == "dagster" or top.startswith("dagster_"):
                    offenders.append(f"{name} imports {target} (line {node.lineno})")
        offenders += [
            f"{name} imports {a.target} (line {a.line})"
            for a in imports_of(name, path, modules)
            if not a.in_function and is_shell(a.target)
        ]
    return sorted(set(offenders))


def test_the_pure_core_imports_no_dagster_when_it_loads() -> None:
    """Outside integrity/defs/, integrity/definitions.py and the CLI, nothing imports Dagster at
    module level, nor a module of the Dagster layer that would: the core loads without Dagster,
    so the CLI and benchmarks pay nothing for it."""
    offenders = core_imports_of_the_shell()
    assert not offenders, "\n".join(offenders)


# --------------------------------------------------------------------------- the walker itself


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_walker_finds_a_cycle_closed_inside_a_function(tmp_path: Path) -> None:
    """Relative imports, `from package import submodule`, and an import inside a function
    (the kind that keeps a cycle from failing at load) all count; the cycle is printed."""
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "shell/__init__.py": "",
            "shell/a.py": "from . import b\n",
            "shell/b.py": "from .c import thing\n",
            "shell/c.py": (
                "def thing():\n    from integrity.shell import a  # only at call time\n"
            ),
            "shell/d.py": "from integrity.shell.c import thing\n",
        },
    )
    graph = import_graph(root)
    cycles = strongly_connected(graph)
    assert cycles == [["integrity.shell.a", "integrity.shell.b", "integrity.shell.c"]]
    text = describe(graph, cycles[0])
    assert "integrity.shell.c -> integrity.shell.a  [line 2 (inside a function)]" in text
    assert text.startswith("import cycle over 3 modules: integrity.shell.a, integrity.shell.b")


def test_the_walker_counts_a_package_init_that_imports_back(tmp_path: Path) -> None:
    """Importing `pkg.sub` runs `pkg/__init__.py`: an __init__ importing the importer is a cycle;
    a module importing its own package's siblings is not."""
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "room/__init__.py": "from integrity.room.inner import x\n",
            "room/inner.py": "from integrity.room.leaf import y\nx = y\n",
            "room/leaf.py": "y = 1\n",
            "other.py": "from integrity.room.leaf import y\n",
        },
    )
    assert strongly_connected(import_graph(root)) == []
    (root / "room" / "leaf.py").write_text("import integrity.other\ny = 1\n")
    # leaf -> other -> room (its __init__) -> inner -> leaf
    assert strongly_connected(import_graph(root)) == [
        ["integrity.other", "integrity.room", "integrity.room.inner", "integrity.room.leaf"]
    ]


@pytest.mark.parametrize(
    ("importer", "is_package", "level", "module", "expected"),
    [
        (
            "integrity.defs.reconciliation.assets",
            False,
            1,
            "checks",
            "integrity.defs.reconciliation.checks",
        ),
        ("integrity.defs.reconciliation.assets", False, 2, "names", "integrity.defs.names"),
        ("integrity.defs.reconciliation.assets", False, 3, None, "integrity"),
        ("integrity.defs", True, 1, "resources", "integrity.defs.resources"),
    ],
)
def test_relative_imports_resolve(
    importer: str, is_package: bool, level: int, module: str | None, expected: str
) -> None:
    assert _relative_base(importer, is_package, level, module) == expected


def test_the_core_check_names_what_imports_dagster(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "core.py": "import dagster as dg\n",
            "lazy.py": "def later():\n    import dagster\n",
            "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import dagster_aws\n",
            "uses_shell.py": "from integrity.defs.names import REPORT_KEY\n",
            "defs/__init__.py": "",
            "defs/names.py": "import dagster\n",
            "cli.py": "import dagster\n",
        },
    )
    assert core_imports_of_the_shell(root) == [
        "integrity.core imports dagster (line 1)",
        "integrity.typed imports dagster_aws (line 3)",
        "integrity.uses_shell imports integrity.defs (line 1)",
        "integrity.uses_shell imports integrity.defs.names (line 1)",
    ]
