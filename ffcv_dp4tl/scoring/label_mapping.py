"""Label mapping (LM) scores: which source classes the target data "looks like".

DP4TL-LM feeds the target training images through the source-trained surrogate and counts,
for every source class, how many target images it predicts as that class. Source classes with
the highest counts are kept; whole classes are pruned because the downstream model only needs
the source label space that target data maps onto.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ..data.masks import samples_with_labels

from .ranking import (
    ScoringError,
    as_vector,
    check_fraction,
    check_ids,
    check_positive_int,
    keep_count,
    rank,
)


def label_mapping_scores(predictions: Any, num_classes: int) -> np.ndarray:
    """Histogram of surrogate predictions on the target set: int64 (num_classes,).

    ``predictions`` are argmax source-class ids, one per target image.
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    preds = as_vector(predictions, "predictions", kind="i", allow_empty=True)
    check_ids(preds, num_classes, "predictions", "num_classes")
    return np.bincount(preds, minlength=num_classes).astype(np.int64)


def softmax_mass(
    values: Any, *, kind: Literal["logits", "probs"] = "logits", chunk_rows: int = 65536
) -> np.ndarray:
    """Per-class summed softmax probability over all target images: float64 (C,).

    A soft version of :func:`label_mapping_scores`, used as the tie-breaker for classes with
    equal prediction counts (a class that is the runner-up for many images ranks higher).
    ``values`` is (N, C): logits (softmax taken here in float64, max-subtracted, in chunks of
    ``chunk_rows`` so huge N never needs a second full-size copy) or, with ``kind="probs"``,
    rows that are already probabilities (checked: non-negative, summing to 1 within 1e-3).
    """
    if kind not in ("logits", "probs"):
        raise ScoringError(f"kind must be 'logits' or 'probs', got {kind!r}")
    if type(values).__module__.split(".")[0] == "cupy":
        values = values.get()
    arr = np.asarray(values)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ScoringError(f"{kind} must be a 2-D (num_images, num_classes) array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ScoringError(f"{kind} must be numeric, got dtype {arr.dtype}")
    chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
    total = np.zeros(arr.shape[1], dtype=np.float64)
    for start in range(0, arr.shape[0], chunk_rows):
        block = arr[start : start + chunk_rows].astype(np.float64)
        if not np.isfinite(block).all():
            raise ScoringError(f"{kind} contain NaN/Inf (rows {start}..{start + len(block) - 1})")
        if kind == "logits":
            block -= block.max(axis=1, keepdims=True)
            np.exp(block, out=block)
            block /= block.sum(axis=1, keepdims=True)
        else:
            if (block < 0).any() or not np.allclose(block.sum(axis=1), 1.0, atol=1e-3):
                raise ScoringError(
                    "probs rows must be non-negative and sum to 1; pass kind='logits' for raw outputs"
                )
        total += block.sum(axis=0)
    return total


def select_classes(
    scores: Any, ratio: float, tiebreak: Any = None, reverse: bool = False, what: str = "classes"
) -> np.ndarray:
    """Source class ids to keep after pruning a fraction ``ratio`` of the classes.

    Keeps ``round((1 - ratio) * N)`` of the ``N = len(scores)`` classes, computed in floating
    point (:func:`~.ranking.keep_count`: a product that is a half in decimals may round either
    way, e.g. 15 classes at ratio 0.7 keep 5) and returns them sorted ascending (int64).

    Ranking (``reverse=False``): higher ``scores`` first; equal scores are ordered by higher
    ``tiebreak`` (e.g. :func:`softmax_mass`), and remaining ties by lower class id. So with
    equal everything, class 3 is kept before class 7, on every machine and run.

    ``reverse=True`` (the paper's ablation: keep the *least* mapped classes) negates the key:
    lower ``scores`` first, then lower ``tiebreak``, and remaining ties still by lower class id.

    ``ratio`` must lie in [0, 1); a ratio that leaves no class (e.g. 0.96 of 10 classes) is
    an error rather than an empty selection (naming the units as ``what``: ``clusters`` for
    FM's).
    """
    s = as_vector(scores, "scores")
    ratio = check_fraction(ratio, "ratio", low_open=False, high_open=True)
    t = None
    if tiebreak is not None:
        t = as_vector(tiebreak, "tiebreak")
        if t.shape[0] != s.shape[0]:
            raise ScoringError(f"tiebreak has {t.shape[0]} entries but scores has {s.shape[0]}; they must match")
    m = keep_count(s.shape[0], 1.0 - ratio, what)
    if reverse:
        order = rank(-s, None if t is None else -t)
    else:
        order = rank(s, t)
    return np.sort(order[:m]).astype(np.int64)


def kept_sample_indices(sample_labels: Any, kept_ids: Any) -> np.ndarray:
    """Indices (sorted int64) of the source samples whose class/cluster id is in ``kept_ids``.

    Turns an LM class selection (class labels) or an FM cluster selection (k-means labels)
    into the sample-level index list the loaders consume.
    """
    labels = as_vector(sample_labels, "sample_labels", kind="i", allow_empty=True)
    kept = as_vector(kept_ids, "kept_ids", kind="i", allow_empty=True)
    if labels.size == 0:
        return np.zeros(0, dtype=np.int64)
    if int(labels.min()) < 0 or (kept.size and int(kept.min()) < 0):
        raise ScoringError("sample_labels and kept_ids must be non-negative ids")
    return samples_with_labels(labels, kept)
