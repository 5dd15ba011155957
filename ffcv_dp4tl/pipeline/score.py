"""``dp4tl score``: a surrogate checkpoint + source/target datasets → a scores directory.

Methods
  lm        label mapping: surrogate argmax over source classes on the target train images
            (source eval resolution, center crop, no augmentation); score = votes per class,
            tie-break = summed softmax mass per class, then class id.
  fm        feature mapping: k-means (K clusters) on surrogate features of the source train
            split; every target train image votes for its nearest centroid; score = votes per
            cluster, tie-break = number of source samples in the cluster, then cluster id.
  fm-sup    feature mapping with the source labels as clusters (class-mean centroids).
  random    sample-wise, seeded.
  moderate  sample-wise: distance to the class-median feature, samples near the median kept.
  el2n      sample-wise: ||softmax − onehot|| of an (early-training) surrogate.
  grand     sample-wise: last-layer gradient norm of an (early-training) surrogate.
The wall time of the whole selection (feature extraction included) is recorded as
``selection_seconds`` for the cost table.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.loaders import make_loader
from ..data.manifest import load_manifest
from ..errors import DP4TLError
from ..scoring import (class_centroids, combine_target_scores, el2n_scores, feature_mapping_scores, grand_last_layer_norms,
                       kmeans, label_mapping_scores, moderate_scores, random_scores, softmax_mass)
from ..scoring.inference import extract_to_store, predict
from ..kernels import assign_nearest
from ..training.finetune import load_pretrained
from ..training.models import get_head
from .scores_io import write_scores

METHODS = ("lm", "fm", "fm-sup", "random", "moderate", "el2n", "grand")


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


#: Methods that read the surrogate's class logits (the rest only need its features).
NEEDS_CLASS_HEAD = ("lm", "el2n", "grand")


def score(method: str, *, source_dir: str | Path, out_dir: str | Path,
          checkpoint: str | Path | None = None,
          target_dir: str | Path | list[str | Path] | None = None,
          fmt: str = "ffcv", device: str = "cpu", batch_size: int = 256, num_workers: int = 2,
          resolution: int | None = None, k: int = 2000, iters: int = 20, seed: int = 0,
          backend: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Compute the scores of ``method`` and write them to ``out_dir``; returns the metadata.

    ``target_dir`` may list several targets (lm, fm, fm-sup): one pruned source then serves
    all of them; each target's votes (and tie-break masses) are normalised to sum 1 before
    they are added (:func:`combine_target_scores`), so a big target cannot drown a small one.
    """
    if method not in METHODS:
        raise DP4TLError(f"unknown scoring method {method!r}; choose one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = load_manifest(source_dir)
    train_info = source.split("train")
    meta: dict[str, Any] = {"source_fingerprint": source.fingerprint, "seed": seed}

    if method == "random":
        write_scores(out_dir, method=method, unit="sample",
                     scores=random_scores(train_info.num_samples, seed),
                     meta={**meta, "selection_seconds": time.perf_counter() - t0})
        return {**meta, "method": method}

    if checkpoint is None:
        raise DP4TLError(f"--checkpoint (a surrogate trained with `dp4tl train`) is needed for {method}")
    dev = torch.device(device)
    model, ckpt = load_pretrained(checkpoint, dev)
    ssl = ckpt.get("self_supervised")
    if ssl and method in NEEDS_CLASS_HEAD:
        raise DP4TLError(f"{method} needs a surrogate with a source-class head, but {checkpoint} "
                         f"was trained self-supervised ({ssl}); use fm (k-means clusters of its "
                         "features), fm-sup or moderate (features + labels) instead")
    if not ssl and ckpt.get("num_classes") != source.num_classes:
        raise DP4TLError(f"{checkpoint} predicts {ckpt.get('num_classes')} classes but {source_dir} "
                         f"has {source.num_classes}; use a surrogate trained on this source")
    head = get_head(model)
    res = resolution or int(ckpt.get("recipe", {}).get("eval", {}).get("resolution", 224))
    meta.update({"surrogate": str(checkpoint), "surrogate_hash": file_hash(checkpoint),
                 "resolution": res})
    amp = torch.bfloat16 if dev.type == "cuda" else None

    def loader(ds, split):
        return make_loader(ds, split, fmt=fmt, train=False, shuffle=False, drop_last=False,
                           batch_size=batch_size, resolution=res, device=dev,
                           num_workers=num_workers, rank=0, world_size=1)

    targets = [] if target_dir is None else (
        list(target_dir) if isinstance(target_dir, (list, tuple)) else [target_dir])

    def target_predictions(want_features: bool):
        """One Predictions per target (train split, eval transform)."""
        if not targets:
            raise DP4TLError(f"--target is needed for {method}")
        out = []
        meta["target_fingerprints"] = []
        for t in targets:
            tm = load_manifest(t)
            meta["target_fingerprints"].append(tm.fingerprint)
            out.append(predict(model, loader(t, "train"), head=head, want_logits=not want_features,
                               want_features=want_features,
                               num_samples=tm.split("train").num_samples, desc=f"target {tm.data.get('name')}",
                               progress=progress, autocast_dtype=amp))
        meta["target_fingerprint"] = meta["target_fingerprints"][0] if len(out) == 1 else None
        return out

    def combine(per_target: list[np.ndarray]) -> np.ndarray:
        return per_target[0] if len(per_target) == 1 else combine_target_scores(per_target)

    def source_features(split: str) -> np.ndarray:
        info = source.split(split)
        return extract_to_store(model, head, loader(source_dir, split),
                                out_dir / f"source_{split}_features.npy", info.num_samples,
                                dataset_fingerprint=info.fingerprint,
                                surrogate_hash=meta["surrogate_hash"], desc=f"source {split}",
                                progress=progress, autocast_dtype=amp)

    extra: dict[str, Any] = {}
    if method == "lm":
        preds = target_predictions(False)
        unit = "class"
        scores = combine([label_mapping_scores(p.logits.argmax(1), source.num_classes) for p in preds])
        extra["tiebreak"] = combine([softmax_mass(p.logits) for p in preds])
    elif method in ("fm", "fm-sup"):
        target_feats = [p.features for p in target_predictions(True)]
        feats = source_features("train")
        if method == "fm":
            result = kmeans(np.asarray(feats, dtype=np.float32), k, iters=iters, seed=seed,
                            backend=backend)
            centroids, train_units = result.centroids, np.asarray(result.labels, dtype=np.int64)
            meta.update({"k": k, "iters": iters})
        else:
            labels = np.asarray(train_info.load_labels())
            centroids = class_centroids(feats, labels, source.num_classes, backend=backend)
            train_units = labels.astype(np.int64)
        unit = "cluster"
        scores = combine([feature_mapping_scores(f, centroids, backend=backend) for f in target_feats])
        extra["tiebreak"] = np.bincount(train_units, minlength=len(centroids)).astype(np.float64)
        extra["train_units"] = train_units
        if "val" in source.split_names:
            if method == "fm":
                extra["val_units"] = np.asarray(assign_nearest(
                    np.asarray(source_features("val"), dtype=np.float32), centroids,
                    backend=backend)[0], dtype=np.int64)
            else:
                extra["val_units"] = np.asarray(source.split("val").load_labels(), dtype=np.int64)
    else:  # sample-wise baselines on source train
        labels = np.asarray(train_info.load_labels())
        unit = "sample"
        if method == "moderate":
            scores = moderate_scores(source_features("train"), labels)
        else:
            p = predict(model, loader(source_dir, "train"), head=head, want_logits=True,
                        want_features=method == "grand", num_samples=train_info.num_samples,
                        desc="source train", progress=progress, autocast_dtype=amp)
            probs = _softmax(p.logits.astype(np.float64))
            scores = (el2n_scores(probs, labels) if method == "el2n"
                      else grand_last_layer_norms(p.features, probs, labels))
    meta["selection_seconds"] = time.perf_counter() - t0
    write_scores(out_dir, method=method, unit=unit, scores=scores, meta=meta, **extra)
    return {**meta, "method": method, "unit": unit}
