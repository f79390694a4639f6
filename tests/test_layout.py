"""The package layout: short import paths, documented paths, layers and import cycles."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import nnmjax

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nnmjax"
#: Each layer may import only from layers of lower or equal rank.
RANKS = {"_suggest": 0, "_platform": 0, "xla_options": 0, "robust": 0, "scale": 1, "optim": 2,
         "models": 3, "data": 3, "sim": 4, "experiments": 5, "bench": 6, "cli": 7}
#: Modules ranked apart from their folder: a config describes one run to the simulator
#: (below it) as much as a grid to the experiment layer.
MODULE_RANKS = {"nnmjax.experiments.config": 3}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(path: Path, *, top_level_only: bool):
    """The ``nnmjax`` modules a file imports (``from nnmjax.x import y`` counts ``nnmjax.x``
    and, when ``nnmjax.x.y`` is a module, that too)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("nnmjax"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if base.startswith("nnmjax"):
                yield base
                for alias in node.names:
                    if _is_module(f"{base}.{alias.name}"):
                        yield f"{base}.{alias.name}"


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _rank(module: str) -> int:
    return MODULE_RANKS.get(module, RANKS[_layer(module)])


@pytest.mark.parametrize("short", sorted(nnmjax.SHORT_PATHS))
def test_short_paths_are_the_modules_they_name(short):
    module = importlib.import_module(f"nnmjax.{short}")
    assert module is importlib.import_module(nnmjax.SHORT_PATHS[short])
    assert getattr(nnmjax, short) is module


def test_every_module_sits_in_a_layer_and_imports_only_lower_layers():
    bad = []
    for module, path in _modules():
        layer = _layer(module)
        if not layer:
            continue
        assert layer in RANKS, f"{module}: not in a known layer"
        for imported in _imports(path, top_level_only=False):
            if _layer(imported) and _rank(imported) > _rank(module):
                bad.append(f"{module} imports {imported}")
    assert not bad, bad


def test_no_import_cycle_between_modules():
    graph = {m: set() for m, _ in _modules()}
    for module, path in _modules():
        graph[module] = {i for i in _imports(path, top_level_only=True)
                         if i in graph and i != module and not module.startswith(i + ".")}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in graph[m]:
            if state.get(n) == "open":
                pytest.fail(" -> ".join(stack + [m, n]))
            if n not in state:
                visit(n, stack + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


def _documented_paths():
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted((ROOT / "notebooks").glob("*.ipynb"))]
    found = set()
    for path in texts:
        found |= set(re.findall(r"(?<![\w./])nnmjax(?:\.[A-Za-z_]\w*)+", path.read_text()))
    return sorted(found)


@pytest.mark.parametrize("dotted", _documented_paths())
def test_every_path_the_docs_name_resolves(dotted):
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
