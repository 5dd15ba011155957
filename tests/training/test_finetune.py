from __future__ import annotations

import importlib
import json

import torch

from ffcv_dp4tl.data import load_manifest
from ffcv_dp4tl.training.checkpoint import Checkpoint
from ffcv_dp4tl.training.finetune import finetune

# (the package exports a function of the same name)
finetune_module = importlib.import_module("ffcv_dp4tl.training.finetune")

LP = ["finetune.resolution=16", "eval.resolution=16", "data.num_workers=0"]


def test_lp_writes_result(trained_run, target_dir, tmp_path):
    res = finetune("lp_tiny_cpu", trained_run / "checkpoint.pt", target_dir, tmp_path / "lp",
                   fmt="wds", device="cpu", progress=False,
                   overrides=["finetune.resolution=16", "eval.resolution=16", "train.epochs=5",
                              "data.num_workers=0"])
    saved = json.loads((tmp_path / "lp" / "result.json").read_text())
    assert saved["mode"] == "lp" and saved["test_top1"] is not None
    assert saved["target_classes"] == load_manifest(target_dir).num_classes
    assert res["test_top1"] == saved["test_top1"]
    lines = (tmp_path / "lp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[-1])["top1_test"] == saved["test_top1"]
    # top-1 is a share of the test samples: a whole number of them
    n = saved["test_samples"]
    assert n > 0 and abs(saved["test_top1"] * n - round(saved["test_top1"] * n)) < 1e-6


def test_lp_keeps_the_backbone_frozen_and_beats_chance(trained_run, target_dir, tmp_path,
                                                       monkeypatch):
    """LP trains only the new head: every other tensor of the model (weights and BN running
    statistics) is bitwise the checkpoint's afterwards; and the probe beats chance on the
    tiny target (3 classes, 12 test samples: chance is 4/12; measured 8/12 after 20 epochs)."""
    models = []
    real = finetune_module.load_pretrained

    def spy(*a, **k):
        model, ckpt = real(*a, **k)
        models.append(model)
        return model, ckpt

    monkeypatch.setattr(finetune_module, "load_pretrained", spy)
    res = finetune("lp_tiny_cpu", trained_run / "checkpoint.pt", target_dir, tmp_path,
                   fmt="wds", device="cpu", progress=False, overrides=LP + ["train.epochs=20"])
    (model,) = models
    before = Checkpoint.load(trained_run / "checkpoint.pt").model
    after = model.state_dict()
    head = {k for k in after if k.startswith("fc.")}
    assert head == {"fc.weight", "fc.bias"}
    assert after["fc.weight"].shape[0] == res["target_classes"] == 3  # the new head
    for k in sorted(set(after) - head):  # nothing else moved
        assert torch.equal(after[k], before[k]), k
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("fc."))
    chance = 1 / res["target_classes"]
    assert res["test_top1"] >= chance + 1.5 / res["test_samples"], res
    assert res["train_top1"] >= 0.75, res


def test_ff_runs(trained_run, target_dir, tmp_path):
    res = finetune("ff_tiny_cpu", trained_run / "checkpoint.pt", target_dir, tmp_path / "ff",
                   fmt="wds", device="cpu", progress=False,
                   overrides=["finetune.resolution=16", "eval.resolution=16", "train.epochs=1",
                              "data.num_workers=0"])
    assert res["mode"] == "ff" and (tmp_path / "ff" / "result.json").exists()
    rows = [json.loads(x) for x in (tmp_path / "ff" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0] and rows[0]["top1_test"] == res["test_top1"]
