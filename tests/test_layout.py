"""The package's shape: no import cycle, executors below the pipeline, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hetmpi"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the hetmpi modules it imports anywhere (functions included), except under
    ``if TYPE_CHECKING``."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(node)
            for branch in ast.walk(tree)
            if isinstance(branch, ast.If) and getattr(branch.test, "id", "") == "TYPE_CHECKING"
            for node in ast.walk(branch)
        }
        found = set()
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hetmpi"):
                found |= {resolve(f"{node.module}.{alias.name}") for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {resolve(a.name) for a in node.names if a.name.startswith("hetmpi")}
        graph[name] = {target for target in found if target and target != name}
    return graph


def test_no_import_cycle() -> None:
    graph = imports()
    seen: dict[str, str] = {}  # module -> "open" while on the path, "done" after

    def visit(module: str, path: list[str]) -> None:
        seen[module] = "open"
        for target in sorted(graph[module]):
            assert seen.get(target) != "open", " -> ".join([*path, module, target])
            if target not in seen:
                visit(target, [*path, module])
        seen[module] = "done"

    for module in sorted(graph):
        if module not in seen:
            visit(module, [])


def test_executors_do_not_import_the_pipeline() -> None:
    above = {"hetmpi.pipeline", "hetmpi.context", "hetmpi.arrayjob", "hetmpi.launch"}
    for module, targets in imports().items():
        if module.startswith("hetmpi.executors"):
            assert not targets & above, (module, targets & above)


def test_no_module_is_over_500_lines() -> None:
    long = {
        module_name(path): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long
