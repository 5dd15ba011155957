"""Crop + flip + resize of a whole decoded batch on the device (:mod:`.gpu_decode`'s pixel work).

The host turns each view's crop boxes and flips into a pyramid level (:func:`mip_level`) and
eight numbers per image (:func:`grid_params`); the device pads the decoded images into one canvas
(:func:`pad_batch`, refused beyond :data:`MAX_CANVAS_BYTES` by :func:`check_canvas`), builds a
small masked mipmap (:func:`mip_pyramid`) and runs one ``grid_sample`` per level in use
(:func:`resample`). Why a mipmap and where pixel centres go: see :mod:`.gpu_decode`'s docstring.
Pure tensor/array functions, so tests check them against PIL/OpenCV on the CPU.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

#: Largest padded decode canvas of one batch, in bytes of its float copy (the uint8 canvas, its
#: float32 copy and the mipmap levels are alive together: about 6.3x the uint8 size). At batch
#: 1024 this allows images up to ~800 px on the longer side; images built at up to 4096 px
#: (``--max-side``) would need ~200 GB at batch 1024.
MAX_CANVAS_BYTES = 8 << 30


def mip_level(boxes: np.ndarray, resolution: int) -> np.ndarray:
    """Pyramid level each crop samples: ``floor(log2(shrink))`` for a shrink of 2× or more
    (by the less-shrunk axis, so nothing is blurred more than needed), else 0."""
    shrink = np.minimum(boxes[:, 2], boxes[:, 3]) / resolution
    return np.floor(np.log2(np.maximum(shrink, 1.0))).astype(np.int64)


def grid_params(boxes: np.ndarray, flips: np.ndarray, hw: np.ndarray, levels: np.ndarray,
                resolution: int, canvas: tuple[int, int]) -> np.ndarray:
    """(B, 8) float32: per axis (x then y) ``A, B, lo, hi`` such that output pixel ``j`` of an
    image samples normalised canvas coordinate ``clamp(A + B * (j + 0.5), lo, hi)``
    (``grid_sample``, ``align_corners=False``).

    Output pixel centre ``j`` of a crop ``(start, length)`` sits at source pixel
    ``start - 0.5 + (j + 0.5) * length / R`` (PIL/OpenCV resize convention); a flip mirrors
    ``j``. The clamp keeps samples on the image's own pixel centres at the chosen pyramid level
    (edge replication instead of reading the padding). Canvas sides are multiples of
    ``2**levels.max()``, so the normalised coordinates are the same on every level.
    """
    top, left, bh, bw = (boxes[:, k].astype(np.float64) for k in range(4))
    height, width = canvas
    step = 2.0 ** levels
    out = np.empty((len(boxes), 8), np.float32)
    for axis, (start, length, extent, size) in enumerate(
            ((left, bw, hw[:, 1], width), (top, bh, hw[:, 0], height))):
        a, b = start - 0.5, length / resolution
        if axis == 0:  # horizontal flip: first output column samples the crop's last one
            a, b = np.where(flips, start + length - 0.5, a), np.where(flips, -b, b)
        cells = np.ceil(extent / step)  # the image's pixels on its level
        out[:, 4 * axis:4 * axis + 4] = np.stack(
            [(2 * a + 1) / size - 1, 2 * b / size, step / size - 1,
             (2 * cells - 1) * step / size - 1], axis=1)
    return out


LevelGroups = list[tuple[int, "torch.Tensor | None"]]


def level_groups(levels: np.ndarray) -> LevelGroups:
    """``(level, batch positions)`` per pyramid level in use; positions are None when the
    whole batch shares one level (the common case: no gather/scatter needed)."""
    used = np.unique(levels).tolist()
    if len(used) <= 1:
        return [(int(used[0]) if used else 0, None)]
    return [(lv, torch.from_numpy(np.flatnonzero(levels == lv))) for lv in used]


def check_canvas(indices: np.ndarray, hw: np.ndarray, canvas: tuple[int, int], top_level: int,
                 limit: int = MAX_CANVAS_BYTES) -> None:
    """Raise a one-line :class:`DataError` when one batch's padded canvas (every image padded to
    the batch's largest height and width) would take more than ``limit`` bytes as floats."""
    need = len(indices) * 3 * canvas[0] * canvas[1] * 4
    if need <= limit:
        return
    k = int(np.argmax(hw[:, 0].astype(np.int64) * hw[:, 1]))
    raise DataError(
        f"decode='gpu': a batch of {len(indices)} images is padded to {canvas[0]}x{canvas[1]} px "
        f"(sample {int(indices[k])} is {int(hw[k, 0])}x{int(hw[k, 1])} px), a {need / 2**30:.1f} "
        f"GiB canvas, over the {limit / 2**30:.1f} GiB limit; rebuild the dataset with a smaller "
        "--max-side, lower the batch size, or decode on the CPU (decode='cpu')")


def pad_batch(images: list[torch.Tensor], canvas: tuple[int, int]) -> torch.Tensor:
    """Zero-pad (3, h_i, w_i) uint8 images into one (B, 3, H, W) tensor, as a nested tensor
    in one call. Converting to float first (``as_nested_tensor(..., dtype=float32)``) is
    ~100x slower on the CPU, so the padding stays uint8."""
    with warnings.catch_warnings():  # strided nested tensors: "prototype stage" notice
        warnings.simplefilter("ignore", UserWarning)
        nested = torch.nested.as_nested_tensor(images)
        return torch.nested.to_padded_tensor(nested, 0, (len(images), 3, *canvas))


def mip_pyramid(canvas: torch.Tensor, hw_t: torch.Tensor, count: int) -> list[torch.Tensor]:
    """Levels 1..count: masked 2x2 averages (padding never darkens the image edge).
    ``hw_t``: (B, 2) image sizes on the canvas's device."""
    _, _, height, width = canvas.shape
    rows = torch.arange(height, device=canvas.device)[None, :, None] < hw_t[:, 0, None, None]
    cols = torch.arange(width, device=canvas.device)[None, None, :] < hw_t[:, 1, None, None]
    mask = (rows & cols).to(canvas.dtype)[:, None]
    total, out = canvas * mask, []
    for _ in range(count):
        total, mask = F.avg_pool2d(total, 2), F.avg_pool2d(mask, 2)
        out.append(total / mask.clamp_min(1e-6))
    return out


def resample(pyramid: list[torch.Tensor], params: torch.Tensor, groups: LevelGroups,
              resolution: int) -> torch.Tensor:
    """Crop + flip + resize every image of the batch: one ``grid_sample`` per pyramid level in
    use (``groups`` from :func:`level_groups`, positions on the device). Returns float
    (B, 3, R, R) rounded to whole uint8 levels, as the CPU loaders give."""
    j = torch.arange(resolution, device=params.device, dtype=torch.float32) + 0.5

    def axis(k: int) -> torch.Tensor:
        a, b, lo, hi = (params[:, 4 * k + m, None] for m in range(4))
        return torch.clamp(a + b * j, lo, hi)  # (B, R)

    gx, gy = axis(0), axis(1)
    n = len(params)
    grid = torch.stack([gx[:, None, :].expand(n, resolution, resolution),
                        gy[:, :, None].expand(n, resolution, resolution)], dim=-1)

    def sample(level: int, pos: torch.Tensor | None) -> torch.Tensor:
        src = pyramid[level] if pos is None else pyramid[level].index_select(0, pos)
        return F.grid_sample(src, grid if pos is None else grid.index_select(0, pos),
                             mode="bilinear", padding_mode="border", align_corners=False)

    if len(groups) == 1:
        out = sample(*groups[0])
    else:
        out = pyramid[0].new_empty((n, 3, resolution, resolution))
        for level, pos in groups:
            out.index_copy_(0, pos, sample(level, pos))
    return out.round_().clamp_(0, 255)


__all__ = ["LevelGroups", "MAX_CANVAS_BYTES", "check_canvas", "grid_params", "level_groups", "mip_level",
           "mip_pyramid", "pad_batch", "resample"]
