"""Image geometry shared by both loaders, plus normalisation.

The WebDataset path reproduces ffcv's decoders (``RandomResizedCropRGBImageDecoder`` and
``CenterCropRGBImageDecoder`` with ratio 224/256) so that a model sees the same kind of input
whichever file format feeds it. Normalisation happens on the target device in torch, after
the uint8 batch was transferred, which moves 4× fewer bytes than shipping floats.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CENTER_CROP_RATIO = 224 / 256
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)


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
