"""``dp4tl train`` and ``dp4tl finetune``: source training (resumable) and LP/FF transfer."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from .app import app
from ..errors import DP4TLError
from .options import FORMAT_HELP, Format, FinetuneMode, check_arch, device_option

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
    stop_after: Optional[int] = typer.Option(None, min=1, help="Stop after this many completed epochs "
                                             "(resume later by rerunning)"),
    progress: bool = typer.Option(True, help="Show progress bars (a timestamped line a minute "
                                  "where stderr is not a terminal; the per-epoch lines are "
                                  "printed either way)"),
) -> None:
    """Train a source model on the (masked) train split; rerun the same command to resume.

    Under torchrun every rank trains on a disjoint part of the mask (DDP; rank 0 writes files).
    """
    import warnings

    from ..training.checkpoint import CHECKPOINT_NAME
    from ..training.distributed import launch_env
    from ..training.recipe import load_recipe
    from ..training.trainer import keep_epochs_note
    from ..training.trainer import train as run_train

    r = load_recipe(recipe, set_)  # validate the recipe before anything else
    note = keep_epochs_note(r)
    if note and launch_env()[0] == 0 and not (resume and (out / CHECKPOINT_NAME).exists()):
        warnings.warn(note)  # (when the run starts, not on each resume)
    row = run_train(r, data, mask=mask, out_dir=out, fmt=fmt.value, device=device, resume=resume,
                    progress=progress, stop_after=stop_after)
    if launch_env()[0]:  # under torchrun rank 0 reports the run
        return
    if row.get("top1_val") is not None:
        from ..pipeline.stages import pct

        typer.echo(f"{out}: epoch {row['epoch'] + 1}/{r.train.epochs}, val top-1 "
                   f"{pct(row['top1_val'])}")
    else:
        typer.echo(f"{out}: epoch {row.get('epoch', -1) + 1}/{r.train.epochs}")


def _same_source(kept: Path, new: Path) -> bool | None:
    """Whether ``kept`` (a run's imported source) holds the model ``new`` does: architecture and
    weights (the finetune identity's digest); None when ``kept`` is damaged (no source to
    keep: replaced)."""
    from ..training.checkpoint import Checkpoint
    from ..training.finetune import weights_digest

    try:
        old = Checkpoint.load(kept)
    except DP4TLError:
        return None
    ckpt = Checkpoint.load(new)
    return (old.arch, weights_digest(old.model)) == (ckpt.arch, weights_digest(ckpt.model))


@app.command()
def finetune(
    recipe: str = typer.Argument(..., help=RECIPE_HELP.format(example="lp, ff or lp_tiny_cpu")),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Source checkpoint.pt "
                                              "from dp4tl train", show_default=False),
    source_weights: Optional[Path] = typer.Option(
        None, "--source-weights", help="Instead of --checkpoint: a torchvision/timm state dict "
        "(e.g. torchvision's ImageNet ResNet-101 .pth) of --arch; imported, never downloaded",
        show_default=False),
    arch: str = typer.Option("", help="With --source-weights: the registered architecture "
                             "(`dp4tl models`)", callback=check_arch),
    data: Path = typer.Option(..., "--data", help="Built target dataset directory"),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (metrics.jsonl, result.json)"),
    mode: Optional[FinetuneMode] = typer.Option(None, "--mode", help="lp or ff (default: the "
                                                "recipe's)", show_default=False),
    fmt: Format = typer.Option(Format.ffcv, "--format", help=FORMAT_HELP),
    set_: List[str] = typer.Option([], "--set", help="Recipe override section.key=value (repeatable)"),
    device: str = device_option(),
    progress: bool = typer.Option(True, help="Print per-epoch lines"),
    train_mask: Optional[Path] = typer.Option(
        None, "--train-mask", help="Index mask .npy over the target's train split (e.g. VTAB-1k's "
        "train800.npy from `dp4tl evaluate vtab-splits`)", show_default=False),
    test_mask: Optional[Path] = typer.Option(
        None, "--test-mask", help="Index mask .npy over the evaluated split (e.g. val200.npy with "
        "--set data.test_split=train)", show_default=False),
) -> None:
    """Linear-probe (lp) or fully finetune (ff) a source checkpoint on a target dataset."""
    from ..training.finetune import finetune as run_finetune
    from ..training.recipe import load_recipe

    target_dir = data
    r = load_recipe(recipe, set_)
    if (checkpoint is None) == (source_weights is None):
        raise DP4TLError("pass exactly one of --checkpoint (a dp4tl checkpoint) and "
                         "--source-weights (a torchvision/timm state dict, with --arch)")
    if checkpoint is not None and arch:
        raise DP4TLError(f"--arch {arch} goes with --source-weights: a --checkpoint records its "
                         "own architecture; drop --arch")
    if source_weights is not None:
        if not arch:
            raise DP4TLError("--source-weights needs --arch (e.g. resnet101)")
        from ..training.models import model_knobs
        from ..training.recipe import Recipe
        from ..training.trainer import remove_unused_run_dir
        from ..training.weights import import_weights

        src = Recipe()
        src.model.arch = arch  # (blurpool: read from the weights' keys, build_from_state_dict)
        src.model.blurpool = False if "blurpool" in model_knobs(arch) else src.model.blurpool
        from ..outputs import claim_out_dir

        # (before anything is written there: a training run's folder, or one inside a
        # dataset, got source_checkpoint.pt before the finetuning refused it; review)
        claim_out_dir(out, "finetune")
        created = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        checkpoint = out / "source_checkpoint.pt"
        # imported beside it first: other weights than the run's were written over the finished
        # run's source model before the run refused them, and evaluate then refused the run
        # ("replaced after finetuning"; audit)
        staged = out / ".source_checkpoint.importing.pt"
        try:
            info = import_weights(source_weights, staged, recipe=src, fix=(
                "pass weights of that architecture, or name theirs with --arch (`dp4tl models`); "
                "a `dp4tl train` checkpoint.pt goes to --checkpoint instead (it records its own "
                "architecture)"))
            same = _same_source(checkpoint, staged) if checkpoint.exists() else None
            if same is False:
                raise DP4TLError(f"{out} is a finetune of other source weights than "
                                 f"{source_weights} ({arch}): its {checkpoint.name} stays; choose "
                                 f"another --out, or delete {out} to start over")
            if same:  # (the run's own file stays: a new save of the same weights has other bytes)
                staged.unlink()
            else:
                os.replace(staged, checkpoint)
        except BaseException:
            staged.unlink(missing_ok=True)
            if created:  # refused weights leave no stray folder behind
                remove_unused_run_dir(out)
            raise
        typer.echo(f"[source] brought weights {source_weights} ({arch}, {info['num_classes']} "
                   "outputs; imported, not trained)")
    res = run_finetune(r, checkpoint, target_dir, out, mode=mode.value if mode else None,
                       fmt=fmt.value, device=device, progress=progress, train_mask=train_mask,
                       test_mask=test_mask)
    from ..pipeline.stages import pct

    typer.echo(f"{out}: {res['mode']} test top-1 {pct(res['test_top1'])}")
