"""The paper protocol (recipes/paper/, ``--protocol paper``), per-seed metrics, brought weights
and the LM target input — at the smallest scale (a 16 px synth source, width-8 models)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ffcv_dp4tl.data import load_manifest
from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.pipeline.recipes import PAPER_RECIPES, RECIPE_SETS, recipe_set
from ffcv_dp4tl.pipeline.run import run_pipeline
from ffcv_dp4tl.training.models import create_model
from tiny_data import SYNTH

TINY_MODEL = ("model.width=8", "model.small_input=true", "model.stem_stride=1")
#: the paper recipes shrunk to seconds (the values under test are the recipe *choice* and the
#: protocol's knobs that survive: no TTA, eval every epoch, target read at 224 with no crop)
PRETRAIN = ("model.arch=resnet18", *TINY_MODEL, "train.epochs=1", "train.batch_size=16",
            "train.min_res=16", "train.max_res=16", "train.start_ramp=0", "train.end_ramp=0",
            "train.res_multiple=8", "train.precision=fp32", "eval.resolution=16",
            "eval.batch_size=64", "data.num_workers=0", "eval.every=1")
SURROGATE = (*TINY_MODEL, "data.num_workers=0", "eval.resolution=16")
FINETUNE = ("train.epochs=3", "finetune.resolution=16", "eval.resolution=16", "data.num_workers=0")


def test_recipe_sets_fast_unchanged_and_paper_per_target():
    assert recipe_set("fast", "tiny") == RECIPE_SETS["tiny"]
    assert recipe_set("fast", "full")["pretrain"] == "resnet50_16ep"
    assert recipe_set("paper", "tiny", "flowers102") == PAPER_RECIPES
    c10 = recipe_set("paper", "full", "cifar10")
    assert (c10["lp"], c10["ff"]) == ("paper/lp_cifar10", "paper/ff_cifar10")
    with pytest.raises(DP4TLError, match="protocol"):
        recipe_set("slow", "tiny")


def _tiny_state_dict(num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return create_model("resnet18", num_classes, width=8, small_input=True).state_dict()


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, data_root):
    """--protocol paper with a brought surrogate (timm-style file) and 2 seeds, LP only."""
    tmp = tmp_path_factory.mktemp("paper")
    cfg0 = PipelineConfig(source=SYNTH, target="", fmt="wds", device="cpu", k=4, method="lm",
                          ratio=0.5, protocol="paper", finetune=("lp",),
                          data_root=data_root, runs_root=tmp / "runs", overrides=PRETRAIN,
                          surrogate_overrides=SURROGATE, finetune_overrides=FINETUNE,
                          seeds=(0, 1))
    from ffcv_dp4tl.pipeline.resolve import resolve_data

    src_dir, _ = resolve_data(cfg0, lambda s: None)
    n = load_manifest(src_dir).num_classes
    weights = tmp / "resnet18_timm.pth"  # timm's checkpoint layout: wrapped, DDP-prefixed
    torch.save({"state_dict": {f"module.{k}": v for k, v in _tiny_state_dict(n).items()},
                "epoch": 3}, weights)
    from dataclasses import replace

    cfg = replace(cfg0, surrogate_weights=str(weights))
    logs: list[str] = []
    res = run_pipeline(cfg, log=logs.append)
    return tmp, cfg, res, logs


@pytest.mark.slow
def test_paper_protocol_runs_the_paper_recipes(paper_run):
    tmp, cfg, res, _ = paper_run
    assert res.protocol == "paper"
    assert res.recipes == {k: v for k, v in PAPER_RECIPES.items() if k != "ff"}  # (LP only ran)
    lp = res.stages["finetune-lp"].values
    assert lp["recipe"] == "paper/lp" and lp["flip_tta"] is False
    # eval.every = 1 in paper/lp: every epoch is a candidate for "best"
    assert lp["evaluated_epochs"] == 3 and 1 <= lp["best_epoch"] <= 3
    assert lp["best_test_top1"] >= lp["final_test_top1"] == lp["test_top1"]


@pytest.mark.slow
def test_paper_protocol_reads_the_target_at_224_without_crop(paper_run):
    _, _, res, _ = paper_run
    sc = res.stages["score"].values
    assert (sc["target_resolution"], sc["target_crop"]) == (224, "none")


@pytest.mark.slow
def test_brought_surrogate_is_imported_not_trained_and_reported(paper_run):
    tmp, cfg, res, logs = paper_run
    sur = res.stages["surrogate"].values
    assert sur["brought"] and sur["weights"] == cfg.surrogate_weights and sur["arch"] == "resnet18"
    sur_dir = res.stages["surrogate"].dir  # imported: a checkpoint, no training epoch written
    assert (sur_dir / "checkpoint.pt").exists() and not (sur_dir / "metrics.jsonl").exists()
    report = Path(res.report).read_text()
    assert "brought weights" in report and "not trained" in report
    from ffcv_dp4tl.bench.cost_table import cost_row

    assert cost_row(res, "lm", 0.5, 0, 0.0)["surrogate_brought"] is True


@pytest.mark.slow
def test_several_seeds_report_final_and_best_mean_std(paper_run):
    _, _, res, _ = paper_run
    assert res.seeds == [0, 1]
    assert {"pretrain", "pretrain-seed1", "finetune-lp", "finetune-lp-seed1"} <= set(res.stages)
    sm = res.summary["lp"]
    finals = [p["final"] for p in sm["seeds"]]
    assert sm["n"] == 2 and sm["final_mean"] == pytest.approx(sum(finals) / 2)
    assert sm["final_std"] == pytest.approx(abs(finals[0] - finals[1]) / 2 ** 0.5)
    assert sm["best_mean"] >= sm["final_mean"]
    saved = json.loads((Path(res.report).parent / "results.json").read_text())
    assert saved["summary"]["lp"]["n"] == 2
    assert "mean ± std over 2 seeds" in Path(res.report).read_text()
    # seed 1 is another trial: another init and another data order / augmentation draws
    from ffcv_dp4tl.training.checkpoint import Checkpoint

    trained = {s: Checkpoint.load(res.pretrain(s).dir / "checkpoint.pt").training_recipe()
               for s in (0, 1)}
    assert [(trained[s].train.seed, trained[s].data.seed) for s in (0, 1)] == [(0, 0), (1, 1)]


def test_bad_protocol_combinations_fail_before_work(tmp_path):
    base = PipelineConfig(source=SYNTH, data_root=tmp_path / "d", runs_root=tmp_path / "r")
    from dataclasses import replace

    with pytest.raises(DP4TLError, match="protocol"):
        run_pipeline(replace(base, protocol="slow"))
    with pytest.raises(DP4TLError, match="paper protocol has one set"):
        run_pipeline(replace(base, protocol="paper", recipes="tiny"))
    with pytest.raises(DP4TLError, match="unpruned source model"):
        run_pipeline(replace(base, source_weights=str(tmp_path / "x.pth"), ratio=0.5))
    with pytest.raises(DP4TLError, match="surrogate weights not found"):
        run_pipeline(replace(base, surrogate_weights=str(tmp_path / "missing.pth")))
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_brought_source_model_is_finetuned_at_ratio_0(paper_run, tmp_path):
    tmp, cfg, _, _ = paper_run
    from dataclasses import replace

    from ffcv_dp4tl.pipeline.resolve import resolve_data

    src_dir, _ = resolve_data(cfg, lambda s: None)
    weights = tmp_path / "source.pth"  # torchvision style: the plain state dict
    torch.save(_tiny_state_dict(load_manifest(src_dir).num_classes, seed=1), weights)
    res = run_pipeline(replace(cfg, ratio=0.0, surrogate_weights="", source_weights=str(weights),
                               seeds=(0,), runs_root=tmp_path / "runs"), log=lambda s: None)
    assert set(res.stages) == {"pretrain", "finetune-lp"}
    assert res.stages["pretrain"].values["brought"]
    assert "source model: brought weights" in Path(res.report).read_text()


@pytest.mark.parametrize("mode", ["fast", "paper"])
def test_lm_target_input_fast_crop_vs_paper_resize(mode, monkeypatch, tmp_path):
    """fast: the target at the surrogate's eval resolution with the 224/256 centre crop (source
    the same); paper: the target at 224, whole short side (no zoom); the source unchanged."""
    import ffcv_dp4tl.data.loaders as loaders
    from ffcv_dp4tl.data.transforms import CENTER_CROP_RATIO
    from ffcv_dp4tl.scoring.context import ScoringContext, Surrogate

    seen = []
    monkeypatch.setattr(loaders, "make_loader",
                        lambda d, split, **kw: seen.append((d, kw["resolution"], kw["aug"])))
    sur = Surrogate(path=tmp_path, model=None, head=None, checkpoint={}, resolution=256,
                    device=torch.device("cpu"),
                    **({"target_resolution": 224, "target_crop": "none"} if mode == "paper" else {}))
    ctx = ScoringContext(method="lm", source_dir=tmp_path / "src", out_dir=tmp_path, surrogate=sur)
    ctx.loader(tmp_path / "tgt", "train", target=True)
    ctx.loader(tmp_path / "src", "train")
    (_, t_res, t_aug), (_, s_res, s_aug) = seen
    assert (s_res, s_aug.center_crop_ratio, s_aug.train) == (256, CENTER_CROP_RATIO, False)
    if mode == "fast":
        assert (t_res, t_aug.center_crop_ratio) == (256, CENTER_CROP_RATIO)
    else:
        assert (t_res, t_aug.center_crop_ratio, t_aug.train) == (224, 1.0, False)


@pytest.mark.slow
def test_score_reads_the_target_input_from_the_surrogate_recipe(paper_run, tmp_path):
    """A surrogate checkpoint carries its recipe's [scoring]; arguments override it."""
    tmp, cfg, res, _ = paper_run
    from ffcv_dp4tl.pipeline.resolve import resolve_data
    from ffcv_dp4tl.pipeline.score import score

    src_dir, tgt_dir = resolve_data(cfg, lambda s: None)
    ckpt = Path(res.stages["surrogate"].values["checkpoint"])
    meta = score("lm", source_dir=src_dir, target_dir=tgt_dir, checkpoint=ckpt,
                 out_dir=tmp_path / "a", fmt="wds", num_workers=0, progress=False)
    assert (meta["target_resolution"], meta["target_crop"]) == (224, "none")
    meta = score("lm", source_dir=src_dir, target_dir=tgt_dir, checkpoint=ckpt,
                 out_dir=tmp_path / "b", fmt="wds", num_workers=0, progress=False,
                 target_resolution=0, target_crop="center")
    assert (meta["target_resolution"], meta["target_crop"]) == (16, "center")  # eval.resolution
    with pytest.raises(DP4TLError, match="target crop"):
        score("lm", source_dir=src_dir, target_dir=tgt_dir, checkpoint=ckpt,
              out_dir=tmp_path / "c", fmt="wds", target_crop="squash")
