"""The Markdown of the cost-table report: its tables (cost, selection cost, accuracy, versus
RANDOM, winning subsets, several targets), header lines, and the labels and styles of methods
and variants that the plots share."""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from ..errors import DP4TLError, count
from ..scoring.registry import PlotStyle, get_scorer, is_registered
from ..shipped import doc_ref
from ..pipeline.report import in_stage_order, mean_std
from ..pipeline.truth import truth_table
from ..reporting import md_code, md_text, ran_on
from .stats import (ALPHA, COST_STAGES, CRITERIA, PAPER_TOTAL_HOURS, REFERENCE, after_holm,
                    estimated_stages, format_interval, format_p, paper_reduction)
from .variants import base_method, variant_style

def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x * 100:+.0f} %" if signed else f"{x * 100:.0f} %"


def _share(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f} %"


def num(x: float | None, fmt: str = "{:.1f}") -> str:
    """A table cell: ``x`` formatted, or "–" when it is missing (None or NaN)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def margin(tol: float) -> str:
    """The no-loss margin −``tol`` as the tables print it: ``0.0`` at 0 (it read "−0.0")."""
    return "0.0" if tol == 0 else f"−{tol}"


def ratio_label(ratio: float) -> str:
    """``0.6`` → ``60 %``."""
    return f"{ratio * 100:.0f} %"


def _acc(ms: Sequence[float] | None, n_seeds: int) -> str:
    """An accuracy cell of a table over ``n_seeds`` seeds: ``ms`` is (mean, std) or (mean,
    std, n), n the seeds it is over (:func:`~.stats.counted_mean_std`). A cell over fewer says
    so, and a cell of one value shows no spread: it read "70.0 ± 0.0" in a 3-seed table
    (figures audit)."""
    if not ms or math.isnan(ms[0]):
        return "–"
    n = int(ms[2]) if len(ms) > 2 else n_seeds  # (a summary from before the count)
    if n < n_seeds:
        spread = f" ± {ms[1]:.1f}" if n > 1 else ""
        return f"{ms[0]:.1f}{spread} ({n} of {n_seeds} seeds)"
    return f"{ms[0]:.1f} ± {ms[1]:.1f}" if n_seeds > 1 else f"{ms[0]:.1f}"


def method_style(m: str, siblings: Sequence[str] = ()) -> PlotStyle:
    """Colour, marker and label of a method or variant (from its registered scorer; a variant
    such as ``fm[k=16]`` gets its method's colour and a label with its settings)."""
    try:
        return variant_style(m, siblings)[0]
    except DP4TLError:  # not a method spelling (an old results file): its name upper-cased
        return PlotStyle(None, "o", m.upper())


def method_dash(m: str, siblings: Sequence[str]) -> str:
    try:
        return variant_style(m, siblings)[1]
    except DP4TLError:
        return "-"


def method_label(m: str) -> str:
    """A method's label: a registered one's, or the name (upper-cased). Plain text in reports
    and figures alike: a method's name is checked on read (``variants.parse_variant``'s
    spelling: letters, digits, ``_.-``), so it holds no markup."""
    return method_style(m).label


def _base_or_name(m: str) -> str:
    try:
        return base_method(m)
    except DP4TLError:
        return m


def no_surrogate_labels(methods: Sequence[str]) -> str:
    """Labels of the methods that train no surrogate (e.g. RANDOM)."""
    return ", ".join(method_label(m) for m in methods
                     if is_registered(_base_or_name(m)) and not get_scorer(_base_or_name(m)).needs_surrogate)


def _but(names: str, prefix: str) -> str:
    return prefix + names if names else ""


#: the mark of a time that is partly estimated (:func:`~.stats.estimated_stages`), and the note
#: under every table that shows one: the stage's own report line says as much
ESTIMATED_MARK = "†"
ESTIMATED_NOTE = (f"{ESTIMATED_MARK} Part of this time comes from runs of the stage without an "
                  "exact record (killed, or a full disk), timed from their start to their file's "
                  "last touch: a lower bound, and a reduction computed from it a bound too. Those "
                  f"runs' CPU seconds were lost with them, so no CPU-s are shown ({ESTIMATED_MARK}).")


def _marked(cell: str, entry: dict[str, Any], stages: Iterable[str] = COST_STAGES) -> str:
    """``cell`` with :data:`ESTIMATED_MARK` when one of ``stages`` of ``entry`` (a cost or
    selection entry) has estimated time."""
    return cell + ESTIMATED_MARK if set(entry.get("estimated") or ()) & set(stages) else cell


def _note_if_marked(lines: list[str]) -> list[str]:
    """:data:`ESTIMATED_NOTE` under a table whose ``lines`` mark a time (none: the table as
    before, so old results render unchanged)."""
    return ["", ESTIMATED_NOTE] if any(ESTIMATED_MARK in line for line in lines) else []


def load_cell(rows: Iterable[dict[str, Any]], method: str, ratio: float) -> str:
    """The stage breakdown's *load* cell of ``method`` at ``ratio``: the 1-min load average
    (``loadavg_1min``) when the pretraining of each of its runs (``rows``, one per seed)
    finished — one value, or the lowest–highest over its seeds; "–" where no run recorded one
    (rows from before it was)."""
    loads = [float(r["loadavg_1min"]) for r in rows
             if r.get("method") == method and r.get("ratio") == ratio
             and r.get("loadavg_1min") is not None]
    if not loads:
        return "–"
    lo, hi = f"{min(loads):.1f}", f"{max(loads):.1f}"
    return lo if lo == hi else f"{lo}–{hi}"


def load_note(cores: int | None) -> str:
    """The legend of the *load* column (:func:`load_cell`), naming the machine's ``cores``."""
    where = f"{cores} cores" if cores else "cores"
    return ("*load*: the 1-min load average when the row's pretraining finished (several seeds: "
            "lowest–highest; – not recorded). The benchmark's own training and loader workers "
            f"keep the machine's {where} busy, so a load up to about one above that is its own; "
            "rows well above it ran beside other jobs, which took CPU time from them: their wall "
            "seconds are inflated by an unknown amount (their CPU-s less so), and they are not "
            "comparable with the others.")


def method_cost(m: str) -> str:
    return get_scorer(_base_or_name(m)).cost_summary() if is_registered(_base_or_name(m)) else "–"


def markdown_tables(t: dict[str, Any], plots_prefix: str = "") -> str:
    """The tables of the report (no title): cost, selection cost, accuracy, winners, raw runs."""
    methods, ns = t["methods"], len(t["seeds"])
    pruned = [r for r in t["ratios"] if r > 0]
    cost = {(c["method"], c["ratio"]): c for c in t["cost"]}
    ref = cost[(REFERENCE, 0.0)]
    L = ["### Cost (Tab. 3)", "",
         "Total cost = surrogate + score + prune + pretrain wall seconds (finetuning excluded; "
         "the cached surrogate's one measured training time is charged to every pruned run of a "
         f"method that needs it{_but(no_surrogate_labels(methods), ' — all but ')}). 0 % = one full-data "
         "pretraining, no selection. "
         f"Means over {ns} seed(s). Paper: Tab. 3's hours are **totals** too (RN-18 surrogate "
         "training + LM/FM pruning + RN-101 pretraining on ImageNet): compare them with the "
         "LM/FM total columns. The pretrain-only columns (ours) show the data-size effect alone.",
         "",
         "| ratio | paper total h (Tab. 3) | paper total reduction | "
         + " | ".join(f"{method_label(m)} total s (Δ vs 0 %)" for m in methods)
         + " | pretrain s (mean of methods) | pretrain-only reduction | pretrain CPU-s | "
         "pretrain-only reduction (CPU-s) |",
         "|---:|---:|---:|" + "---:|" * len(methods) + "---:|---:|---:|---:|"]
    first = len(L)
    L.append(f"| 0 % | {PAPER_TOTAL_HOURS[0.0]} | – | "
             + " | ".join(_marked(f"{ref['total_s']:.1f}", ref) for _ in methods)
             + f" | {_marked(format(ref['pretrain_s'], '.1f'), ref, ['pretrain'])} | – | "
             f"{_marked(num(ref.get('pretrain_cpu_s')), ref, ['pretrain'])} | – |")
    for r in pruned:
        cs = [cost[(m, r)] for m in methods if (m, r) in cost]
        pre = mean_std([c["pretrain_s"] for c in cs])[0]
        pre_est = {"estimated": ["pretrain"]} if any(
            "pretrain" in (c.get("estimated") or ()) for c in cs) else {}
        # (one method's unknown CPU-s would otherwise drop out of the mean of the others)
        pre_cpu = math.nan if pre_est else mean_std([c.get("pretrain_cpu_s") for c in cs])[0]
        ref_cpu = ref.get("pretrain_cpu_s") or math.nan
        ph = PAPER_TOTAL_HOURS.get(round(r, 4))
        cells = [f"{_marked(format(cost[(m, r)]['total_s'], '.1f'), cost[(m, r)])} "
                 f"({_pct(-cost[(m, r)]['reduction'], True)})"
                 if (m, r) in cost else "–" for m in methods]
        L.append(f"| {ratio_label(r)} | {ph if ph is not None else '–'} | {_pct(paper_reduction(r))} | "
                 + " | ".join(cells)
                 + f" | {_marked(num(pre), pre_est)} | {_pct(1 - pre / ref['pretrain_s'])} | "
                 f"{_marked(num(pre_cpu), pre_est)} | {_pct(1 - pre_cpu / ref_cpu)} |")
    L += _note_if_marked(L[first:])
    sur = t.get("surrogate_s")
    if t.get("surrogate_brought"):
        L += ["", f"The surrogate was **brought** ({md_code(t['surrogate_brought'])}, imported, not "
              f"trained): its {num(sur)} s are the import, not a training run; the paper's totals "
              "include training it."]
    elif sur and ref["pretrain_s"]:
        share = sur / ref["pretrain_s"]
        rec = t.get("recipes") or {}
        if share >= 1:
            when = (f"so no ratio can save time: the surrogate alone costs {share:.2f}× a full "
                    "pretraining, and every pruned total exceeds the 0 % cost")
        else:
            when = f"so it saves time once r > {share:.2f}" + (
                " — here the surrogate costs almost as much as a full pretraining" if share > 0.8 else "")
        sur_cell = _marked(f"{sur:.1f}", {"estimated": estimated_stages(t.get("rows") or [])},
                           ["surrogate"])
        if t.get("config", {}).get("pretrain_length") == "steps":  # (pretraining does not shrink)
            about = (f"1 + {share:.2f} of the 0 % cost at every ratio r (its pretraining, "
                     "matched in steps, is as long as the 0 % one), so no ratio saves time")
        else:
            about = (f"(1 − r) + {share:.2f} of the 0 % cost, {when}. In the paper the "
                     "ResNet-18 surrogate is a small share of ResNet-101 pretraining and is "
                     "shared by every ratio and target, so its totals fall almost as fast as the "
                     "kept fraction; here a larger surrogate share pushes the totals above the "
                     "pretrain-only line")
        L += ["", f"The surrogate ({md_code(rec.get('surrogate', '?'))}) took {sur_cell} s = {share:.2f}× "
              f"the 0 % pretraining ({md_code(rec.get('pretrain', '?'))}). A selection method's total at "
              f"ratio r is about {about}."]
    L += ["", "Stage breakdown (wall seconds, mean over seeds; CPU-s = CPU seconds of this "
          "process + its finished loader workers, less sensitive to other jobs; kept samples = "
          "the share of source train samples kept — for class/cluster methods the ratio counts "
          "classes/clusters, so it is not 1 − ratio unless `--budget samples`):", "",
          "| method | ratio | kept samples | surrogate | score | prune | pretrain | total | "
          "reduction | total CPU-s | reduction (CPU-s) | load |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    first = len(L)
    rows = t.get("rows") or []
    L.append(f"| {REFERENCE} | 0 % | 100 % | 0 | 0 | 0 | "
             f"{_marked(format(ref['pretrain_s'], '.1f'), ref, ['pretrain'])} | "
             f"{_marked(format(ref['total_s'], '.1f'), ref)} | – | "
             f"{_marked(num(ref.get('total_cpu_s')), ref)} | – | "
             f"{load_cell(rows, REFERENCE, 0.0)} |")
    for c in t["cost"][1:]:
        L.append(f"| {method_label(c['method'])} | {ratio_label(c['ratio'])} | "
                 f"{_share(c.get('kept_sample_fraction'))} | "
                 f"{_marked(format(c['surrogate_s'], '.1f'), c, ['surrogate'])} | "
                 f"{_marked(format(c['score_s'], '.1f'), c, ['score'])} | "
                 f"{_marked(format(c['prune_s'], '.2f'), c, ['prune'])} | "
                 f"{_marked(format(c['pretrain_s'], '.1f'), c, ['pretrain'])} | "
                 f"{_marked(format(c['total_s'], '.1f'), c)} | {_pct(c['reduction'])} | "
                 f"{_marked(num(c.get('total_cpu_s')), c)} | {_pct(c.get('cpu_reduction'))} | "
                 f"{load_cell(rows, c['method'], c['ratio'])} |")
    L += _note_if_marked(L[first:])
    L += ["", load_note((t.get("machine") or {}).get("cores"))]
    if t["selection"]:
        r = t["selection"][0]["ratio"]
        L += ["", f"### Selection cost (Tab. 4) at {ratio_label(r)}", "",
              "Selection = score stage (surrogate inference, feature extraction, k-means, voting "
              "or per-sample scores) + the surrogate's training time where the method needs a "
              "trained model; the last column is each method's registered cost record. The "
              "score stage includes the training runs a method makes itself (EL2N/GraNd: N − 1 "
              "early-training runs beside the surrogate's early checkpoint; FORGET: its own "
              "training run), as the paper's Tab. 4 costs do; the other baselines use the "
              "surrogate LM/FM use. The score stage is ratio-independent. Tab. 4 itself reports "
              "selection + pretraining at 60 % (its \"ours\" 2.4 h is Tab. 3's LM total): the "
              "column \"+ pretrain s\", beside the paper's hours.", "",
              "| method | surrogate s | score s | of which selection_seconds | selection total s "
              "| + pretrain s (Tab. 4) | paper h (Tab. 4) | what it runs |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
        first = len(L)
        for s in t["selection"]:
            ph = s.get("paper_h")
            L.append(f"| {method_label(s['method'])} | "
                     f"{_marked(format(s['surrogate_s'], '.1f'), s, ['surrogate'])} | "
                     f"{_marked(format(s['score_s'], '.1f'), s, ['score'])} | "
                     f"{_marked(format(s['selection_inner_s'], '.1f'), s, ['score'])} | "
                     f"{_marked(format(s['total_s'], '.1f'), s, ['surrogate', 'score'])} | "
                     f"{_marked(num(s.get('with_pretrain_s')), s)} | {ph if ph is not None else '–'} | "
                     f"{method_cost(s['method'])} |")
        L += _note_if_marked(L[first:])
    for mode in t["finetune"]:
        acc = t["accuracy"].get(mode)
        if not acc:
            continue
        def table(a: dict) -> list[str]:  # ratio x method accuracies of one result set
            ms = [m for m in methods if m in a["methods"]]
            return (["| ratio | " + " | ".join(method_label(m) for m in ms) + " |",
                     "|---:|" + "---:|" * len(ms)]
                    + [f"| {ratio_label(r)} | " + " | ".join(_acc(a["methods"][m].get(str(r)), ns)
                                                    for m in ms) + " |" for r in pruned])

        L += ["", f"### Target test top-1 % — {mode.upper()} (Fig. 4)", "",
              f"0 % reference: **{_acc(acc['reference'], ns)}**", "", *table(acc)]
        best = (t.get("accuracy_best") or {}).get(mode)
        if best and best["methods"] and best != acc:
            L += ["", f"Best evaluated epoch (final-epoch numbers above; eval.every sets the "
                  f"candidates) — 0 % reference: **{_acc(best['reference'], ns)}**", "", *table(best)]
    for mode, vs in (t.get("versus_random") or {}).items():
        if not vs:
            continue
        L += ["", f"### Versus RANDOM — {mode.upper()}: paired over seeds", "",
              "Final-epoch target top-1, mean ± std over seeds, against RANDOM at the same ratio; "
              "Δ: the mean of the seed-paired differences (both runs pretrain with the same "
              "seed) with its 95 % t interval. **better** / **worse**: p below "
              f"{ALPHA} after Holm's adjustment over {_family_text(t, vs)} (p Holm)."
              + _power_note(vs), "",
              "| ratio | method | top-1 % | RANDOM top-1 % | Δ points [95 % CI] | p | p Holm "
              "| seeds won | verdict |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
        for v in vs:
            L.append(f"| {ratio_label(v['ratio'])} | {method_label(v['method'])} | "
                     f"{_acc((v['mean'], v['std'], v.get('n', ns)), ns)} | "
                     f"{_acc((v['random_mean'], v['random_std'], v.get('random_n', ns)), ns)} | "
                     f"{format_interval(v.get('delta'), v.get('lo'), v.get('hi'))} | "
                     f"{format_p(v.get('p'))} | {format_p(v.get('p_holm'))} | {v['wins']}/{v['paired']} | "
                     f"{'**' + v['verdict'] + '**' if v['verdict'] in ('better', 'worse') else v['verdict']} |")
        L += ["", versus_random_summary(vs)]
    if any(t["winners"].values()):
        L += ["", f"### Best winning subset (largest ratio with {_crit_text(t)} accuracy ≥ 0 % − "
                  f"{t['tol']} points; criterion {md_code(t.get('criterion', 'final'))})",
              "", "*Best ratio* is the paper's Tab. 1 rule on means over seeds, not a test. "
              + no_loss_text((w for ws in t["winners"].values() for w in ws.values()), t["tol"]),
              "",
              "| mode | method | best ratio | accuracy % | 0 % accuracy % | no loss shown |",
              "|---|---|---:|---:|---:|---|"]
        for mode, ws in t["winners"].items():
            for m, w in ws.items():
                br = f"{ratio_label(w['ratio'])}" if w["ratio"] > 0 else "none (0 %)"
                L.append(f"| {mode.upper()} | {method_label(m)} | {br} | "
                         f"{_acc((w['mean'], w['std'], w.get('n', ns)), ns)} | "
                         f"{_acc((w['ref_mean'], w['ref_std'], w.get('ref_n', ns)), ns)} | "
                         f"{shown_cell(w.get('shown'))} |")
    L += _target_tables(t, methods, pruned, ns)
    L += truth_table(t.get("rows", []), [method_label(m) for m in methods], methods, pruned)
    if plots_prefix is not None:
        L += ["", f"![accuracy vs ratio]({plots_prefix}accuracy.png)",
              f"![cost vs ratio]({plots_prefix}cost.png)"]
        if t.get("targets"):
            L.append(f"![accuracy per target]({plots_prefix}accuracy-targets.png)")
    return "\n".join(L) + "\n"


#: what the "no loss shown" column is (:func:`~.stats.no_loss_shown`)
NO_LOSS_TEXT = ("*No loss shown* is the test: the ratios in increasing order, each passing while "
                "the one-sided {level} % lower bound of its paired differences over seeds (pruned "
                "− 0 %) stays ≥ {margin} points; the largest before the first that fails, with that "
                "bound (none: the first ratio's bound, which failed; where it has none, one seed's "
                "or identical differences, their Δ and why it failed). A fixed order needs no "
                "adjustment within a row{over}. Few seeds rarely show it.")


def no_loss_text(winners: Iterable[dict[str, Any]], tol: float) -> str:
    """:data:`NO_LOSS_TEXT` for the winner rows of a table (each with its ``shown``): the
    level of each bound and, over several rows, that they hold together (Bonferroni). The
    family is the one the test recorded (``shown.family``); a table judged before it was
    recorded reads as its rows each at 95 %, as they were."""
    shown = [w["shown"] for w in winners if w.get("shown")]
    family = max((int(x.get("family", 1)) for x in shown), default=1)
    level = f"{100 * (1 - ALPHA / family):.4g}"
    over = (f"; its {family} rows, every mode's, are tested together (Bonferroni), so all "
            "their claims hold at 95 %" if family > 1 else "")
    return NO_LOSS_TEXT.format(margin=margin(tol), level=level, over=over)


def shown_cell(shown: dict[str, Any] | None) -> str:
    """``60 % (≥ -0.4, 3 seeds)``: the largest ratio :func:`~.stats.no_loss_shown` passed, its
    bound and paired seeds (``all +1.0``: every pair's one difference); ``none (20 %: -8.5, 10
    seeds)`` with the first ratio's bound, which failed; where that ratio had no bound, what it
    had and why it failed: ``none (60 %: 1 seed, Δ +6.9, no test)``, ``none (60 %: all Δ +0.0
    over 3 seeds, too few for the exact test: 5 needed)`` (a difference printed as the failed
    bound read as a pass: stats audit); ``none`` alone for a table judged before the first
    ratio was recorded; ``–`` for a table judged before the test existed."""
    if not shown:
        return "–"
    if shown["ratio"] <= 0:
        first = shown.get("first")
        if not first:
            return "none"
        at = ratio_label(first["ratio"])
        if first.get("lo") is not None:
            return f"none ({at}: {first['lo']:+.1f}, {count(first['n'], 'seed')})"
        if first.get("mean") is None or not first.get("n"):
            return f"none ({at}: no pairs)"
        if first["n"] == 1:
            return f"none ({at}: 1 seed, Δ {first['mean']:+.1f}, no test)"
        why = [] if first.get("above_margin", True) else [
            f"not above {margin(first.get('tol', 0.0))}"]
        if first.get("needed") and first["n"] < first["needed"]:
            why.append(f"too few for the exact test: {first['needed']} needed")
        return (f"none ({at}: all Δ {first['mean']:+.1f} over {first['n']} seeds"
                + "".join(f", {w}" for w in why or ["no test"]) + ")")
    word = "all" if shown.get("exact") else "≥"
    return f"{ratio_label(shown['ratio'])} ({word} {shown['lo']:+.1f}, {count(shown['n'], 'seed')})"


def _family(vs: list[dict[str, Any]]) -> int:
    """The size of the Holm family ``vs`` (a versus-RANDOM table) was adjusted in (recorded by
    :func:`~.stats.versus_random`; its own tests for a table from before it was)."""
    return int(vs[0].get("family", len(vs))) if vs else 0


def _family_text(t: dict[str, Any], vs: list[dict[str, Any]]) -> str:
    """Which comparisons Holm's adjustment of a versus-RANDOM table is over: every mode's
    (:func:`~.stats.versus_random_table`), or, for a table from before, this mode's."""
    n = _family(vs)
    modes = [m for m, x in (t.get("versus_random") or {}).items() if x]
    if "family" in (vs[0] if vs else {}) and len(modes) > 1:
        return (f"{count(n, 'comparison')}, one family: every mode × ratio × method of the "
                f"versus-RANDOM tables ({', '.join(m.upper() for m in modes)})")
    return f"the table's {count(n, 'comparison')}"


def _power_note(vs: list[dict[str, Any]]) -> str:
    """What the table's seeds can show (review: the text promised that with two or three seeds
    large, consistent differences pass; with two, on a small test set, hardly any can)."""
    from scipy import stats

    n = max((v["paired"] for v in vs), default=0)
    if n >= 3 or not vs:
        return ""
    if n < 2:
        return " One seed per comparison: no test, no verdict."
    fam = max(1, _family(vs))
    t = stats.t.ppf(1 - ALPHA / (2 * fam), 1)
    return (f" With two seeds a verdict needs t >= {t:.0f} (Holm's first step over "
            f"{count(fam, 'comparison')}): a mean difference {t:.0f} times half the gap "
            "between the two seeds' "
            "differences; two equal differences give p = 0.5. Read Δ and its interval, not the "
            "verdict.")


def versus_random_summary(vs: list[dict[str, Any]]) -> str:
    """One sentence per method: at which ratios it beats (or loses to) RANDOM, after Holm's
    adjustment, and where the test does not decide."""
    parts = []
    for m in dict.fromkeys(v["method"] for v in vs):
        mine = [v for v in vs if v["method"] == m]
        said = {}
        for v in mine:
            said.setdefault(v["verdict"], []).append(ratio_label(v["ratio"]))
        words = {"better": "better at {}", "worse": "worse at {}",
                 after_holm("better", 1.0): "better at {} before Holm's adjustment only",
                 after_holm("worse", 1.0): "worse at {} before Holm's adjustment only",
                 "no difference detected": "no difference detected at {}",
                 "too few pairs": "not judged at {} (fewer than two paired seeds)"}
        bits = [words[k].format(", ".join(said[k])) for k in words if k in said] + \
               [f"{k} at {', '.join(r)}" for k, r in said.items() if k not in words]
        parts.append(f"{method_label(m)}: {'; '.join(bits)}")
    return "**Verdict:** " + ". ".join(parts) + "."


def _target_tables(t: dict[str, Any], methods: Sequence[str], pruned: Sequence[float],
                   ns: int) -> list[str]:
    """Several targets (Fig. A5): per mode, one grouped table — a column per (target, method),
    a row per ratio, the 0 % reference first — and the best winning subset per target."""
    targets = t.get("targets") or {}
    if not targets:
        return []
    order = target_order(t)
    w = t.get("target_weights") or []
    L = ["", "### Several targets (Fig. A5): one selection for all targets, accuracy per target",
         "", f"The source is scored once for the {len(targets)} targets "
         f"({', '.join(md_code(n) for n in order)}; each target's votes sum to 1"
         + (f", weights {', '.join(f'{x:g}' for x in w)}" if w else ", equal weights")
         + "), pretrained once per ratio, then finetuned on each target. The tables above are "
         f"the first target's ({md_code(order[0])})."]
    for mode in t["finetune"]:
        cols = [(n, m) for n in order for m in methods
                if m in targets[n]["accuracy"].get(mode, {}).get("methods", {})]
        if not cols:
            continue
        L += ["", f"Target test top-1 % — {mode.upper()}, final epoch", "",
              "| ratio | " + " | ".join(f"{md_text(n)}: {method_label(m)}" for n, m in cols) + " |",
              "|---:|" + "---:|" * len(cols),
              "| 0 % | " + " | ".join(_acc(targets[n]["accuracy"][mode]["reference"], ns)
                                     for n, _ in cols) + " |"]
        for r in pruned:
            L.append(f"| {ratio_label(r)} | " + " | ".join(
                _acc(targets[n]["accuracy"][mode]["methods"][m].get(str(r)), ns)
                for n, m in cols) + " |")
        rows = [w for n in order for w in targets[n]["winners"].get(mode, {}).values()]
        L += ["", f"Best winning subsets ({_crit_text(t)} accuracy, criterion "
              f"{md_code(t.get('criterion', 'final'))}). " + no_loss_text(rows, t.get("tol", 0.0)), "",
              "| target | method | best winning ratio | accuracy % | 0 % accuracy % | no loss shown |",
              "|---|---|---:|---:|---:|---|"]
        for n in order:
            for m, win in targets[n]["winners"].get(mode, {}).items():
                br = ratio_label(win["ratio"]) if win["ratio"] > 0 else "none (0 %)"
                L.append(f"| {md_text(n)} | {method_label(m)} | {br} | "
                         f"{_acc((win['mean'], win['std'], win.get('n', ns)), ns)} | "
                         f"{_acc((win['ref_mean'], win['ref_std'], win.get('ref_n', ns)), ns)} | "
                         f"{shown_cell(win.get('shown'))} |")
    return L


def target_order(t: dict[str, Any]) -> list[str]:
    """The names of a cost table's targets (``t["targets"]``) in the order given (``--target``):
    the first is the one the main tables show. ``results.json`` is written with sorted keys, so
    the order is read from ``target_rows`` (a list: every run's rows, target by target in the
    order given); targets without rows follow in the object's order."""
    names = list(t.get("targets") or {})
    rows = [r.get("target") for r in t.get("target_rows") or [] if isinstance(r, dict)]
    return [n for n in dict.fromkeys(rows) if n in names] + [n for n in names if n not in rows]


def _crit_text(t: dict[str, Any]) -> str:
    return CRITERIA[t.get("criterion", "final")]


def criterion_line(t: dict[str, Any]) -> str:
    """The header line naming the winning-subset criterion (every cost-table header has it)."""
    c = t.get("criterion", "final")
    return (f"- winning-subset criterion: {md_code(c)} — the {_crit_text(t)} target test top-1 decides "
            "whether a pruned ratio wins (`--criterion final|best`; `best` is the authors' "
            f"`best_test_top1`, chosen on the test set: {doc_ref('deviations')})")


#: the header line of a table whose pruned sets were pretrained for the unpruned run's steps
STEPS_LINE = ("- pretraining length: `steps` — every pruned set was pretrained for as many "
              "optimizer steps as the unpruned set (more epochs, the schedule stretched: "
              "`--pretrain-length steps`), not for the paper's fixed epochs. Its pretraining "
              "therefore saves no time, and the accuracy columns show what the removed data "
              "cost apart from fewer steps.")


def header_lines(t: dict[str, Any]) -> list[str]:
    cfg, mach = t["config"], t["machine"]
    loads = [r["loadavg_1min"] for r in t["rows"] if r.get("loadavg_1min") is not None]
    where = ran_on(cfg.get("device", "auto"), mach)
    return [f"- **{where}** run, {mach['cores']} cores ({mach['cpu']}), Python {mach['python']}, "
            f"torch {mach['torch']}, {mach['platform']}; date {t['date']}",
            f"- command: {md_code(t['command'] or '(library call)')}",
            f"- data: source {md_code(cfg['source'])}, "
            + (f"targets {', '.join(md_code(x) for x in cfg['targets'])} (one selection for all)"
               if len(cfg.get("targets") or ()) > 1 else f"target {md_code(cfg['target'] or '(first)')}")
            + f", format "
            f"{md_code(cfg['fmt'])}; recipes {md_code(cfg['recipes'] or 'auto')} ("
            + (", ".join(f"{k} {md_code(v)}" for k, v in in_stage_order(t["recipes"])) if t.get("recipes")
               else "the recipe set's defaults") + f"), FM k={cfg['k']}"
            + "".join(f"; {name} overrides {md_code(' '.join(cfg[key]))}" for name, key in (
                ("pretrain", "overrides"), ("surrogate", "surrogate_overrides"),
                ("finetune", "finetune_overrides")) if cfg.get(key)),
            f"- ratios {', '.join(f'{ratio_label(r)}' for r in t['ratios'])}; methods "
            f"{', '.join(method_label(m) for m in t['methods'])}; finetune "
            f"{', '.join(m.upper() for m in t['finetune'])}; seeds {t['seeds']}",
            criterion_line(t),
            *([STEPS_LINE] if cfg.get("pretrain_length") == "steps" else []),
            "- These are wall times and accuracies of this run's data and recipes: read the "
            "*ratios* (reductions, relative accuracy)"
            + (", not absolute numbers; absolute GPU numbers come from a GPU run"
               if where == "CPU" else "")
            + f". Timings are of one {mach['cores']}-core machine that other jobs may share, so "
            "single stage times can be noisy by ±20 % or more"
            + (f" (1-min load average when each pretraining finished: "
               f"{min(loads):.1f}–{max(loads):.1f} on "
               f"{mach['cores']} cores)" if loads else "") + ".",
            "- Stage times are read from each stage's `DONE.json` (measured when the stage ran; a "
            "rerun that finds a stage cached reports the same numbers)."]

