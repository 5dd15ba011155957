"""Argument checks shared by the CPU and CUDA kernels.

The checks only look at ``shape``/``dtype`` (and, for labels, min/max), which NumPy and CuPy
arrays share, so both backends reject bad input with the same :class:`KernelInputError`
message before any compiled code runs. Compiled code would otherwise index out of bounds or
silently reinterpret memory.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DP4TLError


class KernelInputError(DP4TLError):
    """An array passed to an FM kernel has the wrong shape, dtype or values."""


#: Rows are addressed with 32-bit ints inside the CUDA kernels.
MAX_ROWS = 2**31 - 1


def is_cupy(a: Any) -> bool:
    """True for CuPy arrays, decided without importing CuPy."""
    return type(a).__module__.split(".")[0] == "cupy"


def array_module(a: Any):
    """``cupy`` for CuPy arrays, ``numpy`` for everything else."""
    if is_cupy(a):
        import cupy

        return cupy
    return np


def as_float32_matrix(a: Any, name: str) -> Any:
    """Return ``a`` as a C-contiguous float32 (n, d) array of the same array module.

    Floating inputs of other precisions are converted (costing one copy); pass float32 to
    avoid it. Non-floating inputs are rejected because they are almost always a mistake
    (e.g. labels passed where features were expected).
    """
    xp = array_module(a)
    if not hasattr(a, "dtype"):
        a = xp.asarray(a)
    if a.ndim != 2:
        raise KernelInputError(f"{name} must be a 2-D (rows, dims) array, got shape {tuple(a.shape)}")
    if a.dtype.kind != "f":
        raise KernelInputError(f"{name} must be a floating-point array (float32 preferred), got dtype {a.dtype}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise KernelInputError(f"{name} is empty (shape {tuple(a.shape)}); it needs at least one row and one column")
    if a.shape[0] > MAX_ROWS:
        raise KernelInputError(f"{name} has {a.shape[0]} rows; at most {MAX_ROWS} are supported, split it into chunks")
    return xp.ascontiguousarray(a, dtype=xp.float32)


def check_same_dims(x: Any, centroids: Any) -> None:
    if x.shape[1] != centroids.shape[1]:
        raise KernelInputError(
            f"centroids has D={centroids.shape[1]} but x has D={x.shape[1]}; "
            "both must hold features of the same layer"
        )


def check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise KernelInputError(f"{name} must be an int, got {type(k).__name__}")
    if k < 1:
        raise KernelInputError(f"{name} must be >= 1, got {k}")
    return int(k)


def as_labels(labels: Any, k: int, n: int | None = None, name: str = "labels") -> Any:
    """Return ``labels`` as a contiguous int64 vector after checking every value is in [0, k)."""
    xp = array_module(labels)
    if not hasattr(labels, "dtype"):
        labels = xp.asarray(labels)
    if labels.ndim != 1:
        raise KernelInputError(f"{name} must be 1-D, got shape {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu" and labels.size:
        raise KernelInputError(f"{name} must hold integer ids, got dtype {labels.dtype}")
    if n is not None and labels.shape[0] != n:
        raise KernelInputError(f"{name} has {labels.shape[0]} entries but x has {n} rows; they must match")
    labels = xp.ascontiguousarray(labels, dtype=xp.int64)
    if labels.shape[0]:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= k:
            raise KernelInputError(f"{name} must lie in [0, {k}), found values in [{lo}, {hi}]; check k / num_classes")
    return labels


def as_weights(weights: Any, n: int, name: str = "weights") -> Any:
    xp = array_module(weights)
    if not hasattr(weights, "dtype"):
        weights = xp.asarray(weights)
    if weights.ndim != 1 or weights.shape[0] != n:
        raise KernelInputError(f"{name} must be 1-D with one entry per label ({n}), got shape {tuple(weights.shape)}")
    if weights.dtype.kind not in "fiub":
        raise KernelInputError(f"{name} must be numeric, got dtype {weights.dtype}")
    return xp.ascontiguousarray(weights, dtype=xp.float64)


def check_finite_centroids(centroids: Any) -> None:
    """Centroids are small (K x D), so checking them is cheap and catches diverged k-means."""
    xp = array_module(centroids)
    if not bool(xp.isfinite(centroids).all()):
        raise KernelInputError("centroids contain NaN or Inf; recompute them (diverged k-means or bad features?)")
