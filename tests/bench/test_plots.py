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
