"""Crop/flip draws shared by the WebDataset and GPU-decode loaders (``data.transforms``), and the
per-epoch augmentation seed (``EpochPlan.aug_seed``)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ffcv_dp4tl.data import AugSpec, EpochPlan
from ffcv_dp4tl.data.transforms import (CROP_ATTEMPTS, RRC_RATIO, RRC_SCALE, center_crop_box,
                                        crop_draws, random_crop_boxes, sample_uniforms)

HW = np.array([[40, 30], [32, 48], [24, 24], [10, 200], [300, 7], [1, 1], [64, 64]] * 9)


def _reference_box(height, width, u, scale=RRC_SCALE, ratio=RRC_RATIO):
    """torchvision's RandomResizedCrop.get_params, one image at a time, reading the given
    uniforms (area, log-aspect, top, left per attempt) instead of its own generator."""
    area = height * width
    for a in range(CROP_ATTEMPTS):
        ua, ur, ut, ul = u[4 * a:4 * a + 4]
        target = area * (scale[0] + (scale[1] - scale[0]) * ua)
        aspect = math.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * ur)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(ut * (height - h + 1)), int(ul * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("scale", [RRC_SCALE, (0.2, 1.0), (0.9, 1.0)])
def test_vectorised_boxes_follow_the_torchvision_rule(scale):
    u = sample_uniforms(3, np.arange(len(HW)), 4 * CROP_ATTEMPTS)
    got = random_crop_boxes(HW, u, scale, RRC_RATIO)
    want = [_reference_box(int(h), int(w), row, scale) for (h, w), row in zip(HW, u)]
    assert got.tolist() == [list(b) for b in want]
    top, left, h, w = got.T
    assert (top >= 0).all() and (left >= 0).all() and (h >= 1).all() and (w >= 1).all()
    assert (top + h <= HW[:, 0]).all() and (left + w <= HW[:, 1]).all()


def test_no_fit_falls_back_to_the_clamped_centre():
    # 10x200: no crop of >= 8 % of the area with aspect in [3/4, 4/3] fits in 10 rows
    boxes = random_crop_boxes(np.array([[10, 200], [200, 10]]),
                              sample_uniforms(0, np.arange(2), 4 * CROP_ATTEMPTS))
    assert boxes.tolist() == [[0, 93, 10, 13], [93, 0, 13, 10]]  # h or w = 10 / (3/4) = 13


def test_draws_are_per_sample_not_per_batch():
    """A sample's crop and flip depend on (seed, epoch, sample) only: any batching, order or
    worker split of the same samples gives the same draws (the two loaders rely on it)."""
    aug = AugSpec.for_train(views=2)
    idx = np.arange(100, 100 + len(HW))
    full = crop_draws(HW, idx, eseed=9, aug=aug)
    perm = np.random.default_rng(0).permutation(len(HW))[:20]
    part = crop_draws(HW[perm], idx[perm], eseed=9, aug=aug)
    for (b_full, f_full), (b_part, f_part) in zip(full, part):
        assert np.array_equal(b_full[perm], b_part) and np.array_equal(f_full[perm], f_part)
    other = crop_draws(HW, idx, eseed=10, aug=aug)
    assert not np.array_equal(full[0][0], other[0][0])  # another epoch, other crops
    assert not np.array_equal(full[0][0], full[1][0])  # the two views differ


def test_flip_off_keeps_the_crops_and_flips_about_half():
    hw = np.tile([[40, 30]], (400, 1))
    on = crop_draws(hw, np.arange(400), eseed=5, aug=AugSpec.for_train(views=2))
    off = crop_draws(hw, np.arange(400), eseed=5, aug=AugSpec.for_train(views=2, flip=False))
    for (b1, f1), (b2, f2) in zip(on, off):
        assert np.array_equal(b1, b2) and not f2.any()
        assert 0.4 < f1.mean() < 0.6


def test_eval_is_the_centre_crop_without_flip():
    [(boxes, flips)] = crop_draws(HW, np.arange(len(HW)), eseed=1, aug=AugSpec.for_eval())
    assert boxes.tolist() == [[int(x) for x in center_crop_box(int(h), int(w))] for h, w in HW]
    assert boxes[0].tolist() == [(40 - 26) // 2, (30 - 26) // 2, 26, 26]  # int(224/256 * 30)
    assert not flips.any()


def test_uniforms_are_uniform_and_independent():
    u = sample_uniforms(3, np.arange(200_000), 3)
    assert u.min() >= 0 and u.max() < 1
    assert np.allclose(u.mean(axis=0), 0.5, atol=0.005)
    assert np.allclose(np.histogram(u[:, 0], bins=10, range=(0, 1))[0] / len(u), 0.1, atol=0.003)
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.01
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.01  # neighbouring samples


def test_aug_seed_is_a_function_of_seed_and_epoch():
    a = EpochPlan(np.arange(10), shuffle=True, seed=4)
    b = EpochPlan(np.arange(3), shuffle=False, seed=4, rank=1, world_size=2)
    assert a.aug_seed(2) == b.aug_seed(2)  # ranks and masks share it
    assert len({a.aug_seed(e) for e in range(5)}) == 5
    assert a.aug_seed(0) != EpochPlan(np.arange(10), shuffle=True, seed=5).aug_seed(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_normalize_into_gives_forwards_floats_without_allocating_the_output(dtype):
    """Normalize.into (what the WebDataset loader's workers write into shared memory) gives
    exactly forward's values, in the caller's tensor, for NHWC uint8 input (given as its NCHW
    view)."""
    from ffcv_dp4tl.data.transforms import Normalize

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 5, 4, 3), generator=g, dtype=torch.uint8).permute(0, 3, 1, 2)
    norm = Normalize(dtype=dtype)
    out = torch.empty((3, 5, 4, 3), dtype=dtype).permute(0, 3, 1, 2)  # NHWC memory, NCHW shape
    scratch = torch.empty((3, 3, 5, 4))
    got = norm.into(x, out, None if dtype == torch.float32 else scratch)
    assert got is out and got.dtype == dtype
    assert torch.equal(got, norm(x))
    assert not torch.equal(got.float(), torch.zeros_like(got.float()))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_normalize_uses_the_published_imagenet_statistics_in_rgb_order(layout):
    """Every loader, the corruption evaluation, PGD and MoCo's augmentations normalise through
    these constants, and imported torchvision/timm weights expect exactly torchvision's
    ImageNet mean/std in RGB order. The expected values are written out here (not imported from
    the module under test), so a changed or BGR-ordered constant fails."""
    from torchvision.transforms import Normalize as TVNormalize

    from ffcv_dp4tl.data.transforms import Normalize

    g = torch.Generator().manual_seed(1)
    nchw = torch.randint(0, 256, (2, 3, 6, 5), generator=g, dtype=torch.uint8)
    want = TVNormalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])(nchw.float() / 255)
    # an NHWC batch (the WebDataset workers') is given as its NCHW view
    x = nchw if layout == "nchw" else nchw.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert torch.allclose(Normalize()(x), want, atol=1e-5)
    red = torch.zeros(1, 3, 1, 1, dtype=torch.uint8)
    red[0, 0] = 255  # pure red: only the first channel sits above its mean
    assert Normalize()(red).flatten().tolist() == pytest.approx(
        [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], abs=1e-5)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_normalize_gives_the_memory_layout_asked_for_whatever_the_inputs(layout):
    """Normalize's output is NCHW-contiguous unless ``channels_last`` is asked for, then
    channels_last, whether the uint8 batch is NCHW or an NHWC batch's NCHW view (the WebDataset
    workers'): an NHWC batch gave a channels_last result where NCHW was asked for, and oneDNN's
    CPU convolution backward corrupted the heap on it. The values do not depend on the layout."""
    from ffcv_dp4tl.data.transforms import Normalize

    g = torch.Generator().manual_seed(2)
    nchw = torch.randint(0, 256, (2, 3, 5, 4), generator=g, dtype=torch.uint8)
    x = nchw if layout == "nchw" else nchw.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert x.is_contiguous() == (layout == "nchw")
    plain, cl = Normalize()(x), Normalize(channels_last=True)(x)
    assert plain.is_contiguous() and not plain.is_contiguous(memory_format=torch.channels_last)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert plain.shape == cl.shape == (2, 3, 5, 4)
    assert torch.equal(plain, cl) and torch.equal(plain, Normalize()(nchw))


def test_normalize_never_guesses_the_layout_from_the_shape(index_dataset):
    """A 3 px batch is (N, 3, 3, 3) in either layout: the WebDataset loader's was taken for
    NCHW and normalised along its rows (ffcv's was right). Normalize takes NCHW only, and at
    3 px both formats give the same colours."""
    from ffcv_dp4tl.data import AugSpec, make_loader
    from ffcv_dp4tl.data.transforms import Normalize

    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) batch .* got shape \(2, 5, 4, 3\)"):
        Normalize()(torch.zeros(2, 5, 4, 3, dtype=torch.uint8))
    means = {}
    for fmt in ("ffcv", "wds"):
        loader = make_loader(index_dataset.root, "train", fmt=fmt, aug=AugSpec.for_eval(),
                             batch_size=8, resolution=3, num_workers=0)
        b = next(iter(loader))
        assert b.images.shape == (8, 3, 3, 3)
        means[fmt] = b.images.mean(dim=(2, 3))  # flat-colour images: one colour per image
    torch.testing.assert_close(means["ffcv"], means["wds"], atol=0.1, rtol=0)  # (decoders differ a little)
