"""The package's import graph has no cycle: stages import downstream helpers, never each other in a ring.

Every `import` counts, also those inside functions (a lazy import that closes a ring is a cycle waiting
for the day someone hoists it). Built from the source with ast, so it needs no import to run."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ossensor"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The ossensor modules `path` imports (`from ossensor.x import y` counts as ossensor.x.y when that
    is a module, else as ossensor.x)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in known:
            for a in node.names:
                out.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    g = {}
    for name, path in mods.items():
        deps = imports_of(path, known)
        # importing a.b.c runs a/__init__ and a/b/__init__ first: those edges are real too, except towards
        # the packages that hold `name` itself (their __init__ is already running when `name` is imported)
        own = {name.rsplit(".", i)[0] for i in range(1, name.count(".") + 1)}
        for dep in list(deps):
            parts = dep.split(".")
            deps.update(".".join(parts[:i]) for i in range(2, len(parts)) if ".".join(parts[:i]) in known)
        deps -= own | {name}
        g[name] = {d for d in deps if d != "ossensor"}
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    """The checker itself: a planted ring is reported, a chain is not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_lazy_and_from_imports():
    g = graph()
    assert "ossensor.exits" in g["ossensor.ops.metrics"]          # top-level `from ... import`
    assert "ossensor.sensor" in g["ossensor.cli"]                 # inside a function
    assert "ossensor.ship.client" in g["ossensor.ship.pipeline"]


def test_importing_the_cli_raises_no_cycle_error():
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ossensor.cli, ossensor.sensor"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
