"""Feature-mapping (FM) compute primitives with CPU (numba/BLAS) and CUDA (CuPy) backends.

``backend`` is ``"auto"`` (CUDA when CuPy imports and sees a device, else CPU), ``"cpu"`` or
``"cuda"``. Both backends take NumPy or CuPy arrays; results come back in the array type of the
first argument (NumPy in, NumPy out), so callers can keep data on the GPU across k-means
iterations by passing CuPy arrays. CuPy is imported only when the CUDA backend is used.

Contract shared by both backends (tests hold them to it):

* ``assign_nearest`` returns int64 labels and float32 squared distances (clamped >= 0);
  ties of the distances each method computes go to the lowest centroid index (so duplicate
  centroids do); rows with NaN/Inf get a NaN distance. Ties that are exact only in float64
  (two centroids at the same true distance, unequal after float32 rounding) go to the lowest
  index in the numba oracle and the exact CUDA methods (``gemm-*``, ``fused-*``), not always
  on the BLAS path or ``simt``, which decide in float32.
* The exact methods' error bound covers rounding, not float32's range: it holds while squared
  distances are normal float32 numbers (above 1.2e-38: feature entries above about 1e-19) and
  squared norms stay below ``scoring.feature_mapping.MAX_SQUARED_NORM`` (8.5e37), which FM
  checks (``check_finite_rows``). Network features are many orders inside both.
* ``update_centroids`` returns float64 sums (K, D) and int64 counts (K,).
* ``histogram`` returns int64 counts, or float64 sums when ``weights`` is given.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Literal

from ..errors import DP4TLError
from .checks import KernelInputError, is_cupy

#: where a kernel runs: ``"cpu"`` (numba/BLAS), ``"cuda"`` (the CUDA C kernels, through CuPy) or
#: ``"auto"`` (CUDA when CuPy imports and sees a device, else CPU)
Backend = Literal["auto", "cpu", "cuda"]

__all__ = [
    "Backend",
    "KernelInputError",
    "assign_nearest",
    "assign_nearest_reference",
    "assigner",
    "cuda_available",
    "cuda_modules",
    "histogram",
    "resolve_backend",
    "update_centroids",
]


def _cpu():
    """The numba/BLAS backend, imported on first use: numba takes about a second to import, which
    a command that never runs a kernel (``dp4tl --help``) should not pay."""
    from . import cpu

    return cpu


def cuda_modules() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every CUDA C module this package compiles at run time (NVRTC, through CuPy ``RawModule``):
    name -> (source, kernel names the launchers use). A new module is registered here, so the CPU
    tests compile it for sm_80 and sm_90 with ptxas (tests/scoring/test_kernels_nvrtc.py) before
    any GPU meets it."""
    from . import cuda_source, fused

    return {"cuda": (cuda_source.SOURCE, cuda_source.KERNEL_NAMES),
            "fused": (fused.FUSED_SOURCE, fused.FUSED_KERNELS)}


@functools.lru_cache(maxsize=None)
def cuda_available() -> bool:
    """True when CuPy sees a CUDA device *and* compiles and runs this package's kernels (cached).

    Counting devices is not enough: a CuPy built for another CUDA major, or a missing NVRTC,
    only fails at the first kernel compile. That failure is reported once as a warning naming
    the cause, and the CPU backend is used instead of crashing mid-run.
    """
    try:
        import cupy

        if int(cupy.cuda.runtime.getDeviceCount()) < 1:
            return False
    except Exception:  # ImportError, CUDARuntimeError without a driver, ...
        return False
    try:
        from . import cuda

        labels, _ = cuda.assign_nearest(cupy.zeros((2, 3), cupy.float32), cupy.ones((1, 3), cupy.float32))
        cupy.cuda.Device().synchronize()
        if labels.get().tolist() != [0, 0]:
            raise RuntimeError("a test launch gave wrong results")
    except Exception as e:  # noqa: BLE001 - any failure means "not usable", reported once
        warnings.warn(f"CuPy sees a GPU but cannot run the FM kernels ({type(e).__name__}: {e}); "
                      "using the CPU backend. Install the cupy-cudaXXx wheel matching your CUDA "
                      "major (extras 'gpu' = CUDA 13, 'gpu-cuda12' = CUDA 12)", RuntimeWarning, stacklevel=2)
        return False
    return True


def resolve_backend(backend: str) -> str:
    """Turn ``"auto"`` into ``"cuda"`` or ``"cpu"``; reject unknown names / unusable CUDA."""
    if backend not in ("auto", "cpu", "cuda"):
        raise DP4TLError(f"backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")
    if backend == "auto":
        return "cuda" if cuda_available() else "cpu"
    if backend == "cuda" and not cuda_available():
        raise DP4TLError(
            "backend='cuda' needs CuPy and a CUDA device, but none is usable here; "
            "install the cupy-cudaXXx wheel matching your driver or pass backend='cpu' "
            "(`--backend cpu`)"
        )
    return backend


def _impl(backend: str):
    if backend == "cuda":
        from . import cuda

        return cuda
    return _cpu()


def _to_host(a: Any) -> Any:
    return a.get() if is_cupy(a) else a


def _like(ref: Any, *arrays: Any) -> tuple[Any, ...]:
    """Move results to the array type of ``ref`` (CuPy stays CuPy, everything else NumPy)."""
    if is_cupy(ref):
        import cupy

        return tuple(cupy.asarray(a) for a in arrays)
    return tuple(_to_host(a) for a in arrays)


def assign_nearest(x: Any, centroids: Any, *, backend: str = "auto", method: str = "auto") -> tuple[Any, Any]:
    """Nearest centroid (squared L2) for every row of ``x`` without an N x K matrix.

    ``x`` is (N, D) and ``centroids`` (K, D), float32 preferred. Returns
    ``(labels int64 (N,), min_dist2 float32 (N,))``; exact ties go to the lowest index.
    ``method`` picks the CUDA algorithm (``cuda.ASSIGN_METHODS``: ``auto`` measures once per
    problem size; ``simt`` fused kernel; ``gemm-tf32``/``gemm-bf16`` tensor cores with exact
    near-tie re-check; ``fused-bf16``/``fused-bf16-tiled``/``fused-bf16-tiled3`` one BF16 mma GEMM keeping each row's
    best candidates, flagged rows re-checked exactly); the CPU backend ignores it.
    """
    b = resolve_backend(backend)
    if b == "cpu":
        out = _cpu().assign_nearest(_to_host(x), _to_host(centroids))
    else:
        try:
            out = _impl(b).assign(x, centroids, method)
        except ValueError as e:
            raise DP4TLError(str(e)) from None
    return _like(x, *out)  # type: ignore[return-value]


def assigner(x: Any, *, backend: str = "auto", method: str = "auto"):
    """``centroids -> (labels, min_dist2)`` for a fixed ``x``, as :func:`assign_nearest` returns
    them (same array type as ``x``). For k-means: on CUDA the method is chosen once and work that
    depends on ``x`` alone (the fused method's BF16 copy of ``x``) is done once, not per call."""
    b = resolve_backend(backend)
    if b == "cpu":
        return lambda centroids: _like(x, *_cpu().assign_nearest(_to_host(x), _to_host(centroids)))
    try:
        run = _impl(b).assigner(x, method)
    except ValueError as e:
        raise DP4TLError(str(e)) from None
    return lambda centroids: _like(x, *run(centroids))


def assign_nearest_reference(x: Any, centroids: Any) -> tuple[Any, Any]:
    """The float64-accumulating numba oracle (CPU only, NumPy out); for checking backends."""
    return _cpu().assign_nearest_numba(_to_host(x), _to_host(centroids))


def update_centroids(x: Any, labels: Any, k: int, *, backend: str = "auto") -> tuple[Any, Any]:
    """Per-cluster sums (float64 (K, D)) and counts (int64 (K,)) for labels in ``[0, k)``."""
    b = resolve_backend(backend)
    if b == "cpu":
        out = _cpu().update_centroids(_to_host(x), _to_host(labels), k)
    else:
        out = _impl(b).update_centroids_sorted(x, labels, k)
    return _like(x, *out)  # type: ignore[return-value]


def histogram(labels: Any, k: int, weights: Any = None, *, backend: str = "auto") -> Any:
    """Counts (int64 (K,)) of each id in ``[0, k)``, or float64 weight sums if ``weights``."""
    b = resolve_backend(backend)
    if b == "cpu":
        out = _cpu().histogram(_to_host(labels), k, None if weights is None else _to_host(weights))
    else:
        out = _impl(b).histogram(labels, k, weights)
    return _like(labels, out)[0]
