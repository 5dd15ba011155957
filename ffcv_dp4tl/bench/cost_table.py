"""The cost table and the accuracy-vs-pruning-ratio report (paper Tab. 3, Tab. 4, Fig. 4).

``run_cost_table`` runs :func:`run_pipeline` for every (method, ratio, seed) and collects

* per-stage wall and CPU times (the ``seconds`` and ``cpu_seconds`` each stage recorded in its
  ``DONE.json``, read from the :class:`~ffcv_dp4tl.pipeline.result.PipelineResult`'s fields);
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
  judged on the epoch ``criterion`` names (:data:`~.stats.CRITERIA`: ``final`` = the last epoch,
  or ``best`` = the best epoch on the test set, the authors' ``best_test_top1``; docs/deviations.md).
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
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..contracts import check_items, check_ratio, check_tol
from ..errors import DP4TLError, count
from ..fsutil import atomic_write_json, atomic_write_text, read_json
from ..pipeline.config import PipelineConfig, recorded_config
from ..pipeline.resolve import Resolved, seed_overrides
from ..pipeline.result import PipelineResult
from ..pipeline.run import preflight, run_pipeline
from ..pipeline.stages import ESTIMATED
from ..reporting import carry_notes, machine_info
from ..scoring.registry import get_scorer
from ..shipped import doc_ref
from ..outputs import KINDS, bench_of, claim_out_dir
from . import defaults
from .cost_results import check_results
from .markdown import header_lines, markdown_tables, ratio_label
from .plots import plot_accuracy, plot_cost, plot_targets
from .stats import COST_STAGES, REFERENCE, check_criterion, summarize, winner_rows
from .variants import base_method, parse_variant

def cost_row(res: PipelineResult, method: str, ratio: float, seed: int,
             charged_surrogate: float, charged_surrogate_cpu: float | None = None,
             target: str | None = None) -> dict[str, Any]:
    """One row of the table: a run's stage wall and CPU seconds (as its stages recorded them),
    kept samples and target top-1 (of ``target`` among several); ``charged_surrogate`` is the
    surrogate time charged to this run (0 for a method that needs none). ``estimated_s``: per
    cost stage, the seconds of its time from runs without an exact record (a killed run's,
    ``stages.ESTIMATED``), so that the report marks that time as a lower bound and shows no CPU
    seconds for it (the killed run's are lost); rows written before it have none."""
    run_seed = res.seeds[0] if res.seeds else 0
    st = {"surrogate": res.find("surrogate"), "score": res.find("score"),
          "prune": res.find("prune"), "pretrain": res.pretrain(run_seed)}
    sec = {name: run.seconds if run is not None else 0.0 for name, run in st.items()}
    sec["surrogate"] = charged_surrogate
    prune_v = st["prune"].values
    row: dict[str, Any] = {"method": method, "ratio": ratio, "seed": seed,
                           **{f"{k}_s": v for k, v in sec.items()},
                           "selection_s": float((st["score"].values if st["score"] else {})
                                                .get("selection_seconds", 0.0)),
                           "train_kept": prune_v.get("train_kept"),
                           # the sample share kept: ≠ 1 - ratio for cluster/class units
                           "kept_sample_fraction": prune_v.get("kept_sample_fraction"),
                           "total_s": sum(sec[k] for k in COST_STAGES)}
    # the seconds of each cost stage from runs without an exact record (killed; stages.ESTIMATED):
    # that stage's time is a lower bound and its CPU seconds incomplete (stats.summarize)
    est = {k: float(run.values.get(ESTIMATED) or 0.0) if run is not None else 0.0
           for k, run in st.items()}
    if not charged_surrogate:
        est["surrogate"] = 0.0  # (none charged to this run)
    row["estimated_s"] = {k: v for k, v in est.items() if v}
    row["surrogate_brought"] = bool(st["surrogate"] and st["surrogate"].values.get("brought"))
    row["truth"] = res.ground_truth  # synth data: the selection against its answer
    for mode in ("lp", "ff"):
        ft = res.finetune(mode, run_seed, target)
        v = ft.values if ft is not None else None
        row[f"{mode}_s"] = float(ft.seconds) if ft else None
        row[f"{mode}_top1"] = 100.0 * float(v["test_top1"]) if ft else None
        best = v.get("best_test_top1", v["test_top1"]) if ft else None  # older results: final
        row[f"{mode}_best_top1"] = 100.0 * float(best) if best is not None else None
    cpu = {k: (st[k].cpu_seconds if st[k] is not None else None)
           for k in ("score", "prune", "pretrain")}
    cpu["surrogate"] = charged_surrogate_cpu if charged_surrogate else 0.0
    row.update({f"{k}_cpu_s": v for k, v in cpu.items()})
    # load average when this run's pretraining finished (when it ran, not when it was cached)
    row["loadavg_1min"] = st["pretrain"].loadavg_1min if st["pretrain"] is not None else None
    row["total_cpu_s"] = (None if any(cpu[k] is None for k in COST_STAGES)
                          else sum(cpu[k] for k in COST_STAGES))
    return row


def run_cost_table(base: PipelineConfig, out_dir: str | Path | None = None, *,
                   ratios: Iterable[float] = defaults.RATIOS,
                   methods: Iterable[str] = defaults.METHODS,
                   seeds: Iterable[int] = (0,), finetune: Iterable[str] = defaults.FINETUNE,
                   ff_methods: Iterable[str] | None = None,
                   method_ratios: dict[str, Iterable[float]] | None = None, tol: float = 0.0,
                   criterion: str = "final", command: str = "", warm: bool = True,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every (method, ratio, seed) pipeline and return (and, with ``out_dir``, write) the
    table: ``results.json``, ``report.md``, ``accuracy.png`` and ``cost.png``.

    ``ff_methods``: run FF only for these methods (default: all; LP always runs) — a way to cut
    the FF cost. ``method_ratios``: run a method only at these pruned ratios (default: all of
    ``ratios``) — e.g. the costly baselines only at 60 % for the selection-cost table.
    Seed ``s`` sets the scoring seed and, for ``s != 0``, the pretraining and finetune recipes'
    ``train.seed`` and ``data.seed`` (:func:`~..pipeline.resolve.seed_overrides`); the
    surrogate is the same for every seed. ``criterion``: which
    epoch's accuracy decides the winning subsets (:data:`~.stats.CRITERIA`). ``warm``: run
    :func:`warm_up` just before the first stage that runs, untimed (none when every stage of
    every run is cached: :data:`ALL_CACHED`); recorded as ``warmup`` in the results.
    """
    check_criterion(criterion)  # before any work
    if out_dir is not None:
        claim_out_dir(out_dir, "cost-table")
    ratios = sorted({check_ratio(r) for r in ratios})
    methods, seeds, finetune = list(methods), [int(s) for s in seeds], tuple(finetune)
    for what, items in (("--methods", methods), ("--seeds", seeds), ("--finetune", finetune)):
        check_items(what, items)  # an empty table would replace the results of an earlier run
    tol = check_tol(tol)
    ff_set = set(methods if ff_methods is None else ff_methods)
    known = set(methods) | {base_method(m) for m in methods}
    unknown = sorted(ff_set - known)
    if unknown:
        raise DP4TLError(f"--ff-methods: {', '.join(unknown)} not among --methods "
                         f"({', '.join(methods)}); FF runs only for methods of the table")
    if ff_methods and "ff" not in finetune:
        raise DP4TLError(f"--ff-methods {','.join(ff_methods)} limits FF, but --finetune "
                         f"{','.join(finetune)} runs no FF; drop --ff-methods or add ff")
    method_ratios = {m: sorted({check_ratio(r) for r in rs})
                     for m, rs in (method_ratios or {}).items()}
    for m in methods:
        get_scorer(base_method(m))  # unknown method: one line listing the registered ones
    for p in base.scorer_options:  # an option no method of the table has is a typo
        if not any(options_for(m, [p]) for m in methods):
            raise DP4TLError(f"--opt {p}: none of the methods {', '.join(methods)} has that "
                             "option (NAME=VALUE for every method that has it, METHOD.NAME=VALUE "
                             f"for one); {doc_ref('scorers')} lists the options")
    if not ratios or any(not 0.0 <= r < 1.0 for r in ratios):
        raise DP4TLError(f"ratios must lie in [0, 1), got {ratios}")
    pruned = [r for r in ratios if r > 0]
    rows: list[dict[str, Any]] = []
    surrogate_s: float | None = None
    surrogate_cpu: float | None = None
    recipes: dict[str, str] = {}
    data: dict[str, Any] = {}
    for m, rs in method_ratios.items():
        if any(not 0.0 < r < 1.0 for r in rs):
            raise DP4TLError(f"ratios of {m} must lie in (0, 1), got {rs}")
    plan = [(m, r) for m in methods for r in method_ratios.get(m, pruned) if r > 0]
    if not plan:  # only the reference: an empty table, written over an earlier one
        raise DP4TLError(f"--ratios {','.join(f'{r:g}' for r in ratios)}: no pruned ratio "
                         "(above 0) to run; give at least one, e.g. 0,0.5 (0 is the shared "
                         "reference)")

    def config(cfg_s: PipelineConfig, method: str, r: float, modes: tuple[str, ...]) -> PipelineConfig:
        # (a mode --ff-methods leaves out takes no recipe: one named for it is refused)
        named = {f"{m}_recipe": "" for m in ("lp", "ff") if m not in modes}
        return parse_variant(method).apply(replace(cfg_s, ratio=r, finetune=modes, **named,
                                                   scorer_options=options_for(method, base.scorer_options)))

    def modes_of(method: str) -> tuple[str, ...]:
        return tuple(m for m in finetune if m != "ff" or method in ff_set
                     or base_method(method) in ff_set)  # fm covers fm[k=16]

    # every run's checks before the first trains (one seed: the seeds differ only in their
    # seed overrides)
    preflight([replace(base, ratio=0.0, method="random", finetune=finetune, scorer_options=()),
               *(config(base, m, r, modes_of(m)) for m, r in plan)], log)
    n_runs = len(seeds) * (1 + len(plan))
    i = 0
    target_rows: dict[str, list[dict[str, Any]]] = {}

    def add(res: PipelineResult, make) -> None:
        """One row per target of a run (``make(target)``): the first target's go to ``rows``."""
        for j, name in enumerate(res.target_names):
            row = make(name)
            if name is not None:
                row["target"] = name
                target_rows.setdefault(name, []).append(row)
            if j == 0:
                rows.append(row)
    ref_base = replace(base, ratio=0.0, method="random", finetune=finetune, scorer_options=())
    # the first timed stage paid the process's one-time costs (imports, the loaders' numba
    # compile, the first steps' kernels): 27.7 s for seed 0's 0 % pretraining vs 3.4 s for
    # seed 1's (figures audit); an untimed short pretraining pays them first, just before the
    # first stage that runs (inside its run: its resolved recipes, under its data locks), and
    # not at all when every stage is cached (nothing timed runs)
    warmup: dict[str, Any] = {"ran": False, "why": ALL_CACHED if warm else "warm=False"}
    pending = warm

    def warm_first(cfg_run: PipelineConfig, resolved: Resolved) -> None:
        nonlocal warmup, pending
        pending = False
        warmup = warm_up(cfg_run, resolved, log)

    def run(cfg_run: PipelineConfig) -> PipelineResult:
        return run_pipeline(cfg_run, log=log, before_first_run=warm_first if pending else None)

    for seed in seeds:
        cfg_s = seeded(base, seed)
        i += 1
        log(f"[cost-table] run {i}/{n_runs}: 0 % reference, seed {seed}")
        ref = run(seeded(ref_base, seed))
        recipes = dict(ref.recipes)
        data = {"source": ref.source,  # the built folders (their manifests describe the data)
                "targets": ref.targets or {base.target or Path(ref.target).name: ref.target}}

        def ref_row(target: str | None) -> dict[str, Any]:
            row = cost_row(ref, REFERENCE, 0.0, seed, 0.0, target=target)
            row["score_s"] = row["prune_s"] = 0.0  # nothing is selected for the full dataset
            row["score_cpu_s"] = row["prune_cpu_s"] = 0.0
            row["selection_s"] = 0.0
            row["total_s"], row["total_cpu_s"] = row["pretrain_s"], row["pretrain_cpu_s"]
            row["estimated_s"] = {k: v for k, v in row["estimated_s"].items() if k == "pretrain"}
            return row

        add(ref, ref_row)
        for method, r in plan:
            i += 1
            log(f"[cost-table] run {i}/{n_runs}: {method} at {ratio_label(r)}, seed {seed}")
            res = run(config(cfg_s, method, r, modes_of(method)))
            sur = res.find("surrogate")
            if sur is not None:
                surrogate_s, surrogate_cpu = float(sur.seconds), sur.cpu_seconds
            charged = (surrogate_s if get_scorer(base_method(method)).needs_surrogate
                       and surrogate_s else 0.0)
            add(res, lambda target: cost_row(res, method, r, seed, charged, surrogate_cpu,
                                             target=target))
    cfg = {**recorded_config(base),
           "k": ref.config["k"]}  # (the K the runs used: None in base means the data's default)
    ratios = sorted(set(ratios) | {r for _, r in plan})
    table = summarize(rows, methods=methods, ratios=ratios, seeds=seeds, finetune=finetune,
                      tol=tol, criterion=criterion)
    if target_rows:  # several targets: the accuracy tables of each (Fig. A5)
        table.update(_target_summaries(
            {"target_rows": [r for trows in target_rows.values() for r in trows],
             "methods": methods, "ratios": ratios, "seeds": seeds, "finetune": finetune,
             "tol": tol, "target_weights": list(base.target_weights)}, criterion))
    table.update({"bench": "cost-table", "config": cfg, "surrogate_s": surrogate_s, "command": command, "recipes": recipes,
                  "data": data,
                  "surrogate_brought": base.surrogate_weights or None, "warmup": warmup,
                  "machine": machine_info(),
                  "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds")})
    if out_dir is not None:
        write_outputs(table, Path(out_dir))
    return table


def seeded(cfg: PipelineConfig, seed: int) -> PipelineConfig:
    """``cfg`` as trial ``seed`` of the table: the scorer's ``seed`` and the pipeline's own
    ``seeds=(seed,)``, which sets ``train.seed`` and ``data.seed`` of the pretraining and the
    finetunings (:func:`~..pipeline.resolve.seed_overrides`). Until 2026-12-08 the table
    appended those overrides to ``overrides`` and ``finetune_overrides`` and left the pipeline
    at seed 0, so the report of every seed's run said "s0" (figures audit). Both give the
    same recipes and stage keys (the overrides come last either way), so cached runs are
    reused — except with ``--arch``: the pretraining's key lists ``model.arch`` after the
    ``--set`` overrides, so the appended seed came before it and ``seeds`` puts it after.
    Such a run (seed != 0) keeps the overrides, and its cached stages, and its report still
    says "s0"."""
    if seed and cfg.arch:
        over = tuple(seed_overrides(seed))
        return replace(cfg, seed=seed, seeds=(), overrides=tuple(cfg.overrides) + over,
                       finetune_overrides=tuple(cfg.finetune_overrides) + over)
    return replace(cfg, seed=seed, seeds=(seed,))


#: the fewest batches of the pretraining recipe :func:`warm_up` trains (more where a whole
#: evaluation batch needs more classes: :func:`warm_up_indices`)
WARM_UP_BATCHES = 2

#: the ``why`` of the ``warmup`` record of a table whose every stage was cached: no stage ran,
#: so nothing timed paid the one-time costs a warm-up pays (:func:`warmup_line`)
ALL_CACHED = "every stage of every run was cached: no stage ran"


def warm_up(cfg: PipelineConfig, r: Resolved,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Pay the process's one-time costs before the first timed stage, untimed: the first
    pipeline run's pretraining paid them (the imports of its stage, building the ffcv loaders
    and numba's compile of their pipelines, the first forward/backward passes' kernels, the
    evaluation loader and passes), so the 0 % reference of the first seed, which runs first,
    took 27.7 s where seed 1's took 3.4 s (timings.json: setup 4.0 s vs 0.2, data 4.1 vs 0.07,
    step 10.8 vs 3.0, eval 8.8 vs 0.2; figures audit) and the pruned runs looked faster than
    the ideal. Measured in one process on synth:tiny: the first pretraining compiled 91 numba
    functions (12.6 s of its 42 s), the next none; after this warm-up the first compiled none.
    Trains one epoch of the pretraining recipe of the run ``cfg`` (checked) resolved as ``r``
    on a few classes of the source (:func:`warm_up_indices`), with one evaluation, on the
    run's device and format, into a temporary folder removed after; no stage is written.
    :func:`run_cost_table` calls it from inside the run whose stage runs first
    (``run_pipeline``'s ``before_first_run``), so it reads the source under that run's
    readers' lock (a build may not rewrite it meanwhile) and resolves nothing again. Returns
    the record ``results.json`` keeps (``warmup``): whether it ran, its seconds and what it
    did. A brought source model (``source_weights``) pretrains nothing: no warm-up then."""
    import tempfile
    import time
    import warnings

    from ..data.masks import make_mask
    from ..training.trainer import train

    if cfg.source_weights:
        return {"ran": False, "why": "a brought source model (--source-weights) trains nothing"}
    start = time.perf_counter()
    rec = r.pretrain
    split = r.src.split(rec.data.train_split)
    keep = warm_up_indices(split.load_labels(), r.src.split(rec.data.val_split).load_labels(),
                           rec.train.batch_size, rec.eval.batch_size)
    n = len(keep)
    what = (f"{n} samples ({count(-(-n // rec.train.batch_size), 'batch', 'batches')}) of "
            f"{r.recipe_names['pretrain']} pretraining and one evaluation, untimed, "
            f"before the first stage that ran")
    log(f"[cost-table] warm-up: {what}")
    with tempfile.TemporaryDirectory(prefix="dp4tl-warm-up-") as tmp, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (a few steps' accuracy is at chance: no news)
        train(rec, r.source_dir, mask=make_mask(keep, split), out_dir=Path(tmp) / "run",
              fmt=cfg.fmt, device=cfg.device, progress=False, stop_after=1,
              overrides=["eval.every=1"], log=None)
    seconds = time.perf_counter() - start
    log(f"[cost-table] warm-up took {seconds:.1f} s")
    return {"ran": True, "seconds": seconds, "what": what}


def warm_up_indices(train_labels, val_labels, batch_size: int, eval_batch_size: int):
    """The train samples :func:`warm_up` trains on: whole classes in label order until they
    hold :data:`WARM_UP_BATCHES` batches of ``batch_size`` and their validation samples (the
    trainer validates on the classes of the mask) a whole ``eval_batch_size`` batch, so that
    training and evaluation both run at the batch shapes of the timed runs (a first pass at a
    new shape pays for its kernels again); every class when there are not that many."""
    import numpy as np

    train_labels, val_labels = np.asarray(train_labels), np.asarray(val_labels)
    classes = np.unique(train_labels)
    n_train = np.cumsum([np.count_nonzero(train_labels == c) for c in classes])
    n_val = np.cumsum([np.count_nonzero(val_labels == c) for c in classes])
    enough = (n_train >= WARM_UP_BATCHES * batch_size) & (n_val >= eval_batch_size)
    upto = int(np.argmax(enough)) + 1 if enough.any() else len(classes)
    return np.flatnonzero(np.isin(train_labels, classes[:upto]))


def warmup_line(t: dict[str, Any]) -> str | None:
    """The report's header line on the warm-up (:func:`warm_up`); None for results from before
    it was recorded."""
    w = t.get("warmup")
    if not w:
        return None
    if w.get("ran"):
        return (f"- warm-up: {w['what']} ({w['seconds']:.1f} s), so that no timed stage pays "
                "the process's one-time costs (imports, loader compile, first kernels); until "
                "2026-12-08 the first seed's 0 % pretraining paid them")
    if w.get("why") == ALL_CACHED:
        return f"- no warm-up: {ALL_CACHED}, so no timed stage paid one-time costs"
    return (f"- no warm-up ({w.get('why', 'not run')}): the first timed stage paid the "
            "process's one-time costs")


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


def write_outputs(t: dict[str, Any], out: Path, keep_notes: bool = False) -> None:
    """results.json, the plots and report.md (``keep_notes``: with the hand-written notes of
    the report.md it replaces, :func:`~ffcv_dp4tl.reporting.carry_notes`). The report is
    composed before anything is written, so a table that cannot be rendered (a damaged field)
    rewrites nothing; the record then comes first, so a plot that fails after a long run loses
    no result."""
    warmed = warmup_line(t)
    text = ["# DP4TL cost table and accuracy vs pruning ratio", "", *header_lines(t),
            *([warmed] if warmed else []), "", markdown_tables(t)]
    report = out / "report.md"
    if keep_notes and report.is_file():
        try:  # (a render's except below blames results.json for a ValueError: say it here)
            old = report.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DP4TLError(f"{report} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                             f"{e.start}), so its hand-written notes cannot be carried over; "
                             "restore it, re-encode it as UTF-8, or move it away (the render then "
                             "writes a fresh report.md, without the notes)") from None
        text = [carry_notes(old, "\n".join(text), report)]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", t)
    plot_accuracy(t, out / "accuracy.png")
    plot_cost(t, out / "cost.png")
    if t.get("targets"):
        plot_targets(t, out / "accuracy-targets.png")
    atomic_write_text(report, "\n".join(text))


def rerender(out: Path, criterion: str | None = None) -> dict[str, Any]:
    """Rebuild the tables, plots and report of ``out/results.json`` from its raw rows with this
    version's code (e.g. after the report gained a table), without running anything;
    ``criterion`` judges the winning subsets again (default: the run's)."""
    if Path(out).name == "results.json" and Path(out).is_file():  # (the file, not its folder)
        out = Path(out).parent
    path = Path(out) / "results.json"
    if not path.is_file() and (Path(out) / "rows.jsonl").is_file():
        raise DP4TLError(f"{out} is a `bench embedded` folder (rows.jsonl, no results.json): "
                         "`dp4tl bench render` rebuilds its README.md from rows.jsonl")
    if not path.is_file():
        raise DP4TLError(f"{path} not found: point at the --out folder of a cost-table run")
    t = rerender_table(path, criterion)  # (checks that results.json is a cost table's)
    claim_out_dir(out, "cost-table", "folder", inputs=("results.json", "report.md"))
    try:
        write_outputs(t, Path(out), keep_notes=True)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise DP4TLError(f"{path} cannot be rendered: a field is missing or of the wrong type "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "rerun the cost table (its stages are cached) to rewrite it") from None
    return t


def rerender_table(results_json: Path, criterion: str | None = None) -> dict[str, Any]:
    """The summary of a cost-table ``results.json`` recomputed from its rows (see :func:`rerender`),
    its winning subsets judged by ``criterion`` (default: the run's; older files: final)."""
    old = read_json(results_json)
    if not isinstance(old, dict):
        raise DP4TLError(f"{results_json} holds a JSON {type(old).__name__}, not a cost-table "
                         "results file (an object with rows, methods, ratios, seeds, finetune)")
    bench = bench_of(old)  # another bench's fine file: not one lacking a cost table's fields
    if bench not in (None, "cost-table"):
        raise DP4TLError(f"{results_json} is {KINDS[bench].what}'s (written by "
                         f"`{KINDS[bench].command}`): `dp4tl bench render` rebuilds cost-table "
                         f"and embedded folders only; rerun `{KINDS[bench].command}` to rewrite "
                         "its report")
    check_results(old, results_json, criterion is None)
    try:
        t = summarize(old["rows"], methods=old["methods"], ratios=old["ratios"],
                      seeds=old["seeds"], finetune=old["finetune"], tol=old.get("tol", 0.0),
                      criterion=criterion or old.get("criterion", "final"))
        if old.get("target_rows"):  # several targets: each target's tables, judged again too
            t.update(_target_summaries(old, t["criterion"]))
    except KeyError as e:
        raise DP4TLError(f"{results_json} lacks {e}: not a cost-table results file") from None
    except (TypeError, ValueError, AttributeError) as e:  # a field or row of the wrong type
        raise DP4TLError(f"{results_json} is damaged: a field or row has the wrong type "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "restore it or rerun the cost table (its stages are cached)") from None
    missing = [k for k in ("config", "machine") if not isinstance(old.get(k), dict)]
    if missing:  # the header reads them: an older or hand-made file without them
        raise DP4TLError(f"{results_json} has no {missing[0]!r} object (its run's settings): "
                         "not a whole cost-table results file; rerun the cost table (its stages "
                         "are cached) to rewrite it")
    t["bench"] = "cost-table"
    for key in ("config", "surrogate_s", "command", "recipes", "data", "surrogate_brought",
                "warmup", "machine", "date"):
        t[key] = old.get(key)
    return t


def _target_summaries(old: dict[str, Any], criterion: str) -> dict[str, Any]:
    """``targets`` / ``target_rows`` / ``target_weights`` of a several-target table, its
    per-target tables recomputed from its ``target_rows`` (as :func:`run_cost_table` made them;
    the rows keep the order the targets were given in, which the report reads)."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for row in old["target_rows"]:
        by_target.setdefault(row["target"], []).append(row)
    kw = dict(methods=old["methods"], ratios=old["ratios"], seeds=old["seeds"],
              finetune=old["finetune"], tol=old.get("tol", 0.0), criterion=criterion)
    # the no-loss claims of every target's rows hold together (one section, one family)
    family = sum(winner_rows(summarize(trows, **kw)["winners"]) for trows in by_target.values())
    targets = {}
    for name, trows in by_target.items():
        ts = summarize(trows, **kw, family=family or None)
        targets[name] = {k: ts[k] for k in ("accuracy", "accuracy_best", "winners")}
    return {"targets": targets, "target_rows": list(old["target_rows"]),
            "target_weights": list(old.get("target_weights") or [])}
