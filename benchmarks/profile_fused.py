#!/usr/bin/env python
"""Profile the fused FM kernels with Nsight Compute (``ncu``) on the GPU: where their time goes.

Why: on the H200 the fused kernels took 32 ms (``tiled``) and 65 ms (``direct``) at 1.28M x 512,
K = 2000, against an 8 ms goal, and timings alone cannot say why. The compiler's report
(``benchmarks/kernel_report.py``, no GPU) says what each kernel *could* keep in flight (the
``tiled`` kernel: 8 warps per SM); the hardware counters say what it *did*: achieved occupancy,
how busy the SM and memory were, how often a scheduler had no eligible warp, how many cycles a
warp waits between two instructions, and ncu's own diagnosis of the main stall.

Each kernel runs once to warm up (NVRTC compile, module load), then once under the profiler
(``--launch-skip 2 --launch-count 2`` over the two kernels' launches); ncu replays it per pass.
Clocks are left alone (``--clock-control none``: never change the card's settings).

    python benchmarks/profile_fused.py --md fm-ncu.md              # on the GPU host
    python benchmarks/profile_fused.py --n 262144 --ncu /path/ncu  # a smaller run, an explicit ncu
    python benchmarks/profile_fused.py --launch ...                # (what ncu runs: the kernels)

Without ncu (or a GPU) it writes one line saying so and exits 0, so the GPU check's CPU
rehearsal runs the same command. Then it adds what this host's compiler made of the kernels
(``benchmarks/kernel_report.py`` for sm_90, with the device's NVRTC and nvdisasm).
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ffcv_dp4tl.kernels.fused import FUSED_KERNEL_KINDS, TILED_KERNELS  # noqa: E402

#: The kernels profiled, by kind (their names in ``kernels.fused``; the regex ncu filters by).
KERNELS = {kind: TILED_KERNELS[kind].name if kind in TILED_KERNELS else "fused_assign_bf16"
           for kind in FUSED_KERNEL_KINDS}
KERNEL_FILTER = "regex:^fused_assign_bf16"
#: ncu sections (documented identifiers, stable across versions: an unknown *metric* name would
#: make ncu refuse the whole run, so no raw metrics are asked for).
SECTIONS = ("SpeedOfLight", "Occupancy", "LaunchStats", "SchedulerStats", "WarpStateStats",
            "ComputeWorkloadAnalysis", "MemoryWorkloadAnalysis")
#: Rows of the summary table: (ncu's metric name, what it tells a reader).
METRICS = (
    ("Duration", "kernel time"),
    ("Compute (SM) Throughput", "busiest SM unit, % of peak"),
    ("Memory Throughput", "busiest memory unit, % of peak"),
    ("Theoretical Occupancy", "what the resources allow"),
    ("Achieved Occupancy", "what ran"),
    ("Registers Per Thread", ""),
    ("Active Warps Per Scheduler", ""),
    ("Eligible Warps Per Scheduler", "warps ready to issue"),
    ("No Eligible", "cycles a scheduler had nothing to issue"),
    ("Issue Slots Busy", ""),
    ("Warp Cycles Per Issued Instruction", "latency between a warp's instructions"),
    ("L2 Hit Rate", ""),
    ("DRAM Throughput", ""),
)


def find_ncu(explicit: str | None = None) -> str | None:
    """``explicit``, else ``ncu`` on PATH, else the newest ``/opt/nvidia/nsight-compute/*/ncu``
    or ``$CUDA_HOME/bin/ncu`` (the device image's places); None when absent."""
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    found = shutil.which("ncu")
    if found:
        return found
    cands = sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"))
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    cands += [p for p in (f"{home}/bin/ncu",) if os.access(p, os.X_OK)]
    return cands[-1] if cands else None


def launch(n: int, d: int, k: int, seed: int) -> None:
    """Run each fused kernel twice (a warm-up, then the profiled launch) on Gaussian-mixture
    features, the FM benchmark's data: the target process ncu profiles."""
    import cupy as cp

    from benchmarks.bench_kmeans import make_data_cupy
    from ffcv_dp4tl.kernels import fused

    x, c, _ = make_data_cupy(n, d, k, 1, seed)
    prepared = fused.prepare_rows(x)
    for _ in range(2):
        for kind in KERNELS:
            fused.assign_nearest_fused(x, c, prepared=prepared, kernel=kind)
    cp.cuda.Device().synchronize()


def ncu_command(ncu: str, args: argparse.Namespace) -> list[str]:
    cmd = [ncu, "--clock-control", "none", "--target-processes", "all", "-k", KERNEL_FILTER,
           "--launch-skip", str(len(KERNELS)), "--launch-count", str(len(KERNELS))]
    for s in SECTIONS:
        cmd += ["--section", s]
    return cmd + [sys.executable, str(Path(__file__).resolve()), "--launch", "--n", str(args.n),
                  "--d", str(args.d), "--k", str(args.k), "--seed", str(args.seed)]


#: a kernel's header: ``  name (grid)x(block), Context …``; a C++ kernel's name carries its
#: signature (``name(const float *, int) (8, 1, 1)x(…)``), ours are ``extern "C"`` and do not
_HEADER = re.compile(r"^\s*([A-Za-z_]\w*)(?:\(.*?\))?\s*\((\d+), (\d+), (\d+)\)x\((\d+), (\d+), (\d+)\)")
_METRIC = re.compile(r"^\s+(\S.*?\S)\s{2,}(\S+)\s+([-\d.,]+)\s*$")
_RULE = re.compile(r"^\s+(OPT|WRN)\s+(.*)$")


def parse_ncu(text: str) -> dict[str, dict]:
    """Per kernel name: ``metrics`` {name: (unit, value text)} (the first of each name) and
    ``rules`` (ncu's OPT/WRN diagnoses, one paragraph each), from ncu's default text output."""
    out: dict[str, dict] = {}
    cur = None
    rule: list[str] | None = None
    for line in text.splitlines():
        if m := _HEADER.match(line):
            cur = out.setdefault(m.group(1), {"metrics": {}, "rules": [],
                                              "launch": f"grid {m.group(2)}, block {m.group(5)}"})
            rule = None
            continue
        if cur is None:
            continue
        if m := _RULE.match(line):
            rule = [m.group(1) + ": " + m.group(2).strip()]
            cur["rules"].append(rule)
        elif rule is not None and line.strip() and not line.lstrip().startswith(("Section:", "---")) \
                and not _METRIC.match(line) and line.startswith(" " * 10):
            rule.append(line.strip())
        else:
            rule = None
            if m := _METRIC.match(line):
                cur["metrics"].setdefault(m.group(1), (m.group(2), m.group(3)))
    for k in out.values():
        k["rules"] = [" ".join(r) for r in k["rules"]]
    return out


def title(args: argparse.Namespace) -> str:
    return f"### Nsight Compute: the fused FM kernels ({args.n:,} x {args.d}, K = {args.k:,})"


def markdown(parsed: dict[str, dict], args: argparse.Namespace, ncu: str, version: str) -> list[str]:
    names = [v for v in KERNELS.values() if v in parsed]
    lines = [title(args), "",
             f"`{ncu}` ({version}), `--clock-control none`, sections {', '.join(SECTIONS)}; each kernel's "
             "second launch (the first warms up). Static resources: `benchmarks/kernel_report.py`.", "",
             "| metric | unit | " + " | ".join(f"`{n}`" for n in names) + " | what it says |",
             "| --- | --- | " + " | ".join("---:" for _ in names) + " | --- |"]
    for metric, note in METRICS:
        vals = [parsed[n]["metrics"].get(metric) for n in names]
        if not any(vals):
            continue
        unit = next(v[0] for v in vals if v)
        lines.append(f"| {metric} | {unit} | " + " | ".join(v[1] if v else "–" for v in vals) + f" | {note} |")
    lines.append("")
    for n in names:
        lines.append(f"- `{n}` ({parsed[n]['launch']}): ncu's diagnoses:")
        rules = parsed[n]["rules"] or ["(none)"]
        lines += [f"  - {r[:400]}{'…' if len(r) > 400 else ''}" for r in rules[:8]]
    return lines


#: seconds kept after ncu for the compiler report (about 5 s of CPU on the 2-core machine)
REPORT_RESERVE_S = 8


def ncu_timeout(asked: int, now: float | None = None, reserve: int = 0) -> int:
    """``asked`` seconds, or fewer: what is left before ``GPU_CHECK_DEADLINE`` (the epoch second
    at which gpu_check.sh kills the stage) less 3 s to write the section and ``reserve`` for
    what runs after ncu, so a slow ncu ends in "did not finish" instead of a killed stage with
    nothing written (at least 1 s)."""
    deadline = os.environ.get("GPU_CHECK_DEADLINE", "")
    if not deadline.isdigit():
        return asked
    left = int(deadline) - int(time.time() if now is None else now) - 3 - reserve
    return max(1, min(asked, left))


def run_group(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a session of its own, whose every process is killed at the timeout:
    ncu's profiled target (a python holding the GPU) must not outlive a cut ncu into the next
    stage."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()  # (what it printed before: kernels profiled by then)
            raise subprocess.TimeoutExpired(cmd, timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def profile(args: argparse.Namespace, reserve: int = 0) -> list[str]:
    """ncu's section; ncu stops ``reserve`` s earlier than the stage needs (:func:`ncu_timeout`)."""
    ncu = find_ncu(args.ncu)
    head = [title(args), ""]
    if ncu is None:
        return [*head, "ncu not found on this machine (PATH, /opt/nvidia/nsight-compute/*/ncu, "
                "$CUDA_HOME/bin/ncu): no profile."]
    timeout = ncu_timeout(args.timeout, reserve=reserve)
    try:
        version = subprocess.run([ncu, "--version"], capture_output=True, text=True,
                                 timeout=min(30, timeout)).stdout.strip()
        version = version.splitlines()[-1] if version else "version unknown"
        timeout = ncu_timeout(args.timeout, reserve=reserve)  # (what is left after --version)
        done = run_group(ncu_command(ncu, args), timeout)
    except subprocess.TimeoutExpired as e:
        parsed = parse_ncu(e.output or "") if isinstance(e.output, str) else {}
        if any(v in parsed for v in KERNELS.values()):  # cut: keep the kernels it profiled
            return [*markdown(parsed, args, ncu, version),
                    f"_ncu did not finish in {timeout} s: the kernels above are those it had "
                    "profiled and printed by then._"]
        return [*head, f"ncu did not finish in {timeout} s: no profile."]
    except OSError as e:
        return [*head, f"ncu could not start ({e}): no profile."]
    print(done.stdout)
    print(done.stderr, file=sys.stderr)
    parsed = parse_ncu(done.stdout)
    if not any(v in parsed for v in KERNELS.values()):
        errors = [ln.strip() for ln in (done.stdout + done.stderr).splitlines() if "ERR" in ln or "rror" in ln]
        return [*head, f"ncu (rc {done.returncode}) profiled no fused kernel: "
                f"{'; '.join(errors[:3]) or 'see the stage log'}."]
    return markdown(parsed, args, ncu, version)


def compiler_report(d: int) -> list[str]:
    """What this host's compiler made of every kernel for sm_90 (``kernel_report``): the same
    tables as BENCHMARKS.md's section built without a GPU, here with the device's tools."""
    from benchmarks import kernel_report as kr

    head = ["### What the compiler made of the kernels (this host, sm_90)", ""]
    try:
        tools = kr.find_tools()
        reports, version = kr.report(["sm_90"], d, tools)
    except kr.ToolError as e:
        return [*head, f"{e}."]
    return [*head, f"NVRTC {version} from {tools.origin}.", "", *kr.tables(reports, d, level="####")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_280_000, help="rows (default 1,280,000, ImageNet)")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--k", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ncu", default=None, help="the ncu executable (default: found on PATH or /opt/nvidia)")
    p.add_argument("--timeout", type=int, default=120, help="seconds for the whole ncu run")
    p.add_argument("--md", type=Path, default=None, help="append the Markdown section to this file")
    p.add_argument("--compiler-report", action=argparse.BooleanOptionalAction, default=True,
                   help="after ncu, what this host's compiler made of the kernels (kernel_report)")
    p.add_argument("--launch", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("n", "d", "k"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.launch:
        launch(args.n, args.d, args.k, args.seed)
        return 0
    # ncu first, then the compiler report (seconds, no GPU needed; BENCHMARKS.md has it from
    # NVRTC 13.0 and 13.2 without a GPU, so it is the part to lose), each written as soon as it
    # is made: ncu stops REPORT_RESERVE_S before the stage's end to leave the report its time
    parts = [lambda: profile(args, REPORT_RESERVE_S if args.compiler_report else 0)]
    if args.compiler_report:
        parts.append(lambda: compiler_report(args.d))
    for part in parts:
        text = "\n".join(part()) + "\n"
        print(text, flush=True)
        if args.md:
            with open(args.md, "a", encoding="utf-8") as f:
                f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
