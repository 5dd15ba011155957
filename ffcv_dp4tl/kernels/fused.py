"""Nearest-centroid assignment as ONE tensor-core GEMM whose epilogue keeps each row's best
candidates, so the N x K score matrix is never written (method ``fused-bf16``).

Why: the GEMM + epilogue path of :mod:`.cuda` writes an FP32 score block per row chunk and reads
it back (about 10 GB at 1.28M x 2000), which cost more than the tensor cores' arithmetic on the
first GPU check. Here every block multiplies 64 rows of ``x~`` (BF16) by 64-centroid tiles of
``c~`` with ``mma.sync.m16n8k16`` (BF16 in, FP32 accumulate; inline PTX, so NVRTC needs no
headers) and folds each 16 x 8 accumulator straight into per-row running values:

* ``L1, i1`` - the smallest lower bound ``s~_k - B_rk`` and its centroid, ``L2`` the second
  smallest, ``U`` the smallest upper bound ``s~_k + B_rk``, where ``s~_k = ||c_k||^2 - 2 x~.c~_k``
  and ``B_rk`` bounds ``|s~_k - s_k|`` rigorously (below). The true argmin ``j*`` always has
  ``s~_j* - B_rj* <= U``; when ``L2 > U`` only ``i1`` can, so the label is ``i1``, exactly as a
  float64 reference decides it. Otherwise (a near-tie, or an exact tie) the row is *flagged*.
* ``fused_finalize`` (one warp per row) computes the exact distance of the winner (FP64 sums of
  ``(x - c)^2``) and the votes; flagged rows are compacted and re-decided by the exact
  GEMM + re-check path (:func:`.cuda.assign_nearest_gemm`) on those rows only.

**The bound, per row r and centroid k** (``u = 2^-24``; ``gamma = D * 2^-23`` as in
:func:`.cuda.accumulation_bound`): ``x.c - x~.c~ = x.(c - c~) + (x - x~).c~``, and FP32
accumulation of exact BF16 products errs by at most ``gamma ||x~|| ||c~_k||``, so
``B_rk = 2 ||x|| dc_k + 2 (dx_r + gamma xa_r) ca_k + 2^-22 (||c_k||^2 + 2 xa_r ca_k)`` (the last
term: FP32 rounding of ``||c||^2`` and of the ``fma``), times 1.001 for the bound's own FP32
arithmetic, with ``dx = ||x - x~||``, ``dc_k = ||c_k - c~_k||``, ``xa >= ||x~||``,
``ca_k >= ||c~_k||``. Two things make it tighter than :mod:`.cuda`'s epilogue, which uses
``max_k`` of the centroid terms: it is **per centroid**, and when features or centroids are
stored exactly in BF16 (``dx = 0`` / ``dc = 0``, e.g. BF16 features from autocast) their input
terms vanish and only accumulation remains.

``prepare_rows`` rounds ``x`` once (padded BF16 copy, norms): :func:`..scoring.kmeans` keeps it
for all Lloyd iterations instead of rebuilding it every call.

Tested on the CPU by compiling this very source under ``tests/scoring/cuda_emu.h``, which
emulates ``mma.sync`` warp-collectively with the PTX fragment layout
(tests/scoring/test_kernels_fused.py).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import KernelInputError, array_module
from .cuda import _assign_inputs, _cupy, _i32, accumulation_bound, assign_nearest_gemm
from .cuda_source import DEVICE_HELPERS, THREADS

#: Rows per block (4 warps x 16 rows), centroids per tile, D step of one mma.
FBM, FBN, FBK = 64, 64, 16
FUSED_THREADS = 128
#: 1 + margin for the bound's own FP32 arithmetic.
BOUND_SLACK = 1.001

FUSED_SOURCE = r"""
typedef unsigned long long u64;
""" + DEVICE_HELPERS + r"""
#define FBM 64
#define FBN 64

#ifndef CUDA_EMU
/* D (16 x 8, FP32) += A (16 x 16, BF16, row-major) * B (16 x 8, BF16, col-major); PTX fragment
   layout, g = lane / 4, t = lane % 4: a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..],
   a3 = A[g+8][2t+8..]; b0 = B[2t..2t+1][g], b1 = B[2t+8..][g]; d0,d1 = D[g][2t..], d2,d3 = D[g+8][2t..]
   (the lower half of a register holds the lower index). */
__device__ __forceinline__ void mma_bf16_16816(float* d, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

/* One warp per row: BF16 copy into a (rows, ld) buffer (columns d..ld-1 zero), ||a||^2 and
   ||a - a~|| (FP64 sums): DEVICE_HELPERS' prep_rows. Rows n..n_pad-1 are zeroed by the caller. */
extern "C" __global__ void prep_pad_bf16(const float* __restrict__ a, unsigned short* __restrict__ out,
                                         float* __restrict__ norm2, float* __restrict__ dnorm,
                                         int n, int d, int ld) {
    prep_rows(a, out, norm2, dnorm, n, d, ld);
}

struct RowState { float l1, l2, u; int i1; };

__device__ __forceinline__ void take(RowState& st, float lo, float hi, int col) {
    st.u = fminf(st.u, hi);
    if (lo < st.l1 || (lo == st.l1 && col < st.i1)) { st.l2 = st.l1; st.l1 = lo; st.i1 = col; }
    else if (lo < st.l2) st.l2 = lo;
}

__device__ __forceinline__ void merge_lanes(RowState& st, int mask) {
    const float l1 = __shfl_xor_sync(0xffffffffu, st.l1, mask);
    const float l2 = __shfl_xor_sync(0xffffffffu, st.l2, mask);
    const float u = __shfl_xor_sync(0xffffffffu, st.u, mask);
    const int i1 = __shfl_xor_sync(0xffffffffu, st.i1, mask);
    st.u = fminf(st.u, u);
    if (l1 < st.l1 || (l1 == st.l1 && i1 < st.i1)) { st.l2 = fminf(st.l1, l2); st.l1 = l1; st.i1 = i1; }
    else st.l2 = fminf(st.l2, l1);
}

/* grid = n_pad / 64, block = 128 (4 warps x 16 rows). xr: (n_pad, ld) BF16, cr: (k_pad, ld) BF16
   (k_pad a multiple of 64, padding rows/columns zero). Per row: guess = i1, tie = (L2 <= U). */
extern "C" __global__ void fused_assign_bf16(const unsigned short* __restrict__ xr,
                                             const unsigned short* __restrict__ cr, int ld,
                                             const float* __restrict__ x_norm2,
                                             const float* __restrict__ x_dnorm,
                                             const float* __restrict__ c_norm2,
                                             const float* __restrict__ c_abs,
                                             const float* __restrict__ c_dnorm,
                                             int* __restrict__ guess, int* __restrict__ tie,
                                             int n, int k, float gamma, float scale) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const long long rows[2] = {(long long)blockIdx.x * FBM + warp * 16 + g,
                               (long long)blockIdx.x * FBM + warp * 16 + g + 8};
    float P[2], Q[2], E[2];
    RowState st[2];
    for (int h = 0; h < 2; ++h) {
        const long long r = rows[h] < n ? rows[h] : n - 1;     /* padding rows: any finite values */
        const float xn = sqrtf(x_norm2[r]), dx = x_dnorm[r];
        const float xa = xn * 1.0000002f + dx;                  /* >= ||x~|| */
        P[h] = scale * (2.f * (dx + gamma * xa) + 4.7683716e-7f * xa);   /* 2 * 2^-22 * xa */
        Q[h] = scale * 2.f * xn;
        E[h] = scale * 2.3841858e-7f;                                    /* 2^-22 */
        st[h].l1 = st[h].l2 = st[h].u = __int_as_float(0x7f800000);
        st[h].i1 = -1;
    }
    const unsigned* X = (const unsigned*)xr;
    const unsigned* C = (const unsigned*)cr;
    const long long ldw = ld / 2;                                /* 32-bit words per row */
    for (int c0 = 0; c0 < k; c0 += FBN) {
        float acc[8][4];
        for (int j = 0; j < 8; ++j)
            for (int q = 0; q < 4; ++q) acc[j][q] = 0.f;
        for (int w0 = t; w0 < ldw; w0 += 8) {                    /* 16 BF16 = 8 words per step */
            unsigned a[4];
            a[0] = X[rows[0] * ldw + w0];
            a[1] = X[rows[1] * ldw + w0];
            a[2] = X[rows[0] * ldw + w0 + 4];
            a[3] = X[rows[1] * ldw + w0 + 4];
            for (int j = 0; j < 8; ++j) {
                const long long cc = c0 + 8 * j + g;
                unsigned b[2];
                b[0] = C[cc * ldw + w0];
                b[1] = C[cc * ldw + w0 + 4];
                mma_bf16_16816(acc[j], a, b);
            }
        }
        for (int j = 0; j < 8; ++j) {
            for (int e = 0; e < 2; ++e) {
                const int col = c0 + 8 * j + 2 * t + e;
                if (col >= k) continue;
                const float cn2 = c_norm2[col], ca = c_abs[col], dc = c_dnorm[col];
                for (int h = 0; h < 2; ++h) {
                    const float s = fmaf(-2.f, acc[j][2 * h + e], cn2);
                    const float b = fmaf(P[h], ca, fmaf(Q[h], dc, E[h] * cn2));
                    take(st[h], s - b, s + b, col);
                }
            }
        }
    }
    for (int h = 0; h < 2; ++h) {
        merge_lanes(st[h], 1);
        merge_lanes(st[h], 2);
        if (t == 0 && rows[h] < n) {
            guess[rows[h]] = st[h].i1;
            tie[rows[h]] = !(st[h].l2 > st[h].u);      /* NaN-safe: anything unclear is re-checked */
        }
    }
}

/* One warp per row: label and exact distance (FP64 sum of (x - c)^2) of the unique candidate;
   rows with a tie get label -1 (the caller re-decides them exactly); NaN/Inf rows label 0, NaN. */
extern "C" __global__ void fused_finalize(const float* __restrict__ x, const float* __restrict__ c,
                                          const float* __restrict__ x_norm2,
                                          const int* __restrict__ guess, const int* __restrict__ tie,
                                          long long* __restrict__ labels, float* __restrict__ min_d2,
                                          u64* __restrict__ votes, int n, int d) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= n) return;                /* uniform per warp */
    const float xn2 = x_norm2[row];
    if ((xn2 - xn2) != 0.f) {
        if (lane == 0) { labels[row] = 0; min_d2[row] = __int_as_float(0x7fc00000); }
        return;
    }
    const int k = guess[row];
    if (tie[row] || k < 0) {
        if (lane == 0) labels[row] = -1;
        return;
    }
    const double acc = warp_exact_d2(x + row * (long long)d, c + (long long)k * d, d);
    if (lane == 0) {
        labels[row] = k;
        min_d2[row] = (float)acc;
        if (votes) atomicAdd(&votes[k], 1ULL);
    }
}
"""

FUSED_KERNELS = ("prep_pad_bf16", "fused_assign_bf16", "fused_finalize")


def padded(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def centroid_terms(c_norm2: Any, c_dnorm: Any) -> Any:
    """``ca_k >= ||c~_k||`` per centroid (float32, rounded up by a relative 2^-20 so the float32
    square root can never make the bound smaller); NumPy or CuPy."""
    xp = array_module(c_norm2)
    ca = (xp.sqrt(c_norm2.astype(xp.float64)) + c_dnorm.astype(xp.float64)) * (1.0 + 2.0**-20)
    return ca.astype(xp.float32)


def row_coefficients(x_norm2: np.ndarray, x_dnorm: np.ndarray, d: int, scale: float = 1.0) -> tuple:
    """``(P, Q, E)`` of the kernel's bound ``B_rk = P_r ca_k + Q_r dc_k + E ||c_k||^2`` (NumPy,
    float32 as the kernel computes them): for tests and the documentation of the bound."""
    f = np.float32
    s = f(scale * BOUND_SLACK)
    xn = np.sqrt(x_norm2.astype(f))
    xa = xn * f(1.0000002) + x_dnorm.astype(f)
    gamma = f(accumulation_bound(d))
    return s * (f(2) * (x_dnorm + gamma * xa) + f(4.7683716e-7) * xa), s * f(2) * xn, s * f(2.3841858e-7)


@functools.lru_cache(maxsize=None)
def _module():
    return _cupy().RawModule(code=FUSED_SOURCE)


def _kernel(name: str):
    return _module().get_function(name)


@dataclass
class PreparedRows:
    """``x`` rounded once to BF16 in the fused kernel's padded layout, with the norms the bound
    needs. Build with :func:`prepare_rows`; valid while ``x`` is not modified."""

    x: Any  # the float32 rows (CuPy), kept for the exact distances
    xr: Any  # (n_pad, ld) uint16 BF16 bits
    norm2: Any
    dnorm: Any
    ld: int


def _prep_pad(a, rows_pad: int, ld: int):
    cp = _cupy()
    n, d = a.shape
    out = cp.zeros((rows_pad, ld), dtype=cp.uint16)
    norm2 = cp.empty(n, dtype=cp.float32)
    dnorm = cp.empty(n, dtype=cp.float32)
    warps = THREADS // 32
    _kernel("prep_pad_bf16")((math.ceil(n / warps),), (THREADS,), (a, out, norm2, dnorm, _i32(n), _i32(d), _i32(ld)))
    return out, norm2, dnorm


def prepare_rows(x: Any) -> PreparedRows:
    """Round ``x`` (N, D) to BF16 once (the GEMM's format), padded to 64 rows / 16 columns."""
    cp = _cupy()
    x = cp.ascontiguousarray(cp.asarray(x, dtype=cp.float32))
    n, d = x.shape
    ld = padded(d, FBK)
    xr, norm2, dnorm = _prep_pad(x, padded(n, FBM), ld)
    return PreparedRows(x, xr, norm2, dnorm, ld)


def assign_nearest_fused(x: Any, centroids: Any, *, prepared: PreparedRows | None = None, votes: Any = None,
                         bound_scale: float = 1.0, return_ties: bool = False):
    """Same contract as :func:`.cuda.assign_nearest_gemm` (labels equal a float64 reference, exact
    ties to the lowest index, exact distances, NaN for non-finite rows), without an N x K matrix.

    ``prepared``: :func:`prepare_rows` of ``x`` (k-means passes it every iteration, so ``x`` is
    rounded once). ``return_ties`` adds the number of rows re-decided exactly.
    """
    cp = _cupy()
    x, centroids = _assign_inputs(x, centroids)
    n, d = x.shape
    k = centroids.shape[0]
    if prepared is None:
        prepared = prepare_rows(x)
    elif prepared.x.shape != x.shape or prepared.x.data.ptr != x.data.ptr:
        raise KernelInputError("prepared rows belong to another x; call prepare_rows(x) for this one")
    ld = prepared.ld
    cr, c_norm2, c_dnorm = _prep_pad(centroids, padded(k, FBN), ld)
    c_abs = centroid_terms(c_norm2, c_dnorm)
    guess = cp.empty(n, dtype=cp.int32)
    tie = cp.empty(n, dtype=cp.int32)
    scale = np.float32(bound_scale * BOUND_SLACK)
    _kernel("fused_assign_bf16")(
        (prepared.xr.shape[0] // FBM,), (FUSED_THREADS,),
        (prepared.xr, cr, _i32(ld), prepared.norm2, prepared.dnorm, c_norm2, c_abs, c_dnorm, guess, tie,
         _i32(n), _i32(k), np.float32(accumulation_bound(d)), scale))
    labels = cp.empty(n, dtype=cp.int64)
    min_d2 = cp.empty(n, dtype=cp.float32)
    warps = THREADS // 32
    _kernel("fused_finalize")((math.ceil(n / warps),), (THREADS,),
                              (x, centroids, prepared.norm2, guess, tie, labels, min_d2,
                               0 if votes is None else votes, _i32(n), _i32(d)))
    redo = cp.flatnonzero(labels < 0)
    if redo.size:
        lab, dd = assign_nearest_gemm(x[redo], centroids, precision="bf16", votes=votes)
        labels[redo] = lab
        min_d2[redo] = dd
    if return_ties:
        return labels, min_d2, int(redo.size)
    return labels, min_d2
