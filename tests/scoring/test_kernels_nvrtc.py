"""Every registered CUDA module compiles to a CUBIN for the GPUs the project runs on (A100 sm_80,
H100/H200 sm_90) with NVRTC + ptxas on this CPU machine, without spills; the tiled fused kernel
fits its launch (one 256-thread block per SM, no static shared memory before the dynamic
buffer). See tests/scoring/nvrtc.py for why this runs without a GPU."""
from __future__ import annotations

import pytest

from ffcv_dp4tl import kernels
from ffcv_dp4tl.kernels import fused

from .nvrtc import compile_cubin, find_nvrtc

ARCHS = ("sm_80", "sm_90")


@pytest.fixture(scope="module")
def nvrtc():
    lib = find_nvrtc()
    if lib is None:
        pytest.skip("no NVRTC library (the nvidia-cuda-nvrtc wheel torch's CUDA build installs)")
    return lib


@pytest.fixture(scope="module")
def compiled(nvrtc):
    cache = {}

    def get(module: str, arch: str):
        if (module, arch) not in cache:
            source, _ = kernels.cuda_modules()[module]
            cache[module, arch] = compile_cubin(nvrtc, source, f"{module}.cu", arch)
        return cache[module, arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("module", sorted(kernels.cuda_modules()))
def test_cuda_module_compiles_without_spills(compiled, module, arch):
    res = compiled(module, arch)
    assert res.rc == 0, res.log
    assert res.cubin_bytes > 0
    _, names = kernels.cuda_modules()[module]
    assert set(names) <= set(res.kernels), f"kernels the launchers name but the source lacks: {set(names) - set(res.kernels)}"
    spills = {k: v for k, v in res.kernels.items() if v.spill_stores or v.spill_loads}
    assert not spills, spills


@pytest.mark.parametrize("arch", ARCHS)
def test_tiled_kernel_fits_its_launch(compiled, arch):
    info = compiled("fused", arch).kernels["fused_assign_bf16_tiled"]
    assert info.static_smem == 0  # the dynamic buffer starts the block's window: 16-byte aligned rows
    assert info.registers * fused.TILED_THREADS <= 65536  # one 256-thread block per SM


def test_a_compile_error_is_reported_with_its_line(nvrtc):
    src = 'extern "C" __global__ void k(float* a) {\n  a[0] = undefined_name;\n}\n'
    res = compile_cubin(nvrtc, src, "broken.cu", "sm_90")
    assert res.rc != 0 and "broken.cu(2)" in res.log and "undefined_name" in res.log
