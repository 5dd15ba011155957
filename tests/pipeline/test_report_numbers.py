"""report.md's numbers: the seeds' statistics (stats audit), the recipe overrides behind them
(API audit) and one unit for every accuracy (% in the stage table as in the tables below)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from ffcv_dp4tl.contracts import StageResult
from ffcv_dp4tl.pipeline.result import PipelineResult, StagePlace, stage_label
from ffcv_dp4tl.pipeline.stages import StageRun


def test_mean_std_of_huge_values_is_finite_and_non_finite_values_are_left_out():
    """A pure-Python sum of squares raised OverflowError on [1e300, 2e300, 3e300]; an inf was
    kept (inf, nan) while a NaN was dropped: every non-finite value is left out and counted."""
    from ffcv_dp4tl.pipeline.report import mean_std

    m, sd = mean_std([1e300, 2e300, 3e300])
    assert m == pytest.approx(2e300) and sd == pytest.approx(1e300)
    assert mean_std([1.0, math.inf, 3.0]) == mean_std([1.0, -math.inf, math.nan, 3.0]) \
        == pytest.approx((2.0, math.sqrt(2)))
    assert all(math.isnan(x) for x in mean_std([math.nan, math.inf]))
    assert mean_std([0.5, 0.7]) == pytest.approx((0.6, math.sqrt(0.02)))


def test_seed_stats_counts_the_values_used_and_those_left_out():
    from ffcv_dp4tl.pipeline.report import seed_stats

    assert seed_stats([0.7, math.nan, None, math.inf]) == (0.7, 0.0, 1, 2)
    assert seed_stats([0.5, 0.7]) == pytest.approx((0.6, math.sqrt(0.02), 2, 0))
    assert seed_stats([1e308, -1e308]).std == pytest.approx(math.sqrt(2) * 1e308)


def test_a_mean_cell_counts_the_values_present_and_shows_no_spread_for_one():
    """``[0.70, nan]`` printed "70.00 ± 0.00 % (2 seeds)": the NaN was counted and one value
    given a spread of 0."""
    from ffcv_dp4tl.pipeline.report import _mean_cell

    assert _mean_cell([0.70, math.nan], 2, 100, " %") == "70.00 % (1 seed; 1 not finite, left out)"
    assert _mean_cell([0.70, 0.72, math.inf], 2, 100, " %") == \
        "71.00 ± 1.41 % (2 seeds; 1 not finite, left out)"
    assert _mean_cell([0.70, 0.72], 2, 100, " %") == "71.00 ± 1.41 % (2 seeds)"
    assert _mean_cell([0.70], 2, 100, " %") == "70.00 %"


def _result(seeds: list[int], finals: dict[int, float], config: dict | None = None
            ) -> PipelineResult:
    from ffcv_dp4tl.pipeline.report import summarize_seeds

    res = PipelineResult(config={"method": "lm", "ratio": 0.5, "order": "ordered",
                                 **(config or {})},
                         source="src", target="/d/warm", protocol="fast",
                         recipes={"surrogate": "s", "pretrain": "p", "lp": "lp_a"}, seeds=seeds)
    for seed, top1 in finals.items():
        label = stage_label("finetune", first_seed=seed == seeds[0], seed=seed, mode="lp")
        res.add(StagePlace(label, "finetune", seed=seed, mode="lp"),
                StageRun(StageResult(label, "finetune", 1.0, {"test_top1": top1}), Path("/d"),
                         ran=True))
    res.summary = summarize_seeds(res, ["lp"])
    return res


def test_the_accuracy_table_counts_the_seeds_with_a_value(tmp_path):
    """Two seeds, one without a finite value (its finetuning missing, or a NaN in the summary):
    the header said "mean ± std over 2 seeds" (len(res.seeds)) and the cell "70.00 ± 0.00"."""
    from ffcv_dp4tl.pipeline.report import write_report

    missing = _result([0, 1], {0: 0.70})
    nan = _result([0, 1], {0: 0.70, 1: 0.72})
    nan.summary["lp"]["seeds"][1].update(final=math.nan, best=math.nan)
    for name, res, note in (("missing", missing, ""),
                            ("nan", nan, " (1 seed; 1 not finite, left out)")):
        write_report(res, tmp_path / name)
        text = (tmp_path / name / "report.md").read_text()
        assert "over 2 seeds" not in text and "± 0.00" not in text, name
        assert f"| LP | 70.00{note} | 70.00{note} |" in text, name
    assert "test top-1 (%), one seed: final epoch" in (tmp_path / "missing" / "report.md").read_text()
    assert ("mean ± std over the seeds with a finite value (their number in each cell)"
            in (tmp_path / "nan" / "report.md").read_text())
    write_report(_result([0, 1], {0: 0.70, 1: 0.72}), tmp_path / "two")
    text = (tmp_path / "two" / "report.md").read_text()
    assert "test top-1 (%), mean ± std over 2 seeds: final epoch" in text
    assert "| LP | 71.00 ± 1.41 | 71.00 ± 1.41 | s0: 70.00 / 70.00, s1: 72.00 / 72.00 |" in text


def test_the_report_header_lists_the_recipe_overrides_and_seeds(tmp_path):
    """results.json's config held `--set train.epochs=1`, `--set-finetune ...` and the seeds,
    but report.md's header did not: its numbers read as the shipped recipes'."""
    from ffcv_dp4tl.pipeline.report import write_report

    res = _result([0, 2], {0: 0.7, 2: 0.72}, {
        "overrides": ["train.epochs=1"], "arch": "resnet18_tiny_cpu",
        "surrogate_overrides": [], "finetune_overrides": ["lr.lr=0.5", "train.epochs=2"],
        "seeds": [0, 2]})
    write_report(res, tmp_path / "a")
    text = (tmp_path / "a" / "report.md").read_text()
    assert ("- recipe overrides: pretraining --set `train.epochs=1`, "
            "`model.arch=resnet18_tiny_cpu`; finetuning (LP, FF) --set-finetune `lr.lr=0.5`, "
            "`train.epochs=2`\n") in text
    assert ("- seeds: 0, 2 (seed s > 0 sets `train.seed=s` and `data.seed=s` in the "
            "pretraining and finetuning recipes)\n") in text
    write_report(_result([0], {0: 0.7}), tmp_path / "b")
    text = (tmp_path / "b" / "report.md").read_text()
    assert "- recipe overrides: none (the recipes as they are)\n- seeds: 0\n" in text


def test_the_stage_table_gives_accuracies_in_percent_as_the_tables_below():
    """The stage table printed fractions ("val top-1 0.5795", "target test top-1 0.9861")
    beside tables in % ("99.31 ± 0.98"): one unit in report.md."""
    from ffcv_dp4tl.pipeline.stages import describe

    assert describe({"stage": "finetune-lp", "kind": "finetune", "test_top1": 0.98612,
                     "best_test_top1": 0.99, "best_epoch": 3}) == \
        "target test top-1 98.61 % (best 99.00 % at epoch 3)"
    assert describe({"stage": "pretrain", "epoch": 0, "top1_val": 0.5795}) == "val top-1 57.95 %"
    assert describe({"stage": "surrogate", "epoch": 0, "top1_val": None, "objective": "moco_v2",
                     "loss": 1.5, "top1_train": 0.25}) == "moco_v2 loss 1.500, instance top-1 25.00 %"
