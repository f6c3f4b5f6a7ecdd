"""The package's layers, read from its imports (ast; every import counts, deferred ones too).

    cli/       Typer options -> a recipe -> rendering (rich)
    recipes/   one per verb: the only code that loads models, reads data, writes directories
    the rest   components: pure facts, formulas, plans, tensor cuts, losses, the memory model

Fails on an import cycle anywhere in the package, on a component importing `minitron.cli`,
`minitron.recipes`, rich or typer, and on a recipe importing `minitron.cli`, rich or typer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import minitron

ROOT = Path(minitron.__file__).resolve().parent
UI = ("rich", "typer")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports (absolute names; `from a import b` also counts `a.b` when b is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES)
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}
GRAPH = {name: {m for m in deps if m in MODULES and m != name} for name, deps in IMPORTS.items()}


def _layer(name: str) -> str:
    if name.startswith("minitron.cli") or name == "minitron.__main__":
        return "cli"
    if name.startswith("minitron.recipes"):
        return "recipe"
    return "component"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_the_walk_sees_the_package():
    assert len(MODULES) > 50
    assert "minitron.prune.plan" in GRAPH["minitron.prune.select"]  # a plain `from ... import`
    assert "minitron.recipes.prune" in GRAPH["minitron.cli.prune_cmd"]  # a deferred one, inside a function


def test_no_import_cycle():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("layer", ["component", "recipe"])
def test_layers_import_only_downwards(layer):
    forbidden = ("minitron.cli",) if layer == "recipe" else ("minitron.cli", "minitron.recipes")
    bad = []
    for name, deps in sorted(IMPORTS.items()):
        if _layer(name) != layer:
            continue
        for dep in sorted(deps):
            if dep.startswith(forbidden) or dep.split(".")[0] in UI:
                bad.append(f"{name} imports {dep}")
    assert bad == []
