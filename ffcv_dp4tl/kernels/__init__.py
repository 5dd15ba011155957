"""Feature-mapping (FM) compute primitives with CPU (numba/BLAS) and CUDA (CuPy) backends.

``backend`` is ``"auto"`` (CUDA when CuPy imports and sees a device, else CPU), ``"cpu"`` or
``"cuda"``. Both backends take NumPy or CuPy arrays; results come back in the array type of the
first argument (NumPy in, NumPy out), so callers can keep data on the GPU across k-means
iterations by passing CuPy arrays. CuPy is imported only when the CUDA backend is used.

Contract shared by both backends (tests hold them to it):

* ``assign_nearest`` returns int64 labels and float32 squared distances (clamped >= 0);
  exact ties go to the lowest centroid index; rows with NaN/Inf get a NaN distance.
* ``update_centroids`` returns float64 sums (K, D) and int64 counts (K,).
* ``histogram`` returns int64 counts, or float64 sums when ``weights`` is given.
"""
from __future__ import annotations

import functools
from typing import Any, Literal

from ..errors import DP4TLError
from . import cpu
from .checks import KernelInputError, is_cupy

Backend = Literal["auto", "cpu", "cuda"]

__all__ = [
    "Backend",
    "KernelInputError",
    "assign_nearest",
    "assign_nearest_reference",
    "cuda_available",
    "histogram",
    "resolve_backend",
    "update_centroids",
]


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    """True when CuPy is importable and reports at least one CUDA device (cached)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:  # ImportError, CUDARuntimeError without a driver, ...
        return False


def resolve_backend(backend: str) -> str:
    """Turn ``"auto"`` into ``"cuda"`` or ``"cpu"``; reject unknown names / unusable CUDA."""
    if backend not in ("auto", "cpu", "cuda"):
        raise DP4TLError(f"backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")
    if backend == "auto":
        return "cuda" if cuda_available() else "cpu"
    if backend == "cuda" and not cuda_available():
        raise DP4TLError(
            "backend='cuda' needs CuPy and a CUDA device, but none is usable here; "
            "install the cupy-cudaXXx wheel matching your driver or pass backend='cpu'"
        )
    return backend


def _impl(backend: str):
    if backend == "cuda":
        from . import cuda

        return cuda
    return cpu


def _to_host(a: Any) -> Any:
    return a.get() if is_cupy(a) else a


def _like(ref: Any, *arrays: Any) -> tuple[Any, ...]:
    """Move results to the array type of ``ref`` (CuPy stays CuPy, everything else NumPy)."""
    if is_cupy(ref):
        import cupy

        return tuple(cupy.asarray(a) for a in arrays)
    return tuple(_to_host(a) for a in arrays)


def assign_nearest(x: Any, centroids: Any, *, backend: str = "auto") -> tuple[Any, Any]:
    """Nearest centroid (squared L2) for every row of ``x`` without an N x K matrix.

    ``x`` is (N, D) and ``centroids`` (K, D), float32 preferred. Returns
    ``(labels int64 (N,), min_dist2 float32 (N,))``; exact ties go to the lowest index.
    """
    b = resolve_backend(backend)
    if b == "cpu":
        out = cpu.assign_nearest(_to_host(x), _to_host(centroids))
    else:
        out = _impl(b).assign_nearest(x, centroids)
    return _like(x, *out)  # type: ignore[return-value]


def assign_nearest_reference(x: Any, centroids: Any) -> tuple[Any, Any]:
    """The float64-accumulating numba oracle (CPU only, NumPy out); for checking backends."""
    return cpu.assign_nearest_numba(_to_host(x), _to_host(centroids))


def update_centroids(x: Any, labels: Any, k: int, *, backend: str = "auto") -> tuple[Any, Any]:
    """Per-cluster sums (float64 (K, D)) and counts (int64 (K,)) for labels in ``[0, k)``."""
    b = resolve_backend(backend)
    if b == "cpu":
        out = cpu.update_centroids(_to_host(x), _to_host(labels), k)
    else:
        out = _impl(b).update_centroids(x, labels, k)
    return _like(x, *out)  # type: ignore[return-value]


def histogram(labels: Any, k: int, weights: Any = None, *, backend: str = "auto") -> Any:
    """Counts (int64 (K,)) of each id in ``[0, k)``, or float64 weight sums if ``weights``."""
    b = resolve_backend(backend)
    if b == "cpu":
        out = cpu.histogram(_to_host(labels), k, None if weights is None else _to_host(weights))
    else:
        out = _impl(b).histogram(labels, k, weights)
    return _like(labels, out)[0]
