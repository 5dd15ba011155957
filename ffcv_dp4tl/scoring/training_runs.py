"""Training runs that baselines make during selection, and what they record.

The training-dynamics baselines score models they train themselves, as the literature does
(and as the paper's Tab. 4 costs include): EL2N/GraNd average over ``N`` runs stopped early
(Paul et al. 2021: 10 seeds, 10 % into training), FORGET counts forgetting events over a
training run (Toneva et al. 2019). Every run goes through the project's one trainer
(:func:`~ffcv_dp4tl.training.trainer.train`) with the scoring context's training recipe (the
surrogate's, unless ``--recipe`` names another), into ``<scores dir>/runs/``, and its wall time
is recorded in the scores metadata (``training_runs``, ``training_seconds``) so the selection
cost counts it.

* :class:`ForgettingRecorder` — a training callback: it sees each batch's sample indices
  (``on_batch``), hooks the model's forward pass (``on_train_begin``) and records, on the
  device and without host synchronisation, whether each sample was classified correctly by
  the training forward pass, counting correct → incorrect transitions.
* :func:`per_sample_grad_norms` — full-model per-sample gradient norms (GraNd over all
  parameters) with ``torch.func`` (``vmap`` over ``grad``), eval-mode BatchNorm.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from ..errors import DP4TLError
from ..training.callbacks import Callback


class ForgettingRecorder(Callback):
    """Forgetting events per sample of a ``num_samples``-sample split, recorded during training.

    A presentation = a sample's appearance in a training batch; "correct" = the argmax of the
    training forward pass (train-mode, augmented input: Toneva et al.'s statistic) equals the
    label. The state lives on the model's device; :meth:`result` reads it once."""

    def __init__(self, num_samples: int):
        self.n = int(num_samples)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._hook = None
        self._prev = self._learned = self._events = self._seen = None

    # ---- callback protocol
    def on_train_begin(self, model: torch.nn.Module) -> None:
        self._hook = model.register_forward_hook(self._on_forward)

    def on_batch(self, epoch: int, batch: Any) -> None:
        self._pending = (batch.indices, batch.labels)

    def on_train_end(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _on_forward(self, module: torch.nn.Module, args, output) -> None:
        if self._pending is None or not module.training:
            return  # validation forwards, or a forward that is not a training step
        idx, labels = self._pending
        self._pending = None
        with torch.no_grad():
            self.update(idx, output.detach().argmax(1) == labels)

    # ---- state
    def update(self, indices: torch.Tensor, correct: torch.Tensor) -> None:
        """Record one presentation of ``indices`` (unique within the call) with ``correct``."""
        dev = correct.device
        if self._prev is None:
            self._prev = torch.zeros(self.n, dtype=torch.bool, device=dev)
            self._learned = torch.zeros(self.n, dtype=torch.bool, device=dev)
            self._events = torch.zeros(self.n, dtype=torch.int32, device=dev)
            self._seen = torch.zeros(self.n, dtype=torch.int32, device=dev)
        idx = indices.to(dev, non_blocking=True).long()
        correct = correct.bool()
        self._events[idx] += (self._prev[idx] & ~correct).int()
        self._learned[idx] |= correct
        self._prev[idx] = correct
        self._seen[idx] += 1

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(events int64, ever learned bool, presentations int64) per sample."""
        if self._prev is None:
            z = np.zeros(self.n, dtype=np.int64)
            return z, np.zeros(self.n, dtype=bool), z
        return (self._events.cpu().numpy().astype(np.int64), self._learned.cpu().numpy(),
                self._seen.cpu().numpy().astype(np.int64))


def per_sample_grad_norms(model: torch.nn.Module, loader: Iterable, num_samples: int, *,
                          micro_batch: int = 16, progress: bool = False, desc: str = "") -> np.ndarray:
    """L2 norm of the cross-entropy gradient w.r.t. *all* parameters, per sample: float64
    (num_samples,), placed by ``batch.indices``. Eval mode (BatchNorm uses running stats, so a
    sample's gradient does not depend on its batch); ``micro_batch`` samples at a time bound
    the memory (``micro_batch × #params`` floats)."""
    from torch.func import functional_call, grad, vmap

    was = model.training
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_fn(p, x, y):
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(out.float(), y.unsqueeze(0))

    per_sample = vmap(grad(loss_fn), in_dims=(None, 0, 0))
    out = np.zeros(num_samples, dtype=np.float64)
    bar = None
    if progress:
        from ..progress import bar as progress_bar
        bar = progress_bar(total=len(loader) if hasattr(loader, "__len__") else None, desc=desc)
    try:
        for batch in loader:
            norms = []
            for s in range(0, batch.images.shape[0], micro_batch):
                g = per_sample(params, batch.images[s:s + micro_batch].float(),
                               batch.labels[s:s + micro_batch])
                norms.append(torch.stack([v.pow(2).flatten(1).sum(1) for v in g.values()]).sum(0))
            out[batch.indices.cpu().numpy()] = torch.cat(norms).sqrt().double().cpu().numpy()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was)
    return out


# ----------------------------------------------------------------------- runs for scoring
def training_recipe(ctx, arch: str = ""):
    """The recipe a scorer's own runs use: ``ctx.train_recipe`` (+ ``ctx.train_overrides``), else
    the loaded surrogate's recipe; ``arch`` overrides ``model.arch`` (checked against the
    model registry)."""
    from ..training.recipe import load_recipe

    if ctx.train_recipe:
        recipe = load_recipe(ctx.train_recipe, list(ctx.train_overrides))
    elif ctx.surrogate is not None and ctx.surrogate.checkpoint.recipe:
        recipe = ctx.surrogate.checkpoint.training_recipe(str(ctx.surrogate.path))
        recipe.name = recipe.name or "surrogate"
    else:
        raise DP4TLError(f"{ctx.method} trains its own runs: pass --recipe (a training recipe "
                         "for the source, e.g. the surrogate's)")
    recipe = copy.deepcopy(recipe)
    if arch:
        from ..training.models import list_models

        if arch not in list_models():
            raise DP4TLError(f"{ctx.method}: unknown arch {arch!r}; choose one of "
                             f"{', '.join(list_models())}")
        recipe.model.arch = arch
    if recipe.ssl.method != "none":
        raise DP4TLError(f"{ctx.method} needs a supervised training recipe, but "
                         f"{recipe.name or 'the recipe'} is self-supervised ({recipe.ssl.method})")
    return recipe


def early_epoch(recipe, epoch: int) -> int:
    """``epoch`` if > 0; else the recipe's earliest ``train.keep_epochs`` (the early checkpoint
    the surrogate keeps), else 10 % of its epochs (Paul et al.: epoch 20 of 200), at least 1.
    A negative ``epoch`` is refused (it used to run as 0 and be recorded as asked)."""
    if epoch < 0:
        raise DP4TLError(f"option epoch={epoch} must be >= 0 (epochs into training the runs "
                         "stop; 0: the recipe's train.keep_epochs, else 10 % of its epochs)")
    if epoch > 0:
        return min(int(epoch), recipe.train.epochs)
    if recipe.train.keep_epochs:
        return int(min(recipe.train.keep_epochs))
    return max(1, round(0.1 * recipe.train.epochs))


def train_run(ctx, recipe, run: int, *, stop_after: int | None, callbacks=(),
              resume: bool = True) -> tuple[Path, dict[str, Any]]:
    """Train run ``run`` of ``recipe`` on the full source train split (seed = the recipe's
    ``train.seed`` + ``run``, same for data order) into ``<out>/runs/run<run>-e<stop_after>``
    (``run<run>`` when it runs to the end), stopping after ``stop_after`` epochs; returns its
    checkpoint and a record for ``ctx.meta["training_runs"]`` (also appended there). One folder
    per stop epoch: ``dp4tl score`` rerun into its ``--out`` with an earlier ``epoch`` would
    otherwise resume a run already past it and score the later checkpoint."""
    from ..training.trainer import train

    r = copy.deepcopy(recipe)
    r.train.seed = recipe.train.seed + run
    r.data.seed = recipe.data.seed + run
    r.train.keep_epochs = []
    out = Path(ctx.out_dir) / "runs" / (f"run{run}" if stop_after is None else f"run{run}-e{stop_after}")
    t0 = time.perf_counter()
    train(r, ctx.source_dir, out_dir=out, fmt=ctx.fmt, device=ctx.device, resume=resume,
          progress=ctx.progress, stop_after=stop_after, callbacks=list(callbacks))
    rec = {"run": run, "dir": str(out), "arch": r.model.arch, "seed": r.train.seed,
           "epochs": min(stop_after or r.train.epochs, r.train.epochs),
           "recipe": recipe.name, "seconds": time.perf_counter() - t0}
    record_run(ctx, rec)
    from ..training.checkpoint import CHECKPOINT_NAME

    return out / CHECKPOINT_NAME, rec


def record_run(ctx, rec: dict[str, Any]) -> None:
    ctx.meta.setdefault("training_runs", []).append(rec)
    ctx.meta["training_seconds"] = sum(r.get("seconds", 0.0) for r in ctx.meta["training_runs"])


def early_training_checkpoints(ctx, runs: int, epoch: int, arch: str = "") -> list[Path]:
    """``runs`` checkpoints stopped ``epoch`` epochs into training (0 = :func:`early_epoch`).

    Run 0 is the surrogate's own early checkpoint (the one ``ctx.checkpoint`` names) when it
    matches — same architecture and epoch — so ``runs=1`` scores exactly that checkpoint, as
    before; the other runs are trained here with seeds ``train.seed + run``."""
    if runs < 1:
        raise DP4TLError(f"{ctx.method}: runs must be >= 1, got {runs}")
    recipe = training_recipe(ctx, arch)
    stop = early_epoch(recipe, epoch)
    paths: list[Path] = []
    s = ctx.surrogate
    if s is not None and ctx.checkpoint is not None:
        same_arch = not arch or arch == s.checkpoint.arch
        # the checkpoint given is reused when it stopped at the same epoch; with runs=1 and no
        # epoch asked for, whatever it is (the single-checkpoint score of before, also when
        # the surrogate recipe keeps no early checkpoint and the final one is given)
        same_epoch = ((s.checkpoint.epoch == stop and not s.checkpoint.step)  # (not mid-epoch)
                      or (runs == 1 and epoch <= 0))
        if same_arch and same_epoch:
            paths.append(Path(ctx.checkpoint))
            record_run(ctx, {"run": 0, "dir": str(Path(ctx.checkpoint).parent),
                             "checkpoint": str(ctx.checkpoint), "arch": s.checkpoint.arch,
                             "epochs": int(s.checkpoint.epoch),
                             "reused": "surrogate", "seconds": 0.0})
    for run in range(len(paths), runs):
        ckpt, _ = train_run(ctx, recipe, run, stop_after=stop)
        paths.append(ckpt)
    return paths
