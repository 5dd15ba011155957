"""Scores → index masks over the source's train and val splits (``dp4tl prune``).

The pruning ratio is the fraction of *units* removed: source classes for LM, k-means clusters
for FM. Sample-wise baselines (RANDOM, MODERATE, GraNd, EL2N) remove the same fraction of
*samples* (``keep_fraction = 1 - ratio``; equal to the class-wise sample fraction on
class-balanced sources such as ImageNet), and keep the full val split since every class stays.
"""
from __future__ import annotations

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
    out_dir = Path(out_dir)
    scores, unit = arrays["scores"], meta["unit"]
    prov = {"method": meta["method"], "unit": unit, "ratio": ratio, "reverse": reverse,
            "scores": str(scores_dir)}
    splits = [s for s in ("train", "val") if s in manifest.split_names]
    summary: dict[str, Any] = {"ratio": ratio, "unit": unit, "method": meta["method"]}
    if unit == "class":
        if len(scores) != manifest.num_classes:
            raise MaskError(f"{scores_dir}: {len(scores)} class scores but {source_dir} has "
                            f"{manifest.num_classes} classes")
        kept = select_classes(scores, ratio, arrays.get("tiebreak"), reverse=reverse)
        summary["kept_units"] = kept.tolist()
        for split in splits:
            mask = mask_from_classes(manifest.split(split), kept, **prov)
            save_mask(out_dir / f"{split}.npy", mask)
            summary[f"{split}_kept"] = len(mask)
    elif unit == "cluster":
        kept = select_classes(scores, ratio, arrays.get("tiebreak"), reverse=reverse)
        summary["kept_units"] = kept.tolist()
        for split in splits:
            units = arrays.get(f"{split}_units")
            info = manifest.split(split)
            if units is None or len(units) != info.num_samples:
                raise MaskError(f"{scores_dir}: cluster ids for split {split!r} missing or of the "
                                f"wrong length (need {info.num_samples})")
            mask = make_mask(kept_sample_indices(units, kept), info, kept_clusters=kept.tolist(),
                             **prov)
            save_mask(out_dir / f"{split}.npy", mask)
            summary[f"{split}_kept"] = len(mask)
    else:
        info = manifest.split("train")
        if len(scores) != info.num_samples:
            raise MaskError(f"{scores_dir}: {len(scores)} sample scores but train has "
                            f"{info.num_samples} samples")
        higher = bool(meta.get("higher_is_better", True)) != reverse
        idx = select_samples(scores, 1.0 - ratio, higher_is_better=higher)
        save_mask(out_dir / "train.npy", make_mask(idx, info, **prov))
        summary["train_kept"] = int(len(idx))
        if "val" in splits:
            v = manifest.split("val")
            save_mask(out_dir / "val.npy", make_mask(np.arange(v.num_samples), v, **prov))
            summary["val_kept"] = v.num_samples
    return summary
