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
from typing import Any

import pytest

import ffcv_dp4tl.pipeline.run as run_mod
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
    monkeypatch.setattr(run_mod, "run_stage", lambda st, fn, log=print: ran.append(st.name))
    monkeypatch.setattr(run_mod, "selection_truth", lambda *a, **k: None)
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
                          runs_root=tmp_path / "runs")


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
