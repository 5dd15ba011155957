"""Compile the package's CUDA C with NVRTC on a machine without a GPU: NVRTC is a library (the
``nvidia-cuda-nvrtc`` wheel torch already installs), and compiling to a CUBIN runs ptxas, so the
inline PTX (mma.sync, ldmatrix, cp.async) is assembled for a real architecture and ptxas reports
each kernel's registers, spills and static shared memory. A compile error or a spill therefore
shows up in CI, not in the device's one call."""
from __future__ import annotations

import ctypes
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: Where the NVRTC wheels put the library (CUDA 13, then CUDA 12 layouts).
CANDIDATES = ("nvidia/cu13/lib/libnvrtc.so.13", "nvidia/cuda_nvrtc/lib/libnvrtc.so.12")


def find_nvrtc() -> Path | None:
    for base in map(Path, sys.path):
        for rel in CANDIDATES:
            if (base / rel).is_file():
                return base / rel
    return None


@dataclass
class KernelInfo:
    registers: int = 0
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    static_smem: int = 0


@dataclass
class Compiled:
    rc: int
    log: str
    cubin_bytes: int = 0
    kernels: dict[str, KernelInfo] = field(default_factory=dict)


def parse_ptxas(log: str) -> dict[str, KernelInfo]:
    out: dict[str, KernelInfo] = {}
    cur: KernelInfo | None = None
    for line in log.splitlines():
        if m := re.search(r"Function properties for (\w+)", line):
            cur = out.setdefault(m.group(1), KernelInfo())
        elif cur is not None and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                                                 r"(\d+) bytes spill loads", line)):
            cur.stack, cur.spill_stores, cur.spill_loads = map(int, m.groups())
        elif cur is not None and (m := re.search(r"Used (\d+) registers", line)):
            cur.registers = int(m.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                cur.static_smem = int(s.group(1))
    return out


def load(lib_path: Path) -> ctypes.CDLL:
    """libnvrtc dlopens libnvrtc-builtins by name at compile time; load it first from the same
    folder (the wheel's folder is on no library path unless torch happened to load it)."""
    for builtins in sorted(lib_path.parent.glob("libnvrtc-builtins.so.*")):
        if ".alt." not in builtins.name:
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(str(lib_path))


def compile_cubin(lib_path: Path, source: str, name: str, arch: str) -> Compiled:
    lib = load(lib_path)
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None)
    if rc:
        return Compiled(rc, f"nvrtcCreateProgram failed: {rc}")
    try:
        opts = [f"-arch={arch}".encode(), b"-Xptxas", b"-v"]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
        res = Compiled(rc, log, kernels=parse_ptxas(log))
        if rc == 0:
            lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
            res.cubin_bytes = size.value
        return res
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
