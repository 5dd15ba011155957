"""The training engine shared by pretraining, FF, LP and MoCo.

* an **objective** is an object called as ``objective(train_model, batch) -> (loss, correct, n)``:
  :class:`CrossEntropyObjective` (supervised pretraining, FF, LP on cached features) or
  :class:`~ffcv_dp4tl.training.moco.MoCoObjective` (self-supervised). It also says what its
  train loader must deliver (``train_aug``, the ``AugSpec`` for ``make_loader``; ``drop_last``), whether it
  has a classifier to validate (``supervised``), and carries its own checkpoint state
  (``state_dict``);
* :func:`train_step` is one optimisation step (no host synchronisation: see its doc);
* :func:`train_one_epoch` runs the steps of one epoch over any iterable of batches with a
  ``__len__`` (a masked image loader, or cached LP features) and reads the epoch's metric sums
  once, at the end (and at each mid-epoch checkpoint: :class:`EpochProgress`);
* :func:`evaluate` is top-1/loss with optional flip TTA, summed over DDP ranks.

Observers (metrics file, TensorBoard, console, sample audit) are :mod:`.callbacks`; the epoch
loop calls their ``on_batch(epoch, batch)``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..data.transforms import AugSpec
from . import distributed as dist_

if TYPE_CHECKING:
    from ..data.sampling import Batch
    from .adversarial import AdversarialObjective
    from .moco import MoCoObjective
    from .timing import StageTimer

#: ``schedule(epoch, iteration, iterations_per_epoch) -> lr`` (a Python float: no sync)
Schedule = Callable[[int, int, int], float]


def train_aug_for(crop_scale: tuple[float, float] | list[float] | None,
                  crop_ratio: tuple[float, float] | list[float] | None = None,
                  normalize: str = "imagenet") -> AugSpec:
    """The supervised train augmentation for a recipe's ``train.crop_scale`` and
    ``train.crop_ratio`` (None: the standard [0.08, 1] and [3/4, 4/3]): the objectives' and
    FF's."""
    kw: dict[str, Any] = {"normalize": normalize}
    if crop_scale is not None:
        kw["crop_scale"] = (float(crop_scale[0]), float(crop_scale[1]))
    if crop_ratio is not None:
        kw["crop_ratio"] = (float(crop_ratio[0]), float(crop_ratio[1]))
    return AugSpec.for_train(**kw)


class CrossEntropyObjective:
    """Supervised objective: cross-entropy of ``train_model(batch.images)`` against
    ``batch.labels``; "correct" = top-1 hits."""

    name = "supervised"
    supervised = True     # has a classifier: the trainer validates it
    drop_last = False     # no need for full batches (the recipe's train.drop_last decides)
    loader_views = 1

    def __init__(self, label_smoothing: float = 0.0, augment: nn.Module | None = None,
                 crop_scale: tuple[float, float] | None = None,
                 crop_ratio: tuple[float, float] | None = None):
        self.crit = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        #: the train loader's augmentation: one view, random-resized crop (area ``crop_scale``,
        #: aspect ``crop_ratio``: the recipe's train.crop_scale / crop_ratio; default the standard
        #: [0.08, 1] and [3/4, 4/3]) + flip
        self.train_aug = train_aug_for(crop_scale, crop_ratio)
        #: batched photometric augmentation of the (normalised) images, e.g. the recipe's
        #: train.color_jitter (:func:`~.ssl_augment.color_jitter_augment`); None = none
        self.augment = augment

    def __call__(self, train_model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        images = batch.images if self.augment is None else self.augment(batch.images)
        out = train_model(images)
        loss = self.crit(out, batch.labels)
        correct = (out.detach().argmax(1) == batch.labels).sum()
        return loss, correct, batch.labels.numel()

    def state_dict(self) -> dict[str, Any] | None:
        return None  # stateless

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        pass


#: The running sums of a training epoch (one float64 device tensor, :func:`metric_sums`):
#: loss × n, correct predictions, samples, batches whose input images held NaN/Inf.
METRIC_SUMS = ("loss_x_n", "correct", "n", "bad_inputs")


def metric_sums(device: torch.device | str) -> torch.Tensor:
    """A zeroed tensor of the :data:`METRIC_SUMS` for :func:`train_step` to accumulate into."""
    return torch.zeros(len(METRIC_SUMS), dtype=torch.float64, device=device)


def train_step(train_model: nn.Module, batch, opt: torch.optim.Optimizer, objective, *,
               amp: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
               grad_clip: float = 0.0, clip_params: list[torch.Tensor] | None = None,
               sums: torch.Tensor | None = None) -> torch.Tensor:
    """One optimisation step of ``objective`` on ``batch``; returns the (detached) loss tensor.

    ``sums`` (:func:`metric_sums`) accumulates the :data:`METRIC_SUMS` for the epoch's metrics:
    (loss × n, correct, n) and the number of batches whose input images held NaN/Inf (one fused
    reduction, no sync), so a diverged run can say whether the data or the optimisation
    produced the NaN. The step never synchronises the host with the device — no
    ``.item()``, no Python-side branching on tensor values, no blocking host→device copies — so
    on a GPU the Python loop runs ahead and keeps the kernel queue full
    (``tests/training/test_gpu.py`` checks this under ``torch.cuda.set_sync_debug_mode("error")``).
    Known exception: fp16 with an enabled GradScaler, whose ``step`` reads the inf check on the
    host (bf16 needs no scaler). The lr is set by the caller (a Python float: no sync either).
    """
    with torch.autocast(batch.images.device.type, dtype=amp, enabled=amp is not None):
        loss, correct, n = objective(train_model, batch)
    opt.zero_grad(set_to_none=True)
    if scaler is not None and scaler.is_enabled():
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(clip_params, grad_clip)
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(clip_params, grad_clip)
        opt.step()
    loss = loss.detach()
    if sums is not None:
        sums[0] += loss.double() * n
        sums[1] += correct
        sums[2] += n
        sums[3] += (~torch.isfinite(batch.images)).any()
    return loss


@dataclasses.dataclass
class EpochProgress:
    """How far an epoch got: the steps taken, the :data:`METRIC_SUMS` of those steps (summed
    over ranks) and their seconds. A mid-epoch checkpoint stores it, so the resumed epoch's
    row (loss, top-1, samples, seconds) counts every step of the epoch, not only those after
    the resume."""
    step: int = 0
    sums: list[float] = dataclasses.field(default_factory=lambda: [0.0] * len(METRIC_SUMS))
    seconds: float = 0.0
    lr: float = 0.0  # the last step's (the epoch's row reports it, also when none is left)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EpochProgress":
        return cls(step=int(d["step"]), sums=[float(v) for v in d["sums"]],
                   seconds=float(d["seconds"]), lr=float(d.get("lr", 0.0)))


def _device_of(model: nn.Module, default: torch.device) -> torch.device:
    p = next(iter(model.parameters()), None)
    return default if p is None else p.device


def train_one_epoch(model: nn.Module, loader: Iterable[Batch],
                    objective: CrossEntropyObjective | MoCoObjective | AdversarialObjective,
                    optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, schedule: Schedule, *, epoch: int = 0,
                    steps: int | None = None, amp: torch.dtype | None = None,
                    grad_clip: float = 0.0, clip_params: list[torch.Tensor] | None = None,
                    ctx: dist_.DistContext | None = None, timer: StageTimer | None = None,
                    callbacks: Sequence[Any] = (), progress: str | None = None,
                    start: EpochProgress | None = None, save_every: int = 0,
                    save: Callable[[EpochProgress], None] | None = None) -> dict[str, Any]:
    """Train ``model`` (the module the step calls: plain, DDP- or compile-wrapped) for one epoch
    of ``loader``; returns the epoch's metrics (loss, top1_train, samples, lr, train_seconds,
    bad_inputs), read from the device once, after the epoch, summed over ranks when ``ctx`` is a
    DDP context.

    ``steps``: take at most this many steps; later batches are still read and dropped. ``timer``: a
    :class:`~.timing.StageTimer` charged with "data" and "step" (host time to enqueue the step:
    no CUDA sync). ``callbacks``: objects whose ``on_batch(epoch, batch)`` sees each trained batch
    before its step. ``progress``: a tqdm bar with this description, counting steps only (a loss
    shown per step would sync).

    ``start``: the epoch resumes after ``start.step`` steps (the loader then yields only the
    batches after those: ``set_epoch(..., start_batch=start.step)``); the learning rates go on
    from that step and the returned metrics include ``start``'s. ``save``: called with the
    epoch's :class:`EpochProgress` after every ``save_every``-th step of the epoch except its
    last (which the caller's end-of-epoch checkpoint covers); it reads the sums (one sync per
    call, none between). Under DDP it is called on every rank at the same step (it sums over
    the ranks: a collective).

    Under DDP (``ctx`` enabled) every rank must take the same steps (train loaders give every
    rank as many samples: ``make_loader``'s ``even``), so each step's gradient all-reduce, the
    lr and the optimizer state agree across ranks; a loader that breaks this is one error on
    every rank before the first step (:func:`~.distributed.check_same_steps`). The metric sums
    are all-reduced after the epoch."""
    dev = ctx.device if ctx is not None else _device_of(model, torch.device("cpu"))
    iters = len(loader) if steps is None else steps
    start = start if start is not None else EpochProgress()
    first, total = start.step, start.step + iters  # the epoch's steps, those before included
    hooks = [cb.on_batch for cb in callbacks if hasattr(cb, "on_batch")]
    stage = timer if timer is not None else (lambda name: contextlib.nullcontext())
    model.train()
    sums = metric_sums(dev)
    lr = start.lr
    bar = None
    if progress is not None:
        from ..progress import bar as progress_bar
        bar = progress_bar(total=total, initial=first, desc=progress)
    if ctx is not None:
        dist_.check_same_steps(min(len(loader), iters), ctx)
    t0 = time.perf_counter()

    def so_far(taken: int, reduced: torch.Tensor) -> EpochProgress:
        return EpochProgress(first + taken, [a + b for a, b in zip(start.sums, reduced.tolist())],
                             start.seconds + time.perf_counter() - t0, lr)

    it_loader = iter(loader)
    it = 0
    while True:
        with stage("data"):
            batch = next(it_loader, None)
        if batch is None:
            break
        if it >= iters:
            continue  # drain the batches past ``steps``
        for hook in hooks:
            hook(epoch, batch)
        lr = schedule(epoch, first + it, total)
        for g in optimizer.param_groups:
            g["lr"] = lr
        with stage("step"):
            train_step(model, batch, optimizer, objective, amp=amp, scaler=scaler,
                       grad_clip=grad_clip, clip_params=clip_params, sums=sums)
        if bar is not None:
            bar.update(1)
        it += 1
        if save is not None and save_every > 0 and (first + it) % save_every == 0 and it < iters:
            reduced = sums.clone()
            if ctx is not None:
                dist_.all_reduce_sum(reduced, ctx)
            save(so_far(it, reduced))
    if bar is not None:
        bar.close()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    if ctx is not None:
        dist_.all_reduce_sum(sums, ctx)
    done = so_far(it, sums)  # the epoch's one read of the sums (beside mid-epoch saves)
    loss_sum, correct_sum, count, bad_inputs = done.sums
    n = max(count, 1)
    return {"loss": loss_sum / n, "top1_train": correct_sum / n, "samples": int(count), "lr": lr,
            "train_seconds": done.seconds, "bad_inputs": int(bad_inputs)}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[Batch], ctx: dist_.DistContext | None = None,
             amp: torch.dtype | None = None, flip_tta: bool = True,
             num_classes: int | None = None) -> dict[str, float]:
    """Top-1 and loss over this rank's part of ``loader``, summed over ranks (``ctx``; None: one
    process, on the model's device, as :func:`train_one_epoch` takes it). Flip TTA averages
    the logits of the image and its mirror (ffcv-imagenet's ``lr_tta``); leave it off for
    inputs that are not images (cached LP features). ``amp``: autocast dtype, None for none."""
    model.eval()
    dev = ctx.device if ctx is not None else _device_of(model, torch.device("cpu"))
    sums = torch.zeros(3, dtype=torch.float64, device=dev)
    crit = nn.CrossEntropyLoss(reduction="sum")
    for batch in loader:
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            out = model(batch.images)
            if flip_tta:
                out = out + model(torch.flip(batch.images, dims=[3]))
        out = out.float()
        sums[0] += crit(out / (2 if flip_tta else 1), batch.labels).double()
        sums[1] += (out.argmax(1) == batch.labels).sum()
        sums[2] += batch.labels.numel()
    if ctx is not None:
        dist_.all_reduce_sum(sums, ctx)
    loss_sum, correct_sum, count = sums.tolist()
    n = max(count, 1)
    return {"loss": loss_sum / n, "top1": correct_sum / n, "count": int(count)}
