"""The cost table's plots: accuracy vs pruning ratio (Fig. 4), per target (Fig. A5), and cost /
time reduction vs ratio beside the paper's Tab. 3."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..figures import save, subplots
from ..pipeline.report import mean_std
from ..reporting import literal_text, ran_on
from ..scoring.registry import UNIT_PLURAL, get_scorer, is_registered
from .markdown import method_dash, method_style, no_surrogate_labels, target_order
from .stats import CRITERIA, PAPER_TOTAL_HOURS, paper_reduction
from .variants import base_method


def ratio_axis(t: dict[str, Any]) -> str:
    """The x label of a ratio axis: what the ratio removes (source classes, clusters or samples,
    from ``--budget`` and the methods' units), as "pruning ratio" did not say."""
    if (t.get("config") or {}).get("budget") == "samples":
        return "source samples removed (%)"
    units = {get_scorer(base_method(m)).unit if is_registered(base_method(m)) else None
             for m in t.get("methods") or ()}
    if None in units or not units:
        return "share of source units removed (%)"
    words = [UNIT_PLURAL[u] for u in sorted(units)]
    if len(words) == 1:
        return f"source {words[0]} removed (%)"
    return f"source units removed (%)\n({' / '.join(words)}, by method)"  # (fits one panel)


REFERENCE_LABEL = "0 % (unpruned source)"
#: the legend entry of the reference's ± std band (drawn over several seeds)
BAND_LABEL = "0 % ± sample std over seeds"
#: most points a method's curve moves sideways (its error bars apart from its neighbours')
MAX_OFFSET = 2.5
#: the narrowest ratio range (percentage points) an accuracy panel shows: one ratio autoscaled
#: to its points' ±0.3 offsets spread methods at one tick as if they sat at 57 % and 63 %
MIN_SPAN = 20.0
#: the most characters of a target's name in a panel title (absolute paths ran into the next)
TITLE_NAME_CHARS = 24
#: which epoch's top-1 each ``--criterion`` plots, for the y label: the tables' words for it
#: (:data:`~.stats.CRITERIA`, "final-epoch" → "final epoch")
EPOCH_WORDS = {k: v.replace("-", " ", 1) for k, v in CRITERIA.items()}


def spread(t: dict[str, Any]) -> str:
    """What the error bars are, for a title: the one wording of every accuracy plot."""
    n = len(t["seeds"])
    return (f"mean ± sample std over n = {n} seeds" if n > 1 else
            "one seed: no error bars")


def criterion(t: dict[str, Any]) -> str:
    """The epoch whose top-1 the accuracy plots show: the table's ``criterion`` (``final`` for
    results written before it), so the figures show the numbers the winner table judged."""
    return t.get("criterion") or "final"


def accuracy_of(t: dict[str, Any]) -> dict[str, Any]:
    """``t``'s accuracy table (``accuracy`` or, of a target, its entry in ``targets``) at the
    criterion's epoch: ``accuracy_best`` under ``best`` (the plots read ``accuracy``, the
    final epoch's, whatever the tables judged: figures audit)."""
    return t["accuracy_best"] if criterion(t) == "best" else t["accuracy"]


def short_name(name: str, limit: int = TITLE_NAME_CHARS) -> str:
    """A target's name for a panel title: a path's last part, cut to ``limit`` characters with
    an ellipsis (the report's header has it in full)."""
    text = str(name).rstrip("/\\")
    text = text.rsplit("/", 1)[-1] if "/" in text else text
    return text if len(text) <= limit else text[:limit - 1] + "…"


@literal_text
def plot_accuracy(t: dict[str, Any], path: Path) -> None:
    """Fig. 4 style: x = pruning ratio %, y = target test top-1 % (the epoch of the table's
    ``criterion``), LP and FF side by side."""
    accuracy = accuracy_of(t)
    modes = [m for m in t["finetune"] if accuracy.get(m, {}).get("methods")]
    fig, axes = subplots(1, max(1, len(modes)), figsize=(5.2 * max(1, len(modes)), 4.2),
                             squeeze=False)
    refs = []
    for ax, mode in zip(axes[0], modes):
        acc = accuracy[mode]
        _curves(ax, t, acc)
        if _reference(ax, t, acc):
            refs.append(f"{mode.upper()} {acc['reference'][0]:.1f}")
        ax.set_title(f"{mode.upper()} on target `{short_name(_first_target(t))}`")
        _axes(ax, t)
    handles, labels = axes[0][0].get_legend_handles_labels()
    # the 0 % values go in the legend: a label on the line sat on the last ratio's column
    labels = [f"{x}: {', '.join(refs)}" if x == REFERENCE_LABEL and refs else x for x in labels]
    rows = _legend_below(fig, handles, labels)
    fig.suptitle("Transfer accuracy vs source pruning ratio (cf. paper Fig. 4)\n"
                 f"{criterion(t)}-epoch top-1; error bars: {spread(t)}", fontsize=10)
    fig.tight_layout(rect=(0, 0.045 + 0.05 * rows, 1, 1))
    save(fig, path, dpi=110)


def _legend_below(fig, handles: list, labels: list[str]) -> int:
    """The figure's legend below its panels, in as many columns as fit its width (an entry:
    ~0.45 in of handle and ~0.065 in per character of its longest label, at least 1.1 in),
    then more rows (the figure grows); returns the rows."""
    entry = max(1.1, 0.45 + 0.065 * max((len(x) for x in labels), default=0))
    ncol = max(1, min(len(labels), int(fig.get_figwidth() / entry)))
    rows = -(-len(labels) // ncol)
    fig.set_figheight(fig.get_figheight() + 0.22 * (rows - 1))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    return rows


def _axes(ax, t: dict[str, Any]) -> None:
    """An accuracy panel's axes: what the ratio removes (at least :data:`MIN_SPAN` points
    wide, centred on the ratios), top-1 at the criterion's epoch up to 100 % (and a margin)."""
    ax.set_xlabel(ratio_axis(t))
    ax.set_ylabel(f"target test top-1 (%)\n{EPOCH_WORDS[criterion(t)]}")
    ticks = [100 * r for r in t["ratios"] if r > 0]
    ax.set_xticks(ticks)
    lo, hi = ax.get_xlim()
    if ticks and hi - lo < MIN_SPAN:
        mid = (min(ticks) + max(ticks)) / 2
        ax.set_xlim(mid - MIN_SPAN / 2, mid + MIN_SPAN / 2)
    if ax.get_ylim()[1] > 101:  # (just above 100: a mean or reference at 100 % stays seen)
        ax.set_ylim(top=101)
    ax.grid(alpha=0.3)


def _reference(ax, t: dict[str, Any], acc: dict[str, Any]) -> bool:
    """The unpruned reference: its mean as a dashed line and, over several seeds, its ± std
    band (a pruned mean inside it is not below the reference); False without one."""
    ref, sd = acc["reference"][0], acc["reference"][1]
    if math.isnan(ref):
        return False
    ax.axhline(ref, color="black", ls="--", lw=1.2, label=REFERENCE_LABEL)
    if len(t["seeds"]) > 1 and sd and not math.isnan(sd):
        ax.axhspan(ref - sd, min(100.0, ref + sd), color="black", alpha=0.08, lw=0,
                   label=BAND_LABEL)
    return True


def _first_target(t: dict[str, Any]) -> str:
    if t.get("targets"):
        return target_order(t)[0]
    return t["config"].get("target") or "first"


def offsets(ms: list[str], acc: dict[str, Any]) -> dict[tuple[str, float], float]:
    """Sideways shift (ratio points) of each method's point at each ratio, so that error bars
    stand apart: among the methods with a point at that ratio only (a ratio three methods ran
    at was spread as wide as one with eleven), at most :data:`MAX_OFFSET` either side."""
    out = {}
    ratios = sorted({float(r) for m in ms for r in acc["methods"][m]})
    for r in ratios:
        here = [m for m in ms if str(r) in acc["methods"][m]]
        step = min(0.6, 2 * MAX_OFFSET / max(1, len(here) - 1))
        for j, m in enumerate(here):
            out[(m, r)] = (j - (len(here) - 1) / 2) * step
    return out


def _curves(ax, t: dict[str, Any], acc: dict[str, Any]) -> None:
    """One accuracy-vs-ratio curve per method/variant of ``acc``: mean ± sample std over seeds,
    the bars cut at 100 % (no top-1 exceeds it)."""
    ms = [m for m in t["methods"] if m in acc["methods"]]
    several = len(t["seeds"]) > 1
    dx = offsets(ms, acc) if several else {}
    for m in ms:
        by = acc["methods"][m]
        rs = sorted(float(r) for r in by)
        ys = [by[str(r)][0] for r in rs]
        es = [by[str(r)][1] for r in rs]
        st = method_style(m, t["methods"])
        yerr = [es, [min(e, 100.0 - y) for e, y in zip(es, ys)]] if several else None
        ax.errorbar([100 * r + dx.get((m, r), 0.0) for r in rs], ys, yerr=yerr,
                    color=st.color, marker=st.marker, fillstyle=st.fill,
                    ls=method_dash(m, t["methods"]), ms=6, lw=1.6, capsize=3, label=st.label)


@literal_text
def plot_targets(t: dict[str, Any], path: Path) -> None:
    """Fig. A5 style: one panel per target (columns) and finetuning mode (rows), accuracy vs
    pruning ratio of the one selection made for all targets."""
    targets = {name: accuracy_of({**tt, "criterion": criterion(t)})
               for name, tt in t["targets"].items()}
    modes = [m for m in t["finetune"] if any(acc.get(m, {}).get("methods")
                                            for acc in targets.values())]
    nr, nc = max(1, len(modes)), len(targets)
    fig, axes = subplots(nr, nc, figsize=(4.4 * nc, 3.8 * nr), squeeze=False)
    for i, mode in enumerate(modes):
        for j, name in enumerate(target_order(t)):
            ax, acc = axes[i][j], targets[name][mode]
            _curves(ax, t, acc)
            # the 0 % value in the title, as accuracy.png has it in its legend (one per panel)
            at = f" (0 %: {acc['reference'][0]:.1f})" if _reference(ax, t, acc) else ""
            ax.set_title(f"{mode.upper()} on `{short_name(name)}`{at}", fontsize=9)
            _axes(ax, t)
    handles, labels = axes[0][0].get_legend_handles_labels()
    rows = _legend_below(fig, handles, labels)
    fig.suptitle(f"One pruned source for {nc} targets: accuracy per target (cf. paper Fig. A5)"
                 f"\n{criterion(t)}-epoch top-1; error bars: {spread(t)}", fontsize=10)
    fig.tight_layout(rect=(0, 0.03 + 0.04 * rows, 1, 1))
    save(fig, path, dpi=110)


def pretrain_methods(cost: list[dict[str, Any]]) -> list[str]:
    """The methods run at every pruned ratio of ``cost``: the pretrain-only mean is over these
    alone, as a mean over whichever methods ran at each ratio (3 at one, 11 at the next) drew
    a bump that no method has."""
    rows = cost[1:]
    ratios = {c["ratio"] for c in rows}
    methods = list(dict.fromkeys(c["method"] for c in rows))
    return [m for m in methods if {c["ratio"] for c in rows if c["method"] == m} == ratios]


def steps_matched(t: dict[str, Any]) -> bool:
    """A ``--pretrain-length steps`` run: pretraining is as long at every ratio, so the paper's
    reductions and the ideal (= ratio) line do not apply to it."""
    return (t.get("config") or {}).get("pretrain_length") == "steps"


@literal_text
def plot_cost(t: dict[str, Any], path: Path) -> None:
    """Left: total cost (s) vs ratio per method; right: reduction vs 0 %, ours beside the paper's."""
    fig, (a1, a2) = subplots(1, 2, figsize=(11, 4.8))
    cost = t["cost"]
    ref = cost[0]
    steps = steps_matched(t)
    for m in t["methods"]:
        cs = sorted((c for c in cost if c["method"] == m), key=lambda c: c["ratio"])
        if not cs:
            continue
        st, dash = method_style(m, t["methods"]), method_dash(m, t["methods"])
        look = {"color": st.color, "marker": st.marker, "fillstyle": st.fill, "ls": dash}
        xs = [0] + [100 * c["ratio"] for c in cs]
        a1.plot(xs, [ref["total_s"]] + [c["total_s"] for c in cs], **look, label=st.label)
        a2.plot(xs, [0] + [100 * c["reduction"] for c in cs], **look, lw=1, alpha=0.8,
                label=f"{st.label} total")
    pruned = sorted({c["ratio"] for c in cost[1:]})
    common = pretrain_methods(cost)
    rows = [c for c in cost[1:] if c["method"] in common]
    pre = [mean_std([c["pretrain_s"] for c in rows if c["ratio"] == r])[0] for r in pruned]
    ran = {c["method"] for c in cost[1:]}
    one = method_style(common[0], t["methods"]).label if len(common) == 1 else ""
    over = (one if one and set(common) == ran else  # (one method: not "mean of all methods")
            f"{one}: the one method run at every ratio" if one else
            "mean of all methods: each ran at every ratio" if set(common) == ran else
            f"mean of {', '.join(method_style(m, t['methods']).label for m in common)}: "
            "run at every ratio" if len(common) <= 3 else
            f"mean of the {len(common)} methods run at every ratio")
    same = one or "same mean"  # (whose pretraining the right panel's "ours" curves are)
    if common:
        a1.plot([0] + [100 * r for r in pruned], [ref["pretrain_s"]] + pre, color="black", ls=":",
                marker=".", label=f"pretrain only ({over})")
    tag = " (steps matched)" if steps else ""
    a1.set_title("cost = surrogate + score + prune + pretrain (s)" + tag, fontsize=10)
    a1.set_xlabel(ratio_axis(t))
    device = ran_on((t.get("config") or {}).get("device", "auto"), t.get("machine") or {})
    a1.set_ylabel(f"wall seconds ({device} run)")
    a1.set_ylim(0, 1.3 * a1.get_ylim()[1])  # (room for the surrogate's note above the data)
    a1.grid(alpha=0.3)
    _legend_under(a1)
    sur = t.get("surrogate_s")
    if sur and ref["pretrain_s"]:
        a1.text(0.02, 0.98, f"surrogate {sur:.1f} s = {sur / ref['pretrain_s']:.2f}× the 0 % "
                f"pretraining\n(charged to every pruned run"
                f"{_except(no_surrogate_labels(t['methods']))})",
                fontsize=8,
                transform=a1.transAxes, va="top")
    if common:
        a2.plot([0] + [100 * r for r in pruned],
                [0] + [100 * (1 - p / ref["pretrain_s"]) for p in pre], color="navy", ls=":",
                marker=".", lw=2, label=f"ours, pretrain only, wall ({same})")
    pre_cpu = [mean_std([c.get("pretrain_cpu_s") for c in rows if c["ratio"] == r])[0]
               for r in pruned]
    if common and ref.get("pretrain_cpu_s") and not any(math.isnan(p) for p in pre_cpu):
        a2.plot([0] + [100 * r for r in pruned],
                [0] + [100 * (1 - p / ref["pretrain_cpu_s"]) for p in pre_cpu], color="black",
                ls="-.", marker="x", lw=1.5,  # (brown passed for LM's red, and is SSP's colour)
                label=f"ours, pretrain only, CPU-s ({same})")
    if not steps:  # (steps matched: the paper's epochs-based reductions do not apply)
        pr = [r for r in sorted(PAPER_TOTAL_HOURS)]
        a2.plot([100 * r for r in pr], [100 * paper_reduction(r) for r in pr], color="darkgray",
                ls="--", marker="*", ms=10, lw=1.5,
                label="paper Tab. 3 (total: surrogate + LM/FM + RN-101)")
        xs, ys, label = _ideal(t, rows, pruned, same)
        a2.plot(xs, ys, color="lightgray", lw=1.5, label=label)
    a2.set_title("time reduction vs 0 % (%)" + tag, fontsize=10)
    a2.set_xlabel(ratio_axis(t))
    a2.set_ylabel("reduction (%)")
    a2.grid(alpha=0.3)
    _legend_under(a2)
    fig.tight_layout()
    save(fig, path, dpi=110, bbox_inches="tight")


def _ideal(t: dict[str, Any], rows: list[dict[str, Any]], pruned: list[float], same: str):
    """The ideal pretraining reduction, ``(xs, ys, label)``: the share of source samples removed
    (time follows the samples trained on), from the kept-sample fractions the runs recorded
    (mean over the same methods as "pretrain only"). It was drawn as "ideal (= ratio)", but a
    ratio of classes or clusters is not a share of samples; rows without the fractions draw
    the ratio again, labelled as what it is."""
    xs = [0.0] + [100 * r for r in pruned]
    kept = [[c.get("kept_sample_fraction") for c in rows if c["ratio"] == r] for r in pruned]
    if pruned and all(k and None not in k for k in kept):
        ys = [0.0] + [100 * (1 - mean_std(k)[0]) for k in kept]
        return xs, ys, f"ideal (= samples removed, {same})"
    if (t.get("config") or {}).get("budget") == "samples":
        return xs, xs, "ideal (= ratio: samples removed)"
    return xs, xs, "ratio (units removed, not a share of samples)"


def _legend_under(ax) -> None:
    """``ax``'s legend below its x label (one more step per label line), so that no entry covers
    a data point."""
    from matplotlib.transforms import ScaledTranslation

    lines = ax.get_xlabel().count("\n") + 1  # (tick labels ~0.3 in, a label line ~0.18 in)
    below = ax.transAxes + ScaledTranslation(0, -(0.3 + 0.18 * lines), ax.figure.dpi_scale_trans)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0), bbox_transform=below,
              ncol=2, frameon=False)


def _except(names: str) -> str:
    return " except " + names if names else ""
