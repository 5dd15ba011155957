"""CIFAR-10-C style corruptions (Tab. A4): published strengths, determinism, the loader wrapper."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from ffcv_dp4tl.data.corruptions import (CORRUPTIONS, PAPER_TAB_A4, CorruptedLoader, CorruptionOp,
                                         _gaussian, _hsv2rgb, _local_shuffle, _rgb2hsv,
                                         glass_blur, parse_corruptions)
from ffcv_dp4tl.errors import DataError

#: corruptions that draw random numbers (the others are deterministic image filters)
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur",
          "motion_blur", "fog", "elastic_transform"}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Eight 32 px synth target images (objects on textured backgrounds, like CIFAR)."""
    from beton_builders.synth import parse_synth, synth_all

    split = synth_all(parse_synth("synth:tiny"))["targets/warm"].splits["test"]
    return np.stack([np.asarray(split[i].ref()) for i in range(8)])


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_is_deterministic_and_grows_with_severity(name, images):
    idx = np.arange(len(images))
    outs = [CorruptionOp(name, s)(images, idx) for s in range(1, 6)]
    for out in outs:
        assert out.shape == images.shape and out.dtype == np.uint8
    d = [_dist(o, images) for o in outs]
    assert d[0] > 0.5, f"{name} severity 1 leaves the images nearly unchanged: {d}"
    if CORRUPTIONS[name].monotone:  # (elastic/glass/saturate's published levels are not)
        assert all(a < b for a, b in zip(d, d[1:])), f"{name} not monotone in severity: {d}"
    again = CorruptionOp(name, 3)(images, idx)
    np.testing.assert_array_equal(again, outs[2])
    # a sample's corruption does not depend on the batch it is in
    alone = np.concatenate([CorruptionOp(name, 3)(images[i:i + 1], idx[i:i + 1])
                            for i in (5, 2)])
    np.testing.assert_array_equal(alone, outs[2][[5, 2]])
    other_seed = CorruptionOp(name, 3, seed=1)(images, idx)
    assert (not np.array_equal(other_seed, outs[2])) == (name in RANDOM)


def test_noise_strengths_are_the_published_ones():
    grey = np.full((1, 64, 64, 3), 128, np.uint8)
    for sev, sigma in enumerate((0.04, 0.06, .08, .09, .10), start=1):
        out = CorruptionOp("gaussian_noise", sev)(grey, [0]).astype(np.float64)
        assert out.std() / 255 == pytest.approx(sigma, rel=0.05)
    for sev, amount in enumerate((.01, .02, .03, .05, .07), start=1):
        out = CorruptionOp("impulse_noise", sev)(grey, [0])
        assert np.isin(out, (0, 255)).mean() == pytest.approx(amount, rel=0.2)
    out = CorruptionOp("shot_noise", 5)(grey, [0]).astype(np.float64) / 255  # Poisson(x·50)/50
    assert out.mean() == pytest.approx(128 / 255, abs=0.01)
    assert out.std() == pytest.approx(np.sqrt(128 / 255 / 50), rel=0.05)


def test_filters_do_what_their_definition_says():
    flat = np.full((1, 32, 32, 3), 100, np.uint8)
    for name in ("contrast", "defocus_blur", "gaussian_blur", "pixelate", "zoom_blur"):
        assert np.abs(CorruptionOp(name, 5)(flat, [0]).astype(int) - 100).max() <= 1, name
    grey = np.full((1, 8, 8, 3), 102, np.uint8)  # V = 0.4, S = 0: brightness adds c to V
    out = CorruptionOp("brightness", 5)(grey, [0])
    assert np.all(out == np.uint8((102 / 255 + 0.3) * 255))
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8)[None, :, None], (32, 1, 3))[None]
    out = CorruptionOp("contrast", 5)(ramp, [0]).astype(np.float64)  # (x - mean)·0.15 + mean
    assert out.std() == pytest.approx(ramp.std() * 0.15, rel=0.05)
    px = CorruptionOp("pixelate", 5)(ramp, [0])  # 32 → 20 → 32 px: fewer distinct columns
    assert len(np.unique(px[0, 0, :, 0])) <= 20 < len(np.unique(ramp[0, 0, :, 0]))


@pytest.mark.parametrize("side", [1, 2])
def test_every_corruption_takes_the_smallest_images(side):
    """--corrupt-resolution 1 (or --resolution 1) is accepted: pixelate's int(1 * 0.95) = 0 px
    was a PIL traceback. Every corruption keeps the shape at sides 1 and 2."""
    img = np.full((2, side, side, 3), 100, np.uint8)
    for name in CORRUPTIONS:
        for severity in (1, 5):
            out = CorruptionOp(name, severity)(img, [0, 1])
            assert out.shape == img.shape and out.dtype == np.uint8, (name, severity)


def test_hsv_conversion_matches_colorsys():
    rgb = np.random.default_rng(0).random((50, 3))
    hsv = _rgb2hsv(rgb)
    ref = np.array([colorsys.rgb_to_hsv(*c) for c in rgb])
    np.testing.assert_allclose(hsv, ref, atol=1e-12)
    np.testing.assert_allclose(_hsv2rgb(hsv), rgb, atol=1e-12)


def test_parse_corruptions():
    assert parse_corruptions(["gaussian_noise:3"]) == [("gaussian_noise", 3)]
    assert parse_corruptions(["jpeg:1,defocus-blur:2"]) == [("jpeg_compression", 1),
                                                            ("defocus_blur", 2)]
    paper = parse_corruptions(["paper"])
    assert {n for n, _ in paper} == set(PAPER_TAB_A4) and len(paper) == 25
    assert len(parse_corruptions(["all", "fog:2"])) == 5 * len(CORRUPTIONS)
    for bad, word in (("fog:6", "severity"), ("fog:x", "severity"), ("rain", "unknown"),
                      ("frost", "external")):
        with pytest.raises(DataError, match=word):
            parse_corruptions([bad])


def test_normalisation_round_trip_is_exact():
    from ffcv_dp4tl.data.transforms import Normalize

    levels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    seen = []

    class Op:
        def __call__(self, imgs, idx):
            seen.append(imgs.copy())
            return imgs

    class Fake:
        views = 1

        def __iter__(self):
            from ffcv_dp4tl.data.sampling import Batch
            yield Batch(Normalize()(levels.contiguous()), torch.zeros(1), torch.zeros(1, dtype=torch.long))

        def __len__(self):
            return 1

    batch = next(iter(CorruptedLoader(Fake(), Op())))
    np.testing.assert_array_equal(seen[0][0].transpose(2, 0, 1), levels[0].numpy())
    torch.testing.assert_close(batch.images, Normalize()(levels.contiguous()), rtol=0, atol=1e-6)


def test_corrupted_loader_corrupts_each_decoded_sample(index_dataset):
    from ffcv_dp4tl.data import AugSpec, make_loader
    from ffcv_dp4tl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    kw = dict(fmt="wds", aug=AugSpec.for_eval(), batch_size=16, resolution=32, num_workers=0)
    clean = list(make_loader(index_dataset.root, "train", **kw))
    op = CorruptionOp("gaussian_noise", 2, seed=7)
    corrupt = CorruptedLoader(make_loader(index_dataset.root, "train", **kw), op)
    assert len(corrupt) == len(clean)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    for a, b in zip(clean, corrupt):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.labels, b.labels)
        u8 = (a.images * std + mean).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        want = torch.from_numpy(op(u8, a.indices.numpy())).permute(0, 3, 1, 2).float()
        torch.testing.assert_close(b.images, (want - mean) / std, rtol=0, atol=1e-5)
        assert not torch.allclose(a.images, b.images)
        # the clean batch's memory layout (NCHW here), so both passes run the same convolutions
        assert a.images.is_contiguous() and b.images.is_contiguous()


def _published_shuffle(x: np.ndarray, offsets: np.ndarray, delta: int) -> np.ndarray:
    """make_cifar_c.py's glass-blur loop, transcribed (its 32 replaced by the image's size): the
    tuple assignment on numpy row views, with ``dx, dy = offsets[...]``."""
    x = x.copy()
    h, w = x.shape[:2]
    for i in range(offsets.shape[0]):
        for a, hh in enumerate(range(h - delta, delta, -1)):
            for b, ww in enumerate(range(w - delta, delta, -1)):
                dx, dy = offsets[i, a, b]
                h_prime, w_prime = hh + dy, ww + dx
                # swap
                x[hh, ww], x[h_prime, w_prime] = x[h_prime, w_prime], x[hh, ww]
    return x


def test_glass_blur_moves_pixels_as_the_published_generator_does():
    """The published "swap" copies the neighbour's pixel over (numpy views: the second write
    puts back what the first wrote), so pixels are duplicated, not permuted; CIFAR-10-C was made
    that way and glass blur here must do the same, for its loop and for the whole corruption."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    for delta, its in ((1, 1), (1, 2), (2, 2)):
        offsets = rng.integers(-delta, delta, size=(its, 9 - 2 * delta, 9 - 2 * delta, 2))
        mine = x.copy()
        _local_shuffle(mine, offsets, delta)
        want = _published_shuffle(x, offsets, delta)
        np.testing.assert_array_equal(mine, want)
        pixels = sorted(map(tuple, x.reshape(-1, 3)))
        assert sorted(map(tuple, want.reshape(-1, 3))) != pixels  # (a copy, not a permutation)
    img = rng.random((32, 32, 3))
    for sev, (sigma, delta, its) in enumerate(CORRUPTIONS["glass_blur"].params, start=1):
        got = glass_blur(img, (sigma, delta, its), np.random.default_rng(sev))
        ref = np.uint8(_gaussian(img, sigma) * 255)
        offsets = np.random.default_rng(sev).integers(-delta, delta, size=(its, 30, 30, 2))
        want = _gaussian(_published_shuffle(ref, offsets, delta) / 255.0, sigma)
        np.testing.assert_array_equal(got, want)
