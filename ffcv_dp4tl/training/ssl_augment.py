"""MoCo v2's photometric augmentations, applied to a whole batch on the loader's device.

The loaders already produce two independent random-resized crops + flips per sample
(``make_loader(views=2, crop_scale=...)``); colour jitter, grayscale and Gaussian blur run here,
batched in torch, so they cost the same with the FFCV and the WebDataset loader and run on the
GPU when training does (per-sample PIL ops in CPU workers would make the loader, already the
bottleneck, several times slower).

Differences from torchvision's per-image ``ColorJitter`` (documented because they change the
distribution slightly): the four jitters are applied in a fixed order (brightness, contrast,
saturation, hue) instead of a random one, and hue is a rotation of the chroma plane in YIQ space
rather than an HSV hue shift. Both are the usual batched approximations.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

_GRAY = (0.299, 0.587, 0.114)


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(n, 1, 1, 1, device=like.device).uniform_(lo, hi)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate each image's chroma by ``angle`` (radians, shape N×1×1×1) in YIQ space."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                           [0.211, -0.523, 0.312]], device=x.device, dtype=x.dtype)
    to_rgb = torch.linalg.inv(to_yiq)
    yiq = torch.einsum("ij,njhw->nihw", to_yiq, x)
    c, s = torch.cos(angle[:, 0]), torch.sin(angle[:, 0])  # N×1×1
    i, q = yiq[:, 1:2], yiq[:, 2:3]
    yiq = torch.cat([yiq[:, :1], c[:, None] * i - s[:, None] * q, s[:, None] * i + c[:, None] * q], 1)
    return torch.einsum("ij,njhw->nihw", to_rgb, yiq)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image ``sigma`` (shape N), reflect padding."""
    n, ch, h, w = x.shape
    r = kernel // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # (N·C) × kernel
    y = x.reshape(1, n * ch, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * ch)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k[:, None, :, None], groups=n * ch)
    return y.reshape(n, ch, h, w)


class MoCoAugment(nn.Module):
    """Colour jitter (p), grayscale (p), Gaussian blur (p) on ImageNet-normalised NCHW batches.

    Input and output are normalised like the loaders' output; randomness comes from torch's
    global RNG on the batch's device (the trainer reseeds it every epoch).
    """

    def __init__(self, jitter=(0.4, 0.4, 0.4, 0.1), p_jitter: float = 0.8, p_gray: float = 0.2,
                 p_blur: float = 0.5, blur_sigma=(0.1, 2.0), blur_kernel_frac: float = 0.1):
        super().__init__()
        self.jitter = tuple(float(v) for v in jitter)
        self.p_jitter, self.p_gray, self.p_blur = p_jitter, p_gray, p_blur
        self.blur_sigma = tuple(float(v) for v in blur_sigma)
        self.blur_kernel_frac = blur_kernel_frac
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) / 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) / 255, persistent=False)

    def kernel_size(self, size: int) -> int:
        """~10 % of the image side, odd, at least 3 (MoCo v2: 23 px at 224 px)."""
        k = max(3, int(self.blur_kernel_frac * size))
        return k if k % 2 else k + 1

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        channels_last = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous()
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        x = (x.float() * std + mean).clamp_(0, 1)
        n = x.shape[0]
        b, c, s, h = self.jitter
        y = x
        if b > 0:
            y = (y * _uniform(n, max(0.0, 1 - b), 1 + b, x)).clamp(0, 1)
        if c > 0:
            m = _gray(y).mean((2, 3), keepdim=True)
            y = ((y - m) * _uniform(n, max(0.0, 1 - c), 1 + c, x) + m).clamp(0, 1)
        if s > 0:
            g = _gray(y)
            y = ((y - g) * _uniform(n, max(0.0, 1 - s), 1 + s, x) + g).clamp(0, 1)
        if h > 0:
            y = _hue_rotate(y, _uniform(n, -h, h, x) * 2 * math.pi).clamp(0, 1)
        x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < self.p_jitter, y, x)
        x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < self.p_gray,
                        _gray(x).expand_as(x), x)
        if self.p_blur > 0 and x.shape[-1] >= 8:
            sigma = torch.empty(n, device=x.device).uniform_(*self.blur_sigma)
            blurred = gaussian_blur(x, sigma, self.kernel_size(min(x.shape[-2:])))
            x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < self.p_blur, blurred, x)
        x = ((x - mean) / std).to(dtype)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
