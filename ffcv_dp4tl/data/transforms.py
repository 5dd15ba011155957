"""Image geometry shared by every loader, the crop/flip draws, plus normalisation.

The WebDataset path reproduces ffcv's decoders (``RandomResizedCropRGBImageDecoder`` and
``CenterCropRGBImageDecoder`` with ratio 224/256) so that a model sees the same kind of input
whichever file format feeds it. Normalisation happens on the target device in torch, after
the uint8 batch was transferred, which moves 4× fewer bytes than shipping floats.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

# (defined with the contracts, which recipes read without torch; still importable from here)
from ..contracts.images import (CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN,  # noqa: F401
                                IMAGENET_STD, NORMALIZATIONS)

CENTER_CROP_RATIO = 224 / 256
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class AugSpec:
    """What a loader does to each image, in one object for every loader.

    ``train``: random-resized crop (area ``crop_scale``, aspect ``crop_ratio``) then a horizontal
    flip with probability 1/2 when ``flip``; ``views`` independent such crops per sample
    (``views=2`` for two-view self-supervised recipes: ``Batch.images2``). Eval (``train=False``):
    one center crop of ``center_crop_ratio`` of the short side (224/256), no flip.
    ``normalize``: the channel statistics the float images are normalised with
    (:data:`NORMALIZATIONS`: ImageNet's by default, CIFAR-10's for the authors' CIFAR loader).
    """

    train: bool = False
    crop_scale: tuple[float, float] = RRC_SCALE
    crop_ratio: tuple[float, float] = RRC_RATIO
    flip: bool = True
    views: int = 1
    center_crop_ratio: float = CENTER_CROP_RATIO
    normalize: str = "imagenet"

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_scale", (float(self.crop_scale[0]), float(self.crop_scale[1])))
        object.__setattr__(self, "crop_ratio", (float(self.crop_ratio[0]), float(self.crop_ratio[1])))

    @classmethod
    def for_train(cls, *, views: int = 1, crop_scale: tuple[float, float] = RRC_SCALE,
                  **kw) -> "AugSpec":
        return cls(train=True, views=views, crop_scale=crop_scale, **kw)

    @classmethod
    def for_eval(cls, center_crop_ratio: float = CENTER_CROP_RATIO,
                 normalize: str = "imagenet") -> "AugSpec":
        return cls(train=False, center_crop_ratio=center_crop_ratio, normalize=normalize)

    @classmethod
    def for_crop(cls, crop: str, normalize: str = "imagenet") -> "AugSpec":
        """The eval transform a recipe's crop setting names (``scoring.target_crop`` /
        ``source_crop``, ``finetune.lp_crop`` / ``test_crop``): "center" = the 224/256 centre
        crop, "none" = the whole short side."""
        from ..errors import DataError

        if crop not in ("center", "none"):
            raise DataError(f"crop must be center or none, got {crop!r}")
        return cls.for_eval(1.0 if crop == "none" else CENTER_CROP_RATIO, normalize)

    def validate(self) -> "AugSpec":
        """Raise :class:`~ffcv_dp4tl.errors.DataError` for settings no loader can honour."""
        from ..errors import DataError

        if self.views not in (1, 2) or (self.views == 2 and not self.train):
            raise DataError(f"views must be 1, or 2 for a train loader (got views={self.views}, "
                            f"train={self.train})")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise DataError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise DataError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        if not 0.0 < self.center_crop_ratio <= 1.0:
            raise DataError(f"center_crop_ratio must be in (0, 1], got {self.center_crop_ratio}")
        if self.normalize not in NORMALIZATIONS:
            raise DataError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got "
                            f"{self.normalize!r}")
        return self


# ---------------------------------------------------------------------------------------------
# Crop and flip draws: one rule for every loader that draws its own (WebDataset, GPU decode)
# ---------------------------------------------------------------------------------------------
#: random-resized-crop attempts before the centre fallback (torchvision's and ffcv's rule)
CROP_ATTEMPTS = 10
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _splitmix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX[1]
    z = (z ^ (z >> np.uint64(27))) * _MIX[2]
    return z ^ (z >> np.uint64(31))


def sample_uniforms(eseed: int, samples: np.ndarray, count: int) -> np.ndarray:
    """(len(samples), count) float64 uniforms in [0, 1), a pure function of (eseed, sample, k).

    Counter-based (splitmix64 of the triple), so a sample's draws do not depend on which batch,
    worker or thread handles it, and a whole batch is drawn in a few numpy operations."""
    s = np.asarray(samples, dtype=np.int64).astype(np.uint64)[:, None]
    k = np.arange(count, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        base = _splitmix(np.full(1, np.uint64(int(eseed) % (1 << 64))) * _MIX[0] + _MIX[1])
        z = _splitmix(_splitmix(base + s * _MIX[0]) + (k + np.uint64(1)) * _MIX[2])
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def center_crop_box(height, width, ratio: float = CENTER_CROP_RATIO):
    """(top, left, h, w) of the centre square of ``ratio`` × the short side (ints or arrays)."""
    c = np.floor(ratio * np.minimum(height, width)).astype(np.int64)
    return (height - c) // 2, (width - c) // 2, c, c


def random_crop_boxes(hw: np.ndarray, u: np.ndarray, scale=RRC_SCALE, ratio=RRC_RATIO
                      ) -> np.ndarray:
    """(B, 4) random-resized crops (top, left, h, w) of images of sizes ``hw`` (B, 2), from
    ``u`` (B, 4 * CROP_ATTEMPTS) uniforms: torchvision's/ffcv's rule, vectorised. Attempt ``a``
    draws an area in ``scale`` × the image area and a log-aspect in log ``ratio``; the first
    attempt that fits is placed uniformly; if none fits, the image clamped to ``ratio``, centred."""
    height, width = hw[:, 0].astype(np.float64), hw[:, 1].astype(np.float64)
    u = u.reshape(len(hw), CROP_ATTEMPTS, 4)
    area = (height * width)[:, None] * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = np.exp(lo + (hi - lo) * u[..., 1])
    w = np.round(np.sqrt(area * aspect))
    h = np.round(np.sqrt(area / aspect))
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    rows, first = np.arange(len(hw)), np.argmax(fits, axis=1)
    ok = fits[rows, first]
    h, w = h[rows, first], w[rows, first]
    top = np.floor(u[rows, first, 2] * (height - h + 1))
    left = np.floor(u[rows, first, 3] * (width - w + 1))
    in_ratio = width / height
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fw = np.where(wide, np.round(height * max(ratio)), width)
    fh = np.where(narrow, np.round(width / min(ratio)), height)
    boxes = np.stack([np.where(ok, top, (height - fh) // 2), np.where(ok, left, (width - fw) // 2),
                      np.where(ok, h, fh), np.where(ok, w, fw)], axis=1)
    return boxes.astype(np.int64)


def crop_draws(hw: np.ndarray, indices: np.ndarray, *, eseed: int, aug: AugSpec
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per view: (boxes (B, 4) = top, left, h, w; flips (B,) bool) for samples ``indices`` of
    sizes ``hw`` (B, 2). ``eseed`` is the epoch's :meth:`EpochPlan.aug_seed`.

    Train: view ``v`` of sample ``i`` reads ``4 * CROP_ATTEMPTS + 1`` uniforms of
    :func:`sample_uniforms` (the crop attempts, then the flip coin, drawn even when flips are
    off so crops do not depend on ``flip``). Eval: the centre crop, no flip. The one rule of
    every loader that draws its own crops (WebDataset workers, GPU decode): for the same
    (seed, epoch, sample) they crop the same box, whatever the batching or thread."""
    hw = np.asarray(hw, dtype=np.int64).reshape(-1, 2)
    n = len(hw)
    if not aug.train:
        box = center_crop_box(hw[:, 0], hw[:, 1], aug.center_crop_ratio)
        return [(np.stack(np.broadcast_arrays(*box), axis=1).astype(np.int64), np.zeros(n, bool))]
    per_view = 4 * CROP_ATTEMPTS + 1
    u = sample_uniforms(eseed, np.asarray(indices), per_view * aug.views)
    out = []
    for v in range(aug.views):
        uv = u[:, v * per_view:(v + 1) * per_view]
        boxes = random_crop_boxes(hw, uv[:, :-1], aug.crop_scale, aug.crop_ratio)
        out.append((boxes, (uv[:, -1] < 0.5) & aug.flip))
    return out


def crop_resize(img: Image.Image, box, size: int, flip: bool = False) -> np.ndarray:
    """Crop ``box`` = (top, left, h, w) and resize to ``size``², as an HWC uint8 array."""
    top, left, h, w = box
    out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    arr = np.asarray(out, dtype=np.uint8)
    return arr[:, ::-1] if flip else arr


def _check_nchw(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Normalize takes an (N, 3, H, W) batch (an NHWC one as its "
                         f"permute(0, 3, 1, 2) view), got shape {tuple(images.shape)}")


class Normalize(torch.nn.Module):
    """uint8 NCHW batch → float, normalised with ``stats`` (:data:`NORMALIZATIONS`, ImageNet's
    by default), optionally channels_last. An NHWC batch is given as its NCHW view
    (``x.permute(0, 3, 1, 2)``): the layout is never guessed from the shape, which a 3 px
    batch, (N, 3, 3, 3), cannot tell."""

    def __init__(self, dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 stats: str = "imagenet"):
        super().__init__()
        mean, std = NORMALIZATIONS[stats]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _check_nchw(images)
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        # the layout asked for, whatever the input's (made on the uint8 batch, a quarter of the
        # bytes): an NHWC batch's NCHW view gave a channels_last result where NCHW was asked
        # for, and oneDNN's CPU convolution backward corrupted the heap on it (width-8 ResNets,
        # odd batches: a crash, or worse; an audit)
        images = images.contiguous(memory_format=torch.channels_last if self.channels_last
                                   else torch.contiguous_format)
        x = (images.float() - mean) / std
        return x.to(self.dtype)

    def into(self, images: torch.Tensor, out: torch.Tensor,
             scratch: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`forward`'s values written into ``out`` (NCHW-shaped, of ``self.dtype``, any
        memory layout: e.g. a view of a shared-memory batch), allocating nothing when ``out`` is
        float32 or a float32 ``scratch`` of the same shape is given. The same subtraction and
        division as :meth:`forward`, in place, so both give the same floats (the WebDataset
        loader's workers normalise into the batch they send)."""
        _check_nchw(images)
        f = out if out.dtype == torch.float32 else (
            scratch if scratch is not None else torch.empty(out.shape, dtype=torch.float32))
        f.copy_(images)
        f.sub_(self.mean.to(f.device)).div_(self.std.to(f.device))
        if f is not out:
            out.copy_(f)
        return out
