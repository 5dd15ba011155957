"""Tab. A5: VTAB-1k style few-shot splits of any target, as index masks.

VTAB-1k (Zhai et al. 2019, the paper's [119]) gives every task 1000 training examples drawn
from its train split: ``train800`` to train on, ``val200`` to select hyper-parameters on, and
``train800val200`` (the union, 1000) for the final run, which is then evaluated on the task's
full test split. The paper's Tab. A5 ("800 training and 200 testing samples") follows that
protocol on the seven NATURAL tasks.

Here the three subsets are **index masks over the target's own train split** (never copies):
``train800.npy`` / ``val200.npy`` / ``train800val200.npy`` with their ``MaskMeta`` sidecars
(provenance ``method = "vtab1k"``, the seed and the sizes). They are drawn uniformly without
replacement by ``numpy.random.default_rng(seed)`` (VTAB's own split is a fixed random one;
it is not class-stratified either): one permutation of the split, its first ``train_size``
samples are train, the next ``val_size`` val. The same dataset, seed and sizes give the same
bytes. Finetune on them with ``dp4tl finetune --train-mask`` and ``--test-split train
--test-mask val200.npy`` (docs/evaluations.md has the full protocol).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import IndexMask, load_manifest, make_mask, save_mask
from ..errors import DataError

TRAIN_SIZE, VAL_SIZE = 800, 200
NAMES = ("train", "val", "trainval")


def mask_names(train_size: int = TRAIN_SIZE, val_size: int = VAL_SIZE) -> dict[str, str]:
    """File stems of the three masks: ``train800``, ``val200``, ``train800val200``."""
    return {"train": f"train{train_size}", "val": f"val{val_size}",
            "trainval": f"train{train_size}val{val_size}"}


def vtab_masks(dataset_dir: str | Path, *, split: str = "train", seed: int = 0,
               train_size: int = TRAIN_SIZE, val_size: int = VAL_SIZE) -> dict[str, IndexMask]:
    """``{"train", "val", "trainval"}`` masks over ``split`` of the built dataset."""
    if train_size < 1 or val_size < 1:
        raise DataError(f"VTAB split sizes must be >= 1 (got train {train_size}, val {val_size})")
    info = load_manifest(dataset_dir).split(split)
    need = train_size + val_size
    if info.num_samples < need:
        raise DataError(f"{dataset_dir} split {split!r} has {info.num_samples} samples, fewer "
                        f"than the {train_size} + {val_size} a VTAB-1k split draws; pass smaller "
                        "--train-size/--val-size (e.g. 4/5 and 1/5 of it)")
    order = np.random.default_rng(seed).permutation(info.num_samples)
    parts = {"train": order[:train_size], "val": order[train_size:need], "trainval": order[:need]}
    prov = {"method": "vtab1k", "seed": seed, "train_size": train_size, "val_size": val_size,
            "source_split": split}
    return {k: make_mask(idx.astype(np.int64), info, part=k, **prov) for k, idx in parts.items()}


def write_vtab_masks(dataset_dir: str | Path, out_dir: str | Path, **kw) -> dict[str, Path]:
    """Write the three masks (atomic, .npy + .json) into ``out_dir``; returns their paths."""
    masks = vtab_masks(dataset_dir, **kw)
    names = mask_names(kw.get("train_size", TRAIN_SIZE), kw.get("val_size", VAL_SIZE))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {k: save_mask(out / f"{names[k]}.npy", m) for k, m in masks.items()}


def vtab_protocol(recipe: str | Path, checkpoint: str | Path, target_dir: str | Path,
                  out_dir: str | Path, *, lrs: list[float], seed: int = 0,
                  train_size: int = TRAIN_SIZE, val_size: int = VAL_SIZE,
                  overrides: list[str] | tuple[str, ...] = (), mode: str | None = None,
                  fmt: str = "ffcv", device: str = "auto", progress: bool = True) -> dict:
    """VTAB-1k on one target: masks (seed), one finetuning per learning rate on ``train`` scored
    on ``val`` (final-epoch top-1), then the chosen lr on ``train ∪ val`` scored on the test
    split. Every finetuning is its own resumable run directory under ``out_dir``; rerunning
    skips finished ones. Writes and returns ``out_dir/vtab.json``."""
    from ..fsutil import atomic_write_json, read_json
    from ..training.finetune import RESULT_NAME, finetune
    from ..training.recipe import load_recipe

    if not lrs:
        raise DataError("give at least one learning rate to select from (--lr)")
    out = Path(out_dir)
    masks = write_vtab_masks(target_dir, out / "masks", seed=seed, train_size=train_size,
                             val_size=val_size)
    base = load_recipe(recipe, overrides)  # validates before any work

    def run(sub: str, extra: list[str], **kw) -> dict:
        d = out / sub
        if (d / RESULT_NAME).exists():
            return read_json(d / RESULT_NAME, "finetune result")
        r = load_recipe(recipe, list(overrides) + extra)
        return finetune(r, checkpoint, target_dir, d, mode=mode, fmt=fmt, device=device,
                        progress=progress, **kw)

    split = base.data.train_split
    sweep = []
    for lr in lrs:
        res = run(f"select-lr{lr:g}", [f"lr.lr={lr}", f"data.test_split={split}"],
                  train_mask=masks["train"], test_mask=masks["val"])
        sweep.append({"lr": lr, "val_top1": res["test_top1"]})
    best = max(sweep, key=lambda r: (r["val_top1"], -lrs.index(r["lr"])))  # first of equals
    final = run(f"final-lr{best['lr']:g}", [f"lr.lr={best['lr']}"], train_mask=masks["trainval"])
    summary = {"protocol": "vtab1k", "target": str(target_dir), "checkpoint": str(checkpoint),
               "recipe": base.name, "mode": final["mode"], "seed": seed, "train_size": train_size,
               "val_size": val_size, "masks": {k: str(v) for k, v in masks.items()},
               "sweep": sweep, "selected_lr": best["lr"], "test_top1": final["test_top1"],
               "best_test_top1": final.get("best_test_top1"),
               "test_samples": final.get("test_samples")}
    atomic_write_json(out / "vtab.json", summary)
    return summary
