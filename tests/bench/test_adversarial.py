"""``dp4tl bench adversarial`` (paper Tab. 5) end to end at the smallest scale: DENSE,
DENSE-ADV, LM and LM-ADV with 1-epoch width-8 recipes on a tiny synthetic source."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.bench.adversarial import adv_overrides, run_adversarial
from ffcv_dp4tl.pipeline.config import PipelineConfig
from tiny_data import FINETUNE, SYNTH, TRAIN


def _stage_runs(runs_root: Path, name: str = "*") -> int:
    """How many times stages called ``name`` ran in ``runs_root``: each run leaves one
    ``.segment-*`` record in its folder (a cached stage adds none)."""
    return len(list(Path(runs_root).glob(f"{name}-*/.segment-*")))


@pytest.mark.slow
def test_bench_adversarial_cli_end_to_end(tmp_path, data_root):
    from typer.testing import CliRunner

    from ffcv_dp4tl.cli import app

    out, bench_md = tmp_path / "docs" / "adversarial", tmp_path / "BENCHMARKS.md"
    bench_md.write_text("# Benchmarks\n\n## Other\n\nkeep me\n")
    args = ["bench", "adversarial", "--data", SYNTH, "--ratio", "0.5", "--steps", "2",
            "--eps", "8/255", "--format", "wds", "--device", "cpu", "--k", "4",
            "--data-root", str(data_root), "--runs-root", str(tmp_path / "runs"),
            "--out", str(out), "--report", str(bench_md)]
    for flag, overs in (("--set", TRAIN), ("--set-surrogate", TRAIN), ("--set-finetune", FINETUNE)):
        for o in overs:
            args += [flag, o]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    t = json.loads((out / "results.json").read_text())
    rows = {r["variant"]: r for r in t["rows"]}
    assert list(rows) == ["DENSE", "DENSE-ADV", "LM", "LM-ADV"]
    assert [rows[v]["objective"] for v in rows] == ["supervised", "adversarial"] * 2
    assert "adv.steps=2" in t["adv"] and "adv.eps=8/255" in t["adv"]
    assert f"adv.step_size={2 * (8 / 255) / 2!r}" in t["adv"]  # default: 2 eps / steps
    assert rows["DENSE"]["pretrain_s_x_dense"] == pytest.approx(1.0)
    # one selection (surrogate, scores, mask) serves LM and LM-ADV; DENSE keeps every sample
    assert rows["LM"]["train_kept"] == rows["LM-ADV"]["train_kept"] < rows["DENSE"]["train_kept"]
    assert _stage_runs(tmp_path / "runs", "surrogate") == 1
    assert rows["LM"]["selection_s"] > 0 and rows["DENSE"]["selection_s"] == 0
    for r in rows.values():
        assert r["total_s"][0] == pytest.approx(r["pretrain_s"][0] + r["selection_s"])
        assert 0 <= r["lp"]["final"][0] <= 100 and r["pretrain_cpu_s"][0] > 0
    # (no timing assertion: at 6 steps per run, setup and evaluation dominate the attack's cost)
    report = (out / "report.md").read_text()
    assert "| DENSE-ADV | N/A |" in report and "| LM-ADV | 50 |" in report
    assert "Paper Tab. 5" in report and "dp4tl bench adversarial" in report
    text = bench_md.read_text()
    assert "keep me" in text and "## Adversarial pretraining (Tab. 5)" in text
    # a rerun reuses every stage
    ran_before = _stage_runs(tmp_path / "runs")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and _stage_runs(tmp_path / "runs") == ran_before


def test_bad_bench_inputs_fail_before_work(tmp_path):
    base = PipelineConfig(source=SYNTH, data_root=tmp_path / "d", runs_root=tmp_path / "r")
    with pytest.raises(DP4TLError, match="--ratio"):
        run_adversarial(base, ratio=0.0)
    with pytest.raises(DP4TLError, match="--steps"):
        adv_overrides(steps=0)
    with pytest.raises(DP4TLError, match="--eps"):
        adv_overrides(eps="three")
    # in this command's words, not the recipe key adv.eps the user never wrote (review)
    with pytest.raises(DP4TLError, match=r"^--eps 2 is in \[0, 1\] pixel units for linf; for "
                                         r"2/255 pass --eps 2/255$"):
        adv_overrides(eps="2")
    with pytest.raises(DP4TLError, match=r"^--eps 0: the ADV models need a radius > 0"):
        adv_overrides(eps="0")
    assert "adv.eps=2" in adv_overrides(eps="2", norm="l2")  # (an L2 radius may exceed 1)
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()


def test_a_bad_adv_recipe_is_refused_before_dense_trains(tmp_path, monkeypatch, data_root):
    """The ADV models' recipe (here eps 2 > 1 for linf) and the method are checked for all four
    models before DENSE trains; the message names the bench's options."""
    import ffcv_dp4tl.bench.adversarial as adv

    monkeypatch.setattr(adv, "run_pipeline", lambda *a, **k: pytest.fail("a model trained"))
    base = PipelineConfig(source=SYNTH, data_root=data_root, runs_root=tmp_path / "r",
                          overrides=("train.batch_size=16",))
    with pytest.raises(DP4TLError, match=r"the ADV models' recipe \(--steps, --eps.*adv.eps"):
        run_adversarial(base, adv=("adv.steps=3", "adv.eps=2", "adv.step_size=0.1",
                                   "adv.norm=linf"), log=lambda m: None)
    with pytest.raises(DP4TLError, match="nosuch"):
        run_adversarial(base, method="nosuch", log=lambda m: None)
    with pytest.raises(DP4TLError, match="--seeds is empty"):
        run_adversarial(base, seeds=(), log=lambda m: None)
    assert not (tmp_path / "r").exists()


def test_the_four_models_carry_the_bench_settings(tmp_path, monkeypatch):
    """DENSE, DENSE-ADV, LM, LM-ADV: each with the bench's seeds and finetuning modes, the ADV
    overrides only on the ADV models, and the method's --opt options only on the pruned ones
    (DENSE is RANDOM at 0 %, which has no such options)."""
    import ffcv_dp4tl.bench.adversarial as adv

    class Stop(Exception):
        pass

    seen = []

    def stop(*a, **k):
        raise Stop

    logs, said = [], []
    said_for = []  # (the ADV runs: named in their refusals)

    def checks(items, log):
        for item in items:
            what, cfg = item if isinstance(item, tuple) else ("", item)
            seen.append(cfg), said_for.append(what)
        logs.append(log)

    monkeypatch.setattr(adv, "preflight", checks)
    monkeypatch.setattr(adv, "run_pipeline", stop)
    base = PipelineConfig(source=SYNTH, finetune=("lp", "ff"), scorer_options=("a=1",),
                          overrides=("train.epochs=1",))
    with pytest.raises(Stop):
        run_adversarial(base, ratio=0.6, seeds=(0, 2), finetune=("lp",), method="lm",
                        adv=adv_overrides(steps=2, eps="2/255"), log=said.append)
    # the second check is quiet: the run's '[recipes] ...' line was printed twice
    del said[:]
    for log in logs:
        log("[recipes] fast recipes")
    assert said == ["[recipes] fast recipes"]
    # checked before the first trains: the plain models, then the ADV ones
    assert [(c.method, c.ratio) for c in seen] == [("random", 0.0), ("lm", 0.6), ("random", 0.0), ("lm", 0.6)]
    assert [bool(w) and "--step-size" in w for w in said_for] == [False, False, True, True]
    assert all(c.finetune == ("lp",) and c.seeds == (0, 2) for c in seen)
    assert [c.scorer_options for c in seen] == [(), ("a=1",), (), ("a=1",)]
    adv_set = [any(o.startswith("adv.steps=2") for o in c.overrides) for c in seen]
    assert adv_set == [False, False, True, True]
    assert all(c.overrides[0] == "train.epochs=1" for c in seen)


@pytest.mark.parametrize("protocol, extra, units", [("paper-code", [], "normalized"),
                                                    ("fast", [], "pixel"),
                                                    ("paper-code", ["--units", "pixel"], "pixel")])
def test_paper_code_bench_runs_the_authors_attack(monkeypatch, tmp_path, protocol, extra, units):
    """``--protocol paper-code`` must train the ADV models with the authors' released attack
    (steps and random start in normalised units), i.e. the recipe the paper-code ADV file
    spells out; it used to run pixel-unit steps (about 4x stronger) under that name."""
    from typer.testing import CliRunner

    import ffcv_dp4tl.bench.adversarial as adv_mod
    from ffcv_dp4tl.cli import app
    from ffcv_dp4tl.training.recipe import load_recipe

    seen = {}

    def fake_run(base, out, **kw):
        seen["adv"] = kw["adv"]
        raise SystemExit(0)

    monkeypatch.setattr(adv_mod, "run_adversarial", fake_run)
    CliRunner().invoke(app, ["bench", "adversarial", "--protocol", protocol, "--out",
                             str(tmp_path / "o"), *extra])
    assert load_recipe("paper_code/resnet101_16ep", list(seen["adv"])).adv.units == units
    if units == "normalized":
        assert load_recipe("paper_code/resnet101_16ep", list(seen["adv"])).adv == \
            load_recipe("paper_code/resnet101_16ep_adv").adv


def test_the_report_header_names_where_the_attack_steps():
    """The header described every attack as pixel-space PGD, also the paper-code one whose steps
    and random start are on the normalised image."""
    from ffcv_dp4tl.bench.adversarial import _attack_space

    assert _attack_space(adv_overrides()) == "PGD in [0, 1] pixel space"
    assert "normalised image" in _attack_space(adv_overrides(units="normalized"))


def test_the_report_names_the_pruned_models_by_their_method():
    """With --method random the pruned models' rows read "LM" and "LM-ADV", beside the paper's
    LM rows, and only the header said RANDOM (audit): the rows, the effects and the time line
    name RANDOM; the paper's table keeps LM; an LM table reads as before."""
    from ffcv_dp4tl.bench.adversarial import markdown_tables

    t = json.loads((Path(__file__).parents[2] / "docs" / "adversarial" / "results.json").read_text())
    assert t["method"] == "lm"
    lm = markdown_tables(t)
    t["method"] = "random"
    text = markdown_tables(t)
    ours, paper = text.split("Paper Tab. 5")
    assert "| RANDOM | 60 |" in ours and "| RANDOM-ADV | 60 |" in ours
    assert "LM" not in ours.replace("(paper: LM-ADV", "")  # (the paper's figure keeps its name)
    assert "RANDOM-ADV − RANDOM" in ours and "time: RANDOM-ADV total" in ours
    assert paper == lm.split("Paper Tab. 5")[1] and "| LM-ADV | 70 |" in paper
    assert "| LM | 60 |" in lm and "LM-ADV − LM" in lm
