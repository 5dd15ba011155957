"""The cost table and the accuracy-vs-pruning-ratio report (paper Tab. 3, Tab. 4, Fig. 4).

``run_cost_table`` runs :func:`run_pipeline` for every (method, ratio, seed) and collects

* per-stage wall times (the ``seconds`` each stage recorded in its ``DONE.json``);
* the **total cost** of a run = surrogate + score + prune + pretrain seconds (finetuning is
  the same downstream work for every source model and is reported separately). The surrogate
  is trained once and cached, but its (once measured) time is charged to *every* pruned run
  whose method needs it (its registered scorer's ``needs``; all but RANDOM), like the paper's
  Tab. 3 which counts surrogate training and scoring;
* the 0 % reference: one full-data pretraining per seed, shared by all methods (``random`` at
  ratio 0 keeps every sample); its cost is its pretraining time only (nothing is selected);
* the reduction of the total (and of the pretraining-only) time vs the 0 % reference;
* the **selection cost** per method (paper Tab. 4): score-stage seconds (feature extraction,
  k-means, voting), + the surrogate's training time for the methods that need a trained model
  (the registered scorer says which, and what it runs: ``Scorer.cost_summary``). The
  score stage does not depend on the ratio, so the selection cost is that of every ratio; it is
  tabulated at the ratio closest to 60 %;
* target test top-1 after LP and FF — the final epoch's (the accuracy and winner tables) and the
  best evaluated epoch's (``accuracy_best``; what the authors' code reports) — as mean ± std over
  seeds, and the "best winning subset" per method and mode: the largest ratio whose (mean)
  accuracy is ≥ the 0 % (mean) accuracy − ``tol`` points (default 0: no lower than unpruned),
  judged on the epoch ``criterion`` names (:data:`CRITERIA`: ``final`` = the last epoch, or
  ``best`` = the best epoch on the test set, the authors' ``best_test_top1``; docs/deviations.md).
* a surrogate *brought* as weights (``surrogate_weights``) was not trained: its import time is
  charged instead, and the report says so.
* **variants** (:mod:`.variants`): a method name may carry settings, ``fm[k=16]`` (Fig. A2) or
  ``lm[reversed]`` (Fig. A3); each variant is its own row, column and curve.
* **several targets** (``base.targets``, Fig. A5): every run selects once for all targets and
  finetunes on each; the cost and main accuracy tables are the first target's, and
  ``targets`` holds the accuracy / winner tables of every target (``accuracy-targets.png``:
  one panel per target).
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..contracts import Criterion
from ..errors import DP4TLError
from ..fsutil import atomic_write_json, atomic_write_text, read_json
from ..scoring.registry import PlotStyle, get_scorer, is_registered
from .run import PipelineConfig, run_pipeline
from .truth import truth_table
from .variants import base_method, parse_variant, variant_style

#: Paper Tab. 3: hours "to obtain the pretrained model" per pruning ratio — a *total* that covers
#: RN-18 surrogate training, LM/FM pruning and RN-101 source pretraining (Tab. 3's caption).
PAPER_TOTAL_HOURS = {0.0: 5.4, 0.2: 4.6, 0.4: 3.5, 0.6: 2.4, 0.8: 1.3}
PAPER_PRETRAIN_HOURS = PAPER_TOTAL_HOURS  # the old (misleading) name, kept for imports
#: Paper Tab. 4: hours at a 60 % ratio (selection + RN-101 pretraining); "ours" = LM's Tab. 3 total
PAPER_TAB4_HOURS = {"moderate": 7.6, "grand": 18.4, "lm": 2.4}
REFERENCE = "0 %"
COST_STAGES = ("surrogate", "score", "prune", "pretrain")


def paper_reduction(ratio: float) -> float | None:
    h = PAPER_TOTAL_HOURS.get(round(ratio, 4))
    return None if h is None else 1.0 - h / PAPER_TOTAL_HOURS[0.0]


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    xs = [float(x) for x in xs if x is not None and not math.isnan(float(x))]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


#: which epoch's test top-1 decides a winning subset: the last one, or the best one on the test
#: set (the authors' released code logs ``best_test_top1`` and Tab. 1's ratios come from it)
CRITERIA = {Criterion.final.value: "final-epoch", Criterion.best.value: "best-epoch (on the test set)"}


def _criterion(criterion: str) -> str:
    return Criterion.check(criterion, "criterion")


def best_winning_subset(acc: dict[float, Sequence[float]], reference: Sequence[float],
                        tol: float = 0.0) -> dict[str, Any]:
    """The largest pruning ratio whose mean accuracy is ≥ mean(reference) − ``tol``.

    ``acc`` maps a ratio (> 0) to the accuracies (in %, one per seed) at that ratio. Returns
    ``{"ratio", "mean", "std", "ref_mean", "ref_std", "tol"}``; ``ratio`` is 0.0 (and mean/std
    those of the reference) when no pruned ratio qualifies.
    """
    ref_m, ref_s = _mean_std(reference)
    best = {"ratio": 0.0, "mean": ref_m, "std": ref_s}
    for r in sorted(acc):
        m, s = _mean_std(acc[r])
        if r > 0 and not math.isnan(m) and m >= ref_m - tol - 1e-9:
            best = {"ratio": r, "mean": m, "std": s}
    return {**best, "ref_mean": ref_m, "ref_std": ref_s, "tol": tol}


CPU_FILE = "cpu_seconds.json"


def _cpu_now() -> float:
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


class CpuMeter:
    """A ``log`` hook measuring each stage's CPU seconds (this process + reaped children, i.e.
    finished data-loader workers) between run_stage's "running in DIR" and "finished" lines,
    saved as ``DIR/cpu_seconds.json`` so cached reruns report it too. CPU time is far less
    sensitive than wall time to other jobs on a shared machine."""

    _line = re.compile(r"^\[([\w-]+)\] (running in (.+)|finished in|done already \(([^,]+),)")

    def __init__(self, log: Callable[[str], None], runs_root: Path):
        self.log, self.root = log, Path(runs_root)
        self.dirs: dict[str, Path] = {}
        self._start: dict[str, float] = {}

    def __call__(self, line: str) -> None:
        m = self._line.match(line)
        if m:
            name = m.group(1)
            if m.group(3):
                self.dirs[name] = Path(m.group(3))
                self._start[name] = _cpu_now()
            elif m.group(4):
                self.dirs[name] = self.root / m.group(4)
            elif name in self._start and name in self.dirs:
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
                atomic_write_json(self.dirs[name] / CPU_FILE,
                                  {"cpu_seconds": _cpu_now() - self._start.pop(name),
                                   "loadavg_1min": load})
        self.log(line)

    def cpu(self, name: str, key: str = "cpu_seconds") -> float | None:
        d = self.dirs.get(name)
        if d is None or not (d / CPU_FILE).exists():
            return None
        value = read_json(d / CPU_FILE, "cpu seconds").get(key)
        return None if value is None else float(value)


def _row(res: dict[str, Any], method: str, ratio: float, seed: int, charged_surrogate: float,
         meter: CpuMeter | None = None, charged_surrogate_cpu: float | None = None
         ) -> dict[str, Any]:
    st = res["stages"]
    sec = {name: float(st[name]["seconds"]) if name in st else 0.0
           for name in ("surrogate", "score", "prune", "pretrain")}
    sec["surrogate"] = charged_surrogate
    row: dict[str, Any] = {"method": method, "ratio": ratio, "seed": seed,
                           **{f"{k}_s": v for k, v in sec.items()},
                           "selection_s": float(st.get("score", {}).get("selection_seconds", 0.0)),
                           "train_kept": st["prune"].get("train_kept"),
                           # the sample share kept: ≠ 1 - ratio for cluster/class units
                           "kept_sample_fraction": st["prune"].get("kept_sample_fraction"),
                           "total_s": sum(sec[k] for k in COST_STAGES)}
    row["surrogate_brought"] = bool(st.get("surrogate", {}).get("brought"))
    row["truth"] = res.get("ground_truth")  # synth data: the selection against its answer
    for mode in ("lp", "ff"):
        ft = st.get(f"finetune-{mode}")
        row[f"{mode}_s"] = float(ft["seconds"]) if ft else None
        row[f"{mode}_top1"] = 100.0 * float(ft["test_top1"]) if ft else None
        best = ft.get("best_test_top1", ft["test_top1"]) if ft else None  # older results: final
        row[f"{mode}_best_top1"] = 100.0 * float(best) if best is not None else None
    cpu = {k: (meter.cpu(k) if meter else None) for k in ("score", "prune", "pretrain")}
    cpu["surrogate"] = charged_surrogate_cpu if charged_surrogate else 0.0
    row.update({f"{k}_cpu_s": v for k, v in cpu.items()})
    # load average when this run's pretraining finished (when it ran, not when it was cached)
    row["loadavg_1min"] = meter.cpu("pretrain", "loadavg_1min") if meter else None
    row["total_cpu_s"] = (None if any(cpu[k] is None for k in COST_STAGES)
                          else sum(cpu[k] for k in COST_STAGES))
    return row


def run_cost_table(base: PipelineConfig, out_dir: str | Path | None = None, *,
                   ratios: Iterable[float] = (0.0, 0.2, 0.4, 0.6, 0.8),
                   methods: Iterable[str] = ("lm", "fm", "random", "moderate", "grand", "el2n"),
                   seeds: Iterable[int] = (0,), finetune: Iterable[str] = ("lp", "ff"),
                   ff_methods: Iterable[str] | None = None,
                   method_ratios: dict[str, Iterable[float]] | None = None, tol: float = 0.0,
                   criterion: str = "final", command: str = "",
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (method, ratio, seed) pipeline and return (and, with ``out_dir``, write) the
    table: ``results.json``, ``report.md``, ``accuracy.png`` and ``cost.png``.

    ``ff_methods``: run FF only for these methods (default: all; LP always runs) — a way to cut
    the FF cost. ``method_ratios``: run a method only at these pruned ratios (default: all of
    ``ratios``) — e.g. the costly baselines only at 60 % for the selection-cost table.
    Seed ``s`` sets the scoring seed and, for ``s != 0``, ``train.seed=s`` of the pretraining
    (and finetune) recipes; the surrogate is the same for every seed. ``criterion``: which
    epoch's accuracy decides the winning subsets (:data:`CRITERIA`).
    """
    _criterion(criterion)  # before any work
    ratios = sorted({round(float(r), 6) for r in ratios})
    methods, seeds, finetune = list(methods), [int(s) for s in seeds], tuple(finetune)
    ff_set = set(methods if ff_methods is None else ff_methods)
    method_ratios = {m: sorted({round(float(r), 6) for r in rs})
                     for m, rs in (method_ratios or {}).items()}
    for m in methods:
        get_scorer(base_method(m))  # unknown method: one line listing the registered ones
    for p in base.scorer_options:  # an option no method of the table has is a typo
        if not any(options_for(m, [p]) for m in methods):
            raise DP4TLError(f"--opt {p}: none of the methods {', '.join(methods)} has that "
                             "option (NAME=VALUE for every method that has it, METHOD.NAME=VALUE "
                             "for one; docs/scorers.md lists them)")
    if not ratios or any(not 0.0 <= r < 1.0 for r in ratios):
        raise DP4TLError(f"ratios must lie in [0, 1), got {ratios}")
    pruned = [r for r in ratios if r > 0]
    rows: list[dict[str, Any]] = []
    surrogate_s: float | None = None
    surrogate_cpu: float | None = None
    recipes: dict[str, str] = {}
    meter = CpuMeter(log, base.runs_root)
    for m, rs in method_ratios.items():
        if any(not 0.0 < r < 1.0 for r in rs):
            raise DP4TLError(f"ratios of {m} must lie in (0, 1), got {rs}")
    plan = [(m, r) for m in methods for r in method_ratios.get(m, pruned) if r > 0]
    n_runs = len(seeds) * (1 + len(plan))
    i = 0
    target_rows: dict[str, list[dict[str, Any]]] = {}

    def add(res: dict[str, Any], make) -> None:
        """One row per target of a run (``make(view)``): the first target's go to ``rows``."""
        for j, (name, view) in enumerate(_target_views(res)):
            row = make(view)
            if name is not None:
                row["target"] = name
                target_rows.setdefault(name, []).append(row)
            if j == 0:
                rows.append(row)
    for seed in seeds:
        seed_over = (f"train.seed={seed}",) if seed else ()
        cfg_s = replace(base, seed=seed, overrides=tuple(base.overrides) + seed_over,
                        finetune_overrides=tuple(base.finetune_overrides) + seed_over)
        i += 1
        log(f"[cost-table] run {i}/{n_runs}: 0 % reference, seed {seed}")
        meter.dirs.clear()
        ref = run_pipeline(replace(cfg_s, ratio=0.0, method="random", finetune=finetune,
                                   scorer_options=()), log=meter)
        recipes = dict(ref.get("recipes", {}))

        def ref_row(view: dict[str, Any]) -> dict[str, Any]:
            row = _row(view, REFERENCE, 0.0, seed, 0.0, meter)
            row["score_s"] = row["prune_s"] = 0.0  # nothing is selected for the full dataset
            row["score_cpu_s"] = row["prune_cpu_s"] = 0.0
            row["selection_s"] = 0.0
            row["total_s"], row["total_cpu_s"] = row["pretrain_s"], row["pretrain_cpu_s"]
            return row

        add(ref, ref_row)
        for method, r in plan:
            i += 1
            log(f"[cost-table] run {i}/{n_runs}: {method} at {_r(r)}, seed {seed}")
            modes = tuple(m for m in finetune if m != "ff" or method in ff_set
                          or base_method(method) in ff_set)  # fm covers fm[k=16]
            meter.dirs.clear()
            res = run_pipeline(parse_variant(method).apply(
                replace(cfg_s, ratio=r, finetune=modes,
                        scorer_options=options_for(method, base.scorer_options))), log=meter)
            if "surrogate" in res["stages"]:
                surrogate_s = float(res["stages"]["surrogate"]["seconds"])
                surrogate_cpu = meter.cpu("surrogate")
            charged = (surrogate_s if get_scorer(base_method(method)).needs_surrogate
                       and surrogate_s else 0.0)
            add(res, lambda view: _row(view, method, r, seed, charged, meter, surrogate_cpu))
    cfg = {**asdict(base), "data_root": str(base.data_root), "runs_root": str(base.runs_root)}
    ratios = sorted(set(ratios) | {r for _, r in plan})
    table = summarize(rows, methods=methods, ratios=ratios, seeds=seeds, finetune=finetune,
                      tol=tol, criterion=criterion)
    if target_rows:  # several targets: the accuracy tables of each (Fig. A5)
        table["targets"] = {}
        for name, trows in target_rows.items():
            ts = summarize(trows, methods=methods, ratios=ratios, seeds=seeds, finetune=finetune,
                           tol=tol, criterion=criterion)
            table["targets"][name] = {k: ts[k] for k in ("accuracy", "accuracy_best", "winners")}
        table["target_rows"] = [r for trows in target_rows.values() for r in trows]
        table["target_weights"] = list(base.target_weights)
    table.update({"config": cfg, "surrogate_s": surrogate_s, "command": command, "recipes": recipes,
                  "surrogate_brought": base.surrogate_weights or None,
                  "machine": machine_info(),
                  "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds")})
    if out_dir is not None:
        write_outputs(table, Path(out_dir))
    return table


def _target_views(res: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """``[(None, res)]`` for a one-target run; for several, one view per target whose
    ``finetune-MODE`` stages are that target's (``finetune-MODE@name``)."""
    per = res.get("per_target")
    if not per:
        return [(None, res)]
    out = []
    for name in per:
        suffix = f"@{name}"
        st = {k: v for k, v in res["stages"].items() if "@" not in k}
        st.update({k[: -len(suffix)]: v for k, v in res["stages"].items() if k.endswith(suffix)})
        out.append((name, {**res, "stages": st}))
    return out


def options_for(method: str, pairs: Sequence[str]) -> tuple[str, ...]:
    """The ``NAME=VALUE`` options (``--opt``) that ``method`` has: one list serves every method
    of the table (e.g. ``runs=2`` reaches EL2N/GraNd/FORGET, not LM). ``METHOD.NAME=VALUE``
    reaches that method only (e.g. ``el2n.runs=4`` leaves FORGET's ``runs`` alone)."""
    from ..scoring.registry import parse_option_pairs

    known = get_scorer(base_method(method)).options
    out = []
    for p in pairs:
        name, value = next(iter(parse_option_pairs([p]).items()))
        owner, dot, bare = name.partition(".")
        if dot:
            if owner in (method, base_method(method)) and bare in known:
                out.append(f"{bare}={value}")
        elif name in known:
            out.append(p)
    return tuple(out)


def versus_random(rows: list[dict[str, Any]], mode: str, methods: Sequence[str],
                  ratios: Sequence[float], key: str = "top1") -> list[dict[str, Any]]:
    """Each method against RANDOM at the same ratio, on ``{mode}_{key}`` (final-epoch top-1 by
    default): mean ± std over seeds, the difference of means, seeds won (paired by seed: seed
    ``s`` of both pretrains with the same ``train.seed``), and a verdict — ``better`` / ``worse``
    when the two mean ± std intervals do not overlap (beyond the seeds' spread), ``within
    spread`` otherwise (also with a single seed, where no spread is known: ``n/a``)."""
    col = f"{mode}_{key}"

    def by_seed(m: str, r: float) -> dict[int, float]:
        return {int(x["seed"]): float(x[col]) for x in rows
                if x["method"] == m and x["ratio"] == r and x.get(col) is not None}

    out = []
    for r in (r for r in ratios if r > 0):
        rnd = by_seed("random", r)
        if not rnd:
            continue
        rm, rs = _mean_std(list(rnd.values()))
        for m in methods:
            if m == "random":
                continue
            got = by_seed(m, r)
            if not got:
                continue
            mm, ms = _mean_std(list(got.values()))
            paired = [s for s in got if s in rnd]
            wins = sum(got[s] > rnd[s] for s in paired)
            if len(got) < 2 or len(rnd) < 2:
                verdict = "n/a (one seed)"
            elif mm - ms > rm + rs:
                verdict = "better"
            elif mm + ms < rm - rs:
                verdict = "worse"
            else:
                verdict = "within spread"
            out.append({"method": m, "ratio": r, "mean": mm, "std": ms, "random_mean": rm,
                        "random_std": rs, "delta": mm - rm, "wins": wins, "paired": len(paired),
                        "verdict": verdict})
    return out


def summarize(rows: list[dict[str, Any]], *, methods: Sequence[str], ratios: Sequence[float],
              seeds: Sequence[int], finetune: Sequence[str], tol: float = 0.0,
              criterion: str = "final") -> dict[str, Any]:
    """Aggregate raw rows into cost / selection / accuracy / winning-subset tables; the winning
    subsets are judged on the ``criterion`` epoch's accuracy (:data:`CRITERIA`)."""
    _criterion(criterion)
    ref_rows = [r for r in rows if r["method"] == REFERENCE]
    ref_total = _mean_std([r["total_s"] for r in ref_rows])[0]
    ref_pre = _mean_std([r["pretrain_s"] for r in ref_rows])[0]
    ref_total_cpu = _mean_std([r.get("total_cpu_s") for r in ref_rows])[0]
    ref_pre_cpu = _mean_std([r.get("pretrain_cpu_s") for r in ref_rows])[0]
    cost: list[dict[str, Any]] = [{"method": REFERENCE, "ratio": 0.0, "total_s": ref_total,
                                   "pretrain_s": ref_pre, "reduction": 0.0,
                                   "total_cpu_s": ref_total_cpu, "pretrain_cpu_s": ref_pre_cpu,
                                   "cpu_reduction": 0.0, "pretrain_cpu_reduction": 0.0,
                                   "pretrain_reduction": 0.0, "paper_reduction": 0.0,
                                   "paper_total_h": PAPER_TOTAL_HOURS[0.0]}]
    for m in methods:
        for r in ratios:
            sel = [x for x in rows if x["method"] == m and x["ratio"] == r]
            if not sel or r == 0:
                continue
            agg = {k: _mean_std([x.get(k) for x in sel])[0]
                   for k in ("surrogate_s", "score_s", "prune_s", "pretrain_s", "total_s",
                             "pretrain_cpu_s", "total_cpu_s")}
            fr = [x.get("kept_sample_fraction") for x in sel
                  if x.get("kept_sample_fraction") is not None]
            agg["kept_sample_fraction"] = _mean_std(fr)[0] if fr else None
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
            sur, sc = (_mean_std([x[k] for x in sel])[0] for k in ("surrogate_s", "score_s"))
            pr, pre = (_mean_std([x.get(k) for x in sel])[0] for k in ("prune_s", "pretrain_s"))
            selection.append({"method": m, "ratio": sel_ratio, "surrogate_s": sur, "score_s": sc,
                              "selection_inner_s": _mean_std([x["selection_s"] for x in sel])[0],
                              "total_s": sur + sc, "pretrain_s": pre,
                              "with_pretrain_s": sur + sc + (0.0 if math.isnan(pr) else pr) + pre,
                              "paper_h": PAPER_TAB4_HOURS.get(m)})
    accuracy: dict[str, Any] = {}
    accuracy_best: dict[str, Any] = {}
    winners: dict[str, Any] = {}
    for mode in finetune:
        bkey = f"{mode}_best_top1"
        ref_best = [x[bkey] for x in ref_rows if x.get(bkey) is not None]
        accuracy_best[mode] = {"reference": _mean_std(ref_best), "methods": {}}
        for m in methods:
            by = {r: [x[bkey] for x in rows if x["method"] == m and x["ratio"] == r
                      and x.get(bkey) is not None] for r in pruned}
            if any(by.values()):
                accuracy_best[mode]["methods"][m] = {str(r): _mean_std(v) for r, v in by.items() if v}
        key = f"{mode}_top1"
        ref_acc = [x[key] for x in ref_rows if x.get(key) is not None]
        accuracy[mode] = {"reference": _mean_std(ref_acc), "methods": {}}
        winners[mode] = {}
        for m in methods:
            by_ratio = {r: [x[key] for x in rows if x["method"] == m and x["ratio"] == r
                            and x.get(key) is not None] for r in pruned}
            by_ratio = {r: v for r, v in by_ratio.items() if v}
            if not by_ratio:
                continue
            accuracy[mode]["methods"][m] = {str(r): _mean_std(v) for r, v in by_ratio.items()}
            wkey = key if criterion == "final" else bkey
            ref_w = [x[wkey] for x in ref_rows if x.get(wkey) is not None]
            by_w = {r: [x[wkey] for x in rows if x["method"] == m and x["ratio"] == r
                        and x.get(wkey) is not None] for r in pruned}
            by_w = {r: v for r, v in by_w.items() if v}
            if ref_w and by_w:
                winners[mode][m] = best_winning_subset(by_w, ref_w, tol)
    vs_random = {mode: versus_random(rows, mode, methods, ratios) for mode in finetune}
    return {"rows": rows, "cost": cost, "selection": selection, "accuracy": accuracy,
            "accuracy_best": accuracy_best, "winners": winners, "versus_random": vs_random, "methods": list(methods), "ratios": list(ratios),
            "seeds": list(seeds), "finetune": list(finetune), "tol": tol, "criterion": criterion,
            "reference_total_s": ref_total, "reference_pretrain_s": ref_pre}


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count()
    import torch

    return {"cpu": cpu, "cores": cores, "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(terse=True)}


# ---------------------------------------------------------------------------------- report
def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x * 100:+.0f} %" if signed else f"{x * 100:.0f} %"


def _share(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f} %"


def _f(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def _r(ratio: float) -> str:
    return f"{ratio * 100:.0f} %"


def _acc(ms: tuple[float, float] | list[float] | None, n_seeds: int) -> str:
    if not ms or math.isnan(ms[0]):
        return "–"
    return f"{ms[0]:.1f} ± {ms[1]:.1f}" if n_seeds > 1 else f"{ms[0]:.1f}"


def method_style(m: str, siblings: Sequence[str] = ()) -> PlotStyle:
    """Colour, marker and label of a method or variant (from its registered scorer; a variant
    such as ``fm[k=16]`` gets its method's colour and a label with its settings)."""
    try:
        return variant_style(m, siblings)[0]
    except DP4TLError:  # not a method spelling (an old results file): its name upper-cased
        return PlotStyle(None, "o", m.upper())


def _dash(m: str, siblings: Sequence[str]) -> str:
    try:
        return variant_style(m, siblings)[1]
    except DP4TLError:
        return "-"


def method_label(m: str) -> str:
    return method_style(m).label


def _base(m: str) -> str:
    try:
        return base_method(m)
    except DP4TLError:
        return m


def _no_surrogate(methods: Sequence[str]) -> str:
    """Labels of the methods that train no surrogate (e.g. RANDOM)."""
    return ", ".join(method_label(m) for m in methods
                     if is_registered(_base(m)) and not get_scorer(_base(m)).needs_surrogate)


def _but(names: str, prefix: str) -> str:
    return prefix + names if names else ""


def method_cost(m: str) -> str:
    return get_scorer(_base(m)).cost_summary() if is_registered(_base(m)) else "–"


def markdown_tables(t: dict[str, Any], plots_prefix: str = "") -> str:
    """The tables of the report (no title): cost, selection cost, accuracy, winners, raw runs."""
    methods, ns = t["methods"], len(t["seeds"])
    pruned = [r for r in t["ratios"] if r > 0]
    cost = {(c["method"], c["ratio"]): c for c in t["cost"]}
    ref = cost[(REFERENCE, 0.0)]
    L = ["### Cost (Tab. 3)", "",
         "Total cost = surrogate + score + prune + pretrain wall seconds (finetuning excluded; "
         "the cached surrogate's one measured training time is charged to every pruned run of a "
         f"method that needs it{_but(_no_surrogate(methods), ' — all but ')}). 0 % = one full-data "
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
    L.append(f"| 0 % | {PAPER_TOTAL_HOURS[0.0]} | – | "
             + " | ".join(f"{ref['total_s']:.1f}" for _ in methods)
             + f" | {ref['pretrain_s']:.1f} | – | {_f(ref.get('pretrain_cpu_s'))} | – |")
    for r in pruned:
        cs = [cost[(m, r)] for m in methods if (m, r) in cost]
        pre = _mean_std([c["pretrain_s"] for c in cs])[0]
        pre_cpu = _mean_std([c.get("pretrain_cpu_s") for c in cs])[0]
        ref_cpu = ref.get("pretrain_cpu_s") or math.nan
        ph = PAPER_TOTAL_HOURS.get(round(r, 4))
        cells = [f"{cost[(m, r)]['total_s']:.1f} ({_pct(-cost[(m, r)]['reduction'], True)})"
                 if (m, r) in cost else "–" for m in methods]
        L.append(f"| {_r(r)} | {ph if ph is not None else '–'} | {_pct(paper_reduction(r))} | "
                 + " | ".join(cells)
                 + f" | {pre:.1f} | {_pct(1 - pre / ref['pretrain_s'])} | {_f(pre_cpu)} | "
                 f"{_pct(1 - pre_cpu / ref_cpu)} |")
    sur = t.get("surrogate_s")
    if t.get("surrogate_brought"):
        L += ["", f"The surrogate was **brought** (`{t['surrogate_brought']}`, imported, not "
              f"trained): its {_f(sur)} s are the import, not a training run; the paper's totals "
              "include training it."]
    elif sur and ref["pretrain_s"]:
        share = sur / ref["pretrain_s"]
        rec = t.get("recipes") or {}
        L += ["", f"The surrogate (`{rec.get('surrogate', '?')}`) took {sur:.1f} s = {share:.2f}× "
              f"the 0 % pretraining (`{rec.get('pretrain', '?')}`). A selection method's total at "
              f"ratio r is about (1 − r) + {share:.2f} of the 0 % cost, so it saves time once "
              f"r > {share:.2f}"
              + (" — here the surrogate costs about as much as a full pretraining, so pruned "
                 "totals exceed the 0 % cost" if share > 0.8 else "")
              + ". In the paper the ResNet-18 surrogate is a small share of ResNet-101 "
              "pretraining and is shared by every ratio and target, so its totals fall almost "
              "as fast as the kept fraction; here a larger surrogate share pushes the totals "
              "above the pretrain-only line."]
    L += ["", "Stage breakdown (wall seconds, mean over seeds; CPU-s = CPU seconds of this "
          "process + its finished loader workers, less sensitive to other jobs; kept samples = "
          "the share of source train samples kept — for class/cluster methods the ratio counts "
          "classes/clusters, so it is not 1 − ratio unless `--budget samples`):", "",
          "| method | ratio | kept samples | surrogate | score | prune | pretrain | total | "
          "reduction | total CPU-s | reduction (CPU-s) |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
          f"| {REFERENCE} | 0 % | 100 % | 0 | 0 | 0 | {ref['pretrain_s']:.1f} | "
          f"{ref['total_s']:.1f} | – | {_f(ref.get('total_cpu_s'))} | – |"]
    for c in t["cost"][1:]:
        L.append(f"| {method_label(c['method'])} | {_r(c['ratio'])} | "
                 f"{_share(c.get('kept_sample_fraction'))} | {c['surrogate_s']:.1f} | "
                 f"{c['score_s']:.1f} | {c['prune_s']:.2f} | {c['pretrain_s']:.1f} | "
                 f"{c['total_s']:.1f} | {_pct(c['reduction'])} | {_f(c.get('total_cpu_s'))} | "
                 f"{_pct(c.get('cpu_reduction'))} |")
    if t["selection"]:
        r = t["selection"][0]["ratio"]
        L += ["", f"### Selection cost (Tab. 4) at {_r(r)}", "",
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
        for s in t["selection"]:
            ph = s.get("paper_h")
            L.append(f"| {method_label(s['method'])} | {s['surrogate_s']:.1f} | {s['score_s']:.1f} | "
                     f"{s['selection_inner_s']:.1f} | {s['total_s']:.1f} | "
                     f"{_f(s.get('with_pretrain_s'))} | {ph if ph is not None else '–'} | "
                     f"{method_cost(s['method'])} |")
    for mode in t["finetune"]:
        acc = t["accuracy"].get(mode)
        if not acc:
            continue
        def table(a: dict) -> list[str]:  # ratio x method accuracies of one result set
            ms = [m for m in methods if m in a["methods"]]
            return (["| ratio | " + " | ".join(method_label(m) for m in ms) + " |",
                     "|---:|" + "---:|" * len(ms)]
                    + [f"| {_r(r)} | " + " | ".join(_acc(a["methods"][m].get(str(r)), ns)
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
        L += ["", f"### Versus RANDOM — {mode.upper()}: beyond the seeds' spread?", "",
              "Final-epoch target top-1, mean ± std over seeds, against RANDOM at the same ratio. "
              "**better** / **worse**: the two mean ± std intervals do not overlap; seeds won: "
              "seed by seed (both runs pretrain with the same seed).", "",
              "| ratio | method | top-1 % | RANDOM top-1 % | Δ points | seeds won | verdict |",
              "|---:|---|---:|---:|---:|---:|---|"]
        for v in vs:
            L.append(f"| {_r(v['ratio'])} | {method_label(v['method'])} | "
                     f"{_acc((v['mean'], v['std']), ns)} | "
                     f"{_acc((v['random_mean'], v['random_std']), ns)} | "
                     f"{v['delta']:+.1f} | {v['wins']}/{v['paired']} | "
                     f"{'**' + v['verdict'] + '**' if v['verdict'] in ('better', 'worse') else v['verdict']} |")
        L += ["", versus_random_summary(vs)]
    if any(t["winners"].values()):
        L += ["", f"### Best winning subset (largest ratio with {_crit_text(t)} accuracy ≥ 0 % − "
                  f"{t['tol']} points; criterion `{t.get('criterion', 'final')}`)",
              "", "| mode | method | best ratio | accuracy % | 0 % accuracy % |", "|---|---|---:|---:|---:|"]
        for mode, ws in t["winners"].items():
            for m, w in ws.items():
                br = f"{_r(w['ratio'])}" if w["ratio"] > 0 else "none (0 %)"
                L.append(f"| {mode.upper()} | {method_label(m)} | {br} | "
                         f"{_acc((w['mean'], w['std']), ns)} | {_acc((w['ref_mean'], w['ref_std']), ns)} |")
    L += _target_tables(t, methods, pruned, ns)
    L += truth_table(t.get("rows", []), [method_label(m) for m in methods], methods, pruned)
    if plots_prefix is not None:
        L += ["", f"![accuracy vs ratio]({plots_prefix}accuracy.png)",
              f"![cost vs ratio]({plots_prefix}cost.png)"]
        if t.get("targets"):
            L.append(f"![accuracy per target]({plots_prefix}accuracy-targets.png)")
    return "\n".join(L) + "\n"


def versus_random_summary(vs: list[dict[str, Any]]) -> str:
    """One sentence per method: at which ratios it beats (or loses to) RANDOM beyond the spread."""
    parts = []
    for m in dict.fromkeys(v["method"] for v in vs):
        mine = [v for v in vs if v["method"] == m]
        better = [_r(v["ratio"]) for v in mine if v["verdict"] == "better"]
        worse = [_r(v["ratio"]) for v in mine if v["verdict"] == "worse"]
        rest = [_r(v["ratio"]) for v in mine if v["verdict"] not in ("better", "worse")]
        bits = ([f"better at {', '.join(better)}"] if better else []) + \
               ([f"worse at {', '.join(worse)}"] if worse else []) + \
               ([f"within the spread at {', '.join(rest)}"] if rest else [])
        parts.append(f"{method_label(m)}: {'; '.join(bits)}")
    return "**Verdict:** " + ". ".join(parts) + "."


def _target_tables(t: dict[str, Any], methods: Sequence[str], pruned: Sequence[float],
                   ns: int) -> list[str]:
    """Several targets (Fig. A5): per mode, one grouped table — a column per (target, method),
    a row per ratio, the 0 % reference first — and the best winning subset per target."""
    targets = t.get("targets") or {}
    if not targets:
        return []
    w = t.get("target_weights") or []
    L = ["", "### Several targets (Fig. A5): one selection for all targets, accuracy per target",
         "", f"The source is scored once for the {len(targets)} targets "
         f"({', '.join(f'`{n}`' for n in targets)}; each target's votes sum to 1"
         + (f", weights {', '.join(f'{x:g}' for x in w)}" if w else ", equal weights")
         + "), pretrained once per ratio, then finetuned on each target. The tables above are "
         f"the first target's (`{next(iter(targets))}`)."]
    for mode in t["finetune"]:
        cols = [(n, m) for n, tt in targets.items() for m in methods
                if m in tt["accuracy"].get(mode, {}).get("methods", {})]
        if not cols:
            continue
        L += ["", f"Target test top-1 % — {mode.upper()}, final epoch", "",
              "| ratio | " + " | ".join(f"{n}: {method_label(m)}" for n, m in cols) + " |",
              "|---:|" + "---:|" * len(cols),
              "| 0 % | " + " | ".join(_acc(targets[n]["accuracy"][mode]["reference"], ns)
                                     for n, _ in cols) + " |"]
        for r in pruned:
            L.append(f"| {_r(r)} | " + " | ".join(
                _acc(targets[n]["accuracy"][mode]["methods"][m].get(str(r)), ns)
                for n, m in cols) + " |")
        L += ["", f"Best winning subsets ({_crit_text(t)} accuracy, criterion "
              f"`{t.get('criterion', 'final')}`):", "",
              "| target | method | best winning ratio | accuracy % | 0 % accuracy % |",
              "|---|---|---:|---:|---:|"]
        for n, tt in targets.items():
            for m, win in tt["winners"].get(mode, {}).items():
                br = _r(win["ratio"]) if win["ratio"] > 0 else "none (0 %)"
                L.append(f"| {n} | {method_label(m)} | {br} | "
                         f"{_acc((win['mean'], win['std']), ns)} | "
                         f"{_acc((win['ref_mean'], win['ref_std']), ns)} |")
    return L


def _crit_text(t: dict[str, Any]) -> str:
    return CRITERIA[t.get("criterion", "final")]


def criterion_line(t: dict[str, Any]) -> str:
    """The header line naming the winning-subset criterion (every cost-table header has it)."""
    c = t.get("criterion", "final")
    return (f"- winning-subset criterion: `{c}` — the {_crit_text(t)} target test top-1 decides "
            "whether a pruned ratio wins (`--criterion final|best`; `best` is the authors' "
            "`best_test_top1`, chosen on the test set: docs/deviations.md)")


def header_lines(t: dict[str, Any]) -> list[str]:
    cfg, mach = t["config"], t["machine"]
    loads = [r["loadavg_1min"] for r in t["rows"] if r.get("loadavg_1min") is not None]
    return [f"- **CPU** run, {mach['cores']} cores ({mach['cpu']}), Python {mach['python']}, "
            f"torch {mach['torch']}, {mach['platform']}; date {t['date']}",
            f"- command: `{t['command'] or '(library call)'}`",
            f"- data: source `{cfg['source']}`, "
            + (f"targets {', '.join(f'`{x}`' for x in cfg['targets'])} (one selection for all)"
               if len(cfg.get("targets") or ()) > 1 else f"target `{cfg['target'] or '(first)'}`")
            + f", format "
            f"`{cfg['fmt']}`; recipes `{cfg['recipes'] or 'tiny'}` ("
            + (", ".join(f"{k} `{v}`" for k, v in t["recipes"].items()) if t.get("recipes")
               else "the recipe set's defaults") + f"), FM k={cfg['k']}"
            + "".join(f"; {name} overrides `{' '.join(cfg[key])}`" for name, key in (
                ("pretrain", "overrides"), ("surrogate", "surrogate_overrides"),
                ("finetune", "finetune_overrides")) if cfg.get(key)),
            f"- ratios {', '.join(f'{_r(r)}' for r in t['ratios'])}; methods "
            f"{', '.join(method_label(m) for m in t['methods'])}; finetune "
            f"{', '.join(m.upper() for m in t['finetune'])}; seeds {t['seeds']}",
            criterion_line(t),
            "- These are wall times and accuracies on the small embedded synthetic data: read the "
            "*ratios* (reductions, relative accuracy), not absolute numbers; absolute GPU numbers "
            "come later from the GPU machine. Timings are of a shared 2-core machine (other jobs "
            "ran concurrently), so single stage times are noisy by ±20 % or more"
            + (f" (1-min load average when each pretraining finished: "
               f"{min(loads):.1f}–{max(loads):.1f} on "
               f"{mach['cores']} cores)" if loads else "") + ".",
            "- Stage times are read from each stage's `DONE.json` (measured when the stage ran; a "
            "rerun that finds a stage cached reports the same numbers)."]


def write_outputs(t: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", t)
    plot_accuracy(t, out / "accuracy.png")
    plot_cost(t, out / "cost.png")
    if t.get("targets"):
        plot_targets(t, out / "accuracy-targets.png")
    text = ["# DP4TL cost table and accuracy vs pruning ratio", "", *header_lines(t), "",
            markdown_tables(t)]
    atomic_write_text(out / "report.md", "\n".join(text))


def rerender(out: Path, criterion: str | None = None) -> dict[str, Any]:
    """Rebuild the tables, plots and report of ``out/results.json`` from its raw rows with this
    version's code (e.g. after the report gained a table), without running anything;
    ``criterion`` judges the winning subsets again (default: the run's)."""
    path = Path(out) / "results.json"
    if not path.is_file():
        raise DP4TLError(f"{path} not found: point at the --out folder of a cost-table run")
    t = rerender_table(path, criterion)
    write_outputs(t, Path(out))
    return t


# ----------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(t: dict[str, Any], path: Path) -> None:
    """Fig. 4 style: x = pruning ratio %, y = target test top-1 %, LP and FF side by side."""
    plt = _plt()
    modes = [m for m in t["finetune"] if t["accuracy"].get(m, {}).get("methods")]
    fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(5.2 * max(1, len(modes)), 4.2),
                             squeeze=False)
    for ax, mode in zip(axes[0], modes):
        acc = t["accuracy"][mode]
        _curves(ax, t, acc)
        ref = acc["reference"][0]
        if not math.isnan(ref):
            ax.axhline(ref, color="black", ls="--", lw=1.2, label="0 % (unpruned source)")
            lo, hi = ax.get_ylim()
            ax.set_ylim(lo, max(hi, ref + 0.08 * (hi - lo)))  # room for the label above the line
            ax.annotate(f"0 %: {ref:.1f}", (1.0, ref), xycoords=("axes fraction", "data"),
                        xytext=(-4, 3), textcoords="offset points", ha="right", fontsize=8)
        ax.set_title(f"{mode.upper()} on target `{_first_target(t)}`")
        ax.set_xlabel("pruning ratio (%)")
        ax.set_ylabel("target test top-1 (%)")
        ax.set_xticks([100 * r for r in t["ratios"] if r > 0])
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    # as many legend columns as fit the figure's width (~1.1 in per entry), then more rows
    ncol = max(1, min(len(labels), int(fig.get_figwidth() / 1.1)))
    rows = -(-len(labels) // ncol)
    fig.set_figheight(4.2 + 0.22 * (rows - 1))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.suptitle("Transfer accuracy vs source pruning ratio (cf. paper Fig. 4)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.045 + 0.05 * rows, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _first_target(t: dict[str, Any]) -> str:
    if t.get("targets"):
        return next(iter(t["targets"]))
    return t["config"].get("target") or "first"


def _curves(ax, t: dict[str, Any], acc: dict[str, Any]) -> None:
    """One accuracy-vs-ratio curve per method/variant of ``acc`` (and the 0 % line)."""
    ms = [m for m in t["methods"] if m in acc["methods"]]
    n = len(ms)
    for j, m in enumerate(ms):
        by = acc["methods"][m]
        rs = sorted(float(r) for r in by)
        dx = (j - (n - 1) / 2) * 0.6 if len(t["seeds"]) > 1 else 0.0  # keep error bars apart
        ys = [by[str(r)][0] for r in rs]
        es = [by[str(r)][1] for r in rs]
        st = method_style(m, t["methods"])
        ax.errorbar([100 * r + dx for r in rs], ys, yerr=es if len(t["seeds"]) > 1 else None,
                    color=st.color, marker=st.marker, ls=_dash(m, t["methods"]), ms=6, lw=1.6,
                    capsize=3, label=st.label)


def plot_targets(t: dict[str, Any], path: Path) -> None:
    """Fig. A5 style: one panel per target (columns) and finetuning mode (rows), accuracy vs
    pruning ratio of the one selection made for all targets."""
    plt = _plt()
    targets = t["targets"]
    modes = [m for m in t["finetune"] if any(tt["accuracy"].get(m, {}).get("methods")
                                            for tt in targets.values())]
    nr, nc = max(1, len(modes)), len(targets)
    fig, axes = plt.subplots(nr, nc, figsize=(4.4 * nc, 3.8 * nr), squeeze=False)
    for i, mode in enumerate(modes):
        for j, (name, tt) in enumerate(targets.items()):
            ax, acc = axes[i][j], tt["accuracy"][mode]
            _curves(ax, t, acc)
            ref = acc["reference"][0]
            if not math.isnan(ref):
                ax.axhline(ref, color="black", ls="--", lw=1.2, label="0 % (unpruned source)")
            ax.set_title(f"{mode.upper()} on `{name}`", fontsize=9)
            ax.set_xlabel("pruning ratio (%)")
            ax.set_ylabel("target test top-1 (%)")
            ax.set_xticks([100 * r for r in t["ratios"] if r > 0])
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8,
               frameon=False)
    fig.suptitle(f"One pruned source for {nc} targets: accuracy per target (cf. paper Fig. A5)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost(t: dict[str, Any], path: Path) -> None:
    """Left: total cost (s) vs ratio per method; right: reduction vs 0 %, ours beside the paper's."""
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    cost = t["cost"]
    ref = cost[0]
    for m in t["methods"]:
        cs = sorted((c for c in cost if c["method"] == m), key=lambda c: c["ratio"])
        if not cs:
            continue
        st, dash = method_style(m, t["methods"]), _dash(m, t["methods"])
        color, marker = st.color, st.marker
        xs = [0] + [100 * c["ratio"] for c in cs]
        a1.plot(xs, [ref["total_s"]] + [c["total_s"] for c in cs], color=color, marker=marker,
                ls=dash, label=st.label)
        a2.plot(xs, [0] + [100 * c["reduction"] for c in cs], color=color, marker=marker,
                ls=dash, lw=1, alpha=0.8, label=f"{st.label} total")
    pruned = sorted({c["ratio"] for c in cost[1:]})
    pre = [_mean_std([c["pretrain_s"] for c in cost[1:] if c["ratio"] == r])[0] for r in pruned]
    a1.plot([0] + [100 * r for r in pruned], [ref["pretrain_s"]] + pre, color="black", ls=":",
            marker=".", label="pretrain only (mean)")
    a1.set_title("cost = surrogate + score + prune + pretrain (s)")
    a1.set_xlabel("pruning ratio (%)")
    a1.set_ylabel("wall seconds (CPU)")
    a1.set_ylim(bottom=0)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7, loc="center right", ncol=2, framealpha=0.9)
    sur = t.get("surrogate_s")
    if sur and ref["pretrain_s"]:
        a1.text(0.02, 0.02, f"surrogate {sur:.1f} s = {sur / ref['pretrain_s']:.2f}× the 0 % "
                f"pretraining\n(charged to every pruned run"
                f"{_but(_no_surrogate(t['methods']), ' except ')})",
                fontsize=8,
                transform=a1.transAxes, va="bottom")
    a2.plot([0] + [100 * r for r in pruned], [0] + [100 * (1 - p / ref["pretrain_s"]) for p in pre],
            color="black", ls=":", marker=".", lw=2, label="ours, pretrain only, wall (mean)")
    pre_cpu = [_mean_std([c.get("pretrain_cpu_s") for c in cost[1:] if c["ratio"] == r])[0]
               for r in pruned]
    if ref.get("pretrain_cpu_s") and not any(math.isnan(p) for p in pre_cpu):
        a2.plot([0] + [100 * r for r in pruned],
                [0] + [100 * (1 - p / ref["pretrain_cpu_s"]) for p in pre_cpu], color="brown",
                ls="-.", marker=".", lw=2, label="ours, pretrain only, CPU-s (mean)")
    pr = [r for r in sorted(PAPER_TOTAL_HOURS)]
    a2.plot([100 * r for r in pr], [100 * paper_reduction(r) for r in pr], color="black", ls="--",
            marker="*", ms=10, lw=2, label="paper Tab. 3 (total: surrogate + LM/FM + RN-101)")
    a2.plot([0, 80], [0, 80], color="lightgray", lw=1, label="ideal (= ratio)")
    a2.set_title("time reduction vs 0 % (%)")
    a2.set_xlabel("pruning ratio (%)")
    a2.set_ylabel("reduction (%)")
    a2.grid(alpha=0.3)
    fig.legend(*a2.get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=7,
               frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ the embedded benchmark
def stage_seconds(runs_root: Path) -> tuple[float, int]:
    """Sum of the ``seconds`` every finished stage of ``runs_root`` recorded in its DONE.json, and
    the number of stages: the compute a benchmark cost, each stage counted once however many
    (method, ratio, target) rows share it through the cache."""
    total, n = 0.0, 0
    for done in Path(runs_root).glob("*/DONE.json"):
        try:
            total += float(read_json(done).get("seconds") or 0.0)
            n += 1
        except (OSError, ValueError, AttributeError):
            continue
    return total, n


def embedded_summary(tables: dict[str, dict[str, Any]], *, command: str,
                     seconds: float | None = None, link_prefix: str = "",
                     stages: tuple[float, int] | None = None) -> str:
    """The embedded benchmark's section: per target the LP accuracy table, each method against
    RANDOM (beyond the seeds' spread or not) and the winning subsets, with one verdict line per
    target; ``tables`` maps target name → its cost table (:func:`rerender_table` of its
    ``results.json``). ``stages``: :func:`stage_seconds` of the runs folder, when already read."""
    first = next(iter(tables.values()))
    mach, cfg = first["machine"], first["config"]
    stage_s, n_stages = stages or stage_seconds(Path(cfg["runs_root"]))
    loads = [r["loadavg_1min"] for t in tables.values() for r in t["rows"]
             if r.get("loadavg_1min") is not None]
    ns = len(first["seeds"])
    L = [f"- **CPU** run, {mach['cores']} cores ({mach['cpu']}), Python {mach['python']}, "
         f"torch {mach['torch']}; finished {max(t['date'] for t in tables.values())}",
         f"- command: `{command}` (`just bench-embedded`)",
         f"- data `synth:bench` (64 source classes in 16 superclasses, 8,000 train images at "
         f"32 px; each target 10 classes, 400 train / 500 test images); recipes `bench` "
         f"({', '.join(f'{k} `{v}`' for k, v in sorted(first['recipes'].items()))}); FM k="
         f"{cfg['k']}; EL2N/GraNd over 4 early-training runs; seeds {first['seeds']}",
         f"- compute: {stage_s / 60:.1f} min of stage time in all ({n_stages} stages, each run "
         "once and shared through the cache by every target that needs it: the in-domain "
         "baselines, RANDOM and the 0 % reference pretrain once for all targets)"
         + (f"; this invocation took {seconds / 60:.1f} min" if seconds else "")
         + (f"; 1-min load average when pretrainings finished {min(loads):.1f}–{max(loads):.1f} "
            f"on {mach['cores']} cores (a shared machine)" if loads else ""),
         "- accuracy: final-epoch LP target test top-1 %, mean ± std over seeds; **better** / "
         "**worse** = the mean ± std intervals of the method and of RANDOM at the same ratio do "
         "not overlap.", criterion_line(first), ""]
    L += ["### Verdict per target", "",
          "| target | LM vs RANDOM | FM vs RANDOM | baselines at 60 % vs RANDOM | best winning "
          "ratio LM / FM / RANDOM |", "|---|---|---|---|---|"]
    for name, t in tables.items():
        vs = t["versus_random"].get("lp", [])

        def cell(m: str) -> str:
            return ", ".join(f"{_r(v['ratio'])}: {v['delta']:+.1f} ({v['wins']}/{v['paired']}, "
                             f"{v['verdict']})" for v in vs if v["method"] == m) or "–"
        base = [v for v in vs if v["method"] not in ("lm", "fm")]
        better = [method_label(v["method"]) for v in base if v["verdict"] == "better"]
        worse = [method_label(v["method"]) for v in base if v["verdict"] == "worse"]
        above = sum(v["delta"] > 0 for v in base)
        bcell = (f"{above}/{len(base)} above RANDOM's mean; beyond the spread: "
                 f"{', '.join(better) or 'none'} better, {', '.join(worse) or 'none'} worse")
        w = t["winners"].get("lp", {})
        wcell = " / ".join(_r(w[m]["ratio"]) if m in w else "–" for m in ("lm", "fm", "random"))
        L.append(f"| `{name}` | {cell('lm')} | {cell('fm')} | {bcell} | {wcell} |")
    L += ["", "Cells: Δ top-1 points vs RANDOM (seeds won, verdict)."]
    for name, t in tables.items():
        md = markdown_tables(t, plots_prefix=None)
        tail = md[md.index("### Target test top-1"):]
        tail = tail.replace("\n### ", "\n#### ").replace("### Target test top-1", "#### Target test top-1", 1)
        L += ["", f"### Target `{name}`", "",
              f"Full report (cost, Tab. 4 selection cost, stage breakdown): "
              f"[`{link_prefix}{name}/report.md`]({link_prefix}{name}/report.md)", "", tail.rstrip(),
              "", f"![accuracy vs ratio, {name}]({link_prefix}{name}/accuracy.png)"]
    return "\n".join(L) + "\n"


def rerender_table(results_json: Path, criterion: str | None = None) -> dict[str, Any]:
    """The summary of a cost-table ``results.json`` recomputed from its rows (see :func:`rerender`),
    its winning subsets judged by ``criterion`` (default: the run's; older files: final)."""
    old = read_json(results_json)
    try:
        t = summarize(old["rows"], methods=old["methods"], ratios=old["ratios"],
                      seeds=old["seeds"], finetune=old["finetune"], tol=old.get("tol", 0.0),
                      criterion=criterion or old.get("criterion", "final"))
    except KeyError as e:
        raise DP4TLError(f"{results_json} lacks {e}: not a cost-table results file") from None
    for key in ("config", "surrogate_s", "command", "recipes", "surrogate_brought", "machine",
                "date"):
        t[key] = old.get(key)
    return t
