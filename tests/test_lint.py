"""The code passes ruff's pyflakes rules (pyproject.toml [tool.ruff]).

Why a test: an undefined name in a rarely run path (a benchmark's error branch, a GPU-only stage)
is found here in a second, not on the device machine, whose time is scarce.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> str:
    exe = Path(sys.executable).with_name("ruff")
    found = str(exe) if exe.exists() else shutil.which("ruff")
    assert found, "ruff is not installed: run `bash scripts/setup.sh` (requirements/cpu.txt pins it)"
    return found


def test_pyflakes_rules_pass():
    res = subprocess.run([_ruff(), "check", "--output-format", "concise", "--no-cache", str(ROOT)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_lint_finds_an_undefined_name(tmp_path):
    """The check is live: the same configuration rejects a file with an undefined name."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    return undefined_name\n")
    res = subprocess.run([_ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"),
                          str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1 and "F821" in res.stdout, res.stdout + res.stderr


def test_the_package_and_test_folders_named_data_are_linted(tmp_path):
    """The exclude names the checkout's own data/ and runs/ folders (``./data``): as bare names
    they matched every folder called data, and ffcv_dp4tl/data/ and tests/data/ went unchecked
    (review: unused imports had gathered there); as ``/data`` they excluded nothing. Checked in
    a copy of the configuration beside a data/ of generated files and a package's data/."""
    import shutil

    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for rel in ("data/made.py", "runs/r.py", "ffcv_dp4tl/data/mod.py", "tests/data/test_x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    res = subprocess.run([_ruff(), "check", "--show-files", "--no-cache", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path)
    shown = {str(p.relative_to(tmp_path)) for p in map(Path, res.stdout.split()) if p.is_absolute()
             and p.suffix == ".py"}
    assert shown == {"ffcv_dp4tl/data/mod.py", "tests/data/test_x.py"}, res.stdout


def test_the_declared_python_floor_is_the_one_the_code_is_checked_and_written_for():
    """pyproject's ``requires-python`` is ruff's ``target-version`` (the version the code is
    checked against) and covers the standard library the code imports: it said ">=3.10"
    while ``training/recipe_files.py`` imports ``tomllib`` (Python 3.11), so pip installed the
    package on 3.10 and every recipe lookup failed there (environment audit)."""
    import ast
    import re
    import tomllib

    from repo_scripts import parse_python

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floor = re.fullmatch(r">=\s*3\.(\d+)", project["project"]["requires-python"].strip())
    assert floor, project["project"]["requires-python"]
    assert project["tool"]["ruff"]["target-version"] == f"py3{floor.group(1)}"
    added = {"tomllib": 11}  # standard modules newer than 3.9, by the minor version adding them
    for folder in ("ffcv_dp4tl", "beton_builders"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(parse_python(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                for name in names:
                    need = added.get(name.split(".")[0])
                    assert need is None or int(floor.group(1)) >= need, (path, name)


def test_reading_the_sources_survives_cpythons_parser_bookkeeping_error(monkeypatch):
    """The tests that read the repository's sources parse through ``parse_python``, which
    parses again in a fresh thread when CPython 3.11 raises "AST constructor recursion depth
    mismatch" (gh-106905; the layers test failed on it in a CI run)."""
    import ast
    import threading

    from repo_scripts import parse_python

    parse = ast.parse

    def trips_here(source, *args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            raise SystemError("AST constructor recursion depth mismatch (before=141, after=163)")
        return parse(source, *args, **kwargs)

    monkeypatch.setattr(ast, "parse", trips_here)
    tree = parse_python("import os\n")
    assert isinstance(tree, ast.Module) and isinstance(tree.body[0], ast.Import)


def test_a_symlinked_venv_is_ignored(tmp_path):
    """A git worktree whose ``.venv`` is a symlink to the main checkout's showed it as
    untracked: ``.venv/`` in .gitignore matches a folder only (docs audit). It would also have
    travelled with the working tree to the device machine, which carries untracked files."""
    if shutil.which("git") is None:
        pytest.skip("no git")
    (tmp_path / ".gitignore").write_bytes((ROOT / ".gitignore").read_bytes())
    (tmp_path / "env").mkdir()
    (tmp_path / ".venv").symlink_to(tmp_path / "env")

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True,
                              check=True).stdout

    git("init", "-q")
    assert git("check-ignore", ".venv").strip() == ".venv"
    shutil.rmtree(tmp_path / "env")
    (tmp_path / ".venv").unlink()
    (tmp_path / ".venv").mkdir()  # a plain folder still is
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert git("status", "--porcelain", "--untracked-files=all").strip() == "?? .gitignore"
