"""Finding and reading recipe files: the shipped recipes (package data ``ffcv_dp4tl.recipes``, or
a checkout's ``recipes/``), names → paths, ``extends`` chains and ``section.key=value`` overrides.

:mod:`.recipe` turns what this reads into a validated :class:`~.recipe.Recipe`; this module knows
files only, so ``dp4tl recipes`` lists and describes recipes without building one.
"""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from ..errors import DP4TLError
from ..fsutil import os_error_line
from ..shipped import SOURCE_ROOT, shipped_dir

#: the recipes folder of a source checkout (used when the package data is not importable)
SOURCE_RECIPES_DIR = SOURCE_ROOT / "recipes"


def recipes_dir() -> Path:
    """Where the shipped recipes live: the package data ``ffcv_dp4tl.recipes`` found through
    ``importlib.resources`` (a wheel installs the top-level ``recipes/`` folder there; an editable
    install maps it), else — a plain checkout on ``PYTHONPATH`` — the checkout's ``recipes/``
    (:func:`~ffcv_dp4tl.shipped.shipped_dir`, the rule the shipped docs follow too)."""
    return shipped_dir("recipes", SOURCE_RECIPES_DIR, "recipes")


def _looks_like_path(path_or_name: str | Path) -> bool:
    text = str(path_or_name)
    return text.endswith(".toml") or "/" in text or os.sep in text or text.startswith("~")


def resolve_recipe_path(path_or_name: str | Path) -> Path:
    """A path to a .toml file, or a bare registry name → the shipped ``NAME.toml``."""
    p = Path(path_or_name).expanduser()
    shipped = _shipped(path_or_name)
    if shipped is not None and not p.is_file():
        return shipped  # a shipped recipe set's member, e.g. "paper/lp"
    if _looks_like_path(path_or_name) or p.is_file():
        if p.is_dir():
            raise DP4TLError(f"{p} is a folder, not a recipe file (pass a .toml file or a "
                             "recipe name; `dp4tl recipes` lists the names)")
        if not p.is_file():
            raise DP4TLError(f"recipe file not found: {p} (pass an existing .toml file or a "
                             "recipe name; `dp4tl recipes` lists the names)")
        return p
    root = recipes_dir()
    cand = root / f"{path_or_name}.toml"
    if cand.is_file():
        return cand
    # (a recipe set's member named without its set, `ff_cifar10` for `paper/ff_cifar10`: the
    # list of top-level names left it out; audit)
    members = [n for n in list_recipes(sets=True) if n.rsplit("/", 1)[-1] == str(path_or_name)]
    if members:
        raise DP4TLError(f"unknown recipe {str(path_or_name)!r}: it is a member of a recipe set, "
                         f"named with its set: {' or '.join(members)}")
    raise DP4TLError(f"unknown recipe {str(path_or_name)!r}: not a .toml file and not a shipped "
                     f"recipe (available: {', '.join(list_recipes())}, and the recipe sets' "
                     f"{', '.join(f'{d}/NAME' for d in RECIPE_SETS_DIRS)}: `dp4tl recipes` lists "
                     "them; or pass a .toml path)")


def _shipped(name: str | Path) -> Path | None:
    """``"paper/lp"`` → the shipped ``recipes/paper/lp.toml`` (a recipe set's member), else None."""
    text = str(name)
    if text.endswith(".toml") or text.startswith(("~", "/", ".")) or "/" not in text:
        return None
    cand = recipes_dir() / f"{text}.toml"
    return cand if cand.is_file() else None


#: shipped recipe sets in subfolders of recipes/ (recipes/paper/: the paper's protocol, as its
#: text states it; recipes/paper_code/: as the authors' released code runs it)
RECIPE_SETS_DIRS = ("paper", "paper_code")


def list_recipes(sets: bool = False) -> list[str]:
    """Names of the shipped recipes (``dp4tl recipes`` shows them with their descriptions): the
    top-level ones, and with ``sets`` also the recipe sets' members, named ``SET/NAME`` (e.g.
    ``paper/lp``, the paper protocol's LP recipe)."""
    root = recipes_dir()
    names = sorted(q.stem for q in root.glob("*.toml"))
    if sets:
        names += sorted(f"{d}/{q.stem}" for d in RECIPE_SETS_DIRS for q in (root / d).glob("*.toml"))
    return names


def read_recipe_text(path: Path) -> str:
    """A recipe file's text; one that cannot be read or is not UTF-8 (what TOML requires) is a
    DP4TLError naming the file, not a traceback."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DP4TLError(f"recipe file: {os_error_line(e, reading=True)}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DP4TLError(f"{path}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
                         "save the recipe as UTF-8") from None


def recipe_description(path_or_name: str | Path) -> str:
    """The first comment line of a recipe file (its one-line description), or ``""``."""
    for line in read_recipe_text(resolve_recipe_path(path_or_name)).splitlines():
        line = line.strip()
        if line.startswith("#"):
            return line.lstrip("#").strip().rstrip(",;/ ")
        if line:
            break
    return ""


def recipe_tables(path_or_name: str | Path) -> dict[str, Any]:
    """A recipe's TOML tables with ``extends`` resolved, before defaults and validation (what
    the file itself sets: e.g. whether it names a ``model.arch`` at all)."""
    return read_toml(resolve_recipe_path(path_or_name))


def parse_override(text: str) -> tuple[str, str, Any]:
    key, sep, raw = text.partition("=")
    sec, dot, name = key.strip().partition(".")
    if not sep or not dot or not sec or not name:
        raise DP4TLError(f"override {text!r} must look like section.key=value")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare word → string
    return sec, name, value


def read_toml(path: Path, chain: tuple[Path, ...] = (),
              files: list[tuple[Path, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """A recipe file's tables, with ``extends = "BASE"`` resolved (base first, this file on top,
    section by section), so a per-target recipe is a few lines over ``lp`` or ``ff``. ``files``,
    when given, receives every file of the chain with its own tables (so a caller checking
    names can blame the file that wrote a key, not the one that extends it)."""
    if path.resolve() in chain:
        raise DP4TLError(f"{path}: `extends` loops back to itself "
                         f"({' -> '.join(str(p) for p in (*chain, path))})")
    try:
        data = tomllib.loads(read_recipe_text(path))
    except tomllib.TOMLDecodeError as e:
        raise DP4TLError(f"{path}: invalid TOML ({e})") from None
    if not data:  # 0 bytes, blanks or comments only: most likely truncated, never "all defaults"
        raise DP4TLError(f"{path}: the recipe file sets nothing (it is empty or only comments); "
                         "give it its settings or `extends = \"NAME\"` a shipped recipe")
    base = data.pop("extends", None)
    if files is not None:
        files.append((path, {s: dict(b) if isinstance(b, dict) else b for s, b in data.items()}))
    if base is None:
        return data
    if not isinstance(base, str):
        raise DP4TLError(f"{path}: extends must be a recipe name or path, got {base!r}")
    # a name → a shipped recipe; a path (ends in .toml or has a /) → relative to this file,
    # unless no such file is there and it names a shipped set's member ("paper/lp"), which
    # then works wherever the recipe lies and however its path was spelled
    rel = path.parent / Path(base).expanduser()
    if _looks_like_path(base) and not rel.is_file() and _shipped(base) is not None:
        base_path = _shipped(base)
    else:
        try:
            base_path = resolve_recipe_path(rel if _looks_like_path(base) else base)
        except DP4TLError as e:  # (it names the base only: say which file and key held it)
            raise DP4TLError(f"{path}: extends = {base!r}: {e}") from None
    merged = read_toml(base_path, (*chain, path.resolve()), files)
    for sec, body in data.items():
        if isinstance(body, dict) and isinstance(merged.get(sec), dict):
            merged[sec] = {**merged[sec], **body}
        else:
            merged[sec] = body
    return merged
