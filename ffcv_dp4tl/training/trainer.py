"""Source-model training loop (ffcv-imagenet style): ``train(recipe, dataset_dir, ...)``.

One call = one resumable run in ``out_dir``:

* ``metrics.jsonl``  one JSON line per epoch (loss, top-1 train/val, img/s, seconds, res, lr)
* ``timings.json``   seconds per stage (setup/data/step/eval/checkpoint), summed over resumes
* ``checkpoint.pt``  written atomically after every epoch (and every ``train.checkpoint_every``
  steps within one); rerunning the same call resumes

**Head / label space.** The model always has one output per class of the *full* source
dataset (``manifest.num_classes``), also when a mask prunes whole classes: pruned classes just
get no training samples. Checkpoints of every pruning ratio then share one label space, so
scoring, label mapping and finetuning code never need a class-id remapping table. The val split
is masked to the classes that remain in the training mask, so val top-1 measures the task the
model was actually trained on.

**Self-supervised recipes** (``[ssl] method = "moco_v2"``) train the same backbone with the
MoCo v2 objective (``training/moco.py``) on a two-view loader over the same mask: no labels are
read, there is no val evaluation, ``top1_train`` is instance-discrimination accuracy, and the
checkpoint's backbone has ``fc`` = the last projection layer (``num_classes = ssl.dim``), so
LP/FF and FM scoring load it like any other.

**Determinism (CPU).** Data order is a function of (data.seed, epoch) only (see
``data/sampling.py``); python/numpy/torch RNGs are reseeded from (train.seed, epoch) at the start
of every epoch, and the model/optimiser/RNG state is checkpointed after every epoch. With the
WebDataset loader (augmentation seeded per (seed, epoch, sample)) an interrupted-and-resumed run
ends with bit-identical weights to an uninterrupted one, also when it resumes from a mid-epoch
checkpoint (``train.checkpoint_every``: the loaders skip the batches already trained, the lr
schedule goes on from that step, every rank restores its own RNG streams). The FFCV loader's augmentations draw from
numba's per-thread RNG, which cannot be seeded from Python, so ffcv runs resume *correctly* but
not bit-identically — unless the recipe sets ``data.deterministic = true``, which swaps in a
crop+flip decoder reseeded per image (``data/ffcv_loader.py``): two ffcv runs then give identical
weights. torch's CPU thread count (which changes CPU results) is pinned per run to the loader
workers (:func:`pin_cpu_threads`).

**Adversarial pretraining** (``[adv] steps > 0``, paper Tab. 5) swaps in
:class:`~.adversarial.AdversarialObjective`: each batch is replaced by its PGD attack (pixel-space
eps, the model in eval mode while attacking, see :mod:`.adversarial`) before the step;
``top1_train`` is then the accuracy on the attacked batches, validation stays clean.

**Engine.** The epoch loop is :func:`~.engine.train_one_epoch`, shared with finetuning: the
recipe's objective (:class:`~.engine.CrossEntropyObjective` or MoCo's) is an object, so the loop
has no supervised/self-supervised branches. Outputs (``metrics.jsonl``, TensorBoard, console)
and user observers are :mod:`.callbacks` (``train(..., callbacks=[...])``).

**GPU path.** The per-step body is :func:`~.engine.train_step` (its parts built by
:func:`build_step_parts`); it never synchronises the host with the GPU: metrics accumulate in a device tensor read once per
epoch, the progress bar counts steps, MoCo's augmentations draw their parameters on the device.
``cudnn.benchmark`` is on while training on CUDA (:func:`cudnn_benchmark`). bf16/fp16 autocast
and channels_last apply on CUDA; ``train.cpu_autocast = true`` applies them on CPU too, so that
path (and ``train.compile``, which runs on CPU with inductor's C++ backend) can be tested
without a GPU (``tests/training/test_gpu.py``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data import AugSpec, IndexMask, as_mask, load_manifest, make_loader, val_mask_of
from ..contracts.fields import typed
from ..errors import DataError, DP4TLError, count
from ..outputs import TRAIN_LOCK, claim_out_dir
from ..fsutil import BAD_JSON, atomic_write_json, atomic_write_text, read_json, remove_orphan_temps
from ..locks import directory_lock
from ..progress import INHERIT, Log, say, saying_to
from . import distributed as dist_
from .callbacks import TB_DIR, ConsoleLogger, MetricsWriter, RecordSeen, TensorBoardLogger, call
from .checkpoint import (CHECKPOINT_NAME, Checkpoint, mask_hash, resume_from, rng_states,
                         set_rng_states)
from .engine import CrossEntropyObjective, EpochProgress, evaluate, train_one_epoch, train_step
from .models import MODEL_KNOBS, create_model, get_head, model_knobs, unwrap
from .process_state import keeps_process_state
from .recipe import ModelCfg, Recipe, as_recipe, check_kind
from .schedule import peak_lr, resolution, step_schedule
from .timing import StageTimer

METRICS_NAME = "metrics.jsonl"
TIMINGS_NAME = "timings.json"
#: train.keep_best: the checkpoint of the best evaluated val top-1 (the authors' best.ckpt) and
#: its epoch and top-1 (read on resume, so "best" spans every segment of the run)
BEST_CHECKPOINT_NAME = "best.pt"
BEST_META_NAME = "best.json"


# --------------------------------------------------------------------------- building blocks
def early_checkpoint_name(epoch: int) -> str:
    """File kept after ``epoch`` completed epochs when the recipe lists it in train.keep_epochs."""
    return f"checkpoint_e{epoch}.pt"


EARLY_CHECKPOINT_GLOB = early_checkpoint_name("*")  # type: ignore[arg-type]


def _improves_best(best: float | None, top1_val: float | None) -> bool:
    """``top1_val`` beats ``best``, the val top-1 of ``best.json`` (None: no record yet; read
    once, at resume, by :func:`_check_best`), strictly, as the authors' ``>``: the earliest of
    equal epochs stays. An epoch without validation never does. A best.pt written just before
    an interruption without its record is overwritten by the next epoch that validates."""
    return top1_val is not None and (best is None or top1_val > best)


def _check_same_start(ctx: dist_.DistContext, start: tuple[int, int], out_dir: Path) -> None:
    """Every rank resumes at the same (epoch, step), or none starts: a rank that sees another
    checkpoint (``--out`` on node-local disks, a stale view of a shared file system) trained
    other epochs with its own schedule and order while the gradients were averaged together,
    and rank 0 reported success."""
    starts = dist_.all_gather(ctx, tuple(start))
    if len(set(starts)) > 1:
        where = ", ".join(f"rank {r}: " + (f"step {k} of epoch {e + 1}" if k else
                                           f"{count(e, 'epoch')} done")
                          for r, (e, k) in enumerate(starts))  # (1-based, as the resume line)
        raise DP4TLError(f"the ranks see different checkpoints in {out_dir} ({where}): --out "
                         "must be one folder every rank shares (not a node-local disk)")


def _remove_earlier_run(out_dir: Path) -> None:
    """A run starting at epoch 0 (``--no-resume``, or its ``checkpoint.pt`` deleted as a refusal
    advises) removes what an earlier run in the folder kept beside its checkpoint: its best.pt
    and record (the new run's epochs were compared with the old record and, not beating it,
    left the old model as "best") and its early checkpoints (scored by EL2N/GraNd as if they
    were this run's), and, under ``--no-resume``, its checkpoint (a run killed before its first
    epoch's checkpoint left the old one, which the next run resumed with its metrics gone), and
    its TensorBoard events (hidden by the new run's purge step, but a file of each run stayed)."""
    for p in [out_dir / CHECKPOINT_NAME, out_dir / BEST_CHECKPOINT_NAME, out_dir / BEST_META_NAME,
              *out_dir.glob(EARLY_CHECKPOINT_GLOB)]:
        p.unlink(missing_ok=True)
    if (out_dir / TB_DIR).is_dir() and not (out_dir / TB_DIR).is_symlink():
        shutil.rmtree(out_dir / TB_DIR)


def model_kwargs(recipe: Recipe) -> dict[str, Any]:
    """Constructor knobs of ``recipe.model`` for :func:`create_model`: the ones its builder
    takes (:func:`~.models.model_knobs`). A new builder without the ResNet knobs failed with
    "unexpected keyword argument 'blurpool'" (review); a knob the model does not take is left
    out here and named once when training starts (:func:`ignored_model_knobs`)."""
    taken = model_knobs(recipe.model.arch)
    return {knob: getattr(recipe.model, knob) for knob in MODEL_KNOBS if knob in taken}


def ignored_model_knobs(recipe: Recipe) -> str | None:
    """A note naming the ``[model]`` knobs set away from their defaults that ``model.arch``
    does not take (a ViT's ``model.width = 8`` was ignored without a word; review), else None.
    A note, not a refusal: ``--arch vit_b_16`` over a ResNet recipe (``model.blurpool =
    false``) is a legitimate run, and the knobs it leaves behind change nothing."""
    m, default = recipe.model, ModelCfg()
    taken = model_knobs(m.arch)
    unread = [f"model.{k} = {getattr(m, k)!r}" for k in MODEL_KNOBS
              if k not in taken and getattr(m, k) != getattr(default, k)]
    if not unread:
        return None
    return (f"{recipe.name or 'the recipe'}: model {m.arch!r} does not read "
            f"{', '.join(unread)} (it takes "
            f"{', '.join(k for k in MODEL_KNOBS if k in taken) or 'no [model] knob'}); "
            "they are ignored")


def epochs_past(keep_epochs: Sequence[int], epochs: int) -> list[int]:
    """The ``train.keep_epochs`` a run of ``epochs`` never reaches, sorted: no early checkpoint
    is written for them."""
    return sorted(e for e in keep_epochs if e > epochs)


def keep_epochs_note(recipe: Recipe) -> str | None:
    """A note naming the ``train.keep_epochs`` past ``train.epochs`` (no early checkpoint will
    be kept for them; ``dp4tl train`` said nothing, and the user found no file), else None.
    A note, not a refusal: a shortened run (``--set train.epochs=1``) over a recipe that keeps
    epoch 2 for EL2N is legitimate, as milestones past the end are. ``dp4tl train`` says it; the
    pipeline says it only where a method scores that checkpoint (``pipeline.run._trajectory``),
    since LM or FM never read one."""
    tc = recipe.train
    past = epochs_past(tc.keep_epochs, tc.epochs)
    if not past:
        return None
    files = ", ".join(early_checkpoint_name(e) for e in past)
    return (f"{recipe.name or 'the recipe'}: train.keep_epochs {past} "
            f"{'lies' if len(past) == 1 else 'lie'} past train.epochs {tc.epochs}, so "
            f"{files} will not be kept")


def build_model(recipe: Recipe, num_classes: int) -> nn.Module:
    return create_model(recipe.model.arch, num_classes, **model_kwargs(recipe))


#: parameters a ViT adds (torchvision's and timm's names) that DeiT and timm keep out of weight
#: decay (timm's ``no_weight_decay()``: the position embeddings and the class token)
NO_DECAY_NAMES = ("class_token", "cls_token", "pos_embedding", "pos_embed")


def param_groups(model: nn.Module, weight_decay: float, wd_on_bn_bias: bool) -> list[dict]:
    """Two groups: weight decay on conv/linear weights only (BN scales/shifts and biases —
    every parameter with ndim ≤ 1 — and a ViT's position embeddings and class token excluded
    unless ``wd_on_bn_bias``). ffcv-imagenet's ``bn_wd = 0`` is close but filters by name, so it
    still decays the downsample BN and the classifier's bias (docs/deviations.md #8d)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        excluded = p.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES
        (no_decay if excluded and not wd_on_bn_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(recipe: Recipe, params: list[dict], lr: float) -> torch.optim.Optimizer:
    o = recipe.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, nesterov=o.nesterov)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(params, lr=lr, betas=tuple(o.betas))


def cpu_runs_cuda_path(recipe: Recipe, device: torch.device) -> bool:
    """``train.cpu_autocast = true`` on a CPU run: honour the CUDA-only knobs (autocast at
    ``train.precision`` and ``train.channels_last``) so the mixed-precision code path can be
    exercised on CPU before a GPU run."""
    return device.type == "cpu" and recipe.train.cpu_autocast


def autocast_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """bf16/fp16 autocast on CUDA. CPU runs fp32 (CPU autocast is slow and changes numerics)
    unless the recipe sets ``train.cpu_autocast = true``, which makes CPU autocast at
    ``train.precision`` too — a switch for testing the GPU code path on CPU, off by default."""
    if recipe.train.precision == "fp32":
        return None
    if device.type != "cuda" and not cpu_runs_cuda_path(recipe, device):
        return None
    return torch.bfloat16 if recipe.train.precision == "bf16" else torch.float16


def use_channels_last(recipe: Recipe, device: torch.device) -> bool:
    """``train.channels_last`` applies on CUDA (and on CPU under ``train.cpu_autocast``)."""
    return recipe.train.channels_last and (device.type == "cuda"
                                           or cpu_runs_cuda_path(recipe, device))


@contextlib.contextmanager
def cudnn_benchmark(device: torch.device):
    """``torch.backends.cudnn.benchmark = True`` while training on CUDA (restored afterwards).

    Benchmark mode times the available convolution algorithms the first time it sees an input
    shape and reuses the fastest for every later call with that shape. Training shapes are fixed
    within an epoch (fixed batch size, ``drop_last``; one resolution per epoch), so tuning costs
    a few steps once per shape: progressive resizing changes the resolution at most once per
    epoch, which re-tunes once, and a last partial batch (finetuning, evaluation) adds one more
    shape. Without it cuDNN picks algorithms by heuristics, often a slower one for the
    channels_last bf16 convolutions. CPU runs leave the flag alone."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def pin_cpu_threads(num_workers: int, asked_as: str = "data.num_workers") -> int:
    """Set torch's CPU thread count for a stage from its recipe: the loader workers it runs with
    (``data.num_workers`` capped at the cores, at least 1) — what ffcv's loader sets anyway on
    every epoch. CPU results depend on this count (reductions split differently), and without
    pinning it depended on history (ffcv's import set it to 1, each ffcv loader to its worker
    count; both are undone now outside an epoch, ``lazy.import_ffcv``), so a pipeline stage
    that built data first and one that found it built trained differently under the same
    stage key. (The count is the machine's as much as the recipe's,
    so ``data.num_workers`` is hashed as its default: results are reproducible per machine.)
    The caller's count comes back when the stage's call returns (:mod:`.process_state`).
    ``asked_as``: the setting the count came from, named in the note when it is capped (a
    recipe's key, or ``score``'s ``num_workers`` argument)."""
    from ..data.resources import effective_workers

    n = max(1, effective_workers(num_workers, asked_as))
    torch.set_num_threads(n)
    return n


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Reseed every RNG from (seed, epoch, rank): augmentation randomness never depends on history.

    Each DDP rank gets its own stream: the draws made on the device (MoCo's colour jitter,
    grayscale and blur, PGD's random starts) would otherwise repeat on every rank, so a global
    batch of 8 × 32 images would see only 32 distinct draws. Rank 0 keeps the single-process
    stream (same results as before on one GPU); what must agree across ranks (MoCo's batch
    shuffle) is broadcast from rank 0."""
    s = int(np.random.SeedSequence([seed, epoch] + ([rank] if rank else [])).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


@dataclasses.dataclass
class StepParts:
    """Everything one training step needs, built by :func:`build_step_parts` — the trainer's
    setup, reusable by tests and benchmarks that drive :func:`train_step` directly."""
    model: nn.Module        # the backbone every checkpoint stores
    net: nn.Module          # model, or ProjectionNet(model) for self-supervised recipes
    train_model: nn.Module  # net, wrapped in DDP and/or torch.compile as the recipe says
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    objective: Any          # CrossEntropyObjective or MoCoObjective (engine's objective protocol)
    amp: torch.dtype | None
    channels_last: bool
    peak: float             # peak lr (per the recipe's batch scaling)
    grad_clip: float
    clip_params: list[torch.Tensor]

    def step(self, batch, sums: torch.Tensor | None = None) -> torch.Tensor:
        """:func:`train_step` with these parts (the lr is set on ``opt`` by the caller)."""
        return train_step(self.train_model, batch, self.opt, self.objective, amp=self.amp,
                          scaler=self.scaler, grad_clip=self.grad_clip,
                          clip_params=self.clip_params, sums=sums)

    def train_one_epoch(self, loader, schedule, **kw) -> dict[str, Any]:
        """:func:`~.engine.train_one_epoch` with these parts."""
        return train_one_epoch(self.train_model, loader, self.objective, self.opt, self.scaler,
                               schedule, amp=self.amp, grad_clip=self.grad_clip,
                               clip_params=self.clip_params, **kw)


def objective_class(recipe: Recipe) -> type:
    """The objective ``recipe`` trains with: MoCo for ``ssl.method``, PGD adversarial for
    ``adv.steps > 0``, else cross-entropy. Its class attributes (``drop_last``,
    ``supervised``) are known before any model is built (:func:`few_steps_note`)."""
    if recipe.ssl.method != "none":
        from .moco import MoCoObjective
        return MoCoObjective
    if recipe.adv.steps > 0:
        from .adversarial import AdversarialObjective
        return AdversarialObjective
    return CrossEntropyObjective


def build_step_parts(recipe: Recipe, num_classes: int, ctx: dist_.DistContext,
                     ckpt: Checkpoint | None = None) -> StepParts:
    """Model (seeded from ``train.seed``), optimiser, grad scaler, objective and compiled/DDP
    wrapper for ``recipe`` on ``ctx.device``, restored from ``ckpt`` when given."""
    dev, tc = ctx.device, recipe.train
    ssl = recipe.ssl.method != "none"
    head_classes = recipe.ssl.dim if ssl else num_classes  # ssl: fc = last projection layer
    torch.manual_seed(tc.seed)
    model = build_model(recipe, head_classes).to(dev)
    note = ignored_model_knobs(recipe)
    if note and ctx.is_main and ckpt is None:  # (said when the run starts, not on each resume)
        warnings.warn(note, stacklevel=3)
    net: nn.Module = model
    if ssl:
        from .moco import ProjectionNet
        net = ProjectionNet(model).to(dev)
    channels_last = use_channels_last(recipe, dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    peak = peak_lr(recipe.lr, tc.batch_size)
    opt = build_optimizer(recipe, param_groups(net, recipe.optim.weight_decay,
                                               recipe.optim.wd_on_bn_bias), peak)
    amp = autocast_dtype(recipe, dev)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp is torch.float16)
    if ckpt:
        model.load_state_dict(ckpt.model)
        opt.load_state_dict(ckpt.optimizer)
        scaler.load_state_dict(ckpt.scaler)
    from .ssl_augment import color_jitter_augment
    kind = objective_class(recipe)  # (the one dispatch; here each kind's arguments)
    if kind is CrossEntropyObjective:
        objective = kind(recipe.optim.label_smoothing, color_jitter_augment(recipe.train),
                         tc.crop_scale, tc.crop_ratio)
    elif not kind.supervised:  # MoCo
        objective = kind(net, recipe.ssl, ctx)
    else:  # PGD adversarial training: the plain net attacks (adversarial.py)
        from .adversarial import PGDAttack
        objective = kind(net, PGDAttack.from_recipe(recipe.adv), recipe.optim.label_smoothing,
                         tc.crop_scale, color_jitter_augment(recipe.train), tc.crop_ratio)
    if ckpt:
        objective.load_state_dict(ckpt.objective)
    train_model: nn.Module = net
    if ctx.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            net, device_ids=[dev.index] if dev.type == "cuda" else None)
        if dev.type == "cpu":
            # oneDNN hands back a 1x1 convolution's weight gradient in channels-last strides;
            # DDP then warns once per rank (three lines each) that the copy into its bucket
            # "may impair performance": on CPU a few KiB per step. On CUDA it stays: there it
            # would say the model was not made channels_last before DDP wrapped it.
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
    if tc.compile:
        train_model = torch.compile(train_model)
    return StepParts(model=model, net=net, train_model=train_model, opt=opt, scaler=scaler,
                     objective=objective, amp=amp, channels_last=channels_last, peak=peak,
                     grad_clip=recipe.optim.grad_clip,
                     clip_params=[p for p in net.parameters() if p.requires_grad])


def _check_steps(recipe: Recipe, objective, num_samples: int, drop_last: bool,
                 ctx: dist_.DistContext) -> None:
    """Refuse a run in which some rank would take no step per epoch: it would "finish" with
    loss 0 and write a checkpoint of the untrained model. Decided from the global count, so
    every rank decides the same (a rank that raised alone would leave the others waiting)."""
    per_rank, batch = num_samples // ctx.world_size, recipe.train.batch_size // ctx.world_size
    if per_rank >= (batch if drop_last else 1):
        return
    ranks = f" on each of {ctx.world_size} ranks" if ctx.enabled else ""
    if not drop_last:
        raise DP4TLError(f"the training set keeps {num_samples} samples, fewer than the "
                         f"{ctx.world_size} ranks: launch fewer ranks")
    raise DP4TLError(f"the training set keeps {num_samples} samples, fewer than one batch of "
                     f"{batch}{ranks} (train.batch_size {recipe.train.batch_size}, "
                     f"train.drop_last): no step would run; {small_set_fix(recipe)}")


def small_set_fix(recipe: Recipe) -> str:
    """What to change when a training set fills no batch of ``recipe`` (:func:`steps_per_epoch`
    0): the batch, or keeping the last partial batch, unless the objective needs full batches
    (MoCo's queue). Said by the trainer and by the pipeline, which refuses such a pruned set
    before its first stage (``pipeline.resolve.check_pretrain_size``)."""
    return ("lower train.batch_size" if objective_class(recipe).drop_last
            else "lower train.batch_size or set train.drop_last=false")


def at_chance_note(top1: float | None, val_labels: np.ndarray) -> str | None:
    """A note when a final val top-1 is within chance, else None. Chance is what a model that
    ignores the image scores: the share of the val split's most common class (1/C when
    balanced). Within chance: at most two standard errors of that share above it on these
    ``len(val_labels)`` samples. A pretraining or surrogate that ended there learned nothing
    measurable (a broken label, a decode gone wrong, far too few steps: :func:`few_steps_note`),
    and its weights then score, prune or finetune nothing but noise; said, not refused."""
    n = int(len(val_labels))
    if top1 is None or n == 0:
        return None
    chance = float(np.bincount(np.asarray(val_labels, dtype=np.int64)).max()) / n
    if top1 > chance + 2 * math.sqrt(chance * (1 - chance) / n):
        return None
    return (f"val top-1 {top1:.4f} on {n} samples is within chance: a model that always "
            f"predicts the most common class scores {chance:.4f} here, so this training learned "
            "nothing measurable; check the data (labels, decode) and the recipe (lr.lr, "
            "train.epochs, train.batch_size) before using its weights")


#: fewer optimizer steps than this in a whole training is called out (:func:`few_steps_note`)
FEW_STEPS = 20


def steps_per_epoch(recipe: Recipe, num_samples: int) -> int:
    """Optimizer steps of one epoch over ``num_samples`` samples: the full batches of
    ``train.batch_size`` (global), a last partial one counted unless ``train.drop_last`` or the
    objective drops it, as MoCo does (as :func:`train` loads)."""
    tc = recipe.train
    drop_last = tc.drop_last or objective_class(recipe).drop_last
    return num_samples // tc.batch_size + (0 if drop_last or num_samples % tc.batch_size == 0
                                           else 1)


def matched_steps_overrides(recipe: Recipe, full: int, kept: int) -> list[str]:
    """``--pretrain-length steps``: the overrides that make a pretraining on ``kept`` samples
    take about as many optimizer steps as ``recipe`` takes on all ``full`` samples, by training
    for more epochs (rounded to the nearest whole epoch, at least the recipe's own) with the
    schedule stretched to match (:func:`~.recipe.epoch_scaling_overrides`). The paper trains
    every pruned set for the same epochs, so pruning saves time; this spends the saved time
    again, to tell what the data removed costs from what the fewer steps cost. ``[]`` for the
    full set. An empty mask is refused where it is made (prune), so ``kept`` is positive."""
    from .recipe import epoch_scaling_overrides

    full_steps = steps_per_epoch(recipe, full) * recipe.train.epochs
    per_epoch = steps_per_epoch(recipe, kept)
    if per_epoch == 0:  # fewer samples than one batch with drop_last: no epoch has a step
        raise DP4TLError(f"--pretrain-length steps: {kept} kept samples make no full batch of "
                         f"train.batch_size {recipe.train.batch_size}, so no number of epochs "
                         "matches the unpruned run's steps; keep more samples (a lower ratio) "
                         "or lower train.batch_size")
    epochs = max(recipe.train.epochs, round(full_steps / per_epoch))
    return epoch_scaling_overrides(recipe, epochs)


def few_steps_note(recipe: Recipe, num_samples: int, pruned: bool = True) -> str | None:
    """A note when a training of ``num_samples`` samples takes fewer than :data:`FEW_STEPS`
    optimizer steps in all (its epochs times the full batches of ``train.batch_size``, a last
    partial one counted unless ``train.drop_last`` or the objective drops it, as MoCo does),
    else None. A pipeline that pruned to 182 samples pretrained 1 step an epoch at batch 128,
    10 in all, and reported val top-1 at chance without a word (review); the run is legal, so
    this is said, not refused. ``pruned``: the samples are what a pruning kept, so keeping more
    is a fix (not for the unpruned set: ratio 0)."""
    tc = recipe.train
    per_epoch = steps_per_epoch(recipe, num_samples)
    total = per_epoch * tc.epochs
    if total >= FEW_STEPS:
        return None
    return (f"{num_samples} samples at train.batch_size {tc.batch_size} make "
            f"{count(per_epoch, 'optimizer step')} an epoch, {total} in all over "
            f"{tc.epochs} epochs: too few to learn much (expect accuracy near chance); "
            + ("keep more samples (a lower ratio) or lower train.batch_size" if pruned else
               "lower train.batch_size or raise train.epochs"))


def _read_metrics(path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``. A torn last line (a run killed while writing it) is
    dropped with a note: the checkpoint, not this log, says which epochs are done, and the
    resumed run rewrites the file without it. An unreadable line before the last is not what a
    kill leaves (rows were written after it): a one-line DP4TLError, as for any other damaged
    file of the run, since the rewrite would destroy that epoch's row for good."""
    if not path.exists():
        return []
    rows = []
    lines = [(n, line) for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if line.strip()]
    for n, line in lines:
        try:
            row = json.loads(line)
        except BAD_JSON:
            row = None
        if not isinstance(row, dict):
            if n != lines[-1][0]:
                raise DP4TLError(f"{path}: line {n} is not a metrics row, and rows follow it, so "
                                 "it is not a torn line of a killed run: repair that line, or "
                                 "delete the file to start its log over (the checkpoint says "
                                 "which epochs are done)")
            warnings.warn(f"{path}: dropped unreadable line {n} (a run killed while writing it)",
                          stacklevel=2)
            continue
        rows.append(_checked_row(row, path, n))
    return rows


#: the number fields of a metrics row (read back on resume: the row a finished run returns is
#: what ``dp4tl train`` prints and a pipeline stage records; ``top1_val`` is compared with
#: ``best.json``): each a number or null; the count fields likewise a non-negative integer or null
ROW_NUMBERS = ("loss", "top1_train", "top1_val", "loss_val", "lr", "img_per_s", "epoch_seconds",
               "train_seconds")
ROW_COUNTS = ("resolution", "samples", "val_samples", "bad_inputs")


def _checked_row(row: dict, path: Path, n: int) -> dict:
    """The one rule for a ``metrics.jsonl`` row read back: ``epoch`` a non-negative integer
    (the 0-based epoch; it decides which rows a resume keeps), the fields of
    :data:`ROW_NUMBERS` / :data:`ROW_COUNTS` of their type or null. A row edited by hand
    (``"epoch": null``, ``"top1_val": "0.5"``) stopped a resume with a TypeError, or a finished
    run's report with a ValueError; it is a one-line DP4TLError naming the file, the line and
    the field, as for an unreadable line, and the file is left as it is."""
    where = f"{path}: line {n}"
    fix = ("repair that line, or delete the file to start its log over (the checkpoint says "
           "which epochs are done)")
    if "epoch" in row and row["epoch"] is None:  # (typed reads a null as a missing field)
        raise DP4TLError(f"{where}: field 'epoch' must be a non-negative integer, got null; {fix}")
    typed(row, "epoch", "count", where, fix, error=DP4TLError)
    for key in ROW_NUMBERS:
        typed(row, key, "number", where, fix, default=None, error=DP4TLError)
    for key in ROW_COUNTS:
        typed(row, key, "count", where, fix, default=None, error=DP4TLError)
    return row


def _check_best(out_dir: Path, rows: list[dict], start_epoch: int | None) -> float | None:
    """``train.keep_best`` on resume, before any epoch trains: ``best.json`` and ``best.pt``
    checked together, and the record against ``metrics.jsonl`` (a bad record used to be found
    only after the next epoch had trained, or never).

    * ``best.json`` without ``best.pt``: refused in one line. A kill never leaves it (best.pt is
      written first); the file was deleted, and resuming cannot recreate the best epoch's
      weights. Going on would end with no best.pt (``finetune.start_from = "best"`` failed
      later) or with the best of the remaining epochs passed off as the run's; the user picks:
      delete best.json too (the best is then chosen among the epochs still to train) or train
      the folder over.
    * ``best.pt`` without ``best.json``: the best is unknown and the next epoch that validates
      overwrites best.pt (what a kill between the two saves leaves, and what deleting a damaged
      best.json asks for); a finished run keeps its best.pt.
    * a record of an epoch the checkpoint does not hold (the one after it: a kill after
      best.json and before checkpoint.pt; any record when the run starts without a
      checkpoint) is the discarded attempt's: that epoch trains again, with another val top-1,
      so the record goes and the best is unknown, as above (kept, it was refused as "edited"
      on every later resume; review).
    * the record must otherwise be an epoch the checkpoint holds, with the ``top1_val`` that
      epoch's metrics row has. A record raised by hand (0.99) kept every later, better epoch
      from becoming best.pt without a word; a mismatch is refused, naming both files. A record
      whose epoch's row is gone (the log deleted to start over) is compared with best.pt, which
      holds its epoch and (since 2026-12-06) that epoch's val top-1.
    ``start_epoch``: the epochs the checkpoint holds (None: no checkpoint). Returns the val
    top-1 the next epochs must beat (None: no record, the next epoch that validates is the
    best); the epochs compare with it in memory, so best.json is read once per run.
    """
    meta, best = out_dir / BEST_META_NAME, out_dir / BEST_CHECKPOINT_NAME
    if not meta.exists():
        return None
    if start_epoch is None:  # (starting over: whatever it records, no epoch of this run)
        meta.unlink()
        return None
    fix = (f"restore it, or delete it and {best} to choose the best among the epochs still to "
           "train")
    rec = read_json(meta, "best-checkpoint record", fix=fix)
    if not isinstance(rec, dict):
        raise DP4TLError(f"{meta} is not a JSON object; {fix}")
    epoch = typed(rec, "epoch", "count", meta, fix, error=DP4TLError)
    top1 = typed(rec, "top1_val", "number", meta, fix, error=DP4TLError)
    if epoch == start_epoch + 1:  # the attempt the checkpoint does not hold: trained again
        meta.unlink()
        return None
    if not best.exists():
        raise DP4TLError(f"{meta} records epoch {epoch} as the best but {best} is missing, and "
                         "resuming cannot recreate it: delete best.json too to choose the best "
                         f"among the epochs still to train, or delete the folder {out_dir} and "
                         "rerun to train over")
    if not 1 <= epoch <= start_epoch:
        raise DP4TLError(f"{meta} records epoch {epoch} as the best, but {out_dir / CHECKPOINT_NAME} "
                         f"has {count(start_epoch, 'epoch')} done: it was edited; {fix}")
    row = next((r for r in reversed(rows) if r["epoch"] == epoch - 1), None)
    if row is not None:
        said, where = row.get("top1_val"), out_dir / METRICS_NAME
    else:  # the log was deleted: best.pt says which epoch it is and, when recorded, its top-1
        saved = Checkpoint.load(best)
        if saved.epoch == start_epoch + 1:  # a kill between best.pt and best.json: the discarded
            return top1  # attempt's best.pt, as with the log (review; _improves_best)
        if saved.epoch != epoch:
            raise DP4TLError(f"{meta} records epoch {epoch} as the best but {best} holds epoch "
                             f"{saved.epoch}: one of them was replaced; {fix}")
        if saved.top1_val is None:  # (a best.pt from before the field: nothing to compare)
            return top1
        said, where = saved.top1_val, best
    if said != top1:
        raise DP4TLError(f"{meta} records val top-1 {top1} for epoch {epoch} but {where} has "
                         f"{said} for it: best.json was edited; set its top1_val back to {said}, "
                         f"or delete it and {best} to choose the best among the epochs still to "
                         "train")
    return top1


# --------------------------------------------------------------------------- the run
@keeps_process_state
def train(recipe: Recipe | str | Path, dataset_dir: str | Path, mask: IndexMask | str | Path | None = None,
          out_dir: str | Path = "run", fmt: str = "ffcv", device: str | torch.device = "auto",
          resume: bool = True, progress: bool = True, stop_after: int | None = None,
          overrides: list[str] | tuple[str, ...] = (),
          callbacks: Sequence[Any] = (), log: Log | None = INHERIT) -> dict[str, Any]:
    """Train a source model on the masked train split; returns the last epoch's metrics row.

    ``log``: where its lines go (the start line, one per epoch, resumes): a function of one
    line, ``None`` for nowhere; by default where the caller's go (stdout, or the log of the
    ``run_pipeline`` it runs in). ``progress`` is the bars only.

    ``stop_after``: stop (cleanly, after checkpointing) once this many epochs are complete —
    used to simulate interruptions; the run resumes on the next call. ``callbacks``: observers
    (:mod:`.callbacks`, e.g. ``RecordSeen``) called on every rank, after the trainer's own
    metrics/TensorBoard/console writers.
    """
    from beton_builders.out_dir import reading

    t_start = time.perf_counter()
    recipe = as_recipe(recipe, overrides)  # overrides apply to a Recipe object too
    check_kind(recipe, "train", "training")
    pin_cpu_threads(recipe.data.num_workers)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DP4TLError(f"--out {out_dir} is a file; choose a directory")
    ctx = dist_.setup(device)
    created = not out_dir.exists()
    owned = False  # this call holds the folder's lock: only then may it remove a folder it made
    try:
        with contextlib.ExitStack() as lock, cudnn_benchmark(ctx.device):
            # one process writes a run folder: a second `train --out` of the same folder is
            # refused, on every rank (the others used to run on into the DDP constructor)
            refusal = None
            if ctx.is_main:
                try:
                    claim_out_dir(out_dir, "train")  # (not a finetuning's folder, scores, …)
                    lock.enter_context(directory_lock(out_dir / TRAIN_LOCK, f"training run {out_dir}"))
                    owned = True
                    remove_orphan_temps(out_dir)  # a checkpoint save a kill cut short
                    # the data is not replaced (build --overwrite) while the run reads it
                    lock.enter_context(reading(dataset_dir))
                except (DP4TLError, OSError) as e:  # (an unwritable --out: OSError)
                    refusal = e
            dist_.fail_together(ctx, refusal)
            with saying_to(log):
                return _train(recipe, Path(dataset_dir), mask, out_dir, fmt, ctx, resume,
                              progress, stop_after, list(callbacks), t_start)
    except BaseException:
        # (`created` alone is not enough: a run that lost the race for a new folder saw it
        # missing too, and removed the winner's lock and folder under it; review)
        if created and owned and ctx.is_main:
            remove_unused_run_dir(out_dir)
        raise
    finally:
        dist_.teardown(ctx)


def remove_unused_run_dir(out_dir: Path, lock_name: str = TRAIN_LOCK) -> None:
    """A run folder this call made and that holds nothing but its lock and empty files (bad
    data, mask or model refused before the first epoch) is removed, so a typo leaves no stray
    folder behind. Anything with content (a checkpoint, a metrics line) stays: resuming needs it.
    (Finetuning and ``dp4tl finetune --source-weights`` clean up the same way.)"""
    try:
        files = list(out_dir.iterdir())
        if all(f.is_file() and (f.name == lock_name or f.stat().st_size == 0) for f in files):
            for f in files:
                f.unlink()
            out_dir.rmdir()
    except OSError:
        pass  # best effort: never mask the error that ended the run


def _read_inputs(recipe: Recipe, dataset_dir: Path, mask, out_dir: Path,
                 ctx: dist_.DistContext, resume: bool) -> tuple:
    """The run's data, mask, identity and the checkpoint it resumes from (None: epoch 0), each
    checked: (manifest, train split, val split, mask or None, identity, checkpoint or None)."""
    tc = recipe.train
    manifest = load_manifest(dataset_dir)
    split = manifest.split(recipe.data.train_split, "data.train_split")
    val_split = manifest.split(recipe.data.val_split, "data.val_split")
    mask_obj = None if mask is None else as_mask(mask, split)
    if tc.batch_size % ctx.world_size:
        raise DP4TLError(f"train.batch_size {tc.batch_size} is not divisible by the "
                         f"{ctx.world_size} ranks")
    identity = {"arch": recipe.model.arch, "recipe_fingerprint": recipe.training_fingerprint(),
                "dataset_fingerprint": manifest.fingerprint,
                "mask_hash": mask_hash(None if mask_obj is None else mask_obj.indices,
                                       split.fingerprint),
                "num_classes": manifest.num_classes}
    ckpt = resume_from(Checkpoint, out_dir / CHECKPOINT_NAME, identity, resume=resume,
                       recipe=recipe)  # (a refusal names the recipe keys that differ)
    return manifest, split, val_split, mask_obj, identity, ckpt


def _train(recipe: Recipe, dataset_dir: Path, mask, out_dir: Path, fmt: str,
           ctx: dist_.DistContext, resume: bool, progress: bool, stop_after: int | None,
           user_callbacks: list, t_start: float) -> dict[str, Any]:
    dev = ctx.device
    tc, ec = recipe.train, recipe.eval
    # ---- validate everything before any work (a failure on any rank stops every rank) -----
    try:
        manifest, split, val_split, mask_obj, identity, ckpt = _read_inputs(
            recipe, dataset_dir, mask, out_dir, ctx, resume)
        refusal = None
    except (DP4TLError, OSError) as e:
        refusal = e
    dist_.fail_together(ctx, refusal)
    num_classes = manifest.num_classes
    ckpt_path = out_dir / CHECKPOINT_NAME
    start_epoch = ckpt.epoch if ckpt else 0
    _check_same_start(ctx, (start_epoch, ckpt.step if ckpt else 0), out_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if ckpt is None:
            _remove_earlier_run(out_dir)

    timer = StageTimer(ckpt.timings if ckpt else None, sync_cuda=False)
    lost = [e for e in sorted(tc.keep_epochs)
            if e <= start_epoch and not (out_dir / early_checkpoint_name(e)).exists()]
    if lost:  # resuming cannot recreate it: the run is past that epoch
        raise DP4TLError(f"{out_dir / early_checkpoint_name(lost[0])} (train.keep_epochs) is missing "
                         f"but {ckpt_path} has {count(start_epoch, 'epoch')} done, past it, so resuming cannot "
                         f"recreate it; delete the folder {out_dir} (a pipeline's stage folder) "
                         "and rerun")
    metrics_path = out_dir / METRICS_NAME
    refusal, best_top1 = None, None
    if ctx.is_main:
        # Drop metric lines of epochs the checkpoint does not contain (crash between the two).
        try:
            read = _read_metrics(metrics_path) if ckpt else []
            if tc.keep_best:  # (before any epoch trains: a bad record wastes none)
                best_top1 = _check_best(out_dir, read, start_epoch if ckpt else None)
            rows = [r for r in read if r["epoch"] < start_epoch]
            atomic_write_text(metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n"
                                                    for r in rows))
        except DP4TLError as e:  # a damaged log: every rank stops, not the main rank alone
            refusal = e
    dist_.fail_together(ctx, refusal)
    if start_epoch >= (tc.epochs if stop_after is None else min(tc.epochs, stop_after)):
        # nothing to train (finished, or --stop-after at or below where it is): the last row,
        # so the caller reports the epoch the run is at (not "epoch 0")
        if stop_after is not None and start_epoch < tc.epochs and ctx.is_main:  # (said nothing)
            say(f"stop after {stop_after}: {start_epoch} of {tc.epochs} epochs are done already "
                f"({ckpt_path}); nothing trained")
        rows = _read_metrics(metrics_path)
        return rows[-1] if rows else {"epoch": start_epoch - 1}
    # said with or without progress bars (--no-progress in a batch job's log, too)
    if ckpt is not None and not ckpt.step and ctx.is_main:  # (mid-epoch: _begin_epoch)
        say(f"resuming: {start_epoch} of {tc.epochs} epochs done ({ckpt_path})")
    if ckpt is not None and ctx.is_main:
        _resume_notes(ckpt, recipe, fmt, ckpt_path, cpu=torch.device(dev).type == "cpu")

    # ---- model / optimiser / objective ----------------------------------------------------
    parts = build_step_parts(recipe, num_classes, ctx, ckpt)
    model, objective = parts.model, parts.objective
    global_batch = tc.batch_size

    # ---- data -----------------------------------------------------------------------------
    common = dict(fmt=fmt, device=dev, num_workers=recipe.data.num_workers,
                  channels_last=parts.channels_last, seed=recipe.data.seed, decode=recipe.data.decode,
                  deterministic=recipe.data.deterministic)
    drop_last = tc.drop_last or objective.drop_last
    kept = split.num_samples if mask_obj is None else len(mask_obj)
    _check_steps(recipe, objective, kept, drop_last, ctx)
    train_loader = make_loader(dataset_dir, split.name, mask=mask_obj, aug=objective.train_aug,
                               batch_size=global_batch // ctx.world_size, drop_last=drop_last,
                               resolution=resolution(tc, start_epoch), **common)
    val_loader = None  # an objective without a classifier (MoCo) has nothing to validate
    if objective.supervised:
        val_mask = (None if mask_obj is None else
                    val_mask_of(mask_obj, split, val_split, method="classes-of-train-mask"))
        if mask_obj is not None and val_mask is None:
            if ctx.is_main:
                warnings.warn(f"the classes the mask keeps have no sample in split {val_split.name!r} "
                              f"of {dataset_dir}: training runs without validation (top1_val "
                              "stays empty)", stacklevel=2)
        else:
            val_loader = make_loader(dataset_dir, val_split.name, mask=val_mask,
                                     aug=AugSpec.for_eval(), resolution=ec.resolution,
                                     batch_size=max(ec.batch_size // ctx.world_size, 1), **common)
    if ckpt is None and ctx.is_main:  # (a batch job's log said nothing until epoch 1 ended)
        say(f"training {recipe.name or 'a recipe'}: {kept} of {split.num_samples} samples of {dataset_dir}, "
            f"{len(train_loader)} steps per epoch x {tc.epochs} epochs on {dev}"
            + (f" x {ctx.world_size} ranks" if ctx.world_size > 1 else "") + f" -> {out_dir}")
    if ckpt:
        set_rng_states(ckpt.rng)

    # ---- observers: the run's own outputs (main rank), then the caller's (every rank) -----------
    callbacks: list[Any] = []
    if ctx.is_main:
        # the epoch's line first, then its row: a stop that lands once the row is on disk (a
        # scheduler's SIGTERM) finds the line said (--no-progress hid the line: review)
        callbacks.append(ConsoleLogger(tc.epochs))
        callbacks.append(MetricsWriter(metrics_path))
        if tc.tensorboard:
            callbacks.append(TensorBoardLogger(out_dir, start_epoch))
    if tc.record_seen:  # deprecated recipe key (see recipe.TrainCfg): mapped to the callback
        if ctx.is_main:  # (one line, not one per rank)
            warnings.warn("train.record_seen is deprecated: pass callbacks=[RecordSeen(out_dir)] "
                          "(ffcv_dp4tl.training.callbacks) instead", FutureWarning, stacklevel=3)
        callbacks.append(RecordSeen(out_dir, rank=ctx.rank))
    callbacks += user_callbacks
    timer.add("setup", time.perf_counter() - t_start)
    try:
        call(callbacks, "on_train_begin", model)
        row = _epochs(recipe, parts, train_loader, val_loader, ctx, timer, callbacks, identity,
                      manifest, fmt, out_dir, start_epoch, stop_after, progress, ckpt, best_top1)
    finally:
        call(callbacks, "on_train_end")
    if ctx.is_main and val_loader is not None and row.get("epoch") == tc.epochs - 1:
        labels = val_split.load_labels()  # (the val samples it was validated on)
        note = at_chance_note(row.get("top1_val"),
                              labels if val_mask is None else labels[val_mask.indices])
        if note:
            # (the caller of train(): past _train, train and its keeps_process_state wrapper)
            warnings.warn(f"{out_dir}: {note}", stacklevel=4)
    return row


def _resume_notes(ckpt: Checkpoint, recipe: Recipe, fmt: str, ckpt_path: Path,
                  cpu: bool = True) -> None:
    """A resume that continues under settings outside the run's identity, which the result
    still depends on, says so in one line each (not refused: such checkpoints resumed before
    and must still resume): another ``--format`` (the same sample order, decoded differently,
    and the checkpoint then records the new one), and on ``cpu`` another torch thread count
    (it follows ``data.num_workers`` capped at the cores, :func:`pin_cpu_threads`, which is
    hashed as its default; on a GPU nothing the weights depend on). The count compared is the
    one the checkpoint recorded (``cpu_threads``), which the machine decided as much as the
    recipe; a checkpoint from before it was recorded compares the recipes' ``num_workers``."""
    if ckpt.format and ckpt.format != fmt:
        warnings.warn(f"{ckpt_path} was trained from --format {ckpt.format} and this run reads "
                      f"--format {fmt}: the samples come in the same order but are decoded "
                      f"differently, so the result matches neither an uninterrupted {ckpt.format} "
                      f"run nor a {fmt} one (rerun with --format {ckpt.format} to continue it as "
                      "it was)", stacklevel=3)
    if not cpu:
        return
    why = ("loading workers do not change the sample order, but on CPU torch's thread count "
           "follows data.num_workers, so the weights may differ in the last bits from an "
           "uninterrupted run")
    if ckpt.cpu_threads:
        from ..data.resources import loader_cores

        now = torch.get_num_threads()
        if ckpt.cpu_threads != now:
            warnings.warn(f"{ckpt_path} was trained with {count(ckpt.cpu_threads, 'CPU thread')} "
                          f"and this run has {now} (data.num_workers={recipe.data.num_workers} "
                          f"on {count(loader_cores(), 'core')}): {why}", stacklevel=3)
        return
    workers = ckpt.recipe.get("data", {}).get("num_workers") if ckpt.recipe else None
    if workers is not None and workers != recipe.data.num_workers:
        warnings.warn(f"{ckpt_path} was written with data.num_workers={workers} and this run has "
                      f"{recipe.data.num_workers}: {why}", stacklevel=3)


def _resume_rng(ckpt: Checkpoint, ctx: dist_.DistContext, seed: int) -> None:
    """A mid-epoch resume: this rank's RNG streams as they were at the checkpoint's step.
    Launched on another number of ranks, each rank draws a new stream from (seed, epoch, rank,
    step): the samples, steps and learning rates are still those of the interrupted run."""
    states = ckpt.rank_rng or [ckpt.rng]
    if len(states) == ctx.world_size and states[ctx.rank] is not None:
        set_rng_states(states[ctx.rank])
        return
    if ctx.is_main:
        warnings.warn(f"the mid-epoch checkpoint was written by {len(states)} rank(s) and this run "
                      f"has {ctx.world_size}: the rest of epoch {ckpt.epoch + 1} reads the rest of the "
                      "same sample order at the same learning rates, with new augmentation draws",
                      stacklevel=3)
    s = int(np.random.SeedSequence([seed, ckpt.epoch, ctx.rank, ckpt.step]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _begin_epoch(train_loader, tc, epoch: int, res: int, end_epoch: int, mid: Checkpoint | None, *,
                 first: bool, ctx: dist_.DistContext, callbacks: list,
                 out_dir: Path) -> EpochProgress:
    """Select the loader's epoch and return where it starts: at its beginning, or (``mid``: the
    mid-epoch checkpoint it resumes from) after the steps ``mid`` holds, with this rank's RNG
    streams of that step and the observers told (``on_resume``)."""
    if mid is not None:
        _resume_rng(mid, ctx, tc.seed)
    try:
        # announcing the next epoch lets the WebDataset loader's workers start on it while this
        # one drains (none after the last epoch of this call: nothing is built for nothing)
        train_loader.set_epoch(epoch, res, next_resolution=resolution(tc, epoch + 1)
                               if epoch + 1 < end_epoch else None,
                               **({"start_batch": mid.step} if mid is not None else {}))
    except DataError as e:
        if mid is None:
            raise
        where = mid.unfinished() or f"at step {mid.step} of epoch {epoch + 1}"  # (1-based, as shown)
        raise DP4TLError(f"{out_dir / CHECKPOINT_NAME} is {where}, which it cannot be ({e}): it is "
                         "damaged; delete it and rerun to start over") from None
    steps = len(train_loader) + (mid.step if mid is not None else 0)  # the whole epoch's
    if first and ctx.is_main and 0 < tc.checkpoint_every >= steps:
        warnings.warn(f"train.checkpoint_every = {tc.checkpoint_every} steps is not less than an "
                      f"epoch's {steps}: the count restarts every epoch, so only the end-of-epoch "
                      "checkpoints are written", stacklevel=3)
    if mid is None:
        return EpochProgress()
    call(callbacks, "on_resume", epoch, mid.step)
    if ctx.is_main:  # (the numbers of the progress bar; said without bars too)
        say(f"resuming epoch {epoch + 1}/{tc.epochs} at step {mid.step} of {steps} (the "
            f"mid-epoch checkpoint in {out_dir})")
    return EpochProgress.from_dict(mid.progress)


def _epochs(recipe: Recipe, parts: StepParts, train_loader, val_loader, ctx: dist_.DistContext,
            timer: StageTimer, callbacks: list, identity: dict, manifest, fmt: str, out_dir: Path,
            start_epoch: int, stop_after: int | None, progress: bool,
            ckpt: Checkpoint | None, best_top1: float | None) -> dict[str, Any]:
    """The epochs from ``start_epoch`` on; ``best_top1``: the val top-1 best.json records (the
    main rank's, :func:`_check_best`), which an epoch must beat to become best.pt."""
    tc, ec = recipe.train, recipe.eval
    objective = parts.objective

    schedule = step_schedule(recipe.lr, tc.epochs, parts.peak, parts.opt, recipe.optim.momentum)

    def state(epoch_done: int, **mid_epoch) -> Checkpoint:
        """The run's checkpoint now: after ``epoch_done`` epochs (and ``mid_epoch``'s step,
        progress and every rank's RNG states within the next one; or the epoch's ``top1_val``)."""
        return Checkpoint(
            model=unwrap(parts.model).state_dict(), arch=recipe.model.arch,
            num_classes=get_head(parts.model).out_features,  # (MoCo: ssl.dim)
            identity=identity, model_kwargs=model_kwargs(recipe), epoch=epoch_done,
            optimizer=parts.opt.state_dict(), scaler=parts.scaler.state_dict(),
            rng=rng_states(), recipe=recipe.to_dict(), recipe_name=recipe.name,
            classes=manifest.classes,
            self_supervised=None if objective.supervised else objective.name,
            objective=objective.state_dict(), timings=timer.totals,
            world_size=ctx.world_size, format=fmt, cpu_threads=torch.get_num_threads(),
            **mid_epoch)

    def save_mid_epoch(epoch: int, done: EpochProgress) -> None:
        rank_rng = dist_.all_gather(ctx, rng_states())  # (every rank: a collective)
        # observers first (RecordSeen's part of the epoch): a kill between the two then
        # resumes from the previous checkpoint, whose step's record is still there; every
        # rank's observers, before the main rank's save (here, not in a callback: a callback
        # given to some ranks only must not hold the others in a collective)
        call(callbacks, "on_checkpoint", epoch, done.step)
        dist_.barrier(ctx)
        if ctx.is_main:
            with timer("checkpoint"):
                state(epoch, step=done.step, progress=done.to_dict(),
                      rank_rng=rank_rng).save(out_dir / CHECKPOINT_NAME)

    last_row: dict[str, Any] = {}
    end_epoch = tc.epochs if stop_after is None else min(tc.epochs, stop_after)
    for epoch in range(start_epoch, end_epoch):
        seed_epoch(tc.seed, epoch, ctx.rank)
        res = resolution(tc, epoch)
        start = _begin_epoch(train_loader, tc, epoch, res, end_epoch,
                             ckpt if ckpt is not None and epoch == ckpt.epoch and ckpt.step else None,
                             first=epoch == start_epoch, ctx=ctx, callbacks=callbacks,
                             out_dir=out_dir)
        t0 = time.perf_counter() - start.seconds  # (a resumed epoch: its earlier part too)
        stats = parts.train_one_epoch(
            train_loader, schedule, epoch=epoch, ctx=ctx, timer=timer,
            callbacks=callbacks,
            progress=f"epoch {epoch + 1}/{tc.epochs} res {res}" if progress and ctx.is_main else None,
            start=start,
            save_every=tc.checkpoint_every,
            save=lambda done, epoch=epoch: save_mid_epoch(epoch, done))
        bad_inputs = stats.pop("bad_inputs")
        row: dict[str, Any] = {"epoch": epoch, **stats, "resolution": res,
                               "img_per_s": stats["samples"] / max(stats["train_seconds"], 1e-9),
                               "top1_val": None, "loss_val": None, "objective": objective.name,
                               "bad_inputs": bad_inputs}  # batches with NaN/Inf images (GPU check)
        if not math.isfinite(row["loss"]):
            if bad_inputs:
                raise DP4TLError(
                    f"epoch {epoch + 1}: {bad_inputs} training batches held NaN/Inf input images, so the "
                    f"loss is {row['loss']}: the input pipeline (format {fmt}, data.decode="
                    f"{recipe.data.decode}) produced them, not the optimiser; retry with data.decode=cpu "
                    "and report the dataset")
            raise DP4TLError(f"training diverged at epoch {epoch + 1} (loss {row['loss']}); lower lr.lr")
        if val_loader is not None and ((epoch + 1) % ec.every == 0 or epoch + 1 == tc.epochs):
            with timer("eval"):
                ev = evaluate(parts.model, val_loader, ctx, parts.amp, ec.flip_tta)
            row.update(top1_val=ev["top1"], loss_val=ev["loss"], val_samples=ev["count"])
        row["epoch_seconds"] = time.perf_counter() - t0

        call(callbacks, "on_epoch_end", row)
        if ctx.is_main:
            with timer("checkpoint"):
                ckpt_now = state(epoch + 1, top1_val=row.get("top1_val"))
                # the early (and best) checkpoint first: a kill between the saves then resumes
                # from the previous epoch and rewrites it, never past an epoch whose copy is missing
                if epoch + 1 in tc.keep_epochs:
                    ckpt_now.save(out_dir / early_checkpoint_name(epoch + 1))
                if tc.keep_best and _improves_best(best_top1, row.get("top1_val")):
                    ckpt_now.save(out_dir / BEST_CHECKPOINT_NAME)  # then its record: see below
                    atomic_write_json(out_dir / BEST_META_NAME,
                                      {"epoch": epoch + 1, "top1_val": row["top1_val"]})
                    best_top1 = row["top1_val"]
                ckpt_now.save(out_dir / CHECKPOINT_NAME)
            atomic_write_json(out_dir / TIMINGS_NAME, {
                "stages": timer.totals, "epochs_done": epoch + 1, "device": str(ctx.device),
                "world_size": ctx.world_size, "format": fmt,
                "total_seconds": sum(timer.totals.values())})
        dist_.barrier(ctx)
        call(callbacks, "on_epoch_saved", epoch)  # (every rank: the main rank has saved it)
        last_row = row
    return last_row

