"""Tab. A4: top-1 of finetuned models on a target's test split under common corruptions.

The paper prunes ImageNet for CIFAR-10, finetunes, and reports top-1 on CIFAR-10-C for five
corruptions (Gaussian / impulse / shot / speckle noise, defocus blur). Here any finished LP/FF
run is evaluated on the images its own ``test_top1`` was measured on — its ``test_split`` under
its ``test_mask`` (a VTAB-1k selection run: the train split under ``val200``) —, corrupted at
load time (:mod:`ffcv_dp4tl.data.corruptions`) for every requested (corruption, severity); the
clean accuracy is measured by the same code, under the autocast the run's own test evaluation
used (``result.json``'s ``test_precision``: FF on CUDA is bf16 with the paper recipes), so on
the device type the run was evaluated on it equals the run's ``test_top1``. When it does not,
the table says why under the numbers: the images or settings that differ from the run's (another
split or mask, format, resolution), else the other kernels of another device type (for a run
that recorded no target fingerprint, also that its target may be other data).
Each cell of the table is the mean top-1 over the severities evaluated for that corruption
(CIFAR-10-C's convention; the footer names them per corruption), and "mean corruption
accuracy" the mean over every corrupted evaluation.

The corruption parameters are CIFAR-10-C's, defined for 32 px images: a CIFAR target read at
another resolution (the paper protocol reads CIFAR-10 at 160 px) without
``corrupt_resolution=32`` is corrupted at the loaded size, which is not CIFAR-10-C; that is
warned about (:func:`resolution_warning`), not silently done.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data import load_manifest, make_loader
from ..contracts.fields import typed
from ..data.corruptions import CorruptedLoader, CorruptionOp
from ..data.loaders import closing_loaders
from ..errors import DataError
from ..progress import bar as progress_bar
from ..training.engine import evaluate
from ..training.trainer import cudnn_benchmark
from ..training.distributed import single_process_context
from .finetuned import Finetuned, load_finetuned

#: the side length CIFAR-10-C's corruption parameters are defined for
CIFAR_C_SIDE = 32


def _is_cifar(target: Path) -> bool:
    """Whether ``target`` was built from CIFAR (32 px images): its manifest's name or layout."""
    try:
        m = load_manifest(target)
    except DataError:
        return False
    return "cifar" in f"{m.name} {m.extra.get('layout', '')}".lower()


def resolution_warning(ft: Finetuned, corrupt_resolution: int | None) -> str | None:
    """One line when a CIFAR target is corrupted at a side other than CIFAR-10-C's 32 px (the
    loaded resolution when ``corrupt_resolution`` is None): the published parameters are
    per-pixel strengths of 32 px images, so at 160 px a blur covers a fifth of what it does in
    CIFAR-10-C and the numbers are not CIFAR-10-C's. None otherwise."""
    side = corrupt_resolution or ft.resolution
    if side == CIFAR_C_SIDE or not _is_cifar(ft.target):
        return None
    how = ("--corrupt-resolution" if corrupt_resolution
           else "the loaded resolution; no --corrupt-resolution given")
    return (f"the CIFAR target {ft.target} is corrupted at {side} px ({how}), but "
            f"CIFAR-10-C's parameters are for {CIFAR_C_SIDE} px images; pass --corrupt-resolution "
            f"{CIFAR_C_SIDE} to corrupt as CIFAR-10-C does")


@closing_loaders()  # (its loader's workers end with the call, failed or not)
def corruption_accuracy(ft: Finetuned, corruptions: Sequence[tuple[str, int]], *,
                        split: str | None = None, fmt: str | None = None,
                        batch_size: int | None = None, num_workers: int = 2, seed: int = 0,
                        corrupt_resolution: int | None = None, progress: bool = True,
                        label: str | None = None) -> dict[str, Any]:
    """Clean and corrupted top-1 of one finetuned model; ``{"clean_top1", "rows": [{corruption,
    severity, top1, count}], "per_corruption": {name: mean top-1}, "mean_corruption_top1"}``.
    ``split``: None (default) is the run's own test split under its test mask, the images its
    ``test_top1`` was measured on; a split named here is read whole (no mask).
    ``fmt``: the target's format, default the one the run was finetuned from (``ft.fmt``);
    ``batch_size``: default the run's test batch size (256 for runs from before it was
    recorded); ``label``: the progress bar's name of the model (default: its run folder's).
    With the run's images, precision, batch size and ``cudnn.benchmark`` setting the
    clean pass repeats the run's test evaluation, so its top-1 is the reported one."""
    dev = next(ft.model.parameters()).device
    ctx = single_process_context(dev)  # `cuda:N` current before the loader is made
    fmt = fmt or ft.fmt
    if batch_size is None:  # (0 is refused by make_loader, not replaced)
        batch_size = ft.test_batch_size or 256
    mask, mask_path = (ft.test_mask, ft.test_mask_path) if split is None else (None, None)
    split = ft.test_split if split is None else split
    loader = make_loader(ft.target, split, fmt=fmt, aug=ft.eval_aug(), mask=mask,
                         batch_size=batch_size, resolution=ft.resolution, device=dev,
                         num_workers=num_workers)
    # the run's own test precision (autocast dtype), on this device: the clean top-1 is then
    # the run's test_top1 (on the device type the run was evaluated on; other kernels elsewhere)
    rows = []
    with cudnn_benchmark(dev):  # as the run's test evaluation (finetune)
        clean = evaluate(ft.model, loader, ctx, ft.amp, ft.flip_tta)
        bar = progress_bar(corruptions, desc=f"corruptions {label or ft.name}", show=progress)
        for name, severity in bar:
            op = CorruptionOp(name, severity, seed=seed, resolution=corrupt_resolution)
            r = evaluate(ft.model, CorruptedLoader(loader, op), ctx, ft.amp, ft.flip_tta)
            rows.append({"corruption": name, "severity": severity, "top1": r["top1"],
                         "loss": r["loss"], "count": r["count"]})
    per: dict[str, list[float]] = {}
    for row in rows:
        per.setdefault(row["corruption"], []).append(row["top1"])
    return {"run": str(ft.run_dir), "mode": ft.mode, "target": str(ft.target), "split": split,
            "mask": None if mask_path is None else str(mask_path),
            "resolution": ft.resolution, "flip_tta": ft.flip_tta, "format": fmt, "seed": seed,
            "corrupt_resolution": corrupt_resolution, "precision": ft.precision,
            "batch_size": batch_size,
            "device": str(dev), "run_device": ft.result.get("device"),
            "clean_top1": clean["top1"], "clean_loss": clean["loss"], "count": clean["count"],
            "reported_test_top1": ft.result.get("test_top1"),
            # what the run's test_top1 was measured on, for the table's note
            "run_split": ft.test_split,
            "run_mask": None if ft.test_mask_path is None else str(ft.test_mask_path),
            "run_test_samples": ft.result.get("test_samples"), "run_format": ft.fmt,
            "run_resolution": ft.result.get("resolution"),
            "run_decode": ft.result.get("test_decode", "cpu"),  # (this evaluation: the CPU's)
            # None: the run recorded no target fingerprint, so its target went unchecked
            "run_target_fingerprint": ft.target_fingerprint,
            "warning": resolution_warning(ft, corrupt_resolution),
            "rows": rows, "per_corruption": {k: sum(v) / len(v) for k, v in per.items()},
            "mean_corruption_top1": (sum(r["top1"] for r in rows) / len(rows)) if rows else None}


def evaluate_corruptions(runs: dict[str, str | Path], corruptions: Sequence[tuple[str, int]], *,
                         device: str | torch.device = "cpu", resolution: int | None = None,
                         on_result: Callable[[dict[str, dict[str, Any]]], None] | None = None,
                         on_warning: Callable[[str], None] | None = None,
                         finished: dict[str, dict[str, Any]] | None = None,
                         keys: dict[str, str] | None = None,
                         **kw) -> dict[str, dict[str, Any]]:
    """:func:`corruption_accuracy` of every ``{label: run_dir}``. Every run is loaded (and so
    checked) before any is evaluated: a bad last run fails at once, not after the others.
    ``on_result(results so far)`` after each run (the CLI saves them: a later failure keeps them).
    ``on_warning(line)`` (default: :func:`warnings.warn`) for each run whose CIFAR target is
    corrupted at a side other than 32 px (:func:`resolution_warning`), before any evaluation.
    ``finished``: entries measured earlier under the same settings, taken as they are (an
    interrupted evaluation resumed); ``keys``: each label's ``reuse_key``, recorded in its entry."""
    if not corruptions:
        raise DataError("no corruption to evaluate; give --corrupt NAME[:SEVERITY], `paper` or `all`")
    models = {label: load_finetuned(run, device, resolution=resolution) for label, run in runs.items()}
    for label, ft in models.items():
        line = resolution_warning(ft, kw.get("corrupt_resolution"))
        if line is not None:
            (on_warning or (lambda m: warnings.warn(m, UserWarning, stacklevel=3)))(f"{label}: {line}")
    results: dict[str, dict[str, Any]] = {}
    for label, ft in models.items():
        if finished and label in finished:
            results[label] = finished[label]
            continue
        results[label] = corruption_accuracy(ft, corruptions, label=label, **kw)
        if keys and label in keys:
            results[label]["reuse_key"] = keys[label]
        if on_result is not None:
            on_result(results)
    return results


def _pretty(name: str) -> str:
    return name.replace("_", " ").title().replace("Jpeg", "JPEG")


def _levels(sevs: Sequence[int]) -> str:
    """``[1, 2, 3, 4, 5]`` → ``1-5``, ``[5]`` → ``5``, ``[1, 3]`` → ``1, 3``."""
    s = sorted(set(sevs))
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}"
    return ", ".join(map(str, s))


def _images(split: Any, mask: Any) -> str:
    return f"split {split!r}" + (f" under mask {mask}" if mask else " (all samples)")


def _differences(r: dict[str, Any]) -> list[str]:
    """What this evaluation read differently from the run's own test evaluation (results from
    before these fields were recorded: nothing known)."""
    out = []
    if "run_split" in r and (r.get("split"), r.get("mask")) != (r["run_split"], r.get("run_mask")):
        run_n = r.get("run_test_samples")
        out.append(f"it is measured on {_images(r.get('split'), r.get('mask'))} "
                   f"({r.get('count')} images), the run's test top-1 on "
                   f"{_images(r['run_split'], r.get('run_mask'))}"
                   + (f" ({run_n} images)" if run_n is not None else ""))
    if r.get("run_format") not in (None, r.get("format")):
        out.append(f"format {r.get('format')} here, {r['run_format']} in the run")
    if r.get("run_resolution") not in (None, r.get("resolution")):
        out.append(f"resolution {r.get('resolution')} here, {r['run_resolution']} in the run")
    if r.get("run_decode") == "gpu":
        out.append("the run decoded its test JPEGs on the GPU, this evaluation on the CPU (the "
                   "corruptions work on CPU pixels), which gives slightly other pixels")
    return out


def check_corruption_entry(entry: dict[str, Any], where: str, fix: str) -> None:
    """One line (:class:`DataError` naming ``where``, the field and ``fix``) when an entry of
    ``corruptions.json`` lacks a field :func:`corruption_table` reads or holds one of another
    type or range (a top-1 outside [0, 1], a string for a number): what ``dp4tl evaluate
    corruptions`` checks before it reuses an earlier entry."""
    for name, what in (("clean_top1", "fraction"), ("count", "count"),
                       ("per_corruption", "object"), ("rows", "objects")):
        typed(entry, name, what, where, fix)
    for name in ("mean_corruption_top1", "reported_test_top1"):
        typed(entry, name, "fraction", where, fix, None)
    typed(entry, "warning", "str", where, fix, None)
    for name in entry["per_corruption"]:
        typed(entry["per_corruption"], name, "fraction", f"{where} per_corruption", fix, None)
    for i, row in enumerate(entry["rows"]):
        for name, what in (("corruption", "str"), ("severity", "int"), ("top1", "fraction")):
            typed(row, name, what, f"{where} row {i + 1}", fix)


def corruption_table(results: dict[str, dict[str, Any]]) -> str:
    """Tab. A4's layout: one column per run, rows clean / + each corruption / mean (top-1 %).
    The footer names the images each column is measured on and the severities each corruption
    row averages; a note explains any clean top-1 that is not the run's reported one."""
    labels = list(results)
    names = list(dict.fromkeys(n for r in results.values() for n in r["per_corruption"]))
    sevs: dict[str, list[int]] = {}
    for r in results.values():
        for row in r["rows"]:
            sevs.setdefault(row["corruption"], []).append(row["severity"])

    def fmt(v):
        return "–" if v is None else f"{100 * v:.2f}"

    lines = ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|",
             "| clean | " + " | ".join(fmt(results[k]["clean_top1"]) for k in labels) + " |"]
    for n in names:
        lines.append(f"| + {_pretty(n)} | "
                     + " | ".join(fmt(results[k]["per_corruption"].get(n)) for k in labels) + " |")
    lines.append("| **mean corruption top-1** | "
                 + " | ".join(fmt(results[k]["mean_corruption_top1"]) for k in labels) + " |")
    lines.append("")
    where = {k: _images(results[k].get("split", "test"), results[k].get("mask")) for k in labels}
    on = (next(iter(where.values())) if len(set(where.values())) == 1
          else "; ".join(f"{k}: {w}" for k, w in where.items()))
    per_sev = {n: _levels(v) for n, v in sevs.items()}
    if len(set(per_sev.values())) == 1:
        one = next(iter(per_sev.values()))
        sev_text = (f"each corruption's cell is the mean over severities {one}" if
                    any(c in one for c in ",-") else f"each corruption at severity {one}")
    else:
        sev_text = ("each corruption's cell is the mean over its severities ("
                    + "; ".join(f"{_pretty(n)} {v}" for n, v in per_sev.items()) + ")")
    lines.append(f"Cells: top-1 (%) on {on}; {sev_text}; images per evaluation: "
                 f"{', '.join(str(results[k]['count']) for k in labels)}.")
    for k in labels:
        r = results[k]
        if r.get("warning"):
            lines.append(f"Warning: {k}: {r['warning']}.")
        rep = r.get("reported_test_top1")
        if isinstance(rep, (int, float)) and abs(rep - r["clean_top1"]) > 1e-9:
            diffs = _differences(r)
            why = ("; ".join(diffs) if diffs else
                   f"other kernels ran (the run evaluated on {r.get('run_device')}, this "
                   f"evaluation on {r.get('device')} at batch {r.get('batch_size')}, both at "
                   f"{r.get('precision')})")
            if "run_target_fingerprint" in r and r["run_target_fingerprint"] is None:
                why += ("; or the target is not the data the run was finetuned on (the run "
                        "recorded no target fingerprint to check it against)")
            lines.append(f"Note: {k}'s clean top-1 {fmt(r['clean_top1'])} is not the run's "
                         f"reported test top-1 {fmt(rep)}: {why}.")
    return "\n".join(lines) + "\n"
