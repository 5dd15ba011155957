"""Image geometry shared by both loaders, plus normalisation.

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

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
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
    """

    train: bool = False
    crop_scale: tuple[float, float] = RRC_SCALE
    crop_ratio: tuple[float, float] = RRC_RATIO
    flip: bool = True
    views: int = 1
    center_crop_ratio: float = CENTER_CROP_RATIO

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_scale", (float(self.crop_scale[0]), float(self.crop_scale[1])))
        object.__setattr__(self, "crop_ratio", (float(self.crop_ratio[0]), float(self.crop_ratio[1])))

    @classmethod
    def for_train(cls, *, views: int = 1, crop_scale: tuple[float, float] = RRC_SCALE,
                  **kw) -> "AugSpec":
        return cls(train=True, views=views, crop_scale=crop_scale, **kw)

    @classmethod
    def for_eval(cls, center_crop_ratio: float = CENTER_CROP_RATIO) -> "AugSpec":
        return cls(train=False, center_crop_ratio=center_crop_ratio)

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
        return self


def random_crop_box(height: int, width: int, rng: np.random.Generator,
                    scale=RRC_SCALE, ratio=RRC_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized crop; same rule as torchvision/ffcv."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def center_crop_box(height: int, width: int, ratio: float = CENTER_CROP_RATIO):
    c = int(ratio * min(height, width))
    return (height - c) // 2, (width - c) // 2, c, c


def crop_resize(img: Image.Image, box, size: int, flip: bool = False) -> np.ndarray:
    """Crop ``box`` = (top, left, h, w) and resize to ``size``², as an HWC uint8 array."""
    top, left, h, w = box
    out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    arr = np.asarray(out, dtype=np.uint8)
    return arr[:, ::-1] if flip else arr


class Normalize(torch.nn.Module):
    """uint8 NCHW (or NHWC) batch → float, ImageNet-normalised, optionally channels_last."""

    def __init__(self, dtype: torch.dtype = torch.float32, channels_last: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] == 3 and images.shape[1] != 3:
            images = images.permute(0, 3, 1, 2)
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        x = (images.float() - mean) / std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x.to(self.dtype)
