"""scripts/same_results.py: the before/after check of a refactoring ignores times and run
folders, and catches any other change."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from repo_scripts import load_script


def _main():
    return load_script("scripts/same_results.py").main


BEFORE = {"config": {"runs_root": "/tmp/a/runs", "ratio": 0.6},
          "rows": [{"method": "lm", "top1": 55.6, "score_s": 0.5, "total_cpu_s": 30.0,
                    "mask": "/tmp/a/runs/prune-1/train.npy"}],
          "date": "2026-11-27"}


def _write(tmp_path: Path, name: str, data) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def test_times_dates_and_run_folders_are_not_differences(tmp_path, capsys):
    after = json.loads(json.dumps(BEFORE))
    after["config"]["runs_root"] = "/tmp/b/runs"
    after["rows"][0].update(score_s=14.8, total_cpu_s=46.0, mask="/tmp/b/runs/prune-1/train.npy",
                            truth={"recall": 0.5})
    after["date"] = "2026-12-02"
    after["config"]["progress"] = False  # (`--no-progress`: bars off, the same results)
    before = {**BEFORE, "config": {**BEFORE["config"], "progress": True}}
    assert _main()([str(_write(tmp_path, "a.json", before)), str(_write(tmp_path, "b.json", after))]) == 0
    out = capsys.readouterr().out
    assert "added: /rows[0]/truth" in out and "same apart from times" in out


def test_paths_recorded_as_typed_before_they_were_absolute_compare_from_the_runs_folder(
        tmp_path, capsys, monkeypatch):
    """Results written before 2026-12-07 hold the paths as typed (``runs/prune-1/…``, and a
    stage reused from then keeps them in a new run's results beside an absolute ``runs_root``):
    every stage path read as changed against a run of today (audit). Read against the working
    directory, the folder both runs were started in, they are the same."""
    old = json.loads(json.dumps(BEFORE))
    old["config"]["runs_root"] = "runs"
    old["rows"][0]["mask"] = "runs/prune-1/train.npy"
    new = json.loads(json.dumps(BEFORE))
    new["config"]["runs_root"] = str(tmp_path / "runs")
    new["rows"][0]["mask"] = str(tmp_path / "runs" / "prune-1" / "train.npy")
    mixed = {**new, "rows": [{**new["rows"][0], "mask": "runs/prune-1/train.npy"}]}
    monkeypatch.chdir(tmp_path)
    for a, b in ((old, new), (mixed, new)):
        assert _main()([str(_write(tmp_path, "a.json", a)), str(_write(tmp_path, "b.json", b))]) == 0
        assert "same apart from times" in capsys.readouterr().out


def test_a_changed_accuracy_or_a_lost_field_is_a_difference(tmp_path, capsys):
    after = json.loads(json.dumps(BEFORE))
    after["rows"][0]["top1"] = 55.5
    after["config"]["runs_root"] = "/tmp/b/runs"
    after["rows"][0]["mask"] = "/tmp/b/runs/prune-2/train.npy"  # another stage key: another mask
    del after["config"]["ratio"]
    assert _main()([str(_write(tmp_path, "a.json", BEFORE)), str(_write(tmp_path, "b.json", after))]) == 1
    out = capsys.readouterr().out
    assert "changed: /rows[0]/top1: 55.6 -> 55.5" in out and "removed: /config/ratio" in out
    assert "changed: /rows[0]/mask" in out
    assert _main()([str(tmp_path / "missing.json"), str(tmp_path / "b.json")]) == 2


def test_a_difference_of_file_hashes_only_says_why(tmp_path, capsys):
    """Two deterministic runs that each trained their surrogate differ only in its checkpoint's
    sha256 (the file records wall times): still a difference, with the reason and the fix."""
    a = {**BEFORE, "stages": {"score": {"surrogate_hash": "aa"}}}
    b = {**BEFORE, "stages": {"score": {"surrogate_hash": "bb"}}}
    assert _main()([str(_write(tmp_path, "a.json", a)), str(_write(tmp_path, "b.json", b))]) == 1
    out = capsys.readouterr().out
    assert "changed: /stages/score/surrogate_hash" in out and "only file hashes differ" in out
    c = {**b, "rows": [{**BEFORE["rows"][0], "top1": 50.0}]}
    assert _main()([str(_write(tmp_path, "a.json", a)), str(_write(tmp_path, "c.json", c))]) == 1
    assert "only file hashes differ" not in capsys.readouterr().out


def _checkpoint(path: Path, weight: float, step_seconds: float) -> None:
    """A training checkpoint's shape as far as the digests go: weights, an RNG state (a numpy
    array), a recipe, and the trainer's ``timings`` (seconds per stage)."""
    import numpy as np
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"fc.weight": torch.full((2, 3), weight)}, "arch": "resnet18",
                "num_classes": 2, "epoch": 1, "identity": {"mask_hash": "m"},
                "rng": {"numpy": ("MT19937", np.arange(4, dtype=np.uint32))},
                "recipe": {"train": {"epochs": 1}},
                "timings": {"setup": 0.17, "step": step_seconds}}, path)


def _fresh_run(tmp_path: Path, name: str, step_seconds: float, pretrain_weight: float = 0.5
               ) -> dict:
    """A runs folder ``name`` with a surrogate and a pretraining stage folder, and its report's
    results as the pipeline writes them (digests by the pipeline's own rules)."""
    from ffcv_dp4tl.fsutil import file_sha256
    from ffcv_dp4tl.pipeline.stages import result_digest

    root = tmp_path / name
    dirs = {"surrogate": root / "surrogate-3abeb37db674", "pretrain": root / "pretrain-792b2aa30854"}
    _checkpoint(dirs["surrogate"] / "checkpoint.pt", 0.25, step_seconds)
    _checkpoint(dirs["pretrain"] / "checkpoint.pt", pretrain_weight, step_seconds)
    sur = dirs["surrogate"] / "checkpoint.pt"
    return {"config": {"runs_root": str(root), "ratio": 0.6},
            "stage_dirs": {k: str(d) for k, d in dirs.items()},
            "stages": {"surrogate": {"kind": "train", "top1_val": 0.25, "seconds": step_seconds,
                                     "result_sha256": result_digest(dirs["surrogate"], "train")},
                       "pretrain": {"kind": "train", "top1_val": 0.0, "seconds": step_seconds,
                                    "result_sha256": result_digest(dirs["pretrain"], "train")},
                       "score": {"kind": "score", "surrogate": str(sur),
                                 "surrogate_hash": file_sha256(sur), "seconds": step_seconds}}}


def test_two_fresh_runs_of_one_command_are_the_same(tmp_path, capsys):
    """Two fresh runs of one deterministic pipeline command (two runs folders, every stage run in
    each) differ in exactly three fields: the training stages' ``result_sha256`` (surrogate,
    pretrain) and the score stage's ``surrogate_hash``; the checkpoints they digest differ only
    in ``timings`` (found once by running `dp4tl pipeline` on the tiny synth data twice and
    comparing the two checkpoints entry by entry). Those digests compare by the files' content
    apart from the times; a changed weight, or a file no longer the one digested, still differs."""
    a = _fresh_run(tmp_path, "runsA", 0.067)
    b = _fresh_run(tmp_path, "runsB", 0.048)
    assert a["stages"]["pretrain"]["result_sha256"] != b["stages"]["pretrain"]["result_sha256"]
    pa, pb = _write(tmp_path, "a.json", a), _write(tmp_path, "b.json", b)
    assert _main()([str(pa), str(pb)]) == 0
    out = capsys.readouterr().out
    assert "same apart from times: /stages/pretrain/result_sha256" in out
    assert "same apart from times: /stages/score/surrogate_hash" in out
    assert "changed:" not in out and out.rstrip().endswith("same apart from times")

    c = _fresh_run(tmp_path, "runsC", 0.048, pretrain_weight=0.5001)  # other weights
    assert _main()([str(pa), str(_write(tmp_path, "c.json", c))]) == 1
    out = capsys.readouterr().out
    assert "changed: /stages/pretrain/result_sha256" in out
    assert "same apart from times: /stages/surrogate/result_sha256" in out

    _checkpoint(tmp_path / "runsB/surrogate-3abeb37db674/checkpoint.pt", 0.25, 0.5)  # replaced
    assert _main()([str(pa), str(pb)]) == 1  # (not the files the report digested: not compared)
    out = capsys.readouterr().out
    assert "changed: /stages/score/surrogate_hash" in out and "only file hashes differ" in out


@pytest.mark.slow
def test_two_real_fresh_pipeline_runs_are_the_same(synth_root, tmp_path, capsys):
    """The same, end to end: the tiny pipeline run twice, each in a fresh runs folder."""
    from tiny_data import FINETUNE, TRAIN

    from ffcv_dp4tl.pipeline.config import PipelineConfig
    from ffcv_dp4tl.pipeline.run import run_pipeline

    reports = []
    for name in ("runsA", "runsB"):
        cfg = PipelineConfig(ratio=0.6, source=str(synth_root / "source"),
                             target=str(synth_root / "targets" / "paper"), method="lm",
                             fmt="wds", finetune=("lp",), data_root=tmp_path / "data",
                             runs_root=tmp_path / name, device="cpu", overrides=TRAIN,
                             surrogate_overrides=TRAIN, finetune_overrides=FINETUNE,
                             progress=False)
        reports.append(Path(run_pipeline(cfg, log=lambda s: None).report).parent / "results.json")
    assert _main()([str(p) for p in reports]) == 0
    assert "same apart from times: /stages/pretrain/result_sha256" in capsys.readouterr().out
