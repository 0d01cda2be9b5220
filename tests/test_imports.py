"""No import circle between bridge's modules.

The graph holds the imports a module runs when it is imported: not those inside functions (they
run when called, after every module has loaded) and not ``if TYPE_CHECKING:`` blocks. Importing a
package counts as importing its ``__init__``; ``from package import name`` counts as importing
the submodule when ``name`` is one. A second check adds the imports inside functions: a circle
hidden by moving one import into a function (the registry loading the family modules that
register into it, ``cpu`` and ``winograd`` importing each other) is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bridge"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def bridge_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(
    tree: ast.Module, deferred: bool = False
) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not under ``if TYPE_CHECKING:``, and not
    inside functions unless ``deferred``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With | ast.ClassDef) or (
                deferred and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            ):
                visit(node.body)

    visit(tree.body)
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The bridge module ``name`` names, or None for other packages."""
    return name if name in modules else None


def imports_of(
    module: str, path: Path, modules: dict[str, Path], deferred: bool = False
) -> set[str]:
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in module_level_imports(ast.parse(path.read_text(), str(path)), deferred):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                names.append(submodule if submodule in modules else base)
        targets |= {t for t in map(lambda n: _resolve(n, modules), names) if t}
    targets.discard(module)
    return targets


def import_graph(deferred: bool = False) -> dict[str, set[str]]:
    modules = bridge_modules()
    return {name: imports_of(name, path, modules, deferred) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules (first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_checker_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_checker_skips_function_and_type_checking_imports():
    tree = ast.parse(
        "import os\nif TYPE_CHECKING:\n    import bridge.api\n"
        "def f():\n    import bridge.cli\n"
        "try:\n    import bridge.errors\nexcept ImportError:\n    pass\n"
    )
    assert [ast.unparse(n) for n in module_level_imports(tree)] == [
        "import os",
        "import bridge.errors",
    ]
    assert "import bridge.cli" in map(ast.unparse, module_level_imports(tree, deferred=True))


def test_bridge_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 50 and any(graph.values())
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_no_circle_through_imports_inside_functions():
    cycle = find_cycle(import_graph(deferred=True))
    assert cycle is None, "import circle (counting imports inside functions): " + " -> ".join(
        cycle or []
    )
