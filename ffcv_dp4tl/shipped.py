"""Files the package ships besides its modules: the recipes (``ffcv_dp4tl.recipes``, from the
checkout's ``recipes/``) and the Markdown docs (``ffcv_dp4tl.docs``, from ``docs/``, its ``*.md``
only; pyproject.toml maps both folders into the wheel).

:func:`shipped_dir` is the one rule that finds such a folder in any install; ``dp4tl docs``
lists and prints the docs (:func:`list_docs`, :func:`doc_path`), and a message or help text
that sends a reader to a page names it through :func:`doc_ref`, which says how to read it where
there is no ``docs/`` folder (a wheel's install). ``tests/test_shipped.py`` checks every page
a ``doc_ref`` call or a user-facing string names is shipped.
"""
from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

from .errors import DP4TLError

#: the package's folder (an install's ``site-packages/ffcv_dp4tl``, or a checkout's)
PACKAGE_DIR = Path(__file__).resolve().parent
#: the checkout's root (used when the package data is not importable: a plain checkout)
SOURCE_ROOT = PACKAGE_DIR.parent
#: the docs folder of a source checkout
SOURCE_DOCS_DIR = SOURCE_ROOT / "docs"


def _resource_dir(root: Any) -> Path | None:
    """A directory on disk for an ``importlib.resources`` root (plain or namespace package)."""
    if isinstance(root, Path):
        return root if root.is_dir() else None
    for child in root.iterdir():  # a namespace package's MultiplexedPath yields real paths
        if isinstance(child, Path):
            return child.parent
    return None  # e.g. a zipped install: not supported


def shipped_dir(name: str, source: Path, what: str) -> Path:
    """Where the package data ``ffcv_dp4tl.NAME`` lives: found through ``importlib.resources``
    when it is this package's own (a wheel installs the checkout's folder there; an editable
    install maps it), else — a plain checkout on ``PYTHONPATH``, or another install's editable
    mapping answered — the checkout's ``source`` folder. ``what`` names it in the error when
    neither exists."""
    try:
        found = _resource_dir(importlib.resources.files(f"ffcv_dp4tl.{name}"))
    except ModuleNotFoundError:
        found = None
    installed = PACKAGE_DIR / name  # the wheel's layout
    if found is not None and found.resolve() == installed:
        return found
    if source.is_dir():  # this module is a checkout's (maybe another install's
        return source    # editable mapping answered): use the checkout's folder
    if found is not None:
        return found
    raise DP4TLError(f"the shipped {what} are missing: ffcv_dp4tl.{name} is not installed and "
                     f"{source} does not exist; reinstall ffcv-dp4tl")


def docs_dir() -> Path:
    """Where the shipped Markdown docs live (``docs/`` of a checkout, ``ffcv_dp4tl/docs`` of an
    install)."""
    return shipped_dir("docs", SOURCE_DOCS_DIR, "docs")


def list_docs() -> list[str]:
    """The shipped pages' names: their paths under ``docs/`` without ``.md`` (``scorers``,
    ``cost-table/report``), top-level pages first."""
    root = docs_dir()
    names = [p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.md")
             if p.is_file()]
    return sorted(names, key=lambda n: (n.count("/"), n))


def _page_name(text: str) -> str:
    """``docs/scorers.md``, ``scorers.md``, ``./docs/scorers`` → ``scorers``."""
    name = text.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    if name.startswith("docs/"):
        name = name[len("docs/"):]
    return name[:-3] if name.lower().endswith(".md") else name.rstrip("/")


def doc_path(text: str) -> Path:
    """The file of the shipped page ``text`` names (``scorers``, ``scorers.md``,
    ``docs/scorers.md``, ``cost-table/report``; a folder's name means its ``README.md``); an
    unknown name is a :class:`DP4TLError` listing the pages."""
    names = list_docs()
    name = _page_name(text)
    for cand in (name, f"{name}/README"):
        if cand in names:
            return docs_dir() / f"{cand}.md"
    import difflib

    near = [n for n in names if n.rsplit("/", 1)[-1] == name] or \
        difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    top = [n for n in names if "/" not in n]
    folders = sorted({n.split("/", 1)[0] + "/" for n in names if "/" in n})
    raise DP4TLError(f"unknown doc {text!r}: not a shipped page{hint} (pages: {', '.join(top)}"
                     + (f"; and pages in {', '.join(folders)}" if folders else "")
                     + ": `dp4tl docs` lists them all)")


def doc_title(path: Path) -> str:
    """A page's first heading (``# Scorers: ...`` → ``Scorers: ...``), else its first line."""
    first = ""
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if line.startswith("#"):
                    return line.lstrip("#").strip()
                if line and not first:
                    first = line
    except OSError:
        return ""
    return first


def doc_ref(name: str) -> str:
    """How a message names the shipped page ``name`` (``"scorers"``): its path in the repository
    and the command that prints it in any install, ``docs/scorers.md (`dp4tl docs scorers`)``.
    Pass the page's name as a literal: tests/test_shipped.py reads every call and fails on a
    page that is not shipped (nothing is checked here, so a message never fails to print)."""
    return f"docs/{name}.md (`dp4tl docs {name}`)"
