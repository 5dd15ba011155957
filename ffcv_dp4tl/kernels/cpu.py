"""CPU implementations of the feature-mapping (FM) kernels.

Two assignment routines live here:

* :func:`assign_nearest_numba` is the *oracle*: a plain numba loop that accumulates every dot
  product in float64, so its distances are accurate to ~1e-12 relative. Tests compare the
  fast paths (BLAS here, the fused CUDA kernel) against it.
* :func:`assign_nearest` is what the ``cpu`` backend uses: row chunks against all centroids
  with a float32 BLAS GEMM, so the N x K distance matrix never exists in full. On a 2-core
  box it is ~5x faster than the numba loop (see ``benchmarks/bench_kmeans.py --cpu-smoke``).

Both use ``||x||^2 - 2 x.c + ||c||^2`` and break ties of the distances they compute towards
the lowest centroid index (strict ``<`` in the loop, ``argmin``'s first occurrence in the BLAS
path); the BLAS path computes in float32, so a tie exact only in float64 may go either way
there. Rows of ``x``
holding NaN/Inf get distance NaN and an unspecified label; callers that sum the distances
(k-means inertia) therefore notice them. Distances are clamped at 0 because the expansion can
go slightly negative through cancellation.

All functions return NumPy arrays; sums are float64 and counts int64 so results do not
depend on summation order beyond float64 rounding.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .checks import (
    as_float32_matrix,
    as_labels,
    as_weights,
    check_finite_centroids,
    check_k,
    check_same_dims,
)

# reassoc/contract let LLVM vectorise the reductions; nnan/ninf are deliberately left out so
# the NaN checks below are not optimised away.
_FASTMATH = {"reassoc", "contract"}

#: Upper bound on the partial-sum buffers of update_centroids (bytes).
_PARTIAL_BYTES = 256 * 2**20
#: Rows summed into one partial buffer (:func:`_nchunks`): 1.28M rows make 79 buffers (fewer
#: where the memory bound caps them), enough for any core count; a small source makes one.
_ROWS_PER_PARTIAL = 16384
#: Elements of the (rows x K) distance block materialised per BLAS chunk.
_BLAS_BLOCK_ELEMS = 2**22


def _njit(**options):
    """numba's ``njit`` with its on-disk cache wherever numba finds a place for one (beside
    this file, ``$NUMBA_CACHE_DIR``, or the user's cache folder), so a run does not compile
    the kernels again. Without any (a read-only install used with a read-only or missing home:
    a container run as another user, a cluster job over its home quota) numba refuses
    ``cache=True`` when the module is imported, and FM ended in a traceback (environment
    audit): the kernels are then compiled in each process instead (seconds; set
    ``NUMBA_CACHE_DIR`` to a writable folder to keep them)."""
    def wrap(fn):
        try:
            return njit(cache=True, **options)(fn)
        except RuntimeError as e:  # numba: "cannot cache function ...: no locator available ..."
            if "no locator available" not in str(e):
                raise
            return njit(**options)(fn)
    return wrap


@_njit(parallel=True, fastmath=_FASTMATH)
def _assign_numba(x, c, c_norm, labels, min_d2):  # pragma: no cover - compiled
    n, d = x.shape
    k = c.shape[0]
    for i in prange(n):
        xn = 0.0
        for j in range(d):
            v = np.float64(x[i, j])
            xn += v * v
        if not np.isfinite(xn):
            labels[i] = 0
            min_d2[i] = np.nan
            continue
        best = np.inf
        best_idx = 0
        for q in range(k):
            dot = 0.0
            for j in range(d):
                dot += np.float64(x[i, j]) * np.float64(c[q, j])
            dist = xn - 2.0 * dot + c_norm[q]
            if dist < best:
                best = dist
                best_idx = q
        labels[i] = best_idx
        min_d2[i] = best if best > 0.0 else 0.0


@_njit(parallel=True)
def _segment_sums(x, labels, k, nchunks):  # pragma: no cover - compiled
    n, d = x.shape
    partial = np.zeros((nchunks, k, d), dtype=np.float64)
    pcounts = np.zeros((nchunks, k), dtype=np.int64)
    step = (n + nchunks - 1) // nchunks
    for t in prange(nchunks):
        stop = min(n, (t + 1) * step)
        for i in range(t * step, stop):
            lab = labels[i]
            pcounts[t, lab] += 1
            for j in range(d):
                partial[t, lab, j] += x[i, j]
    sums = np.zeros((k, d), dtype=np.float64)
    counts = np.zeros(k, dtype=np.int64)
    for q in prange(k):
        for t in range(nchunks):
            counts[q] += pcounts[t, q]
            for j in range(d):
                sums[q, j] += partial[t, q, j]
    return sums, counts


@_njit(parallel=True)
def _hist_count(labels, k, nchunks):  # pragma: no cover - compiled
    n = labels.shape[0]
    partial = np.zeros((nchunks, k), dtype=np.int64)
    step = (n + nchunks - 1) // nchunks
    for t in prange(nchunks):
        for i in range(t * step, min(n, (t + 1) * step)):
            partial[t, labels[i]] += 1
    return partial.sum(axis=0)


@_njit(parallel=True)
def _hist_weighted(labels, weights, k, nchunks):  # pragma: no cover - compiled
    n = labels.shape[0]
    partial = np.zeros((nchunks, k), dtype=np.float64)
    step = (n + nchunks - 1) // nchunks
    for t in prange(nchunks):
        for i in range(t * step, min(n, (t + 1) * step)):
            partial[t, labels[i]] += weights[i]
    return partial.sum(axis=0)


def _nchunks(n: int, bytes_per_chunk: int) -> int:
    """Partial buffers of a float64 sum: one per :data:`_ROWS_PER_PARTIAL` rows, capped by
    memory; numba's threads share them out. The count depends on the data's shape only, never
    on the thread count, so a sum's rounding, and the k-means and votes built on it, are the
    same on any machine and after anything the process ran before: it was one buffer per numba
    thread, a count that ffcv's import and each loader set as a side effect (the machine's
    cores, 1, or the last loader's workers), so FM's clusters could differ in their last bits
    with the history of the process (API audit's follow-up)."""
    cap = max(1, _PARTIAL_BYTES // max(1, bytes_per_chunk))
    return int(max(1, min(-(-n // _ROWS_PER_PARTIAL), cap)))


def _centroid_sq_norms(c: np.ndarray) -> np.ndarray:
    c64 = c.astype(np.float64)
    return np.einsum("ij,ij->i", c64, c64)


def _prepare_assign(x, centroids) -> tuple[np.ndarray, np.ndarray]:
    x = as_float32_matrix(x, "x")
    centroids = as_float32_matrix(centroids, "centroids")
    check_same_dims(x, centroids)
    check_finite_centroids(centroids)
    return x, centroids


def assign_nearest_numba(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid per row with float64 accumulation (the reference implementation).

    Returns ``(labels int64 (N,), min_dist2 float32 (N,))``. Exact ties go to the lowest
    centroid index. Slower than :func:`assign_nearest`; use it to check other backends.
    """
    x, centroids = _prepare_assign(x, centroids)
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int64)
    min_d2 = np.empty(n, dtype=np.float32)
    _assign_numba(x, centroids, _centroid_sq_norms(centroids), labels, min_d2)
    return labels, min_d2


def assign_nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid per row via chunked float32 GEMM (the ``cpu`` backend's fast path).

    Only ``chunk x K`` distances exist at a time (chunk chosen so that is ~16 MiB). Equal
    float32 distances (duplicate centroids) go to the lowest centroid index; ties and
    near-ties closer than float32 GEMM rounding (~1e-6 relative to ``||x||^2``) may resolve
    differently from the float64 oracle.
    """
    x, centroids = _prepare_assign(x, centroids)
    n, k = x.shape[0], centroids.shape[0]
    c_norm = _centroid_sq_norms(centroids).astype(np.float32)
    neg2c_t = np.ascontiguousarray((-2.0 * centroids).T)  # (D, K), so x @ neg2c_t = -2 x.c
    chunk = max(1, min(n, _BLAS_BLOCK_ELEMS // k))
    labels = np.empty(n, dtype=np.int64)
    min_d2 = np.empty(n, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf rows are reported as NaN
        for start in range(0, n, chunk):
            xc = x[start : start + chunk]
            g = xc @ neg2c_t
            g += c_norm
            idx = np.argmin(g, axis=1)
            part = np.take_along_axis(g, idx[:, None], axis=1)[:, 0].astype(np.float64)
            xc64 = xc.astype(np.float64)
            xn = np.einsum("ij,ij->i", xc64, xc64)
            d2 = np.where(np.isfinite(xn), xn + part, np.nan)
            labels[start : start + chunk] = idx
            min_d2[start : start + chunk] = np.maximum(d2, 0.0)  # NaN propagates
    return labels, min_d2


def update_centroids(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster feature sums (float64 (K, D)) and member counts (int64 (K,)).

    Each contiguous slice of rows is accumulated into a private (K, D) float64 buffer (numba's
    threads take the slices), then the buffers are reduced in order; how many there are
    depends on the shape only (:func:`_nchunks`), capped so they never take more than 256 MiB. Divide ``sums / counts`` for means (empty clusters have count 0).
    """
    x = as_float32_matrix(x, "x")
    k = check_k(k)
    labels = as_labels(labels, k, n=x.shape[0])
    nchunks = _nchunks(x.shape[0], k * x.shape[1] * 8)
    return _segment_sums(x, labels, np.int64(k), np.int64(nchunks))


def histogram(labels: np.ndarray, k: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Count (int64) or weight-sum (float64) of each id in ``[0, k)``."""
    k = check_k(k)
    labels = as_labels(labels, k)
    n = labels.shape[0]
    if weights is None:
        if n == 0:
            return np.zeros(k, dtype=np.int64)
        return _hist_count(labels, np.int64(k), np.int64(_nchunks(n, k * 8)))
    weights = as_weights(weights, n)
    if n == 0:
        return np.zeros(k, dtype=np.float64)
    return _hist_weighted(labels, weights, np.int64(k), np.int64(_nchunks(n, k * 8)))
