"""``dp4tl train`` and ``dp4tl finetune``: source training (resumable) and LP/FF transfer."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .app import app


@app.command()
def train(
    recipe: str = typer.Argument(..., help="Recipe name in recipes/ (e.g. resnet18_tiny_cpu) or a .toml path"),
    data: Path = typer.Option(..., "--data", help="Built source dataset directory"),
    out: Path = typer.Option(..., "--out", help="Run directory (checkpoint, metrics.jsonl, timings.json)"),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Index mask .npy over the train split"),
    fmt: str = typer.Option("ffcv", "--format", help="ffcv (betons) or wds (WebDataset shards)"),
    set_: List[str] = typer.Option([], "--set", help="Recipe override section.key=value (repeatable)"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto"),
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
    row = run_train(r, data, mask=mask, out_dir=out, fmt=fmt, device=device, resume=resume,
                    progress=progress, stop_after=stop_after)
    if row.get("top1_val") is not None:
        typer.echo(f"{out}: epoch {row['epoch'] + 1}/{r.train.epochs}, val top-1 {row['top1_val']:.4f}")
    else:
        typer.echo(f"{out}: epoch {row.get('epoch', -1) + 1}/{r.train.epochs}")


@app.command()
def finetune(
    recipe: str = typer.Argument(..., help="Finetune recipe (lp, ff, lp_tiny_cpu, ...) or .toml path"),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Source checkpoint.pt from dp4tl train"),
    target: Path = typer.Option(..., "--target", help="Built target dataset directory"),
    out: Path = typer.Option(..., "--out", help="Output directory (metrics.jsonl, result.json)"),
    mode: Optional[str] = typer.Option(None, "--mode", help="lp or ff (default: the recipe's)"),
    fmt: str = typer.Option("ffcv", "--format", help="ffcv or wds"),
    set_: List[str] = typer.Option([], "--set", help="Recipe override section.key=value"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto"),
    progress: bool = typer.Option(True, help="Print per-epoch lines"),
) -> None:
    """Linear-probe (lp) or fully finetune (ff) a source checkpoint on a target dataset."""
    from ..training.finetune import finetune as run_finetune
    from ..training.recipe import load_recipe

    r = load_recipe(recipe, set_)
    res = run_finetune(r, checkpoint, target, out, mode=mode, fmt=fmt, device=device,
                       progress=progress)
    typer.echo(f"{out}: {res['mode']} test top-1 {res['test_top1']:.4f}")
