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

**Four kernels, same decisions.** ``fused_assign_bf16`` (``kernel="direct"``) loads every mma
fragment straight from global memory, relying on L1/L2. ``fused_assign_bf16_tiled``
(``kernel="tiled"``, method ``fused-bf16-tiled``) is the usual next step for a tensor-core GEMM:
a block keeps its 128 rows of ``x~`` in shared memory for the whole run and streams 128-centroid
tiles of ``c~`` through a ring of ``cp.async`` stages, with ``ldmatrix`` feeding the mma
fragments, so global/L2 traffic is ``c~`` once per 128 rows instead of fragment-sized scattered
loads. ``fused_assign_bf16_tiled3`` (``kernel="tiled3"``, method ``fused-bf16-tiled3``) is the
same with three stages instead of two: each stage's copy is issued two stages ahead.
``fused_assign_bf16_tiled64`` (``kernel="tiled64"``) keeps 64 rows a block instead of 128, so a
block needs 95 KiB and at most 128 registers a thread, and two blocks fit an sm_90 SM. Why all of
them: the compiler's report (benchmarks/kernel_report.py) gives the 128-row kernels one block of
8 warps per SM, 2 per scheduler, so little else can issue while a warp waits for its stage; a
deeper ring or twice the warps (at the price of more ``ldmatrix`` per mma and ``c~`` read once
per 64 rows) are the two remedies, and which pays is a GPU measurement (the ``fm`` stage of
scripts/gpu_check.sh times every kernel, ``kernels`` profiles them; ``auto`` measures them all).
Shared memory limits D (:func:`tiled_smem_bytes`): ``tiled`` D <= 560 on sm_80, 816 on sm_90;
``tiled3`` D <= 512 / 768; ``tiled64`` D <= 1,056 / 1,568 (two blocks per sm_90 SM up to 656).

Tested on the CPU by compiling this very source under ``tests/scoring/cuda_emu.h``, which
emulates ``mma.sync`` and ``ldmatrix`` warp-collectively with the PTX fragment layout and
``cp.async`` as a copy deferred to the wait (tests/scoring/test_kernels_fused.py).
"""
from __future__ import annotations

import contextlib
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
#: The tiled kernels (rows per block: TILED_KERNELS): centroids per streamed tile, D columns per
#: stage, padding halves per shared row, threads (8 warps).
TBN, TBK, TPAD = 128, 32, 8
TILED_THREADS = 256


@dataclass(frozen=True)
class TiledKernel:
    """One instance of the tiled template in FUSED_SOURCE (generated from this table): its name,
    cp.async stages, rows of ``x~`` per block (kept in shared memory; 64 x the m16 tiles of each
    row warp) and the blocks per SM it is compiled for (``__launch_bounds__``: 2 caps a thread
    at 128 registers so that two blocks fit an SM)."""

    name: str
    stages: int
    rows: int
    min_blocks: int


#: The tiled kernels: ``tiled`` (the H200 run's 128-row design, 2 stages), ``tiled3`` (a 3-stage ring) and
#: ``tiled64`` (3 stages, 64 rows a block and two blocks per SM: 16 resident warps, not 8).
TILED_KERNELS = {
    "tiled": TiledKernel("fused_assign_bf16_tiled", 2, 128, 1),
    "tiled3": TiledKernel("fused_assign_bf16_tiled3", 3, 128, 1),
    "tiled64": TiledKernel("fused_assign_bf16_tiled64", 3, 64, 2),
}
#: The kernels of :func:`assign_nearest_fused`: ``direct`` loads mma fragments straight from
#: global memory (L1/L2); the tiled ones stage them through shared memory (ldmatrix, a ring of
#: cp.async stages).
FUSED_KERNEL_KINDS = ("direct", *TILED_KERNELS)
#: ``x~`` is padded to a multiple of this many rows, so either kernel can use one prepared copy.
ROWS_MULTIPLE = max(FBM, *(t.rows for t in TILED_KERNELS.values()))


def centroid_multiple(kernel: str) -> int:
    """``c~`` is padded to a multiple of this many rows (the kernel's centroid tile)."""
    return TBN if kernel in TILED_KERNELS else FBN
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

/* Fold another partial state (other columns of the same row) into st. */
__device__ __forceinline__ void merge_state(RowState& st, float l1, float l2, float u, int i1) {
    st.u = fminf(st.u, u);
    if (l1 < st.l1 || (l1 == st.l1 && i1 < st.i1)) { st.l2 = fminf(st.l1, l2); st.l1 = l1; st.i1 = i1; }
    else st.l2 = fminf(st.l2, l1);
}

__device__ __forceinline__ void merge_lanes(RowState& st, int mask) {
    const float l1 = __shfl_xor_sync(0xffffffffu, st.l1, mask);
    const float l2 = __shfl_xor_sync(0xffffffffu, st.l2, mask);
    const float u = __shfl_xor_sync(0xffffffffu, st.u, mask);
    const int i1 = __shfl_xor_sync(0xffffffffu, st.i1, mask);
    merge_state(st, l1, l2, u, i1);
}

/* The bound's per-row coefficients (B_rk = P ca_k + Q dc_k + E ||c_k||^2) and an empty state. */
__device__ __forceinline__ void row_setup(const float* __restrict__ x_norm2, const float* __restrict__ x_dnorm,
                                          long long row, int n, float gamma, float scale,
                                          float& P, float& Q, RowState& st) {
    const long long r = row < n ? row : n - 1;              /* padding rows: any finite values */
    const float xn = sqrtf(x_norm2[r]), dx = x_dnorm[r];
    const float xa = xn * 1.0000002f + dx;                  /* >= ||x~|| */
    P = scale * (2.f * (dx + gamma * xa) + 4.7683716e-7f * xa);   /* 2 * 2^-22 * xa */
    Q = scale * 2.f * xn;
    st.l1 = st.l2 = st.u = __int_as_float(0x7f800000);
    st.i1 = -1;
}

/* Fold one accumulator value (x~.c~ of a row and centroid col) into the row's state. */
__device__ __forceinline__ void fold(RowState& st, float dot, float P, float Q, float E,
                                     float cn2, float ca, float dc, int col) {
    const float s = fmaf(-2.f, dot, cn2);
    const float b = fmaf(P, ca, fmaf(Q, dc, E * cn2));
    take(st, s - b, s + b, col);
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
    const float E = scale * 2.3841858e-7f;                       /* 2^-22 */
    float P[2], Q[2];
    RowState st[2];
    for (int h = 0; h < 2; ++h) row_setup(x_norm2, x_dnorm, rows[h], n, gamma, scale, P[h], Q[h], st[h]);
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
                for (int h = 0; h < 2; ++h) fold(st[h], acc[j][2 * h + e], P[h], Q[h], E, cn2, ca, dc, col);
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

/* ---- The tiled variants: shared-memory staging, ldmatrix, a ring of cp.async stages ---------
   Block = 256 threads = 8 warps, BM = 64 * MI rows (128 or 64); the block's rows of x~ (whole D)
   are copied to shared memory ONCE and stay there, while 128-centroid tiles of c~ stream through a ring of NST
   TBN x TBK stages (cp.async): stage s + NST - 1 loads while the tensor cores work on stage s.
   Warp (wr, wc) = (warp & 3, warp >> 2) owns rows wr*16*MI..+16*MI-1 and centroids wc*64..+63 of
   each tile: per 16-wide D step, MI + 4 ldmatrix.x4 feed 8 * MI mma. One barrier per stage: after it, stage
   s is visible to every thread AND every warp has finished stage s - 1, whose buffer is the one
   refilled next. The two column halves of a row are merged through shared memory at the end.
   Shared rows are padded by TPAD halves so the 8 row addresses of one ldmatrix fall in distinct
   banks. Needs BM * (ld + TPAD) * 2 + NST * TBN * TLDB * 2 bytes of dynamic shared memory
   (tiled_smem_bytes). The instances are generated from TILED_KERNELS (@TILED_INSTANCES@ below). */
@TILED_DEFINES@
#ifndef CUDA_EMU
__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;\n" : "=l"(a) : "l"(p));
    return (unsigned)a;
}
/* Four 8x8 BF16 matrices: lanes 8i..8i+7 give matrix i's row addresses; each lane gets, per
   matrix, the two halves at row lane/4, columns 2*(lane%4) and +1 (the mma fragment layout). */
__device__ __forceinline__ void ldsm_x4(unsigned* r, const unsigned short* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
__device__ __forceinline__ void cp_async16(unsigned short* s, const unsigned short* g) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" :: "r"(smem_u32(s)), "l"(g) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
/* Wait until at most N of this thread's committed groups are still in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
}
#endif

/* Stage rows c0..c0+TBN-1, columns k0..k0+TBK-1 of c~ into dst (TBN x TLDB): thread (crow, seg)
   copies the 16-byte piece seg of rows crow, crow + TROWS, ... (TBN / TROWS rows); on a partial
   last D stage (ld - k0 = 16) the pieces past ld are skipped. */
#define TSEGS (TBK / 8)
#define TROWS (TTHREADS / TSEGS)
__device__ __forceinline__ void load_c_stage(unsigned short* dst, const unsigned short* __restrict__ cr,
                                             int ld, int c0, int k0, int crow, int seg) {
    if (k0 + seg * 8 < ld) {
        const unsigned short* src = cr + (long long)(c0 + crow) * ld + k0 + seg * 8;
        unsigned short* d = dst + crow * TLDB + seg * 8;
        for (int p = 0; p < TBN / TROWS; ++p)
            cp_async16(d + p * TROWS * TLDB, src + (long long)p * TROWS * ld);
    }
}

template <int NST, int MI>
__device__ __forceinline__ void tiled_assign(const unsigned short* __restrict__ xr, const unsigned short* __restrict__ cr,
                                             int ld, const float* __restrict__ x_norm2,
                                             const float* __restrict__ x_dnorm, const float* __restrict__ c_norm2,
                                             const float* __restrict__ c_abs, const float* __restrict__ c_dnorm,
                                             int* __restrict__ guess, int* __restrict__ tie,
                                             int n, int k, float gamma, float scale) {
#ifdef CUDA_EMU
    unsigned short* As = (unsigned short*)emu_dynamic_smem();
#else
    extern __shared__ unsigned long long smem_words[];        /* no static shared: base is aligned */
    unsigned short* As = (unsigned short*)smem_words;
#endif
    const int lda = ld + TPAD;
    constexpr int BM = 4 * 16 * MI;                              /* rows per block: 4 row warps x MI m16 tiles */
    unsigned short* Bs = As + BM * lda;                         /* NST stages of TBN x TLDB */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wr = warp & 3, wc = warp >> 2, g = lane >> 2, t = lane & 3;
    const int crow = tid / TSEGS, seg = tid % TSEGS;             /* this thread's pieces of a stage */
    const long long row0 = (long long)blockIdx.x * BM;
    const float E = scale * 2.3841858e-7f;                       /* 2^-22 */
    float P[MI][2], Q[MI][2];
    RowState st[MI][2];                                          /* [m16 tile][g or g + 8] */
    for (int mi = 0; mi < MI; ++mi)
        for (int h = 0; h < 2; ++h)
            row_setup(x_norm2, x_dnorm, row0 + wr * 16 * MI + mi * 16 + h * 8 + g, n, gamma, scale,
                      P[mi][h], Q[mi][h], st[mi][h]);

    const int segs = ld / 8;                                     /* x~: all of D, once */
    for (int i = tid; i < BM * segs; i += TTHREADS) {
        const int r = i / segs, s = i % segs;
        cp_async16(As + r * lda + s * 8, xr + (row0 + r) * ld + s * 8);
    }
    const int nch = (ld + TBK - 1) / TBK;
    const int steps = ((k + TBN - 1) / TBN) * nch;
    int lch = 0, lc0 = 0;                                        /* the next stage to load */
    for (int p = 0; p < NST - 1; ++p) {                          /* group p: stage p (group 0: and x~) */
        if (p < steps) {
            load_c_stage(Bs + p * TBN * TLDB, cr, ld, lc0, lch * TBK, crow, seg);
            if (++lch == nch) { lch = 0; lc0 += TBN; }
        }
        cp_async_commit();
    }

    float acc[MI][8][4];
    for (int mi = 0; mi < MI; ++mi)
        for (int j = 0; j < 8; ++j)
            for (int q = 0; q < 4; ++q) acc[mi][j][q] = 0.f;
    const int li = lane >> 3, lr = lane & 7;                     /* ldmatrix: matrix, row */
    int ch = 0, c0 = 0;                                          /* the stage computed: D chunk, tile */
    for (int s = 0; s < steps; ++s) {
        cp_async_wait<NST - 2>();                                /* stage s (and x~) landed */
        __syncthreads();                                         /* for all; stage s - 1 is done */
        if (s + NST - 1 < steps) {
            load_c_stage(Bs + ((s + NST - 1) % NST) * TBN * TLDB, cr, ld, lc0, lch * TBK, crow, seg);
            if (++lch == nch) { lch = 0; lc0 += TBN; }
        }
        cp_async_commit();                                       /* (empty at the end: counts stay uniform) */
        const unsigned short* B = Bs + (s % NST) * TBN * TLDB + wc * 64 * TLDB;
        const int k0 = ch * TBK, kw = min(TBK, ld - k0);
        for (int kk = 0; kk < kw; kk += 16) {
            unsigned a[MI][4], b[4][4];
            for (int mi = 0; mi < MI; ++mi)   /* a0..a3: rows +0/+8 (li & 1), columns +0/+8 (li >> 1) */
                ldsm_x4(a[mi], As + (wr * 16 * MI + mi * 16 + (li & 1) * 8 + lr) * lda + k0 + kk + (li >> 1) * 8);
            for (int jp = 0; jp < 4; ++jp)   /* b0, b1 of centroids 16jp..+7, then of 16jp+8..+15 */
                ldsm_x4(b[jp], B + (jp * 16 + (li >> 1) * 8 + lr) * TLDB + kk + (li & 1) * 8);
            for (int mi = 0; mi < MI; ++mi)
                for (int j = 0; j < 8; ++j) mma_bf16_16816(acc[mi][j], a[mi], &b[j >> 1][(j & 1) * 2]);
        }
        if (++ch == nch) {                                       /* this tile's dots are complete */
            const int cbase = c0 + wc * 64;
            for (int j = 0; j < 8; ++j)
                for (int e = 0; e < 2; ++e) {
                    const int col = cbase + 8 * j + 2 * t + e;
                    if (col < k) {
                        const float cn2 = c_norm2[col], ca = c_abs[col], dc = c_dnorm[col];
                        for (int mi = 0; mi < MI; ++mi)
                            for (int h = 0; h < 2; ++h)
                                fold(st[mi][h], acc[mi][j][2 * h + e], P[mi][h], Q[mi][h], E, cn2, ca, dc, col);
                    }
                }
            for (int mi = 0; mi < MI; ++mi)
                for (int j = 0; j < 8; ++j)
                    for (int q = 0; q < 4; ++q) acc[mi][j][q] = 0.f;
            ch = 0;
            c0 += TBN;
        }
    }
    __syncthreads();                                             /* every warp is done with the stages */
    /* the 4 lanes of a row, then the two column halves (through the now idle stage buffers) */
    float* xs = (float*)Bs;
    int* xi = (int*)(xs + 3 * BM);
    for (int mi = 0; mi < MI; ++mi)
        for (int h = 0; h < 2; ++h) {
            merge_lanes(st[mi][h], 1);
            merge_lanes(st[mi][h], 2);
            const int rb = wr * 16 * MI + mi * 16 + h * 8 + g;
            if (wc == 1 && t == 0) {
                xs[3 * rb] = st[mi][h].l1; xs[3 * rb + 1] = st[mi][h].l2; xs[3 * rb + 2] = st[mi][h].u;
                xi[rb] = st[mi][h].i1;
            }
        }
    __syncthreads();
    if (wc == 0 && t == 0)
        for (int mi = 0; mi < MI; ++mi)
            for (int h = 0; h < 2; ++h) {
                const int rb = wr * 16 * MI + mi * 16 + h * 8 + g;
                merge_state(st[mi][h], xs[3 * rb], xs[3 * rb + 1], xs[3 * rb + 2], xi[rb]);
                if (row0 + rb < n) {
                    guess[row0 + rb] = st[mi][h].i1;
                    tie[row0 + rb] = !(st[mi][h].l2 > st[mi][h].u);
                }
            }
}

#define TILED_KERNEL(NAME, NST, MI, MIN_BLOCKS)                                                          \
extern "C" __global__ void __launch_bounds__(TTHREADS, MIN_BLOCKS)                                       \
NAME(const unsigned short* __restrict__ xr, const unsigned short* __restrict__ cr, int ld,               \
     const float* __restrict__ x_norm2, const float* __restrict__ x_dnorm,                               \
     const float* __restrict__ c_norm2, const float* __restrict__ c_abs,                                 \
     const float* __restrict__ c_dnorm, int* __restrict__ guess, int* __restrict__ tie,                  \
     int n, int k, float gamma, float scale) {                                                           \
    tiled_assign<NST, MI>(xr, cr, ld, x_norm2, x_dnorm, c_norm2, c_abs, c_dnorm, guess, tie, n, k, gamma, scale); \
}
@TILED_INSTANCES@

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

FUSED_SOURCE = FUSED_SOURCE.replace("@TILED_DEFINES@", "".join(
    f"#define {name} {value}\n" for name, value in
    (("TBN", TBN), ("TBK", TBK), ("TPAD", TPAD), ("TLDB", TBK + TPAD), ("TTHREADS", TILED_THREADS))))

FUSED_SOURCE = FUSED_SOURCE.replace("@TILED_INSTANCES@", "".join(
    f"TILED_KERNEL({t.name}, {t.stages}, {t.rows // 64}, {t.min_blocks})\n" for t in TILED_KERNELS.values()))

FUSED_KERNELS = ("prep_pad_bf16", "fused_assign_bf16", *(t.name for t in TILED_KERNELS.values()), "fused_finalize")


def padded(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def tiled_smem_bytes(kernel: str, ld: int) -> int:
    """Dynamic shared memory of one block of a :data:`TILED_KERNELS` kernel: its rows of ``x~``
    (whole padded D) and its centroid stages. ``tiled``: 153,600 bytes at D = 512, which fits
    sm_80 (163 KiB opt-in, D <= 560) and sm_90 (227 KiB, D <= 816), while sm_86/89 (99 KiB) take
    D <= 304. ``tiled3``: 163,840 bytes (sm_80: D <= 512; sm_90: D <= 768). ``tiled64``: 97,280
    bytes, so two blocks fit an sm_90 SM (228 KiB) up to D = 656, one an sm_80 SM."""
    t = TILED_KERNELS[kernel]
    return 2 * (t.rows * (ld + TPAD) + t.stages * TBN * (TBK + TPAD))


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
    """Round ``x`` (N, D) to BF16 once (the GEMM's format), padded to 128 rows (both kernels'
    blocks) and 16 columns."""
    cp = _cupy()
    x = cp.ascontiguousarray(cp.asarray(x, dtype=cp.float32))
    n, d = x.shape
    ld = padded(d, FBK)
    xr, norm2, dnorm = _prep_pad(x, padded(n, ROWS_MULTIPLE), ld)
    return PreparedRows(x, xr, norm2, dnorm, ld)


@functools.lru_cache(maxsize=None)
def _smem_optin(device_id: int) -> int:
    return int(_cupy().cuda.Device(device_id).attributes.get("MaxSharedMemoryPerBlockOptin", 48 * 1024))


def _launch_tiled(kernel: str, args: tuple, rows_pad: int, ld: int) -> None:
    cp = _cupy()
    t = TILED_KERNELS[kernel]
    smem = tiled_smem_bytes(kernel, ld)
    limit = _smem_optin(cp.cuda.Device().id)
    if smem > limit:
        raise KernelInputError(f"the {kernel} fused kernel keeps {t.rows} rows of x in shared memory: D = {ld} "
                               f"needs {smem} bytes, this GPU allows {limit}; use method 'fused-bf16' (direct loads)")
    fn = _kernel(t.name)
    if smem > 48 * 1024:  # opt in above 48 KiB (cudaFuncSetAttribute; microseconds, so every call)
        fn.max_dynamic_shared_size_bytes = smem
    if t.min_blocks > 1:  # ask for the largest shared-memory carve-out, or 2 blocks may not fit an SM
        with contextlib.suppress(AttributeError):  # (a CuPy without the setter: the driver's choice)
            fn.preferred_shared_memory_carveout = 100
    fn((rows_pad // t.rows,), (TILED_THREADS,), args, shared_mem=smem)


def assign_nearest_fused(x: Any, centroids: Any, *, prepared: PreparedRows | None = None, votes: Any = None,
                         bound_scale: float = 1.0, return_ties: bool = False, kernel: str = "direct"):
    """Same contract as :func:`.cuda.assign_nearest_gemm` (labels equal a float64 reference, exact
    ties to the lowest index, exact distances, NaN for non-finite rows), without an N x K matrix.

    ``prepared``: :func:`prepare_rows` of ``x`` (k-means passes it every iteration, so ``x`` is
    rounded once). ``return_ties`` adds the number of rows re-decided exactly. ``kernel``: one of
    :data:`FUSED_KERNEL_KINDS` (same labels; which is faster is measured on the GPU).
    """
    if kernel not in FUSED_KERNEL_KINDS:
        raise ValueError(f"kernel must be one of {', '.join(FUSED_KERNEL_KINDS)}, got {kernel!r}")
    cp = _cupy()
    x, centroids = _assign_inputs(x, centroids)
    n, d = x.shape
    k = centroids.shape[0]
    if prepared is None:
        prepared = prepare_rows(x)
    elif prepared.x.shape != x.shape or prepared.x.data.ptr != x.data.ptr:
        raise KernelInputError("prepared rows belong to another x; call prepare_rows(x) for this one")
    ld = prepared.ld
    cr, c_norm2, c_dnorm = _prep_pad(centroids, padded(k, centroid_multiple(kernel)), ld)
    c_abs = centroid_terms(c_norm2, c_dnorm)
    guess = cp.empty(n, dtype=cp.int32)
    tie = cp.empty(n, dtype=cp.int32)
    scale = np.float32(bound_scale * BOUND_SLACK)
    args = (prepared.xr, cr, _i32(ld), prepared.norm2, prepared.dnorm, c_norm2, c_abs, c_dnorm, guess, tie,
            _i32(n), _i32(k), np.float32(accumulation_bound(d)), scale)
    if kernel in TILED_KERNELS:
        _launch_tiled(kernel, args, prepared.xr.shape[0], ld)
    else:
        _kernel("fused_assign_bf16")((prepared.xr.shape[0] // FBM,), (FUSED_THREADS,), args)
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
