"""The end-to-end job behind ``just pretrain ratio=R`` / ``dp4tl pipeline``.

build data (if missing) → train surrogate (cached) → score (LM by default) → prune → pretrain
the source model on the mask → finetune LP and FF on the target → report.

Every stage writes into ``runs/<stage>-<key>/`` where the key hashes everything the stage
depends on (upstream keys included), and is skipped once its ``DONE.json`` exists: the
surrogate and its scores are shared by all ratios, a rerun does nothing, and a killed run
resumes at the stage (and, for training, the epoch) where it stopped.

**Protocols.** ``protocol="fast"`` (default) runs today's recipes: the tiny CPU set on the
embedded data, ffcv-imagenet-style ones on real data. ``protocol="paper"`` runs ``recipes/paper/``,
the paper's App. A.1 / Tab. A1 protocol (ResNet-18 surrogate, ResNet-101 source, SGD lr 0.5 /
wd 5e-4, no label smoothing / BlurPool / TTA, LP Adam 0.1 × 50 epochs, FF Adam 0.01 cosine × 200,
CIFAR-10 at 160 px, MoCo's linear protocol for self-supervised sources, the target read at 224
with no crop for scoring); every value's source is a comment in its file.

**Seeds.** ``seeds=(0, 1, 2)`` repeats pretraining and finetuning per seed (``train.seed``; the
surrogate, scores and mask are shared) and reports final- and best-epoch top-1 as mean ± std.

**Brought weights.** ``surrogate_weights`` imports a torchvision/timm state dict as the surrogate
(:mod:`..training.weights`: checked against the source's classes) instead of training one;
``source_weights`` does the same for the source model LP/FF start from (the unpruned reference,
ratio 0). The report and the cost table say when a model was brought rather than trained.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from ..contracts import Budget, Protocol, check_k, check_ratio
from ..data.manifest import MANIFEST_NAME, load_manifest
from ..data.masks import load_mask
from ..errors import DP4TLError
from ..fsutil import (atomic_write_json, atomic_write_text, check_out_dir, directory_lock,
                      file_sha256, is_unwritable)
from ..scoring.registry import TRAJECTORY, UNIT_PLURAL, get_scorer, parse_option_pairs
from .gallery import GALLERY, selection_gallery
from .prune import prune
from .score import score, self_supervised_refusal
from .stages import describe, key_of, run_stage, stage
from .truth import selection_truth, truth_lines
from .targets import (check_order, check_synth_target, check_weights, display_names,
                      method_title, score_key, stage_suffix, target_list)

#: The fast protocol's recipes per scale (``contracts.RecipeSet``): the embedded default runs
#: the tiny CPU recipes, real data the ffcv-imagenet-style ones.
RECIPE_SETS = {
    "tiny": {"surrogate": "resnet18_tiny_cpu", "pretrain": "resnet34_tiny_cpu",
             "lp": "lp_tiny_cpu", "ff": "ff_tiny_cpu"},
    "full": {"surrogate": "resnet18_surrogate", "pretrain": "resnet50_16ep", "lp": "lp", "ff": "ff"},
    # the embedded benchmark (`dp4tl bench embedded`, data synth:bench): sized for 2 CPU cores
    "bench": {"surrogate": "resnet18_bench_surrogate_cpu", "pretrain": "resnet18_bench_cpu",
              "lp": "lp_bench_cpu", "ff": "ff_tiny_cpu"},
}
#: The paper's protocol (recipes/paper/, App. A.1 and Tab. A1), whatever the data's scale.
PAPER_RECIPES = {"surrogate": "paper/resnet18_surrogate", "pretrain": "paper/resnet101_16ep",
                 "lp": "paper/lp", "ff": "paper/ff"}
#: Tab. A1: per-target finetuning resolution (CIFAR-10 at 160; the others 224 = paper/lp, paper/ff)
PAPER_TARGET_RECIPES = {"cifar10": {"lp": "paper/lp_cifar10", "ff": "paper/ff_cifar10"}}
#: MoCo's linear classification protocol, the paper's LP for self-supervised source models
PAPER_SSL_LP = "paper/lp_moco"
#: The authors' released code (recipes/paper_code/, OPTML-Group/DP4TL configs and scripts): the
#: RN-18 surrogate and RN-101 source as released, LP and FF per target as the released
#: configs/imagenet_transfer_to_downstream/<target>_rn101{,_ff}.json (docs/deviations.md)
PAPER_CODE_RECIPES = {"surrogate": "paper_code/resnet18_surrogate",
                      "pretrain": "paper_code/resnet101_16ep",
                      "lp": "paper_code/lp", "ff": "paper_code/ff"}
#: per target (the manifest's dataset name): FF is Adam lr 1e-4 (paper_code/ff) except the three
#: SGD lr 0.1 targets; CIFAR-10 at 160 px
PAPER_CODE_TARGET_RECIPES = {
    "oxfordpets": {}, "flowers102": {}, "dtd": {}, "ucf101": {},
    "cifar10": {"lp": "paper_code/lp_cifar10", "ff": "paper_code/ff_cifar10"},
    "food101": {"ff": "paper_code/ff_sgd"}, "stanfordcars": {"ff": "paper_code/ff_sgd"},
    "sun397": {"ff": "paper_code/ff_sgd"}}
#: the protocols that run a recipes/paper*/ set (one set each: no fast-protocol scale)
PAPER_PROTOCOLS = (Protocol.paper.value, Protocol.paper_code.value)


def recipe_set(protocol: str, scale: str, target_name: str | None = None) -> dict[str, str]:
    """The recipes a protocol runs: ``fast`` → :data:`RECIPE_SETS` [scale]; ``paper`` →
    :data:`PAPER_RECIPES` with Tab. A1's per-target LP/FF (``target_name`` = the target
    manifest's name, e.g. ``cifar10``); ``paper-code`` → :data:`PAPER_CODE_RECIPES` with the
    released per-target LP/FF (a target the authors did not release, e.g. the embedded data's:
    the majority FF recipe, Adam lr 1e-4)."""
    if Protocol.check(protocol, "protocol") == Protocol.fast:
        if scale not in RECIPE_SETS:
            raise DP4TLError(f"recipes= must be one of {', '.join(RECIPE_SETS)}")
        return dict(RECIPE_SETS[scale])
    name = str(target_name or "").lower()
    if protocol == "paper-code":
        return {**PAPER_CODE_RECIPES, **PAPER_CODE_TARGET_RECIPES.get(name, {})}
    return {**PAPER_RECIPES, **PAPER_TARGET_RECIPES.get(name, {})}


PLURAL = UNIT_PLURAL  # unit → plural (kept for older imports)


@dataclass
class PipelineConfig:
    ratio: float = 0.6
    source: str = "synth:tiny"  # a built dataset dir, or a `dp4tl build` SOURCE
    target: str = ""  # a built dir, a `dp4tl build` SOURCE, or a synth target name ('' = first)
    method: str = "lm"
    protocol: str = "fast"  # fast (today's recipes: tiny | bench | full) | paper (recipes/paper/)
    recipes: str = ""  # fast protocol: tiny | bench | full ('' = from the data's manifest)
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
    scorer_options: tuple[str, ...] = field(default_factory=tuple)  # NAME=VALUE (--opt)
    budget: str = "units"  # prune: units (ratio of classes/clusters) | samples (kept fraction)
    overrides: tuple[str, ...] = field(default_factory=tuple)  # for the pretraining recipe
    surrogate_overrides: tuple[str, ...] = field(default_factory=tuple)
    finetune_overrides: tuple[str, ...] = field(default_factory=tuple)  # for the LP and FF recipes
    seeds: tuple[int, ...] = ()  # pretrain + finetune per seed (train.seed); () = (0,)
    surrogate_weights: str = ""  # a torchvision/timm state dict: the surrogate, not trained
    source_weights: str = ""  # a state dict: the source model LP/FF start from (ratio 0 only)
    split: str = "auto"  # targets the pipeline builds: auto (CoOp JSON if beside the data) | coop | official
    order: str = "ordered"  # ordered: keep the top-scored units | reversed: the lowest (Fig. A3)
    targets: tuple[str, ...] = ()  # several targets (Fig. A5): one combined selection, LP/FF on each
    target_weights: tuple[float, ...] = ()  # one per target in `targets` ('' = equal weights)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")[:60]


def _ensure_built(source: str, data_root: Path, log: Callable[[str], None],
                  split: str = "auto") -> Path:
    """A built dataset dir for ``source`` (a dir with a manifest, or a SOURCE to build)."""
    p = Path(source).expanduser()
    if (p / MANIFEST_NAME).exists():
        return p
    if p.exists() and p.is_dir() and not (":" in source or source.startswith("synth")):
        raise DP4TLError(f"{p} is not a built dataset (no {MANIFEST_NAME}); build it with "
                         f"`dp4tl build LAYOUT:{p} --out DIR` and pass DIR")
    from beton_builders.sources import default_max_side, resolve_source, split_note
    from beton_builders.writer import BuildOptions, build_dataset

    specs = resolve_source(source, split=split)
    # a CoOp-split build gets its own folder: an official-split build made before CoOp became the
    # default stays valid where it is
    coop = any(str(sp.extra.get("split", "")).startswith("coop") for sp in specs.values())
    out = data_root / (_slug(source) + ("-coop" if coop else ""))
    # Pipelines sharing a data root wait for each other here (a lone `dp4tl build` of the same
    # folder is still refused by the build's own lock): the second one finds the data built.
    with contextlib.ExitStack() as lock:
        try:
            lock.enter_context(directory_lock(data_root / f".{out.name}.pipeline.lock", f"data {out}",
                                              wait=True, on_wait=lambda m: log(f"[data] {m}")))
        except OSError as e:  # a read-only data root: nobody builds there; a finished build is used
            if not is_unwritable(e):
                raise
        for sub, spec in specs.items():
            if split_note(spec):
                log(f"[data] {source}: {split_note(spec)}")
            summary = build_dataset(spec, out / sub if sub else out,
                                    BuildOptions(max_side=default_max_side(spec)), source=source,
                                    remedy=f"delete {out} to rebuild it there, or pass another --data-root")
            if not summary.skipped:
                log(f"[data] built {out / sub if sub else out}: " + "; ".join(summary.lines()))
            for line in summary.warnings:
                log(f"[data] warning: {line}")
    return out


def _resolve_data(cfg: PipelineConfig, log) -> tuple[Path, Path]:
    root = _ensure_built(cfg.source, cfg.data_root, log)
    if (root / "source" / MANIFEST_NAME).exists():  # synth: source + targets/<name>
        targets = sorted(p.parent.name for p in (root / "targets").glob(f"*/{MANIFEST_NAME}"))
        check_synth_target(root, cfg.target, MANIFEST_NAME)
        if cfg.target and (root / "targets" / cfg.target / MANIFEST_NAME).exists():
            return root / "source", root / "targets" / cfg.target
        if not cfg.target:
            if not targets:
                raise DP4TLError(f"{root} has no targets/*; pass target=")
            return root / "source", root / "targets" / targets[0]
        return root / "source", _ensure_built(cfg.target, cfg.data_root, log, cfg.split)
    if not cfg.target:
        raise DP4TLError("target= is required with a real source (a built target dir or "
                         "LAYOUT:PATH such as flowers102:/data/flowers-102)")
    return root, _ensure_built(cfg.target, cfg.data_root, log, cfg.split)


def recipe_scale(manifest) -> str:
    """``tiny`` for the embedded generated data (its manifest says ``extra.generator = synth``,
    however it was named or where it was built), ``bench`` for its benchmark preset
    (``synth:bench``), ``full`` for real data."""
    extra = manifest.contract.extra
    if extra.get("generator") != "synth":
        return "full"
    return "bench" if (extra.get("synth_config") or {}).get("preset") in ("bench", "hard") else "tiny"


def _check_config(cfg: PipelineConfig, seeds: tuple[int, ...]) -> None:
    """Checks of the config alone (issue 21: these failed after surrogate, score and prune)."""
    negative = [s for s in seeds if s < 0]
    if negative:  # (train.seed >= 0: a recipe check that would fail only at pretraining)
        raise DP4TLError(f"--seeds: {negative[0]} is negative; seeds are integers >= 0")
    if cfg.seed < 0:
        raise DP4TLError(f"--seed must be >= 0 (the scorer's seed, e.g. random's draw), got {cfg.seed}")
    # output roots: a file in the way is refused here, not after the data are built; a
    # read-only data root is fine when it already holds the builds (_ensure_built reuses them)
    check_out_dir(cfg.runs_root, "--runs-root")
    check_out_dir(cfg.data_root, "--data-root", must_write=False)


def _check_target_splits(tgt, mode: str, recipe_name: str, recipe) -> None:
    """The splits a finetuning recipe reads (``data.train_split``/``data.test_split``) exist in
    the target: else the run fails at finetuning, after surrogate, score, prune and pretraining."""
    for key in ("train_split", "test_split"):
        split = getattr(recipe.data, key)
        if split not in tgt.split_names:
            raise DP4TLError(f"target {tgt.root} has no {split!r} split (it has: "
                             f"{', '.join(tgt.split_names)}), which the {mode} recipe {recipe_name} "
                             f"reads (data.{key}); build the target with that split or set "
                             f"--set-finetune data.{key}=...")


def _check_not_the_source(src, tgt) -> None:
    if tgt.fingerprint == src.fingerprint:
        raise DP4TLError(f"--target {tgt.root} is the source dataset ({src.root}, same content "
                         "fingerprint): transfer needs another dataset as target; pass the "
                         "target's build or LAYOUT:PATH")


def _check_inputs(cfg: PipelineConfig, scorer, src, tgt, log: Callable[[str], None]) -> None:
    """Checks that need no work, before the surrogate trains."""
    if scorer.uses_k:
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
    check_ratio(cfg.ratio)
    Protocol.check(cfg.protocol, "protocol")
    if cfg.protocol in PAPER_PROTOCOLS and cfg.recipes:
        raise DP4TLError(f"recipes={cfg.recipes} picks a fast-protocol set; the {cfg.protocol} "
                         f"protocol has one set (recipes/{cfg.protocol.replace('-', '_')}/): "
                         "drop one of the two")
    if cfg.source_weights and cfg.ratio != 0:
        raise DP4TLError(f"source weights are the unpruned source model (ratio 0), but ratio is "
                         f"{cfg.ratio}: a pruned run pretrains on its mask")
    for what, w in (("surrogate", cfg.surrogate_weights), ("source", cfg.source_weights)):
        if w and not Path(w).expanduser().is_file():
            raise DP4TLError(f"{what} weights not found: {w}")
    seeds = tuple(dict.fromkeys(int(x) for x in cfg.seeds)) or (0,)
    _check_config(cfg, seeds)
    scorer = get_scorer(cfg.method)  # unknown method: one line listing the registered ones
    given_options = parse_option_pairs(cfg.scorer_options)
    options = scorer.parse_options(given_options)  # bad --opt: before any work
    Budget.check(cfg.budget, "budget")
    check_k(cfg.k)
    reverse = check_order(cfg.order)
    target_specs = target_list(cfg.target, cfg.targets)
    weights = check_weights(cfg.target_weights, len(target_specs))
    resolved = [_resolve_data(replace(cfg, target=t), log) for t in target_specs]
    source_dir, target_dirs = resolved[0][0], [d for _, d in resolved]
    target_dir = target_dirs[0]
    multi = len(target_dirs) > 1
    if multi and len({str(d.resolve()) for d in target_dirs}) < len(target_dirs):
        raise DP4TLError(f"targets {list(target_specs)} name the same dataset twice; list each "
                         "target once")
    names = display_names(target_dirs) if multi else [None]
    src, tgt = load_manifest(source_dir), load_manifest(target_dir)
    tgts = [load_manifest(d) for d in target_dirs]
    scale = cfg.recipes or recipe_scale(src)
    if not cfg.recipes and cfg.protocol == "fast":
        log(f"[recipes] {scale} recipes ({'real' if scale == 'full' else 'embedded synthetic'} "
            f"data per {source_dir / MANIFEST_NAME}; recipes= to choose)")
    for t in tgts:
        _check_not_the_source(src, t)
        _check_inputs(cfg, scorer, src, t, log)
    rs = recipe_set(cfg.protocol, scale, tgt.name)
    rs["surrogate"] = cfg.surrogate_recipe or rs["surrogate"]
    rs["pretrain"] = cfg.recipe or rs["pretrain"]
    rs["lp"] = cfg.lp_recipe or rs["lp"]
    rs["ff"] = cfg.ff_recipe or rs["ff"]
    pre_overrides = list(cfg.overrides) + ([f"model.arch={cfg.arch}"] if cfg.arch else [])

    from ..training.finetune import finetune
    from ..training.recipe import load_recipe
    from ..training.trainer import train

    ssl_source = cfg.protocol in PAPER_PROTOCOLS and not cfg.lp_recipe and \
        load_recipe(rs["pretrain"], pre_overrides).ssl.method != "none"
    if ssl_source:
        rs["lp"] = PAPER_SSL_LP  # self-supervised source: MoCo's linear classification protocol

    # Load every recipe once, first (bad recipes fail before any work), and hand the loaded
    # objects to the stages: stage keys hash the recipes' *contents*, and what trains is exactly
    # what the key records, even if a recipe file is edited while the pipeline runs.
    loaded = {name: load_recipe(rs[name], {"pretrain": pre_overrides,
                                           "surrogate": list(cfg.surrogate_overrides)}.get(
                                               name, list(cfg.finetune_overrides)))
              for name in ("surrogate", "pretrain", *cfg.finetune)}
    fp = {name: r.fingerprint() for name, r in loaded.items()}
    # per target: its LP/FF recipes (the paper protocol's differ per target, Tab. A1)
    ft_recipes: list[dict[str, tuple[str, Any]]] = []
    for t in tgts:
        rt = recipe_set(cfg.protocol, scale, t.name)
        rt = {m: (cfg.lp_recipe if m == "lp" else cfg.ff_recipe) or
              (PAPER_SSL_LP if m == "lp" and ssl_source else rt[m]) for m in cfg.finetune}
        ft_recipes.append({m: (name, loaded[m] if name == rs[m] else
                               load_recipe(name, list(cfg.finetune_overrides)))
                           for m, name in rt.items()})
        for m, (name, rec) in ft_recipes[-1].items():
            _check_target_splits(t, m, name, rec)
    sur_recipe = loaded["surrogate"]
    # the protocol's scorer options (surrogate recipe scoring.scorer_options), under --opt
    recipe_options = recipe_scorer_options(sur_recipe.scoring.scorer_options, cfg.method)
    if recipe_options:
        options = scorer.parse_options({**recipe_options, **given_options})
        log(f"[score] {rs['surrogate']} sets {cfg.method} options "
            f"{', '.join(f'{k}={v}' for k, v in recipe_options.items())} (--opt overrides them)")
    for rec in ft_recipes:
        for r_name, r in rec.values():
            _check_start_from(r_name, r, rs["pretrain"], loaded["pretrain"], cfg.source_weights)
    if sur_recipe.ssl.method != "none" and scorer.needs_class_head:
        raise self_supervised_refusal(scorer, f"the surrogate recipe {rs['surrogate']} is "
                                              f"self-supervised ({sur_recipe.ssl.method})")
    root, common = cfg.runs_root, {"fmt": cfg.fmt}
    results: dict[str, Any] = {"config": {**asdict(cfg), "data_root": str(cfg.data_root),
                                          "runs_root": str(cfg.runs_root)},
                               "source": str(source_dir), "target": str(target_dir),
                               "protocol": cfg.protocol, "recipes": rs, "stages": {}}
    if multi:
        results["targets"] = {n: str(d) for n, d in zip(names, target_dirs)}
        results["target_weights"] = list(weights) or [1.0] * len(names)

    needs_surrogate = scorer.needs_surrogate and not cfg.source_weights
    sur_overrides = list(cfg.surrogate_overrides)
    # Every key holds the content fingerprints of its inputs (source, target, mask, recipes),
    # never names: the same inputs under another path reuse a stage, other data never does.
    if cfg.surrogate_weights:
        from ..training.weights import import_weights

        w = Path(cfg.surrogate_weights).expanduser()
        sur = stage(root, "surrogate", {"weights_sha256": file_sha256(w), "recipe": rs["surrogate"],
                                        "recipe_fingerprint": fp["surrogate"],
                                        "source": src.fingerprint})
        if needs_surrogate:
            results["stages"]["surrogate"] = run_stage(sur, lambda d: import_weights(
                w, d / "checkpoint.pt", recipe=sur_recipe, classes=src.classes,
                source=str(source_dir), dataset_fingerprint=src.fingerprint), log)
    else:
        sur = stage(root, "surrogate", {"recipe": rs["surrogate"], "overrides": sur_overrides,
                                        "recipe_fingerprint": fp["surrogate"],
                                        "source": src.fingerprint, **common})
        if needs_surrogate:
            results["stages"]["surrogate"] = run_stage(sur, lambda d: train(
                loaded["surrogate"], source_dir, out_dir=d, fmt=cfg.fmt, device=cfg.device), log)
    # how the surrogate reads the target (recipe [scoring]); in the key only when not the default
    sc_in = sur_recipe.scoring
    target_input = ({"target_input": [sc_in.target_resolution, sc_in.target_crop]}
                    if (sc_in.target_resolution, sc_in.target_crop) != (0, "center") else {})
    # options and the training recipe enter the key only where they apply (old keys stay valid)
    extra_key: dict[str, Any] = {}
    if given_options or recipe_options:
        extra_key["options"] = {k: options[k] for k in sorted({*given_options, *recipe_options})}
    if scorer.trains:
        extra_key.update({"train_recipe": fp["surrogate"], "source": src.fingerprint})
    device = "cuda" if cfg.device == "auto" and _cuda() else ("cpu" if cfg.device == "auto" else cfg.device)
    if cfg.source_weights:
        pt_dirs = _brought_source(cfg, root, loaded["pretrain"], rs, src, source_dir, results, log)
    else:
        sc = stage(root, "score", {"method": cfg.method,
                                   "surrogate": sur.key if needs_surrogate else None,
                                   "source": src.fingerprint,
                                   # in-domain methods (RANDOM, the baselines) never read
                                   # the target: one score stage serves every target
                                   **(score_key([t.fingerprint for t in tgts], weights)
                                      if scorer.needs_target else {}),
                                   # only the settings the scorer reads (LM: neither k nor seed)
                                   **scorer.key_settings(k=cfg.k, seed=cfg.seed), **common,
                                   **target_input, **extra_key})
        results["stages"]["score"] = run_stage(sc, lambda d: score(
            cfg.method, source_dir=source_dir, target_dir=target_dirs if multi else target_dir,
            out_dir=d, target_weights=weights if multi else (),
            checkpoint=sur.output("checkpoint.pt") if needs_surrogate else None,
            trajectory=_trajectory(cfg.method, sur, sur_recipe.train.keep_epochs, log)
            if TRAJECTORY in scorer.needs and not cfg.surrogate_weights else (), fmt=cfg.fmt,
            device=device, k=cfg.k, seed=cfg.seed,
            target_resolution=sc_in.target_resolution, target_crop=sc_in.target_crop,
            options=options, train_recipe=rs["surrogate"] if scorer.trains else None,
            train_overrides=sur_overrides if scorer.trains else ()), log)
        pr = stage(root, "prune", {"score": sc.key, "ratio": cfg.ratio, "source": src.fingerprint,
                                   **({"budget": cfg.budget} if cfg.budget != "units" else {}),
                                   **({"order": cfg.order} if reverse else {})})
        results["stages"]["prune"] = run_stage(pr, lambda d: prune(sc.dir, source_dir, cfg.ratio, d,
                                                                   budget=cfg.budget,
                                                                   reverse=reverse), log)
        # synth data knows the answer: how right the selection is (None on real data)
        truth = selection_truth(source_dir, target_dirs, sc.dir, pr.dir / "train.npy")
        if truth is not None:
            results["ground_truth"] = truth
        if cfg.ratio > 0:
            results["selection"] = {"source": str(source_dir), "target": str(target_dir),
                                    "mask": str(pr.dir / "train.npy"), "scores": str(sc.dir)}
        pt_dirs = {}
        for i, seed in enumerate(seeds):
            seed_over = [f"train.seed={seed}"] if seed else []
            over = pre_overrides + seed_over
            name = "pretrain" if i == 0 else f"pretrain-seed{seed}"
            pre = loaded["pretrain"] if not seed_over else load_recipe(rs["pretrain"], over)
            # what is trained, not how the mask was chosen: the same mask (the 0 % reference,
            # RANDOM, an in-domain baseline — for any target) is one pretraining
            pt = stage(root, "pretrain", {"recipe": rs["pretrain"], "overrides": over,
                                          "recipe_fingerprint": pre.fingerprint(),
                                          "source": src.fingerprint,
                                          "mask": file_sha256(pr.output("train.npy")), **common})
            results["stages"][name] = run_stage(pt, lambda d, r=pre: train(
                r, source_dir, mask=load_mask(pr.output("train.npy")), out_dir=d, fmt=cfg.fmt,
                device=cfg.device), log)
            pt_dirs[seed] = pt
    for i, seed in enumerate(seeds):
        pt = pt_dirs[seed]
        seed_over = [f"train.seed={seed}"] if seed else []
        ft_overrides = list(cfg.finetune_overrides) + seed_over
        for t, t_dir, t_name, t_rec in zip(tgts, target_dirs, names, ft_recipes):
            for mode in cfg.finetune:  # overrides enter the key only when given (old keys stay)
                r_name, r_loaded = t_rec[mode]
                ft_recipe = r_loaded if not seed_over else load_recipe(r_name, ft_overrides)
                ft = stage(root, f"finetune-{mode}", {
                    "recipe": r_name, "pretrain": pt.key,
                    "recipe_fingerprint": ft_recipe.fingerprint(), "target": t.fingerprint,
                    **common, **({"overrides": ft_overrides} if ft_overrides else {})})
                name = (f"finetune-{mode}" if i == 0 else f"finetune-{mode}-seed{seed}") \
                    + stage_suffix(t_name)
                results["stages"][name] = run_stage(ft, lambda d, m=mode, r=ft_recipe, p=pt,
                                                    td=t_dir: finetune(
                    r, _start_checkpoint(p, r, bool(cfg.source_weights)), td, d, mode=m,
                    fmt=cfg.fmt,
                    device=cfg.device), log)
    results["seeds"] = list(seeds)
    if multi:  # one accuracy summary per target (Fig. A5); no single-target summary
        results["summary"] = {}
        results["per_target"] = {n: summarize_seeds(results["stages"], cfg.finetune, seeds,
                                                     suffix=stage_suffix(n)) for n in names}
    else:
        results["summary"] = summarize_seeds(results["stages"], cfg.finetune, seeds)
    first = pt_dirs[seeds[0]]
    report_dir = root / (f"report-{first.key}" + ("" if len(seeds) == 1 else
                                                  "-seeds" + "_".join(map(str, seeds)))
                         + ("" if not multi else "-targets" + key_of(
                             {"targets": [t.fingerprint for t in tgts], "weights": list(weights)})))
    if results.get("selection") and not (report_dir / GALLERY).exists():
        sel = results["selection"]  # the paper's Fig. A7: what was kept, beside the target
        selection_gallery(sel["source"], sel["target"], sel["mask"], report_dir / GALLERY,
                          scores_dir=sel["scores"], title=f"{_label(cfg.method)} at ratio {cfg.ratio}")
    write_report(results, report_dir)
    results["report"] = str(report_dir / "report.md")
    log(f"[report] {results['report']}")
    return results


def recipe_scorer_options(entries: list[str], method: str) -> dict[str, str]:
    """``["grand.grad=full", "moderate.band=class"]`` (a recipe's scoring.scorer_options) →
    the options of ``method``: ``{"grad": "full"}`` for grand."""
    out: dict[str, str] = {}
    for text in entries:
        name, _, value = text.partition("=")
        m, _, key = name.partition(".")
        if m.strip() == method:
            out[key.strip()] = value.strip()
    return out


def _check_start_from(name: str, recipe, pre_name: str, pre_recipe, brought: str) -> None:
    """finetune.start_from = "best" needs a pretraining that keeps best.pt (train.keep_best);
    checked before any work. Brought source weights are the model itself: nothing to choose."""
    if recipe.finetune.start_from == "best" and not brought and not pre_recipe.train.keep_best:
        raise DP4TLError(f"finetune recipe {name}: finetune.start_from = \"best\", but the "
                         f"pretraining recipe {pre_name} does not keep it: set train.keep_best = "
                         "true there (--set train.keep_best=true) or finetune.start_from = \"final\"")


def _start_checkpoint(pretrain, recipe, brought: bool) -> Path:
    """The checkpoint of the ``pretrain`` stage finetuning starts from (finetune.start_from):
    the final epoch's, or the best pruned-val top-1's (best.pt, the authors' best.ckpt; kept
    when the pretraining recipe says train.keep_best, checked before any work)."""
    from ..training.trainer import BEST_CHECKPOINT_NAME

    best = recipe.finetune.start_from == "best" and not brought
    return pretrain.output(BEST_CHECKPOINT_NAME if best else "checkpoint.pt")


def _brought_source(cfg: PipelineConfig, root: Path, recipe, rs: dict, src, source_dir: Path,
                    results: dict, log) -> dict[int, Any]:
    """``source_weights``: import the user's source model as the (only) pretrain stage; every
    seed finetunes it (the seeds then vary the finetuning only)."""
    from ..training.weights import import_weights

    w = Path(cfg.source_weights).expanduser()
    pt = stage(root, "pretrain", {"weights_sha256": file_sha256(w), "recipe": rs["pretrain"],
                                  "recipe_fingerprint": recipe.fingerprint(),
                                  "source": src.fingerprint})
    results["stages"]["pretrain"] = run_stage(pt, lambda d: import_weights(
        w, d / "checkpoint.pt", recipe=recipe, classes=src.classes, source=str(source_dir),
        dataset_fingerprint=src.fingerprint), log)
    seeds = tuple(dict.fromkeys(int(x) for x in cfg.seeds)) or (0,)
    return {s: pt for s in seeds}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    import math

    xs = [float(x) for x in xs if x is not None]
    if not xs:
        return math.nan, math.nan
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def summarize_seeds(stages: dict[str, Any], modes, seeds, suffix: str = "") -> dict[str, Any]:
    """Per finetuning mode: final- and best-epoch target top-1 per seed and their mean ± std
    (sample std; 0 for one seed). ``suffix``: one target's results among several (``@warm``)."""
    out: dict[str, Any] = {}
    for mode in modes:
        per = []
        for i, seed in enumerate(seeds):
            r = stages.get((f"finetune-{mode}" if i == 0 else f"finetune-{mode}-seed{seed}")
                           + suffix)
            if r is None:
                continue
            final = r.get("final_test_top1", r.get("test_top1"))
            per.append({"seed": seed, "final": final, "best": r.get("best_test_top1", final),
                        "best_epoch": r.get("best_epoch")})
        if per:
            fm, fs = _mean_std([p["final"] for p in per])
            bm, bs = _mean_std([p["best"] for p in per])
            out[mode] = {"seeds": per, "final_mean": fm, "final_std": fs, "best_mean": bm,
                         "best_std": bs, "n": len(per)}
    return out


def _trajectory(method: str, sur, keep_epochs, log: Callable[[str], None]) -> tuple[Path, ...]:
    """The surrogate's kept early-training checkpoints (train.keep_epochs), in epoch order,
    for the scorers that need a trajectory (EL2N/GraNd score the earliest). One the recipe asks
    for but the stage folder lacks is an error (scoring another checkpoint under the same
    stage key would be a silently different result)."""
    from ..training.trainer import early_checkpoint_name

    if not keep_epochs:
        log(f"[score] {method}: the surrogate recipe keeps no early checkpoint "
            "(train.keep_epochs); scoring the final surrogate instead")
    return tuple(sur.output(early_checkpoint_name(e)) for e in sorted(keep_epochs))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _label(method: str) -> str:
    try:
        return get_scorer(method).label
    except DP4TLError:  # a report of a method no longer registered
        return method.upper()


def _fraction(pr: dict[str, Any]) -> str:
    """" (kept sample fraction 0.412 at ratio 0.6 of clusters)" — the sample share beside the
    unit ratio (they differ for class/cluster units of unequal sizes)."""
    f = pr.get("kept_sample_fraction")
    if f is None:
        return ""
    budget = " (budget: samples)" if pr.get("budget") == "samples" else ""
    return (f" = {f:.3f} of the train samples (ratio {pr.get('ratio')} of "
            f"{UNIT_PLURAL[pr['unit']]}{budget}; samples removed {1 - f:.3f})")


def write_report(results: dict[str, Any], out: Path) -> None:
    st = results["stages"]
    cfg = results["config"]
    pr = st.get("prune")
    title = method_title(_label(cfg["method"]), cfg.get("order", "ordered"))
    per_target = results.get("per_target") or {}
    tlines = ([f"- target: `{results['target']}`"] if not per_target else
              [f"- targets ({len(per_target)}, one selection for all, weights "
               f"{', '.join(f'{w:g}' for w in results.get('target_weights', []))}): "
               + ", ".join(f"{n} `{d}`" for n, d in results["targets"].items())])
    lines = [f"# DP4TL run: {title} at ratio {cfg['ratio']}", "",
             f"- source: `{results['source']}`", *tlines,
             f"- protocol: `{results.get('protocol', cfg.get('protocol', 'fast'))}`",
             f"- recipes: {', '.join(f'{k}=`{v}`' for k, v in results['recipes'].items())}"]
    for name, what in (("surrogate", "surrogate"), ("pretrain", "source model")):
        if st.get(name, {}).get("brought"):
            lines.append(f"- {what}: brought weights `{st[name]['weights']}` ({st[name]['arch']}, "
                         "imported, not trained)")
    if pr is not None:
        lines.append(f"- kept: {len(pr.get('kept_units', [])) or '-'} {UNIT_PLURAL[pr['unit']]}, "
                     f"{pr['train_kept']} train samples" + _fraction(pr))
    lines += truth_lines(results.get("ground_truth"))
    if (out / GALLERY).exists():
        lines += ["", f"![what was kept, beside the target (Fig. A7)]({GALLERY})"]
    lines += ["", "| stage | wall s | result |", "|---|---:|---|"]
    for name, res in st.items():
        lines.append(f"| {name} | {res.get('seconds', 0):.1f} | {describe(res)} |")
    total = sum(r.get("seconds", 0) for r in st.values())
    lines += [f"| **total** | {total:.1f} | |", ""]
    groups = ({None: results.get("summary") or {}} if not per_target else per_target)
    for group, summary in groups.items():
        if not summary:
            continue
        n = len(results.get("seeds") or [0])
        lines += [("Target" if group is None else f"Target `{group}`")
                  + f" test top-1 (%), {'mean ± std over ' + str(n) + ' seeds' if n > 1 else 'one seed'}"
                  ": final epoch and best evaluated epoch", "",
                  "| mode | final epoch | best epoch | per seed (final / best) |", "|---|---:|---:|---|"]
        for mode, sm in summary.items():
            cell = (lambda m, s_: f"{100 * m:.2f} ± {100 * s_:.2f}" if n > 1 else f"{100 * m:.2f}")
            per = ", ".join(f"s{p['seed']}: {100 * p['final']:.2f} / {100 * p['best']:.2f}"
                            for p in sm["seeds"] if p["final"] is not None and p["best"] is not None)
            lines.append(f"| {mode.upper()} | {cell(sm['final_mean'], sm['final_std'])} | "
                         f"{cell(sm['best_mean'], sm['best_std'])} | {per} |")
        lines.append("")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_json(out / "results.json", json.loads(json.dumps(results, default=str)))
