#!/usr/bin/env python
"""What the compiler makes of our CUDA kernels, without a GPU: registers, spills, shared memory,
occupancy and the instruction mix, for the GPUs users run (sm_80: A100; sm_90: H100/H200).

Why: the H200 check measured the fused FM kernel at 32 ms (``tiled``) and 65 ms (``direct``)
against an 8 ms goal, and a device call is scarce (15 minutes per lent task). Most of "why is
this kernel slow" is answered by what the compiler made of it (METHOD.md: "read what costs no
device time"): how many registers a thread holds, hence how many warps an SM can keep in flight
to hide latency; whether anything spilled to local memory; whether the tensor-core instructions
are the ones meant (``HMMA``, not ``FFMA``); how much else runs per ``mma``. This compiles the
very sources CuPy compiles on the device (``kernels.cuda_source.SOURCE`` and
``kernels.fused.FUSED_SOURCE``), the same way (NVRTC straight to a cubin, as CuPy does), reads
ptxas's resource report from NVRTC's log, computes the occupancy of each kernel at its launch
configuration (the CUDA occupancy calculator's rules, per target), and disassembles the cubin
with ``nvdisasm`` to count instructions, including those of the innermost loop that issues the
``mma``.

The CPU tests compile every registered module through the same NVRTC binding
(tests/scoring/test_kernels_nvrtc.py: no spills, the launches fit).

Tools: NVRTC (``nvidia-cuda-nvrtc``, which torch's CUDA build already brings) and ``nvdisasm``
(``nvidia-cuda-nvdisasm``), both pip packages that run without a GPU (scripts/setup.sh installs
them; requirements/cpu.txt pins them), or a CUDA toolkit (``--cuda-home`` / ``$CUDA_HOME``, as on
the device machine). Static counts, not a profile: what a kernel *executes* per ``mma`` depends
on branches taken; what a profiler (``ncu``, the GPU check's ``fm`` stage) measures on the device
is the other half.

    python benchmarks/kernel_report.py                  # a few seconds; replaces the section
    python benchmarks/kernel_report.py --arch sm_90 --no-report
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import glob
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._report import write_section  # noqa: E402

SECTION = "CUDA kernels: what the compiler made of them (no GPU)"


class ToolError(RuntimeError):
    """A compiler tool is missing or failed: one line saying what to do."""


# -- targets ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What one SM offers (CUDA C Programming Guide, "Compute capabilities", table 21; the
    occupancy calculator's allocation rules): registers are allocated per warp in units of 256
    (8 per thread) from 4 sub-partitions of 16,384; each block also takes 1 KiB of shared memory
    the system reserves."""

    arch: str
    gpus: str
    max_warps: int
    max_blocks: int
    smem_per_sm: int  # bytes, the largest carve-out
    smem_per_block_optin: int
    regs_per_sm: int = 65536
    sub_partitions: int = 4
    reg_unit: int = 256
    smem_reserved: int = 1024


TARGETS = {
    "sm_80": Target("sm_80", "A100", 64, 32, 167_936, 166_912),
    "sm_86": Target("sm_86", "RTX 30xx, A40", 48, 16, 102_400, 101_376),
    "sm_89": Target("sm_89", "RTX 40xx, L4, L40", 48, 24, 102_400, 101_376),
    "sm_90": Target("sm_90", "H100, H200", 64, 32, 233_472, 232_448),
}


@dataclass
class Resources:
    """ptxas's report for one kernel."""

    registers: int = 0
    barriers: int = 0
    smem: int = 0  # static shared memory, bytes
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


@dataclass
class Occupancy:
    blocks: int
    warps: int
    fraction: float
    limited_by: str


def occupancy(res: Resources, threads: int, dynamic_smem: int, t: Target) -> Occupancy:
    """Blocks (and warps) one SM keeps resident, and what limits them: the occupancy
    calculator's rules. A block that cannot fit at all gives 0 blocks, limited by what is short."""
    warps_per_block = math.ceil(threads / 32)
    regs_per_warp = math.ceil(max(res.registers, 1) * 32 / t.reg_unit) * t.reg_unit
    warps_by_regs = (t.regs_per_sm // t.sub_partitions // regs_per_warp) * t.sub_partitions
    limits = {
        "registers": warps_by_regs // warps_per_block,
        "warps": t.max_warps // warps_per_block,
        "blocks": t.max_blocks,
    }
    smem = res.smem + dynamic_smem
    if smem:
        limits["shared memory"] = (t.smem_per_sm // (smem + t.smem_reserved)
                                   if smem <= t.smem_per_block_optin else 0)
    blocks = min(limits.values())
    limited_by = ", ".join(k for k in ("shared memory", "registers", "warps", "blocks")
                           if limits.get(k) == blocks)
    return Occupancy(blocks, blocks * warps_per_block, blocks * warps_per_block / t.max_warps, limited_by)


# -- tools -----------------------------------------------------------------------------------
@dataclass
class Tools:
    nvrtc: Path
    builtins: Path | None
    nvdisasm: Path | None
    origin: str


def _site_dirs() -> list[Path]:
    import site

    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    return [Path(d) for d in dirs if Path(d).is_dir()]


def find_tools(cuda_home: str | None = None) -> Tools:
    """NVRTC and nvdisasm from a CUDA toolkit (``cuda_home`` or ``$CUDA_HOME``) or from the
    pip packages (``nvidia/cu13`` or ``nvidia/cuda_nvrtc``); a one-line ToolError when absent."""
    home = cuda_home or os.environ.get("CUDA_HOME")
    roots: list[tuple[Path, str]] = []
    if home:
        roots.append((Path(home), f"CUDA toolkit at {home}"))
    for d in _site_dirs():
        for sub in ("nvidia/cu13", "nvidia/cu12", "nvidia/cuda_nvrtc", "nvidia/cuda_nvdisasm"):
            if (d / sub).is_dir():
                roots.append((d / sub, "pip packages (nvidia-cuda-nvrtc, nvidia-cuda-nvdisasm)"))
    nvrtc = builtins = nvdisasm = None
    origin = ""
    for root, what in roots:
        if nvrtc is None:
            libs = sorted(glob.glob(str(root / "lib*" / "libnvrtc.so*")))
            libs = [p for p in libs if ".alt." not in p]
            if libs:
                nvrtc, origin = Path(libs[0]), what
                found = [p for p in glob.glob(str(root / "lib*" / "libnvrtc-builtins.so*")) if ".alt." not in p]
                builtins = Path(sorted(found)[0]) if found else None
        if nvdisasm is None and (root / "bin" / "nvdisasm").is_file():
            nvdisasm = root / "bin" / "nvdisasm"
    if nvdisasm is None:  # a toolkit on PATH or in its usual place (the device image's)
        found = shutil.which("nvdisasm") or next(
            (p for p in ("/usr/local/cuda/bin/nvdisasm",) if os.access(p, os.X_OK)), None)
        nvdisasm = Path(found) if found else None
    if nvrtc is None:
        raise ToolError("NVRTC not found: run scripts/setup.sh (it installs nvidia-cuda-nvrtc and "
                        "nvidia-cuda-nvdisasm), or point --cuda-home / $CUDA_HOME at a CUDA toolkit")
    return Tools(nvrtc, builtins, nvdisasm, origin)


class Nvrtc:
    """NVRTC through ctypes: CUDA C++ straight to a cubin, as CuPy's RawModule compiles."""

    def __init__(self, tools: Tools):
        try:
            if tools.builtins is not None:  # dlopen'ed by name at compile time: load it first
                ctypes.CDLL(str(tools.builtins), mode=ctypes.RTLD_GLOBAL)
            self.lib = ctypes.CDLL(str(tools.nvrtc))
        except OSError as e:
            raise ToolError(f"cannot load NVRTC from {tools.nvrtc}: {e}") from None

    def version(self) -> str:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        return f"{major.value}.{minor.value}"

    def compile(self, source: str, arch: str, name: str = "kernels.cu") -> tuple[bytes, str]:
        """(cubin, log) for ``-arch=<arch>`` with ptxas's resource report in the log."""
        lib = self.lib
        prog = ctypes.c_void_p()
        if lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None):
            raise ToolError("nvrtcCreateProgram failed")
        try:
            opts = [f"-arch={arch}".encode(), b"--ptxas-options=-v"]
            rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, buf)
            log = buf.value.decode(errors="replace")
            if rc:
                first = next((ln for ln in log.splitlines() if "error" in ln), log.strip()[:200])
                raise ToolError(f"NVRTC could not compile {name} for {arch}: {first}")
            lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
            cubin = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetCUBIN(prog, cubin)
            return cubin.raw, log
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


# -- ptxas's report ----------------------------------------------------------------------------
_ENTRY = re.compile(r"(?:Compiling entry function|Function properties for) '?([A-Za-z_]\w*)'?")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?")


def parse_ptxas(log: str) -> dict[str, Resources]:
    """Per kernel: registers, barriers, static shared memory, stack and spills, from ptxas's
    ``-v`` report (NVRTC's log with ``--ptxas-options=-v``)."""
    out: dict[str, Resources] = {}
    name = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            name = m.group(1)
            out.setdefault(name, Resources())
        elif name is None:
            continue
        elif m := _FRAME.search(line):
            r = out[name]
            r.stack, r.spill_stores, r.spill_loads = (int(v) for v in m.groups())
        elif m := _USED.search(line):
            r = out[name]
            r.registers = int(m.group(1))
            r.barriers = int(m.group(2) or 0)
            r.smem = int(m.group(3) or 0)
    return out


# -- the disassembly ---------------------------------------------------------------------------
_FUNC = re.compile(r"^\s*\.text\.([A-Za-z_]\w*):")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_]*)(\.[^\s]*)?\s*(.*?);")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


@dataclass
class Sass:
    """One kernel's instructions (address, opcode without modifiers, operands) and labels."""

    instructions: list[tuple[int, str, str]] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)


def parse_sass(text: str) -> dict[str, Sass]:
    """``nvdisasm -c`` output, per kernel."""
    out: dict[str, Sass] = {}
    cur: Sass | None = None
    pending: list[str] = []
    for line in text.splitlines():
        if m := _FUNC.match(line):
            cur = out.setdefault(m.group(1), Sass())
            pending = []
        elif cur is None:
            continue
        elif m := _LABEL.match(line):
            pending.append(m.group(1))
        elif m := _INSTR.match(line):
            addr = int(m.group(1), 16)
            for lab in pending:
                cur.labels[lab] = addr
            pending = []
            cur.instructions.append((addr, m.group(2), m.group(4)))
    return out


#: Instruction classes for the mix (SASS opcodes, modifiers stripped).
CLASSES = {
    "mma": {"HMMA", "HGMMA", "IMMA", "DMMA"},
    "ldmatrix": {"LDSM"},
    "cp.async": {"LDGSTS", "LDGDEPBAR", "DEPBAR"},
    "barrier": {"BAR"},
    "global": {"LDG", "STG", "ATOMG", "RED", "ATOM"},
    "shared": {"LDS", "STS", "ATOMS"},
    "local (spills)": {"LDL", "STL"},
    "branch": {"BRA", "BSSY", "BSYNC", "EXIT", "RET", "CALL", "WARPSYNC"},
}


def mix(instrs: list[tuple[int, str, str]]) -> dict[str, int]:
    """Instruction counts per class, with ``total``."""
    out = {k: 0 for k in CLASSES} | {"total": len(instrs)}
    for _, op, _ in instrs:
        for k, ops in CLASSES.items():
            if op in ops:
                out[k] += 1
    return out


def loops(s: Sass) -> list[tuple[int, int]]:
    """Every loop as (first, last) address: a branch back to a label at or before it."""
    out = []
    for addr, op, operands in s.instructions:
        if op == "BRA" and (m := _TARGET.search(operands)) and m.group(1) in s.labels:
            start = s.labels[m.group(1)]
            if start <= addr:
                out.append((start, addr))
    return out


def mma_loop(s: Sass) -> dict[str, int] | None:
    """The mix of the innermost loop that issues tensor-core instructions (the smallest loop
    body with an ``mma``), or None when the kernel has none."""
    best = None
    for start, end in loops(s):
        body = [i for i in s.instructions if start <= i[0] <= end]
        m = mix(body)
        if m["mma"] and (best is None or m["total"] < best["total"]):
            best = m
    return best


def nvdisasm_version(nvdisasm: Path | None) -> str:
    """``13.2.78`` from ``nvdisasm --version`` ("... release 13.2, V13.2.78"), or why not."""
    if nvdisasm is None:
        return "not found"
    try:
        text = subprocess.run([str(nvdisasm), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    m = re.search(r"V(\d+\.\d+\.\d+)", text)
    return m.group(1) if m else "unknown"


def disassemble(cubin: bytes, nvdisasm: Path) -> str:
    with tempfile.TemporaryDirectory(prefix="kernel-report-") as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        try:
            done = subprocess.run([str(nvdisasm), "-c", str(path)], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ToolError(f"nvdisasm ({nvdisasm}) failed: {e}") from None
    if done.returncode:
        raise ToolError(f"nvdisasm ({nvdisasm}) failed: {done.stderr.strip()[:200]}")
    return done.stdout


# -- our kernels -------------------------------------------------------------------------------
def modules() -> dict[str, str]:
    """The CUDA sources CuPy compiles on the device (``kernels.cuda_modules()``, the registry every
    module is added to), by the module that launches them."""
    from ffcv_dp4tl import kernels

    return {f"kernels.{name}": source for name, (source, _) in kernels.cuda_modules().items()}


def launch(name: str, d: int) -> tuple[int, int]:
    """(threads per block, dynamic shared memory) with which ``kernels.cuda`` / ``kernels.fused``
    launch ``name`` at feature dimension ``d``."""
    from ffcv_dp4tl.kernels import fused
    from ffcv_dp4tl.kernels.cuda_source import THREADS

    if name == "fused_assign_bf16":
        return fused.FUSED_THREADS, 0
    kinds = {t.name: kind for kind, t in fused.TILED_KERNELS.items()}
    if name in kinds:
        return fused.TILED_THREADS, fused.tiled_smem_bytes(kinds[name], fused.padded(d, fused.FBK))
    if name.startswith("segment_sum"):
        return (128 if d <= 128 else 256), 0
    return THREADS, 0


@dataclass
class KernelReport:
    module: str
    name: str
    arch: str
    threads: int
    dynamic_smem: int
    res: Resources
    occ: Occupancy
    mix: dict[str, int] | None = None
    loop: dict[str, int] | None = None


def report(archs: list[str], d: int, tools: Tools) -> tuple[list[KernelReport], str]:
    """Every kernel of both modules compiled for every target; the SASS mix where nvdisasm is
    there. Returns the reports and NVRTC's version."""
    nv = Nvrtc(tools)
    out: list[KernelReport] = []
    for arch in archs:
        t = TARGETS[arch]
        for module, source in modules().items():
            cubin, log = nv.compile(source, arch, module.replace(".", "_") + ".cu")
            res = parse_ptxas(log)
            if not res:
                raise ToolError(f"no ptxas resource report in NVRTC's log for {module} ({arch})")
            sass = parse_sass(disassemble(cubin, tools.nvdisasm)) if tools.nvdisasm else {}
            for name, r in res.items():
                threads, dyn = launch(name, d)
                s = sass.get(name)
                out.append(KernelReport(module, name, arch, threads, dyn, r, occupancy(r, threads, dyn, t),
                                        mix(s.instructions) if s else None, mma_loop(s) if s else None))
    return out, nv.version()


def markdown(reports: list[KernelReport], d: int, nvrtc_version: str, tools: Tools, argv: list[str]) -> str:
    lines = [
        f"## {SECTION}", "",
        f"**CPU** run (no GPU needed), {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M UTC}. NVRTC "
        f"{nvrtc_version} from {tools.origin}, straight to a cubin as CuPy compiles on the device"
        f"{', disassembled with nvdisasm' if tools.nvdisasm else ' (nvdisasm not found: no instruction mix)'}. "
        f"Launch configurations as `kernels.cuda` / `kernels.fused` launch them at D = {d}.", "",
        f"Versions: python {platform.python_version()}, NVRTC {nvrtc_version}, nvdisasm "
        f"{nvdisasm_version(tools.nvdisasm)} (the output depends on these, not on this machine's CPU).", "",
        f"Command: `{shlex.join(['python', 'benchmarks/kernel_report.py', *argv])}`", "",
        "Occupancy = warps an SM keeps resident over its maximum (the occupancy calculator's rules: "
        "registers allocated per warp in units of 256 from 4 sub-partitions, 1 KiB of shared memory "
        "reserved per block). Fewer resident warps hide less latency (of `ldmatrix`, `cp.async`, "
        "barriers): each SM sub-partition then has fewer warps to switch to.", "",
        *tables(reports, d),
    ]
    return "\n".join(lines)


def tables(reports: list[KernelReport], d: int, level: str = "###") -> list[str]:
    """The section's body: resources and occupancy per target, the last target's instruction mix,
    the findings; headings at ``level`` (the GPU check nests them one deeper)."""
    archs = sorted({r.arch for r in reports})
    lines: list[str] = []
    for arch in archs:
        t = TARGETS[arch]
        lines += [f"{level} {arch} ({t.gpus}): resources and occupancy", "",
                  "| module | kernel | threads | registers | spills (B stored / loaded) | shared (static + dynamic, B) "
                  "| blocks / SM | warps / SM | occupancy | limited by |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in (r for r in reports if r.arch == arch):
            lines.append(f"| `{r.module}` | `{r.name}` | {r.threads} | {r.res.registers} | "
                         f"{r.res.spill_stores} / {r.res.spill_loads} | {r.res.smem} + {r.dynamic_smem:,} | "
                         f"{r.occ.blocks} | {r.occ.warps} | {r.occ.fraction:.1%} | {r.occ.limited_by} |")
        lines.append("")
    sass = [r for r in reports if r.arch == archs[-1] and r.mix and r.mix["mma"]]
    if sass:
        lines += [f"{level} {archs[-1]}: instruction mix of the tensor-core kernels (static counts)", "",
                  "| kernel | instructions | mma | ldmatrix | cp.async | barriers | global ld/st | local ld/st "
                  "| innermost mma loop: instructions | its mma | its ldmatrix | instructions per mma there |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in sass:
            m, lp = r.mix, r.loop or {"total": 0, "mma": 0, "ldmatrix": 0}
            per = f"{lp['total'] / lp['mma']:.2f}" if lp["mma"] else "–"
            lines.append(f"| `{r.name}` | {m['total']} | {m['mma']} | {m['ldmatrix']} | {m['cp.async']} | "
                         f"{m['barrier']} | {m['global']} | {m['local (spills)']} | {lp['total']} | {lp['mma']} | "
                         f"{lp['ldmatrix']} | {per} |")
        lines.append("")
    return lines + findings(reports, d)


def findings(reports: list[KernelReport], d: int) -> list[str]:
    """What the numbers say about the fused FM kernels, computed from them."""
    from ffcv_dp4tl.kernels import fused

    out = ["What this says about the fused FM kernels (computed from the tables above):", ""]
    for arch in sorted({r.arch for r in reports}):
        by = {r.name: r for r in reports if r.arch == arch}
        direct = by.get("fused_assign_bf16")
        if direct:
            out.append(f"- {arch}: `direct` keeps {direct.occ.warps} warps per SM ({direct.occ.fraction:.1%}), "
                       f"limited by {direct.occ.limited_by}, and loads its fragments from global memory.")
        for kind, t in fused.TILED_KERNELS.items():
            tiled = by.get(t.name)
            if not tiled:
                continue
            per_sp = tiled.occ.warps / TARGETS[arch].sub_partitions
            spills = "no spills" if not (tiled.res.spill_stores or tiled.res.spill_loads) else "**it spills**"
            line = (f"- {arch}: `{kind}` ({t.rows} rows, {t.stages} cp.async stages) keeps {tiled.occ.blocks} "
                    f"block{'s' if tiled.occ.blocks != 1 else ''} of {tiled.threads // 32} warps per SM ({tiled.occ.warps} warps, "
                    f"{tiled.occ.fraction:.1%} occupancy, {per_sp:g} warps per sub-partition), limited by "
                    f"{tiled.occ.limited_by} ({tiled.res.registers} registers a thread, "
                    f"{tiled.dynamic_smem / 1024:.0f} KiB of shared memory a block at D = {d}); {spills}.")
            if tiled.loop:
                lp = tiled.loop
                line += (f" Innermost loop: {lp['mma']} mma and {lp['ldmatrix']} ldmatrix in {lp['total']} "
                         f"instructions; {tiled.mix['total']:,} instructions and {tiled.mix['barrier']} barrier "
                         "instructions in the kernel (one barrier runs per D stage).")
            out.append(line)
    out += ["",
            "So the tiled kernels run with few warps per sub-partition: while one waits on its `cp.async` stage, "
            "a barrier or an `ldmatrix`, at most one other can issue. Whether that, the stage depth or the "
            "epilogue is what costs the 4x is for the profiler to say (the GPU check's `kernels` stage, "
            "`benchmarks/profile_fused.py`: achieved occupancy, eligible warps, stall diagnoses)."]
    return out


def compare(ours: list[KernelReport], theirs: list[KernelReport], our_version: str,
            their_version: str, their_origin: str) -> list[str]:
    """Every kernel as two NVRTC versions compile it: registers, spills and occupancy side by
    side. Why: the device compiles with its own NVRTC (CuPy's, 13.2 on the H200) while this
    machine's is pinned to torch's (13.0); a register more is noise, but a kernel that loses a
    resident block or starts to spill under the device's compiler would change its speed, and
    this finds that without a device call."""
    by = {(r.arch, r.module, r.name): r for r in theirs}
    lines = [f"### NVRTC {our_version} vs {their_version} ({their_origin})", "",
             "| target | kernel | registers | spills (B stored / loaded) | warps / SM | occupancy | changed |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    changed = []
    for r in ours:
        o = by.get((r.arch, r.module, r.name))
        if o is None:
            lines.append(f"| {r.arch} | `{r.name}` | {r.res.registers} / – | – | – | – | missing in {their_version} |")
            changed.append(f"{r.name} ({r.arch}) missing")
            continue
        diff = [what for what, a, b in (
            ("occupancy", r.occ.warps, o.occ.warps),
            ("spills", (r.res.spill_stores, r.res.spill_loads), (o.res.spill_stores, o.res.spill_loads)),
            ("limited by", r.occ.limited_by, o.occ.limited_by)) if a != b]
        if diff:
            changed.append(f"{r.name} ({r.arch}): {', '.join(diff)}")
        lines.append(f"| {r.arch} | `{r.name}` | {r.res.registers} / {o.res.registers} | "
                     f"{r.res.spill_stores} / {r.res.spill_loads} → {o.res.spill_stores} / {o.res.spill_loads} | "
                     f"{r.occ.warps} / {o.occ.warps} | {r.occ.fraction:.1%} / {o.occ.fraction:.1%} | "
                     f"{'**' + ', '.join(diff) + '**' if diff else 'no'} |")
    lines += ["", (f"Under NVRTC {their_version}, {len(changed)} kernel(s) change occupancy, spills or "
                   f"limiter: {'; '.join(changed)}." if changed else
                   f"Under NVRTC {their_version} no kernel changes occupancy, spills or limiter "
                   "(registers may differ by a few; columns read ours / theirs)."), ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="sm_80,sm_90",
                   help=f"targets, comma-separated, of: {', '.join(TARGETS)} (default sm_80,sm_90)")
    p.add_argument("--d", type=int, default=512, help="feature dimension for the launch configurations")
    p.add_argument("--cuda-home", default=None, help="a CUDA toolkit to take NVRTC and nvdisasm from")
    p.add_argument("--compare-cuda-home", default=None, metavar="DIR",
                   help="a second NVRTC to compile every kernel with, side by side (e.g. the device's "
                        "version: `pip download --no-deps nvidia-cuda-nvrtc==13.2.86` and unzip it; "
                        "DIR is the unzipped nvidia/cu13)")
    p.add_argument("--report", type=Path, default=REPO / "BENCHMARKS.md")
    p.add_argument("--no-report", action="store_true")
    args = p.parse_args(argv)
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    bad = [a for a in archs if a not in TARGETS]
    if bad or not archs:
        p.error(f"--arch: unknown target {', '.join(bad) or '(none)'}; choose from {', '.join(TARGETS)}")
    if args.d < 1:
        p.error(f"--d must be >= 1, got {args.d}")
    try:
        tools = find_tools(args.cuda_home)
        reports, version = report(archs, args.d, tools)
        if args.compare_cuda_home:
            other = find_tools(args.compare_cuda_home)
            home = Path(args.compare_cuda_home).resolve()
            if home not in other.nvrtc.resolve().parents:  # (find_tools falls back to pip's)
                raise ToolError(f"--compare-cuda-home {args.compare_cuda_home}: no NVRTC there "
                                f"(lib*/libnvrtc.so*); it would compare {other.nvrtc} instead")
            theirs, their_version = report(archs, args.d, other)
    except ToolError as e:
        print(f"kernel_report: {e}", file=sys.stderr)
        return 2
    md = markdown(reports, args.d, version, tools, argv)
    if args.compare_cuda_home:
        md += "\n\n" + "\n".join(compare(reports, theirs, version, their_version, args.compare_cuda_home))
    print(md)
    if not args.no_report:
        write_section(args.report, SECTION, md.split("\n", 2)[2])  # (it adds the heading)
        print(f"\nwrote section '{SECTION}' in {args.report}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
