"""The shape of the package: every module imports on its own, no import cycles, modules and functions a
reader takes in at once, no lint suppressed in ``benchmark/``."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "benchmark"
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60


def module_files() -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package; ``__main__`` modules run on import, so left out."""
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def benchmark_imports(name: str, path: Path) -> set[str]:
    """The ``benchmark`` modules that module ``name`` imports when it is loaded: imports at module level,
    outside ``if TYPE_CHECKING:`` blocks (imports inside functions run later and cannot form a cycle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for block in (node.body, getattr(node, "orelse", []), getattr(node, "finalbody", [])):
                    visit(block)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`

    visit(ast.parse(path.read_text()).body)
    return {n for n in found if n == "benchmark" or n.startswith("benchmark.")}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of ``graph`` (module -> modules it imports), one path per cycle found by depth-first search."""
    cycles, state = [], {}  # state: 1 = on the current path, 2 = done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                walk(target, path + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    return cycles


def test_no_import_cycles() -> None:
    modules = module_files()
    graph = {name: {m for m in benchmark_imports(name, path) if m in modules and m != name} for name, path in modules.items()}
    assert import_cycles(graph) == []


IMPORT_EACH_FIRST = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "benchmark" or m.startswith("benchmark.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(f"{name}:\\n{traceback.format_exc()}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """Each module is imported before any other ``benchmark`` module is loaded (the rest is reloaded for
    each), so an import that only works after another module was imported shows up."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH_FIRST, *module_files()], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_modules_and_functions_are_short() -> None:
    too_long = []
    for path in module_files().values():
        source = path.read_text()
        where = path.relative_to(REPO)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{where}: {len(source.splitlines())} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{where}:{node.lineno} {node.name}: {lines} lines (at most {MAX_FUNCTION_LINES})")
    assert too_long == []


def test_no_suppressed_lint_in_the_package() -> None:
    """A ``# noqa`` hides an import that is not at the top, unused or re-exported: fix the cause instead."""
    suppressed = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "# noqa" in line
    ]
    assert suppressed == []
