"""Values of the library's API compare and refuse as values (API audit): masks and scores
compare by content, ``run_pipeline`` leaves the caller's config as given, and a config's bad
root is one DP4TLError line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ffcv_dp4tl.contracts.scores import Scores, ScoresMeta
from ffcv_dp4tl.data.masks import IndexMask
from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.pipeline import PipelineConfig


def test_index_masks_compare_by_value_and_are_unhashable():
    a = IndexMask(np.arange(5), {"split": "train", "num_samples": 9})
    b = IndexMask(np.arange(5), {"split": "train", "num_samples": 9})
    assert a == b and a in [b] and not (a != b)
    assert a != IndexMask(np.arange(4), a.meta)
    assert a != IndexMask(np.arange(5), {"split": "val", "num_samples": 9})
    with pytest.raises(TypeError):
        hash(a)


def _scores(values, tiebreak=None):
    meta = ScoresMeta(method="lm", unit="class", num_units=len(values), format_version=1)
    return Scores(meta, np.asarray(values, float), tiebreak)


def test_scores_compare_by_value_and_are_unhashable():
    a, b = _scores([0.5, np.nan, 1.0]), _scores([0.5, np.nan, 1.0])
    assert a == b and a in [b]
    assert a != _scores([0.5, 0.0, 1.0])
    assert a != _scores([0.5, np.nan, 1.0], tiebreak=np.arange(3))
    with pytest.raises(TypeError):
        hash(a)


def test_a_root_of_none_is_one_line_naming_the_field():
    with pytest.raises(DP4TLError, match="data_root"):
        PipelineConfig(data_root=None)
    with pytest.raises(DP4TLError, match="runs_root"):
        PipelineConfig(runs_root=None)


def test_run_pipeline_leaves_the_callers_config_as_given(tmp_path, monkeypatch):
    from ffcv_dp4tl.pipeline import run as run_mod

    seen = []

    def stop(cfg, ok, log, reading):  # (after validate: no data or work needed)
        seen.append(cfg)
        raise RuntimeError("stop here")

    monkeypatch.setattr(run_mod, "resolve", stop)
    monkeypatch.chdir(tmp_path)
    cfg = PipelineConfig(ratio=0, data_root=Path("data"), runs_root=Path("runs"))
    with pytest.raises(RuntimeError, match="stop here"):
        run_mod.run_pipeline(cfg, log=None)
    assert cfg.ratio == 0 and isinstance(cfg.ratio, int)
    assert cfg.data_root == Path("data") and cfg.runs_root == Path("runs")
    # what the run itself works with (and records) is as before: validated, absolute
    assert seen[0] is not cfg and seen[0].ratio == 0.0 and isinstance(seen[0].ratio, float)
    assert seen[0].data_root == tmp_path / "data" and seen[0].runs_root.is_absolute()
    assert cfg.seeds == () and seen[0].seeds == (0,)  # (recorded [0], as the CLI's default)


def test_run_pipeline_takes_log_none(tmp_path, monkeypatch, capsys):
    from ffcv_dp4tl.pipeline import run as run_mod

    def stop(cfg, ok, log, reading):
        log("a line")  # (a stage's log call: nowhere with log=None)
        raise RuntimeError("stop here")

    monkeypatch.setattr(run_mod, "resolve", stop)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="stop here"):
        run_mod.run_pipeline(PipelineConfig(), log=None)
    assert capsys.readouterr().out == ""
