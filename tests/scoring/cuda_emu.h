// Minimal CPU emulation of the CUDA features used by ffcv_dp4tl/kernels/cuda.py, so the
// kernel source can be compiled with g++ and executed on machines without a GPU.
//
// Every CUDA thread of a block is a std::thread; blocks run one after another, so function-
// local `static` arrays behave like __shared__ memory (dynamic shared memory: one poisoned
// buffer, see emu_dynamic_smem). __syncthreads is a block-wide barrier, warp shuffles, mma.sync
// and ldmatrix exchange through buffers guarded by a per-warp barrier (all lanes of a warp must
// call them together, as CUDA requires), cp.async copies are deferred to the thread's wait,
// atomics take a global mutex. This checks the kernels' indexing, tiling, staging, reductions
// and tie rules, not their performance or memory model.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
#include <algorithm>

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local int emu_tid = 0;
inline dim3 blockDim;
inline dim3 gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

using std::max;
using std::min;

inline std::barrier<>* emu_block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> emu_warp_barriers;
inline std::vector<uint64_t> emu_shfl_buf;
inline std::mutex emu_atomic_mu;
inline std::vector<uint32_t> emu_mma_buf;  // 6 words (a0..a3, b0, b1) per thread
inline std::vector<const unsigned short*> emu_ptr_buf;  // ldmatrix row addresses, one per thread
// Dynamic shared memory (extern __shared__): one buffer, refilled with a poison pattern (BF16
// NaN 0x7fc0 in every half) before each block, so a read of anything the block did not write
// gives NaN products instead of the previous block's data.
inline std::vector<uint16_t> emu_dyn_smem_buf;
inline void emu_set_dynamic_smem(size_t bytes) { emu_dyn_smem_buf.assign((bytes + 1) / 2, 0x7fc0); }
inline void* emu_dynamic_smem() { return emu_dyn_smem_buf.data(); }

// Kernels test CUDA_EMU to swap inline PTX for the emulations below.
#define CUDA_EMU 1

inline void __syncthreads() { emu_block_barrier->arrive_and_wait(); }

template <class T>
T __shfl_xor_sync(unsigned /*mask*/, T v, int lane_mask) {
    static_assert(sizeof(T) <= 8, "shuffle of > 8 bytes");
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    const int warp = emu_tid / 32;
    emu_shfl_buf[emu_tid] = bits;
    emu_warp_barriers[warp]->arrive_and_wait();
    const int src = (emu_tid & ~31) | ((emu_tid & 31) ^ lane_mask);
    const uint64_t other = emu_shfl_buf[src];
    emu_warp_barriers[warp]->arrive_and_wait();
    T out;
    std::memcpy(&out, &other, sizeof(T));
    return out;
}

inline unsigned __ballot_sync(unsigned /*mask*/, int pred) {
    const int warp = emu_tid / 32;
    emu_shfl_buf[emu_tid] = pred ? 1 : 0;
    emu_warp_barriers[warp]->arrive_and_wait();
    const int base = emu_tid & ~31;
    const int lanes = std::min<int>(32, int(emu_shfl_buf.size()) - base);
    unsigned m = 0;
    for (int l = 0; l < lanes; ++l)
        if (emu_shfl_buf[base + l]) m |= 1u << l;
    emu_warp_barriers[warp]->arrive_and_wait();
    return m;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, warp-collective, with the PTX fragment
// layout (g = lane / 4, t = lane % 4): a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..],
// a3 = A[g+8][2t+8..]; b0 = B[2t..2t+1][g], b1 = B[2t+8..][g]; d0,d1 = D[g][2t..], d2,d3 =
// D[g+8][2t..]; the lower half of a register holds the lower index. Every lane gathers the
// whole A and B from the others, so a kernel that puts an element in the wrong register or
// lane gets a wrong product here, as on the GPU. Products of BF16 are exact in FP32; the
// 16 products are accumulated in order with fmaf (the hardware's order is unspecified: the
// kernel's error bound covers any order).
inline float emu_bf16(uint32_t word, int high) {
    const uint32_t bits = (high ? (word >> 16) : (word & 0xffffu)) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline void mma_bf16_16816(float* d, const unsigned* a, const unsigned* b) {
    const int warp = emu_tid / 32, lane = emu_tid & 31, base = emu_tid & ~31;
    for (int i = 0; i < 4; ++i) emu_mma_buf[6 * emu_tid + i] = a[i];
    for (int i = 0; i < 2; ++i) emu_mma_buf[6 * emu_tid + 4 + i] = b[i];
    emu_warp_barriers[warp]->arrive_and_wait();
    auto A = [&](int row, int kk) {
        const int src = base + (row % 8) * 4 + (kk % 8) / 2;
        return emu_bf16(emu_mma_buf[6 * src + row / 8 + 2 * (kk / 8)], kk % 2);
    };
    auto B = [&](int kk, int col) {
        const int src = base + col * 4 + (kk % 8) / 2;
        return emu_bf16(emu_mma_buf[6 * src + 4 + kk / 8], kk % 2);
    };
    const int g = lane / 4, t = lane % 4;
    for (int q = 0; q < 4; ++q) {
        const int row = g + 8 * (q / 2), col = 2 * t + q % 2;
        float acc = d[q];
        for (int kk = 0; kk < 16; ++kk) acc = std::fma(A(row, kk), B(kk, col), acc);
        d[q] = acc;
    }
    emu_warp_barriers[warp]->arrive_and_wait();
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16, warp-collective: lanes 8i..8i+7 give the row
// addresses (8 halves each) of matrix i; every lane receives, for each matrix i, the word at row
// lane / 4, halves 2 (lane % 4) and 2 (lane % 4) + 1 (the mma fragment layout).
inline void ldsm_x4(unsigned* r, const unsigned short* p) {
    const int warp = emu_tid / 32, lane = emu_tid & 31, base = emu_tid & ~31;
    emu_ptr_buf[emu_tid] = p;
    emu_warp_barriers[warp]->arrive_and_wait();
    for (int i = 0; i < 4; ++i) {
        const unsigned short* row = emu_ptr_buf[base + 8 * i + lane / 4];
        uint32_t w;
        std::memcpy(&w, row + 2 * (lane % 4), 4);
        r[i] = w;
    }
    emu_warp_barriers[warp]->arrive_and_wait();
}

// cp.async (16 bytes) with commit_group / wait_group: the copy is *deferred* until this thread
// waits for its group, as on the GPU nothing guarantees it landed before; a kernel that reads
// shared memory before cp_async_wait_* + __syncthreads reads the poison pattern.
struct EmuCopy { void* dst; const void* src; };
inline thread_local std::vector<EmuCopy> emu_cp_pending;
inline thread_local std::vector<std::vector<EmuCopy>> emu_cp_groups;
inline void cp_async16(unsigned short* s, const unsigned short* g) { emu_cp_pending.push_back({s, g}); }
inline void cp_async_commit() {
    emu_cp_groups.push_back(std::move(emu_cp_pending));
    emu_cp_pending.clear();
}
inline void emu_cp_wait(size_t keep) {
    while (emu_cp_groups.size() > keep) {
        for (const EmuCopy& c : emu_cp_groups.front()) std::memcpy(c.dst, c.src, 16);
        emu_cp_groups.erase(emu_cp_groups.begin());
    }
}
template <int N> inline void cp_async_wait() { emu_cp_wait(N); }

inline int __ffs(unsigned x) { return x ? __builtin_ctz(x) + 1 : 0; }

template <class T>
T atomicAdd(T* p, T v) {
    std::lock_guard<std::mutex> lock(emu_atomic_mu);
    T old = *p;
    *p = old + v;
    return old;
}

inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
    std::lock_guard<std::mutex> lock(emu_atomic_mu);
    unsigned long long old = *p;
    if (v < old) *p = v;
    return old;
}

inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}

template <class F, class... A>
void emu_launch(F kernel, dim3 grid, dim3 block, A... args) {
    blockDim = block;
    gridDim = grid;
    const int nthreads = int(block.x * block.y * block.z);
    const int nwarps = (nthreads + 31) / 32;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                std::barrier<> bar(nthreads);
                emu_block_barrier = &bar;
                emu_warp_barriers.clear();
                for (int w = 0; w < nwarps; ++w)
                    emu_warp_barriers.emplace_back(new std::barrier<>(std::min(32, nthreads - 32 * w)));
                emu_shfl_buf.assign(nthreads, 0);
                emu_mma_buf.assign(6 * size_t(nthreads), 0);
                emu_ptr_buf.assign(nthreads, nullptr);
                std::fill(emu_dyn_smem_buf.begin(), emu_dyn_smem_buf.end(), uint16_t(0x7fc0));
                std::vector<std::thread> threads;
                threads.reserve(nthreads);
                for (int t = 0; t < nthreads; ++t) {
                    threads.emplace_back([&, t] {
                        emu_tid = t;
                        threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
                        blockIdx = dim3(bx, by, bz);
                        emu_cp_pending.clear();
                        emu_cp_groups.clear();
                        kernel(args...);
                    });
                }
                for (auto& th : threads) th.join();
            }
}
