// Host driver for running ffcv_dp4tl/kernels/cuda.py's CUDA source under cuda_emu.h.
// Mirrors the host code of cuda.py (same kernels, same launch shapes, passed in by the test).
// usage: emu DIR n k d grid_x splits k_per_split seg_grid seg_block hist_grid
#include "cuda_emu.h"
#include "kernels.cu"
#include "cuda_emu_io.h"

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
    if (argc != 11) return 2;
    const std::string dir = argv[1];
    const int n = std::atoi(argv[2]), k = std::atoi(argv[3]), d = std::atoi(argv[4]);
    const unsigned grid_x = std::atoi(argv[5]), splits = std::atoi(argv[6]);
    const int kps = std::atoi(argv[7]);
    const unsigned seg_grid = std::atoi(argv[8]), seg_block = std::atoi(argv[9]);
    const unsigned hist_grid = std::atoi(argv[10]);
    const unsigned threads = 256;

    auto x = read_file<float>(dir + "/x.bin", size_t(n) * d);
    auto c = read_file<float>(dir + "/c.bin", size_t(k) * d);
    auto labels_in = read_file<long long>(dir + "/labels.bin", n);
    auto w = read_file<double>(dir + "/w.bin", n);

    std::vector<float> c_norm(k), x_norm(n);
    emu_launch(row_sq_norms, dim3((k + 7) / 8), dim3(threads), c.data(), c_norm.data(), k, d);
    emu_launch(row_sq_norms, dim3((n + 7) / 8), dim3(threads), x.data(), x_norm.data(), n, d);

    std::vector<unsigned long long> keys(n, 0xffffffffffffffffULL);
    emu_launch(assign_partial, dim3(grid_x, splits), dim3(threads), (const float*)x.data(),
               (const float*)c.data(), (const float*)c_norm.data(), keys.data(), n, k, d, kps);
    std::vector<long long> labels(n);
    std::vector<float> d2(n);
    emu_launch(assign_finalize, dim3((n + threads - 1) / threads), dim3(threads),
               (const unsigned long long*)keys.data(), (const float*)x_norm.data(), labels.data(),
               d2.data(), n);

    std::vector<double> sums(size_t(k) * d, 0.0);
    std::vector<unsigned long long> counts(k, 0);
    emu_launch(segment_sum, dim3(seg_grid), dim3(seg_block), (const float*)x.data(),
               (const long long*)labels_in.data(), sums.data(), counts.data(), n, d);

    std::vector<unsigned long long> hist(k, 0);
    std::vector<double> whist(k, 0.0);
    emu_launch(hist_count, dim3(hist_grid), dim3(threads), (const long long*)labels_in.data(),
               hist.data(), (long long)n);
    emu_launch(hist_weighted, dim3(hist_grid), dim3(threads), (const long long*)labels_in.data(),
               (const double*)w.data(), whist.data(), (long long)n);

    write_file(dir + "/out_labels.bin", labels);
    write_file(dir + "/out_d2.bin", d2);
    write_file(dir + "/out_xnorm.bin", x_norm);
    write_file(dir + "/out_sums.bin", sums);
    write_file(dir + "/out_counts.bin", counts);
    write_file(dir + "/out_hist.bin", hist);
    write_file(dir + "/out_whist.bin", whist);
    return 0;
}
