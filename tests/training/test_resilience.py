"""Training that survives what real runs meet: killed finetunes, torn log lines, full disks,
impossible recipe values, small machines, and the ffcv path's unseeded augmentations."""
from __future__ import annotations

import errno
import json
import re
import time

import pytest
import torch

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.training import checkpoint as ckpt_mod
from ffcv_dp4tl.training.checkpoint import Checkpoint, FinetuneState
from ffcv_dp4tl.training.finetune import STATE_NAME, finetune
from ffcv_dp4tl.training.recipe import load_recipe
from ffcv_dp4tl.training.trainer import train

FT = ["finetune.resolution=16", "eval.resolution=16", "data.num_workers=0", "eval.every=1"]


def _state_weights(out):
    return FinetuneState.load(out / STATE_NAME).net


@pytest.mark.parametrize("mode,recipe,epochs", [("lp", "lp_tiny_cpu", 4), ("ff", "ff_tiny_cpu", 2)])
def test_killed_finetune_resumes_to_the_uninterrupted_result(trained_run, target_dir, tmp_path,
                                                            mode, recipe, epochs):
    kw = dict(fmt="wds", device="cpu", progress=False, overrides=FT + [f"train.epochs={epochs}"])
    ckpt = trained_run / "checkpoint.pt"
    whole = finetune(recipe, ckpt, target_dir, tmp_path / "a", **kw)
    stopped = finetune(recipe, ckpt, target_dir, tmp_path / "b", stop_after=1, **kw)
    assert stopped == {"stopped_after": 1} and not (tmp_path / "b" / "result.json").exists()
    first_segment = FinetuneState.load(tmp_path / "b" / STATE_NAME).seconds
    resumed = finetune(recipe, ckpt, target_dir, tmp_path / "b", **kw)
    assert resumed["resumed_from"] == 1 and whole["resumed_from"] == 0
    for key in ("test_top1", "train_top1", "epochs"):
        assert resumed[key] == whole[key], key
    a, b = _state_weights(tmp_path / "a"), _state_weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(epochs))
    assert resumed["seconds"] > first_segment  # both segments' wall time


def test_finetune_refuses_another_runs_state(trained_run, target_dir, tmp_path):
    kw = dict(fmt="wds", device="cpu", progress=False)
    finetune("lp_tiny_cpu", trained_run / "checkpoint.pt", target_dir, tmp_path,
             overrides=FT + ["train.epochs=2"], stop_after=1, **kw)
    # the recipe keys that differ are named, from the recipe the state records
    with pytest.raises(DP4TLError, match=r"different finetune run \(recipe_fingerprint: .*; "
                                         r"recipe keys that differ: train.epochs: checkpoint 2, "
                                         r"this run 3\)"):
        finetune("lp_tiny_cpu", trained_run / "checkpoint.pt", target_dir, tmp_path,
                 overrides=FT + ["train.epochs=3"], **kw)


def test_torn_metrics_line_does_not_block_resume(source_dir, tmp_path, test_recipe):
    r = test_recipe("train.epochs=2")
    kw = dict(fmt="wds", device="cpu", progress=False)
    train(r, source_dir, out_dir=tmp_path, stop_after=1, **kw)
    with open(tmp_path / "metrics.jsonl", "a") as f:  # killed in the middle of the next line
        f.write('{"epoch": 1, "loss": 2.3')
    with pytest.warns(UserWarning, match="dropped unreadable line 2"):
        last = train(r, source_dir, out_dir=tmp_path, **kw)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0, 1] and last["epoch"] == 1


def test_an_unreadable_metrics_line_before_the_last_is_refused_not_dropped(source_dir, tmp_path,
                                                                          test_recipe):
    """Only a torn last line is what a kill leaves: an unreadable line with rows after it was
    dropped with the same note and the file rewritten without it, that epoch's row gone for
    good. Refused in one line naming the file and the line; the log is left as it was."""
    r = test_recipe("train.epochs=3")
    kw = dict(fmt="wds", device="cpu", progress=False)
    train(r, source_dir, out_dir=tmp_path, stop_after=2, **kw)
    path = tmp_path / "metrics.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    damaged = '{"epoch": 0, "lo\x00ss' + "\n" + lines[1] + "\n"
    path.write_text(damaged)
    with pytest.raises(DP4TLError, match=r"metrics\.jsonl: line 1 is not a metrics row.*repair "
                                         r"that line, or delete the file") as e:
        train(r, source_dir, out_dir=tmp_path, **kw)
    assert "\n" not in str(e.value)
    assert path.read_text() == damaged


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    old = Checkpoint(model={"w": torch.ones(3)}, arch="resnet18", num_classes=3,
                     identity={"arch": "resnet18"}, epoch=1)
    old.save(path)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    new = Checkpoint(model={"w": torch.zeros(3)}, arch="resnet18", num_classes=3,
                     identity={"arch": "resnet18"}, epoch=2)
    with pytest.raises(DP4TLError, match=rf"^could not write the checkpoint {re.escape(str(path))}: "
                                         r"the disk is full \([\d,.]+ MiB free\); the previous "
                                         r"checkpoint is intact; free space and rerun: it resumes$"):
        new.save(path)
    # the first save of a run has no previous checkpoint to keep: it does not claim one (review)
    with pytest.raises(DP4TLError, match=r"the disk is full \([\d,.]+ MiB free\); no checkpoint "
                                         r"was written yet; free space and rerun: the run starts "
                                         r"over$"):
        new.save(tmp_path / "first" / "checkpoint.pt")
    (tmp_path / "first").rmdir()  # (left empty: its temporary file was removed)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    kept = Checkpoint.load(path)
    assert kept.epoch == 1 and torch.equal(kept.model["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp left


def test_torchs_failed_write_on_a_full_disk_is_said_without_its_internals(tmp_path, monkeypatch):
    """torch's zip writer meets a full disk as RuntimeError("[enforce fail at
    inline_container.cc:672] . unexpected pos 576 vs 534"), which the message quoted (audit, a
    full tmpfs). When the checkpoint cannot fit in what is free, the line says the disk is full
    and how much is free, without torch's text; with room enough it stays as it was."""
    import shutil

    path = tmp_path / "checkpoint.pt"
    Checkpoint(model={"w": torch.ones(3)}, arch="resnet18", num_classes=3,
               identity={"arch": "resnet18"}, epoch=1).save(path)

    def torn(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(ckpt_mod.torch, "save", torn)
    new = Checkpoint(model={"w": torch.zeros(1 << 18)}, arch="resnet18", num_classes=3,
                     identity={"arch": "resnet18"}, epoch=2)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=300 * 1024))
    with pytest.raises(DP4TLError) as e:
        new.save(path)
    assert str(e.value) == (f"could not write the checkpoint {path}: the disk is full (0.3 MiB "
                            "free); the previous checkpoint is intact; free space and rerun: it "
                            "resumes")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10 * 2**30))
    with pytest.raises(DP4TLError, match=r"could not write the checkpoint .*\(is the disk full\? "
                                         r"\[enforce fail"):
        new.save(path)
    monkeypatch.undo()
    assert Checkpoint.load(path).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize("override,message", [
    ("lr.lr=-1", r"lr\.lr = -1\.0 is impossible"),
    ("lr.lr=0", r"lr\.lr = 0\.0 is impossible"),
    ("optim.momentum=1.5", r"optim\.momentum = 1\.5 is impossible"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"),
    ("optim.label_smoothing=1.0", "optim.label_smoothing"),
    ("optim.betas=[0.9, 1.2]", "optim.betas"),
    ("lr.lr=nan", "not a finite number"),
    ("data.num_workers=-3", "data.num_workers"),
    ("train.seed=-1", "train.seed"),
    ("train.keep_epochs=[0]", "train.keep_epochs"),
    ("lr.gamma=0", "lr.gamma"),
    ("model.width=0", "model.width"),
    # image sides: bounded like every loader's (100000 px were terabytes of batch buffers)
    ("train.max_res=100000", r"train\.max_res = 100000 is impossible; it must be in \(0, 2048\]"),
    ("eval.resolution=4096", r"eval\.resolution = 4096 is impossible"),
    ("finetune.resolution=100000", "finetune.resolution"),
    ("scoring.target_resolution=100000", r"scoring\.target_resolution = 100000 .* \[0, 2048\]"),
    ("scoring.source_resolution=-1", "scoring.source_resolution"),
    ("model.image_size=4096", "model.image_size"),
])
def test_impossible_recipe_values_are_one_line_errors_at_load(override, message):
    with pytest.raises(DP4TLError, match=message) as e:
        load_recipe("resnet18_tiny_cpu", [override])
    assert "\n" not in str(e.value)


def test_a_resolution_the_schedule_rounds_past_the_bound_is_refused_at_load():
    """max_res in range, rounded by res_multiple past it: the loader refused it at the ramp's
    end, possibly hours into the run, without naming res_multiple."""
    ramp = ["train.epochs=4", "train.start_ramp=1", "train.end_ramp=2", "train.max_res=2040"]
    with pytest.raises(DP4TLError, match=r"the resolution schedule \(.*max_res 2040, rounded to "
                                         r"a multiple of train\.res_multiple 80\) reaches 2080 "
                                         r"px, above 2048"):
        load_recipe("resnet18_tiny_cpu", ramp + ["train.res_multiple=80"])
    assert load_recipe("resnet18_tiny_cpu", ramp + ["train.res_multiple=64"])


def test_more_workers_than_cores_is_capped_with_one_note(capsys):
    from ffcv_dp4tl.data import resources

    cores = resources.available_cores()
    usable = max(1, cores - resources.reserved_cores(cores))
    resources._NOTED.clear()
    assert resources.effective_workers(usable) == usable
    assert resources.effective_workers(0) == 0
    assert resources.effective_workers(cores + 62) <= cores
    assert resources.effective_workers(cores + 62) <= cores
    err = capsys.readouterr().err
    assert err.count(f"data.num_workers = {cores + 62}") == 1, err


def test_deterministic_ffcv_training_gives_identical_weights(source_dir, tmp_path, test_recipe,
                                                             capfd):
    """``data.deterministic = true``: two ffcv runs from scratch end with bit-identical weights,
    also with several decode threads; the recipe asks for 64 workers, more than any test
    machine has, and runs with the machine's cores (ffcv's numba pool would refuse 64)."""
    r = test_recipe("data.deterministic=true", "data.num_workers=64", "eval.every=2")
    from ffcv_dp4tl.data import resources

    resources._NOTED.clear()
    models = []
    for out in ("a", "b"):
        t0 = time.perf_counter()
        train(r, source_dir, out_dir=tmp_path / out, fmt="ffcv", device="cpu", progress=False)
        models.append(Checkpoint.load(tmp_path / out / "checkpoint.pt").model)
        assert time.perf_counter() - t0 < 300
    a, b = models
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "data.num_workers = 64" in capfd.readouterr().err
    # the switch is part of the recipe fingerprint only when on (old checkpoints keep theirs;
    # the tiny recipes turn it on since 2026-12-04)
    off = ("data.deterministic=false", "data.num_workers=64", "eval.every=2")
    assert r.fingerprint() != test_recipe(*off).fingerprint()
    assert "deterministic" not in test_recipe(*off).to_dict()["data"]


def test_a_kill_between_the_two_checkpoint_saves_keeps_every_early_checkpoint(source_dir, tmp_path,
                                                                             test_recipe, monkeypatch):
    """The epoch that train.keep_epochs keeps writes two files; a kill after the first of them
    must resume to the same early checkpoint as an uninterrupted run (issue 21: EL2N/GraNd
    scored the final surrogate under the same stage key instead)."""
    r = test_recipe("train.epochs=3", "train.keep_epochs=[2]")
    kw = dict(fmt="wds", device="cpu", progress=False)
    train(r, source_dir, out_dir=tmp_path / "whole", **kw)
    real = Checkpoint.save
    saves: list[str] = []

    def kill_after_the_first_save_of_epoch_2(self, path):
        real(self, path)
        saves.append(path.name)
        if self.epoch == 2:
            raise SystemExit("killed")  # the process dies right after that file is complete

    monkeypatch.setattr(Checkpoint, "save", kill_after_the_first_save_of_epoch_2)
    with pytest.raises(SystemExit):
        train(r, source_dir, out_dir=tmp_path / "cut", **kw)
    monkeypatch.setattr(Checkpoint, "save", real)
    assert saves[-1] == "checkpoint_e2.pt"  # the early copy is written first
    train(r, source_dir, out_dir=tmp_path / "cut", **kw)
    for name in ("checkpoint_e2.pt", "checkpoint.pt"):
        a = Checkpoint.load(tmp_path / "whole" / name).model
        b = Checkpoint.load(tmp_path / "cut" / name).model
        assert all(torch.equal(a[k], b[k]) for k in a), name  # the WebDataset path is bit-exact


def test_a_deleted_early_checkpoint_is_an_error_naming_the_folder_to_delete(source_dir, tmp_path,
                                                                            test_recipe):
    r = test_recipe("train.epochs=2", "train.keep_epochs=[1]")
    kw = dict(fmt="wds", device="cpu", progress=False)
    train(r, source_dir, out_dir=tmp_path, **kw)
    (tmp_path / "checkpoint_e1.pt").unlink()
    with pytest.raises(DP4TLError, match=r"checkpoint_e1.pt \(train.keep_epochs\) is missing but .* "
                                          r"2 epochs done, past it.*delete the folder .* and rerun"):
        train(r, source_dir, out_dir=tmp_path, **kw)


def test_a_finetune_rerun_removes_a_state_save_cut_short(trained_run, target_dir, tmp_path):
    kw = dict(fmt="wds", device="cpu", progress=False, overrides=FT + ["train.epochs=2"])
    finetune("lp_tiny_cpu", trained_run / "checkpoint.pt", target_dir, tmp_path, stop_after=1, **kw)
    torn = tmp_path / f".{STATE_NAME}.x1y2z3.tmp.pt"
    torn.write_bytes(b"\0" * 1024)
    finetune("lp_tiny_cpu", trained_run / "checkpoint.pt", target_dir, tmp_path, **kw)
    assert not torn.exists()


def test_a_surrogate_resumes_when_only_its_scoring_protocol_changed(source_dir, tmp_path,
                                                                   test_recipe):
    """[scoring] is read after training (how the surrogate reads what it scores): a run killed
    under the fast protocol resumes under the paper's, and the resumed checkpoint carries the
    recipe it finished under; a training knob still refuses the old checkpoint."""
    kw = dict(fmt="wds", device="cpu", progress=False)
    train(test_recipe("train.epochs=2"), source_dir, out_dir=tmp_path, stop_after=1, **kw)
    paper = test_recipe("train.epochs=2", "scoring.target_crop=none", "scoring.source_crop=none")
    last = train(paper, source_dir, out_dir=tmp_path, **kw)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [0, 1] and last["epoch"] == 1
    sc = Checkpoint.load(tmp_path / "checkpoint.pt").training_recipe().scoring
    assert (sc.target_crop, sc.source_crop) == ("none", "none")
    with pytest.raises(DP4TLError, match="recipe"):
        train(test_recipe("train.epochs=3", "lr.lr=0.05"), source_dir, out_dir=tmp_path, **kw)
