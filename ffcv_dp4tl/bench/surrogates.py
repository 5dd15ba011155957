"""Robustness of LM to the surrogate's size (paper Tab. A6 and Fig. 5): ``dp4tl bench surrogates``.

For every surrogate architecture (default: the paper's RN-20s, VGG-2, RN-32s, VGG-4, RN-44s,
RN-56s, VGG-8 and the default RN-18; :mod:`..training.models`), :func:`run_surrogate_bench` runs
the ordinary pipeline (:func:`~ffcv_dp4tl.pipeline.run.run_pipeline`) with the surrogate recipe's ``model.arch``
overridden, method LM, at each pruning ratio, and collects per architecture:

* its parameter count — as run (the recipe's width, the source's classes) and as in the paper
  (1000 classes, width 64 = the published architecture);
* the surrogate's source val top-1 (its training stage's final evaluation);
* the **source class selection overlap** with the reference surrogate (RN-18) at ``ratio``
  (default 50 %): the share of the reference's kept classes this surrogate keeps too
  (:func:`.compare.overlap`, the paper's definition);
* the target accuracy (LP, and FF if asked) of the source model pretrained on each pruned
  subset, beside the unpruned (0 %) reference shared by all surrogates (Fig. 5);
* the largest pruning ratio of a winning subset (accuracy ≥ the 0 % accuracy − ``tol``), as in
  the cost table (:func:`.stats.best_winning_subset`).

Every run is a cached pipeline stage chain: the 0 % reference, and each surrogate's scores, are
shared across ratios; a rerun with more ratios trains only what is new.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import DP4TLError
from ..figures import colormap, save, subplots
from ..fsutil import atomic_write_json, atomic_write_text
from ..pipeline.compare import overlap
from ..pipeline.config import PipelineConfig, recorded_config
from ..pipeline.result import PipelineResult
from ..pipeline.run import preflight, run_pipeline
from ..reporting import literal_text, machine_info, md_code, ran_on
from .markdown import num, ratio_label
from ..outputs import claim_out_dir
from .plots import ratio_axis
from .stats import best_winning_subset

#: Paper Tab. A6 (ImageNet source, OxfordPets target, RN-101 source model): params (M, as
#: printed; RN-20s's 0.236 is 0.326 with two digits swapped — docs/surrogates.md), source top-1
#: (%), largest pruning ratio of a winning subset, class overlap with RN-18 at 50 % (%).
PAPER_TAB_A6: dict[str, dict[str, Any]] = {
    "resnet20s": {"label": "RN-20s", "params_m": 0.236, "source_top1": 36.25, "winning": 0.6,
                  "overlap": 89.3},
    "vgg2": {"label": "VGG-2", "params_m": 0.417, "source_top1": 22.56, "winning": 0.5,
             "overlap": 84.4},
    "resnet32s": {"label": "RN-32s", "params_m": 0.516, "source_top1": 40.77, "winning": 0.8,
                  "overlap": 90.7},
    "vgg4": {"label": "VGG-4", "params_m": 0.698, "source_top1": 29.44, "winning": 0.7,
             "overlap": 87.2},
    "resnet44s": {"label": "RN-44s", "params_m": 0.706, "source_top1": 43.74, "winning": 0.8,
                  "overlap": 93.5},
    "resnet56s": {"label": "RN-56s", "params_m": 0.896, "source_top1": 45.72, "winning": 0.8,
                  "overlap": 94.8},
    "vgg8": {"label": "VGG-8", "params_m": 5.53, "source_top1": 58.45, "winning": 0.8,
             "overlap": 97.7},
    "resnet18": {"label": "RN-18", "params_m": 11.69, "source_top1": 68.73, "winning": 0.8,
                 "overlap": 100.0},
}
DEFAULT_ARCHS = tuple(PAPER_TAB_A6)
REFERENCE_ARCH = "resnet18"


def arch_label(arch: str) -> str:
    return PAPER_TAB_A6.get(arch, {}).get("label", arch)


def parse_arch_overrides(items: Iterable[str]) -> dict[str, list[str]]:
    """``["resnet20s:model.width=32", ...]`` (``--set-arch``) → ``{"resnet20s": [...]}``."""
    out: dict[str, list[str]] = {}
    for item in items:
        arch, sep, kv = item.partition(":")
        if not sep or "=" not in kv or not arch.strip():
            raise DP4TLError(f"--set-arch {item!r}: write ARCH:SECTION.KEY=VALUE, e.g. "
                             "resnet56s:model.width=32")
        out.setdefault(arch.strip(), []).append(kv.strip())
    return out


def check_no_arch_override(surrogate_overrides: Iterable[str],
                           arch_overrides: Mapping[str, Sequence[str]]) -> None:
    """Refuse a ``model.arch`` among the surrogate overrides: the bench puts each row's
    architecture first (``model.arch=ARCH``) and a later override wins, so
    ``--set-surrogate model.arch=vgg2`` made every row a VGG-2 (one cached surrogate) under the
    labels of --archs — a table silently wrong (audit). The architectures are --archs'.
    (An override that does not parse is left to the recipe's own check, which names it.)"""
    from ..training.recipe import override_key

    given = [("--set-surrogate", "", text) for text in surrogate_overrides]
    given += [("--set-arch", f"{arch}:", text) for arch, texts in arch_overrides.items()
              for text in texts]
    for option, prefix, text in given:
        if override_key(text) == ("model", "arch"):
            raise DP4TLError(f"{option} {prefix}{text}: the bench sets model.arch per row (one "
                             "surrogate per architecture of --archs, --reference beside them); "
                             "drop it and list the architecture in --archs instead")


def _params(recipe, num_classes: int) -> dict[str, int]:
    """Parameter counts of a surrogate recipe's model: as run, and as in the paper (1000
    classes, the builder's defaults = the published architecture: width 64, its own stem)."""
    from ..training.models import create_model, num_params
    from ..training.trainer import model_kwargs

    arch = recipe.model.arch
    return {"params": num_params(create_model(arch, num_classes, **model_kwargs(recipe))),
            "params_paper": num_params(create_model(arch, 1000))}


def _acc(res: PipelineResult, mode: str, key: str = "final_mean") -> float | None:
    sm = (res.summary or {}).get(mode)
    return None if sm is None or sm.get(key) is None else 100.0 * float(sm[key])


def run_surrogate_bench(base: PipelineConfig, out_dir: str | Path | None = None, *,
                        archs: Sequence[str] = DEFAULT_ARCHS, ratio: float = 0.5,
                        ratios: Iterable[float] = (), reference: str = REFERENCE_ARCH,
                        arch_overrides: Mapping[str, Sequence[str]] | None = None,
                        finetune: Sequence[str] = ("lp",), tol: float = 0.0, command: str = "",
                        notes: Sequence[str] = (), log: Callable[[str], None] = print
                        ) -> dict[str, Any]:
    """Run LM with every surrogate in ``archs`` at ``ratio`` (and ``ratios``) plus the shared
    0 % reference; return (and with ``out_dir`` write) the table. ``reference`` (run even if
    not listed) is the surrogate the overlaps are measured against; ``arch_overrides``: extra
    surrogate-recipe overrides per architecture (after ``base.surrogate_overrides``)."""
    from ..training.models import list_models
    from ..training.recipe import load_recipe

    from ..contracts import check_items, check_pruned_ratios, check_tol

    tol = check_tol(tol)
    if out_dir is not None:
        claim_out_dir(out_dir, "surrogates")
    archs = check_items("--archs", archs)  # one arch twice would train and tabulate it twice
    if reference not in archs:
        archs.append(reference)
    unknown = [a for a in archs if a not in list_models()]
    if unknown:
        raise DP4TLError(f"--archs: unknown model(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(list_models())} (`dp4tl models`)")
    arch_overrides = {a: list(v) for a, v in (arch_overrides or {}).items()}
    stray = sorted(set(arch_overrides) - set(archs))
    if stray:
        raise DP4TLError(f"--set-arch names {', '.join(stray)}, which is not among the archs "
                         f"{', '.join(archs)}")
    why = "0 % is the shared reference"
    (ratio,), ratios = (check_pruned_ratios([ratio], "--ratio", why),
                        check_pruned_ratios(list(ratios), "--ratios", why))  # (rounded, checked)
    all_ratios, finetune = sorted({ratio, *ratios}), tuple(finetune)
    if not finetune:
        raise DP4TLError("--finetune: give at least one mode (lp, ff)")
    check_no_arch_override(base.surrogate_overrides, arch_overrides)
    # the reference first: every other row's overlap needs its selection (a run cut short
    # still has it); the table keeps the order asked for
    order = [reference, *(a for a in archs if a != reference)]
    ref_cfg = replace(base, ratio=0.0, method="random", finetune=finetune, scorer_options=())

    def overrides(arch: str) -> tuple[str, ...]:
        return (f"model.arch={arch}", *base.surrogate_overrides, *arch_overrides.get(arch, ()))

    def config(arch: str, r: float) -> PipelineConfig:
        return replace(base, ratio=r, method="lm", finetune=finetune,
                       surrogate_overrides=overrides(arch))

    # every run's checks before the reference trains (a bad --set-arch value was refused only
    # after the reference and the first surrogate's rows had trained; audit): the reference
    # (the data, --set, --set-finetune), said as its run would, then each surrogate's runs
    # (its recipe with --set-surrogate and --set-arch, each ratio), quietly; what needs no data
    # of every run before the data is built (preflight)
    preflight([ref_cfg, *((f"LM with surrogate {arch}", config(arch, r))
                          for arch in order for r in all_ratios)], log)
    n_runs, i = 1 + len(archs) * len(all_ratios), 1
    log(f"[surrogates] run 1/{n_runs}: 0 % reference (full source)")
    ref = run_pipeline(ref_cfg, log=log)
    reference_acc = {m: _acc(ref, m) for m in finetune}
    runs: dict[str, dict[str, Any]] = {}
    recipes: dict[str, str] = dict(ref.recipes)
    for arch in order:
        over = overrides(arch)
        rec: dict[str, Any] = {"arch": arch, "label": arch_label(arch),
                               "surrogate_overrides": list(over), "by_ratio": {}}
        for r in all_ratios:
            i += 1
            log(f"[surrogates] run {i}/{n_runs}: LM with surrogate {arch} at {100 * r:.0f} %")
            res = run_pipeline(config(arch, r), log=log)
            sur = res.find("surrogate")
            if sur is not None and "surrogate" not in rec:
                rec["surrogate"] = {"top1_val": sur.values.get("top1_val"),
                                    "seconds": sur.seconds, "brought": sur.values.get("brought")}
                recipe = load_recipe(res.recipes["surrogate"], list(over))
                from ..data.manifest import load_manifest

                rec.update(_params(recipe, load_manifest(res.source).num_classes))
                rec["recipe"] = res.recipes["surrogate"]
                recipes["surrogate"] = rec["recipe"]
            pr = res.find("prune").values
            score_run, pretrain_run = res.find("score"), res.pretrain(res.seeds[0])
            rec["by_ratio"][str(r)] = {
                "kept_classes": list(pr.get("kept_units", [])),
                "kept_sample_fraction": pr.get("kept_sample_fraction"),
                "score_s": score_run.seconds if score_run is not None else None,
                "pretrain_s": pretrain_run.seconds if pretrain_run is not None else None,
                **{f"{m}_top1": _acc(res, m) for m in finetune},
                **{f"{m}_best_top1": _acc(res, m, "best_mean") for m in finetune}}
        runs[arch] = rec
    ref_kept = {r: runs[reference]["by_ratio"][str(r)]["kept_classes"] for r in all_ratios}
    for arch, rec in runs.items():
        for r in all_ratios:
            br = rec["by_ratio"][str(r)]
            br["overlap"] = overlap(br["kept_classes"], ref_kept[r]).to_json()
        rec["overlap"] = rec["by_ratio"][str(ratio)]["overlap"]["share"]
        rec["winners"] = {}
        for m in finetune:
            acc = {r: [rec["by_ratio"][str(r)][f"{m}_top1"]] for r in all_ratios
                   if rec["by_ratio"][str(r)][f"{m}_top1"] is not None}
            if reference_acc.get(m) is not None and acc:
                rec["winners"][m] = best_winning_subset(acc, [reference_acc[m]], tol)
    cfg = recorded_config(base)
    table = {"bench": "surrogates", "archs": archs, "reference": reference, "ratio": ratio, "ratios": all_ratios,
             "finetune": list(finetune), "seeds": list(ref.seeds), "tol": tol, "reference_acc": reference_acc,
             "reference_pretrain_s": (ref.pretrain(ref.seeds[0]).seconds
                                      if ref.pretrain(ref.seeds[0]) is not None else None),
             "runs": runs, "paper": PAPER_TAB_A6, "recipes": recipes, "config": cfg,
             "command": command, "notes": list(notes), "machine": machine_info(),
             "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    if out_dir is not None:
        write_outputs(table, Path(out_dir))
    return table


# ---------------------------------------------------------------------------------- report
def markdown_tables(t: dict[str, Any], plot_prefix: str = "") -> str:
    """The report's tables (no title): the Tab. A6 analogue beside the paper, accuracy per
    ratio (Fig. 5), and what each surrogate cost."""
    ref_label, r0 = arch_label(t["reference"]), t["ratio"]
    mode = t["finetune"][0]
    L = [f"### Surrogate size vs selection (Tab. A6): LM at {ratio_label(r0)}", "",
         f"Overlap = share of the {ref_label} surrogate's kept source classes that this "
         f"surrogate's LM selection keeps too (|A ∩ B| / |B|, B = {ref_label}'s). Largest "
         f"winning ratio = the largest pruning ratio tried whose {mode.upper()} accuracy is ≥ "
         f"the unpruned (0 %) source model's − {t['tol']} points. *paper* = Tab. A6 (ImageNet, "
         "OxfordPets, RN-101 source model).", "",
         "| surrogate | params as run (M) | params, paper size (M) | *paper* (M) | source val "
         "top-1 (%) | *paper* (%) | class overlap w/ " + ref_label + " (%) | *paper* (%) | "
         f"{mode.upper()} top-1 at {ratio_label(r0)} (%) | largest winning ratio | *paper* |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for arch in t["archs"]:
        rec, p = t["runs"][arch], t["paper"].get(arch, {})
        sur = rec.get("surrogate", {})
        top1 = sur.get("top1_val")
        w = rec["winners"].get(mode)
        win = ("–" if w is None else (ratio_label(w["ratio"]) if w["ratio"] > 0 else "none"))
        L.append(f"| {rec['label']}{' (reference)' if arch == t['reference'] else ''} | "
                 f"{num(rec.get('params', 0) / 1e6, '{:.3f}')} | "
                 f"{num(rec.get('params_paper', 0) / 1e6, '{:.3f}')} | "
                 f"{num(p.get('params_m'), '{:.3f}')} | "
                 f"{num(None if top1 is None else 100 * top1)} | {num(p.get('source_top1'))} | "
                 f"{num(100 * rec['overlap'])} | {num(p.get('overlap'))} | "
                 f"{num(rec['by_ratio'][str(r0)].get(f'{mode}_top1'))} | {win} | "
                 f"{ratio_label(p['winning']) if 'winning' in p else '–'} |")
    for m in t["finetune"]:
        L += ["", f"### Target top-1 (%) vs pruning ratio — {m.upper()} (Fig. 5)", "",
              f"0 % = the source model pretrained on the full source (shared by all surrogates): "
              f"**{num(t['reference_acc'].get(m))}**. Final-epoch accuracy (best evaluated epoch "
              "in results.json).", "",
              "| surrogate | " + " | ".join(ratio_label(r) for r in t["ratios"]) + " |",
              "|---|" + "---:|" * len(t["ratios"])]
        for arch in t["archs"]:
            rec = t["runs"][arch]
            L.append(f"| {rec['label']} | " + " | ".join(
                num(rec["by_ratio"][str(r)].get(f"{m}_top1")) for r in t["ratios"]) + " |")
    if len(t["ratios"]) > 1:
        L += ["", f"Class overlap with {ref_label} (%) at each ratio:", "",
              "| surrogate | " + " | ".join(ratio_label(r) for r in t["ratios"]) + " |",
              "|---|" + "---:|" * len(t["ratios"])]
        for arch in t["archs"]:
            rec = t["runs"][arch]
            L.append(f"| {rec['label']} | " + " | ".join(
                num(100 * rec["by_ratio"][str(r)]["overlap"]["share"]) for r in t["ratios"]) + " |")
    L += ["", "What each surrogate cost (wall seconds on this machine; cached stages report the "
          "time measured when they ran) and its recipe overrides:", "",
          "| surrogate | train s | LM score s | kept samples at " + ratio_label(r0) + " | overrides |",
          "|---|---:|---:|---:|---|"]
    for arch in t["archs"]:
        rec = t["runs"][arch]
        br = rec["by_ratio"][str(r0)]
        frac = br.get("kept_sample_fraction")
        L.append(f"| {rec['label']} | {num(rec.get('surrogate', {}).get('seconds'))} | "
                 f"{num(br.get('score_s'))} | {num(None if frac is None else 100 * frac)} % | "
                 f"{md_code(' '.join(rec['surrogate_overrides']), cell=True)} |")
    if plot_prefix is not None:
        L += ["", f"![accuracy vs pruning ratio per surrogate]({plot_prefix}surrogates.png)"]
    return "\n".join(L) + "\n"


def _seeds(t: dict[str, Any]) -> list[int]:
    """The seeds the rows trained with, as the other benches print them (``[0, 1]``; the
    config's tuple printed ``(0,)``). A results.json written before the table kept them: its
    config's ``seeds``, none given meaning the pipeline's one seed 0 (``--seed`` is the
    scorer's, not these)."""
    return list(t.get("seeds") or t["config"].get("seeds") or [0])


def header_lines(t: dict[str, Any]) -> list[str]:
    cfg, mach = t["config"], t["machine"]
    rec = t.get("recipes") or {}
    return [f"- {ran_on(cfg.get('device', 'auto'), mach)} run, {mach['cores']} cores ({mach['cpu']}), "
            f"Python {mach['python']}, torch "
            f"{mach['torch']}; date {t['date']}",
            f"- command: {md_code(t['command'] or '(library call)')}",
            f"- data: source {md_code(cfg['source'])}, target {md_code(cfg['target'] or '(first)')}, format "
            f"{md_code(cfg['fmt'])}; protocol {md_code(cfg['protocol'])}; recipes: surrogate "
            f"{md_code(rec.get('surrogate', '?'))} with `model.arch` set per row, pretrain "
            f"{md_code(rec.get('pretrain', '?'))}, " + ", ".join(
                f"{m} {md_code(rec.get(m, '?'))}" for m in t["finetune"])
            + "".join(f"; {name} overrides {md_code(' '.join(cfg[key]))}" for name, key in (
                ("pretrain", "overrides"), ("surrogate", "surrogate_overrides"),
                ("finetune", "finetune_overrides")) if cfg.get(key)),
            f"- method LM, ratios {', '.join(ratio_label(r) for r in t['ratios'])}, overlap at "
            f"{ratio_label(t['ratio'])} vs {md_code(t['reference'])}; seeds {_seeds(t)}",
            *(f"- note: {n}" for n in t.get("notes") or ())]


def write_outputs(t: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", t)
    plot(t, out / "surrogates.png")
    atomic_write_text(out / "report.md", report_text(t))


def report_text(t: dict[str, Any]) -> str:
    """``report.md`` of the table ``t`` (the run's, or its results.json read back)."""
    return "\n".join(["# LM with surrogates of different sizes (paper Tab. A6, Fig. 5)", "",
                      *header_lines(t), "", markdown_tables(t)])


def _labels(ax, pts: list[tuple[float, float, str]], colour: str, *, right: bool) -> None:
    """Name each point, ours to the right and the paper's to the left, above it; a point close
    to its left neighbour (x within 1.6×, y within 3 points) gets its label on the right and
    on the other side vertically: the cheap way to keep close labels apart."""
    prev, up = None, True
    for x, y, lab in sorted(pts):
        close = prev is not None and x < 1.6 * prev[0] and abs(y - prev[1]) < 3
        up = not up if close else True
        side = right or close
        ax.annotate(lab, (x, y), xytext=(4 if side else -4, 3 if up else -9),
                    textcoords="offset points", fontsize=7, color=colour,
                    ha="left" if side else "right")
        prev = (x, y)


@literal_text
def plot(t: dict[str, Any], path: Path) -> None:
    """Left: target top-1 vs pruning ratio per surrogate, from the shared 0 % point (Fig. 5);
    right: class overlap with the reference vs surrogate size, ours and the paper's."""
    mode = t["finetune"][0]
    fig, (a1, a2) = subplots(1, 2, figsize=(11.5, 4.4))
    cmap = colormap("tab10")
    ref = t["reference_acc"].get(mode)
    for j, arch in enumerate(t["archs"]):
        rec = t["runs"][arch]
        pts = [(0.0, ref)] + [(r, rec["by_ratio"][str(r)].get(f"{mode}_top1")) for r in t["ratios"]]
        pts = [(100 * r, y) for r, y in pts if y is not None]
        is_ref = arch == t["reference"]
        a1.plot([p[0] for p in pts], [p[1] for p in pts], color="black" if is_ref else cmap(j % 10),
                ls="--" if arch.startswith("vgg") else "-", marker="o", lw=2.2 if is_ref else 1.4,
                label=rec["label"] + (" (ref.)" if is_ref else ""))
    if ref is not None:
        a1.axhline(ref, color="gray", ls=":", lw=1)
    a1.set_xlabel(ratio_axis({"methods": ["lm"], "config": t["config"]}))  # (LM ranks classes)
    a1.set_ylabel(f"target test top-1 (%), {mode.upper()}")
    n = len(_seeds(t))
    a1.set_title(f"LM pruning trajectory per surrogate (cf. Fig. 5), target "
                 f"`{t['config']['target'] or 'first'}` "
                 + ("(1 seed)" if n == 1 else f"(mean over {n} seeds)"), fontsize=9)
    a1.set_xticks([0] + [100 * r for r in t["ratios"]])
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7, ncol=2)
    xs, ys, labels = [], [], []
    for j, arch in enumerate(t["archs"]):
        rec = t["runs"][arch]
        if rec.get("params"):
            xs.append(rec["params"] / 1e6)
            ys.append(100 * rec["overlap"])
            labels.append(rec["label"])
    a2.scatter(xs, ys, color="tab:blue", label="ours (params as run)")
    _labels(a2, list(zip(xs, ys, labels)), "tab:blue", right=True)
    pp = [(p["params_m"], p["overlap"], p["label"]) for a, p in t["paper"].items()
          if a in t["archs"]]
    if pp:
        a2.scatter([p[0] for p in pp], [p[1] for p in pp], marker="*", s=70, color="tab:orange",
                   label="paper Tab. A6 (ImageNet)")
        _labels(a2, pp, "tab:orange", right=False)
    a2.set_xscale("log")
    from matplotlib.ticker import FuncFormatter  # (plain numbers: the default's tick labels
    # are $10^{1}$ mathtext, drawn as raw TeX where texts are drawn as written: literal_text)

    a2.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a2.xaxis.set_minor_formatter(FuncFormatter(  # (2 and 5 of each decade: 0.2, 0.5, 2, 5)
        lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    a2.set_xlabel("surrogate parameters (M, log)")
    a2.set_ylabel(f"class overlap with {arch_label(t['reference'])} at {ratio_label(t['ratio'])} (%)")
    a2.set_title("source class selection overlap (Tab. A6)", fontsize=9)
    a2.grid(alpha=0.3)
    a2.legend(fontsize=7)
    fig.tight_layout()
    save(fig, path, dpi=110)
