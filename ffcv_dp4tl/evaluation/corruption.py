"""Tab. A4: top-1 of finetuned models on a target's test split under common corruptions.

The paper prunes ImageNet for CIFAR-10, finetunes, and reports top-1 on CIFAR-10-C for five
corruptions (Gaussian / impulse / shot / speckle noise, defocus blur). Here any finished LP/FF
run is evaluated on its target's test split, corrupted at load time
(:mod:`ffcv_dp4tl.data.corruptions`) for every requested (corruption, severity); the clean
accuracy is measured by the same code, under the autocast the run's own test evaluation used
(``result.json``'s ``test_precision``: FF on CUDA is bf16 with the paper recipes), so on the
device type the run was evaluated on it equals the run's ``test_top1``. Another device type has
other kernels and may differ by a few images: the table then says so under the numbers.
Each cell of the table is the mean top-1 over the requested severities (CIFAR-10-C's
convention), and "mean corruption accuracy" the mean over every corrupted evaluation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from ..data import AugSpec, make_loader
from ..data.corruptions import CorruptedLoader, CorruptionOp
from ..errors import DataError
from ..training.engine import evaluate
from ..training.trainer import cudnn_benchmark
from ..training.distributed import single_process_context
from .finetuned import Finetuned, load_finetuned


def corruption_accuracy(ft: Finetuned, corruptions: Sequence[tuple[str, int]], *, split: str = "test",
                        fmt: str | None = None, batch_size: int | None = None, num_workers: int = 2, seed: int = 0,
                        corrupt_resolution: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Clean and corrupted top-1 of one finetuned model; ``{"clean_top1", "rows": [{corruption,
    severity, top1, count}], "per_corruption": {name: mean top-1}, "mean_corruption_top1"}``.
    ``fmt``: the target's format, default the one the run was finetuned from (``ft.fmt``);
    ``batch_size``: default the run's test batch size (256 for runs from before it was
    recorded). With the run's precision, batch size and ``cudnn.benchmark`` setting the clean
    pass repeats the run's test evaluation, so its top-1 is the reported one."""
    dev = next(ft.model.parameters()).device
    ctx = single_process_context(dev)  # `cuda:N` current before the loader is made
    fmt = fmt or ft.fmt
    if batch_size is None:  # (0 is refused by make_loader, not replaced)
        batch_size = ft.test_batch_size or 256
    loader = make_loader(ft.target, split, fmt=fmt, aug=AugSpec.for_eval(),
                         batch_size=batch_size, resolution=ft.resolution, device=dev,
                         num_workers=num_workers)
    # the run's own test precision (autocast dtype), on this device: the clean top-1 is then
    # the run's test_top1 (on the device type the run was evaluated on; other kernels elsewhere)
    rows = []
    with cudnn_benchmark(dev):  # as the run's test evaluation (finetune)
        clean = evaluate(ft.model, loader, ctx, ft.amp, ft.flip_tta)
        bar = tqdm(corruptions, desc=f"corruptions {ft.name}", disable=not progress, leave=False)
        for name, severity in bar:
            op = CorruptionOp(name, severity, seed=seed, resolution=corrupt_resolution)
            r = evaluate(ft.model, CorruptedLoader(loader, op), ctx, ft.amp, ft.flip_tta)
            rows.append({"corruption": name, "severity": severity, "top1": r["top1"],
                         "loss": r["loss"], "count": r["count"]})
    per: dict[str, list[float]] = {}
    for row in rows:
        per.setdefault(row["corruption"], []).append(row["top1"])
    return {"run": str(ft.run_dir), "mode": ft.mode, "target": str(ft.target), "split": split,
            "resolution": ft.resolution, "flip_tta": ft.flip_tta, "format": fmt, "seed": seed,
            "corrupt_resolution": corrupt_resolution, "precision": ft.precision,
            "batch_size": batch_size,
            "device": str(dev), "run_device": ft.result.get("device"),
            "clean_top1": clean["top1"], "clean_loss": clean["loss"], "count": clean["count"],
            "reported_test_top1": ft.result.get("test_top1"),
            "rows": rows, "per_corruption": {k: sum(v) / len(v) for k, v in per.items()},
            "mean_corruption_top1": (sum(r["top1"] for r in rows) / len(rows)) if rows else None}


def evaluate_corruptions(runs: dict[str, str | Path], corruptions: Sequence[tuple[str, int]], *,
                         device: str | torch.device = "cpu", resolution: int | None = None,
                         on_result: Callable[[dict[str, dict[str, Any]]], None] | None = None,
                         **kw) -> dict[str, dict[str, Any]]:
    """:func:`corruption_accuracy` of every ``{label: run_dir}``. Every run is loaded (and so
    checked) before any is evaluated: a bad last run fails at once, not after the others.
    ``on_result(results so far)`` after each run (the CLI saves them: a later failure keeps them)."""
    if not corruptions:
        raise DataError("no corruption to evaluate; give --corrupt NAME[:SEVERITY], `paper` or `all`")
    models = {label: load_finetuned(run, device, resolution=resolution) for label, run in runs.items()}
    results: dict[str, dict[str, Any]] = {}
    for label, ft in models.items():
        results[label] = corruption_accuracy(ft, corruptions, **kw)
        if on_result is not None:
            on_result(results)
    return results


def _pretty(name: str) -> str:
    return name.replace("_", " ").title().replace("Jpeg", "JPEG")


def corruption_table(results: dict[str, dict[str, Any]]) -> str:
    """Tab. A4's layout: one column per run, rows clean / + each corruption / mean (top-1 %)."""
    labels = list(results)
    names = list(dict.fromkeys(n for r in results.values() for n in r["per_corruption"]))
    sevs = sorted({row["severity"] for r in results.values() for row in r["rows"]})

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
    lines.append(f"Cells: top-1 (%) on the test split, mean over severities {sevs}; "
                 f"test images per evaluation: {', '.join(str(results[k]['count']) for k in labels)}.")
    for k in labels:
        r = results[k]
        rep = r.get("reported_test_top1")
        if isinstance(rep, (int, float)) and abs(rep - r["clean_top1"]) > 1e-9:
            lines.append(f"Note: {k}'s clean top-1 {fmt(r['clean_top1'])} is not the run's reported "
                         f"test top-1 {fmt(rep)}: other kernels ran (the run evaluated on "
                         f"{r.get('run_device')}, this evaluation on {r.get('device')} at batch "
                         f"{r.get('batch_size')}, both at {r.get('precision')}).")
    return "\n".join(lines) + "\n"
