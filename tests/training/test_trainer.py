from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from lock_probe import exclusive_is_free
import torch

from ffcv_dp4tl.data import load_manifest, make_mask, save_mask
from ffcv_dp4tl.data.masks import IndexMask
from ffcv_dp4tl.errors import DP4TLError, MaskError
from ffcv_dp4tl.outputs import KINDS
from ffcv_dp4tl.training.callbacks import Callback, RecordSeen
from ffcv_dp4tl.training.checkpoint import Checkpoint
from ffcv_dp4tl.training.trainer import train

from .conftest import StopAt

FIELDS = {"epoch", "loss", "top1_train", "top1_val", "img_per_s", "epoch_seconds", "resolution", "lr"}


def test_metrics_timings_and_checkpoint(trained_run, source_dir):
    rows = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for r in rows:
        assert FIELDS <= set(r) and r["top1_val"] is not None and r["resolution"] == 16
    timings = json.loads((trained_run / "timings.json").read_text())
    assert {"setup", "data", "step", "eval", "checkpoint"} <= set(timings["stages"])
    ck = Checkpoint.load(trained_run / "checkpoint.pt")
    assert ck.epoch == 2 and ck.arch == "resnet18" and ck.mask_hash == "full"
    assert ck.dataset_fingerprint == load_manifest(source_dir).fingerprint
    assert {"torch", "numpy", "python"} <= set(ck.rng)
    # Head keeps the full source label space.
    assert ck.model["fc.weight"].shape[0] == load_manifest(source_dir).num_classes


def test_rerun_finished_run_is_noop(trained_run, source_dir):
    from tiny_data import SURROGATE_OVERRIDES

    from ffcv_dp4tl.training.recipe import load_recipe

    before = (trained_run / "checkpoint.pt").stat().st_mtime_ns
    row = train(load_recipe("resnet18_tiny_cpu", SURROGATE_OVERRIDES), source_dir,
                out_dir=trained_run, fmt="wds", device="cpu", progress=False)
    assert row["epoch"] == 1
    assert (trained_run / "checkpoint.pt").stat().st_mtime_ns == before


def test_checkpoint_from_other_arch_or_recipe_is_refused(trained_run, source_dir, test_recipe):
    with pytest.raises(DP4TLError, match="arch: checkpoint has resnet18, this run has resnet50"):
        train(test_recipe("model.arch=resnet50"), source_dir, out_dir=trained_run, fmt="wds",
              device="cpu", progress=False)
    # the recipe keys that differ are named (audit: only two hashes, on a requeue)
    with pytest.raises(DP4TLError, match=r"recipe_fingerprint: .*; recipe keys that differ: .*"
                                         r"train.seed: checkpoint \d+, this run 7\)"):
        train(test_recipe("train.seed=7"), source_dir, out_dir=trained_run, fmt="wds",
              device="cpu", progress=False)
    mask = make_mask(np.arange(20), load_manifest(source_dir).split("train"))
    with pytest.raises(DP4TLError, match="mask_hash"):
        train(test_recipe(), source_dir, mask=mask, out_dir=trained_run, fmt="wds", device="cpu",
              progress=False)


def test_a_mask_smaller_than_one_batch_is_refused_not_trained_for_zero_steps(source_dir, tmp_path,
                                                                             test_recipe):
    """A high pruning ratio on a small source: 10 kept samples, batches of 16 with drop_last.
    The run took no step, reported loss 0 and wrote a checkpoint of the untrained model."""
    mask = make_mask(np.arange(10), load_manifest(source_dir).split("train"))
    with pytest.raises(DP4TLError, match=r"keeps 10 samples, fewer than one batch of 16 .*"
                                         r"lower train.batch_size or set train.drop_last=false"):
        train(test_recipe(), source_dir, mask=mask, out_dir=tmp_path / "run", fmt="wds",
              device="cpu", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    row = train(test_recipe("train.drop_last=false", "train.epochs=1"), source_dir, mask=mask,
                out_dir=tmp_path / "run", fmt="wds", device="cpu", progress=False)
    assert row["samples"] == 10  # what the message offers works


def test_bare_indices_as_the_mask_are_refused_pointing_to_make_mask(source_dir, tmp_path,
                                                                    test_recipe):
    with pytest.raises(MaskError, match=r"got ndarray; make one from sample indices with make_mask"):
        train(test_recipe(), source_dir, mask=np.arange(20), out_dir=tmp_path / "run", fmt="wds",
              device="cpu", progress=False)  # (pathlib's TypeError before)


def test_train_leaves_the_callers_threads_and_random_generators_as_they_were(source_dir, tmp_path,
                                                                             test_recipe):
    """train() pins torch's threads and reseeds the global generators for its run; a notebook's
    next cell ran with 1 thread and another torch.manual_seed (Python API review). Also when
    the call raises, and numba's count as well: set within a run (here by a callback, as ffcv's
    loaders and kernels' callers may), it stayed set after train() returned."""
    import random

    import numba

    def draws():
        return (random.random(), float(np.random.rand()), float(torch.rand(1)))

    class SetsNumbaThreads(Callback):
        def on_epoch_end(self, row):
            numba.set_num_threads(1)

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread at most here")
    threads = torch.get_num_threads(), numba.get_num_threads()  # (restored at the end)
    torch.set_num_threads(2), numba.set_num_threads(2)
    random.seed(7), np.random.seed(5), torch.manual_seed(123)
    expected = draws()
    mask = make_mask(np.arange(10), load_manifest(source_dir).split("train"))
    try:
        for extra in (["train.epochs=1", "train.drop_last=false"], []):  # (2nd: no full batch)
            random.seed(7), np.random.seed(5), torch.manual_seed(123)
            try:
                train(test_recipe(*extra), source_dir, mask=mask,
                      out_dir=tmp_path / f"r{len(extra)}", fmt="wds", device="cpu",
                      progress=False, callbacks=[SetsNumbaThreads()])
                assert extra
            except DP4TLError as e:
                assert not extra and "fewer than one batch" in str(e)
            assert torch.get_num_threads() == 2 and numba.get_num_threads() == 2
            assert draws() == expected
    finally:
        torch.set_num_threads(threads[0]), numba.set_num_threads(threads[1])


def test_a_call_that_raises_leaves_numbas_thread_count_as_it_was():
    """keeps_process_state (train, finetune, score) gives numba's count back also when the call
    raises after changing it, and torch's with it (one rule: lazy.threads_kept)."""
    import numba

    from ffcv_dp4tl.training.process_state import keeps_process_state

    @keeps_process_state
    def stage():
        torch.set_num_threads(1), numba.set_num_threads(1)
        raise RuntimeError("failed stage")

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has one thread at most here")
    threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        torch.set_num_threads(2), numba.set_num_threads(2)
        with pytest.raises(RuntimeError, match="failed stage"):
            stage()
        assert (torch.get_num_threads(), numba.get_num_threads()) == (2, 2)
    finally:
        torch.set_num_threads(threads[0]), numba.set_num_threads(threads[1])


def test_train_says_its_lines_where_its_caller_asks(source_dir, tmp_path, test_recipe, capsys):
    """``log``: a function gets the start and epoch lines, None silences them; by default
    they go to stdout (what `dp4tl train` prints). `progress=False` silenced nothing, and a
    script could not capture them (Python API review)."""
    mask = make_mask(np.arange(10), load_manifest(source_dir).split("train"))
    recipe = test_recipe("train.epochs=1", "train.drop_last=false")
    said: list[str] = []
    capsys.readouterr()
    train(recipe, source_dir, mask=mask, out_dir=tmp_path / "a", fmt="wds", device="cpu",
          progress=False, log=said.append)
    assert capsys.readouterr().out == ""
    assert said[0].startswith("training ") and said[1].startswith("epoch 1/1: loss ")
    train(recipe, source_dir, mask=mask, out_dir=tmp_path / "b", fmt="wds", device="cpu",
          progress=False, log=None)
    assert capsys.readouterr().out == ""
    train(recipe, source_dir, mask=mask, out_dir=tmp_path / "c", fmt="wds", device="cpu",
          progress=False)
    assert [x.split(":")[0] for x in capsys.readouterr().out.splitlines()] == [
        said[0].split(":")[0].replace(str(tmp_path / "a"), str(tmp_path / "c")), "epoch 1/1"]


def test_mask_for_other_dataset_fails_before_training(source_dir, tmp_path, test_recipe):
    split = load_manifest(source_dir).split("train")
    foreign = IndexMask(np.arange(10, dtype=np.int64),
                        {"split": "train", "fingerprint": "0" * 64, "num_samples": split.num_samples})
    path = save_mask(tmp_path / "foreign.npy", foreign)
    with pytest.raises(MaskError, match="another dataset"):
        train(test_recipe(), source_dir, mask=path, out_dir=tmp_path / "run", fmt="wds",
              device="cpu", progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bit_identical(source_dir, tmp_path, test_recipe, workers):
    """2 epochs straight == 1 epoch, stop, resume 1 epoch (WebDataset loader, CPU). With
    workers, the resumed run starts the loader's stream once more than the unbroken one; the
    workers' base seed drawn then must not come from the training loop's torch RNG."""
    r = test_recipe(f"data.num_workers={workers}", "train.white_balance=0.2")
    split = load_manifest(source_dir).split("train")
    mask = make_mask(np.arange(0, split.num_samples, 2), split, method="test")
    kw = dict(fmt="wds", device="cpu", progress=False)
    train(r, source_dir, mask=mask, out_dir=tmp_path / "a", **kw)
    train(r, source_dir, mask=mask, out_dir=tmp_path / "b", stop_after=1, **kw)
    assert Checkpoint.load(tmp_path / "b" / "checkpoint.pt").epoch == 1
    train(r, source_dir, mask=mask, out_dir=tmp_path / "b", **kw)
    a = Checkpoint.load(tmp_path / "a" / "checkpoint.pt").model
    b = Checkpoint.load(tmp_path / "b" / "checkpoint.pt").model
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in rows] == [0, 1]
    # Class-pruned val: only classes present in the mask (here: all) are evaluated.
    assert json.loads(rows[-1])["val_samples"] > 0


def test_a_resumed_run_says_how_far_its_checkpoint_got(source_dir, tmp_path, test_recipe, capsys):
    """A rerun that resumes says so, with the epochs its checkpoint holds (a user saw only the
    progress bar start at a later epoch); a finished run's rerun trains nothing and says nothing
    of resuming."""
    r = test_recipe("train.epochs=2")
    kw = dict(fmt="wds", device="cpu")
    train(r, source_dir, out_dir=tmp_path, stop_after=1, progress=False, **kw)
    first = capsys.readouterr().out.splitlines()
    # a new run says what it trains before its first epoch ends (a batch log was silent till then)
    assert first[0].startswith(f"training {r.name}: ") and f"-> {tmp_path}" in first[0]
    assert " steps per epoch x 2 epochs on cpu" in first[0] and first[1].startswith("epoch 1/2: ")
    train(r, source_dir, out_dir=tmp_path, progress=True, **kw)
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"resuming: 1 of 2 epochs done ({tmp_path / 'checkpoint.pt'})"
    # the epoch trained now is the second, counted from 1 as the resume line and the bars count
    assert [ln.split(":")[0] for ln in out.splitlines() if ln.startswith("epoch ")] == ["epoch 2/2"]
    # without progress bars (--no-progress in a batch job's log) the resume and the epoch lines
    # are said all the same (--no-progress dropped the epoch lines: review)
    train(r, source_dir, out_dir=tmp_path / "quiet", stop_after=1, progress=False, **kw)
    capsys.readouterr()
    # a --stop-after at or below where the run is trains nothing, and says so (it said nothing)
    train(r, source_dir, out_dir=tmp_path / "quiet", stop_after=1, progress=False, **kw)
    assert capsys.readouterr().out.splitlines() == [
        f"stop after 1: 1 of 2 epochs are done already ({tmp_path / 'quiet' / 'checkpoint.pt'}); "
        "nothing trained"]
    train(r, source_dir, out_dir=tmp_path / "quiet", progress=False, **kw)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"resuming: 1 of 2 epochs done ({tmp_path / 'quiet' / 'checkpoint.pt'})"
    assert [ln.split(":")[0] for ln in lines[1:]] == ["epoch 2/2"]
    train(r, source_dir, out_dir=tmp_path, progress=True, **kw)
    assert "resuming" not in capsys.readouterr().out


def test_ffcv_format_trains(source_dir, tmp_path, test_recipe):
    row = train(test_recipe("train.epochs=1", "data.num_workers=1"), source_dir,
                out_dir=tmp_path / "f", fmt="ffcv", device="cpu", progress=False)
    split = load_manifest(source_dir).split("val")
    # top-1 on the whole val split: a whole number of its samples
    assert row["epoch"] == 0 and row["val_samples"] == split.num_samples
    hits = row["top1_val"] * split.num_samples
    train_n = load_manifest(source_dir).split("train").num_samples
    assert abs(hits - round(hits)) < 1e-6 and row["samples"] == (train_n // 16) * 16  # drop_last


def test_resuming_in_the_other_format_says_so(source_dir, tmp_path, test_recipe, recwarn):
    """An ffcv run resumed with --format wds continued silently (and its checkpoint then said
    "wds"): the same sample order, decoded otherwise, matches neither pure run. One warning
    naming both formats; still resumed (older checkpoints must); none in the same format."""
    r = test_recipe("train.epochs=2", "data.num_workers=1")
    kw = dict(device="cpu", progress=False)
    train(r, source_dir, out_dir=tmp_path / "a", fmt="ffcv", stop_after=1, **kw)
    train(r, source_dir, out_dir=tmp_path / "b", fmt="wds", stop_after=1, **kw)
    train(r, source_dir, out_dir=tmp_path / "b", fmt="wds", **kw)  # the same format: no note
    assert not [w for w in recwarn if "--format" in str(w.message)]
    with pytest.warns(UserWarning, match=r"checkpoint\.pt was trained from --format ffcv and "
                                         r"this run reads --format wds: .*matches neither") as ws:
        row = train(r, source_dir, out_dir=tmp_path / "a", fmt="wds", **kw)
    assert row["epoch"] == 1 and Checkpoint.load(tmp_path / "a" / "checkpoint.pt").epoch == 2
    # the thread count it trained with, which a resume compares (pin_cpu_threads set it for the
    # run: data.num_workers=1; the caller's own count is back after the call)
    assert Checkpoint.load(tmp_path / "a" / "checkpoint.pt").cpu_threads == 1
    assert all("\n" not in str(w.message) for w in ws)


def test_resume_notes_another_num_workers(recwarn):
    """data.num_workers is hashed as its default (a resume with another count is no longer
    refused), but on CPU it sets torch's thread count: the resume says so, once (on a GPU,
    where it changes nothing the weights depend on, nothing)."""
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import _resume_notes

    recipe = load_recipe("resnet18_tiny_cpu", ["data.num_workers=0"])
    ckpt = Checkpoint(model={}, arch="resnet18", num_classes=3, identity={}, format="wds",
                      recipe=load_recipe("resnet18_tiny_cpu", ["data.num_workers=2"]).to_dict())
    with pytest.warns(UserWarning, match=r"^x/checkpoint\.pt was written with data\.num_workers=2 "
                                         r"and this run has 0: loading workers do not change the "
                                         r"sample order, but on CPU torch's thread count .* may "
                                         r"differ in the last bits") as ws:
        _resume_notes(ckpt, recipe, "wds", Path("x/checkpoint.pt"))
    assert len(ws) == 1
    recwarn.clear()
    _resume_notes(ckpt, recipe, "wds", Path("x/checkpoint.pt"), cpu=False)
    ckpt.recipe = recipe.to_dict()
    _resume_notes(ckpt, recipe, "wds", Path("x/checkpoint.pt"))
    ckpt.recipe, ckpt.format = {}, ""  # older checkpoints: nothing recorded, nothing said
    _resume_notes(ckpt, recipe, "ffcv", Path("x/checkpoint.pt"))
    assert not recwarn.list



def test_resume_notes_compare_the_threads_the_machine_gave(recwarn, monkeypatch):
    """A checkpoint records torch's CPU thread count (data.num_workers capped at the cores):
    a resume compares that, not the recipes' num_workers. 4 and 8 workers asked on a 2-core
    machine both train with 2 threads (the note said they differed); 2 asked then and 1 now
    differ."""
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import _resume_notes

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    ckpt = Checkpoint(model={}, arch="resnet18", num_classes=3, identity={}, format="wds",
                      recipe=load_recipe("resnet18_tiny_cpu", ["data.num_workers=8"]).to_dict(),
                      cpu_threads=2)
    _resume_notes(ckpt, load_recipe("resnet18_tiny_cpu", ["data.num_workers=4"]), "wds",
                  Path("x/checkpoint.pt"))
    assert not recwarn.list
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    with pytest.warns(UserWarning, match=r"^x/checkpoint\.pt was trained with 2 CPU threads and "
                                         r"this run has 1 \(data\.num_workers=8 on \d+ cores?\): "
                                         r"loading workers do not change"):
        _resume_notes(ckpt, load_recipe("resnet18_tiny_cpu", ["data.num_workers=8"]), "wds",
                      Path("x/checkpoint.pt"))
    # written by a run: the count it trained with, read back
    assert Checkpoint.from_dict(ckpt.to_dict()).cpu_threads == 2


def test_a_training_of_few_steps_is_called_out():
    """A pipeline pruned to 182 samples pretrained 1 step an epoch at batch 128 (10 in all)
    and reported val top-1 at chance without a word (review): the pipeline now logs this note
    before pretraining. The count follows train.drop_last."""
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import few_steps_note

    r = load_recipe("resnet34_tiny_cpu")  # batch 128, 10 epochs, drop_last
    assert (r.train.batch_size, r.train.epochs, r.train.drop_last) == (128, 10, True)
    assert few_steps_note(r, 182) == (
        "182 samples at train.batch_size 128 make 1 optimizer step an epoch, 10 in all over 10 "
        "epochs: too few to learn much (expect accuracy near chance); keep more samples (a "
        "lower ratio) or lower train.batch_size")
    assert few_steps_note(r, 182, pruned=False).endswith(  # (ratio 0: nothing to keep more of)
        "near chance); lower train.batch_size or raise train.epochs")
    assert few_steps_note(r, 768) is None  # the default job at ratio 0.6: 6 steps x 10
    assert "make 1 optimizer step an epoch" in few_steps_note(r, 255)
    keep_last = load_recipe("resnet34_tiny_cpu", ["train.drop_last=false"])
    assert few_steps_note(keep_last, 255) is None  # 2 steps x 10 = 20
    assert "make 2 optimizer steps an epoch, 18 in all" in few_steps_note(
        load_recipe("resnet34_tiny_cpu", ["train.epochs=9"]), 256)
    # MoCo drops the last partial batch whatever train.drop_last says (its queue takes full
    # batches): 255 samples are 1 step an epoch there, not 2
    moco = load_recipe("moco_v2_tiny_cpu", ["train.drop_last=false"])
    assert (moco.train.batch_size, moco.train.epochs) == (128, 10)
    assert "make 1 optimizer step an epoch, 10 in all" in few_steps_note(moco, 255)


@pytest.mark.parametrize("name", ["resnet18_bench_cpu", "paper/resnet101_16ep", "moco_v2_tiny_cpu"])
@pytest.mark.parametrize("kept", [0.8, 0.6, 0.4, 0.2, 0.05])
def test_matched_steps_take_the_unpruned_runs_steps(name, kept):
    """``--pretrain-length steps``: a pruned set trains as many optimizer steps as the recipe on
    the whole source, to within half an epoch of the pruned set (whole epochs), counted as
    :func:`train` counts them (drop_last, MoCo's full batches)."""
    from ffcv_dp4tl.training.recipe import as_recipe, load_recipe
    from ffcv_dp4tl.training.trainer import matched_steps_overrides, steps_per_epoch

    r = load_recipe(name)
    full = 40 * r.train.batch_size + 17  # (a last partial batch: counted or not per recipe)
    n = int(full * kept)
    s = as_recipe(r, matched_steps_overrides(r, full, n))
    want = steps_per_epoch(r, full) * r.train.epochs
    got = steps_per_epoch(s, n) * s.train.epochs
    assert abs(got - want) <= steps_per_epoch(s, n) / 2
    assert s.train.epochs > r.train.epochs
    assert matched_steps_overrides(r, full, full) == []  # the unpruned run: its own recipe


def test_matched_steps_refuse_a_set_smaller_than_a_batch():
    from ffcv_dp4tl.training.recipe import load_recipe
    from ffcv_dp4tl.training.trainer import matched_steps_overrides

    r = load_recipe("resnet34_tiny_cpu")  # batch 128, drop_last: 100 samples make no step
    with pytest.raises(DP4TLError, match="100 kept samples make no full batch of "
                       "train.batch_size 128"):
        matched_steps_overrides(r, 1000, 100)


class Recorder(Callback):
    def __init__(self):
        self.rows, self.ended = [], 0

    def on_epoch_end(self, row):
        self.rows.append(dict(row))

    def on_train_end(self):
        self.ended += 1


def test_callbacks_see_every_trained_sample_and_every_row(source_dir, tmp_path, test_recipe):
    """RecordSeen: each epoch trains on exactly the masked samples, once, in a new order; the
    rows a callback gets are the metrics.jsonl rows. The deprecated recipe key
    train.record_seen still works (with a FutureWarning) through the same callback."""
    split = load_manifest(source_dir).split("train")
    mask = make_mask(np.arange(1, split.num_samples, 3), split, method="test")
    seen, rec = RecordSeen(), Recorder()
    r = test_recipe("train.drop_last=false", "train.record_seen=true")
    with pytest.warns(FutureWarning, match="record_seen is deprecated"):
        train(r, source_dir, mask=mask, out_dir=tmp_path, fmt="wds", device="cpu",
              progress=False, callbacks=[seen, rec])
    assert sorted(seen.seen) == [0, 1]
    for epoch in (0, 1):
        np.testing.assert_array_equal(np.sort(seen.seen[epoch]), mask.indices)
        np.testing.assert_array_equal(np.load(tmp_path / "seen" / f"rank0_epoch{epoch}.npy"),
                                      seen.seen[epoch])
    assert not np.array_equal(seen.seen[0], seen.seen[1])  # reshuffled per epoch
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rec.rows == rows and rec.ended == 1


def test_tensorboard_logs_every_epoch_once_also_after_resume(source_dir, tmp_path, test_recipe):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = test_recipe("train.tensorboard=true", "train.epochs=3")
    train(r, source_dir, out_dir=tmp_path, fmt="wds", device="cpu", progress=False, stop_after=2)
    train(r, source_dir, out_dir=tmp_path, fmt="wds", device="cpu", progress=False)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    for tag in ("loss", "top1_train", "top1_val", "img_per_s", "lr"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3], tag
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx([x["loss"] for x in rows])


def test_a_run_started_afresh_leaves_one_tensorboard_file(source_dir, tmp_path, test_recipe):
    """A run that starts at epoch 0 in a folder (``--no-resume``) removes the earlier run's
    TensorBoard events as it removes its checkpoints: each run added a file (the new run's
    purge step hid the old curves, but the folder grew with every rerun: a leak audit)."""
    pytest.importorskip("tensorboard")
    r = test_recipe("train.tensorboard=true", "train.epochs=1")
    for _ in range(3):
        train(r, source_dir, out_dir=tmp_path, fmt="wds", device="cpu", progress=False,
              resume=False)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_workers_building_the_next_epoch_early_change_no_weight(source_dir, tmp_path, test_recipe,
                                                                 monkeypatch):
    """The trainer announces each next epoch and its resolution (progressive resizing here), so
    the WebDataset loader's workers start on it while one drains: the weights are bit-identical
    to a run whose announcements are withheld (each epoch starting the workers afresh), and the
    look-ahead was used (one stream for the 3 epochs)."""
    from ffcv_dp4tl.data.wds_loader import WdsMaskedLoader

    calls, withhold = [], [True]
    orig = WdsMaskedLoader.set_epoch

    def spy(self, epoch, resolution=None, next_resolution=None):
        calls.append((epoch, resolution, next_resolution, self.restarts))
        orig(self, epoch, resolution, None if withhold[0] else next_resolution)

    monkeypatch.setattr(WdsMaskedLoader, "set_epoch", spy)
    split = load_manifest(source_dir).split("train")
    mask = make_mask(np.arange(0, split.num_samples, 2), split, method="test")
    r = test_recipe("train.epochs=3", "train.min_res=16", "train.max_res=24",
                    "train.res_multiple=4", "train.start_ramp=0", "train.end_ramp=2",
                    "data.num_workers=2")
    kw = dict(mask=mask, fmt="wds", device="cpu", progress=False)
    train(r, source_dir, out_dir=tmp_path / "a", **kw)
    # announced: epoch 1 at 20 px, epoch 2 at 24 px, nothing after the last; withheld: a
    # restart each epoch
    assert calls == [(0, 16, 20, 0), (1, 20, 24, 1), (2, 24, None, 2)]
    calls.clear()
    withhold[0] = False
    train(r, source_dir, out_dir=tmp_path / "b", **kw)
    assert calls == [(0, 16, 20, 0), (1, 20, 24, 1), (2, 24, None, 1)]  # one stream, 3 epochs
    a = Checkpoint.load(tmp_path / "a" / "checkpoint.pt").model
    b = Checkpoint.load(tmp_path / "b" / "checkpoint.pt").model
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_runs_the_recipes_lr_schedule_and_label_smoothing(source_dir, tmp_path,
                                                                   test_recipe, step_spy):
    """The pretraining recipe (what is fingerprinted and published) is what trains: every
    optimiser step runs at the recipe's triangular lr of its iteration (peak = lr.lr · batch /
    256, reached at lr.lr_peak_epoch, 0 at the end; recomputed here by hand), in every param
    group, and the loss it backpropagates is the cross-entropy with the recipe's
    ``optim.label_smoothing`` (0.3 here) of that batch. (train.white_balance = 0: the objective
    then sees the loader's batch as is, so the loss can be recomputed.)"""
    steps = step_spy
    r = test_recipe("lr.lr_peak_epoch=1", "optim.label_smoothing=0.3", "train.white_balance=0")
    assert (r.lr.schedule, r.lr.lr, r.train.epochs, r.train.batch_size) == ("triangular", 0.25, 2, 16)
    train(r, source_dir, out_dir=tmp_path, fmt="wds", device="cpu", progress=False)
    iters = load_manifest(source_dir).split("train").num_samples // 16  # drop_last
    peak = 0.25 * 16 / 256
    expect = []
    for e in range(2):
        for i in range(iters):
            t = e + i / iters
            expect.append(peak * (t if t <= 1 else 2 - t))
    assert len(steps) == len(expect) == 2 * iters and iters >= 3
    for (lrs, loss, smoothed, plain), lr in zip(steps, expect):
        assert len(lrs) == 2 and lrs == pytest.approx([lr, lr], rel=1e-9, abs=1e-15)
        assert loss == pytest.approx(smoothed, rel=0, abs=1e-6)
        assert abs(smoothed - plain) > 1e-4  # the smoothing is visible in this loss
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["lr"] for x in rows] == pytest.approx([expect[iters - 1], expect[-1]])


@pytest.mark.parametrize("text", ["{", '{"top1_val": "x"}', "[1]", "[" * 3000 + "]" * 3000])
def test_a_damaged_best_record_is_one_line_naming_it(tmp_path, text):
    """``best.json`` edited or cut by hand stopped a training mid-run with a JSONDecodeError,
    KeyError or TypeError traceback; it is one line naming the file and the fix, at resume
    (where it is read, once per run), before any epoch trains."""
    from ffcv_dp4tl.errors import DP4TLError
    from ffcv_dp4tl.training.trainer import _check_best

    (tmp_path / "best.json").write_text(text)
    with pytest.raises(DP4TLError) as e:
        _check_best(tmp_path, [{"epoch": 0, "top1_val": 0.4}], 1)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "best.json") in msg, msg
    assert msg.endswith(f"delete it and {tmp_path / 'best.pt'} to choose the best among the "
                        "epochs still to train"), msg


def test_an_epoch_becomes_the_best_when_it_beats_the_record_strictly():
    """The authors' ``>``: the earliest of equal epochs stays; no record, any validated epoch
    is the best; an epoch without validation never is."""
    from ffcv_dp4tl.training.trainer import _improves_best

    assert _improves_best(0.4, 0.5) and not _improves_best(0.4, 0.4)
    assert _improves_best(None, 0.0) and not _improves_best(None, None)
    assert not _improves_best(0.4, None)


def test_a_run_started_over_keeps_no_best_or_early_checkpoint_of_the_old_run(source_dir, tmp_path,
                                                                            test_recipe):
    """``--no-resume`` (or ``checkpoint.pt`` deleted, as a refusal advises) in a folder of an
    earlier run: that run's best.pt, best.json and early checkpoints go. The new run's epochs
    used to be compared with the old record and, not beating it, left the old model as "best"
    (what finetuning starts from with finetune.start_from = "best")."""
    kw = dict(fmt="wds", device="cpu", progress=False)
    r = test_recipe("train.epochs=2", "train.keep_best=true", "eval.every=1", "train.keep_epochs=[1]")
    train(r, source_dir, out_dir=tmp_path, **kw)
    (tmp_path / "best.json").write_text(json.dumps({"epoch": 9, "top1_val": 2.0}))  # unbeatable
    old_early = (tmp_path / "checkpoint_e1.pt").read_bytes()
    train(test_recipe("train.epochs=1", "train.keep_best=true", "eval.every=1"), source_dir,
          out_dir=tmp_path, resume=False, **kw)
    best = json.loads((tmp_path / "best.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert best["top1_val"] == rows[0]["top1_val"] and best["epoch"] != 9
    assert torch.equal(Checkpoint.load(tmp_path / "best.pt").model["fc.weight"],
                       Checkpoint.load(tmp_path / "checkpoint.pt").model["fc.weight"])
    assert not (tmp_path / "checkpoint_e1.pt").exists() or \
        (tmp_path / "checkpoint_e1.pt").read_bytes() != old_early


def test_a_no_resume_run_killed_before_its_first_checkpoint_leaves_no_old_checkpoint(
        source_dir, tmp_path, test_recipe):
    """``--no-resume`` empties the old run's metrics; killed before its first epoch's checkpoint,
    it used to leave the old checkpoint.pt, which the next run resumed with its metrics gone."""
    kw = dict(fmt="wds", device="cpu", progress=False)
    train(test_recipe("train.epochs=2"), source_dir, out_dir=tmp_path, **kw)

    class Killed(Callback):
        def on_batch(self, epoch, batch):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(test_recipe("train.epochs=2"), source_dir, out_dir=tmp_path, resume=False,
              callbacks=[Killed()], **kw)
    assert not (tmp_path / "checkpoint.pt").exists()
    train(test_recipe("train.epochs=2"), source_dir, out_dir=tmp_path, **kw)  # from epoch 0
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]


@pytest.mark.parametrize("fmt", ["wds", "ffcv"])
def test_a_failed_run_leaves_no_loader_workers_behind(fmt, source_dir, tmp_path, test_recipe):
    """A run that fails (here a user callback raising mid-epoch) closes its loaders as it
    unwinds: a notebook keeps the last traceback, and with it the loaders held their worker
    processes and shard files (four WebDataset workers and 26 files after a failed ``train``;
    a leak audit), and an ffcv loader's epoch thread went on decoding into its buffers."""
    import gc
    import multiprocessing
    import threading
    import time

    class Fails(Callback):
        def on_batch(self, epoch, batch):
            raise ValueError("a user's callback failed")

    gc.collect()
    children, threads = set(multiprocessing.active_children()), set(threading.enumerate())
    with pytest.raises(ValueError) as failed:
        train(test_recipe("train.epochs=2", "data.num_workers=2"), source_dir, out_dir=tmp_path,
              fmt=fmt, device="cpu", progress=False, callbacks=[Fails()])
    assert failed.traceback  # (kept, as a notebook keeps it: its frames hold the loaders)
    assert set(multiprocessing.active_children()) <= children
    deadline = time.monotonic() + 10  # (a stopped thread may take a moment to end)
    while (left := set(threading.enumerate()) - threads) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, left


def test_a_rerun_removes_a_checkpoint_save_cut_short_and_reports_where_it_is(
        source_dir, tmp_path, test_recipe):
    """A kill during a checkpoint save leaves its temp file (checkpoint-sized); the next
    `dp4tl train` into the folder removes it. ``--stop-after`` at or below the run's epoch
    returns the run's last row (the CLI printed "epoch 0/N" for a run at epoch 2)."""
    kw = dict(fmt="wds", device="cpu", progress=False)
    r = test_recipe("train.epochs=3")
    train(r, source_dir, out_dir=tmp_path, stop_after=2, **kw)
    torn = tmp_path / ".checkpoint.pt.k3vv1f36.tmp.pt"
    torn.write_bytes(b"\0" * 1024)
    row = train(r, source_dir, out_dir=tmp_path, stop_after=1, **kw)
    assert row["epoch"] == 1 and not torn.exists()


def test_a_vits_position_embeddings_and_class_token_get_no_weight_decay():
    """vit_b16 says DeiT's optimiser with weight decay on weights only: the position embeddings
    and the class token (3-D, so the ndim rule missed them) join the biases and norms."""
    from ffcv_dp4tl.training.models import create_model
    from ffcv_dp4tl.training.trainer import param_groups

    vit = create_model("vit_b_16", 4, image_size=32)
    names = {id(p): n for n, p in vit.named_parameters()}
    decay, no_decay = param_groups(vit, 0.05, wd_on_bn_bias=False)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"class_token", "encoder.pos_embedding"} <= skipped
    assert all(p.ndim > 1 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    (everything,) = param_groups(vit, 0.05, wd_on_bn_bias=True)  # the authors' SGD: all decayed
    assert len(everything["params"]) == len(names)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_killed_mid_epoch_resumes_at_the_last_step_checkpoint_bit_identically(
        source_dir, tmp_path, test_recipe, workers):
    """train.checkpoint_every=2: killed 3 steps into epoch 1 (of 6 batches), the run resumes
    at step 2 of it, on the batches it had not trained (RecordSeen: the tail of the unbroken
    run's order), and ends with the unbroken run's weights and metric rows (WebDataset, CPU;
    white balance draws from torch's RNG, which the checkpoint restores). The cadence changes
    no result: the unbroken run saves no step checkpoint and is the same."""
    r = test_recipe(f"data.num_workers={workers}", "train.white_balance=0.2",
                    "train.checkpoint_every=2")
    kw = dict(fmt="wds", device="cpu", progress=False)
    seen_a = RecordSeen()
    train(test_recipe(f"data.num_workers={workers}", "train.white_balance=0.2"), source_dir,
          out_dir=tmp_path / "a", callbacks=[seen_a], **kw)
    with pytest.raises(KeyboardInterrupt):
        train(r, source_dir, out_dir=tmp_path / "b", callbacks=[StopAt(1, 3)], **kw)
    mid = Checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert (mid.epoch, mid.step, mid.format_version) == (1, 2, 2) and mid.progress["step"] == 2
    assert len(mid.rank_rng) == 1 and mid.progress["sums"][2] == 2 * 16  # samples of 2 steps
    seen_b = RecordSeen()
    row = train(r, source_dir, out_dir=tmp_path / "b", callbacks=[seen_b], **kw)
    assert sorted(seen_b.seen) == [1]
    np.testing.assert_array_equal(seen_b.seen[1], seen_a.seen[1][2 * 16:])  # (in memory: the rest)
    a = Checkpoint.load(tmp_path / "a" / "checkpoint.pt")
    b = Checkpoint.load(tmp_path / "b" / "checkpoint.pt")
    assert (b.epoch, b.step, b.format_version) == (2, 0, 1)  # the end of an epoch: format 1
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
    rows_a, rows_b = ([json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
                      for d in ("a", "b"))
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for key in ("epoch", "loss", "top1_train", "samples", "lr", "top1_val", "loss_val"):
            assert ra[key] == rb[key], key
    assert row["samples"] == 6 * 16


def test_a_mid_epoch_checkpoint_is_format_2_and_a_damaged_position_is_refused(tmp_path):
    from ffcv_dp4tl.training.checkpoint import save_checkpoint

    base = Checkpoint(model={}, arch="resnet18", num_classes=2, identity={}, epoch=3)
    raw = base.to_dict()
    assert raw["format_version"] == 1 and "step" not in raw  # readable by older releases
    mid = dataclasses.replace(base, step=5, progress={"step": 5, "sums": [0.0] * 4, "seconds": 1.0},
                              rank_rng=[{"torch": 0, "numpy": 0, "python": 0}])
    assert mid.to_dict()["format_version"] == 2
    back = Checkpoint.from_dict(mid.to_dict())
    assert (back.epoch, back.step, back.progress["step"]) == (3, 5, 5)
    good = {"step": 5, "sums": [0.0] * 4, "seconds": 1.0}
    for damage in ({"progress": None}, {"step": -1}, {"step": True},
                   {"progress": {k: v for k, v in good.items() if k != "sums"}},
                   {"progress": {**good, "sums": "abc"}}, {"progress": {**good, "sums": [0.0] * 3}},
                   {"progress": {**good, "seconds": None}}, {"progress": {**good, "step": 4}},
                   {"rank_rng": "x"}, {"rank_rng": [{"python": 1}]}, {"rank_rng": []}):
        save_checkpoint(tmp_path / "c.pt", {**mid.to_dict(), **damage})
        with pytest.raises(DP4TLError, match=r"c.pt: its mid-epoch position \(step .*is damaged; "
                                             r"delete it"):
            Checkpoint.load(tmp_path / "c.pt")


def test_record_seen_covers_an_epoch_resumed_mid_way_and_a_damaged_step_is_one_line(
        source_dir, tmp_path, test_recipe):
    """RecordSeen's files are the audit of what each epoch trained: the part before a mid-epoch
    checkpoint is saved with it and taken back on resume, so the resumed epoch's file is the
    whole epoch (it held only the batches after the resume: 1728 of 1920 in the review). A
    checkpoint whose step lies past the epoch names itself (was "an epoch of 30 batches cannot
    start at batch 99", after the model and loaders were built)."""
    from ffcv_dp4tl.training.checkpoint import save_checkpoint

    r = test_recipe("train.checkpoint_every=2")
    kw = dict(fmt="wds", device="cpu", progress=False)
    train(r, source_dir, out_dir=tmp_path / "a", callbacks=[RecordSeen(tmp_path / "a")], **kw)
    with pytest.raises(KeyboardInterrupt):
        train(r, source_dir, out_dir=tmp_path / "b", callbacks=[RecordSeen(tmp_path / "b"),
                                                                StopAt(1, 5)], **kw)
    assert (tmp_path / "b" / "seen" / "rank0_epoch1_step4.npy").exists()
    train(r, source_dir, out_dir=tmp_path / "b", callbacks=[RecordSeen(tmp_path / "b")], **kw)
    for epoch in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / "b" / "seen" / f"rank0_epoch{epoch}.npy"),
                                      np.load(tmp_path / "a" / "seen" / f"rank0_epoch{epoch}.npy"))
    assert sorted(p.name for p in (tmp_path / "b" / "seen").iterdir()) == [
        "rank0_epoch0.npy", "rank0_epoch1.npy"]  # the parts are gone with their epoch

    with pytest.raises(KeyboardInterrupt):
        train(r, source_dir, out_dir=tmp_path / "c", callbacks=[StopAt(1, 3)], **kw)
    state = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=False)
    save_checkpoint(tmp_path / "c" / "checkpoint.pt",
                    {**state, "step": 99, "progress": {**state["progress"], "step": 99}})
    with pytest.raises(DP4TLError, match=r"checkpoint.pt is at step 99 of epoch 2 of 2, which it cannot "
                                         r"be \(an epoch of 6 batches cannot start at batch 99\): it "
                                         r"is damaged; delete it"):
        train(r, source_dir, out_dir=tmp_path / "c", **kw)


def test_a_cadence_not_below_an_epoch_is_warned_and_a_resumed_epoch_with_no_step_left_keeps_its_lr(
        source_dir, tmp_path, test_recipe):
    """checkpoint_every counts the steps of each epoch: a value of an epoch's steps or more
    never writes a mid-epoch checkpoint, and says so (silent before). An epoch resumed at its
    last step (no step left, e.g. on more ranks without drop_last) reports the lr of its last
    step, not 0.0."""
    from ffcv_dp4tl.training.engine import EpochProgress, train_one_epoch

    kw = dict(fmt="wds", device="cpu", progress=False)
    with pytest.warns(UserWarning, match=r"train.checkpoint_every = 6 steps is not less than an "
                                         r"epoch's 6: the count restarts every epoch"):
        train(test_recipe("train.checkpoint_every=6", "train.epochs=1"), source_dir,
              out_dir=tmp_path / "a", **kw)
    stats = train_one_epoch(torch.nn.Linear(2, 2), [], None, torch.optim.SGD(
        torch.nn.Linear(2, 2).parameters(), lr=0.1), None, lambda e, i, n: 0.5,
        start=EpochProgress(step=6, sums=[6.0, 3.0, 96.0, 0.0], seconds=2.0, lr=0.0125))
    assert stats["lr"] == 0.0125 and stats["samples"] == 96 and stats["train_seconds"] >= 2.0


def test_a_training_that_ends_at_chance_is_called_out():
    """A pretraining that ended at chance (val top-1 0.10 on 10 balanced classes) was reported
    as any other: its weights then prune and finetune noise (review). Chance is the most common
    val class's share; within two standard errors of it on the val samples is "at chance"."""
    from ffcv_dp4tl.training.trainer import at_chance_note

    balanced = np.repeat(np.arange(10), 30)  # 300 samples: chance 0.1, 2 s.e. = 0.0346
    assert at_chance_note(0.10, balanced) == (
        "val top-1 0.1000 on 300 samples is within chance: a model that always predicts the "
        "most common class scores 0.1000 here, so this training learned nothing measurable; "
        "check the data (labels, decode) and the recipe (lr.lr, train.epochs, "
        "train.batch_size) before using its weights")
    assert at_chance_note(0.134, balanced) is not None
    assert at_chance_note(0.136, balanced) is None
    skewed = np.array([0] * 80 + [1] * 20)  # the majority class alone scores 0.8
    assert "scores 0.8000 here" in at_chance_note(0.85, skewed)
    assert at_chance_note(0.9, skewed) is None
    assert at_chance_note(None, balanced) is None and at_chance_note(0.0, balanced[:0]) is None


def test_train_says_when_it_ended_at_chance(source_dir, tmp_path, test_recipe):
    """With next to no learning (lr 1e-9) the run ends at chance, and train() says so once, naming
    its folder; a run stopped before its last epoch says nothing yet."""
    r = test_recipe("train.epochs=2", "lr.lr=1e-9", "data.num_workers=1")
    kw = dict(device="cpu", progress=False, fmt="wds")
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter("always")
        train(r, source_dir, out_dir=tmp_path / "a", stop_after=1, **kw)
    assert not [w for w in ws if "within chance" in str(w.message)]
    with pytest.warns(UserWarning, match=rf"^{tmp_path / 'a'}: val top-1 0\.\d+ on \d+ samples is "
                                         "within chance") as ws:
        train(r, source_dir, out_dir=tmp_path / "a", **kw)
    assert len([w for w in ws if "within chance" in str(w.message)]) == 1


def test_a_training_that_lost_the_race_for_a_new_folder_leaves_the_winners_alone(
        source_dir, tmp_path, test_recipe, lock_taken_first):
    """Two `dp4tl train` into one new --out: both saw it missing, the winner made it and took
    its lock, and the loser, refused, removed the winner's lock and empty metrics.jsonl and the
    folder as "a folder it made" (review), so a third run could take the lock beside it."""
    from ffcv_dp4tl.training import trainer as trainer_module

    out = tmp_path / "run"
    with lock_taken_first(trainer_module, out):
        with pytest.raises(DP4TLError, match="another dp4tl process"):
            train(test_recipe(), source_dir, out_dir=out, fmt="wds", device="cpu", progress=False)
        assert (out / KINDS["train"].lock).exists() and (out / "metrics.jsonl").exists()


def _train_cli(capsys, monkeypatch, source_dir, out, *extra):
    """``dp4tl train`` of the test recipe into ``out`` (in-process): (exit code, stderr)."""
    from cli_runner import cli
    from tiny_data import TEST_OVERRIDES

    sets = [a for o in [*TEST_OVERRIDES, *extra] for a in ("--set", o)]
    code, _, err = cli(capsys, monkeypatch, "train", "resnet18_tiny_cpu", "--data", source_dir,
                       "--out", out, "--device", "cpu", "--format", "wds", "--no-progress", *sets)
    return code, err


def test_a_metrics_row_of_the_wrong_type_is_one_line_and_the_log_is_kept(
        source_dir, tmp_path, test_recipe, capsys, monkeypatch):
    """A metrics.jsonl row edited by hand: ``"epoch": null`` (or a string) stopped the resume
    with a TypeError traceback, and a finished run whose last row's ``top1_val`` is a string
    stopped ``dp4tl train``'s report with a ValueError. Each is one line naming the file, the
    line and the field (as an unreadable line is), exit 2, and the log is left as it was."""
    from cli_runner import one_line

    kw = dict(fmt="wds", device="cpu", progress=False)
    train(test_recipe(), source_dir, out_dir=tmp_path, stop_after=1, **kw)
    path = tmp_path / "metrics.jsonl"
    intact = path.read_text()
    for edit, field in [('"epoch": null', "'epoch'"), ('"epoch": "0"', "'epoch'"),
                        ('"epoch": -1', "'epoch'"), ('"loss": "2.3"', "'loss'")]:
        key = edit.split(":")[0]
        bad = intact.replace(f'{key}: 0', edit, 1) if key == '"epoch"' else \
            intact.replace('"loss": ', edit + ', "x": ', 1)
        assert bad != intact
        path.write_text(bad)
        code, err = _train_cli(capsys, monkeypatch, source_dir, tmp_path)
        one_line(code, err, f"{path}: line 1", field, "repair that line, or delete the file")
        assert path.read_text() == bad and Checkpoint.load(tmp_path / "checkpoint.pt").epoch == 1
    path.write_text(intact)
    train(test_recipe(), source_dir, out_dir=tmp_path, **kw)  # finished: 2 rows
    lines = path.read_text().splitlines()
    last = json.loads(lines[1])
    assert isinstance(last["top1_val"], float)
    bad = lines[0] + "\n" + json.dumps({**last, "top1_val": str(last["top1_val"])}) + "\n"
    path.write_text(bad)
    code, err = _train_cli(capsys, monkeypatch, source_dir, tmp_path)
    one_line(code, err, f"{path}: line 2", "'top1_val' must be a number")
    assert path.read_text() == bad


def test_best_json_and_best_pt_are_checked_together_at_resume(source_dir, tmp_path, test_recipe,
                                                              capsys, monkeypatch):
    """``train.keep_best`` on resume: best.json is checked with best.pt and against its epoch's
    metrics row before any epoch trains. Its top1_val raised by hand (0.99) kept every later,
    better epoch from becoming best.pt without a word, and was otherwise only read after the
    next epoch had trained; best.pt deleted with best.json left ran on with exit 0 and no
    best.pt (``finetune.start_from = "best"`` failed later). Each is one line naming the files
    and the fix, exit 2, nothing trained and every file kept; the fix then resumes."""
    from cli_runner import one_line

    best_flags = ("train.epochs=3", "train.keep_best=true", "eval.every=1")
    kw = dict(fmt="wds", device="cpu", progress=False)
    train(test_recipe(*best_flags), source_dir, out_dir=tmp_path, stop_after=1, **kw)
    meta, best, log = tmp_path / "best.json", tmp_path / "best.pt", tmp_path / "metrics.jsonl"
    record, rows = json.loads(meta.read_text()), log.read_text()
    assert record["epoch"] == 1 and record["top1_val"] == json.loads(rows)["top1_val"]

    def refused(*needles):
        code, err = _train_cli(capsys, monkeypatch, source_dir, tmp_path, *best_flags)
        one_line(code, err, *needles)
        assert log.read_text() == rows and Checkpoint.load(tmp_path / "checkpoint.pt").epoch == 1

    meta.write_text(json.dumps({**record, "top1_val": 0.99}))  # (b), (c): raised by hand
    refused(f"{meta} records val top-1 0.99 for epoch 1", f"has {record['top1_val']} for it",
            "set its top1_val back to")
    meta.write_text(json.dumps({**record, "epoch": 3}))  # an epoch the run never reached
    refused(f"{meta} records epoch 3", "it was edited")
    meta.write_text(json.dumps(record))
    best.unlink()  # (a): best.json left without best.pt
    refused(f"{meta} records epoch 1 as the best but {best} is missing",
            "delete best.json too")
    assert meta.exists()
    meta.unlink()  # the fix: the best is chosen among the epochs still to train
    code, err = _train_cli(capsys, monkeypatch, source_dir, tmp_path, *best_flags)
    assert code == 0, err
    last = [json.loads(x) for x in log.read_text().splitlines()]
    record = json.loads(meta.read_text())
    assert best.exists() and record["epoch"] >= 2
    assert record["top1_val"] == max(r["top1_val"] for r in last[1:])


def test_best_json_is_read_once_and_checked_against_best_pt_when_the_log_is_gone(
        source_dir, tmp_path, test_recipe, capsys, monkeypatch):
    """Audit leftovers: with metrics.jsonl deleted (the advice for a damaged log), a best.json
    raised by hand could not be compared and was kept, so no later, better epoch became best.pt.
    best.pt now holds its epoch's val top-1, and the record is compared with it. And best.json
    is read once, at resume: the epochs compare with that value in memory (it was read again
    after every epoch)."""
    from cli_runner import one_line

    from ffcv_dp4tl.training import trainer as trainer_mod

    best_flags = ("train.epochs=3", "train.keep_best=true", "eval.every=1")
    kw = dict(fmt="wds", device="cpu", progress=False)
    train(test_recipe(*best_flags), source_dir, out_dir=tmp_path, stop_after=1, **kw)
    meta, best, log = tmp_path / "best.json", tmp_path / "best.pt", tmp_path / "metrics.jsonl"
    record = json.loads(meta.read_text())
    assert Checkpoint.load(best).top1_val == record["top1_val"]
    log.unlink()
    meta.write_text(json.dumps({**record, "top1_val": 0.99}))
    code, err = _train_cli(capsys, monkeypatch, source_dir, tmp_path, *best_flags)
    one_line(code, err, f"{meta} records val top-1 0.99 for epoch 1 but {best} has "
             f"{record['top1_val']} for it", "set its top1_val back to")
    assert Checkpoint.load(tmp_path / "checkpoint.pt").epoch == 1  # nothing trained
    # a kill between best.pt and best.json: best.pt is epoch 2's discarded attempt, accepted as
    # with the log (review)
    attempt = tmp_path.parent / f"{tmp_path.name}_attempt"
    train(test_recipe(*best_flags), source_dir, out_dir=attempt, stop_after=2, **kw)
    mine = best.read_bytes()
    best.write_bytes((attempt / "checkpoint.pt").read_bytes())
    meta.write_text(json.dumps(record))
    assert trainer_mod._check_best(tmp_path, [], 1) == record["top1_val"]
    best.write_bytes(mine)
    meta.write_text(json.dumps({**record, "epoch": 2}))  # (an epoch best.pt does not hold)
    code, err = _train_cli(capsys, monkeypatch, source_dir, tmp_path, *best_flags)
    assert code == 0, err  # epoch 2 = the attempt the checkpoint lacks: dropped, chosen again
    meta.write_text(json.dumps(record))
    (tmp_path / "checkpoint.pt").unlink()  # (a new run: the record goes)
    reads = []
    real = trainer_mod.read_json
    monkeypatch.setattr(trainer_mod, "read_json",
                        lambda p, *a, **k: reads.append(Path(p).name) or real(p, *a, **k))
    train(test_recipe(*best_flags), source_dir, out_dir=tmp_path, stop_after=1, **kw)
    train(test_recipe(*best_flags), source_dir, out_dir=tmp_path, **kw)  # epochs 2, 3
    assert reads.count("best.json") == 1  # once, at the resume; not after each epoch
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    record = json.loads(meta.read_text())
    assert record["top1_val"] == max(r["top1_val"] for r in rows)
    assert record["top1_val"] == rows[record["epoch"] - 1]["top1_val"]
    assert Checkpoint.load(best).epoch == record["epoch"]


def test_a_best_record_of_an_epoch_the_checkpoint_lacks_is_the_discarded_attempts(
        source_dir, tmp_path, test_recipe, capsys, monkeypatch):
    """A kill after best.json and before checkpoint.pt leaves a record of an epoch that trains
    again, with another val top-1: the record goes (the best is chosen anew) instead of being
    kept, which refused every later resume as "best.json was edited" (review). Starting over
    without a checkpoint drops a record of an earlier attempt the same way."""
    best_flags = ("train.epochs=3", "train.keep_best=true", "eval.every=1")
    kw = dict(fmt="wds", device="cpu", progress=False)
    train(test_recipe(*best_flags), source_dir, out_dir=tmp_path, stop_after=1, **kw)
    meta, log = tmp_path / "best.json", tmp_path / "metrics.jsonl"
    meta.write_text(json.dumps({"epoch": 2, "top1_val": 0.999}))  # epoch 2's lost attempt
    code, err = _train_cli(capsys, monkeypatch, source_dir, tmp_path, *best_flags)
    assert code == 0, err
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    record = json.loads(meta.read_text())
    assert record["top1_val"] == rows[record["epoch"] - 1]["top1_val"] != 0.999
    assert record["top1_val"] == max(r["top1_val"] for r in rows[1:])
    (tmp_path / "checkpoint.pt").unlink()  # starting over: the finished run's record goes
    meta.write_text(json.dumps({"epoch": 3, "top1_val": 0.999}))
    code, err = _train_cli(capsys, monkeypatch, source_dir, tmp_path, *best_flags)
    assert code == 0, err
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert json.loads(meta.read_text())["top1_val"] == max(r["top1_val"] for r in rows)


def test_a_training_holds_its_data_against_a_rebuild_and_waits_for_no_build(source_dir, test_recipe,
                                                                             tmp_path):
    """``dp4tl build --overwrite`` of the data a training read replaced its betons under it: the
    training died with "not found: .../val.beton" and its checkpoint no longer matched the data
    (audit). A training holds the dataset's lock shared for its whole run, so the overwrite is
    refused; and a training whose data is being built is refused in one line, not started."""
    import re

    from beton_builders.out_dir import LOCK_NAME
    from ffcv_dp4tl.errors import DataError
    from ffcv_dp4tl.locks import directory_lock

    lock = source_dir / LOCK_NAME
    seen = []

    class TryTheBuildLock(Callback):
        def on_epoch_end(self, row):
            seen.append(exclusive_is_free(lock))

    train(test_recipe("train.epochs=1"), source_dir, out_dir=tmp_path / "run", fmt="wds",
          device="cpu", progress=False, callbacks=[TryTheBuildLock()])
    assert seen == [False]  # (the run held it)
    assert exclusive_is_free(lock)  # (and let it go)
    with directory_lock(lock, f"dataset folder {source_dir}"):  # a build under way
        with pytest.raises(DataError, match=(
                rf"^another dp4tl process \(pid \d+\) on host \S+ is using the dataset "
                rf"{re.escape(str(source_dir))}; wait for its build to finish, then rerun$")):
            train(test_recipe("train.epochs=1"), source_dir, out_dir=tmp_path / "run2", fmt="wds",
                  device="cpu", progress=False)
    assert not (tmp_path / "run2").exists()
