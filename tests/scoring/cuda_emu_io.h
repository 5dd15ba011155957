// File helpers shared by the emulator host drivers (cuda_emu_main.cpp, cuda_emu_gemm_main.cpp).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

template <class T>
inline std::vector<T> read_file(const std::string& path, size_t count) {
    std::vector<T> v(count);
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f || std::fread(v.data(), sizeof(T), count, f) != count) {
        std::fprintf(stderr, "cannot read %s\n", path.c_str());
        std::exit(1);
    }
    std::fclose(f);
    return v;
}

template <class T>
inline void write_file(const std::string& path, const std::vector<T>& v) {
    FILE* f = std::fopen(path.c_str(), "wb");
    std::fwrite(v.data(), sizeof(T), v.size(), f);
    std::fclose(f);
}
