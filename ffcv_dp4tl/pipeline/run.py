"""The end-to-end job behind ``just pretrain ratio=R`` / ``dp4tl pipeline``.

build data (if missing) → train surrogate (cached) → score (LM by default) → prune → pretrain
the source model on the mask → finetune LP and FF on the target → report.

Every stage writes into ``runs/<stage>-<key>/`` where the key hashes everything the stage
depends on (upstream keys included), and is skipped once its ``DONE.json`` exists: the
surrogate and its scores are shared by all ratios, a rerun does nothing, and a killed run
resumes at the stage (and, for training, the epoch) where it stopped.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..data.manifest import MANIFEST_NAME, load_manifest
from ..errors import DP4TLError
from ..fsutil import atomic_write_json, atomic_write_text, directory_lock
from ..scoring.registry import TRAJECTORY, UNIT_PLURAL, get_scorer
from .prune import prune
from .score import file_hash, score, self_supervised_refusal
from .stages import describe, run_stage, stage

#: Recipes per scale: the embedded default runs the tiny CPU recipes, real data the paper's.
RECIPE_SETS = {
    "tiny": {"surrogate": "resnet18_tiny_cpu", "pretrain": "resnet34_tiny_cpu",
             "lp": "lp_tiny_cpu", "ff": "ff_tiny_cpu"},
    "full": {"surrogate": "resnet18_surrogate", "pretrain": "resnet50_16ep", "lp": "lp", "ff": "ff"},
}


PLURAL = UNIT_PLURAL  # unit → plural (kept for older imports)


@dataclass
class PipelineConfig:
    ratio: float = 0.6
    source: str = "synth:tiny"  # a built dataset dir, or a `dp4tl build` SOURCE
    target: str = ""  # a built dir, a `dp4tl build` SOURCE, or a synth target name ('' = first)
    method: str = "lm"
    recipes: str = ""  # tiny | full ('' = tiny for synth, full otherwise)
    surrogate_recipe: str = ""
    recipe: str = ""  # source-model pretraining recipe
    lp_recipe: str = ""  # finetuning recipes (e.g. a per-target file that `extends` lp / ff)
    ff_recipe: str = ""
    arch: str = ""  # override the pretraining recipe's model.arch
    finetune: tuple[str, ...] = ("lp", "ff")
    data_root: Path = Path("data")
    runs_root: Path = Path("runs")
    fmt: str = "ffcv"
    device: str = "auto"
    k: int = 2000
    seed: int = 0
    overrides: tuple[str, ...] = field(default_factory=tuple)  # for the pretraining recipe
    surrogate_overrides: tuple[str, ...] = field(default_factory=tuple)
    finetune_overrides: tuple[str, ...] = field(default_factory=tuple)  # for the LP and FF recipes


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")[:60]


def _ensure_built(source: str, data_root: Path, log: Callable[[str], None]) -> Path:
    """A built dataset dir for ``source`` (a dir with a manifest, or a SOURCE to build)."""
    p = Path(source).expanduser()
    if (p / MANIFEST_NAME).exists():
        return p
    if p.exists() and p.is_dir() and not (":" in source or source.startswith("synth")):
        raise DP4TLError(f"{p} is not a built dataset (no {MANIFEST_NAME}); build it with "
                         f"`dp4tl build LAYOUT:{p} --out DIR` and pass DIR")
    from beton_builders.sources import default_max_side, resolve_source
    from beton_builders.writer import BuildOptions, build_dataset

    out = data_root / _slug(source)
    # Pipelines sharing a data root wait for each other here (a lone `dp4tl build` of the same
    # folder is still refused by the build's own lock): the second one finds the data built.
    with directory_lock(data_root / f".{_slug(source)}.pipeline.lock", f"data {out}", wait=True,
                        on_wait=lambda m: log(f"[data] {m}")):
        for sub, spec in resolve_source(source).items():
            summary = build_dataset(spec, out / sub if sub else out,
                                    BuildOptions(max_side=default_max_side(spec)),
                                    source=source)
            if not summary.skipped:
                log(f"[data] built {out / sub if sub else out}: " + "; ".join(summary.lines()))
    return out


def _resolve_data(cfg: PipelineConfig, log) -> tuple[Path, Path]:
    root = _ensure_built(cfg.source, cfg.data_root, log)
    if (root / "source" / MANIFEST_NAME).exists():  # synth: source + targets/<name>
        targets = sorted(p.parent.name for p in (root / "targets").glob(f"*/{MANIFEST_NAME}"))
        if cfg.target and (root / "targets" / cfg.target / MANIFEST_NAME).exists():
            return root / "source", root / "targets" / cfg.target
        if not cfg.target:
            if not targets:
                raise DP4TLError(f"{root} has no targets/*; pass target=")
            return root / "source", root / "targets" / targets[0]
        return root / "source", _ensure_built(cfg.target, cfg.data_root, log)
    if not cfg.target:
        raise DP4TLError("target= is required with a real source (a built target dir or "
                         "LAYOUT:PATH such as flowers102:/data/flowers-102)")
    return root, _ensure_built(cfg.target, cfg.data_root, log)


def recipe_scale(manifest) -> str:
    """``tiny`` for the embedded generated data (its manifest says ``extra.generator = synth``,
    however it was named or where it was built), ``full`` for real data."""
    return "tiny" if manifest.contract.extra.get("generator") == "synth" else "full"


def _check_inputs(cfg: PipelineConfig, scorer, src, tgt, log: Callable[[str], None]) -> None:
    """Checks that need no work, before the surrogate trains."""
    if cfg.k <= 0:
        raise DP4TLError(f"k must be a positive number of clusters, got {cfg.k}")
    if getattr(scorer, "uses_k", False):
        n = src.split("train").num_samples
        if cfg.k > n:
            raise DP4TLError(f"k={cfg.k} clusters requested but the source train split has only "
                             f"{n} samples; pass a smaller --k")
    if "train" in tgt.split_names:
        n = tgt.split("train").num_samples
        if n < tgt.num_classes:
            msg = (f"[warning] the target {tgt.root} has {n} train images for {tgt.num_classes} "
                   "classes: some classes have no example, finetuning cannot learn them")
            log(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)


def run_pipeline(cfg: PipelineConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    if not 0.0 <= cfg.ratio < 1.0:
        raise DP4TLError(f"ratio must be in [0, 1), got {cfg.ratio}")
    scorer = get_scorer(cfg.method)  # unknown method: one line listing the registered ones
    if cfg.k <= 0:
        raise DP4TLError(f"k must be a positive number of clusters, got {cfg.k}")
    source_dir, target_dir = _resolve_data(cfg, log)
    src, tgt = load_manifest(source_dir), load_manifest(target_dir)
    scale = cfg.recipes or recipe_scale(src)
    if scale not in RECIPE_SETS:
        raise DP4TLError(f"recipes= must be one of {', '.join(RECIPE_SETS)}")
    if not cfg.recipes:
        log(f"[recipes] {scale} recipes ({'embedded synthetic' if scale == 'tiny' else 'real'} "
            f"data per {source_dir / MANIFEST_NAME}; recipes= to choose)")
    _check_inputs(cfg, scorer, src, tgt, log)
    rs = dict(RECIPE_SETS[scale])
    rs["surrogate"] = cfg.surrogate_recipe or rs["surrogate"]
    rs["pretrain"] = cfg.recipe or rs["pretrain"]
    rs["lp"] = cfg.lp_recipe or rs["lp"]
    rs["ff"] = cfg.ff_recipe or rs["ff"]
    pre_overrides = list(cfg.overrides) + ([f"model.arch={cfg.arch}"] if cfg.arch else [])

    from ..training.finetune import finetune
    from ..training.recipe import load_recipe
    from ..training.trainer import train

    # Load every recipe first (bad recipes fail before any work); stage keys hash the recipes'
    # *contents*, so editing a recipe file reruns what depends on it instead of reusing a stale
    # cached stage under the same name.
    loaded = {name: load_recipe(rs[name], {"pretrain": pre_overrides,
                                           "surrogate": list(cfg.surrogate_overrides)}.get(
                                               name, list(cfg.finetune_overrides)))
              for name in ("surrogate", "pretrain", *cfg.finetune)}
    fp = {name: r.fingerprint() for name, r in loaded.items()}
    sur_recipe = loaded["surrogate"]
    if sur_recipe.ssl.method != "none" and scorer.needs_class_head:
        raise self_supervised_refusal(scorer, f"the surrogate recipe {rs['surrogate']} is "
                                              f"self-supervised ({sur_recipe.ssl.method})")
    root, common = cfg.runs_root, {"fmt": cfg.fmt}
    results: dict[str, Any] = {"config": {**asdict(cfg), "data_root": str(cfg.data_root),
                                          "runs_root": str(cfg.runs_root)},
                               "source": str(source_dir), "target": str(target_dir),
                               "recipes": rs, "stages": {}}

    needs_surrogate = scorer.needs_surrogate
    sur_overrides = list(cfg.surrogate_overrides)
    sur = stage(root, "surrogate", {"recipe": rs["surrogate"], "overrides": sur_overrides,
                                    "recipe_fingerprint": fp["surrogate"],
                                    "source": src.fingerprint, **common})
    if needs_surrogate:
        results["stages"]["surrogate"] = run_stage(sur, lambda d: train(
            rs["surrogate"], source_dir, out_dir=d, fmt=cfg.fmt, device=cfg.device,
            overrides=sur_overrides), log)
    # Every key holds the content fingerprints of its inputs (source, target, mask, recipes),
    # never names: the same inputs under another path reuse a stage, other data never does.
    sc = stage(root, "score", {"method": cfg.method, "surrogate": sur.key if needs_surrogate else None,
                               "source": src.fingerprint, "target": tgt.fingerprint, "k": cfg.k,
                               "seed": cfg.seed, **common})
    device = "cuda" if cfg.device == "auto" and _cuda() else ("cpu" if cfg.device == "auto" else cfg.device)
    results["stages"]["score"] = run_stage(sc, lambda d: score(
        cfg.method, source_dir=source_dir, target_dir=target_dir, out_dir=d,
        checkpoint=sur.dir / "checkpoint.pt" if needs_surrogate else None,
        trajectory=_trajectory(cfg.method, sur.dir, sur_recipe.train.keep_epochs, log)
        if TRAJECTORY in scorer.needs else (), fmt=cfg.fmt, device=device, k=cfg.k,
        seed=cfg.seed), log)
    pr = stage(root, "prune", {"score": sc.key, "ratio": cfg.ratio, "source": src.fingerprint})
    results["stages"]["prune"] = run_stage(pr, lambda d: prune(sc.dir, source_dir, cfg.ratio, d), log)
    pt = stage(root, "pretrain", {"recipe": rs["pretrain"], "overrides": pre_overrides,
                                  "recipe_fingerprint": fp["pretrain"],
                                  "prune": pr.key, "source": src.fingerprint,
                                  "mask": file_hash(pr.dir / "train.npy"), **common})
    results["stages"]["pretrain"] = run_stage(pt, lambda d: train(
        rs["pretrain"], source_dir, mask=pr.dir / "train.npy", out_dir=d, fmt=cfg.fmt,
        device=cfg.device, overrides=pre_overrides), log)
    ft_overrides = list(cfg.finetune_overrides)
    for mode in cfg.finetune:  # overrides enter the key only when given (keeps old keys valid)
        ft = stage(root, f"finetune-{mode}", {"recipe": rs[mode], "pretrain": pt.key,
                                              "recipe_fingerprint": fp[mode],
                                              "target": tgt.fingerprint, **common,
                                              **({"overrides": ft_overrides} if ft_overrides else {})})
        results["stages"][f"finetune-{mode}"] = run_stage(ft, lambda d, m=mode: finetune(
            rs[m], pt.dir / "checkpoint.pt", target_dir, d, mode=m, fmt=cfg.fmt,
            device=cfg.device, overrides=ft_overrides), log)
    report_dir = root / f"report-{pt.key}"
    write_report(results, report_dir)
    results["report"] = str(report_dir / "report.md")
    log(f"[report] {results['report']}")
    return results


def _trajectory(method: str, sur_dir: Path, keep_epochs, log: Callable[[str], None]
                ) -> tuple[Path, ...]:
    """The surrogate's kept early-training checkpoints (train.keep_epochs), in epoch order,
    for the scorers that need a trajectory (EL2N/GraNd score the earliest)."""
    from ..training.trainer import early_checkpoint_name

    kept = tuple(p for p in (sur_dir / early_checkpoint_name(e) for e in sorted(keep_epochs))
                 if p.exists())
    if not kept:
        log(f"[score] {method}: the surrogate recipe keeps no early checkpoint "
            "(train.keep_epochs); scoring the final surrogate instead")
    return kept


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _label(method: str) -> str:
    try:
        return get_scorer(method).label
    except DP4TLError:  # a report of a method no longer registered
        return method.upper()


def write_report(results: dict[str, Any], out: Path) -> None:
    st = results["stages"]
    cfg = results["config"]
    pr = st["prune"]
    lines = [f"# DP4TL run: {_label(cfg['method'])} at ratio {cfg['ratio']}", "",
             f"- source: `{results['source']}`", f"- target: `{results['target']}`",
             f"- recipes: {', '.join(f'{k}=`{v}`' for k, v in results['recipes'].items())}",
             f"- kept: {len(pr.get('kept_units', [])) or '-'} {UNIT_PLURAL[pr['unit']]}, "
             f"{pr['train_kept']} train samples", "",
             "| stage | wall s | result |", "|---|---:|---|"]
    for name, res in st.items():
        lines.append(f"| {name} | {res.get('seconds', 0):.1f} | {describe(res)} |")
    total = sum(r.get("seconds", 0) for r in st.values())
    lines += [f"| **total** | {total:.1f} | |", ""]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_json(out / "results.json", json.loads(json.dumps(results, default=str)))
