"""The one direction of imports (ARCHITECTURE.md, "The picture in words"): every import in
``ffcv_dp4tl/`` and ``beton_builders/`` — at module level, inside functions, under
``TYPE_CHECKING`` — goes from a layer to one it may import. A lazy import inside a function
is still a dependency: a leaf that imported ``data`` in a function (``reporting``) went
unseen until a newcomer's review listed it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from repo_scripts import parse_python

ROOT = Path(__file__).resolve().parents[1]

#: modules every layer may import, which import no other layer of the project
LEAVES = {"contracts", "errors", "fsutil", "locks", "outputs", "cpus", "stopping", "reporting",
          "progress", "lazy", "shipped", "figures"}
#: layer -> the layers it may import (besides itself and the leaves); None: any
ALLOWED: dict[str, set[str] | None] = {
    "beton_builders": set(),
    "leaf": set(),
    "data": {"beton_builders"},
    "kernels": set(),
    "training": {"data", "beton_builders"},
    "scoring": {"data", "training", "kernels", "beton_builders"},
    "evaluation": {"data", "training"},
    "environment": {"data", "kernels"},
    "pipeline": {"data", "training", "scoring", "kernels", "beton_builders"},
    "bench": {"pipeline", "data", "training", "scoring", "kernels", "beton_builders"},
    "cli": None,
    "top": None,  # ffcv_dp4tl/__init__.py, __main__.py
}


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name; None outside the project."""
    parts = module.split(".")
    if parts[0] == "beton_builders":
        return "beton_builders"
    if parts[0] != "ffcv_dp4tl":
        return None
    if len(parts) == 1 or parts[1] == "__main__":
        return "top"
    return "leaf" if parts[1] in LEAVES else parts[1]


def module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, relative ones resolved; ``from pkg import
    name`` counts as ``pkg.name`` when that is a module."""
    me = module_of(path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    out = []
    for node in ast.walk(parse_python(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                sub = ROOT.joinpath(*f"{base}.{a.name}".split("."))
                is_module = sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
                out.append((node.lineno, f"{base}.{a.name}" if is_module else base))
    return out


def _sources() -> list[Path]:
    return sorted(p for pkg in ("ffcv_dp4tl", "beton_builders") for p in (ROOT / pkg).rglob("*.py"))


def test_every_import_goes_the_declared_way():
    wrong = []
    for path in _sources():
        here = layer_of(module_of(path))
        allowed = ALLOWED[here]
        for line, module in imported(path):
            there = layer_of(module)
            if there is None or there == here or there == "leaf" or allowed is None:
                continue
            if there not in allowed:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {module} ({there})")
    assert not wrong, "imports against ARCHITECTURE.md's direction:\n" + "\n".join(wrong)


def test_every_layer_is_known():
    """A new top-level module or package gets its place in the picture (and in ALLOWED) first."""
    layers = {layer_of(module_of(p)) for p in _sources()}
    assert layers <= set(ALLOWED), sorted(layers - set(ALLOWED))


@pytest.mark.parametrize("module, layer", [("ffcv_dp4tl.data.masks", "data"),
                                           ("ffcv_dp4tl.reporting", "leaf"),
                                           ("beton_builders.writer", "beton_builders"),
                                           ("numpy", None), ("ffcv_dp4tl", "top")])
def test_layer_of(module, layer):
    assert layer_of(module) == layer
