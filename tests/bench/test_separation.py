"""The embedded benchmark's verdict: paired differences to RANDOM with a 95 % t interval."""
from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from scipy import stats

from ffcv_dp4tl.contracts import StageResult
from ffcv_dp4tl.pipeline.result import PipelineResult, StagePlace
from ffcv_dp4tl.pipeline.stages import StageRun
from ffcv_dp4tl.bench import separation as sep


def test_paired_test_matches_scipy():
    from scipy import stats

    d = [1.0, 2.5, -0.5, 3.0, 1.5]
    t = sep.paired_test(d)
    ref = stats.ttest_1samp(d, 0.0)
    ci = ref.confidence_interval(0.95)
    assert t["mean"] == pytest.approx(1.5) and t["n"] == 5
    assert (t["lo"], t["hi"]) == pytest.approx((ci.low, ci.high))
    assert t["p"] == pytest.approx(ref.pvalue)
    assert (t["wins"], t["losses"]) == (4, 1)


@pytest.mark.parametrize("diffs, word", [([2.0, 2.2, 1.9, 2.1], "better"),
                                         ([-2.0, -2.2, -1.9, -2.1], "worse"),
                                         ([2.0, -2.0, 1.0, -1.0], "no difference"),
                                         ([1.0], "too few")])
def test_verdict_reads_the_interval(diffs, word):
    assert word in sep.verdict(sep.paired_test(diffs))


def _rows(gap: float):
    rows = []
    for seed in range(5):
        for t, base in (("warm", 70.0), ("paper", 60.0)):
            noise = (seed - 2) * 1.5  # shared by the pair: pairing removes it
            rows.append({"seed": seed, "target": t, "method": sep.REFERENCE, "ratio": 0.0,
                         "lp": base + 5, "ff": base + 8, "truth": None})
            rows.append({"seed": seed, "target": t, "method": "random", "ratio": 0.8,
                         "lp": base + noise, "ff": None, "kept_sample_fraction": 0.2,
                         "truth": {"recall": None, "related_samples": 0.3, "related_classes": 0.3,
                                   "mapped_kept": 1.0, "chance": 0.3}})
            rows.append({"seed": seed, "target": t, "method": "lm", "ratio": 0.8,
                         "lp": base + noise + gap + 0.1 * seed, "ff": None,
                         "kept_sample_fraction": 0.2,
                         "truth": {"recall": 1.0, "related_samples": 1.0, "related_classes": 1.0,
                                   "mapped_kept": 1.0, "chance": 0.3}})
    return rows


def test_summary_pairs_by_seed_and_target(tmp_path):
    s = sep.summarize(_rows(gap=1.0))
    (lp,) = [t for t in s["tests"] if t["mode"] == "lp"]
    assert lp["pooled"]["n"] == 10 and lp["pooled"]["lo"] > 0  # noise is shared, the gap is not
    assert sep.verdict(lp["pooled"]) == "**better**"
    assert lp["by_seed"]["n"] == 5 and sep.verdict(lp["pooled"], lp["by_seed"]) == "**better**"
    assert lp["per_target"]["warm"]["n"] == 5
    assert s["reference"]["warm/lp"][0] == pytest.approx(75.0)
    lm = [c for c in s["truth"] if c["method"] == "lm" and c["target"] == "warm"][0]
    assert lm["recall"] == 1.0 and lm["related_samples"] == 1.0
    summary, body = sep.write_outputs(_rows(gap=-1.0), tmp_path, command="dp4tl bench embedded",
                                      header=["- machine: test"])
    assert "**worse**" in body and "paired.png" in body and (tmp_path / "paired.png").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["seeds"] == [0, 1, 2, 3, 4]


def test_the_bold_verdict_survives_holms_adjustment_over_the_table():
    """The table judges every mode x ratio x method at once. A seed-level p below 0.05 that
    does not stay below it after Holm's adjustment over the table's tests is named so,
    without the bold word (review: FF LM at p 0.026 of four tests read **better**)."""
    gaps = {0.8: [1.0, 2.0, 0.3, 1.5, 0.4], 0.4: [1.0, -1.0, 0.5, -0.5, 0.0]}
    rows = []
    for ratio, ds in gaps.items():
        for seed, d in enumerate(ds):
            for t, base in (("warm", 70.0), ("paper", 60.0)):
                rows += [{"seed": seed, "target": t, "method": "random", "ratio": ratio,
                          "lp": base + seed, "ff": None, "truth": None},
                         {"seed": seed, "target": t, "method": "lm", "ratio": ratio,
                          "lp": base + seed + d, "ff": None, "truth": None}]
    alone = sep.summarize([r for r in rows if r["ratio"] == 0.8])
    (one,) = alone["tests"]
    assert 0.025 < one["by_seed"]["p"] < 0.05 and one["p_holm"] == one["by_seed"]["p"]
    assert sep.verdict(one["pooled"], one["by_seed"], one["p_holm"]) == "**better**"
    both = sep.summarize(rows)
    hit = next(t for t in both["tests"] if t["ratio"] == 0.8)
    assert hit["p_holm"] == pytest.approx(2 * hit["by_seed"]["p"])  # the smaller of two p's
    assert sep.verdict(hit["pooled"], hit["by_seed"], hit["p_holm"]) == \
        "better, not after Holm's adjustment"
    body = sep.markdown(both)
    assert "| better, not after Holm's adjustment |" in body and "| **better** |" not in body
    assert "Holm's adjustment over the table's 2 tests" in body


def test_holm_adjustment_matches_its_definition():
    from ffcv_dp4tl.bench.stats import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, None, 0.01]) == [pytest.approx(0.2), None, pytest.approx(0.02)]
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1, never decreasing
    assert holm([]) == []


def test_a_reference_of_one_run_shows_no_spread():
    """``--reference-seeds 0``: the unpruned reference ran once, and its row read "100.0 ± 0.0"
    (review): one run has no spread to show."""
    rows = [r for r in _rows(gap=1.0) if r["method"] != sep.REFERENCE or r["seed"] == 0]
    body = sep.markdown(sep.summarize(rows))
    assert "| `warm` | 75.0 (one seed) | 78.0 (one seed) |" in body, body
    assert "| `warm` | 75.0 ± 0.0 (5 seeds) |" in sep.markdown(sep.summarize(_rows(gap=1.0)))


def test_the_reference_table_says_its_spread_is_over_the_reference_seeds():
    """"77.3 ± 0.4" said neither what the spread was over nor n (figures audit): the reference
    runs for --reference-seeds only."""
    rows = [{"seed": s, "target": "warm", "method": sep.REFERENCE, "ratio": 0.0, "lp": v,
             "ff": None} for s, v in ((0, 77.0), (1, 77.5), (2, 77.4))]
    rows += [{"seed": s, "target": "warm", "method": m, "ratio": 0.8, "lp": 60.0 + s, "ff": None}
             for s in range(5) for m in ("random", "lm")]
    body = sep.markdown(sep.summarize(rows))
    assert "| `warm` | 77.3 ± 0.3 (3 seeds) |" in body
    assert "mean ± sample std over the seeds it ran for (`--reference-seeds`" in body


def _lp_result(cfg, folder) -> PipelineResult:
    """A finished run of ``cfg`` with LP top-1 0.5 (what the benchmark's loop reads)."""
    res = PipelineResult(config={}, source="s", target="t", protocol="standard", recipes={},
                         seeds=[cfg.seed])
    ft = StageResult(stage="finetune", kind="finetune", values={"test_top1": 0.5})
    res.add(StagePlace("finetune-lp", "finetune", seed=cfg.seed, mode="lp"),
            StageRun(ft, folder, ran=True))
    return res


def test_run_resumes_from_rows(tmp_path, monkeypatch):
    """A finished (seed, target, method, ratio) is never run again: rows.jsonl is the record."""
    calls = []

    def fake_run(cfg, log=print):  # the loop's bookkeeping only; run_pipeline has its own tests
        calls.append((cfg.seed, cfg.target, cfg.method, cfg.ratio))
        return _lp_result(cfg, tmp_path)

    monkeypatch.setattr(sep, "run_pipeline", fake_run)
    checked = []
    monkeypatch.setattr(sep, "preflight", lambda cfgs, log: checked.extend(cfgs))
    base = sep.PipelineConfig(source="synth:tiny")
    rows = sep.run_separation(base, tmp_path, targets=["warm"], seeds=[0, 1], methods=["lm"],
                              ratios=[0.8], finetune=["lp"], log=lambda m: None)
    assert len(rows) == len(calls) == 2 * 3
    # every run was checked before the first ran: one seed's, per target x (method, ratio)
    assert [(c.seed, c.target, c.method, c.ratio) for c in checked] == calls[:3]
    calls.clear()
    again = sep.run_separation(base, tmp_path, targets=["warm"], seeds=[0, 1, 2], methods=["lm"],
                               ratios=[0.8], finetune=["lp"], log=lambda m: None)
    assert calls == [(2, "warm", "random", 0.0), (2, "warm", "random", 0.8), (2, "warm", "lm", 0.8)]
    assert len(again) == 9 and again[0]["lp"] == 50.0
    # a narrower rerun reports its own design only: seed 2's rows stay in rows.jsonl, out of
    # its tests (a half-finished seed entered the pooled test under --seeds 0,1; review)
    calls.clear()
    narrow = sep.run_separation(base, tmp_path, targets=["warm"], seeds=[0, 1], methods=["lm"],
                                ratios=[0.8], finetune=["lp"], log=lambda m: None)
    assert calls == [] and sorted({r["seed"] for r in narrow}) == [0, 1] and len(narrow) == 6
    assert len(sep.read_rows(tmp_path / "rows.jsonl")) == 9
    # rows of other settings (here another surrogate recipe content) are never paired with new ones
    calls.clear()
    other = sep.PipelineConfig(source="synth:tiny", overrides=("train.epochs=2",))
    with pytest.raises(sep.DP4TLError, match=r"rows.jsonl: 9 of its 9 rows ran with other settings"):
        sep.run_separation(other, tmp_path, targets=["warm"], seeds=[0], methods=["lm"],
                           ratios=[0.8], finetune=["lp"], log=lambda m: None)
    assert calls == []
    assert sep.settings_key(base, ["lp"]) != sep.settings_key(base, ["lp", "ff"])


def test_a_second_run_into_a_folder_being_run_is_refused_and_a_later_one_resumes(tmp_path,
                                                                                monkeypatch):
    """Two `bench embedded --out D` at once appended every row twice (each trial counted twice
    in the verdict). The folder is locked while a run appends; a run started after another
    finished reads the rows under the lock, so it reruns nothing."""
    import os

    from ffcv_dp4tl.locks import directory_lock

    calls = []

    def fake_run(cfg, log=print):
        calls.append(cfg.seed)
        return _lp_result(cfg, tmp_path)

    monkeypatch.setattr(sep, "run_pipeline", fake_run)
    monkeypatch.setattr(sep, "preflight", lambda cfgs, log: None)
    kw = dict(targets=["warm"], seeds=[0], methods=["lm"], ratios=[0.8], finetune=["lp"],
              log=lambda m: None)
    base = sep.PipelineConfig(source="synth:tiny")
    with directory_lock(tmp_path / sep.EMBEDDED_LOCK, "the test's run"):
        with pytest.raises(sep.DP4TLError, match=rf"another dp4tl process \(pid {os.getpid()}\) "
                                                 rf"on host \S+ is using benchmark folder "
                                                 rf"{tmp_path}"):
            sep.run_separation(base, tmp_path, **kw)
    assert calls == [] and not (tmp_path / "rows.jsonl").exists()
    real_read = sep.read_rows

    def read_rows(path, **k):  # another run finishes between this run's first read and its lock
        if not calls and not path.exists():
            for m, r in ((sep.REFERENCE, 0.0), ("random", 0.8), ("lm", 0.8)):
                sep.append_row(path, {"seed": 0, "target": "warm", "method": m, "ratio": r,
                                      "lp": 50.0, "settings_key": sep.settings_key(base, ["lp"])})
            return []
        return real_read(path, **k)

    monkeypatch.setattr(sep, "read_rows", read_rows)
    rows = sep.run_separation(base, tmp_path, **kw)
    assert calls == [] and len(rows) == 3
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 3


def test_rows_of_an_older_rule_of_a_method_are_not_paired_with_new_ones(tmp_path, monkeypatch):
    """FM's tie-break changed (revision 1): a resumed benchmark holding FM rows of the older
    rule refuses (resuming used to add new-rule rows beside them under one name); rows record
    the revision they ran under, methods without one record none."""
    import json

    def fake_run(cfg, log=print):
        return _lp_result(cfg, tmp_path)

    monkeypatch.setattr(sep, "run_pipeline", fake_run)
    monkeypatch.setattr(sep, "preflight", lambda cfgs, log: None)
    base = sep.PipelineConfig(source="synth:tiny")
    kw = dict(targets=["warm"], seeds=[0], methods=["lm", "fm"], ratios=[0.8], finetune=["lp"],
              log=lambda m: None)
    rows = sep.run_separation(base, tmp_path, **kw)
    assert {r["method"]: r.get("revision") for r in rows} == {
        "0 %": None, "random": None, "lm": None, "fm": 1}
    path = tmp_path / "rows.jsonl"
    old = [json.loads(line) for line in path.read_text().splitlines()]
    for r in old:
        r.pop("revision", None)  # as written before the fix
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    with pytest.raises(sep.DP4TLError, match=r"rows.jsonl: 1 of its 4 rows \(fm\) were scored by "
                                             r"another rule of the method \(revision 0, this "
                                             r"code: 1\); delete those lines"):
        sep.run_separation(base, tmp_path, **{**kw, "seeds": [0, 1]})
    # as advised: the fm line deleted, only fm runs again
    path.write_text("".join(json.dumps(r) + "\n" for r in old if r["method"] != "fm"))
    calls = []
    monkeypatch.setattr(sep, "run_pipeline", lambda cfg, log=print: calls.append(cfg.method)
                        or fake_run(cfg))
    sep.run_separation(base, tmp_path, **kw)
    assert calls == ["fm"]


def test_embedded_command_runs_the_paired_design(tmp_path, monkeypatch):
    """`dp4tl bench embedded`: synth:hard with the bench recipes, 10 seeds, LM/FM vs RANDOM,
    LP and FF; the section holds the paired verdict (the pipeline runs are replaced here by
    rows with a known answer: the CLI's wiring is under test, run_separation above)."""
    from typer.testing import CliRunner

    from ffcv_dp4tl.cli import app

    seen = {}

    def fake(base, out, **kw):
        seen.update(kw, base=base)
        return _rows(gap=2.0)

    monkeypatch.setattr(sep, "run_separation", fake)
    bench_md = tmp_path / "B.md"
    res = CliRunner().invoke(app, ["bench", "embedded", "--out", str(tmp_path / "o"),
                                   "--report", str(bench_md)])
    assert res.exit_code == 0, res.output
    assert seen["base"].source == "synth:hard" and seen["base"].recipes == "bench"
    assert seen["seeds"] == list(range(10)) and seen["targets"] == ["paper", "warm", "blur"]
    assert seen["methods"] == ["lm", "fm"] and seen["finetune"] == ["lp", "ff"]
    text = bench_md.read_text()
    assert "## Embedded benchmark (CPU): do LM and FM beat RANDOM?" in text
    assert "**better**" in text and "](o/paired.png)" in text
    assert (tmp_path / "o" / "README.md").exists()
    bad = CliRunner().invoke(app, ["bench", "embedded", "--targets", "dusk"])
    assert bad.exit_code != 0


def test_settings_key_follows_the_recipes_the_pipeline_runs():
    """The key names the recipes a run will use: the data's scale by the pipeline's rule when
    recipes= is not given (synth:hard -> bench, like its manifest), and a recipe named per role."""
    hard = sep.PipelineConfig(source="synth:hard")
    assert sep.settings_key(hard, ["lp"]) == sep.settings_key(replace(hard, recipes="bench"), ["lp"])
    assert sep.settings_key(hard, ["lp"]) != sep.settings_key(replace(hard, recipes="tiny"), ["lp"])
    tiny = sep.PipelineConfig(source="synth:tiny")
    assert sep.settings_key(tiny, ["ff"]) != sep.settings_key(replace(tiny, ff_recipe="ff_bench_cpu"), ["ff"])
    assert sep.settings_key(tiny, ["lp"]) != sep.settings_key(
        replace(tiny, surrogate_overrides=("train.epochs=2",)), ["lp"])


def test_scale_of_source_agrees_with_the_manifest_rule(tmp_path, synth_root):
    from ffcv_dp4tl.pipeline.recipes import scale_of_source

    assert [scale_of_source(s) for s in ("synth", "synth:tiny", "synth:bench", "synth:hard,seed=2")] \
        == ["tiny", "tiny", "bench", "bench"]
    assert scale_of_source(str(tmp_path)) == "full"  # not built: real data's recipes
    assert scale_of_source(str(synth_root)) == scale_of_source(str(synth_root / "source")) == "tiny"


def test_seed_level_test_guards_against_pairs_that_share_randoms_pretraining():
    """Pairs of one seed share RANDOM's pretraining, so one bad RANDOM run moves every target's
    pair of that seed: many pairs look significant while the seeds, the independent units, do
    not. The verdict then says so instead of "better"."""
    rows = []
    for seed, rnd in enumerate((70.0, 40.0, 71.0, 69.0, 70.0)):  # seed 1: RANDOM's run failed
        for t, jitter in (("paper", 0.0), ("warm", 0.3), ("blur", -0.3), ("a", 0.1), ("b", -0.1)):
            rows.append({"seed": seed, "target": t, "method": "random", "ratio": 0.8,
                         "lp": rnd + jitter, "ff": None})
            rows.append({"seed": seed, "target": t, "method": "lm", "ratio": 0.8,
                         "lp": 70.5 + jitter + 0.05 * seed, "ff": None})
    (lp,) = [t for t in sep.summarize(rows)["tests"] if t["mode"] == "lp"]
    assert lp["pooled"]["n"] == 25 and lp["pooled"]["lo"] > 0
    assert lp["by_seed"]["n"] == 5 and lp["by_seed"]["lo"] <= 0
    assert sep.verdict(lp["pooled"], lp["by_seed"]) == "better over pairs, not shown over seeds"
    body = sep.markdown(sep.summarize(rows))
    assert "p (seeds)" in body and "not shown over seeds" in body


def test_one_seed_never_gives_a_bold_verdict():
    """With one seed the seed-level test cannot run; the pooled test over targets alone (pairs
    that share RANDOM's pretraining) must not earn the bold **better** the legend reserves for
    both intervals excluding 0."""
    pooled = sep.paired_test([1.0, 1.5, 0.8, 1.2])
    one_seed = sep.paired_test([1.1])
    assert pooled["lo"] > 0 and one_seed["lo"] is None
    assert sep.verdict(pooled, one_seed) == "better over pairs, too few seeds to test"
    assert sep.verdict(sep.paired_test([-1.0, -1.5, -0.8, -1.2]), one_seed) == \
        "worse over pairs, too few seeds to test"
    assert sep.verdict(pooled, sep.paired_test([1.0, 1.2, 1.1])) == "**better**"


def test_seed_level_test_guards_a_worse_verdict_too():
    """The conservative seed-level guard works both ways: a pooled "worse" whose seed-level
    interval straddles 0 (one RANDOM seed far better than the others, moving every target's
    pair of that seed) is reported as "worse over pairs, not shown over seeds", not **worse**;
    a seed-level interval wholly below 0 confirms **worse**."""
    pooled = {"mean": -2.0, "lo": -3.0, "hi": -1.0}
    assert sep.verdict(pooled, {"mean": -1.0, "lo": -4.0, "hi": 2.0}) \
        == "worse over pairs, not shown over seeds"
    assert sep.verdict(pooled, {"mean": -2.0, "lo": -2.5, "hi": -0.5}) == "**worse**"
    # the mirror of the "better" guard test: seed 1's RANDOM run is far better than the others
    rows = []
    for seed, rnd in enumerate((70.0, 100.0, 69.0, 71.0, 70.0)):
        for t, jitter in (("paper", 0.0), ("warm", 0.3), ("blur", -0.3), ("a", 0.1), ("b", -0.1)):
            rows.append({"seed": seed, "target": t, "method": "random", "ratio": 0.8,
                         "lp": rnd + jitter, "ff": None})
            rows.append({"seed": seed, "target": t, "method": "lm", "ratio": 0.8,
                         "lp": 69.5 + jitter - 0.05 * seed, "ff": None})
    (lp,) = [t for t in sep.summarize(rows)["tests"] if t["mode"] == "lp"]
    assert lp["pooled"]["n"] == 25 and lp["pooled"]["hi"] < 0
    assert lp["by_seed"]["n"] == 5 and lp["by_seed"]["lo"] < 0 <= lp["by_seed"]["hi"]
    assert sep.verdict(lp["pooled"], lp["by_seed"]) == "worse over pairs, not shown over seeds"


def _target_effects_rows(effects=(10.0, 0.0, -5.0), seeds=8):
    """Targets on which the method differs from RANDOM by ``effects`` points, the same on
    every seed up to small noise: the seed-level test is sure, the pooled one is not."""
    rows = []
    for seed in range(seeds):
        for i, effect in enumerate(effects):
            noise = 0.2 * ((seed * 7 + i * 3) % 5 - 2)
            rows += [{"seed": seed, "target": f"t{i}", "method": "random", "ratio": 0.8,
                      "lp": 50.0 + seed, "ff": None},
                     {"seed": seed, "target": f"t{i}", "method": "lm", "ratio": 0.8,
                      "lp": 50.0 + seed + effect + noise, "ff": None}]
    return rows


def test_a_verdict_the_seed_level_test_alone_sees_names_the_pooled_test():
    """Neither test is the conservative one (stats audit): targets of +10, 0 and -5 points
    widen the pooled interval (p 0.1) while the seed-level one, of each seed's mean over its
    targets, is sure (p < 0.001). The table printed "no difference detected" beside that p
    Holm of < 0.001 and said the seed-level test was the conservative one: the verdict names
    the pooled test that saw no difference, and the text no longer calls either conservative."""
    s = sep.summarize(_target_effects_rows())
    (t,) = s["tests"]
    assert t["pooled"]["lo"] < 0 < t["pooled"]["hi"] and t["pooled"]["p"] > 0.05
    assert t["by_seed"]["lo"] > 0 and t["p_holm"] < 0.001
    said = sep.row_verdict(t)
    assert said == f"no difference detected (pooled p {sep._p(t['pooled'])}; by seed: better)"
    assert sep.verdict_kind(said) == "qualified"  # (orange in the plot, not grey)
    body = sep.markdown(s)
    row = next(x for x in body.splitlines() if x.startswith("| LP | 80 % | LM |"))
    assert "| <0.001 | no difference detected (pooled p 0." in row
    assert body.count("conservative") == body.count("Neither test is the conservative one") == 1
    assert "the seed-level test is the conservative one" not in sep.verdict.__doc__
    assert ("over the table's 1 test, one family of every mode × ratio × method (1 × 1 × 1; "
            "p Holm)") in body
    # one test alone that is not confirmed after Holm's adjustment says that too
    assert sep.verdict(t["pooled"], t["by_seed"], 0.2) == (
        f"no difference detected (pooled p {sep._p(t['pooled'])}; by seed: better, not after "
        "Holm's adjustment)")
    # and with neither test seeing a difference, the words are as they were
    flat = sep.paired_test([1.0, -1.0, 0.5])
    assert sep.verdict(flat, flat) == "no difference detected"


def test_seed_level_differences_are_each_seeds_mean_over_its_targets():
    """The "by seed" column (and the seed-level verdict) tests one difference per seed: the
    mean of that seed's method − RANDOM differences over every target, by hand here. A seed
    missing a target's pair has no seed-level difference (the pooled test still counts its
    pairs)."""
    diffs = {0: {"warm": 1.0, "paper": 3.0}, 1: {"warm": 2.0, "paper": 6.0},
             2: {"warm": -1.0, "paper": 0.0}, 3: {"warm": 4.0}}  # seed 3: no "paper" pair
    rows = []
    for seed, per_target in diffs.items():
        for t in ("warm", "paper"):
            rows.append({"seed": seed, "target": t, "method": "random", "ratio": 0.5,
                         "lp": 50.0 + seed, "ff": None})
            if t in per_target:
                rows.append({"seed": seed, "target": t, "method": "lm", "ratio": 0.5,
                             "lp": 50.0 + seed + per_target[t], "ff": None})
    (lp,) = [t for t in sep.summarize(rows)["tests"] if t["mode"] == "lp"]
    seed_means = [2.0, 4.0, -0.5]  # (1+3)/2, (2+6)/2, (-1+0)/2; seed 3 left out
    assert lp["by_seed"] == sep.paired_test(seed_means)
    assert lp["by_seed"]["n"] == 3 and lp["by_seed"]["mean"] == pytest.approx(5.5 / 3)
    assert lp["pooled"]["n"] == 7 and lp["per_target"]["warm"]["n"] == 4


def test_a_run_refused_by_the_lock_leaves_the_running_ones_last_line_alone(tmp_path,
                                                                            monkeypatch):
    """A second `bench embedded` into a folder whose run was appending a row read rows.jsonl
    with repair before taking the lock: it cut the other run's half-written line (taken for a
    torn append) and then was refused by the lock (audit). It now only reads before the lock:
    the file is as the running one left it, and no warning is printed."""
    monkeypatch.setattr(sep, "preflight", lambda cfgs, log: None)
    monkeypatch.setattr(sep, "run_pipeline", lambda cfg, log=print: pytest.fail("ran"))
    path, base = tmp_path / "rows.jsonl", sep.PipelineConfig(source="synth:tiny")
    sep.append_row(path, {"seed": 0, "target": "warm", "method": sep.REFERENCE, "ratio": 0.0,
                          "lp": 50.0, "settings_key": sep.settings_key(base, ["lp"])})
    path.write_text(path.read_text() + '{"seed": 0, "target": "warm", "meth')  # (in progress)
    before = path.read_bytes()
    kw = dict(targets=["warm"], seeds=[0], methods=["lm"], ratios=[0.8], finetune=["lp"],
              log=lambda m: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with sep_lock(tmp_path):
            with pytest.raises(sep.DP4TLError, match="is using benchmark folder"):
                sep.run_separation(base, tmp_path, **kw)
    assert path.read_bytes() == before
    with pytest.warns(UserWarning, match="line 2 was cut short"):  # (the rerun's own read)
        assert len(sep.read_rows(path)) == 1


def sep_lock(folder):
    from ffcv_dp4tl.locks import directory_lock

    return directory_lock(folder / sep.EMBEDDED_LOCK, "the running bench")


def test_rows_file_survives_a_torn_append_and_names_a_damaged_line(tmp_path):
    """rows.jsonl is the resume record: a last line cut short by a crash mid-append is dropped
    (that run reruns) and the file repaired; a damaged line elsewhere, or a row whose fields
    have the wrong type, is one line naming the file and line (dropping it would lose a run)."""
    good = [{"seed": s, "target": "warm", "method": "lm", "ratio": 0.8, "lp": 50.0} for s in (0, 1)]
    path = tmp_path / "rows.jsonl"
    for row in good:
        sep.append_row(path, row)
    assert sep.read_rows(path) == good
    path.write_text(path.read_text() + json.dumps(good[0])[:-12])  # torn: no closing, no newline
    with pytest.warns(UserWarning, match="line 3 was cut short"):
        assert sep.read_rows(path) == good
    whole = "".join(json.dumps(r) + "\n" for r in good)
    assert path.read_text() == whole  # repaired: the fragment is gone, so the next append
    third = {**good[0], "seed": 2}  # starts a line of its own and the resume after it reads
    sep.append_row(path, third)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sep.read_rows(path) == good + [third]
    path.write_text(path.read_text().rstrip("\n"))  # a whole last line that lost its newline
    fourth = {**good[0], "seed": 3}
    sep.append_row(path, fourth)  # starts its own line: nothing finished is lost
    assert sep.read_rows(path) == good + [third, fourth]
    lines = path.read_text().splitlines()
    for damaged, n in (([lines[0], "garbage", lines[1]], 2), ([lines[0], "garbage"], 2)):
        path.write_text("\n".join(damaged) + "\n")  # a whole damaged line, even the last one
        with pytest.raises(sep.DP4TLError, match=rf"rows.jsonl line {n} is not JSON"):
            sep.read_rows(path)
        assert path.read_text() == "\n".join(damaged) + "\n"  # left as it was
    for bad in ('"seed": "one"', '"seed": true'):
        path.write_text("\n".join([lines[0], lines[1].replace('"seed": 1', bad)]) + "\n")
        with pytest.raises(sep.DP4TLError, match=r"rows.jsonl line 2: field 'seed' must be an integer, "
                                                 r"got .*; fix or delete that line"):
            sep.read_rows(path)


def test_an_appended_row_is_on_disk_before_append_row_returns(tmp_path, monkeypatch):
    """rows.jsonl is the resume record: a finished run's row must survive a crash or power loss
    right after it, so append_row flushes the line and fsyncs that file's descriptor, after the
    write, before it returns (os.fsync stands in: it records the file it was given and what the
    file held then)."""
    import os

    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        st = os.fstat(fd)
        synced.append(((st.st_dev, st.st_ino), path.read_text()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "rows.jsonl"
    first = {"seed": 0, "target": "warm", "method": "lm", "ratio": 0.8, "lp": 50.0}
    second = {**first, "seed": 1}
    sep.append_row(path, first)
    ident = (path.stat().st_dev, path.stat().st_ino)
    assert synced == [(ident, json.dumps(first) + "\n")]  # this file, the row already in it
    sep.append_row(path, second)
    assert synced[1:] == [(ident, json.dumps(first) + "\n" + json.dumps(second) + "\n")]


def test_a_bad_method_or_empty_list_is_refused_before_any_run(tmp_path, monkeypatch, data_root):
    """Every run of the plan is checked first (the real preflight): an unknown method fails
    before the reference and RANDOM train, not at run 3 of 3; empty lists before anything."""
    from tiny_data import SYNTH, TRAIN

    monkeypatch.setattr(sep, "run_pipeline", lambda *a, **k: pytest.fail("a run started"))
    base = sep.PipelineConfig(source=SYNTH, data_root=data_root, runs_root=tmp_path / "runs",
                              overrides=TRAIN)
    with pytest.raises(sep.DP4TLError, match="bogus"):
        sep.run_separation(base, tmp_path / "out", targets=["paper"], seeds=[0], methods=["bogus"],
                           ratios=[0.8], finetune=["lp"], log=lambda m: None)
    for kw, what in (({"seeds": []}, "--seeds"), ({"targets": []}, "--targets"),
                     ({"methods": []}, "--methods"), ({"ratios": [0.0]}, "--ratios"),
                     ({"targets": ["paper", "paper"]}, "--targets lists 'paper' twice"),
                     ({"methods": ["lm", "lm"]}, "--methods lists 'lm' twice")):
        args = {"targets": ["paper"], "seeds": [0], "methods": ["lm"], "ratios": [0.8], **kw}
        with pytest.raises(sep.DP4TLError, match=what):
            sep.run_separation(base, tmp_path / "out", finetune=["lp"], log=lambda m: None, **args)
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_zero_spread_differences_have_an_exact_p_value():
    """With no spread the t statistic is undefined; the p-value is then the exact sign-flip
    test's: 1.0 when every difference is 0, 2^(1-n) when every pair differs by the same
    non-zero amount, and no interval. It was 0.0 with the interval [d, d], which called two
    equal one-image wins **better** (review)."""
    zero = sep.paired_test([0.0, 0.0, 0.0])
    assert zero["p"] == 1.0 and (zero["lo"], zero["hi"]) == (None, None) and zero["exact"]
    one = sep.paired_test([1.39, 1.39])
    assert one["p"] == 0.5 and (one["lo"], one["hi"]) == (None, None)
    assert sep.verdict(one) == sep.verdict(one, one) == "no difference detected"
    assert sep.paired_test([1.0] * 3)["p"] == 0.25
    six = sep.paired_test([-1.0] * 6)  # 2 of 64 sign patterns as extreme: p = 1/32
    assert six["p"] == pytest.approx(1 / 32) and sep.verdict(six, six) == "**worse**"
    assert sep._ci(one) == "+1.4 (all equal)"
    # equal up to rounding (two seeds each 2 of 72 images behind: 1e-14 apart) is equal: the
    # t-test read sd 1e-14 as a perfect signal and called it **worse** (p < 0.001)
    rounded = sep.paired_test([93.05555555555556 - 95.83333333333334,
                               88.88888888888889 - 91.66666666666666])
    assert rounded["p"] == 0.5 and rounded["lo"] is None and sep.verdict(rounded) == \
        "no difference detected"
    # and a mean that is 0 up to rounding is 0 (seed means of +1.39, -1.39, 0: -4.7e-15): p 1,
    # no win, no loss; it read p 0.008 and "worse" over 8 seeds (review). Rounding of what: of
    # the top-1s (scale 100, as summarize passes), not of the differences alone (stats audit)
    noise = sep.paired_test([(1.3888888888888857 - 1.3888888888888928) / 3] * 8, scale=100.0)
    assert noise["p"] == 1.0 and (noise["wins"], noise["losses"]) == (0, 0)
    assert sep.paired_test([0.0] * 9 + [1e-16], scale=100.0)["p"] == 1.0


@pytest.mark.parametrize("unit", [1e-12, 1e-6, 1.0, 1e6, 1e300])
def test_the_paired_test_does_not_depend_on_the_unit(unit):
    """The same differences in another unit give the same test: p, wins and the interval
    scaled (stats audit: differences of 1e-12 fell under an absolute "all equal" floor of 1e-9
    and read p 1 with 0 wins, scipy 0.0059; those of 1e300 raised OverflowError from a sum of
    squares)."""
    d = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    got = sep.paired_test([unit * x for x in d])
    ref = stats.ttest_1samp(d, 0.0)
    ci = ref.confidence_interval(0.95)
    assert got["p"] == pytest.approx(ref.pvalue) and (got["wins"], got["losses"]) == (6, 0)
    assert "exact" not in got and got["mean"] == pytest.approx(3.5 * unit)
    assert (got["lo"], got["hi"]) == pytest.approx((unit * ci.low, unit * ci.high))
    same = sep.paired_test([unit * 2.0, unit * 2.0, unit * 2.0])  # (equal: still the exact test)
    assert same["exact"] and same["p"] == 0.25 and same["wins"] == 3


def test_differences_near_the_float_range_are_tested_not_overflowed():
    """Squares of 1e300 overflow: the sums are taken of scaled values (stats audit)."""
    got = sep.paired_test([1e300, 2e300, 3e300])
    assert got["p"] == pytest.approx(sep.paired_test([1.0, 2.0, 3.0])["p"])
    wide = sep.paired_test([1e308, 1.7e308, -1.7e308])  # (its interval is past the float range)
    assert 0 < wide["p"] <= 1 and wide["mean"] == pytest.approx(1e308 / 3)


def test_a_tables_mean_and_std_are_the_paired_tests_to_the_last_bit():
    """One rule for a mean and spread (``report.scaled_moments``): a table's mean ± std
    over seeds and the paired test's mean of the same values were two sums (plain and exact)
    and differed in the last bits (0.20000000000000004 against 0.19999999999999998)."""
    from ffcv_dp4tl.pipeline.report import seed_stats

    for d in ([0.1, 0.2, 0.3], [1.39, -1.39, 0.0, 2.78], [71.25, 69.5, 70.125, 72.0, 68.75]):
        st, t = seed_stats(d), sep.paired_test(d)
        assert st.mean == t["mean"], d
        half = t["hi"] - t["mean"]  # (= the t quantile × std / √n)
        assert st.std == pytest.approx(half / stats.t.ppf(0.975, len(d) - 1) * len(d) ** 0.5,
                                       rel=1e-12)


def test_a_seed_mean_that_is_zero_up_to_rounding_stays_zero_in_the_summary():
    """summarize passes the top-1s' scale: each seed's two targets differ by +1.39 and -1.39
    points (one image of 72: a 7.1e-15 seed mean), read as 0 on all 8 seeds, not as 8
    identical wins."""
    rows = []
    for seed in range(8):
        for t, (m, r) in (("a", (100 * 61 / 72, 100 * 60 / 72)),
                          ("b", (100 * 61 / 72, 100 * 62 / 72))):
            rows += [{"seed": seed, "target": t, "method": "lm", "ratio": 0.8, "lp": m},
                     {"seed": seed, "target": t, "method": "random", "ratio": 0.8, "lp": r}]
    q = sep.summarize(rows)["tests"][0]["by_seed"]
    assert q["mean"] != 0.0 and abs(q["mean"]) < 1e-12  # (the rounding this is about)
    assert q["p"] == 1.0 and (q["wins"], q["losses"]) == (0, 0)


def test_non_finite_differences_are_left_out_and_counted():
    """A NaN difference (a diverged run) made the p-value NaN, which the table printed as
    "<0.001" (NaN >= 0.001 is False) beside the verdict "no difference detected"."""
    t = sep.paired_test([1.0, float("nan"), 2.0, 1.5])
    assert t["n"] == 3 and t["dropped"] == 1 and t["p"] is not None and math.isfinite(t["p"])
    assert t["p"] == pytest.approx(stats.ttest_1samp([1.0, 2.0, 1.5], 0.0).pvalue)
    assert sep._p({"p": float("nan")}) == "–" and sep._p({"p": 0.0004}) == "<0.001"


def test_a_method_identical_to_random_is_no_difference_detected():
    """A method that scores exactly what RANDOM scores on every pair (interval [0, 0]) is
    "no difference detected", never **better** or **worse**: an interval touching 0 does not
    exclude it."""
    zero = sep.paired_test([0.0, 0.0, 0.0])
    assert sep.verdict(zero) == "no difference detected"
    assert sep.verdict(zero, zero) == "no difference detected"


def test_a_tied_pair_is_neither_won_nor_lost():
    """"pairs won" counts pairs where the method beat RANDOM; a pair with a difference of exactly
    0 is a tie: neither a win nor a loss."""
    t = sep.paired_test([0.0, 1.0, 2.0])
    assert (t["wins"], t["losses"]) == (2, 0)
    assert (sep.paired_test([0.0, -1.0])["wins"], sep.paired_test([0.0, -1.0])["losses"]) == (0, 1)


def _write_run(folder, rows, key="k1"):
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        sep.append_row(folder / "rows.jsonl", {**r, "settings_key": key})
    return folder


def test_replicates_over_disjoint_seeds_pool_into_one_verdict(tmp_path):
    """`bench embedded-pool`: a replicate over new seeds and the first run give one test with n =
    all their seeds, the same as one run over those seeds would (the rows are not changed)."""
    rows = _rows(gap=1.0)
    later = [{**r, "seed": r["seed"] + 10} for r in _rows(gap=2.0)]
    a, b = _write_run(tmp_path / "a", rows), _write_run(tmp_path / "b", later)
    pooled, lines = sep.pool_rows([a, b])
    assert len(pooled) == 60 and lines == [f"  - `{a}`: 30 runs, seeds 0–4",
                                           f"  - `{b}`: 30 runs, seeds 10–14"]
    (lp,) = [t for t in sep.summarize(pooled)["tests"] if t["mode"] == "lp"]
    (alone,) = [t for t in sep.summarize(rows)["tests"] if t["mode"] == "lp"]
    assert lp["by_seed"]["n"] == 10 and lp["pooled"]["n"] == 20
    # the gap is gap + 0.1 x seed (_rows, seeds 0-4): 1.2 in the first run, 2.2 in the second
    assert alone["pooled"]["mean"] == pytest.approx(1.2)
    assert lp["pooled"]["mean"] == pytest.approx((1.2 + 2.2) / 2)
    assert lp["by_seed"]["hi"] - lp["by_seed"]["lo"] > 0  # a spread: the seeds differ
    assert (tmp_path / "a" / "rows.jsonl").read_text() == "".join(
        json.dumps({**r, "settings_key": "k1"}) + "\n" for r in rows)  # nothing written back
    assert alone["by_seed"]["n"] == 5


def test_pooling_refuses_one_trial_twice_other_settings_and_a_missing_folder(tmp_path):
    rows = _rows(gap=1.0)
    a = _write_run(tmp_path / "a", rows)
    twice = _write_run(tmp_path / "twice", [r for r in rows if r["seed"] == 3])
    with pytest.raises(sep.DP4TLError, match=r"twice.rows.jsonl: seed 3, target warm, 0 % at "
                                             r"0 % is also in .*a.rows.jsonl: pooling would count "
                                             r"one trial twice"):
        sep.pool_rows([a, twice])
    other = _write_run(tmp_path / "other", [{**r, "seed": 20} for r in rows[:3]], key="k2")
    with pytest.raises(sep.DP4TLError, match=r"other.rows.jsonl: its rows ran with other settings"):
        sep.pool_rows([a, other])
    with pytest.raises(sep.DP4TLError, match=r"nowhere.rows.jsonl does not exist"):
        sep.pool_rows([a, tmp_path / "nowhere"])
    with pytest.raises(sep.DP4TLError, match="two or more"):
        sep.pool_rows([a])


def test_pooling_refuses_another_design_an_unfinished_seed_and_keyless_rows(tmp_path):
    """Pooled n must be what the header says (seeds x targets): another set of targets,
    methods, ratios or modes, or a seed without all its runs, is refused; so are rows without a
    settings key (whatever folder comes first) and a cut-short line, which is not repaired."""
    rows = _rows(gap=1.0)
    a = _write_run(tmp_path / "a", rows)
    later = [{**r, "seed": r["seed"] + 10} for r in rows]
    fewer = _write_run(tmp_path / "fewer", [r for r in later if r["target"] == "warm"])
    with pytest.raises(sep.DP4TLError, match=r"fewer.rows.jsonl is another design than .*a.rows"):
        sep.pool_rows([a, fewer])
    ff = _write_run(tmp_path / "ff", [{**r, "ff": 1.0} for r in later])
    with pytest.raises(sep.DP4TLError, match=r"ff.rows.jsonl is another design"):
        sep.pool_rows([a, ff])
    cut = _write_run(tmp_path / "cut", [r for r in later
                                        if not (r["seed"] == 12 and r["method"] == "lm")])
    with pytest.raises(sep.DP4TLError, match=r"cut.rows.jsonl: seed 12 lacks some of the runs"):
        sep.pool_rows([a, cut])
    keyless = tmp_path / "keyless"
    keyless.mkdir()
    for r in later:
        sep.append_row(keyless / "rows.jsonl", r)
    for order in ([keyless, a], [a, keyless]):
        with pytest.raises(sep.DP4TLError, match=r"keyless.rows.jsonl: 30 rows have no settings key"):
            sep.pool_rows(order)
    mixed = _write_run(tmp_path / "mixed", later[:3], key="k1")
    _write_run(mixed, later[3:], key="k2")
    with pytest.raises(sep.DP4TLError, match=r"mixed.rows.jsonl mixes rows of 2 settings"):
        sep.pool_rows([a, mixed])
    torn = _write_run(tmp_path / "torn", later)
    text = (torn / "rows.jsonl").read_text()
    (torn / "rows.jsonl").write_text(text + '{"seed": 1')
    with pytest.raises(sep.DP4TLError, match=r"torn.rows.jsonl: its last line was cut short"):
        sep.pool_rows([a, torn])
    assert (torn / "rows.jsonl").read_text() == text + '{"seed": 1'


def test_embedded_pool_command_writes_the_pooled_report(tmp_path, capsys, monkeypatch):
    from cli_runner import cli, one_line
    from typer.testing import CliRunner

    from ffcv_dp4tl.cli import app

    rows = _rows(gap=2.0)
    a = _write_run(tmp_path / "a", rows)
    b = _write_run(tmp_path / "b", [{**r, "seed": r["seed"] + 5} for r in rows])
    bench_md = tmp_path / "B.md"
    res = CliRunner().invoke(app, ["bench", "embedded-pool", str(a), str(b), "--out",
                                   str(tmp_path / "pooled"), "--report", str(bench_md)])
    assert res.exit_code == 0, res.output
    readme = (tmp_path / "pooled" / "README.md").read_text()
    assert "Pairs = seeds × targets (10 × 2)" in readme and "seeds 5–9" in readme
    assert "**better**" in bench_md.read_text() and "](pooled/paired.png)" in bench_md.read_text()
    assert not (tmp_path / "pooled" / "rows.jsonl").exists()
    code, _, err = cli(capsys, monkeypatch, "bench", "embedded-pool", a, a, "--out", tmp_path / "p2")
    one_line(code, err, f"{a} is given twice")
    before = (a / "README.md").exists()
    code, _, err = cli(capsys, monkeypatch, "bench", "embedded-pool", a, b, "--out", b)
    one_line(code, err, f"--out {b} is one of the pooled folders")
    assert not (b / "README.md").exists() and (a / "README.md").exists() == before


def test_render_rebuilds_an_embedded_report_from_its_rows_keeping_its_header(tmp_path, capsys,
                                                                              monkeypatch):
    """`bench render FOLDER` on a `bench embedded` (or pooled) folder rewrites README.md and
    summary.json from the rows its summary reported, with this version's tables (a test rule
    since changed), keeping the header the run wrote (machine, timing), and needs no data:
    before, only rerunning the benchmark (its data and runs) rewrote it."""
    from cli_runner import cli, one_line

    folder = _write_run(tmp_path / "e", _rows(gap=1.0))
    command = "dp4tl bench embedded --seeds 0,1,2,3,4 --out e"
    sep.write_outputs(sep.read_rows(folder / "rows.jsonl"), folder, command=command,
                      header=["- machine: the test's, 2 cores", "- this invocation: 3.0 min"])
    sep.append_row(folder / "rows.jsonl", {**_rows(gap=1.0)[0], "seed": 9, "settings_key": "k1"})
    readme = folder / "README.md"
    readme.write_text(readme.read_text().replace("| p Holm ", "").replace("**better**", "old"))
    run_date = "2026-12-04T04:09:00+00:00"
    s = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**s, "date": run_date}))
    note = "<!-- note -->\nRead beside the replicate.\n<!-- /note -->"
    readme.write_text(readme.read_text().replace("\n### Unpruned", f"\n{note}\n\n### Unpruned"))
    code, out, _ = cli(capsys, monkeypatch, "bench", "render", folder)
    assert code == 0, out
    text = readme.read_text()
    assert f"{note}\n\n### Unpruned" in text  # (a hand-written note is kept by a render)
    # each file keeps its own notes: README's do not leak into the published section
    bench_md = tmp_path / "B.md"
    assert cli(capsys, monkeypatch, "bench", "render", folder, "--report", bench_md)[0] == 0
    assert "Read beside the replicate" not in bench_md.read_text()
    mine = "<!-- note -->\nPublished reading.\n<!-- /note -->"
    bench_md.write_text(bench_md.read_text().replace("\n### Unpruned", f"\n{mine}\n\n### Unpruned"))
    assert cli(capsys, monkeypatch, "bench", "render", folder, "--report", bench_md)[0] == 0
    published = bench_md.read_text()
    assert published.count("Published reading.") == 1 and "Read beside" not in published
    assert readme.read_text().count("Read beside the replicate.") == 1
    text = readme.read_text()
    assert text.startswith("- machine: the test's, 2 cores\n- this invocation: 3.0 min\n"
                           f"- command: `{command}`\n")
    assert "| p Holm |" in text and "**better**" in text and text.count("- command:") == 1
    assert "Pairs = seeds × targets (5 × 2)" in text  # seed 9, not reported by the run, stays out
    summary = json.loads((folder / "summary.json").read_text())  # the run's date, not the render's
    assert summary["date"] == run_date and summary["rendered"] >= run_date
    pooled = tmp_path / "p"
    a = _write_run(tmp_path / "a", _rows(gap=1.0))
    b = _write_run(tmp_path / "b", [{**r, "seed": r["seed"] + 5} for r in _rows(gap=1.0)])
    assert cli(capsys, monkeypatch, "bench", "embedded-pool", a, b, "--out", pooled)[0] == 0
    (pooled / "README.md").write_text((pooled / "README.md").read_text().replace("p Holm", "x"))
    assert cli(capsys, monkeypatch, "bench", "render", pooled)[0] == 0
    assert "| p Holm |" in (pooled / "README.md").read_text()
    code, _, err = cli(capsys, monkeypatch, "bench", "render", folder, "--criterion", "best")
    one_line(code, err, "--criterion")


def test_a_pooled_report_over_folders_with_spaces_renders_again(tmp_path, capsys, monkeypatch):
    """The pooled report's recorded command quotes its folders, so `bench render` finds them
    again and the line can be pasted into a shell: it was split at every space, so a folder
    such as `runs/seed set 2` broke the render (final read)."""
    import shlex

    from cli_runner import cli

    a = _write_run(tmp_path / "seed set 1", _rows(gap=1.0))
    b = _write_run(tmp_path / "seed set 2", [{**r, "seed": r["seed"] + 5} for r in _rows(gap=1.0)])
    pooled = tmp_path / "pooled runs"
    assert cli(capsys, monkeypatch, "bench", "embedded-pool", a, b, "--out", pooled)[0] == 0
    command = json.loads((pooled / "summary.json").read_text())["command"]
    assert shlex.split(command)[3:5] == [str(a), str(b)]
    (pooled / "README.md").write_text((pooled / "README.md").read_text().replace("p Holm", "x"))
    code, out, err = cli(capsys, monkeypatch, "bench", "render", pooled)
    assert code == 0, err
    assert "| p Holm |" in (pooled / "README.md").read_text()


def test_pooling_one_folder_twice_names_that_folder(tmp_path):
    """One folder given twice (again, through a link or with a trailing "/") was refused as
    "one trial twice ... pool runs of disjoint --seeds", the wrong reason: the seeds were
    disjoint, the folder was the same (audit). The folder is named as given twice."""
    a = _write_run(tmp_path / "a", _rows(gap=1.0))
    (tmp_path / "link").symlink_to(a, target_is_directory=True)
    for again in (f"{a}/", tmp_path / "link"):
        with pytest.raises(sep.DP4TLError, match=f"^{re.escape(str(Path(again)))} is given twice "
                                                 f"\\(also as {re.escape(str(a))}\\): pass each"):
            sep.pool_rows([a, again])


def test_a_pooled_report_renders_its_own_folders_from_any_directory(tmp_path, capsys, monkeypatch):
    """A pool made with relative folders kept only its command as typed: `bench render` from
    another directory said "emb0/rows.jsonl does not exist: pass the --out folder of a `dp4tl
    bench embedded` run", and from one holding same-named folders rendered those, silently
    (audit). summary.json keeps the folders relative to the pool, so a render reads the same
    rows from anywhere; an older pool (no such record) is read from the current directory as
    before, and a folder missing there says so, and where to run the render from."""
    from cli_runner import cli, one_line

    made, elsewhere = tmp_path / "made", tmp_path / "elsewhere"
    _write_run(made / "a", _rows(gap=1.0))
    _write_run(made / "b", [{**r, "seed": r["seed"] + 5} for r in _rows(gap=1.0)])
    _write_run(elsewhere / "a", _rows(gap=-3.0))  # same names, other rows
    _write_run(elsewhere / "b", [{**r, "seed": r["seed"] + 5} for r in _rows(gap=-3.0)])
    monkeypatch.chdir(made)
    assert cli(capsys, monkeypatch, "bench", "embedded-pool", "a", "b", "--out", "pooled")[0] == 0
    pooled = made / "pooled"
    readme = (pooled / "README.md").read_text()
    assert json.loads((pooled / "summary.json").read_text())["pooled_folders"] == ["../a", "../b"]
    for cwd in (elsewhere, tmp_path):
        monkeypatch.chdir(cwd)
        (pooled / "README.md").write_text(readme.replace("p Holm", "x"))
        code, _, err = cli(capsys, monkeypatch, "bench", "render", pooled)
        assert code == 0, err
        assert (pooled / "README.md").read_text() == readme  # the pool's rows, not elsewhere's
    summary = json.loads((pooled / "summary.json").read_text())
    del summary["pooled_folders"]  # a pool recorded before the folders were kept
    (pooled / "summary.json").write_text(json.dumps(summary))
    code, _, err = cli(capsys, monkeypatch, "bench", "render", pooled)
    one_line(code, err, f"{pooled / 'summary.json'}: its pooled folder a has no rows.jsonl",
             f"resolved from the current directory ({tmp_path})",
             "run the render from the directory the pool was made in")
    monkeypatch.chdir(made)  # where it was made: read as before, and recorded from then on
    assert cli(capsys, monkeypatch, "bench", "render", pooled)[0] == 0
    assert json.loads((pooled / "summary.json").read_text())["pooled_folders"] == ["../a", "../b"]


def _rendered_run(folder):
    """A finished `bench embedded` folder of :func:`_rows` (rows.jsonl, summary.json, README)."""
    folder = _write_run(folder, _rows(gap=1.0))
    sep.write_outputs(sep.read_rows(folder / "rows.jsonl"), folder,
                      command="dp4tl bench embedded --seeds 0,1,2,3,4 --out e", header=[])
    return folder


def test_a_trial_on_two_lines_is_refused_by_the_run_the_render_and_the_pool(tmp_path, capsys,
                                                                             monkeypatch):
    """A copied line (or one of another run) changed the verdict: the summary kept the last
    line of a cell (LM's Δ −4.2 became +26.8 with an appended `"lp": 99.0`), a rerun of the
    same --out accepted it and published it, and a copied reference line turned "84.7 (one
    seed)" into "47.4 ± 52.8" (audit). One reader rule (read_rows) refuses it in the run, the
    render and the pool, naming both lines. A torn last line is still dropped and its run
    reruns: the rerun's row is no duplicate of it."""
    from cli_runner import cli, one_line

    def fake_run(cfg, log=print):
        return _lp_result(cfg, tmp_path)

    monkeypatch.setattr(sep, "run_pipeline", fake_run)
    monkeypatch.setattr(sep, "preflight", lambda cfgs, log: None)
    base = sep.PipelineConfig(source="synth:tiny")
    kw = dict(targets=["warm"], seeds=[0, 1], methods=["lm"], ratios=[0.8], finetune=["lp"],
              log=lambda m: None)
    run = tmp_path / "run"
    sep.run_separation(base, run, **kw)
    path = run / "rows.jsonl"
    whole = path.read_text()
    lines = whole.splitlines()
    lm = json.loads(lines[2])
    assert (lm["seed"], lm["method"]) == (0, "lm")
    sep.append_row(path, {**lm, "lp": 99.0})
    with pytest.raises(sep.DP4TLError, match=r"rows.jsonl lines 3 and 7 are both seed 0, target "
                                             r"warm, lm at 80 %: .*; delete one of the lines$"):
        sep.run_separation(base, run, **kw)
    # a kill mid-append of seed 1's LM row: the fragment goes, that run reruns, once
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:-20])
    calls = []
    monkeypatch.setattr(sep, "run_pipeline", lambda cfg, log=print: calls.append(
        (cfg.seed, cfg.method)) or fake_run(cfg))
    with pytest.warns(UserWarning, match="line 6 was cut short"):
        rows = sep.run_separation(base, run, **kw)
    assert calls == [(1, "lm")] and len(rows) == 6
    assert len(sep.read_rows(path, repair=False)) == 6 and path.read_text() == whole
    # the render and the pool read the same rule: a copied line, a reference one too
    e = _rendered_run(tmp_path / "e")
    good = (e / "rows.jsonl").read_text()
    first = good.splitlines()
    for n in (0, 2):  # the reference's line, LM's line
        (e / "rows.jsonl").write_text(good + first[n] + "\n")
        code, _, err = cli(capsys, monkeypatch, "bench", "render", e)
        one_line(code, err, f"{e / 'rows.jsonl'} lines {n + 1} and {len(first) + 1} are both",
                 "delete one of the lines")
        b = _write_run(tmp_path / f"b{n}", [{**r, "seed": r["seed"] + 5} for r in _rows(1.0)])
        with pytest.raises(sep.DP4TLError, match=r"e.rows.jsonl lines .* are both seed"):
            sep.pool_rows([b, e])


def test_render_refuses_rows_the_run_refuses_and_values_out_of_range(tmp_path, capsys,
                                                                     monkeypatch):
    """`bench render` accepted a line of another settings key (never paired, the README says;
    the run refuses it), a method's line of another rule (`"revision": 99`), an LP top-1 of 250
    and a kept share of 2.5 (shown as "250 %"), and published a verdict over them (audit): each
    is now one line naming the file and line."""
    from cli_runner import cli, one_line

    e = _rendered_run(tmp_path / "e")
    readme = (e / "README.md").read_text()
    good = (e / "rows.jsonl").read_text()
    lines = good.splitlines()
    lm = json.loads(lines[2])
    assert lm["method"] == "lm"
    for edit, needles in (({"settings_key": "k2"}, ("mixes rows of 2 settings",
                                                    "line 3's settings_key 'k2' is not line 1's")),
                          ({"revision": 99}, ("line 3: lm scored by revision 99",)),
                          ({"lp": 250.0}, ("line 3: field 'lp' must be a percentage in [0, 100]",)),
                          ({"kept_sample_fraction": 2.5},
                           ("line 3: field 'kept_sample_fraction' must be a number in [0, 1]",))):
        (e / "rows.jsonl").write_text("\n".join([*lines[:2], json.dumps({**lm, **edit}),
                                                 *lines[3:]]) + "\n")
        code, _, err = cli(capsys, monkeypatch, "bench", "render", e)
        one_line(code, err, str(e / "rows.jsonl"), *needles)
        assert (e / "README.md").read_text() == readme  # nothing published
    # two rules of one method in a file: the lines of both are named
    fm = [json.loads(x) for x in lines if json.loads(x)["method"] == "lm"][:2]
    (e / "rows.jsonl").write_text(good + "".join(
        json.dumps({**r, "method": "fm", "revision": v}) + "\n" for r, v in zip(fm, (0, 1))))
    with pytest.raises(sep.DP4TLError, match=r"lines 31 and 32: fm scored by two rules of it "
                                             r"\(revision 0 and 1\)"):
        sep.read_rows(e / "rows.jsonl")
    (e / "rows.jsonl").write_text(good)
    assert cli(capsys, monkeypatch, "bench", "render", e)[0] == 0


def test_a_malformed_truth_measure_is_refused_where_the_row_is_read(tmp_path, capsys,
                                                                    monkeypatch):
    """`truth` was only checked to be an object: `{"recall": "x"}` crashed the render with
    `TypeError: unsupported operand type(s) for +` in summarize (audit). Its measures are typed
    as selection_truth writes them (pipeline.truth.TRUTH_FIELDS) where the row is read."""
    from cli_runner import cli, one_line

    e = _rendered_run(tmp_path / "e")
    lines = (e / "rows.jsonl").read_text().splitlines()
    lm = json.loads(lines[2])
    for truth, needle in (({**lm["truth"], "recall": "x"},
                           "line 3 truth: field 'recall' must be a number in [0, 1], got 'x'"),
                          ({**lm["truth"], "related_samples": 1.5}, "field 'related_samples'"),
                          ({**lm["truth"], "kept_classes": -1}, "field 'kept_classes' must be a "
                                                                "non-negative integer"),
                          ({k: v for k, v in lm["truth"].items() if k != "chance"},
                           "line 3 truth lacks field 'chance'")):
        (e / "rows.jsonl").write_text("\n".join([*lines[:2], json.dumps({**lm, "truth": truth}),
                                                 *lines[3:]]) + "\n")
        code, _, err = cli(capsys, monkeypatch, "bench", "render", e)
        one_line(code, err, str(e / "rows.jsonl"), needle)


def test_the_forest_plot_of_a_run_without_intervals_warns_of_nothing(tmp_path):
    """A one-seed, one-target run has no interval to draw, and every run printed matplotlib's
    "No artists with labels found to put in legend" among its output (audit); a run with
    intervals still gets its legend."""
    none = {"mode": "lp", "ratio": 0.5, "method": "lm", "pooled": {"lo": None}, "by_seed": {}}
    some = {"mode": "lp", "ratio": 0.8, "method": "lm", "by_seed": {"lo": None},
            "pooled": {"mean": 1.0, "lo": 0.5, "hi": 1.5}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sep.plot_tests({"tests": [none]}, tmp_path / "a.png").stat().st_size > 0
        assert sep.plot_tests({"tests": [none, some]}, tmp_path / "b.png").stat().st_size > 0


def test_a_run_without_intervals_draws_its_mean_differences_not_an_empty_frame(tmp_path,
                                                                                saved_figures):
    """One seed x one target: no test has an interval, and paired.png was an empty 0–1 frame
    titled "... 95 % t intervals" (figures audit). It draws each row's mean difference without
    a bar and says why; rows without an interval beside rows with one are drawn too, and a
    run with no pair at all gets no figure but a line in the report."""
    rows = [{"seed": 0, "target": "warm", "method": m, "ratio": r, "lp": v, "ff": None}
            for m, r, v in (("random", 0.6, 50.0), ("lm", 0.6, 56.9), ("random", 0.8, 40.0),
                            ("lm", 0.8, 38.0))]
    summary, body = sep.write_outputs(rows, tmp_path, command="c", header=[])
    assert (tmp_path / "paired.png").is_file() and "](paired.png)" in body
    ax = saved_figures[-1].axes[0]
    points = sorted(float(line.get_xdata()[0]) for line in ax.lines
                    if len(line.get_xdata()) == 1 and line.get_marker() == "o")
    assert points == pytest.approx([-2.0, 6.9])
    assert ax.get_title().startswith("n = 1 seed × 1 target: ")  # (not "1 seeds × 1 targets")
    assert "too few pairs for intervals, mean differences only" in ax.get_title()
    assert "95 % t intervals" not in ax.get_title()
    # a row with an interval beside one without: both drawn, the title says which has no bar
    some = {"mode": "lp", "ratio": 0.8, "method": "lm", "by_seed": {"lo": None},
            "pooled": sep.paired_test([1.0, 2.0, 1.5])}
    lone = {"mode": "lp", "ratio": 0.6, "method": "lm", "by_seed": {"lo": None},
            "pooled": sep.paired_test([3.0])}
    sep.plot_tests({"tests": [lone, some], "seeds": [0, 1, 2], "targets": ["a"]},
                   tmp_path / "b.png")
    ax = saved_figures[-1].axes[0]
    assert len(ax.get_yticks()) == 2 and "no bar: no interval" in ax.get_title()
    # no pair at all (RANDOM's runs only): no figure, and the report says why
    empty = tmp_path / "empty"
    empty.mkdir()
    _, body = sep.write_outputs([r for r in rows if r["method"] == "random"]
                                + [{"seed": 1, "target": "warm", "method": "lm", "ratio": 0.6,
                                    "lp": 50.0, "ff": None}], empty, command="c", header=[])
    assert not (empty / "paired.png").exists() and "(No figure: no row has a paired" in body


def test_the_forest_plot_colours_each_row_by_the_verdict_the_table_prints(tmp_path, saved_figures):
    """Rows were green whenever the raw interval was above 0, though the table's verdict
    (Holm-adjusted) read "better, not after Holm's adjustment" (audit): each row now takes its
    verdict's colour, the key explains the colours, the test swatches are black, and the
    title says what n and the intervals are."""
    import matplotlib.colors as mc

    up = {"mean": 1.0, "lo": 0.5, "hi": 1.5, "p": 0.01}
    held = {"mode": "lp", "ratio": 0.5, "method": "lm", "pooled": up, "by_seed": up, "p_holm": 0.2}
    firm = {"mode": "lp", "ratio": 0.8, "method": "lm", "pooled": up, "by_seed": up, "p_holm": 0.01}
    summary = {"tests": [held, firm], "seeds": [0, 1, 2], "targets": ["a", "b"]}
    assert sep.verdict(up, up, 0.2) == "better, not after Holm's adjustment"
    sep.plot_tests(summary, tmp_path / "p.png")
    fig = saved_figures[-1]
    ax = fig.axes[0]
    rows = {}
    for line in ax.lines:
        y = line.get_ydata()
        if len(y) == 1 and line.get_marker() in ("o", "s"):
            rows.setdefault(round(float(y[0])), set()).add(mc.to_hex(line.get_color()))
    assert rows[0] == {mc.to_hex("tab:orange")} and rows[1] == {mc.to_hex("tab:green")}
    assert "n = 3 seeds × 2 targets, 95 % t intervals" in ax.get_title()
    key = fig.legends[0]  # outside the axes: the figure's
    words = [t.get_text() for t in key.get_texts()]
    assert words[:2] == ["seeds × targets", "by seed"]
    assert all(mc.to_hex(h.get_color()) == "#000000" for h in key.legend_handles[:2])
    assert any("not confirmed" in w for w in words) and any(w.startswith("better") for w in words)
    one = {**summary, "seeds": [0], "tests": [{**held, "by_seed": {"lo": None}}]}
    sep.plot_tests(one, tmp_path / "q.png")
    assert "one seed" in saved_figures[-1].axes[0].get_title()


def test_a_row_without_a_seed_test_gets_the_tables_verdict_in_the_plot(tmp_path, saved_figures):
    """A results file from before the seed-level test was recorded: the table read its row as
    "too few seeds to test" (an empty seed test) while the plot passed none and coloured it
    "better" (review). One rule gives both (``row_verdict``)."""
    import matplotlib.colors as mc

    pooled = sep.paired_test([1, 2, 1.5, 2.5, 1.2, 1.8])
    old = {"mode": "lp", "ratio": 0.8, "method": "lm", "pooled": pooled, "p_holm": 0.01}
    said = sep.row_verdict(old)
    assert said == sep.verdict(pooled, sep.paired_test([]), 0.01) != "better"
    sep.plot_tests({"tests": [old], "seeds": [0, 1, 2], "targets": ["a", "b"]}, tmp_path / "p.png")
    colours = {mc.to_hex(line.get_color()) for line in saved_figures[-1].axes[0].lines
               if len(line.get_ydata()) == 1 and line.get_marker() == "o"}
    assert colours == {mc.to_hex(sep.VERDICT_COLOURS[sep.verdict_kind(said)][0])}


def test_the_budget_reaches_every_run_and_its_rows_and_keys_them(tmp_path, monkeypatch):
    """`--budget samples` (FM keeps as many images as RANDOM) reaches every pipeline config the
    benchmark checks and runs, is written into each row, and keys them: a units run's folder is
    not resumed with samples (its FM kept more images than RANDOM)."""
    ran, checked = [], []
    monkeypatch.setattr(sep, "run_pipeline", lambda cfg, log=print: ran.append(cfg)
                        or _lp_result(cfg, tmp_path))
    monkeypatch.setattr(sep, "preflight", lambda cfgs, log: checked.extend(cfgs))
    samples = sep.PipelineConfig(source="synth:tiny", budget="samples")
    rows = sep.run_separation(samples, tmp_path / "s", targets=["warm"], seeds=[0, 1],
                              methods=["fm"], ratios=[0.8], finetune=["lp"], log=lambda m: None)
    assert len(ran) == 6 and len(checked) == 3
    assert {c.budget for c in ran + checked} == {"samples"}
    assert {r["budget"] for r in rows} == {"samples"}
    units = replace(samples, budget="units")
    assert sep.settings_key(units, ["lp"]) != sep.settings_key(samples, ["lp"])
    assert sep.settings_key(units, ["lp"]) == sep.settings_key(sep.PipelineConfig(
        source="synth:tiny"), ["lp"])  # the default: published keys unchanged
    ran.clear()
    with pytest.raises(sep.DP4TLError, match=r"6 of its 6 rows ran with other settings \(.*budget"):
        sep.run_separation(units, tmp_path / "s", targets=["warm"], seeds=[0, 1], methods=["fm"],
                           ratios=[0.8], finetune=["lp"], log=lambda m: None)
    assert ran == []


def test_the_embedded_command_passes_the_budget_and_its_header_names_it(tmp_path, monkeypatch):
    """`bench embedded --budget samples`: the base config has it, the command and the README's
    header name it (a reader sees which budget a table used); the default stays units, with
    the command it always had."""
    from typer.testing import CliRunner

    from ffcv_dp4tl.cli import app

    seen = {}
    monkeypatch.setattr(sep, "run_separation", lambda base, out, **kw: seen.update(base=base)
                        or _rows(gap=2.0))
    for extra, budget in (([], "units"), (["--budget", "samples"], "samples")):
        out = tmp_path / budget
        res = CliRunner().invoke(app, ["bench", "embedded", "--out", str(out), "--report", "",
                                       *extra])
        assert res.exit_code == 0, res.output
        assert seen["base"].budget == budget
        readme = (out / "README.md").read_text()
        assert f"\n- budget `{budget}`: " in readme
        command = json.loads((out / "summary.json").read_text())["command"]
        assert ("--budget samples" in command) == (budget == "samples")
        assert "--budget" not in command or "--device auto --budget samples " in command
        assert command.endswith(" --report ''")  # (as given: its default writes BENCHMARKS.md)


def test_pooling_runs_of_another_budget_is_refused_naming_the_folder(tmp_path):
    """FM's 80 % of clusters kept more images than RANDOM; with --budget samples the same: one
    pooled verdict over both would mix two questions. Two samples runs pool, and say so."""
    rows = _rows(gap=1.0)
    later = [{**r, "seed": r["seed"] + 10} for r in rows]
    units = _write_run(tmp_path / "units", rows)
    samples = _write_run(tmp_path / "samples", [{**r, "budget": "samples"} for r in later])
    for order in ([units, samples], [samples, units]):
        with pytest.raises(sep.DP4TLError, match=rf"{order[1].name}.rows.jsonl: its runs pruned "
                           rf"with --budget {order[1].name}, those of .*{order[0].name}.rows.jsonl "
                           rf"with --budget {order[0].name}"):
            sep.pool_rows(order)
    more = _write_run(tmp_path / "more", [{**r, "seed": r["seed"] + 20, "budget": "samples"}
                                          for r in rows])
    pooled, lines = sep.pool_rows([samples, more])
    assert len(pooled) == 60 and lines[0].endswith("seeds 10–14, `--budget samples`")


def test_render_publishes_an_embedded_run_under_its_own_section_title(tmp_path, capsys,
                                                                      monkeypatch):
    """`bench render FOLDER --report B.md --section TITLE`: a second embedded run (another
    budget) gets a section of its own, in place, beside the published one, which is left as it
    was; before, --section was ignored for an embedded folder and the render overwrote the
    published section (same title). Without --section the title stays the embedded one."""
    from cli_runner import cli

    folder = _write_run(tmp_path / "e", _rows(gap=1.0))
    sep.write_outputs(sep.read_rows(folder / "rows.jsonl"), folder, command="dp4tl bench "
                      "embedded --seeds 0,1,2,3,4 --out e", header=["- machine: the test's"])
    bench_md = tmp_path / "B.md"
    published = ("## Embedded benchmark (CPU): do LM and FM beat RANDOM?\n\nthe pooled verdict\n"
                 "\n## FM at the same number of images\n\n## Later\n\nafter\n")
    bench_md.write_text(published)
    title = "FM at the same number of images"
    assert cli(capsys, monkeypatch, "bench", "render", folder, "--report", bench_md,
               "--section", title)[0] == 0
    text = bench_md.read_text()
    assert text.startswith("## Embedded benchmark (CPU): do LM and FM beat RANDOM?\n\nthe pooled "
                           "verdict\n\n## FM at the same number of images\n\n- machine: the "
                           "test's\n")
    assert text.endswith("\n## Later\n\nafter\n") and text.count("### Verdict") == 1
    other = tmp_path / "C.md"
    assert cli(capsys, monkeypatch, "bench", "render", folder, "--report", other)[0] == 0
    assert "## Embedded benchmark (CPU): do LM and FM beat RANDOM?" in other.read_text()


def test_a_samples_budget_folder_renders_into_its_own_section_by_default(tmp_path, capsys,
                                                                          monkeypatch):
    """Without --section, `bench render` (and `bench embedded`, `embedded-pool`) of a
    `--budget samples` folder wrote the units benchmark's section, "Embedded benchmark (CPU): do
    LM and FM beat RANDOM?", over the published pooled verdict (review): its budget has a
    section of its own, named by its methods."""
    from cli_runner import cli

    from ffcv_dp4tl.cli.bench import EMBEDDED_SECTION, embedded_section

    rows = [{**r, "budget": "samples"} for r in _rows(gap=1.0)]
    folder = _write_run(tmp_path / "s", rows)
    sep.write_outputs(sep.read_rows(folder / "rows.jsonl"), folder, command="dp4tl bench "
                      "embedded --budget samples --out s", header=["- machine: the test's"])
    bench_md = tmp_path / "B.md"
    bench_md.write_text(f"## {EMBEDDED_SECTION}\n\nthe pooled verdict\n")
    assert cli(capsys, monkeypatch, "bench", "render", folder, "--report", bench_md)[0] == 0
    text = bench_md.read_text()
    assert text.startswith(f"## {EMBEDDED_SECTION}\n\nthe pooled verdict\n")  # (left as it was)
    methods = sorted({r["method"] for r in rows} - {"random", sep.REFERENCE})
    title = embedded_section("samples", methods)
    assert title.startswith("Embedded benchmark, same number of images (CPU): ")
    assert f"\n## {title}\n" in text and text.count("### Verdict") == 1
    assert embedded_section("samples", ["random", "fm"]) == \
        "Embedded benchmark, same number of images (CPU): does FM beat RANDOM?"
    assert embedded_section("units", ["fm"]) == EMBEDDED_SECTION
