"""Stage keys of the pipeline's surrogate → score → prune chain (``pipeline/run.py``), computed
without running any stage: every input that changes a stage's result must change its key, or a
rerun in the same runs folder silently reuses the stale result of other inputs.

The stages' own functions (:func:`~ffcv_dp4tl.pipeline.run.surrogate_stage`,
:func:`~ffcv_dp4tl.pipeline.run.score_stage`, :func:`~ffcv_dp4tl.pipeline.run.prune_stage`) are
called on a real validated and resolved config over the session's tiny built data, with
``run_stage`` replaced by a recorder: no training, no scoring, no pruning, a second or so.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import ffcv_dp4tl.pipeline.run as run_mod
import ffcv_dp4tl.training.weights as weights_mod
from ffcv_dp4tl.pipeline.config import PipelineConfig, validate
from ffcv_dp4tl.pipeline.resolve import resolve
from ffcv_dp4tl.pipeline.stages import Stage


class _Res:
    """The little of a PipelineResult the stage functions write to."""

    def __init__(self) -> None:
        self.stages: dict[str, Any] = {}

    def add(self, place, run):
        self.stages[place.name] = run
        return run


def _keys(cfg: PipelineConfig, monkeypatch) -> dict[str, Stage]:
    """The surrogate, score and prune stages of ``cfg``, as a run would key them; none is run."""
    ran: list[str] = []
    # (run_stage returns the StageRun: one with no recorded values, as nothing runs)
    monkeypatch.setattr(run_mod, "run_stage", lambda st, fn, log=print, upstream=():
                        ran.append(st.name) or SimpleNamespace(values={}))
    monkeypatch.setattr(run_mod, "selection_truth", lambda *a, **k: None)
    # (brought weights here are a few bytes: what they key, not whether they fit a model)
    monkeypatch.setattr(weights_mod, "check_importable", lambda *a, **k: None)
    log = lambda s: None  # noqa: E731
    ok = validate(cfg)
    r = resolve(cfg, ok, log)
    res = _Res()
    sur = run_mod.surrogate_stage(cfg, ok, r, res, log)
    sc = run_mod.score_stage(cfg, ok, r, sur, res, log)
    pr = run_mod.prune_stage(cfg, ok, r, sc, res, log)
    assert not any(Path(s.dir).exists() for s in (sur, sc, pr))  # nothing ran
    return {"surrogate": sur, "score": sc, "prune": pr}


@pytest.fixture
def base(small_synth, tmp_path) -> PipelineConfig:
    return PipelineConfig(ratio=0.5, source=str(small_synth / "source"),
                          target=str(small_synth / "targets" / "paper"), method="lm", k=3,
                          fmt="wds", device="cpu", finetune=(), data_root=tmp_path / "data",
                          runs_root=tmp_path / "runs",
                          overrides=("train.batch_size=16",))  # (24 kept of 48: one batch)


@pytest.mark.parametrize("method", ["lm", "fm"])
def test_another_surrogate_rescores(base, method, tmp_path, monkeypatch):
    """Scores are the surrogate's votes/features: another surrogate (another recipe setting, or
    other brought weights) must give another score key — and so another mask — instead of
    reusing the first surrogate's scores (e.g. ``bench surrogates`` comparing two surrogates in
    one runs folder). A method without a surrogate (RANDOM) keeps one score stage."""
    cfg = dataclasses.replace(base, method=method)
    a = _keys(cfg, monkeypatch)
    b = _keys(dataclasses.replace(cfg, surrogate_overrides=("train.epochs=2",)), monkeypatch)
    assert a["surrogate"].key != b["surrogate"].key
    assert a["score"].key != b["score"].key and a["prune"].key != b["prune"].key

    w1, w2 = tmp_path / "w1.pt", tmp_path / "w2.pt"
    w1.write_bytes(b"weights one")
    w2.write_bytes(b"weights two")
    c = _keys(dataclasses.replace(cfg, surrogate_weights=str(w1)), monkeypatch)
    d = _keys(dataclasses.replace(cfg, surrogate_weights=str(w2)), monkeypatch)
    assert c["surrogate"].key != d["surrogate"].key
    assert len({a["score"].key, c["score"].key, d["score"].key}) == 3

    rnd = dataclasses.replace(base, method="random")
    assert (_keys(rnd, monkeypatch)["score"].key
            == _keys(dataclasses.replace(rnd, surrogate_overrides=("train.epochs=2",)),
                     monkeypatch)["score"].key)


def test_budget_samples_gets_its_own_mask(base, monkeypatch):
    """``--budget samples`` keeps another set of clusters than the default units budget at the
    same ratio: its prune key must differ (else a samples run after a units run in one runs
    folder pretrains and finetunes on the units mask). Same scores: the score key is shared."""
    cfg = dataclasses.replace(base, method="fm")
    units = _keys(cfg, monkeypatch)
    samples = _keys(dataclasses.replace(cfg, budget="samples"), monkeypatch)
    assert units["score"].key == samples["score"].key
    assert units["prune"].key != samples["prune"].key
    assert samples["prune"].inputs["budget"] == "samples"


def test_target_input_enters_the_score_key(base, monkeypatch):
    """How the surrogate reads the target for scoring (recipe ``scoring.target_resolution`` /
    ``target_crop``: the paper protocol's 224 px whole image vs the fast protocol's eval
    transform) changes LM's votes: each setting gets its own score stage, and the score stage's
    own inputs (``inputs.json``) name it, not only the surrogate recipe's hash."""
    a = _keys(base, monkeypatch)
    b = _keys(dataclasses.replace(base, surrogate_overrides=("scoring.target_resolution=24",)),
              monkeypatch)
    c = _keys(dataclasses.replace(base, surrogate_overrides=("scoring.target_crop=none",)),
              monkeypatch)
    assert len({a["score"].key, b["score"].key, c["score"].key}) == 3
    assert "target_input" not in a["score"].inputs  # the default: older keys stay valid
    assert b["score"].inputs["target_input"] == [24, "center"]
    assert c["score"].inputs["target_input"] == [0, "none"]


@pytest.mark.parametrize("method", ["lm", "fm"])
def test_the_scoring_protocol_rescores_with_the_same_surrogate(base, method, monkeypatch):
    """[scoring] says how a *trained* surrogate reads the images it scores: moving from the fast
    protocol to the paper's (``source_*``/``target_*`` = 224, no crop) must score again — each
    pair named in the score stage's inputs — but reuse the trained surrogate (hours of GPU on
    ImageNet), whether the change comes as an override or in the recipe file."""
    cfg = dataclasses.replace(base, method=method)
    a = _keys(cfg, monkeypatch)
    paper = ("scoring.source_resolution=24", "scoring.source_crop=none",
             "scoring.target_resolution=24", "scoring.target_crop=none")
    b = _keys(dataclasses.replace(cfg, surrogate_overrides=paper), monkeypatch)
    c = _keys(dataclasses.replace(cfg, surrogate_overrides=paper[:2]), monkeypatch)
    assert a["surrogate"].key == b["surrogate"].key == c["surrogate"].key
    assert a["prune"].key != b["prune"].key
    assert "source_input" not in a["score"].inputs  # the default: older keys stay valid
    assert "target_input" not in c["score"].inputs
    if method == "fm":  # FM reads source features: both pairs are its input
        assert len({a["score"].key, b["score"].key, c["score"].key}) == 3
        assert b["score"].inputs["source_input"] == c["score"].inputs["source_input"] == [24, "none"]
    else:  # LM reads no source image: the source pair is not its input
        assert a["score"].key == c["score"].key != b["score"].key
        assert "source_input" not in b["score"].inputs
    # a training knob beside them still trains another surrogate
    d = _keys(dataclasses.replace(cfg, surrogate_overrides=paper + ("train.epochs=2",)),
              monkeypatch)
    assert d["surrogate"].key != a["surrogate"].key


def _training_keys(cfg: PipelineConfig, monkeypatch) -> dict[str, Stage]:
    """:func:`_keys` and the pretraining and finetuning stages after them (a stand-in mask
    file in the prune stage's folder: the pretraining key holds the mask's bytes)."""
    keys = _keys(cfg, monkeypatch)
    pr = keys["prune"]
    pr.dir.mkdir(parents=True)
    (pr.dir / "train.npy").write_bytes(b"the same mask for every device")
    log = lambda s: None  # noqa: E731
    ok = validate(cfg)
    r = resolve(cfg, ok, log)
    res = _Res()
    pts = run_mod.pretrain_stages(cfg, ok, r, pr, res, log)
    finetunes: list[Stage] = []
    monkeypatch.setattr(run_mod, "run_stage", lambda st, fn, log=print, upstream=(): finetunes.append(st))
    run_mod.finetune_stages(cfg, ok, r, pts, res, log)
    (pr.dir / "train.npy").unlink()
    pr.dir.rmdir()
    return {**keys, "pretrain": pts[cfg.seed], **{f.name: f for f in finetunes}}


def test_the_device_enters_every_key_it_changes(base, monkeypatch):
    """CUDA trains and scores in bf16 with channels_last, the CPU in fp32: a CPU run's cached
    surrogate, scores, pretraining or finetuning must never stand in for a GPU run's in the same
    runs folder (nor the reverse). ``auto`` keys as the device it resolves to; CPU keys hold no
    device, so the CPU runs cached before the device entered the keys stay valid. No GPU here:
    torch is told one is visible, and nothing runs."""
    import torch

    cfg = dataclasses.replace(base, finetune=("lp", "ff"))
    cpu = _training_keys(cfg, monkeypatch)
    auto_cpu = _training_keys(dataclasses.replace(cfg, device="auto"), monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cuda = _training_keys(dataclasses.replace(cfg, device="cuda"), monkeypatch)
    auto_cuda = _training_keys(dataclasses.replace(cfg, device="auto"), monkeypatch)
    assert set(cpu) == {"surrogate", "score", "prune", "pretrain", "finetune-lp", "finetune-ff"}
    for name in ("surrogate", "score", "pretrain", "finetune-lp", "finetune-ff"):
        assert cpu[name].key != cuda[name].key, name
        assert "device" not in cpu[name].inputs and cuda[name].inputs["device"] == "cuda"
    assert {n: s.key for n, s in auto_cpu.items()} == {n: s.key for n, s in cpu.items()}
    assert {n: s.key for n, s in auto_cuda.items()} == {n: s.key for n, s in cuda.items()}
    assert "device" not in cuda["prune"].inputs  # a mask is a mask: other scores, other key


def test_the_loader_thread_count_enters_no_key(base, monkeypatch):
    """``data.num_workers`` changes no sample or order (hashed as its default): a ``--set*`` of
    it keys no stage and no bench row (review: the finetune keys and the bench's settings key
    still held it), while a knob that changes results does."""
    from ffcv_dp4tl.bench.separation import settings_key

    cfg = dataclasses.replace(base, finetune=("lp",))
    plain = _training_keys(cfg, monkeypatch)
    workers = _training_keys(dataclasses.replace(
        cfg, overrides=cfg.overrides + ("data.num_workers=0",),
        surrogate_overrides=("data.num_workers=0",),
        finetune_overrides=("data.num_workers=0",)), monkeypatch)
    assert {n: s.key for n, s in workers.items()} == {n: s.key for n, s in plain.items()}
    epochs = _training_keys(dataclasses.replace(cfg, finetune_overrides=("train.epochs=3",)),
                            monkeypatch)
    assert epochs["finetune-lp"].key != plain["finetune-lp"].key
    assert settings_key(dataclasses.replace(cfg, finetune_overrides=("data.num_workers=0",)),
                        ["lp"]) == settings_key(cfg, ["lp"])


def test_the_embedded_benchmarks_rows_carry_the_device(base, monkeypatch):
    """``bench embedded`` resumes from rows.jsonl only under the same settings key: rows run on
    the CPU never pair with CUDA rows (the CPU key is the one of the rows published before)."""
    import torch

    from ffcv_dp4tl.bench.separation import settings_key

    cpu = settings_key(base, ["lp"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert settings_key(base, ["lp"]) == cpu
    assert settings_key(dataclasses.replace(base, device="cuda"), ["lp"]) != cpu


def _pretrain(cfg: PipelineConfig, kept: int, monkeypatch) -> tuple[Stage, Any, list[str]]:
    """The pretrain stage of ``cfg`` over a mask of ``kept`` samples, and the recipe it would
    train (``train`` is replaced by a recorder: nothing trains), and the log."""
    import numpy as np

    import ffcv_dp4tl.training.trainer as trainer_mod

    trained: list[Any] = []
    monkeypatch.setattr(run_mod, "run_stage",
                        lambda st, fn, log=print, upstream=(): fn(st.dir) or SimpleNamespace(values={}))
    monkeypatch.setattr(run_mod, "load_mask", lambda p: np.arange(kept))
    monkeypatch.setattr(run_mod, "file_sha256", lambda p: f"mask of {kept}")
    monkeypatch.setattr(trainer_mod, "train", lambda rec, *a, **k: trained.append(rec))
    lines: list[str] = []
    ok = validate(cfg)
    r = resolve(cfg, ok, lines.append)
    pr = SimpleNamespace(output=lambda name: Path("unused") / name)
    out = run_mod.pretrain_stages(cfg, ok, r, pr, _Res(), lines.append)
    return out[0], trained[0], lines


def test_pretrain_length_steps_stretches_the_pruned_pretraining(base, monkeypatch):
    """``--pretrain-length steps`` pretrains a pruned set for the unpruned run's optimizer
    steps: more epochs and the schedule stretched, in another stage than the paper's fixed
    epochs (a steps run after an epochs run in one runs folder must not reuse its model). The
    whole source needs no stretch, so the 0 % reference keeps one key for both lengths and a
    steps table reuses the epochs table's references."""
    from ffcv_dp4tl.pipeline.resolve import resolve as resolve_
    from ffcv_dp4tl.training.trainer import steps_per_epoch

    base = dataclasses.replace(base, overrides=("train.batch_size=8",))  # (48 samples: 6 steps)
    steps = dataclasses.replace(base, pretrain_length="steps")
    full = resolve_(base, validate(base), lambda s: None).src.split("train").num_samples
    kept = full // 3
    a, rec_a, _ = _pretrain(base, kept, monkeypatch)
    b, rec_b, said = _pretrain(steps, kept, monkeypatch)
    assert a.key != b.key
    assert rec_b.train.epochs > rec_a.train.epochs
    assert rec_b.lr.lr_peak_epoch / rec_b.train.epochs == pytest.approx(
        rec_a.lr.lr_peak_epoch / rec_a.train.epochs, rel=0.1)
    want = steps_per_epoch(rec_a, full) * rec_a.train.epochs
    assert abs(steps_per_epoch(rec_b, kept) * rec_b.train.epochs - want) <= steps_per_epoch(rec_b, kept)
    assert f"train.epochs={rec_b.train.epochs}" in b.inputs["overrides"]
    assert any("--pretrain-length steps" in s for s in said)
    ref_a, _, _ = _pretrain(dataclasses.replace(base, ratio=0.0), full, monkeypatch)
    ref_b, rec, said = _pretrain(dataclasses.replace(steps, ratio=0.0), full, monkeypatch)
    assert ref_a.key == ref_b.key and rec.train.epochs == rec_a.train.epochs
    assert not any("--pretrain-length" in s for s in said)


def test_pretrain_length_is_checked_before_any_work(base):
    from ffcv_dp4tl.errors import DP4TLError

    with pytest.raises(DP4TLError, match="pretrain_length"):
        validate(dataclasses.replace(base, pretrain_length="hours"))
