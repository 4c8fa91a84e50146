"""Imports point one way (STYLE.md): engine imports nothing of ours, training only engine, the
front ends go through assistant, nothing imports the command line, and no module cycle exists
(lazy imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "training", "assistant", "lsp", "ui", "cli")
ALLOWED = {
    "engine": {"engine"},
    "training": {"training", "engine"},
    "assistant": {"assistant", "engine"},
    "lsp": {"lsp", "assistant", "engine"},
    "ui": {"ui", "assistant", "engine"},
    "cli": set(PACKAGES),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    return {name: {m for m in our_imports(p) if m in modules and m != name}
            for name, p in modules.items()}


def test_each_package_imports_only_the_layers_below_it():
    wrong = [f"{mod} imports {dep}" for mod, deps in graph().items() for dep in deps
             if dep.split(".")[0] not in ALLOWED[mod.split(".")[0]]]
    assert not wrong, wrong


def test_no_import_cycle_between_modules():
    g = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in g[node]:
            if state.get(dep) == 1:
                return path + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[node] = 2
        return None

    for mod in g:
        if mod not in state:
            cycle = visit(mod, [mod])
            assert cycle is None, " -> ".join(cycle)


def test_the_product_has_no_test_helpers_and_cites_no_private_notes():
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            assert "shared/reference" not in text, path
            assert "stdio_client" not in path.name, path
