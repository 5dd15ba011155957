"""Combine the class/cluster scores of several target tasks into one ranking.

When one pruned source set must serve several targets, each target's score vector (LM or FM
votes over the same source classes/clusters) is divided by its own sum before adding them
up. Raw counts scale with the target's size, so without normalisation a target with 100k
images would drown out one with 2k; after it, every target contributes a total mass of
exactly 1 (or its ``weight``), i.e. the combined score is the (weighted) sum of per-target
vote *distributions*.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .ranking import ScoringError, as_vector


def combine_target_scores(
    scores: Sequence[Any],
    *,
    names: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Sum of ``weight_t * scores_t / scores_t.sum()`` over targets ``t``: float64 (N,),
    rounded to 12 decimals so that equal vote shares tie exactly.

    All vectors must have the same length (the same source classes/clusters), be
    non-negative, and not sum to zero. ``names`` only label targets in error messages.
    """
    if isinstance(scores, np.ndarray) and scores.ndim == 2:
        scores = list(scores)
    if len(scores) == 0:
        raise ScoringError("no target scores given; pass one score vector per target")
    names = [f"target {i}" for i in range(len(scores))] if names is None else list(names)
    if len(names) != len(scores):
        raise ScoringError(f"{len(names)} names given for {len(scores)} score vectors")
    if weights is None:
        weights = [1.0] * len(scores)
    if len(weights) != len(scores):
        raise ScoringError(f"{len(weights)} weights given for {len(scores)} score vectors")
    total = None
    for name, w, s in zip(names, weights, scores):
        v = as_vector(s, f"scores of {name}")
        if total is not None and v.shape != total.shape:
            raise ScoringError(
                f"scores of {name} has {v.shape[0]} entries but the first target has {total.shape[0]}; "
                "all targets must be scored over the same source classes/clusters"
            )
        if (v < 0).any():
            raise ScoringError(f"scores of {name} has negative entries; only non-negative votes/masses can be normalised")
        mass = v.sum()
        if mass <= 0:
            raise ScoringError(f"scores of {name} sum to 0 (no votes); check that target's predictions")
        if not (isinstance(w, (int, float, np.integer, np.floating)) and np.isfinite(w) and w >= 0):
            raise ScoringError(f"weight of {name} must be a finite number >= 0, got {w!r}")
        part = float(w) * v / mass
        total = part if total is None else total + part
    # Equal shares reached by other sums (6/144 from one target vs 1/144 + 5/144 from two)
    # differ in the last bit, and the ranking compares scores exactly: a rounding step would
    # decide the tie before the documented tie-break. Shares are multiples of 1/size, so 12
    # decimals keep every genuinely different share apart (sizes up to ~1e11 images).
    return np.round(total, 12)
