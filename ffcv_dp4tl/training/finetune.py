"""Transfer a pretrained source model to a target dataset: linear probing (LP) or full
finetuning (FF), the two downstream protocols of the DP4TL paper.

* **LP** — the backbone is frozen, so its features of the (center-cropped) target images are
  computed once and a fresh linear head is trained on the cached features (Adam, multi-step
  lr). Caching makes 50 LP epochs cost about one forward pass over the target set, which is
  what lets the CPU pipeline finetune every pruning ratio; the price is no augmentation
  during LP, the usual linear-probe protocol (``finetune.lp_crop``: the 224/256 centre crop, or
  the whole short side as the authors' released LP). ``finetune.lp_augment = true`` (the paper
  protocol: A.1 applies RRC + flip to "all finetuning experiments") instead recomputes the
  frozen backbone's features of augmented train images every epoch (:class:`FrozenFeatureLoader`);
  test features are still computed once.
* **FF** — every weight is trained with a fresh head (Adam, cosine lr, weight decay) on
  augmented target images at ``finetune.resolution``.

Both train with the shared engine (:func:`~.engine.train_one_epoch` with a
:class:`~.engine.CrossEntropyObjective`, a grad scaler for fp16, the recipe's lr schedule) and
report target *test* top-1 per evaluated epoch (``eval.every``; :func:`~.engine.evaluate`; flip TTA
for FF when ``eval.flip_tta``, never on LP's cached features) to ``metrics.jsonl``, and to
``result.json`` the final epoch's top-1 (``test_top1`` = ``final_test_top1``) beside the best
evaluated epoch's (``best_test_top1``, ``best_epoch``). ``test_precision`` records the autocast
the test evaluation ran under (``fp32``; FF: ``train.precision`` on CUDA, or on CPU with
``train.cpu_autocast``), so evaluations after finetuning (``ffcv_dp4tl.evaluation``) measure the
same network the same way.

**Resuming.** After every epoch the run state (the trained weights — LP: the head; FF: the
whole model —, optimiser, grad scaler, RNG states, LP's shuffling generator, the metric rows and
the wall time so far) is written atomically to ``finetune_state.pt``; rerunning the same call
continues from the last finished epoch, and (with the WebDataset loader, or ffcv with
``data.deterministic``) ends with the same weights and numbers as an uninterrupted run. The
state is the typed, versioned :class:`~.checkpoint.FinetuneState`; it records what it belongs to
(mode, recipe, pretrained checkpoint, target), and :func:`~.checkpoint.resume_from` — the rule
``trainer.train`` resumes by too — refuses another run's state. ``seconds`` in the result sums
the wall time of every segment.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..contracts import FinetuneHead, FinetuneMode
from ..data import AugSpec, IndexMask, as_mask, load_manifest, make_loader
from ..data.loaders import resolve_decode
from ..data.manifest import check_target_classes
from ..data.masks import indices_digest
from ..errors import DP4TLError
from ..fsutil import atomic_write_json, atomic_write_text, remove_orphan_temps
from ..locks import directory_lock
from ..outputs import claim_out_dir
from ..progress import INHERIT, Log, say, saying_to
from .callbacks import ConsoleLogger, MetricsWriter, call
from .checkpoint import (CHECKPOINT_NAME, FINETUNE_RESULT_NAME, FINETUNE_STATE_NAME, Checkpoint,
                         FinetuneState, resume_from, rng_states, set_rng_states)
from .distributed import resolve_device, single_process_context
from .engine import CrossEntropyObjective, evaluate, train_aug_for, train_one_epoch
from .models import backbone, create_model, get_head
from .process_state import keeps_process_state
from .recipe import Recipe, as_recipe, check_kind, check_source_fed
from .schedule import peak_lr, step_schedule
from .trainer import (autocast_dtype, build_optimizer, cudnn_benchmark, param_groups, pin_cpu_threads,
                      remove_unused_run_dir, seed_epoch)

RESULT_NAME = FINETUNE_RESULT_NAME
STATE_NAME = FINETUNE_STATE_NAME
#: The lock a finetuning run holds on its folder (one process writes a run folder)
FINETUNE_LOCK = ".finetune.lock"

#: ``result.json``'s ``test_precision`` ↔ the autocast dtype of the test evaluation
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16,
                                             "fp16": torch.float16}


def precision_name(amp: torch.dtype | None) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` of an autocast dtype (None: no autocast, fp32)."""
    return next(k for k, v in PRECISIONS.items() if v is amp)


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


class FrozenFeatureLoader:
    """LP on augmented images: each batch of ``images`` (a training loader: RRC + flip) goes
    through the frozen backbone (eval mode: BatchNorm statistics stay the source model's; no
    gradients) and comes out as a :class:`FeatureBatch` for the head. ``set_epoch`` reaches the
    image loader, so an epoch's augmentations are a function of (seed, epoch) and resume exactly."""

    def __init__(self, model: nn.Module, images):
        self.model, self.images = model, images

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int, resolution: int | None = None,
                  next_resolution: int | None = None, start_batch: int = 0) -> None:
        self.images.set_epoch(epoch, resolution, next_resolution=next_resolution,
                              start_batch=start_batch)

    def __iter__(self):
        head = get_head(self.model)
        head_mode = head.training  # the engine put the head in train mode: keep it so
        self.model.eval()
        head.train(head_mode)
        net = backbone(self.model)
        for batch in self.images:
            with torch.no_grad():
                feats = net.forward_features(batch.images).float()
            yield FeatureBatch(feats, batch.labels)


def load_pretrained(checkpoint: str | Path, device: torch.device, *,
                    warn_unfinished: bool = False) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the source model of a training checkpoint (architecture from the checkpoint).

    ``warn_unfinished`` (a checkpoint the user named: finetuning's source, scoring's
    surrogate): a run's ``checkpoint.pt`` from before its last epoch (a run stopped, or
    ``--stop-after``) is read with a warning, since finetuning or scoring it measures a
    half-trained model and nothing else would say so. ``best.pt`` and the early checkpoints
    are earlier epochs on purpose and read as they are, as are the short runs EL2N, GraNd and
    FORGET train for themselves."""
    ckpt = Checkpoint.load(checkpoint)
    where = (ckpt.unfinished() if warn_unfinished and Path(checkpoint).name == CHECKPOINT_NAME
             else None)
    if where is not None:
        warnings.warn(f"{checkpoint} is an unfinished run's state ({where}): what follows uses "
                      "that model; to use the finished one, rerun the command that trained it "
                      "(it resumes)", UserWarning, stacklevel=2)
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


def mask_digest(mask) -> str:
    """How a finetune run's identity records a train/test mask: its indices' sha256
    (:func:`~ffcv_dp4tl.data.masks.indices_digest`, the one a mask's sidecar records), 16 hex
    digits."""
    return indices_digest(mask.indices)[:16]


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """The source model's weights (sha256 of every tensor's bytes, 16 hex digits): a source
    checkpoint trained again (same arch, recipe, data and epoch; most recipes are not
    bit-deterministic) is another source, whose finetuning must not be resumed or reused."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


#: identity fields a run from before them lacks: not compared then (the run is resumed as before)
ADDED_IDENTITY = ("source_weights",)


def run_identity(recipe: Recipe, source: Checkpoint, target_fingerprint: str, mode: str,
                 fmt: str, masks: dict) -> dict:
    """What a finetune run records as its identity in ``finetune_state.pt``: a resume must
    match it, and a VTAB protocol checks its runs against it. ``masks``: ``{"train_mask",
    "test_mask"}`` (those given)."""
    return {"mode": mode, "recipe_fingerprint": recipe.fingerprint(),
            "source_arch": source.arch, "source_identity": dict(source.identity),
            "source_epoch": source.epoch, "source_weights": weights_digest(source.model),
            "target_fingerprint": target_fingerprint,
            "format": fmt, **{k: mask_digest(m) for k, m in masks.items()}}


def target_train_aug(recipe: Recipe) -> AugSpec:
    """FF's (and augmented LP's) train augmentation: the recipe's train.crop_scale and
    crop_ratio, normalised as ``finetune.normalize`` says."""
    return train_aug_for(recipe.train.crop_scale, recipe.train.crop_ratio,
                         recipe.finetune.normalize)


@keeps_process_state
def finetune(recipe: Recipe | str | Path, checkpoint: str | Path, target_dir: str | Path,
             out_dir: str | Path, mode: str | None = None, fmt: str = "ffcv",
             device: str | torch.device = "auto", progress: bool = True,
             overrides: list[str] | tuple[str, ...] = (), resume: bool = True,
             stop_after: int | None = None, train_mask: IndexMask | str | Path | None = None,
             test_mask: IndexMask | str | Path | None = None,
             log: Log | None = INHERIT) -> dict[str, Any]:
    """Finetune ``checkpoint`` on ``target_dir``; returns (and writes) the result dict.

    ``train_mask`` / ``test_mask``: index masks (an :class:`IndexMask`, or the path of a saved
    one: .npy + .json) over the recipe's train / test split, e.g. VTAB-1k's ``train800`` and
    ``val200`` (``ffcv_dp4tl.evaluation.vtab``); all samples when None. ``log``: where its
    epoch and resume lines go (by default the caller's: stdout, or ``run_pipeline``'s log;
    ``None`` or ``progress=False``: nowhere).

    Resumes from ``out_dir/finetune_state.pt`` unless ``resume=False``. ``stop_after``: stop
    once this many epochs are complete (after saving the state), as an interruption would;
    returns ``{"stopped_after": N}`` and the next call resumes."""
    from beton_builders.out_dir import reading

    t0 = time.perf_counter()
    recipe = as_recipe(recipe, overrides)  # overrides apply to a Recipe object too
    check_kind(recipe, "finetune", "finetuning")
    mode = mode or recipe.finetune.mode
    mode = FinetuneMode.check(mode, "finetune mode")
    if recipe.adv.steps > 0:  # (Tab. 5 attacks the source pretraining only; LP/FF stay clean)
        raise DP4TLError(f"finetune recipe {recipe.name or '<recipe>'}: adv.steps = "
                         f"{recipe.adv.steps}, but adversarial training applies to pretraining "
                         "(`dp4tl train`, the pipeline's --set); set adv.steps = 0 here")
    dev = resolve_device(device)
    pin_cpu_threads(recipe.data.num_workers)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DP4TLError(f"--out {out_dir} is a file; choose a directory")
    claim_out_dir(out_dir, "finetune")  # (not a training run's folder, scores, …)
    created = not out_dir.exists()
    owned = False  # the lock is this call's: only then may it remove a folder it made
    try:
        with directory_lock(out_dir / FINETUNE_LOCK, f"finetune run {out_dir}"), \
                cudnn_benchmark(dev):  # FF trains at one fixed resolution: see cudnn_benchmark
            owned = True
            remove_orphan_temps(out_dir)  # a state save a kill cut short (checkpoint-sized for FF)
            with reading(target_dir), saying_to(log):  # (the data not replaced while read)
                return _finetune(recipe, mode, checkpoint, Path(target_dir), out_dir, fmt, dev,
                                 progress, t0, resume, stop_after, train_mask, test_mask)
    except BaseException:
        # a refused checkpoint, target or mask leaves no stray folder behind; a run that lost
        # the race for a new folder (it saw it missing too) leaves the winner's alone
        if created and owned:
            remove_unused_run_dir(out_dir, FINETUNE_LOCK)
        raise


def _check_no_test_leak(train_split, test_split, masks: dict, train_mask, test_mask) -> None:
    """Test images the run also trains on make its test top-1 a training accuracy. VTAB-1k's
    selection runs train and test on one split under disjoint masks (train800, val200); masks
    of two draws, or one side left unmasked (the whole split), overlap and scored 100 %."""
    if train_split.name != test_split.name:
        return
    every = np.arange(train_split.num_samples)
    train = masks["train_mask"].indices if "train_mask" in masks else every
    test = masks["test_mask"].indices if "test_mask" in masks else every
    shared = np.intersect1d(train, test, assume_unique=True)
    if shared.size:
        def given(what: str, flag: str, m) -> str:
            return (f"{what} {_mask_name(m)} ({flag})" if m is not None
                    else f"{what} the whole split (no {flag})")

        raise DP4TLError(f"the run trains and tests on split {train_split.name!r}, and it trains "
                         f"on {given('the samples of', '--train-mask', train_mask)} and tests on "
                         f"{given('those of', '--test-mask', test_mask)}: {shared.size} samples "
                         f"are in both (e.g. sample {shared[0]}), so its test top-1 would count "
                         "images it trains on; give disjoint masks of one draw (`dp4tl evaluate "
                         "vtab-splits`) or test on another split")


def _mask_name(mask: "IndexMask | str | Path") -> str:
    """How a result and a message name a mask: its path, or an in-memory one by its size."""
    if isinstance(mask, IndexMask):
        return f"an in-memory mask of {len(mask)} samples"
    return str(mask)


def classifier_for(model: nn.Module, ckpt: Checkpoint, head: str, num_classes: int,
                   checkpoint: str | Path) -> nn.Linear:
    """The linear classifier finetuning trains (recipe ``finetune.head``): a new
    ``num_classes``-way one, or the source model's own (``"source"``: its pretrained weights
    are the start, target label ``c`` is its output ``c``, a prediction the argmax over all its
    outputs — the authors' released transfer script keeps the 1000-way ImageNet head). The one
    rule for finetuning and for evaluations that rebuild a finetuned model."""
    if head != FinetuneHead.source.value:
        return backbone(model).reset_classifier(num_classes)
    if ckpt.self_supervised:
        raise DP4TLError(f"finetune.head = \"source\" needs a source model with a class head; "
                         f"{checkpoint} was trained self-supervised ({ckpt.self_supervised}): "
                         "use finetune.head = \"new\"")
    own = backbone(model).get_classifier()
    if own.out_features < num_classes:
        raise DP4TLError(f"finetune.head = \"source\": the source model {checkpoint} has "
                         f"{own.out_features} outputs for the target's {num_classes} classes; use "
                         "finetune.head = \"new\"")
    return own


def _finetune(recipe: Recipe, mode: str, checkpoint: str | Path, target_dir: Path, out_dir: Path,
              fmt: str, dev: torch.device, progress: bool, t0: float, resume: bool = True,
              stop_after: int | None = None, train_mask: IndexMask | str | Path | None = None,
              test_mask: IndexMask | str | Path | None = None) -> dict[str, Any]:
    manifest = load_manifest(target_dir)
    check_target_classes(manifest)
    train_split = manifest.split(recipe.data.train_split, "data.train_split")
    test_split = manifest.split(recipe.data.test_split, "data.test_split")
    masks = {k: as_mask(m, split) for k, m, split in (("train_mask", train_mask, train_split),
                                                        ("test_mask", test_mask, test_split))
             if m is not None}
    _check_no_test_leak(train_split, test_split, masks, train_mask, test_mask)
    # the classes the run trains on: the train split's, under its mask (VTAB-1k's 800 images)
    labels = train_split.load_labels()
    if "train_mask" in masks:
        labels = labels[masks["train_mask"].indices]
    seen = int(np.unique(labels).size)
    if seen < manifest.num_classes:
        where = f"{len(labels)} images of {train_split.name}" + (
            f" under {_mask_name(train_mask)}" if "train_mask" in masks else "")
        warnings.warn(f"the target {target_dir}: the {where} hold {seen} of its "
                      f"{manifest.num_classes} classes; finetuning cannot learn the "
                      f"{manifest.num_classes - seen} others", UserWarning,
                      stacklevel=4)  # (the caller of finetune(), past its wrapper)
    if recipe.eval.resolution != recipe.finetune.resolution:  # (a knob set for nothing)
        warnings.warn(f"eval.resolution {recipe.eval.resolution} is not used by finetuning: its "
                      f"train and test images are read at finetune.resolution "
                      f"{recipe.finetune.resolution}; set finetune.resolution", UserWarning,
                      stacklevel=4)
    model, ckpt = load_pretrained(checkpoint, dev, warn_unfinished=True)
    check_source_fed(ckpt.arch, ckpt.model_kwargs, recipe, f"{checkpoint}")
    torch.manual_seed(recipe.train.seed)  # (the new head's initialisation)
    head = classifier_for(model, ckpt, recipe.finetune.head, manifest.num_classes, checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    identity = run_identity(recipe, ckpt, manifest.fingerprint, mode, fmt, masks)
    state_path = out_dir / STATE_NAME
    state = resume_from(FinetuneState, state_path, identity, resume=resume,
                        what="finetune run", hint="", added_later=ADDED_IDENTITY,
                        recipe=recipe)  # (a refusal names the recipe keys that differ)
    start_epoch = state.epoch if state else 0
    rows: list[dict] = list(state.rows) if state else []
    atomic_write_text(metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    tc, fc, ec = recipe.train, recipe.finetune, recipe.eval
    ctx = single_process_context(dev)  # before any loader: `cuda:N` current
    common = dict(fmt=fmt, device=dev, num_workers=recipe.data.num_workers, seed=recipe.data.seed,
                  deterministic=recipe.data.deterministic, decode=recipe.data.decode)
    test_loader = make_loader(target_dir, test_split.name, aug=AugSpec.for_crop(fc.test_crop, fc.normalize),
                              batch_size=ec.batch_size, resolution=fc.resolution,
                              mask=masks.get("test_mask"), **common)
    train_mask_ = masks.get("train_mask")
    peak = peak_lr(recipe.lr, tc.batch_size)
    objective = CrossEntropyObjective(recipe.optim.label_smoothing)

    lp_augmented = mode == "lp" and fc.lp_augment
    if mode == "lp":
        # Frozen backbone: test features once (fp32, no autocast), then a linear head on train
        # features: cached once too, or (lp_augment) recomputed from augmented images each epoch.
        model.requires_grad_(False)
        xte, yte = extract_features(model, test_loader)
        if lp_augmented:
            images = make_loader(target_dir, train_split.name, aug=target_train_aug(recipe),
                                 batch_size=tc.batch_size, resolution=fc.resolution,
                                 drop_last=False, mask=train_mask_, **common)
            train_loader = FrozenFeatureLoader(model, images)
        else:
            # lp_crop: the eval transform's 224/256 centre crop, or the whole short side (the
            # authors' released LP loader: RRC with scale and ratio (1, 1), no flip)
            crop = AugSpec.for_crop(fc.lp_crop, fc.normalize)
            feat_loader = make_loader(target_dir, train_split.name, aug=crop,
                                      batch_size=ec.batch_size, resolution=fc.resolution,
                                      mask=train_mask_, **common)
            xtr, ytr = extract_features(model, feat_loader)
            train_loader = FeatureLoader(xtr, ytr, tc.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(tc.seed))
        head.requires_grad_(True)
        net, amp, flip_tta, wd_on_bn_bias = head, None, False, recipe.optim.wd_on_bn_bias
        eval_loader = FeatureLoader(xte, yte, ec.batch_size)
    else:
        net, amp, flip_tta, wd_on_bn_bias = model, autocast_dtype(recipe, dev), ec.flip_tta, \
            recipe.optim.wd_on_bn_bias
        train_loader = make_loader(target_dir, train_split.name,
                                   aug=target_train_aug(recipe) if fc.train_augment else
                                   AugSpec.for_eval(normalize=fc.normalize),
                                   batch_size=tc.batch_size, resolution=fc.resolution,
                                   drop_last=False, mask=train_mask_, **common)
        eval_loader = test_loader
    opt = build_optimizer(recipe, param_groups(net, recipe.optim.weight_decay, wd_on_bn_bias), peak)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp is torch.float16)
    if state:
        net.load_state_dict(state.net)
        opt.load_state_dict(state.optimizer)
        scaler.load_state_dict(state.scaler)
        if state.generator is not None and mode == "lp" and not lp_augmented:
            train_loader.generator.set_state(state.generator)
        set_rng_states(state.rng)
    callbacks = [MetricsWriter(metrics_path)] + ([ConsoleLogger(tc.epochs, label=mode, held_out="test")] if progress else [])

    schedule = step_schedule(recipe.lr, tc.epochs, peak, opt, recipe.optim.momentum)
    clip_params = [p for p in net.parameters() if p.requires_grad]

    earlier_seconds = state.seconds if state else 0.0
    end_epoch = tc.epochs if stop_after is None else min(tc.epochs, stop_after)
    if start_epoch and start_epoch < end_epoch:  # (with or without progress bars)
        say(f"resuming {mode}: {start_epoch} of {tc.epochs} epochs done ({state_path})")
    for epoch in range(start_epoch, end_epoch):
        if mode == "ff" or lp_augmented:  # cached LP features reshuffle from their own generator
            seed_epoch(tc.seed, epoch)
            # the next epoch announced: the WebDataset loader's workers start on it early
            train_loader.set_epoch(epoch, next_resolution=fc.resolution
                                   if epoch + 1 < end_epoch else None)
        stats = train_one_epoch(net, train_loader, objective, opt, scaler, schedule, epoch=epoch,
                                amp=amp, ctx=ctx, callbacks=callbacks, grad_clip=recipe.optim.grad_clip,
                                clip_params=clip_params)
        row = {"epoch": epoch, "loss": stats["loss"], "top1_train": stats["top1_train"],
               "lr": stats["lr"], "top1_test": None}
        if not math.isfinite(row["loss"]):  # (it used to finish, reporting chance as the result)
            raise DP4TLError(f"{mode} finetuning diverged at epoch {epoch + 1} (loss {row['loss']}); "
                             f"lower lr.lr (now {recipe.lr.lr}; the pipeline's --set-finetune)")
        if (epoch + 1) % ec.every == 0 or epoch + 1 == tc.epochs:
            row["top1_test"] = evaluate(net, eval_loader, ctx, amp, flip_tta)["top1"]
            row["test_precision"] = precision_name(amp)
        rows.append(row)
        call(callbacks, "on_epoch_end", row)
        FinetuneState(
            identity=identity, epoch=epoch + 1, net=net.state_dict(),
            optimizer=opt.state_dict(), scaler=scaler.state_dict(), rng=rng_states(),
            generator=(train_loader.generator.get_state()
                       if mode == "lp" and not lp_augmented else None),
            rows=rows, seconds=earlier_seconds + time.perf_counter() - t0,
            recipe=recipe.to_dict()).save(state_path)
        call(callbacks, "on_epoch_saved", epoch)
    if end_epoch < tc.epochs:
        return {"stopped_after": end_epoch}
    if not rows:
        raise DP4TLError(f"{state_path} holds no finished epoch; delete it and rerun")

    evaluated = [r for r in rows if r["top1_test"] is not None]
    best = max(evaluated, key=lambda r: (r["top1_test"], -r["epoch"]))  # earliest of equals
    result = {"mode": mode, "test_top1": rows[-1]["top1_test"], "train_top1": rows[-1]["top1_train"],
              # final epoch (test_top1, what the paper's Fig. 4 plots as the mean of 3 trials) and
              # best evaluated epoch (what the authors' code reports); eval.every sets how many
              # epochs are candidates for "best" (1 = every epoch)
              "final_test_top1": rows[-1]["top1_test"], "best_test_top1": best["top1_test"],
              "best_epoch": best["epoch"] + 1, "evaluated_epochs": len(evaluated),
              "flip_tta": bool(flip_tta), "lp_augment": bool(lp_augmented),
              # the autocast the final test evaluation ran under (evaluations repeat it); rows
              # of a state from before the field: this segment's, the same recipe's
              "test_precision": rows[-1].get("test_precision") or precision_name(amp),
              "test_batch_size": ec.batch_size,  # (evaluations repeat it: same kernels' shapes)
              "resolution": fc.resolution,
              "epochs": tc.epochs, "recipe": recipe.name, "checkpoint": str(checkpoint),
              "source_arch": ckpt.arch, "source_dataset_fingerprint": ckpt.dataset_fingerprint,
              "source_mask_hash": ckpt.mask_hash, "target": str(target_dir),
              "target_fingerprint": manifest.fingerprint, "target_classes": manifest.num_classes,
              **({"head": fc.head} if fc.head != FinetuneHead.new.value else {}),
              # how the test images were read (evaluations read them the same way); only when
              # not the default, so results of before the fields read as they always did
              **({"normalize": fc.normalize} if fc.normalize != "imagenet" else {}),
              **({"test_crop": fc.test_crop} if fc.test_crop != "center" else {}),
              # GPU JPEG decode gives other pixels than the CPU decoders (which the corruption
              # evaluation must use): recorded when it read the test images, so its note says so
              **({"test_decode": "gpu"} if resolve_decode(recipe.data.decode, dev) == "gpu" else {}),
              "test_samples": (len(masks["test_mask"]) if "test_mask" in masks
                               else test_split.num_samples),
              "test_split": test_split.name, "train_split": train_split.name,
              **{k: _mask_name(v) for k, v in (("train_mask", train_mask), ("test_mask", test_mask))
                 if v is not None},
              **({"train_samples": len(masks["train_mask"])} if "train_mask" in masks else {}),
              "seconds": earlier_seconds + time.perf_counter() - t0, "resumed_from": start_epoch,
              "format": fmt, "device": str(dev)}
    atomic_write_json(out_dir / RESULT_NAME, result)
    return result


