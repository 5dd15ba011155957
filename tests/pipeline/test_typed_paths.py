"""Paths a user types relative make no run depend on the folder it was started from.

A target given by a plain folder name (``--target mytarget``) stayed ``mytarget`` in the
recorded config (results.json), which a rerun from another folder read as another folder or
none; a recipe file typed two ways (``--recipe ./r.toml``, ``--recipe /abs/r.toml``) entered the
stage keys as typed, so one file trained its stages twice. The stage functions run on a real
validated and resolved config over the session's tiny data, with ``run_stage`` a recorder:
nothing trains.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import ffcv_dp4tl.pipeline.run as run_mod
from ffcv_dp4tl.pipeline.config import PipelineConfig, recorded_config, validate
from ffcv_dp4tl.pipeline.resolve import resolve
from ffcv_dp4tl.pipeline.stages import Stage
from ffcv_dp4tl.training.recipe_files import recipes_dir


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


def _recipe_keys(cfg: PipelineConfig, tmp_path: Path, monkeypatch) -> dict[str, dict]:
    """The surrogate, pretraining and LP stages' inputs of ``cfg`` (nothing runs)."""
    monkeypatch.setattr(run_mod, "run_stage", lambda st, fn, log=print, upstream=():
                        SimpleNamespace(values={}))
    ok = validate(cfg)
    r = resolve(cfg, ok, _quiet)
    res = SimpleNamespace(add=lambda place, run: run)
    sur = run_mod.surrogate_stage(cfg, ok, r, res, _quiet)
    masks = tmp_path / "prune"
    masks.mkdir(exist_ok=True)
    (masks / "train.npy").write_bytes(b"one mask")
    pr = Stage("prune", masks, "k", {})
    pts = run_mod.pretrain_stages(cfg, ok, r, pr, res, _quiet)
    fts: list[Stage] = []
    monkeypatch.setattr(run_mod, "run_stage", lambda st, fn, log=print, upstream=():
                        fts.append(st))
    run_mod.finetune_stages(cfg, ok, r, pts, res, _quiet)
    return {"surrogate": sur.inputs, "pretrain": pts[0].inputs, "lp": fts[0].inputs}


def test_a_recipe_file_keys_its_stages_by_its_content_not_how_it_is_typed(
        small_synth, tmp_path, monkeypatch):
    """``r.toml``, ``./r.toml`` and ``/abs/r.toml`` from two folders: one set of stages (the
    config records the file's absolute path); another file of the same name and other content
    gets its own; a shipped recipe's name is in its keys as typed (published caches hold)."""
    project, other = tmp_path / "project", tmp_path / "other"
    for d in (project, other):
        d.mkdir()
    shutil.copy(recipes_dir() / "resnet18_tiny_cpu.toml", project / "r.toml")
    shutil.copy(recipes_dir() / "lp_tiny_cpu.toml", project / "lp.toml")

    recorded = []

    def keys(where: Path, spelled: str, lp: str) -> dict[str, dict]:
        monkeypatch.chdir(where)
        cfg = _cfg(small_synth, tmp_path, surrogate_recipe=spelled, recipe=spelled,
                   lp_recipe=lp)
        got = _recipe_keys(cfg, tmp_path, monkeypatch)
        recorded.append((cfg.surrogate_recipe, cfg.recipe, cfg.lp_recipe))
        return got

    first = keys(project, "r.toml", "lp.toml")
    assert keys(project, "./r.toml", "./lp.toml") == first
    assert keys(other, str(project / "r.toml"), "../project/lp.toml") == first
    assert {k["recipe"] for k in first.values()} == {"r", "lp"}
    # (the config records where each was read: the results of a run name the file)
    assert set(recorded) == {(str(project / "r.toml"), str(project / "r.toml"),
                              str(project / "lp.toml"))}
    # the same files moved to another folder: the same stages (no key holds a folder)
    shutil.copytree(project, tmp_path / "moved")
    assert keys(tmp_path / "moved", "r.toml", "lp.toml") == first
    # the same name in another folder, with other content: other stages
    (other / "r.toml").write_text((project / "r.toml").read_text().replace(
        "epochs = 30", "epochs = 29"))
    monkeypatch.chdir(other)
    changed = _recipe_keys(_cfg(small_synth, tmp_path, surrogate_recipe="r.toml"), tmp_path,
                           monkeypatch)
    assert changed["surrogate"]["recipe_fingerprint"] != first["surrogate"]["recipe_fingerprint"]
    # shipped names: in the key as typed, as before
    shipped = _recipe_keys(_cfg(small_synth, tmp_path, surrogate_recipe="resnet18_tiny_cpu",
                                lp_recipe="lp_tiny_cpu"), tmp_path, monkeypatch)
    assert [shipped[s]["recipe"] for s in ("surrogate", "pretrain", "lp")] == [
        "resnet18_tiny_cpu", "resnet34_tiny_cpu", "lp_tiny_cpu"]


@pytest.mark.parametrize("spelled", ["resnet18_tiny_cpu", "paper/resnet18_surrogate"])
def test_a_shipped_recipe_name_is_recorded_as_given(spelled, tmp_path, monkeypatch):
    from ffcv_dp4tl.pipeline.config import recipe_file

    monkeypatch.chdir(tmp_path)
    assert recipe_file(spelled) == spelled


@pytest.mark.parametrize("given", ["/abs/w.pt", "w.pt"])
def test_a_brought_stage_recorded_with_a_relative_path_is_not_reported_as_one(given, tmp_path):
    """A brought-weights stage imported before 2026-12-07 holds the path as typed then
    (``DONE.json`` ``weights``: ``w.pt``, relative to the folder that run started in). Reused by
    a run from elsewhere (its key holds the file's sha256), report.md named ``w.pt``, another
    file or none wherever it was read: now the run's own (absolute) path, or a note."""
    from ffcv_dp4tl.contracts import StageResult
    from ffcv_dp4tl.pipeline.report import write_report
    from ffcv_dp4tl.pipeline.result import PipelineResult, StagePlace
    from ffcv_dp4tl.pipeline.stages import StageRun

    res = PipelineResult(config={"method": "lm", "ratio": 0.0, "order": "ordered",
                                 "source_weights": given},
                         source="/d/src", target="/d/warm", protocol="fast",
                         recipes={"surrogate": "s", "pretrain": "p"}, seeds=[0])
    old = StageResult("pretrain", "train", 1.0, {"brought": True, "weights": "w.pt",
                                                  "arch": "resnet18"})
    res.add(StagePlace("pretrain", "pretrain"), StageRun(old, tmp_path / "pretrain-x", ran=False))
    write_report(res, tmp_path / "report")
    line = next(ln for ln in (tmp_path / "report" / "report.md").read_text().splitlines()
                if ln.startswith("- source model: brought weights"))
    if given.startswith("/"):
        assert "`/abs/w.pt`" in line and "`w.pt`" not in line
    else:
        assert "`w.pt` (relative to the folder the importing run was started in)" in line
