"""The winning-subset criterion (``--criterion final | best``): which epoch's test top-1 decides
whether a pruned ratio wins, named in every cost-table header (docs/deviations.md, row 3)."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ffcv_dp4tl.cli.app import app
from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.bench import cost_table as ct
from ffcv_dp4tl.bench.markdown import criterion_line, markdown_tables
from ffcv_dp4tl.bench.stats import CRITERIA, REFERENCE, summarize
from ffcv_dp4tl.reporting import machine_info


def _row(method, ratio, seed, final, best):
    return {"method": method, "ratio": ratio, "seed": seed, "surrogate_s": 1.0, "score_s": 1.0,
            "prune_s": 0.0, "pretrain_s": 40.0, "selection_s": 1.0, "train_kept": 1,
            "total_s": 42.0, "lp_s": 1.0, "lp_top1": final, "lp_best_top1": best,
            "ff_s": None, "ff_top1": None}


#: the final epoch: LM wins only at 40 %; the best epoch: LM also ties the reference at 80 %,
#: RANDOM wins nowhere on final but at 40 % on best
ROWS = [_row(REFERENCE, 0.0, s, 60.0, 62.0) for s in (0, 1)] + \
    [_row("lm", 0.4, s, 61.0, 62.5) for s in (0, 1)] + \
    [_row("lm", 0.8, s, 55.0, 62.0) for s in (0, 1)] + \
    [_row("random", 0.4, s, 59.0, 62.0) for s in (0, 1)] + \
    [_row("random", 0.8, s, 50.0, 55.0) for s in (0, 1)]


def _table(criterion):
    return summarize(ROWS, methods=["lm", "random"], ratios=[0.0, 0.4, 0.8], seeds=[0, 1],
                     finetune=["lp"], criterion=criterion)


def test_final_and_best_judge_on_their_own_epoch():
    final, best = _table("final"), _table("best")
    assert final["criterion"] == "final" and best["criterion"] == "best"
    assert (final["winners"]["lp"]["lm"]["ratio"], final["winners"]["lp"]["random"]["ratio"]) == \
        (0.4, 0.0)
    assert (best["winners"]["lp"]["lm"]["ratio"], best["winners"]["lp"]["random"]["ratio"]) == \
        (0.8, 0.4)
    assert best["winners"]["lp"]["lm"]["mean"] == pytest.approx(62.0)
    assert best["winners"]["lp"]["lm"]["ref_mean"] == pytest.approx(62.0)  # best vs best
    assert final["accuracy"] == best["accuracy"]  # the accuracy tables do not change


@pytest.mark.parametrize("criterion", ["final", "best"])
def test_every_header_names_the_criterion(criterion):
    t = _table(criterion)
    md = markdown_tables(t, plots_prefix=None)
    assert f"criterion `{criterion}`" in md
    assert CRITERIA[criterion] in md.split("### Best winning subset")[1].splitlines()[0]
    assert f"winning-subset criterion: `{criterion}`" in criterion_line(t)


def test_bad_criterion_is_a_one_line_error_before_any_work(tmp_path):
    with pytest.raises(DP4TLError, match="criterion must be one of final, best"):
        _table("median")
    from ffcv_dp4tl.pipeline.config import PipelineConfig

    with pytest.raises(DP4TLError, match="criterion"):
        ct.run_cost_table(PipelineConfig(runs_root=tmp_path / "r"), criterion="last")
    assert not (tmp_path / "r").exists()


def test_render_judges_a_finished_run_again(tmp_path):
    """`dp4tl bench render --criterion best` re-judges results.json from its rows (nothing
    reruns); the run's own criterion is kept otherwise."""
    t = _table("final")
    t.update(config={"source": "synth:tiny", "target": "warm", "fmt": "wds", "recipes": "",
                     "k": 64, "overrides": []}, surrogate_s=1.0, command="dp4tl bench cost-table",
             machine=machine_info(), date="today")
    out = tmp_path / "ct"
    ct.write_outputs(t, out)
    assert "winning-subset criterion: `final`" in (out / "report.md").read_text()
    res = CliRunner().invoke(app, ["bench", "render", str(out), "--criterion", "best"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["criterion"] == "best" and saved["winners"]["lp"]["lm"]["ratio"] == 0.8
    assert "winning-subset criterion: `best`" in (out / "report.md").read_text()
    assert ct.rerender(out)["criterion"] == "best"  # now the run's own
