"""benchmarks/bench_train.py runs end to end (CPU smoke) and writes its Markdown section."""
from __future__ import annotations

import pytest

from repo_scripts import load_script


def _load():
    return load_script("benchmarks/bench_train.py")


def test_cpu_smoke_writes_ceiling_loader_and_training_rows(source_dir, tmp_path):
    out = tmp_path / "BENCH.md"
    assert _load().main(["--cpu-smoke", "--data", str(source_dir), "--recipe", "resnet18_tiny_cpu",
                         "--format", "wds", "--workdir", str(tmp_path), "--output", str(out)]) == 0
    text = out.read_text()
    assert "## Training throughput (CPU smoke)" in text
    for row in ("| ceiling", "| loader only", "| training epoch 1"):
        assert row in text
    assert "resnet18_tiny_cpu" in text and "–" not in text.split("| ceiling")[1].split("\n")[0]


def test_a_workdir_that_is_no_folder_is_one_line(tmp_path, capsys):
    """``--workdir`` naming no folder ended in a FileNotFoundError traceback (docs audit)."""
    with pytest.raises(SystemExit) as e:
        _load().main(["--cpu-smoke", "--data", str(tmp_path), "--workdir", str(tmp_path / "no")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        f"error: --workdir {tmp_path / 'no'} is not a folder; make it first, or leave --workdir out")

