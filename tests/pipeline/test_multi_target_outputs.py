"""What several targets (and a reversed order) show in a run's outputs: the gallery's ground
truth covers every target, results.json keeps the order the targets were given in, a target
given twice under two paths is refused, the recipes line names each target's recipes, and a
target from another synth build gets no ground truth. Tiny built data, no training."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ffcv_dp4tl.contracts import StageResult
from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.fsutil import atomic_write_json
from ffcv_dp4tl.pipeline.result import PipelineResult, StagePlace, stage_label
from ffcv_dp4tl.pipeline.stages import StageRun
from ffcv_dp4tl.scoring.ground_truth import load_ground_truth


@pytest.fixture(scope="module")
def two(data_root) -> Path:
    """:data:`tiny_data.SYNTH_TWO_TARGETS` in the session's data root (``targets/warm``,
    ``targets/paper``; the ablation tests use the same build)."""
    from tiny_data import SYNTH_TWO_TARGETS

    from ffcv_dp4tl.pipeline.resolve import ensure_built

    return ensure_built(SYNTH_TWO_TARGETS, data_root, lambda s: None)


def _mask(root: Path, out: Path, classes) -> Path:
    from ffcv_dp4tl.data.manifest import load_manifest
    from ffcv_dp4tl.data.masks import mask_from_classes, save_mask

    split = load_manifest(root / "source").split("train")
    return save_mask(out, mask_from_classes(split, list(classes)))


# ----------------------------------------------------------------------------- gallery
def test_the_gallery_of_two_targets_marks_classes_related_to_either(two, tmp_path):
    """A class related to the second target only is drawn "mapped"/"related", not "unrelated",
    and the title's related-samples share is report.md's (selection_truth over both)."""
    from ffcv_dp4tl.pipeline.gallery import gallery_plan, selection_gallery
    from ffcv_dp4tl.pipeline.truth import selection_truth

    src, warm, paper = two / "source", two / "targets" / "warm", two / "targets" / "paper"
    first = load_ground_truth(src, warm)
    both = load_ground_truth(src, [warm, paper])
    only_second = [k for k in range(both.num_classes) if both.related[k] and not first.related[k]]
    assert only_second, "the two targets' related superclasses should differ"
    mask = _mask(two, tmp_path / "m.npy", only_second)
    plan = gallery_plan(src, [warm, paper], mask, top=8, per_class=1, title="LM at ratio 0.5")
    assert plan.source_rows and all(mark in ("  ✓ mapped", "  related")
                                    for _, mark, _, _ in plan.source_rows)
    truth = selection_truth(src, [warm, paper], None, mask)
    assert f"related samples {100 * truth['related_samples']:.0f} %" in plan.title
    assert "targets warm, paper" in plan.title and plan.target_heading == "targets warm, paper"
    assert [label.split(":")[0] for label, _, _ in plan.target_rows[:2]] == ["warm", "paper"]
    png = selection_gallery(src, [warm, paper], mask, tmp_path / "g.png", top=3, per_class=1)
    assert png.read_bytes()[:4] == b"\x89PNG"
    # one target: as before (its manifest name, no target prefix on the rows)
    one = gallery_plan(src, warm, mask, top=2, per_class=1)
    assert one.target_heading == "target synth-warm" and "targets" not in one.title
    assert ":" not in one.target_rows[0][0]


# ------------------------------------------------------------------- ground truth match
def test_a_target_from_another_synth_build_gets_no_ground_truth(small_synth, tmp_path_factory):
    """synth:bench's ``warm`` beside a synth:tiny source shares the name, not the answer."""
    from tiny_data import build_synth

    from ffcv_dp4tl.data.manifest import load_manifest
    from ffcv_dp4tl.pipeline.truth import selection_truth

    src = small_synth / "source"
    spec = load_manifest(src).contract.extra["synth"]  # the build's canonical SOURCE text
    other = build_synth(spec + ",seed=3", tmp_path_factory.mktemp("other_synth"))
    assert load_ground_truth(src, other / "targets" / "paper") is None
    assert selection_truth(src, [other / "targets" / "paper"], None, None) is None
    assert load_ground_truth(src, [small_synth / "targets" / "paper",
                                   other / "targets" / "paper"]) is None
    # the source's own target, by folder, by a copy of it, or by name, keeps its truth
    copy = tmp_path_factory.mktemp("copy") / "paper-copy"
    shutil.copytree(small_synth / "targets" / "paper", copy)
    for t in (small_synth / "targets" / "paper", copy, "paper"):
        assert load_ground_truth(src, t) is not None


# -------------------------------------------------------------------- the same target twice
def test_one_target_given_twice_under_two_paths_is_refused(two, data_root, tmp_path):
    from tiny_data import SYNTH_TWO_TARGETS

    from ffcv_dp4tl.pipeline.config import PipelineConfig, validate
    from ffcv_dp4tl.pipeline.resolve import resolve

    copy = tmp_path / "paper-copy"
    shutil.copytree(two / "targets" / "paper", copy)
    cfg = PipelineConfig(source=SYNTH_TWO_TARGETS, targets=("paper", str(copy)), fmt="wds",
                         device="cpu", k=4, finetune=("lp",), data_root=data_root,
                         runs_root=tmp_path / "runs")
    with pytest.raises(DP4TLError, match=r"targets 'paper' and '.*paper-copy' are the same "
                                         r"dataset .*list each target once") as e:
        resolve(cfg, validate(cfg), lambda s: None)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ results.json order
def _multi_result(targets: dict[str, str], weights: list[float]) -> PipelineResult:
    res = PipelineResult(config={"method": "lm", "ratio": 0.5, "order": "ordered"},
                         source="src", target=next(iter(targets.values())), protocol="fast",
                         recipes={"surrogate": "s", "pretrain": "p", "lp": "lp_a", "ff": "ff_a"},
                         seeds=[0], targets=dict(targets), target_weights=list(weights))
    res.per_target = {n: {} for n in targets}
    return res


def test_results_json_keeps_the_target_order_and_weights(tmp_path):
    """``--target warm,blur --target-weights 3,1``: after a save and a load, warm is still the
    first target and weighs 3 (results.json is written with sorted keys)."""
    from ffcv_dp4tl.pipeline.report import write_report

    res = _multi_result({"warm": "/d/warm", "blur": "/d/blur"}, [3.0, 1.0])
    write_report(res, tmp_path / "a")
    back = PipelineResult.from_json(json.loads((tmp_path / "a" / "results.json").read_text()))
    assert list(back.targets) == ["warm", "blur"] and back.target_weights == [3.0, 1.0]
    assert back.target_names == ["warm", "blur"]
    write_report(back, tmp_path / "b")
    assert "weights 3, 1): warm `/d/warm`, blur `/d/blur`" in (tmp_path / "b" / "report.md").read_text()


def test_the_result_line_names_each_target_and_the_spread_over_seeds():
    """With several targets and seeds the `[result]` line gives each target, in the order
    given, its mean ± std over the seeds per mode."""
    from ffcv_dp4tl.pipeline.report import result_line, summarize_seeds

    res = _multi_result({"warm": "/d/warm", "blur": "/d/blur"}, [1.0, 1.0])
    res.seeds = [0, 1]
    for name, base in (("warm", 0.70), ("blur", 0.50)):
        for seed, bump in ((0, 0.0), (1, 0.02)):
            label = stage_label("finetune", first_seed=seed == 0, seed=seed, target=name, mode="lp")
            res.add(StagePlace(label, "finetune", seed=seed, target=name, mode="lp"),
                    StageRun(StageResult(label, "finetune", 2.0, {"test_top1": base + bump}),
                             Path("/d"), ran=True))
        res.per_target[name] = summarize_seeds(res, ["lp"], name)
    line = result_line(res)
    assert ("; target warm test top-1 LP 71.00 ± 1.41 % (2 seeds); target blur test top-1 LP "
            "51.00 ± 1.41 % (2 seeds); stages 8.0 s") in line


def test_a_stage_lookup_with_a_typo_is_refused_and_the_seed_defaults_to_the_first():
    """`res.finetune("LP", seed=0)` and `res.find("pretrian")` returned None, as for a stage the
    run lacks, and `res.finetune("lp")` needed a seed on one-seed runs (Python API review)."""
    res = _multi_result({"warm": "/d/warm", "blur": "/d/blur"}, [1.0, 1.0])
    res.seeds = [3, 4]
    for seed in (3, 4):
        label = stage_label("finetune", first_seed=seed == 3, seed=seed, target="warm", mode="lp")
        res.add(StagePlace(label, "finetune", seed=seed, target="warm", mode="lp"),
                StageRun(StageResult(label, "finetune", 1.0, {"test_top1": seed / 10}), Path("/d"),
                         ran=True))
    assert res.finetune("lp", target="warm").values["test_top1"] == 0.3  # the first seed's
    assert res.finetune("lp", 4, "warm").values["test_top1"] == 0.4
    assert res.finetune("ff", target="warm") is None  # a mode this run did not finetune
    for call, match in ((lambda: res.finetune("LP", target="warm"), "mode must be one of lp, ff"),
                        (lambda: res.find("pretrian"), "no pipeline stage has role 'pretrian'"),
                        (lambda: res.finetune("lp", target="cold"), "'cold' is not one of this "
                                                                    r"run's targets \(warm, blur\)"),
                        (lambda: res.finetune("lp", 7, "warm"), r"seed 7 is not one of this "
                                                                r"run's seeds \(3, 4\)")):
        with pytest.raises(DP4TLError, match=match):
            call()


def test_results_json_of_older_versions_get_the_run_order_back(tmp_path):
    """Files written before the fix hold ``targets`` as an object with sorted keys; the order
    is read back from the stages (a list, in run order)."""
    data = {"format_version": 1, "config": {}, "source": "s", "target": "/d/warm",
            "protocol": "fast", "recipes": {}, "stages": {},
            "stage_places": [StagePlace("finetune-lp@warm", "finetune", 0, "warm", "lp").to_json(),
                             StagePlace("finetune-lp@blur", "finetune", 0, "blur", "lp").to_json()],
            "targets": {"warm": "/d/warm", "blur": "/d/blur"}, "target_weights": [3.0, 1.0]}
    atomic_write_json(tmp_path / "r.json", data)
    back = PipelineResult.from_json(json.loads((tmp_path / "r.json").read_text()))
    assert list(back.targets) == ["warm", "blur"]
    with pytest.raises(Exception, match="list of {name, dir} objects"):
        PipelineResult.from_json({**data, "targets": ["warm"]}, "r.json")


def test_the_kept_line_and_title_say_what_was_kept(tmp_path):
    """report.md said "kept: - samples, 768 train samples" for every sample-wise method, and
    titled the unpruned reference "RANDOM at ratio 0.0" (review)."""
    from ffcv_dp4tl.contracts.stage import StageResult
    from ffcv_dp4tl.pipeline.report import run_title, write_report
    from ffcv_dp4tl.pipeline.result import StagePlace
    from ffcv_dp4tl.pipeline.stages import StageRun

    assert run_title({"method": "random", "ratio": 0.0}) == \
        "the whole source (ratio 0: nothing pruned)"
    for unit, kept, line in (("sample", [], "- kept: 768 train samples = 0.400 of the train "
                                             "samples (ratio 0.6 of samples;"),
                             ("class", [3, 7], "- kept: 2 classes, 768 train samples = 0.400")):
        res = _multi_result({"warm": "/d/warm"}, [1.0])
        res.targets = {}
        res.add(StagePlace("prune", "prune"), StageRun(StageResult(
            "prune", "prune", 1.0, {"unit": unit, "kept_units": kept, "train_kept": 768,
                                    "kept_sample_fraction": 0.4, "ratio": 0.6}), tmp_path, True))
        write_report(res, tmp_path / unit)
        assert line in (tmp_path / unit / "report.md").read_text()


@pytest.mark.parametrize("length", ["epochs", "steps"])
def test_the_report_says_how_long_a_pruned_set_was_pretrained(tmp_path, length):
    """``--pretrain-length steps``: report.md gives the epochs the kept samples trained (the
    stage's last epoch index, from 0, plus one: it said 24 for a 25-epoch run); the paper's
    fixed epochs say nothing."""
    from ffcv_dp4tl.contracts.stage import StageResult
    from ffcv_dp4tl.pipeline.report import write_report
    from ffcv_dp4tl.pipeline.result import StagePlace
    from ffcv_dp4tl.pipeline.stages import StageRun

    res = _multi_result({"warm": "/d/warm"}, [1.0])
    res.targets = {}
    res.config["pretrain_length"] = length
    res.add(StagePlace("pretrain", "pretrain", seed=0), StageRun(StageResult(
        "pretrain", "train", 60.0, {"epoch": 24, "top1_val": 0.9}), tmp_path, True))
    write_report(res, tmp_path / length)
    text = (tmp_path / length / "report.md").read_text()
    assert ("- pretraining length: `steps` — 25 epochs on the kept samples" in text) == (length == "steps")
    assert ("pretraining length" in text) == (length == "steps")


# ------------------------------------------------------------------------ recipes line
def test_the_recipes_line_names_each_targets_recipes_when_they_differ(tmp_path):
    from ffcv_dp4tl.pipeline.report import recipes_line, write_report

    res = _multi_result({"warm": "/d/warm", "food101": "/d/food"}, [1.0, 1.0])
    res.target_recipes = {"warm": {"lp": "lp_a", "ff": "ff_a"},
                          "food101": {"lp": "lp_a", "ff": "ff_sgd"}}
    write_report(res, tmp_path)
    line = recipes_line(PipelineResult.from_json(
        json.loads((tmp_path / "results.json").read_text())))
    assert line == ("- recipes: surrogate=`s`, pretrain=`p`; `warm`: lp=`lp_a`, ff=`ff_a`; "
                    "`food101`: lp=`lp_a`, ff=`ff_sgd`")
    assert line in (tmp_path / "report.md").read_text()
    res.target_recipes["food101"]["ff"] = "ff_a"  # the same recipes: one list, as before
    assert recipes_line(res) == "- recipes: surrogate=`s`, pretrain=`p`, lp=`lp_a`, ff=`ff_a`"


def test_names_and_paths_in_report_md_make_no_markup(tmp_path):
    """report.md pastes paths and names others chose (a shared dataset folder, a recipe file, a
    target's name): a backtick in one closed its `...` span and the rest was live HTML in any
    Markdown viewer (audit). Rendered by a CommonMark parser, the report holds no tag or link
    but its own, and each value reads as written."""
    from markdown_it import MarkdownIt

    from ffcv_dp4tl.pipeline.report import write_report

    evil = "/d/warm` <img src=x onerror=alert(1)> [x](javascript:alert(1)) `"
    res = _multi_result({"warm": evil, "b<script>": "/d/blur"}, [1.0, 1.0])
    res.source = "src`<script>alert(2)</script>`"
    res.recipes["pretrain"] = "my`<b>recipe</b>.toml"
    write_report(res, tmp_path)
    html = MarkdownIt("commonmark").enable("table").render((tmp_path / "report.md").read_text())
    assert "<img" not in html and "<script" not in html and "<b>" not in html
    assert "href" not in html
    assert "<code>/d/warm` &lt;img src=x onerror=alert(1)&gt; [x](javascript:alert(1)) `</code>" \
        in html
    assert "<code>src`&lt;script&gt;alert(2)&lt;/script&gt;`</code>" in html


# ---------------------------------------------------------------------- reversed order
def test_a_reversed_run_is_titled_and_its_recall_explained(tmp_path):
    """The gallery's title is report.md's (``LM (reversed)``), and the ranking's top-k recall
    is labelled as the ranking's, with a note that a reversed run kept the other end."""
    from ffcv_dp4tl.pipeline.report import run_title
    from ffcv_dp4tl.pipeline.truth import truth_lines

    assert run_title({"method": "lm", "order": "reversed", "ratio": 0.6}) == \
        "LM (reversed) at ratio 0.6"
    t = {"recall": 1.0, "recall_chance": 0.25, "mapped_classes": 2, "mapped_kept": 0.0,
         "related_samples": 0.0, "related_classes": 0.0, "kept_classes": 4, "chance": 0.25}
    rev = "\n".join(truth_lines(t, "reversed"))
    assert "ranking's top-k recall" in rev and "kept the other end" in rev
    assert "kept the other end" not in "\n".join(truth_lines(t))
