"""scripts/gpu_check.sh rehearsed on the CPU (GPU_CHECK_SMOKE=1): every stage's plumbing runs,
summary.md gets each stage's status and section, and publish_gpu.py files it in a report.

The device run is scarce (one short lease per task), so the script must not meet its first
bug there: this runs the same stages at toy sizes, with the loaders' GPU-decode path on CPU.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _publish():
    spec = importlib.util.spec_from_file_location("publish_gpu", REPO / "benchmarks" / "publish_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, OUT=str(tmp / "out"), GPU_CHECK_WORK=str(tmp / "work"), GPU_CHECK_SMOKE="1",
               GPU_CHECK_BUDGET="600", PYTHON=sys.executable)
    res = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--only", "env,fm,build,loaders,train,models"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    return tmp / "out"


def test_every_stage_ran_and_reported(smoke_run):
    summary = (smoke_run / "summary.md").read_text()
    logs = (smoke_run / "logs.txt").read_text()
    for stage in ("env", "fm", "build", "loaders", "train", "models"):
        row = re.search(rf"^\| {stage} \| (.*?) \| (\d+) \|$", summary, re.M)
        assert row, f"no status row for {stage}"
        assert row.group(1) == "ok", f"{stage}: {row.group(1)}\n{logs[-3000:]}"
    assert "| pytest |" not in summary  # --only honoured
    for heading in ("### Environment", "## FM kernels (CPU smoke)", "### Loaders alone", "vs the synthetic ceiling",
                    "### One training step per model"):
        assert heading in summary
    # every loader x kept-fraction row produced numbers, the GPU-decode path (on CPU) included
    loader_rows = [ln for ln in summary.splitlines() if re.match(r"^\| (ffcv|wds) \| (cpu|gpu) \|", ln)]
    assert len(loader_rows) == 4 * 3 and not any("failed" in ln for ln in loader_rows)
    train_rows = [ln for ln in summary.splitlines() if re.match(r"^\| (ffcv|wds) \+ (cpu|gpu) decode \|", ln)]
    assert len(train_rows) == 4 and not any("failed" in ln for ln in train_rows)
    assert "######## env.log" in logs and "######## train.log" in logs


def test_publish_files_the_summary_as_one_section(smoke_run, tmp_path):
    report = tmp_path / "BENCH.md"
    report.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    assert _publish().main([str(smoke_run / "summary.md"), "--report", str(report)]) == 0
    text = report.read_text()
    assert "## Other\n\nkept" in text
    titles = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert titles[0] == "## Other" and titles[1].startswith("## GPU check (") and len(titles) == 2
    assert "#### Environment" in text and "### FM kernels (CPU smoke)" in text  # headings demoted
    assert _publish().main([str(smoke_run / "summary.md"), "--report", str(report)]) == 0
    assert report.read_text() == text  # republishing replaces, never duplicates


def test_publish_refuses_other_files(tmp_path):
    bad = tmp_path / "x.md"
    bad.write_text("hello\n")
    with pytest.raises(SystemExit, match="not a gpu_check summary"):
        _publish().main([str(bad), "--report", str(tmp_path / "B.md")])
    with pytest.raises(SystemExit, match="does not exist"):
        _publish().main([str(tmp_path / "missing.md"), "--report", str(tmp_path / "B.md")])
