// Host driver for the fused tensor-core assignment (ffcv_dp4tl/kernels/fused.py, FUSED_SOURCE)
// under cuda_emu.h, whose mma_bf16_16816 emulates the PTX mma.sync warp-collectively.
// usage: emu prep DIR n d ld rows_pad          a.bin -> out.bin norm2.bin dnorm.bin
//        emu assign DIR n k ld d gamma scale rows_pad [KERNEL SMEM_BYTES ROWS_PER_BLOCK]
//                                               (KERNEL: a name of fused.TILED_KERNELS' instances)
//                                               xr cr xn2 xdn cn2 cabs cdn -> guess.bin tie.bin
//        emu final DIR n d k                    x c xn2 guess tie -> labels.bin d2.bin votes.bin
#include "cuda_emu.h"
#include "fused.cu"
#include "cuda_emu_io.h"

#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
    if (argc < 3) return 2;
    const std::string mode = argv[1], dir = argv[2];
    const unsigned warps = 256 / 32;
    if (mode == "prep" && argc == 7) {
        const int n = std::atoi(argv[3]), d = std::atoi(argv[4]), ld = std::atoi(argv[5]), rp = std::atoi(argv[6]);
        auto a = read_file<float>(dir + "/a.bin", size_t(n) * d);
        std::vector<unsigned short> out(size_t(rp) * ld, 0);
        std::vector<float> norm2(n), dnorm(n);
        emu_launch(prep_pad_bf16, dim3((n + warps - 1) / warps), dim3(256), (const float*)a.data(), out.data(),
                   norm2.data(), dnorm.data(), n, d, ld);
        write_file(dir + "/out.bin", out);
        write_file(dir + "/norm2.bin", norm2);
        write_file(dir + "/dnorm.bin", dnorm);
        return 0;
    }
    if (mode == "assign" && (argc == 10 || argc == 13)) {
        const int n = std::atoi(argv[3]), k = std::atoi(argv[4]), ld = std::atoi(argv[5]), d = std::atoi(argv[6]);
        const float gamma = std::atof(argv[7]), scale = std::atof(argv[8]);
        const int rows_pad = std::atoi(argv[9]);
        const std::string kind = argc == 13 ? argv[10] : "";
        const bool tiled = !kind.empty();
        const int block_rows = tiled ? std::atoi(argv[12]) : FBM;
        const int tile = tiled ? TBN : FBN;
        const int k_pad = (k + tile - 1) / tile * tile;
        (void)d;
        auto xr = read_file<unsigned short>(dir + "/xr.bin", size_t(rows_pad) * ld);
        auto cr = read_file<unsigned short>(dir + "/cr.bin", size_t(k_pad) * ld);
        auto xn2 = read_file<float>(dir + "/xn2.bin", n);
        auto xdn = read_file<float>(dir + "/xdn.bin", n);
        auto cn2 = read_file<float>(dir + "/cn2.bin", k);
        auto cabs = read_file<float>(dir + "/cabs.bin", k);
        auto cdn = read_file<float>(dir + "/cdn.bin", k);
        std::vector<int> guess(n, -7), tie(n, -7);
        if (tiled) {
            emu_set_dynamic_smem(std::strtoull(argv[11], nullptr, 10));  // fused.tiled_smem_bytes(kernel, ld)
            decltype(&fused_assign_bf16_tiled) fn = nullptr;
            if (kind == "fused_assign_bf16_tiled") fn = fused_assign_bf16_tiled;
            if (kind == "fused_assign_bf16_tiled3") fn = fused_assign_bf16_tiled3;
            if (kind == "fused_assign_bf16_tiled64") fn = fused_assign_bf16_tiled64;
            if (fn == nullptr) return 3;  // a kernel this driver does not know: the test fails
            emu_launch(fn, dim3(rows_pad / block_rows), dim3(TTHREADS), (const unsigned short*)xr.data(),
                       (const unsigned short*)cr.data(), ld, (const float*)xn2.data(), (const float*)xdn.data(),
                       (const float*)cn2.data(), (const float*)cabs.data(), (const float*)cdn.data(), guess.data(),
                       tie.data(), n, k, gamma, scale);
        } else {
            emu_launch(fused_assign_bf16, dim3(rows_pad / FBM), dim3(128), (const unsigned short*)xr.data(),
                       (const unsigned short*)cr.data(), ld, (const float*)xn2.data(), (const float*)xdn.data(),
                       (const float*)cn2.data(), (const float*)cabs.data(), (const float*)cdn.data(), guess.data(),
                       tie.data(), n, k, gamma, scale);
        }
        write_file(dir + "/guess.bin", guess);
        write_file(dir + "/tie.bin", tie);
        return 0;
    }
    if (mode == "final" && argc == 6) {
        const int n = std::atoi(argv[3]), d = std::atoi(argv[4]), k = std::atoi(argv[5]);
        auto x = read_file<float>(dir + "/x.bin", size_t(n) * d);
        auto c = read_file<float>(dir + "/c.bin", size_t(k) * d);
        auto xn2 = read_file<float>(dir + "/xn2.bin", n);
        auto guess = read_file<int>(dir + "/guess.bin", n);
        auto tie = read_file<int>(dir + "/tie.bin", n);
        std::vector<long long> labels(n);
        std::vector<float> d2(n);
        std::vector<unsigned long long> votes(k, 0);
        emu_launch(fused_finalize, dim3((n + warps - 1) / warps), dim3(256), (const float*)x.data(),
                   (const float*)c.data(), (const float*)xn2.data(), (const int*)guess.data(),
                   (const int*)tie.data(), labels.data(), d2.data(), votes.data(), n, d);
        write_file(dir + "/labels.bin", labels);
        write_file(dir + "/d2.bin", d2);
        write_file(dir + "/votes.bin", votes);
        return 0;
    }
    return 2;
}
