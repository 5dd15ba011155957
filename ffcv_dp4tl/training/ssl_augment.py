"""MoCo v2's photometric augmentations, applied to a whole batch on the loader's device.

The loaders already produce two independent random-resized crops + flips per sample
(``make_loader(aug=AugSpec.for_train(views=2, crop_scale=...))``); colour jitter, grayscale and Gaussian blur run here,
batched in torch, so they cost the same with the FFCV and the WebDataset loader and run on the
GPU when training does (per-sample PIL ops in CPU workers would make the loader, already the
bottleneck, several times slower).

Differences from torchvision's per-image ``ColorJitter`` (documented because they change the
distribution slightly): the four jitters are applied in a fixed order (brightness, contrast,
saturation, hue) instead of a random one, and hue is a rotation of the chroma plane in YIQ space
rather than an HSV hue shift. Both are the usual batched approximations.

No host synchronisation per batch: random parameters are drawn on the batch's device, the
constant matrices (luma weights, RGB↔YIQ and its inverse, inverted once at construction) are
module buffers, and the per-image hue rotation is composed with them on the device — so on a
GPU the augmentations only enqueue kernels and never stall the training step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

_GRAY = (0.299, 0.587, 0.114)
#: RGB → YIQ (NTSC); its inverse is computed once, in float64, by :func:`_yiq_matrices`
_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _yiq_matrices() -> tuple[torch.Tensor, torch.Tensor]:
    """(RGB→YIQ, YIQ→RGB) as float32 3×3 CPU tensors; the inverse is taken once here, on the
    host, never per batch (``linalg.inv`` on a CUDA tensor checks its result on the host)."""
    to_yiq = torch.tensor(_TO_YIQ, dtype=torch.float64)
    return to_yiq.float(), torch.linalg.inv(to_yiq).float()


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(n, 1, 1, 1, device=like.device).uniform_(lo, hi)


def _gray(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Luma of an NCHW batch; ``w`` = the 1×3×1×1 weights (a buffer already on x's device)."""
    return (x * w.to(x.dtype)).sum(1, keepdim=True)


def _hue_rotate(x: torch.Tensor, angle: torch.Tensor, to_yiq: torch.Tensor,
                to_rgb: torch.Tensor) -> torch.Tensor:
    """Rotate each image's chroma by ``angle`` (radians, shape N×1×1×1) in YIQ space.

    The three linear maps (RGB→YIQ, rotation of the I/Q plane, YIQ→RGB) are composed into one
    3×3 matrix per image and applied in a single pass; everything stays on x's device."""
    c, s = torch.cos(angle.flatten()), torch.sin(angle.flatten())  # N
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    rot = torch.stack([one, zero, zero, zero, c, -s, zero, s, c], 1).view(-1, 3, 3)
    m = (to_rgb.to(x.dtype) @ rot.to(x.dtype) @ to_yiq.to(x.dtype))  # N×3×3
    return torch.einsum("nij,njhw->nihw", m, x)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur with a per-image ``sigma`` (shape N), reflect padding."""
    n, ch, h, w = x.shape
    r = kernel // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k = k / k.sum(1, keepdim=True)
    k = k[:, None].expand(n, ch, kernel).reshape(n * ch, kernel)  # (N·C) × kernel
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
                 p_blur: float = 0.5, blur_sigma=(0.1, 2.0), blur_kernel_frac: float = 0.1,
                 white_balance: float = 0.0):
        super().__init__()
        #: every image's R, G, B scaled by exp(U(-wb, wb)) each, before the rest (0 = off, and
        #: no draws: the other augmentations' random stream is as before)
        self.white_balance = float(white_balance)
        self.jitter = tuple(float(v) for v in jitter)
        self.p_jitter, self.p_gray, self.p_blur = p_jitter, p_gray, p_blur
        self.blur_sigma = tuple(float(v) for v in blur_sigma)
        self.blur_kernel_frac = blur_kernel_frac
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) / 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) / 255, persistent=False)
        # Constant matrices live in buffers, so moving the module to the GPU moves them once:
        # building them per batch from Python numbers would be a blocking host→device copy.
        to_yiq, to_rgb = _yiq_matrices()
        self.register_buffer("gray_weights", torch.tensor(_GRAY).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("to_yiq", to_yiq, persistent=False)
        self.register_buffer("to_rgb", to_rgb, persistent=False)

    def kernel_size(self, size: int) -> int:
        """~10 % of the image side, odd, at least 3 (MoCo v2: 23 px at 224 px)."""
        k = max(3, int(self.blur_kernel_frac * size))
        return k if k % 2 else k + 1

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Augment ``x``. No host synchronisation: every random parameter is drawn on x's device
        by torch's RNG (same draws, in the same order, as before), the constant matrices are
        buffers, and the blur kernel size depends only on the (static) image shape. Runs in
        float32 also inside an autocast region (the trainer's step is one), so bf16 training
        does not change the augmentations' numerics."""
        if self.gray_weights.device != x.device:
            self.to(x.device)  # once: later batches find the buffers already there
        with torch.autocast(x.device.type, enabled=False):
            return self._augment(x)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        channels_last = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous()
        mean, std, gw = self.mean, self.std, self.gray_weights
        x = (x.float() * std + mean).clamp_(0, 1)
        n = x.shape[0]
        if self.white_balance > 0:
            wb = self.white_balance
            x = (x * torch.exp(torch.empty(n, 3, 1, 1, device=x.device).uniform_(-wb, wb))).clamp_(0, 1)
        b, c, s, h = self.jitter
        y = x
        if b > 0:
            y = (y * _uniform(n, max(0.0, 1 - b), 1 + b, x)).clamp(0, 1)
        if c > 0:
            m = _gray(y, gw).mean((2, 3), keepdim=True)
            y = ((y - m) * _uniform(n, max(0.0, 1 - c), 1 + c, x) + m).clamp(0, 1)
        if s > 0:
            g = _gray(y, gw)
            y = ((y - g) * _uniform(n, max(0.0, 1 - s), 1 + s, x) + g).clamp(0, 1)
        if h > 0:
            angle = _uniform(n, -h, h, x) * 2 * math.pi
            y = _hue_rotate(y, angle, self.to_yiq, self.to_rgb).clamp(0, 1)
        x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < self.p_jitter, y, x)
        x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < self.p_gray,
                        _gray(x, gw).expand_as(x), x)
        if self.p_blur > 0 and x.shape[-1] >= 8:
            sigma = torch.empty(n, device=x.device).uniform_(*self.blur_sigma)
            blurred = gaussian_blur(x, sigma, self.kernel_size(min(x.shape[-2:])))
            x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < self.p_blur, blurred, x)
        x = ((x - mean) / std).to(dtype)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def color_jitter_augment(train_cfg) -> MoCoAugment | None:
    """The supervised recipes' photometric jitter (``train.color_jitter``, with probability
    ``train.p_color_jitter``; no grayscale, no blur) and white-balance gains
    (``train.white_balance``, every image), or None when the recipe has neither."""
    jitter = list(getattr(train_cfg, "color_jitter", []) or [])
    wb = float(getattr(train_cfg, "white_balance", 0.0) or 0.0)
    if not jitter and not wb:
        return None
    return MoCoAugment(jitter or (0.0, 0.0, 0.0, 0.0), p_jitter=float(train_cfg.p_color_jitter),
                       p_gray=0.0, p_blur=0.0, white_balance=wb)
