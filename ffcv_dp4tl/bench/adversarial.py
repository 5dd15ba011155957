"""Paper Tab. 5: dataset pruning for adversarial pretraining (``dp4tl bench adversarial``).

Four source models, each through :func:`~ffcv_dp4tl.pipeline.run.run_pipeline` (so every stage is cached and shared
with other runs of the same inputs), then LP (and optionally FF) on the target:

* **DENSE** — clean pretraining on the full source (``random`` at ratio 0 keeps every sample,
  no surrogate: the cost table's 0 % reference);
* **DENSE-ADV** — the same with PGD adversarial training (the recipe's ``[adv]`` section, set
  through overrides: ``adv.steps``, ``adv.eps``, ...; :mod:`..training.adversarial`);
* **LM** — clean pretraining on the LM-pruned source at ``ratio`` (the paper: the best winning
  ratio per target, 70 % for SUN397 and 50 % for DTD);
* **LM-ADV** — adversarial pretraining on the same mask (the surrogate, scores and mask are the
  LM run's: one selection serves both).

Reported per model: target top-1 after LP/FF (final epoch, mean ± std over seeds; the best
evaluated epoch in ``results.json``), the clean source val top-1, and the time to obtain the
pretrained model — pretraining wall seconds (and CPU seconds, steadier on a shared machine)
and the total with selection (surrogate + score + prune, as the paper's Tab. 3/5 count it), each
also as a multiple of DENSE's.
"""
from __future__ import annotations

import datetime as _dt
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..contracts import check_items
from ..errors import DP4TLError
from ..fsutil import atomic_write_json, atomic_write_text
from ..pipeline.config import PipelineConfig, recorded_config
from ..pipeline.result import PipelineResult
from ..pipeline.report import in_stage_order, mean_std, method_label
from ..pipeline.run import preflight, run_pipeline
from ..reporting import machine_info, md_code, ran_on
from ..outputs import claim_out_dir

#: Paper Tab. 5 (ResNet-101 on ImageNet, ratio in %, accuracy in %, time in hours).
PAPER_TAB5: dict[str, dict[str, dict[str, float | None]]] = {
    "SUN397": {"DENSE": {"ratio": None, "lp": 51.45, "ff": 54.21, "h": 5.4},
               "DENSE-ADV": {"ratio": None, "lp": 52.97, "ff": 55.67, "h": 13.7},
               "LM": {"ratio": 70, "lp": 50.95, "ff": 54.28, "h": 1.9},
               "LM-ADV": {"ratio": 70, "lp": 52.07, "ff": 55.49, "h": 4.2}},
    "DTD": {"DENSE": {"ratio": None, "lp": 65.91, "ff": 67.21, "h": 5.4},
            "DENSE-ADV": {"ratio": None, "lp": 67.23, "ff": 68.92, "h": 13.7},
            "LM": {"ratio": 50, "lp": 66.25, "ff": 67.22, "h": 2.9},
            "LM-ADV": {"ratio": 50, "lp": 67.02, "ff": 68.54, "h": 6.7}},
}
VARIANTS = ("DENSE", "DENSE-ADV", "LM", "LM-ADV")
SELECTION_STAGES = ("surrogate", "score", "prune")


def adv_overrides(steps: int = 3, eps: str = "3/255", step_size: str = "", norm: str = "linf",
                  random_start: bool = True, units: str = "pixel") -> tuple[str, ...]:
    """The recipe overrides that turn a pretraining recipe adversarial (defaults: the authors'
    released script, see recipes/paper/resnet101_16ep_adv.toml). ``step_size`` "" = 2 × eps /
    steps (the authors' script), "0" = the engine's default 2.5 × eps / steps (Madry et al.);
    ``eps`` and ``step_size`` may be fractions such as "3/255". ``units``: of the step and the
    random start (``adv.units``; "normalized" = the authors' released script, as
    recipes/paper_code/resnet101_16ep_adv.toml); it enters the overrides only off "pixel", so
    the keys of earlier runs stay valid."""
    if steps <= 0:
        raise DP4TLError(f"--steps must be >= 1 for the ADV models, got {steps}")
    radius = _number("--eps", eps)  # (the recipe's rule, in this command's words: it named
    if not radius > 0:              # adv.eps, a key the user never wrote; review; nan too)
        raise DP4TLError(f"--eps {eps}: the ADV models need a radius > 0 (pixel units, e.g. "
                         "3/255 for linf, 3 for l2)")
    if norm == "linf" and radius > 1:
        # a plain number that reads as a 0-255 pixel value (8 meant 8/255) gets that spelling;
        # any other (1e30, 300, 3/2) would be a radius no pixel has: just the range (audit)
        pixel = "/" not in str(eps) and radius <= 255
        raise DP4TLError(f"--eps {eps} is in [0, 1] pixel units for linf"
                         + (f"; for {eps}/255 pass --eps {eps}/255" if pixel else
                            ": give a number in (0, 1] or a fraction such as 8/255"))
    if not str(step_size).strip():
        step_size = repr(2 * radius / steps)
    else:  # (its refusal named the recipe's adv.step_size, after the data was built; audit)
        _number("--step-size", step_size)
    return (f"adv.steps={steps}", f"adv.eps={eps}", f"adv.step_size={step_size}",
            f"adv.norm={norm}", f"adv.random_start={str(random_start).lower()}",
            *((f"adv.units={units}",) if units != "pixel" else ()))


def _attack_space(adv: Sequence[str]) -> str:
    """How the header describes the attack of ``adv`` (the overrides :func:`adv_overrides`
    made): where its steps are taken."""
    if "adv.units=normalized" in [a.replace(" ", "") for a in adv]:
        return ("PGD steps and random start on the normalised image, the eps ball and [0, 1] "
                "box in pixels: the authors' released script")
    return "PGD in [0, 1] pixel space"


def _number(what: str, text: str) -> float:
    num, sep, den = str(text).partition("/")
    try:
        return float(num) / float(den) if sep else float(num)
    except (ValueError, ZeroDivisionError):
        raise DP4TLError(f"{what} must be a number or a fraction such as 3/255, got {text!r}") from None


def _row(variant: str, ratio: float, res: PipelineResult, seeds: Sequence[int],
         finetune: Sequence[str]) -> dict[str, Any]:
    pre = [p for p in (res.pretrain(s) for s in seeds) if p is not None]
    selection = sum(s.seconds for s in (res.find(n) for n in SELECTION_STAGES) if s is not None) \
        if variant.startswith("LM") else 0.0
    prune = res.find("prune")
    prune_v = prune.values if prune is not None else {}
    row: dict[str, Any] = {
        "variant": variant, "adv": variant.endswith("ADV"), "ratio": ratio,
        "objective": pre[0].values.get("objective") if pre else None,
        "pretrain_s": mean_std([p.seconds for p in pre]),
        "pretrain_cpu_s": mean_std([p.cpu_seconds for p in pre]),
        "selection_s": selection,
        "source_top1_val": mean_std([p.values.get("top1_val") for p in pre]),
        "source_top1_train": mean_std([p.values.get("top1_train") for p in pre]),
        "train_kept": prune_v.get("train_kept"),
        "kept_sample_fraction": prune_v.get("kept_sample_fraction"),
        "report": res.report, "recipes": res.recipes,
    }
    row["total_s"] = (row["pretrain_s"][0] + selection, row["pretrain_s"][1])
    summary = res.summary or {}
    for mode in finetune:
        sm = summary.get(mode)
        row[mode] = None if sm is None else {
            "final": (100 * sm["final_mean"], 100 * sm["final_std"]),
            "best": (100 * sm["best_mean"], 100 * sm["best_std"]),
            "per_seed": [{k: (100 * v if k in ("final", "best") and v is not None else v)
                          for k, v in p.items()} for p in sm["seeds"]]}
    return row


def run_adversarial(base: PipelineConfig, out_dir: str | Path | None = None, *, ratio: float = 0.6,
                    seeds: Sequence[int] = (0,), finetune: Sequence[str] = ("lp",),
                    adv: Sequence[str] = adv_overrides(), method: str = "lm", command: str = "",
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run DENSE, DENSE-ADV, LM and LM-ADV (``method`` at ``ratio``; ``adv``: the recipe overrides
    of the ADV models) for every seed; return (and, with ``out_dir``, write ``report.md`` and
    ``results.json``) the Tab. 5-like table."""
    if not 0.0 < ratio < 1.0:
        raise DP4TLError(f"--ratio must lie in (0, 1) (the pruned models' ratio), got {ratio}")
    if out_dir is not None:
        claim_out_dir(out_dir, "adversarial")
    if not any(str(a).strip().startswith("adv.steps=") for a in adv):
        raise DP4TLError("the ADV overrides must set adv.steps (e.g. adv.steps=3)")
    seeds = tuple(check_items("--seeds", (int(s) for s in seeds)))
    finetune = tuple(check_items("--finetune", finetune))
    rows = []
    plan = [("DENSE", 0.0, "random", ()), ("DENSE-ADV", 0.0, "random", tuple(adv)),
            ("LM", ratio, method, ()), ("LM-ADV", ratio, method, tuple(adv))]

    def config(r: float, m: str, extra: tuple[str, ...]) -> PipelineConfig:
        return replace(base, ratio=r, method=m, seeds=seeds, finetune=finetune,
                       overrides=tuple(base.overrides) + extra,
                       scorer_options=base.scorer_options if m == method else ())

    # every run's checks before DENSE trains, and those that need no data before the data is
    # built (--method, --set, the ADV options: each was refused after the build; audit): the
    # plain models (the method, --set), then the ADV models, whose only difference is the ADV
    # recipe (--steps, --eps, --step-size, --norm), named so in their refusals
    preflight([*(config(r, m, extra) for _, r, m, extra in plan if not extra),
               *(("the ADV models' recipe (--steps, --eps, --step-size, --norm)",
                  config(r, m, extra)) for _, r, m, extra in plan if extra)], log)
    for i, (variant, r, m, extra) in enumerate(plan, 1):
        log(f"[adversarial] {i}/{len(plan)}: {variant} (ratio {r:g}, seeds {list(seeds)})")
        res = run_pipeline(config(r, m, extra), log=log)
        rows.append(_row(variant, r, res, seeds, finetune))
    dense = rows[0]
    for row in rows:
        for key in ("pretrain_s", "pretrain_cpu_s", "total_s"):
            ref = dense[key][0]
            row[f"{key}_x_dense"] = row[key][0] / ref if ref and not math.isnan(ref) else None
    table = {"bench": "adversarial", "rows": rows, "ratio": ratio, "method": method, "seeds": list(seeds),
             "finetune": list(finetune), "adv": list(adv), "command": command,
             "config": recorded_config(base),
             "machine": machine_info(),
             "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    if out_dir is not None:
        write_outputs(table, Path(out_dir))
    return table


def write_outputs(t: dict[str, Any], out: Path) -> None:
    """``out/results.json`` and ``out/report.md`` (the report can be re-rendered from the JSON)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", t)
    atomic_write_text(out / "report.md", "\n".join(
        ["# Adversarial pretraining on full and pruned sources (paper Tab. 5)", "",
         *header_lines(t), "", markdown_tables(t)]) + "\n")


# ---------------------------------------------------------------------------------- report
def _acc(cell: dict | None, n: int, key: str = "final") -> str:
    if cell is None:
        return "–"
    m, s = cell[key]
    return "–" if math.isnan(m) else (f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}")


def _x(v: float | None) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.2f}×"


def _s(ms: tuple[float, float]) -> str:
    return "–" if math.isnan(ms[0]) else f"{ms[0]:.1f}"


def header_lines(t: dict[str, Any]) -> list[str]:
    cfg, mach = t["config"], t["machine"]
    device = cfg.get("device", "auto")
    return [f"- machine: {mach['cores']} cores ({mach['cpu']}), device {md_code(device)} "
            f"({ran_on(device, mach)}), Python "
            f"{mach['python']}, torch {mach['torch']}, {mach['platform']}; date {t['date']}",
            f"- command: {md_code(t['command'] or '(library call)')}",
            f"- data: source {md_code(cfg['source'])}, target {md_code(cfg['target'] or '(first)')}, format "
            f"{md_code(cfg['fmt'])}, protocol {md_code(cfg['protocol'])}; recipes "
            + ", ".join(f"{k} {md_code(v)}" for k, v in in_stage_order(t["rows"][0].get("recipes") or {}))
            + "".join(f"; {name} overrides {md_code(' '.join(cfg[key]))}" for name, key in (
                ("pretrain", "overrides"), ("surrogate", "surrogate_overrides"),
                ("finetune", "finetune_overrides")) if cfg.get(key)),
            f"- ADV models: recipe overrides {md_code(' '.join(t['adv']))} ({_attack_space(t['adv'])}, "
            "the model in eval mode while attacking: ffcv_dp4tl/training/adversarial.py)",
            f"- pruned models: {t['method'].upper()} at ratio {t['ratio']:g}"
            + (f" (kept {t['rows'][2]['kept_sample_fraction']:.3f} of the train samples)"
               if t["rows"][2].get("kept_sample_fraction") is not None else "")
            + f"; seeds {t['seeds']}; finetune {', '.join(m.upper() for m in t['finetune'])}",
            "- times are read from each stage's `DONE.json` (measured when it ran); on a shared "
            "machine wall seconds move with the other jobs' load, CPU seconds (this process + its "
            "finished loader workers) much less"]


def shown(variant: str, method: str) -> str:
    """How the report names ``variant``: the pruned models by their method's label
    (``RANDOM``, ``RANDOM-ADV`` for ``--method random``). The stored rows keep the paper's
    names ("LM", "LM-ADV"), which the report's code reads them by, but a table of RANDOM's
    models labelled "LM" beside the paper's LM rows read as LM's result (audit)."""
    return method_label(method) + variant[2:] if variant.startswith("LM") else variant


def markdown_tables(t: dict[str, Any]) -> str:
    n = len(t["seeds"])
    name = {v: shown(v, t.get("method", "lm")) for v in VARIANTS}
    modes = t["finetune"]
    acc_what = f"mean ± std over {n} seeds" if n > 1 else "one seed"
    lines = [f"Target test top-1 (%, final epoch, {acc_what}); source val top-1 is clean "
             "accuracy on the (class-masked) source val split; times are pretraining wall / CPU "
             "seconds (mean over seeds) and the total with selection (surrogate + score + prune "
             f"for {name['LM']}), × DENSE.", "",
             "| method | pruning ratio | " + " | ".join(f"{m.upper()} acc (%)" for m in modes)
             + " | source val top-1 (%) | pretrain s | × DENSE | pretrain CPU-s | × DENSE "
             "| total s | × DENSE |",
             "|---|---:|" + "---:|" * len(modes) + "---:|---:|---:|---:|---:|---:|---:|"]
    for r in t["rows"]:
        ratio = "N/A" if r["ratio"] == 0 else f"{100 * r['ratio']:.0f}"
        val = r["source_top1_val"][0]
        lines.append(f"| {name.get(r['variant'], r['variant'])} | {ratio} | "
                     + " | ".join(_acc(r.get(m), n) for m in modes)
                     + f" | {'–' if math.isnan(val) else f'{100 * val:.2f}'} | {_s(r['pretrain_s'])} | "
                     f"{_x(r['pretrain_s_x_dense'])} | {_s(r['pretrain_cpu_s'])} | "
                     f"{_x(r['pretrain_cpu_s_x_dense'])} | {_s(r['total_s'])} | "
                     f"{_x(r['total_s_x_dense'])} |")
    by = {r["variant"]: r for r in t["rows"]}
    lines += ["", "Effect of adversarial pretraining (accuracy points, ADV − clean) and of "
              f"pruning ({name['LM-ADV']} − DENSE-ADV):", ""]
    for m in modes:
        def d(a: str, b: str) -> str:
            x, y = by[a].get(m), by[b].get(m)
            if x is None or y is None:
                return "–"
            return f"{x['final'][0] - y['final'][0]:+.2f}"
        lines.append(f"- {m.upper()}: DENSE-ADV − DENSE {d('DENSE-ADV', 'DENSE')}, "
                     f"{name['LM-ADV']} − {name['LM']} {d('LM-ADV', 'LM')}, {name['LM-ADV']} − "
                     f"DENSE-ADV {d('LM-ADV', 'DENSE-ADV')}, {name['LM-ADV']} − DENSE "
                     f"{d('LM-ADV', 'DENSE')}")
    lines.append(f"- time: {name['LM-ADV']} total = {_x(by['LM-ADV']['total_s_x_dense'])} DENSE, "
                 f"DENSE-ADV = {_x(by['DENSE-ADV']['total_s_x_dense'])} DENSE (paper: LM-ADV "
                 "0.78× SUN397 / 1.24× DTD, DENSE-ADV 2.54×)")
    lines += ["", "Paper Tab. 5 (ResNet-101 on ImageNet; time in hours and × DENSE):", "",
              "| method | SUN397 ratio | LP | FF | h (× DENSE) | DTD ratio | LP | FF | h (× DENSE) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in VARIANTS:
        cells = []
        for tgt in ("SUN397", "DTD"):
            p = PAPER_TAB5[tgt][v]
            x = p["h"] / PAPER_TAB5[tgt]["DENSE"]["h"]
            cells.append(f"{'N/A' if p['ratio'] is None else p['ratio']} | {p['lp']:.2f} | "
                         f"{p['ff']:.2f} | {p['h']} ({x:.2f}×)")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
