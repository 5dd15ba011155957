"""benchmarks/profile_fused.py: the ncu command, the parser of ncu's report, and the one line a
machine without ncu gets (the GPU check's CPU rehearsal runs that path)."""
from __future__ import annotations

import os
import re
import sys
import time

import pytest
from repo_scripts import load_script

pf = load_script("benchmarks/profile_fused.py")

# ncu's default text output (Nsight Compute 2025.x layout), trimmed to two sections per kernel
NCU_TEXT = """\
==PROF== Connected to process 4242 (/usr/bin/python3.12)
==PROF== Profiling "fused_assign_bf16": 0%....50%....100% - 38 passes
==PROF== Profiling "fused_assign_bf16_tiled": 0%....50%....100% - 38 passes
==PROF== Disconnected from process 4242
[4242] python3.12@127.0.0.1
  fused_assign_bf16 (8192, 1, 1)x(128, 1, 1), Context 1, Stream 13, Device 0, CC 9.0
    Section: GPU Speed Of Light Throughput
    ----------------------- ----------- ------------
    Metric Name             Metric Unit Metric Value
    ----------------------- ----------- ------------
    DRAM Frequency                  Ghz         3.20
    SM Frequency                    Ghz         1.98
    Elapsed Cycles                cycle   52,611,215
    Memory Throughput                 %        61.48
    Duration                         ms        26.57
    Compute (SM) Throughput           %        35.02
    ----------------------- ----------- ------------

    OPT   This kernel exhibits low compute throughput and memory bandwidth utilization relative to the peak
          performance of this device. Achieved compute throughput and/or memory bandwidth below 60.0% of peak
          typically indicate latency issues.

    Section: Occupancy
    ------------------------------- ----------- ------------
    Metric Name                     Metric Unit Metric Value
    ------------------------------- ----------- ------------
    Block Limit Registers                 block            7
    Theoretical Occupancy                     %        43.75
    Achieved Occupancy                        %        41.02
    Waves Per SM                                        8.87
    ------------------------------- ----------- ------------

  fused_assign_bf16_tiled (4096, 1, 1)x(256, 1, 1), Context 1, Stream 13, Device 0, CC 9.0
    Section: GPU Speed Of Light Throughput
    ----------------------- ----------- ------------
    Duration                         ms        12.90
    Compute (SM) Throughput           %        28.77
    ----------------------- ----------- ------------
    Section: Warp State Statistics
    ---------------------------------------- ----------- ------------
    Warp Cycles Per Issued Instruction             cycle         9.91
    ---------------------------------------- ----------- ------------

    OPT   Estimated Speedup: 48.2%
          On average, each warp of this kernel spends 4.1 cycles being stalled waiting at a barrier. This
          represents about 41.4% of the total average of 9.9 cycles between issuing two instructions.
    WRN   Theoretical occupancy is limited by shared memory.
"""


def test_parse_ncu_reads_metrics_launches_and_diagnoses_per_kernel():
    p = pf.parse_ncu(NCU_TEXT)
    assert set(p) == {"fused_assign_bf16", "fused_assign_bf16_tiled"}  # (the two in the sample)
    assert set(pf.KERNELS) == {"direct", "tiled", "tiled3", "tiled64"} and set(p) < set(pf.KERNELS.values())
    d, t = p["fused_assign_bf16"], p["fused_assign_bf16_tiled"]
    assert d["launch"] == "grid 8192, block 128" and t["launch"] == "grid 4096, block 256"
    assert d["metrics"]["Duration"] == ("ms", "26.57")
    assert d["metrics"]["Achieved Occupancy"] == ("%", "41.02")
    assert d["metrics"]["Elapsed Cycles"] == ("cycle", "52,611,215")
    assert "Waves Per SM" not in d["metrics"]  # (no unit column: not a row of the table)
    assert t["metrics"]["Warp Cycles Per Issued Instruction"] == ("cycle", "9.91")
    assert len(d["rules"]) == 1 and d["rules"][0].startswith("OPT: This kernel exhibits low compute")
    assert d["rules"][0].endswith("typically indicate latency issues.")
    assert t["rules"] == [
        "OPT: Estimated Speedup: 48.2% On average, each warp of this kernel spends 4.1 cycles being stalled "
        "waiting at a barrier. This represents about 41.4% of the total average of 9.9 cycles between issuing "
        "two instructions.",
        "WRN: Theoretical occupancy is limited by shared memory."]


def test_markdown_puts_the_kernels_side_by_side():
    args = pf.main.__globals__["argparse"].Namespace(n=524288, d=512, k=2000)
    md = "\n".join(pf.markdown(pf.parse_ncu(NCU_TEXT), args, "/opt/ncu", "Version 2025.3.1"))
    assert "| metric | unit | `fused_assign_bf16` | `fused_assign_bf16_tiled` | what it says |" in md
    assert "| Duration | ms | 26.57 | 12.90 | kernel time |" in md
    assert "| Achieved Occupancy | % | 41.02 | – | what ran |" in md
    assert "Eligible Warps" not in md  # a metric neither kernel reported has no row
    assert "  - WRN: Theoretical occupancy is limited by shared memory." in md


def test_ncu_command_leaves_the_clocks_alone_and_skips_the_warm_up(tmp_path):
    args = pf.main.__globals__["argparse"].Namespace(n=1000, d=64, k=10, seed=3)
    cmd = pf.ncu_command("/x/ncu", args)
    assert cmd[:3] == ["/x/ncu", "--clock-control", "none"]
    assert cmd[cmd.index("--launch-skip") + 1] == cmd[cmd.index("--launch-count") + 1] == str(len(pf.KERNELS))
    assert cmd[cmd.index("-k") + 1] == pf.KERNEL_FILTER
    assert cmd[cmd.index("--launch") - 2:] == [sys.executable, os.path.realpath(pf.__file__), "--launch", "--n",
                                                "1000", "--d", "64", "--k", "10", "--seed", "3"]


def test_find_ncu_takes_an_executable_only(tmp_path, monkeypatch):
    fake = tmp_path / "ncu"
    fake.write_text("#!/bin/sh\n")
    assert pf.find_ncu(str(fake)) is None  # not executable
    fake.chmod(0o755)
    assert pf.find_ncu(str(fake)) == str(fake)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert pf.find_ncu() == str(fake)


def test_without_ncu_it_says_so_in_one_line_and_adds_the_compiler_report(tmp_path, monkeypatch):
    monkeypatch.setattr(pf, "find_ncu", lambda explicit=None: None)
    md = tmp_path / "k.md"
    assert pf.main(["--n", "100", "--k", "4", "--md", str(md)]) == 0
    text = md.read_text()
    assert "ncu not found on this machine" in text
    assert "### What the compiler made of the kernels (this host, sm_90)" in text
    assert ("#### sm_90 (H100, H200): resources and occupancy" in text) or ("NVRTC not found" in text)


def test_a_fake_ncu_that_profiles_nothing_is_reported(tmp_path, monkeypatch):
    fake = tmp_path / "ncu"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Version 0.0'; exit 0; fi\n"
                    "echo '==ERROR== ERR_NVGPUCTRPERM - no permission to access GPU performance counters'\nexit 1\n")
    fake.chmod(0o755)
    args = pf.main.__globals__["argparse"].Namespace(n=10, d=4, k=2, seed=0, ncu=str(fake), timeout=30)
    lines = pf.profile(args)
    assert lines[-1].startswith("ncu (rc 1) profiled no fused kernel: ==ERROR== ERR_NVGPUCTRPERM")


@pytest.mark.parametrize("bad", [["--n", "0"], ["--k", "-1"]])
def test_bad_sizes_are_refused(bad, capsys):
    with pytest.raises(SystemExit) as e:
        pf.main(bad)
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_parse_ncu_takes_a_kernel_header_with_its_signature_and_older_unit_names():
    """A C++ kernel's header carries its signature; older ncu writes ``msecond`` and leaves some
    rows without a unit (such a row is skipped, the rest of the section still read)."""
    text = (
        "  fused_assign_bf16(const unsigned short *, int) (8192, 1, 1)x(128, 1, 1), Context 1, Stream 7\n"
        "    Section: GPU Speed Of Light Throughput\n"
        "    ------------------------------ --------------- ------------------------------\n"
        "    Duration                             msecond                           3.22\n"
        "    Issued Warp Per Scheduler    0.60\n"
        "    Eligible Warps Per Scheduler            warp                           1.67\n")
    p = pf.parse_ncu(text)["fused_assign_bf16"]
    assert p["launch"] == "grid 8192, block 128"
    assert p["metrics"]["Duration"] == ("msecond", "3.22")
    assert p["metrics"]["Eligible Warps Per Scheduler"] == ("warp", "1.67")
    assert "Issued Warp Per Scheduler" not in p["metrics"]


def test_a_slow_ncu_ends_before_the_stage_does_and_leaves_the_compiler_report_its_time(
        tmp_path, monkeypatch):
    """gpu_check.sh kills the kernels stage at its limit (25 s) while ncu had 60 s: a slow ncu
    lost the whole section (review). ncu now runs first, as it is the device's evidence (the
    compiler report exists without a GPU), and stops 3 s + REPORT_RESERVE_S before the stage's
    deadline (GPU_CHECK_DEADLINE), so the report after it still gets written."""
    fake = tmp_path / "ncu"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Version 0.0'; exit 0; fi\n"
                    f"test -s {tmp_path / 'k.md'} || touch {tmp_path / 'ncu_was_first'}\n"
                    f"sleep 30 & echo $! > {tmp_path / 'child.pid'}; wait\n")
    fake.chmod(0o755)
    assert pf.ncu_timeout(60, now=1000) == 60  # no deadline: as asked
    monkeypatch.setenv("GPU_CHECK_DEADLINE", "1010")
    assert pf.ncu_timeout(60, now=1000) == 7 and pf.ncu_timeout(5, now=1000) == 5
    assert pf.ncu_timeout(60, now=1000, reserve=4) == 3
    assert pf.ncu_timeout(60, now=1009) == 1
    monkeypatch.setenv("GPU_CHECK_DEADLINE", str(int(time.time()) + pf.REPORT_RESERVE_S + 5))
    md = tmp_path / "k.md"
    t0 = time.monotonic()
    assert pf.main(["--n", "100", "--k", "4", "--ncu", str(fake), "--md", str(md)]) == 0
    assert time.monotonic() - t0 < 25
    text = md.read_text()
    assert re.search(r"ncu did not finish in [12] s: no profile\.", text), text
    assert text.index("ncu did not finish") < text.index("### What the compiler made of the kernels")
    assert (tmp_path / "ncu_was_first").exists()
    child = int((tmp_path / "child.pid").read_text())  # ncu's target: killed with it
    for _ in range(50):
        if not os.path.exists(f"/proc/{child}") or " Z " in open(f"/proc/{child}/stat").read():
            break
        time.sleep(0.1)
    else:
        raise AssertionError("ncu's child outlived the timeout")
    md.unlink()  # --no-compiler-report: ncu alone, with no reserve kept
    monkeypatch.setenv("GPU_CHECK_DEADLINE", str(int(time.time()) + 5))
    assert pf.main(["--n", "100", "--k", "4", "--ncu", str(fake), "--md", str(md),
                    "--no-compiler-report"]) == 0
    text = md.read_text()
    assert re.search(r"ncu did not finish in [12] s", text) and "compiler made" not in text


def test_an_ncu_whose_version_hangs_is_one_line_too(tmp_path, monkeypatch):
    """`ncu --version` timing out raised UnboundLocalError (the timeout was set after it;
    review): the same "did not finish" line now."""
    fake = tmp_path / "ncu"
    fake.write_text("#!/bin/sh\nsleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setenv("GPU_CHECK_DEADLINE", str(int(time.time()) + 5))
    args = pf.main.__globals__["argparse"].Namespace(n=10, d=4, k=2, seed=0, ncu=str(fake), timeout=30)
    assert re.fullmatch(r"ncu did not finish in [12] s: no profile\.", pf.profile(args)[-1])


def test_an_ncu_cut_by_its_timeout_keeps_the_kernels_it_had_printed(tmp_path, monkeypatch):
    """A cut ncu returned only "did not finish", dropping the kernels it had already profiled
    and printed (review): those are published, with a line saying the run was cut."""
    fake = tmp_path / "ncu"
    fake.write_text(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Version 0.0'; exit 0; fi\n"
        "echo '  fused_assign_bf16(const unsigned short *, int) (8192, 1, 1)x(128, 1, 1), Context 1, Stream 7'\n"
        "echo '    Section: GPU Speed Of Light Throughput'\n"
        "echo '    ------------------------------ --------------- ------------------------------'\n"
        "echo '    Duration                             msecond                           3.22'\n"
        "exec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.delenv("GPU_CHECK_DEADLINE", raising=False)
    args = pf.main.__globals__["argparse"].Namespace(n=10, d=4, k=2, seed=0, ncu=str(fake), timeout=2)
    lines = pf.profile(args)
    text = "\n".join(lines)
    assert "| Duration | msecond | 3.22 |" in text and "`fused_assign_bf16`" in text, text
    assert lines[-1] == ("_ncu did not finish in 2 s: the kernels above are those it had profiled "
                         "and printed by then._")
