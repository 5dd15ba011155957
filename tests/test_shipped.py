"""ffcv_dp4tl/shipped.py: the shipped docs and the references messages make to them.

Why a test: messages and help send a user to a page (``docs/scorers.md (`dp4tl docs
scorers`)``); a page renamed or removed leaves the reference pointing at nothing, and no run
shows it until a user follows it. Every ``doc_ref("NAME")`` call and every ``docs/....md`` a
string of the package names is read from the source here and must be a page of docs/, and a
user-facing string (an error, a help text, a command's docstring) names a page only through
``doc_ref``, so it also says how to read the page where there is no docs/ folder (a wheel's
install).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from repo_scripts import parse_python

ROOT = Path(__file__).resolve().parents[1]
DOC = re.compile(r"docs/([\w./-]+?)\.md\b")
#: where a string may spell a page's path itself: the `dp4tl docs` command's own help, whose
#: examples are the spellings it accepts
SPELLS_PATHS = {("ffcv_dp4tl/cli/catalog.py", "docs")}


def _pages() -> set[str]:
    return {p.relative_to(ROOT / "docs").with_suffix("").as_posix()
            for p in (ROOT / "docs").rglob("*.md")}


def _sources() -> list[Path]:
    return sorted(p for pkg in ("ffcv_dp4tl", "beton_builders") for p in (ROOT / pkg).rglob("*.py"))


def _is_command(fn: ast.AST) -> bool:
    """A typer command (``@app.command()``, ``@bench_app.command("x")``): its docstring is help."""
    return isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in ("command", "callback")
        for d in fn.decorator_list)


def doc_references(path: Path, rel: str) -> list[tuple[str, int, str, str]]:
    """(where, line, page, how) for each reference to a docs page in ``path``: ``how`` is
    ``doc_ref`` (a call; its argument must be a literal: ``doc_ref(?)`` otherwise), ``user``
    (a string a user reads: not a docstring, or a command's docstring) or ``docstring``."""
    tree = parse_python(path.read_text(encoding="utf-8"))
    docstrings: dict[int, ast.AST] = {}  # id(the docstring's node) -> its owner
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                docstrings[id(body[0].value)] = node
    owners: dict[int, str] = {}  # id(node) -> the top-level function it is in
    for top in tree.body:
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(top):
                owners[id(node)] = top.name
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "doc_ref":
            arg = node.args[0] if len(node.args) == 1 and not node.keywords else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.append((rel, node.lineno, arg.value, "doc_ref"))
            else:
                out.append((rel, node.lineno, "?", "doc_ref(?)"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            owner = docstrings.get(id(node))
            how = "user" if owner is None or _is_command(owner) else "docstring"
            if how == "user" and (rel, owners.get(id(node))) in SPELLS_PATHS:
                how = "spelling"
            out += [(rel, node.lineno, m.group(1), how) for m in DOC.finditer(node.value)]
    return out


def _all_references() -> list[tuple[str, int, str, str]]:
    return [r for p in _sources() for r in doc_references(p, p.relative_to(ROOT).as_posix())
            if not r[0].endswith("ffcv_dp4tl/shipped.py")]  # (doc_ref's own definition)


def test_every_doc_reference_names_a_shipped_page():
    refs = _all_references()
    assert len([r for r in refs if r[3] == "doc_ref"]) >= 8, refs  # (the scan finds the calls)
    pages = _pages()
    dead = [f"{where}:{line}: {how} {page!r}" for where, line, page, how in refs
            if page not in pages]
    assert not dead, ("references to pages docs/ does not have (renamed? `dp4tl docs` lists "
                      "the pages):\n" + "\n".join(dead))


def test_user_facing_text_names_a_page_through_doc_ref():
    """An error or help text that spells ``docs/NAME.md`` itself leaves a user of the wheel
    (no docs/ folder) nowhere to go: ``doc_ref("NAME")`` adds `dp4tl docs NAME`."""
    bare = [f"{where}:{line}: docs/{page}.md" for where, line, page, how in _all_references()
            if how == "user"]
    assert not bare, "write these through ffcv_dp4tl.shipped.doc_ref:\n" + "\n".join(bare)


def test_a_dead_or_bare_reference_is_found(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text('"""Module text: docs/scorers.md."""\n'
                   "import typer\n"
                   "from ffcv_dp4tl.shipped import doc_ref\n"
                   "NAME = 'x'\n"
                   "A = doc_ref('scorers')\n"
                   "B = doc_ref('gone')\n"
                   "C = doc_ref(NAME)\n"
                   "D = f\"see docs/scale.md or {A}\"\n"
                   "def f():\n"
                   "    '''docs/gone-too.md'''\n"
                   "@app.command()\n"
                   "def cmd():\n"
                   "    '''Help: docs/gpu.md.'''\n")
    refs = sorted((line, page, how) for _, line, page, how in doc_references(src, "mod.py"))
    assert refs == [(1, "scorers", "docstring"), (5, "scorers", "doc_ref"), (6, "gone", "doc_ref"),
                    (7, "?", "doc_ref(?)"), (8, "scale", "user"), (10, "gone-too", "docstring"),
                    (13, "gpu", "user")]


def test_doc_ref_names_the_path_and_the_command_that_prints_it():
    from ffcv_dp4tl.shipped import doc_ref

    assert doc_ref("scorers") == "docs/scorers.md (`dp4tl docs scorers`)"
    assert doc_ref("cost-table/report") == "docs/cost-table/report.md (`dp4tl docs cost-table/report`)"


def test_the_checkout_finds_its_docs_and_pages():
    from ffcv_dp4tl.shipped import doc_path, docs_dir, list_docs

    assert docs_dir() == ROOT / "docs"
    assert set(list_docs()) == _pages()
    assert doc_path("docs/scale.md") == ROOT / "docs" / "scale.md"
    assert doc_path("scale.MD") == ROOT / "docs" / "scale.md"  # (the suffix in any case)


def test_a_checkout_reads_its_own_docs_when_another_install_answers(monkeypatch, tmp_path):
    """A checkout on ``PYTHONPATH`` beside an installed copy of the package: the package data
    ``importlib.resources`` finds is the other install's (older pages, or another version's),
    so the checkout's own ``docs/`` is read, not the folder found."""
    import importlib.resources

    from ffcv_dp4tl import shipped

    other = tmp_path / "site-packages" / "ffcv_dp4tl" / "docs"
    other.mkdir(parents=True)
    (other / "scale.md").write_text("# another install's page\n")
    monkeypatch.setattr(importlib.resources, "files", lambda package: other)
    assert shipped.shipped_dir("docs", shipped.SOURCE_DOCS_DIR, "docs") == ROOT / "docs"
    assert shipped.doc_path("scale") == ROOT / "docs" / "scale.md"


@pytest.mark.parametrize("name", ["recipes", "docs"])
def test_a_missing_shipped_folder_is_one_line_naming_it(monkeypatch, tmp_path, name):
    """No package data and no checkout folder (a broken install): a DP4TLError saying to
    reinstall, not a traceback further on."""
    import importlib.resources

    from ffcv_dp4tl import shipped
    from ffcv_dp4tl.errors import DP4TLError

    def not_installed(package):
        raise ModuleNotFoundError(package)

    monkeypatch.setattr(importlib.resources, "files", not_installed)
    with pytest.raises(DP4TLError, match=f"the shipped {name} are missing: ffcv_dp4tl.{name} is "
                                         "not installed.*reinstall ffcv-dp4tl"):
        shipped.shipped_dir(name, tmp_path / "none", name)
