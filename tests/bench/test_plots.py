"""The cost table's figures (:mod:`ffcv_dp4tl.bench.plots`), read back from the Figure objects
saved: colours, titles, line data, legend places, y-limits."""
from __future__ import annotations

import matplotlib.colors as mc
import pytest
from ffcv_dp4tl.bench import plots


def _cost(method: str, ratio: float, pretrain: float) -> dict:
    return {"method": method, "ratio": ratio, "pretrain_s": pretrain, "pretrain_cpu_s": 2 * pretrain,
            "total_s": pretrain + 5, "reduction": 1 - (pretrain + 5) / 100}


def table(**config) -> dict:
    """A small cost table: LM at 40 % and 60 %, FM and EL2N (slower) at 60 % only."""
    ref = {"method": "0 %", "ratio": 0.0, "pretrain_s": 100.0, "pretrain_cpu_s": 200.0,
           "total_s": 100.0, "reduction": 0.0}
    acc = {"methods": {"lm": {"0.4": [90.0, 2.0], "0.6": [99.0, 3.0]},
                       "fm": {"0.6": [85.0, 1.0]}, "el2n": {"0.6": [80.0, 1.0]}},
           "reference": [88.0, 1.5]}
    return {"methods": ["lm", "fm", "el2n"], "seeds": [0, 1, 2], "ratios": [0.0, 0.4, 0.6],
            "finetune": ["lp"], "accuracy": {"lp": acc}, "surrogate_s": 5.0,
            "config": {"target": "warm", "budget": "units", "pretrain_length": "epochs", **config},
            "cost": [ref, _cost("lm", 0.4, 60.0), _cost("lm", 0.6, 40.0), _cost("fm", 0.6, 90.0),
                     _cost("el2n", 0.6, 95.0)]}


def _line(ax, label_start: str):
    return next(line for line in ax.get_lines() if line.get_label().startswith(label_start))


def _outside(fig, legend, ax) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    r = FigureCanvasAgg(fig).get_renderer()  # (a closed figure's canvas draws nothing)
    fig.draw(r)
    return not legend.get_window_extent(r).overlaps(ax.get_window_extent(r))


def test_the_pretrain_only_mean_is_over_the_methods_run_at_every_ratio(tmp_path, saved_figures):
    """The mean averaged whichever methods ran at each ratio (LM alone at 40 %, three at 60 %)
    and drew a bump no method has (audit): it is over LM alone here, and says so."""
    plots.plot_cost(table(), tmp_path / "cost.png")
    left = saved_figures[-1].axes[0]
    line = _line(left, "pretrain only")
    assert list(line.get_ydata()) == [100.0, 60.0, 40.0]
    assert "LM" in line.get_label() and "every ratio" in line.get_label()


def test_a_steps_matched_run_draws_no_paper_or_ideal_line(tmp_path, saved_figures):
    """``--pretrain-length steps``: the paper's reductions and "ideal (= ratio)" cannot apply,
    and the report said totals are "about (1 − r) + …" (audit)."""
    plots.plot_cost(table(pretrain_length="steps"), tmp_path / "cost.png")
    fig = saved_figures[-1]
    labels = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert not any(x.startswith(("paper", "ideal")) for x in labels)
    assert all("(steps matched)" in ax.get_title() for ax in fig.axes)
    plots.plot_cost(table(), tmp_path / "cost.png")
    assert any(line.get_label().startswith("paper") for line in saved_figures[-1].axes[1].get_lines())


def test_the_cost_legends_sit_outside_the_axes_and_ours_is_not_the_papers_black(tmp_path,
                                                                               saved_figures):
    """The left legend (``center right``) hid data markers, and "ours, pretrain only" and "paper
    Tab. 3" were both black (audit)."""
    plots.plot_cost(table(), tmp_path / "cost.png")
    fig = saved_figures[-1]
    for ax in fig.axes:
        legend = ax.get_legend() or fig.legends[0]
        assert _outside(fig, legend, ax)
    ours, paper = _line(fig.axes[1], "ours, pretrain only, wall"), _line(fig.axes[1], "paper")
    assert mc.to_hex(ours.get_color()) != "#000000"
    assert mc.to_hex(paper.get_color()) == mc.to_hex("darkgray")  # (not RANDOM's tab:gray)
    assert mc.to_hex(paper.get_color()) != mc.to_hex(ours.get_color())


def test_the_ratio_axis_says_what_is_removed(tmp_path, saved_figures):
    """"pruning ratio (%)" did not say of what (audit): classes, clusters or samples."""
    assert plots.ratio_axis({"methods": ["lm"]}) == "source classes removed (%)"
    assert plots.ratio_axis({"methods": ["fm", "fm[k=16]"]}) == "source clusters removed (%)"
    assert plots.ratio_axis({"methods": ["lm"], "config": {"budget": "samples"}}) == \
        "source samples removed (%)"
    assert plots.ratio_axis({"methods": ["lm", "fm"]}).startswith("source units removed (%)\n(")
    plots.plot_cost(table(), tmp_path / "cost.png")
    assert all(ax.get_xlabel().startswith("source units removed (%)\n(")
               for ax in saved_figures[-1].axes)


def _bars_top(ax) -> float:
    from matplotlib.collections import LineCollection

    return max(y for c in ax.collections if isinstance(c, LineCollection)
               for seg in c.get_segments() for _, y in seg)


def test_accuracy_error_bars_say_what_they_are_and_the_reference_band_is_shaded(tmp_path,
                                                                             saved_figures):
    """The bars were unexplained, the 0 % reference an exact line, a bar crossed 100 %, and the
    "0 %: X" label sat on the last ratio's column (audit)."""
    plots.plot_accuracy(table(), tmp_path / "acc.png")
    fig = saved_figures[-1]
    ax = fig.axes[0]
    assert "mean ± sample std over n = 3 seeds" in fig._suptitle.get_text()
    band = [p for p in ax.patches if p.get_alpha() is not None]
    assert len(band) == 1
    ys = [y for _, y in band[0].get_patch_transform().transform(band[0].get_path().vertices)]
    assert min(ys) == pytest.approx(86.5) and max(ys) == pytest.approx(89.5)
    assert _bars_top(ax) <= 100.0 and ax.get_ylim()[1] <= 101.0
    assert not [x for x in ax.texts if x.get_text().startswith("0 %")]
    assert any(x.get_text() == "0 % (unpruned source): LP 88.0" for x in fig.legends[0].get_texts())


def test_side_by_side_offsets_are_among_the_methods_at_that_ratio(tmp_path, saved_figures):
    """The shift was computed over all methods, so LM alone at 40 % stood off its tick (audit):
    a method alone at a ratio sits on it, and the spread is capped."""
    plots.plot_accuracy(table(), tmp_path / "acc.png")
    ax = saved_figures[-1].axes[0]
    lm = next(c for c in ax.containers if c.get_label() == "LM").lines[0]
    assert list(lm.get_xdata()) == [40.0, pytest.approx(59.4)]
    many = {f"m{i}": {"0.6": [1.0, 0.1]} for i in range(40)}
    dx = plots.offsets(list(many), {"methods": many})
    assert max(abs(v) for v in dx.values()) == pytest.approx(plots.MAX_OFFSET)


def test_the_targets_legend_wraps_like_the_accuracy_legend(tmp_path, saved_figures):
    """``ncol=len(labels)`` ran a legend of many methods past the figure's edge (audit)."""
    methods = ["lm", "fm", "el2n", "grand", "forget", "moderate", "random", "sp", "ssp", "fm_sup"]
    acc = {"methods": {m: {"0.6": [80.0, 1.0]} for m in methods}, "reference": [88.0, 1.0]}
    t = {**table(), "methods": methods, "targets": {"a": {"accuracy": {"lp": acc}}}}
    plots.plot_targets(t, tmp_path / "targets.png")
    fig = saved_figures[-1]
    legend = fig.legends[0]
    assert legend._ncols <= int(fig.get_figwidth() / 1.1) < len(methods)
    assert "mean ± sample std over n = 3 seeds" in fig._suptitle.get_text()


def test_a_reversed_variant_has_an_open_marker(tmp_path, saved_figures):
    """"LM" and "LM (reversed)" differed only by dash (audit): the reversed one's marker is
    open, in the accuracy and the cost plots."""
    t = table()
    t["methods"] = ["lm", "lm[reversed]"]
    t["accuracy"]["lp"]["methods"] = {m: {"0.4": [90.0, 1.0]} for m in t["methods"]}
    t["cost"] = [t["cost"][0], _cost("lm", 0.4, 60.0), _cost("lm[reversed]", 0.4, 60.0)]
    plots.plot_accuracy(t, tmp_path / "acc.png")
    fills = {c.get_label(): c.lines[0].get_fillstyle() for c in saved_figures[-1].axes[0].containers}
    assert fills == {"LM": "full", "LM (reversed)": "none"}
    plots.plot_cost(t, tmp_path / "cost.png")
    lines = {x.get_label(): x.get_fillstyle() for x in saved_figures[-1].axes[0].get_lines()}
    assert lines["LM"] == "full" and lines["LM (reversed)"] == "none"


def test_a_long_legend_entry_gets_fewer_columns(tmp_path, saved_figures):
    """The 0 % entry, with its values, is longer than ~1.1 in: at 4 columns on one panel the
    legend ran past both edges of the figure."""
    t = table()
    t["methods"] = ["fm[k=16]", "fm[k=32]", "fm[k=64]"]
    t["accuracy"]["lp"]["methods"] = {m: {"0.4": [90.0, 1.0]} for m in t["methods"]}
    plots.plot_accuracy(t, tmp_path / "acc.png")
    fig = saved_figures[-1]
    assert fig.legends[0]._ncols == 2


def test_names_with_dollar_signs_are_drawn_as_written(tmp_path, saved_figures):
    """A target's name comes from its manifest (and results.json): a ``$`` in it was read as
    math, and ``cost_$5_to_$10`` failed to parse when the PNG was saved (``bench render``
    ended in a traceback; review). Every text is drawn as written."""
    t = table(target="cost_$5_to_$10 $\\foo$")
    plots.plot_accuracy(t, tmp_path / "f.png")
    fig = saved_figures[-1]
    from matplotlib.text import Text

    texts = [x for x in fig.findobj(Text) if "$" in x.get_text()]
    assert texts and not any(x.get_parse_math() for x in texts)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def _with_targets() -> dict:
    t = table()
    return {**t, "targets": {"a": {"accuracy": t["accuracy"]}, "b": {"accuracy": t["accuracy"]}}}


@pytest.mark.parametrize("draw,t", [(plots.plot_accuracy, table()), (plots.plot_cost, table()),
                                    (plots.plot_targets, _with_targets())],
                         ids=["accuracy", "cost", "targets"])
def test_a_symlink_at_the_figures_name_is_replaced_and_its_target_untouched(tmp_path, draw, t):
    """A results folder copied from someone else may hold a link where a figure goes: saving
    through it (``fig.savefig(path)``) replaced whatever file the link named (audit). Each
    figure replaces the link with a PNG of its own, and the file it named keeps its bytes."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    path = tmp_path / "figure.png"
    path.symlink_to(victim)
    draw(t, path)
    assert victim.read_bytes() == b"precious\n"
    assert not path.is_symlink() and path.read_bytes()[:4] == b"\x89PNG"


def _best(t: dict) -> dict:
    """``t`` judged by ``--criterion best``: best-epoch values 1 point above the final ones."""
    acc = t["accuracy"]["lp"]
    best = {"reference": [acc["reference"][0] + 1, acc["reference"][1]],
            "methods": {m: {r: [v[0] + 1, v[1]] for r, v in by.items()}
                        for m, by in acc["methods"].items()}}
    return {**t, "criterion": "best", "accuracy_best": {"lp": best}}


def _ys(ax, label: str) -> list[float]:
    return list(next(c for c in ax.containers if c.get_label() == label).lines[0].get_ydata())


def test_accuracy_plots_show_the_criterions_epoch_and_name_it(tmp_path, saved_figures):
    """With ``--criterion best`` the winner table judged best-epoch values while accuracy.png
    plotted the final epoch's, and no plot said which epoch it showed (figures audit)."""
    plots.plot_accuracy(table(), tmp_path / "acc.png")
    fig = saved_figures[-1]
    assert _ys(fig.axes[0], "LM") == [90.0, 99.0]
    assert "final epoch" in fig.axes[0].get_ylabel() and "final-epoch" in fig._suptitle.get_text()
    plots.plot_accuracy(_best(table()), tmp_path / "acc.png")
    fig = saved_figures[-1]
    assert _ys(fig.axes[0], "LM") == [91.0, 100.0]
    assert "best epoch" in fig.axes[0].get_ylabel() and "best-epoch" in fig._suptitle.get_text()
    assert any(x.get_text() == "0 % (unpruned source): LP 89.0" for x in fig.legends[0].get_texts())
    t = _best(table())
    t["targets"] = {"a": {"accuracy": t["accuracy"], "accuracy_best": t["accuracy_best"]}}
    plots.plot_targets(t, tmp_path / "targets.png")
    ax = saved_figures[-1].axes[0]
    assert _ys(ax, "LM") == [91.0, 100.0] and "best epoch" in ax.get_ylabel()


def test_the_cost_axis_names_the_runs_device(tmp_path, saved_figures):
    """"wall seconds (CPU)" was written on GPU runs too (figures audit)."""
    plots.plot_cost({**table(device="cuda"), "machine": {"gpu": "NVIDIA H200"}}, tmp_path / "c.png")
    label = saved_figures[-1].axes[0].get_ylabel()
    assert "GPU (NVIDIA H200)" in label and "CPU" not in label
    plots.plot_cost({**table(device="cpu"), "machine": {"gpu": "NVIDIA H200"}}, tmp_path / "c.png")
    assert "CPU" in saved_figures[-1].axes[0].get_ylabel()


def test_a_targets_path_is_shortened_in_the_panel_titles(tmp_path, saved_figures):
    """An absolute path as the target made the LP/FF titles run into each other (figures
    audit): its last part, cut to a bounded length."""
    plots.plot_accuracy(table(target="/tmp/some/where/long/data/synth-tiny/targets/warm/"),
                        tmp_path / "acc.png")
    assert saved_figures[-1].axes[0].get_title() == "LP on target `warm`"
    long = "a_target_name_far_longer_than_any_panel_title_has_room_for"
    plots.plot_accuracy(table(target=long), tmp_path / "acc.png")
    title = saved_figures[-1].axes[0].get_title()
    assert title.endswith("…`") and len(title) <= len("LP on target ``") + plots.TITLE_NAME_CHARS
    t = {**table(), "targets": {f"/abs/path/to/{long}": {"accuracy": table()["accuracy"]}}}
    plots.plot_targets(t, tmp_path / "targets.png")
    assert "/abs/" not in saved_figures[-1].axes[0].get_title()


def test_one_ratio_keeps_its_points_on_their_tick(tmp_path, saved_figures):
    """At one ratio the points' ±0.3 offsets were autoscaled to the panel's width, so two
    methods looked as if they sat at ≈57 % and ≈63 % under one "60" tick (figures audit)."""
    t = table()
    t["ratios"], t["methods"] = [0.0, 0.6], ["lm", "fm"]
    t["accuracy"]["lp"]["methods"] = {"lm": {"0.6": [90.0, 1.0]}, "fm": {"0.6": [85.0, 1.0]}}
    plots.plot_accuracy(t, tmp_path / "acc.png")
    ax = saved_figures[-1].axes[0]
    lo, hi = ax.get_xlim()
    assert hi - lo >= 20 and lo < 60 < hi and abs((lo + hi) / 2 - 60) < 1
    plots.plot_accuracy(table(), tmp_path / "acc.png")  # (several ratios: autoscaled as before)
    assert saved_figures[-1].axes[0].get_xlim()[1] - saved_figures[-1].axes[0].get_xlim()[0] > 20


def test_the_reference_band_is_in_the_legend_and_the_targets_panels_give_the_reference(
        tmp_path, saved_figures):
    """The grey ±std band of the 0 % reference was in no legend, and accuracy-targets.png did
    not give the reference values that accuracy.png's legend gives (figures audit)."""
    plots.plot_accuracy(table(), tmp_path / "acc.png")
    band = "0 % ± sample std over seeds"
    assert band in [x.get_text() for x in saved_figures[-1].legends[0].get_texts()]
    plots.plot_targets(_with_targets(), tmp_path / "targets.png")
    fig = saved_figures[-1]
    assert band in [x.get_text() for x in fig.legends[0].get_texts()]
    assert all("0 %: 88.0" in ax.get_title() for ax in fig.axes)


def test_the_cost_plots_cpu_curve_one_method_and_ideal_labels(tmp_path, saved_figures):
    """The CPU-s curve was brown beside LM's red; a one-method table's legend said "mean of all
    methods"; "ideal (= ratio)" took a share of classes for a share of samples (figures
    audit)."""
    from ffcv_dp4tl.bench.markdown import method_style

    plots.plot_cost(table(), tmp_path / "c.png")
    right = saved_figures[-1].axes[1]
    cpu = _line(right, "ours, pretrain only, CPU-s")
    ours = mc.to_rgb(cpu.get_color())
    for m in ("lm", "fm", "random", "moderate", "el2n", "grand", "sp", "ssp", "forget"):
        theirs = mc.to_rgb(method_style(m).color)  # (brown was 0.19 from LM's red)
        assert sum((a - b) ** 2 for a, b in zip(ours, theirs)) ** 0.5 > 0.35, m
    assert mc.to_hex(cpu.get_color()) != mc.to_hex(_line(right, "ours, pretrain only, wall")
                                                   .get_color())
    # no kept-sample fractions: the line is the ratio, and says it is not a share of samples
    ratio_line = next(x for x in right.get_lines() if "ratio" in x.get_label()
                      and "paper" not in x.get_label())
    assert not ratio_line.get_label().startswith("ideal")
    t = table()
    t["methods"] = ["lm"]
    t["cost"] = [t["cost"][0], {**_cost("lm", 0.4, 60.0), "kept_sample_fraction": 0.5},
                 {**_cost("lm", 0.6, 40.0), "kept_sample_fraction": 0.3}]
    plots.plot_cost(t, tmp_path / "c.png")
    left, right = saved_figures[-1].axes
    labels = [x.get_label() for ax in (left, right) for x in ax.get_lines()]
    assert not any("mean" in x for x in labels)
    assert "pretrain only (LM)" in labels and "ours, pretrain only, wall (LM)" in labels
    ideal = _line(right, "ideal")
    assert "samples removed" in ideal.get_label()
    assert list(ideal.get_ydata()) == pytest.approx([0.0, 50.0, 70.0])
