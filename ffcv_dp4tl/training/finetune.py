"""Transfer a pretrained source model to a target dataset: linear probing (LP) or full
finetuning (FF), the two downstream protocols of the DP4TL paper.

* **LP** — the backbone is frozen, so its features of the (center-cropped) target images are
  computed once and a fresh linear head is trained on the cached features (Adam, multi-step
  lr). Caching makes 50 LP epochs cost about one forward pass over the target set, which is
  what lets the CPU pipeline finetune every pruning ratio; the price is no augmentation
  during LP, the usual linear-probe protocol.
* **FF** — every weight is trained with a fresh head (Adam, cosine lr, weight decay) on
  augmented target images at ``finetune.resolution``.

Both report target *test* top-1 (with flip TTA) per evaluated epoch to ``metrics.jsonl`` and
the final numbers to ``result.json``. Finetuning runs are short and single-process; they restart
from the pretrained checkpoint rather than resuming (``result.json`` existing = done).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ..data import load_manifest, make_loader
from ..errors import DP4TLError
from ..fsutil import atomic_write_json, atomic_write_text
from .checkpoint import load_checkpoint
from .distributed import resolve_device
from .models import create_model, features, replace_head
from .recipe import Recipe, load_recipe
from .schedule import lr_for_iteration, peak_lr
from .trainer import (autocast_dtype, build_optimizer, cudnn_benchmark, evaluate, param_groups,
                      seed_epoch, train_step)
from .distributed import DistContext

RESULT_NAME = "result.json"


class _FeatureBatch(NamedTuple):
    """A batch of cached LP features, shaped like a loader Batch for :func:`train_step`."""
    images: torch.Tensor
    labels: torch.Tensor


def load_pretrained(checkpoint: str | Path, device: torch.device) -> tuple[nn.Module, dict]:
    """Rebuild the source model of a training checkpoint (architecture from the checkpoint)."""
    ckpt = load_checkpoint(checkpoint)
    for key in ("arch", "model_kwargs", "num_classes"):
        if key not in ckpt:
            raise DP4TLError(f"{checkpoint} lacks {key!r}; it was not written by `dp4tl train`")
    model = create_model(ckpt["arch"], ckpt["num_classes"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt


@torch.no_grad()
def extract_features(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features and labels of every sample of ``loader`` (eval mode)."""
    model.eval()
    feats, labels = [], []
    for batch in loader:
        feats.append(features(model, batch.images).float())
        labels.append(batch.labels)
    return torch.cat(feats), torch.cat(labels)


def finetune(recipe: Recipe | str | Path, checkpoint: str | Path, target_dir: str | Path,
             out_dir: str | Path, mode: str | None = None, fmt: str = "ffcv",
             device: str | torch.device = "auto", progress: bool = True,
             overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Finetune ``checkpoint`` on ``target_dir``; returns (and writes) the result dict."""
    t0 = time.perf_counter()
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    mode = mode or recipe.finetune.mode
    if mode not in ("lp", "ff"):
        raise DP4TLError(f"finetune mode must be lp or ff, got {mode!r}")
    dev = resolve_device(device)
    with cudnn_benchmark(dev):  # FF trains at one fixed resolution: see cudnn_benchmark
        return _finetune(recipe, mode, checkpoint, Path(target_dir), Path(out_dir), fmt, dev,
                         progress, t0)


def _finetune(recipe: Recipe, mode: str, checkpoint: str | Path, target_dir: Path, out_dir: Path,
              fmt: str, dev: torch.device, progress: bool, t0: float) -> dict[str, Any]:
    manifest = load_manifest(target_dir)
    train_split = manifest.split(recipe.data.train_split)
    test_split = manifest.split(recipe.data.test_split)
    model, ckpt = load_pretrained(checkpoint, dev)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    atomic_write_text(metrics_path, "")

    torch.manual_seed(recipe.train.seed)
    head = replace_head(model, manifest.num_classes)
    tc, fc, ec = recipe.train, recipe.finetune, recipe.eval
    amp = autocast_dtype(recipe, dev)
    ctx = DistContext(device=dev)
    common = dict(fmt=fmt, device=dev, num_workers=recipe.data.num_workers, seed=recipe.data.seed)
    test_loader = make_loader(target_dir, test_split.name, train=False, batch_size=ec.batch_size,
                              resolution=fc.resolution, **common)
    peak = peak_lr(recipe.lr, tc.batch_size)
    crit = nn.CrossEntropyLoss(label_smoothing=recipe.optim.label_smoothing)
    rows: list[dict] = []

    def log(row: dict) -> None:
        rows.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if progress:
            test = "-" if row.get("top1_test") is None else f"{row['top1_test']:.3f}"
            print(f"{mode} epoch {row['epoch']}: loss {row['loss']:.3f} train {row['top1_train']:.3f}"
                  f" test {test}", flush=True)

    if mode == "lp":
        for p in model.parameters():
            p.requires_grad_(False)
        feat_loader = make_loader(target_dir, train_split.name, train=False,
                                  batch_size=ec.batch_size, resolution=fc.resolution, **common)
        xtr, ytr = extract_features(model, feat_loader)
        xte, yte = extract_features(model, test_loader)
        head.requires_grad_(True)
        opt = build_optimizer(recipe, param_groups(head, recipe.optim.weight_decay, True), peak)
        gen = torch.Generator().manual_seed(tc.seed)
        iters = -(-len(ytr) // tc.batch_size)
        for epoch in range(tc.epochs):
            perm = torch.randperm(len(ytr), generator=gen).to(xtr.device, non_blocking=True)
            sums = torch.zeros(3, dtype=torch.float64, device=xtr.device)  # read once per epoch
            for it in range(iters):
                idx = perm[it * tc.batch_size:(it + 1) * tc.batch_size]
                lr = lr_for_iteration(recipe.lr, epoch, it, iters, tc.epochs, peak)
                for g in opt.param_groups:
                    g["lr"] = lr
                feats = _FeatureBatch(xtr[idx], ytr[idx])
                train_step(head, feats, opt, crit=crit, sums=sums)
            loss_sum, correct_sum, count = sums.tolist()
            row = {"epoch": epoch, "loss": loss_sum / count, "top1_train": correct_sum / count,
                   "lr": lr, "top1_test": None}
            if (epoch + 1) % ec.every == 0 or epoch + 1 == tc.epochs:
                with torch.no_grad():
                    row["top1_test"] = (head(xte).argmax(1) == yte).float().mean().item()
            log(row)
    else:
        opt = build_optimizer(recipe, param_groups(model, recipe.optim.weight_decay,
                                                   recipe.optim.wd_on_bn_bias), peak)
        train_loader = make_loader(target_dir, train_split.name, train=fc.train_augment,
                                   batch_size=tc.batch_size, resolution=fc.resolution,
                                   drop_last=False, **common)
        for epoch in range(tc.epochs):
            seed_epoch(tc.seed, epoch)
            train_loader.set_epoch(epoch)
            model.train()
            iters = len(train_loader)
            sums = torch.zeros(3, dtype=torch.float64, device=dev)  # read once per epoch
            for it, batch in enumerate(train_loader):
                lr = lr_for_iteration(recipe.lr, epoch, it, iters, tc.epochs, peak)
                for g in opt.param_groups:
                    g["lr"] = lr
                train_step(model, batch, opt, crit=crit, amp=amp, sums=sums)
            loss_sum, correct_sum, count = sums.tolist()
            row = {"epoch": epoch, "loss": loss_sum / count, "top1_train": correct_sum / count,
                   "lr": lr, "top1_test": None}
            if (epoch + 1) % ec.every == 0 or epoch + 1 == tc.epochs:
                row["top1_test"] = evaluate(model, test_loader, ctx, amp, ec.flip_tta)["top1"]
            log(row)

    result = {"mode": mode, "test_top1": rows[-1]["top1_test"], "train_top1": rows[-1]["top1_train"],
              "epochs": tc.epochs, "recipe": recipe.name, "checkpoint": str(checkpoint),
              "source_arch": ckpt["arch"], "source_dataset_fingerprint": ckpt.get("dataset_fingerprint"),
              "source_mask_hash": ckpt.get("mask_hash"), "target": str(target_dir),
              "target_fingerprint": manifest.fingerprint, "target_classes": manifest.num_classes,
              "test_samples": test_split.num_samples, "seconds": time.perf_counter() - t0,
              "format": fmt, "device": str(dev)}
    atomic_write_json(out_dir / RESULT_NAME, result)
    return result
