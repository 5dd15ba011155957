"""``dp4tl evaluate``: the paper's appendix evaluations of finetuned models (docs/evaluations.md).

* ``corruptions`` — Tab. A4: top-1 on the run's test images (its test split and mask) under
  CIFAR-10-C corruptions;
* ``flatness`` — Fig. A4: ε-sharpness and the top Hessian eigenvalue of the target train loss
  (the run's train split and mask);
* ``vtab-splits`` / ``vtab`` — Tab. A5: VTAB-1k 800/200 masks of a target, and the protocol
  (select the lr on 200, final on 1000, test split).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, List, Optional

import typer

from .app import Group, app
from .options import expand_home
from ..contracts import check_seeds, split_items
from ..errors import DataError, DP4TLError
from ..fsutil import BAD_JSON
from ..outputs import claim_out_dir
from .options import FORMAT_HELP, Format, device_option, out_callback, resolve_device

evaluate_app = typer.Typer(cls=Group, help="Appendix evaluations of finetuned models: corruptions (Tab. A4), "
                           "flatness (Fig. A4), VTAB-1k splits (Tab. A5).", no_args_is_help=True)
app.add_typer(evaluate_app, name="evaluate")

RUNS_HELP = ("Finished finetune run directories (`dp4tl finetune --out`, or a pipeline's "
             "runs/finetune-lp-*/, finetune-ff-*/), each optionally LABEL=DIR (the table's column)")


def _runs(args: list[str]) -> dict[str, Path]:
    """``{label: run directory}`` of the RUNS arguments (``DIR`` or ``LABEL=DIR``). A label is
    a column header of the tables: a blank one (``=DIR``) would be a column without a name."""
    runs: dict[str, Path] = {}
    for a in args:
        label, sep, path = a.partition("=")
        if sep and not label.strip():
            raise DP4TLError(f"run argument {a!r} has an empty label before '='; write "
                             "LABEL=DIR (the label names the table's column), or just DIR")
        if sep and not path.strip():
            raise DP4TLError(f"run argument {a!r} names no directory after '='; write LABEL=DIR")
        if not sep and not a.strip():  # (Path('') is '.', "not a finished finetune run")
            raise DP4TLError(f"run argument {a!r} is empty: give a finetune run's directory "
                             "(DIR or LABEL=DIR)")
        if sep and any(c in label for c in "|\n"):
            raise DP4TLError(f"run argument {a!r}: a label names a column of the Markdown table, "
                             "so it cannot hold '|' or a line break; write LABEL=DIR with another LABEL")
        p = Path(expand_home(path if sep else a))  # (LABEL=~/run: the shell leaves it)
        label = label if sep else p.name
        if not p.exists():
            raise DP4TLError(f"run directory {p} does not exist")
        if not p.is_dir():
            raise DP4TLError(f"run directory {p} is a file, not a directory; pass a finetune "
                             "run's --out folder")
        if label in runs:
            raise DP4TLError(f"two runs are labelled {label!r}; label them LABEL=DIR")
        runs[label] = p
    if not runs:
        raise DP4TLError("give at least one finetune run directory")
    return runs


def _reading_targets(runs: dict[str, Path]):
    """Hold the readers' lock of every run's target dataset for an evaluation
    (:func:`beton_builders.out_dir.reading_all`): a ``dp4tl build --overwrite`` of a target
    being evaluated is refused, instead of replacing the betons under the evaluation (audit).
    Taken before the runs are loaded, so their checks of the target hold while they are
    measured."""
    from beton_builders.out_dir import reading_all

    from ..evaluation.finetuned import recorded_target

    return reading_all(t for t in map(recorded_target, runs.values()) if t is not None)


def _reuse_key(run: Path, settings: dict) -> str:
    """What a model's entry in OUT/STEM.json was measured from: the run (its folder, its
    result.json's bytes, its weights file's size and time) and every option that changes the
    numbers. A rerun reuses an entry of the same key (an interrupted evaluation resumes with
    the models it had not finished; a finetuning rerun into the run folder is measured again)."""
    import hashlib

    from ..training.finetune import RESULT_NAME, STATE_NAME

    try:
        st = (run / STATE_NAME).stat()
        h = hashlib.sha256((run / RESULT_NAME).read_bytes())
    except OSError:  # not a finished run: nothing to reuse (loading it says what it lacks)
        return ""
    h.update(json.dumps({"run": str(run.resolve()), "state": [st.st_size, st.st_mtime_ns],
                         **settings}, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _finished(out: Path, stem: str, keys: dict[str, str],
              check: Callable[[dict, str, str], None]) -> dict[str, dict]:
    """The entries of an earlier call's OUT/STEM.json measured under the same keys (an
    unreadable or foreign file reuses nothing: it is rewritten). ``check(entry, where, fix)``:
    the table's rule for an entry's fields (``check_corruption_entry``,
    ``check_flatness_entry``). An entry that breaks it (a hand edit: ``"clean_top1": "1.0"``)
    is measured again, with a one-line warning naming the file and the model, rather than
    refused: the file is this command's own cache, rewritten at the end of the call, so a new
    measurement replaces the bad entry and keeps the others, where a refusal would only make
    the user delete the file (and the other models' measurements with it) by hand."""
    path = out / f"{stem}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, *BAD_JSON):
        return {}
    if not isinstance(data, dict):
        return {}
    done = {}
    for label, e in data.items():
        if not (keys.get(label) and isinstance(e, dict) and e.get("reuse_key") == keys[label]):
            continue
        try:
            check(e, f"{path} entry {label!r}", "measuring it again")
        except DataError as bad:
            typer.echo(f"warning: {bad}", err=True)
            continue
        done[label] = e
        typer.echo(f"{label}: measured already under the same settings ({path}); reused")
    return done


def _write(out: Path, stem: str, data: dict, table: str, title: str, echo: bool = True) -> None:
    from ..fsutil import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", data)
    atomic_write_text(out / f"{stem}.md", f"# {title}\n\n{table}")
    if not echo:
        return
    typer.echo(table)
    typer.echo(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')}")


@evaluate_app.command("corruptions")
def corruptions_cmd(
    runs: List[str] = typer.Argument(..., help=RUNS_HELP),
    corrupt: List[str] = typer.Option(["paper"], "--corrupt", help="NAME[:SEVERITY] (repeatable or "
                                      "comma-separated; no severity = 1-5); `paper` = Tab. A4's "
                                      "five, `all` = all 16 provided"),
    out: Path = typer.Option(..., "--out", "-o", help="Writes corruptions.json and corruptions.md",
                             callback=out_callback),
    split: Optional[str] = typer.Option(
        None, help="Split of the target to corrupt, read whole; default: the run's own test "
        "split under its test mask (what its test_top1 was measured on, e.g. VTAB's train split "
        "under val200)", show_default=False),
    seed: int = typer.Option(0, min=0, help="Corruption seed (a sample's noise depends on seed and index)"),
    corrupt_resolution: Optional[int] = typer.Option(
        None, min=1, help="Corrupt at this side length: area-downsample, corrupt, upsample back. "
        "The corruption parameters are CIFAR-10-C's, for 32 px images: pass 32 for a model reading "
        "CIFAR-10 at 160 px (a CIFAR target corrupted at another side is warned about); default: "
        "the loaded resolution", show_default=False),
    resolution: Optional[int] = typer.Option(None, min=1, help="Input resolution (default: the "
                                             "run recipe's finetune.resolution)", show_default=False),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Evaluation batch size (default: "
                                             "the run's test batch size)", show_default=False),
    workers: int = typer.Option(2, min=0, help="Loader workers"),
    fmt: Optional[Format] = typer.Option(None, "--format", help=FORMAT_HELP + "; default: the format "
                                         "the run was finetuned from", show_default=False),
    device: str = device_option(),
    progress: bool = typer.Option(True, help="Show a progress bar"),
) -> None:
    """Tab. A4: clean and corrupted test top-1 of finetuned models (CIFAR-10-C corruptions)."""
    from ..data.corruptions import parse_corruptions
    from ..evaluation.corruption import (check_corruption_entry, corruption_table,
                                         evaluate_corruptions)

    check_seeds([seed], "--seed")  # (before any work: it was checked after the clean pass)
    which = parse_corruptions(corrupt)  # (before --out is claimed: a refused list makes nothing)
    claim_out_dir(out, "corruptions")
    labelled, title = _runs(runs), "Corruption robustness (Tab. A4)"
    dev = resolve_device(device)
    settings = {"corruptions": which, "split": split, "seed": seed, "resolution": resolution,
                "corrupt_resolution": corrupt_resolution, "batch_size": batch_size,
                "format": fmt.value if fmt else None, "device": dev.split(":")[0]}
    keys = {label: _reuse_key(run, settings) for label, run in labelled.items()}
    with _reading_targets(labelled):
        res = evaluate_corruptions(
            labelled, which, device=dev, resolution=resolution, split=split,
            fmt=fmt.value if fmt else None, batch_size=batch_size, num_workers=workers, seed=seed,
            corrupt_resolution=corrupt_resolution, progress=progress,
            finished=_finished(out, "corruptions", keys, check_corruption_entry), keys=keys,
            on_warning=lambda line: typer.echo(f"warning: {line}", err=True),
            on_result=lambda done: _write_partial(out, "corruptions", done, corruption_table,
                                                  title, len(labelled)))
    _write(out, "corruptions", res, corruption_table(res), title)


def _write_partial(out: Path, stem: str, res: dict, table, title: str, total: int) -> None:
    """After each finished model but the last: a later model's failure keeps the finished
    ones' numbers (marked partial)."""
    if len(res) < total:
        _write(out, stem, res, table(res) + f"\nPartial: {len(res)} of {total} models measured "
               "so far.\n", title, echo=False)


@evaluate_app.command("flatness")
def flatness_cmd(
    runs: List[str] = typer.Argument(..., help=RUNS_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Writes flatness.json and flatness.md",
                             callback=out_callback),
    eps: float = typer.Option(1e-3, help="ε of ε-sharpness (Keskar et al. report 1e-3 and 5e-4)"),
    steps: int = typer.Option(10, min=1, help="Projected gradient-ascent steps for the ε-box "
                              "maximum (Keskar et al.: 10 L-BFGS-B iterations)"),
    iters: int = typer.Option(20, min=1, help="Power iterations (Hessian-vector products) at "
                              "most"),
    tol: float = typer.Option(1e-3, min=0, help="Stop power iteration at this relative change"),
    batches: int = typer.Option(4, min=0, help="Fixed batches of the split the loss is measured on "
                                "(0 = the whole split)"),
    batch_size: int = typer.Option(64, min=1, help="Samples per batch"),
    split: Optional[str] = typer.Option(
        None, help="Target split, read whole; default: the run's own train split under its train "
        "mask (the paper: the downstream training loss, of the samples the model trained on)",
        show_default=False),
    seed: int = typer.Option(0, min=0, help="Seed of the power iteration's start vector"),
    resolution: Optional[int] = typer.Option(None, min=1, help="Input resolution (default: the "
                                             "run recipe's finetune.resolution)", show_default=False),
    workers: int = typer.Option(2, min=0, help="Loader workers"),
    fmt: Optional[Format] = typer.Option(None, "--format", help=FORMAT_HELP + "; default: the format "
                                         "the run was finetuned from", show_default=False),
    device: str = device_option(),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="Progress bars of the ascent steps and the power "
                                            "iteration (default: where stderr is a terminal)",
                                            show_default=False),
) -> None:
    """Fig. A4: ε-sharpness and λ_max of the Hessian of each finetuned model's train loss."""
    from ..evaluation.finetuned import load_finetuned
    from ..evaluation.flatness import check_flatness_entry, flatness_table, model_flatness

    check_seeds([seed], "--seed")  # (2**64 was a traceback after the ε-sharpness work)
    claim_out_dir(out, "flatness")
    if not (math.isfinite(eps) and eps > 0):
        raise DP4TLError(f"--eps must be a finite number > 0, got {eps}")
    if not math.isfinite(tol):
        raise DP4TLError(f"--tol must be a finite number >= 0, got {tol}")
    dev = resolve_device(device)
    labelled = _runs(runs)
    with _reading_targets(labelled):
        # every run loaded (and so checked) before any is measured: a bad last run fails at once
        models = {label: load_finetuned(run, dev, resolution=resolution)
                  for label, run in labelled.items()}
        settings = {"eps": eps, "steps": steps, "iters": iters, "tol": tol, "batches": batches,
                    "batch_size": batch_size, "split": split, "seed": seed, "resolution": resolution,
                    "format": fmt.value if fmt else None, "device": dev.split(":")[0]}
        keys = {label: _reuse_key(run, settings) for label, run in labelled.items()}
        finished = _finished(out, "flatness", keys, check_flatness_entry)
        title = "Flatness of the finetuned models (Fig. A4)"
        res = {}
        for label, ft in models.items():
            if label in finished:
                res[label] = finished[label]
                continue
            res[label] = {**model_flatness(ft, split=split, fmt=fmt.value if fmt else None,
                                           batch_size=batch_size, num_batches=batches or None,
                                           eps=eps, steps=steps, iters=iters, tol=tol, seed=seed,
                                           num_workers=workers, progress=progress),
                          "reuse_key": keys[label]}
            typer.echo(f"{label}: ε-sharpness {res[label]['eps_sharpness']:.4f} %, λ_max "
                       f"{res[label]['lambda_max']:.4g}")
            _write_partial(out, "flatness", res, flatness_table, title, len(models))
    _write(out, "flatness", res, flatness_table(res), title)


@evaluate_app.command("vtab-splits")
def vtab_splits_cmd(
    data: Path = typer.Option(..., "--data", help="Built target dataset directory"),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for train800/val200/"
                             "train800val200 .npy + .json (one draw per directory: another "
                             "seed or size is refused there)", callback=out_callback),
    seed: int = typer.Option(0, min=0, help="Which random 1000 (per seed, reproducible)"),
    train_size: int = typer.Option(800, help="Training samples (VTAB-1k: 800)"),
    val_size: int = typer.Option(200, help="Validation samples (VTAB-1k: 200)"),
    split: str = typer.Option("train", help="The split the samples are drawn from"),
) -> None:
    """Tab. A5: VTAB-1k masks (train / val / train+val) over a target's train split."""
    from ..evaluation.vtab import write_vtab_masks

    paths = write_vtab_masks(data, out, seed=seed, train_size=train_size, val_size=val_size,
                             split=split)
    for k, p in paths.items():
        typer.echo(f"{k}: {p}")


@evaluate_app.command("vtab")
def vtab_cmd(
    recipe: str = typer.Argument(..., help="LP/FF recipe (name or .toml)"),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Source checkpoint.pt"),
    data: Path = typer.Option(..., "--data", help="Built target dataset directory"),
    out: Path = typer.Option(..., "--out", "-o", help="Protocol directory (masks, one run per lr, "
                             "vtab.json)", callback=out_callback),
    lr: str = typer.Option("0.001,0.01,0.1", "--lr", help="Learning rates selected from on val"),
    seed: int = typer.Option(0, min=0, help="VTAB split seed"),
    train_size: int = typer.Option(800, help="Training samples (VTAB-1k: 800)"),
    val_size: int = typer.Option(200, help="Validation samples (VTAB-1k: 200)"),
    set_: List[str] = typer.Option([], "--set", help="Recipe override section.key=value"),
    fmt: Format = typer.Option(Format.ffcv, "--format", help=FORMAT_HELP),
    device: str = device_option(),
    progress: bool = typer.Option(True, help="Print per-epoch lines"),
) -> None:
    """Tab. A5: VTAB-1k protocol: pick the lr on 800/200, retrain on 1000, top-1 on test."""
    from ..evaluation.vtab import vtab_protocol

    try:
        lrs = [float(x) for x in split_items(lr, "--lr")]
    except ValueError:
        raise DP4TLError(f"--lr must be comma-separated numbers, got {lr!r}") from None
    res = vtab_protocol(recipe, checkpoint, data, out, lrs=lrs, seed=seed, train_size=train_size,
                        val_size=val_size, overrides=set_, fmt=fmt.value, device=device,
                        progress=progress)
    typer.echo(json.dumps({k: res[k] for k in ("sweep", "selected_lr", "test_top1")}))
