"""``dp4tl recipes`` and ``dp4tl models``: what a recipe name or ``--arch`` can be; ``dp4tl docs``:
the shipped Markdown docs, in any install; ``dp4tl env``: what this machine offers a run."""
from __future__ import annotations

from typing import List, Optional

import typer

from ..errors import DP4TLError
from ..fsutil import os_error_line
from .app import app


@app.command()
def recipes(
    recipe: Optional[str] = typer.Argument(None, help="Show this recipe (a name or a .toml path) "
                                           "with every value, extends and overrides applied"),
    set_: List[str] = typer.Option([], "--set", help="Override section.key=value (repeatable)"),
) -> None:
    """List the shipped recipes (name and description), or show one recipe in full.

    A recipe argument or option (train, finetune, pipeline --recipe, ...) takes one of these
    names or the path of your own .toml file, which may `extends = "NAME"` a shipped recipe.
    """
    from ..training.recipe import load_recipe
    from ..training.recipe_files import (list_recipes, recipe_description, recipes_dir,
                                         resolve_recipe_path)

    if recipe is None:
        names = list_recipes(sets=True)  # paper/*: the `--protocol paper` set
        width = max(map(len, names), default=0)
        for name in names:
            typer.echo(f"{name:<{width}}  {recipe_description(name)}")
        typer.echo(f"({len(names)} recipes in {recipes_dir()}; `dp4tl recipes NAME` shows one)")
        return
    r = load_recipe(recipe, set_)
    typer.echo(f"# {r.name}: {resolve_recipe_path(recipe)}")
    desc = recipe_description(recipe)
    if desc:
        typer.echo(f"# {desc}")
    for section, body in r.to_dict().items():
        if section == "finetune" and r.kind == "train":
            continue  # (its defaults, unread by training: a [finetune] section would make the
            #          printout a finetuning recipe, so saved and loaded it would be refused)
        typer.echo(f"[{section}]")
        for key, value in body.items():
            typer.echo(f"{key} = {_toml(value)}")


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


@app.command()
def models() -> None:
    """List the registered model architectures (a recipe's model.arch, pipeline --arch)."""
    from ..training.models import list_models
    from ..training.recipe_files import list_recipes, recipe_tables

    used: dict[str, list[str]] = {}  # recipes naming the model (finetune recipes name none)
    for name in list_recipes(sets=True):
        arch = recipe_tables(name).get("model", {}).get("arch")
        if arch:
            used.setdefault(arch, []).append(name)
    names = list_models()
    width = max(map(len, names), default=0)
    for name in names:
        rs = used.get(name)
        typer.echo(f"{name:<{width}}  {'recipes: ' + ', '.join(rs) if rs else ''}".rstrip())


@app.command()
def docs(
    name: Optional[str] = typer.Argument(None, help="Print this page (e.g. scorers, scorers.md, "
                                         "docs/scorers.md, cost-table/report)"),
) -> None:
    """List the shipped docs (name and title), or print one page (Markdown) to stdout.

    Messages and help name a page with the command that prints it, e.g. docs/scorers.md
    (`dp4tl docs scorers`): the docs ship with the package, so every install has them.
    """
    from ..shipped import doc_path, doc_title, docs_dir, list_docs

    if name is None:
        root = docs_dir()
        names = list_docs()
        width = min(max(map(len, names), default=0), 28)  # (a longer name pushes its title)
        for page in names:
            title = doc_title(root / f"{page}.md")
            if len(title) > 90:  # (a page opening with a paragraph, not a heading)
                title = title[:89].rsplit(" ", 1)[0].rstrip(" ,;:") + "…"
            typer.echo(f"{page:<{width}}  {title}".rstrip())
        typer.echo(f"({len(names)} pages in {root}; `dp4tl docs NAME` prints one)")
        return
    try:
        text = doc_path(name).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DP4TLError(f"docs: {os_error_line(e, reading=True)}") from None
    typer.echo(text, nl=not text.endswith("\n"))


@app.command()
def env(
    kernels: bool = typer.Option(True, "--kernels/--no-kernels",
                                 help="Also compile our CUDA kernels (NVRTC) and try nvJPEG (seconds)"),
) -> None:
    """Show what this machine offers a run: versions, GPUs, cores and loader workers, where
    decode=auto decodes, the CUDA kernels and nvJPEG. Paste it into a bug report."""
    from ..environment import as_text, report

    typer.echo(as_text(report(check_kernels=kernels)))
