"""The wheel carries the recipes and the docs: `pip wheel .` installed elsewhere finds every
recipe by name and prints every docs page (`dp4tl docs NAME`).

The top-level ``recipes/`` folder is mapped into the wheel as ``ffcv_dp4tl/recipes/*.toml`` and
``docs/`` as ``ffcv_dp4tl/docs/**/*.md`` (pyproject ``package-dir``); ``ffcv_dp4tl/shipped.py``
finds them through ``importlib.resources``.
Packages are listed by hand in pyproject.toml, so this also fails when a new subpackage or
module is missing from the wheel.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("pyproject.toml", "README.md", "ffcv_dp4tl", "beton_builders", "recipes", "docs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout (so no build/ or egg-info lands in the repo)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in SHIPPED:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(p, src / name)
    # --no-build-isolation: offline-safe, uses this environment's setuptools (a dependency)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(root / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (whl,) = (root / "dist").glob("ffcv_dp4tl-*.whl")
    return whl


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel installed once (pip --target) into a folder that is not the checkout."""
    site = tmp_path_factory.mktemp("site") / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                        str(site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return site


def test_wheel_contains_every_recipe_and_module(wheel):
    import ffcv_dp4tl

    assert wheel.name.startswith(f"ffcv_dp4tl-{ffcv_dp4tl.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = sorted(p.name for p in (REPO / "recipes").glob("*.toml"))
    assert recipes, "no recipes/*.toml in the checkout"
    missing = [r for r in recipes if f"ffcv_dp4tl/recipes/{r}" not in names]
    assert not missing, f"recipes missing from the wheel: {missing}"
    modules = sorted(str(p.relative_to(REPO)) for pkg in ("ffcv_dp4tl", "beton_builders")
                     for p in (REPO / pkg).rglob("*.py") if "__pycache__" not in p.parts)
    missing = [m for m in modules if m not in names]
    assert not missing, (f"modules missing from the wheel (add their package to "
                         f"[tool.setuptools] packages in pyproject.toml): {missing}")
    assert "ffcv_dp4tl/py.typed" in names  # (PEP 561: type checkers read an install's hints)


def test_installed_wheel_finds_recipes_by_name(site, tmp_path):
    """Installed into a --target dir and imported with the checkout NOT on sys.path."""
    code = f"""
import sys
from pathlib import Path
repo = Path({str(REPO)!r})
assert not any(Path(p or '.').resolve() == repo for p in sys.path), sys.path
import ffcv_dp4tl
from ffcv_dp4tl.training.recipe import load_recipe
from ffcv_dp4tl.training.recipe_files import list_recipes, recipes_dir
site = Path({str(site)!r}).resolve()
assert Path(ffcv_dp4tl.__file__).resolve().is_relative_to(site), ffcv_dp4tl.__file__
assert recipes_dir().resolve() == site / "ffcv_dp4tl" / "recipes", recipes_dir()
names = list_recipes()
assert names == {sorted(p.stem for p in (REPO / "recipes").glob("*.toml"))!r}, names
for name in names:
    assert load_recipe(name).name == name
print("ok", len(names))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok ")
    r = subprocess.run([sys.executable, "-m", "ffcv_dp4tl", "recipes"], capture_output=True,
                       text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "lp_tiny_cpu" in r.stdout and os.path.join("site", "ffcv_dp4tl", "recipes") in r.stdout


def test_wheel_contains_the_recipe_sets(wheel, site, tmp_path):
    """recipes/paper/ (the `--protocol paper` set) ships too and loads by its set name."""
    from ffcv_dp4tl.training.recipe_files import RECIPE_SETS_DIRS

    names = set(zipfile.ZipFile(wheel).namelist())
    for d in RECIPE_SETS_DIRS:
        files = sorted(p.name for p in (REPO / "recipes" / d).glob("*.toml"))
        assert files, f"no recipes/{d}/*.toml"
        missing = [f for f in files if f"ffcv_dp4tl/recipes/{d}/{f}" not in names]
        assert not missing, (f"recipes/{d} missing from the wheel (add \"{d}/*.toml\" to "
                             f"[tool.setuptools.package-data]): {missing}")
    code = ("from ffcv_dp4tl.training import list_recipes, load_recipe\n"
            "names = [n for n in list_recipes(sets=True) if '/' in n]\n"
            "assert 'paper/lp' in names, names\n"
            "assert load_recipe('paper/resnet18_surrogate').optim.weight_decay == 5e-4\n"
            "print('ok', len(names))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok "), r.stderr


def test_wheel_contains_every_docs_page_and_nothing_else_of_docs(wheel):
    """Every docs/**/*.md (messages name them: `dp4tl docs NAME` prints them in any install);
    their figures, results.json and rows stay in the repository (the wheel stays small)."""
    names = set(zipfile.ZipFile(wheel).namelist())
    pages = sorted(p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md"))
    assert "scorers.md" in pages and "cost-table/report.md" in pages
    missing = [p for p in pages if f"ffcv_dp4tl/docs/{p}" not in names]
    assert not missing, (f"docs pages missing from the wheel (pyproject's package-data for "
                         f"ffcv_dp4tl.docs): {missing}")
    other = sorted(n for n in names if n.startswith("ffcv_dp4tl/docs/") and not n.endswith(".md"))
    assert not other, f"the wheel ships docs files that are not pages: {other}"


def test_installed_wheel_prints_the_docs(site, tmp_path):
    """`dp4tl docs scorers` from the installed copy, the checkout NOT on sys.path (run from
    another folder, PYTHONPATH the install only): the page, read from the install."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    code = (f"import sys\nfrom pathlib import Path\nrepo = Path({str(REPO)!r})\n"
            "assert not any(Path(p or '.').resolve() == repo for p in sys.path), sys.path\n"
            "from ffcv_dp4tl.shipped import docs_dir\nprint(docs_dir())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).resolve() == site.resolve() / "ffcv_dp4tl" / "docs"
    r = subprocess.run([sys.executable, "-m", "ffcv_dp4tl", "docs", "scorers"], capture_output=True,
                       text=True, cwd=tmp_path, env=env, timeout=300)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == (REPO / "docs" / "scorers.md").read_text(encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "ffcv_dp4tl", "docs"], capture_output=True,
                       text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].endswith(f"pages in {site.resolve() / 'ffcv_dp4tl' / 'docs'}; "
                                              "`dp4tl docs NAME` prints one)"), r.stdout
