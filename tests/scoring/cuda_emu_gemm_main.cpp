// Host driver for the tensor-core assignment path of ffcv_dp4tl/kernels/cuda.py under
// cuda_emu.h. cuBLAS is not emulated: the test computes the GEMM of the rounded inputs with
// NumPy (FP32) between the "prep" and "epi" steps, as cuBLAS would between the two kernels.
// usage: emu prep tf32|bf16 DIR n d
//        emu epi DIR rows k d cmax dcmax cnmax gamma bound_scale
//        emu segsorted DIR n d k rows_per_block
#include "cuda_emu.h"
#include "kernels.cu"
#include "cuda_emu_io.h"

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
    if (argc < 3) return 2;
    const std::string mode = argv[1];
    const unsigned threads = 256, warps = threads / 32;
    if (mode == "prep" && argc == 6) {
        const std::string prec = argv[2], dir = argv[3];
        const int n = std::atoi(argv[4]), d = std::atoi(argv[5]);
        auto a = read_file<float>(dir + "/a.bin", size_t(n) * d);
        std::vector<float> norm2(n), dnorm(n);
        const dim3 grid((n + warps - 1) / warps);
        if (prec == "tf32") {
            std::vector<float> out(size_t(n) * d);
            emu_launch(prep_rows_tf32, grid, dim3(threads), (const float*)a.data(), out.data(),
                       norm2.data(), dnorm.data(), n, d);
            write_file(dir + "/out.bin", out);
        } else {
            std::vector<unsigned short> out(size_t(n) * d);
            emu_launch(prep_rows_bf16, grid, dim3(threads), (const float*)a.data(), out.data(),
                       norm2.data(), dnorm.data(), n, d);
            write_file(dir + "/out.bin", out);
        }
        write_file(dir + "/norm2.bin", norm2);
        write_file(dir + "/dnorm.bin", dnorm);
        return 0;
    }
    if (mode == "epi" && argc == 11) {
        const std::string dir = argv[2];
        const int rows = std::atoi(argv[3]), k = std::atoi(argv[4]), d = std::atoi(argv[5]);
        const float cmax = std::atof(argv[6]), dcmax = std::atof(argv[7]), cnmax = std::atof(argv[8]);
        const float gamma = std::atof(argv[9]), bound_scale = std::atof(argv[10]);
        auto scores = read_file<float>(dir + "/scores.bin", size_t(rows) * k);
        auto cn = read_file<float>(dir + "/cn.bin", k);
        auto x = read_file<float>(dir + "/x.bin", size_t(rows) * d);
        auto c = read_file<float>(dir + "/c.bin", size_t(k) * d);
        auto xn2 = read_file<float>(dir + "/xn2.bin", rows);
        auto xdn = read_file<float>(dir + "/xdn.bin", rows);
        std::vector<long long> labels(rows);
        std::vector<float> d2(rows);
        std::vector<int> ncand(rows);
        std::vector<unsigned long long> votes(k, 0);
        emu_launch(gemm_epilogue, dim3((rows + warps - 1) / warps), dim3(threads),
                   (const float*)scores.data(), k, (const float*)cn.data(), (const float*)x.data(),
                   (const float*)c.data(), (const float*)xn2.data(), (const float*)xdn.data(),
                   labels.data(), d2.data(), ncand.data(), votes.data(), rows, k, d, cmax, dcmax,
                   cnmax, gamma, bound_scale);
        write_file(dir + "/out_labels.bin", labels);
        write_file(dir + "/out_d2.bin", d2);
        write_file(dir + "/out_ncand.bin", ncand);
        write_file(dir + "/out_votes.bin", votes);
        return 0;
    }
    if (mode == "segsorted" && argc == 7) {
        const std::string dir = argv[2];
        const long long n = std::atoll(argv[3]);
        const int d = std::atoi(argv[4]), k = std::atoi(argv[5]), rpb = std::atoi(argv[6]);
        auto x = read_file<float>(dir + "/x.bin", size_t(n) * d);
        auto order = read_file<long long>(dir + "/order.bin", n);
        auto slab = read_file<long long>(dir + "/slabels.bin", n);
        std::vector<double> sums(size_t(k) * d, 0.0);
        emu_launch(segment_sum_sorted, dim3(unsigned((n + rpb - 1) / rpb)), dim3(128),
                   (const float*)x.data(), (const long long*)order.data(),
                   (const long long*)slab.data(), sums.data(), n, d, rpb);
        write_file(dir + "/out_sums.bin", sums);
        return 0;
    }
    return 2;
}
