"""Every registered CUDA module compiles to a CUBIN for the GPUs the project runs on (A100 sm_80,
H100/H200 sm_90) with NVRTC on this CPU machine, without spills; the tiled fused kernels fit their
launch (the 256-thread blocks per SM each is compiled for, no static shared memory before the
dynamic buffer).

Why this runs without a GPU: NVRTC is a library (the ``nvidia-cuda-nvrtc`` wheel torch's CUDA
build installs), and compiling to a CUBIN runs ptxas, so the inline PTX (mma.sync, ldmatrix,
cp.async) is assembled for a real architecture and ptxas reports each kernel's registers, spills
and static shared memory. A compile error or a spill therefore shows up in CI, not in the
device's one call. The compiler is benchmarks/kernel_report.py's (one NVRTC binding)."""
from __future__ import annotations

import pytest
from repo_scripts import load_script

from ffcv_dp4tl import kernels
from ffcv_dp4tl.kernels import fused

kr = load_script("benchmarks/kernel_report.py")
ARCHS = ("sm_80", "sm_90")


@pytest.fixture(scope="module")
def nvrtc():
    try:
        return kr.Nvrtc(kr.find_tools())
    except kr.ToolError as e:
        pytest.skip(f"no NVRTC library (the nvidia-cuda-nvrtc wheel torch's CUDA build installs): {e}")


@pytest.fixture(scope="module")
def compiled(nvrtc):
    cache = {}

    def get(module: str, arch: str):
        if (module, arch) not in cache:
            source, _ = kernels.cuda_modules()[module]
            cubin, log = nvrtc.compile(source, arch, f"{module}.cu")
            cache[module, arch] = cubin, kr.parse_ptxas(log)
        return cache[module, arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("module", sorted(kernels.cuda_modules()))
def test_cuda_module_compiles_without_spills(compiled, module, arch):
    cubin, res = compiled(module, arch)
    assert cubin[:4] == b"\x7fELF"  # a CUBIN is an ELF file
    _, names = kernels.cuda_modules()[module]
    assert set(names) <= set(res), f"kernels the launchers name but the source lacks: {set(names) - set(res)}"
    spills = {k: v for k, v in res.items() if v.spill_stores or v.spill_loads}
    assert not spills, spills


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kind", sorted(fused.TILED_KERNELS))
def test_tiled_kernels_fit_their_launch(compiled, arch, kind):
    t = fused.TILED_KERNELS[kind]
    info = compiled("fused", arch)[1][t.name]
    assert info.smem == 0  # the dynamic buffer starts the block's window: 16-byte aligned rows
    # registers for the blocks per SM it is compiled for (256-thread blocks)
    assert info.registers * fused.TILED_THREADS * t.min_blocks <= 65536


def test_a_compile_error_is_reported_with_its_line(nvrtc):
    src = 'extern "C" __global__ void k(float* a) {\n  a[0] = undefined_name;\n}\n'
    with pytest.raises(kr.ToolError) as e:
        nvrtc.compile(src, "sm_90", "broken.cu")
    msg = str(e.value)
    assert msg.startswith("NVRTC could not compile broken.cu for sm_90: ") and "\n" not in msg
    assert "broken.cu(2)" in msg and "undefined_name" in msg
