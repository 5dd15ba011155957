"""The pipeline's last step: the per-seed accuracy statistics and the run's ``report.md`` +
``results.json`` (the :class:`~.result.PipelineResult` as JSON, with its schema version)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

from ..errors import DP4TLError
from ..fsutil import atomic_write_json, atomic_write_text
from ..reporting import md_code, md_text
from ..scoring.registry import UNIT_PLURAL, get_scorer
from .gallery import GALLERY
from .result import PipelineResult
from .stages import describe
from .targets import method_title
from .truth import truth_lines


class SeedStats(NamedTuple):
    """:func:`seed_stats`: mean and sample std of the finite values, how many there were
    (``n``) and how many non-finite ones (NaN, ±inf: a diverged run) were left out."""

    mean: float
    std: float
    n: int
    dropped: int


def seed_stats(xs: Iterable[float | None]) -> SeedStats:
    """Mean and sample std (0 for one value; NaN, NaN for none) of the finite values of ``xs``;
    None (no value: a stage not run) is left out, and so is a NaN or an infinity, counted in
    ``dropped`` (:func:`scaled_moments`, the one rule every table of seeds, report.md and
    :func:`~ffcv_dp4tl.bench.stats.paired_test` use)."""
    given = [float(x) for x in xs if x is not None]
    vals = [x for x in given if math.isfinite(x)]
    if not vals:
        return SeedStats(math.nan, math.nan, 0, len(given))
    scale, mean, sd = scaled_moments(vals)
    return SeedStats(mean * scale, sd * scale, len(vals), len(given) - len(vals))


def scaled_moments(vals: Sequence[float]) -> tuple[float, float, float]:
    """``(scale, mean, sd)`` of finite, non-empty ``vals``, mean and sample std (0 for one
    value) in units of ``scale``, their largest magnitude (1 when all are 0): the sums are
    exact (``math.fsum``) of values in [-1, 1], so 1e300-sized values have a finite mean and
    std (a sum of their squares raised OverflowError; stats audit), and a t statistic taken
    in those units stays finite where ``sd * scale`` would not (1.7e308)."""
    scale = max(abs(x) for x in vals) or 1.0
    ys = [x / scale for x in vals]
    n = len(ys)
    mean = math.fsum(ys) / n
    sd = math.sqrt(math.fsum((y - mean) ** 2 for y in ys) / (n - 1)) if n > 1 else 0.0
    return scale, mean, sd


def mean_std(xs: Iterable[float | None]) -> tuple[float, float]:
    """Mean and sample std (0 for one value; NaN, NaN for none) of the finite values of ``xs``
    (None, NaN and ±inf left out: :func:`seed_stats`, which also counts them): the one rule
    every table of seeds uses."""
    st = seed_stats(xs)
    return st.mean, st.std


def summarize_seeds(res: PipelineResult, modes: Sequence[str], target: str | None = None
                    ) -> dict[str, Any]:
    """Per finetuning mode: final- and best-epoch target top-1 per seed and their mean ± std
    (sample std; 0 for one seed). ``target``: one target's results among several."""
    out: dict[str, Any] = {}
    for mode in modes:
        per = []
        for seed in res.seeds:
            r = res.finetune(mode, seed, target)
            if r is None:
                continue
            v = r.values
            final = v.get("final_test_top1", v.get("test_top1"))
            per.append({"seed": seed, "final": final, "best": v.get("best_test_top1", final),
                        "best_epoch": v.get("best_epoch")})
        if per:
            fm, fs = mean_std([p["final"] for p in per])
            bm, bs = mean_std([p["best"] for p in per])
            out[mode] = {"seeds": per, "final_mean": fm, "final_std": fs, "best_mean": bm,
                         "best_std": bs, "n": len(per)}
    return out


def method_label(method: str) -> str:
    """The method's display label (its registered ``label``; the name upper-cased otherwise)."""
    try:
        return get_scorer(method).label
    except DP4TLError:  # a report of a method no longer registered
        return method.upper()


def run_title(cfg: dict[str, Any]) -> str:
    """``LM (reversed) at ratio 0.6``: how report.md and the selection gallery name a run."""
    if not cfg["ratio"]:  # (the unpruned reference: no method chose anything)
        return "the whole source (ratio 0: nothing pruned)"
    return (f"{method_title(method_label(cfg['method']), cfg.get('order', 'ordered'))} "
            f"at ratio {cfg['ratio']}")


#: the recipes' roles in the stages' order: how a report lists them (results.json sorts keys)
RECIPE_ROLES = ("surrogate", "pretrain", "lp", "ff")


def in_stage_order(recipes: dict[str, str]) -> list[tuple[str, str]]:
    """``recipes``' (role, name) pairs in :data:`RECIPE_ROLES` order, other roles after: a
    report read back from a results.json (whose keys are sorted) lists them as the run did."""
    return sorted(recipes.items(), key=lambda kv: RECIPE_ROLES.index(kv[0])
                  if kv[0] in RECIPE_ROLES else len(RECIPE_ROLES))


def recipes_line(res: PipelineResult) -> str:
    """report.md's ``recipes:`` line; with several targets whose LP/FF recipes differ (the
    paper-code protocol picks them per dataset, Tab. A1), those of each target."""
    def cell(recipes: dict[str, str]) -> str:
        return ", ".join(f"{k}={md_code(v)}" for k, v in in_stage_order(recipes))

    per = {n: res.target_recipes[n] for n in res.targets if n in res.target_recipes}
    if len({tuple(sorted(r.items())) for r in per.values()}) <= 1:
        return "- recipes: " + cell(res.recipes)
    shared = {k: v for k, v in res.recipes.items() if k not in ("lp", "ff")}
    return "- recipes: " + cell(shared) + "".join(f"; {md_code(n)}: {cell(r)}"
                                                  for n, r in per.items())


def _fraction(pr: dict[str, Any]) -> str:
    """" (kept sample fraction 0.412 at ratio 0.6 of clusters)" — the sample share beside the
    unit ratio (they differ for class/cluster units of unequal sizes)."""
    f = pr.get("kept_sample_fraction")
    if f is None:
        return ""
    budget = " (budget: samples)" if pr.get("budget") == "samples" else ""
    return (f" = {f:.3f} of the train samples (ratio {pr.get('ratio')} of "
            f"{UNIT_PLURAL[pr['unit']]}{budget}; samples removed {1 - f:.3f})")


def result_line(res: PipelineResult) -> str:
    """The line a run's output ends with, ``[result] ...``: the run, what it kept, the source
    model's val top-1, the target top-1 per mode (final epoch; mean ± std over several seeds;
    all in %), the stages' recorded wall time and the report's path. The report printed above
    it is tables, which a search of a job's log (``grep '^\\[result\\]' slurm-*.out``)
    cannot pick a number out of."""
    parts = [run_title(res.config)]
    pr = res.find("prune")
    if pr is not None and "train_kept" in pr.values:
        f = pr.values.get("kept_sample_fraction")
        parts.append(f"kept {pr.values['train_kept']} train samples"
                     + (f" ({f:.3f} of the source)" if f is not None else ""))
    brought = res.find("pretrain")
    vals = [r.values.get("top1_val") for r in (res.pretrain(s) for s in res.seeds or [0]) if r]
    if brought is not None and brought.values.get("brought"):
        parts.append("source model brought (not trained)")
    elif vals and all(v is not None for v in vals):
        parts.append(f"source val top-1 {_mean_cell(vals, 2, 100, ' %')}")
    groups = ({None: res.summary} if not res.targets else
              {n: res.per_target.get(n) or {} for n in res.targets})
    for name, summary in groups.items():
        cells = [f"{mode.upper()} {_mean_cell(finals, 2, 100, ' %')}"
                 for mode, sm in summary.items()
                 if (finals := [p["final"] for p in sm["seeds"] if p["final"] is not None])]
        if cells:
            parts.append(f"target{'' if name is None else ' ' + name} test top-1 "
                         + ", ".join(cells))
    # (the stages' recorded time, as the report's table sums it: a rerun finds them cached)
    parts.append(f"stages {sum(r.seconds for r in res.stages.values()):.1f} s")
    if res.report:
        parts.append(f"report {res.report}")
    return "[result] " + "; ".join(parts)


def _mean_cell(xs: Sequence[float | None], digits: int, scale: float = 1.0, unit: str = "") -> str:
    """``71.28 %`` (scale 100, unit " %"), or ``72.10 ± 1.20 % (3 seeds)`` over several values
    (:func:`seed_stats`): the count is of the finite values, the non-finite ones left out are
    said, and one value has no "± 0.00" (it has no spread)."""
    st = seed_stats(xs)
    left = f"{st.dropped} not finite, left out" if st.dropped else ""
    if st.n == 0:
        return f"no finite value ({left})" if left else "no value"
    if st.n == 1:
        return f"{scale * st.mean:.{digits}f}{unit}" + (f" (1 seed; {left})" if left else "")
    return (f"{scale * st.mean:.{digits}f} ± {scale * st.std:.{digits}f}{unit} ({st.n} seeds"
            + (f"; {left})" if left else ")"))


def overrides_lines(cfg: dict[str, Any]) -> list[str]:
    """report.md's lines of the recipe changes behind its numbers, from results.json's config:
    the ``--set`` / ``--arch`` overrides of the pretraining recipe, ``--set-surrogate``'s and
    ``--set-finetune``'s (LP and FF), and the seeds (each seed s > 0 trains with
    ``train.seed=s``, ``data.seed=s``: :func:`~.resolve.seed_overrides`). A report without
    them read as the shipped recipes' result (``train.epochs=1`` left out; API audit)."""
    def given(key: str) -> list[str]:
        v = cfg.get(key) or ()
        return [str(o) for o in ([v] if isinstance(v, str) else v)]

    parts = []
    pre = given("overrides") + ([f"model.arch={cfg['arch']}"] if cfg.get("arch") else [])
    for what, flag, over in (("pretraining", "--set", pre),
                             ("surrogate", "--set-surrogate", given("surrogate_overrides")),
                             ("finetuning (LP, FF)", "--set-finetune",
                              given("finetune_overrides"))):
        if over:
            parts.append(f"{what} {flag} " + ", ".join(md_code(o) for o in over))
    lines = ["- recipe overrides: " + ("; ".join(parts) if parts else
                                       "none (the recipes as they are)")]
    seeds = [int(s) for s in given("seeds")] or [0]
    extra = [s for s in seeds if s]
    lines.append(f"- seeds: {', '.join(str(s) for s in seeds)}"
                 + (f" (seed s > 0 sets {md_code('train.seed=s')} and {md_code('data.seed=s')} "
                    "in the pretraining and finetuning recipes)" if extra else ""))
    return lines


def _accuracy_table(summary: dict[str, Any], group: str | None) -> list[str]:
    """One target's accuracy table: per mode, final- and best-epoch top-1 (%) as mean ± std
    over the seeds whose value is finite. The heading gives their number when every cell has
    all of them, else each cell gives its own (a missing or NaN seed was counted, and one value
    shown "± 0.00"; stats audit)."""
    rows = []
    for mode, sm in summary.items():
        finals = [p.get("final") for p in sm["seeds"]]
        bests = [p.get("best") for p in sm["seeds"]]
        rows.append((mode, sm["seeds"], finals, bests, seed_stats(finals), seed_stats(bests)))
    counts = {st.n for *_, f, b in rows for st in (f, b)}
    given = {len(seeds) for _, seeds, *_ in rows}
    whole = len(counts) == 1 and counts == given and not any(
        st.dropped for *_, f, b in rows for st in (f, b))
    n = counts.pop() if whole else 0
    spread = (("mean ± std over " + str(n) + " seeds" if n > 1 else "one seed") if whole else
              "mean ± std over the seeds with a finite value (their number in each cell)")
    lines = [("Target" if group is None else f"Target {md_code(group)}")
             + f" test top-1 (%), {spread}: final epoch and best evaluated epoch", "",
             "| mode | final epoch | best epoch | per seed (final / best) |", "|---|---:|---:|---|"]

    def cell(values: list, st: SeedStats) -> str:
        if not whole:
            return _mean_cell(values, 2, 100)
        return f"{100 * st.mean:.2f} ± {100 * st.std:.2f}" if n > 1 else f"{100 * st.mean:.2f}"

    for mode, seeds, finals, bests, fst, bst in rows:
        per = ", ".join(f"s{p['seed']}: {100 * p['final']:.2f} / {100 * p['best']:.2f}"
                        for p in seeds if p.get("final") is not None and p.get("best") is not None)
        lines.append(f"| {mode.upper()} | {cell(finals, fst)} | {cell(bests, bst)} | {per} |")
    return lines + [""]


def _brought(recorded: str, given: Any) -> str:
    """The brought weights a report names: the stage's record (``DONE.json`` ``weights``), or,
    where that is relative (a stage imported before 2026-12-07, relative to the folder that run
    started in, which nothing recorded), this run's file (its config's, absolute: the stage's
    key holds the file's sha256, so the same bytes). With neither absolute, the relative path
    is said to be one: read against the report's folder or the reader's, it named another file
    or none, in silence."""
    if os.path.isabs(recorded):
        return md_code(recorded)
    if isinstance(given, str) and os.path.isabs(given):
        return md_code(given)
    return f"{md_code(recorded)} (relative to the folder the importing run was started in)"


def write_report(res: PipelineResult, out: Path) -> None:
    """``out/report.md`` (stages, kept units, accuracy per target over seeds) and
    ``out/results.json`` (:meth:`PipelineResult.to_json`)."""
    st = res.stages
    cfg = res.config
    pr = res.find("prune")
    pr = pr.values if pr is not None else None
    per_target = res.per_target
    tlines = ([f"- target: {md_code(res.target)}"] if not res.targets else
              [f"- targets ({len(res.targets)}, one selection for all, weights "
               f"{', '.join(f'{w:g}' for w in res.target_weights)}): "
               + ", ".join(f"{md_text(n)} {md_code(d)}" for n, d in res.targets.items())])
    lines = [f"# DP4TL run: {run_title(cfg)}", "",
             f"- source: {md_code(res.source)}", *tlines,
             f"- protocol: {md_code(res.protocol)}",
             recipes_line(res), *overrides_lines(cfg)]
    for role, what, option in (("surrogate", "surrogate", "surrogate_weights"),
                               ("pretrain", "source model", "source_weights")):
        r = res.find(role)
        if r is not None and r.values.get("brought"):
            v = r.values
            lines.append(f"- {what}: brought weights {_brought(v['weights'], cfg.get(option))} "
                         f"({md_text(v['arch'])}, imported, not trained)")
    if pr is not None:
        units = len(pr.get("kept_units", []))  # (a sample-wise method records none: "- samples")
        unit_part = f"{units} {UNIT_PLURAL[pr['unit']]}, " if units else ""
        lines.append(f"- kept: {unit_part}{pr['train_kept']} train samples" + _fraction(pr))
    pre = res.find("pretrain")
    if cfg.get("pretrain_length") == "steps" and pre is not None and "epoch" in pre.values:
        # (a training's recorded `epoch` is its last epoch's index, from 0)
        lines.append(f"- pretraining length: `steps` — {pre.values['epoch'] + 1} epochs on the kept "
                     "samples, as many optimizer steps as the recipe's epochs on the whole "
                     "source (schedule stretched to match)")
    lines += truth_lines(res.ground_truth, cfg.get("order", "ordered"))
    if (out / GALLERY).exists():
        lines += ["", f"![what was kept, beside the target (Fig. A7)]({GALLERY})"]
    lines += ["", "| stage | wall s | result |", "|---|---:|---|"]
    for name, run in st.items():
        lines.append(f"| {name} | {run.seconds:.1f} | {md_text(describe(run.result))} |")
    total = sum(r.seconds for r in st.values())
    lines += [f"| **total** | {total:.1f} | |", ""]
    groups = ({None: res.summary} if not res.targets else  # in the order the targets were given
              {n: per_target.get(n) for n in res.targets})
    for group, summary in groups.items():
        if summary:
            lines += _accuracy_table(summary, group)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_json(out / "results.json", json.loads(json.dumps(res.to_json(), default=str)))
