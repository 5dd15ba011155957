"""Scores → index masks over the source's train and val splits (``dp4tl prune``).

Pruning knows units, not methods: the unit is the one the method's registered scorer declares
(:mod:`ffcv_dp4tl.scoring.registry`), recorded in ``scores.json``. The pruning ratio is the
fraction of *units* removed: source classes (``class``, e.g. LM) or clusters with a cluster id
per sample (``cluster``, e.g. FM). Sample-wise methods (``sample``: RANDOM, MODERATE, GraNd,
EL2N) remove the same fraction of *samples* (``keep_fraction = 1 - ratio``; equal to the
class-wise sample fraction on class-balanced sources such as ImageNet), and keep the full val
split since every class stays.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.manifest import load_manifest
from ..data.masks import make_mask, mask_from_classes, save_mask
from ..errors import DataError, MaskError
from ..scoring import kept_sample_indices, select_classes, select_samples
from .scores_io import load_scores


def prune(scores_dir: str | Path, source_dir: str | Path, ratio: float, out_dir: str | Path,
          *, reverse: bool = False) -> dict[str, Any]:
    """Write ``train.npy``/``val.npy`` masks (+ .json) into ``out_dir``; returns a summary."""
    if not 0.0 <= ratio < 1.0:
        raise DataError(f"--ratio must be in [0, 1), got {ratio}")
    meta, arrays = load_scores(scores_dir)
    manifest = load_manifest(source_dir)
    if meta.get("source_fingerprint") not in (None, manifest.fingerprint):
        raise MaskError(f"scores in {scores_dir} were computed for another source dataset "
                        f"(fingerprint {str(meta['source_fingerprint'])[:12]}…, {source_dir} has "
                        f"{manifest.fingerprint[:12]}…); rerun `dp4tl score` on this source")
    unit = meta["unit"]
    prov = {"method": meta["method"], "unit": unit, "ratio": ratio, "reverse": reverse,
            "scores": str(scores_dir)}
    summary: dict[str, Any] = {"ratio": ratio, "unit": unit, "method": meta["method"]}
    job = _Job(Path(scores_dir), Path(source_dir), manifest, meta, arrays, ratio, reverse,
               Path(out_dir), prov, [s for s in ("train", "val") if s in manifest.split_names])
    summary.update(PRUNE_BY_UNIT[unit](job))
    return summary


@dataclass
class _Job:
    scores_dir: Path
    source_dir: Path
    manifest: Any
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray]
    ratio: float
    reverse: bool
    out_dir: Path
    prov: dict[str, Any]
    splits: list[str]


def _prune_classes(j: _Job) -> dict[str, Any]:
    scores = j.arrays["scores"]
    if len(scores) != j.manifest.num_classes:
        raise MaskError(f"{j.scores_dir}: {len(scores)} class scores but {j.source_dir} has "
                        f"{j.manifest.num_classes} classes")
    kept = select_classes(scores, j.ratio, j.arrays.get("tiebreak"), reverse=j.reverse)
    out: dict[str, Any] = {"kept_units": kept.tolist()}
    for split in j.splits:
        mask = mask_from_classes(j.manifest.split(split), kept, **j.prov)
        save_mask(j.out_dir / f"{split}.npy", mask)
        out[f"{split}_kept"] = len(mask)
    return out


def _prune_clusters(j: _Job) -> dict[str, Any]:
    kept = select_classes(j.arrays["scores"], j.ratio, j.arrays.get("tiebreak"), reverse=j.reverse)
    out: dict[str, Any] = {"kept_units": kept.tolist()}
    for split in j.splits:
        units = j.arrays.get(f"{split}_units")
        info = j.manifest.split(split)
        if units is None or len(units) != info.num_samples:
            raise MaskError(f"{j.scores_dir}: cluster ids for split {split!r} missing or of the "
                            f"wrong length (need {info.num_samples})")
        mask = make_mask(kept_sample_indices(units, kept), info, kept_clusters=kept.tolist(),
                         **j.prov)
        save_mask(j.out_dir / f"{split}.npy", mask)
        out[f"{split}_kept"] = len(mask)
    return out


def _prune_samples(j: _Job) -> dict[str, Any]:
    scores = j.arrays["scores"]
    info = j.manifest.split("train")
    if len(scores) != info.num_samples:
        raise MaskError(f"{j.scores_dir}: {len(scores)} sample scores but train has "
                        f"{info.num_samples} samples")
    higher = bool(j.meta.get("higher_is_better", True)) != j.reverse
    idx = select_samples(scores, 1.0 - j.ratio, higher_is_better=higher)
    save_mask(j.out_dir / "train.npy", make_mask(idx, info, **j.prov))
    out: dict[str, Any] = {"train_kept": int(len(idx))}
    if "val" in j.splits:
        v = j.manifest.split("val")
        save_mask(j.out_dir / "val.npy", make_mask(np.arange(v.num_samples), v, **j.prov))
        out["val_kept"] = v.num_samples
    return out


#: One pruning rule per unit a scorer can declare (``scoring.registry.UNITS``).
PRUNE_BY_UNIT = {"class": _prune_classes, "cluster": _prune_clusters, "sample": _prune_samples}
