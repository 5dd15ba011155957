"""``--protocol paper-code`` (recipes/paper_code/, the authors' released configs) end to end on the
embedded data at the smallest scale: the released recipes are chosen, the surrogate recipe's
scorer options reach the scorer (GraNd over every parameter, 5 runs after one epoch), source
features are read without crop, the pretraining cycles SGD's momentum and keeps best.pt, and LP
and FF start from it. (``--protocol paper``: tests/pipeline/test_paper_protocol.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.pipeline.recipes import PAPER_CODE_RECIPES
from ffcv_dp4tl.pipeline.run import run_pipeline

#: the embedded source/target and the tiny model of tests/pipeline/test_paper_protocol.py
SYNTH = ("synth:tiny,num_superclasses=4,classes_per_superclass=2,train_per_class=12,"
         "val_per_class=4,image_size=16,num_targets=1,target_classes=3,"
         "target_train_per_class=8,target_test_per_class=4")
TINY_MODEL = ("model.width=8", "model.small_input=true", "model.stem_stride=1")
PRETRAIN = ("model.arch=resnet18", *TINY_MODEL)
FINETUNE = ("train.epochs=3", "finetune.resolution=16", "eval.resolution=16", "data.num_workers=0")
#: the released surrogate/pretraining recipes shrunk to seconds; the knobs under test survive
SMALL_TRAIN = ("train.epochs=2", "lr.lr_peak_epoch=1", "train.batch_size=16", "train.min_res=16",
               "train.max_res=16", "train.start_ramp=0", "train.end_ramp=0",
               "train.res_multiple=8", "eval.resolution=16", "eval.batch_size=64",
               "data.num_workers=0")
SURROGATE = (*TINY_MODEL, *SMALL_TRAIN, "scoring.target_resolution=16",
             "scoring.source_resolution=16")


@pytest.fixture(scope="module")
def code_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper_code")
    cfg = PipelineConfig(source=SYNTH, target="", fmt="wds", device="cpu", k=4, method="grand",
                         ratio=0.5, protocol="paper-code", finetune=("lp", "ff"),
                         data_root=tmp / "data", runs_root=tmp / "runs",
                         overrides=(*PRETRAIN, *SMALL_TRAIN), surrogate_overrides=SURROGATE,
                         finetune_overrides=FINETUNE)
    logs: list[str] = []
    return cfg, run_pipeline(cfg, log=logs.append), logs


def test_paper_code_runs_the_released_recipes(code_run):
    _, res, _ = code_run
    assert res.protocol == "paper-code" and res.recipes == PAPER_CODE_RECIPES
    assert res.stages["finetune-lp"].values["recipe"] == "paper_code/lp"
    assert res.stages["finetune-ff"].values["recipe"] == "paper_code/ff"


def test_the_surrogate_recipe_sets_grand_as_the_authors(code_run):
    _, res, logs = code_run
    sc = res.stages["score"].values
    assert (sc["options"]["grad"], int(sc["options"]["runs"]), int(sc["options"]["epoch"])) == \
        ("full", 5, 1)
    assert len(sc["runs_scored"]) == 5
    assert sc["source_feature_input"] == [16, "none"]
    assert any("sets grand options grad=full" in s for s in logs)


def test_pretraining_cycles_momentum_keeps_best_and_finetuning_starts_from_it(code_run):
    _, res, _ = code_run
    starts = {Path(res.stages[f"finetune-{m}"].values["checkpoint"]) for m in ("lp", "ff")}
    assert len(starts) == 1
    start = starts.pop()
    pre = start.parent
    assert start.name == "best.pt" and pre.name.startswith("pretrain-")
    best = json.loads((pre / "best.json").read_text())
    rows = [json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()]
    assert best["top1_val"] == max(r["top1_val"] for r in rows)
    assert best["epoch"] == 1 + min(r["epoch"] for r in rows if r["top1_val"] == best["top1_val"])
    ckpt = torch.load(pre / "checkpoint.pt", map_location="cpu", weights_only=False)
    momentum = ckpt["optimizer"]["param_groups"][0]["momentum"]
    assert 0.8 <= momentum < 0.9 - 1e-6  # cycled against the lr (mid-decay at the last step)


def test_start_from_best_without_a_kept_best_fails_before_work(code_run, tmp_path):
    cfg, _, _ = code_run
    from dataclasses import replace

    with pytest.raises(DP4TLError, match="train.keep_best"):
        run_pipeline(replace(cfg, runs_root=tmp_path / "r",
                             overrides=(*cfg.overrides, "train.keep_best=false")),
                     log=lambda s: None)
    assert not (tmp_path / "r").exists()
