"""Everything a pipeline run can check from its inputs is checked before the first stage
(issue 21 item 4): a target without the split finetuning reads, the source given as target,
negative seeds, output roots that cannot be folders. Each is one line, no stage folder made."""
from __future__ import annotations

import json
import shutil

import pytest

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.pipeline.run import run_pipeline


def validate(cfg):  # the run stops at its first check; nothing else may have happened
    run_pipeline(cfg, log=lambda m: None)


def resolve(cfg, _checked, log):
    run_pipeline(cfg, log=log)


def _cfg(tmp_path, **kw):
    return PipelineConfig(**{"ratio": 0.5, "method": "random", "finetune": ("lp",),
                             "runs_root": tmp_path / "runs", "data_root": tmp_path / "data", **kw})


@pytest.mark.parametrize("kw,message", [
    ({"seeds": (0, -1)}, "--seeds: -1 is negative; seeds are integers >= 0"),
    ({"seed": -1}, "--seed must be >= 0 (the scorer's seed, e.g. random's draw), got -1"),
])
def test_negative_seeds_fail_before_any_work(tmp_path, kw, message):
    with pytest.raises(DP4TLError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        validate(_cfg(tmp_path, **kw))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_roots_that_cannot_be_folders_fail_before_any_work(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(DP4TLError, match=r"^--runs-root .*afile is a file, not a folder"):
        validate(_cfg(tmp_path, runs_root=afile))
    with pytest.raises(DP4TLError, match=r"^--data-root .*afile is a file, not a folder"):
        validate(_cfg(tmp_path, data_root=afile))
    with pytest.raises(DP4TLError, match=r"^--runs-root .*afile/runs: .*afile is a file"):
        validate(_cfg(tmp_path, runs_root=afile / "runs"))


def test_the_source_as_target_fails_before_the_surrogate(tmp_path, index_dataset):
    cfg = _cfg(tmp_path, source=str(index_dataset.root), target=str(index_dataset.root))
    with pytest.raises(DP4TLError, match=r"is the source dataset .*: transfer needs another "
                                         r"dataset as target"):
        resolve(cfg, None, print)
    assert not (tmp_path / "runs").exists()


def test_a_target_without_the_split_finetuning_reads_fails_before_the_surrogate(tmp_path,
                                                                                index_dataset):
    target = tmp_path / "tgt"
    shutil.copytree(index_dataset.root, target)
    m = json.loads((target / "manifest.json").read_text())
    m["fingerprint"] = "f" * 64  # another dataset, as far as the pipeline can tell
    (target / "manifest.json").write_text(json.dumps(m))
    cfg = _cfg(tmp_path, source=str(index_dataset.root), target=str(target))
    with pytest.raises(DP4TLError, match=r"target .*tgt has no 'test' split \(it has: train\), "
                                         r"which the lp recipe .* reads \(data.test_split\)"):
        resolve(cfg, None, print)
    assert not (tmp_path / "runs").exists()


def test_built_data_folders_of_distinct_sources_never_clash():
    """``--data SOURCE`` is built under ``data_root/<slug>``: a short spec keeps its readable name
    (existing folders stay found); two long specs that agree on their first 60 characters get
    different folders (they used to be cut to the same name and share one dataset)."""
    from ffcv_dp4tl.pipeline.resolve import _slug

    assert _slug("synth:tiny") == "synth-tiny"
    base = "synth:tiny,num_superclasses=4,classes_per_superclass=2,train_per_class=12"
    a, b = _slug(base + ",val_per_class=2"), _slug(base + ",val_per_class=3")
    assert a != b and len(a) <= 60 and len(b) <= 60 and a.startswith("synth-tiny-num_superclasses")
    assert _slug(base + ",val_per_class=2") == a  # stable: the same spec finds its folder again


def test_preflight_checks_every_distinct_config_once(monkeypatch):
    """A bench's plan goes through the checks run_pipeline makes before its first stage
    (validate, then resolve), each distinct config once, a repeated one skipped, not the end."""
    from ffcv_dp4tl.pipeline import run
    from ffcv_dp4tl.pipeline.config import PipelineConfig

    checked = []
    monkeypatch.setattr(run, "validate", lambda cfg: ("ok", cfg.method))
    monkeypatch.setattr(run, "resolve", lambda cfg, ok, log: checked.append((ok[1], cfg.ratio)))
    a, b = PipelineConfig(method="random", ratio=0.0), PipelineConfig(method="lm", ratio=0.6)
    run.preflight([a, a, b, a], log=lambda m: None)
    assert checked == [("random", 0.0), ("lm", 0.6)]
