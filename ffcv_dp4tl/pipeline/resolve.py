"""The pipeline's second step: from a validated config to what the stages need — the built
source and target datasets (built here when given as a SOURCE), their manifests, and every
recipe, each read **once** (the per-seed pretraining/finetuning recipes are the loaded object
with another ``train.seed`` and ``data.seed``: :func:`seed_overrides`), the LP/FF choice of each target is worked out here and nowhere
else). Checks that need the data (``k`` vs the source's samples, a target with fewer train
images than classes) run here, before the surrogate trains.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..contracts import check_k_fits, default_k
from ..data.manifest import MANIFEST_NAME, load_manifest
from ..errors import DataError, DP4TLError
from ..fsutil import BAD_JSON, is_unwritable
from ..locks import directory_lock
from ..progress import INHERIT, Log, say
from .config import Checked, PipelineConfig, pretrain_overrides
from .recipes import (PAPER_PROTOCOLS, PAPER_SSL_LP, recipe_scale, recipe_scorer_options,
                      recipe_set)
from .score import self_supervised_refusal
from .targets import (built_targets, check_distinct_datasets, check_synth_target, display_names,
                      synth_root)


@dataclass(frozen=True)
class Resolved:
    """The data and recipes of one run, each worked out once."""

    source_dir: Path
    target_dirs: tuple[Path, ...]
    target_names: tuple[str | None, ...]  # display names with several targets, else (None,)
    src: Any  # the source Manifest
    tgts: tuple[Any, ...]  # one Manifest per target
    recipe_names: dict[str, str]  # surrogate, pretrain, lp, ff (the first target's LP/FF)
    surrogate: Any  # the loaded Recipe objects
    pretrain: Any
    pretrain_overrides: tuple[str, ...]  # what `pretrain` was loaded with (--set, --arch)
    # per target: mode → (recipe name, loaded Recipe without a seed override)
    finetune: tuple[dict[str, tuple[str, Any]], ...]
    options: dict[str, Any]  # the scorer's options: --opt over the surrogate recipe's
    recipe_options: dict[str, str]  # those the surrogate recipe sets (scoring.scorer_options)
    k: int  # FM's K: the config's, or contracts.default_k for this source (the stages read this)

    @property
    def multi(self) -> bool:
        return len(self.target_dirs) > 1

    @property
    def target_dir(self) -> Path:
        return self.target_dirs[0]


def seed_overrides(seed: int) -> list[str]:
    """What trial seed ``seed`` sets in the pretraining and finetuning recipes: the model's
    initialisation (``train.seed``) **and** the data order and augmentation draws
    (``data.seed``), so seeds are independent trials, as the paper's repeated runs are. Seed 0
    keeps the recipes' own values (its stages keep their keys). The one rule of the pipeline's
    ``--seeds``, ``bench embedded`` and ``bench cost-table``; until 2026-12-04 a seed set
    ``train.seed`` only, so every seed saw the same data order."""
    return [f"train.seed={seed}", f"data.seed={seed}"] if seed else []


def with_seed(recipe: Any, seed: int) -> Any:
    """``recipe`` with :func:`seed_overrides` applied (the same object as loading it with those
    overrides: same values, same fingerprint), without reading its file again."""
    if not seed:
        return recipe
    return replace(recipe, train=dataclasses.replace(recipe.train, seed=seed),
                   data=dataclasses.replace(recipe.data, seed=seed))


def _slug(text: str) -> str:
    """A folder name for a SOURCE spec: readable (a long spec, e.g. synth with many overrides,
    keeps 48 characters plus a hash of the whole spec). Two specs can share one (every
    character but letters, digits and ``-_.`` becomes ``-``): :func:`ensure_built` then builds
    the second beside the first (:func:`_built_from`)."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in text).strip("-")
    if len(slug) <= 60:
        return slug
    return f"{slug[:48]}-{hashlib.sha256(text.encode()).hexdigest()[:11]}"


def _built_from(out: Path, specs: dict) -> str | None:
    """The SOURCE spec the build in ``out`` (or its first sub-build: a synth root's
    ``source/``) was made from, as its settings record it; None when nothing is built there.
    :func:`_slug` keeps names readable, so two specs can share one (``folder:/d/t/x`` and
    ``folder:/d/t-x``): the second then builds beside it, never over it."""
    from beton_builders.out_dir import settings_file

    for sub in specs:
        try:
            recorded = json.loads(settings_file(out / sub if sub else out).read_text())
        except (OSError, *BAD_JSON):
            continue
        if isinstance(recorded, dict) and isinstance(recorded.get("source"), str):
            return recorded["source"]
    return None


def _same_input(a: str, b: str) -> bool:
    """Two SOURCE specs that read the same input: equal, or one ``LAYOUT:PATH`` of one folder
    however spelled (a trailing slash, ``~``, a link). A trailing slash made a second full
    build of the same images beside the first (review). (A relative PATH is read against the
    working directory: see :func:`_build_of_same_input` for builds that recorded one.)"""
    from beton_builders.sources import layout_path

    if a == b:
        return True
    la, lb = layout_path(a), layout_path(b)
    if la is None or lb is None or la[0] != lb[0]:
        return False
    return (os.path.realpath(os.path.expanduser(la[1]))
            == os.path.realpath(os.path.expanduser(lb[1])))


def _build_of_same_input(data_root: Path, specs: dict, source: str, skip: Path,
                         split: str) -> tuple[Path, str, dict] | None:
    """(folder, spec, its resolved specs) of a build in ``data_root`` (finished or interrupted,
    other than ``skip``) of the same input as ``source`` spelled otherwise: a relative and an
    absolute path to one folder have two readable names (:func:`_slug`), and the second
    spelling built a second full copy beside the first (review). The build must be the one
    its own spelling makes today (same listing, options and split: a CoOp build is not an
    official-split one)."""
    from beton_builders.input_stats import stale_inputs
    from beton_builders.out_dir import BUILD_DIR, settings_file
    from beton_builders.sources import default_max_side, resolve_source
    from beton_builders.writer import BuildOptions, build_settings

    try:
        folders = sorted(d for d in data_root.iterdir() if d.is_dir() and d != skip)
    except OSError:  # (no data root yet)
        return None
    for d in folders:
        other = _built_from(d, specs)
        if other is None or other == source or not _same_input(other, source):
            continue
        try:
            recorded = {sub: json.loads(settings_file(d / sub if sub else d).read_text())
                        for sub in specs}
            theirs = resolve_source(other, split=split)
        except (OSError, *BAD_JSON, DataError):
            continue
        if theirs.keys() == specs.keys() and all(
                recorded[sub] == build_settings(sp, BuildOptions(max_side=default_max_side(sp)),
                                                other) for sub, sp in theirs.items()) and (
                not _relative_layout(other) or not any(
                    stale_inputs(sp, (d / sub if sub else d) / BUILD_DIR, "")
                    for sub, sp in theirs.items())):
            return d, other, theirs
    return None


def _relative_layout(spec: str) -> bool:
    """``spec`` is a ``LAYOUT:PATH`` whose PATH is relative: recorded by a build made before
    the pipeline made PATH absolute (config.absolute_paths), it names the input of whichever
    folder that run was started in. Read against today's working directory, a project with the
    same file names under the same relative path took another project's build for its own
    (review): such a build is taken only where its inputs' sizes and times still match
    (:func:`~beton_builders.input_stats.stale_inputs`); elsewhere the data is built again."""
    from beton_builders.sources import layout_path

    layout = layout_path(spec)
    return layout is not None and not os.path.isabs(os.path.expanduser(layout[1]))


def _read_from(hold: contextlib.ExitStack | None, data_dir: Path,
               log: Callable[[str], None]) -> None:
    """Hold the readers' shared lock of ``data_dir`` in ``hold`` (the pipeline's run), waiting
    for a build under way (:func:`beton_builders.out_dir.reading`)."""
    from beton_builders.out_dir import reading

    if hold is not None:
        hold.enter_context(reading(data_dir, wait=True, on_wait=lambda m: log(f"[data] {m}")))


def as_log(log: Log | None) -> Log:
    """A ``log`` argument of a library entry point as the function its lines go to, with the
    meaning ``train`` and ``finetune`` give it: a function of one line; ``None``: nowhere;
    :data:`~ffcv_dp4tl.progress.INHERIT`: where the caller's lines go already (stdout at the
    top, the ``log`` of the ``run_pipeline`` it runs in)."""
    if log is None:
        return _nowhere
    if log is INHERIT:
        return say
    return log


def _nowhere(line: str) -> None:
    """A ``log`` that says nothing (``log=None``)."""


def ensure_built(source: str, data_root: Path, log: Log | None = INHERIT,
                 split: str = "auto", option: str = "--data", progress: bool = True,
                 hold: contextlib.ExitStack | None = None) -> Path:
    """A built dataset dir for ``source`` (a dir with a manifest, or a SOURCE to build);
    ``option`` (--data or --target) is the option a refusal of ``source`` names; ``progress``:
    the build's bars. ``hold``: where the readers' shared lock of each dataset it returns is
    kept (the pipeline's run), so no ``--overwrite`` changes the data while the run reads it;
    taken before the pipeline's build lock is let go (nothing rebuilds the data in between).
    ``log``: where its lines go (what it built or reused): a function of one line, ``None``
    for nowhere; by default where the caller's go (:func:`as_log`)."""
    log = as_log(log)
    p = Path(source).expanduser()
    if (p / MANIFEST_NAME).exists():
        _read_from(hold, p, log)
        return p
    if p.exists() and p.is_dir() and not (":" in source or source.startswith("synth")):
        if (p / "source" / MANIFEST_NAME).exists():  # a synth build: source/ + targets/<name>/
            targets = built_targets(p)
            raise DP4TLError(f"{p} holds a synth build (source/ and targets/): pass --data "
                             f"{p / 'source'} and --target {p / 'targets'}/NAME"
                             + (f" (NAME: {', '.join(targets)})" if targets else ""))
        raise DP4TLError(f"{option} {p} is not a built dataset (no {MANIFEST_NAME}); build it "
                         f"with `dp4tl build LAYOUT:{p} --out DIR` and pass DIR")
    from beton_builders.sources import default_max_side, resolve_source, split_note
    from beton_builders.writer import BuildOptions, build_dataset

    try:
        specs = resolve_source(source, split=split)
    except DataError as e:  # (its messages say SOURCE: say which option held it)
        raise DataError(f"{option}: {e}") from None
    # a CoOp-split build gets its own folder: an official-split build made before CoOp became the
    # default stays valid where it is
    coop = any(str(sp.extra.get("split", "")).startswith("coop") for sp in specs.values())
    out = data_root / (_slug(source) + ("-coop" if coop else ""))
    # Pipelines sharing a data root wait for each other here, and for a lone `dp4tl build` of
    # the same folder in build_dataset (wait=True; a job array's prebuild): then find it built.
    # The lock is the readable name's, taken before its build is read: two pipelines started
    # together with two specs of one name see each other's build (a spec built beside it, in
    # a hashed folder, holds that lock while it builds too).
    with contextlib.ExitStack() as lock:
        try:
            lock.enter_context(directory_lock(data_root / f".{out.name}.pipeline.lock",
                                              f"the data build {out}",
                                              wait=True, on_wait=lambda m: log(f"[data] {m}")))
        except OSError as e:  # a read-only data root: nobody builds there; a finished build is used
            if not is_unwritable(e):
                raise
        other = _built_from(out, specs)
        same = other is not None and _same_input(other, source)
        elsewhere = None if same else _build_of_same_input(data_root, specs, source, out, split)
        if same:
            if other != source:  # the same folder spelled otherwise (folder:x/, a link): its build,
                source, specs = other, resolve_source(other, split=split)  # listed as it was
        elif elsewhere is not None:  # spelled with another readable name (relative, absolute)
            log(f"[data] {source!r} reads the input of {elsewhere[1]!r}: its build in "
                f"{elsewhere[0]} is used")
            out, source, specs = elsewhere
            # its builder's lock (its readable name's): a pipeline still building it is waited
            # for, not refused by the build's own lock (review)
            theirs = data_root / f".{_slug(source)}{'-coop' if coop else ''}.pipeline.lock"
            with contextlib.suppress(OSError):  # (a read-only data root: nobody builds there)
                lock.enter_context(directory_lock(theirs, f"the data build {out}", wait=True,
                                                  on_wait=lambda m: log(f"[data] {m}")))
        elif other is not None:  # another input with the same folder name (t/x, t-x)
            hashed = out.with_name(f"{out.name}-{hashlib.sha256(source.encode()).hexdigest()[:11]}")
            log(f"[data] {out} holds the build of {other!r}: {source!r} builds in {hashed}")
            out = hashed
        reused = []
        for sub, spec in specs.items():
            if split_note(spec):
                log(f"[data] {source}: {split_note(spec)}")
            summary = build_dataset(spec, out / sub if sub else out,
                                    BuildOptions(max_side=default_max_side(spec), progress=progress),
                                    source=source,
                                    remedy=f"delete {out} to rebuild it there, or pass another --data-root",
                                    option="--data-root", wait=True,
                                    on_wait=lambda m: log(f"[data] {m}"), hold=hold)
            if not summary.skipped:
                log(f"[data] built {out / sub if sub else out}: " + "; ".join(summary.lines()))
            else:
                reused.append(sub)
            for line in summary.warnings:
                log(f"[data] warning: {line}")
        if reused and len(reused) == len(specs):  # (a rerun said nothing of its data: review)
            log(f"[data] {source}: reusing its build in {out}")
        elif reused:
            log(f"[data] {source}: reusing {', '.join(map(str, reused))} in {out}")
    return out


def resolve_data(cfg: PipelineConfig, log,
                 hold: contextlib.ExitStack | None = None) -> tuple[Path, Path]:
    """The (source dir, target dir) of ``cfg`` (its one ``target``), built when missing; their
    readers' locks kept in ``hold`` (:func:`ensure_built`)."""
    root = ensure_built(cfg.source, cfg.data_root, log, progress=cfg.progress, hold=hold)
    synth = synth_root(root)  # (a synth root's source: its targets are found by name too)
    if synth is None and root.parent.name == "targets" and (
            root.parent.parent / "source" / MANIFEST_NAME).exists():
        raise DP4TLError(f"--data {root} is a target of the built data {root.parent.parent}, "
                         f"not a source; pass --data {root.parent.parent} (its source and "
                         "targets) and name the target with --target")
    if synth is not None:  # synth: source + targets/<name>
        root = synth
        targets = built_targets(root)
        check_synth_target(root, cfg.target)
        if cfg.target and (root / "targets" / cfg.target / MANIFEST_NAME).exists():
            _read_from(hold, root / "targets" / cfg.target, log)  # (no ensure_built: held here)
            return root / "source", root / "targets" / cfg.target
        if not cfg.target:
            if not targets:
                raise DP4TLError(f"{root} has no targets/*; pass --target")
            _read_from(hold, root / "targets" / targets[0], log)
            return root / "source", root / "targets" / targets[0]
        return root / "source", ensure_built(cfg.target, cfg.data_root, log, cfg.split,
                                             "--target", cfg.progress, hold)
    if not cfg.target:
        raise DP4TLError("--target is required with a real source (a built target dir or "
                         "LAYOUT:PATH such as flowers102:/data/flowers-102)")
    return root, ensure_built(cfg.target, cfg.data_root, log, cfg.split, "--target",
                              cfg.progress, hold)


def check_source(cfg: PipelineConfig, scorer, src, log: Callable[[str], None]) -> None:
    """Checks of the built source that need no work, before the surrogate trains (once per
    run, not per target: a several-target run said its warning once per target)."""
    if scorer.uses_k:
        check_k_fits(cfg.k, src.split("train").num_samples)
    if note := _check_kept_units(cfg, scorer, src):
        log(f"[warning] {note}")
        warnings.warn(note, UserWarning, stacklevel=3)


def check_data(cfg: PipelineConfig, scorer, src, tgt, log: Callable[[str], None]) -> None:
    """Checks of one built target that need no work, before the surrogate trains."""
    from ..data.manifest import check_target_classes

    check_target_classes(tgt)
    if "train" in tgt.split_names:
        n = tgt.split("train").num_samples
        if n < tgt.num_classes:
            msg = (f"[warning] the target {tgt.root} has {n} train images for {tgt.num_classes} "
                   "classes: some classes have no example, finetuning cannot learn them")
            log(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)


def _check_kept_units(cfg: PipelineConfig, scorer, src) -> str | None:
    """The ratio keeps at least one of the method's units (the prune stage's rule,
    :func:`~..scoring.ranking.keep_count`): ``--ratio 0.99`` of 32 classes trained the
    surrogate and scored before prune refused it (review). ``budget=samples`` prunes to a
    sample fraction instead: the prune stage checks that.

    Returns a warning when the ratio rounds to keeping *every* unit (``--ratio 0.04`` of 10
    classes, any ratio below 0.5 of a one-class source): nothing is pruned, so the run is the
    unpruned pretraining behind a surrogate and scores (an audit: a one-class source ran so
    without a word)."""
    from ..scoring.ranking import ScoringError, keep_count
    from ..scoring.registry import UNIT_PLURAL

    if not cfg.ratio or cfg.budget == "samples":
        return None
    n = {"class": src.num_classes, "cluster": cfg.k,
         "sample": src.split("train").num_samples}.get(scorer.unit)
    if not n:
        return None
    what = UNIT_PLURAL[scorer.unit]
    try:
        m = keep_count(n, 1.0 - cfg.ratio, what)
    except ScoringError as e:
        raise DP4TLError(f"--ratio {cfg.ratio:g}: {e}") from None
    if m < n:
        return None
    return (f"--ratio {cfg.ratio:g} keeps all {n} {what if n > 1 else scorer.unit} of "
            f"{scorer.label} (round((1 - {cfg.ratio:g}) x {n}) = {m}): nothing is pruned, so the "
            "pretraining is the unpruned one; a larger --ratio prunes")


def _check_splits(data, which: str, readers: list[tuple[str, str, Any, str]],
                  keys: tuple[str, ...]) -> None:
    """The splits the recipes of ``readers`` read (their ``data.<key>`` for ``keys``) exist in
    ``data``, the ``which`` ("source" or "target"): else the run fails at that stage, after the
    stages before it (a source built from a flat image folder has no ``val``: the surrogate
    stopped after its stage folder was made). ``readers``: (role, recipe name, recipe, the
    pipeline option that sets that recipe's keys); the fix names every reader of the split."""
    for key in keys:
        for role, name, recipe, _ in readers:
            split = getattr(recipe.data, key)
            if split in data.split_names:
                continue
            flags = " ".join(f"{flag} data.{key}=NAME" for _, _, r, flag in readers
                             if getattr(r.data, key) == split)
            other = ", or validate on the train split" if key == "val_split" else ""
            raise DP4TLError(f"{which} {data.root} has no {split!r} split (it has: "
                             f"{', '.join(data.split_names)}), which the {role} recipe {name} "
                             f"reads (data.{key}); build the {which} with that split{other} "
                             f"({flags})")


def _check_start_from(name: str, recipe, pre_name: str, pre_recipe, brought: str) -> None:
    """finetune.start_from = "best" needs a pretraining that keeps best.pt (train.keep_best);
    checked before any work. Brought source weights are the model itself: nothing to choose."""
    if recipe.finetune.start_from == "best" and not brought and not pre_recipe.train.keep_best:
        raise DP4TLError(f"finetune recipe {name}: finetune.start_from = \"best\", but the "
                         f"pretraining recipe {pre_name} does not keep it: set train.keep_best = "
                         "true there (--set train.keep_best=true) or finetune.start_from = \"final\"")


def _check_source_head(name: str, recipe, pre_name: str, pre_recipe, src, tgt,
                       brought: str) -> None:
    """finetune.head = "source" (the paper_code recipes) finetunes the source model's own
    classifier: refused before any work when the source has none (self-supervised) or fewer
    outputs (its classes) than the target has classes — finetuning would stop there, after the
    surrogate and the pretraining (:func:`~..training.finetune.classifier_for` is the rule)."""
    if recipe.finetune.head != "source":
        return
    fix = "use finetune.head = \"new\" (--set-finetune finetune.head=new)"
    if not brought and pre_recipe.ssl.method != "none":
        raise DP4TLError(f"finetune recipe {name} finetunes the source model's own classifier "
                         f"(finetune.head = \"source\"), but the pretraining recipe {pre_name} is "
                         f"self-supervised ({pre_recipe.ssl.method}) and has none; {fix}")
    if src.num_classes < tgt.num_classes:
        raise DP4TLError(f"finetune recipe {name} finetunes the source model's own classifier "
                         f"(finetune.head = \"source\"): its {src.num_classes} outputs cannot "
                         f"hold the {tgt.num_classes} classes of {tgt.root}; {fix}")


def most_kept(src, unit: str, ratio: float, budget: str) -> int | None:
    """The most train samples a mask at ``ratio`` can keep, known before scoring: a sample
    method keeps exactly ``keep_count`` of them; a class method at most its kept classes'
    count of the largest classes (``budget=samples``: the target count, overshot by less than
    one class); a cluster method's sizes are known only after k-means (None). The split is
    ``train``, the one prune masks."""
    import numpy as np

    from ..scoring.ranking import keep_count
    from .prune import samples_target

    info = src.split("train")
    n = info.num_samples
    if unit == "sample":
        return keep_count(n, 1.0 - ratio, "samples")
    if unit != "class":
        return None
    sizes = np.sort(np.bincount(np.asarray(info.load_labels(), dtype=np.int64),
                                minlength=src.num_classes))[::-1]
    if budget == "units":
        return int(sizes[:keep_count(src.num_classes, 1.0 - ratio, "classes")].sum())
    return min(n, samples_target(n, ratio) + int(sizes[0]))


def check_pretrain_size(cfg: PipelineConfig, unit: str, src, pre_name: str, pretrain) -> None:
    """Refuse, before any stage, a ratio whose pruned set cannot fill one pretraining batch
    (``train.drop_last``, or an objective that drops the last batch, as MoCo's): the trainer
    refuses it when the pretraining starts, after the surrogate, the scores and the mask were
    computed for nothing. Decided from :func:`most_kept` (a cluster method's set, and a class
    method's between its bounds, is still checked where the pretraining starts)."""
    from ..scoring.ranking import ScoringError
    from ..training.trainer import small_set_fix, steps_per_epoch

    try:
        most = most_kept(src, unit, cfg.ratio, cfg.budget)
    except ScoringError:  # (keeps no unit: _check_kept_units's, or the prune stage's, refusal)
        return
    if most is None or steps_per_epoch(pretrain, most) > 0:
        return
    n = src.split("train").num_samples
    exact = unit == "sample" or most == n
    fix = f"use a lower ratio, or {small_set_fix(pretrain)}" if cfg.ratio else small_set_fix(pretrain)
    raise DP4TLError(
        f"ratio {cfg.ratio:g} keeps {'' if exact else 'at most '}{most} of the {n} samples of "
        f"split 'train' of {src.root}, fewer than one pretraining batch of "
        f"{pretrain.train.batch_size} ({pre_name}: train.batch_size, train.drop_last): no step "
        f"would run; {fix} (--set KEY=VALUE)")


def _warn_full_scale_on_cpu(cfg: PipelineConfig, ok: Checked, scale: str, src, pre_name: str,
                            pretrain, log: Callable[[str], None]) -> None:
    """Real-data recipes on the CPU (a login node, `--device auto` without a GPU) would run for
    days: say so before the surrogate starts, not after an hour of it. (Brought source weights
    skip the surrogate and the pretraining: nothing to announce.)"""
    from ..contracts import check_device

    if scale != "full" and cfg.protocol not in PAPER_PROTOCOLS or cfg.source_weights:
        return
    if check_device(cfg.device) != "cpu":
        return
    n = src.split(pretrain.data.train_split).num_samples
    log(f"[warning] {scale if cfg.protocol == 'fast' else cfg.protocol} recipes on the CPU: "
        f"{pre_name} trains {pretrain.model.arch} for {pretrain.train.epochs} epochs over up to "
        f"{n:,} images{' (the surrogate likewise)' if _surrogate_trains(cfg, ok) else ''} at "
        "CPU speed, tens of images/s (ImageNet: days); run on a GPU (--device cuda), or choose "
        "recipes=tiny|bench for a CPU check")


def _surrogate_trains(cfg: PipelineConfig, ok: Checked) -> bool:
    """The surrogate recipe trains a model on the source: the surrogate itself (unless its
    weights, or the source model's, are brought), or the method's own runs (``trains``:
    FORGET, GraNd/EL2N over runs) with it, unless brought source weights skip scoring."""
    if cfg.source_weights:
        return False
    return (ok.scorer.needs_surrogate and not cfg.surrogate_weights) or ok.scorer.trains


def resolve(cfg: PipelineConfig, ok: Checked, log: Callable[[str], None],
            hold: contextlib.ExitStack | None = None) -> Resolved:
    """Build or find the data, check it, and load every recipe once (bad recipes fail here,
    before any work). The stages get the loaded objects: their keys hash the recipes'
    *contents*, and what trains is exactly what the key records, even if a recipe file is
    edited while the pipeline runs. ``hold``: where the data's readers' locks are kept (the
    pipeline's run: its stages read the data whose fingerprints their keys hold)."""
    from ..training.recipe import check_kind, check_source_fed, load_recipe

    resolved = [resolve_data(replace(cfg, target=t), log, hold) for t in ok.target_specs]
    # absolute (a built folder given as a relative path is found against the working directory):
    # what the stages read and the report records, the same from any cwd (config.absolute_paths)
    source_dir = Path(os.path.abspath(resolved[0][0]))
    target_dirs = tuple(Path(os.path.abspath(d)) for _, d in resolved)
    multi = len(target_dirs) > 1
    src = load_manifest(source_dir)
    tgts = tuple(load_manifest(d) for d in target_dirs)
    check_distinct_datasets(ok.target_specs, [t.fingerprint for t in tgts],
                            source=(str(src.root), src.fingerprint))
    names = tuple(display_names(target_dirs)) if multi else (None,)
    scale = cfg.recipes or recipe_scale(src)
    # K not given: the embedded synth data's or the paper's, as the CLI's --k (one rule)
    cfg = replace(cfg, k=default_k(recipe_scale(src) != "full") if cfg.k is None else cfg.k)
    if not cfg.recipes and cfg.protocol == "fast":
        log(f"[recipes] {scale} recipes ({'real' if scale == 'full' else 'embedded synthetic'} "
            f"data per {source_dir / MANIFEST_NAME}; recipes= to choose)")
    check_source(cfg, ok.scorer, src, log)
    for t in tgts:
        check_data(cfg, ok.scorer, src, t, log)

    cache: dict[tuple[str, tuple[str, ...]], Any] = dict(ok.recipes)  # (validate's)

    def load(name: str, overrides) -> Any:  # each (file, overrides) read once
        key = (name, tuple(overrides))
        if key not in cache:
            cache[key] = load_recipe(name, list(overrides))
        return cache[key]

    base = recipe_set(cfg.protocol, scale, tgts[0].name)
    sur_name = cfg.surrogate_recipe or base["surrogate"]
    pre_name = cfg.recipe or base["pretrain"]
    pre_overrides = list(pretrain_overrides(cfg))
    surrogate = load(sur_name, cfg.surrogate_overrides)
    pretrain = load(pre_name, pre_overrides)
    check_kind(surrogate, "train", "the surrogate (--surrogate-recipe)")
    check_kind(pretrain, "train", "pretraining (--recipe)")
    readers = [] if cfg.source_weights else [("pretraining", pre_name, pretrain, "--set")]
    if _surrogate_trains(cfg, ok):
        readers.insert(0, ("surrogate", sur_name, surrogate, "--set-surrogate"))
    _check_splits(src, "source", readers, ("train_split", "val_split"))
    _warn_full_scale_on_cpu(cfg, ok, scale, src, pre_name, pretrain, log)
    # a self-supervised source under a paper protocol: MoCo's linear classification protocol
    # for LP, the paper's FF (one rule per mode: a recipe named for one mode leaves the other's)
    ssl_source = cfg.protocol in PAPER_PROTOCOLS and pretrain.ssl.method != "none"

    def finetune_names(target_name: str | None) -> dict[str, str]:
        rt = recipe_set(cfg.protocol, scale, target_name)  # Tab. A1: per target (paper)
        # a self-supervised source: no released code, so both paper protocols finetune it with
        # the paper's recipes (docs/deviations.md #13; the released FF keeps a class head)
        ff = recipe_set("paper", scale, target_name)["ff"] if ssl_source else rt["ff"]
        return {"lp": cfg.lp_recipe or (PAPER_SSL_LP if ssl_source else rt["lp"]),
                "ff": cfg.ff_recipe or ff}

    per_target = []
    for t in tgts:
        ft = finetune_names(t.name)
        per_target.append({m: (ft[m], load(ft[m], cfg.finetune_overrides)) for m in cfg.finetune})
        for m, (name, rec) in per_target[-1].items():
            check_kind(rec, "finetune", f"{m.upper()} (--{m}-recipe)")
            _check_splits(t, "target", [(m.upper(), name, rec, "--set-finetune")],
                          ("train_split", "test_split"))
            if rec.finetune.normalize == "cifar10" and cfg.fmt == "ffcv":
                # ffcv resizes with OpenCV's INTER_AREA: 32 px images upsample in blocks
                log(f"[finetune] note: {name} reads {t.name} as the authors' CIFAR loader does "
                    "(torchvision's bilinear Resize) only with --format wds; ffcv upsamples "
                    "small images with INTER_AREA (blocks of pixels)")
    # (the modes run only: report.md named an FF recipe for `finetune=lp`)
    names_first = {m: n for m, n in finetune_names(tgts[0].name).items() if m in cfg.finetune}
    # the protocol's scorer options (surrogate recipe scoring.scorer_options), under --opt
    recipe_options = recipe_scorer_options(surrogate.scoring.scorer_options, cfg.method)
    options = ok.options
    if recipe_options:
        options = ok.scorer.parse_options({**recipe_options, **ok.given_options})
        log(f"[score] {sur_name} sets {cfg.method} options "
            f"{', '.join(f'{k}={v}' for k, v in recipe_options.items())} (--opt overrides them)")
    for t, rec in zip(tgts, per_target):
        for r_name, r in rec.values():
            _check_start_from(r_name, r, pre_name, pretrain, cfg.source_weights)
            if not cfg.source_weights:  # (brought weights: checked by finetuning, their kwargs)
                check_source_fed(pretrain.model.arch, {"image_size": pretrain.model.image_size},
                                 r, f"of the pretraining recipe {pre_name}")
            _check_source_head(r_name, r, pre_name, pretrain, src, t, cfg.source_weights)
    if surrogate.ssl.method != "none" and ok.scorer.needs_class_head:
        raise self_supervised_refusal(ok.scorer, f"the surrogate recipe {sur_name} is "
                                                 f"self-supervised ({surrogate.ssl.method})")
    if not cfg.source_weights:  # (last: the checks above say what is wrong more precisely)
        check_pretrain_size(cfg, ok.scorer.unit, src, pre_name, pretrain)
    return Resolved(source_dir=source_dir, target_dirs=target_dirs, target_names=names, src=src,
                    tgts=tgts, recipe_names={"surrogate": sur_name, "pretrain": pre_name,
                                             **names_first},
                    surrogate=surrogate, pretrain=pretrain,
                    pretrain_overrides=tuple(pre_overrides), finetune=tuple(per_target),
                    options=options, recipe_options=recipe_options, k=cfg.k)
