"""Load a script of the repository (``benchmarks/*.py``, ``scripts/*.py``) as a module, for the
tests of what it computes. Tests import it as ``from repo_scripts import load_script``
(``tests/`` is on ``sys.path``, as for ``cli_runner``).

The scripts are not a package (they are run as ``python benchmarks/x.py``), so each load
executes the file afresh under its own module name, registered in ``sys.modules`` while it runs
(dataclasses look their module up there) and afterwards, so pickling and monkeypatching work.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relpath: str) -> ModuleType:
    """The module of ``REPO/relpath`` (e.g. ``"benchmarks/bench_gpu.py"``), freshly executed."""
    path = REPO / relpath
    name = "repo_script_" + relpath.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def parse_python(source: str):
    """``ast.parse(source)``, in a fresh thread if CPython 3.11's parser trips over its own
    recursion bookkeeping ("SystemError: AST constructor recursion depth mismatch",
    gh-106905): a new thread starts with a clean C recursion counter. Seen in randomly ordered
    full runs (test_contracts once, test_layers once in CI); the tests that read the
    repository's sources all parse through here."""
    import ast

    try:
        return ast.parse(source)
    except SystemError:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(ast.parse, source).result()
