"""``dp4tl pipeline``: the whole job in one command (``just pretrain`` calls it)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from ..scoring.registry import methods_help
from .app import app


@app.command()
def pipeline(
    ratio: float = typer.Option(0.6, help="Fraction of source classes (or clusters) to prune"),
    source: str = typer.Option("synth:tiny", help="Built source dir or a `dp4tl build` SOURCE "
                               "(e.g. imagenet:/data/ILSVRC2012)"),
    target: str = typer.Option("", help="Built target dir, a SOURCE like flowers102:/data/flowers, "
                               "or a synth target name (default: the first)"),
    method: str = typer.Option("lm", help=f"Scoring method: {methods_help()} (see `dp4tl score --help`)"),
    recipes: str = typer.Option("", help="tiny | full (default: tiny for synth, full otherwise)"),
    surrogate_recipe: str = typer.Option("", help="Override the surrogate recipe"),
    recipe: str = typer.Option("", help="Override the source-model pretraining recipe"),
    arch: str = typer.Option("", help="Override the pretraining model (resnet50, resnet101, vit_b_16)"),
    lp_recipe: str = typer.Option("", help="Override the LP recipe (e.g. a per-target file extending lp)"),
    ff_recipe: str = typer.Option("", help="Override the FF recipe (e.g. a per-target file extending ff)"),
    finetune: str = typer.Option("lp,ff", help="Finetuning modes to run on the target"),
    data_root: Path = typer.Option(Path("data"), help="Where SOURCE/target builds go"),
    runs_root: Path = typer.Option(Path("runs"), help="Where stage outputs go"),
    format: str = typer.Option("ffcv", "--format", help="ffcv | wds"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    k: int = typer.Option(2000, help="fm: k-means clusters"),
    seed: int = typer.Option(0),
    set_: List[str] = typer.Option([], "--set", help="Pretraining recipe override section.key=value"),
    set_surrogate: List[str] = typer.Option([], "--set-surrogate", help="Surrogate recipe override"),
) -> None:
    """build → surrogate → score → prune → pretrain on the mask → LP/FF on the target → report."""
    from ..pipeline.run import PipelineConfig, run_pipeline

    cfg = PipelineConfig(ratio=ratio, source=source, target=target, method=method, recipes=recipes,
                         surrogate_recipe=surrogate_recipe, recipe=recipe, arch=arch,
                         lp_recipe=lp_recipe, ff_recipe=ff_recipe,
                         finetune=tuple(m for m in finetune.split(",") if m), data_root=data_root,
                         runs_root=runs_root, fmt=format, device=device, k=k, seed=seed,
                         overrides=tuple(set_), surrogate_overrides=tuple(set_surrogate))
    res = run_pipeline(cfg, log=typer.echo)
    typer.echo(Path(res["report"]).read_text())
