"""``dp4tl score``: a surrogate checkpoint + source/target datasets → a scores directory.

The methods are the registered scorers (:mod:`ffcv_dp4tl.scoring.registry`, one module each
in :mod:`ffcv_dp4tl.scoring.methods`; ``dp4tl score --help`` lists them). This stage is the
same for all of them: check the inputs the scorer declares it needs, load the surrogate (the
earliest kept early-training checkpoint for ``trajectory`` methods), run ``scorer.score`` and
write the scores directory. The wall time of the whole selection (feature extraction
included) is recorded as ``selection_seconds`` for the cost table.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from ..contracts import PAPER_K, TargetCrop, UnsupportedFormatError, check_k_fits
from ..contracts.images import check_resolution
from ..errors import DataError, DP4TLError
from ..fsutil import file_sha256
from ..locks import directory_lock
from ..outputs import claim_out_dir
from ..shipped import doc_ref
from ..scoring.context import ScoringContext, Surrogate
from ..scoring.registry import (BACKEND, SEED, SETTINGS, Scorer, ScoreResult, check_memory, get_scorer, scorers,
                                self_supervised_alternatives)
from ..training.process_state import keeps_process_state
from .scores_io import load_scores_meta, write_scores
from .targets import check_distinct_datasets, check_distinct_targets

#: held while scores are written into a folder (`dp4tl score --out`; a pipeline stage holds its own too)
SCORE_LOCK = ".score.lock"


def self_supervised_refusal(scorer: Scorer, what: str) -> DP4TLError:
    return DP4TLError(f"{scorer.name} needs a supervised surrogate with a source-class head "
                      f"(class logits), but {what}; use one that reads "
                      f"features only: {', '.join(self_supervised_alternatives())}")


def _load_surrogate(scorer: Scorer, ctx: ScoringContext, checkpoint: Path, device: str,
                    resolution: int | None, target_resolution: int | None = None,
                    target_crop: str | None = None, source_resolution: int | None = None,
                    source_crop: str | None = None) -> Surrogate:
    import torch

    from ..training.distributed import resolve_device
    from ..training.finetune import load_pretrained
    from ..training.models import get_head

    dev = resolve_device(device)  # the one device rule (auto, cpu, cuda, cuda:N)
    model, ckpt = load_pretrained(checkpoint, dev, warn_unfinished=True)
    ssl = ckpt.self_supervised
    if ssl and scorer.needs_class_head:
        raise self_supervised_refusal(scorer, f"{checkpoint} was trained self-supervised ({ssl})")
    source = ctx.source
    if not ssl and ckpt.num_classes != source.num_classes:
        raise DP4TLError(f"{checkpoint} predicts {ckpt.num_classes} classes but "
                         f"{ctx.source_dir} has {source.num_classes}; use a surrogate trained "
                         "on this source")
    res = resolution if resolution is not None else (ckpt.eval_resolution or 224)
    # how the target and the source images behind source features are read: the arguments
    # (checked in score()), else the surrogate recipe's [scoring] (absent = fast defaults;
    # bounded like the options when the recipe loaded)
    sc = ckpt.training_recipe().scoring
    t_res = target_resolution if target_resolution is not None else sc.target_resolution
    t_crop = TargetCrop.check(target_crop or sc.target_crop, "target crop")
    s_res = source_resolution if source_resolution is not None else sc.source_resolution
    s_crop = TargetCrop.check(source_crop or sc.source_crop, "source crop")
    return Surrogate(path=Path(checkpoint), model=model, head=get_head(model), checkpoint=ckpt,
                     resolution=res, device=dev,
                     autocast_dtype=torch.bfloat16 if dev.type == "cuda" else None,
                     target_resolution=t_res or None, target_crop=t_crop,
                     source_resolution=s_res or None, source_crop=s_crop)


def _refuse_other_scores(out: Path, method: str, source: str | None = None,
                         targets: list[str] | None = None) -> None:
    """Scores of another method, source or target(s) in ``out`` are someone's finished work:
    never replaced silently (rescoring the same method of the same data into its own folder is
    a rerun, and allowed). ``source`` / ``targets``: the fingerprints of this run's data
    (``targets`` None: the method reads no target)."""
    if not (out / "scores.json").exists():
        return
    try:
        meta = load_scores_meta(out, check_method=False)  # (another method's: refused below)
    except UnsupportedFormatError:
        raise  # a newer ffcv-dp4tl's scores: its "upgrade" line, never rescored over
    except DataError:
        return  # damaged: nothing to lose that load_scores would accept
    other = (["source"] if source and meta.source_fingerprint not in (None, source) else []) + \
        (["target"] if targets is not None and meta.target_fingerprints
         and meta.target_fingerprints != targets else [])
    if meta.method != method or other:
        what = f"{meta.method} scores" + (f" of another {' and '.join(other)}" if other else "")
        raise DataError(f"--out {out} holds {what}; pass another --out for {method} "
                        f"(or delete {out} to replace them)")


@keeps_process_state
def score(method: str, *, source_dir: str | Path, out_dir: str | Path,
          checkpoint: str | Path | None = None,
          target_dir: str | Path | list[str | Path] | None = None,
          fmt: str = "ffcv", device: str = "cpu", batch_size: int = 256, num_workers: int = 2,
          resolution: int | None = None, k: int = PAPER_K, iters: int = 20, seed: int = 0,
          backend: str = "auto", progress: bool = True,
          trajectory: list[str | Path] | tuple[str | Path, ...] = (),
          target_resolution: int | None = None, target_crop: str | None = None,
          source_resolution: int | None = None, source_crop: str | None = None,
          options: dict[str, Any] | None = None, train_recipe: str | Path | None = None,
          train_overrides: list[str] | tuple[str, ...] = (),
          target_weights: list[float] | tuple[float, ...] = ()) -> dict[str, Any]:
    """Compute the scores of ``method`` and write them to ``out_dir``; returns the metadata.

    ``target_dir`` may list several targets (lm, fm, fm-sup): one pruned source then serves
    all of them; each target's votes (and tie-break masses) are normalised to sum 1 before
    they are added (:func:`combine_target_scores`), so a big target cannot drown a small one;
    ``target_weights`` (one per target, default equal) weigh them.
    ``trajectory``: early-training checkpoints of the surrogate (epoch order); methods that
    need one score the earliest, the others ``checkpoint``.
    ``target_resolution`` / ``target_crop``: how the surrogate reads the target images (default:
    the surrogate recipe's ``[scoring]`` section; without one, the surrogate's eval resolution
    with the 224/256 centre crop). The paper protocol: 224 and ``"none"``.
    ``source_resolution`` / ``source_crop``: the same for the source images behind source
    features (FM, MODERATE, SP, SSP, INF*): a surrogate trained before its recipe set them can
    still be read as the paper reads them.
    ``options``: the scorer's knobs
    (``Scorer.options``; strings are converted). ``train_recipe`` / ``train_overrides``: the
    recipe of the runs a scorer trains itself (FORGET, GraNd/EL2N with several runs; default:
    the surrogate checkpoint's recipe).
    """
    scorer = get_scorer(method)
    opts = scorer.parse_options(options)  # bad options fail before any work
    if (train_recipe is not None or train_overrides) and not scorer.trains:
        # a note, not a refusal (nothing is wrong with the scores): --recipe/--set given to lm
        # were dropped without a word, and the user believed they had changed something
        given = " and ".join(n for n, v in (("--recipe", train_recipe is not None),
                                             ("--set", bool(train_overrides))) if v)
        warnings.warn(f"{given} set the runs a method trains itself "
                      f"({', '.join(s.name for s in scorers() if s.trains)}); {method} trains "
                      "none, so they are ignored", stacklevel=2)
    if BACKEND in scorer.kernels:  # (--backend cuda without a GPU failed after the features
        from ..kernels import resolve_backend  # were extracted; review)

        resolve_backend(backend)
    if resolution is not None:  # 0 is no "default": omit the option for the surrogate's
        check_resolution(resolution, "--resolution")
    if target_resolution is not None:
        check_resolution(target_resolution, "--target-resolution (scoring.target_resolution)",
                         zero="the surrogate's eval resolution")
    if source_resolution is not None:
        check_resolution(source_resolution, "--source-resolution (scoring.source_resolution)",
                         zero="the surrogate's eval resolution")
    claim_out_dir(out_dir, "scores")  # (not a training run's folder, masks, …)
    _refuse_other_scores(Path(out_dir), method)  # (before the data is read; again below)
    t0 = time.perf_counter()
    from ..training.trainer import pin_cpu_threads

    pin_cpu_threads(num_workers, "num_workers")  # CPU results depend on torch's thread count
    out_dir = Path(out_dir)
    targets = () if target_dir is None else tuple(Path(t) for t in (
        target_dir if isinstance(target_dir, (list, tuple)) else [target_dir]))
    check_distinct_targets(targets)  # (before any data is read)
    ctx = ScoringContext(method=method, source_dir=Path(source_dir), out_dir=out_dir,
                         targets=targets, trajectory=tuple(Path(p) for p in trajectory),
                         fmt=fmt, device=device, batch_size=batch_size, num_workers=num_workers,
                         resolution=resolution, iters=iters, backend=backend,
                         # only the settings the scorer declares it reads (its stage key's)
                         **{**dict.fromkeys(SETTINGS), **scorer.key_settings(k=k, seed=seed)},
                         progress=progress, options=opts,
                         train_recipe=None if train_recipe is None else str(train_recipe),
                         train_overrides=tuple(train_overrides),
                         target_weights=tuple(float(w) for w in target_weights))
    if ctx.target_weights and len(ctx.target_weights) != len(targets):
        raise DP4TLError(f"{len(ctx.target_weights)} target weights given for {len(targets)} "
                         "targets; give one per target")
    chosen = scorer.pick_checkpoint(None if checkpoint is None else Path(checkpoint),
                                    ctx.trajectory)
    if scorer.needs_surrogate and chosen is None:
        raise DP4TLError(f"--checkpoint (a surrogate trained with `dp4tl train`) is needed for {method}")
    if scorer.needs_target and not targets:
        raise DP4TLError(f"--target is needed for {method}")
    if scorer.uses_k:  # before any feature is extracted
        check_k_fits(k, ctx.source.split("train").num_samples)
    check_memory(scorer, ctx.source)  # (here, not in the pipeline's resolve: a cached score
    #                                     stage of a large node is reused on a small one)
    from ..data.manifest import load_manifest

    target_fps = [load_manifest(t).fingerprint for t in targets] if scorer.needs_target else None
    if target_fps is not None:  # a copy under another path, or the source itself
        check_distinct_datasets([str(t) for t in targets], target_fps,
                                source=(str(source_dir), ctx.source.fingerprint),
                                give="the target's built folder (`dp4tl build` makes one)")
    _refuse_other_scores(out_dir, method, ctx.source.fingerprint, target_fps)
    out_dir.mkdir(parents=True, exist_ok=True)
    # one writer per folder: a second `dp4tl score --out` of it deleted the features the
    # first was writing and the first published scores of half a file (exit 0)
    from beton_builders.out_dir import reading_all

    # (and the data it reads: not replaced by a `build --overwrite` while it is scored)
    with directory_lock(out_dir / SCORE_LOCK, f"scores folder {out_dir}"), \
            reading_all([source_dir, *(targets if scorer.needs_target else ())]):
        ctx.meta.update({"source_fingerprint": ctx.source.fingerprint,
                         **({"seed": seed} if SEED in scorer.reads else {}),
                         **({"revision": scorer.revision} if scorer.revision else {})})
        if opts:
            ctx.meta["options"] = opts
        if ctx.target_weights:
            ctx.meta["target_weights"] = list(ctx.target_weights)
        if scorer.needs_surrogate:
            ctx.checkpoint = chosen
            ctx.surrogate = _load_surrogate(scorer, ctx, chosen, device, resolution,
                                            target_resolution, target_crop, source_resolution,
                                            source_crop)
            ctx.meta.update({"surrogate": str(chosen), "surrogate_hash": file_sha256(chosen),
                             "resolution": ctx.surrogate.resolution})
            if (ctx.surrogate.source_resolution, ctx.surrogate.source_crop) != (None, "center"):
                ctx.meta["source_feature_input"] = [ctx.surrogate.source_resolution
                                                    or ctx.surrogate.resolution,
                                                    ctx.surrogate.source_crop]
            if scorer.needs_target:
                ctx.meta.update({"target_resolution": ctx.surrogate.target_resolution
                                 or ctx.surrogate.resolution,
                                 "target_crop": ctx.surrogate.target_crop})
        result = scorer.score(ctx)
        if not isinstance(result, ScoreResult):  # (a user's scorer: not an AttributeError later)
            raise DP4TLError(f"scorer {method!r} returned a {type(result).__name__}; its "
                             "score(ctx) must return a ScoreResult(scores=...): see "
                             f"ffcv_dp4tl.scoring.registry and {doc_ref('scorers')}")
        meta = ctx.meta
        if not scorer.higher_is_better:
            meta["higher_is_better"] = False
        meta["selection_seconds"] = time.perf_counter() - t0
        write_scores(out_dir, method=method, unit=scorer.unit, scores=result.scores, meta=meta,
                     tiebreak=result.tiebreak, train_units=result.train_units)
        return {**meta, "method": method, "unit": scorer.unit}
