"""``dp4tl bench surrogates`` (paper Tab. A6 / Fig. 5) end to end at the smallest scale: two
surrogates (RN-20s and the RN-18 reference), one ratio, LP only, 1-epoch width-8 recipes."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ffcv_dp4tl.errors import DP4TLError
from ffcv_dp4tl.bench.surrogates import (header_lines, parse_arch_overrides, report_text,
                                         run_surrogate_bench)
from ffcv_dp4tl.pipeline.config import PipelineConfig
from ffcv_dp4tl.training.models import create_model, num_params
from tiny_data import FINETUNE, SYNTH, TRAIN


def _stage_runs(runs_root: Path, name: str = "*") -> int:
    """How many times stages called ``name`` ran in ``runs_root``: each run leaves one
    ``.segment-*`` record in its folder (a cached stage adds none)."""
    return len(list(Path(runs_root).glob(f"{name}-*/.segment-*")))


def _base(tmp_path, data_root) -> PipelineConfig:
    train = (*TRAIN, "train.keep_epochs=[]")
    return PipelineConfig(source=SYNTH, target="", fmt="wds", device="cpu",
                          data_root=data_root, runs_root=tmp_path / "runs",
                          overrides=train, surrogate_overrides=train, finetune_overrides=FINETUNE)


@pytest.mark.slow
def test_end_to_end_two_surrogates(tmp_path, data_root):
    logs: list[str] = []
    out = tmp_path / "report"
    t = run_surrogate_bench(_base(tmp_path, data_root), out, archs=["resnet20s"], ratio=0.5,
                            arch_overrides={"resnet20s": ["model.width=16"]}, command="pytest",
                            notes=["shrunk for the test"], log=logs.append)
    assert t["archs"] == ["resnet20s", "resnet18"]  # the reference is added
    assert t["seeds"] == [0]  # the pipeline's one seed when none is given
    runs = tmp_path / "runs"
    reference = [d for d in runs.glob("prune-*")  # the 0 % reference's mask: one, run once
                 if json.loads((d / "DONE.json").read_text())["ratio"] == 0.0]
    assert len(reference) == 1 and len(list(reference[0].glob(".segment-*"))) == 1
    assert _stage_runs(runs, "surrogate") == 2  # one surrogate per arch
    ref, rn20 = t["runs"]["resnet18"], t["runs"]["resnet20s"]
    # the reference's selection overlaps itself fully
    assert ref["overlap"] == 1.0 and ref["by_ratio"]["0.5"]["overlap"]["common"] == 4
    a, b = rn20["by_ratio"]["0.5"]["kept_classes"], ref["by_ratio"]["0.5"]["kept_classes"]
    assert len(a) == len(b) == 4  # half of the 8 source classes
    assert rn20["overlap"] == pytest.approx(len(set(a) & set(b)) / len(b))
    # params: the models as run (8 source classes, the recipes' knobs) and as in the paper
    kw = dict(blurpool=False, small_input=True, stem_stride=1)
    assert rn20["params"] == num_params(create_model("resnet20s", 8, width=16, **kw))
    assert ref["params"] == num_params(create_model("resnet18", 8, width=8, **kw))
    assert rn20["params_paper"] == 334072 and ref["params_paper"] == 11689512
    assert "model.width=16" in rn20["surrogate_overrides"]
    for rec in (ref, rn20):
        assert 0.0 <= rec["surrogate"]["top1_val"] <= 1.0
        acc = rec["by_ratio"]["0.5"]["lp_top1"]
        assert 0.0 <= acc <= 100.0
        win = rec["winners"]["lp"]
        assert win["ratio"] == (0.5 if acc >= t["reference_acc"]["lp"] else 0.0)
    md = (out / "report.md").read_text()
    assert f"| RN-18 (reference) | {ref['params'] / 1e6:.3f} | 11.690 | 11.690 |" in md
    assert "| 100.0 | 100.0 |" in md  # RN-18's overlap with itself, ours and the paper's
    assert "- note: shrunk for the test" in md and "- command: `pytest`" in md
    assert f"| {100 * rn20['overlap']:.1f} | 89.3 |" in md  # ours beside the paper's
    assert (out / "surrogates.png").stat().st_size > 10_000
    saved = json.loads((out / "results.json").read_text())
    assert saved["runs"]["resnet18"]["overlap"] == 1.0 and saved["command"] == "pytest"


def test_arch_overrides_and_refusals(tmp_path, data_root):
    assert parse_arch_overrides(["vgg2:model.width=32", "vgg2:train.epochs=2", "rn:a.b=1"]) == \
        {"vgg2": ["model.width=32", "train.epochs=2"], "rn": ["a.b=1"]}
    with pytest.raises(DP4TLError, match="ARCH:SECTION.KEY=VALUE"):
        parse_arch_overrides(["model.width=32"])
    with pytest.raises(DP4TLError, match="unknown model"):
        run_surrogate_bench(_base(tmp_path, data_root), archs=["resnet21s"], log=lambda s: None)
    with pytest.raises(DP4TLError, match="not among the archs"):
        run_surrogate_bench(_base(tmp_path, data_root), archs=["vgg2"], arch_overrides={"vgg4": ["a.b=1"]},
                            log=lambda s: None)
    with pytest.raises(DP4TLError, match=r"\(0, 1\)"):
        run_surrogate_bench(_base(tmp_path, data_root), archs=["vgg2"], ratio=0.0, log=lambda s: None)


def test_every_runs_checks_come_before_the_first_run(tmp_path, data_root):
    """A bad --set-arch value was refused only after the 0 % reference, the RN-18 surrogate
    and its LM pretraining had trained, and "[surrogates] run 1/3" was said before a bad
    --target was refused (audit): every (arch x ratio) run is checked first, nothing runs."""
    base = _base(tmp_path, data_root)
    for bad, kw, why in (
            (base, {"arch_overrides": {"resnet20s": ["model.bogus=1"]}},
             r"LM with surrogate resnet20s: .*unknown key model\.bogus"),
            (base, {"arch_overrides": {"resnet20s": ["model.width=abc"]}},
             r"LM with surrogate resnet20s: .*model\.width must be int"),
            (replace(base, target="nope"), {}, "unknown target 'nope'")):
        logs: list[str] = []
        with pytest.raises(DP4TLError, match=why):
            run_surrogate_bench(bad, tmp_path / "out", archs=["resnet20s"], log=logs.append, **kw)
        assert not any(line.startswith("[surrogates]") for line in logs), logs
        assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_a_model_arch_override_is_refused_before_any_work(tmp_path, data_root):
    """``--set-surrogate model.arch=vgg2`` (or ``--set-arch resnet20s:model.arch=vgg2``) came
    after the row's own ``model.arch`` and won: every row (or RN-20s') was the same VGG-2,
    labelled RN-20s and RN-18 (audit). The architectures are --archs'; one line, nothing run."""
    base = _base(tmp_path, data_root)
    logs: list[str] = []
    with pytest.raises(DP4TLError, match=r"^--set-surrogate model\.arch=vgg2: .*--archs"):
        run_surrogate_bench(replace(base, surrogate_overrides=(*base.surrogate_overrides,
                                                               "model.arch=vgg2")),
                            archs=["resnet20s"], log=logs.append)
    with pytest.raises(DP4TLError, match=r"^--set-arch resnet20s:model\.arch = vgg2: .*--archs"):
        run_surrogate_bench(base, archs=["resnet20s"], log=logs.append,
                            arch_overrides={"resnet20s": ["model.arch = vgg2"]})
    assert logs == [] and not (tmp_path / "runs").exists()


def test_the_header_prints_seeds_as_the_other_benches():
    """The live table's config holds the PipelineConfig's tuple: the header said
    ``seeds (0,)`` (audit); it says ``seeds [0, 1]``, as a table read back from results.json and
    the other benches do. The published report re-renders the same, that line aside."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "surrogates"
    t = json.loads((docs / "results.json").read_text())
    assert report_text(t) == (docs / "report.md").read_text().replace("seeds (0,)", "seeds [0]")
    live = {**t, "seeds": [0, 1], "config": {**t["config"], "seeds": (0, 1)}}
    assert header_lines(live)[3].endswith("; seeds [0, 1]")
    old = {**t, "config": {**t["config"], "seeds": (0, 1)}}  # written before "seeds" was kept
    assert header_lines(old)[3].endswith("; seeds [0, 1]")


def test_the_plot_says_one_seed_and_names_the_papers_stars(tmp_path, saved_figures):
    """The trajectory's title did not say it was one seed, and the paper's stars had no names
    (audit); close labels stand apart."""
    from ffcv_dp4tl.bench import surrogates as sur

    t = json.loads((Path(__file__).parents[2] / "docs/surrogates/results.json").read_text())
    sur.plot(t, tmp_path / "s.png")
    a1, a2 = saved_figures[-1].axes
    assert a1.get_title().endswith("(1 seed)") and a1.get_xlabel() == "source classes removed (%)"
    names = {x.get_text() for x in a2.texts if x.get_color() == "tab:orange"}
    assert names == {p["label"] for a, p in t["paper"].items() if a in t["archs"]}
    places = {x.get_text(): x.get_position() for x in a2.texts if x.get_color() == "tab:orange"}
    assert places["RN-44s"] != places["RN-56s"]  # (close: one right, one below)


def test_the_log_axis_labels_are_plain_numbers(tmp_path, saved_figures):
    """Texts are drawn as written (no ``$...$`` math: names come from files others wrote), and
    the log axis's default labels are mathtext: they read ``$\\mathdefault{10^{1}}$`` (review).
    The axis labels its ticks as plain numbers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ffcv_dp4tl.bench import surrogates as sur

    t = json.loads((Path(__file__).parents[2] / "docs/surrogates/results.json").read_text())
    sur.plot(t, tmp_path / "s.png")
    fig = saved_figures[-1]
    FigureCanvasAgg(fig).draw()
    a2 = fig.axes[1]
    shown = [x.get_text() for x in a2.get_xticklabels(which="both") if x.get_text()]
    assert shown and not any("$" in x or "mathdefault" in x for x in shown), shown
    assert {"1", "10"} <= set(shown)
