from __future__ import annotations

import pytest

from ffcv_dp4tl.training.recipe import LRCfg, TrainCfg
from ffcv_dp4tl.training.schedule import (lr_at, lr_for_iteration, momentum_for_lr, peak_lr,
                                          resolution)


def test_triangular():
    cfg = LRCfg(schedule="triangular", lr=0.425, lr_peak_epoch=2)
    peak = peak_lr(cfg, 1024)
    assert peak == pytest.approx(1.7)
    assert lr_at(cfg, 0, 16, peak) == 0
    assert lr_at(cfg, 1, 16, peak) == pytest.approx(0.85)
    assert lr_at(cfg, 2, 16, peak) == pytest.approx(1.7)
    assert lr_at(cfg, 9, 16, peak) == pytest.approx(1.7 * 7 / 14)
    assert lr_at(cfg, 16, 16, peak) == 0
    # per iteration: halfway through epoch 0
    assert lr_for_iteration(cfg, 0, 50, 100, 16, peak) == pytest.approx(0.425)


def test_step_cosine_multistep():
    step = LRCfg(schedule="step", lr=1.0, scale_with_batch=False, step_ratio=0.1, step_length=30)
    assert [lr_at(step, e, 90, 1.0) for e in (0, 29.9, 30, 60)] == pytest.approx([1, 1, 0.1, 0.01])
    cos = LRCfg(schedule="cosine", lr=0.01, scale_with_batch=False)
    assert lr_at(cos, 0, 200, 0.01) == pytest.approx(0.01)
    assert lr_at(cos, 100, 200, 0.01) == pytest.approx(0.005)
    assert lr_at(cos, 200, 200, 0.01) == pytest.approx(0.0, abs=1e-12)
    ms = LRCfg(schedule="multistep", milestones=[25, 40], gamma=0.1)
    assert [lr_at(ms, e, 50, 0.1) for e in (0, 24, 25, 40, 49)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.001, 0.001])
    warm = LRCfg(schedule="cosine", warmup_epochs=2)
    assert lr_at(warm, 1, 10, 1.0) == pytest.approx(0.5)
    assert peak_lr(LRCfg(lr=0.1, scale_with_batch=False), 1024) == pytest.approx(0.1)


def test_progressive_resolution():
    cfg = TrainCfg(min_res=160, max_res=192, start_ramp=11, end_ramp=13)
    assert [resolution(cfg, e) for e in (0, 11, 13, 15)] == [160, 160, 192, 192]
    assert resolution(cfg, 12) == 192  # 176 = 5.5 × 32 rounds (half to even) to 6 × 32
    cfg8 = TrainCfg(min_res=160, max_res=192, start_ramp=11, end_ramp=13, res_multiple=8)
    assert resolution(cfg8, 12) == 176
    assert all(resolution(cfg, e) % 32 == 0 for e in range(16))


def test_cycled_momentum_follows_torch_cyclic_lr():
    """lr.cycle_momentum (paper-code): SGD momentum against the triangular lr, what the authors'
    torch CyclicLR(cycle_momentum=True; base 0.8, max 0.9) gives at every iteration."""
    import torch

    cfg = LRCfg(schedule="triangular", lr=0.5, scale_with_batch=False, lr_peak_epoch=2,
                cycle_momentum=True, base_momentum=0.8)
    iters, epochs = 5, 6
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=0.0, max_lr=0.5,
                                              step_size_up=2 * iters,
                                              step_size_down=(epochs - 2) * iters,
                                              cycle_momentum=True)
    seen = []
    for e in range(epochs):
        for it in range(iters):
            lr = lr_for_iteration(cfg, e, it, iters, epochs, 0.5)
            g = opt.param_groups[0]
            assert lr == pytest.approx(g["lr"], abs=1e-9)
            assert momentum_for_lr(cfg, lr, 0.5, 0.9) == pytest.approx(g["momentum"], abs=1e-9)
            seen.append(g["momentum"])
            opt.step()
            sched.step()
    assert min(seen) == pytest.approx(0.8) and max(seen) == pytest.approx(0.9)


def test_cosine_after_warmup_decays_over_the_remaining_epochs():
    """With a linear warmup, the half-cosine starts at the peak when warmup ends and runs
    over the epochs left after it: warmup 2 of 10 epochs gives the peak at epoch 2, the midpoint
    between peak and min_lr at epoch 6 (half of the 8 cosine epochs), min_lr at epoch 10."""
    import math

    cfg = LRCfg(schedule="cosine", warmup_epochs=2, min_lr=0.1, scale_with_batch=False)
    assert lr_at(cfg, 2, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(cfg, 6, 10, 1.0) == pytest.approx(0.55)  # 0.1 + 0.9 / 2
    assert lr_at(cfg, 4, 10, 1.0) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert lr_at(cfg, 10, 10, 1.0) == pytest.approx(0.1)
