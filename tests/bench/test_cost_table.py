"""The cost table at the smallest scale (2 ratios × 2 methods, 1-epoch width-8 recipes), and
its arithmetic on hand-made numbers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ffcv_dp4tl.bench.cost_table import run_cost_table
from ffcv_dp4tl.bench.markdown import markdown_tables
from ffcv_dp4tl.bench.stats import REFERENCE, best_winning_subset, summarize
from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.reporting import machine_info, write_section
from tiny_data import FINETUNE, SYNTH, TRAIN


def _stage_runs(runs_root: Path, name: str = "*") -> int:
    """How many times stages called ``name`` ran in ``runs_root``: each run leaves one
    ``.segment-*`` record in its folder (a cached stage adds none)."""
    return len(list(Path(runs_root).glob(f"{name}-*/.segment-*")))


def test_best_winning_subset_on_hand_made_numbers():
    acc = {0.2: [80.0], 0.4: [79.6], 0.6: [79.4], 0.8: [70.0]}
    w = best_winning_subset(acc, [80.0], tol=0.5)
    assert w["ratio"] == 0.4 and w["mean"] == pytest.approx(79.6)  # 79.4 < 79.5
    assert best_winning_subset(acc, [80.0], tol=0.6)["ratio"] == 0.6
    assert best_winning_subset(acc, [90.0])["ratio"] == 0.0  # nothing qualifies
    # a non-monotone curve: the largest qualifying ratio wins, even past a dip
    assert best_winning_subset({0.2: [70.0], 0.4: [81.0]}, [80.0])["ratio"] == 0.4
    # several seeds: means are compared, std reported
    w = best_winning_subset({0.2: [79.0, 81.0], 0.4: [78.0, 80.0]}, [80.0, 80.4], tol=0.5)
    assert w["ratio"] == 0.2 and w["std"] == pytest.approx(math.sqrt(2))
    assert w["ref_mean"] == pytest.approx(80.2)


def test_no_loss_is_shown_by_a_paired_bound_in_a_fixed_order():
    """The winning subset's test (non-inferiority at margin tol): a ratio passes while the
    one-sided 95 % bound of its paired differences stays >= -tol; the first failure ends the
    sequence, so a later ratio that would pass alone is not claimed; a mean above -tol with a
    wide spread passes nothing; identical differences pass on the exact test from 5 seeds."""
    from ffcv_dp4tl.bench.stats import no_loss_shown

    tight = [0.1, -0.1, 0.0, 0.2, -0.2]  # bound about -0.15 (mean 0 - t 2.13 * sd 0.158 / sqrt 5)
    got = no_loss_shown({0.2: tight, 0.4: [x - 0.2 for x in tight], 0.6: [-3.0, 1.0, -2.0, 2.0, 0.5],
                         0.8: tight}, tol=0.5)
    assert got["ratio"] == 0.4 and got["n"] == 5 and -0.5 < got["lo"] < -0.3
    assert no_loss_shown({0.2: tight}, tol=0.1)["ratio"] == 0.0  # bound -0.19 < -0.1
    assert no_loss_shown({0.2: [5.0, -4.0, 6.0]}, tol=0.5)["ratio"] == 0.0  # mean +2.3, spread wide
    assert no_loss_shown({0.2: [1.0] * 5}, tol=0.0)["ratio"] == 0.2  # p = 2^-5
    assert no_loss_shown({0.2: [1.0] * 5}, tol=0.0)["exact"]
    assert no_loss_shown({0.2: [1.0] * 4}, tol=0.0)["ratio"] == 0.0  # p = 2^-4 >= 0.05
    # a planned ratio without pairs ends the sequence: 0.6 was never reached past 0.4 (review)
    assert no_loss_shown({0.2: tight, 0.6: tight}, tol=0.5, ratios=[0.2, 0.4, 0.6])["ratio"] == 0.2


def test_no_loss_holds_its_error_over_the_whole_table():
    """Each method and mode of a table is one sequence; the table's claims hold together at 95 %
    (Bonferroni over its sequences): a bound that passes alone at 95 % fails among 12 rows,
    the 5 identical differences that pass alone (2^-5 < 5 %) do not among 2 (2^-5 > 2.5 %), and
    null differences, simulated, are claimed somewhere in a 12-row table at most 5 % of the
    time (each row alone: far more)."""
    import numpy as np

    from ffcv_dp4tl.bench.stats import no_loss_shown

    alone = [0.3, -0.2, 0.1, 0.2, -0.1]  # mean 0.06, sd 0.21: bound -0.14 at 95 %, -0.36 at 99.6 %
    assert no_loss_shown({0.2: alone}, tol=0.2)["ratio"] == 0.2
    got = no_loss_shown({0.2: alone}, tol=0.2, family=12)
    assert got["ratio"] == 0.0 and got["family"] == 12
    assert no_loss_shown({0.2: [1.0] * 5}, family=2)["ratio"] == 0.0
    assert no_loss_shown({0.2: [1.0] * 6}, family=2)["ratio"] == 0.2  # 2^-6 < 2.5 %
    # true loss exactly at the margin (the worst case of the null): a claim is an error
    rng = np.random.default_rng(0)
    trials, rows, tol = 500, 12, 0.5
    wrong = {1: 0, rows: 0}
    for _ in range(trials):
        diffs = rng.normal(-tol, 1.0, size=(rows, 5))
        for fam in wrong:
            wrong[fam] += any(no_loss_shown({0.2: list(d)}, tol=tol, family=fam)["ratio"] > 0
                              for d in diffs)
    assert wrong[rows] / trials <= 0.05 + 3 * (0.05 * 0.95 / trials) ** 0.5  # over the table
    assert wrong[1] / trials > 0.3  # each row at 5 % alone: some claim wrong in ~46 % of tables
    with pytest.raises(ValueError, match="family"):
        no_loss_shown({0.2: alone}, family=0)


def test_no_loss_text_names_the_level_and_holds_a_several_target_section_together():
    """The column's text gives each bound's level and, over several rows, says they hold
    together; a one-row table says nothing of rows. A several-target table's per-target rows
    (targets x methods x modes) are one family: each target alone at 5 % let the section's
    claims be wrong up to (targets x 5 %) of the time (review). Read from the published Fig. A5
    ablation."""
    from ffcv_dp4tl.bench.cost_table import _target_summaries
    from ffcv_dp4tl.bench.markdown import no_loss_text
    from ffcv_dp4tl.bench.stats import winner_rows

    one = no_loss_text([{"shown": {"ratio": 0.0, "family": 1}}], 0.5)
    assert "one-sided 95 % lower bound" in one and "rows" not in one
    nine = no_loss_text([{"shown": {"ratio": 0.0, "family": 9}}] * 9, 0.5)
    assert "one-sided 99.44 % lower bound" in nine and "its 9 rows, every mode's, are tested together" in nine
    old = json.loads((Path(__file__).resolve().parents[2] / "docs/ablations/fig-a5-targets/results.json").read_text())
    per = _target_summaries(old, old.get("criterion", "final"))["targets"]
    rows = sum(winner_rows(t["winners"]) for t in per.values())
    assert len(per) == 2 and rows == 4
    assert {w["shown"]["family"] for t in per.values() for ws in t["winners"].values()
            for w in ws.values()} == {rows}


def test_the_winning_table_pairs_each_ratio_with_the_reference_of_its_own_seed():
    """The no-loss test subtracts each seed's own 0 % accuracy: seeds whose references differ a
    lot but whose pruned runs track them closely pass (unpaired, the spread would hide it), and
    the rows' order does not matter."""
    ref = {0: 60.0, 1: 80.0, 2: 70.0, 3: 90.0, 4: 65.0}
    rows = [_row(REFERENCE, 0.0, s, 0, 0, 100.0, a) for s, a in ref.items()]
    rows += [_row("lm", 0.6, s, 1, 1, 40.0, ref[s] + d)
             for s, d in reversed(list(zip(ref, [0.2, -0.1, 0.0, 0.1, -0.2])))]
    t = summarize(rows, methods=["lm"], ratios=[0.0, 0.6], seeds=list(ref), finetune=["lp"],
                  tol=0.5)
    shown = t["winners"]["lp"]["lm"]["shown"]
    assert shown["ratio"] == 0.6 and shown["n"] == 5 and shown["lo"] > -0.5


def _row(method, ratio, seed, sur, sc, pre, lp):
    return {"method": method, "ratio": ratio, "seed": seed, "surrogate_s": sur, "score_s": sc,
            "prune_s": 0.0, "pretrain_s": pre, "selection_s": sc, "train_kept": 1,
            "total_s": sur + sc + pre, "lp_s": 1.0, "lp_top1": lp, "ff_s": None, "ff_top1": None}


def test_summary_reductions_and_selection_cost():
    rows = [_row(REFERENCE, 0.0, 0, 0, 0, 100.0, 50.0),
            _row("lm", 0.6, 0, 10.0, 2.0, 40.0, 52.0),
            _row("random", 0.6, 0, 0.0, 0.0, 40.0, 40.0)]
    t = summarize(rows, methods=["lm", "random"], ratios=[0.0, 0.6], seeds=[0], finetune=["lp"])
    cost = {(c["method"], c["ratio"]): c for c in t["cost"]}
    assert cost[("lm", 0.6)]["total_s"] == pytest.approx(52.0)
    assert cost[("lm", 0.6)]["reduction"] == pytest.approx(0.48)  # (100 - 52) / 100
    assert cost[("lm", 0.6)]["pretrain_reduction"] == pytest.approx(0.6)
    assert cost[("random", 0.6)]["reduction"] == pytest.approx(0.6)
    assert cost[("lm", 0.6)]["paper_reduction"] == pytest.approx(1 - 2.4 / 5.4)
    sel = {s["method"]: s for s in t["selection"]}
    assert sel["lm"]["total_s"] == pytest.approx(12.0) and sel["random"]["total_s"] == 0.0
    assert t["winners"]["lp"]["lm"]["ratio"] == 0.6 and t["winners"]["lp"]["random"]["ratio"] == 0.0
    md = markdown_tables(t)
    assert "| 60 % | 2.4 | 56 % |" in md and "52.0 (-48 %)" in md
    assert sel["lm"]["with_pretrain_s"] == pytest.approx(52.0) and sel["lm"]["paper_h"] == 2.4
    assert "| LM | 10.0 | 2.0 | 2.0 | 12.0 | 52.0 | 2.4 |" in md  # Tab. 4: selection + pretraining
    # the surrogate's share of a full pretraining decides from which ratio a method saves time
    t.update(surrogate_s=10.0, recipes={})
    assert "so it saves time once r > 0.10." in markdown_tables(t)
    t.update(surrogate_s=183.0)
    md = markdown_tables(t)
    assert "so no ratio can save time: the surrogate alone costs 1.83× a full pretraining" in md
    assert "saves time once" not in md


def test_a_steps_matched_report_does_not_say_the_cost_falls_with_the_ratio():
    """``--pretrain-length steps`` pretrains as long at every ratio, yet the report said a
    total is "about (1 − r) + …" of the 0 % cost (audit)."""
    rows = [_row(REFERENCE, 0.0, 0, 0, 0, 100.0, 50.0), _row("lm", 0.6, 0, 10.0, 2.0, 100.0, 52.0)]
    t = summarize(rows, methods=["lm"], ratios=[0.0, 0.6], seeds=[0], finetune=["lp"])
    t.update(surrogate_s=10.0, recipes={}, config={"pretrain_length": "steps"})
    md = markdown_tables(t)
    assert "(1 − r)" not in md and "saves time once" not in md
    assert "1 + 0.10 of the 0 % cost at every ratio r" in md and "no ratio saves time" in md


def test_the_stage_breakdown_shows_each_rows_load():
    """Each row records the 1-min load average when its pretraining finished (``loadavg_1min``),
    but the published table showed only the range over all rows in its header, so a reader could
    not tell which row was measured on a busy machine. The stage breakdown has a *load* column:
    one value, lowest–highest over seeds, "–" where no run recorded one; its legend names the
    machine's cores, which the benchmark's own training keeps busy (a load near that count is
    its own, not another job's)."""
    rows = [{**_row(REFERENCE, 0.0, s, 0, 0, 100.0, 50.0), "loadavg_1min": 0.7} for s in (0, 1)]
    rows += [{**_row("lm", 0.6, 0, 10.0, 2.0, 40.0, 52.0), "loadavg_1min": 1.24},
             {**_row("lm", 0.6, 1, 10.0, 2.0, 40.0, 52.0), "loadavg_1min": 3.41},
             _row("random", 0.6, 0, 0.0, 0.0, 40.0, 40.0),  # (recorded no load)
             _row("random", 0.6, 1, 0.0, 0.0, 40.0, 40.0)]
    t = summarize(rows, methods=["lm", "random"], ratios=[0.0, 0.6], seeds=[0, 1],
                  finetune=["lp"])
    t["machine"] = {"cores": 2}
    md = markdown_tables(t)
    lines = md.splitlines()
    head = next(i for i, x in enumerate(lines) if x.startswith("| method | ratio | kept samples"))
    assert lines[head].endswith("| reduction (CPU-s) | load |")
    assert lines[head + 1].count("|") == lines[head].count("|")
    cells = {x.split(" | ")[0]: x.rsplit(" | ", 1)[1] for x in lines[head + 2:head + 5]}
    assert cells == {f"| {REFERENCE}": "0.7 |", "| LM": "1.2–3.4 |", "| RANDOM": "– |"}
    assert ("*load*: the 1-min load average when the row's pretraining finished" in md
            and "keep the machine's 2 cores busy, so a load up to about one above that is its "
            "own" in md)


@pytest.mark.slow
def test_cost_table_end_to_end_smallest_scale(tmp_path, data_root, monkeypatch):
    base = PipelineConfig(source=SYNTH, target="", fmt="wds", device="cpu", k=4,
                          data_root=data_root, runs_root=tmp_path / "runs",
                          overrides=TRAIN, surrogate_overrides=TRAIN, finetune_overrides=FINETUNE)
    logs: list[str] = []
    out = tmp_path / "report"
    t = run_cost_table(base, out, ratios=(0.0, 0.5, 0.75), methods=("lm", "random"),
                       finetune=("lp",), command="pytest", log=logs.append)
    # 1 shared reference + 2 methods × 2 pruned ratios; the surrogate is trained once
    assert len(t["rows"]) == 5 and _stage_runs(tmp_path / "runs", "surrogate") == 1
    assert sum(r["method"] == REFERENCE for r in t["rows"]) == 1
    ref = next(r for r in t["rows"] if r["method"] == REFERENCE)
    assert ref["total_s"] == ref["pretrain_s"] > 0 and ref["surrogate_s"] == 0
    lm = [r for r in t["rows"] if r["method"] == "lm"]
    assert t["surrogate_s"] > 0
    assert all(r["surrogate_s"] == pytest.approx(t["surrogate_s"]) for r in lm)
    assert all(r["surrogate_s"] == 0 for r in t["rows"] if r["method"] == "random")
    for c in t["cost"][1:]:
        assert c["total_s"] == pytest.approx(c["surrogate_s"] + c["score_s"] + c["prune_s"]
                                             + c["pretrain_s"])
        assert c["reduction"] == pytest.approx(1 - c["total_s"] / t["reference_total_s"])
    assert all(r["pretrain_cpu_s"] > 0 and r["total_cpu_s"] >= r["pretrain_cpu_s"]
               for r in t["rows"])
    assert all(r["surrogate_cpu_s"] > 0 for r in lm)
    assert set(t["accuracy"]["lp"]["methods"]) == {"lm", "random"}
    assert set(t["winners"]["lp"]) == {"lm", "random"}
    for name in ("report.md", "accuracy.png", "cost.png", "results.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "results.json").read_text())["methods"] == ["lm", "random"]
    report = (out / "report.md").read_text()
    assert "Best winning subset" in report and "CPU" in report
    # what a run writes is what `bench render` accepts (its checks)
    from ffcv_dp4tl.bench.cost_table import rerender

    assert all(r["estimated_s"] == {} for r in t["rows"])  # (no stage was killed)
    assert rerender(out)["rows"] == t["rows"]
    # a rerun reuses every stage, and trains no warm-up: nothing timed runs (its untimed
    # one-epoch training was paid for nothing)
    import ffcv_dp4tl.training.trainer as trainer

    assert t["warmup"]["ran"] is True and t["warmup"]["seconds"] > 0
    ran_before = _stage_runs(tmp_path / "runs")
    with monkeypatch.context() as m:
        m.setattr(trainer, "train", lambda *a, **k: pytest.fail("trained with every stage cached"))
        again = run_cost_table(base, None, ratios=(0.0, 0.5, 0.75), methods=("lm", "random"),
                               finetune=("lp",), log=logs.append)
    from ffcv_dp4tl.bench.cost_table import ALL_CACHED

    assert again["warmup"] == {"ran": False, "why": ALL_CACHED}
    assert _stage_runs(tmp_path / "runs") == ran_before
    assert [r["pretrain_cpu_s"] for r in again["rows"]] == [r["pretrain_cpu_s"] for r in t["rows"]]
    # METHOD@ratios and FF for some methods only
    t = run_cost_table(base, out, ratios=(0.0, 0.5), methods=("lm", "random"),
                       method_ratios={"random": [0.75]}, ff_methods=(), finetune=("lp",),
                       log=logs.append)
    assert [(r["method"], r["ratio"]) for r in t["rows"]] == [(REFERENCE, 0.0), ("lm", 0.5),
                                                               ("random", 0.75)]
    assert "–" in (out / "report.md").read_text()  # missing (method, ratio) cells
    assert rerender(out)["rows"] == t["rows"]


def test_write_section_replaces_only_its_section(tmp_path):
    p = tmp_path / "B.md"
    write_section(p, "A", "first-body")
    write_section(p, "B", "second-body")
    write_section(p, "A", "third-body")
    text = p.read_text()
    assert "third-body" in text and "second-body" in text and "first-body" not in text
    assert text.index("## A") < text.index("## B")


def test_cli_parses_options_and_writes_the_benchmarks_section(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import ffcv_dp4tl.bench.cost_table as ct
    from ffcv_dp4tl.cli import app

    seen = {}

    def fake(base, out, **kw):
        seen.update(kw, base=base)
        rows = [_row(REFERENCE, 0.0, 0, 0, 0, 100.0, 50.0), _row("lm", 0.6, 0, 10.0, 2.0, 40.0, 52.0)]
        t = summarize(rows, methods=["lm"], ratios=[0.0, 0.6], seeds=[0], finetune=["lp"])
        t.update(config={"source": "synth:tiny", "target": "warm", "fmt": "wds", "recipes": "",
                         "k": 64, "overrides": []}, surrogate_s=10.0, command=kw["command"],
                 machine=machine_info(), date="today")
        ct.write_outputs(t, out)
        return t

    monkeypatch.setattr(ct, "run_cost_table", fake)
    bench_md = tmp_path / "BENCHMARKS.md"
    bench_md.write_text("# Benchmarks\n\n## Data layer (CPU)\n\nkeep me\n")
    out = tmp_path / "docs" / "cost-table"
    res = CliRunner().invoke(app, ["bench", "cost-table", "--ratios", "0,0.6", "--methods",
                                   "lm,grand@0.6/0.8", "--ff-methods", "lm", "--out", str(out),
                                   "--report", str(bench_md), "--set", "train.epochs=3"])
    assert res.exit_code == 0, res.output
    assert seen["ratios"] == [0.0, 0.6] and seen["methods"] == ["lm", "grand"]
    assert seen["method_ratios"] == {"grand": [0.6, 0.8]} and seen["ff_methods"] == ["lm"]
    assert seen["base"].overrides == ("train.epochs=3",) and seen["base"].fmt == "wds"
    text = bench_md.read_text()
    assert "keep me" in text and "## Cost table (CPU, embedded data)" in text
    assert "**CPU**" in text and "dp4tl bench cost-table" in text
    assert "](docs/cost-table/accuracy.png)" in text
    assert (out / "cost.png").exists() and (out / "report.md").exists()


def test_best_epoch_accuracy_and_brought_surrogate_in_the_report():
    rows = [_row(REFERENCE, 0.0, 0, 0, 0, 100.0, 50.0), _row(REFERENCE, 0.0, 1, 0, 0, 100.0, 52.0),
            _row("lm", 0.6, 0, 1.0, 2.0, 40.0, 52.0), _row("lm", 0.6, 1, 1.0, 2.0, 40.0, 50.0)]
    for r, best in zip(rows, (55.0, 53.0, 56.0, 54.0)):
        r["lp_best_top1"] = best
    t = summarize(rows, methods=["lm"], ratios=[0.0, 0.6], seeds=[0, 1], finetune=["lp"])
    assert t["accuracy_best"]["lp"]["reference"][0] == pytest.approx(54.0)
    assert t["accuracy_best"]["lp"]["methods"]["lm"]["0.6"][0] == pytest.approx(55.0)
    assert t["tol"] == 0.0 and t["winners"]["lp"]["lm"]["ratio"] == 0.6  # 51 >= 51: no lower
    t.update(surrogate_s=0.3, recipes={}, surrogate_brought="/w/resnet18.pth")
    md = markdown_tables(t)
    assert "Best evaluated epoch" in md and "55.0 ± 1.4" in md
    assert "**brought** (`/w/resnet18.pth`" in md


@pytest.mark.parametrize("lm,cell", [
    ([70.0, None, math.nan], "| 60 % | 70.0 (1 of 3 seeds) |"),
    ([70.0, 72.0, None], "| 60 % | 71.0 ± 1.4 (2 of 3 seeds) |"),
    ([70.0, 72.0, 71.0], "| 60 % | 71.0 ± 1.0 |"),
])
def test_an_accuracy_cell_over_fewer_seeds_than_the_table_says_so(lm, cell):
    """A cell's mean over fewer seeds than the table's (a mode not finetuned, a diverged run)
    printed the table's form: one value read "70.0 ± 0.0" in a 3-seed table (figures audit).
    It shows its own count, and one value no spread; the winners' and versus-RANDOM cells too."""
    from ffcv_dp4tl.bench.markdown import _acc

    rows = [_row(REFERENCE, 0.0, s, 0, 0, 100.0, 60.0 + s) for s in (0, 1, 2)]
    rows += [_row("lm", 0.6, s, 1.0, 1.0, 40.0, v) for s, v in enumerate(lm)]
    rows += [_row("random", 0.6, s, 0.0, 0.0, 40.0, 50.0) for s in (0, 1, 2)]
    t = summarize(rows, methods=["lm", "random"], ratios=[0.0, 0.6], seeds=[0, 1, 2],
                  finetune=["lp"])
    md = markdown_tables(t)
    assert cell + " 50.0 ± 0.0 |" in md
    assert "± 0.0 (" not in md and "70.0 ± 0.0" not in md
    (vs,) = t["versus_random"]["lp"]
    assert vs["n"] == sum(v is not None and not math.isnan(v) for v in lm) and vs["random_n"] == 3
    winner = t["winners"]["lp"]["lm"]
    assert (winner["ratio"], winner["n"], winner["ref_n"]) == (0.6, vs["n"], 3)
    assert _acc((70.0, 0.0, 1), 1) == "70.0" and _acc((70.0, 0.0), 3) == "70.0 ± 0.0"  # (older)


def test_versus_random_verdicts_on_hand_made_numbers():
    from ffcv_dp4tl.bench.markdown import versus_random_summary
    from ffcv_dp4tl.bench.stats import versus_random

    rows = [_row(REFERENCE, 0.0, s, 0, 0, 100.0, 60.0) for s in (0, 1, 2)]
    for s, (lm, fm, rnd, sp) in enumerate([(70.0, 61.0, 50.0, 40.0), (73.0, 49.0, 52.0, 41.0),
                                           (71.0, 55.0, 51.0, 39.0)]):
        rows += [_row("lm", 0.6, s, 1, 1, 40.0, lm), _row("fm", 0.6, s, 1, 1, 40.0, fm),
                 _row("random", 0.6, s, 0, 0, 40.0, rnd), _row("sp", 0.6, s, 1, 1, 40.0, sp)]
    vs = {v["method"]: v for v in versus_random(rows, "lp", ["lm", "fm", "random", "sp"], [0.0, 0.6])}
    assert set(vs) == {"lm", "fm", "sp"}  # RANDOM is the yardstick, the reference has no ratio
    # LM: +20, +21, +20 (p 0.0003; Holm over 3: 0.0008)
    assert vs["lm"]["verdict"] == "better" and vs["lm"]["wins"] == 3 and vs["lm"]["paired"] == 3
    assert vs["lm"]["delta"] == pytest.approx(61 / 3) and vs["lm"]["p_holm"] == pytest.approx(
        3 * vs["lm"]["p"])
    assert vs["fm"]["verdict"] == "no difference detected" and vs["fm"]["wins"] == 2  # +11, -3, +4
    assert vs["sp"]["verdict"] == "worse" and vs["sp"]["wins"] == 0
    text = versus_random_summary(list(vs.values()))
    assert "LM: better at 60 %" in text and "FM: no difference detected at 60 %" in text
    # one seed: no spread, no verdict either way
    one = versus_random([r for r in rows if r["seed"] == 0], "lp", ["lm", "random"], [0.6])
    assert one[0]["verdict"] == "too few pairs"
    # and the sentence says so (it said "within the spread" of a +20 point difference)
    assert versus_random_summary(one) == ("**Verdict:** LM: not judged at 60 % (fewer than two "
                                          "paired seeds).")
    t = summarize(rows, methods=["lm", "fm", "random", "sp"], ratios=[0.0, 0.6], seeds=[0, 1, 2],
                  finetune=["lp"])
    md = markdown_tables(t)
    assert "Versus RANDOM — LP: paired over seeds" in md
    assert "| 60 % | LM | 71.3 ± 1.5 | 51.0 ± 1.0 | +20.3 [+18.9, +21.8] | <0.001 | <0.001 | 3/3 " \
           "| **better** |" in md


def test_versus_random_is_a_paired_test_not_an_overlap_of_bars():
    """The verdict was "better" when the two mean ± std bars did not overlap: unpaired, it
    called a null difference better or worse 22 % of the time at two seeds and saw less with
    more seeds (review). GraNd at 80 % in BENCHMARKS.md (+30.6 and +9.7 points over RANDOM:
    bars apart, paired p 0.30) was **better**; a method 1 point above RANDOM on each of six
    seeds whose RANDOM runs spread widely (bars overlapping) was "within spread"."""
    from ffcv_dp4tl.bench.stats import versus_random

    rows = [_row("random", 0.8, 0, 0, 0, 20.0, 50.0), _row("random", 0.8, 1, 0, 0, 20.0, 58.0),
            _row("grand", 0.8, 0, 1, 1, 20.0, 80.6), _row("grand", 0.8, 1, 1, 1, 20.0, 67.7)]
    (g,) = versus_random(rows, "lp", ["grand"], [0.8])
    assert g["mean"] - g["std"] > g["random_mean"] + g["random_std"]  # (the bars are apart)
    assert g["verdict"] == "no difference detected" and g["p"] == pytest.approx(0.3046, abs=1e-4)
    rnd = [40.0, 70.0, 55.0, 62.0, 48.0, 66.0]
    rows = [_row("random", 0.6, s, 0, 0, 40.0, v) for s, v in enumerate(rnd)]
    rows += [_row("lm", 0.6, s, 1, 1, 40.0, v + 1.0 + 0.01 * s) for s, v in enumerate(rnd)]
    (lm,) = versus_random(rows, "lp", ["lm"], [0.6])
    assert lm["mean"] - lm["std"] < lm["random_mean"] + lm["random_std"]  # (the bars overlap)
    assert lm["verdict"] == "better" and lm["paired"] == 6


def test_versus_random_adjusts_for_the_number_of_comparisons():
    """Many methods x ratios are judged at once: a comparison that passes alone but not after
    Holm's adjustment over the table is named so, without the bold word."""
    from ffcv_dp4tl.bench.markdown import versus_random_summary
    from ffcv_dp4tl.bench.stats import versus_random

    rows = []
    for s, d in enumerate([1.0, 3.0, 2.0, 2.5]):  # LM: p 0.017 alone
        rows += [_row("random", r, s, 0, 0, 40.0, 50.0) for r in (0.2, 0.4, 0.6, 0.8)]
        rows += [_row("lm", 0.2, s, 1, 1, 40.0, 50.0 + d)]
        rows += [_row("lm", r, s, 1, 1, 40.0, 50.0 + (-1) ** s * (s + 1)) for r in (0.4, 0.6, 0.8)]
    vs = versus_random(rows, "lp", ["lm"], [0.2, 0.4, 0.6, 0.8])
    first = vs[0]
    assert first["p"] < 0.05 <= first["p_holm"]
    assert first["verdict"] == "better, not after Holm's adjustment"
    assert "LM: better at 20 % before Holm's adjustment only" in versus_random_summary(vs)


def test_versus_random_adjusts_over_the_whole_table_every_mode_s_comparisons():
    """Holm's family of the versus-RANDOM tables is the table: every mode x ratio x method, as
    `bench embedded` adjusts its table. It was one family per mode (stats audit), and the text
    now says which family."""
    from ffcv_dp4tl.bench.stats import holm

    rows = [_row(REFERENCE, 0.0, s, 0, 0, 100.0, 60.0) for s in range(4)]
    for s, d in enumerate([1.0, 3.0, 2.0, 2.5]):
        for m, shift in (("random", 0.0), ("lm", d), ("fm", -d / 2)):
            row = _row(m, 0.6, s, 0, 0, 40.0, 50.0 + shift)
            row["ff_top1"] = 70.0 + (shift if m != "fm" else s % 2)
            rows.append(row)
    for r in rows:
        r.setdefault("ff_top1", None)
        if r["method"] == REFERENCE:
            r["ff_top1"] = 70.0
    t = summarize(rows, methods=["lm", "fm", "random"], ratios=[0.0, 0.6], seeds=[0, 1, 2, 3],
                  finetune=["lp", "ff"])
    vs = [v for mode in ("lp", "ff") for v in t["versus_random"][mode]]
    assert len(vs) == 4 and all(v["family"] == 4 for v in vs)
    assert [v["p_holm"] for v in vs] == pytest.approx(holm([v["p"] for v in vs]))
    lp_alone = holm([v["p"] for v in t["versus_random"]["lp"]])
    assert [v["p_holm"] for v in t["versus_random"]["lp"]] != pytest.approx(lp_alone)
    md = markdown_tables(t)
    assert md.count("after Holm's adjustment over 4 comparisons, one family: every mode × ratio "
                    "× method of the versus-RANDOM tables (LP, FF) (p Holm)") == 2


def test_one_comparison_is_named_in_the_singular():
    """"over the table's 1 comparisons" (figures audit)."""
    from ffcv_dp4tl.bench.markdown import _power_note

    rows = [_row(REFERENCE, 0.0, s, 0, 0, 100.0, 60.0) for s in (0, 1)]
    rows += [_row("random", 0.6, s, 0, 0, 40.0, 50.0 + s) for s in (0, 1)]
    rows += [_row("lm", 0.6, s, 0, 0, 40.0, 52.0 + 2 * s) for s in (0, 1)]
    t = summarize(rows, methods=["lm", "random"], ratios=[0.0, 0.6], seeds=[0, 1], finetune=["lp"])
    md = markdown_tables(t)
    assert "over the table's 1 comparison (p Holm)" in md
    assert "Holm's first step over 1 comparison)" in _power_note(t["versus_random"]["lp"])
    assert "1 comparisons" not in md


def test_versus_random_counts_seeds_won_pair_by_pair():
    """"Seeds won (paired by seed)": seed s of a method is compared with seed s of RANDOM (the
    same ``train.seed``), not with RANDOM's mean. RANDOM's seeds spread widely here (50, 70,
    60; mean 60) and rows come in no particular seed order: a method 1 point above RANDOM on
    every seed wins 3/3 (2 against the mean), 1 point below wins 0/3 (1 against the mean); a
    seed RANDOM lacks is not paired."""
    from ffcv_dp4tl.bench.stats import versus_random

    rnd = {2: 60.0, 0: 50.0, 1: 70.0}
    rows = [_row("random", 0.6, s, 0, 0, 40.0, v) for s, v in rnd.items()]
    rows += [_row("lm", 0.6, s, 1, 1, 40.0, v + 1.0) for s, v in rnd.items()]
    rows += [_row("fm", 0.6, s, 1, 1, 40.0, v - 1.0) for s, v in rnd.items()]
    rows += [_row("fm", 0.6, 3, 1, 1, 40.0, 99.0)]  # seed 3: RANDOM has no run to pair it with
    vs = {v["method"]: v for v in versus_random(rows, "lp", ["lm", "fm"], [0.6])}
    assert (vs["lm"]["wins"], vs["lm"]["paired"]) == (3, 3)
    assert (vs["fm"]["wins"], vs["fm"]["paired"]) == (0, 3)


def test_method_scoped_options_reach_one_method():
    from ffcv_dp4tl.bench.cost_table import options_for

    opts = ["el2n.runs=4", "runs=2", "grand.grad=full"]
    assert options_for("el2n", opts) == ("runs=4", "runs=2")  # scoped and shared, in order
    assert options_for("forget", opts) == ("runs=2",)  # el2n.runs does not reach FORGET
    assert options_for("grand", opts) == ("runs=2", "grad=full")
    assert options_for("lm", opts) == ()


def test_bench_preset_picks_the_bench_recipes():
    from beton_builders.synth import parse_synth
    from ffcv_dp4tl.pipeline.recipes import RECIPE_SETS, recipe_scale
    from ffcv_dp4tl.training.recipe import load_recipe

    class _M:  # the part of a manifest recipe_scale reads
        def __init__(self, extra):
            self.contract = type("C", (), {"extra": extra})()

    cfg = parse_synth("synth:bench")
    assert cfg.num_classes == 64 and cfg.target_test_per_class * cfg.target_classes >= 500
    assert recipe_scale(_M({"generator": "synth", "synth_config": cfg.to_dict()})) == "bench"
    hard = parse_synth("synth:hard").to_dict()  # the embedded benchmark's data
    assert recipe_scale(_M({"generator": "synth", "synth_config": hard})) == "bench"
    tiny = parse_synth("synth:tiny").to_dict()
    assert recipe_scale(_M({"generator": "synth", "synth_config": tiny})) == "tiny"
    assert recipe_scale(_M({})) == "full"
    for name in RECIPE_SETS["bench"].values():
        load_recipe(name, [])  # every recipe of the set exists and validates
    assert load_recipe(RECIPE_SETS["bench"]["lp"], []).eval.every == 1  # LP: every epoch


def test_render_rebuilds_the_report_from_results_json(tmp_path):
    """`dp4tl bench render OUT` recomputes the tables from the raw rows (nothing reruns), so a
    report written by an older version gains new tables; a missing file is one line."""
    from typer.testing import CliRunner

    import ffcv_dp4tl.bench.cost_table as ct
    from ffcv_dp4tl.cli import app

    rows = [_row(REFERENCE, 0.0, s, 0, 0, 100.0, 60.0) for s in (0, 1)]
    rows += [_row("lm", 0.6, s, 1, 1, 40.0, 70.0 + s) for s in (0, 1)]
    rows += [_row("random", 0.6, s, 0, 0, 40.0, 50.0 + s) for s in (0, 1)]
    t = summarize(rows, methods=["lm", "random"], ratios=[0.0, 0.6], seeds=[0, 1], finetune=["lp"])
    t.update(config={"source": "synth:bench", "target": "warm", "fmt": "wds", "recipes": "bench",
                     "k": 64, "overrides": []}, surrogate_s=1.0, command="dp4tl bench embedded",
             recipes={}, machine=machine_info(), date="today")
    t.pop("versus_random")  # as an older version wrote it
    out = tmp_path / "out"
    ct.write_outputs(t, out)
    assert "Versus RANDOM" not in (out / "report.md").read_text()
    bench_md = tmp_path / "B.md"
    res = CliRunner().invoke(app, ["bench", "render", str(out), "--report", str(bench_md),
                                   "--section", "Embedded"])
    assert res.exit_code == 0, res.output
    assert "**better**" in (out / "report.md").read_text()
    assert "## Embedded" in bench_md.read_text() and "dp4tl bench embedded" in bench_md.read_text()
    # hand-written notes under a table survive a render, in report.md and the section alike
    note = "<!-- note -->\nMeasured before the fix.\n<!-- /note -->"
    for f in (out / "report.md", bench_md):
        f.write_text(f.read_text().replace("\n### Target test top-1 % — LP",
                                           f"\n{note}\n\n### Target test top-1 % — LP", 1))
    assert CliRunner().invoke(app, ["bench", "render", str(out), "--report", str(bench_md),
                                    "--section", "Embedded"]).exit_code == 0
    for f in (out / "report.md", bench_md):
        assert f"{note}\n\n### Target test top-1 % — LP" in f.read_text(), f
    ct.write_outputs(t, out)  # (a new run's report: its numbers are not the ones a note read)
    assert "Measured before the fix" not in (out / "report.md").read_text()
    with pytest.raises(DP4TLError, match="results.json not found"):  # main() prints one line
        ct.rerender(tmp_path / "nothing")


@pytest.mark.parametrize("change,where", [
    ({"rows": "abc"}, "field 'rows' must be a list of JSON objects"),
    ({"ratios": "0.6"}, "field 'ratios' must be a list of numbers"),
    ({"methods": 5}, "field 'methods' must be a list of strings"),
    ({"finetune": None}, "lacks field 'finetune'"), ("list", "holds a JSON list"),
    ("lp_top1", r"rows\[1\]: field 'lp_top1' must be a percentage"),
])
def test_render_refuses_a_damaged_results_file_in_one_line(tmp_path, change, where):
    """A results.json of the wrong shape (hand-edited, another tool's) is one DP4TLError line
    naming the file, not a TypeError from deep inside the summary; an embedded folder (no
    results.json, a rows.jsonl) is told how its report is rewritten."""
    import ffcv_dp4tl.bench.cost_table as ct

    rows = [_row(REFERENCE, 0.0, 0, 0, 0, 100.0, 60.0), _row("lm", 0.6, 0, 1, 1, 40.0, 70.0)]
    t = {"rows": rows, "methods": ["lm"], "ratios": [0.0, 0.6], "seeds": [0], "finetune": ["lp"]}
    if change == "list":
        t = [t]
    elif change == "lp_top1":
        rows[1]["lp_top1"] = "x"
    else:
        t.update(change)
    (tmp_path / "results.json").write_text(json.dumps(t))
    with pytest.raises(DP4TLError, match=f"results.json.*{where}"):
        ct.rerender(tmp_path)
    emb = tmp_path / "emb"
    emb.mkdir()
    (emb / "rows.jsonl").write_text("")
    with pytest.raises(DP4TLError, match="is a `bench embedded` folder.*`dp4tl bench render` rebuilds"):
        ct.rerender(emb)


def test_a_render_writes_no_figure_through_a_link_left_in_the_folder(tmp_path):
    """A cost-table folder from a colleague (``cp -r`` keeps links) with ``cost.png`` a link to
    one of the user's files: the render replaced that file with a PNG (audit). Now the figures
    replace the links and the linked files stay as they were."""
    import ffcv_dp4tl.bench.cost_table as ct

    rows = [_row(REFERENCE, 0.0, s, 0, 0, 100.0, 60.0) for s in (0, 1)]
    rows += [_row("lm", 0.6, s, 1, 1, 40.0, 70.0 + s) for s in (0, 1)]
    t = summarize(rows, methods=["lm"], ratios=[0.0, 0.6], seeds=[0, 1], finetune=["lp"])
    t.update(config={"source": "synth:bench", "target": "warm", "fmt": "wds", "recipes": "bench",
                     "k": 64, "overrides": []}, surrogate_s=1.0, command="dp4tl bench embedded",
             recipes={}, machine=machine_info(), date="today")
    out = tmp_path / "out"
    out.mkdir()
    victims = {}
    for name in ("cost.png", "accuracy.png"):
        victims[name] = tmp_path / f"mine-{name}.txt"
        victims[name].write_text("precious")
        (out / name).symlink_to(victims[name])
    ct.write_outputs(t, out)
    assert all(v.read_text() == "precious" for v in victims.values())
    assert not any((out / n).is_symlink() for n in victims)
    assert (out / "cost.png").read_bytes()[:4] == b"\x89PNG"


def test_a_reports_names_and_command_make_no_markup(tmp_path):
    """A results.json from someone else's folder (its command, source, target and recipe names)
    was pasted into `...` spans: a backtick in one closed the span and the rest rendered as
    live HTML, into the user's BENCHMARKS.md with --report (audit). Each value is one exact
    code span now."""
    from markdown_it import MarkdownIt

    import ffcv_dp4tl.bench.cost_table as ct

    evil = "x` <img src=x onerror=alert(1)> [c](javascript:alert(1)) `"
    rows = [_row(REFERENCE, 0.0, s, 0, 0, 100.0, 60.0) for s in (0, 1)]
    rows += [_row("lm", 0.6, s, 1, 1, 40.0, 70.0 + s) for s in (0, 1)]
    t = summarize(rows, methods=["lm"], ratios=[0.0, 0.6], seeds=[0, 1], finetune=["lp"])
    t.update(config={"source": evil, "target": "w|a`rm", "fmt": "wds", "recipes": "bench",
                     "k": 64, "overrides": []}, surrogate_s=1.0, command=f"dp4tl bench {evil}",
             recipes={"pretrain": evil}, machine=machine_info(), date="today")
    out = tmp_path / "out"
    ct.write_outputs(t, out)
    html = MarkdownIt("commonmark").enable("table").render((out / "report.md").read_text())
    assert "<img src=x" not in html and 'href="javascript' not in html  # (its own figures stay)
    assert "<code>dp4tl bench x` &lt;img src=x onerror=alert(1)&gt; [c](javascript:alert(1)) " \
           "`</code>" in html


def test_a_render_lists_the_recipes_in_the_stages_order(tmp_path):
    """A run's report lists its recipes as the stages run them; a render, reading results.json
    (whose keys are sorted), listed "ff, lp, pretrain, surrogate" (bench audit)."""
    import ffcv_dp4tl.bench.cost_table as ct

    out = _rendered_table(tmp_path)
    t = json.loads((out / "results.json").read_text())
    t["recipes"] = {"ff": "F", "lp": "L", "pretrain": "P", "surrogate": "S"}
    (out / "results.json").write_text(json.dumps(t))
    ct.rerender(out)
    assert "(surrogate `S`, pretrain `P`, lp `L`, ff `F`)" in (out / "report.md").read_text()


def test_a_ratio_without_rows_shows_dashes_not_nan():
    """A listed ratio none of whose runs are in the table (rows deleted from results.json, a
    method given other ratios) showed "nan" as its mean pretraining time in the cost table
    (audit); every cell of it is "–", as its method cells were."""
    rows = [_row(REFERENCE, 0.0, 0, 0, 0, 100.0, 75.0), _row("lm", 0.6, 0, 1, 1, 40.0, 76.4)]
    t = summarize(rows, methods=["lm"], ratios=[0.0, 0.6, 0.8], seeds=[0], finetune=["lp"])
    text = markdown_tables(t)
    (line,) = [x for x in text.splitlines() if x.startswith("| 80 % | 1.3 |")]
    assert "nan" not in text.lower()
    assert line.split(" | ")[3:] == ["–"] * 4 + ["– |"], line  # (LM, and the 4 pretrain cells)


def _rendered_table(tmp_path: Path) -> Path:
    """A one-seed table as a run writes it (LM at 60 % with LP top-1 76.4, RANDOM, the 0 %
    reference), rendered into ``tmp_path/out``."""
    import ffcv_dp4tl.bench.cost_table as ct

    rows = [_row(REFERENCE, 0.0, 0, 0, 0, 100.0, 75.0), _row("lm", 0.6, 0, 1, 1, 40.0, 76.4),
            _row("random", 0.6, 0, 0, 0, 40.0, 68.1)]
    t = summarize(rows, methods=["lm", "random"], ratios=[0.0, 0.6], seeds=[0], finetune=["lp"])
    t.update(config={"source": "synth:bench", "target": "warm", "fmt": "wds", "recipes": "bench",
                     "k": 64, "overrides": []}, surrogate_s=1.0, command="dp4tl bench cost-table",
             recipes={}, machine=machine_info(), date="today")
    ct.write_outputs(t, tmp_path / "out")
    return tmp_path / "out"


def _edit_row(i, **kw):
    return lambda t: t["rows"][i].update(kw)


@pytest.mark.parametrize("edit,msg", [
    (_edit_row(1, lp_top1=250), r"rows\[1\]: field 'lp_top1' must be a percentage in \[0, 100\], got 250"),
    (_edit_row(1, lp_top1=True), r"rows\[1\]: field 'lp_top1' must be a percentage"),
    (_edit_row(1, pretrain_s=-500, total_s=-456),
     r"rows\[1\]: field 'pretrain_s' must be a finite number >= 0, got -500"),
    (lambda t: t["rows"].append({**t["rows"][1], "lp_top1": 100.0}),
     r"rows\[3\]: a second row of 'lm' at ratio 0.6, seed 0 \(the first: rows\[1\]\)"),
    (lambda t: t["rows"].append({**t["rows"][1], "seed": 7}),
     r"rows\[3\]: field 'seed' is 7, not one of the table's seeds \(0\)"),
    (lambda t: t.update(tol=-5), "field 'tol' must be a number of accuracy points >= 0, got -5"),
    (lambda t: t.update(tol=float("nan")), "field 'tol' must be a number of accuracy points >= 0"),
    (lambda t: t.update(rows=[]), "rows is empty"),
    (lambda t: t["rows"].pop(0), "rows holds no 0 % reference row for seed 0"),
    (_edit_row(1, ratio="0.6"), r"rows\[1\]: field 'ratio' must be a number, got '0.6'"),
    (_edit_row(1, ratio=0.5), r"rows\[1\]: field 'ratio' is 0.5, not one of the table's pruned"),
    (_edit_row(1, method="lmm"), r"rows\[1\]: field 'method' is 'lmm', neither one of"),
    (lambda t: t.update(methods=["lm", "random", "lm"]), "field 'methods' lists 'lm' twice"),
    (lambda t: t.update(finetune=["lp", "ff"]),
     "field 'finetune' lists 'ff', but no row of rows holds a ff_top1"),
    (_edit_row(2, estimated_s={"pretrain": -1}), r"rows\[2\] estimated_s: field 'pretrain'"),
])
def test_render_refuses_hand_edited_rows_in_one_line_naming_row_and_field(tmp_path, edit, msg):
    """`dp4tl bench render` showed a hand-edited results.json as results: a top-1 of 250 % (a
    best ratio where there was none), ``true`` as 1.0, negative times as a -464 % cost, a
    duplicated or foreign-seed row averaged in (the header still saying 1 seed), a negative or
    NaN --tol the CLI refuses, a table with no 0 % reference full of ``nan``, a ratio as a
    string dropping LM from every table, a repeated method column, a finetune mode without
    values breaking the Markdown. Each is one line naming results.json, the row and the field,
    with the fix, and nothing is rewritten (audit)."""
    import ffcv_dp4tl.bench.cost_table as ct
    from ffcv_dp4tl.errors import DataError

    out = _rendered_table(tmp_path)
    assert ct.rerender(out)["winners"]["lp"]["lm"]["ratio"] == 0.6  # a genuine table renders
    t = json.loads((out / "results.json").read_text())
    edit(t)
    (out / "results.json").write_text(json.dumps(t))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match=msg) as e:
        ct.rerender(out)
    line = str(e.value)
    assert "\n" not in line and f"{out / 'results.json'}" in line
    assert line.endswith("restore the file, or rerun the cost table into a new --out (its stages "
                         "are cached)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_render_checks_the_rows_of_every_target(tmp_path):
    """A several-target table's ``target_rows`` follow the rules of ``rows``, each target with
    its own 0 % reference per seed."""
    import ffcv_dp4tl.bench.cost_table as ct
    from ffcv_dp4tl.errors import DataError

    out = tmp_path / "out"
    ct.write_outputs(_two_target_table(), out)
    t = json.loads((out / "results.json").read_text())
    blur_ref = next(i for i, r in enumerate(t["target_rows"])
                    if r["target"] == "blur" and r["method"] == REFERENCE and r["seed"] == 1)
    t["target_rows"].pop(blur_ref)
    (out / "results.json").write_text(json.dumps(t))
    with pytest.raises(DataError, match="target_rows holds no 0 % reference row for seed 1 of "
                                        "target 'blur'"):
        ct.rerender(out)
    t["target_rows"][0]["lp_top1"] = 250.0
    (out / "results.json").write_text(json.dumps(t))
    with pytest.raises(DataError, match=r"target_rows\[0\]: field 'lp_top1'"):
        ct.rerender(out)


class _Run:
    """A stage as a pipeline result holds it (seconds, CPU seconds, values)."""

    def __init__(self, seconds, cpu, **values):
        self.seconds, self.cpu_seconds, self.values, self.loadavg_1min = seconds, cpu, values, 1.0


class _Result:
    """The fields of a PipelineResult that cost_row reads."""

    seeds, ground_truth = [0], None

    def __init__(self, **runs):
        self.runs = runs

    def find(self, name):
        return self.runs.get(name)

    def pretrain(self, seed):
        return self.runs.get("pretrain")

    def finetune(self, mode, seed, target=None):
        return self.runs.get(mode)


def test_a_partly_estimated_stage_time_is_marked_and_its_cpu_seconds_not_shown(tmp_path):
    """After a kill -9 during pretraining and a rerun, its DONE.json holds 78.3 s of which 68.0
    estimated (a lower bound) and 19.2 CPU-s (the killed run's lost): the report showed 78.3 s,
    a 38 % reduction by wall time and 86 % by CPU-s, as measurements. The row records the
    estimated seconds per stage (estimated_s); the tables mark those times, say why under the
    table, and show no CPU-s for them; a row without the field (older results) renders as
    before (audit)."""
    import ffcv_dp4tl.bench.cost_table as ct
    from ffcv_dp4tl.pipeline.stages import ESTIMATED

    ft = _Run(1.0, 1.0, test_top1=0.764)

    def run(pretrain, surrogate=None):
        return _Result(surrogate=surrogate, score=_Run(2.0, 2.0, selection_seconds=1.5),
                       prune=_Run(0.1, 0.1, train_kept=40, kept_sample_fraction=0.4),
                       pretrain=pretrain, lp=ft)

    ref = {**_row(REFERENCE, 0.0, 0, 0, 0, 126.3, 75.0), "pretrain_cpu_s": 137.0,
           "total_cpu_s": 137.0}
    killed = ct.cost_row(run(_Run(78.3, 19.2, **{ESTIMATED: 68.0}), _Run(10.0, 20.0)), "lm",
                         0.6, 0, 10.0, 20.0)
    assert killed["estimated_s"] == {"pretrain": 68.0}
    clean = ct.cost_row(run(_Run(78.3, 150.0)), "random", 0.6, 0, 0.0)
    assert clean["estimated_s"] == {} and clean["pretrain_cpu_s"] == 150.0
    t = summarize([ref, killed, clean], methods=["lm", "random"], ratios=[0.0, 0.6], seeds=[0],
                  finetune=["lp"])
    lm = next(c for c in t["cost"] if c["method"] == "lm")
    assert lm["estimated"] == ["pretrain"] and math.isnan(lm["pretrain_cpu_s"])
    assert math.isnan(lm["cpu_reduction"]) and math.isnan(lm["total_cpu_s"])
    md = markdown_tables(t)
    assert "| 60 % | 2.4 | 56 % | 90.4† (-28 %) | 80.4 (-36 %) | 78.3† | 38 % | –† | – |" in md
    assert "| LM | 60 % | 40.0 % | 10.0 | 2.0 | 0.10 | 78.3† | 90.4† | 28 % | –† | – |" in md
    assert "| LM | 10.0 | 2.0 | 1.5 | 12.0 | 90.4† |" in md  # (selection + pretraining)
    assert md.count("† Part of this time comes from runs of the stage without an exact record") == 3
    assert "86 %" not in md and "19.2" not in md
    # a results.json with the field renders so again; one without it as before: no mark, no note
    out = _rendered_table(tmp_path)
    saved = json.loads((out / "results.json").read_text())
    assert "estimated_s" not in saved["rows"][1] and "†" not in (out / "report.md").read_text()
    report = (out / "report.md").read_bytes()
    ct.rerender(out)
    assert (out / "report.md").read_bytes() == report
    saved["rows"][1]["estimated_s"] = {"pretrain": 30.0}
    (out / "results.json").write_text(json.dumps(saved))
    assert "| LM | 60 % | – | 1.0 | 1.0 | 0.00 | 40.0† | 42.0† |" in (
        markdown_tables(ct.rerender(out)))


@pytest.mark.parametrize("kw,msg", [
    ({"methods": []}, "--methods is empty"), ({"seeds": []}, "--seeds is empty"),
    ({"seeds": [0, 1, 0]}, "--seeds lists 0 twice"), ({"finetune": ()}, "--finetune is empty"),
    ({"finetune": ("lp", "lp")}, "--finetune lists 'lp' twice"),
    ({"methods": ["lm", "random", "lm"]}, "--methods lists 'lm' twice"),
    ({"ff_methods": ["el2n"]}, "--ff-methods: el2n not among --methods"),
    ({"tol": float("nan")}, "--tol must be"),
])
def test_cost_table_refuses_bad_plans_before_any_run(tmp_path, monkeypatch, kw, msg):
    """An empty list would write an empty table over an earlier run's results.json; a repeated
    seed would count one run twice. Refused before anything runs or is written."""
    import ffcv_dp4tl.bench.cost_table as ct

    monkeypatch.setattr(ct, "preflight", lambda *a, **k: pytest.fail("checked the runs"))
    args = {"methods": ["random", "lm"], "seeds": [0], "finetune": ("lp",), **kw}
    with pytest.raises(DP4TLError, match=msg):
        ct.run_cost_table(PipelineConfig(source=SYNTH), tmp_path / "out", ratios=[0.0, 0.6], **args)
    assert not (tmp_path / "out").exists()


def test_cost_table_checks_every_run_before_the_first(monkeypatch, tmp_path):
    """Each (method, ratio) run's checks (its scorer options, its variant's K, its recipes)
    happen before the reference trains: preflight gets the whole plan first."""
    import ffcv_dp4tl.bench.cost_table as ct

    class Stop(Exception):
        pass

    seen = []

    def fake_preflight(cfgs, log):
        seen.extend((c.method, c.ratio, c.k, c.finetune) for c in cfgs)
        raise Stop

    monkeypatch.setattr(ct, "preflight", fake_preflight)
    monkeypatch.setattr(ct, "run_pipeline", lambda *a, **k: pytest.fail("ran before the checks"))
    with pytest.raises(Stop):
        ct.run_cost_table(PipelineConfig(source=SYNTH, k=8), tmp_path, ratios=[0.0, 0.4, 0.6],
                          methods=["random", "fm[k=16]"], seeds=[0, 1], finetune=("lp", "ff"),
                          ff_methods=["fm"])
    assert seen == [("random", 0.0, 8, ("lp", "ff")), ("random", 0.4, 8, ("lp",)),
                    ("random", 0.6, 8, ("lp",)), ("fm", 0.4, 16, ("lp", "ff")),
                    ("fm", 0.6, 16, ("lp", "ff"))]


def test_a_tied_seed_is_not_a_win():
    """"Seeds won" counts seeds where the method is strictly above RANDOM: a seed on which the
    two reach the same top-1 is not a win (else a method that changes nothing would win every
    seed)."""
    from ffcv_dp4tl.bench.stats import versus_random

    rows = [_row(m, 0.6, s, 0, 0, 40.0, 50.0 + s) for m in ("random", "lm") for s in (0, 1, 2)]
    rows[-1]["lp_top1"] = 53.0  # seed 2: LM 53 vs RANDOM 52, the only win
    (v,) = versus_random(rows, "lp", ["lm"], [0.6])
    assert (v["wins"], v["paired"]) == (1, 3)


def _two_target_table() -> dict:
    """A cost table of two targets as run_cost_table makes it: given as ``warm,blur`` (not in
    sorted order) with weights 3, 1; LM wins on warm, loses on blur."""
    methods, ratios, seeds = ["lm", "random"], [0.0, 0.6], [0, 1]
    target_rows = {}
    for name, lm in (("warm", 70.0), ("blur", 40.0)):
        rows = [_row(REFERENCE, 0.0, s, 0, 0, 100.0, 60.0) for s in seeds]
        rows += [_row("lm", 0.6, s, 1, 1, 40.0, lm + s) for s in seeds]
        rows += [_row("random", 0.6, s, 0, 0, 40.0, 50.0 + s) for s in seeds]
        target_rows[name] = [{**r, "target": name} for r in rows]
    from ffcv_dp4tl.bench.cost_table import _target_summaries

    t = summarize(target_rows["warm"], methods=methods, ratios=ratios, seeds=seeds,
                  finetune=["lp"])
    t.update(_target_summaries({"target_rows": [r for trows in target_rows.values() for r in trows],
                                "methods": methods, "ratios": ratios, "seeds": seeds,
                                "finetune": ["lp"], "tol": 0.0, "target_weights": [3.0, 1.0]},
                               "final"))
    t.update(config={"source": "synth:bench", "target": "", "targets": ["warm", "blur"],
                     "fmt": "wds", "recipes": "bench", "k": 64, "overrides": []},
             surrogate_s=1.0, command="dp4tl bench cost-table", recipes={},
             machine=machine_info(), date="today")
    return t


def test_render_keeps_several_targets_in_the_order_given(tmp_path):
    """`dp4tl bench render` of a several-target table keeps its per-target section and data
    (targets, target_rows, target_weights), and the first target stays the first given, though
    results.json sorts its keys."""
    import ffcv_dp4tl.bench.cost_table as ct
    from ffcv_dp4tl.bench.markdown import target_order
    from ffcv_dp4tl.bench.plots import _first_target

    out = tmp_path / "out"
    ct.write_outputs(_two_target_table(), out)
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["targets"]) == ["blur", "warm"]  # the writer sorts keys
    assert target_order(saved) == ["warm", "blur"] and _first_target(saved) == "warm"
    t = ct.rerender(out)
    again = json.loads((out / "results.json").read_text())
    for key in ("targets", "target_rows", "target_weights"):
        assert again[key] == saved[key], key
    report = (out / "report.md").read_text()
    assert "Several targets (Fig. A5)" in report and "weights 3, 1" in report
    assert "(`warm`, `blur`;" in report and "the first target's (`warm`)" in report
    assert report.index("warm: LM") < report.index("blur: LM")
    assert (out / "accuracy-targets.png").read_bytes()[:4] == b"\x89PNG"
    # its results.json named instead of its folder: that folder (was "results.json/results.json
    # not found"; review)
    assert ct.rerender(out / "results.json")["targets"] == t["targets"]
    assert t["targets"]["warm"]["winners"]["lp"]["lm"]["ratio"] == 0.6
    assert t["targets"]["blur"]["winners"]["lp"]["lm"]["ratio"] == 0.0
    # another criterion judges every target's winners again
    best = ct.rerender(out, "best")
    assert best["criterion"] == "best" and set(best["targets"]) == {"warm", "blur"}


def test_a_two_seed_table_says_it_cannot_reach_a_verdict():
    """The versus-RANDOM text said that with two or three seeds only large, consistent
    differences pass; with two, a verdict needs a mean hundreds of times the seeds' gap, and
    equal differences can never pass (review): the table says so."""
    from ffcv_dp4tl.bench.markdown import _power_note
    from ffcv_dp4tl.bench.stats import versus_random

    rows = [_row("random", 0.8, s, 0, 0, 20.0, 50.0 + s) for s in (0, 1)]
    rows += [_row(m, 0.8, s, 1, 1, 20.0, 90.0 + s * d) for s in (0, 1)
             for m, d in (("lm", 1.0), ("fm", 1.5))]
    vs = versus_random(rows, "lp", ["lm", "fm"], [0.8])
    # +40 on both seeds: p 0.5 (exact); +40 and +40.5: t 161 > 25 (Holm over 2), better
    assert [v["verdict"] for v in vs] == ["no difference detected", "better"]
    assert "With two seeds a verdict needs t >= 25 (Holm's first step over 2 comparisons)" \
        in _power_note(vs)
    assert _power_note([{**v, "paired": 3} for v in vs]) == ""


@pytest.mark.parametrize("device,gpu", [("auto", None), ("cuda", "NVIDIA H200")])
def test_the_header_says_where_the_run_trained_and_which_recipe_set(device, gpu):
    """It said "**CPU** run ... a shared 2-core machine (other jobs ran concurrently)" for
    every run, a 16-core GPU run's too, and "recipes `tiny`" for an auto recipe set that
    resolved to the bench recipes (its recipe names beside it)."""
    from ffcv_dp4tl.bench.markdown import header_lines

    rows = [_row(REFERENCE, 0.0, 0, 0, 0, 100.0, 50.0), _row("lm", 0.6, 0, 10.0, 2.0, 40.0, 52.0)]
    t = summarize(rows, methods=["lm"], ratios=[0.0, 0.6], seeds=[0], finetune=["lp"])
    cores = 16 if gpu else 2
    t.update(config={"source": "synth:hard", "target": "paper", "fmt": "wds", "recipes": "",
                     "k": 64, "overrides": [], "device": device},
             recipes={"pretrain": "resnet18_bench_cpu"}, command="dp4tl bench cost-table",
             machine={"cores": cores, "cpu": "AMD EPYC", "gpu": gpu, "python": "3.12",
                      "torch": "2.11", "platform": "Linux"}, date="today")
    text = "\n".join(header_lines(t))
    where = f"GPU ({gpu})" if gpu else "CPU"
    assert text.startswith(f"- **{where}** run, {cores} cores (AMD EPYC)")
    assert "recipes `auto` (pretrain `resnet18_bench_cpu`)" in text and "`tiny`" not in text
    assert f"one {cores}-core machine that other jobs may share" in text
    assert "2-core" not in text if gpu else "absolute GPU numbers come from a GPU run" in text
    assert ("absolute GPU numbers" in text) == (gpu is None)


def test_none_says_by_how_much_the_first_ratio_failed():
    """"none" named no number: a table whose first ratio missed the margin by 8 points read as
    one that missed it by a hair. The first ratio's bound (or that it had no pairs) is given."""
    from ffcv_dp4tl.bench.markdown import shown_cell
    from ffcv_dp4tl.bench.stats import no_loss_shown

    far = [-5.0, -6.0, -4.0, -5.5, -4.5]
    got = no_loss_shown({0.4: far, 0.6: far}, tol=1.0)
    assert got["ratio"] == 0.0 and got["first"]["ratio"] == 0.4 and got["first"]["n"] == 5
    assert got["first"]["lo"] < -5.5
    assert shown_cell(got) == f"none (40 %: {got['first']['lo']:+.1f}, 5 seeds)"
    assert shown_cell(no_loss_shown({}, tol=1.0, ratios=[0.2])) == "none (20 %: no pairs)"
    assert "first" not in no_loss_shown({0.4: [0.1] * 6, 0.6: far}, tol=1.0)  # (one passed)
    assert shown_cell({"ratio": 0.0, "lo": None, "n": 0, "exact": False}) == "none"  # (older)


@pytest.mark.parametrize("diffs,tol,family,cell", [
    ([6.9], 0.0, 1, "none (60 %: 1 seed, Δ +6.9, no test)"),
    ([1.0] * 3, 0.0, 1, "none (60 %: all Δ +1.0 over 3 seeds, too few for the exact test: 5 "
                        "needed)"),
    ([0.0] * 3, 0.0, 4, "none (60 %: all Δ +0.0 over 3 seeds, not above 0.0, too few for the "
                        "exact test: 7 needed)"),
    ([-2.0] * 6, 1.0, 1, "none (60 %: all Δ -2.0 over 6 seeds, not above −1.0)"),
])
def test_none_without_a_bound_says_what_the_pairs_had_not_a_failed_bound(diffs, tol, family,
                                                                          cell):
    """Without an interval (one seed, or identical differences: the exact test) "none" printed
    the difference where the failed bound goes: "none (60 %: +6.9, 1 seeds)" read as a bound of
    +6.9 that failed a margin of 0 (stats audit; Fig. A5's "none (60 %: +0.0, 3 seeds)")."""
    from ffcv_dp4tl.bench.markdown import shown_cell
    from ffcv_dp4tl.bench.stats import no_loss_shown

    got = no_loss_shown({0.6: diffs}, tol=tol, ratios=[0.6, 0.8], family=family)
    assert got["ratio"] == 0.0 and got["first"]["lo"] is None
    assert got["first"]["mean"] == pytest.approx(diffs[0]) and got["first"]["n"] == len(diffs)
    assert shown_cell(got) == cell
    # a real bound stays as it was, with its count in the singular or plural
    bound = no_loss_shown({0.6: [1.0, -9.0]}, tol=0.0)
    assert shown_cell(bound) == f"none (60 %: {bound['first']['lo']:+.1f}, 2 seeds)"
    assert shown_cell({"ratio": 0.6, "lo": 1.0, "n": 1, "exact": True}) == "60 % (all +1.0, 1 seed)"


@pytest.mark.parametrize("tol,said", [(0.0, "stays ≥ 0.0 points"), (1.0, "stays ≥ −1.0 points")])
def test_the_no_loss_text_prints_a_zero_margin_without_a_sign(tol, said):
    """A margin of 0 read "stays ≥ −0.0 points" (figures audit)."""
    from ffcv_dp4tl.bench.markdown import no_loss_text

    text = no_loss_text([], tol)
    assert said in text and "−0.0" not in text


@pytest.mark.parametrize("length", ["epochs", "steps"])
def test_header_says_when_pruned_sets_trained_the_unpruned_steps(length):
    """A table made with ``--pretrain-length steps`` has pruned pretrainings that save no time
    and accuracies that differ from the paper's fixed-epoch protocol: its header says so, and
    a table of the paper's protocol (or one written before the option) says nothing."""
    from ffcv_dp4tl.bench.markdown import STEPS_LINE, header_lines

    rows = [_row(REFERENCE, 0.0, 0, 0, 0, 100.0, 50.0), _row("lm", 0.6, 0, 10.0, 2.0, 100.0, 52.0)]
    t = summarize(rows, methods=["lm"], ratios=[0.0, 0.6], seeds=[0], finetune=["lp"])
    t.update(config={"source": "synth:hard", "target": "paper", "fmt": "wds", "recipes": "",
                     "k": 64, "overrides": [], "device": "cpu", "pretrain_length": length},
             recipes={}, command="", date="today",
             machine={"cores": 2, "cpu": "x", "gpu": None, "python": "3.11", "torch": "2",
                      "platform": "Linux"})
    assert (STEPS_LINE in header_lines(t)) == (length == "steps")


def test_render_of_a_report_md_that_is_not_utf8_names_report_md(tmp_path):
    """A report.md that is not UTF-8 failed a render with a message blaming results.json and
    advising a rerun of the cost table, which would drop the report's hand-written notes: it
    is one line naming report.md (restore, re-encode or move it away), and nothing is
    rewritten (audit)."""
    import ffcv_dp4tl.bench.cost_table as ct

    out = _rendered_table(tmp_path)
    (out / "report.md").write_bytes((out / "report.md").read_bytes() + b"\n\xff note\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DP4TLError) as e:
        ct.rerender(out)
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"{out / 'report.md'} is not UTF-8 text")
    assert "results.json" not in line and "move it away" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "report.md").unlink()  # (moved away: a fresh report, no notes)
    ct.rerender(out)
    assert (out / "report.md").is_file()


@pytest.mark.parametrize("results,bench", [
    ({"bench": "surrogates", "archs": ["vgg2"], "reference": {}}, "surrogates"),
    ({"bench": "adversarial", "adv": {}, "rows": []}, "adversarial"),
    ({"adv": {}, "rows": []}, "adversarial"),  # (from before the bench field)
])
def test_render_of_another_benchs_folder_names_that_bench(tmp_path, capsys, monkeypatch, results,
                                                          bench):
    """`bench render` on a surrogates or adversarial report blamed its fine results.json for
    lacking a cost table's 'rows' and advised restoring it (audit): it says in one line that
    render rebuilds cost-table and embedded folders only, naming the bench the file is from,
    and rewrites nothing."""
    from cli_runner import cli, one_line

    from ffcv_dp4tl.outputs import KINDS

    out = tmp_path / "report"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results))
    (out / "report.md").write_text("# mine\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = cli(capsys, monkeypatch, "bench", "render", out)
    one_line(code, err, f"{out / 'results.json'} is {KINDS[bench].what}'s (written by "
             f"`dp4tl bench {bench}`)", "rebuilds cost-table and embedded folders only")
    assert "lacks" not in err and "restore" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_render_of_the_published_surrogates_report_names_its_bench(tmp_path, capsys, monkeypatch):
    """`dp4tl bench render docs/surrogates` (a copy): its results.json predates the bench field,
    so render read it as a cost table's and blamed it for lacking 'rows' (docs audit). Its keys
    tell it: one line naming the surrogates bench and the rerun, and nothing rewritten."""
    import shutil

    from cli_runner import cli, one_line

    from ffcv_dp4tl.outputs import bench_of, folder_kind

    out = tmp_path / "surrogates"
    shutil.copytree(Path(__file__).parents[2] / "docs" / "surrogates", out)
    results = json.loads((out / "results.json").read_text())
    assert "bench" not in results and bench_of(results) == "surrogates"
    (out / "surrogates.png").unlink()  # (its keys alone tell it, not the plot)
    assert folder_kind(out) == "surrogates"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = cli(capsys, monkeypatch, "bench", "render", out)
    one_line(code, err, "is a surrogates report's (written by `dp4tl bench surrogates`)",
             "rerun `dp4tl bench surrogates` to rewrite its report")
    assert "lacks" not in err and "restore" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_several_targets_tables_keep_their_columns_whatever_a_target_is_called():
    """Target names from results.json went raw into the several-targets tables' header and rows
    (review): a name holding ``<img ...>`` rendered as HTML and its ``|`` split a column."""
    import re

    from markdown_it import MarkdownIt

    from ffcv_dp4tl.bench.markdown import _target_tables

    evil = "t<img src=x onerror=alert(1)>|x"
    acc = {"methods": {"lm": {"0.6": [70.0, 1.0]}}, "reference": [80.0, 1.0]}
    win = {"lm": {"ratio": 0.6, "mean": 70.0, "std": 1.0, "ref_mean": 80.0, "ref_std": 1.0}}
    t = {"finetune": ["lp"], "config": {"targets": [evil, "b"]},
         "targets": {n: {"accuracy": {"lp": acc}, "winners": {"lp": win}} for n in (evil, "b")}}
    html = MarkdownIt("commonmark").enable("table").render(
        "\n".join(_target_tables(t, ["lm"], [0.6], 2)))
    assert "<img src=x" not in html
    assert len(re.findall(r"<th[ >]", html)) == 3 + 6  # ratio, two target columns; winners' 6
    assert "<td>t&lt;img src=x onerror=alert(1)&gt;|x</td>" in html
