"""The statistics of the benchmarks: the paired test and Holm's adjustment every verdict uses,
and the cost table's (paper Tab. 3, Tab. 4, Fig. 4): rows of runs → cost, selection, accuracy,
winning-subset and versus-RANDOM tables; means ± sample std over seeds (an accuracy with the
number of seeds it is over: a cell may have fewer than the table)."""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..contracts import Criterion
from ..pipeline.report import mean_std, scaled_moments, seed_stats

#: Paper Tab. 3: hours "to obtain the pretrained model" per pruning ratio — a *total* that covers
#: RN-18 surrogate training, LM/FM pruning and RN-101 source pretraining (Tab. 3's caption).
PAPER_TOTAL_HOURS = {0.0: 5.4, 0.2: 4.6, 0.4: 3.5, 0.6: 2.4, 0.8: 1.3}
#: Paper Tab. 4: hours at a 60 % ratio (selection + RN-101 pretraining); "ours" = LM's Tab. 3 total
PAPER_TAB4_HOURS = {"moderate": 7.6, "grand": 18.4, "lm": 2.4}
REFERENCE = "0 %"
COST_STAGES = ("surrogate", "score", "prune", "pretrain")


def counted_mean_std(xs: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, std, n) of :func:`~ffcv_dp4tl.pipeline.report.seed_stats`: n the finite values it
    is over; a table of 3 seeds printed a cell of one as "70.0 ± 0.0" (figures audit)."""
    st = seed_stats(xs)
    return st.mean, st.std, st.n


def paper_reduction(ratio: float) -> float | None:
    h = PAPER_TOTAL_HOURS.get(round(ratio, 4))
    return None if h is None else 1.0 - h / PAPER_TOTAL_HOURS[0.0]


#: which epoch's test top-1 decides a winning subset: the last one, or the best one on the test
#: set (the authors' released code logs ``best_test_top1`` and Tab. 1's ratios come from it)
CRITERIA = {Criterion.final.value: "final-epoch", Criterion.best.value: "best-epoch (on the test set)"}


def check_criterion(criterion: str) -> str:
    """``criterion`` if it is one of :data:`CRITERIA`, else a clear error naming the choices."""
    return Criterion.check(criterion, "criterion")


#: the tests' level: a 95 % interval, a two-sided p below 0.05
ALPHA = 0.05


def paired_test(diffs: Sequence[float], confidence: float = 1 - ALPHA,
                scale: float | None = None) -> dict[str, Any]:
    """Mean of paired differences with a two-sided Student-t interval and p-value (H0: mean 0);
    ``wins``/``losses`` count pairs above/below 0.

    Differences that are not finite (a diverged run's NaN) are left out and counted in
    ``dropped``. When every difference is the same the t statistic is undefined: the p-value is
    then the exact sign-flip permutation test's, 2^(1-n) (1 when all are 0), and there is no
    interval (``lo``/``hi`` None, ``exact`` True); "the same" up to floating-point rounding,
    as two accuracies' differences of one whole image are. Identical differences are common here
    (accuracies move in whole test images), and reading them as p = 0 called two equal
    1-image wins **better** (review).

    "Up to rounding" is relative: within 1e-9 of ``scale``, the magnitude of the values the
    differences were taken of (a top-1 in points: up to 100), or by default of the differences'
    own largest magnitude. A caller whose differences are means of differences (a seed's mean
    over its targets: +1.39 − 1.39 is −4.7e-15, not 0) passes the values' ``scale``; without
    it, differences of 1e-12 were all "0" (stats audit: an absolute floor of 1e-9). The sums
    are taken of the differences divided by their largest magnitude, so values near the float
    range (1e300) are tested as any others (their squares overflowed; stats audit): the mean
    and std are :func:`~ffcv_dp4tl.pipeline.report.scaled_moments`', as every table's."""
    from scipy import stats

    given = [float(x) for x in diffs]
    d = [x for x in given if math.isfinite(x)]
    n = len(d)
    big = max((abs(x) for x in d), default=0.0)
    # zero up to rounding (93.06 - 95.83 against 88.89 - 91.67; a seed mean of +1.39, -1.39, 0)
    tol = 1e-9 * max(big, abs(scale) if scale is not None and math.isfinite(scale) else 0.0)
    unit, mean_u, sd_u = scaled_moments(d) if d else (1.0, math.nan, math.nan)
    out: dict[str, Any] = {"n": n, "mean": mean_u * unit if n else None, "lo": None, "hi": None,
                           "p": None, "wins": sum(x > tol for x in d),
                           "losses": sum(x < -tol for x in d)}
    if len(given) > n:
        out["dropped"] = len(given) - n
    if n < 2:
        return out
    mean = out["mean"]
    if sd_u * unit <= tol:  # all equal
        out.update(p=1.0 if abs(mean) <= tol else min(1.0, 2.0 ** (1 - n)), exact=True)
        return out
    t = mean_u / (sd_u / math.sqrt(n))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * (sd_u / math.sqrt(n)) * unit
    out.update(lo=float(mean - half), hi=float(mean + half), p=float(2 * stats.t.sf(abs(t), n - 1)))
    return out


def direction(test: dict[str, Any]) -> str:
    """"better" / "worse" when ``test`` (:func:`paired_test`) rejects a zero mean: its 95 %
    interval excludes 0, or, without an interval (identical differences), its exact p is below
    :data:`ALPHA`; "" otherwise (also with too few pairs)."""
    if test.get("lo") is not None:
        return "better" if test["lo"] > 0 else "worse" if test["hi"] < 0 else ""
    p, mean = test.get("p"), test.get("mean")
    if p is None or mean is None or p >= ALPHA or mean == 0:
        return ""
    return "better" if mean > 0 else "worse"


def after_holm(word: str, p_adjusted: float | None) -> str:
    """``word`` (a verdict) when the p-value adjusted by :func:`holm` over its table stays below
    :data:`ALPHA`, else ``word`` qualified so: the one wording of every bench's tables."""
    return word if p_adjusted is None or p_adjusted < ALPHA else f"{word}, not after Holm's adjustment"


def format_p(p: float | None) -> str:
    """A p-value's table cell: 3 decimals, "<0.001" below, "–" without a test (None or NaN:
    NaN >= 0.001 is False, so it printed "<0.001")."""
    if p is None or math.isnan(p):
        return "–"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def format_interval(mean: float | None, lo: float | None, hi: float | None, note: str = "") -> str:
    """A paired difference's table cell: "+1.2 [-0.3, +2.7]", the mean alone (with ``note``)
    without an interval, "–" without a mean."""
    if mean is None:
        return "–"
    if lo is None:
        return f"{mean:+.1f}{note}"
    return f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None = no test, left out of the
    family): the adjusted p of the i-th smallest of m is max over j <= i of min(1, (m-j+1) p_j),
    so rejecting where adjusted p < alpha keeps the chance of any false verdict in the family
    below alpha. The tables judge many methods x ratios at once; unadjusted, about one in
    twenty null comparisons would read **better** or **worse**."""
    order = sorted((p, i) for i, p in enumerate(ps) if p is not None and not math.isnan(p))
    m = len(order)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for j, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - j) * p))
        out[i] = running
    return out


def best_winning_subset(acc: dict[float, Sequence[float]], reference: Sequence[float],
                        tol: float = 0.0) -> dict[str, Any]:
    """The largest pruning ratio whose mean accuracy is ≥ mean(reference) − ``tol``.

    ``acc`` maps a ratio (> 0) to the accuracies (in %, one per seed) at that ratio. Returns
    ``{"ratio", "mean", "std", "n", "ref_mean", "ref_std", "ref_n", "tol"}``; ``ratio`` is 0.0
    (and mean/std/n those of the reference) when no pruned ratio qualifies; ``n``: the seeds
    the mean is over.
    """
    ref_m, ref_s, ref_n = counted_mean_std(reference)
    best = {"ratio": 0.0, "mean": ref_m, "std": ref_s, "n": ref_n}
    for r in sorted(acc):
        m, s, n = counted_mean_std(acc[r])
        if r > 0 and not math.isnan(m) and m >= ref_m - tol - 1e-9:
            best = {"ratio": r, "mean": m, "std": s, "n": n}
    return {**best, "ref_mean": ref_m, "ref_std": ref_s, "ref_n": ref_n, "tol": tol}



def no_loss_shown(diffs: dict[float, Sequence[float]], tol: float = 0.0,
                  ratios: Sequence[float] | None = None, family: int = 1,
                  scale: float | None = None) -> dict[str, Any]:
    """The paper's "no loss" claim as a test (non-inferiority at margin ``tol`` points): ratios
    in increasing order, each passing while the one-sided (1 − α) lower bound of its paired
    differences over seeds (pruned − 0 %, ``diffs[ratio]``) stays ≥ −``tol``, α = 5 % /
    ``family``; the largest ratio before the first that fails (0.0 when the first fails).
    Testing in a fixed order and stopping at the first failure holds the error α over all
    ratios without adjustment.

    The bound is the lower end of the two-sided (1 − 2α) t interval (90 % at ``family`` 1);
    identical differences (no interval) pass on the exact sign-flip test of the differences +
    ``tol``, p = 2^-n < α: n ≥ 5 at ``family`` 1, n ≥ 6 at 2, n ≥ 8 at 9. ``ratios``: the
    sequence planned (default: those in ``diffs``); a planned ratio without pairs fails, since
    a ratio past an untested one was never reached.
    ``family``: how many such sequences one table tests (its methods x modes); each is held at
    5 % / ``family`` (Bonferroni), so the 5 % holds over the table: with 6 methods x 2 modes,
    one "no loss" claim in the table is wrong at most 5 % of the time, not each at 5 % (about
    46 % that some claim is). ``scale``: the magnitude of the accuracies the differences were
    taken of (:func:`paired_test`'s rounding).
    Returns ``{"ratio", "lo", "n", "exact", "family"}`` (``lo``: the bound at that ratio, or
    the one difference all pairs share when ``exact``) and, when no ratio passed, ``first``:
    the first ratio's ``{"ratio", "lo", "n"}``, so that "none" can say by how much: ``lo`` is
    its bound, which failed; None without pairs (``n`` 0) or without a bound, where ``mean``
    (the one pair's difference, or the one all pairs share: ``exact``), ``above_margin`` (it
    is > −``tol``, ``tol``) and ``needed`` (the pairs the exact test needs at this level) say why it
    failed. (That difference was ``lo``, which read as a failed bound of +6.9; stats audit.)
    The best winning subset beside it is the paper's rule on means: not a test (review)."""
    if not (isinstance(family, int) and family >= 1):
        raise ValueError(f"family must be a whole number >= 1, got {family!r}")
    alpha = ALPHA / family
    shown: dict[str, Any] = {"ratio": 0.0, "lo": None, "n": 0, "exact": False, "family": family}
    for r in sorted(x for x in (diffs if ratios is None else ratios) if x > 0):
        test = paired_test(diffs.get(r, []), confidence=1 - 2 * alpha, scale=scale)
        if test["lo"] is not None:
            passed, lo = test["lo"] >= -tol - 1e-9, test["lo"]
        else:  # identical differences (or fewer than two)
            passed = (test.get("exact", False) and test["mean"] > -tol
                      and 2.0 ** -test["n"] < alpha)
            lo = test["mean"]
        if not passed:
            if shown["ratio"] == 0.0:
                first = {"ratio": r, "lo": test["lo"], "n": test["n"]}
                if test["lo"] is None and test["n"]:  # (no bound: what the pairs had instead)
                    first.update(mean=test["mean"], exact=test.get("exact", False),
                                 above_margin=test["mean"] > -tol, tol=tol,
                                 needed=math.floor(-math.log2(alpha)) + 1)
                shown["first"] = first
            break
        shown = {"ratio": r, "lo": lo, "n": test["n"], "exact": test["lo"] is None,
                 "family": family}
    return shown


def winner_rows(winners: dict[str, Any]) -> int:
    """How many rows (mode, method) a ``winners`` table (mode -> method -> winner) holds."""
    return sum(len(ws) for ws in winners.values())


def versus_random(rows: list[dict[str, Any]], mode: str, methods: Sequence[str],
                  ratios: Sequence[float], key: str = "top1") -> list[dict[str, Any]]:
    """Each method against RANDOM at the same ratio, on ``{mode}_{key}`` (final-epoch top-1 by
    default): mean ± std over seeds of each, and a paired test of the differences seed by seed
    (seed ``s`` of both pretrains with the same ``train.seed``; a seed one side lacks is left
    out): their mean ``delta`` with a 95 % t interval, ``p``, seeds won, and ``p_holm``, ``p``
    adjusted by :func:`holm` over every comparison of this list (methods x ratios; the cost
    table's family is every mode's: :func:`versus_random_table`), and ``family``, their count.
    Verdict: ``better`` / ``worse`` when the adjusted p is below :data:`ALPHA`; ``better, not
    after Holm's adjustment`` when only the unadjusted test rejects (:func:`after_holm`); ``no
    difference detected``; ``too few pairs`` below two paired seeds. (It was whether the two
    mean ± std bars overlapped, an unpaired rule that called a null difference better or worse
    22 % of the time at two seeds and grew blinder with more seeds: review.)"""
    return _judged(_versus_random_tests(rows, mode, methods, ratios, key))


def versus_random_table(rows: list[dict[str, Any]], modes: Sequence[str], methods: Sequence[str],
                        ratios: Sequence[float], key: str = "top1") -> dict[str, list[dict[str, Any]]]:
    """:func:`versus_random` for every finetuning mode, Holm's adjustment over them all: the
    table's one family (modes x ratios x methods), as ``bench embedded`` adjusts its table. It
    was adjusted per mode, two families of one table (stats audit)."""
    tests = {mode: _versus_random_tests(rows, mode, methods, ratios, key) for mode in modes}
    _judged([v for mode in modes for v in tests[mode]])
    return tests


def _versus_random_tests(rows: list[dict[str, Any]], mode: str, methods: Sequence[str],
                         ratios: Sequence[float], key: str) -> list[dict[str, Any]]:
    """:func:`versus_random`'s comparisons of one mode, not yet adjusted nor judged."""
    col = f"{mode}_{key}"

    def by_seed(m: str, r: float) -> dict[int, float]:
        return {int(x["seed"]): float(x[col]) for x in rows
                if x["method"] == m and x["ratio"] == r and x.get(col) is not None}

    out = []
    for r in (r for r in ratios if r > 0):
        rnd = by_seed("random", r)
        if not rnd:
            continue
        rm, rs, rn = counted_mean_std(list(rnd.values()))
        for m in methods:
            if m == "random":
                continue
            got = by_seed(m, r)
            if not got:
                continue
            mm, ms, mn = counted_mean_std(list(got.values()))
            paired = sorted(s for s in got if s in rnd)
            test = paired_test([got[s] - rnd[s] for s in paired],
                               scale=max(map(abs, [*got.values(), *rnd.values()])))
            out.append({"method": m, "ratio": r, "mean": mm, "std": ms, "n": mn,
                        "random_mean": rm, "random_std": rs, "random_n": rn,
                        "delta": test["mean"], "lo": test["lo"],
                        "hi": test["hi"], "p": test["p"], "wins": test["wins"],
                        "paired": test["n"], "direction": direction(test)})
    return out


def _judged(family: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``family``'s comparisons with ``p_holm`` (Holm over all of them), ``family`` (their
    count: those with a p-value) and ``verdict`` (:func:`versus_random`); changed in place,
    and returned."""
    tested = sum(v["p"] is not None and not math.isnan(v["p"]) for v in family)
    for v, p in zip(family, holm([v["p"] for v in family])):
        v["p_holm"] = p
        v["family"] = tested
        word = v.pop("direction")
        v["verdict"] = ("too few pairs" if v["p"] is None else "no difference detected"
                        if not word else after_holm(word, p))
    return family


def estimated_stages(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The cost stages (in :data:`COST_STAGES` order) whose time in some of ``rows`` is partly
    estimated (a row's ``estimated_s``: seconds from runs without an exact record, e.g. killed
    ones; ``pipeline.stages.ESTIMATED``). Such a time is a lower bound, and the CPU seconds
    beside it miss the killed runs' (lost with them): the one rule of which CPU figures the
    cost tables may show (:func:`summarize`) and which times the report marks. Rows written
    before the field have none."""
    return [k for k in COST_STAGES if any((x.get("estimated_s") or {}).get(k) for x in rows)]


def _incomplete_cpu(agg: dict[str, Any], estimated: Sequence[str]) -> dict[str, Any]:
    """``agg``'s CPU seconds as unknown (NaN: "–" in the tables, no CPU reduction) where a
    stage they count has estimated time (:func:`estimated_stages`): a killed run's CPU seconds
    are lost, and what was recorded is no measurement of the stage (it read an 86 % CPU
    reduction beside 38 % by wall time); ``estimated`` is kept in the entry for the report."""
    if not estimated:
        return agg
    agg = {**agg, "total_cpu_s": math.nan, "estimated": list(estimated)}
    if "pretrain" in estimated:
        agg["pretrain_cpu_s"] = math.nan
    return agg


def summarize(rows: list[dict[str, Any]], *, methods: Sequence[str], ratios: Sequence[float],
              seeds: Sequence[int], finetune: Sequence[str], tol: float = 0.0,
              criterion: str = "final", family: int | None = None) -> dict[str, Any]:
    """Aggregate raw rows into cost / selection / accuracy / winning-subset tables; the winning
    subsets are judged on the ``criterion`` epoch's accuracy (:data:`CRITERIA`). ``family``:
    the rows the no-loss test holds its 5 % over (:func:`no_loss_shown`); default this table's
    own (its methods x modes with pairs); a several-target table's per-target rows pass the
    count over every target (:func:`winner_rows`)."""
    check_criterion(criterion)
    ref_rows = [r for r in rows if r["method"] == REFERENCE]
    ref_total = mean_std([r["total_s"] for r in ref_rows])[0]
    ref_pre = mean_std([r["pretrain_s"] for r in ref_rows])[0]
    ref_cpu = _incomplete_cpu(
        {"total_cpu_s": mean_std([r.get("total_cpu_s") for r in ref_rows])[0],
         "pretrain_cpu_s": mean_std([r.get("pretrain_cpu_s") for r in ref_rows])[0]},
        estimated_stages(ref_rows))
    ref_total_cpu, ref_pre_cpu = ref_cpu["total_cpu_s"], ref_cpu["pretrain_cpu_s"]
    cost: list[dict[str, Any]] = [{"method": REFERENCE, "ratio": 0.0, "total_s": ref_total,
                                   "pretrain_s": ref_pre, "reduction": 0.0, **ref_cpu,
                                   "cpu_reduction": 0.0, "pretrain_cpu_reduction": 0.0,
                                   "pretrain_reduction": 0.0, "paper_reduction": 0.0,
                                   "paper_total_h": PAPER_TOTAL_HOURS[0.0]}]
    for m in methods:
        for r in ratios:
            sel = [x for x in rows if x["method"] == m and x["ratio"] == r]
            if not sel or r == 0:
                continue
            agg = _incomplete_cpu({k: mean_std([x.get(k) for x in sel])[0]
                                   for k in ("surrogate_s", "score_s", "prune_s", "pretrain_s",
                                             "total_s", "pretrain_cpu_s", "total_cpu_s")},
                                  estimated_stages(sel))
            fr = [x.get("kept_sample_fraction") for x in sel
                  if x.get("kept_sample_fraction") is not None]
            agg["kept_sample_fraction"] = mean_std(fr)[0] if fr else None
            cost.append({"method": m, "ratio": r, **agg,
                         "cpu_reduction": 1.0 - agg["total_cpu_s"] / ref_total_cpu,
                         "pretrain_cpu_reduction": 1.0 - agg["pretrain_cpu_s"] / ref_pre_cpu,
                         "reduction": 1.0 - agg["total_s"] / ref_total,
                         "pretrain_reduction": 1.0 - agg["pretrain_s"] / ref_pre,
                         "paper_reduction": paper_reduction(r),
                         "paper_total_h": PAPER_TOTAL_HOURS.get(round(r, 4))})
    pruned = [r for r in ratios if r > 0]
    sel_ratio = min(pruned, key=lambda r: abs(r - 0.6)) if pruned else None
    selection = []
    for m in methods:
        sel = [x for x in rows if x["method"] == m and x["ratio"] == sel_ratio]
        if sel:
            sur, sc = (mean_std([x[k] for x in sel])[0] for k in ("surrogate_s", "score_s"))
            pr, pre = (mean_std([x.get(k) for x in sel])[0] for k in ("prune_s", "pretrain_s"))
            selection.append({"method": m, "ratio": sel_ratio, "surrogate_s": sur, "score_s": sc,
                              "selection_inner_s": mean_std([x["selection_s"] for x in sel])[0],
                              "total_s": sur + sc, "pretrain_s": pre,
                              "with_pretrain_s": sur + sc + (0.0 if math.isnan(pr) else pr) + pre,
                              "paper_h": PAPER_TAB4_HOURS.get(m),
                              **({"estimated": est} if (est := estimated_stages(sel)) else {})})
    accuracy: dict[str, Any] = {}
    accuracy_best: dict[str, Any] = {}
    winners: dict[str, Any] = {}
    paired: dict[tuple[str, str], dict[float, list[float]]] = {}  # no-loss test input
    scales: dict[tuple[str, str], float] = {}  # (the accuracies' magnitude: paired_test's scale)
    for mode in finetune:
        bkey = f"{mode}_best_top1"
        ref_best = [x[bkey] for x in ref_rows if x.get(bkey) is not None]
        accuracy_best[mode] = {"reference": counted_mean_std(ref_best), "methods": {}}
        for m in methods:
            by = {r: [x[bkey] for x in rows if x["method"] == m and x["ratio"] == r
                      and x.get(bkey) is not None] for r in pruned}
            if any(by.values()):
                accuracy_best[mode]["methods"][m] = {str(r): counted_mean_std(v)
                                                     for r, v in by.items() if v}
        key = f"{mode}_top1"
        ref_acc = [x[key] for x in ref_rows if x.get(key) is not None]
        accuracy[mode] = {"reference": counted_mean_std(ref_acc), "methods": {}}
        winners[mode] = {}
        wkey = key if criterion == "final" else bkey  # (what decides the winning subsets)
        ref_w = [x[wkey] for x in ref_rows if x.get(wkey) is not None]
        ref_seed = {x["seed"]: x[wkey] for x in ref_rows if x.get(wkey) is not None}
        for m in methods:
            by_ratio = {r: [x[key] for x in rows if x["method"] == m and x["ratio"] == r
                            and x.get(key) is not None] for r in pruned}
            by_ratio = {r: v for r, v in by_ratio.items() if v}
            if not by_ratio:
                continue
            accuracy[mode]["methods"][m] = {str(r): counted_mean_std(v)
                                            for r, v in by_ratio.items()}
            by_w = {r: [x[wkey] for x in rows if x["method"] == m and x["ratio"] == r
                        and x.get(wkey) is not None] for r in pruned}
            by_w = {r: v for r, v in by_w.items() if v}
            if ref_w and by_w:
                winners[mode][m] = best_winning_subset(by_w, ref_w, tol)
                paired[(mode, m)] = {r: [
                    x[wkey] - ref_seed[x["seed"]] for x in rows if x["method"] == m
                    and x["ratio"] == r and x.get(wkey) is not None and x["seed"] in ref_seed]
                    for r in by_w}
                scales[(mode, m)] = max(abs(v) for v in [*ref_w, *(x for v in by_w.values()
                                                                  for x in v)])
    for (mode, m), diffs in paired.items():  # (the table's sequences: one family)
        winners[mode][m]["shown"] = no_loss_shown(diffs, tol, ratios=pruned,
                                                  family=family or len(paired),
                                                  scale=scales[(mode, m)])
    vs_random = versus_random_table(rows, finetune, methods, ratios)
    return {"rows": rows, "cost": cost, "selection": selection, "accuracy": accuracy,
            "accuracy_best": accuracy_best, "winners": winners, "versus_random": vs_random, "methods": list(methods), "ratios": list(ratios),
            "seeds": list(seeds), "finetune": list(finetune), "tol": tol, "criterion": criterion,
            "reference_total_s": ref_total, "reference_pretrain_s": ref_pre}

