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

**Tensor-core path** (``assign_nearest_gemm``, methods ``gemm-tf32`` / ``gemm-bf16``): the FP32
SIMT kernel above cannot reach tensor-core speed, so rows are processed in chunks whose FP32
score block (rows x K) stays in L2: ``prep_rows_*`` rounds x and the centroids to TF32/BF16 and
measures each row's rounding error exactly, cuBLAS ``GemmEx`` computes ``x~ . c~`` on tensor
cores, and ``gemm_epilogue`` (one warp per row) adds the norms, takes the approximate argmin,
and re-decides every centroid within twice a rigorous per-row error bound of it with exact
distances (FP64 sums of ``(x - c)^2``). Labels are then those of a float64 reference (exact
ties: lowest index) and distances exact, at GEMM speed; only rows with near-ties pay for the
re-check (tests/scoring/test_kernels_gemm.py shows the bound is needed and sufficient).
``assign(method="auto")`` times each method once per problem size and keeps the fastest.

``segment_sum`` (centroid update) and ``hist_*`` use float64 / uint64 ``atomicAdd``: counts
are exact, float64 sums differ from a sequential sum only by float64 rounding (the order of
atomics is not deterministic). ``segment_sum_sorted`` (the default update) sums rows sorted by
label in registers and issues one atomic per label change instead of one per element.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from .checks import (
    array_module,
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

#: Device helpers shared by SOURCE and the fused tensor-core kernel (``fused.FUSED_SOURCE``):
#: the rounding to the GEMM formats and warp reductions. One definition, two modules.
DEVICE_HELPERS = r"""
__device__ __forceinline__ float round_tf32(float f) {
    /* nearest TF32 (10 explicit mantissa bits), ties away from zero, as cvt.rna.tf32.f32 */
    return __uint_as_float((__float_as_uint(f) + 0x1000u) & 0xffffe000u);
}

__device__ __forceinline__ unsigned short round_bf16_bits(float f) {
    /* nearest BF16, ties to even (finite inputs; non-finite rows are rejected downstream) */
    const unsigned int u = __float_as_uint(f);
    return (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float bf16_bits_to_float(unsigned short b) {
    return __uint_as_float(((unsigned int)b) << 16);
}

__device__ __forceinline__ double warp_sum(double v) {
    /* xor butterfly: every lane ends with the bit-identical sum (a + b == b + a) */
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

__device__ __forceinline__ float warp_min(float v) {
    for (int off = 16; off > 0; off >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

/* The GEMM's input format: TF32 kept in a float (low 13 bits zero), BF16 as its 16 bits. */
__device__ __forceinline__ void round_to(float v, float* out) { *out = round_tf32(v); }
__device__ __forceinline__ float as_float(float r) { return r; }
__device__ __forceinline__ void round_to(float v, unsigned short* out) { *out = round_bf16_bits(v); }
__device__ __forceinline__ float as_float(unsigned short b) { return bf16_bits_to_float(b); }

"""

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

/* ---- tensor-core path: cuBLAS GEMM (TF32 or BF16 inputs, FP32 out) + this epilogue ---------
   The GEMM sees inputs rounded *here* (round-to-nearest), so its products are exact and the only
   errors are (a) the input rounding, bounded per row/centroid by ||x - x~|| and ||c - c~|| which
   prep_rows measures exactly, and (b) FP32 accumulation, bounded by gamma * ||x~|| ||c~||.
   gemm_epilogue turns that into a per-row bound B on |approx score - exact score|, keeps every
   centroid whose approximate score is within 2B of the approximate best (the true argmin is
   always among them), and decides among those candidates with exact distances (FP32 inputs,
   FP64 accumulation of (x - c)^2). Labels therefore equal a float64 reference (exact ties: the
   lowest index), and min_d2 is the exact distance, whatever precision the GEMM used. */

""" + DEVICE_HELPERS + r"""
/* One warp per row: write the rounded row, ||a||^2 and ||a - round(a)|| (FP64 sums). */
template <class Out>
__device__ __forceinline__ void prep_rows(const float* __restrict__ a, Out* __restrict__ out,
                                          float* __restrict__ norm2, float* __restrict__ dnorm,
                                          int n, int d) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= n) return;
    const float* p = a + row * (long long)d;
    Out* q = out + row * (long long)d;
    double s = 0.0, e = 0.0;
    for (int j = lane; j < d; j += 32) {
        const float v = p[j];
        round_to(v, &q[j]);
        s += (double)v * (double)v;
        const double t = (double)v - (double)as_float(q[j]);
        e += t * t;
    }
    s = warp_sum(s);
    e = warp_sum(e);
    if (lane == 0) { norm2[row] = (float)s; dnorm[row] = (float)sqrt(e); }
}

extern "C" __global__ void prep_rows_tf32(const float* __restrict__ a, float* __restrict__ out,
                                          float* __restrict__ norm2, float* __restrict__ dnorm,
                                          int n, int d) {
    prep_rows(a, out, norm2, dnorm, n, d);
}

extern "C" __global__ void prep_rows_bf16(const float* __restrict__ a, unsigned short* __restrict__ out,
                                          float* __restrict__ norm2, float* __restrict__ dnorm,
                                          int n, int d) {
    prep_rows(a, out, norm2, dnorm, n, d);
}

/* One warp per row of a chunk. scores[r * ld + k] = x~_r . c~_k from the GEMM.
   cmax = max ||c~_k|| (>= max ||c_k|| up to rounding), dcmax = max ||c_k - c~_k||,
   cnmax = max ||c_k||^2, gamma = FP32 accumulation bound (D * 2^-23).
   votes (nullable) gets one atomicAdd per finite row; ncand = candidates checked exactly. */
extern "C" __global__ void gemm_epilogue(const float* __restrict__ scores, int ld,
                                         const float* __restrict__ c_norm2,
                                         const float* __restrict__ x, const float* __restrict__ c,
                                         const float* __restrict__ x_norm2,
                                         const float* __restrict__ x_dnorm,
                                         long long* __restrict__ labels, float* __restrict__ min_d2,
                                         int* __restrict__ ncand, u64* __restrict__ votes,
                                         int rows, int k, int d, float cmax, float dcmax,
                                         float cnmax, float gamma, float bound_scale) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;            /* uniform per warp */
    const float xn2 = x_norm2[row];
    if ((xn2 - xn2) != 0.f) {           /* NaN/Inf in the row: NaN distance, label 0 */
        if (lane == 0) { labels[row] = 0; min_d2[row] = __int_as_float(0x7fc00000); ncand[row] = 0; }
        return;
    }
    const float* s = scores + row * (long long)ld;
    float best = __int_as_float(0x7f800000);
    for (int q = lane; q < k; q += 32) best = fminf(best, fmaf(-2.f, s[q], c_norm2[q]));
    best = warp_min(best);
    const float xn = sqrtf(xn2);
    const float xa = xn + x_dnorm[row];  /* >= ||x~|| */
    /* |approx - exact| of ||c||^2 - 2 x.c, for every centroid; 1.0001 absorbs this FP32 sum */
    const float bound = bound_scale * 1.0001f *
        (2.f * (xn * dcmax + x_dnorm[row] * cmax)       /* input rounding */
         + 2.f * gamma * xa * cmax                       /* FP32 accumulation in the GEMM */
         + 2.4e-7f * (cnmax + 2.f * xa * cmax));         /* ||c||^2 - 2 g in FP32 here */
    const float thr = best + 2.f * bound;

    const float* xp = x + row * (long long)d;
    double best_d = (double)__int_as_float(0x7f800000);  /* +inf */
    long long best_k = -1;
    int count = 0;
    for (int base = 0; base < k; base += 32) {
        const int q = base + lane;
        const bool cand = q < k && fmaf(-2.f, s[q], c_norm2[q]) <= thr;
        unsigned int m = __ballot_sync(0xffffffffu, cand);
        while (m) {                     /* warp-uniform: candidates in increasing index order */
            const int qc = base + __ffs(m) - 1;
            m &= m - 1;
            const float* cp = c + (long long)qc * d;
            double acc = 0.0;
            for (int j = lane; j < d; j += 32) {
                const double t = (double)xp[j] - (double)cp[j];
                acc += t * t;
            }
            acc = warp_sum(acc);
            if (acc < best_d) { best_d = acc; best_k = qc; }   /* strict: lowest index wins ties */
            ++count;
        }
    }
    if (lane == 0) {
        if (best_k < 0) {               /* unreachable for finite rows; never emit a bad index */
            labels[row] = 0; min_d2[row] = __int_as_float(0x7fc00000);
        } else {
            labels[row] = best_k;
            min_d2[row] = (float)best_d;
            if (votes) atomicAdd(&votes[best_k], 1ULL);
        }
        ncand[row] = count;
    }
}

/* Centroid sums over rows sorted by label (order = argsort(labels)): each block sums a run of
   rows_per_block sorted rows per column in FP64 and flushes one atomicAdd per label change,
   i.e. ~(n / rows_per_block + k) * d atomics instead of one per element (segment_sum). */
extern "C" __global__ void segment_sum_sorted(const float* __restrict__ x,
                                              const long long* __restrict__ order,
                                              const long long* __restrict__ sorted_labels,
                                              double* __restrict__ sums, long long n, int d,
                                              int rows_per_block) {
    const long long beg = (long long)blockIdx.x * rows_per_block;
    if (beg >= n) return;
    const long long end = min(n, beg + (long long)rows_per_block);
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        long long cur = sorted_labels[beg];
        double acc = 0.0;
        for (long long p = beg; p < end; ++p) {
            const long long lab = sorted_labels[p];
            if (lab != cur) { atomicAdd(&sums[cur * d + j], acc); acc = 0.0; cur = lab; }
            acc += (double)x[order[p] * (long long)d + j];
        }
        atomicAdd(&sums[cur * d + j], acc);
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
    "prep_rows_tf32",
    "prep_rows_bf16",
    "gemm_epilogue",
    "segment_sum_sorted",
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


def _assign_inputs(x: Any, centroids: Any) -> tuple[Any, Any]:
    """Both assignment paths' inputs: C-contiguous float32 on the device, same D, finite centroids."""
    x = _to_device_matrix(x, "x")
    centroids = _to_device_matrix(centroids, "centroids")
    check_same_dims(x, centroids)
    check_finite_centroids(centroids)
    return x, centroids


def assign_nearest(x: Any, centroids: Any) -> tuple[Any, Any]:
    """Nearest centroid per row on the GPU: ``(labels int64 (N,), min_dist2 float32 (N,))``.

    Inputs may be NumPy (copied to the device) or CuPy arrays; outputs are CuPy arrays.
    Exact ties go to the lowest centroid index. Distances use float32 products with float32
    accumulation over D (fmaf), so near-ties within float32 rounding may differ from the
    float64 CPU oracle.
    """
    cp = _cupy()
    x, centroids = _assign_inputs(x, centroids)
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


# ---------------------------------------------------------------------------------------------
# Tensor-core assignment: row-chunked cuBLAS GEMM + gemm_epilogue, and the method chooser.
# ---------------------------------------------------------------------------------------------
#: Assignment methods on CUDA. ``simt`` is the fused kernel above; ``gemm-*`` round the inputs to
#: TF32/BF16, run cuBLAS on tensor cores and decide near-ties exactly in ``gemm_epilogue``;
#: ``fused-bf16`` (:mod:`.fused`) is one mma.sync GEMM whose epilogue keeps each row's best
#: candidates (no N x K matrix) and re-decides only the flagged rows with ``gemm-bf16``.
ASSIGN_METHODS = ("auto", "simt", "gemm-tf32", "gemm-bf16", "fused-bf16")
#: Bytes of the (rows x K) FP32 score block per GEMM chunk. Measured on an H100 (BENCHMARKS.md,
#: GPU check; 1.28M x 512, K=2000): 8 / 32 / 128 MiB chunks took 112 / 33 / 21 ms (BF16), so the
#: per-chunk launch cost outweighs keeping the block in L2; 128 MiB is the fastest size measured.
GEMM_CHUNK_BYTES = 128 * 2**20
#: Rows used to time each method once when ``method="auto"`` (see :func:`choose_method`).
AUTO_PROBE_ROWS = 131_072
#: Below this many row x centroid pairs ``auto`` takes ``simt`` without measuring.
AUTO_MIN_WORK = 2**22

_CUDA_R_32F, _CUDA_R_16BF = 0, 14
_COMPUTE_32F_FAST_16BF, _COMPUTE_32F_FAST_TF32 = 75, 77
_GEMM_DEFAULT = -1
_OP_N, _OP_T = 0, 1
_WARPS = THREADS // 32


def _cublas():
    """CuPy's thin cuBLAS binding (its module moved between CuPy releases)."""
    try:
        from cupy_backends.cuda.libs import cublas
    except ImportError:  # pragma: no cover - depends on the CuPy release
        from cupy.cuda import cublas
    return cublas


def gemm_chunk_rows(n: int, k: int, chunk_bytes: int | None = None) -> int:
    """Rows per GEMM chunk so one FP32 (rows x k) score block is about ``chunk_bytes``."""
    b = GEMM_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    rows = max(256, (b // (4 * k)) // 256 * 256)
    return max(1, min(n, rows))


def accumulation_bound(d: int) -> float:
    """Relative bound on FP32 accumulation of ``d`` exact products (``d * 2^-23``: the textbook
    ``d * u`` with ``u = 2^-24``, doubled to cover tensor cores that truncate instead of round)."""
    return d * 2.0**-23


def bound_scalars(c_norm2: Any, c_dnorm: Any) -> tuple[float, float, float]:
    """``(max ||c~||, max ||c - c~||, max ||c||^2)`` over the centroids: the centroid side of the
    epilogue's error bound (``||c~|| <= ||c|| + ||c - c~||``). One host sync (K values, not N)."""
    xp = array_module(c_norm2)
    c_abs = xp.sqrt(c_norm2.astype(xp.float64)) + c_dnorm
    vals = xp.stack([c_abs.max(), c_dnorm.astype(xp.float64).max(), c_norm2.astype(xp.float64).max()])
    return tuple(float(v) for v in (vals.get() if hasattr(vals, "get") else vals))


def _prep_rows(a, precision: str):
    """(rounded copy for the GEMM, ||a||^2 float32, ||a - rounded|| float32) of every row."""
    cp = _cupy()
    n, d = a.shape
    out = cp.empty((n, d), dtype=cp.float32 if precision == "tf32" else cp.uint16)
    norm2 = cp.empty(n, dtype=cp.float32)
    dnorm = cp.empty(n, dtype=cp.float32)
    _kernel(f"prep_rows_{precision}")((math.ceil(n / _WARPS),), (THREADS,), (a, out, norm2, dnorm, _i32(n), _i32(d)))
    return out, norm2, dnorm


def _gemm_into(scores, xr, cr, precision: str) -> None:
    """``scores (rows, K) = xr (rows, D) @ cr (K, D)^T`` in FP32 on tensor cores (cuBLAS GemmEx).

    Row-major trick: cuBLAS is column-major, so it computes ``scores^T = cr . xr^T`` with
    ``cr`` read transposed; no copy of either operand is made.
    """
    cp = _cupy()
    cublas = _cublas()
    rows, d = xr.shape
    k = cr.shape[0]
    handle = cp.cuda.device.get_cublas_handle()
    dtype = _CUDA_R_32F if precision == "tf32" else _CUDA_R_16BF
    compute = _COMPUTE_32F_FAST_TF32 if precision == "tf32" else _COMPUTE_32F_FAST_16BF
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    mode = cublas.getPointerMode(handle)
    cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
    try:
        cublas.gemmEx(handle, _OP_T, _OP_N, k, rows, d, one.ctypes.data, cr.data.ptr, dtype, d,
                      xr.data.ptr, dtype, d, zero.ctypes.data, scores.data.ptr, _CUDA_R_32F, k,
                      compute, _GEMM_DEFAULT)
    finally:
        cublas.setPointerMode(handle, mode)


def assign_nearest_gemm(x: Any, centroids: Any, *, precision: str = "tf32", chunk_rows: int | None = None,
                        votes: Any = None, bound_scale: float = 1.0, return_candidates: bool = False):
    """Nearest centroid per row via tensor-core GEMM + exact re-check of near-ties.

    Same contract as :func:`assign_nearest` (int64 labels, float32 squared distances, exact ties
    to the lowest index, NaN distance for non-finite rows) and *tighter* results: labels equal a
    float64 reference except exact float64 ties, and distances are exact (FP64 sums of
    ``(x - c)^2``), whatever ``precision`` the GEMM ran in. ``votes`` (CuPy uint64/int64 (K,),
    optional) is incremented once per finite row at its label. ``bound_scale`` multiplies the
    error bound; anything but 1.0 is for tests that show the re-check is needed.
    ``return_candidates`` adds the per-row count of centroids decided exactly.
    """
    if precision not in ("tf32", "bf16"):
        raise ValueError(f"precision must be 'tf32' or 'bf16', got {precision!r}")
    cp = _cupy()
    x, centroids = _assign_inputs(x, centroids)
    n, d = x.shape
    k = centroids.shape[0]
    cr, c_norm2, c_dnorm = _prep_rows(centroids, precision)
    cmax, dcmax, cnmax = bound_scalars(c_norm2, c_dnorm)
    xr, x_norm2, x_dnorm = _prep_rows(x, precision)
    labels = cp.empty(n, dtype=cp.int64)
    min_d2 = cp.empty(n, dtype=cp.float32)
    ncand = cp.empty(n, dtype=cp.int32)
    vote_ptr = 0 if votes is None else votes
    rows = chunk_rows or gemm_chunk_rows(n, k)
    scores = cp.empty((min(rows, n), k), dtype=cp.float32)
    gamma = accumulation_bound(d)
    epilogue = _kernel("gemm_epilogue")
    for start in range(0, n, rows):
        m = min(rows, n - start)
        sc = scores[:m]
        _gemm_into(sc, xr[start:start + m], cr, precision)
        epilogue((math.ceil(m / _WARPS),), (THREADS,),
                 (sc, _i32(k), c_norm2, x[start:], centroids, x_norm2[start:], x_dnorm[start:],
                  labels[start:], min_d2[start:], ncand[start:], vote_ptr, _i32(m), _i32(k), _i32(d),
                  np.float32(cmax), np.float32(dcmax), np.float32(cnmax), np.float32(gamma),
                  np.float32(bound_scale)))
    if return_candidates:
        return labels, min_d2, ncand
    return labels, min_d2


def update_centroids_sorted(x: Any, labels: Any, k: int, rows_per_block: int = 256) -> tuple[Any, Any]:
    """Per-cluster sums/counts from rows sorted by label (few atomics; see ``segment_sum_sorted``)."""
    cp = _cupy()
    x = _to_device_matrix(x, "x")
    k = check_k(k)
    labels = cp.asarray(as_labels(labels, k, n=x.shape[0]))
    n, d = x.shape
    order = cp.argsort(labels)
    sorted_labels = labels[order]
    sums = cp.zeros((k, d), dtype=cp.float64)
    grid = math.ceil(n / rows_per_block)
    block = 128 if d <= 128 else 256
    _kernel("segment_sum_sorted")((grid,), (block,), (x, order, sorted_labels, sums, _i64(n), _i32(d),
                                                      _i32(rows_per_block)))
    return sums, histogram(labels, k)


_METHOD_CACHE: dict[tuple[int, int, int, int], str] = {}


def _n_bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _run_method(method: str, x, centroids, prepared=None):
    if method == "simt":
        return assign_nearest(x, centroids)
    if method == "fused-bf16":
        from .fused import assign_nearest_fused

        return assign_nearest_fused(x, centroids, prepared=prepared)
    return assign_nearest_gemm(x, centroids, precision=method.split("-")[1])


def assigner(x: Any, method: str = "auto"):
    """``centroids -> (labels, min_d2)`` for a fixed ``x`` (k-means: one ``x``, many centroid
    sets). The method is chosen on the first call (``auto``: measured, as :func:`assign`); the
    fused method then rounds ``x`` to BF16 once (:func:`.fused.prepare_rows`) for every call."""
    if method not in ASSIGN_METHODS:
        raise ValueError(f"method must be one of {', '.join(ASSIGN_METHODS)}, got {method!r}")
    x = _to_device_matrix(x, "x")
    state: dict[str, Any] = {}

    def run(centroids):
        xx, c = _assign_inputs(x, centroids)
        if "method" not in state:
            state["method"] = choose_method(xx, c) if method == "auto" else method
            if state["method"] == "fused-bf16":
                from .fused import prepare_rows

                state["prepared"] = prepare_rows(xx)
        return _run_method(state["method"], xx, c, state.get("prepared"))

    run.x = x  # the device copy (callers keep using it instead of copying x again)
    return run


def choose_method(x: Any, centroids: Any) -> str:
    """The fastest assignment method for this problem size on this GPU, measured once.

    Times every method on the first ``AUTO_PROBE_ROWS`` rows (one warm-up, then the best of
    two CUDA-event timings) and caches the winner per (device, power-of-two N, K, D). Tiny
    problems take ``simt`` unmeasured. A method that fails (e.g. no cuBLAS GemmEx in this
    CuPy) is skipped, so ``auto`` always returns a working method.
    """
    cp = _cupy()
    n, d = x.shape
    k = centroids.shape[0]
    if n * k < AUTO_MIN_WORK:
        return "simt"
    key = (cp.cuda.Device().id, _n_bucket(n), k, d)
    if key in _METHOD_CACHE:
        return _METHOD_CACHE[key]
    probe = x[: min(n, AUTO_PROBE_ROWS)]
    best, best_t = "simt", float("inf")
    for method in ASSIGN_METHODS[1:]:
        try:
            _run_method(method, probe, centroids)
            times = []
            for _ in range(2):
                start, end = cp.cuda.Event(), cp.cuda.Event()
                start.record()
                _run_method(method, probe, centroids)
                end.record()
                end.synchronize()
                times.append(cp.cuda.get_elapsed_time(start, end))
        except Exception:  # noqa: BLE001 - a method unavailable here is simply not chosen
            continue
        if min(times) < best_t:
            best, best_t = method, min(times)
    _METHOD_CACHE[key] = best
    return best


def assign(x: Any, centroids: Any, method: str = "auto") -> tuple[Any, Any]:
    """Dispatch :func:`assign_nearest` (``simt``) or :func:`assign_nearest_gemm` by ``method``."""
    if method not in ASSIGN_METHODS:
        raise ValueError(f"method must be one of {', '.join(ASSIGN_METHODS)}, got {method!r}")
    x, centroids = _assign_inputs(x, centroids)
    if method == "auto":
        method = choose_method(x, centroids)
    return _run_method(method, x, centroids)
