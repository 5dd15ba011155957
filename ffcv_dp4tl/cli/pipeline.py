"""``dp4tl pipeline``: the whole job in one command (``just pretrain`` calls it)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..scoring.registry import methods_help
from .app import app
from .options import (FORMAT_HELP, K_HELP, Format, FinetuneMode, RecipeSet, check_arch,
                      default_k, device_option, list_callback, pick_data, split_list)

FINETUNE_MODES = [m.value for m in FinetuneMode]


@app.command()
def pipeline(
    ratio: float = typer.Option(0.6, help="Fraction of source classes (or clusters) to prune"),
    data: str = typer.Option("", "--data", help="Source: a built dataset dir or a `dp4tl build` "
                             "SOURCE (e.g. imagenet:/data/ILSVRC2012; default: synth:tiny, the "
                             "embedded data)"),
    source: str = typer.Option("", "--source", hidden=True, help="Old name of --data"),
    target: str = typer.Option("", help="Built target dir, a SOURCE like flowers102:/data/flowers, "
                               "or a synth target name (default: the first)"),
    method: str = typer.Option("lm", help=f"Scoring method: {methods_help()} (see `dp4tl score --help`)"),
    recipes: RecipeSet = typer.Option(RecipeSet.auto, help="tiny | full (auto: tiny for the embedded "
                                      "synth data, per its manifest; full otherwise)"),
    surrogate_recipe: str = typer.Option("", help="Override the surrogate recipe (name or .toml)"),
    recipe: str = typer.Option("", help="Override the source-model pretraining recipe (name or "
                               ".toml)"),
    arch: str = typer.Option("", help="Override the pretraining model (`dp4tl models`: resnet50, "
                             "resnet101, vit_b_16, ...)", callback=check_arch),
    lp_recipe: str = typer.Option("", help="Override the LP recipe (e.g. a per-target file extending lp)"),
    ff_recipe: str = typer.Option("", help="Override the FF recipe (e.g. a per-target file extending ff)"),
    finetune: str = typer.Option("lp,ff", help="Finetuning modes to run on the target "
                                 "(comma-separated: lp, ff)",
                                 callback=list_callback(FINETUNE_MODES, "a finetuning mode")),
    data_root: Path = typer.Option(Path("data"), help="Where SOURCE/target builds go"),
    runs_root: Path = typer.Option(Path("runs"), help="Where stage outputs go"),
    format: Format = typer.Option(Format.ffcv, "--format", help=FORMAT_HELP),
    device: str = device_option(),
    k: Optional[int] = typer.Option(None, help=K_HELP, show_default=False),
    seed: int = typer.Option(0),
    set_: List[str] = typer.Option([], "--set", help="Pretraining recipe override section.key=value "
                                   "(repeatable)"),
    set_surrogate: List[str] = typer.Option([], "--set-surrogate", help="Surrogate recipe override "
                                            "(repeatable)"),
) -> None:
    """build → surrogate → score → prune → pretrain on the mask → LP/FF on the target → report."""
    from ..pipeline.run import PipelineConfig, run_pipeline

    data = pick_data(data, source, "--source", required=False) or "synth:tiny"
    cfg = PipelineConfig(ratio=ratio, source=data, target=target, method=method,
                         recipes="" if recipes is RecipeSet.auto else recipes.value,
                         surrogate_recipe=surrogate_recipe, recipe=recipe, arch=arch,
                         lp_recipe=lp_recipe, ff_recipe=ff_recipe,
                         finetune=tuple(split_list(finetune)), data_root=data_root,
                         runs_root=runs_root, fmt=format.value, device=device,
                         k=default_k(k, data), seed=seed,
                         overrides=tuple(set_), surrogate_overrides=tuple(set_surrogate))
    res = run_pipeline(cfg, log=typer.echo)
    typer.echo(Path(res["report"]).read_text())
