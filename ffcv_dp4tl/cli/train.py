"""``dp4tl train`` and ``dp4tl finetune``: source training (resumable) and LP/FF transfer."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import app
from .options import FORMAT_HELP, Format, FinetuneMode, device_option, pick_data

RECIPE_HELP = "Recipe name (`dp4tl recipes` lists them, e.g. {example}) or a path to a .toml file"


@app.command()
def train(
    recipe: str = typer.Argument(..., help=RECIPE_HELP.format(example="resnet18_tiny_cpu")),
    data: Path = typer.Option(..., "--data", help="Built source dataset directory"),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (checkpoint, metrics.jsonl, "
                             "timings.json)"),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Index mask .npy over the train split"),
    fmt: Format = typer.Option(Format.ffcv, "--format", help=FORMAT_HELP),
    set_: List[str] = typer.Option([], "--set", help="Recipe override section.key=value (repeatable)"),
    device: str = device_option(),
    resume: bool = typer.Option(True, help="Resume from OUT/checkpoint.pt if present"),
    stop_after: Optional[int] = typer.Option(None, help="Stop after this many completed epochs "
                                             "(resume later by rerunning)"),
    progress: bool = typer.Option(True, help="Show progress bars"),
) -> None:
    """Train a source model on the (masked) train split; rerun the same command to resume.

    Under torchrun every rank trains on a disjoint part of the mask (DDP; rank 0 writes files).
    """
    from ..training.recipe import load_recipe
    from ..training.trainer import train as run_train

    r = load_recipe(recipe, set_)  # validate the recipe before anything else
    row = run_train(r, data, mask=mask, out_dir=out, fmt=fmt.value, device=device, resume=resume,
                    progress=progress, stop_after=stop_after)
    if row.get("top1_val") is not None:
        typer.echo(f"{out}: epoch {row['epoch'] + 1}/{r.train.epochs}, val top-1 {row['top1_val']:.4f}")
    else:
        typer.echo(f"{out}: epoch {row.get('epoch', -1) + 1}/{r.train.epochs}")


@app.command()
def finetune(
    recipe: str = typer.Argument(..., help=RECIPE_HELP.format(example="lp, ff or lp_tiny_cpu")),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Source checkpoint.pt from dp4tl train"),
    data: Optional[Path] = typer.Option(None, "--data", help="Built target dataset directory",
                                        show_default=False),
    target: Optional[Path] = typer.Option(None, "--target", hidden=True, help="Old name of --data"),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (metrics.jsonl, result.json)"),
    mode: Optional[FinetuneMode] = typer.Option(None, "--mode", help="lp or ff (default: the "
                                                "recipe's)", show_default=False),
    fmt: Format = typer.Option(Format.ffcv, "--format", help=FORMAT_HELP),
    set_: List[str] = typer.Option([], "--set", help="Recipe override section.key=value (repeatable)"),
    device: str = device_option(),
    progress: bool = typer.Option(True, help="Print per-epoch lines"),
) -> None:
    """Linear-probe (lp) or fully finetune (ff) a source checkpoint on a target dataset."""
    from ..training.finetune import finetune as run_finetune
    from ..training.recipe import load_recipe

    target_dir = pick_data(data, target, "--target")
    r = load_recipe(recipe, set_)
    res = run_finetune(r, checkpoint, target_dir, out, mode=mode.value if mode else None,
                       fmt=fmt.value, device=device, progress=progress)
    typer.echo(f"{out}: {res['mode']} test top-1 {res['test_top1']:.4f}")
