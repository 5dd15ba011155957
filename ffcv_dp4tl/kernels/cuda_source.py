"""The CUDA C source of the FM kernels (compiled by CuPy's NVRTC in :mod:`.cuda`; under a CPU
emulation header by tests/scoring/helpers.py), with the tile sizes and names the launchers use.

Kept apart from the launchers so the ~300 lines of CUDA read as one file, and so the fused
tensor-core kernel (:mod:`.fused`) shares ``DEVICE_HELPERS`` without importing the launchers.
The design of each kernel is described in :mod:`.cuda`'s docstring.
"""
from __future__ import annotations

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

/* ||x - c||^2 of one row and one centroid in FP64, summed over the warp (every lane gets it):
   the exact distance both re-check paths decide with. */
__device__ __forceinline__ double warp_exact_d2(const float* __restrict__ xp,
                                                const float* __restrict__ cp, int d) {
    double acc = 0.0;
    for (int j = threadIdx.x & 31; j < d; j += 32) {
        const double t = (double)xp[j] - (double)cp[j];
        acc += t * t;
    }
    return warp_sum(acc);
}

/* One warp per row: the row rounded to the GEMM format into a row of `ld` >= d entries (columns
   d..ld-1 zero), ||a||^2 and ||a - round(a)|| (FP64 sums). The SIMT/GEMM path's prep_rows_* (ld = d)
   and the fused kernel's prep_pad_bf16 (ld padded to its tile) share it. */
template <class Out>
__device__ __forceinline__ void prep_rows(const float* __restrict__ a, Out* __restrict__ out,
                                          float* __restrict__ norm2, float* __restrict__ dnorm,
                                          int n, int d, int ld) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= n) return;
    const float* p = a + row * (long long)d;
    Out* q = out + row * (long long)ld;
    double s = 0.0, e = 0.0;
    for (int j = lane; j < ld; j += 32) {
        if (j >= d) { q[j] = 0; continue; }
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
extern "C" __global__ void prep_rows_tf32(const float* __restrict__ a, float* __restrict__ out,
                                          float* __restrict__ norm2, float* __restrict__ dnorm,
                                          int n, int d) {
    prep_rows(a, out, norm2, dnorm, n, d, d);
}

extern "C" __global__ void prep_rows_bf16(const float* __restrict__ a, unsigned short* __restrict__ out,
                                          float* __restrict__ norm2, float* __restrict__ dnorm,
                                          int n, int d) {
    prep_rows(a, out, norm2, dnorm, n, d, d);
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
            const double acc = warp_exact_d2(xp, c + (long long)qc * d, d);
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
