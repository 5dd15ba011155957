"""Fig. A2 (FM at several K), Fig. A3 (reversed order) and Fig. A5 (several targets) through
the pipeline and the cost table, at the smallest scale (8 source classes, 2 targets, width-8
models, 1 epoch). One runs folder per module: the surrogate trains once; every test runs the
pipelines it needs (finished stages are skipped), so the tests run in any order."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.bench.cost_table import run_cost_table
from ffcv_dp4tl.bench.stats import REFERENCE
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.pipeline.result import PipelineResult
from ffcv_dp4tl.pipeline.run import run_pipeline
from ffcv_dp4tl.pipeline.scores_io import load_scores
from ffcv_dp4tl.bench.variants import parse_variant
from ffcv_dp4tl.pipeline.score import score
from ffcv_dp4tl.scoring import combine_target_scores
from ffcv_dp4tl.scoring.ranking import rank
from tiny_data import FINETUNE, SYNTH_TWO_TARGETS, TRAIN, TWO_TARGETS


@pytest.fixture(scope="module")
def base(tmp_path_factory, data_root) -> PipelineConfig:
    # the session's data root (long SOURCE specs get distinct folders: resolve._slug), its own
    # runs root: the tests count which stages ran
    tmp = tmp_path_factory.mktemp("ablations")
    return PipelineConfig(ratio=0.5, source=SYNTH_TWO_TARGETS, target="warm", method="lm",
                          fmt="wds", device="cpu", k=4, finetune=("lp",), data_root=data_root,
                          runs_root=tmp / "runs", overrides=TRAIN, surrogate_overrides=TRAIN,
                          finetune_overrides=FINETUNE)


def _quiet(cfg: PipelineConfig) -> PipelineResult:
    return run_pipeline(cfg, log=lambda s: None)


def _stage_dir(cfg: PipelineConfig, res: PipelineResult, name: str) -> Path:
    """A stage's folder, as the run recorded it."""
    d = res.stages[name].dir
    assert d.parent == Path(cfg.runs_root) and (d / "DONE.json").exists()
    return d


@pytest.mark.slow
def test_reversed_keeps_the_lowest_scored_classes(base):
    ordered = _quiet(base)
    rev = _quiet(replace(base, order="reversed"))
    assert not rev.stages["score"].ran  # the scores are shared by both orders
    assert rev.stages["prune"].ran  # a new mask downstream, so a different pretraining
    # (keyed by the mask's content: it may already exist if another run chose the same mask)
    assert _stage_dir(base, rev, "pretrain") != _stage_dir(base, ordered, "pretrain")
    sc = load_scores(_stage_dir(base, ordered, "score"))
    s, t = sc.scores, sc.tiebreak
    n_keep = round(0.5 * len(s))
    lowest = np.sort(rank(-s, -t)[:n_keep])
    highest = np.sort(rank(s, t)[:n_keep])
    np.testing.assert_array_equal(rev.stages["prune"].values["kept_units"], lowest)
    np.testing.assert_array_equal(ordered.stages["prune"].values["kept_units"], highest)
    if len(set(zip(s.tolist(), t.tolist()))) == len(s):  # no full ties: exact complements
        assert set(lowest) | set(highest) == set(range(len(s)))
    kept_rev = rev.stages["prune"].values["kept_units"]
    assert max(s[kept_rev]) <= min(s[ordered.stages["prune"].values["kept_units"]])
    assert "LM (reversed) at ratio 0.5" in Path(rev.report).read_text()
    assert "LM at ratio 0.5" in Path(ordered.report).read_text()
    # the keys differ where the order matters, and a rerun of the reversed run reuses them all
    again = _quiet(replace(base, order="reversed"))
    assert not any(st.ran for st in again.stages.values())
    assert again.report != ordered.report


@pytest.mark.slow
def test_two_targets_select_once_and_report_each_accuracy(base):
    cfg = replace(base, target="", targets=TWO_TARGETS)
    res = _quiet(cfg)
    assert set(res.per_target) == set(TWO_TARGETS) and res.summary == {}
    assert {"finetune-lp@warm", "finetune-lp@paper"} <= set(res.stages)
    for name in TWO_TARGETS:
        lp = res.per_target[name]["lp"]
        assert lp["n"] == 1 and 0.0 <= lp["final_mean"] <= 1.0
        assert res.stages[f"finetune-lp@{name}"].values["test_top1"] == lp["final_mean"]
    report = Path(res.report).read_text()
    assert "Target `warm` test top-1" in report and "Target `paper` test top-1" in report
    # the combined scores are combine_target_scores of each target's own scores
    sc_dir = _stage_dir(cfg, res, "score")
    combined_scores = load_scores(sc_dir).scores
    src, tdirs = Path(res.source), [Path(res.targets[n]) for n in TWO_TARGETS]
    ckpt = sorted(Path(cfg.runs_root).glob("surrogate-*/checkpoint.pt"))[0]
    singles = []
    for i, td in enumerate(tdirs):
        out = Path(cfg.runs_root) / f"single-{i}"
        score("lm", source_dir=src, target_dir=td, checkpoint=ckpt, out_dir=out, fmt="wds",
              num_workers=0, progress=False)
        singles.append(load_scores(out))
    combined = combine_target_scores([a.scores for a in singles])
    np.testing.assert_allclose(combined_scores, combined)
    tie = combine_target_scores([a.tiebreak for a in singles])
    n_keep = round(0.5 * len(combined))
    np.testing.assert_array_equal(res.stages["prune"].values["kept_units"],
                                  np.sort(rank(combined, tie)[:n_keep]))
    # weights: another key, the weighted sum
    w = replace(cfg, target_weights=(1.0, 3.0))
    res_w = _quiet(w)
    assert res_w.stages["score"].ran and res_w.report != res.report
    np.testing.assert_allclose(load_scores(_stage_dir(w, res_w, "score")).scores,
                               combine_target_scores([a.scores for a in singles],
                                                     weights=[1.0, 3.0]))


@pytest.mark.slow
def test_two_targets_reversed_outputs_name_every_target_in_order(base, monkeypatch):
    """``--target warm,paper --target-weights 3,1 --order reversed``: the gallery gets both
    targets and report.md's title; results.json keeps the targets' order (so their weights)
    and each target's recipes."""
    import json

    import ffcv_dp4tl.pipeline.run as run_mod

    drawn = []
    real = run_mod.selection_gallery
    monkeypatch.setattr(run_mod, "selection_gallery",
                        lambda *a, **k: drawn.append((a, k)) or real(*a, **k))
    cfg = replace(base, target="", targets=TWO_TARGETS, target_weights=(3.0, 1.0),
                  order="reversed")
    res = _quiet(cfg)
    (args, kw), = drawn
    assert [Path(p).name for p in args[1]] == list(TWO_TARGETS)
    assert kw["title"] == "LM (reversed) at ratio 0.5"
    report = Path(res.report).read_text()
    assert "# DP4TL run: LM (reversed) at ratio 0.5" in report
    assert "weights 3, 1): warm `" in report and "kept the other end" in report
    back = PipelineResult.from_json(json.loads((Path(res.report).parent / "results.json")
                                               .read_text()))
    assert list(back.targets) == list(TWO_TARGETS) and back.target_weights == [3.0, 1.0]
    assert back.selection["targets"] == [back.targets[n] for n in TWO_TARGETS]
    assert set(back.target_recipes) == set(TWO_TARGETS)
    assert all(set(r) == {"lp"} for r in back.target_recipes.values())


@pytest.mark.slow
def test_target_sets_and_orders_have_their_own_stage_keys(base):
    from ffcv_dp4tl.pipeline.stages import key_of
    from ffcv_dp4tl.pipeline.targets import score_key

    one = score_key(["a"], ())
    assert one == {"target": "a"}  # one target: the key of every earlier run
    keys = {key_of(score_key(fps, ws)) for fps, ws in
            ((["a"], ()), (["a", "b"], ()), (["a", "c"], ()), (["a", "b"], (1.0, 2.0)))}
    assert len(keys) == 4
    # several targets' shares are rounded since 2026-12-04 (equal shares tie exactly): scores
    # cached under the earlier rule are computed again, not reused under the same key
    assert score_key(["a", "b"], ())["combine"] == "rounded" and "combine" not in one
    single = _quiet(base)
    multi = _quiet(replace(base, target="", targets=TWO_TARGETS))
    assert _stage_dir(base, single, "score") != _stage_dir(base, multi, "score")
    assert single.report != multi.report


@pytest.mark.parametrize("change, message", [
    ({"targets": ("warm", "nosuch")}, r"unknown target 'nosuch'; the embedded data .* has: paper, warm"),
    ({"target": "nosuch"}, r"unknown target 'nosuch'.*paper, warm"),
    ({"targets": TWO_TARGETS, "target_weights": (1.0,)}, r"1 given for 2 targets"),
    ({"targets": TWO_TARGETS, "target_weights": (1.0, -1.0)}, r"weight 2 is -1.0"),
    ({"targets": ("warm", "warm")}, r"'warm' is given twice"),
    ({"order": "backwards"}, r"order must be one of ordered, reversed"),
])
def test_bad_target_and_order_values_are_one_line_errors(base, change, message):
    cfg = replace(base, **{"target": "", **change})
    with pytest.raises(DP4TLError, match=message) as e:
        _quiet(cfg)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_bench_variants_and_targets_are_labelled_rows(base, tmp_path):
    cfg = replace(base, target="", targets=TWO_TARGETS)
    out = tmp_path / "report"
    t = run_cost_table(cfg, out, ratios=(0.0, 0.5), methods=("lm", "lm[reversed]", "fm[k=3]",
                                                             "fm[k=5]"),
                       finetune=("lp",), command="pytest", log=lambda s: None)
    assert [(r["method"], r["ratio"]) for r in t["rows"]] == [
        (REFERENCE, 0.0), ("lm", 0.5), ("lm[reversed]", 0.5), ("fm[k=3]", 0.5), ("fm[k=5]", 0.5)]
    assert set(t["accuracy"]["lp"]["methods"]) == {"lm", "lm[reversed]", "fm[k=3]", "fm[k=5]"}
    # each K is its own clustering: the (cached) runs scored K clusters
    for k in (3, 5):
        res = _quiet(parse_variant(f"fm[k={k}]").apply(replace(cfg, ratio=0.5)))
        assert not any(st.ran for st in res.stages.values())
        assert len(load_scores(_stage_dir(cfg, res, "score")).scores) == k
    assert set(t["targets"]) == set(TWO_TARGETS)
    for name in TWO_TARGETS:
        assert set(t["targets"][name]["accuracy"]["lp"]["methods"]) == set(t["methods"])
    assert len(t["target_rows"]) == 2 * len(t["rows"])
    report = (out / "report.md").read_text()
    for label in ("LM (reversed)", "FM (K=3)", "FM (K=5)", "warm: LM (reversed)",
                  "paper: FM (K=5)", "Several targets (Fig. A5)"):
        assert label in report
    for png in ("accuracy.png", "cost.png", "accuracy-targets.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_cli_spells_variants_targets_and_order(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import ffcv_dp4tl.bench.cost_table as ct
    import ffcv_dp4tl.pipeline.run as run
    from ffcv_dp4tl.cli import app

    seen: dict = {}

    def fake_table(base, out, **kw):
        seen.update(kw, base=base)
        raise DP4TLError("stop here")

    monkeypatch.setattr(ct, "run_cost_table", fake_table)
    res = CliRunner().invoke(app, ["bench", "cost-table", "--methods", "lm,fm@0.4,fm[k=8,reversed]",
                                   "--ks", "16,32", "--orders", "ordered,reversed", "--target",
                                   "warm,blur", "--target-weights", "1,2", "--out", str(tmp_path)])
    assert isinstance(res.exception, DP4TLError), res.output  # the CLI prints it as one line
    assert seen["methods"] == ["lm", "lm[reversed]", "fm[k=16]", "fm[k=16,reversed]", "fm[k=32]",
                               "fm[k=32,reversed]", "fm[k=8,reversed]"]
    assert seen["method_ratios"] == {v: [0.4] for v in ("fm[k=16]", "fm[k=16,reversed]",
                                                        "fm[k=32]", "fm[k=32,reversed]")}
    assert seen["base"].targets == ("warm", "blur") and seen["base"].target_weights == (1.0, 2.0)
    assert "--ks 16,32" in seen["command"] and "--target warm,blur" in seen["command"]

    def fake_pipeline(cfg, log=print):
        seen["cfg"] = cfg
        raise DP4TLError("stop here")

    monkeypatch.setattr(run, "run_pipeline", fake_pipeline)
    res = CliRunner().invoke(app, ["pipeline", "--target", "warm", "--target", "blur,paper",
                                   "--order", "reversed"])
    assert isinstance(res.exception, DP4TLError), res.output
    assert seen["cfg"].targets == ("warm", "blur", "paper") and seen["cfg"].order == "reversed"
    res = CliRunner().invoke(app, ["pipeline", "--target", "warm"])
    assert seen["cfg"].target == "warm" and seen["cfg"].targets == ()  # one target: as before
    for args, msg in ((["--target", "warm,blur", "--target-weights", "1"], "1 given for 2"),
                      (["--target", "warm,blur", "--target-weights", "1,-2"], "weight 2 is -2.0"),
                      (["--target", "warm,blur", "--target-weights", "x"], "comma-separated"),
                      (["--order", "sideways"], "sideways")):
        res = CliRunner().invoke(app, ["pipeline", *args])
        assert res.exit_code != 0 and msg in _error(res), _error(res)
    res = CliRunner().invoke(app, ["bench", "cost-table", "--methods", "fm@k=16"])
    assert "fm[k=16]" in _error(res)


def _error(res) -> str:
    """A refused CLI call's message: a DP4TLError (one line) or typer's usage error."""
    if isinstance(res.exception, DP4TLError):
        assert "\n" not in str(res.exception)
        return str(res.exception)
    return res.output


@pytest.mark.slow
def test_target_independent_stages_are_shared_by_every_target(base):
    """RANDOM, the 0 % reference and the in-domain baselines never read the target: one score
    stage and one pretraining (keyed by the mask's content) serve every target, and only the
    finetuning runs per target. LM reads the target: its score (and pretraining) is per target."""
    for method, ratio in (("random", 0.5), ("random", 0.0), ("sp", 0.5)):
        first = _quiet(replace(base, method=method, ratio=ratio, target="warm"))
        second = _quiet(replace(base, method=method, ratio=ratio, target="paper"))
        assert not second.stages["score"].ran, method
        assert not second.stages["pretrain"].ran, (method, ratio)
        assert Path(second.stages["finetune-lp"].values["target"]).name == "paper"  # per target
        assert Path(first.stages["finetune-lp"].values["target"]).name == "warm"
        assert first.stages["pretrain"].seconds == second.stages["pretrain"].seconds
    lm_warm = _quiet(replace(base, method="lm", target="warm"))
    lm_paper = _quiet(replace(base, method="lm", target="paper"))
    assert lm_paper.stages["score"].ran or lm_warm.stages["score"].ran
    assert _stage_dir(base, lm_warm, "score") != _stage_dir(base, lm_paper, "score")
