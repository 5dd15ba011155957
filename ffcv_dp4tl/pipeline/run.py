"""The end-to-end job behind ``just pretrain ratio=R`` / ``dp4tl pipeline``.

build data (if missing) → train surrogate (cached) → score (LM by default) → prune → pretrain
the source model on the mask → finetune LP and FF on the target → report.

**Steps.** :func:`run_pipeline` reads as its steps: :func:`~.config.validate` (every check that
needs no data) → :func:`~.config.check_brought_weights` (brought weights read) → :func:`~.resolve.resolve` (data built or found, every recipe loaded once) →
one function per stage (:func:`surrogate_stage`, :func:`score_stage`, :func:`prune_stage`,
:func:`pretrain_stages`, :func:`finetune_stages`) → :func:`~.report.write_report`. It returns a
:class:`~.result.PipelineResult`.

Every stage writes into ``runs/<stage>-<key>/`` where the key hashes everything the stage
depends on (upstream keys included), and is skipped once its ``DONE.json`` exists: the
surrogate and its scores are shared by all ratios, a rerun does nothing, and a killed run
resumes at the stage (and, for training, the epoch) where it stopped. A stage computed from an
upstream stage that was deleted and computed again since runs again (``upstream=``).

**Protocols.** ``protocol="fast"`` (default) runs today's recipes: the tiny CPU set on the
embedded data, ffcv-imagenet-style ones on real data. ``protocol="paper"`` runs ``recipes/paper/``,
the paper's App. A.1 / Tab. A1 protocol (ResNet-18 surrogate, ResNet-101 source, SGD lr 0.5 /
wd 5e-4, no label smoothing / BlurPool / TTA, LP Adam 0.1 × 50 epochs, FF Adam 0.01 cosine × 200,
CIFAR-10 at 160 px, MoCo's linear protocol for self-supervised sources, the target read at 224
with no crop for scoring); every value's source is a comment in its file.

**Seeds.** ``seeds=(0, 1, 2)`` repeats pretraining and finetuning per seed (model init and
data order: :func:`~.resolve.seed_overrides`; the surrogate, scores and mask are shared) and
reports final- and best-epoch top-1 as mean ± std.

**Brought weights.** ``surrogate_weights`` imports a torchvision/timm state dict as the surrogate
(:mod:`..training.weights`: checked against the source's classes) instead of training one;
``source_weights`` does the same for the source model LP/FF start from (the unpruned reference,
ratio 0). The report and the cost table say when a model was brought rather than trained.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Iterable

from ..data.masks import load_mask
from ..errors import DP4TLError
from ..fsutil import file_sha256
from ..progress import console, saying_to
from ..scoring.registry import FEATURES, TRAJECTORY
from .config import Checked, PipelineConfig, check_brought_weights, recorded_config, validate
from .gallery import GALLERY, selection_gallery
from .prune import prune
from .report import run_title, summarize_seeds, write_report
from .resolve import Resolved, as_log, resolve, seed_overrides, with_seed
from .result import PipelineResult, StagePlace, stage_label
from .score import score
from .stages import REPORT_STAGE, Stage, before_first_run, key_of, run_stage, stage
from .targets import score_key
from .truth import selection_truth

Log = Callable[[str], None]
#: ``run_pipeline``'s ``before_first_run``: given the run's checked config and resolved inputs
FirstRun = Callable[[PipelineConfig, Resolved], Any]


def run_pipeline(cfg: PipelineConfig, log: Log | None = console, *,
                 before_first_run: FirstRun | None = None) -> PipelineResult:
    """Run (or resume, or find cached) every stage of ``cfg`` and write its report. Every line
    it says goes to ``log``: its own and those of the trainings and finetunings it runs
    (theirs went to stdout whatever ``log`` was; Python API review); ``None``: nowhere, as for
    ``train`` and ``finetune`` (:func:`~.resolve.as_log`). ``cfg`` is left as it was given: the
    run validates a copy (its ratio a float, its paths absolute: what the results record).
    ``before_first_run(checked_cfg, resolved)``: called once, just before the first stage that
    runs (never when every stage is cached: :func:`~.stages.before_first_run`), with that
    checked copy and its :class:`~.resolve.Resolved` data and recipes, under the run's
    readers' locks on the data: the cost table's untimed warm-up."""
    cfg = dataclasses.replace(cfg)  # (validate, absolute_paths rewrite the copy, not the caller's)
    with saying_to(log), contextlib.ExitStack() as reading:  # (the data's readers' locks)
        return _run_pipeline(cfg, as_log(log), reading, before_first_run)


def _run_pipeline(cfg: PipelineConfig, log: Log, reading: contextlib.ExitStack,
                  first: FirstRun | None = None) -> PipelineResult:
    ok = validate(cfg)
    check_brought_weights(cfg)
    r = resolve(cfg, ok, log, reading)
    with before_first_run(functools.partial(first, cfg, r) if first else None):
        res = _run_stages(cfg, ok, r, log)
    return report_step(cfg, ok, r, res, log)


def _run_stages(cfg: PipelineConfig, ok: Checked, r: Resolved, log: Log) -> PipelineResult:
    """Every stage of the run, in order (each skipped when done), into a new result."""
    res = PipelineResult(config={**recorded_config(cfg), "k": r.k},
                         source=str(r.source_dir), target=str(r.target_dir),
                         protocol=cfg.protocol, recipes=dict(r.recipe_names),
                         seeds=list(ok.seeds))
    if r.multi:
        res.targets = {n: str(d) for n, d in zip(r.target_names, r.target_dirs)}
        res.target_weights = list(ok.weights) or [1.0] * len(r.target_dirs)
        res.target_recipes = {n: {m: name for m, (name, _) in ft.items()}
                              for n, ft in zip(r.target_names, r.finetune)}
    if note := ratio_zero_note(cfg, ok.scorer):
        log(f"[surrogate] note: {note}")
    sur = surrogate_stage(cfg, ok, r, res, log)
    if cfg.source_weights:
        pretrained = brought_source_stage(cfg, ok, r, res, log)
    else:
        sc = score_stage(cfg, ok, r, sur, res, log)
        pr = prune_stage(cfg, ok, r, sc, res, log)
        pretrained = pretrain_stages(cfg, ok, r, pr, res, log)
    finetune_stages(cfg, ok, r, pretrained, res, log)
    return res


def _run_import(st: Stage, weights: Path, option: str, rec: Any, r: Resolved, log: Log):
    """Run the stage ``st`` that imports brought ``weights`` (given as ``option``) for
    ``rec``'s model. Unless it is done, their fit to the model and the source's classes is
    checked first: refused inside the stage, a file of another architecture left the stage's
    folder behind (docs audit)."""
    from ..training.weights import check_importable, import_weights

    if not st.done:
        check_importable(weights, option, recipe=rec, classes=r.src.classes,
                         source=str(r.source_dir))
    return run_stage(st, lambda d: import_weights(
        weights, d / "checkpoint.pt", recipe=rec, classes=r.src.classes, source=str(r.source_dir),
        dataset_fingerprint=r.src.fingerprint), log)


def ratio_zero_note(cfg: PipelineConfig, scorer: Any) -> str | None:
    """At ratio 0 every sample is kept whatever the method, so a method that trains a
    surrogate first spends that time on nothing the pretraining depends on (its stage is keyed
    by the mask's content, the whole split either way): a line saying so, else None. (An
    audit: ``--ratio 0`` with the default LM trained a surrogate and scored.)"""
    if cfg.ratio or not scorer.needs_surrogate or cfg.surrogate_weights or cfg.source_weights:
        return None
    return (f"ratio 0 keeps every sample whatever the method, so {scorer.label}'s surrogate and "
            "scores change nothing the pretraining reads; `--method random --ratio 0` gives "
            "the same pretraining (the same stage) without them")


def preflight(cfgs: Iterable[PipelineConfig | tuple[str, PipelineConfig]],
              log: Log | None = print) -> None:
    """The checks :func:`run_pipeline` makes before its first stage for every config of a plan,
    so a bench refuses a bad value of its last run before its first run trains anything: first
    :func:`validate` of every config (what needs no data: a bad ``--set``, method or recipe of
    any run is refused before the data is built, which takes hours with ImageNet as the source;
    each was refused after the build: audit), then :func:`resolve` of each (the data built or
    found and checked, every recipe loaded with its overrides). The first config's resolve may
    build the data (as its run would, with ``log``); the others are checked quietly. An item
    ``(what, cfg)`` prefixes ``what: `` to its config's refusal (which runs of the plan it is)."""
    log = as_log(log)
    plan: dict[str, tuple[str, PipelineConfig]] = {}
    for item in cfgs:
        what, cfg = item if isinstance(item, tuple) else ("", item)
        plan.setdefault(repr(cfg), (what, dataclasses.replace(cfg)))  # (the caller's: as given)
    checked = [(what, cfg, _said(what, lambda c=cfg: validate(c))) for what, cfg in plan.values()]
    for what, cfg, _ in checked:
        _said(what, lambda c=cfg: check_brought_weights(c))
    for i, (what, cfg, ok) in enumerate(checked):
        _said(what, lambda c=cfg, o=ok, quiet=bool(i): resolve(c, o, (lambda _: None) if quiet
                                                                else log))


def _said(what: str, check: Callable[[], Any]) -> Any:
    """``check()``, its refusal prefixed with ``what`` (the runs it concerns) when given."""
    if not what:
        return check()
    try:
        return check()
    except DP4TLError as e:
        raise DP4TLError(f"{what}: {e}") from None


def _common(cfg: PipelineConfig) -> dict[str, Any]:
    """What every training or scoring stage's key holds besides its own inputs: the file format,
    and the device where it changes results (CUDA trains and scores in the recipes' bf16 with
    channels_last, the CPU in fp32), so a CPU run's cached stages never stand in for a GPU
    run's, or the reverse. Only CUDA is written, so the keys of CPU runs stay valid."""
    return {"fmt": cfg.fmt, **device_key(cfg.device)}


def recipe_key(recipe: Any) -> str:
    """What a stage's key holds of the recipe it trains besides its content
    (``recipe_fingerprint``): its name as :func:`~..training.recipe.load_recipe` gives it, i.e.
    a shipped recipe's name as typed (``resnet50_16ep``, ``paper/lp``: the keys of every
    shipped-recipe run, unchanged) and a recipe file's name without its folder and ``.toml``
    (``r`` for ``./r.toml`` or ``/abs/r.toml``). Until 2026-12-08 the key held the option as
    typed, so one file spelled two ways ran its stages twice; the file's folder is in no key,
    as no data path is (the same content under another path reuses a stage)."""
    return recipe.name


def device_key(device: str) -> dict[str, str]:
    """``{"device": "cuda"}`` when ``device`` (``auto`` resolved) is CUDA, else ``{}``."""
    from ..training.distributed import resolve_device

    return {"device": "cuda"} if resolve_device(device).type == "cuda" else {}


def surrogate_stage(cfg: PipelineConfig, ok: Checked, r: Resolved, res: PipelineResult,
                    log: Log) -> Stage:
    """Train the surrogate on the full source, or import brought weights (``surrogate_weights``).
    Every key holds the content fingerprints of its inputs (source, target, mask, recipes),
    never data paths: the same data under another path reuses a stage, other data never does.
    (It also holds the recipe's name, :func:`recipe_key`, and ``--set`` text: a renamed copy
    runs again.) The
    stage is returned even when the method needs no surrogate (it is then not run)."""
    from ..training.recipe import training_overrides
    from ..training.trainer import train

    needs = ok.scorer.needs_surrogate and not cfg.source_weights
    # what trains the surrogate: its [scoring] section (how it reads the images it scores)
    # enters the score stage's key instead, so changing the scoring protocol reuses it
    rec, fp = r.surrogate, r.surrogate.training_fingerprint()
    place = StagePlace("surrogate", "surrogate")
    if cfg.surrogate_weights:
        w = Path(cfg.surrogate_weights).expanduser()
        sur = stage(cfg.runs_root, "surrogate", {"weights_sha256": file_sha256(w),
                                                 "recipe": recipe_key(rec),
                                                 "recipe_fingerprint": fp,
                                                 "source": r.src.fingerprint})
        if needs:
            res.add(place, _run_import(sur, w, "--surrogate-weights", rec, r, log))
        return sur
    sur = stage(cfg.runs_root, "surrogate", {"recipe": recipe_key(rec),
                                             "overrides": training_overrides(
                                                 cfg.surrogate_overrides),
                                             "recipe_fingerprint": fp,
                                             "source": r.src.fingerprint, **_common(cfg)})
    if needs:
        res.add(place, run_stage(sur, lambda d: train(rec, r.source_dir, out_dir=d, fmt=cfg.fmt,
                                                      device=cfg.device, progress=cfg.progress),
                                 log))
    return sur


def score_stage(cfg: PipelineConfig, ok: Checked, r: Resolved, sur: Stage, res: PipelineResult,
                log: Log) -> Stage:
    """Score the source (the method's scorer; its options, recipe and how the surrogate reads
    the target enter the key only where they apply, so older keys stay valid)."""
    scorer, multi = ok.scorer, r.multi
    needs_surrogate = scorer.needs_surrogate
    # how the surrogate reads the target and the source (recipe [scoring]; each pair enters the
    # key only off its default, so older keys stay valid)
    sc_in = r.surrogate.scoring
    image_input = {name: [res, crop] for name, res, crop, read in (
        ("target_input", sc_in.target_resolution, sc_in.target_crop, True),
        # (source images are read only by the methods of source features: FM, MODERATE, ...)
        ("source_input", sc_in.source_resolution, sc_in.source_crop, FEATURES in scorer.needs))
        if read and (res, crop) != (0, "center")}
    extra_key: dict[str, Any] = {}
    if ok.given_options or r.recipe_options:
        extra_key["options"] = {k: r.options[k]
                                for k in sorted({*ok.given_options, *r.recipe_options})}
    if scorer.trains:
        extra_key.update({"train_recipe": r.surrogate.fingerprint(),
                          "source": r.src.fingerprint})
    from ..training.distributed import resolve_device

    device = str(resolve_device(cfg.device))  # "auto" → the concrete device the scorer runs on
    sc = stage(cfg.runs_root, "score", {
        "method": cfg.method, "surrogate": sur.key if needs_surrogate else None,
        "source": r.src.fingerprint,
        # in-domain methods (RANDOM, the baselines) never read the target: one score stage
        # serves every target
        **(score_key([t.fingerprint for t in r.tgts], ok.weights) if scorer.needs_target else {}),
        # only the settings the scorer reads (LM: neither k nor seed)
        **scorer.stage_key(k=r.k, seed=cfg.seed), **_common(cfg), **image_input,
        **extra_key})
    res.add(StagePlace("score", "score"), run_stage(sc, lambda d: score(
        cfg.method, source_dir=r.source_dir,
        target_dir=list(r.target_dirs) if multi else r.target_dir, out_dir=d,
        target_weights=ok.weights if multi else (),
        checkpoint=sur.output("checkpoint.pt") if needs_surrogate else None,
        trajectory=_trajectory(cfg.method, sur, r.surrogate.train.keep_epochs,
                               r.surrogate.train.epochs, log)
        if TRAJECTORY in scorer.needs and not cfg.surrogate_weights else (), fmt=cfg.fmt,
        device=device, k=r.k, seed=cfg.seed,
        target_resolution=sc_in.target_resolution, target_crop=sc_in.target_crop,
        source_resolution=sc_in.source_resolution, source_crop=sc_in.source_crop,
        options=r.options, train_recipe=r.recipe_names["surrogate"] if scorer.trains else None,
        train_overrides=list(cfg.surrogate_overrides) if scorer.trains else (),
        progress=cfg.progress), log,
        upstream=[sur] if needs_surrogate else []))
    return sc


def prune_stage(cfg: PipelineConfig, ok: Checked, r: Resolved, sc: Stage, res: PipelineResult,
                log: Log) -> Stage:
    """The mask: keep the top-scored units (or the lowest, ``order=reversed``) at ``ratio``."""
    pr = stage(cfg.runs_root, "prune", {
        "score": sc.key, "ratio": cfg.ratio, "source": r.src.fingerprint,
        # sample units: equal scores in a seeded order since 2026-12-03 (was: lower index first)
        **({"ties": "seeded"} if ok.scorer.unit == "sample" else {}),
        **({"budget": cfg.budget} if cfg.budget != "units" else {}),
        **({"order": cfg.order} if ok.reverse else {})})
    done = res.add(StagePlace("prune", "prune"), run_stage(pr, lambda d: prune(
        sc.dir, r.source_dir, cfg.ratio, d, budget=cfg.budget, reverse=ok.reverse), log,
        upstream=[sc]))
    kept = done.values  # what prune() returned, recorded with the stage (README: the kept
    if "kept_sample_fraction" in kept:  # sample fraction is reported beside every ratio)
        log(f"[prune] kept {kept['train_kept']} train samples at ratio {cfg.ratio:g} (kept "
            f"sample fraction {kept['kept_sample_fraction']:.3f})")
    # synth data knows the answer: how right the selection is (None on real data)
    res.ground_truth = selection_truth(r.source_dir, r.target_dirs, sc.dir, pr.dir / "train.npy")
    if cfg.ratio > 0:  # what the report's gallery shows (Fig. A7)
        res.selection = {"source": str(r.source_dir), "target": str(r.target_dir),
                         "mask": str(pr.dir / "train.npy"), "scores": str(sc.dir)}
        if r.multi:  # the gallery's truth is every target's, as the report's (selection_truth)
            res.selection["targets"] = [str(d) for d in r.target_dirs]
    return pr


def pretrain_stages(cfg: PipelineConfig, ok: Checked, r: Resolved, pr: Stage,
                    res: PipelineResult, log: Log) -> dict[int, Stage]:
    """Pretrain the source model on the mask, once per seed (:func:`~.resolve.seed_overrides`:
    ``train.seed`` and ``data.seed``). The key holds what
    is trained, not how the mask was chosen: the same mask (the 0 % reference, RANDOM, an
    in-domain baseline — for any target) is one pretraining."""
    from ..training.recipe import as_recipe, training_overrides
    from ..training.trainer import few_steps_note, matched_steps_overrides, train

    said: list[str] = []
    stretch: list[str] = []  # --pretrain-length steps: the same for every seed (one mask)
    if cfg.pretrain_length == "steps":
        full = r.src.split(r.pretrain.data.train_split).num_samples
        kept = len(load_mask(pr.output("train.npy")))
        stretch = matched_steps_overrides(r.pretrain, full, kept)
        if stretch:
            log(f"[pretrain] --pretrain-length steps: {kept:,} of {full:,} samples kept, so "
                f"{r.recipe_names['pretrain']} trains {' '.join(stretch)} (its "
                f"{r.pretrain.train.epochs} epochs on all {full:,} samples take as many steps)")

    def pretrain(rec, d: Path) -> Any:
        mask = load_mask(pr.output("train.npy"))
        note = few_steps_note(rec, len(mask), pruned=cfg.ratio > 0)
        if note and not said:  # (said once, by the first seed that trains: not when cached)
            said.append(note)
            log(f"[pretrain] warning: {note}")
        return train(rec, r.source_dir, mask=mask, out_dir=d, fmt=cfg.fmt, device=cfg.device,
                     progress=cfg.progress)

    out = {}
    for i, seed in enumerate(ok.seeds):
        over = training_overrides(r.pretrain_overrides) + seed_overrides(seed) + stretch
        rec = with_seed(r.pretrain, seed) if seed else r.pretrain
        rec = as_recipe(rec, stretch) if stretch else rec
        pt = stage(cfg.runs_root, "pretrain", {
            "recipe": recipe_key(rec), "overrides": over,
            "recipe_fingerprint": rec.training_fingerprint(), "source": r.src.fingerprint,
            "mask": file_sha256(pr.output("train.npy")), **_common(cfg)})
        res.add(StagePlace(stage_label("pretrain", first_seed=i == 0, seed=seed), "pretrain",
                           seed=seed),
                run_stage(pt, lambda d, rec=rec: pretrain(rec, d), log))
        out[seed] = pt
    return out


def brought_source_stage(cfg: PipelineConfig, ok: Checked, r: Resolved, res: PipelineResult,
                         log: Log) -> dict[int, Stage]:
    """``source_weights``: import the user's source model as the (only) pretrain stage; every
    seed finetunes it (the seeds then vary the finetuning only)."""
    w = Path(cfg.source_weights).expanduser()
    rec = r.pretrain
    pt = stage(cfg.runs_root, "pretrain", {
        "weights_sha256": file_sha256(w), "recipe": recipe_key(rec),
        "recipe_fingerprint": rec.training_fingerprint(), "source": r.src.fingerprint})
    res.add(StagePlace("pretrain", "pretrain"),
            _run_import(pt, w, "--source-weights", rec, r, log))
    return {s: pt for s in ok.seeds}


def finetune_stages(cfg: PipelineConfig, ok: Checked, r: Resolved, pretrained: dict[int, Stage],
                    res: PipelineResult, log: Log) -> None:
    """LP / FF of each seed's source model on each target (its own recipes, Tab. A1); the
    overrides enter the key only when given (older keys stay valid)."""
    from ..training.finetune import finetune
    from ..training.recipe import result_overrides

    for i, seed in enumerate(ok.seeds):
        pt = pretrained[seed]
        ft_overrides = result_overrides(cfg.finetune_overrides) + seed_overrides(seed)
        for t, t_dir, t_name, t_rec in zip(r.tgts, r.target_dirs, r.target_names, r.finetune):
            for mode in cfg.finetune:
                _, loaded = t_rec[mode]
                rec = with_seed(loaded, seed) if seed else loaded
                ft = stage(cfg.runs_root, f"finetune-{mode}", {
                    "recipe": recipe_key(rec), "pretrain": pt.key,
                    "recipe_fingerprint": rec.fingerprint(), "target": t.fingerprint,
                    **_common(cfg), **({"overrides": ft_overrides} if ft_overrides else {})})
                place = StagePlace(stage_label("finetune", first_seed=i == 0, seed=seed,
                                               target=t_name, mode=mode),
                                   "finetune", seed=seed, target=t_name, mode=mode)
                res.add(place, run_stage(ft, lambda d, m=mode, rec=rec, p=pt, td=t_dir: finetune(
                    rec, _start_checkpoint(p, rec, bool(cfg.source_weights)), td, d, mode=m,
                    fmt=cfg.fmt, device=cfg.device), log, upstream=[pt]))


def report_step(cfg: PipelineConfig, ok: Checked, r: Resolved, res: PipelineResult,
                log: Log) -> PipelineResult:
    """Seed statistics (one summary per target with several, Fig. A5) and the report folder,
    keyed by every stage it reports (their folders hold their keys) and the targets: two runs
    that share a source model (RANDOM for two targets, a 0 % reference for two methods) write
    two reports, not one over the other with the first run's picture."""
    if r.multi:
        res.summary = {}
        res.per_target = {n: summarize_seeds(res, cfg.finetune, n) for n in r.target_names}
    else:
        res.summary = summarize_seeds(res, cfg.finetune)
    report_dir = cfg.runs_root / (f"{REPORT_STAGE}-" + key_of({
        "stages": [run.dir.name for run in res.stages.values()], "seeds": list(ok.seeds),
        "targets": [t.fingerprint for t in r.tgts], "weights": list(ok.weights),
        "ratio": cfg.ratio, "method": cfg.method}))
    # (drawn again when a stage ran: its folder name, hence this key, stays when an upstream
    # stage computed again made it run again, with another selection)
    if res.selection and (not (report_dir / GALLERY).exists()
                          or any(run.ran for run in res.stages.values())):
        sel = res.selection  # the paper's Fig. A7: what was kept, beside the target
        selection_gallery(sel["source"], sel.get("targets") or sel["target"], sel["mask"],
                          report_dir / GALLERY, scores_dir=sel["scores"],
                          title=run_title(res.config))
    write_report(res, report_dir)
    res.report = str(report_dir / "report.md")
    log(f"[report] {res.report}")
    return res


def _start_checkpoint(pretrain: Stage, recipe, brought: bool) -> Path:
    """The checkpoint of the ``pretrain`` stage finetuning starts from (finetune.start_from):
    the final epoch's, or the best pruned-val top-1's (best.pt, the authors' best.ckpt; kept
    when the pretraining recipe says train.keep_best, checked before any work)."""
    from ..training.trainer import BEST_CHECKPOINT_NAME

    best = recipe.finetune.start_from == "best" and not brought
    return pretrain.output(BEST_CHECKPOINT_NAME if best else "checkpoint.pt")


def _trajectory(method: str, sur: Stage, keep_epochs, epochs: int, log: Log) -> tuple[Path, ...]:
    """The surrogate's kept early-training checkpoints (train.keep_epochs), in epoch order,
    for the scorers that need a trajectory (EL2N/GraNd score the earliest). One the recipe asks
    for but the stage folder lacks is an error (scoring another checkpoint under the same
    stage key would be a silently different result). Epochs past the surrogate's ``epochs``
    (a recipe shortened by ``--set-surrogate train.epochs=N``) are never written: they are
    said and left out, not reported missing with advice to rerun that gives the same."""
    from ..training.trainer import early_checkpoint_name, epochs_past

    past = epochs_past(keep_epochs, epochs)
    kept = sorted(e for e in keep_epochs if e not in past)
    if past:
        log(f"[score] {method}: train.keep_epochs {past} lie past the surrogate's {epochs} "
            f"epochs, so it kept no checkpoint there"
            + ("" if kept else "; scoring the final surrogate instead"))
    elif not kept:
        log(f"[score] {method}: the surrogate recipe keeps no early checkpoint "
            "(train.keep_epochs); scoring the final surrogate instead")
    return tuple(sur.output(early_checkpoint_name(e)) for e in kept)
