"""The import graph between top-level packages, read from the source with `ast` (imports inside functions too).

Rules (issue 12, "one typed bundle contract"):
- samclip_bundle imports none of model_export, service, training;
- model_export imports nothing from service or training;
- service imports nothing from model_export or training, except in its torch backend module;
- samclip_client (installed on its own, issue 14) imports no other package of this repository;
- no cycle between top-level packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("samclip_bundle", "model_export", "service", "training", "loadtests", "samclip_client")
FORBIDDEN = {
    "samclip_bundle": {"model_export", "service", "training", "loadtests"},
    "model_export": {"service", "training", "loadtests"},
    "service": {"model_export", "training", "loadtests"},
    # installs on its own (samclip_client/pyproject.toml), so it imports no other package of this repository
    "samclip_client": {"samclip_bundle", "model_export", "service", "training", "loadtests"},
}
ALLOWED = {"service/runtime/torch_backend.py": {"model_export"}}  # the torch backend runs the PyTorch modules


def imported_packages(source: str, module: str) -> set[str]:
    """Top-level packages of this repository that `source` (module `module`, e.g. "service.runtime.base")
    imports, at any depth of the file (lazy imports in functions included); relative imports resolve to the
    module's own package."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [module.split(".")[0]] if node.level else [node.module or ""]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & set(PACKAGES)
    return found


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer package, imported package) -> the files that import it, over every .py file of PACKAGES."""
    edges: dict[tuple[str, str], list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            module = rel.removesuffix(".py").replace("/", ".")
            for target in imported_packages(path.read_text(encoding="utf-8"), module) - {package}:
                edges.setdefault((package, target), []).append(rel)
    return edges


def violations(edges: dict[tuple[str, str], list[str]]) -> list[str]:
    out = []
    for (src, dst), files in sorted(edges.items()):
        if dst in FORBIDDEN.get(src, set()):
            out += [f"{f} imports {dst}" for f in files if dst not in ALLOWED.get(f, set())]
    return out


def cycle(edges: dict[tuple[str, str], list[str]]) -> list[str] | None:
    """One cycle of the package graph as [a, b, ..., a], or None (depth-first search)."""
    graph: dict[str, set[str]] = {}
    for src, dst in edges:
        graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_layering_rules_hold() -> None:
    edges = package_edges()
    assert violations(edges) == []
    assert ("service", "model_export") in edges  # the torch backend's allowed edge is really seen
    assert edges[("service", "model_export")] == ["service/runtime/torch_backend.py"]


def test_no_cycle_between_packages() -> None:
    assert cycle(package_edges()) is None


@pytest.mark.parametrize(
    "source",
    [
        "from service import x",
        "import service.bundle",
        "def f():\n    from service.runtime.registry import create_backend\n",
        "from service.bundle import Bundle as B, BundleError",
    ],
)
def test_a_forbidden_import_is_caught(source: str) -> None:
    """The checker itself: adding one of these to model_export breaks the rules and makes a cycle."""
    assert imported_packages(source, "model_export.cli") == {"service"}
    edges = {**package_edges(), ("model_export", "service"): ["model_export/cli.py"]}
    assert violations(edges) == ["model_export/cli.py imports service"]
    assert cycle(edges) in (
        ["model_export", "service", "model_export"],
        ["service", "model_export", "service"],
    )


def test_relative_imports_stay_in_their_package() -> None:
    assert imported_packages("from .config import ConfigError", "model_export.checkpoint") == {"model_export"}
    assert imported_packages("import numpy, json", "service.x") == set()
