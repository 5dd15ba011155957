from __future__ import annotations

import json

from ffcv_dp4tl.data import load_manifest
from ffcv_dp4tl.training.finetune import finetune


def test_lp_writes_result(trained_run, target_dir, tmp_path):
    res = finetune("lp_tiny_cpu", trained_run / "checkpoint.pt", target_dir, tmp_path / "lp",
                   fmt="wds", device="cpu", progress=False,
                   overrides=["finetune.resolution=16", "eval.resolution=16", "train.epochs=5",
                              "data.num_workers=0"])
    saved = json.loads((tmp_path / "lp" / "result.json").read_text())
    assert saved["mode"] == "lp" and 0.0 <= saved["test_top1"] <= 1.0
    assert saved["target_classes"] == load_manifest(target_dir).num_classes
    assert res["test_top1"] == saved["test_top1"]
    lines = (tmp_path / "lp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1])["top1_test"] is not None


def test_ff_runs(trained_run, target_dir, tmp_path):
    res = finetune("ff_tiny_cpu", trained_run / "checkpoint.pt", target_dir, tmp_path / "ff",
                   fmt="wds", device="cpu", progress=False,
                   overrides=["finetune.resolution=16", "eval.resolution=16", "train.epochs=1",
                              "data.num_workers=0"])
    assert res["mode"] == "ff" and (tmp_path / "ff" / "result.json").exists()
