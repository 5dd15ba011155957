"""Learning-rate schedules (evaluated per iteration) and progressive resizing.

Everything is a pure function of (epoch, iteration) so a resumed run recomputes exactly the
values an uninterrupted run would have used — no scheduler state to checkpoint.
"""
from __future__ import annotations

import math

import numpy as np

from .recipe import LRCfg, TrainCfg


def peak_lr(cfg: LRCfg, global_batch: int) -> float:
    """``cfg.lr`` is per 256 images; scale linearly with the global batch (ffcv-imagenet/Goyal)."""
    return cfg.lr * global_batch / 256 if cfg.scale_with_batch else cfg.lr


def lr_at(cfg: LRCfg, epoch: float, epochs: int, peak: float) -> float:
    """Learning rate at fractional ``epoch`` (e.g. 2.5 = halfway through the third epoch).

    * triangular: linear 0 → peak at ``lr_peak_epoch``, then linear → 0 at ``epochs`` (a run of
      ``epochs <= lr_peak_epoch``, such as a shortened test run, only rises and never decays,
      as ffcv-imagenet's ``np.interp`` schedule does)
    * step: ``peak × step_ratio ** floor(epoch / step_length)``
    * cosine: half-cosine peak → ``min_lr`` over ``epochs`` (after optional linear warmup)
    * multistep: ``peak × gamma ** (#milestones ≤ epoch)`` (after optional linear warmup)
    * constant: peak
    """
    if cfg.schedule == "triangular":
        return float(np.interp(epoch, [0, cfg.lr_peak_epoch, epochs], [0, peak, 0]))
    if cfg.schedule == "step":
        return peak * cfg.step_ratio ** math.floor(epoch / cfg.step_length)
    warm = cfg.warmup_epochs
    if warm > 0 and epoch < warm:
        return peak * epoch / warm
    if cfg.schedule == "cosine":
        t = min(max((epoch - warm) / max(epochs - warm, 1e-12), 0.0), 1.0)
        return cfg.min_lr + (peak - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
    if cfg.schedule == "multistep":
        return peak * cfg.gamma ** sum(1 for m in cfg.milestones if epoch >= m)
    return peak


def lr_for_iteration(cfg: LRCfg, epoch: int, it: int, iters_per_epoch: int, epochs: int,
                     peak: float) -> float:
    """Per-iteration lr: interpolate inside the epoch, as ffcv-imagenet does."""
    return lr_at(cfg, epoch + it / max(iters_per_epoch, 1), epochs, peak)


def momentum_for_lr(cfg: LRCfg, lr: float, peak: float, max_momentum: float) -> float:
    """SGD momentum that cycles against the lr (``lr.cycle_momentum``), as torch's ``CyclicLR``
    does by default and the authors' released pretraining therefore does
    (src/experiment/imagenet_train_from_scratch.py: ``CyclicLR(..., cycle_momentum=True)`` with
    its defaults base_momentum 0.8, max_momentum 0.9): ``max_momentum`` where the lr is 0,
    ``base_momentum`` at the peak, linear in the lr in between. A pure function of the lr, so a
    resumed run recomputes it."""
    frac = min(max(lr / peak, 0.0), 1.0) if peak > 0 else 0.0
    return max_momentum - (max_momentum - cfg.base_momentum) * frac


def step_schedule(cfg: LRCfg, epochs: int, peak: float, optimizer, max_momentum: float):
    """The engine's ``schedule(epoch, it, iters) -> lr`` for one run: the lr of every step and,
    with ``lr.cycle_momentum``, the momentum against it, set on ``optimizer``'s groups. One
    rule for pretraining and finetuning (finetuning used to skip the momentum)."""
    def schedule(epoch: int, it: int, iters: int) -> float:
        lr = lr_for_iteration(cfg, epoch, it, iters, epochs, peak)
        if cfg.cycle_momentum:  # SGD + triangular (validated): momentum against the lr
            m = momentum_for_lr(cfg, lr, peak, max_momentum)
            for g in optimizer.param_groups:
                g["momentum"] = m
        return lr
    return schedule


def resolution(cfg: TrainCfg, epoch: int) -> int:
    """Progressive resizing: ``min_res`` until ``start_ramp``, linear to ``max_res`` at
    ``end_ramp``, rounded to a multiple of ``res_multiple`` (32 in ffcv-imagenet: keeps
    the ResNet feature maps whole and limits the number of distinct shapes)."""
    if epoch <= cfg.start_ramp:
        res = cfg.min_res
    elif epoch >= cfg.end_ramp:
        res = cfg.max_res
    else:
        res = float(np.interp(epoch, [cfg.start_ramp, cfg.end_ramp], [cfg.min_res, cfg.max_res]))
    m = cfg.res_multiple
    return max(m, int(round(res / m)) * m)
