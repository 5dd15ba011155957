"""Paths a user types relative make no run depend on the folder it was started from.

A target given by a plain folder name (``--target mytarget``) stayed ``mytarget`` in the
recorded config (results.json), which a rerun from another folder read as another folder or
none.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ffcv_dp4tl.pipeline.config import PipelineConfig, recorded_config, validate
from ffcv_dp4tl.pipeline.resolve import resolve


def _quiet(line: str) -> None:
    """A log that says nothing."""


def _cfg(small_synth: Path, tmp_path: Path, **kw) -> PipelineConfig:
    return PipelineConfig(**{"ratio": 0.5, "source": str(small_synth / "source"),
                             "target": str(small_synth / "targets" / "paper"), "method": "lm",
                             "k": 3, "fmt": "wds", "device": "cpu", "finetune": ("lp",),
                             "data_root": tmp_path / "data", "runs_root": tmp_path / "runs",
                             "overrides": ("train.batch_size=16",), **kw})


def test_a_target_given_by_a_plain_folder_name_is_recorded_absolute(small_synth, tmp_path,
                                                                      monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(small_synth / "targets" / "paper", work / "mytarget")
    monkeypatch.chdir(work)
    cfg = _cfg(small_synth, tmp_path, target="mytarget")
    validate(cfg)
    assert cfg.target == str(work / "mytarget")
    assert recorded_config(cfg)["target"] == str(work / "mytarget")  # (what results.json holds)
    # the recorded config, rerun from another folder, reads the same target
    monkeypatch.chdir(elsewhere)
    r = resolve(cfg, validate(cfg), _quiet)
    assert r.target_dirs == (work / "mytarget",)
    # several targets likewise; the embedded data's own target name stays a name, even beside a
    # folder of that name (it is read as the embedded target first)
    shutil.copytree(small_synth / "targets" / "paper", elsewhere / "paper")
    cfg = _cfg(small_synth, tmp_path, target="", targets=("paper", "../work/mytarget"))
    validate(cfg)
    assert cfg.targets == ("paper", str(work / "mytarget"))
