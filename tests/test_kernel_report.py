"""benchmarks/kernel_report.py: the occupancy rules, the parsers of ptxas's report and of the
disassembly, and the real compile of our kernels (NVRTC + nvdisasm from pip, no GPU)."""
from __future__ import annotations

import pytest
from repo_scripts import load_script

kr = load_script("benchmarks/kernel_report.py")


def _tools_or_skip():
    try:
        return kr.find_tools()
    except kr.ToolError as e:  # scripts/setup.sh installs them; a bare checkout may lack them
        pytest.skip(str(e))


@pytest.mark.parametrize("regs, threads, smem, arch, blocks, warps, limited", [
    # the occupancy calculator's textbook cases: 64 registers x 256 threads = 50 %
    (64, 256, 0, "sm_80", 4, 32, "registers"),
    (32, 256, 0, "sm_90", 8, 64, "registers, warps"),
    (12, 128, 0, "sm_90", 16, 64, "warps"),
    (16, 32, 0, "sm_90", 32, 32, "blocks"),
    # 72 registers: 2,304 a warp, 7 warps a sub-partition -> 28 warps -> 7 blocks of 4
    (72, 128, 0, "sm_90", 7, 28, "registers"),
    # registers are split among 4 sub-partitions: 96 registers = 3,072 a warp, 5 per sub-partition
    # (16,384 / 3,072), so 20 one-warp blocks, not the 21 that 65,536 / 3,072 would give
    (96, 32, 0, "sm_90", 20, 20, "registers"),
    # the tiled kernel: 150 KiB a block fits once in 228 KiB (and 175 registers allow 8 warps)
    (175, 256, 153_600, "sm_90", 1, 8, "shared memory, registers"),
    # 48 KiB a block: 4 blocks in 228 KiB (each also takes 1 KiB reserved), 2 on sm_86's 100 KiB
    (32, 128, 48 * 1024, "sm_90", 4, 16, "shared memory"),
    (32, 128, 48 * 1024, "sm_86", 2, 8, "shared memory"),
    # more than a block may opt in to: it cannot run at all
    (32, 128, 170_000, "sm_80", 0, 0, "shared memory"),
])
def test_occupancy_follows_the_calculator(regs, threads, smem, arch, blocks, warps, limited):
    occ = kr.occupancy(kr.Resources(registers=regs), threads, smem, kr.TARGETS[arch])
    assert (occ.blocks, occ.warps, occ.limited_by) == (blocks, warps, limited)
    assert occ.fraction == pytest.approx(warps / kr.TARGETS[arch].max_warps)


def test_static_and_dynamic_shared_memory_add_up():
    t = kr.TARGETS["sm_90"]
    alone = kr.occupancy(kr.Resources(registers=32, smem=60_000), 128, 0, t)
    both = kr.occupancy(kr.Resources(registers=32, smem=30_000), 128, 30_000, t)
    assert alone.blocks == both.blocks == 233_472 // 61_024


PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'fused_finalize' for 'sm_90'
ptxas info    : Function properties for fused_finalize
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
ptxas info    : Compile time = 14.041 ms
ptxas info    : Compiling entry function 'assign_partial' for 'sm_90'
ptxas info    : Function properties for assign_partial
    24 bytes stack frame, 16 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 62 registers, used 1 barriers, 8704 bytes smem, 400 bytes cmem[0]
"""


def test_parse_ptxas_reads_every_kernel():
    res = kr.parse_ptxas(PTXAS_LOG)
    assert res["fused_finalize"] == kr.Resources(registers=40)
    assert res["assign_partial"] == kr.Resources(registers=62, barriers=1, smem=8704, stack=24,
                                                 spill_stores=16, spill_loads=8)


SASS = """\
//--------------------- .text.k_mma              --------------------------
        .text.k_mma:
        /*0000*/                   S2R R0, SR_TID.X ;
.L_x_1:
        /*0010*/                   LDSM.16.M88.4 R4, [R2] ;
.L_x_2:
        /*0020*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;
        /*0030*/                   HMMA.16816.F32.BF16 R12, R4, R7, R12 ;
        /*0040*/               @P0 BRA `(.L_x_2) ;
        /*0050*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0060*/                   LDG.E R3, desc[UR4][R10.64] ;
        /*0070*/              @!P1 BRA `(.L_x_1) ;
        /*0080*/                   EXIT ;
        /*0090*/                   BRA `(.L_x_3) ;
.L_x_3:
        /*00a0*/                   NOP ;
//--------------------- .text.k_plain            --------------------------
        .text.k_plain:
        /*0000*/                   STL [R1], R2 ;
        /*0010*/                   EXIT ;
"""


def test_parse_sass_counts_classes_and_finds_the_innermost_mma_loop():
    sass = kr.parse_sass(SASS)
    assert set(sass) == {"k_mma", "k_plain"}
    m = kr.mix(sass["k_mma"].instructions)
    assert (m["total"], m["mma"], m["ldmatrix"], m["barrier"], m["global"], m["branch"]) == (11, 2, 1, 1, 1, 4)
    # two loops hold the mma: 0x10-0x70 (8 instructions) and 0x20-0x40 (3): the inner one
    assert kr.loops(sass["k_mma"]) == [(0x20, 0x40), (0x10, 0x70)]
    assert kr.mma_loop(sass["k_mma"]) == kr.mix(sass["k_mma"].instructions[2:5])
    assert kr.mma_loop(sass["k_plain"]) is None
    assert kr.mix(sass["k_plain"].instructions)["local (spills)"] == 1


def test_our_kernels_compile_for_every_target_with_the_intended_tensor_core_loop():
    """The real thing: both modules through NVRTC for sm_80 and sm_90, ptxas's report for every
    kernel CuPy launches, no spills in the FM assignment kernels, and the tiled kernel's inner
    loop is the designed one: per D stage of TBK columns, TBK/16 steps of 16 mma (2 row tiles x
    8 column tiles) fed by 6 ldmatrix each, unrolled."""
    from ffcv_dp4tl.kernels import fused
    from ffcv_dp4tl.kernels.cuda_source import KERNEL_NAMES

    tools = _tools_or_skip()
    reports, version = kr.report(["sm_80", "sm_90"], 512, tools)
    assert version.split(".")[0].isdigit()
    names = {r.name for r in reports if r.arch == "sm_90"}
    assert names == set(KERNEL_NAMES) | set(fused.FUSED_KERNELS)
    by = {(r.arch, r.name): r for r in reports}
    for arch in ("sm_80", "sm_90"):
        for kind, t in fused.TILED_KERNELS.items():
            tiled = by[(arch, t.name)]
            assert tiled.dynamic_smem == fused.tiled_smem_bytes(kind, 512)
            assert (tiled.res.spill_stores, tiled.res.spill_loads) == (0, 0)
            if t.min_blocks == 1:
                assert tiled.occ.blocks == 1 and tiled.occ.warps == fused.TILED_THREADS // 32
        # 64 rows a block: two blocks (16 warps) per SM on sm_90, where the shared memory allows it
        assert by[("sm_90", "fused_assign_bf16_tiled64")].occ.warps == 2 * fused.TILED_THREADS // 32
        assert by[(arch, "assign_partial")].res.smem > 0  # its static tiles
    if tools.nvdisasm is None:
        pytest.skip("nvdisasm not found: no instruction mix")
    steps = fused.TBK // 16
    for t in fused.TILED_KERNELS.values():
        tiled = by[("sm_90", t.name)]
        # per 16-wide D step a warp issues 8 mma and 1 ldmatrix of x~ per m16 tile, 4 of c~; the
        # compiler unrolls that step a whole number of times (2 = TBK / 16 for the 128-row kernels)
        mi = t.rows // 64
        assert tiled.loop["mma"] % (8 * mi) == 0 and tiled.loop["mma"] >= steps * 8 * mi
        assert tiled.loop["ldmatrix"] * 8 * mi == tiled.loop["mma"] * (4 + mi)
        assert tiled.mix["local (spills)"] == 0 and tiled.mix["cp.async"] > 0
    assert by[("sm_90", "fused_assign_bf16")].mix["ldmatrix"] == 0  # direct: fragments from global


def test_markdown_names_the_section_tables_and_findings(monkeypatch):
    tools = _tools_or_skip()
    reports, version = kr.report(["sm_90"], 512, tools)
    md = kr.markdown(reports, 512, version, tools, ["--arch", "sm_90"])
    assert md.startswith(f"## {kr.SECTION}\n")
    assert "### sm_90 (H100, H200): resources and occupancy" in md
    assert "| `kernels.fused` | `fused_assign_bf16_tiled` | 256 |" in md
    assert "`tiled` (128 rows, 2 cp.async stages) keeps 1 block of 8 warps per SM" in md
    assert "`tiled3` (128 rows, 3 cp.async stages) keeps 1 block of 8 warps per SM" in md
    assert "`tiled64` (64 rows, 3 cp.async stages) keeps 2 blocks of 8 warps per SM (16 warps" in md


def test_main_refuses_bad_arguments_in_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        kr.main(["--arch", "sm_70"])
    assert e.value.code == 2
    assert "unknown target sm_70" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        kr.main(["--d", "0"])


def test_missing_tools_are_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(kr, "_site_dirs", lambda: [tmp_path])
    monkeypatch.delenv("CUDA_HOME", raising=False)
    assert kr.main(["--no-report", "--cuda-home", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kernel_report: NVRTC not found") and "\n" not in err


def test_writes_its_section_into_the_report(tmp_path):
    _tools_or_skip()
    report = tmp_path / "B.md"
    report.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    for _ in range(2):  # a rerun replaces its section
        assert kr.main(["--arch", "sm_90", "--report", str(report)]) == 0
    text = report.read_text()
    assert "## Other\n\nkept" in text and text.count(f"## {kr.SECTION}") == 1
    assert text.count("#### ") == 0 and text.count("### sm_90 (H100, H200)") == 1


def _rep(name: str, regs: int, warps: int, spills: int = 0, arch: str = "sm_90") -> "kr.KernelReport":
    occ = kr.Occupancy(blocks=warps // 8, warps=warps, fraction=warps / 64, limited_by="registers")
    return kr.KernelReport("kernels.fused", name, arch, 256, 0,
                           kr.Resources(registers=regs, spill_stores=spills, spill_loads=spills), occ)


def test_compare_flags_a_kernel_that_loses_occupancy_or_spills_under_the_other_nvrtc():
    ours = [_rep("a", 120, 16), _rep("b", 170, 8), _rep("c", 60, 32)]
    theirs = [_rep("a", 122, 16), _rep("b", 170, 8, spills=8), _rep("c", 66, 24)]
    text = "\n".join(kr.compare(ours, theirs, "13.0", "13.2", "there"))
    rows = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| sm_90")}
    assert rows["`a`"].rstrip().endswith("| no |")  # two registers more: noise
    assert "**spills**" in rows["`b`"] and "**occupancy**" in rows["`c`"]
    assert "2 kernel(s) change" in text and "b (sm_90): spills" in text and "c (sm_90): occupancy" in text


def test_compare_says_so_when_nothing_changes_and_names_a_kernel_the_other_lacks():
    same = [_rep("a", 120, 16)]
    assert "no kernel changes occupancy" in "\n".join(kr.compare(same, same, "13.0", "13.2", "there"))
    assert "a (sm_90) missing" in "\n".join(kr.compare(same, [], "13.0", "13.2", "there"))


def test_compare_cuda_home_without_an_nvrtc_is_one_line(tmp_path, capsys):
    _tools_or_skip()
    assert kr.main(["--no-report", "--arch", "sm_90", "--compare-cuda-home", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no NVRTC there" in err[0] and str(tmp_path) in err[0]
