"""Transfer a pretrained source model to a target dataset: linear probing (LP) or full
finetuning (FF), the two downstream protocols of the DP4TL paper.

* **LP** — the backbone is frozen, so its features of the (center-cropped) target images are
  computed once and a fresh linear head is trained on the cached features (Adam, multi-step
  lr). Caching makes 50 LP epochs cost about one forward pass over the target set, which is
  what lets the CPU pipeline finetune every pruning ratio; the price is no augmentation
  during LP, the usual linear-probe protocol.
* **FF** — every weight is trained with a fresh head (Adam, cosine lr, weight decay) on
  augmented target images at ``finetune.resolution``.

Both train with the shared engine (:func:`~.engine.train_one_epoch` with a
:class:`~.engine.CrossEntropyObjective`, a grad scaler for fp16, the recipe's lr schedule) and
report target *test* top-1 per evaluated epoch (``eval.every``; :func:`~.engine.evaluate`; flip TTA
for FF when ``eval.flip_tta``, never on LP's cached features) to ``metrics.jsonl``, and to
``result.json`` the final epoch's top-1 (``test_top1`` = ``final_test_top1``) beside the best
evaluated epoch's (``best_test_top1``, ``best_epoch``). Finetuning runs are short and single-process; they restart
from the pretrained checkpoint rather than resuming (``result.json`` existing = done).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ..data import load_manifest, make_loader
from ..errors import DP4TLError
from ..fsutil import atomic_write_json, atomic_write_text
from .callbacks import MetricsWriter, call
from .checkpoint import Checkpoint
from .distributed import DistContext, resolve_device
from .engine import CrossEntropyObjective, evaluate, train_one_epoch
from .models import backbone, create_model
from .recipe import Recipe, load_recipe
from .schedule import lr_for_iteration, peak_lr
from .trainer import autocast_dtype, build_optimizer, cudnn_benchmark, param_groups, seed_epoch

RESULT_NAME = "result.json"


class FeatureBatch(NamedTuple):
    """A batch of cached LP features, shaped like a loader Batch for the engine."""
    images: torch.Tensor
    labels: torch.Tensor


class FeatureLoader:
    """Cached features as a loader: batches of ``batch_size`` rows, reshuffled on every pass by
    ``generator`` (``shuffle``), or in order. The permutation is built on the CPU and moved with
    one non-blocking copy."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = False,
                 generator: torch.Generator | None = None):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.generator = shuffle, generator

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self):
        n = len(self.y)
        order = (torch.randperm(n, generator=self.generator).to(self.x.device, non_blocking=True)
                 if self.shuffle else None)
        for start in range(0, n, self.batch_size):
            if order is None:
                yield FeatureBatch(self.x[start:start + self.batch_size],
                                   self.y[start:start + self.batch_size])
            else:
                idx = order[start:start + self.batch_size]
                yield FeatureBatch(self.x[idx], self.y[idx])


def load_pretrained(checkpoint: str | Path, device: torch.device) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the source model of a training checkpoint (architecture from the checkpoint).
    The :class:`Checkpoint` also answers dict-style reads (``ckpt.get("num_classes")``)."""
    ckpt = Checkpoint.load(checkpoint)
    model = create_model(ckpt.arch, ckpt.num_classes, **ckpt.model_kwargs)
    model.load_state_dict(ckpt.model)
    return model.to(device), ckpt


@torch.no_grad()
def extract_features(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features (``forward_features``) and labels of every sample of ``loader``
    (eval mode)."""
    model.eval()
    net = backbone(model)
    feats, labels = [], []
    for batch in loader:
        feats.append(net.forward_features(batch.images).float())
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
    head = backbone(model).reset_classifier(manifest.num_classes)
    tc, fc, ec = recipe.train, recipe.finetune, recipe.eval
    ctx = DistContext(device=dev)
    common = dict(fmt=fmt, device=dev, num_workers=recipe.data.num_workers, seed=recipe.data.seed)
    test_loader = make_loader(target_dir, test_split.name, train=False, batch_size=ec.batch_size,
                              resolution=fc.resolution, **common)
    peak = peak_lr(recipe.lr, tc.batch_size)
    objective = CrossEntropyObjective(recipe.optim.label_smoothing)

    if mode == "lp":
        # Frozen backbone: features once (fp32, no autocast), then a linear head on them.
        model.requires_grad_(False)
        feat_loader = make_loader(target_dir, train_split.name, train=False,
                                  batch_size=ec.batch_size, resolution=fc.resolution, **common)
        xtr, ytr = extract_features(model, feat_loader)
        xte, yte = extract_features(model, test_loader)
        head.requires_grad_(True)
        net, amp, flip_tta, wd_on_bn_bias = head, None, False, True
        train_loader = FeatureLoader(xtr, ytr, tc.batch_size, shuffle=True,
                                     generator=torch.Generator().manual_seed(tc.seed))
        eval_loader = FeatureLoader(xte, yte, ec.batch_size)
    else:
        net, amp, flip_tta, wd_on_bn_bias = model, autocast_dtype(recipe, dev), ec.flip_tta, \
            recipe.optim.wd_on_bn_bias
        train_loader = make_loader(target_dir, train_split.name, train=fc.train_augment,
                                   batch_size=tc.batch_size, resolution=fc.resolution,
                                   drop_last=False, **common)
        eval_loader = test_loader
    opt = build_optimizer(recipe, param_groups(net, recipe.optim.weight_decay, wd_on_bn_bias), peak)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp is torch.float16)
    callbacks = [MetricsWriter(metrics_path)] + ([_FinetuneConsole(mode)] if progress else [])

    def schedule(epoch: int, it: int, iters: int) -> float:
        return lr_for_iteration(recipe.lr, epoch, it, iters, tc.epochs, peak)

    rows: list[dict] = []
    for epoch in range(tc.epochs):
        if mode == "ff":  # LP's feature loader reshuffles from its own generator
            seed_epoch(tc.seed, epoch)
            train_loader.set_epoch(epoch)
        stats = train_one_epoch(net, train_loader, objective, opt, scaler, schedule, epoch=epoch,
                                amp=amp, ctx=ctx, callbacks=callbacks)
        row = {"epoch": epoch, "loss": stats["loss"], "top1_train": stats["top1_train"],
               "lr": stats["lr"], "top1_test": None}
        if (epoch + 1) % ec.every == 0 or epoch + 1 == tc.epochs:
            row["top1_test"] = evaluate(net, eval_loader, ctx, amp, flip_tta)["top1"]
        rows.append(row)
        call(callbacks, "on_epoch_end", row)

    evaluated = [r for r in rows if r["top1_test"] is not None]
    best = max(evaluated, key=lambda r: (r["top1_test"], -r["epoch"]))  # earliest of equals
    result = {"mode": mode, "test_top1": rows[-1]["top1_test"], "train_top1": rows[-1]["top1_train"],
              # final epoch (test_top1, what the paper's Fig. 4 plots as the mean of 3 trials) and
              # best evaluated epoch (what the authors' code reports); eval.every sets how many
              # epochs are candidates for "best" (1 = every epoch)
              "final_test_top1": rows[-1]["top1_test"], "best_test_top1": best["top1_test"],
              "best_epoch": best["epoch"] + 1, "evaluated_epochs": len(evaluated),
              "flip_tta": bool(flip_tta),
              "epochs": tc.epochs, "recipe": recipe.name, "checkpoint": str(checkpoint),
              "source_arch": ckpt.arch, "source_dataset_fingerprint": ckpt.dataset_fingerprint,
              "source_mask_hash": ckpt.mask_hash, "target": str(target_dir),
              "target_fingerprint": manifest.fingerprint, "target_classes": manifest.num_classes,
              "test_samples": test_split.num_samples, "seconds": time.perf_counter() - t0,
              "format": fmt, "device": str(dev)}
    atomic_write_json(out_dir / RESULT_NAME, result)
    return result


class _FinetuneConsole:
    def __init__(self, mode: str):
        self.mode = mode

    def on_epoch_end(self, row: dict) -> None:
        test = "-" if row.get("top1_test") is None else f"{row['top1_test']:.3f}"
        print(f"{self.mode} epoch {row['epoch']}: loss {row['loss']:.3f} train "
              f"{row['top1_train']:.3f} test {test}", flush=True)
