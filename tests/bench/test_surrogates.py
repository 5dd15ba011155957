"""``dp4tl bench surrogates`` (paper Tab. A6 / Fig. 5) end to end at the smallest scale: two
surrogates (RN-20s and the RN-18 reference), one ratio, LP only, 1-epoch width-8 recipes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.bench.surrogates import parse_arch_overrides, run_surrogate_bench
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.training.models import create_model, num_params
from tiny_data import FINETUNE, SYNTH, TRAIN


def _stage_runs(runs_root: Path, name: str = "*") -> int:
    """How many times stages called ``name`` ran in ``runs_root``: each run leaves one
    ``.segment-*`` record in its folder (a cached stage adds none)."""
    return len(list(Path(runs_root).glob(f"{name}-*/.segment-*")))


def _base(tmp_path, data_root) -> PipelineConfig:
    train = (*TRAIN, "train.keep_epochs=[]")
    return PipelineConfig(source=SYNTH, target="", fmt="wds", device="cpu",
                          data_root=data_root, runs_root=tmp_path / "runs",
                          overrides=train, surrogate_overrides=train, finetune_overrides=FINETUNE)


@pytest.mark.slow
def test_end_to_end_two_surrogates(tmp_path, data_root):
    logs: list[str] = []
    out = tmp_path / "report"
    t = run_surrogate_bench(_base(tmp_path, data_root), out, archs=["resnet20s"], ratio=0.5,
                            arch_overrides={"resnet20s": ["model.width=16"]}, command="pytest",
                            notes=["shrunk for the test"], log=logs.append)
    assert t["archs"] == ["resnet20s", "resnet18"]  # the reference is added
    runs = tmp_path / "runs"
    reference = [d for d in runs.glob("prune-*")  # the 0 % reference's mask: one, run once
                 if json.loads((d / "DONE.json").read_text())["ratio"] == 0.0]
    assert len(reference) == 1 and len(list(reference[0].glob(".segment-*"))) == 1
    assert _stage_runs(runs, "surrogate") == 2  # one surrogate per arch
    ref, rn20 = t["runs"]["resnet18"], t["runs"]["resnet20s"]
    # the reference's selection overlaps itself fully
    assert ref["overlap"] == 1.0 and ref["by_ratio"]["0.5"]["overlap"]["common"] == 4
    a, b = rn20["by_ratio"]["0.5"]["kept_classes"], ref["by_ratio"]["0.5"]["kept_classes"]
    assert len(a) == len(b) == 4  # half of the 8 source classes
    assert rn20["overlap"] == pytest.approx(len(set(a) & set(b)) / len(b))
    # params: the models as run (8 source classes, the recipes' knobs) and as in the paper
    kw = dict(blurpool=False, small_input=True, stem_stride=1)
    assert rn20["params"] == num_params(create_model("resnet20s", 8, width=16, **kw))
    assert ref["params"] == num_params(create_model("resnet18", 8, width=8, **kw))
    assert rn20["params_paper"] == 334072 and ref["params_paper"] == 11689512
    assert "model.width=16" in rn20["surrogate_overrides"]
    for rec in (ref, rn20):
        assert 0.0 <= rec["surrogate"]["top1_val"] <= 1.0
        acc = rec["by_ratio"]["0.5"]["lp_top1"]
        assert 0.0 <= acc <= 100.0
        win = rec["winners"]["lp"]
        assert win["ratio"] == (0.5 if acc >= t["reference_acc"]["lp"] else 0.0)
    md = (out / "report.md").read_text()
    assert f"| RN-18 (reference) | {ref['params'] / 1e6:.3f} | 11.690 | 11.690 |" in md
    assert "| 100.0 | 100.0 |" in md  # RN-18's overlap with itself, ours and the paper's
    assert "- note: shrunk for the test" in md and "- command: `pytest`" in md
    assert f"| {100 * rn20['overlap']:.1f} | 89.3 |" in md  # ours beside the paper's
    assert (out / "surrogates.png").stat().st_size > 10_000
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"]["resnet18"]["overlap"] == 1.0 and saved["command"] == "pytest"


def test_arch_overrides_and_refusals(tmp_path, data_root):
    assert parse_arch_overrides(["vgg2:model.width=32", "vgg2:train.epochs=2", "rn:a.b=1"]) == \
        {"vgg2": ["model.width=32", "train.epochs=2"], "rn": ["a.b=1"]}
    with pytest.raises(DP4TLError, match="ARCH:SECTION.KEY=VALUE"):
        parse_arch_overrides(["model.width=32"])
    with pytest.raises(DP4TLError, match="unknown model"):
        run_surrogate_bench(_base(tmp_path, data_root), archs=["resnet21s"], log=lambda s: None)
    with pytest.raises(DP4TLError, match="not among the archs"):
        run_surrogate_bench(_base(tmp_path, data_root), archs=["vgg2"], arch_overrides={"vgg4": ["a.b=1"]},
                            log=lambda s: None)
    with pytest.raises(DP4TLError, match=r"\(0, 1\)"):
        run_surrogate_bench(_base(tmp_path, data_root), archs=["vgg2"], ratio=0.0, log=lambda s: None)
