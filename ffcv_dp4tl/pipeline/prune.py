"""Scores → index masks over the source's train and val splits (``dp4tl prune``).

Pruning knows units, not methods: the unit is the one the method's registered scorer declares
(:mod:`ffcv_dp4tl.scoring.registry`), recorded in ``scores.json``. The pruning ratio is the
fraction of *units* removed: source classes (``class``, e.g. LM) or clusters with a cluster id
per sample (``cluster``, e.g. FM). Sample-wise methods (``sample``: RANDOM, MODERATE, GraNd,
EL2N) remove the same fraction of *samples* (``keep_fraction = 1 - ratio``; equal to the
class-wise sample fraction on class-balanced sources such as ImageNet). Equal sample scores are
ordered by a permutation seeded with the scores' seed (the same for every ratio, so the
selections still nest).

**Val.** Whatever the unit, ``val.npy`` holds the val samples of the classes the train mask
keeps (:func:`~ffcv_dp4tl.data.masks.val_mask_of`, the rule the trainer validates with). When
those classes have no val sample there is no ``val.npy``, and the summary says ``val_kept`` 0.

**Kept sample fraction.** A class/cluster ratio is not a sample ratio: FM's clusters differ in
size, LM's classes do on unbalanced sources. Every
summary, mask provenance and report therefore carries ``kept_sample_fraction`` (kept train
samples / train samples) beside the ratio.

**Budget** (``budget="samples"``, class/cluster units only): instead of removing a fraction
``ratio`` of the units, keep the prefix of the unit ranking (the same order as ``units``:
scores, then tie-break, then id) whose train-sample count is closest to
``round((1 - ratio) · N)``; when two prefixes are equally close, the shorter one (fewer samples
than asked rather than more), and always at least one unit. Sample-unit methods already prune
samples, so both budgets are the same for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.manifest import load_manifest
from ..contracts import Budget, Scores, check_ratio
from ..data.masks import (IndexMask, describe_mask, make_mask, mask_conflict, mask_from_classes,
                          save_mask, val_mask_of)
from ..errors import DataError, MaskError
from ..locks import directory_lock
from ..scoring.registry import UNIT_PLURAL
from ..outputs import claim_out_dir
from ..scoring import kept_sample_indices, select_classes, select_samples
from ..scoring.ranking import as_vector, check_ids, rank
from .scores_io import load_scores

#: held while masks are written into a folder (`dp4tl prune --out`, the prune stage)
PRUNE_LOCK = ".prune.lock"

def prune(scores_dir: str | Path, source_dir: str | Path, ratio: float, out_dir: str | Path,
          *, reverse: bool = False, budget: str = "units") -> dict[str, Any]:
    """Write ``train.npy``/``val.npy`` masks (+ .json) into ``out_dir``; returns a summary with
    ``kept_sample_fraction`` (kept / all train samples). ``budget``: ``units`` (``ratio`` of the
    method's units) or ``samples`` (units until the kept sample fraction is ``1 - ratio``)."""
    ratio = check_ratio(ratio, "--ratio", DataError)
    Budget.check(budget, "--budget", DataError)
    claim_out_dir(out_dir, "masks")  # (not the scores' own folder, a training run, …)
    sc = load_scores(scores_dir)
    manifest = load_manifest(source_dir)
    if sc.meta.source_fingerprint not in (None, manifest.fingerprint):
        raise MaskError(f"scores in {scores_dir} were computed for another source dataset "
                        f"(fingerprint {str(sc.meta.source_fingerprint)[:12]}…, {source_dir} has "
                        f"{manifest.fingerprint[:12]}…); rerun `dp4tl score` on this source")
    unit = sc.unit
    prov = {"method": sc.method, "unit": unit, "ratio": ratio, "reverse": reverse,
            "scores": str(scores_dir)}
    if budget != "units":
        prov["budget"] = budget
    summary: dict[str, Any] = {"ratio": ratio, "unit": unit, "method": sc.method}
    if budget != "units":
        summary["budget"] = budget
    job = _Job(Path(scores_dir), Path(source_dir), manifest, sc, ratio, reverse,
               Path(out_dir), prov, [s for s in ("train", "val") if s in manifest.split_names],
               budget)
    # one writer per folder: two prunes of other ratios at once could leave train.npy of one
    # beside val.npy of the other (each mask is atomic, the pair is not)
    with directory_lock(Path(out_dir) / PRUNE_LOCK, f"mask folder {out_dir}"):
        summary.update(PRUNE_BY_UNIT[unit](job))
    n = manifest.split("train").num_samples
    summary["kept_sample_fraction"] = summary["train_kept"] / n if n else 0.0
    if "kept_units" in summary:
        summary["kept_unit_fraction"] = len(summary["kept_units"]) / len(sc.scores)
    if budget == "samples" and unit != "sample":
        budget_gap_warning(summary["kept_sample_fraction"], ratio, unit)
    return summary


#: how far (in kept sample fraction) ``budget=samples`` may land from ``1 - ratio`` unsaid
BUDGET_GAP = 0.05


def budget_gap_warning(kept_fraction: float, ratio: float, unit: str) -> None:
    """Warn when whole units cannot bring ``budget=samples`` within :data:`BUDGET_GAP` of the
    asked fraction (a source of few, unequal classes or clusters): the run keeps the closest
    prefix, and the user should know it is not the budget asked for."""
    asked = 1.0 - ratio
    if abs(kept_fraction - asked) > BUDGET_GAP + 1e-9:  # (exactly 5 points is within, either way)
        import warnings

        plural = UNIT_PLURAL[unit]
        warnings.warn(
            f"--budget samples at ratio {ratio:g} asks to keep {asked:.3f} of the train samples, "
            f"but the closest prefix of whole {plural} in rank order keeps {kept_fraction:.3f}: "
            f"{plural} are kept whole and these are too large to come closer; choose another "
            f"--ratio, or --budget units", stacklevel=3)


@dataclass
class _Job:
    scores_dir: Path
    source_dir: Path
    manifest: Any
    scores: Scores
    ratio: float
    reverse: bool
    out_dir: Path
    prov: dict[str, Any]
    splits: list[str]
    budget: str = "units"

    def kept_units(self, train_units: np.ndarray) -> np.ndarray:
        """The units to keep: a ``ratio`` of them, or (budget samples) the ranked prefix whose
        train-sample count is closest to ``(1 - ratio)`` of the train samples."""
        scores, tie = self.scores.scores, self.scores.tiebreak
        if self.budget == "units":
            return select_classes(scores, self.ratio, tie, reverse=self.reverse,
                                  what=UNIT_PLURAL[self.scores.unit])
        return select_units_by_samples(scores, train_units, self.ratio, tie, reverse=self.reverse)

    def train_fraction_prov(self, kept_samples: int) -> dict[str, Any]:
        n = self.manifest.split("train").num_samples
        return {"kept_sample_fraction": kept_samples / n if n else 0.0}


def samples_target(n: int, ratio: float) -> int:
    """``budget=samples``: the number of the ``n`` train samples a ``ratio`` aims to keep (the
    kept units' prefix is the one closest to it: :func:`select_units_by_samples`)."""
    return round((1.0 - ratio) * n)


def select_units_by_samples(scores: Any, sample_units: Any, ratio: float, tiebreak: Any = None,
                            reverse: bool = False) -> np.ndarray:
    """Units (sorted int64) forming the prefix of the unit ranking whose sample count is closest
    to ``round((1 - ratio) · N)`` for ``N`` samples with unit ids ``sample_units``; ties between
    prefix lengths go to the shorter one, and at least one unit with samples is kept. The ranking is
    :func:`~ffcv_dp4tl.scoring.select_classes`'s (scores, then tie-break, then lower id)."""
    s = as_vector(scores, "scores")
    units = as_vector(sample_units, "sample_units", kind="i")
    check_ids(units, s.shape[0], "sample_units", "number of scores")  # else bincount drops them
    ratio = check_ratio(ratio, "ratio", DataError)
    t = None if tiebreak is None else as_vector(tiebreak, "tiebreak")
    order = rank(-s, None if t is None else -t) if reverse else rank(s, t)
    sizes = np.bincount(units, minlength=s.shape[0])[: s.shape[0]]
    cum = np.cumsum(sizes[order])
    target = samples_target(units.shape[0], ratio)
    m = int(np.argmin(np.abs(cum - target))) + 1  # argmin: the first (shortest) of equals
    if cum[m - 1] == 0 and cum[-1] > 0:  # units without samples only: up to the first with some
        m = int(np.argmax(cum > 0)) + 1
    return np.sort(order[:m]).astype(np.int64)


def _prune_classes(j: _Job) -> dict[str, Any]:
    scores = j.scores.scores
    if len(scores) != j.manifest.num_classes:
        raise MaskError(f"{j.scores_dir}: {len(scores)} class scores but {j.source_dir} has "
                        f"{j.manifest.num_classes} classes")
    train_labels = np.asarray(j.manifest.split("train").load_labels())
    kept = j.kept_units(train_labels)
    out: dict[str, Any] = {"kept_units": kept.tolist()}
    extra = j.train_fraction_prov(int(np.isin(train_labels, kept).sum()))
    return out | _write_masks(j, mask_from_classes(j.manifest.split("train"), kept, **j.prov, **extra))


def _prune_clusters(j: _Job) -> dict[str, Any]:
    units, info = j.scores.units_of("train"), j.manifest.split("train")
    if units is None or len(units) != info.num_samples:
        what = "is missing" if units is None else f"holds {len(units)} cluster ids"
        raise MaskError(f"{j.scores_dir / 'train_units.npy'} {what} but split 'train' of "
                        f"{j.source_dir} has {info.num_samples} samples (one cluster id each); "
                        f"rerun `dp4tl score` on this source into {j.scores_dir}")
    kept = j.kept_units(units)
    idx = kept_sample_indices(units, kept)
    train = make_mask(idx, info, kept_clusters=kept.tolist(), **j.prov,
                      **j.train_fraction_prov(len(idx)))
    return {"kept_units": kept.tolist()} | _write_masks(j, train)


def _prune_samples(j: _Job) -> dict[str, Any]:
    scores = j.scores.scores
    info = j.manifest.split("train")
    if len(scores) != info.num_samples:
        raise MaskError(f"{j.scores_dir}: {len(scores)} sample scores but train has "
                        f"{info.num_samples} samples")
    higher = j.scores.meta.higher_is_better != j.reverse
    # equal scores in a seeded random order, never by sample index: builds store samples class
    # by class, so index order cut the low class ids' samples last (FORGET's integer counts tie
    # in large blocks; Toneva et al. remove unforgettable samples at random)
    idx = select_samples(scores, 1.0 - j.ratio, higher_is_better=higher,
                         seed=j.scores.meta.seed or 0)
    return _write_masks(j, make_mask(idx, info, **j.prov, **j.train_fraction_prov(len(idx))))


def _write_masks(j: _Job, train: IndexMask) -> dict[str, Any]:
    """Write ``train`` and the val mask of its classes into ``j.out_dir`` as a pair: both are
    made (and so checked) first, and the pair a folder held before is removed before either is
    written, so an error or a kill never leaves one ratio's train.npy beside another's val.npy.

    A pair made from other inputs (another ratio, budget, order or method, other scores, another
    source) is refused, as `dp4tl score` refuses other scores: it may be the mask a finished
    training run was trained on. The same masks again — a rerun, or one completing a killed
    run — are written again (:func:`~ffcv_dp4tl.data.masks.mask_conflict`)."""
    masks: dict[str, IndexMask | None] = {"train": train}
    if "val" in j.splits:
        masks["val"] = val_mask_of(train, j.manifest.split("train"), j.manifest.split("val"), **j.prov)
    for split, mask in masks.items():
        clash = mask_conflict(j.out_dir / f"{split}.npy", mask)
        if clash is not None:
            raise MaskError(f"--out {j.out_dir} holds {clash[1]} ({clash[0].name}); pass another "
                            f"--out for {describe_mask(train.meta)} (or delete {j.out_dir} to "
                            "replace it)")
    for split in masks:
        for old in (j.out_dir / f"{split}.npy", j.out_dir / f"{split}.json"):
            old.unlink(missing_ok=True)
    out: dict[str, Any] = {}
    for split, mask in masks.items():
        if mask is not None:
            save_mask(j.out_dir / f"{split}.npy", mask)
        out[f"{split}_kept"] = 0 if mask is None else len(mask)
    return out


#: One pruning rule per unit a scorer can declare (``contracts.SCORE_UNITS``).
PRUNE_BY_UNIT = {"class": _prune_classes, "cluster": _prune_clusters, "sample": _prune_samples}
