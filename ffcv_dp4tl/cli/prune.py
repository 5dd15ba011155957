"""``dp4tl score`` and ``dp4tl prune``: scores from a surrogate, then masks from scores."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..scoring.registry import methods_help
from ..shipped import doc_ref
from .app import app
from .options import (DATA_HELP, FORMAT_HELP, K_HELP, ORDER_HELP, Backend, Budget, Format, Order, TargetCrop,
                      default_k, device_option, paths, ratio_callback, refuse_unread,
                      resolve_device)


@app.command()
def score(
    method: str = typer.Option("lm", help=f"Scoring method — {methods_help(detailed=True)}"),
    data: Path = typer.Option(..., "--data", help="Built source dataset directory"),
    target: List[Path] = typer.Option([], help="Built target dataset directory (for "
                                      f"{methods_help(needing='target')}); several "
                                      "targets comma-separated (or repeated): normalised score sum"),
    checkpoint: Optional[Path] = typer.Option(None, help="Surrogate checkpoint from `dp4tl train`"),
    out: Path = typer.Option(..., "--out", "-o", help="Scores directory to write"),
    format: Format = typer.Option(Format.ffcv, "--format", help=FORMAT_HELP),
    device: str = device_option(),
    batch_size: int = typer.Option(256, min=1, help="Images per forward pass"),
    workers: int = typer.Option(2, min=0, help="Loader workers"),
    resolution: Optional[int] = typer.Option(None, help="Default: the surrogate recipe's eval resolution"),
    target_resolution: Optional[int] = typer.Option(
        None, help="Resolution the surrogate reads the target at (default: the surrogate recipe's "
        "scoring.target_resolution, else --resolution; the paper: 224)", show_default=False),
    target_crop: Optional[TargetCrop] = typer.Option(
        None, help="center: the eval 224/256 centre crop (fast); none: the whole short side, i.e. "
        "the paper's resize to the source resolution (default: the surrogate recipe's "
        "scoring.target_crop, else center)", show_default=False),
    source_resolution: Optional[int] = typer.Option(
        None, help="Resolution the surrogate reads source images at for source features (fm, "
        "moderate, sp, ssp, inf*; default: the surrogate recipe's scoring.source_resolution, else "
        "--resolution; the paper: 224)", show_default=False),
    source_crop: Optional[TargetCrop] = typer.Option(
        None, help="As --target-crop, for those source images (default: the surrogate recipe's "
        "scoring.source_crop, else center; the paper: none)", show_default=False),
    k: Optional[int] = typer.Option(None, help=K_HELP + "; at most the number of source train "
                                    "samples", show_default=False),
    iters: Optional[int] = typer.Option(None, min=1, help="fm, ssp: Lloyd iterations (default: 20)",
                                        show_default=False),
    seed: int = typer.Option(0, min=0, help="Random seed (random, fm's k-means, the runs a method "
                             "trains)"),
    backend: Backend = typer.Option(Backend.auto, help="Scoring kernels (auto: CUDA when CuPy "
                                    "sees a device; fm, fm-sup, ssp)"),
    opt: List[str] = typer.Option([], "--opt", help="Method option NAME=VALUE (repeatable), e.g. "
                                  "el2n/grand runs=10 epoch=2 arch=resnet18, grand grad=full, "
                                  "moderate band=rank, ssp k=1000, forget epochs=16, infmax "
                                  f"damping=0.01; {doc_ref('scorers')} lists them"),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Training recipe of the runs a "
                                         "method trains itself (forget: needed; el2n/grand "
                                         "with runs>1: default the surrogate checkpoint's)"),
    set_: List[str] = typer.Option([], "--set", help="Override of --recipe section.key=value "
                                   "(repeatable)"),
    progress: bool = typer.Option(True, help="Show progress bars (feature extraction, k-means, the "
                                  "runs a method trains; a timestamped line a minute where stderr "
                                  "is not a terminal)"),
) -> None:
    """Score source classes, clusters or samples (the method's unit) for one or more targets."""
    from ..fsutil import check_out_dir
    from ..pipeline.score import score as run
    from ..scoring.registry import parse_option_pairs

    refuse_unread(method, k=k, iters=iters, backend=backend, checkpoint=checkpoint, target=target,
                  resolution=resolution, target_resolution=target_resolution,
                  target_crop=target_crop, source_resolution=source_resolution,
                  source_crop=source_crop)
    check_out_dir(out)
    source_dir = data
    targets = paths(target, "--target")
    meta = run(method, source_dir=source_dir, target_dir=targets or None, checkpoint=checkpoint,
               out_dir=out, fmt=format.value, device=resolve_device(device),
               batch_size=batch_size, num_workers=workers, resolution=resolution, k=default_k(k, str(data)),
               **({} if iters is None else {"iters": iters}),  # (unset: the run's default)
               seed=seed, backend=backend.value, target_resolution=target_resolution,
               target_crop=None if target_crop is None else target_crop.value,
               source_resolution=source_resolution,
               source_crop=None if source_crop is None else source_crop.value,
               options=parse_option_pairs(opt), train_recipe=recipe, train_overrides=tuple(set_),
               progress=progress)
    unit = meta.get("unit", "sample")  # random's metadata names neither (it scores samples)
    cost = meta.get("selection_seconds")
    typer.echo(f"{out}: {method} scores per {unit}"
               + (f" ({cost:.1f}s selection cost)" if cost is not None else ""))


@app.command()
def prune(
    scores: Path = typer.Option(..., help="Scores directory from `dp4tl score`"),
    data: Path = typer.Option(..., "--data", help=DATA_HELP + ": the scored source"),
    ratio: float = typer.Option(..., help="Fraction of classes/clusters (or samples) to remove, in [0, 1)",
                                callback=ratio_callback),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for train.npy/val.npy masks"),
    order: Order = typer.Option(Order.ordered, help=ORDER_HELP),
    budget: Budget = typer.Option(Budget.units, help="units: --ratio of the method's classes/clusters "
                               "(or samples); samples: prune classes/clusters until the kept "
                               "sample fraction is closest to 1 - ratio"),
) -> None:
    """Turn scores into index masks over the source train and val splits."""
    from ..fsutil import check_out_dir
    from ..pipeline.prune import prune as run

    check_out_dir(out)
    s = run(scores, data, ratio, out, reverse=order is Order.reversed,
            budget=budget.value)
    from ..scoring.registry import UNIT_PLURAL

    n = len(s.get("kept_units", []))
    kept = f"{n} {UNIT_PLURAL[s['unit']]} kept, " if "kept_units" in s else ""
    typer.echo(f"{out}: {kept}train {s['train_kept']} samples (kept sample fraction "
               f"{s['kept_sample_fraction']:.3f}), val {s.get('val_kept', '-')} samples")
