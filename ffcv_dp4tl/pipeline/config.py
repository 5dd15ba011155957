"""What a pipeline run is asked to do (:class:`PipelineConfig`) and the checks that need no data
(:func:`validate`): the first step of :func:`~ffcv_dp4tl.pipeline.run.run_pipeline`, run before
anything is built or trained, so a bad value is a one-line error at once."""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..contracts import (MANIFEST_NAME, Budget, FinetuneMode, Format, PretrainLength, Protocol,
                         check_device, check_k, check_ratio, check_seeds)
from ..errors import DP4TLError
from ..fsutil import check_out_dir
from ..outputs import KINDS, dataset_around, folder_kind
from ..scoring.registry import Scorer, get_scorer, parse_option_pairs
from .recipes import PAPER_PROTOCOLS
from .targets import check_order, check_weights, synth_targets, target_list


@dataclass
class PipelineConfig:
    """One pipeline run, for :func:`~ffcv_dp4tl.pipeline.run.run_pipeline`: the knobs of
    ``dp4tl pipeline``, under the same names (``fmt`` is ``--format``; a comment beside each
    field says what it holds). The ones most runs set: ``ratio`` (the fraction of the
    method's units removed: classes for LM), ``source`` / ``target`` (built folders, or SOURCEs
    to build once under ``data_root``), ``method`` (a registered scorer: ``dp4tl score
    --help``), ``finetune`` (``("lp", "ff")``), ``seeds``, ``device``. ``data_root`` and
    ``runs_root`` (and brought weights, recipe files, built data folders) given relative are
    read against the working directory
    of the run: :func:`validate` checks a config before any work (``run_pipeline`` calls it)
    and makes those paths absolute (:func:`absolute_paths`), so what a run records is the same
    from any working directory."""

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
    finetune: tuple[str, ...] = ("lp", "ff")  # a tuple: ("lp",) alone (a plain "lp" is refused)
    data_root: Path = Path("data")
    runs_root: Path = Path("runs")
    fmt: str = "ffcv"
    device: str = "auto"
    k: int | None = None  # FM's K; None: contracts.default_k (64 on the embedded synth data, else 2000)
    seed: int = 0
    scorer_options: tuple[str, ...] = field(default_factory=tuple)  # NAME=VALUE (--opt)
    budget: str = "units"  # prune: units (ratio of classes/clusters) | samples (kept fraction)
    # pretraining of a pruned set: the recipe's epochs (the paper's) | steps (as many optimizer
    # steps as on the unpruned set: training.trainer.matched_steps_overrides)
    pretrain_length: str = "epochs"
    overrides: tuple[str, ...] = field(default_factory=tuple)  # for the pretraining recipe
    surrogate_overrides: tuple[str, ...] = field(default_factory=tuple)
    finetune_overrides: tuple[str, ...] = field(default_factory=tuple)  # for the LP and FF recipes
    seeds: tuple[int, ...] = ()  # pretrain + finetune per seed (train.seed, data.seed); () = (0,)
    surrogate_weights: str = ""  # a torchvision/timm state dict: the surrogate, not trained
    source_weights: str = ""  # a state dict: the source model LP/FF start from (ratio 0 only)
    split: str = "auto"  # targets the pipeline builds: auto (CoOp JSON if beside the data) | coop | official
    order: str = "ordered"  # ordered: keep the top-scored units | reversed: the lowest (Fig. A3)
    targets: tuple[str, ...] = ()  # several targets (Fig. A5): one combined selection, LP/FF on each
    target_weights: tuple[float, ...] = ()  # one per target in `targets` ('' = equal weights)
    progress: bool = True  # bars of builds, training and scoring (in no stage key; lines are said either way)

    def __post_init__(self) -> None:
        # a script's runs_root="runs" ran every stage, then failed joining a str in the report
        for name in ("data_root", "runs_root"):
            value = getattr(self, name)
            if not isinstance(value, (str, os.PathLike)):  # (None: a bare pathlib TypeError)
                raise DP4TLError(f"{name} must be a folder's path (a str or Path), got {value!r}")
        self.data_root, self.runs_root = Path(self.data_root), Path(self.runs_root)


@dataclass(frozen=True)
class Checked:
    """What :func:`validate` worked out from a config, so no later step works it out again."""

    seeds: tuple[int, ...]  # distinct, in order; (0,) when none given
    scorer: Scorer
    given_options: dict[str, str]  # the --opt pairs as given (they enter the score key)
    options: dict[str, Any]  # every option of the scorer, parsed (defaults filled in)
    reverse: bool  # order == "reversed"
    target_specs: tuple[str, ...]
    weights: tuple[float, ...]  # () = equal
    # the recipes known before the data (named, or fixed by recipes=/the protocol), loaded with
    # their overrides: (name, overrides) → Recipe, which resolve loads no second time
    recipes: dict[tuple[str, tuple[str, ...]], Any] = field(default_factory=dict)


def _check_roots_apart(runs_root: Path, data_root: Path) -> None:
    """``--runs-root`` is not ``--data-root`` (compared resolved, so ``data`` and ``./data`` or
    a link to it are one): the same folder for both (``data``) was taken, and the pipeline's
    stage folders went in among the dataset builds (audit). One inside the other is fine
    (``--data-root .`` with the default ``runs``, or ``work/`` and ``work/data``): the stage
    folders and the builds keep folders of their own, and the data root's scan for a build of
    the same input passes over folders that are none (review)."""
    if Path(runs_root).resolve() == Path(data_root).resolve():
        raise DP4TLError(f"--runs-root {runs_root} is the same folder as --data-root {data_root}: "
                         "the stage folders would mix with the dataset builds; pass two "
                         "separate folders (e.g. --runs-root runs --data-root data)")


def _check_one_arch(cfg: PipelineConfig) -> None:
    """``--arch`` and a ``--set model.arch=...`` both choose the pretraining model: --arch won
    in silence, and a bench's header listed both, so its table read as either model's (audit).
    Given both (even equal), they are refused before any work (the data's build included:
    review): one of them says it."""
    from ..training.recipe import override_key

    given = [o for o in cfg.overrides if override_key(o) == ("model", "arch")]
    if cfg.arch and given:
        raise DP4TLError(f"--arch {cfg.arch} and --set {given[0]} both choose the pretraining "
                         "model: give one of them")


def pretrain_overrides(cfg: PipelineConfig) -> tuple[str, ...]:
    """What the pretraining recipe is loaded with: ``--set``, then ``--arch`` as model.arch."""
    return tuple(cfg.overrides) + ((f"model.arch={cfg.arch}",) if cfg.arch else ())


def _check_modes_of_recipes(cfg: PipelineConfig) -> None:
    """``--lp-recipe`` / ``--ff-recipe`` for a mode ``--finetune`` does not run is refused, as
    cost-table's ``--ff-methods`` without ff is: it was accepted and ignored (audit)."""
    for mode, name in (("lp", cfg.lp_recipe), ("ff", cfg.ff_recipe)):
        if name and mode not in cfg.finetune:
            raise DP4TLError(f"--{mode}-recipe {name} sets the {mode.upper()} recipe, but "
                             f"--finetune {','.join(cfg.finetune) or '(none)'} runs no "
                             f"{mode.upper()}; drop --{mode}-recipe or add {mode}")


def _check_recipes(cfg: PipelineConfig) -> dict[tuple[str, tuple[str, ...]], Any]:
    """The recipe checks that need no data, before it is built (with ImageNet as the source,
    hours; each failed only after the build: audit): every ``--set*`` override parses, names a
    key a recipe has and gives it a value of its type (:func:`~..training.recipe.check_overrides`:
    wrong for every recipe), and each recipe whose name is known now — named
    (``--surrogate-recipe``, ``--recipe``, ``--lp-recipe``, ``--ff-recipe``), fixed by
    ``recipes=`` or a paper protocol, or chosen by the data's scale, which the source's spec or
    manifest gives before the build (:func:`~.recipes.scale_of_source`, resolve's rule) — loads
    with its overrides (its ranges checked: ``--set train.epochs=-1`` was refused only after the
    build) and is of its kind. Returns those loaded, for :func:`~.resolve.resolve`."""
    from ..training.recipe import check_kind, check_overrides, load_recipe
    from .recipes import recipe_set, scale_of_source

    check_overrides(cfg.overrides, "--set", "train", "the pretraining recipe (--recipe)")
    check_overrides(cfg.surrogate_overrides, "--set-surrogate", "train",
                    "the surrogate recipe (--surrogate-recipe)")
    check_overrides(cfg.finetune_overrides, "--set-finetune")
    known: dict[str, str] = {}
    if cfg.protocol in PAPER_PROTOCOLS:  # (its LP/FF depend on the target: known in resolve)
        known = {r: n for r, n in recipe_set(cfg.protocol, "full").items()
                 if r in ("surrogate", "pretrain")}
    elif cfg.recipes:
        known = recipe_set(cfg.protocol, cfg.recipes)  # (an unknown set: one line here)
    else:
        try:
            known = recipe_set(cfg.protocol, scale_of_source(cfg.source))
        except DP4TLError:  # (a source spec or manifest at fault: resolve's to say, in its words)
            known = {}
    loaded: dict[tuple[str, tuple[str, ...]], Any] = {}
    for role, flag, name, overrides, kind, what in (
            ("surrogate", "--surrogate-recipe", cfg.surrogate_recipe, cfg.surrogate_overrides,
             "train", "the surrogate"),
            ("pretrain", "--recipe", cfg.recipe, pretrain_overrides(cfg), "train", "pretraining"),
            *(((m, f"--{m}-recipe", getattr(cfg, f"{m}_recipe"), cfg.finetune_overrides,
                "finetune", m.upper()) for m in cfg.finetune))):
        use = f"{what} ({flag})"
        given, name = name, name or known.get(role, "")
        if name:
            key = (recipe_file(name), tuple(overrides))  # (as resolve finds it: absolute_paths)
            if key not in loaded:
                try:
                    loaded[key] = load_recipe(name, list(overrides))
                except DP4TLError as e:  # (a name the user gave: the message names its option)
                    if not given:
                        raise
                    raise DP4TLError(f"{flag} {name}: {e}") from None
            check_kind(loaded[key], kind, use)
    return loaded


#: the config's fields that name a recipe: a shipped recipe's name or a recipe file
RECIPE_FIELDS = ("surrogate_recipe", "recipe", "lp_recipe", "ff_recipe")


def recipe_file(name: str) -> str:
    """A recipe option as the config records it (:func:`absolute_paths`): a shipped recipe's
    name as given, a recipe file as its absolute path. A file is what
    :func:`~..training.recipe_files.resolve_recipe_path` reads as one (a path such as
    ``r.toml`` or ``./r.toml``, or a name a file in the working directory holds); a name that
    is neither stays as given, refused where it is loaded. (The stage keys hold the recipe's
    own name and content, not this: :func:`~.run.recipe_key`.)"""
    from ..training.recipe_files import resolve_recipe_path

    if not name:
        return name
    try:
        path = resolve_recipe_path(name)
    except DP4TLError:
        return name
    return _absolute(name) if path == Path(name).expanduser() else name


def check_brought_weights(cfg: PipelineConfig) -> None:
    """Brought weights (``--surrogate-weights``, ``--source-weights``) are a file torch reads as
    a state dict (:func:`~..training.weights.check_weights_file`): the run's step after
    :func:`validate` (this one reads files, with torch), before resolve builds anything and
    before any stage folder exists. A folder was "not found", and a file torch cannot read was
    refused inside the surrogate stage in torch's words, its folder left half made (audit)."""
    for option, w in (("--surrogate-weights", cfg.surrogate_weights),
                      ("--source-weights", cfg.source_weights)):
        if w:
            from ..training.weights import check_weights_file

            check_weights_file(w, option)


def _absolute(path: str | os.PathLike[str]) -> str:
    """``path`` (``~`` read as the home folder) as an absolute, normalised path against the
    working directory; links are kept as named (a target's folder name is its display name)."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def recorded_config(cfg: PipelineConfig) -> dict[str, Any]:
    """``cfg`` as a results.json records it (a pipeline's report, a bench's table): its fields,
    the roots as absolute paths (:func:`absolute_paths`' rule; a bench records its base config,
    which no :func:`validate` made absolute)."""
    return {**asdict(cfg), "data_root": _absolute(cfg.data_root),
            "runs_root": _absolute(cfg.runs_root)}


def absolute_paths(cfg: PipelineConfig) -> None:
    """The config's own paths made absolute, once, in place (:func:`validate`'s last step, as it
    makes ``ratio`` a float): ``data_root``, ``runs_root``, brought weights, recipe files
    (:func:`recipe_file`) and built data folders given as ``source`` / targets. Every path the
    run records (results.json's config, stage folders and data folders, report.md) derives
    from these or from :func:`~.resolve.resolve`'s data folders (made absolute there too), so
    two runs from two working directories, one spelling ``runs`` and one ``/a/runs``, record the
    same paths, and each points at its file from anywhere: a path relative to the working
    directory of the run was wrong once read from elsewhere (a later reader, a cluster job's
    other cwd), and the second run rewrote the first's report with other paths (audit). No
    stage key holds a path (they hold content fingerprints, and a recipe's name:
    :func:`~.run.recipe_key`), so no stage runs again.
    ``source`` and each target are made absolute where they name a built dataset folder (a
    plain name such as ``mytarget`` too) or a ``LAYOUT:PATH`` SOURCE (its PATH;
    :func:`_built_folder`); a synth spec (``synth:tiny``) or a synth target's name (``warm``,
    :func:`~.targets.synth_targets`) stays as given."""
    cfg.data_root, cfg.runs_root = Path(_absolute(cfg.data_root)), Path(_absolute(cfg.runs_root))
    if cfg.surrogate_weights:
        cfg.surrogate_weights = _absolute(cfg.surrogate_weights)
    if cfg.source_weights:
        cfg.source_weights = _absolute(cfg.source_weights)
    synth = synth_targets(cfg.source)  # (the names a plain target is read as first)
    cfg.source = _built_folder(cfg.source)
    cfg.target = _built_folder(cfg.target, synth)
    cfg.targets = tuple(_built_folder(t, synth) for t in cfg.targets)
    for name in RECIPE_FIELDS:
        setattr(cfg, name, recipe_file(getattr(cfg, name)))


def _built_folder(spec: str, synth: frozenset[str] = frozenset()) -> str:
    """``spec`` made absolute when it is a path to a built dataset (a folder with a manifest,
    as :func:`~.resolve.ensure_built` reads it first; a plain name such as ``mytarget`` too) or
    a ``LAYOUT:PATH`` SOURCE (its PATH, :func:`~beton_builders.sources.layout_path`), else as
    given. ``synth``: the names that are targets of the embedded data
    (:func:`~.targets.synth_targets`), which :func:`~.resolve.resolve_data` reads as those
    before any folder of that name (``warm``): they stay as given. A plain target name that
    is a folder stayed relative until 2026-12-08, so results.json recorded ``mytarget``, which a
    rerun from another folder read as another folder or none.

    A ``LAYOUT:PATH`` is what a build under ``data_root`` records and is found again by: two
    runs sharing a data root, each typing ``folder:raw/imgs`` in its own folder, read two inputs
    under one spec, and the second reused the first one's build (its other images seen only as
    "changed since it was built"; review)."""
    from beton_builders.sources import layout_path

    if not spec:
        return spec
    if spec not in synth and (Path(spec).expanduser() / MANIFEST_NAME).exists():
        return _absolute(spec)  # (first: a built folder whose name holds a ':', review)
    layout = layout_path(spec)
    return f"{layout[0]}:{_absolute(layout[1])}" if layout is not None else spec


def validate(cfg: PipelineConfig) -> Checked:
    """Every check of ``cfg`` that needs no data and no work: one :class:`DP4TLError` line for
    the first bad value. Checks that need the built data follow in the run's resolve step
    (:func:`~ffcv_dp4tl.pipeline.resolve.check_source`, `check_data`). A new up-front check goes here."""
    cfg.ratio = check_ratio(cfg.ratio)  # a float: ratio=0 and --ratio 0 give the same stage keys
    Protocol.check(cfg.protocol, "protocol")
    Format.check(cfg.fmt, "fmt")
    check_device(cfg.device)
    if isinstance(cfg.finetune, (str, bytes)) or not isinstance(cfg.finetune, Iterable):
        raise DP4TLError(f"finetune must be a tuple of modes such as ('lp', 'ff') or ('lp',), "
                         f"got {cfg.finetune!r}")
    for mode in cfg.finetune:
        FinetuneMode.check(mode, "finetune")
    if cfg.protocol in PAPER_PROTOCOLS and cfg.recipes:
        raise DP4TLError(f"recipes={cfg.recipes} picks a fast-protocol set; the {cfg.protocol} "
                         f"protocol has one set (recipes/{cfg.protocol.replace('-', '_')}/): "
                         "drop one of the two")
    if cfg.source_weights and cfg.ratio != 0:
        raise DP4TLError(f"source weights are the unpruned source model (ratio 0), but ratio is "
                         f"{cfg.ratio}: a pruned run pretrains on its mask")
    _check_modes_of_recipes(cfg)
    seeds = tuple(dict.fromkeys(check_seeds(cfg.seeds, "--seeds"))) or (0,)
    check_seeds([cfg.seed], "--seed (the scorer's seed, e.g. random's draw)")
    # output roots: a file in the way is refused here, not after the data are built; a
    # read-only data root is fine when it already holds the builds (ensure_built reuses them)
    _check_roots_apart(cfg.runs_root, cfg.data_root)
    _check_one_arch(cfg)
    check_out_dir(cfg.runs_root, "--runs-root")
    inside = dataset_around(cfg.runs_root, strict=False)  # (its stage folders: each an --out)
    if inside is not None:
        raise DP4TLError(f"--runs-root {cfg.runs_root} lies inside the built dataset {inside}: "
                         "keep runs outside datasets; pass another --runs-root")
    # one command's own output folder (a `dp4tl train` run got stage folders inside; audit); a
    # report's folder may hold its runs, as some users keep them (outputs.OutputKind.runs_root)
    held = folder_kind(cfg.runs_root)  # (a dataset's: refused above)
    if held is not None and not KINDS[held].runs_root:
        raise DP4TLError(f"--runs-root {cfg.runs_root} holds {KINDS[held].what} (written by "
                         f"`{KINDS[held].command}`), not pipeline runs: pass another --runs-root "
                         "(e.g. runs/)")
    check_out_dir(cfg.data_root, "--data-root", must_write=False)
    inside = dataset_around(cfg.data_root, strict=False)  # (its builds: each a dataset folder)
    if inside is not None:  # (a whole build went into DATASET/synth-tiny/, review)
        raise DP4TLError(f"--data-root {cfg.data_root} lies inside the built dataset {inside}: "
                         "keep builds outside datasets; pass another --data-root")
    # another command's output folder (a bench's report: builds went in among its files,
    # audit); a root holding builds is no kind's (they lie in its sub-folders), nor is a new one
    held = folder_kind(cfg.data_root)  # (a dataset's: refused above)
    if held is not None:
        raise DP4TLError(f"--data-root {cfg.data_root} holds {KINDS[held].what} (written by "
                         f"`{KINDS[held].command}`), not dataset builds: pass another --data-root "
                         "(e.g. data/)")
    scorer = get_scorer(cfg.method)  # unknown method: one line listing the registered ones
    given_options = parse_option_pairs(cfg.scorer_options)
    options = scorer.parse_options(given_options)  # bad --opt: before any work
    Budget.check(cfg.budget, "budget")
    PretrainLength.check(cfg.pretrain_length, "pretrain_length")
    if cfg.k is not None:  # (None: resolved from the source's manifest, resolve.resolve)
        check_k(cfg.k)
    reverse = check_order(cfg.order)
    target_specs = target_list(cfg.target, cfg.targets)
    weights = check_weights(cfg.target_weights, len(target_specs))
    recipes = _check_recipes(cfg)
    absolute_paths(cfg)  # (last: every refusal above names the paths as the user gave them)
    # the seeds the run runs, as results.json records them: PipelineConfig()'s () recorded []
    # where the CLI's default recorded [0], so two identical runs read as changed (docs audit)
    cfg.seeds = seeds
    return Checked(seeds=seeds, scorer=scorer, given_options=given_options, options=options,
                   reverse=reverse, target_specs=target_specs, weights=weights, recipes=recipes)
