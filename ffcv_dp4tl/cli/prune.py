"""``dp4tl score`` and ``dp4tl prune``: scores from a surrogate, then masks from scores."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..scoring.registry import methods_help
from .app import app


@app.command()
def score(
    method: str = typer.Option("lm", help=f"Scoring method — {methods_help(detailed=True)}"),
    source: Path = typer.Option(..., help="Built source dataset directory"),
    target: List[Path] = typer.Option([], help="Built target dataset directory (for "
                                      f"{methods_help(needing='target')}); repeat for several "
                                      "targets (normalised score sum)"),
    checkpoint: Optional[Path] = typer.Option(None, help="Surrogate checkpoint from `dp4tl train`"),
    out: Path = typer.Option(..., "--out", "-o", help="Scores directory to write"),
    format: str = typer.Option("ffcv", "--format", help="ffcv | wds"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    batch_size: int = typer.Option(256),
    workers: int = typer.Option(2, help="Loader workers"),
    resolution: Optional[int] = typer.Option(None, help="Default: the surrogate recipe's eval resolution"),
    k: int = typer.Option(2000, help="fm: number of k-means clusters"),
    iters: int = typer.Option(20, help="fm: Lloyd iterations"),
    seed: int = typer.Option(0),
    backend: str = typer.Option("auto", help="Kernels: auto | cpu | cuda"),
) -> None:
    """Score source classes, clusters or samples (the method's unit) for one or more targets."""
    from ..pipeline.score import score as run

    meta = run(method, source_dir=source, target_dir=target or None, checkpoint=checkpoint, out_dir=out,
               fmt=format, device=device, batch_size=batch_size, num_workers=workers,
               resolution=resolution, k=k, iters=iters, seed=seed, backend=backend)
    typer.echo(f"{out}: {method} scores per {meta['unit']} "
               f"({meta['selection_seconds']:.1f}s selection cost)")


@app.command()
def prune(
    scores: Path = typer.Option(..., help="Scores directory from `dp4tl score`"),
    source: Path = typer.Option(..., help="Built source dataset directory"),
    ratio: float = typer.Option(..., help="Fraction of classes/clusters (or samples) to remove, in [0, 1)"),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for train.npy/val.npy masks"),
    reverse: bool = typer.Option(False, help="Keep the lowest-scored units (ablation)"),
) -> None:
    """Turn scores into index masks over the source train and val splits."""
    from ..pipeline.prune import prune as run

    s = run(scores, source, ratio, out, reverse=reverse)
    from ..scoring.registry import UNIT_PLURAL

    n = len(s.get("kept_units", []))
    kept = f"{n} {UNIT_PLURAL[s['unit']]} kept, " if "kept_units" in s else ""
    typer.echo(f"{out}: {kept}train {s['train_kept']} samples, val {s.get('val_kept', '-')} samples")
