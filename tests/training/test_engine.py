"""The shared training engine on its own: objectives as objects, one epoch over any loader."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ffcv_dp4tl.training.engine import CrossEntropyObjective, evaluate, train_one_epoch
from ffcv_dp4tl.training.distributed import DistContext
from ffcv_dp4tl.training.finetune import FeatureLoader


def _blobs(n: int = 96, classes: int = 3, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centers = torch.randn(classes, dim, generator=g) * 4
    return centers[y] + torch.randn(n, dim, generator=g), y


class Spy:
    def __init__(self):
        self.batches: list[tuple[int, int]] = []

    def on_batch(self, epoch, batch):
        self.batches.append((epoch, len(batch.labels)))


def test_one_epoch_trains_and_reports_the_epoch_sums():
    x, y = _blobs()
    torch.manual_seed(0)
    head = nn.Linear(8, 3)
    opt = torch.optim.SGD(head.parameters(), lr=0.0)
    lrs = []

    def schedule(epoch, it, iters):
        lrs.append((epoch, it, iters))
        return 0.1

    loader = FeatureLoader(x, y, 32, shuffle=True, generator=torch.Generator().manual_seed(0))
    spy = Spy()
    ctx = DistContext()
    before = evaluate(head, FeatureLoader(x, y, 50), ctx, None, flip_tta=False)
    rows = [train_one_epoch(head, loader, CrossEntropyObjective(), opt, None, schedule, epoch=e,
                            callbacks=[spy]) for e in range(5)]
    after = evaluate(head, FeatureLoader(x, y, 50), ctx, None, flip_tta=False)
    assert lrs[:3] == [(0, 0, 3), (0, 1, 3), (0, 2, 3)] and len(lrs) == 15
    assert opt.param_groups[0]["lr"] == 0.1 and rows[-1]["lr"] == 0.1
    assert spy.batches[:3] == [(0, 32)] * 3 and len(spy.batches) == 15
    assert all(r["samples"] == 96 and r["bad_inputs"] == 0 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] / 2, rows
    assert after["count"] == before["count"] == 96
    assert after["top1"] >= 0.95 > before["top1"] and after["loss"] < before["loss"]


def test_steps_caps_the_updates_and_drains_the_loader():
    x, y = _blobs()
    head = nn.Linear(8, 3)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    loader = FeatureLoader(x, y, 16)
    seen = []

    class Counting:
        def __iter__(self):
            for b in loader:
                seen.append(len(b.labels))
                yield b

        def __len__(self):
            return len(loader)

    spy = Spy()
    row = train_one_epoch(head, Counting(), CrossEntropyObjective(), opt, None,
                          lambda e, i, n: 0.1, steps=2, callbacks=[spy])
    assert row["samples"] == 32 and len(spy.batches) == 2  # two steps...
    assert sum(seen) == 96  # ...but every batch was read (ranks stay in step)


def test_cross_entropy_objective_matches_the_loss_and_counts_hits():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    batch = type("B", (), {"images": torch.randn(10, 4), "labels": torch.randint(0, 3, (10,))})()
    loss, correct, n = CrossEntropyObjective(label_smoothing=0.1)(model, batch)
    out = model(batch.images)
    torch.testing.assert_close(loss, nn.functional.cross_entropy(out, batch.labels, label_smoothing=0.1))
    assert int(correct) == int((out.argmax(1) == batch.labels).sum()) and n == 10


def test_nan_loss_keeps_the_host_out_of_the_step():
    """A NaN batch still completes the epoch (no per-step checks); the row shows NaN and the
    bad-input counter, for the trainer to report once."""
    x, y = _blobs(n=32)
    x[0, 0] = float("nan")
    head = nn.Linear(8, 3)
    row = train_one_epoch(head, FeatureLoader(x, y, 16), CrossEntropyObjective(),
                          torch.optim.SGD(head.parameters(), lr=0.1), None, lambda e, i, n: 0.1)
    assert row["bad_inputs"] == 1 and row["samples"] == 32
    assert math.isnan(row["loss"])


def test_cross_entropy_objective_trains_on_the_augmented_batch():
    """train.color_jitter: the loss is computed on the photometrically jittered images."""
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.ssl_augment import color_jitter_augment

    assert color_jitter_augment(load_recipe("resnet34_tiny_cpu").train) is None
    aug = color_jitter_augment(load_recipe("resnet34_tiny_cpu",
                                           ["train.color_jitter=[0.5,0.5,0.0,0.0]",
                                            "train.p_color_jitter=1.0"]).train)
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x)
            return x.flatten(1)[:, :3]

    torch.manual_seed(0)
    batch = type("B", (), {"images": torch.randn(8, 3, 4, 4).clamp(-2, 2),
                           "labels": torch.randint(0, 3, (8,))})()
    CrossEntropyObjective(augment=aug)(Spy(), batch)
    assert seen[0].shape == batch.images.shape and not torch.allclose(seen[0], batch.images)
    CrossEntropyObjective()(Spy(), batch)
    assert torch.equal(seen[1], batch.images)


def test_white_balance_scales_each_images_channels_by_a_bounded_gain():
    """train.white_balance = w: every image's R, G, B multiplied by its own gain in
    [exp(-w), exp(w)] (pixel space, clipped to [0, 1]); other photometric knobs stay off, and
    0 (the default) builds no augmentation and stays out of the recipe's fingerprint."""
    from ffcv_dp4tl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from ffcv_dp4tl.errors import DP4TLError
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.ssl_augment import color_jitter_augment

    base = load_recipe("resnet34_tiny_cpu")
    assert load_recipe("resnet34_tiny_cpu", ["train.white_balance=0"]).fingerprint() == base.fingerprint()
    assert color_jitter_augment(base.train) is None
    r = load_recipe("resnet34_tiny_cpu", ["train.white_balance=0.2"])
    assert r.fingerprint() != base.fingerprint()
    aug = color_jitter_augment(r.train)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pix = torch.full((64, 3, 4, 4), 0.5 * 255)  # mid grey: no clipping at gains <= 2
    torch.manual_seed(0)
    out = aug((pix - mean) / std) * std + mean
    gain = out[:, :, 0, 0] / (0.5 * 255)
    assert torch.allclose(out, gain[:, :, None, None] * 0.5 * 255, atol=1e-3)  # one gain per channel
    assert gain.min() >= math.exp(-0.2) - 1e-4 and gain.max() <= math.exp(0.2) + 1e-4
    assert (gain[:, 0] - gain[:, 2]).abs().max() > 0.1  # channels drawn independently
    with pytest.raises(DP4TLError, match="train.white_balance"):
        load_recipe("resnet34_tiny_cpu", ["train.white_balance=-0.1"])


def test_flip_tta_averages_the_logits_of_the_image_and_its_horizontal_mirror():
    """``eval.flip_tta`` is ffcv-imagenet's TTA: logits of each image and of its left-right
    mirror (width axis), averaged; top-1 and loss of evaluate() equal that computed by hand
    for a model that tells left from right and top from bottom (a linear map of the pixels),
    and differ from what a vertical flip or no TTA would give."""
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 6, 5))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 3, 4, 6, generator=g)  # N, C, H, W: not square, H != W
    y = torch.randint(0, 5, (40,), generator=g)
    got = evaluate(model, FeatureLoader(x, y, 16), DistContext(), None, flip_tta=True)

    def by_hand(flipped):
        with torch.no_grad():
            logits = (model(x) + model(flipped)) / 2
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())

    mirror = x[:, :, :, torch.arange(5, -1, -1)]  # column j <- column W-1-j
    loss, top1 = by_hand(mirror)
    assert got["count"] == 40
    assert got["loss"] == pytest.approx(loss, rel=1e-5) and got["top1"] == pytest.approx(top1)
    upside_down = by_hand(x[:, :, torch.arange(3, -1, -1), :])
    plain = evaluate(model, FeatureLoader(x, y, 16), DistContext(), None, flip_tta=False)
    assert abs(upside_down[0] - loss) > 1e-3 and abs(plain["loss"] - loss) > 1e-3
    # a script's call needs no DistContext: one process, the model's device (Python API review)
    assert evaluate(model, FeatureLoader(x, y, 16)) == got
