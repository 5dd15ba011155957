"""CUDA implementations of the FM kernels (CuPy ``RawModule``), same signatures as ``cpu.py``.

This module imports CuPy only inside functions, so it can be imported (and its CUDA source
inspected or compiled by tests) on machines without CuPy or a GPU.

Nearest-centroid assignment is one fused kernel, ``assign_partial``: every 256-thread block
owns 64 rows of ``x`` and a range of centroids. It walks that range in 64-centroid tiles,
computing the 64 x 64 tile of ``x . c`` as a small shared-memory GEMM (16-wide slices of D;
each thread a 4 x 4 register micro-tile), turns it into the partial distance
``||c||^2 - 2 x.c`` and keeps a running (min, argmin) per row in registers. The 16 threads
that share rows reduce with warp shuffles, and one ``atomicMin`` per row publishes the result
as a packed 64-bit key ``(order-preserving bits of the float distance) << 32 | centroid id``.
Comparing packed keys orders by distance first and centroid id second, so exact ties go to
the lowest centroid index on every path (within a thread, across threads, across blocks),
independent of scheduling: the same rule as the CPU oracle. Splitting the centroids over
``gridDim.y`` keeps the GPU busy when N is small (e.g. a few thousand target images).
``assign_finalize`` unpacks keys and adds ``||x||^2``. The N x K matrix is never stored.

``segment_sum`` (centroid update) and ``hist_*`` use float64 / uint64 ``atomicAdd``: counts
are exact, float64 sums differ from a sequential sum only by float64 rounding (the order of
atomics is not deterministic).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .checks import (
    as_float32_matrix,
    as_labels,
    as_weights,
    check_finite_centroids,
    check_k,
    check_same_dims,
)

#: Tile sizes baked into the CUDA source (keep in sync with the #defines below).
BM = 64  # rows of x per block
BN = 64  # centroids per tile
THREADS = 256

SOURCE = r"""
#define BM 64
#define BN 64
#define BK 16
#define TM 4
#define TN 4
#define TDIM 16            /* threads per tile side: BM / TM == BN / TN == 16 */
#define KEY_NONE 0xffffffffffffffffULL

typedef unsigned long long u64;

/* Map float bits to unsigned ints whose unsigned order equals the float order. */
__device__ __forceinline__ unsigned int ordered_bits(float f) {
    unsigned int u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float from_ordered_bits(unsigned int u) {
    return __uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}

/* Squared L2 norm of each row; one warp per row, float64 accumulation. */
extern "C" __global__ void row_sq_norms(const float* __restrict__ a, float* __restrict__ out,
                                        int n, int d) {
    const int warps = blockDim.x / 32;
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * warps + threadIdx.x / 32;
    if (row >= n) return;               /* uniform per warp */
    const float* p = a + row * (long long)d;
    double s = 0.0;
    for (int j = lane; j < d; j += 32) {
        double v = (double)p[j];
        s += v * v;
    }
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) out[row] = (float)s;
}

/* Fused distance GEMM + running argmin. grid = (ceil(n / BM), splits), block = 256.
   Block (bx, by) handles rows [bx*BM, bx*BM + BM) and centroids
   [by*k_per_split, min(k, (by+1)*k_per_split)); k_per_split is a multiple of BN.
   keys must be initialised to KEY_NONE. */
extern "C" __global__ void assign_partial(const float* __restrict__ x,
                                          const float* __restrict__ c,
                                          const float* __restrict__ c_norm,
                                          u64* __restrict__ keys,
                                          int n, int k, int d, int k_per_split) {
    __shared__ float xs[BK][BM + 4];
    __shared__ float cs[BK][BN + 4];

    const int tid = threadIdx.x;
    const int tx = tid % TDIM;          /* column group: centroids tx + 16*j */
    const int ty = tid / TDIM;          /* row group: rows ty + 16*i */
    const int row0 = blockIdx.x * BM;
    const int kbeg = blockIdx.y * k_per_split;
    const int kend = min(k, kbeg + k_per_split);

    u64 best[TM];
    for (int i = 0; i < TM; ++i) best[i] = KEY_NONE;

    for (int c0 = kbeg; c0 < kend; c0 += BN) {
        float acc[TM][TN];
        for (int i = 0; i < TM; ++i)
            for (int j = 0; j < TN; ++j) acc[i][j] = 0.f;

        for (int d0 = 0; d0 < d; d0 += BK) {
            /* Each thread loads 4 elements of each tile; consecutive tx read consecutive
               floats of one row (coalesced), stored transposed (k-major). */
            const int gd = d0 + tx;
            for (int r = 0; r < BM / TDIM; ++r) {
                const int lr = ty + TDIM * r;
                const int gr = row0 + lr;
                const int gc = c0 + lr;
                xs[tx][lr] = (gr < n && gd < d) ? x[(long long)gr * d + gd] : 0.f;
                cs[tx][lr] = (gc < kend && gd < d) ? c[(long long)gc * d + gd] : 0.f;
            }
            __syncthreads();
            for (int kk = 0; kk < BK; ++kk) {
                float a[TM], b[TN];
                for (int i = 0; i < TM; ++i) a[i] = xs[kk][ty + TDIM * i];
                for (int j = 0; j < TN; ++j) b[j] = cs[kk][tx + TDIM * j];
                for (int i = 0; i < TM; ++i)
                    for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            }
            __syncthreads();
        }

        for (int j = 0; j < TN; ++j) {
            const int cj = c0 + tx + TDIM * j;
            if (cj < kend) {
                const float cn = c_norm[cj];
                for (int i = 0; i < TM; ++i) {
                    const float part = fmaf(-2.f, acc[i][j], cn);
                    const u64 key = ((u64)ordered_bits(part) << 32) | (u64)(unsigned int)cj;
                    if (key < best[i]) best[i] = key;
                }
            }
        }
    }

    /* The 16 threads with the same ty are lanes 16*(ty%2) .. +15 of one warp: reduce there. */
    for (int i = 0; i < TM; ++i) {
        for (int off = TDIM / 2; off > 0; off >>= 1) {
            const u64 other = __shfl_xor_sync(0xffffffffu, best[i], off);
            if (other < best[i]) best[i] = other;
        }
    }
    if (tx == 0) {
        for (int i = 0; i < TM; ++i) {
            const int r = row0 + ty + TDIM * i;
            if (r < n && best[i] != KEY_NONE) atomicMin(&keys[r], best[i]);
        }
    }
}

extern "C" __global__ void assign_finalize(const u64* __restrict__ keys,
                                           const float* __restrict__ x_norm,
                                           long long* __restrict__ labels,
                                           float* __restrict__ min_d2, int n) {
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const u64 key = keys[i];
    const float xn = x_norm[i];
    labels[i] = (long long)(key & 0xffffffffULL);
    float dist = xn + from_ordered_bits((unsigned int)(key >> 32));
    if ((xn - xn) != 0.f) dist = __int_as_float(0x7fc00000);  /* NaN/Inf row -> NaN */
    min_d2[i] = (dist < 0.f) ? 0.f : dist;                   /* NaN stays NaN */
}

/* Block-per-row segmented sum: sums[labels[r], :] += x[r, :]; counts[labels[r]] += 1. */
extern "C" __global__ void segment_sum(const float* __restrict__ x,
                                       const long long* __restrict__ labels,
                                       double* __restrict__ sums,
                                       u64* __restrict__ counts, int n, int d) {
    for (int row = blockIdx.x; row < n; row += gridDim.x) {
        const long long lab = labels[row];
        if (threadIdx.x == 0) atomicAdd(&counts[lab], 1ULL);
        double* dst = sums + lab * d;
        const float* src = x + (long long)row * d;
        for (int j = threadIdx.x; j < d; j += blockDim.x) atomicAdd(&dst[j], (double)src[j]);
    }
}

extern "C" __global__ void hist_count(const long long* __restrict__ labels,
                                      u64* __restrict__ out, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        atomicAdd(&out[labels[i]], 1ULL);
}

extern "C" __global__ void hist_weighted(const long long* __restrict__ labels,
                                         const double* __restrict__ w,
                                         double* __restrict__ out, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        atomicAdd(&out[labels[i]], w[i]);
}
"""

KERNEL_NAMES = (
    "row_sq_norms",
    "assign_partial",
    "assign_finalize",
    "segment_sum",
    "hist_count",
    "hist_weighted",
)

KEY_NONE = 0xFFFFFFFFFFFFFFFF


def _cupy():
    import cupy

    return cupy


@functools.lru_cache(maxsize=None)
def _module():
    # RawModule compiles lazily (NVRTC) and caches per device and on disk.
    return _cupy().RawModule(code=SOURCE)


def _kernel(name: str):
    return _module().get_function(name)


def _sm_count() -> int:
    return _sm_count_of(_cupy().cuda.Device().id)


@functools.lru_cache(maxsize=None)
def _sm_count_of(device_id: int) -> int:
    cp = _cupy()
    return int(cp.cuda.Device(device_id).attributes.get("MultiProcessorCount", 100))


def assign_launch_config(n: int, k: int, sm_count: int, blocks_per_sm: int = 4) -> tuple[int, int, int]:
    """Grid for ``assign_partial``: ``(grid_x, splits, k_per_split)``.

    Rows give ``ceil(n / 64)`` blocks; when that is fewer than ``blocks_per_sm`` blocks per
    SM, the centroids are split over ``gridDim.y`` (whole 64-centroid tiles per split, no
    empty split) so small target sets still fill the GPU.
    """
    grid_x = math.ceil(n / BM)
    tiles = math.ceil(k / BN)
    want = sm_count * blocks_per_sm
    splits = min(tiles, max(1, math.ceil(want / grid_x)))
    tiles_per_split = math.ceil(tiles / splits)
    splits = math.ceil(tiles / tiles_per_split)
    return grid_x, splits, tiles_per_split * BN


def _row_sq_norms(a):
    cp = _cupy()
    n, d = a.shape
    out = cp.empty(n, dtype=cp.float32)
    warps = THREADS // 32
    _kernel("row_sq_norms")((math.ceil(n / warps),), (THREADS,), (a, out, _i32(n), _i32(d)))
    return out


def _i32(v: int) -> np.int32:
    return np.int32(v)


def _i64(v: int) -> np.int64:
    return np.int64(v)


def _to_device_matrix(a: Any, name: str):
    cp = _cupy()
    return cp.asarray(as_float32_matrix(a, name))


def assign_nearest(x: Any, centroids: Any) -> tuple[Any, Any]:
    """Nearest centroid per row on the GPU: ``(labels int64 (N,), min_dist2 float32 (N,))``.

    Inputs may be NumPy (copied to the device) or CuPy arrays; outputs are CuPy arrays.
    Exact ties go to the lowest centroid index. Distances use float32 products with float32
    accumulation over D (fmaf), so near-ties within float32 rounding may differ from the
    float64 CPU oracle.
    """
    cp = _cupy()
    x = _to_device_matrix(x, "x")
    centroids = _to_device_matrix(centroids, "centroids")
    check_same_dims(x, centroids)
    check_finite_centroids(centroids)
    n, d = x.shape
    k = centroids.shape[0]
    c_norm = _row_sq_norms(centroids)
    x_norm = _row_sq_norms(x)
    keys = cp.full(n, np.uint64(KEY_NONE), dtype=cp.uint64)
    grid_x, splits, k_per_split = assign_launch_config(n, k, _sm_count())
    _kernel("assign_partial")(
        (grid_x, splits),
        (THREADS,),
        (x, centroids, c_norm, keys, _i32(n), _i32(k), _i32(d), _i32(k_per_split)),
    )
    labels = cp.empty(n, dtype=cp.int64)
    min_d2 = cp.empty(n, dtype=cp.float32)
    _kernel("assign_finalize")((math.ceil(n / THREADS),), (THREADS,), (keys, x_norm, labels, min_d2, _i32(n)))
    return labels, min_d2


def update_centroids(x: Any, labels: Any, k: int) -> tuple[Any, Any]:
    """Per-cluster sums (float64 (K, D)) and counts (int64 (K,)) on the GPU, via atomics."""
    cp = _cupy()
    x = _to_device_matrix(x, "x")
    k = check_k(k)
    labels = cp.asarray(as_labels(labels, k, n=x.shape[0]))
    n, d = x.shape
    sums = cp.zeros((k, d), dtype=cp.float64)
    counts = cp.zeros(k, dtype=cp.uint64)
    block = 128 if d <= 128 else 256
    grid = min(n, _sm_count() * 32)
    _kernel("segment_sum")((grid,), (block,), (x, labels, sums, counts, _i32(n), _i32(d)))
    return sums, counts.view(cp.int64)


def histogram(labels: Any, k: int, weights: Any = None) -> Any:
    """Count (int64) or weight-sum (float64) of each id in ``[0, k)`` on the GPU."""
    cp = _cupy()
    k = check_k(k)
    labels = cp.asarray(as_labels(labels, k))
    n = labels.shape[0]
    grid = (max(1, min(math.ceil(n / THREADS), _sm_count() * 8)),)
    if weights is None:
        out = cp.zeros(k, dtype=cp.uint64)
        if n:
            _kernel("hist_count")(grid, (THREADS,), (labels, out, _i64(n)))
        return out.view(cp.int64)
    weights = cp.asarray(as_weights(weights, n))
    out = cp.zeros(k, dtype=cp.float64)
    if n:
        _kernel("hist_weighted")(grid, (THREADS,), (labels, weights, out, _i64(n)))
    return out
